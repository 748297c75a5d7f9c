//! Attaching a program to a device: "ensure", not "do".
//!
//! [`ensure`] leaves `program` attached to `device` whatever was there before: a live pinned TCX
//! link on the same device is updated in place (`bpf_link_update`: no instant without a program),
//! our legacy filter is replaced at its fixed priority/handle, anything else is created (and a TCX
//! link pinned). Running it twice is harmless, which makes first start, restart, upgrade and
//! re-attach after a NIC move one code path. A first start with TCX takes the hooks ahead of
//! time with a placeholder ([`hold_places`]), whose links the programs take over in place.

use std::{fs, io, path::Path};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};
use trove_isolate_common::{program_name, Direction, Role, PLACE_PROGRAM};

use crate::{
    datapath::Pair,
    netns,
    nic::{self, Device},
    pins::Pins,
    policy::AttachMode,
    state::{Attachment, Hook},
};

/// Our cls_bpf filters' place on the clsact qdisc: fixed, so a restart finds and replaces them,
/// and first (the lowest priority number runs first), so no earlier filter can pass a packet
/// before we judge it.
const LEGACY_PRIORITY: u16 = 1;
const LEGACY_HANDLE: u32 = 0x7001;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("{what} {program} on {device}")]
    Program {
        what: &'static str,
        program: &'static str,
        device: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{what} {path}")]
    Pin {
        what: &'static str,
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Whether a clsact filter at `priority`/`handle` is in our place.
pub fn is_our_filter(priority: u16, handle: u32) -> bool {
    priority == LEGACY_PRIORITY && handle == LEGACY_HANDLE
}

pub fn tc_attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

/// TCX needs Linux 6.6; `auto` picks it there and the clsact/cls_bpf path before.
pub fn use_tcx(mode: AttachMode) -> bool {
    match mode {
        AttachMode::Tcx => true,
        AttachMode::Legacy => false,
        AttachMode::Auto => {
            KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
        }
    }
}

/// Ensures both of `role`'s programs (ingress, egress) are attached to `device`, in one visit to
/// its namespace (the NIC follower races docker-hostnic bringing the NIC up). `previous` is what
/// the state file says was attached for each direction, if anything; `held`, the hooks this
/// start took with the placeholder ([`Places`]), whose links the programs take over.
pub fn ensure(
    programs: Pair<'_>,
    role: Role,
    device: &Device,
    tcx: bool,
    pins: &Pins,
    previous: [Option<&Attachment>; 2],
    held: &mut Places,
) -> Result<Ensured, AttachError> {
    let mut held = held.take(role, device);
    let (hooks, before, after, mac) = netns::run_in(device.netns.as_deref(), || {
        // The device just before and just after: how much it may have received unjudged.
        let before = nic::snapshot(device.ifindex);
        let mut hooks = Vec::new();
        for (((direction, previous), program), held) in Direction::ALL
            .into_iter()
            .zip(previous)
            .zip(programs)
            .zip(held.iter_mut())
        {
            let name = program_name(role, direction);
            let same_device =
                previous.is_some_and(|p| p.ifindex == device.ifindex && p.netns == device.netns);
            let hook = if tcx {
                ensure_tcx(
                    program,
                    name,
                    direction,
                    device,
                    &pins.link(role, direction),
                    same_device,
                    held.take(),
                )?
            } else {
                let replace =
                    same_device && matches!(previous.map(|p| &p.hook), Some(Hook::Legacy { .. }));
                ensure_legacy(program, name, direction, device, replace)?
            };
            hooks.push((direction, hook));
        }
        // By its ifindex, as attached: the name may have changed meanwhile.
        let mac = nix::net::if_::if_indextoname(device.ifindex)
            .ok()
            .and_then(|name| nic::mac_of(&name.to_string_lossy()));
        Ok::<_, AttachError>((hooks, before, nic::snapshot(device.ifindex), mac))
    })??;
    let attachments = hooks
        .into_iter()
        .map(|(direction, hook)| Attachment {
            role,
            direction,
            interface: device.name.clone(),
            ifindex: device.ifindex,
            netns: device.netns.clone(),
            hook,
            mac,
        })
        .collect();
    Ok(Ensured {
        attachments,
        before,
        after,
    })
}

/// The hooks a first start holds with the placeholder ([`PLACE_PROGRAM`]) while its programs
/// are verified ([`hold_places`]): unpinned links, so a start that dies or fails lets them go.
#[derive(Default)]
pub struct Places {
    held: Vec<(Role, Direction, Device, SchedClassifierLink)>,
}

impl Places {
    /// The links held on `device` for `role`'s hooks, ingress then egress.
    fn take(&mut self, role: Role, device: &Device) -> [Option<SchedClassifierLink>; 2] {
        Direction::ALL.map(|direction| {
            let at = self.held.iter().position(|(r, d, on, _)| {
                *r == role && *d == direction && on.same_device(device)
            })?;
            Some(self.held.swap_remove(at).3)
        })
    }
}

/// Attaches `placeholder` (loaded) first on both hooks of each of `devices`, for [`ensure`] to
/// put the roles' programs on in place. A hook it cannot take is left to [`ensure`], which
/// says why.
pub fn hold_places(placeholder: &mut SchedClassifier, devices: &[(Role, Device)]) -> Places {
    let mut places = Places::default();
    for (role, device) in devices {
        let held = netns::run_in(device.netns.as_deref(), || {
            Direction::ALL.map(|direction| {
                let id = placeholder
                    .attach_with_options(
                        &device.name,
                        tc_attach_type(direction),
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .inspect_err(|e| log::debug!("{PLACE_PROGRAM} on {}: {e}", device.name))
                    .ok()?;
                placeholder.take_link(id).ok()
            })
        });
        let Ok(held) = held else { continue };
        for (direction, link) in Direction::ALL.into_iter().zip(held) {
            if let Some(link) = link {
                places.held.push((*role, direction, device.clone(), link));
            }
        }
    }
    log::debug!("{} hooks held by {PLACE_PROGRAM}", places.held.len());
    places
}

/// What [`ensure`] attached, and the device just before and just after.
pub struct Ensured {
    pub attachments: Vec<Attachment>,
    pub before: Option<nic::Snapshot>,
    pub after: Option<nic::Snapshot>,
}

impl Ensured {
    /// Whether packets may have reached the device unjudged while attaching: it was up before
    /// (since when is unknown), or it received some meanwhile.
    pub fn maybe_unjudged(&self) -> bool {
        match (self.before, self.after) {
            (Some(b), Some(a)) => b.up || a.rx_packets > b.rx_packets,
            (Some(b), None) => b.up,
            _ => true,
        }
    }
}

fn program_error(
    what: &'static str,
    program: &'static str,
    device: &Device,
) -> impl FnOnce(aya::programs::ProgramError) -> AttachError {
    let device = device.name.clone();
    move |source| AttachError::Program {
        what,
        program,
        device,
        source: Box::new(source),
    }
}

/// Puts `program` on the pinned TCX link at `link_pin` in place, wherever its device is now
/// (the device need not be found); whether it did (no pin, or a defunct link: no).
pub(crate) fn update_tcx(program: &mut SchedClassifier, link_pin: &Path) -> bool {
    if !link_pin.exists() {
        return false;
    }
    let Ok(pinned) = PinnedLink::from_pin(link_pin) else {
        return false;
    };
    let Ok(link) = SchedClassifierLink::try_from(FdLink::from(pinned)) else {
        return false;
    };
    let Ok(id) = program.attach_to_link(link) else {
        return false;
    };
    // The pin keeps it; forgetting our handle must not detach it.
    match program.take_link(id) {
        Ok(link) => {
            std::mem::forget(link);
            true
        }
        Err(_) => false,
    }
}

/// `held`: the placeholder's link on this hook ([`Places`]), which the program takes over in
/// place.
pub(crate) fn ensure_tcx(
    program: &mut SchedClassifier,
    name: &'static str,
    direction: Direction,
    device: &Device,
    link_pin: &Path,
    same_device: bool,
    held: Option<SchedClassifierLink>,
) -> Result<Hook, AttachError> {
    // Update the live link in place; if it went defunct (device gone) attach afresh.
    if same_device && update_tcx(program, link_pin) {
        return Ok(Hook::Tcx);
    }
    // Attach the new link first, then replace the pin: the old link (if any, on another device
    // or defunct) goes only once the new one holds. The placeholder's link, where it holds the
    // hook, is that new link: it took its place first in the chain when the verifier began. Not
    // on a device that moved meanwhile (docker-hostnic): the link went with it, and the record
    // would say it is where it was; attached by name, it fails as before. A placeholder's link
    // that is not used, or will not take the program, goes (dropped: unpinned).
    let held = held.filter(|_| {
        nix::net::if_::if_nametoindex(device.name.as_str()).is_ok_and(|i| i == device.ifindex)
    });
    let placed = held.and_then(|link| {
        program
            .attach_to_link(link)
            .inspect(|_| log::debug!("{name} on {}: in the placeholder's place", device.name))
            .inspect_err(|e| {
                log::debug!("{name} on {}: placeholder not replaced: {e}", device.name)
            })
            .ok()
    });
    let id = match placed {
        Some(id) => id,
        None => program
            .attach_with_options(
                &device.name,
                tc_attach_type(direction),
                // First in the chain: under TCX a program that passes a packet ends the chain,
                // so anything before us could let a packet by unjudged.
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(program_error("attaching (tcx)", name, device))?,
    };
    let link = program
        .take_link(id)
        .map_err(program_error("taking link of", name, device))?;
    let fd_link = FdLink::try_from(link).map_err(|e| AttachError::Pin {
        what: "converting link for",
        path: link_pin.display().to_string(),
        source: Box::new(e),
    })?;
    if let Some(dir) = link_pin.parent() {
        fs::create_dir_all(dir).map_err(|e| AttachError::Pin {
            what: "creating",
            path: dir.display().to_string(),
            source: Box::new(e),
        })?;
    }
    // bpffs refuses names with a dot.
    let mut staged = link_pin.as_os_str().to_owned();
    staged.push("_new");
    let staged = std::path::PathBuf::from(staged);
    let _ = fs::remove_file(&staged);
    fd_link.pin(&staged).map_err(|e| AttachError::Pin {
        what: "pinning link at",
        path: staged.display().to_string(),
        source: Box::new(e),
    })?;
    // rename(2) over the old pin drops the old link's last reference: it detaches now.
    fs::rename(&staged, link_pin).map_err(|e| AttachError::Pin {
        what: "moving link pin to",
        path: link_pin.display().to_string(),
        source: Box::new(e),
    })?;
    Ok(Hook::Tcx)
}

fn ensure_legacy(
    program: &mut SchedClassifier,
    name: &'static str,
    direction: Direction,
    device: &Device,
    replace: bool,
) -> Result<Hook, AttachError> {
    ensure_filter(
        program,
        name,
        direction,
        device,
        replace,
        (LEGACY_PRIORITY, LEGACY_HANDLE),
    )
}

/// [`ensure_legacy`] at the filter place `(priority, handle)`.
pub(crate) fn ensure_filter(
    program: &mut SchedClassifier,
    name: &'static str,
    direction: Direction,
    device: &Device,
    replace: bool,
    (priority, handle): (u16, u32),
) -> Result<Hook, AttachError> {
    let attach_type = tc_attach_type(direction);
    if let Err(e) = tc::qdisc_add_clsact(&device.name) {
        let exists = match &e {
            tc::TcError::AlreadyAttached => true,
            tc::TcError::NetlinkError(n) => {
                n.raw_os_error() == Some(nix::errno::Errno::EEXIST as i32)
            }
            _ => false,
        };
        if !exists {
            return Err(program_error("adding clsact for", name, device)(e.into()));
        }
    }
    let tc_handle = TcHandle::from(handle);
    if replace {
        // Swap the program of our filter in place (netlink replace, no gap).
        if let Ok(link) =
            SchedClassifierLink::attached(&device.name, attach_type, priority, tc_handle, None)
        {
            if let Ok(id) = program.attach_to_link(link) {
                forget_link(program, id);
                return Ok(Hook::Legacy { priority, handle });
            }
        }
    }
    let created = program.attach_with_options(
        &device.name,
        attach_type,
        TcAttachOptions::Netlink(NlOptions {
            priority,
            handle: tc_handle,
            classid: None,
        }),
    );
    let id = match created {
        Ok(id) => id,
        // Our filter is there but the record was lost: replace it.
        Err(_) => {
            let link =
                SchedClassifierLink::attached(&device.name, attach_type, priority, tc_handle, None)
                    .map_err(|e| {
                        program_error("finding filter for", name, device)(
                            tc::TcError::IoError(e).into(),
                        )
                    })?;
            program.attach_to_link(link).map_err(program_error(
                "attaching (legacy)",
                name,
                device,
            ))?
        }
    };
    forget_link(program, id);
    Ok(Hook::Legacy { priority, handle })
}

/// Our filters' place on the clsact qdisc.
pub fn legacy_hook() -> Hook {
    Hook::Legacy {
        priority: LEGACY_PRIORITY,
        handle: LEGACY_HANDLE,
    }
}

/// cls_bpf filters stay after the process exits unless detached; dropping aya's link handle would
/// detach, so it is forgotten on purpose.
fn forget_link(program: &mut SchedClassifier, id: aya::programs::tc::SchedClassifierLinkId) {
    if let Ok(link) = program.take_link(id) {
        std::mem::forget(link);
    }
}

/// Detaches a pinned TCX link before returning. Deleting the pin alone would drop the link's last
/// reference from bpffs, whose release runs later on a kernel work queue: for a moment after
/// `detach` returned the program would still judge packets. So the link is opened, its pin
/// removed, and our descriptor closed, which releases it in this call.
pub fn remove_tcx(link_pin: &Path) -> Result<(), AttachError> {
    let pin_error = |what, e: Box<dyn std::error::Error + Send + Sync>| AttachError::Pin {
        what,
        path: link_pin.display().to_string(),
        source: e,
    };
    if !link_pin.exists() {
        return Ok(());
    }
    match PinnedLink::from_pin(link_pin) {
        Ok(pinned) => {
            let link = pinned
                .unpin()
                .map_err(|e| pin_error("removing", Box::new(e)))?;
            drop(link);
            Ok(())
        }
        // Not a link we can open (a stale file): removing it is all there is to do.
        Err(_) => match fs::remove_file(link_pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(pin_error("removing", Box::new(e))),
        },
    }
}

/// Removes one recorded attachment. Missing things count as removed.
pub fn remove(attachment: &Attachment, link_pin: &Path) -> Result<(), AttachError> {
    match &attachment.hook {
        Hook::Tcx => remove_tcx(link_pin),
        Hook::Legacy { priority, handle } => remove_filter(
            attachment.direction,
            attachment.ifindex,
            attachment.netns.as_deref(),
            (*priority, *handle),
        ),
    }
}

/// Removes a cls_bpf filter at `(priority, handle)` from the device `ifindex` in `netns`. A
/// device or namespace gone counts as removed.
pub(crate) fn remove_filter(
    direction: Direction,
    ifindex: u32,
    netns: Option<&Path>,
    (priority, handle): (u16, u32),
) -> Result<(), AttachError> {
    let in_netns = netns::run_in(netns, || {
        // By its ifindex: the NIC may have been renamed since (docker-hostnic names it eth0 once
        // in its sandbox). None here: it left, and its filters with it (another device may have
        // taken its name since).
        let interface = match nix::net::if_::if_indextoname(ifindex) {
            Ok(name) => name.to_string_lossy().into_owned(),
            Err(nix::errno::Errno::ENXIO | nix::errno::Errno::ENODEV) => return Ok(()),
            Err(e) => {
                return Err(AttachError::Pin {
                    what: "finding the device of a filter",
                    path: format!("ifindex {ifindex}"),
                    source: Box::new(e),
                })
            }
        };
        let Ok(link) = SchedClassifierLink::attached(
            &interface,
            tc_attach_type(direction),
            priority,
            TcHandle::from(handle),
            None,
        ) else {
            return Ok(()); // the device is gone, and its filters with it
        };
        use aya::programs::links::Link as _;
        match link.detach() {
            Ok(()) => Ok(()),
            Err(aya::programs::ProgramError::TcError(tc::TcError::NetlinkError(e)))
                if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) =>
            {
                Ok(())
            }
            Err(source) => Err(AttachError::Program {
                what: "detaching",
                program: "filter",
                device: interface,
                source: Box::new(source),
            }),
        }
    });
    match in_netns {
        Ok(result) => result,
        // The namespace is gone, and the device's filters with it (a device leaving a namespace
        // loses its clsact qdisc).
        Err(netns::NetnsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(())
        }
        // A file left where the namespace was (Docker unmounts a sandbox's at the container's
        // stop, and deletes it later): the same.
        Err(_) if crate::nic::namespace_id(netns).is_none() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker unmounts a sandbox's namespace file at the container's stop and deletes it later:
    /// the device's filters went with the namespace, and there is nothing to remove.
    #[test]
    fn a_filter_in_a_namespace_that_is_gone_is_gone() {
        let file = std::env::temp_dir().join(format!("ti-not-a-netns-{}", std::process::id()));
        fs::write(&file, b"").expect("a file where a namespace was");
        let removed = remove_filter(Direction::Ingress, 2, Some(&file), (2, 0x7002));
        let _ = fs::remove_file(&file);
        assert!(removed.is_ok(), "{removed:?}");
    }
}
