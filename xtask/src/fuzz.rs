//! `cargo xtask fuzz`: the long runs that `cargo xtask test` only samples.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::sh;

pub const ABOUT: &str =
    "Fuzz the datapath against its reference model, and the config loader (root)";

pub const LONG_ABOUT: &str = "\
Fuzz the datapath against its reference model, and the config loader (root).

Splits --minutes between two runs:

 1. The differential test (trove-isolate/tests/differential.rs): generated packet sequences \
    (valid, mutated, truncated, flows opened, used and closed) run through the loaded programs \
    with BPF_PROG_TEST_RUN, each verdict and reason compared with the reference model \
    (trove_isolate::model). `cargo xtask test` runs a small seeded share of it; here it runs with \
    a fresh seed and as many sequences as fit in two thirds of the time. A mismatch prints the \
    seed and the shrunk sequence: add it to the test's named cases.

 2. The config loader under `cargo fuzz` (fuzz/fuzz_targets/config.rs, libFuzzer, nightly): \
    arbitrary text must never panic, every refusal names the file and the key. Installs \
    cargo-fuzz the first time (a minute or two). Crashes land in fuzz/artifacts/config/.

Exits non-zero on the first mismatch or crash.";

pub const AFTER_LONG_HELP: &str = "\
Examples:
  cargo xtask fuzz                      # 10 minutes
  cargo xtask fuzz --minutes 60
  cargo xtask fuzz --only differential --seed 42";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Differential,
    Config,
}

/// Sequences the differential test runs per second here, to size a run to the time it has
/// (the release build runs about 170 a second on 2 cores; the run stops at its
/// case count, not a clock).
const DIFF_CASES_PER_SECOND: u64 = 150;

pub fn run(minutes: u64, only: Option<Target>, seed: Option<u64>) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let seconds = minutes * 60;
    let (diff_s, config_s) = match only {
        Some(Target::Differential) => (seconds, 0),
        Some(Target::Config) => (0, seconds),
        None => (seconds * 2 / 3, seconds - seconds * 2 / 3),
    };
    if diff_s > 0 {
        differential(diff_s, seed)?;
    }
    if config_s > 0 {
        config(config_s)?;
    }
    Ok(())
}

fn differential(seconds: u64, seed: Option<u64>) -> anyhow::Result<()> {
    sh::require_root("the differential test loads BPF programs")?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let cases = seconds * DIFF_CASES_PER_SECOND;
    eprintln!("xtask fuzz: differential, {cases} sequences, seed {seed} (about {seconds} s)");
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--release",
        "-p",
        "trove-isolate",
        "--test",
        "differential",
        "--",
        "--nocapture",
    ])
    .env("TROVE_ISOLATE_DIFF_CASES", cases.to_string())
    .env("TROVE_ISOLATE_DIFF_SEED", seed.to_string());
    sh::run_cmd(&mut cmd).with_context(|| format!("differential run with seed {seed}"))
}

fn config(seconds: u64) -> anyhow::Result<()> {
    // The pinned nightly setup installed (cargo fuzz needs a nightly for its sanitizer flags).
    let nightly = crate::ebpf_toolchain::installed()
        .context("the pinned nightly is not installed: run `cargo xtask setup`")?;
    let plus = format!("+{nightly}");
    if sh::output("cargo", &[&plus, "fuzz", "--version"]).is_none() {
        eprintln!("xtask fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked) ...");
        sh::run("cargo", &["install", "cargo-fuzz", "--locked"])
            .context("installing cargo-fuzz")?;
    }
    eprintln!("xtask fuzz: config loader, {seconds} s");
    let mut cmd = Command::new("cargo");
    cmd.current_dir("fuzz")
        .args([
            &plus,
            "fuzz",
            "run",
            "config",
            "--",
            &format!("-max_total_time={seconds}"),
        ])
        // The loader needs no eBPF object; the fuzz build skips it.
        .env("AYA_BUILD_SKIP", "1");
    sh::run_cmd(&mut cmd).context("cargo fuzz run config")
}
