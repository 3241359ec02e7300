//! What every integration test, benchmark and chaos test needs to drive real `meridian`
//! processes, written once: free ports ([`ports`]), one agent-process type that can be killed,
//! frozen, restarted on its data and whose log is printed when a test fails ([`process`]), a
//! typed writer of agent configuration files ([`config`], checked against the node's own
//! `Config` by a test in `meridian-node`), certificates through `meridian-identity` ([`certs`]),
//! waits that fail with a message ([`wait`]), one Prometheus text reader ([`metrics`]), the CPU and
//! memory of a process from `/proc` ([`meter`]), and the statistics reports use ([`stats`]).
//!
//! It uses `anyhow`: it is test code, and its errors end in a test's failure message.

// Tests and benchmarks measure real time: the clock rule (clippy.toml) is for the libraries.
#![allow(clippy::disallowed_methods)]

pub mod agent;
pub mod certs;
pub mod config;
pub mod meter;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod stats;
pub mod wait;

pub use agent::{Agent, Launch};
pub use config::AgentConfig;
pub use ports::{Ports, free_port, free_port_on};
pub use process::Proc;
