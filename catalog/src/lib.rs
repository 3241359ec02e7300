//! A datacenter's authoritative service catalog: one openraft group per datacenter whose log and
//! state machine live in RocksDB (fsync on every append), Raft RPCs and write forwarding over gRPC,
//! and the health checks that run on the node that registered an instance.
//!
//! [`Catalog`] is the handle the rest of the process holds. Writes go through [`Catalog::write`],
//! which forwards to the leader wherever it is, and return only once the entry is committed on a
//! majority and applied. Reads never touch Raft: every applied batch publishes a new
//! [`meridian_topology::View`], which readers take with [`Catalog::view`] or wait on with
//! [`Catalog::watch`].

// Deliberate faults for the chaos tests' checker self-tests; absent from normal builds.
#[cfg(feature = "chaos-broken")]
mod chaos_break;
/// Without the faults, the one hook store.rs calls at its sync points always says "sync".
#[cfg(not(feature = "chaos-broken"))]
mod chaos_break {
    pub(crate) const fn wal_sync() -> bool {
        true
    }
}
mod backup;
mod coalesce;
mod command;
mod config;
mod counters;
mod error;
mod forwarder;
mod health;
mod membership;
mod metrics;
mod network;
mod node;
mod proposer;
mod rpc;
mod store;
mod tls;
mod types;

pub use backup::{
    BACKUP_FORMAT, Backup, BackupError, BackupHeader, MAX_BACKUP_BYTES, decode as decode_backup,
    encode as encode_backup,
};
pub use command::{Batch, BatchOutcome, Command, WriteOutcome};
pub use config::{CatalogConfig, CheckPolicy, RaftTuning};
pub use counters::CatalogCounters;
pub use error::CatalogError;
pub use health::GATEWAY_ONLY_META;
pub use membership::{MAX_CATCH_UP, MembershipChange};
pub use metrics::CatalogMetrics;
pub use node::{Catalog, RaftConfiguration, RaftMember, RaftStatus, SERVER_META};
pub use store::{CATALOG_MAX_OPEN_FILES, LogStore, StateMachineStore, open_store};
pub use tls::RpcTls;
pub use types::TypeConfig;
