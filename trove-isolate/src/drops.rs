//! Sampled drop events: decoding what the datapath sends, the daemon's rate-limited log and its
//! fan-out to `trove-isolate drops`.
//!
//! The datapath sends the packet's first bytes, not a parsed tuple (see
//! `trove_isolate_common::events`); the 5-tuple is decoded here with etherparse, leniently, since
//! a dropped packet is often a malformed one. The daemon is the ring buffer's one reader: it logs
//! at most `[drops] log_per_second` lines a second, counts the rest, and streams every event as a
//! JSON line to each client of a Unix socket next to the state file. `drops` reads that socket, or
//! the pinned ring buffer itself when no daemon runs.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    os::{fd::AsFd as _, unix::net::UnixStream},
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use etherparse::{LaxNetSlice, LaxSlicedPacket};
use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncWriteExt as _,
    net::UnixListener,
    sync::broadcast::{self, error::RecvError},
};
use trove_isolate_common::{events, Direction, Reason, Role, Verdict};

use crate::{pins::Pins, serve::Scrape, state::State};

/// One drop event, decoded: what `drops` prints and the socket carries (one JSON line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEvent {
    /// When userspace read it (RFC 3339, UTC).
    pub time: String,
    pub interface: String,
    pub role: Role,
    pub direction: Direction,
    /// `drop`, or `audit` for a packet audit mode passed.
    pub verdict: String,
    pub reason: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `arp`, `ipv4`/`ipv6` (another protocol, or no header
    /// readable past IP), or `ethernet` (nothing readable past Ethernet).
    pub protocol: String,
    /// `address:port` for TCP and UDP, the address otherwise; empty when not readable.
    pub src: String,
    pub dst: String,
    /// TCP: the flags, as tcpdump writes them (`S`, `S.`, `.`, `P.`, `F.`, `R`, `R.`; `.` is
    /// ACK); empty otherwise or when not readable.
    #[serde(default)]
    pub tcp_flags: String,
    /// The packet's length.
    pub len: u32,
}

impl std::fmt::Display for DropEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.interface, self.role, self.direction, self.verdict, self.reason, self.protocol
        )?;
        if !self.src.is_empty() || !self.dst.is_empty() {
            write!(f, " {} > {}", or_dash(&self.src), or_dash(&self.dst))?;
        }
        if !self.tcp_flags.is_empty() {
            write!(f, " [{}]", self.tcp_flags)?;
        }
        write!(f, " len {}", self.len)
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Decodes one ring buffer record; `interface` names the role's NIC. `None` for a record of
/// another size or with codes this build does not know (another layout).
pub fn decode(record: &[u8], interface: impl Fn(Role) -> String) -> Option<DropEvent> {
    if record.len() != std::mem::size_of::<events::DropEvent>() {
        return None;
    }
    // SAFETY: the size matches and DropEvent is plain old data; read_unaligned needs no alignment.
    let raw: events::DropEvent =
        unsafe { std::ptr::read_unaligned(record.as_ptr() as *const events::DropEvent) };
    let role = Role::from_u8(raw.role)?;
    let direction = Direction::from_u8(raw.direction)?;
    let verdict = Verdict::from_u8(raw.verdict)?;
    let reason = Reason::from_u8(raw.reason)?;
    let captured = usize::from(raw.captured).min(events::HEAD);
    let (protocol, src, dst) = tuple(&raw.head[..captured]);
    let tcp_flags = tcp_flags(&raw.head[..captured]);
    Some(DropEvent {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        interface: interface(role),
        role,
        direction,
        verdict: verdict.name().into(),
        reason: reason.name().into(),
        protocol,
        src,
        dst,
        tcp_flags,
        len: raw.len,
    })
}

/// A TCP segment's flags from a packet's first bytes, as tcpdump writes them.
fn tcp_flags(head: &[u8]) -> String {
    let Ok(packet) = LaxSlicedPacket::from_ethernet(head) else {
        return String::new();
    };
    let payload = match &packet.net {
        Some(LaxNetSlice::Ipv4(ip)) => ip.payload(),
        Some(LaxNetSlice::Ipv6(ip)) => ip.payload(),
        _ => return String::new(),
    };
    let flags = match payload.payload.get(13) {
        Some(&flags) if payload.ip_number.0 == 6 && !payload.fragmented => flags,
        _ => return String::new(),
    };
    [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
        (0x10, '.'),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, c)| *c)
    .collect()
}

/// Protocol, source and destination from a packet's first bytes.
fn tuple(head: &[u8]) -> (String, String, String) {
    let Ok(packet) = LaxSlicedPacket::from_ethernet(head) else {
        return ("ethernet".into(), String::new(), String::new());
    };
    let (family, src, dst, payload) = match &packet.net {
        Some(LaxNetSlice::Ipv4(ip)) => (
            "ipv4",
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload(),
        ),
        Some(LaxNetSlice::Ipv6(ip)) => (
            "ipv6",
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload(),
        ),
        Some(LaxNetSlice::Arp(arp)) => {
            let addr = |b: &[u8]| match <[u8; 4]>::try_from(b) {
                Ok(a) => IpAddr::from(a).to_string(),
                Err(_) => String::new(),
            };
            return (
                "arp".into(),
                addr(arp.sender_protocol_addr()),
                addr(arp.target_protocol_addr()),
            );
        }
        None => return ("ethernet".into(), String::new(), String::new()),
    };
    let ports = |p: &[u8]| -> Option<(u16, u16)> {
        // Of a fragment, the bytes after the IP header are ports only in the first: trust none.
        if payload.fragmented {
            return None;
        }
        Some((
            u16::from_be_bytes([*p.first()?, *p.get(1)?]),
            u16::from_be_bytes([*p.get(2)?, *p.get(3)?]),
        ))
    };
    let with_ports = |name: &str| match ports(payload.payload) {
        Some((sport, dport)) => (
            name.to_owned(),
            SocketAddr::new(src, sport).to_string(),
            SocketAddr::new(dst, dport).to_string(),
        ),
        None => (name.to_owned(), src.to_string(), dst.to_string()),
    };
    match payload.ip_number.0 {
        6 => with_ports("tcp"),
        17 => with_ports("udp"),
        1 => ("icmp".into(), src.to_string(), dst.to_string()),
        58 => ("icmpv6".into(), src.to_string(), dst.to_string()),
        _ => (family.into(), src.to_string(), dst.to_string()),
    }
}

/// At most `per_second` lines a second; the rest counted.
pub struct LogLimit {
    per_second: u32,
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(per_second: u32) -> LogLimit {
        LogLimit {
            per_second,
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Ends the window if a second has passed; returns how many lines it held back.
    pub fn roll(&mut self, now: Instant) -> u64 {
        if now.duration_since(self.window) < Duration::from_secs(1) {
            return 0;
        }
        self.window = now;
        self.logged = 0;
        std::mem::take(&mut self.suppressed)
    }

    /// Whether a line may be written now; a refused one is counted.
    pub fn admit(&mut self, now: Instant) -> bool {
        let _ = self.roll(now);
        if self.logged < self.per_second {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The daemon's side: reads the ring buffer, counts, logs within `log_per_second`, and hands
/// every event to the subscribers. Returns only on error.
pub async fn follow(
    ring: RingBuf<MapData>,
    scrape: Arc<Scrape>,
    feed: broadcast::Sender<Arc<DropEvent>>,
) -> anyhow::Result<()> {
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: the AsyncFd owns the ring buffer, so its fd outlives the registration.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("watching the drop event ring buffer")?;
    let mut limit = LogLimit::new(scrape.drop_log_per_second.load(Ordering::Relaxed));
    // Says how many lines a window held back once it is over, even if no event follows.
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        let readable = tokio::select! {
            guard = fd.readable_mut() => guard.context("waiting on the drop event ring buffer")?,
            _ = ticks.tick() => {
                report_held_back(limit.roll(Instant::now()));
                continue;
            }
        };
        let mut guard = readable;
        let mut batch = Vec::new();
        {
            let state = scrape.state.read().unwrap_or_else(|e| e.into_inner());
            let ring = guard.get_inner_mut();
            while let Some(record) = ring.next() {
                if let Some(event) = decode(&record, |role| interface_of(&state, role)) {
                    batch.push(event);
                }
            }
        }
        guard.clear_ready();
        // A reload may have changed it.
        limit.per_second = scrape.drop_log_per_second.load(Ordering::Relaxed);
        let mut not_logged = 0;
        for event in &batch {
            report_held_back(limit.roll(Instant::now()));
            if limit.admit(Instant::now()) {
                log::info!("drop event: {event}");
            } else {
                not_logged += 1;
            }
        }
        {
            let mut stats = scrape.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.drop_events += batch.len() as u64;
            stats.drop_events_not_logged += not_logged;
        }
        for event in batch {
            // No subscriber is not an error.
            let _ = feed.send(Arc::new(event));
        }
    }
}

fn report_held_back(n: u64) {
    if n > 0 {
        log::info!("{n} more drop events in the last second were not logged");
    }
}

fn interface_of(state: &State, role: Role) -> String {
    state
        .attached(role)
        .next()
        .map(|a| a.interface.clone())
        .unwrap_or_default()
}

/// The socket `drops` clients connect to, at `path`. Root only: events name tenants' addresses.
/// Bound before the daemon reports READY: a `drops` that found no socket would read the ring
/// buffer itself, taking the events it reads from the daemon's count.
pub fn bind_subscribers(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Streams events to every client of `listener` ([`bind_subscribers`]), one JSON line each (a
/// client that falls behind is told how many it missed).
pub async fn serve_subscribers(
    listener: UnixListener,
    feed: broadcast::Sender<Arc<DropEvent>>,
) -> anyhow::Result<()> {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::serve::accept_failed("drops", &e).await;
                continue;
            }
        };
        let mut events = feed.subscribe();
        tokio::spawn(async move {
            loop {
                let line = match events.recv().await {
                    Ok(event) => serde_json::to_string(&*event),
                    Err(RecvError::Lagged(n)) => serde_json::to_string(&Missed { missed: n }),
                    Err(RecvError::Closed) => return,
                };
                let Ok(mut line) = line else { return };
                line.push('\n');
                if stream.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Sent to a client that fell behind.
#[derive(Serialize, Deserialize)]
struct Missed {
    missed: u64,
}

/// What `trove-isolate drops` shows.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub interface: Option<String>,
    pub role: Option<Role>,
    pub direction: Option<Direction>,
    pub reasons: Vec<Reason>,
}

impl Filter {
    pub fn matches(&self, event: &DropEvent) -> bool {
        self.interface
            .as_ref()
            .is_none_or(|i| *i == event.interface)
            && self.role.is_none_or(|r| r == event.role)
            && self.direction.is_none_or(|d| d == event.direction)
            && (self.reasons.is_empty() || self.reasons.iter().any(|r| r.name() == event.reason))
    }
}

/// How `drops` reads and stops.
pub struct Follow {
    pub filter: Filter,
    pub json: bool,
    /// Stop after this many matching events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// `trove-isolate drops`: prints matching events as they come, from the daemon's socket, or
/// from the pinned ring buffer when no daemon runs.
pub fn follow_cli(pins: &Pins, options: &Follow) -> anyhow::Result<()> {
    let deadline = options.duration.map(|d| Instant::now() + d);
    let mut shown = 0u64;
    let mut show = |event: &DropEvent| -> bool {
        if !options.filter.matches(event) {
            return true;
        }
        if options.json {
            println!("{}", serde_json::to_string(event).unwrap_or_default());
        } else {
            println!("{} {event}", event.time);
        }
        shown += 1;
        options.count.is_none_or(|n| shown < n)
    };
    match UnixStream::connect(pins.drops_socket()) {
        Ok(stream) => from_daemon(stream, deadline, &mut show),
        Err(e) => {
            let ring = crate::datapath::open_drop_events(pins).with_context(|| {
                format!(
                    "no daemon serves drop events ({}: {e}) and the datapath's ring buffer \
                     cannot be read: is trove-isolate enforcing under {}?",
                    pins.drops_socket().display(),
                    pins.root().display()
                )
            })?;
            eprintln!("no daemon is running: reading the datapath's ring buffer directly");
            let state = State::read(&pins.state_file())?.unwrap_or_default();
            from_ring(ring, &state, deadline, &mut show)
        }
    }
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

fn from_daemon(
    stream: UnixStream,
    deadline: Option<Instant>,
    show: &mut impl FnMut(&DropEvent) -> bool,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        if let Some(left) = remaining(deadline) {
            if left.is_zero() {
                return Ok(());
            }
            reader.get_ref().set_read_timeout(Some(left))?;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => anyhow::bail!("the daemon closed the drop event stream (stopped?)"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e).context("reading drop events from the daemon"),
        }
        if let Ok(missed) = serde_json::from_str::<Missed>(&line) {
            eprintln!("({} events missed: this reader fell behind)", missed.missed);
            continue;
        }
        let event: DropEvent =
            serde_json::from_str(&line).context("a drop event the daemon sent")?;
        if !show(&event) {
            return Ok(());
        }
    }
}

fn from_ring(
    mut ring: RingBuf<MapData>,
    state: &State,
    deadline: Option<Instant>,
    show: &mut impl FnMut(&DropEvent) -> bool,
) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        while let Some(record) = ring.next() {
            if let Some(event) = decode(&record, |role| interface_of(state, role)) {
                if !show(&event) {
                    return Ok(());
                }
            }
        }
        let wait = match remaining(deadline) {
            Some(left) if left.is_zero() => return Ok(()),
            Some(left) => PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting on the drop event ring buffer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limit_admits_its_rate_and_counts_the_rest() {
        let mut limit = LogLimit::new(3);
        let start = Instant::now();
        let admitted: Vec<bool> = (0..5).map(|_| limit.admit(start)).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        assert_eq!(limit.roll(start + Duration::from_millis(999)), 0);
        // The window's end says how many it held back; the next admits again.
        assert_eq!(limit.roll(start + Duration::from_secs(1)), 2);
        assert!(limit.admit(start + Duration::from_secs(1)));
    }

    #[test]
    fn a_truncated_or_odd_head_still_decodes_what_it_can() {
        // Ethernet + IPv4 header (UDP) with no room for the ports.
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 7, 192, 0, 2, 10,
        ]);
        assert_eq!(
            tuple(&frame),
            ("udp".into(), "198.51.100.7".into(), "192.0.2.10".into())
        );
        frame.extend_from_slice(&[0x30, 0x39, 0x0c, 0xea]);
        assert_eq!(
            tuple(&frame),
            (
                "udp".into(),
                "198.51.100.7:12345".into(),
                "192.0.2.10:3306".into()
            )
        );
        assert_eq!(tuple(&frame[..10]).0, "ethernet");
        assert_eq!(tcp_flags(&frame), "", "not TCP");
    }

    #[test]
    fn tcp_flags_read_as_tcpdump_writes_them() {
        let segment = |flags: u8| {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend_from_slice(&[
                0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 198, 51, 100, 7, 192, 0, 2, 10,
            ]);
            let mut tcp = [0u8; 20];
            tcp[12] = 5 << 4;
            tcp[13] = flags;
            frame.extend_from_slice(&tcp);
            frame
        };
        for (flags, shown) in [
            (0x02, "S"),
            (0x12, "S."),
            (0x10, "."),
            (0x18, "P."),
            (0x11, "F."),
            (0x04, "R"),
            (0x14, "R."),
        ] {
            assert_eq!(tcp_flags(&segment(flags)), shown);
        }
        // Cut before the flags byte.
        assert_eq!(tcp_flags(&segment(0x02)[..14 + 20 + 13]), "");
    }
}
