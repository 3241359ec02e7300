//! The origin's WAN endpoint: an mTLS accept loop that authenticates peers (counting every
//! refusal) and hands the connections to the tonic `Federation` service, which streams the
//! exported catalog to each subscriber.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use meridian_protos::federation as pb;
use meridian_protos::federation::federation_server::{Federation, FederationServer};
use meridian_protos::federation::sync_message::Kind;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use crate::counters::{FederationCounters, SubscriberStats};
use crate::export::{Delta, Exporter, Plan};
use meridian_identity::{self as tls, Identity, Role, TlsError};

/// Entries per `Batch` message: keeps every message far below the gRPC size limit.
const CHUNK: usize = 512;
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;
/// The largest subscription request accepted (a digest of 2^16 buckets is 512 KiB).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A TLS connection from an authenticated federation peer.
pub struct PeerStream {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    identity: Identity,
}

impl Connected for PeerStream {
    type ConnectInfo = Identity;

    fn connect_info(&self) -> Identity {
        self.identity.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener`, runs the TLS handshake (bounded by
/// `handshake_timeout`) and sends authenticated streams to `out` until `stop` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    counters: Arc<FederationCounters>,
    out: mpsc::Sender<Result<PeerStream, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = crate::stopped(&mut stop) => return,
        };
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "federation accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::stopped(&mut stop) => return,
        };
        let acceptor = acceptor.clone();
        let counters = counters.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            match tls::accept(&acceptor, tcp, handshake_timeout).await {
                Ok((tls, identity)) => {
                    let _ = out.send(Ok(PeerStream { tls, identity })).await;
                }
                Err(e) => {
                    let reason = match &e {
                        TlsError::Timeout { .. } => "handshake_timeout",
                        TlsError::NoIdentity { .. } => "no_identity",
                        TlsError::Io { .. } => "handshake_io",
                        _ => "handshake",
                    };
                    counters.refuse(reason);
                    tracing::info!(peer = %addr, error = %e, "federation connection refused");
                }
            }
        });
    }
}

/// The `Federation` gRPC service of one node.
pub struct Service {
    /// This node's datacenter.
    pub dc: Arc<str>,
    /// The exported catalog.
    pub exporter: Arc<Exporter>,
    /// The known datacenters.
    pub registry: Arc<crate::peers::Registry>,
    /// Counters.
    pub counters: Arc<FederationCounters>,
    /// Idle time after which a heartbeat is sent.
    pub heartbeat: Duration,
    /// Set at shutdown: streams end.
    pub stop: watch::Receiver<bool>,
    /// Streams open per subscriber certificate.
    pub streams: crate::limits::StreamCap,
    /// Told of each gateway a gateway-only node of this DC announces.
    pub on_gateway: Option<crate::GatewayHook>,
}

impl Service {
    /// The tonic server for this service, with request size bounds.
    pub fn into_server(self) -> FederationServer<Service> {
        FederationServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl Federation for Service {
    type SubscribeStream = ReceiverStream<Result<pb::SyncMessage, Status>>;

    #[tracing::instrument(skip_all, fields(subscriber_dc, subscriber_node))]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.extensions().get::<Identity>().cloned();
        let req = request.into_inner();
        let span = tracing::Span::current();
        span.record("subscriber_dc", req.subscriber_dc.as_str());
        span.record("subscriber_node", req.subscriber_node.as_str());
        let Some(peer) = peer else {
            self.counters.refuse("no_identity");
            return Err(Status::unauthenticated("no client certificate"));
        };
        if !peer.dc.eq_ignore_ascii_case(&req.subscriber_dc) {
            self.counters.refuse("wrong_dc");
            tracing::warn!(cert_dc = %peer.dc, claimed = %req.subscriber_dc, "subscriber's certificate names another datacenter");
            return Err(Status::permission_denied(format!(
                "certificate names datacenter {:?}, request claims {:?}",
                peer.dc, req.subscriber_dc
            )));
        }
        if !req.origin_dc.eq_ignore_ascii_case(&self.dc) {
            self.counters.refuse("wrong_origin");
            return Err(Status::failed_precondition(format!(
                "this is datacenter {:?}, not {:?}",
                self.dc, req.origin_dc
            )));
        }
        // One certificate holds at most so many streams: a compromised node cannot tie up the
        // origin's tasks and memory with endless subscriptions.
        let permit = match self.streams.acquire(&peer) {
            Ok(p) => p,
            Err(over) => {
                self.counters.refuse("stream_cap");
                if over.first {
                    tracing::warn!(peer = %peer, max = over.max, "subscriber is at its cap of open streams; refusing more");
                }
                return Err(Status::resource_exhausted(format!(
                    "at most {} open subscribe streams per certificate",
                    over.max
                )));
            }
        };
        // A subscriber of this very DC is a gateway-only node following its DC's servers.
        // Federation is symmetric: follow a datacenter that follows us, at the addresses its
        // servers give. A gateway certificate serves no federation: its addresses are not
        // learned, so it cannot point this DC at endpoints of its choosing.
        if peer.role == Role::Server {
            self.registry.learn(
                crate::peers::Source::Own,
                &peer.to_string(),
                &peer.dc,
                &req.subscriber_addresses,
                crate::now_ms(),
            );
        }
        // A gateway-only node of this DC announcing its gateway: registered for other DCs to
        // tunnel to. Its certificate names the node, so it speaks only for itself.
        if peer.role == Role::Gateway
            && peer.dc.eq_ignore_ascii_case(&self.dc)
            && let (Some(hook), Some(gw)) = (&self.on_gateway, &req.gateway)
        {
            match announced(&peer.node, gw) {
                Some(a) => hook(a),
                None => {
                    self.counters.refuse("bad_gateway_announce");
                    tracing::warn!(peer = %peer, address = %gw.address, check = %gw.check, "a gateway announced addresses that are not ip:port; not registered");
                }
            }
        }
        // A subscriber that was ahead of this node (it synced from a node that had applied
        // more) waits briefly for this node to catch up, rather than being rolled back.
        let mut changed = self.exporter.watch();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            changed.wait_for(|i| *i >= req.from_index),
        )
        .await;
        // A catch-up scans every exported entry: off the runtime's workers.
        let exporter = self.exporter.clone();
        let from_index = req.from_index;
        let plan = tokio::task::spawn_blocking(move || exporter.plan_request(&req))
            .await
            .map_err(|_| Status::internal("planning the stream failed"))?;
        let stats = self.counters.subscriber(&peer.dc);
        stats.streams.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            from = from_index,
            plan = plan_name(&plan),
            "subscriber connected"
        );
        let (tx, rx) = mpsc::channel(8);
        let stream = Stream {
            tx,
            stats,
            exporter: self.exporter.clone(),
            registry: self.registry.clone(),
            heartbeat: self.heartbeat,
            stop: self.stop.clone(),
            _permit: permit,
        };
        tokio::spawn(stream.run(plan));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The announcement of gateway-only node `node`, if its addresses are `ip:port`.
fn announced(node: &str, gw: &pb::GatewayAnnounce) -> Option<crate::AnnouncedGateway> {
    Some(crate::AnnouncedGateway {
        node: node.to_owned(),
        address: gw.address.parse().ok()?,
        check: gw.check.parse().ok()?,
        http: match gw.http.as_str() {
            "" => None,
            h => Some(h.parse().ok()?),
        },
    })
}

fn plan_name(p: &Plan) -> &'static str {
    match p {
        Plan::Resume { .. } => "resume",
        Plan::Catchup { all: true, .. } => "full",
        Plan::Catchup { .. } => "partial",
    }
}

/// One subscriber's stream: its first plan, then changes and heartbeats.
struct Stream {
    tx: mpsc::Sender<Result<pb::SyncMessage, Status>>,
    stats: Arc<SubscriberStats>,
    exporter: Arc<Exporter>,
    registry: Arc<crate::peers::Registry>,
    heartbeat: Duration,
    stop: watch::Receiver<bool>,
    /// Held while the stream runs: counts it against the subscriber's cap.
    _permit: crate::limits::StreamPermit,
}

/// The stream ended: the subscriber went away.
struct Gone;

impl Stream {
    async fn send(&self, kind: Kind) -> Result<(), Gone> {
        let msg = pb::SyncMessage { kind: Some(kind) };
        let len = msg.encoded_len() as u64;
        // Bounded channel: a slow subscriber blocks this task, never the origin's memory.
        self.tx.send(Ok(msg)).await.map_err(|_| Gone)?;
        self.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
        self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn send_delta(&self, d: &Delta) -> Result<(), Gone> {
        let mut upserts = d.upserts.chunks(CHUNK);
        let mut removals = d.removals.chunks(CHUNK);
        loop {
            let u = upserts.next().unwrap_or(&[]);
            let r = removals.next().unwrap_or(&[]);
            if u.is_empty() && r.is_empty() {
                return Ok(());
            }
            self.send(Kind::Batch(pb::Batch {
                index: d.index,
                upserts: u.iter().map(|h| h.entry.clone()).collect(),
                removals: r.iter().map(|k| k.to_proto()).collect(),
            }))
            .await?;
        }
    }

    async fn run(self, plan: Plan) {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let _ = self.serve(plan).await;
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(&self, plan: Plan) -> Result<(), Gone> {
        let mut cursor = match plan {
            Plan::Resume {
                deltas,
                index,
                digest,
            } => {
                for d in &deltas {
                    self.send_delta(d).await?;
                }
                self.send(Kind::Synced(pb::Synced {
                    index,
                    digest,
                    datacenters: self.registry.to_proto(),
                }))
                .await?;
                index
            }
            Plan::Catchup {
                all,
                buckets,
                kept,
                bucket_bits,
                entries,
                index,
                digest,
            } => {
                self.send(Kind::Reset(pb::Reset {
                    all,
                    bucket_bits,
                    buckets,
                    kept,
                }))
                .await?;
                for chunk in entries.chunks(CHUNK) {
                    self.send(Kind::Batch(pb::Batch {
                        index,
                        upserts: chunk.iter().map(|h| h.entry.clone()).collect(),
                        removals: vec![],
                    }))
                    .await?;
                }
                self.send(Kind::Synced(pb::Synced {
                    index,
                    digest,
                    datacenters: self.registry.to_proto(),
                }))
                .await?;
                index
            }
        };
        let mut changed = self.exporter.watch();
        let mut stop = self.stop.clone();
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let deadline = last_sent + self.heartbeat;
            tokio::select! {
                r = changed.changed() => if r.is_err() { return Err(Gone) },
                () = tokio::time::sleep_until(deadline) => {}
                () = self.tx.closed() => return Err(Gone),
                () = crate::stopped(&mut stop) => return Err(Gone),
            }
            match self.exporter.deltas_after(cursor) {
                Err(_) => {
                    self.stats.too_slow.fetch_add(1, Ordering::Relaxed);
                    let _ = self
                        .tx
                        .send(Err(Status::resource_exhausted(
                            "subscriber fell behind the change window; resubscribe",
                        )))
                        .await;
                    return Err(Gone);
                }
                Ok((deltas, index)) => {
                    for d in &deltas {
                        self.send_delta(d).await?;
                    }
                    if !deltas.is_empty() {
                        last_sent = tokio::time::Instant::now();
                    }
                    if index > cursor && deltas.is_empty()
                        || tokio::time::Instant::now() >= deadline
                    {
                        // Changes that did not touch the export still move the index.
                        self.send(Kind::Heartbeat(pb::Heartbeat {
                            index,
                            unix_ms: crate::now_ms(),
                            datacenters: self.registry.to_proto(),
                        }))
                        .await?;
                        last_sent = tokio::time::Instant::now();
                    }
                    cursor = index;
                }
            }
        }
    }
}
