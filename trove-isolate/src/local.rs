//! The NICs' own addresses and on-link prefixes, as the datapath's `LOCAL` map holds them.
//!
//! New flows must be addressed to (ingress) or sent from (egress) an address of their NIC, so a
//! forwarded or spoofed packet is never judged as the guest's own; DHCP and neighbour discovery
//! are scoped to the on-link prefixes. [`addresses`] reads a NIC's addresses inside its
//! namespace; [`entries`] turns them into map entries (an own address as a host prefix with both
//! flags, its subnet with `LINK` only, an IPv6 address's solicited-node group with `GROUP`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use aya::maps::lpm_trie::Key;
use ipnetwork::IpNetwork;
use nix::ifaddrs::getifaddrs;
use trove_isolate_common::{
    family,
    local::{LocalKey, LocalValue, GROUP, LINK, OWN},
    Role,
};

use crate::{netns, nic::Device};

/// The addresses of `device` with their prefix lengths, read inside its namespace.
pub fn addresses(device: &Device) -> anyhow::Result<Vec<IpNetwork>> {
    use anyhow::Context as _;
    let name = device.name.clone();
    netns::run_in(device.netns.as_deref(), move || {
        let mut out = BTreeSet::new();
        for ifa in getifaddrs()? {
            if ifa.interface_name != name {
                continue;
            }
            let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
                continue;
            };
            let (ip, bits) = if let (Some(a), Some(m)) =
                (addr.as_sockaddr_in(), mask.as_sockaddr_in())
            {
                (IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones())
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones())
            } else {
                continue;
            };
            if let Ok(net) = IpNetwork::new(ip, bits as u8) {
                out.insert(net);
            }
        }
        Ok::<_, nix::Error>(out.into_iter().collect())
    })?
    .with_context(|| format!("listing the addresses of {}", device.name))
}

/// The `LOCAL` map entries of one NIC. Warns of two addresses whose flows share keys
/// ([`folding_alike`]); the daemon makes the entries when the addresses change.
pub fn entries(role: Role, nets: &[IpNetwork]) -> Vec<(Key<LocalKey>, LocalValue)> {
    for (a, b) in folding_alike(nets) {
        log::warn!(
            "the {role} NIC's addresses {a} and {b} fold alike in the flow tables' keys: \
             while one remote endpoint has a flow other than TCP over IPv4 established with \
             one of them, its flow from the same port to the same port on the other stays in \
             the new table (30 s idle timeout, evictable)"
        );
    }
    let mut out = Vec::new();
    for net in nets {
        let host = IpNetwork::new(net.ip(), if net.is_ipv4() { 32 } else { 128 })
            .expect("a host prefix is valid");
        out.push(entry(role, host, OWN | LINK));
        let subnet = IpNetwork::new(net.network(), net.prefix()).expect("same prefix is valid");
        if subnet.prefix() != host.prefix() {
            out.push(entry(role, subnet, LINK));
        }
        if let IpAddr::V6(v6) = net.ip() {
            let group = IpNetwork::new(IpAddr::V6(solicited_node(v6)), 128).expect("a host prefix");
            out.push(entry(role, group, GROUP));
        }
    }
    // Entries of one key carry all their flags: an address whose subnet is another address's
    // host prefix, or a multicast address root adds to the NIC that is an address's group.
    let mut merged: BTreeMap<(u32, LocalKey), u8> = BTreeMap::new();
    let mut order = Vec::new();
    for (key, value) in &out {
        let id = (key.prefix_len(), key.data());
        if !merged.contains_key(&id) {
            order.push(*key);
        }
        *merged.entry(id).or_default() |= value.flags;
    }
    order
        .into_iter()
        .map(|key| {
            let flags = merged[&(key.prefix_len(), key.data())];
            (
                key,
                LocalValue {
                    flags,
                    _pad: [0; 3],
                },
            )
        })
        .collect()
}

/// The solicited-node multicast group of `addr` (RFC 4291 2.7.1): ff02::1:ff00:0/104 and the
/// address's low 24 bits. A host joins it for each of its addresses, and it is the only group
/// whose MLD reports pass going out (SECURITY.md).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let low = u128::from(addr) & 0x00ff_ffff;
    Ipv6Addr::from(0xff02_0000_0000_0000_0000_0001_ff00_0000 | low)
}

/// Pairs of addresses among `nets` whose folds in a wide flow key are equal
/// (`conntrack::fold`, one pair in 16,777,216): one remote endpoint's flows to the same port on
/// both share a key.
pub fn folding_alike(nets: &[IpNetwork]) -> Vec<(IpAddr, IpAddr)> {
    use trove_isolate_common::conntrack::{fold, words};
    let fold_of = |ip: IpAddr| (ip.is_ipv4(), fold(&words(&family::key_addr(ip).1)));
    let mut out = Vec::new();
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            if a.ip() != b.ip() && fold_of(a.ip()) == fold_of(b.ip()) {
                out.push((a.ip(), b.ip()));
            }
        }
    }
    out
}

fn entry(role: Role, net: IpNetwork, flags: u8) -> (Key<LocalKey>, LocalValue) {
    let (fam, addr) = family::key_addr(net.ip());
    (
        Key::new(
            LocalKey::prefix_len(u32::from(net.prefix())),
            LocalKey {
                role: role as u8,
                family: fam,
                _pad: [0; 2],
                addr,
            },
        ),
        LocalValue {
            flags,
            _pad: [0; 3],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_folding_alike_are_found() {
        let nets = |list: &[&str]| -> Vec<IpNetwork> {
            list.iter().map(|s| s.parse().expect("net")).collect()
        };
        // Found by search: 2001:db8:1::1c6:390a folds as 2001:db8:1::1 does.
        let alike = nets(&["2001:db8:1::1/64", "fe80::1/64", "2001:db8:1::1c6:390a/64"]);
        assert_eq!(
            folding_alike(&alike),
            [(alike[0].ip(), alike[2].ip())],
            "one pair"
        );
        let apart = nets(&["192.0.2.1/24", "2001:db8:0:1::1/64", "2001:db8:0:2::2/64"]);
        assert!(folding_alike(&apart).is_empty());
    }

    #[test]
    fn entries_of_one_key_carry_all_their_flags() {
        // A multicast address on the NIC (root's `ip addr add ... autojoin`) that is another
        // address's solicited-node group: own, and a group a report may name.
        let nets: Vec<IpNetwork> = ["2001:db8::5/64", "ff02::1:ff00:5/128", "192.0.2.1/32"]
            .iter()
            .map(|s| s.parse().expect("net"))
            .collect();
        let e = entries(Role::Management, &nets);
        let flags_of = |addr: &str, bits: u32| {
            let (_, octets) = family::key_addr(addr.parse().expect("address"));
            e.iter()
                .filter(|(k, _)| k.prefix_len() == 32 + bits && k.data().addr == octets)
                .map(|(_, v)| v.flags)
                .collect::<Vec<_>>()
        };
        assert_eq!(flags_of("ff02::1:ff00:5", 128), [OWN | LINK | GROUP]);
        assert_eq!(flags_of("192.0.2.1", 32), [OWN | LINK]);
    }

    #[test]
    fn an_address_is_own_and_its_subnet_is_link() {
        let nets: Vec<IpNetwork> = ["192.0.2.1/24", "2001:db8:1::1/64", "192.0.2.7/32"]
            .iter()
            .map(|s| s.parse().expect("net"))
            .collect();
        let e = entries(Role::Business, &nets);
        let got: Vec<(u32, u8, u8)> = e
            .iter()
            .map(|(k, v)| (k.prefix_len(), k.data().family, v.flags))
            .collect();
        assert_eq!(
            got,
            [
                (32 + 32, family::V4, OWN | LINK),
                (32 + 24, family::V4, LINK),
                (32 + 128, family::V6, OWN | LINK),
                (32 + 64, family::V6, LINK),
                (32 + 128, family::V6, GROUP),
                (32 + 32, family::V4, OWN | LINK),
            ]
        );
        assert_eq!(
            e[4].0.data().addr,
            "ff02::1:ff00:1"
                .parse::<Ipv6Addr>()
                .expect("group")
                .octets()
        );
        assert!(e.iter().all(|(k, _)| k.data().role == Role::Business as u8));
        assert_eq!(e[1].0.data().addr[..4], [192, 0, 2, 0]);
    }
}
