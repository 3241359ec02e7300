//! The origin side: what this datacenter exports, kept as hashed entries, and a bounded window of
//! recent changes so that a reconnecting subscriber resumes instead of starting over.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use imbl::OrdMap;
use meridian_topology::InstanceKey;
use meridian_topology::dc::DcState;
use tokio::sync::watch;

use crate::entry::{self, Hashed, Key};

/// Which services leave the datacenter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportPolicy {
    /// `None` exports everything; otherwise exact names and `prefix*` patterns, lowercased.
    only: Option<Vec<String>>,
}

impl ExportPolicy {
    /// Exports every service and every node.
    pub fn all() -> ExportPolicy {
        ExportPolicy { only: None }
    }

    /// Exports only services matching one of `patterns` (exact names or `prefix*`, ignoring
    /// case), and only the nodes that host them.
    pub fn only(patterns: &[String]) -> ExportPolicy {
        ExportPolicy {
            only: Some(patterns.iter().map(|p| p.to_ascii_lowercase()).collect()),
        }
    }

    /// Whether `service` leaves the datacenter.
    pub fn allows(&self, service: &str) -> bool {
        let Some(only) = &self.only else {
            return true;
        };
        // Remote gateways must find ours, and every DC must see a drain, whatever else is
        // private.
        if service.eq_ignore_ascii_case(meridian_topology::GATEWAY_SERVICE)
            || service.eq_ignore_ascii_case(meridian_topology::DRAIN_SERVICE)
        {
            return true;
        }
        only.iter()
            .any(|p| meridian_topology::names::pattern_matches(p, service))
    }

    fn all_nodes(&self) -> bool {
        self.only.is_none()
    }
}

/// One change of the exported catalog, stamped with the origin index it brings a replica to.
#[derive(Debug)]
pub struct Delta {
    /// Origin Raft index after the change.
    pub index: u64,
    /// Entries added or changed.
    pub upserts: Vec<Arc<Hashed>>,
    /// Entries removed.
    pub removals: Vec<Key>,
}

/// What a subscriber gets first.
#[derive(Debug)]
pub enum Plan {
    /// Every change after the subscriber's index.
    Resume {
        /// The changes, oldest first.
        deltas: Vec<Arc<Delta>>,
        /// The index they bring the subscriber to.
        index: u64,
        /// The origin's digest at `index`.
        digest: u64,
    },
    /// The entries of the buckets that differ (all, if `all`).
    Catchup {
        /// The subscriber drops everything it holds.
        all: bool,
        /// Buckets to replace, at `bucket_bits`.
        buckets: Vec<u32>,
        /// log2 of the bucket count.
        bucket_bits: u32,
        /// Entries of those buckets.
        entries: Vec<Arc<Hashed>>,
        /// The origin index of this state.
        index: u64,
        /// The origin's digest at `index`.
        digest: u64,
    },
}

/// The subscriber fell out of the change window (it is too slow, or the window is too small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooFarBehind;

/// The exported catalog and its recent changes.
pub struct Exporter {
    inner: Mutex<Inner>,
    policy: ExportPolicy,
    window: usize,
    changed: watch::Sender<u64>,
}

struct Inner {
    source: DcState,
    entries: OrdMap<Key, Arc<Hashed>>,
    digest: u64,
    index: u64,
    ring: VecDeque<Arc<Delta>>,
    ring_entries: usize,
    /// Every change after this index is in `ring`.
    ring_base: u64,
}

impl Exporter {
    /// Exports `state` under `policy`, remembering up to `window` changed entries for resumes.
    pub fn new(policy: ExportPolicy, window: usize, state: &DcState) -> Exporter {
        let mut entries = OrdMap::new();
        let mut digest = 0u64;
        let keys = state
            .nodes()
            .map(|n| Key::node(&n.name))
            .chain(state.instances().map(|i| Key::Instance(i.key())))
            .chain(state.tokens().iter().map(|t| Key::token(&t.key)))
            .chain(state.intentions().iter().map(|i| Key::intention(&i.key)))
            .chain(state.mesh_root().map(|_| Key::MeshRoot));
        for key in keys {
            if let Some(e) =
                entry::export_entry(state, &key, &|s| policy.allows(s), policy.all_nodes())
            {
                let h = Hashed::new(key.clone(), e);
                digest = digest.wrapping_add(h.hash);
                entries.insert(key, Arc::new(h));
            }
        }
        let index = state.index();
        Exporter {
            inner: Mutex::new(Inner {
                source: state.clone(),
                entries,
                digest,
                index,
                ring: VecDeque::new(),
                ring_entries: 0,
                ring_base: index,
            }),
            policy,
            window: window.max(1),
            changed: watch::Sender::new(index),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state behind the lock is always consistent between statements; a panic elsewhere
        // while holding it cannot leave it half-written, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the catalog to `state`; returns the change it made to the export, if any.
    pub fn update(&self, state: &DcState) -> Option<Arc<Delta>> {
        let mut inner = self.lock();
        let ch = state.changes_since(&inner.source);
        let all_nodes = self.policy.all_nodes();
        let mut keys = BTreeSet::new();
        for n in ch.nodes {
            keys.insert(Key::Node(n));
        }
        for k in ch.instances {
            if !all_nodes {
                keys.insert(Key::node(k.node()));
            }
            keys.insert(Key::Instance(k));
        }
        for t in ch.tokens {
            keys.insert(Key::Token(t));
        }
        for i in ch.intentions {
            keys.insert(Key::Intention(i));
        }
        if ch.mesh_root {
            keys.insert(Key::MeshRoot);
        }
        for n in ch.check_nodes {
            keys.insert(Key::node(&n));
            for i in state.instances_on(&n).chain(inner.source.instances_on(&n)) {
                keys.insert(Key::Instance(InstanceKey::new(&i.node, &i.id)));
            }
        }
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        let allows = |s: &str| self.policy.allows(s);
        for key in keys {
            let new = entry::export_entry(state, &key, &allows, all_nodes);
            let old_hash = inner.entries.get(&key).map(|h| h.hash);
            match (new, old_hash) {
                (Some(e), old) => {
                    let h = Hashed::new(key.clone(), e);
                    if old == Some(h.hash) {
                        continue;
                    }
                    inner.digest = inner
                        .digest
                        .wrapping_sub(old.unwrap_or(0))
                        .wrapping_add(h.hash);
                    let h = Arc::new(h);
                    inner.entries.insert(key, h.clone());
                    upserts.push(h);
                }
                (None, Some(old)) => {
                    inner.digest = inner.digest.wrapping_sub(old);
                    inner.entries.remove(&key);
                    removals.push(key);
                }
                (None, None) => {}
            }
        }
        inner.source = state.clone();
        inner.index = state.index();
        let delta = if upserts.is_empty() && removals.is_empty() {
            None
        } else {
            let d = Arc::new(Delta {
                index: state.index(),
                upserts,
                removals,
            });
            inner.ring_entries += d.upserts.len() + d.removals.len();
            inner.ring.push_back(d.clone());
            while inner.ring_entries > self.window {
                let Some(old) = inner.ring.pop_front() else {
                    break;
                };
                inner.ring_entries -= old.upserts.len() + old.removals.len();
                inner.ring_base = old.index;
            }
            Some(d)
        };
        let index = inner.index;
        drop(inner);
        self.changed.send_replace(index);
        delta
    }

    /// Tells subscriber streams about changes: the value is the export's index.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The export's index and digest.
    pub fn position(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.index, inner.digest)
    }

    /// Number of exported entries.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is exported.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What to send a subscriber at `from_index` (0: no usable index) holding `buckets` (sums of
    /// entry hashes at `bucket_bits`; empty when it holds nothing): the changes since its index
    /// when this node still has them all, else the buckets that differ. A catch-up scans every
    /// entry: call it off the runtime's workers (`spawn_blocking`).
    pub fn plan(&self, from_index: u64, bucket_bits: u32, buckets: &[u64]) -> Plan {
        // Only what is needed is taken under the lock, in O(1) for the entries (an `imbl` map
        // shares its nodes): the scan below must not hold up `update` or other subscribers.
        let (entries, index, digest) = {
            let inner = self.lock();
            if from_index > 0 && from_index >= inner.ring_base && from_index <= inner.index {
                let deltas = inner
                    .ring
                    .iter()
                    .filter(|d| d.index > from_index)
                    .cloned()
                    .collect();
                return Plan::Resume {
                    deltas,
                    index: inner.index,
                    digest: inner.digest,
                };
            }
            (inner.entries.clone(), inner.index, inner.digest)
        };
        let expected = 1usize << bucket_bits.min(entry::MAX_BUCKET_BITS);
        // Without a digest (an empty replica) everything is sent.
        let all = buckets.len() != expected || bucket_bits > entry::MAX_BUCKET_BITS;
        let (bits, differing) = if all {
            (0, HashSet::new())
        } else {
            let mut mine = vec![0u64; expected];
            for h in entries.values() {
                let b = entry::bucket_of(h.key_hash, bucket_bits) as usize;
                mine[b] = mine[b].wrapping_add(h.hash);
            }
            let differing: HashSet<u32> = (0..expected)
                .filter(|b| mine[*b] != buckets[*b])
                .filter_map(|b| u32::try_from(b).ok())
                .collect();
            (bucket_bits, differing)
        };
        let entries = entries
            .values()
            .filter(|h| all || differing.contains(&entry::bucket_of(h.key_hash, bits)))
            .cloned()
            .collect();
        let mut buckets: Vec<u32> = differing.into_iter().collect();
        buckets.sort_unstable();
        Plan::Catchup {
            all,
            buckets,
            bucket_bits: bits,
            entries,
            index,
            digest,
        }
    }

    /// The changes after `cursor` and the index they bring a subscriber to.
    pub fn deltas_after(&self, cursor: u64) -> Result<(Vec<Arc<Delta>>, u64), TooFarBehind> {
        let inner = self.lock();
        if cursor < inner.ring_base {
            return Err(TooFarBehind);
        }
        let deltas = inner
            .ring
            .iter()
            .skip_while(|d| d.index <= cursor)
            .cloned()
            .collect();
        Ok((deltas, inner.index))
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::{Check, Health, Instance, Weights};

    fn inst(node: &str, id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            node: node.into(),
            address: String::new(),
            port: 80,
            tags: vec![],
            meta: Default::default(),
            weights: Weights::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        }
    }

    fn check(node: &str, id: &str, service_id: &str) -> Check {
        Check {
            id: id.into(),
            name: id.into(),
            node: node.into(),
            service_id: service_id.into(),
            service_name: String::new(),
            status: Health::Passing,
            output: String::new(),
            notes: String::new(),
            spec: None,
            create_index: 0,
            modify_index: 0,
        }
    }

    #[test]
    fn policy_patterns() {
        let p = ExportPolicy::only(&["web".into(), "api-*".into()]);
        assert!(p.allows("WEB"));
        assert!(p.allows("api-v2"));
        assert!(p.allows("API-"));
        assert!(!p.allows("api"));
        assert!(!p.allows("db"));
        assert!(ExportPolicy::all().allows("anything"));
        assert!(
            p.allows(meridian_topology::GATEWAY_SERVICE)
                && p.allows(meridian_topology::DRAIN_SERVICE),
            "gateways are always exported"
        );
    }

    #[test]
    fn updates_emit_only_what_changed_and_respect_the_policy() {
        let mut s = DcState::default();
        s.register(
            inst("n1", "web1", "web"),
            vec![check("n1", "c1", "web1")],
            1,
        );
        s.register(inst("n1", "db1", "db"), vec![], 2);
        let x = Exporter::new(ExportPolicy::only(&["web".into()]), 100, &s);
        assert_eq!(
            x.len(),
            1,
            "web1 only: n1 has no node record, db is private"
        );

        s.update_check("n1", "c1", Health::Critical, "down", 3);
        let d = x.update(&s).expect("a delta");
        assert_eq!(d.index, 3);
        assert_eq!(d.upserts.len(), 1);
        assert_eq!(
            d.upserts[0].key,
            Key::Instance(InstanceKey::new("n1", "web1"))
        );

        s.register(inst("n1", "db2", "db"), vec![], 4);
        assert!(x.update(&s).is_none(), "private change, no delta");
        assert_eq!(x.position().0, 4, "the index still moves");

        s.deregister("n1", "web1", 5);
        let d = x.update(&s).expect("a delta");
        assert_eq!(d.removals, [Key::Instance(InstanceKey::new("n1", "web1"))]);
        assert!(x.is_empty());
    }

    #[test]
    fn resume_inside_the_window_catchup_outside() {
        let mut s = DcState::default();
        for i in 0..64 {
            s.register(inst("n1", &format!("w{i}"), "web"), vec![], i + 1);
        }
        let x = Exporter::new(ExportPolicy::all(), 3, &s);
        let (start, _) = x.position();
        s.register(inst("n1", "x1", "web"), vec![], 100);
        x.update(&s);
        match x.plan(start, 0, &[]) {
            Plan::Resume { deltas, index, .. } => assert_eq!((deltas.len(), index), (1, 100)),
            other => panic!("expected a resume, got {other:?}"),
        }
        // A subscriber that holds the state at `start` gets only the bucket that changed.
        let bits = 4;
        let mut buckets = vec![0u64; 16];
        let old = Exporter::new(ExportPolicy::all(), 3, &{
            let mut t = DcState::default();
            for i in 0..64 {
                t.register(inst("n1", &format!("w{i}"), "web"), vec![], i + 1);
            }
            t
        });
        if let Plan::Catchup { entries, .. } = old.plan(0, 0, &[]) {
            for h in entries {
                let b = h.key.bucket(bits) as usize;
                buckets[b] = buckets[b].wrapping_add(h.hash);
            }
        }
        for i in 0..5 {
            s.register(inst("n1", &format!("y{i}"), "web"), vec![], 200 + i);
            x.update(&s);
        }
        assert!(matches!(x.deltas_after(start), Err(TooFarBehind)));
        match x.plan(start, bits, &buckets) {
            Plan::Catchup {
                all,
                buckets,
                entries,
                ..
            } => {
                assert!(!all);
                assert!(buckets.len() <= 6, "{buckets:?}");
                let keys: Vec<String> = entries
                    .iter()
                    .filter_map(|h| match &h.key {
                        Key::Instance(k) => Some(k.id().to_owned()),
                        Key::Node(_) | Key::Token(_) | Key::Intention(_) | Key::MeshRoot => None,
                    })
                    .collect();
                for id in ["x1", "y0", "y4"] {
                    assert!(keys.contains(&id.to_owned()), "{id} missing from {keys:?}");
                }
                assert!(entries.len() < 40, "sent {} of 70", entries.len());
            }
            other => panic!("expected a catch-up, got {other:?}"),
        }
    }
}
