//! The packet tables and the real-traffic tests on the kernels Trove's guests run, in virtme-ng
//! VMs: Ubuntu 22.04's Linux 5.15 (the oldest: no TCX, so the legacy clsact + cls_bpf path, and
//! the oldest verifier), Ubuntu 24.04's 6.8 and Debian's 6.1.
//!
//! Each VM boots the distribution's own kernel with the host's root filesystem (read-only, shared
//! over 9p), so the test binaries built on the host run there unchanged. Under TCG (no nested KVM
//! on the CI machines) a boot takes 20-30 seconds.

use std::{
    env, fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    sh,
    ubuntu::{self, Kernel},
};

/// virtme-ng, pinned: its guest init, console and exit-status plumbing change between releases.
macro_rules! vng_version {
    () => {
        "1.42"
    };
}
const VNG_VERSION: &str = vng_version!();

/// The help text's paragraph on the VM part of `cargo xtask test`.
pub const LONG_ABOUT: &str = concat!(
    "\
Then, unless --no-vm, the tests run again on the kernels Trove's guests boot, each in a virtme-ng \
VM under QEMU's TCG emulation (no KVM: nested KVM does not work on the CI machines):

  Ubuntu 22.04's Linux 5.15, the oldest (no TCX there: the legacy clsact path; the oldest
    verifier): the packet tables and the real-traffic tests;
  Ubuntu 24.04's Linux 6.8: every program loads (the packet tables' verifier tests);
  Debian's Linux 6.1: every program loads (and the packet tables and the real-traffic tests in
    5.15's place when Ubuntu's archive cannot be reached, with a warning at the end).

That part:

 1. installs what it lacks, each step printing `vm: <step> ... ok` when there is nothing to do:
    qemu-system-x86, busybox-static and Debian's 6.1 kernel (linux-image-6.1.0-N-amd64, the
    ABI number N found with apt-cache; not the -cloud- flavour, which lacks 9p) with one
    `apt-get update` and one `apt-get install --no-install-recommends` (the kernel package only
    adds files under /boot and /lib/modules, and an initramfs virtme-ng does not use; this
    machine's boot is left alone); virtme-ng ",
    vng_version!(),
    " in a Python venv under ~/.cache/trove-isolate/virtme-ng (pip); and
    Ubuntu's two kernels, the newest linux-image-unsigned-<line>-N-generic and linux-modules
    of each release's -updates suite, from http://archive.ubuntu.com without apt: the suite's
    InRelease checked with gpgv against Ubuntu's archive key (kept in xtask/keys/, its
    fingerprint pinned), the index and the packages against its SHA256s. Each image is kept
    under ~/.cache/trove-isolate/kernels/<release>/, its modules go to /lib/modules/<release>.
    A first install takes one to two minutes;

 2. finds the test binaries with `cargo test --workspace --no-run --message-format=json` (built
    already by the host run: nothing rebuilds);

 3. boots VMs with `vng --disable-kvm --memory 2G --cpus 1 --run <image> --user root --exec
    <target>/vm-tests/run-<release>-<part>.sh`, which mounts bpffs, loads veth, puts iproute2's
    ip first on PATH (busybox's lacks veth) and runs one test binary, one test at a time
    (--test-threads=1). On the oldest kernel, three VMs:
      enforcement, all but the TCX tests and a share the host runs (userspace, or whose
      kernel side the packet tables check): legacy clsact explicitly, and attach = \"auto\",
      which picks legacy there (3 detach rounds, not 50: under TCG a daemon start takes
      seconds);
      tables: all of packets (with --nocapture for the verified instruction counts);
      follow, on legacy, but the same share: the business NIC moved through 5 container
      starts and stops (the host's run: 20) with a denied stream running (with --nocapture,
      for the window it measured);
    with --vm-full, enforcement and follow run every test but the TCX ones, with 20 moves;
    and on each other kernel one, loads: packets' two verifier tests
    (verified_instruction_counts, the_benchmark_programs_load).
    Two VMs run at a time, one vCPU each (with two each, a vCPU preempted on the host while it
    holds a guest lock has the other spin, and two VMs took three times as long as one):
    enforcement and then the loads in one, tables and then follow in the other. Each of their
    output lines starts with [<release> <part>];

 4. prints, for each VM, the release it ran, the boot time and the binary's run time, then
    each program's verified instruction count on the host and on each kernel (5.15 does not
    report it: `-`). A test failing in a VM, or a VM not reaching the end of its script (a
    guest panic, a 25 minute timeout), fails the command.

The VM part takes about 12 minutes on 2 cores (boots of 20-40 s; on 5.15, side by side, \
enforcement about 10 minutes, the packet tables 7 and follow 5; the verifier tests well under a \
minute on each other kernel; one after the other with two vCPUs each it was 14), plus a first \
install. \
--vm-only runs only it (after setup and a build), --no-vm skips it, --vm-full runs the VMs' \
every test (about 8 minutes more)."
);

/// The guest's memory; the tests need far less, TCG needs some slack.
const VM_MEMORY: &str = "2G";
/// One vCPU a VM, so two VMs at a time fit the two cores: with two each (vng's default, the
/// host's count), a vCPU preempted on the host while it holds a guest lock has the guest's
/// other vCPU spin for it, and two VMs side by side took three times as long as one alone.
const VM_CPUS: &str = "1";
/// Far longer than a run takes (the longest, 5.15's enforcement, about 10 minutes under TCG
/// beside another VM).
const VM_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// The business NIC's moves the follower's test makes in the VM (the host's run, and
/// `--vm-full`, make 20): each container start and stop is seconds under TCG.
const VM_MOVES: usize = 5;
/// Prefix of the lines the guest script prints for xtask to read.
const MARK: &str = "trove-vm:";

/// What the VMs need, ready.
pub struct Vm {
    vng: PathBuf,
    targets: Vec<Target>,
    /// What could not be set up, and is left out (said again at the end).
    warnings: Vec<String>,
}

/// A kernel to boot, and what runs on it.
struct Target {
    /// `Ubuntu 22.04`
    distro: &'static str,
    kernel: Kernel,
    plan: Plan,
}

#[derive(Clone, Copy, PartialEq)]
enum Plan {
    /// The packet tables and the real-traffic tests (legacy attach).
    Full,
    /// The verifier's part of the packet tables: every program loads (the datapath's and the
    /// benchmark's), and its verified instructions are counted.
    Loads,
}

impl Plan {
    /// The VMs the plan takes: the oldest kernel's tests in three.
    fn parts(self) -> &'static [Part] {
        match self {
            Plan::Full => &[Part::Enforcement, Part::Tables, Part::Follow],
            Plan::Loads => &[Part::Loads],
        }
    }
}

/// What one VM runs.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// Every packet table.
    Tables,
    /// The real-traffic tests, on legacy clsact.
    Enforcement,
    /// The NIC follower's, on legacy clsact.
    Follow,
    /// The packet tables' verifier tests.
    Loads,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Tables => "tables",
            Part::Enforcement => "enforcement",
            Part::Follow => "follow",
            Part::Loads => "loads",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Part::Tables => "the packet tables",
            Part::Enforcement => "the real-traffic tests",
            Part::Follow => "the NIC follower's tests",
            Part::Loads => "the programs' loading",
        }
    }

    /// Which of the two VMs at a time runs it, in about the same time each (on 5.15 under
    /// TCG, side by side: enforcement 10 minutes and the verifier tests 1; the packet tables 7
    /// and follow 5).
    fn lane(self) -> usize {
        match self {
            Part::Enforcement | Part::Loads => 0,
            Part::Tables | Part::Follow => 1,
        }
    }

    /// Whether it runs the packet tables' verifier test, which prints the counts.
    fn counts(self) -> bool {
        matches!(self, Part::Tables | Part::Loads)
    }
}

/// One VM: a kernel and the part of the tests it runs.
struct Boot<'a> {
    target: &'a Target,
    part: Part,
}

impl Boot<'_> {
    /// How its output lines are told apart from the other VM's.
    fn tag(&self) -> String {
        format!("[{} {}]", self.target.kernel.release, self.part.name())
    }

    /// `Ubuntu 22.04 (5.15.0-N-generic, the packet tables)`
    fn what(&self) -> String {
        format!(
            "{} ({}, {})",
            self.target.distro,
            self.target.kernel.release,
            self.part.what()
        )
    }
}

fn done(what: &str, how: &str) {
    eprintln!("vm: {what} ... {how}");
}

/// Installs what the VM lacks, quickly when nothing is missing.
pub fn setup() -> anyhow::Result<Vm> {
    sh::require_root("the VM tests install packages and boot a VM as root")?;
    let mut missing: Vec<String> = Vec::new();

    const QEMU: &str = "qemu-system-x86_64";
    match sh::output(QEMU, &["--version"]) {
        Some(v) => done(QEMU, &format!("ok ({})", first_line(&v))),
        None => {
            done(QEMU, "missing (qemu-system-x86)");
            missing.push("qemu-system-x86".into());
        }
    }
    // Ubuntu's kernels are fetched with curl.
    if sh::output("curl", &["--version"]).is_some() {
        done("curl", "ok");
    } else {
        done("curl", "missing");
        missing.push("curl".into());
    }
    const BUSYBOX: &str = "busybox-static";
    if deb_installed(BUSYBOX) {
        done(BUSYBOX, "ok");
    } else {
        done(BUSYBOX, "missing");
        missing.push(BUSYBOX.into());
    }
    const KERNEL: &str = "Linux 6.1 (Debian, with 9p)";
    let kernel = installed_kernel();
    match &kernel {
        Some(k) => done(KERNEL, &format!("ok ({})", k.image.display())),
        None => done(KERNEL, "missing"),
    }
    const VENV: &str = "python3 venv";
    let venv_dir = vng_venv()?;
    let need_venv_module = !venv_dir.join("bin/vng").exists() && !python_has_venv();
    if need_venv_module {
        done(VENV, "missing (python3-venv)");
        missing.push("python3-venv".into());
    }

    if !missing.is_empty() || kernel.is_none() {
        let started = Instant::now();
        done("apt-get update", "running");
        sh::run_cmd(apt("apt-get").args(["update", "-q"]))
            .context("apt-get update (needs the Debian mirror)")?;
        if kernel.is_none() {
            let package = kernel_package()?;
            done(KERNEL, &format!("installing {package}"));
            missing.push(package);
        }
        done(
            "apt-get install",
            &format!(
                "{} (about a minute: unpacking, an initramfs)",
                missing.join(" ")
            ),
        );
        sh::run_cmd(
            apt("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                // Keep local changes to configuration files, without asking.
                .args(["-o", "Dpkg::Options::=--force-confdef"])
                .args(["-o", "Dpkg::Options::=--force-confold"])
                .args(&missing),
        )
        .with_context(|| format!("apt-get install {}", missing.join(" ")))?;
        done(
            "apt-get",
            &format!("ok ({:.0} s)", started.elapsed().as_secs_f64()),
        );
        if sh::output(QEMU, &["--version"]).is_none() {
            bail!("qemu-system-x86 was installed but `{QEMU} --version` does not run");
        }
    }
    let kernel = match kernel {
        Some(k) => k,
        None => {
            let k = installed_kernel().context(
                "the 6.1 kernel package was installed, but no /boot/vmlinuz-6.1.*-amd64 with \
                 the 9p module under /lib/modules is there",
            )?;
            done(KERNEL, &format!("ok ({})", k.image.display()));
            k
        }
    };
    let vng = virtme_ng(&venv_dir)?;

    // The real-traffic tests run on the oldest kernel there is: Trove's 22.04 guests' 5.15, or
    // Debian's 6.1 where Ubuntu's archive cannot be reached.
    let mut targets = Vec::new();
    let mut warnings = Vec::new();
    for (series, plan) in [(ubuntu::JAMMY, Plan::Full), (ubuntu::NOBLE, Plan::Loads)] {
        match ubuntu::kernel(&series) {
            Ok(kernel) => {
                done(
                    &format!("{} kernel", series.name),
                    &format!("ok ({})", kernel.image.display()),
                );
                targets.push(Target {
                    distro: series.name,
                    kernel,
                    plan,
                });
            }
            // Only an archive out of reach is worked around (with a warning, again at the
            // end): a signature or hash that does not match, a missing tool, fails the run.
            Err(e) if e.downcast_ref::<ubuntu::Unreachable>().is_some() => {
                let w = format!(
                    "NOT tested on {}'s kernel: Ubuntu's archive is out of reach: {e:#}",
                    series.name
                );
                eprintln!("vm: WARNING: {w}");
                warnings.push(w);
            }
            Err(e) => return Err(e.context(format!("fetching {}'s kernel", series.name))),
        }
    }
    let plan = if targets.iter().any(|t| t.plan == Plan::Full) {
        Plan::Loads
    } else {
        Plan::Full
    };
    targets.push(Target {
        distro: "Debian 12",
        kernel,
        plan,
    });
    Ok(Vm {
        vng,
        targets,
        warnings,
    })
}

/// `apt-get`/`apt-cache` without questions, whatever the locale.
fn apt(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
    cmd
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

fn deb_installed(package: &str) -> bool {
    sh::output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.trim() == "install ok installed")
}

/// The newest Debian 6.1 kernel here (`/boot/vmlinuz-6.1.*-amd64`, not -cloud- nor -rt-) whose
/// modules include 9p, which virtme-ng shares the root filesystem over.
fn installed_kernel() -> Option<Kernel> {
    let mut found: Vec<Kernel> = fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            let flavour_ok = release.starts_with("6.1.")
                && release.ends_with("-amd64")
                && !release.contains("-cloud-")
                && !release.contains("-rt-");
            let modules = Path::new("/lib/modules").join(&release);
            let has_9p =
                modules.join("kernel/fs/9p").is_dir() && modules.join("modules.dep").exists();
            (flavour_ok && has_9p).then(|| Kernel {
                image: e.path(),
                release,
            })
        })
        .collect();
    found.sort_by_key(|k| version_key(&k.release));
    found.pop()
}

/// `6.1.0-50-amd64` → [6, 1, 0, 50]: numeric order, so -100 sorts after -99.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The name of Debian's current 6.1 kernel package, `linux-image-6.1.0-N-amd64`: what the
/// linux-image-amd64 metapackage depends on, else the highest N apt knows.
fn kernel_package() -> anyhow::Result<String> {
    let is_61 = |name: &str| {
        name.strip_prefix("linux-image-6.1.0-")
            .and_then(|rest| rest.strip_suffix("-amd64"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let depends = apt("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .stderr(Stdio::null())
        .output()
        .context("running apt-cache depends linux-image-amd64")?;
    let from_meta = String::from_utf8_lossy(&depends.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|n| is_61(n))
        .map(str::to_owned);
    if let Some(name) = from_meta {
        return Ok(name);
    }
    let search = apt("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        ])
        .stderr(Stdio::null())
        .output()
        .context("running apt-cache search")?;
    let text = String::from_utf8_lossy(&search.stdout);
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_61(n))
        .collect();
    names.sort_by_key(|n| version_key(n));
    names.last().map(|n| (*n).to_owned()).context(
        "apt knows no linux-image-6.1.0-N-amd64 package (is this Debian bookworm, with its \
         main and security suites in the apt sources?)",
    )
}

/// Where virtme-ng lives: a venv of its own, so neither pip's view of the system Python
/// (PEP 668) nor other Python packages matter.
fn vng_venv() -> anyhow::Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/trove-isolate/virtme-ng"))
}

fn python_has_venv() -> bool {
    sh::output("python3", &["-c", "import venv, ensurepip"]).is_some()
}

fn virtme_ng(venv: &Path) -> anyhow::Result<PathBuf> {
    let what = format!("virtme-ng {VNG_VERSION}");
    let vng = venv.join("bin/vng");
    let version = || {
        sh::output(vng.to_str()?, &["--version"])
            .filter(|v| v.split_whitespace().nth(1) == Some(VNG_VERSION))
            .map(|v| v.trim().to_owned())
    };
    if let Some(v) = version() {
        done(&what, &format!("ok ({})", vng.display()));
        let _ = v;
        return Ok(vng);
    }
    let started = Instant::now();
    done(
        &what,
        &format!("missing; installing with pip into {}", venv.display()),
    );
    if !venv.join("bin/pip").exists() {
        sh::run_cmd(Command::new("python3").args(["-m", "venv"]).arg(venv))
            .context("creating a Python venv for virtme-ng (python3 -m venv)")?;
    }
    sh::run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={VNG_VERSION}")),
    )
    .context("pip install virtme-ng (needs PyPI)")?;
    version().with_context(|| {
        format!(
            "virtme-ng was installed, but `{} --version` does not report {VNG_VERSION}",
            vng.display()
        )
    })?;
    done(
        &what,
        &format!("ok ({:.0} s)", started.elapsed().as_secs_f64()),
    );
    Ok(vng)
}

/// The test executables the VM runs, from `cargo test --no-run --message-format=json`.
struct TestBins {
    packets: PathBuf,
    enforcement: PathBuf,
    follow: PathBuf,
}

fn test_bins() -> anyhow::Result<TestBins> {
    eprintln!("xtask: cargo test --workspace --no-run --message-format=json-render-diagnostics");
    let out = Command::new("cargo")
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |name: &str| -> anyhow::Result<PathBuf> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
            .filter(|m| {
                m["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "test"))
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("cargo listed no test executable `{name}`"))
    };
    Ok(TestBins {
        packets: find("packets")?,
        enforcement: find("enforcement")?,
        follow: find("follow")?,
    })
}

/// cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config).
fn target_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// Tests the oldest kernel's VMs never run: they attach with TCX, which came in Linux 6.6.
const TCX_ONLY: &[&str] = &[
    "policy_holds_on_tcx",
    "tcx_attaches_first_in_the_chain",
    "eth1_json_gone_takes_no_policy_off_the_business_nic_on_tcx",
    "the_boot_guard_holds_every_nic_until_troves_files_come_on_tcx",
    "the_boot_guard_follows_a_nic_docker_hostnic_moves_on_tcx",
    "the_business_nic_is_followed_on_tcx",
    "a_nic_that_lost_the_policy_while_no_daemon_ran_is_held_on_tcx",
];

/// Tests the VMs leave to the host unless `--vm-full`: their part is userspace, or the packet
/// tables check their kernel side, and each is a daemon start or more (tens of seconds under
/// TCG).
const HOST_SHARE: &[&str] = &[
    // The pin path's lock: userspace, and two daemon starts.
    "a_second_daemon_on_the_pin_path_is_refused",
    // The boot guard's starts: its programs' verdicts are the packet tables', its attaching the
    // roles' code.
    "the_boot_guard_holds_every_nic_until_troves_files_come_on_legacy_clsact",
    "the_boot_guard_follows_a_nic_docker_hostnic_moves_on_legacy_clsact",
    // Discovery's reading of Trove's files.
    "an_instance_without_a_user_port_is_held_to_the_management_policy",
    "two_roles_that_find_one_nic_are_refused",
    // A bad config's refusal, `explain`'s answers, audit mode (its verdicts are the tables').
    "bad_config_is_refused_and_the_old_policy_stays",
    "explain_agrees_with_the_datapath",
    "audit_mode_counts_but_passes",
    // The follower's choice among devices with the NIC's MAC.
    "a_device_with_the_nics_mac_does_not_lure_the_daemon",
];

/// The `--skip` arguments for the tests a VM leaves out (whole names: the runs pass `--exact`).
fn skips(full: bool) -> String {
    TCX_ONLY
        .iter()
        .chain(if full { &[][..] } else { HOST_SHARE })
        .map(|name| format!(" --skip {name}"))
        .collect()
}

/// The guest's script. It runs as root in the host's (read-only) root filesystem; its `MARK`
/// lines are for xtask. Its exit status is the tests'. `full`: every test the kernel can run,
/// with the host's 20 moves of the NIC (`--vm-full`).
fn script(root: &Path, bins: &TestBins, part: Part, full: bool) -> String {
    // Full: the follower's test's own number of moves.
    let moves = if full {
        String::new()
    } else {
        format!("export TROVE_ISOLATE_MOVES={VM_MOVES}\n")
    };
    let tests = match part {
        Part::Loads => format!(
            "run packets '{}' verified_instruction_counts the_benchmark_programs_load --exact \
             --test-threads=1 --nocapture\n",
            bins.packets.display()
        ),
        Part::Tables => format!(
            "run packets '{}' --test-threads=1 --nocapture\n",
            bins.packets.display()
        ),
        Part::Enforcement => format!(
            "# Under TCG a daemon start takes seconds: fewer detach rounds than on the host.\n\
             export TROVE_ISOLATE_DETACH_ROUNDS=3\n\
             run enforcement '{}' --test-threads=1 --exact{}\n",
            bins.enforcement.display(),
            skips(full),
        ),
        Part::Follow => format!(
            "# Each container start and stop is seconds under TCG.\n\
             {moves}run follow '{}' --test-threads=1 --nocapture --exact{}\n",
            bins.follow.display(),
            skips(full),
        ),
    };
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask test`: runs inside a test VM (see `cargo xtask test --help`).
exec 2>&1
# iproute2 first: the testbed runs `ip` from PATH, and busybox's ip cannot make veth pairs.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export RUST_BACKTRACE=1
ms() {{ echo $(( $(date +%s%N) / 1000000 )); }}
fail() {{ echo "{MARK} error: $*"; exit 90; }}
echo "{MARK} kernel $(uname -r)"
[ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ] || mount -t bpf bpf /sys/fs/bpf || fail "mounting bpffs"
modprobe veth || fail "modprobe veth"
ip -V 2>&1 | grep -q iproute2 || fail "ip on PATH is not iproute2: $(command -v ip), $(ip -V 2>&1)"
cd '{root}' || fail "cd {root}"
status=0
run() {{
    name=$1; shift
    echo "{MARK} start $name"
    start=$(ms)
    "$@"
    rc=$?
    echo "{MARK} ran $name exit $rc ms $(( $(ms) - start ))"
    [ $rc -eq 0 ] || status=1
}}
{tests}echo "{MARK} end status $status"
exit $status
"#,
        root = root.display(),
    )
}

struct Descendants {
    all: Vec<u32>,
    /// Those without children of their own.
    leaves: Vec<u32>,
}

/// Every process below `root`, from /proc.
fn descendants(root: u32) -> Descendants {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    found.remove(0);
    let leaves = found
        .iter()
        .copied()
        .filter(|&p| !parents.iter().any(|q| q.1 == p))
        .collect();
    Descendants { all: found, leaves }
}

/// A verified-instruction count: (kernel, program, count).
type Count = (String, String, String);

/// One verified-instruction-count line.
fn verified_line(line: &str) -> Option<Count> {
    // "verified instructions: kernel 6.1.0-50-amd64 program mgmt_ingress 8159", possibly after
    // the test harness's "test verified_instruction_counts ... " (--nocapture).
    const PREFIX: &str = "verified instructions: kernel ";
    let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
    let (kernel, rest) = rest.split_once(" program ")?;
    let (program, count) = rest.split_once(' ')?;
    // "not reported": a kernel before 5.16.
    if !count.trim().bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        kernel.to_owned(),
        program.to_owned(),
        count.trim().to_owned(),
    ))
}

/// Builds (nothing, after the host run) and runs the tests in the VMs, two at a time
/// ([`Part::lane`], one vCPU each: [`VM_CPUS`]). Prints each VM's summary, then the verifier's
/// counts side by side.
pub fn run(vm: &Vm, full: bool) -> anyhow::Result<()> {
    let bins = test_bins()?;
    let root = env::current_dir().context("the workspace root")?;
    let dir = target_dir()?.join("vm-tests");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // The same test's lines from the host, for the comparison (it takes well under a second).
    let host_counts = Command::new(&bins.packets)
        .args(["verified_instruction_counts", "--exact", "--nocapture"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    let boots: Vec<Boot> = vm
        .targets
        .iter()
        .flat_map(|target| {
            target
                .plan
                .parts()
                .iter()
                .map(move |&part| Boot { target, part })
        })
        .collect();
    let mut scripts = Vec::new();
    for b in &boots {
        let path = dir.join(format!(
            "run-{}-{}.sh",
            b.target.kernel.release,
            b.part.name()
        ));
        fs::write(&path, script(&root, &bins, b.part, full))
            .with_context(|| format!("writing {}", path.display()))?;
        scripts.push(path);
    }
    let started = Instant::now();
    let lane = |lane: usize| -> Vec<(usize, Outcome)> {
        (0..boots.len())
            .filter(|&i| boots[i].part.lane() == lane)
            .map(|i| (i, boot(vm, &boots[i], &scripts[i])))
            .collect()
    };
    let mut outcomes = std::thread::scope(|scope| {
        let other = scope.spawn(|| lane(1));
        let mut outcomes = lane(0);
        outcomes.extend(other.join().expect("a VM's thread"));
        outcomes
    });
    outcomes.sort_by_key(|(i, _)| *i);

    let mut failures = Vec::new();
    let mut columns: Vec<(String, Vec<Count>)> = Vec::new();
    for (i, outcome) in outcomes {
        let b = &boots[i];
        if b.part.counts() {
            columns.push((b.target.kernel.release.clone(), outcome.counts));
        }
        if let Err(e) = outcome.result {
            failures.push(format!("{}: {e:#}", b.what()));
        }
    }
    eprintln!(
        "xtask: the VMs took {:.1} s, two at a time",
        started.elapsed().as_secs_f64()
    );
    eprintln!();
    print_counts(&host_counts, &columns);
    for w in &vm.warnings {
        eprintln!("xtask: WARNING: {w}");
    }
    match failures.as_slice() {
        [] => Ok(()),
        [one] => bail!("{one}"),
        many => bail!("{} VMs failed: {}", many.len(), many.join("; ")),
    }
}

/// What one VM gave: its verdict, and the verifier's counts it printed.
struct Outcome {
    result: anyhow::Result<()>,
    counts: Vec<Count>,
}

/// Boots one kernel with the script, its output lines tagged with [`Boot::tag`]; prints its
/// summary (and its failure) as it ends, in one write, so the other VM's lines do not break it
/// up.
fn boot(vm: &Vm, b: &Boot, script_path: &Path) -> Outcome {
    let mut counts = Vec::new();
    let mut summary = String::new();
    let result = boot_and_watch(vm, b, script_path, &mut counts, &mut summary);
    if let Err(e) = &result {
        summary.push_str(&format!("xtask: {}: {e:#}\n", b.what()));
    }
    eprint!("{summary}");
    Outcome { result, counts }
}

fn boot_and_watch(
    vm: &Vm,
    b: &Boot,
    script_path: &Path,
    vm_counts: &mut Vec<Count>,
    summary: &mut String,
) -> anyhow::Result<()> {
    let target = b.target;
    let tag = b.tag();
    let exec = format!("sh {}", script_path.display());
    // vng starts virtme-run, from the same venv, through PATH.
    let venv_bin = vm.vng.parent().context("vng's directory")?;
    let mut paths = vec![venv_bin.to_owned()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let mut cmd = Command::new(&vm.vng);
    cmd.args([
        "--disable-kvm",
        "--memory",
        VM_MEMORY,
        "--cpus",
        VM_CPUS,
        "--user",
        "root",
        "--run",
    ])
    .arg(&target.kernel.image)
    .args(["--exec", &exec])
    .env("PATH", env::join_paths(paths).context("PATH for vng")?)
    .stdin(Stdio::null())
    // Both piped, never our own descriptors: QEMU opens /proc/self/fd/{1,2} anew for the
    // guest's output, which truncates a log file they point to and writes from its start.
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    eprintln!(
        "xtask: {tag} booting {}'s Linux {} under TCG for {}, {} minutes at most: {} \
         --disable-kvm --memory {VM_MEMORY} --cpus {VM_CPUS} --user root --run {} --exec '{exec}'",
        target.distro,
        target.kernel.release,
        b.part.what(),
        VM_TIMEOUT.as_secs() / 60,
        vm.vng.display(),
        target.kernel.image.display(),
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", vm.vng.display()))?;
    let pid = child.id();
    let finished = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (finished, timed_out) = (finished.clone(), timed_out.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + VM_TIMEOUT;
            while Instant::now() < deadline {
                if finished.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            timed_out.store(true, Ordering::Relaxed);
            // QEMU first (the leaf under vng, the shell and virtme-run), so virtme-run reaps it
            // and vng exits; whatever is still there 10 s later, by id. (They all stay in our
            // process group, so a Ctrl-C reaches QEMU too.)
            let kill = |pids: &[u32]| {
                let _ = Command::new("sh")
                    .args(["-c", "kill -9 \"$@\"", "sh"])
                    .args(pids.iter().map(u32::to_string))
                    .status();
            };
            kill(&descendants(pid).leaves);
            for _ in 0..50 {
                if finished.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let mut rest = descendants(pid).all;
            rest.push(pid);
            kill(&rest);
        })
    };

    let mut kernel = None;
    let mut boot = None;
    let mut ran: Vec<(String, String, f64)> = Vec::new();
    let mut end_status = None;
    let mut errors = Vec::new();
    let stderr = child.stderr.take().context("vng's stderr")?;
    let copy_stderr = {
        let tag = tag.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap_or_else(|e| format!("(unreadable output: {e})"));
                eprintln!("{tag} {line}");
            }
        })
    };
    let stdout = child.stdout.take().context("vng's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_else(|e| format!("(unreadable output: {e})"));
        println!("{tag} {line}");
        if let Some(c) = verified_line(&line) {
            vm_counts.push(c);
        }
        let Some(mark) = line.trim().strip_prefix(MARK) else {
            continue;
        };
        let words: Vec<&str> = mark.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", release] => {
                kernel = Some((*release).to_owned());
                boot = Some(started.elapsed());
            }
            ["ran", name, "exit", rc, "ms", ms] => ran.push((
                (*name).to_owned(),
                (*rc).to_owned(),
                ms.parse::<f64>().unwrap_or(f64::NAN) / 1000.0,
            )),
            ["end", "status", s] => end_status = Some((*s).to_owned()),
            ["error", ..] => errors.push(mark.trim().to_owned()),
            _ => {}
        }
    }
    let status = child.wait().context("waiting for vng")?;
    finished.store(true, Ordering::Relaxed);
    let _ = copy_stderr.join();
    let _ = watchdog.join();
    let total = started.elapsed();

    let mut say = |line: String| {
        summary.push_str(&line);
        summary.push('\n');
    };
    say(String::new());
    say(format!(
        "xtask: ---- {}'s Linux {}: {} ----",
        target.distro,
        target.kernel.release,
        b.part.name()
    ));
    match &kernel {
        Some(k) => say(format!(
            "xtask: {} ran on Linux {k} ({}), QEMU TCG",
            b.part.what(),
            target.kernel.image.display()
        )),
        None => say(format!(
            "xtask: the VM ({}) never reached the test script",
            target.kernel.image.display()
        )),
    }
    if let Some(secs) = boot {
        say(format!(
            "xtask: boot to the script: {:.1} s",
            secs.as_secs_f64()
        ));
    }
    for (name, rc, secs) in &ran {
        let verdict = if rc == "0" { "passed" } else { "FAILED" };
        say(format!(
            "xtask: {name}: {verdict} in {secs:.1} s (exit {rc})"
        ));
    }
    say(format!(
        "xtask: VM total: {:.1} s, vng {status}",
        total.as_secs_f64()
    ));

    if timed_out.load(Ordering::Relaxed) {
        bail!(
            "the VM did not finish within {} s and was stopped",
            VM_TIMEOUT.as_secs()
        );
    }
    if kernel.is_none() {
        bail!("the VM did not start (vng {status}; its messages are above, tagged {tag})");
    }
    if let Some(e) = errors.first() {
        bail!("the VM's script failed before the tests: {e}");
    }
    if ran.iter().any(|(_, rc, _)| rc != "0") || end_status.as_deref() != Some("0") {
        bail!(
            "tests failed on Linux {}",
            kernel.as_deref().unwrap_or(&target.kernel.release)
        );
    }
    if !status.success() {
        bail!("vng failed ({status}) although every test passed");
    }
    if b.part == Part::Loads && vm_counts.is_empty() {
        bail!("the verifier tests ran no test (no verified-instruction counts): renamed?");
    }
    if ran.len() != 1 {
        bail!("the VM ran {} test binaries, not its one", ran.len());
    }
    Ok(())
}

/// The verifier's counts, a column per kernel: the host's, then each VM's (`-` where a kernel
/// does not report them: before 5.16).
fn print_counts(host_output: &str, vms: &[(String, Vec<Count>)]) {
    let host: Vec<_> = host_output.lines().filter_map(verified_line).collect();
    let host_kernel = host.first().map_or("host", |c| c.0.as_str()).to_owned();
    let mut columns = vec![(host_kernel, host)];
    columns.extend(vms.iter().cloned());
    let mut programs: Vec<String> = Vec::new();
    for c in columns.iter().flat_map(|(_, counts)| counts) {
        if !programs.contains(&c.1) {
            programs.push(c.1.clone());
        }
    }
    if programs.is_empty() {
        return;
    }
    eprintln!("xtask: verified instructions (the verifier's processed count, per program):");
    let mut header = format!("xtask:   {:<14}", "program");
    for (kernel, _) in &columns {
        header.push_str(&format!("{kernel:>22}"));
    }
    eprintln!("{header}");
    for p in &programs {
        let mut line = format!("xtask:   {p:<14}");
        for (_, counts) in &columns {
            let n = counts.iter().find(|c| &c.1 == p).map_or("-", |c| &c.2);
            line.push_str(&format!("{n:>22}"));
        }
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::{verified_line, version_key, HOST_SHARE, TCX_ONLY};

    /// Every test a VM leaves out is one the real-traffic or follower's tests have: a renamed
    /// test would otherwise run where it cannot, or a share meant for the host run there.
    #[test]
    fn the_tests_a_vm_leaves_out_exist() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../trove-isolate/tests/");
        let sources: String = ["enforcement.rs", "follow.rs"]
            .iter()
            .map(|f| std::fs::read_to_string(format!("{root}{f}")).expect("a test source"))
            .collect();
        for name in TCX_ONLY.iter().chain(HOST_SHARE) {
            assert!(
                sources.contains(&format!("#[test]\nfn {name}()")),
                "no test {name}"
            );
        }
    }

    #[test]
    fn kernel_versions_sort_numerically() {
        assert!(version_key("6.1.0-100-amd64") > version_key("6.1.0-99-amd64"));
        assert_eq!(version_key("6.1.0-50-amd64"), vec![6, 1, 0, 50, 64]);
    }

    #[test]
    fn verified_lines_parse() {
        assert_eq!(
            verified_line("verified instructions: kernel 6.1.0-50-amd64 program mgmt_ingress 8159"),
            Some((
                "6.1.0-50-amd64".into(),
                "mgmt_ingress".into(),
                "8159".into()
            ))
        );
        assert_eq!(
            verified_line("test verified_instruction_counts ... verified instructions: kernel 6.1.0-50-amd64 program biz_egress 5520"),
            Some(("6.1.0-50-amd64".into(), "biz_egress".into(), "5520".into()))
        );
        assert_eq!(verified_line("test foo ... ok"), None);
        assert_eq!(
            verified_line(
                "verified instructions: kernel 5.15.0-204-generic program biz_egress not reported"
            ),
            None
        );
    }
}
