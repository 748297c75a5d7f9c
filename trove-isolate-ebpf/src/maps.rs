//! Every map of the datapath. Names are the contract with the loader
//! (`trove_isolate_common::maps`), which pins them under versioned names.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use trove_isolate_common::{
    conntrack::{FlowKey4, FlowValue, WideKey, WideValue, EST_MAX_ENTRIES, NEW_MAX_ENTRIES},
    counters::{self, Counter},
    events::{self, Budget},
    guard::{self, Endpoints},
    local::{self, LocalKey, LocalValue, OwnSet},
    policy::{self, PrefixLengths},
    rule_table::{Bucket12, BucketLong},
    settings::Settings,
    Role,
};

/// Arrays of buckets (`rule_table`), two generations each, at the size the loader sets from
/// the policy.
#[map]
pub static POLICY4: Array<Bucket12> = Array::with_max_entries(policy::OBJECT_ENTRIES, 0);

#[map]
pub static POLICY6: Array<Bucket12> = Array::with_max_entries(policy::OBJECT_ENTRIES, 0);

#[map]
pub static POLICY6_LONG: Array<BucketLong> = Array::with_max_entries(policy::OBJECT_ENTRIES, 0);

#[map]
pub static POLICY_LENGTHS: Array<PrefixLengths> =
    Array::with_max_entries(policy::LENGTH_ENTRIES, 0);

#[map]
pub static POLICY_GENERATION: Array<u32> = Array::with_max_entries(policy::GENERATION_ENTRIES, 0);

#[map]
pub static LOCAL: LpmTrie<LocalKey, LocalValue> = LpmTrie::with_max_entries(local::MAX_ENTRIES, 0);

/// Two slots per role; the generation says which is in force (`local::OwnSet::slot`).
#[map]
pub static OWN_SETS: Array<OwnSet> = Array::with_max_entries(local::SET_SLOTS, 0);

#[map]
pub static OWN_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static TCP4_NEW_MGMT: LruHashMap<FlowKey4, FlowValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

#[map]
pub static TCP4_NEW_BIZ: LruHashMap<FlowKey4, FlowValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

#[map]
pub static CT_NEW_MGMT: LruHashMap<WideKey, WideValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

#[map]
pub static CT_NEW_BIZ: LruHashMap<WideKey, WideValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

#[map]
pub static TCP4_EST_MGMT: HashMap<FlowKey4, FlowValue> =
    HashMap::with_max_entries(EST_MAX_ENTRIES, 0);

#[map]
pub static TCP4_EST_BIZ: HashMap<FlowKey4, FlowValue> =
    HashMap::with_max_entries(EST_MAX_ENTRIES, 0);

/// Established flows other than TCP over IPv4 are allocated as they come (many guests have
/// few or none): the same limit, without the memory at load.
#[map]
pub static CT_EST_MGMT: HashMap<WideKey, WideValue> =
    HashMap::with_max_entries(EST_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static CT_EST_BIZ: HashMap<WideKey, WideValue> =
    HashMap::with_max_entries(EST_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(counters::MAX_ENTRIES, 0);

/// The boot guard's (`guard.rs`).
#[map]
pub static GUARD_COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(guard::COUNTER_ENTRIES, 0);

#[map]
pub static GUARD_ENDPOINTS: Array<Endpoints> = Array::with_max_entries(1, 0);

#[map]
pub static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(events::RING_BYTES, 0);

#[map]
pub static EVENT_BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(Role::COUNT as u32, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(Role::COUNT as u32, 0);

/// A role's two flow tables of one keying: keyed by `K`, entries `V`.
pub struct FlowTables<K: 'static, V: 'static> {
    pub new: &'static LruHashMap<K, V>,
    pub est: &'static HashMap<K, V>,
}

/// The role's tables of TCP over IPv4. The role is a constant of each program, so each program
/// references only its own maps.
#[inline(always)]
pub fn flows_tcp4(role: Role) -> FlowTables<FlowKey4, FlowValue> {
    match role {
        Role::Management => FlowTables {
            new: &TCP4_NEW_MGMT,
            est: &TCP4_EST_MGMT,
        },
        Role::Business => FlowTables {
            new: &TCP4_NEW_BIZ,
            est: &TCP4_EST_BIZ,
        },
    }
}

/// The role's tables of every other flow.
#[inline(always)]
pub fn flows_wide(role: Role) -> FlowTables<WideKey, WideValue> {
    match role {
        Role::Management => FlowTables {
            new: &CT_NEW_MGMT,
            est: &CT_EST_MGMT,
        },
        Role::Business => FlowTables {
            new: &CT_NEW_BIZ,
            est: &CT_EST_BIZ,
        },
    }
}
