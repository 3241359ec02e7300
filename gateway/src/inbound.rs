//! Streams other datacenters' gateways tunnelled here, both transports: QUIC streams from the
//! tunnel's endpoint, and the TCP fallback (a TLS connection to the gateway's TCP port whose SNI
//! is this gateway's own server name, handed over by `serve.rs`).
//!
//! Each stream opens with a header ([`crate::header`]): a header without a name is a liveness
//! probe, answered with [`PROBE_ANSWER`](crate::header::PROBE_ANSWER); any other is checked (it
//! must name this datacenter, and a service this datacenter exports) and relayed to one of this
//! datacenter's instances, never further, so routes cannot loop. This datacenter's federation
//! name (`crate::federation`) is relayed to one of its servers' federation ports instead.
//!
//! A relayed stream holds a backend socket, so it takes a slot of the gateway's connection
//! budget (`max_connections`, the one client connections take: a TCP-fallback connection took
//! its slot at accept) and one of its peer's share (`max_streams_per_peer`); without either it
//! is refused and counted. Probes need neither: they hold no backend socket, and a gateway
//! that is full is still alive.

use std::sync::Arc;

use meridian_topology::names::pattern_matches;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span};

use crate::error::ConnError;
use crate::header::{self, Header};
use crate::local::LocalGateway;
use crate::route::{Target, route};
use crate::tunnel::{PeerId, Tunnel};
use meridian_topology::caps::ClientSlot;

impl LocalGateway {
    /// Accepts QUIC connections from remote gateways on `tunnel` until its endpoint closes, and
    /// serves each stream on them ([`Self::serve_tunnelled`]).
    pub async fn accept_tunnelled(self: Arc<Self>, tunnel: Arc<Tunnel>) {
        tunnel
            .accept(move |peer, send, recv| {
                let gw = Arc::clone(&self);
                async move { gw.serve_tunnelled(peer, send, recv).await }
            })
            .await;
    }

    /// Serves one QUIC stream the remote gateway `peer` tunnelled here.
    pub async fn serve_tunnelled(
        &self,
        peer: PeerId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let span = info_span!("tunnelled", sni = tracing::field::Empty);
        let result = self
            .serve_tunnel_stream(tokio::io::join(recv, send), Some(&peer), true)
            .instrument(span)
            .await;
        match result {
            Ok(Some(Relayed { route, up, down })) => {
                self.counters.record(route, "relayed");
                debug!(route, up, down, "tunnelled stream closed");
            }
            Ok(None) => self.counters.record("tunnelled_in", "probe"),
            Err(e) => {
                self.counters.record("tunnelled_in", e.reason());
                debug!(reason = e.reason(), error = %e, "tunnelled stream refused");
            }
        }
    }

    /// Serves a TCP-fallback tunnel connection whose ClientHello (already read, in `hello`)
    /// named this gateway's own server name: the mutual-TLS handshake, replaying `hello`, then
    /// the stream inside. Returns the route (`tunnelled_in`, or `tunnelled_in_probe`) and the
    /// bytes copied. Once the peer is authenticated, `client_slot` (its source address's share,
    /// meant for unknown clients) is given back: the peer's own share covers it from then on,
    /// so a remote DC on the fallback is not held to one client's share.
    pub(crate) async fn serve_tcp_tunnel(
        &self,
        tunnel: &Tunnel,
        hello: Vec<u8>,
        client: &mut TcpStream,
        client_slot: &mut Option<ClientSlot>,
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let remote = client.peer_addr()?.ip();
        let tls = tokio::time::timeout(
            self.config.handshake_timeout,
            tunnel.accept_tcp(hello, &mut *client),
        )
        .await
        .map_err(|_| ConnError::HandshakeTimeout)?
        .map_err(|e| ConnError::BadHeader(format!("tunnel TLS: {e}")))?;
        let peer = PeerId::new(tls.get_ref().1.peer_certificates(), remote);
        client_slot.take();
        Ok(
            match self.serve_tunnel_stream(tls, Some(&peer), false).await? {
                Some(Relayed { route, up, down }) => (route, up, down),
                None => ("tunnelled_in_probe", 0, 0),
            },
        )
    }

    /// Reads a tunnelled connection's header, then relays it to an instance of this datacenter,
    /// or, for this datacenter's federation name, to one of its servers' federation ports;
    /// never further. Holds a place in `peer`'s share (when known) and, if `takes_slot` (it
    /// holds none yet), a slot of the gateway's budget.
    /// A header without a name is a liveness probe: answered with one byte, `Ok(None)`.
    pub(crate) async fn serve_tunnel_stream<S>(
        &self,
        mut stream: S,
        peer: Option<&PeerId>,
        takes_slot: bool,
    ) -> Result<Option<Relayed>, ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let header = tokio::time::timeout(self.config.handshake_timeout, Header::read(&mut stream))
            .await
            .map_err(|_| ConnError::HandshakeTimeout)?
            .map_err(|e| ConnError::BadHeader(e.to_string()))?;
        tracing::Span::current().record("sni", header.name.as_str());
        let local = self.view.load().datacenter().to_owned();
        if !header.dc.eq_ignore_ascii_case(&local) {
            return Err(ConnError::WrongDc(header.dc));
        }
        if header.is_probe() {
            header::answer_probe(&mut stream).await?;
            return Ok(None);
        }
        let federation = self
            .config
            .federation
            .as_ref()
            .and_then(|f| Some((f, f.dc_of(&header.name)?)));
        let (candidates, label) = if let Some((f, dc)) = federation {
            // Federation has its own export policy, applied by the server it reaches.
            if !dc.eq_ignore_ascii_case(&local) {
                return Err(ConnError::WrongDc(dc.to_owned()));
            }
            (f.local.load().to_vec(), "federation_in")
        } else {
            if let Some(export) = &self.config.export {
                let service = route(&header.name, &self.config.names)?.service;
                if !export.iter().any(|p| pattern_matches(p, service)) {
                    return Err(ConnError::NotExported(service.to_owned()));
                }
            }
            let Target::Local(candidates) = self.target(&header.name, true)? else {
                return Err(ConnError::WrongDc(header.dc));
            };
            (candidates, "tunnelled_in")
        };
        // The peer's share before the shared budget: a peer over its share takes nothing from
        // the others, even for a moment.
        let _peer_slot = match (&self.tunnel, peer) {
            (Some(tunnel), Some(peer)) => Some(
                tunnel
                    .admit_stream(peer.clone())
                    .ok_or(ConnError::PeerLimit)?,
            ),
            _ => None,
        };
        let _slot = if takes_slot {
            Some(
                Arc::clone(&self.slots)
                    .try_acquire_owned()
                    .map_err(|_| ConnError::GatewayFull)?,
            )
        } else {
            None
        };
        let (mut backend, _guard) = self.connect_local(&header.name, candidates).await?;
        let (up, down) = self.copy(&mut stream, &mut backend).await?;
        Ok(Some(Relayed {
            route: label,
            up,
            down,
        }))
    }
}

/// A tunnelled stream that was relayed: its route label (`tunnelled_in`, or `federation_in`
/// for a federation stream) and the bytes copied each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relayed {
    route: &'static str,
    up: u64,
    down: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use crate::fixtures::{NAME, config, hello_for, tls_backend, view};

    /// The header of a stream for `NAME` in dc1.
    fn relay_header() -> Vec<u8> {
        Header {
            name: NAME.into(),
            dc: "dc1".into(),
        }
        .encode()
        .expect("header")
    }

    /// Why `gw` refuses a stream (needing a gateway slot) that opens with `first`.
    async fn refusal(gw: &LocalGateway, first: &[u8]) -> &'static str {
        let (mut near, far) = tokio::io::duplex(4096);
        near.write_all(first).await.expect("write");
        gw.serve_tunnel_stream(far, None, true)
            .await
            .expect_err("refused")
            .reason()
    }

    /// A probe naming `dc` is answered by `gw`.
    async fn probe_is_answered(gw: &LocalGateway, dc: &str) {
        let (mut near, far) = tokio::io::duplex(64);
        let probe = Header::probe(dc).encode().expect("header");
        let answered = tokio::spawn(async move {
            header::send_probe(&mut near, &probe)
                .await
                .map_err(|e| e.to_string())
        });
        assert!(
            gw.serve_tunnel_stream(far, None, true)
                .await
                .expect("probe")
                .is_none()
        );
        answered.await.expect("join").expect("answered");
    }

    #[tokio::test]
    async fn tunnelled_streams_reach_only_exported_services() {
        let (backend, _) = tls_backend();
        let gw = |export: Option<Vec<String>>| {
            let mut c = config(Duration::from_secs(5));
            c.export = export;
            LocalGateway::new(Arc::new(ArcSwap::from_pointee(view(&[backend.port()]))), c)
        };
        let header = relay_header();
        let stream = |first: &[u8]| {
            let (mut near, far) = tokio::io::duplex(4096);
            let first = first.to_vec();
            tokio::spawn(async move {
                let _ = near.write_all(&first).await;
                let _ = near.shutdown().await;
                let mut sink = Vec::new();
                let _ = near.read_to_end(&mut sink).await;
            });
            far
        };
        let private = gw(Some(vec!["api*".into()]));
        let err = private
            .serve_tunnel_stream(stream(&header), None, true)
            .await
            .expect_err("web is not exported");
        assert_eq!(err.reason(), "not_exported");
        let mut first = header.clone();
        first.extend_from_slice(&hello_for(NAME));
        let open = gw(Some(vec!["web".into()]));
        let relayed = open
            .serve_tunnel_stream(stream(&first), None, true)
            .await
            .expect("web is exported");
        assert!(relayed.is_some());
    }

    #[tokio::test]
    async fn probes_are_answered_and_other_datacenters_refused() {
        let gw = LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[]))),
            config(Duration::from_secs(5)),
        );
        probe_is_answered(&gw, "DC1").await;

        let other = Header::probe("dc3").encode().expect("header");
        assert_eq!(refusal(&gw, &other).await, "wrong_dc");
        assert_eq!(refusal(&gw, &[7, 0, 0]).await, "bad_tunnel_header");
    }

    #[tokio::test]
    async fn a_relayed_stream_needs_a_slot_of_the_gateway_budget_and_a_probe_does_not() {
        let (backend, _) = tls_backend();
        let mut c = config(Duration::from_secs(5));
        c.max_connections = 1;
        let gw = LocalGateway::new(Arc::new(ArcSwap::from_pointee(view(&[backend.port()]))), c);
        // A client connection holds the only slot.
        let _held = Arc::clone(&gw.slots).try_acquire_owned().expect("slot");
        let mut first = relay_header();
        first.extend_from_slice(&hello_for(NAME));
        assert_eq!(refusal(&gw, &first).await, "gateway_full");
        // A TCP-fallback connection already holds its slot (taken at accept).
        let (mut near, far) = tokio::io::duplex(4096);
        near.write_all(&first).await.expect("write");
        near.shutdown().await.expect("shutdown");
        let relayed = gw.serve_tunnel_stream(far, None, false).await;
        assert!(matches!(relayed, Ok(Some(_))), "{relayed:?}");
        // A probe is answered all the same: a full gateway is alive.
        probe_is_answered(&gw, "dc1").await;
    }
}
