//! Section 1: the per-packet cost of each path through BPF_PROG_TEST_RUN, against the object's
//! empty classifier measured in the same process. Logs and drop events are off.

use std::time::Duration;

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use ipnetwork::IpNetwork;
use trove_isolate::{capacity::Capacity, datapath::Datapath, local, policy::Policy};
use trove_isolate_common::{action, proto, Direction, Role};

use crate::{frame::*, Options, Row};

/// A program of the datapath a row runs: a role's, or a bench stage (never attached).
#[derive(Clone, Copy)]
pub enum Target {
    Role(Role, Direction),
    Stage(&'static str),
}

impl Target {
    fn program(self, dp: &mut Datapath) -> anyhow::Result<&mut SchedClassifier> {
        match self {
            Target::Role(role, direction) => Ok(dp.program(role, direction)),
            Target::Stage(name) => dp.bench_program(name),
        }
    }
}

/// A row to measure: the program, the frame it runs on and the action it must return.
pub struct Probe {
    pub name: &'static str,
    pub target: Target,
    pub frame: Vec<u8>,
    pub want: i32,
}

impl Probe {
    pub fn new(name: &'static str, target: Target, frame: Vec<u8>, want: i32) -> Probe {
        Probe {
            name,
            target,
            frame,
            want,
        }
    }

    /// The empty program on the established flow's reply: the yardstick.
    pub fn empty(name: &'static str) -> Probe {
        Probe::new(
            name,
            Target::Stage("bench_empty"),
            reply_frame(),
            action::PASS,
        )
    }
}

/// A path of the datapath: the frame that takes it and the verdict it must give.
pub struct Case {
    pub name: &'static str,
    pub role: Role,
    pub direction: Direction,
    pub frame: Vec<u8>,
    pub pass: bool,
}

fn v4(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(V4_PLAIN, proto::TCP, src, dst, &tcp(sport, dport, flags))
}

fn v6(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv6(proto::TCP, src, dst, &tcp(sport, dport, flags))
}

/// The remote addresses the cases use: a generated policy must not cover them.
pub const PROBED: [&str; 7] = [
    "192.0.2.10",
    "192.0.2.99",
    "198.51.100.7",
    "198.51.100.8",
    "203.0.113.9",
    "2001:db8:1::99",
    "2001:db8:2::7",
];

/// Loads the datapath with `policy`, the NICs' addresses, and three TCP flows set up through
/// their real handshakes: one to RabbitMQ, an inbound database session over IPv4 and one over
/// IPv6.
pub fn prepare(policy: &Policy) -> anyhow::Result<Datapath> {
    let mut dp = Datapath::load(None, false, &Capacity::for_policy(policy))
        .context("loading the datapath (root, BPF)")?;
    dp.sync_policy(policy)?;
    let nets: Vec<IpNetwork> = ["192.0.2.1/24", "2001:db8:1::1/64", "fe80::1/64"]
        .iter()
        .map(|n| n.parse().expect("net"))
        .collect();
    let mut entries = local::entries(Role::Management, &nets);
    entries.extend(local::entries(Role::Business, &nets));
    dp.sync_local(&entries)?;

    let (m, b) = (Role::Management, Role::Business);
    let (i, e) = (Direction::Ingress, Direction::Egress);
    // Each handshake's numbers add up (the opener's SYN at 100, the answer's at 900): only an
    // ACK of all the other side sent moves a handshake on.
    let tcp4 = |src, dst, sport, dport, flags, seq, ack| {
        ipv4(
            V4_PLAIN,
            proto::TCP,
            src,
            dst,
            &tcp_seq(sport, dport, flags, seq, ack, 0xffff),
        )
    };
    let tcp6 = |src, dst, sport, dport, flags, seq, ack| {
        ipv6(
            proto::TCP,
            src,
            dst,
            &tcp_seq(sport, dport, flags, seq, ack, 0xffff),
        )
    };
    // The guest's greeting on a flow the client opened: data, which promotes it (a bare ACK
    // proves no socket).
    let greeting = |sport, dport, seq, ack| {
        tcp_data(sport, dport, ACK | 0x08, (seq, ack), 0xffff, b"greeting!!")
    };
    let (g4, rabbit, client4) = ("192.0.2.1", "192.0.2.10", "198.51.100.7");
    let (g6, client6) = ("2001:db8:1::1", "2001:db8:2::7");
    for (role, direction, frame) in [
        (m, e, tcp4(g4, rabbit, 40000, 5672, SYN, 100, 0)),
        (m, i, tcp4(rabbit, g4, 5672, 40000, SYN_ACK, 900, 101)),
        (m, e, tcp4(g4, rabbit, 40000, 5672, ACK, 101, 901)),
        (b, i, tcp4(client4, g4, 50000, 3306, SYN, 100, 0)),
        (b, e, tcp4(g4, client4, 3306, 50000, SYN_ACK, 900, 101)),
        (b, i, tcp4(client4, g4, 50000, 3306, ACK, 101, 901)),
        (
            b,
            e,
            ipv4(
                V4_PLAIN,
                proto::TCP,
                g4,
                client4,
                &greeting(3306, 50000, 901, 101),
            ),
        ),
        (b, i, tcp6(client6, g6, 50000, 3306, SYN, 100, 0)),
        (b, e, tcp6(g6, client6, 3306, 50000, SYN_ACK, 900, 101)),
        (b, i, tcp6(client6, g6, 50000, 3306, ACK, 101, 901)),
        (
            b,
            e,
            ipv6(proto::TCP, g6, client6, &greeting(3306, 50000, 901, 101)),
        ),
    ] {
        verdict(dp.program(role, direction), &frame).context("setting up a flow")?;
    }
    for role in [m, b] {
        anyhow::ensure!(
            !dp.flows(role, trove_isolate::datapath::Table::Established)?
                .is_empty(),
            "setting up the flows: none established"
        );
    }
    Ok(dp)
}

pub fn cases() -> Vec<Case> {
    let (m, b) = (Role::Management, Role::Business);
    let (i, e) = (Direction::Ingress, Direction::Egress);
    // Two destination-options headers (next header 60), 8 bytes each.
    let ext = [(60u8, ext8()), (60u8, ext8())];
    let case = |name, role, direction, frame, pass| Case {
        name,
        role,
        direction,
        frame,
        pass,
    };
    vec![
        case(
            "management: established, reply in",
            m,
            i,
            v4("192.0.2.10", "192.0.2.1", 5672, 40000, ACK),
            true,
        ),
        case(
            "management: established, out",
            m,
            e,
            v4("192.0.2.1", "192.0.2.10", 40000, 5672, ACK),
            true,
        ),
        case(
            "business: established, in",
            b,
            i,
            v4("198.51.100.7", "192.0.2.1", 50000, 3306, ACK),
            true,
        ),
        case(
            "business: IPv6 established, in",
            b,
            i,
            v6("2001:db8:2::7", "2001:db8:1::1", 50000, 3306, ACK),
            true,
        ),
        case(
            "business: established, reply out",
            b,
            e,
            v4("192.0.2.1", "198.51.100.7", 3306, 50000, ACK),
            true,
        ),
        case(
            "business: new flow allowed (a SYN; repeats find it in the new table)",
            b,
            i,
            v4("198.51.100.8", "192.0.2.1", 40010, 3306, SYN),
            true,
        ),
        case(
            "business: new flow allowed, a SYN with Linux's options (repeats as above)",
            b,
            i,
            ipv4(
                V4_PLAIN,
                proto::TCP,
                "198.51.100.8",
                "192.0.2.1",
                &tcp_opts(40011, 3306, SYN, 1, 0, 64240, &linux_syn_options(7)),
            ),
            true,
        ),
        case(
            "management: new flow denied (SYN, no rule)",
            m,
            i,
            v4("192.0.2.99", "192.0.2.1", 40001, 3306, SYN),
            false,
        ),
        case(
            "business: new flow denied (SYN, no rule)",
            b,
            i,
            v4("203.0.113.9", "192.0.2.1", 40002, 3306, SYN),
            false,
        ),
        case(
            "business: new flow denied, a SYN with Linux's options",
            b,
            i,
            ipv4(
                V4_PLAIN,
                proto::TCP,
                "203.0.113.9",
                "192.0.2.1",
                &tcp_opts(40007, 3306, SYN, 1, 0, 64240, &linux_syn_options(7)),
            ),
            false,
        ),
        case(
            "management: unsolicited ACK",
            m,
            i,
            v4("192.0.2.99", "192.0.2.1", 40003, 22, ACK),
            false,
        ),
        case(
            "business: IPv6 unsolicited ACK",
            b,
            i,
            v6("2001:db8:1::99", "2001:db8:1::1", 40006, 3306, ACK),
            false,
        ),
        case(
            "business: IPv6 + 2 extension headers, denied",
            b,
            i,
            ipv6_ext(
                proto::TCP,
                &ext,
                "2001:db8:1::99",
                "2001:db8:1::1",
                &tcp(40004, 3306, SYN),
            ),
            false,
        ),
        case(
            "business: IPv6 SYN denied, no extension headers",
            b,
            i,
            ipv6(
                proto::TCP,
                "2001:db8:1::99",
                "2001:db8:1::1",
                &tcp(40005, 3306, SYN),
            ),
            false,
        ),
    ]
}

/// A client's SYN with the options Linux sends (window scale 7).
fn linux_syn_frame() -> Vec<u8> {
    ipv4(
        V4_PLAIN,
        proto::TCP,
        "198.51.100.8",
        "192.0.2.1",
        &tcp_opts(40012, 3306, SYN, 1, 0, 64240, &linux_syn_options(7)),
    )
}

/// The frame of the new-flow decision stage: an allowed client's SYN to the database port.
pub fn decide_frame() -> Vec<u8> {
    v4("198.51.100.8", "192.0.2.1", 40020, 3306, SYN)
}

/// The stage that decides a new flow (policy and own-address lookups, no flow tables) on an
/// allowed client's SYN.
pub fn decision() -> Probe {
    Probe::new(
        "stage: a new flow's decision (parse, policy and own-address lookups)",
        Target::Stage("bench_decide"),
        decide_frame(),
        action::PASS,
    )
}

impl Case {
    pub fn probe(&self) -> Probe {
        let want = if self.pass {
            action::PASS
        } else {
            action::DROP
        };
        Probe::new(
            self.name,
            Target::Role(self.role, self.direction),
            self.frame.clone(),
            want,
        )
    }
}

/// Sets the programs' clock as the daemon does in its first seconds: read off jiffies (about a
/// second: the kernel's tick is measured over 250 jiffies).
pub fn set_clock(dp: &mut Datapath) -> anyhow::Result<()> {
    if dp.calibrate_clock(Duration::from_secs(5))?.is_none() {
        eprintln!("bench: the kernel's tick was not measured: the programs call the coarse clock");
    }
    Ok(())
}

/// The frame the empty program and the stages run on: the established flow's reply.
pub fn reply_frame() -> Vec<u8> {
    v4("192.0.2.10", "192.0.2.1", 5672, 40000, ACK)
}

/// One run of the program on the frame: its return value.
pub fn verdict(program: &mut SchedClassifier, frame: &[u8]) -> anyhow::Result<i32> {
    Ok(program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?
        .return_value as i32)
}

/// Each probe checked to take its path (to return the action it wants), then measured in
/// `o.runs` rounds of `o.repeat` repetitions, each round running every probe once in turn: a
/// slow moment of the machine falls on every row alike, rather than on the rows it happens to
/// meet, so the rows' ratios hold within one run. The first probe is the yardstick (the empty
/// program): each row's median ns per packet, and its ratio to the yardstick's median.
pub fn measure(dp: &mut Datapath, probes: &[Probe], o: &Options) -> anyhow::Result<Vec<Row>> {
    for p in probes {
        let got = verdict(p.target.program(dp)?, &p.frame)?;
        anyhow::ensure!(
            got == p.want,
            "{}: the program returned {got}, not {}",
            p.name,
            p.want
        );
    }
    let mut samples = vec![Vec::with_capacity(o.runs); probes.len()];
    for _ in 0..o.runs {
        for (p, samples) in probes.iter().zip(&mut samples) {
            let result = p
                .target
                .program(dp)?
                .test_run(TestRunOptions {
                    data_in: Some(&p.frame),
                    repeat: o.repeat,
                    ..Default::default()
                })
                .context("BPF_PROG_TEST_RUN")?;
            // The kernel reports the mean per repetition.
            samples.push(result.duration.as_secs_f64() * 1e9);
        }
    }
    let medians: Vec<f64> = samples.into_iter().map(crate::median).collect();
    let empty = medians[0];
    Ok(probes
        .iter()
        .zip(medians)
        .map(|(p, ns)| Row::new(p.name, ns, empty))
        .collect())
}

/// The frames of connection number `i` through the business NIC, each with the direction it
/// crosses: the handshake (with the options a Linux SYN carries), the guest's greeting (which establishes the flow), a request, and
/// the close (0x08: PSH). Each connection has a tuple of its own.
fn connection(i: u32) -> Vec<(Direction, Vec<u8>)> {
    let client = format!("198.51.100.{}", 10 + i / 50_000);
    let port = 10_000 + (i % 50_000) as u16;
    let (c, g) = (client.as_str(), "192.0.2.1");
    let seg = |src: &str, dst: &str, sport, dport, flags, seq, ack| {
        ipv4(
            V4_PLAIN,
            proto::TCP,
            src,
            dst,
            &tcp_seq(sport, dport, flags, seq, ack, 1000),
        )
    };
    // The SYN and SYN-ACK carry the options Linux sends.
    let open = |src: &str, dst: &str, sport, dport, flags, seq, ack| {
        let opts = linux_syn_options(7);
        let l4 = tcp_opts(sport, dport, flags, seq, ack, 64240, &opts);
        ipv4(V4_PLAIN, proto::TCP, src, dst, &l4)
    };
    // The guest's greeting: 10 bytes, which promote the flow.
    let greeting = tcp_data(3306, port, ACK | 0x08, (901, 101), 1000, b"greeting!!");
    let greeting = ipv4(V4_PLAIN, proto::TCP, g, c, &greeting);
    let (i, e) = (Direction::Ingress, Direction::Egress);
    vec![
        (i, open(c, g, port, 3306, SYN, 100, 0)),
        (e, open(g, c, 3306, port, SYN_ACK, 900, 101)),
        (i, seg(c, g, port, 3306, ACK, 101, 901)),
        (e, greeting),
        (i, seg(c, g, port, 3306, ACK | 0x08, 101, 911)),
        (e, seg(g, c, 3306, port, FIN | ACK, 911, 111)),
        (i, seg(c, g, port, 3306, FIN | ACK, 111, 912)),
        (e, seg(g, c, 3306, port, ACK, 912, 112)),
    ]
}

/// A whole connection's cost: `count` connections (each on a tuple of its own, so each meets
/// empty flow-table slots and is inserted, promoted and closed) through the business NIC's
/// programs, one BPF_PROG_TEST_RUN per frame, the kernel's time summed; then the same frames
/// through the empty program. ns per connection, ours and the empty program's.
pub fn measure_connections(dp: &mut Datapath, count: u32) -> anyhow::Result<(f64, f64)> {
    let run_once = |program: &mut SchedClassifier, frame: &[u8]| -> anyhow::Result<(i32, f64)> {
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        Ok((
            result.return_value as i32,
            result.duration.as_secs_f64() * 1e9,
        ))
    };
    let (mut ours, mut empty) = (0.0, 0.0);
    for i in 0..count {
        for (direction, frame) in connection(i) {
            let (verdict, ns) = run_once(dp.program(Role::Business, direction), &frame)?;
            anyhow::ensure!(
                verdict == action::PASS,
                "connection {i}: a frame going {direction:?} was dropped"
            );
            ours += ns;
            empty += run_once(dp.bench_program("bench_empty")?, &frame)?.1;
        }
    }
    Ok((ours / f64::from(count), empty / f64::from(count)))
}

/// The section: the empty program, each stage alone, then every path, measured in rounds
/// together; then a whole connection.
pub fn run(policy: &Policy, o: &Options) -> anyhow::Result<Vec<Row>> {
    let mut dp = prepare(policy)?;
    set_clock(&mut dp)?;
    let mut probes = vec![Probe::empty("empty TC program (r0 = -1; exit)")];
    // Stages alone, on the established flow's reply: where the time goes.
    for (name, program) in [
        ("stage: parse only", "bench_parse"),
        (
            "stage: parse + flow key + established-table lookup",
            "bench_lookup",
        ),
        (
            "stage: parse + a lookup that misses the established table",
            "bench_miss",
        ),
        (
            "stage: parse + own-address check (the NIC's set, an array)",
            "bench_own",
        ),
        (
            "stage: parse + own-address lookup in the LPM trie",
            "bench_own_trie",
        ),
        ("stage: the clock (bpf_ktime_get_ns)", "bench_clock"),
        (
            "stage: the coarse clock (bpf_ktime_get_coarse_ns)",
            "bench_clock_coarse",
        ),
        ("stage: jiffies (bpf_jiffies64)", "bench_clock_jif"),
        ("stage: one counter update", "bench_count"),
    ] {
        probes.push(Probe::new(
            name,
            Target::Stage(program),
            reply_frame(),
            action::PASS,
        ));
    }
    // The one stage that differs between the families: parsing.
    let ext = ipv6_ext(
        proto::TCP,
        &[(60u8, ext8()), (60u8, ext8())],
        "2001:db8:1::99",
        "2001:db8:1::1",
        &tcp(40004, 3306, SYN),
    );
    probes.push(Probe::new(
        "stage: parse only, IPv6 with 2 extension headers",
        Target::Stage("bench_parse"),
        ext,
        action::PASS,
    ));
    // A handshake's read of a SYN's window scale (its SYN and SYN-ACK), on Linux's options.
    for (name, program) in [
        (
            "stage: parse + a SYN's window scale, Linux's options (read at fixed places)",
            "bench_wscale",
        ),
        (
            "stage: parse + a SYN's window scale, Linux's options walked an option at a time",
            "bench_wscale_walk",
        ),
    ] {
        probes.push(Probe::new(
            name,
            Target::Stage(program),
            linux_syn_frame(),
            action::PASS,
        ));
    }
    probes.push(decision());
    probes.push(Probe::new(
        "stage: a new IPv6 flow's decision (a client prefix of /48)",
        Target::Stage("bench_decide"),
        v6("2001:db8:2::8", "2001:db8:1::1", 40021, 3306, SYN),
        action::PASS,
    ));
    probes.extend(cases().iter().map(Case::probe));
    let mut rows = measure(&mut dp, &probes, o)?;
    let (ours, empty_connection) = measure_connections(&mut dp, o.repeat / 10)?;
    rows.push(Row::new(
        "business: a whole connection, 8 frames on a new tuple (ns per connection)",
        ours,
        empty_connection,
    ));
    Ok(rows)
}
