//! A running Meridian node as a library: the TOML configuration ([`config`], serde both ways),
//! the ACL ([`acl`]), the wiring of the catalog, federation, DNS and gateway crates into one
//! [`agent::Agent`], gateway-only nodes ([`gateway_only`]), the failover stage that feeds probe
//! results into the detector and republishes the view ([`failover`]), and the Consul-compatible
//! HTTP API with `/metrics` ([`http`]). The `meridian` binary starts it; tests and benchmarks run
//! that binary as a process and never link this crate.

pub mod acl;
pub mod agent;
// Deliberate faults for the chaos tests' checker self-tests; absent from normal builds.
#[cfg(feature = "chaos-broken")]
mod chaos_break;
pub mod config;
pub mod descriptors;
pub mod duration;
pub mod failover;
#[cfg(test)]
mod fuzz;
pub mod gateway_nodes;
pub mod gateway_only;
pub mod http;
pub mod metrics;
pub mod upkeep;
