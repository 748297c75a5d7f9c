//! The boot guard: every NIC closed until a start can enforce the policy.
//!
//! At an instance's first boot, and after a rebuild, cloud-init writes the guest agent's config
//! and eth1.json after the daemon starts. Until then the daemon cannot tell the business NIC from
//! the management NIC and fails to start (systemd starts it again every 2 s); so does any start
//! whose config does not compile or whose NIC is not found. Each of those starts [`hold`]s every
//! NIC with the guard's programs (`trove_isolate_common::guard`: ARP, neighbour discovery, DHCP
//! and the metadata service only); the first start that enforces the roles' policy then
//! [`release`]s the guard. Under TCX and cls_bpf alike a packet meets both programs while both
//! are attached (each passes with `TC_ACT_UNSPEC`, on to the next), so the hand-over has no
//! window.
//!
//! Nothing is guarded while a policy is pinned (a restart that finds Trove's files gone keeps
//! the policy in force rather than close the database), nor a NIC that another pin path's policy
//! holds.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{tc::SchedClassifier, Program},
    EbpfLoader,
};
use serde::{Deserialize, Serialize};
use trove_isolate_common::{
    counters::Counter,
    family,
    guard::{self, Endpoint, Endpoints, MAX_ENDPOINTS},
    maps, Direction, Reason, Verdict,
};

use crate::{
    attach,
    capacity::Capacity,
    config::{Config, ConfigError},
    netns,
    nic::{self, Device},
    pins::{Pins, GUARD_LINK_PREFIX},
    policy::AttachMode,
    state::{Hook, State},
};

/// The guard's cls_bpf filters: after the roles' (priority 1), so that while both are attached
/// a packet meets the role's program first.
const FILTER: (u16, u32) = (2, 0x7002);

/// What cloud-init reads at first boot: OpenStack's metadata service, over IPv4 and IPv6.
pub const DEFAULT_METADATA: [&str; 2] = ["169.254.169.254:80", "[fe80::a9fe:a9fe]:80"];

/// `[boot]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The NICs to hold; `None`: every physical NIC in `netns`.
    pub interfaces: Option<Vec<String>>,
    pub netns: Option<PathBuf>,
    pub metadata: Vec<SocketAddr>,
    pub attach: AttachMode,
}

impl Settings {
    /// The guard `config` asks for: none without Trove discovery (a config that names its NICs
    /// needs no guard) or with `guard = false`.
    pub fn of(config: &Config, path: &Path) -> Result<Option<Settings>, ConfigError> {
        let boot = &config.boot;
        if config.trove.is_none() || boot.guard == Some(false) {
            return Ok(None);
        }
        let invalid = |key: &str, message: String| ConfigError::invalid(path, key, message);
        let texts: Vec<String> = match &boot.metadata {
            Some(list) => list.clone(),
            None => DEFAULT_METADATA.iter().map(|s| s.to_string()).collect(),
        };
        if texts.len() > MAX_ENDPOINTS {
            return Err(invalid(
                "[boot] metadata",
                format!("at most {MAX_ENDPOINTS} endpoints"),
            ));
        }
        let metadata = texts
            .iter()
            .map(|text| match text.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => Ok(addr),
                _ => Err(invalid(
                    "[boot] metadata",
                    format!("{text:?} is not address:port (IPv6 as [address]:port)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(list) = &boot.interfaces {
            if list.is_empty() || list.iter().any(|n| n.is_empty()) {
                return Err(invalid(
                    "[boot] interfaces",
                    "name at least one NIC, or leave the key out for every physical NIC".into(),
                ));
            }
        }
        // sysfs, which tells a physical NIC, is the host's whatever namespace is entered.
        if boot.netns.is_some() && boot.interfaces.is_none() {
            return Err(invalid(
                "[boot] netns",
                "name the NICs there with interfaces (physical NICs are found in the host \
                 namespace only)"
                    .into(),
            ));
        }
        let attach = crate::policy::attach_mode(config.attach.as_deref())
            .map_err(|m| invalid("attach", m))?;
        Ok(Some(Settings {
            interfaces: boot.interfaces.clone(),
            netns: boot.netns.as_ref().map(PathBuf::from),
            metadata,
            attach,
        }))
    }

    /// The defaults, for a config whose `[boot]` is wrong: every physical NIC, OpenStack's
    /// metadata service.
    pub fn fallback(config: &Config) -> Settings {
        Settings {
            interfaces: None,
            netns: None,
            metadata: DEFAULT_METADATA
                .iter()
                .filter_map(|text| text.parse().ok())
                .collect(),
            attach: crate::policy::attach_mode(config.attach.as_deref())
                .unwrap_or(AttachMode::Auto),
        }
    }
}

/// What the guard holds, recorded next to the state file (`Pins::guard_record`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Seconds since the epoch when the guard first held these NICs.
    pub since: u64,
    pub attachments: Vec<GuardAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardAttachment {
    pub direction: Direction,
    pub interface: String,
    pub ifindex: u32,
    pub netns: Option<PathBuf>,
    pub hook: Hook,
    /// The NIC's MAC: a later start finds it by it where docker-hostnic moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// Held where its MAC was found after it moved: the name it had where `[boot]` names NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<String>,
    /// A TCX link's pin (`Pins::guard_link`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PathBuf>,
}

impl GuardAttachment {
    /// How messages name the NIC: as `[boot]` does, and where it is if it moved.
    pub fn label(&self) -> String {
        label(
            &self.interface,
            self.netns.as_deref(),
            self.moved_from.as_deref(),
        )
    }

    /// The name it had where `[boot]` names NICs.
    fn original(&self) -> String {
        self.moved_from
            .clone()
            .unwrap_or_else(|| self.interface.clone())
    }

    /// Whether the device it was made on is still where it was (with its MAC, if recorded). A
    /// namespace this process may not enter is taken to hold it still.
    fn present(&self) -> bool {
        let device = netns::run_in(self.netns.as_deref(), || {
            let name = nix::net::if_::if_indextoname(self.ifindex).ok()?;
            Some(nic::mac_of(&name.to_string_lossy()))
        });
        match device {
            Ok(Some(mac)) => self.mac.is_none() || mac == self.mac,
            Ok(None) => false,
            Err(_) => nic::namespace_id(self.netns.as_deref()).is_some(),
        }
    }
}

fn label(interface: &str, netns: Option<&Path>, moved_from: Option<&str>) -> String {
    match (moved_from, netns) {
        (Some(from), Some(netns)) => format!("{from} (now {interface} in {})", netns.display()),
        (Some(from), None) => format!("{from} (now {interface} in this namespace)"),
        (None, _) => interface.to_owned(),
    }
}

/// Each name once, in order.
fn unique(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

impl Record {
    pub fn read(pins: &Pins) -> anyhow::Result<Option<Record>> {
        let path = pins.guard_record();
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write(&self, pins: &Pins) -> anyhow::Result<()> {
        crate::state::write_json(&pins.guard_record(), self)
    }

    /// The NICs held, each once (one held where it moved, with its namespace): those still
    /// where the record has them.
    pub fn interfaces(&self) -> Vec<String> {
        unique(
            self.attachments
                .iter()
                .filter(|a| a.present())
                .map(GuardAttachment::label),
        )
    }

    /// The NICs held before that are no longer where the record has them, nor held elsewhere:
    /// a later start looks for them by their MAC.
    pub fn lost(&self) -> Vec<String> {
        let (here, gone): (Vec<&GuardAttachment>, Vec<&GuardAttachment>) =
            self.attachments.iter().partition(|a| a.present());
        unique(
            gone.iter()
                .filter(|a| a.mac.is_none() || !here.iter().any(|h| h.mac == a.mac))
                .map(|a| a.original()),
        )
    }

    /// Drops the entries of NICs held now where they moved to: nothing of the guard's is left
    /// where they were (a filter went with the move, a TCX link moved with the NIC, and its pin
    /// stays until `release`, holding it as well). One held nowhere stays, to be looked for by
    /// its MAC again. Whether anything was dropped.
    fn forget_old_places(&mut self) -> bool {
        let present: Vec<bool> = self.attachments.iter().map(|a| a.present()).collect();
        let held_macs: Vec<[u8; 6]> = self
            .attachments
            .iter()
            .zip(&present)
            .filter(|(_, here)| **here)
            .filter_map(|(a, _)| a.mac)
            .collect();
        let mut here = present.into_iter();
        let before = self.attachments.len();
        self.attachments.retain(|a| {
            here.next().unwrap_or(true) || !a.mac.is_some_and(|m| held_macs.contains(&m))
        });
        self.attachments.len() != before
    }
}

/// What [`hold`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// These NICs are held closed; those of `[boot] interfaces` not found are `missing`, those
    /// an earlier start held and found in no namespace now `lost`, those a policy (of another
    /// pin path) holds `skipped`, those that could not be held `failed` (with why).
    Guarding {
        nics: Vec<String>,
        missing: Vec<String>,
        lost: Vec<String>,
        skipped: Vec<String>,
        failed: Vec<String>,
    },
    /// A policy is pinned: it stays in force, and nothing is guarded.
    Enforced,
    /// Another trove-isolate process holds the pin path (a daemon, or a `detach`).
    Busy(Option<u32>),
}

/// Holds every NIC of `settings` closed with the guard's programs (again, if it already does:
/// each retry puts them back where something took them off, and on NICs that appeared).
pub fn hold(pins: &Pins, settings: &Settings) -> anyhow::Result<Held> {
    let _lock = match crate::pin_lock::try_take(pins)? {
        Ok(lock) => lock,
        Err(pid) => return Ok(Held::Busy(pid)),
    };
    if State::read(&pins.state_file())?.is_some_and(|s| !s.attachments.is_empty()) {
        return Ok(Held::Enforced);
    }
    // An unreadable record is started afresh; `release` finds what it listed by its place.
    let previous = Record::read(pins).ok().flatten();
    let (targets, missing) = targets(settings, previous.as_ref())?;
    let mut record = Record {
        since: previous.as_ref().map_or_else(
            || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            },
            |r| r.since,
        ),
        // What an earlier start held stays recorded (on a NIC not among these, it stays held
        // too): released with the rest.
        attachments: previous
            .as_ref()
            .map(|r| r.attachments.clone())
            .unwrap_or_default(),
    };
    let mut programs = Programs::load(Some(pins), &settings.metadata)?;
    let tcx = attach::use_tcx(settings.attach);
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    for target in &targets {
        // A policy of another pin path holds it: the guard would only cut its traffic.
        if enforced_by_a_policy(&target.device) {
            skipped.push(target.label());
            continue;
        }
        // One NIC's failure leaves the others held.
        if let Err(e) = hold_one(pins, &mut programs, tcx, target, &mut record) {
            failed.push(format!("{} ({e:#})", target.label()));
        }
    }
    if record.forget_old_places() {
        record.write(pins)?;
    }
    let nics = record.interfaces();
    if nics.is_empty() && !failed.is_empty() {
        anyhow::bail!("guarding {}", failed.join(", "));
    }
    // Found, but skipped or failed: said so above.
    let found: Vec<String> = targets
        .iter()
        .map(|t| {
            t.moved_from
                .clone()
                .unwrap_or_else(|| t.device.name.clone())
        })
        .collect();
    let mut lost = record.lost();
    lost.retain(|name| !missing.contains(name) && !found.contains(name));
    Ok(Held::Guarding {
        nics,
        missing,
        lost,
        skipped,
        failed,
    })
}

/// Holds the target's NIC with both of the guard's programs, recording each as it holds.
fn hold_one(
    pins: &Pins,
    programs: &mut Programs,
    tcx: bool,
    target: &Target,
    record: &mut Record,
) -> anyhow::Result<()> {
    let device = &target.device;
    let (_, namespace) = nic::namespace_id(device.netns.as_deref())
        .with_context(|| format!("{device}: the namespace is gone"))?;
    for direction in Direction::ALL {
        let name = guard::program_name(direction);
        let pin = tcx.then(|| pins.guard_link(namespace, device.ifindex, direction));
        let program = programs.program(direction)?;
        let held_before = record.attachments.iter().position(|a| {
            a.ifindex == device.ifindex && a.netns == device.netns && a.direction == direction
        });
        let hook = netns::run_in(device.netns.as_deref(), || {
            if let Some(pin) = &pin {
                attach::ensure_tcx(program, name, direction, device, pin, held_before.is_some())
            } else {
                attach::ensure_filter(
                    program,
                    name,
                    direction,
                    device,
                    held_before.is_some(),
                    FILTER,
                )
            }
        })??;
        if let Some(i) = held_before {
            record.attachments.remove(i);
        }
        record.attachments.push(GuardAttachment {
            direction,
            interface: device.name.clone(),
            ifindex: device.ifindex,
            netns: device.netns.clone(),
            hook,
            mac: target.mac,
            moved_from: target.moved_from.clone(),
            pin,
        });
        record.attachments.sort_by_key(|a| (a.ifindex, a.direction));
        // After each one: a start that fails half way leaves a record of what it holds.
        record.write(pins)?;
    }
    Ok(())
}

/// Whether a role's programs of trove-isolate are on `device` (of any pin path).
fn enforced_by_a_policy(device: &Device) -> bool {
    trove_isolate_common::Role::ALL.iter().any(|role| {
        crate::inspect::hooks(device, *role).is_ok_and(|hooks| hooks.iter().any(|h| h.ours))
    })
}

/// A NIC the guard let go: where it is, and how messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub label: String,
    pub ifindex: u32,
    pub netns: Option<PathBuf>,
}

impl Released {
    /// Whether it is the device `ifindex` of `netns` (one namespace may be named by two paths).
    pub fn is(&self, ifindex: u32, netns: Option<&Path>) -> bool {
        self.ifindex == ifindex
            && (self.netns.as_deref() == netns || {
                let id = nic::namespace_id(netns);
                id.is_some() && id == nic::namespace_id(self.netns.as_deref())
            })
    }
}

/// The labels of `released`.
pub fn labels(released: &[Released]) -> Vec<String> {
    unique(released.iter().map(|r| r.label.clone()))
}

/// Takes the guard off every NIC it holds (none: nothing to do); the NICs it let go. Besides
/// what the record lists, every filter in the guard's place on the NICs of this namespace, of
/// `netns` (the config's `[boot] netns`) and of the record's goes, and every pin of a guard's
/// TCX link, so a record lost or unreadable leaves nothing behind. One that will not go does
/// not keep the others on: the first error is returned once all were tried, the record kept.
pub fn release(pins: &Pins, netns: Option<&Path>) -> anyhow::Result<Vec<Released>> {
    let record = match Record::read(pins) {
        Ok(record) => record,
        Err(e) => {
            log::warn!("{e:#}: releasing the boot guard wherever it may be");
            None
        }
    };
    let mut released: Vec<Released> = Vec::new();
    let mut let_go = |r: Released| {
        if !released
            .iter()
            .any(|k| k.ifindex == r.ifindex && k.netns == r.netns)
        {
            released.push(r);
        }
    };
    let mut first_error: Option<anyhow::Error> = None;
    let mut failed = |e: anyhow::Error| {
        first_error.get_or_insert(e);
    };
    let mut places: Vec<Option<PathBuf>> = vec![None];
    if netns.is_some() {
        places.push(netns.map(Path::to_path_buf));
    }
    // Where a guard was (its record there, even unreadable), it may have followed a NIC into
    // any namespace.
    if pins.guard_record().exists() {
        places.extend(nic::namespace_files().into_iter().map(Some));
    }
    for a in record.iter().flat_map(|r| &r.attachments) {
        // Asked first: a NIC that moved away since is not named where it was.
        let present = a.present();
        let removed = match (&a.hook, &a.pin) {
            (Hook::Tcx, Some(pin)) => attach::remove_tcx(pin),
            // Recorded before pins were named by namespace: the scan of the pins below.
            (Hook::Tcx, None) => Ok(()),
            (Hook::Legacy { priority, handle }, _) => attach::remove_filter(
                a.direction,
                &a.interface,
                a.ifindex,
                a.netns.as_deref(),
                (*priority, *handle),
            ),
        };
        match removed {
            Ok(()) if present => let_go(Released {
                label: a.label(),
                ifindex: a.ifindex,
                netns: a.netns.clone(),
            }),
            Ok(()) => {}
            Err(e) => failed(
                anyhow::Error::new(e)
                    .context(format!("releasing the boot guard from {}", a.label())),
            ),
        }
        if !places.contains(&a.netns) {
            places.push(a.netns.clone());
        }
    }
    for place in &places {
        for (name, ifindex, directions) in filters_in_place(place.as_deref()) {
            for direction in directions {
                if let Err(e) =
                    attach::remove_filter(direction, &name, ifindex, place.as_deref(), FILTER)
                {
                    failed(
                        anyhow::Error::new(e)
                            .context(format!("releasing the boot guard from {name}")),
                    );
                }
            }
            let_go(Released {
                label: name,
                ifindex,
                netns: place.clone(),
            });
        }
    }
    // Links whose record was lost (a guard that died between pinning and recording), and those
    // of a NIC's earlier places (they moved with it).
    if let Ok(entries) = fs::read_dir(pins.links_dir()) {
        for entry in entries.filter_map(Result::ok) {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(GUARD_LINK_PREFIX))
            {
                if let Err(e) = attach::remove_tcx(&entry.path()) {
                    failed(e.into());
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    match fs::remove_file(pins.guard_record()) {
        Ok(()) => Ok(released),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(released),
        Err(e) => Err(e).with_context(|| format!("removing {}", pins.guard_record().display())),
    }
}

/// [`release`] for a config that no longer asks for a guard (`guard = false`, no `[trove]`): a
/// guard recorded under `pins` goes, unless another process holds the pin path.
pub fn release_unused(pins: &Pins) -> anyhow::Result<Vec<Released>> {
    if !pins.guard_record().exists() {
        return Ok(Vec::new());
    }
    match crate::pin_lock::try_take(pins)? {
        Ok(_lock) => release(pins, None),
        Err(_) => Ok(Vec::new()),
    }
}

/// The devices in `netns` with a BPF filter in the guard's place, and the directions it is on.
fn filters_in_place(netns: Option<&Path>) -> Vec<(String, u32, Vec<Direction>)> {
    netns::run_in(netns, || {
        let Ok(all) = nix::net::if_::if_nameindex() else {
            return Vec::new();
        };
        all.iter()
            .filter_map(|i| {
                let name = i.name().to_string_lossy().into_owned();
                let directions: Vec<Direction> = Direction::ALL
                    .into_iter()
                    .filter(|d| {
                        crate::inspect::filter_places(i.index(), *d).iter().any(
                            |(priority, handle, kind)| {
                                (*priority, *handle) == FILTER && kind == "bpf"
                            },
                        )
                    })
                    .collect();
                (!directions.is_empty()).then_some((name, i.index(), directions))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// A NIC to hold: where it is now, and its MAC.
struct Target {
    device: Device,
    mac: Option<[u8; 6]>,
    /// Found by the MAC an earlier start recorded, away from where `[boot]` names NICs: the name
    /// it had there.
    moved_from: Option<String>,
}

impl Target {
    fn label(&self) -> String {
        label(
            &self.device.name,
            self.device.netns.as_deref(),
            self.moved_from.as_deref(),
        )
    }
}

/// The NICs to hold, where they are now, and the names of `[boot] interfaces` not found (the
/// others are held all the same).
///
/// A NIC an earlier start held (`previous`) that is no longer where it was is followed by its
/// MAC into any namespace: docker-hostnic moves the business NIC into the database container's
/// when Docker starts it, which tears a cls_bpf filter down (Linux before 6.6). Every device
/// found with the MAC is held (a device a container made with it as well: closed, never open).
fn targets(
    settings: &Settings,
    previous: Option<&Record>,
) -> anyhow::Result<(Vec<Target>, Vec<String>)> {
    let (mut targets, mut missing) = devices(settings)?;
    let mut recorded: Vec<([u8; 6], String)> = Vec::new();
    for a in previous.iter().flat_map(|r| &r.attachments) {
        if let Some(mac) = a.mac {
            if !recorded.iter().any(|(m, _)| *m == mac) {
                recorded.push((mac, a.original()));
            }
        }
    }
    for (mac, name) in recorded {
        if targets.iter().any(|t| t.mac == Some(mac)) {
            continue;
        }
        let elsewhere = nic::with_mac(mac, settings.netns.as_deref());
        if !elsewhere.is_empty() {
            missing.retain(|m| *m != name);
        }
        for device in elsewhere {
            if !targets.iter().any(|t| t.device.same_place(&device)) {
                // Where `[boot]` names NICs, under its name: it did not move (`[boot]
                // interfaces` no longer names it).
                let moved = device.name != name || device.netns != settings.netns;
                targets.push(Target {
                    device,
                    mac: Some(mac),
                    moved_from: moved.then(|| name.clone()),
                });
            }
        }
    }
    if targets.is_empty() {
        match missing.is_empty() {
            true => anyhow::bail!("no physical NIC to guard"),
            false => anyhow::bail!("none of [boot] interfaces is there: {}", missing.join(", ")),
        }
    }
    Ok((targets, missing))
}

/// The NICs of `settings` where `[boot]` names them, each with its MAC, and the names of
/// `[boot] interfaces` not found there.
fn devices(settings: &Settings) -> anyhow::Result<(Vec<Target>, Vec<String>)> {
    let place = settings.netns.as_deref();
    let names = match &settings.interfaces {
        Some(names) => names.clone(),
        None => netns::run_in(place, nic::host_nics)?
            .context("listing the NICs")?
            .into_iter()
            .map(|(name, _mac)| name)
            .collect(),
    };
    let (found, missing) = netns::run_in(place, || {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            match nix::net::if_::if_nametoindex(name.as_str()) {
                Ok(ifindex) => {
                    let mac = nic::mac_of(&name);
                    let device = Device {
                        name,
                        ifindex,
                        netns: place.map(Path::to_path_buf),
                        up: false,
                    };
                    found.push(Target {
                        device,
                        mac,
                        moved_from: None,
                    });
                }
                Err(_) => missing.push(name),
            }
        }
        (found, missing)
    })?;
    Ok((found, missing))
}

/// The guard's programs, loaded (the verifier passed them), and their maps.
pub struct Programs {
    ebpf: aya::Ebpf,
}

impl Programs {
    /// Loads the eBPF object with its maps made small (the guard uses two of them), the guard's
    /// counters bound to their pin under `pins` (fresh and unpinned without: packet tests), the
    /// metadata endpoints written, and the guard's two programs through the verifier.
    pub fn load(pins: Option<&Pins>, metadata: &[SocketAddr]) -> anyhow::Result<Programs> {
        if crate::EBPF_OBJECT.is_empty() {
            anyhow::bail!("this binary was built with AYA_BUILD_SKIP: it carries no eBPF programs");
        }
        if metadata.len() > MAX_ENDPOINTS {
            anyhow::bail!("at most {MAX_ENDPOINTS} metadata endpoints");
        }
        let small = Capacity {
            policy: [1; trove_isolate_common::policy::MAPS],
            policy_rules: Capacity::NONE_HELD,
            ct_established: 64,
            ct_new: 63,
        };
        let mut loader = EbpfLoader::new();
        for (name, size) in small.sized() {
            loader.map_max_entries(name, size);
        }
        if let Some(pins) = pins {
            fs::create_dir_all(pins.root())
                .with_context(|| format!("creating pin directory {}", pins.root().display()))?;
            loader.map_pin_path(maps::GUARD_COUNTERS, pins.map(maps::GUARD_COUNTERS));
        }
        let mut ebpf = loader
            .load(crate::EBPF_OBJECT)
            .context("loading the eBPF object for the boot guard")?;
        let mut endpoints = Endpoints::default();
        for (slot, addr) in endpoints.entries.iter_mut().zip(metadata) {
            *slot = endpoint(addr);
        }
        let mut map: Array<_, Endpoints> = Array::try_from(
            ebpf.map_mut(maps::GUARD_ENDPOINTS)
                .context("guard endpoint map missing")?,
        )?;
        map.set(0, endpoints, 0)
            .context("writing the metadata endpoints")?;
        let mut programs = Programs { ebpf };
        for direction in Direction::ALL {
            let name = guard::program_name(direction);
            programs
                .program(direction)?
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
        }
        Ok(programs)
    }

    /// The guard's program of `direction`.
    pub fn program(&mut self, direction: Direction) -> anyhow::Result<&mut SchedClassifier> {
        let name = guard::program_name(direction);
        match self.ebpf.program_mut(name) {
            Some(Program::SchedClassifier(p)) => Ok(p),
            _ => anyhow::bail!("program {name} missing from the eBPF object"),
        }
    }

    /// Every counter of these programs that moved.
    pub fn counts(&self) -> anyhow::Result<Vec<GuardCount>> {
        let map = self
            .ebpf
            .map(maps::GUARD_COUNTERS)
            .context("guard counters missing")?;
        read_counts(&PerCpuArray::try_from(map)?)
    }
}

/// `addr` as the guard's programs compare it.
pub fn endpoint(addr: &SocketAddr) -> Endpoint {
    let mut out = Endpoint {
        port: addr.port().to_be(),
        ..Endpoint::default()
    };
    match addr.ip() {
        IpAddr::V4(v4) => {
            out.family = family::V4;
            out.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.family = family::V6;
            out.addr = v6.octets();
        }
    }
    out
}

/// One of the guard's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuardCount {
    pub direction: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// What the guard has passed and dropped since the guest booted (its counters are pinned, and
/// kept after it is released); none if it never held a NIC.
pub fn counts(pins: &Pins) -> anyhow::Result<Vec<GuardCount>> {
    let path = pins.map(maps::GUARD_COUNTERS);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    read_counts(&PerCpuArray::try_from(Map::PerCpuArray(data))?)
}

fn read_counts<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, Counter>,
) -> anyhow::Result<Vec<GuardCount>> {
    let mut out = Vec::new();
    for direction in Direction::ALL {
        for verdict in Verdict::ALL {
            for reason in Reason::ALL {
                let (packets, bytes) = map
                    .get(&guard::counter_index(direction, verdict, reason), 0)?
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                if packets > 0 {
                    out.push(GuardCount {
                        direction: direction.name(),
                        verdict: verdict.name(),
                        reason: reason.name(),
                        packets,
                        bytes,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Option<Settings>, ConfigError> {
        let path = Path::new("boot.toml");
        Settings::of(&Config::parse(text, path).expect("parses"), path)
    }

    #[test]
    fn the_guard_is_on_with_trove_discovery_unless_turned_off() {
        let on = settings("[trove]\n").expect("valid").expect("guarded");
        assert_eq!(on.interfaces, None);
        assert_eq!(
            on.metadata,
            vec![
                "169.254.169.254:80".parse::<SocketAddr>().expect("addr"),
                "[fe80::a9fe:a9fe]:80".parse().expect("addr"),
            ]
        );
        assert_eq!(
            settings("[trove]\n[boot]\nguard = false\n").expect("valid"),
            None
        );
        // A config that names its NICs and rules is whole without Trove's files.
        assert_eq!(settings("[boot]\nguard = true\n").expect("valid"), None);
    }

    #[test]
    fn bad_boot_keys_are_refused_by_name() {
        for (text, key) in [
            (
                "[trove]\n[boot]\nmetadata = [\"169.254.169.254\"]\n",
                "[boot] metadata",
            ),
            (
                "[trove]\n[boot]\nmetadata = [\"fe80::1:80\"]\n",
                "[boot] metadata",
            ),
            (
                "[trove]\n[boot]\nmetadata = [\"192.0.2.1:0\"]\n",
                "[boot] metadata",
            ),
            (
                "[trove]\n[boot]\nmetadata = [\"192.0.2.1:1\", \"192.0.2.1:2\", \"192.0.2.1:3\", \
                 \"192.0.2.1:4\", \"192.0.2.1:5\"]\n",
                "[boot] metadata",
            ),
            ("[trove]\n[boot]\ninterfaces = []\n", "[boot] interfaces"),
            (
                "[trove]\n[boot]\nnetns = \"/run/netns/x\"\n",
                "[boot] netns",
            ),
            ("attach = \"xdp\"\n[trove]\n", "attach"),
        ] {
            let err = match settings(text) {
                Err(e) => e,
                Ok(s) => panic!("{text:?} accepted: {s:?}"),
            };
            assert_eq!(err.key(), Some(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn endpoints_are_held_as_the_parser_holds_packets() {
        let e = endpoint(&"192.0.2.254:80".parse().expect("addr"));
        assert_eq!(e.family, family::V4);
        assert_eq!(&e.addr[..4], &[192, 0, 2, 254]);
        assert_eq!(e.addr[4..], [0; 12]);
        assert_eq!(e.port, 80u16.to_be());
        let e = endpoint(&"[fe80::a9fe:a9fe]:80".parse().expect("addr"));
        assert_eq!(e.family, family::V6);
        assert_eq!(e.addr[0], 0xfe);
        assert_eq!(e.addr[15], 0xfe);
    }
}
