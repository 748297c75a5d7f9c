//! Exact per-packet verdicts through BPF_PROG_TEST_RUN: tables of named frames, each run through
//! the program of its (role, direction) with the verdict, the TC action and the one counter that
//! must move checked. Rows run in order on one loaded datapath, so connection tracking carries
//! from a row to the next (an outbound SYN, then its reply). The policy is compiled from a config
//! by the same code the daemon uses.

mod packets {
    pub mod frame;
}

use std::path::Path;

use aya::programs::{TestRun as _, TestRunOptions};
use packets::frame::*;
use trove_isolate::{config::Config, datapath::Datapath, policy::Policy};
use trove_isolate_common::{action, proto, Direction, Mode, Reason, Role, Verdict};
use Direction::{Egress as E, Ingress as I};
use Role::{Business as B, Management as M};

/// The guest of the issue: 192.0.2.1 and 2001:db8:1::1 on BOTH NICs.
const CONFIG: &str = r#"
[metrics]
listen = "127.0.0.1:9477"
allow_from = ["203.0.113.0/24"]
[management]
interface = "mgmt0"
rabbitmq = ["192.0.2.10:5672", "[2001:db8:1::10]:5671"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24"]
allow = [ { to = "192.0.2.10/32", proto = "icmp" } ]
[business]
interface = "eth0"
database_ports = [3306]
peers = ["198.51.100.7/32"]
"#;

const G4: &str = "192.0.2.1";
const G6: &str = "2001:db8:1::1";
const RABBIT4: &str = "192.0.2.10";
const RABBIT6: &str = "2001:db8:1::10";
const UNLISTED: &str = "192.0.2.99";
const OPERATOR: &str = "203.0.113.5";
const CLIENT: &str = "192.0.2.50";
const CLIENT6: &str = "2001:db8:1::50";
const PEER: &str = "198.51.100.7";

struct Case {
    name: String,
    role: Role,
    direction: Direction,
    frame: Vec<u8>,
    verdict: Verdict,
    reason: Reason,
}

fn case(
    name: &str,
    role: Role,
    direction: Direction,
    frame: Vec<u8>,
    verdict: Verdict,
    reason: Reason,
) -> Case {
    Case {
        name: name.to_owned(),
        role,
        direction,
        frame,
        verdict,
        reason,
    }
}

fn pass(name: &str, role: Role, direction: Direction, frame: Vec<u8>, reason: Reason) -> Case {
    case(name, role, direction, frame, Verdict::Pass, reason)
}

fn drop(name: &str, role: Role, direction: Direction, frame: Vec<u8>, reason: Reason) -> Case {
    case(name, role, direction, frame, Verdict::Drop, reason)
}

fn datapath() -> Datapath {
    let path = Path::new("packets.toml");
    let config = Config::parse(CONFIG, path).expect("test config parses");
    let policy = Policy::from_config(&config, path).expect("test config compiles");
    let mut dp = Datapath::load(None, false).expect("loading the datapath (root, BPF)");
    dp.sync_policy(&policy.entries())
        .expect("writing the policy map");
    dp
}

fn counter(dp: &Datapath, c: &Case) -> u64 {
    dp.counts()
        .expect("reading counters")
        .iter()
        .find(|n| {
            n.role == c.role
                && n.direction == c.direction
                && n.verdict == c.verdict
                && n.reason == c.reason
        })
        .map_or(0, |n| n.counter.packets)
}

fn total(dp: &Datapath) -> u64 {
    dp.counts()
        .expect("reading counters")
        .iter()
        .map(|n| n.counter.packets)
        .sum()
}

/// Runs every row in order; reports every mismatch at once.
fn run_table(dp: &mut Datapath, cases: &[Case]) {
    let mut wrong = Vec::new();
    for c in cases {
        let before = (counter(dp, c), total(dp));
        let program = dp.program(c.role, c.direction);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&c.frame),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN failed: {e:?}", c.name));
        let want_action = if c.verdict == Verdict::Drop {
            action::DROP
        } else {
            action::PASS
        };
        let after = (counter(dp, c), total(dp));
        if result.return_value as i32 != want_action
            || after.0 != before.0 + 1
            || after.1 != before.1 + 1
        {
            let got = dp
                .counts()
                .expect("reading counters")
                .into_iter()
                .filter(|n| n.role == c.role && n.direction == c.direction)
                .map(|n| {
                    format!(
                        "{}/{}={}",
                        n.verdict.name(),
                        n.reason.name(),
                        n.counter.packets
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            wrong.push(format!(
                "  {}: returned {}, expected {} ({} {}); counters now: {got}",
                c.name,
                result.return_value as i32,
                want_action,
                c.verdict.name(),
                c.reason.name()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

fn v4_tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(V4_PLAIN, proto::TCP, src, dst, &tcp(sport, dport, flags))
}

fn v6_tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv6(proto::TCP, src, dst, &tcp(sport, dport, flags))
}

#[test]
fn management_nic() {
    use Reason::*;
    let mut dp = datapath();
    let out = v4_tcp(G4, RABBIT4, 40000, 5672, SYN);
    let out6 = v6_tcp(G6, RABBIT6, 40001, 5671, SYN);
    run_table(
        &mut dp,
        &[
            // Outbound: only the configured endpoints open flows; their replies are tracked.
            pass("SYN to rabbitmq", M, E, out.clone(), Allowed),
            pass(
                "SYN-ACK from rabbitmq",
                M,
                I,
                v4_tcp(RABBIT4, G4, 5672, 40000, SYN_ACK),
                Tracked,
            ),
            pass(
                "ACK to rabbitmq",
                M,
                E,
                v4_tcp(G4, RABBIT4, 40000, 5672, ACK),
                Tracked,
            ),
            pass("SYN to rabbitmq over IPv6", M, E, out6.clone(), Allowed),
            pass(
                "SYN-ACK from rabbitmq over IPv6",
                M,
                I,
                v6_tcp(RABBIT6, G6, 5671, 40001, SYN_ACK),
                Tracked,
            ),
            pass(
                "SYN to the registry",
                M,
                E,
                v4_tcp(G4, "192.0.2.20", 40002, 4000, SYN),
                Allowed,
            ),
            drop(
                "SYN to an unlisted host",
                M,
                E,
                v4_tcp(G4, UNLISTED, 40003, 5672, SYN),
                Policy,
            ),
            drop(
                "SYN to rabbitmq's address on another port",
                M,
                E,
                v4_tcp(G4, RABBIT4, 40004, 4000, SYN),
                Policy,
            ),
            drop(
                "UDP to rabbitmq's port",
                M,
                E,
                ipv4(V4_PLAIN, proto::UDP, G4, RABBIT4, &udp(40005, 5672)),
                Policy,
            ),
            pass(
                "outbound ACK to an allowed endpoint is picked up",
                M,
                E,
                v4_tcp(G4, RABBIT4, 40006, 5672, ACK),
                Allowed,
            ),
            drop(
                "outbound ACK to an unlisted host",
                M,
                E,
                v4_tcp(G4, UNLISTED, 40007, 5672, ACK),
                Policy,
            ),
            // Inbound: SSH and scrapes from the named sources; nothing unsolicited.
            pass(
                "SSH SYN from the operator",
                M,
                I,
                v4_tcp(OPERATOR, G4, 50000, 22, SYN),
                Allowed,
            ),
            pass(
                "SSH SYN-ACK back",
                M,
                E,
                v4_tcp(G4, OPERATOR, 22, 50000, SYN_ACK),
                Tracked,
            ),
            drop(
                "SSH SYN from an unlisted host",
                M,
                I,
                v4_tcp(UNLISTED, G4, 50001, 22, SYN),
                Policy,
            ),
            pass(
                "scrape SYN from the scraper",
                M,
                I,
                v4_tcp(OPERATOR, G4, 50002, 9477, SYN),
                Allowed,
            ),
            drop(
                "SYN from rabbitmq to a local port",
                M,
                I,
                v4_tcp(RABBIT4, G4, 5672, 2222, SYN),
                Policy,
            ),
            drop(
                "unsolicited ACK",
                M,
                I,
                v4_tcp(UNLISTED, G4, 5672, 40010, ACK),
                NotTracked,
            ),
            drop(
                "unsolicited SYN-ACK from rabbitmq",
                M,
                I,
                v4_tcp(RABBIT4, G4, 5672, 40011, SYN_ACK),
                NotTracked,
            ),
            // DHCP client, ARP, neighbour discovery.
            pass(
                "DHCP discover",
                M,
                E,
                ipv4(
                    V4_PLAIN,
                    proto::UDP,
                    "0.0.0.0",
                    "255.255.255.255",
                    &udp(68, 67),
                ),
                Allowed,
            ),
            pass(
                "DHCP offer",
                M,
                I,
                ipv4(V4_PLAIN, proto::UDP, "192.0.2.254", G4, &udp(67, 68)),
                Allowed,
            ),
            pass("ARP in", M, I, arp(), Arp),
            pass("ARP out", M, E, arp(), Arp),
            pass(
                "neighbour solicitation in",
                M,
                I,
                ipv6(
                    proto::ICMPV6,
                    RABBIT6,
                    "ff02::1:ff00:1",
                    &icmp(135, 0, 0, &[0; 16]),
                ),
                NeighborDiscovery,
            ),
            pass(
                "neighbour advertisement out",
                M,
                E,
                ipv6(proto::ICMPV6, G6, RABBIT6, &icmp(136, 0, 0, &[0; 16])),
                NeighborDiscovery,
            ),
            pass(
                "router solicitation out",
                M,
                E,
                ipv6(proto::ICMPV6, G6, "ff02::2", &icmp(133, 0, 0, &[])),
                NeighborDiscovery,
            ),
            // ICMP echo is a flow like any other.
            pass(
                "echo request to rabbitmq (allow icmp)",
                M,
                E,
                ipv4(V4_PLAIN, proto::ICMP, G4, RABBIT4, &icmp(8, 0, 7, &[])),
                Allowed,
            ),
            pass(
                "echo reply from rabbitmq",
                M,
                I,
                ipv4(V4_PLAIN, proto::ICMP, RABBIT4, G4, &icmp(0, 0, 7, &[])),
                Tracked,
            ),
            drop(
                "unsolicited echo reply",
                M,
                I,
                ipv4(V4_PLAIN, proto::ICMP, UNLISTED, G4, &icmp(0, 0, 9, &[])),
                NotTracked,
            ),
            drop(
                "echo request to an unlisted host",
                M,
                E,
                ipv4(V4_PLAIN, proto::ICMP, G4, UNLISTED, &icmp(8, 0, 8, &[])),
                Policy,
            ),
            drop(
                "inbound echo request",
                M,
                I,
                ipv4(V4_PLAIN, proto::ICMP, OPERATOR, G4, &icmp(8, 0, 8, &[])),
                Policy,
            ),
            drop(
                "ICMP timestamp request",
                M,
                I,
                ipv4(V4_PLAIN, proto::ICMP, OPERATOR, G4, &icmp(13, 0, 0, &[])),
                NotTracked,
            ),
            // ICMP errors about tracked flows pass (PMTU discovery); about anything else they do not.
            pass(
                "frag-needed about the rabbitmq flow",
                M,
                I,
                ipv4(
                    V4_PLAIN,
                    proto::ICMP,
                    RABBIT4,
                    G4,
                    &icmp(3, 4, 0, &quote(&out, 20)),
                ),
                Related,
            ),
            pass(
                "packet-too-big about the IPv6 rabbitmq flow",
                M,
                I,
                ipv6(
                    proto::ICMPV6,
                    RABBIT6,
                    G6,
                    &icmp(2, 0, 0, &quote(&out6, 40)),
                ),
                Related,
            ),
            drop(
                "unreachable about an untracked flow",
                M,
                I,
                ipv4(
                    V4_PLAIN,
                    proto::ICMP,
                    UNLISTED,
                    G4,
                    &icmp(3, 1, 0, &quote(&v4_tcp(G4, UNLISTED, 40003, 5672, SYN), 20)),
                ),
                NotTracked,
            ),
            drop(
                "unreachable with its quote cut short",
                M,
                I,
                ipv4(
                    V4_PLAIN,
                    proto::ICMP,
                    RABBIT4,
                    G4,
                    &icmp(3, 4, 0, &quote(&out, 20)[..24]),
                ),
                Malformed,
            ),
        ],
    );
}

#[test]
fn business_nic_and_isolation_between_nics() {
    use Reason::*;
    let mut dp = datapath();
    run_table(
        &mut dp,
        &[
            pass(
                "client SYN to the database",
                B,
                I,
                v4_tcp(CLIENT, G4, 33000, 3306, SYN),
                Allowed,
            ),
            pass(
                "database SYN-ACK",
                B,
                E,
                v4_tcp(G4, CLIENT, 3306, 33000, SYN_ACK),
                Tracked,
            ),
            pass(
                "client SYN to the database over IPv6",
                B,
                I,
                v6_tcp(CLIENT6, G6, 33001, 3306, SYN),
                Allowed,
            ),
            drop(
                "client SYN to ssh",
                B,
                I,
                v4_tcp(CLIENT, G4, 33002, 22, SYN),
                Policy,
            ),
            drop(
                "client ACK out of nowhere",
                B,
                I,
                v4_tcp(CLIENT, G4, 33003, 3306, ACK),
                NotTracked,
            ),
            pass(
                "replication SYN to the peer",
                B,
                E,
                v4_tcp(G4, PEER, 40100, 3306, SYN),
                Allowed,
            ),
            drop(
                "SYN to a client (not a peer)",
                B,
                E,
                v4_tcp(G4, CLIENT, 40101, 3306, SYN),
                Policy,
            ),
            drop(
                "SYN to the peer on another port",
                B,
                E,
                v4_tcp(G4, PEER, 40102, 22, SYN),
                Policy,
            ),
            // The same address and port as the management NIC's RabbitMQ rule: not for this NIC.
            drop(
                "SYN to rabbitmq's address:port",
                B,
                E,
                v4_tcp(G4, RABBIT4, 40000, 5672, SYN),
                Policy,
            ),
            pass("ARP", B, I, arp(), Arp),
            // A flow the management NIC tracks is not tracked on the business NIC, same 5-tuple.
            pass(
                "management SYN to rabbitmq",
                M,
                E,
                v4_tcp(G4, RABBIT4, 40200, 5672, SYN),
                Allowed,
            ),
            drop(
                "business SYN-ACK with that 5-tuple",
                B,
                I,
                v4_tcp(RABBIT4, G4, 5672, 40200, SYN_ACK),
                NotTracked,
            ),
            pass(
                "management SYN-ACK with that 5-tuple",
                M,
                I,
                v4_tcp(RABBIT4, G4, 5672, 40200, SYN_ACK),
                Tracked,
            ),
        ],
    );
}

#[test]
fn headers_that_must_fail_closed() {
    use Reason::*;
    let mut dp = datapath();
    let frag = |frag| {
        ipv4(
            V4 { frag, ..V4_PLAIN },
            proto::TCP,
            G4,
            RABBIT4,
            &tcp(41000, 5672, SYN),
        )
    };
    let ext = |n: usize| {
        let chain: Vec<(u8, Vec<u8>)> = (0..n).map(|_| (60, ext8())).collect();
        ipv6_ext(proto::TCP, &chain, G6, RABBIT6, &tcp(41001, 5671, SYN))
    };
    run_table(
        &mut dp,
        &[
            pass(
                "IPv4 with options",
                M,
                E,
                ipv4(
                    V4 { ihl: 6, ..V4_PLAIN },
                    proto::TCP,
                    G4,
                    RABBIT4,
                    &tcp(41002, 5672, SYN),
                ),
                Allowed,
            ),
            pass(
                "IPv6 with hop-by-hop and destination options",
                M,
                E,
                ipv6_ext(
                    proto::TCP,
                    &[(0, ext8()), (60, ext8())],
                    G6,
                    RABBIT6,
                    &tcp(41003, 5671, SYN),
                ),
                Allowed,
            ),
            pass(
                "IPv6 with 6 extension headers (the bound)",
                M,
                E,
                ext(6),
                Allowed,
            ),
            drop("IPv6 with 7 extension headers", M, E, ext(7), Malformed),
            drop(
                "IPv6 fragment header",
                M,
                E,
                ipv6_ext(
                    proto::TCP,
                    &[(44, ext8())],
                    G6,
                    RABBIT6,
                    &tcp(41004, 5671, SYN),
                ),
                Fragment,
            ),
            drop("IPv4 first fragment (MF)", M, E, frag(0x2000), Fragment),
            drop("IPv4 later fragment (offset)", M, E, frag(0x0010), Fragment),
            drop(
                "IPv4 ihl below 5",
                M,
                E,
                ipv4(
                    V4 { ihl: 4, ..V4_PLAIN },
                    proto::TCP,
                    G4,
                    RABBIT4,
                    &tcp(41005, 5672, SYN),
                ),
                Malformed,
            ),
            drop(
                "IPv4 total length beyond the frame",
                M,
                E,
                ipv4(
                    V4 {
                        tot_len: Some(200),
                        ..V4_PLAIN
                    },
                    proto::TCP,
                    G4,
                    RABBIT4,
                    &tcp(41006, 5672, SYN),
                ),
                Malformed,
            ),
            drop(
                "IPv4 total length below its header",
                M,
                E,
                ipv4(
                    V4 {
                        tot_len: Some(12),
                        ..V4_PLAIN
                    },
                    proto::TCP,
                    G4,
                    RABBIT4,
                    &tcp(41007, 5672, SYN),
                ),
                Malformed,
            ),
            drop(
                "TCP data offset below 5",
                M,
                E,
                {
                    let mut t = tcp(41008, 5672, SYN);
                    t[12] = 0x40;
                    ipv4(V4_PLAIN, proto::TCP, G4, RABBIT4, &t)
                },
                Malformed,
            ),
            drop(
                "GRE",
                M,
                E,
                ipv4(V4_PLAIN, 47, G4, RABBIT4, &[0; 8]),
                UnsupportedProtocol,
            ),
            drop(
                "SCTP over IPv6",
                M,
                E,
                ipv6(132, G6, RABBIT6, &[0; 12]),
                UnsupportedProtocol,
            ),
            drop(
                "ICMPv4 inside IPv6",
                M,
                I,
                ipv6(proto::ICMP, RABBIT6, G6, &icmp(0, 0, 1, &[])),
                UnsupportedProtocol,
            ),
            drop(
                "VLAN-tagged frame",
                M,
                I,
                vlan(ETH_IP, &v4_tcp(OPERATOR, G4, 50010, 22, SYN)[14..]),
                UnsupportedProtocol,
            ),
            drop(
                "IPv4 ethertype, IPv6 header",
                M,
                E,
                eth(ETH_IP, &v6_tcp(G6, RABBIT6, 41009, 5671, SYN)[14..]),
                Malformed,
            ),
            drop(
                "unknown ethertype (LLDP)",
                M,
                I,
                eth(0x88cc, &[0; 32]),
                UnsupportedProtocol,
            ),
        ],
    );
}

/// Every truncation of a valid frame, at every byte from the end of Ethernet on, fails closed.
#[test]
fn truncation_at_every_byte_fails_closed() {
    let mut dp = datapath();
    let full = [
        ("IPv4 TCP SYN", v4_tcp(G4, RABBIT4, 42000, 5672, SYN)),
        ("IPv6 TCP SYN", v6_tcp(G6, RABBIT6, 42001, 5671, SYN)),
        (
            "IPv4 UDP",
            ipv4(V4_PLAIN, proto::UDP, G4, "192.0.2.20", &udp(42002, 4000))[..14 + 20 + 8].to_vec(),
        ),
        (
            "IPv6 with a destination option",
            ipv6_ext(
                proto::TCP,
                &[(60, ext8())],
                G6,
                RABBIT6,
                &tcp(42003, 5671, SYN),
            ),
        ),
    ];
    // BPF_PROG_TEST_RUN itself refuses a frame whose IP header is incomplete (the kernel reads
    // it before the program runs); on a real NIC such a frame reaches TC, and the program's
    // bounds checks are the same ones exercised by the longer cuts.
    let mut kernel_refuses = |frame: &[u8]| {
        dp.program(B, I)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .is_err()
    };
    let mut cases = Vec::new();
    for (name, frame) in &full {
        let ip_header = if frame[12] == 0x86 { 40 } else { 20 };
        for len in 14..frame.len() {
            if kernel_refuses(&frame[..len]) {
                assert!(
                    len < 14 + ip_header,
                    "{name} cut to {len} bytes: refused by the kernel"
                );
                continue;
            }
            cases.push(drop(
                &format!("{name} cut to {len} bytes"),
                M,
                E,
                frame[..len].to_vec(),
                Reason::Malformed,
            ));
        }
    }
    assert!(
        cases.len() > 60,
        "too few truncations reached the program: {}",
        cases.len()
    );
    run_table(&mut dp, &cases);
    // The whole frames still pass, so the cuts above failed for being cut.
    let whole: Vec<Case> = full
        .into_iter()
        .map(|(name, frame)| pass(&format!("{name} whole"), M, E, frame, Reason::Allowed))
        .collect();
    run_table(&mut dp, &whole[..2]);
    // Below an Ethernet header the kernel refuses the test run itself.
    let program = dp.program(M, E);
    for len in [0usize, 13] {
        let short = vec![0u8; len];
        let result = program.test_run(TestRunOptions {
            data_in: Some(&short),
            repeat: 1,
            ..Default::default()
        });
        assert!(
            result.is_err(),
            "a {len}-byte frame was accepted by BPF_PROG_TEST_RUN"
        );
    }
}

/// Audit mode: the same decisions, counted as audit, nothing dropped; per role.
#[test]
fn audit_mode_passes_what_it_would_drop() {
    use Reason::*;
    let mut dp = datapath();
    dp.set_mode(M, Mode::Audit).expect("setting audit mode");
    run_table(
        &mut dp,
        &[
            case(
                "management policy drop is audited",
                M,
                E,
                v4_tcp(G4, UNLISTED, 43000, 5672, SYN),
                Verdict::Audit,
                Policy,
            ),
            case(
                "management malformed is audited",
                M,
                I,
                v4_tcp(OPERATOR, G4, 50020, 22, SYN)[..40].to_vec(),
                Verdict::Audit,
                Malformed,
            ),
            pass(
                "management allowed still allowed",
                M,
                E,
                v4_tcp(G4, RABBIT4, 43001, 5672, SYN),
                Allowed,
            ),
            drop(
                "business still enforces",
                B,
                I,
                v4_tcp(CLIENT, G4, 43002, 22, SYN),
                Policy,
            ),
        ],
    );
}

/// The verifier's processed instruction count of each program on the running kernel, one line per
/// program (`cargo xtask test` shows these from the host and from the 6.1 VM). Kernels since 5.16
/// report the count (`verified_insns` in bpf_prog_info); there it must not be zero.
#[test]
fn verified_instruction_counts() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("reading /proc/sys/kernel/osrelease");
    let release = release.trim();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let reports = version >= (5, 16);
    let mut dp = Datapath::load(None, false).expect("loading the datapath (root, BPF)");
    let mut missing = Vec::new();
    for role in Role::ALL {
        for direction in Direction::ALL {
            let name = trove_isolate_common::program_name(role, direction);
            let info = dp
                .program(role, direction)
                .info()
                .unwrap_or_else(|e| panic!("{name}: reading bpf_prog_info: {e}"));
            let count = info.verified_instruction_count();
            let shown = count.map_or_else(|| "not reported".to_owned(), |n| n.to_string());
            println!("verified instructions: kernel {release} program {name} {shown}");
            if reports && count.is_none() {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "Linux {release} reports verified_insns, but it is zero for {missing:?}"
    );
}
