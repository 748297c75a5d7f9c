//! The NIC's own addresses and links (`trove_isolate_common::local`), as the daemon last saw
//! them.

use aya_ebpf::maps::lpm_trie::Key;
use trove_isolate_common::{
    family,
    local::{LocalKey, FIXED_PREFIX_BITS, LINK, OWN},
    Role,
};

use crate::maps::LOCAL;

/// The [`OWN`] / [`LINK`] flags of `addr` on the NIC of `role`.
#[inline(always)]
fn flags(role: Role, fam: u8, addr: &[u8; 16]) -> u8 {
    let addr_bits = if fam == family::V4 { 32 } else { 128 };
    let key = Key::new(
        FIXED_PREFIX_BITS + addr_bits,
        LocalKey {
            role: role as u8,
            family: fam,
            _pad: [0; 2],
            addr: *addr,
        },
    );
    LOCAL.get(&key).map_or(0, |v| v.flags)
}

/// Whether `addr` is an address of the NIC.
#[inline(always)]
pub fn own(role: Role, fam: u8, addr: &[u8; 16]) -> bool {
    flags(role, fam, addr) & OWN != 0
}

/// Whether `addr` is on one of the NIC's links: its subnets, IPv6 link-local or link-scope
/// multicast.
#[inline(always)]
pub fn on_link(role: Role, fam: u8, addr: &[u8; 16]) -> bool {
    (fam == family::V6 && (link_local(addr) || link_multicast(addr)))
        || flags(role, fam, addr) & LINK != 0
}

/// fe80::/10.
#[inline(always)]
pub fn link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// ff02::/16.
#[inline(always)]
pub fn link_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff && addr[1] == 0x02
}

/// :: (the source of duplicate address detection).
#[inline(always)]
pub fn unspecified(addr: &[u8; 16]) -> bool {
    u128::from_ne_bytes(*addr) == 0
}
