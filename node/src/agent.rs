//! A running Meridian node: the catalog, federation with the other datacenters, and the HTTP
//! API and the DNS server in front of them, started from a validated [`Config`], and stopped in
//! order (DNS and HTTP first, then federation, then the catalog) on a signal.
//!
//! [`Agent::start`] is what `meridian agent`, `meridian demo` and in-process tests use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use meridian_catalog::Catalog;
use meridian_dns::DnsServer;
use meridian_federation::Federation;
use meridian_identity::{Role, TlsMaterial};
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Config, FederationTransport, join_host_port};
use crate::failover::FailoverRuntime;
use crate::http::{self, ApiState, NodeInfo};

/// How long in-flight HTTP requests get to finish at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// A running node.
pub struct Agent {
    config: Config,
    catalog: Catalog,
    federation: Option<Arc<Federation>>,
    gateway: Option<RunningGateway>,
    failover: FailoverRuntime,
    api: ApiState,
    http_addr: SocketAddr,
    dns: Option<DnsServer>,
    stop_http: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    // Dropped (and so removed) only after the catalog has shut down.
    temp_dir: Option<TempDir>,
    /// The node's certificates, shared by the rpc port, federation and the tunnel: a reload
    /// swaps what they present and trust.
    tls: Option<Arc<TlsMaterial>>,
    /// `PUT /v1/agent/reload` requests, until the process takes them.
    reload_requests: Option<mpsc::Receiver<http::ReloadRequest>>,
    /// Prunes the DC's token and intention records while this node leads, and makes its mesh CA
    /// ([`crate::upkeep`]).
    upkeep: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Validates `config`, binds the HTTP port, starts the catalog and serves the API.
    /// `temp_dir`, if given, is the data folder and is removed when the agent is dropped.
    #[tracing::instrument(skip_all, fields(dc = %config.datacenter, node = %config.node_name))]
    pub async fn start(config: Config, temp_dir: Option<TempDir>) -> anyhow::Result<Agent> {
        config.validate()?;
        // The descriptor budget is checked before anything opens a file or a socket.
        let gateway_connections =
            crate::descriptors::gateway_connections(&config, crate::descriptors::raise_limit())?;
        let mut catalog_cfg = config.to_catalog()?;
        // Bind before starting the catalog, so a taken port fails fast and leaves nothing behind.
        let http_bind = config.bind_addr(config.ports.http);
        let listener = TcpListener::bind(http_bind)
            .await
            .with_context(|| format!("cannot listen for HTTP on {http_bind}"))?;
        let http_addr = listener.local_addr()?;
        // Certificates are checked before anything starts, so a bad file fails fast.
        let tls = federation_tls(&config, Role::Server)?;
        catalog_cfg.tls = tls.as_deref().map(rpc_tls).transpose()?;
        if catalog_cfg.tls.is_none() {
            tracing::warn!("the LAN rpc port runs without TLS (insecure = true)");
        }
        if config.dev && !config.bind.is_loopback() {
            tracing::warn!(bind = %config.bind, "a --dev agent listens beyond loopback (--dev-listen-any): its API has no tokens and its CA's key is public");
        }
        let acl = config.acl.to_acl(config.dev);
        if !acl.enabled() {
            // Open on loopback is how a dev agent and the demo run: only this machine reaches
            // it, so it is worth a line, not a warning. Open on any other address is a warning.
            if http_addr.ip().is_loopback() {
                tracing::info!(%http_addr, "the HTTP API runs without ACL tokens, on loopback only");
            } else {
                tracing::warn!(%http_addr, "the HTTP API runs without ACL tokens: anyone who reaches it may write");
            }
        }
        let federation_settings = tls
            .clone()
            .map(|t| federation_settings(&config, t))
            .transpose()?;
        let catalog = Catalog::start(catalog_cfg)
            .await
            .context("cannot start the catalog")?;
        let federation = match federation_settings {
            None => None,
            Some(mut settings) => {
                // Gateway-only nodes of this DC announce their gateways to it.
                settings.on_gateway = Some(crate::gateway_nodes::registrar(catalog.clone()));
                match Federation::start(settings, catalog.watch()).await {
                    Ok(f) => Some(Arc::new(f)),
                    Err(e) => {
                        catalog.shutdown().await;
                        return Err(anyhow::Error::new(e).context("cannot start federation"));
                    }
                }
            }
        };
        let views = federation
            .as_ref()
            .map_or_else(|| catalog.watch(), |f| f.watch());
        // Readers see the producers' views through the failover stage.
        let failover = FailoverRuntime::start(&config.failover, views);
        let views = failover.watch();
        let dns_bind = config.bind_addr(config.ports.dns);
        let dns = match DnsServer::start(
            config.dns.to_settings(&config.node_name),
            views.clone(),
            dns_bind,
            config.dns.threads,
        )
        .await
        {
            Ok(dns) => dns,
            Err(e) => {
                if let Some(f) = &federation {
                    f.shutdown().await;
                }
                catalog.shutdown().await;
                return Err(anyhow::Error::new(e));
            }
        };
        let gateway = if config.gateway.enabled {
            let started = start_gateway(
                &config,
                views.clone(),
                tls.clone(),
                Some((catalog.clone(), http_addr)),
                gateway_connections,
                federation.as_ref().map(|f| {
                    // Streams tunnelled here for this DC are handed to this server's WAN port.
                    let own = f.local_addr().map(reachable);
                    federation_route(f, own.into_iter().collect())
                }),
            );
            match started.await {
                Ok(g) => Some(g),
                Err(e) => {
                    dns.shutdown().await;
                    if let Some(f) = &federation {
                        f.shutdown().await;
                    }
                    catalog.shutdown().await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut joins = Vec::new();
        if let Some(t) = gateway.as_ref().and_then(|g| g.tunnel.clone()) {
            if let (Some(f), Some(tls)) = (&federation, &tls) {
                joins = join_through_gateways(f, &t, tls, &config)?;
            }
            failover.set_tunnel(t);
        }
        let via_gateways = federation.as_ref().and_then(|f| {
            keep_local_gateways(f, gateway.as_ref().map(|g| g.addr), catalog.watch())
        });
        let dns_addr = dns.local_addr();
        if let Some(f) = &federation {
            // Servers of other DCs reach these through the relay (drills, with the gateway
            // transport).
            f.set_relay_targets(meridian_federation::relay::RelayTargets {
                http: Some(reachable(http_addr)),
                dns: Some(reachable(dns_addr)),
                gateway: gateway.as_ref().map(|g| reachable(g.addr)),
            });
        }
        // Every part registers its own families; the API adds its and the catalog's.
        let mut registry = Registry::default();
        registry.register_collector(Box::new(dns.counters()));
        if let Some(f) = &federation {
            registry.register_collector(Box::new(f.counters().clone()));
        }
        if let Some(g) = &gateway {
            registry.register_collector(Box::new(g.metrics.clone()));
        }
        registry.register_collector(Box::new(failover.metrics()));
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let mut api = ApiState::new(
            catalog.clone(),
            views,
            federation.clone(),
            config.limits.max_body_bytes,
            registry,
        );
        // A dev agent has no file to re-read.
        if !config.dev {
            api = api.with_reload(reload_tx);
        }
        let api = api.with_acl(acl).with_node(NodeInfo {
            http: http_addr,
            dns: Some(dns_addr),
            gateway: gateway.as_ref().map(|g| g.addr),
            clock: failover.clock(),
            domain: config.dns.domain.clone(),
        });
        api.set_default_intention(config.mesh.default_intention);
        api.set_leaf_ttl(Duration::from_secs(config.mesh.leaf_ttl_s));
        api.set_rotation_delay(Duration::from_secs(config.mesh.rotation_activate_s));
        let mut upkeep = vec![tokio::spawn(crate::upkeep::prune(
            api.clone(),
            config.acl.token_prune_interval(),
        ))];
        upkeep.extend(via_gateways);
        upkeep.extend(joins);
        if let Some(td) = &config.gateway.trust_domain {
            upkeep.push(tokio::spawn(crate::upkeep::ensure_mesh_ca(
                api.clone(),
                td.trim_end_matches('.').to_ascii_lowercase(),
            )));
        }
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(http::serve(
            listener,
            api.clone(),
            config.limits.max_connections,
            config.limits.max_connections_per_client,
            async move {
                let _ = stop_rx.await;
            },
        ));
        tracing::info!(node = %config.node_name, dc = %config.datacenter, %http_addr, %dns_addr, "agent started");
        Ok(Agent {
            config,
            catalog,
            federation,
            gateway,
            failover,
            api,
            http_addr,
            dns: Some(dns),
            stop_http: Some(stop_tx),
            server: Some(server),
            temp_dir,
            tls,
            reload_requests: Some(reload_rx),
            upkeep,
        })
    }

    /// The requests of `PUT /v1/agent/reload`, for the process to answer with
    /// [`Agent::reload`] (taken once).
    pub fn take_reload_requests(&mut self) -> Option<mpsc::Receiver<http::ReloadRequest>> {
        self.reload_requests.take()
    }

    /// Applies `new`, the config file re-read (SIGHUP, `PUT /v1/agent/reload`): the certificate
    /// files (new connections present and trust the new ones; open ones are kept), `[acl]`,
    /// `[mesh]`, `[failover]` (the detector keeps what it knows), `[limits]`' body cap and write timeout;
    /// `log_level` is the caller's to apply (it holds the process's log filter).
    /// A change to anything read only at start (ports, data folder, node id…) refuses the whole
    /// file, naming the key, and so does a file that does not validate: then nothing changes.
    /// Returns what changed.
    pub fn reload(&mut self, new: Config) -> Result<String, String> {
        let mut changed = reload_certificates(&self.config, &new, self.tls.as_deref())?;
        if new.acl != self.config.acl {
            self.api.set_acl(new.acl.to_acl(new.dev));
            changed.push("acl");
        }
        if new.failover != self.config.failover {
            self.failover.reconfigure(&new.failover);
            changed.push("failover");
        }
        if new.mesh != self.config.mesh {
            self.api.set_default_intention(new.mesh.default_intention);
            self.api
                .set_leaf_ttl(Duration::from_secs(new.mesh.leaf_ttl_s));
            self.api
                .set_rotation_delay(Duration::from_secs(new.mesh.rotation_activate_s));
            changed.push("mesh");
        }
        if new.limits != self.config.limits {
            self.api.set_max_body_bytes(new.limits.max_body_bytes);
            self.catalog
                .set_write_timeout(Duration::from_millis(new.limits.write_timeout_ms));
            changed.push("limits");
        }
        if new.log_level != self.config.log_level {
            // Applied by the process, which holds the log filter.
            changed.push("log_level");
        }
        self.config = new;
        Ok(reloaded(&changed))
    }

    /// Where the HTTP API listens (the real port when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the DNS server listens, UDP and TCP (the real port when 0 was asked for).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(DnsServer::local_addr)
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Federation, when it runs.
    pub fn federation(&self) -> Option<&Arc<Federation>> {
        self.federation.as_ref()
    }

    /// Where the federation (WAN) port listens, when federation runs.
    pub fn wan_addr(&self) -> Option<SocketAddr> {
        self.federation.as_ref().and_then(|f| f.local_addr())
    }

    /// Where the gateway listens, when it runs.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(|g| g.addr)
    }

    /// The HTTP API's state (counters).
    pub fn api(&self) -> &ApiState {
        &self.api
    }

    /// Whether the data folder is temporary (removed at shutdown).
    pub fn data_is_temporary(&self) -> bool {
        self.temp_dir.is_some()
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One line naming the node and its endpoints, printed at start.
    pub fn endpoints_line(&self) -> String {
        let c = &self.config;
        let host = c.bind.to_string();
        let data = c
            .data_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let dns = self
            .dns_addr()
            .map_or_else(|| join_host_port(&host, c.ports.dns), |a| a.to_string());
        let wan = self
            .wan_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        let gateway = self
            .gateway_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        format!(
            "meridian agent: node={} dc={} http={} dns={} rpc={} wan={} gateway={} data_dir={}",
            c.node_name,
            c.datacenter,
            self.http_addr,
            dns,
            join_host_port(&host, c.ports.rpc),
            wan,
            gateway,
            data,
        )
    }

    /// Stops the DNS server, the HTTP API (ending blocking queries, giving in-flight requests a
    /// few seconds), then the catalog, then removes a temporary data folder.
    pub async fn shutdown(self) {
        let Agent {
            catalog,
            federation,
            gateway,
            failover,
            api,
            dns,
            stop_http,
            server,
            temp_dir,
            upkeep,
            ..
        } = self;
        for task in upkeep {
            task.abort();
        }
        failover.stop();
        if let Some(g) = gateway {
            g.stop();
        }
        if let Some(dns) = dns {
            dns.shutdown().await;
        }
        if let Some(stop) = stop_http {
            let _ = stop.send(());
        }
        api.begin_shutdown();
        if let Some(mut server) = server {
            match tokio::time::timeout(HTTP_DRAIN, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
                Err(_) => {
                    // Dropping the handle would leave the server running on a closed catalog.
                    server.abort();
                    tracing::warn!("HTTP requests still in flight after {HTTP_DRAIN:?}; closing")
                }
            }
        }
        if let Some(f) = &federation {
            f.shutdown().await;
        }
        drop(federation);
        catalog.shutdown().await;
        // The store closes when its last handle goes; only then can its folder be removed.
        drop(api);
        drop(catalog);
        if let Some(dir) = temp_dir {
            remove_temp_dir(dir).await;
        }
        tracing::info!("agent stopped");
    }
}

/// Removes a temporary data folder, retrying briefly while the store's background threads let go
/// of their last files.
pub(crate) async fn remove_temp_dir(dir: TempDir) {
    let path = dir.keep();
    let mut last = None;
    for _ in 0..20 {
        match std::fs::remove_dir_all(&path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(e) = last {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the temporary data folder");
    }
}

/// The running gateway and the node's own task around it (advertising it in the catalog).
pub(crate) struct RunningGateway {
    pub(crate) addr: SocketAddr,
    /// The gateway's counters and its tunnel's, for `/metrics`.
    pub(crate) metrics: meridian_gateway::GatewayMetrics,
    pub(crate) tunnel: Option<Arc<meridian_gateway::Tunnel>>,
    gateway: meridian_gateway::Gateway,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Stops accepting and closes the tunnel; local relays in flight end with their clients.
    pub(crate) fn stop(self) {
        self.gateway.shutdown();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Registers this gateway (its WAN address) in the catalog, so that federation tells remote
/// gateways where to tunnel; retried until a leader takes it.
fn advertise_gateway(
    catalog: Catalog,
    config: &Config,
    addr: SocketAddr,
    http: SocketAddr,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // Its node's HTTP API, where drills run from another DC find this DC's DNS and gateway.
    let http_ip = if http.ip().is_unspecified() {
        config.advertise_ip()
    } else {
        http.ip()
    };
    let lan = reachable_from_lan(config, addr.port());
    let meta = std::collections::BTreeMap::from([
        (
            crate::http::drills::HTTP_META.to_owned(),
            SocketAddr::new(http_ip, http.port()).to_string(),
        ),
        (
            meridian_topology::GATEWAY_LAN_META.to_owned(),
            lan.to_string(),
        ),
    ]);
    let instance = crate::gateway_nodes::gateway_instance(
        &config.node_name,
        config.gateway_advertise(addr.port()),
        meta,
    );
    async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let cmd = meridian_catalog::Command::Register {
                instance: instance.clone(),
                checks: Vec::new(),
            };
            match catalog.write(cmd).await {
                Ok(_) => {
                    tracing::info!(port = instance.port, "gateway advertised in the catalog");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "cannot advertise the gateway yet"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Binds the gateway port and serves it over the live views.
pub(crate) async fn start_gateway(
    config: &Config,
    views: tokio::sync::watch::Receiver<Arc<meridian_topology::View>>,
    tls: Option<Arc<TlsMaterial>>,
    catalog: Option<(Catalog, SocketAddr)>,
    max_connections: usize,
    federation: Option<meridian_gateway::FederationRoute>,
) -> anyhow::Result<RunningGateway> {
    let bind = config.bind_addr(config.ports.gateway);
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen for the gateway on {bind}"))?;
    let addr = listener.local_addr()?;
    let mut local = config.gateway.to_local(&config.dns);
    // The cap that fits the process's descriptor budget (`descriptors.rs`).
    local.max_connections = max_connections;
    // Other DCs reach through the tunnel only what they may see through federation.
    local.export = config.federation.export.clone();
    // Federation streams of other DCs' nodes (and of this DC's, to other DCs) pass through.
    local.federation = federation;
    // The tunnel listens on UDP on the gateway's port number, with the federation certificates.
    let tunnel = match &tls {
        Some(tls) => {
            let g = &config.gateway;
            let tunnel_config = meridian_gateway::TunnelConfig {
                server: tls.server_config()?,
                // A far gateway may be a gateway-only node of the DC dialled.
                client: tls.tunnel_client_config()?,
                server_name: Arc::new(meridian_identity::server_dns_name),
                max_streams_per_dc: g.max_tunnel_streams_per_dc,
                max_streams_per_client: g.tunnel_streams_per_client(),
                max_connections_per_peer: g.max_tunnel_connections_per_peer,
                max_streams_per_peer: g.max_tunnel_streams_per_peer,
                max_handshakes: g.max_tunnel_handshakes,
                retry: g.tunnel_retry.to_policy(),
                connect_timeout: Duration::from_millis(g.connect_timeout_ms),
                idle_timeout: Duration::from_millis(g.tunnel_idle_timeout_ms),
                local_dc: config.datacenter.clone(),
                transport: g.wan_transport.to_transport(),
            };
            Some(Arc::new(
                meridian_gateway::Tunnel::bind(addr, tunnel_config)
                    .with_context(|| format!("cannot listen for the tunnel on udp {addr}"))?,
            ))
        }
        None => None,
    };
    // Follows `views` into the data plane, serves the TCP port and the tunnel's inbound streams.
    let gateway = meridian_gateway::Gateway::start(listener, views, local, tunnel.clone())
        .context("cannot start the gateway")?;
    let mut tasks = Vec::new();
    if tunnel.is_some()
        && let Some((catalog, http)) = catalog
    {
        tasks.push(tokio::spawn(advertise_gateway(catalog, config, addr, http)));
    }
    tracing::info!(%addr, tunnel = tunnel.is_some(), "gateway listening");
    Ok(RunningGateway {
        addr,
        metrics: gateway.metrics(),
        tunnel,
        gateway,
        tasks,
    })
}

/// Mutual TLS for the LAN rpc port from the node's certificate: peers must hold a certificate
/// from the same CA that names this DC.
fn rpc_tls(tls: &TlsMaterial) -> anyhow::Result<meridian_catalog::RpcTls> {
    Ok(meridian_catalog::RpcTls {
        server: tls.lan_server_config()?,
        client: tls.client_config()?,
        server_name: meridian_identity::server_name(&tls.identity().dc)?,
        handshake_timeout: Duration::from_secs(5),
    })
}

/// The first steps of a reload from `old` to `new`, for a server or a gateway-only node: `new`
/// must validate and change nothing read only at start, and its certificate files, when set,
/// become `tls`'s (new connections use them at once). On error nothing has changed. What
/// changed so far.
pub(crate) fn reload_certificates(
    old: &Config,
    new: &Config,
    tls: Option<&TlsMaterial>,
) -> Result<Vec<&'static str>, String> {
    new.validate().map_err(|e| e.to_string())?;
    if let Some(key) = old.fixed_change(new) {
        return Err(format!(
            "{key} cannot change without a restart; nothing was reloaded"
        ));
    }
    let f = &new.federation;
    let (Some(tls), Some(ca), Some(cert), Some(key)) = (tls, &f.ca_file, &f.cert_file, &f.key_file)
    else {
        return Ok(Vec::new());
    };
    let fresh =
        TlsMaterial::from_files(ca, cert, key).map_err(|e| format!("{e}; nothing was reloaded"))?;
    if fresh.uses_dev_ca() {
        return Err("federation.ca_file is the published development CA, which is insecure and only accepted with --dev; nothing was reloaded".into());
    }
    tls.reload_from(&fresh, Some(cert))
        .map_err(|e| format!("{e}; nothing was reloaded"))?;
    Ok(vec!["certificates"])
}

/// A reload's outcome line, logged and answered.
pub(crate) fn reloaded(changed: &[&str]) -> String {
    let changed = if changed.is_empty() {
        "nothing changed".to_owned()
    } else {
        format!("reloaded: {}", changed.join(", "))
    };
    tracing::info!(%changed, "configuration reloaded");
    changed
}

/// The node's certificates for federation, the rpc port and the tunnel, or `None` when they are
/// off (no certificates and not `--dev`). A server (`role`) needs a server certificate; a
/// gateway-only node takes either (it gets a gateway one with `--dev`).
pub(crate) fn federation_tls(
    config: &Config,
    role: Role,
) -> anyhow::Result<Option<Arc<TlsMaterial>>> {
    let f = &config.federation;
    let tls = if config.dev {
        TlsMaterial::dev(&config.datacenter, &config.node_name, role)
            .context("cannot make a development certificate")?
    } else {
        let (Some(ca), Some(cert), Some(key)) = (&f.ca_file, &f.cert_file, &f.key_file) else {
            tracing::info!(
                "federation and the gateway tunnel are off: no [federation] certificates configured"
            );
            return Ok(None);
        };
        let tls = TlsMaterial::from_files(ca, cert, key)?;
        if tls.uses_dev_ca() {
            anyhow::bail!(
                "federation.ca_file is the published development CA, which is insecure and only accepted with --dev"
            );
        }
        let id = tls.identity();
        if role == Role::Server && id.role != Role::Server {
            anyhow::bail!(
                "federation.cert_file is a {} certificate ({}), but a server needs a server certificate: make one with `meridian tls cert create --role server`, or run this node with --gateway-only",
                id.role,
                id.role.node_dns_name(&id.dc, &id.node)
            );
        }
        if !id.dc.eq_ignore_ascii_case(&config.datacenter) {
            anyhow::bail!(
                "federation.cert_file names datacenter {:?}, but this node is in {:?}",
                id.dc,
                config.datacenter
            );
        }
        tls
    };
    Ok(Some(Arc::new(tls)))
}

/// Federation's settings with the node's certificates `tls`.
pub(crate) fn federation_settings(
    config: &Config,
    tls: Arc<TlsMaterial>,
) -> anyhow::Result<meridian_federation::Settings> {
    let f = &config.federation;
    let data_dir = config
        .data_dir
        .clone()
        .context("data_dir is required")?
        .join("federation");
    let ms = Duration::from_millis;
    Ok(meridian_federation::Settings {
        dc: config.datacenter.clone(),
        node: config.node_name.clone(),
        bind: config.bind_addr(config.ports.wan),
        serve: !config.gateway_only,
        peers: {
            let mut peers = f.peers();
            if config.gateway_only {
                // Its own DC, followed like a remote one; `View::followed` makes it local.
                peers.push(meridian_federation::Peer {
                    dc: config.datacenter.clone(),
                    addresses: f.local_servers.clone(),
                });
            }
            peers
        },
        join: f.join.clone(),
        advertise_host: config.advertise_ip().to_string(),
        advertise: match f.transport {
            // Other DCs reach this one through its gateways: those are its addresses.
            FederationTransport::Gateway
                if f.advertise.is_empty()
                    && config.gateway.enabled
                    && config.ports.gateway != 0 =>
            {
                vec![config.gateway_advertise(config.ports.gateway).to_string()]
            }
            _ => f.advertise.clone(),
        },
        policy: f.policy(),
        tls,
        data_dir,
        heartbeat: ms(f.heartbeat_ms),
        idle_timeout: ms(f.idle_timeout_ms),
        connect_timeout: ms(f.connect_timeout_ms),
        handshake_timeout: ms(f.handshake_timeout_ms),
        window: f.resume_window,
        limits: f.limits(),
        announce: announce_gateway(config),
        // Set by the server once its catalog runs.
        on_gateway: None,
        transport: match f.transport {
            FederationTransport::Direct => meridian_federation::Transport::Direct,
            // Filled by `keep_local_gateways` once the gateway is up and the catalog names them.
            FederationTransport::Gateway => {
                meridian_federation::Transport::Gateway(Arc::new(ArcSwap::from_pointee(Vec::new())))
            }
        },
    })
}

/// What a gateway-only node announces to the server it follows: its gateway's advertised
/// address, the address its servers check it at, and its HTTP port. `None` for a server, or
/// when the gateway port is chosen at start (0), unknown before the announcement is made.
fn announce_gateway(config: &Config) -> Option<meridian_federation::AnnouncedGateway> {
    if !config.gateway_only || !config.gateway.enabled || config.ports.gateway == 0 {
        return None;
    }
    let on_lan = |port| reachable_from_lan(config, port);
    Some(meridian_federation::AnnouncedGateway {
        node: config.node_name.clone(),
        address: config.gateway_advertise(config.ports.gateway),
        check: on_lan(config.ports.gateway),
        http: (config.ports.http != 0).then(|| on_lan(config.ports.http)),
    })
}

/// Where the nodes of this DC reach this node's listener on `port`: its bind address, or its
/// advertise address when it binds them all.
fn reachable_from_lan(config: &Config, port: u16) -> SocketAddr {
    let ip = if config.bind.is_unspecified() {
        config.advertise_ip()
    } else {
        config.bind
    };
    SocketAddr::new(ip, port)
}

/// Where this node reaches one of its own listeners bound at `addr` (a wildcard: loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if !ip.is_unspecified() => addr,
        std::net::IpAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port())),
        std::net::IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
    }
}

/// With the gateway transport, the joined addresses (`--join-wan`) are other DCs' gateways: one
/// task per address asks it, through this node's tunnel, whom it belongs to (its certificate
/// names its DC), retrying with backoff, and tells `federation`, which then follows that DC
/// through it.
fn join_through_gateways(
    federation: &Arc<Federation>,
    tunnel: &Arc<meridian_gateway::Tunnel>,
    tls: &TlsMaterial,
    config: &Config,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    if config.federation.transport != FederationTransport::Gateway {
        return Ok(Vec::new());
    }
    let client = tls.tunnel_discovery_client_config()?;
    let mut tasks = Vec::new();
    for text in &config.federation.join {
        // Checked by `Config::validate`.
        let addr: SocketAddr = text
            .parse()
            .with_context(|| format!("federation.join: {text:?} is not ip:port"))?;
        let (federation, tunnel, client) = (federation.clone(), tunnel.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let found = tunnel
                    .peer_certificate(addr, client.clone())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|leaf| {
                        meridian_identity::peer_identity(&leaf).map_err(|e| e.to_string())
                    });
                match found {
                    Ok(id) => {
                        tracing::info!(%addr, dc = %id.dc, node = %id.node, "joined through a gateway");
                        federation.learn_joined(&id.dc, &addr.to_string());
                        return;
                    }
                    Err(error) => {
                        tracing::info!(%addr, %error, "cannot join through this gateway yet; retrying")
                    }
                }
                tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.0))).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }));
    }
    Ok(tasks)
}

/// The gateway's route for federation streams: streams tunnelled here for this DC go to
/// `local` (this DC's federation endpoints); streams to other DCs use the gateways `federation`
/// knows for them until their replica names its own.
pub(crate) fn federation_route(
    federation: &Federation,
    local: Vec<SocketAddr>,
) -> meridian_gateway::FederationRoute {
    meridian_gateway::FederationRoute {
        prefix: format!("{}.", meridian_identity::SERVER_LABEL),
        suffix: format!(".{}", meridian_identity::DOMAIN),
        local: Arc::new(ArcSwap::from_pointee(local)),
        known: Arc::new(federation.known_addresses()),
    }
}

/// With the gateway transport, keeps `federation`'s list of this DC's gateways current: this
/// node's own gateway first (`own`, when it runs one), then the others the catalog names.
pub(crate) fn keep_local_gateways(
    federation: &Federation,
    own: Option<SocketAddr>,
    mut views: tokio::sync::watch::Receiver<Arc<meridian_topology::View>>,
) -> Option<JoinHandle<()>> {
    let meridian_federation::Transport::Gateway(list) = federation.transport().clone() else {
        return None;
    };
    let own = own.map(reachable);
    Some(tokio::spawn(async move {
        loop {
            let mut gateways: Vec<SocketAddr> = own.into_iter().collect();
            let others = views.borrow_and_update().local().gateway_lan_addrs();
            gateways.extend(others.into_iter().filter(|g| Some(*g) != own));
            if **list.load() != gateways {
                tracing::debug!(?gateways, "federation goes through these gateways");
                list.store(Arc::new(gateways));
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// Gives a dev configuration without a data folder a temporary one.
pub fn dev_data_dir(cfg: &mut Config) -> anyhow::Result<Option<TempDir>> {
    if cfg.data_dir.is_some() {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("meridian-dev-")
        .tempdir()
        .context("cannot create a temporary data folder")?;
    cfg.data_dir = Some(dir.path().to_owned());
    Ok(Some(dir))
}

/// A future that resolves on the first SIGINT (Ctrl-C) or SIGTERM. The signals are caught from
/// this call on, not from the first poll: call it before starting anything, so that a SIGTERM
/// during start-up is a clean stop rather than the default action (the process killed).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        (
            listen(SignalKind::interrupt(), "SIGINT"),
            listen(SignalKind::terminate(), "SIGTERM"),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
