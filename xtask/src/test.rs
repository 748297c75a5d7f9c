//! `cargo xtask test`: every test of the workspace, as root.

use std::process::Command;

use crate::sh;

pub const ABOUT: &str = "Run every test of the workspace (root; what CI runs)";

pub const LONG_ABOUT: &str = "\
Run every test of the workspace (root; what CI runs through .ci/run).

Runs setup, checks that it runs as root, then `cargo test --workspace [CARGO_TEST_ARGS...]`: unit \
tests, the BPF_PROG_TEST_RUN packet tables, and real traffic across veth pairs in network \
namespaces. Root is needed to load BPF programs, pin them under /sys/fs/bpf and create namespaces; \
every test removes what it creates. Exits non-zero when a test fails.";

pub const AFTER_LONG_HELP: &str = "\
Examples:
  cargo xtask test                                       # everything
  cargo xtask test -- -p trove-isolate --test packets    # one test file
  cargo xtask test -- audit -- --nocapture               # names containing `audit`, output shown";

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    sh::require_root(
        "the tests load BPF programs, pin them under /sys/fs/bpf and create network namespaces",
    )?;
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--workspace"]).args(extra);
    eprintln!("xtask: cargo test --workspace {}", extra.join(" "));
    sh::run_cmd(&mut cmd)
}
