//! `status` and `detach`: working on what a daemon left pinned, with or without it running.

use std::{fmt::Write as _, fs, io};

use anyhow::Context as _;
use trove_isolate_common::Role;

use crate::{
    attach,
    datapath::PinnedMaps,
    pins::Pins,
    rawsock,
    state::{Hook, State},
};

/// What `status` prints: attachments, mode and counters.
pub fn status(pins: &Pins) -> anyhow::Result<String> {
    let state = State::read(&pins.state_file())?;
    let mut out = String::new();
    let Some(state) = state else {
        if pins.root().exists() {
            writeln!(
                out,
                "pins exist under {} but no record of what is attached (in {}); \
                 `run` adopts them, `detach` removes them",
                pins.root().display(),
                pins.state_file().display()
            )?;
        } else {
            writeln!(
                out,
                "not enforcing: nothing under {}",
                pins.root().display()
            )?;
        }
        return Ok(out);
    };
    writeln!(
        out,
        "pin path {}  mode {}",
        pins.root().display(),
        state.mode
    )?;
    writeln!(out, "attached:")?;
    for a in &state.attachments {
        let netns = a
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into());
        let live = match &a.hook {
            Hook::Tcx if !pins.link(a.role, a.direction).exists() => "  (link pin missing!)",
            _ => "",
        };
        writeln!(
            out,
            "  {:<10} {:<7} {:<12} ifindex {:<4} netns {:<28} {}{live}",
            a.role,
            a.direction,
            a.interface,
            a.ifindex,
            netns,
            a.hook.name()
        )?;
    }
    let maps = PinnedMaps::open(pins)?;
    for role in Role::ALL {
        if state.attached(role).next().is_none() {
            writeln!(out, "{}: not protected (no NIC configured)", role.name())?;
            continue;
        }
        let mode = maps.mode(role)?;
        let entries = state
            .policy_entries
            .iter()
            .find(|(r, _)| *r == role)
            .map_or(0, |(_, n)| *n);
        writeln!(
            out,
            "{}: mode {}, {entries} policy entries",
            role.name(),
            mode.name()
        )?;
    }
    if let Some(biz) = state.attachments.iter().find(|a| a.role == Role::Business) {
        raw_socket_warning(&mut out, biz.netns.as_deref())?;
    }
    writeln!(out, "counters (packets, bytes):")?;
    let counts = maps.counts()?;
    if counts.is_empty() {
        writeln!(out, "  none yet")?;
    }
    for c in counts {
        writeln!(
            out,
            "  {:<10} {:<7} {:<5} {:<22} {:>10} {:>12}",
            c.role.name(),
            c.direction.name(),
            c.verdict.name(),
            c.reason.name(),
            c.counter.packets,
            c.counter.bytes
        )?;
    }
    Ok(out)
}

/// Warns when processes in the business NIC's namespace hold CAP_NET_RAW: packet sockets read
/// frames before TC ingress and can send past TC egress.
fn raw_socket_warning(out: &mut String, netns: Option<&std::path::Path>) -> std::fmt::Result {
    let where_ = netns.map_or_else(
        || "the host namespace".to_owned(),
        |p| p.display().to_string(),
    );
    match rawsock::holders(netns) {
        Ok(found) if found.is_empty() => Ok(()),
        Ok(found) => {
            let list: Vec<String> = found
                .iter()
                .take(8)
                .map(|p| format!("{} ({})", p.pid, p.command))
                .collect();
            let more = found.len().saturating_sub(8);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            writeln!(
                out,
                "WARNING: {} process(es) in the business NIC's namespace {where_} hold CAP_NET_RAW: \
                 {}{more}. Packet sockets see frames before TC ingress and can send past TC \
                 egress; drop NET_RAW from the database container (see SECURITY.md).",
                found.len(),
                list.join(", ")
            )
        }
        Err(e) => writeln!(
            out,
            "note: cannot check {where_} for CAP_NET_RAW holders: {e}"
        ),
    }
}

/// Removes all enforcement and every pin under `pins`. Returns what was removed, one per line.
pub fn detach(pins: &Pins) -> anyhow::Result<String> {
    let mut out = String::new();
    let state_file = pins.state_file();
    if let Some(mut state) = State::read(&state_file)? {
        // One attachment at a time, the record rewritten after each: a detach that fails half
        // way leaves a record of exactly what is left, and running it again finishes the job.
        while let Some(a) = state.attachments.first().cloned() {
            attach::remove(&a, &pins.link(a.role, a.direction)).with_context(|| {
                format!("detaching {} {} from {}", a.role, a.direction, a.interface)
            })?;
            state.attachments.remove(0);
            state.write(&state_file)?;
            writeln!(
                out,
                "detached {} {} from {} ({})",
                a.role,
                a.direction,
                a.interface,
                a.hook.name()
            )?;
        }
    }
    // TCX links pinned without a record: released here, not left to bpffs' deferred release.
    if let Ok(entries) = fs::read_dir(pins.links_dir()) {
        for link in entries.filter_map(Result::ok).map(|e| e.path()) {
            attach::remove_tcx(&link)
                .with_context(|| format!("detaching the link pinned at {}", link.display()))?;
            writeln!(out, "detached the link pinned at {}", link.display())?;
        }
    }
    // Whatever else is pinned (links without a record, maps of any layout version).
    if pins.root().exists() {
        fs::remove_dir_all(pins.root())
            .with_context(|| format!("removing {}", pins.root().display()))?;
        writeln!(out, "removed pins under {}", pins.root().display())?;
    }
    match fs::remove_file(&state_file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", state_file.display())),
    }
    if out.is_empty() {
        writeln!(out, "nothing to detach under {}", pins.root().display())?;
    }
    Ok(out)
}

/// Asks the daemon enforcing under `pins` to reload its config, after validating that config
/// here; returns what the daemon reports.
pub fn reload(pins: &Pins, timeout: std::time::Duration) -> anyhow::Result<String> {
    use nix::{sys::signal, unistd::Pid};

    let state_file = pins.state_file();
    let state = State::read(&state_file)?.with_context(|| {
        format!(
            "no daemon enforces under {} (no record in {})",
            pins.root().display(),
            state_file.display()
        )
    })?;
    let (Some(pid), Some(config)) = (state.pid, state.config.clone()) else {
        anyhow::bail!(
            "the record in {} names no running daemon (it was written by detach, an older \
             version, or a daemon that has stopped)",
            state_file.display()
        );
    };
    // A bad config never reaches the daemon: the error is the operator's to read here.
    crate::policy::Policy::load(&config).context("the new config is refused")?;
    let before = state.reload.as_ref().map_or(0, |r| r.attempt);
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGHUP)
        .with_context(|| format!("signalling the daemon (PID {pid}) to reload"))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = State::read(&state_file)?;
        if let Some(record) = now.and_then(|s| s.reload).filter(|r| r.attempt > before) {
            if record.ok {
                return Ok(format!("reloaded {}: {}", config.display(), record.message));
            }
            anyhow::bail!(
                "the daemon refused {}: {}",
                config.display(),
                record.message
            );
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the daemon (PID {pid}) did not report a reload within {} s",
                timeout.as_secs()
            );
        }
    }
}
