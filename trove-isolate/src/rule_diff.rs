//! What a reload writes into one policy map: the rules it must gain (new, or under another
//! rule id) and those it must lose, found in one pass over each policy.

use std::hash::Hash;

use trove_isolate_common::policy::{PolicyKey, PolicyValue};

/// One map's share of a policy change, its keys narrowed to the map's (`PolicyKey4::narrow`).
#[derive(Debug, PartialEq, Eq)]
pub struct RuleDiff<K> {
    /// The new policy's rules in this map.
    pub total: usize,
    /// The rules to write, and their values: those the map does not hold as they are.
    pub keys: Vec<K>,
    pub values: Vec<PolicyValue>,
    /// The rules to remove: the old policy's that the new one lacks. `None` when what the map
    /// holds is not known (no policy in force): every rule of the new policy is written then,
    /// and the stale ones are the map's keys that [`RuleDiff::keys`] lacks.
    pub stale: Option<Vec<K>>,
}

impl<K: Copy + Eq + Hash> RuleDiff<K> {
    /// The rules of `entries` that `narrow` keeps, against those of `in_force` (what the map
    /// holds, when known).
    pub fn of(
        entries: &[(PolicyKey, PolicyValue)],
        in_force: Option<&[(PolicyKey, PolicyValue)]>,
        narrow: impl Fn(&PolicyKey) -> Option<K>,
    ) -> Self {
        let new = entries.iter().filter_map(|(k, v)| Some((narrow(k)?, *v)));
        let Some(old) = in_force else {
            let (keys, values): (Vec<K>, Vec<PolicyValue>) = new.unzip();
            return RuleDiff {
                total: keys.len(),
                keys,
                values,
                stale: None,
            };
        };
        // Each rule held, and whether the new policy has it still.
        let mut held: foldhash::HashMap<K, (PolicyValue, bool)> = old
            .iter()
            .filter_map(|(k, v)| Some((narrow(k)?, (*v, false))))
            .collect();
        let (mut keys, mut values, mut total) = (Vec::new(), Vec::new(), 0);
        for (key, value) in new {
            total += 1;
            if let Some((was, kept)) = held.get_mut(&key) {
                *kept = true;
                if *was == value {
                    continue;
                }
            }
            keys.push(key);
            values.push(value);
        }
        let stale = held
            .into_iter()
            .filter(|(_, (_, kept))| !kept)
            .map(|(key, _)| key)
            .collect();
        RuleDiff {
            total,
            keys,
            values,
            stale: Some(stale),
        }
    }
}

#[cfg(test)]
mod tests {
    use trove_isolate_common::family;

    use super::*;

    fn rule(addr: u8, prefix: u8, id: u32) -> (PolicyKey, PolicyValue) {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&[198, 51, 100, addr]);
        (
            PolicyKey {
                role: 1,
                direction: 0,
                proto: 6,
                family: family::V4,
                port: 5432u16.to_be_bytes(),
                prefix,
                _pad: 0,
                addr: a,
            },
            PolicyValue { rule_id: id },
        )
    }

    fn addrs(keys: &[PolicyKey]) -> Vec<u8> {
        let mut a: Vec<u8> = keys.iter().map(|k| k.addr[3]).collect();
        a.sort();
        a
    }

    #[test]
    fn only_what_changed_is_written_and_only_what_went_is_removed() {
        let old = [rule(1, 32, 1), rule(2, 32, 2), rule(3, 32, 3)];
        // 1 stays as it is, 2 stays under another rule id, 3 goes, 4 comes.
        let new = [rule(1, 32, 1), rule(2, 32, 7), rule(4, 32, 4)];
        let diff = RuleDiff::of(&new, Some(&old), |k| Some(*k));
        assert_eq!(diff.total, 3);
        assert_eq!(addrs(&diff.keys), [2, 4]);
        let ids: Vec<u32> = diff.values.iter().map(|v| v.rule_id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&7) && ids.contains(&4));
        assert_eq!(addrs(diff.stale.as_deref().unwrap()), [3]);
    }

    #[test]
    fn without_a_policy_in_force_every_rule_is_written() {
        let new = [rule(1, 32, 1), rule(2, 24, 2)];
        let diff = RuleDiff::of(&new, None, |k| Some(*k));
        assert_eq!((diff.total, addrs(&diff.keys)), (2, vec![1, 2]));
        assert_eq!(diff.stale, None);
    }

    #[test]
    fn a_key_twice_in_a_policy_is_one_rule_the_last_value_held() {
        // The old policy's last value for a key is what the map holds (it was written last).
        let old = [
            rule(1, 32, 1),
            rule(1, 32, 5),
            rule(2, 32, 2),
            rule(2, 32, 2),
        ];
        let new = [rule(1, 32, 5), rule(3, 32, 3), rule(3, 32, 3)];
        let diff = RuleDiff::of(&new, Some(&old), |k| Some(*k));
        assert_eq!(addrs(&diff.keys), [3, 3]);
        assert_eq!(addrs(diff.stale.as_deref().unwrap()), [2]);
    }

    #[test]
    fn only_the_rules_narrowed_to_the_map_count() {
        let old = [rule(1, 32, 1), rule(9, 24, 9)];
        let new = [rule(2, 32, 2), rule(8, 24, 8)];
        let hosts = |k: &PolicyKey| (k.prefix == 32).then_some(*k);
        let diff = RuleDiff::of(&new, Some(&old), hosts);
        assert_eq!((diff.total, addrs(&diff.keys)), (1, vec![2]));
        assert_eq!(addrs(diff.stale.as_deref().unwrap()), [1]);
    }
}
