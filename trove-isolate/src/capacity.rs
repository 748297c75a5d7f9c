//! How big each map is made at load.
//!
//! The policy maps (arrays of buckets, `rule_table`) follow the compiled policy, each its own
//! rules, in two regions (one per generation), each with headroom for a reload that adds half
//! as many rules again. An array is memory from its making: a map four times bigger than its
//! policy wants is made anew at that size. The
//! connection-tracking tables follow `[conntrack]`, each keying's at the configured size. TCP over
//! IPv4's are arrays of buckets (`flow_table`), at most half full at that size; the others are
//! the kernel's hash maps. All are allocated in full at load (a hash map preallocates, and so
//! does an LRU), except the wide established tables (every flow but TCP over IPv4): they
//! allocate flows as they come, as many guests have few such flows.
//!
//! A pinned map is kept while its size still serves. Otherwise the loader makes a new one of the
//! wanted size, fills it, attaches the programs that use it, and only then pins it in the old
//! one's place ([`crate::datapath::Datapath::load`]): a resize is an atomic program swap, like an
//! upgrade.

use std::fmt;

use trove_isolate_common::{
    conntrack,
    flow_table::{table_entries, Bucket4},
    maps, policy,
    rule_table::{region_buckets, Bucket12, BucketLong},
    Role,
};

use crate::policy::Policy;

/// Rules per policy map, in the order of `maps::POLICIES`.
pub type PolicyRules = [usize; policy::MAPS];

/// The sizes wanted for the maps that follow the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Rules across both roles each policy map has room for (`maps::POLICIES` order).
    pub policy: [u32; policy::MAPS],
    /// The rules of the policy being applied, per policy map.
    pub policy_rules: PolicyRules,
    pub ct_established: u32,
    pub ct_new: u32,
}

impl Capacity {
    /// No rules.
    pub const NO_RULES: PolicyRules = [0; policy::MAPS];

    /// The defaults, for a datapath loaded without a policy of its own.
    pub const DEFAULT: Capacity = Capacity {
        policy: [1024; policy::MAPS],
        policy_rules: [0; policy::MAPS],
        ct_established: conntrack::EST_MAX_ENTRIES,
        ct_new: conntrack::NEW_MAX_ENTRIES,
    };

    pub fn for_policy(policy: &Policy) -> Capacity {
        let rules = Capacity::rules_of(policy);
        Capacity {
            policy: rules.map(Capacity::policy_room),
            policy_rules: rules,
            ct_established: policy.conntrack.established_entries,
            ct_new: policy.conntrack.new_entries,
        }
    }

    /// How many of `policy`'s entries (its rules, expanded) each policy map holds.
    pub fn rules_of(policy: &Policy) -> PolicyRules {
        policy.entry_counts().maps
    }

    /// Room for half as many rules again, and for a reload that adds a thousand.
    pub fn policy_room(rules: usize) -> u32 {
        u32::try_from(rules.saturating_add(rules / 2).saturating_add(1024)).unwrap_or(u32::MAX)
    }

    /// The buckets of policy map `i` (`maps::POLICIES` order) for `rules`: two regions.
    pub fn policy_entries(i: usize, rules: usize) -> u32 {
        let region = match i {
            2 => region_buckets::<BucketLong>(rules),
            _ => region_buckets::<Bucket12>(rules),
        };
        region.saturating_mul(2)
    }

    /// Each map sized here with the size wanted.
    pub fn sized(&self) -> [(&'static str, u32); 11] {
        [
            (
                maps::POLICY4,
                Capacity::policy_entries(0, self.policy[0] as usize),
            ),
            (
                maps::POLICY6,
                Capacity::policy_entries(1, self.policy[1] as usize),
            ),
            (
                maps::POLICY6_LONG,
                Capacity::policy_entries(2, self.policy[2] as usize),
            ),
            (maps::TCP4_EST_MGMT, table_entries(self.ct_established)),
            (maps::TCP4_EST_BIZ, table_entries(self.ct_established)),
            (maps::CT_EST_MGMT, self.ct_established),
            (maps::CT_EST_BIZ, self.ct_established),
            (maps::TCP4_NEW_MGMT, table_entries(self.ct_new)),
            (maps::TCP4_NEW_BIZ, table_entries(self.ct_new)),
            (maps::CT_NEW_MGMT, self.new_table()),
            (maps::CT_NEW_BIZ, self.new_table()),
        ]
    }

    /// The entries a wide new-flow table (a kernel hash map) is made with: the configured size,
    /// and one more when that is a power of two. The kernel gives a hash map its size rounded up to a power of two in
    /// buckets, so a table of exactly 2^k entries holds one flow per bucket once full, and an
    /// LRU table is full whenever connections churn (a closed connection keeps its entry until
    /// it is evicted or expires). One entry more doubles the buckets: every lookup that misses,
    /// and every eviction, walks half the chain (BENCHMARKS.md, section 3). The wide established
    /// tables keep their size: they fill only at their limit, and their buckets would cost
    /// more memory (1 MiB a table at the default size) than a full one's walk is worth.
    pub fn new_table(&self) -> u32 {
        if self.ct_new.is_power_of_two() {
            self.ct_new.saturating_add(1)
        } else {
            self.ct_new
        }
    }

    /// Whether a pinned `map` of `pinned` entries serves: a policy map while a region holds its
    /// new rules and it is no more than four times the size they want (a policy cut from
    /// 100,000 rules to 10 gives the memory back), a flow table while it has the configured
    /// size.
    pub fn keeps(&self, map: &str, pinned: u32) -> bool {
        if let Some(i) = maps::policy_index(map) {
            let wanted = Capacity::policy_entries(i, self.policy[i] as usize);
            return pinned >= Capacity::policy_entries(i, self.policy_rules[i])
                && pinned <= wanted.saturating_mul(4);
        }
        self.sized()
            .iter()
            .any(|(name, wanted)| *name == map && *wanted == pinned)
    }

    /// Kernel memory the maps take, estimated from their sizes.
    pub fn memory(&self) -> Memory {
        use std::mem::size_of;
        let wide = element(
            size_of::<conntrack::WideKey>(),
            size_of::<conntrack::WideValue>(),
        );
        // Buckets are a power of two of 16 bytes (kernel/bpf/hashtab.c); a preallocated table
        // has every element at load.
        let buckets = |entries: u32| u64::from(entries).next_power_of_two() * 16;
        // TCP over IPv4: arrays of buckets (`flow_table`).
        let array = |flows: u32| u64::from(table_entries(flows)) * size_of::<Bucket4>() as u64;
        // Arrays of 64-byte buckets.
        let policy: u64 = self.sized()[..policy::MAPS]
            .iter()
            .map(|(_, entries)| u64::from(*entries) * size_of::<Bucket12>() as u64)
            .sum();
        Memory {
            // Both TCP over IPv4 tables and the wide new table in full; the wide established
            // table allocates its flows as they come.
            conntrack_per_nic: array(self.ct_established)
                + array(self.ct_new)
                + u64::from(self.new_table()) * wide
                + buckets(self.ct_established)
                + buckets(self.new_table()),
            conntrack_other_per_nic: u64::from(self.ct_established) * wide,
            policy,
        }
    }
}

/// `struct htab_elem` before the key. With the bucket array this matches the kernel's own
/// account of the tables (`memlock` in the map's fdinfo, Linux 6.18).
const HASH_ELEMENT_HEADER: u64 = 48;

/// What one element of a hash map takes: the header, then the key and the value, each rounded up
/// to 8 bytes (kernel/bpf/hashtab.c).
fn element(key: usize, value: usize) -> u64 {
    HASH_ELEMENT_HEADER + key.next_multiple_of(8) as u64 + value.next_multiple_of(8) as u64
}

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
            "maps      policy entries: {} IPv4, {} IPv6 of up to /64, {} IPv6 longer; room for {}, \
             {} and {} (allocated at load: about {})",
            self.policy_rules[0],
            self.policy_rules[1],
            self.policy_rules[2],
            self.policy[0],
            self.policy[1],
            self.policy[2],
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
            policy: [
                Capacity::policy_room(rules),
                Capacity::policy_room(0),
                Capacity::policy_room(0),
            ],
            policy_rules: [rules, 0, 0],
            ct_established: 65_536,
            ct_new: 16_384,
        }
    }

    #[test]
    fn a_policy_map_holds_two_generations_with_room_to_grow() {
        let c = capacity(100_000);
        assert_eq!(c.policy, [151_024, 1024, 1024]);
        let entries = |i: usize, rules: usize| Capacity::policy_entries(i, rules);
        // Two regions of 4-slot buckets, each at most three quarters full at the room's rules.
        assert_eq!(entries(0, 151_024), 2 * 65_536);
        assert_eq!(entries(2, 1024), 2 * 1024);
        assert!(c.sized().contains(&(maps::POLICY4, 2 * 65_536)));
        // Made for 100,000 rules: kept for 100,000 others, or half as many more.
        assert!(c.keeps(maps::POLICY4, 2 * 65_536));
        assert!(capacity(150_000).keeps(maps::POLICY4, 2 * 65_536));
        // A map made for 10 rules does not take 100,000.
        assert!(!c.keeps(
            maps::POLICY4,
            entries(0, Capacity::policy_room(10) as usize)
        ));
        // Nor is one made for 100,000 kept for 10 (an array is memory), but it is for a quarter.
        assert!(!capacity(10).keeps(maps::POLICY4, 2 * 65_536));
        assert!(capacity(25_000).keeps(maps::POLICY4, 2 * 65_536));
        // Each map is held to its own rules: IPv6's keep their small size however many IPv4
        // rules there are.
        assert!(c.keeps(maps::POLICY6, entries(1, 1024)));
        assert_eq!(Capacity::policy_room(usize::MAX), u32::MAX);
    }

    #[test]
    fn flow_tables_are_kept_only_at_the_configured_size() {
        let c = capacity(10);
        // TCP over IPv4: buckets for twice the flows, four slots each, and the header.
        assert_eq!(table_entries(65_536), 32_769);
        assert!(c.sized().contains(&(maps::TCP4_EST_BIZ, 32_769)));
        assert!(c.sized().contains(&(maps::TCP4_NEW_BIZ, 8_193)));
        assert!(c.keeps(maps::TCP4_EST_BIZ, 32_769));
        assert!(c.keeps(maps::TCP4_NEW_MGMT, 8_193));
        assert!(!c.keeps(maps::TCP4_EST_BIZ, 8_193));
        // The wide tables, hash maps: the configured size.
        assert!(c.keeps(maps::CT_EST_BIZ, 65_536));
        assert!(c.keeps(maps::CT_NEW_MGMT, 16_385));
        assert!(!c.keeps(maps::CT_NEW_MGMT, 65_536));
        // A new table of the configured 2^k entries, as made before the rule below, is made anew.
        assert!(!c.keeps(maps::CT_NEW_MGMT, 16_384));
    }

    #[test]
    fn a_wide_new_table_of_a_power_of_two_gets_one_entry_more_and_twice_the_buckets() {
        let mut c = capacity(10);
        assert_eq!(c.new_table(), 16_385);
        c.ct_new = 10_000;
        assert_eq!(c.new_table(), 10_000);
        c.ct_new = u32::MAX;
        assert_eq!(c.new_table(), u32::MAX);
        // The established tables keep the configured size.
        let sized = c.sized();
        assert!(sized.contains(&(maps::CT_EST_BIZ, 65_536)));
        assert!(sized.contains(&(maps::CT_NEW_BIZ, u32::MAX)));
    }

    #[test]
    fn check_reports_what_will_be_allocated() {
        let text = capacity(10).to_string();
        assert!(
            text.contains(
                "policy entries: 10 IPv4, 0 IPv6 of up to /64, 0 IPv6 longer; room for 1039, 1024 \
                 and 1024"
            ),
            "{text}"
        );
        assert!(
            text.contains("65536 established + 16384 new flows"),
            "{text}"
        );
        assert!(text.contains("MiB per NIC"), "{text}");
    }
}
