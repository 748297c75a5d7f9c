//! Floods through BPF_PROG_TEST_RUN: established sessions survive a million new flows from a
//! million sources, a full established table refuses new flows instead of evicting, and
//! connections that open and close faster than any timeout never fill it.
//!
//! `TROVE_ISOLATE_FLOOD` sets the flood size (default 1,000,000); each flood prints its rate.

mod packets {
    #[allow(dead_code)] // the packet tables use the rest
    pub mod frame;
}

use std::{collections::BTreeSet, path::Path, time::Instant};

use aya::programs::{TestRun as _, TestRunOptions};
use ipnetwork::IpNetwork;
use packets::frame::*;
use trove_isolate::{
    capacity::Capacity,
    config::Config,
    conntrack,
    datapath::{Datapath, Table},
    local,
    pins::Pins,
    policy::Policy,
};
use trove_isolate_common::{
    action,
    conntrack::{FlowKey4, EST_MAX_ENTRIES},
    flow_table::{Bucket4, FlowBucket as _},
    proto, Direction, Reason, Role, Verdict,
};
use Direction::{Egress as E, Ingress as I};
use Role::{Business as B, Management as M};

const CONFIG: &str = r#"
[management]
interface = "mgmt0"
ssh_from = ["203.0.113.0/24"]
[business]
interface = "eth0"
database_ports = [3306]
"#;

const G4: &str = "192.0.2.1";
const G6: &str = "2001:db8:1::1";

fn flood_size() -> u32 {
    std::env::var("TROVE_ISOLATE_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn datapath() -> Datapath {
    datapath_at(None)
}

/// [`datapath`], its maps pinned under `pins` when given.
fn datapath_at(pins: Option<&Pins>) -> Datapath {
    datapath_sized(pins, |_| {})
}

/// [`datapath_at`] with the tables' sizes as `size` leaves them.
fn datapath_sized(pins: Option<&Pins>, size: impl FnOnce(&mut Capacity)) -> Datapath {
    let path = Path::new("flood.toml");
    let config = Config::parse(CONFIG, path).expect("test config parses");
    let policy = Policy::from_config(&config, path).expect("test config compiles");
    let mut capacity = Capacity::for_policy(&policy);
    size(&mut capacity);
    let mut dp = Datapath::load(pins, false, &capacity).expect("loading the datapath (root, BPF)");
    dp.sync_policy(&policy).expect("policy");
    let nets: Vec<IpNetwork> = ["192.0.2.1/24", "2001:db8:1::1/64"]
        .iter()
        .map(|n| n.parse().expect("net"))
        .collect();
    let mut entries = local::entries(M, &nets);
    entries.extend(local::entries(B, &nets));
    dp.sync_local(&entries).expect("local");
    dp.set_dhcp(M, true).expect("dhcp");
    dp
}

/// Runs one frame; returns the TC action.
fn run(dp: &mut Datapath, role: Role, direction: Direction, frame: &[u8]) -> i32 {
    dp.program(role, direction)
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value as i32
}

fn count(dp: &Datapath, role: Role, direction: Direction, verdict: Verdict, reason: Reason) -> u64 {
    dp.counts()
        .expect("counters")
        .iter()
        .find(|c| {
            c.role == role && c.direction == direction && c.verdict == verdict && c.reason == reason
        })
        .map_or(0, |c| c.counter.packets)
}

fn tcp4(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    ipv4(
        V4_PLAIN,
        proto::TCP,
        src,
        dst,
        &tcp_seq(sport, dport, flags, seq, ack, 1000),
    )
}

/// The guest's greeting: 10 bytes of data at `seq` (a bare ACK promotes no flow).
fn greeting4(src: &str, dst: &str, sport: u16, dport: u16, seq: u32, ack: u32) -> Vec<u8> {
    let segment = tcp_data(sport, dport, ACK | 0x08, (seq, ack), 1000, b"greeting!!");
    ipv4(V4_PLAIN, proto::TCP, src, dst, &segment)
}

/// A full handshake from `client`:`port` to the guest's `service` port on the NIC of `role`,
/// and the guest's greeting (which establishes the flow).
fn handshake(dp: &mut Datapath, role: Role, client: &str, port: u16, service: u16) {
    let steps = [
        (I, tcp4(client, G4, port, service, SYN, 100, 0)),
        (E, tcp4(G4, client, service, port, SYN_ACK, 900, 101)),
        (I, tcp4(client, G4, port, service, ACK, 101, 901)),
        (E, greeting4(G4, client, service, port, 901, 101)),
    ];
    for (direction, frame) in steps {
        assert_eq!(
            run(dp, role, direction, &frame),
            action::PASS,
            "handshake {client}:{port} -> {service}"
        );
    }
}

/// The established session still carries data both ways.
fn session_lives(dp: &mut Datapath, role: Role, client: &str, port: u16, service: u16, what: &str) {
    let before = count(dp, role, I, Verdict::Pass, Reason::Tracked);
    let data_in = tcp4(client, G4, port, service, ACK | 0x08, 101, 901);
    let data_out = tcp4(G4, client, service, port, ACK | 0x08, 901, 102);
    assert_eq!(
        run(dp, role, I, &data_in),
        action::PASS,
        "{what}: data in dropped"
    );
    assert_eq!(
        run(dp, role, E, &data_out),
        action::PASS,
        "{what}: data out dropped"
    );
    assert_eq!(
        count(dp, role, I, Verdict::Pass, Reason::Tracked),
        before + 1,
        "{what}: not tracked"
    );
}

/// A TCP SYN frame from an IPv6 source whose last 4 bytes are patched per packet.
struct SynFlood {
    frame: Vec<u8>,
}

impl SynFlood {
    fn new(dport: u16) -> SynFlood {
        SynFlood {
            frame: ipv6(
                proto::TCP,
                "2001:db8:2::",
                G6,
                &tcp_seq(40000, dport, SYN, 1, 0, 1000),
            ),
        }
    }

    /// The frame from source number `i`.
    fn from(&mut self, i: u32) -> &[u8] {
        // Ethernet 14 + IPv6 source at 8..24: the last 4 bytes of the source.
        self.frame[14 + 20..14 + 24].copy_from_slice(&i.to_be_bytes());
        &self.frame
    }
}

#[test]
fn established_sessions_survive_a_million_new_flows() {
    let mut dp = datapath();
    handshake(&mut dp, B, "192.0.2.50", 33000, 3306);
    handshake(&mut dp, M, "203.0.113.5", 50000, 22);
    let n = flood_size();

    let mut flood = SynFlood::new(3306);
    let start = Instant::now();
    for i in 0..n {
        let frame = flood.from(i).to_vec();
        assert_eq!(run(&mut dp, B, I, &frame), action::PASS, "flood SYN {i}");
    }
    let took = start.elapsed();
    println!(
        "{n} SYNs from {n} sources on the business NIC in {took:.1?} ({:.0}/s)",
        f64::from(n) / took.as_secs_f64()
    );
    session_lives(
        &mut dp,
        B,
        "192.0.2.50",
        33000,
        3306,
        "database session after the SYN flood",
    );
    session_lives(
        &mut dp,
        M,
        "203.0.113.5",
        50000,
        22,
        "SSH session after the SYN flood",
    );
    assert_eq!(
        count(&dp, B, I, Verdict::Pass, Reason::Allowed),
        u64::from(n) + 1,
        "every flood SYN was a new allowed flow"
    );
    let est = dp.flows(B, Table::Established).expect("flows").len();
    assert_eq!(est, 1, "the flood promoted flows: {est} established");
    let new = dp.flows(B, Table::New).expect("flows").len();
    assert!(
        new <= trove_isolate_common::conntrack::NEW_MAX_ENTRIES as usize,
        "{new}"
    );

    // A million datagrams at the DHCP client port from every on-link source: passed without
    // tracking, never into a table.
    let mut dhcp = ipv4(V4_PLAIN, proto::UDP, "192.0.2.254", G4, &udp(67, 68));
    let start = Instant::now();
    for i in 0..n {
        dhcp[14 + 12..14 + 16].copy_from_slice(&(0xc000_0200u32 | (i % 254 + 1)).to_be_bytes());
        run(&mut dp, M, I, &dhcp);
    }
    let took = start.elapsed();
    println!(
        "{n} datagrams at the DHCP port in {took:.1?} ({:.0}/s)",
        f64::from(n) / took.as_secs_f64()
    );
    assert_eq!(count(&dp, M, I, Verdict::Pass, Reason::Dhcp), u64::from(n));
    for table in Table::ALL {
        let flows = dp.flows(M, table).expect("flows").len();
        assert_eq!(
            flows,
            usize::from(table == Table::Established),
            "management {table:?}"
        );
    }
    session_lives(
        &mut dp,
        B,
        "192.0.2.50",
        33000,
        3306,
        "database session after the DHCP flood",
    );
    session_lives(
        &mut dp,
        M,
        "203.0.113.5",
        50000,
        22,
        "SSH session after the DHCP flood",
    );
}

/// The four frames of a handshake from IPv6 source 2001:db8:2::`i` and the guest's first
/// segment, a greeting with data (the one that establishes the flow).
fn handshake6(syn: &mut SynFlood, i: u32) -> [(Direction, Vec<u8>); 4] {
    let s = syn.from(i).to_vec();
    let mut synack = ipv6(
        proto::TCP,
        G6,
        "2001:db8:2::",
        &tcp_seq(3306, 40000, SYN_ACK, 900, 2, 1000),
    );
    synack[14 + 36..14 + 40].copy_from_slice(&i.to_be_bytes());
    // The SYN made the client's ACK of the SYN-ACK: all the guest sent.
    let mut ack = s.clone();
    ack[14 + 40 + 8..14 + 40 + 12].copy_from_slice(&901u32.to_be_bytes());
    ack[14 + 40 + 13] = ACK;
    let segment = tcp_data(3306, 40000, ACK | 0x08, (901, 2), 1000, b"greeting");
    let mut greeting = ipv6(proto::TCP, G6, "2001:db8:2::", &segment);
    greeting[14 + 36..14 + 40].copy_from_slice(&i.to_be_bytes());
    [(I, s), (E, synack), (I, ack), (E, greeting)]
}

/// Where both of a key's buckets are full, TCP over IPv4's new table gives up the least recently
/// seen of their eight flows, in either bucket. A table of two buckets (four flows' room: eight
/// slots) and tuples whose two buckets differ, so that every flow is every other's rival; their
/// SYNs a clock tick or more apart: each past the eighth takes the oldest's place, and the seven
/// younger keep theirs. (The rule before, the older of two slots picked by the clock, failed it
/// in three runs of three, and the rule with its two buckets' places swapped in two of two.)
#[test]
fn a_full_new_table_gives_up_its_least_recently_seen_flow() {
    let mut dp = datapath_sized(None, |c| c.ct_new = 4);
    let header = dp.tcp4_header(B, Table::New).expect("header");
    assert_eq!(header.buckets, 2, "{header:?}");
    let client = "198.51.100.10";
    let word = |a: &str| u32::from_ne_bytes(a.parse::<std::net::Ipv4Addr>().expect("ip").octets());
    let ports: Vec<u16> = (40_000u16..)
        .filter(|&port| {
            let key = FlowKey4 {
                local: word(G4),
                remote: word(client),
                local_port: 3306u16.to_be(),
                remote_port: port.to_be(),
            };
            let (a, b) = Bucket4::buckets(&key, header.seed, header.buckets);
            a != b
        })
        .take(20)
        .collect();
    // Longer than a jiffy at any HZ. The flows are read from the table: a packet of a tracked
    // flow could stamp it again.
    let apart = std::time::Duration::from_millis(25);
    for (i, &port) in ports.iter().enumerate() {
        let syn = tcp4(client, G4, port, 3306, SYN, 100, 0);
        assert_eq!(run(&mut dp, B, I, &syn), action::PASS, "SYN {i}");
        let tracked: BTreeSet<u16> = dp
            .flows(B, Table::New)
            .expect("flows")
            .iter()
            .map(|(key, _)| u16::from_be(key.remote_port))
            .collect();
        let expected: BTreeSet<u16> = ports[i.saturating_sub(7)..=i].iter().copied().collect();
        assert_eq!(tracked, expected, "flows tracked after SYN {i}");
        std::thread::sleep(apart);
    }
}

/// When the established table is full, a completed handshake is refused (`conntrack_full`) and
/// no established flow is evicted; the management NIC's tables, and the other family's, are
/// their own.
#[test]
fn a_full_established_table_refuses_and_never_evicts() {
    let mut dp = datapath();
    handshake(&mut dp, B, "192.0.2.50", 33000, 3306);
    handshake(&mut dp, M, "203.0.113.5", 50000, 22);
    // The IPv6 table, filled: handshakes from IPv6 sources 2001:db8:2::i.
    let fill = EST_MAX_ENTRIES;
    let start = Instant::now();
    let mut syn = SynFlood::new(3306);
    for i in 0..fill {
        for (direction, frame) in handshake6(&mut syn, i) {
            assert_eq!(
                run(&mut dp, B, direction, &frame),
                action::PASS,
                "handshake {i}"
            );
        }
    }
    println!("{fill} handshakes in {:.1?}", start.elapsed());
    // Read in batches: every flow once.
    let start = Instant::now();
    let flows = dp.flows(B, Table::Established).expect("flows");
    println!("{} flows read in {:.1?}", flows.len(), start.elapsed());
    assert_eq!(flows.len(), EST_MAX_ENTRIES as usize + 1);
    let mut keys: Vec<_> = flows.iter().map(|(k, _)| k.remote).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), flows.len(), "a flow read twice");
    // One more: its handshake completes on the wire, but the guest's first segment, which would
    // establish it, is refused.
    let before = count(&dp, B, E, Verdict::Drop, Reason::ConntrackFull);
    let extra = handshake6(&mut syn, fill);
    let wants = [action::PASS, action::PASS, action::PASS, action::DROP];
    for (i, ((direction, frame), want)) in extra.iter().zip(wants).enumerate() {
        assert_eq!(
            run(&mut dp, B, *direction, frame),
            want,
            "step {i} of the extra flow"
        );
    }
    assert_eq!(
        count(&dp, B, E, Verdict::Drop, Reason::ConntrackFull),
        before + 1
    );
    // The client's next segment may pose as a session older than enforcement and reach the
    // guest, but the guest's answer is what would establish it, and that is refused again.
    run(&mut dp, B, I, &extra[2].1);
    assert_eq!(
        run(&mut dp, B, E, &extra[3].1),
        action::DROP,
        "the refused flow carries nothing back"
    );
    assert_eq!(
        count(&dp, B, E, Verdict::Drop, Reason::ConntrackFull),
        before + 2
    );
    // IPv4 flows have a table of their own.
    handshake(&mut dp, B, "192.0.2.60", 33001, 3306);
    session_lives(
        &mut dp,
        B,
        "192.0.2.60",
        33001,
        3306,
        "a new IPv4 session with the IPv6 table full",
    );
    session_lives(
        &mut dp,
        B,
        "192.0.2.50",
        33000,
        3306,
        "database session with the IPv6 table full",
    );
    session_lives(
        &mut dp,
        M,
        "203.0.113.5",
        50000,
        22,
        "SSH session with the business table full",
    );
    handshake(&mut dp, M, "203.0.113.6", 50001, 22);
    session_lives(
        &mut dp,
        M,
        "203.0.113.6",
        50001,
        22,
        "a new SSH session with the business table full",
    );
}

/// Connection churn: more connections than the established table holds open, greet and close
/// one after another (a client that reconnects for every query; a server that greets and hangs
/// up; a client that never answers the server's FIN). Each gives its established slot back once
/// the guest is done with it, or never takes one, so none is refused, and the table holds only
/// what the guest holds open.
#[test]
fn connection_churn_never_fills_the_established_table() {
    let mut dp = datapath();
    handshake(&mut dp, B, "192.0.2.50", 33000, 3306);
    let n = EST_MAX_ENTRIES + 4_096;
    let start = Instant::now();
    for i in 0..n {
        let client = format!("198.51.100.{}", i % 250 + 2);
        let port = 10_000 + (i / 250) as u16;
        let c = |flags, seq, ack| tcp4(&client, G4, port, 3306, flags, seq, ack);
        let s = |flags, seq, ack| tcp4(G4, &client, 3306, port, flags, seq, ack);
        let greeting = greeting4(G4, &client, 3306, port, 901, 101);
        // A third of the servers greet and hang up in one segment, before the flow is proved; a
        // third of the clients never answer the server's FIN.
        let steps = if i % 3 == 0 {
            [
                (I, c(SYN, 100, 0)),
                (E, s(SYN_ACK, 900, 101)),
                (I, c(ACK, 101, 901)),
                (E, greeting.clone()),
                (I, c(FIN | ACK, 101, 911)),
                (E, s(FIN | ACK, 911, 102)),
                (I, c(ACK, 102, 912)),
            ]
        } else if i % 3 == 1 {
            [
                (I, c(SYN, 100, 0)),
                (E, s(SYN_ACK, 900, 101)),
                (I, c(ACK, 101, 901)),
                (E, s(FIN | ACK | 0x08, 901, 101)),
                (I, c(ACK, 101, 912)),
                (I, c(FIN | ACK, 101, 912)),
                (E, s(ACK, 912, 102)),
            ]
        } else {
            [
                (I, c(SYN, 100, 0)),
                (E, s(SYN_ACK, 900, 101)),
                (I, c(ACK, 101, 901)),
                (E, greeting),
                (E, s(FIN | ACK, 911, 101)),
                (I, c(ACK, 101, 912)),
                (E, s(FIN | ACK, 911, 101)),
            ]
        };
        for (step, (direction, frame)) in steps.iter().enumerate() {
            assert_eq!(
                run(&mut dp, B, *direction, frame),
                action::PASS,
                "connection {i}, step {step}"
            );
        }
    }
    println!(
        "{n} connections opened and closed in {:.1?}",
        start.elapsed()
    );
    assert_eq!(count(&dp, B, E, Verdict::Drop, Reason::ConntrackFull), 0);
    let est = dp.flows(B, Table::Established).expect("flows");
    assert_eq!(est.len(), 1, "only the open session holds a slot");
    session_lives(
        &mut dp,
        B,
        "192.0.2.50",
        33000,
        3306,
        "database session after the churn",
    );
    handshake(&mut dp, B, "192.0.2.51", 33001, 3306);
    session_lives(
        &mut dp,
        B,
        "192.0.2.51",
        33001,
        3306,
        "a new session after the churn",
    );
}

/// The sweep never removes a flow the datapath refreshes while it walks the tables. Here a
/// thread stamps an established flow's entry with the clock as fast as it can, as the datapath
/// does on the flow's packets, while the sweep runs again and again for two seconds: a sweep
/// that read its clock before the walk, with stamps ahead of a reader's clock taken for a whole
/// wrap of it old, found an entry stamped after that reading expired, and removed the live flow
/// (on a daemon's first sweep, over tables full of live flows, it did). Either the clock read
/// after the walk or the stamps ahead taken as just made (`conntrack::age`) keeps it.
#[test]
fn a_sweep_never_removes_a_flow_refreshed_while_it_walks() {
    use aya::maps::{Map, MapData};
    use std::sync::atomic::{AtomicBool, Ordering};
    use trove_isolate_common::{conntrack::Keying, flow_table::Bucket4};

    struct Removed(std::path::PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let root =
        std::path::PathBuf::from(format!("/sys/fs/bpf/ti-test-sweep-{}", std::process::id()));
    let _removed = Removed(root.clone());
    let pins = Pins::new(&root);
    let mut dp = datapath_at(Some(&pins));
    handshake(&mut dp, B, "192.0.2.50", 33000, 3306);
    let flows = |dp: &Datapath| dp.flows(B, Table::Established).expect("flows").len();
    assert_eq!(flows(&dp), 1);

    let path = pins.map(Table::Established.map_name(B, Keying::Tcp4));
    let data = MapData::from_pin(&path).expect("the pinned established table");
    let table = Map::Array(data);
    let (key, _) = trove_isolate::flow_tables::live::<Bucket4>(&table)
        .expect("reading the table")
        .into_iter()
        .next()
        .expect("the flow");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stamping = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut stamps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = trove_isolate::conntrack::monotonic_ns().expect("clock");
                // Only over the flow as it is: the sweep may have removed it.
                let stamped =
                    trove_isolate::flow_tables::update::<Bucket4>(&table, &key, |v| v.stamp(now))
                        .expect("stamping the flow");
                if !stamped {
                    break;
                }
                stamps += 1;
            }
            stamps
        })
    };
    let until = Instant::now() + std::time::Duration::from_secs(2);
    let mut sweeps = 0;
    while Instant::now() < until && flows(&dp) == 1 {
        conntrack::sweep(&mut dp).expect("sweep");
        sweeps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let stamps = stamping.join().expect("the stamping thread");
    println!("{sweeps} sweeps while the flow was stamped {stamps} times");
    assert_eq!(
        flows(&dp),
        1,
        "a sweep removed a live flow (after {sweeps} sweeps)"
    );
    assert!(
        sweeps > 10 && stamps > 10,
        "{sweeps} sweeps, {stamps} stamps"
    );
}
