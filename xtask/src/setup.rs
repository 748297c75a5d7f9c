//! `cargo xtask setup`: what a fresh machine lacks to build and load the eBPF programs.
//!
//! Each step checks first and reports `ok` when there is nothing to do, so the whole setup is
//! quick on a machine that has it all.

use std::{env, fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::sh;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker's feature for the nightly's LLVM major version.
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn step(what: &str) {
    eprintln!("setup: {what}");
}

fn nightly_rust_src() -> anyhow::Result<()> {
    if sh::output("rustc", &["+nightly", "--version"]).is_none() {
        step("installing the nightly toolchain (minimal profile)");
        sh::run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )
        .context("the nightly toolchain is needed to build the eBPF programs")?;
    }
    let installed = sh::output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to the nightly toolchain (for -Z build-std=core)");
        sh::run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if sh::output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    // bpf-linker links libLLVM dynamically; build it against the nightly rustc's own LLVM, which
    // is the only LLVM new enough on this machine.
    let sysroot = sh::output("rustc", &["+nightly", "--print", "sysroot"])
        .context("asking the nightly rustc for its sysroot")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so") || n.starts_with("libLLVM-"))
        .with_context(|| format!("no libLLVM in {}", lib_dir.display()))?;
    let home = env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".cache/trove-isolate/llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(&lib)] {
        let _ = fs::remove_file(&link);
        symlink(lib_dir.join(&lib), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's {lib} (about 3 minutes on 2 cores, once)"
    ));
    sh::run_cmd(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if sh::output("bpf-linker", &["--version"]).is_none() {
        bail!("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)");
    }
    step("bpf-linker ok");
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let fs_type = sh::output("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).unwrap_or_default();
    if fs_type.trim() == "bpf_fs" {
        return Ok(());
    }
    step("mounting bpffs at /sys/fs/bpf");
    sh::run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]).context("mounting bpffs (needs root)")
}
