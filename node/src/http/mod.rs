//! The Consul-compatible HTTP API and `/metrics`: routes, the shared state, the per-request span
//! and counters, the body limit, and serving (bounded connections, a request-head deadline, a
//! graceful shutdown).
//!
//! Reads answer from the current [`View`] (the local catalog plus the federated replicas of
//! remote datacenters; `?dc=` picks one), or wait for the next one in a blocking query; writes go through [`Catalog::write`], which forwards to the
//! leader. Bad input is rejected before anything is written. [`router`] builds the whole API
//! for a running catalog, which is what the integration tests and the agent both serve.

mod acl;
mod agent;
mod blocking;
mod body;
mod catalog;
mod connect;
pub mod consul;
pub mod drills;
mod error;
mod external;
mod failover;
mod federation;
pub(crate) mod filter;
mod intentions;
mod listener;
mod metrics;
mod query;
pub mod register;
mod snapshot;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use meridian_catalog::{Catalog, CatalogMetrics, Command, WriteOutcome};
use meridian_federation::Federation;
use meridian_topology::View;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::acl::{Acl, Need, presented_token};
use meridian_topology::DcState;
use meridian_topology::intention::{Action, Intentions};
use meridian_topology::lww::{Decided, Keyed, Record, Records, Stamp, next_stamp};
use meridian_topology::token::Tokens;

/// Longest a write's answer waits for reads on this agent to see it.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
use listener::{Activity, LimitedListener};

pub use crate::acl::Grant;

pub use blocking::{DEFAULT_WAIT, MAX_WAIT, ReadParams};
pub use error::ApiError;
pub use listener::HEADER_READ_TIMEOUT;
pub use metrics::HttpMetrics;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<StateInner>,
}

/// What this node serves where, for `/v1/agent/self` and the failover endpoints.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The HTTP API's address.
    pub http: std::net::SocketAddr,
    /// The DNS server's address.
    pub dns: Option<std::net::SocketAddr>,
    /// The gateway's address (TCP, and UDP for the tunnel).
    pub gateway: Option<std::net::SocketAddr>,
    /// The failure detector's clock.
    pub clock: crate::failover::Clock,
    /// The DNS domain (`consul`): names the UI shows and drills resolve.
    pub domain: String,
}

struct StateInner {
    node: Option<NodeInfo>,
    catalog: Catalog,
    views: watch::Receiver<Arc<View>>,
    federation: Option<Arc<Federation>>,
    metrics: Arc<HttpMetrics>,
    registry: Registry,
    /// Changed by a reload.
    max_body_bytes: std::sync::atomic::AtomicUsize,
    closing: watch::Sender<bool>,
    /// Swapped whole by a reload (`PUT /v1/agent/reload`, SIGHUP).
    acl: arc_swap::ArcSwap<Acl>,
    /// Where `PUT /v1/agent/reload` asks the process to re-read its config file; none for an
    /// agent without one (`--dev`).
    reload: Option<mpsc::Sender<ReloadRequest>>,
    /// The API tokens in force, and the DCs' records they were decided from.
    tokens: std::sync::Mutex<Followed<Tokens>>,
    /// The intentions in force, likewise.
    intentions: std::sync::Mutex<Followed<Intentions>>,
    /// `[mesh] default_intention` is `allow` (changed by a reload).
    default_allow: std::sync::atomic::AtomicBool,
    /// The leaves this agent issued, reused until their renewal.
    leaves: connect::LeafCache,
    /// `[mesh] rotation_activate_s`, in ms (changed by a reload).
    rotation_activate_ms: std::sync::atomic::AtomicU64,
    /// Drills started through the API, and the engine that runs them.
    drills: drills::Drills,
}

/// A kind of record that every DC writes and none owns (API tokens, intentions), as the API
/// writes it: where a DC keeps its records, how many it keeps, the command that carries a write.
pub(super) struct GlobalKind<V: 'static> {
    /// What answers call one ("token", "intention").
    pub(super) what: &'static str,
    /// Where a DC's catalog keeps its records of this kind.
    pub(super) records: fn(&DcState) -> &Records<V>,
    /// Most records a DC keeps (tombstones included).
    pub(super) cap: usize,
    /// The Raft command that carries one write.
    pub(super) command: fn(Keyed<V>) -> Command,
}

/// What is in force of one kind of record that every DC writes ([`Decided`]: API tokens,
/// intentions), decided from the views' records and kept until one DC's records change.
struct Followed<S: Decided> {
    /// The DCs of `maps`, in order.
    dcs: Vec<Arc<str>>,
    maps: Vec<Records<S::Value>>,
    decided: Arc<S>,
}

impl<S: Decided> Default for Followed<S> {
    fn default() -> Self {
        Followed {
            dcs: Vec::new(),
            maps: Vec::new(),
            decided: Arc::default(),
        }
    }
}

impl<S: Decided> Followed<S> {
    /// What is in force in `view`, whose DCs hold their records where `records` says: an O(1)
    /// pointer check per DC when nothing changed, the changed keys decided again otherwise.
    fn follow(&mut self, view: &View, records: fn(&DcState) -> &Records<S::Value>) -> Arc<S> {
        let dcs = || std::iter::once(view.datacenter()).chain(view.remotes().map(|r| &*r.name));
        let maps = || view.states().map(records);
        let same_dcs =
            self.dcs.len() == dcs().count() && self.dcs.iter().zip(dcs()).all(|(a, b)| **a == *b);
        if same_dcs && self.maps.iter().zip(maps()).all(|(a, b)| a.same(b)) {
            return self.decided.clone();
        }
        let new: Vec<Records<S::Value>> = maps().cloned().collect();
        self.decided = Arc::new(if same_dcs {
            self.decided.updated(&self.maps, &new)
        } else {
            S::build(&new)
        });
        self.maps = new;
        self.dcs = dcs().map(Arc::from).collect();
        self.decided.clone()
    }
}

/// A request to re-read the config file, and where its outcome goes: what changed, or why
/// nothing did.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

impl ApiState {
    /// State for an API in front of `catalog`, accepting bodies up to `max_body_bytes`;
    /// reads come from `views` (the catalog's, or federation's with the remote DCs).
    /// `/metrics` shows `registry` (the node's other parts registered theirs) with the API's
    /// and the catalog's families added.
    pub fn new(
        catalog: Catalog,
        views: watch::Receiver<Arc<View>>,
        federation: Option<Arc<Federation>>,
        max_body_bytes: usize,
        mut registry: Registry,
    ) -> Self {
        let metrics = Arc::new(HttpMetrics::default());
        registry.register_collector(Box::new(metrics.clone()));
        registry.register_collector(Box::new(CatalogMetrics::new(&catalog)));
        ApiState {
            inner: Arc::new(StateInner {
                node: None,
                catalog,
                views,
                federation,
                metrics,
                registry,
                max_body_bytes: std::sync::atomic::AtomicUsize::new(max_body_bytes),
                closing: watch::Sender::new(false),
                acl: arc_swap::ArcSwap::from_pointee(Acl::open()),
                reload: None,
                tokens: Default::default(),
                intentions: Default::default(),
                default_allow: Default::default(),
                leaves: Default::default(),
                rotation_activate_ms: std::sync::atomic::AtomicU64::new(30_000),
                drills: drills::Drills::default(),
            }),
        }
    }

    /// This state with the node's addresses and failover clock (before it is shared).
    pub fn with_node(mut self, node: NodeInfo) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.node = Some(node);
        }
        self
    }

    /// This state enforcing `acl` (before it is shared); without it, every request may do
    /// everything.
    pub fn with_acl(mut self, acl: Acl) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.acl = arc_swap::ArcSwap::from_pointee(acl);
        }
        self
    }

    /// This state answering `PUT /v1/agent/reload` by sending requests to `reload` (before it
    /// is shared).
    pub fn with_reload(mut self, reload: mpsc::Sender<ReloadRequest>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.reload = Some(reload);
        }
        self
    }

    /// Enforces `acl` from the next request on (a reload of the config file's tokens).
    pub fn set_acl(&self, acl: Acl) {
        self.inner.acl.store(Arc::new(acl));
    }

    /// The node's addresses and failover clock, when set.
    pub fn node(&self) -> Option<&NodeInfo> {
        self.inner.node.as_ref()
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The views reads are answered from.
    pub fn views(&self) -> &watch::Receiver<Arc<View>> {
        &self.inner.views
    }

    /// Writes `cmd` through the catalog, and returns once reads on this agent see it.
    pub async fn write(&self, cmd: Command) -> Result<WriteOutcome, ApiError> {
        let outcome = self.catalog().write(cmd).await?;
        self.settle(&outcome).await;
        Ok(outcome)
    }

    /// Waits (briefly) until the views reads are answered from hold `outcome`'s write. Reads
    /// go through the failover stage, a step behind the catalog: without this, a client that
    /// writes and then reads this agent (as Consul's clients and tests do) could read the
    /// state from before its own acknowledged write.
    pub async fn settle(&self, outcome: &WriteOutcome) {
        if outcome.changed {
            self.settle_to(outcome.index).await;
        }
    }

    /// Waits (briefly) until the views reads are answered from hold the local catalog at
    /// `index` or later.
    pub async fn settle_to(&self, index: u64) {
        let mut views = self.inner.views.clone();
        let caught_up = views.wait_for(|v| v.local().index() >= index);
        // Bounded: a stage that stalls delays the answer, never holds it.
        let _ = tokio::time::timeout(SETTLE_LIMIT, caught_up).await;
    }

    /// The current view (local catalog and remote replicas).
    pub fn view(&self) -> Arc<View> {
        self.inner.views.borrow().clone()
    }

    /// The tokens created through the API that are in force, decided from every DC's records in
    /// the current view; decided again only when one DC's records changed (an O(1) look per
    /// DC otherwise).
    pub fn api_tokens(&self) -> Arc<Tokens> {
        let view = self.view();
        let mut tokens = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.follow(&view, DcState::tokens)
    }

    /// The intentions in force, decided from every DC's records in the current view (as
    /// [`ApiState::api_tokens`]).
    pub fn intentions(&self) -> Arc<Intentions> {
        let view = self.view();
        let mut intentions = self
            .inner
            .intentions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        intentions.follow(&view, DcState::intentions)
    }

    /// What a connection no intention matches gets (`[mesh] default_intention`).
    pub fn default_intention(&self) -> Action {
        if self
            .inner
            .default_allow
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Action::Allow
        } else {
            Action::Deny
        }
    }

    /// The leaf cache ([`connect::LeafCache`]).
    fn leaves(&self) -> &connect::LeafCache {
        &self.inner.leaves
    }

    /// Sets how long the leaves issued from now on are valid (`[mesh] leaf_ttl_s`).
    pub fn set_leaf_ttl(&self, ttl: std::time::Duration) {
        self.inner.leaves.set_ttl(ttl);
    }

    /// How long the leaves issued now are valid.
    pub fn leaf_ttl(&self) -> std::time::Duration {
        self.inner.leaves.ttl()
    }

    /// Sets how long a rotation's next root is published before it signs
    /// (`[mesh] rotation_activate_s`).
    pub fn set_rotation_delay(&self, delay: std::time::Duration) {
        self.inner.rotation_activate_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// [`ApiState::set_rotation_delay`]'s value.
    pub fn rotation_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.inner
                .rotation_activate_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets [`ApiState::default_intention`] (at start and on a reload).
    pub fn set_default_intention(&self, action: Action) {
        self.inner.default_allow.store(
            action == Action::Allow,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Writes this DC's record of `key` of `kind` (`None`: a tombstone), stamped after every
    /// record of it in the current view, so that it outranks what this node saw. Refused (400)
    /// when it would be a new record beyond the DC's cap, and answered 409 when the DC took a
    /// later write of its own that this node had not seen yet. Returns the write's stamp.
    pub(super) async fn write_global<V: PartialEq>(
        &self,
        kind: &GlobalKind<V>,
        key: &str,
        value: Option<V>,
    ) -> Result<Stamp, ApiError> {
        let view = self.view();
        let stamp = next_stamp(
            view.datacenter(),
            meridian_federation::now_ms(),
            view.states().map(kind.records),
            key,
        );
        let own = (kind.records)(view.local());
        if own.get(key).is_none() && own.len() >= kind.cap {
            return Err(ApiError::bad_request(format!(
                "this datacenter keeps at most {} {} records (deleted ones included)",
                kind.cap, kind.what
            )));
        }
        let deleted = value.is_none();
        let record = Keyed {
            key: key.to_owned(),
            record: Record {
                stamp: stamp.clone(),
                value,
            },
        };
        let outcome = self.write((kind.command)(record)).await?;
        if !outcome.found {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!(
                    "The {} conflicted with a concurrent change in this datacenter; retry",
                    kind.what
                ),
            });
        }
        tracing::info!(kind = kind.what, %key, deleted, "record written");
        Ok(stamp)
    }

    /// The access rules in force (the file's tokens).
    pub fn acl(&self) -> arc_swap::Guard<Arc<Acl>> {
        self.inner.acl.load()
    }

    /// Federation, when it runs.
    pub fn federation(&self) -> Option<&Arc<Federation>> {
        self.inner.federation.as_ref()
    }

    /// The request counters.
    pub fn metrics(&self) -> &HttpMetrics {
        &self.inner.metrics
    }

    /// Largest request body accepted.
    pub fn max_body_bytes(&self) -> usize {
        self.inner
            .max_body_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Accepts request bodies up to `bytes` from the next request on (a reload).
    pub fn set_max_body_bytes(&self, bytes: usize) {
        self.inner
            .max_body_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends every blocking query at once (they answer with the current view), so that a
    /// graceful shutdown does not wait up to ten minutes for them.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// The drills started through the API.
    pub fn drills(&self) -> &drills::Drills {
        &self.inner.drills
    }
}

/// The whole API: Consul's endpoints, `/metrics`, a 404 for everything else.
pub fn router(state: ApiState) -> Router {
    let limit = state.max_body_bytes();
    Router::new()
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/services", get(agent::agent_services))
        .route("/v1/agent/checks", get(agent::agent_checks))
        .route("/v1/agent/service/register", put(agent::register_service))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(agent::deregister_service),
        )
        .route("/v1/agent/service/{id}", get(agent::agent_service))
        .route("/v1/agent/members", get(agent::agent_members))
        .route("/v1/agent/maintenance", put(agent::node_maintenance))
        .route("/v1/agent/reload", put(agent_reload))
        .route("/v1/snapshot", get(snapshot::save).put(snapshot::restore))
        .route("/v1/acl/token", put(acl::create))
        .route("/v1/acl/token/self", get(acl::read_self))
        .route(
            "/v1/acl/token/{accessor}",
            get(acl::read).put(acl::update).delete(acl::delete),
        )
        .route("/v1/acl/tokens", get(acl::list))
        .route("/v1/connect/ca/roots", get(connect::roots))
        .route(
            "/v1/connect/ca/configuration",
            get(connect::configuration).put(connect::rotate),
        )
        .route("/v1/agent/connect/ca/roots", get(connect::roots))
        .route("/v1/agent/connect/ca/leaf/{service}", get(connect::leaf))
        // Consul documents POST; clients (py-consul) send PUT: both are served.
        .route(
            "/v1/agent/connect/authorize",
            post(connect::authorize).put(connect::authorize),
        )
        .route("/v1/connect/intentions", get(intentions::list))
        .route(
            "/v1/connect/intentions/exact",
            get(intentions::get_exact)
                .put(intentions::put_exact)
                .delete(intentions::delete_exact),
        )
        .route("/v1/connect/intentions/match", get(intentions::match_by))
        .route("/v1/connect/intentions/check", get(intentions::check))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(agent::service_maintenance),
        )
        .route("/v1/agent/check/register", put(agent::register_check))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(agent::deregister_check),
        )
        .route(
            "/v1/agent/health/service/name/{name}",
            get(agent::agent_health_by_name),
        )
        .route(
            "/v1/agent/health/service/id/{id}",
            get(agent::agent_health_by_id),
        )
        // `update` takes a body; `pass`, `warn` and `fail` differ only in the status they set.
        .route("/v1/agent/check/update/{id}", put(agent::check_update))
        .route("/v1/agent/check/{verb}/{id}", put(agent::check_set))
        .route("/v1/catalog/services", get(catalog::catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog::catalog_service))
        .route("/v1/catalog/nodes", get(catalog::catalog_nodes))
        .route("/v1/catalog/datacenters", get(catalog::catalog_datacenters))
        .route("/v1/catalog/node/{node}", get(catalog::catalog_node))
        .route("/v1/catalog/register", put(external::register))
        .route("/v1/catalog/deregister", put(external::deregister))
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog::catalog_node_services),
        )
        .route("/v1/health/service/{name}", get(catalog::health_service))
        .route("/v1/health/connect/{name}", get(catalog::health_connect))
        .route("/v1/catalog/connect/{name}", get(catalog::catalog_connect))
        .route("/v1/health/node/{node}", get(catalog::health_node))
        .route("/v1/health/checks/{service}", get(catalog::health_checks))
        .route("/v1/health/state/{state}", get(catalog::health_state))
        .route("/v1/status/leader", get(catalog::status_leader))
        .route("/v1/status/peers", get(catalog::status_peers))
        .route(
            "/v1/operator/raft/configuration",
            get(catalog::operator_raft_configuration),
        )
        .route(
            "/v1/operator/raft/peer",
            put(catalog::operator_raft_peer_add).delete(catalog::operator_raft_peer_remove),
        )
        .route("/v1/federation/status", get(federation::status))
        .route("/v1/federation/datacenters", get(failover::datacenters))
        .route(
            "/v1/coordinate/datacenters",
            get(failover::coordinate_datacenters),
        )
        .route("/v1/coordinate/nodes", get(failover::coordinate_nodes))
        .route("/v1/coordinate/node/{node}", get(failover::coordinate_node))
        .route(
            "/v1/operator/drain",
            put(failover::drain).delete(failover::undrain),
        )
        .route("/v1/query", get(query::list).post(query::create))
        .route(
            "/v1/query/{id}",
            get(query::get_one).put(query::update).delete(query::delete),
        )
        .route("/v1/query/{id}/execute", get(query::execute))
        .route("/v1/operator/drill", post(drills::start))
        .route("/v1/operator/drills", get(drills::list))
        .route("/v1/operator/drill/{id}", get(drills::get_one))
        .route("/v1/internal/ui/datacenters", get(ui::datacenters))
        .route("/v1/internal/ui/services", get(ui::services))
        .route("/metrics", get(metrics_page))
        .merge(ui::assets())
        .fallback(unknown_path)
        // Handlers read bodies with `body::read_body`, which enforces the limit itself (and
        // drains an oversized body so the client sees the 413); this layer bounds any other
        // body extractor a future route might use.
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), front_door))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then ends blocking queries and
/// finishes the requests in flight. At most `max_connections` are open at once (`max_per_client`
/// from one address), and each must
/// send a request head within [`HEADER_READ_TIMEOUT`] whenever it has no request in flight.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    max_connections: usize,
    max_per_client: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let listener = LimitedListener::new(
        listener,
        max_connections,
        max_per_client,
        HEADER_READ_TIMEOUT,
        state.metrics().per_client_refused.clone(),
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Activity>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        state.begin_shutdown();
    })
    .await
}

/// Largest total size of a request's header names and values. hyper already bounds the head it
/// buffers (about 400 KiB, 100 headers); no Consul client needs more than a few KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `app`, a router without an [`ApiState`] (a gateway-only node's few read endpoints),
/// behind `acl` (swapped whole by a reload) and the API's connection limits, until the process
/// ends.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    acl: Arc<arc_swap::ArcSwap<Acl>>,
    max_connections: usize,
    max_per_client: usize,
) -> std::io::Result<()> {
    let app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
        let acl = acl.clone();
        async move {
            // Lifts the connection's request-head deadline while this request is handled.
            let _busy = req
                .extensions()
                .get::<ConnectInfo<Activity>>()
                .map(|c| c.0.begin());
            // A gateway-only node has no catalog, so no API tokens of its own DC: the file's.
            check_acl(&acl.load(), &|| Arc::new(Tokens::default()), req, |req| {
                next.run(req)
            })
            .await
        }
    }));
    let listener = LimitedListener::new(
        listener,
        max_connections,
        max_per_client,
        HEADER_READ_TIMEOUT,
        Arc::default(),
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Activity>(),
    )
    .await
}

/// Every request's way in, in this order: counted and logged ([`observe`]), authorized
/// ([`check_acl`]), refused if it asks for what Meridian cannot honour
/// ([`refuse_unsupported_params`]), and a `?consistent` read put behind a barrier
/// ([`consistent_reads`]). One layer rather than four: each `from_fn` layer clones the rest of
/// the stack for every request, and this is every request's path.
async fn front_door(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    observe(&state, req, |req| async {
        let acl = state.inner.acl.load();
        check_acl(&acl, &|| state.api_tokens(), req, |req| async {
            refuse_unsupported_params(req, |req| consistent_reads(&state, req, next)).await
        })
        .await
    })
    .await
}

/// One span per request, and the one place requests are counted and logged.
async fn observe<F, Fut>(state: &ApiState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path());
    // Lifts the connection's request-head deadline while this request is handled.
    let _busy = req
        .extensions()
        .get::<ConnectInfo<Activity>>()
        .map(|c| c.0.begin());
    async move {
        #[allow(clippy::disallowed_methods)] // Request timing for the access log and metrics.
        let started = Instant::now();
        let header_bytes: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        let mut resp = if header_bytes > MAX_HEADER_BYTES {
            ApiError {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                message: format!(
                    "Request headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
                ),
            }
            .into_response()
        } else {
            next(req).await
        };
        let status = resp.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            // axum answers 405 with an empty body; say it in words like every other error.
            let (mut parts, _) = resp.into_parts();
            parts.headers.insert(
                CONTENT_TYPE,
                axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp = Response::from_parts(parts, Body::from("Method not allowed"));
        }
        state.metrics().record(status);
        // Only the ACL answers 403: at the door, or in a handler for one service.
        if status == StatusCode::FORBIDDEN {
            state.metrics().denied();
        }
        let elapsed_ms = started.elapsed().as_millis();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), elapsed_ms, "request failed");
        } else if status.is_client_error() {
            tracing::info!(status = status.as_u16(), elapsed_ms, "bad request");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "request");
        }
        resp
    }
    .instrument(span)
    .await
}

/// Refuses, on every route, the query parameters of Consul's that would change an answer and
/// that Meridian cannot honour: ignoring them would return data the caller did not ask for.
async fn refuse_unsupported_params<F, Fut>(req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if let Some(q) = req.uri().query() {
        let path = req.uri().path();
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if let Some(why) = unsupported_param(&k, &v) {
                return ApiError::bad_request(format!("?{k}: {why}")).into_response();
            }
            if k == "failover"
                && !path.starts_with("/v1/health/service/")
                && !path.starts_with("/v1/health/connect/")
            {
                return ApiError::bad_request(
                    "?failover is supported on /v1/health/service/:name and /v1/health/connect/:name only",
                )
                .into_response();
            }
            if matches!(&*k, "filter" | "node-meta") && !is_listing(path, &k) {
                return ApiError::bad_request(format!("?{k} is not supported on this endpoint"))
                    .into_response();
            }
        }
    }
    next(req).await
}

/// Whether the route at `path` filters its answer by `?filter` or `?node-meta` (`key`), as
/// Consul's listing endpoints do. The handlers refuse them too; this keeps every other route,
/// whatever its parameter parsing, from ignoring them.
fn is_listing(path: &str, key: &str) -> bool {
    const EXACT: [&str; 4] = [
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/catalog/services",
        "/v1/catalog/nodes",
    ];
    const PREFIXES: [&str; 8] = [
        "/v1/catalog/service/",
        "/v1/catalog/connect/",
        "/v1/health/connect/",
        "/v1/catalog/node-services/",
        "/v1/health/service/",
        "/v1/health/node/",
        "/v1/health/checks/",
        "/v1/health/state/",
    ];
    EXACT.contains(&path)
        || PREFIXES.iter().any(|p| path.starts_with(p))
        || (key == "filter"
            && (path == "/v1/agent/members" || path.starts_with("/v1/catalog/node/")))
}

/// `?consistent` on a read: the read waits behind a linearizable barrier (the leader confirms
/// with a quorum that it still leads, and this node applies everything acknowledged before the
/// request), as Consul's consistent mode, and fails with a 503 when no quorum confirms in time;
/// without it every read is answered from this agent's replica, as Consul's `?stale`.
async fn consistent_reads(state: &ApiState, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::GET {
        return next.run(req).await;
    }
    let Some(q) = req.uri().query() else {
        return next.run(req).await;
    };
    let (mut consistent, mut stale, mut dc) = (false, false, None);
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        let on = || blocking::flag(&k, &v);
        match &*k {
            "consistent" => match on() {
                Ok(b) => consistent = b,
                Err(e) => return e.into_response(),
            },
            "stale" => match on() {
                Ok(b) => stale = b,
                Err(e) => return e.into_response(),
            },
            "dc" if !v.is_empty() => dc = Some(v.into_owned()),
            _ => {}
        }
    }
    if !consistent {
        return next.run(req).await;
    }
    if stale {
        return ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        )
        .into_response();
    }
    let catalog = state.catalog();
    if dc.is_some_and(|d| !d.eq_ignore_ascii_case(catalog.datacenter())) {
        return ApiError::bad_request(
            "?consistent with another datacenter: Meridian answers other datacenters from its replica of their catalog, which no read of theirs can be made linearizable from here",
        )
        .into_response();
    }
    match catalog.read_barrier().await {
        Ok(index) => state.settle_to(index).await,
        Err(e) => return ApiError::from(e).into_response(),
    }
    next.run(req).await
}

/// Why Meridian cannot honour `?key=value`, if it cannot.
fn unsupported_param(key: &str, value: &str) -> Option<&'static str> {
    match key {
        "near" => Some(
            "sorting by network distance is not supported: Meridian measures RTT between datacenters, not nodes",
        ),
        "ns" | "partition" | "sg" if !value.is_empty() && value != "default" => {
            Some("Meridian has only the default namespace, partition and sameness group")
        }
        "peer" if !value.is_empty() => Some("cluster peering is not supported"),
        "merge-central-config" => Some("Meridian has no central config entries"),
        _ => None,
    }
}

/// Decides whether the request's token covers its endpoint, before any handler runs; handlers
/// that change one service check the [`Grant`] this leaves in the request for that service.
async fn check_acl<F, Fut>(
    acl: &Acl,
    api: &(dyn Fn() -> Arc<Tokens> + Sync),
    req: Request,
    next: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let (mut parts, body) = req.into_parts();
    let need = Need::of(&parts.method, parts.uri.path());
    let token = presented_token(&parts);
    match acl.authorize(token.as_deref(), need, api) {
        Ok(grant) => {
            parts.extensions.insert(grant);
            next(Request::from_parts(parts, body)).await
        }
        Err(denied) => {
            tracing::info!(reason = %denied, "request refused by acl");
            ApiError::from(denied).into_response()
        }
    }
}

/// `PUT /v1/agent/reload` (Consul's): the agent re-reads its config file, as on SIGHUP. 200 with
/// what changed; 400 with the reason when the file cannot be applied (then nothing changed).
async fn agent_reload(State(state): State<ApiState>) -> Result<String, ApiError> {
    let Some(reload) = &state.inner.reload else {
        return Err(ApiError::bad_request(
            "this agent has no config file to reload (--dev)",
        ));
    };
    let (tx, rx) = oneshot::channel();
    let unavailable = || ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the agent is shutting down".into(),
    };
    reload.send(tx).await.map_err(|_| unavailable())?;
    match rx.await.map_err(|_| unavailable())? {
        Ok(changed) => Ok(changed),
        Err(why) => Err(ApiError::bad_request(why)),
    }
}

async fn unknown_path() -> ApiError {
    ApiError::not_found("Invalid URL path: not a recognized HTTP API endpoint")
}

async fn metrics_page(State(state): State<ApiState>) -> Response {
    crate::metrics::page(&state.inner.registry)
}
