//! `cargo xtask bench`: what a packet costs in the datapath, as a ratio to an empty program.

use std::path::Path;

use anyhow::Context as _;

use crate::{cargo_cmd, sh};

pub const ABOUT: &str = "Measure the datapath's per-packet cost against an empty TC program (root)";

pub const LONG_ABOUT: &str = "\
Measure the datapath's per-packet cost against an empty TC program (root).

Builds the release benchmark (trove-isolate/examples/bench.rs) and runs it: the eBPF object's \
empty program (`r0 = -1; exit`) and each path of ours, on both roles (established both ways, a new \
flow denied, an unsolicited ACK, IPv6 with and without extension headers), through \
BPF_PROG_TEST_RUN in one process, logs off. Each figure is the median of 5 runs of 200,000 \
repetitions (50,000 with --quick); the table gives ns per packet and the ratio to the empty \
program measured in the same run. Ratios, not absolute times, are what compare across machines. \
Prints a Markdown table and writes target/bench/per-packet.json. BENCHMARKS.md records a run with \
its machine and kernel.";

pub fn run(quick: bool) -> anyhow::Result<()> {
    sh::require_root("the benchmark loads BPF programs")?;
    cargo_cmd::cargo_quietly(&[
        "build",
        "--release",
        "--package",
        "trove-isolate",
        "--example",
        "bench",
    ])?;
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("per-packet.json");
    let repeat = if quick { "50000" } else { "200000" };
    let kernel = sh::output("uname", &["-r"]).unwrap_or_default();
    eprintln!("xtask: per-packet cost on Linux {}", kernel.trim());
    sh::run(
        "target/release/examples/bench",
        &[
            "--repeat",
            repeat,
            "--runs",
            "5",
            "--json",
            &json.display().to_string(),
        ],
    )
    .context("running the benchmark")?;
    eprintln!("xtask: wrote {}", json.display());
    Ok(())
}
