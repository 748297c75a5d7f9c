//! How the rules lie in the policy maps: arrays of 64-byte buckets probed by a hash the program
//! computes, not the kernel's hash maps.
//!
//! On a CPU whose kernel returns go through a mitigation's thunk (AMD's SRSO), a kernel hash
//! lookup costs 25 to 34 ns, about the whole empty program again; an array lookup, which the
//! verifier inlines, costs 1 to 3 (BENCHMARKS.md, section 1). The rules are written only by the
//! daemon, whole, so they can lie where a program finds them with no helper call:
//!
//! - Each rule's key, as words ([`Key12`], [`KeyLong`]), hashes to two buckets of one region
//!   ([`buckets`]); the daemon places it in one of the two (bucketized cuckoo hashing), so a
//!   lookup reads two buckets, a cache line each, and compares their slots.
//! - Each map holds two regions, one per generation. The daemon writes the generation not in
//!   force, whole, with its prefix lengths, then turns the generation word over, then waits
//!   until no program run that read the old one is left (the same wait as the own-address
//!   sets'). A packet is judged by one policy or the other, never a mix: no window.
//! - A slot's `rule` is the rule's id plus one; 0 is an empty slot. An empty slot's key is
//!   zeros, and no key the rules or a packet make begins with a zero word (its protocol is in
//!   it, and the datapath refuses one that does): so a lookup compares keys alone.

/// Slots of a bucket of 12-byte keys (16 bytes a slot).
pub const SLOTS12: usize = 4;
/// Slots of a bucket of 24-byte keys (32 bytes a slot).
pub const SLOTS_LONG: usize = 2;

/// A 12-byte key as three native-endian words: `PolicyKey4` and `PolicyKey6` read as words.
pub type Key12 = [u32; 3];
/// A `PolicyKey` as six words.
pub type KeyLong = [u32; 6];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot12 {
    pub key: Key12,
    /// The rule's id plus one; 0: empty.
    pub rule: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket12 {
    pub slots: [Slot12; SLOTS12],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotLong {
    pub key: KeyLong,
    /// As in [`Slot12`].
    pub rule: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketLong {
    pub slots: [SlotLong; SLOTS_LONG],
}

const _: () = assert!(core::mem::size_of::<Bucket12>() == 64);
const _: () = assert!(core::mem::size_of::<BucketLong>() == 64);

/// Where one generation's rules lie in a map: buckets `base` to `base + mask`, `mask + 1` a
/// power of two, placed by hashes of `seed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub base: u32,
    pub mask: u32,
    pub seed: u32,
}

/// One round of mixing a word into the hash (multiply, shift: cheap on every JIT).
#[inline(always)]
fn round(h: u32, word: u32) -> u32 {
    let x = (h ^ word).wrapping_mul(0x9e37_79b1);
    x ^ (x >> 15)
}

/// The two bucket indices (within a region of `mask + 1`) of a key's words hashed to `h`.
#[inline(always)]
fn pair(h: u32, mask: u32) -> (u32, u32) {
    let mut a = h ^ (h >> 16);
    a = a.wrapping_mul(0x85eb_ca6b);
    a ^= a >> 13;
    let mut b = a.wrapping_mul(0xc2b2_ae35);
    b ^= b >> 16;
    (a & mask, b & mask)
}

/// The buckets (region-relative) a 12-byte key may lie in.
#[inline(always)]
pub fn buckets12(key: &Key12, seed: u32, mask: u32) -> (u32, u32) {
    let h = round(round(round(seed, key[0]), key[1]), key[2]);
    pair(h, mask)
}

/// The buckets (region-relative) a 24-byte key may lie in.
#[inline(always)]
pub fn buckets_long(key: &KeyLong, seed: u32, mask: u32) -> (u32, u32) {
    let mut h = seed;
    let mut i = 0;
    while i < 6 {
        h = round(h, key[i]);
        i += 1;
    }
    pair(h, mask)
}

/// The slots of a bucket, as the daemon's placement and the datapath's lookup see them.
pub trait Bucket: Copy + Default {
    type Key: Copy + PartialEq;
    const SLOTS: usize;
    /// The key's first word, never 0 for a key a table holds.
    fn first_word(key: &Self::Key) -> u32;
    /// The two buckets (region-relative) `key` may lie in.
    fn buckets(key: &Self::Key, seed: u32, mask: u32) -> (u32, u32);
    /// Whether a slot holds `key`, whose first word is not 0 (see the module's notes). A slot's
    /// words are folded into one difference and tested once, and a match returns at once: no
    /// truth value is kept, which would double the ways the verifier follows at each slot.
    fn holds(&self, key: &Self::Key) -> bool;
    /// The key and rule id of slot `i`, if it holds one.
    fn slot(&self, i: usize) -> Option<(Self::Key, u32)>;
    fn set(&mut self, i: usize, key: Self::Key, rule_id: u32);
}

impl Bucket for Bucket12 {
    type Key = Key12;
    const SLOTS: usize = SLOTS12;
    #[inline(always)]
    fn first_word(key: &Key12) -> u32 {
        key[0]
    }
    #[inline(always)]
    fn buckets(key: &Key12, seed: u32, mask: u32) -> (u32, u32) {
        buckets12(key, seed, mask)
    }
    #[inline(always)]
    fn holds(&self, key: &Key12) -> bool {
        let mut i = 0;
        while i < SLOTS12 {
            let s = &self.slots[i];
            let diff = (s.key[0] ^ key[0]) | (s.key[1] ^ key[1]) | (s.key[2] ^ key[2]);
            if diff == 0 {
                return true;
            }
            i += 1;
        }
        false
    }
    fn slot(&self, i: usize) -> Option<(Key12, u32)> {
        let s = &self.slots[i];
        (s.rule != 0).then(|| (s.key, s.rule - 1))
    }
    fn set(&mut self, i: usize, key: Key12, rule_id: u32) {
        self.slots[i] = Slot12 {
            key,
            rule: rule_id.wrapping_add(1),
        };
    }
}

impl Bucket for BucketLong {
    type Key = KeyLong;
    const SLOTS: usize = SLOTS_LONG;
    #[inline(always)]
    fn first_word(key: &KeyLong) -> u32 {
        key[0]
    }
    #[inline(always)]
    fn buckets(key: &KeyLong, seed: u32, mask: u32) -> (u32, u32) {
        buckets_long(key, seed, mask)
    }
    #[inline(always)]
    fn holds(&self, key: &KeyLong) -> bool {
        let mut i = 0;
        while i < SLOTS_LONG {
            let s = &self.slots[i];
            let k = &s.key;
            let diff = (k[0] ^ key[0])
                | (k[1] ^ key[1])
                | (k[2] ^ key[2])
                | (k[3] ^ key[3])
                | (k[4] ^ key[4])
                | (k[5] ^ key[5]);
            if diff == 0 {
                return true;
            }
            i += 1;
        }
        false
    }
    fn slot(&self, i: usize) -> Option<(KeyLong, u32)> {
        let s = &self.slots[i];
        (s.rule != 0).then(|| (s.key, s.rule - 1))
    }
    fn set(&mut self, i: usize, key: KeyLong, rule_id: u32) {
        self.slots[i] = SlotLong {
            key,
            rule: rule_id.wrapping_add(1),
            _pad: 0,
        };
    }
}

/// The buckets a region needs for `rules` at most three quarters full (where bucketized cuckoo
/// placement practically never fails): a power of two, at least one.
pub fn region_buckets<B: Bucket>(rules: usize) -> u32 {
    let slots = rules.saturating_mul(4).div_ceil(3);
    let buckets = slots.div_ceil(B::SLOTS).max(1);
    u32::try_from(buckets.next_power_of_two()).unwrap_or(1 << 31)
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Bucket12 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BucketLong {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_only_the_keys_of_its_filled_slots() {
        let mut b = Bucket12::default();
        // An empty slot's zeros match no key the tables hold (their first word is never 0).
        assert!(!b.holds(&[1, 0, 0]));
        b.set(2, [1, 2, 3], 0);
        assert!(b.holds(&[1, 2, 3]));
        assert!(!b.holds(&[1, 2, 4]));
        assert_eq!(b.slot(2), Some(([1, 2, 3], 0)));
        assert_eq!(b.slot(0), None);
        let mut long = BucketLong::default();
        long.set(1, [1, 2, 3, 4, 5, 6], 7);
        assert!(long.holds(&[1, 2, 3, 4, 5, 6]));
        assert!(!long.holds(&[1, 2, 3, 4, 5, 0]));
        assert!(!long.holds(&[1, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn the_two_buckets_spread_keys_over_the_region() {
        let mask = 1023;
        let mut hits = [0u32; 1024];
        for i in 0..4096u32 {
            let (a, b) = buckets12(&[0x0106_0012, 0x0cea, i.to_be()], 7, mask);
            assert!(a <= mask && b <= mask);
            hits[a as usize] += 1;
        }
        // 4 keys a bucket on average: none far beyond.
        assert!(hits.iter().all(|&h| h < 16), "{:?}", hits.iter().max());
        // Another seed, other buckets.
        let key = [1, 2, 3];
        assert_ne!(buckets12(&key, 1, u32::MAX), buckets12(&key, 2, u32::MAX));
    }

    /// The hashes say where the daemon put a rule and where the programs look for it, across a
    /// restart that keeps the pinned maps: a change to them is a change of layout, which bumps
    /// `LAYOUT_VERSION`, and then this test's figures.
    #[test]
    fn the_hashes_are_part_of_the_pinned_layout() {
        assert_eq!(crate::LAYOUT_VERSION, 15);
        assert_eq!(
            buckets12(&[1, 2, 3], 7, u32::MAX),
            (1_898_333_871, 883_269_790)
        );
        assert_eq!(
            buckets_long(&[1, 2, 3, 4, 5, 6], 7, u32::MAX),
            (2_626_325_563, 3_406_162_226)
        );
    }

    #[test]
    fn regions_are_powers_of_two_at_most_three_quarters_full() {
        assert_eq!(region_buckets::<Bucket12>(0), 1);
        assert_eq!(region_buckets::<Bucket12>(3), 1);
        assert_eq!(region_buckets::<Bucket12>(4), 2);
        assert_eq!(region_buckets::<Bucket12>(100_000), 65_536);
        assert_eq!(region_buckets::<BucketLong>(100_000), 131_072);
        assert_eq!(region_buckets::<Bucket12>(usize::MAX), 1 << 31);
    }
}
