//! Consul's prepared queries (`/v1/query`): create, list, read, update and delete them, and
//! execute one by ID or name, with the failover it names.
//!
//! Queries are kept in the local datacenter's catalog (so they survive restarts and reach every
//! node of the DC through Raft) and are never federated, as in Consul. Definitions are read from
//! the catalog's own view, which a write through this node has already reached, so a client reads
//! its own writes at once; execution resolves against the full view (remote replicas, liveness),
//! through the same `resolve` as DNS, so both answer alike.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use meridian_catalog::Command;
use meridian_topology::prepared::{QueryDefinition, format_query_id, is_query_id};
use meridian_topology::{PreparedQuery, View, resolve};
use rand::seq::SliceRandom;
use serde::Serialize;
use serde_json::json;

use super::blocking::{ReadParams, resolution_index, wait_for_resolution};
use super::body::read_body;
use super::catalog::{Pairs, answer_local, read_view};
use super::consul::ServiceEntryJson;
use super::register::{canonicalize, decode_fields};
use super::{ApiError, ApiState};

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Query not found: no prepared query with ID {id:?}"))
}

/// Refuses `?dc=` naming another datacenter: its queries are not replicated here, and this API
/// never forwards across the WAN.
fn local_only(state: &ApiState, p: &ReadParams) -> Result<(), ApiError> {
    let local = state.catalog().datacenter();
    match p.dc.as_deref() {
        Some(dc) if !dc.eq_ignore_ascii_case(local) => Err(ApiError::bad_request(format!(
            "Prepared queries are kept in their own datacenter and not federated: ask an agent of {dc:?} for its queries"
        ))),
        _ => Ok(()),
    }
}

/// Parses the parameters of a write (only `?dc=` matters) and checks the datacenter.
fn write_params(state: &ApiState, pairs: &[(String, String)]) -> Result<(), ApiError> {
    let p = ReadParams::parse(pairs)?;
    p.check_dc(&state.view())?;
    local_only(state, &p)
}

/// The fields of Consul's `PreparedQuery` and of its nested objects, as a client may spell them
/// in any case (Go's decoder matches keys so; py-consul sends `{"name": ..., "service":
/// {"onlypassing": ...}}`).
const QUERY_FIELDS: &[&str] = &[
    "ID",
    "Name",
    "Session",
    "Token",
    "Template",
    "Service",
    "DNS",
    "CreateIndex",
    "ModifyIndex",
];
const TEMPLATE_FIELDS: &[&str] = &["Type", "Regexp", "RemoveEmptyTags"];
const SERVICE_QUERY_FIELDS: &[&str] = &[
    "Service",
    "Failover",
    "OnlyPassing",
    "Tags",
    "Near",
    "IgnoreCheckIDs",
    "NodeMeta",
    "ServiceMeta",
    "Connect",
    "Peer",
    "SamenessGroup",
    "Namespace",
    "Partition",
];
const FAILOVER_FIELDS: &[&str] = &["NearestN", "Datacenters", "Targets"];
const DNS_FIELDS: &[&str] = &["TTL"];

/// Decodes and checks a query definition; the query gets ID `id`.
fn decode(body: &[u8], id: String) -> Result<PreparedQuery, ApiError> {
    let def: QueryDefinition = decode_fields(body, QUERY_FIELDS, &|v| {
        let Some(obj) = v.as_object_mut() else {
            return;
        };
        if let Some(t) = obj.get_mut("Template") {
            canonicalize(t, TEMPLATE_FIELDS);
        }
        if let Some(d) = obj.get_mut("DNS") {
            canonicalize(d, DNS_FIELDS);
        }
        if let Some(svc) = obj.get_mut("Service") {
            canonicalize(svc, SERVICE_QUERY_FIELDS);
            if let Some(f) = svc.as_object_mut().and_then(|o| o.get_mut("Failover")) {
                canonicalize(f, FAILOVER_FIELDS);
            }
        }
    })?;
    def.into_query(id)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Fails if another query already has `q`'s name, in `view` (for a template with an empty name,
/// if another template has none either: there is one catch-all at most).
fn check_name(view: &View, q: &PreparedQuery) -> Result<(), ApiError> {
    if q.name.is_empty() {
        let other = q.is_template().then(|| {
            view.local()
                .queries()
                .find(|o| o.is_template() && o.name.is_empty() && !o.id.eq_ignore_ascii_case(&q.id))
        });
        return match other.flatten() {
            Some(o) => Err(ApiError::bad_request(format!(
                "A catch-all query template (empty name) already exists: query {}",
                o.id
            ))),
            None => Ok(()),
        };
    }
    match view.local().query_named(&q.name) {
        Some(other) if !other.id.eq_ignore_ascii_case(&q.id) => {
            Err(ApiError::bad_request(format!(
                "Name {:?} aliases an existing query name (query {})",
                q.name, other.id
            )))
        }
        _ => Ok(()),
    }
}

/// Writes a query and turns a refusal by the catalog into the error the client sees. The
/// catalog, not this node's view, decides a name conflict, so two concurrent creates with one
/// name cannot both win; its refusal is then explained from the view it was applied to.
async fn write_query(state: &ApiState, query: PreparedQuery, create: bool) -> Result<(), ApiError> {
    let cat = state.catalog();
    let id = query.id.clone();
    tracing::debug!(id = %id, name = %query.name, service = %query.service.service, create, "prepared query write");
    let attempted = query.clone();
    let outcome = state.write(Command::SetQuery { query, create }).await?;
    if outcome.found {
        return Ok(());
    }
    let view = cat.view();
    if !create && view.local().query(&id).is_none() {
        return Err(not_found(&id));
    }
    check_name(&view, &attempted)?;
    // The conflicting query went away between the write and this look: say so, and let the
    // client retry.
    Err(ApiError {
        status: axum::http::StatusCode::CONFLICT,
        message: "The query conflicted with a concurrent change; retry".into(),
    })
}

/// `POST /v1/query`: creates a query; answers `{"ID": "..."}`.
pub(super) async fn create(
    State(state): State<ApiState>,
    Query(q): Pairs,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    write_params(&state, &q)?;
    let body = read_body(body, state.max_body_bytes()).await?;
    // Chosen here, before the Raft log, so that every replica applies the same ID.
    let id = format_query_id(rand::random());
    let query = decode(&body, id.clone())?;
    // Checked here too for a clear answer without a write; the catalog decides in the end.
    check_name(&state.catalog().view(), &query)?;
    write_query(&state, query, true).await?;
    Ok(Json(json!({ "ID": id })))
}

/// `PUT /v1/query/{id}`: replaces a query's definition (the ID in the body, if any, is ignored).
pub(super) async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Pairs,
    body: Body,
) -> Result<(), ApiError> {
    write_params(&state, &q)?;
    let body = read_body(body, state.max_body_bytes()).await?;
    if !is_query_id(&id) {
        return Err(not_found(&id));
    }
    // The catalog decides whether the query exists: this node's view may lag a create that
    // another node forwarded to the leader. IDs are stored as generated, in lowercase.
    let view = state.catalog().view();
    let stored_id = view
        .local()
        .query(&id)
        .map_or_else(|| id.to_ascii_lowercase(), |q| q.id.clone());
    let query = decode(&body, stored_id)?;
    check_name(&view, &query)?;
    write_query(&state, query, false).await
}

/// `DELETE /v1/query/{id}`.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Pairs,
) -> Result<(), ApiError> {
    write_params(&state, &q)?;
    if !is_query_id(&id) {
        return Err(not_found(&id));
    }
    // The catalog says whether it existed: this node's view may lag a write that another node
    // forwarded to the leader.
    let outcome = state.write(Command::DeleteQuery { id: id.clone() }).await?;
    if outcome.surely_missing() {
        return Err(not_found(&id));
    }
    Ok(())
}

/// `GET /v1/query`: every query of the datacenter, by ID (blocking with `?index=`).
pub(super) async fn list(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (_, p) = read_view(&state, &q).await?;
    local_only(&state, &p)?;
    // The catalog's own view: never behind the composed one, and already holding this node's
    // own writes.
    let view = state.catalog().view();
    let queries: Vec<QueryJson<'_>> = view.local().queries().map(QueryJson::new).collect();
    Ok(answer_local(&state, &view, &queries))
}

/// `GET /v1/query/{id}`: a one-element list, as Consul answers.
pub(super) async fn get_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    // Checked before blocking too, so that a wrong ID fails at once rather than after the wait.
    if state.catalog().view().local().query(&id).is_none() {
        return Err(not_found(&id));
    }
    let (_, p) = read_view(&state, &q).await?;
    local_only(&state, &p)?;
    let view = state.catalog().view();
    let query = view.local().query(&id).ok_or_else(|| not_found(&id))?;
    Ok(answer_local(&state, &view, &[QueryJson::new(query)]))
}

/// A query as `GET /v1/query` shows it: Consul's fields that Meridian does not support
/// (sessions, tokens) are there with their zero values, as Consul sends them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct QueryJson<'a> {
    #[serde(flatten)]
    query: &'a PreparedQuery,
    session: &'static str,
    token: &'static str,
}

impl<'a> QueryJson<'a> {
    fn new(query: &'a PreparedQuery) -> Self {
        QueryJson {
            query,
            session: "",
            token: "",
        }
    }
}

/// Consul's `PreparedQueryExecuteResponse`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExecuteJson<'a> {
    /// The service looked up.
    service: &'a str,
    /// Healthy instances with their node and checks, shuffled.
    nodes: Vec<ServiceEntryJson<'a>>,
    /// The query's DNS options.
    #[serde(rename = "DNS")]
    dns: DnsJson,
    /// The datacenter that answered.
    datacenter: &'a str,
    /// How many other datacenters were tried: 0 when the local one answered.
    failovers: usize,
}

#[derive(Serialize)]
struct DnsJson {
    #[serde(rename = "TTL")]
    ttl: String,
}

/// `GET /v1/query/{id or name}/execute[?limit=N]` (a template by a name it is a prefix of,
/// rendered for that name): the query's healthy instances, from the local
/// datacenter or, when it has none, from the first of the query's failover datacenters that has.
/// No healthy instance anywhere is an empty `Nodes`, as in Consul. Blocks (`?index=&wait=`)
/// until the answer changes.
pub(super) async fn execute(
    State(state): State<ApiState>,
    Path(id_or_name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let p = ReadParams::parse(&q)?;
    p.check_dc(&state.view())?;
    local_only(&state, &p)?;
    let mut limit = usize::MAX;
    for (k, v) in &q {
        if k == "limit" {
            limit = v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("Invalid ?limit: {v:?}")))?;
        }
    }
    // The definition from the catalog's view (fresh), the answer from the full one (replicas of
    // the other datacenters, their liveness and the default policy).
    let defs = state.catalog().view();
    if defs
        .local()
        .query(&id_or_name)
        .is_some_and(|q| q.is_template())
    {
        return Err(ApiError::bad_request(
            "Prepared query templates can only be resolved by name, not by ID",
        ));
    }
    let pq = defs.local().resolve_query(&id_or_name).ok_or_else(|| {
        ApiError::not_found(format!(
            "Query not found: no prepared query with ID or name {id_or_name:?}"
        ))
    })?;
    // A blocking execution waits for its answer to change (the index is the answer's digest),
    // whichever DC the answer comes from: a failover wakes it as a registration does.
    let resolved = |view: &View| {
        let policy = pq.policy(view.failover().policy.address_mode);
        resolution_index(view, &resolve(view, &pq.service_query(&policy)))
    };
    let view = wait_for_resolution(state.views(), &p, state.closing(), resolved).await;
    let policy = pq.policy(view.failover().policy.address_mode);
    let sq = pq.service_query(&policy);
    let resolution = resolve(&view, &sq);
    let index = resolution_index(&view, &resolution);
    let body = match resolution {
        Ok(res) => {
            // Instances are listed where they are, whatever the address mode: HTTP clients see
            // the real endpoints (DNS is what answers with the gateways in `gateway` mode).
            let mut instances = res.instances;
            instances.shuffle(&mut rand::rng());
            instances.truncate(limit);
            ExecuteJson {
                service: &pq.service.service,
                nodes: instances
                    .iter()
                    .map(|(i, _)| ServiceEntryJson::new(res.dc, res.state, i))
                    .collect(),
                dns: DnsJson { ttl: pq.ttl_text() },
                datacenter: res.dc,
                failovers: res.failovers,
            }
        }
        // Whatever the reason (no such service, none healthy, every target down), Consul's
        // answer is an empty list from the local datacenter.
        Err(_) => ExecuteJson {
            service: &pq.service.service,
            nodes: Vec::new(),
            dns: DnsJson { ttl: pq.ttl_text() },
            datacenter: view.datacenter(),
            failovers: 0,
        },
    };
    let mut response = answer_local(&state, &view, &body);
    response
        .headers_mut()
        .insert("x-consul-index", axum::http::HeaderValue::from(index));
    Ok(response)
}
