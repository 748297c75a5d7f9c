//! The policy lookup: one LPM trie query with the role leading the key.

use aya_ebpf::maps::lpm_trie::Key;
use trove_isolate_common::{
    family,
    policy::{PolicyKey, FIXED_PREFIX_BITS},
    Direction, Reason, Role,
};

use crate::{maps::POLICY, packet::Packet};

/// Whether a rule of `role` allows `pkt` to open a flow in `direction`: the remote address is the
/// source coming in and the destination going out.
#[inline(always)]
pub fn check(role: Role, direction: Direction, pkt: &Packet) -> Result<(), Reason> {
    let addr_bits = if pkt.family == family::V4 { 32 } else { 128 };
    let key = Key::new(
        FIXED_PREFIX_BITS + addr_bits,
        PolicyKey {
            role: role as u8,
            direction: direction as u8,
            proto: pkt.proto,
            family: pkt.family,
            port: pkt.policy_port().to_ne_bytes(),
            addr: match direction {
                Direction::Ingress => pkt.src,
                Direction::Egress => pkt.dst,
            },
        },
    );
    match POLICY.get(&key) {
        Some(_) => Ok(()),
        None => Err(Reason::Policy),
    }
}
