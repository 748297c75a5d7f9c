//! The guest both the differential test and the model's unit tests judge frames for: its
//! config, its NICs' addresses, and the hosts around it. Depends only on std and the crates the
//! library already uses, so the model's unit tests can include it with `#[path]`.

#![allow(dead_code)]

use ipnetwork::IpNetwork;
use trove_isolate_common::Role;

/// Management: rabbitmq, registry, some `allow` rules of each kind, SSH and metrics from the
/// operators' network, DHCP (the default). Business: two database ports for listed clients,
/// replication peers. The clients' prefixes of several lengths are written as one longer length
/// each family (`policy::expand`): the universe holds the edges of the expanded ones.
pub const CONFIG: &str = r#"
[metrics]
listen = "192.0.2.1:9477"
allow_from = ["203.0.113.0/24"]

[management]
interface = "mgmt0"
rabbitmq = ["192.0.2.10:5672", "[2001:db8:1::10]:5671"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24", "2001:db8:2::/48"]
allow = [
  { to = "192.0.2.10/32", proto = "icmp" },
  { to = "2001:db8:1::10/128", proto = "icmp" },
  { to = "192.0.2.30/32", proto = "udp", port = 53 },
  { to = "2001:db8:3::/64", proto = "tcp", port = 443 },
]

[business]
interface = "eth0"
database_ports = [3306, 5432]
clients = [
  "192.0.2.0/24", "2001:db8:1::/64", "203.0.113.0/24",
  "198.51.100.32/28", "198.51.100.200", "2001:db8:4::/124", "2001:db8:4::80/121",
]
peers = ["198.51.100.7/32", "2001:db8:1::7/128"]
"#;

/// The NICs' addresses: both carry 192.0.2.1 and 2001:db8:1::1 (the two NICs must still never
/// share flows); each has its own link-local address, the business NIC one more subnet.
pub const LOCAL: &[(Role, &str)] = &[
    (Role::Management, "192.0.2.1/24"),
    (Role::Management, "2001:db8:1::1/64"),
    (Role::Management, "fe80::1/64"),
    (Role::Business, "192.0.2.1/24"),
    (Role::Business, "198.51.100.1/24"),
    (Role::Business, "2001:db8:1::1/64"),
    (Role::Business, "fe80::2/64"),
];

/// Roles that pass DHCP client traffic.
pub const DHCP: &[Role] = &[Role::Management];

pub fn local() -> Vec<(Role, IpNetwork)> {
    LOCAL
        .iter()
        .map(|(r, n)| (*r, n.parse().expect("local network")))
        .collect()
}

pub fn nets(role: Role) -> Vec<IpNetwork> {
    local()
        .into_iter()
        .filter(|(r, _)| *r == role)
        .map(|(_, n)| n)
        .collect()
}

// Hosts by what they are to the guest.
pub const G4: &str = "192.0.2.1";
pub const G6: &str = "2001:db8:1::1";
pub const BIZ4: &str = "198.51.100.1";
pub const MGMT_LL: &str = "fe80::1";
pub const BIZ_LL: &str = "fe80::2";
pub const RABBIT4: &str = "192.0.2.10";
pub const RABBIT6: &str = "2001:db8:1::10";
pub const REGISTRY: &str = "192.0.2.20";
pub const DNS: &str = "192.0.2.30";
pub const CLIENT4: &str = "192.0.2.50";
pub const CLIENT6: &str = "2001:db8:1::50";
pub const UNLISTED4: &str = "192.0.2.99";
pub const OPERATOR4: &str = "203.0.113.5";
pub const OPERATOR6: &str = "2001:db8:2::5";
pub const PEER4: &str = "198.51.100.7";
pub const PEER6: &str = "2001:db8:1::7";
pub const WEB6: &str = "2001:db8:3::1";
pub const ROUTER_LL: &str = "fe80::99";

pub const V4_UNIVERSE: &[&str] = &[
    G4,
    BIZ4,
    RABBIT4,
    REGISTRY,
    DNS,
    CLIENT4,
    UNLISTED4,
    OPERATOR4,
    PEER4,
    "198.51.100.31",
    "198.51.100.32",
    "198.51.100.47",
    "198.51.100.48",
    "198.51.100.200",
    "8.8.8.8",
    "255.255.255.255",
    "192.0.2.255",
    "0.0.0.0",
    "224.0.0.1",
    "127.0.0.1",
];

pub const V6_UNIVERSE: &[&str] = &[
    G6,
    MGMT_LL,
    BIZ_LL,
    RABBIT6,
    CLIENT6,
    OPERATOR6,
    PEER6,
    WEB6,
    ROUTER_LL,
    "2001:db8:4::f",
    "2001:db8:4::10",
    "2001:db8:4::80",
    "2001:db8:4::ff",
    "2001:db8:4::100",
    "2001:db8:ffff::1",
    "ff02::1",
    "ff02::2",
    "ff02::1:2",
    "ff02::16",
    "ff02::1:ff00:1",
    "ff05::1:3",
    "::",
    "::1",
];

/// Ports the policy names, DHCP's, and a few ephemeral ones.
pub const PORTS: &[u16] = &[
    22, 9477, 5672, 5671, 4000, 53, 443, 3306, 5432, 67, 68, 546, 547, 40000, 40001, 12345,
];
