//! The eBPF build's toolchain, pinned in this one place: `cargo xtask setup` installs exactly
//! this and the build (`trove-isolate/build.rs`, which includes this file) uses it. Move the
//! four together: a nightly, its commit, its LLVM major, and the bpf-linker built against it.

/// The rustup channel of the pinned nightly.
pub const CHANNEL: &str = "nightly-2026-05-20";
/// Its commit, as `rustc --version` shows it: how an installed toolchain is recognised, whatever
/// rustup calls it (a machine's plain `nightly` may be exactly this one).
pub const COMMIT: &str = "e50aa6fba";
/// Its LLVM major: bpf-linker is built with the matching `llvm-N` feature and links that
/// nightly's own libLLVM.
pub const LLVM_MAJOR: u32 = 22;
/// The bpf-linker release built against it.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The name of an installed toolchain that is the pinned nightly: the dated channel, or a plain
/// `nightly` of the same commit. `None` when neither is installed. Never installs anything.
pub fn installed() -> Option<&'static str> {
    [CHANNEL, "nightly"].into_iter().find(|name| {
        std::process::Command::new("rustc")
            .arg(format!("+{name}"))
            .arg("--version")
            .env("RUSTUP_AUTO_INSTALL", "0")
            .stderr(std::process::Stdio::null())
            .output()
            .is_ok_and(|out| {
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains(COMMIT)
            })
    })
}
