//! The NIC's own addresses and links (`trove_isolate_common::local`), as the daemon last saw
//! them.

use aya_ebpf::maps::lpm_trie::Key;
use trove_isolate_common::{
    conntrack::bytes,
    family,
    local::{LocalKey, OwnSet, FIXED_PREFIX_BITS, GROUP, LINK, OWN, TRIE_ONLY},
    Role,
};

use crate::{
    maps::{LOCAL, OWN_GENERATION, OWN_SETS},
    packet::{byte, Addr},
};

/// The [`OWN`] / [`LINK`] / [`GROUP`] flags of `addr` on the NIC of `role`.
#[inline(always)]
fn flags(role: Role, fam: u8, addr: &Addr) -> u8 {
    let addr_bits = if fam == family::V4 { 32 } else { 128 };
    let key = Key::new(
        FIXED_PREFIX_BITS + addr_bits,
        LocalKey {
            role: role as u8,
            family: fam,
            _pad: [0; 2],
            addr: bytes(addr),
        },
    );
    LOCAL.get(&key).map_or(0, |v| v.flags)
}

/// Whether `addr` is an address of the NIC. The role's set in force answers for the addresses
/// it holds; the trie, which the daemon writes first, for any other. So an address the NIC has
/// just gained is its own from the moment it is in the trie, not from the set's flip a grace
/// period later, and an address the set does not hold costs a trie lookup (a packet the rules
/// allowed to an address not the NIC's: rare).
#[inline(always)]
pub fn own(role: Role, fam: u8, addr: &Addr) -> bool {
    in_set(role, fam, addr) || own_in_trie(role, fam, addr)
}

/// Whether the trie says `addr` is an address of the NIC.
#[inline(always)]
pub fn own_in_trie(role: Role, fam: u8, addr: &Addr) -> bool {
    flags(role, fam, addr) & OWN != 0
}

/// Whether the role's set in force holds `addr`. Both lookups are of arrays, which the verifier
/// inlines: no helper call. The slot is read through the generation it depends on, so no CPU
/// reads it before the generation that names it (the daemon's write order does the rest).
#[inline(always)]
fn in_set(role: Role, fam: u8, addr: &Addr) -> bool {
    let Some(&generation) = OWN_GENERATION.get(0) else {
        return false;
    };
    if generation & TRIE_ONLY != 0 {
        return false;
    }
    match OWN_SETS.get(OwnSet::slot(role, generation)) {
        Some(set) => set.holds(fam, addr),
        None => false,
    }
}

/// Whether `group` is the solicited-node group of one of the NIC's IPv6 addresses.
#[inline(always)]
pub fn own_group(role: Role, group: &Addr) -> bool {
    flags(role, family::V6, group) & GROUP != 0
}

/// Whether `addr` is on one of the NIC's links: its subnets, IPv6 link-local or link-scope
/// multicast.
#[inline(always)]
pub fn on_link(role: Role, fam: u8, addr: &Addr) -> bool {
    (fam == family::V6 && (link_local(addr) || link_multicast(addr)))
        || flags(role, fam, addr) & LINK != 0
}

/// fe80::/10.
#[inline(always)]
pub fn link_local(addr: &Addr) -> bool {
    byte(addr[0], 0) == 0xfe && byte(addr[0], 1) & 0xc0 == 0x80
}

/// ff02::/16.
#[inline(always)]
pub fn link_multicast(addr: &Addr) -> bool {
    byte(addr[0], 0) == 0xff && byte(addr[0], 1) == 0x02
}

/// :: (the source of duplicate address detection).
#[inline(always)]
pub fn unspecified(addr: &Addr) -> bool {
    addr[0] | addr[1] | addr[2] | addr[3] == 0
}
