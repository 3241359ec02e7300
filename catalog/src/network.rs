//! The client side of Raft RPC: openraft's network traits over tonic, one lazy channel per peer.

use std::time::Duration;

use meridian_protos::catalog::RaftPayload;
use meridian_protos::catalog::raft_client::RaftClient;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::tls::RpcTls;
use crate::types::TypeConfig;

/// Largest gRPC message a catalog node sends or accepts: an AppendEntries of 31 batches of
/// 256 KiB and a restore entry ([`crate::MAX_BACKUP_BYTES`]) fits; snapshot chunks are smaller.
pub(crate) const MAX_RPC_MESSAGE: usize = 32 * 1024 * 1024;

/// Opens a lazily-connecting channel to a peer's rpc address, over mutual TLS when `tls` is set.
pub(crate) fn channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&RpcTls>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let Some(tls) = tls else {
        return Ok(endpoint.connect_lazy());
    };
    let (tls, target) = (tls.clone(), addr.to_owned());
    // The connector dials `addr` itself; the URI above only names the authority.
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (tls, target) = (tls.clone(), target.clone());
        async move {
            let stream = tokio::time::timeout(connect_timeout, crate::tls::connect(&tls, &target))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out")
                })??;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Creates Raft clients for peers.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    /// Mutual TLS to the peers, when the rpc port runs it.
    pub(crate) tls: Option<RpcTls>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        let client = channel(&node.addr, Duration::from_secs(2), self.tls.as_ref()).map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(MAX_RPC_MESSAGE)
                .max_encoding_message_size(MAX_RPC_MESSAGE)
        });
        PeerClient {
            target,
            node: node.clone(),
            client: client.map_err(|e| e.to_string()),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerClient {
    target: u64,
    node: BasicNode,
    client: Result<RaftClient<Channel>, String>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e.clone()),
                )));
            }
        };
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(timeout);
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            // The peer is down or not listening: let openraft back off.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, E> = serde_json::from_slice(&reply.into_inner().json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}
