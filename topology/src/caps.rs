//! Per-key caps on what one party may hold open at once: connections per client address (the
//! gateway's TCP front door, the HTTP API, DNS over TCP), a client address's share of the
//! gateway's streams to one remote datacenter, and the QUIC connections and tunnelled streams of
//! one remote peer. A global cap alone lets a single party take every slot; these keep a share
//! for everyone else.
//!
//! [`KeyedCap`] is pure bookkeeping (no sockets, no clocks): a count per key behind one mutex,
//! held for a hash lookup and an add (no await, no allocation beyond the key's first slot), and
//! a [`KeyedSlot`] that gives its place back when dropped, so every exit path of a connection
//! releases it. One brief lock on admission and one on release is all a connection pays: a
//! sharded map would only pay off far above the accept rates a gateway sees (thousands a
//! second), where this lock is not contended long enough to matter.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// A client connection's place in its source address's share (`max_connections_per_client`).
pub type ClientSlot = KeyedSlot<IpAddr>;

/// At most `limit` slots held at once per key. Cheap to clone (the counts are shared).
#[derive(Debug, Clone)]
pub struct KeyedCap<K: Eq + Hash> {
    limit: u32,
    open: Arc<Mutex<HashMap<K, u32>>>,
}

impl<K: Eq + Hash + Clone> KeyedCap<K> {
    /// A cap of `limit` slots per key (at least one: a cap of zero would refuse everyone).
    pub fn new(limit: usize) -> Self {
        KeyedCap {
            limit: u32::try_from(limit.max(1)).unwrap_or(u32::MAX),
            open: Arc::default(),
        }
    }

    /// The slots allowed per key.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Takes one of `key`'s slots, or `None` when it holds all of them.
    pub fn try_acquire(&self, key: K) -> Option<KeyedSlot<K>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up first so that a refused key allocates nothing.
        if let Some(n) = open.get_mut(&key) {
            if *n >= self.limit {
                return None;
            }
            *n += 1;
        } else {
            open.insert(key.clone(), 1);
        }
        Some(KeyedSlot {
            key,
            open: Arc::clone(&self.open),
        })
    }

    /// Slots `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(key).map_or(0, |n| *n as usize)
    }

    /// Keys holding at least one slot now (the map never keeps a key at zero).
    pub fn keys(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One slot of one key; given back when dropped (the key is forgotten at zero, so the map holds
/// only parties with something open).
#[derive(Debug)]
pub struct KeyedSlot<K: Eq + Hash> {
    key: K,
    open: Arc<Mutex<HashMap<K, u32>>>,
}

impl<K: Eq + Hash> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A client address's share of a budget of `total`: `total / divisor`, but at least `floor`
/// (a small budget must still let a client open a few) and at most `total`.
pub fn share(total: usize, divisor: usize, floor: usize) -> usize {
    (total / divisor.max(1)).max(floor).min(total).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

    #[test]
    fn one_key_at_its_cap_does_not_stop_another() {
        let cap = KeyedCap::new(3);
        let held: Vec<_> = (0..3).filter_map(|_| cap.try_acquire(A)).collect();
        assert_eq!(held.len(), 3);
        assert!(cap.try_acquire(A).is_none(), "over the cap");
        assert_eq!(cap.held(&A), 3, "a refusal takes nothing");
        let b = cap.try_acquire(B).expect("another key has its own share");
        assert_eq!((cap.held(&B), cap.keys()), (1, 2));
        drop(b);
        assert_eq!((cap.held(&B), cap.keys()), (0, 1), "forgotten at zero");
    }

    #[test]
    fn a_dropped_slot_is_given_back_on_every_path() {
        let cap = KeyedCap::new(1);
        let slot = cap.try_acquire(A).expect("first");
        assert!(cap.try_acquire(A).is_none());
        // Dropped with its task (an early return, an error, a panic unwinding).
        let task = std::thread::spawn(move || {
            let _slot = slot;
            panic!("the connection's task failed");
        });
        assert!(task.join().is_err());
        assert!(cap.try_acquire(A).is_some(), "given back by the unwinding");
        // Clones share the counts.
        let other = cap.clone();
        let _held = other.try_acquire(B).expect("free");
        assert!(cap.try_acquire(B).is_none());
    }

    #[test]
    fn a_cap_of_zero_still_admits_one() {
        let cap = KeyedCap::new(0);
        assert_eq!(cap.limit(), 1);
        assert!(cap.try_acquire(A).is_some());
    }

    #[test]
    fn shares_are_a_fraction_with_a_floor_and_never_above_the_budget() {
        assert_eq!(share(1_000, 8, 4), 125);
        assert_eq!(share(16, 8, 4), 4, "the floor");
        assert_eq!(share(2, 8, 4), 2, "never more than the budget");
        assert_eq!(share(0, 8, 4), 1);
        assert_eq!(share(1_000, 0, 4), 1_000, "a divisor of zero counts as one");
    }

    proptest::proptest! {
        /// Whatever the order of acquisitions and releases, no key ever holds more than the
        /// cap, and the counts match what is held.
        #[test]
        fn never_above_the_cap(ops in proptest::collection::vec((0u8..3, proptest::bool::ANY), 0..200)) {
            let cap = KeyedCap::new(4);
            let mut held: Vec<(u8, KeyedSlot<u8>)> = Vec::new();
            for (key, take) in ops {
                if take {
                    let before = cap.held(&key);
                    match cap.try_acquire(key) {
                        Some(s) => held.push((key, s)),
                        None => proptest::prop_assert_eq!(before, 4),
                    }
                } else if let Some(i) = held.iter().position(|(k, _)| *k == key) {
                    held.swap_remove(i);
                }
                for k in 0..3u8 {
                    let n = held.iter().filter(|(h, _)| *h == k).count();
                    proptest::prop_assert!(n <= 4);
                    proptest::prop_assert_eq!(cap.held(&k), n);
                }
            }
        }
    }
}
