//! The boot guard: what holds a guest's NICs closed until Trove's files say which is which.
//!
//! At an instance's first boot (and after a rebuild) cloud-init writes the guest agent's config
//! and eth1.json after trove-isolate starts. Until then nothing tells the business NIC from the
//! management NIC, so the roles' programs cannot be attached; the guard's programs are, to every
//! NIC, and pass only what a booting guest needs from its link: ARP, neighbour and router
//! discovery, DHCP, and TCP to the metadata service cloud-init reads (the [`Endpoints`] the
//! loader writes). Stateless: nothing here keeps a flow, so a flood fills nothing.

use crate::{Direction, Reason, Verdict};

/// The guard's programs in the eBPF object. The open pair passes what a booting guest needs
/// (above); the shut pair passes ARP and neighbour discovery alone, for a NIC the guest's boot
/// does not use: one away from the namespace `[boot]` names (the business NIC docker-hostnic
/// moved into the database container while the guard held it) and a business NIC whose policy
/// lapsed. Through either, the database would reach the metadata service (the agent's
/// credentials are in its user-data) and talk UDP to any host on DHCP's ports.
pub const fn program_name(direction: Direction, shut: bool) -> &'static str {
    match (direction, shut) {
        (Direction::Ingress, false) => "guard_ingress",
        (Direction::Egress, false) => "guard_egress",
        (Direction::Ingress, true) => "guard_shut_in",
        (Direction::Egress, true) => "guard_shut_out",
    }
}

/// The most metadata endpoints the guard passes TCP to.
pub const MAX_ENDPOINTS: usize = 4;

/// The lowest local port of a connection the guard passes: the guest's own connections come from
/// an ephemeral port, so a listener's reply (from its well-known port) never matches.
pub const MIN_LOCAL_PORT: u16 = 1024;

/// A TCP endpoint the guest may connect to while guarded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// An IPv4 address in its first four bytes.
    pub addr: [u8; 16],
    /// Network byte order, as the parser holds ports; 0 marks an unused slot.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

/// The one value of the guard's endpoint map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub entries: [Endpoint; MAX_ENDPOINTS],
}

/// The guard's counters: a per-CPU array indexed by (direction, verdict, reason).
pub const COUNTER_ENTRIES: u32 = (Direction::COUNT * Verdict::COUNT * Reason::COUNT) as u32;

#[inline(always)]
pub const fn counter_index(direction: Direction, verdict: Verdict, reason: Reason) -> u32 {
    (direction as u32 * Verdict::COUNT as u32 + verdict as u32) * Reason::COUNT as u32
        + reason as u32
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoints {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indexes_are_unique_and_in_range() {
        let mut seen = [false; COUNTER_ENTRIES as usize];
        for d in Direction::ALL {
            for v in Verdict::ALL {
                for why in Reason::ALL {
                    let i = counter_index(d, v, why) as usize;
                    assert!(!seen[i]);
                    seen[i] = true;
                }
            }
        }
    }
}
