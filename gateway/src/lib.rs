//! Meridian's mesh gateway: the data plane that carries TLS between clients and service instances
//! without terminating it, and between datacenters through a QUIC tunnel.
//!
//! A connection's path, one step per file: [`Gateway::start`] (`gateway.rs`) follows the views
//! (closing the tunnel to a DC as soon as a view marks it newly down) and runs the loops;
//! `serve.rs` accepts a TCP connection and reads its ClientHello
//! ([`client_hello`], sans-IO and bounded by [`MAX_HELLO`]); [`route`](mod@route) maps the SNI
//! to a service query (the grammar DNS uses) and asks `topology::resolve` where it goes,
//! exactly as DNS does.
//! To this datacenter, [`local`] connects to an instance chosen by `balance.rs` and replays the
//! ClientHello; to another one, `remote.rs` opens a stream through the [`tunnel`] with a
//! [`header`] and the ClientHello, waits for the first answer and rescues the connection
//! elsewhere if the DC never answers. On the far side, `inbound.rs` reads the header (or answers
//! a probe), checks the export policy and relays to a local instance, never further. Every
//! route ends in [`relay`]'s two-way copy, over streams wrapped by [`meter`] so that
//! [`counters`] count the bytes; [`prefixed`] replays the bytes read to find the name. The one
//! exception: on Linux a client's connection to a local instance, two plain sockets, is relayed
//! by splice(2) (`splice.rs`, with the copy's semantics, adding to the same counters).
//!
//! The gateway never decrypts: the bytes it read to find the name are replayed to the backend
//! unchanged, so the client's certificate check is against the backend itself. It never relays
//! to a name outside its configured domains (no open relay), and a tunnelled connection is never
//! sent on to a third datacenter (no loops). Files depend on each other one way only: the
//! leaves (`client_hello`, `route`, `header`, `prefixed`, `meter`, `relay`, `caps`) import
//! nothing from the crate (`splice` imports only `relay`), and each step imports only the steps
//! after it.
//!
//! Every party's share is capped ([`caps`]): connections per client address at the front door,
//! a client address's share of each remote DC's streams, and, on the receiving side of the
//! tunnel, connections and streams per peer and handshakes in progress; tunnelled streams take
//! from the same connection budget as clients.

mod balance;
pub mod client_hello;
pub mod counters;
mod error;
pub mod federation;
#[cfg(test)]
mod fixtures;
mod gateway;
pub mod header;
mod inbound;
pub mod local;
pub mod meter;
pub mod prefixed;
pub mod relay;
mod remote;
pub mod route;
mod serve;
#[cfg(target_os = "linux")]
mod splice;
pub mod tunnel;

pub use client_hello::{Hello, HelloError, MAX_HELLO};
pub use counters::GatewayCounters;
pub use error::ConnError;
pub use federation::{FederationRoute, KnownGateways};
pub use gateway::{Gateway, GatewayMetrics};
pub use header::{Header, HeaderError, PROBE_ANSWER};
pub use local::{LocalConfig, LocalGateway, pipe_descriptors, spliced_max};
pub use route::{NameConfig, OwnAddrs, Route, RouteError, Target, UnknownName, route};
pub use tunnel::{
    RetryPolicy, Tunnel, TunnelConfig, TunnelError, TunnelStats, TunnelStream, WanTransport,
};
