//! The command line: parsed by clap and dispatched from [`run`]. Each command owns its arguments
//! in its own module (`agent`, `demo`, `services`, `operator`, `snapshot`, `tls_cmd`, `drill`,
//! `connect`);
//! this file only names them.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::agent::AgentArgs;
use crate::args::ApiArgs;
use crate::demo::DemoArgs;
use crate::services::ServicesArgs;

/// Meridian: a multi-datacenter federation gateway with a Consul-compatible API.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Runs a Meridian node: `--dev` for a one-node datacenter, `--config FILE` for a real one.
    Agent(AgentArgs),
    /// Starts a dev agent with demo services registered and prints how to use it.
    Demo(DemoArgs),
    /// Registers, deregisters and lists services through an agent's HTTP API.
    Services(ServicesArgs),
    /// Lists the datacenter's nodes and its Raft servers, marking the leader.
    Members(ApiArgs),
    /// Changes the datacenter at run time: its Raft servers (`operator raft`).
    Operator(crate::operator::OperatorArgs),
    /// Makes an agent re-read its config file (certificates, tokens), as SIGHUP does.
    Reload(ApiArgs),
    /// Saves, restores and inspects backups of a datacenter's state.
    Snapshot(crate::snapshot::SnapshotArgs),
    /// Creates the federation's CA and node certificates.
    #[command(subcommand)]
    Tls(crate::tls_cmd::TlsCommand),
    /// Rehearses a failover (a DC drained, a service's instances failed) and reports what
    /// clients in every other DC saw.
    #[command(subcommand)]
    Drill(crate::drill::DrillCommand),
    /// The service mesh: `connect proxy` runs a service's sidecar.
    #[command(subcommand)]
    Connect(crate::connect::ConnectCommand),
}

/// Runs the command; the exit code of a command that completed.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Commands::Agent(args) => {
            init_logging("info");
            crate::agent::run(args).await?;
        }
        Commands::Demo(args) => {
            // The demo tells its own story on stdout; three agents' logs would drown it.
            init_logging("warn");
            crate::demo::run(args).await?;
        }
        Commands::Services(args) => {
            init_logging("warn");
            crate::services::services(&args.api, args.command).await?;
        }
        Commands::Members(api) => {
            init_logging("warn");
            crate::services::members(&api).await?;
        }
        Commands::Operator(args) => {
            init_logging("warn");
            crate::operator::run(args).await?;
        }
        Commands::Reload(api) => {
            init_logging("warn");
            crate::operator::reload(&api).await?;
        }
        Commands::Snapshot(args) => {
            init_logging("warn");
            crate::snapshot::run(args).await?;
        }
        Commands::Tls(cmd) => crate::tls_cmd::run(cmd)?,
        Commands::Connect(cmd) => {
            init_logging("info");
            crate::connect::run(cmd).await?;
        }
        Commands::Drill(cmd) => {
            init_logging("warn");
            return crate::drill::run(cmd).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The installed log filter, which an agent's `log_level` (and its reloads) replaces.
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Logs to stderr (stdout is the CLI's output), filtered by `RUST_LOG`, else `default`.
fn init_logging(default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests that run several commands) is harmless: keep the first.
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = LOG_FILTER.set(handle);
    }
}

/// Filters logs by `directives` (`RUST_LOG`'s syntax) from now on, unless `RUST_LOG` is set,
/// which wins. `None`: `info`. Whether the filter changed; an error names what does not parse.
pub(crate) fn set_log_level(directives: Option<&str>) -> Result<bool, String> {
    let directives = directives.unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .map_err(|e| format!("log_level {directives:?}: {e}"))?;
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    match LOG_FILTER.get() {
        Some(handle) => handle
            .reload(filter)
            .map(|()| true)
            .map_err(|e| format!("log_level: {e}")),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_commands() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let cli = parse(&["meridian", "agent", "--dev", "--http-port", "9500"]).expect("dev");
        match cli.command {
            Commands::Agent(a) => {
                assert!(a.dev);
                assert_eq!(a.node.http_port, Some(9500));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["meridian", "agent"]).is_err(),
            "needs --dev or --config"
        );
        assert!(parse(&["meridian", "agent", "--dev", "--config", "x.toml"]).is_err());
        parse(&["meridian", "demo", "--exit-after", "5"]).expect("demo");
        parse(&[
            "meridian",
            "services",
            "list",
            "--http-addr",
            "127.0.0.1:8510",
        ])
        .expect("list");
        parse(&["meridian", "members"]).expect("members");
        parse(&["meridian", "operator", "raft", "list-peers"]).expect("list-peers");
        parse(&["meridian", "reload", "--http-addr", "127.0.0.1:8510"]).expect("reload");
        parse(&["meridian", "snapshot", "save", "dc1.snap"]).expect("save");
        parse(&["meridian", "snapshot", "inspect", "dc1.snap"]).expect("inspect");
        assert!(
            parse(&["meridian", "snapshot", "restore"]).is_err(),
            "restore names a file"
        );
        parse(&[
            "meridian",
            "operator",
            "raft",
            "add-peer",
            "--id",
            "4",
            "--address",
            "h:8300",
        ])
        .expect("add-peer");
        parse(&["meridian", "operator", "raft", "remove-peer", "--id", "3"]).expect("remove by id");
        assert!(
            parse(&["meridian", "operator", "raft", "remove-peer"]).is_err(),
            "remove-peer names the server"
        );
        parse(&[
            "meridian",
            "services",
            "register",
            "--name",
            "web",
            "--port",
            "80",
            "--tag",
            "a",
            "--tag",
            "b",
            "--meta",
            "k=v",
            "--check-http",
            "http://127.0.0.1/",
            "--interval",
            "5s",
        ])
        .expect("register with flags");
        parse(&["meridian", "services", "register", "web.json"]).expect("register a file");
        assert!(parse(&["meridian", "services", "register", "--name", "web"]).is_err());
        assert!(
            parse(&[
                "meridian",
                "services",
                "register",
                "--name",
                "w",
                "--port",
                "1",
                "--check-tcp",
                "h:1",
                "--check-ttl",
                "1s",
            ])
            .is_err(),
            "one check kind at most"
        );
    }
}
