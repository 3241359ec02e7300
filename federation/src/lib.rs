//! WAN federation: each datacenter streams its exported catalog to every other datacenter over
//! mTLS gRPC, and every node keeps a persisted, read-only replica of each remote datacenter.
//!
//! [`Federation::start`] takes the local catalog's views and returns views that also hold the
//! remote replicas; DNS and the HTTP API read those, so no query ever crosses the WAN.

pub mod client;
pub mod counters;
pub mod entry;
mod error;
pub mod export;
pub mod limits;
pub mod peers;
pub mod relay;
pub mod replica;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imbl::OrdMap;
use meridian_topology::RemoteDc;
use meridian_topology::View;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

pub use counters::FederationCounters;
pub use error::FederationError;
pub use export::ExportPolicy;
pub use limits::Limits;
use meridian_identity::TlsMaterial;
pub use peers::Peer;

/// How often the origin pings an HTTP/2 connection, and how long it waits for the answer.
const SERVER_PING_INTERVAL: Duration = Duration::from_secs(30);
const SERVER_PING_TIMEOUT: Duration = Duration::from_secs(120);

/// Milliseconds since the Unix epoch (0 if the clock is before it).
#[allow(clippy::disallowed_methods)] // The one reader of the wall clock below the node.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Resolves once `stop` turns true (or its sender is gone). The guard `wait_for` returns is
/// dropped here, so callers' futures stay `Send`.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Reads datacenter `dc`'s replica from `store` off the runtime's workers (it iterates RocksDB
/// and hashes every entry), capped by `limits`; returns it with the number of entries that no
/// longer decoded.
async fn load_replica(
    dc: &str,
    store: &Arc<store::Store>,
    limits: &Limits,
) -> Result<(replica::Replica, usize), FederationError> {
    let (dc, store) = (dc.to_owned(), store.clone());
    let (mut r, corrupt) = tokio::task::spawn_blocking(move || replica::Replica::load(&dc, &store))
        .await
        .map_err(|e| FederationError::Store(e.to_string()))??;
    r.set_limits(limits.max_replica_entries, limits.max_staging_bytes);
    Ok((r, corrupt))
}

/// How a node federates.
#[derive(Clone)]
pub struct Settings {
    /// This node's datacenter.
    pub dc: String,
    /// This node's name.
    pub node: String,
    /// Address of the WAN gRPC port.
    pub bind: SocketAddr,
    /// Serve the WAN port (export this DC). Off for a gateway-only node, which has no catalog
    /// and only follows (its own DC's servers among them).
    pub serve: bool,
    /// The remote datacenters to follow.
    pub peers: Vec<Peer>,
    /// WAN addresses of nodes of datacenters to learn (their DC comes from their certificate).
    pub join: Vec<String>,
    /// The host other datacenters reach this node's WAN port at.
    pub advertise_host: String,
    /// `host:port` addresses told to other datacenters instead of `advertise_host` and the
    /// bound port (NAT, load balancers).
    pub advertise: Vec<String>,
    /// What this datacenter exports.
    pub policy: ExportPolicy,
    /// This node's certificates.
    pub tls: Arc<TlsMaterial>,
    /// Where replicas are persisted.
    pub data_dir: PathBuf,
    /// Idle time after which an origin sends a heartbeat.
    pub heartbeat: Duration,
    /// A stream with no message for this long is dead (a few heartbeats).
    pub idle_timeout: Duration,
    /// Connect plus TLS handshake, as a client.
    pub connect_timeout: Duration,
    /// TLS handshake, as a server.
    pub handshake_timeout: Duration,
    /// Changed entries remembered for resumes; a subscriber further behind gets a digest
    /// catch-up.
    pub window: usize,
    /// Caps on what one peer can make this node hold.
    pub limits: Limits,
    /// How this node reaches other datacenters' servers.
    pub transport: Transport,
    /// A gateway-only node: its gateway, announced to the server of its own DC it follows.
    pub announce: Option<AnnouncedGateway>,
    /// A server: what it does with a gateway-only node of its DC announcing its gateway
    /// (registers it in the catalog).
    pub on_gateway: Option<GatewayHook>,
}

/// A gateway-only node's gateway, announced on its subscription to a server of its own DC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncedGateway {
    /// The node (from its certificate, on the server's side).
    pub node: String,
    /// Where other DCs reach the gateway (its WAN address).
    pub address: SocketAddr,
    /// Where its DC's servers check it.
    pub check: SocketAddr,
    /// Its HTTP port, if it serves one.
    pub http: Option<SocketAddr>,
}

/// Called by a server for each gateway announcement of a gateway-only node of its DC (once per
/// subscription).
pub type GatewayHook = Arc<dyn Fn(AnnouncedGateway) + Send + Sync>;

/// How a node's subscriptions reach other datacenters' servers.
#[derive(Clone, Debug, Default)]
pub enum Transport {
    /// Straight to their WAN ports: every server of every DC is reachable from the others.
    #[default]
    Direct,
    /// Through a gateway of this DC (TLS to its port, with the remote DC's federation name as
    /// SNI), which carries the stream over the tunnel to a gateway of the remote DC, which hands
    /// it to one of its servers: only the gateways face the WAN. The list is this DC's gateways,
    /// the node's own first, kept current by the node. A gateway-only node follows its own
    /// DC's servers directly all the same (they are on its LAN).
    Gateway(Arc<arc_swap::ArcSwap<Vec<SocketAddr>>>),
}

impl Settings {
    /// The address outgoing WAN connections leave from: the bind address unless it is a
    /// wildcard.
    pub fn source(&self) -> Option<std::net::IpAddr> {
        let ip = self.bind.ip();
        (!ip.is_unspecified()).then_some(ip)
    }
}

/// A running federation endpoint and its subscribers.
pub struct Federation {
    views: watch::Receiver<Arc<View>>,
    counters: Arc<FederationCounters>,
    exporter: Arc<export::Exporter>,
    registry: Arc<peers::Registry>,
    local_addr: Option<SocketAddr>,
    transport: Transport,
    /// This node's listeners the relay reaches, set once they are bound.
    relay_targets: Arc<arc_swap::ArcSwap<relay::RelayTargets>>,
    /// What the relay's client needs: certificates, timeout, source address.
    tls: Arc<TlsMaterial>,
    connect_timeout: Duration,
    source: Option<std::net::IpAddr>,
    stop: watch::Sender<bool>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Federation {
    /// Binds the WAN port, loads the persisted replicas, and starts serving and following.
    /// `local` is the local catalog's views.
    pub async fn start(
        settings: Settings,
        mut local: watch::Receiver<Arc<View>>,
    ) -> Result<Federation, FederationError> {
        let bind_error = |source| FederationError::Bind {
            addr: settings.bind,
            source,
        };
        let listener = if settings.serve {
            Some(TcpListener::bind(settings.bind).await.map_err(bind_error)?)
        } else {
            None
        };
        let local_addr = listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(bind_error)?;
        let counters = Arc::new(FederationCounters::default());
        let store_dir = settings.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || store::Store::open(&store_dir))
            .await
            .map_err(|e| FederationError::Store(e.to_string()))??;
        let store = Arc::new(store);

        // Replicas from disk first, so that the first view already answers for remote DCs.
        let mut replicas = Vec::new();
        let mut remotes = OrdMap::new();
        for peer in &settings.peers {
            let (replica, corrupt) = load_replica(&peer.dc, &store, &settings.limits).await?;
            if corrupt > 0 {
                tracing::warn!(dc = %peer.dc, corrupt, "persisted replica entries did not decode; they will be resynced");
                counters
                    .corrupt_entries
                    .fetch_add(corrupt as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if !replica.is_empty() {
                tracing::info!(dc = %peer.dc, entries = replica.len(), index = replica.snapshot().index, "loaded persisted replica");
            }
            remotes.insert(
                Arc::<str>::from(peer.dc.to_ascii_lowercase()),
                Arc::new(replica.snapshot()),
            );
            replicas.push((peer.clone(), replica));
        }
        let remotes_tx: watch::Sender<OrdMap<Arc<str>, Arc<RemoteDc>>> =
            watch::Sender::new(remotes.clone());
        let first = Arc::new(View::clone(&local.borrow_and_update()).with_remotes(remotes));
        let (views_tx, views) = watch::channel(first);
        let (stop, stop_rx) = watch::channel(false);
        let exporter = Arc::new(export::Exporter::new(
            settings.policy.clone(),
            settings.window,
            local.borrow().local(),
        ));
        let mut tasks = Vec::new();

        // Local changes feed the exporter; local and remote changes feed the composed view.
        {
            let exporter = exporter.clone();
            let mut remotes_rx = remotes_tx.subscribe();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = local.changed() => {
                            if r.is_err() { return }
                            let v = local.borrow_and_update().clone();
                            exporter.update(v.local());
                        }
                        r = remotes_rx.changed() => if r.is_err() { return },
                        () = crate::stopped(&mut stop) => return,
                    }
                    let composed = View::clone(&local.borrow())
                        .with_remotes(remotes_rx.borrow_and_update().clone());
                    views_tx.send_replace(Arc::new(composed));
                }
            }));
        }

        // One follower per remote DC: the configured ones now, learned ones as they come.
        let client_tls = settings.tls.client_config()?;
        let (learned_tx, mut learned_rx) = mpsc::unbounded_channel::<Peer>();
        let registry = Arc::new(peers::Registry::new(
            &settings.dc,
            match local_addr {
                // Nothing to follow back on a node that does not serve.
                None => Vec::new(),
                Some(_) if !settings.advertise.is_empty() => settings.advertise.clone(),
                Some(a) => vec![meridian_topology::names::join_host_port(
                    &settings.advertise_host,
                    a.port(),
                )],
            },
            settings.limits.clone(),
            counters.clone(),
            Box::new(move |p| {
                let _ = learned_tx.send(p);
            }),
        ));
        let tasks = Arc::new(std::sync::Mutex::new(tasks));
        let follower = {
            let (settings, store, registry, remotes_tx, counters, stop_rx, tasks) = (
                settings.clone(),
                store.clone(),
                registry.clone(),
                remotes_tx.clone(),
                counters.clone(),
                stop_rx.clone(),
                tasks.clone(),
            );
            move |peer: Peer, replica: replica::Replica, announce: bool| {
                let peer_is_local = peer.dc.eq_ignore_ascii_case(&settings.dc);
                let f = client::Follower {
                    peer,
                    local_dc: settings.dc.clone(),
                    local_node: settings.node.clone(),
                    tls: client_tls.clone(),
                    registry: registry.clone(),
                    store: store.clone(),
                    remotes: remotes_tx.clone(),
                    counters: counters.clone(),
                    connect_timeout: settings.connect_timeout,
                    source: settings.source(),
                    idle_timeout: settings.idle_timeout,
                    stop: stop_rx.clone(),
                    announce,
                    gateway: settings.announce.clone().filter(|_| peer_is_local),
                    via: match &settings.transport {
                        Transport::Gateway(gws) if !peer_is_local => Some(gws.clone()),
                        _ => None,
                    },
                };
                let t = tokio::spawn(f.run(replica));
                tasks.lock().unwrap_or_else(|e| e.into_inner()).push(t);
            }
        };
        let mut configured = std::collections::BTreeSet::new();
        // Every configured DC is recorded before any follower starts: the first origin to sync
        // relays its list, and a configured DC must not be taken for a relayed one meanwhile.
        for (peer, _) in &replicas {
            configured.insert(peer.dc.to_ascii_lowercase());
            registry.learn_configured(peer);
        }
        for (peer, replica) in replicas {
            follower(peer, replica, true);
        }
        // Replicas of DCs followed in an earlier run, loaded below before the node answers; the
        // follower the registry then starts for each takes its replica from here.
        let preloaded: Arc<std::sync::Mutex<std::collections::HashMap<String, replica::Replica>>> =
            Arc::default();
        let already = configured.clone();
        {
            let (store, counters, mut stop) = (store.clone(), counters.clone(), stop_rx.clone());
            let limits = settings.limits.clone();
            let preloaded = preloaded.clone();
            let spawner = tokio::spawn(async move {
                loop {
                    let peer = tokio::select! {
                        p = learned_rx.recv() => match p { Some(p) => p, None => return },
                        () = stopped(&mut stop) => return,
                    };
                    if configured.contains(&peer.dc.to_ascii_lowercase()) {
                        continue;
                    }
                    // A learned DC's replica may be on disk from an earlier run.
                    let ready = preloaded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&peer.dc.to_ascii_lowercase());
                    let loaded = match ready {
                        Some(r) => Ok((r, 0)),
                        None => load_replica(&peer.dc, &store, &limits).await,
                    };
                    let replica = match loaded {
                        Ok((r, corrupt)) => {
                            counters
                                .corrupt_entries
                                .fetch_add(corrupt as u64, std::sync::atomic::Ordering::Relaxed);
                            r
                        }
                        Err(e) => {
                            tracing::warn!(dc = %peer.dc, error = %e, "cannot load the replica; starting empty");
                            let mut r = replica::Replica::new(&peer.dc);
                            r.set_limits(limits.max_replica_entries, limits.max_staging_bytes);
                            r
                        }
                    };
                    follower(peer, replica, false);
                }
            });
            tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(spawner);
        }
        // Datacenters followed in an earlier run (joined or learned) are followed again, from
        // their replica on disk, even if no peer can be reached now; only addresses that
        // answered were persisted, with their last answer, so the learned TTL still applies.
        let on_disk = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.known_datacenters())
                .await
                .map_err(|e| FederationError::Store(e.to_string()))
                .and_then(|r| r)
        };
        match on_disk {
            Ok(list) => {
                let now = now_ms();
                for (dc, addresses) in list {
                    let key = dc.to_ascii_lowercase();
                    if already.contains(&key) {
                        registry.restore(&dc, &addresses, now);
                        continue;
                    }
                    // Shown from disk at once (stale until its origin confirms it), so that a
                    // node restarted while that DC is unreachable answers for it from the
                    // first request on, not once a task gets to it.
                    match load_replica(&dc, &store, &settings.limits).await {
                        Ok((r, corrupt)) => {
                            counters
                                .corrupt_entries
                                .fetch_add(corrupt as u64, std::sync::atomic::Ordering::Relaxed);
                            let snap = r.snapshot();
                            if snap.synced || !r.is_empty() {
                                remotes_tx.send_modify(|m| {
                                    m.insert(key.as_str().into(), Arc::new(snap));
                                });
                            }
                            preloaded
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(key.clone(), r);
                        }
                        Err(e) => {
                            tracing::warn!(dc = %dc, error = %e, "cannot load the replica; it will be resynced");
                        }
                    }
                    registry.restore(&dc, &addresses, now);
                    if registry.addresses(&dc).is_empty() {
                        // Not followed after all (nothing left to dial): not shown either.
                        preloaded
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        remotes_tx.send_if_modified(|m| m.remove(key.as_str()).is_some());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the datacenters on disk"),
        }
        // Learned addresses that do not answer are forgotten (their followers then stop).
        {
            let (registry, store, mut stop) = (registry.clone(), store.clone(), stop_rx.clone());
            let every = (settings.limits.unproven_ttl / 2)
                .clamp(Duration::from_millis(100), Duration::from_secs(30));
            let t = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stopped(&mut stop) => return,
                    }
                    let gone = registry.expire(now_ms());
                    if gone.is_empty() {
                        continue;
                    }
                    // Off the disk now, even if the follower is shut down before it notices.
                    let store = store.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        gone.iter().try_for_each(|dc| {
                            let mut b = store::StoreBatch::new(dc);
                            b.forget();
                            store.write(b)
                        })
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        tracing::warn!("cannot drop forgotten datacenters from disk");
                    }
                }
            });
            tasks.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        }
        let discovery_tls = settings.tls.discovery_client_config()?;
        // With the gateway transport, `join` names other DCs' gateways: the node asks its
        // gateway's tunnel whom they belong to (`learn_joined`).
        let direct_joins = match settings.transport {
            Transport::Direct => settings.join.clone(),
            Transport::Gateway(_) => Vec::new(),
        };
        for addr in direct_joins {
            let (registry, tls, mut stop) =
                (registry.clone(), discovery_tls.clone(), stop_rx.clone());
            let timeout = settings.connect_timeout;
            let source = settings.source();
            let t = tokio::spawn(async move {
                let mut backoff = Duration::from_millis(200);
                loop {
                    match meridian_identity::discover(tls.clone(), &addr, timeout, source).await {
                        Ok(id) => {
                            tracing::info!(%addr, dc = %id.dc, node = %id.node, "joined");
                            // The operator named this address: it never expires.
                            registry.learn(
                                peers::Source::Configured,
                                "join",
                                &id.dc,
                                std::slice::from_ref(&addr),
                                now_ms(),
                            );
                            return;
                        }
                        Err(e) => tracing::info!(%addr, error = %e, "cannot join yet; retrying"),
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5)) => {}
                        () = stopped(&mut stop) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            });
            tasks.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        }
        let relay_targets = Arc::new(arc_swap::ArcSwap::from_pointee(
            relay::RelayTargets::default(),
        ));
        // The WAN endpoint.
        if let Some(listener) = listener {
            let acceptor = tokio_rustls::TlsAcceptor::from(settings.tls.server_config()?);
            let (conn_tx, conn_rx) = mpsc::channel(16);
            tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(tokio::spawn(server::accept_loop(
                    listener,
                    acceptor,
                    settings.handshake_timeout,
                    counters.clone(),
                    conn_tx,
                    stop_rx.clone(),
                )));
            let service = server::Service {
                dc: settings.dc.as_str().into(),
                exporter: exporter.clone(),
                registry: registry.clone(),
                counters: counters.clone(),
                heartbeat: settings.heartbeat,
                stop: stop_rx.clone(),
                streams: limits::StreamCap::new(settings.limits.max_streams_per_identity),
                on_gateway: settings.on_gateway.clone(),
            };
            {
                let mut stop = stop_rx.clone();
                // HTTP/2 pings only reclaim connections of vanished subscribers, so they are lenient:
                // a ping queues behind the snapshot data already sent, and on a slow WAN a strict
                // timeout cut initial syncs and restarted them from scratch (seen in the benchmark
                // at 60 KB/s). Liveness of live streams comes from the heartbeats.
                let router = tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(SERVER_PING_INTERVAL))
                    .http2_keepalive_timeout(Some(SERVER_PING_TIMEOUT))
                    .add_service(service.into_server())
                    .add_service(
                        relay::RelayService::new(
                            relay_targets.clone(),
                            match &settings.transport {
                                Transport::Gateway(g) => Some(g.clone()),
                                Transport::Direct => None,
                            },
                            counters.clone(),
                            stop_rx.clone(),
                        )
                        .into_server(),
                    );
                tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(tokio::spawn(async move {
                        let shutdown = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        if let Err(e) = router
                            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown)
                            .await
                        {
                            tracing::error!(error = %e, "federation server stopped");
                        }
                    }));
            }
        }
        tracing::info!(addr = ?local_addr, dc = %settings.dc, peers = settings.peers.len(), "federation started");
        Ok(Federation {
            views,
            counters,
            exporter,
            registry,
            local_addr,
            transport: settings.transport.clone(),
            relay_targets,
            tls: settings.tls.clone(),
            connect_timeout: settings.connect_timeout,
            source: settings.source(),
            stop,
            tasks,
        })
    }

    /// The composed views (local catalog plus remote replicas).
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.views.clone()
    }

    /// The current composed view.
    pub fn view(&self) -> Arc<View> {
        self.views.borrow().clone()
    }

    /// This node's federation counters.
    pub fn counters(&self) -> &Arc<FederationCounters> {
        &self.counters
    }

    /// The remote datacenters known now (configured, joined and learned) and their addresses,
    /// best first.
    pub fn datacenters(&self) -> Vec<Peer> {
        self.registry.datacenters()
    }

    /// What this node knows of each remote datacenter's addresses, as socket addresses (names
    /// left out): with the gateway transport they are the DC's gateways, which a gateway of this
    /// DC dials for a stream before any replica names them.
    pub fn known_addresses(&self) -> impl Fn(&str) -> Vec<SocketAddr> + Send + Sync + 'static {
        let registry = self.registry.clone();
        move |dc: &str| {
            registry
                .addresses(dc)
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect()
        }
    }

    /// How this node's subscriptions reach other datacenters.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Records that `addr`, named by the operator (`--join-wan`), is a gateway of datacenter
    /// `dc` (its certificate said so): federation follows `dc` through it, and never forgets it.
    pub fn learn_joined(&self, dc: &str, addr: &str) {
        self.registry.learn(
            peers::Source::Configured,
            "join",
            dc,
            &[addr.to_owned()],
            now_ms(),
        );
    }

    /// Tells the relay where this node's own listeners are (once they are bound).
    pub fn set_relay_targets(&self, targets: relay::RelayTargets) {
        self.relay_targets.store(Arc::new(targets));
    }

    /// Loopback stand-ins for the listeners of a server of `dc`, reached through the relay on
    /// a federation connection through this DC's gateways (their order: the node's own first).
    /// Only with the gateway transport: otherwise the DC's nodes are reached directly.
    pub async fn relay(&self, dc: &str) -> Result<relay::Forward, FederationError> {
        let Transport::Gateway(gateways) = &self.transport else {
            return Err(FederationError::Relay(
                "the relay is used with the gateway transport only".into(),
            ));
        };
        let tls = self.tls.client_config()?;
        let mut last = String::from("no gateway of this datacenter is known");
        for gw in gateways.load().iter() {
            match client::channel_from(
                tls.clone(),
                &gw.to_string(),
                dc,
                self.connect_timeout,
                self.source,
            )
            .await
            {
                Ok(channel) => {
                    return relay::Forward::open(channel).await.map_err(|e| {
                        FederationError::Relay(format!("cannot open loopback listeners: {e}"))
                    });
                }
                Err(e) => last = format!("through {gw}: {e}"),
            }
        }
        Err(FederationError::Relay(format!(
            "cannot reach a server of {dc}: {last}"
        )))
    }

    /// The WAN port's address (`None` when not serving).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The export's origin index, digest and number of entries.
    pub fn export_position(&self) -> (u64, u64, usize) {
        let (index, digest) = self.exporter.position();
        (index, digest, self.exporter.len())
    }

    /// Stops serving and following, and waits for the tasks to end.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
