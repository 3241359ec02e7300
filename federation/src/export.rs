//! The origin side: what this datacenter exports, kept as hashed entries, and a bounded window of
//! recent changes so that a reconnecting subscriber resumes instead of starting over.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use imbl::OrdMap;
use meridian_topology::InstanceKey;
use meridian_topology::dc::DcState;
use tokio::sync::watch;

use meridian_protos::federation as pb;

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
    /// The entries of the buckets that differ (all, if `all`); or, for a subscriber that sent
    /// its keys' sums, the entries changed after its index and the keys of the buckets whose
    /// keys differ.
    Catchup {
        /// The subscriber drops everything it holds.
        all: bool,
        /// Buckets to replace, at `bucket_bits`.
        buckets: Vec<u32>,
        /// Buckets where the subscriber keeps only the entries whose key is listed.
        kept: Vec<pb::BucketKeys>,
        /// log2 of the bucket count.
        bucket_bits: u32,
        /// Entries of those buckets, or the changed entries.
        entries: Vec<Arc<Hashed>>,
        /// The origin index of this state.
        index: u64,
        /// The origin's digest at `index`.
        digest: u64,
    },
}

/// A subscriber's digest: per bucket, what it sums. It says what a catch-up sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sums<'a> {
    /// Its entries' hashes: every entry of each bucket that differs is sent (it has no index
    /// this node can trust, or its state is not one this node had). Empty: it holds nothing.
    Entries(&'a [u64]),
    /// Its keys' short hashes ([`entry::short_key_hash`]), with an index it trusts: the entries
    /// changed after that index are sent, and each bucket whose keys differ from this node's at
    /// that index is sent as the list of this node's keys there (the subscriber drops the
    /// others: the removed ones).
    Keys(&'a [u32]),
}

/// When an entry found in the catalog at start last changed in the export, as far as the
/// catalog's indices tell: `(born, since)` (see [`Exported`]). Tokens, intentions and the mesh
/// root carry no index (few: they count as changed at `index`); so does a node exported only
/// for the exported instances it hosts, which it may have got later than its own indices. A
/// check removed without any other change leaves no index: a subscriber that misses it this
/// way finds a digest mismatch and catches up by entry sums.
fn changed_at(e: &pb::Entry, index: u64, all_nodes: bool) -> (u64, u64) {
    let checks = |c: &[pb::Check]| c.iter().map(|c| c.modify_index).max().unwrap_or(0);
    match e.entry.as_ref() {
        Some(pb::entry::Entry::Node(n)) if all_nodes => n.node.as_ref().map_or((0, index), |o| {
            (o.create_index, o.modify_index.max(checks(&n.checks)))
        }),
        Some(pb::entry::Entry::Instance(i)) => i.instance.as_ref().map_or((0, index), |o| {
            (o.create_index, o.modify_index.max(checks(&i.checks)))
        }),
        _ => (0, index),
    }
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

/// An exported entry and when it last changed, so that a subscriber at an index outside the
/// change window is sent what changed after it, not whole buckets.
#[derive(Clone)]
struct Exported {
    h: Arc<Hashed>,
    /// The index since which the key has been exported: a subscriber at this index or later
    /// holds it. A wrong value costs a bucket's key list, or at worst (with `since` not after
    /// the subscriber's index either) a second catch-up by entry sums once the digest at
    /// `Synced` differs.
    born: u64,
    /// The index of the entry's last change, or a later one: a subscriber at this index or
    /// later holds this very entry.
    since: u64,
}

struct Inner {
    source: DcState,
    entries: OrdMap<Key, Exported>,
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
        let index = state.index();
        for key in keys {
            if let Some(e) =
                entry::export_entry(state, &key, &|s| policy.allows(s), policy.all_nodes())
            {
                let (born, since) = changed_at(&e, index, policy.all_nodes());
                let h = Hashed::new(key.clone(), e);
                digest = digest.wrapping_add(h.hash);
                entries.insert(
                    key,
                    Exported {
                        h: Arc::new(h),
                        born,
                        since,
                    },
                );
            }
        }
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
        let index = state.index();
        for key in keys {
            let new = entry::export_entry(state, &key, &allows, all_nodes);
            let old = inner.entries.get(&key).map(|x| (x.h.hash, x.born));
            match (new, old) {
                (Some(e), old) => {
                    let h = Hashed::new(key.clone(), e);
                    if old.map(|o| o.0) == Some(h.hash) {
                        continue;
                    }
                    inner.digest = inner
                        .digest
                        .wrapping_sub(old.map_or(0, |o| o.0))
                        .wrapping_add(h.hash);
                    let h = Arc::new(h);
                    let born = old.map_or(index, |o| o.1);
                    inner.entries.insert(
                        key,
                        Exported {
                            h: h.clone(),
                            born,
                            since: index,
                        },
                    );
                    upserts.push(h);
                }
                (None, Some((old, _))) => {
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

    /// What to send the subscriber that asked with `req`: [`Exporter::plan`] with the sums it
    /// sent, of its entries or of its keys.
    pub fn plan_request(&self, req: &pb::SubscribeRequest) -> Plan {
        let sums = if req.key_sums.is_empty() {
            Sums::Entries(&req.buckets)
        } else {
            Sums::Keys(&req.key_sums)
        };
        self.plan(req.from_index, req.bucket_bits, sums)
    }

    /// What to send a subscriber at `from_index` (0: no usable index) whose digest is `sums` at
    /// `bucket_bits`: the changes since its index when this node still has them all, else a
    /// catch-up (see [`Sums`]). A catch-up scans every entry: call it off the runtime's workers
    /// (`spawn_blocking`).
    pub fn plan(&self, from_index: u64, bucket_bits: u32, sums: Sums<'_>) -> Plan {
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
        // Without a digest (an empty replica) everything is sent; key sums also need an index
        // this node has reached (a subscriber ahead of it holds changes it cannot name).
        let (len, keys) = match sums {
            Sums::Entries(b) => (b.len(), false),
            Sums::Keys(b) => (b.len(), true),
        };
        let all = len != expected
            || bucket_bits > entry::MAX_BUCKET_BITS
            || keys && (from_index == 0 || from_index > index);
        if all {
            return Plan::Catchup {
                all: true,
                buckets: Vec::new(),
                kept: Vec::new(),
                bucket_bits: 0,
                entries: entries.values().map(|x| x.h.clone()).collect(),
                index,
                digest,
            };
        }
        fn differing<T: PartialEq>(mine: &[T], theirs: &[T]) -> Vec<u32> {
            (0..mine.len())
                .filter(|b| mine[*b] != theirs[*b])
                .filter_map(|b| u32::try_from(b).ok())
                .collect()
        }
        let bucket = |x: &Exported| entry::bucket_of(x.h.key_hash, bucket_bits);
        match sums {
            Sums::Entries(theirs) => {
                let mut mine = vec![0u64; expected];
                for x in entries.values() {
                    let b = bucket(x) as usize;
                    mine[b] = mine[b].wrapping_add(x.h.hash);
                }
                let buckets = differing(&mine, theirs);
                let sent = entries
                    .values()
                    .filter(|x| buckets.binary_search(&bucket(x)).is_ok())
                    .map(|x| x.h.clone())
                    .collect();
                Plan::Catchup {
                    all: false,
                    buckets,
                    kept: Vec::new(),
                    bucket_bits,
                    entries: sent,
                    index,
                    digest,
                }
            }
            Sums::Keys(theirs) => {
                // The keys the subscriber held at its index, if it held exactly our export then.
                let mut mine = vec![0u32; expected];
                for x in entries.values().filter(|x| x.born <= from_index) {
                    let b = bucket(x) as usize;
                    mine[b] = mine[b].wrapping_add(entry::short_key_hash(x.h.key_hash));
                }
                let mut kept: Vec<pb::BucketKeys> = differing(&mine, theirs)
                    .into_iter()
                    .map(|bucket| pb::BucketKeys {
                        bucket,
                        keys: Vec::new(),
                    })
                    .collect();
                let mut sent = Vec::new();
                for x in entries.values() {
                    if x.since > from_index {
                        sent.push(x.h.clone());
                    }
                    if let Ok(i) = kept.binary_search_by_key(&bucket(x), |k| k.bucket) {
                        kept[i].keys.push(entry::short_key_hash(x.h.key_hash));
                    }
                }
                Plan::Catchup {
                    all: false,
                    buckets: Vec::new(),
                    kept,
                    bucket_bits,
                    entries: sent,
                    index,
                    digest,
                }
            }
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
        match x.plan(start, 0, Sums::Entries(&[])) {
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
        if let Plan::Catchup { entries, .. } = old.plan(0, 0, Sums::Entries(&[])) {
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
        match x.plan(start, bits, Sums::Entries(&buckets)) {
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
