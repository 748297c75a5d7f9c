//! How big each map is made at load.
//!
//! The policy map follows the compiled policy. It allocates its rules as they are added (only
//! its buckets are made at load), so its size is mostly a limit; it gets headroom for a reload,
//! whose add-before-remove holds the old and the new rules together for a moment. The
//! connection-tracking tables follow `[conntrack]`, each keying's at the configured size, and are
//! allocated in full at load (a hash map preallocates, and so does an LRU), except the wide
//! established tables (every flow but TCP over IPv4): they allocate flows as they come, as many
//! guests have few such flows.
//!
//! A pinned map is kept while its size still serves. Otherwise the loader makes a new one of the
//! wanted size, fills it, attaches the programs that use it, and only then pins it in the old
//! one's place ([`crate::datapath::Datapath::load`]): a resize is an atomic program swap, like an
//! upgrade.

use std::fmt;

use trove_isolate_common::{conntrack, maps, policy, Role};

use crate::policy::Policy;

/// The sizes wanted for the maps that follow the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Rules across both roles each policy map (one per family) has room for.
    pub policy: u32,
    /// The rules of the policy being applied.
    pub policy_rules: usize,
    pub ct_established: u32,
    pub ct_new: u32,
}

impl Capacity {
    /// The defaults, for a datapath loaded without a policy of its own.
    pub const DEFAULT: Capacity = Capacity {
        policy: 1024,
        policy_rules: 0,
        ct_established: conntrack::EST_MAX_ENTRIES,
        ct_new: conntrack::NEW_MAX_ENTRIES,
    };

    pub fn for_policy(policy: &Policy) -> Capacity {
        let rules = policy.nics.iter().map(|n| n.rules.len()).sum();
        Capacity {
            policy: Capacity::policy_room(rules),
            policy_rules: rules,
            ct_established: policy.conntrack.established_entries,
            ct_new: policy.conntrack.new_entries,
        }
    }

    /// Room for twice the rules (a reload that replaces every rule fits), and for a reload
    /// that adds a thousand.
    pub fn policy_room(rules: usize) -> u32 {
        u32::try_from(rules.saturating_mul(2).saturating_add(1024)).unwrap_or(u32::MAX)
    }

    /// Each map sized here with the size wanted.
    pub fn sized(&self) -> [(&'static str, u32); 10] {
        [
            (maps::POLICY4, self.policy),
            (maps::POLICY6, self.policy),
            (maps::TCP4_EST_MGMT, self.ct_established),
            (maps::TCP4_EST_BIZ, self.ct_established),
            (maps::CT_EST_MGMT, self.ct_established),
            (maps::CT_EST_BIZ, self.ct_established),
            (maps::TCP4_NEW_MGMT, self.ct_new),
            (maps::TCP4_NEW_BIZ, self.ct_new),
            (maps::CT_NEW_MGMT, self.ct_new),
            (maps::CT_NEW_BIZ, self.ct_new),
        ]
    }

    /// Whether a pinned `map` of `pinned` entries serves, with `in_force` rules in the policy
    /// now: a policy map while the rules in force and the new ones fit side by side (counted
    /// across both families, as the maps are sized), a flow table while it has the configured
    /// size.
    pub fn keeps(&self, map: &str, pinned: u32, in_force: usize) -> bool {
        if maps::is_policy(map) {
            return pinned as usize >= in_force.saturating_add(self.policy_rules);
        }
        self.sized()
            .iter()
            .any(|(name, wanted)| *name == map && *wanted == pinned)
    }

    /// Kernel memory the maps take, estimated from their sizes: the flow tables in full, the
    /// policy per rule.
    pub fn memory(&self) -> Memory {
        let value = std::mem::size_of::<conntrack::FlowValue>() as u64;
        let element = |key: usize| HASH_ELEMENT_HEADER + key as u64 + value;
        let (tcp4, wide) = (
            element(std::mem::size_of::<conntrack::FlowKey4>()),
            element(std::mem::size_of::<conntrack::FlowKey>()),
        );
        // Buckets are a power of two of 16 bytes (kernel/bpf/hashtab.c); a preallocated table
        // has every element at load.
        let buckets = |entries: u32| u64::from(entries).next_power_of_two() * 16;
        let (est, new) = (u64::from(self.ct_established), u64::from(self.ct_new));
        // A rule is an element of a hash allocated per entry (its value rounded up to 8 bytes;
        // counted with IPv6's key, 12 bytes more than IPv4's); the buckets of both families'
        // maps are allocated at load.
        let per_rule = HASH_ELEMENT_HEADER + std::mem::size_of::<policy::PolicyKey>() as u64 + 8;
        Memory {
            // Both keyings' new tables and the established table of TCP over IPv4 in full; the
            // other established table allocates its flows as they come.
            conntrack_per_nic: est * tcp4
                + new * (tcp4 + wide)
                + 2 * buckets(self.ct_established)
                + 2 * buckets(self.ct_new),
            conntrack_other_per_nic: est * wide,
            policy: self.policy_rules as u64 * per_rule
                + maps::POLICIES.len() as u64 * buckets(self.policy),
        }
    }
}

/// `struct htab_elem` before the key. With the bucket array this matches the kernel's own
/// account of the tables (`memlock` in the map's fdinfo, Linux 6.18).
const HASH_ELEMENT_HEADER: u64 = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// The flow tables of one NIC at load.
    pub conntrack_per_nic: u64,
    /// What one NIC's established flows other than TCP over IPv4 take when their table is full
    /// (allocated per flow).
    pub conntrack_other_per_nic: u64,
    pub policy: u64,
}

/// What `check` prints about the maps.
impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let memory = self.memory();
        writeln!(
            f,
            "maps      policy: {} rules, room for {} in each family's map (buckets at load, rules \
             as added: about {})",
            self.policy_rules,
            self.policy,
            mib(memory.policy)
        )?;
        write!(
            f,
            "          conntrack per NIC: {} established + {} new flows, each for TCP over \
             IPv4 and for the rest (allocated at load: about {} per NIC, {} for {}; other \
             established flows as they come, up to {} more per NIC)",
            self.ct_established,
            self.ct_new,
            mib(memory.conntrack_per_nic),
            mib(memory.conntrack_per_nic * Role::COUNT as u64),
            Role::ALL.map(|r| r.name()).join(" and "),
            mib(memory.conntrack_other_per_nic)
        )
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(rules: usize) -> Capacity {
        Capacity {
            policy: Capacity::policy_room(rules),
            policy_rules: rules,
            ct_established: 65_536,
            ct_new: 16_384,
        }
    }

    #[test]
    fn the_policy_map_has_room_for_a_reload_that_replaces_every_rule() {
        let c = capacity(100_000);
        assert_eq!(c.policy, 201_024);
        // Made for 100,000 rules: a reload of 100,000 others fits beside them.
        assert!(c.keeps(maps::POLICY4, c.policy, 100_000));
        // A map made for 10 rules does not take 100,000.
        assert!(!c.keeps(maps::POLICY6, Capacity::policy_room(10), 10));
        assert_eq!(Capacity::policy_room(usize::MAX), u32::MAX);
    }

    #[test]
    fn flow_tables_are_kept_only_at_the_configured_size() {
        let c = capacity(10);
        assert!(c.keeps(maps::TCP4_EST_BIZ, 65_536, 0));
        assert!(c.keeps(maps::CT_EST_BIZ, 65_536, 0));
        assert!(c.keeps(maps::TCP4_NEW_MGMT, 16_384, 0));
        assert!(!c.keeps(maps::TCP4_EST_BIZ, 16_384, 0));
        assert!(!c.keeps(maps::CT_NEW_MGMT, 65_536, 0));
    }

    #[test]
    fn check_reports_what_will_be_allocated() {
        let text = capacity(10).to_string();
        assert!(text.contains("policy: 10 rules, room for 1044"), "{text}");
        assert!(
            text.contains("65536 established + 16384 new flows"),
            "{text}"
        );
        assert!(text.contains("MiB per NIC"), "{text}");
    }
}
