//! The compiler's tests: every refusal names its key; every section compiles to the rules it
//! should.

use super::*;

const PATH: &str = "config.toml";

const EXAMPLE: &str = r#"
mode = "enforce"
attach = "auto"
pin_path = "/sys/fs/bpf/trove-isolate"
[metrics]
listen = "127.0.0.1:9477"
allow_from = []
[management]
interface = "ens3"
rabbitmq = ["192.0.2.10:5672", "[2001:db8:1::10]:5671"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24"]
allow = [ { to = "192.0.2.30/32", port = 8080, proto = "tcp" } ]
dhcp = true
ssh_port = 22
[business]
interface = "ens4"
database_ports = [3306]
clients = []
peers = ["198.51.100.7/32"]
"#;

/// Compiles with no resolver: a test never sends a DNS query anywhere.
fn compile(text: &str) -> Result<Policy, ConfigError> {
    let path = Path::new(PATH);
    Policy::from_config_with(&Config::parse(text, path)?, path, &crate::resolve::NoNames)
}

fn ok(text: &str) -> Policy {
    compile(text).unwrap_or_else(|e| panic!("config refused: {e}\n{text}"))
}

/// The error for `text`, checked to name the file and `key`.
fn refused(text: &str, key: &str) -> String {
    let err = match compile(text) {
        Ok(p) => panic!("config accepted, wanted an error about {key}:\n{text}\n{p}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.starts_with("config.toml: "), "file not named: {msg}");
    assert!(msg.contains(key), "key {key} not named: {msg}");
    // One line, whatever the value holds (TOML's own syntax errors quote the text around).
    if !matches!(err, ConfigError::Syntax { .. }) {
        assert!(!msg.contains('\n'), "an error over several lines: {msg}");
    }
    msg
}

fn business(extra: &str) -> String {
    format!("[business]\ninterface = \"ens4\"\ndatabase_ports = [3306]\n{extra}\n")
}

fn management(extra: &str) -> String {
    format!("[management]\ninterface = \"ens3\"\ndhcp = false\n{extra}\n")
}

fn find<'a>(p: &'a Policy, role: Role, origin: &str) -> &'a Rule {
    let nic = p
        .nic(role)
        .unwrap_or_else(|| panic!("no {} NIC", role.name()));
    nic.rules
        .iter()
        .find(|r| r.origin() == origin)
        .unwrap_or_else(|| panic!("no rule {origin:?} in {:#?}", nic.rules))
}

fn summary(p: &Policy) -> Vec<(Role, Direction, u8, u16, String)> {
    p.nics
        .iter()
        .flat_map(|n| {
            n.rules
                .iter()
                .map(move |r| (n.role, r.direction, r.proto, r.port, r.remote.to_string()))
        })
        .collect()
}

#[test]
fn example_compiles_to_the_expected_rules() {
    use Direction::{Egress as E, Ingress as I};
    use Role::{Business as B, Management as M};
    let p = ok(EXAMPLE);
    let s = |x: &str| x.to_owned();
    let want = vec![
        (M, E, proto::TCP, 5672, s("192.0.2.10/32")),
        (M, E, proto::TCP, 5671, s("2001:db8:1::10/128")),
        (M, E, proto::TCP, 4000, s("192.0.2.20/32")),
        (M, E, proto::TCP, 8080, s("192.0.2.30/32")),
        (M, I, proto::TCP, 22, s("203.0.113.0/24")),
        (B, I, proto::TCP, 3306, s("0.0.0.0/0")),
        (B, I, proto::TCP, 3306, s("::/0")),
        (B, E, proto::TCP, 3306, s("198.51.100.7/32")),
    ];
    assert_eq!(summary(&p), want);

    let entries = p.entries();
    let ids: Vec<u32> = entries.iter().map(|(_, v)| v.rule_id).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<u32>>(), "ids not 1.. in order");
    assert_eq!(p.nics[0].role, Role::Management, "management not first");
    assert_eq!(
        p.nic(Role::Business).map(|n| n.nic.to_string()).as_deref(),
        Some("ens4")
    );
}

#[test]
fn keys_have_the_map_layout() {
    let p = ok(EXAMPLE);

    let rabbit4 = find(&p, Role::Management, "rabbitmq 192.0.2.10:5672");
    let k = rabbit4.key(Role::Management);
    let d = k;
    assert_eq!(k.prefix, 32);
    assert_eq!(d.role, Role::Management as u8);
    assert_eq!(d.direction, Direction::Egress as u8);
    assert_eq!((d.proto, d.family), (proto::TCP, family::V4));
    assert_eq!(d.port, [0x16, 0x28], "5672 in network byte order");
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[192, 0, 2, 10]);
    assert_eq!(d.addr, addr);
    assert_eq!(
        rabbit4.value(),
        PolicyValue {
            rule_id: rabbit4.id
        }
    );

    let rabbit6 = find(&p, Role::Management, "rabbitmq [2001:db8:1::10]:5671");
    let k = rabbit6.key(Role::Management);
    let d = k;
    assert_eq!(k.prefix, 128);
    assert_eq!(d.family, family::V6);
    assert_eq!(d.port, 5671u16.to_be_bytes());
    assert_eq!(
        d.addr,
        [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]
    );

    let ssh = find(&p, Role::Management, "ssh_from 203.0.113.0/24");
    let k = ssh.key(Role::Management);
    let d = k;
    assert_eq!(k.prefix, 24);
    assert_eq!(d.direction, Direction::Ingress as u8);
    assert_eq!(d.port, [0, 22]);
    assert_eq!(d.addr[..4], [203, 0, 113, 0]);

    let any = find(&p, Role::Business, "clients (any)");
    let k = any.key(Role::Business);
    let d = k;
    assert_eq!(k.prefix, 0);
    assert_eq!(d.role, Role::Business as u8);
    assert_eq!(d.direction, Direction::Ingress as u8);
    assert_eq!(d.port, 3306u16.to_be_bytes());
    assert_eq!(d.addr, [0u8; 16]);
}

#[test]
fn defaults() {
    let p = ok(&format!(
        "[management]\ninterface = \"ens3\"\n{}",
        business("")
    ));
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.attach, AttachMode::Auto);
    assert_eq!(p.pin_path, Path::new(DEFAULT_PIN_PATH));
    assert_eq!(
        p.metrics.listen,
        "127.0.0.1:9477".parse::<SocketAddr>().expect("addr")
    );
    assert!(p.metrics.allow_from.is_empty());
    let mgmt = p.nic(Role::Management).expect("management NIC");
    assert!(mgmt.dhcp, "dhcp not on by default");
    assert!(mgmt.rules.is_empty(), "{:#?}", mgmt.rules);
    assert!(mgmt.nic.netns.is_none());
    assert!(!p.nic(Role::Business).expect("business NIC").dhcp);
}

#[test]
fn mode_attach_and_ssh_port_are_read() {
    let p = ok(&format!(
        "mode = \"audit\"\nattach = \"legacy\"\n{}",
        management("ssh_port = 2222\nssh_from = [\"203.0.113.5/32\"]")
    ));
    assert_eq!((p.mode, p.attach), (Mode::Audit, AttachMode::Legacy));
    assert_eq!(
        find(&p, Role::Management, "ssh_from 203.0.113.5/32").port,
        2222
    );
    assert!(p.nic(Role::Business).is_none());
    refused(&format!("mode = \"block\"\n{}", business("")), "mode");
    refused(&format!("attach = \"xdp\"\n{}", business("")), "attach");
    refused(
        &format!("pin_path = \"bpf/x\"\n{}", business("")),
        "pin_path",
    );
}

#[test]
fn metrics_allow_from_opens_the_metrics_port_on_management() {
    let p = ok(&format!(
        "[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_from = [\"192.0.2.0/28\"]\n{}",
        management("")
    ));
    let r = find(&p, Role::Management, "metrics allow_from 192.0.2.0/28");
    assert_eq!(
        (r.direction, r.proto, r.port),
        (Direction::Ingress, proto::TCP, 9100)
    );
    refused(
        &format!("[metrics]\nlisten = \"localhost\"\n{}", management("")),
        "[metrics] listen",
    );
}

#[test]
fn metrics_allow_from_needs_a_reachable_listen_and_a_management_nic() {
    for listen in [
        None,
        Some("127.1.2.3:9100"),
        Some("[::1]:9100"),
        Some("[::ffff:127.0.0.1]:9100"),
    ] {
        let listen = listen.map_or(String::new(), |l| format!("listen = \"{l}\"\n"));
        let msg = refused(
            &format!(
                "[metrics]\n{listen}allow_from = [\"192.0.2.0/28\"]\n{}",
                management("")
            ),
            "[metrics] allow_from",
        );
        assert!(msg.contains("[metrics] listen"), "{msg}");
        assert!(msg.contains("loopback"), "{msg}");
    }
    // Loopback without scrapers is the default; any non-loopback address may take them.
    ok(&format!(
        "[metrics]\nlisten = \"[::1]:9100\"\n{}",
        management("")
    ));
    ok(&format!(
        "[metrics]\nlisten = \"[::]:9100\"\nallow_from = [\"2001:db8::/64\"]\n{}",
        management("")
    ));
    ok(&format!(
        "[metrics]\nlisten = \"192.0.2.5:9100\"\nallow_from = [\"192.0.2.0/28\"]\n{}",
        management("")
    ));
    let msg = refused(
        &format!(
            "[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_from = [\"192.0.2.0/28\"]\n{}",
            business("")
        ),
        "[metrics] allow_from",
    );
    assert!(msg.contains("no [management] section"), "{msg}");
}

#[test]
fn port_zero_is_refused_for_every_port_key() {
    for allow_from in ["", "allow_from = [\"192.0.2.0/28\"]\n"] {
        for listen in ["127.0.0.1:0", "0.0.0.0:0", "[::]:0"] {
            let msg = refused(
                &format!(
                    "[metrics]\nlisten = \"{listen}\"\n{allow_from}{}",
                    management("")
                ),
                "[metrics] listen",
            );
            assert!(
                msg.contains("port 0 means any free port; name the port scrapers use"),
                "{msg}"
            );
        }
    }
    let cases = [
        (
            management("rabbitmq = [\"192.0.2.10:0\"]"),
            "[management] rabbitmq[0]",
        ),
        (
            management("registry = [\"[2001:db8::20]:0\"]"),
            "[management] registry[0]",
        ),
        (
            management("allow = [ { to = \"192.0.2.30/32\", port = 0, proto = \"tcp\" } ]"),
            "[management] allow[0].port",
        ),
        (
            management("allow = [ { to = \"192.0.2.30/32\", port = 0, proto = \"udp\" } ]"),
            "[management] allow[0].port",
        ),
        (management("ssh_port = 0"), "[management] ssh_port"),
        (
            "[business]\ninterface = \"ens4\"\ndatabase_ports = [3306, 0]\n".to_owned(),
            "[business] database_ports[1]",
        ),
    ];
    for (text, key) in cases {
        let msg = refused(&text, key);
        assert!(msg.contains("1..=65535"), "{msg}");
    }
}

/// `n` distinct IPv4 /32s, as a TOML array.
fn hosts(n: u32) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| format!("\"{}\"", Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    format!("[{}]", list.join(", "))
}

#[test]
fn a_big_policy_compiles_and_an_oversized_one_is_refused_with_its_counts() {
    let config = |ssh_from: u32| {
        format!(
            "{}{}",
            management(&format!("ssh_from = {}", hosts(ssh_from))),
            business("clients = [\"198.51.100.0/24\"]")
        )
    };
    // 100,000 entries: far beyond the old fixed map, well within a policy.
    let p = ok(&config(99_999));
    assert_eq!(p.entries().len(), 100_000);
    assert!(MAX_ENTRIES as usize > 1_000_000);

    // The limit's check, at a limit a test can reach.
    let top = Ctx {
        path: Path::new("config.toml"),
        section: "",
    };
    assert!(compile::fits_within(&top, &p.nics, 100_000).is_ok());
    let msg = compile::fits_within(&top, &p.nics, 99_999)
        .expect_err("one entry over")
        .to_string();
    for want in [
        "[management]/[business]",
        "compiles to 100000 entries",
        "management 99999, business 1",
        "more than a policy may hold (99999)",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
}

#[test]
fn warnings_name_what_is_open_to_any_address() {
    assert_eq!(
        ok(EXAMPLE).warnings(),
        [
            "[business] clients is empty: the database ports accept connections from ANY \
          address (0.0.0.0/0 and ::/0); list client CIDRs to narrow it"
        ]
    );
    let narrow = ok(&format!(
        "{}{}",
        management("ssh_from = [\"203.0.113.0/24\"]"),
        business("clients = [\"198.51.100.0/24\"]\npeers = [\"2001:db8::/32\"]")
    ));
    assert!(narrow.warnings().is_empty(), "{:?}", narrow.warnings());
    // Closed is not open: no ssh_from, no scrapers, no business NIC.
    assert!(ok(&management("")).warnings().is_empty());

    let p = ok(&format!(
        "[metrics]\nlisten = \"[::]:9100\"\nallow_from = [\"::/0\"]\n{}{}",
        management(
            "ssh_from = [\"0.0.0.0/0\", \"::ffff:0:0/96\", \"2001:db8::/32\"]\n\
             allow = [\n\
             { to = \"::/0\", port = 53, proto = \"udp\" },\n\
             { to = \"0.0.0.0/0\", proto = \"icmp\" },\n\
             ]"
        ),
        "[business]\ninterface = \"ens4\"\ndatabase_ports = [3306]\n\
         clients = [\"0.0.0.0/0\"]\npeers = [\"::/0\"]\n"
    ));
    assert_eq!(
        p.warnings(),
        [
            "management NIC, allow udp ::/0 port 53: the guest may reach ANY IPv6 address \
             (::/0) on udp port 53; narrow it to the destinations needed",
            "management NIC, allow icmp 0.0.0.0/0: the guest may reach ANY IPv4 address \
             (0.0.0.0/0) with icmp; narrow it to the destinations needed",
            "management NIC, ssh_from 0.0.0.0/0: tcp port 22 is open to ANY IPv4 address \
             (0.0.0.0/0); narrow it to the sources needed",
            "management NIC, metrics allow_from ::/0: tcp port 9100 is open to ANY IPv6 \
             address (::/0); narrow it to the sources needed",
            "business NIC, clients 0.0.0.0/0: tcp port 3306 is open to ANY IPv4 address \
             (0.0.0.0/0); narrow it to the sources needed",
            "business NIC, peers ::/0: the guest may reach ANY IPv6 address (::/0) on tcp \
             port 3306; narrow it to the destinations needed",
        ]
    );
}

#[test]
fn interface_and_mac_are_exclusive() {
    let msg = refused(
        "[management]\ninterface = \"ens3\"\nmac = \"fa:16:3e:00:00:01\"\n",
        "[management] interface/mac",
    );
    assert!(msg.contains("not both"), "{msg}");
    let msg = refused(
        "[business]\ndatabase_ports = [3306]\n",
        "[business] interface/mac",
    );
    assert!(msg.contains("required"), "{msg}");
}

#[test]
fn mac_selects_the_nic() {
    let p = ok("[business]\nmac = \"FA:16:3e:00:00:0a\"\nnetns = \"/run/netns/db\"\ndatabase_ports = [3306]\n");
    let nic = &p.nic(Role::Business).expect("business NIC").nic;
    assert_eq!(
        nic.selector,
        NicSelector::Mac([0xfa, 0x16, 0x3e, 0, 0, 0x0a])
    );
    assert_eq!(nic.to_string(), "fa:16:3e:00:00:0a in /run/netns/db");
}

#[test]
fn bad_mac_and_netns_are_refused() {
    for mac in [
        "fa:16:3e:00:00",
        "fa:16:3e:00:00:01:02",
        "fa-16-3e-00-00-01",
        "zz:16:3e:00:00:01",
    ] {
        let msg = refused(
            &format!("[management]\nmac = \"{mac}\"\n"),
            "[management] mac",
        );
        assert!(msg.contains(mac), "{msg}");
    }
    refused(
        "[management]\ninterface = \"ens3\"\nnetns = \"run/netns/x\"\n",
        "[management] netns",
    );
}

/// Found by `cargo xtask fuzz`: a value quoted in an error is escaped, so that a relative path
/// written over two lines gives one line of error.
#[test]
fn a_relative_pin_path_is_refused_on_one_line() {
    let msg = refused("pin_path = \"\"\"bpf\ntrove\"\"\"\n", "pin_path");
    assert!(
        msg.contains(r#""bpf\ntrove" must be an absolute path"#),
        "{msg}"
    );
}

#[test]
fn a_host_name_that_does_not_resolve_fails_closed_with_a_warning() {
    // Another broker is reachable: going ahead with it, with a warning.
    let p = ok(&management(
        "rabbitmq = [\"192.0.2.10:5672\", \"rabbit.example:5672\"]",
    ));
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("rabbit.example does not resolve")),
        "{:?}",
        p.warnings()
    );
    // No registry resolves (at boot, before DHCP gave the guest a resolver): no rule reaches
    // one until it does, and everything else is enforced.
    let p = ok(&management("registry = [\"registry.example:4000\"]"));
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("registry.example does not resolve")
                && w.contains("nothing reaches it until it does")),
        "{:?}",
        p.warnings()
    );
    let mgmt = p.nic(Role::Management).expect("management");
    assert!(
        mgmt.rules.iter().all(|r| r.port != 4000),
        "{:?}",
        mgmt.rules
    );
    assert!(p
        .refresh_in()
        .is_some_and(|d| d <= crate::resolve::UNRESOLVED_RETRY));
    let msg = refused(
        &management("registry = [\"registry\"]"),
        "[management] registry[0]",
    );
    assert!(msg.contains("has no port"), "{msg}");
}

#[test]
fn endpoint_without_port_is_refused() {
    let err = compile(&management(
        "rabbitmq = [\"192.0.2.11:5672\", \"192.0.2.10\"]",
    ))
    .expect_err("endpoint without port accepted");
    assert_eq!(
        err.to_string(),
        "config.toml: [management] rabbitmq[1]: \"192.0.2.10\" has no port \
         (expected IP:port, [IPv6]:port or name:port)"
    );
    refused(&management("rabbitmq = [\"2001:db8::10\"]"), "rabbitmq[0]");
    refused(
        &management("rabbitmq = [\"[2001:db8::10]\"]"),
        "rabbitmq[0]",
    );
    let msg = refused(&management("registry = [\"192.0.2.20:0\"]"), "registry[0]");
    assert!(msg.contains("1..=65535"), "{msg}");
    refused(
        &management("registry = [\"192.0.2.20:70000\"]"),
        "registry[0]",
    );
}

#[test]
fn bad_cidr_is_refused() {
    let msg = refused(
        &business("peers = [\"198.51.100.300/32\"]"),
        "[business] peers[0]",
    );
    assert!(msg.contains("198.51.100.300/32"), "{msg}");
    refused(
        &business("clients = [\"198.51.100.0/33\"]"),
        "[business] clients[0]",
    );
    refused(
        &management("ssh_from = [\"nonsense\"]"),
        "[management] ssh_from[0]",
    );
    refused(
        &format!(
            "[metrics]\nallow_from = [\"2001:db8::/129\"]\n{}",
            business("")
        ),
        "[metrics] allow_from[0]",
    );
}

#[test]
fn host_bits_are_cleared() {
    let p = ok(&business(
        "peers = [\"198.51.100.7/24\"]\nclients = [\"2001:db8::1/32\"]",
    ));
    let remotes: Vec<String> = p.nics[0]
        .rules
        .iter()
        .map(|r| r.remote.to_string())
        .collect();
    assert_eq!(remotes, ["2001:db8::/32", "198.51.100.0/24"]);
}

#[test]
fn ipv4_mapped_addresses_are_matched_as_ipv4() {
    use Direction::{Egress as E, Ingress as I};
    use Role::{Business as B, Management as M};
    let p = ok(&format!(
        "[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_from = [\"::ffff:192.0.2.0/124\"]\n{}{}",
        management(
            "rabbitmq = [\"[::ffff:192.0.2.10]:5672\"]\n\
             registry = [\"[::ffff:c000:214]:4000\"]\n\
             ssh_from = [\"::ffff:203.0.113.9/120\"]\n\
             allow = [\n\
             { to = \"::ffff:192.0.2.40\", proto = \"icmp\" },\n\
             { to = \"::ffff:0:0/96\", port = 53, proto = \"udp\" },\n\
             ]"
        ),
        business("clients = [\"::ffff:198.51.100.0/120\"]\npeers = [\"::ffff:198.51.100.7\"]"),
    ));
    let want = [
        (
            M,
            "rabbitmq [::ffff:192.0.2.10]:5672 (IPv4-mapped, as 192.0.2.10:5672)",
            (E, proto::TCP, 5672, "192.0.2.10/32"),
        ),
        (
            M,
            "registry [::ffff:192.0.2.20]:4000 (IPv4-mapped, as 192.0.2.20:4000)",
            (E, proto::TCP, 4000, "192.0.2.20/32"),
        ),
        (
            M,
            "allow icmp ::ffff:192.0.2.40/128 (IPv4-mapped, as 192.0.2.40/32)",
            (E, proto::ICMP, 0, "192.0.2.40/32"),
        ),
        (
            M,
            "allow udp ::ffff:0.0.0.0/96 (IPv4-mapped, as 0.0.0.0/0) port 53",
            (E, proto::UDP, 53, "0.0.0.0/0"),
        ),
        (
            M,
            "ssh_from ::ffff:203.0.113.0/120 (IPv4-mapped, as 203.0.113.0/24)",
            (I, proto::TCP, 22, "203.0.113.0/24"),
        ),
        (
            M,
            "metrics allow_from ::ffff:192.0.2.0/124 (IPv4-mapped, as 192.0.2.0/28)",
            (I, proto::TCP, 9100, "192.0.2.0/28"),
        ),
        (
            B,
            "clients ::ffff:198.51.100.0/120 (IPv4-mapped, as 198.51.100.0/24)",
            (I, proto::TCP, 3306, "198.51.100.0/24"),
        ),
        (
            B,
            "peers ::ffff:198.51.100.7/128 (IPv4-mapped, as 198.51.100.7/32)",
            (E, proto::TCP, 3306, "198.51.100.7/32"),
        ),
    ];
    for (role, origin, (direction, pr, port, remote)) in want {
        let r = find(&p, role, origin);
        assert_eq!(
            (r.direction, r.proto, r.port, r.remote.to_string().as_str()),
            (direction, pr, port, remote),
            "{origin}"
        );
        assert_eq!(r.key(role).family, family::V4, "{origin}");
    }
    assert_eq!(p.rules().len(), want.len(), "{p}");
    assert_eq!(
        p.metrics.allow_from,
        ["192.0.2.0/28".parse::<IpNetwork>().expect("cidr")]
    );
}

#[test]
fn prefix_covering_the_ipv4_mapped_range_is_refused() {
    let cases = [
        (
            format!("[metrics]\nallow_from = [\"::/64\"]\n{}", management("")),
            "[metrics] allow_from[0]",
        ),
        (
            management("ssh_from = [\"2001:db8::/32\", \"::ffff:0:0/95\"]"),
            "[management] ssh_from[1]",
        ),
        (
            management("allow = [ { to = \"::/8\", port = 53, proto = \"udp\" } ]"),
            "[management] allow[0].to",
        ),
        (business("clients = [\"::/80\"]"), "[business] clients[0]"),
        (business("peers = [\"::/1\"]"), "[business] peers[0]"),
    ];
    for (text, key) in cases {
        let msg = refused(&text, key);
        assert!(msg.contains("IPv4-mapped range"), "{msg}");
    }
    // "Any IPv6 address" covers the range too, but is meant as IPv6; and plain IPv6 stays.
    let p = ok(&business(
        "clients = [\"::/0\", \"::ffff:0:0:0/96\", \"::1\"]",
    ));
    let remotes: Vec<String> = p.nics[0]
        .rules
        .iter()
        .map(|r| r.remote.to_string())
        .collect();
    assert_eq!(remotes, ["::/0", "::ffff:0:0:0/96", "::1/128"]);
}

#[test]
fn unknown_key_is_refused() {
    let msg = refused(&business("client = []"), "client");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn database_ports_must_be_valid_and_present() {
    refused(
        "[business]\ninterface = \"ens4\"\ndatabase_ports = []\n",
        "[business] database_ports",
    );
    refused(
        "[business]\ninterface = \"ens4\"\n",
        "[business] database_ports",
    );
    refused(
        "[business]\ninterface = \"ens4\"\ndatabase_ports = [3306, 65536]\n",
        "[business] database_ports[1]",
    );
    refused(
        "[business]\ninterface = \"ens4\"\ndatabase_ports = [-1]\n",
        "[business] database_ports[0]",
    );
}

#[test]
fn a_section_is_required() {
    refused("mode = \"enforce\"\n", "[management]/[business]");
}

#[test]
fn sections_must_name_different_nics() {
    refused(
        "[management]\ninterface = \"eth0\"\n[business]\ninterface = \"eth0\"\ndatabase_ports = [3306]\n",
        "[business] interface/mac",
    );
    refused(
        "[management]\nmac = \"fa:16:3e:00:00:01\"\n[business]\nmac = \"fa:16:3e:00:00:01\"\nnetns = \"/run/netns/db\"\ndatabase_ports = [3306]\n",
        "[business] interface/mac",
    );
    // The same name in two namespaces is two devices.
    ok("[management]\ninterface = \"eth0\"\n[business]\ninterface = \"eth0\"\nnetns = \"/run/netns/db\"\ndatabase_ports = [3306]\n");
}

#[test]
fn allow_entries() {
    let p = ok(&management(
        "allow = [\n\
         { to = \"192.0.2.40/32\", proto = \"icmp\" },\n\
         { to = \"2001:db8::/48\", proto = \"icmp\" },\n\
         { to = \"198.51.100.0/24\", port = 53, proto = \"udp\" },\n\
         ]",
    ));
    let got: Vec<_> = summary(&p)
        .into_iter()
        .map(|(_, d, pr, po, r)| (d, pr, po, r))
        .collect();
    assert_eq!(
        got,
        [
            (
                Direction::Egress,
                proto::ICMP,
                0,
                "192.0.2.40/32".to_owned()
            ),
            (
                Direction::Egress,
                proto::ICMPV6,
                0,
                "2001:db8::/48".to_owned()
            ),
            (
                Direction::Egress,
                proto::UDP,
                53,
                "198.51.100.0/24".to_owned()
            ),
        ]
    );
    let msg = refused(
        &management("allow = [ { to = \"192.0.2.40/32\", port = 7, proto = \"icmp\" } ]"),
        "[management] allow[0].port",
    );
    assert!(msg.contains("icmp"), "{msg}");
    refused(
        &management("allow = [ { to = \"192.0.2.40/32\", proto = \"tcp\" } ]"),
        "[management] allow[0].port",
    );
    refused(
        &management("allow = [ { to = \"192.0.2.40/32\", port = 1, proto = \"sctp\" } ]"),
        "[management] allow[0].proto",
    );
    refused(
        &management("allow = [ { to = \"192.0.2.400\", port = 1, proto = \"tcp\" } ]"),
        "[management] allow[0].to",
    );
}

#[test]
fn duplicates_keep_the_first_origin() {
    let p = ok(&management(
        "registry = [\"192.0.2.20:4000\"]\n\
         allow = [ { to = \"192.0.2.20/32\", port = 4000, proto = \"tcp\" } ]",
    ));
    let rules = &p.nics[0].rules;
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert_eq!(rules[0].origin(), "registry 192.0.2.20:4000");
    assert_eq!(rules[0].id, 1);
}

#[test]
fn same_cidr_on_both_nics_differs_only_in_role() {
    let p = ok(&format!(
        "{}{}",
        management("allow = [ { to = \"198.51.100.0/24\", port = 3306, proto = \"tcp\" } ]"),
        business("peers = [\"198.51.100.0/24\"]")
    ));
    let m = find(&p, Role::Management, "allow tcp 198.51.100.0/24 port 3306");
    let b = find(&p, Role::Business, "peers 198.51.100.0/24");
    let (km, kb) = (m.key(Role::Management), b.key(Role::Business));
    assert_eq!(km.prefix, kb.prefix);
    let (dm, db) = (km, kb);
    assert_ne!(dm.role, db.role);
    assert_eq!(
        PolicyKey {
            role: db.role,
            ..dm
        },
        db
    );
    assert_ne!(m.id, b.id, "rule ids collide across roles");
}

#[test]
fn display_lists_every_rule() {
    let p = ok(EXAMPLE);
    let text = p.to_string();
    for want in [
        "mode      enforce",
        "attach    auto",
        "/sys/fs/bpf/trove-isolate",
        "127.0.0.1:9477",
        "management NIC ens3",
        "business NIC ens4",
        "rabbitmq 192.0.2.10:5672",
        "peers 198.51.100.7/32",
    ] {
        assert!(text.contains(want), "check output lacks {want:?}:\n{text}");
    }
    let rule_lines = text.lines().filter(|l| l.starts_with("  #")).count();
    assert_eq!(rule_lines, 8, "{text}");
    let dhcp: Vec<&str> = text.lines().filter(|l| l.starts_with("  dhcp")).collect();
    assert_eq!(
        dhcp,
        ["  dhcp    DHCPv4 68->67 and DHCPv6 546->547, stateless, broadcast/link scope only"],
        "one dhcp line, for management: {text}"
    );
}

#[test]
fn dhcp_is_a_flag_not_rules() {
    let p = ok(&format!(
        "[management]\ninterface = \"ens3\"\ndhcp = false\n{}",
        business("")
    ));
    let mgmt = p.nic(Role::Management).expect("management NIC");
    assert!(!mgmt.dhcp);
    assert!(mgmt.rules.is_empty(), "{:#?}", mgmt.rules);
    let text = p.to_string();
    let dhcp: Vec<&str> = text.lines().filter(|l| l.starts_with("  dhcp")).collect();
    assert_eq!(dhcp, ["  dhcp    off"], "{text}");

    let p = ok(&format!(
        "[management]\ninterface = \"ens3\"\ndhcp = true\n{}",
        business("")
    ));
    let mgmt = p.nic(Role::Management).expect("management NIC");
    assert!(mgmt.dhcp);
    assert!(
        mgmt.rules.is_empty(),
        "dhcp compiled to rules: {:#?}",
        mgmt.rules
    );
    assert!(p.entries().iter().all(|(k, _)| k.proto != proto::UDP));
}

/// Trove discovery: fixture trees of real guests' files.
mod discovery {
    use std::{collections::HashMap, net::IpAddr, time::Duration};

    use super::*;
    use crate::{policy::print::proto_name, resolve::Answer};

    fn fixture(guest: &str) -> String {
        format!(
            "{}/tests/fixtures/guests/{guest}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    /// Answers from a table; a host not in it does not resolve.
    struct Table(HashMap<&'static str, (&'static str, u64)>);

    impl Resolve for Table {
        fn lookup(&self, host: &str) -> Result<Answer, String> {
            let (addr, ttl) = self.0.get(host).ok_or("NXDOMAIN")?;
            Ok(Answer {
                addresses: vec![addr.parse::<IpAddr>().expect("address")],
                ttl: Duration::from_secs(*ttl),
            })
        }
    }

    fn compile(text: &str, resolver: &dyn Resolve) -> Result<Policy, ConfigError> {
        let path = Path::new(PATH);
        Policy::from_config_with(&Config::parse(text, path)?, path, resolver)
    }

    fn rules(p: &Policy, role: Role) -> Vec<String> {
        p.nic(role)
            .expect("configured")
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} | {}",
                    r.direction.name(),
                    proto_name(r.proto),
                    r.remote,
                    r.port,
                    r.origin()
                )
            })
            .collect()
    }

    #[test]
    fn a_mysql_guest_is_its_files() {
        let config = format!(
            "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\n",
            fixture("mysql")
        );
        let p = compile(&config, &crate::resolve::NoNames).expect("compiles");
        let mgmt = rules(&p, Role::Management);
        let tga = "(from trove-guestagent.conf [DEFAULT] transport_url)";
        for want in [
            format!("egress tcp 192.0.2.10/32 5672 | rabbitmq 192.0.2.10:5672 {tga}"),
            format!("egress tcp 192.0.2.11/32 5672 | rabbitmq 192.0.2.11:5672 {tga}"),
            "egress tcp 192.0.2.20/32 4000 | registry 192.0.2.20:4000 (from trove-guestagent.conf [guest_agent] container_registry)".into(),
            "egress tcp 192.0.2.21/32 4000 | registry 192.0.2.21:4000 (from trove-guestagent.conf [mysql] backup_docker_image)".into(),
            "egress tcp 169.254.169.254/32 80 | service 169.254.169.254:80 (from the metadata service (cloud-init))".into(),
        ] {
            assert!(mgmt.contains(&want), "missing {want} in\n{}", mgmt.join("\n"));
        }
        assert!(
            mgmt.iter()
                .any(|r| r.starts_with("egress udp 192.0.2.123/32 123 | service")),
            "{mgmt:?}"
        );
        // No names: no DNS.
        assert!(!mgmt.iter().any(|r| r.contains(" 53 |")), "{mgmt:?}");
        let biz = p.nic(Role::Business).expect("business from eth1.json");
        assert_eq!(biz.nic.to_string(), "fa:16:3e:10:00:02");
        let ports: Vec<u16> = biz.rules.iter().map(|r| r.port).collect();
        assert!(ports.iter().all(|p| *p == 3306), "{ports:?}");
        let shown = p.to_string();
        assert!(
            !shown.contains("secret"),
            "a password in check's output:\n{shown}"
        );
        assert!(
            shown.contains("[guest_agent] container_registry"),
            "check names where each rule came from:\n{shown}"
        );
    }

    #[test]
    fn a_mariadb_guest_with_tls_ipv6_and_a_second_broker() {
        let config = format!(
            "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\n[business]\nclients = [\"198.51.100.0/24\"]\n",
            fixture("mariadb")
        );
        let p = compile(&config, &crate::resolve::NoNames).expect("compiles");
        let mgmt = rules(&p, Role::Management);
        for want in [
            "egress tcp 2001:db8::10/128 5672 | rabbitmq [2001:db8::10]:5672",
            "egress tcp 2001:db8::11/128 5672 | rabbitmq [2001:db8::11]:5672",
            "egress tcp 192.0.2.12/32 5671 | rabbitmq 192.0.2.12:5671 (from trove-guestagent.conf [oslo_messaging_notifications] transport_url)",
            "egress tcp 2001:db8::20/128 443 | registry [2001:db8::20]:443",
        ] {
            assert!(
                mgmt.iter().any(|r| r.starts_with(want)),
                "missing {want} in\n{}",
                mgmt.join("\n")
            );
        }
        // The explicit clients narrow the database ports discovery found (Galera's too).
        let biz = rules(&p, Role::Business);
        for port in [3306, 4444, 4567, 4568] {
            let want = format!("ingress tcp 198.51.100.0/24 {port} | clients 198.51.100.0/24");
            assert!(biz.contains(&want), "missing {want} in {biz:?}");
        }
        assert!(!p.to_string().contains("secret"));
        // Its backup image is on Docker Hub, which discovery allows nothing of: check says so,
        // unless an allow entry names Docker Hub.
        let warnings = p.warnings().join("\n");
        assert!(
            warnings.contains("[mariadb] backup_docker_image = mariadb/backup is on Docker Hub"),
            "{warnings}"
        );
        let hub =
            "[[management.allow]]\nto = \"registry-1.docker.io\"\nport = 443\nproto = \"tcp\"\n";
        let allowed = compile(
            &config.replace("[business]", &format!("{hub}[business]")),
            &crate::resolve::NoNames,
        )
        .expect("compiles");
        assert_eq!(allowed.unreached, Vec::<String>::new());
    }

    /// guest_info.conf (the datastore) not written yet is Trove's files half way, not a config
    /// error about a key the operator never set.
    #[test]
    fn a_guest_without_its_datastore_is_half_written() {
        let root = std::env::temp_dir().join(format!("ti-no-datastore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(fixture("mysql"))
            .arg(&root)
            .status()
            .expect("cp");
        assert!(copied.success());
        std::fs::remove_file(root.join("etc/trove/conf.d/guest_info.conf")).expect("removing");
        let config = format!(
            "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\n",
            root.display()
        );
        let got = compile(&config, &crate::resolve::NoNames);
        std::fs::remove_dir_all(&root).expect("cleaning up");
        match got {
            Err(ConfigError::TroveFilesMissing { message, .. }) => {
                assert!(
                    message.contains("no [DEFAULT] datastore_manager"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_resolve_and_dns_opens_to_the_resolvers_only() {
        let config = format!(
            "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\n",
            fixture("postgresql")
        );
        let table = Table(HashMap::from([
            ("rabbit-1.trove.test", ("192.0.2.10", 300)),
            ("rabbit-2.trove.test", ("192.0.2.11", 60)),
            ("registry.trove.test", ("192.0.2.20", 600)),
            ("ntp.trove.test", ("192.0.2.123", 3600)),
        ]));
        let p = compile(&config, &table).expect("compiles: two brokers of three resolve");
        let mgmt = rules(&p, Role::Management);
        for want in [
            "egress tcp 192.0.2.10/32 5672 | rabbitmq rabbit-1.trove.test:5672",
            "egress tcp 192.0.2.11/32 5672 | rabbitmq rabbit-2.trove.test:5672",
            "egress tcp 192.0.2.20/32 4000 | registry registry.trove.test:4000",
            "egress udp 192.0.2.123/32 123 | service ntp.trove.test:123",
            "egress tcp 192.0.2.22/32 80 | registry 192.0.2.22:80 (from ",
            "egress udp 127.0.0.1/32 53 | dns 127.0.0.1:53",
            "egress tcp 127.0.0.1/32 53 | dns 127.0.0.1:53",
        ] {
            assert!(
                mgmt.iter().any(|r| r.starts_with(want)),
                "missing {want} in\n{}",
                mgmt.join("\n")
            );
        }
        // DNS goes to the resolver and nowhere else.
        let dns: Vec<&String> = mgmt.iter().filter(|r| r.contains(" 53 |")).collect();
        assert_eq!(dns.len(), 2, "{dns:?}");
        assert_eq!(p.unresolved.len(), 1, "{:?}", p.unresolved);
        assert!(p
            .warnings()
            .iter()
            .any(|w| w.contains("rabbit-gone.trove.test")));
        // The backup image on Docker Hub is pulled through daemon.json's mirror: no warning.
        assert_eq!(p.unreached, Vec::<String>::new());
        assert!(mgmt
            .iter()
            .any(|r| r.starts_with("egress tcp 192.0.2.22/32 80")
                && r.ends_with("daemon.json registry-mirrors)")));
        // The shortest TTL, or sooner for the name that did not resolve.
        assert_eq!(p.refresh_in(), Some(crate::resolve::UNRESOLVED_RETRY));
        // The resolvers' rules follow resolv.conf at a refresh; none listed keeps them.
        let dns_rules = |p: &Policy| -> Vec<String> {
            rules(p, Role::Management)
                .into_iter()
                .filter(|r| r.contains(" 53 | dns"))
                .collect()
        };
        let mut moved = p.clone();
        let mut none = p.clone();
        for nic in &mut moved.nics {
            for r in nic
                .rules
                .iter_mut()
                .filter(|r| r.host.as_deref() == Some(RESOLVERS))
            {
                r.remote = "192.0.2.53/32".parse().expect("net");
            }
        }
        for nic in &mut none.nics {
            nic.rules.retain(|r| r.host.as_deref() != Some(RESOLVERS));
        }
        let followed = dns_rules(&p.with_names_from(&moved));
        assert_eq!(followed.len(), 2, "{followed:?}");
        assert!(
            followed.iter().all(|r| r.contains("192.0.2.53/32")),
            "{followed:?}"
        );
        assert_eq!(dns_rules(&p.with_names_from(&none)), dns_rules(&p));
        assert!(p
            .to_string()
            .contains("rabbit-2.trove.test = 192.0.2.11 (TTL 60 s)"));

        // No broker at all resolves: none is reachable until one does, and the warning names
        // where the name came from.
        let only_registry = Table(HashMap::from([(
            "registry.trove.test",
            ("192.0.2.20", 600),
        )]));
        let p = compile(&config, &only_registry).expect("compiles");
        let warnings = p.warnings().join("\n");
        assert!(
            warnings.contains("trove-guestagent.conf [DEFAULT] transport_url")
                && warnings.contains("does not resolve")
                && !warnings.contains("pg-secret"),
            "{warnings}"
        );
        assert!(brokers(&p).is_empty(), "{:?}", brokers(&p));
    }

    /// An `allow` entry may name a host (an object store's, which Trove gives the guest per
    /// backup): its addresses on the port, followed as the name's answers change, and the DNS
    /// rules that lookups need. ICMP takes a CIDR only.
    #[test]
    fn an_allow_entry_may_name_a_host() {
        let table = Table(HashMap::from([("swift.trove.test", ("192.0.2.80", 300))]));
        let config = management(
            "allow = [ { to = \"swift.trove.test\", port = 8080, proto = \"tcp\" }, \
             { to = \"192.0.2.81/32\", port = 8080, proto = \"tcp\" } ]",
        );
        let p = compile(&config, &table).expect("compiles");
        let mgmt = rules(&p, Role::Management);
        assert!(
            mgmt.iter()
                .any(|r| r
                    == "egress tcp 192.0.2.80/32 8080 | allow swift.trove.test:8080 = 192.0.2.80"),
            "{mgmt:#?}"
        );
        assert!(
            mgmt.iter().any(|r| r.contains("192.0.2.81/32 8080")),
            "{mgmt:#?}"
        );
        assert!(p.names.iter().any(|n| n.host == "swift.trove.test"));
        // Unresolved: no rule to it, a warning, looked up again.
        let p = compile(&config, &Table(HashMap::new())).expect("compiles");
        assert!(p
            .warnings()
            .iter()
            .any(|w| w.contains("swift.trove.test does not resolve")));
        assert!(!rules(&p, Role::Management)
            .iter()
            .any(|r| r.contains(" 8080 | allow swift")));
        let err = compile(
            &management("allow = [ { to = \"swift.trove.test\", proto = \"icmp\" } ]"),
            &table,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("allow[0].to") && err.contains("icmp takes a CIDR"),
            "{err}"
        );
        let err = compile(
            &management("allow = [ { to = \"192.0.2.300/32\", port = 1, proto = \"tcp\" } ]"),
            &table,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("allow[0].to"),
            "a mistyped address read as a name: {err}"
        );
    }

    /// The remotes the management NIC may reach on RabbitMQ's port.
    fn brokers(p: &Policy) -> Vec<String> {
        p.nic(Role::Management)
            .expect("management")
            .rules
            .iter()
            .filter(|r| r.port == 5672)
            .map(|r| r.remote.to_string())
            .collect()
    }

    #[test]
    fn a_refresh_changes_only_the_names_rules_and_keeps_a_failed_names_addresses() {
        let config = format!(
            "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\n",
            fixture("postgresql")
        );
        let before = Table(HashMap::from([
            ("rabbit-1.trove.test", ("192.0.2.10", 300)),
            ("rabbit-2.trove.test", ("192.0.2.11", 60)),
            ("registry.trove.test", ("192.0.2.20", 600)),
            ("ntp.trove.test", ("192.0.2.123", 3600)),
        ]));
        let current = compile(&config, &before).expect("compiles");
        // rabbit-1 moved; rabbit-2 fails this time; an edit of the file adds a rule.
        let after = Table(HashMap::from([
            ("rabbit-1.trove.test", ("192.0.2.14", 300)),
            ("registry.trove.test", ("192.0.2.20", 600)),
            ("ntp.trove.test", ("192.0.2.123", 3600)),
        ]));
        let edited = format!("{config}ssh_from = [\"203.0.113.0/24\"]\n");
        let fresh = compile(&edited, &after).expect("compiles: rabbit-1 resolves");
        let next = current.with_names_from(&fresh);
        let remotes = brokers(&next);
        assert!(remotes.contains(&"192.0.2.14/32".to_owned()), "{remotes:?}");
        assert!(
            !remotes.contains(&"192.0.2.10/32".to_owned()),
            "{remotes:?}"
        );
        assert!(
            remotes.contains(&"192.0.2.11/32".to_owned()),
            "a name that failed lost its addresses: {remotes:?}"
        );
        assert!(
            !rules(&next, Role::Management)
                .iter()
                .any(|r| r.contains("ssh_from")),
            "an edit of the file was applied without a reload"
        );
        let ids: HashSet<u32> = next
            .nics
            .iter()
            .flat_map(|n| n.rules.iter().map(|r| r.id))
            .collect();
        let count: usize = next.nics.iter().map(|n| n.rules.len()).sum();
        assert_eq!(ids.len(), count, "rule ids repeat");
        // A name whose answer did not change keeps its rule's id; answers that change nothing
        // change nothing in the maps (the daemon then writes nothing).
        let id_of = |p: &Policy, remote: &str| {
            p.nic(Role::Management)
                .expect("management")
                .rules
                .iter()
                .find(|r| r.remote.to_string() == remote)
                .map(|r| r.id)
        };
        assert_eq!(
            id_of(&next, "192.0.2.20/32"),
            id_of(&current, "192.0.2.20/32")
        );
        let same = current.with_names_from(&compile(&config, &before).expect("compiles"));
        let mut entries = (same.entries(), current.entries());
        entries.0.sort_by_key(|(k, _)| *k);
        entries.1.sort_by_key(|(k, _)| *k);
        assert_eq!(entries.0, entries.1);
    }

    #[test]
    fn a_configured_address_that_is_also_a_names_survives_the_names_move() {
        // The name before the address, and after it.
        for list in [
            "\"broker.trove.test:5672\", \"192.0.2.10:5672\"",
            "\"192.0.2.10:5672\", \"broker.trove.test:5672\"",
        ] {
            let config = format!("[management]\ninterface = \"ens3\"\nrabbitmq = [{list}]\n");
            let at = |addr| Table(HashMap::from([("broker.trove.test", (addr, 300))]));
            let current = compile(&config, &at("192.0.2.10")).expect("compiles");
            let next =
                current.with_names_from(&compile(&config, &at("192.0.2.14")).expect("compiles"));
            let remotes = brokers(&next);
            assert!(
                remotes.contains(&"192.0.2.10/32".to_owned()),
                "{list}: {remotes:?}"
            );
            assert!(
                remotes.contains(&"192.0.2.14/32".to_owned()),
                "{list}: {remotes:?}"
            );
        }
    }

    #[test]
    fn explicit_keys_add_to_discovery() {
        let config = format!(
            "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\nrabbitmq = [\"192.0.2.99:5672\"]\nssh_from = [\"203.0.113.0/24\"]\n[business]\ndatabase_ports = [33060]\n",
            fixture("mysql")
        );
        let p = compile(&config, &crate::resolve::NoNames).expect("compiles");
        let mgmt = rules(&p, Role::Management);
        assert!(mgmt.iter().any(|r| r.contains("rabbitmq 192.0.2.99:5672")));
        assert!(mgmt.iter().any(|r| r.contains("rabbitmq 192.0.2.10:5672")));
        assert!(mgmt
            .iter()
            .any(|r| r.starts_with("ingress tcp 203.0.113.0/24 22")));
        let mut ports: Vec<u16> = p
            .nic(Role::Business)
            .expect("business")
            .rules
            .iter()
            .map(|r| r.port)
            .collect();
        ports.dedup();
        assert_eq!(ports, [33060, 3306]);
    }

    #[test]
    fn a_guest_without_a_transport_url_is_refused() {
        let dir = std::env::temp_dir().join(format!("ti-empty-guest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc/trove/conf.d")).expect("dir");
        std::fs::write(
            dir.join("etc/trove/conf.d/guest_info.conf"),
            "[DEFAULT]\ndatastore_manager = mysql\n",
        )
        .expect("file");
        let config = format!(
            "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\n",
            dir.display()
        );
        let err = compile(&config, &crate::resolve::NoNames)
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            err.contains("[trove]") && err.contains("transport_url"),
            "{err}"
        );
    }
}

#[test]
fn a_class_may_use_at_most_sixteen_prefix_lengths() {
    let clients = |n: u8| -> String {
        let list: Vec<String> = (0..n)
            .map(|i| format!("\"2001:db8::/{}\"", 112 + i))
            .collect();
        format!("clients = [{}]", list.join(", "))
    };
    let p = ok(&business(&clients(16)));
    let mut lengths: Vec<u8> = p.rules().iter().map(|(k, _)| k.prefix).collect();
    lengths.sort_unstable();
    lengths.dedup();
    assert_eq!(lengths.len(), 16);
    // Written at fewer: the shortest ones as longer ones (a /112 as 2 /113s, ...).
    let class = trove_isolate_common::policy::class(Role::Business, Direction::Ingress, family::V6);
    assert!(p.prefix_lengths()[class as usize].len() < 16, "{p}");
    let msg = refused(&business(&clients(17)), "[business]");
    assert!(
        msg.contains("business NIC's ingress IPv6 rules use 17 prefix lengths (/128, /127"),
        "{msg}"
    );
    assert!(msg.contains("more than 16"), "{msg}");
}

#[test]
fn shorter_prefixes_are_written_as_the_longer_length_a_class_uses() {
    let p = ok(&business(
        r#"clients = ["198.51.100.0/24", "198.51.100.7", "198.51.100.64/28", "2001:db8:1::/48", "2001:db8::5"]"#,
    ));
    let class = |fam| policy::class(Role::Business, Direction::Ingress, fam) as usize;
    let lengths = p.prefix_lengths();
    assert_eq!(lengths[class(family::V4)], [32], "{p}");
    // A /48 among /128s would be 2^80 entries: both lengths stay.
    assert_eq!(lengths[class(family::V6)], [128, 48], "{p}");
    let entries = p.entries();
    let v4: std::collections::HashMap<[u8; 4], u32> = entries
        .iter()
        .filter(|(k, _)| k.family == family::V4)
        .map(|(k, v)| {
            assert_eq!(k.prefix, 32);
            ([k.addr[0], k.addr[1], k.addr[2], k.addr[3]], v.rule_id)
        })
        .collect();
    // The /24's 256 addresses, each once, each naming the most specific rule that holds it.
    assert_eq!(v4.len(), 256);
    assert_eq!(entries.len(), 256 + 2);
    let id = |origin: &str| find(&p, Role::Business, origin).id;
    for (last, &rule) in (0..=255u8).map(|i| (i, &v4[&[198, 51, 100, i]])) {
        let want = match last {
            7 => id("clients 198.51.100.7/32"),
            64..=79 => id("clients 198.51.100.64/28"),
            _ => id("clients 198.51.100.0/24"),
        };
        assert_eq!(rule, want, "198.51.100.{last}");
    }
    assert!(
        p.to_string()
            .contains("business ingress IPv4: 1 per new flow, at /32 (/28 written as /32, /24 written as /32)"),
        "{p}"
    );
}

#[test]
fn expansion_stays_within_its_budget() {
    // 2,000 /32s and 20 /24s: 5,120 entries more than a class of 2,020 rules may gain
    // (4,096), so the /24s keep their length; 10 /24s (2,560) fold.
    let clients = |slash24: u32| -> String {
        let hosts = (0..2000u32).map(|i| format!("\"198.51.{}.{}\"", 100 + i / 250, i % 250));
        let nets = (0..slash24).map(|i| format!("\"203.0.{i}.0/24\""));
        let list: Vec<String> = hosts.chain(nets).collect();
        format!("clients = [{}]", list.join(", "))
    };
    let class = policy::class(Role::Business, Direction::Ingress, family::V4) as usize;
    let p = ok(&business(&clients(20)));
    assert_eq!(p.prefix_lengths()[class], [32, 24]);
    assert_eq!(p.entries().len(), p.rules().len());
    let p = ok(&business(&clients(10)));
    assert_eq!(p.prefix_lengths()[class], [32]);
    assert_eq!(p.entries().len(), 2000 + 10 * 256);
}

#[test]
fn a_host_names_addresses_never_change_the_expansion() {
    // Sixteen /24s on the management NIC's egress: one length, nothing to expand. A name's
    // address (a /32, as a refresh brings one in) is written at its own length: folding the
    // /24s into /32s would turn one new address into 4,096 new entries.
    let allow: Vec<String> = (0..16)
        .map(|i| format!("{{ to = \"203.0.{i}.0/24\", port = 443, proto = \"tcp\" }}"))
        .collect();
    let mut p = ok(&management(&format!("allow = [{}]", allow.join(", "))));
    let class = policy::class(Role::Management, Direction::Egress, family::V4) as usize;
    assert_eq!(p.prefix_lengths()[class], [24]);
    let nic = p.nics.iter_mut().find(|n| n.role == Role::Management);
    nic.expect("management").rules.push(Rule {
        id: 100,
        direction: Direction::Egress,
        proto: proto::TCP,
        port: 5672,
        remote: "192.0.2.10/32".parse().expect("cidr"),
        origin: Origin::from("rabbitmq broker:5672".to_owned()),
        host: Some("broker".into()),
    });
    assert_eq!(p.prefix_lengths()[class], [32, 24]);
    assert_eq!(p.entries().len(), 17);
}

/// The source the daemon keeps compiles what was read, never the file as it is now: an edit
/// nobody reloaded is not taken at a name refresh.
#[test]
fn a_kept_source_compiles_the_text_it_read() {
    let path = std::env::temp_dir().join(format!("ti-source-{}.toml", std::process::id()));
    std::fs::write(&path, EXAMPLE).expect("writing the config");
    let mut source = Source::load(&path).expect("loads");
    source.compact();
    let edited = EXAMPLE.replace("/sys/fs/bpf/trove-isolate", "/sys/fs/bpf/edited");
    std::fs::write(&path, edited).expect("editing the config");
    let config = source.config(&path).expect("parses again");
    std::fs::remove_file(&path).expect("removing the config");
    assert_eq!(
        config.pin_path.as_deref(),
        Some("/sys/fs/bpf/trove-isolate")
    );
    let policy = Policy::for_start(&source, &path, true, &[]).expect("compiles");
    assert_eq!(policy.pin_path, Path::new("/sys/fs/bpf/trove-isolate"));
}

/// A start whose lookups fail keeps a name's recorded addresses only in the rules that reached
/// them: the config edited since to name the host in `allow` too gets no rule there (fail
/// closed, as for a new name), and the recalled name is said, apart from the unresolved.
#[test]
fn a_recalled_name_reaches_only_where_the_policy_in_force_did() {
    use crate::state::{NameAddresses, NameRule};
    let path = std::env::temp_dir().join(format!("ti-recall-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[management]\ninterface = \"ens3\"\nrabbitmq = [\"rabbit.test:5672\"]\n\
         allow = [{ to = \"rabbit.test\", port = 8080, proto = \"tcp\" }]\n\
         [business]\ninterface = \"ens4\"\ndatabase_ports = [3306]\nclients = [\"198.51.100.0/24\"]\n",
    )
    .expect("writing the config");
    let source = Source::load(&path).expect("loads");
    let in_force = [NameAddresses {
        host: "rabbit.test".into(),
        addresses: vec!["192.0.2.10".parse().unwrap()],
        rules: vec![NameRule {
            role: Role::Management,
            direction: Direction::Egress,
            proto: 6,
            port: 5672,
        }],
    }];
    // Deferred: every lookup fails, as under the boot guard.
    let policy = Policy::for_start(&source, &path, true, &in_force).expect("compiles");
    std::fs::remove_file(&path).expect("removing the config");
    let named: Vec<(u16, String)> = policy
        .nic(Role::Management)
        .expect("management")
        .rules
        .iter()
        .filter(|r| r.host.as_deref() == Some("rabbit.test"))
        .map(|r| (r.port, r.remote.to_string()))
        .collect();
    assert_eq!(named, vec![(5672, "192.0.2.10/32".to_owned())]);
    assert_eq!(policy.unresolved.len(), 0, "{:?}", policy.unresolved);
    assert_eq!(policy.recalled.len(), 1, "{:?}", policy.recalled);
    assert_eq!(policy.unresolved_count(), 1);
    assert!(policy.recalled[0].contains("the addresses in force stay: 192.0.2.10"));
    // With nothing in force, the name fails closed everywhere.
    let fresh = Policy::for_start(&source, &path, true, &[]).expect("compiles");
    assert!(fresh
        .nic(Role::Management)
        .expect("management")
        .rules
        .iter()
        .all(|r| r.host.as_deref() != Some("rabbit.test")));
    // One for each endpoint that names it, as ever.
    assert_eq!(fresh.unresolved_count(), 2);
}

/// eth1.json missing with the business NIC isolated: an instance without a user port only with
/// one NIC (or none: a namespace of the management NIC alone) and no business NIC attached.
#[test]
fn a_missing_eth1_json_is_an_instance_without_a_user_port_only_with_one_nic() {
    let nics = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(user_port_pending(Some(&nics(&["eth0"])), false), None);
    let two = user_port_pending(Some(&nics(&["eth0", "eth1"])), false).expect("pending");
    assert!(two.contains("has 2 NICs (eth0, eth1)"), "{two}");
    let pinned = user_port_pending(Some(&nics(&["eth0"])), true).expect("pending");
    assert!(
        pinned.contains("a business NIC is attached from before"),
        "{pinned}"
    );
    assert!(user_port_pending(None, false).is_some());
}
