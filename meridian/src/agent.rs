//! `meridian agent`: its arguments, the configuration they make, and running a node until a
//! signal.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{ArgGroup, Args};
use meridian_node::agent::{Agent, dev_data_dir, shutdown_signal};
use meridian_node::config::Config;
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

/// Runs `meridian agent` until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let (cfg, temp) = agent_config(&args)?;
    if cfg.gateway_only {
        return meridian_node::gateway_only::run(cfg, temp).await;
    }
    let agent = Agent::start(cfg, temp).await?;
    println!("{}", agent.endpoints_line());
    shutdown_signal().await;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(())
}
