//! `cargo xtask dist` and `cargo xtask install`: what goes into a Trove guest image.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{cargo_cmd, sh};

pub const DIST_ABOUT: &str = "Build the release tarball and the diskimage-builder element";

pub const DIST_LONG_ABOUT: &str = "\
Build the release tarball and the diskimage-builder element.

Builds target/release/trove-isolate, then lays out target/dist/trove-isolate-VERSION-ARCH/:

  bin/trove-isolate                    the daemon and CLI, eBPF programs embedded
  systemd/trove-isolate.service        the unit (Type=notify, hardened)
  etc/config.example.toml              an example config
  prometheus/trove-isolate.rules.yml   alerting rules (promtool check rules passes)
  grafana/trove-isolate.json           a dashboard
  elements/trove-isolate/              a diskimage-builder element laid out like Trove's
                                       guest-agent element: element-deps, install.d/ installing
                                       binary, unit and config, post-install.d/ enabling the unit
  README.md, SECURITY.md

and packs it as target/dist/trove-isolate-VERSION-ARCH.tar.gz. With --config FILE the element
also installs FILE as /etc/trove-isolate/config.toml (checked with `trove-isolate check --offline` first).";

pub const INSTALL_ABOUT: &str = "Install into an image root (binary, unit, config), unit enabled";

pub const INSTALL_LONG_ABOUT: &str = "\
Install into an image root (binary, unit, config), unit enabled.

Builds the release binary and installs, under --root DIR:

  usr/local/bin/trove-isolate                  (0755)
  etc/systemd/system/trove-isolate.service     (0644), enabled: a link in multi-user.target.wants
  etc/trove-isolate/config.example.toml        (0644)
  etc/trove-isolate/config.toml                (0600, only with --config FILE)

the same files the diskimage-builder element installs. Changes nothing outside DIR.";

const UNIT: &str = "trove-isolate.service";

/// One file of the install: where it comes from in the workspace, where it goes, its mode.
struct Item {
    from: PathBuf,
    to: &'static str,
    mode: u32,
}

/// The install's files; `workspace` is where `dist/` is.
fn items(workspace: &Path, binary: &Path, config: Option<&Path>) -> Vec<Item> {
    let mut items = vec![
        Item {
            from: binary.to_owned(),
            to: "usr/local/bin/trove-isolate",
            mode: 0o755,
        },
        Item {
            from: workspace.join("dist").join(UNIT),
            to: "etc/systemd/system/trove-isolate.service",
            mode: 0o644,
        },
        Item {
            from: workspace.join("dist/config.example.toml"),
            to: "etc/trove-isolate/config.example.toml",
            mode: 0o644,
        },
    ];
    if let Some(config) = config {
        items.push(Item {
            from: config.to_owned(),
            to: "etc/trove-isolate/config.toml",
            mode: 0o600,
        });
    }
    items
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// Installs `binary` and the dist files under `root` and enables the unit there (what
/// `systemctl enable` does: a link from multi-user.target.wants to the unit).
pub fn install_into(
    workspace: &Path,
    root: &Path,
    binary: &Path,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    for item in items(workspace, binary, config) {
        copy(&item.from, &root.join(item.to), item.mode)?;
    }
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).with_context(|| format!("creating {}", wants.display()))?;
    let link = wants.join(UNIT);
    let _ = fs::remove_file(&link);
    symlink(Path::new("/etc/systemd/system").join(UNIT), &link)
        .with_context(|| format!("enabling the unit: {}", link.display()))
}

fn checked_config(config: Option<&Path>, binary: &Path) -> anyhow::Result<()> {
    if let Some(config) = config {
        // Offline: the build host is not the guest whose Trove files, NICs and names the full
        // check reads (the unit runs that one on the guest, before it starts the daemon).
        let out = Command::new(binary)
            .args(["check", "--offline", "--config"])
            .arg(config)
            .output()
            .context("running trove-isolate check")?;
        if !out.status.success() {
            bail!(
                "{} is refused: {}",
                config.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

pub fn install(root: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    cargo_cmd::build(true)?;
    let binary = Path::new("target/release/trove-isolate");
    checked_config(config, binary)?;
    install_into(Path::new("."), root, binary, config)?;
    eprintln!(
        "xtask: installed trove-isolate under {} (unit enabled)",
        root.display()
    );
    Ok(())
}

pub fn dist(config: Option<&Path>) -> anyhow::Result<PathBuf> {
    cargo_cmd::build(true)?;
    let binary = Path::new("target/release/trove-isolate");
    checked_config(config, binary)?;
    let arch = std::env::consts::ARCH;
    let name = format!("trove-isolate-{}-{arch}", env!("CARGO_PKG_VERSION"));
    let out = PathBuf::from("target/dist");
    let dir = out.join(&name);
    let _ = fs::remove_dir_all(&dir);
    let files: [(&Path, &str, u32); 7] = [
        (binary, "bin/trove-isolate", 0o755),
        (
            Path::new("dist/trove-isolate.service"),
            "systemd/trove-isolate.service",
            0o644,
        ),
        (
            Path::new("dist/config.example.toml"),
            "etc/config.example.toml",
            0o644,
        ),
        (
            Path::new("dist/prometheus/trove-isolate.rules.yml"),
            "prometheus/trove-isolate.rules.yml",
            0o644,
        ),
        (
            Path::new("dist/grafana/trove-isolate.json"),
            "grafana/trove-isolate.json",
            0o644,
        ),
        (Path::new("README.md"), "README.md", 0o644),
        (Path::new("SECURITY.md"), "SECURITY.md", 0o644),
    ];
    for (from, to, mode) in files {
        copy(from, &dir.join(to), mode)?;
    }
    // The element, with the files its install.d script installs beside it.
    let element = dir.join("elements/trove-isolate");
    fs::create_dir_all(dir.join("elements")).context("creating elements/")?;
    sh::run_cmd(
        Command::new("cp")
            .args(["-r", "dist/elements/trove-isolate"])
            .arg(&element),
    )?;
    let payload = element.join("install.d/trove-isolate");
    copy(binary, &payload.join("trove-isolate"), 0o755)?;
    copy(
        Path::new("dist/trove-isolate.service"),
        &payload.join(UNIT),
        0o644,
    )?;
    copy(
        Path::new("dist/config.example.toml"),
        &payload.join("config.example.toml"),
        0o644,
    )?;
    if let Some(config) = config {
        copy(config, &payload.join("config.toml"), 0o600)?;
    }
    let tarball = fs::canonicalize(&out)
        .context("target/dist")?
        .join(format!("{name}.tar.gz"));
    sh::run_cmd(
        Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&out)
            .arg(&name),
    )?;
    eprintln!("xtask: {} and {}", dir.display(), tarball.display());
    Ok(tarball)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Installing into a temporary root lays out the tree an image needs, modes included, with
    /// the unit enabled; the element's install.d script installs the same files.
    #[test]
    fn install_lays_out_an_image_root() {
        let ws = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let root = std::env::temp_dir().join(format!("ti-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        // A stand-in for the release binary: this test checks the layout, not the program.
        let binary = root.with_extension("bin");
        fs::write(&binary, "#!/bin/sh\n").expect("stand-in binary");
        let example = ws.join("dist/config.example.toml");
        install_into(ws, &root, &binary, Some(&example)).expect("installing");
        let mode = |p: &str| {
            fs::metadata(root.join(p))
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("usr/local/bin/trove-isolate"), 0o755);
        assert_eq!(mode("etc/systemd/system/trove-isolate.service"), 0o644);
        assert_eq!(mode("etc/trove-isolate/config.example.toml"), 0o644);
        assert_eq!(mode("etc/trove-isolate/config.toml"), 0o600);
        let unit = fs::read_to_string(root.join("etc/systemd/system/trove-isolate.service"))
            .expect("unit");
        assert_eq!(
            unit,
            fs::read_to_string(ws.join("dist/trove-isolate.service")).expect("dist unit")
        );
        assert!(unit.contains("ExecStart=/usr/local/bin/trove-isolate run"));
        let link = fs::read_link(
            root.join("etc/systemd/system/multi-user.target.wants/trove-isolate.service"),
        )
        .expect("the unit is enabled");
        assert_eq!(link, Path::new("/etc/systemd/system/trove-isolate.service"));
        let script =
            fs::read_to_string(ws.join("dist/elements/trove-isolate/install.d/50-trove-isolate"))
                .expect("element script");
        for item in items(ws, &binary, Some(Path::new("x"))) {
            assert!(
                script.contains(&format!("/{}", item.to)),
                "the element does not install {}",
                item.to
            );
        }
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_file(&binary);
    }
}
