//! The server side of LAN RPC: Raft messages from peers and writes forwarded by followers.

use meridian_protos::catalog::catalog_server::{Catalog as CatalogRpc, CatalogServer};
use meridian_protos::catalog::forward_reply::Result as ForwardResult;
use meridian_protos::catalog::raft_server::{Raft as RaftRpc, RaftServer};
use meridian_protos::catalog::{ForwardReply, ForwardRequest, RaftPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::command::Command;
use crate::network::MAX_RPC_MESSAGE;
use crate::proposer::{ProposeError, Proposer};
use crate::types::Raft;

/// Both gRPC services of a catalog node, ready to be added to a tonic server.
pub(crate) fn services(
    raft: Raft,
    proposer: Proposer,
) -> (RaftServer<RaftService>, CatalogServer<ForwardService>) {
    let r = RaftServer::new(RaftService { raft })
        .max_decoding_message_size(MAX_RPC_MESSAGE)
        .max_encoding_message_size(MAX_RPC_MESSAGE);
    let c = CatalogServer::new(ForwardService { proposer })
        .max_decoding_message_size(MAX_RPC_MESSAGE)
        .max_encoding_message_size(MAX_RPC_MESSAGE);
    (r, c)
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| {
        warn!(rpc = what, error = %e, "rejected a malformed rpc payload");
        Status::invalid_argument(format!("malformed {what} payload: {e}"))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

/// Raft messages from peers, handed to openraft.
pub(crate) struct RaftService {
    raft: Raft,
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode("append_entries", &request.into_inner().json)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode("vote", &request.into_inner().json)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode("install_snapshot", &request.into_inner().json)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

/// Writes forwarded by followers; applied here if this node leads.
pub(crate) struct ForwardService {
    proposer: Proposer,
}

#[tonic::async_trait]
impl CatalogRpc for ForwardService {
    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let cmd: Command = decode("forward", &request.into_inner().command)?;
        let result = match self.proposer.propose(cmd).await {
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
        };
        Ok(Response::new(ForwardReply {
            result: Some(result),
        }))
    }
}
