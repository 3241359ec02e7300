//! The read endpoints over the datacenter's catalog: `/v1/catalog/*`, `/v1/health/service/*`
//! and `/v1/status/*`, all answered from the current view, blocking where Consul blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use meridian_catalog::{CatalogError, MembershipChange};
use meridian_topology::dc::DcState;
use meridian_topology::{Health, Instance, ServiceQuery, View, resolve};
use serde::Serialize;

use super::blocking::{
    ReadParams, consul_headers, resolution_index, wait_for_resolution, wait_for_view,
};
use super::consul::{
    AgentServiceJson, CatalogServiceJson, NodeJson, NodeServiceListJson, NodeServicesJson,
    ServiceEntryJson, checks_json,
};
use super::filter::Filter;
use super::{ApiError, ApiState};

/// Query pairs in order, so that repeated keys (`?tag=a&tag=b`) survive.
pub(super) type Pairs = Query<Vec<(String, String)>>;

/// Parses the read parameters and waits as a blocking query asks: the view to answer from.
pub(super) async fn read_view(
    state: &ApiState,
    pairs: &[(String, String)],
) -> Result<(Arc<View>, ReadParams), ApiError> {
    let params = ReadParams::parse(pairs)?;
    let view = wait_view(state, &params).await?;
    Ok((view, params))
}

/// [`read_view`] for a listing endpoint: also its `?filter`.
pub(super) async fn read_view_filtered(
    state: &ApiState,
    pairs: &[(String, String)],
) -> Result<(Arc<View>, ReadParams, Option<Filter>), ApiError> {
    let (params, filter) = ReadParams::parse_filtered(pairs)?;
    let view = wait_view(state, &params).await?;
    Ok((view, params, filter))
}

/// The view to answer `params` from: its DC checked, then waited for as a blocking query asks.
async fn wait_view(state: &ApiState, params: &ReadParams) -> Result<Arc<View>, ApiError> {
    params.check_dc(&state.view())?;
    Ok(wait_for_view(state.views(), params, state.closing()).await)
}

/// The items of `items` that `filter` keeps (all without one).
pub(super) fn filtered<T: Serialize>(filter: Option<&Filter>, items: Vec<T>) -> Vec<T> {
    match filter {
        Some(f) => f.retain(items),
        None => items,
    }
}

/// `body` as JSON with Consul's index headers for datacenter `dc` of `view`.
pub(super) fn answer(
    state: &ApiState,
    view: &View,
    p: &ReadParams,
    body: &impl Serialize,
) -> Response {
    let mut headers = consul_headers(state.catalog(), view, p.dc.as_deref());
    if p.cached {
        // The view is Meridian's cache: every answer comes from it, kept current by Raft and
        // federation rather than by a refresh.
        headers.insert("x-cache", axum::http::HeaderValue::from_static("HIT"));
        headers.insert("age", axum::http::HeaderValue::from_static("0"));
    }
    (headers, Json(body)).into_response()
}

/// `body` as JSON with Consul's index headers for the local datacenter (the agent endpoints).
pub(super) fn answer_local(state: &ApiState, view: &View, body: &impl Serialize) -> Response {
    (consul_headers(state.catalog(), view, None), Json(body)).into_response()
}

/// The datacenter a read asks for (`?dc=`, else the local one) and its catalog.
pub(super) fn dc_of<'v>(
    view: &'v View,
    p: &ReadParams,
) -> Result<(&'v str, &'v DcState), ApiError> {
    view.dc_state(p.dc.as_deref())
        .ok_or_else(|| ApiError::internal("No path to datacenter"))
}

/// Which instances a service read lists: the service's own, or its mesh endpoints (the
/// `connect-proxy` sidecars that front it, as `/v1/*/connect/{name}` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoints {
    /// The instances registered under the name.
    Service,
    /// The sidecars whose destination is the name.
    Connect,
}

/// The instances of `name` (or its sidecars) that carry every tag `p` asks for, on nodes with
/// its node metadata.
fn tagged_instances<'a>(
    dc: &'a DcState,
    name: &str,
    which: Endpoints,
    p: &'a ReadParams,
) -> impl Iterator<Item = &'a Instance> + 'a {
    let named = (which == Endpoints::Service).then(|| dc.instances_of(name));
    let proxies = (which == Endpoints::Connect).then(|| dc.proxies_of(name));
    named
        .into_iter()
        .flatten()
        .chain(proxies.into_iter().flatten())
        .filter(|i| p.tags.iter().all(|t| i.tags.contains(t)))
        .filter(|i| p.node_meta_ok(dc.node(&i.node)))
}

/// `GET /v1/catalog/services`: service name to the union of its instances' tags.
pub(super) async fn catalog_services(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let (dc_name, dc) = dc_of(&view, &p)?;
    // As Consul, a filter selects instances (`CatalogService` fields) before they are grouped.
    let kept = |i: &Instance| {
        p.node_meta_ok(dc.node(&i.node))
            && filter
                .as_ref()
                .is_none_or(|f| f.matches_serialized(&CatalogServiceJson::new(dc_name, dc, i)))
    };
    let services: BTreeMap<&str, BTreeSet<&str>> = dc
        .service_names()
        .filter_map(|name| {
            let mut any = false;
            let tags = dc
                .instances_of(name)
                .filter(|i| kept(i))
                .inspect(|_| any = true)
                .flat_map(|i| i.tags.iter().map(String::as_str))
                .collect();
            any.then_some((name, tags))
        })
        .collect();
    Ok(answer(&state, &view, &p, &services))
}

/// `GET /v1/catalog/service/{name}`: the instances of a service (`?tag=` filters).
pub(super) async fn catalog_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    catalog_entries(&state, &name, Endpoints::Service, &q).await
}

/// `GET /v1/catalog/connect/{name}`: the service's mesh endpoints (its sidecars).
pub(super) async fn catalog_connect(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    catalog_entries(&state, &name, Endpoints::Connect, &q).await
}

async fn catalog_entries(
    state: &ApiState,
    name: &str,
    which: Endpoints,
    q: &[(String, String)],
) -> Result<Response, ApiError> {
    let (view, p, filter) = read_view_filtered(state, q).await?;
    let (dc_name, dc) = dc_of(&view, &p)?;
    let entries: Vec<_> = tagged_instances(dc, name, which, &p)
        .map(|i| CatalogServiceJson::new(dc_name, dc, i))
        .collect();
    let entries = filtered(filter.as_ref(), entries);
    Ok(answer(state, &view, &p, &entries))
}

/// `GET /v1/health/service/{name}`: instances with their node and checks (`?passing`, `?tag=`).
pub(super) async fn health_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    health_entries(&state, &name, Endpoints::Service, &q).await
}

/// `GET /v1/health/connect/{name}`: the service's mesh endpoints (its sidecars) with their
/// checks; `?failover` as for `/v1/health/service`.
pub(super) async fn health_connect(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    health_entries(&state, &name, Endpoints::Connect, &q).await
}

async fn health_entries(
    state: &ApiState,
    name: &str,
    which: Endpoints,
    q: &[(String, String)],
) -> Result<Response, ApiError> {
    let (p, filter) = ReadParams::parse_filtered(q)?;
    if p.failover {
        return failover_entries(state, &p, filter.as_ref(), name, which).await;
    }
    let view = wait_view(state, &p).await?;
    let (dc_name, dc) = dc_of(&view, &p)?;
    let entries: Vec<_> = tagged_instances(dc, name, which, &p)
        .filter(|i| !p.passing || dc.health_of(i) == Health::Passing)
        .map(|i| ServiceEntryJson::new(dc_name, dc, i))
        .collect();
    let entries = filtered(filter.as_ref(), entries);
    Ok(answer(state, &view, &p, &entries))
}

/// `GET /v1/health/service/{name}?failover`: what `<name>.service.<domain>` resolves to (the
/// local DC, or the DC the failover policy moved it to), as health entries of the instances
/// where they are; `X-Meridian-Datacenter` names the DC and `X-Meridian-Failovers` how many
/// were passed over. Consul has no such answer (its HTTP API never fails over). Blocks until
/// the answer changes.
async fn failover_entries(
    state: &ApiState,
    p: &ReadParams,
    filter: Option<&Filter>,
    name: &str,
    which: Endpoints,
) -> Result<Response, ApiError> {
    if p.dc.is_some() {
        return Err(ApiError::bad_request(
            "?failover resolves by the failover policy: it does not take ?dc=",
        ));
    }
    let query = ServiceQuery {
        tags: &p.tags,
        only_passing: p.passing,
        connect: which == Endpoints::Connect,
        ..ServiceQuery::new(name, None)
    };
    // Blocking waits for the answer itself to change (its index is the answer's digest), so a
    // failover wakes it as a registration does.
    let view = wait_for_resolution(state.views(), p, state.closing(), |v| {
        resolution_index(v, &resolve(v, &query))
    })
    .await;
    let resolution = resolve(&view, &query);
    let index = resolution_index(&view, &resolution);
    let (dc, failovers, entries) = match resolution {
        Ok(res) => {
            let entries: Vec<_> = res
                .instances
                .iter()
                .filter(|(i, _)| p.node_meta_ok(res.state.node(&i.node)))
                .map(|(i, _)| ServiceEntryJson::new(res.dc, res.state, i))
                .collect();
            (res.dc, res.failovers, filtered(filter, entries))
        }
        // Nowhere to go: an empty answer from this DC, as for a service without instances.
        Err(_) => (view.datacenter(), 0, Vec::new()),
    };
    let mut response = answer(state, &view, p, &entries);
    let headers = response.headers_mut();
    headers.insert("x-consul-index", HeaderValue::from(index));
    if let Ok(v) = HeaderValue::from_str(dc) {
        headers.insert("x-meridian-datacenter", v);
    }
    headers.insert("x-meridian-failovers", HeaderValue::from(failovers));
    Ok(response)
}

/// `GET /v1/catalog/nodes`.
pub(super) async fn catalog_nodes(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let (dc_name, dc) = dc_of(&view, &p)?;
    let nodes: Vec<_> = dc
        .nodes()
        .filter(|n| p.node_meta_ok(Some(n)))
        .map(|n| NodeJson::new(dc_name, &n.name, Some(n)))
        .collect();
    let nodes = filtered(filter.as_ref(), nodes);
    Ok(answer(&state, &view, &p, &nodes))
}

/// `GET /v1/catalog/node/{node}`: the node and its instances by ID; `null` for a node the
/// catalog does not hold, as Consul answers.
pub(super) async fn catalog_node(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    // Consul filters this node's services, and has no ?node-meta here (the node is named).
    if !p.node_meta.is_empty() {
        return Err(ApiError::bad_request(
            "?node-meta is not supported on this endpoint",
        ));
    }
    let (dc_name, dc) = dc_of(&view, &p)?;
    let body = dc.node(&node).map(|n| {
        let services = dc
            .instances_on(&n.name)
            .map(|i| AgentServiceJson::new(dc_name, i))
            .collect();
        NodeServicesJson {
            node: NodeJson::new(dc_name, &n.name, Some(n)),
            services: filtered(filter.as_ref(), services)
                .into_iter()
                .map(|s| (s.id, s))
                .collect(),
        }
    });
    Ok(answer(&state, &view, &p, &body))
}

/// `GET /v1/catalog/node-services/{node}`: the node and its instances as a list.
pub(super) async fn catalog_node_services(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let (dc_name, dc) = dc_of(&view, &p)?;
    let known = dc.node(&node).filter(|n| p.node_meta_ok(Some(n)));
    let services = known
        .into_iter()
        .flat_map(|n| dc.instances_on(&n.name))
        .map(|i| AgentServiceJson::new(dc_name, i))
        .collect();
    let body = NodeServiceListJson {
        node: known.map(|n| NodeJson::new(dc_name, &n.name, Some(n))),
        services: filtered(filter.as_ref(), services),
    };
    Ok(answer(&state, &view, &p, &body))
}

/// `GET /v1/health/node/{node}`: the node's checks, node-level and of its instances.
pub(super) async fn health_node(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let (_, dc) = dc_of(&view, &p)?;
    let name = dc.node(&node).map_or(node.as_str(), |n| n.name.as_str());
    let checks = if p.node_meta_ok(dc.node(name)) {
        checks_json(dc, dc.checks_on(name))
    } else {
        Vec::new()
    };
    let checks = filtered(filter.as_ref(), checks);
    Ok(answer(&state, &view, &p, &checks))
}

/// `GET /v1/health/checks/{service}`: the checks of the service's instances.
pub(super) async fn health_checks(
    State(state): State<ApiState>,
    Path(service): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let (_, dc) = dc_of(&view, &p)?;
    let checks = checks_json(
        dc,
        dc.instances_of(&service)
            .filter(|i| p.node_meta_ok(dc.node(&i.node)))
            .flat_map(|i| dc.instance_checks(&i.node, &i.id)),
    );
    let checks = filtered(filter.as_ref(), checks);
    Ok(answer(&state, &view, &p, &checks))
}

/// `GET /v1/health/state/{state}`: every check in `passing`, `warning` or `critical`, or `any`.
pub(super) async fn health_state(
    State(state): State<ApiState>,
    Path(wanted): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let status = match wanted.as_str() {
        "any" => None,
        s => Some(Health::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid check state {s:?}: one of any, passing, warning, critical"
            ))
        })?),
    };
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let (_, dc) = dc_of(&view, &p)?;
    let checks = checks_json(
        dc,
        dc.checks()
            .filter(|c| status.is_none_or(|s| c.status == s))
            .filter(|c| p.node_meta_ok(dc.node(&c.node))),
    );
    let checks = filtered(filter.as_ref(), checks);
    Ok(answer(&state, &view, &p, &checks))
}

/// `GET /v1/catalog/datacenters`: the datacenters this node knows (local and federated), local
/// first, then by name (nearest first once RTTs are measured).
pub(super) async fn catalog_datacenters(State(state): State<ApiState>) -> Json<Vec<String>> {
    let view = state.view();
    Json(view.datacenters().into_iter().map(str::to_owned).collect())
}

/// Refuses `?dc=` naming another datacenter: the status endpoints describe this DC's Raft group,
/// and another DC's is not replicated here.
fn local_status(state: &ApiState, q: &[(String, String)]) -> Result<(), ApiError> {
    for (k, v) in q {
        if k == "dc" && !v.is_empty() && !v.eq_ignore_ascii_case(state.catalog().datacenter()) {
            return Err(ApiError::bad_request(format!(
                "?dc={v}: the Raft status of another datacenter is not replicated here; ask one of its agents"
            )));
        }
    }
    Ok(())
}

/// One server of `GET /v1/operator/raft/configuration`, in Consul's shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RaftServerJson {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    leader: bool,
    protocol_version: &'static str,
    voter: bool,
}

/// `GET /v1/operator/raft/configuration`: the DC's Raft members as this server knows them, in
/// Consul's shape. `ID` is the Raft node id, `Node` the catalog node that registered that rpc
/// address (empty until it has), `ProtocolVersion` names openraft (Consul's names its Raft
/// protocol generation, which does not apply).
pub(super) async fn operator_raft_configuration(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Json<serde_json::Value>, ApiError> {
    local_status(&state, &q)?;
    Ok(Json(raft_configuration_json(&state)))
}

/// The default time a new server gets to catch up before `add-peer` gives up on promoting it.
const DEFAULT_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(20);

/// `PUT /v1/operator/raft/peer?id=&address=[&catch-up=]`: adds a server to this DC's Raft group
/// (Meridian's; Consul's servers join by gossip instead). The server must run with
/// `[raft] join = true`; it joins as a learner, catches up (a snapshot, then the log) and becomes
/// a voter, through joint consensus. Answers the configuration after the change. Idempotent.
pub(super) async fn operator_raft_peer_add(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Json<serde_json::Value>, ApiError> {
    local_status(&state, &q)?;
    let id = peer_id(&q)?.ok_or_else(|| ApiError::bad_request("?id= is required"))?;
    let addr = param(&q, "address").ok_or_else(|| {
        ApiError::bad_request("?address= (the server's rpc host:port) is required")
    })?;
    if !is_host_port(addr) {
        return Err(ApiError::bad_request(format!(
            "?address={addr}: not host:port with a non-zero port"
        )));
    }
    let catch_up = match param(&q, "catch-up") {
        None => DEFAULT_CATCH_UP,
        Some(v) => crate::duration::parse_go_duration(v)
            .ok()
            .filter(|d| !d.is_zero() && *d <= meridian_catalog::MAX_CATCH_UP)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "?catch-up={v}: a duration between 1ms and {}",
                    crate::duration::format_go_duration(meridian_catalog::MAX_CATCH_UP)
                ))
            })?,
    };
    let change = MembershipChange::Add {
        id,
        addr: addr.to_owned(),
    };
    state
        .catalog()
        .change_membership(change, catch_up)
        .await
        .map_err(membership_error)?;
    Ok(Json(raft_configuration_json(&state)))
}

/// `DELETE /v1/operator/raft/peer?id=` or `?address=`: removes a server from this DC's Raft group
/// (Consul's `consul operator raft remove-peer`). A voter is demoted first, so a live one learns
/// it no longer votes and refuses writes; then it is dropped. Answers 200 with no body, as
/// Consul does.
pub(super) async fn operator_raft_peer_remove(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<(), ApiError> {
    local_status(&state, &q)?;
    let config = state.catalog().raft_configuration();
    let id = match (peer_id(&q)?, param(&q, "address")) {
        (Some(id), None) => config.members.iter().find(|m| m.id == id).map(|m| m.id),
        (None, Some(addr)) => config
            .members
            .iter()
            .find(|m| m.addr.eq_ignore_ascii_case(addr))
            .map(|m| m.id),
        _ => {
            return Err(ApiError::bad_request(
                "one of ?id= or ?address= names the server to remove",
            ));
        }
    };
    let id = id.ok_or_else(|| {
        ApiError::bad_request(format!(
            "{} was not found in the Raft configuration",
            q.iter()
                .find(|(k, _)| k == "id" || k == "address")
                .map_or("the server", |(_, v)| v.as_str())
        ))
    })?;
    state
        .catalog()
        .change_membership(MembershipChange::Remove { id }, DEFAULT_CATCH_UP)
        .await
        .map_err(membership_error)?;
    Ok(())
}

/// `?id=`: a Raft id (non-zero), when given.
fn peer_id(q: &[(String, String)]) -> Result<Option<u64>, ApiError> {
    param(q, "id")
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| ApiError::bad_request(format!("?id={v}: not a non-zero Raft id")))
        })
        .transpose()
}

fn param<'q>(q: &'q [(String, String)], key: &str) -> Option<&'q str> {
    q.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `host:port` with a non-zero port, no whitespace, and short enough for a Raft node record.
fn is_host_port(addr: &str) -> bool {
    addr.len() <= 256
        && !addr.chars().any(char::is_whitespace)
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        })
}

/// A refused change is the operator's to fix (400); everything else maps as writes do.
fn membership_error(e: CatalogError) -> ApiError {
    match e {
        CatalogError::MembershipRefused(_) => ApiError::bad_request(e.to_string()),
        other => other.into(),
    }
}

/// The DC's Raft members in Consul's shape (`Servers`, `Index`).
fn raft_configuration_json(state: &ApiState) -> serde_json::Value {
    let catalog = state.catalog();
    let config = catalog.raft_configuration();
    let view = catalog.view();
    let node_at = |addr: &str| {
        super::agent::server_nodes(view.local())
            .find(|n| {
                n.meta
                    .get(meridian_catalog::SERVER_META)
                    .is_some_and(|a| a == addr)
            })
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    let servers: Vec<RaftServerJson> = config
        .members
        .iter()
        .map(|m| RaftServerJson {
            id: m.id.to_string(),
            node: node_at(&m.addr),
            address: m.addr.clone(),
            leader: m.leader,
            protocol_version: "openraft",
            voter: m.voter,
        })
        .collect();
    serde_json::json!({ "Servers": servers, "Index": config.index })
}

/// `GET /v1/status/leader`: the leader's RPC address as a JSON string, empty when none is known.
pub(super) async fn status_leader(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Json<String>, ApiError> {
    local_status(&state, &q)?;
    Ok(Json(state.catalog().status().leader.unwrap_or_default()))
}

/// `GET /v1/status/peers`: the voters' RPC addresses.
pub(super) async fn status_peers(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Json<Vec<String>>, ApiError> {
    local_status(&state, &q)?;
    Ok(Json(state.catalog().status().peers))
}
