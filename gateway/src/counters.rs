//! The gateway's counters and their Prometheus text: connections by route and outcome, bytes,
//! and ClientHello failures. They live in the gateway value, not in globals, so two agents in one
//! process count apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// The tunnel, when there is one (its counters and connections are rendered too).
    pub tunnel: std::sync::OnceLock<std::sync::Arc<crate::tunnel::Tunnel>>,
}

impl GatewayCounters {
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

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP meridian_gateway_connections_total Gateway connections by route (local, remote, none) and outcome (relayed or why refused).\n\
             # TYPE meridian_gateway_connections_total counter"
        );
        if let Ok(m) = self.outcomes.lock() {
            for ((route, outcome), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "meridian_gateway_connections_total{{route=\"{route}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, help, v) in [
            (
                "meridian_gateway_bytes_up_total",
                "counter",
                "Bytes relayed from clients to backends.",
                load(&self.bytes_up),
            ),
            (
                "meridian_gateway_bytes_down_total",
                "counter",
                "Bytes relayed from backends to clients.",
                load(&self.bytes_down),
            ),
            (
                "meridian_gateway_hello_failures_total",
                "counter",
                "ClientHellos that could not be parsed (not TLS, malformed, too large, no SNI).",
                load(&self.hello_failures),
            ),
            (
                "meridian_gateway_rescued_total",
                "counter",
                "Connections to another DC that never answered, resolved and sent again.",
                load(&self.rescues),
            ),
            (
                "meridian_gateway_connections_open",
                "gauge",
                "Gateway connections open now.",
                load(&self.open),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        if let Some(t) = self.tunnel.get() {
            render_tunnel(out, t);
        }
    }
}

fn render_tunnel(out: &mut String, t: &crate::tunnel::Tunnel) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let s = &t.stats;
    for (name, help, v) in [
        (
            "meridian_gateway_tunnel_connects_total",
            "QUIC connections established to remote gateways.",
            load(&s.connects),
        ),
        (
            "meridian_gateway_tunnel_connect_failures_total",
            "QUIC connection attempts to remote gateways that failed.",
            load(&s.connect_failures),
        ),
        (
            "meridian_gateway_tunnel_streams_out_total",
            "Client connections tunnelled to remote gateways.",
            load(&s.streams_out),
        ),
        (
            "meridian_gateway_tunnel_streams_in_total",
            "Tunnelled connections accepted from remote gateways.",
            load(&s.streams_in),
        ),
        (
            "meridian_gateway_tunnel_refused_total",
            "Incoming QUIC connections refused (handshake failed).",
            load(&s.refused),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP meridian_gateway_tunnel_up 1 per remote datacenter with a live QUIC connection, labelled with the gateway it goes to.\n\
         # TYPE meridian_gateway_tunnel_up gauge"
    );
    for (dc, addr) in t.connections() {
        let _ = writeln!(
            out,
            "meridian_gateway_tunnel_up{{dc=\"{dc}\",gateway=\"{addr}\"}} 1"
        );
    }
}
