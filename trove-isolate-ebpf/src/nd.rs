//! IPv6 neighbour discovery and MLD: what a host needs to keep an address, each message in the
//! direction a host uses it, with the hop limit RFC 4861 and RFC 3810 require (255 for neighbour
//! discovery, 1 for MLD, which no router forwards), code 0, and in link scope. A guest is not a router:
//! it sends no router advertisements, redirects or MLD queries.
//!
//! What goes out to the link is held to what Linux sends, so that what a process can make ride
//! along, to a host no rule names, is bounded (SECURITY.md):
//! - Solicitations and advertisements have a host's shape, as ARP does: no extension headers,
//!   no bigger than the message and the options a host sends, and going out only as the NIC's
//!   own (from one of its addresses, or :: for duplicate address detection; an advertisement
//!   only for the address it comes from).
//! - MLD reports name only the solicited-node groups of the NIC's own addresses, with no sources,
//!   from its link-local address (or ::), behind the one hop-by-hop header Linux puts there. The
//!   groups a process joins are its choice, so their reports would carry its bits to the link.

use aya_ebpf::programs::TcContext;
use trove_isolate_common::{conntrack::words, family, Direction, Reason, Role};

use crate::{
    local,
    packet::{Addr, Packet},
    parse,
};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const REDIRECT: u8 = 137;
const MLD_QUERY: u8 = 130;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const MLD2_REPORT: u8 = 143;

/// The longest router solicitation, neighbour solicitation or advertisement that passes, in
/// bytes of ICMPv6: the message (8 or 24 bytes) and up to 40 of options, where a host sends its
/// link-layer address (8) and, probing an address, a nonce (8).
const MAX_LEN: u32 = 64;

/// The hop-by-hop header in front of every MLD message Linux sends (`mcast.c`): next header
/// ICMPv6, length 0, a router alert for MLD (RFC 2711), two bytes of padding.
const MLD_HOP_BY_HOP: [u8; 8] = [58, 0, 5, 2, 0, 0, 1, 0];
/// An MLDv1 report or done: the header, the maximum response delay and reserved bytes (zero
/// going out), the group.
const MLD1_LEN: u32 = 24;
/// An MLDv2 report: an 8-byte header, then records of 20 bytes (with no sources).
const MLD2_HEADER: u32 = 8;
const MLD2_RECORD: u32 = 20;
/// The most records a report that passes holds: one per solicited-node group of the NIC, whose
/// IPv6 addresses share one where their low 24 bits do (a SLAAC address and its link-local one).
pub const MAX_RECORDS: u32 = 32;
/// Record types a host reports for a group it has joined with no sources (RFC 3810 5.2.12):
/// current state include (1) and exclude (2), changes to include (3) and exclude (4). Allow and
/// block (5, 6) always list sources.
const LAST_RECORD_TYPE: u8 = 4;
/// ff02::2, where MLDv1 done goes, and ff02::16, where MLDv2 reports go.
const ALL_ROUTERS: Addr = words(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
const ALL_MLDV2_ROUTERS: Addr = words(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16]);
/// ff02::1:ff00:0, the solicited-node groups' prefix (/104).
const SOLICITED_NODE: Addr = words(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0]);

#[inline(always)]
pub fn check(
    ctx: &TcContext,
    role: Role,
    direction: Direction,
    pkt: &Packet,
) -> Result<Reason, Reason> {
    let ingress = direction == Direction::Ingress;
    in_its_place(ingress, pkt, |pkt| on_link(role, pkt))?;
    match pkt.icmp_type {
        ROUTER_SOLICITATION | NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT => {
            host_shaped(ctx, role, ingress, pkt)?
        }
        // Going out: the only direction they pass.
        MLD_REPORT | MLD_DONE | MLD2_REPORT => own_report(ctx, role, pkt)?,
        _ => {}
    }
    // Coming in, addressed to the NIC or its link (a query's hop limit of 1 keeps it there): a
    // message to another address would be forwarded where the guest forwards IPv6 (Docker's
    // `ipv6` turns it on), carrying what no rule names past the NIC.
    if ingress
        && pkt.icmp_type != MLD_QUERY
        && !local::link_multicast(&pkt.dst)
        && !local::own(role, family::V6, &pkt.dst)
    {
        return Err(Reason::NotLocal);
    }
    Ok(Reason::NeighborDiscovery)
}

/// Neighbour discovery and MLD as the boot guard holds them, knowing none of the NIC's
/// addresses: each message in the direction a host uses it, with its hop limit and code, in link
/// scope where the message says so, and a solicitation or advertisement no bigger than a host's.
/// `shut` (a NIC the guest's boot does not use): going out, link scope only.
#[inline(always)]
pub fn guard_check(
    ctx: &TcContext,
    direction: Direction,
    pkt: &Packet,
    shut: bool,
) -> Result<Reason, Reason> {
    let ingress = direction == Direction::Ingress;
    // Which subnets are on the link is unknown: a solicitation or advertisement may go to any
    // neighbour, a router solicitation to the routers' group. Shut, nothing else passes to
    // need a global neighbour, and one to a global address a router would forward.
    in_its_place(ingress, pkt, |pkt| match pkt.icmp_type {
        ROUTER_SOLICITATION => local::link_multicast(&pkt.dst),
        _ => !shut || local::link_local(&pkt.dst) || local::link_multicast(&pkt.dst),
    })?;
    match pkt.icmp_type {
        ROUTER_SOLICITATION | NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT
            if pkt.payload_len > MAX_LEN || pkt.options_len != 0 =>
        {
            return Err(Reason::Malformed)
        }
        MLD_REPORT | MLD_DONE | MLD2_REPORT => guard_report(ctx, pkt)?,
        _ => {}
    }
    Ok(Reason::NeighborDiscovery)
}

/// Each message in the direction a host uses it (else `unsupported_protocol`), with the hop
/// limit RFC 4861 or RFC 3810 requires, code 0, and in its scope (else `malformed`): going out,
/// a solicitation or advertisement where `on_link` says.
#[inline(always)]
fn in_its_place(
    ingress: bool,
    pkt: &Packet,
    on_link: impl Fn(&Packet) -> bool,
) -> Result<(), Reason> {
    let (hop_limit, ok_scope) = match pkt.icmp_type {
        // Router advertisements and redirects come from a router's link-local address.
        ROUTER_ADVERTISEMENT | REDIRECT if ingress => (255, local::link_local(&pkt.src)),
        ROUTER_SOLICITATION if !ingress => (255, on_link(pkt)),
        NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT => (255, ingress || on_link(pkt)),
        MLD_QUERY if ingress => (1, local::link_local(&pkt.src)),
        MLD_REPORT | MLD_DONE | MLD2_REPORT if !ingress => (
            1,
            (local::link_local(&pkt.src) || local::unspecified(&pkt.src))
                && local::link_multicast(&pkt.dst),
        ),
        _ => return Err(Reason::UnsupportedProtocol),
    };
    if pkt.hop_limit != hop_limit || pkt.icmp_code != 0 || !ok_scope {
        return Err(Reason::Malformed);
    }
    Ok(())
}

/// A router solicitation, neighbour solicitation or advertisement as a host sends it, in either
/// direction; going out, the NIC's own.
#[inline(always)]
fn host_shaped(ctx: &TcContext, role: Role, ingress: bool, pkt: &Packet) -> Result<(), Reason> {
    if pkt.payload_len > MAX_LEN || pkt.options_len != 0 {
        return Err(Reason::Malformed);
    }
    let ty = pkt.icmp_type;
    // A solicitation or advertisement holds its target whole.
    let target = match ty {
        ROUTER_SOLICITATION => [0; 4],
        _ => parse::nd_target(ctx, pkt)?,
    };
    if !ingress {
        // An advertisement answers for an own address, from that address (as a host sends
        // it: Linux picks another source only for anycast or proxy addresses, which a guest
        // does not have). A solicitation comes from an own address, or from :: (duplicate
        // address detection, or no address yet). One own-address check either way.
        let advert = ty == NEIGHBOR_ADVERTISEMENT;
        if advert && pkt.src != target {
            return Err(Reason::NotLocal);
        }
        let unspecified = !advert && local::unspecified(&pkt.src);
        if !unspecified && !local::own(role, family::V6, &pkt.src) {
            return Err(Reason::NotLocal);
        }
    }
    Ok(())
}

/// An MLD report or done going out: Linux's hop-by-hop header alone in front of it, from the
/// NIC's own link-local address or ::, and naming only the NIC's own solicited-node groups.
/// Its shape wrong: `malformed`; another source or group: `not_local`.
///
/// A function of its own in the program (a static BPF-to-BPF call): its many exits come back
/// through one return. (Not a global function, which the verifier would check once on its own as
/// it does `parse`'s walks of options: that takes a context and scalars, and the report needs
/// the packet's two addresses besides.)
#[inline(never)]
fn own_report(ctx: &TcContext, role: Role, pkt: &Packet) -> Result<(), Reason> {
    // The trie alone: a report is rare, and each inlined scan of the sets costs the verifier.
    report(
        ctx,
        pkt,
        |src| local::unspecified(src) || local::own_in_trie(role, family::V6, src),
        |group| local::own_group(role, group),
    )
}

/// An MLD report or done going out while the boot guard holds the NIC, whose addresses it does
/// not know: shaped as [`own_report`] says, naming solicited-node groups only (what Linux
/// reports for its addresses; a group a process joins would carry its bits to the link).
#[inline(never)]
pub fn guard_report(ctx: &TcContext, pkt: &Packet) -> Result<(), Reason> {
    report(ctx, pkt, |_| true, solicited_node)
}

/// ff02::1:ff00:0/104.
#[inline(always)]
fn solicited_node(group: &Addr) -> bool {
    // The prefix's 13 bytes, compared in one test: each test of a word apart would be a branch
    // the verifier follows through the rest of the report.
    let first_byte = u32::from_ne_bytes([0xff, 0, 0, 0]);
    let differ = (group[0] ^ SOLICITED_NODE[0])
        | (group[1] ^ SOLICITED_NODE[1])
        | (group[2] ^ SOLICITED_NODE[2])
        | ((group[3] ^ SOLICITED_NODE[3]) & first_byte);
    differ == 0
}

/// The shape of an MLD report or done going out, its source held to `src_ok` and each group it
/// names to `group_ok`.
#[inline(always)]
fn report(
    ctx: &TcContext,
    pkt: &Packet,
    src_ok: impl Fn(&Addr) -> bool,
    group_ok: impl Fn(&Addr) -> bool,
) -> Result<(), Reason> {
    if pkt.options_len != 1 || parse::nd_ext_header(ctx, pkt)? != u64::from_ne_bytes(MLD_HOP_BY_HOP)
    {
        return Err(Reason::Malformed);
    }
    if !src_ok(&pkt.src) {
        return Err(Reason::NotLocal);
    }
    let word = parse::nd_word(ctx, pkt)?;
    if pkt.icmp_type != MLD2_REPORT {
        // A report goes to its group, done to the routers.
        if pkt.payload_len != MLD1_LEN || word != [0; 4] {
            return Err(Reason::Malformed);
        }
        let group = parse::nd_target(ctx, pkt)?;
        let to = if pkt.icmp_type == MLD_REPORT {
            group
        } else {
            ALL_ROUTERS
        };
        if pkt.dst != to {
            return Err(Reason::Malformed);
        }
        return match group_ok(&group) {
            true => Ok(()),
            false => Err(Reason::NotLocal),
        };
    }
    let records = u16::from_be_bytes([word[2], word[3]]) as u32;
    if pkt.dst != ALL_MLDV2_ROUTERS
        || word[0] != 0
        || word[1] != 0
        || records == 0
        || records > MAX_RECORDS
        || pkt.payload_len != MLD2_HEADER + records * MLD2_RECORD
    {
        return Err(Reason::Malformed);
    }
    let mut at = pkt.options_at as usize + MLD2_HEADER as usize;
    for i in 0..MAX_RECORDS {
        if i >= records {
            break;
        }
        let record = parse::mld_record(ctx, at)?;
        if record.record_type == 0
            || record.record_type > LAST_RECORD_TYPE
            || record.aux_len != 0
            || record.sources != 0
        {
            return Err(Reason::Malformed);
        }
        if !group_ok(&record.group) {
            return Err(Reason::NotLocal);
        }
        at += MLD2_RECORD as usize;
    }
    Ok(())
}

/// An outgoing message's destination is on the link, so no router carries it further.
#[inline(always)]
fn on_link(role: Role, pkt: &Packet) -> bool {
    local::on_link(role, pkt.family, &pkt.dst)
}
