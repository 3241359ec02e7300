//! The catalog handle: starts Raft and its RPC server, forms or rejoins the cluster, forwards
//! writes to the leader, and publishes views.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_protos::catalog::catalog_client::CatalogClient;
use meridian_protos::catalog::forward_reply::Result as ForwardResult;
use meridian_protos::catalog::membership_reply::Result as MembershipResult;
use meridian_protos::catalog::membership_request::Change;
use meridian_protos::catalog::read_index_reply::Result as ReadIndexResult;
use meridian_protos::catalog::{AddServer, MembershipRequest, ReadIndexRequest};
use meridian_topology::{DcState, Health, Node, View, names};
use openraft::error::{CheckIsLeaderError, InitializeError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::counters::CatalogCounters;
use crate::forwarder::Forwarder;
use crate::health::HealthRunner;
use crate::membership::{self, MembershipChange, Step};
use crate::network::{self, NetworkFactory};
use crate::proposer::{ProposeError, Proposer};
use crate::store::open_store;
use crate::types::Raft;
use crate::{CatalogConfig, CatalogError, Command, WriteOutcome};

/// Raft's state as the HTTP API reports it.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    /// gRPC address of the current leader, if one is known.
    pub leader: Option<String>,
    /// gRPC addresses of all voters.
    pub peers: Vec<String>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Current term.
    pub term: u64,
    /// Last log index applied to the state machine.
    pub last_applied: u64,
    /// Index of the last entry in this node's log.
    pub last_log_index: u64,
    /// Time since the leader was last heard from, when known.
    pub last_contact: Option<Duration>,
}

/// One member of the DC's Raft group, as the membership this node knows lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftMember {
    /// Its Raft node id.
    pub id: u64,
    /// Its rpc address.
    pub addr: String,
    /// Whether it votes (a learner does not).
    pub voter: bool,
    /// Whether it is the leader this node knows of.
    pub leader: bool,
}

/// The DC's Raft membership as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfiguration {
    /// Every member, voters and learners, by id.
    pub members: Vec<RaftMember>,
    /// The log index of the entry that set this membership.
    pub index: u64,
}

/// Node metadata key under which a server records its rpc address when it registers itself.
pub const SERVER_META: &str = "meridian-rpc";

/// A running catalog node. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: CatalogConfig,
    /// `cfg.write_timeout`, as a reload may change it.
    write_timeout_ms: std::sync::atomic::AtomicU64,
    raft: Raft,
    proposer: Proposer,
    counters: Arc<CatalogCounters>,
    views: watch::Sender<Arc<View>>,
    /// Raised once RocksDB is closed.
    store_closed: Arc<std::sync::atomic::AtomicBool>,
    forward_clients: Mutex<HashMap<String, CatalogClient<Channel>>>,
    /// Writes on their way to each leader address this node has forwarded to.
    forwarders: Mutex<HashMap<String, Forwarder>>,
    health: HealthRunner,
    stop_rpc: Mutex<Option<oneshot::Sender<()>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn validate(cfg: &CatalogConfig) -> Result<(), CatalogError> {
    names::validate_label("datacenter", &cfg.datacenter)
        .and_then(|()| names::validate_label("node name", &cfg.node_name))
        .map_err(|e| CatalogError::Config(e.to_string()))?;
    // A joining node takes its membership from the leader; only a new group needs an odd count.
    if !cfg.join && ![1, 3, 5].contains(&cfg.servers.len()) {
        return Err(CatalogError::Config(format!(
            "a datacenter has 1, 3 or 5 servers, not {}",
            cfg.servers.len()
        )));
    }
    let hour = Duration::from_secs(3600);
    if cfg.write_timeout.is_zero() || cfg.write_timeout > hour {
        return Err(CatalogError::Config(format!(
            "the write timeout must be between 1 ms and 1 h, not {:?}",
            cfg.write_timeout
        )));
    }
    if [
        cfg.raft.heartbeat,
        cfg.raft.election_timeout_min,
        cfg.raft.election_timeout_max,
    ]
    .iter()
    .any(|d| d.is_zero() || *d > hour)
    {
        return Err(CatalogError::Config(
            "raft heartbeat and election timeouts must be between 1 ms and 1 h".into(),
        ));
    }
    if !cfg.servers.contains_key(&cfg.node_id) {
        return Err(CatalogError::Config(format!(
            "node id {} is not one of the servers",
            cfg.node_id
        )));
    }
    Ok(())
}

impl Catalog {
    /// Opens the store, starts Raft and the RPC server, forms or rejoins the cluster, and starts
    /// the health checks of this node's instances.
    pub async fn start(cfg: CatalogConfig) -> Result<Catalog, CatalogError> {
        validate(&cfg)?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            CatalogError::Storage(format!("cannot create {}: {e}", cfg.data_dir.display()))
        })?;
        let (views, _) = watch::channel(Arc::new(View::new(
            cfg.datacenter.as_str(),
            DcState::default(),
        )));
        let counters = Arc::new(CatalogCounters::default());
        let (log, sm) = open_store(
            &cfg.data_dir.join("raft"),
            &cfg.datacenter,
            views.clone(),
            counters.clone(),
        )
        .map_err(|e| CatalogError::Storage(e.to_string()))?;

        let raft_cfg = openraft::Config {
            cluster_name: cfg.datacenter.clone(),
            heartbeat_interval: millis(cfg.raft.heartbeat),
            election_timeout_min: millis(cfg.raft.election_timeout_min),
            election_timeout_max: millis(cfg.raft.election_timeout_max),
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.raft.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.raft.keep_logs,
            snapshot_max_chunk_size: 1024 * 1024,
            // Entries are batches of up to 256 KiB: this keeps an AppendEntries under 8 MiB.
            max_payload_entries: 32,
            ..Default::default()
        }
        .validate()
        .map_err(|e| CatalogError::Config(e.to_string()))?;
        let store_closed = log.closed_watch();
        let network = NetworkFactory {
            tls: cfg.tls.clone(),
        };
        let raft = Raft::new(cfg.node_id, Arc::new(raft_cfg), network, log, sm)
            .await
            .map_err(|e| CatalogError::Raft(e.to_string()))?;

        let listener = tokio::net::TcpListener::bind(cfg.rpc_bind)
            .await
            .map_err(|source| CatalogError::Bind {
                addr: cfg.rpc_bind,
                source,
            })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (proposer, proposer_task) = Proposer::start(raft.clone(), counters.clone());
        let (raft_svc, fwd_svc) =
            crate::rpc::services(raft.clone(), proposer.clone(), counters.clone());
        let tls = cfg.tls.clone();
        let refused = counters.rpc_tls_refused.clone();
        let rpc_task = tokio::spawn(
            async move {
                let server = tonic::transport::Server::builder()
                    .timeout(Duration::from_secs(30))
                    .add_service(raft_svc)
                    .add_service(fwd_svc);
                let stop = async {
                    let _ = stop_rx.await;
                };
                let served = match tls {
                    Some(tls) => {
                        let incoming = crate::tls::accept_loop(listener, &tls, refused);
                        let incoming = futures::stream::unfold(incoming, |mut rx| async move {
                            rx.recv().await.map(|conn| (conn, rx))
                        });
                        server.serve_with_incoming_shutdown(incoming, stop).await
                    }
                    None => {
                        server
                            .serve_with_incoming_shutdown(
                                tonic::transport::server::TcpIncoming::from(listener)
                                    .with_nodelay(Some(true)),
                                stop,
                            )
                            .await
                    }
                };
                if let Err(e) = served {
                    warn!(error = %e, "rpc server stopped");
                }
            }
            .instrument(info_span!("rpc")),
        );

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| CatalogError::Raft(e.to_string()))?;
        if cfg.join && !initialized {
            info!(
                node_id = cfg.node_id,
                "joining: waiting for the leader to add this node (meridian operator raft add-peer)"
            );
        } else if !initialized {
            let members: BTreeMap<u64, BasicNode> = cfg
                .servers
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            // Every server initializes with the same membership, which openraft allows; a node
            // that already has state skips this and simply rejoins.
            match raft.initialize(members).await {
                Ok(()) => info!(servers = cfg.servers.len(), "initialized a new raft group"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(CatalogError::Raft(e.to_string())),
            }
        }

        let catalog = Catalog {
            inner: Arc::new(Inner {
                health: HealthRunner::new(cfg.node_name.clone(), cfg.checks.clone()),
                write_timeout_ms: std::sync::atomic::AtomicU64::new(millis(cfg.write_timeout)),
                cfg,
                raft,
                proposer,
                counters,
                views,
                store_closed,
                forward_clients: Mutex::new(HashMap::new()),
                forwarders: Mutex::new(HashMap::new()),
                stop_rpc: Mutex::new(Some(stop_tx)),
                tasks: Mutex::new(vec![rpc_task, proposer_task]),
            }),
        };
        let register = tokio::spawn(catalog.clone().register_self());
        let health = tokio::spawn(catalog.inner.health.clone().run(catalog.clone()));
        if let Ok(mut tasks) = catalog.inner.tasks.lock() {
            tasks.push(register);
            tasks.push(health);
        }
        Ok(catalog)
    }

    /// Registers this node in the catalog, retrying until a leader accepts it.
    async fn register_self(self) {
        // The rpc address marks the node as a Meridian server (`/v1/agent/members` lists those,
        // in every DC, since the node travels through federation).
        let cfg = &self.inner.cfg;
        let meta = cfg
            .servers
            .get(&cfg.node_id)
            .map(|rpc| (SERVER_META.to_owned(), rpc.clone()))
            .into_iter()
            .collect();
        let node = Node {
            name: cfg.node_name.clone(),
            address: cfg.advertise_addr.clone(),
            meta,
            create_index: 0,
            modify_index: 0,
        };
        let mut pause = Duration::from_millis(200);
        loop {
            match self
                .write(Command::RegisterNode { node: node.clone() })
                .await
            {
                Ok(_) => {
                    info!(node = %node.name, "node registered in the catalog");
                    return;
                }
                Err(CatalogError::Shutdown) => return,
                // Joining: expected until an operator adds this node.
                Err(e @ CatalogError::NotVoter { .. }) => {
                    debug!(error = %e, retry_in = ?pause, "node registration waits for a vote");
                }
                Err(e) => warn!(error = %e, retry_in = ?pause, "node registration failed"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// How long a write may wait for a leader and a commit before it fails.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(
            self.inner
                .write_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Gives writes `timeout` from the next one on (a reload); 1 ms to 1 h.
    pub fn set_write_timeout(&self, timeout: Duration) {
        let ms = millis(timeout).clamp(1, 3_600_000);
        self.inner
            .write_timeout_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Datacenter name.
    pub fn datacenter(&self) -> &str {
        &self.inner.cfg.datacenter
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.cfg.node_name
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.inner.views.borrow().clone()
    }

    /// This node's counters.
    pub fn counters(&self) -> &CatalogCounters {
        &self.inner.counters
    }

    /// A receiver that sees every new view.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.inner.views.subscribe()
    }

    /// Commits `cmd` through the leader, wherever it is, and returns once it is applied.
    ///
    /// Retries across leader changes until the configured write timeout. Commands are idempotent,
    /// so a retry after a lost reply cannot apply a change twice.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn write(&self, cmd: Command) -> Result<WriteOutcome, CatalogError> {
        // Chaos self-test fault (feature `chaos-broken` only): acknowledge before committing.
        #[cfg(feature = "chaos-broken")]
        if let Some(acked) = crate::chaos_break::ack_before_commit(self, &cmd) {
            return Ok(acked);
        }
        let counters = &self.inner.counters;
        if let Err(e) = self.voter() {
            CatalogCounters::inc(&counters.writes_failed);
            return Err(e);
        }
        let cmd = &cmd;
        // Whether an attempt was sent to a leader that never answered: it may have applied it.
        let unknown = &std::sync::atomic::AtomicBool::new(false);
        let result = self
            .via_leader(|at| async move {
                let r = match at {
                    LeaderAt::Here => {
                        CatalogCounters::inc(&counters.writes_local);
                        self.write_local(cmd).await
                    }
                    LeaderAt::There(addr) => {
                        CatalogCounters::inc(&counters.writes_forwarded);
                        self.write_forward(&addr, cmd).await
                    }
                };
                if let Err(Retry::Unknown(_)) = &r {
                    unknown.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                r
            })
            .await;
        if result.is_err() {
            CatalogCounters::inc(&counters.writes_failed);
        }
        result.map(|mut outcome| {
            outcome.retried_unknown |= unknown.load(std::sync::atomic::Ordering::Relaxed);
            outcome
        })
    }

    /// Fails with [`CatalogError::NotVoter`] unless this node votes in its DC's group: a node
    /// that joins and has not been promoted, or that was removed, takes no writes, so a client
    /// of a removed server learns it at once instead of through a leader it may still know.
    fn voter(&self) -> Result<(), CatalogError> {
        let id = self.inner.cfg.node_id;
        let metrics = self.inner.raft.metrics();
        let membership = metrics.borrow();
        let mut voters = membership
            .membership_config
            .membership()
            .voter_ids()
            .peekable();
        // A server forming a new group has no membership until `initialize` is applied: its
        // writes wait for the election as they always did.
        let forming = !self.inner.cfg.join && voters.peek().is_none();
        if forming || voters.any(|v| v == id) {
            Ok(())
        } else {
            Err(CatalogError::NotVoter {
                node_id: id,
                datacenter: self.inner.cfg.datacenter.clone(),
            })
        }
    }

    /// Changes the DC's Raft membership (an operator's add-peer or remove-peer) through the
    /// leader, wherever it is, and returns the log index of the membership that holds the change.
    /// A server to add must run with `[raft] join`; it gets `catch_up` (at most
    /// [`MAX_CATCH_UP`](crate::MAX_CATCH_UP)) to catch up before it votes.
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        catch_up: Duration,
    ) -> Result<u64, CatalogError> {
        let change = &change;
        let index = self
            .via_leader(|at| async move {
                match at {
                    LeaderAt::Here => membership::apply(&self.inner.raft, change, catch_up)
                        .await
                        .map_err(Retry::from),
                    LeaderAt::There(addr) => self.membership_forward(&addr, change, catch_up).await,
                }
            })
            .await?;
        // As with a forwarded write: answer once this node knows the new membership too (briefly;
        // a node that was itself removed never hears the last step).
        let _ = self
            .inner
            .raft
            .wait(Some(Duration::from_secs(2)))
            .metrics(
                |m| {
                    m.membership_config
                        .log_id()
                        .is_some_and(|l| l.index >= index)
                },
                "membership change known here",
            )
            .await;
        Ok(index)
    }

    /// Asks the leader at `addr` to carry out a membership change.
    async fn membership_forward(
        &self,
        addr: &str,
        change: &MembershipChange,
        catch_up: Duration,
    ) -> Result<u64, Retry> {
        let mut client = self.forward_client(addr).map_err(Retry::Backoff)?;
        let catch_up = catch_up.min(crate::MAX_CATCH_UP);
        let mut req = tonic::Request::new(MembershipRequest {
            change: Some(match change {
                MembershipChange::Add { id, addr } => Change::Add(AddServer {
                    id: *id,
                    addr: addr.clone(),
                }),
                MembershipChange::Remove { id } => Change::Remove(*id),
            }),
            catch_up_ms: millis(catch_up),
        });
        req.set_timeout(catch_up + self.write_timeout());
        let reply = client
            .change_membership(req)
            .await
            .map_err(|s| Retry::Backoff(format!("membership change at {addr}: {}", s.message())))?;
        match reply.into_inner().result {
            Some(MembershipResult::Index(index)) => Ok(index),
            Some(MembershipResult::NotLeader(_)) => Err(Retry::WaitForLeader),
            Some(MembershipResult::Retry(e)) => Err(Retry::Backoff(e)),
            Some(MembershipResult::Refused(e)) => {
                Err(Retry::Fatal(CatalogError::MembershipRefused(e)))
            }
            None => Err(Retry::Backoff(format!("empty reply from {addr}"))),
        }
    }

    /// The barrier of a linearizable read (Consul's `?consistent`): waits until this node has
    /// applied every write acknowledged before the call, as a leader that still holds a quorum
    /// confirms, and returns that index. Fails (`Unavailable`) when no such leader answers within
    /// the write timeout: a node cut off from its quorum cannot promise a fresh read.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn read_barrier(&self) -> Result<u64, CatalogError> {
        let timeout = self.write_timeout();
        let deadline = Instant::now() + timeout;
        let index = self
            .via_leader(|at| async move {
                match at {
                    LeaderAt::Here => self.read_index_local(deadline).await,
                    LeaderAt::There(addr) => self.read_index_forward(&addr, deadline).await,
                }
            })
            .await?;
        self.inner
            .raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| CatalogError::Unavailable {
                timeout_ms: millis(timeout),
                last_error: format!("index {index} not applied here in time: {e}"),
            })?;
        Ok(index)
    }

    /// Runs `attempt` against the leader, wherever it is (here, or at its address), retrying
    /// across leader changes and transient failures until the write timeout.
    async fn via_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, CatalogError>
    where
        F: FnMut(LeaderAt) -> Fut,
        Fut: std::future::Future<Output = Result<T, Retry>>,
    {
        let timeout = self.write_timeout();
        let deadline = Instant::now() + timeout;
        let mut metrics = self.inner.raft.metrics();
        let mut backoff = Duration::from_millis(20);
        let mut last_error = String::from("no leader elected yet");
        loop {
            let (leader_id, leader_addr, running) = {
                let m = metrics.borrow_and_update();
                let addr = m.current_leader.and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                });
                (m.current_leader, addr, m.running_state.is_ok())
            };
            if !running {
                return Err(CatalogError::Shutdown);
            }
            let result = match (leader_id, leader_addr) {
                (Some(id), _) if id == self.inner.cfg.node_id => attempt(LeaderAt::Here).await,
                (Some(_), Some(addr)) => attempt(LeaderAt::There(addr)).await,
                _ => Err(Retry::WaitForLeader),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(Retry::Fatal(e)) => return Err(e),
                Err(Retry::Backoff(e) | Retry::Unknown(e)) => {
                    last_error = e;
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    // A new leader ends the pause at once: after a leader's death the retries
                    // back off against its dead address, and the election is what they wait for.
                    let new_leader = async {
                        while metrics.changed().await.is_ok() {
                            if metrics.borrow_and_update().current_leader != leader_id {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(backoff.min(deadline - now), new_leader).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(Retry::WaitForLeader) => {
                    // Wake on the next metrics change (an election) or shortly after.
                    let wait =
                        Duration::from_millis(200).min(deadline - Instant::now().min(deadline));
                    let _ = tokio::time::timeout(wait, metrics.changed()).await;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(CatalogError::Unavailable {
            timeout_ms: millis(timeout),
            last_error,
        })
    }

    /// This node leads: confirms it with a quorum and waits for its own state machine, until
    /// `deadline` at the latest.
    async fn read_index_local(&self, deadline: Instant) -> Result<u64, Retry> {
        // Bounded: a leader cut off from its quorum must not hold the read past the deadline.
        let confirmed = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.inner.raft.ensure_linearizable(),
        )
        .await
        .map_err(|_| Retry::Backoff("no quorum confirmed the leadership in time".into()))?;
        match confirmed {
            Ok(read) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Retry::WaitForLeader)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(Retry::Backoff(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(Retry::Fatal(CatalogError::Shutdown)),
        }
    }

    /// Asks the leader at `addr` for the index a linearizable read must wait for, until
    /// `deadline` at the latest.
    async fn read_index_forward(&self, addr: &str, deadline: Instant) -> Result<u64, Retry> {
        let mut client = self.forward_client(addr).map_err(Retry::Backoff)?;
        let mut req = tonic::Request::new(ReadIndexRequest {});
        req.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        let reply = client
            .read_index(req)
            .await
            .map_err(|s| Retry::Backoff(format!("read index from {addr}: {}", s.message())))?;
        match reply.into_inner().result {
            Some(ReadIndexResult::Index(index)) => Ok(index),
            Some(ReadIndexResult::NotLeader(_)) => Err(Retry::WaitForLeader),
            None => Err(Retry::Backoff(format!("empty reply from {addr}"))),
        }
    }

    async fn write_local(&self, cmd: &Command) -> Result<WriteOutcome, Retry> {
        match self.inner.proposer.propose(cmd.clone()).await {
            Ok(outcome) => Ok(outcome),
            Err(ProposeError::NotLeader(_)) => Err(Retry::WaitForLeader),
            Err(ProposeError::Rejected(e)) => Err(Retry::Fatal(CatalogError::Raft(e))),
            Err(ProposeError::Shutdown) => Err(Retry::Fatal(CatalogError::Shutdown)),
        }
    }

    async fn write_forward(&self, addr: &str, cmd: &Command) -> Result<WriteOutcome, Retry> {
        let forwarder = self.forwarder(addr).map_err(Retry::Backoff)?;
        let command = serde_json::to_vec(cmd)
            .map_err(|e| Retry::Fatal(CatalogError::Raft(format!("cannot encode command: {e}"))))?;
        // Sent: a failure from here on may come after the leader applied it.
        let reply = forwarder
            .forward(command.into(), self.write_timeout())
            .await
            .map_err(|s| Retry::Unknown(format!("forward to {addr}: {}", s.message())))?;
        match reply {
            ForwardResult::Outcome(bytes) => {
                let outcome: WriteOutcome = serde_json::from_slice(&bytes)
                    .map_err(|e| Retry::Backoff(format!("bad outcome from {addr}: {e}")))?;
                self.await_applied(outcome.index).await;
                Ok(outcome)
            }
            ForwardResult::NotLeader(_) => Err(Retry::WaitForLeader),
            ForwardResult::Error(e) => Err(Retry::Fatal(CatalogError::Raft(e))),
        }
    }

    /// Waits (briefly) until this node has applied `index`, so that a client that wrote through
    /// a follower reads its own write from that follower. The write is committed either way.
    async fn await_applied(&self, index: u64) {
        let waited = self
            .inner
            .raft
            .wait(Some(Duration::from_secs(2)))
            .applied_index_at_least(Some(index), "read your write")
            .await;
        if let Err(e) = waited {
            debug!(index, error = %e, "the write is committed but not yet applied here");
        }
    }

    /// The forwarding task for the leader at `addr` (started on first use).
    fn forwarder(&self, addr: &str) -> Result<Forwarder, String> {
        if let Some(f) = self
            .inner
            .forwarders
            .lock()
            .map_err(|_| "forwarder pool poisoned".to_owned())?
            .get(addr)
        {
            return Ok(f.clone());
        }
        let forwarder = Forwarder::start(self.forward_client(addr)?, self.inner.counters.clone());
        let mut forwarders = self
            .inner
            .forwarders
            .lock()
            .map_err(|_| "forwarder pool poisoned".to_owned())?;
        Ok(forwarders
            .entry(addr.to_owned())
            .or_insert(forwarder)
            .clone())
    }

    fn forward_client(&self, addr: &str) -> Result<CatalogClient<Channel>, String> {
        let mut clients = self
            .inner
            .forward_clients
            .lock()
            .map_err(|_| "forward client pool poisoned".to_owned())?;
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let ch = network::channel(addr, Duration::from_secs(2), self.inner.cfg.tls.as_ref())
            .map_err(|e| e.to_string())?;
        let c = CatalogClient::new(ch)
            .max_decoding_message_size(network::MAX_RPC_MESSAGE)
            .max_encoding_message_size(network::MAX_RPC_MESSAGE);
        clients.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Sets the status of a check on this node (TTL updates) and restarts its TTL.
    /// Returns an outcome with `found == false` when this node has no such check.
    pub async fn update_local_check(
        &self,
        check_id: &str,
        status: Health,
        output: &str,
    ) -> Result<WriteOutcome, CatalogError> {
        let view = self.view();
        let Some(check) = view.local().check(self.node_name(), check_id) else {
            return Ok(WriteOutcome {
                index: view.local().index(),
                changed: false,
                found: false,
                ..WriteOutcome::default()
            });
        };
        if check.status == status && check.output == output {
            self.inner.health.touch_ttl(check_id);
            return Ok(WriteOutcome {
                index: view.local().index(),
                changed: false,
                found: true,
                ..WriteOutcome::default()
            });
        }
        let outcome = self
            .write(Command::UpdateCheck {
                node: self.node_name().to_owned(),
                check_id: check_id.to_owned(),
                status,
                output: output.to_owned(),
            })
            .await?;
        // Only a recorded status restarts the TTL: a failed update must still let it lapse.
        self.inner.health.touch_ttl(check_id);
        Ok(outcome)
    }

    /// Raft's state.
    pub fn status(&self) -> RaftStatus {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let addr_of = |id: &u64| membership.get_node(id).map(|n| n.addr.clone());
        let leader = m.current_leader.as_ref().and_then(addr_of);
        RaftStatus {
            is_leader: m.state == ServerState::Leader,
            last_contact: match (m.state, &leader) {
                (ServerState::Leader, _) => Some(Duration::ZERO),
                (_, Some(_)) => self.inner.counters.since_last_append(),
                _ => None,
            },
            leader,
            peers: membership
                .voter_ids()
                .filter_map(|id| addr_of(&id))
                .collect(),
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
        }
    }

    /// The Raft membership this node knows: every member with its address, whether it votes and
    /// whether it leads.
    pub fn raft_configuration(&self) -> RaftConfiguration {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let stored = &m.membership_config;
        let membership = stored.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| RaftMember {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
            })
            .collect();
        RaftConfiguration {
            members,
            index: stored.log_id().map_or(0, |l| l.index),
        }
    }

    /// Stops health checks, Raft and the RPC server.
    pub async fn shutdown(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks.iter().skip(1) {
            t.abort();
        }
        self.inner.health.stop();
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        }
        if let Some(stop) = self.inner.stop_rpc.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
        if let Some(rpc) = tasks.into_iter().next() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rpc).await;
        }
        // Raft's tasks drop their store handles as they wind down; wait until RocksDB is closed,
        // so the data folder can be reopened or removed, and the process can exit, as soon as
        // this returns.
        for _ in 0..200 {
            if self
                .inner
                .store_closed
                .load(std::sync::atomic::Ordering::Acquire)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!("catalog stopped");
    }
}

/// Where the leader is, for [`Catalog::via_leader`].
enum LeaderAt {
    /// This node.
    Here,
    /// Another node, at this RPC address.
    There(String),
}

impl From<Step> for Retry {
    fn from(step: Step) -> Retry {
        match step {
            Step::NotLeader(_) => Retry::WaitForLeader,
            Step::Retry(e) => Retry::Backoff(e),
            Step::Refused(e) => Retry::Fatal(CatalogError::MembershipRefused(e)),
            Step::Stopped => Retry::Fatal(CatalogError::Shutdown),
        }
    }
}

enum Retry {
    /// Wait for a (new) leader to be known, then try again.
    WaitForLeader,
    /// A transient failure; try again after a pause.
    Backoff(String),
    /// Like `Backoff`, after the request reached a leader that did not answer: it may have been
    /// applied (a write says so in [`WriteOutcome::retried_unknown`]).
    Unknown(String),
    /// Retrying cannot help.
    Fatal(CatalogError),
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
