//! The policy maps: allow rules in tables of buckets (`rule_table`), and the prefix lengths
//! they use.
//!
//! The key leads with the policy domain (role), then direction, protocol, address family and port,
//! all fully specified, then the prefix length and the remote prefix (host bits zero). Two NICs
//! with identical CIDRs therefore can never match each other's rules.
//!
//! A new flow is looked up once per prefix length present for its (role, direction, family)
//! ([`PrefixLengths`]); every rule allows, so any hit decides. The cost follows the number of
//! prefix lengths a policy uses, not the number of its rules (an LPM trie's walk grows
//! with the rules sharing a key's fixed part: 2.9× from 4 to 1,000,000 rules, BENCHMARKS.md).
//!
//! A key of 12 bytes is three words to hash and compare, where a [`PolicyKey`] is six. The rules
//! are therefore kept in three maps ([`map_index`]): IPv4's keyed by the 12-byte
//! [`PolicyKey4`], IPv6 prefixes of up to 64 bits (clients' /64 and /48) by the 12-byte
//! [`PolicyKey6`], and longer IPv6 prefixes (hosts) by [`PolicyKey`]. Userspace sees every rule
//! as a [`PolicyKey`] (`widen`); the tables hold each as words (`words`).

use crate::{
    family,
    rule_table::{Key12, KeyLong, Region},
    Direction, Role,
};

/// Upper bound on rules across all roles. The loader sizes the maps from the compiled policy.
pub const MAX_ENTRIES: u32 = 1 << 22;

/// The maps' size in the object (buckets, both generations), before the loader sets it from
/// the policy.
pub const OBJECT_ENTRIES: u32 = 1024;

/// Prefix lengths a (role, direction, family) may use: the datapath's lookups per new flow are
/// bounded by this. A policy that needs more is refused with the class named.
pub const MAX_LENGTHS: usize = 16;

/// Hash key of a rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub role: u8,
    pub direction: u8,
    /// IP protocol ([`crate::proto`]).
    pub proto: u8,
    /// [`crate::family`].
    pub family: u8,
    /// Local port for ingress rules, remote port for egress rules, network byte order; 0 for ICMP.
    pub port: [u8; 2],
    /// Bits of `addr` that are matched.
    pub prefix: u8,
    pub _pad: u8,
    /// Remote prefix, host bits zero: IPv4 in the first 4 bytes, rest zero.
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 24);

impl PolicyKey {
    /// The key as the table of long IPv6 prefixes holds it.
    pub fn words(&self) -> KeyLong {
        let a = &self.addr;
        let word = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        [
            u32::from_ne_bytes([self.role, self.direction, self.proto, self.family]),
            u32::from_ne_bytes([self.port[0], self.port[1], self.prefix, self._pad]),
            word(0),
            word(4),
            word(8),
            word(12),
        ]
    }

    /// The key whose [`words`](Self::words) these are.
    pub fn from_words(w: &KeyLong) -> PolicyKey {
        let [role, direction, proto, family] = w[0].to_ne_bytes();
        let [p0, p1, prefix, _pad] = w[1].to_ne_bytes();
        let mut addr = [0u8; 16];
        for i in 0..4 {
            addr[i * 4..i * 4 + 4].copy_from_slice(&w[2 + i].to_ne_bytes());
        }
        PolicyKey {
            role,
            direction,
            proto,
            family,
            port: [p0, p1],
            prefix,
            _pad,
            addr,
        }
    }
}

/// The policy maps a rule can live in, in the order of [`crate::maps::POLICIES`].
pub const MAPS: usize = 3;

/// The longest IPv6 prefix [`PolicyKey6`] holds.
pub const SHORT_V6: u8 = 64;

/// The index in [`crate::maps::POLICIES`] of the map that holds `key`: IPv4's, IPv6's of
/// prefixes up to [`SHORT_V6`], or IPv6's of longer ones.
pub fn map_index(key: &PolicyKey) -> usize {
    if key.family == family::V4 {
        0
    } else if PolicyKey6::narrow(key).is_some() {
        1
    } else {
        2
    }
}

/// Hash key of an IPv4 rule: [`PolicyKey`] without the family (its map's) and with a 4-byte
/// address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey4 {
    pub role: u8,
    pub direction: u8,
    pub proto: u8,
    pub prefix: u8,
    /// As in [`PolicyKey`].
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    /// Remote prefix, host bits zero: the address bytes as on the wire, read as a native-endian
    /// word (a word, not bytes, so the datapath builds and copies the key with a few stores).
    pub addr: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyKey4>() == 12);

impl PolicyKey4 {
    /// The key of `key` if it is an IPv4 rule.
    pub fn narrow(key: &PolicyKey) -> Option<PolicyKey4> {
        if key.family != family::V4 {
            return None;
        }
        Some(PolicyKey4 {
            role: key.role,
            direction: key.direction,
            proto: key.proto,
            prefix: key.prefix,
            port: key.port,
            _pad: [0; 2],
            addr: u32::from_ne_bytes([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]),
        })
    }

    /// The key as the rule tables hold it.
    #[inline(always)]
    pub fn words(&self) -> Key12 {
        [
            u32::from_ne_bytes([self.role, self.direction, self.proto, self.prefix]),
            u32::from_ne_bytes([self.port[0], self.port[1], self._pad[0], self._pad[1]]),
            self.addr,
        ]
    }

    /// The key whose [`words`](Self::words) these are.
    pub fn from_words(w: &Key12) -> PolicyKey4 {
        let [role, direction, proto, prefix] = w[0].to_ne_bytes();
        let [p0, p1, a, b] = w[1].to_ne_bytes();
        PolicyKey4 {
            role,
            direction,
            proto,
            prefix,
            port: [p0, p1],
            _pad: [a, b],
            addr: w[2],
        }
    }

    /// The same rule as a [`PolicyKey`].
    pub fn widen(&self) -> PolicyKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&self.addr.to_ne_bytes());
        PolicyKey {
            role: self.role,
            direction: self.direction,
            proto: self.proto,
            family: family::V4,
            port: self.port,
            prefix: self.prefix,
            _pad: 0,
            addr,
        }
    }
}

/// `addr` with all but its first `prefix` bits cleared.
pub fn masked(addr: &[u8; 16], prefix: u8) -> [u8; 16] {
    let mask = mask(prefix);
    let mut out = [0u8; 16];
    for i in 0..16 {
        out[i] = addr[i] & mask[i];
    }
    out
}

/// The byte mask of a `prefix`-bit prefix.
pub fn mask(prefix: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let bits = i32::from(prefix) - 8 * i as i32;
        *byte = match bits {
            8.. => 0xff,
            ..=0 => 0,
            n => 0xffu8 << (8 - n),
        };
    }
    out
}

/// Hash key of an IPv6 rule of a prefix of up to [`SHORT_V6`] bits: the role, direction and
/// protocol in one byte ([`PolicyKey6::tag`]), the address in 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey6 {
    pub tag: u8,
    pub prefix: u8,
    /// As in [`PolicyKey`].
    pub port: [u8; 2],
    /// The first 8 bytes of the remote prefix, host bits zero, as two native-endian words.
    pub addr: [u32; 2],
}

const _: () = assert!(core::mem::size_of::<PolicyKey6>() == 12);

impl PolicyKey6 {
    /// Role, direction and protocol in one byte. IPv6 flows are TCP (6), UDP (17) or ICMPv6
    /// (58): each fits in the 6 bits left; `None` for any other.
    #[inline(always)]
    pub const fn tag(role: u8, direction: u8, proto: u8) -> Option<u8> {
        if proto >= 64 || role > 1 || direction > 1 {
            return None;
        }
        Some(role << 7 | direction << 6 | proto)
    }

    /// The key of `key` if it is an IPv6 rule of a prefix of up to [`SHORT_V6`] bits.
    pub fn narrow(key: &PolicyKey) -> Option<PolicyKey6> {
        if key.family != family::V6 || key.prefix > SHORT_V6 {
            return None;
        }
        let a = &key.addr;
        let addr = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        ];
        Some(PolicyKey6 {
            tag: PolicyKey6::tag(key.role, key.direction, key.proto)?,
            prefix: key.prefix,
            port: key.port,
            addr,
        })
    }

    /// The key as the rule tables hold it.
    #[inline(always)]
    pub fn words(&self) -> Key12 {
        [
            u32::from_ne_bytes([self.tag, self.prefix, self.port[0], self.port[1]]),
            self.addr[0],
            self.addr[1],
        ]
    }

    /// The key whose [`words`](Self::words) these are.
    pub fn from_words(w: &Key12) -> PolicyKey6 {
        let [tag, prefix, p0, p1] = w[0].to_ne_bytes();
        PolicyKey6 {
            tag,
            prefix,
            port: [p0, p1],
            addr: [w[1], w[2]],
        }
    }

    /// The same rule as a [`PolicyKey`].
    pub fn widen(&self) -> PolicyKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&self.addr[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&self.addr[1].to_ne_bytes());
        PolicyKey {
            role: self.tag >> 7,
            direction: (self.tag >> 6) & 1,
            proto: self.tag & 0x3f,
            family: family::V6,
            port: self.port,
            prefix: self.prefix,
            _pad: 0,
            addr,
        }
    }
}

/// A prefix length a class uses, with its mask made once here rather than per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthSlot {
    /// [`EMPTY`]: no length in this slot.
    pub prefix: u8,
    pub _pad: [u8; 3],
    /// [`mask`] of `prefix`, as four words in the order the bytes are in memory.
    pub mask: [u32; 4],
}

/// A slot with no length.
pub const EMPTY: u8 = 0xff;

impl LengthSlot {
    /// All-ones mask: a packet that reads a slot half-written (a prefix with the words of
    /// another mask) keeps more address bits than the prefix, never fewer, so it can only match
    /// a rule whose prefix its address is really in.
    pub const EMPTY: LengthSlot = LengthSlot {
        prefix: EMPTY,
        _pad: [0; 3],
        mask: [u32::MAX; 4],
    };

    pub fn new(prefix: u8) -> LengthSlot {
        let m = mask(prefix);
        let word = |i: usize| u32::from_ne_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        LengthSlot {
            prefix,
            _pad: [0; 3],
            mask: [word(0), word(4), word(8), word(12)],
        }
    }
}

/// One generation of the rules of one (role, direction, family): the prefix lengths they use
/// (the first `count` slots), and where they lie in the rule tables.
///
/// Written whole while its generation is not in force (`rule_table`), so a packet never reads
/// one half-written.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLengths {
    pub count: u32,
    /// This generation's region of the 12-byte table of the class's family (`POLICY4` or
    /// `POLICY6`), then of `POLICY6_LONG` (IPv6 only).
    pub regions: [Region; 2],
    pub slots: [LengthSlot; MAX_LENGTHS],
}

impl Default for PrefixLengths {
    fn default() -> Self {
        PrefixLengths {
            count: 0,
            regions: [Region::default(); 2],
            slots: [LengthSlot::EMPTY; MAX_LENGTHS],
        }
    }
}

impl PrefixLengths {
    /// `prefixes` and where their rules lie; `None` when there are more than [`MAX_LENGTHS`].
    pub fn new(prefixes: &[u8], regions: [Region; 2]) -> Option<PrefixLengths> {
        if prefixes.len() > MAX_LENGTHS {
            return None;
        }
        let mut out = PrefixLengths {
            count: prefixes.len() as u32,
            regions,
            ..PrefixLengths::default()
        };
        for (slot, &prefix) in out.slots.iter_mut().zip(prefixes) {
            *slot = LengthSlot::new(prefix);
        }
        Some(out)
    }

    /// The lengths in use.
    pub fn prefixes(&self) -> impl Iterator<Item = u8> + '_ {
        self.slots[..(self.count as usize).min(MAX_LENGTHS)]
            .iter()
            .filter(|s| s.prefix != EMPTY)
            .map(|s| s.prefix)
    }
}

/// The prefix-length map's index of a class's entry in `generation` (0 or 1).
#[inline(always)]
pub const fn lengths_index(generation: u32, class: u32) -> u32 {
    (generation & 1) * CLASSES + class
}

/// Entries of the prefix-length map: every class, in each of the two generations.
pub const LENGTH_ENTRIES: u32 = 2 * CLASSES;

/// Entries of the generation map: the generation in force, then the ids of the maps of its set
/// (`maps::POLICY_SET`).
pub const GENERATION_ENTRIES: u32 = 1 + crate::maps::POLICY_SET.len() as u32;

/// The prefix-length map's index of (role, direction, family).
#[inline(always)]
pub const fn class(role: Role, direction: Direction, fam: u8) -> u32 {
    (role as u32 * 2 + direction as u32) * 2 + (fam == family::V6) as u32
}

/// Whether `class` is of IPv6 rules.
#[inline(always)]
pub const fn class_is_v6(class: u32) -> bool {
    class & 1 == 1
}

/// Entries of the prefix-length map.
pub const CLASSES: u32 = Role::COUNT as u32 * 2 * 2;

/// What a matching rule says. Every entry is an allow; the id names the rule for `explain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule_id: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyKey4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyKey6 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PrefixLengths {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_rule_narrows_and_widens_to_the_same_rule() {
        let key = PolicyKey {
            role: Role::Business as u8,
            direction: Direction::Ingress as u8,
            proto: crate::proto::TCP,
            family: family::V4,
            port: 3306u16.to_be_bytes(),
            prefix: 24,
            _pad: 0,
            addr: masked(&[198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 24),
        };
        let narrow = PolicyKey4::narrow(&key).expect("an IPv4 rule");
        assert_eq!(narrow.addr.to_ne_bytes(), [198, 51, 100, 0]);
        assert_eq!(narrow.widen(), key);
        let v6 = PolicyKey {
            family: family::V6,
            ..key
        };
        assert_eq!(PolicyKey4::narrow(&v6), None);
    }

    #[test]
    fn a_short_ipv6_rule_narrows_and_widens_to_the_same_rule() {
        let addr = [
            0x20, 0x01, 0x0d, 0xb8, 0, 2, 0xab, 0xcd, 0, 0, 0, 0, 0, 0, 0, 7,
        ];
        let key = PolicyKey {
            role: Role::Business as u8,
            direction: Direction::Egress as u8,
            proto: crate::proto::ICMPV6,
            family: family::V6,
            port: [0, 0],
            prefix: 48,
            _pad: 0,
            addr: masked(&addr, 48),
        };
        let narrow = PolicyKey6::narrow(&key).expect("a /48");
        assert_eq!(narrow.addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(narrow.addr[1].to_ne_bytes(), [0, 2, 0, 0]);
        assert_eq!(narrow.widen(), key);
        assert_eq!(map_index(&key), 1);
        let host = PolicyKey {
            prefix: 128,
            addr,
            ..key
        };
        assert_eq!(PolicyKey6::narrow(&host), None);
        assert_eq!(map_index(&host), 2);
        let v4 = PolicyKey {
            family: family::V4,
            ..key
        };
        assert_eq!((PolicyKey6::narrow(&v4), map_index(&v4)), (None, 0));
        // Every protocol an IPv6 flow has fits the tag, and the tag keeps them apart.
        let mut tags = [0u8; 12];
        let protos = [crate::proto::TCP, crate::proto::UDP, crate::proto::ICMPV6];
        for (i, tag) in tags.iter_mut().enumerate() {
            let (r, d) = ((i / 2 % 2) as u8, (i % 2) as u8);
            *tag = PolicyKey6::tag(r, d, protos[i / 4]).expect("fits");
        }
        tags.sort_unstable();
        assert!(tags.windows(2).all(|w| w[0] != w[1]), "{tags:?}");
    }

    #[test]
    fn keys_are_the_words_the_tables_hold() {
        let key = PolicyKey {
            role: Role::Business as u8,
            direction: Direction::Ingress as u8,
            proto: crate::proto::TCP,
            family: family::V6,
            port: 3306u16.to_be_bytes(),
            prefix: 128,
            _pad: 0,
            addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        };
        assert_eq!(PolicyKey::from_words(&key.words()), key);
        let short = PolicyKey6::narrow(&PolicyKey { prefix: 48, ..key }).expect("a /48");
        assert_eq!(PolicyKey6::from_words(&short.words()), short);
        let v4 = PolicyKey4::narrow(&PolicyKey {
            family: family::V4,
            prefix: 24,
            addr: masked(&[198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 24),
            ..key
        })
        .expect("an IPv4 rule");
        assert_eq!(PolicyKey4::from_words(&v4.words()), v4);
        // In memory, the words are the key's bytes.
        let bytes: [u8; 12] = unsafe { core::mem::transmute(v4) };
        let words: [u8; 12] = unsafe { core::mem::transmute(v4.words()) };
        assert_eq!(bytes, words);
    }

    #[test]
    fn a_class_holds_sixteen_lengths_at_most() {
        let full: [u8; MAX_LENGTHS] = core::array::from_fn(|i| 100 + i as u8);
        let set = PrefixLengths::new(&full, [Region::default(); 2]).expect("sixteen fit");
        assert!(set.prefixes().eq(full));
        assert!(PrefixLengths::new(&[0; MAX_LENGTHS + 1], [Region::default(); 2]).is_none());
        assert_eq!(lengths_index(1, 3), CLASSES + 3);
        assert_eq!(lengths_index(2, 3), 3);
    }

    #[test]
    fn masks_keep_the_prefix_bits_only() {
        let addr = [0xff; 16];
        assert_eq!(masked(&addr, 0), [0; 16]);
        assert_eq!(masked(&addr, 128), addr);
        let m = masked(&addr, 20);
        assert_eq!(m[..4], [0xff, 0xff, 0xf0, 0]);
        assert!(m[4..].iter().all(|&b| b == 0));
        let slot = LengthSlot::new(20);
        assert_eq!(slot.mask[0].to_ne_bytes(), [0xff, 0xff, 0xf0, 0]);
        assert_eq!(slot.mask[1..], [0, 0, 0]);
    }
}
