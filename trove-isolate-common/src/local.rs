//! The NIC's own addresses and on-link prefixes, per role: an LPM trie, and the own addresses
//! again as short lists ([`OwnSet`]) for the check every new flow makes.
//!
//! New flows must be addressed to (ingress) or sent from (egress) an address of the NIC, so a
//! forwarded or spoofed packet is never judged as the guest's own. DHCP and neighbour discovery
//! use the on-link prefixes for their scope. The daemon keeps the maps in step with the NIC.
//! An own address is entered as a host prefix with both flags, its subnet with [`LINK`] only, so
//! the longest match of any address says everything. An own IPv6 address's solicited-node group
//! is entered with [`GROUP`].
//!
//! A trie lookup is a helper call (15 ns, a third of a new flow's decision); an array lookup is
//! inlined by the verifier, and a scan of a few words costs 3 (BENCHMARKS.md). So the datapath
//! asks the set first: an address it holds is own, any other is asked of the trie, which stays
//! the authority (the daemon writes it first). An array's values are written in place, though,
//! so a set is never rewritten while a packet may read it: each role has two slots,
//! [`OWN_GENERATION`](crate::maps::OWN_GENERATION) says which one is in force, and the daemon
//! writes the other, then flips the generation, and lets an RCU grace period pass before it
//! writes the old one again (see the daemon's `own_sets`).

/// The address is the NIC's own.
pub const OWN: u8 = 1;
/// The address is on one of the NIC's links (its subnets, link-local included).
pub const LINK: u8 = 2;
/// The address is the solicited-node group of an own IPv6 address (ff02::1:ff00:0/104 and the
/// address's low 24 bits, RFC 4291): the only groups an MLD report going out may name. Entered
/// as a host prefix with this flag alone.
pub const GROUP: u8 = 4;

/// Bits of [`LocalKey`] before the address, always matched in full.
pub const FIXED_PREFIX_BITS: u32 = 4 * 8;

pub const MAX_ENTRIES: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalKey {
    pub role: u8,
    /// [`crate::family`].
    pub family: u8,
    pub _pad: [u8; 2],
    /// IPv4 in the first 4 bytes, rest zero.
    pub addr: [u8; 16],
}

impl LocalKey {
    /// Prefix length of the LPM key for an address prefix of `addr_bits`.
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        FIXED_PREFIX_BITS + addr_bits
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalValue {
    /// [`OWN`] | [`LINK`], or [`GROUP`].
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// Own IPv4 and IPv6 addresses a set holds. The trie answers for a NIC's others.
pub const SET_V4: usize = 4;
pub const SET_V6: usize = 8;
/// Set in the generation when no set is in force and the trie answers every check (where the
/// daemon could not wait for running programs, it writes no set).
pub const TRIE_ONLY: u32 = 1 << 31;
/// Slots of the sets map: two per role.
pub const SET_SLOTS: u32 = 4;

/// Up to [`SET_V4`] and [`SET_V6`] of one role's own addresses, as words (the address bytes read
/// native-endian, `conntrack::words`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OwnSet {
    /// Addresses in `v4` / `v6`.
    pub v4_len: u32,
    pub v6_len: u32,
    pub v4: [u32; SET_V4],
    pub v6: [[u32; 4]; SET_V6],
}

impl OwnSet {
    /// The slot of `role`'s set under `generation`.
    #[inline(always)]
    pub const fn slot(role: crate::Role, generation: u32) -> u32 {
        role as u32 * 2 + (generation & 1)
    }

    /// Whether `addr` (an address of `fam`, as words) is in the set.
    #[inline(always)]
    pub fn holds(&self, fam: u8, addr: &[u32; 4]) -> bool {
        if fam == crate::family::V4 {
            let len = self.v4_len;
            let mut i = 0;
            while i < SET_V4 {
                if (i as u32) < len && self.v4[i] == addr[0] {
                    return true;
                }
                i += 1;
            }
        } else {
            let len = self.v6_len;
            let mut i = 0;
            while i < SET_V6 {
                if (i as u32) < len && self.v6[i] == *addr {
                    return true;
                }
                i += 1;
            }
        }
        false
    }

    /// The set of the own addresses in `addrs` (`fam`, address as words): each family's first
    /// ones, in the order given, as many as fit.
    pub fn of(addrs: impl IntoIterator<Item = (u8, [u32; 4])>) -> OwnSet {
        let mut set = OwnSet::default();
        for (fam, addr) in addrs {
            if fam == crate::family::V4 {
                if let Some(slot) = set.v4.get_mut(set.v4_len as usize) {
                    *slot = addr[0];
                    set.v4_len += 1;
                }
            } else if let Some(slot) = set.v6.get_mut(set.v6_len as usize) {
                *slot = addr;
                set.v6_len += 1;
            }
        }
        set
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for OwnSet {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LocalKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LocalValue {}
