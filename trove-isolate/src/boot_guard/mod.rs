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
//! the policy in force rather than close the database) but a NIC of the policy that lost its
//! filters (docker-hostnic moved it while no daemon ran, before Linux 6.6: [`targets::lapsed`]),
//! nor a NIC that another pin path's policy holds. A NIC a start held that docker-hostnic moves
//! into the database container's namespace is found by its MAC at the next start and held there
//! ([`targets`]).

mod programs;
mod record;
mod settings;
mod targets;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use trove_isolate_common::{guard, Direction};

pub use programs::{counts, endpoint, GuardCount, Programs};
pub use record::{GuardAttachment, Record};
pub use settings::{Settings, DEFAULT_METADATA};

use record::unique;
use targets::{targets, Target};

use crate::{
    attach, netns,
    nic::{self, Device},
    pins::{Pins, GUARD_LINK_PREFIX},
    state::{Hook, State},
};

/// The guard's cls_bpf filters: after the roles' (priority 1), so that while both are attached
/// a packet meets the role's program first.
const FILTER: (u16, u32) = (2, 0x7002);

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
    /// A policy is pinned, but some of its NICs lost its filters (moved while no daemon ran,
    /// before Linux 6.6): those are held closed (`nics`), or found in no namespace (`lost`), or
    /// could not be held (`failed`). The others stay under the policy.
    Lapsed {
        nics: Vec<String>,
        lost: Vec<String>,
        failed: Vec<String>,
    },
    /// Another trove-isolate process holds the pin path (a daemon, or a `detach`).
    Busy(Option<u32>),
}

/// Holds every NIC of `settings` closed with the guard's programs (again, if it already does:
/// each retry puts them back where something took them off, and on NICs that appeared).
pub fn hold(pins: &Pins, settings: &Settings) -> anyhow::Result<Held> {
    Ok(hold_in(pins, settings, true)?.unwrap_or(Held::Enforced))
}

/// What [`hold`] does while a policy is pinned (the NICs that lost its filters held, or
/// [`Held::Enforced`]), and nothing otherwise (`None`): for a start whose config asks for no
/// boot guard (no `[trove]`), or does not parse.
pub fn hold_lapsed(pins: &Pins, settings: &Settings) -> anyhow::Result<Option<Held>> {
    hold_in(pins, settings, false)
}

fn hold_in(pins: &Pins, settings: &Settings, boot: bool) -> anyhow::Result<Option<Held>> {
    // Nothing pinned here ever (a config that does not parse names no pin path): no lock file.
    if !boot && !pins.state_file().exists() {
        return Ok(None);
    }
    let _lock = match crate::pin_lock::try_take(pins)? {
        Ok(lock) => lock,
        Err(pid) => return Ok(Some(Held::Busy(pid))),
    };
    let pinned = State::read(&pins.state_file())?.filter(|s| !s.attachments.is_empty());
    // An unreadable record is started afresh; `release` finds what it listed by its place.
    let previous = Record::read(pins).ok().flatten();
    let (targets, missing, lapsed_lost) = match &pinned {
        // The policy stays in force where its filters are; a NIC that lost them is held.
        Some(state) => {
            let (targets, lost) = targets::lapsed(state);
            if targets.is_empty() && lost.is_empty() {
                // The guard on a NIC that carries the policy again (its filters were not seen
                // at an earlier start) only closes it.
                if previous.is_some() {
                    if let Err(e) = release(pins, settings.netns.as_deref()) {
                        log::warn!("releasing the boot guard from the policy's NICs: {e:#}");
                    }
                }
                return Ok(Some(Held::Enforced));
            }
            (targets, Vec::new(), lost)
        }
        None if !boot => return Ok(None),
        None => {
            let (targets, missing) = targets(settings, previous.as_ref())?;
            (targets, missing, Vec::new())
        }
    };
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
    let settled = settle_old_links(pins, &mut programs, &mut record);
    if record.forget_old_places() || settled {
        record.write(pins)?;
    }
    let nics = record.interfaces();
    // Found, but skipped or failed: said so above. By MAC where recorded: another NIC may
    // have taken a lost one's name.
    let found_macs: Vec<[u8; 6]> = targets.iter().filter_map(|t| t.mac).collect();
    let found_names: Vec<String> = targets
        .iter()
        .map(|t| {
            t.moved_from
                .clone()
                .unwrap_or_else(|| t.device.name.clone())
        })
        .collect();
    let mut lost = unique(
        record
            .lost_nics()
            .into_iter()
            .filter(|a| match a.mac {
                Some(mac) => !found_macs.contains(&mac),
                None => !found_names.contains(&a.original()),
            })
            .map(|a| a.original())
            .chain(lapsed_lost),
    );
    lost.retain(|name| !missing.contains(name));
    if pinned.is_some() {
        return Ok(Some(Held::Lapsed { nics, lost, failed }));
    }
    if nics.is_empty() && !failed.is_empty() {
        anyhow::bail!("guarding {}", failed.join(", "));
    }
    Ok(Some(Held::Guarding {
        nics,
        missing,
        lost,
        skipped,
        failed,
    }))
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
        let name = guard::program_name(direction, target.shut);
        let pin = tcx.then(|| pins.guard_link(namespace, device.ifindex, direction));
        let program = programs.program(direction, target.shut)?;
        let held_before = record.attachments.iter().position(|a| {
            a.ifindex == device.ifindex && a.netns == device.netns && a.direction == direction
        });
        let hook = netns::run_in(device.netns.as_deref(), || {
            if let Some(pin) = &pin {
                attach::ensure_tcx(
                    program,
                    name,
                    direction,
                    device,
                    pin,
                    held_before.is_some(),
                    None,
                )
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
            shut: target.shut,
        });
        record.attachments.sort_by_key(|a| (a.ifindex, a.direction));
        // After each one: a start that fails half way leaves a record of what it holds.
        record.write(pins)?;
    }
    Ok(())
}

/// The guard's TCX links at places their NIC left: a link moves with its device, so the one
/// an earlier start pinned is still on the NIC wherever it went (the container's namespace, or
/// one no start looks in). Each is turned to the shut pair in place, never removed: the device
/// it is on cannot be told from another with its MAC, and a shut link on a NIC held elsewhere
/// only holds it closer (`release` removes every guard link). Whether the record changed.
fn settle_old_links(pins: &Pins, programs: &mut Programs, record: &mut Record) -> bool {
    let (present, _) = record.presence();
    let mut changed = false;
    for (a, here) in record.attachments.iter_mut().zip(present) {
        let (Hook::Tcx, Some(pin), false, false) = (&a.hook, &a.pin, here, a.shut) else {
            continue;
        };
        // The record is a file: no pin it names but the guard's own is touched.
        if !is_guard_pin(pins, pin) {
            continue;
        }
        // A defunct link (the device is gone) holds nothing.
        if let Ok(program) = programs.program(a.direction, true) {
            if attach::update_tcx(program, pin) {
                a.shut = true;
                changed = true;
            }
        }
    }
    changed
}

/// Whether a role's programs of trove-isolate are on `device` (of any pin path), both ways: a
/// start that failed half way may have left one direction's alone.
fn enforced_by_a_policy(device: &Device) -> bool {
    trove_isolate_common::Role::ALL.iter().any(|role| {
        crate::inspect::hooks(device, *role).is_ok_and(|hooks| {
            Direction::ALL
                .iter()
                .all(|d| hooks.iter().any(|h| h.ours && h.direction == *d))
        })
    })
}

/// Whether `pin` is where the guard pins its TCX links (`Pins::guard_link`).
fn is_guard_pin(pins: &Pins, pin: &Path) -> bool {
    pin.parent() == Some(pins.links_dir().as_path())
        && pin
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(GUARD_LINK_PREFIX))
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
        self.ifindex == ifindex && nic::same_namespace(self.netns.as_deref(), netns)
    }
}

/// The labels of `released`.
pub fn labels(released: &[Released]) -> Vec<String> {
    unique(released.iter().map(|r| r.label.clone()))
}

/// Takes the guard off every NIC it holds (none: nothing to do); the NICs it let go. Besides
/// what the record lists, every filter in the guard's place on the NICs of this namespace, of
/// `netns` (the config's `[boot] netns`) and of the record's goes, and every pin of a guard's
/// TCX link, so a record lost or unreadable leaves nothing behind but a filter on a NIC it had
/// followed into another namespace (not scanned: another pin path's guard may hold NICs there).
/// One that will not go does not keep the others on: the first error is returned once all were
/// tried, the record kept.
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
    for a in record.iter().flat_map(|r| &r.attachments) {
        // Asked first: a NIC that moved away since is not named where it was.
        let present = a.present();
        let removed = match (&a.hook, &a.pin) {
            // Only a guard's pin: the record is a file, and no file it names but those goes.
            (Hook::Tcx, Some(pin)) if is_guard_pin(pins, pin) => attach::remove_tcx(pin),
            (Hook::Tcx, Some(pin)) => Err(attach::AttachError::Pin {
                what: "refusing to remove",
                path: pin.display().to_string(),
                source: "not a link pin of the boot guard's".into(),
            }),
            // Recorded before pins were named by namespace: the scan of the pins below.
            (Hook::Tcx, None) => Ok(()),
            (Hook::Legacy { priority, handle }, _) => attach::remove_filter(
                a.direction,
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
                if let Err(e) = attach::remove_filter(direction, ifindex, place.as_deref(), FILTER)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `release` removes no file a record names but the guard's own link pins.
    #[test]
    fn only_the_guards_link_pins_are_removed() {
        let pins = Pins::new("/sys/fs/bpf/ti");
        assert!(is_guard_pin(
            &pins,
            &pins.guard_link(4026531840, 2, Direction::Ingress)
        ));
        for other in [
            pins.link(trove_isolate_common::Role::Business, Direction::Ingress),
            pins.state_file(),
            PathBuf::from("/etc/passwd"),
            PathBuf::from("/sys/fs/bpf/other/links/guard_1_2_ingress"),
            pins.links_dir().join("../guard_1_2_ingress"),
        ] {
            assert!(!is_guard_pin(&pins, &other), "{}", other.display());
        }
    }
}
