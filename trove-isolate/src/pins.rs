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

#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pin of a map of the eBPF object (`trove_isolate_common::maps`).
    pub fn map(&self, name: &str) -> PathBuf {
        self.root
            .join(format!("{}_v{LAYOUT_VERSION}", name.to_ascii_lowercase()))
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The pin of the TCX link of (role, direction).
    pub fn link(&self, role: Role, direction: Direction) -> PathBuf {
        self.links_dir()
            .join(format!("{}_{}", role.name(), direction.name()))
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
    fn names_carry_the_layout_version() {
        let pins = Pins::new("/sys/fs/bpf/trove-isolate");
        assert_eq!(
            pins.map("POLICY"),
            Path::new(&format!(
                "/sys/fs/bpf/trove-isolate/policy_v{LAYOUT_VERSION}"
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
    }
}
