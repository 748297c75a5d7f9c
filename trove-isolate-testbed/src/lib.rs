//! A simulated Trove guest in network namespaces, for trove-isolate's tests and demo.
//!
//! [`Guest`] builds four namespaces joined by two veth pairs: the guest's own namespace with its
//! management NIC facing the management network, and the database container's namespace with the
//! business NIC facing the tenant network. Both NICs carry the **same** address and CIDR, as Trove
//! allows since Bobcat. Every address is from the documentation ranges and lives only inside
//! these namespaces; every probe is bounded by a timeout. Dropping a [`Guest`] (or a [`NetNs`])
//! removes what it made, also when a test panics.

pub mod addr;
mod netns;
mod probe;
pub mod scenario;
pub mod unit;

pub use netns::NetNs;
pub use probe::{tcp_probe, tcp_server, udp_probe, udp_server, Server};

/// The simulated guest.
pub struct Guest {
    mgmt_mac: [u8; 6],
    biz_mac: [u8; 6],
    /// The guest VM's own namespace: the management NIC, sshd, the metrics endpoint.
    pub host: NetNs,
    /// The database container's namespace: the business NIC (moved there by docker-hostnic).
    pub container: NetNs,
    /// The management network: RabbitMQ, the registry, operators.
    pub mgmt_net: NetNs,
    /// The tenant network: database clients, replication peers, and a decoy with RabbitMQ's address.
    pub biz_net: NetNs,
}

const MGMT_NIC: &str = "mgmt0";
const BIZ_NIC: &str = "eth0";
/// OpenStack's MAC prefix; the rest is unique per guest, because a NIC named by MAC is looked
/// for in every namespace, and tests run side by side.
const MAC_PREFIX: [u8; 3] = [0xfa, 0x16, 0x3e];

static NEXT_GUEST: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// The MAC of NIC `nic` (1 management, 2 business) of a new guest.
fn guest_mac(guest: u16, nic: u8) -> [u8; 6] {
    // A byte of the process id and 7 bits of the guest keep concurrent tests apart.
    [
        MAC_PREFIX[0],
        MAC_PREFIX[1],
        MAC_PREFIX[2],
        std::process::id() as u8,
        (guest as u8) & 0x7f,
        nic,
    ]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Guest {
    pub fn new(label: &str) -> Guest {
        let n = NEXT_GUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guest = Guest {
            mgmt_mac: guest_mac(n, 1),
            biz_mac: guest_mac(n, 2),
            host: NetNs::new(&format!("{label}g")),
            container: NetNs::new(&format!("{label}c")),
            mgmt_net: NetNs::new(&format!("{label}m")),
            biz_net: NetNs::new(&format!("{label}b")),
        };
        guest.wire(
            &guest.host,
            MGMT_NIC,
            guest.mgmt_mac,
            &guest.mgmt_net,
            addr::MGMT_NET,
        );
        guest.wire(
            &guest.container,
            BIZ_NIC,
            guest.biz_mac,
            &guest.biz_net,
            addr::BIZ_NET,
        );
        guest
    }

    /// A veth pair: `nic` (with `mac` and the guest's address) in `inside`, its peer in `outside`
    /// holding `hosts`. Other subnets are on-link both ways, so no router is needed.
    fn wire(&self, inside: &NetNs, nic: &str, mac: [u8; 6], outside: &NetNs, hosts: &[&str]) {
        inside.ip(&format!(
            "link add {nic} address {} type veth peer name peer0 netns {}",
            mac_text(mac),
            outside.name()
        ));
        inside.ip(&format!("addr add {}/24 dev {nic}", addr::GUEST_V4));
        inside.ip(&format!("addr add {}/64 dev {nic} nodad", addr::GUEST_V6));
        for host in hosts {
            if host.contains(':') {
                outside.ip(&format!("addr add {host}/64 dev peer0 nodad"));
            } else {
                outside.ip(&format!("addr add {host}/24 dev peer0"));
            }
        }
        for ns in [inside, outside] {
            ns.ip("link set lo up");
        }
        inside.ip(&format!("link set {nic} up"));
        outside.ip("link set peer0 up");
        for subnet in addr::OTHER_SUBNETS {
            inside.ip(&format!("route add {subnet} dev {nic}"));
        }
        outside.ip(&format!("route add {}/32 dev peer0", addr::GUEST_V4));
    }

    pub fn mgmt_nic(&self) -> &str {
        MGMT_NIC
    }

    pub fn biz_nic(&self) -> &str {
        BIZ_NIC
    }

    pub fn mgmt_mac(&self) -> [u8; 6] {
        self.mgmt_mac
    }

    pub fn biz_mac(&self) -> [u8; 6] {
        self.biz_mac
    }

    /// `aa:bb:cc:dd:ee:ff` of the business NIC, as a config names it.
    pub fn biz_mac_text(&self) -> String {
        mac_text(self.biz_mac)
    }
}
