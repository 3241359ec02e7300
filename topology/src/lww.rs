//! Last-writer-wins records for state that every datacenter may write and none owns: ACL tokens
//! created through the API, and (the mesh issue) intentions. There is no primary DC.
//!
//! Each DC writes its records only into its own Raft group, and federation carries every DC's
//! records to every other. What a key means is then a pure function of all the records any DC
//! holds for it: the one with the highest [`Stamp`] wins. That is a hybrid logical clock, then
//! the origin DC's name as a tie-break, so every DC that holds the same records decides the same,
//! in whatever order they arrived. A delete is a record too (a tombstone), so it wins over older
//! writes everywhere instead of being undone by a replica that still holds them.

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
