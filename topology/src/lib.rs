//! Meridian's brain, kept pure: the data model of a datacenter's catalog, the name grammar shared
//! by DNS and SNI, and the immutable [`View`] that every reader (HTTP API, DNS, gateway) consults.
//!
//! It also decides failover: the DC failure detector ([`health`]) and the policies
//! ([`failover`]) that `resolve` applies, so DNS answers and gateway routes never disagree.
//!
//! Nothing here touches sockets, clocks or disks. Producers (`catalog`, later `federation`) build a
//! new [`View`] and publish it; consumers read a snapshot and never see a half-applied change.

pub mod caps;
pub mod dc;
pub mod failover;
pub mod health;
mod instance_set;
pub mod intention;
pub mod lww;
pub mod mesh;
pub mod metrics;
mod model;
pub mod names;
pub mod net;
pub mod prepared;
mod resolve;
pub mod token;
mod view;

pub use dc::DcState;
pub use failover::{AddressMode, Failover, FailoverPolicy, rank_by_rtt};
pub use health::{DcLiveness, DcStatus, Detector, DetectorConfig};
pub use model::{
    CONNECT_PROXY_KIND, Check, CheckKind, CheckSpec, Health, Instance, InstanceKey,
    MAX_PROXY_UPSTREAMS, Node, Proxy, Upstream, Weights,
};
pub use names::{MeshName, NameError, NameQuery, QueryNameError};
pub use prepared::{PreparedQuery, QueryError};
pub use resolve::{Resolution, ResolveError, ServiceQuery, Why, explain, resolve};
pub use view::{RemoteDc, View};

/// The service each gateway registers in its datacenter's catalog (with its WAN address), which
/// federation always exports so that remote gateways can find it.
pub const GATEWAY_SERVICE: &str = "meridian-gateway";

/// Instance meta of a gateway: `ip:port` its own DC's nodes reach it at, when that differs from
/// the advertised (WAN, maybe NAT) address other DCs use.
pub const GATEWAY_LAN_META: &str = "meridian-lan";

/// The service an operator's drain registers in its datacenter's catalog: while any instance of
/// it exists, the DC is `Drained` everywhere (federation always exports it).
pub const DRAIN_SERVICE: &str = "meridian-drain";

/// The prefix of the services Meridian registers for itself ([`GATEWAY_SERVICE`],
/// [`DRAIN_SERVICE`]): they are the system's own, never a destination for client traffic.
pub const INTERNAL_SERVICE_PREFIX: &str = "meridian-";

/// Whether `service` is one of Meridian's own (its name starts with
/// [`INTERNAL_SERVICE_PREFIX`], in any case).
pub fn is_internal_service(service: &str) -> bool {
    service
        .get(..INTERNAL_SERVICE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(INTERNAL_SERVICE_PREFIX))
}

/// Cases for one bounded fuzz property (the crates' proptest `fuzz` tests): `PROPTEST_CASES`
/// when set (a deeper run, `scripts/fuzz.sh`), else `default` (the test suite's count).
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
