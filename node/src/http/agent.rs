//! The agent endpoints: this node's identity, its instances and checks, registration and
//! deregistration, and the TTL check updates (`/v1/agent/*`).

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_catalog::{Command, SERVER_META, WriteOutcome};
use meridian_topology::Instance;
use meridian_topology::dc::DcState;
use meridian_topology::{Check, Health, Node};
use serde_json::json;

use super::blocking::flag;
use super::body::read_body;
use super::catalog::{Pairs, answer_local, filtered, read_view, read_view_filtered};
use super::consul::{AgentServiceJson, HealthCheckJson, checks_json};
use super::filter::Filter;
use super::register::{
    build_agent_check, build_registration, decode_check_definition, decode_check_update,
    decode_service_definition, truncate_output,
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
        return state.write(cmd).await;
    }
    // Each failed guard means a concurrent write to this very ID committed first, and the view
    // read next includes it: a few rounds settle anything but a deliberate flood.
    for _ in 0..4 {
        let seen = cat
            .view()
            .local()
            .instance(cat.node_name(), id)
            .map(|i| i.service.to_string());
        match &seen {
            Some(service) => grant.require_service_write(service)?,
            None if !absent_ok => return Err(unknown_service(id)),
            None => {}
        }
        let outcome = state
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

/// The version of Consul's HTTP API that Meridian's endpoints and shapes follow.
pub const CONSUL_API_VERSION: &str = "1.15.0";

/// A node's ID in Consul's UUID shape, derived from its DC and name: stable across restarts
/// and the same on every node that shows it.
fn node_uuid(dc: &str, node: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{dc}\n{node}").as_bytes());
    let b = d.as_ref();
    let hex =
        |r: std::ops::Range<usize>| -> String { b[r].iter().map(|x| format!("{x:02x}")).collect() };
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
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
    // This server's rpc port, as it recorded it when it registered itself.
    let rpc_port = view.local().node(node).and_then(rpc_port).unwrap_or(0);
    let body = json!({
        "Config": {
            "Datacenter": dc,
            // Meridian has no primary DC: every DC is its own.
            "PrimaryDatacenter": dc,
            "NodeName": node,
            "NodeID": node_uuid(dc, node),
            "Server": true,
            // The Consul API version whose endpoints and shapes Meridian's follow (the table in
            // the README); tools that gate features on Consul's version read this.
            "Version": CONSUL_API_VERSION,
            "Revision": concat!("meridian-", env!("CARGO_PKG_VERSION")),
        },
        "Member": {
            "Name": node,
            "Addr": addr,
            "Port": rpc_port,
            "Tags": { "dc": dc, "role": "consul", "build": concat!("meridian-", env!("CARGO_PKG_VERSION")) },
            "Status": 1,
        },
        "Meta": {},
        "Meridian": {
            "Version": env!("CARGO_PKG_VERSION"),
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
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let node = state.catalog().node_name();
    let mine = p.node_meta_ok(view.local().node(node));
    let services: BTreeMap<&str, _> = view
        .local()
        .instances()
        .filter(|i| mine && &*i.node == node)
        .map(|i| (i.id.as_str(), AgentServiceJson::new(view.datacenter(), i)))
        .filter(|(_, s)| filter.as_ref().is_none_or(|f| f.matches_serialized(s)))
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
    let (view, p, filter) = read_view_filtered(&state, &q).await?;
    let dc = view.local();
    let node = state.catalog().node_name();
    let mine = p.node_meta_ok(dc.node(node));
    let checks: BTreeMap<&str, _> = checks_json(dc, dc.checks_on(node).filter(|_| mine))
        .into_iter()
        .filter(|c| filter.as_ref().is_none_or(|f| f.matches_serialized(c)))
        .map(|c| (c.check_id, c))
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
    // A sidecar receives its destination's mesh traffic: registering one is writing that
    // service too, as Consul requires.
    if let Some(p) = &reg.instance.proxy {
        grant.require_service_write(&p.destination_service)?;
    }
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
    if outcome.surely_missing() {
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
            .map(|i| i.service.as_ref())
            .unwrap_or_default();
        grant.require_check_update(service)?;
    }
    if let Some(c) = cat.view().local().check(cat.node_name(), id)
        && c.type_name() != "ttl"
    {
        return Err(unknown_check(id));
    }
    let outcome = cat.update_local_check(id, status, output).await?;
    state.settle(&outcome).await;
    if !outcome.found {
        return Err(unknown_check(id));
    }
    Ok(())
}

/// One member as `/v1/agent/members` shows it (Consul's Serf member).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct MemberJson<'a> {
    name: String,
    addr: &'a str,
    port: u16,
    tags: BTreeMap<&'static str, String>,
    /// Serf's status: 1 alive, 3 left, 4 failed.
    status: u8,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

/// The Meridian servers of a DC's catalog: the nodes that registered themselves with
/// [`SERVER_META`] (their rpc address).
pub(super) fn server_nodes(dc: &DcState) -> impl Iterator<Item = &Node> {
    dc.nodes().filter(|n| n.meta.contains_key(SERVER_META))
}

/// The rpc port a server recorded when it registered itself.
fn rpc_port(node: &Node) -> Option<u16> {
    let (_, port) = node.meta.get(SERVER_META)?.rsplit_once(':')?;
    port.parse().ok()
}

/// The members of one DC: its [`server_nodes`].
fn servers_of<'a>(
    dc_name: &'a str,
    dc: &'a DcState,
    wan: bool,
    status: impl Fn(&str) -> u8 + 'a,
) -> impl Iterator<Item = MemberJson<'a>> + 'a {
    server_nodes(dc).filter_map(move |n| {
        let rpc = n.meta.get(SERVER_META)?;
        let port = rpc_port(n).unwrap_or(0);
        let mut tags = BTreeMap::new();
        tags.insert("role", "consul".to_owned());
        tags.insert("dc", dc_name.to_owned());
        tags.insert("port", port.to_string());
        tags.insert(
            "build",
            concat!("meridian-", env!("CARGO_PKG_VERSION")).to_owned(),
        );
        Some(MemberJson {
            // Consul names WAN members `<node>.<dc>`.
            name: if wan {
                format!("{}.{dc_name}", n.name)
            } else {
                n.name.clone()
            },
            addr: &n.address,
            port,
            tags,
            status: status(rpc),
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        })
    })
}

/// `GET /v1/agent/members[?wan=1]`: this DC's servers (alive while they are Raft voters), or
/// with `wan` every known DC's (failed while their DC is down).
pub(super) async fn agent_members(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let mut wan = false;
    let mut filter = None;
    for (k, v) in &q {
        match k.as_str() {
            "wan" => wan = flag(k, v)?,
            "filter" => filter = Filter::from_query(Some(v))?,
            // Segments are Consul Enterprise's: only the default one exists. (Partitions are
            // refused on every route, by the router.)
            "segment" if !v.is_empty() && v != "default" => {
                return Err(ApiError::bad_request(format!(
                    "?{k}={v}: Meridian has only the default {k}"
                )));
            }
            _ => {}
        }
    }
    let view = state.view();
    let voters = state.catalog().status().peers;
    let members: Vec<MemberJson<'_>> = if wan {
        let failover = view.failover();
        let local = servers_of(view.datacenter(), view.local(), true, |_| 1);
        let remote = view.remotes().flat_map(|r| {
            let status = if failover.unavailable(&r.name) { 4 } else { 1 };
            servers_of(&r.name, &r.state, true, move |_| status)
        });
        local.chain(remote).collect()
    } else {
        servers_of(view.datacenter(), view.local(), false, |rpc| {
            if voters.iter().any(|v| v == rpc) {
                1
            } else {
                3
            }
        })
        .collect()
    };
    Ok(axum::Json(filtered(filter.as_ref(), members)).into_response())
}

/// Consul's aggregate of an instance's checks, and the HTTP status that says it: 200 passing,
/// 429 warning, 503 critical.
fn aggregate(status: Health) -> (&'static str, StatusCode) {
    match status {
        Health::Passing => ("passing", StatusCode::OK),
        Health::Warning => ("warning", StatusCode::TOO_MANY_REQUESTS),
        Health::Critical => ("critical", StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// One instance with its aggregated status, as `/v1/agent/health/service/*` shows it.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentHealthJson<'a> {
    aggregated_status: &'static str,
    service: AgentServiceJson<'a>,
    checks: Vec<HealthCheckJson<'a>>,
}

fn agent_health<'a>(dc_name: &'a str, dc: &'a DcState, i: &'a Instance) -> AgentHealthJson<'a> {
    AgentHealthJson {
        aggregated_status: aggregate(dc.health_of(i)).0,
        service: AgentServiceJson::new(dc_name, i),
        checks: checks_json(dc, dc.checks_of(i)),
    }
}

/// Whether `?format=text` asks for the bare status.
fn text_format(q: &[(String, String)]) -> Result<bool, ApiError> {
    match q.iter().rev().find(|(k, _)| k == "format") {
        None => Ok(false),
        Some((_, v)) if v == "text" => Ok(true),
        Some((_, v)) => Err(ApiError::bad_request(format!(
            "Invalid format {v:?}: only \"text\" is known"
        ))),
    }
}

/// `GET /v1/agent/health/service/name/{name}[?format=text]`: this node's instances of the
/// service with their aggregated status; the HTTP status is the worst of them (404: none).
pub(super) async fn agent_health_by_name(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let text = text_format(&q)?;
    let view = state.view();
    let (dc_name, dc) = (view.datacenter(), view.local());
    let node = state.catalog().node_name();
    let mine: Vec<&Instance> = dc
        .instances_of(&name)
        .filter(|i| &*i.node == node)
        .collect();
    let Some(worst) = mine.iter().map(|i| dc.health_of(i)).max() else {
        return Err(ApiError::not_found(format!("ServiceName {name} Not Found")));
    };
    let (word, code) = aggregate(worst);
    if text {
        return Ok((code, word).into_response());
    }
    let body: Vec<_> = mine.iter().map(|i| agent_health(dc_name, dc, i)).collect();
    Ok((code, axum::Json(body)).into_response())
}

/// `GET /v1/agent/health/service/id/{id}[?format=text]`: one of this node's instances with its
/// aggregated status, and the HTTP status that says it.
pub(super) async fn agent_health_by_id(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let text = text_format(&q)?;
    let view = state.view();
    let (dc_name, dc) = (view.datacenter(), view.local());
    let inst = dc
        .instance(state.catalog().node_name(), &id)
        .ok_or_else(|| ApiError::not_found(format!("ServiceId {id} not found")))?;
    let entry = agent_health(dc_name, dc, inst);
    let code = aggregate(dc.health_of(inst)).1;
    if text {
        return Ok((code, entry.aggregated_status).into_response());
    }
    Ok((code, axum::Json(entry)).into_response())
}

/// `PUT /v1/agent/check/register`: a check of this node (node-level; operators) or of one of
/// its instances (`ServiceID`; writers of that service). Registering an existing ID replaces
/// the check, status included.
pub(super) async fn register_check(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    body: Body,
) -> Result<(), ApiError> {
    let body = read_body(body, state.max_body_bytes()).await?;
    let def = decode_check_definition(&body)?;
    let cat = state.catalog();
    let check = build_agent_check(&def, cat.node_name(), cat.view().local())?;
    tracing::debug!(check = %check.id, service_id = %check.service_id, "register check");
    write_check(&state, &grant, check).await
}

/// Writes `cmd`, which changes a check of this node owned by instance `service_id` (empty: the
/// node itself), with the permission that owner needs: a write token of the instance's service
/// (guarded as [`write_checked`] does), or the operator scope for the node.
async fn write_as_owner(
    state: &ApiState,
    grant: &Grant,
    service_id: &str,
    cmd: Command,
) -> Result<WriteOutcome, ApiError> {
    if service_id.is_empty() {
        grant.require_node_write()?;
        state.write(cmd).await
    } else {
        write_checked(state, grant, service_id, cmd, false).await
    }
}

/// Writes `check` of this node, with the permission its owner needs.
async fn write_check(state: &ApiState, grant: &Grant, check: Check) -> Result<(), ApiError> {
    let sid = check.service_id.clone();
    let outcome = write_as_owner(state, grant, &sid, Command::SetCheck { check }).await?;
    if !outcome.found {
        return Err(unknown_service(&sid));
    }
    Ok(())
}

/// `PUT /v1/agent/check/deregister/{id}`: removes a check of this node.
pub(super) async fn deregister_check(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<(), ApiError> {
    let cat = state.catalog();
    let sid = cat
        .view()
        .local()
        .check(cat.node_name(), &id)
        .map(|c| c.service_id.clone())
        .ok_or_else(|| unknown_check(&id))?;
    let cmd = Command::DeregisterCheck {
        node: cat.node_name().to_owned(),
        check_id: id.clone(),
    };
    let outcome = write_as_owner(&state, &grant, &sid, cmd).await?;
    if outcome.surely_missing() {
        return Err(unknown_check(&id));
    }
    Ok(())
}

/// Consul's check ID for node maintenance.
const NODE_MAINTENANCE: &str = "_node_maintenance";
/// Consul's check ID prefix for a service's maintenance (`_service_maintenance:<id>`).
const SERVICE_MAINTENANCE: &str = "_service_maintenance:";

/// `?enable=` (required) and `?reason=` of the maintenance endpoints.
fn maintenance_params(q: &[(String, String)]) -> Result<(bool, Option<String>), ApiError> {
    let mut enable = None;
    let mut reason = None;
    for (k, v) in q {
        match k.as_str() {
            "enable" => enable = Some(flag(k, v)?),
            "reason" if !v.is_empty() => reason = Some(truncate_output(v)),
            _ => {}
        }
    }
    let enable = enable.ok_or_else(|| ApiError::bad_request("Missing value for enable"))?;
    Ok((enable, reason))
}

/// The critical check that puts a node (`service` `None`) or one instance in maintenance: DNS,
/// the gateway and failover treat it as any failing check.
fn maintenance_check(node: &str, service: Option<&Instance>, reason: Option<String>) -> Check {
    let (id, name, what) = match service {
        None => (NODE_MAINTENANCE.to_owned(), "Node Maintenance Mode", "node"),
        Some(i) => (
            format!("{SERVICE_MAINTENANCE}{}", i.id),
            "Service Maintenance Mode",
            "service",
        ),
    };
    Check {
        id,
        name: name.to_owned(),
        node: node.to_owned(),
        service_id: service.map(|i| i.id.clone()).unwrap_or_default(),
        service_name: service.map(|i| i.service.to_string()).unwrap_or_default(),
        status: Health::Critical,
        output: String::new(),
        notes: reason.unwrap_or_else(|| {
            format!(
                "Maintenance mode is enabled for this {what}, but no reason was provided. This is a default message."
            )
        }),
        spec: None,
        create_index: 0,
        modify_index: 0,
    }
}

/// `PUT /v1/agent/maintenance?enable=&reason=`: this node in or out of maintenance (operators).
pub(super) async fn node_maintenance(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    Query(q): Pairs,
) -> Result<(), ApiError> {
    let (enable, reason) = maintenance_params(&q)?;
    let cat = state.catalog();
    let node = cat.node_name();
    let cmd = if enable {
        Command::SetCheck {
            check: maintenance_check(node, None, reason),
        }
    } else {
        Command::DeregisterCheck {
            node: node.to_owned(),
            check_id: NODE_MAINTENANCE.to_owned(),
        }
    };
    write_as_owner(&state, &grant, "", cmd).await?;
    Ok(())
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=&reason=`: one of this node's instances in
/// or out of maintenance (writers of its service).
pub(super) async fn service_maintenance(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
    Query(q): Pairs,
) -> Result<(), ApiError> {
    let (enable, reason) = maintenance_params(&q)?;
    let cat = state.catalog();
    let node = cat.node_name();
    let view = cat.view();
    let inst = view
        .local()
        .instance(node, &id)
        .ok_or_else(|| unknown_service(&id))?;
    let cmd = if enable {
        Command::SetCheck {
            check: maintenance_check(node, Some(inst), reason),
        }
    } else {
        Command::DeregisterCheck {
            node: node.to_owned(),
            check_id: format!("{SERVICE_MAINTENANCE}{id}"),
        }
    };
    let outcome = write_as_owner(&state, &grant, &id, cmd).await?;
    if enable && !outcome.found {
        return Err(unknown_service(&id));
    }
    Ok(())
}
