//! The relay: how a server reaches another DC's server's own listeners when only the gateways
//! face the WAN. The far end is the `Relay` gRPC service on the WAN port (mutual TLS, servers
//! only), which pipes bytes to the node's HTTP API or to a gateway of its DC, and asks its DNS
//! server one query at a time; it never connects anywhere the caller names. The near end,
//! [`Forward`], stands loopback listeners in for those three, so that a client written for
//! direct addresses (the drill's prober) runs unchanged, each of its connections one stream of
//! one federation connection through the gateways.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meridian_identity::{Identity, Role};
use meridian_protos::federation as pb;
use meridian_protos::federation::relay_client::RelayClient;
use meridian_protos::federation::relay_server::{Relay, RelayServer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::counters::FederationCounters;
use crate::limits::StreamCap;

/// Bytes carried by one pipe message.
const CHUNK: usize = 16 << 10;
/// The largest message the relay takes (a chunk and its framing).
const MAX_MESSAGE: usize = CHUNK + 1024;
/// The largest DNS message relayed (EDNS answers of the drill's probes fit).
const MAX_DNS: usize = 4096;
/// Bound on the caller's first message (the target) and on connecting to the target.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// A pipe with no byte in either direction for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest life of a pipe (a drill lasts at most ten minutes, its connections far less).
const MAX_PIPE_LIFE: Duration = Duration::from_secs(15 * 60);
/// Bound on one relayed DNS exchange.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pipes one caller certificate may hold open at once.
const MAX_PIPES_PER_IDENTITY: usize = 32;
/// DNS queries relayed at once, for every caller together.
const MAX_DNS_IN_FLIGHT: usize = 64;
/// Connections one [`Forward`] carries at once (more wait in the kernel's backlog).
const MAX_FORWARDED: usize = 32;

/// This node's listeners the relay reaches (set once they are bound).
#[derive(Clone, Debug, Default)]
pub struct RelayTargets {
    /// The HTTP API.
    pub http: Option<SocketAddr>,
    /// The DNS server (UDP).
    pub dns: Option<SocketAddr>,
    /// The node's own gateway.
    pub gateway: Option<SocketAddr>,
}

/// The `Relay` gRPC service of one server.
pub struct RelayService {
    /// Where pipes and queries go; empty until the node has bound its listeners.
    pub targets: Arc<ArcSwap<RelayTargets>>,
    /// This DC's gateways (the node's own first) with the gateway transport: where a gateway
    /// pipe goes on a server that runs none.
    pub local_gateways: Option<Arc<ArcSwap<Vec<SocketAddr>>>>,
    /// Pipes open per caller certificate.
    pub pipes: StreamCap,
    /// DNS queries in flight.
    pub dns_slots: Arc<Semaphore>,
    /// Refusals and relayed connections are counted here.
    pub counters: Arc<FederationCounters>,
    /// Set at shutdown: pipes end.
    pub stop: watch::Receiver<bool>,
}

impl RelayService {
    /// The service for the WAN port, with its caps.
    pub fn new(
        targets: Arc<ArcSwap<RelayTargets>>,
        local_gateways: Option<Arc<ArcSwap<Vec<SocketAddr>>>>,
        counters: Arc<FederationCounters>,
        stop: watch::Receiver<bool>,
    ) -> RelayService {
        RelayService {
            targets,
            local_gateways,
            pipes: StreamCap::new(MAX_PIPES_PER_IDENTITY),
            dns_slots: Arc::new(Semaphore::new(MAX_DNS_IN_FLIGHT)),
            counters,
            stop,
        }
    }

    /// The tonic server, with its message size bound.
    pub fn into_server(self) -> RelayServer<RelayService> {
        RelayServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The caller, if it is a server (of any DC): gateway-only nodes relay nothing.
    fn caller<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        match request.extensions().get::<Identity>() {
            Some(id) if id.role == Role::Server => Ok(id.clone()),
            Some(_) => {
                self.counters.refuse("relay_not_server");
                Err(Status::permission_denied(
                    "only a server certificate may use the relay",
                ))
            }
            None => {
                self.counters.refuse("no_identity");
                Err(Status::unauthenticated("no client certificate"))
            }
        }
    }

    /// Where a pipe to `target` goes.
    fn address(&self, target: pb::PipeTarget) -> Option<SocketAddr> {
        let targets = self.targets.load();
        match target {
            pb::PipeTarget::Http => targets.http,
            pb::PipeTarget::Gateway => targets.gateway.or_else(|| {
                self.local_gateways
                    .as_ref()
                    .and_then(|g| g.load().first().copied())
            }),
            pb::PipeTarget::Unspecified => None,
        }
    }
}

#[tonic::async_trait]
impl Relay for RelayService {
    type PipeStream = ReceiverStream<Result<pb::PipeChunk, Status>>;

    #[tracing::instrument(skip_all, fields(caller))]
    async fn pipe(
        &self,
        request: Request<Streaming<pb::PipeChunk>>,
    ) -> Result<Response<Self::PipeStream>, Status> {
        let caller = self.caller(&request)?;
        tracing::Span::current().record("caller", tracing::field::display(&caller));
        let permit = self.pipes.acquire(&caller).map_err(|over| {
            self.counters.refuse("relay_cap");
            Status::resource_exhausted(format!("at most {} relay pipes per certificate", over.max))
        })?;
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(OPEN_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Err(Status::invalid_argument("the pipe names no target")),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                self.counters.refuse("relay_slow_open");
                return Err(Status::deadline_exceeded("no target named in time"));
            }
        };
        let target = pb::PipeTarget::try_from(first.target).unwrap_or_default();
        let Some(addr) = self.address(target) else {
            self.counters.refuse("relay_no_target");
            return Err(Status::failed_precondition(format!(
                "this node has no {} to relay to",
                target.as_str_name()
            )));
        };
        let tcp = match tokio::time::timeout(OPEN_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.counters.relayed(target_label(target), "unreachable");
                return Err(Status::unavailable(format!("{addr}: {e}")));
            }
            Err(_) => {
                self.counters.relayed(target_label(target), "unreachable");
                return Err(Status::unavailable(format!("{addr}: connect timed out")));
            }
        };
        let _ = tcp.set_nodelay(true);
        self.counters.relayed(target_label(target), "open");
        let (tx, rx) = mpsc::channel(8);
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (r, mut w) = tcp.into_split();
            let up = async {
                if !first.data.is_empty() && w.write_all(&first.data).await.is_err() {
                    return;
                }
                loop {
                    match tokio::time::timeout(IDLE_TIMEOUT, inbound.message()).await {
                        Ok(Ok(Some(m))) => {
                            if w.write_all(&m.data).await.is_err() {
                                return;
                            }
                        }
                        // The caller is done sending: half-close, keep reading the answer.
                        Ok(Ok(None)) => {
                            let _ = w.shutdown().await;
                            return;
                        }
                        Ok(Err(_)) | Err(_) => return,
                    }
                }
            };
            let down = copy_to_stream(r, |data| {
                let tx = tx.clone();
                async move { tx.send(Ok(pb::PipeChunk { target: 0, data })).await.is_ok() }
            });
            tokio::select! {
                _ = tokio::time::timeout(MAX_PIPE_LIFE, async { tokio::join!(up, down) }) => {}
                () = crate::stopped(&mut stop) => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn dns(
        &self,
        request: Request<pb::DnsDatagram>,
    ) -> Result<Response<pb::DnsDatagram>, Status> {
        let caller = self.caller(&request)?;
        tracing::Span::current().record("caller", tracing::field::display(&caller));
        let query = request.into_inner().data;
        if query.len() < 12 || query.len() > MAX_DNS {
            self.counters.refuse("relay_bad_dns");
            return Err(Status::invalid_argument(format!(
                "a DNS query is 12 to {MAX_DNS} bytes, not {}",
                query.len()
            )));
        }
        let Some(server) = self.targets.load().dns else {
            self.counters.refuse("relay_no_target");
            return Err(Status::failed_precondition("this node has no DNS server"));
        };
        let Ok(_slot) = self.dns_slots.try_acquire() else {
            self.counters.refuse("relay_cap");
            return Err(Status::resource_exhausted("too many relayed DNS queries"));
        };
        match tokio::time::timeout(DNS_TIMEOUT, exchange(server, &query)).await {
            Ok(Ok(answer)) => {
                self.counters.relayed("dns", "answered");
                Ok(Response::new(pb::DnsDatagram { data: answer }))
            }
            Ok(Err(e)) => {
                self.counters.relayed("dns", "unreachable");
                Err(Status::unavailable(format!("{server}: {e}")))
            }
            Err(_) => {
                self.counters.relayed("dns", "timeout");
                Err(Status::deadline_exceeded(format!(
                    "{server}: no answer within {DNS_TIMEOUT:?}"
                )))
            }
        }
    }
}

/// The metric label of a pipe target.
fn target_label(t: pb::PipeTarget) -> &'static str {
    match t {
        pb::PipeTarget::Http => "http",
        pb::PipeTarget::Gateway => "gateway",
        pb::PipeTarget::Unspecified => "none",
    }
}

/// One UDP exchange with `server`: the datagram that answers `query` (same ID).
async fn exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_DNS];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Not our answer (a stray datagram): wait on; the caller's timeout bounds this.
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// Reads `r` in chunks and hands each to `send` until `r` ends, stays silent for
/// [`IDLE_TIMEOUT`], or `send` says the other side is gone.
async fn copy_to_stream<R, F, Fut>(mut r: R, send: F)
where
    R: AsyncRead + Unpin,
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        match tokio::time::timeout(IDLE_TIMEOUT, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if !send(buf[..n].to_vec()).await {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Loopback stand-ins for one remote server's HTTP API, DNS server and gateway, each reached
/// through the relay on one federation connection (through this DC's gateways). The listeners
/// close when it is dropped.
pub struct Forward {
    /// Stands in for the remote node's HTTP API.
    pub http: SocketAddr,
    /// Stands in for its DNS server (UDP).
    pub dns: SocketAddr,
    /// Stands in for its DC's gateway.
    pub gateway: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Forward {
    /// Opens the stand-ins on loopback, relaying over `channel` (a federation connection to a
    /// server of the remote DC).
    pub async fn open(channel: tonic::transport::Channel) -> std::io::Result<Forward> {
        let client = RelayClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let http = TcpListener::bind(loopback).await?;
        let gateway = TcpListener::bind(loopback).await?;
        let dns = Arc::new(UdpSocket::bind(loopback).await?);
        let addrs = (http.local_addr()?, dns.local_addr()?, gateway.local_addr()?);
        let slots = Arc::new(Semaphore::new(MAX_FORWARDED));
        let tasks = vec![
            tokio::spawn(forward_tcp(
                http,
                pb::PipeTarget::Http,
                client.clone(),
                slots.clone(),
            )),
            tokio::spawn(forward_tcp(
                gateway,
                pb::PipeTarget::Gateway,
                client.clone(),
                slots.clone(),
            )),
            tokio::spawn(forward_dns(dns, client, slots)),
        ];
        Ok(Forward {
            http: addrs.0,
            dns: addrs.1,
            gateway: addrs.2,
            tasks,
        })
    }
}

/// Accepts connections on `listener` and pipes each to `target` on the remote node.
async fn forward_tcp(
    listener: TcpListener,
    target: pb::PipeTarget,
    client: RelayClient<tonic::transport::Channel>,
    slots: Arc<Semaphore>,
) {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut client = client.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let (r, mut w) = tcp.into_split();
            let (tx, rx) = mpsc::channel(8);
            let open = pb::PipeChunk {
                target: target as i32,
                data: Vec::new(),
            };
            if tx.send(open).await.is_err() {
                return;
            }
            // The request stream ends when `up` is done and drops its sender (a half-close):
            // `join!` drops a finished future.
            let up = copy_to_stream(r, move |data| {
                let tx = tx.clone();
                async move { tx.send(pb::PipeChunk { target: 0, data }).await.is_ok() }
            });
            let down = async {
                let mut answer = match client.pipe(ReceiverStream::new(rx)).await {
                    Ok(a) => a.into_inner(),
                    Err(e) => {
                        tracing::debug!(error = %e, "relay pipe refused");
                        return;
                    }
                };
                while let Ok(Ok(Some(m))) =
                    tokio::time::timeout(IDLE_TIMEOUT, answer.message()).await
                {
                    if w.write_all(&m.data).await.is_err() {
                        return;
                    }
                }
                let _ = w.shutdown().await;
            };
            let _ = tokio::time::timeout(MAX_PIPE_LIFE, async { tokio::join!(up, down) }).await;
        });
    }
}

/// Relays each datagram that arrives on `sock` as one DNS query, and sends the answer back to
/// its sender.
async fn forward_dns(
    sock: Arc<UdpSocket>,
    client: RelayClient<tonic::transport::Channel>,
    slots: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; MAX_DNS];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        // Over the cap: the datagram is dropped, as a busy DNS server would.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (sock, mut client, query) = (sock.clone(), client.clone(), buf[..n].to_vec());
        tokio::spawn(async move {
            let _slot = slot;
            let asked = client.dns(pb::DnsDatagram { data: query });
            if let Ok(Ok(answer)) = tokio::time::timeout(DNS_TIMEOUT, asked).await {
                let _ = sock.send_to(&answer.into_inner().data, from).await;
            }
        });
    }
}
