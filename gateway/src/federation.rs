//! Federation streams carried through the gateways ("federation via gateways"): a node whose
//! federation transport is `gateway` opens its subscription to another datacenter as TLS to a
//! gateway of its own datacenter, with the SNI that datacenter's servers hold a certificate for
//! (`server.<dc>.meridian`). The gateway routes that name like any other, without terminating
//! the TLS: to the named datacenter through the tunnel (header name = the SNI), where the
//! receiving gateway hands it to one of its own servers' federation ports on the LAN. The gRPC
//! protocol, its resume by digest and the mutual TLS stay end to end between the two nodes; only
//! the gateways face the WAN.
//!
//! This file owns the name's grammar and where each end sends it; `serve.rs` (front door) and
//! `inbound.rs` (tunnel side) call it. A federation name is never a service: it bypasses the
//! export policy (federation has its own) and is never failed over to another datacenter (the
//! name is one datacenter's).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// A datacenter's gateways known apart from the view (configured, joined or learned by
/// federation): what a follower's first sync is carried by, before any replica names them.
pub type KnownGateways = Arc<dyn Fn(&str) -> Vec<SocketAddr> + Send + Sync>;

/// Where federation names go; set by the node when its gateway carries federation.
#[derive(Clone)]
pub struct FederationRoute {
    /// The federation name's first label with its dot (`server.`).
    pub prefix: String,
    /// The federation name's suffix with its dot (`.meridian`).
    pub suffix: String,
    /// This datacenter's federation endpoints (its servers' WAN ports), kept current by the
    /// node: where a stream tunnelled here for this datacenter is handed.
    pub local: Arc<ArcSwap<Vec<SocketAddr>>>,
    /// Gateways of another datacenter known apart from the view.
    pub known: KnownGateways,
}

impl fmt::Debug for FederationRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationRoute")
            .field("prefix", &self.prefix)
            .field("suffix", &self.suffix)
            .field("local", &self.local.load())
            .finish_non_exhaustive()
    }
}

impl FederationRoute {
    /// The datacenter a federation name names (`server.dc2.meridian` → `dc2`), or `None` when
    /// `sni` is not a federation name. Case-insensitive, as DNS names are; one label only.
    pub fn dc_of<'a>(&self, sni: &'a str) -> Option<&'a str> {
        let (p, s) = (self.prefix.len(), self.suffix.len());
        if sni.len() <= p + s || !sni.is_ascii() {
            return None;
        }
        let (head, rest) = sni.split_at(p);
        let (dc, tail) = rest.split_at(rest.len() - s);
        (head.eq_ignore_ascii_case(&self.prefix)
            && tail.eq_ignore_ascii_case(&self.suffix)
            && meridian_topology::names::is_label(dc))
        .then_some(dc)
    }

    /// The gateways that carry a stream to `dc`: those of its replica in the view (healthy,
    /// current), else those known apart from it (a first sync, or a replica without gateways).
    pub fn gateways(&self, dc: &str, from_view: Vec<SocketAddr>) -> Vec<SocketAddr> {
        if from_view.is_empty() {
            (self.known)(dc)
        } else {
            from_view
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> FederationRoute {
        let known: KnownGateways = Arc::new(|dc: &str| {
            if dc == "dc3" {
                vec![SocketAddr::from(([127, 0, 3, 1], 8443))]
            } else {
                Vec::new()
            }
        });
        FederationRoute {
            prefix: "server.".into(),
            suffix: ".meridian".into(),
            local: Arc::new(ArcSwap::from_pointee(Vec::new())),
            known,
        }
    }

    #[test]
    fn only_one_datacenter_label_between_prefix_and_suffix_is_a_federation_name() {
        let r = route();
        assert_eq!(r.dc_of("server.dc2.meridian"), Some("dc2"));
        assert_eq!(r.dc_of("SERVER.Dc2.MERIDIAN"), Some("Dc2"));
        for not in [
            "server.meridian",
            "server..meridian",
            "server.a.b.meridian",
            "n1.server.dc2.meridian",
            "gateway.dc2.meridian",
            "server.dc2.meridian.evil.com",
            "server.dc2.consul",
            "server.dc_2.meridian",
            "web.service.dc2.consul",
            "",
        ] {
            assert_eq!(r.dc_of(not), None, "{not}");
        }
    }

    #[test]
    fn the_views_gateways_come_first_and_known_ones_stand_in() {
        let r = route();
        let live = vec![SocketAddr::from(([127, 0, 3, 2], 8443))];
        assert_eq!(r.gateways("dc3", live.clone()), live);
        assert_eq!(
            r.gateways("dc3", Vec::new()),
            vec![SocketAddr::from(([127, 0, 3, 1], 8443))]
        );
        assert!(r.gateways("dc9", Vec::new()).is_empty());
    }
}
