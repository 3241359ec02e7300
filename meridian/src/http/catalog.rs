//! The read endpoints over the datacenter's catalog: `/v1/catalog/*`, `/v1/health/service/*`
//! and `/v1/status/*`, all answered from the current view, blocking where Consul blocks.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use meridian_topology::{Health, Instance, View};
use serde::Serialize;

use super::blocking::{ReadParams, consul_headers, wait_for_view};
use super::consul::{CatalogServiceJson, NodeJson, ServiceEntryJson};
use super::{ApiError, ApiState};

/// Query pairs in order, so that repeated keys (`?tag=a&tag=b`) survive.
pub(super) type Pairs = Query<Vec<(String, String)>>;

/// Parses the read parameters, waits as a blocking query asks, and answers `build(view)` as
/// JSON with Consul's index headers.
pub(super) async fn read<T: Serialize>(
    state: &ApiState,
    pairs: &[(String, String)],
    build: impl FnOnce(&View, &ReadParams) -> T,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(pairs)?;
    let cat = state.catalog();
    params.check_dc(&cat.view())?;
    let view = wait_for_view(cat, &params, state.closing()).await;
    let body = build(&view, &params);
    Ok((consul_headers(cat, &view), Json(body)).into_response())
}

fn has_tags(inst: &Instance, tags: &[String]) -> bool {
    tags.iter().all(|t| inst.tags.contains(t))
}

/// `GET /v1/catalog/services`: service name to the union of its instances' tags.
pub(super) async fn catalog_services(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    read(&state, &q, |view, _| {
        let dc = view.local();
        dc.service_names()
            .map(|name| {
                let mut tags: Vec<String> = dc
                    .instances_of(name)
                    .flat_map(|i| i.tags.iter().cloned())
                    .collect();
                tags.sort_unstable();
                tags.dedup();
                (name.to_owned(), tags)
            })
            .collect::<BTreeMap<_, _>>()
    })
    .await
}

/// `GET /v1/catalog/service/{name}`: the instances of a service (`?tag=` filters).
pub(super) async fn catalog_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    read(&state, &q, |view, p| {
        let dc = view.local();
        dc.instances_of(&name)
            .filter(|i| has_tags(i, &p.tags))
            .map(|i| CatalogServiceJson::new(view.datacenter(), dc, i))
            .collect::<Vec<_>>()
    })
    .await
}

/// `GET /v1/health/service/{name}`: instances with their node and checks (`?passing`, `?tag=`).
pub(super) async fn health_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    read(&state, &q, |view, p| {
        let dc = view.local();
        dc.instances_of(&name)
            .filter(|i| has_tags(i, &p.tags))
            .filter(|i| !p.passing || dc.health_of(i) == Health::Passing)
            .map(|i| ServiceEntryJson::new(view.datacenter(), dc, i))
            .collect::<Vec<_>>()
    })
    .await
}

/// `GET /v1/catalog/nodes`.
pub(super) async fn catalog_nodes(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    read(&state, &q, |view, _| {
        view.local()
            .nodes()
            .map(|n| NodeJson::new(view.datacenter(), &n.name, Some(n)))
            .collect::<Vec<_>>()
    })
    .await
}

/// `GET /v1/catalog/datacenters`: the datacenters this node knows, local first.
pub(super) async fn catalog_datacenters(State(state): State<ApiState>) -> Json<Vec<String>> {
    let view = state.catalog().view();
    Json(view.datacenters().into_iter().map(str::to_owned).collect())
}

/// `GET /v1/status/leader`: the leader's RPC address as a JSON string, empty when none is known.
pub(super) async fn status_leader(State(state): State<ApiState>) -> Json<String> {
    Json(state.catalog().status().leader.unwrap_or_default())
}

/// `GET /v1/status/peers`: the voters' RPC addresses.
pub(super) async fn status_peers(State(state): State<ApiState>) -> Json<Vec<String>> {
    Json(state.catalog().status().peers)
}
