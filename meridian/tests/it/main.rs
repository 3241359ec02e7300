//! Integration tests against real `meridian` processes on loopback: durability across kill -9 and
//! restarts, Consul-compatible HTTP behaviour, bad input, health checks, DNS and the CLI.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

mod backup;
mod cli;
mod clients;
mod dns;
mod drill;
mod durability;
mod failover;
mod federation;
mod gateway;
mod gateway_caps;
mod harness;
mod health;
mod http_api;
mod intentions;
mod membership;
mod mesh;
mod prepared_query;
mod security;
mod sidecar;
mod tokens;
mod ui;
mod unbound;
mod wan_gateways;
