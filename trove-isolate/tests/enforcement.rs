//! The policy on real traffic: a simulated Trove guest in network namespaces (the same CIDR and
//! the same address on both NICs, the business NIC in its own "container" namespace), the real
//! daemon in the host namespace reaching each NIC through its `netns`, and TCP/UDP probes in both
//! directions, IPv4 and IPv6. Each test builds and removes its own namespaces and pins.

mod common;

use std::net::SocketAddr;

use common::{cli, metric, metrics_port, unique, write_config, Daemon, PROBE};
use trove_isolate_testbed::{tcp_probe, tcp_server, udp_probe, udp_server, Guest, NetNs, Server};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> Option<std::net::IpAddr> {
    Some(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
}

/// The guest's config: the issue's example, pointed at the testbed's NICs.
fn config(guest: &Guest, mode: &str, attach: &str, pin_path: &str, metrics: u16) -> String {
    let mac = guest
        .biz_mac()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    format!(
        r#"
mode = "{mode}"
attach = "{attach}"
pin_path = "{pin_path}"

[metrics]
listen = "127.0.0.1:{metrics}"
allow_from = ["203.0.113.0/24"]

[management]
interface = "{mgmt}"
netns = "{host}"
rabbitmq = ["192.0.2.10:5672", "[2001:db8:1::10]:5671"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24"]
allow = [
  {{ to = "192.0.2.30/32", port = 8080, proto = "tcp" }},
  {{ to = "192.0.2.30/32", port = 5353, proto = "udp" }},
]

[business]
mac = "{mac}"
netns = "{container}"
database_ports = [3306]
clients = []
peers = ["198.51.100.7/32"]
"#,
        mgmt = guest.mgmt_nic(),
        host = guest.host.path().display(),
        container = guest.container.path().display(),
    )
}

/// Listeners on every address the probes use, so a failed probe means a drop, not a refusal.
fn servers(guest: &Guest, metrics: u16) -> Vec<Server> {
    let mut s = Vec::new();
    for addr in [
        "192.0.2.10:5672",
        "[2001:db8:1::10]:5671",
        "192.0.2.20:4000",
        "192.0.2.30:8080",
        "192.0.2.99:5672",
        "192.0.2.10:4000",
        "[2001:db8:1::99]:5672",
    ] {
        s.push(tcp_server(&guest.mgmt_net, sa(addr)));
    }
    s.push(udp_server(&guest.mgmt_net, sa("192.0.2.10:5672")));
    s.push(udp_server(&guest.mgmt_net, sa("192.0.2.30:5353")));
    for addr in ["0.0.0.0:22", "[::]:22", "0.0.0.0:8000"] {
        s.push(tcp_server(&guest.host, sa(addr)));
    }
    s.push(tcp_server(
        &guest.host,
        SocketAddr::from(([0, 0, 0, 0], metrics)),
    ));
    for addr in ["0.0.0.0:3306", "[::]:3306", "0.0.0.0:22"] {
        s.push(tcp_server(&guest.container, sa(addr)));
    }
    // The tenant side: a replication peer, a client that also listens, and a decoy holding the
    // RabbitMQ address and port.
    for addr in ["198.51.100.7:3306", "192.0.2.50:3306", "192.0.2.10:5672"] {
        s.push(tcp_server(&guest.biz_net, sa(addr)));
    }
    s
}

struct Probe {
    name: &'static str,
    ns: fn(&Guest) -> &NetNs,
    udp: bool,
    from: Option<&'static str>,
    to: &'static str,
    allowed: bool,
}

const fn tcp(
    name: &'static str,
    ns: fn(&Guest) -> &NetNs,
    from: Option<&'static str>,
    to: &'static str,
    allowed: bool,
) -> Probe {
    Probe {
        name,
        ns,
        udp: false,
        from,
        to,
        allowed,
    }
}

fn host(g: &Guest) -> &NetNs {
    &g.host
}
fn container(g: &Guest) -> &NetNs {
    &g.container
}
fn mgmt_net(g: &Guest) -> &NetNs {
    &g.mgmt_net
}
fn biz_net(g: &Guest) -> &NetNs {
    &g.biz_net
}

/// Every rule of the issue, both ways. `allowed` is the verdict under enforcement.
fn probes(metrics: u16) -> Vec<Probe> {
    let metrics_v4: &'static str = Box::leak(format!("192.0.2.1:{metrics}").into_boxed_str());
    vec![
        // Management NIC, outbound: only the configured endpoints.
        tcp("guest → rabbitmq v4", host, None, "192.0.2.10:5672", true),
        tcp(
            "guest → rabbitmq v6",
            host,
            None,
            "[2001:db8:1::10]:5671",
            true,
        ),
        tcp("guest → registry", host, None, "192.0.2.20:4000", true),
        tcp(
            "guest → extra allow tcp",
            host,
            None,
            "192.0.2.30:8080",
            true,
        ),
        Probe {
            name: "guest → extra allow udp",
            ns: host,
            udp: true,
            from: None,
            to: "192.0.2.30:5353",
            allowed: true,
        },
        tcp(
            "guest → unlisted host",
            host,
            None,
            "192.0.2.99:5672",
            false,
        ),
        tcp(
            "guest → rabbitmq address, wrong port",
            host,
            None,
            "192.0.2.10:4000",
            false,
        ),
        tcp(
            "guest → unlisted host v6",
            host,
            None,
            "[2001:db8:1::99]:5672",
            false,
        ),
        Probe {
            name: "guest → rabbitmq port over udp",
            ns: host,
            udp: true,
            from: None,
            to: "192.0.2.10:5672",
            allowed: false,
        },
        // Management NIC, inbound: SSH and metrics scrapes from the named sources only.
        tcp(
            "operator → guest ssh",
            mgmt_net,
            Some("203.0.113.5"),
            "192.0.2.1:22",
            true,
        ),
        tcp(
            "unlisted → guest ssh",
            mgmt_net,
            Some("192.0.2.99"),
            "192.0.2.1:22",
            false,
        ),
        tcp(
            "unlisted v6 → guest ssh",
            mgmt_net,
            Some("2001:db8:1::99"),
            "[2001:db8:1::1]:22",
            false,
        ),
        tcp(
            "operator → guest other port",
            mgmt_net,
            Some("203.0.113.5"),
            "192.0.2.1:8000",
            false,
        ),
        tcp(
            "scraper → guest metrics port",
            mgmt_net,
            Some("203.0.113.5"),
            metrics_v4,
            true,
        ),
        tcp(
            "unlisted → guest metrics port",
            mgmt_net,
            Some("192.0.2.99"),
            metrics_v4,
            false,
        ),
        // Business NIC, inbound: database clients to the database port only.
        tcp(
            "client → database v4",
            biz_net,
            Some("192.0.2.50"),
            "192.0.2.1:3306",
            true,
        ),
        tcp(
            "client → database v6",
            biz_net,
            Some("2001:db8:1::50"),
            "[2001:db8:1::1]:3306",
            true,
        ),
        tcp(
            "client → container ssh",
            biz_net,
            Some("192.0.2.50"),
            "192.0.2.1:22",
            false,
        ),
        // Business NIC, outbound: replication peers on the database port only.
        tcp(
            "database → replication peer",
            container,
            None,
            "198.51.100.7:3306",
            true,
        ),
        tcp(
            "database → client (not a peer)",
            container,
            None,
            "192.0.2.50:3306",
            false,
        ),
        // The same address:port the management NIC may reach is not reachable from the database.
        tcp(
            "database → rabbitmq address:port",
            container,
            None,
            "192.0.2.10:5672",
            false,
        ),
    ]
}

fn run_probe(guest: &Guest, p: &Probe) -> bool {
    let ns = (p.ns)(guest);
    let from = p.from.and_then(ip);
    if p.udp {
        udp_probe(ns, from, sa(p.to), PROBE)
    } else {
        tcp_probe(ns, from, sa(p.to), PROBE)
    }
}

/// Asserts every probe gets `expect(probe)`; reports all mismatches at once.
fn assert_probes(guest: &Guest, probes: &[Probe], when: &str, expect: impl Fn(&Probe) -> bool) {
    let wrong: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            let got = run_probe(guest, p);
            (got != expect(p)).then(|| {
                format!(
                    "  {}: {} (expected {})",
                    p.name,
                    verdict(got),
                    verdict(expect(p))
                )
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{when}:\n{}", wrong.join("\n"));
}

fn verdict(passed: bool) -> &'static str {
    if passed {
        "passed"
    } else {
        "blocked"
    }
}

struct Setup {
    guest: Guest,
    _servers: Vec<Server>,
    metrics: u16,
    pin_path: String,
}

fn setup(label: &str) -> Setup {
    let guest = Guest::new(label);
    let metrics = metrics_port();
    let servers = servers(&guest, metrics);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    Setup {
        guest,
        _servers: servers,
        metrics,
        pin_path,
    }
}

fn start(s: &Setup, mode: &str, attach: &str) -> Daemon {
    let config = write_config(&config(&s.guest, mode, attach, &s.pin_path, s.metrics));
    Daemon::start(
        &config,
        s.pin_path.as_ref(),
        SocketAddr::from(([127, 0, 0, 1], s.metrics)),
    )
}

fn policy_holds(attach: &str) {
    let s = setup(&attach[..3]);
    let probes = probes(s.metrics);
    assert_probes(
        &s.guest,
        &probes,
        "without enforcement everything passes",
        |_| true,
    );

    let daemon = start(&s, "enforce", attach);
    assert_probes(&s.guest, &probes, &format!("enforcing ({attach})"), |p| {
        p.allowed
    });

    let text = daemon.scrape();
    for role in ["management", "business"] {
        for direction in ["ingress", "egress"] {
            let labels = [
                &format!("role=\"{role}\"")[..],
                &format!("direction=\"{direction}\"")[..],
            ];
            assert_eq!(
                metric(&text, "trove_isolate_attached", &labels),
                Some(1),
                "{role} {direction} not attached:\n{text}"
            );
        }
    }
    let dropped = metric(
        &text,
        "trove_isolate_drops_total",
        &[
            "role=\"management\"",
            "direction=\"egress\"",
            "reason=\"policy\"",
        ],
    );
    assert!(
        dropped.unwrap_or(0) >= 3,
        "egress policy drops not counted:\n{text}"
    );
    assert!(
        metric(
            &text,
            "trove_isolate_packets_total",
            &[
                "role=\"business\"",
                "direction=\"ingress\"",
                "verdict=\"pass\""
            ]
        )
        .unwrap_or(0)
            > 0,
        "business passes not counted:\n{text}"
    );
    assert!(
        metric(
            &text,
            "trove_isolate_policy_entries",
            &["role=\"business\""]
        )
        .unwrap_or(0)
            > 0
    );
    assert!(text.contains("trove_isolate_build_info{version="), "{text}");
}

#[test]
fn policy_holds_on_tcx() {
    policy_holds("tcx");
}

#[test]
fn policy_holds_on_legacy_clsact() {
    policy_holds("legacy");
}

/// Enforcement belongs to the kernel, not the process: it survives kill -9 and SIGTERM, a restart
/// adopts it, and only `detach` opens the guest again.
#[test]
fn enforcement_outlives_the_daemon_until_detach() {
    let s = setup("life");
    let probes = probes(s.metrics);
    let mut daemon = start(&s, "enforce", "auto");
    daemon.kill9();
    assert_probes(&s.guest, &probes, "after kill -9", |p| p.allowed);

    let status = cli(&["status", "--pin-path", &s.pin_path]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status failed: {status:?}");
    for want in ["management", "business", s.guest.mgmt_nic(), "enforce"] {
        assert!(text.contains(want), "status lacks {want}:\n{text}");
    }

    // Restart adopts the pinned state; then an orderly stop keeps it.
    let mut daemon = start(&s, "enforce", "auto");
    assert_probes(&s.guest, &probes, "after restart", |p| p.allowed);
    daemon.stop();
    assert_probes(&s.guest, &probes, "after SIGTERM", |p| p.allowed);

    let detach = cli(&["detach", "--pin-path", &s.pin_path]);
    assert!(detach.status.success(), "detach failed: {detach:?}");
    assert_probes(&s.guest, &probes, "after detach", |_| true);
    assert!(
        !std::path::Path::new(&s.pin_path).exists(),
        "pins left under {}",
        s.pin_path
    );
}

/// A bad config, or a config naming a NIC that is not there, is refused with the key named, and
/// the policy already in force stays.
#[test]
fn bad_config_is_refused_and_the_old_policy_stays() {
    let s = setup("bad");
    let probes = probes(s.metrics);
    let mut daemon = start(&s, "enforce", "auto");
    daemon.stop();

    let good = config(&s.guest, "enforce", "auto", &s.pin_path, s.metrics);
    let cases = [
        (
            "empty database_ports",
            good.replace("database_ports = [3306]", "database_ports = []"),
            "database_ports",
        ),
        (
            "bad CIDR",
            good.replace("198.51.100.7/32", "198.51.100.300/32"),
            "peers",
        ),
        (
            "unknown key",
            good.replace("clients = []", "client = []"),
            "client",
        ),
        (
            "missing interface",
            good.replace(
                &format!("interface = \"{}\"", s.guest.mgmt_nic()),
                "interface = \"nosuch0\"",
            ),
            "nosuch0",
        ),
    ];
    for (name, text, key) in cases {
        let path = write_config(&text);
        let run = cli(&["run", "--config", path.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{name}: run accepted a bad config");
        assert!(
            stderr.contains(key),
            "{name}: error does not name {key}:\n{stderr}"
        );
        if name != "missing interface" {
            let check = cli(&["check", "--config", path.to_str().expect("utf-8 path")]);
            assert!(
                !check.status.success(),
                "{name}: check accepted a bad config"
            );
        }
        let _ = std::fs::remove_file(&path);
        assert_probes(&s.guest, &probes, &format!("after refusing {name}"), |p| {
            p.allowed
        });
    }
}

/// Audit mode decides the same, drops nothing, and counts what it would have dropped.
#[test]
fn audit_mode_counts_but_passes() {
    let s = setup("aud");
    let probes = probes(s.metrics);
    let daemon = start(&s, "audit", "auto");
    assert_probes(&s.guest, &probes, "audit mode", |_| true);
    let text = daemon.scrape();
    let audited = metric(
        &text,
        "trove_isolate_audit_total",
        &[
            "role=\"management\"",
            "direction=\"egress\"",
            "reason=\"policy\"",
        ],
    );
    assert!(audited.unwrap_or(0) >= 3, "audit records missing:\n{text}");
    assert_eq!(
        metric(&text, "trove_isolate_drops_total", &["reason=\"policy\""]),
        None,
        "audit mode dropped:\n{text}"
    );
}
