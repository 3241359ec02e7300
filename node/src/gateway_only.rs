//! A gateway-only node (`meridian agent --gateway-only`): no catalog and no Raft vote, so
//! gateways scale out apart from the voters. It follows its own DC's servers over federation as
//! if they were a remote DC (and, through them, every other DC), and serves the gateway, its
//! tunnel and DNS from that view; its HTTP port serves `/metrics`, the federation status and
//! the UI, read-only.
//!
//! It has no catalog to write to: it announces its gateway on its subscription to the server it
//! follows, which registers it in the DC's catalog with a check its leader runs
//! (`gateway_nodes.rs`), so remote DCs tunnel to it. Its tunnel hands streams for this DC's
//! federation to the servers it follows (`[federation] local_servers`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use meridian_dns::DnsServer;
use meridian_federation::Federation;
use meridian_identity::{Role, TlsMaterial};
use meridian_topology::View;
use meridian_topology::dc::DcState;
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acl::Acl;
use crate::agent::{RunningGateway, federation_settings, federation_tls, start_gateway};
use crate::config::Config;
use crate::failover::FailoverRuntime;

/// A running gateway-only node.
pub struct GatewayNode {
    federation: Arc<Federation>,
    dns: DnsServer,
    gateway: RunningGateway,
    failover: FailoverRuntime,
    http_addr: SocketAddr,
    /// What a reload compares the file with, and changes.
    config: Config,
    tls: Arc<TlsMaterial>,
    acl: Arc<arc_swap::ArcSwap<Acl>>,
    tasks: Vec<JoinHandle<()>>,
    // Kept so that federation's "local catalog" (empty: there is none) stays open.
    _local: watch::Sender<Arc<View>>,
    temp_dir: Option<TempDir>,
}

#[derive(Clone)]
struct HttpState {
    federation: Arc<Federation>,
    registry: Arc<Registry>,
    views: watch::Receiver<Arc<View>>,
}

impl GatewayNode {
    /// Starts following the DC's servers, then serves DNS, the gateway and HTTP.
    pub async fn start(config: Config, temp_dir: Option<TempDir>) -> anyhow::Result<GatewayNode> {
        config.validate()?;
        let gateway_connections =
            crate::descriptors::gateway_connections(&config, crate::descriptors::raise_limit())?;
        let tls = federation_tls(&config, Role::Gateway)?
            .context("a gateway-only node needs federation certificates (or --dev)")?;
        let http_bind = config.bind_addr(config.ports.http);
        let http = TcpListener::bind(http_bind)
            .await
            .with_context(|| format!("cannot listen for HTTP on {http_bind}"))?;
        let http_addr = http.local_addr()?;
        let dc = config.datacenter.clone();
        let (local, local_rx) =
            watch::channel(Arc::new(View::new(dc.as_str(), DcState::default())));
        let settings = federation_settings(&config, tls.clone())?;
        let federation = Arc::new(
            Federation::start(settings, local_rx)
                .await
                .context("cannot start following the datacenter")?,
        );
        // Federation's view holds this DC as a remote replica: make it the local catalog.
        let mut fed_views = federation.watch();
        let first = Arc::new(fed_views.borrow_and_update().followed(&dc));
        let (views_tx, views) = watch::channel(first);
        let follow = tokio::spawn(async move {
            while fed_views.changed().await.is_ok() {
                let v = fed_views.borrow_and_update().followed(&dc);
                views_tx.send_replace(Arc::new(v));
            }
        });
        // It fails over like the servers it follows.
        let failover = FailoverRuntime::start(&config.failover, views);
        let views = failover.watch();
        let dns = DnsServer::start(
            config.dns.to_settings(&config.node_name),
            views.clone(),
            config.bind_addr(config.ports.dns),
            config.dns.threads,
        )
        .await?;
        // Streams tunnelled here for this DC go to its servers' WAN ports (on the LAN).
        let servers: Vec<SocketAddr> = config
            .federation
            .local_servers
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if servers.len() < config.federation.local_servers.len() {
            tracing::warn!(servers = ?config.federation.local_servers, "federation streams other DCs tunnel here go only to the servers followed by ip:port (the data plane does no DNS lookups)");
        }
        let gateway = start_gateway(
            &config,
            views.clone(),
            Some(tls.clone()),
            None,
            gateway_connections,
            Some(crate::agent::federation_route(&federation, servers)),
        )
        .await?;
        let via_gateways =
            crate::agent::keep_local_gateways(&federation, Some(gateway.addr), views.clone());
        if let Some(t) = gateway.tunnel.clone() {
            failover.set_tunnel(t);
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(gateway.metrics.clone()));
        registry.register_collector(Box::new(federation.counters().clone()));
        registry.register_collector(Box::new(dns.counters()));
        registry.register_collector(Box::new(failover.metrics()));
        let state = HttpState {
            federation: federation.clone(),
            registry: Arc::new(registry),
            views,
        };
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/v1/catalog/datacenters", get(datacenters))
            .route("/v1/federation/status", get(status))
            .merge(crate::http::ui::read_only(
                state.views.clone(),
                config.node_name.clone(),
                config.dns.domain.clone(),
            ))
            .with_state(state);
        let acl = Arc::new(arc_swap::ArcSwap::from_pointee(
            config.acl.to_acl(config.dev),
        ));
        let limits = config.limits;
        let served_acl = acl.clone();
        let serve = tokio::spawn(async move {
            let served = crate::http::serve_router(
                http,
                app,
                served_acl,
                limits.max_connections,
                limits.max_connections_per_client,
            )
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        tracing::info!(dc = %config.datacenter, node = %config.node_name, gateway = %gateway.addr, "gateway-only node started");
        Ok(GatewayNode {
            federation,
            dns,
            gateway,
            failover,
            http_addr,
            config,
            tls,
            acl,
            tasks: [follow, serve].into_iter().chain(via_gateways).collect(),
            _local: local,
            temp_dir,
        })
    }

    /// Where the gateway listens.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway.addr
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies `new`, the config file re-read (SIGHUP), as a server's [`crate::agent::Agent::reload`]
    /// does: the certificates (the tunnel's and federation's new connections), `[acl]`,
    /// `[failover]`; `log_level` is the caller's. Anything read only at start refuses the file.
    pub fn reload(&mut self, new: Config) -> Result<String, String> {
        let mut changed = crate::agent::reload_certificates(&self.config, &new, Some(&self.tls))?;
        if new.acl != self.config.acl {
            self.acl.store(Arc::new(new.acl.to_acl(new.dev)));
            changed.push("acl");
        }
        if new.failover != self.config.failover {
            self.failover.reconfigure(&new.failover);
            changed.push("failover");
        }
        if new.limits != self.config.limits {
            // Its few read endpoints take no body and write nothing: nothing to apply.
            changed.push("limits");
        }
        if new.log_level != self.config.log_level {
            changed.push("log_level");
        }
        self.config = new;
        Ok(crate::agent::reloaded(&changed))
    }

    /// Stops serving, then following.
    pub async fn shutdown(self) {
        self.failover.stop();
        self.gateway.stop();
        self.dns.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
        self.federation.shutdown().await;
        if let Some(dir) = self.temp_dir {
            crate::agent::remove_temp_dir(dir).await;
        }
        tracing::info!("gateway-only node stopped");
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    crate::metrics::page(&s.registry)
}

async fn datacenters(State(s): State<HttpState>) -> axum::Json<Vec<String>> {
    let v = s.views.borrow().clone();
    axum::Json(v.datacenters().into_iter().map(str::to_owned).collect())
}

async fn status(State(s): State<HttpState>) -> axum::Json<serde_json::Value> {
    let v = s.federation.view();
    let remotes: Vec<_> = v
        .remotes()
        .map(|r| {
            serde_json::json!({
                "Datacenter": &*r.name, "Index": r.index, "Digest": format!("{:016x}", r.digest),
                "Connected": r.connected, "Synced": r.synced, "Stale": !r.connected,
                "Instances": r.state.instance_count(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "Datacenter": v.datacenter(), "Enabled": true, "GatewayOnly": true, "Remotes": remotes,
    }))
}
