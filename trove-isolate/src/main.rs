//! The `trove-isolate` command: run the enforcing daemon, check a config, inspect or remove what
//! is enforced.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use trove_isolate::{
    boot_guard,
    config::{ConfigError, DEFAULT_CONFIG_PATH, DEFAULT_PIN_PATH},
    daemon, drops, explain, ops,
    pins::Pins,
    policy::{Policy, Source},
    status,
};

/// Per-interface network isolation for OpenStack Trove database guests.
///
/// trove-isolate attaches eBPF TC programs to the guest's two NICs. The management NIC may only
/// reach the configured RabbitMQ and registry endpoints (plus named extras) and accept SSH and
/// metrics scrapes from named sources; the business NIC carries only database traffic. Policy is
/// per interface, so identical CIDRs on the two networks stay apart. Replies of allowed flows pass
/// through connection tracking; everything else is dropped and counted with a reason.
///
/// Enforcement is pinned under the config's `pin_path` and outlives the process: stopping the
/// daemon keeps it in force, starting it again adopts it without a gap, and only `detach` removes
/// it.
#[derive(Parser)]
#[command(version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the policy of a config file and serve metrics, in the foreground.
    ///
    /// Validates the config, finds each NIC (by name or MAC, inside its `netns`), loads the
    /// programs against the pinned maps, writes the policy, attaches (TCX on Linux 6.6+, clsact
    /// otherwise, or as `attach` says) and pins. A bad config or a missing NIC exits non-zero,
    /// and a policy already pinned stays in force (the boot guard below may hold a NIC of it
    /// that lost its filters). Prometheus metrics are served at http://LISTEN/metrics.
    ///
    /// While it runs it follows the NICs (docker-hostnic moves the business NIC at every
    /// container start), looks host names up again as their TTLs run out, and keeps the NICs'
    /// addresses and the flow tables up to date. SIGHUP (`trove-isolate reload`) reads the config
    /// again and applies it, or refuses it and keeps the policy in force. On SIGTERM or SIGINT it
    /// exits and enforcement stays in force. Under systemd (NOTIFY_SOCKET) it reports READY=1
    /// once every NIC is enforced, RELOADING=1 and READY=1 around each reload, STOPPING=1, and
    /// pings the watchdog (WATCHDOG_USEC) from its loop.
    ///
    /// With `[trove]`, a start that cannot enforce while no policy is pinned (Trove's files not
    /// there yet at an instance's first boot, before cloud-init writes them; a config that parses
    /// but does not compile; a NIC not found) holds every NIC closed with the boot guard
    /// (`[boot]`: ARP, neighbour discovery, DHCP and the metadata service only) and exits
    /// non-zero; each such start finds a NIC it held by its MAC where docker-hostnic moved it,
    /// and the start that enforces takes the guard off. A config that does not parse holds
    /// nothing while no policy is pinned. Whatever the config, while a policy is pinned such a
    /// start keeps it, and holds only a NIC of it that lost its filters (moved while no daemon
    /// ran, before Linux 6.6; `[boot] guard = false` turns this off; a config that does not parse
    /// is judged at the default pin path).
    Run {
        /// The TOML config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Forward the datapath's per-drop debug records to the log (costs ~20 ns per dropped
        /// packet; see them with RUST_LOG=trove_isolate_ebpf=debug).
        #[arg(long)]
        datapath_log: bool,
    },
    /// Validate a config file and print the policy compiled for each interface.
    ///
    /// Exits non-zero with the file, the key and what is wrong when the config is bad. Warns on
    /// stderr (lines starting with `WARNING: `) where the policy is open to any address, a host
    /// name does not resolve, an image is on Docker Hub (or behind a CDN no rule reaches), Trove
    /// names no business NIC, or a configured NIC is not found now. Touches nothing in the
    /// kernel; it reads the Trove files, enters the NICs' network namespaces and sends DNS
    /// queries for the config's host names, as `run` does.
    Check {
        /// The TOML config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Check only what needs no guest: the file's syntax and keys, and the values of every
        /// key that needs no guest (mode, attach, pin_path, [metrics], [drops], [conntrack],
        /// [boot]; without [trove], every section's, host names not looked up). For an image
        /// build (`cargo xtask dist --config`), off the guest whose Trove files, NICs and
        /// names the full check reads; the unit's start runs the full check on the guest.
        #[arg(long)]
        offline: bool,
    },
    /// Show where each NIC is now, what the kernel has attached to it, and what differs from
    /// the record.
    ///
    /// Finds each NIC as the daemon does (by MAC in every network namespace: the host's,
    /// /run/netns/*, /var/run/docker/netns/*), asks the kernel what is on its hooks there (TCX
    /// programs, clsact filters) and compares with the state record: a NIC that moved, was
    /// renamed, or lacks our programs is spelled out, as is a daemon that is not running. Then
    /// the mode, the policy size, the last move the daemon followed and the verdict counters.
    ///
    /// Exits 0 when every NIC of the record is enforced where it is now, 3 when one is not (not
    /// found, lacking our programs, or in audit mode, which drops nothing) or nothing is
    /// enforced under the pin path (as `systemctl status` exits 3 for a unit that is not
    /// active), 1 on an error.
    Status {
        /// The pin directory of the enforcement to inspect (the config's `pin_path`).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Have the running daemon apply its config file again, with no window.
    ///
    /// Validates the config the daemon runs with (named in its state record) first: a bad config
    /// is reported here and the daemon is not disturbed. Otherwise sends it SIGHUP and waits for
    /// the outcome: new rules take effect without an instant of either more or less than the
    /// old or new policy allows, and tracked flows the new policy refuses are revoked. Exits
    /// non-zero if the daemon refused the config or did not answer in time, so `systemctl
    /// reload trove-isolate`, which runs this, fails on a refused config.
    Reload {
        /// The pin directory of the running daemon (the config's `pin_path`).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Find the daemon from its config file instead: the file's `pin_path`, or the default.
        #[arg(long, conflicts_with = "pin_path")]
        config: Option<PathBuf>,
        /// Seconds to wait for the daemon to report the outcome.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Say whether a new flow would pass, and which rule or reason decides, from the maps in
    /// force.
    ///
    /// Asks the pinned maps the questions the programs ask of a flow's first packet, in their
    /// order: which policy entry matches (the same lookups, longest prefix first), then whether
    /// its local end is an address of the NIC (with --local); DHCP client traffic, which passes
    /// before the rules, is not modelled. The verdict is the maps'; the entry of the daemon's
    /// config that allows the flow is named from the file as it compiles now (an edit not yet
    /// reloaded, or a host name that answers otherwise, shows there).
    #[command(after_long_help = EXPLAIN_EXAMPLES)]
    Explain {
        /// The NIC: management or business.
        #[arg(long, value_parser = explain::role)]
        role: trove_isolate_common::Role,
        /// An outbound flow to ADDR:PORT/tcp, ADDR:PORT/udp or ADDR/icmp.
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        to: Option<explain::Endpoint>,
        /// An inbound flow from ADDR to the local PORT: ADDR:PORT/tcp (PORT is the NIC's
        /// service port, e.g. 3306), ADDR:PORT/udp or ADDR/icmp.
        #[arg(long)]
        from: Option<explain::Endpoint>,
        /// The NIC's own end of the flow, checked against the NIC's addresses.
        #[arg(long)]
        local: Option<std::net::IpAddr>,
        /// The pin directory of the enforcement to ask (the config's `pin_path`).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Follow sampled drop events live: interface, role, direction, verdict, reason, protocol,
    /// source > destination, a TCP segment's flags (as tcpdump writes them) and length, one
    /// line each.
    ///
    /// Reads the running daemon's event stream, or the datapath's ring buffer itself when no
    /// daemon runs. Events are sampled in the datapath, at most `[drops] events_per_second` (the
    /// rest are counted in trove_isolate_drop_events_suppressed_total{stage="datapath"}); every
    /// drop is counted in trove_isolate_drops_total whether or not it is sampled. In audit mode
    /// the packets audit passed are reported with verdict `audit`.
    #[command(after_long_help = DROPS_EXAMPLES)]
    Drops {
        /// Only events on this interface (its name where it is attached, e.g. eth0).
        #[arg(long)]
        interface: Option<String>,
        /// Only events of this NIC: management or business.
        #[arg(long, value_parser = explain::role)]
        role: Option<trove_isolate_common::Role>,
        /// Only events in this direction: ingress or egress.
        #[arg(long, value_parser = drops_direction)]
        direction: Option<trove_isolate_common::Direction>,
        /// Only events with this reason (repeatable): policy, not_tracked, not_local, ...
        #[arg(long = "reason", value_parser = drops_reason)]
        reasons: Vec<trove_isolate_common::Reason>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Exit after this many matching events.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long = "for", value_name = "SECONDS")]
        duration: Option<f64>,
        /// The pin directory of the enforcement to follow (the config's `pin_path`).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Remove all enforcement and every pin under the pin directory.
    ///
    /// Detaches the programs from both NICs (in their namespaces), removes the pinned links and
    /// maps and the state record. Traffic is unfiltered afterwards.
    Detach {
        /// The pin directory of the enforcement to remove (the config's `pin_path`).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Detach even while the daemon enforcing there runs (it attaches again at its next
        /// look, within a second). Without it, detach refuses and says to stop the daemon first.
        #[arg(long)]
        force: bool,
    },
}

const EXPLAIN_EXAMPLES: &str = "\
Examples:
  trove-isolate explain --role management --to 192.0.2.10:5672/tcp
  trove-isolate explain --role business --from 198.51.100.7:3306/tcp --local 192.0.2.1
  trove-isolate explain --role management --to 2001:db8::53/icmp";

const DROPS_EXAMPLES: &str = "\
Examples:
  trove-isolate drops
  trove-isolate drops --role business --reason policy
  trove-isolate drops --interface eth1 --json --count 10";

fn drops_direction(text: &str) -> Result<trove_isolate_common::Direction, String> {
    trove_isolate_common::Direction::ALL
        .into_iter()
        .find(|d| d.name() == text)
        .ok_or_else(|| format!("{text:?}: expected ingress or egress"))
}

fn drops_reason(text: &str) -> Result<trove_isolate_common::Reason, String> {
    use trove_isolate_common::Reason;
    let drops: Vec<Reason> = Reason::ALL.into_iter().filter(|r| r.is_drop()).collect();
    drops
        .iter()
        .copied()
        .find(|r| r.name() == text)
        .ok_or_else(|| {
            let names: Vec<&str> = drops.iter().map(|r| r.name()).collect();
            format!("{text:?}: expected one of {}", names.join(", "))
        })
}

/// The config cannot be compiled: Trove's files are not there yet (an instance's first boot),
/// or it is wrong. See [`guard_closed`].
fn config_failed(path: &Path, failed: ConfigError) -> anyhow::Error {
    let until = match failed {
        ConfigError::TroveFilesMissing { .. } => "until they are",
        _ => "until the config compiles",
    };
    guard_closed(path, failed.into(), until)
}

/// The daemon cannot start. With Trove discovery and no policy pinned, every NIC is held closed
/// with the boot guard (`[boot] guard = false`: the guard is taken off instead), and the start
/// fails, so that systemd starts the daemon again until it can enforce.
fn guard_closed(path: &Path, failed: anyhow::Error, until: &str) -> anyhow::Error {
    let guarded = trove_isolate::config::Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            let pins = Pins::new(
                config
                    .pin_path
                    .as_ref()
                    .map_or_else(|| PathBuf::from(DEFAULT_PIN_PATH), PathBuf::from),
            );
            // A `[boot]` gone wrong still holds the NICs, as the defaults say.
            let settings = boot_guard::Settings::of(&config, path)
                .unwrap_or_else(|_| Some(boot_guard::Settings::fallback(&config)));
            match settings {
                Some(settings) => boot_guard::hold(&pins, &settings).map(Some),
                None => {
                    // No boot guard asked for, but a policy pinned still has the NICs that
                    // lost its filters held (unless the guard is turned off).
                    if config.boot.guard != Some(false) {
                        let settings = boot_guard::Settings::fallback(&config);
                        if let Some(held) = boot_guard::hold_lapsed(&pins, &settings)? {
                            return Ok(Some(held));
                        }
                    }
                    let released = boot_guard::release_unused(&pins)?;
                    if !released.is_empty() {
                        log::warn!(
                            "boot guard off: released from {}",
                            boot_guard::labels(&released).join(", ")
                        );
                    }
                    Ok(None)
                }
            }
        });
    held(guarded, failed, until)
}

/// The start's error, with what the guard did.
fn held(
    guarded: anyhow::Result<Option<boot_guard::Held>>,
    failed: anyhow::Error,
    until: &str,
) -> anyhow::Error {
    let outcome = match guarded {
        Ok(None) => return failed,
        Ok(Some(boot_guard::Held::Guarding {
            nics,
            missing,
            lost,
            skipped,
            failed,
        })) => {
            let mut also = String::new();
            for (what, names) in [
                ("[boot] interfaces not found, NOT GUARDED", missing),
                (
                    "held before and found in no namespace now, NOT GUARDED",
                    lost,
                ),
                ("held by a policy of another pin path", skipped),
                ("could not be held, NOT GUARDED", failed),
            ] {
                if !names.is_empty() {
                    also.push_str(&format!("; {what}: {}", names.join(", ")));
                }
            }
            let held = match nics.is_empty() {
                true => "no NIC".to_owned(),
                false => nics.join(", "),
            };
            format!(
                "boot guard: {held} held closed (ARP, neighbour discovery, DHCP and the metadata \
                 service only) {until}{also}"
            )
        }
        Ok(Some(boot_guard::Held::Enforced)) => {
            format!("the policy pinned before stays in force {until}")
        }
        Ok(Some(boot_guard::Held::Lapsed { nics, lost, failed })) => {
            let mut also = String::new();
            if !nics.is_empty() {
                also.push_str(&format!(
                    "; no longer on {} (moved since it was attached): held closed by the boot \
                     guard (ARP, neighbour discovery, DHCP and the metadata service only)",
                    nics.join(", ")
                ));
            }
            for (what, names) in [
                ("found in no namespace now, NOT GUARDED", lost),
                ("could not be held, NOT GUARDED", failed),
            ] {
                if !names.is_empty() {
                    also.push_str(&format!("; {what}: {}", names.join(", ")));
                }
            }
            format!("the policy pinned before stays in force {until}{also}")
        }
        Ok(Some(boot_guard::Held::Busy(pid))) => format!(
            "boot guard not held: another trove-isolate process{} holds the pin path",
            trove_isolate::pin_lock::named(pid)
        ),
        Err(e) => format!("the boot guard failed too, NOTHING IS ENFORCED: {e:#}"),
    };
    anyhow::anyhow!("{failed}\n{outcome}")
}

fn main() -> std::process::ExitCode {
    let mut logger = env_logger::Builder::new();
    // The netlink crate warns about every attribute a newer kernel sends that it does not know
    // (IFLA_INET6_CONF grew in 6.x): noise on every dump, nothing an operator can act on.
    logger.filter_level(log::LevelFilter::Info);
    logger.filter_module("netlink_packet_route", log::LevelFilter::Error);
    logger.parse_env(env_logger::Env::default());
    logger.init();
    let command = Cli::parse().command;
    if !matches!(command, Command::Run { .. }) {
        // A one-shot command piped into `head` ends quietly when the pipe closes, as other
        // tools do, rather than panic in print!. Not the daemon: a scraper hanging up must
        // not kill it.
        // SAFETY: setting a signal's disposition to the default, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, outermost context first: "what we were doing: why".
            eprintln!("trove-isolate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            datapath_log,
        } => {
            daemon::fixed_malloc_thresholds();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let result = runtime.block_on(async {
                // Handlers first: a SIGTERM or SIGHUP while the config is read and its names
                // looked up, or right after the "enforcing" line (or the READY notification),
                // must be handled, not kill us. A SIGHUP before enforcing is a reload after.
                let shutdown = shutdown_signal()?;
                let hangups = Hangups::install()?;
                // A config that does not even parse says nothing of a guard, nor of its pin
                // path: a policy pinned at the default's keeps the NICs that lost its filters
                // held.
                let source = match Source::load(&config) {
                    Ok(source) => source,
                    Err(e @ (ConfigError::Read { .. } | ConfigError::Syntax { .. })) => {
                        let pins = Pins::new(DEFAULT_PIN_PATH);
                        let lapsed =
                            boot_guard::hold_lapsed(&pins, &boot_guard::Settings::defaults());
                        return Err(held(lapsed, e.into(), "until the config parses"));
                    }
                    Err(e) => return Err(config_failed(&config, e)),
                };
                // Under the boot guard DNS does not pass: names are looked up once it is off.
                let pin_path = source
                    .config(&config)
                    .map_err(|e| config_failed(&config, e))?
                    .pin_path
                    .clone();
                let pins = Pins::new(
                    pin_path.map_or_else(|| PathBuf::from(DEFAULT_PIN_PATH), PathBuf::from),
                );
                let guarded = pins.guard_record().exists();
                // A name that does not resolve now keeps the addresses the policy in force
                // reaches it at: a restart while DNS is down revokes none of its flows.
                let in_force = trove_isolate::state::State::read(&pins.state_file())
                    .ok()
                    .flatten()
                    .filter(|s| !s.attachments.is_empty())
                    .map(|s| s.names)
                    .unwrap_or_default();
                let policy = Policy::for_start(&source, &config, guarded, &in_force)
                    .map_err(|e| config_failed(&config, e))?;
                let config_path = config.clone();
                let options = daemon::RunOptions {
                    datapath_log,
                    config,
                };
                // A start that fails before it enforces (a metrics port in use, a NIC not
                // found) holds the NICs as a config that does not compile does.
                daemon::run(source, policy, options, hangups, shutdown)
                    .await
                    .map_err(|e| guard_closed(&config_path, e, "until a start enforces"))
            });
            // A reload or a lookup of names still waiting for DNS is left, not waited for.
            runtime.shutdown_background();
            result
        }
        Command::Check {
            config,
            offline: true,
        } => {
            let parsed = trove_isolate::config::Config::load(&config)?;
            Policy::check_offline(&parsed, &config)?;
            let rest = if parsed.trove.is_some() {
                "its Trove files, the sections they fill, NICs and names"
            } else {
                "its NICs and names"
            };
            println!(
                "config {} is valid offline ({rest} are checked on the guest)",
                config.display()
            );
            Ok(())
        }
        Command::Check {
            config,
            offline: false,
        } => {
            let policy = Policy::load(&config)?;
            print!("{policy}");
            println!("config {} is valid", config.display());
            // Last and on stderr: valid, but open to any address, and seen even with stdout piped.
            for warning in policy.warnings() {
                eprintln!("WARNING: {warning}");
            }
            // Where `run` looks (by name or MAC, in its namespace and docker's): a NIC missing
            // now fails a start, but the config itself is sound (a NIC docker-hostnic moves
            // may be on its way).
            for nic_policy in &policy.nics {
                if let Err(e) = trove_isolate::nic::resolve(&nic_policy.nic, None) {
                    eprintln!(
                        "WARNING: [{}] NIC {} is not found now ({e:#}): `run` fails until it is",
                        nic_policy.role.name(),
                        nic_policy.nic
                    );
                }
            }
            Ok(())
        }
        Command::Status { pin_path, json } => {
            let report = status::report(&Pins::new(pin_path))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            if !report.enforced_everywhere() {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Reload {
            pin_path,
            config,
            timeout,
        } => {
            let pin_path = match &config {
                Some(path) => trove_isolate::config::Config::load(path)?
                    .pin_path
                    .map_or_else(|| PathBuf::from(DEFAULT_PIN_PATH), PathBuf::from),
                None => pin_path,
            };
            let pins = Pins::new(&pin_path);
            // The file's pin_path edited: the daemon running it enforces under the one in force.
            if let Some(config) = &config {
                let elsewhere =
                    ops::daemon_running(config).filter(|(_, s)| *s != pins.state_file());
                if let Some((pid, state)) = elsewhere {
                    anyhow::bail!(
                        "{}: pin_path: changes only with a restart (the daemon running this \
                         config, PID {pid}, enforces under the pin path its record {} is of)",
                        config.display(),
                        state.display()
                    );
                }
            }
            let outcome = ops::reload(&pins, Duration::from_secs(timeout))?;
            println!("{outcome}");
            Ok(())
        }
        Command::Explain {
            role,
            to,
            from,
            local,
            pin_path,
        } => {
            let (direction, remote) = match (to, from) {
                (Some(to), _) => (trove_isolate_common::Direction::Egress, to),
                (None, Some(from)) => (trove_isolate_common::Direction::Ingress, from),
                (None, None) => unreachable!("clap requires --to or --from"),
            };
            let pins = Pins::new(pin_path);
            print!(
                "{}",
                explain::explain(&pins, role, direction, &remote, local)?
            );
            Ok(())
        }
        Command::Drops {
            interface,
            role,
            direction,
            reasons,
            json,
            count,
            duration,
            pin_path,
        } => {
            let duration = duration
                .map(|s| Duration::try_from_secs_f64(s).context("--for: seconds, at least 0"))
                .transpose()?;
            let options = drops::Follow {
                filter: drops::Filter {
                    interface,
                    role,
                    direction,
                    reasons,
                },
                json,
                count,
                duration,
            };
            drops::follow_cli(&Pins::new(pin_path), &options)
        }
        Command::Detach { pin_path, force } => {
            print!("{}", ops::detach(&Pins::new(pin_path), force)?);
            Ok(())
        }
    }
}

/// SIGHUP, one reload request each.
struct Hangups(tokio::signal::unix::Signal);

impl Hangups {
    fn install() -> anyhow::Result<Hangups> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Hangups(
            signal(SignalKind::hangup()).context("installing a SIGHUP handler")?,
        ))
    }
}

impl daemon::Stream for Hangups {
    async fn next(&mut self) {
        if self.0.recv().await.is_none() {
            // No more signals can arrive: never ask for a reload again.
            std::future::pending::<()>().await;
        }
        log::info!("SIGHUP: reloading");
    }
}

/// Installs SIGTERM and SIGINT handlers; the future completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM"),
            _ = int.recv() => log::info!("SIGINT"),
        }
    })
}
