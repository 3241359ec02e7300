//! Nodes and a scripted origin for the integration tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Result;
use meridian_federation::entry::Hashed;
use meridian_federation::{ExportPolicy, Federation, Limits, Peer, Settings};
use meridian_identity::{Role, TlsMaterial};
use meridian_protos::federation as pb;
use meridian_protos::federation::federation_server::{
    Federation as FederationRpc, FederationServer,
};
use meridian_protos::federation::sync_message::Kind;
use meridian_topology::View;
use meridian_topology::dc::DcState;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// A federation node and its (empty) local catalog, which must outlive it.
pub struct Node {
    /// The node.
    pub fed: Federation,
    _local: watch::Sender<Arc<View>>,
}

impl std::ops::Deref for Node {
    type Target = Federation;

    fn deref(&self) -> &Federation {
        &self.fed
    }
}

/// Starts a federation node of `dc` on `127.0.0.1:0` with its data in `dir`.
pub async fn node(dc: &str, dir: &Path, peers: Vec<Peer>, limits: Limits) -> Result<Node> {
    let settings = Settings {
        dc: dc.to_owned(),
        node: "n1".to_owned(),
        bind: "127.0.0.1:0".parse()?,
        serve: true,
        peers,
        join: Vec::new(),
        advertise_host: "127.0.0.1".to_owned(),
        advertise: Vec::new(),
        policy: ExportPolicy::all(),
        tls: Arc::new(TlsMaterial::dev(dc, "n1", Role::Server)?),
        data_dir: dir.to_path_buf(),
        heartbeat: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        window: 1000,
        limits,
        transport: meridian_federation::Transport::Direct,
        announce: None,
        on_gateway: None,
    };
    let (local, rx) = watch::channel(Arc::new(View::new(dc, DcState::default())));
    Ok(Node {
        fed: Federation::start(settings, rx).await?,
        _local: local,
    })
}

/// Polls `f` every 50 ms until it holds, for at most `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// An instance entry of service `web`.
pub fn entry(id: &str) -> pb::Entry {
    pb::Entry {
        entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
            instance: Some(pb::Instance {
                id: id.into(),
                service: "web".into(),
                node: "n1".into(),
                port: 80,
                ..Default::default()
            }),
            checks: vec![],
        })),
    }
}

/// A whole snapshot of `entries` at `index`, announcing `datacenters`.
pub fn snapshot(
    entries: Vec<pb::Entry>,
    index: u64,
    datacenters: Vec<pb::Datacenter>,
) -> Vec<Kind> {
    let digest = entries
        .iter()
        .filter_map(|e| Hashed::from_proto(e.clone()).ok())
        .fold(0u64, |d, h| d.wrapping_add(h.hash));
    let mut out = vec![Kind::Reset(pb::Reset {
        all: true,
        bucket_bits: 0,
        buckets: vec![],
        kept: vec![],
    })];
    for chunk in entries.chunks(512) {
        out.push(Kind::Batch(pb::Batch {
            index,
            upserts: chunk.to_vec(),
            removals: vec![],
        }));
    }
    out.push(Kind::Synced(pb::Synced {
        index,
        digest,
        datacenters,
    }));
    out
}

/// What the scripted origin sends to its `n`-th subscription (from 0): messages, then
/// heartbeats carrying `heartbeat_datacenters` until the subscriber leaves, if `stay`.
pub struct Script {
    /// Messages for the `n`-th subscription.
    pub messages: Box<dyn Fn(u32) -> Vec<Kind> + Send + Sync>,
    /// Keep the stream open with heartbeats (else it ends after the messages).
    pub stay: bool,
    /// Datacenters announced in each heartbeat.
    pub heartbeat_datacenters: Vec<pb::Datacenter>,
}

struct Scripted {
    script: Arc<Script>,
    subscriptions: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl FederationRpc for Scripted {
    type SubscribeStream = ReceiverStream<Result<pb::SyncMessage, Status>>;

    async fn subscribe(
        &self,
        _request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let n = self.subscriptions.fetch_add(1, Ordering::SeqCst);
        let script = self.script.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            for kind in (script.messages)(n) {
                if tx
                    .send(Ok(pb::SyncMessage { kind: Some(kind) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if !script.stay {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let hb = Kind::Heartbeat(pb::Heartbeat {
                    index: 1,
                    unix_ms: meridian_federation::now_ms(),
                    datacenters: script.heartbeat_datacenters.clone(),
                });
                if tx
                    .send(Ok(pb::SyncMessage { kind: Some(hb) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A origin of `dc` with a valid server certificate that sends what `script` says.
pub struct ScriptedOrigin {
    /// Its WAN address.
    pub addr: SocketAddr,
    /// Subscriptions served so far.
    pub subscriptions: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
}

impl ScriptedOrigin {
    /// Serves `script` as node `evil` of `dc`.
    pub async fn start(dc: &str, script: Script) -> Result<ScriptedOrigin> {
        let tls = TlsMaterial::dev(dc, "evil", Role::Server)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let (conn_tx, conn_rx) = mpsc::channel(16);
        tokio::spawn(meridian_federation::server::accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(tls.server_config()?),
            Duration::from_secs(2),
            Arc::new(meridian_federation::FederationCounters::default()),
            conn_tx,
            stop_rx.clone(),
        ));
        let subscriptions = Arc::new(AtomicU32::new(0));
        let service = Scripted {
            script: Arc::new(script),
            subscriptions: subscriptions.clone(),
        };
        let mut stop_serve = stop_rx;
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(FederationServer::new(service))
                .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                    let _ = stop_serve.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(ScriptedOrigin {
            addr,
            subscriptions,
            stop,
        })
    }
}

impl Drop for ScriptedOrigin {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
