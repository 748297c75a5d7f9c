//! The record of what is attached where, written after every successful reconcile.
//!
//! TCX links are found again through their pins; legacy cls_bpf filters cannot be pinned, so
//! `detach` and the next start find them through this record (device, namespace, priority,
//! handle). Written to a temporary file and renamed, so a reader never sees half a record.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use trove_isolate_common::{Direction, Mode, Role};

/// How one program is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Hook {
    /// A TCX link, pinned at `Pins::link(role, direction)`.
    Tcx,
    /// A cls_bpf filter on the clsact qdisc.
    Legacy { priority: u16, handle: u32 },
}

impl Hook {
    pub fn name(&self) -> &'static str {
        match self {
            Hook::Tcx => "tcx",
            Hook::Legacy { .. } => "legacy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub role: Role,
    pub direction: Direction,
    pub interface: String,
    pub ifindex: u32,
    pub netns: Option<PathBuf>,
    pub hook: Hook,
    /// The NIC's MAC: a start that cannot enforce finds it by it where docker-hostnic moved it
    /// while no daemon ran (before Linux 6.6 the move tears the filter down), and guards it
    /// there (`boot_guard::hold`). Absent from records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The mode of the policy in force.
    pub mode: Mode,
    pub attachments: Vec<Attachment>,
    /// Policy entries per role, for status and metrics after a restart.
    pub policy_entries: Vec<(Role, usize)>,
    /// The daemon that wrote the record and the config it runs, for `trove-isolate reload`.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// The outcome of the daemon's last reload.
    #[serde(default)]
    pub reload: Option<ReloadRecord>,
    /// The last move of each role's NIC the daemon followed.
    #[serde(default)]
    pub moves: Vec<MoveRecord>,
    /// The host names of the policy in force and the addresses it reaches them at: a restart
    /// while DNS does not answer keeps them (`resolve::Recalled`), as a failed refresh does.
    #[serde(default)]
    pub names: Vec<NameAddresses>,
    /// Roles whose NIC the last reconcile did not find: their attachments are as recorded
    /// before (a TCX link turned to the programs loaded since), until the daemon finds the NIC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<Role>,
}

/// A host name, the addresses the policy in force has for it and the rules they are in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAddresses {
    pub host: String,
    pub addresses: Vec<IpAddr>,
    /// What each rule of the name allows besides the address: a config edited since (the name
    /// named in another key) reaches the recalled addresses only where the policy in force did.
    #[serde(default)]
    pub rules: Vec<NameRule>,
}

/// A rule of a host name, its address aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRule {
    pub role: Role,
    pub direction: Direction,
    pub proto: u8,
    pub port: u16,
}

impl NameAddresses {
    pub fn of(policy: &crate::policy::Policy) -> Vec<NameAddresses> {
        policy
            .names
            .iter()
            .map(|n| {
                let mut rules: Vec<NameRule> = Vec::new();
                for nic in &policy.nics {
                    for r in nic
                        .rules
                        .iter()
                        .filter(|r| r.host.as_deref() == Some(&n.host))
                    {
                        let rule = NameRule {
                            role: nic.role,
                            direction: r.direction,
                            proto: r.proto,
                            port: r.port,
                        };
                        if !rules.contains(&rule) {
                            rules.push(rule);
                        }
                    }
                }
                NameAddresses {
                    host: n.host.clone(),
                    addresses: n.addresses.clone(),
                    rules,
                }
            })
            .collect()
    }
}

/// A NIC the daemon followed to a new place (docker-hostnic moves the business NIC at every
/// start of the database container).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub role: Role,
    /// Where it was and where it is now: `NAME (ifindex N) in NETNS`.
    pub from: String,
    pub to: String,
    /// When the daemon found it there (Unix time, ms).
    pub at_unix_ms: u64,
    /// How long finding it and attaching there took.
    pub reattach_ms: f64,
    /// Whether the programs had to be attached again (legacy: the move tore down the filters;
    /// TCX links follow the device).
    pub reattached: bool,
    /// Whether the NIC was already up when attaching began: packets may have reached it
    /// unjudged in between.
    pub after_up: bool,
}

impl Default for State {
    fn default() -> State {
        State {
            mode: Mode::Enforce,
            attachments: Vec::new(),
            policy_entries: Vec::new(),
            pid: None,
            config: None,
            reload: None,
            moves: Vec::new(),
            names: Vec::new(),
            absent: Vec::new(),
        }
    }
}

impl State {
    /// What is attached for `role`, either direction.
    pub fn attached(&self, role: Role) -> impl Iterator<Item = &Attachment> {
        self.attachments.iter().filter(move |a| a.role == role)
    }

    pub fn attachment(&self, role: Role, direction: Direction) -> Option<&Attachment> {
        self.attached(role).find(|a| a.direction == direction)
    }
}

/// What the last reload did: `trove-isolate reload` waits for `attempt` to move on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRecord {
    /// 1 for the daemon's first reload, then counting up.
    pub attempt: u64,
    pub ok: bool,
    /// What is enforced now, or why the reload was refused.
    pub message: String,
}

impl State {
    /// The record at `path`; `None` when there is none.
    pub fn read(path: &Path) -> anyhow::Result<Option<State>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading state file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_json(path, self)
    }
}

/// Writes `value` as JSON to `path` through a temporary file renamed over it, so a reader never
/// sees half a record.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let dir = path.parent().context("a record file has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written by an earlier version (names as strings, no pid or reload) still reads,
    /// so an upgraded daemon adopts what the old one attached.
    #[test]
    fn an_earlier_record_reads_typed() {
        let old = r#"{
          "mode": "audit",
          "attachments": [
            {"role": "business", "direction": "egress", "interface": "eth0", "ifindex": 7,
             "netns": "/run/netns/db", "hook": {"kind": "legacy", "priority": 32752, "handle": 28673}}
          ],
          "policy_entries": [["management", 7], ["business", 3]]
        }"#;
        let state: State = serde_json::from_str(old).expect("the earlier record reads");
        assert_eq!(state.mode, Mode::Audit);
        let a = state
            .attachment(Role::Business, Direction::Egress)
            .expect("the attachment");
        assert_eq!(
            a.hook,
            Hook::Legacy {
                priority: 32752,
                handle: 28673
            }
        );
        assert_eq!(
            state.policy_entries,
            [(Role::Management, 7), (Role::Business, 3)]
        );
        assert!(state.pid.is_none() && state.reload.is_none());
        let again: State =
            serde_json::from_str(&serde_json::to_string(&state).expect("writes")).expect("reads");
        assert_eq!(again, state);
        let bad = old.replace("\"business\", \"direction\"", "\"database\", \"direction\"");
        assert!(
            serde_json::from_str::<State>(&bad).is_err(),
            "an unknown role read"
        );
    }
}
