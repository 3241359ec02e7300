//! The sorted set of instances a catalog index holds per name (a service's instances, a
//! destination's sidecars), sized for the common case of a few, and holding the instances
//! themselves so that reading a service costs no lookup per instance.
//!
//! An `imbl` map allocates a whole B-tree leaf (room for sixteen entries) even for one, and most
//! services have a handful of instances: up to [`SMALL`] instances the set is a shared slice of
//! the instances' `Arc`s sorted by key (one allocation of 8 bytes an instance, copied on write,
//! which at this size costs less than a tree's path copy); beyond that, a persistent map by key,
//! whose updates stay O(log n) for a service of ten thousand instances. Holding the instance
//! rather than its key matters at scale: resolving a service of five instances in a catalog of a
//! million was five more B-tree descents through memory no cache holds, half of a DNS answer's
//! time (`meridian-bench scale`). The catalog replaces an instance's `Arc` here whenever it
//! replaces it in its main map (both go through `DcState`'s one insert and one removal).

use std::cmp::Ordering;
use std::sync::Arc;

use imbl::OrdMap;

use crate::model::{Instance, InstanceKey};

/// Most instances held as a slice; a set growing past it becomes a tree.
const SMALL: usize = 8;
/// A tree shrinking to this many instances becomes a slice again (below [`SMALL`], so that a
/// set at the boundary does not convert on every change).
const SHRINK: usize = SMALL / 2;

/// An instance's place against a key: instances sort by node, then ID, as their keys do.
fn by_key(inst: &Instance, key: &InstanceKey) -> Ordering {
    (&*inst.node, inst.id.as_str()).cmp(&(key.node(), key.id()))
}

/// A sorted set of instances by key, cheap to clone (structure-shared).
#[derive(Clone, Debug)]
pub(crate) enum InstanceSet {
    /// Up to [`SMALL`] instances, sorted by key.
    Small(Arc<[Arc<Instance>]>),
    /// More.
    Large(OrdMap<InstanceKey, Arc<Instance>>),
}

impl Default for InstanceSet {
    fn default() -> Self {
        InstanceSet::Small(Arc::new([]))
    }
}

impl InstanceSet {
    /// Adds `inst` under `key` (its key), replacing the instance held under an equal key.
    pub(crate) fn insert(&mut self, key: &InstanceKey, inst: Arc<Instance>) {
        match self {
            InstanceSet::Small(held) => {
                let mut v = Vec::with_capacity(held.len() + 1);
                v.extend_from_slice(held);
                match v.binary_search_by(|i| by_key(i, key)) {
                    Ok(at) => v[at] = inst,
                    Err(at) => v.insert(at, inst),
                }
                *self = if v.len() > SMALL {
                    InstanceSet::Large(v.into_iter().map(|i| (i.key(), i)).collect())
                } else {
                    InstanceSet::Small(v.into())
                };
            }
            InstanceSet::Large(map) => {
                map.insert(key.clone(), inst);
            }
        }
    }

    /// Removes the instance under `key`; returns whether there was one.
    pub(crate) fn remove(&mut self, key: &InstanceKey) -> bool {
        match self {
            InstanceSet::Small(held) => {
                let Ok(at) = held.binary_search_by(|i| by_key(i, key)) else {
                    return false;
                };
                let mut v = held.to_vec();
                v.remove(at);
                *self = InstanceSet::Small(v.into());
                true
            }
            InstanceSet::Large(map) => {
                let removed = map.remove(key).is_some();
                if map.len() <= SHRINK {
                    *self = InstanceSet::Small(map.values().cloned().collect());
                }
                removed
            }
        }
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            InstanceSet::Small(held) => held.is_empty(),
            InstanceSet::Large(map) => map.is_empty(),
        }
    }

    /// The first instance in key order, found without building an iterator (a tree's iterator
    /// seeks both of its ends).
    pub(crate) fn first(&self) -> Option<&Instance> {
        match self {
            InstanceSet::Small(held) => held.first().map(|i| &**i),
            InstanceSet::Large(map) => map.get_min().map(|(_, i)| &**i),
        }
    }

    /// The instances, in key order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        match self {
            InstanceSet::Small(held) => Iter::Small(held.iter()),
            InstanceSet::Large(map) => Iter::Large(map.values()),
        }
    }
}

/// The instances of an [`InstanceSet`], in key order.
pub(crate) enum Iter<'a> {
    Small(std::slice::Iter<'a, Arc<Instance>>),
    Large(imbl::ordmap::Values<'a, InstanceKey, Arc<Instance>, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Instance;

    fn next(&mut self) -> Option<&'a Instance> {
        match self {
            Iter::Small(i) => i.next().map(|i| &**i),
            Iter::Large(i) => i.next().map(|i| &**i),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// Instance `n` (on one of three nodes), at `port`.
    fn inst(n: u8, port: u16) -> Arc<Instance> {
        let mut i = crate::dc::tests::inst(&format!("n{}", n % 3), &format!("i{n}"), "web");
        i.port = port;
        Arc::new(i)
    }

    fn listed(set: &InstanceSet) -> Vec<(InstanceKey, u16)> {
        set.iter().map(|i| (i.key(), i.port)).collect()
    }

    proptest! {
        /// Inserts (new instances and replacements) and removals across both representations
        /// leave the same instances, in the same order, as a `BTreeMap` by key, and a clone
        /// taken midway keeps its own.
        #[test]
        fn behaves_as_a_sorted_map_by_key(
            ops in proptest::collection::vec((any::<bool>(), 0u8..24, 0u16..4), 0..200),
        ) {
            let mut set = InstanceSet::default();
            let mut model = BTreeMap::new();
            let mut frozen = None;
            for (i, (add, n, port)) in ops.iter().enumerate() {
                let inst = inst(*n, *port);
                let key = inst.key();
                if *add {
                    set.insert(&key, inst);
                    model.insert(key, *port);
                } else {
                    prop_assert_eq!(set.remove(&key), model.remove(&key).is_some());
                }
                if i == ops.len() / 2 {
                    frozen = Some((set.clone(), model.clone()));
                }
                prop_assert_eq!(listed(&set), model.clone().into_iter().collect::<Vec<_>>());
                prop_assert_eq!(set.is_empty(), model.is_empty());
                prop_assert_eq!(
                    set.first().map(|i| (i.key(), i.port)),
                    model.iter().next().map(|(k, p)| (k.clone(), *p))
                );
                let small = matches!(set, InstanceSet::Small(_));
                prop_assert!(!small || model.len() <= SMALL, "a slice of {} instances", model.len());
                prop_assert!(small || model.len() > SHRINK, "a tree of {} instances", model.len());
            }
            if let Some((set, model)) = frozen {
                prop_assert_eq!(listed(&set), model.into_iter().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn an_equal_key_is_replaced_by_the_new_instance() {
        for n in [3, 12] {
            let mut set = InstanceSet::default();
            for i in 0..n {
                let inst = inst(i, 0);
                set.insert(&inst.key(), inst);
            }
            let fresh = inst(1, 9);
            set.insert(&fresh.key(), fresh.clone());
            let held = set.iter().find(|i| i.key() == fresh.key());
            assert!(
                held.is_some_and(|i| std::ptr::eq(i, &*fresh)),
                "{n} instances"
            );
        }
    }
}
