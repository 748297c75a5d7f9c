//! Every name trove-isolate leaves behind, in one place.
//!
//! Maps are pinned under `<pin_path>/<map>_v<LAYOUT_VERSION>` so an upgraded loader with a new map
//! layout never reuses an incompatible pin; TCX links under `<pin_path>/links/<role>_<direction>`.
//! bpffs holds only BPF objects, so the record of what is attached where (the state file, needed
//! to find legacy cls_bpf filters again) lives under `/run/trove-isolate`, named after the pin path.

use std::path::{Path, PathBuf};

use trove_isolate_common::{Direction, Role, LAYOUT_VERSION};

/// Where state files live: runtime data, gone at reboot like the pins themselves.
pub const STATE_DIR: &str = "/run/trove-isolate";

/// How the boot guard's link pins begin.
pub const GUARD_LINK_PREFIX: &str = "guard_";

#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// One spelling per directory (`//` and `.` dropped, as `Path::components` reads them), so
    /// the state file and the lock beside it are one for every way a config writes the path.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into().components().collect(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pin of a map of the eBPF object (`trove_isolate_common::maps`).
    pub fn map(&self, name: &str) -> PathBuf {
        self.root
            .join(format!("{}_v{LAYOUT_VERSION}", name.to_ascii_lowercase()))
    }

    /// Map pins under the root left by another layout version: an upgrade removes them once the
    /// current layout is in force (a new layout starts from fresh maps; nothing reads the old).
    pub fn stale_maps(&self) -> Vec<PathBuf> {
        let current: Vec<PathBuf> = trove_isolate_common::maps::ALL
            .iter()
            .map(|name| self.map(name))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let versioned = name
                    .rsplit_once("_v")
                    .is_some_and(|(_, v)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
                versioned && p.is_file() && !current.contains(p)
            })
            .collect()
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The pin of the TCX link of (role, direction).
    pub fn link(&self, role: Role, direction: Direction) -> PathBuf {
        self.links_dir()
            .join(format!("{}_{}", role.name(), direction.name()))
    }

    /// The pin of the boot guard's TCX link of (device, direction): an ifindex names a device
    /// in its namespace (`namespace`: its inode), and the guard follows a NIC into others.
    pub fn guard_link(&self, namespace: u64, ifindex: u32, direction: Direction) -> PathBuf {
        self.links_dir().join(format!(
            "{GUARD_LINK_PREFIX}{namespace}_{ifindex}_{}",
            direction.name()
        ))
    }

    /// The boot guard's record of what it holds, next to the state file.
    pub fn guard_record(&self) -> PathBuf {
        self.state_file().with_extension("guard.json")
    }

    /// The daemon's drop-event socket, next to the state file.
    pub fn drops_socket(&self) -> PathBuf {
        self.state_file().with_extension("drops.sock")
    }

    /// The file whose lock the daemon holds while it runs (`pin_lock`), next to the state file.
    pub fn lock_file(&self) -> PathBuf {
        self.state_file().with_extension("lock")
    }

    /// The state file of this pin path: `/sys/fs/bpf/trove-isolate` → `sys-fs-bpf-trove-isolate.json`.
    pub fn state_file(&self) -> PathBuf {
        let escaped: String = self
            .root
            .to_string_lossy()
            .trim_matches('/')
            .chars()
            .map(|c| if c == '/' { '-' } else { c })
            .collect();
        Path::new(STATE_DIR).join(format!("{escaped}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_maps_are_other_layout_versions_only() {
        let dir = std::env::temp_dir().join(format!("ti-pins-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("links")).expect("temp dir");
        let pins = Pins::new(&dir);
        let old = dir.join(format!("policy_v{}", LAYOUT_VERSION + 1));
        for file in [
            pins.map("POLICY4"),
            pins.map("COUNTERS"),
            old.clone(),
            dir.join("notes_vx"),
        ] {
            std::fs::write(&file, b"").expect("temp file");
        }
        assert_eq!(pins.stale_maps(), vec![old]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn names_carry_the_layout_version() {
        let pins = Pins::new("/sys/fs/bpf/trove-isolate");
        assert_eq!(
            pins.map("POLICY4"),
            Path::new(&format!(
                "/sys/fs/bpf/trove-isolate/policy4_v{LAYOUT_VERSION}"
            ))
        );
        assert_eq!(
            pins.link(Role::Business, Direction::Egress),
            Path::new("/sys/fs/bpf/trove-isolate/links/business_egress")
        );
        assert_eq!(
            pins.state_file(),
            Path::new("/run/trove-isolate/sys-fs-bpf-trove-isolate.json")
        );
        for spelling in ["/sys/fs/bpf//trove-isolate/", "/sys/fs/bpf/./trove-isolate"] {
            assert_eq!(
                Pins::new(spelling).lock_file(),
                pins.lock_file(),
                "{spelling}"
            );
        }
    }
}
