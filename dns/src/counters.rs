//! The DNS server's counters: answers by response code, malformed packets, truncations,
//! forwarded queries and UDP responses held back by the response-rate limit. Plain atomics owned
//! by the server (no globals); their metric families are described here, once, and read at each
//! scrape of the registry the node registers them on.

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_server::proto::op::ResponseCode;
use meridian_topology::metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// Response codes counted by name; anything else is counted as `other`.
const RCODES: [(ResponseCode, &str); 6] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
];

/// Counters of one DNS server.
#[derive(Debug, Default)]
pub struct DnsCounters {
    by_rcode: [AtomicU64; 6],
    other_rcode: AtomicU64,
    malformed: AtomicU64,
    truncated: AtomicU64,
    forwarded: AtomicU64,
    forward_failed: AtomicU64,
    forward_busy: AtomicU64,
    recursion_refused: AtomicU64,
    rate_limited_dropped: AtomicU64,
    rate_limited_slipped: AtomicU64,
    tcp_client_limit: AtomicU64,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl DnsCounters {
    /// Counts one response sent with `rcode`.
    pub fn answered(&self, rcode: ResponseCode) {
        match RCODES.iter().position(|(r, _)| *r == rcode) {
            Some(i) => add(&self.by_rcode[i]),
            None => add(&self.other_rcode),
        }
    }

    /// Counts a packet that could not be decoded (answered FORMERR when its header was readable,
    /// dropped otherwise).
    pub fn malformed(&self) {
        add(&self.malformed);
    }

    /// Counts a UDP response cut to fit (TC set).
    pub fn truncated(&self) {
        add(&self.truncated);
    }

    /// Counts a query forwarded to the recursors, and whether none of them answered.
    pub fn forwarded(&self, failed: bool) {
        add(&self.forwarded);
        if failed {
            add(&self.forward_failed);
        }
    }

    /// Counts a query answered SERVFAIL because every forwarding slot was taken.
    pub fn forward_busy(&self) {
        add(&self.forward_busy);
    }

    /// Counts a query for a name outside our domains refused because its client may not recurse.
    pub fn recursion_refused(&self) {
        add(&self.recursion_refused);
    }

    /// Queries refused recursion so far (client outside `recursor_allow`).
    pub fn recursion_refused_total(&self) -> u64 {
        self.recursion_refused.load(Ordering::Relaxed)
    }

    /// Queries answered SERVFAIL because every forwarding slot was taken, so far.
    pub fn forward_busy_total(&self) -> u64 {
        self.forward_busy.load(Ordering::Relaxed)
    }

    /// Counts a TCP connection closed because its address had `max_tcp_per_client` open.
    pub fn tcp_client_limit(&self) {
        add(&self.tcp_client_limit);
    }

    /// TCP connections closed for `max_tcp_per_client` so far.
    pub fn tcp_client_limit_total(&self) -> u64 {
        self.tcp_client_limit.load(Ordering::Relaxed)
    }

    /// Counts a UDP response dropped by the response-rate limit.
    pub fn rate_limited_dropped(&self) {
        add(&self.rate_limited_dropped);
    }

    /// Counts a UDP response the response-rate limit replaced by an empty truncated reply.
    pub fn rate_limited_slipped(&self) {
        add(&self.rate_limited_slipped);
    }

    /// Responses sent with each response code, by name (`NOERROR`, ..., `other`).
    pub fn responses(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RCODES
            .iter()
            .zip(&self.by_rcode)
            .map(|((_, name), c)| (*name, c.load(Ordering::Relaxed)))
            .chain(std::iter::once((
                "other",
                self.other_rcode.load(Ordering::Relaxed),
            )))
    }

    /// Responses sent with `rcode`.
    pub fn responses_with(&self, rcode: ResponseCode) -> u64 {
        RCODES.iter().position(|(r, _)| *r == rcode).map_or_else(
            || self.other_rcode.load(Ordering::Relaxed),
            |i| self.by_rcode[i].load(Ordering::Relaxed),
        )
    }

    /// Malformed packets so far.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Truncated UDP responses so far.
    pub fn truncated_total(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Queries forwarded so far.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Forwarded queries no recursor answered.
    pub fn forward_failed_total(&self) -> u64 {
        self.forward_failed.load(Ordering::Relaxed)
    }

    /// UDP responses dropped by the response-rate limit so far.
    pub fn rate_limited_dropped_total(&self) -> u64 {
        self.rate_limited_dropped.load(Ordering::Relaxed)
    }

    /// UDP responses sent as empty truncated replies by the response-rate limit so far.
    pub fn rate_limited_slipped_total(&self) -> u64 {
        self.rate_limited_slipped.load(Ordering::Relaxed)
    }
}

impl Collector for DnsCounters {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        metrics::counter_by(
            &mut enc,
            "meridian_dns_responses",
            "DNS responses sent, by response code.",
            self.responses().map(|(rcode, n)| ([("rcode", rcode)], n)),
        )?;
        metrics::counters(
            &mut enc,
            &[
                (
                    "meridian_dns_malformed",
                    "DNS packets that could not be decoded (answered FORMERR or dropped).",
                    self.malformed_total(),
                ),
                (
                    "meridian_dns_truncated",
                    "UDP responses cut to fit and sent with TC set.",
                    self.truncated_total(),
                ),
                (
                    "meridian_dns_forwarded",
                    "Queries outside our domains forwarded to the recursors.",
                    self.forwarded_total(),
                ),
                (
                    "meridian_dns_forward_failures",
                    "Forwarded queries no recursor answered (answered SERVFAIL).",
                    self.forward_failed_total(),
                ),
                (
                    "meridian_dns_forward_busy",
                    "Queries answered SERVFAIL because dns.max_forwards were already in flight.",
                    self.forward_busy_total(),
                ),
                (
                    "meridian_dns_recursion_refused",
                    "Queries for names outside our domains refused: the client is not in dns.recursor_allow.",
                    self.recursion_refused_total(),
                ),
                (
                    "meridian_dns_tcp_client_limit",
                    "TCP connections closed at once: their address already had dns.max_tcp_connections_per_client open.",
                    self.tcp_client_limit_total(),
                ),
                (
                    "meridian_dns_rate_limited_dropped",
                    "UDP responses dropped by the per-client response-rate limit.",
                    self.rate_limited_dropped_total(),
                ),
                (
                    "meridian_dns_rate_limited_slipped",
                    "UDP responses the response-rate limit sent as empty TC replies instead.",
                    self.rate_limited_slipped_total(),
                ),
            ],
        )
    }
}
