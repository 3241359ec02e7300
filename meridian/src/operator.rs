//! `meridian operator raft ...`: the DC's Raft membership, listed and changed at run time through
//! an agent's HTTP API (`/v1/operator/raft/configuration` and `/v1/operator/raft/peer`), in the
//! words of `consul operator raft`; and `meridian reload` (`PUT /v1/agent/reload`).

use clap::{ArgGroup, Args, Subcommand};
use meridian_client::api::{ApiClient, path_segment};
use serde_json::Value;

use crate::args::ApiArgs;
use crate::services::print_table;

/// `meridian operator ...`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The agent to talk to.
    #[command(flatten)]
    pub api: ApiArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: OperatorCommand,
}

/// `meridian operator ...`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// The DC's Raft group: list, add and remove servers.
    #[command(subcommand)]
    Raft(RaftCommand),
}

/// `meridian operator raft ...`.
#[derive(Debug, Subcommand)]
pub enum RaftCommand {
    /// Lists the DC's Raft servers: node, id, address, state and whether each votes.
    ListPeers,
    /// Adds a server started with `[raft] join = true`: a learner first, a voter once caught up.
    AddPeer {
        /// Its Raft id (its `node_id`).
        #[arg(long)]
        id: u64,
        /// Its rpc address, `host:port`.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// How long it may take to catch up before it is left a learner (at most 25s).
        #[arg(long, value_name = "DURATION", default_value = "20s")]
        catch_up: String,
    },
    /// Removes a server (a dead one, or one being retired) from the DC's Raft group.
    #[command(group(ArgGroup::new("which").args(["id", "address"]).required(true)))]
    RemovePeer {
        /// Its Raft id.
        #[arg(long)]
        id: Option<u64>,
        /// Its rpc address, `host:port`.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
    },
}

/// Runs an `operator` command.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api.http_addr, args.api.token.as_deref())?;
    let OperatorCommand::Raft(command) = args.command;
    match command {
        RaftCommand::ListPeers => {}
        RaftCommand::AddPeer {
            id,
            address,
            catch_up,
        } => {
            let path = format!(
                "/v1/operator/raft/peer?id={id}&address={}&catch-up={}",
                path_segment(&address),
                path_segment(&catch_up)
            );
            client.put(&path, None).await?;
            println!("server {id} at {address} is a voter\n");
        }
        RaftCommand::RemovePeer { id, address } => {
            let (path, what) = match (id, address) {
                (Some(id), _) => (format!("/v1/operator/raft/peer?id={id}"), id.to_string()),
                (None, Some(a)) => (
                    format!("/v1/operator/raft/peer?address={}", path_segment(&a)),
                    a,
                ),
                (None, None) => anyhow::bail!("--id or --address names the server to remove"),
            };
            client.delete(&path).await?;
            println!("removed server {what} from the raft group\n");
        }
    }
    list_peers(&client).await
}

async fn list_peers(client: &ApiClient) -> anyhow::Result<()> {
    let config: Value = client.get("/v1/operator/raft/configuration").await?;
    let servers = config["Servers"].as_array().cloned().unwrap_or_default();
    let text = |s: &Value, key: &str| match &s[key] {
        Value::String(v) if !v.is_empty() => v.clone(),
        Value::Bool(b) => b.to_string(),
        _ => "-".into(),
    };
    print_table(
        &["NODE", "ID", "ADDRESS", "STATE", "VOTER"],
        servers
            .iter()
            .map(|s| {
                let state = if s["Leader"] == Value::Bool(true) {
                    "leader"
                } else {
                    "follower"
                };
                vec![
                    text(s, "Node"),
                    text(s, "ID"),
                    text(s, "Address"),
                    state.into(),
                    text(s, "Voter"),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `meridian reload`: the agent re-reads its config file and says what changed.
pub async fn reload(api: &ApiArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&api.http_addr, api.token.as_deref())?;
    client.put("/v1/agent/reload", None).await?;
    println!("reloaded {}", client.base());
    Ok(())
}
