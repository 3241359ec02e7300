//! The one Rust client of a Meridian agent, as users and tools see it from outside: its HTTP API
//! ([`api`]: bounded requests, the ACL token, typed answers), and the probes a client in a
//! datacenter runs ([`probe`]: SRV over UDP, a TLS handshake through a gateway, every DC's
//! status), with the drill's report ([`report`]) built from those probes. The CLI, the drill,
//! the benchmarks, the chaos tests and the test kit all use it; none of them reaches into the
//! node's code. Every failure is a [`ClientError`] ([`error`]) that says what failed and keeps
//! the underlying error as its source.

pub mod api;
pub mod error;
pub mod probe;
pub mod report;

pub use api::{ApiClient, Http};
pub use error::{ClientError, TransportError};
