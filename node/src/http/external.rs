//! Node-level registration, as Consul's `/v1/catalog/register` and `/v1/catalog/deregister`
//! take it: nodes that run no agent (external services, as consul-esm registers and health-checks
//! them), their instances, and checks whose status the caller sets.
//!
//! Such checks are not run by Meridian (Consul does not run them either): their status is what
//! the last registration said, so DNS, the gateway and failover follow the external checker.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use meridian_catalog::{Command, SERVER_META};
use meridian_topology::names::{validate_id, validate_label, validate_meta};
use meridian_topology::{Check, Health, Node, is_internal_service};
use serde_json::{Map, Value};

use super::body::read_body;
use super::register::{
    SERVICE_FIELDS, build_registration, decode_service_definition, field, truncate_output,
};
use super::{ApiError, ApiState, Grant};

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg.into())
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("Request decode failed: the body must be a JSON object")),
        Err(e) => Err(bad(format!("Request decode failed: {e}"))),
    }
}

/// A string field (absent or null: empty).
fn text<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(bad(format!("{name} must be a string, not {other}"))),
    }
}

/// Refuses a datacenter other than this one, and non-default namespaces and partitions.
fn check_scope(state: &ApiState, obj: &Map<String, Value>) -> Result<(), ApiError> {
    let dc = text(obj, "Datacenter")?;
    if !dc.is_empty() && !dc.eq_ignore_ascii_case(state.catalog().datacenter()) {
        return Err(bad(format!(
            "Datacenter {dc:?}: a node is registered in its own datacenter's catalog (this is {})",
            state.catalog().datacenter()
        )));
    }
    for key in ["Namespace", "Partition"] {
        let v = text(obj, key)?;
        if !v.is_empty() && v != "default" {
            return Err(bad(format!("{key} {v:?}: only the default one exists")));
        }
    }
    Ok(())
}

/// The request's body as an object, checked for its scope, and its (required) `Node`.
async fn read_request(
    state: &ApiState,
    body: Body,
) -> Result<(Map<String, Value>, String), ApiError> {
    let body = read_body(body, state.max_body_bytes()).await?;
    let obj = object(&body)?;
    check_scope(state, &obj)?;
    let node = text(&obj, "Node")?.to_owned();
    if node.is_empty() {
        return Err(bad("Must provide node"));
    }
    Ok((obj, node))
}

/// Meridian's own services (`meridian-*`) are the management token's only.
fn refuse_internal(grant: &Grant, service: &str) -> Result<(), ApiError> {
    if is_internal_service(service) && !grant.is_management() {
        return Err(bad(format!(
            "service {service:?} is Meridian's own: management token only"
        )));
    }
    Ok(())
}

/// A Meridian server registers itself and its instances through its own agent: rewriting its
/// node here would drop what marks it as one.
fn refuse_server_node(state: &ApiState, node: &str) -> Result<(), ApiError> {
    let view = state.catalog().view();
    if view
        .local()
        .node(node)
        .is_some_and(|n| n.meta.contains_key(SERVER_META))
    {
        return Err(bad(format!(
            "node {node:?} is a Meridian server: change it through its own agent (/v1/agent/*)"
        )));
    }
    Ok(())
}

/// The `Service` object as a service definition: Consul names the service `Service` there and
/// `Name` in agent definitions; fields of the full catalog shape that a definition lacks
/// (indexes, `Datacenter`, ...) are dropped rather than refused.
fn service_definition(v: &Value) -> Result<Vec<u8>, ApiError> {
    let Value::Object(obj) = v else {
        return Err(bad("Service must be an object"));
    };
    let mut def = Map::new();
    // A definition's own fields, but for the name and the checks (the request's `Check` and
    // `Checks` are the catalog's, beside `Service`).
    let keys = SERVICE_FIELDS
        .iter()
        .filter(|k| !matches!(**k, "Name" | "Check" | "Checks"));
    for key in keys {
        if let Some(v) = field(obj, key) {
            def.insert((*key).to_owned(), v.clone());
        }
    }
    if let Some(name) = field(obj, "Service") {
        def.insert("Name".to_owned(), name.clone());
    }
    serde_json::to_vec(&Value::Object(def)).map_err(|e| ApiError::internal(e.to_string()))
}

/// One check of the registration, on `node`, with the status it states (critical when it
/// states none, as Consul).
fn build_check(v: &Value, node: &str) -> Result<Check, ApiError> {
    let Value::Object(obj) = v else {
        return Err(bad("a check must be an object"));
    };
    let check_node = text(obj, "Node")?;
    if !check_node.is_empty() && !check_node.eq_ignore_ascii_case(node) {
        return Err(bad(format!(
            "check Node {check_node:?} is not the registered node {node:?}"
        )));
    }
    let name = text(obj, "Name")?;
    let id = match text(obj, "CheckID")? {
        "" => name,
        id => id,
    };
    validate_id("check ID", id).map_err(|e| bad(e.to_string()))?;
    let status = match text(obj, "Status")? {
        "" => Health::Critical,
        s => Health::parse(s).ok_or_else(|| {
            bad(format!(
                "check Status {s:?} is invalid: must be passing, warning or critical"
            ))
        })?,
    };
    Ok(Check {
        id: id.to_owned(),
        name: if name.is_empty() { id } else { name }.to_owned(),
        node: node.to_owned(),
        service_id: text(obj, "ServiceID")?.to_owned(),
        service_name: String::new(),
        status,
        output: truncate_output(text(obj, "Output")?),
        notes: text(obj, "Notes")?.to_owned(),
        spec: None,
        create_index: 0,
        modify_index: 0,
    })
}

/// `PUT /v1/catalog/register`: a node (with its address and metadata), optionally an instance
/// on it and checks (`Check`, `Checks`) of the node or of that instance, each with the status
/// given. Operators and management only (`meridian-*` services: management only). Answers
/// `true`, as Consul.
///
/// The parts are written one after another (node, instance, checks), not as one entry: a
/// failure part-way leaves the first parts written, and a retry completes them.
pub(super) async fn register(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    body: Body,
) -> Result<axum::Json<bool>, ApiError> {
    let (obj, name) = read_request(&state, body).await?;
    let name = name.as_str();
    validate_label("node name", name).map_err(|e| bad(e.to_string()))?;
    let address = text(&obj, "Address")?;
    if address.is_empty() {
        return Err(bad("Must provide address"));
    }
    validate_id("node address", address).map_err(|e| bad(e.to_string()))?;
    let meta = match field(&obj, "NodeMeta") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| bad(format!("NodeMeta must map strings to strings: {e}")))?,
    };
    validate_meta(&meta).map_err(|e| bad(e.to_string()))?;
    if meta.contains_key(SERVER_META) {
        return Err(bad(format!("NodeMeta {SERVER_META:?} is Meridian's own")));
    }
    refuse_server_node(&state, name)?;

    let view = state.catalog().view();
    let registration = match field(&obj, "Service") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let def = decode_service_definition(&service_definition(v)?)?;
            // The instance's checks are kept (and keep their status): this request's checks
            // are set after it, each with the status it states.
            let reg = build_registration(def, name, false, view.local())?;
            let old = view
                .local()
                .instance(name, &reg.instance.id)
                .map(|i| i.service.clone());
            for service in std::iter::once(&reg.instance.service).chain(old.as_ref()) {
                refuse_internal(&grant, service)?;
            }
            Some(reg)
        }
    };
    let mut checks = Vec::new();
    if let Some(c) = field(&obj, "Check").filter(|c| !c.is_null()) {
        checks.push(build_check(c, name)?);
    }
    match field(&obj, "Checks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cs)) => {
            for c in cs {
                checks.push(build_check(c, name)?);
            }
        }
        Some(_) => return Err(bad("Checks must be an array")),
    }
    let instance_id = registration.as_ref().map(|r| r.instance.id.clone());
    for c in &checks {
        let own = instance_id.as_deref() == Some(c.service_id.as_str());
        let existing = view.local().instance(name, &c.service_id).is_some();
        if !c.service_id.is_empty() && !own && !existing {
            return Err(bad(format!(
                "check {:?} names ServiceID {:?}, which is not on node {name:?}",
                c.id, c.service_id
            )));
        }
    }

    let skip_node = matches!(field(&obj, "SkipNodeUpdate"), Some(Value::Bool(true)))
        && view.local().node(name).is_some();
    if !skip_node {
        state
            .write(Command::RegisterNode {
                node: Node {
                    name: name.to_owned(),
                    address: address.to_owned(),
                    meta,
                    create_index: 0,
                    modify_index: 0,
                },
            })
            .await?;
    }
    if let Some(reg) = registration {
        state
            .write(Command::Register {
                instance: reg.instance,
                checks: reg.checks,
            })
            .await?;
    }
    for check in checks {
        let id = check.id.clone();
        let outcome = state.write(Command::SetCheck { check }).await?;
        if !outcome.found {
            return Err(bad(format!("check {id:?}: its instance is gone")));
        }
    }
    Ok(axum::Json(true))
}

/// `PUT /v1/catalog/deregister`: with `ServiceID`, that instance; with `CheckID`, that check;
/// else the node with everything on it. Answers `true`, as Consul (also when it was not there).
pub(super) async fn deregister(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
    body: Body,
) -> Result<axum::Json<bool>, ApiError> {
    let (obj, node) = read_request(&state, body).await?;
    let node = node.as_str();
    refuse_server_node(&state, node)?;
    let (service_id, check_id) = (text(&obj, "ServiceID")?, text(&obj, "CheckID")?);
    let cmd = if !service_id.is_empty() {
        let view = state.catalog().view();
        if let Some(i) = view.local().instance(node, service_id) {
            refuse_internal(&grant, &i.service)?;
        }
        Command::Deregister {
            node: node.to_owned(),
            id: service_id.to_owned(),
        }
    } else if !check_id.is_empty() {
        Command::DeregisterCheck {
            node: node.to_owned(),
            check_id: check_id.to_owned(),
        }
    } else {
        Command::DeregisterNode {
            node: node.to_owned(),
        }
    };
    state.write(cmd).await?;
    Ok(axum::Json(true))
}
