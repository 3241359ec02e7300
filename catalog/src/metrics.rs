//! The catalog's metric families: Raft's state, the local catalog's size and index, and the
//! counters of writes and of the rpc port. Described here, once, and read from the running node
//! at each scrape of the registry the node registers them on.

use std::fmt;

use meridian_topology::metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::counters::CatalogCounters;
use crate::node::Catalog;

/// The catalog's families, read from a running [`Catalog`]; register it on a registry.
#[derive(Clone)]
pub struct CatalogMetrics(Catalog);

impl CatalogMetrics {
    /// The families of `catalog` (a cheap clone of the handle).
    pub fn new(catalog: &Catalog) -> Self {
        CatalogMetrics(catalog.clone())
    }
}

impl fmt::Debug for CatalogMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CatalogMetrics")
            .field(&self.0.node_name())
            .finish()
    }
}

impl Collector for CatalogMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let raft = self.0.status();
        let view = self.0.view();
        metrics::gauges(
            &mut enc,
            &[
                ("meridian_raft_term", "Current Raft term.", raft.term),
                (
                    "meridian_raft_last_applied_index",
                    "Last Raft log index applied to the catalog.",
                    raft.last_applied,
                ),
                (
                    "meridian_raft_is_leader",
                    "1 if this node leads its datacenter's Raft group.",
                    u64::from(raft.is_leader),
                ),
                (
                    "meridian_catalog_instances",
                    "Service instances registered in the local datacenter.",
                    view.local().instance_count() as u64,
                ),
                (
                    "meridian_acl_token_records",
                    "This datacenter's records of API tokens (its writes, deletes included), of at most 10,000.",
                    view.local().tokens().len() as u64,
                ),
                (
                    "meridian_mesh_intention_records",
                    "This datacenter's records of intentions (its writes, deletes included), of at most 10,000.",
                    view.local().intentions().len() as u64,
                ),
                (
                    "meridian_catalog_index",
                    "Raft index of the last change to the local catalog.",
                    view.local().index(),
                ),
            ],
        )?;
        let c = self.0.counters();
        let get = CatalogCounters::get;
        metrics::counters(
            &mut enc,
            &[
                (
                    "meridian_catalog_writes_local",
                    "Write attempts proposed on this node as the leader.",
                    get(&c.writes_local),
                ),
                (
                    "meridian_catalog_writes_forwarded",
                    "Write attempts this node forwarded to the leader.",
                    get(&c.writes_forwarded),
                ),
                (
                    "meridian_catalog_forward_calls",
                    "Calls to the leader carrying forwarded writes (writes forwarded per call is the mean batch).",
                    get(&c.forward_calls),
                ),
                (
                    "meridian_catalog_writes_failed",
                    "Writes that failed: no leader committed them in time, or Raft refused them.",
                    get(&c.writes_failed),
                ),
                (
                    "meridian_raft_proposed_entries",
                    "Raft entries this node proposed as the leader (each a batch of writes).",
                    get(&c.batches),
                ),
                (
                    "meridian_raft_proposed_writes",
                    "Writes carried by those entries (divide by entries for the mean batch size).",
                    get(&c.batched_writes),
                ),
                (
                    "meridian_rpc_tls_refused",
                    "Connections to the rpc port refused in the TLS handshake (no certificate of this DC).",
                    get(&c.rpc_tls_refused),
                ),
                (
                    "meridian_rpc_rejected_payloads",
                    "Malformed Raft or forwarding RPC payloads refused.",
                    get(&c.rpc_rejected),
                ),
                (
                    "meridian_raft_snapshots_built",
                    "Snapshots this node built from its catalog and stored.",
                    get(&c.snapshots_built),
                ),
                (
                    "meridian_raft_snapshots_installed",
                    "Snapshots this node installed from a leader.",
                    get(&c.snapshots_installed),
                ),
            ],
        )?;
        metrics::counters(
            &mut enc,
            &[(
                "meridian_raft_snapshot_build_seconds",
                "Seconds spent building snapshots (serializing the catalog, storing it with fsync), off the runtime's workers.",
                get(&c.snapshot_build_us) as f64 / 1e6,
            )],
        )
    }
}
