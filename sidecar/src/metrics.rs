//! The sidecar's counters and their metric families: decisions on the way in, handshakes
//! refused and why, connections revoked by a changed intention, and connections on the way out
//! by upstream and outcome. Kept in the sidecar value, not in globals.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_topology::metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// Counters of one sidecar.
#[derive(Debug, Default)]
pub struct SidecarMetrics {
    /// Inbound decisions: `allow`, `deny`, `unanswered`.
    decisions: Mutex<BTreeMap<&'static str, u64>>,
    /// Inbound handshakes refused, by reason.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Outbound connections by `(upstream, outcome)`.
    upstream: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Open inbound connections closed because an intention now denies them.
    pub revoked: AtomicU64,
    /// Inbound connections open now.
    pub inbound_open: AtomicU64,
    /// Outbound connections open now.
    pub outbound_open: AtomicU64,
    /// Leaves taken into use (the first, then each renewal).
    pub leaves: AtomicU64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_default() += 1;
}

fn read<K: Ord + Clone>(m: &Mutex<BTreeMap<K, u64>>) -> Vec<(K, u64)> {
    m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, n)| (k.clone(), *n))
        .collect()
}

impl SidecarMetrics {
    /// Counts an inbound decision (`allow`, `deny`, or `unanswered`).
    pub fn decided(&self, decision: &'static str) {
        bump(&self.decisions, decision);
    }

    /// Counts an inbound handshake refused for `reason`.
    pub fn refused(&self, reason: &'static str) {
        bump(&self.refused, reason);
    }

    /// Counts an outbound connection to `upstream` that ended in `outcome`.
    pub fn upstream(&self, upstream: &str, outcome: &'static str) {
        bump(&self.upstream, (upstream.to_owned(), outcome));
    }

    /// Inbound decisions so far of this kind.
    pub fn decisions(&self, decision: &str) -> u64 {
        read(&self.decisions)
            .into_iter()
            .filter(|(d, _)| *d == decision)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Collector for SidecarMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        metrics::counter_by(
            &mut enc,
            "meridian_mesh_authorizations",
            "Inbound mesh connections by the intentions' decision (allow, deny; unanswered: the agent gave none in time).",
            read(&self.decisions)
                .into_iter()
                .map(|(d, n)| ([("decision", d)], n)),
        )?;
        metrics::counter_by(
            &mut enc,
            "meridian_mesh_handshake_failures",
            "Inbound mesh connections refused before a decision, by reason (no_certificate, untrusted, expired, wrong_identity, timeout, tls, cap).",
            read(&self.refused)
                .into_iter()
                .map(|(r, n)| ([("reason", r)], n)),
        )?;
        metrics::counter_by(
            &mut enc,
            "meridian_mesh_upstream_connections",
            "Outbound mesh connections by upstream and outcome (relayed, no_route, connect_failed, tls_failed).",
            read(&self.upstream)
                .into_iter()
                .map(|((u, o), n)| ([("upstream", u), ("outcome", o.to_owned())], n)),
        )?;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::counters(
            &mut enc,
            &[
                (
                    "meridian_mesh_revoked",
                    "Open inbound connections closed because an intention now denies them.",
                    load(&self.revoked),
                ),
                (
                    "meridian_mesh_leaves",
                    "Leaf certificates taken into use (the first, then each renewal).",
                    load(&self.leaves),
                ),
            ],
        )?;
        metrics::gauges(
            &mut enc,
            &[
                (
                    "meridian_mesh_inbound_open",
                    "Inbound mesh connections open now.",
                    load(&self.inbound_open),
                ),
                (
                    "meridian_mesh_outbound_open",
                    "Outbound mesh connections open now.",
                    load(&self.outbound_open),
                ),
            ],
        )
    }
}
