//! The CLI commands that talk to a running agent over its HTTP API (`services ...`, `members`),
//! and the small HTTP client they share with the demo.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::cli::{ApiArgs, RegisterArgs, ServicesCommand};

/// The headers that present `token` to the API (none without one); the value is marked
/// sensitive so it is never printed.
pub fn token_headers(token: Option<&str>) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let mut value = reqwest::header::HeaderValue::from_str(t)
            .map_err(|_| anyhow!("the ACL token is not valid in an HTTP header"))?;
        value.set_sensitive(true);
        headers.insert("x-consul-token", value);
    }
    Ok(headers)
}

/// A client of one agent's HTTP API that turns failures into one-line errors.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the API at `addr` (`host:port` or an `http://` URL), presenting `token`.
    pub fn new(addr: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = if addr.contains("://") {
            addr.trim_end_matches('/').to_owned()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .default_headers(token_headers(token)?)
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(ApiClient { base, http })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow!(
                "cannot reach the Meridian HTTP API at {}: {cause}",
                self.base
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(StatusError {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or_default().to_owned(),
            message: body.trim().to_owned(),
        }
        .into())
    }

    /// GETs `path` and decodes the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        resp.json()
            .await
            .with_context(|| format!("unexpected answer from GET {path}"))
    }

    /// PUTs `body` (JSON bytes, or nothing) to `path`.
    pub async fn put(&self, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<()> {
        let mut req = self.http.put(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        self.send(req).await.map(drop)
    }
}

/// The API answered with an error status; the message is the API's own.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {reason}{}{message}", if message.is_empty() { "" } else { ": " })]
pub struct StatusError {
    /// HTTP status code.
    pub status: u16,
    /// Its reason phrase.
    pub reason: String,
    /// The body the API sent.
    pub message: String,
}

/// Percent-encodes a path segment (IDs may hold `:` or spaces).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
                        crate::config::join_host_port(&host, e.service.port),
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

/// The parts of a health entry the CLI shows.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry {
    pub(crate) node: NodeEntry,
    pub(crate) service: ServiceEntry,
    #[serde(default)]
    pub(crate) checks: Vec<CheckEntry>,
}

/// A node as the API shows it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeEntry {
    pub(crate) node: String,
    #[serde(default)]
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) datacenter: String,
}

/// An instance as the API shows it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceEntry {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) port: u16,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

/// A check as the API shows it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CheckEntry {
    pub(crate) status: String,
}

/// The worst status among `checks` (passing when there are none), as Consul ranks them.
pub(crate) fn worst(checks: &[CheckEntry]) -> &str {
    let rank = |s: &str| match s {
        "passing" => 0,
        "warning" => 1,
        _ => 2,
    };
    checks
        .iter()
        .map(|c| c.status.as_str())
        .max_by_key(|s| rank(s))
        .unwrap_or("passing")
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
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
        let mut full = vec!["meridian", "services", "register"];
        full.extend_from_slice(args);
        match crate::cli::Cli::try_parse_from(full)
            .expect("parses")
            .command
        {
            crate::cli::Commands::Services(s) => match s.command {
                ServicesCommand::Register(r) => *r,
                other => panic!("{other:?}"),
            },
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
        let def = crate::http::register::decode_service_definition(&body).expect("decodes");
        let reg = crate::http::register::build_registration(def, "n1", true, &Default::default())
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

    #[test]
    fn worst_status_and_segments() {
        let c = |s: &str| CheckEntry { status: s.into() };
        assert_eq!(worst(&[]), "passing");
        assert_eq!(worst(&[c("passing"), c("warning")]), "warning");
        assert_eq!(worst(&[c("critical"), c("warning")]), "critical");
        assert_eq!(path_segment("service:db 1/x"), "service:db%201%2Fx");
    }
}
