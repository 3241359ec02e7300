//! Counters the catalog keeps for `/metrics`: plain atomics, read by whoever renders them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of one catalog node.
#[derive(Debug, Default)]
pub struct CatalogCounters {
    /// Write attempts proposed on this node as the leader.
    pub writes_local: AtomicU64,
    /// Write attempts this node forwarded to the leader.
    pub writes_forwarded: AtomicU64,
    /// Writes that failed (no leader within the timeout, or refused).
    pub writes_failed: AtomicU64,
    /// Raft entries proposed by this node's proposer (each a batch of writes).
    pub batches: AtomicU64,
    /// Writes carried by those entries.
    pub batched_writes: AtomicU64,
    /// Malformed RPC payloads refused.
    pub rpc_rejected: AtomicU64,
}

impl CatalogCounters {
    /// Adds one to `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
