//! The HTTP API's counters and the `/metrics` page in Prometheus text format (with the catalog's
//! and the DNS server's counters). Hand-written (a
//! few counters and gauges do not need a metrics crate); the counters live in the API state, not
//! in globals, so two agents in one process (tests, the demo) count separately.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use meridian_catalog::{CatalogCounters, RaftStatus};
use meridian_dns::DnsCounters;
use meridian_topology::View;

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

    /// The `/metrics` page: these counters plus Raft's and the catalog's gauges and counters,
    /// and the DNS server's when it runs.
    pub fn render(
        &self,
        raft: &RaftStatus,
        view: &View,
        catalog: &CatalogCounters,
        dns: Option<&DnsCounters>,
    ) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP meridian_http_requests_total HTTP API requests answered, by status code.\n\
             # TYPE meridian_http_requests_total counter\n",
        );
        if let Ok(m) = self.by_code.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(out, "meridian_http_requests_total{{code=\"{code}\"}} {n}");
            }
        }
        let get = CatalogCounters::get;
        let gauges: [(&str, &str, &str, u64); 15] = [
            (
                "meridian_http_connections_refused_total",
                "counter",
                "HTTP connections closed because their client had limits.max_connections_per_client open.",
                self.per_client_refused.load(Ordering::Relaxed),
            ),
            (
                "meridian_http_bad_requests_total",
                "counter",
                "HTTP API requests rejected with a 4xx status.",
                self.bad_requests(),
            ),
            (
                "meridian_http_acl_denied_total",
                "counter",
                "HTTP API requests refused by the ACL (403).",
                self.acl_denied.load(Ordering::Relaxed),
            ),
            (
                "meridian_raft_term",
                "gauge",
                "Current Raft term.",
                raft.term,
            ),
            (
                "meridian_raft_last_applied_index",
                "gauge",
                "Last Raft log index applied to the catalog.",
                raft.last_applied,
            ),
            (
                "meridian_raft_is_leader",
                "gauge",
                "1 if this node leads its datacenter's Raft group.",
                u64::from(raft.is_leader),
            ),
            (
                "meridian_catalog_instances",
                "gauge",
                "Service instances registered in the local datacenter.",
                view.local().instance_count() as u64,
            ),
            (
                "meridian_catalog_index",
                "gauge",
                "Raft index of the last change to the local catalog.",
                view.local().index(),
            ),
            (
                "meridian_catalog_writes_local_total",
                "counter",
                "Write attempts proposed on this node as the leader.",
                get(&catalog.writes_local),
            ),
            (
                "meridian_catalog_writes_forwarded_total",
                "counter",
                "Write attempts this node forwarded to the leader.",
                get(&catalog.writes_forwarded),
            ),
            (
                "meridian_catalog_writes_failed_total",
                "counter",
                "Writes that failed: no leader committed them in time, or Raft refused them.",
                get(&catalog.writes_failed),
            ),
            (
                "meridian_raft_proposed_entries_total",
                "counter",
                "Raft entries this node proposed as the leader (each a batch of writes).",
                get(&catalog.batches),
            ),
            (
                "meridian_raft_proposed_writes_total",
                "counter",
                "Writes carried by those entries (divide by entries for the mean batch size).",
                get(&catalog.batched_writes),
            ),
            (
                "meridian_rpc_tls_refused_total",
                "counter",
                "Connections to the rpc port refused in the TLS handshake (no certificate of this DC).",
                get(&catalog.rpc_tls_refused),
            ),
            (
                "meridian_rpc_rejected_payloads_total",
                "counter",
                "Malformed Raft or forwarding RPC payloads refused.",
                get(&catalog.rpc_rejected),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        if let Some(dns) = dns {
            render_dns(&mut out, dns);
        }
        out
    }
}

/// The DNS server's counters.
/// Appends the DNS server's counters in Prometheus text format.
pub fn render_dns(out: &mut String, dns: &DnsCounters) {
    out.push_str(
        "# HELP meridian_dns_responses_total DNS responses sent, by response code.\n\
         # TYPE meridian_dns_responses_total counter\n",
    );
    for (rcode, n) in dns.responses() {
        let _ = writeln!(out, "meridian_dns_responses_total{{rcode=\"{rcode}\"}} {n}");
    }
    for (name, help, value) in [
        (
            "meridian_dns_malformed_total",
            "DNS packets that could not be decoded (answered FORMERR or dropped).",
            dns.malformed_total(),
        ),
        (
            "meridian_dns_truncated_total",
            "UDP responses cut to fit and sent with TC set.",
            dns.truncated_total(),
        ),
        (
            "meridian_dns_forwarded_total",
            "Queries outside our domains forwarded to the recursors.",
            dns.forwarded_total(),
        ),
        (
            "meridian_dns_forward_failures_total",
            "Forwarded queries no recursor answered (answered SERVFAIL).",
            dns.forward_failed_total(),
        ),
        (
            "meridian_dns_rate_limited_dropped_total",
            "UDP responses dropped by the per-client response-rate limit.",
            dns.rate_limited_dropped_total(),
        ),
        (
            "meridian_dns_rate_limited_slipped_total",
            "UDP responses the response-rate limit sent as empty TC replies instead.",
            dns.rate_limited_slipped_total(),
        ),
    ] {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = HttpMetrics::default();
        m.record(StatusCode::OK);
        m.record(StatusCode::OK);
        m.record(StatusCode::BAD_REQUEST);
        m.record(StatusCode::PAYLOAD_TOO_LARGE);
        m.record(StatusCode::SERVICE_UNAVAILABLE);
        let raft = RaftStatus {
            term: 3,
            is_leader: true,
            last_applied: 17,
            ..RaftStatus::default()
        };
        let counters = CatalogCounters::default();
        let dns = DnsCounters::default();
        dns.answered(meridian_dns::ResponseCode::NXDomain);
        dns.malformed();
        let text = m.render(
            &raft,
            &View::new("dc1", Default::default()),
            &counters,
            Some(&dns),
        );
        for line in [
            "meridian_http_requests_total{code=\"200\"} 2",
            "meridian_http_requests_total{code=\"413\"} 1",
            "meridian_http_bad_requests_total 2",
            "meridian_raft_term 3",
            "meridian_raft_last_applied_index 17",
            "meridian_raft_is_leader 1",
            "meridian_catalog_instances 0",
            "meridian_raft_proposed_entries_total 0",
            "# TYPE meridian_http_requests_total counter",
            "meridian_dns_responses_total{rcode=\"NXDOMAIN\"} 1",
            "meridian_dns_responses_total{rcode=\"NOERROR\"} 0",
            "meridian_dns_malformed_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
