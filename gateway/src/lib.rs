//! Meridian's mesh gateway: the data plane that carries TLS between clients and service instances
//! without terminating it. It reads the ClientHello's SNI ([`client_hello`], sans-IO and bounded
//! by [`MAX_HELLO`]), maps the name to a service query ([`names`], the grammar DNS uses) and asks
//! `topology::resolve` where it goes, exactly as DNS does; [`local`] relays to local instances.
//!
//! The gateway never decrypts: the bytes it read to find the name are replayed to the backend
//! unchanged, so the client's certificate check is against the backend itself. It never relays
//! to a name outside its configured domains (no open relay).

pub mod client_hello;
pub mod counters;
pub mod local;
pub mod names;
pub mod relay;
pub mod tunnel;

pub use client_hello::{Hello, HelloError, MAX_HELLO};
pub use counters::GatewayCounters;
pub use local::{ConnError, LocalConfig, LocalGateway};
pub use names::{NameConfig, Route, UnknownName, route};
pub use tunnel::{Tunnel, TunnelConfig, TunnelError};
