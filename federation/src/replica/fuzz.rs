//! Bounded fuzzing on stable (proptest) of [`Replica::apply`] against a reference model: any
//! sequence of sync messages (snapshots cut short, duplicated or out of order, deltas behind the
//! replica, digests that lie, malformed entries, batches over the caps), with disconnects
//! between them. After every step the replica holds exactly what the model says: the last
//! completed state, never part of a snapshot, within its caps, its index moving only forward
//! (or to the index a completed snapshot declares). `PROPTEST_CASES` raises the case count for
//! a deeper run (scripts/fuzz.sh).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

/// Nodes and instance IDs are drawn from a few names, so sequences upsert, replace and remove
/// the same keys over and over.
const NODES: [&str; 3] = ["n0", "n1", "n2"];
const IDS: [&str; 3] = ["a", "b", "c"];

fn check(node: &str, id: &str, service_id: &str, status: i32) -> pb::Check {
    pb::Check {
        id: id.into(),
        node: node.into(),
        service_id: service_id.into(),
        status,
        ..Default::default()
    }
}

/// An entry as an origin would send it (content varies, so one key has several hashes), or a
/// malformed one now and then.
fn entry() -> impl Strategy<Value = pb::Entry> {
    let node = (
        prop::sample::select(NODES.to_vec()),
        any::<bool>(),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|(name, upper, address, checked)| {
            // Node keys ignore case; a node sent with checks keeps its case, as an origin does.
            let name = if upper && !checked {
                name.to_ascii_uppercase()
            } else {
                name.to_owned()
            };
            let checks = if checked {
                vec![check(&name, "serf", "", i32::from(address))]
            } else {
                vec![]
            };
            pb::Entry {
                entry: Some(pb::entry::Entry::Node(pb::NodeEntry {
                    node: Some(pb::Node {
                        name,
                        address: format!("10.0.0.{address}"),
                        ..Default::default()
                    }),
                    checks,
                })),
            }
        });
    let instance = (
        prop::sample::select(NODES.to_vec()),
        prop::sample::select(IDS.to_vec()),
        0u32..3,
        0i32..4,
    )
        .prop_map(|(node, id, port, status)| {
            let checks = if status < 3 {
                vec![check(node, &format!("c-{id}"), id, status)]
            } else {
                vec![]
            };
            pb::Entry {
                entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
                    instance: Some(pb::Instance {
                        id: id.into(),
                        service: "web".into(),
                        node: node.into(),
                        port: 8000 + port,
                        ..Default::default()
                    }),
                    checks,
                })),
            }
        });
    let malformed = prop_oneof![
        Just(pb::Entry { entry: None }),
        Just(pb::Entry {
            entry: Some(pb::entry::Entry::Node(pb::NodeEntry::default())),
        }),
        Just(pb::Entry {
            entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
                instance: Some(pb::Instance {
                    id: "a".into(),
                    service: "web".into(),
                    node: "n0".into(),
                    port: 70_000,
                    ..Default::default()
                }),
                checks: vec![],
            })),
        }),
    ];
    prop_oneof![8 => node, 16 => instance, 1 => malformed]
}

fn key() -> impl Strategy<Value = pb::EntryKey> {
    let key = prop_oneof![
        prop::sample::select(NODES.to_vec()).prop_map(Key::node),
        (
            prop::sample::select(NODES.to_vec()),
            prop::sample::select(IDS.to_vec())
        )
            .prop_map(|(n, id)| Key::Instance(meridian_topology::InstanceKey::new(n, id))),
    ]
    .prop_map(|k| k.to_proto());
    prop_oneof![12 => key, 1 => Just(pb::EntryKey { key: None })]
}

/// Indexes near each other (so order and duplicates matter), and now and then anything.
fn index() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..24, 1 => any::<u64>()]
}

/// The digest a `Synced` carries: usually the right one (the snapshot completes), else anything.
#[derive(Debug, Clone)]
enum Digest {
    Right,
    Wrong(u64),
}

#[derive(Debug, Clone)]
enum Step {
    Reset(pb::Reset),
    Batch(pb::Batch),
    Synced(u64, Digest),
    Heartbeat(u64),
    Empty,
    /// The stream ends (the client then calls `disconnected`).
    Disconnect,
    /// A digest mismatch made the client distrust the index.
    ForgetIndex,
}

fn step() -> impl Strategy<Value = Step> {
    let bucket = || prop_oneof![8 => 0u32..16, 1 => any::<u32>()];
    // Key lists of buckets: keys that exist (in their bucket or not) and arbitrary hashes.
    let kept = proptest::collection::vec(
        (
            bucket(),
            proptest::collection::vec(
                prop_oneof![
                    3 => key().prop_map(|k| Key::from_proto(&k)
                        .map_or(0, |k| entry::short_key_hash(k.hash()))),
                    1 => any::<u32>(),
                ],
                0..5,
            ),
        )
            .prop_map(|(bucket, keys)| pb::BucketKeys { bucket, keys }),
        0..3,
    );
    let reset = (
        any::<bool>(),
        prop_oneof![6 => 0u32..4, 1 => 19u32..22, 1 => Just(u32::MAX)],
        proptest::collection::vec(bucket(), 0..5),
        kept,
    )
        .prop_map(|(all, bucket_bits, buckets, kept)| {
            Step::Reset(pb::Reset {
                all,
                bucket_bits,
                buckets,
                kept,
            })
        });
    let batch = (
        index(),
        proptest::collection::vec(entry(), 0..7),
        proptest::collection::vec(key(), 0..4),
    )
        .prop_map(|(index, upserts, removals)| {
            Step::Batch(pb::Batch {
                index,
                upserts,
                removals,
            })
        });
    let digest = prop_oneof![4 => Just(Digest::Right), 1 => any::<u64>().prop_map(Digest::Wrong)];
    prop_oneof![
        3 => reset,
        8 => batch,
        3 => (index(), digest).prop_map(|(i, d)| Step::Synced(i, d)),
        1 => index().prop_map(Step::Heartbeat),
        1 => Just(Step::Empty),
        1 => Just(Step::Disconnect),
        1 => Just(Step::ForgetIndex),
    ]
}

/// Caps: mostly none, else small enough that sequences hit them.
fn limits() -> impl Strategy<Value = (usize, usize)> {
    (
        prop_oneof![2 => Just(usize::MAX), 1 => 0usize..12],
        prop_oneof![2 => Just(usize::MAX), 1 => 64usize..4096],
    )
}

/// What the replica should hold: entries by key, as their hashes.
type Entries = BTreeMap<Key, u64>;

fn digest(entries: &Entries) -> u64 {
    entries.values().fold(0u64, |d, h| d.wrapping_add(*h))
}

/// The reference model: what a replica must hold after each message, written plainly.
#[derive(Debug, Default)]
struct Model {
    live: Entries,
    staging: Option<Entries>,
    index: u64,
    synced: bool,
    connected: bool,
    max_entries: usize,
}

impl Model {
    /// Whether `upserts` fit under the cap in `held`: distinct new keys are counted, before
    /// the batch's removals.
    fn fits(&self, held: &Entries, upserts: &[Hashed]) -> Result<(), ProtocolError> {
        let new: BTreeSet<&Key> = upserts
            .iter()
            .map(|h| &h.key)
            .filter(|k| !held.contains_key(*k))
            .collect();
        if held.len().saturating_add(new.len()) > self.max_entries {
            return Err(ProtocolError::TooLarge {
                what: "entries",
                limit: self.max_entries,
            });
        }
        Ok(())
    }

    /// Applies `msg`; `Ok(true)` when the replica may refuse it for its staging bytes (the
    /// model does not count RocksDB's batch bytes).
    fn apply(&mut self, msg: &pb::SyncMessage) -> Result<bool, ProtocolError> {
        use pb::sync_message::Kind;
        match msg.kind.as_ref() {
            None => Err(ProtocolError::Unexpected("empty message")),
            Some(Kind::Reset(r)) => {
                if self.staging.is_some() {
                    return Err(ProtocolError::Unexpected("reset during a snapshot"));
                }
                let kept = if r.all {
                    Entries::new()
                } else {
                    if r.bucket_bits > entry::MAX_BUCKET_BITS {
                        return Err(ProtocolError::Malformed("too many buckets"));
                    }
                    if r.buckets
                        .iter()
                        .chain(r.kept.iter().map(|k| &k.bucket))
                        .any(|b| u64::from(*b) >= 1 << r.bucket_bits)
                    {
                        return Err(ProtocolError::Malformed("bucket out of range"));
                    }
                    let mut kept = self.live.clone();
                    kept.retain(|k, _| {
                        let b = k.bucket(r.bucket_bits);
                        // A bucket listed in `kept` keeps the keys any of its lists name.
                        let listed = r.kept.iter().filter(|l| l.bucket == b);
                        !r.buckets.contains(&b)
                            && (listed.clone().next().is_none()
                                || listed
                                    .into_iter()
                                    .any(|l| l.keys.contains(&entry::short_key_hash(k.hash()))))
                    });
                    kept
                };
                self.staging = Some(kept);
                Ok(false)
            }
            Some(Kind::Batch(b)) => {
                if b.index < self.index && self.staging.is_none() {
                    return Err(ProtocolError::Unexpected("batch behind the replica"));
                }
                let upserts = b
                    .upserts
                    .iter()
                    .map(|e| Hashed::from_proto(e.clone()).map_err(ProtocolError::Malformed))
                    .collect::<Result<Vec<_>, _>>()?;
                let removals = b
                    .removals
                    .iter()
                    .map(|k| Key::from_proto(k).ok_or(ProtocolError::Malformed("empty key")))
                    .collect::<Result<Vec<_>, _>>()?;
                let staged = self.staging.is_some();
                let held = self.staging.as_ref().unwrap_or(&self.live);
                if let Err(e) = self.fits(held, &upserts) {
                    self.staging = None;
                    return Err(e);
                }
                let held = self.staging.as_mut().unwrap_or(&mut self.live);
                for h in upserts {
                    held.insert(h.key, h.hash);
                }
                for k in removals {
                    held.remove(&k);
                }
                if !staged {
                    self.index = self.index.max(b.index);
                }
                Ok(staged)
            }
            Some(Kind::Synced(s)) => {
                if let Some(staged) = self.staging.take() {
                    let d = digest(&staged);
                    if d != s.digest {
                        return Err(ProtocolError::DigestMismatch {
                            origin: s.digest,
                            replica: d,
                        });
                    }
                    self.live = staged;
                    self.index = s.index;
                } else {
                    self.index = self.index.max(s.index);
                    self.synced = true;
                    let d = digest(&self.live);
                    if d != s.digest {
                        return Err(ProtocolError::DigestMismatch {
                            origin: s.digest,
                            replica: d,
                        });
                    }
                }
                self.synced = true;
                self.connected = true;
                Ok(false)
            }
            Some(Kind::Heartbeat(h)) => {
                if self.staging.is_some() {
                    return Err(ProtocolError::Unexpected("heartbeat during a snapshot"));
                }
                self.index = self.index.max(h.index);
                Ok(false)
            }
        }
    }

    /// The message `step` stands for, with a `Right` digest made from what the model holds.
    fn message(&self, step: &Step) -> Option<pb::SyncMessage> {
        use pb::sync_message::Kind;
        let kind = match step {
            Step::Reset(r) => Some(Kind::Reset(r.clone())),
            Step::Batch(b) => Some(Kind::Batch(b.clone())),
            Step::Synced(index, d) => {
                let digest = match d {
                    Digest::Right => digest(self.staging.as_ref().unwrap_or(&self.live)),
                    Digest::Wrong(d) => *d,
                };
                Some(Kind::Synced(pb::Synced {
                    index: *index,
                    digest,
                    datacenters: vec![],
                }))
            }
            Step::Heartbeat(index) => Some(Kind::Heartbeat(pb::Heartbeat {
                index: *index,
                unix_ms: 0,
                datacenters: vec![],
            })),
            Step::Empty => None,
            Step::Disconnect | Step::ForgetIndex => return None,
        };
        Some(pb::SyncMessage { kind })
    }
}

/// The replica's entries as the model writes them.
fn held(data: &Data) -> Entries {
    data.entries().map(|(k, _, h)| (k, h)).collect()
}

/// The replica's readable state agrees with its entries: every entry is there, and nothing
/// else (no instance, node or check left behind by a replaced or removed entry).
fn check_state(data: &Data) -> Result<(), TestCaseError> {
    let state = &data.state;
    let mut instances = 0;
    let keys: Vec<Key> = data.entries().map(|(k, _, _)| k).collect();
    prop_assert_eq!(keys.len(), data.len(), "entries listed and counted differ");
    for key in &keys {
        match key {
            Key::Node(n) => prop_assert!(state.node(n).is_some(), "node {n} missing"),
            Key::Instance(k) => {
                instances += 1;
                prop_assert!(state.instance_at(k).is_some(), "{k:?} missing");
            }
            Key::Token(t) => prop_assert!(state.tokens().get(t).is_some(), "token {t} missing"),
            Key::Intention(k) => {
                prop_assert!(state.intentions().get(k).is_some(), "intention {k} missing");
            }
            Key::MeshRoot => prop_assert!(state.mesh_root().is_some(), "mesh root missing"),
        }
    }
    prop_assert_eq!(
        state.tokens().len(),
        keys.iter().filter(|k| matches!(k, Key::Token(_))).count()
    );
    prop_assert_eq!(state.instance_count(), instances);
    prop_assert_eq!(
        state.nodes().count(),
        keys.iter().filter(|k| matches!(k, Key::Node(_))).count()
    );
    for c in state.checks() {
        let owner = if c.service_id.is_empty() {
            data.hash_of(&Key::node(&c.node)).is_some()
        } else {
            data.hash_of(&Key::Instance(meridian_topology::InstanceKey::new(
                &c.node,
                &c.service_id,
            )))
            .is_some()
        };
        prop_assert!(owner, "check {c:?} outlived its entry");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(meridian_topology::fuzz_cases(3000)))]

    /// Any sequence of messages and disconnects: after every step the replica holds what the
    /// reference model holds (a half-received snapshot never shows), within its caps, with an
    /// index that only moves forward or to a completed snapshot's.
    #[test]
    fn any_message_sequence_leaves_the_replica_as_the_model_says(
        (max_entries, max_staging_bytes) in limits(),
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let mut r = Replica::new("dc1");
        r.set_limits(max_entries, max_staging_bytes);
        let mut m = Model { max_entries, ..Model::default() };
        for (i, step) in steps.iter().enumerate() {
            let before = r.snapshot().index;
            let mut snapshot_completed = false;
            match step {
                Step::Disconnect => {
                    r.disconnected();
                    m.staging = None;
                    m.connected = false;
                }
                Step::ForgetIndex => {
                    r.forget_index();
                    m.index = 0;
                }
                _ => {
                    let msg = m.message(step).expect("a message");
                    let staging = m.staging.is_some();
                    let want = m.apply(&msg);
                    let mut out = Vec::new();
                    let got = r.apply(msg, 7, &mut out);
                    match (&want, &got) {
                        (Ok(true), Err(ProtocolError::TooLarge { what: "bytes", limit })) => {
                            prop_assert_eq!(*limit, max_staging_bytes);
                            prop_assert!(max_staging_bytes != usize::MAX);
                            m.staging = None;
                        }
                        (Ok(_), Ok(_)) => {}
                        (Err(w), Err(g)) => prop_assert_eq!(w, g, "step {}: {:?}", i, step),
                        _ => prop_assert!(false, "step {i}: {step:?}: model {want:?}, replica {got:?}"),
                    }
                    snapshot_completed = staging && got.is_ok() && matches!(step, Step::Synced(..));
                    // Staged entries are written only with the `Synced` that completes them;
                    // a refused message writes nothing (a resume's `Synced` records its index
                    // before it compares digests).
                    let resume_synced = !staging && matches!(step, Step::Synced(..));
                    if (got.is_err() && !resume_synced) || (staging && !snapshot_completed) {
                        prop_assert!(out.is_empty(), "step {i}: {step:?} wrote {}", out.len());
                    }
                }
            }
            prop_assert_eq!(held(&r.live), m.live.clone(), "step {}: {:?}", i, step);
            prop_assert_eq!(r.digest(), digest(&m.live));
            prop_assert_eq!(
                r.staging.as_ref().map(|(d, _)| held(d)),
                m.staging.clone(),
                "step {}: {:?}", i, step
            );
            let view = r.snapshot();
            prop_assert_eq!(view.index, m.index, "step {}: {:?}", i, step);
            prop_assert_eq!(view.synced, m.synced);
            prop_assert_eq!(view.connected, m.connected);
            prop_assert!(
                view.index >= before || snapshot_completed || matches!(step, Step::ForgetIndex),
                "step {i}: {step:?}: index {before} -> {}", view.index
            );
            prop_assert!(r.len() <= max_entries);
            if let Some((data, batch)) = &r.staging {
                prop_assert!(data.len() <= max_entries);
                prop_assert!(batch.size_bytes() <= max_staging_bytes);
            }
            check_state(&r.live)?;
        }
    }
}
