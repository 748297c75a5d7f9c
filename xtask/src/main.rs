//! `cargo xtask`: the project's tasks, runnable on a fresh machine.
//!
//! Every task first runs [`setup`], which installs what the build needs and is quick when all is
//! there, so nobody has to remember it. Each command lives in its own module.

mod bench;
mod cargo_cmd;
mod demo;
mod dist;
mod ebpf_toolchain;
mod fuzz;
mod setup;
mod sh;
mod test;
mod ubuntu;
mod vm;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

const ABOUT: &str = "Build, test and demonstrate trove-isolate";

const LONG_ABOUT: &str = "\
Build, test and demonstrate trove-isolate.

Every command first runs `setup`, which installs what building the eBPF programs needs where it is \
missing (see `cargo xtask setup --help`). It is idempotent and takes under a second when everything \
is there, so a fresh machine needs no other preparation than rustup.

Commands run from the workspace root, whatever the current directory. `test` and `demo` load BPF \
programs and create network namespaces: they need root.";

const AFTER_LONG_HELP: &str = "\
Examples:
  cargo xtask setup              # prepare a fresh machine (about 4 minutes the first time)
  cargo xtask build --release    # target/release/trove-isolate, eBPF programs embedded
  cargo xtask test               # every test, here and on the guests' kernels in VMs, as root (CI: .ci/run)
  cargo xtask test --no-vm       # every test, on this machine's kernel only
  cargo xtask demo               # a simulated Trove guest, before and under enforcement, as root
  cargo xtask fuzz --minutes 30  # the datapath against its reference model, the config loader
  cargo xtask bench [--quick]    # per-packet cost, scaling, real traffic vs nftables, the daemon; as root
  cargo xtask dist               # target/dist/trove-isolate-*.tar.gz, with a diskimage-builder element
  cargo xtask install --root DIR # into an image root, unit enabled";

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(about = setup::ABOUT, long_about = setup::LONG_ABOUT)]
    Setup,
    #[command(about = cargo_cmd::ABOUT, long_about = cargo_cmd::LONG_ABOUT)]
    Build {
        /// Build with the release profile (target/release/trove-isolate).
        #[arg(long)]
        release: bool,
    },
    #[command(
        about = test::ABOUT,
        long_about = test::LONG_ABOUT.as_str(),
        after_long_help = test::AFTER_LONG_HELP
    )]
    Test {
        /// Skip the VMs: only the tests on this machine's kernel.
        #[arg(long, conflicts_with = "vm_only")]
        no_vm: bool,
        /// Only the VM part (Linux 5.15, 6.8 and 6.1; after setup and a build), not the tests on this machine.
        #[arg(long)]
        vm_only: bool,
        /// In the VMs, every test the kernel can run, with the host's 20 moves of the NIC (about
        /// 8 minutes more), not the bounded share.
        #[arg(long, conflicts_with = "no_vm")]
        vm_full: bool,
        /// Passed to `cargo test --workspace` as they are (write them after `--`); not to the VM.
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<String>,
    },
    #[command(
        about = fuzz::ABOUT,
        long_about = fuzz::LONG_ABOUT,
        after_long_help = fuzz::AFTER_LONG_HELP
    )]
    Fuzz {
        /// Total time, split two thirds differential, one third config loader.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Run only one of the two.
        #[arg(long, value_enum)]
        only: Option<fuzz::Target>,
        /// Seed of the differential run (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
    #[command(about = dist::DIST_ABOUT, long_about = dist::DIST_LONG_ABOUT)]
    Dist {
        /// A config to ship in the element, installed as /etc/trove-isolate/config.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    #[command(about = dist::INSTALL_ABOUT, long_about = dist::INSTALL_LONG_ABOUT)]
    Install {
        /// The image root to install into.
        #[arg(long)]
        root: PathBuf,
        /// A config to install as etc/trove-isolate/config.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    #[command(about = bench::ABOUT, long_about = bench::LONG_ABOUT)]
    Bench {
        /// Fewer repetitions, sizes and rounds: about two minutes.
        #[arg(long)]
        quick: bool,
    },
    /// Show the isolation on a simulated Trove guest (root)
    ///
    /// Runs setup, builds the release binary, then simulates a Trove guest in network namespaces
    /// (the same address on both NICs, the business NIC in a container namespace), enforces its
    /// policy with target/release/trove-isolate, and shows allowed and blocked flows, the metrics
    /// and the status, survival of `kill -9`, and `detach`. Everything it creates (namespaces,
    /// pins under /sys/fs/bpf/trove-isolate-demo, its config file) is removed at the end, also
    /// on failure. Exits non-zero if any flow gets another verdict than the policy says.
    Demo,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Cargo runs us from wherever `cargo xtask` was typed; the tasks expect the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    std::env::set_current_dir(root)
        .with_context(|| format!("changing to the workspace root {}", root.display()))?;

    let need_bpffs = !matches!(
        cli.command,
        Command::Build { .. } | Command::Dist { .. } | Command::Install { .. }
    );
    setup::run(need_bpffs)?;
    match cli.command {
        Command::Setup => Ok(()),
        Command::Build { release } => cargo_cmd::build(release),
        Command::Test {
            no_vm,
            vm_only,
            vm_full,
            args,
        } => test::run(&args, !vm_only, !no_vm, vm_full),
        Command::Fuzz {
            minutes,
            only,
            seed,
        } => fuzz::run(minutes, only, seed),
        Command::Dist { config } => dist::dist(config.as_deref()).map(|_| ()),
        Command::Install { root, config } => dist::install(&root, config.as_deref()),
        Command::Bench { quick } => bench::run(quick),
        Command::Demo => {
            cargo_cmd::build(true)?;
            demo::run()
        }
    }
}
