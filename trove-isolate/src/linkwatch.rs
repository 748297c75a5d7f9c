//! Hearing NICs move: link and address events from every network namespace.
//!
//! One NETLINK_ROUTE socket in the daemon's namespace, subscribed to link and address events
//! with NETLINK_LISTEN_ALL_NSID, hears them from every namespace that has an id in ours. Moving a
//! device into a namespace gives that namespace an id here before the device appears there
//! (the kernel needs it for the RTM_DELLINK it sends here, with IFLA_NEW_NETNSID), so
//! docker-hostnic's sandbox is heard from the move on: the device arriving (down), its rename,
//! its addresses, its coming up. A move between two other namespaces gives the target an id in
//! the source only, so [`give_ids`] gives every namespace file an id here: then the source's
//! RTM_DELLINK is heard, and, once the NIC is found in the target, the target's events too. The
//! events only say "look again"; what moved where is found by [`crate::nic::resolve`], which is
//! what a start does too.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
};

use anyhow::Context as _;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::{
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use tokio::sync::Notify;

/// What to look at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A device appeared, left, changed name or state: where are the NICs now?
    Link = 1,
    /// An address came or went: what are the NICs' addresses now?
    Address = 2,
}

/// The changes heard since the last [`Changes::next`], one flag per kind: a burst of events
/// is one look, and no kind is ever lost to another (a channel that drops when full could lose
/// a move behind address events).
pub struct Changes {
    pending: Arc<AtomicU8>,
    wake: Arc<Notify>,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Changes {
    /// Waits for changes; returns (a link changed, an address changed). Errors once the
    /// listener has stopped.
    pub async fn next(&mut self) -> anyhow::Result<(bool, bool)> {
        loop {
            let pending = self.pending.swap(0, Ordering::AcqRel);
            if pending != 0 {
                return Ok((
                    pending & Change::Link as u8 != 0,
                    pending & Change::Address as u8 != 0,
                ));
            }
            if !self.alive.load(Ordering::Acquire) {
                anyhow::bail!("the link watcher stopped: NIC moves would go unheard");
            }
            self.wake.notified().await;
        }
    }
}

// rtnetlink multicast groups (linux/rtnetlink.h) and message types.
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
/// Room for a burst of events (a container start is a dozen or so).
const RECEIVE_BUFFER: usize = 4 << 20;

/// Starts listening on a thread of its own; [`Changes::next`] says what changed.
pub fn watch() -> anyhow::Result<Changes> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR] {
        socket
            .add_membership(group)
            .with_context(|| format!("joining rtnetlink group {group}"))?;
    }
    socket
        .set_listen_all_namespaces(true)
        .context("NETLINK_LISTEN_ALL_NSID")?;
    // Best effort: the default is enough for a guest's pace; an overrun says "look again".
    let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
    give_ids();
    let changes = Changes {
        pending: Arc::new(AtomicU8::new(0)),
        wake: Arc::new(Notify::new()),
        alive: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    let (pending, wake, alive) = (
        changes.pending.clone(),
        changes.wake.clone(),
        changes.alive.clone(),
    );
    std::thread::Builder::new()
        .name("linkwatch".into())
        .spawn(move || {
            listen(&socket, &pending, &wake);
            alive.store(false, Ordering::Release);
            wake.notify_one();
        })
        .context("starting the link watcher")?;
    Ok(changes)
}

/// Gives every network namespace that has a file an id in ours (RTM_NEWNSID), so that its link
/// events reach the watcher. Best effort: one that already has an id, or has gone, is skipped.
pub fn give_ids() {
    let Ok(mut socket) = Socket::new(NETLINK_ROUTE) else {
        return;
    };
    if socket.bind_auto().is_err() {
        return;
    }
    let mut answer = vec![0u8; 4096];
    for path in crate::nic::namespace_files() {
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let mut request = NsidMessage::default();
        request.attributes = vec![
            NsidAttribute::Fd(file.as_raw_fd() as u32),
            // -1: the kernel picks the id.
            NsidAttribute::Id(-1),
        ];
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewNsId(request));
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        message.finalize();
        let mut bytes = vec![0u8; message.buffer_len()];
        message.serialize(&mut bytes);
        if socket.send(&bytes, 0).is_err() {
            continue;
        }
        // The ack: 0, or EEXIST for a namespace that has an id already.
        if let Ok(n) = socket.recv(&mut &mut answer[..], 0) {
            if let Ok(reply) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..n]) {
                if let NetlinkPayload::Error(e) = reply.payload {
                    let code = e.code.map_or(0, |c| -c.get());
                    if code != 0 && code != nix::errno::Errno::EEXIST as i32 {
                        log::debug!("giving {} an id: errno {code}", path.display());
                    }
                }
            }
        }
    }
}

fn listen(socket: &Socket, pending: &AtomicU8, wake: &Notify) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let changes = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => classify(&buf[..n]),
            // ENOBUFS: events were lost; anything may have changed.
            Err(e) if e.raw_os_error() == Some(libc_enobufs()) => {
                vec![Change::Link, Change::Address]
            }
            Err(e) => {
                log::error!("the link watcher stopped: {e}");
                return;
            }
        };
        let bits = changes.iter().fold(0, |b, c| b | *c as u8);
        if bits != 0 {
            pending.fetch_or(bits, Ordering::AcqRel);
            // A permit is stored if the daemon is not waiting: the next wait returns at once.
            wake.notify_one();
        }
    }
}

fn libc_enobufs() -> i32 {
    nix::errno::Errno::ENOBUFS as i32
}

/// The changes a datagram of netlink messages speaks of, each once.
fn classify(mut bytes: &[u8]) -> Vec<Change> {
    let mut out = Vec::new();
    while let Ok(message) = NetlinkBuffer::new_checked(bytes) {
        let change = match message.message_type() {
            RTM_NEWLINK | RTM_DELLINK => Some(Change::Link),
            RTM_NEWADDR | RTM_DELADDR => Some(Change::Address),
            _ => None,
        };
        if let Some(change) = change.filter(|c| !out.contains(c)) {
            out.push(change);
        }
        let len = (message.length() as usize).next_multiple_of(4);
        if len == 0 || len > bytes.len() {
            break;
        }
        bytes = &bytes[len..];
    }
    out
}
