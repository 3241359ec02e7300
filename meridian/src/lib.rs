//! The `meridian` binary's library: the command line ([`cli`]), the TOML configuration
//! ([`config`]), a running node ([`agent::Agent`]: the catalog plus the Consul-compatible HTTP API
//! of [`http`]), the demo, and the CLI commands that talk to an agent ([`client`]).
//!
//! It is a library so that integration tests can start an [`agent::Agent`] or serve
//! [`http::router`] in-process; `main.rs` only parses the command line and calls [`cli::run`].

pub mod acl;
pub mod agent;
// Deliberate faults for the chaos tests' checker self-tests; absent from normal builds.
#[cfg(feature = "chaos-broken")]
mod chaos_break;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod drill;
pub mod duration;
pub mod failover;
pub mod gateway_only;
pub mod http;
pub mod tls_cmd;
