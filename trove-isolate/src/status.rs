//! `trove-isolate status`: the kernel and the record, side by side.
//!
//! For each role: where its NIC is now (found as the daemon finds it: by MAC in every
//! namespace), what the kernel has attached there (asked of the kernel), what the record says,
//! and every difference spelled out. The one-command answer to "is this guest isolated, and
//! where is its business NIC right now?". `--json` gives the same for scripts.

use serde::Serialize;
use trove_isolate_common::{Mode, Role};

use crate::{
    boot_guard,
    datapath::PinnedMaps,
    inspect::{self, Hooked},
    nic::{self, Device},
    pins::Pins,
    policy::{NicSpec, Policy},
    rawsock,
    state::{Attachment, MoveRecord, State},
};

#[derive(Debug, Serialize)]
pub struct Report {
    pub pin_path: String,
    /// Nothing is recorded or pinned under `pin_path`.
    pub enforcing: bool,
    pub mode: Option<String>,
    pub daemon: Option<Daemon>,
    pub nics: Vec<NicReport>,
    /// Everything that is not as it should be, one sentence each.
    pub problems: Vec<String>,
    pub counters: Vec<CounterReport>,
    /// The boot guard, if it holds NICs now.
    pub boot_guard: Option<boot_guard::Record>,
    /// What the boot guard passed and dropped since boot (kept after it is released).
    pub boot_guard_counters: Vec<boot_guard::GuardCount>,
}

impl Report {
    /// Whether a policy is enforced and every NIC of it is enforced where it is now (audit mode
    /// judges, but drops nothing).
    pub fn enforced_everywhere(&self) -> bool {
        self.enforcing
            && !self.nics.is_empty()
            && self.nics.iter().all(|n| n.enforced && !n.audit())
    }
}

#[derive(Debug, Serialize)]
pub struct Daemon {
    pub pid: u32,
    pub running: bool,
}

#[derive(Debug, Serialize)]
pub struct NicReport {
    pub role: Role,
    /// How the config names it (`MAC fa:16:3e:…` or a name in a namespace), when known.
    pub identity: Option<String>,
    /// Where it is now, if found.
    pub now: Option<Place>,
    /// What the kernel has on its hooks there.
    pub hooks: Vec<Hooked>,
    /// Both directions hold one of our programs.
    pub enforced: bool,
    /// Where the record says our programs are.
    pub recorded: Option<Place>,
    /// The last move the daemon followed.
    pub last_move: Option<MoveRecord>,
    pub mode: Option<String>,
    pub policy_entries: usize,
}

impl NicReport {
    /// Its role's programs pass what they would drop.
    pub fn audit(&self) -> bool {
        self.mode.as_deref() == Some(Mode::Audit.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    pub interface: String,
    pub ifindex: u32,
    /// The namespace file, or null for the daemon's own (the host's).
    pub netns: Option<String>,
}

impl Place {
    fn of_device(d: &Device) -> Place {
        Place {
            interface: d.name.clone(),
            ifindex: d.ifindex,
            netns: d.netns.as_ref().map(|p| p.display().to_string()),
        }
    }

    fn of_attachment(a: &Attachment) -> Place {
        Place {
            interface: a.interface.clone(),
            ifindex: a.ifindex,
            netns: a.netns.as_ref().map(|p| p.display().to_string()),
        }
    }

    fn same(&self, other: &Place) -> bool {
        self.ifindex == other.ifindex && self.netns == other.netns
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (ifindex {}) in ", self.interface, self.ifindex)?;
        match &self.netns {
            Some(ns) => write!(f, "{ns}"),
            None => write!(f, "the host namespace"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CounterReport {
    pub role: Role,
    pub direction: String,
    pub verdict: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Gathers the report: the record, the config it names, the kernel.
pub fn report(pins: &Pins) -> anyhow::Result<Report> {
    let state = State::read(&pins.state_file())?;
    let mut report = Report {
        pin_path: pins.root().display().to_string(),
        enforcing: state.is_some(),
        mode: None,
        daemon: None,
        nics: Vec::new(),
        problems: Vec::new(),
        counters: Vec::new(),
        boot_guard: None,
        boot_guard_counters: Vec::new(),
    };
    match boot_guard::Record::read(pins) {
        Ok(record) => report.boot_guard = record,
        Err(e) => report.problems.push(format!(
            "the boot guard's record is unreadable ({e:#}): the next start or `detach` releases \
             the guard in this namespace and [boot] netns, not on a NIC it followed into another \
             (look there with `tc filter show`)"
        )),
    }
    match boot_guard::counts(pins) {
        Ok(counts) => report.boot_guard_counters = counts,
        Err(e) => report
            .problems
            .push(format!("cannot read the boot guard's counters: {e:#}")),
    }
    if let Some(record) = &report.boot_guard {
        let lost = record.lost();
        if !lost.is_empty() {
            report.problems.push(format!(
                "the boot guard held {} before, found in no namespace now: NOT GUARDED (each \
                 start looks for it by its MAC)",
                lost.join(", ")
            ));
        }
        if state.is_some() {
            let shut = record.shut_interfaces();
            report.problems.push(format!(
                "the boot guard still holds {} beside the policy{}: the daemon takes it off once \
                 it enforces",
                record.interfaces().join(", "),
                match shut.is_empty() {
                    true => String::new(),
                    false => format!(" ({}: ARP and neighbour discovery only)", shut.join(", ")),
                }
            ));
        }
    }
    let Some(state) = state else {
        if pins.root().exists() && report.boot_guard.is_none() {
            report.problems.push(format!(
                "pins exist under {} but no record of what is attached (in {}); `run` adopts \
                 them, `detach` removes them",
                pins.root().display(),
                pins.state_file().display()
            ));
        }
        return Ok(report);
    };
    report.mode = Some(state.mode.name().to_owned());
    if let Some(pid) = state.pid {
        // As `reload` judges it: a PID the kernel has given to another program since is none.
        let running = crate::ops::running_daemon(&state).is_some();
        report.daemon = Some(Daemon { pid, running });
        if !running {
            report.problems.push(format!(
                "the daemon (pid {pid}) is not running: enforcement stays in force, but NIC \
                 moves are not followed and expired flows are not swept"
            ));
        }
    }
    // The config names the NICs; a record alone knows only where they were.
    let policy = match state.config.as_ref().map(|c| (c, Policy::load_offline(c))) {
        Some((_, Ok(policy))) => Some(policy),
        Some((path, Err(e))) => {
            report.problems.push(format!(
                "the daemon's config {} does not compile now ({e}): the policy in force stays, \
                 and a reload or a restart would refuse it",
                path.display()
            ));
            None
        }
        None => None,
    };
    let maps = PinnedMaps::open(pins).ok();
    for role in Role::ALL {
        let recorded = state.attached(role).next().map(Place::of_attachment);
        let spec: Option<NicSpec> = policy
            .as_ref()
            .and_then(|p| p.nic(role))
            .map(|n| n.nic.clone());
        if recorded.is_none() && spec.is_none() {
            continue;
        }
        let last = state.attached(role).next().map(|a| nic::Place {
            ifindex: a.ifindex,
            netns: a.netns.clone(),
        });
        let found = match (&spec, state.attached(role).next()) {
            (Some(spec), _) => nic::resolve(spec, last.as_ref()).map_err(|e| format!("{e:#}")),
            // No config to go by: the recorded device, if it is still there.
            (None, Some(a)) => recorded_device(a),
            (None, None) => Err("not configured".to_owned()),
        };
        let mut nic = NicReport {
            role,
            identity: spec.as_ref().map(ToString::to_string),
            now: None,
            hooks: Vec::new(),
            enforced: false,
            recorded: recorded.clone(),
            last_move: state.moves.iter().find(|m| m.role == role).cloned(),
            mode: maps
                .as_ref()
                .and_then(|m| m.mode(role).ok())
                .map(|m: Mode| m.name().to_owned()),
            policy_entries: state
                .policy_entries
                .iter()
                .find(|(r, _)| *r == role)
                .map_or(0, |(_, n)| *n),
        };
        match found {
            Ok(device) => {
                match inspect::hooks(&device, role) {
                    Ok(hooks) => nic.hooks = hooks,
                    Err(e) => report
                        .problems
                        .push(format!("{role} NIC: cannot list what is attached: {e:#}")),
                }
                nic.enforced = inspect::enforced(&nic.hooks);
                nic.now = Some(Place::of_device(&device));
                if let Some(note) = refused_groups_note(role, &device) {
                    report.problems.push(note);
                }
            }
            Err(e) => report
                .problems
                .push(format!("{role} NIC is nowhere to be found: {e}")),
        }
        drift(&mut report.problems, &nic);
        if nic.audit() {
            report.problems.push(format!(
                "{role} NIC is in audit mode: nothing is dropped (would-be drops are counted in \
                 trove_isolate_audit_total)"
            ));
        }
        report.nics.push(nic);
    }
    if let Some(biz) = state.attached(Role::Business).next() {
        if let Some(warning) = raw_socket_warning(biz.netns.as_deref()) {
            report.problems.push(warning);
        }
    }
    if let Some(maps) = &maps {
        for c in maps.counts()? {
            report.counters.push(CounterReport {
                role: c.role,
                direction: c.direction.name().into(),
                verdict: c.verdict.name().into(),
                reason: c.reason.name().into(),
                packets: c.counter.packets,
                bytes: c.counter.bytes,
            });
        }
    }
    Ok(report)
}

/// The device of an attachment where the record has it, if it is still the one recorded (its
/// MAC); else the device with its MAC in any namespace (docker-hostnic moved it while no daemon
/// followed: a TCX program moves with it).
fn recorded_device(a: &Attachment) -> Result<Device, String> {
    let ifindex = a.ifindex;
    let there = crate::netns::run_in(a.netns.as_deref(), move || {
        let name = nix::net::if_::if_indextoname(ifindex)
            .ok()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())?;
        let mac = nic::mac_of(&name);
        Some((name, mac))
    })
    .map_err(|e| format!("{e:#}"))?;
    match there {
        Some((name, mac)) if a.mac.is_none() || mac == a.mac => Ok(Device {
            name,
            ifindex,
            netns: a.netns.clone(),
            up: false,
        }),
        _ => a
            .mac
            .and_then(|mac| nic::with_mac(mac, a.netns.as_deref()).into_iter().next())
            .ok_or_else(|| format!("no device with ifindex {ifindex} nor with its MAC")),
    }
}

/// The differences between the kernel, the record and the daemon's last move, as sentences.
fn drift(problems: &mut Vec<String>, nic: &NicReport) {
    let role = nic.role;
    let Some(now) = &nic.now else {
        return;
    };
    if !nic.enforced {
        let missing: Vec<&str> = trove_isolate_common::Direction::ALL
            .iter()
            .filter(|d| !nic.hooks.iter().any(|h| h.direction == **d && h.ours))
            .map(|d| d.name())
            .collect();
        problems.push(format!(
            "{role} NIC {now} is NOT ENFORCED on {}: no trove-isolate program there",
            missing.join(" and ")
        ));
    }
    match &nic.recorded {
        Some(recorded) if !recorded.same(now) => problems.push(format!(
            "{role} NIC moved: the record says {recorded}, the kernel has it as {now}"
        )),
        Some(recorded) if recorded.interface != now.interface => problems.push(format!(
            "{role} NIC was renamed {} since it was recorded (now {})",
            recorded.interface, now.interface
        )),
        _ => {}
    }
}

/// Notes the groups the NIC carries whose MLD reports are refused going out: behind a switch
/// that snoops MLD, a report listing one beside the NIC's own groups is lost with them.
fn refused_groups_note(role: Role, device: &Device) -> Option<String> {
    match crate::multicast::refused_groups(device) {
        Ok(groups) if groups.is_empty() => None,
        Ok(groups) => {
            let list: Vec<String> = groups.iter().map(ToString::to_string).collect();
            Some(format!(
                "note: the {role} NIC {} carries multicast groups whose MLD reports are refused \
                 going out: {}. Behind a switch that snoops MLD, a report that lists one beside \
                 the NIC's own groups is lost with them; net.ipv6.conf.{}.force_mld_version = 1 \
                 reports each group alone (SECURITY.md)",
                device.name,
                list.join(", "),
                device.name
            ))
        }
        Err(e) => Some(format!(
            "note: cannot list the multicast groups of the {role} NIC: {e:#}"
        )),
    }
}

/// Warns when processes in the business NIC's namespace hold CAP_NET_RAW: packet sockets read
/// frames before TC ingress and can send past TC egress.
fn raw_socket_warning(netns: Option<&std::path::Path>) -> Option<String> {
    let where_ = netns.map_or_else(
        || "the host namespace".to_owned(),
        |p| p.display().to_string(),
    );
    match rawsock::holders(netns) {
        Ok(found) if found.is_empty() => None,
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
            Some(format!(
                "WARNING: {} process(es) in the business NIC's namespace {where_} hold \
                 CAP_NET_RAW: {}{more}. Packet sockets see frames before TC ingress and can \
                 send past TC egress; drop NET_RAW from the database container (see \
                 SECURITY.md).",
                found.len(),
                list.join(", ")
            ))
        }
        Err(e) => Some(format!(
            "note: cannot check {where_} for CAP_NET_RAW holders: {e}"
        )),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.enforcing {
            match &self.boot_guard {
                Some(record) => {
                    let since =
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.since);
                    writeln!(
                        f,
                        "boot guard: {} held closed since {} (ARP, neighbour discovery, DHCP and \
                         the metadata service only): the last start could not enforce (Trove's \
                         files not there yet, or the config: see the daemon's log); the start \
                         that enforces takes the guard off",
                        record.interfaces().join(", "),
                        humantime::format_rfc3339_seconds(since)
                    )?;
                    let shut = record.shut_interfaces();
                    if !shut.is_empty() {
                        writeln!(
                            f,
                            "  {} away from the guest's boot (ARP and neighbour discovery only)",
                            shut.join(", ")
                        )?;
                    }
                }
                None => writeln!(f, "not enforcing: nothing recorded for {}", self.pin_path)?,
            }
            for p in &self.problems {
                writeln!(f, "{p}")?;
            }
            return self.fmt_guard_counters(f);
        }
        write!(
            f,
            "pin path {}  mode {}",
            self.pin_path,
            self.mode.as_deref().unwrap_or("?")
        )?;
        match &self.daemon {
            Some(d) if d.running => writeln!(f, "  daemon pid {} (running)", d.pid)?,
            Some(d) => writeln!(f, "  daemon pid {} (NOT running)", d.pid)?,
            None => writeln!(f)?,
        }
        for nic in &self.nics {
            let identity = nic
                .identity
                .as_deref()
                .map(|i| format!(" [{i}]"))
                .unwrap_or_default();
            match &nic.now {
                Some(now) => writeln!(
                    f,
                    "{}{identity}: {now}: {}",
                    nic.role,
                    if nic.enforced {
                        "enforced"
                    } else {
                        "NOT ENFORCED"
                    }
                )?,
                None => writeln!(f, "{}{identity}: NOT FOUND", nic.role)?,
            }
            writeln!(
                f,
                "  mode {}, {} policy entries",
                nic.mode.as_deref().unwrap_or("?"),
                nic.policy_entries
            )?;
            for h in &nic.hooks {
                writeln!(
                    f,
                    "  {:<7} {:<6} {}{}",
                    h.direction.name(),
                    h.kind,
                    h.what,
                    if h.ours { "  (ours)" } else { "" }
                )?;
            }
            if let Some(m) = &nic.last_move {
                let how = if m.reattached {
                    format!("re-attached {:.1} ms after", m.reattach_ms)
                } else {
                    format!(
                        "its TCX links followed it (checked in {:.1} ms)",
                        m.reattach_ms
                    )
                };
                let late = if m.after_up {
                    "; it was up first: packets may have reached it unjudged"
                } else {
                    ""
                };
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.at_unix_ms);
                writeln!(
                    f,
                    "  last move {}: from {} to {}, {how}{late}",
                    humantime::format_rfc3339_seconds(at),
                    m.from,
                    m.to
                )?;
            }
        }
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        writeln!(f, "counters (packets, bytes):")?;
        if self.counters.is_empty() {
            writeln!(f, "  none yet")?;
        }
        for c in &self.counters {
            writeln!(
                f,
                "  {:<10} {:<7} {:<5} {:<22} {:>10} {:>12}",
                c.role.name(),
                c.direction,
                c.verdict,
                c.reason,
                c.packets,
                c.bytes
            )?;
        }
        self.fmt_guard_counters(f)
    }
}

impl Report {
    fn fmt_guard_counters(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.boot_guard_counters.is_empty() {
            return Ok(());
        }
        writeln!(f, "boot guard counters since boot (packets, bytes):")?;
        for c in &self.boot_guard_counters {
            writeln!(
                f,
                "  {:<7} {:<5} {:<22} {:>10} {:>12}",
                c.direction, c.verdict, c.reason, c.packets, c.bytes
            )?;
        }
        Ok(())
    }
}
