//! Running the real `trove-isolate` binary against a simulated guest.
//!
//! [`Daemon`] owns one daemon process and everything it pins: on drop it kills the process and
//! runs `detach`, so a failing test leaves no program attached and no pin behind.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    sync::mpsc,
    time::{Duration, Instant},
};

use trove_isolate_testbed::unit;

pub const BIN: &str = env!("CARGO_BIN_EXE_trove-isolate");
pub const PROBE: Duration = Duration::from_millis(700);

static NEXT: AtomicU16 = AtomicU16::new(0);

/// A name unique to this test process and call.
pub fn unique(label: &str) -> String {
    format!(
        "{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback port for a daemon's metrics listener, distinct per test in this process (up to 100
/// per process) and unlikely to collide with another test process. Below Linux's ephemeral range
/// (32768 and up), where any socket the tests or the daemon open may be given the port between
/// its choice here and the daemon's bind (a CI run failed so).
pub fn metrics_port() -> u16 {
    20_000
        + (std::process::id() % 120) as u16 * 100
        + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 100
}

pub fn write_config(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("trove-isolate-test")));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// `detach` at a test's end, and the pin path's lock file with it (`detach` takes the lock, so
/// it makes the file).
pub fn detach_at_end(pin_path: &str) -> Output {
    let out = cli(&["detach", "--pin-path", pin_path]);
    remove_lock_file(pin_path);
    out
}

/// Removes the lock file of a pin path that was the test's alone, once no daemon holds it.
pub fn remove_lock_file(pin_path: impl AsRef<Path>) {
    let _ = std::fs::remove_file(trove_isolate::pins::Pins::new(pin_path.as_ref()).lock_file());
}

pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {BIN} {args:?}: {e}"))
}

pub struct Daemon {
    child: Option<Child>,
    /// Everything the daemon wrote to stderr so far: drained as it comes, so a chatty daemon
    /// never blocks on a full pipe.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    pub config: PathBuf,
    pub pin_path: PathBuf,
    pub metrics: SocketAddr,
}

impl Daemon {
    /// Starts `run --config` with the unit's capabilities ([`unit::capabilities`]) and waits
    /// (bounded) for its "enforcing" line.
    pub fn start(config: &Path, pin_path: &Path, metrics: SocketAddr) -> Daemon {
        Daemon::start_with_env(config, pin_path, metrics, &[])
    }

    /// [`Daemon::start`] with extra environment variables (NOTIFY_SOCKET, RUST_LOG).
    pub fn start_with_env(
        config: &Path,
        pin_path: &Path,
        metrics: SocketAddr,
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::enforcing(Daemon::spawn_with_env(config, pin_path, metrics, env))
    }

    /// [`Daemon::start`] in a mount namespace of its own with the paths the unit hides out of
    /// its sight ([`unit::as_the_unit`]): for tests whose namespaces exist before it starts.
    pub fn start_as_the_unit(config: &Path, pin_path: &Path, metrics: SocketAddr) -> Daemon {
        let setpriv = unit::as_the_unit(&[], &["setpriv"]);
        Daemon::enforcing(Daemon::spawn_in(setpriv, config, pin_path, metrics, &[]))
    }

    /// The daemon once it reports "enforcing" (waited for, bounded: a start in the oldest
    /// kernel's VM, whose verifier runs under TCG, took over 30 s while the host was busy).
    fn enforcing((mut daemon, stdout): (Daemon, mpsc::Receiver<String>)) -> Daemon {
        match stdout.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("enforcing") => daemon,
            other => {
                let err = daemon.kill_for_stderr();
                panic!("daemon did not report enforcing (got {other:?}); stderr:\n{err}");
            }
        }
    }

    /// [`Daemon::start_with_env`] without the wait: the daemon as soon as it runs, and the
    /// lines of its stdout.
    pub fn spawn_with_env(
        config: &Path,
        pin_path: &Path,
        metrics: SocketAddr,
        env: &[(&str, &str)],
    ) -> (Daemon, mpsc::Receiver<String>) {
        Daemon::spawn_in(Command::new("setpriv"), config, pin_path, metrics, env)
    }

    /// Runs `setpriv` (or a command that execs it, as its arguments follow) with the unit's
    /// capabilities, and the daemon under it.
    fn spawn_in(
        mut setpriv: Command,
        config: &Path,
        pin_path: &Path,
        metrics: SocketAddr,
        env: &[(&str, &str)],
    ) -> (Daemon, mpsc::Receiver<String>) {
        let mut child = setpriv
            .arg(format!("--bounding-set=-all,{}", unit::capabilities()))
            .args(["--no-new-privs", BIN, "run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&chunk[..n]);
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let daemon = Daemon {
            child: Some(child),
            stderr,
            config: config.to_owned(),
            pin_path: pin_path.to_owned(),
            metrics,
        };
        (daemon, rx)
    }

    /// SIGKILL: no chance to clean up, as when the OOM killer strikes.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 the daemon");
            child.wait().expect("reap the daemon");
        }
    }

    /// Kills the daemon and returns what it wrote to stderr (for a failing test's message).
    pub fn kill_for_stderr(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The drain thread ends at EOF, right after the exit; give it a moment.
        std::thread::sleep(Duration::from_millis(50));
        self.stderr()
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the daemon writes `needle` to stderr within `within` (polled every 5 ms).
    pub fn wait_for_stderr(&self, needle: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait: the orderly stop systemd does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .expect("SIGTERM the daemon");
            let status = child.wait().expect("reap the daemon");
            assert!(status.success(), "daemon exited with {status} on SIGTERM");
        }
    }

    /// Fetches /metrics over loopback.
    pub fn scrape(&self) -> String {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to metrics at {}: {e}", self.metrics));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("sending the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading the response");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "metrics answered:\n{response}"
        );
        response
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(BIN)
            .args(["detach", "--pin-path"])
            .arg(&self.pin_path)
            .output();
        let _ = std::fs::remove_file(&self.config);
        remove_lock_file(&self.pin_path);
    }
}

/// The value of the first series of `name` whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A database session kept open across something (a first start, an upgrade): an echo server on
/// its own database port (192.0.2.1:3307) in the container, a client on the tenant network, and
/// two exchanges, one before and one after.
pub struct Session {
    server: std::thread::JoinHandle<()>,
    client: TcpStream,
}

impl Session {
    /// Connects and makes the first exchange.
    pub fn open(guest: &trove_isolate_testbed::Guest) -> Session {
        use std::io::{Read as _, Write as _};
        let listener = guest
            .container
            .run(|| std::net::TcpListener::bind("192.0.2.1:3307").expect("listening on 3307"));
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("the client connects");
            // Only against a hang: the second request comes after a daemon's start, which is
            // many seconds in an emulated VM.
            conn.set_read_timeout(Some(Duration::from_secs(120)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            for _ in 0..2 {
                let n = conn.read(&mut buf).expect("a request");
                conn.write_all(&buf[..n]).expect("the answer");
            }
        });
        let mut client = guest.biz_net.run(|| {
            TcpStream::connect_timeout(
                &"192.0.2.1:3307".parse().expect("addr"),
                Duration::from_secs(2),
            )
            .expect("connecting")
        });
        client.set_read_timeout(Some(PROBE)).expect("timeout");
        let mut buf = [0u8; 64];
        client.write_all(b"before").expect("request before");
        assert_eq!(client.read(&mut buf).expect("answer before"), 6);
        Session { server, client }
    }

    /// The second exchange, right away: it must get its answer within [`PROBE`].
    pub fn carries_on(mut self, when: &str) {
        use std::io::{Read as _, Write as _};
        let mut buf = [0u8; 64];
        self.client
            .write_all(b"during")
            .expect("the second request");
        let n = self
            .client
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("the session was cut {when}: {e}"));
        assert_eq!(&buf[..n], b"during");
        self.server.join().expect("server");
    }
}

/// The scenario's config with a second database port (3307) for [`Session`].
pub fn config_with_session_port(text: &str) -> String {
    text.replace("database_ports = [3306]", "database_ports = [3306, 3307]")
}

/// The TCP-over-IPv4 flows in one of `role`'s tables, read from the daemon's pinned maps.
pub fn tcp4_flows(
    pin_path: &Path,
    role: trove_isolate_common::Role,
    table: trove_isolate::datapath::Table,
) -> Vec<(
    trove_isolate_common::conntrack::FlowKey4,
    trove_isolate_common::conntrack::FlowValue,
)> {
    use aya::maps::{Map, MapData};
    use trove_isolate_common::{conntrack::Keying, flow_table::Bucket4};
    let path = trove_isolate::pins::Pins::new(pin_path).map(table.map_name(role, Keying::Tcp4));
    let data = MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening pinned map {}: {e}", path.display()));
    trove_isolate::flow_tables::live::<Bucket4>(&Map::Array(data)).expect("reading a flow table")
}

/// Waits (bounded) until `nic` in the namespace `nsenter` enters (`--net=PATH`) has its
/// carrier: a veth brought up reports it a moment later, and packets sent before are lost.
pub fn carrier_up(nsenter: &str, nic: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("nsenter")
            .args([nsenter, "ip", "-o", "link", "show", "dev", nic])
            .output()
            .expect("nsenter");
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("state UP") {
            return;
        }
        assert!(Instant::now() < deadline, "{nic} has no carrier: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
