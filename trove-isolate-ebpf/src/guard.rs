//! The boot guard's programs (`trove_isolate_common::guard`): every NIC closed but for what a
//! booting guest needs from its link, until Trove's files say which NIC is which.

use aya_ebpf::programs::TcContext;
use trove_isolate_common::{
    action,
    conntrack::bytes,
    guard::{counter_index, MIN_LOCAL_PORT},
    Direction, Reason, Verdict,
};

use crate::{
    arp,
    dhcp::{self, BOOTPC, BOOTPS, DHCPV6_CLIENT, DHCPV6_SERVER},
    local,
    maps::{GUARD_COUNTERS, GUARD_ENDPOINTS},
    nd,
    packet::{Kind, Packet, Parsed, TCP_ACK, TCP_SYN},
    parse,
};

/// `shut`: ARP and neighbour discovery alone (no DHCP, no metadata service).
#[inline(always)]
pub fn run(ctx: &TcContext, direction: Direction, shut: bool) -> i32 {
    let (verdict, reason, act) = match decide(ctx, direction, shut) {
        Ok(reason) => (Verdict::Pass, reason, action::PASS),
        Err(reason) => (Verdict::Drop, reason, action::DROP),
    };
    if let Some(counter) = GUARD_COUNTERS.get_ptr_mut(counter_index(direction, verdict, reason)) {
        // Per-CPU slot: no other writer.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += ctx.len() as u64;
        }
    }
    act
}

#[inline(always)]
fn decide(ctx: &TcContext, direction: Direction, shut: bool) -> Result<Reason, Reason> {
    match parse::parse(ctx)? {
        Parsed::Arp(pkt) if pkt.frame_len <= arp::MAX_FRAME => Ok(Reason::Arp),
        Parsed::Arp(_) => Err(Reason::Malformed),
        Parsed::NeighborDiscovery(pkt) => nd::guard_check(ctx, direction, &pkt, shut),
        Parsed::Related { .. } => Err(Reason::NotTracked),
        Parsed::Flow(_) if shut => Err(Reason::Policy),
        Parsed::Flow(pkt) => match pkt.kind {
            Kind::Udp if dhcp(direction, &pkt) => Ok(Reason::Dhcp),
            Kind::Tcp if metadata(direction, &pkt) => Ok(Reason::Allowed),
            _ => Err(Reason::Policy),
        },
    }
}

/// DHCP or DHCPv6 client traffic: client port to server port going out, back coming in. The
/// guard knows no address of the NIC, so the link is what bounds it: DHCPv4 goes out to the
/// broadcast address only, DHCPv6 in link scope. A datagram from port 68 to a unicast address
/// may be another's the guest forwards (a container's, masqueraded to the guest's address), to
/// any host, whose answer comes back by its ports (a review found it); the price is a lease's
/// unicast renewal, refused while the guard holds, which the client sends again as a broadcast
/// once it rebinds (RFC 2131: at 7/8 of the lease; the guard holds minutes at a boot).
#[inline(always)]
fn dhcp(direction: Direction, pkt: &Packet) -> bool {
    let v4 = pkt.family == trove_isolate_common::family::V4;
    let (client, server) = if v4 {
        (BOOTPC, BOOTPS)
    } else {
        (DHCPV6_CLIENT, DHCPV6_SERVER)
    };
    let (from, to, remote) = match direction {
        Direction::Egress => (client, server, &pkt.dst),
        Direction::Ingress => (server, client, &pkt.src),
    };
    let in_scope = match (v4, direction) {
        (true, Direction::Egress) => dhcp::broadcast(&pkt.dst),
        // An offer may come to the address it offers, which the guard cannot know.
        (true, Direction::Ingress) => true,
        (false, _) => local::link_local(remote) || local::link_multicast(remote),
    };
    pkt.src_port == from && pkt.dst_port == to && in_scope
}

/// TCP between one of the guest's ephemeral ports and a metadata endpoint: going out, anything
/// but a SYN-ACK (a listener's answer); coming in, anything but a bare SYN (the metadata service
/// never connects to the guest).
#[inline(always)]
fn metadata(direction: Direction, pkt: &Packet) -> bool {
    let (remote, remote_port, local_port) = match direction {
        Direction::Egress => (&pkt.dst, pkt.dst_port, pkt.src_port),
        Direction::Ingress => (&pkt.src, pkt.src_port, pkt.dst_port),
    };
    let syn_ack = pkt.tcp_flags & (TCP_SYN | TCP_ACK);
    let opening = match direction {
        Direction::Egress => syn_ack == TCP_SYN | TCP_ACK,
        Direction::Ingress => syn_ack == TCP_SYN,
    };
    if opening || u16::from_be(local_port) < MIN_LOCAL_PORT {
        return false;
    }
    let Some(endpoints) = GUARD_ENDPOINTS.get(0) else {
        return false;
    };
    // The endpoints hold bytes: the address is put in their form once.
    let remote = bytes(remote);
    for e in endpoints.entries.iter() {
        if e.port != 0 && e.port == remote_port && e.family == pkt.family && e.addr == remote {
            return true;
        }
    }
    false
}
