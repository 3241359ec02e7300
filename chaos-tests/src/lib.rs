//! Chaos tests for Meridian: real `meridian` processes (several datacenters of several nodes
//! on loopback) run a client workload while faults are injected, and checkers then test the
//! promises of DESIGN.md against what the clients saw and what every node holds.
//!
//! The pieces: [`addr`] (the address plan: every node on its own loopback address, every
//! inter-DC path through a link address), [`link`] (the user-space TCP/UDP WAN proxy with
//! delay, jitter, loss, bandwidth caps, cuts and resets, seeded), [`kernel`] (the same cuts as
//! iptables rules when running as root, and the netem probe), [`cluster`] (a whole federation
//! and its TLS backends), [`workload`] and [`history`] (what clients did and got, timestamped),
//! [`check`] (the invariants) and [`scenario`] (fault schedules from a seed, and the runner).
//! [`powerloss`] is apart: one DC under an `LD_PRELOAD` interposer whose power is cut (every
//! data folder rolled back to what was fsync'ed), for the durability that kill -9 cannot test.
//!
//! What every harness needs comes from `meridian-testkit`: free ports, the agent process (kill
//! -9, SIGSTOP/SIGCONT, restart on the same data folder), the typed config writer, the
//! certificates and the waits.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

pub mod addr;
pub mod backend;
pub mod check;
pub mod cluster;
pub mod history;
pub mod kernel;
pub mod link;
pub mod powerloss;
pub mod scenario;
pub mod workload;

pub use cluster::{Cluster, ClusterSpec};
pub use scenario::{Options, RunReport, Scenario};
