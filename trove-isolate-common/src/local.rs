//! The NIC's own addresses and on-link prefixes, per role: an LPM trie.
//!
//! New flows must be addressed to (ingress) or sent from (egress) an address of the NIC, so a
//! forwarded or spoofed packet is never judged as the guest's own. DHCP and neighbour discovery
//! use the on-link prefixes for their scope. The daemon keeps the map in step with the NIC.
//! An own address is entered as a host prefix with both flags, its subnet with [`LINK`] only, so
//! the longest match of any address says everything.
//!
//! Every new flow asks whether an address is the NIC's own, so the NIC's IPv4 addresses are also
//! kept as a short list per role ([`Own4`]): a lookup of the role and a scan of a few words cost
//! half of the trie's walk (BENCHMARKS.md, section 1).

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

/// The IPv4 addresses an [`Own4`] holds; a NIC with more is asked of the trie.
pub const OWN4_SLOTS: usize = 8;

/// [`Own4::count`] of a NIC with more IPv4 addresses than [`OWN4_SLOTS`].
pub const OWN4_TOO_MANY: u32 = u32::MAX;

/// The own IPv4 addresses of one role's NIC, the value of a hash keyed by the role. The daemon
/// replaces the whole value (a hash allocated per entry frees the old one only once no program
/// can be reading it), so a packet sees the old list or the new one, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Own4 {
    /// Addresses in `addrs`, or [`OWN4_TOO_MANY`].
    pub count: u32,
    /// The address bytes as on the wire, read as native-endian words; 0 past `count`.
    pub addrs: [u32; OWN4_SLOTS],
}

impl Own4 {
    /// The list of `addrs` (in the order given).
    pub fn new(addrs: &[[u8; 4]]) -> Own4 {
        let mut own = Own4 {
            count: addrs.len() as u32,
            addrs: [0; OWN4_SLOTS],
        };
        if addrs.len() > OWN4_SLOTS {
            own.count = OWN4_TOO_MANY;
            return own;
        }
        for (slot, addr) in own.addrs.iter_mut().zip(addrs) {
            *slot = u32::from_ne_bytes(*addr);
        }
        own
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
#[cfg(feature = "user")]
unsafe impl aya::Pod for Own4 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_holds_up_to_its_slots_and_says_when_there_are_more() {
        let own = Own4::new(&[[192, 0, 2, 1], [192, 0, 2, 2]]);
        assert_eq!(own.count, 2);
        assert_eq!(own.addrs[1].to_ne_bytes(), [192, 0, 2, 2]);
        assert_eq!(own.addrs[2], 0);
        let full = [[192, 0, 2, 1]; OWN4_SLOTS];
        assert_eq!(Own4::new(&full).count, OWN4_SLOTS as u32);
        let more = [[192, 0, 2, 1]; OWN4_SLOTS + 1];
        assert_eq!(Own4::new(&more).count, OWN4_TOO_MANY);
    }
}
