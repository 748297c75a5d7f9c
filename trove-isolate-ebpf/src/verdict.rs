//! The pipeline and its one exit. Stages return `Result<pass reason, drop reason>`; only
//! [`run`] turns that into a verdict, counts it and picks the TC action.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::debug;
use trove_isolate_common::{action, conntrack::Keying, Direction, Mode, Reason, Role, Verdict};

use crate::{
    arp, clock,
    conntrack::{self, Flow, Tables},
    counters, dhcp, events, local,
    maps::{flows_tcp4, flows_wide, SETTINGS},
    nd,
    packet::{Kind, Packet, Parsed},
    parse, policy, tcp,
};

#[inline(always)]
pub fn run(ctx: &TcContext, role: Role, direction: Direction) -> i32 {
    let reason = match decide(ctx, role, direction) {
        Ok(reason) => {
            counters::count(role, direction, Verdict::Pass, reason, ctx.len());
            return action::PASS;
        }
        Err(reason) => reason,
    };
    // Read only on the drop path, so passing packets never touch the settings map.
    let settings = SETTINGS.get(role as u32);
    let audit = matches!(settings, Some(s) if s.mode == Mode::Audit as u8);
    let verdict = if audit { Verdict::Audit } else { Verdict::Drop };
    counters::count(role, direction, verdict, reason, ctx.len());
    events::sample(ctx, settings, role, direction, verdict, reason);
    if audit {
        debug!(
            ctx,
            "audit role={} dir={} reason={}", role as u8, direction as u8, reason as u8
        );
        action::PASS
    } else {
        debug!(
            ctx,
            "drop role={} dir={} reason={}", role as u8, direction as u8, reason as u8
        );
        action::DROP
    }
}

#[inline(always)]
fn decide(ctx: &TcContext, role: Role, direction: Direction) -> Result<Reason, Reason> {
    match parse::parse(ctx)? {
        Parsed::Arp(arp) => arp::check(role, direction, &arp),
        Parsed::NeighborDiscovery(pkt) => nd::check(ctx, role, direction, &pkt),
        Parsed::Related { outer, quoted } => related(role, direction, &outer, &quoted),
        Parsed::Flow(pkt) => flow(ctx, role, direction, &pkt),
    }
}

/// A packet that is, or may start, a flow: tracked flows first, then the checks a new flow
/// must pass (it may open one, a rule allows it, it is the NIC's own).
///
/// A bare SYN asks to open a flow whatever its tuple holds, so it meets the rules before the
/// flow tables: a refused one costs no table lookup, and a SYN on a tracked tuple (a
/// retransmission, a reopened closing flow, a simultaneous open) is held to the rules in force.
#[inline(always)]
fn flow(ctx: &TcContext, role: Role, direction: Direction, pkt: &Packet) -> Result<Reason, Reason> {
    let syn = match pkt.kind {
        Kind::Tcp => {
            tcp::check_flags(pkt)?;
            tcp::bare_syn(pkt)
        }
        Kind::OtherIcmp => return Err(Reason::NotTracked),
        Kind::Udp if dhcp::allowed(role, direction, pkt) => return Ok(Reason::Dhcp),
        _ => false,
    };
    // TCP over IPv4, the database's traffic, has tables of its own: their 12-byte key is the
    // cheapest to hash. Each keying's key is made where its tables are used, so a refused SYN
    // makes none, and the rules' lookups are in the program once.
    let keying = Keying::of(pkt.family, pkt.proto);
    if !syn {
        let judged = match keying {
            Keying::Tcp4 => conntrack::judge(
                ctx,
                &flows_tcp4(role),
                &pkt.flow_key4(direction),
                direction,
                pkt,
            ),
            Keying::Wide => conntrack::judge(
                ctx,
                &flows_wide(role),
                &pkt.wide_flow(direction),
                direction,
                pkt,
            ),
        };
        if judged.tracked {
            return judged.verdict;
        }
        let opens = match pkt.kind {
            Kind::Tcp => tcp::opens_flow(pkt),
            Kind::EchoReply => false,
            _ => true,
        };
        if !opens {
            return Err(Reason::NotTracked);
        }
    }
    policy::check(role, direction, pkt)?;
    match keying {
        Keying::Tcp4 => open(
            ctx,
            role,
            &flows_tcp4(role),
            &pkt.flow_key4(direction),
            direction,
            pkt,
            syn,
        ),
        Keying::Wide => open(
            ctx,
            role,
            &flows_wide(role),
            &pkt.wide_flow(direction),
            direction,
            pkt,
            syn,
        ),
    }
}

/// Opens the flow of a packet a rule allowed, if it is the NIC's own (addressed to it coming
/// in, sent from it going out): a bare SYN on a live flow passes as a packet of it
/// ([`conntrack::reopen`]); otherwise the flow is tracked. The check comes after the rules:
/// what a hostile network sends mostly fails them, so most refusals cost one lookup. A SYN meets
/// it even on a live flow: an address the NIC no longer has opens nothing.
#[inline(always)]
fn open<F: Flow>(
    ctx: &TcContext,
    role: Role,
    t: &Tables<F>,
    flow: &F,
    direction: Direction,
    pkt: &Packet,
    syn: bool,
) -> Result<Reason, Reason> {
    let local = match direction {
        Direction::Ingress => &pkt.dst,
        Direction::Egress => &pkt.src,
    };
    if !local::own(role, pkt.family, local) {
        return Err(Reason::NotLocal);
    }
    let now = clock::now();
    let mut carry = conntrack::Carry::NONE;
    if syn {
        let reopened = conntrack::reopen(t, flow, direction, pkt, now, &mut carry);
        if reopened.tracked {
            return reopened.verdict;
        }
    }
    conntrack::track(ctx, t, flow, direction, pkt, now, carry)?;
    Ok(Reason::Allowed)
}

/// An ICMP error passes when it is about a tracked flow and travels between that flow's
/// endpoints: to its local end coming in (a router on the path may send it), from its local end
/// to its remote end going out.
#[inline(always)]
fn related(
    role: Role,
    direction: Direction,
    outer: &Packet,
    quoted: &Packet,
) -> Result<Reason, Reason> {
    // The quoted packet crossed the NIC the other way.
    let (local, remote) = match direction {
        Direction::Ingress => (&quoted.src, &quoted.dst),
        Direction::Egress => (&quoted.dst, &quoted.src),
    };
    let endpoints = match direction {
        Direction::Ingress => outer.dst == *local,
        Direction::Egress => outer.src == *local && outer.dst == *remote,
    };
    if !endpoints {
        return Err(Reason::NotTracked);
    }
    let quoted_way = direction.reverse();
    let tracked = match Keying::of(quoted.family, quoted.proto) {
        Keying::Tcp4 => conntrack::tracked(
            &flows_tcp4(role),
            &quoted.flow_key4(quoted_way),
            quoted.proto,
        ),
        Keying::Wide => conntrack::tracked(
            &flows_wide(role),
            &quoted.wide_flow(quoted_way),
            quoted.proto,
        ),
    };
    if tracked {
        Ok(Reason::Related)
    } else {
        Err(Reason::NotTracked)
    }
}
