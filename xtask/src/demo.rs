//! `cargo xtask demo`: the split on a simulated Trove guest, end to end.
//!
//! Builds the testbed guest (the same address on both NICs, the business NIC in a "container"
//! namespace), runs the release daemon against it, and shows each flow of the shared scenario
//! before and under enforcement, then the metrics, the status, survival of `kill -9` and `detach`.
//! Everything it creates is removed at the end, also on failure. It exits non-zero if any flow
//! gets another verdict than the policy says.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use trove_isolate_testbed::{
    scenario::{self, Probe},
    Guest,
};

use crate::sh;

const PIN_PATH: &str = "/sys/fs/bpf/trove-isolate-demo";
const METRICS_PORT: u16 = 19_477;
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

fn say(what: &str) {
    println!("\n\x1b[1m== {what}\x1b[0m");
}

/// Kills the daemon and removes pins and the config file, whatever happened.
struct Cleanup {
    binary: PathBuf,
    config: PathBuf,
    daemon: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new(&self.binary)
            .args(["detach", "--pin-path", PIN_PATH])
            .output();
        let _ = std::fs::remove_file(&self.config);
    }
}

pub fn run() -> anyhow::Result<()> {
    sh::require_root("the demo creates network namespaces and loads BPF programs")?;
    let binary = Path::new("target/release/trove-isolate").canonicalize()?;

    say("A simulated Trove guest: 4 network namespaces, 192.0.2.1/24 on BOTH NICs");
    let guest = Guest::new("demo");
    println!(
        "  guest namespace      {}  management NIC {} -> management network {} (RabbitMQ, registry, operator)",
        guest.host.name(),
        guest.mgmt_nic(),
        guest.mgmt_net.name()
    );
    println!(
        "  container namespace  {}  business NIC {} ({}) -> tenant network {} (clients, peer, a decoy at RabbitMQ's address)",
        guest.container.name(),
        guest.biz_nic(),
        guest.biz_mac_text(),
        guest.biz_net.name()
    );
    let _servers = scenario::servers(&guest, METRICS_PORT);
    let probes = scenario::probes(METRICS_PORT);

    let config = std::env::temp_dir().join("trove-isolate-demo.toml");
    std::fs::write(
        &config,
        scenario::config(&guest, "enforce", "auto", PIN_PATH, METRICS_PORT),
    )?;
    let mut cleanup = Cleanup {
        binary: binary.clone(),
        config: config.clone(),
        daemon: None,
    };

    say("trove-isolate check: the policy compiled per interface");
    sh::run_cmd(
        Command::new(&binary)
            .arg("check")
            .arg("--config")
            .arg(&config),
    )?;

    say("Flows before enforcement");
    let mut wrong = show(&guest, &probes, |_| true);

    say(
        "trove-isolate run (the daemon, in the host namespace; each NIC reached through its netns)",
    );
    cleanup.daemon = Some(start(&binary, &config)?);

    say("Flows under enforcement");
    wrong += show(&guest, &probes, |p| p.allowed);

    say("Metrics (non-zero series of http://127.0.0.1:19477/metrics)");
    let metrics = scrape()?;
    for line in metrics.lines() {
        if line.starts_with("trove_isolate_") && !line.ends_with(" 0") {
            println!("  {line}");
        }
    }

    say("trove-isolate status");
    sh::run_cmd(Command::new(&binary).args(["status", "--pin-path", PIN_PATH]))?;

    say("kill -9 the daemon: enforcement is pinned in the kernel and stays");
    if let Some(mut d) = cleanup.daemon.take() {
        d.kill()?;
        d.wait()?;
    }
    let sample: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.name.contains("rabbitmq"))
        .collect();
    wrong += show_refs(&guest, &sample, |p| p.allowed);

    say("trove-isolate detach: enforcement removed, everything passes again");
    sh::run_cmd(Command::new(&binary).args(["detach", "--pin-path", PIN_PATH]))?;
    wrong += show_refs(&guest, &sample, |_| true);

    say("Cleaning up (daemon, pins, namespaces)");
    drop(cleanup);
    drop(guest);
    if wrong > 0 {
        bail!("{wrong} flows got another verdict than the policy says");
    }
    println!("\ndemo: every flow got the verdict the policy says.");
    Ok(())
}

fn show(guest: &Guest, probes: &[Probe], expect: impl Fn(&Probe) -> bool) -> usize {
    let refs: Vec<&Probe> = probes.iter().collect();
    show_refs(guest, &refs, expect)
}

/// Runs each probe and prints its outcome; returns how many differ from `expect`.
fn show_refs(guest: &Guest, probes: &[&Probe], expect: impl Fn(&Probe) -> bool) -> usize {
    let mut wrong = 0;
    for p in probes {
        let passed = p.run(guest, PROBE_TIMEOUT);
        let mark = if passed {
            "\x1b[32mpass \x1b[0m"
        } else {
            "\x1b[31mblock\x1b[0m"
        };
        let note = if passed == expect(p) {
            ""
        } else {
            wrong += 1;
            "   <-- UNEXPECTED"
        };
        let proto = if p.udp { "udp" } else { "tcp" };
        println!("  {mark}  {:<44} {proto} {}{note}", p.name, p.to);
    }
    wrong
}

fn start(binary: &Path, config: &Path) -> anyhow::Result<Child> {
    let mut child = Command::new(binary)
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line.starts_with("enforcing") => {
            println!("  {line}");
            Ok(child)
        }
        other => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            bail!("the daemon did not start ({other:?}):\n{err}")
        }
    }
}

fn scrape() -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT)).context("connecting to metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
