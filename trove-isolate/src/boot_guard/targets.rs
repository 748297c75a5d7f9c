//! The NICs a start holds: where `[boot]` names them, and where those held before moved.

use std::path::Path;

use anyhow::Context as _;

use super::{enforced_by_a_policy, record::label, Record, Settings};
use trove_isolate_common::Role;

use crate::{
    netns,
    nic::{self, Device},
    state::{Hook, State},
};

/// A NIC to hold: where it is now, and its MAC.
pub(super) struct Target {
    pub device: Device,
    pub mac: Option<[u8; 6]>,
    /// Found by the MAC an earlier start recorded, away from where `[boot]` names NICs: the name
    /// it had there.
    pub moved_from: Option<String>,
    /// Held by the guard's shut pair (ARP and neighbour discovery alone): a NIC away from the
    /// namespace `[boot]` names, or a business NIC whose policy lapsed. The guest's boot needs
    /// neither, and through them the database would reach the metadata service.
    pub shut: bool,
}

impl Target {
    pub fn label(&self) -> String {
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
/// found with the MAC is held (a device a container made with it as well: closed, never open),
/// by the shut pair where it is away from `[boot]`'s namespace.
pub(super) fn targets(
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
    let home = nic::namespace_id(settings.netns.as_deref());
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
                let away = home.is_none() || nic::namespace_id(device.netns.as_deref()) != home;
                targets.push(Target {
                    device,
                    mac: Some(mac),
                    moved_from: moved.then(|| name.clone()),
                    shut: away,
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
                        shut: false,
                    });
                }
                Err(_) => missing.push(name),
            }
        }
        (found, missing)
    })?;
    Ok((found, missing))
}

/// The NICs of the pinned policy `state` whose filters are gone, where they are now, and those
/// found in no namespace (by the name the state gives them).
///
/// docker-hostnic moves the business NIC at each start and stop of the database container, and
/// before Linux 6.6 a move tears the NIC's filters down: only a running daemon attaches the
/// policy again where the NIC went. A start that cannot enforce holds such a NIC with the guard
/// rather than leave it open. A TCX link moves with its device (and its pin holds it): only
/// filters lapse. A NIC still where the record has it (with the MAC it records) is that device
/// alone (a VLAN on it has its MAC too); one that is not is followed by its MAC into every
/// namespace (records of earlier versions have none: it is looked for where it was only). A
/// business NIC is held by the shut pair: what its policy passed was the database's alone.
pub(super) fn lapsed(state: &State) -> (Vec<Target>, Vec<String>) {
    let mut targets: Vec<Target> = Vec::new();
    let mut lost = Vec::new();
    let mut seen: Vec<(u32, Option<&Path>)> = Vec::new();
    for a in &state.attachments {
        let place = (a.ifindex, a.netns.as_deref());
        if !matches!(a.hook, Hook::Legacy { .. }) || seen.contains(&place) {
            continue;
        }
        seen.push(place);
        let here = netns::run_in(a.netns.as_deref(), || {
            let name = nix::net::if_::if_indextoname(a.ifindex).ok()?;
            let name = name.to_string_lossy().into_owned();
            let mac = nic::mac_of(&name);
            Some((name, mac))
        })
        .ok()
        .flatten()
        .filter(|(_, mac)| a.mac.is_none() || *mac == a.mac)
        .map(|(name, _)| Device {
            name,
            ifindex: a.ifindex,
            netns: a.netns.clone(),
            up: false,
        });
        let devices = match (here, a.mac) {
            (Some(device), _) => vec![device],
            (None, Some(mac)) => nic::with_mac(mac, a.netns.as_deref()),
            (None, None) => Vec::new(),
        };
        if devices.is_empty() {
            lost.push(a.interface.clone());
        }
        for device in devices {
            if enforced_by_a_policy(&device) || targets.iter().any(|t| t.device.same_place(&device))
            {
                continue;
            }
            let moved = device.name != a.interface || device.netns != a.netns;
            targets.push(Target {
                device,
                mac: a.mac,
                moved_from: moved.then(|| a.interface.clone()),
                shut: a.role == Role::Business,
            });
        }
    }
    lost.sort();
    lost.dedup();
    (targets, lost)
}
