//! Coalesces concurrent writes into one Raft entry on the leader.
//!
//! Every write that reaches the leader (from its own HTTP API or forwarded by a follower) is queued
//! here and committed in batches ([`crate::coalesce`]): Raft's per-entry work and the fsync are
//! paid once per batch rather than once per write, while a lone write still goes out at once.

use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::coalesce::{self, Limits};
use crate::command::{Batch, Command, WriteOutcome};
use crate::counters::CatalogCounters;
use crate::types::Raft;

/// Most commands in one entry.
const MAX_BATCH_COMMANDS: usize = 256;
/// Most bytes (estimated) in one entry; a single larger command still goes alone.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Writes queued for the proposer before callers wait (backpressure).
const QUEUE: usize = 4096;
/// Batches being committed at once. One: the writes arriving while it commits form the next
/// entry, and Raft already pipelines the entry's replication with its fsync; with two in flight
/// the entries were about half as large (16.7 writes each against 27.5 at 64 clients) for no
/// more throughput.
const MAX_INFLIGHT: usize = 1;

/// Longest a batch waits under load to be as large as the one before it (see
/// [`crate::coalesce`]); tokio's timer rounds it up to its millisecond tick.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_micros(500);
/// Smallest batch after which the next one may linger: below it, writes are too few for an entry's
/// fixed cost to matter against their latency.
pub(crate) const LINGER_FROM: usize = 8;

/// Why a proposal was not applied.
#[derive(Debug, Clone)]
pub(crate) enum ProposeError {
    /// This node does not lead (any more); the caller should find the leader.
    NotLeader(Option<String>),
    /// Raft refused the entry for a reason retrying does not fix.
    Rejected(String),
    /// Raft has stopped.
    Shutdown,
}

type Reply = oneshot::Sender<Result<WriteOutcome, ProposeError>>;

/// Handle to the proposer task of one node.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Proposer {
    /// Starts the proposer task for `raft`.
    pub(crate) fn start(
        raft: Raft,
        counters: Arc<CatalogCounters>,
    ) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Proposer { tx }, tokio::spawn(run(raft, rx, counters)))
    }

    /// Proposes `cmd` and waits until it is committed and applied.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<WriteOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .await
            .map_err(|_| ProposeError::Shutdown)?;
        rx.await.map_err(|_| ProposeError::Shutdown)?
    }
}

async fn run(raft: Raft, rx: mpsc::Receiver<(Command, Reply)>, counters: Arc<CatalogCounters>) {
    let limits = Limits {
        inflight: MAX_INFLIGHT,
        items: MAX_BATCH_COMMANDS,
        bytes: MAX_BATCH_BYTES,
        linger: LINGER,
        linger_from: LINGER_FROM,
    };
    coalesce::run(
        rx,
        limits,
        |(cmd, _)| cmd.approx_size(),
        |batch| {
            CatalogCounters::inc(&counters.batches);
            counters
                .batched_writes
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            commit(raft.clone(), batch)
        },
    )
    .await;
}

async fn commit(raft: Raft, batch: Vec<(Command, Reply)>) {
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
    let n = commands.len();
    let result = raft
        .client_write(Batch {
            commands: Arc::new(commands),
        })
        .await;
    match result {
        Ok(resp) if resp.data.outcomes.len() == n => {
            for (reply, outcome) in replies.into_iter().zip(resp.data.outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(resp) => {
            let err = ProposeError::Rejected(format!(
                "applied {} outcomes for {n} commands",
                resp.data.outcomes.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
        Err(e) => {
            let err = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ProposeError::NotLeader(f.leader_node.map(|n| n.addr))
                }
                RaftError::APIError(e) => ProposeError::Rejected(e.to_string()),
                RaftError::Fatal(_) => ProposeError::Shutdown,
            };
            debug!(commands = n, error = ?err, "batch not committed");
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
