//! Ubuntu's own kernels for the VM part: the ones Trove's guests boot (22.04's 5.15, 24.04's
//! 6.8), from Ubuntu's archive, checked against its signing key.
//!
//! Nothing goes through apt (this machine's sources stay Debian's). The suite's `InRelease` is
//! checked with gpgv against the archive key kept in this repository (`xtask/keys/`, whose
//! fingerprint is pinned below), the Packages index against the signed text's SHA256, and each
//! .deb against the index. The kernel image is kept under
//! `~/.cache/trove-isolate/kernels/<release>/`; its modules go to `/lib/modules/<release>`, where
//! the VM (which runs on this machine's root filesystem) loads them from, then `depmod`.

use std::{
    collections::HashSet,
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::sh;

/// An Ubuntu release and the kernel line its guests run (its general-availability kernel).
pub struct Series {
    /// `Ubuntu 22.04`
    pub name: &'static str,
    codename: &'static str,
    /// `5.15.0`: the packages are `linux-*-5.15.0-N-generic`.
    line: &'static str,
}

pub const JAMMY: Series = Series {
    name: "Ubuntu 22.04",
    codename: "jammy",
    line: "5.15.0",
};

pub const NOBLE: Series = Series {
    name: "Ubuntu 24.04",
    codename: "noble",
    line: "6.8.0",
};

const ARCHIVE: &str = "http://archive.ubuntu.com/ubuntu";
/// Ubuntu Archive Automatic Signing Key (2018), which signs every current suite.
const KEY_FINGERPRINT: &str = "F6ECB3762474EDA9D21B7022871920D1991BC93C";
static KEYRING: &[u8] = include_bytes!("../keys/ubuntu-archive-2018.gpg");

/// Ubuntu's archive could not be reached at all (no name, no route, a timeout): the one failure
/// the VM part works around. Anything else (a signature or a hash that does not match, a
/// package missing) is an error.
#[derive(Debug)]
pub struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A kernel ready to boot: its image, and its modules under /lib/modules.
pub struct Kernel {
    /// `5.15.0-204-generic`
    pub release: String,
    pub image: PathBuf,
}

/// The series' kernel: the newest one fetched before, else the newest in its `-updates` suite.
pub fn kernel(series: &Series) -> anyhow::Result<Kernel> {
    let cache = cache_dir()?;
    if let Some(k) = cached(&cache, series) {
        return Ok(k);
    }
    let started = Instant::now();
    let work = cache.join(format!("download-{}", series.codename));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = fetch(series, &cache, &work);
    let _ = fs::remove_dir_all(&work);
    let k = result?;
    eprintln!(
        "vm: {} kernel ... ok ({}, {:.0} s)",
        series.name,
        k.release,
        started.elapsed().as_secs_f64()
    );
    Ok(k)
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/trove-isolate/kernels"))
}

/// The newest kernel of the series in the cache whose modules are in place.
fn cached(cache: &Path, series: &Series) -> Option<Kernel> {
    let mut found: Vec<(u64, Kernel)> = fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let release = e.file_name().to_str()?.to_owned();
            let abi = abi(series, &release)?;
            let image = e.path().join("vmlinuz");
            let modules = Path::new("/lib/modules").join(&release).join("modules.dep");
            (image.exists() && modules.exists()).then_some((abi, Kernel { release, image }))
        })
        .collect();
    found.sort_by_key(|(abi, _)| *abi);
    found.pop().map(|(_, k)| k)
}

/// `5.15.0-204-generic` → 204, for the series' line only.
fn abi(series: &Series, release: &str) -> Option<u64> {
    release
        .strip_prefix(series.line)?
        .strip_prefix('-')?
        .strip_suffix("-generic")?
        .parse()
        .ok()
}

fn fetch(series: &Series, cache: &Path, work: &Path) -> anyhow::Result<Kernel> {
    let suite = format!("{}-updates", series.codename);
    eprintln!(
        "vm: {} kernel ... missing; fetching the newest {}-N-generic from {ARCHIVE} ({suite})",
        series.name, series.line
    );
    let release_file = signed_release(&suite, work)?;
    let index_path = "main/binary-amd64/Packages.gz";
    let index_sha = release_sha256(&release_file, index_path)
        .with_context(|| format!("the signed Release of {suite} lists no {index_path}"))?;
    let index_gz = work.join("Packages.gz");
    download(&format!("{ARCHIVE}/dists/{suite}/{index_path}"), &index_gz)?;
    check_sha256(&index_gz, &index_sha)?;
    let index = gunzip(&index_gz)?;

    let newest = newest_abi(series, &index).with_context(|| {
        format!(
            "{suite} has no linux-image-unsigned-{line}-N-generic with its linux-modules package",
            line = series.line
        )
    })?;
    let release = format!("{}-{newest}-generic", series.line);
    let root = work.join("root");
    for package in [
        format!("linux-image-unsigned-{release}"),
        format!("linux-modules-{release}"),
    ] {
        let (file, sha) = package_file(&index, &package)
            .with_context(|| format!("the index lists {package} without Filename or SHA256"))?;
        let deb = work.join(format!("{package}.deb"));
        eprintln!("vm:   {package} ({ARCHIVE}/{file})");
        download(&format!("{ARCHIVE}/{file}"), &deb)?;
        check_sha256(&deb, &sha)?;
        sh::run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
            .with_context(|| format!("unpacking {}", deb.display()))?;
    }

    let modules = Path::new("/lib/modules").join(&release);
    let _ = fs::remove_dir_all(&modules);
    sh::run_cmd(
        Command::new("cp")
            .arg("-a")
            .arg(root.join("lib/modules").join(&release))
            .arg(&modules),
    )
    .with_context(|| format!("copying the modules to {}", modules.display()))?;
    sh::run("depmod", &[&release]).context("depmod for the Ubuntu kernel's modules")?;
    let dir = cache.join(&release);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Renamed into place last: a copy cut short is never taken for a kernel.
    let image = dir.join("vmlinuz");
    let part = dir.join("vmlinuz.part");
    fs::copy(root.join(format!("boot/vmlinuz-{release}")), &part)
        .with_context(|| format!("the image package has no boot/vmlinuz-{release}"))?;
    fs::rename(&part, &image).with_context(|| format!("renaming {}", part.display()))?;
    Ok(Kernel { release, image })
}

/// The suite's Release text, as signed by the archive key (gpgv writes out only what the
/// signature covers).
fn signed_release(suite: &str, work: &Path) -> anyhow::Result<String> {
    let in_release = work.join("InRelease");
    download(&format!("{ARCHIVE}/dists/{suite}/InRelease"), &in_release)?;
    let keyring = work.join("ubuntu-archive-2018.gpg");
    fs::write(&keyring, KEYRING).with_context(|| format!("writing {}", keyring.display()))?;
    let signed = work.join("Release");
    let out = Command::new("gpgv")
        .args(["--status-fd", "1", "--keyring"])
        .arg(&keyring)
        .arg("--output")
        .arg(&signed)
        .arg(&in_release)
        .stdin(Stdio::null())
        .output()
        .context("running gpgv (Debian's gpgv package)")?;
    let status = String::from_utf8_lossy(&out.stdout);
    // `[GNUPG:] VALIDSIG <signing key> <date> ... <primary key>`
    let by_key = status.lines().any(|l| {
        l.starts_with("[GNUPG:] VALIDSIG ") && l.split_whitespace().last() == Some(KEY_FINGERPRINT)
    });
    if !out.status.success() || !by_key {
        bail!(
            "the InRelease of {suite} is not signed by Ubuntu's archive key {KEY_FINGERPRINT} \
             (gpgv {}: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::read_to_string(&signed).with_context(|| format!("reading {}", signed.display()))
}

/// The SHA256 a Release file gives `path`.
fn release_sha256(release: &str, path: &str) -> Option<String> {
    release
        .split("\nSHA256:")
        .nth(1)?
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (sha, _size, name) = (f.next()?, f.next()?, f.next()?);
            (name == path).then(|| sha.to_owned())
        })
}

/// The field of a Packages stanza.
fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn stanza<'a>(index: &'a str, package: &str) -> Option<&'a str> {
    index
        .split("\n\n")
        .find(|s| field(s, "Package") == Some(package))
}

/// The highest N with both `linux-image-unsigned-<line>-N-generic` and its modules package.
fn newest_abi(series: &Series, index: &str) -> Option<u64> {
    let packages: HashSet<&str> = index
        .split("\n\n")
        .filter_map(|s| field(s, "Package"))
        .collect();
    let image_prefix = format!("linux-image-unsigned-{}-", series.line);
    packages
        .iter()
        .filter_map(|p| p.strip_prefix(&image_prefix)?.strip_suffix("-generic"))
        .filter_map(|n| n.parse::<u64>().ok())
        .filter(|n| {
            packages.contains(format!("linux-modules-{}-{n}-generic", series.line).as_str())
        })
        .max()
}

/// A package's file in the pool and its SHA256.
fn package_file(index: &str, package: &str) -> Option<(String, String)> {
    let s = stanza(index, package)?;
    Some((
        field(s, "Filename")?.to_owned(),
        field(s, "SHA256")?.to_owned(),
    ))
}

fn download(url: &str, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location"])
        .args([
            "--retry",
            "3",
            "--connect-timeout",
            "20",
            "--max-time",
            "900",
        ])
        .arg("--output")
        .arg(to)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    // curl's exit codes for a host it could not resolve or reach, or that never answered.
    if matches!(out.status.code(), Some(5 | 6 | 7 | 28)) {
        return Err(Unreachable(format!("downloading {url}: {why}")).into());
    }
    bail!("downloading {url}: curl {}: {why}", out.status)
}

fn check_sha256(file: &Path, expected: &str) -> anyhow::Result<()> {
    let out = Command::new("sha256sum")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("running sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let got = text.split_whitespace().next().unwrap_or("");
    if !out.status.success() || !got.eq_ignore_ascii_case(expected) {
        bail!(
            "{} has SHA256 {got}, the signed index says {expected}",
            file.display()
        );
    }
    Ok(())
}

fn gunzip(file: &Path) -> anyhow::Result<String> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("running gzip -dc")?;
    if !out.status.success() {
        bail!("gzip -dc {} failed ({})", file.display(), out.status);
    }
    String::from_utf8(out.stdout).context("the Packages index is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_give_their_indexes_hashes() {
        let release = "Origin: Ubuntu\nMD5Sum:\n 00 1 main/binary-amd64/Packages.gz\nSHA256:\n \
                       aa 10 main/binary-amd64/Packages\n bb 20 main/binary-amd64/Packages.gz\n";
        assert_eq!(
            release_sha256(release, "main/binary-amd64/Packages.gz").as_deref(),
            Some("bb")
        );
        assert_eq!(
            release_sha256(release, "main/binary-i386/Packages.gz"),
            None
        );
    }

    #[test]
    fn the_newest_kernel_with_its_modules_is_picked() {
        let index = "Package: linux-image-unsigned-5.15.0-9-generic\nFilename: a\nSHA256: 1\n\n\
                     Package: linux-modules-5.15.0-9-generic\nFilename: b\nSHA256: 2\n\n\
                     Package: linux-image-unsigned-5.15.0-10-generic\nFilename: c\nSHA256: 3\n\n\
                     Package: linux-modules-5.15.0-10-generic\nFilename: d\nSHA256: 4\n\n\
                     Package: linux-image-unsigned-5.15.0-11-generic\nFilename: e\nSHA256: 5\n\n\
                     Package: linux-image-unsigned-6.8.0-99-generic\nFilename: f\nSHA256: 6\n";
        assert_eq!(newest_abi(&JAMMY, index), Some(10));
        assert_eq!(
            package_file(index, "linux-modules-5.15.0-10-generic"),
            Some(("d".into(), "4".into()))
        );
        assert_eq!(abi(&JAMMY, "5.15.0-204-generic"), Some(204));
        assert_eq!(abi(&NOBLE, "5.15.0-204-generic"), None);
    }
}
