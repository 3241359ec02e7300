//! Meridian's built-in mesh sidecar (`meridian connect proxy`): it stands beside one
//! application, holds its service's leaf certificate from the local agent, and carries the
//! application's connections over mutual TLS.
//!
//! The way in (`inbound.rs`) accepts mesh connections for the service, proves the caller by the
//! federation's trust bundle, asks the intentions, and relays to the application. The way out
//! (`outbound.rs`) gives each upstream a local listener and carries a connection to where the
//! agent resolves the upstream, through the gateways when that is another datacenter: the
//! gateways route the mesh SNI and never see plaintext. `agent.rs` is all the sidecar knows of
//! the world: blocking queries on the agent's HTTP API for the leaf, the roots, the upstreams'
//! endpoints, the local gateways and the intentions; `material.rs` turns the leaf and roots into
//! rustls configurations, swapped whole on a renewal so open connections are untouched.
//!
//! The sidecar registers itself as a `connect-proxy` for its service (Consul's `Kind` and
//! `Proxy`), with TCP checks on its own listener and on the application, and deregisters when it
//! stops: the gateways and other sidecars find the service's mesh endpoints by it.

mod agent;
mod inbound;
mod material;
mod metrics;
mod outbound;

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::{Agent, Endpoints, LeafAnswer, RootsAnswer, decode, entry_addrs};
use crate::inbound::Decisions;
use crate::material::Material;
pub use crate::metrics::SidecarMetrics;
use crate::outbound::Upstream;

/// Why the sidecar cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The agent refused or could not be reached.
    #[error("agent: {0}")]
    Agent(String),
    /// The leaf or the roots do not make a TLS configuration.
    #[error("mesh TLS material: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("listening on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// A flag is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// One upstream the application calls: a service, a fixed datacenter or the failover policy,
/// and the local address the sidecar listens on for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The service called.
    pub service: String,
    /// A fixed datacenter; `None` resolves by the failover policy.
    pub datacenter: Option<String>,
    /// The local listening address.
    pub bind: SocketAddr,
}

impl FromStr for UpstreamSpec {
    type Err = SidecarError;

    /// `SERVICE:PORT` or `SERVICE@DC:PORT` (on 127.0.0.1), or `SERVICE[@DC]:IP:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            SidecarError::Invalid(format!(
                "upstream {s:?}: expected SERVICE[@DC]:PORT or SERVICE[@DC]:IP:PORT"
            ))
        };
        let (name, bind) = s.split_once(':').ok_or_else(bad)?;
        let bind = match bind.parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => bind.parse::<SocketAddr>().map_err(|_| bad())?,
        };
        if bind.port() == 0 {
            return Err(bad());
        }
        let (service, dc) = match name.split_once('@') {
            Some((svc, dc)) => (svc, Some(dc.to_ascii_lowercase())),
            None => (name, None),
        };
        let label = |v: &str| meridian_topology::names::validate_label("upstream", v);
        label(service).map_err(|e| SidecarError::Invalid(e.to_string()))?;
        if let Some(dc) = &dc {
            label(dc).map_err(|e| SidecarError::Invalid(e.to_string()))?;
        }
        Ok(UpstreamSpec {
            service: service.to_owned(),
            datacenter: dc,
            bind,
        })
    }
}

/// What the sidecar does.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The service it fronts (its leaf's identity).
    pub service: String,
    /// Its own instance ID in the catalog.
    pub id: String,
    /// Where mesh connections for the service arrive.
    pub listen: SocketAddr,
    /// The address registered for it (default: the listening address, unless unspecified, then
    /// the agent's node address).
    pub advertise: Option<IpAddr>,
    /// The application.
    pub local_app: SocketAddr,
    /// The services the application calls.
    pub upstreams: Vec<UpstreamSpec>,
    /// The local agent's HTTP API (`host:port`).
    pub agent: String,
    /// The token for the agent (it must write the service and the proxy's name).
    pub token: Option<String>,
    /// Register as a `connect-proxy` (and deregister at the end).
    pub register: bool,
    /// Time for a TLS handshake, either way.
    pub handshake_timeout: Duration,
    /// Time for a TCP connect, either way.
    pub connect_timeout: Duration,
    /// A relayed connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once, per direction (inbound, each upstream).
    pub max_connections: usize,
    /// Inbound connections open at once from one address.
    pub max_connections_per_client: usize,
}

impl SidecarConfig {
    /// Defaults for `service` relaying to `local_app`, listening on `listen`.
    pub fn new(service: &str, listen: SocketAddr, local_app: SocketAddr, agent: &str) -> Self {
        SidecarConfig {
            service: service.to_owned(),
            id: format!("{service}-sidecar-proxy"),
            listen,
            advertise: None,
            local_app,
            upstreams: Vec::new(),
            agent: agent.to_owned(),
            token: None,
            register: true,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_connections: 16_384,
            max_connections_per_client: 4_096,
        }
    }
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub config: SidecarConfig,
    pub agent: Agent,
    pub material: ArcSwap<Material>,
    pub gateways: ArcSwap<Vec<SocketAddr>>,
    pub decisions: Decisions,
    /// Held while asking the agent for a decision (see `inbound::authorized`).
    pub asking: tokio::sync::Mutex<()>,
    /// Bumped whenever the intentions that apply to the service change.
    pub generations: watch::Receiver<u64>,
    pub metrics: Arc<SidecarMetrics>,
}

/// The sidecar's metric families, for a registry.
#[derive(Debug, Clone)]
pub struct MetricsCollector(pub Arc<SidecarMetrics>);

impl Collector for MetricsCollector {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode(enc)
    }
}

/// A running sidecar.
pub struct Sidecar {
    shared: Arc<Shared>,
    /// Where it listens for mesh connections (the port chosen, if 0 was asked).
    pub inbound: SocketAddr,
    /// Where it listens for each upstream, in the order given.
    pub upstreams: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The largest relay buffer per direction (grown from 16 KiB only while reads fill it): four TLS
/// records' worth, so one read takes what the peer sent in a burst. 5 % less CPU per MB and 5 %
/// more bulk throughput than 16 KiB in `meridian-bench mesh`.
pub(crate) const RELAY_BUF: usize = 64 * 1024;

/// How long to wait before asking the agent again after a failure.
const RETRY: Duration = Duration::from_secs(1);

fn leaf_path(service: &str) -> String {
    format!(
        "/v1/agent/connect/ca/leaf/{}",
        meridian_client::api::path_segment(service)
    )
}

fn endpoints_path(up: &UpstreamSpec) -> String {
    let service = meridian_client::api::path_segment(&up.service);
    match &up.datacenter {
        Some(dc) => format!("/v1/health/connect/{service}?passing&dc={dc}"),
        None => format!("/v1/health/connect/{service}?passing&failover"),
    }
}

const GATEWAYS_PATH: &str = "/v1/health/service/meridian-gateway?passing";

impl Sidecar {
    /// Takes the leaf and roots from the agent, binds the listeners, registers, and starts
    /// following the agent. Fails if the agent cannot give the leaf or the roots.
    pub async fn start(config: SidecarConfig) -> Result<Sidecar, SidecarError> {
        let agent = Agent::new(&config.agent, config.token.as_deref())?;
        let leaf_answer = agent.watch(&leaf_path(&config.service), 0).await?;
        let roots_answer = agent.watch("/v1/agent/connect/ca/roots", 0).await?;
        let leaf: LeafAnswer = decode(&leaf_answer, "leaf")?;
        let roots: RootsAnswer = decode(&roots_answer, "roots")?;
        let names: Vec<String> = config.upstreams.iter().map(|u| u.service.clone()).collect();
        let material = Material::build(&leaf, &roots, &names)?;
        let local_dc = material.dc.clone();
        let metrics = Arc::new(SidecarMetrics::default());
        metrics
            .leaves
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let inbound =
            TcpListener::bind(config.listen)
                .await
                .map_err(|error| SidecarError::Bind {
                    addr: config.listen,
                    error,
                })?;
        let inbound_addr = inbound.local_addr().map_err(|error| SidecarError::Bind {
            addr: config.listen,
            error,
        })?;
        let mut up_listeners = Vec::new();
        for up in &config.upstreams {
            let l = TcpListener::bind(up.bind)
                .await
                .map_err(|error| SidecarError::Bind {
                    addr: up.bind,
                    error,
                })?;
            let addr = l.local_addr().map_err(|error| SidecarError::Bind {
                addr: up.bind,
                error,
            })?;
            up_listeners.push((l, addr));
        }

        let (generation_tx, generations) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: config.clone(),
            agent,
            material: ArcSwap::from_pointee(material),
            gateways: ArcSwap::from_pointee(Vec::new()),
            decisions: Decisions::default(),
            asking: tokio::sync::Mutex::new(()),
            generations,
            metrics,
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(follow_material(
            shared.clone(),
            leaf_answer.index,
            roots_answer.index,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(follow_intentions(
            shared.clone(),
            generation_tx,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(follow_gateways(
            shared.clone(),
            stop_rx.clone(),
        )));
        let mut upstream_addrs = Vec::new();
        for (spec, (listener, addr)) in config.upstreams.iter().zip(up_listeners) {
            let up = Arc::new(Upstream {
                spec: spec.clone(),
                endpoints: ArcSwap::from_pointee(Endpoints::default()),
            });
            tasks.push(tokio::spawn(follow_endpoints(
                shared.clone(),
                up.clone(),
                local_dc.clone(),
                stop_rx.clone(),
            )));
            tasks.push(tokio::spawn(outbound::serve(
                listener,
                up,
                shared.clone(),
                stop_rx.clone(),
            )));
            upstream_addrs.push(addr);
        }
        tasks.push(tokio::spawn(inbound::serve(
            inbound,
            shared.clone(),
            stop_rx.clone(),
        )));
        let sidecar = Sidecar {
            shared,
            inbound: inbound_addr,
            upstreams: upstream_addrs,
            stop,
            tasks,
        };
        if config.register
            && let Err(e) = sidecar.register().await
        {
            // Nothing registered: stop what was started before saying why.
            let _ = sidecar.stop.send(true);
            for t in &sidecar.tasks {
                t.abort();
            }
            return Err(e);
        }
        Ok(sidecar)
    }

    /// The sidecar's counters.
    pub fn metrics(&self) -> Arc<SidecarMetrics> {
        self.shared.metrics.clone()
    }

    async fn register(&self) -> Result<(), SidecarError> {
        let c = &self.shared.config;
        let address = match c.advertise {
            Some(ip) => ip.to_string(),
            None if !self.inbound.ip().is_unspecified() => self.inbound.ip().to_string(),
            // The node's address.
            None => String::new(),
        };
        let check_addr = |a: SocketAddr| {
            if a.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], a.port())).to_string()
            } else {
                a.to_string()
            }
        };
        let upstreams: Vec<_> = c
            .upstreams
            .iter()
            .zip(&self.upstreams)
            .map(|(u, addr)| {
                json!({
                    "DestinationType": "service",
                    "DestinationName": u.service,
                    "Datacenter": u.datacenter.clone().unwrap_or_default(),
                    "LocalBindAddress": addr.ip().to_string(),
                    "LocalBindPort": addr.port(),
                })
            })
            .collect();
        let definition = json!({
            "ID": c.id,
            "Name": format!("{}-sidecar-proxy", c.service),
            "Kind": "connect-proxy",
            "Address": address,
            "Port": self.inbound.port(),
            "Proxy": {
                "DestinationServiceName": c.service,
                "DestinationServiceID": c.service,
                "LocalServiceAddress": c.local_app.ip().to_string(),
                "LocalServicePort": c.local_app.port(),
                "Upstreams": upstreams,
            },
            "Checks": [
                {"Name": "Sidecar listening", "TCP": check_addr(self.inbound), "Interval": "5s"},
                {"Name": "Application listening", "TCP": check_addr(c.local_app), "Interval": "5s"},
            ],
        });
        self.shared.agent.register(&definition).await?;
        tracing::info!(id = %c.id, port = self.inbound.port(), "registered as a connect-proxy");
        Ok(())
    }

    /// Stops accepting, deregisters (if it registered) and ends the followers. Open connections
    /// end with their tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let c = &self.shared.config;
        if c.register
            && let Err(e) = self.shared.agent.deregister(&c.id).await
        {
            tracing::warn!(error = %e, "could not deregister the sidecar");
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Waits `RETRY`, or less if stopping; whether to go on.
async fn pause(stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RETRY) => true,
        _ = stop.changed() => false,
    }
}

/// Follows the leaf (renewals) and the roots (new DCs, rotations) and swaps the material.
async fn follow_material(
    shared: Arc<Shared>,
    mut leaf_index: u64,
    mut roots_index: u64,
    mut stop: watch::Receiver<bool>,
) {
    let agent = shared.agent.clone();
    let leaf_path = leaf_path(&shared.config.service);
    let names: Vec<String> = shared
        .config
        .upstreams
        .iter()
        .map(|u| u.service.clone())
        .collect();
    loop {
        // Whichever changes first; then both are read again to build one consistent material.
        let changed = tokio::select! {
            r = agent.watch(&leaf_path, leaf_index) => r.map(|a| a.index != leaf_index),
            r = agent.watch("/v1/agent/connect/ca/roots", roots_index) => r.map(|a| a.index != roots_index),
            _ = stop.changed() => return,
        };
        match changed {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(error = %e, "following the leaf and roots");
                if !pause(&mut stop).await {
                    return;
                }
                continue;
            }
        }
        let rebuilt = async {
            let leaf_answer = agent.watch(&leaf_path, 0).await?;
            let roots_answer = agent.watch("/v1/agent/connect/ca/roots", 0).await?;
            let leaf: LeafAnswer = decode(&leaf_answer, "leaf")?;
            let roots: RootsAnswer = decode(&roots_answer, "roots")?;
            let m = Material::build(&leaf, &roots, &names)?;
            Ok::<_, SidecarError>((m, leaf_answer.index, roots_answer.index))
        };
        match rebuilt.await {
            Ok((m, li, ri)) => {
                if li != leaf_index {
                    shared
                        .metrics
                        .leaves
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(serial = %m.serial, "took a renewed leaf into use");
                }
                if ri != roots_index {
                    tracing::info!("the mesh roots changed");
                }
                (leaf_index, roots_index) = (li, ri);
                shared.material.store(Arc::new(m));
            }
            Err(e) => {
                tracing::warn!(error = %e, "rebuilding the mesh TLS material");
                if !pause(&mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Follows the intentions that apply to the service: each change bumps the generation, which
/// makes every cached decision stale and every open connection ask again.
async fn follow_intentions(
    shared: Arc<Shared>,
    generation: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let path = format!(
        "/v1/connect/intentions/match?by=destination&name={}",
        meridian_client::api::path_segment(&shared.config.service)
    );
    let mut index = 0;
    let mut count = 0u64;
    loop {
        let r = tokio::select! {
            r = shared.agent.watch(&path, index) => r,
            _ = stop.changed() => return,
        };
        match r {
            Ok(a) if a.index != index => {
                if index != 0 {
                    count += 1;
                    shared.decisions.invalidate(count);
                    let _ = generation.send(count);
                    tracing::info!("the intentions for the service changed");
                }
                index = a.index;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "following the intentions");
                if !pause(&mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Follows the local gateways (the way to other datacenters).
async fn follow_gateways(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut index = 0;
    loop {
        let r = tokio::select! {
            r = shared.agent.watch(GATEWAYS_PATH, index) => r,
            _ = stop.changed() => return,
        };
        match r.and_then(|a| Ok((entry_addrs(&a)?, a.index))) {
            Ok((addrs, i)) => {
                index = i;
                shared.gateways.store(Arc::new(addrs));
            }
            Err(e) => {
                tracing::warn!(error = %e, "following the local gateways");
                if !pause(&mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Follows where an upstream's mesh endpoints resolve.
async fn follow_endpoints(
    shared: Arc<Shared>,
    up: Arc<Upstream>,
    local_dc: String,
    mut stop: watch::Receiver<bool>,
) {
    let path = endpoints_path(&up.spec);
    let mut index = 0;
    loop {
        let r = tokio::select! {
            r = shared.agent.watch(&path, index) => r,
            _ = stop.changed() => return,
        };
        let parsed = r.and_then(|a| {
            let addrs = entry_addrs(&a)?;
            // The DC the agent resolved to (by policy), else the one asked for, else ours.
            let dc = a
                .headers
                .get("x-meridian-datacenter")
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase)
                .or_else(|| up.spec.datacenter.clone())
                .unwrap_or_else(|| local_dc.clone());
            Ok((addrs, dc, a.index))
        });
        match parsed {
            Ok((addrs, dc, i)) => {
                index = i;
                let endpoints = if addrs.is_empty() {
                    Endpoints::default()
                } else {
                    Endpoints { dc, addrs }
                };
                if **up.endpoints.load() != endpoints {
                    tracing::info!(service = %up.spec.service, dc = %endpoints.dc, endpoints = endpoints.addrs.len(), "upstream resolved");
                }
                up.endpoints.store(Arc::new(endpoints));
            }
            Err(e) => {
                tracing::warn!(error = %e, service = %up.spec.service, "following the upstream");
                if !pause(&mut stop).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flags() {
        let u: UpstreamSpec = "web:9191".parse().expect("valid");
        assert_eq!(u.service, "web");
        assert_eq!(u.datacenter, None);
        assert_eq!(u.bind, SocketAddr::from(([127, 0, 0, 1], 9191)));
        let u: UpstreamSpec = "web@DC2:0.0.0.0:80".parse().expect("valid");
        assert_eq!(u.datacenter.as_deref(), Some("dc2"));
        assert_eq!(u.bind, SocketAddr::from(([0, 0, 0, 0], 80)));
        for bad in ["web", "web:0", "web:x", "we_b:80", "web@:80", "web:1.2.3.4"] {
            assert!(bad.parse::<UpstreamSpec>().is_err(), "{bad}");
        }
    }
}
