//! The guest's policy and the flows that prove it, shared by the tests and the demo.
//!
//! [`config`] is the issue's example config pointed at a [`Guest`]; [`servers`] puts a listener on
//! every address a probe uses (so a failed probe is a drop, not a refusal); [`probes`] lists every
//! rule both ways with the verdict enforcement must give.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::{addr, tcp_probe, tcp_server, udp_probe, udp_server, Guest, NetNs, Server};

/// A trove-isolate config for `guest`.
pub fn config(
    guest: &Guest,
    mode: &str,
    attach: &str,
    pin_path: &str,
    metrics_port: u16,
) -> String {
    format!(
        r#"mode = "{mode}"
attach = "{attach}"
pin_path = "{pin_path}"

[metrics]
listen = "0.0.0.0:{metrics_port}"
allow_from = ["203.0.113.0/24"]

[management]
interface = "{mgmt}"
netns = "{host}"
rabbitmq = ["{rabbit4}:5672", "[{rabbit6}]:5671"]
registry = ["{registry}:4000"]
# A network and a host: written as 257 /32s, one lookup per new flow (prefix expansion).
ssh_from = ["203.0.113.0/24", "{extra}"]
allow = [
  {{ to = "{extra}/32", port = 8080, proto = "tcp" }},
  {{ to = "{extra}/32", port = 5353, proto = "udp" }},
]

[business]
mac = "{mac}"
netns = "{container}"
database_ports = [3306]
clients = []
peers = ["{peer}/32"]
"#,
        mgmt = guest.mgmt_nic(),
        host = guest.host.path().display(),
        container = guest.container.path().display(),
        mac = guest.biz_mac_text(),
        rabbit4 = addr::RABBITMQ_V4,
        rabbit6 = addr::RABBITMQ_V6,
        registry = addr::REGISTRY,
        extra = addr::EXTRA,
        peer = addr::PEER,
    )
}

/// Where a probe starts.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Host,
    Container,
    MgmtNet,
    BizNet,
}

impl Guest {
    pub fn side(&self, side: Side) -> &NetNs {
        match side {
            Side::Host => &self.host,
            Side::Container => &self.container,
            Side::MgmtNet => &self.mgmt_net,
            Side::BizNet => &self.biz_net,
        }
    }
}

pub struct Probe {
    pub name: &'static str,
    pub side: Side,
    pub udp: bool,
    pub from: Option<&'static str>,
    pub to: String,
    /// The verdict under enforcement.
    pub allowed: bool,
}

impl Probe {
    /// Whether the flow got through (connected and echoed) within `timeout`.
    pub fn run(&self, guest: &Guest, timeout: Duration) -> bool {
        let ns = guest.side(self.side);
        let from = self
            .from
            .map(|f| f.parse::<IpAddr>().expect("probe source is an IP"));
        let to: SocketAddr = self.to.parse().expect("probe target is an IP:port");
        if self.udp {
            udp_probe(ns, from, to, timeout)
        } else {
            tcp_probe(ns, from, to, timeout)
        }
    }
}

fn v4(ip: &str, port: u16) -> String {
    format!("{ip}:{port}")
}

fn v6(ip: &str, port: u16) -> String {
    format!("[{ip}]:{port}")
}

fn tcp(
    name: &'static str,
    side: Side,
    from: Option<&'static str>,
    to: String,
    allowed: bool,
) -> Probe {
    Probe {
        name,
        side,
        udp: false,
        from,
        to,
        allowed,
    }
}

fn udp(name: &'static str, side: Side, to: String, allowed: bool) -> Probe {
    Probe {
        name,
        side,
        udp: true,
        from: None,
        to,
        allowed,
    }
}

/// Every rule of the policy, both ways, IPv4 and IPv6.
pub fn probes(metrics_port: u16) -> Vec<Probe> {
    use addr::*;
    use Side::*;
    vec![
        // Management NIC, outbound: only the configured endpoints.
        tcp("guest -> rabbitmq", Host, None, v4(RABBITMQ_V4, 5672), true),
        tcp(
            "guest -> rabbitmq (IPv6)",
            Host,
            None,
            v6(RABBITMQ_V6, 5671),
            true,
        ),
        tcp("guest -> registry", Host, None, v4(REGISTRY, 4000), true),
        tcp(
            "guest -> extra allow (tcp)",
            Host,
            None,
            v4(EXTRA, 8080),
            true,
        ),
        udp("guest -> extra allow (udp)", Host, v4(EXTRA, 5353), true),
        tcp(
            "guest -> unlisted host",
            Host,
            None,
            v4(UNLISTED_V4, 5672),
            false,
        ),
        tcp(
            "guest -> unlisted host (IPv6)",
            Host,
            None,
            v6(UNLISTED_V6, 5672),
            false,
        ),
        tcp(
            "guest -> rabbitmq address, other port",
            Host,
            None,
            v4(RABBITMQ_V4, 4000),
            false,
        ),
        udp(
            "guest -> rabbitmq port over udp",
            Host,
            v4(RABBITMQ_V4, 5672),
            false,
        ),
        // Management NIC, inbound: SSH and scrapes from the named sources only.
        tcp(
            "operator -> guest ssh",
            MgmtNet,
            Some(OPERATOR),
            v4(GUEST_V4, 22),
            true,
        ),
        tcp(
            "unlisted -> guest ssh",
            MgmtNet,
            Some(UNLISTED_V4),
            v4(GUEST_V4, 22),
            false,
        ),
        tcp(
            "unlisted -> guest ssh (IPv6)",
            MgmtNet,
            Some(UNLISTED_V6),
            v6(GUEST_V6, 22),
            false,
        ),
        tcp(
            "operator -> guest other port",
            MgmtNet,
            Some(OPERATOR),
            v4(GUEST_V4, 8000),
            false,
        ),
        tcp(
            "scraper -> guest metrics port",
            MgmtNet,
            Some(OPERATOR),
            v4(GUEST_V4, metrics_port),
            true,
        ),
        tcp(
            "unlisted -> guest metrics port",
            MgmtNet,
            Some(UNLISTED_V4),
            v4(GUEST_V4, metrics_port),
            false,
        ),
        // Business NIC, inbound: database clients to the database port only.
        tcp(
            "client -> database",
            BizNet,
            Some(CLIENT_V4),
            v4(GUEST_V4, 3306),
            true,
        ),
        tcp(
            "client -> database (IPv6)",
            BizNet,
            Some(CLIENT_V6),
            v6(GUEST_V6, 3306),
            true,
        ),
        tcp(
            "client -> container ssh",
            BizNet,
            Some(CLIENT_V4),
            v4(GUEST_V4, 22),
            false,
        ),
        // Business NIC, outbound: replication peers on the database port only.
        tcp(
            "database -> replication peer",
            Container,
            None,
            v4(PEER, 3306),
            true,
        ),
        tcp(
            "database -> client (not a peer)",
            Container,
            None,
            v4(CLIENT_V4, 3306),
            false,
        ),
        // The address:port the management NIC may reach stays out of the database's reach.
        tcp(
            "database -> rabbitmq address:port",
            Container,
            None,
            v4(RABBITMQ_V4, 5672),
            false,
        ),
        tcp(
            "database -> rabbitmq address:port (IPv6)",
            Container,
            None,
            v6(RABBITMQ_V6, 5671),
            false,
        ),
    ]
}

/// Listeners on every address the probes use.
pub fn servers(guest: &Guest, metrics_port: u16) -> Vec<Server> {
    use addr::*;
    let sa = |s: String| -> SocketAddr { s.parse().expect("server address") };
    let mut s = Vec::new();
    for to in [
        v4(RABBITMQ_V4, 5672),
        v6(RABBITMQ_V6, 5671),
        v4(REGISTRY, 4000),
        v4(EXTRA, 8080),
        v4(UNLISTED_V4, 5672),
        v6(UNLISTED_V6, 5672),
        v4(RABBITMQ_V4, 4000),
    ] {
        s.push(tcp_server(&guest.mgmt_net, sa(to)));
    }
    s.push(udp_server(&guest.mgmt_net, sa(v4(RABBITMQ_V4, 5672))));
    s.push(udp_server(&guest.mgmt_net, sa(v4(EXTRA, 5353))));
    // [::] listeners are dual-stack: they take IPv4 too.
    for port in [22, 8000, metrics_port] {
        s.push(tcp_server(&guest.host, sa(v6("::", port))));
    }
    for port in [3306, 22] {
        s.push(tcp_server(&guest.container, sa(v6("::", port))));
    }
    for to in [
        v4(PEER, 3306),
        v4(CLIENT_V4, 3306),
        v4(RABBITMQ_V4, 5672),
        v6(RABBITMQ_V6, 5671),
    ] {
        s.push(tcp_server(&guest.biz_net, sa(to)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without enforcement every probe passes (so under enforcement a blocked one is a drop), and
    /// dropping the guest removes its namespaces.
    #[test]
    fn every_probe_passes_without_enforcement_and_cleanup_is_complete() {
        let guest = Guest::new("tb");
        let names: Vec<String> = [
            &guest.host,
            &guest.container,
            &guest.mgmt_net,
            &guest.biz_net,
        ]
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
        let _servers = servers(&guest, 29_999);
        let failed: Vec<&str> = probes(29_999)
            .iter()
            .filter(|p| !p.run(&guest, Duration::from_secs(2)))
            .map(|p| p.name)
            .collect();
        assert!(
            failed.is_empty(),
            "blocked without any program attached: {failed:?}"
        );
        drop(_servers);
        drop(guest);
        let out = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let list = String::from_utf8_lossy(&out.stdout);
        for name in names {
            assert!(!list.contains(&name), "{name} left behind");
        }
    }
}
