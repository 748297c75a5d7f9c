//! The multicast groups a NIC carries whose MLD reports the datapath refuses going out (`nd.rs`):
//! any but the solicited-node groups of the NIC's own addresses. `status` names them, since a
//! report that lists one beside the NIC's own groups is refused whole (SECURITY.md).

use std::net::Ipv6Addr;

use anyhow::Context as _;

use crate::{local, netns, nic::Device};

/// The groups of `device` whose reports are refused, from its namespace's
/// `/proc/thread-self/net/igmp6`. Those Linux never reports (all-nodes, and scopes narrower
/// than the link) are left out.
pub fn refused_groups(device: &Device) -> anyhow::Result<Vec<Ipv6Addr>> {
    let own: Vec<Ipv6Addr> = local::addresses(device)?
        .iter()
        .filter_map(|net| match net.ip() {
            std::net::IpAddr::V6(a) => Some(local::solicited_node(a)),
            std::net::IpAddr::V4(_) => None,
        })
        .collect();
    let text = match netns::run_in(device.netns.as_deref(), || {
        std::fs::read_to_string("/proc/thread-self/net/igmp6")
    })? {
        Ok(text) => text,
        // No IPv6 in the kernel (ipv6.disable=1): no groups, no reports.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the multicast groups of {}", device.name))
        }
    };
    Ok(groups_of(&text, device.ifindex)
        .into_iter()
        .filter(|g| reported(g) && !own.contains(g))
        .collect())
}

/// The groups of interface `ifindex` in igmp6's text: index, name, group in hex, users, flags,
/// timer.
fn groups_of(text: &str, ifindex: u32) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let index: u32 = fields.next()?.parse().ok()?;
            let hex = fields.nth(1)?;
            let group = u128::from_str_radix(hex, 16).ok()?;
            (index == ifindex).then(|| Ipv6Addr::from(group))
        })
        .collect()
}

/// Whether Linux sends reports of `group` at all: not all-nodes (ff02::1), nor a scope narrower
/// than the link (RFC 3810 6).
fn reported(group: &Ipv6Addr) -> bool {
    let scope = group.octets()[1] & 0x0f;
    *group != Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1) && scope >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_per_interface_and_the_unreported_left_out() {
        let text = "\
1    lo              ff020000000000000000000000000001     1 0000000C 0
4    eth0            ff0200000000000000000001ff000002     1 00000004 0
4    eth0            ff0200000000000000000000000000fb     1 00000004 0
4    eth0            ff020000000000000000000000000001     1 0000000C 0
4    eth0            ff010000000000000000000000000001     1 00000008 0
5    eth1            ff020000000000000000000000010003     1 00000004 0
";
        let groups: Vec<String> = groups_of(text, 4)
            .into_iter()
            .filter(reported)
            .map(|g| g.to_string())
            .collect();
        assert_eq!(groups, ["ff02::1:ff00:2", "ff02::fb"]);
    }
}
