//! The gateway's counters and their metric families: connections by route and outcome, bytes,
//! and ClientHello failures. They live in the gateway value, not in globals, so two agents in one
//! process count apart. The tunnel counts and describes its own (`Tunnel::encode`); the relay
//! knows nothing of these: it copies `Metered` streams whose sinks
//! ([`GatewayCounters::up`], [`GatewayCounters::down`]) add to the byte counters, or (the
//! splice path) is handed the two byte counters themselves and adds what it writes each way.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_topology::metrics;
use prometheus_client::encoding::DescriptorEncoder;

use crate::meter::ByteSink;

/// Counters of one gateway.
#[derive(Debug, Default)]
pub struct GatewayCounters {
    /// `(route, outcome)` → connections. Route is `local`, `remote` or `none`; outcome is
    /// `relayed` or a refusal reason.
    outcomes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Bytes from clients to backends, ClientHellos included.
    pub bytes_up: AtomicU64,
    /// Bytes from backends to clients.
    pub bytes_down: AtomicU64,
    /// ClientHellos that could not be parsed (not TLS, malformed, too large, no SNI).
    pub hello_failures: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections to another DC that never answered, resolved and sent again (the client saw
    /// nothing of the failure).
    pub rescues: AtomicU64,
    /// Directions of local connections that turned out to carry a bulk transfer and were moved
    /// on to splice(2) (Linux).
    pub spliced: AtomicU64,
}

/// Adds the bytes written to one side of a relay to one of the byte counters: written towards
/// a backend is up, written towards a client is down. Counting writes, not reads, counts what
/// was handed on, as the copy did when it counted after each write.
#[derive(Debug)]
pub struct Written<'a>(&'a AtomicU64);

impl ByteSink for Written<'_> {
    fn record_read(&mut self, _: usize) {}

    fn record_write(&mut self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl GatewayCounters {
    /// The sink for a relay's stream towards the backend (or the remote gateway).
    pub fn up(&self) -> Written<'_> {
        Written(&self.bytes_up)
    }

    /// The sink for a relay's stream towards the client (or the remote gateway that sent it).
    pub fn down(&self) -> Written<'_> {
        Written(&self.bytes_down)
    }

    /// Counts one finished connection.
    pub fn record(&self, route: &'static str, outcome: &'static str) {
        let mut m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route, outcome)).or_default() += 1;
    }

    /// Connections so far with this route and outcome.
    pub fn count(&self, route: &str, outcome: &str) -> u64 {
        let m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .filter(|((r, o), _)| *r == route && *o == outcome)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Describes the connection families and their samples on `enc`. Crate-private: the node
    /// registers the gateway's families, these and the tunnel's, as one `GatewayMetrics`.
    pub(crate) fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let outcomes: Vec<((&'static str, &'static str), u64)> = self
            .outcomes
            .lock()
            .map(|m| m.iter().map(|(k, n)| (*k, *n)).collect())
            .unwrap_or_default();
        metrics::counter_by(
            enc,
            "meridian_gateway_connections",
            "Gateway connections by route (local, remote, none) and outcome (relayed or why refused).",
            outcomes
                .into_iter()
                .map(|((route, outcome), n)| ([("route", route), ("outcome", outcome)], n)),
        )?;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::counters(
            enc,
            &[
                (
                    "meridian_gateway_bytes_up",
                    "Bytes relayed from clients to backends.",
                    load(&self.bytes_up),
                ),
                (
                    "meridian_gateway_bytes_down",
                    "Bytes relayed from backends to clients.",
                    load(&self.bytes_down),
                ),
                (
                    "meridian_gateway_hello_failures",
                    "ClientHellos that could not be parsed (not TLS, malformed, too large, no SNI).",
                    load(&self.hello_failures),
                ),
                (
                    "meridian_gateway_rescued",
                    "Connections to another DC that never answered, resolved and sent again.",
                    load(&self.rescues),
                ),
                (
                    "meridian_gateway_spliced",
                    "Directions of local connections moved from the copy to splice(2) for a bulk transfer.",
                    load(&self.spliced),
                ),
            ],
        )?;
        metrics::gauges(
            enc,
            &[(
                "meridian_gateway_connections_open",
                "Gateway connections open now.",
                load(&self.open),
            )],
        )
    }
}
