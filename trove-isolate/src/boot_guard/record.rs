//! What the guard holds, where, and how messages name it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use trove_isolate_common::Direction;

use crate::{netns, nic, pins::Pins, state::Hook};

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
    /// Held by the shut pair: ARP and neighbour discovery alone (`guard::program_name`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shut: bool,
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
    pub(super) fn original(&self) -> String {
        self.moved_from
            .clone()
            .unwrap_or_else(|| self.interface.clone())
    }

    /// Whether the device it was made on is still where it was (with its MAC, if recorded). A
    /// namespace this process may not enter is taken to hold it still.
    pub(super) fn present(&self) -> bool {
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

pub(super) fn label(interface: &str, netns: Option<&Path>, moved_from: Option<&str>) -> String {
    match (moved_from, netns) {
        (Some(from), Some(netns)) => format!("{from} (now {interface} in {})", netns.display()),
        (Some(from), None) => format!("{from} (now {interface} in this namespace)"),
        (None, _) => interface.to_owned(),
    }
}

/// Each name once, in order.
pub(super) fn unique(names: impl IntoIterator<Item = String>) -> Vec<String> {
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

    pub(super) fn write(&self, pins: &Pins) -> anyhow::Result<()> {
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

    /// Those of [`Record::interfaces`] the shut pair holds.
    pub fn shut_interfaces(&self) -> Vec<String> {
        unique(
            self.attachments
                .iter()
                .filter(|a| a.shut && a.present())
                .map(GuardAttachment::label),
        )
    }

    /// The NICs held before that are no longer where the record has them, nor held elsewhere:
    /// a later start looks for them by their MAC.
    pub fn lost(&self) -> Vec<String> {
        unique(self.lost_nics().iter().map(|a| a.original()))
    }

    /// [`Record::lost`], each NIC's entries.
    pub(super) fn lost_nics(&self) -> Vec<&GuardAttachment> {
        let (here, gone): (Vec<&GuardAttachment>, Vec<&GuardAttachment>) =
            self.attachments.iter().partition(|a| a.present());
        gone.into_iter()
            .filter(|a| a.mac.is_none() || !here.iter().any(|h| h.mac == a.mac))
            .collect()
    }

    /// Whether each entry's NIC is where the entry has it, and the MACs of those that are.
    pub(super) fn presence(&self) -> (Vec<bool>, Vec<[u8; 6]>) {
        let present: Vec<bool> = self.attachments.iter().map(|a| a.present()).collect();
        let held_macs = self
            .attachments
            .iter()
            .zip(&present)
            .filter(|(_, here)| **here)
            .filter_map(|(a, _)| a.mac)
            .collect();
        (present, held_macs)
    }

    /// Drops the entries of NICs held now where they moved to: nothing of the guard's is left
    /// where they were (a filter went with the move; a TCX link moved with the NIC, shut by
    /// `settle_old_links`, and its pin stays until `release`). One held nowhere stays, to be
    /// looked for by its MAC again. Whether anything was dropped.
    pub(super) fn forget_old_places(&mut self) -> bool {
        let (present, held_macs) = self.presence();
        let mut here = present.into_iter();
        let before = self.attachments.len();
        self.attachments.retain(|a| {
            here.next().unwrap_or(true) || !a.mac.is_some_and(|m| held_macs.contains(&m))
        });
        self.attachments.len() != before
    }
}
