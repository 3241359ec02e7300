//! The one client of Meridian's HTTP API: [`Http`] sends bounded requests to any agent's API (a
//! time limit per request, a cap on the answer's size, the ACL token in a header marked
//! sensitive), and [`ApiClient`] is the same bound to one agent's base URL, with the answers the
//! CLI shows decoded into types.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long one HTTP request may take unless the caller says otherwise.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to an agent may take.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest HTTP answer body read (the health of a service with many instances fits).
const MAX_BODY: usize = 16 << 20;

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

/// The base URL (`http://host:port`) of an HTTP API given as `host:port` or a URL.
pub fn base_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", addr.trim_end_matches('/'))
    }
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

/// A client of any agent's API (full URLs), with bounded requests.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    /// A client whose requests take at most `timeout` (unless a call says less) and carry
    /// `token`, if any.
    pub fn with_timeout(token: Option<&str>, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .default_headers(token_headers(token)?)
            .timeout(timeout)
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Http { client })
    }

    /// A client whose requests take at most [`HTTP_TIMEOUT`] and carry `token`, if any.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Self::with_timeout(token, HTTP_TIMEOUT)
    }

    /// Sends `req` within `limit` and reads its body (at most [`MAX_BODY`]); an error status is a
    /// [`StatusError`] in the error chain, under `what`.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        limit: Duration,
    ) -> anyhow::Result<String> {
        let resp = req.timeout(limit).send().await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow!("{what}: no answer: {cause}")
        })?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            bail!("{what}: answer too large");
        }
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: answer cut"))?;
        if body.len() > MAX_BODY {
            bail!("{what}: answer too large");
        }
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        if !status.is_success() {
            let e = StatusError {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or_default().to_owned(),
                message: text,
            };
            return Err(anyhow::Error::new(e).context(what.to_owned()));
        }
        Ok(text)
    }

    /// GETs `url` and decodes its JSON, within `limit`.
    pub async fn get_json(&self, url: &str, limit: Duration) -> anyhow::Result<Value> {
        self.get(url, limit).await
    }

    /// GETs `url` and decodes its JSON into `T`, within `limit`.
    pub async fn get<T: DeserializeOwned>(&self, url: &str, limit: Duration) -> anyhow::Result<T> {
        let what = format!("GET {url}");
        let text = self.send(self.client.get(url), &what, limit).await?;
        serde_json::from_str(&text).with_context(|| format!("{what}: unexpected answer"))
    }

    /// PUTs `body` as JSON to `url`.
    pub async fn put_json(&self, url: &str, body: &Value) -> anyhow::Result<()> {
        let what = format!("PUT {url}");
        let req = self.client.put(url).json(body);
        self.send(req, &what, HTTP_TIMEOUT).await.map(drop)
    }

    /// PUTs `body` (JSON bytes, or nothing) to `url`, within `limit`.
    pub async fn put_bytes(
        &self,
        url: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("PUT {url}");
        let mut req = self.client.put(url);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        self.send(req, &what, limit).await.map(drop)
    }

    /// PUTs nothing to `url`.
    pub async fn put_empty(&self, url: &str) -> anyhow::Result<()> {
        self.put_bytes(url, None, HTTP_TIMEOUT).await
    }

    /// DELETEs `url`.
    pub async fn delete(&self, url: &str) -> anyhow::Result<()> {
        let what = format!("DELETE {url}");
        self.send(self.client.delete(url), &what, HTTP_TIMEOUT)
            .await
            .map(drop)
    }
}

/// How long a CLI request may take (a blocking query or a slow leader election included).
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one agent's HTTP API (paths under its base URL) that turns failures into
/// one-line errors.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: Http,
}

impl ApiClient {
    /// A client of the API at `addr` (`host:port` or an `http://` URL), presenting `token`.
    pub fn new(addr: &str, token: Option<&str>) -> anyhow::Result<Self> {
        Ok(ApiClient {
            base: base_url(addr),
            http: Http::with_timeout(token, CLI_TIMEOUT)?,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path` and decodes the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.http
            .get(&format!("{}{path}", self.base), CLI_TIMEOUT)
            .await
    }

    /// PUTs `body` (JSON bytes, or nothing) to `path`.
    pub async fn put(&self, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<()> {
        self.http
            .put_bytes(&format!("{}{path}", self.base), body, CLI_TIMEOUT)
            .await
    }
}

/// The parts of a health entry (`/v1/health/service/:name`) the CLI and the demo show.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    /// The node the instance runs on.
    pub node: NodeEntry,
    /// The instance.
    pub service: ServiceEntry,
    /// Its checks.
    #[serde(default)]
    pub checks: Vec<CheckEntry>,
}

/// A node as the API shows it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeEntry {
    /// Its name.
    pub node: String,
    /// Its address.
    #[serde(default)]
    pub address: String,
    /// Its datacenter.
    #[serde(default)]
    pub datacenter: String,
}

/// An instance as the API shows it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its address (empty: the node's).
    #[serde(default)]
    pub address: String,
    /// Its port.
    #[serde(default)]
    pub port: u16,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A check as the API shows it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckEntry {
    /// `passing`, `warning` or `critical`.
    pub status: String,
}

/// The worst status among `checks` (passing when there are none), as Consul ranks them.
pub fn worst(checks: &[CheckEntry]) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_and_base_urls() {
        assert_eq!(path_segment("web 1:a/b"), "web%201:a%2Fb");
        assert_eq!(base_url("127.0.0.1:8500/"), "http://127.0.0.1:8500");
        assert_eq!(base_url("https://x:1/"), "https://x:1");
    }

    #[test]
    fn worst_ranks_as_consul() {
        let c = |s: &str| CheckEntry { status: s.into() };
        assert_eq!(worst(&[]), "passing");
        assert_eq!(worst(&[c("passing"), c("warning")]), "warning");
        assert_eq!(
            worst(&[c("warning"), c("critical"), c("passing")]),
            "critical"
        );
    }
}
