//! Section 3: real traffic over a veth pair between two namespaces the bench makes, a tenant
//! client (198.51.100.1) and the guest's business NIC (198.51.100.2), with the same client
//! prefixes behind every filter: nothing, empty TC programs (the hooks' own cost), trove-isolate,
//! nftables with sets, and a linear nftables chain (the listed client last, so every new flow walks all of it). Each round
//! measures every filter in turn, starting one further on each time, so that a noisy machine's
//! drift and the order hit them alike, each in a pair of namespaces made for it; the table gives
//! the median of the rounds.
//!
//! Per filter: new TCP connections per second (sequential connects from 32 source addresses, so
//! that no 4-tuple is used twice in a run), twice: connect and close, and a database session's
//! shape (the server greets, as a MySQL server does, the client reads the greeting and closes:
//! the tracked flow's promotion and close included), the rate of 64-byte frames (10-byte writes on a
//! TCP_NODELAY connection; the client has TCP timestamps and autocorking off so each write is
//! one 64-byte frame while the window allows, and the frames the NIC received are counted), and
//! TCP throughput (iperf3).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use ipnetwork::IpNetwork;
use trove_isolate_testbed::{tcp_probe, tcp_server, NetNs, Server};

use aya::programs::{tc::TcAttachOptions, LinkOrder, TcAttachType};
use trove_isolate::{capacity::Capacity, datapath::Datapath};

use crate::{daemon, scaling};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The daemon's established table: a fraction of the connections one measurement opens, so
/// that each run shows closed connections giving their slots back (else the test's
/// connections would fail once the table filled).
const ESTABLISHED_ENTRIES: u32 = 8192;
/// A second client address, in no list: every filter must refuse it.
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
/// The connection test's sources (listed as one prefix): 32 addresses, so that no 4-tuple is
/// used twice in a run (a tuple reused while the last connection on it closes is a
/// retransmitted SYN a second later, whatever the filter).
const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 64), 27);
const POOL_SIZE: u32 = 32;
/// The database port: every test's server listens on it in turn, so that the policy is
/// clients × one port (a rule each).
const PORT: u16 = 7000;
/// Bounds on each loop, besides its time.
const MAX_CONNECTIONS: u64 = 2_000_000;
const MAX_WRITES: u64 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nothing,
    /// The object's empty classifier on both hooks of the guest's NIC (TCX): what the hook
    /// itself costs, the yardstick of section 1 in real traffic.
    Empty,
    TroveIsolate,
    NftSets,
    NftLinear,
}

impl Filter {
    pub const ALL: [Filter; 5] = [
        Filter::Nothing,
        Filter::Empty,
        Filter::TroveIsolate,
        Filter::NftSets,
        Filter::NftLinear,
    ];

    /// Its name for `--filters`.
    pub fn key(self) -> &'static str {
        match self {
            Filter::Nothing => "none",
            Filter::Empty => "empty",
            Filter::TroveIsolate => "trove-isolate",
            Filter::NftSets => "nft-sets",
            Filter::NftLinear => "nft-linear",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Filter::Nothing => "no filter",
            Filter::Empty => "empty TC programs (r0 = -1; exit)",
            Filter::TroveIsolate => "trove-isolate",
            Filter::NftSets => "nftables, sets + ct state",
            Filter::NftLinear => "nftables, linear chain + ct state",
        }
    }
}

/// One filter's figures in one round.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub filter: Filter,
    pub connections_per_second: f64,
    /// Connections that read the server's greeting before they close.
    pub sessions_per_second: f64,
    /// Of both tests.
    pub failed_connections: u64,
    /// Packets of the tests' own flows trove-isolate dropped ([`lost`]).
    pub lost_packets: u64,
    pub frames_per_second: f64,
    pub mean_frame_bytes: f64,
    pub tcp_bits_per_second: f64,
    /// Time to put the filter in place (start to enforced, or `nft -f`).
    pub setup_seconds: f64,
}

pub struct Traffic {
    pub entries: usize,
    pub samples: Vec<Sample>,
}

struct Pair {
    server: NetNs,
    client: NetNs,
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Pair {
    fn new() -> anyhow::Result<Pair> {
        let pair = Pair {
            server: NetNs::new("bts"),
            client: NetNs::new("btc"),
        };
        pair.server.ip(&format!(
            "link add eth0 type veth peer name peer0 netns {}",
            pair.client.name()
        ));
        pair.server.ip(&format!("addr add {SERVER}/24 dev eth0"));
        pair.client.ip(&format!("addr add {CLIENT}/24 dev peer0"));
        pair.client.ip(&format!("addr add {STRANGER}/24 dev peer0"));
        for i in 0..POOL_SIZE {
            let ip = Ipv4Addr::from(u32::from(POOL.0) + i);
            pair.client.ip(&format!("addr add {ip}/24 dev peer0"));
        }
        for (ns, nic) in [(&pair.server, "eth0"), (&pair.client, "peer0")] {
            ns.ip("link set lo up");
            ns.ip(&format!("link set {nic} up"));
        }
        for setting in ["net.ipv4.tcp_timestamps=0", "net.ipv4.tcp_autocorking=0"] {
            pair.exec(&pair.client, &["sysctl", "-q", "-w", setting])?;
        }
        Ok(pair)
    }

    fn exec(&self, ns: &NetNs, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", ns.name()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Frames and bytes the server's NIC received so far.
    fn received(&self) -> anyhow::Result<(u64, u64)> {
        let json = sh(
            "ip",
            &["-n", self.server.name(), "-s", "-j", "link", "show", "eth0"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&json)?;
        let rx = &v[0]["stats64"]["rx"];
        Ok((
            rx["packets"].as_u64().context("rx packets")?,
            rx["bytes"].as_u64().context("rx bytes")?,
        ))
    }
}

/// What the test server does with each connection it accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// Closes it.
    Close,
    /// Writes a one-byte greeting and closes it.
    Greet,
    /// Reads it to its end.
    Drain,
}

/// A server on the database port for one test. Stops when dropped.
fn serve(pair: &Pair, how: Serve) -> anyhow::Result<Server> {
    let listener = pair
        .server
        .run(listen)
        .context("listening on the database port")?;
    Ok(Server::spawn(move |stop| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) if how == Serve::Drain => {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
                Ok((mut conn, _)) if how == Serve::Greet => {
                    let _ = conn.write_all(b"g");
                }
                // Accepted and closed.
                Ok(_) => {}
                // The receive timeout: a look at the stop flag.
                Err(_) => {}
            }
        }
    }))
}

/// The database port's listener: a deep backlog (std's 128 overflows under a connection flood
/// on two cores, and a dropped SYN costs its client a second), and an accept that wakes every
/// 100 ms to see whether it should stop.
fn listen() -> anyhow::Result<TcpListener> {
    use nix::sys::socket::{listen, setsockopt, sockopt, Backlog};
    let fd = bound_socket(SocketAddrV4::new(SERVER, PORT), |fd| {
        setsockopt(fd, sockopt::ReuseAddr, &true)?;
        setsockopt(
            fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 100_000),
        )
    })?;
    listen(&fd, Backlog::new(4096)?)?;
    Ok(TcpListener::from(fd))
}

/// An IPv4 stream socket with `options` set, bound to `addr`.
fn bound_socket(
    addr: SocketAddrV4,
    options: impl FnOnce(&OwnedFd) -> nix::Result<()>,
) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    options(&fd)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(fd)
}

/// A TCP connection from `from` (any free port: the tuple, not the port, must be unique).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{connect, setsockopt, sockopt, SockaddrIn};
    let fd = bound_socket(SocketAddrV4::new(from, 0), |fd| {
        setsockopt(fd, sockopt::IpBindAddressNoPort, &true)?;
        // A blocking connect gives up after the send timeout.
        setsockopt(
            fd,
            sockopt::SendTimeout,
            &nix::sys::time::TimeVal::new(1, 0),
        )
    })?;
    let SocketAddr::V4(to) = to else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// Sequential connections for `seconds`: connect and close, or (`greeted`, a database session's
/// shape) connect, read the server's greeting, close. Per second, and how many failed.
fn connections(pair: &Pair, seconds: f64, greeted: bool) -> anyhow::Result<(f64, u64)> {
    let to = SocketAddr::from((SERVER, PORT));
    let _server = serve(pair, if greeted { Serve::Greet } else { Serve::Close })?;
    Ok(pair.client.run(|| {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let (mut ok, mut failed) = (0u64, 0u64);
        while Instant::now() < deadline && ok + failed < MAX_CONNECTIONS {
            let from = Ipv4Addr::from(u32::from(POOL.0) + (ok + failed) as u32 % POOL_SIZE);
            // Closed on drop.
            let session = connect_from(from, to).and_then(|mut conn| match greeted {
                true => {
                    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
                    conn.read_exact(&mut [0u8])
                }
                false => Ok(()),
            });
            match session {
                Ok(()) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        (ok as f64 / started.elapsed().as_secs_f64(), failed)
    }))
}

fn small_frames(pair: &Pair, seconds: f64) -> anyhow::Result<(f64, f64)> {
    let to = SocketAddr::from((SERVER, PORT));
    let _server = serve(pair, Serve::Drain)?;
    let mut stream = pair
        .client
        .run(|| connect_from(CLIENT, to))
        .context("connecting for the small frames")?;
    stream.set_nodelay(true)?;
    let (packets0, bytes0) = pair.received()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let payload = [0x5au8; 10];
    let mut writes = 0u64;
    while Instant::now() < deadline && writes < MAX_WRITES {
        stream.write_all(&payload)?;
        writes += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(stream);
    std::thread::sleep(Duration::from_millis(50));
    let (packets1, bytes1) = pair.received()?;
    let (packets, bytes) = (packets1 - packets0, bytes1 - bytes0);
    Ok((
        packets as f64 / elapsed,
        bytes as f64 / packets.max(1) as f64,
    ))
}

fn throughput(pair: &Pair, seconds: f64) -> anyhow::Result<f64> {
    let port = PORT.to_string();
    let server_ip = SERVER.to_string();
    let client_ip = CLIENT.to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", pair.server.name(), "iperf3", "-s", "-1"])
        .args(["-p", &port, "-B", &server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let time = format!("{}", seconds.ceil().max(1.0) as u64);
    let result = pair.exec(
        &pair.client,
        &[
            "iperf3",
            "-c",
            &server_ip,
            "-B",
            &client_ip,
            "-p",
            &port,
            "-t",
            &time,
            "-J",
            "--connect-timeout",
            "2000",
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&result?)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's result")
}

/// The nftables ruleset for the server's namespace: the client prefixes as sets, or as one rule
/// each, the listed client last.
fn nft_ruleset(prefixes: &[IpNetwork], linear: bool) -> String {
    let mut text = String::from("table inet bench {\n");
    let (v4, v6): (Vec<&IpNetwork>, Vec<&IpNetwork>) = prefixes.iter().partition(|n| n.is_ipv4());
    if !linear {
        for (name, kind) in [("clients4", "ipv4_addr"), ("clients6", "ipv6_addr")] {
            text.push_str(&format!(
                "  set {name} {{ type {kind}; flags interval; auto-merge; }}\n"
            ));
        }
    }
    text.push_str(
        "  chain input {\n    type filter hook input priority filter; policy drop;\n    \
         ct state established,related accept\n    iif \"lo\" accept\n    \
         meta l4proto ipv6-icmp accept\n",
    );
    if linear {
        for net in prefixes {
            let family = if net.is_ipv4() { "ip" } else { "ip6" };
            text.push_str(&format!(
                "    {family} saddr {net} tcp dport {PORT} accept\n"
            ));
        }
    } else {
        text.push_str(&format!(
            "    ip saddr @clients4 tcp dport {PORT} accept\n    \
             ip6 saddr @clients6 tcp dport {PORT} accept\n"
        ));
    }
    text.push_str("  }\n}\n");
    if !linear {
        // Elements in their own statements, in chunks: one huge line is slow to parse.
        for (name, list) in [("clients4", &v4), ("clients6", &v6)] {
            for chunk in list.chunks(5_000) {
                let items: Vec<String> = chunk.iter().map(|n| n.to_string()).collect();
                text.push_str(&format!(
                    "add element inet bench {name} {{ {} }}\n",
                    items.join(", ")
                ));
            }
        }
    }
    text
}

/// Puts a filter in place; returns how long it took, and what undoes it.
enum Installed {
    Nothing,
    /// Dropped, it detaches the programs.
    Empty(Box<Datapath>),
    Daemon(daemon::Running, u16),
    Nft,
}

/// Packets of the tests' own flows the daemon dropped: every drop but the stranger's refused
/// probe (`policy`) and the IPv6 multicast the client's NIC sends (`unsupported_protocol`).
/// Each is a connection's stall, or its close lost.
fn lost(port: u16) -> anyhow::Result<u64> {
    let mut sum = 0;
    for line in drops(port)? {
        if line.contains("reason=\"policy\"") || line.contains("reason=\"unsupported_protocol\"") {
            continue;
        }
        let count = line.rsplit(' ').next().context("a drop counter's value")?;
        sum += count.parse::<u64>().with_context(|| line.clone())?;
    }
    Ok(sum)
}

/// The daemon's drop counters, by reason, from its metrics.
fn drops(port: u16) -> anyhow::Result<Vec<String>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("trove_isolate_drops_total{"))
        .map(str::to_owned)
        .collect())
}

fn install(
    filter: Filter,
    pair: &Pair,
    prefixes: &[IpNetwork],
    bin: &Path,
    dir: &Path,
    round: usize,
) -> anyhow::Result<(Installed, f64)> {
    let started = Instant::now();
    let installed = match filter {
        Filter::Nothing => Installed::Nothing,
        Filter::Empty => Installed::Empty(Box::new(empty_programs(pair)?)),
        Filter::TroveIsolate => {
            let pin_path = PathBuf::from(format!(
                "/sys/fs/bpf/trove-isolate-traffic-{}-{round}",
                std::process::id()
            ));
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let clients: Vec<String> = prefixes.iter().map(|n| format!("\"{n}\"")).collect();
            let config = format!(
                "mode = \"enforce\"\npin_path = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
                 [conntrack]\nestablished_entries = {ESTABLISHED_ENTRIES}\n\
                 [business]\ninterface = \"eth0\"\nnetns = \"{}\"\ndatabase_ports = [{PORT}]\n\
                 clients = [{}]\n",
                pin_path.display(),
                pair.server.path().display(),
                clients.join(", ")
            );
            let path = dir.join(format!("traffic-{round}.toml"));
            std::fs::write(&path, config)?;
            Installed::Daemon(daemon::Running::start(bin, &path, &pin_path, dir)?, port)
        }
        Filter::NftSets | Filter::NftLinear => {
            let path = dir.join("ruleset.nft");
            std::fs::write(&path, nft_ruleset(prefixes, filter == Filter::NftLinear))?;
            pair.exec(&pair.server, &["nft", "-f", &path.display().to_string()])?;
            Installed::Nft
        }
    };
    Ok((installed, started.elapsed().as_secs_f64()))
}

/// `bench_empty` attached first on both hooks of the guest's NIC, in its namespace.
fn empty_programs(pair: &Pair) -> anyhow::Result<Datapath> {
    let mut datapath = Datapath::load(None, false, &Capacity::DEFAULT)?;
    let program = datapath.bench_program("bench_empty")?;
    trove_isolate::netns::run_in(Some(&pair.server.path()), || {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            program.attach_with_options(
                "eth0",
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )?;
        }
        Ok::<_, aya::programs::ProgramError>(())
    })??;
    Ok(datapath)
}

fn remove(installed: Installed, pair: &Pair) -> anyhow::Result<()> {
    match installed {
        Installed::Nothing => Ok(()),
        Installed::Empty(datapath) => {
            drop(datapath);
            Ok(())
        }
        Installed::Daemon(running, port) => {
            for line in drops(port)? {
                eprintln!("bench: trove-isolate dropped: {line}");
            }
            eprintln!(
                "bench: the daemon used {:.2} s of CPU",
                running.cpu_seconds()?
            );
            running.stop()
        }
        Installed::Nft => pair
            .exec(&pair.server, &["nft", "delete", "table", "inet", "bench"])
            .map(drop),
    }
}

pub fn run(
    bin: &Path,
    filters: &[Filter],
    entries: usize,
    rounds: usize,
    seconds: f64,
    dir: &Path,
) -> anyhow::Result<Traffic> {
    for tool in ["iperf3", "nft"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed (cargo xtask bench installs it)");
        }
    }
    // The listed client last: a linear chain walks every other prefix first.
    let pool = IpNetwork::new(IpAddr::V4(POOL.0), POOL.1)?;
    let mut prefixes = scaling::prefixes(entries.saturating_sub(2), 3);
    prefixes.retain(|n| {
        ![CLIENT, STRANGER, POOL.0]
            .iter()
            .any(|a| n.contains(IpAddr::V4(*a)))
            && !pool.contains(n.network())
    });
    prefixes.push(pool);
    prefixes.push(IpNetwork::new(IpAddr::V4(CLIENT), 32)?);
    let echo = SocketAddr::from((SERVER, PORT));
    let probe = Duration::from_millis(500);

    let mut samples = Vec::new();
    for round in 0..rounds {
        // Each round starts one filter further on, so that every filter takes every place.
        let order = (0..filters.len()).map(|i| filters[(i + round) % filters.len()]);
        for filter in order {
            // A pair of namespaces of its own: a measurement starts from a clean stack, with no
            // TIME_WAIT sockets or conntrack entries (nf_conntrack's count is per namespace)
            // left by the connections of the one before.
            let pair = Pair::new()?;
            eprintln!(
                "bench: traffic, round {} of {rounds}: {}",
                round + 1,
                filter.name()
            );
            let (installed, setup_seconds) = install(filter, &pair, &prefixes, bin, dir, round)?;
            let measured = (|| -> anyhow::Result<Sample> {
                // The filter is in force: the listed client passes, a stranger does not.
                let echo_server = tcp_server(&pair.server, echo);
                anyhow::ensure!(
                    tcp_probe(&pair.client, Some(IpAddr::V4(CLIENT)), echo, probe),
                    "{}: the listed client was refused",
                    filter.name()
                );
                let stranger = tcp_probe(&pair.client, Some(IpAddr::V4(STRANGER)), echo, probe);
                anyhow::ensure!(
                    stranger == matches!(filter, Filter::Nothing | Filter::Empty),
                    "{}: a client in no list {}",
                    filter.name(),
                    if stranger { "passed" } else { "was refused" }
                );
                drop(echo_server);
                let (connections_per_second, failed) = connections(&pair, seconds, false)?;
                let (sessions_per_second, failed_sessions) = connections(&pair, seconds, true)?;
                let (frames_per_second, mean_frame_bytes) = small_frames(&pair, seconds)?;
                let tcp_bits_per_second = throughput(&pair, seconds)?;
                let lost_packets = match &installed {
                    Installed::Daemon(_, port) => lost(*port)?,
                    _ => 0,
                };
                Ok(Sample {
                    filter,
                    connections_per_second,
                    sessions_per_second,
                    failed_connections: failed + failed_sessions,
                    lost_packets,
                    frames_per_second,
                    mean_frame_bytes,
                    tcp_bits_per_second,
                    setup_seconds,
                })
            })();
            remove(installed, &pair)?;
            samples.push(measured?);
        }
    }
    Ok(Traffic {
        entries: prefixes.len(),
        samples,
    })
}
