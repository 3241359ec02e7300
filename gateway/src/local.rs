//! The gateway value and the last step towards this datacenter: [`LocalGateway`] holds what
//! every step of a connection's path reads (the live view, the settings, the balancer, the
//! counters, the tunnel when there is one), and relays a connection to a local instance:
//! connect (by `balance.rs`), replay the bytes read to find the name, then relay both ways until
//! both sides have closed (half-close honoured): on Linux by `splice.rs`, which copies until a
//! direction turns out to be a bulk transfer and then splices it (pipes for at most a quarter
//! of `max_connections` at once), elsewhere by the copy of `relay.rs`. TLS is never terminated.
//!
//! The steps before and beside this one are methods on the same value, each in its own file:
//! `serve.rs` accepts a TCP connection and reads its ClientHello, `remote.rs` carries one to
//! another datacenter through the tunnel, and `inbound.rs` serves streams other datacenters'
//! gateways tunnelled here. They depend on this file, never the reverse.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meridian_topology::View;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::balance::{Balancer, LoadGuard};
use crate::counters::GatewayCounters;
use crate::error::ConnError;
use crate::federation::FederationRoute;
use crate::meter::Metered;
use crate::route::{self, NameConfig, OwnAddrs, Target};
use crate::tunnel::Tunnel;
use meridian_topology::caps::KeyedCap;

/// Settings of the gateway's connection path; none of the limits is hard-coded.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Which names are routed.
    pub names: NameConfig,
    /// How long a client has to send its whole ClientHello (cuts slowloris clients).
    pub handshake_timeout: Duration,
    /// How long one connect to an instance may take before the next one is tried.
    pub connect_timeout: Duration,
    /// Route only to instances whose checks pass (leave `warning` ones out).
    pub only_passing: bool,
    /// A relayed connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once; more wait in the kernel's accept queue. Streams tunnelled
    /// here by other datacenters take from the same budget (each holds a backend socket).
    pub max_connections: usize,
    /// Most connections open at once from one client address; more are closed at once, so one
    /// client cannot take every slot of `max_connections`.
    pub max_connections_per_client: usize,
    /// Services other datacenters may reach through the tunnel (names or `prefix*`, as
    /// federation's export policy); `None`: every service.
    pub export: Option<Vec<String>>,
    /// The addresses that reach this gateway: `Gateway::start` sets them from its listener (and
    /// the host's addresses when it listens on all of them).
    pub own: OwnAddrs,
    /// Federation streams through this gateway (`federation.rs`); `None`: federation names
    /// are unknown names here.
    pub federation: Option<FederationRoute>,
}

/// The gateway over a live view: local passthrough, and the tunnel to other datacenters when
/// it has one.
#[derive(Debug)]
pub struct LocalGateway {
    /// The view connections are routed over, kept current by the caller.
    pub(crate) view: Arc<ArcSwap<View>>,
    pub(crate) config: LocalConfig,
    pub(crate) balancer: Balancer,
    pub(crate) counters: Arc<GatewayCounters>,
    pub(crate) tunnel: Option<Arc<Tunnel>>,
    /// The connection budget (`max_connections`): one permit per client connection, and per
    /// stream tunnelled here while it is relayed.
    pub(crate) slots: Arc<Semaphore>,
    /// Connections open per client address (`max_connections_per_client`).
    pub(crate) clients: KeyedCap<IpAddr>,
    /// Pipes held at once by local connections' directions moved on to splice: two per
    /// connection, for at most [`spliced_max`] connections' worth (each pipe is two descriptors
    /// beyond the sockets).
    #[cfg(target_os = "linux")]
    pub(crate) pipes: Semaphore,
}

/// Most local connections with both directions relayed by splice(2) at once, for a gateway of
/// `max_connections`: a quarter (HAProxy's default `maxpipes`), so the pipes' descriptors and
/// pipe pages stay a bounded share; past it, bulk directions are copied. Zero off Linux.
pub fn spliced_max(max_connections: usize) -> usize {
    if cfg!(target_os = "linux") {
        max_connections.max(1).div_ceil(4)
    } else {
        0
    }
}

/// File descriptors the splice pipes of a gateway of `max_connections` may hold at once, beyond
/// the two sockets of each connection: four per spliced connection (two pipes, two ends each).
pub fn pipe_descriptors(max_connections: usize) -> u64 {
    4 * spliced_max(max_connections) as u64
}

impl LocalGateway {
    /// A gateway routing over the view the caller keeps current.
    pub fn new(view: Arc<ArcSwap<View>>, config: LocalConfig) -> Self {
        LocalGateway {
            slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
            clients: KeyedCap::new(config.max_connections_per_client),
            #[cfg(target_os = "linux")]
            pipes: Semaphore::new(2 * spliced_max(config.max_connections)),
            view,
            config,
            balancer: Balancer::default(),
            counters: Arc::default(),
            tunnel: None,
        }
    }

    /// This gateway, sending names of other datacenters through `tunnel`, and serving the
    /// TCP fallback of the tunnel on its TCP port.
    pub fn with_tunnel(mut self, tunnel: Arc<Tunnel>) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// The gateway's counters (connections and bytes; the tunnel keeps its own).
    pub fn counters(&self) -> &Arc<GatewayCounters> {
        &self.counters
    }

    /// The tunnel, when names of other datacenters are sent through one.
    pub fn tunnel(&self) -> Option<&Arc<Tunnel>> {
        self.tunnel.as_ref()
    }

    /// Where the SNI goes in the current view (see [`route::target`]).
    pub(crate) fn target(&self, sni: &str, local_only: bool) -> Result<Target, ConnError> {
        let view = self.view.load();
        Ok(route::target(
            &view,
            sni,
            &self.config.names,
            &self.config.own,
            self.config.only_passing,
            local_only,
        )?)
    }

    /// Connects to one of the local `candidates` for `sni`.
    pub(crate) async fn connect_local(
        &self,
        sni: &str,
        candidates: Vec<SocketAddr>,
    ) -> Result<(TcpStream, LoadGuard), ConnError> {
        self.balancer
            .connect(sni, candidates, self.config.connect_timeout)
            .await
    }

    /// Connects to one of the local `candidates`, replays the ClientHello `hello` and relays
    /// `client` to it until both sides close.
    pub(crate) async fn relay_local(
        &self,
        client: &mut TcpStream,
        sni: &str,
        candidates: Vec<SocketAddr>,
        hello: &[u8],
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let (mut backend, _guard) = self.connect_local(sni, candidates).await?;
        // Not counted here: the ClientHello was counted up when it was read.
        backend.write_all(hello).await?;
        // Both sides are sockets and nothing of the client's is left in userspace (`hello` is
        // every byte read from it): a bulk direction can be left to the kernel.
        #[cfg(target_os = "linux")]
        {
            let c = &self.counters;
            let count = |bytes| crate::splice::Counted {
                bytes,
                spliced: &c.spliced,
            };
            let (up, down) = crate::splice::relay(
                client,
                &mut backend,
                self.config.idle_timeout,
                &self.pipes,
                count(&c.bytes_up),
                count(&c.bytes_down),
            )
            .await?;
            Ok(("local", up + hello.len() as u64, down))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let (up, down) = self.copy(client, &mut backend).await?;
            Ok(("local", up + hello.len() as u64, down))
        }
    }

    /// Copies `client` ↔ `server` until both directions end or the idle timeout; what is
    /// written each way is added to the byte counters as it goes.
    pub(crate) async fn copy<C, S>(&self, client: &mut C, server: &mut S) -> io::Result<(u64, u64)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut client = Metered::new(client, self.counters.down());
        let mut server = Metered::new(server, self.counters.up());
        crate::relay::copy_both(&mut client, &mut server, self.config.idle_timeout).await
    }
}
