//! IPv6 neighbour discovery and MLD: what a host needs to keep an address, each message in the
//! direction a host uses it, with the hop limit RFC 4861 and RFC 3810 require (255 for neighbour
//! discovery, 1 for MLD, which no router forwards), code 0, and in link scope. A guest is not a router:
//! it sends no router advertisements, redirects or MLD queries.
//!
//! Solicitations and advertisements are held to a host's shape, as ARP is: no bigger than the
//! message and the options a host sends (so what rides along, to or from a host no rule names,
//! is bounded), and going out only as the NIC's own: from one of its addresses (or ::, for
//! duplicate address detection), and an advertisement only for the address it comes from.

use aya_ebpf::programs::TcContext;
use trove_isolate_common::{family, Direction, Reason, Role};

use crate::{local, packet::Packet, parse};

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

#[inline(always)]
pub fn check(
    ctx: &TcContext,
    role: Role,
    direction: Direction,
    pkt: &Packet,
) -> Result<Reason, Reason> {
    let ingress = direction == Direction::Ingress;
    let (hop_limit, ok_scope) = match pkt.icmp_type {
        // Router advertisements and redirects come from a router's link-local address.
        ROUTER_ADVERTISEMENT | REDIRECT if ingress => (255, local::link_local(&pkt.src)),
        ROUTER_SOLICITATION if !ingress => (255, on_link(role, pkt)),
        NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT => (255, ingress || on_link(role, pkt)),
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
    let ty = pkt.icmp_type;
    if matches!(
        ty,
        ROUTER_SOLICITATION | NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT
    ) {
        if pkt.payload_len > MAX_LEN {
            return Err(Reason::Malformed);
        }
        // A solicitation or advertisement holds its target whole.
        let target = match ty {
            ROUTER_SOLICITATION => [0; 16],
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
    }
    Ok(Reason::NeighborDiscovery)
}

/// An outgoing message's destination is on the link, so no router carries it further.
#[inline(always)]
fn on_link(role: Role, pkt: &Packet) -> bool {
    local::on_link(role, pkt.family, &pkt.dst)
}
