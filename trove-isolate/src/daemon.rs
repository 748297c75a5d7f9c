//! `trove-isolate run`: enforce through [`reconcile::enforce`], then serve metrics, keep the
//! datapath's upkeep and apply reloads until told to stop. On exit nothing is detached.

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio::{net::TcpListener, sync::broadcast};
use trove_isolate_common::Role;

use ipnetwork::IpNetwork;

use crate::{
    boot_guard, conntrack,
    datapath::{self, Datapath, PinnedMaps},
    drops, linkwatch, local, pin_lock,
    pins::Pins,
    policy::{ConntrackPolicy, Policy, Source},
    reconcile::{self, enforce, reenforce, Devices, NicAddresses},
    serve::{self, Scrape},
    state::{MoveRecord, ReloadRecord, State},
};

/// One line saying what is enforced where: the daemon's readiness message.
pub fn summary(state: &State) -> String {
    let mut parts = Vec::new();
    for role in Role::ALL {
        if state.absent.contains(&role) {
            parts.push(format!(
                "{} NOT FOUND (its pinned programs stay where they were)",
                role.name()
            ));
        } else if let Some(a) = state.attached(role).next() {
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
    /// Live flows per table and family at the last sweep.
    pub conntrack: Vec<conntrack::Live>,
    /// Drop events read from the datapath.
    pub drop_events: u64,
    /// Drop events read but not logged (over `[drops] log_per_second`).
    pub drop_events_not_logged: u64,
    /// Drop events the datapath did not send (over its budget, or the ring was full); read from
    /// the pinned budget map at each scrape.
    pub drop_events_unsent: u64,
    /// Re-attachments after a NIC moved, per role and interface (its name where it is now: both
    /// NICs may be called eth0, one in the container), and those that began with the NIC
    /// already up.
    pub reattach: Vec<(Role, String, u64)>,
    pub reattach_after_up: Vec<(Role, String, u64)>,
    /// Per role: its NIC is configured but not found, or not enforced where it is.
    pub unprotected: [bool; Role::COUNT],
    /// Host names of the policy that did not resolve at the last lookup.
    pub unresolved_names: usize,
    /// The flow tables' sizes in force (the defaults until the daemon says otherwise).
    pub conntrack_capacity: Option<ConntrackPolicy>,
    /// What the boot guard passed and dropped before this daemon took over (read once: the
    /// guard is gone by then).
    pub boot_guard: Vec<boot_guard::GuardCount>,
    /// When this daemon started, in seconds since the epoch: its counters count from then.
    pub started: f64,
}

impl DaemonStats {
    fn count_reattach(&mut self, role: Role, interface: &str, after_up: bool) {
        let bump = |list: &mut Vec<(Role, String, u64)>| match list
            .iter_mut()
            .find(|(r, i, _)| *r == role && i == interface)
        {
            Some((_, _, n)) => *n += 1,
            None => list.push((role, interface.to_owned(), 1)),
        };
        bump(&mut self.reattach);
        if after_up {
            bump(&mut self.reattach_after_up);
        }
    }
}

/// Enforces `policy` (compiled from `source`) and serves metrics until `shutdown` completes;
/// `reload` yields once per reload request (SIGHUP). Enforcement stays after.
pub async fn run(
    mut source: Source,
    policy: Policy,
    options: RunOptions,
    mut reload: impl Stream,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = unix_ms() as f64 / 1000.0;
    // Bind first: a port in use is a reason not to touch the kernel at all.
    let listener = TcpListener::bind(policy.metrics.listen)
        .await
        .with_context(|| format!("[metrics] listen {}", policy.metrics.listen))?;
    let pins = Pins::new(&policy.pin_path);
    // One daemon per pin path (`pin_lock`), before the kernel is touched.
    let _held = pin_lock::try_take(&pins)?.map_err(|pid| {
        anyhow::anyhow!(
            "another trove-isolate daemon{} enforces under {}: two would undo each other's \
             policy; stop it first, or give this one its own pin_path",
            pin_lock::named(pid),
            pins.root().display()
        )
    })?;
    // Listen before enforcing: a NIC that moves while we attach is heard, and followed.
    let mut changes = linkwatch::watch().context("watching the NICs (netlink)")?;
    let (datapath, mut state, devices) = enforce(&policy, options.datapath_log)?;
    state.pid = Some(std::process::id());
    state.config = Some(options.config.clone());
    state.write(&pins.state_file())?;
    // The boot guard held the NICs while no start could enforce (Trove's files missing, say);
    // the roles' programs hold them now, ahead of it.
    let boot_netns = source.boot_netns();
    // One that will not go stays, chained after the policy (fail closed), and is tried again at
    // each sweep. (A NIC not found is on none of the devices it is released from: the start
    // found no device with its MAC.)
    let released = boot_guard::release(&pins, boot_netns).unwrap_or_else(|e| {
        log::error!("releasing the boot guard: {e:#} (tried again every 10 s)");
        Vec::new()
    });
    let guard_released = !released.is_empty();
    let (held, unheld): (Vec<_>, Vec<_>) = released.into_iter().partition(|nic| {
        state
            .attachments
            .iter()
            .any(|a| nic.is(a.ifindex, a.netns.as_deref()))
    });
    if !held.is_empty() {
        log::info!(
            "boot guard released from {}: the policy holds them",
            boot_guard::labels(&held).join(", ")
        );
    }
    if !unheld.is_empty() {
        log::warn!(
            "boot guard released from {}, which no role of the policy holds: unfiltered from now",
            boot_guard::labels(&unheld).join(", ")
        );
    }
    let status = summary(&state);
    // Until the first look finds them (the reconcile logged why).
    let unprotected = Role::ALL.map(|role| state.absent.contains(&role));

    source.compact();
    let mut world = Enforcing {
        source,
        policy,
        policy_map_exact: true,
        datapath,
        devices,
        pins,
        addresses: None,
    };
    if options.datapath_log {
        let logger = world.datapath.take_logger()?;
        tokio::spawn(forward_datapath_log(logger));
    }
    let scrape = Arc::new(Scrape {
        maps: PinnedMaps::open(&world.pins)?,
        state: RwLock::new(state),
        stats: Mutex::new(DaemonStats {
            unresolved_names: world.policy.unresolved_count(),
            unprotected,
            conntrack_capacity: Some(world.policy.conntrack),
            started,
            boot_guard: boot_guard::counts(&world.pins).unwrap_or_else(|e| {
                log::warn!("reading the boot guard's counters: {e:#}");
                Vec::new()
            }),
            ..DaemonStats::default()
        }),
        drop_log_per_second: AtomicU32::new(world.policy.drops.log_per_second),
    });
    let (feed, _) = broadcast::channel(DROP_FEED_DEPTH);
    let events = drops::follow(
        datapath::open_drop_events(&world.pins)?,
        scrape.clone(),
        feed.clone(),
    );
    let socket = world.pins.drops_socket();
    let subscribers = drops::serve_subscribers(drops::bind_subscribers(&socket)?, feed);
    let serving = serve::serve(listener, scrape.clone());
    // READY once `drops` clients find their socket (see `drops::bind_subscribers`).
    println!(
        "{status}; metrics on http://{}/metrics",
        world.policy.metrics.listen
    );
    log::info!("{status}");
    log_warnings(&world.policy);
    give_back_freed_memory();
    notify(&[NotifyState::Status(&status), NotifyState::Ready]);
    let mut address_tick = tokio::time::interval(ADDRESS_REFRESH);
    address_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep_tick = tokio::time::interval(SWEEP_PERIOD);
    sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // From the loop itself: a loop that stops turning stops the pings, and systemd restarts the
    // daemon (enforcement stays pinned meanwhile).
    let mut watchdog_tick = watchdog().map(|every| tokio::time::interval(every / 2));
    let mut refresh_at = next_refresh(&world.policy);
    if guard_released && world.policy.unresolved_count() > 0 {
        // Compiled under the guard, its names not looked up: now.
        refresh_at = Some(tokio::time::Instant::now());
    }
    // Host names looked up again for the config in force, and the reload it was started under:
    // a reload that lands meanwhile makes it stale.
    let mut lookup: Option<(tokio::task::JoinHandle<Result<Policy, String>>, u64)> = None;
    // A reload's config read and compiled (its names looked up), and when it was asked for.
    let mut reloading: Option<(tokio::task::JoinHandle<anyhow::Result<Loaded>>, Instant)> = None;
    let mut reloads_applied: u64 = 0;
    tokio::pin!(serving, shutdown, events, subscribers);
    loop {
        tokio::select! {
            result = &mut serving => return result,
            result = &mut events => return result,
            result = &mut subscribers => return result,
            changed = changes.next() => {
                let (link, _address) = changed?;
                if link {
                    world.follow(&scrape);
                }
                world.refresh_addresses()?;
            }
            _ = address_tick.tick() => {
                // Events can be missed (a namespace without an id here, a filter deleted by
                // hand): look again every tick.
                world.follow(&scrape);
                world.refresh_addresses()?;
                // Measured over the first seconds (250 jiffies), then checked at each sweep.
                if !world.datapath.clock_settled() {
                    world.datapath.tend_clock();
                }
            }
            _ = sweep_tick.tick() => {
                world.sweep(&scrape.stats)?;
                world.release_boot_guard();
            }
            _ = async { watchdog_tick.as_mut().expect("guarded").tick().await }, if watchdog_tick.is_some() => {
                notify(&[NotifyState::Watchdog]);
            }
            () = sleep_until(refresh_at), if refresh_at.is_some() && lookup.is_none() => {
                // Lookups block (seconds, for a resolver that does not answer): off the loop,
                // so NIC moves, scrapes and drop events never wait for DNS. The config in
                // force, not the file: an edit takes effect at a reload, never at a refresh.
                let source = world.source.clone();
                let path = options.config.clone();
                lookup = Some((
                    tokio::task::spawn_blocking(move || {
                        Policy::from_source(&source, &path).map_err(|e| e.to_string())
                    }),
                    reloads_applied,
                ));
                refresh_at = None;
            }
            fresh = async { (&mut lookup.as_mut().expect("guarded").0).await }, if lookup.is_some() => {
                let (_, under) = lookup.take().expect("guarded");
                if under != reloads_applied {
                    // The reload looked every name up itself, for its own config.
                    drop(fresh);
                    give_back_freed_memory();
                    refresh_at = next_refresh(&world.policy);
                    continue;
                }
                let fresh = fresh.unwrap_or_else(|e| Err(format!("the lookup task: {e}")));
                if world.apply_names(fresh) {
                    // What the maps hold now, for the metrics and `status`.
                    let counts = world.policy.entry_counts();
                    let mut state = scrape.state.write().unwrap_or_else(|e| e.into_inner());
                    state.policy_entries = counts.roles;
                    state.names = crate::state::NameAddresses::of(&world.policy);
                    if let Err(e) = state.write(&world.pins.state_file()) {
                        log::warn!("recording the host names' new addresses: {e:#}");
                    }
                }
                refresh_at = next_refresh(&world.policy);
                scrape.stats.lock().unwrap_or_else(|e| e.into_inner()).unresolved_names =
                    world.policy.unresolved_count();
                // A refresh compiles the whole config again (100,000 prefixes: 19 -> 33 MiB
                // until given back, BENCHMARKS.md section 4).
                give_back_freed_memory();
            }
            () = reload.next() => {
                // A request while one loads starts over: the file may have changed since that
                // one read it, and whoever asked must get what it holds now. (The one loading
                // finishes off the loop, unheard.)
                reloading = Some(start_reload(&options));
            }
            loaded = async { (&mut reloading.as_mut().expect("guarded").0).await }, if reloading.is_some() => {
                let (_, asked) = reloading.take().expect("guarded");
                // A request that came as this one finished (`select!` picks among ready
                // branches at random) wants the file as it is now.
                if ready_now(reload.next()) {
                    reloading = Some(start_reload(&options));
                    continue;
                }
                let loaded = loaded.unwrap_or_else(|e| Err(anyhow::anyhow!("the reload task: {e}")));
                let reloaded = reload_policy(
                    &options,
                    loaded,
                    asked,
                    &world.policy,
                    &mut world.datapath,
                    &scrape,
                );
                // Whatever a failed reload wrote before it failed, the next one checks the map.
                world.policy_map_exact = reloaded.is_ok();
                match reloaded {
                    Ok((new_source, new_policy, new_datapath, new_devices)) => {
                        reloads_applied += 1;
                        scrape
                            .drop_log_per_second
                            .store(new_policy.drops.log_per_second, Ordering::Relaxed);
                        world.source = new_source;
                        world.policy = new_policy;
                        if let Some(loaded) = new_datapath {
                            world.datapath = loaded;
                        }
                        world.devices = new_devices;
                        world.addresses = None;
                        world.refresh_addresses()?;
                        refresh_at = next_refresh(&world.policy);
                        let mut stats = scrape.stats.lock().unwrap_or_else(|e| e.into_inner());
                        stats.unresolved_names = world.policy.unresolved_count();
                        stats.conntrack_capacity = Some(world.policy.conntrack);
                    }
                    Err(e) if e.downcast_ref::<reconcile::PartlyApplied>().is_some() => {
                        return Err(e.context("the reload failed part-way"));
                    }
                    Err(e) if e.downcast_ref::<reconcile::WroteMaps>().is_some() => {
                        match world.restore() {
                            Ok(()) => log::error!(
                                "reload refused, the policy in force is written back: {e:#}"
                            ),
                            Err(r) => log::error!(
                                "reload refused, and writing the policy in force back failed \
                                 ({r:#}): the kernel may hold part of the refused policy until \
                                 a reload succeeds: {e:#}"
                            ),
                        }
                    }
                    Err(e) => log::error!("reload refused, the policy in force stays: {e:#}"),
                }
                // Once the policy it replaced is gone: a reload of every prefix frees as much
                // as the policy in force takes.
                give_back_freed_memory();
                let status = summary(&scrape.state.read().unwrap_or_else(|e| e.into_inner()));
                notify(&[NotifyState::Status(&status), NotifyState::Ready]);
            }
            () = &mut shutdown => break,
        }
    }
    notify(&[NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    log::info!(
        "stopping; enforcement stays in force (pinned under {})",
        world.policy.pin_path.display()
    );
    // The datapath drops here: programs stay referenced by their links and filters, on the
    // coarse clock's helper (`Datapath::drop`).
    drop(world);
    Ok(())
}

/// What the daemon's loop works on between events.
struct Enforcing {
    /// What `policy` was compiled from: what a name refresh compiles again.
    source: Source,
    policy: Policy,
    /// The policy map holds exactly `policy`'s entries: a reload writes only the difference.
    /// False after a write that failed part-way, until a reload has read the map back.
    policy_map_exact: bool,
    datapath: Datapath,
    devices: Devices,
    pins: Pins,
    /// The NICs' addresses as last written to the local-address map.
    addresses: Option<NicAddresses>,
}

impl Enforcing {
    /// Follows NICs that moved (docker-hostnic), records and counts it.
    fn follow(&mut self, scrape: &Scrape) {
        let mut state = scrape.state.write().unwrap_or_else(|e| e.into_inner());
        let followed = reconcile::follow(
            &self.policy,
            &mut self.datapath,
            &self.pins,
            &mut self.devices,
            &mut state,
        );
        // After attaching, not before (that is the race): a sandbox made since the last look
        // gets an id, so its events are heard from now on.
        linkwatch::give_ids();
        let mut stats = scrape.stats.lock().unwrap_or_else(|e| e.into_inner());
        for moved in &followed.moved {
            let how = if moved.reattached {
                "re-attached"
            } else {
                "its TCX links followed it"
            };
            let late = if moved.late {
                " (it was up or receiving before the programs held: packets may have reached it \
                 unjudged)"
            } else {
                ""
            };
            match &moved.from {
                Some(from) => log::info!(
                    "{} NIC moved from {from} to {}: {how} in {:.1} ms{late}",
                    moved.role,
                    moved.to,
                    moved.took.as_secs_f64() * 1e3
                ),
                None => log::info!(
                    "{} NIC found at {}: {how} in {:.1} ms{late}",
                    moved.role,
                    moved.to,
                    moved.took.as_secs_f64() * 1e3
                ),
            }
            if moved.reattached {
                stats.count_reattach(moved.role, &moved.to.name, moved.late);
            }
            state.moves.retain(|m| m.role != moved.role);
            state.moves.push(MoveRecord {
                role: moved.role,
                from: moved
                    .from
                    .as_ref()
                    .map_or_else(|| "not found".to_string(), ToString::to_string),
                to: moved.to.to_string(),
                at_unix_ms: unix_ms(),
                reattach_ms: moved.took.as_secs_f64() * 1e3,
                reattached: moved.reattached,
                after_up: moved.late,
            });
        }
        for (role, device) in &followed.restored {
            log::warn!(
                "{role} NIC {device} had lost our programs (it left and came back, or they were \
                 removed): attached again"
            );
            stats.count_reattach(*role, &device.name, true);
        }
        for role in Role::ALL {
            let now = followed.unprotected.iter().find(|(r, _)| *r == role);
            let was = stats.unprotected[role as usize];
            match now {
                Some((_, why)) if !was => {
                    log::error!("{role} NIC is not protected: {why}");
                }
                None if was => log::info!("{role} NIC is protected again"),
                _ => {}
            }
            stats.unprotected[role as usize] = now.is_some();
        }
        if !followed.moved.is_empty() || followed.renamed || !followed.restored.is_empty() {
            if let Err(e) = state.write(&self.pins.state_file()) {
                log::warn!("recording the move: {e:#}");
            }
        }
    }

    /// Applies the host names' new lookups (`fresh`: the config compiled again, off the loop):
    /// the new addresses are written before the old are removed (no allowed flow to an address
    /// still in the answer loses a packet), and flows to addresses gone from the answers are
    /// revoked. A name that failed keeps its addresses until the next try. Whether the policy
    /// map changed.
    fn apply_names(&mut self, fresh: Result<Policy, String>) -> bool {
        let fresh = match fresh {
            Ok(p) => p,
            Err(e) => {
                log::warn!(
                    "looking the policy's host names up again: {e}; the addresses in force stay"
                );
                return false;
            }
        };
        for u in &fresh.unresolved {
            log::warn!("{u}; its addresses in force stay");
        }
        let next = self.policy.with_names_from(&fresh);
        // Values too: a name's address in a prefix written as hosts changes only the rule
        // an entry names (`explain`).
        let content = |p: &Policy| -> foldhash::HashSet<_> {
            p.entries()
                .into_iter()
                .map(|(k, v)| (k, v.rule_id))
                .collect()
        };
        if self.policy_map_exact && content(&next) == content(&self.policy) {
            self.policy = next;
            return false;
        }
        let applied = self
            .datapath
            .sync_policy(&next)
            .and_then(|()| conntrack::revoke(&mut self.datapath, &next));
        self.policy_map_exact = applied.is_ok();
        match applied {
            Ok(revoked) => {
                let names: Vec<String> = next
                    .names
                    .iter()
                    .map(|n| {
                        let a: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
                        format!("{} = {}", n.host, a.join(", "))
                    })
                    .collect();
                log::info!(
                    "host names resolve differently now: {}; {revoked} flows to addresses no \
                     longer in the answers revoked",
                    names.join("; ")
                );
                self.policy = next;
                true
            }
            Err(e) => {
                log::error!("applying the new addresses of host names: {e:#}");
                false
            }
        }
    }

    /// After a reload that failed once it had begun writing: writes the policy in force back (its
    /// rules, read back from the map; its settings) and the NICs' addresses as they are now, so
    /// that the kernel does what the log says stays in force. Flows the failed policy revoked
    /// stay revoked.
    fn restore(&mut self) -> anyhow::Result<()> {
        // Each part whatever became of the others: the mode (an audit mode the refused policy
        // set would pass everything) most of all.
        let settings = reconcile::write_settings(&mut self.datapath, &self.policy);
        let rules = self.datapath.sync_policy(&self.policy);
        self.policy_map_exact = rules.is_ok();
        self.addresses = None;
        let addresses = self.refresh_addresses();
        settings.and(rules).and(addresses)
    }

    /// Keeps the local-address map in step with the NICs' addresses.
    fn refresh_addresses(&mut self) -> anyhow::Result<()> {
        // Each NIC on its own: one that cannot be read (gone, mid-move) keeps its last
        // addresses, and does not hold the other's back.
        let mut nets: NicAddresses = Vec::new();
        for (role, device) in &self.devices {
            match local::addresses(device) {
                Ok(now) => nets.push((*role, now)),
                Err(e) => {
                    let last = self
                        .addresses
                        .as_ref()
                        .and_then(|a| a.iter().find(|(r, _)| r == role))
                        .map(|(_, n)| n.clone())
                        .unwrap_or_default();
                    log::debug!("reading the {role} NIC's addresses: {e:#}; keeping the last");
                    nets.push((*role, last));
                }
            }
        }
        if self.addresses.as_ref() != Some(&nets) {
            let mut entries: Vec<_> = nets
                .iter()
                .flat_map(|(role, n)| local::entries(*role, n))
                .collect();
            // A NIC not found since the start keeps what the map has for it.
            entries.extend(self.datapath.local_entries_of(&self.missing())?);
            self.datapath.sync_local(&entries)?;
            if self.addresses.is_some() {
                log::info!("NIC addresses changed: {}", describe(&nets));
            }
            self.addresses = Some(nets);
        }
        Ok(())
    }

    /// Roles of the policy whose NIC no reconcile or look has found yet.
    fn missing(&self) -> Vec<Role> {
        self.policy
            .nics
            .iter()
            .map(|n| n.role)
            .filter(|role| !self.devices.iter().any(|(r, _)| r == role))
            .collect()
    }

    /// Takes off a boot guard that would not go at the start (its record is still there).
    fn release_boot_guard(&self) {
        if !self.pins.guard_record().exists() {
            return;
        }
        match boot_guard::release(&self.pins, self.source.boot_netns()) {
            Ok(released) => log::info!(
                "boot guard released from {}",
                boot_guard::labels(&released).join(", ")
            ),
            Err(e) => log::error!("releasing the boot guard: {e:#} (tried again every 10 s)"),
        }
    }

    /// Tends the programs' clock, removes expired established flows and records the tables'
    /// occupancy.
    fn sweep(&mut self, stats: &Mutex<DaemonStats>) -> anyhow::Result<()> {
        self.datapath.tend_clock();
        let occupancy = conntrack::sweep(&mut self.datapath)?;
        stats.lock().unwrap_or_else(|e| e.into_inner()).conntrack = occupancy.live.clone();
        if occupancy.expired_removed > 0 {
            log::debug!("swept {} expired flows", occupancy.expired_removed);
        }
        Ok(())
    }
}

/// When to look the policy's host names up again, if it names any.
fn next_refresh(policy: &Policy) -> Option<tokio::time::Instant> {
    policy.refresh_in().map(|d| tokio::time::Instant::now() + d)
}

/// systemd's watchdog interval for this process (`WatchdogSec=`: WATCHDOG_USEC, and
/// WATCHDOG_PID when set), if it asks for pings.
fn watchdog() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Whether `future` is ready at once (polled once, never waited for).
fn ready_now(future: impl Future) -> bool {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    future.as_mut().poll(&mut cx).is_ready()
}

/// Sleeps until `at` (never, for `None`: the branch is disabled then anyway).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Something that yields once per event (a signal stream).
pub trait Stream {
    fn next(&mut self) -> impl Future<Output = ()>;
}

/// A reload's config, and the policy compiled from it.
type Loaded = (Source, Policy);

/// Starts a reload: tells systemd, then reads and compiles the config off the loop (its host
/// names are looked up: seconds, for a resolver that does not answer), so that the NICs are
/// followed meanwhile. [`reload_policy`] applies it.
fn start_reload(
    options: &RunOptions,
) -> (tokio::task::JoinHandle<anyhow::Result<Loaded>>, Instant) {
    notify(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading")),
    ]);
    let path = options.config.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut source = Source::load(&path)?;
        let policy = Policy::from_source(&source, &path)?;
        source.compact();
        Ok((source, policy))
    });
    (task, Instant::now())
}

/// What `check` warns of, in the log too: a policy open to any address, a name that does not
/// resolve yet, an image no rule reaches. A reload runs no `check`.
fn log_warnings(policy: &Policy) {
    for warning in policy.warnings() {
        log::warn!("{warning}");
    }
}

/// Applies a reload's config if it is good, through the same reconcile step as the start (new
/// programs replace the old in place; maps, links and flows carry over; flows the new policy
/// refuses are revoked). A bad config changes nothing. Counted either way, and recorded in the
/// state file for `trove-isolate reload`.
fn reload_policy(
    options: &RunOptions,
    loaded: anyhow::Result<Loaded>,
    started: Instant,
    current: &Policy,
    datapath: &mut Datapath,
    scrape: &Scrape,
) -> anyhow::Result<(Source, Policy, Option<Datapath>, Devices)> {
    let attempt = {
        let stats = scrape.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.reloads_ok + stats.reloads_error + 1
    };
    let result = (|| {
        let (source, policy) = loaded?;
        // A name the policy in force reaches that does not resolve now (DNS down for a moment)
        // would lose its addresses, and its flows: the policy in force stays instead. (A name
        // new to the config fails closed until it resolves, as at a start.)
        if let Some(name) = policy
            .unresolved_hosts
            .iter()
            .find(|h| current.names.iter().any(|n| &n.host == *h))
        {
            anyhow::bail!(
                "{}: {name} does not resolve now, and the policy in force reaches it: reload \
                 again once DNS answers",
                options.config.display()
            );
        }
        if policy.pin_path != current.pin_path {
            anyhow::bail!(
                "{}: pin_path: changes only with a restart (in force: {})",
                options.config.display(),
                current.pin_path.display()
            );
        }
        // The listener is bound once, at the start; a reload that took the new port would move
        // `allow_from`'s rule away from the port still served, and scrapes would be dropped.
        if policy.metrics.listen != current.metrics.listen {
            anyhow::bail!(
                "{}: [metrics] listen: changes only with a restart (in force: {})",
                options.config.display(),
                current.metrics.listen
            );
        }
        let (loaded, mut state, devices) = reenforce(&policy, options.datapath_log, datapath)?;
        state.pid = Some(std::process::id());
        state.config = Some(options.config.clone());
        Ok((source, policy, loaded, state, devices))
    })();
    let pins = Pins::new(&current.pin_path);
    let mut stats = scrape.stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut state = scrape.state.write().unwrap_or_else(|e| e.into_inner());
    let outcome = match result {
        Ok((source, policy, loaded, mut new_state, devices)) => {
            stats.reloads_ok += 1;
            new_state.moves = std::mem::take(&mut state.moves);
            *state = new_state;
            // Programs are loaded (and verified) again only when a map must be resized.
            let programs = match loaded {
                Some(_) => "programs loaded anew",
                None => "programs kept",
            };
            log::info!(
                "reloaded {} in {} ms ({programs}): {}",
                options.config.display(),
                started.elapsed().as_millis(),
                summary(&state)
            );
            log_warnings(&policy);
            Ok((source, policy, loaded, devices))
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
    // READY=1 comes from the caller, once the new policy has replaced the old.
    outcome
}

/// Keeps malloc from moving big allocations onto the heap for good. glibc raises its mmap
/// threshold each time an mmapped block is freed (up to 32 MiB); after the first reload, a big
/// policy's vectors would live on the heap among small allocations that pin its pages, and the
/// daemon's RSS would grow with every reload. A fixed threshold keeps them mmapped: freed,
/// they go back to the kernel whole.
pub fn fixed_malloc_thresholds() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Returns the heap a start, a reload or a name refresh freed to the kernel. Parsing and
/// compiling a big config (100,000 prefixes) takes tens of MiB for a moment; malloc keeps freed
/// pages for reuse, and the daemon's RSS would stay at that peak for its whole life.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; it has no preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Tells systemd (when it started us with Type=notify); nothing otherwise.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        log::warn!("notifying the service manager: {e}");
    }
}

/// How often the NICs' addresses are read again besides on address events (a new address takes
/// new flows once read; nothing is ever allowed early).
const ADDRESS_REFRESH: Duration = Duration::from_secs(1);
/// How often expired established flows are swept.
const SWEEP_PERIOD: Duration = Duration::from_secs(10);

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
