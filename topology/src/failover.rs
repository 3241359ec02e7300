//! Failover: which datacenters a query without a DC may be answered from, in what order, and how
//! an answer that left the local DC is addressed. The liveness that drives it comes from
//! [`health`](crate::health); the state published here is what every reader consults.

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::health::{DcLiveness, DcStatus};

/// How an answer that failed over to another DC is addressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressMode {
    /// The remote instances' own addresses (Consul's behaviour): clients need a route there.
    #[default]
    Direct,
    /// The local gateways' addresses: the client's TLS SNI names the service and the gateway
    /// tunnels to the chosen DC, so clients never need a route to another DC.
    Gateway,
}

impl AddressMode {
    /// The mode's name in config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressMode::Direct => "direct",
            AddressMode::Gateway => "gateway",
        }
    }
}

/// Where a query without a DC may go when the local DC cannot answer it.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverPolicy {
    /// Whether such queries fail over at all (Consul's plain `.service` lookups do not).
    pub enabled: bool,
    /// Up to this many other DCs, nearest first by measured RTT, are tried first.
    pub nearest_n: usize,
    /// Then these DCs, in this order (those not already tried).
    pub datacenters: Vec<Arc<str>>,
    /// Fail over when fewer than this share (0 to 1) of the local matching instances is healthy.
    pub spill_below: Option<f64>,
    /// How answers from another DC are addressed.
    pub address_mode: AddressMode,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            enabled: true,
            nearest_n: 3,
            datacenters: Vec::new(),
            spill_below: None,
            address_mode: AddressMode::Direct,
        }
    }
}

/// The failover state a [`View`](crate::View) carries: every DC's liveness, the services that
/// recovered too recently to be answered from again, and the default policy.
#[derive(Clone, Debug, Default)]
pub struct Failover {
    /// Liveness by lowercased DC name; a DC without an entry counts as `Up`.
    pub liveness: OrdMap<Arc<str>, DcLiveness>,
    /// `(dc, service)`, both lowercased, whose instances came back and are still inside the
    /// failback stable period: used only when no other DC can answer.
    pub held: OrdSet<(Arc<str>, Arc<str>)>,
    /// The policy for names without a DC.
    pub policy: Arc<FailoverPolicy>,
}

impl Failover {
    /// The liveness of `dc` (any case); `Up` with nothing measured when unknown.
    pub fn liveness(&self, dc: &str) -> DcLiveness {
        self.get(dc).cloned().unwrap_or_default()
    }

    fn get(&self, dc: &str) -> Option<&DcLiveness> {
        if dc.bytes().any(|b| b.is_ascii_uppercase()) {
            self.liveness.get(dc.to_ascii_lowercase().as_str())
        } else {
            self.liveness.get(dc)
        }
    }

    /// Whether answers must not point at `dc`: it is `Down` or `Drained`.
    pub fn unavailable(&self, dc: &str) -> bool {
        self.get(dc)
            .is_some_and(|l| matches!(l.status, DcStatus::Down | DcStatus::Drained))
    }

    /// Whether `service` in `dc` is inside its failback stable period.
    pub fn is_held(&self, dc: &str, service: &str) -> bool {
        // Few services are ever inside their failback period at once: a scan, no allocation
        // on the DNS path.
        self.held
            .iter()
            .any(|(d, s)| d.eq_ignore_ascii_case(dc) && s.eq_ignore_ascii_case(service))
    }

    /// The smoothed RTT to `dc` in microseconds, if measured.
    pub fn rtt_us(&self, dc: &str) -> Option<u32> {
        self.get(dc).and_then(|l| l.rtt_us)
    }
}
