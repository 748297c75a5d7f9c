//! The layout both sides of trove-isolate agree on.
//!
//! The datapath (`trove-isolate-ebpf`, `no_std`) and the loader (`trove-isolate`) share every map key
//! and value through this crate, and every code that ends up in a metric label (role, direction,
//! verdict, drop reason) is defined here once. Userspace derives its label strings from the `name()`
//! of these enums, never from a second list.
//!
//! A change to any `#[repr(C)]` type here is a change of map layout: bump [`LAYOUT_VERSION`] so that
//! an upgraded loader never reuses a pinned map of the old shape.
#![no_std]

pub mod clock;
pub mod conntrack;
pub mod counters;
pub mod events;
pub mod flow_table;
pub mod guard;
pub mod local;
pub mod policy;
pub mod rule_table;
pub mod settings;

/// Version of the map layouts below; part of every pinned map's name.
pub const LAYOUT_VERSION: u32 = 15;

/// Names of the maps in the eBPF object (the `static`s of `trove-isolate-ebpf/src/maps.rs`).
pub mod maps {
    use crate::{conntrack::Keying, Role};

    /// The rules (`policy::map_index` says which map holds one): arrays of buckets
    /// (`rule_table`), IPv4's of `policy::PolicyKey4`s, IPv6 prefixes up to /64 of
    /// `policy::PolicyKey6`s, longer ones of `policy::PolicyKey`s. Each is sized for its own
    /// rules, two generations of them.
    pub const POLICY4: &str = "POLICY4";
    pub const POLICY6: &str = "POLICY6";
    pub const POLICY6_LONG: &str = "POLICY6_LONG";
    pub const POLICIES: [&str; crate::policy::MAPS] = [POLICY4, POLICY6, POLICY6_LONG];
    /// The prefix lengths the policy's rules use and where they lie, per (role, direction,
    /// family) and generation (`policy::lengths_index`).
    pub const POLICY_LENGTHS: &str = "POLICY_LENGTHS";
    /// The generation of the rules in force (`rule_table`), then the ids of the maps of its
    /// set (`POLICY_SET`), which the daemon checks at load.
    pub const POLICY_GENERATION: &str = "POLICY_GENERATION";
    /// The maps a generation spans, besides the generation map.
    pub const POLICY_SET: [&str; 4] = [POLICY4, POLICY6, POLICY6_LONG, POLICY_LENGTHS];
    pub const LOCAL: &str = "LOCAL";
    /// Each role's own addresses as two `local::OwnSet` slots, and the generation that says
    /// which slot is in force.
    pub const OWN_SETS: &str = "OWN_SETS";
    pub const OWN_GENERATION: &str = "OWN_GENERATION";
    pub const COUNTERS: &str = "COUNTERS";
    /// The boot guard's counters (`guard::counter_index`), pinned so that the daemon that
    /// follows it reports what it did; its endpoints are written at each load, never pinned.
    pub const GUARD_COUNTERS: &str = "GUARD_COUNTERS";
    pub const GUARD_ENDPOINTS: &str = "GUARD_ENDPOINTS";
    pub const SETTINGS: &str = "SETTINGS";
    /// Sampled drop events (a ring buffer) and their per-CPU budget.
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    /// Flows not yet established, per role and keying (`conntrack::Keying`): small,
    /// short-lived, LRU (a flood evicts only its own kind). The `TCP4_` tables hold TCP over
    /// IPv4, keyed by `conntrack::FlowKey4`; the `CT_` tables every other flow, keyed by
    /// `conntrack::WideKey`.
    pub const TCP4_NEW_MGMT: &str = "TCP4_NEW_MGMT";
    pub const TCP4_NEW_BIZ: &str = "TCP4_NEW_BIZ";
    pub const CT_NEW_MGMT: &str = "CT_NEW_MGMT";
    pub const CT_NEW_BIZ: &str = "CT_NEW_BIZ";
    /// Established flows, per role and keying: a plain hash that never evicts (full means new
    /// flows are refused with `conntrack_full`); expired entries are deleted by the datapath when
    /// it meets them and by the daemon's sweep.
    pub const TCP4_EST_MGMT: &str = "TCP4_EST_MGMT";
    pub const TCP4_EST_BIZ: &str = "TCP4_EST_BIZ";
    pub const CT_EST_MGMT: &str = "CT_EST_MGMT";
    pub const CT_EST_BIZ: &str = "CT_EST_BIZ";
    pub const ALL: [&str; 21] = [
        POLICY4,
        POLICY6,
        POLICY6_LONG,
        POLICY_LENGTHS,
        POLICY_GENERATION,
        LOCAL,
        OWN_SETS,
        OWN_GENERATION,
        COUNTERS,
        SETTINGS,
        DROP_EVENTS,
        EVENT_BUDGET,
        TCP4_NEW_MGMT,
        TCP4_NEW_BIZ,
        CT_NEW_MGMT,
        CT_NEW_BIZ,
        TCP4_EST_MGMT,
        TCP4_EST_BIZ,
        CT_EST_MGMT,
        CT_EST_BIZ,
        GUARD_COUNTERS,
    ];

    /// Whether `name` is one of the policy maps.
    pub fn is_policy(name: &str) -> bool {
        policy_index(name).is_some()
    }

    /// Whether `name` is one of the maps the policy's generations live in: the rule tables, the
    /// prefix lengths and the generation word, which are made anew together.
    pub fn is_policy_state(name: &str) -> bool {
        is_policy(name) || name == POLICY_LENGTHS || name == POLICY_GENERATION
    }

    /// The index of the policy map `name` in [`POLICIES`].
    pub fn policy_index(name: &str) -> Option<usize> {
        POLICIES.iter().position(|p| *p == name)
    }

    /// The not-yet-established flow map of `role` for flows keyed as `keying`.
    pub const fn ct_new(role: Role, keying: Keying) -> &'static str {
        match (role, keying) {
            (Role::Management, Keying::Tcp4) => TCP4_NEW_MGMT,
            (Role::Business, Keying::Tcp4) => TCP4_NEW_BIZ,
            (Role::Management, Keying::Wide) => CT_NEW_MGMT,
            (Role::Business, Keying::Wide) => CT_NEW_BIZ,
        }
    }

    /// The established flow map of `role` for flows keyed as `keying`.
    pub const fn ct_est(role: Role, keying: Keying) -> &'static str {
        match (role, keying) {
            (Role::Management, Keying::Tcp4) => TCP4_EST_MGMT,
            (Role::Business, Keying::Tcp4) => TCP4_EST_BIZ,
            (Role::Management, Keying::Wide) => CT_EST_MGMT,
            (Role::Business, Keying::Wide) => CT_EST_BIZ,
        }
    }
}

/// The program protecting one (role, direction): its name in the eBPF object.
pub const fn program_name(role: Role, direction: Direction) -> &'static str {
    match (role, direction) {
        (Role::Management, Direction::Ingress) => "mgmt_ingress",
        (Role::Management, Direction::Egress) => "mgmt_egress",
        (Role::Business, Direction::Ingress) => "biz_ingress",
        (Role::Business, Direction::Egress) => "biz_egress",
    }
}

/// The program that holds one of a role's hooks while a first start verifies the role's
/// programs (it passes every packet on), replaced in place by the hook's program once verified.
pub const PLACE_PROGRAM: &str = "hold_place";

/// Which NIC of the guest a program protects: the policy domain that leads every key.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "user", serde(rename_all = "lowercase"))]
pub enum Role {
    /// The management NIC: guest agent RPC, registry pulls, operator SSH.
    Management = 0,
    /// The business NIC: the tenant's database clients and replication peers.
    Business = 1,
}

impl Role {
    pub const COUNT: usize = 2;
    pub const ALL: [Role; Self::COUNT] = [Role::Management, Role::Business];

    pub const fn name(self) -> &'static str {
        match self {
            Role::Management => "management",
            Role::Business => "business",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Role> {
        match v {
            0 => Some(Role::Management),
            1 => Some(Role::Business),
            _ => None,
        }
    }
}

/// Which way a packet crosses the protected NIC.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "user", serde(rename_all = "lowercase"))]
pub enum Direction {
    /// Arriving from the wire.
    Ingress = 0,
    /// Leaving the guest.
    Egress = 1,
}

impl Direction {
    pub const COUNT: usize = 2;
    pub const ALL: [Direction; Self::COUNT] = [Direction::Ingress, Direction::Egress];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Direction> {
        match v {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }

    /// The way a reply travels.
    pub const fn reverse(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }
}

/// What the datapath did with a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    /// Audit mode: the packet would have been dropped for its reason, and was passed.
    Audit = 2,
}

impl Verdict {
    pub const COUNT: usize = 3;
    pub const ALL: [Verdict; Self::COUNT] = [Verdict::Pass, Verdict::Drop, Verdict::Audit];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Audit => "audit",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Verdict> {
        match v {
            0 => Some(Verdict::Pass),
            1 => Some(Verdict::Drop),
            2 => Some(Verdict::Audit),
            _ => None,
        }
    }
}

/// Why a packet got its verdict. Pass reasons come first, then drop reasons; a drop reason with
/// [`Verdict::Audit`] means "would have dropped".
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// First packet of a new flow that a policy rule allows; the flow is now tracked.
    Allowed = 0,
    /// A packet of a tracked flow, either direction.
    Tracked = 1,
    /// An ICMP/ICMPv6 error about a tracked flow (unreachable, too big, time exceeded), between
    /// that flow's endpoints.
    Related = 2,
    /// ARP in its shape (Ethernet/IPv4 request or reply in a minimal frame; going out, as the
    /// NIC's own address or a probe), so the NIC keeps its neighbours.
    Arp = 3,
    /// IPv6 neighbour and router discovery and MLD, each in its direction, hop limit and scope.
    NeighborDiscovery = 4,
    /// DHCP or DHCPv6 client traffic (client port <-> server port, broadcast or link scope),
    /// passed without tracking.
    Dhcp = 5,
    /// A new flow that no rule of this interface allows.
    Policy = 6,
    /// Not the start of a flow (TCP without SYN, a reply, an unrelated ICMP error) and no tracked
    /// flow to belong to: unsolicited.
    NotTracked = 7,
    /// A header that is truncated or inconsistent, or neighbour discovery with the wrong hop
    /// limit or scope: fail closed.
    Malformed = 8,
    /// An IPv4 or IPv6 fragment: ports cannot be checked, fail closed.
    Fragment = 9,
    /// An ethertype, IP protocol, extension header or ICMP type the policy has no words for.
    UnsupportedProtocol = 10,
    /// A new flow was allowed but the established table of its NIC is full: refused rather than
    /// evicting an established flow.
    ConntrackFull = 11,
    /// A TCP flag combination no real stack sends (SYN+FIN, SYN+RST, FIN without ACK, none).
    InvalidFlags = 12,
    /// A TCP RST or FIN outside the receiver's window of a tracked flow (a blind reset).
    OutOfWindow = 13,
    /// A new flow not addressed to (ingress) or not from (egress) an address of this NIC:
    /// forwarded or spoofed.
    NotLocal = 14,
}

impl Reason {
    pub const COUNT: usize = 15;
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::Allowed,
        Reason::Tracked,
        Reason::Related,
        Reason::Arp,
        Reason::NeighborDiscovery,
        Reason::Dhcp,
        Reason::Policy,
        Reason::NotTracked,
        Reason::Malformed,
        Reason::Fragment,
        Reason::UnsupportedProtocol,
        Reason::ConntrackFull,
        Reason::InvalidFlags,
        Reason::OutOfWindow,
        Reason::NotLocal,
    ];

    /// The Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Tracked => "tracked",
            Reason::Related => "related",
            Reason::Arp => "arp",
            Reason::NeighborDiscovery => "neighbor_discovery",
            Reason::Dhcp => "dhcp",
            Reason::Policy => "policy",
            Reason::NotTracked => "not_tracked",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::UnsupportedProtocol => "unsupported_protocol",
            Reason::ConntrackFull => "conntrack_full",
            Reason::InvalidFlags => "invalid_flags",
            Reason::OutOfWindow => "out_of_window",
            Reason::NotLocal => "not_local",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Reason> {
        if (v as usize) < Self::COUNT {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// Whether this reason ends in a drop (or an audit record) rather than a pass.
    pub const fn is_drop(self) -> bool {
        self as u8 >= Reason::Policy as u8
    }
}

/// How a role's verdicts are applied.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "user", serde(rename_all = "lowercase"))]
pub enum Mode {
    /// Drops are dropped.
    Enforce = 0,
    /// Drops are counted as [`Verdict::Audit`] and passed.
    Audit = 1,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Mode> {
        match v {
            0 => Some(Mode::Enforce),
            1 => Some(Mode::Audit),
            _ => None,
        }
    }
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::fmt::Display for Direction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::fmt::Display for Mode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the programs return to TC.
pub mod action {
    /// `TC_ACT_UNSPEC`: under TCX, on to the next program; under cls_bpf, to the next filter.
    /// Either way the packet goes on unless something after us objects.
    pub const PASS: i32 = -1;
    /// `TC_ACT_SHOT`.
    pub const DROP: i32 = 2;
}

/// IP protocol numbers the policy speaks of.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Address family tags used in keys (not AF_* values: only these two exist here), and the
/// 16-byte address field every key carries (IPv4 in its first four bytes, the rest zero).
pub mod family {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
    pub const ALL: [u8; 2] = [V4, V6];

    /// The metric label of a family.
    pub const fn name(family: u8) -> &'static str {
        if family == V4 {
            "ipv4"
        } else {
            "ipv6"
        }
    }

    /// The family tag and key address field of `ip`.
    pub fn key_addr(ip: IpAddr) -> (u8, [u8; 16]) {
        match ip {
            IpAddr::V4(v4) => {
                let mut addr = [0u8; 16];
                let o = v4.octets();
                addr[0] = o[0];
                addr[1] = o[1];
                addr[2] = o[2];
                addr[3] = o[3];
                (V4, addr)
            }
            IpAddr::V6(v6) => (V6, v6.octets()),
        }
    }

    /// The address a key's family tag and address field stand for.
    pub fn ip(family: u8, addr: &[u8; 16]) -> IpAddr {
        if family == V4 {
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*addr))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_addresses_round_trip() {
        for text in ["192.0.2.1", "2001:db8::1", "0.0.0.0", "::"] {
            let ip: core::net::IpAddr = text.parse().expect("an address");
            let (fam, addr) = family::key_addr(ip);
            assert_eq!(family::ip(fam, &addr), ip);
        }
        let (fam, addr) = family::key_addr("192.0.2.1".parse().expect("v4"));
        assert_eq!((fam, &addr[..5]), (family::V4, &[192, 0, 2, 1, 0][..]));
    }

    #[test]
    fn reason_table_is_dense_and_ordered() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} out of place", r.name());
        }
        assert!(!Reason::Dhcp.is_drop());
        assert!(Reason::Policy.is_drop());
        assert_eq!(
            Reason::from_u8(Reason::NotLocal as u8),
            Some(Reason::NotLocal)
        );
        assert_eq!(Reason::from_u8(Reason::COUNT as u8), None);
    }
}
