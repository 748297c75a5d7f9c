//! `cargo xtask bench`: what the datapath costs, as ratios measured in one run.

use std::path::Path;

use anyhow::Context as _;

use crate::{cargo_cmd, sh};

pub const ABOUT: &str =
    "Measure the datapath's cost: per packet, with the policy's size, on real traffic (root)";

pub const LONG_ABOUT: &str = "\
Measure the datapath's cost: per packet, with the policy's size, on real traffic (root).

Builds the release benchmark (trove-isolate/examples/bench) and the daemon, installs iperf3 and \
nftables from Debian if missing (services not started), and runs four sections, each a Markdown \
table on stdout with its numbers in target/bench/*.json:

1. Per-packet cost (per-packet.json): the eBPF object's empty classifier (`r0 = -1; exit`), each \
pipeline stage alone, and every path of ours on both roles (established both ways, a new flow \
allowed and denied, an unsolicited ACK, IPv6 with and without extension headers), through \
BPF_PROG_TEST_RUN in one process, logs and drop events off. Each figure is the median of 5 runs \
of 200,000 repetitions, in ns and as a ratio to the empty program of the same run. Last, a whole \
connection (8 frames) on each of 20,000 new tuples, against the empty program on the same frames.

2. Scaling (scaling.json): the paths a policy's size could slow, with 1 to 1,000,000 policy \
rules (IPv4 and IPv6, host addresses and shorter prefixes, generated from a fixed seed); where \
prefix expansion writes a policy at fewer prefix lengths, the same rules again at their own \
lengths.

3. Real traffic (traffic.json): a veth pair between two namespaces the bench makes, a tenant \
client and the guest's business NIC, with 100,000 client prefixes behind each filter: nothing, \
empty TC programs on both hooks (the hooks' own cost), trove-isolate, nftables with sets, a linear \
nftables chain. New TCP connections per second (connect and close; and greeted sessions, where the \
client reads the server's greeting before it closes, as a database client does), 64-byte frames per \
second and TCP throughput (iperf3), in 3 interleaved rounds.

4. The daemon: first what the kernel's verifier costs its start (verifier.json), each of the \
four programs loaded alone five times, the median load and the instructions the verifier \
processed; then (daemon.json) on a simulated guest with 10, 10,000 and 100,000 client prefixes, \
the time from start to enforced, a reload of the same config and one that replaces every prefix, \
and the daemon's memory (RSS); with 100,000 prefixes and a host name, its memory once a refresh \
of the name has applied a changed address (about a minute: the daemon's hosts file, its own copy, \
is read again every minute).

--quick runs fewer repetitions, sizes and rounds: about two minutes. Compare ratios, not absolute \
times. BENCHMARKS.md records a run with its machine and kernel.";

pub fn run(quick: bool) -> anyhow::Result<()> {
    sh::require_root("the benchmark loads BPF programs and makes network namespaces")?;
    for (tool, package) in [("iperf3", "iperf3"), ("nft", "nftables")] {
        if sh::output(tool, &["--version"]).is_none() {
            sh::apt_install(tool, &[package])?;
        }
    }
    cargo_cmd::cargo_quietly(&[
        "build",
        "--release",
        "--package",
        "trove-isolate",
        "--bin",
        "trove-isolate",
        "--example",
        "bench",
    ])?;
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let kernel = sh::output("uname", &["-r"]).unwrap_or_default();
    eprintln!("xtask: benchmarks on Linux {}", kernel.trim());
    let args: &[&str] = if quick {
        &[
            "--repeat",
            "50000",
            "--scaling",
            "1,11,10000,100000",
            "--traffic",
            "100000",
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--daemon",
            "10,100000",
        ]
    } else {
        &[
            "--repeat",
            "200000",
            "--scaling",
            "1,11,100,10000,100000,1000000",
            "--traffic",
            "100000",
            "--rounds",
            "3",
            "--seconds",
            "2",
            "--daemon",
            "10,10000,100000",
            "--refresh",
        ]
    };
    let mut all = vec![
        "--runs",
        "5",
        "--bin",
        "target/release/trove-isolate",
        "--out",
        "target/bench",
    ];
    all.extend_from_slice(args);
    sh::run("target/release/examples/bench", &all).context("running the benchmark")?;
    eprintln!("xtask: wrote {}/*.json", out.display());
    Ok(())
}
