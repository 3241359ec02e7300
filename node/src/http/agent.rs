//! The agent endpoints: this node's identity, its instances and checks, registration and
//! deregistration, and the TTL check updates (`/v1/agent/*`).

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use meridian_catalog::{Command, WriteOutcome};
use meridian_topology::Health;
use serde_json::json;

use super::blocking::flag;
use super::body::read_body;
use super::catalog::{Pairs, answer_local, read_view};
use super::consul::{AgentServiceJson, HealthCheckJson};
use super::register::{
    build_registration, decode_check_update, decode_service_definition, truncate_output,
};
use super::{ApiError, ApiState, Grant};

/// Writes `cmd`, which replaces or removes this node's instance `id`, once `grant` may write
/// the service that instance has; for a scoped token the write is guarded by what the check saw
/// ([`Command::Guarded`]), and checked again on the newer view if the instance changed before it
/// committed. `absent_ok`: an instance that does not exist needs no permission (a new
/// registration); otherwise it is a 404.
async fn write_checked(
    state: &ApiState,
    grant: &Grant,
    id: &str,
    cmd: Command,
    absent_ok: bool,
) -> Result<WriteOutcome, ApiError> {
    let cat = state.catalog();
    if grant.is_management() {
        return Ok(cat.write(cmd).await?);
    }
    // Each failed guard means a concurrent write to this very ID committed first, and the view
    // read next includes it: a few rounds settle anything but a deliberate flood.
    for _ in 0..4 {
        let seen = cat
            .view()
            .local()
            .instance(cat.node_name(), id)
            .map(|i| i.service.clone());
        match &seen {
            Some(service) => grant.require_service_write(service)?,
            None if !absent_ok => return Err(unknown_service(id)),
            None => {}
        }
        let outcome = cat
            .write(Command::Guarded {
                node: cat.node_name().to_owned(),
                id: id.to_owned(),
                service: seen,
                command: Box::new(cmd.clone()),
            })
            .await?;
        if !outcome.guard_failed {
            return Ok(outcome);
        }
    }
    Err(ApiError::internal(format!(
        "service ID {id:?} kept changing during the write; try again"
    )))
}

fn unknown_service(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
    ))
}

fn unknown_check(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
    ))
}

/// `GET /v1/agent/self`: the parts of Consul's answer that clients read.
pub(super) async fn agent_self(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, _) = read_view(&state, &q).await?;
    let cat = state.catalog();
    let (dc, node) = (cat.datacenter(), cat.node_name());
    let addr = view.local().node(node).map_or("", |n| n.address.as_str());
    let body = json!({
        "Config": {
            "Datacenter": dc,
            "NodeName": node,
            "NodeID": "",
            "Server": true,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": { "Name": node, "Addr": addr, "Tags": { "dc": dc, "role": "consul" }, "Status": 1 },
        "Meta": {},
        "Meridian": {
            "HttpAddr": state.node().map(|n| n.http.to_string()),
            "DnsAddr": state.node().and_then(|n| n.dns).map(|a| a.to_string()),
            "GatewayAddr": state.node().and_then(|n| n.gateway).map(|a| a.to_string()),
        },
    });
    Ok(answer_local(&state, &view, &body))
}

/// `GET /v1/agent/services`: this node's instances, by ID.
pub(super) async fn agent_services(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, _) = read_view(&state, &q).await?;
    let node = state.catalog().node_name();
    let services: BTreeMap<&str, _> = view
        .local()
        .instances()
        .filter(|i| i.node == node)
        .map(|i| (i.id.as_str(), AgentServiceJson::new(view.datacenter(), i)))
        .collect();
    Ok(answer_local(&state, &view, &services))
}

/// `GET /v1/agent/service/{id}`: one of this node's instances.
pub(super) async fn agent_service(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let cat = state.catalog();
    // Checked before blocking too, so that a wrong ID fails at once rather than after the wait.
    if cat.view().local().instance(cat.node_name(), &id).is_none() {
        return Err(unknown_service(&id));
    }
    let (view, _) = read_view(&state, &q).await?;
    let inst = view
        .local()
        .instance(cat.node_name(), &id)
        .ok_or_else(|| unknown_service(&id))?;
    Ok(answer_local(
        &state,
        &view,
        &AgentServiceJson::new(view.datacenter(), inst),
    ))
}

/// `GET /v1/agent/checks`: this node's checks, by ID.
pub(super) async fn agent_checks(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let (view, _) = read_view(&state, &q).await?;
    let dc = view.local();
    let checks: BTreeMap<&str, _> = dc
        .checks_on(state.catalog().node_name())
        .map(|c| {
            let tags = dc
                .instance(&c.node, &c.service_id)
                .map(|i| i.tags.as_slice())
                .unwrap_or_default();
            (c.id.as_str(), HealthCheckJson::new(c, tags))
        })
        .collect();
    Ok(answer_local(&state, &view, &checks))
}

/// `PUT /v1/agent/service/register[?replace-existing-checks]`.
pub(super) async fn register_service(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    Query(q): Pairs,
    body: Body,
) -> Result<(), ApiError> {
    let body = read_body(body, state.max_body_bytes()).await?;
    let mut replace = false;
    for (k, v) in &q {
        if k == "replace-existing-checks" {
            replace = flag(k, v)?;
        }
    }
    let def = decode_service_definition(&body)?;
    let cat = state.catalog();
    let reg = build_registration(def, cat.node_name(), replace, cat.view().local())?;
    grant.require_service_write(&reg.instance.service)?;
    tracing::debug!(service = %reg.instance.service, id = %reg.instance.id, checks = reg.checks.len(), "register");
    // Re-registering an ID replaces that instance, so the token must cover what it replaces
    // too, as it is when the write commits.
    let id = reg.instance.id.clone();
    let cmd = Command::Register {
        instance: reg.instance,
        checks: reg.checks,
    };
    write_checked(&state, &grant, &id, cmd, true).await?;
    Ok(())
}

/// `PUT /v1/agent/service/deregister/{id}`: 404 unless the instance is on this node.
pub(super) async fn deregister_service(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<(), ApiError> {
    let cat = state.catalog();
    // A scoped token must name what it removes; an instance this node does not see yet (a write
    // still in flight) is unknown to it. For a management token the catalog says whether it
    // existed: this node's view may lag a write just forwarded to the leader.
    let cmd = Command::Deregister {
        node: cat.node_name().to_owned(),
        id: id.clone(),
    };
    let outcome = write_checked(&state, &grant, &id, cmd, false).await?;
    if !outcome.found {
        return Err(unknown_service(&id));
    }
    Ok(())
}

fn note(q: &[(String, String)]) -> String {
    q.iter()
        .rev()
        .find(|(k, _)| k == "note")
        .map(|(_, v)| truncate_output(v))
        .unwrap_or_default()
}

/// `PUT /v1/agent/check/{pass,warn,fail}/{id}?note=`.
pub(super) async fn check_set(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    Path((verb, id)): Path<(String, String)>,
    Query(q): Pairs,
) -> Result<(), ApiError> {
    let status = match verb.as_str() {
        "pass" => Health::Passing,
        "warn" => Health::Warning,
        "fail" => Health::Critical,
        _ => return Err(super::unknown_path().await),
    };
    ttl_update(&state, &grant, &id, status, &note(&q)).await
}

/// `PUT /v1/agent/check/update/{id}` with `{"Status": ..., "Output": ...}`.
pub(super) async fn check_update(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
    body: Body,
) -> Result<(), ApiError> {
    let body = read_body(body, state.max_body_bytes()).await?;
    let update = decode_check_update(&body)?;
    let raw = update.status.unwrap_or_default();
    let status = Health::parse(&raw)
        .ok_or_else(|| ApiError::bad_request(format!("Invalid check status: '{raw}'")))?;
    let output = truncate_output(update.output.as_deref().unwrap_or_default());
    ttl_update(&state, &grant, &id, status, &output).await
}

/// Sets a TTL check of this node. Like Consul, a check that exists but is not a TTL check is
/// "unknown" to these endpoints.
async fn ttl_update(
    state: &ApiState,
    grant: &Grant,
    id: &str,
    status: Health,
    output: &str,
) -> Result<(), ApiError> {
    let cat = state.catalog();
    if !grant.is_management() {
        let view = cat.view();
        let dc = view.local();
        let check = dc
            .check(cat.node_name(), id)
            .ok_or_else(|| unknown_check(id))?;
        let service = dc
            .instance(cat.node_name(), &check.service_id)
            .map(|i| i.service.as_str())
            .unwrap_or_default();
        grant.require_check_update(service)?;
    }
    if let Some(c) = cat.view().local().check(cat.node_name(), id)
        && c.type_name() != "ttl"
    {
        return Err(unknown_check(id));
    }
    let outcome = cat.update_local_check(id, status, output).await?;
    if !outcome.found {
        return Err(unknown_check(id));
    }
    Ok(())
}
