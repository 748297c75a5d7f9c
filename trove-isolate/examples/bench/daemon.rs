//! Section 4: the daemon on a simulated Trove guest (namespaces the bench makes and removes): its
//! memory, its time from start to enforced, and a reload that replaces every client prefix, at
//! several policy sizes. Start and reload end when the daemon tells systemd it is ready
//! (READY=1 on NOTIFY_SOCKET), which it does once the kernel enforces the new policy. With
//! `--refresh`, the memory after a refresh of a host name's addresses too ([`refresh`]).

use std::{
    ffi::OsStr,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{sys::signal, unistd::Pid};
use trove_isolate::{config::Config, datapath, policy::Policy};
use trove_isolate_testbed::{scenario, unit, Guest};

use crate::scaling;

pub struct DaemonRun {
    pub entries: usize,
    /// The median of [`STARTS`] starts, and the fastest and slowest of them.
    pub start_seconds: f64,
    pub start_range: (f64, f64),
    /// Of that start, the kernel's verifier over the four programs, as the daemon logs it.
    pub verifier_seconds: Option<f64>,
    /// A reload of the same config, and one that replaces every client prefix.
    pub reload_same_seconds: f64,
    pub reload_seconds: f64,
    /// VmRSS once enforcing, and after the reload; VmHWM (the peak) at the end. KiB.
    pub rss_kib: u64,
    pub rss_after_reload_kib: u64,
    pub peak_kib: u64,
}

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts measured per size: one start is too noisy to hold against a goal.
pub const STARTS: usize = 3;

/// The scenario's guest config with `clients` client prefixes (so about that many entries).
fn config(guest: &Guest, pin_path: &Path, port: u16, clients: usize, seed: u64) -> String {
    let base = scenario::config(
        guest,
        "enforce",
        "auto",
        &pin_path.display().to_string(),
        port,
    );
    let list: Vec<String> = scaling::prefixes(clients, seed)
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
    base.replace(
        "clients = []",
        &format!("clients = [\"198.51.100.0/24\", {}]", list.join(", ")),
    )
}

fn vm_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{field} of process {pid}"))
}

/// Waits for a READY=1 notification; fails if the daemon exits first.
fn ready(socket: &UnixDatagram, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n)
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1") =>
            {
                return Ok(())
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited ({status}) before it was ready");
        }
    }
    bail!("the daemon was not ready within {READY_TIMEOUT:?}")
}

/// A daemon started by the bench, with its notify socket; [`Running::stop`] stops it and
/// removes its enforcement.
pub struct Running {
    bin: PathBuf,
    log: PathBuf,
    child: Child,
    socket: UnixDatagram,
    notify_path: PathBuf,
    pin_path: PathBuf,
}

impl Running {
    /// Starts `run --config` and waits until it enforces; its log goes to `dir`.
    pub fn start(
        bin: &Path,
        config: &Path,
        pin_path: &Path,
        dir: &Path,
    ) -> anyhow::Result<Running> {
        Running::start_with(bin, config, pin_path, dir, None)
    }

    /// [`Running::start`], with `hosts` as its /etc/hosts (in a mount namespace of its own) if
    /// given.
    pub fn start_with(
        bin: &Path,
        config: &Path,
        pin_path: &Path,
        dir: &Path,
        hosts: Option<&Path>,
    ) -> anyhow::Result<Running> {
        let notify_path = dir.join(format!(
            "notify-{}.sock",
            pin_path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        let _ = std::fs::remove_file(&notify_path);
        let socket = UnixDatagram::bind(&notify_path)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let log_path = dir.join(format!(
            "{}.log",
            pin_path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("daemon")
        ));
        let log = std::fs::File::create(&log_path)?;
        // As the shipped unit runs it, the files it hides out of its sight (the kernel's BTF);
        // the child's PID is the daemon's.
        let binds: Vec<(&OsStr, &OsStr)> = hosts
            .map(|h| (h.as_os_str(), OsStr::new("/etc/hosts")))
            .into_iter()
            .collect();
        let argv = [bin.as_os_str(), OsStr::new("run"), OsStr::new("--config")];
        let mut command = unit::as_the_unit(&binds, &argv);
        let child = command
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut running = Running {
            bin: bin.to_owned(),
            log: log_path,
            child,
            socket,
            notify_path,
            pin_path: pin_path.to_owned(),
        };
        if let Err(e) = running.ready() {
            let _ = running.stop();
            return Err(e);
        }
        Ok(running)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its log (standard error) goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits for a READY=1 notification; fails if the daemon exits first.
    pub fn ready(&mut self) -> anyhow::Result<()> {
        ready(&self.socket, &mut self.child)
    }

    pub fn reload(&mut self) -> anyhow::Result<()> {
        signal::kill(Pid::from_raw(self.pid() as i32), signal::Signal::SIGHUP)?;
        self.ready()
    }

    /// CPU time the daemon used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces) start at its closing paren.
        let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    /// SIGTERM, then `detach` (enforcement outlives the daemon), then the pins.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = signal::kill(Pid::from_raw(self.pid() as i32), signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let detached = Command::new(&self.bin)
            .args(["detach", "--pin-path"])
            .arg(&self.pin_path)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.notify_path);
        if !detached.is_ok_and(|s| s.success()) {
            bail!("detach failed; pins stay at {}", self.pin_path.display());
        }
        let _ = std::fs::remove_dir_all(&self.pin_path);
        // The daemon that held it is gone, and the pin path was this run's alone.
        let _ = std::fs::remove_file(trove_isolate::pins::Pins::new(&self.pin_path).lock_file());
        Ok(())
    }
}

/// A daemon's place: its guest, its tag (the pin directory's name and its log's), its pin path,
/// a directory for its files and a free metrics port.
struct Place {
    guest: Guest,
    tag: String,
    pin_path: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Place {
    fn new(label: &str) -> anyhow::Result<Place> {
        let tag = format!("trove-isolate-bench-{}-{label}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Place {
            guest: Guest::new(&format!("bd{label}")),
            pin_path: PathBuf::from("/sys/fs/bpf").join(&tag),
            tag,
            dir,
            port,
        })
    }
}

fn one(bin: &Path, clients: usize, n: usize, out: &Path) -> anyhow::Result<DaemonRun> {
    let Place {
        guest,
        pin_path,
        dir,
        port,
        ..
    } = Place::new(&n.to_string())?;
    let config_path = dir.join("config.toml");
    let text = config(&guest, &pin_path, port, clients, 1);
    std::fs::write(&config_path, &text)?;
    let policy = Policy::from_config_with(
        &Config::parse(&text, &config_path)?,
        &config_path,
        &trove_isolate::resolve::NoNames,
    )?;
    let entries = policy.entries().len();
    drop(policy);
    eprintln!("bench: daemon, {entries} policy entries");

    let started = Instant::now();
    let mut running = Running::start(bin, &config_path, &pin_path, out)?;
    let start_seconds = started.elapsed().as_secs_f64();
    let verifier_seconds = verified_in(running.log_path());
    let result = (|| -> anyhow::Result<DaemonRun> {
        let rss_kib = vm_kib(running.pid(), "VmRSS:")?;
        let reloading = Instant::now();
        running.reload()?;
        let reload_same_seconds = reloading.elapsed().as_secs_f64();
        // Every client prefix replaced by another: the reload adds all and removes all.
        std::fs::write(&config_path, config(&guest, &pin_path, port, clients, 2))?;
        let reloading = Instant::now();
        running.reload()?;
        let reload_seconds = reloading.elapsed().as_secs_f64();
        Ok(DaemonRun {
            entries,
            start_seconds,
            start_range: (start_seconds, start_seconds),
            verifier_seconds,
            reload_same_seconds,
            reload_seconds,
            rss_kib,
            rss_after_reload_kib: vm_kib(running.pid(), "VmRSS:")?,
            peak_kib: vm_kib(running.pid(), "VmHWM:")?,
        })
    })();
    let stopped = running.stop();
    let _ = std::fs::remove_dir_all(&dir);
    drop(guest);
    let run = result?;
    stopped?;
    Ok(run)
}

/// What the daemon's log says the verifier took at its start ([`datapath::VERIFIED_IN`]), if it
/// says.
fn verified_in(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let ms: f64 = text
        .lines()
        .find_map(|l| l.split_once(datapath::VERIFIED_IN))?
        .1
        .split_once(" ms")?
        .0
        .parse()
        .ok()?;
    Some(ms / 1e3)
}

/// Each size [`STARTS`] times; the run with the median start stands for the size.
pub fn run(bin: &Path, sizes: &[usize], out: &Path) -> anyhow::Result<Vec<DaemonRun>> {
    let mut runs = Vec::new();
    for (n, &clients) in sizes.iter().enumerate() {
        let mut tries = (0..STARTS)
            .map(|k| one(bin, clients, n * STARTS + k, out))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tries.sort_by(|a, b| a.start_seconds.total_cmp(&b.start_seconds));
        let range = (tries[0].start_seconds, tries[STARTS - 1].start_seconds);
        let mut median = tries.swap_remove(STARTS / 2);
        median.start_range = range;
        runs.push(median);
    }
    Ok(runs)
}

/// A daemon's memory after a refresh of a host name's addresses, the policy of `clients`
/// prefixes.
pub struct RefreshRun {
    pub entries: usize,
    pub rss_kib: u64,
    pub rss_after_refresh_kib: u64,
    /// The daemon's CPU time from the answer's change until the refresh applied it (the
    /// refresh, and the loop's other work meanwhile), and how long that was.
    pub refresh_cpu_seconds: f64,
    pub refresh_wait_seconds: f64,
}

/// The name the policy's extra endpoint is given, answered by the daemon's hosts file (no DNS
/// query leaves the machine), and the addresses it answers before and after.
const NAME: &str = "bench-refresh.test";
const ANSWERS: [&str; 2] = ["192.0.2.77", "192.0.2.78"];

/// Starts the daemon on `clients` prefixes and a host name its hosts file answers, changes the
/// answer, and reads its memory once the refresh has applied it (the hosts file is read again
/// every `resolve::HOSTS_REFRESH`, a minute).
pub fn refresh(bin: &Path, clients: usize, out: &Path) -> anyhow::Result<RefreshRun> {
    let Place {
        guest,
        tag,
        pin_path,
        dir,
        port,
    } = Place::new("r")?;
    let hosts = dir.join("hosts");
    let answer = |address: &str| std::fs::write(&hosts, format!("{address} {NAME}\n"));
    answer(ANSWERS[0])?;
    let config_path = dir.join("config.toml");
    let text = config(&guest, &pin_path, port, clients, 1).replacen(
        "allow = [",
        &format!("allow = [ {{ to = \"{NAME}\", port = 8080, proto = \"tcp\" }},"),
        1,
    );
    anyhow::ensure!(
        text.contains(NAME),
        "the scenario's config has no allow list"
    );
    std::fs::write(&config_path, &text)?;
    // Without the name's address (not looked up here).
    let entries = Policy::from_config_with(
        &Config::parse(&text, &config_path)?,
        &config_path,
        &trove_isolate::resolve::NoNames,
    )?
    .entries()
    .len();
    eprintln!("bench: daemon, {entries} policy entries and a host name, refreshed");
    let log = out.join(format!("{tag}.log"));
    let result = (|| -> anyhow::Result<RefreshRun> {
        let running = Running::start_with(bin, &config_path, &pin_path, out, Some(&hosts))?;
        let measured = (|| -> anyhow::Result<RefreshRun> {
            let rss_kib = vm_kib(running.pid(), "VmRSS:")?;
            let cpu = running.cpu_seconds()?;
            let changed = Instant::now();
            // In place: the daemon's /etc/hosts is this file's inode.
            answer(ANSWERS[1])?;
            let deadline = Instant::now() + trove_isolate::resolve::HOSTS_REFRESH * 2;
            let applied = "host names resolve differently now";
            while !std::fs::read_to_string(&log)?.contains(applied) {
                anyhow::ensure!(Instant::now() < deadline, "no refresh within two minutes");
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(RefreshRun {
                entries,
                rss_kib,
                rss_after_refresh_kib: vm_kib(running.pid(), "VmRSS:")?,
                refresh_cpu_seconds: running.cpu_seconds()? - cpu,
                refresh_wait_seconds: changed.elapsed().as_secs_f64(),
            })
        })();
        let stopped = running.stop();
        let run = measured?;
        stopped?;
        Ok(run)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    drop(guest);
    result
}
