//! The policy map: an LPM trie of allow rules.
//!
//! The key leads with the policy domain (role), then direction, protocol, address family and port,
//! all fully specified, and ends with the remote address, which is the only part matched by prefix.
//! Two NICs with identical CIDRs therefore can never match each other's rules.

/// Bits of [`PolicyKey`] before the address, always matched in full.
pub const FIXED_PREFIX_BITS: u32 = 6 * 8;

/// Upper bound on rules across all roles. The loader sizes the map from the compiled policy
/// (the trie allocates per entry, so its size is a limit, not memory).
pub const MAX_ENTRIES: u32 = 1 << 22;

/// The map's size in the object, before the loader sets it from the policy.
pub const OBJECT_ENTRIES: u32 = 1024;

/// LPM trie key data (aya wraps it with the `prefix_len` word).
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
    /// Remote address: IPv4 in the first 4 bytes, rest zero.
    pub addr: [u8; 16],
}

impl PolicyKey {
    /// Prefix length of the LPM key for an address prefix of `addr_bits`.
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        FIXED_PREFIX_BITS + addr_bits
    }
}

/// What a matching rule says. Every entry is an allow; the id names the rule for `explain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule_id: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyValue {}
