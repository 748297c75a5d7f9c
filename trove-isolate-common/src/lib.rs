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

pub mod conntrack;
pub mod counters;
pub mod policy;
pub mod settings;

/// Version of the map layouts below; part of every pinned map's name.
pub const LAYOUT_VERSION: u32 = 1;

/// Names of the maps in the eBPF object (the `static`s of `trove-isolate-ebpf/src/maps.rs`).
pub mod maps {
    pub const POLICY: &str = "POLICY";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const ALL: [&str; 4] = [POLICY, CONNTRACK, COUNTERS, SETTINGS];
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

/// Which NIC of the guest a program protects: the policy domain that leads every key.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    /// An ICMP/ICMPv6 error about a tracked flow (unreachable, too big, time exceeded).
    Related = 2,
    /// ARP, always passed so the NIC keeps its neighbours.
    Arp = 3,
    /// IPv6 neighbour and router discovery and MLD, always passed.
    NeighborDiscovery = 4,
    /// A new flow that no rule of this interface allows.
    Policy = 5,
    /// Not the start of a flow (TCP without SYN, a reply, an unrelated ICMP error) and no tracked
    /// flow to belong to: unsolicited.
    NotTracked = 6,
    /// A header that is truncated or inconsistent: fail closed.
    Malformed = 7,
    /// An IPv4 or IPv6 fragment: ports cannot be checked, fail closed.
    Fragment = 8,
    /// An ethertype, IP protocol or extension header the policy has no words for.
    UnsupportedProtocol = 9,
    /// A new flow was allowed but could not be recorded in connection tracking: fail closed, since
    /// its replies would be refused anyway.
    ConntrackFull = 10,
}

impl Reason {
    pub const COUNT: usize = 11;
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::Allowed,
        Reason::Tracked,
        Reason::Related,
        Reason::Arp,
        Reason::NeighborDiscovery,
        Reason::Policy,
        Reason::NotTracked,
        Reason::Malformed,
        Reason::Fragment,
        Reason::UnsupportedProtocol,
        Reason::ConntrackFull,
    ];

    /// The Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Tracked => "tracked",
            Reason::Related => "related",
            Reason::Arp => "arp",
            Reason::NeighborDiscovery => "neighbor_discovery",
            Reason::Policy => "policy",
            Reason::NotTracked => "not_tracked",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::UnsupportedProtocol => "unsupported_protocol",
            Reason::ConntrackFull => "conntrack_full",
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

/// Address family tags used in keys (not AF_* values: only these two exist here).
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_is_dense_and_ordered() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} out of place", r.name());
        }
        assert!(!Reason::NeighborDiscovery.is_drop());
        assert!(Reason::Policy.is_drop());
    }
}
