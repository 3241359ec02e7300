//! The commands a datacenter's Raft log carries, and what applying one reports.

use meridian_topology::dc::DcSnapshot;
use meridian_topology::intention::IntentionRecord;
use meridian_topology::lww::Stamp;
use meridian_topology::mesh::MeshCa;
use meridian_topology::token::TokenRecord;
use meridian_topology::{Check, Health, Instance, Node, PreparedQuery};
use std::sync::Arc;

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
    /// Creates or replaces a prepared query. Applied only if `create` and the ID is new (or holds
    /// this very query already, so a retried create succeeds), or if not `create` and the ID
    /// exists, and only if no other query has the name. Otherwise nothing changes and the
    /// outcome says `found: false`: the caller reads why from the view it answers from.
    SetQuery {
        /// The query, with its ID (chosen before the write, so every replica applies the same).
        query: PreparedQuery,
        /// Whether this is a create rather than an update.
        create: bool,
    },
    /// Deletes a prepared query.
    DeleteQuery {
        /// Query ID.
        id: String,
    },
    /// Adds or replaces one check as given: node-level, or of an existing instance on its node
    /// (`found: false` when that instance does not exist).
    SetCheck {
        /// The check.
        check: Check,
    },
    /// Removes one check.
    DeregisterCheck {
        /// Node the check is on.
        node: String,
        /// Check ID.
        check_id: String,
    },
    /// Removes a node with every instance and check on it.
    DeregisterNode {
        /// The node.
        node: String,
    },
    /// Applies `command` only if the instance `node`/`id` is then of `service` (`None`: absent),
    /// as the ACL check that allowed the write saw it. The check reads a view and the write
    /// commits later: without the guard, an instance re-registered meanwhile under a service
    /// the token may not write would be replaced or removed by it. Otherwise nothing changes
    /// and the outcome says `guard_failed`.
    Guarded {
        /// Node of the instance the check looked at.
        node: String,
        /// Its ID.
        id: String,
        /// Its service then (`None`: it did not exist).
        service: Option<String>,
        /// The write itself.
        command: Box<Command>,
    },
    /// Writes this DC's record of an API token (a tombstone deletes it), stamped by the writer.
    /// Taken only if later than the record it replaces and within the DC's cap of records;
    /// otherwise nothing changes and the outcome says `found: false`.
    SetToken {
        /// The record.
        token: TokenRecord,
    },
    /// Writes this DC's record of an intention (a tombstone deletes it), as `SetToken` does a
    /// token's.
    SetIntention {
        /// The record, keyed `source/destination`.
        intention: IntentionRecord,
    },
    /// Sets the DC's mesh CA, made by its leader: taken only if the DC has none yet in that trust
    /// domain (the first wins), otherwise `found: false`.
    SetMeshCa {
        /// The CA, key included.
        ca: Box<MeshCa>,
    },
    /// Publishes the DC's next mesh root (`DcState::prepare_mesh_rotation`): trusted everywhere
    /// from now on, signing nothing until the rotation is activated.
    PrepareMeshRotation {
        /// The next CA, key included.
        next: Box<MeshCa>,
        /// When it was published (the leader's clock), ms since the Unix epoch.
        now_ms: u64,
    },
    /// Makes the next mesh root the active one and retires the old one, trusted until
    /// `retire_until_ms` (`DcState::activate_mesh_rotation`).
    ActivateMeshRotation {
        /// When the retired root's last leaf has expired, ms since the Unix epoch.
        retire_until_ms: u64,
    },
    /// Removes this DC's token and intention records that can never be in force again
    /// (`meridian_topology::lww::prunable`), each only if it is still the record with that
    /// stamp.
    Prune {
        /// Accessor IDs and the stamps of the token records to remove.
        #[serde(default)]
        tokens: Vec<(String, Stamp)>,
        /// Keys and the stamps of the intention records to remove.
        #[serde(default)]
        intentions: Vec<(String, Stamp)>,
    },
    /// Replaces the datacenter's whole state with a backup's (`PUT /v1/snapshot`): every server
    /// applies the same entry, so every one ends equal. Every entry is stamped with the index
    /// of this command, so that indexes only move forward.
    Restore {
        /// The state to restore.
        catalog: Box<DcSnapshot>,
    },
}

impl Command {
    /// A cheap estimate of the command's encoded size, to bound batches.
    pub fn approx_size(&self) -> usize {
        const FIXED: usize = 64;
        let map = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
        };
        FIXED
            + match self {
                Command::RegisterNode { node } => {
                    node.name.len() + node.address.len() + map(&node.meta)
                }
                Command::Register { instance, checks } => {
                    instance.id.len()
                        + instance.service.len()
                        + instance.node.len()
                        + instance.address.len()
                        + instance.tags.iter().map(|t| t.len() + 4).sum::<usize>()
                        + map(&instance.meta)
                        + checks
                            .iter()
                            .map(|c| {
                                FIXED
                                    + c.id.len()
                                    + c.name.len()
                                    + c.output.len()
                                    + c.notes.len()
                                    + 128
                            })
                            .sum::<usize>()
                }
                Command::Deregister { node, id } => node.len() + id.len(),
                Command::SetCheck { check: c } => {
                    FIXED
                        + c.id.len()
                        + c.name.len()
                        + c.node.len()
                        + c.service_id.len()
                        + c.output.len()
                        + c.notes.len()
                        + 128
                }
                Command::DeregisterCheck { node, check_id } => node.len() + check_id.len(),
                Command::DeregisterNode { node } => node.len(),
                // Always alone in its entry.
                Command::Restore { .. } => usize::MAX / 2,
                Command::SetQuery { query, .. } => {
                    let svc = &query.service;
                    query.id.len()
                        + query.name.len()
                        + svc.service.len()
                        + svc.tags.iter().map(|t| t.len() + 4).sum::<usize>()
                        + svc
                            .failover
                            .datacenters
                            .iter()
                            .map(|d| d.len() + 4)
                            .sum::<usize>()
                }
                Command::DeleteQuery { id } => id.len(),
                Command::Prune { tokens, intentions } => tokens
                    .iter()
                    .chain(intentions)
                    .map(|(a, s)| a.len() + s.origin.len() + 16)
                    .sum::<usize>(),
                Command::SetMeshCa { ca } | Command::PrepareMeshRotation { next: ca, .. } => {
                    ca.root.cert_pem.len() + ca.key.0.len() + ca.root.trust_domain.len()
                }
                Command::ActivateMeshRotation { .. } => FIXED,
                Command::SetIntention { intention } => {
                    intention.key.len()
                        + intention.record.stamp.origin.len()
                        + intention.record.value.as_ref().map_or(0, |i| {
                            FIXED
                                + i.description.len()
                                + i.meta
                                    .iter()
                                    .map(|(k, v)| k.len() + v.len() + 8)
                                    .sum::<usize>()
                        })
                }
                Command::SetToken { token } => {
                    token.key.len()
                        + token.record.stamp.origin.len()
                        + token.record.value.as_ref().map_or(0, |t| {
                            FIXED
                                + t.description.len()
                                + t.services.iter().map(|s| s.len() + 4).sum::<usize>()
                        })
                }
                Command::Guarded {
                    node,
                    id,
                    service,
                    command,
                } => {
                    node.len()
                        + id.len()
                        + service.as_ref().map_or(0, String::len)
                        + command.approx_size()
                }
                Command::UpdateCheck {
                    node,
                    check_id,
                    output,
                    ..
                } => node.len() + check_id.len() + output.len(),
            }
    }
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
    /// A [`Command::Guarded`] found the instance changed since its check: nothing was applied.
    #[serde(default)]
    pub guard_failed: bool,
    /// An earlier attempt of this write reached a leader that went away before answering, so it
    /// may have been applied then: `found == false` may be this write's own earlier effect (a
    /// deregistration that already removed what it names). Set by the node that retried.
    #[serde(default)]
    pub retried_unknown: bool,
}

impl WriteOutcome {
    /// The write found nothing to act on, for certain: not found, and no earlier attempt of it
    /// may have removed what it named. Deletes answer 404 only then.
    pub fn surely_missing(&self) -> bool {
        !self.found && !self.retried_unknown
    }
}

/// What one Raft entry carries: the commands that reached the leader together, applied in order.
/// Coalescing concurrent writes into one entry is what lets a 3-node datacenter acknowledge
/// thousands of fsynced writes per second: Raft's per-entry work and the fsync are paid per batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The commands, in the order they are applied. Shared: the log store keeps the entries it
    /// appended last for the reads that follow (replication, apply), and a clone of an entry is
    /// then a reference count, not a copy of every command.
    pub commands: Arc<Vec<Command>>,
}

/// The outcome of each command of a [`Batch`], in the same order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// One outcome per command.
    pub outcomes: Vec<WriteOutcome>,
}
