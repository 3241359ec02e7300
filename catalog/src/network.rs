//! The client side of Raft RPC: openraft's network traits over tonic, one lazy channel per peer.
//!
//! A leader's AppendEntries to a follower go over one bidirectional stream per replication
//! session rather than a unary call each: openraft sends them one at a time and waits for each
//! reply, and a unary call costs an HTTP/2 stream of its own (headers both ways, trailers, a
//! task on each side), a Raft entry four of them on a 3-node DC.

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
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

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
            stream: None,
            unary_only: false,
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerClient {
    target: u64,
    node: BasicNode,
    client: Result<RaftClient<Channel>, String>,
    /// The AppendEntries stream of this replication session, once opened.
    stream: Option<AppendStream>,
    /// The peer answered the stream call with Unimplemented (an older node): AppendEntries go
    /// unary until the peer is next unreachable (it may come back upgraded).
    unary_only: bool,
}

/// One open `AppendEntriesStream` call: a request sent, its reply is the next message.
struct AppendStream {
    requests: mpsc::Sender<RaftPayload>,
    replies: tonic::Streaming<RaftPayload>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, E>>;

/// The Raft error for a failed gRPC call.
fn status_error<E: std::error::Error>(status: &tonic::Status) -> RPCError<u64, BasicNode, E> {
    match status.code() {
        // The peer is down or not listening: let openraft back off.
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

/// Why an AppendEntries over the stream failed.
enum StreamFailure {
    /// The peer does not know the stream call; the request is handed back for a unary call.
    Unimplemented(Vec<u8>),
    /// The call failed; the stream is gone.
    Failed(tonic::Status),
}

impl PeerClient {
    /// Decodes a reply's payload.
    // The error is openraft's, which the trait's methods return as it is.
    #[allow(clippy::result_large_err)]
    fn reply<Resp, E>(&self, json: &[u8]) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, E> =
            serde_json::from_slice(json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

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
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.unary(which, json, timeout).await
    }

    async fn unary<Resp, E>(
        &mut self,
        which: Rpc,
        json: Vec<u8>,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.client.as_mut().map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone())))
        })?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(timeout);
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| status_error(&status))?;
        self.reply(&reply.into_inner().json)
    }

    /// Sends one AppendEntries over the session's stream, opening it first if need be: the
    /// reply's payload. The stream is kept only when the reply came back on it: after any
    /// failure, or when the caller gives up waiting, it is dropped, so that no reply can be read
    /// against a later request.
    async fn over_stream(&mut self, json: Vec<u8>) -> Result<Vec<u8>, StreamFailure> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => match self.open_stream().await {
                Ok(stream) => stream,
                // Nothing was sent: the request goes back for a unary call.
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    return Err(StreamFailure::Unimplemented(json));
                }
                Err(status) => return Err(StreamFailure::Failed(status)),
            },
        };
        let reply = match stream.requests.send(RaftPayload { json }).await {
            Ok(()) => stream.replies.message().await,
            Err(_) => Err(tonic::Status::unavailable(
                "the stream's request body ended",
            )),
        };
        match reply {
            Ok(Some(reply)) => {
                self.stream = Some(stream);
                Ok(reply.json)
            }
            Ok(None) => Err(StreamFailure::Failed(tonic::Status::unavailable(
                "the peer ended the stream",
            ))),
            Err(status) => Err(StreamFailure::Failed(status)),
        }
    }

    /// Opens the `AppendEntriesStream` call.
    async fn open_stream(&mut self) -> Result<AppendStream, tonic::Status> {
        let client = self
            .client
            .as_mut()
            .map_err(|e| tonic::Status::unavailable(format!("no channel to the peer: {e}")))?;
        // One request at a time: the next is sent only once this one is answered.
        let (requests, rx) = mpsc::channel(1);
        let body =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let replies = client.append_entries_stream(body).await?.into_inner();
        Ok(AppendStream { requests, replies })
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// Over the session's stream; unary to a peer that does not know it.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        let timeout = option.hard_ttl();
        let json =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if self.unary_only {
            let result = self.unary(Rpc::Append, json, timeout).await;
            if matches!(result, Err(RPCError::Unreachable(_))) {
                self.unary_only = false;
            }
            return result;
        }
        match tokio::time::timeout(timeout, self.over_stream(json)).await {
            Ok(Ok(reply)) => self.reply(&reply),
            Ok(Err(StreamFailure::Unimplemented(json))) => {
                debug!(
                    target = self.target,
                    "peer has no AppendEntries stream; sending unary"
                );
                self.unary_only = true;
                self.unary(Rpc::Append, json, timeout).await
            }
            Ok(Err(StreamFailure::Failed(status))) => Err(status_error(&status)),
            // The stream went with the abandoned call: a reply that still comes cannot answer
            // the next request.
            Err(_) => Err(RPCError::Network(NetworkError::new(&std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("AppendEntries took longer than {timeout:?}"),
            )))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protos::catalog::raft_server::{Raft as RaftRpc, RaftServer};
    use openraft::Vote;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tonic::{Request, Response, Status, Streaming};

    /// How the test peer answers the stream call.
    #[derive(Clone, Copy, PartialEq)]
    enum Peer {
        /// A node of a version before the stream: Unimplemented.
        Old,
        /// Answers every request on the stream.
        Streams,
        /// Opens the stream but never answers its first stream's first request.
        StallsFirst,
    }

    /// A Raft peer that acknowledges every AppendEntries and counts how each came.
    struct TestPeer {
        kind: Peer,
        unary: Arc<AtomicUsize>,
        streams: Arc<AtomicUsize>,
        streamed: Arc<AtomicUsize>,
    }

    fn success() -> Vec<u8> {
        let ok: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            Ok(AppendEntriesResponse::Success);
        serde_json::to_vec(&ok).expect("encodes")
    }

    type Replies = Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    #[tonic::async_trait]
    impl RaftRpc for TestPeer {
        async fn append_entries(
            &self,
            _request: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            self.unary.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(RaftPayload { json: success() }))
        }

        type AppendEntriesStreamStream = Replies;

        async fn append_entries_stream(
            &self,
            request: Request<Streaming<RaftPayload>>,
        ) -> Result<Response<Replies>, Status> {
            if self.kind == Peer::Old {
                return Err(Status::unimplemented("unknown method AppendEntriesStream"));
            }
            let nth = self.streams.fetch_add(1, Ordering::SeqCst);
            let stall = self.kind == Peer::StallsFirst && nth == 0;
            let streamed = self.streamed.clone();
            let replies = futures::stream::unfold(request.into_inner(), move |mut rx| {
                let streamed = streamed.clone();
                async move {
                    let _request = rx.message().await.ok()??;
                    if stall {
                        futures::future::pending::<()>().await;
                    }
                    streamed.fetch_add(1, Ordering::SeqCst);
                    Some((Ok(RaftPayload { json: success() }), rx))
                }
            });
            Ok(Response::new(Box::pin(replies)))
        }

        async fn vote(
            &self,
            _request: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            _request: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// Counts of (unary calls, streams opened, requests answered on streams).
    struct Counts(Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>);

    impl Counts {
        fn get(&self) -> (usize, usize, usize) {
            (
                self.0.load(Ordering::SeqCst),
                self.1.load(Ordering::SeqCst),
                self.2.load(Ordering::SeqCst),
            )
        }
    }

    /// Starts a test peer on loopback and a client to it, as openraft's factory makes one.
    async fn peer(kind: Peer) -> (PeerClient, Counts) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let counts = Counts(Default::default(), Default::default(), Default::default());
        let server = TestPeer {
            kind,
            unary: counts.0.clone(),
            streams: counts.1.clone(),
            streamed: counts.2.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(server))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let client = NetworkFactory::default()
            .new_client(2, &BasicNode { addr })
            .await;
        (client, counts)
    }

    fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    async fn append(client: &mut PeerClient, ttl: Duration) -> bool {
        matches!(
            client
                .append_entries(heartbeat(), RPCOption::new(ttl))
                .await,
            Ok(AppendEntriesResponse::Success)
        )
    }

    #[tokio::test]
    async fn append_entries_go_over_one_stream() {
        let (mut client, counts) = peer(Peer::Streams).await;
        for _ in 0..3 {
            assert!(append(&mut client, Duration::from_secs(5)).await);
        }
        assert_eq!(counts.get(), (0, 1, 3), "(unary, streams, streamed)");
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_calls() {
        let (mut client, counts) = peer(Peer::Old).await;
        for _ in 0..3 {
            assert!(append(&mut client, Duration::from_secs(5)).await);
        }
        // Asked once; every request answered by a unary call.
        assert_eq!(counts.get(), (3, 0, 0), "(unary, streams, streamed)");
        assert!(client.unary_only);
    }

    #[tokio::test]
    async fn an_unanswered_request_fails_in_time_and_the_next_one_opens_a_new_stream() {
        let (mut client, counts) = peer(Peer::StallsFirst).await;
        let started = tokio::time::Instant::now();
        assert!(!append(&mut client, Duration::from_millis(300)).await);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "failed at the TTL"
        );
        // A late answer on the old stream could not be taken for this one's.
        assert!(append(&mut client, Duration::from_secs(5)).await);
        assert!(append(&mut client, Duration::from_secs(5)).await);
        assert_eq!(counts.get(), (0, 2, 2), "(unary, streams, streamed)");
    }
}
