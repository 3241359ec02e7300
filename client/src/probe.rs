//! The drill's probe client: what a client in one datacenter sees. It learns each node's
//! datacenter and DNS and gateway addresses from `GET /v1/agent/self`, maps instance addresses to
//! datacenters from `GET /v1/health/service/<service>?dc=<dc>`, resolves `<service>.service.<domain>`
//! (SRV over UDP) at a DC's DNS server, completes a TLS handshake through a DC's gateway with the
//! service name as SNI, and reads a DC's view of every datacenter from
//! `GET /v1/federation/datacenters`.
//!
//! Every call has a timeout and talks only to addresses the operator gave (or that those nodes
//! reported about themselves). The benchmark (`meridian-bench failover`) uses the same client.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_net::proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_net::proto::rr::{Name, RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, timeout};

pub use crate::api::{HTTP_TIMEOUT, Http, base_url};
use crate::error::ClientError;

/// Bound on one DNS exchange.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on one TCP connect plus TLS handshake through a gateway.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one status read inside a probe round.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// One node, as it describes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Base URL of its HTTP API, as given.
    pub base: String,
    /// Its datacenter.
    pub dc: String,
    /// Its node name.
    pub node: String,
    /// Its DNS server (UDP).
    pub dns: SocketAddr,
    /// Its gateway, when it runs one.
    pub gateway: Option<SocketAddr>,
}

impl NodeInfo {
    /// The URL of `path` on this node's API.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Asks the node at `addr` (`host:port` or URL) who it is (`GET /v1/agent/self`).
pub async fn discover(http: &Http, addr: &str) -> Result<NodeInfo, ClientError> {
    let base = base_url(addr);
    let v = http
        .get_json(&format!("{base}/v1/agent/self"), HTTP_TIMEOUT)
        .await
        .map_err(|e| ClientError::NodeUnreachable {
            base: base.clone(),
            source: Box::new(e),
        })?;
    node_from_self(&base, &v).await
}

/// Builds a [`NodeInfo`] from an `/v1/agent/self` answer of the node at `base`.
async fn node_from_self(base: &str, v: &Value) -> Result<NodeInfo, ClientError> {
    let incomplete = |problem| ClientError::IncompleteAnswer {
        url: format!("{base}/v1/agent/self"),
        problem,
    };
    let dc = v["Config"]["Datacenter"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| incomplete("has no Config.Datacenter"))?
        .to_ascii_lowercase();
    let node = v["Config"]["NodeName"].as_str().unwrap_or("").to_owned();
    let m = &v["Meridian"];
    if !m.is_object() {
        return Err(incomplete(
            "has no \"Meridian\" object with the DNS and gateway addresses (a node of an older \
             version?)",
        ));
    }
    let field_error = |field, e| ClientError::NodeAddress {
        base: base.to_owned(),
        field,
        source: Box::new(e),
    };
    let dns_text = m["DnsAddr"]
        .as_str()
        .ok_or_else(|| incomplete("has no Meridian.DnsAddr"))?;
    let dns = reachable(base, dns_text)
        .await
        .map_err(|e| field_error("Meridian.DnsAddr", e))?;
    let gateway = match m["GatewayAddr"].as_str() {
        Some(g) => Some(
            reachable(base, g)
                .await
                .map_err(|e| field_error("Meridian.GatewayAddr", e))?,
        ),
        None => None,
    };
    Ok(NodeInfo {
        base: base.to_owned(),
        dc,
        node,
        dns,
        gateway,
    })
}

/// `addr` as reported by the node at `base`; a wildcard address (`0.0.0.0`, `::`) becomes the
/// address the node's API was reached at.
async fn reachable(base: &str, addr: &str) -> Result<SocketAddr, ClientError> {
    let sa: SocketAddr = addr.parse().map_err(|e| ClientError::InvalidAddress {
        text: addr.to_owned(),
        source: e,
    })?;
    if !sa.ip().is_unspecified() {
        return Ok(sa);
    }
    let authority = base.split("://").nth(1).unwrap_or(base);
    let authority = authority.split('/').next().unwrap_or(authority);
    let unresolved = |source| ClientError::Resolve {
        host: authority.to_owned(),
        source,
    };
    let found = timeout(HTTP_TIMEOUT, tokio::net::lookup_host(authority))
        .await
        .map_err(|_| {
            unresolved(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {HTTP_TIMEOUT:?}"),
            ))
        })?
        .map_err(unresolved)?
        .next()
        .ok_or_else(|| {
            unresolved(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })?;
    Ok(SocketAddr::new(found.ip(), sa.port()))
}

/// Which datacenter each instance address belongs to, from the health endpoint of each DC.
#[derive(Clone, Debug, Default)]
pub struct InstanceMap {
    /// `(address, port)` to the DCs holding an instance there (one, unless addresses collide).
    by_addr: HashMap<(IpAddr, u16), BTreeSet<String>>,
    /// Instances per DC.
    count: BTreeMap<String, usize>,
    /// The DNS domain, to read the DC out of an SRV target as a last resort.
    domain: String,
}

impl InstanceMap {
    /// An empty map for names in `domain`.
    pub fn new(domain: &str) -> Self {
        InstanceMap {
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            ..InstanceMap::default()
        }
    }

    /// Adds the entries of a `/v1/health/service/<service>?dc=<dc>` answer; returns how many
    /// instances had an IP address.
    pub fn add_health(&mut self, dc: &str, health: &Value) -> usize {
        let mut n = 0;
        for e in health.as_array().into_iter().flatten() {
            let svc_addr = e["Service"]["Address"].as_str().unwrap_or("");
            let addr = if svc_addr.is_empty() {
                e["Node"]["Address"].as_str().unwrap_or("")
            } else {
                svc_addr
            };
            let port = e["Service"]["Port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok());
            if let (Ok(ip), Some(port)) = (addr.parse::<IpAddr>(), port) {
                self.add(dc, ip, port);
                n += 1;
            }
        }
        n
    }

    /// Records an instance of `dc` at `ip:port`.
    pub fn add(&mut self, dc: &str, ip: IpAddr, port: u16) {
        let dc = dc.to_ascii_lowercase();
        *self.count.entry(dc.clone()).or_default() += 1;
        self.by_addr.entry((ip, port)).or_default().insert(dc);
    }

    /// Instances known in `dc`.
    pub fn instances_in(&self, dc: &str) -> usize {
        self.count.get(dc).copied().unwrap_or(0)
    }

    /// The DCs with at least one instance.
    pub fn dcs(&self) -> impl Iterator<Item = &str> {
        self.count.keys().map(String::as_str)
    }

    /// The DC of an SRV answer: by its address and port when they name one DC's instance,
    /// else by the target name (`<hex>.addr.<dc>.<domain>` or `<node>.node.<dc>.<domain>`).
    pub fn dc_of(&self, ip: Option<IpAddr>, port: u16, target: &str) -> Option<String> {
        if let Some(ip) = ip
            && let Some(dcs) = self.by_addr.get(&(ip, port))
            && dcs.len() == 1
        {
            return dcs.iter().next().cloned();
        }
        let target = target.trim_end_matches('.').to_ascii_lowercase();
        let rest = target
            .strip_suffix(&self.domain)
            .and_then(|r| r.strip_suffix('.'))?;
        let mut labels = rest.rsplit('.');
        let dc = labels.next()?;
        let kind = labels.next()?;
        ((kind == "addr" || kind == "node") && self.count.contains_key(dc)).then(|| dc.to_owned())
    }
}

/// What one DNS query got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Records came back; the DCs they point at, and how many could not be placed.
    Answered {
        /// DCs the answer's instances belong to.
        dcs: BTreeSet<String>,
        /// SRV records whose DC is unknown.
        unattributed: usize,
    },
    /// No usable answer (timeout, error code, or no records).
    Failed(String),
}

impl DnsOutcome {
    /// The DCs answered with, if it succeeded.
    pub fn dcs(&self) -> Option<&BTreeSet<String>> {
        match self {
            DnsOutcome::Answered { dcs, .. } => Some(dcs),
            DnsOutcome::Failed(_) => None,
        }
    }
}

/// Resolves `name` (SRV) at `server` over UDP, within [`DNS_TIMEOUT`], and places each answer
/// in a DC with `map`.
pub async fn resolve_srv(server: SocketAddr, name: &str, map: &InstanceMap) -> DnsOutcome {
    match timeout(DNS_TIMEOUT, exchange(server, name, RecordType::SRV)).await {
        Err(_) => DnsOutcome::Failed("timeout".into()),
        Ok(Err(e)) => DnsOutcome::Failed(e.chain()),
        Ok(Ok(m)) => place(&m, map),
    }
}

/// Places the SRV records of `m` in DCs.
fn place(m: &Message, map: &InstanceMap) -> DnsOutcome {
    let code = m.metadata.response_code;
    if code != ResponseCode::NoError {
        return DnsOutcome::Failed(code.to_string());
    }
    let mut addrs: HashMap<Name, Vec<IpAddr>> = HashMap::new();
    for r in m.additionals.iter().chain(m.answers.iter()) {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.entry(r.name.to_lowercase()).or_default().push(ip);
    }
    let mut dcs = BTreeSet::new();
    let mut unattributed = 0;
    let mut records = 0;
    for r in &m.answers {
        let RData::SRV(srv) = &r.data else { continue };
        records += 1;
        let target = srv.target.to_lowercase();
        let ip = addrs.get(&target).and_then(|v| v.first().copied());
        match map.dc_of(ip, srv.port, &target.to_ascii()) {
            Some(dc) => {
                dcs.insert(dc);
            }
            None => unattributed += 1,
        }
    }
    if records == 0 {
        return DnsOutcome::Failed("no records".into());
    }
    DnsOutcome::Answered { dcs, unattributed }
}

/// One UDP exchange: a query for `name`/`qtype` without recursion, the matching response.
async fn exchange(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
) -> Result<Message, ClientError> {
    let bad_name = |source| ClientError::InvalidDnsName {
        name: name.to_owned(),
        source,
    };
    let qname = Name::from_ascii(name).map_err(bad_name)?;
    let mut q = Message::query();
    q.add_query(Query::query(qname, qtype));
    q.metadata.recursion_desired = false;
    let id = q.metadata.id;
    let packet = q.to_vec().map_err(bad_name)?;
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let dns = |source| ClientError::Dns { server, source };
    let sock = UdpSocket::bind(local).await.map_err(dns)?;
    sock.connect(server).await.map_err(dns)?;
    sock.send(&packet).await.map_err(dns)?;
    let mut buf = vec![0u8; 4096];
    // Datagrams that are not our answer (a late answer to nothing, garbage) are skipped; the
    // caller's timeout bounds the loop.
    loop {
        let n = sock.recv(&mut buf).await.map_err(dns)?;
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if m.metadata.id == id && m.metadata.message_type == MessageType::Response {
            return Ok(m);
        }
    }
}

/// What one connection through a gateway got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// The handshake completed; the DC whose instance answered, when its certificate tells.
    Connected {
        /// The DC, if the certificate belongs to one DC's instances only.
        dc: Option<String>,
    },
    /// The connection or the handshake failed.
    Failed(String),
}

/// TLS connections through gateways, with the certificates seen before the drill telling which
/// DC a connection reached. TLS 1.3 only: the workspace builds rustls without TLS 1.2, so a
/// backend that offers only TLS 1.2 fails every probe with a `ProtocolVersion` alert.
#[derive(Clone, Debug)]
pub struct TlsProber {
    /// For the probes: checks against `--ca`, or accepts any certificate.
    config: Arc<ClientConfig>,
    /// For learning certificates: accepts any.
    any: Arc<ClientConfig>,
    /// Leaf certificate (DER) to the DCs it was seen from.
    certs: HashMap<Vec<u8>, BTreeSet<String>>,
}

impl TlsProber {
    /// Checks server certificates against the CA certificates in `ca` (PEM), or accepts any
    /// certificate when `ca` is `None`.
    pub fn new(ca: Option<&Path>) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let any = Arc::new(
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(ClientError::TlsConfig)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
                .with_no_client_auth(),
        );
        let config = match ca {
            None => any.clone(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let unreadable = |source| ClientError::CaFile {
                    path: path.to_owned(),
                    source,
                };
                for cert in CertificateDer::pem_file_iter(path).map_err(unreadable)? {
                    roots.add(cert.map_err(unreadable)?).map_err(|source| {
                        ClientError::CaCertificate {
                            path: path.to_owned(),
                            source,
                        }
                    })?;
                }
                if roots.is_empty() {
                    return Err(ClientError::NoCaCertificate {
                        path: path.to_owned(),
                    });
                }
                Arc::new(
                    ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(ClientError::TlsConfig)?
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            }
        };
        Ok(TlsProber {
            config,
            any,
            certs: HashMap::new(),
        })
    }

    /// Connects through `gateway` with SNI `sni` (certificates not checked) and records the
    /// leaf certificate as one of `dc`'s; why the connection failed, if it did.
    pub async fn learn(&mut self, gateway: SocketAddr, sni: &str, dc: &str) -> Result<(), String> {
        match handshake(&self.any, gateway, sni).await {
            Ok(Some(leaf)) => {
                self.certs
                    .entry(leaf)
                    .or_default()
                    .insert(dc.to_ascii_lowercase());
                Ok(())
            }
            Ok(None) => Err("no certificate".into()),
            Err(e) => Err(e.chain()),
        }
    }

    /// Whether some certificate seen belongs to one DC only (connections can be placed).
    pub fn can_attribute(&self) -> bool {
        self.certs.values().any(|dcs| dcs.len() == 1)
    }

    /// The DCs some certificate seen belongs to exclusively.
    pub fn attributable_dcs(&self) -> BTreeSet<String> {
        self.certs
            .values()
            .filter(|d| d.len() == 1)
            .flatten()
            .cloned()
            .collect()
    }

    /// Connects through `gateway` with SNI `sni`, completing the handshake within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(&self, gateway: SocketAddr, sni: &str) -> ConnectOutcome {
        match handshake(&self.config, gateway, sni).await {
            Ok(leaf) => ConnectOutcome::Connected {
                dc: leaf
                    .and_then(|l| self.certs.get(&l))
                    .filter(|dcs| dcs.len() == 1)
                    .and_then(|dcs| dcs.iter().next().cloned()),
            },
            Err(e) => ConnectOutcome::Failed(e.chain()),
        }
    }
}

/// A TLS handshake through `gateway`, within [`CONNECT_TIMEOUT`]; the server's leaf
/// certificate.
async fn handshake(
    config: &Arc<ClientConfig>,
    gateway: SocketAddr,
    sni: &str,
) -> Result<Option<Vec<u8>>, ClientError> {
    let name = ServerName::try_from(sni.to_owned()).map_err(|source| ClientError::InvalidSni {
        sni: sni.to_owned(),
        source,
    })?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let attempt = async {
        let no_connection = |source| ClientError::GatewayConnect { gateway, source };
        let tcp = TcpStream::connect(gateway).await.map_err(no_connection)?;
        tcp.set_nodelay(true).map_err(no_connection)?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::TlsHandshake { gateway, source })?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        // close_notify; the backend's answer is not waited for.
        let _ = timeout(Duration::from_millis(200), tls.shutdown()).await;
        Ok(leaf)
    };
    timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| ClientError::TlsTimeout {
            gateway,
            limit: CONNECT_TIMEOUT,
        })?
}

/// Accepts any server certificate (the drill checks that connections complete, not whom they
/// reach, unless `--ca` is given), still checking the handshake's signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Everything one probe round of one DC needs.
#[derive(Clone, Debug)]
pub struct RoundProbe {
    /// The HTTP client.
    pub http: Http,
    /// The probed node: its DNS server, gateway and status.
    pub node: NodeInfo,
    /// The name resolved (fully qualified, with the final dot).
    pub qname: String,
    /// The SNI sent through the gateway.
    pub sni: String,
    /// Instance addresses to DCs.
    pub map: Arc<InstanceMap>,
    /// The TLS client and the certificates seen.
    pub tls: Arc<TlsProber>,
}

/// An outcome with the instants its query was sent and answered.
#[derive(Clone, Debug)]
pub struct At<T> {
    /// Query sent.
    pub sent: Instant,
    /// Outcome known.
    pub at: Instant,
    /// What happened.
    pub outcome: T,
}

impl<T: Clone> At<T> {
    /// With its instants in milliseconds since `t0`.
    pub fn relative_to(&self, t0: Instant) -> Timed<T> {
        Timed {
            sent_ms: ms_since(t0, self.sent),
            at_ms: ms_since(t0, self.at),
            outcome: self.outcome.clone(),
        }
    }
}

/// One probe round as it happened.
#[derive(Clone, Debug)]
pub struct RawRound {
    /// Every DC's status in the probed DC's view before the queries (None: unreadable).
    pub before: Option<BTreeMap<String, String>>,
    /// The same after them.
    pub after: Option<BTreeMap<String, String>>,
    /// The DNS query.
    pub dns: At<DnsOutcome>,
    /// The connection through the gateway (None: the DC has none).
    pub gateway: Option<At<ConnectOutcome>>,
}

impl RawRound {
    /// The round with its times in milliseconds since `t0`, for [`report`](crate::report).
    pub fn relative_to(&self, t0: Instant) -> Round {
        Round {
            status_before: self.before.clone(),
            status_after: self.after.clone(),
            dns: self.dns.relative_to(t0),
            gateway: self.gateway.as_ref().map(|g| g.relative_to(t0)),
        }
    }
}

impl RoundProbe {
    /// One round: the DC's status, a DNS query, a connection through its gateway, the status
    /// again. Bounded by the timeouts of its four steps.
    pub async fn round(&self) -> RawRound {
        let before = dc_statuses(&self.http, &self.node, STATUS_TIMEOUT)
            .await
            .ok();
        let sent = Instant::now();
        let outcome = resolve_srv(self.node.dns, &self.qname, &self.map).await;
        let dns = At {
            sent,
            at: Instant::now(),
            outcome,
        };
        let gateway = match self.node.gateway {
            Some(gw) => {
                let sent = Instant::now();
                let outcome = self.tls.connect(gw, &self.sni).await;
                Some(At {
                    sent,
                    at: Instant::now(),
                    outcome,
                })
            }
            None => None,
        };
        let after = dc_statuses(&self.http, &self.node, STATUS_TIMEOUT)
            .await
            .ok();
        tracing::trace!(dc = %self.node.dc, dns = ?dns.outcome, gateway = ?gateway.as_ref().map(|g| &g.outcome), "round");
        RawRound {
            before,
            after,
            dns,
            gateway,
        }
    }

    /// Runs a round every `interval` into `rounds` until `ctl` says stop (at most `max`
    /// rounds); any other change of `ctl` (a kick, sent right after a failure is caused or
    /// restored) starts a round at once, so that a change faster than the interval is seen as
    /// fast as it happens.
    pub async fn run(
        &self,
        interval: Duration,
        max: usize,
        rounds: &Mutex<Vec<RawRound>>,
        mut ctl: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for _ in 0..max {
            tokio::select! {
                _ = tick.tick() => {}
                r = ctl.changed() => {
                    if r.is_err() {
                        break;
                    }
                    tick.reset();
                }
            }
            if *ctl.borrow_and_update() {
                break;
            }
            let round = self.round().await;
            rounds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(round);
        }
    }
}

/// One DC's view of every datacenter (`GET /v1/federation/datacenters`): DC to status.
pub async fn dc_statuses(
    http: &Http,
    node: &NodeInfo,
    limit: Duration,
) -> Result<BTreeMap<String, String>, ClientError> {
    let v = http
        .get_json(&node.url("/v1/federation/datacenters"), limit)
        .await?;
    parse_statuses(&v)
}

/// DC to status from a `/v1/federation/datacenters` answer.
pub fn parse_statuses(v: &Value) -> Result<BTreeMap<String, String>, ClientError> {
    let entries = v.as_array().ok_or_else(|| ClientError::IncompleteAnswer {
        url: "/v1/federation/datacenters".to_owned(),
        problem: "is not an array",
    })?;
    let mut out = BTreeMap::new();
    for e in entries {
        if let (Some(dc), Some(status)) = (e["Datacenter"].as_str(), e["Status"].as_str()) {
            out.insert(dc.to_ascii_lowercase(), status.to_ascii_lowercase());
        }
    }
    Ok(out)
}

/// Whether a status means answers must not point at the DC.
pub fn unavailable(status: &str) -> bool {
    matches!(status, "down" | "drained")
}

/// Time since `start` in milliseconds (negative before it).
pub fn ms_since(start: Instant, at: Instant) -> f64 {
    if at >= start {
        at.duration_since(start).as_secs_f64() * 1000.0
    } else {
        -(start.duration_since(at).as_secs_f64() * 1000.0)
    }
}

/// One probe round of one DC.
#[derive(Clone, Debug)]
pub struct Round {
    /// Every DC's status in the prober's view, read just before the queries (None: unreadable).
    pub status_before: Option<BTreeMap<String, String>>,
    /// The same, read just after them.
    pub status_after: Option<BTreeMap<String, String>>,
    /// The DNS query.
    pub dns: Timed<DnsOutcome>,
    /// The connection through the gateway, when the DC has one.
    pub gateway: Option<Timed<ConnectOutcome>>,
}

/// An outcome and when its query was sent and answered.
#[derive(Clone, Debug)]
pub struct Timed<T> {
    /// When the query was sent.
    pub sent_ms: f64,
    /// When the outcome was known.
    pub at_ms: f64,
    /// What happened.
    pub outcome: T,
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_net::proto::rr::rdata::{A, SRV};
    use hickory_net::proto::rr::{DNSClass, Record};
    use serde_json::json;

    fn map() -> InstanceMap {
        let mut m = InstanceMap::new("consul");
        let health = |addr: &str, port: u16| json!([{"Node": {"Address": "10.9.9.9"}, "Service": {"Address": addr, "Port": port}}]);
        assert_eq!(m.add_health("dc1", &health("127.0.0.1", 9001)), 1);
        assert_eq!(m.add_health("DC2", &health("127.0.0.1", 9002)), 1);
        // The node's address stands in for an empty instance address.
        assert_eq!(m.add_health("dc2", &health("", 9003)), 1);
        // An address shared by two DCs places nothing.
        m.add_health("dc1", &health("10.0.0.1", 80));
        m.add_health("dc2", &health("10.0.0.1", 80));
        m.add_health("dc2", &json!({"not": "an array"}));
        m
    }

    #[test]
    fn answers_are_placed_by_address_and_port_then_by_target() {
        let m = map();
        let lo = Some("127.0.0.1".parse().expect("ip"));
        assert_eq!(m.dc_of(lo, 9001, "x").as_deref(), Some("dc1"));
        assert_eq!(m.dc_of(lo, 9002, "x").as_deref(), Some("dc2"));
        assert_eq!(
            m.dc_of(Some("10.9.9.9".parse().expect("ip")), 9003, "x")
                .as_deref(),
            Some("dc2")
        );
        assert_eq!(
            m.dc_of(lo, 1, "7f000001.addr.dc1.consul."),
            Some("dc1".into())
        );
        assert_eq!(m.dc_of(lo, 1, "n1.node.dc2.consul"), Some("dc2".into()));
        assert_eq!(m.dc_of(lo, 1, "7f000001.addr.dc9.consul."), None);
        assert_eq!(m.dc_of(lo, 1, "7f000001.addr.dc1.other."), None);
        let shared = Some("10.0.0.1".parse().expect("ip"));
        assert_eq!(m.dc_of(shared, 80, "x"), None);
        assert_eq!(m.instances_in("dc2"), 3);
        assert_eq!(m.dcs().collect::<Vec<_>>(), ["dc1", "dc2"]);
    }

    #[test]
    fn an_srv_answer_names_its_dcs() {
        let m = map();
        let mut msg = Message::response(1, hickory_net::proto::op::OpCode::Query);
        let asked = Name::from_ascii("web.service.consul.").expect("name");
        for (target, port) in [
            ("a.addr.dc1.consul.", 9001),
            ("b.example.", 9002),
            ("c.x.", 7),
        ] {
            let t = Name::from_ascii(target).expect("name");
            msg.answers.push(Record::from_rdata(
                asked.clone(),
                0,
                RData::SRV(SRV::new(1, 1, port, t.clone())),
            ));
            let mut a = Record::from_rdata(t, 0, RData::A(A::new(127, 0, 0, 1)));
            a.dns_class = DNSClass::IN;
            msg.additionals.push(a);
        }
        let DnsOutcome::Answered { dcs, unattributed } = place(&msg, &m) else {
            panic!("answered");
        };
        assert_eq!(dcs.into_iter().collect::<Vec<_>>(), ["dc1", "dc2"]);
        assert_eq!(unattributed, 1);
        let empty = Message::response(1, hickory_net::proto::op::OpCode::Query);
        assert!(matches!(place(&empty, &m), DnsOutcome::Failed(_)));
        let mut nx = Message::response(1, hickory_net::proto::op::OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert!(matches!(place(&nx, &m), DnsOutcome::Failed(_)));
    }

    #[test]
    fn statuses_are_read_and_judged() {
        let v = json!([
            {"Datacenter": "dc1", "Local": true, "Status": "up", "RttMs": null, "Stale": false, "ForMs": 1},
            {"Datacenter": "DC2", "Local": false, "Status": "Drained", "RttMs": 0.4, "Stale": false, "ForMs": 1},
            {"Datacenter": "dc3"}
        ]);
        let s = parse_statuses(&v).expect("parsed");
        assert_eq!(s.get("dc2").map(String::as_str), Some("drained"));
        assert_eq!(s.len(), 2);
        assert!(unavailable("down") && unavailable("drained"));
        assert!(!unavailable("suspect") && !unavailable("up"));
        assert!(parse_statuses(&json!({})).is_err());
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:8500"), "http://127.0.0.1:8500");
        assert_eq!(base_url("http://h:1/"), "http://h:1");
    }

    #[tokio::test]
    async fn failed_probes_say_why() -> anyhow::Result<()> {
        let map = map();
        // A UDP port with nothing behind it: loopback reports it refused.
        let dns = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let DnsOutcome::Failed(why) = resolve_srv(dns, "web.service.consul.", &map).await else {
            panic!("no DNS server");
        };
        assert!(why.starts_with("DNS exchange failed: "), "{why}");
        let DnsOutcome::Failed(why) = resolve_srv(dns, "a..b", &map).await else {
            panic!("bad name");
        };
        assert!(why.starts_with("bad DNS name \"a..b\": "), "{why}");

        let tls = TlsProber::new(None)?;
        let gw = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let ConnectOutcome::Failed(why) = tls.connect(gw, "web.service.consul").await else {
            panic!("no gateway");
        };
        assert!(why.starts_with("cannot connect to the gateway: "), "{why}");
        let ConnectOutcome::Failed(why) = tls.connect(gw, "not a name").await else {
            panic!("bad SNI");
        };
        assert!(why.starts_with("bad SNI \"not a name\""), "{why}");

        let missing = Path::new("/nonexistent/ca.pem");
        let e = TlsProber::new(Some(missing)).expect_err("no file");
        assert!(matches!(e, ClientError::CaFile { .. }), "{e:?}");
        assert!(
            e.chain()
                .starts_with("cannot read the CA certificates in /nonexistent/ca.pem: ")
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_agent_without_meridian_addresses_is_named() {
        let old = json!({"Config": {"Datacenter": "dc1", "NodeName": "n1"}});
        let e = node_from_self("http://h:1", &old)
            .await
            .expect_err("older node");
        assert!(
            e.to_string()
                .starts_with("http://h:1/v1/agent/self has no \"Meridian\" object")
        );
        let bad = json!({"Config": {"Datacenter": "dc1"}, "Meridian": {"DnsAddr": "nope"}});
        let e = node_from_self("http://h:1", &bad)
            .await
            .expect_err("bad address");
        assert!(
            e.chain()
                .starts_with("bad Meridian.DnsAddr from http://h:1: \"nope\" is not an address"),
            "{}",
            e.chain()
        );
        let none = json!({"Config": {}});
        let e = node_from_self("http://h:1", &none)
            .await
            .expect_err("no DC");
        assert_eq!(
            e.to_string(),
            "http://h:1/v1/agent/self has no Config.Datacenter"
        );
    }

    #[tokio::test]
    async fn wildcard_addresses_become_the_api_host() {
        let a = reachable("http://127.0.0.1:8500", "0.0.0.0:8600")
            .await
            .expect("address");
        assert_eq!(a, "127.0.0.1:8600".parse().expect("addr"));
        let b = reachable("http://127.0.0.1:8500", "10.1.1.1:53")
            .await
            .expect("address");
        assert_eq!(b, "10.1.1.1:53".parse().expect("addr"));
        assert!(reachable("http://127.0.0.1:8500", "nope").await.is_err());
    }
}
