//! Failover endpoints: every DC's liveness and RTT as this node measures them
//! (`GET /v1/coordinate/datacenters`), and an operator's drain of this node's DC
//! (`PUT`/`DELETE /v1/operator/drain`).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use meridian_catalog::Command;
use meridian_topology::{DRAIN_SERVICE, Instance};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ApiState;
use super::body::read_body;
use super::error::ApiError;

/// One DC as this node sees it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DcJson<'a> {
    datacenter: &'a str,
    local: bool,
    status: &'static str,
    /// Smoothed round trip of the data-plane probes, in milliseconds.
    rtt_ms: Option<f64>,
    /// The control stream is lost while the data plane answers.
    stale: bool,
    /// Milliseconds in this status.
    for_ms: u64,
}

/// `GET /v1/coordinate/datacenters`: every DC this node knows, local first, with its status
/// and RTT (Consul answers Vivaldi coordinates here; we answer what we measure).
pub(super) async fn datacenters(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let view = state.view();
    let now = state.node().map_or(0, |n| n.clock.now_ms());
    let f = view.failover();
    let list: Vec<DcJson<'_>> = view
        .datacenters()
        .into_iter()
        .enumerate()
        .map(|(i, dc)| {
            let l = f.liveness(dc);
            DcJson {
                datacenter: dc,
                local: i == 0,
                status: l.status.as_str(),
                rtt_ms: l.rtt_us.map(|us| f64::from(us) / 1000.0),
                stale: l.stale,
                for_ms: now.saturating_sub(l.since_ms),
            }
        })
        .collect();
    Json(json!(list))
}

/// The optional body of a drain.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DrainBody {
    reason: Option<String>,
}

/// `PUT /v1/operator/drain`: drains this node's DC: answers and routes everywhere move away
/// from it until it is undrained. Idempotent.
pub(super) async fn drain(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = read_body(body, state.max_body_bytes()).await?;
    let parsed: DrainBody = if body.iter().all(u8::is_ascii_whitespace) {
        DrainBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?
    };
    let cat = state.catalog();
    let mut meta = std::collections::BTreeMap::new();
    if let Some(reason) = parsed.reason.filter(|r| !r.is_empty()) {
        meta.insert("reason".to_owned(), reason.chars().take(512).collect());
    }
    let instance = Instance {
        id: DRAIN_SERVICE.to_owned(),
        service: DRAIN_SERVICE.to_owned(),
        node: cat.node_name().to_owned(),
        address: String::new(),
        port: 0,
        tags: Vec::new(),
        meta,
        weights: Default::default(),
        create_index: 0,
        modify_index: 0,
    };
    // Deliberate (an operator or a drill): worth a line, not a warning.
    tracing::info!(dc = %cat.datacenter(), "datacenter drained by an operator");
    state
        .write(Command::Register {
            instance,
            checks: Vec::new(),
        })
        .await?;
    Ok(Json(
        json!({ "Datacenter": cat.datacenter(), "Drained": true }),
    ))
}

/// `DELETE /v1/operator/drain`: undrains this node's DC (whichever node drained it).
pub(super) async fn undrain(
    State(state): State<ApiState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cat = state.catalog();
    let marks: Vec<(String, String)> = cat
        .view()
        .local()
        .instances_of(DRAIN_SERVICE)
        .map(|i| (i.node.clone(), i.id.clone()))
        .collect();
    for (node, id) in marks {
        state.write(Command::Deregister { node, id }).await?;
    }
    tracing::info!(dc = %cat.datacenter(), "datacenter undrained by an operator");
    Ok(Json(
        json!({ "Datacenter": cat.datacenter(), "Drained": false }),
    ))
}
