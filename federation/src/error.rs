//! The federation's errors.

/// What can go wrong starting or running federation.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The replica store (RocksDB) failed.
    #[error("federation store: {0}")]
    Store(String),
    /// TLS material could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] meridian_identity::TlsError),
    /// A socket could not be bound.
    #[error("cannot listen for federation on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Another datacenter's server could not be reached through the relay.
    #[error("relay: {0}")]
    Relay(String),
}
