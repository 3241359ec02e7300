//! The sorted set of instance keys a catalog index holds per name (a service's instances, a
//! destination's sidecars), sized for the common case of a few.
//!
//! An `imbl` set allocates a whole B-tree leaf (room for sixteen keys, about 430 bytes) even for
//! one key, and most services have a handful of instances: with a million remote instances at
//! five per service the leaves alone were 85 bytes per instance. Up to [`SMALL`] keys the set is a
//! shared sorted slice instead (one allocation of just the keys, copied on write, which at this
//! size costs less than a tree's path copy); beyond that, the persistent tree, whose updates stay
//! O(log n) for a service of ten thousand instances.

use std::sync::Arc;

use imbl::OrdSet;

use crate::model::InstanceKey;

/// Most keys held as a slice; a set growing past it becomes a tree.
const SMALL: usize = 8;
/// A tree shrinking to this many keys becomes a slice again (below [`SMALL`], so that a set at
/// the boundary does not convert on every change).
const SHRINK: usize = SMALL / 2;

/// A sorted set of instance keys, cheap to clone (structure-shared).
#[derive(Clone, Debug)]
pub(crate) enum KeySet {
    /// Up to [`SMALL`] keys, sorted.
    Small(Arc<[InstanceKey]>),
    /// More.
    Large(OrdSet<InstanceKey>),
}

impl Default for KeySet {
    fn default() -> Self {
        KeySet::Small(Arc::new([]))
    }
}

impl KeySet {
    /// Adds `key`, replacing an equal key (so the set holds the caller's allocation, which the
    /// catalog shares between its maps).
    pub(crate) fn insert(&mut self, key: InstanceKey) {
        match self {
            KeySet::Small(keys) => {
                let mut v = Vec::with_capacity(keys.len() + 1);
                v.extend_from_slice(keys);
                match v.binary_search(&key) {
                    Ok(i) => v[i] = key,
                    Err(i) => v.insert(i, key),
                }
                *self = if v.len() > SMALL {
                    KeySet::Large(v.into_iter().collect())
                } else {
                    KeySet::Small(v.into())
                };
            }
            KeySet::Large(set) => {
                set.insert(key);
            }
        }
    }

    /// Removes `key`; returns whether it was there.
    pub(crate) fn remove(&mut self, key: &InstanceKey) -> bool {
        match self {
            KeySet::Small(keys) => {
                let Ok(i) = keys.binary_search(key) else {
                    return false;
                };
                let mut v = keys.to_vec();
                v.remove(i);
                *self = KeySet::Small(v.into());
                true
            }
            KeySet::Large(set) => {
                let removed = set.remove(key).is_some();
                if set.len() <= SHRINK {
                    *self = KeySet::Small(set.iter().cloned().collect());
                }
                removed
            }
        }
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            KeySet::Small(keys) => keys.is_empty(),
            KeySet::Large(set) => set.is_empty(),
        }
    }

    /// The keys, in order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        match self {
            KeySet::Small(keys) => Iter::Small(keys.iter()),
            KeySet::Large(set) => Iter::Large(set.iter()),
        }
    }
}

/// The keys of a [`KeySet`], in order.
pub(crate) enum Iter<'a> {
    Small(std::slice::Iter<'a, InstanceKey>),
    Large(imbl::ordset::Iter<'a, InstanceKey, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a InstanceKey;

    fn next(&mut self) -> Option<&'a InstanceKey> {
        match self {
            Iter::Small(i) => i.next(),
            Iter::Large(i) => i.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn key(n: u8) -> InstanceKey {
        InstanceKey::new(&format!("n{}", n % 3), &format!("i{n}"))
    }

    proptest! {
        /// Inserts and removals across both representations leave the same keys, in the same
        /// order, as a `BTreeSet`, and a clone taken midway keeps its own keys.
        #[test]
        fn behaves_as_a_sorted_set(ops in proptest::collection::vec((any::<bool>(), 0u8..24), 0..200)) {
            let mut set = KeySet::default();
            let mut model = BTreeSet::new();
            let mut frozen = None;
            for (i, (add, n)) in ops.iter().enumerate() {
                if *add {
                    set.insert(key(*n));
                    model.insert(key(*n));
                } else {
                    prop_assert_eq!(set.remove(&key(*n)), model.remove(&key(*n)));
                }
                if i == ops.len() / 2 {
                    frozen = Some((set.clone(), model.clone()));
                }
                prop_assert_eq!(set.iter().cloned().collect::<Vec<_>>(), model.iter().cloned().collect::<Vec<_>>());
                prop_assert_eq!(set.is_empty(), model.is_empty());
                let small = matches!(set, KeySet::Small(_));
                prop_assert!(!small || model.len() <= SMALL, "a slice of {} keys", model.len());
                prop_assert!(small || model.len() > SHRINK, "a tree of {} keys", model.len());
            }
            if let Some((set, model)) = frozen {
                prop_assert_eq!(set.iter().cloned().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn an_equal_key_is_replaced_by_the_new_allocation() {
        for n in [3, 12] {
            let mut set = KeySet::default();
            for i in 0..n {
                set.insert(key(i));
            }
            let fresh = key(1);
            set.insert(fresh.clone());
            let held = set.iter().find(|k| **k == fresh);
            assert!(held.is_some_and(|k| k.shares_text(&fresh)), "{n} keys");
        }
    }
}
