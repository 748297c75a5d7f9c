//! The reconcile step: bring the kernel to a policy. Used by the start, every reload and every
//! move of a NIC.
//!
//! [`enforce`] resolves every NIC first (nothing is touched if one is missing, but for a NIC the
//! pinned policy holds, which keeps what it had until it is found), loads the programs against
//! the pinned maps, writes the policy (a new generation), ensures each attachment, retires what
//! the new policy no longer covers and records the result. Nothing
//! here detaches on exit: links and maps are pinned, legacy filters stay on their qdiscs, and the
//! next start adopts them in place.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use ipnetwork::IpNetwork;
use trove_isolate_common::{maps, Direction, Role};

use crate::{
    attach,
    capacity::Capacity,
    conntrack,
    datapath::{Datapath, Pair},
    local, nic,
    pins::Pins,
    policy::Policy,
    state::{Attachment, Hook, State},
};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Applies `policy` to the kernel; returns the loaded datapath and what is now attached.
pub fn enforce(policy: &Policy, log: bool) -> anyhow::Result<(Datapath, State, Devices)> {
    let (loaded, state, devices) = enforce_with(policy, log, None)?;
    let datapath = loaded.context("the datapath was not loaded")?;
    Ok((datapath, state, devices))
}

/// A reload: [`enforce`] with `current`, the datapath this process enforces with, kept when it
/// serves the new policy ([`Datapath::serves`]: no map to resize), so the programs are not
/// loaded and verified again. Returns the datapath loaded instead of `current`, if one was.
pub fn reenforce(
    policy: &Policy,
    log: bool,
    current: &mut Datapath,
) -> anyhow::Result<(Option<Datapath>, State, Devices)> {
    enforce_with(policy, log, Some(current))
}

fn enforce_with(
    policy: &Policy,
    log: bool,
    current: Option<&mut Datapath>,
) -> anyhow::Result<(Option<Datapath>, State, Devices)> {
    let pins = Pins::new(&policy.pin_path);
    check_bpffs(&pins)?;
    let previous = State::read(&pins.state_file())?;
    let mut devices: Devices = Vec::new();
    let mut absent = Vec::new();
    for nic_policy in &policy.nics {
        // Where our programs were: the NIC stays there while it is there.
        let recorded = previous
            .as_ref()
            .and_then(|p| p.attached(nic_policy.role).next());
        let last = recorded.map(|a| nic::Place {
            ifindex: a.ifindex,
            netns: a.netns.clone(),
        });
        let device = match nic::resolve(&nic_policy.nic, last.as_ref()) {
            Ok(device) => device,
            // The NIC the pinned policy holds (as the config names it still), and no device
            // with its MAC anywhere the daemon looks (gone, or in a namespace no file names):
            // what it had stays, and the daemon attaches wherever it turns up. The other NIC is
            // not held back. A config that names another NIC than the record's is refused (a
            // typo must not start), and so is a NIC seen elsewhere under another name, which
            // the start that fails holds closed (`boot_guard::hold_lapsed`).
            Err(e)
                if e.is_absent()
                    && recorded.is_some_and(|a| {
                        nic_policy
                            .nic
                            .names_recorded(&a.interface, a.netns.as_deref(), a.mac)
                            && a.mac.is_some_and(|mac| {
                                nic::with_mac(mac, a.netns.as_deref()).is_empty()
                            })
                    }) =>
            {
                log::error!(
                    "[{}] NIC {}: {e}; it is not protected until it is found (its pinned \
                     programs stay where they were)",
                    nic_policy.role.name(),
                    nic_policy.nic
                );
                absent.push((nic_policy.role, e));
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("[{}] NIC {}", nic_policy.role.name(), nic_policy.nic)
                })
            }
        };
        if let Some((other, _)) = devices.iter().find(|(_, d)| device.same_device(d)) {
            bail!(
                "[{}] NIC {} is {device}, which [{}] names too: one role's programs would \
                 replace the other's, and the other NIC would go unfiltered",
                nic_policy.role.name(),
                nic_policy.nic,
                other.name()
            );
        }
        devices.push((nic_policy.role, device));
    }
    // Not one NIC found (a daemon in the wrong namespace, say): nothing to start on. Nor when
    // the local-address map is made anew (a new layout): a missing NIC's programs, turned to
    // the new maps, would find none of its addresses there.
    if !absent.is_empty() && (devices.is_empty() || !pins.map(maps::LOCAL).exists()) {
        let (role, e) = absent.swap_remove(0);
        let nic = policy
            .nic(role)
            .map(|n| n.nic.to_string())
            .unwrap_or_default();
        return Err(e).with_context(|| format!("[{}] NIC {nic}", role.name()));
    }
    let absent: Vec<Role> = absent.into_iter().map(|(role, _)| role).collect();
    // A first start that fails leaves nothing behind; a later one leaves the policy in force.
    // (The boot guard's pins, under the same root, are not the roles'.)
    let first_start = previous.is_none() && !pins.map(maps::SETTINGS).exists();
    let previous = previous.unwrap_or_default();
    let mut attachments = Vec::new();
    let reload = current.is_some();
    let result = apply(
        policy,
        log,
        current,
        first_start,
        &pins,
        &devices,
        &absent,
        &previous,
        &mut attachments,
    )
    .map_err(|e| if reload { e.context(WroteMaps) } else { e });
    if result.is_err() && first_start {
        for made in &attachments {
            let _ = attach::remove(made, &pins.link(made.role, made.direction));
        }
        // The roles' maps; the boot guard's counters and links stay with the guard.
        for name in maps::ALL.iter().filter(|n| **n != maps::GUARD_COUNTERS) {
            let _ = std::fs::remove_file(pins.map(name));
        }
    }
    let loaded = result?;

    let counts = policy.entry_counts();
    let state = State {
        mode: policy.mode,
        policy_entries: counts.roles,
        attachments,
        names: crate::state::NameAddresses::of(policy),
        absent,
        ..State::default()
    };
    state
        .write(&pins.state_file())
        .map_err(|e| if reload { e.context(WroteMaps) } else { e })?;
    Ok((loaded, state, devices))
}

/// Each configured NIC as found at the last reconcile.
pub type Devices = Vec<(Role, nic::Device)>;

/// Loads (unless `current` serves), writes the maps, attaches (recording each attachment as it
/// is made) and retires. Returns the datapath it loaded, if it did.
///
/// Otherwise the programs are verified before anything is written, so that a reload the
/// verifier refuses leaves the policy in force untouched. On a `first_start` with TCX nothing of
/// ours reads the maps yet: they are written first, a placeholder holds the hooks while the
/// verifier runs, and each role's programs take its place once verified, the first role's
/// first ([`Datapath::verify_attaching`], [`attach::hold_places`]). Not
/// with legacy filters: one of ours may outlive its pins and state record, and a first start
/// that failed after replacing it would remove it.
#[allow(clippy::too_many_arguments)]
fn apply(
    policy: &Policy,
    log: bool,
    current: Option<&mut Datapath>,
    first_start: bool,
    pins: &Pins,
    devices: &[(Role, nic::Device)],
    absent: &[Role],
    previous: &State,
    attachments: &mut Vec<Attachment>,
) -> anyhow::Result<Option<Datapath>> {
    let capacity = Capacity::for_policy(policy);
    let tcx = attach::use_tcx(policy.attach);
    let mut loaded = None;
    let datapath = match current {
        Some(current) if current.serves(&capacity, log) && current.holds_pins(pins) => current,
        _ if first_start && tcx => loaded.insert(Datapath::open(Some(pins), log, &capacity)?),
        _ => loaded.insert(Datapath::load(Some(pins), log, &capacity)?),
    };
    datapath.sync_policy(policy)?;
    write_settings(datapath, policy)?;
    // The NICs' addresses before any program judges a packet: a new flow must be the NIC's own.
    // A NIC not found keeps the addresses it had: its programs may still judge it somewhere.
    let (mut local, _) = local_entries(devices)?;
    local.extend(datapath.local_entries_of(absent)?);
    datapath.sync_local(&local)?;
    if !datapath.resized().is_empty() {
        let carried = datapath.carry_flows()?;
        if carried > 0 {
            log::info!("carried {carried} tracked flows into the resized tables");
        }
    }
    // Flow tables made at this load hold no flow yet: nothing to walk. (Asked before any
    // program of this datapath is attached, below: after, they could hold flows.)
    let revoked = match datapath.take_flows_fresh() {
        true => 0,
        false => conntrack::revoke(datapath, policy)?,
    };
    if revoked > 0 {
        log::info!("revoked {revoked} tracked flows the policy no longer allows");
    }
    let policy_resized = datapath.resized().iter().any(|r| maps::is_policy(r.map));
    let resized = !datapath.resized().is_empty();
    let finished = (|| -> anyhow::Result<()> {
        // The hooks a first start takes while the verifier runs (`Datapath::verify_attaching`).
        let places = Mutex::new(attach::Places::default());
        let mut ensure = |role: Role, programs: Pair<'_>| -> anyhow::Result<()> {
            if let Some((_, device)) = devices.iter().find(|(r, _)| *r == role) {
                let before = Direction::ALL.map(|d| find(&previous.attachments, role, d));
                let held = &mut places.lock().unwrap_or_else(PoisonError::into_inner);
                attachments.extend(
                    attach::ensure(programs, role, device, tcx, pins, before, held)?.attachments,
                );
            }
            Ok(())
        };
        if datapath.programs_loaded() {
            for (role, _) in devices {
                ensure(*role, datapath.role_programs(*role))?;
            }
        } else {
            let first = devices.first().map_or(Role::Management, |(role, _)| *role);
            let hold = |placeholder: &mut _| {
                *places.lock().unwrap_or_else(PoisonError::into_inner) =
                    attach::hold_places(placeholder, devices);
            };
            datapath.verify_attaching(first, hold, ensure)?;
        }
        // A NIC not found keeps what it had: its TCX links, which went wherever the device
        // went, are turned to the programs loaded now; a filter stays as it is (its program
        // reads the pinned maps, or the maps it had if they were made anew) until the NIC is
        // found.
        for role in absent {
            let kept: Vec<Attachment> = previous.attached(*role).cloned().collect();
            if datapath.programs_loaded() {
                for (direction, program) in Direction::ALL
                    .into_iter()
                    .zip(datapath.role_programs(*role))
                {
                    if kept
                        .iter()
                        .any(|a| a.direction == direction && a.hook == Hook::Tcx)
                        && !attach::update_tcx(program, &pins.link(*role, direction))
                    {
                        log::warn!(
                            "the {role} NIC's {direction} link could not be turned to the \
                             programs loaded now (its device may be gone)"
                        );
                    }
                }
            }
            attachments.extend(kept);
        }
        retire(pins, &previous.attachments, attachments)?;
        datapath.pin_resized()?;
        if policy_resized {
            // Until the swap, the old programs judged new flows by the old policy map; flows
            // they opened meanwhile in the tables both share meet the new policy now.
            let late = conntrack::revoke(datapath, policy)?;
            if late > 0 {
                log::info!("revoked {late} flows opened by the old programs during the swap");
            }
        }
        for stale in pins.stale_maps() {
            log::info!("removing map pin of an older layout: {}", stale.display());
            std::fs::remove_file(&stale)
                .with_context(|| format!("removing stale map pin {}", stale.display()))?;
        }
        Ok(())
    })();
    match finished {
        // Programs may already read maps made anew (one direction's, one role's or all): which
        // maps are in force is only sure again after a restart. (An attach that fails half way
        // leaves its first direction attached without a record.)
        Err(e) if resized => Err(e.context(PartlyApplied)),
        Err(e) => Err(e),
        Ok(()) => Ok(loaded),
    }
}

/// A reconcile that failed after it had moved programs onto maps made anew (a resize): this
/// process no longer holds the maps those programs use. The daemon exits, and its next start
/// (the service manager restarts it) takes them over from scratch.
#[derive(Debug, thiserror::Error)]
#[error("programs were already moved onto resized maps; a restart takes them over")]
pub struct PartlyApplied;

/// A reload that failed once it had begun writing the maps (rules, mode, the NICs' addresses):
/// the daemon writes the policy in force back.
#[derive(Debug, thiserror::Error)]
#[error("it failed after it began writing the maps")]
pub struct WroteMaps;

/// Writes each role's settings of `policy`: its mode, DHCP, the drop events' budget.
pub fn write_settings(datapath: &mut Datapath, policy: &Policy) -> anyhow::Result<()> {
    for role in Role::ALL {
        datapath.set_mode(role, policy.mode)?;
        datapath.set_dhcp(role, policy.nic(role).is_some_and(|n| n.dhcp))?;
        datapath.set_events(role, policy.drops.events_per_cpu_second(cpus()))?;
    }
    Ok(())
}

/// CPUs the datapath may run on: the event budget is per CPU.
fn cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
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

/// A NIC found somewhere other than where it was attached.
#[derive(Debug, Clone)]
pub struct Moved {
    pub role: Role,
    /// Where it was; none for a NIC the reconcile did not find.
    pub from: Option<nic::Device>,
    pub to: nic::Device,
    /// Programs attached again (legacy: the move tore the filters down); TCX links follow
    /// their device, and are only checked.
    pub reattached: bool,
    /// Re-attached, but the NIC was up before, or received packets while attaching: some may
    /// have reached it unjudged (docker-hostnic brought it up first).
    pub late: bool,
    /// From the look that found it to its programs holding there.
    pub took: Duration,
}

/// What following the NICs found.
#[derive(Debug, Default)]
pub struct Followed {
    /// NICs found where they went (or first found: [`State::absent`]) and attached there.
    pub moved: Vec<Moved>,
    /// Roles whose NIC is nowhere to be found, or could not be attached where it is now.
    pub unprotected: Vec<(Role, String)>,
    /// A NIC has a new name where it was (the record changed).
    pub renamed: bool,
    /// NICs where they were, whose programs had gone and were attached again.
    pub restored: Vec<(Role, nic::Device)>,
}

/// How often following one NIC is tried before it counts as unprotected (it may be renamed
/// between being found and being attached to).
const FOLLOW_ATTEMPTS: usize = 3;

/// Finds every NIC where it is now and, where one moved, attaches there: the NIC follower's
/// reconcile step, run on every link event. `devices` and `state` are updated in place.
pub fn follow(
    policy: &Policy,
    datapath: &mut Datapath,
    pins: &Pins,
    devices: &mut Devices,
    state: &mut State,
) -> Followed {
    let mut followed = Followed::default();
    for nic_policy in &policy.nics {
        let role = nic_policy.role;
        let others: Vec<(Role, nic::Device)> = devices
            .iter()
            .filter(|(r, _)| *r != role)
            .cloned()
            .collect();
        let Some(slot) = devices.iter_mut().find(|(r, _)| *r == role) else {
            match find_absent(policy, datapath, pins, state, nic_policy, &others) {
                Ok(found) => {
                    state.absent.retain(|r| *r != role);
                    devices.push((role, found.to.clone()));
                    followed.moved.push(found);
                }
                Err(why) => followed.unprotected.push((role, why)),
            }
            continue;
        };
        let started = Instant::now();
        let mut last_error = String::new();
        let mut done = false;
        for _ in 0..FOLLOW_ATTEMPTS {
            let now = match nic::resolve(&nic_policy.nic, Some(&nic::Place::from(&slot.1))) {
                Ok(device) => device,
                Err(e) => {
                    last_error = format!("{e:#}");
                    continue;
                }
            };
            // Never onto the other role's NIC (its programs would be replaced): this one is
            // unprotected until it is found apart.
            if let Some((other, _)) = others.iter().find(|(_, d)| now.same_device(d)) {
                last_error = format!("{now} is the {other} NIC");
                break;
            }
            if now.same_place(&slot.1) {
                if now.name != slot.1.name {
                    rename(state, role, &now);
                    followed.renamed = true;
                }
                slot.1 = now;
                // Where it was, but are our programs still on it? A NIC that left and came
                // back between two looks lost its clsact filters; a filter can be deleted.
                match crate::inspect::hooks(&slot.1, role) {
                    Ok(hooks) if !crate::inspect::enforced(&hooks) => {}
                    // Enforced; or it cannot be asked right now (renamed under the query):
                    // the next look asks again.
                    _ => {
                        done = true;
                        break;
                    }
                }
                let device = slot.1.clone();
                match attach_where_it_is(policy, datapath, pins, state, role, &device) {
                    Ok(_) => {
                        followed.restored.push((role, device));
                        done = true;
                        break;
                    }
                    Err(e) => {
                        last_error = format!("{e:#}");
                        continue;
                    }
                }
            }
            match attach_where_it_is(policy, datapath, pins, state, role, &now) {
                Ok((reattached, late)) => {
                    followed.moved.push(Moved {
                        role,
                        from: Some(slot.1.clone()),
                        to: now.clone(),
                        reattached,
                        late,
                        took: started.elapsed(),
                    });
                    slot.1 = now;
                    done = true;
                    break;
                }
                Err(e) => last_error = format!("{e:#}"),
            }
        }
        if !done {
            followed.unprotected.push((role, last_error));
        }
    }
    followed
}

/// Looks for a NIC the reconcile did not find (first where its record last had it) and
/// attaches there; why not, if it cannot.
fn find_absent(
    policy: &Policy,
    datapath: &mut Datapath,
    pins: &Pins,
    state: &mut State,
    nic_policy: &crate::policy::NicPolicy,
    others: &[(Role, nic::Device)],
) -> Result<Moved, String> {
    let role = nic_policy.role;
    let started = Instant::now();
    let last = state.attached(role).next().map(|a| nic::Place {
        ifindex: a.ifindex,
        netns: a.netns.clone(),
    });
    let mut last_error = String::new();
    for _ in 0..FOLLOW_ATTEMPTS {
        let device = match nic::resolve(&nic_policy.nic, last.as_ref()) {
            Ok(device) => device,
            Err(e) if e.is_absent() => return Err(format!("{e:#}")),
            Err(e) => {
                last_error = format!("{e:#}");
                continue;
            }
        };
        if let Some((other, _)) = others.iter().find(|(_, d)| device.same_device(d)) {
            return Err(format!("{device} is the {other} NIC"));
        }
        match attach_where_it_is(policy, datapath, pins, state, role, &device) {
            Ok((reattached, late)) => {
                return Ok(Moved {
                    role,
                    from: None,
                    to: device,
                    reattached,
                    late,
                    took: started.elapsed(),
                })
            }
            Err(e) => last_error = format!("{e:#}"),
        }
    }
    Err(last_error)
}

/// Attaches `role`'s programs to `device`, recording them in `state`. Returns whether they were
/// attached anew (legacy) rather than found following the device (TCX), and whether packets may
/// have reached it unjudged before they held.
fn attach_where_it_is(
    policy: &Policy,
    datapath: &mut Datapath,
    pins: &Pins,
    state: &mut State,
    role: Role,
    device: &nic::Device,
) -> anyhow::Result<(bool, bool)> {
    let before: Vec<Option<Attachment>> = Direction::ALL
        .iter()
        .map(|d| state.attachment(role, *d).cloned())
        .collect();
    let tcx = before
        .iter()
        .flatten()
        .next()
        .map_or(attach::use_tcx(policy.attach), |a| a.hook == Hook::Tcx);
    // A TCX link moved with its device: update the pinned link in place where it is now (a
    // defunct one, of a device that is gone, is replaced).
    let previous: Vec<Option<Attachment>> = before
        .into_iter()
        .map(|b| {
            b.map(|mut a| {
                if a.hook == Hook::Tcx {
                    a.ifindex = device.ifindex;
                    a.netns = device.netns.clone();
                }
                a
            })
        })
        .collect();
    let ensured = attach::ensure(
        datapath.role_programs(role),
        role,
        device,
        tcx,
        pins,
        [previous[0].as_ref(), previous[1].as_ref()],
        &mut attach::Places::default(),
    )
    .with_context(|| format!("attaching {role} to {device}"))?;
    let late = !tcx && ensured.maybe_unjudged();
    state.attachments.retain(|a| a.role != role);
    state.attachments.extend(ensured.attachments);
    Ok((!tcx, late))
}

/// The NIC is where it was under another name (docker-hostnic renames it `eth0`): its programs
/// stay; only the record changes.
fn rename(state: &mut State, role: Role, device: &nic::Device) {
    for a in state.attachments.iter_mut().filter(|a| a.role == role) {
        a.interface.clone_from(&device.name);
    }
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
            mac: None,
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
