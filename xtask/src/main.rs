//! `cargo xtask`: the project's tasks, runnable on a fresh machine.
//!
//! Every task first runs [`setup`], which installs what the build needs and is quick when all is
//! there, so nobody has to remember it.

mod demo;
mod setup;
mod sh;

use clap::{Parser, Subcommand};

/// Build, test and demonstrate trove-isolate.
///
/// Every command first runs `setup` (idempotent; under a second when everything is installed).
/// Commands that load BPF programs or create network namespaces need root.
#[derive(Parser)]
#[command(bin_name = "cargo xtask", about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building the eBPF programs needs, where it is missing.
    ///
    /// 1. rust-src for the nightly toolchain (for -Z build-std=core).
    /// 2. bpf-linker 0.13, built against the nightly rustc's own LLVM (about 3 minutes on 2 cores,
    ///    once; its LLVM link lives under ~/.cache/trove-isolate/llvm).
    /// 3. bpffs mounted at /sys/fs/bpf.
    Setup,
    /// Build target/{debug,release}/trove-isolate with the eBPF programs embedded.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run every test: unit tests, BPF_PROG_TEST_RUN packet tables and real-traffic tests in
    /// network namespaces. Needs root. Arguments after `--` go to `cargo test`.
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Simulate a Trove guest in network namespaces, enforce its policy with the release build,
    /// show allowed and blocked flows, the metrics and the status, then clean everything up.
    /// Needs root.
    Demo,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sh::prepare_path();
    setup::run()?;
    match cli.command {
        Command::Setup => Ok(()),
        Command::Build { release } => build(release),
        Command::Test { args } => test(&args),
        Command::Demo => {
            build(true)?;
            demo::run()
        }
    }
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "--package", "trove-isolate"];
    if release {
        args.push("--release");
    }
    sh::run("cargo", &args)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    sh::require_root("the tests load BPF programs and create network namespaces")?;
    let mut args = vec!["test".to_owned(), "--workspace".to_owned()];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh::run("cargo", &args)
}
