//! The server side of LAN RPC: Raft messages from peers, writes forwarded by followers, the read
//! index of their linearizable reads, and membership changes they forward.

use meridian_protos::catalog::catalog_server::{Catalog as CatalogRpc, CatalogServer};
use meridian_protos::catalog::forward_reply::Result as ForwardResult;
use meridian_protos::catalog::membership_reply::Result as MembershipResult;
use meridian_protos::catalog::membership_request::Change;
use meridian_protos::catalog::raft_server::{Raft as RaftRpc, RaftServer};
use meridian_protos::catalog::read_index_reply::Result as ReadIndexResult;
use meridian_protos::catalog::{
    ForwardBatchReply, ForwardBatchRequest, ForwardReply, ForwardRequest, MembershipReply,
    MembershipRequest, RaftPayload, ReadIndexReply, ReadIndexRequest,
};
use openraft::error::{CheckIsLeaderError, RaftError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, instrument, warn};

use std::sync::Arc;
use std::time::Duration;

use crate::command::{Command, WriteOutcome};
use crate::counters::CatalogCounters;
use crate::membership::{self, MembershipChange, Step};
use crate::network::MAX_RPC_MESSAGE;
use crate::proposer::{ProposeError, Proposer};
use crate::types::Raft;

/// Both gRPC services of a catalog node, ready to be added to a tonic server.
pub(crate) fn services(
    raft: Raft,
    proposer: Proposer,
    counters: Arc<CatalogCounters>,
) -> (RaftServer<RaftService>, CatalogServer<ForwardService>) {
    let r = RaftServer::new(RaftService {
        raft: raft.clone(),
        counters: counters.clone(),
    })
    .max_decoding_message_size(MAX_RPC_MESSAGE)
    .max_encoding_message_size(MAX_RPC_MESSAGE);
    let c = CatalogServer::new(ForwardService {
        proposer,
        raft,
        counters,
    })
    .max_decoding_message_size(MAX_RPC_MESSAGE)
    .max_encoding_message_size(MAX_RPC_MESSAGE);
    (r, c)
}

/// Decodes a payload; a malformed one is logged and counted here, the one place for that event.
fn decode<T: DeserializeOwned>(
    counters: &CatalogCounters,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| {
        CatalogCounters::inc(&counters.rpc_rejected);
        warn!(rpc = what, error = %e, "rejected a malformed rpc payload");
        Status::invalid_argument(format!("malformed {what} payload: {e}"))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

/// Most writes one forwarded batch may carry (a follower sends at most the proposer's batch).
const MAX_FORWARD_BATCH: usize = 1024;

/// The reply to one forwarded write; `Err` when this node is stopping and the follower should
/// try another.
fn forward_result(result: Result<WriteOutcome, ProposeError>) -> Result<ForwardResult, Status> {
    Ok(match result {
        Ok(outcome) => match serde_json::to_vec(&outcome) {
            Ok(bytes) => ForwardResult::Outcome(bytes),
            Err(e) => ForwardResult::Error(format!("cannot encode outcome: {e}")),
        },
        Err(ProposeError::NotLeader(leader)) => {
            debug!(leader = ?leader, "forwarded write reached a non-leader");
            ForwardResult::NotLeader(leader.unwrap_or_default())
        }
        Err(ProposeError::Rejected(e)) => ForwardResult::Error(e),
        // Raft stopped: the caller should try another node.
        Err(ProposeError::Shutdown) => {
            return Err(Status::unavailable("this node is shutting down"));
        }
    })
}

/// Raft messages from peers, handed to openraft.
#[derive(Clone)]
pub(crate) struct RaftService {
    raft: Raft,
    counters: Arc<CatalogCounters>,
}

impl RaftService {
    /// Hands one AppendEntries to openraft: the reply's payload.
    async fn append(&self, json: &[u8]) -> Result<RaftPayload, Status> {
        let rpc = decode(&self.counters, "append_entries", json)?;
        self.counters.heard_from_leader();
        encode(&self.raft.append_entries(rpc).await).map(Response::into_inner)
    }
}

/// The replies of an [`RaftRpc::append_entries_stream`] call.
type AppendReplies =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    #[instrument(level = "debug", skip_all, name = "raft_append")]
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.append(&request.into_inner().json)
            .await
            .map(Response::new)
    }

    type AppendEntriesStreamStream = AppendReplies;

    /// Each request is handled when the reply stream is polled, one at a time in order, so the
    /// call costs one task (hyper's for the stream) and a request's reply is the next message.
    /// A malformed request ends the call with its status; the leader opens another.
    #[instrument(level = "debug", skip_all, name = "raft_append_stream")]
    async fn append_entries_stream(
        &self,
        request: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<AppendReplies>, Status> {
        let this = self.clone();
        let requests = request.into_inner();
        let replies = futures::stream::unfold(
            (this, requests, false),
            |(this, mut requests, failed)| async move {
                if failed {
                    return None;
                }
                let reply = match requests.message().await {
                    Ok(Some(req)) => {
                        let span = tracing::debug_span!("raft_append");
                        this.append(&req.json).instrument(span).await
                    }
                    // The leader ended its session.
                    Ok(None) => return None,
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                Some((reply, (this, requests, failed)))
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }

    #[instrument(level = "debug", skip_all, name = "raft_vote")]
    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&self.counters, "vote", &request.into_inner().json)?;
        encode(&self.raft.vote(rpc).await)
    }

    #[instrument(level = "debug", skip_all, name = "raft_snapshot")]
    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(
            &self.counters,
            "install_snapshot",
            &request.into_inner().json,
        )?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

/// Writes forwarded by followers, applied here if this node leads, and their read indexes.
pub(crate) struct ForwardService {
    proposer: Proposer,
    raft: Raft,
    counters: Arc<CatalogCounters>,
}

#[tonic::async_trait]
impl CatalogRpc for ForwardService {
    #[instrument(level = "debug", skip_all, name = "forwarded_write")]
    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let cmd: Command = decode(&self.counters, "forward", &request.into_inner().command)?;
        let result = forward_result(self.proposer.propose(cmd).await)?;
        Ok(Response::new(ForwardReply {
            result: Some(result),
        }))
    }

    #[instrument(level = "debug", skip_all, name = "forwarded_writes", fields(writes))]
    async fn forward_batch(
        &self,
        request: Request<ForwardBatchRequest>,
    ) -> Result<Response<ForwardBatchReply>, Status> {
        let commands = request.into_inner().commands;
        tracing::Span::current().record("writes", commands.len());
        if commands.len() > MAX_FORWARD_BATCH {
            CatalogCounters::inc(&self.counters.rpc_rejected);
            warn!(
                writes = commands.len(),
                "rejected a forwarded batch over the limit"
            );
            return Err(Status::invalid_argument(format!(
                "a forwarded batch holds at most {MAX_FORWARD_BATCH} writes, not {}",
                commands.len()
            )));
        }
        // Proposed together, so that they join the proposer's queue as one run and, under load,
        // the same Raft entry.
        let results = futures::future::join_all(commands.iter().map(|bytes| async move {
            match decode::<Command>(&self.counters, "forward_batch", bytes) {
                Ok(cmd) => forward_result(self.proposer.propose(cmd).await),
                // One malformed command fails alone.
                Err(status) => Ok(ForwardResult::Error(status.message().to_owned())),
            }
        }))
        .await;
        let replies = results
            .into_iter()
            .map(|r| {
                r.map(|result| ForwardReply {
                    result: Some(result),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ForwardBatchReply { replies }))
    }

    #[instrument(level = "debug", skip_all, name = "read_index")]
    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        // Confirms leadership with a quorum (heartbeats); the follower waits for the index
        // itself, so the leader does not wait for its own state machine here.
        let result = match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => ReadIndexResult::Index(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                ReadIndexResult::NotLeader(f.leader_node.map(|n| n.addr).unwrap_or_default())
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                return Err(Status::unavailable(e.to_string()));
            }
            Err(RaftError::Fatal(e)) => return Err(Status::unavailable(e.to_string())),
        };
        Ok(Response::new(ReadIndexReply {
            result: Some(result),
        }))
    }

    #[instrument(level = "info", skip_all, name = "membership_change")]
    async fn change_membership(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let request = request.into_inner();
        let change = match request.change {
            Some(Change::Add(a)) if a.id != 0 && !a.addr.is_empty() && a.addr.len() <= 256 => {
                MembershipChange::Add {
                    id: a.id,
                    addr: a.addr,
                }
            }
            Some(Change::Remove(id)) if id != 0 => MembershipChange::Remove { id },
            _ => {
                CatalogCounters::inc(&self.counters.rpc_rejected);
                warn!("rejected a malformed membership change");
                return Err(Status::invalid_argument(
                    "a membership change names a non-zero id (and, to add, an address)",
                ));
            }
        };
        let catch_up = Duration::from_millis(request.catch_up_ms);
        let result = match membership::apply(&self.raft, &change, catch_up).await {
            Ok(index) => MembershipResult::Index(index),
            Err(Step::NotLeader(leader)) => MembershipResult::NotLeader(leader.unwrap_or_default()),
            Err(Step::Retry(e)) => MembershipResult::Retry(e),
            Err(Step::Refused(e)) => MembershipResult::Refused(e),
            Err(Step::Stopped) => return Err(Status::unavailable("raft has stopped here")),
        };
        Ok(Response::new(MembershipReply {
            result: Some(result),
        }))
    }
}
