//! The NICs' own addresses and on-link prefixes, as the datapath's `LOCAL` map holds them.
//!
//! New flows must be addressed to (ingress) or sent from (egress) an address of their NIC, so a
//! forwarded or spoofed packet is never judged as the guest's own; DHCP and neighbour discovery
//! are scoped to the on-link prefixes. [`addresses`] reads a NIC's addresses inside its
//! namespace; [`entries`] turns them into map entries (an own address as a host prefix with both
//! flags, its subnet with `LINK` only).

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::lpm_trie::Key;
use ipnetwork::IpNetwork;
use nix::ifaddrs::getifaddrs;
use trove_isolate_common::{
    family,
    local::{LocalKey, LocalValue, LINK, OWN},
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
    }
    // An address whose subnet is another address's host prefix would collide: keep the first,
    // which for an own address carries both flags.
    let mut seen = BTreeSet::new();
    out.retain(|(k, _)| seen.insert((k.prefix_len(), k.data())));
    out
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
                (32 + 32, family::V4, OWN | LINK),
            ]
        );
        assert!(e.iter().all(|(k, _)| k.data().role == Role::Business as u8));
        assert_eq!(e[1].0.data().addr[..4], [192, 0, 2, 0]);
    }
}
