//! Drills started through the API (`POST /v1/operator/drill`, the UI's "run a drill"), their
//! progress and their reports (`GET /v1/operator/drills`, `GET /v1/operator/drill/{id}`).
//!
//! The drill itself (drain or fail, probe every DC, restore, analyse) is the binary's engine, the
//! one `meridian drill` runs: the node holds only a [`DrillRunner`] the binary hands it, the
//! drills it started (one at a time, the last [`MAX_KEPT`] kept in memory) and their state. The
//! probes go to one node of every DC, found in the catalog: every gateway advertises its node's
//! HTTP address (`meridian-http` in its instance's meta).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use meridian_topology::names::is_label;
use meridian_topology::{GATEWAY_SERVICE, Health, View};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::blocking::{DEFAULT_WAIT, MAX_WAIT, ReadParams, digest_index};
use super::body::read_body;
use super::catalog::Pairs;
use super::register::decode_fields;
use super::{ApiError, ApiState};
use crate::acl::presented_token;

/// Drills kept (running or finished); the oldest finished one goes first.
pub const MAX_KEPT: usize = 20;
/// Longest drill the API starts (`For`): the CLI allows an hour, a button should not.
const MAX_FOR: Duration = Duration::from_secs(600);
/// The meta key of a gateway instance that carries its node's HTTP API address.
pub const HTTP_META: &str = "meridian-http";

/// What a drill does, as the API takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillRequest {
    /// `dc-down` or `service-down`.
    pub kind: String,
    /// The DC drained, or whose instances fail.
    pub datacenter: String,
    /// The service probed (and failed, for `service-down`); `None` lets the engine pick.
    pub service: Option<String>,
    /// How long the failure lasts.
    pub duration: Duration,
    /// One HTTP API address (`host:port`) per DC to probe from, this node's first.
    pub http: Vec<String>,
    /// The caller's token, for the drill's own calls (drain, check updates, reads).
    pub token: Option<String>,
    /// The DNS domain names are resolved in.
    pub domain: String,
}

/// A drill's state, as its runner publishes it while it runs.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DrillState {
    /// `preparing`, `baseline`, `failing`, `failing-back`, `done` or `failed`.
    pub phase: String,
    /// The report so far (the engine's JSON report), once probing started.
    pub report: Option<Value>,
    /// What went wrong, when the phase is `failed`.
    pub error: Option<String>,
    /// The engine's progress lines, oldest first.
    pub log: Vec<String>,
}

/// A running drill: a future that publishes its state until it ends.
pub type DrillRun = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs drills for the API: the binary's drill engine.
pub trait DrillRunner: Send + Sync {
    /// The drill `req`, publishing its state on `out` until it ends (`done` or `failed`); when
    /// `stop` turns true (the node is shutting down) it restores what it changed at once.
    fn run(
        &self,
        req: DrillRequest,
        out: watch::Sender<DrillState>,
        stop: watch::Receiver<bool>,
    ) -> DrillRun;
}

/// One drill this node started.
struct Entry {
    id: u64,
    started_unix_ms: u64,
    kind: String,
    datacenter: String,
    state: watch::Receiver<DrillState>,
}

impl Entry {
    fn finished(&self) -> bool {
        matches!(self.state.borrow().phase.as_str(), "done" | "failed")
    }

    fn json(&self, with_report: bool) -> Value {
        let s = self.state.borrow();
        let mut v = json!({
            "ID": self.id.to_string(),
            "Kind": self.kind,
            "Datacenter": self.datacenter,
            "StartedUnixMs": self.started_unix_ms,
            "Phase": s.phase,
            "Error": s.error,
        });
        if with_report {
            v["Report"] = s.report.clone().unwrap_or(Value::Null);
            v["Log"] = json!(s.log);
        }
        v
    }
}

/// The drills of one node and the engine that runs them.
#[derive(Default)]
pub struct Drills {
    runner: std::sync::OnceLock<Arc<dyn DrillRunner>>,
    kept: Mutex<VecDeque<Entry>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Drills {
    /// Lets the API start drills with `runner` (the first one set stays).
    pub fn set_runner(&self, runner: Arc<dyn DrillRunner>) {
        let _ = self.runner.set(runner);
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `req` unless a drill is running (it stops early when `stop` turns true); its ID.
    fn start(
        &self,
        req: DrillRequest,
        started_unix_ms: u64,
        stop: watch::Receiver<bool>,
    ) -> Result<u64, ApiError> {
        let runner = self.runner.get().ok_or_else(|| ApiError {
            status: StatusCode::NOT_IMPLEMENTED,
            message: "this node runs no drills (a gateway-only node, or an embedded API)".into(),
        })?;
        let mut kept = self.kept();
        if let Some(running) = kept.iter().find(|e| !e.finished()) {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!("drill {} is still running: one drill at a time", running.id),
            });
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let (tx, rx) = watch::channel(DrillState {
            phase: "preparing".into(),
            ..DrillState::default()
        });
        kept.push_back(Entry {
            id,
            started_unix_ms,
            kind: req.kind.clone(),
            datacenter: req.datacenter.clone(),
            state: rx,
        });
        while kept.len() > MAX_KEPT {
            kept.pop_front();
        }
        tokio::spawn(runner.run(req, tx, stop));
        Ok(id)
    }
}

/// The body of `POST /v1/operator/drill`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DrillBody {
    kind: String,
    datacenter: String,
    service: String,
    #[serde(rename = "For")]
    duration: String,
}

/// One node per DC to probe from, this node first: the HTTP addresses the DCs' gateways
/// advertise (healthy ones first).
pub fn probe_nodes(view: &View, own_http: &str) -> Vec<String> {
    let mut out = vec![own_http.to_owned()];
    for r in view.remotes() {
        let mut gateways: Vec<_> = r
            .state
            .instances_of(GATEWAY_SERVICE)
            .filter_map(|i| Some((r.state.health_of(i), i.meta.get(HTTP_META)?)))
            .collect();
        gateways.sort_by_key(|(h, _)| *h != Health::Passing);
        if let Some((_, addr)) = gateways.first() {
            out.push((*addr).clone());
        }
    }
    out
}

/// `POST /v1/operator/drill` (operator): starts a drill; 202 with its ID.
pub(super) async fn start(
    State(state): State<ApiState>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let token = presented_token(&parts);
    let body: DrillBody = decode_fields(
        &read_body(body, state.max_body_bytes()).await?,
        &["Kind", "Datacenter", "Service", "For"],
        &|_| {},
    )?;
    if body.kind != "dc-down" && body.kind != "service-down" {
        return Err(ApiError::bad_request(
            "Kind must be dc-down or service-down",
        ));
    }
    let datacenter = body.datacenter.to_ascii_lowercase();
    let view = state.view();
    if !view.datacenters().iter().any(|d| *d == datacenter) {
        return Err(ApiError::bad_request(format!(
            "Datacenter {datacenter:?} is not one this node knows"
        )));
    }
    let service = (!body.service.is_empty()).then(|| body.service.to_ascii_lowercase());
    if let Some(s) = &service
        && !is_label(s)
    {
        return Err(ApiError::bad_request(format!(
            "Service {s:?} is not a DNS label"
        )));
    }
    if body.kind == "service-down" && service.is_none() {
        return Err(ApiError::bad_request("a service-down drill needs Service"));
    }
    let duration = crate::duration::parse_go_duration(if body.duration.is_empty() {
        "10s"
    } else {
        &body.duration
    })
    .map_err(|e| ApiError::bad_request(format!("For: {e}")))?;
    if duration < Duration::from_secs(1) || duration > MAX_FOR {
        return Err(ApiError::bad_request("For must be between 1s and 10m"));
    }
    let node = state.node().ok_or_else(|| ApiError {
        status: StatusCode::NOT_IMPLEMENTED,
        message: "this node has no addresses to probe from".into(),
    })?;
    let own = if node.http.ip().is_unspecified() {
        format!("127.0.0.1:{}", node.http.port())
    } else {
        node.http.to_string()
    };
    let req = DrillRequest {
        kind: body.kind,
        datacenter,
        service,
        duration,
        http: probe_nodes(&view, &own),
        token,
        domain: node.domain.clone(),
    };
    let id = state
        .drills()
        .start(req, meridian_federation::now_ms(), state.closing())?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "ID": id.to_string() }))).into_response())
}

/// `GET /v1/operator/drills`: the drills this node started, newest first, without reports.
pub(super) async fn list(State(state): State<ApiState>) -> Json<Value> {
    let kept = state.drills().kept();
    Json(Value::Array(
        kept.iter().rev().map(|e| e.json(false)).collect(),
    ))
}

/// `GET /v1/operator/drill/{id}`: one drill with its report so far; a blocking query (`?index=`)
/// waits until the drill's state changes.
pub(super) async fn get_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(&q)?;
    let not_found = || ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no drill {id} on this node"),
    };
    let id: u64 = id.parse().map_err(|_| not_found())?;
    let rx = {
        let kept = state.drills().kept();
        kept.iter()
            .find(|e| e.id == id)
            .map(|e| e.state.clone())
            .ok_or_else(not_found)?
    };
    let digest = |s: &DrillState| digest_index(&serde_json::to_string(s).unwrap_or_default());
    if let Some(seen) = params.index.filter(|i| *i > 0) {
        let wait = params.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
        let mut rx = rx.clone();
        let mut closing = state.closing();
        tokio::select! {
            _ = rx.wait_for(|s| digest(s) != seen) => {}
            () = tokio::time::sleep(wait) => {}
            _ = closing.wait_for(|c| *c) => {}
        }
    }
    let kept = state.drills().kept();
    let e = kept.iter().find(|e| e.id == id).ok_or_else(not_found)?;
    let index = digest(&e.state.borrow());
    let mut response = Json(e.json(true)).into_response();
    response
        .headers_mut()
        .insert("X-Consul-Index", axum::http::HeaderValue::from(index));
    Ok(response)
}
