//! Local passthrough: accept a TCP connection, read its ClientHello within a byte bound and a
//! timeout, route the SNI to a healthy local instance, replay the bytes read, then copy both ways
//! until both sides have closed (half-close honoured). TLS is never terminated.
//!
//! Instances are chosen by power of two choices on the connections this gateway has open to
//! each; a connect that fails or times out moves on to the next candidate before the client
//! notices. Remote datacenters (the QUIC tunnel) are not handled here yet.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use meridian_topology::names::pattern_matches;
use meridian_topology::{ResolveError, View, resolve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span, warn};

use crate::client_hello::{self, HelloError, MAX_HELLO};
use crate::counters::GatewayCounters;
use crate::tunnel::{Header, PROBE_ANSWER, Tunnel, TunnelError};

/// Where a name goes.
enum Target {
    /// Instances of this datacenter.
    Local(Vec<SocketAddr>),
    /// Another datacenter, through one of its gateways.
    Remote {
        /// The datacenter.
        dc: String,
        /// Its gateways' tunnel addresses.
        gateways: Vec<SocketAddr>,
    },
}
use crate::names::{NameConfig, UnknownName, route};

/// Settings of the local passthrough; none of the limits is hard-coded.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Which names are routed.
    pub names: NameConfig,
    /// How long a client has to send its whole ClientHello (cuts slowloris clients).
    pub handshake_timeout: Duration,
    /// How long one connect to an instance may take before the next one is tried.
    pub connect_timeout: Duration,
    /// Route only to instances whose checks pass (leave `warning` ones out).
    pub only_passing: bool,
    /// A relayed connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Services other datacenters may reach through the tunnel (names or `prefix*`, as
    /// federation's export policy); `None`: every service.
    pub export: Option<Vec<String>>,
}

/// Why a connection was closed without being relayed; each variant is a stable log reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The client did not send a routable ClientHello.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// The ClientHello did not arrive within the handshake timeout.
    #[error("no ClientHello within the handshake timeout")]
    HandshakeTimeout,
    /// The client closed before its ClientHello was complete.
    #[error("the client closed during the ClientHello")]
    ClientClosed,
    /// The SNI is not a name the gateway routes.
    #[error(transparent)]
    UnknownName(#[from] UnknownName),
    /// The name is a service, but it resolved to nothing.
    #[error("{sni}: {error}")]
    Resolve {
        /// The name asked for.
        sni: String,
        /// Why it resolved to nothing.
        error: ResolveError,
    },
    /// The name resolved to another datacenter, and this gateway has no tunnel.
    #[error("{sni} resolved to remote datacenter {dc}, but the tunnel is off")]
    Remote {
        /// The name asked for.
        sni: String,
        /// The datacenter it resolved to.
        dc: String,
    },
    /// Every candidate instance refused or timed out.
    #[error("no instance of {sni} accepted a connection ({tried} tried)")]
    NoInstance {
        /// The name asked for.
        sni: String,
        /// How many instances were tried.
        tried: usize,
    },
    /// The tunnel to the remote datacenter could not carry the connection.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// A tunnelled stream named a datacenter other than this one (never relayed further).
    #[error("a tunnelled stream for datacenter {0} reached this one")]
    WrongDc(String),
    /// A tunnelled stream's header was malformed or late.
    #[error("bad tunnel header: {0}")]
    BadHeader(String),
    /// A tunnelled stream asked for a service this datacenter does not export.
    #[error("service {0} is not exported to other datacenters")]
    NotExported(String),
    /// Reading from or writing to a socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl ConnError {
    /// A short, stable name for the outcome, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnError::Hello(e) => e.reason(),
            ConnError::HandshakeTimeout => "handshake_timeout",
            ConnError::ClientClosed => "client_closed",
            ConnError::UnknownName(e) => e.reason(),
            ConnError::Resolve { .. } => "no_healthy_instance",
            ConnError::Remote { .. } => "remote",
            ConnError::NoInstance { .. } => "connect_failed",
            ConnError::Tunnel(TunnelError::Busy(_)) => "tunnel_busy",
            ConnError::Tunnel(TunnelError::NoGateway(_)) => "no_remote_gateway",
            ConnError::Tunnel(_) => "tunnel_failed",
            ConnError::WrongDc(_) => "wrong_dc",
            ConnError::BadHeader(_) => "bad_tunnel_header",
            ConnError::NotExported(_) => "not_exported",
            ConnError::Io(_) => "io",
        }
    }

    /// The TLS alert to send before closing, where the client spoke TLS (RFC 8446 6.2).
    fn alert(&self) -> Option<u8> {
        const UNRECOGNIZED_NAME: u8 = 112;
        const INTERNAL_ERROR: u8 = 80;
        match self {
            ConnError::Hello(
                HelloError::NoSni | HelloError::InvalidSni { .. } | HelloError::DuplicateSni,
            )
            | ConnError::UnknownName(_) => Some(UNRECOGNIZED_NAME),
            ConnError::Resolve { .. }
            | ConnError::Remote { .. }
            | ConnError::NoInstance { .. }
            | ConnError::Tunnel(_) => Some(INTERNAL_ERROR),
            _ => None,
        }
    }
}

/// Open connections per instance address, for power of two choices.
#[derive(Debug, Default)]
struct Load(Mutex<HashMap<SocketAddr, usize>>);

impl Load {
    fn open(&self, addr: SocketAddr) -> usize {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&addr).copied().unwrap_or(0)
    }

    fn acquire(self: &Arc<Self>, addr: SocketAddr) -> LoadGuard {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry(addr).or_insert(0) += 1;
        LoadGuard {
            load: Arc::clone(self),
            addr,
        }
    }
}

/// Counts one open connection to an instance until dropped.
struct LoadGuard {
    load: Arc<Load>,
    addr: SocketAddr,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut map = self.load.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

/// The local passthrough gateway over a live view.
#[derive(Debug)]
pub struct LocalGateway {
    view: Arc<ArcSwap<View>>,
    config: LocalConfig,
    load: Arc<Load>,
    counters: Arc<GatewayCounters>,
    tunnel: Option<Arc<Tunnel>>,
}

impl LocalGateway {
    /// A gateway routing over the view the caller keeps current.
    pub fn new(view: Arc<ArcSwap<View>>, config: LocalConfig) -> Self {
        LocalGateway {
            view,
            config,
            load: Arc::default(),
            counters: Arc::default(),
            tunnel: None,
        }
    }

    /// This gateway, sending names of other datacenters through `tunnel`.
    pub fn with_tunnel(mut self, tunnel: Arc<Tunnel>) -> Self {
        let _ = self.counters.tunnel.set(tunnel.clone());
        self.tunnel = Some(tunnel);
        self
    }

    /// The gateway's counters.
    pub fn counters(&self) -> &Arc<GatewayCounters> {
        &self.counters
    }

    /// Accepts connections until the listener's task is dropped, one task each, at most
    /// `max_connections` at once.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.config.max_connections.max(1),
        ));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return Ok(());
            };
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                // Per-connection errors (ECONNABORTED, EMFILE) must not end the listener.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Without it, the backend's small TLS records wait for the client's delayed ACK
            // (Nagle), up to 40 ms each on Linux, or a whole round trip across a WAN hop.
            if let Err(e) = client.set_nodelay(true) {
                debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let gw = Arc::clone(&self);
            let span = info_span!("conn", %peer, sni = tracing::field::Empty);
            tokio::spawn(
                async move {
                    let _slot = slot;
                    gw.counters.open.fetch_add(1, Ordering::Relaxed);
                    match gw.handle(client).await {
                        Ok((route, up, down)) => {
                            gw.counters.record(route, "relayed");
                            debug!(route, up, down, "closed");
                        }
                        Err(e) => {
                            let route = match &e {
                                ConnError::NoInstance { .. } | ConnError::Io(_) => "local",
                                ConnError::Remote { .. } | ConnError::Tunnel(_) => "remote",
                                _ => "none",
                            };
                            if matches!(e, ConnError::Hello(_)) {
                                gw.counters.hello_failures.fetch_add(1, Ordering::Relaxed);
                            }
                            gw.counters.record(route, e.reason());
                            debug!(reason = e.reason(), error = %e, "refused");
                        }
                    }
                    gw.counters.open.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(span),
            );
        }
    }

    /// Relays one client connection; returns the route (`local` or `remote`) and the bytes
    /// copied (client to instance, and back, the ClientHello included).
    pub async fn handle(
        &self,
        mut client: TcpStream,
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let result = self.relay(&mut client).await;
        if let Err(e) = &result
            && let Some(alert) = e.alert()
        {
            // Best effort: the client may be gone already.
            let _ = client.write_all(&[21, 3, 3, 0, 2, 2, alert]).await;
            let _ = client.shutdown().await;
        }
        result
    }

    async fn relay(&self, client: &mut TcpStream) -> Result<(&'static str, u64, u64), ConnError> {
        let (buf, sni) = tokio::time::timeout(self.config.handshake_timeout, read_hello(client))
            .await
            .map_err(|_| ConnError::HandshakeTimeout)??;
        tracing::Span::current().record("sni", sni.as_str());
        self.counters
            .bytes_up
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        // A remote gateway's TCP-fallback tunnel names this gateway's own server name.
        if let Some(tunnel) = &self.tunnel
            && sni.eq_ignore_ascii_case(tunnel.own_name())
        {
            let tls = tokio::time::timeout(
                self.config.handshake_timeout,
                tunnel.accept_tcp(buf, &mut *client),
            )
            .await
            .map_err(|_| ConnError::HandshakeTimeout)?
            .map_err(|e| ConnError::BadHeader(format!("tunnel TLS: {e}")))?;
            return Ok(match self.serve_tunnel_stream(tls).await? {
                Some((up, down)) => ("tunnelled_in", up, down),
                None => ("tunnelled_in_probe", 0, 0),
            });
        }
        match self.target(&sni, false)? {
            Target::Local(candidates) => self.relay_local(client, &sni, candidates, &buf).await,
            Target::Remote {
                mut dc,
                mut gateways,
            } => {
                let Some(tunnel) = &self.tunnel else {
                    return Err(ConnError::Remote { sni, dc });
                };
                let mut rescues = 0;
                let (mut remote, _permit, answer) = loop {
                    let attempt = async {
                        let (mut remote, permit) = tunnel.open(&dc, &gateways).await?;
                        let mut first = Header {
                            name: sni.clone(),
                            dc: dc.clone(),
                        }
                        .encode()
                        .ok_or_else(|| ConnError::BadHeader("name too long".into()))?;
                        // Header and ClientHello in one write: one frame, one packet across the
                        // WAN.
                        first.extend_from_slice(&buf);
                        let answer = tokio::time::timeout(
                            self.config.idle_timeout,
                            first_answer(&mut remote, &first),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
                        })?;
                        Ok::<_, ConnError>((remote, permit, answer))
                    };
                    let error = match attempt.await {
                        Ok(done) => break done,
                        Err(e) => e,
                    };
                    // Nothing reached the client yet: if the name now resolves elsewhere (the DC
                    // was just found down), replay the ClientHello there.
                    let next = self.target(&sni, false)?;
                    let moved = match &next {
                        Target::Remote { dc: d, .. } => !d.eq_ignore_ascii_case(&dc),
                        Target::Local(_) => true,
                    };
                    if !moved || rescues == MAX_RESCUES {
                        return Err(error);
                    }
                    rescues += 1;
                    self.counters.rescues.fetch_add(1, Ordering::Relaxed);
                    debug!(%dc, error = %error, "remote DC did not answer; sending the connection where the name resolves now");
                    match next {
                        Target::Remote { dc: d, gateways: g } => (dc, gateways) = (d, g),
                        Target::Local(candidates) => {
                            return self.relay_local(client, &sni, candidates, &buf).await;
                        }
                    }
                };
                client.write_all(&answer).await?;
                self.counters
                    .bytes_down
                    .fetch_add(answer.len() as u64, Ordering::Relaxed);
                let (up, down) = crate::relay::copy_both(
                    client,
                    &mut remote,
                    self.config.idle_timeout,
                    &self.counters,
                )
                .await?;
                Ok(("remote", up + buf.len() as u64, down + answer.len() as u64))
            }
        }
    }

    /// Connects to one of the local `candidates`, replays the ClientHello `hello` and relays
    /// `client` to it until both sides close.
    async fn relay_local(
        &self,
        client: &mut TcpStream,
        sni: &str,
        candidates: Vec<SocketAddr>,
        hello: &[u8],
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let (mut backend, _guard) = self.connect(sni, candidates).await?;
        backend.write_all(hello).await?;
        let (up, down) = crate::relay::copy_both(
            client,
            &mut backend,
            self.config.idle_timeout,
            &self.counters,
        )
        .await?;
        Ok(("local", up + hello.len() as u64, down))
    }

    /// Serves one QUIC stream a remote gateway tunnelled here.
    pub async fn serve_tunnelled(&self, send: quinn::SendStream, recv: quinn::RecvStream) {
        let span = info_span!("tunnelled", sni = tracing::field::Empty);
        let result = self
            .serve_tunnel_stream(tokio::io::join(recv, send))
            .instrument(span)
            .await;
        match result {
            Ok(Some((up, down))) => {
                self.counters.record("tunnelled_in", "relayed");
                debug!(up, down, "tunnelled stream closed");
            }
            Ok(None) => self.counters.record("tunnelled_in", "probe"),
            Err(e) => {
                self.counters.record("tunnelled_in", e.reason());
                debug!(reason = e.reason(), error = %e, "tunnelled stream refused");
            }
        }
    }

    /// Reads a tunnelled connection's header, then relays it to an instance of this datacenter,
    /// never further.
    /// A header without a name is a liveness probe: answered with one byte, `Ok(None)`.
    async fn serve_tunnel_stream<S>(&self, mut stream: S) -> Result<Option<(u64, u64)>, ConnError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let header = tokio::time::timeout(self.config.handshake_timeout, Header::read(&mut stream))
            .await
            .map_err(|_| ConnError::HandshakeTimeout)?
            .map_err(|e| ConnError::BadHeader(e.to_string()))?;
        tracing::Span::current().record("sni", header.name.as_str());
        let local = self.view.load().datacenter().to_owned();
        if !header.dc.eq_ignore_ascii_case(&local) {
            return Err(ConnError::WrongDc(header.dc));
        }
        if header.name.is_empty() {
            stream.write_all(&[PROBE_ANSWER]).await?;
            stream.shutdown().await?;
            return Ok(None);
        }
        if let Some(export) = &self.config.export {
            let service = route(&header.name, &self.config.names)?.service;
            if !export.iter().any(|p| pattern_matches(p, service)) {
                return Err(ConnError::NotExported(service.to_owned()));
            }
        }
        let Target::Local(candidates) = self.target(&header.name, true)? else {
            return Err(ConnError::WrongDc(header.dc));
        };
        let (mut backend, _guard) = self.connect(&header.name, candidates).await?;
        let copied = crate::relay::copy_both(
            &mut stream,
            &mut backend,
            self.config.idle_timeout,
            &self.counters,
        )
        .await?;
        Ok(Some(copied))
    }

    /// Where the SNI goes: healthy local instances, or a remote DC and its gateways.
    /// `local_only` (tunnelled streams) resolves in this datacenter whatever the name says.
    fn target(&self, sni: &str, local_only: bool) -> Result<Target, ConnError> {
        let r = route(sni, &self.config.names)?;
        let view = self.view.load();
        let mut query = r.query(self.config.only_passing);
        if local_only {
            query.dc = Some(view.datacenter());
        }
        let resolution = resolve(&view, &query).map_err(|error| ConnError::Resolve {
            sni: sni.to_owned(),
            error,
        })?;
        let state = resolution.state;
        // The data plane does no DNS lookups: an address that is not an IP is skipped.
        let socket =
            |addr: &str, port: u16| Some(SocketAddr::new(addr.parse::<IpAddr>().ok()?, port));
        if resolution.dc != view.datacenter() {
            return Ok(Target::Remote {
                dc: resolution.dc.to_owned(),
                gateways: state.gateway_addrs(),
            });
        }
        Ok(Target::Local(
            resolution
                .instances
                .iter()
                .filter_map(|(inst, _)| socket(state.address_of(inst), inst.port))
                .collect(),
        ))
    }

    /// Connects to one of `candidates`, by power of two choices, trying the others on failure.
    async fn connect(
        &self,
        sni: &str,
        mut candidates: Vec<SocketAddr>,
    ) -> Result<(TcpStream, LoadGuard), ConnError> {
        let mut tried = 0;
        while !candidates.is_empty() {
            let i = self.pick(&candidates);
            let addr = candidates.swap_remove(i);
            tried += 1;
            let guard = self.load.acquire(addr);
            match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr)).await
            {
                Ok(Ok(stream)) => {
                    // Small writes (the hello, interactive protocols) go out at once.
                    stream.set_nodelay(true)?;
                    return Ok((stream, guard));
                }
                Ok(Err(e)) => debug!(%addr, error = %e, "connect failed, trying the next instance"),
                Err(_) => debug!(%addr, "connect timed out, trying the next instance"),
            }
        }
        Err(ConnError::NoInstance {
            sni: sni.to_owned(),
            tried,
        })
    }

    /// Power of two choices: of two distinct random candidates, the one with fewer open
    /// connections.
    fn pick(&self, candidates: &[SocketAddr]) -> usize {
        let n = candidates.len();
        if n < 2 {
            return 0;
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        if self.load.open(candidates[b]) < self.load.open(candidates[a]) {
            b
        } else {
            a
        }
    }
}

/// Reads until the buffer holds a whole ClientHello, never more than [`MAX_HELLO`] bytes.
async fn read_hello(client: &mut TcpStream) -> Result<(Vec<u8>, String), ConnError> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        if let Some(hello) = client_hello::parse(&buf)? {
            return Ok((buf, hello.sni));
        }
        // `parse` answers TooLarge once the bound is reached, so there is always room here.
        let have = buf.len();
        buf.resize(MAX_HELLO.min(have + 4096), 0);
        let n = client.read(&mut buf[have..]).await?;
        buf.truncate(have + n);
        if n == 0 {
            return Err(ConnError::ClientClosed);
        }
    }
}

/// Most times a connection to another DC that never answered is resolved and sent again.
const MAX_RESCUES: usize = 2;

/// Writes `first` (header and ClientHello) to a tunnel stream and waits for the remote side's
/// first bytes. Until they come the client has received nothing, so a stream that fails here can
/// still be sent elsewhere with the same ClientHello.
async fn first_answer<S>(remote: &mut S, first: &[u8]) -> io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    remote.write_all(first).await?;
    let mut answer = Vec::with_capacity(crate::relay::BUF);
    if remote.read_buf(&mut answer).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the remote side closed without answering",
        ));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::dc::DcState;
    use meridian_topology::{Instance, Weights};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{
        ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
    };
    use std::io::{Read, Write};

    const NAME: &str = "web.service.consul";

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn view(ports: &[u16]) -> View {
        let mut s = DcState::default();
        for (i, port) in ports.iter().enumerate() {
            let inst = Instance {
                id: format!("web-{i}"),
                service: "web".into(),
                node: "n1".into(),
                address: "127.0.0.1".into(),
                port: *port,
                tags: vec![],
                meta: Default::default(),
                weights: Weights::default(),
                create_index: 0,
                modify_index: 0,
            };
            s.register(inst, vec![], i as u64 + 1);
        }
        View::new("dc1", s)
    }

    fn config(handshake_timeout: Duration) -> LocalConfig {
        LocalConfig {
            names: NameConfig {
                domains: vec!["consul".into()],
                trust_domain: None,
            },
            handshake_timeout,
            connect_timeout: Duration::from_secs(2),
            only_passing: false,
            idle_timeout: Duration::from_secs(30),
            max_connections: 64,
            export: None,
        }
    }

    #[tokio::test]
    async fn tunnelled_streams_reach_only_exported_services() {
        let (backend, _) = tls_backend();
        let gw = |export: Option<Vec<String>>| {
            let mut c = config(Duration::from_secs(5));
            c.export = export;
            LocalGateway::new(Arc::new(ArcSwap::from_pointee(view(&[backend.port()]))), c)
        };
        let header = crate::tunnel::Header {
            name: NAME.into(),
            dc: "dc1".into(),
        }
        .encode()
        .expect("header");
        let stream = |first: &[u8]| {
            let (mut near, far) = tokio::io::duplex(4096);
            let first = first.to_vec();
            tokio::spawn(async move {
                let _ = near.write_all(&first).await;
                let _ = near.shutdown().await;
                let mut sink = Vec::new();
                let _ = near.read_to_end(&mut sink).await;
            });
            far
        };
        let private = gw(Some(vec!["api*".into()]));
        let err = private
            .serve_tunnel_stream(stream(&header))
            .await
            .expect_err("web is not exported");
        assert_eq!(err.reason(), "not_exported");
        let mut first = header.clone();
        first.extend_from_slice(&hello_for(NAME));
        let open = gw(Some(vec!["web".into()]));
        let relayed = open
            .serve_tunnel_stream(stream(&first))
            .await
            .expect("web is exported");
        assert!(relayed.is_some());
    }

    /// A rustls server holding a self-signed certificate for `NAME`: answers `pong:` and the
    /// first four bytes it reads, then closes. Returns its address and the certificate.
    fn tls_backend() -> (SocketAddr, CertificateDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).expect("cert");
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let conn = ServerConnection::new(config).expect("server conn");
                    let mut tls = StreamOwned::new(conn, sock);
                    let mut ping = [0u8; 4];
                    if tls.read_exact(&mut ping).is_ok() {
                        let _ = tls.write_all(b"pong:");
                        let _ = tls.write_all(&ping);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        (addr, cert)
    }

    /// A rustls client trusting only `root`: sends `ping` to `name` through `addr` and reads
    /// the answer to the end. Blocking.
    fn tls_client(
        addr: SocketAddr,
        name: &str,
        root: CertificateDer<'static>,
    ) -> io::Result<Vec<u8>> {
        let mut roots = RootCertStore::empty();
        roots.add(root).map_err(io::Error::other)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned()).map_err(io::Error::other)?;
        let conn = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
        let sock = std::net::TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = StreamOwned::new(conn, sock);
        tls.write_all(b"ping")?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out)?;
        Ok(out)
    }

    /// A port on loopback where nothing listens: connects are refused.
    fn refused_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    async fn start(view: View, handshake_timeout: Duration) -> (SocketAddr, Arc<LocalGateway>) {
        let gw = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view)),
            config(handshake_timeout),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(Arc::clone(&gw).serve(listener));
        (addr, gw)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passthrough_verifies_the_backend_certificate_end_to_end() {
        let (backend, cert) = tls_backend();
        // A dead instance next to the live one: refused connects move on to the next candidate.
        let (gw, _) = start(
            view(&[refused_port(), backend.port()]),
            Duration::from_secs(5),
        )
        .await;
        for _ in 0..8 {
            let cert = cert.clone();
            let out = tokio::task::spawn_blocking(move || tls_client(gw, NAME, cert))
                .await
                .expect("join")
                .expect("TLS through the gateway");
            assert_eq!(out, b"pong:ping");
        }
        // The same backend under a name it holds no certificate for: the gateway routes it
        // (a tag-less alias), but the client's check fails, because nothing in between
        // terminated TLS.
        let err =
            tokio::task::spawn_blocking(move || tls_client(gw, "web.service.dc1.consul", cert))
                .await
                .expect("join")
                .expect_err("certificate is for another name");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    /// A connected pair: the client side and the gateway's handling of the server side.
    async fn pair(
        gw: Arc<LocalGateway>,
    ) -> (
        TcpStream,
        tokio::task::JoinHandle<Result<(u64, u64), ConnError>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (
            client,
            tokio::spawn(async move { gw.handle(server).await.map(|(_, up, down)| (up, down)) }),
        )
    }

    /// The first flight of a rustls client for `name`.
    fn hello_for(name: &str) -> Vec<u8> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("write_tls");
        out
    }

    async fn refused(gw: &Arc<LocalGateway>, send: &[u8]) -> (String, Vec<u8>) {
        let (mut client, task) = pair(Arc::clone(gw)).await;
        client.write_all(send).await.expect("write");
        let err = task.await.expect("join").expect_err("refused");
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        (err.reason().to_owned(), got)
    }

    #[tokio::test]
    async fn refusals_close_cleanly_with_an_alert_where_tls() {
        let (backend, _) = tls_backend();
        let gw = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[backend.port()]))),
            config(Duration::from_secs(5)),
        ));
        let unrecognized_name = vec![21, 3, 3, 0, 2, 2, 112];
        let internal_error = vec![21, 3, 3, 0, 2, 2, 80];
        assert_eq!(
            refused(&gw, b"GET / HTTP/1.1\r\n\r\n").await,
            ("not_tls".to_owned(), vec![])
        );
        assert_eq!(
            refused(&gw, &hello_for("example.com")).await,
            ("not_ours".to_owned(), unrecognized_name.clone())
        );
        assert_eq!(
            refused(&gw, &hello_for("n1.node.consul")).await,
            ("not_a_service".to_owned(), unrecognized_name.clone())
        );
        assert_eq!(
            refused(&gw, &hello_for("127.0.0.1")).await,
            ("no_sni".to_owned(), unrecognized_name)
        );
        assert_eq!(
            refused(&gw, &hello_for("api.service.consul")).await,
            ("no_healthy_instance".to_owned(), internal_error.clone())
        );
        let dead = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[
                refused_port(),
                refused_port(),
            ]))),
            config(Duration::from_secs(5)),
        ));
        assert_eq!(
            refused(&dead, &hello_for(NAME)).await,
            ("connect_failed".to_owned(), internal_error)
        );
        let (mut client, task) = pair(Arc::clone(&dead)).await;
        client.write_all(&[22, 3]).await.expect("write");
        drop(client);
        let err = task.await.expect("join").expect_err("refused");
        assert_eq!(err.reason(), "client_closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_lets_the_backend_answer_after_the_client_is_done() {
        // A backend that reads until the client's EOF, then answers with what it got: it only
        // works if the gateway passes the client's FIN on and keeps the other direction open.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            sock.read_to_end(&mut got).await.expect("read");
            let answer = format!("got {} bytes", got.len());
            sock.write_all(answer.as_bytes()).await.expect("write");
        });
        let (gw, _) = start(view(&[backend.port()]), Duration::from_secs(5)).await;
        let mut sent = hello_for(NAME);
        sent.extend_from_slice(&[23; 100_000]);
        let mut client = TcpStream::connect(gw).await.expect("connect");
        client.write_all(&sent).await.expect("write");
        client.shutdown().await.expect("half-close");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert_eq!(answer, format!("got {} bytes", sent.len()));
    }

    #[tokio::test]
    async fn slowloris_is_cut_at_the_handshake_timeout() {
        let gw = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[]))),
            config(Duration::from_millis(300)),
        ));
        let hello = hello_for(NAME);
        let (mut client, task) = pair(gw).await;
        let started = std::time::Instant::now();
        // One byte every 50 ms: the whole hello would take many seconds.
        let writer = tokio::spawn(async move {
            for b in hello {
                if client.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let err = task.await.expect("join").expect_err("cut");
        assert_eq!(err.reason(), "handshake_timeout");
        assert!(started.elapsed() < Duration::from_secs(2));
        writer.abort();
    }
}
