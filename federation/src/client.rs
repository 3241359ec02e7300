//! The subscriber: one task per remote datacenter that keeps a stream open to one of its nodes,
//! feeds the replica, persists it, and reconnects with jittered backoff when the stream breaks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use imbl::OrdMap;
use meridian_protos::federation::federation_client::FederationClient;
use meridian_protos::federation::sync_message::Kind;
use meridian_topology::RemoteDc;
use prost::Message as _;
use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::counters::{FederationCounters, PeerStats};
use crate::peers::Peer;
use crate::replica::{ProtocolError, Replica};
use crate::store::Store;
use meridian_identity::TlsError;

/// The largest sync message accepted from an origin.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What a subscriber task needs.
pub struct Follower {
    /// The remote datacenter.
    pub peer: Peer,
    /// This node's datacenter and name.
    pub local_dc: String,
    /// This node's name.
    pub local_node: String,
    /// Client TLS settings.
    pub tls: Arc<rustls::ClientConfig>,
    /// Replica storage.
    pub store: Arc<Store>,
    /// The known datacenters (addresses of this one, and news from the origin).
    pub registry: Arc<crate::peers::Registry>,
    /// Where replicas are published.
    pub remotes: watch::Sender<OrdMap<Arc<str>, Arc<RemoteDc>>>,
    /// Counters.
    pub counters: Arc<FederationCounters>,
    /// Connect and handshake timeout.
    pub connect_timeout: Duration,
    /// The local address connections leave from (any when `None`).
    pub source: Option<std::net::IpAddr>,
    /// The stream is declared dead after this long without a message.
    pub idle_timeout: Duration,
    /// Set at shutdown.
    pub stop: watch::Receiver<bool>,
    /// Publish the replica before its first sync (configured datacenters: readers see them
    /// down rather than absent). A learned datacenter appears only once it answered, so a
    /// phantom one never shows.
    pub announce: bool,
    /// With the gateway transport, this DC's gateways (the node's own first): the stream goes
    /// through one of them, and the DC's addresses are its gateways', not its servers'.
    pub via: Option<Arc<arc_swap::ArcSwap<Vec<std::net::SocketAddr>>>>,
    /// A gateway-only node following its own DC: the gateway it announces.
    pub gateway: Option<crate::AnnouncedGateway>,
}

/// The addresses last persisted for the datacenter, and when.
#[derive(Default)]
struct Persisted {
    addresses: Vec<(String, u64)>,
    at_ms: u64,
}

/// Last answers are rewritten this often even when the addresses did not change, so that the
/// learned TTL holds across restarts.
const PERSIST_EVERY_MS: u64 = 10 * 60 * 1000;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error(transparent)]
    Connect(#[from] TlsError),
    #[error("gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC status from the origin (a refusal, or a stream broken mid-way): {0}")]
    Status(#[from] tonic::Status),
    #[error("no message for {0:?}")]
    Idle(Duration),
    #[error("origin closed the stream")]
    Closed,
    #[error("no gateway of this datacenter is known yet to carry the stream")]
    NoLocalGateway,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Store(#[from] crate::FederationError),
    #[error("shutting down")]
    Stopped,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The TLS error behind a stream's end, if any (tonic wraps the connector's error).
fn tls_cause(end: &StreamEnd) -> Option<&TlsError> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(end);
    while let Some(err) = e {
        if let Some(t) = err.downcast_ref::<TlsError>() {
            return Some(t);
        }
        e = err.source();
    }
    None
}

/// A gRPC channel over mTLS to `addr`, which must be a server of datacenter `dc`.
pub async fn channel(
    tls: Arc<rustls::ClientConfig>,
    addr: &str,
    dc: &str,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    channel_from(tls, addr, dc, connect_timeout, None).await
}

/// [`channel`] from the local address `source` (any when `None`).
pub async fn channel_from(
    tls: Arc<rustls::ClientConfig>,
    addr: &str,
    dc: &str,
    connect_timeout: Duration,
    source: Option<std::net::IpAddr>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let target = addr.to_owned();
    let dc = dc.to_owned();
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (tls, target, dc) = (tls.clone(), target.clone(), dc.clone());
        async move {
            let s =
                meridian_identity::connect_from(tls, &target, &dc, connect_timeout, source).await?;
            Ok::<_, TlsError>(TokioIo::new(s))
        }
    });
    // The URI is not used to connect (the connector is); it only names the authority. No
    // HTTP/2 pings: a ping waits behind the data in flight, so on a slow link it would time out
    // mid-snapshot; the origin's heartbeats and the idle timeout on messages detect a dead peer.
    Endpoint::from_static("http://federation.meridian")
        .connect_timeout(connect_timeout)
        .connect_with_connector(connector)
        .await
}

impl Follower {
    fn publish(&self, replica: &Replica, stats: &PeerStats) {
        let snap = replica.snapshot();
        stats.connected.store(snap.connected, Ordering::Relaxed);
        stats.index.store(snap.index, Ordering::Relaxed);
        stats.lag.store(replica.lag(), Ordering::Relaxed);
        stats
            .confirmed_unix_ms
            .store(snap.confirmed_unix_ms, Ordering::Relaxed);
        if !self.announce && !snap.synced && replica.is_empty() {
            return;
        }
        let key: Arc<str> = self.peer.dc.to_ascii_lowercase().into();
        self.remotes.send_modify(|m| {
            m.insert(key, Arc::new(snap));
        });
    }

    /// The datacenter was forgotten (none of its learned addresses answered): it leaves the
    /// view, the metrics and the disk.
    async fn forget(&self) {
        let key = self.peer.dc.to_ascii_lowercase();
        self.remotes
            .send_if_modified(|m| m.remove(key.as_str()).is_some());
        self.counters.forget_peer(&self.peer.dc);
        let store = self.store.clone();
        let mut b = crate::store::StoreBatch::new(&self.peer.dc);
        b.forget();
        match tokio::task::spawn_blocking(move || store.write(b)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(dc = %self.peer.dc, error = %e, "cannot drop the forgotten datacenter's replica")
            }
            Err(e) => {
                tracing::warn!(dc = %self.peer.dc, error = %e, "cannot drop the forgotten datacenter's replica")
            }
        }
        tracing::info!(dc = %self.peer.dc, "stopped following a forgotten datacenter");
    }

    /// Writes the addresses that answered, when they changed or their answers grew old.
    async fn persist_addresses(&self, persisted: &mut Persisted) {
        let now = crate::now_ms();
        let proven = self.registry.proven(&self.peer.dc);
        let same = proven.len() == persisted.addresses.len()
            && proven
                .iter()
                .zip(&persisted.addresses)
                .all(|(a, b)| a.0 == b.0);
        // Nothing ever answered: nothing to write (a phantom leaves no trace on disk).
        if same && (proven.is_empty() || now.saturating_sub(persisted.at_ms) < PERSIST_EVERY_MS) {
            return;
        }
        let mut b = crate::store::StoreBatch::new(&self.peer.dc);
        b.addresses(&proven);
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.write(b)).await {
            Ok(Ok(())) => {
                persisted.addresses = proven;
                persisted.at_ms = now;
            }
            Ok(Err(e)) => {
                tracing::warn!(dc = %self.peer.dc, error = %e, "cannot persist the datacenter's addresses")
            }
            Err(e) => {
                tracing::warn!(dc = %self.peer.dc, error = %e, "cannot persist the datacenter's addresses")
            }
        }
    }

    /// Runs until shutdown: publish the replica as loaded from disk, then follow the origin.
    pub async fn run(self, mut replica: Replica) {
        let stats = self.counters.peer(&self.peer.dc);
        self.publish(&replica, &stats);
        let mut persisted = Persisted::default();
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0usize;
        let mut warned_too_large = false;
        loop {
            if *self.stop.borrow() {
                return;
            }
            if !self.registry.keep_following(&self.peer.dc) {
                self.forget().await;
                return;
            }
            // Addresses are read at every attempt: other nodes may have told us new ones.
            let addresses = self.registry.addresses(&self.peer.dc);
            let addresses = if addresses.is_empty() {
                self.peer.addresses.clone()
            } else {
                addresses
            };
            let Some(addr) = addresses.get(attempt % addresses.len().max(1)).cloned() else {
                return;
            };
            self.persist_addresses(&mut persisted).await;
            let hop = attempt;
            attempt += 1;
            let started = tokio::time::Instant::now();
            let end = self
                .follow(&addr, hop, &mut replica, &stats, &mut persisted)
                .await;
            replica.disconnected();
            self.publish(&replica, &stats);
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            match &end {
                StreamEnd::Stopped => return,
                StreamEnd::Protocol(ProtocolError::TooLarge { what, limit }) => {
                    // The replica keeps its last good state (the staging was dropped whole);
                    // the origin is asked again only after the longest backoff.
                    self.counters.refuse(if *what == "bytes" {
                        "staging_bytes"
                    } else {
                        "replica_entries"
                    });
                    if !warned_too_large {
                        tracing::warn!(dc = %self.peer.dc, peer = %addr, what, limit, "the origin sends more than this node holds for one datacenter; refused (raise federation.max_replica_entries or max_staging_bytes if it is honest)");
                        warned_too_large = true;
                    }
                    backoff = BACKOFF_MAX;
                }
                StreamEnd::Protocol(ProtocolError::DigestMismatch { .. }) => {
                    self.counters
                        .digest_mismatches
                        .fetch_add(1, Ordering::Relaxed);
                    replica.forget_index();
                }
                StreamEnd::Protocol(_) => {
                    self.counters
                        .protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                    replica.forget_index();
                }
                _ => {}
            }
            match tls_cause(&end) {
                // The peer is not who it should be: an operator must look.
                Some(
                    e @ (TlsError::WrongName { .. }
                    | TlsError::Handshake { .. }
                    | TlsError::NoIdentity { .. }),
                ) => {
                    let reason = if matches!(e, TlsError::WrongName { .. }) {
                        "peer_wrong_dc"
                    } else {
                        "peer_handshake"
                    };
                    self.counters.refuse(reason);
                    tracing::warn!(dc = %self.peer.dc, peer = %addr, error = %e, "refused the peer's certificate");
                }
                _ => {
                    tracing::info!(dc = %self.peer.dc, peer = %addr, reason = %end, "federation stream ended")
                }
            }
            // A stream that lived a while was healthy: start the backoff over.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            // Full jitter, so that the nodes of a DC do not reconnect in lockstep.
            let sleep = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let mut stop = self.stop.clone();
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = crate::stopped(&mut stop) => return,
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(dc = %self.peer.dc, peer = addr))]
    async fn follow(
        &self,
        addr: &str,
        hop: usize,
        replica: &mut Replica,
        stats: &PeerStats,
        persisted: &mut Persisted,
    ) -> StreamEnd {
        match self
            .follow_inner(addr, hop, replica, stats, persisted)
            .await
        {
            Ok(()) => StreamEnd::Closed,
            Err(e) => e,
        }
    }

    async fn follow_inner(
        &self,
        addr: &str,
        hop: usize,
        replica: &mut Replica,
        stats: &PeerStats,
        persisted: &mut Persisted,
    ) -> Result<(), StreamEnd> {
        // Through a gateway of this DC: the TLS (and its check that the far end is a server
        // of `peer.dc`) is the same, only the first hop differs; `addr` stays the DC's address
        // this attempt is on behalf of (one of its gateways, which the local gateway may use).
        let hop = match &self.via {
            Some(gateways) => {
                let gateways = gateways.load();
                // The node's own gateway first; another of the DC's on later attempts.
                let Some(gw) = gateways.get(hop % gateways.len().max(1)) else {
                    return Err(StreamEnd::NoLocalGateway);
                };
                gw.to_string()
            }
            None => addr.to_owned(),
        };
        let channel = channel_from(
            self.tls.clone(),
            &hop,
            &self.peer.dc,
            self.connect_timeout,
            self.source,
        )
        .await?;
        let mut client =
            FederationClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut req = replica.request(&self.local_dc, &self.local_node);
        req.subscriber_addresses = self.registry.own_addresses().to_vec();
        req.gateway = self
            .gateway
            .as_ref()
            .map(|a| meridian_protos::federation::GatewayAnnounce {
                address: a.address.to_string(),
                check: a.check.to_string(),
                http: a.http.map(|h| h.to_string()).unwrap_or_default(),
            });
        stats
            .bytes_out
            .fetch_add(req.encoded_len() as u64, Ordering::Relaxed);
        stats.messages_out.fetch_add(1, Ordering::Relaxed);
        let from = req.from_index;
        let mut stream = client.subscribe(req).await?.into_inner();
        let mut stop = self.stop.clone();
        let mut first = true;
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout(self.idle_timeout, stream.message()) => match m {
                    Err(_) => return Err(StreamEnd::Idle(self.idle_timeout)),
                    Ok(m) => m?,
                },
                () = crate::stopped(&mut stop) => return Err(StreamEnd::Stopped),
            };
            let Some(msg) = msg else {
                return Ok(());
            };
            stats
                .bytes_in
                .fetch_add(msg.encoded_len() as u64, Ordering::Relaxed);
            stats.messages_in.fetch_add(1, Ordering::Relaxed);
            if first {
                match &msg.kind {
                    Some(Kind::Reset(r)) if r.all => {
                        stats.full_syncs.fetch_add(1, Ordering::Relaxed)
                    }
                    Some(Kind::Reset(_)) => stats.partial_syncs.fetch_add(1, Ordering::Relaxed),
                    _ => stats.resumes.fetch_add(1, Ordering::Relaxed),
                };
                tracing::debug!(from, "federation stream open");
                first = false;
            }
            // The TLS handshake verified the origin as a server of `peer.dc`: its word on its
            // own datacenter is trusted, on others it is a relay (see `peers`).
            let now = crate::now_ms();
            match &msg.kind {
                Some(Kind::Synced(s)) => {
                    self.registry.learn_all(&self.peer.dc, &s.datacenters, now)
                }
                Some(Kind::Heartbeat(h)) => {
                    self.registry.learn_all(&self.peer.dc, &h.datacenters, now)
                }
                _ => {}
            }
            let mut writes = Vec::new();
            let applied = replica.apply(msg, crate::now_ms(), &mut writes)?;
            if !writes.is_empty() {
                let store = self.store.clone();
                // Snapshots can be large: write off the runtime's workers.
                tokio::task::spawn_blocking(move || {
                    writes.into_iter().try_for_each(|b| store.write(b))
                })
                .await
                .map_err(|_| StreamEnd::Closed)??;
            }
            // A completed sync proves the address; heartbeats after it keep it proven (and
            // its last answer on disk fresh) while the stream lives.
            if applied.synced || applied.publish && replica.is_connected() {
                self.registry.answered(&self.peer.dc, addr, now);
                self.persist_addresses(persisted).await;
            }
            if applied.synced {
                tracing::info!(dc = %self.peer.dc, index = replica.snapshot().index, entries = replica.len(), "replica synced");
            }
            if applied.publish {
                self.publish(replica, stats);
            }
        }
    }
}
