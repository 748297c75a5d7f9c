//! `cargo xtask build`: the daemon, with the eBPF programs embedded by `trove-isolate/build.rs`.

use anyhow::Context as _;

pub const ABOUT: &str =
    "Build target/{debug,release}/trove-isolate with the eBPF programs embedded";

pub const LONG_ABOUT: &str = "\
Build target/{debug,release}/trove-isolate with the eBPF programs embedded.

Runs setup, then `cargo build --package trove-isolate [--release]`. The daemon's build script \
builds the eBPF crate (trove-isolate-ebpf) for bpfel-unknown-none with the nightly toolchain, \
-Z build-std=core and bpf-linker, and embeds the object in the binary. Once setup has run it \
changes nothing outside target/. Does not need root (without root, setup leaves bpffs alone).";

/// `cargo build --package trove-isolate [--release]`. Cargo's own output is streamed; what the
/// eBPF build prints through the build script (`warning: trove-isolate@…: Compiling …`, dozens of
/// lines on a fresh build) is held back and shown only if the build fails.
pub fn build(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "--package", "trove-isolate"];
    if release {
        args.push("--release");
    }
    cargo_quietly(&args)
}

/// Runs `cargo ARGS` with the eBPF build's output held back unless it fails.
pub fn cargo_quietly(args: &[&str]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    eprintln!(
        "xtask: cargo {} (the eBPF build's output only if it fails)",
        args.join(" ")
    );
    let mut child = Command::new("cargo")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo build")?;
    let stderr = child.stderr.take().context("cargo's stderr")?;
    let mut held = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.starts_with("warning: trove-isolate@") {
            held.push(line);
        } else {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        for line in &held {
            eprintln!("{line}");
        }
        anyhow::bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
