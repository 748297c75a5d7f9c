//! Per-packet cost through BPF_PROG_TEST_RUN (`cargo xtask bench` runs this, as root): an empty
//! TC program and each path of ours on both roles, measured in one process, as ns per packet
//! and as a ratio to the empty program. The median of several runs of many repeats each; logs
//! off. Prints a Markdown table; `--json FILE` writes the numbers too.

#[path = "../tests/packets/frame.rs"]
#[allow(dead_code)]
mod frame;

use std::path::Path;

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use frame::*;
use ipnetwork::IpNetwork;
use trove_isolate::{config::Config, datapath::Datapath, local, policy::Policy};
use trove_isolate_common::{action, proto, Direction, Role};

const CONFIG: &str = r#"
[management]
interface = "mgmt0"
rabbitmq = ["192.0.2.10:5672"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24"]
[business]
interface = "eth0"
database_ports = [3306]
clients = ["198.51.100.0/24"]
"#;

struct Options {
    repeat: u32,
    runs: usize,
    json: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        repeat: 200_000,
        runs: 5,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context(format!("{arg} needs a value"));
        match arg.as_str() {
            "--repeat" => o.repeat = value()?.parse()?,
            "--runs" => o.runs = value()?.parse()?,
            "--json" => o.json = Some(value()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// Median ns per packet of `runs` runs of `repeat` repetitions.
fn measure(program: &mut SchedClassifier, frame: &[u8], o: &Options) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(o.runs);
    for _ in 0..o.runs {
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: o.repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        // The kernel reports the mean per repetition.
        samples.push(result.duration.as_secs_f64() * 1e9);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn run_once(
    dp: &mut Datapath,
    role: Role,
    direction: Direction,
    frame: &[u8],
) -> anyhow::Result<()> {
    dp.program(role, direction)
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN (setting up a flow)")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let path = Path::new("bench.toml");
    let policy = Policy::from_config_with(
        &Config::parse(CONFIG, path)?,
        path,
        &trove_isolate::resolve::NoNames,
    )?;
    let mut dp = Datapath::load(None, false).context("loading the datapath (root, BPF)")?;
    dp.sync_policy(&policy.entries())?;
    let nets: Vec<IpNetwork> = ["192.0.2.1/24", "2001:db8:1::1/64", "fe80::1/64"]
        .iter()
        .map(|n| n.parse().expect("net"))
        .collect();
    let mut entries = local::entries(Role::Management, &nets);
    entries.extend(local::entries(Role::Business, &nets));
    dp.sync_local(&entries)?;

    let (m, b) = (Role::Management, Role::Business);
    let (i, e) = (Direction::Ingress, Direction::Egress);
    let v4 = |src: &str, dst: &str, sport, dport, flags| {
        ipv4(V4_PLAIN, proto::TCP, src, dst, &tcp(sport, dport, flags))
    };
    // An outbound flow to RabbitMQ, established by the guest's handshake.
    run_once(
        &mut dp,
        m,
        e,
        &v4("192.0.2.1", "192.0.2.10", 40000, 5672, SYN),
    )?;
    run_once(
        &mut dp,
        m,
        i,
        &v4("192.0.2.10", "192.0.2.1", 5672, 40000, SYN_ACK),
    )?;
    run_once(
        &mut dp,
        m,
        e,
        &v4("192.0.2.1", "192.0.2.10", 40000, 5672, ACK),
    )?;
    // An inbound database session, established by the guest's answer and first segment.
    run_once(
        &mut dp,
        b,
        i,
        &v4("198.51.100.7", "192.0.2.1", 50000, 3306, SYN),
    )?;
    run_once(
        &mut dp,
        b,
        e,
        &v4("192.0.2.1", "198.51.100.7", 3306, 50000, SYN_ACK),
    )?;
    run_once(
        &mut dp,
        b,
        i,
        &v4("198.51.100.7", "192.0.2.1", 50000, 3306, ACK),
    )?;
    run_once(
        &mut dp,
        b,
        e,
        &v4("192.0.2.1", "198.51.100.7", 3306, 50000, ACK),
    )?;

    // Two destination-options headers (next header 60), 8 bytes each.
    let ext = [(60u8, ext8()), (60u8, ext8())];
    let cases: Vec<(&str, Role, Direction, Vec<u8>)> = vec![
        (
            "management: established, reply in",
            m,
            i,
            v4("192.0.2.10", "192.0.2.1", 5672, 40000, ACK),
        ),
        (
            "management: established, out",
            m,
            e,
            v4("192.0.2.1", "192.0.2.10", 40000, 5672, ACK),
        ),
        (
            "business: established, in",
            b,
            i,
            v4("198.51.100.7", "192.0.2.1", 50000, 3306, ACK),
        ),
        (
            "business: established, reply out",
            b,
            e,
            v4("192.0.2.1", "198.51.100.7", 3306, 50000, ACK),
        ),
        (
            "management: new flow denied (SYN, no rule)",
            m,
            i,
            v4("192.0.2.99", "192.0.2.1", 40001, 3306, SYN),
        ),
        (
            "business: new flow denied (SYN, no rule)",
            b,
            i,
            v4("203.0.113.9", "192.0.2.1", 40002, 3306, SYN),
        ),
        (
            "management: unsolicited ACK",
            m,
            i,
            v4("192.0.2.99", "192.0.2.1", 40003, 22, ACK),
        ),
        (
            "business: IPv6 + 2 extension headers, denied",
            b,
            i,
            ipv6_ext(
                proto::TCP,
                &ext,
                "2001:db8:1::99",
                "2001:db8:1::1",
                &tcp(40004, 22, SYN),
            ),
        ),
        (
            "business: IPv6 SYN denied, no extension headers",
            b,
            i,
            ipv6(
                proto::TCP,
                "2001:db8:1::99",
                "2001:db8:1::1",
                &tcp(40005, 22, SYN),
            ),
        ),
    ];

    let empty_frame = v4("192.0.2.10", "192.0.2.1", 5672, 40000, ACK);
    let empty = measure(dp.bench_program("bench_empty")?, &empty_frame, &o)?;
    let mut rows = vec![("empty TC program (r0 = -1; exit)".to_owned(), empty, 1.0)];
    // Stages alone, on the established flow's reply: where the time goes.
    for (name, program) in [
        ("stage: parse only", "bench_parse"),
        (
            "stage: parse + flow key + established-table lookup",
            "bench_lookup",
        ),
        ("stage: the clock (bpf_ktime_get_ns)", "bench_clock"),
        (
            "stage: the coarse clock (bpf_ktime_get_coarse_ns)",
            "bench_clock_coarse",
        ),
        ("stage: one counter update", "bench_count"),
    ] {
        let program = dp.bench_program(program)?;
        let verdict = program
            .test_run(TestRunOptions {
                data_in: Some(&empty_frame),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?
            .return_value as i32;
        anyhow::ensure!(
            verdict == action::PASS,
            "{name}: the stage returned {verdict}"
        );
        let ns = measure(program, &empty_frame, &o)?;
        rows.push((name.to_owned(), ns, ns / empty));
    }
    for (name, role, direction, frame) in &cases {
        // Each case must take the path it names: established ones pass, the rest are dropped.
        let program = dp.program(*role, *direction);
        let verdict = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?
            .return_value as i32;
        let want = if name.contains("established") {
            action::PASS
        } else {
            action::DROP
        };
        anyhow::ensure!(
            verdict == want,
            "{name}: the program returned {verdict}, not {want}"
        );
        let ns = measure(program, frame, &o)?;
        rows.push(((*name).to_owned(), ns, ns / empty));
    }

    println!("| path | ns/packet | × empty |");
    println!("|---|---:|---:|");
    for (name, ns, ratio) in &rows {
        println!("| {name} | {ns:.1} | {ratio:.2} |");
    }
    println!(
        "\n(median of {} runs of {} repetitions each; BPF_PROG_TEST_RUN, logs off)",
        o.runs, o.repeat
    );
    if let Some(path) = &o.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, ns, ratio)| serde_json::json!({"path": name, "ns": ns, "ratio": ratio}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
