//! `cargo xtask setup`: what a fresh machine lacks to build and load the eBPF programs.
//!
//! Each step checks first and reports `ok` when there is nothing to do, so the whole setup is
//! quick (well under a second) on a machine that has it all. The recipe is the one verified in
//! the project's toolchain notes: the pinned nightly (`ebpf_toolchain`) with rust-src, the pinned
//! bpf-linker linked against that nightly's own libLLVM, bpffs at /sys/fs/bpf.

use std::{env, fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::sh;

pub const ABOUT: &str =
    "Install what building and loading the eBPF programs needs, where it is missing";

pub const LONG_ABOUT: &str = "\
Install what building and loading the eBPF programs needs, where it is missing.

Every other command runs this first. Each step checks before it changes anything and prints \
`setup: <step> ... ok` when there is nothing to do; on a prepared machine the whole setup takes \
well under a second. It never asks questions (safe for CI without stdin). Steps, in order:

 1. PATH: puts ~/.cargo/bin first, for the commands xtask starts (the eBPF build needs
    rustup and bpf-linker there). Only xtask's own environment changes, not your shell's.

 2. The pinned nightly (xtask/src/ebpf_toolchain.rs: the one place naming the channel,
    its commit, its LLVM major and the bpf-linker release). An installed toolchain is
    the pinned one when `rustc +<name> --version` shows the pinned commit: the dated
    channel, or a plain `nightly` that is exactly it. Otherwise
    `rustup toolchain install <channel> --profile minimal` (with RUSTUP_AUTO_INSTALL=0
    nothing installs it implicitly). Fails, saying so, if rustup cannot install it.

 3. rust-src for that toolchain, for -Z build-std=core:
    `rustup component add rust-src --toolchain <name>` (about 80 MB under ~/.rustup).

 4. bpf-linker (the pinned release) in ~/.cargo/bin, built against the pinned nightly's own
    libLLVM (its default wants LLVM 23; Debian bookworm has only 14-16). Checks that the
    nightly's LLVM major is the pinned one, makes two symlinks to its libLLVM.so.* in
    ~/.cache/trove-isolate/llvm/lib, then runs
      LLVM_PREFIX=~/.cache/trove-isolate/llvm cargo +<name> install bpf-linker \\
        --version <pinned> --locked --force --no-default-features --features llvm-<N>
    About 3 minutes on 2 cores, once; skipped when `bpf-linker --version` runs and reports
    the pinned release. bpf-linker loads libLLVM through that directory: keep it.

 5. bpffs at /sys/fs/bpf: `mount -t bpf bpf /sys/fs/bpf` unless
    `stat -f -c %T /sys/fs/bpf` says bpf_fs. Needs root; `build` only warns without it.";

use crate::ebpf_toolchain::{self, BPF_LINKER_VERSION, CHANNEL, COMMIT, LLVM_MAJOR};

/// Runs every step. With `need_bpffs` false (for `build`), an unmounted bpffs that cannot be
/// mounted (not root) is a warning instead of an error.
pub fn run(need_bpffs: bool) -> anyhow::Result<()> {
    cargo_bin_on_path()?;
    let toolchain = nightly()?;
    nightly_rust_src(toolchain)?;
    bpf_linker(toolchain)?;
    bpffs(need_bpffs)?;
    Ok(())
}

fn done(what: &str, how: &str) {
    eprintln!("setup: {what} ... {how}");
}

fn cargo_bin_on_path() -> anyhow::Result<()> {
    let bin = sh::prepare_path().context("HOME is not set: cannot find ~/.cargo/bin")?;
    if sh::output("rustup", &["--version"]).is_none() {
        bail!(
            "rustup does not run (looked on PATH and in {}): install rustup first, \
             https://rustup.rs",
            bin.display()
        );
    }
    done(&format!("{} first on PATH", bin.display()), "ok");
    Ok(())
}

/// The pinned nightly, installed if missing; returns its rustup name.
fn nightly() -> anyhow::Result<&'static str> {
    let what = format!("pinned nightly ({CHANNEL}, rustc {COMMIT})");
    if let Some(name) = ebpf_toolchain::installed() {
        done(&what, &format!("ok (toolchain `{name}`)"));
        return Ok(name);
    }
    done(
        &what,
        &format!("missing; installing (rustup toolchain install {CHANNEL} --profile minimal)"),
    );
    sh::run(
        "rustup",
        &["toolchain", "install", CHANNEL, "--profile", "minimal"],
    )
    .with_context(|| {
        format!(
            "the pinned nightly is missing and `rustup toolchain install {CHANNEL} --profile \
             minimal` failed (no network?). It is needed to build the eBPF programs and \
             RUSTUP_AUTO_INSTALL=0 keeps rustup from fetching it implicitly: install it, then \
             run `cargo xtask setup` again"
        )
    })?;
    let name = ebpf_toolchain::installed().with_context(|| {
        format!("{CHANNEL} was installed but `rustc +{CHANNEL} --version` does not show {COMMIT}")
    })?;
    done(&what, &format!("ok (toolchain `{name}`)"));
    Ok(name)
}

fn nightly_rust_src(toolchain: &str) -> anyhow::Result<()> {
    let what = format!("rust-src for {toolchain}");
    let has_it = || {
        sh::output(
            "rustup",
            &["component", "list", "--toolchain", toolchain, "--installed"],
        )
        .is_some_and(|out| out.lines().any(|l| l.trim().starts_with("rust-src")))
    };
    if has_it() {
        done(&what, "ok");
        return Ok(());
    }
    done(&what, "missing; adding (about 80 MB)");
    sh::run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", toolchain],
    )
    .context("adding rust-src to the pinned nightly (needed for -Z build-std=core)")?;
    if !has_it() {
        bail!("rustup added rust-src to {toolchain} but does not list it as installed");
    }
    done(&what, "ok");
    Ok(())
}

/// `Some(version line)` when a bpf-linker on PATH runs and is the pinned release.
fn working_bpf_linker() -> Option<String> {
    let out = sh::output("bpf-linker", &["--version"])?;
    let line = out.lines().next()?.trim().to_owned();
    line.split_whitespace()
        .nth(1)
        .is_some_and(|v| v == BPF_LINKER_VERSION)
        .then_some(line)
}

fn bpf_linker(toolchain: &str) -> anyhow::Result<()> {
    let what = &format!("bpf-linker {BPF_LINKER_VERSION}");
    if let Some(v) = working_bpf_linker() {
        done(what, &format!("ok ({v})"));
        return Ok(());
    }
    let plus = format!("+{toolchain}");
    // bpf-linker links libLLVM dynamically, and its default feature wants LLVM 23; the only LLVM
    // new enough here is the nightly rustc's own. Point LLVM_PREFIX at a directory holding it.
    let verbose = sh::output("rustc", &[&plus, "-vV"]).with_context(|| {
        format!("asking the pinned rustc for its LLVM version (rustc {plus} -vV)")
    })?;
    let llvm_major = llvm_major(&verbose)
        .with_context(|| format!("no `LLVM version: N.x` in `rustc {plus} -vV`:\n{verbose}"))?;
    if llvm_major != LLVM_MAJOR {
        bail!(
            "the pinned nightly uses LLVM {llvm_major}, but xtask/src/ebpf_toolchain.rs says \
             {LLVM_MAJOR}: the pin is inconsistent (move the channel, commit and LLVM major together)"
        );
    }
    let sysroot = sh::output("rustc", &[&plus, "--print", "sysroot"])
        .context("asking the nightly rustc for its sysroot")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    // The real library (its file name is its SONAME, e.g. libLLVM.so.22.1-rust-1.97.0-nightly),
    // not the small linker script libLLVM-22-rust-*.so next to it.
    let lib = fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {} (the nightly's own LLVM)",
                lib_dir.display()
            )
        })?;
    let home = env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".cache/trove-isolate/llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    // libLLVM.so for the link step (-lLLVM); the SONAME for the loader (bpf-linker's RUNPATH is
    // $LLVM_PREFIX/lib).
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(&lib)] {
        let _ = fs::remove_file(&link);
        symlink(lib_dir.join(&lib), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let feature = format!("llvm-{llvm_major}");
    done(
        what,
        &format!(
            "missing; building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM \
             {llvm_major} ({lib}; about 3 minutes on 2 cores) ..."
        ),
    );
    // --force: we only get here when the installed bpf-linker (if any) is of another version or
    // no longer runs (say, its libLLVM went with an older nightly); cargo would otherwise keep it.
    sh::run_cmd(
        Command::new("cargo")
            .args([
                &plus,
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &feature,
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")?;
    let v = working_bpf_linker().context(
        "bpf-linker was installed but `bpf-linker --version` does not run or reports another \
         version (another bpf-linker earlier on PATH?)",
    )?;
    done(what, &format!("ok ({v})"));
    Ok(())
}

/// The major of `LLVM version: 22.1.4` in `rustc -vV`.
fn llvm_major(rustc_verbose: &str) -> Option<u32> {
    rustc_verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn bpffs(required: bool) -> anyhow::Result<()> {
    const WHAT: &str = "bpffs at /sys/fs/bpf";
    let mounted = || {
        sh::output("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).is_some_and(|t| t.trim() == "bpf_fs")
    };
    if mounted() {
        done(WHAT, "ok");
        return Ok(());
    }
    if !sh::is_root() {
        if required {
            bail!(
                "bpffs is not mounted at /sys/fs/bpf and mounting it needs root: run as root, \
                 or `mount -t bpf bpf /sys/fs/bpf` as root first"
            );
        }
        done(
            WHAT,
            "not mounted (needs root; only running the daemon needs it)",
        );
        return Ok(());
    }
    done(WHAT, "not mounted; mounting (mount -t bpf bpf /sys/fs/bpf)");
    sh::run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]).context("mounting bpffs")?;
    if !mounted() {
        bail!("mounted bpffs at /sys/fs/bpf, but `stat -f` does not report bpf_fs there");
    }
    done(WHAT, "ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_from_rustc_verbose() {
        let v = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\n\
                 release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(v), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }
}
