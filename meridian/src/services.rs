//! `meridian services ...` and `meridian members`: the commands that talk to a running agent's
//! HTTP API through [`meridian_client::ApiClient`], and print what it answers as tables.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args, Subcommand};
use meridian_client::api::{ApiClient, HealthEntry, NodeEntry, path_segment, worst};
use serde_json::{Map, Value, json};

use crate::args::ApiArgs;

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

/// Runs `meridian services ...`.
pub async fn services(api: &ApiArgs, cmd: ServicesCommand) -> anyhow::Result<()> {
    let client = ApiClient::new(&api.http_addr, api.token.as_deref())?;
    match cmd {
        ServicesCommand::Register(args) => {
            let body = register_body(&args)?;
            client.put("/v1/agent/service/register", Some(body)).await?;
            println!("registered");
        }
        ServicesCommand::Deregister { id } => {
            client
                .put(
                    &format!("/v1/agent/service/deregister/{}", path_segment(&id)),
                    None,
                )
                .await?;
            println!("deregistered {id}");
        }
        ServicesCommand::List => {
            let services: BTreeMap<String, Vec<String>> =
                client.get("/v1/catalog/services").await?;
            let rows = services
                .into_iter()
                .map(|(name, tags)| vec![name, tags.join(",")])
                .collect();
            print_table(&["SERVICE", "TAGS"], rows);
        }
        ServicesCommand::Show { name } => {
            let entries: Vec<HealthEntry> = client
                .get(&format!("/v1/health/service/{}", path_segment(&name)))
                .await?;
            if entries.is_empty() {
                bail!("service {name:?} has no instances");
            }
            let rows = entries
                .into_iter()
                .map(|e| {
                    let host = if e.service.address.is_empty() {
                        e.node.address
                    } else {
                        e.service.address
                    };
                    vec![
                        e.service.id,
                        e.node.node,
                        meridian_topology::names::join_host_port(&host, e.service.port),
                        worst(&e.checks).to_owned(),
                        e.service.tags.join(","),
                    ]
                })
                .collect();
            print_table(&["ID", "NODE", "ADDRESS", "HEALTH", "TAGS"], rows);
        }
    }
    Ok(())
}

/// Runs `meridian members`.
pub async fn members(api: &ApiArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&api.http_addr, api.token.as_deref())?;
    let nodes: Vec<NodeEntry> = client.get("/v1/catalog/nodes").await?;
    let leader: String = client.get("/v1/status/leader").await?;
    let peers: Vec<String> = client.get("/v1/status/peers").await?;
    let dc = nodes
        .first()
        .map(|n| n.datacenter.clone())
        .unwrap_or_default();
    print_table(
        &["NODE", "ADDRESS", "DC"],
        nodes
            .into_iter()
            .map(|n| vec![n.node, n.address, n.datacenter])
            .collect(),
    );
    println!();
    print_table(
        &["SERVER (RPC)", "ROLE"],
        peers
            .into_iter()
            .map(|p| {
                let role = if p == leader { "leader" } else { "follower" };
                vec![p, role.to_owned()]
            })
            .collect(),
    );
    if leader.is_empty() {
        println!("no leader is known in {dc}: the datacenter cannot accept writes right now");
    }
    Ok(())
}

/// The JSON body `services register` sends.
fn register_body(args: &RegisterArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.file {
        let mut text = Vec::new();
        if path.as_os_str() == "-" {
            std::io::stdin()
                .read_to_end(&mut text)
                .context("cannot read the definition from stdin")?;
        } else {
            text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        // The agent validates the definition; here only make sure it is JSON at all.
        let value = serde_json::from_slice::<Value>(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        // Consul's config files wrap a definition as {"service": {...}}; accept both forms.
        if let Value::Object(map) = &value
            && map.len() == 1
            && let Some((key, inner)) = map.iter().next()
            && key.eq_ignore_ascii_case("service")
            && inner.is_object()
        {
            return Ok(serde_json::to_vec(inner)?);
        }
        return Ok(text);
    }
    let name = args.name.clone().context("--name is required")?;
    let mut def = Map::new();
    def.insert("Name".into(), json!(name));
    def.insert("Port".into(), json!(args.port.unwrap_or(0)));
    if let Some(id) = &args.id {
        def.insert("ID".into(), json!(id));
    }
    if let Some(a) = &args.address {
        def.insert("Address".into(), json!(a));
    }
    if !args.tags.is_empty() {
        def.insert("Tags".into(), json!(args.tags));
    }
    if !args.meta.is_empty() {
        let mut meta = Map::new();
        for kv in &args.meta {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--meta {kv:?} is not key=value"))?;
            meta.insert(k.to_owned(), json!(v));
        }
        def.insert("Meta".into(), Value::Object(meta));
    }
    let check = if let Some(t) = &args.check_tcp {
        Some(json!({"TCP": t, "Interval": args.interval}))
    } else if let Some(u) = &args.check_http {
        Some(json!({"HTTP": u, "Interval": args.interval}))
    } else {
        args.check_ttl.as_ref().map(|ttl| json!({"TTL": ttl}))
    };
    if let Some(c) = check {
        def.insert("Check".into(), c);
    }
    Ok(serde_json::to_vec(&Value::Object(def))?)
}

pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn register_args(args: &[&str]) -> RegisterArgs {
        /// `meridian services` alone, so the test needs nothing of the whole command line.
        #[derive(clap::Parser)]
        struct Services {
            #[command(subcommand)]
            command: ServicesCommand,
        }
        let mut full = vec!["services", "register"];
        full.extend_from_slice(args);
        match Services::try_parse_from(full).expect("parses").command {
            ServicesCommand::Register(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_become_a_consul_definition_the_agent_accepts() {
        let args = register_args(&[
            "--name",
            "web",
            "--port",
            "8080",
            "--id",
            "web-1",
            "--tag",
            "v1",
            "--meta",
            "team=core",
            "--check-http",
            "http://127.0.0.1:8080/health",
            "--interval",
            "5s",
        ]);
        let body = register_body(&args).expect("body");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["Check"]["HTTP"], "http://127.0.0.1:8080/health");
        assert_eq!(v["Meta"]["team"], "core");
        let def = meridian_node::http::register::decode_service_definition(&body).expect("decodes");
        let reg =
            meridian_node::http::register::build_registration(def, "n1", true, &Default::default())
                .expect("valid");
        assert_eq!(reg.instance.id, "web-1");
        assert_eq!(reg.checks[0].id, "service:web-1");

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web.json");
        std::fs::write(&file, r#"{"service": {"name": "web", "port": 80}}"#).expect("write");
        let args = register_args(&[file.to_str().expect("utf-8 path")]);
        let body = register_body(&args).expect("body");
        assert_eq!(
            serde_json::from_slice::<Value>(&body).expect("json"),
            json!({"name": "web", "port": 80})
        );

        let bad = register_args(&["--name", "web", "--port", "1", "--meta", "novalue"]);
        assert!(register_body(&bad).is_err());
    }
}
