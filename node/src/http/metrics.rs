//! The HTTP API's counters and their metric families. The counters live in the API state, not
//! in globals, so two agents in one process (tests, the demo) count separately.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use meridian_topology::metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// Request counters of one HTTP server.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    by_code: Mutex<BTreeMap<u16, u64>>,
    bad_requests: AtomicU64,
    acl_denied: AtomicU64,
    /// Connections closed because their source had its share open already.
    pub(crate) per_client_refused: std::sync::Arc<AtomicU64>,
}

impl HttpMetrics {
    /// Counts one answered request. Every 4xx is a bad request: the client sent something this
    /// API rejects (malformed, unknown, too large, wrong method).
    pub fn record(&self, status: StatusCode) {
        if let Ok(mut m) = self.by_code.lock() {
            *m.entry(status.as_u16()).or_default() += 1;
        }
        if status.is_client_error() {
            self.bad_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one request refused by the ACL (also counted by [`HttpMetrics::record`]).
    pub fn denied(&self) {
        self.acl_denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered with `code` so far.
    pub fn requests_with(&self, code: u16) -> u64 {
        self.by_code
            .lock()
            .map(|m| m.get(&code).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Bad requests so far.
    pub fn bad_requests(&self) -> u64 {
        self.bad_requests.load(Ordering::Relaxed)
    }
}

/// The HTTP API's families. Raft's and the catalog's are the catalog's own
/// (`meridian_catalog::CatalogMetrics`), the DNS server's the DNS server's.
impl Collector for HttpMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let by_code: Vec<(u16, u64)> = self
            .by_code
            .lock()
            .map(|m| m.iter().map(|(c, n)| (*c, *n)).collect())
            .unwrap_or_default();
        metrics::counter_by(
            &mut enc,
            "meridian_http_requests",
            "HTTP API requests answered, by status code.",
            by_code
                .into_iter()
                .map(|(code, n)| ([("code", code.to_string())], n)),
        )?;
        metrics::counters(
            &mut enc,
            &[
                (
                    "meridian_http_connections_refused",
                    "HTTP connections closed because their client had limits.max_connections_per_client open.",
                    self.per_client_refused.load(Ordering::Relaxed),
                ),
                (
                    "meridian_http_bad_requests",
                    "HTTP API requests rejected with a 4xx status.",
                    self.bad_requests(),
                ),
                (
                    "meridian_http_acl_denied",
                    "HTTP API requests refused by the ACL (403).",
                    self.acl_denied.load(Ordering::Relaxed),
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn counts_requests_by_code_and_client_errors_as_bad() {
        let m = std::sync::Arc::new(HttpMetrics::default());
        m.record(StatusCode::OK);
        m.record(StatusCode::OK);
        m.record(StatusCode::BAD_REQUEST);
        m.record(StatusCode::PAYLOAD_TOO_LARGE);
        m.record(StatusCode::SERVICE_UNAVAILABLE);
        m.denied();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(m.clone()));
        let text = crate::metrics::exposition(&registry);
        for line in [
            "# TYPE meridian_http_requests counter",
            "meridian_http_requests_total{code=\"200\"} 2",
            "meridian_http_requests_total{code=\"413\"} 1",
            "meridian_http_requests_total{code=\"503\"} 1",
            "meridian_http_bad_requests_total 2",
            "meridian_http_acl_denied_total 1",
            "meridian_http_connections_refused_total 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
