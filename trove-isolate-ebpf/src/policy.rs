//! The policy lookup: one hash lookup per prefix length the policy uses for the packet's
//! (role, direction, family) (see `trove_isolate_common::policy`), in the family's map.

use aya_ebpf::maps::HashMap;
use trove_isolate_common::{
    family,
    policy::{
        class, LengthSlot, PolicyKey, PolicyKey4, PolicyValue, PrefixLengths, EMPTY, MAX_LENGTHS,
    },
    Direction, Reason, Role,
};

use crate::{
    maps::{POLICY4, POLICY6, POLICY_LENGTHS},
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
    let port = pkt.policy_port().to_ne_bytes();
    let allowed = if pkt.family == family::V4 {
        let mut key = PolicyKey4 {
            role: role as u8,
            direction: direction as u8,
            proto: pkt.proto,
            prefix: 0,
            port,
            _pad: [0; 2],
            addr: [0; 4],
        };
        let addr = word(0);
        any_length(lengths, &POLICY4, &mut key, |key, slot| {
            key.prefix = slot.prefix;
            key.addr = (addr & slot.mask[0]).to_ne_bytes();
        })
    } else {
        let mut key = PolicyKey {
            role: role as u8,
            direction: direction as u8,
            proto: pkt.proto,
            family: pkt.family,
            port,
            prefix: 0,
            _pad: 0,
            addr: [0; 16],
        };
        let words = [word(0), word(4), word(8), word(12)];
        any_length(lengths, &POLICY6, &mut key, |key, slot| {
            key.prefix = slot.prefix;
            // Constant indices: plain stack stores for the verifier, no iterator to unroll.
            #[allow(clippy::needless_range_loop)]
            for w in 0..4 {
                let bytes = (words[w] & slot.mask[w]).to_ne_bytes();
                key.addr[w * 4..w * 4 + 4].copy_from_slice(&bytes);
            }
        })
    };
    if allowed {
        Ok(())
    } else {
        Err(Reason::Policy)
    }
}

/// Whether `rules` holds `key` for one of the lengths in use, `set` writing each length (and
/// the address masked to it) into the key.
#[inline(always)]
fn any_length<K>(
    lengths: &PrefixLengths,
    rules: &HashMap<K, PolicyValue>,
    key: &mut K,
    set: impl Fn(&mut K, &LengthSlot),
) -> bool {
    let count = lengths.count as usize;
    for i in 0..MAX_LENGTHS {
        if i >= count {
            break;
        }
        let slot = &lengths.slots[i];
        if slot.prefix == EMPTY {
            continue;
        }
        set(key, slot);
        if rules.get_ptr(&*key).is_some() {
            return true;
        }
    }
    false
}
