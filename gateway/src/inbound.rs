//! Streams other datacenters' gateways tunnelled here, both transports: QUIC streams from the
//! tunnel's endpoint, and the TCP fallback (a TLS connection to the gateway's TCP port whose SNI
//! is this gateway's own server name, handed over by `serve.rs`).
//!
//! Each stream opens with a header ([`crate::header`]): a header without a name is a liveness
//! probe, answered with [`PROBE_ANSWER`](crate::header::PROBE_ANSWER); any other is checked (it
//! must name this datacenter, and a service this datacenter exports) and relayed to one of this
//! datacenter's instances, never further, so routes cannot loop.

use std::sync::Arc;

use meridian_topology::names::pattern_matches;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span};

use crate::error::ConnError;
use crate::header::{self, Header};
use crate::local::LocalGateway;
use crate::route::{Target, route};
use crate::tunnel::Tunnel;

impl LocalGateway {
    /// Accepts QUIC connections from remote gateways on `tunnel` until its endpoint closes, and
    /// serves each stream on them ([`Self::serve_tunnelled`]).
    pub async fn accept_tunnelled(self: Arc<Self>, tunnel: Arc<Tunnel>) {
        tunnel
            .accept(move |send, recv| {
                let gw = Arc::clone(&self);
                async move { gw.serve_tunnelled(send, recv).await }
            })
            .await;
    }

    /// Serves one QUIC stream a remote gateway tunnelled here.
    pub async fn serve_tunnelled(&self, send: quinn::SendStream, recv: quinn::RecvStream) {
        let span = info_span!("tunnelled", sni = tracing::field::Empty);
        let result = self
            .serve_tunnel_stream(tokio::io::join(recv, send))
            .instrument(span)
            .await;
        match result {
            Ok(Some((up, down))) => {
                self.counters.record("tunnelled_in", "relayed");
                debug!(up, down, "tunnelled stream closed");
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
    /// bytes copied.
    pub(crate) async fn serve_tcp_tunnel(
        &self,
        tunnel: &Tunnel,
        hello: Vec<u8>,
        client: &mut TcpStream,
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let tls = tokio::time::timeout(
            self.config.handshake_timeout,
            tunnel.accept_tcp(hello, &mut *client),
        )
        .await
        .map_err(|_| ConnError::HandshakeTimeout)?
        .map_err(|e| ConnError::BadHeader(format!("tunnel TLS: {e}")))?;
        Ok(match self.serve_tunnel_stream(tls).await? {
            Some((up, down)) => ("tunnelled_in", up, down),
            None => ("tunnelled_in_probe", 0, 0),
        })
    }

    /// Reads a tunnelled connection's header, then relays it to an instance of this datacenter,
    /// never further.
    /// A header without a name is a liveness probe: answered with one byte, `Ok(None)`.
    pub(crate) async fn serve_tunnel_stream<S>(
        &self,
        mut stream: S,
    ) -> Result<Option<(u64, u64)>, ConnError>
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
        if let Some(export) = &self.config.export {
            let service = route(&header.name, &self.config.names)?.service;
            if !export.iter().any(|p| pattern_matches(p, service)) {
                return Err(ConnError::NotExported(service.to_owned()));
            }
        }
        let Target::Local(candidates) = self.target(&header.name, true)? else {
            return Err(ConnError::WrongDc(header.dc));
        };
        let (mut backend, _guard) = self.connect_local(&header.name, candidates).await?;
        Ok(Some(self.copy(&mut stream, &mut backend).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use crate::fixtures::{NAME, config, hello_for, tls_backend, view};

    #[tokio::test]
    async fn tunnelled_streams_reach_only_exported_services() {
        let (backend, _) = tls_backend();
        let gw = |export: Option<Vec<String>>| {
            let mut c = config(Duration::from_secs(5));
            c.export = export;
            LocalGateway::new(Arc::new(ArcSwap::from_pointee(view(&[backend.port()]))), c)
        };
        let header = Header {
            name: NAME.into(),
            dc: "dc1".into(),
        }
        .encode()
        .expect("header");
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
            .serve_tunnel_stream(stream(&header))
            .await
            .expect_err("web is not exported");
        assert_eq!(err.reason(), "not_exported");
        let mut first = header.clone();
        first.extend_from_slice(&hello_for(NAME));
        let open = gw(Some(vec!["web".into()]));
        let relayed = open
            .serve_tunnel_stream(stream(&first))
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
        let (mut near, far) = tokio::io::duplex(64);
        let probe = Header::probe("DC1").encode().expect("header");
        let answered = tokio::spawn(async move {
            header::send_probe(&mut near, &probe)
                .await
                .map_err(|e| e.to_string())
        });
        assert!(gw.serve_tunnel_stream(far).await.expect("probe").is_none());
        answered.await.expect("join").expect("answered");

        let (mut near, far) = tokio::io::duplex(64);
        let other = Header::probe("dc3").encode().expect("header");
        near.write_all(&other).await.expect("write");
        let err = gw.serve_tunnel_stream(far).await.expect_err("wrong dc");
        assert_eq!(err.reason(), "wrong_dc");

        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(&[7, 0, 0]).await.expect("write");
        let err = gw.serve_tunnel_stream(far).await.expect_err("bad header");
        assert_eq!(err.reason(), "bad_tunnel_header");
    }
}
