//! `cargo xtask build`: the daemon, with the eBPF programs embedded by `trove-isolate/build.rs`.

use crate::sh;

pub const ABOUT: &str =
    "Build target/{debug,release}/trove-isolate with the eBPF programs embedded";

pub const LONG_ABOUT: &str = "\
Build target/{debug,release}/trove-isolate with the eBPF programs embedded.

Runs setup, then `cargo build --package trove-isolate [--release]`. The daemon's build script \
builds the eBPF crate (trove-isolate-ebpf) for bpfel-unknown-none with the nightly toolchain, \
-Z build-std=core and bpf-linker, and embeds the object in the binary. Once setup has run it \
changes nothing outside target/. Does not need root (without root, setup leaves bpffs alone).";

/// `cargo build --package trove-isolate [--release]`, output streamed.
pub fn build(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "--package", "trove-isolate"];
    if release {
        args.push("--release");
    }
    eprintln!("xtask: cargo {}", args.join(" "));
    sh::run("cargo", &args)
}
