//! The one client of Meridian's HTTP API: [`Http`] sends bounded requests to any agent's API (a
//! time limit per request, a cap on the answer's size, the ACL token in a header marked
//! sensitive), and [`ApiClient`] is the same bound to one agent's base URL, with the answers the
//! CLI shows decoded into types.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ClientError, TransportError};

/// How long one HTTP request may take unless the caller says otherwise.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to an agent may take.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest HTTP answer body read (the health of a service with many instances fits).
const MAX_BODY: usize = 16 << 20;

/// The headers that present `token` to the API (none without one); the value is marked
/// sensitive so it is never printed.
pub fn token_headers(token: Option<&str>) -> Result<reqwest::header::HeaderMap, ClientError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let mut value =
            reqwest::header::HeaderValue::from_str(t).map_err(ClientError::InvalidToken)?;
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

/// A client of any agent's API (full URLs), with bounded requests.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    /// A client whose requests take at most `timeout` (unless a call says less) and carry
    /// `token`, if any.
    pub fn with_timeout(token: Option<&str>, timeout: Duration) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .default_headers(token_headers(token)?)
            .timeout(timeout)
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .build()
            .map_err(ClientError::HttpClient)?;
        Ok(Http { client })
    }

    /// A client whose requests take at most [`HTTP_TIMEOUT`] and carry `token`, if any.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        Self::with_timeout(token, HTTP_TIMEOUT)
    }

    /// Sends `req` (`method` to `url`) within `limit` and reads its body (at most
    /// [`MAX_BODY`]) as text; an error status is a [`ClientError::Status`].
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        method: &'static str,
        url: &str,
        limit: Duration,
    ) -> Result<String, ClientError> {
        let body = self.send_raw(req, method, url, limit, MAX_BODY).await?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }

    /// Sends `req` within `limit` and reads its body as it is, at most `max` bytes; an error
    /// status is a [`ClientError::Status`].
    async fn send_raw(
        &self,
        req: reqwest::RequestBuilder,
        method: &'static str,
        url: &str,
        limit: Duration,
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let mut resp = req
            .timeout(limit)
            .send()
            .await
            .map_err(|e| ClientError::NoAnswer {
                method,
                url: url.to_owned(),
                source: TransportError::new(e),
            })?;
        let status = resp.status();
        let too_large = || ClientError::AnswerTooLarge {
            method,
            url: url.to_owned(),
            limit: max,
        };
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        // Read as it arrives, and stop at the cap: an answer without a length (chunked, or
        // closed at its end) is bounded by size too, not only by the request's time limit.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| ClientError::AnswerCut {
            method,
            url: url.to_owned(),
            source: e,
        })? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(ClientError::Status {
                method,
                url: url.to_owned(),
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or_default().to_owned(),
                message: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        Ok(body)
    }

    /// GETs `url` within `limit` and returns its body as it is, at most `max` bytes (a file,
    /// such as a backup).
    pub async fn get_bytes(
        &self,
        url: &str,
        limit: Duration,
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        self.send_raw(self.client.get(url), "GET", url, limit, max)
            .await
    }

    /// PUTs `body` (a file, as it is) to `url` within `limit`, and returns the answer's text.
    pub async fn put_file(
        &self,
        url: &str,
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<String, ClientError> {
        let req = self
            .client
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(body);
        self.send(req, "PUT", url, limit).await
    }

    /// GETs `url` and decodes its JSON, within `limit`.
    pub async fn get_json(&self, url: &str, limit: Duration) -> Result<Value, ClientError> {
        self.get(url, limit).await
    }

    /// GETs `url` and decodes its JSON into `T`, within `limit`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        limit: Duration,
    ) -> Result<T, ClientError> {
        let text = self.send(self.client.get(url), "GET", url, limit).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::InvalidJson {
            method: "GET",
            url: url.to_owned(),
            source: e,
        })
    }

    /// PUTs `body` as JSON to `url`.
    pub async fn put_json(&self, url: &str, body: &Value) -> Result<(), ClientError> {
        let req = self.client.put(url).json(body);
        self.send(req, "PUT", url, HTTP_TIMEOUT).await.map(drop)
    }

    /// PUTs `body` (JSON bytes, or nothing) to `url`, within `limit`.
    pub async fn put_bytes(
        &self,
        url: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<(), ClientError> {
        let mut req = self.client.put(url);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        self.send(req, "PUT", url, limit).await.map(drop)
    }

    /// PUTs nothing to `url`.
    pub async fn put_empty(&self, url: &str) -> Result<(), ClientError> {
        self.put_bytes(url, None, HTTP_TIMEOUT).await
    }

    /// DELETEs `url`.
    pub async fn delete(&self, url: &str) -> Result<(), ClientError> {
        self.send(self.client.delete(url), "DELETE", url, HTTP_TIMEOUT)
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
    pub fn new(addr: &str, token: Option<&str>) -> Result<Self, ClientError> {
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
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.http
            .get(&format!("{}{path}", self.base), CLI_TIMEOUT)
            .await
    }

    /// PUTs `body` (JSON bytes, or nothing) to `path`.
    pub async fn put(&self, path: &str, body: Option<Vec<u8>>) -> Result<(), ClientError> {
        self.http
            .put_bytes(&format!("{}{path}", self.base), body, CLI_TIMEOUT)
            .await
    }

    /// DELETEs `path`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.http.delete(&format!("{}{path}", self.base)).await
    }

    /// GETs `path` as bytes, at most `max` of them.
    pub async fn get_bytes(&self, path: &str, max: usize) -> Result<Vec<u8>, ClientError> {
        self.http
            .get_bytes(&format!("{}{path}", self.base), CLI_TIMEOUT, max)
            .await
    }

    /// PUTs a file to `path`; the answer's text.
    pub async fn put_file(&self, path: &str, body: Vec<u8>) -> Result<String, ClientError> {
        self.http
            .put_file(&format!("{}{path}", self.base), body, CLI_TIMEOUT)
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

    /// A server on loopback that answers every connection with `answer` (a whole HTTP/1.1
    /// response) and closes it.
    async fn canned(answer: &'static str) -> anyhow::Result<std::net::SocketAddr> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        Ok(addr)
    }

    /// An answer with no length (closed at its end) is read only up to the cap.
    #[tokio::test]
    async fn an_answer_without_a_length_is_capped_too() -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .await;
                let block = vec![b' '; 1 << 20];
                // Bounded: twice the cap, then the end.
                for _ in 0..2 * (MAX_BODY >> 20) {
                    if s.write_all(&block).await.is_err() {
                        return;
                    }
                }
            }
        });
        let http = Http::new(None)?;
        let e = http
            .get_json(&format!("http://{addr}/big"), Duration::from_secs(10))
            .await
            .expect_err("too large");
        assert!(matches!(e, ClientError::AnswerTooLarge { .. }), "{e:?}");
        Ok(())
    }

    #[tokio::test]
    async fn failures_say_what_failed() -> anyhow::Result<()> {
        let http = Http::new(None)?;
        let limit = Duration::from_secs(2);

        // Nothing listening: the innermost cause, not reqwest's layers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let url = format!("http://{closed}/v1/agent/self");
        let e = http.get_json(&url, limit).await.expect_err("refused");
        assert!(
            matches!(&e, ClientError::NoAnswer { source, .. } if source.is_connect()),
            "{e:?}"
        );
        let text = format!("{:#}", anyhow::Error::new(e));
        assert!(
            text.starts_with(&format!("GET {url}: no answer: ")),
            "{text}"
        );
        assert!(!text.contains("error sending request"), "{text}");

        // An error status: the API's message, and the status for callers to match.
        let addr = canned(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\n\
             connection: close\r\n\r\nno leader\n",
        )
        .await?;
        let url = format!("http://{addr}/v1/agent/service/register");
        let e = http
            .put_bytes(&url, Some(b"{}".to_vec()), limit)
            .await
            .expect_err("503");
        assert_eq!(e.status(), Some(503));
        assert_eq!(
            e.to_string(),
            format!("PUT {url}: 503 Service Unavailable: no leader")
        );

        // Not JSON.
        let addr = canned("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .await?;
        let url = format!("http://{addr}/v1/status/leader");
        let e = http.get_json(&url, limit).await.expect_err("not JSON");
        assert!(matches!(e, ClientError::InvalidJson { .. }), "{e:?}");
        assert!(
            e.chain()
                .starts_with(&format!("GET {url}: unexpected answer: "))
        );
        Ok(())
    }

    #[test]
    fn a_bad_token_is_named_but_not_shown() {
        let e = token_headers(Some("secret\nvalue")).expect_err("invalid header");
        assert!(matches!(e, ClientError::InvalidToken(_)));
        assert!(!format!("{e:?} {}", e.chain()).contains("secret"));
        assert!(token_headers(None).is_ok_and(|h| h.is_empty()));
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
