//! The verdict counters: a per-CPU array indexed by (role, direction, verdict, reason).
//!
//! An array, not a hash: the index is computed, so counting is one lookup with no insert path.

use crate::{Direction, Reason, Role, Verdict};

pub const MAX_ENTRIES: u32 =
    (Role::COUNT * Direction::COUNT * Verdict::COUNT * Reason::COUNT) as u32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[inline(always)]
pub const fn index(role: Role, direction: Direction, verdict: Verdict, reason: Reason) -> u32 {
    (((role as u32 * Direction::COUNT as u32 + direction as u32) * Verdict::COUNT as u32
        + verdict as u32)
        * Reason::COUNT as u32)
        + reason as u32
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_unique_and_in_range() {
        let mut seen = [false; MAX_ENTRIES as usize];
        for r in Role::ALL {
            for d in Direction::ALL {
                for v in Verdict::ALL {
                    for why in Reason::ALL {
                        let i = index(r, d, v, why) as usize;
                        assert!(i < seen.len());
                        assert!(!seen[i]);
                        seen[i] = true;
                    }
                }
            }
        }
    }
}
