//! `cargo xtask test`: every test of the workspace, as root, here and on the guests' kernels in VMs.

use std::{process::Command, sync::LazyLock};

use crate::{sh, vm};

pub const ABOUT: &str =
    "Run every test of the workspace, here and on Trove guests' kernels in VMs (root; what CI runs)";

const HOST: &str = "\
Run every test of the workspace, here and on Trove guests' kernels in VMs (root; what CI runs \
through .ci/run).

Runs setup, checks that it runs as root, then `cargo test --workspace [CARGO_TEST_ARGS...]`: unit \
tests, the BPF_PROG_TEST_RUN packet tables, and real traffic across veth pairs in network \
namespaces. Root is needed to load BPF programs, pin them under /sys/fs/bpf and create namespaces; \
every test removes what it creates. Exits non-zero when a test fails.";

/// The whole `--help` text: the host run, then the VM's (from `vm`).
pub static LONG_ABOUT: LazyLock<String> = LazyLock::new(|| format!("{HOST}\n\n{}", vm::LONG_ABOUT));

pub const AFTER_LONG_HELP: &str = "\
Examples:
  cargo xtask test                                       # everything, here and in the VMs
  cargo xtask test --no-vm                               # everything, on this machine only
  cargo xtask test --vm-only                             # only the VMs
  cargo xtask test --vm-only --vm-full                   # only the VMs, every test they can run
  cargo xtask test --no-vm -- -p trove-isolate --test packets   # one test file
  cargo xtask test --no-vm -- audit -- --nocapture       # names containing `audit`, output shown";

/// `host`: the tests on this machine; `in_vm`: in the VMs, `vm_full` their every test rather
/// than the bounded share.
pub fn run(extra: &[String], host: bool, in_vm: bool, vm_full: bool) -> anyhow::Result<()> {
    sh::require_root(
        "the tests load BPF programs, pin them under /sys/fs/bpf and create network namespaces",
    )?;
    if host {
        promtool()?;
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--workspace"]).args(extra);
        eprintln!("xtask: cargo test --workspace {}", extra.join(" "));
        sh::run_cmd(&mut cmd)?;
    }
    if in_vm {
        let vm = vm::setup()?;
        vm::run(&vm, vm_full)?;
    }
    Ok(())
}

/// `promtool`, which the metrics test checks the exposition with: from Debian's `prometheus`
/// package, installed without letting its service start (no Prometheus server is left running).
fn promtool() -> anyhow::Result<()> {
    const WHAT: &str = "promtool (Debian's prometheus package)";
    if sh::output("promtool", &["--version"]).is_some() {
        eprintln!("setup: {WHAT} ... ok");
        return Ok(());
    }
    sh::apt_install(WHAT, &["prometheus"])
}
