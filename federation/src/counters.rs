//! Federation counters and their metric families: per remote DC (as a subscriber) and per
//! subscribing DC (as an origin), plus refusals of bad peers (by reason: handshakes, streams
//! over the per-certificate cap, snapshots over the staging caps, learned addresses refused)
//! and learned entries expired. Each family is described here,
//! once, and read at each scrape of the registry the node registers the counters on.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meridian_topology::metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Counters of one remote datacenter this node subscribes to.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// The stream is up and synced.
    pub connected: AtomicBool,
    /// Origin index of the replica.
    pub index: AtomicU64,
    /// The origin's newest announced index minus the replica's.
    pub lag: AtomicU64,
    /// Last confirmation by the origin, ms since the Unix epoch.
    pub confirmed_unix_ms: AtomicU64,
    /// Bytes of sync messages received.
    pub bytes_in: AtomicU64,
    /// Sync messages received.
    pub messages_in: AtomicU64,
    /// Bytes of subscription requests sent.
    pub bytes_out: AtomicU64,
    /// Subscription requests sent.
    pub messages_out: AtomicU64,
    /// Streams that ended (error, timeout, origin gone).
    pub disconnects: AtomicU64,
    /// Syncs that were full snapshots.
    pub full_syncs: AtomicU64,
    /// Digest catch-ups: only what differed was resent (by key sums or by entry sums).
    pub partial_syncs: AtomicU64,
    /// Syncs that replayed changes after the replica's index.
    pub resumes: AtomicU64,
}

/// Counters of one datacenter subscribing to this node.
#[derive(Debug, Default)]
pub struct SubscriberStats {
    /// Streams opened.
    pub streams: AtomicU64,
    /// Streams open now.
    pub open: AtomicU64,
    /// Bytes of sync messages sent.
    pub bytes_out: AtomicU64,
    /// Sync messages sent.
    pub messages_out: AtomicU64,
    /// Streams cut because the subscriber fell out of the change window.
    pub too_slow: AtomicU64,
}

/// All of a node's federation counters.
#[derive(Debug, Default)]
pub struct FederationCounters {
    peers: Mutex<BTreeMap<String, Arc<PeerStats>>>,
    subscribers: Mutex<BTreeMap<String, Arc<SubscriberStats>>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Relayed pipes and DNS queries served, by target and outcome.
    relayed: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Sync messages that broke the protocol (stream restarted).
    pub protocol_errors: AtomicU64,
    /// Syncs whose digest did not match the origin's (replica resynced).
    pub digest_mismatches: AtomicU64,
    /// Persisted replica entries that no longer decoded at start.
    pub corrupt_entries: AtomicU64,
    /// Learned addresses forgotten because they did not answer in time.
    pub expired_addresses: AtomicU64,
    /// Learned datacenters forgotten because none of their addresses answered in time.
    pub forgotten_datacenters: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl FederationCounters {
    /// The counters of remote datacenter `dc`.
    pub fn peer(&self, dc: &str) -> Arc<PeerStats> {
        let mut m = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(dc.to_owned()).or_default().clone()
    }

    /// The counters of subscribing datacenter `dc`.
    pub fn subscriber(&self, dc: &str) -> Arc<SubscriberStats> {
        let mut m = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(dc.to_owned()).or_default().clone()
    }

    /// Counts learned addresses and datacenters forgotten for not answering.
    pub fn expired(&self, addresses: u64, datacenters: u64) {
        self.expired_addresses
            .fetch_add(addresses, Ordering::Relaxed);
        self.forgotten_datacenters
            .fetch_add(datacenters, Ordering::Relaxed);
    }

    /// Drops the counters of remote datacenter `dc` (forgotten), so that datacenters that come
    /// and go do not grow the metrics without bound.
    pub fn forget_peer(&self, dc: &str) {
        let mut m = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(dc);
    }

    /// Counts a pipe or DNS query the relay served, by target (`http`, `gateway`, `dns`) and
    /// outcome.
    pub fn relayed(&self, target: &'static str, outcome: &'static str) {
        let mut m = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((target, outcome)).or_default() += 1;
    }

    /// Counts a refused connection or subscription, by reason.
    pub fn refuse(&self, reason: &'static str) {
        let mut m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_default() += 1;
    }

    /// Refusals so far for `reason`.
    pub fn refused(&self, reason: &str) -> u64 {
        let m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        m.get(reason).copied().unwrap_or(0)
    }

    /// Describes every family and its samples on `enc`; `now_ms` dates the staleness gauges.
    fn encode_at(&self, enc: &mut DescriptorEncoder<'_>, now_ms: u64) -> fmt::Result {
        let peers: Vec<(String, Arc<PeerStats>)> = self
            .peers
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        type PeerGauge = (
            &'static str,
            MetricType,
            &'static str,
            fn(&PeerStats, u64) -> u64,
        );
        let per_peer: [PeerGauge; 11] = [
            (
                "meridian_federation_connected",
                MetricType::Gauge,
                "1 while the stream to the remote DC is up and synced.",
                |p, _| u64::from(p.connected.load(Ordering::Relaxed)),
            ),
            (
                "meridian_federation_index",
                MetricType::Gauge,
                "Origin Raft index of the remote DC's replica.",
                |p, _| get(&p.index),
            ),
            (
                "meridian_federation_index_lag",
                MetricType::Gauge,
                "The remote DC's newest announced index minus the replica's.",
                |p, _| get(&p.lag),
            ),
            (
                "meridian_federation_seconds_since_update",
                MetricType::Gauge,
                "Seconds since the remote DC last confirmed the replica (update or heartbeat).",
                |p, now| {
                    let c = get(&p.confirmed_unix_ms);
                    if c == 0 {
                        u64::MAX
                    } else {
                        now.saturating_sub(c) / 1000
                    }
                },
            ),
            (
                "meridian_federation_received_bytes",
                MetricType::Counter,
                "Bytes of sync messages received from the remote DC.",
                |p, _| get(&p.bytes_in),
            ),
            (
                "meridian_federation_received_messages",
                MetricType::Counter,
                "Sync messages received from the remote DC.",
                |p, _| get(&p.messages_in),
            ),
            (
                "meridian_federation_sent_bytes",
                MetricType::Counter,
                "Bytes of subscription requests sent to the remote DC.",
                |p, _| get(&p.bytes_out),
            ),
            (
                "meridian_federation_disconnects",
                MetricType::Counter,
                "Streams to the remote DC that ended.",
                |p, _| get(&p.disconnects),
            ),
            (
                "meridian_federation_full_syncs",
                MetricType::Counter,
                "Full snapshots received from the remote DC.",
                |p, _| get(&p.full_syncs),
            ),
            (
                "meridian_federation_partial_syncs",
                MetricType::Counter,
                "Digest catch-ups (only what differed resent) from the remote DC.",
                |p, _| get(&p.partial_syncs),
            ),
            (
                "meridian_federation_resumes",
                MetricType::Counter,
                "Reconnects that resumed from the replica's index.",
                |p, _| get(&p.resumes),
            ),
        ];
        for (name, kind, help, f) in per_peer {
            let mut family = enc.encode_descriptor(name, help, None, kind)?;
            for (dc, p) in &peers {
                let labels = [("dc", dc.as_str())];
                let child = family.encode_family(&labels)?;
                match (f(p, now_ms), kind) {
                    // Never confirmed: infinitely stale.
                    (u64::MAX, _) => ConstGauge::new(f64::INFINITY).encode(child)?,
                    (v, MetricType::Counter) => ConstCounter::new(v).encode(child)?,
                    (v, _) => ConstGauge::new(v).encode(child)?,
                }
            }
        }
        let subs: Vec<(String, Arc<SubscriberStats>)> = self
            .subscribers
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        type SubCounter = (
            &'static str,
            MetricType,
            &'static str,
            fn(&SubscriberStats) -> u64,
        );
        let per_sub: [SubCounter; 5] = [
            (
                "meridian_federation_served_streams",
                MetricType::Counter,
                "Sync streams opened by the subscribing DC.",
                |s| get(&s.streams),
            ),
            (
                "meridian_federation_served_streams_open",
                MetricType::Gauge,
                "Sync streams of the subscribing DC open now.",
                |s| get(&s.open),
            ),
            (
                "meridian_federation_served_bytes",
                MetricType::Counter,
                "Bytes of sync messages sent to the subscribing DC.",
                |s| get(&s.bytes_out),
            ),
            (
                "meridian_federation_served_messages",
                MetricType::Counter,
                "Sync messages sent to the subscribing DC.",
                |s| get(&s.messages_out),
            ),
            (
                "meridian_federation_too_slow",
                MetricType::Counter,
                "Streams cut because the subscriber fell out of the change window.",
                |s| get(&s.too_slow),
            ),
        ];
        for (name, kind, help, f) in per_sub {
            let samples = subs
                .iter()
                .map(|(dc, s)| ([("subscriber_dc", dc.as_str())], f(s)));
            if matches!(kind, MetricType::Counter) {
                metrics::counter_by(enc, name, help, samples)?;
            } else {
                metrics::gauge_by(enc, name, help, samples)?;
            }
        }
        let refused: Vec<(&'static str, u64)> = self
            .refused
            .lock()
            .map(|m| m.iter().map(|(r, n)| (*r, *n)).collect())
            .unwrap_or_default();
        metrics::counter_by(
            enc,
            "meridian_federation_refused",
            "Federation connections or subscriptions refused, by reason.",
            refused
                .into_iter()
                .map(|(reason, n)| ([("reason", reason)], n)),
        )?;
        let relayed: Vec<((&'static str, &'static str), u64)> = self
            .relayed
            .lock()
            .map(|m| m.iter().map(|(k, n)| (*k, *n)).collect())
            .unwrap_or_default();
        metrics::counter_by(
            enc,
            "meridian_federation_relayed",
            "Pipes and DNS queries relayed for servers of other datacenters, by target and outcome.",
            relayed
                .into_iter()
                .map(|((target, outcome), n)| ([("target", target), ("outcome", outcome)], n)),
        )?;
        metrics::counters(
            enc,
            &[
                (
                    "meridian_federation_protocol_errors",
                    "Sync messages that broke the protocol.",
                    get(&self.protocol_errors),
                ),
                (
                    "meridian_federation_digest_mismatches",
                    "Syncs whose digest differed from the origin's.",
                    get(&self.digest_mismatches),
                ),
                (
                    "meridian_federation_corrupt_entries",
                    "Persisted replica entries that no longer decoded.",
                    get(&self.corrupt_entries),
                ),
                (
                    "meridian_federation_expired_addresses",
                    "Learned datacenter addresses forgotten because they did not answer in time.",
                    get(&self.expired_addresses),
                ),
                (
                    "meridian_federation_forgotten_datacenters",
                    "Learned datacenters forgotten because none of their addresses answered in time.",
                    get(&self.forgotten_datacenters),
                ),
            ],
        )
    }
}

impl Collector for FederationCounters {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_at(&mut enc, crate::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn exposition(c: &Arc<FederationCounters>, now_ms: u64) -> String {
        #[derive(Debug)]
        struct At(Arc<FederationCounters>, u64);
        impl Collector for At {
            fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
                self.0.encode_at(&mut enc, self.1)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(At(c.clone(), now_ms)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn families_carry_each_dc_and_a_never_confirmed_replica_is_infinitely_stale() {
        let c = Arc::new(FederationCounters::default());
        let dc2 = c.peer("dc2");
        dc2.connected.store(true, Ordering::Relaxed);
        dc2.index.store(42, Ordering::Relaxed);
        dc2.confirmed_unix_ms.store(10_000, Ordering::Relaxed);
        dc2.bytes_in.store(7, Ordering::Relaxed);
        c.peer("dc3");
        c.subscriber("dc4").open.store(2, Ordering::Relaxed);
        c.refuse("wrong_dc");
        let text = exposition(&c, 13_500);
        for line in [
            "# TYPE meridian_federation_connected gauge",
            "meridian_federation_connected{dc=\"dc2\"} 1",
            "meridian_federation_connected{dc=\"dc3\"} 0",
            "meridian_federation_index{dc=\"dc2\"} 42",
            "meridian_federation_seconds_since_update{dc=\"dc2\"} 3",
            "# TYPE meridian_federation_received_bytes counter",
            "meridian_federation_received_bytes_total{dc=\"dc2\"} 7",
            "meridian_federation_served_streams_open{subscriber_dc=\"dc4\"} 2",
            "meridian_federation_refused_total{reason=\"wrong_dc\"} 1",
            "meridian_federation_protocol_errors_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let stale = text
            .lines()
            .find_map(|l| l.strip_prefix("meridian_federation_seconds_since_update{dc=\"dc3\"} "))
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(stale, Some(f64::INFINITY), "{text}");
    }
}
