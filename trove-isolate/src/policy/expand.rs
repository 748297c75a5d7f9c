//! Prefix expansion: fewer lookups per new flow for a bounded number of extra entries.
//!
//! The datapath looks a new flow up once per prefix length its class (role, direction, family)
//! uses, about 10 ns each (BENCHMARKS.md), and a refused packet pays for every one. A rule of a
//! /l prefix covers the same addresses as 2^(n - l) rules of /n, so a class's shorter lengths
//! can be written as a longer one it uses anyway: a /24 among /32s becomes 256 /32s, and the
//! class is looked up once instead of twice. This is controlled prefix expansion (Srinivasan and
//! Varghese, 1999). Per class, [`Plan::new`] picks the fewest lengths whose expansion stays
//! within [`extra_allowed`] more entries, and of those the plan with the fewest entries; the
//! lengths it writes at are always lengths the rules use.
//!
//! Every entry allows, so a packet is allowed exactly when the rules allow it. Where an expanded
//! entry falls on one of a longer prefix's rule, the longer prefix's rule keeps it: the rule
//! `explain` names is the one a longest-prefix match would find.

use std::collections::{hash_map::Entry, HashMap};

use trove_isolate_common::policy::{PolicyKey, PolicyValue, CLASSES, MAX_ENTRIES};

use super::class_of;

/// A class of fewer rules than this may still grow by this many entries (a few hundred KiB of
/// kernel memory); a bigger one by as many entries as it has rules.
pub const EXTRA_AT_LEAST: u64 = 4096;

/// How many entries a class of `rules` rules may gain by expansion.
pub fn extra_allowed(rules: u64) -> u64 {
    rules.max(EXTRA_AT_LEAST)
}

/// For each class, the length each length of its rules is written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Indexed by class: (length of the rules, length written at), longest first.
    classes: Vec<Vec<(u8, u8)>>,
}

impl Plan {
    /// The plan for rules of these (class, prefix length)s. A rule of a length the plan was
    /// not made for (a host name's address, see [`crate::policy::Policy::expansion`]) is
    /// written at its own length.
    pub fn new(rules: impl Iterator<Item = (u32, u8)>) -> Plan {
        let chosen: Vec<(Vec<(u8, u8)>, u64)> =
            histograms(rules).iter().map(|h| choose(h)).collect();
        // The maps hold at most MAX_ENTRIES rules in all; a policy near that is written as is.
        let total: u64 = chosen.iter().map(|(_, entries)| entries).sum();
        if total > u64::from(MAX_ENTRIES) {
            return Plan::none();
        }
        Plan {
            classes: chosen.into_iter().map(|(plan, _)| plan).collect(),
        }
    }

    /// Every rule at its own length (`prefix_expansion = false`).
    pub fn none() -> Plan {
        Plan {
            classes: vec![Vec::new(); CLASSES as usize],
        }
    }

    /// The length a rule of this key's class and prefix is written at.
    pub fn target(&self, key: &PolicyKey) -> u8 {
        self.target_of(class_of(key), key.prefix)
    }

    fn target_of(&self, class: u32, prefix: u8) -> u8 {
        self.classes[class as usize]
            .iter()
            .find(|&&(from, _)| from == prefix)
            .map_or(prefix, |&(_, to)| to)
    }

    /// The lengths the entries of rules of these (class, prefix length)s use per class,
    /// longest first, indexed by class.
    pub fn lengths(&self, rules: impl Iterator<Item = (u32, u8)>) -> Vec<Vec<u8>> {
        let mut used = vec![[false; 129]; CLASSES as usize];
        for (class, prefix) in rules {
            used[class as usize][usize::from(self.target_of(class, prefix).min(128))] = true;
        }
        used.iter()
            .map(|u| (0..=128u8).rev().filter(|&l| u[usize::from(l)]).collect())
            .collect()
    }

    /// Per class, the lengths written as a longer one: (from, to), longest first.
    pub fn expanded(&self, class: u32) -> impl Iterator<Item = (u8, u8)> + '_ {
        self.classes[class as usize]
            .iter()
            .copied()
            .filter(|&(from, to)| from != to)
    }

    /// The map entries of `rules` under this plan: each rule whose length is expanded as the
    /// entries of the longer length that cover it, a longer prefix's rule winning a key.
    pub fn entries(&self, rules: Vec<(PolicyKey, PolicyValue)>) -> Vec<(PolicyKey, PolicyValue)> {
        if (0..CLASSES).all(|c| self.expanded(c).next().is_none()) {
            return rules;
        }
        let mut out = Vec::with_capacity(rules.len());
        self.for_each(rules.into_iter(), |k, v| out.push((*k, v)));
        out
    }

    /// Calls `f` with each map entry of `rules` under this plan, without gathering them: the
    /// rules of classes that do not expand as they come, then the expanded classes' entries.
    pub fn for_each(
        &self,
        rules: impl Iterator<Item = (PolicyKey, PolicyValue)>,
        mut f: impl FnMut(&PolicyKey, PolicyValue),
    ) {
        let expanding: Vec<bool> = (0..CLASSES)
            .map(|c| self.expanded(c).next().is_some())
            .collect();
        // Only the classes that expand need their keys deduplicated.
        let mut merged: HashMap<PolicyKey, (u8, PolicyValue)> = HashMap::new();
        for (key, value) in rules {
            if !expanding[class_of(&key) as usize] {
                f(&key, value);
                continue;
            }
            let to = self.target(&key);
            for i in 0..1u64 << (to - key.prefix) {
                let wider = PolicyKey {
                    prefix: to,
                    addr: with_bits(&key.addr, key.prefix, to, i),
                    ..key
                };
                match merged.entry(wider) {
                    Entry::Vacant(e) => {
                        e.insert((key.prefix, value));
                    }
                    Entry::Occupied(mut e) if e.get().0 < key.prefix => {
                        e.insert((key.prefix, value));
                    }
                    Entry::Occupied(_) => {}
                }
            }
        }
        for (k, (_, v)) in merged {
            f(&k, v);
        }
    }
}

/// Per class, its rules per length, shortest first.
fn histograms(rules: impl Iterator<Item = (u32, u8)>) -> Vec<Vec<(u8, u64)>> {
    let mut counts = vec![[0u64; 129]; CLASSES as usize];
    for (class, prefix) in rules {
        counts[class as usize][usize::from(prefix.min(128))] += 1;
    }
    counts
        .iter()
        .map(|c| {
            (0..=128u8)
                .filter(|&l| c[usize::from(l)] > 0)
                .map(|l| (l, c[usize::from(l)]))
                .collect()
        })
        .collect()
}

/// For one class's rules per length (shortest first): the lengths to write them at, longest
/// first, and how many entries that makes at most.
///
/// `best[j][m]`: the fewest entries that write the lengths up to `j` at `m` lengths, `j` being
/// one of them (each length goes to the next chosen one at or above it).
fn choose(histogram: &[(u8, u64)]) -> (Vec<(u8, u8)>, u64) {
    let k = histogram.len();
    let rules: u64 = histogram.iter().map(|&(_, n)| n).sum();
    if k == 0 {
        return (Vec::new(), 0);
    }
    // Entries of lengths p..=j written at length j.
    let group = |p: usize, j: usize| -> u64 {
        histogram[p..=j]
            .iter()
            .map(|&(l, n)| match histogram[j].0 - l {
                shift @ 0..=62 => n.saturating_mul(1 << shift),
                _ => u64::MAX,
            })
            .fold(0u64, u64::saturating_add)
    };
    const NONE: (u64, usize) = (u64::MAX, usize::MAX);
    // best[j][m] = (entries, where the group ending at j starts).
    let mut best = vec![vec![NONE; k + 1]; k];
    for j in 0..k {
        best[j][1] = (group(0, j), 0);
        for m in 2..=j + 1 {
            for p in m - 1..=j {
                let before = best[p - 1][m - 1].0;
                if before == u64::MAX {
                    continue;
                }
                let entries = before.saturating_add(group(p, j));
                if entries < best[j][m].0 {
                    best[j][m] = (entries, p);
                }
            }
        }
    }
    let limit = rules.saturating_add(extra_allowed(rules));
    let m = (1..=k).find(|&m| best[k - 1][m].0 <= limit).unwrap_or(k);
    let entries = best[k - 1][m].0;
    // Walk the groups back from the longest length.
    let mut plan = Vec::with_capacity(k);
    let (mut j, mut m) = (k - 1, m);
    loop {
        let start = best[j][m].1;
        for i in (start..=j).rev() {
            plan.push((histogram[i].0, histogram[j].0));
        }
        if start == 0 {
            break;
        }
        j = start - 1;
        m -= 1;
    }
    (plan, entries)
}

/// `addr` with its bits `from..to` (counted from the first byte's top bit) set to `value`'s
/// low `to - from` bits. The bits are zero in `addr` (a rule's network address).
fn with_bits(addr: &[u8; 16], from: u8, to: u8, value: u64) -> [u8; 16] {
    if to == from {
        return *addr;
    }
    let word = u128::from_be_bytes(*addr) | (u128::from(value) << (128 - u32::from(to)));
    debug_assert!(u32::from(to - from) <= 64 && from < to);
    word.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fewest_lengths_within_the_budget_are_chosen() {
        // A /24 and a /28 among /32s: one length, 256 + 16 entries more.
        let (plan, entries) = choose(&[(24, 1), (28, 1), (32, 3)]);
        assert_eq!(plan, [(32, 32), (28, 32), (24, 32)]);
        assert_eq!(entries, 256 + 16 + 3);
        // A /16 would be 65,536 entries: it keeps its length, the rest still fold.
        let (plan, entries) = choose(&[(16, 1), (24, 1), (28, 1), (32, 3)]);
        assert_eq!(plan, [(32, 32), (28, 32), (24, 32), (16, 16)]);
        assert_eq!(entries, 1 + 256 + 16 + 3);
        // Two lengths would take 4,354 entries: three, in the cheaper grouping (/20 into /24,
        // 16 entries, not /24 into /32, 256).
        let (plan, entries) = choose(&[(8, 1), (20, 1), (24, 1), (32, 1)]);
        assert_eq!(plan, [(32, 32), (24, 24), (20, 24), (8, 8)]);
        assert_eq!(entries, 1 + 16 + 1 + 1);
        // A big class may double, no more: 10,000 /32s and 700 /28s (11,200 entries more) fold,
        // 10,000 /32s and 700 /24s (179,200) do not.
        assert_eq!(choose(&[(28, 700), (32, 10_000)]).0, [(32, 32), (28, 32)]);
        assert_eq!(choose(&[(24, 700), (32, 10_000)]).0, [(32, 32), (24, 24)]);
        // Lengths far apart (an IPv6 /48 among /128s) never overflow the count.
        assert_eq!(choose(&[(48, 1), (128, 1)]).0, [(128, 128), (48, 48)]);
        assert_eq!(choose(&[(0, 1), (128, 1)]).0, [(128, 128), (0, 0)]);
        assert_eq!(choose(&[]), (Vec::new(), 0));
    }

    #[test]
    fn bits_are_set_below_the_prefix() {
        let addr = [198, 51, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(with_bits(&addr, 24, 32, 7)[..4], [198, 51, 100, 7]);
        assert_eq!(with_bits(&addr, 24, 28, 0xf)[..4], [198, 51, 100, 0xf0]);
        assert_eq!(with_bits(&addr, 24, 24, 0), addr);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let out = with_bits(&v6, 120, 128, 0xab);
        assert_eq!(out[15], 0xab);
        assert_eq!(out[..15], v6[..15]);
    }
}
