//! The openraft type configuration of a datacenter's Raft group.

use std::io::Cursor;

use crate::command::{Batch, BatchOutcome};

openraft::declare_raft_types!(
    /// Raft types for the catalog: batches of commands in, their outcomes out, `u64` node IDs,
    /// nodes addressed by their gRPC `host:port`, snapshots as JSON bytes.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Our Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
/// A storage error of our Raft group.
pub type StorageError = openraft::StorageError<u64>;
