//! The command line: `agent`, `demo`, and the commands that talk to a running agent's HTTP API
//! (`services ...`, `members`), parsed by clap and dispatched from [`run`].

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::config::Overrides;

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
    /// Creates the federation's CA and node certificates.
    #[command(subcommand)]
    Tls(crate::tls_cmd::TlsCommand),
    /// Rehearses a failover (a DC drained, a service's instances failed) and reports what
    /// clients in every other DC saw.
    #[command(subcommand)]
    Drill(crate::drill::DrillCommand),
}

/// Where a node listens and what it is called; every value overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// Folder for the catalog's data (dev and demo: a temporary folder removed at exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the listeners bind to.
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Address other machines reach this node at (defaults to --bind).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Node name (a DNS label).
    #[arg(long = "node", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Datacenter name (a DNS label).
    #[arg(long, visible_alias = "dc", value_name = "DC")]
    pub datacenter: Option<String>,
    /// HTTP API port (default 8500; 0 picks a free one).
    #[arg(long, value_name = "N")]
    pub http_port: Option<u16>,
    /// DNS port (default 8600).
    #[arg(long, value_name = "N")]
    pub dns_port: Option<u16>,
    /// LAN gRPC port for Raft and write forwarding (default 8300).
    #[arg(long, value_name = "N")]
    pub rpc_port: Option<u16>,
    /// WAN gRPC port for federation (default 8302).
    #[arg(long, value_name = "N")]
    pub wan_port: Option<u16>,
    /// Gateway port (default 8443).
    #[arg(long, value_name = "N")]
    pub gateway_port: Option<u16>,
    /// WAN address (`host:port`) of a node of another datacenter to federate with; its
    /// datacenter, and the ones it knows, are learned from it. Repeatable.
    #[arg(long = "join-wan", value_name = "HOST:PORT")]
    pub join_wan: Vec<String>,
    /// Run only the gateway (and DNS): no catalog, no vote; follow this DC's servers, given
    /// with --follow, for the catalog.
    #[arg(long)]
    pub gateway_only: bool,
    /// WAN address (`host:port`) of a server of this node's DC, for --gateway-only. Repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub follow: Vec<String>,
}

impl NodeArgs {
    /// The values given, as config overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            bind: self.bind,
            advertise: self.advertise,
            node_name: self.node_name.clone(),
            datacenter: self.datacenter.clone(),
            http_port: self.http_port,
            dns_port: self.dns_port,
            rpc_port: self.rpc_port,
            wan_port: self.wan_port,
            gateway_port: self.gateway_port,
            join_wan: self.join_wan.clone(),
            gateway_only: self.gateway_only,
            follow: self.follow.clone(),
        }
    }
}

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

/// `meridian demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECS")]
    pub exit_after: Option<u64>,
    /// Where dc1 listens; dc2 and dc3 listen `--port-step` and twice that further (a port
    /// given as 0 is a free one for each DC).
    #[command(flatten)]
    pub node: NodeArgs,
    /// How far apart the three datacenters' ports are.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub port_step: u16,
}

/// Where the HTTP API of the agent to talk to is.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// `host:port` (or URL) of the agent's HTTP API.
    #[arg(
        long,
        env = "MERIDIAN_HTTP_ADDR",
        default_value = "127.0.0.1:8500",
        global = true
    )]
    pub http_addr: String,
    /// ACL token sent with every request (`X-Consul-Token`).
    #[arg(
        long,
        env = "MERIDIAN_HTTP_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// `meridian services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// The agent to talk to.
    #[command(flatten)]
    pub api: ApiArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: ServicesCommand,
}

/// `meridian services ...`.
#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Registers a service on the agent, from a Consul JSON definition or from flags.
    Register(Box<RegisterArgs>),
    /// Deregisters a service instance of the agent by its ID.
    Deregister {
        /// The instance ID.
        id: String,
    },
    /// Lists the services of the datacenter with their tags.
    List,
    /// Shows the instances of a service with their node, address and health.
    Show {
        /// The service name.
        name: String,
    },
}

/// `meridian services register`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("check").args(["check_tcp", "check_http", "check_ttl"])))]
pub struct RegisterArgs {
    /// A Consul service definition in JSON (`-` for stdin); instead of the flags.
    #[arg(value_name = "FILE.json", conflicts_with_all = ["name", "port", "id", "address", "tags", "meta", "check_tcp", "check_http", "check_ttl"])]
    pub file: Option<PathBuf>,
    /// Service name.
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Port the instance listens on.
    #[arg(long, required_unless_present = "file")]
    pub port: Option<u16>,
    /// Instance ID (defaults to the name).
    #[arg(long)]
    pub id: Option<String>,
    /// Instance address (defaults to the node's).
    #[arg(long)]
    pub address: Option<String>,
    /// A tag; repeat for more.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Metadata `key=value`; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// TCP check against `host:port`.
    #[arg(long, value_name = "HOST:PORT")]
    pub check_tcp: Option<String>,
    /// HTTP check against a URL.
    #[arg(long, value_name = "URL")]
    pub check_http: Option<String>,
    /// TTL check with this TTL (`30s`); update it with PUT /v1/agent/check/pass/service:<id>.
    #[arg(long, value_name = "DURATION")]
    pub check_ttl: Option<String>,
    /// Interval of a TCP or HTTP check.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub interval: String,
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
            crate::client::services(&args.api, args.command).await?;
        }
        Commands::Members(api) => {
            init_logging("warn");
            crate::client::members(&api).await?;
        }
        Commands::Tls(cmd) => crate::tls_cmd::run(cmd)?,
        Commands::Drill(cmd) => {
            init_logging("warn");
            return crate::drill::run(cmd).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr (stdout is the CLI's output), filtered by `RUST_LOG`, else `default`.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second initialisation (tests that run several commands) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
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
