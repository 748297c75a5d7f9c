//! The NIC's own addresses and on-link prefixes, per role: an LPM trie.
//!
//! New flows must be addressed to (ingress) or sent from (egress) an address of the NIC, so a
//! forwarded or spoofed packet is never judged as the guest's own. DHCP and neighbour discovery
//! use the on-link prefixes for their scope. The daemon keeps the map in step with the NIC.
//! An own address is entered as a host prefix with both flags, its subnet with [`LINK`] only, so
//! the longest match of any address says everything.

/// The address is the NIC's own.
pub const OWN: u8 = 1;
/// The address is on one of the NIC's links (its subnets, link-local included).
pub const LINK: u8 = 2;

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
    /// [`OWN`] | [`LINK`].
    pub flags: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for LocalKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LocalValue {}
