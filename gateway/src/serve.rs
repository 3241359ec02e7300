//! The TCP front door: accept a connection (at most `max_connections` at once), read its
//! ClientHello within a byte bound and a timeout, and hand it to the step its SNI routes to:
//! this datacenter's instances (`local.rs`), another datacenter through the tunnel
//! (`remote.rs`), another datacenter's federation servers (`federation.rs`, carried by
//! `remote.rs`), or, when the SNI is this gateway's own tunnel name, the TCP fallback of the
//! tunnel (`inbound.rs`). A connection refused here gets a TLS alert where the client spoke TLS,
//! then a clean close; each one's outcome is counted once, when it ends.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span, warn};

use crate::client_hello::{self, MAX_HELLO};
use crate::error::ConnError;
use crate::local::LocalGateway;
use crate::route::Target;
use meridian_topology::caps::ClientSlot;

/// The outcome label of a connection closed at accept because its client address already had
/// `max_connections_per_client` open.
pub(crate) const CLIENT_LIMIT: &str = "client_limit";

impl LocalGateway {
    /// Accepts connections until the listener's task is dropped, one task each, at most
    /// `max_connections` at once and `max_connections_per_client` from one client address.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        loop {
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                return Ok(());
            };
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                // Per-connection errors (ECONNABORTED, EMFILE) must not end the listener.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // One brief lock: without it one client address could hold every slot (idle, or
            // between ClientHello and the idle timeout) and the gateway would serve no one else.
            let Some(client_slot) = self.clients.try_acquire(peer.ip()) else {
                // Dropped: closed at once, before any byte is read; the global slot goes back
                // with it. Not logged one by one: a flood would flood the log too.
                drop(client);
                self.counters.record("none", CLIENT_LIMIT);
                continue;
            };
            // Without it, the backend's small TLS records wait for the client's delayed ACK
            // (Nagle), up to 40 ms each on Linux, or a whole round trip across a WAN hop.
            if let Err(e) = client.set_nodelay(true) {
                debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let gw = Arc::clone(&self);
            let span = info_span!("conn", %peer, sni = tracing::field::Empty);
            tokio::spawn(
                async move {
                    let _slot = slot;
                    gw.counters.open.fetch_add(1, Ordering::Relaxed);
                    match gw.handle_admitted(client, Some(client_slot)).await {
                        Ok((route, up, down)) => {
                            gw.counters.record(route, "relayed");
                            debug!(route, up, down, "closed");
                        }
                        Err(e) => {
                            if matches!(e, ConnError::Hello(_)) {
                                gw.counters.hello_failures.fetch_add(1, Ordering::Relaxed);
                            }
                            gw.counters.record(e.route(), e.reason());
                            debug!(reason = e.reason(), error = %e, "refused");
                        }
                    }
                    gw.counters.open.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(span),
            );
        }
    }

    /// Relays one client connection; returns the route (`local` or `remote`) and the bytes
    /// copied (client to instance, and back, the ClientHello included).
    pub async fn handle(&self, client: TcpStream) -> Result<(&'static str, u64, u64), ConnError> {
        self.handle_admitted(client, None).await
    }

    /// [`Self::handle`], for a connection holding `client_slot`, its place in its client
    /// address's share (given back early if it turns out to be a remote gateway's tunnel, which
    /// its peer's own cap then covers).
    async fn handle_admitted(
        &self,
        mut client: TcpStream,
        mut client_slot: Option<ClientSlot>,
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let result = self.dispatch(&mut client, &mut client_slot).await;
        if let Err(e) = &result
            && let Some(alert) = e.alert()
        {
            // Best effort: the client may be gone already.
            let _ = client.write_all(&[21, 3, 3, 0, 2, 2, alert]).await;
            let _ = client.shutdown().await;
        }
        result
    }

    /// Reads the ClientHello and hands the connection to the step its SNI routes to.
    async fn dispatch(
        &self,
        client: &mut TcpStream,
        client_slot: &mut Option<ClientSlot>,
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let (buf, sni) = tokio::time::timeout(self.config.handshake_timeout, read_hello(client))
            .await
            .map_err(|_| ConnError::HandshakeTimeout)??;
        tracing::Span::current().record("sni", sni.as_str());
        self.counters
            .bytes_up
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        // A remote gateway's TCP-fallback tunnel names this gateway's own server name.
        if let Some(tunnel) = &self.tunnel
            && sni.eq_ignore_ascii_case(tunnel.own_name())
        {
            return self
                .serve_tcp_tunnel(tunnel, buf, client, client_slot)
                .await;
        }
        // A follower of this DC asking for another DC's federation servers.
        if let Some(route) = &self.config.federation
            && let Some(dc) = route.dc_of(&sni)
        {
            let dc = dc.to_ascii_lowercase();
            let view = self.view.load();
            if dc == view.datacenter().to_ascii_lowercase() {
                // This DC's own servers are on the LAN: a follower here needs no gateway.
                return Err(ConnError::WrongDc(dc));
            }
            let from_view = view
                .remote(&dc)
                .map_or_else(Vec::new, |r| r.state.gateway_addrs());
            let gateways = route.gateways(&dc, from_view);
            drop(view);
            return self
                .relay_remote(client, sni, dc, gateways, &buf, false)
                .await
                .map(|(_, up, down)| ("federation", up, down));
        }
        match self.target(&sni, false)? {
            Target::Local(candidates) => self.relay_local(client, &sni, candidates, &buf).await,
            Target::Remote { dc, gateways } => {
                self.relay_remote(client, sni, dc, gateways, &buf, true)
                    .await
            }
        }
    }
}

/// Reads until the buffer holds a whole ClientHello, never more than [`MAX_HELLO`] bytes.
async fn read_hello(client: &mut TcpStream) -> Result<(Vec<u8>, String), ConnError> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        if let Some(hello) = client_hello::parse(&buf)? {
            return Ok((buf, hello.sni));
        }
        // `parse` answers TooLarge once the bound is reached, so there is always room here.
        let have = buf.len();
        buf.resize(MAX_HELLO.min(have + 4096), 0);
        let n = client.read(&mut buf[have..]).await?;
        buf.truncate(have + n);
        if n == 0 {
            return Err(ConnError::ClientClosed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use arc_swap::ArcSwap;
    use meridian_topology::View;

    use crate::fixtures::{NAME, config, hello_for, refused_port, tls_backend, tls_client, view};

    async fn start(view: View, handshake_timeout: Duration) -> (SocketAddr, Arc<LocalGateway>) {
        let gw = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view)),
            config(handshake_timeout),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(Arc::clone(&gw).serve(listener));
        (addr, gw)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passthrough_verifies_the_backend_certificate_end_to_end() {
        let (backend, cert) = tls_backend();
        // A dead instance next to the live one: refused connects move on to the next candidate.
        let (gw, _) = start(
            view(&[refused_port(), backend.port()]),
            Duration::from_secs(5),
        )
        .await;
        for _ in 0..8 {
            let cert = cert.clone();
            let out = tokio::task::spawn_blocking(move || tls_client(gw, NAME, cert))
                .await
                .expect("join")
                .expect("TLS through the gateway");
            assert_eq!(out, b"pong:ping");
        }
        // The same backend under a name it holds no certificate for: the gateway routes it
        // (a tag-less alias), but the client's check fails, because nothing in between
        // terminated TLS.
        let err =
            tokio::task::spawn_blocking(move || tls_client(gw, "web.service.dc1.consul", cert))
                .await
                .expect("join")
                .expect_err("certificate is for another name");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    /// A connected pair: the client side and the gateway's handling of the server side.
    async fn pair(
        gw: Arc<LocalGateway>,
    ) -> (
        TcpStream,
        tokio::task::JoinHandle<Result<(u64, u64), ConnError>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (
            client,
            tokio::spawn(async move { gw.handle(server).await.map(|(_, up, down)| (up, down)) }),
        )
    }

    async fn refused(gw: &Arc<LocalGateway>, send: &[u8]) -> (String, Vec<u8>) {
        let (mut client, task) = pair(Arc::clone(gw)).await;
        client.write_all(send).await.expect("write");
        let err = task.await.expect("join").expect_err("refused");
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        (err.reason().to_owned(), got)
    }

    #[tokio::test]
    async fn refusals_close_cleanly_with_an_alert_where_tls() {
        let (backend, _) = tls_backend();
        let gw = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[backend.port()]))),
            config(Duration::from_secs(5)),
        ));
        let unrecognized_name = vec![21, 3, 3, 0, 2, 2, 112];
        let internal_error = vec![21, 3, 3, 0, 2, 2, 80];
        assert_eq!(
            refused(&gw, b"GET / HTTP/1.1\r\n\r\n").await,
            ("not_tls".to_owned(), vec![])
        );
        assert_eq!(
            refused(&gw, &hello_for("example.com")).await,
            ("not_ours".to_owned(), unrecognized_name.clone())
        );
        assert_eq!(
            refused(&gw, &hello_for("n1.node.consul")).await,
            ("not_a_service".to_owned(), unrecognized_name.clone())
        );
        assert_eq!(
            refused(&gw, &hello_for("127.0.0.1")).await,
            ("no_sni".to_owned(), unrecognized_name)
        );
        assert_eq!(
            refused(&gw, &hello_for("api.service.consul")).await,
            ("no_healthy_instance".to_owned(), internal_error.clone())
        );
        let dead = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[
                refused_port(),
                refused_port(),
            ]))),
            config(Duration::from_secs(5)),
        ));
        assert_eq!(
            refused(&dead, &hello_for(NAME)).await,
            ("connect_failed".to_owned(), internal_error)
        );
        let (mut client, task) = pair(Arc::clone(&dead)).await;
        client.write_all(&[22, 3]).await.expect("write");
        drop(client);
        let err = task.await.expect("join").expect_err("refused");
        assert_eq!(err.reason(), "client_closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_lets_the_backend_answer_after_the_client_is_done() {
        // A backend that reads until the client's EOF, then answers with what it got: it only
        // works if the gateway passes the client's FIN on and keeps the other direction open.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            sock.read_to_end(&mut got).await.expect("read");
            let answer = format!("got {} bytes", got.len());
            sock.write_all(answer.as_bytes()).await.expect("write");
        });
        let (gw, _) = start(view(&[backend.port()]), Duration::from_secs(5)).await;
        let mut sent = hello_for(NAME);
        sent.extend_from_slice(&[23; 100_000]);
        let mut client = TcpStream::connect(gw).await.expect("connect");
        client.write_all(&sent).await.expect("write");
        client.shutdown().await.expect("half-close");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert_eq!(answer, format!("got {} bytes", sent.len()));
    }

    #[tokio::test]
    async fn slowloris_is_cut_at_the_handshake_timeout() {
        let gw = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[]))),
            config(Duration::from_millis(300)),
        ));
        let hello = hello_for(NAME);
        let (mut client, task) = pair(gw).await;
        #[allow(clippy::disallowed_methods)] // The test measures real time.
        let started = std::time::Instant::now();
        // One byte every 50 ms: the whole hello would take many seconds.
        let writer = tokio::spawn(async move {
            for b in hello {
                if client.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let err = task.await.expect("join").expect_err("cut");
        assert_eq!(err.reason(), "handshake_timeout");
        assert!(started.elapsed() < Duration::from_secs(2));
        writer.abort();
    }

    /// A TCP connection to `gw` from the loopback address `from`.
    async fn connect_from(from: [u8; 4], gw: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((from, 0)))
            .expect("bind the source address");
        socket.connect(gw).await.expect("connect")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_client_address_at_its_cap_does_not_stop_another() {
        let (backend, cert) = tls_backend();
        let mut c = config(Duration::from_secs(30));
        c.max_connections_per_client = 3;
        let gw = Arc::new(LocalGateway::new(
            Arc::new(ArcSwap::from_pointee(view(&[backend.port()]))),
            c,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(Arc::clone(&gw).serve(listener));
        // 127.0.0.2 holds its three, idle (the handshake timeout is far off).
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(connect_from([127, 0, 0, 2], addr).await);
        }
        // Its fourth is closed at once, before a byte is read, and counted.
        let mut fourth = connect_from([127, 0, 0, 2], addr).await;
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
            .await
            .expect("closed at once, not at the handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(gw.counters().count("none", CLIENT_LIMIT), 1);
        // Another address is relayed meanwhile.
        let out = tokio::task::spawn_blocking(move || tls_client(addr, NAME, cert))
            .await
            .expect("join")
            .expect("relayed beside a client at its cap");
        assert_eq!(out, b"pong:ping");
        // Closing one gives its place back.
        drop(idle.pop());
        let ip = std::net::IpAddr::from([127, 0, 0, 2]);
        for _ in 0..100 {
            if gw.clients.held(&ip) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(gw.clients.held(&ip), 2);
        let _again = connect_from([127, 0, 0, 2], addr).await;
        for _ in 0..100 {
            if gw.clients.held(&ip) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(gw.clients.held(&ip), 3, "admitted again");
        assert_eq!(gw.counters().count("none", CLIENT_LIMIT), 1);
    }
}
