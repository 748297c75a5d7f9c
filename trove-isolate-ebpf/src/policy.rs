//! The policy lookup: per prefix length the policy uses for the packet's (role, direction,
//! family) (see `trove_isolate_common::policy`), two buckets of the rule table of that family and
//! length, found by a hash computed here (`trove_isolate_common::rule_table`): array lookups,
//! which the verifier inlines, where a kernel hash map's lookup is a helper call of 25 to 34 ns
//! on some CPUs (BENCHMARKS.md, section 1).

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_map_lookup_elem, maps::Array};
use trove_isolate_common::{
    family,
    policy::{class, lengths_index, PolicyKey6, EMPTY, MAX_LENGTHS, SHORT_V6},
    rule_table::{Bucket, BucketLong, KeyLong, Region, SlotLong, SLOTS_LONG},
    Direction, Reason, Role,
};

use crate::{
    maps::{POLICY4, POLICY6, POLICY6_LONG, POLICY_GENERATION, POLICY_LENGTHS},
    packet::Packet,
};

/// Whether a rule of `role` allows `pkt` to open a flow in `direction`: the remote address is the
/// source coming in and the destination going out.
///
/// The lookups are in two global functions ([`trove_isolate_allows4`], [`trove_isolate_allows6`]).
/// The call costs about 9 ns on a CPU whose returns go through a mitigation's thunk; the walk of
/// sixteen lengths inlined cost the verifier 70 % more instructions, for every way into it
/// (BENCHMARKS.md, section 1: "The rules in arrays of buckets").
#[inline(always)]
pub fn check(role: Role, direction: Direction, pkt: &Packet) -> Result<(), Reason> {
    let Some(&generation) = POLICY_GENERATION.get(0) else {
        return Err(Reason::Policy);
    };
    let index = lengths_index(generation, class(role, direction, pkt.family));
    let remote = match direction {
        Direction::Ingress => &pkt.src,
        Direction::Egress => &pkt.dst,
    };
    let port = pkt.policy_port().to_ne_bytes();
    let allowed = if pkt.family == family::V4 {
        let head = u32::from_ne_bytes([role as u8, direction as u8, pkt.proto, 0]);
        let ports = u32::from_ne_bytes([port[0], port[1], 0, 0]);
        trove_isolate_allows4(index, head, ports, remote[0])
    } else {
        // Only the protocols an IPv6 flow has reach here; any other matches nothing.
        let Some(tag) = PolicyKey6::tag(role as u8, direction as u8, pkt.proto) else {
            return Err(Reason::Policy);
        };
        let tag_port = u32::from_ne_bytes([tag, 0, port[0], port[1]]);
        let head = u32::from_ne_bytes([role as u8, direction as u8, pkt.proto, pkt.family]);
        let w = remote;
        trove_isolate_allows6(index, tag_port, head, pair(w[0], w[1]), pair(w[2], w[3]))
    };
    if allowed != 0 {
        Ok(())
    } else {
        Err(Reason::Policy)
    }
}

/// Two address words as one argument.
#[inline(always)]
fn pair(a: u32, b: u32) -> u64 {
    u64::from(a) | (u64::from(b) << 32)
}

/// Whether an IPv4 rule allows a new flow: the prefix lengths of entry `index` of the
/// prefix-length map, each looked up for `remote` (`PolicyKey4::words`: `head` with the prefix
/// length in its last byte, `ports`, the address masked).
///
/// A global function (no `static`, its arguments scalars): the verifier checks it once, on its
/// own, not once for every way into it, which the walk of sixteen lengths made dear (each
/// length's probe is some hundred instructions).
#[no_mangle]
#[inline(never)]
pub extern "C" fn trove_isolate_allows4(index: u32, head: u32, ports: u32, remote: u32) -> u32 {
    let Some(lengths) = POLICY_LENGTHS.get(index) else {
        return 0;
    };
    let count = lengths.count as usize;
    let region = &lengths.regions[0];
    let mut at = 0u32;
    for i in 0..MAX_LENGTHS {
        if i >= count {
            break;
        }
        let slot = &lengths.slots[i];
        if slot.prefix == EMPTY {
            continue;
        }
        let head = head | u32::from_ne_bytes([0, 0, 0, slot.prefix]);
        if probe(
            &POLICY4,
            &mut at,
            region,
            &[head, ports, remote & slot.mask[0]],
        ) {
            return 1;
        }
    }
    0
}

/// As [`trove_isolate_allows4`] for IPv6: `tag_port` is `PolicyKey6::words`'s first word
/// without the prefix length, `head` `PolicyKey::words`'s, and the address's words come in
/// pairs.
#[no_mangle]
#[inline(never)]
pub extern "C" fn trove_isolate_allows6(
    index: u32,
    tag_port: u32,
    head: u32,
    high: u64,
    low: u64,
) -> u32 {
    let Some(lengths) = POLICY_LENGTHS.get(index) else {
        return 0;
    };
    // The short key's two address words.
    let words = [high as u32, (high >> 32) as u32];
    let [_, _, port0, port1] = tag_port.to_ne_bytes();
    let count = lengths.count as usize;
    let (short, long) = (&lengths.regions[0], &lengths.regions[1]);
    let mut at = 0u32;
    for i in 0..MAX_LENGTHS {
        if i >= count {
            break;
        }
        let slot = &lengths.slots[i];
        if slot.prefix == EMPTY {
            continue;
        }
        let found = if slot.prefix <= SHORT_V6 {
            // `PolicyKey6::words`.
            let head = tag_port | u32::from_ne_bytes([0, slot.prefix, 0, 0]);
            let key = [head, words[0] & slot.mask[0], words[1] & slot.mask[1]];
            probe(&POLICY6, &mut at, short, &key)
        } else {
            // `PolicyKey::words`, in pairs.
            let mask = |j: usize| u64::from(slot.mask[j]) | (u64::from(slot.mask[j + 1]) << 32);
            let key = [
                u64::from(head)
                    | (u64::from(u32::from_ne_bytes([port0, port1, slot.prefix, 0])) << 32),
                high & mask(0),
                low & mask(2),
            ];
            probe_long(&mut at, long, &key)
        };
        if found {
            return 1;
        }
    }
    0
}

/// Whether either of `key`'s two buckets in `region` of `table` holds it. A bucket beyond the
/// map (a region the daemon did not write) holds nothing.
#[inline(always)]
fn probe<B: Bucket>(table: &Array<B>, at: &mut u32, region: &Region, key: &B::Key) -> bool {
    // An empty slot's zeros would match it (`rule_table`).
    if B::first_word(key) == 0 {
        return false;
    }
    let (a, b) = B::buckets(key, region.seed, region.mask);
    let holds = |at: &mut u32, i: u32| match bucket(table, at, region.base.wrapping_add(i)) {
        Some(bucket) => bucket.holds(key),
        None => false,
    };
    holds(at, a) || holds(at, b)
}

/// [`probe`] for the long IPv6 keys, held as three pairs of words (each pair's first word in its
/// low half, as the words lie in memory on the little-endian target) and compared with each slot's key eight bytes at a
/// time: three values kept across the bucket's lookup rather than six words, which LLVM spilled
/// to a frame of 104 bytes, counted as 128 by Linux 5.15 beside the programs' own 384 in the
/// 512 bytes a chain of calls may use (`main.rs`).
#[inline(always)]
fn probe_long(at: &mut u32, region: &Region, key: &[u64; 3]) -> bool {
    let half = |i: usize| (key[i / 2] >> (32 * (i % 2))) as u32;
    let words: KeyLong = [half(0), half(1), half(2), half(3), half(4), half(5)];
    // An empty slot's zeros would match it (`rule_table`).
    if words[0] == 0 {
        return false;
    }
    let (a, b) = BucketLong::buckets(&words, region.seed, region.mask);
    let holds = |at: &mut u32, i: u32| match bucket(&POLICY6_LONG, at, region.base.wrapping_add(i))
    {
        Some(bucket) => holds_long(bucket, key),
        None => false,
    };
    holds(at, a) || holds(at, b)
}

/// Whether a bucket of long keys holds `key` (as [`probe_long`] holds it). A slot's key is read
/// as three 8-byte words: it lies at an offset a multiple of 8 into the bucket, and a map's
/// values are 8-byte aligned.
#[inline(always)]
fn holds_long(bucket: &BucketLong, key: &[u64; 3]) -> bool {
    const _: () = assert!(core::mem::offset_of!(SlotLong, key) == 0);
    const _: () = assert!(core::mem::size_of::<SlotLong>().is_multiple_of(8));
    let mut i = 0;
    while i < SLOTS_LONG {
        let words = bucket.slots[i].key.as_ptr() as *const u64;
        let diff = unsafe {
            (words.read() ^ key[0])
                | (words.add(1).read() ^ key[1])
                | (words.add(2).read() ^ key[2])
        };
        if diff == 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// Bucket `i` of `table`. The lookup's key goes through `at`, one stack slot for every
/// probe of a packet: `Array::get` makes a slot per call, and the unrolled loop of IPv4's
/// lengths made sixteen pairs of them, past the 512 bytes of stack a program may use. (The
/// verifier inlines an array's lookup: no helper is called.)
#[inline(always)]
fn bucket<'a, T>(table: &'a Array<T>, at: &mut u32, i: u32) -> Option<&'a T> {
    *at = i;
    let map = table as *const Array<T> as *mut c_void;
    let value = unsafe { bpf_map_lookup_elem(map, at as *const u32 as *const c_void) };
    unsafe { (value as *const T).as_ref() }
}
