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
