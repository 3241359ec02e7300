//! `meridian connect proxy`: the built-in mesh sidecar beside one application (the
//! `meridian-sidecar` crate), with its own `/metrics` page when asked for one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use meridian_node::agent::shutdown_signal;
use meridian_sidecar::{MetricsCollector, Sidecar, SidecarConfig, UpstreamSpec};
use prometheus_client::registry::Registry;

use crate::args::ApiArgs;

/// The service mesh commands.
#[derive(Debug, Subcommand)]
pub enum ConnectCommand {
    /// Runs the mesh sidecar of one service: mutual TLS with its leaf on the way in (decided
    /// by intentions), upstream listeners on the way out.
    Proxy(ProxyArgs),
}

/// `meridian connect proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The agent to take the leaf, roots and intentions from.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The service this sidecar fronts (its certificate's identity).
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// The application's address: where allowed mesh connections are relayed.
    #[arg(long, value_name = "IP:PORT")]
    pub local: SocketAddr,
    /// Where mesh connections for the service arrive.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:21000")]
    pub listen: SocketAddr,
    /// The address registered for the sidecar (default: --listen's, or the node's).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// A service the application calls: `SERVICE[@DC]:PORT` listens on 127.0.0.1:PORT,
    /// `SERVICE[@DC]:IP:PORT` on IP. Without `@DC`, by the failover policy. Repeatable.
    #[arg(long = "upstream", value_name = "SERVICE[@DC]:[IP:]PORT")]
    pub upstreams: Vec<UpstreamSpec>,
    /// The sidecar's instance ID (default `<service>-sidecar-proxy`).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Do not register in the catalog (the operator registers the connect-proxy).
    #[arg(long)]
    pub no_register: bool,
    /// Serve the sidecar's `/metrics` here.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Close a relayed connection after this many seconds without a byte either way.
    #[arg(long, value_name = "S", default_value_t = 600)]
    pub idle_timeout_s: u64,
}

/// Runs the command until SIGINT or SIGTERM.
pub async fn run(cmd: ConnectCommand) -> anyhow::Result<()> {
    let ConnectCommand::Proxy(args) = cmd;
    let mut config =
        SidecarConfig::new(&args.service, args.listen, args.local, &args.api.http_addr);
    config.token = args.api.token.clone();
    config.advertise = args.advertise;
    config.upstreams = args.upstreams;
    config.register = !args.no_register;
    config.idle_timeout = Duration::from_secs(args.idle_timeout_s.max(1));
    if let Some(id) = args.id {
        config.id = id;
    }
    let sidecar = Sidecar::start(config)
        .await
        .context("starting the sidecar")?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MetricsCollector(sidecar.metrics())));
    let registry = Arc::new(registry);
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for /metrics on {addr}"))?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move { meridian_node::metrics::page(&registry) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the /metrics listener stopped");
            }
        });
    }
    let upstreams: Vec<String> = sidecar.upstreams.iter().map(ToString::to_string).collect();
    tracing::info!(inbound = %sidecar.inbound, upstreams = ?upstreams, "sidecar running");
    shutdown_signal().await;
    sidecar.shutdown().await;
    Ok(())
}
