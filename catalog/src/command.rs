//! The commands a datacenter's Raft log carries, and what applying one reports.

use meridian_topology::{Check, Health, Instance, Node};
use serde::{Deserialize, Serialize};

/// A change to the catalog, replicated through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Adds or updates a node.
    RegisterNode {
        /// The node.
        node: Node,
    },
    /// Registers or re-registers an instance; its checks replace the previous ones.
    Register {
        /// The instance.
        instance: Instance,
        /// Its checks (IDs unique on the node).
        checks: Vec<Check>,
    },
    /// Removes an instance and its checks.
    Deregister {
        /// Node the instance is on.
        node: String,
        /// Instance ID.
        id: String,
    },
    /// Sets a check's status.
    UpdateCheck {
        /// Node the check is on.
        node: String,
        /// Check ID.
        check_id: String,
        /// New status.
        status: Health,
        /// New output.
        output: String,
    },
}

/// What applying a command did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// Raft index of the entry.
    pub index: u64,
    /// Whether the catalog changed.
    pub changed: bool,
    /// False when the command named an instance or check that does not exist.
    pub found: bool,
}
