//! The `meridian` command line, shared by the `meridian` binary and the chaos tests'
//! `meridian-broken` build. `cli` parses and dispatches; each command owns its arguments and its
//! work in its own module (`agent`, `demo`, `services`, `tls_cmd`, `drill`, `connect`), over the node
//! (`meridian-node`) and the client (`meridian-client`) libraries. Nothing else links it.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

pub mod agent;
pub mod args;
pub mod cli;
pub mod connect;
pub mod demo;
pub mod drill;
pub mod operator;
pub mod services;
pub mod snapshot;
pub mod tls_cmd;
