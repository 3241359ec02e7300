//! Counters the catalog keeps: plain atomics, read at each scrape by `metrics.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Monotonic counters of one catalog node.
#[derive(Debug)]
pub struct CatalogCounters {
    /// When the node started; the origin of `last_append_ms`.
    started: Instant,
    /// Milliseconds after `started` of the last AppendEntries from a leader (0: none yet).
    last_append_ms: AtomicU64,
    /// Write attempts proposed on this node as the leader.
    pub writes_local: AtomicU64,
    /// Write attempts this node forwarded to the leader.
    pub writes_forwarded: AtomicU64,
    /// Calls to the leader that carried those writes (a batch is one call).
    pub forward_calls: AtomicU64,
    /// Writes that failed (no leader within the timeout, or refused).
    pub writes_failed: AtomicU64,
    /// Raft entries proposed by this node's proposer (each a batch of writes).
    pub batches: AtomicU64,
    /// Writes carried by those entries.
    pub batched_writes: AtomicU64,
    /// Malformed RPC payloads refused.
    pub rpc_rejected: AtomicU64,
    /// Connections to the rpc port refused in the TLS handshake (no certificate of this DC).
    pub rpc_tls_refused: std::sync::Arc<AtomicU64>,
    /// Snapshots this node built from its state machine and stored.
    pub snapshots_built: AtomicU64,
    /// Microseconds spent building them (serializing the catalog and storing it with fsync).
    pub snapshot_build_us: AtomicU64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: AtomicU64,
}

impl Default for CatalogCounters {
    fn default() -> Self {
        CatalogCounters {
            // Uptime for /metrics only; nothing decides by it.
            #[allow(clippy::disallowed_methods)]
            started: Instant::now(),
            last_append_ms: AtomicU64::new(0),
            writes_local: AtomicU64::new(0),
            writes_forwarded: AtomicU64::new(0),
            forward_calls: AtomicU64::new(0),
            writes_failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched_writes: AtomicU64::new(0),
            rpc_rejected: AtomicU64::new(0),
            rpc_tls_refused: std::sync::Arc::new(AtomicU64::new(0)),
            snapshots_built: AtomicU64::new(0),
            snapshot_build_us: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
        }
    }
}

impl CatalogCounters {
    /// Records that a leader's AppendEntries (or heartbeat) arrived now.
    pub(crate) fn heard_from_leader(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_append_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Time since a leader was last heard from, if ever.
    pub fn since_last_append(&self) -> Option<Duration> {
        match self.last_append_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// Adds one to `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
