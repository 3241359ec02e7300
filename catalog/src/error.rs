//! Errors of the catalog.

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The configuration cannot work.
    #[error("invalid catalog configuration: {0}")]
    Config(String),
    /// RocksDB failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// No leader could be reached, or the write was not committed, before the deadline.
    /// The write may or may not have been applied; retrying is safe (writes are idempotent).
    #[error("no leader committed the write within {timeout_ms} ms: {last_error}")]
    Unavailable {
        /// The deadline that passed.
        timeout_ms: u64,
        /// The last error seen while trying.
        last_error: String,
    },
    /// The catalog is shutting down.
    #[error("the catalog is shutting down")]
    Shutdown,
    /// This node does not vote in its DC's Raft group (joining and not yet added, or removed), so
    /// it takes no writes: a client should write through a server of the group.
    #[error(
        "node {node_id} is not a voter of {datacenter}'s raft group (joining and not yet added with \
         `meridian operator raft add-peer`, or removed): write through one of its servers"
    )]
    NotVoter {
        /// This node's Raft id.
        node_id: u64,
        /// Its datacenter.
        datacenter: String,
    },
    /// A membership change that cannot be made as asked.
    #[error("membership change refused: {0}")]
    MembershipRefused(String),
    /// A Raft error that retrying does not fix.
    #[error("raft error: {0}")]
    Raft(String),
    /// The gRPC server could not start.
    #[error("cannot serve rpc on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}
