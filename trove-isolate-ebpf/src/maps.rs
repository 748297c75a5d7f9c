//! Every map of the datapath. Names are the contract with the loader
//! (`trove_isolate_common::maps`), which pins them under versioned names.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use trove_isolate_common::{
    conntrack::{FlowKey, FlowValue, EST_MAX_ENTRIES, NEW_MAX_ENTRIES},
    counters::{self, Counter},
    events::{self, Budget},
    local::{self, LocalKey, LocalValue},
    policy::{self, PolicyKey, PolicyValue, PrefixLengths},
    settings::Settings,
    Role,
};

/// Allocated per rule (no preallocation): its size is a limit the loader sets from the policy.
#[map]
pub static POLICY: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(policy::OBJECT_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static POLICY_LENGTHS: Array<PrefixLengths> = Array::with_max_entries(policy::CLASSES, 0);

#[map]
pub static LOCAL: LpmTrie<LocalKey, LocalValue> = LpmTrie::with_max_entries(local::MAX_ENTRIES, 0);

#[map]
pub static CT_NEW_MGMT: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

#[map]
pub static CT_NEW_BIZ: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

#[map]
pub static CT_EST_MGMT: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(EST_MAX_ENTRIES, 0);

#[map]
pub static CT_EST_BIZ: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(EST_MAX_ENTRIES, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(counters::MAX_ENTRIES, 0);

#[map]
pub static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(events::RING_BYTES, 0);

#[map]
pub static EVENT_BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(Role::COUNT as u32, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(Role::COUNT as u32, 0);

/// The role's tables. The role is a constant of each program, so each program references only
/// its own two maps.
#[inline(always)]
pub fn ct_new(role: Role) -> &'static LruHashMap<FlowKey, FlowValue> {
    match role {
        Role::Management => &CT_NEW_MGMT,
        Role::Business => &CT_NEW_BIZ,
    }
}

#[inline(always)]
pub fn ct_est(role: Role) -> &'static HashMap<FlowKey, FlowValue> {
    match role {
        Role::Management => &CT_EST_MGMT,
        Role::Business => &CT_EST_BIZ,
    }
}
