//! Integration tests against real `meridian` processes on loopback: durability across kill -9 and
//! restarts, Consul-compatible HTTP behaviour, bad input, health checks, DNS and the CLI.

mod cli;
mod dns;
mod drill;
mod durability;
mod failover;
mod federation;
mod gateway;
mod harness;
mod health;
mod http_api;
mod prepared_query;
mod security;
mod unbound;
