//! The policy lookup: one hash lookup per prefix length the policy uses for the packet's
//! (role, direction, family) (see `trove_isolate_common::policy`).

use trove_isolate_common::{
    policy::{class, PolicyKey, EMPTY, MAX_LENGTHS},
    Direction, Reason, Role,
};

use crate::{
    maps::{POLICY, POLICY_LENGTHS},
    packet::Packet,
};

/// Whether a rule of `role` allows `pkt` to open a flow in `direction`: the remote address is the
/// source coming in and the destination going out.
#[inline(always)]
pub fn check(role: Role, direction: Direction, pkt: &Packet) -> Result<(), Reason> {
    let Some(lengths) = POLICY_LENGTHS.get(class(role, direction, pkt.family)) else {
        return Err(Reason::Policy);
    };
    let remote = match direction {
        Direction::Ingress => &pkt.src,
        Direction::Egress => &pkt.dst,
    };
    let word =
        |i: usize| u32::from_ne_bytes([remote[i], remote[i + 1], remote[i + 2], remote[i + 3]]);
    let words = [word(0), word(4), word(8), word(12)];
    let mut key = PolicyKey {
        role: role as u8,
        direction: direction as u8,
        proto: pkt.proto,
        family: pkt.family,
        port: pkt.policy_port().to_ne_bytes(),
        prefix: 0,
        _pad: 0,
        addr: [0; 16],
    };
    let count = lengths.count as usize;
    for i in 0..MAX_LENGTHS {
        if i >= count {
            break;
        }
        let slot = &lengths.slots[i];
        if slot.prefix == EMPTY {
            continue;
        }
        key.prefix = slot.prefix;
        // Constant indices: plain stack stores for the verifier, no iterator to unroll.
        #[allow(clippy::needless_range_loop)]
        for w in 0..4 {
            let bytes = (words[w] & slot.mask[w]).to_ne_bytes();
            key.addr[w * 4..w * 4 + 4].copy_from_slice(&bytes);
        }
        if POLICY.get_ptr(key).is_some() {
            return Ok(());
        }
    }
    Err(Reason::Policy)
}
