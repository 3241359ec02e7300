//! Last-writer-wins records for state that every datacenter may write and none owns: ACL tokens
//! created through the API, and (the mesh issue) intentions. There is no primary DC.
//!
//! Each DC writes its records only into its own Raft group, and federation carries every DC's
//! records to every other. What a key means is then a pure function of all the records any DC
//! holds for it: the one with the highest [`Stamp`] wins. That is a hybrid logical clock, then
//! the origin DC's name as a tie-break, so every DC that holds the same records decides the same,
//! in whatever order they arrived. A delete is a record too (a tombstone), so it wins over older
//! writes everywhere instead of being undone by a replica that still holds them.

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

/// When and where a record was written: ordered by the hybrid logical clock, then by the origin
/// DC's name, which makes the order total. (Field order is the order: `hlc` first.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Hybrid logical clock: milliseconds since the Unix epoch, pushed past every stamp the
    /// writer had seen ([`Stamp::next`]).
    pub hlc: u64,
    /// The datacenter that wrote it, in lowercase (DC names compare without case).
    pub origin: String,
}

impl Stamp {
    /// The stamp for a write in `origin` at wall-clock `now_ms`, after every stamp in `seen` (the
    /// records the writer holds for that key): later than all of them even when this DC's clock
    /// is behind theirs, so a write always supersedes what its writer saw.
    pub fn next<'a>(origin: &str, now_ms: u64, seen: impl IntoIterator<Item = &'a Stamp>) -> Stamp {
        let after = seen.into_iter().map(|s| s.hlc.saturating_add(1)).max();
        Stamp {
            hlc: after.map_or(now_ms, |a| a.max(now_ms)),
            origin: origin.to_ascii_lowercase(),
        }
    }
}

/// One DC's record for a key: a value, or a tombstone (`None`) that deletes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<T> {
    /// When and where it was written.
    pub stamp: Stamp,
    /// The value; `None` when the key was deleted.
    pub value: Option<T>,
}

/// What a key holds, given every record any DC holds for it: the value of the record with the
/// highest stamp, or nothing if that record is a tombstone (or there is no record). Records with
/// equal stamps are the same write seen twice; the first one is taken.
pub fn winner<'a, T>(records: impl IntoIterator<Item = &'a Record<T>>) -> Option<&'a T>
where
    T: 'a,
{
    let mut best: Option<&Record<T>> = None;
    for r in records {
        if best.is_none_or(|b| r.stamp > b.stamp) {
            best = Some(r);
        }
    }
    best.and_then(|r| r.value.as_ref())
}

/// One DC's record under a key, with the key as first written (keys compare ignoring case).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyed<V> {
    /// The key, as written.
    pub key: String,
    /// The write.
    pub record: Record<V>,
}

/// One DC's records by lowercased key: what it wrote itself, or a replica of another DC's.
/// Cheap to clone; two clones of one map compare equal by pointer ([`Records::same`]), which
/// is how readers notice a change.
#[derive(Debug)]
pub struct Records<V>(OrdMap<String, Arc<Keyed<V>>>);

impl<V> Clone for Records<V> {
    fn clone(&self) -> Self {
        Records(self.0.clone())
    }
}

impl<V> Default for Records<V> {
    fn default() -> Self {
        Records(OrdMap::new())
    }
}

impl<V: PartialEq> Records<V> {
    /// The record under `key` (ignoring case).
    pub fn get(&self, key: &str) -> Option<&Keyed<V>> {
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            self.0.get(key.to_ascii_lowercase().as_str()).map(|r| &**r)
        } else {
            self.0.get(key).map(|r| &**r)
        }
    }

    /// Every record, by lowercased key.
    pub fn iter(&self) -> impl Iterator<Item = &Keyed<V>> {
        self.0.values().map(|r| &**r)
    }

    /// Every lowercased key with its record.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Keyed<V>)> {
        self.0.iter().map(|(k, r)| (k.as_str(), &**r))
    }

    /// How many records (tombstones included).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` is this very map (not a changed copy): O(1).
    pub fn same(&self, other: &Records<V>) -> bool {
        self.0.ptr_eq(&other.0)
    }

    /// Takes a write of this DC: only if its stamp is later than the record it replaces (a write
    /// stamps after what its writer saw, so a stale retry is refused), and a new key only while
    /// fewer than `cap` records are kept. Returns whether it was taken.
    pub fn set(&mut self, r: Keyed<V>, cap: usize) -> bool {
        let key = r.key.to_ascii_lowercase();
        match self.0.get(&key) {
            Some(old) if old.record.stamp >= r.record.stamp => return false,
            None if self.0.len() >= cap => return false,
            _ => {}
        }
        self.0.insert(key, Arc::new(r));
        true
    }

    /// Puts a record as another DC holds it (a replica follows its origin).
    pub fn put(&mut self, r: Keyed<V>) {
        self.0.insert(r.key.to_ascii_lowercase(), Arc::new(r));
    }

    /// Removes the record under `key`. Returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.0.remove(key.to_ascii_lowercase().as_str()).is_some()
    }

    /// Removes the record under `key` if it is still the one stamped `stamp`. Returns whether it
    /// was removed.
    pub fn prune(&mut self, key: &str, stamp: &Stamp) -> bool {
        let key = key.to_ascii_lowercase();
        if self.0.get(&key).is_some_and(|r| r.record.stamp == *stamp) {
            self.0.remove(&key);
            return true;
        }
        false
    }

    /// The lowercased keys added, changed or removed since `old` (this map derived from it:
    /// O(changes × log n)).
    pub fn changed_since<'a>(&'a self, old: &'a Records<V>) -> impl Iterator<Item = &'a str> {
        // Subtrees the two maps share are skipped: nothing at all when they are the same map.
        old.0.diff(&self.0).map(|d| match d {
            imbl::ordmap::DiffItem::Add(k, _) | imbl::ordmap::DiffItem::Remove(k, _) => k.as_str(),
            imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k.as_str(),
        })
    }
}

/// Every lowercased key any of `maps` holds, once each, sorted.
pub fn all_keys<'a, V: PartialEq>(maps: &[&'a Records<V>]) -> Vec<&'a str> {
    let mut keys: Vec<&str> = maps
        .iter()
        .flat_map(|m| m.entries().map(|(k, _)| k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The stamp of a write of `key` in `origin` at wall-clock `now_ms`, after every DC's record of
/// it among `maps` ([`Stamp::next`]).
pub fn next_stamp<'a, V: PartialEq + 'a>(
    origin: &str,
    now_ms: u64,
    maps: impl IntoIterator<Item = &'a Records<V>>,
    key: &str,
) -> Stamp {
    let seen: Vec<&Stamp> = maps
        .into_iter()
        .filter_map(|m| m.get(key))
        .map(|r| &r.record.stamp)
        .collect();
    Stamp::next(origin, now_ms, seen)
}

/// What is in force given every DC's records of one kind (the API tokens, the intentions):
/// decided once from all of them, then followed change by change. Readers keep one and ask it
/// to follow the views they see.
pub trait Decided: Default + Clone {
    /// The kind of record.
    type Value: PartialEq;

    /// Decides everything from `maps` (one per DC, in any order).
    fn build(maps: &[Records<Self::Value>]) -> Self;

    /// This, after the DCs' records went from `old` to `new` (the same DCs in the same order).
    fn updated(&self, old: &[Records<Self::Value>], new: &[Records<Self::Value>]) -> Self;
}

/// The record in force under the lowercased `key` given every DC's `maps`: the one with the
/// highest stamp, unless it is a tombstone.
pub fn decide<'a, V: PartialEq>(maps: &[&'a Records<V>], key: &str) -> Option<&'a Keyed<V>> {
    let mut best: Option<&Keyed<V>> = None;
    for m in maps {
        if let Some(r) = m.0.get(key)
            && best.is_none_or(|b| r.record.stamp > b.record.stamp)
        {
            best = Some(r);
        }
    }
    best.filter(|r| r.record.value.is_some())
}

/// The lowercased keys whose records changed between `old` and `new` (one map per DC, the same
/// DCs in the same order), or `None` when more than `max` did: then deciding everything again
/// costs as much.
pub fn changed_keys<'a, V: PartialEq>(
    old: &'a [Records<V>],
    new: &'a [Records<V>],
    max: usize,
) -> Option<Vec<&'a str>> {
    if old.len() != new.len() {
        return None;
    }
    let mut changed = Vec::new();
    for (o, n) in old.iter().zip(new) {
        for k in n.changed_since(o) {
            changed.push(k);
            if changed.len() > max {
                return None;
            }
        }
    }
    changed.sort_unstable();
    changed.dedup();
    Some(changed)
}

/// This DC's records (`local`) that can never be in force again, given the other DCs'
/// (`remotes`) at wall-clock `now_ms`: those another DC has outranked with a later write of the
/// same key, and tombstones older than `horizon_ms`. Its leader removes them through Raft, each
/// only if it is still that very record ([`Records::prune`]), so that a DC's records stay
/// bounded by what is in force and the recent deletes, not by everything ever written.
pub fn prunable<'a, V: PartialEq + 'a>(
    local: &Records<V>,
    remotes: impl IntoIterator<Item = &'a Records<V>>,
    now_ms: u64,
    horizon_ms: u64,
) -> Vec<(String, Stamp)> {
    let remotes: Vec<&Records<V>> = remotes.into_iter().collect();
    local
        .0
        .iter()
        .filter(|(key, r)| {
            let stamp = &r.record.stamp;
            let outranked = remotes
                .iter()
                .any(|m| m.0.get(*key).is_some_and(|o| o.record.stamp > *stamp));
            let expired = r.record.value.is_none() && stamp.hlc.saturating_add(horizon_ms) < now_ms;
            outranked || expired
        })
        .map(|(_, r)| (r.key.clone(), r.record.stamp.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(hlc: u64, origin: &str, value: Option<u32>) -> Record<u32> {
        Record {
            stamp: Stamp {
                hlc,
                origin: origin.to_ascii_lowercase(),
            },
            value,
        }
    }

    #[test]
    fn the_latest_write_wins_and_a_later_delete_removes_it() {
        let a = rec(10, "dc1", Some(1));
        let b = rec(20, "dc2", Some(2));
        assert_eq!(winner([&a, &b]), Some(&2));
        assert_eq!(winner([&b, &a]), Some(&2));
        let gone = rec(30, "dc1", None);
        assert_eq!(winner([&a, &b, &gone]), None);
        let again = rec(40, "dc3", Some(3));
        assert_eq!(winner([&gone, &again, &a]), Some(&3));
        assert_eq!(winner::<u32>([]), None);
    }

    #[test]
    fn equal_clocks_are_ordered_by_the_origin() {
        let a = rec(10, "dc1", Some(1));
        let b = rec(10, "dc2", Some(2));
        assert_eq!(winner([&a, &b]), Some(&2));
        assert_eq!(winner([&b, &a]), Some(&2));
        assert_eq!(Stamp::next("DC1", 10, []), a.stamp, "origins are lowercase");
    }

    #[test]
    fn a_write_stamps_after_what_it_saw_even_with_a_clock_behind() {
        let seen = [
            Stamp {
                hlc: 5_000,
                origin: "dc2".into(),
            },
            Stamp {
                hlc: 7_000,
                origin: "dc3".into(),
            },
        ];
        let next = Stamp::next("dc1", 1_000, &seen);
        assert_eq!(next.hlc, 7_001);
        assert!(seen.iter().all(|s| next > *s));
        assert_eq!(Stamp::next("dc1", 9_000, &seen).hlc, 9_000);
        assert_eq!(Stamp::next("dc1", 9_000, []).hlc, 9_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// Every DC decides the same whatever order its records arrived in, and the winner is a
        /// record with the highest stamp.
        #[test]
        fn every_order_of_the_same_records_decides_the_same(
            records in proptest::collection::vec(
                (0u64..50, prop::sample::select(vec!["dc1", "dc2", "dc3"]), proptest::option::of(0u32..5)),
                0..12,
            ),
            seed in any::<u64>(),
        ) {
            let records: Vec<Record<u32>> =
                records.into_iter().map(|(h, o, v)| rec(h, o, v)).collect();
            let mut shuffled = records.clone();
            // A permutation from the seed (Fisher-Yates with a small LCG: no RNG needed here).
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let j = usize::try_from(state >> 33).unwrap_or(0) % (i + 1);
                shuffled.swap(i, j);
            }
            let stamps = |v: &[Record<u32>]| v.iter().map(|r| r.stamp.clone()).max();
            let (top_a, top_b) = (stamps(&records), stamps(&shuffled));
            prop_assert_eq!(&top_a, &top_b);
            let a = winner(&records);
            let b = winner(&shuffled);
            // Equal stamps are one write: their values agree in every real history, so compare
            // only when the top stamp is unique.
            let top_count = records.iter().filter(|r| Some(&r.stamp) == top_a.as_ref()).count();
            if top_count == 1 {
                prop_assert_eq!(a, b);
                let top = records.iter().find(|r| Some(&r.stamp) == top_a.as_ref());
                prop_assert_eq!(a, top.and_then(|r| r.value.as_ref()));
            }
        }
    }
}
