//! `cargo xtask bench` runs this, as root. Sections:
//! 1. per-packet cost of every path through BPF_PROG_TEST_RUN, as ns and as a ratio to an
//!    empty TC program measured in the same process ([`per_packet`]);
//! 2. the same paths as the policy grows to 1,000,000 entries ([`scaling`]);
//! 3. real traffic over veth against nftables ([`traffic`]);
//! 4. the daemon: what the verifier costs its start ([`verifier`]); memory, start to
//!    enforced, a reload ([`daemon`]).
//!
//! Prints Markdown tables; `--out DIR` writes the numbers as JSON too.

#[path = "../../tests/packets/frame.rs"]
#[allow(dead_code)]
mod frame;

mod daemon;
mod per_packet;
mod scaling;
mod traffic;
mod verifier;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;
use trove_isolate::{config::Config, policy::Policy};

const CONFIG: &str = r#"
[management]
interface = "mgmt0"
rabbitmq = ["192.0.2.10:5672"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24"]
[business]
interface = "eth0"
database_ports = [3306]
clients = ["198.51.100.0/24", "2001:db8:2::/48"]
"#;

pub struct Options {
    pub repeat: u32,
    pub runs: usize,
    out: Option<PathBuf>,
    sizes: Vec<usize>,
    bin: Option<PathBuf>,
    daemon_sizes: Vec<usize>,
    /// Section 4 measures the memory after a host name's refresh too, at its largest size.
    refresh: bool,
    traffic: Option<usize>,
    rounds: usize,
    seconds: f64,
    /// The real-traffic section's filters, no filter first.
    filters: Vec<traffic::Filter>,
}

fn list(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|n| n.trim().replace('_', "").parse().context("a list of sizes"))
        .collect()
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        repeat: 200_000,
        runs: 5,
        out: None,
        sizes: Vec::new(),
        bin: None,
        daemon_sizes: Vec::new(),
        refresh: false,
        traffic: None,
        rounds: 3,
        filters: traffic::Filter::ALL.to_vec(),
        seconds: 2.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context(format!("{arg} needs a value"));
        match arg.as_str() {
            "--repeat" => o.repeat = value()?.parse()?,
            "--runs" => o.runs = value()?.parse()?,
            "--out" => o.out = Some(value()?.into()),
            "--scaling" => o.sizes = list(&value()?)?,
            "--bin" => o.bin = Some(value()?.into()),
            "--daemon" => o.daemon_sizes = list(&value()?)?,
            "--refresh" => o.refresh = true,
            "--traffic" => o.traffic = Some(value()?.replace('_', "").parse()?),
            "--rounds" => o.rounds = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--filters" => {
                o.filters = value()?
                    .split(',')
                    .map(|key| {
                        traffic::Filter::ALL
                            .into_iter()
                            .find(|f| f.key() == key)
                            .with_context(|| format!("--filters: no filter {key:?}"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                anyhow::ensure!(
                    o.filters.first() == Some(&traffic::Filter::Nothing),
                    "--filters: the first must be none (the yardstick)"
                );
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// A measured path: ns per packet and the ratio to the empty program of the same run.
pub struct Row {
    pub name: String,
    pub ns: f64,
    pub ratio: f64,
}

impl Row {
    pub fn new(name: &str, ns: f64, empty: f64) -> Row {
        Row {
            name: name.to_owned(),
            ns,
            ratio: ns / empty,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"path": self.name, "ns": self.ns, "ratio": self.ratio})
    }
}

pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn write(out: Option<&Path>, name: &str, value: serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = out {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let out = o.out.as_deref();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
    }
    // The daemons' configs and logs: beside the JSON, or under target/ (never the working tree).
    let logs = out.unwrap_or(Path::new("target/bench"));
    std::fs::create_dir_all(logs)?;
    let path = Path::new("bench.toml");
    let policy = Policy::from_config_with(
        &Config::parse(CONFIG, path)?,
        path,
        &trove_isolate::resolve::NoNames,
    )?;

    eprintln!("bench: 1. per-packet cost");
    let rows = per_packet::run(&policy, &o)?;
    println!("## 1. Per-packet cost (BPF_PROG_TEST_RUN)\n");
    println!("| path | ns/packet | × empty |");
    println!("|---|---:|---:|");
    for r in &rows {
        println!("| {} | {:.1} | {:.2} |", r.name, r.ns, r.ratio);
    }
    println!(
        "\n(median of {} runs of {} repetitions each; logs and drop events off)\n",
        o.runs, o.repeat
    );
    write(
        out,
        "per-packet.json",
        json!(rows.iter().map(Row::json).collect::<Vec<_>>()),
    )?;

    if !o.sizes.is_empty() {
        eprintln!("bench: 2. scaling with the policy's size");
        let scaled = scaling::run(&policy, &o.sizes, &o)?;
        println!("## 2. Scaling with the policy's size (× the empty program of each run)\n");
        let names: Vec<&str> = scaled[0]
            .rows
            .iter()
            .skip(1)
            .map(|r| r.name.as_str())
            .collect();
        println!(
            "| rules | map entries | lookups per new flow (IPv4, IPv6) | map written in | {} |",
            names.join(" | ")
        );
        println!("|---:|---:|---:|---:|{}", "---:|".repeat(names.len()));
        for s in &scaled {
            let cells: Vec<String> = s
                .rows
                .iter()
                .skip(1)
                .map(|r| format!("{:.2} ({:.0} ns)", r.ratio, r.ns))
                .collect();
            let expansion = if s.expansion {
                ""
            } else {
                " (prefix_expansion off)"
            };
            println!(
                "| {} | {}{expansion} | {}, {} | {:.2} s | {} |",
                s.rules,
                s.entries,
                s.lookups[0],
                s.lookups[1],
                s.load_seconds,
                cells.join(" | ")
            );
        }
        let last = &scaled[scaled.len() - 1];
        // Against the smallest policy as written, and against the smallest looked up at as many
        // lengths as the largest: what its size alone costs (the lookup's cost follows the
        // lengths, see BENCHMARKS.md).
        let same_lengths = scaled.iter().find(|s| s.lookups == last.lookups);
        for (first, what) in [
            (scaled.first(), "as written"),
            (same_lengths, "at as many lengths"),
        ] {
            let Some(first) = first else { continue };
            println!(
                "\nThe largest policy against {} rules ({what}), ratio of ratios:",
                first.rules
            );
            for (a, b) in first.rows.iter().zip(&last.rows).skip(1) {
                println!("- {}: {:.2}", a.name, b.ratio / a.ratio);
            }
        }
        println!();
        write(
            out,
            "scaling.json",
            json!(scaled
                .iter()
                .map(|s| json!({
                    "rules": s.rules,
                    "entries": s.entries,
                    "prefix_expansion": s.expansion,
                    "lookups": s.lookups,
                    "load_seconds": s.load_seconds,
                    "paths": s.rows.iter().map(Row::json).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>()),
        )?;
    }

    let bin = || o.bin.as_deref().context("--bin: the trove-isolate binary");
    if let Some(entries) = o.traffic {
        let bin = bin()?;
        eprintln!("bench: 3. real traffic over veth");
        let dir = logs;
        let t = traffic::run(bin, &o.filters, entries, o.rounds, o.seconds, dir)?;
        println!(
            "## 3. Real traffic over veth, {} client prefixes (median of {} rounds)\n",
            t.entries, o.rounds
        );
        println!("| filter | new TCP connections/s | greeted sessions/s | 64-byte frames/s | TCP throughput | ratio to no filter (connections, sessions, frames, throughput) | put in place in |");
        println!("|---|---:|---:|---:|---:|---|---:|");
        let of = |filter: traffic::Filter, get: fn(&traffic::Sample) -> f64| {
            median(
                t.samples
                    .iter()
                    .filter(|s| s.filter == filter)
                    .map(get)
                    .collect(),
            )
        };
        let base = |get| of(traffic::Filter::Nothing, get);
        for filter in o.filters.iter().copied() {
            let conn = of(filter, |s| s.connections_per_second);
            let sessions = of(filter, |s| s.sessions_per_second);
            let frames = of(filter, |s| s.frames_per_second);
            let bits = of(filter, |s| s.tcp_bits_per_second);
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} Gbit/s | {:.2}, {:.2}, {:.2}, {:.2} | {:.2} s |",
                filter.name(),
                conn,
                sessions,
                frames,
                bits / 1e9,
                conn / base(|s| s.connections_per_second),
                sessions / base(|s| s.sessions_per_second),
                frames / base(|s| s.frames_per_second),
                bits / base(|s| s.tcp_bits_per_second),
                of(filter, |s| s.setup_seconds),
            );
        }
        let failed: u64 = t.samples.iter().map(|s| s.failed_connections).sum();
        let lost: u64 = t.samples.iter().map(|s| s.lost_packets).sum();
        let frame = median(t.samples.iter().map(|s| s.mean_frame_bytes).collect());
        println!(
            "\n(mean frame of the small-frame test {frame:.0} bytes; {failed} connection attempts \
             failed in all; {lost} packets of the tests' flows dropped by trove-isolate in all; \
             {} s per measurement)\n",
            o.seconds
        );
        write(
            out,
            "traffic.json",
            json!(t
                .samples
                .iter()
                .map(|s| json!({
                    "filter": s.filter.name(),
                    "connections_per_second": s.connections_per_second,
                    "sessions_per_second": s.sessions_per_second,
                    "failed_connections": s.failed_connections,
                    "lost_packets": s.lost_packets,
                    "frames_per_second": s.frames_per_second,
                    "mean_frame_bytes": s.mean_frame_bytes,
                    "tcp_bits_per_second": s.tcp_bits_per_second,
                    "setup_seconds": s.setup_seconds,
                }))
                .collect::<Vec<_>>()),
        )?;
    }

    if !o.daemon_sizes.is_empty() {
        let bin = bin()?;
        eprintln!("bench: 4. the daemon");
        let programs = verifier::run()?;
        println!("## 4. The daemon on a simulated guest\n");
        println!("What the kernel's verifier costs a start:\n");
        println!(
            "| program | verifier and JIT (one load alone, median of {}) | processed instructions |",
            verifier::LOADS
        );
        println!("|---|---:|---:|");
        for p in &programs {
            let count = p
                .instructions
                .map_or("not reported".into(), |n| n.to_string());
            println!("| {} | {:.0} ms | {count} |", p.name, p.load_seconds * 1e3);
        }
        let one_core: f64 = programs.iter().map(|p| p.load_seconds).sum();
        println!(
            "\n(the four: {:.0} ms on one core; a start verifies them side by side, a thread each)\n",
            one_core * 1e3
        );
        write(
            out,
            "verifier.json",
            json!(programs
                .iter()
                .map(|p| json!({
                    "program": p.name,
                    "load_seconds": p.load_seconds,
                    "instructions": p.instructions,
                }))
                .collect::<Vec<_>>()),
        )?;
        let runs = daemon::run(bin, &o.daemon_sizes, logs)?;
        println!("| entries | start to enforced (median of {}; range) | of it, the verifier | reload, same config | reload, every prefix replaced | RSS enforcing | RSS after the reloads | peak RSS |", daemon::STARTS);
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mib = |kib: u64| kib as f64 / 1024.0;
        for r in &runs {
            println!(
                "| {} | {:.0} ms ({:.0} to {:.0}) | {} | {:.0} ms | {:.0} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
                r.entries,
                r.start_seconds * 1e3,
                r.start_range.0 * 1e3,
                r.start_range.1 * 1e3,
                r.verifier_seconds
                    .map_or("not logged".into(), |s| format!("{:.0} ms", s * 1e3)),
                r.reload_same_seconds * 1e3,
                r.reload_seconds * 1e3,
                mib(r.rss_kib),
                mib(r.rss_after_reload_kib),
                mib(r.peak_kib)
            );
        }
        println!();
        write(
            out,
            "daemon.json",
            json!(runs
                .iter()
                .map(|r| json!({
                    "entries": r.entries,
                    "start_seconds": r.start_seconds,
                    "start_seconds_range": [r.start_range.0, r.start_range.1],
                    "verifier_seconds": r.verifier_seconds,
                    "reload_same_seconds": r.reload_same_seconds,
                    "reload_seconds": r.reload_seconds,
                    "rss_kib": r.rss_kib,
                    "rss_after_reload_kib": r.rss_after_reload_kib,
                    "peak_kib": r.peak_kib,
                }))
                .collect::<Vec<_>>()),
        )?;
        if let (true, Some(&clients)) = (o.refresh, o.daemon_sizes.last()) {
            let r = daemon::refresh(bin, clients, logs)?;
            println!(
                "A host name's refresh, {} entries: RSS {:.1} MiB enforcing, {:.1} MiB once the \
                 refresh applied a changed address; the daemon's CPU from the change until then \
                 ({:.1} s): {:.0} ms.\n",
                r.entries,
                mib(r.rss_kib),
                mib(r.rss_after_refresh_kib),
                r.refresh_wait_seconds,
                r.refresh_cpu_seconds * 1e3
            );
            write(
                out,
                "daemon-refresh.json",
                json!({
                    "entries": r.entries,
                    "rss_kib": r.rss_kib,
                    "rss_after_refresh_kib": r.rss_after_refresh_kib,
                    "refresh_cpu_seconds": r.refresh_cpu_seconds,
                    "refresh_wait_seconds": r.refresh_wait_seconds,
                }),
            )?;
        }
    }
    Ok(())
}
