//! Failover endpoints: every DC's liveness and RTT as this node measures them
//! (`GET /v1/federation/datacenters`), the same RTTs as Consul's network coordinates
//! (`GET /v1/coordinate/datacenters`, `/v1/coordinate/nodes`), and an operator's drain of this
//! node's DC (`PUT`/`DELETE /v1/operator/drain`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use meridian_catalog::Command;
use meridian_topology::{DRAIN_SERVICE, Instance, View};
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
    /// Were the DC lost now, the most milliseconds until this node finds it `down`
    /// (`down_after_ms`, plus twice the RTT at most that again, plus half an RTT); absent for
    /// the local DC.
    #[serde(skip_serializing_if = "Option::is_none")]
    detection_bound_ms: Option<u64>,
}

/// `GET /v1/federation/datacenters`: every DC this node knows, local first, with its status
/// and measured RTT.
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
                detection_bound_ms: (i > 0 && l.bound_ms > 0).then_some(l.bound_ms),
            }
        })
        .collect();
    Json(json!(list))
}

/// Consul's network coordinate.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CoordJson {
    vec: [f64; 8],
    error: f64,
    adjustment: f64,
    height: f64,
}

/// Consul's smallest height: a coordinate always has some.
const MIN_HEIGHT: f64 = 1.0e-5;

/// The coordinate of a DC measured `rtt_us` away from this one (this DC: the origin). Consul's
/// estimate of the RTT between two coordinates is their distance plus both heights, so placing
/// every DC on one axis at its measured RTT makes the estimate from this DC exact; between two
/// other DCs it is the difference of their RTTs, a lower bound.
fn coord(rtt_us: Option<u32>) -> CoordJson {
    let mut vec = [0.0; 8];
    vec[0] = rtt_us.map_or(0.0, |us| f64::from(us) / 1e6);
    CoordJson {
        vec,
        // Vivaldi starts at 1.5 and falls as samples agree; a measured RTT is as good as it
        // gets, an unmeasured one is the starting guess.
        error: if rtt_us.is_some() { 0.0 } else { 1.5 },
        adjustment: 0.0,
        height: MIN_HEIGHT,
    }
}

/// One DC's servers with their coordinates (Consul's `DatacenterMap`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DcCoordsJson {
    datacenter: String,
    #[serde(rename = "AreaID")]
    area_id: &'static str,
    coordinates: Vec<NodeCoordJson>,
}

/// A node with its coordinate.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeCoordJson {
    node: String,
    segment: &'static str,
    partition: &'static str,
    coord: CoordJson,
}

impl NodeCoordJson {
    /// `node`, of a DC `rtt_us` away from this one, in the default segment and partition.
    fn new(node: String, rtt_us: Option<u32>) -> Self {
        NodeCoordJson {
            node,
            segment: "",
            partition: "default",
            coord: coord(rtt_us),
        }
    }
}

/// The RTT from this DC to `dc` that coordinates place it at: 0 for this DC itself, else the
/// measured one (`None` until measured).
fn rtt_from_here(view: &View, dc: &str) -> Option<u32> {
    if dc.eq_ignore_ascii_case(view.datacenter()) {
        Some(0)
    } else {
        view.failover().rtt_us(dc)
    }
}

/// `GET /v1/coordinate/datacenters`, in Consul's shape: each DC's servers (`<node>.<dc>`) at
/// the coordinate of their DC's measured RTT from this one. Meridian measures RTT between DCs
/// (its probes through the gateways), not between nodes: a DC's servers share its coordinate.
pub(super) async fn coordinate_datacenters(
    State(state): State<ApiState>,
) -> Json<Vec<DcCoordsJson>> {
    let view = state.view();
    let list = view
        .datacenters()
        .into_iter()
        .map(|dc| {
            let rtt = rtt_from_here(&view, dc);
            let servers = view.dc_state(Some(dc)).map(|(_, s)| s);
            DcCoordsJson {
                datacenter: dc.to_owned(),
                area_id: "wan",
                coordinates: servers
                    .into_iter()
                    .flat_map(super::agent::server_nodes)
                    .map(|n| NodeCoordJson::new(format!("{}.{dc}", n.name), rtt))
                    .collect(),
            }
        })
        .collect();
    Json(list)
}

/// `GET /v1/coordinate/nodes[?dc=]`, in Consul's shape: the DC's nodes at the coordinate of
/// their DC (the origin for this one); Meridian does not measure RTT between nodes of a DC.
pub(super) async fn coordinate_nodes(
    State(state): State<ApiState>,
    axum::extract::Query(q): super::catalog::Pairs,
) -> Result<axum::response::Response, ApiError> {
    node_coordinates(&state, &q, None).await
}

/// `GET /v1/coordinate/node/{node}[?dc=]`: that node's entry of `/v1/coordinate/nodes`, as a
/// one-element list; an empty 404 for a node the DC does not have, as Consul answers.
pub(super) async fn coordinate_node(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    axum::extract::Query(q): super::catalog::Pairs,
) -> Result<axum::response::Response, ApiError> {
    node_coordinates(&state, &q, Some(&node)).await
}

/// The coordinates of the DC's nodes (only `only`, if given: a 404 if the DC has no such node),
/// blocking as `q` asks.
async fn node_coordinates(
    state: &ApiState,
    q: &[(String, String)],
    only: Option<&str>,
) -> Result<axum::response::Response, ApiError> {
    let (view, p) = super::catalog::read_view(state, q).await?;
    let (dc, nodes) = super::catalog::dc_of(&view, &p)?;
    let rtt = rtt_from_here(&view, dc);
    let list: Vec<NodeCoordJson> = nodes
        .nodes()
        .filter(|n| only.is_none_or(|name| n.name.eq_ignore_ascii_case(name)))
        .map(|n| NodeCoordJson::new(n.name.clone(), rtt))
        .collect();
    let mut response = super::catalog::answer(state, &view, &p, &list);
    if only.is_some() && list.is_empty() {
        // Consul's answer for a node it has no coordinates of: a 404 with no body, and its
        // index headers (clients read the index of every coordinate answer, py-consul fails
        // without it).
        *response.status_mut() = axum::http::StatusCode::NOT_FOUND;
        *response.body_mut() = Body::empty();
        response
            .headers_mut()
            .remove(axum::http::header::CONTENT_TYPE);
    }
    Ok(response)
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
        service: DRAIN_SERVICE.into(),
        node: cat.node_name().into(),
        address: String::new(),
        port: 0,
        tags: Vec::new(),
        meta,
        weights: Default::default(),
        create_index: 0,
        modify_index: 0,
        proxy: None,
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
        .map(|i| (i.node.to_string(), i.id.clone()))
        .collect();
    for (node, id) in marks {
        state.write(Command::Deregister { node, id }).await?;
    }
    tracing::info!(dc = %cat.datacenter(), "datacenter undrained by an operator");
    Ok(Json(
        json!({ "Datacenter": cat.datacenter(), "Drained": false }),
    ))
}
