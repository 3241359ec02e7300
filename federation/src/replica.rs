//! The subscriber side: one remote datacenter's replica, fed by the origin's sync messages.
//!
//! A snapshot (after `Reset`) is staged on a copy and becomes visible only at `Synced`, so
//! readers never see a half-received catalog; changes after that apply (and are published) as
//! they come.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use imbl::OrdMap;
use meridian_protos::federation as pb;
use meridian_topology::RemoteDc;
use meridian_topology::dc::DcState;

use crate::entry::{self, Hashed, Key};
use crate::store::{Store, StoreBatch};

/// Why a sync message was refused; the stream is dropped and restarted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A message arrived that the protocol does not allow at this point.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// An entry or key was malformed.
    #[error("malformed entry: {0}")]
    Malformed(&'static str),
    /// The origin sent more than this node holds for one datacenter: the snapshot being staged
    /// is dropped (never applied in part) and the replica keeps its last good state.
    #[error("the origin sent more than the cap of {limit} {what}")]
    TooLarge {
        /// `entries` or `bytes`.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// After a snapshot, the replica's digest differs from the origin's.
    #[error("digest mismatch after sync (origin {origin:016x}, replica {replica:016x})")]
    DigestMismatch {
        /// The origin's digest.
        origin: u64,
        /// Ours.
        replica: u64,
    },
}

/// An instance entry's slot in [`Data::instances`]: its key's hash. Unit tests keep only four
/// bits, so that the fuzz test meets colliding keys, which real 64-bit hashes of a million
/// keys almost never are.
fn slot_of(key_hash: u64) -> u64 {
    if cfg!(test) { key_hash & 0xf } else { key_hash }
}

/// A replica's entries: the catalog they make and each entry's hash (for the digest).
#[derive(Clone, Default)]
struct Data {
    state: DcState,
    /// Instance entries' hashes by their key's hash: an instance's key is already in `state`,
    /// and a copy here (about 40 bytes a key in the tree, with a million instances) was the
    /// largest thing a replica held after the catalog. Exact because the catalog holds an
    /// instance exactly when its entry was upserted and not removed: a key the catalog holds is
    /// in its slot or in `collided`, and a new key whose slot is taken goes to `collided`.
    instances: OrdMap<u64, u64>,
    /// Instance entries whose key hash another instance's key had first.
    collided: OrdMap<Key, u64>,
    /// Every other entry (nodes, tokens, intentions, the mesh root), by key: few, and the
    /// catalog may refuse some (token caps), so they are kept by key.
    others: OrdMap<Key, u64>,
    digest: u64,
}

impl Data {
    /// The hash of the entry held under `key`, if any.
    fn hash_of(&self, key: &Key) -> Option<u64> {
        match key {
            Key::Instance(k) => self.collided.get(key).copied().or_else(|| {
                self.state
                    .instance_at(k)
                    .and_then(|_| self.instances.get(&slot_of(key.hash())).copied())
            }),
            _ => self.others.get(key).copied(),
        }
    }

    fn upsert(&mut self, h: Hashed, batch: &mut StoreBatch) {
        let old = match &h.key {
            Key::Instance(k) => {
                let held = self.state.instance_at(k).is_some();
                let slot = slot_of(h.key_hash);
                if let Some(v) = self.collided.get_mut(&h.key) {
                    Some(std::mem::replace(v, h.hash))
                } else if held || !self.instances.contains_key(&slot) {
                    self.instances.insert(slot, h.hash)
                } else {
                    self.collided.insert(h.key.clone(), h.hash)
                }
            }
            _ => self.others.insert(h.key.clone(), h.hash),
        };
        entry::apply_entry(&mut self.state, &h.entry);
        batch.put(&h.key, &h.entry);
        self.digest = self
            .digest
            .wrapping_sub(old.unwrap_or(0))
            .wrapping_add(h.hash);
    }

    /// Whether `upserts` leave at most `max` entries. A key upserted twice in one batch is
    /// one entry (counting it twice refused a batch that fits).
    fn fits(&self, upserts: &[Hashed], max: usize) -> Result<(), ProtocolError> {
        let new: HashSet<&Key> = upserts
            .iter()
            .map(|h| &h.key)
            .filter(|k| self.hash_of(k).is_none())
            .collect();
        if self.len().saturating_add(new.len()) > max {
            return Err(ProtocolError::TooLarge {
                what: "entries",
                limit: max,
            });
        }
        Ok(())
    }

    fn remove(&mut self, key: &Key, batch: &mut StoreBatch) {
        let Some(hash) = self.hash_of(key) else {
            return;
        };
        // Where `hash_of` found it: an instance's key is in `collided` or owns its slot.
        match key {
            Key::Instance(_) => {
                if self.collided.remove(key).is_none() {
                    self.instances.remove(&slot_of(key.hash()));
                }
            }
            _ => {
                self.others.remove(key);
            }
        }
        entry::remove_entry(&mut self.state, key);
        batch.delete(key);
        self.digest = self.digest.wrapping_sub(hash);
    }

    /// Number of entries held.
    fn len(&self) -> usize {
        self.instances.len() + self.collided.len() + self.others.len()
    }

    /// Every entry's key with its key hash and entry hash.
    fn entries(&self) -> impl Iterator<Item = (Key, u64, u64)> + '_ {
        // The catalog's keys are the held ones: each is in `collided` or owns its slot.
        let instances = self.state.instance_keys().filter_map(|k| {
            let key = Key::Instance(k.clone());
            let key_hash = key.hash();
            let hash = self
                .collided
                .get(&key)
                .or_else(|| self.instances.get(&slot_of(key_hash)))
                .copied()?;
            Some((key, key_hash, hash))
        });
        let others = self.others.iter().map(|(k, h)| (k.clone(), k.hash(), *h));
        instances.chain(others)
    }
}

/// What applying a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Readers should see a new state.
    pub publish: bool,
    /// A snapshot just completed.
    pub synced: bool,
    /// Entries changed.
    pub entries: usize,
}

/// One remote datacenter's replica.
pub struct Replica {
    dc: Arc<str>,
    live: Data,
    staging: Option<(Data, StoreBatch)>,
    /// Most entries held (live or staged).
    max_entries: usize,
    /// Most bytes a staged snapshot holds before `Synced` writes it.
    max_staging_bytes: usize,
    index: u64,
    /// The newest index the origin announced.
    origin_index: u64,
    confirmed_unix_ms: u64,
    synced: bool,
    connected: bool,
}

impl Replica {
    /// An empty replica of `dc`.
    pub fn new(dc: &str) -> Replica {
        Replica {
            dc: dc.into(),
            live: Data::default(),
            staging: None,
            max_entries: usize::MAX,
            max_staging_bytes: usize::MAX,
            index: 0,
            origin_index: 0,
            confirmed_unix_ms: 0,
            synced: false,
            connected: false,
        }
    }

    /// Caps the entries the replica holds and the bytes a staged snapshot holds (unlimited until
    /// set).
    pub fn set_limits(&mut self, max_entries: usize, max_staging_bytes: usize) {
        self.max_entries = max_entries;
        self.max_staging_bytes = max_staging_bytes;
    }

    /// The replica of `dc` as `store` last held it; returns it with the number of entries that
    /// no longer decoded.
    pub fn load(dc: &str, store: &Store) -> Result<(Replica, usize), crate::FederationError> {
        let stored = store.load(dc)?;
        let mut r = Replica::new(dc);
        let mut corrupt = stored.corrupt;
        let mut scratch = StoreBatch::new(dc);
        for e in stored.entries {
            match Hashed::from_proto(e) {
                Ok(h) => r.live.upsert(h, &mut scratch),
                Err(_) => corrupt += 1,
            }
        }
        r.index = stored.index;
        r.origin_index = stored.index;
        r.confirmed_unix_ms = stored.confirmed_unix_ms;
        r.synced = stored.synced;
        // A replica with lost entries cannot resume by index: ask for a digest catch-up instead.
        if corrupt > 0 {
            r.index = 0;
        }
        r.live.state.set_index(r.index);
        Ok((r, corrupt))
    }

    /// The subscription request that resumes this replica.
    pub fn request(&self, subscriber_dc: &str, subscriber_node: &str) -> pb::SubscribeRequest {
        // With an index it trusts, the replica sums its keys: the origin then knows what changed
        // after the index and needs only to find what was removed. Without, its entries.
        let (mut bits, mut buckets, mut key_sums) = (0, Vec::new(), Vec::new());
        if self.live.len() > 0 && self.index > 0 {
            bits = entry::key_bucket_bits_for(self.live.len());
            key_sums = vec![0u32; 1 << bits];
            for (_, key_hash, _) in self.live.entries() {
                let b = entry::bucket_of(key_hash, bits) as usize;
                key_sums[b] = key_sums[b].wrapping_add(entry::short_key_hash(key_hash));
            }
        } else if self.live.len() > 0 {
            bits = entry::bucket_bits_for(self.live.len());
            buckets = vec![0u64; 1 << bits];
            for (_, key_hash, hash) in self.live.entries() {
                let b = entry::bucket_of(key_hash, bits) as usize;
                buckets[b] = buckets[b].wrapping_add(hash);
            }
        }
        pb::SubscribeRequest {
            subscriber_dc: subscriber_dc.to_owned(),
            origin_dc: self.dc.to_string(),
            // 0 when the index is not trusted (a digest mismatch, a damaged store): the digest
            // then decides what is resent.
            from_index: self.index,
            bucket_bits: bits,
            buckets,
            subscriber_node: subscriber_node.to_owned(),
            subscriber_addresses: Vec::new(),
            gateway: None,
            key_sums,
        }
    }

    /// Applies one message from the origin at wall-clock time `now_ms`; what must be written to
    /// disk is added to `out` (staged snapshots are written whole at `Synced`).
    pub fn apply(
        &mut self,
        msg: pb::SyncMessage,
        now_ms: u64,
        out: &mut Vec<StoreBatch>,
    ) -> Result<Applied, ProtocolError> {
        let kind = msg.kind.ok_or(ProtocolError::Unexpected("empty message"))?;
        let mut applied = Applied::default();
        match kind {
            pb::sync_message::Kind::Reset(r) => {
                if self.staging.is_some() {
                    return Err(ProtocolError::Unexpected("reset during a snapshot"));
                }
                let mut batch = StoreBatch::new(&self.dc);
                let data = if r.all {
                    batch.clear();
                    Data::default()
                } else {
                    if r.bucket_bits > entry::MAX_BUCKET_BITS {
                        return Err(ProtocolError::Malformed("too many buckets"));
                    }
                    let limit = 1u64 << r.bucket_bits;
                    if r.buckets
                        .iter()
                        .chain(r.kept.iter().map(|k| &k.bucket))
                        .any(|b| u64::from(*b) >= limit)
                    {
                        return Err(ProtocolError::Malformed("bucket out of range"));
                    }
                    let drop: HashSet<u32> = r.buckets.into_iter().collect();
                    // In a `kept` bucket, what the origin no longer holds goes.
                    let mut kept: HashMap<u32, HashSet<u32>> = HashMap::new();
                    for k in r.kept {
                        kept.entry(k.bucket).or_default().extend(k.keys);
                    }
                    let mut data = self.live.clone();
                    let doomed: Vec<Key> = data
                        .entries()
                        .filter(|(_, kh, _)| {
                            let b = entry::bucket_of(*kh, r.bucket_bits);
                            drop.contains(&b)
                                || kept
                                    .get(&b)
                                    .is_some_and(|keys| !keys.contains(&entry::short_key_hash(*kh)))
                        })
                        .map(|(k, _, _)| k)
                        .collect();
                    for k in &doomed {
                        data.remove(k, &mut batch);
                    }
                    data
                };
                self.staging = Some((data, batch));
            }
            pb::sync_message::Kind::Batch(b) => {
                if b.index < self.index && self.staging.is_none() {
                    return Err(ProtocolError::Unexpected("batch behind the replica"));
                }
                let mut upserts = Vec::with_capacity(b.upserts.len());
                for e in b.upserts {
                    upserts.push(Hashed::from_proto(e).map_err(ProtocolError::Malformed)?);
                }
                let mut removals = Vec::with_capacity(b.removals.len());
                for k in &b.removals {
                    removals.push(Key::from_proto(k).ok_or(ProtocolError::Malformed("empty key"))?);
                }
                applied.entries = upserts.len() + removals.len();
                match &mut self.staging {
                    Some((data, batch)) => {
                        // Checked before applying, so a refused snapshot never grows past the
                        // cap; the staging is dropped whole.
                        if let Err(e) = data.fits(&upserts, self.max_entries) {
                            self.staging = None;
                            return Err(e);
                        }
                        for h in upserts {
                            data.upsert(h, batch);
                        }
                        for k in &removals {
                            data.remove(k, batch);
                        }
                        if batch.size_bytes() > self.max_staging_bytes {
                            self.staging = None;
                            return Err(ProtocolError::TooLarge {
                                what: "bytes",
                                limit: self.max_staging_bytes,
                            });
                        }
                    }
                    None => {
                        self.live.fits(&upserts, self.max_entries)?;
                        let mut batch = StoreBatch::new(&self.dc);
                        for h in upserts {
                            self.live.upsert(h, &mut batch);
                        }
                        for k in &removals {
                            self.live.remove(k, &mut batch);
                        }
                        self.advance(b.index, now_ms);
                        batch.meta(self.index, self.confirmed_unix_ms, self.synced);
                        out.push(batch);
                        applied.publish = true;
                    }
                }
                self.origin_index = self.origin_index.max(b.index);
            }
            pb::sync_message::Kind::Synced(s) => {
                if let Some((data, mut batch)) = self.staging.take() {
                    if data.digest != s.digest {
                        return Err(ProtocolError::DigestMismatch {
                            origin: s.digest,
                            replica: data.digest,
                        });
                    }
                    self.live = data;
                    self.index = s.index;
                    self.live.state.set_index(s.index);
                    self.confirmed_unix_ms = now_ms;
                    self.synced = true;
                    batch.meta(self.index, now_ms, true);
                    out.push(batch);
                } else {
                    // A resume: the replayed changes already applied.
                    self.advance(s.index, now_ms);
                    self.synced = true;
                    let mut batch = StoreBatch::new(&self.dc);
                    batch.meta(self.index, now_ms, true);
                    out.push(batch);
                    if self.live.digest != s.digest {
                        return Err(ProtocolError::DigestMismatch {
                            origin: s.digest,
                            replica: self.live.digest,
                        });
                    }
                }
                self.origin_index = self.origin_index.max(s.index);
                self.connected = true;
                applied.publish = true;
                applied.synced = true;
            }
            pb::sync_message::Kind::Heartbeat(h) => {
                if self.staging.is_some() {
                    return Err(ProtocolError::Unexpected("heartbeat during a snapshot"));
                }
                self.origin_index = self.origin_index.max(h.index);
                self.advance(h.index, now_ms);
                let mut batch = StoreBatch::new(&self.dc);
                batch.meta(self.index, now_ms, self.synced);
                out.push(batch);
                applied.publish = true;
            }
        }
        Ok(applied)
    }

    fn advance(&mut self, index: u64, now_ms: u64) {
        if index > self.index {
            self.index = index;
            self.live.state.set_index(index);
        }
        self.confirmed_unix_ms = now_ms;
    }

    /// Marks the stream down (the replica keeps serving, stale) and drops a half-received
    /// snapshot.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.staging = None;
    }

    /// Forgets the index so the next subscription asks for a digest catch-up (after a digest
    /// mismatch).
    pub fn forget_index(&mut self) {
        self.index = 0;
    }

    /// The replica as readers see it.
    pub fn snapshot(&self) -> RemoteDc {
        RemoteDc {
            name: self.dc.clone(),
            state: self.live.state.clone(),
            index: self.index,
            confirmed_unix_ms: self.confirmed_unix_ms,
            connected: self.connected,
            synced: self.synced,
            digest: self.live.digest,
        }
    }

    /// Whether the stream completed its sync and is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The replica's digest (equal to the origin's when in sync).
    pub fn digest(&self) -> u64 {
        self.live.digest
    }

    /// The origin's newest index minus ours.
    pub fn lag(&self) -> u64 {
        self.origin_index.saturating_sub(self.index)
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether the replica holds nothing.
    pub fn is_empty(&self) -> bool {
        self.live.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod fuzz;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::{ExportPolicy, Exporter, Plan, Sums};
    use meridian_topology::{Instance, Weights};

    fn inst(id: &str) -> Instance {
        Instance {
            id: id.into(),
            service: "web".into(),
            node: "n1".into(),
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

    /// A DC with instances `w0`..`w{n-1}`, registered at indexes 1..=n.
    fn registered(n: u64) -> DcState {
        let mut s = DcState::default();
        for i in 0..n {
            s.register(inst(&format!("w{i}")), vec![], i + 1);
        }
        s
    }

    /// Turns a plan into the messages the server sends (without chunking).
    pub(crate) fn messages(plan: Plan) -> Vec<pb::SyncMessage> {
        use pb::sync_message::Kind;
        let wrap = |k| pb::SyncMessage { kind: Some(k) };
        match plan {
            Plan::Resume {
                deltas,
                index,
                digest,
            } => {
                let mut out: Vec<_> = deltas
                    .iter()
                    .map(|d| {
                        wrap(Kind::Batch(pb::Batch {
                            index: d.index,
                            upserts: d.upserts.iter().map(|h| h.entry.clone()).collect(),
                            removals: d.removals.iter().map(Key::to_proto).collect(),
                        }))
                    })
                    .collect();
                out.push(wrap(Kind::Synced(pb::Synced {
                    index,
                    digest,
                    datacenters: vec![],
                })));
                out
            }
            Plan::Catchup {
                all,
                buckets,
                kept,
                bucket_bits,
                entries,
                index,
                digest,
            } => vec![
                wrap(Kind::Reset(pb::Reset {
                    all,
                    bucket_bits,
                    buckets,
                    kept,
                })),
                wrap(Kind::Batch(pb::Batch {
                    index,
                    upserts: entries.iter().map(|h| h.entry.clone()).collect(),
                    removals: vec![],
                })),
                wrap(Kind::Synced(pb::Synced {
                    index,
                    digest,
                    datacenters: vec![],
                })),
            ],
        }
    }

    fn feed(r: &mut Replica, msgs: Vec<pb::SyncMessage>) -> Result<(), ProtocolError> {
        feed_into(r, msgs, &mut Vec::new())
    }

    /// Applies `msgs` until one is refused; what is to be written goes to `out`.
    fn feed_into(
        r: &mut Replica,
        msgs: Vec<pb::SyncMessage>,
        out: &mut Vec<StoreBatch>,
    ) -> Result<(), ProtocolError> {
        for m in msgs {
            r.apply(m, 1, out)?;
        }
        Ok(())
    }

    #[test]
    fn snapshot_then_catchup_converges_to_the_origin_digest() {
        let mut s = registered(200);
        let x = Exporter::new(ExportPolicy::all(), 10, &s);
        let mut r = Replica::new("dc1");
        feed(&mut r, messages(x.plan(0, 0, Sums::Entries(&[])))).expect("snapshot");
        assert_eq!(r.digest(), x.position().1);
        assert_eq!(r.snapshot().state.instance_count(), 200);

        // The origin moves on past its window while the replica is away: 30 instances
        // deregistered, 5 changed, 1 new.
        for i in 0..30 {
            s.deregister("n1", &format!("w{i}"), 1000 + i);
            x.update(&s);
        }
        for i in 100..105 {
            let mut changed = inst(&format!("w{i}"));
            changed.port = 81;
            s.register(changed, vec![], 1100 + i);
            x.update(&s);
        }
        s.register(inst("new"), vec![], 2000);
        x.update(&s);
        let req = r.request("dc2", "n1");
        assert!(
            !req.key_sums.is_empty() && req.buckets.is_empty(),
            "a replica with an index sums its keys"
        );
        let plan = x.plan_request(&req);
        match &plan {
            Plan::Catchup {
                all,
                buckets,
                kept,
                entries,
                ..
            } => {
                assert!(!all && buckets.is_empty());
                // Exactly what changed is resent; the removals cost a key list per bucket.
                let mut sent: Vec<String> = entries
                    .iter()
                    .filter_map(|h| match &h.key {
                        Key::Instance(k) => Some(k.id().to_owned()),
                        _ => None,
                    })
                    .collect();
                sent.sort();
                assert_eq!(sent, ["new", "w100", "w101", "w102", "w103", "w104"]);
                assert!(!kept.is_empty() && kept.len() <= 30, "{}", kept.len());
            }
            Plan::Resume { .. } => panic!("the window was too small to resume"),
        }
        feed(&mut r, messages(plan)).expect("catch-up");
        assert_eq!(r.digest(), x.position().1);
        assert_eq!(r.snapshot().index, 2000);
        assert_eq!(r.snapshot().state.instance_count(), 171);
        assert!(r.snapshot().state.instance("n1", "w3").is_none());
    }

    #[test]
    fn a_replica_that_forgot_its_index_is_repaired_by_digest_not_by_resume() {
        let s = registered(50);
        let x = Exporter::new(ExportPolicy::all(), 1000, &s);
        let mut r = Replica::new("dc1");
        feed(&mut r, messages(x.plan(0, 0, Sums::Entries(&[])))).expect("snapshot");
        // Something went wrong (say, a digest mismatch): the index is no longer trusted.
        r.forget_index();
        let req = r.request("dc2", "n1");
        assert_eq!(req.from_index, 0);
        match x.plan_request(&req) {
            Plan::Catchup { all, entries, .. } => {
                assert!(!all);
                assert!(entries.is_empty(), "nothing differs");
            }
            Plan::Resume { .. } => panic!("an untrusted index must not resume"),
        }
    }

    #[test]
    fn malformed_and_out_of_order_messages_are_refused() {
        let mut r = Replica::new("dc1");
        let mut out = Vec::new();
        let empty = pb::SyncMessage { kind: None };
        assert!(r.apply(empty, 1, &mut out).is_err());
        let bad = pb::SyncMessage {
            kind: Some(pb::sync_message::Kind::Reset(pb::Reset {
                all: false,
                bucket_bits: 2,
                buckets: vec![9],
                kept: vec![],
            })),
        };
        assert_eq!(
            r.apply(bad, 1, &mut out),
            Err(ProtocolError::Malformed("bucket out of range"))
        );
        let wrong_digest = pb::SyncMessage {
            kind: Some(pb::sync_message::Kind::Reset(pb::Reset {
                all: true,
                bucket_bits: 0,
                buckets: vec![],
                kept: vec![],
            })),
        };
        r.apply(wrong_digest, 1, &mut out).expect("reset");
        let synced = pb::SyncMessage {
            kind: Some(pb::sync_message::Kind::Synced(pb::Synced {
                index: 5,
                digest: 7,
                datacenters: vec![],
            })),
        };
        assert!(matches!(
            r.apply(synced, 1, &mut out),
            Err(ProtocolError::DigestMismatch { .. })
        ));
        assert!(
            !r.snapshot().synced,
            "nothing half-received becomes visible"
        );
    }

    #[test]
    fn an_oversize_snapshot_is_refused_whole_and_the_last_good_state_stays() {
        let mut s = registered(10);
        let small = Exporter::new(ExportPolicy::all(), 10, &s);
        let mut r = Replica::new("dc1");
        r.set_limits(20, 1 << 20);
        feed(&mut r, messages(small.plan(0, 0, Sums::Entries(&[]))))
            .expect("a snapshot under the caps");
        let good = (r.digest(), r.snapshot().index, r.len());

        for i in 10..30 {
            s.register(inst(&format!("w{i}")), vec![], i + 1);
        }
        let big = Exporter::new(ExportPolicy::all(), 10, &s);
        let mut out = Vec::new();
        assert_eq!(
            feed_into(
                &mut r,
                messages(big.plan(0, 0, Sums::Entries(&[]))),
                &mut out
            ),
            Err(ProtocolError::TooLarge {
                what: "entries",
                limit: 20
            })
        );
        assert!(out.is_empty(), "nothing of the refused snapshot is written");
        assert_eq!((r.digest(), r.snapshot().index, r.len()), good);
        assert_eq!(r.snapshot().state.instance_count(), 10);

        // By bytes: the staged batch outgrows the cap.
        let mut r = Replica::new("dc1");
        r.set_limits(1_000, 512);
        let mut out = Vec::new();
        assert_eq!(
            feed_into(
                &mut r,
                messages(big.plan(0, 0, Sums::Entries(&[]))),
                &mut out
            ),
            Err(ProtocolError::TooLarge {
                what: "bytes",
                limit: 512
            })
        );
        assert!(r.is_empty() && out.is_empty());
        // The staging is gone: the next stream starts over with a Reset, not "reset during a
        // snapshot".
        r.set_limits(1_000, 1 << 20);
        feed(&mut r, messages(big.plan(0, 0, Sums::Entries(&[])))).expect("under raised caps");
        assert_eq!(r.len(), 30);
    }
}
