//! How a catalog node is set up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a catalog node needs to start.
#[derive(Clone, Debug)]
pub struct CatalogConfig {
    /// Datacenter name.
    pub datacenter: String,
    /// This node's name (a DNS label).
    pub node_name: String,
    /// This node's Raft ID; must be a key of `servers`.
    pub node_id: u64,
    /// Address other machines reach this node at (registered as the node's address).
    pub advertise_addr: String,
    /// Where the Raft/catalog gRPC server listens.
    pub rpc_bind: SocketAddr,
    /// Folder for the RocksDB database.
    pub data_dir: PathBuf,
    /// The datacenter's first voters: Raft ID to gRPC address (`host:port`), 1, 3 or 5 of them,
    /// with which a new group is formed. With `join`, only this node's own entry is needed.
    pub servers: BTreeMap<u64, String>,
    /// Join the DC's existing group instead of forming one: start empty, as a non-voter, and wait
    /// for the leader to add this node (`meridian operator raft add-peer`).
    pub join: bool,
    /// Raft timing and log compaction.
    pub raft: RaftTuning,
    /// How long a write may wait for a leader and a commit before it fails.
    pub write_timeout: Duration,
    /// Mutual TLS on the rpc port; `None` runs it in plain text (anyone who reaches it can
    /// vote and append).
    pub tls: Option<crate::RpcTls>,
    /// What HTTP checks may reach and what of the answer they keep.
    pub checks: CheckPolicy,
}

/// What an HTTP check may reach and keep. A check is written by anyone with a write token, and
/// its output is readable by every reader: without limits it is a way to make the node fetch
/// what the writer cannot reach (a cloud's metadata service) and show it to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckPolicy {
    /// Prefixes a check may reach although they are refused by default (link-local addresses,
    /// where clouds serve instance metadata and credentials).
    pub allow: Vec<meridian_topology::net::Prefix>,
    /// This node's own API (`ip:port`): never a check's target, on that address or loopback.
    pub own_api: Vec<SocketAddr>,
    /// Keep up to 4 KiB of the answer's body as the output (off: the status line only).
    pub keep_body: bool,
}

/// Raft timing and log compaction.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_every: 10_000,
            keep_logs: 2_000,
        }
    }
}
