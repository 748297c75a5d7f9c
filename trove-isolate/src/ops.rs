//! `detach` and `reload`: working on what a daemon left pinned, with or without it running.

use std::{
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use trove_isolate_common::{Direction, Role};

use crate::{
    attach, inspect, nic,
    pins::Pins,
    policy::Policy,
    state::{Attachment, Hook, State},
};

/// Removes all enforcement and every pin under `pins`. Returns what was removed, one per line.
///
/// Refused while the daemon that enforces there runs (unless `force`): it would attach its
/// programs again at its next look, within a second, and the operator would have been told
/// they were gone.
pub fn detach(pins: &Pins, force: bool) -> anyhow::Result<String> {
    // The daemon's lock, held while we work: a daemon starting now has not yet written its PID
    // to the record. Best effort: with /run unwritable, detach still works.
    let _held = match crate::pin_lock::try_take(pins) {
        Ok(Ok(held)) => Some(held),
        Ok(Err(pid)) if !force => anyhow::bail!(
            "the daemon enforcing under {}{} is running (it holds the pin path's lock), and \
             would attach its programs again within a second: stop it first (systemctl stop \
             trove-isolate), then detach; --force detaches under it anyway",
            pins.root().display(),
            crate::pin_lock::named(pid)
        ),
        Ok(Err(_)) => None,
        Err(e) => {
            log::warn!("detaching without the pin path's lock: {e:#}");
            None
        }
    };
    let mut out = String::new();
    let state_file = pins.state_file();
    if let Some(mut state) = State::read(&state_file)? {
        if let Some(pid) = running_daemon(&state).filter(|_| !force) {
            anyhow::bail!(
                "the daemon enforcing under {} (PID {pid}) is running, and would attach its \
                 programs again within a second: stop it first (systemctl stop trove-isolate), \
                 then detach; --force detaches under it anyway",
                pins.root().display()
            );
        }
        // Our filters where each NIC is now, if the record missed them (the NIC moved and the
        // daemon re-attached there, then died before recording it).
        let strays = unrecorded_filters(&state);
        if !strays.is_empty() {
            state.attachments.extend(strays);
            state.write(&state_file)?;
        }
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
    // The boot guard, before its links go with the others below.
    let guarded = crate::boot_guard::release(pins, None).context("releasing the boot guard")?;
    if !guarded.is_empty() {
        writeln!(
            out,
            "released the boot guard from {}",
            crate::boot_guard::labels(&guarded).join(", ")
        )?;
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
    // The drops socket of a daemon that was killed (no daemon runs: this holds the lock).
    let _ = fs::remove_file(pins.drops_socket());
    if out.is_empty() {
        writeln!(out, "nothing to detach under {}", pins.root().display())?;
    }
    Ok(out)
}

/// Our clsact filters on each configured NIC where it is now that the record does not list.
fn unrecorded_filters(state: &State) -> Vec<Attachment> {
    let Some(policy) = state
        .config
        .as_ref()
        .and_then(|c| Policy::load_offline(c).ok())
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for role in Role::ALL {
        let last = state.attached(role).next().map(|a| nic::Place {
            ifindex: a.ifindex,
            netns: a.netns.clone(),
        });
        let Some(device) = policy
            .nic(role)
            .and_then(|n| nic::resolve(&n.nic, last.as_ref()).ok())
        else {
            continue;
        };
        let Ok(hooks) = inspect::hooks(&device, role) else {
            continue;
        };
        for direction in Direction::ALL {
            let ours = hooks
                .iter()
                .any(|h| h.direction == direction && h.ours && h.kind == "legacy");
            let recorded = state.attachments.iter().any(|a| {
                a.role == role
                    && a.direction == direction
                    && a.ifindex == device.ifindex
                    && a.netns == device.netns
                    && matches!(a.hook, Hook::Legacy { .. })
            });
            if ours && !recorded {
                found.push(Attachment {
                    role,
                    direction,
                    interface: device.name.clone(),
                    ifindex: device.ifindex,
                    netns: device.netns.clone(),
                    hook: attach::legacy_hook(),
                    mac: None,
                });
            }
        }
    }
    found
}

/// The daemon the record names, if it still runs: a live trove-isolate process (a PID the
/// kernel has given to another program since does not count).
pub fn running_daemon(state: &State) -> Option<u32> {
    let pid = state.pid?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim_end() == "trove-isolate").then_some(pid)
}

/// A running daemon whose record names `config` as its config file, if any: its PID and its
/// state file.
pub fn daemon_running(config: &Path) -> Option<(u32, PathBuf)> {
    let config = fs::canonicalize(config).ok()?;
    let entries = fs::read_dir(crate::pins::STATE_DIR).ok()?;
    entries.filter_map(Result::ok).find_map(|entry| {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            return None;
        }
        let state = State::read(&path).ok()??;
        let named = state
            .config
            .as_deref()
            .and_then(|c| fs::canonicalize(c).ok());
        let pid = running_daemon(&state)?;
        (named.as_deref() == Some(config.as_path())).then_some((pid, path))
    })
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
    let (Some(pid), Some(config)) = (running_daemon(&state), state.config.clone()) else {
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
