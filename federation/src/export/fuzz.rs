//! Bounded fuzzing on stable (proptest) of [`Exporter::plan`]: over generated catalogs and their
//! changes, any subscriber request (any index, any bucket count, absurd ones included, any
//! digests) gets a plan that follows the protocol, and a plan made for a real replica's request
//! brings that replica exactly to the export. `PROPTEST_CASES` raises the case count for a
//! deeper run (scripts/fuzz.sh).

use std::collections::BTreeMap;

use meridian_topology::{Health, Instance, Node, Weights};
use proptest::prelude::*;

use super::*;
use crate::replica::tests::messages;
use crate::replica::{ProtocolError, Replica};

/// One change to the origin's catalog.
#[derive(Debug, Clone)]
enum Op {
    Register {
        node: u8,
        id: u8,
        service: &'static str,
        port: u16,
        critical: bool,
    },
    Deregister {
        node: u8,
        id: u8,
    },
    Node {
        node: u8,
        address: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..4, 0u8..8, prop::sample::select(vec!["web", "db", "api-x"]), 0u16..3, any::<bool>())
            .prop_map(|(node, id, service, port, critical)| Op::Register { node, id, service, port, critical }),
        2 => (0u8..4, 0u8..8).prop_map(|(node, id)| Op::Deregister { node, id }),
        1 => (0u8..4, 0u8..3).prop_map(|(node, address)| Op::Node { node, address }),
    ]
}

/// Applies `op` at the catalog's next index.
fn apply(s: &mut DcState, op: &Op) {
    let index = s.index() + 1;
    match op {
        Op::Register {
            node,
            id,
            service,
            port,
            critical,
        } => {
            let node = format!("n{node}");
            let id = format!("i{id}");
            let checks = if *critical {
                vec![meridian_topology::Check {
                    id: format!("c-{id}"),
                    name: String::new(),
                    node: node.clone(),
                    service_id: id.clone(),
                    service_name: (*service).into(),
                    status: Health::Critical,
                    output: String::new(),
                    notes: String::new(),
                    spec: None,
                    create_index: 0,
                    modify_index: 0,
                }]
            } else {
                vec![]
            };
            let inst = Instance {
                id,
                service: (*service).into(),
                node: node.into(),
                address: String::new(),
                port: 80 + port,
                tags: vec![],
                meta: Default::default(),
                weights: Weights::default(),
                create_index: 0,
                modify_index: 0,
                proxy: None,
            };
            s.register(inst, checks, index);
        }
        Op::Deregister { node, id } => {
            s.deregister(&format!("n{node}"), &format!("i{id}"), index);
        }
        Op::Node { node, address } => {
            let node = Node {
                name: format!("n{node}"),
                address: format!("10.0.0.{address}"),
                meta: Default::default(),
                create_index: 0,
                modify_index: 0,
            };
            s.upsert_node(node, index);
        }
    }
    // A change the export ignores still moves the index.
    s.set_index(index);
}

fn policy() -> impl Strategy<Value = ExportPolicy> {
    prop_oneof![
        Just(ExportPolicy::all()),
        Just(ExportPolicy::only(&["web".into(), "api-*".into()])),
    ]
}

/// Feeds a plan to `r` as the server would send it.
fn feed(r: &mut Replica, plan: Plan) -> Result<(), crate::replica::ProtocolError> {
    let mut out = Vec::new();
    for m in messages(plan) {
        r.apply(m, 1, &mut out)?;
    }
    Ok(())
}

/// The exporter's entries as key → hash.
fn exported(x: &Exporter) -> BTreeMap<Key, u64> {
    x.lock()
        .entries
        .iter()
        .map(|(k, h)| (k.clone(), h.h.hash))
        .collect()
}

/// Any `bucket_bits`: the sizes replicas use, the cap and past it, and absurd ones.
fn bucket_bits() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..6,
        1 => prop::sample::select(vec![16u32, 20, 21, 31, 32, 63, 64, u32::MAX]),
        1 => any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(meridian_topology::fuzz_cases(1000)))]

    /// A replica synced at any point of the origin's history, then left behind (inside the
    /// change window or outside it, its index forgotten or not, its state diverged or not),
    /// asks with its own request and ends up holding exactly the export, at its index.
    #[test]
    fn a_plan_for_a_replicas_request_brings_it_to_the_export(
        policy in policy(),
        window in 1usize..24,
        before in proptest::collection::vec(op(), 0..30),
        after in proptest::collection::vec((op(), any::<bool>()), 0..30),
        synced_at in any::<prop::sample::Index>(),
        diverged in proptest::collection::vec(op(), 0..6),
        forget in any::<bool>(),
        restart in any::<bool>(),
    ) {
        let mut s = DcState::default();
        for op in &before {
            apply(&mut s, op);
        }
        let x = Exporter::new(policy.clone(), window, &s);
        let mut r = Replica::new("dc1");
        let synced_at = synced_at.index(after.len() + 1);
        if synced_at == 0 {
            feed(&mut r, x.plan(0, 0, Sums::Entries(&[]))).expect("first sync");
        }
        for (i, (op, update)) in after.iter().enumerate() {
            apply(&mut s, op);
            // Some changes are seen together, in one update.
            if *update || i + 1 == after.len() {
                x.update(&s);
            }
            if i + 1 == synced_at {
                x.update(&s);
                feed(&mut r, x.plan(0, 0, Sums::Entries(&[]))).expect("first sync");
            }
        }
        x.update(&s);
        // The origin restarted: its change window is gone, and when each entry changed is what
        // the catalog's indices say.
        let x = if restart { Exporter::new(policy.clone(), window, &s) } else { x };
        if !diverged.is_empty() {
            // The replica holds something else (another history): only its digests are
            // trusted, as after a digest mismatch.
            let mut other = s.clone();
            for op in &diverged {
                apply(&mut other, op);
            }
            let y = Exporter::new(policy, window, &other);
            let mut fresh = Replica::new("dc1");
            feed(&mut fresh, y.plan(0, 0, Sums::Entries(&[]))).expect("sync from the other history");
            r = fresh;
        }
        if forget {
            r.forget_index();
        }
        let req = r.request("dc2", "n1");
        prop_assert_eq!(!req.key_sums.is_empty(), req.from_index > 0 && !r.is_empty());
        match feed(&mut r, x.plan_request(&req)) {
            Ok(()) => {}
            // Only a replica of another history, or an origin that restarted (a check removed
            // alone leaves no index), may be caught up wrongly by key sums; the digest says so,
            // and the replica catches up again by entry sums, as the client does.
            Err(ProtocolError::DigestMismatch { .. })
                if !req.key_sums.is_empty() && (restart || !diverged.is_empty()) =>
            {
                r.disconnected();
                r.forget_index();
                let req = r.request("dc2", "n1");
                prop_assert!(req.key_sums.is_empty());
                feed(&mut r, x.plan_request(&req)).expect("a catch-up by entry sums applies");
            }
            Err(e) => prop_assert!(false, "the plan did not apply: {e}"),
        }
        let (index, digest) = x.position();
        prop_assert_eq!(r.digest(), digest);
        prop_assert_eq!(r.len(), x.len());
        prop_assert_eq!(r.snapshot().index, index);
        // What the replica reads is the export: exported again, it gives the same entries.
        let again = Exporter::new(ExportPolicy::all(), 1, &r.snapshot().state);
        prop_assert_eq!(exported(&again), exported(&x));
    }

    /// Any request, however absurd (any index, any bucket count or number of buckets, any
    /// digests), gets the plan the protocol says: a resume exactly when every change after the
    /// index is held, else the entries of exactly the buckets whose sums differ, or everything
    /// when the buckets cannot be compared. The work is bounded by the request's size, not by
    /// `2^bucket_bits`.
    #[test]
    fn any_request_gets_the_plan_the_protocol_says(
        ops in proptest::collection::vec((op(), any::<bool>()), 0..40),
        window in 1usize..16,
        from_index in prop_oneof![3 => 0u64..48, 1 => any::<u64>()],
        bits in bucket_bits(),
        sums in prop_oneof![
            // The export's own sums, some changed.
            2 => proptest::collection::vec(any::<bool>(), 0..8).prop_map(Ok),
            // Any digests, any number of them.
            1 => proptest::collection::vec(any::<u64>(), 0..40).prop_map(Err),
        ],
        length_off in prop_oneof![4 => Just(0i64), 1 => -2i64..3],
        keys in any::<bool>(),
    ) {
        let mut s = DcState::default();
        let x = Exporter::new(ExportPolicy::all(), window, &s);
        for (op, update) in &ops {
            apply(&mut s, op);
            if *update {
                x.update(&s);
            }
        }
        x.update(&s);
        let mine = exported(&x);
        // key → (key hash, born, since)
        let when: BTreeMap<Key, (u64, u64, u64)> = x
            .lock()
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), (e.h.key_hash, e.born, e.since)))
            .collect();
        // The subscriber's sums: the export's (when `bits` is small enough to build them) with
        // some changed, or arbitrary; the length off by `length_off` now and then.
        let mut buckets = match (&sums, bits) {
            (Ok(flips), 0..=12) => {
                let mut b = vec![0u64; 1 << bits];
                for (k, h) in &mine {
                    let i = k.bucket(bits) as usize;
                    b[i] = b[i].wrapping_add(if keys { k.hash() } else { *h });
                }
                for (i, flip) in flips.iter().enumerate() {
                    if *flip && !b.is_empty() {
                        let at = i * 7919 % b.len();
                        b[at] = b[at].wrapping_add(1);
                    }
                }
                b
            }
            (Ok(_), _) => Vec::new(),
            (Err(any), _) => any.clone(),
        };
        if length_off < 0 {
            buckets.truncate(buckets.len().saturating_sub(length_off.unsigned_abs() as usize));
        } else {
            buckets.extend(std::iter::repeat_n(0, length_off as usize));
        }
        let (ring_base, ring_index, ring): (u64, u64, Vec<u64>) = {
            let inner = x.lock();
            (inner.ring_base, inner.index, inner.ring.iter().map(|d| d.index).collect())
        };
        let (index, digest) = x.position();
        // Key sums are 32 bits: the low half of the sums above (of the keys' hashes).
        let short: Vec<u32> = buckets.iter().map(|b| (b & 0xffff_ffff) as u32).collect();
        let sums_of = if keys { Sums::Keys(&short) } else { Sums::Entries(&buckets) };
        match x.plan(from_index, bits, sums_of) {
            Plan::Resume { deltas, index: to, digest: d } => {
                prop_assert!(from_index > 0 && from_index >= ring_base && from_index <= ring_index);
                let got: Vec<u64> = deltas.iter().map(|d| d.index).collect();
                let want: Vec<u64> = ring.iter().copied().filter(|i| *i > from_index).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!((to, d), (index, digest));
            }
            Plan::Catchup { all, buckets: differing, kept, bucket_bits, entries, index: to, digest: d } => {
                prop_assert!(!(from_index > 0 && from_index >= ring_base && from_index <= ring_index));
                prop_assert_eq!((to, d), (index, digest));
                let comparable = bits <= entry::MAX_BUCKET_BITS
                    && buckets.len() == 1 << bits
                    && (!keys || from_index > 0 && from_index <= index);
                prop_assert_eq!(all, !comparable);
                let sent: BTreeMap<Key, u64> =
                    entries.iter().map(|h| (h.key.clone(), h.hash)).collect();
                prop_assert_eq!(sent.len(), entries.len(), "an entry sent twice");
                if all {
                    prop_assert_eq!((bucket_bits, differing.len(), kept.len()), (0, 0, 0));
                    prop_assert_eq!(sent, mine);
                } else if keys {
                    // The entries changed after the index; for each bucket whose keys then
                    // differ from the subscriber's, every key held there.
                    prop_assert_eq!((bucket_bits, differing.len()), (bits, 0));
                    let mut sums = vec![0u32; short.len()];
                    for (kh, born, _) in when.values() {
                        if *born <= from_index {
                            let i = entry::bucket_of(*kh, bits) as usize;
                            sums[i] = sums[i].wrapping_add(entry::short_key_hash(*kh));
                        }
                    }
                    let want: Vec<u32> = (0..short.len())
                        .filter(|i| sums[*i] != short[*i])
                        .map(|i| u32::try_from(i).expect("at most 2^20 buckets"))
                        .collect();
                    let got: Vec<u32> = kept.iter().map(|k| k.bucket).collect();
                    prop_assert_eq!(&got, &want);
                    for k in &kept {
                        let mut listed = k.keys.clone();
                        listed.sort_unstable();
                        let mut held: Vec<u32> = when
                            .values()
                            .map(|w| w.0)
                            .filter(|kh| entry::bucket_of(*kh, bits) == k.bucket)
                            .map(entry::short_key_hash)
                            .collect();
                        held.sort_unstable();
                        prop_assert_eq!(listed, held);
                    }
                    let want: BTreeMap<Key, u64> = mine
                        .iter()
                        .filter(|(k, _)| when[*k].2 > from_index)
                        .map(|(k, h)| (k.clone(), *h))
                        .collect();
                    prop_assert_eq!(sent, want);
                } else {
                    prop_assert!(kept.is_empty());
                    prop_assert_eq!(bucket_bits, bits);
                    let mut sums = vec![0u64; buckets.len()];
                    for (k, h) in &mine {
                        let i = k.bucket(bits) as usize;
                        sums[i] = sums[i].wrapping_add(*h);
                    }
                    let want: Vec<u32> = (0..buckets.len())
                        .filter(|i| sums[*i] != buckets[*i])
                        .map(|i| u32::try_from(i).expect("at most 2^20 buckets"))
                        .collect();
                    prop_assert_eq!(&differing, &want);
                    let want: BTreeMap<Key, u64> = mine
                        .iter()
                        .filter(|(k, _)| differing.binary_search(&k.bucket(bits)).is_ok())
                        .map(|(k, h)| (k.clone(), *h))
                        .collect();
                    prop_assert_eq!(sent, want);
                }
            }
        }
    }
}

/// A subscriber that sends the largest bucket count the protocol allows gets a precise plan;
/// one more bit, and it gets everything without the origin building 2^21 sums.
#[test]
fn the_largest_bucket_count_is_compared_and_one_more_bit_is_not() {
    let mut s = DcState::default();
    for id in 0..20 {
        apply(
            &mut s,
            &Op::Register {
                node: id % 4,
                id,
                service: "web",
                port: 0,
                critical: false,
            },
        );
    }
    let x = Exporter::new(ExportPolicy::all(), 1, &s);
    let bits = entry::MAX_BUCKET_BITS;
    let mut buckets = vec![0u64; 1 << bits];
    for (k, h) in exported(&x) {
        let i = k.bucket(bits) as usize;
        buckets[i] = buckets[i].wrapping_add(h);
    }
    match x.plan(0, bits, Sums::Entries(&buckets)) {
        Plan::Catchup { all, entries, .. } => assert!(!all && entries.is_empty(), "in sync"),
        other => panic!("expected a catch-up, got {other:?}"),
    }
    for bits in [bits + 1, 32, 64, u32::MAX] {
        match x.plan(0, bits, Sums::Entries(&buckets)) {
            Plan::Catchup { all, entries, .. } => assert!(all && entries.len() == 20),
            other => panic!("expected a catch-up, got {other:?}"),
        }
    }
}
