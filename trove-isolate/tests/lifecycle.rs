//! The daemon's life under a service manager: readiness and reload notifications, reloads that
//! apply with no window (an allowed stream loses nothing, a denied one gets nothing), a bad config
//! refused with the policy in force kept, and the unit file `systemd-analyze verify` accepts.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{cli, metric, metrics_port, unique, write_config, Daemon, PROBE};
use trove_isolate_common::LAYOUT_VERSION;
use trove_isolate_testbed::{scenario, tcp_probe, Guest, Server};

/// The service manager's end of NOTIFY_SOCKET, read by a thread as systemd would (a sender
/// blocks once ten datagrams wait unread).
struct Notifications {
    path: PathBuf,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    read: usize,
}

impl Notifications {
    fn bind() -> Notifications {
        let path = std::env::temp_dir().join(format!("{}.notify", unique("ti")));
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, flag) = (lines.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock()
                        .expect("lines")
                        .extend(text.lines().map(str::to_owned));
                }
            }
        });
        Notifications {
            path,
            lines,
            stop,
            read: 0,
        }
    }

    /// Waits only for what arrives from now on.
    fn mark(&mut self) {
        self.read = self.seen().len();
    }

    /// Every line received so far.
    fn seen(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits (bounded) for `line` among the lines not yet waited for; returns those lines.
    fn wait_for(&mut self, line: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.seen();
            if let Some(at) = all[self.read..].iter().position(|l| l == line) {
                let got = all[self.read..=self.read + at].to_vec();
                self.read += at + 1;
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {line} from the daemon within 20 s; got {:?}",
                    &all[self.read..]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A stream of datagrams on one flow, each waiting (bounded) for its echo. Counts (sent,
/// answered). Bounded: at most 2,000,000 datagrams, and by its caller's stop.
struct DatagramStream {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32)>,
}

impl DatagramStream {
    fn start(guest: &Guest, to: &str, wait: Duration) -> DatagramStream {
        let to: SocketAddr = to.parse().expect("target");
        let socket = guest
            .host
            .run(|| UdpSocket::bind("0.0.0.0:0").expect("udp socket in the guest"));
        socket.set_read_timeout(Some(wait)).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut sent, mut answered) = (0, 0);
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) && sent < 2_000_000 {
                if socket.send_to(b"stream", to).is_ok() {
                    sent += 1;
                    if socket.recv_from(&mut buf).is_ok() {
                        answered += 1;
                    }
                }
            }
            (sent, answered)
        });
        DatagramStream { stop, thread }
    }

    fn finish(self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("stream thread")
    }
}

fn reloads() -> u32 {
    std::env::var("TROVE_ISOLATE_RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn reload_applies_with_no_window_and_refuses_a_bad_config() {
    let guest = Guest::new("rel");
    let port = metrics_port();
    let _servers: Vec<Server> = scenario::servers(&guest, port);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let good = scenario::config(&guest, "enforce", "auto", &pin_path, port);
    let config = write_config(&good);
    let mut notes = Notifications::bind();
    let notify_path = notes.path.to_str().expect("utf-8").to_owned();
    let mut daemon = Daemon::start_with_env(
        &config,
        pin_path.as_ref(),
        SocketAddr::from(([127, 0, 0, 1], port)),
        &[
            ("NOTIFY_SOCKET", &notify_path),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let ready = notes.wait_for("READY=1");
    let ready_at = Instant::now();
    assert!(
        ready.iter().any(|l| l.starts_with("STATUS=enforcing")),
        "{ready:?}"
    );
    // WatchdogSec=1: a ping from the loop at least every half second.
    notes.wait_for("WATCHDOG=1");
    notes.wait_for("WATCHDOG=1");

    // Reloads under load: an allowed stream (UDP: a lost datagram is never retransmitted, so
    // every one must be answered) and a denied one, through every reload.
    let allowed = DatagramStream::start(&guest, "192.0.2.30:5353", Duration::from_secs(1));
    let denied = DatagramStream::start(&guest, "192.0.2.10:5672", Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(100));
    let n = reloads();
    let start = Instant::now();
    for i in 0..n {
        let out = cli(&["reload", "--pin-path", &pin_path]);
        if !out.status.success() {
            panic!(
                "reload {i} failed: {}\ndaemon's log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                daemon.kill_for_stderr()
            );
        }
    }
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let (sent, answered) = allowed.finish();
    let (denied_sent, denied_answered) = denied.finish();
    println!("{n} reloads in {took:.1?}; allowed stream {answered}/{sent}, denied {denied_answered}/{denied_sent}");
    assert!(
        sent > u32::from(n > 0) * 100,
        "the allowed stream barely ran: {sent}"
    );
    assert_eq!(answered, sent, "allowed datagrams lost across {n} reloads");
    assert!(
        denied_sent > 100,
        "the denied stream barely ran: {denied_sent}"
    );
    assert_eq!(
        denied_answered, 0,
        "denied datagrams answered across reloads"
    );
    let text = daemon.scrape();
    assert_eq!(
        metric(&text, "trove_isolate_reloads_total", &["result=\"ok\""]),
        Some(u64::from(n)),
        "{text}"
    );
    let seen = notes.seen();
    // One RELOADING=1 per reload; READY=1 once at the start and once after each.
    for (want, times) in [("RELOADING=1", n), ("READY=1", n + 1)] {
        let got = seen.iter().filter(|l| *l == want).count();
        assert_eq!(got, times as usize, "{want} for {n} reloads: {seen:?}");
    }
    assert!(seen.iter().any(|l| l.starts_with("MONOTONIC_USEC=")));

    // A narrower policy: the registry rule goes, and with it the registry.
    let registry: SocketAddr = "192.0.2.20:4000".parse().expect("addr");
    let rabbit: SocketAddr = "192.0.2.10:5672".parse().expect("addr");
    assert!(
        tcp_probe(&guest.host, None, registry, PROBE),
        "registry before"
    );
    let narrower: String = good
        .lines()
        .filter(|l| !l.starts_with("registry"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, &narrower).expect("writing the narrower config");
    // As the unit's ExecReload does: the daemon found from its config file.
    let out = cli(&["reload", "--config", config.to_str().expect("a UTF-8 path")]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !tcp_probe(&guest.host, None, registry, PROBE),
        "registry after"
    );
    assert!(
        tcp_probe(&guest.host, None, rabbit, PROBE),
        "rabbitmq after"
    );

    // A bad config: `reload` refuses it without disturbing the daemon...
    std::fs::write(
        &config,
        narrower.replace("database_ports = [3306]", "database_ports = []"),
    )
    .expect("writing a bad config");
    let out = cli(&["reload", "--pin-path", &pin_path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad config was accepted");
    assert!(stderr.contains("database_ports"), "{stderr}");
    // ... and the daemon refuses it too when signalled directly, keeping the policy in force.
    notes.mark();
    let pid = daemon.pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    notes.wait_for("READY=1");
    let text = daemon.scrape();
    assert_eq!(
        metric(&text, "trove_isolate_reloads_total", &["result=\"error\""]),
        Some(1),
        "{text}"
    );
    assert!(
        !tcp_probe(&guest.host, None, registry, PROBE),
        "registry after a bad reload"
    );
    assert!(
        tcp_probe(&guest.host, None, rabbit, PROBE),
        "rabbitmq after a bad reload"
    );
    // `status` says the file no longer compiles (a restart would refuse it), and that the
    // policy in force stays.
    let status = cli(&["status", "--pin-path", &pin_path]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("does not compile now") && said.contains("database_ports"),
        "{said}"
    );
    assert_eq!(
        status.status.code(),
        Some(0),
        "the NICs are enforced: {said}"
    );
    // The listener is bound at the start: a reload that moved `listen` would move the scrapers'
    // rule off the port still served.
    let moved = narrower.replace(
        &format!("listen = \"0.0.0.0:{port}\""),
        &format!("listen = \"0.0.0.0:{}\"", port + 1),
    );
    assert_ne!(moved, narrower, "the scenario's listen line");
    std::fs::write(&config, &moved).expect("writing a config with another listen");
    let out = cli(&["reload", "--pin-path", &pin_path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a reload moved the listener");
    assert!(
        stderr.contains("[metrics] listen: changes only with a restart"),
        "{stderr}"
    );
    let text = daemon.scrape();
    assert_eq!(
        metric(&text, "trove_isolate_reloads_total", &["result=\"error\""]),
        Some(2),
        "{text}"
    );
    // The unit's ExecReload finds the daemon from its config: one whose pin_path was edited
    // names the daemon that runs it, not another pin path where none runs.
    let elsewhere = narrower.replace(&pin_path, &format!("{pin_path}-edited"));
    assert_ne!(elsewhere, narrower, "the scenario's pin_path line");
    std::fs::write(&config, &elsewhere).expect("writing a config with another pin_path");
    let out = cli(&["reload", "--config", config.to_str().expect("a UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("pin_path: changes only with a restart"),
        "{stderr}"
    );
    std::fs::write(&config, &narrower).expect("writing the narrower config back");

    // The daemon measures the kernel's tick over its first seconds (250 jiffies: 2.5 s at
    // HZ=100, read on its one-second tick).
    std::thread::sleep(Duration::from_secs(5).saturating_sub(ready_at.elapsed()));
    notes.mark();
    daemon.stop();
    notes.wait_for("STOPPING=1");
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("the datapath reads its clock off jiffies (HZ="),
        "{stderr}"
    );
    // The maps served every policy here: each reload kept the loaded programs (no verifier).
    let reloaded = stderr.lines().filter(|l| l.contains("reloaded ")).count();
    let kept = stderr
        .lines()
        .filter(|l| l.contains("(programs kept)"))
        .count();
    assert_eq!(reloaded, n as usize + 1, "{stderr}");
    assert_eq!(kept, reloaded, "{stderr}");
    // What `check` warns of is logged at the start and at each reload applied (a reload runs no
    // `check`): these configs leave the database open to any client.
    let warned = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("clients is empty"))
        .count();
    assert_eq!(warned, reloaded + 1, "{stderr}");
}

/// A reload keeps the loaded programs only while the pinned maps are theirs: after a `detach`
/// (which removes the pins) under a running daemon, the next reload loads the programs anew on
/// fresh pinned maps and enforces the policy again.
#[test]
fn a_reload_after_detach_enforces_again_on_fresh_maps() {
    let guest = Guest::new("rdt");
    let port = metrics_port();
    let _servers: Vec<Server> = scenario::servers(&guest, port);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let config = write_config(&scenario::config(
        &guest, "enforce", "auto", &pin_path, port,
    ));
    let mut daemon = Daemon::start(
        &config,
        pin_path.as_ref(),
        SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let rabbit: SocketAddr = "192.0.2.10:5672".parse().expect("addr");
    let refused: SocketAddr = "192.0.2.99:5672".parse().expect("addr");
    assert!(
        !tcp_probe(&guest.host, None, refused, PROBE),
        "refused before"
    );

    // Refused under the running daemon, which would attach again; done with --force.
    let under_daemon = cli(&["detach", "--pin-path", &pin_path]);
    let says = String::from_utf8_lossy(&under_daemon.stderr);
    assert!(
        !under_daemon.status.success(),
        "detach under the daemon: {under_daemon:?}"
    );
    assert!(
        says.contains("is running") && says.contains("--force"),
        "{says}"
    );
    let out = cli(&["detach", "--force", "--pin-path", &pin_path]);
    assert!(out.status.success(), "detach: {out:?}");
    let policy_pin = trove_isolate::pins::Pins::new(&pin_path).map("POLICY4");
    assert!(!policy_pin.exists(), "detach left the policy map pinned");

    // `detach` removed the state record `reload` finds the daemon by: signal it directly.
    let pid = daemon.pid().expect("running");
    for (n, round) in ["after detach", "again"].into_iter().enumerate() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while daemon.stderr().matches("reloaded ").count() <= n {
            assert!(
                Instant::now() < deadline,
                "reload {round} not done:\n{}",
                daemon.kill_for_stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(policy_pin.exists(), "{round}: the policy map is not pinned");
        assert!(
            tcp_probe(&guest.host, None, rabbit, PROBE),
            "{round}: rabbitmq refused"
        );
        assert!(
            !tcp_probe(&guest.host, None, refused, PROBE),
            "{round}: a refused destination passed"
        );
    }
    let status = cli(&["status", "--pin-path", &pin_path]);
    assert!(status.status.success(), "status: {status:?}");
    let stderr = daemon.kill_for_stderr();
    let reloads: Vec<&str> = stderr.lines().filter(|l| l.contains("reloaded ")).collect();
    assert_eq!(reloads.len(), 2, "{stderr}");
    assert!(reloads[0].contains("(programs loaded anew)"), "{stderr}");
    assert!(reloads[1].contains("(programs kept)"), "{stderr}");
}

/// The unit file as shipped passes `systemd-analyze verify` (with the binary it names pointed at
/// this build).
#[test]
fn the_unit_file_verifies() {
    let analyze = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if analyze.is_err() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/trove-isolate.service"
    ))
    .expect("reading dist/trove-isolate.service");
    for want in [
        "Type=notify",
        "ExecReload=/usr/local/bin/trove-isolate reload --config /etc/trove-isolate/config.toml",
        "Restart=always",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(want), "the unit lacks {want}");
    }
    let dir = std::env::temp_dir().join(unique("ti-unit"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("trove-isolate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/trove-isolate", common::BIN),
    )
    .expect("writing the unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("running systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /metrics` with an Accept header; the response's head and body.
fn http_get(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_owned(), body.to_owned())
}

/// The endpoint negotiates: Prometheus' own Accept header gets OpenMetrics, anyone else the
/// classic text format, which `promtool check metrics` accepts.
#[test]
fn metrics_speak_both_formats_and_promtool_accepts_them() {
    let guest = Guest::new("met");
    let port = metrics_port();
    let _servers: Vec<Server> = scenario::servers(&guest, port);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let config = write_config(&scenario::config(
        &guest, "enforce", "auto", &pin_path, port,
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_secs_f64()
    };
    let before = epoch();
    let _daemon = Daemon::start(&config, pin_path.as_ref(), addr);
    let after = epoch();
    // Some traffic, so that the counters are not all zero.
    assert!(!tcp_probe(
        &guest.host,
        None,
        "192.0.2.99:5672".parse().expect("addr"),
        PROBE
    ));

    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (head, body) = http_get(addr, Some(prometheus_accept));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics without # EOF:\n{body}"
    );
    assert!(
        body.contains("# TYPE trove_isolate_drops counter"),
        "{body}"
    );

    let (head, body) = http_get(addr, None);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    // The alert on late re-attachments reads it: the counters count from the daemon's start.
    let started: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_start_time_seconds:\n{body}"));
    assert!(
        (before..=after).contains(&started),
        "started {started}, not between {before} and {after}"
    );
    assert!(!body.contains("# EOF"), "{body}");
    assert!(
        body.contains("# HELP trove_isolate_drops_total "),
        "classic text names the counter family with _total:\n{body}"
    );
    assert!(
        metric(
            &body,
            "trove_isolate_drops_total",
            &["role=\"management\"", "reason=\"policy\""]
        )
        .unwrap_or(0)
            > 0,
        "{body}"
    );

    let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        panic!("promtool is not installed (`cargo xtask test` installs it: Debian's prometheus)");
    };
    {
        use std::io::Write as _;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("feeding promtool");
    }
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, _) = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("response");
        r.split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_owned(), b.to_owned()))
            .expect("split")
    };
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // The alerting rules shipped for these metrics load in Prometheus, and they mean what they
    // say: the near-full alert follows each keying's table, the protection alerts fire on a NIC
    // not enforced and on the first late re-attachment.
    for (what, file) in [
        ("check", "/../dist/prometheus/trove-isolate.rules.yml"),
        ("test", "/tests/fixtures/prometheus/conntrack.test.yml"),
        ("test", "/tests/fixtures/prometheus/protection.test.yml"),
    ] {
        let path = format!("{}{file}", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("promtool")
            .args([what, "rules", &path])
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {what} rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A real Prometheus server (Debian's) scrapes the daemon, negotiating OpenMetrics as it does
/// in production, and PromQL answers with the counters after a known number of packets.
#[test]
fn a_real_prometheus_scrapes_it_and_promql_counts_the_packets() {
    let guest = Guest::new("prm");
    let port = metrics_port();
    let _servers: Vec<Server> = scenario::servers(&guest, port);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let config = write_config(&scenario::config(
        &guest, "enforce", "auto", &pin_path, port,
    ));
    let _daemon = Daemon::start(
        &config,
        pin_path.as_ref(),
        SocketAddr::from(([127, 0, 0, 1], port)),
    );

    // Exactly N datagrams the policy refuses: the guest to an unlisted host of its network.
    const N: u64 = 37;
    let socket = guest
        .host
        .run(|| UdpSocket::bind("0.0.0.0:0").expect("udp socket in the guest"));
    for _ in 0..N {
        socket
            .send_to(b"denied", "192.0.2.99:7")
            .expect("sending a datagram");
    }

    let prometheus = Prometheus::start(port);
    let query =
        r#"sum(trove_isolate_drops_total{role="management",direction="egress",reason="policy"})"#;
    let mut last = String::new();
    // Bounded: Prometheus starts in a few seconds and scrapes every second.
    let answered = (0..60).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        last = prometheus.query(query);
        promql_value(&last) == Some(N as f64)
    });
    assert!(answered, "PromQL {query} never answered {N}: {last}");
    let up = prometheus.query(r#"up{job="trove-isolate"}"#);
    assert_eq!(promql_value(&up), Some(1.0), "{up}");
    // The daemon's own series came through the OpenMetrics parser too.
    let build = prometheus.query("trove_isolate_build_info");
    assert_eq!(promql_value(&build), Some(1.0), "{build}");
}

/// Debian's `prometheus` with a one-second scrape of the daemon, its data in a temporary
/// directory; killed and removed on drop.
struct Prometheus {
    child: std::process::Child,
    dir: PathBuf,
    web: SocketAddr,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("trove-isolate-prometheus"));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: trove-isolate\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let web = SocketAddr::from(([127, 0, 0, 1], metrics_port()));
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus is not installed (`cargo xtask test` installs it): {e}")
            });
        Prometheus { child, dir, web }
    }

    /// The API's JSON answer to an instant query (empty while Prometheus is not up yet).
    fn query(&self, promql: &str) -> String {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&self.web, Duration::from_secs(2))
        else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let request = format!(
            // HTTP/1.0: a plain body, never chunked.
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: localhost\r\n\r\n"
        );
        let mut response = String::new();
        if stream.write_all(request.as_bytes()).is_err()
            || stream.read_to_string(&mut response).is_err()
        {
            return String::new();
        }
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of a one-sample instant vector answer.
fn promql_value(body: &str) -> Option<f64> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let result = json["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// An upgrade to a binary whose map layout changed (versioned pin names): the new one starts
/// from fresh maps, attaches its programs in place of the old with every map filled first, and
/// removes the old layout's pins. A database session open across it carries on (its first
/// exchange after the start gets through), and what the policy refuses stays refused.
#[test]
fn an_upgrade_with_a_changed_map_layout_keeps_sessions_and_leaves_no_old_pins() {
    let guest = Guest::new("upg");
    let port = metrics_port();
    let _servers: Vec<Server> = scenario::servers(&guest, port);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let config = write_config(&common::config_with_session_port(&scenario::config(
        &guest, "enforce", "auto", &pin_path, port,
    )));
    let metrics = SocketAddr::from(([127, 0, 0, 1], port));
    let mut daemon = Daemon::start(&config, pin_path.as_ref(), metrics);
    let session = common::Session::open(&guest);

    // The old binary stops; its maps stay pinned, now under the previous layout's names.
    daemon.stop();
    let old_pins: Vec<PathBuf> = std::fs::read_dir(&pin_path)
        .expect("pin dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.to_string_lossy()
                .ends_with(&format!("_v{}", LAYOUT_VERSION))
        })
        .collect();
    assert!(
        !old_pins.is_empty(),
        "no versioned map pins under {pin_path}"
    );
    for pin in &old_pins {
        let older = pin.to_string_lossy().replace(
            &format!("_v{LAYOUT_VERSION}"),
            &format!("_v{}", LAYOUT_VERSION - 1),
        );
        std::fs::rename(pin, &older).expect("renaming a pin to the old layout's name");
    }

    let mut daemon = Daemon::start(&config, pin_path.as_ref(), metrics);
    session.carries_on("by the upgrade");
    assert_refused(&guest, "upgrade");
    let left: Vec<String> = std::fs::read_dir(&pin_path)
        .expect("pin dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(&format!("_v{}", LAYOUT_VERSION - 1)))
        .collect();
    assert!(left.is_empty(), "old layout pins left: {left:?}");
    let stderr = daemon.kill_for_stderr();
    assert!(
        stderr.contains("removing map pin of an older layout"),
        "{stderr}"
    );
}

/// The size of the map pinned at `pin`.
/// A management flow no rule allows is refused right after the `when` step.
fn assert_refused(guest: &Guest, when: &str) {
    assert!(
        !tcp_probe(
            &guest.host,
            None,
            "192.0.2.99:5672".parse().expect("addr"),
            PROBE
        ),
        "a refused flow passed after the {when}"
    );
}

fn pinned_size(pin: &Path) -> u32 {
    aya::maps::MapData::from_pin(pin)
        .and_then(|m| m.info())
        .unwrap_or_else(|e| panic!("reading {}: {e}", pin.display()))
        .max_entries()
}

#[test]
fn a_reload_that_outgrows_the_maps_resizes_them_with_no_window() {
    // The TCP over IPv4 tables are arrays of buckets: their entries are buckets and a header.
    use trove_isolate_common::flow_table::table_entries;
    let guest = Guest::new("rsz");
    let port = metrics_port();
    let _servers: Vec<Server> = scenario::servers(&guest, port);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let small = common::config_with_session_port(&scenario::config(
        &guest, "enforce", "auto", &pin_path, port,
    ));
    let config = write_config(&small);
    let metrics = SocketAddr::from(([127, 0, 0, 1], port));
    let mut daemon = Daemon::start(&config, pin_path.as_ref(), metrics);
    let pins = trove_isolate::pins::Pins::new(&pin_path);
    let policy_pin = pins.map("POLICY4");
    let established_pin = pins.map("TCP4_EST_BIZ");
    let before = pinned_size(&policy_pin);
    // About 520 entries (the management NIC's /24s are written as /32s) and room to replace
    // them: far below what 5,000 prefixes more need.
    assert!(before < 4_000, "the policy map starts at {before} entries");
    assert_eq!(pinned_size(&established_pin), table_entries(65_536));

    let session = common::Session::open(&guest);
    let allowed = DatagramStream::start(&guest, "192.0.2.30:5353", Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(100));
    // 5,000 more client prefixes (no traffic goes to them) and a bigger established table.
    let hosts: Vec<String> = (0..5_000u32)
        .map(|i| format!("\"{}/32\"", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let big = small.replace(
        "clients = []",
        &format!(
            "clients = [\"192.0.2.0/24\", \"2001:db8:1::/64\", {}]",
            hosts.join(", ")
        ),
    ) + "\n[conntrack]\nestablished_entries = 131072\n";
    // Rewrites the config and reloads.
    let reload_to = |daemon: &mut Daemon, text: &str| {
        std::fs::write(&config, text).expect("rewriting the config");
        let out = cli(&["reload", "--pin-path", &pin_path]);
        assert!(
            out.status.success(),
            "reload failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.kill_for_stderr()
        );
    };
    reload_to(&mut daemon, &big);
    session.carries_on("by the resize");
    std::thread::sleep(Duration::from_millis(100));
    let (sent, answered) = allowed.finish();
    assert!(sent > 10, "the allowed stream barely ran: {sent}");
    assert_eq!(answered, sent, "allowed datagrams lost across the resize");
    assert!(
        tcp_probe(
            &guest.biz_net,
            None,
            "192.0.2.1:3306".parse().expect("addr"),
            PROBE
        ),
        "a listed client was refused after the resize"
    );
    assert_refused(&guest, "resize");
    assert!(pinned_size(&policy_pin) >= 2 * 5_000);
    assert_eq!(pinned_size(&established_pin), table_entries(131_072));
    let text = daemon.scrape();
    assert_eq!(
        metric(
            &text,
            "trove_isolate_conntrack_capacity",
            &["role=\"business\"", "table=\"established\""]
        ),
        Some(131_072)
    );
    let grown = pinned_size(&policy_pin);

    // Back to the small policy: the policy map is preallocated, so it is made small again.
    let session = common::Session::open(&guest);
    reload_to(&mut daemon, &small);
    session.carries_on("by the shrink");
    assert_refused(&guest, "shrink");
    assert_eq!(pinned_size(&policy_pin), before);
    assert_eq!(pinned_size(&established_pin), table_entries(65_536));
    let stderr = daemon.kill_for_stderr();
    assert!(
        stderr.contains(&format!(
            "map policy4 resized from {grown} to {before} entries"
        )),
        "{stderr}"
    );
    let tcp4 = format!(
        "map tcp4_est_biz resized from {} to {} entries",
        table_entries(65_536),
        table_entries(131_072)
    );
    for want in [
        "(programs loaded anew)",
        "map policy4 resized from",
        &tcp4,
        "map ct_est_biz resized from 65536 to 131072 entries",
        "carried",
    ] {
        assert!(stderr.contains(want), "{want:?} not in:\n{stderr}");
    }
    // Each family's policy map follows its own rules: the IPv4 clients grow only IPv4's.
    assert!(
        !stderr.contains("map policy6 resized"),
        "IPv6's policy map was resized for IPv4 rules:\n{stderr}"
    );
}

/// Clients that open metrics connections and hold them cannot take the daemon's file
/// descriptors (at its limit it could follow no NIC move), nor stop it: it serves a bounded
/// number at once, and the rest wait in the listen backlog. The daemon runs here with room for
/// 100 descriptors more than it uses; 300 connections are held. (Before the bound, it accepted
/// until an accept failed, and that ended the daemon.)
#[test]
fn held_metrics_connections_cannot_take_the_daemons_descriptors() {
    let guest = Guest::new("mfd");
    let port = metrics_port();
    let _servers: Vec<Server> = scenario::servers(&guest, port);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let config = write_config(&scenario::config(
        &guest, "enforce", "auto", &pin_path, port,
    ));
    let endpoint = SocketAddr::from(([127, 0, 0, 1], port));
    let mut daemon = Daemon::start(&config, pin_path.as_ref(), endpoint);
    let pid = daemon.pid().expect("running");
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let limit = open_fds() + 100;
    let set = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("running prlimit");
    assert!(set.status.success(), "prlimit: {set:?}");

    let held: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&endpoint, PROBE).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let most = open_fds();
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.starts_with(" Z"))
    });
    assert!(
        alive,
        "the daemon died with {} connections held:\n{}",
        held.len(),
        daemon.kill_for_stderr()
    );
    assert!(
        most < limit,
        "{most} descriptors open, the limit is {limit}"
    );
    drop(held);
    // Scrapes answer again once the held connections are gone.
    let text = daemon.scrape();
    assert!(text.contains("trove_isolate_packets_total"), "{text}");
    let rabbit: SocketAddr = "192.0.2.10:5672".parse().expect("addr");
    assert!(
        tcp_probe(&guest.host, None, rabbit, PROBE),
        "rabbitmq refused"
    );
    daemon.stop();
}
