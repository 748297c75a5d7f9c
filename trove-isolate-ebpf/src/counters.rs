//! Verdict counting: one per-CPU array slot per (role, direction, verdict, reason).

use trove_isolate_common::{counters::index, Direction, Reason, Role, Verdict};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(role: Role, direction: Direction, verdict: Verdict, reason: Reason, bytes: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index(role, direction, verdict, reason)) {
        // Per-CPU slot: no other writer, plain adds are enough.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}
