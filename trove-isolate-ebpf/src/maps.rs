//! Every map of the datapath. Names are the contract with the loader
//! (`trove_isolate_common::maps`), which pins them under versioned names.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use trove_isolate_common::{
    conntrack::{WideKey, WideValue, EST_MAX_ENTRIES, NEW_MAX_ENTRIES},
    counters::{self, Counter},
    events::{self, Budget},
    flow_table::{table_entries, Bucket4},
    guard::{self, Endpoints},
    local::{self, LocalKey, LocalValue, OwnSet},
    policy::{self, PrefixLengths},
    rule_table::{Bucket12, BucketLong},
    settings::Settings,
    Role,
};

use crate::flow_table::Table;

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

// The flow tables of TCP over IPv4 (`trove_isolate_common::flow_table`), at the sizes the
// loader sets (element 0 the header, then the buckets); mappable, so the daemon frees a slot
// with the same compare-and-exchange the programs use. The wide tables are the kernel's hash
// maps: inlined for both keyings, the tables' code made a program too long for its jumps.

#[map]
pub static TCP4_NEW_MGMT: Array<Bucket4> =
    Array::with_max_entries(table_entries(NEW_MAX_ENTRIES), BPF_F_MMAPABLE);

#[map]
pub static TCP4_NEW_BIZ: Array<Bucket4> =
    Array::with_max_entries(table_entries(NEW_MAX_ENTRIES), BPF_F_MMAPABLE);

#[map]
pub static TCP4_EST_MGMT: Array<Bucket4> =
    Array::with_max_entries(table_entries(EST_MAX_ENTRIES), BPF_F_MMAPABLE);

#[map]
pub static TCP4_EST_BIZ: Array<Bucket4> =
    Array::with_max_entries(table_entries(EST_MAX_ENTRIES), BPF_F_MMAPABLE);

#[map]
pub static CT_NEW_MGMT: LruHashMap<WideKey, WideValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

#[map]
pub static CT_NEW_BIZ: LruHashMap<WideKey, WideValue> =
    LruHashMap::with_max_entries(NEW_MAX_ENTRIES, 0);

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

/// A role's two flow tables of one keying.
pub struct FlowTables<N: 'static, E: 'static> {
    pub new: N,
    pub est: E,
}

/// The role's tables of TCP over IPv4. The role is a constant of each program, so each program
/// references only its own maps (but for the lookup's global function, which takes any).
#[inline(always)]
pub fn flows_tcp4(role: Role) -> FlowTables<Table<Bucket4>, Table<Bucket4>> {
    FlowTables {
        new: tcp4_table_of(role, false),
        est: tcp4_table_of(role, true),
    }
}

#[inline(always)]
fn tcp4_table_of(role: Role, est: bool) -> Table<Bucket4> {
    let map = match (role, est) {
        (Role::Management, false) => &TCP4_NEW_MGMT,
        (Role::Management, true) => &TCP4_EST_MGMT,
        (Role::Business, false) => &TCP4_NEW_BIZ,
        (Role::Business, true) => &TCP4_EST_BIZ,
    };
    Table {
        map,
        evicts: !est,
        id: 2 * role as u32 + est as u32,
    }
}

/// The TCP over IPv4 table numbered `id` (`Table::id`).
#[inline(always)]
pub fn tcp4_table(id: u32) -> Option<Table<Bucket4>> {
    let role = match id >> 1 {
        0 => Role::Management,
        1 => Role::Business,
        _ => return None,
    };
    Some(tcp4_table_of(role, id & 1 != 0))
}

/// The role's tables of every other flow.
#[inline(always)]
pub fn flows_wide(
    role: Role,
) -> FlowTables<&'static LruHashMap<WideKey, WideValue>, &'static HashMap<WideKey, WideValue>> {
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
