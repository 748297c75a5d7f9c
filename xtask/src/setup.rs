//! `cargo xtask setup`: what a fresh machine lacks to build and load the eBPF programs.
//!
//! Each step checks first and reports `ok` when there is nothing to do, so the whole setup is
//! quick (well under a second) on a machine that has it all. The recipe is the one verified in
//! the project's toolchain notes: rust-src for the nightly, bpf-linker 0.13 linked against the
//! nightly rustc's own libLLVM, bpffs at /sys/fs/bpf.

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

 2. The nightly toolchain: `rustup toolchain install nightly --profile minimal` when
    `rustc +nightly` does not run (with RUSTUP_AUTO_INSTALL=0 nothing installs it
    implicitly). Fails, saying so, if rustup cannot install it.

 3. rust-src for the nightly, for -Z build-std=core:
    `rustup component add rust-src --toolchain nightly` (about 80 MB under ~/.rustup).

 4. bpf-linker 0.13 in ~/.cargo/bin, built against the nightly rustc's own libLLVM (its
    default wants LLVM 23; Debian bookworm has only 14-16). Makes two symlinks to the
    nightly's libLLVM.so.* in ~/.cache/trove-isolate/llvm/lib, then runs
      LLVM_PREFIX=~/.cache/trove-isolate/llvm cargo +nightly install bpf-linker \\
        --version 0.13.0 --locked --force --no-default-features --features llvm-<N>
    with N the nightly's LLVM major (22 today). About 3 minutes on 2 cores, once; skipped
    when `bpf-linker --version` runs and reports 0.13. bpf-linker loads libLLVM through
    that directory: keep it. If a nightly update removes the old libLLVM, setup rebuilds.

 5. bpffs at /sys/fs/bpf: `mount -t bpf bpf /sys/fs/bpf` unless
    `stat -f -c %T /sys/fs/bpf` says bpf_fs. Needs root; `build` only warns without it.";

const BPF_LINKER_VERSION: &str = "0.13.0";
/// What `bpf-linker --version` must report (any 0.13.x will do).
const BPF_LINKER_SERIES: &str = "0.13.";
/// The LLVM majors bpf-linker 0.13 has a feature for (`llvm-21`, ...).
const BPF_LINKER_LLVM_MAJORS: [u32; 3] = [21, 22, 23];

/// Runs every step. With `need_bpffs` false (for `build`), an unmounted bpffs that cannot be
/// mounted (not root) is a warning instead of an error.
pub fn run(need_bpffs: bool) -> anyhow::Result<()> {
    cargo_bin_on_path()?;
    nightly()?;
    nightly_rust_src()?;
    bpf_linker()?;
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

fn nightly() -> anyhow::Result<()> {
    const WHAT: &str = "nightly toolchain";
    if let Some(v) = sh::output("rustc", &["+nightly", "--version"]) {
        done(WHAT, &format!("ok ({})", v.trim()));
        return Ok(());
    }
    done(
        WHAT,
        "missing; installing (rustup toolchain install nightly --profile minimal)",
    );
    sh::run(
        "rustup",
        &["toolchain", "install", "nightly", "--profile", "minimal"],
    )
    .context(
        "the nightly toolchain is missing and `rustup toolchain install nightly --profile minimal` \
         failed (no network?). It is needed to build the eBPF programs and RUSTUP_AUTO_INSTALL=0 \
         keeps rustup from fetching it implicitly: install it, then run `cargo xtask setup` again",
    )?;
    let v = sh::output("rustc", &["+nightly", "--version"])
        .context("the nightly toolchain was installed but `rustc +nightly --version` fails")?;
    done(WHAT, &format!("ok ({})", v.trim()));
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    const WHAT: &str = "rust-src for nightly";
    let has_it = || {
        sh::output(
            "rustup",
            &["component", "list", "--toolchain", "nightly", "--installed"],
        )
        .is_some_and(|out| out.lines().any(|l| l.trim().starts_with("rust-src")))
    };
    if has_it() {
        done(WHAT, "ok");
        return Ok(());
    }
    done(WHAT, "missing; adding (about 80 MB)");
    sh::run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
    .context("adding rust-src to the nightly toolchain (needed for -Z build-std=core)")?;
    if !has_it() {
        bail!("rustup added rust-src to the nightly toolchain but does not list it as installed");
    }
    done(WHAT, "ok");
    Ok(())
}

/// `Some(version line)` when a bpf-linker on PATH runs and is of the 0.13 series.
fn working_bpf_linker() -> Option<String> {
    let out = sh::output("bpf-linker", &["--version"])?;
    let line = out.lines().next()?.trim().to_owned();
    line.split_whitespace()
        .nth(1)
        .is_some_and(|v| v.starts_with(BPF_LINKER_SERIES))
        .then_some(line)
}

fn bpf_linker() -> anyhow::Result<()> {
    const WHAT: &str = "bpf-linker 0.13";
    if let Some(v) = working_bpf_linker() {
        done(WHAT, &format!("ok ({v})"));
        return Ok(());
    }
    // bpf-linker links libLLVM dynamically, and its default feature wants LLVM 23; the only LLVM
    // new enough here is the nightly rustc's own. Point LLVM_PREFIX at a directory holding it.
    let verbose = sh::output("rustc", &["+nightly", "-vV"])
        .context("asking the nightly rustc for its LLVM version (rustc +nightly -vV)")?;
    let llvm_major = llvm_major(&verbose)
        .with_context(|| format!("no `LLVM version: N.x` in `rustc +nightly -vV`:\n{verbose}"))?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&llvm_major) {
        bail!(
            "the nightly rustc uses LLVM {llvm_major}, but bpf-linker {BPF_LINKER_VERSION} only \
             builds against LLVM {BPF_LINKER_LLVM_MAJORS:?}: install a nightly that matches"
        );
    }
    let sysroot = sh::output("rustc", &["+nightly", "--print", "sysroot"])
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
        WHAT,
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
                "+nightly",
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
    done(WHAT, &format!("ok ({v})"));
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
