//! Placing a generation of rules in a rule table's region (`trove_isolate_common::rule_table`),
//! and reading one back.
//!
//! Bucketized cuckoo hashing: each key may lie in one of two buckets of four (or two) slots. A
//! key whose buckets are both full takes a slot from one of the keys there, which moves to its
//! other bucket, and so on. At three quarters full at most (`region_buckets`), placement
//! practically never fails; when it does, another seed places the keys elsewhere, and after a
//! few seeds the region doubles, as far as the map allows.

use trove_isolate_common::rule_table::{region_buckets, Bucket};

/// Moves a key may make others make before its placement is given up.
const MAX_KICKS: usize = 500;
/// Seeds tried at one region size.
const SEEDS: u32 = 8;

/// One generation of a table, placed: its buckets (the region's first `buckets.len()`, a power
/// of two) and the seed of their hashes.
#[derive(Debug)]
pub struct Placed<B> {
    pub buckets: Vec<B>,
    pub seed: u32,
}

impl<B: Bucket> Placed<B> {
    /// The mask of the region's bucket index.
    pub fn mask(&self) -> u32 {
        self.buckets.len() as u32 - 1
    }
}

/// `rules` (key, rule id) placed in at most `room` buckets (a power of two). Duplicate keys are
/// placed once.
pub fn place<B: Bucket>(rules: &[(B::Key, u32)], room: u32) -> anyhow::Result<Placed<B>> {
    // An empty slot is zeros: such a key would be found in every one (`rule_table`).
    if let Some((_, rule)) = rules.iter().find(|(k, _)| B::first_word(k) == 0) {
        anyhow::bail!("rule {rule} has a key that begins with a zero word: not a rule");
    }
    // A slot holds the id plus one, 0 meaning empty.
    if rules.iter().any(|&(_, rule)| rule == u32::MAX) {
        anyhow::bail!("a rule id of {} is beyond what a slot holds", u32::MAX);
    }
    let mut buckets = region_buckets::<B>(rules.len());
    while buckets <= room {
        for attempt in 0..SEEDS {
            // Any seed does; these differ from one size and attempt to the next.
            let seed = 0x9e37_79b9u32
                .wrapping_mul(attempt + 1)
                .wrapping_add(buckets.rotate_left(7));
            if let Some(placed) = try_place::<B>(rules, buckets, seed) {
                return Ok(Placed {
                    buckets: placed,
                    seed,
                });
            }
        }
        buckets = buckets.saturating_mul(2);
    }
    anyhow::bail!(
        "{} rules do not fit a region of {room} buckets of {} (the map is made for fewer)",
        rules.len(),
        B::SLOTS
    )
}

fn try_place<B: Bucket>(rules: &[(B::Key, u32)], buckets: u32, seed: u32) -> Option<Vec<B>> {
    let mask = buckets - 1;
    let mut table = vec![B::default(); buckets as usize];
    // xorshift: which bucket and slot a move takes; fixed by the seed, so a placement repeats.
    let mut state = seed | 1;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for &(key, rule) in rules {
        let (a, b) = B::buckets(&key, seed, mask);
        if holds(&table[a as usize], &key) || holds(&table[b as usize], &key) {
            continue;
        }
        let (mut key, mut rule) = (key, rule);
        let mut at = if random() & 1 == 0 { a } else { b };
        let mut placed =
            put(&mut table[a as usize], key, rule) || put(&mut table[b as usize], key, rule);
        let mut kicks = 0;
        while !placed {
            if kicks == MAX_KICKS {
                return None;
            }
            kicks += 1;
            let victim = random() as usize % B::SLOTS;
            let (moved, moved_rule) = table[at as usize].slot(victim).expect("a full bucket");
            table[at as usize].set(victim, key, rule);
            (key, rule) = (moved, moved_rule);
            let (a, b) = B::buckets(&key, seed, mask);
            at = if a == at { b } else { a };
            placed = put(&mut table[at as usize], key, rule);
        }
    }
    Some(table)
}

fn holds<B: Bucket>(bucket: &B, key: &B::Key) -> bool {
    (0..B::SLOTS).any(|i| matches!(bucket.slot(i), Some((k, _)) if k == *key))
}

/// Puts `key` in the bucket's first empty slot, if it has one.
fn put<B: Bucket>(bucket: &mut B, key: B::Key, rule: u32) -> bool {
    match (0..B::SLOTS).find(|&i| bucket.slot(i).is_none()) {
        Some(i) => {
            bucket.set(i, key, rule);
            true
        }
        None => false,
    }
}

/// The rule id `key` has in a region's buckets (`get`: bucket `i` of the region), found as the
/// datapath finds it.
pub fn find<B: Bucket>(
    key: &B::Key,
    seed: u32,
    mask: u32,
    mut get: impl FnMut(u32) -> Option<B>,
) -> Option<u32> {
    let (a, b) = B::buckets(key, seed, mask);
    [a, b].into_iter().find_map(|i| {
        let bucket = get(i)?;
        (0..B::SLOTS).find_map(|s| bucket.slot(s).filter(|(k, _)| k == key).map(|(_, r)| r))
    })
}

/// Every (key, rule id) the buckets hold.
pub fn rules_of<B: Bucket>(buckets: &[B]) -> Vec<(B::Key, u32)> {
    buckets
        .iter()
        .flat_map(|b| (0..B::SLOTS).filter_map(|i| b.slot(i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use trove_isolate_common::rule_table::{Bucket12, BucketLong};

    use super::*;

    fn keys12(n: u32) -> Vec<([u32; 3], u32)> {
        (0..n)
            .map(|i| ([0x0106_1800, 0x0cea, i.to_be()], i))
            .collect()
    }

    #[test]
    fn every_rule_placed_is_found_where_the_datapath_looks() {
        for n in [0, 1, 3, 4, 5, 100, 10_000, 100_000] {
            let rules = keys12(n);
            let placed: Placed<Bucket12> = place(&rules, 1 << 20).expect("fits");
            assert_eq!(
                placed.buckets.len() as u32,
                region_buckets::<Bucket12>(n as usize)
            );
            let get = |i: u32| placed.buckets.get(i as usize).copied();
            for (key, rule) in &rules {
                assert_eq!(find(key, placed.seed, placed.mask(), get), Some(*rule));
                // The datapath's own test: one of the two buckets holds it.
                let (a, b) = Bucket12::buckets(key, placed.seed, placed.mask());
                assert!(
                    placed.buckets[a as usize].holds(key) || placed.buckets[b as usize].holds(key)
                );
            }
            assert_eq!(find(&[1, 2, 3], placed.seed, placed.mask(), get), None);
            let mut back = rules_of(&placed.buckets);
            back.sort_unstable_by_key(|(_, r)| *r);
            assert_eq!(back, rules);
        }
    }

    #[test]
    fn long_keys_place_too_and_duplicates_once() {
        let mut rules: Vec<([u32; 6], u32)> = (0..5000u32)
            .map(|i| ([0x0201_0106, 0xcea, 0x20010db8, 0, 0, i], i))
            .collect();
        rules.push(rules[7]);
        let placed: Placed<BucketLong> = place(&rules, 1 << 16).expect("fits");
        assert_eq!(rules_of(&placed.buckets).len(), 5000);
        let get = |i: u32| placed.buckets.get(i as usize).copied();
        assert_eq!(
            find(&rules[4999].0, placed.seed, placed.mask(), get),
            Some(4999)
        );
    }

    #[test]
    fn a_key_an_empty_slot_would_match_is_refused() {
        let e = place::<Bucket12>(&[([0, 1, 2], 7)], 8).expect_err("not a rule");
        assert!(e.to_string().contains("rule 7"), "{e}");
    }

    #[test]
    fn rules_beyond_the_room_are_refused_with_the_sizes_named() {
        let e = place::<Bucket12>(&keys12(100), 8).expect_err("too many");
        assert!(
            e.to_string()
                .contains("100 rules do not fit a region of 8 buckets"),
            "{e}"
        );
    }
}
