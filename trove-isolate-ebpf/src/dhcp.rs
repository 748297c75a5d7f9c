//! DHCP and DHCPv6 client traffic, passed without tracking when the role's settings say so.
//!
//! Only client port to server port and back, and only within the link: DHCPv4 goes out from
//! 0.0.0.0 or an own address to the broadcast address or an on-link server and comes back from
//! an on-link server to the broadcast address or an own address (before the NIC has an address
//! the client reads its offers on a packet socket, ahead of TC); DHCPv6 goes from a link-local address to All_DHCP_Relay_Agents_and_Servers or a
//! link-local server and comes back from a link-local server to an own address. Nothing here
//! creates a flow, so a flood at the client port fills no table.

use trove_isolate_common::{conntrack::words, family, Direction, Role};

use crate::{
    local,
    maps::SETTINGS,
    packet::{Addr, Kind, Packet},
};

pub const BOOTPS: u16 = 67u16.to_be();
pub const BOOTPC: u16 = 68u16.to_be();
pub const DHCPV6_CLIENT: u16 = 546u16.to_be();
pub const DHCPV6_SERVER: u16 = 547u16.to_be();
/// ff02::1:2.
const ALL_DHCP_SERVERS: Addr = words(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2]);

/// Whether `pkt` is DHCP client traffic this NIC passes.
#[inline(always)]
pub fn allowed(role: Role, direction: Direction, pkt: &Packet) -> bool {
    if pkt.kind != Kind::Udp {
        return false;
    }
    let (client, server) = match pkt.family {
        family::V4 => (BOOTPC, BOOTPS),
        _ => (DHCPV6_CLIENT, DHCPV6_SERVER),
    };
    let (from, to) = match direction {
        Direction::Egress => (client, server),
        Direction::Ingress => (server, client),
    };
    if pkt.src_port != from || pkt.dst_port != to || !enabled(role) {
        return false;
    }
    match (pkt.family, direction) {
        (family::V4, Direction::Egress) => {
            (local::unspecified(&pkt.src) || local::own(role, pkt.family, &pkt.src))
                && (broadcast(&pkt.dst) || local::on_link(role, pkt.family, &pkt.dst))
        }
        (family::V4, Direction::Ingress) => {
            local::on_link(role, pkt.family, &pkt.src)
                && (broadcast(&pkt.dst) || local::own(role, pkt.family, &pkt.dst))
        }
        (_, Direction::Egress) => {
            local::link_local(&pkt.src)
                && (pkt.dst == ALL_DHCP_SERVERS || local::link_local(&pkt.dst))
        }
        (_, Direction::Ingress) => {
            local::link_local(&pkt.src) && local::own(role, pkt.family, &pkt.dst)
        }
    }
}

/// 255.255.255.255.
#[inline(always)]
pub fn broadcast(addr: &Addr) -> bool {
    addr[0] == u32::MAX
}

#[inline(always)]
fn enabled(role: Role) -> bool {
    matches!(SETTINGS.get(role as u32), Some(s) if s.dhcp != 0)
}
