//! How the flows lie in the flow tables: arrays of buckets probed by a hash the program computes,
//! as the rules do (`rule_table`), not the kernel's hash maps.
//!
//! A kernel hash lookup is a helper call of 25 to 34 ns on a CPU whose returns go through a
//! mitigation's thunk (AMD's SRSO), and an established packet made one, an unsolicited one two
//! (BENCHMARKS.md, section 1). An array's lookup the verifier inlines. Unlike the rules, flows
//! are written by the programs, on every CPU at once, so each slot says who owns it in one word
//! the writers change only by compare-and-exchange ([`tag`]):
//!
//! - Element 0 of a table is its header ([`Header`]): how many buckets follow, and the seed of
//!   its hash, which the daemon draws at random when it makes the table (a remote that could
//!   aim its flows at one bucket could fill it). Bucket `i` is element `i + 1`.
//! - A key hashes to two buckets ([`FlowBucket::buckets`]); a lookup compares the live slots of
//!   both. A writer that adds a flow takes both buckets' locks ([`FlowBucket::head`]) first, so
//!   that two CPUs adding one flow cannot both add it; it claims a free slot (or, where the
//!   table may evict, the least recently seen of the eight), writes the key and the flow, then marks the
//!   slot live. A lock is only ever tried: a writer that finds one taken (another CPU's insert,
//!   for nanoseconds) tries once more, then gives up (the callers tell that from a full table).
//! - A slot is freed by one compare-and-exchange of its tag, from the live tag it was read with
//!   to the next version's free one, by the programs or by the daemon (through a mapping of the
//!   table): a slot freed and taken again meanwhile has another version, and is left alone.
//! - A reader holds no lock: it takes a slot for its key's only where the tag reads the same
//!   live version before and after the key (x86 keeps loads in order; arm64 may not, see
//!   SECURITY.md). A slot freed and reused while a program reads its flow shows that program
//!   another flow's state, as an element of the kernel's preallocated hash maps does when it is
//!   deleted and reused under a reader.

use crate::conntrack::{FlowKey4, FlowValue};

/// Slots of a bucket.
pub const SLOTS: usize = 4;

/// A slot's tag: its state in the low two bits, the version of its last claim above them.
pub mod tag {
    pub const STATE: u64 = 3;
    /// Holds nothing (a slot never used is all zeros: free, version 0).
    pub const FREE: u64 = 0;
    /// Claimed by a writer, which is writing its key and flow.
    pub const BUSY: u64 = 1;
    /// Holds a flow.
    pub const LIVE: u64 = 2;
    /// One version.
    pub const VERSION: u64 = 4;

    /// The tag that claims a slot whose tag is `t`: the next version, busy.
    #[inline(always)]
    pub const fn claim(t: u64) -> u64 {
        ((t & !STATE).wrapping_add(VERSION)) | BUSY
    }

    /// The tag of a slot freed from tag `t`: the next version, free.
    #[inline(always)]
    pub const fn free(t: u64) -> u64 {
        (t & !STATE).wrapping_add(VERSION)
    }

    /// The tag that publishes the flow a writer wrote under `busy`.
    #[inline(always)]
    pub const fn live(busy: u64) -> u64 {
        (busy & !STATE) | LIVE
    }

    #[inline(always)]
    pub const fn is_live(t: u64) -> bool {
        t & STATE == LIVE
    }
}

/// Element 0 of a table: the buckets that follow it (0: a table the daemon has not set up,
/// which holds nothing and takes nothing) and the hash's seed, 64 random bits. It lies in two
/// words of the element: the count and the seed's low half in place of a bucket's lock word,
/// the seed's high half in place of its first slot's tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub buckets: u32,
    pub seed: u64,
}

impl Header {
    /// The header element 0 holds.
    #[inline(always)]
    pub fn of<B: FlowBucket>(element: &mut B) -> Header {
        let (head, high) = (*element.head(), *element.tag(0));
        Header {
            buckets: head as u32,
            seed: (head >> 32) | (high << 32),
        }
    }

    /// Writes the header into element 0.
    pub fn write<B: FlowBucket>(&self, element: &mut B) {
        *element.head() = u64::from(self.buckets) | (self.seed << 32);
        *element.tag(0) = self.seed >> 32;
    }
}

/// A slot of the TCP over IPv4 tables: 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot4 {
    pub tag: u64,
    pub key: FlowKey4,
    pub _pad: u32,
    pub entry: FlowValue,
}

/// A bucket of the TCP over IPv4 tables: 232 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket4 {
    /// The writers' lock (0: free); element 0's is the table's [`Header`].
    pub head: u64,
    pub slots: [Slot4; SLOTS],
}

const _: () = assert!(core::mem::size_of::<Slot4>() == 56);
const _: () = assert!(core::mem::size_of::<Bucket4>() == 232);

/// The hash's state before a key's first word.
#[inline(always)]
const fn start(seed: u64) -> u64 {
    seed ^ 0x6a09_e667_f3bc_c908
}

/// One round of mixing a word into the hash: a 64-bit multiply, whose high half folds back
/// into the low. (The rules' 32-bit round, `rule_table`'s, carries a flip of a word's top bit
/// through a round unchanged whatever the seed, so that two keys differing in that bit and in
/// two bits of the next word share their buckets under every seed: harmless for the rules,
/// which the daemon writes, but a remote chooses its flows' keys.)
#[inline(always)]
const fn round(h: u64, word: u32) -> u64 {
    let x = (h ^ word as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

/// The two buckets, of `buckets`, of a key's words hashed to `h`: two mixes of it, each
/// scaled to the table (multiply and shift: any count of buckets, not only powers of two).
#[inline(always)]
const fn pair(h: u64, buckets: u32) -> (u32, u32) {
    let h = h as u32;
    let mut a = h ^ (h >> 16);
    a = a.wrapping_mul(0x85eb_ca6b);
    a ^= a >> 13;
    let mut b = a.wrapping_mul(0xc2b2_ae35);
    b ^= b >> 16;
    (scale(a, buckets), scale(b, buckets))
}

/// `x` scaled from the whole range of a word to `0..buckets`.
#[inline(always)]
const fn scale(x: u32, buckets: u32) -> u32 {
    ((x as u64 * buckets as u64) >> 32) as u32
}

/// Two ports as one word.
#[inline(always)]
const fn ports(local: u16, remote: u16) -> u32 {
    local as u32 | ((remote as u32) << 16)
}

/// The slots of a bucket as the programs and the daemon see them.
pub trait FlowBucket: Copy + Default + 'static {
    type Key: Copy + PartialEq + 'static;
    type Entry: Copy + 'static;
    /// The two buckets (of `buckets`) `key` may lie in.
    fn buckets(key: &Self::Key, seed: u64, buckets: u32) -> (u32, u32);
    fn head(&mut self) -> &mut u64;
    fn tag(&mut self, i: usize) -> &mut u64;
    /// 0 where slot `i`'s key is `key` (whatever its tag says): its words folded into one
    /// difference, with no branch.
    fn key_diff(&self, i: usize, key: &Self::Key) -> u32;
    fn tag_of(&self, i: usize) -> u64;
    /// 0 where slot `i` is live and holds `key`.
    #[inline(always)]
    fn diff(&self, i: usize, key: &Self::Key) -> u32 {
        self.key_diff(i, key) | ((self.tag_of(i) & tag::STATE) as u32 ^ tag::LIVE as u32)
    }
    /// Whether slot `i` is live and holds `key`.
    #[inline(always)]
    fn holds(&self, i: usize, key: &Self::Key) -> bool {
        self.diff(i, key) == 0
    }
    fn key(&self, i: usize) -> &Self::Key;
    fn set_key(&mut self, i: usize, key: Self::Key);
    fn entry(&mut self, i: usize) -> &mut Self::Entry;
    /// The flow state of an entry.
    fn flow(entry: &Self::Entry) -> &FlowValue;
}

impl FlowBucket for Bucket4 {
    type Key = FlowKey4;
    type Entry = FlowValue;

    #[inline(always)]
    fn buckets(key: &FlowKey4, seed: u64, buckets: u32) -> (u32, u32) {
        let ports = ports(key.local_port, key.remote_port);
        pair(
            round(round(round(start(seed), key.local), key.remote), ports),
            buckets,
        )
    }

    #[inline(always)]
    fn head(&mut self) -> &mut u64 {
        &mut self.head
    }

    #[inline(always)]
    fn tag(&mut self, i: usize) -> &mut u64 {
        &mut self.slots[i].tag
    }

    #[inline(always)]
    fn tag_of(&self, i: usize) -> u64 {
        self.slots[i].tag
    }

    #[inline(always)]
    fn key_diff(&self, i: usize, key: &FlowKey4) -> u32 {
        let s = &self.slots[i];
        (s.key.local ^ key.local)
            | (s.key.remote ^ key.remote)
            | (ports(s.key.local_port, s.key.remote_port) ^ ports(key.local_port, key.remote_port))
    }

    #[inline(always)]
    fn key(&self, i: usize) -> &FlowKey4 {
        &self.slots[i].key
    }

    #[inline(always)]
    fn set_key(&mut self, i: usize, key: FlowKey4) {
        self.slots[i].key = key;
    }

    #[inline(always)]
    fn entry(&mut self, i: usize) -> &mut FlowValue {
        &mut self.slots[i].entry
    }

    #[inline(always)]
    fn flow(entry: &FlowValue) -> &FlowValue {
        entry
    }
}

/// The buckets a table of `flows` needs: at most half full, so that a flow's two buckets
/// practically never both fill before the table does (at two thirds, one flow in a thousand
/// found both full as the table filled). At least one.
pub const fn table_buckets(flows: u32) -> u32 {
    let slots = flows as u64 * 2;
    let buckets = slots.div_ceil(SLOTS as u64);
    if buckets == 0 {
        1
    } else if buckets > (u32::MAX - 1) as u64 {
        u32::MAX - 1
    } else {
        buckets as u32
    }
}

/// A table's elements for `flows`: its buckets and the header.
pub const fn table_entries(flows: u32) -> u32 {
    table_buckets(flows) + 1
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Bucket4 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_moves_on_a_version_at_each_claim_and_free() {
        let t = tag::claim(tag::FREE);
        assert_eq!(t & tag::STATE, tag::BUSY);
        let live = tag::live(t);
        assert!(tag::is_live(live));
        let freed = tag::free(live);
        assert_eq!(freed & tag::STATE, tag::FREE);
        assert_ne!(
            freed,
            tag::FREE,
            "a freed slot is another version than a never-used one"
        );
        assert_ne!(tag::claim(freed), t);
    }

    #[test]
    fn a_slot_holds_its_key_only_while_live() {
        let key = FlowKey4 {
            local: 1,
            remote: 2,
            local_port: 3,
            remote_port: 4,
        };
        let mut b = Bucket4::default();
        b.slots[1].key = key;
        assert!(!b.holds(1, &key), "free");
        b.slots[1].tag = tag::claim(0);
        assert!(!b.holds(1, &key), "busy");
        b.slots[1].tag = tag::live(b.slots[1].tag);
        assert!(b.holds(1, &key));
        assert!(!b.holds(
            1,
            &FlowKey4 {
                remote_port: 5,
                ..key
            }
        ));
        assert!(!b.holds(0, &key));
    }

    #[test]
    fn two_buckets_per_key_take_a_table_s_flows_with_almost_no_bucket_left_short() {
        // Every key goes to the emptier of its buckets, as the programs place it: up to three
        // quarters of the table's flows none finds both full, and at most a few up to all.
        let flows = 65_536u32;
        let buckets = table_buckets(flows);
        let mut fill = [0u8; 32_768];
        assert_eq!(buckets as usize, fill.len());
        let mut refused = 0;
        for i in 0..flows {
            if i == flows / 4 * 3 {
                assert_eq!(refused, 0);
            }
            let key = FlowKey4 {
                local: 0x0a00_0001,
                remote: 0xc000_0200 ^ (i >> 16),
                local_port: 5432u16.to_be(),
                remote_port: (i as u16).to_be(),
            };
            let (a, b) = Bucket4::buckets(&key, 0x1234_5678, buckets);
            assert!(a < buckets && b < buckets);
            let at = if fill[a as usize] <= fill[b as usize] {
                a
            } else {
                b
            };
            if fill[at as usize] as usize == SLOTS {
                refused += 1;
            } else {
                fill[at as usize] += 1;
            }
        }
        assert!(refused <= 8, "{refused}");
    }

    #[test]
    fn the_header_is_two_words_of_element_0() {
        let h = Header {
            buckets: 7,
            seed: 0xdead_beef_0bad_f00d,
        };
        let mut element = Bucket4::default();
        h.write(&mut element);
        assert_eq!(Header::of(&mut element), h);
        assert_eq!(table_entries(0), 2);
        assert_eq!(table_buckets(65_536), 32_768);
    }

    /// Keys that differ in the remote address's top bit and in two bits of the remote port
    /// shared their buckets under every seed with the rules' 32-bit round.
    #[test]
    fn no_pair_of_keys_shares_its_buckets_whatever_the_seed() {
        let key = FlowKey4 {
            local: 0xc000_0201,
            remote: 0xc633_6407,
            local_port: 3306,
            remote_port: 40_000,
        };
        let twin = FlowKey4 {
            remote: key.remote ^ 0x8000_0000,
            remote_port: key.remote_port ^ 0x8001,
            ..key
        };
        let shared = (0..1_000u32)
            .filter(|&seed| {
                let seed = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                Bucket4::buckets(&key, seed, 1 << 15) == Bucket4::buckets(&twin, seed, 1 << 15)
            })
            .count();
        assert!(shared <= 1, "{shared} of 1,000 seeds");
    }

    /// As `rule_table`'s: where a flow lies is part of the pinned layout.
    #[test]
    fn the_hashes_are_part_of_the_pinned_layout() {
        assert_eq!(crate::LAYOUT_VERSION, 15);
        let key = FlowKey4 {
            local: 1,
            remote: 2,
            local_port: 3,
            remote_port: 4,
        };
        assert_eq!(
            Bucket4::buckets(&key, 7, u32::MAX),
            (3_423_418, 2_082_328_745)
        );
    }
}
