//! `trove-isolate run`: enforce through [`reconcile::enforce`], then serve metrics, keep the
//! datapath's upkeep and apply reloads until told to stop. On exit nothing is detached.

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio::{net::TcpListener, sync::broadcast};
use trove_isolate_common::Role;

use ipnetwork::IpNetwork;

use crate::{
    conntrack,
    datapath::{self, Datapath, PinnedMaps, Table},
    drops,
    pins::Pins,
    policy::Policy,
    reconcile::{enforce, local_entries, Devices},
    serve::{self, Scrape},
    state::{ReloadRecord, State},
};

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

/// Drop events a slow `drops` client may fall behind by before it is told it missed some.
const DROP_FEED_DEPTH: usize = 1024;

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
    /// Drop events read from the datapath.
    pub drop_events: u64,
    /// Drop events read but not logged (over `[drops] log_per_second`).
    pub drop_events_not_logged: u64,
    /// Drop events the datapath did not send (over its budget, or the ring was full); read from
    /// the pinned budget map at each scrape.
    pub drop_events_unsent: u64,
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
        drop_log_per_second: AtomicU32::new(policy.drops.log_per_second),
    });
    let (feed, _) = broadcast::channel(DROP_FEED_DEPTH);
    let events = drops::follow(
        datapath::open_drop_events(&pins)?,
        scrape.clone(),
        feed.clone(),
    );
    let socket = pins.drops_socket();
    let subscribers = drops::serve_subscribers(&socket, feed);
    let mut policy = policy;
    let serving = serve::serve(listener, scrape.clone());
    tokio::pin!(serving, shutdown, events, subscribers);
    loop {
        tokio::select! {
            result = &mut serving => return result,
            result = &mut events => return result,
            result = &mut subscribers => return result,
            result = upkeep(&mut datapath, &devices, &scrape.stats) => result?,
            () = reload.next() => {
                match reload_policy(&options, &policy, &scrape) {
                    Ok((new_policy, new_datapath, new_devices)) => {
                        scrape
                            .drop_log_per_second
                            .store(new_policy.drops.log_per_second, Ordering::Relaxed);
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
    let _ = std::fs::remove_file(&socket);
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
