//! `trove-isolate run`: bring the kernel to the policy, then serve metrics until told to stop.
//!
//! [`enforce`] is the reconcile step: resolve every NIC first (nothing is touched if one is
//! missing), load the programs against the pinned maps, write the policy (add before remove),
//! ensure each attachment, retire what the new policy no longer covers, record the result. On
//! exit nothing is detached: links and maps are pinned, legacy filters stay on their qdiscs, and
//! the next start adopts them in place.

use std::{
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::{bail, Context as _};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use trove_isolate_common::{Direction, Role};

use ipnetwork::IpNetwork;

use crate::{
    attach, conntrack,
    datapath::{Datapath, PinnedMaps, Table},
    local, nic,
    pins::Pins,
    policy::Policy,
    serve::{self, Scrape},
    state::{Attachment, Hook, ReloadRecord, State},
};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Applies `policy` to the kernel; returns the loaded datapath and what is now attached.
pub fn enforce(policy: &Policy, log: bool) -> anyhow::Result<(Datapath, State, Devices)> {
    let pins = Pins::new(&policy.pin_path);
    check_bpffs(&pins)?;
    let mut devices = Vec::new();
    for nic_policy in &policy.nics {
        let device = nic::resolve(&nic_policy.nic)
            .with_context(|| format!("[{}] NIC {}", nic_policy.role.name(), nic_policy.nic))?;
        devices.push((nic_policy.role, device));
    }
    let previous = State::read(&pins.state_file())?;
    // A first start that fails leaves nothing behind; a later one leaves the policy in force.
    let first_start = previous.is_none() && !pins.root().exists();
    let previous = previous.unwrap_or_default();
    let mut attachments = Vec::new();
    let result = apply(policy, log, &pins, &devices, &previous, &mut attachments);
    if result.is_err() && first_start {
        for made in &attachments {
            let _ = attach::remove(made, &pins.link(made.role, made.direction));
        }
        let _ = std::fs::remove_dir_all(pins.root());
    }
    let datapath = result?;

    let state = State {
        mode: policy.mode,
        policy_entries: policy
            .nics
            .iter()
            .map(|n| (n.role, n.rules.len()))
            .collect(),
        attachments,
        ..State::default()
    };
    state.write(&pins.state_file())?;
    Ok((datapath, state, devices))
}

/// Each configured NIC as found at the last reconcile.
pub type Devices = Vec<(Role, nic::Device)>;

/// Loads, writes the maps, attaches (recording each attachment as it is made) and retires.
fn apply(
    policy: &Policy,
    log: bool,
    pins: &Pins,
    devices: &[(Role, nic::Device)],
    previous: &State,
    attachments: &mut Vec<Attachment>,
) -> anyhow::Result<Datapath> {
    let mut datapath = Datapath::load(Some(pins), log)?;
    datapath.sync_policy(&policy.entries())?;
    for role in Role::ALL {
        datapath.set_mode(role, policy.mode)?;
        datapath.set_dhcp(role, policy.nic(role).is_some_and(|n| n.dhcp))?;
    }
    // The NICs' addresses before any program judges a packet: a new flow must be the NIC's own.
    let (local, _) = local_entries(devices)?;
    datapath.sync_local(&local)?;
    let revoked = conntrack::revoke(&mut datapath, policy)?;
    if revoked > 0 {
        log::info!("revoked {revoked} tracked flows the policy no longer allows");
    }
    let tcx = attach::use_tcx(policy.attach);
    for (role, device) in devices {
        for direction in Direction::ALL {
            let before = find(&previous.attachments, *role, direction);
            let attachment = attach::ensure(
                datapath.program(*role, direction),
                *role,
                direction,
                device,
                tcx,
                &pins.link(*role, direction),
                before,
            )?;
            attachments.push(attachment);
        }
    }
    retire(pins, &previous.attachments, attachments)?;
    for stale in pins.stale_maps() {
        log::info!("removing map pin of an older layout: {}", stale.display());
        std::fs::remove_file(&stale)
            .with_context(|| format!("removing stale map pin {}", stale.display()))?;
    }
    Ok(datapath)
}

/// Each NIC's addresses with their prefix lengths.
pub type NicAddresses = Vec<(Role, Vec<IpNetwork>)>;

/// The local-address map's content for `devices`, and the addresses it came from.
pub fn local_entries(
    devices: &[(Role, nic::Device)],
) -> anyhow::Result<(Vec<LocalEntry>, NicAddresses)> {
    let mut entries = Vec::new();
    let mut seen = Vec::new();
    for (role, device) in devices {
        let nets = local::addresses(device)
            .with_context(|| format!("[{}] NIC {}", role.name(), device.name))?;
        entries.extend(local::entries(*role, &nets));
        seen.push((*role, nets));
    }
    Ok((entries, seen))
}

type LocalEntry = (
    aya::maps::lpm_trie::Key<trove_isolate_common::local::LocalKey>,
    trove_isolate_common::local::LocalValue,
);

fn find(attachments: &[Attachment], role: Role, direction: Direction) -> Option<&Attachment> {
    attachments
        .iter()
        .find(|a| a.role == role && a.direction == direction)
}

/// Detaches old attachments the new ones did not take over in place.
fn retire(pins: &Pins, old: &[Attachment], new: &[Attachment]) -> anyhow::Result<()> {
    for before in superseded(old, new) {
        attach::remove(before, &pins.link(before.role, before.direction)).with_context(|| {
            format!(
                "detaching the old {} {} program",
                before.role, before.direction
            )
        })?;
    }
    Ok(())
}

/// The old attachments still to remove once `new` holds: those whose (role, direction) is gone,
/// moved to another device or namespace, or changed hook kind. A TCX link needs no removal when
/// the new one is TCX too: its pin was updated in place or renamed over, which released it.
fn superseded<'a>(old: &'a [Attachment], new: &[Attachment]) -> Vec<&'a Attachment> {
    old.iter()
        .filter(|before| {
            let replaced_in_place = match find(new, before.role, before.direction) {
                Some(now) if before.hook == Hook::Tcx => now.hook == Hook::Tcx,
                Some(now) => {
                    now.hook == before.hook
                        && now.ifindex == before.ifindex
                        && now.netns == before.netns
                }
                None => false,
            };
            !replaced_in_place
        })
        .collect()
}

fn check_bpffs(pins: &Pins) -> anyhow::Result<()> {
    // The pin directory may not exist yet: check the nearest existing ancestor.
    let mut dir = pins.root();
    while !dir.exists() {
        dir = dir.parent().context("pin_path has no existing ancestor")?;
    }
    let fs = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        bail!(
            "pin_path {} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)",
            pins.root().display()
        );
    }
    Ok(())
}

/// One line saying what is enforced where: the daemon's readiness message.
pub fn summary(state: &State) -> String {
    let mut parts = Vec::new();
    for role in Role::ALL {
        if let Some(a) = state.attached(role).next() {
            let netns = a
                .netns
                .as_ref()
                .map(|p| format!(" in {}", p.display()))
                .unwrap_or_default();
            parts.push(format!(
                "{} on {}{} ({})",
                role.name(),
                a.interface,
                netns,
                a.hook.name()
            ));
        }
    }
    format!("enforcing ({}): {}", state.mode, parts.join(", "))
}

pub struct RunOptions {
    /// Forward the programs' debug records to the log.
    pub datapath_log: bool,
    /// The config file, read again on every reload.
    pub config: PathBuf,
}

/// What the daemon counts besides the datapath, for the metrics.
#[derive(Debug, Default, Clone)]
pub struct DaemonStats {
    pub reloads_ok: u64,
    pub reloads_error: u64,
    /// Live flows per (role, table) at the last sweep.
    pub conntrack: Vec<(Role, Table, usize)>,
}

/// Enforces `policy` and serves metrics until `shutdown` completes; `reload` yields once per
/// reload request (SIGHUP). Enforcement stays after.
pub async fn run(
    policy: Policy,
    options: RunOptions,
    mut reload: impl Stream,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Bind first: a port in use is a reason not to touch the kernel at all.
    let listener = TcpListener::bind(policy.metrics.listen)
        .await
        .with_context(|| format!("[metrics] listen {}", policy.metrics.listen))?;
    let pins = Pins::new(&policy.pin_path);
    let (mut datapath, mut state, mut devices) = enforce(&policy, options.datapath_log)?;
    state.pid = Some(std::process::id());
    state.config = Some(options.config.clone());
    state.write(&pins.state_file())?;
    println!(
        "{}; metrics on http://{}/metrics",
        summary(&state),
        policy.metrics.listen
    );
    log::info!("{}", summary(&state));
    notify(&[NotifyState::Status(&summary(&state)), NotifyState::Ready]);

    if options.datapath_log {
        let logger = datapath.take_logger()?;
        tokio::spawn(forward_datapath_log(logger));
    }
    let scrape = Arc::new(Scrape {
        maps: PinnedMaps::open(&pins)?,
        state: RwLock::new(state),
        stats: Mutex::new(DaemonStats::default()),
    });
    let mut policy = policy;
    let serving = serve::serve(listener, scrape.clone());
    tokio::pin!(serving, shutdown);
    loop {
        tokio::select! {
            result = &mut serving => return result,
            result = upkeep(&mut datapath, &devices, &scrape.stats) => result?,
            () = reload.next() => {
                match reload_policy(&options, &policy, &scrape) {
                    Ok((new_policy, new_datapath, new_devices)) => {
                        policy = new_policy;
                        datapath = new_datapath;
                        devices = new_devices;
                    }
                    Err(e) => log::error!("reload refused, the policy in force stays: {e:#}"),
                }
            }
            () = &mut shutdown => break,
        }
    }
    notify(&[NotifyState::Stopping]);
    log::info!(
        "stopping; enforcement stays in force (pinned under {})",
        policy.pin_path.display()
    );
    // `datapath` drops here: programs stay referenced by their links and filters.
    drop(datapath);
    Ok(())
}

/// Something that yields once per event (a signal stream).
pub trait Stream {
    fn next(&mut self) -> impl Future<Output = ()>;
}

/// Validates the config again and, if it is good, applies it through the same reconcile step
/// as the start (new programs replace the old in place; maps, links and flows carry over; flows
/// the new policy refuses are revoked). A bad config changes nothing. Counted either way, and
/// recorded in the state file for `trove-isolate reload`.
fn reload_policy(
    options: &RunOptions,
    current: &Policy,
    scrape: &Scrape,
) -> anyhow::Result<(Policy, Datapath, Devices)> {
    notify(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading")),
    ]);
    let attempt = {
        let stats = scrape.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.reloads_ok + stats.reloads_error + 1
    };
    let result = (|| {
        let policy = Policy::load(&options.config)?;
        if policy.pin_path != current.pin_path {
            anyhow::bail!(
                "{}: pin_path: changes only with a restart (in force: {})",
                options.config.display(),
                current.pin_path.display()
            );
        }
        if policy.metrics.listen != current.metrics.listen {
            log::warn!(
                "[metrics] listen {} takes effect at the next start; still serving on {}",
                policy.metrics.listen,
                current.metrics.listen
            );
        }
        let (datapath, mut state, devices) = enforce(&policy, options.datapath_log)?;
        state.pid = Some(std::process::id());
        state.config = Some(options.config.clone());
        Ok((policy, datapath, state, devices))
    })();
    let pins = Pins::new(&current.pin_path);
    let mut stats = scrape.stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut state = scrape.state.write().unwrap_or_else(|e| e.into_inner());
    let outcome = match result {
        Ok((policy, datapath, new_state, devices)) => {
            stats.reloads_ok += 1;
            *state = new_state;
            log::info!("reloaded {}: {}", options.config.display(), summary(&state));
            Ok((policy, datapath, devices))
        }
        Err(e) => {
            stats.reloads_error += 1;
            Err(e)
        }
    };
    state.reload = Some(ReloadRecord {
        attempt,
        ok: outcome.is_ok(),
        message: match &outcome {
            Ok(_) => summary(&state),
            Err(e) => format!("{e:#}"),
        },
    });
    if let Err(e) = state.write(&pins.state_file()) {
        log::warn!("recording the reload: {e:#}");
    }
    notify(&[NotifyState::Status(&summary(&state)), NotifyState::Ready]);
    outcome
}

/// Tells systemd (when it started us with Type=notify); nothing otherwise.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        log::warn!("notifying the service manager: {e}");
    }
}

/// How often the NICs' addresses are read again (a new address takes new flows this long after
/// it appears; nothing is ever allowed early).
const ADDRESS_REFRESH: Duration = Duration::from_secs(1);
/// How often expired established flows are swept.
const SWEEP_EVERY: u32 = 10;

/// The datapath's upkeep while the daemon runs: keeps the local-address map in step with the
/// NICs and sweeps expired flows. Returns only on error.
async fn upkeep(
    datapath: &mut Datapath,
    devices: &Devices,
    stats: &Mutex<DaemonStats>,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(ADDRESS_REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    let mut sweep_in = SWEEP_EVERY;
    loop {
        ticks.tick().await;
        match local_entries(devices) {
            Ok((entries, nets)) if last.as_ref() != Some(&nets) => {
                datapath.sync_local(&entries)?;
                if last.is_some() {
                    log::info!("NIC addresses changed: {}", describe(&nets));
                }
                last = Some(nets);
            }
            Ok(_) => {}
            // A NIC that went away keeps its last addresses until it is back (and found again
            // by the next start); it cannot take traffic meanwhile anyway.
            Err(e) => log::warn!("reading NIC addresses: {e:#}"),
        }
        sweep_in -= 1;
        if sweep_in == 0 {
            sweep_in = SWEEP_EVERY;
            let occupancy = conntrack::sweep(datapath)?;
            stats.lock().unwrap_or_else(|e| e.into_inner()).conntrack = occupancy.live.clone();
            if occupancy.expired_removed > 0 {
                log::debug!("swept {} expired flows", occupancy.expired_removed);
            }
        }
    }
}

fn describe(nets: &[(Role, Vec<IpNetwork>)]) -> String {
    nets.iter()
        .map(|(role, n)| {
            let list: Vec<String> = n.iter().map(ToString::to_string).collect();
            format!("{} [{}]", role.name(), list.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

async fn forward_datapath_log(logger: Logger) {
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: the AsyncFd owns the logger, so its ring buffer fd outlives the registration.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let Ok(mut fd) = registered.inspect_err(|e| log::warn!("datapath log unavailable: {e}")) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(
        role: &str,
        direction: &str,
        ifindex: u32,
        netns: Option<&str>,
        hook: Hook,
    ) -> Attachment {
        let named = |n: &str| format!("\"{n}\"");
        Attachment {
            role: serde_json::from_str(&named(role)).expect("a role"),
            direction: serde_json::from_str(&named(direction)).expect("a direction"),
            interface: "eth0".into(),
            ifindex,
            netns: netns.map(Into::into),
            hook,
        }
    }

    const LEGACY: Hook = Hook::Legacy {
        priority: 1,
        handle: 1,
    };

    fn names(v: Vec<&Attachment>) -> Vec<String> {
        v.into_iter()
            .map(|a| format!("{} {} {}", a.role, a.direction, a.hook.name()))
            .collect()
    }

    #[test]
    fn restart_on_the_same_devices_removes_nothing() {
        let old = [
            at("management", "ingress", 2, None, Hook::Tcx),
            at("business", "egress", 7, Some("/run/netns/db"), LEGACY),
        ];
        assert!(superseded(&old, &old).is_empty());
    }

    #[test]
    fn a_moved_nic_a_changed_hook_or_a_dropped_role_is_removed() {
        let old = [
            at("management", "ingress", 2, None, Hook::Tcx),
            at("management", "egress", 2, None, Hook::Tcx),
            at("business", "ingress", 7, Some("/run/netns/db"), LEGACY),
            at("business", "egress", 7, Some("/run/netns/db"), LEGACY),
        ];
        let new = [
            // TCX to TCX, even on another device: the pin was renamed over.
            at("management", "ingress", 3, None, Hook::Tcx),
            // TCX to legacy: the old link must go.
            at("management", "egress", 2, None, LEGACY),
            // Legacy, NIC moved to a new container namespace: the old filter must go.
            at("business", "ingress", 4, Some("/run/netns/db2"), LEGACY),
            // business egress: no longer configured.
        ];
        assert_eq!(
            names(superseded(&old, &new)),
            [
                "management egress tcx",
                "business ingress legacy",
                "business egress legacy"
            ]
        );
    }
}
