//! Meridian's DNS server: Consul-compatible names (`web.service.consul`, `_web._tcp.consul`,
//! `n1.node.consul`, `7f000001.addr.consul`, reverse names) answered over UDP and TCP from the
//! live [`topology::View`](meridian_topology::View), on hickory-server's message types and
//! request-handler interface.
//!
//! [`DnsServer`] owns the sockets and keeps the view current; [`DnsHandler`] turns a request into
//! a response (checks, [`answer`](crate::answer::answer), fitting to the transport's size);
//! [`DnsSettings`] holds the configuration (with [`RateLimitSettings`], the per-client limit on
//! UDP responses that blunts amplification); [`DnsCounters`] what `/metrics` shows. Invariants:
//! every response fits its transport (512 bytes over UDP without EDNS, the EDNS size with it,
//! 64 KiB over TCP), additional records always match the answers kept, and no input panics the
//! server. Health and failover are never decided here: answers come from `topology::resolve`.

pub mod answer;
#[cfg(target_os = "linux")]
mod batch;
mod cache;
mod counters;
mod handler;
mod ratelimit;
mod server;
mod settings;
#[cfg(test)]
mod tests;

pub use counters::DnsCounters;
pub use handler::{DnsHandler, Prepared, Reply, formerr};
pub use hickory_server::proto::op::ResponseCode;
pub use ratelimit::RateLimitSettings;
pub use server::{DnsError, DnsServer, TCP_MAX_CONNECTIONS};
pub use settings::{DEFAULT_TCP_PER_CLIENT, DnsSettings, SoaSettings, TtlMap, normalize_domain};
