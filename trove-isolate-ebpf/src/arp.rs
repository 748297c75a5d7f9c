//! ARP: always needed to keep neighbours, held to its shape. Only Ethernet/IPv4 requests and
//! replies, no bigger than a minimal frame (nothing rides along in the padding), and going out
//! only as one of the NIC's own addresses or as an address probe (sender 0.0.0.0).

use trove_isolate_common::{family, Direction, Reason, Role};

use crate::{local, packet::Arp};

/// The Ethernet minimum (60 bytes) and room for a VLAN tag the NIC may have stripped.
pub const MAX_FRAME: u32 = 64;

#[inline(always)]
pub fn check(role: Role, direction: Direction, arp: &Arp) -> Result<Reason, Reason> {
    if arp.frame_len > MAX_FRAME {
        return Err(Reason::Malformed);
    }
    let sender = u32::from_ne_bytes(arp.sender);
    if direction == Direction::Egress
        && sender != 0
        && !local::own(role, family::V4, &[sender, 0, 0, 0])
    {
        return Err(Reason::NotLocal);
    }
    Ok(Reason::Arp)
}
