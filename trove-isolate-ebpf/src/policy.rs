//! The policy lookup: one hash lookup per prefix length the policy uses for the packet's
//! (role, direction, family) (see `trove_isolate_common::policy`), in the map that holds rules
//! of that family and length.
//!
//! Keys go to the maps by reference: passed by value, a key of byte fields is copied a byte at a
//! time on every lookup (about 9 ns per IPv6 lookup, BENCHMARKS.md).
#![allow(clippy::needless_borrows_for_generic_args)]

use trove_isolate_common::{
    family,
    policy::{
        class, LengthSlot, PolicyKey, PolicyKey4, PolicyKey6, PrefixLengths, EMPTY, MAX_LENGTHS,
        SHORT_V6,
    },
    Direction, Reason, Role,
};

use crate::{
    maps::{POLICY4, POLICY6, POLICY6_LONG, POLICY_LENGTHS},
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
    let port = pkt.policy_port().to_ne_bytes();
    let allowed = if pkt.family == family::V4 {
        let mut key = PolicyKey4 {
            role: role as u8,
            direction: direction as u8,
            proto: pkt.proto,
            prefix: 0,
            port,
            _pad: [0; 2],
            addr: 0,
        };
        let addr = remote[0];
        any_length(lengths, |slot| {
            key.prefix = slot.prefix;
            key.addr = addr & slot.mask[0];
            POLICY4.get_ptr(&key).is_some()
        })
    } else {
        // Only the protocols an IPv6 flow has reach here; any other matches nothing.
        let Some(tag) = PolicyKey6::tag(role as u8, direction as u8, pkt.proto) else {
            return Err(Reason::Policy);
        };
        let words = *remote;
        // Each key is made whole where it is looked up. With one key kept across the loop (its
        // prefix and address written per length, its zeros until then), the verifier, which
        // walks the loop once per length, followed more of the ways into each length apart: the
        // loop was a third of the instructions it processed per program, and this is a fifth
        // fewer in all (BENCHMARKS.md, section 4). The IPv4 key, whose loop LLVM unrolls, costs
        // the verifier less kept as it is.
        any_length(lengths, |slot| {
            if slot.prefix <= SHORT_V6 {
                let short = PolicyKey6 {
                    tag,
                    prefix: slot.prefix,
                    port,
                    addr: [words[0] & slot.mask[0], words[1] & slot.mask[1]],
                };
                return POLICY6.get_ptr(&short).is_some();
            }
            // Made here, not up front: most IPv6 rules are of the short kind.
            let mut long = PolicyKey {
                role: role as u8,
                direction: direction as u8,
                proto: pkt.proto,
                family: pkt.family,
                port,
                prefix: slot.prefix,
                _pad: 0,
                addr: [0; 16],
            };
            // Constant indices: plain stack stores for the verifier, no iterator to unroll.
            #[allow(clippy::needless_range_loop)]
            for w in 0..4 {
                let bytes = (words[w] & slot.mask[w]).to_ne_bytes();
                long.addr[w * 4..w * 4 + 4].copy_from_slice(&bytes);
            }
            POLICY6_LONG.get_ptr(&long).is_some()
        })
    };
    if allowed {
        Ok(())
    } else {
        Err(Reason::Policy)
    }
}

/// Whether `probe` finds a rule for one of the lengths in use.
#[inline(always)]
fn any_length(lengths: &PrefixLengths, mut probe: impl FnMut(&LengthSlot) -> bool) -> bool {
    let count = lengths.count as usize;
    for i in 0..MAX_LENGTHS {
        if i >= count {
            break;
        }
        let slot = &lengths.slots[i];
        if slot.prefix == EMPTY {
            continue;
        }
        if probe(slot) {
            return true;
        }
    }
    false
}
