//! What the DNS server is told at start-up: its domains, TTLs, size limits, SOA fields and
//! recursors, and the UDP response-rate limit. Built by the binary from its validated configuration; nothing here reads files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_topology::net::Prefix;

use crate::ratelimit::RateLimitSettings;

/// The DNS server's settings.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// The domain answered (`consul`), lowercase, without a trailing dot.
    pub domain: String,
    /// A second domain answered like the first (answers use the domain that was asked).
    pub alt_domain: Option<String>,
    /// Leave out instances whose health is `warning`.
    pub only_passing: bool,
    /// TTL of node records (`<node>.node`, `.addr`, PTR), in seconds.
    pub node_ttl: u32,
    /// TTLs of service records, by service name.
    pub service_ttl: TtlMap,
    /// Most answers in a UDP response to a query without EDNS (0: no limit beyond 512 bytes).
    pub udp_answer_limit: usize,
    /// Most address or SRV records in any response (0: unlimited).
    pub a_record_limit: usize,
    /// Upstream servers asked for names outside our domains, in order.
    pub recursors: Vec<SocketAddr>,
    /// How long one recursor gets to answer.
    pub recursor_timeout: Duration,
    /// Client prefixes that may recurse, besides loopback and the host's own networks (which
    /// always may); anyone else asking for a name outside our domains is refused.
    pub recursor_allow: Vec<Prefix>,
    /// Most queries forwarded at once (each holds a socket and a buffer); more get SERVFAIL.
    pub max_forwards: usize,
    /// Most TCP connections one client address holds at once, across the server's threads;
    /// more are closed at once (counted).
    pub max_tcp_per_client: usize,
    /// Largest UDP response, whatever larger size a client's EDNS claims: 1,232 bytes by
    /// default (DNS Flag Day 2020), so that no answer is fragmented or amplified beyond it.
    pub max_udp_payload: u16,
    /// SOA fields.
    pub soa: SoaSettings,
    /// This node's name: the NS and SOA primary of our domains are `<node>.node.<dc>.<domain>`.
    pub node_name: String,
    /// The per-client limit on UDP responses (TCP is never limited).
    pub rate_limit: RateLimitSettings,
}

/// Default TCP connections per client address: a resolver pipelines many queries on one or two
/// connections, so 32 is plenty for one and still leaves most of a thread's 256 to others.
pub const DEFAULT_TCP_PER_CLIENT: usize = 32;

impl DnsSettings {
    /// Consul's defaults for `domain` with this node's name, and the default response-rate limit.
    pub fn new(domain: &str, node_name: &str) -> Self {
        DnsSettings {
            domain: normalize_domain(domain),
            alt_domain: None,
            only_passing: false,
            node_ttl: 0,
            service_ttl: TtlMap::default(),
            udp_answer_limit: 3,
            a_record_limit: 0,
            recursors: Vec::new(),
            recursor_timeout: Duration::from_secs(2),
            recursor_allow: Vec::new(),
            max_forwards: 256,
            max_tcp_per_client: DEFAULT_TCP_PER_CLIENT,
            max_udp_payload: 1232,
            soa: SoaSettings::default(),
            node_name: node_name.to_ascii_lowercase(),
            rate_limit: RateLimitSettings::default(),
        }
    }
}

/// Lowercases a domain and drops its trailing dot.
pub fn normalize_domain(d: &str) -> String {
    d.trim_end_matches('.').to_ascii_lowercase()
}

/// SOA fields other than the names and the serial (a timestamp taken per answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoaSettings {
    /// Refresh, in seconds.
    pub refresh: u32,
    /// Retry, in seconds.
    pub retry: u32,
    /// Expire, in seconds.
    pub expire: u32,
    /// Minimum TTL (negative caching), in seconds; also the SOA record's own TTL.
    pub min_ttl: u32,
}

impl Default for SoaSettings {
    fn default() -> Self {
        SoaSettings {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        }
    }
}

/// Service TTLs as Consul reads `service_ttl`: an exact name beats the longest `prefix*` match,
/// and `*` is the fallback; names are compared ignoring case. Without a match the TTL is 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TtlMap {
    exact: HashMap<String, u32>,
    /// Longest prefix first.
    prefixes: Vec<(String, u32)>,
    fallback: u32,
}

impl TtlMap {
    /// Builds the map from `(key, ttl)` pairs as written in the configuration.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut m = TtlMap::default();
        for (key, ttl) in entries {
            let key = key.to_ascii_lowercase();
            if key == "*" {
                m.fallback = ttl;
            } else if let Some(prefix) = key.strip_suffix('*') {
                m.prefixes.push((prefix.to_owned(), ttl));
            } else {
                m.exact.insert(key, ttl);
            }
        }
        m.prefixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        m
    }

    /// The TTL of `service`.
    pub fn get(&self, service: &str) -> u32 {
        if self.exact.is_empty() && self.prefixes.is_empty() {
            return self.fallback;
        }
        // Service names are DNS labels (at most 63 bytes): lowercase them on the stack.
        let mut buf = [0u8; 64];
        let Some(lower) = lower_into(service, &mut buf) else {
            return self.fallback;
        };
        if let Some(ttl) = self.exact.get(lower) {
            return *ttl;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| lower.starts_with(p.as_str()))
            .map_or(self.fallback, |(_, ttl)| *ttl)
    }
}

/// `s` in ASCII lowercase, written into `buf`; `None` if it does not fit.
fn lower_into<'b>(s: &str, buf: &'b mut [u8; 64]) -> Option<&'b str> {
    let b = s.as_bytes();
    let out = buf.get_mut(..b.len())?;
    for (o, c) in out.iter_mut().zip(b) {
        *o = c.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_map_precedence() {
        let m = TtlMap::new([
            ("*", 5),
            ("web*", 10),
            ("web-api*", 20),
            ("web-api-v1", 30),
            ("DB", 40),
        ]);
        assert_eq!(m.get("web-api-v1"), 30, "exact beats every prefix");
        assert_eq!(m.get("WEB-API-V1"), 30, "case is ignored");
        assert_eq!(m.get("web-api-v2"), 20, "longest prefix wins");
        assert_eq!(m.get("webby"), 10);
        assert_eq!(m.get("db"), 40);
        assert_eq!(m.get("cache"), 5, "* is the fallback");
        assert_eq!(TtlMap::default().get("web"), 0, "0 without any entry");
        assert_eq!(TtlMap::new([("web", 7)]).get("api"), 0);
        assert_eq!(m.get(&"x".repeat(100)), 5);
    }
}
