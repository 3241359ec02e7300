//! The agent's TOML configuration: its shape (every table rejects unknown keys), safe defaults,
//! flag overrides, the start-up `validate()` that names the bad key, and the conversion to the
//! catalog's [`CatalogConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_catalog::{CatalogConfig, RaftTuning};
use meridian_dns::normalize_domain;
pub use meridian_topology::names::join_host_port;
use meridian_topology::names::{is_label, is_service_pattern, validate_label};
use meridian_topology::net::Prefix;
use serde::Deserialize;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape (toml names the key).
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml reported, with the line and key.
        message: String,
    },
    /// A value is out of range or inconsistent with another one.
    #[error("invalid config key `{key}`: {reason}")]
    Invalid {
        /// The key, in TOML path notation (`servers[1].rpc`).
        key: String,
        /// Why it is rejected.
        reason: String,
    },
}

impl From<crate::acl::AclError> for ConfigError {
    fn from(e: crate::acl::AclError) -> Self {
        ConfigError::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A whole agent configuration, as in the TOML file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Datacenter name (a DNS label).
    pub datacenter: String,
    /// This node's name (a DNS label, unique in the datacenter).
    pub node_name: String,
    /// This node's Raft ID; must be one of `servers`.
    pub node_id: u64,
    /// Address the listeners bind to.
    #[serde(default = "localhost")]
    pub bind: IpAddr,
    /// Address other machines reach this node at; defaults to `bind`.
    #[serde(default)]
    pub advertise: Option<IpAddr>,
    /// Folder for the catalog's RocksDB database.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Listening ports.
    #[serde(default)]
    pub ports: Ports,
    /// The datacenter's voters.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RaftSection,
    /// Request limits of the HTTP API.
    #[serde(default)]
    pub limits: Limits,
    /// The DNS server.
    #[serde(default)]
    pub dns: DnsSection,
    /// WAN federation with other datacenters.
    #[serde(default)]
    pub federation: FederationSection,
    /// The mesh gateway (TLS passthrough routed by SNI).
    #[serde(default)]
    pub gateway: GatewaySection,
    /// DC failure detection and failover.
    #[serde(default)]
    pub failover: FailoverSection,
    /// Who may use the HTTP API.
    #[serde(default)]
    pub acl: crate::acl::AclSection,
    /// What health checks may reach and keep.
    #[serde(default)]
    pub checks: ChecksSection,
    /// The service mesh: intentions.
    #[serde(default)]
    pub mesh: MeshSection,
    /// Run the LAN rpc port without TLS (no certificates set). Outside `--dev` the agent refuses
    /// to start that way unless this says so.
    #[serde(default)]
    pub insecure: bool,
    /// A `--dev` agent: federation uses the published development CA.
    #[serde(skip)]
    pub dev: bool,
    /// `--dev-listen-any`: a `--dev` agent may listen on an address other than loopback.
    #[serde(skip)]
    pub dev_listen_any: bool,
    /// A gateway-only node: no catalog and no vote; it follows its DC's servers
    /// (`federation.local_servers`) and serves the gateway and DNS from what it learns.
    #[serde(default)]
    pub gateway_only: bool,
    /// What the node logs, as `RUST_LOG` says it (`info`, `info,openraft=warn`); `RUST_LOG`
    /// wins when set. Default `info`.
    #[serde(default)]
    pub log_level: Option<String>,
}

/// WAN federation (`[federation]`): certificates, export policy, peers and timings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    /// The federation CA's certificate (PEM). Federation is off when no certificates are set
    /// (and the agent is not `--dev`).
    pub ca_file: Option<PathBuf>,
    /// This node's certificate (PEM), naming its datacenter (`meridian tls cert create`).
    pub cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Services other datacenters may see: names and `prefix*` patterns. Absent: everything.
    pub export: Option<Vec<String>>,
    /// The remote datacenters to follow.
    pub peers: Vec<PeerSection>,
    /// WAN addresses (`host:port`) of this datacenter's servers, which a gateway-only node
    /// follows (`--follow`).
    pub local_servers: Vec<String>,
    /// WAN addresses (`host:port`) of nodes of datacenters not listed in `peers`: their
    /// datacenter is learned from their certificate, and the datacenters they know are followed
    /// too (`--join-wan`).
    pub join: Vec<String>,
    /// The WAN addresses (`host:port`) other datacenters reach this node at, when not
    /// `advertise:wan` (behind NAT or a load balancer); told to every peer.
    pub advertise: Vec<String>,
    /// Idle time after which an origin sends a heartbeat.
    pub heartbeat_ms: u64,
    /// A stream with no message for this long is declared dead and reconnected.
    pub idle_timeout_ms: u64,
    /// Connect and TLS handshake to a peer.
    pub connect_timeout_ms: u64,
    /// TLS handshake of an incoming peer.
    pub handshake_timeout_ms: u64,
    /// Changed entries remembered so reconnecting subscribers resume without a catch-up.
    pub resume_window: usize,
    /// Subscribe streams this node serves at once to one peer certificate; more are refused
    /// (RESOURCE_EXHAUSTED, counted as `refused{reason="stream_cap"}`).
    pub max_streams_per_peer: usize,
    /// Entries one remote datacenter's replica (or a snapshot being received) may hold; a
    /// stream that sends more is refused (`refused{reason="replica_entries"}`).
    pub max_replica_entries: usize,
    /// Bytes a snapshot being received may hold before it is written; a stream that sends more
    /// is refused (`refused{reason="staging_bytes"}`).
    pub max_staging_bytes: usize,
    /// A learned (not configured or joined) address that never completed a sync is forgotten
    /// after this long, and a learned datacenter left without addresses with it.
    pub unproven_ttl_ms: u64,
    /// A learned address that answered once but not since is forgotten after this long, also
    /// across restarts.
    pub learned_ttl_ms: u64,
    /// How this node's subscriptions reach other datacenters: `direct` (to their servers' WAN
    /// ports) or `gateway` (through a gateway of this DC and the tunnel, so that only the
    /// gateways face the WAN; `peers` and `join` then name other DCs' gateways).
    pub transport: FederationTransport,
}

/// `federation.transport`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FederationTransport {
    /// To other DCs' servers' WAN ports.
    #[default]
    Direct,
    /// Through this DC's gateways and the tunnel.
    Gateway,
}

impl Default for FederationSection {
    fn default() -> Self {
        FederationSection {
            ca_file: None,
            cert_file: None,
            key_file: None,
            export: None,
            peers: Vec::new(),
            join: Vec::new(),
            local_servers: Vec::new(),
            advertise: Vec::new(),
            heartbeat_ms: 1_000,
            idle_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            handshake_timeout_ms: 5_000,
            resume_window: 100_000,
            max_streams_per_peer: 16,
            max_replica_entries: 1_000_000,
            max_staging_bytes: 256 << 20,
            unproven_ttl_ms: 10 * 60 * 1000,
            learned_ttl_ms: 72 * 60 * 60 * 1000,
            transport: FederationTransport::Direct,
        }
    }
}

/// The mesh gateway (`[gateway]`): limits and timeouts, none hard-coded.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Serve the gateway port.
    pub enabled: bool,
    /// Most connections open at once; more wait in the kernel's accept queue. Streams other
    /// DCs tunnel here take from the same budget.
    pub max_connections: usize,
    /// Most connections open at once from one client address; more are closed at once.
    pub max_connections_per_client: usize,
    /// Time a client has to send its whole ClientHello (cuts slowloris clients).
    pub handshake_timeout_ms: u64,
    /// Time one connect to an instance may take before the next instance is tried.
    pub connect_timeout_ms: u64,
    /// A relayed connection with no byte either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// Route only to instances whose checks pass (leave `warning` ones out).
    pub only_passing: bool,
    /// The trust domain of Consul's mesh names (`<svc>.default.<dc>.internal.<trust-domain>`);
    /// unset turns the mesh form off.
    pub trust_domain: Option<String>,
    /// Most connections tunnelled to one remote datacenter at once.
    pub max_tunnel_streams_per_dc: usize,
    /// Most of them from one client address; unset: an eighth of `max_tunnel_streams_per_dc`,
    /// at least 4.
    pub max_tunnel_streams_per_client: Option<usize>,
    /// Most QUIC connections one remote peer (one certificate) holds to this gateway at once.
    pub max_tunnel_connections_per_peer: usize,
    /// Most streams one remote peer has relayed through this gateway at once (both transports).
    pub max_tunnel_streams_per_peer: usize,
    /// Most incoming QUIC handshakes in progress at once.
    pub max_tunnel_handshakes: usize,
    /// When a new QUIC peer's address is validated with a Retry before the handshake (one more
    /// round trip for that connection): `under-load` (half the handshake slots taken),
    /// `always` or `never`.
    pub tunnel_retry: RetryPolicyName,
    /// A tunnel connection with no packet for this long is dead (keep-alives at a third).
    pub tunnel_idle_timeout_ms: u64,
    /// How tunnelled connections cross the WAN: `quic` (one pooled connection per remote DC)
    /// or `tcp` (a TLS connection per client connection, for networks that drop UDP).
    pub wan_transport: WanTransportName,
    /// `ip:port` other DCs reach this gateway at, when not the node's advertise address and the
    /// gateway port (behind NAT: the public address and port forwarded to it).
    pub advertise: Option<String>,
}

/// DC failure detection and failover (`[failover]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSection {
    /// Names without a DC fail over to other DCs (Consul's plain lookups never do).
    pub enabled: bool,
    /// Up to this many other DCs, nearest first by measured RTT, are tried first.
    pub nearest_n: usize,
    /// Then these DCs, in order.
    pub datacenters: Vec<String>,
    /// Fail over when fewer than this share (0 to 1) of the local instances is healthy.
    pub spill_below: Option<f64>,
    /// How answers from another DC are addressed: `direct` or `gateway`.
    pub address_mode: meridian_topology::AddressMode,
    /// How often each remote DC's gateways are probed.
    pub probe_interval_ms: u64,
    /// A probe not answered within this is a failure.
    pub probe_timeout_ms: u64,
    /// Without evidence of life for this long a DC is `suspect`.
    pub suspect_after_ms: u64,
    /// Without evidence of life for this long a DC is `down`.
    pub down_after_ms: u64,
    /// A DC (or a service's instances in it) must be healthy this long before answers return.
    pub failback_after_ms: u64,
    /// The control stream counts as lost when the origin confirmed nothing for this long.
    pub control_stale_after_ms: u64,
}

impl Default for FailoverSection {
    fn default() -> Self {
        let d = meridian_topology::DetectorConfig::default();
        let p = meridian_topology::FailoverPolicy::default();
        FailoverSection {
            enabled: p.enabled,
            nearest_n: p.nearest_n,
            datacenters: Vec::new(),
            spill_below: None,
            address_mode: p.address_mode,
            probe_interval_ms: 100,
            // A dead gateway must fail two probes before the tunnel tries the DC's next one,
            // and all of that within `down_after_ms`; a WAN whose round trip jumps by less than
            // this is not taken for a dead gateway (see the README's failover section).
            probe_timeout_ms: 500,
            suspect_after_ms: d.suspect_after_ms,
            down_after_ms: d.down_after_ms,
            failback_after_ms: d.failback_after_ms,
            // Heartbeats come every second; three missed is lost.
            control_stale_after_ms: 3_000,
        }
    }
}

impl FailoverSection {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, ms) in [
            ("failover.probe_interval_ms", self.probe_interval_ms),
            ("failover.probe_timeout_ms", self.probe_timeout_ms),
            ("failover.suspect_after_ms", self.suspect_after_ms),
            ("failover.down_after_ms", self.down_after_ms),
            ("failover.failback_after_ms", self.failback_after_ms),
            (
                "failover.control_stale_after_ms",
                self.control_stale_after_ms,
            ),
        ] {
            if !(1..=MAX_TIMING_MS).contains(&ms) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be between 1 and {MAX_TIMING_MS}"),
                ));
            }
        }
        if self.suspect_after_ms > self.down_after_ms {
            return Err(ConfigError::invalid(
                "failover.suspect_after_ms",
                "must not exceed failover.down_after_ms",
            ));
        }
        if let Some(share) = self.spill_below
            && !(0.0..=1.0).contains(&share)
        {
            return Err(ConfigError::invalid(
                "failover.spill_below",
                "must be a share between 0 and 1",
            ));
        }
        for dc in &self.datacenters {
            meridian_topology::names::validate_label("failover.datacenters", dc)
                .map_err(|e| ConfigError::invalid("failover.datacenters", e.to_string()))?;
        }
        Ok(())
    }

    /// The detector's thresholds.
    pub fn detector(&self) -> meridian_topology::DetectorConfig {
        meridian_topology::DetectorConfig {
            suspect_after_ms: self.suspect_after_ms,
            down_after_ms: self.down_after_ms,
            failback_after_ms: self.failback_after_ms,
        }
    }

    /// The default policy for names without a DC.
    pub fn policy(&self) -> meridian_topology::FailoverPolicy {
        meridian_topology::FailoverPolicy {
            enabled: self.enabled,
            nearest_n: self.nearest_n,
            datacenters: self.datacenters.iter().map(|d| d.as_str().into()).collect(),
            spill_below: self.spill_below,
            address_mode: self.address_mode,
        }
    }
}

/// `gateway.wan_transport`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WanTransportName {
    /// QUIC (the default).
    #[default]
    Quic,
    /// TCP + TLS.
    Tcp,
}

impl WanTransportName {
    /// The gateway's value.
    pub fn to_transport(self) -> meridian_gateway::tunnel::WanTransport {
        match self {
            WanTransportName::Quic => meridian_gateway::tunnel::WanTransport::Quic,
            WanTransportName::Tcp => meridian_gateway::tunnel::WanTransport::Tcp,
        }
    }
}

/// `gateway.tunnel_retry`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RetryPolicyName {
    /// Only when at least half of the handshake slots are taken (the default).
    #[default]
    UnderLoad,
    /// Before every new connection.
    Always,
    /// Never.
    Never,
}

impl RetryPolicyName {
    /// The gateway's value.
    pub fn to_policy(self) -> meridian_gateway::RetryPolicy {
        match self {
            RetryPolicyName::UnderLoad => meridian_gateway::RetryPolicy::UnderLoad,
            RetryPolicyName::Always => meridian_gateway::RetryPolicy::Always,
            RetryPolicyName::Never => meridian_gateway::RetryPolicy::Never,
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            enabled: true,
            max_connections: 10_000,
            // 2.5 % of the default budget: at least 40 client addresses are needed to fill it,
            // and a busy client's pool (nginx, Envoy: hundreds) still fits. Behind a NAT,
            // clients share an address: raise it there.
            max_connections_per_client: 256,
            handshake_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            idle_timeout_ms: 300_000,
            only_passing: false,
            trust_domain: None,
            max_tunnel_streams_per_dc: 1_000,
            max_tunnel_streams_per_client: None,
            // A remote gateway keeps one pooled connection per DC and up to four retired ones
            // (after failed probes); the rest is slack for reconnects while old ones idle out.
            max_tunnel_connections_per_peer: 16,
            // What one remote gateway may itself send to this DC (its max_tunnel_streams_per_dc).
            max_tunnel_streams_per_peer: 1_000,
            // Peers reconnect rarely (pooled connections); a flood of handshakes is not a peer.
            max_tunnel_handshakes: 64,
            tunnel_retry: RetryPolicyName::UnderLoad,
            tunnel_idle_timeout_ms: 10_000,
            wan_transport: WanTransportName::Quic,
            advertise: None,
        }
    }
}

impl GatewaySection {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.advertise
            && a.parse::<SocketAddr>().map_or(true, |a| a.port() == 0)
        {
            return Err(ConfigError::invalid(
                "gateway.advertise",
                format!(
                    "{a:?} is not ip:port with a non-zero port (the tunnel dials addresses, not names)"
                ),
            ));
        }
        for (key, n) in [
            ("gateway.max_connections", self.max_connections),
            (
                "gateway.max_connections_per_client",
                self.max_connections_per_client,
            ),
            (
                "gateway.max_tunnel_streams_per_dc",
                self.max_tunnel_streams_per_dc,
            ),
            (
                "gateway.max_tunnel_streams_per_client",
                self.max_tunnel_streams_per_client.unwrap_or(1),
            ),
            (
                "gateway.max_tunnel_connections_per_peer",
                self.max_tunnel_connections_per_peer,
            ),
            (
                "gateway.max_tunnel_streams_per_peer",
                self.max_tunnel_streams_per_peer,
            ),
            ("gateway.max_tunnel_handshakes", self.max_tunnel_handshakes),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(key, "must be > 0"));
            }
        }
        for (key, ms) in [
            ("gateway.handshake_timeout_ms", self.handshake_timeout_ms),
            ("gateway.connect_timeout_ms", self.connect_timeout_ms),
            ("gateway.idle_timeout_ms", self.idle_timeout_ms),
            (
                "gateway.tunnel_idle_timeout_ms",
                self.tunnel_idle_timeout_ms,
            ),
        ] {
            if !(1..=MAX_TIMING_MS).contains(&ms) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be between 1 and {MAX_TIMING_MS}"),
                ));
            }
        }
        if let Some(td) = &self.trust_domain {
            check_domain("gateway.trust_domain", td)?;
        }
        Ok(())
    }

    /// A client address's share of each remote DC's tunnel streams: the configured one, or an
    /// eighth of the DC's budget (at least 4).
    pub fn tunnel_streams_per_client(&self) -> usize {
        self.max_tunnel_streams_per_client
            .unwrap_or_else(|| meridian_topology::caps::share(self.max_tunnel_streams_per_dc, 8, 4))
    }

    /// The gateway's settings, routing the DNS domains `dns` serves. Call
    /// [`Config::validate`] first.
    pub fn to_local(&self, dns: &DnsSection) -> meridian_gateway::LocalConfig {
        let ms = Duration::from_millis;
        let mut domains = vec![normalize_domain(&dns.domain)];
        domains.extend(dns.alt_domain.as_deref().map(normalize_domain));
        meridian_gateway::LocalConfig {
            names: meridian_gateway::NameConfig {
                domains,
                trust_domain: self.trust_domain.as_deref().map(normalize_domain),
            },
            handshake_timeout: ms(self.handshake_timeout_ms),
            connect_timeout: ms(self.connect_timeout_ms),
            only_passing: self.only_passing,
            idle_timeout: ms(self.idle_timeout_ms),
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            export: None,
            // Filled in by `Gateway::start` from the listener.
            own: meridian_gateway::OwnAddrs::default(),
            federation: None,
        }
    }
}

/// A remote datacenter to follow (`[[federation.peers]]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Its name.
    pub dc: String,
    /// `host:port` of some of its nodes' WAN ports; host names are resolved at every connect.
    pub addresses: Vec<String>,
}

impl FederationSection {
    /// Whether certificates are configured.
    pub fn has_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    fn validate(&self, own_dc: &str, dev: bool) -> Result<(), ConfigError> {
        if dev && self.has_tls() {
            return Err(ConfigError::invalid(
                "federation",
                "a --dev agent uses the development CA; certificate files are for real deployments",
            ));
        }
        let files = [&self.ca_file, &self.cert_file, &self.key_file];
        if self.has_tls() && files.iter().any(|f| f.is_none()) {
            return Err(ConfigError::invalid(
                "federation",
                "`ca_file`, `cert_file` and `key_file` go together",
            ));
        }
        for (key, list) in [
            ("federation.join", &self.join),
            ("federation.advertise", &self.advertise),
        ] {
            for (i, a) in list.iter().enumerate() {
                if rpc_port(a).is_none() {
                    return Err(ConfigError::invalid(
                        format!("{key}[{i}]"),
                        format!("{a:?} is not host:port with a non-zero port"),
                    ));
                }
            }
        }
        if self.transport == FederationTransport::Gateway {
            // The tunnel dials gateways by address: its data plane does no DNS lookups.
            for (i, p) in self.peers.iter().enumerate() {
                for (j, a) in p.addresses.iter().enumerate() {
                    if a.parse::<SocketAddr>().is_err() {
                        return Err(ConfigError::invalid(
                            format!("federation.peers[{i}].addresses[{j}]"),
                            format!(
                                "{a:?}: with transport = \"gateway\" a peer's addresses are its gateways', as ip:port"
                            ),
                        ));
                    }
                }
            }
            for (i, a) in self.join.iter().enumerate() {
                if a.parse::<SocketAddr>().is_err() {
                    return Err(ConfigError::invalid(
                        format!("federation.join[{i}]"),
                        format!(
                            "{a:?}: with transport = \"gateway\" a joined address is another DC's gateway, as ip:port"
                        ),
                    ));
                }
            }
        }
        if (!self.peers.is_empty() || !self.join.is_empty()) && !self.has_tls() && !dev {
            return Err(ConfigError::invalid(
                "federation.peers",
                "peers need `ca_file`, `cert_file` and `key_file` (federation is mutual TLS)",
            ));
        }
        if let Some(export) = &self.export {
            for (i, p) in export.iter().enumerate() {
                // A prefix may end anywhere in a name, hyphen included (`api-*`).
                if !is_service_pattern(p) {
                    return Err(ConfigError::invalid(
                        format!("federation.export[{i}]"),
                        format!("{p:?} is not a service name or a `prefix*` pattern"),
                    ));
                }
            }
        }
        let mut dcs = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            validate_label("datacenter name", &p.dc).map_err(|e| {
                ConfigError::invalid(format!("federation.peers[{i}].dc"), e.to_string())
            })?;
            if p.dc.eq_ignore_ascii_case(own_dc) {
                return Err(ConfigError::invalid(
                    format!("federation.peers[{i}].dc"),
                    "is this node's own datacenter",
                ));
            }
            if !dcs.insert(p.dc.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    format!("federation.peers[{i}].dc"),
                    format!("datacenter {} is listed twice", p.dc),
                ));
            }
            if p.addresses.is_empty() {
                return Err(ConfigError::invalid(
                    format!("federation.peers[{i}].addresses"),
                    "needs at least one host:port",
                ));
            }
            for (j, a) in p.addresses.iter().enumerate() {
                if rpc_port(a).is_none() {
                    return Err(ConfigError::invalid(
                        format!("federation.peers[{i}].addresses[{j}]"),
                        format!("{a:?} is not host:port with a non-zero port"),
                    ));
                }
            }
        }
        for (key, ms) in [
            ("federation.heartbeat_ms", self.heartbeat_ms),
            ("federation.idle_timeout_ms", self.idle_timeout_ms),
            ("federation.connect_timeout_ms", self.connect_timeout_ms),
            ("federation.handshake_timeout_ms", self.handshake_timeout_ms),
        ] {
            if !(1..=MAX_TIMING_MS).contains(&ms) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be between 1 and {MAX_TIMING_MS}"),
                ));
            }
        }
        if self.idle_timeout_ms <= self.heartbeat_ms {
            return Err(ConfigError::invalid(
                "federation.idle_timeout_ms",
                "must be greater than federation.heartbeat_ms (a few heartbeats)",
            ));
        }
        if self.resume_window == 0 {
            return Err(ConfigError::invalid(
                "federation.resume_window",
                "must be > 0",
            ));
        }
        for (key, n) in [
            ("federation.max_streams_per_peer", self.max_streams_per_peer),
            ("federation.max_replica_entries", self.max_replica_entries),
            ("federation.max_staging_bytes", self.max_staging_bytes),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(key, "must be > 0"));
            }
        }
        for (key, ms) in [
            ("federation.unproven_ttl_ms", self.unproven_ttl_ms),
            ("federation.learned_ttl_ms", self.learned_ttl_ms),
        ] {
            if ms < 1_000 {
                return Err(ConfigError::invalid(
                    key,
                    "must be at least 1000 (one second)",
                ));
            }
        }
        Ok(())
    }

    /// The export policy.
    pub fn policy(&self) -> meridian_federation::ExportPolicy {
        match &self.export {
            None => meridian_federation::ExportPolicy::all(),
            Some(list) if list.iter().any(|p| p == "*") => meridian_federation::ExportPolicy::all(),
            Some(list) => meridian_federation::ExportPolicy::only(list),
        }
    }

    /// The caps on what one peer can make this node hold.
    pub fn limits(&self) -> meridian_federation::Limits {
        meridian_federation::Limits {
            max_streams_per_identity: self.max_streams_per_peer,
            max_replica_entries: self.max_replica_entries,
            max_staging_bytes: self.max_staging_bytes,
            unproven_ttl: std::time::Duration::from_millis(self.unproven_ttl_ms),
            learned_ttl: std::time::Duration::from_millis(self.learned_ttl_ms),
        }
    }

    /// The peers to follow.
    pub fn peers(&self) -> Vec<meridian_federation::Peer> {
        self.peers
            .iter()
            .map(|p| meridian_federation::Peer {
                dc: p.dc.clone(),
                addresses: p.addresses.clone(),
            })
            .collect()
    }
}

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Listening ports. Port 0 lets the system choose (useful in tests; the rpc port cannot be 0
/// because the other servers must know it).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    /// Consul-compatible HTTP API and `/metrics`.
    pub http: u16,
    /// DNS (UDP and TCP).
    pub dns: u16,
    /// LAN gRPC: Raft and write forwarding.
    pub rpc: u16,
    /// WAN gRPC: federation.
    pub wan: u16,
    /// Gateway: TLS passthrough and the QUIC tunnel.
    pub gateway: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            http: 8500,
            dns: 8600,
            rpc: 8300,
            wan: 8302,
            gateway: 8443,
        }
    }
}

impl Ports {
    /// `(key, port)` pairs, for validation and printing.
    pub fn named(&self) -> [(&'static str, u16); 5] {
        [
            ("ports.http", self.http),
            ("ports.dns", self.dns),
            ("ports.rpc", self.rpc),
            ("ports.wan", self.wan),
            ("ports.gateway", self.gateway),
        ]
    }
}

/// One voter of the datacenter.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Raft ID (non-zero).
    pub id: u64,
    /// Its LAN gRPC address, `host:port`.
    pub rpc: String,
}

/// Raft timing and log compaction; every key optional.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Leader heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout, in milliseconds.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout, in milliseconds.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot.
    pub keep_logs: u64,
    /// Join the DC's existing group rather than form one: the node starts as a non-voter and
    /// waits for `meridian operator raft add-peer`. `[[servers]]` then needs only its own entry.
    pub join: bool,
}

impl Default for RaftSection {
    fn default() -> Self {
        let t = RaftTuning::default();
        RaftSection {
            heartbeat_ms: millis(t.heartbeat),
            election_timeout_min_ms: millis(t.election_timeout_min),
            election_timeout_max_ms: millis(t.election_timeout_max),
            snapshot_every: t.snapshot_every,
            keep_logs: t.keep_logs,
            join: false,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Request limits of the HTTP API; every key optional.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// How long a write may wait for a leader and a commit, in milliseconds.
    pub write_timeout_ms: u64,
    /// Most HTTP connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Most HTTP connections open at once from one client address; more are closed at once.
    pub max_connections_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 512 * 1024,
            write_timeout_ms: 10_000,
            // Below the usual 1024 open-file limit, which RocksDB and Raft share.
            max_connections: 512,
            // Consul's `http_max_conns_per_client`.
            max_connections_per_client: 200,
        }
    }
}

/// The DNS server (`[dns]`); every key optional, defaults as Consul's.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// The domain answered, `consul` by default.
    pub domain: String,
    /// A second domain answered like the first; answers use the domain that was asked.
    pub alt_domain: Option<String>,
    /// Leave out instances whose health is `warning` (critical ones are always left out).
    pub only_passing: bool,
    /// TTL of node, `.addr` and PTR records, in seconds.
    pub node_ttl: u32,
    /// TTL of service records, in seconds, by service name: an exact name beats the longest
    /// `prefix*`, `*` is the fallback, 0 without a match.
    pub service_ttl: BTreeMap<String, u32>,
    /// Most answers in a UDP response to a query without EDNS (0: only the 512-byte limit).
    pub udp_answer_limit: usize,
    /// Most A/AAAA/SRV answers in any response (0: unlimited).
    pub a_record_limit: usize,
    /// Servers asked for names outside our domains (`ip` or `ip:port`), in order; without any,
    /// such names are refused.
    pub recursors: Vec<String>,
    /// How long each recursor gets to answer, in milliseconds.
    pub recursor_timeout_ms: u64,
    /// Client prefixes that may have names outside our domains forwarded, besides loopback and
    /// the host's own networks (which always may): `["10.0.0.0/8"]`. Others get REFUSED.
    pub recursor_allow: Vec<String>,
    /// Most queries being forwarded at once; more are answered SERVFAIL.
    pub max_forwards: usize,
    /// Most DNS-over-TCP connections one client address holds at once; more are closed.
    pub max_tcp_connections_per_client: usize,
    /// Largest UDP response in bytes, whatever a client's EDNS claims (512 to 65535).
    pub max_udp_payload: u16,
    /// Threads serving DNS (each with its own runtime); 0 serves on the agent's runtime.
    pub threads: usize,
    /// SOA fields of NXDOMAIN and NODATA answers.
    pub soa: SoaSection,
    /// UDP responses a second per client /24 (IPv6: /56) once its burst is spent, against
    /// amplification; 0 turns the limit off. TCP is never limited.
    pub response_rate_limit: u32,
    /// Responses a client prefix may get at once after being quiet.
    pub response_rate_burst: u32,
    /// Every Nth response over the limit goes out as an empty truncated reply, so that a real
    /// client retries over TCP; 0: all are dropped.
    pub response_rate_slip: u32,
    /// Limit loopback, site-local sources (RFC 1918, 100.64/10, fc00::/7, link-local) and the
    /// host's own networks too. Off by default: they cannot be spoofed from the Internet, and a
    /// local forwarder or a cluster's CoreDNS sends many clients' queries from one of them.
    pub response_rate_limit_local: bool,
    /// Client prefixes never limited (`["198.51.100.0/24"]`), such as a public forwarder's.
    pub response_rate_exempt: Vec<String>,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            domain: "consul".to_owned(),
            alt_domain: None,
            only_passing: false,
            node_ttl: 0,
            service_ttl: BTreeMap::new(),
            udp_answer_limit: 3,
            a_record_limit: 0,
            recursors: Vec::new(),
            recursor_timeout_ms: 2000,
            recursor_allow: Vec::new(),
            max_forwards: 256,
            max_tcp_connections_per_client: meridian_dns::DEFAULT_TCP_PER_CLIENT,
            // DNS Flag Day 2020: no fragmentation, and little to amplify.
            max_udp_payload: 1232,
            threads: 1,
            soa: SoaSection::default(),
            // The dns crate's default (1,000/s, burst 2,000, slip 2) says why those numbers.
            response_rate_limit: meridian_dns::RateLimitSettings::default().rate,
            response_rate_burst: meridian_dns::RateLimitSettings::default().burst,
            response_rate_slip: meridian_dns::RateLimitSettings::default().slip,
            response_rate_limit_local: false,
            response_rate_exempt: Vec::new(),
        }
    }
}

/// What HTTP checks may reach and keep (`[checks]`). A check is written with a write token and
/// read by every reader, so by default it cannot reach link-local addresses (cloud metadata) or
/// this node's own API, and keeps the status line, not the body.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksSection {
    /// Prefixes HTTP checks may reach although refused by default: `["169.254.0.0/16"]`.
    pub http_allow: Vec<String>,
    /// Keep up to 4 KiB of an HTTP check's response body as its output, as Consul does.
    pub http_output_body: bool,
}

/// The service mesh (`[mesh]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    /// What a connection that no intention matches gets: `deny` (the default: a service is
    /// reached only by the callers an intention names) or `allow`.
    pub default_intention: meridian_topology::intention::Action,
    /// How long a leaf certificate is valid, in seconds (default 72 hours, as Consul's); the
    /// agent renews it at two thirds. At least 1 s (tests, demos), at most 30 days.
    pub leaf_ttl_s: u64,
    /// In a rotation of the DC's mesh CA, how long the next root is published (trusted
    /// everywhere) before it signs, in seconds: long enough for federation to carry it to every
    /// DC. At least 1 s, at most a day.
    pub rotation_activate_s: u64,
}

impl Default for MeshSection {
    fn default() -> Self {
        MeshSection {
            default_intention: meridian_topology::intention::Action::Deny,
            leaf_ttl_s: 72 * 3600,
            rotation_activate_s: 30,
        }
    }
}

impl MeshSection {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=30 * 24 * 3600).contains(&self.leaf_ttl_s) {
            return Err(ConfigError::invalid(
                "mesh.leaf_ttl_s",
                "must be between 1 and 2592000 (30 days)",
            ));
        }
        if !(1..=24 * 3600).contains(&self.rotation_activate_s) {
            return Err(ConfigError::invalid(
                "mesh.rotation_activate_s",
                "must be between 1 and 86400 (a day)",
            ));
        }
        Ok(())
    }
}

/// SOA fields (`[dns.soa]`), in seconds; the serial is a timestamp.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SoaSection {
    /// Refresh.
    pub refresh: u32,
    /// Retry.
    pub retry: u32,
    /// Expire.
    pub expire: u32,
    /// Minimum TTL (negative caching); also the SOA record's own TTL.
    pub min_ttl: u32,
}

impl Default for SoaSection {
    fn default() -> Self {
        let d = meridian_dns::SoaSettings::default();
        SoaSection {
            refresh: d.refresh,
            retry: d.retry,
            expire: d.expire,
            min_ttl: d.min_ttl,
        }
    }
}

/// Most DNS server threads.
const MAX_DNS_THREADS: usize = 64;

impl DnsSection {
    fn validate(&self) -> Result<(), ConfigError> {
        check_domain("dns.domain", &self.domain)?;
        if let Some(alt) = &self.alt_domain {
            check_domain("dns.alt_domain", alt)?;
            let (d, a) = (normalize_domain(&self.domain), normalize_domain(alt));
            if d == a || d.ends_with(&format!(".{a}")) || a.ends_with(&format!(".{d}")) {
                return Err(ConfigError::invalid(
                    "dns.alt_domain",
                    "must differ from `dns.domain` and neither may be inside the other",
                ));
            }
        }
        for key in self.service_ttl.keys() {
            let name = key.strip_suffix('*').unwrap_or(key);
            let ok = key == "*"
                || (!name.is_empty()
                    && name.len() <= 63
                    && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
            if !ok {
                return Err(ConfigError::invalid(
                    format!("dns.service_ttl.{key}"),
                    "keys are a service name, a prefix ending in `*`, or `*`",
                ));
            }
        }
        for (i, r) in self.recursors.iter().enumerate() {
            if parse_recursor(r).is_none() {
                return Err(ConfigError::invalid(
                    format!("dns.recursors[{i}]"),
                    format!("{r:?} is not an IP address or ip:port"),
                ));
            }
        }
        if !(1..=60_000).contains(&self.recursor_timeout_ms) {
            return Err(ConfigError::invalid(
                "dns.recursor_timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        if self.threads > MAX_DNS_THREADS {
            return Err(ConfigError::invalid(
                "dns.threads",
                format!("must be at most {MAX_DNS_THREADS}"),
            ));
        }
        for (key, v) in [
            ("dns.soa.refresh", self.soa.refresh),
            ("dns.soa.retry", self.soa.retry),
            ("dns.soa.expire", self.soa.expire),
        ] {
            if i32::try_from(v).is_err() {
                return Err(ConfigError::invalid(key, "must be below 2^31"));
            }
        }
        // Past a million a second the limit is finer than the limiter's microsecond clock.
        if self.response_rate_limit > 1_000_000 {
            return Err(ConfigError::invalid(
                "dns.response_rate_limit",
                "must be at most 1000000 (0 turns the limit off)",
            ));
        }
        if self.response_rate_limit > 0 && !(1..=1_000_000).contains(&self.response_rate_burst) {
            return Err(ConfigError::invalid(
                "dns.response_rate_burst",
                "must be between 1 and 1000000",
            ));
        }
        for (i, p) in self.recursor_allow.iter().enumerate() {
            p.parse::<Prefix>().map_err(|e| {
                ConfigError::invalid(format!("dns.recursor_allow[{i}]"), e.to_string())
            })?;
        }
        if self.max_forwards == 0 {
            return Err(ConfigError::invalid(
                "dns.max_forwards",
                "must be at least 1",
            ));
        }
        if self.max_tcp_connections_per_client == 0 {
            return Err(ConfigError::invalid(
                "dns.max_tcp_connections_per_client",
                "must be at least 1",
            ));
        }
        if self.max_udp_payload < 512 {
            return Err(ConfigError::invalid(
                "dns.max_udp_payload",
                "must be at least 512 (the size every DNS client accepts)",
            ));
        }
        for (i, p) in self.response_rate_exempt.iter().enumerate() {
            p.parse::<Prefix>().map_err(|e| {
                ConfigError::invalid(format!("dns.response_rate_exempt[{i}]"), e.to_string())
            })?;
        }
        Ok(())
    }

    /// The DNS server's settings for node `node_name`. Call [`Config::validate`] first.
    pub fn to_settings(&self, node_name: &str) -> meridian_dns::DnsSettings {
        let mut s = meridian_dns::DnsSettings::new(&self.domain, node_name);
        s.alt_domain = self.alt_domain.as_deref().map(normalize_domain);
        s.only_passing = self.only_passing;
        s.node_ttl = self.node_ttl;
        s.service_ttl =
            meridian_dns::TtlMap::new(self.service_ttl.iter().map(|(k, v)| (k.as_str(), *v)));
        s.udp_answer_limit = self.udp_answer_limit;
        s.a_record_limit = self.a_record_limit;
        s.recursors = self
            .recursors
            .iter()
            .filter_map(|r| parse_recursor(r))
            .collect();
        s.recursor_timeout = Duration::from_millis(self.recursor_timeout_ms);
        // Checked by `validate`.
        s.recursor_allow = self
            .recursor_allow
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        s.max_forwards = self.max_forwards;
        s.max_tcp_per_client = self.max_tcp_connections_per_client;
        s.max_udp_payload = self.max_udp_payload;
        s.soa = meridian_dns::SoaSettings {
            refresh: self.soa.refresh,
            retry: self.soa.retry,
            expire: self.soa.expire,
            min_ttl: self.soa.min_ttl,
        };
        s.rate_limit = meridian_dns::RateLimitSettings {
            rate: self.response_rate_limit,
            burst: self.response_rate_burst,
            slip: self.response_rate_slip,
            limit_local: self.response_rate_limit_local,
            // Checked by `validate`.
            exempt: self
                .response_rate_exempt
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
        };
        s
    }
}

/// A domain: dot-separated DNS labels, an optional trailing dot.
fn check_domain(key: &str, d: &str) -> Result<(), ConfigError> {
    let trimmed = d.strip_suffix('.').unwrap_or(d);
    if trimmed.is_empty() || trimmed.len() > 200 || !trimmed.split('.').all(is_label) {
        return Err(ConfigError::invalid(
            key,
            format!("{d:?} is not a domain of DNS labels (e.g. `consul`)"),
        ));
    }
    Ok(())
}

/// `ip` (port 53) or `ip:port` / `[ip6]:port`.
fn parse_recursor(r: &str) -> Option<SocketAddr> {
    r.parse::<SocketAddr>()
        .ok()
        .or_else(|| r.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// Largest `limits.max_body_bytes`: a body is buffered whole before it is decoded.
const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Largest Raft timing and write timeout, in milliseconds. Beyond it a value is surely a mistake,
/// and far beyond it `Instant::now() + timeout` overflows and panics.
const MAX_TIMING_MS: u64 = 10 * 60 * 1000;

/// Values given on the command line, which win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--bind`.
    pub bind: Option<IpAddr>,
    /// `--advertise`.
    pub advertise: Option<IpAddr>,
    /// `--node`.
    pub node_name: Option<String>,
    /// `--datacenter`.
    pub datacenter: Option<String>,
    /// `--http-port`.
    pub http_port: Option<u16>,
    /// `--dns-port`.
    pub dns_port: Option<u16>,
    /// `--rpc-port`.
    pub rpc_port: Option<u16>,
    /// `--wan-port`.
    pub wan_port: Option<u16>,
    /// `--join-wan` (appended to `federation.join`).
    pub join_wan: Vec<String>,
    /// `--gateway-only`.
    pub gateway_only: bool,
    /// `--follow` (appended to `federation.local_servers`).
    pub follow: Vec<String>,
    /// `--gateway-port`.
    pub gateway_port: Option<u16>,
    /// `--dev-listen-any`.
    pub dev_listen_any: bool,
    /// `--trust-domain` (`[gateway] trust_domain`: the mesh's trust domain).
    pub trust_domain: Option<String>,
}

impl Config {
    /// Reads and parses a TOML file (not yet validated: apply overrides first).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text (not yet validated).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })
    }

    /// The one-node datacenter of `meridian agent --dev`: datacenter `dc1`, Raft ID 1, everything
    /// on 127.0.0.1 (unless overridden). The data folder is left unset: the caller picks one.
    pub fn dev(ov: &Overrides) -> Config {
        let mut cfg = Config {
            datacenter: "dc1".to_owned(),
            node_name: "dev".to_owned(),
            node_id: 1,
            bind: localhost(),
            advertise: None,
            data_dir: None,
            ports: Ports::default(),
            servers: Vec::new(),
            raft: RaftSection {
                // One voter elects itself at once; short timeouts make the dev agent ready fast.
                heartbeat_ms: 100,
                election_timeout_min_ms: 300,
                election_timeout_max_ms: 600,
                ..RaftSection::default()
            },
            limits: Limits::default(),
            dns: DnsSection::default(),
            federation: FederationSection::default(),
            gateway: GatewaySection::default(),
            failover: FailoverSection::default(),
            acl: crate::acl::AclSection::default(),
            checks: ChecksSection::default(),
            mesh: MeshSection::default(),
            insecure: false,
            dev: true,
            dev_listen_any: false,
            gateway_only: false,
            log_level: None,
        };
        cfg.apply(ov);
        let host = cfg.advertise_ip().to_string();
        cfg.servers = vec![Server {
            id: 1,
            rpc: join_host_port(&host, cfg.ports.rpc),
        }];
        cfg
    }

    /// Applies command-line values over the file's.
    pub fn apply(&mut self, ov: &Overrides) {
        if let Some(d) = &ov.data_dir {
            self.data_dir = Some(d.clone());
        }
        if let Some(b) = ov.bind {
            self.bind = b;
        }
        if let Some(a) = ov.advertise {
            self.advertise = Some(a);
        }
        if let Some(n) = &ov.node_name {
            self.node_name.clone_from(n);
        }
        if let Some(d) = &ov.datacenter {
            self.datacenter.clone_from(d);
        }
        self.federation.join.extend(ov.join_wan.iter().cloned());
        self.federation
            .local_servers
            .extend(ov.follow.iter().cloned());
        self.gateway_only |= ov.gateway_only;
        self.dev_listen_any |= ov.dev_listen_any;
        if let Some(td) = &ov.trust_domain {
            self.gateway.trust_domain = Some(td.clone());
        }
        let ports = &mut self.ports;
        for (slot, value) in [
            (&mut ports.http, ov.http_port),
            (&mut ports.dns, ov.dns_port),
            (&mut ports.rpc, ov.rpc_port),
            (&mut ports.wan, ov.wan_port),
            (&mut ports.gateway, ov.gateway_port),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
    }

    /// The address registered for this node: `advertise`, else `bind`.
    pub fn advertise_ip(&self) -> IpAddr {
        self.advertise.unwrap_or(self.bind)
    }

    /// Where other DCs reach this node's gateway bound on `port`: `[gateway] advertise`, else
    /// the advertise address and that port.
    pub fn gateway_advertise(&self, port: u16) -> SocketAddr {
        self.gateway
            .advertise
            .as_deref()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| SocketAddr::new(self.advertise_ip(), port))
    }

    /// Checks everything that can be checked before start-up; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_label("datacenter name", &self.datacenter)
            .map_err(|e| ConfigError::invalid("datacenter", e.to_string()))?;
        self.mesh.validate()?;
        validate_label("node name", &self.node_name)
            .map_err(|e| ConfigError::invalid("node_name", e.to_string()))?;
        if self.dev && !self.bind.is_loopback() && !self.dev_listen_any {
            return Err(ConfigError::invalid(
                "bind",
                format!(
                    "a --dev agent serves its API without tokens and trusts the published, insecure development CA, so it listens on loopback only; pass --dev-listen-any to listen on {} anyway",
                    self.bind
                ),
            ));
        }
        if self.advertise_ip().is_unspecified() {
            let key = if self.advertise.is_some() {
                "advertise"
            } else {
                "bind"
            };
            return Err(ConfigError::invalid(
                key,
                "an unspecified address (0.0.0.0 or ::) cannot be advertised; set `advertise`",
            ));
        }
        match &self.data_dir {
            None => {
                return Err(ConfigError::invalid(
                    "data_dir",
                    "required (in the file or with --data-dir)",
                ));
            }
            Some(d) if d.as_os_str().is_empty() => {
                return Err(ConfigError::invalid("data_dir", "must not be empty"));
            }
            Some(_) => {}
        }

        let mut seen_ports = BTreeMap::new();
        for (key, port) in self.ports.named() {
            if port == 0 {
                if key == "ports.rpc" {
                    return Err(ConfigError::invalid(
                        key,
                        "must not be 0: the other servers dial it",
                    ));
                }
                continue;
            }
            if let Some(other) = seen_ports.insert(port, key) {
                return Err(ConfigError::invalid(
                    key,
                    format!("port {port} is already used by `{other}`"),
                ));
            }
        }

        // A gateway-only node has no vote: the DC's servers are not its business.
        if !self.gateway_only {
            self.validate_servers()?;
        }

        let r = &self.raft;
        for (key, ms) in [
            ("raft.heartbeat_ms", r.heartbeat_ms),
            ("raft.election_timeout_min_ms", r.election_timeout_min_ms),
            ("raft.election_timeout_max_ms", r.election_timeout_max_ms),
            ("limits.write_timeout_ms", self.limits.write_timeout_ms),
        ] {
            if ms > MAX_TIMING_MS {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be at most {MAX_TIMING_MS} (10 minutes)"),
                ));
            }
        }
        if r.heartbeat_ms == 0 {
            return Err(ConfigError::invalid("raft.heartbeat_ms", "must be > 0"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(ConfigError::invalid(
                "raft.election_timeout_min_ms",
                "must be greater than raft.heartbeat_ms",
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(ConfigError::invalid(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms",
            ));
        }
        if r.snapshot_every == 0 {
            return Err(ConfigError::invalid("raft.snapshot_every", "must be > 0"));
        }
        if !(1024..=MAX_BODY_LIMIT).contains(&self.limits.max_body_bytes) {
            return Err(ConfigError::invalid(
                "limits.max_body_bytes",
                format!("must be between 1024 and {MAX_BODY_LIMIT}"),
            ));
        }
        if self.limits.max_connections_per_client == 0 {
            return Err(ConfigError::invalid(
                "limits.max_connections_per_client",
                "must be > 0",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits.max_connections",
                "must be > 0",
            ));
        }
        if self.limits.write_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "limits.write_timeout_ms",
                "must be > 0",
            ));
        }
        self.dns.validate()?;
        for (i, p) in self.checks.http_allow.iter().enumerate() {
            p.parse::<Prefix>().map_err(|e| {
                ConfigError::invalid(format!("checks.http_allow[{i}]"), e.to_string())
            })?;
        }
        self.federation.validate(&self.datacenter, self.dev)?;
        self.acl.validate()?;
        if !self.dev && !self.insecure && !self.gateway_only && !self.federation.has_tls() {
            return Err(ConfigError::invalid(
                "insecure",
                "refusing to run the LAN rpc port (Raft) without TLS: set [federation] ca_file, \
                 cert_file and key_file (`meridian tls cert create`), or `insecure = true` to \
                 accept anyone who can reach the port",
            ));
        }
        if self.federation.transport == FederationTransport::Gateway
            && !self.federation.join.is_empty()
            && (self.gateway_only || !self.gateway.enabled)
        {
            // The node's own gateway's tunnel asks the joined gateway whom it belongs to.
            return Err(ConfigError::invalid(
                "federation.join",
                "with transport = \"gateway\", a server joins through its own gateway: enable \
                 [gateway], or name the datacenter and its gateways under [[federation.peers]]",
            ));
        }
        if self.gateway_only {
            if self.federation.local_servers.is_empty() {
                return Err(ConfigError::invalid(
                    "federation.local_servers",
                    "a gateway-only node needs the WAN address of at least one server of its DC (--follow)",
                ));
            }
            if !self.dev && !self.federation.has_tls() {
                return Err(ConfigError::invalid(
                    "federation",
                    "a gateway-only node follows its DC over mutual TLS: set the certificates",
                ));
            }
            if !self.gateway.enabled {
                return Err(ConfigError::invalid(
                    "gateway.enabled",
                    "a gateway-only node needs its gateway",
                ));
            }
        }
        self.failover.validate()?;
        self.gateway.validate()
    }

    fn validate_servers(&self) -> Result<(), ConfigError> {
        // A joining node learns the group from its leader: any list that names this node will do.
        if !self.raft.join && ![1, 3, 5].contains(&self.servers.len()) {
            return Err(ConfigError::invalid(
                "servers",
                format!(
                    "a datacenter needs 1, 3 or 5 voters, {} are listed",
                    self.servers.len()
                ),
            ));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.id == 0 {
                return Err(ConfigError::invalid(
                    format!("servers[{i}].id"),
                    "must not be 0",
                ));
            }
            if !ids.insert(s.id) {
                return Err(ConfigError::invalid(
                    format!("servers[{i}].id"),
                    format!("id {} is listed twice", s.id),
                ));
            }
            let port = rpc_port(&s.rpc).ok_or_else(|| {
                ConfigError::invalid(
                    format!("servers[{i}].rpc"),
                    format!("{:?} is not host:port with a non-zero port", s.rpc),
                )
            })?;
            if !addrs.insert(s.rpc.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    format!("servers[{i}].rpc"),
                    format!("address {} is listed twice", s.rpc),
                ));
            }
            if s.id == self.node_id && port != self.ports.rpc {
                return Err(ConfigError::invalid(
                    format!("servers[{i}].rpc"),
                    format!(
                        "this node's own entry uses port {port} but `ports.rpc` is {}",
                        self.ports.rpc
                    ),
                ));
            }
        }
        if !ids.contains(&self.node_id) {
            return Err(ConfigError::invalid(
                "node_id",
                format!("{} is not the id of any [[servers]] entry", self.node_id),
            ));
        }
        Ok(())
    }

    /// The first key whose change `new` makes that a running node cannot apply (ports, data
    /// folder, identity, and every setting read only at start), if any. What a reload applies:
    /// the certificate files' contents (and paths), `[acl]`, `[failover]`, `log_level`, and
    /// `[limits]` but its connection caps.
    pub fn fixed_change(&self, new: &Config) -> Option<String> {
        macro_rules! fixed {
            ($($field:ident),*) => {
                $(
                    if self.$field != new.$field {
                        return Some(stringify!($field).to_owned());
                    }
                )*
            };
        }
        fixed!(datacenter, node_name, node_id, bind, advertise, data_dir);
        for ((key, old), (_, now)) in self.ports.named().into_iter().zip(new.ports.named()) {
            if old != now {
                return Some(key.to_owned());
            }
        }
        fixed!(servers, raft, dns, gateway, checks, insecure, gateway_only);
        // The connection caps size semaphores at start; the body cap and the write timeout
        // are read per request.
        if self.limits.max_connections != new.limits.max_connections {
            return Some("limits.max_connections".to_owned());
        }
        if self.limits.max_connections_per_client != new.limits.max_connections_per_client {
            return Some("limits.max_connections_per_client".to_owned());
        }
        if self.acl.token_prune_interval_ms != new.acl.token_prune_interval_ms {
            return Some("acl.token_prune_interval_ms".to_owned());
        }
        let (old, now) = (&self.federation, &new.federation);
        for (key, was, is) in [
            ("federation.ca_file", &old.ca_file, &now.ca_file),
            ("federation.cert_file", &old.cert_file, &now.cert_file),
            ("federation.key_file", &old.key_file, &now.key_file),
        ] {
            // A path may move; federation cannot be turned on or off.
            if was.is_some() != is.is_some() {
                return Some(key.to_owned());
            }
        }
        let mut rest = now.clone();
        rest.ca_file.clone_from(&old.ca_file);
        rest.cert_file.clone_from(&old.cert_file);
        rest.key_file.clone_from(&old.key_file);
        (rest != *old).then(|| "federation".to_owned())
    }

    /// Where a listener on `port` binds.
    pub fn bind_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.bind, port)
    }

    /// The catalog's configuration. Call [`Config::validate`] first.
    pub fn to_catalog(&self) -> Result<CatalogConfig, ConfigError> {
        let data_dir = self
            .data_dir
            .clone()
            .ok_or_else(|| ConfigError::invalid("data_dir", "required"))?;
        let r = &self.raft;
        Ok(CatalogConfig {
            datacenter: self.datacenter.clone(),
            node_name: self.node_name.clone(),
            node_id: self.node_id,
            advertise_addr: self.advertise_ip().to_string(),
            rpc_bind: self.bind_addr(self.ports.rpc),
            data_dir,
            servers: self.servers.iter().map(|s| (s.id, s.rpc.clone())).collect(),
            join: r.join,
            raft: RaftTuning {
                heartbeat: Duration::from_millis(r.heartbeat_ms),
                election_timeout_min: Duration::from_millis(r.election_timeout_min_ms),
                election_timeout_max: Duration::from_millis(r.election_timeout_max_ms),
                snapshot_every: r.snapshot_every,
                keep_logs: r.keep_logs,
            },
            write_timeout: Duration::from_millis(self.limits.write_timeout_ms),
            tls: None,
            checks: meridian_catalog::CheckPolicy {
                // Checked by `validate`.
                allow: self
                    .checks
                    .http_allow
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect(),
                own_api: vec![
                    self.bind_addr(self.ports.http),
                    SocketAddr::new(self.advertise_ip(), self.ports.http),
                ],
                keep_body: self.checks.http_output_body,
            },
        })
    }
}

/// The non-zero port of a `host:port` string with a non-empty host.
fn rpc_port(addr: &str) -> Option<u16> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    port.parse().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        insecure = true
        datacenter = "dc1"
        node_name = "n1"
        node_id = 1
        bind = "127.0.0.1"
        data_dir = "/tmp/meridian/test-n1"
        [ports]
        http = 8500
        [[servers]]
        id = 1
        rpc = "127.0.0.1:8300"
        [[servers]]
        id = 2
        rpc = "127.0.0.1:8310"
        [[servers]]
        id = 3
        rpc = "127.0.0.1:8320"
    "#;

    fn good() -> Config {
        let cfg = Config::parse(GOOD).expect("parses");
        cfg.validate().expect("valid");
        cfg
    }

    fn invalid_key(cfg: &Config) -> String {
        match cfg.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_conversion() {
        let cfg = good();
        assert_eq!(cfg.ports.dns, 8600);
        assert_eq!(cfg.ports.gateway, 8443);
        assert_eq!(cfg.limits.max_body_bytes, 512 * 1024);
        let cat = cfg.to_catalog().expect("converts");
        assert_eq!(cat.servers.len(), 3);
        assert_eq!(cat.rpc_bind, "127.0.0.1:8300".parse().expect("addr"));
        assert_eq!(cat.advertise_addr, "127.0.0.1");
        assert_eq!(cat.raft.heartbeat, RaftTuning::default().heartbeat);
    }

    #[test]
    fn gateway_caps_have_safe_defaults_and_refuse_zero() {
        let cfg = good();
        let g = &cfg.gateway;
        assert_eq!(g.max_connections_per_client, 256);
        assert_eq!(g.tunnel_retry, RetryPolicyName::UnderLoad);
        // An eighth of the DC's budget, at least 4, unless set.
        assert_eq!(g.tunnel_streams_per_client(), 125);
        let local = g.to_local(&cfg.dns);
        assert_eq!(local.max_connections_per_client, 256);
        let text = format!(
            "{GOOD}\n[gateway]\nmax_tunnel_streams_per_dc = 16\nmax_connections_per_client = 8\n"
        );
        let small = Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(small.gateway.tunnel_streams_per_client(), 4);
        assert_eq!(small.gateway.max_connections_per_client, 8);
        for key in [
            "max_connections_per_client",
            "max_tunnel_streams_per_client",
            "max_tunnel_connections_per_peer",
            "max_tunnel_streams_per_peer",
            "max_tunnel_handshakes",
        ] {
            let text = format!("{GOOD}\n[gateway]\n{key} = 0\n");
            let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(invalid_key(&cfg), format!("gateway.{key}"));
        }
    }

    #[test]
    fn joining_through_a_gateway_takes_a_gateway_address_and_the_nodes_own_gateway() {
        let mut cfg = good();
        cfg.federation.ca_file = Some("ca.pem".into());
        cfg.federation.cert_file = Some("n1.pem".into());
        cfg.federation.key_file = Some("n1-key.pem".into());
        cfg.federation.transport = FederationTransport::Gateway;
        cfg.federation.join = vec!["203.0.113.7:8443".into()];
        cfg.validate()
            .expect("a server with its gateway joins through another DC's gateway");
        cfg.federation.join = vec!["gw.dc1.example:8443".into()];
        assert_eq!(invalid_key(&cfg), "federation.join[0]");
        cfg.federation.join = vec!["203.0.113.7:8443".into()];
        cfg.gateway.enabled = false;
        assert_eq!(invalid_key(&cfg), "federation.join");
    }

    #[test]
    fn a_plain_text_rpc_port_needs_insecure_or_dev() {
        let mut cfg = good();
        cfg.insecure = false;
        assert_eq!(invalid_key(&cfg), "insecure");
        cfg.dev = true;
        cfg.validate()
            .expect("a --dev agent may run without certificates");
        let mut tls = good();
        tls.insecure = false;
        tls.federation.ca_file = Some("ca.pem".into());
        tls.federation.cert_file = Some("n1.pem".into());
        tls.federation.key_file = Some("n1-key.pem".into());
        tls.validate()
            .expect("certificates make the rpc port mutual TLS");
    }

    #[test]
    fn acl_tokens_are_read_and_validated() {
        let text = format!(
            "{GOOD}\n[acl]\nanonymous_read = true\nmanagement_token = \"0123456789abcdef0\"\n\
             [[acl.tokens]]\ndescription = \"ci\"\nsecret = \"fedcba98765432100\"\n\
             scope = \"write\"\nservices = [\"web*\"]\n"
        );
        let cfg = Config::parse(&text).expect("parses");
        cfg.validate().expect("valid");
        let acl = cfg.acl.to_acl(false);
        assert!(acl.enabled());
        let grant = acl
            .authorize(
                Some("fedcba98765432100"),
                crate::acl::Need::ServiceWrite,
                &|| std::sync::Arc::default(),
            )
            .expect("write token");
        assert!(grant.may_write_service("web-1") && !grant.may_write_service("db"));
        let short = format!("{GOOD}\n[acl]\nmanagement_token = \"short\"\n");
        assert_eq!(
            invalid_key(&Config::parse(&short).expect("parses")),
            "acl.management_token"
        );
    }

    #[test]
    fn the_test_kit_writes_configs_the_agent_accepts() {
        use meridian_testkit::config::{Federation, Peer};
        let dir = Path::new("/tmp/meridian-kit");
        let mut dc = meridian_testkit::agent::dc_configs("dc2", 3, dir);
        let c = &mut dc[1];
        c.insecure = false;
        c.advertise = Some("127.0.0.2".parse().expect("ip"));
        c.federation = Some(Federation {
            peers: vec![Peer {
                dc: "dc1".into(),
                addresses: vec!["127.0.0.1:8302".into()],
            }],
            export: Some(vec!["web".into()]),
            ..Federation::with_certs(&dir.join("ca.pem"), &dir.join("n.pem"), &dir.join("k.pem"))
        });
        c.set("failover", "nearest_n", 0);
        c.set("failover", "datacenters", vec!["dc1"]);
        c.set("gateway", "max_connections", 100);
        let cfg = Config::parse(&c.to_toml().expect("toml")).unwrap_or_else(|e| panic!("{e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((cfg.datacenter.as_str(), cfg.node_id), ("dc2", 2));
        assert_eq!(cfg.servers.len(), 3);
        assert_eq!(cfg.ports.rpc, c.ports.rpc);
        assert_eq!(cfg.failover.datacenters, ["dc1"]);
        assert_eq!(cfg.federation.peers[0].dc, "dc1");
        assert_eq!(cfg.gateway.max_connections, 100);
        assert!(cfg.acl.to_acl(false).enabled());
        // The one-node default too.
        let one = meridian_testkit::AgentConfig::new("dc1", "n1", c.ports, dir);
        Config::parse(&one.to_toml().expect("toml"))
            .and_then(|c| c.validate().map(|()| c))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn every_example_config_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("examples folder") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    cfg.validate()
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    cfg.to_catalog().expect("converts");
                    seen += 1;
                }
            }
        }
        assert!(seen >= 12, "only {seen} example configs found");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        for (extra, key) in [
            ("colour = \"blue\"", "colour"),
            ("[ports]\nhttps = 1", "https"),
            ("[raft]\nheartbeat = 1", "heartbeat"),
            ("[limits]\nmax_body = 1", "max_body"),
        ] {
            let text = format!("{GOOD}\n{extra}\n").replace("[ports]\n        http = 8500", "");
            let err = Config::parse(&text).expect_err(extra).to_string();
            assert!(err.contains(key), "{err}");
        }
        let text = GOOD.replace("rpc = \"127.0.0.1:8310\"", "rpc = \"x:1\"\nweight = 2");
        let err = Config::parse(&text)
            .expect_err("unknown server key")
            .to_string();
        assert!(err.contains("weight"), "{err}");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let mut c = good();
        c.datacenter = "dc_1".into();
        assert_eq!(invalid_key(&c), "datacenter");

        let mut c = good();
        c.node_name = "-n1".into();
        assert_eq!(invalid_key(&c), "node_name");

        let mut c = good();
        c.servers.pop();
        assert_eq!(invalid_key(&c), "servers");
        // A joining node takes its group from the leader: any list naming itself will do.
        c.raft.join = true;
        c.validate()
            .expect("a joining node with two of four servers listed");
        c.node_id = 9;
        assert_eq!(invalid_key(&c), "node_id", "its own entry is still needed");

        let mut c = good();
        c.servers[2].id = 2;
        assert_eq!(invalid_key(&c), "servers[2].id");

        let mut c = good();
        c.servers[2].rpc = "127.0.0.1:8310".into();
        assert_eq!(invalid_key(&c), "servers[2].rpc");

        let mut c = good();
        c.servers[1].rpc = "127.0.0.1".into();
        assert_eq!(invalid_key(&c), "servers[1].rpc");

        let mut c = good();
        c.node_id = 9;
        assert_eq!(invalid_key(&c), "node_id");

        let mut c = good();
        c.ports.rpc = 8301;
        assert_eq!(invalid_key(&c), "servers[0].rpc");

        let mut c = good();
        c.ports.dns = 8500;
        assert_eq!(invalid_key(&c), "ports.dns");

        let mut c = good();
        c.data_dir = None;
        assert_eq!(invalid_key(&c), "data_dir");

        let mut c = good();
        c.bind = "0.0.0.0".parse().expect("ip");
        assert_eq!(invalid_key(&c), "bind");
        c.advertise = Some("10.0.0.1".parse().expect("ip"));
        c.validate().expect("advertise fixes it");

        let mut c = good();
        c.raft.election_timeout_max_ms = c.raft.election_timeout_min_ms;
        assert_eq!(invalid_key(&c), "raft.election_timeout_max_ms");

        let mut c = good();
        c.raft.election_timeout_max_ms = u64::MAX;
        assert_eq!(invalid_key(&c), "raft.election_timeout_max_ms");

        let mut c = good();
        c.limits.write_timeout_ms = u64::MAX;
        assert_eq!(invalid_key(&c), "limits.write_timeout_ms");

        let mut c = good();
        c.limits.max_body_bytes = usize::MAX;
        assert_eq!(invalid_key(&c), "limits.max_body_bytes");

        let mut c = good();
        c.limits.max_connections = 0;
        assert_eq!(invalid_key(&c), "limits.max_connections");
    }

    #[test]
    fn dns_section_is_read_and_validated() {
        let text = format!(
            "{GOOD}\n[dns]\ndomain = \"Mesh.\"\nalt_domain = \"meridian.example\"\n\
             only_passing = true\nnode_ttl = 9\nudp_answer_limit = 0\na_record_limit = 4\n\
             recursors = [\"127.0.0.53\", \"[::1]:5353\"]\nthreads = 2\n\
             [dns.service_ttl]\n\"*\" = 1\n\"web*\" = 2\nweb = 3\n[dns.soa]\nretry = 60\n"
        );
        let c = Config::parse(&text).expect("parses");
        c.validate().expect("valid");
        let s = c.dns.to_settings("N1");
        assert_eq!(s.domain, "mesh");
        assert_eq!(s.alt_domain.as_deref(), Some("meridian.example"));
        assert!(s.only_passing);
        assert_eq!(
            (s.node_ttl, s.udp_answer_limit, s.a_record_limit),
            (9, 0, 4)
        );
        assert_eq!(
            s.recursors,
            [
                "127.0.0.53:53".parse().expect("addr"),
                "[::1]:5353".parse().expect("addr")
            ]
        );
        assert_eq!(
            (
                s.service_ttl.get("web"),
                s.service_ttl.get("webx"),
                s.service_ttl.get("db")
            ),
            (3, 2, 1)
        );
        assert_eq!((s.soa.retry, s.soa.refresh), (60, 3600));
        assert_eq!(s.node_name, "n1");
        assert_eq!(good().dns.udp_answer_limit, 3, "Consul's default");
        let rl = good().dns.to_settings("n1").rate_limit;
        assert_eq!((rl.rate, rl.burst, rl.slip), (1000, 2000, 2));

        let err = Config::parse(&format!("{GOOD}\n[dns]\nttl = 1\n"))
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("ttl"), "{err}");
        for (edit, key) in [
            ("domain = \"bad_domain\"", "dns.domain"),
            ("domain = \"\"", "dns.domain"),
            ("alt_domain = \"CONSUL\"", "dns.alt_domain"),
            ("alt_domain = \"x.consul\"", "dns.alt_domain"),
            ("recursors = [\"dns.example\"]", "dns.recursors[0]"),
            ("recursor_timeout_ms = 0", "dns.recursor_timeout_ms"),
            ("threads = 1000", "dns.threads"),
            ("service_ttl = { \"we b\" = 1 }", "dns.service_ttl.we b"),
            ("soa = { expire = 4294967295 }", "dns.soa.expire"),
            ("response_rate_limit = 2000000", "dns.response_rate_limit"),
            ("response_rate_burst = 0", "dns.response_rate_burst"),
        ] {
            let c = Config::parse(&format!("{GOOD}\n[dns]\n{edit}\n")).expect(edit);
            assert_eq!(invalid_key(&c), key, "{edit}");
        }
    }

    #[test]
    fn federation_section_is_read_and_validated() {
        let mut cfg = good();
        assert!(!cfg.federation.has_tls(), "off by default");
        cfg.federation.peers.push(PeerSection {
            dc: "dc2".into(),
            addresses: vec!["10.0.0.2:8302".into()],
        });
        assert_eq!(
            invalid_key(&cfg),
            "federation.peers",
            "peers need certificates"
        );
        cfg.federation.ca_file = Some("ca.pem".into());
        assert_eq!(
            invalid_key(&cfg),
            "federation",
            "the three files go together"
        );
        cfg.federation.cert_file = Some("n1.pem".into());
        cfg.federation.key_file = Some("n1-key.pem".into());
        cfg.validate().expect("valid");
        cfg.federation.peers[0].addresses.push("nohost".into());
        assert_eq!(invalid_key(&cfg), "federation.peers[0].addresses[1]");
        cfg.federation.peers[0].addresses.pop();
        cfg.federation.peers[0].dc = cfg.datacenter.clone();
        assert_eq!(invalid_key(&cfg), "federation.peers[0].dc", "not itself");
        cfg.federation.peers[0].dc = "dc2".into();
        cfg.federation.export = Some(vec!["web".into(), "api-*".into(), "bad name".into()]);
        assert_eq!(invalid_key(&cfg), "federation.export[2]");
        cfg.federation.export = Some(vec!["web".into(), "api-*".into()]);
        assert!(cfg.federation.policy().allows("api-v1"));
        assert!(!cfg.federation.policy().allows("db"));
        cfg.federation.idle_timeout_ms = cfg.federation.heartbeat_ms;
        assert_eq!(invalid_key(&cfg), "federation.idle_timeout_ms");
        cfg.federation.idle_timeout_ms = 5_000;
        cfg.dev = true;
        assert_eq!(invalid_key(&cfg), "federation", "dev agents use the dev CA");
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = good();
        c.apply(&Overrides {
            http_port: Some(9500),
            node_name: Some("other".into()),
            data_dir: Some("/tmp/x".into()),
            ..Overrides::default()
        });
        assert_eq!(c.ports.http, 9500);
        assert_eq!(c.node_name, "other");
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/tmp/x")));
        c.validate().expect("still valid");
        c.apply(&Overrides {
            rpc_port: Some(9300),
            ..Overrides::default()
        });
        assert_eq!(invalid_key(&c), "servers[0].rpc");
    }

    #[test]
    fn dev_config_is_valid_once_it_has_a_folder() {
        let ov = Overrides {
            rpc_port: Some(9300),
            node_name: Some("laptop".into()),
            ..Overrides::default()
        };
        let mut c = Config::dev(&ov);
        assert_eq!(c.servers[0].rpc, "127.0.0.1:9300");
        assert_eq!(c.node_name, "laptop");
        assert_eq!(invalid_key(&c), "data_dir");
        c.data_dir = Some("/tmp/dev".into());
        c.validate().expect("valid");
    }

    #[test]
    fn a_dev_agent_listens_on_loopback_unless_told_otherwise() {
        let ov = Overrides {
            bind: Some("0.0.0.0".parse().expect("ip")),
            advertise: Some("192.0.2.1".parse().expect("ip")),
            data_dir: Some("/tmp/dev".into()),
            ..Overrides::default()
        };
        let mut c = Config::dev(&ov);
        assert_eq!(invalid_key(&c), "bind");
        let err = c.validate().expect_err("open to the network").to_string();
        assert!(err.contains("--dev-listen-any"), "{err}");
        c.apply(&Overrides {
            dev_listen_any: true,
            ..Overrides::default()
        });
        c.validate().expect("asked for");
        let on_loopback = Overrides {
            bind: Some("127.0.0.2".parse().expect("ip")),
            data_dir: Some("/tmp/dev".into()),
            ..Overrides::default()
        };
        Config::dev(&on_loopback).validate().expect("loopback");
    }
}
