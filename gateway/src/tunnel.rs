//! The QUIC tunnel between gateways of different datacenters: one long-lived connection per
//! remote DC (mutual TLS with the federation certificates), re-established on failure and moved
//! to another gateway of that DC when one dies; every client connection is one bidirectional
//! stream starting with a small header (name, resolved DC), then the client's bytes unchanged.
//!
//! This file owns the endpoint and the pool: binding, connecting (QUIC, or TCP + TLS where UDP
//! is dropped), keeping one connection per DC, probing, retiring and closing, the TLS half of
//! accepting, and the tunnel's own counters and their Prometheus text. What travels on a stream
//! is [`crate::header`]'s; what is done with an inbound stream is `inbound.rs`'s, and with an
//! outbound one `remote.rs`'s.
//!
//! The receiving gateway routes a stream to its own instances only: a tunnelled connection is
//! never sent on to a third DC, so routes cannot loop.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meridian_topology::metrics;
use prometheus_client::encoding::DescriptorEncoder;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info};

use crate::header::{self, Header, HeaderError};
use crate::prefixed::Prefixed;
use meridian_topology::caps::{KeyedCap, KeyedSlot};

/// ALPN of the tunnel.
pub const ALPN: &[u8] = b"meridian-tunnel/1";
/// Most connections kept per DC after failed probes.
const MAX_RETIRED: usize = 4;

/// How the tunnel authenticates and what it allows.
#[derive(Clone)]
pub struct TunnelConfig {
    /// Server side: requires a client certificate from the federation CA.
    pub server: Arc<rustls::ServerConfig>,
    /// Client side: presents this node's certificate, trusts the federation CA.
    pub client: Arc<rustls::ClientConfig>,
    /// The name a gateway of datacenter `dc` holds a certificate for.
    pub server_name: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// Most tunnelled connections open at once to one remote DC.
    pub max_streams_per_dc: usize,
    /// Most of them from one client address (its share of each DC's budget), so one client
    /// cannot hold every cross-DC slot.
    pub max_streams_per_client: usize,
    /// Most QUIC connections one remote peer (one certificate) holds to this gateway at once.
    pub max_connections_per_peer: usize,
    /// Most streams one remote peer has relayed here at once, both transports.
    pub max_streams_per_peer: usize,
    /// Most QUIC handshakes in progress at once; more incoming connections are refused.
    pub max_handshakes: usize,
    /// When a new QUIC client's address is validated with a Retry packet before any handshake
    /// work, so a spoofed source cannot make this gateway send handshakes to a victim, or hold
    /// a handshake slot without a real return path.
    pub retry: RetryPolicy,
    /// Time to establish a QUIC connection to one remote gateway.
    pub connect_timeout: Duration,
    /// A QUIC connection with no packet for this long is dead (keep-alives run at a third).
    pub idle_timeout: Duration,
    /// This gateway's datacenter (a TCP-fallback connection names it in its SNI).
    pub local_dc: String,
    /// How connections to remote gateways travel.
    pub transport: WanTransport,
}

/// When the tunnel asks a new QUIC client to prove its address with a Retry (RFC 9000 §8.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Never: every handshake starts at once.
    Never,
    /// When at least half of the handshake slots are taken: a flood of spoofed Initials is
    /// answered with stateless Retries before it can fill them, while a peer reconnecting to a
    /// quiet gateway saves the round trip (on a 200 ms WAN, the difference between a
    /// reconnect that fits within a failover probe's timeout and one that does not).
    #[default]
    UnderLoad,
    /// Always, before any handshake work.
    Always,
}

/// How tunnelled connections cross the WAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WanTransport {
    /// One pooled QUIC connection per remote DC, a stream per client connection.
    #[default]
    Quic,
    /// A TCP + TLS connection to the remote gateway's TCP port per client connection, for
    /// networks that drop UDP (one more WAN handshake per connection).
    Tcp,
}

/// A connection through the tunnel, either transport.
pub enum TunnelStream {
    /// A QUIC stream.
    Quic(tokio::io::Join<quinn::RecvStream, quinn::SendStream>),
    /// A TLS connection over TCP.
    Tcp(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for TunnelStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelStream::Quic(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            TunnelStream::Tcp(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for TunnelStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelStream::Quic(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            TunnelStream::Tcp(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelStream::Quic(s) => std::pin::Pin::new(s).poll_flush(cx),
            TunnelStream::Tcp(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelStream::Quic(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            TunnelStream::Tcp(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl std::fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("max_streams_per_dc", &self.max_streams_per_dc)
            .field("max_streams_per_client", &self.max_streams_per_client)
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .field("max_streams_per_peer", &self.max_streams_per_peer)
            .field("max_handshakes", &self.max_handshakes)
            .field("retry", &self.retry)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a tunnel could not carry a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The remote DC advertises no gateway.
    #[error("datacenter {0} has no gateway")]
    NoGateway(String),
    /// Every gateway of the DC failed.
    #[error("no gateway of {dc} could be reached ({tried} tried): {last}")]
    Unreachable {
        /// The datacenter.
        dc: String,
        /// Gateways tried.
        tried: usize,
        /// The last failure.
        last: String,
    },
    /// Too many tunnelled connections to this DC are open.
    #[error("too many tunnelled connections to {0}")]
    Busy(String),
    /// This client address already holds its share of the tunnelled connections to this DC.
    #[error("client {client} holds its share of the tunnelled connections to {dc}")]
    ClientShare {
        /// The datacenter.
        dc: String,
        /// The client's address.
        client: IpAddr,
    },
    /// The TLS configuration does not suit QUIC.
    #[error("tunnel TLS: {0}")]
    Tls(String),
    /// A probe could not be written, or its answer was wrong.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A socket failed.
    #[error("tunnel i/o: {0}")]
    Io(#[from] io::Error),
}

/// Failed probes in a row, each with nothing at all received on the connection from its start
/// to its timeout, after which a DC's pooled connection is retired and the next probe or
/// stream connects afresh (to another gateway, if that one died). A gateway that died sends
/// nothing from then on; a WAN whose round trip just grew by less than the timeout delivers
/// within it the answers to the probes sent since, one per probe interval, so it is not
/// mistaken for a dead gateway (a larger jump may cost a reconnect, while the late answers on
/// the retired connection still count for the caller). One is not enough: on a lossy WAN a
/// single probe can lose a packet, and reconnecting costs two round trips more, which turned
/// one loss into a DC declared down.
const RETIRE_AFTER_FAILED_PROBES: u32 = 2;

/// The tunnel endpoint of one gateway: it accepts streams from remote gateways and opens
/// streams to them, over one UDP socket.
pub struct Tunnel {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    tcp_connector: tokio_rustls::TlsConnector,
    tcp_acceptor: tokio_rustls::TlsAcceptor,
    own_name: String,
    config: TunnelConfig,
    /// Live connection per remote DC (lowercased), and the gateway it goes to.
    conns: Mutex<HashMap<String, (SocketAddr, quinn::Connection)>>,
    /// Connections taken out of the pool after a failed probe, by DC: streams on them carry on
    /// (the failure may pass), until the DC is found down and they are closed.
    retired: Mutex<HashMap<String, Vec<quinn::Connection>>>,
    /// Probes failed in a row by DC, each with nothing received on the pooled connection
    /// meanwhile: the connection is retired at [`RETIRE_AFTER_FAILED_PROBES`].
    failed_probes: Mutex<HashMap<String, u32>>,
    /// The gateway of each DC whose connection was last retired: tried last when reconnecting,
    /// since it is most likely the one that died.
    suspect_gateway: Mutex<HashMap<String, SocketAddr>>,
    /// Stream budget per remote DC.
    budgets: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Each client address's share of each DC's budget.
    client_shares: KeyedCap<(IpAddr, String)>,
    /// Incoming QUIC connections per remote peer.
    peer_conns: KeyedCap<PeerId>,
    /// Streams relayed here per remote peer.
    peer_streams: KeyedCap<PeerId>,
    /// Incoming QUIC handshakes in progress.
    handshakes: Arc<Semaphore>,
    /// The connection being dialled to each remote DC (lowercased), if any: one at a time,
    /// shared by every caller, and carried on by its own task when they give up.
    dialing: Mutex<HashMap<String, watch::Receiver<Option<Dialed>>>>,
    /// Connections established, by outcome, for metrics.
    pub stats: Arc<TunnelStats>,
}

/// How a dial ended: the gateway and connection, or why every gateway failed.
type Dialed = Result<(SocketAddr, quinn::Connection), (usize, String)>;

/// Tunnel counters.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// QUIC connections established (as a client).
    pub connects: AtomicU64,
    /// QUIC connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Streams opened to remote gateways.
    pub streams_out: AtomicU64,
    /// Streams accepted from remote gateways.
    pub streams_in: AtomicU64,
    /// Incoming QUIC connections refused (handshake failed).
    pub refused: AtomicU64,
    /// Incoming QUIC connections refused because `max_handshakes` were in progress.
    pub over_handshakes: AtomicU64,
    /// Incoming QUIC connections closed because their peer held `max_connections_per_peer`.
    pub over_peer_connections: AtomicU64,
    /// Incoming QUIC connections asked to validate their address (Retry sent).
    pub retries: AtomicU64,
}

/// Who a remote peer is, for its caps: its certificate (the leaf, as presented), or, without
/// client authentication, its IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerId(Arc<[u8]>);

impl PeerId {
    /// The peer presenting `certs` (leaf first) from `addr`.
    pub fn new(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>, addr: IpAddr) -> Self {
        match certs.and_then(|c| c.first()) {
            Some(leaf) => PeerId(Arc::from(leaf.as_ref())),
            None => PeerId(match addr {
                IpAddr::V4(a) => Arc::from(a.octets().as_slice()),
                IpAddr::V6(a) => Arc::from(a.octets().as_slice()),
            }),
        }
    }

    /// The peer of a QUIC connection.
    fn of(conn: &quinn::Connection) -> Self {
        let certs = conn.peer_identity().and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        PeerId::new(
            certs.as_deref().map(Vec::as_slice),
            conn.remote_address().ip(),
        )
    }
}

/// What an outbound tunnelled connection holds while it is open: a place in its DC's budget and
/// in its client's share of it. Given back when dropped.
#[derive(Debug)]
pub struct TunnelPermit {
    _dc: OwnedSemaphorePermit,
    _client: Option<KeyedSlot<(IpAddr, String)>>,
}

/// Connects to the gateway at `addr` as `name`, within `timeout`.
async fn connect(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    addr: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(client.clone(), addr, name)
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())
}

fn transport(idle: Duration, max_streams: usize) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(Some(idle / 3));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(
        u32::try_from(max_streams).unwrap_or(u32::MAX),
    ));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Arc::new(t)
}

impl Tunnel {
    /// Binds the tunnel's UDP socket on `addr`.
    pub fn bind(addr: SocketAddr, config: TunnelConfig) -> Result<Tunnel, TunnelError> {
        let mut server_tls = (*config.server).clone();
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let tcp_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls.clone()));
        let server_crypto =
            QuicServerConfig::try_from(server_tls).map_err(|e| TunnelError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport(config.idle_timeout, config.max_streams_per_dc));
        let mut client_tls = (*config.client).clone();
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let tcp_connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls.clone()));
        let client_crypto =
            QuicClientConfig::try_from(client_tls).map_err(|e| TunnelError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport(config.idle_timeout, config.max_streams_per_dc));
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let own_name = (config.server_name)(&config.local_dc);
        Ok(Tunnel {
            endpoint,
            client,
            tcp_connector,
            tcp_acceptor,
            own_name,
            conns: Mutex::new(HashMap::new()),
            retired: Mutex::new(HashMap::new()),
            failed_probes: Mutex::new(HashMap::new()),
            suspect_gateway: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            client_shares: KeyedCap::new(config.max_streams_per_client),
            peer_conns: KeyedCap::new(config.max_connections_per_peer),
            peer_streams: KeyedCap::new(config.max_streams_per_peer),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
            dialing: Mutex::new(HashMap::new()),
            stats: Arc::default(),
            config,
        })
    }

    /// Incoming QUIC handshakes in progress now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.config.max_handshakes.max(1) - self.handshakes.available_permits()
    }

    /// The UDP address the tunnel listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Open QUIC connections, by remote DC, with the gateway each goes to.
    pub fn connections(&self) -> Vec<(String, SocketAddr)> {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns
            .iter()
            .filter(|(_, (_, c))| c.close_reason().is_none())
            .map(|(dc, (addr, _))| (dc.clone(), *addr))
            .collect()
    }

    fn budget(&self, dc: &str) -> Arc<Semaphore> {
        let mut b = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        b.entry(dc.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_streams_per_dc.max(1))))
            .clone()
    }

    /// The SNI a TCP-fallback connection to this gateway carries.
    pub fn own_name(&self) -> &str {
        &self.own_name
    }

    /// The server side of a TCP-fallback connection whose ClientHello (already read, in
    /// `hello`) named [`Self::own_name`]: runs the mutual-TLS handshake, replaying `hello`.
    pub async fn accept_tcp<S>(
        &self,
        hello: Vec<u8>,
        stream: S,
    ) -> io::Result<tokio_rustls::server::TlsStream<Prefixed<S>>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let r = self.tcp_acceptor.accept(Prefixed::new(hello, stream)).await;
        if r.is_err() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.streams_in.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Opens a connection to datacenter `dc` through one of `gateways` for a client at
    /// `client` (when known): a stream on the live QUIC connection (re-established, on another
    /// gateway if need be, when it failed), or a new TCP + TLS connection with the TCP
    /// fallback. Refused when the DC's budget is spent or the client holds its share of it.
    pub async fn open(
        &self,
        dc: &str,
        gateways: &[SocketAddr],
        client: Option<IpAddr>,
    ) -> Result<(TunnelStream, TunnelPermit), TunnelError> {
        let key = dc.to_ascii_lowercase();
        // The share first: a client over it must not take (even briefly) a slot of the budget.
        let share = match client {
            Some(ip) => Some(
                self.client_shares
                    .try_acquire((ip, key.clone()))
                    .ok_or_else(|| TunnelError::ClientShare {
                        dc: dc.to_owned(),
                        client: ip,
                    })?,
            ),
            None => None,
        };
        let permit = self
            .budget(&key)
            .try_acquire_owned()
            .map_err(|_| TunnelError::Busy(dc.to_owned()))?;
        let stream = self.open_stream(dc, &key, gateways).await?;
        self.stats.streams_out.fetch_add(1, Ordering::Relaxed);
        Ok((
            stream,
            TunnelPermit {
                _dc: permit,
                _client: share,
            },
        ))
    }

    /// A place in `peer`'s share of the streams relayed here, or `None` when it holds all of
    /// them (`max_streams_per_peer`).
    pub(crate) fn admit_stream(&self, peer: PeerId) -> Option<KeyedSlot<PeerId>> {
        self.peer_streams.try_acquire(peer)
    }

    /// A stream to `dc` over the configured transport (not counted: probes use it too).
    async fn open_stream(
        &self,
        dc: &str,
        key: &str,
        gateways: &[SocketAddr],
    ) -> Result<TunnelStream, TunnelError> {
        Ok(match self.config.transport {
            WanTransport::Quic => {
                let (send, recv) = self.open_quic(dc, key, gateways).await?;
                TunnelStream::Quic(tokio::io::join(recv, send))
            }
            WanTransport::Tcp => TunnelStream::Tcp(Box::new(self.open_tcp(dc, gateways).await?)),
        })
    }

    async fn open_tcp(
        &self,
        dc: &str,
        gateways: &[SocketAddr],
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, TunnelError> {
        if gateways.is_empty() {
            return Err(TunnelError::NoGateway(dc.to_owned()));
        }
        let name = rustls::pki_types::ServerName::try_from((self.config.server_name)(dc))
            .map_err(|e| TunnelError::Tls(e.to_string()))?;
        let mut order: Vec<SocketAddr> = gateways.to_vec();
        fastrand::shuffle(&mut order);
        let mut last = String::new();
        for addr in &order {
            let attempt = async {
                // From the gateway's own address, as the QUIC packets leave from it.
                let tcp = match self.endpoint.local_addr().map(|a| a.ip()) {
                    Ok(ip) if !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4() => {
                        let socket = if ip.is_ipv4() {
                            tokio::net::TcpSocket::new_v4()?
                        } else {
                            tokio::net::TcpSocket::new_v6()?
                        };
                        socket.bind(SocketAddr::new(ip, 0))?;
                        socket.connect(*addr).await?
                    }
                    _ => tokio::net::TcpStream::connect(addr).await?,
                };
                tcp.set_nodelay(true)?;
                self.tcp_connector.connect(name.clone(), tcp).await
            };
            match tokio::time::timeout(self.config.connect_timeout, attempt).await {
                Ok(Ok(tls)) => return Ok(tls),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {:?}", self.config.connect_timeout),
            }
            self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            // Counted; the caller hears of it only if every gateway fails.
            debug!(%dc, gateway = %addr, error = %last, "tunnel (TCP) connect failed");
        }
        Err(TunnelError::Unreachable {
            dc: dc.to_owned(),
            tried: order.len(),
            last,
        })
    }

    async fn open_quic(
        &self,
        dc: &str,
        key: &str,
        gateways: &[SocketAddr],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
        let key = key.to_owned();
        let cached = {
            let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.get(&key).cloned()
        };
        if let Some((addr, conn)) = cached {
            match conn.open_bi().await {
                Ok((send, recv)) => {
                    return Ok((send, recv));
                }
                Err(e) => {
                    debug!(%dc, gateway = %addr, error = %e, "tunnel connection lost; reconnecting");
                    self.forget(&key, &conn);
                }
            }
        }
        if gateways.is_empty() {
            return Err(TunnelError::NoGateway(dc.to_owned()));
        }
        let mut dialed = self.dial(dc, &key, gateways);
        // Cancel-safe: a caller that gives up (a probe's timeout) leaves the dial running, and
        // the next caller waits on the same one instead of starting the handshake over.
        let result = match dialed.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        {
            let mut dialing = self.dialing.lock().unwrap_or_else(PoisonError::into_inner);
            if dialing.get(&key).is_some_and(|d| d.same_channel(&dialed)) {
                dialing.remove(&key);
            }
        }
        let (addr, conn) = match result {
            Some(Ok(c)) => c,
            Some(Err((tried, last))) => {
                return Err(TunnelError::Unreachable {
                    dc: dc.to_owned(),
                    tried,
                    last,
                });
            }
            None => return Err(TunnelError::NoGateway(dc.to_owned())),
        };
        {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            let known = conns
                .get(&key)
                .is_some_and(|(_, c)| c.stable_id() == conn.stable_id());
            if !known {
                info!(%dc, gateway = %addr, "tunnel connected");
                conns.insert(key.clone(), (addr, conn.clone()));
            }
        }
        conn.open_bi().await.map_err(|e| TunnelError::Unreachable {
            dc: dc.to_owned(),
            tried: 1,
            last: e.to_string(),
        })
    }

    /// The dial in progress to `dc`, or a new one: a task that tries `gateways` in a random
    /// order (the one last retired for `dc` last), each for up to the connect timeout, and
    /// publishes the first connection or the last error.
    ///
    /// It runs on its own task so that a handshake outlives the caller that started it: on a
    /// long WAN a reconnect takes two or three round trips, more than a probe waits, and a
    /// handshake restarted by every probe would never finish.
    fn dial(
        &self,
        dc: &str,
        key: &str,
        gateways: &[SocketAddr],
    ) -> watch::Receiver<Option<Dialed>> {
        let mut dialing = self.dialing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = dialing.get(key) {
            return d.clone();
        }
        let mut order: Vec<SocketAddr> = gateways.to_vec();
        fastrand::shuffle(&mut order);
        let suspect = self
            .suspect_gateway
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied();
        if let Some(pos) = suspect.and_then(|a| order.iter().position(|o| *o == a)) {
            let a = order.remove(pos);
            order.push(a);
        }
        let (tx, rx) = watch::channel(None);
        dialing.insert(key.to_owned(), rx.clone());
        let endpoint = self.endpoint.clone();
        let client = self.client.clone();
        let name = (self.config.server_name)(dc);
        let timeout = self.config.connect_timeout;
        let stats = Arc::clone(&self.stats);
        let dc = dc.to_owned();
        tokio::spawn(async move {
            let mut last = String::new();
            for addr in &order {
                match connect(&endpoint, &client, *addr, &name, timeout).await {
                    Ok(conn) => {
                        stats.connects.fetch_add(1, Ordering::Relaxed);
                        tx.send_replace(Some(Ok((*addr, conn))));
                        return;
                    }
                    Err(e) => {
                        stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                        // Counted; the caller hears of it only if every gateway fails.
                        debug!(%dc, gateway = %addr, error = %e, "tunnel connect failed");
                        last = e;
                    }
                }
            }
            tx.send_replace(Some(Err((order.len(), last))));
        });
        rx
    }

    /// The certificate of the gateway at `addr`, whose datacenter the caller does not know yet
    /// (joining through a gateway): one QUIC handshake from this tunnel's socket, with `client`
    /// (which checks the certificate against the name it holds itself; see
    /// `TlsMaterial::tunnel_discovery_client_config`), closed once done. Always over QUIC:
    /// a network that drops UDP needs the remote DC named in `peers`.
    pub async fn peer_certificate(
        &self,
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<rustls::pki_types::CertificateDer<'static>, TunnelError> {
        let unreachable = |last: String| TunnelError::Unreachable {
            dc: format!("the datacenter at {addr}"),
            tried: 1,
            last,
        };
        let mut tls = (*client).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| TunnelError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport(self.config.idle_timeout, 1));
        // The name is not what the certificate is checked against; any valid one will do.
        let conn = connect(
            &self.endpoint,
            &config,
            addr,
            "join.meridian",
            self.config.connect_timeout,
        )
        .await
        .map_err(unreachable)?;
        let leaf = conn
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| certs.first().cloned());
        conn.close(quinn::VarInt::from_u32(0), b"joined");
        leaf.ok_or_else(|| unreachable("it presented no certificate".into()))
    }

    /// Probes datacenter `dc`: one round trip over its tunnel (connected first if need be, to
    /// one of `gateways`). Not answered within `timeout` in all, the probe counts as failed for
    /// the connection: two failed in a row drop the pooled connection from the pool (streams on
    /// it carry on), so the next probe or stream tries afresh, on another gateway if that one
    /// died. The answer is still awaited until `patience` (at least `timeout`) and returned if
    /// it comes: a WAN whose round trip just grew past `timeout` is slow, not dead, and its
    /// late answers are what teach the caller the new round trip. With one gateway there is
    /// nowhere else to go, so a probe fails for the connection only at `patience`: a reconnect
    /// to the same gateway over a WAN that just slowed down costs round trips and gains none.
    pub async fn probe(
        &self,
        dc: &str,
        gateways: &[SocketAddr],
        timeout: Duration,
        patience: Duration,
    ) -> Result<Duration, TunnelError> {
        let key = dc.to_ascii_lowercase();
        let header = Header::probe(dc).encode()?;
        let patience = patience.max(timeout);
        let no_answer = || TunnelError::Unreachable {
            dc: dc.to_owned(),
            tried: 1,
            last: format!("no probe answer within {patience:?}"),
        };
        let pooled_at_start = self.pooled(&key);
        let attempt = self.probe_once(dc, &key, gateways, &header);
        tokio::pin!(attempt);
        // Connecting counts too: a probe that hung on a connect for seconds would leave the DC
        // without data-plane evidence, and its stream alone would then vouch for it (a one-way
        // cut lets the stream's heartbeats through). The caller sizes `timeout` to the RTT.
        let counted_at = if gateways.len() > 1 {
            timeout
        } else {
            patience
        };
        let started = tokio::time::Instant::now();
        let first = tokio::time::timeout(counted_at, &mut attempt).await;
        let retired = self.count_probe(&key, matches!(first, Ok(Ok(_))), pooled_at_start);
        if let Ok(ended) = first {
            // Answered, or failed outright: the attempt is over either way.
            return ended;
        }
        let Some(wait) = patience
            .checked_sub(started.elapsed())
            .filter(|w| !w.is_zero())
        else {
            return Err(no_answer());
        };
        if retired {
            // The gateway is taken for dead: ask the DC's next one now rather than at the next
            // probe, since the DC's silence is running.
            let retry = self.probe_once(dc, &key, gateways, &header);
            return match tokio::time::timeout(wait, retry).await {
                Ok(r) => r,
                Err(_) => Err(no_answer()),
            };
        }
        // Late: counted as failed above, yet evidence of life if it comes.
        match tokio::time::timeout(wait, attempt).await {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(no_answer()),
        }
    }

    /// One probe's round trip over a stream to `dc` (`key`, lowercased), with no timeout.
    async fn probe_once(
        &self,
        dc: &str,
        key: &str,
        gateways: &[SocketAddr],
        header: &[u8],
    ) -> Result<Duration, TunnelError> {
        let mut stream = self.open_stream(dc, key, gateways).await?;
        #[allow(clippy::disallowed_methods)] // A probe measures a real round trip.
        let start = std::time::Instant::now();
        header::send_probe(&mut stream, header).await?;
        let rtt = start.elapsed();
        let _ = stream.shutdown().await;
        Ok(rtt)
    }

    /// Counts a probe of the DC `key` that was answered in time (`ok`) or not, given the pooled
    /// connection and what it had received when the probe started (`at_start`), and retires
    /// the connection after [`RETIRE_AFTER_FAILED_PROBES`] failures in a row on it; returns
    /// whether it retired one.
    fn count_probe(&self, key: &str, ok: bool, at_start: Option<(usize, u64)>) -> bool {
        let now = self.pooled(key);
        let retire = {
            let mut failed = self
                .failed_probes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let run = failed.entry(key.to_owned()).or_insert(0);
            match (at_start, now) {
                _ if ok => {
                    *run = 0;
                    self.close_retired_elsewhere(key);
                    false
                }
                // Sent on a connection since retired or replaced: its failure says nothing of
                // the one pooled now. Probes overlap, so those sent to a gateway that died go
                // on failing after the next gateway answered, and counted they would retire it.
                (Some((was, _)), Some((is, _))) if was != is => false,
                (Some(_), None) => false,
                // Heard from since the probe began: the gateway is alive and the probe lost a
                // packet (or the WAN slowed down); retiring the connection would turn that into
                // a reconnect, which loses more.
                (Some((_, before)), Some((_, after))) if after != before => {
                    *run = 0;
                    false
                }
                _ => {
                    *run += 1;
                    *run >= RETIRE_AFTER_FAILED_PROBES && now.is_some()
                }
            }
        };
        if !retire {
            return false;
        }
        let removed = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.remove(key)
        };
        let Some((addr, conn)) = removed else {
            return false;
        };
        self.suspect_gateway
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), addr);
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        let list = retired.entry(key.to_owned()).or_default();
        list.retain(|c| c.close_reason().is_none());
        // Bounded: the oldest goes first (its streams have had the longest to end).
        if list.len() >= MAX_RETIRED {
            list.remove(0).close(quinn::VarInt::from_u32(1), b"retired");
        }
        list.push(conn);
        true
    }

    /// The connection pooled for the DC `key`, if any: its identity and the datagrams it has
    /// received.
    fn pooled(&self, key: &str) -> Option<(usize, u64)> {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns
            .get(key)
            .map(|(_, c)| (c.stable_id(), c.stats().udp_rx.datagrams))
    }

    /// The DC answered a probe on its pooled connection: connections retired to *other*
    /// gateways of it (silent through failed probes while this one answers) are to a dead
    /// gateway, not a lossy WAN. Closing them ends their streams now, so that their clients
    /// (federation streams among them) reconnect through the live gateway at once rather than
    /// at their idle timeouts.
    fn close_retired_elsewhere(&self, key: &str) {
        let live = {
            let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            match conns.get(key) {
                Some((addr, _)) => *addr,
                None => return,
            }
        };
        let dead: Vec<quinn::Connection> = {
            let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(list) = retired.get_mut(key) else {
                return;
            };
            let (gone, kept) = list.drain(..).partition(|c| c.remote_address() != live);
            *list = kept;
            gone
        };
        for conn in dead {
            if conn.close_reason().is_none() {
                info!(dc = %key, gateway = %conn.remote_address(), live = %live, "closing the tunnel to a gateway that went silent while another answers");
                conn.close(quinn::VarInt::from_u32(1), b"gateway unresponsive");
            }
        }
    }

    /// Closes the pooled connection to `dc`, and with it every stream on it: their clients see
    /// the connection end at once rather than at the idle timeout, and reconnect elsewhere.
    /// For a DC found dead; the next stream to it connects afresh.
    pub fn disconnect(&self, dc: &str) {
        let key = dc.to_ascii_lowercase();
        let removed = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.remove(&key)
        };
        let retired = {
            let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
            retired.remove(&key).unwrap_or_default()
        };
        let all = removed.map(|(_, c)| c).into_iter().chain(retired);
        for conn in all {
            info!(%dc, gateway = %conn.remote_address(), "closing the tunnel to a datacenter found down");
            conn.close(quinn::VarInt::from_u32(1), b"datacenter down");
        }
    }

    fn forget(&self, key: &str, conn: &quinn::Connection) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns
            .get(key)
            .is_some_and(|(_, c)| c.stable_id() == conn.stable_id())
        {
            conns.remove(key);
        }
    }

    /// Accepts connections from remote gateways until the endpoint closes, and hands each
    /// stream to `serve` with its peer. An unvalidated address is first sent a Retry (as
    /// `retry` says); at most `max_handshakes` handshakes run at once and a peer holds at most
    /// `max_connections_per_peer` connections; the rest are refused and counted.
    pub async fn accept<F, Fut>(self: Arc<Self>, serve: F)
    where
        F: Fn(PeerId, quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        while let Some(incoming) = self.endpoint.accept().await {
            let remote = incoming.remote_address();
            // Before any handshake work: a Retry costs one small packet and no state, and the
            // client comes back with a token proving it receives at its source address.
            let retry = match self.config.retry {
                RetryPolicy::Never => false,
                RetryPolicy::Always => true,
                RetryPolicy::UnderLoad => {
                    self.handshakes_in_progress() * 2 >= self.config.max_handshakes.max(1)
                }
            };
            if retry && !incoming.remote_address_validated() {
                match incoming.retry() {
                    Ok(()) => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    // Only for a validated address, which was checked above.
                    Err(e) => e.into_incoming().ignore(),
                }
                continue;
            }
            let Ok(handshake) = Arc::clone(&self.handshakes).try_acquire_owned() else {
                // Refused with a close, not silently dropped: a real peer tries another gateway
                // or again, rather than waiting out its connect timeout.
                incoming.refuse();
                self.stats.over_handshakes.fetch_add(1, Ordering::Relaxed);
                debug!(%remote, "tunnel connection refused: too many handshakes in progress");
                continue;
            };
            let tunnel = self.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                // Bounded in time as well as in number: a handshake that stalls gives its slot
                // back at the connect timeout rather than at the idle timeout.
                let handshake_done =
                    tokio::time::timeout(tunnel.config.connect_timeout, incoming).await;
                drop(handshake);
                let conn = match handshake_done {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tunnel.stats.refused.fetch_add(1, Ordering::Relaxed);
                        info!(%remote, error = %e, "tunnel connection refused");
                        return;
                    }
                    Err(_) => {
                        tunnel.stats.refused.fetch_add(1, Ordering::Relaxed);
                        info!(%remote, "tunnel connection refused: handshake timed out");
                        return;
                    }
                };
                let peer = PeerId::of(&conn);
                let Some(_peer_slot) = tunnel.peer_conns.try_acquire(peer.clone()) else {
                    tunnel
                        .stats
                        .over_peer_connections
                        .fetch_add(1, Ordering::Relaxed);
                    info!(%remote, "tunnel connection closed: this peer holds too many");
                    conn.close(quinn::VarInt::from_u32(2), b"too many connections");
                    return;
                };
                debug!(%remote, "tunnel connection accepted");
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tunnel.stats.streams_in.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve(peer.clone(), send, recv));
                }
            });
        }
    }

    /// Closes every connection and the socket.
    pub fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
    }

    /// Describes the tunnel's counters and live connections on `enc`. Crate-private: the node
    /// registers them with the gateway's, as one `GatewayMetrics`.
    pub(crate) fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        metrics::counters(
            enc,
            &[
                (
                    "meridian_gateway_tunnel_connects",
                    "QUIC connections established to remote gateways.",
                    load(&s.connects),
                ),
                (
                    "meridian_gateway_tunnel_connect_failures",
                    "QUIC connection attempts to remote gateways that failed.",
                    load(&s.connect_failures),
                ),
                (
                    "meridian_gateway_tunnel_streams_out",
                    "Client connections tunnelled to remote gateways.",
                    load(&s.streams_out),
                ),
                (
                    "meridian_gateway_tunnel_streams_in",
                    "Tunnelled connections accepted from remote gateways.",
                    load(&s.streams_in),
                ),
                (
                    "meridian_gateway_tunnel_refused",
                    "Incoming QUIC connections refused (handshake failed).",
                    load(&s.refused),
                ),
                (
                    "meridian_gateway_tunnel_retries",
                    "Incoming QUIC connections sent a Retry to validate their address.",
                    load(&s.retries),
                ),
            ],
        )?;
        metrics::counter_by(
            enc,
            "meridian_gateway_tunnel_limited",
            "Incoming QUIC connections refused by a cap: handshakes (gateway.max_tunnel_handshakes in progress) or peer_connections (the peer held gateway.max_tunnel_connections_per_peer).",
            [
                ("handshakes", load(&s.over_handshakes)),
                ("peer_connections", load(&s.over_peer_connections)),
            ]
            .map(|(limit, n)| ([("limit", limit)], n)),
        )?;
        metrics::gauge_by(
            enc,
            "meridian_gateway_tunnel_up",
            "1 per remote datacenter with a live QUIC connection, labelled with the gateway it goes to.",
            self.connections()
                .into_iter()
                .map(|(dc, addr)| ([("dc", dc), ("gateway", addr.to_string())], 1u32)),
        )
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
