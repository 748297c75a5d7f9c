//! Every map of the datapath. Names are the contract with the loader
//! (`trove_isolate_common::maps`), which pins them under versioned names.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray},
};
use trove_isolate_common::{
    conntrack::{self, FlowKey, FlowValue},
    counters::{self, Counter},
    policy::{self, PolicyKey, PolicyValue},
    settings::Settings,
    Role,
};

#[map]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(policy::MAX_ENTRIES, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(conntrack::MAX_ENTRIES, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(counters::MAX_ENTRIES, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(Role::COUNT as u32, 0);
