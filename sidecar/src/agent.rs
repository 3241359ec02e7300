//! What the sidecar asks of its local agent, over the agent's HTTP API (Consul's shapes): its
//! leaf and the mesh roots, where an upstream's mesh endpoints are (by the failover policy), the
//! local gateways, whether a caller is authorized, and its own registration.
//!
//! Everything that changes is followed with blocking queries (`?index=`), so the sidecar learns
//! of a renewal, a new root, a failover or a changed intention as the agent does, without
//! polling. Every answer is bounded in size and time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SidecarError;

/// The largest answer read from the agent (a health answer of many endpoints, the roots).
const MAX_ANSWER: usize = 4 << 20;

/// How long a blocking query waits at the agent before answering unchanged.
pub(crate) const WATCH_WAIT: Duration = Duration::from_secs(60);

/// One answer of the agent: its body and `X-Consul-Index` (0 when absent).
pub(crate) struct Answer {
    pub body: Vec<u8>,
    pub index: u64,
    pub headers: reqwest::header::HeaderMap,
}

/// The local agent's HTTP API.
#[derive(Clone)]
pub(crate) struct Agent {
    http: reqwest::Client,
    base: String,
}

/// The leaf the agent issued for the sidecar's service.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct LeafAnswer {
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    pub key_pem: String,
    pub serial_number: String,
    pub datacenter: String,
}

/// The mesh roots the agent knows: every DC's, in one trust domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RootsAnswer {
    pub trust_domain: String,
    pub roots: Vec<RootAnswer>,
}

/// One DC's root.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RootAnswer {
    pub root_cert: String,
    pub datacenter: String,
}

/// Where an upstream's mesh endpoints are: the DC the agent resolved it to, and their addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub dc: String,
    pub addrs: Vec<SocketAddr>,
}

impl Agent {
    /// The agent at `addr` (`host:port` or a URL), with `token` on every request.
    pub(crate) fn new(addr: &str, token: Option<&str>) -> Result<Agent, SidecarError> {
        let headers = meridian_client::api::token_headers(token)
            .map_err(|e| SidecarError::Agent(e.to_string()))?;
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            // A blocking query's wait, its jitter and a margin.
            .timeout(WATCH_WAIT + Duration::from_secs(15))
            .build()
            .map_err(|e| SidecarError::Agent(e.to_string()))?;
        Ok(Agent {
            http,
            base: meridian_client::api::base_url(addr),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Answer, SidecarError> {
        let err = |e: String| SidecarError::Agent(format!("{what}: {e}"));
        let mut resp = req.send().await.map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(e.to_string()))? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(err(format!("answer over {MAX_ANSWER} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(err(format!("{status}: {}", text.trim())));
        }
        Ok(Answer {
            body,
            index,
            headers,
        })
    }

    /// `GET path`, blocking until its index moves past `index` (0: at once).
    pub(crate) async fn watch(&self, path: &str, index: u64) -> Result<Answer, SidecarError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = if index == 0 {
            format!("{}{path}", self.base)
        } else {
            format!(
                "{}{path}{sep}index={index}&wait={}s",
                self.base,
                WATCH_WAIT.as_secs()
            )
        };
        self.send(self.http.get(url), path).await
    }

    /// `POST /v1/agent/connect/authorize`: whether `caller` (a SPIFFE URI) may reach `target`.
    pub(crate) async fn authorize(&self, target: &str, caller: &str) -> Result<bool, SidecarError> {
        let body = json!({ "Target": target, "ClientCertURI": caller });
        let req = self
            .http
            .post(format!("{}/v1/agent/connect/authorize", self.base))
            .timeout(Duration::from_secs(5))
            .json(&body);
        let answer = self.send(req, "authorize").await?;
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| SidecarError::Agent(format!("authorize: {e}")))?;
        v.get("Authorized")
            .and_then(Value::as_bool)
            .ok_or_else(|| SidecarError::Agent("authorize: no Authorized in the answer".into()))
    }

    /// `PUT /v1/agent/service/register` with `definition`.
    pub(crate) async fn register(&self, definition: &Value) -> Result<(), SidecarError> {
        let req = self
            .http
            .put(format!("{}/v1/agent/service/register", self.base))
            .timeout(Duration::from_secs(10))
            .json(definition);
        self.send(req, "register").await.map(drop)
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    pub(crate) async fn deregister(&self, id: &str) -> Result<(), SidecarError> {
        let req = self
            .http
            .put(format!(
                "{}/v1/agent/service/deregister/{}",
                self.base,
                meridian_client::api::path_segment(id)
            ))
            .timeout(Duration::from_secs(10));
        self.send(req, "deregister").await.map(drop)
    }
}

/// Decodes a JSON answer.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    answer: &Answer,
    what: &str,
) -> Result<T, SidecarError> {
    serde_json::from_slice(&answer.body).map_err(|e| SidecarError::Agent(format!("{what}: {e}")))
}

/// The addresses of a health answer's entries: each instance's address, else its node's, with
/// the instance's port. Entries with an address that is not an IP are skipped (the data plane
/// does no DNS lookups).
pub(crate) fn entry_addrs(answer: &Answer) -> Result<Vec<SocketAddr>, SidecarError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        node: NodePart,
        service: ServicePart,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct NodePart {
        address: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ServicePart {
        address: String,
        port: u16,
    }
    let entries: Vec<Entry> = decode(answer, "health entries")?;
    Ok(entries
        .iter()
        .filter_map(|e| {
            let addr = if e.service.address.is_empty() {
                &e.node.address
            } else {
                &e.service.address
            };
            Some(SocketAddr::new(
                addr.parse::<IpAddr>().ok()?,
                e.service.port,
            ))
        })
        .collect())
}
