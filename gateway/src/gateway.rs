//! A running gateway, as a node starts it: [`Gateway::start`] follows the published views into
//! the `ArcSwap` the data plane reads (a load per connection, no lock shared with the
//! publisher) and closes the tunnel to each DC a new view marks down, serves the TCP port, and
//! accepts the tunnel's inbound streams; the handle gives the bound address, the counters, the
//! tunnel, the metric families of all of them (one collector for the node's registry), and the
//! shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meridian_topology::View;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::counters::GatewayCounters;
use crate::local::{LocalConfig, LocalGateway};
use crate::route::OwnAddrs;
use crate::tunnel::Tunnel;

/// A gateway serving its port (and its tunnel, when it has one) until [`Gateway::shutdown`].
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    gateway: Arc<LocalGateway>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Serves `listener` over the views `views` publishes, with `config`, and sends names of
    /// other datacenters through `tunnel` (whose inbound streams it serves too). Spawns its
    /// tasks on the current Tokio runtime.
    pub fn start(
        listener: TcpListener,
        mut views: watch::Receiver<Arc<View>>,
        mut config: LocalConfig,
        tunnel: Option<Arc<Tunnel>>,
    ) -> io::Result<Gateway> {
        let addr = listener.local_addr()?;
        config.own = OwnAddrs::new(addr, host_ips());
        let current = Arc::new(ArcSwap::new(views.borrow_and_update().clone()));
        // The data plane reads an ArcSwap: a load per connection, no lock shared with writers.
        let follow = {
            let current = Arc::clone(&current);
            let tunnel = tunnel.clone();
            tokio::spawn(async move {
                while views.changed().await.is_ok() {
                    let view = views.borrow_and_update().clone();
                    let old = current.swap(Arc::clone(&view));
                    // Only now that the data plane reads a view without them: a connection whose
                    // stream the cut ends, and that never got an answer, is sent again where
                    // its name resolves in this view, not back into the dead DC.
                    if let Some(tunnel) = &tunnel {
                        for (dc, _) in view.failover().newly_down(old.failover()) {
                            tunnel.disconnect(dc);
                        }
                    }
                }
            })
        };
        let mut gateway = LocalGateway::new(current, config);
        if let Some(tunnel) = &tunnel {
            gateway = gateway.with_tunnel(Arc::clone(tunnel));
        }
        let gateway = Arc::new(gateway);
        let mut tasks = vec![follow];
        if let Some(tunnel) = tunnel {
            tasks.push(tokio::spawn(Arc::clone(&gateway).accept_tunnelled(tunnel)));
        }
        let serve = Arc::clone(&gateway).serve(listener);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "gateway stopped");
            }
        }));
        Ok(Gateway {
            addr,
            gateway,
            tasks,
        })
    }

    /// The TCP address the gateway listens on (the tunnel's UDP port has the same number).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway's counters (connections and bytes).
    pub fn counters(&self) -> &Arc<GatewayCounters> {
        self.gateway.counters()
    }

    /// The tunnel, when the gateway has one.
    pub fn tunnel(&self) -> Option<&Arc<Tunnel>> {
        self.gateway.tunnel()
    }

    /// Everything the gateway counts, to register on the node's metrics registry.
    pub fn metrics(&self) -> GatewayMetrics {
        GatewayMetrics::new(
            Arc::clone(self.gateway.counters()),
            self.gateway.tunnel().cloned(),
        )
    }

    /// The gateway value the tasks serve with.
    pub fn local(&self) -> &Arc<LocalGateway> {
        &self.gateway
    }

    /// Stops accepting and closes the tunnel; local relays in flight end with their clients.
    pub fn shutdown(self) {
        if let Some(t) = self.gateway.tunnel() {
            t.close();
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The host's IP addresses (every interface's, loopback included), for a gateway listening on
/// all of them; empty if they cannot be listed (then only loopback counts as its own).
fn host_ips() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!(
            "cannot list the host's addresses: only loopback is known as the gateway's own"
        );
        return Vec::new();
    };
    let mut ips = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            std::net::IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            std::net::IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// The gateway's counters and its tunnel's, registered together on the node's registry (one
/// [`Collector`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    counters: Arc<GatewayCounters>,
    tunnel: Option<Arc<Tunnel>>,
}

impl GatewayMetrics {
    /// The metrics of a gateway with these counters, and this tunnel if it has one.
    pub fn new(counters: Arc<GatewayCounters>, tunnel: Option<Arc<Tunnel>>) -> Self {
        GatewayMetrics { counters, tunnel }
    }

    /// The gateway's counters.
    pub fn counters(&self) -> &Arc<GatewayCounters> {
        &self.counters
    }
}

/// Every gateway family: the connection counters, then the tunnel's (when there is one).
impl Collector for GatewayMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.counters.encode(&mut enc)?;
        if let Some(t) = &self.tunnel {
            t.encode(&mut enc)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use prometheus_client::registry::Registry;
    use rustls::RootCertStore;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use crate::fixtures::{
        NAME, cert, config, provider, tls_backend, tls_backend_for, tls_client, view,
        view_with_remote, web_state,
    };
    use crate::tunnel::{RetryPolicy, TunnelConfig, TunnelError, WanTransport};

    /// The `/metrics` text of a registry holding only `metrics`.
    fn exposition(metrics: &GatewayMetrics) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    async fn start(views: watch::Receiver<Arc<View>>, tunnel: Option<Arc<Tunnel>>) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Gateway::start(listener, views, config(Duration::from_secs(5)), tunnel).expect("start")
    }

    async fn client(addr: SocketAddr, name: &str, root: CertificateDer<'static>) -> Vec<u8> {
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || tls_client(addr, &name, root))
            .await
            .expect("join")
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_follows_the_views_and_shutdown_stops_accepting() {
        let (backend, root) = tls_backend();
        let (tx, rx) = watch::channel(Arc::new(view(&[])));
        let gw = start(rx, None).await;
        let addr = gw.local_addr();
        assert!(gw.tunnel().is_none());
        // No instance yet: refused.
        assert_eq!(client(addr, NAME, root.clone()).await, b"");
        // Counted when the connection's task ends, just after the client saw the close.
        for _ in 0..100 {
            if gw.counters().count("none", "no_healthy_instance") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(gw.counters().count("none", "no_healthy_instance"), 1);
        // Published views reach the data plane.
        tx.send_replace(Arc::new(view(&[backend.port()])));
        let mut relayed = Vec::new();
        for _ in 0..100 {
            relayed = client(addr, NAME, root.clone()).await;
            if !relayed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(relayed, b"pong:ping");
        for _ in 0..100 {
            if gw.counters().count("local", "relayed") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let metrics = gw.metrics();
        let text = exposition(&metrics);
        assert!(
            text.contains(
                "meridian_gateway_connections_total{route=\"local\",outcome=\"relayed\"} 1\n"
            ),
            "{text}"
        );
        assert!(!text.contains("tunnel"), "{text}");
        gw.shutdown();
        let mut stopped = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(stopped, "still accepting after shutdown");
        // The handle's metrics outlive it.
        assert!(metrics.counters().bytes_up.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn handles_can_be_shared_across_tasks() {
        // The node keeps the handle in its agent and the metrics in its HTTP state (axum).
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Gateway>();
        shared::<GatewayMetrics>();
    }

    #[test]
    fn counters_keep_their_sample_names() {
        let c = GatewayCounters::default();
        c.record("local", "relayed");
        c.record("local", "relayed");
        c.record("none", "not_tls");
        c.record("none", crate::serve::CLIENT_LIMIT);
        c.bytes_up.store(5, Ordering::Relaxed);
        c.bytes_down.store(7, Ordering::Relaxed);
        c.hello_failures.store(1, Ordering::Relaxed);
        c.rescues.store(2, Ordering::Relaxed);
        c.spliced.store(4, Ordering::Relaxed);
        c.open.store(3, Ordering::Relaxed);
        let text = exposition(&GatewayMetrics::new(Arc::new(c), None));
        // OpenMetrics: a counter family is named without `_total`, its samples with it (the
        // names Prometheus stores are the samples', unchanged since the hand-written text).
        let expected = "\
# HELP meridian_gateway_connections Gateway connections by route (local, remote, none) and outcome (relayed or why refused).
# TYPE meridian_gateway_connections counter
meridian_gateway_connections_total{route=\"local\",outcome=\"relayed\"} 2
meridian_gateway_connections_total{route=\"none\",outcome=\"client_limit\"} 1
meridian_gateway_connections_total{route=\"none\",outcome=\"not_tls\"} 1
# HELP meridian_gateway_bytes_up Bytes relayed from clients to backends.
# TYPE meridian_gateway_bytes_up counter
meridian_gateway_bytes_up_total 5
# HELP meridian_gateway_bytes_down Bytes relayed from backends to clients.
# TYPE meridian_gateway_bytes_down counter
meridian_gateway_bytes_down_total 7
# HELP meridian_gateway_hello_failures ClientHellos that could not be parsed (not TLS, malformed, too large, no SNI).
# TYPE meridian_gateway_hello_failures counter
meridian_gateway_hello_failures_total 1
# HELP meridian_gateway_rescued Connections to another DC that never answered, resolved and sent again.
# TYPE meridian_gateway_rescued counter
meridian_gateway_rescued_total 2
# HELP meridian_gateway_spliced Directions of local connections moved from the copy to splice(2) for a bulk transfer.
# TYPE meridian_gateway_spliced counter
meridian_gateway_spliced_total 4
# HELP meridian_gateway_connections_open Gateway connections open now.
# TYPE meridian_gateway_connections_open gauge
meridian_gateway_connections_open 3
# EOF
";
        assert_eq!(text, expected);
    }

    /// A tunnel on `addr`'s port (UDP), for gateways of `dc`, holding `cert` (every test
    /// gateway holds the same one, for `gw.dc1.test` and `gw.dc2.test`, and trusts it).
    fn tunnel(
        addr: SocketAddr,
        dc: &str,
        transport: WanTransport,
        gw_cert: &(CertificateDer<'static>, PrivateKeyDer<'static>),
    ) -> Arc<Tunnel> {
        tunnel_with(addr, dc, transport, gw_cert, RetryPolicy::Always, 8)
    }

    /// [`tunnel`] with its Retry policy and handshake slots.
    fn tunnel_with(
        addr: SocketAddr,
        dc: &str,
        transport: WanTransport,
        (cert, key): &(CertificateDer<'static>, PrivateKeyDer<'static>),
        retry: RetryPolicy,
        max_handshakes: usize,
    ) -> Arc<Tunnel> {
        let (cert, key) = (cert.clone(), key.clone_key());
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).expect("root");
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = TunnelConfig {
            server: Arc::new(server),
            client: Arc::new(client),
            server_name: Arc::new(|dc: &str| format!("gw.{dc}.test")),
            max_streams_per_dc: 16,
            max_streams_per_client: 4,
            max_connections_per_peer: 4,
            max_streams_per_peer: 16,
            max_handshakes,
            retry,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            local_dc: dc.to_owned(),
            transport,
        };
        Arc::new(Tunnel::bind(addr, config).expect("tunnel"))
    }

    /// dc2's gateway carries a client to dc1's backend through the tunnel; dc1's serves the
    /// stream (QUIC from the endpoint, or TCP fallback on its TCP port) and probes.
    async fn across_the_tunnel(transport: WanTransport) {
        let name = "web.service.dc1.consul";
        let (backend, root) = tls_backend_for(name);
        let gw_cert = cert(&["gw.dc1.test", "gw.dc2.test"]);
        let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a1 = l1.local_addr().expect("addr");
        let (_tx1, rx1) = watch::channel(Arc::new(view(&[backend.port()])));
        let t1 = tunnel(a1, "dc1", transport, &gw_cert);
        let dc1 = Gateway::start(l1, rx1, config(Duration::from_secs(5)), Some(t1)).expect("start");
        let l2 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a2 = l2.local_addr().expect("addr");
        let dc2_view = view_with_remote("dc2", "dc1", web_state(&[backend.port()]), a1.port());
        let (_tx2, rx2) = watch::channel(Arc::new(dc2_view));
        let t2 = tunnel(a2, "dc2", transport, &gw_cert);
        let dc2 = Gateway::start(l2, rx2, config(Duration::from_secs(5)), Some(t2)).expect("start");

        for _ in 0..3 {
            let got = client(a2, name, root.clone()).await;
            assert_eq!(
                got,
                b"pong:ping",
                "{:?} {:?}",
                dc2.counters(),
                dc1.counters()
            );
        }
        let t2 = dc2.tunnel().expect("tunnel");
        t2.probe("dc1", &[a1], Duration::from_secs(5), Duration::from_secs(5))
            .await
            .expect("probe answered");

        let (c1, c2) = (dc1.counters(), dc2.counters());
        // Outcomes are counted as each connection's task ends, on both sides. A probe is
        // labelled where it arrived: by the inbound QUIC handler, or by the TCP front door for
        // the fallback.
        let probes =
            || c1.count("tunnelled_in", "probe") + c1.count("tunnelled_in_probe", "relayed");
        for _ in 0..100 {
            if c1.count("tunnelled_in", "relayed") == 3
                && probes() == 1
                && c2.count("remote", "relayed") == 3
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c1.count("tunnelled_in", "relayed"), 3, "{c1:?}");
        assert_eq!(probes(), 1, "{c1:?}");
        assert_eq!(c2.count("remote", "relayed"), 3, "{c2:?}");
        // Bytes were counted on both sides, each way.
        for c in [c1, c2] {
            assert!(c.bytes_up.load(Ordering::Relaxed) > 0);
            assert!(c.bytes_down.load(Ordering::Relaxed) > 0);
        }
        let text = exposition(&dc2.metrics());
        assert!(
            text.contains(
                "meridian_gateway_connections_total{route=\"remote\",outcome=\"relayed\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE meridian_gateway_tunnel_connects counter\n"));
        assert!(
            text.contains("meridian_gateway_tunnel_streams_out_total 3\n"),
            "{text}"
        );
        if transport == WanTransport::Quic {
            assert!(
                text.contains("meridian_gateway_tunnel_connects_total 1\n"),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "meridian_gateway_tunnel_up{{dc=\"dc1\",gateway=\"{a1}\"}} 1\n"
                )),
                "{text}"
            );
        } else {
            assert!(
                text.contains("meridian_gateway_tunnel_connects_total 0\n"),
                "{text}"
            );
        }
        let text = exposition(&dc1.metrics());
        assert!(
            text.contains("meridian_gateway_tunnel_streams_in_total 4\n"),
            "{text}"
        );
        // dc2's one QUIC connection validated its address first (a Retry), and no cap refused it.
        let retries = if transport == WanTransport::Quic {
            1
        } else {
            0
        };
        assert!(
            text.contains(&format!(
                "meridian_gateway_tunnel_retries_total {retries}\n"
            )),
            "{text}"
        );
        for limit in ["handshakes", "peer_connections"] {
            assert!(
                text.contains(&format!(
                    "meridian_gateway_tunnel_limited_total{{limit=\"{limit}\"}} 0\n"
                )),
                "{text}"
            );
        }
        dc2.shutdown();
        dc1.shutdown();
    }

    type GwCert = (CertificateDer<'static>, PrivateKeyDer<'static>);

    /// A dc1 tunnel on loopback accepting (and dropping) streams: the shared certificate, the
    /// address to bind others on, the tunnel and its address.
    fn listening_dc1() -> (GwCert, SocketAddr, Arc<Tunnel>, SocketAddr) {
        let gw_cert = cert(&["gw.dc1.test", "gw.dc2.test"]);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let t1 = tunnel(any, "dc1", WanTransport::Quic, &gw_cert);
        let a1 = t1.local_addr().expect("addr");
        tokio::spawn(Arc::clone(&t1).accept(|_, _, _| async {}));
        (gw_cert, any, t1, a1)
    }

    /// A new dc2 tunnel that connects to dc1 at `a1` and sends a byte on a stream.
    async fn dc2_sending_one_byte(
        gw_cert: &GwCert,
        any: SocketAddr,
        a1: SocketAddr,
    ) -> Arc<Tunnel> {
        let t = tunnel(any, "dc2", WanTransport::Quic, gw_cert);
        if let Ok((mut stream, _)) = t.open("dc1", &[a1], None).await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, b"x").await;
        }
        t
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_holds_at_most_its_share_of_a_datacenters_streams() {
        let (gw_cert, any, t1, a1) = listening_dc1();
        let t2 = tunnel(any, "dc2", WanTransport::Quic, &gw_cert);
        let (a, b) = (
            Some(std::net::IpAddr::from([127, 0, 0, 2])),
            Some(std::net::IpAddr::from([127, 0, 0, 3])),
        );
        // The helper's share is 4 of a budget of 16.
        let mut held = Vec::new();
        for _ in 0..4 {
            match t2.open("dc1", &[a1], a).await {
                Ok(open) => held.push(open),
                Err(e) => panic!("within the share: {e}"),
            }
        }
        match t2.open("dc1", &[a1], a).await {
            Err(TunnelError::ClientShare { client, .. }) => assert_eq!(Some(client), a),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a fifth stream beyond the share"),
        }
        // Another client is carried meanwhile, and a closed stream gives its place back.
        assert!(t2.open("dc1", &[a1], b).await.is_ok(), "another client");
        held.pop();
        assert!(t2.open("dc1", &[a1], a).await.is_ok(), "a place given back");
        t2.close();
        t1.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_holds_at_most_its_share_of_quic_connections() {
        let (gw_cert, any, t1, a1) = listening_dc1();
        let s = &t1.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        // Five gateways of dc2, one QUIC connection each, each sending a byte on a stream. The
        // helper's server asks no client certificate, so all five are one peer (127.0.0.1),
        // whose cap is 4.
        let mut peers = Vec::new();
        for _ in 0..5 {
            peers.push(dc2_sending_one_byte(&gw_cert, any, a1).await);
        }
        for _ in 0..200 {
            if load(&s.over_peer_connections) == 1 && load(&s.streams_in) == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(load(&s.over_peer_connections), 1, "the fifth is closed");
        assert_eq!(load(&s.streams_in), 4, "the first four are served");
        // Each validated its address first; no handshake was refused.
        assert_eq!(load(&s.retries), 5);
        assert_eq!(load(&s.over_handshakes), 0);
        // One gone, another gets in.
        peers.remove(0).close();
        let mut admitted = false;
        for _ in 0..50 {
            let t = dc2_sending_one_byte(&gw_cert, any, a1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if load(&s.streams_in) == 5 {
                admitted = true;
                peers.push(t);
                break;
            }
            t.close();
        }
        assert!(admitted, "a place given back: {:?}", s);
        t1.close();
    }

    /// With `under-load`, a quiet gateway starts every handshake at once (no Retry round trip);
    /// once half of its handshake slots are taken, a new client is sent a Retry first, and
    /// still gets in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_is_sent_only_once_handshakes_pile_up() {
        let gw_cert = cert(&["gw.dc1.test", "gw.dc2.test"]);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let t1 = tunnel_with(
            any,
            "dc1",
            WanTransport::Quic,
            &gw_cert,
            RetryPolicy::UnderLoad,
            2,
        );
        let a1 = t1.local_addr().expect("addr");
        tokio::spawn(Arc::clone(&t1).accept(|_, _, _| async {}));
        let s = &t1.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let served = |n: u64| async move {
            for _ in 0..200 {
                if load(&s.streams_in) == n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };
        let quiet = dc2_sending_one_byte(&gw_cert, any, a1).await;
        assert!(served(1).await, "the first client is served");
        assert_eq!(load(&s.retries), 0, "a quiet gateway sends no Retry");
        // A client whose answers are lost (a relay that forwards its packets to dc1 and drops
        // dc1's) holds one of the two handshake slots until the handshake times out.
        let relay = tokio::net::UdpSocket::bind(any).await.expect("relay");
        let relay_addr = relay.local_addr().expect("relay addr");
        let relaying = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                if from != a1 {
                    let _ = relay.send_to(&buf[..n], a1).await;
                }
            }
        });
        let stalled = tunnel(any, "dc2", WanTransport::Quic, &gw_cert);
        let stalling = {
            let stalled = Arc::clone(&stalled);
            tokio::spawn(async move { stalled.open("dc1", &[relay_addr], None).await.is_ok() })
        };
        let mut held = false;
        for _ in 0..200 {
            if t1.handshakes_in_progress() == 1 {
                held = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(held, "the stalled client holds a handshake slot");
        let loaded = dc2_sending_one_byte(&gw_cert, any, a1).await;
        assert!(served(2).await, "a client is served under load: {s:?}");
        assert_eq!(load(&s.retries), 1, "after a Retry");
        assert_eq!(load(&s.over_handshakes), 0);
        assert!(
            !stalling.await.expect("join"),
            "no answer reached the stalled client"
        );
        relaying.abort();
        for t in [quiet, loaded, stalled, t1] {
            t.close();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_reaches_another_datacenter_over_quic() {
        across_the_tunnel(WanTransport::Quic).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_reaches_another_datacenter_over_the_tcp_fallback() {
        across_the_tunnel(WanTransport::Tcp).await;
    }
}
