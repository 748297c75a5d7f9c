//! Running commands with their output shown, and failing with the command named.

use std::{
    env, fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// Puts `~/.cargo/bin` first on PATH, for every command started from here on: aya-build needs
/// rustup and bpf-linker there. Returns that directory; `None` without HOME.
pub fn prepare_path() -> Option<PathBuf> {
    let bin = PathBuf::from(env::var_os("HOME")?).join(".cargo/bin");
    let mut paths: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if paths.first() != Some(&bin) {
        paths.retain(|p| p != &bin);
        paths.insert(0, bin.clone());
        if let Ok(joined) = env::join_paths(paths) {
            // Single-threaded at this point: nothing else reads the environment concurrently.
            unsafe { env::set_var("PATH", joined) };
        }
    }
    Some(bin)
}

/// Runs `program args`, inheriting stdio; fails when it does.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_cmd(Command::new(program).args(args))
}

pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs `program args` quietly and returns its stdout when it succeeds.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("run this as root: {why}");
    }
    Ok(())
}

/// Whether we run with effective uid 0 (the owner of /proc/self).
pub fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Installs Debian packages (`apt-get update` only if the first try fails) without letting
/// their services start: nothing is left running.
pub fn apt_install(what: &str, packages: &[&str]) -> anyhow::Result<()> {
    eprintln!(
        "setup: {what} ... missing; installing (apt-get install {}, services not started)",
        packages.join(" ")
    );
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        // Debian's way to keep a package's postinst from starting its service.
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let install = || {
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let result = install().or_else(|_| {
        run("apt-get", &["update"])?;
        install()
    });
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result.map_err(|e| anyhow::anyhow!("installing {what}: {e:#}"))?;
    eprintln!("setup: {what} ... ok");
    Ok(())
}
