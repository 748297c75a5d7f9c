//! The simulated guest's addresses: documentation ranges only, inside the testbed's namespaces.

/// The guest's address on **both** NICs.
pub const GUEST_V4: &str = "192.0.2.1";
pub const GUEST_V6: &str = "2001:db8:1::1";

pub const RABBITMQ_V4: &str = "192.0.2.10";
pub const RABBITMQ_V6: &str = "2001:db8:1::10";
pub const REGISTRY: &str = "192.0.2.20";
/// A service named by an extra `allow` rule.
pub const EXTRA: &str = "192.0.2.30";
/// A host on the management network that no rule names.
pub const UNLISTED_V4: &str = "192.0.2.99";
pub const UNLISTED_V6: &str = "2001:db8:1::99";
/// An operator's workstation, in another subnet.
pub const OPERATOR: &str = "203.0.113.5";

pub const CLIENT_V4: &str = "192.0.2.50";
pub const CLIENT_V6: &str = "2001:db8:1::50";
/// A replication peer, in another subnet.
pub const PEER: &str = "198.51.100.7";

/// Hosts on the management network (one veth end holds them all).
pub const MGMT_NET: &[&str] = &[
    RABBITMQ_V4,
    RABBITMQ_V6,
    REGISTRY,
    EXTRA,
    UNLISTED_V4,
    UNLISTED_V6,
    OPERATOR,
];

/// Hosts on the tenant network, including a decoy holding RabbitMQ's address, so that a blocked
/// probe from the database to that address:port is a drop, not a missing host.
pub const BIZ_NET: &[&str] = &[
    CLIENT_V4,
    CLIENT_V6,
    PEER,
    UNLISTED_V4,
    RABBITMQ_V4,
    RABBITMQ_V6,
];

/// Subnets reached on-link from the guest's NICs.
pub const OTHER_SUBNETS: &[&str] = &["203.0.113.0/24", "198.51.100.0/24"];
