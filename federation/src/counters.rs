//! Federation counters and their Prometheus text: per remote DC (as a subscriber) and per
//! subscribing DC (as an origin), plus refusals of bad peers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Syncs that resent only differing buckets.
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
    /// Sync messages that broke the protocol (stream restarted).
    pub protocol_errors: AtomicU64,
    /// Syncs whose digest did not match the origin's (replica resynced).
    pub digest_mismatches: AtomicU64,
    /// Persisted replica entries that no longer decoded at start.
    pub corrupt_entries: AtomicU64,
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

    /// Appends the counters in Prometheus text format; `now_ms` dates the staleness gauges.
    pub fn render(&self, out: &mut String, now_ms: u64) {
        let peers: Vec<(String, Arc<PeerStats>)> = self
            .peers
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        type PeerGauge = (
            &'static str,
            &'static str,
            &'static str,
            fn(&PeerStats, u64) -> u64,
        );
        let per_peer: [PeerGauge; 11] = [
            (
                "meridian_federation_connected",
                "gauge",
                "1 while the stream to the remote DC is up and synced.",
                |p, _| u64::from(p.connected.load(Ordering::Relaxed)),
            ),
            (
                "meridian_federation_index",
                "gauge",
                "Origin Raft index of the remote DC's replica.",
                |p, _| get(&p.index),
            ),
            (
                "meridian_federation_index_lag",
                "gauge",
                "The remote DC's newest announced index minus the replica's.",
                |p, _| get(&p.lag),
            ),
            (
                "meridian_federation_seconds_since_update",
                "gauge",
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
                "meridian_federation_received_bytes_total",
                "counter",
                "Bytes of sync messages received from the remote DC.",
                |p, _| get(&p.bytes_in),
            ),
            (
                "meridian_federation_received_messages_total",
                "counter",
                "Sync messages received from the remote DC.",
                |p, _| get(&p.messages_in),
            ),
            (
                "meridian_federation_sent_bytes_total",
                "counter",
                "Bytes of subscription requests sent to the remote DC.",
                |p, _| get(&p.bytes_out),
            ),
            (
                "meridian_federation_disconnects_total",
                "counter",
                "Streams to the remote DC that ended.",
                |p, _| get(&p.disconnects),
            ),
            (
                "meridian_federation_full_syncs_total",
                "counter",
                "Full snapshots received from the remote DC.",
                |p, _| get(&p.full_syncs),
            ),
            (
                "meridian_federation_partial_syncs_total",
                "counter",
                "Digest catch-ups (only differing buckets) from the remote DC.",
                |p, _| get(&p.partial_syncs),
            ),
            (
                "meridian_federation_resumes_total",
                "counter",
                "Reconnects that resumed from the replica's index.",
                |p, _| get(&p.resumes),
            ),
        ];
        for (name, kind, help, f) in per_peer {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (dc, p) in &peers {
                let v = f(p, now_ms);
                if v == u64::MAX {
                    let _ = writeln!(out, "{name}{{dc=\"{dc}\"}} +Inf");
                } else {
                    let _ = writeln!(out, "{name}{{dc=\"{dc}\"}} {v}");
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
            &'static str,
            &'static str,
            fn(&SubscriberStats) -> u64,
        );
        let per_sub: [SubCounter; 5] = [
            (
                "meridian_federation_served_streams_total",
                "counter",
                "Sync streams opened by the subscribing DC.",
                |s| get(&s.streams),
            ),
            (
                "meridian_federation_served_streams_open",
                "gauge",
                "Sync streams of the subscribing DC open now.",
                |s| get(&s.open),
            ),
            (
                "meridian_federation_served_bytes_total",
                "counter",
                "Bytes of sync messages sent to the subscribing DC.",
                |s| get(&s.bytes_out),
            ),
            (
                "meridian_federation_served_messages_total",
                "counter",
                "Sync messages sent to the subscribing DC.",
                |s| get(&s.messages_out),
            ),
            (
                "meridian_federation_too_slow_total",
                "counter",
                "Streams cut because the subscriber fell out of the change window.",
                |s| get(&s.too_slow),
            ),
        ];
        for (name, kind, help, f) in per_sub {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (dc, s) in &subs {
                let _ = writeln!(out, "{name}{{subscriber_dc=\"{dc}\"}} {}", f(s));
            }
        }
        let _ = writeln!(
            out,
            "# HELP meridian_federation_refused_total Federation connections or subscriptions refused, by reason.\n\
             # TYPE meridian_federation_refused_total counter"
        );
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "meridian_federation_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        for (name, help, v) in [
            (
                "meridian_federation_protocol_errors_total",
                "Sync messages that broke the protocol.",
                get(&self.protocol_errors),
            ),
            (
                "meridian_federation_digest_mismatches_total",
                "Syncs whose digest differed from the origin's.",
                get(&self.digest_mismatches),
            ),
            (
                "meridian_federation_corrupt_entries_total",
                "Persisted replica entries that no longer decoded.",
                get(&self.corrupt_entries),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
    }
}
