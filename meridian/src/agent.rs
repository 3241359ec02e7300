//! `meridian agent`: its arguments, the configuration they make, and running a node until a
//! signal: SIGINT or SIGTERM stops it, SIGHUP (or `PUT /v1/agent/reload`) re-reads its file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{ArgGroup, Args};
use meridian_node::agent::{Agent, dev_data_dir, shutdown_signal};
use meridian_node::config::Config;
use meridian_node::gateway_only::GatewayNode;
use tempfile::TempDir;

use crate::args::NodeArgs;

/// `meridian agent`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["dev", "config"])))]
pub struct AgentArgs {
    /// One-node datacenter `dc1` on 127.0.0.1, node `dev`, data in a temporary folder.
    #[arg(long)]
    pub dev: bool,
    /// A TOML configuration file (see examples/).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides of the file's values.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// The configuration `meridian agent` runs with, and the temporary folder of a dev agent.
pub fn agent_config(args: &AgentArgs) -> anyhow::Result<(Config, Option<TempDir>)> {
    let ov = args.node.overrides();
    if args.dev {
        let mut cfg = Config::dev(&ov);
        let temp = dev_data_dir(&mut cfg)?;
        return Ok((cfg, temp));
    }
    let path = args
        .config
        .as_ref()
        .context("either --dev or --config FILE is required")?;
    let mut cfg = Config::load(path)?;
    cfg.apply(&ov);
    Ok((cfg, None))
}

/// A running node of either kind, as the process drives it.
enum Node {
    /// A server: catalog, API, DNS, gateway.
    Server(Agent),
    /// A gateway-only node.
    Gateway(GatewayNode),
}

impl Node {
    fn config(&self) -> &Config {
        match self {
            Node::Server(a) => a.config(),
            Node::Gateway(g) => g.config(),
        }
    }

    fn apply(&mut self, cfg: Config) -> Result<String, String> {
        match self {
            Node::Server(a) => a.reload(cfg),
            Node::Gateway(g) => g.reload(cfg),
        }
    }

    async fn shutdown(self) {
        match self {
            Node::Server(a) => a.shutdown().await,
            Node::Gateway(g) => g.shutdown().await,
        }
    }
}

/// Runs `meridian agent` until SIGINT or SIGTERM, reloading its file on SIGHUP (and, on a
/// server, on `PUT /v1/agent/reload`).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Before anything starts: the default actions of SIGHUP and SIGTERM end the process.
    let mut hangups = hangups()?;
    let stop = shutdown_signal();
    let (cfg, temp) = agent_config(&args)?;
    crate::cli::set_log_level(cfg.log_level.as_deref()).map_err(anyhow::Error::msg)?;
    let (mut node, mut requests) = if cfg.gateway_only {
        let g = GatewayNode::start(cfg, temp).await?;
        println!(
            "meridian gateway-only node: http={} gateway={}",
            g.http_addr(),
            g.gateway_addr()
        );
        (Node::Gateway(g), None)
    } else {
        let mut agent = Agent::start(cfg, temp).await?;
        // The API's drills (the UI's) run the same engine as `meridian drill`.
        agent
            .api()
            .drills()
            .set_runner(std::sync::Arc::new(crate::drill::ApiRunner::new(
                agent.federation(),
            )));
        println!("{}", agent.endpoints_line());
        let requests = agent.take_reload_requests();
        (Node::Server(agent), requests)
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(()) = hangups.recv() => {
                match reload(&mut node, &args) {
                    Ok(changed) => tracing::info!(%changed, "SIGHUP: config file reloaded"),
                    Err(why) => tracing::warn!(%why, "SIGHUP: config file not reloaded"),
                }
            }
            Some(reply) = async { match &mut requests { Some(r) => r.recv().await, None => None } } => {
                let _ = reply.send(reload(&mut node, &args));
            }
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Re-reads the file `args` name, with the same flags, and applies it to `node`.
fn reload(node: &mut Node, args: &AgentArgs) -> Result<String, String> {
    if args.dev {
        return Err("a --dev agent has no config file to reload".into());
    }
    let (cfg, _) = agent_config(args).map_err(|e| format!("{e:#}"))?;
    // Checked before anything is applied, so that a bad directive changes nothing.
    tracing_subscriber::EnvFilter::try_new(cfg.log_level.as_deref().unwrap_or("info"))
        .map_err(|e| format!("log_level: {e}; nothing was reloaded"))?;
    let level_changed = cfg.log_level != node.config().log_level;
    let level = cfg.log_level.clone();
    let changed = node.apply(cfg)?;
    if level_changed {
        crate::cli::set_log_level(level.as_deref())?;
    }
    Ok(changed)
}

/// SIGHUPs, as a stream of `()`; never one where there are no such signals.
fn hangups() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // A reload already waiting covers this one too.
                let _ = tx.try_send(());
            }
        });
    }
    #[cfg(not(unix))]
    std::mem::forget(tx);
    Ok(rx)
}
