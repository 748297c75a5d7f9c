//! Builds the eBPF programs (for bpfel-unknown-none, with the nightly toolchain and bpf-linker that
//! `cargo xtask setup` installs) and leaves the object in `$OUT_DIR` for `include_bytes_aligned!`.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

// The pinned toolchain, shared with `cargo xtask setup`.
#[path = "../xtask/src/ebpf_toolchain.rs"]
#[allow(dead_code)] // the build needs only the channel, the commit and `installed`
mod ebpf_toolchain;

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // Host-only checks (clippy, docs) without the BPF toolchain: embed an empty object, which
        // the loader refuses at run time with a clear error.
        std::fs::write(format!("{out_dir}/trove-isolate-ebpf"), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("trove-isolate-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let toolchain = ebpf_toolchain::installed().ok_or_else(|| {
        anyhow!(
            "the pinned eBPF toolchain ({}, rustc {}) is not installed: run `cargo xtask setup`",
            ebpf_toolchain::CHANNEL,
            ebpf_toolchain::COMMIT
        )
    })?;
    println!("cargo:rerun-if-changed=../xtask/src/ebpf_toolchain.rs");
    // aya-build turns every line the eBPF build prints into a cargo warning, replayed on every
    // later build: keep that build quiet unless it fails (errors are printed regardless).
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "trove-isolate-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(toolchain),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src, bpf-linker)",
    )
}
