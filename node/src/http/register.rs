//! Decoding Consul's service definition (`PUT /v1/agent/service/register`) into the catalog's
//! [`Instance`] and [`Check`]s: field names, defaults, validation and check-ID assignment as
//! Consul's agent does them.
//!
//! Consul decodes JSON with Go's `encoding/json`, which matches field names case-insensitively,
//! and also accepts snake_case spellings (`enable_tag_override`); some client libraries rely on
//! that (python-consul sends `{"name": ..., "check": {"ttl": ...}}`). So keys are first mapped to
//! their canonical PascalCase name, then decoded strictly: an unknown field is a 400.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use meridian_topology::dc::DcState;
use meridian_topology::names::{validate_id, validate_label, validate_meta};
use meridian_topology::{
    CONNECT_PROXY_KIND, Check, CheckKind, CheckSpec, Health, Instance, MAX_PROXY_UPSTREAMS, Proxy,
    Upstream, Weights,
};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::duration::{MAX_DURATION, parse_go_duration};

/// Shortest check interval; shorter ones are raised to it, as Consul does.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of a TCP or HTTP check that names none (Consul's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest `DeregisterCriticalServiceAfter`; shorter ones are raised to it, as Consul does.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// Longest check output kept (Consul's default `check_output_max_size`).
pub const MAX_OUTPUT_BYTES: usize = 4096;

pub(crate) const SERVICE_FIELDS: &[&str] = &[
    "ID",
    "Name",
    "Tags",
    "Address",
    "Port",
    "Meta",
    "Weights",
    "EnableTagOverride",
    "TaggedAddresses",
    "Kind",
    "Check",
    "Checks",
    "SocketPath",
    "Proxy",
    "Connect",
    "Namespace",
    "Partition",
    "Locality",
    "Token",
];

pub(crate) const WEIGHTS_FIELDS: &[&str] = &["Passing", "Warning"];

pub(crate) const PROXY_FIELDS: &[&str] = &[
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
    "Mode",
    "TransparentProxy",
    "Config",
    "Upstreams",
    "MeshGateway",
    "Expose",
    "AccessLogs",
];

pub(crate) const UPSTREAM_FIELDS: &[&str] = &[
    "DestinationType",
    "DestinationNamespace",
    "DestinationPartition",
    "DestinationPeer",
    "DestinationName",
    "Datacenter",
    "LocalBindAddress",
    "LocalBindPort",
    "LocalBindSocketPath",
    "LocalBindSocketMode",
    "Config",
    "MeshGateway",
    "CentrallyConfigured",
];

pub(crate) const CHECK_FIELDS: &[&str] = &[
    "CheckID",
    "ID",
    "Name",
    "Notes",
    "Status",
    "TCP",
    "TCPUseTLS",
    "HTTP",
    "Method",
    "Header",
    "Body",
    "DisableRedirects",
    "TLSServerName",
    "TLSSkipVerify",
    "TTL",
    "Interval",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "OutputMaxSize",
    "Args",
    "ScriptArgs",
    "Script",
    "Shell",
    "DockerContainerID",
    "GRPC",
    "GRPCUseTLS",
    "H2PING",
    "H2PingUseTLS",
    "UDP",
    "AliasNode",
    "AliasService",
    "OSService",
    "ServiceID",
];

const CHECK_UPDATE_FIELDS: &[&str] = &["Status", "Output"];

/// A Consul service definition, after key canonicalization.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceDefinition {
    /// Instance ID; defaults to the name.
    #[serde(rename = "ID")]
    pub id: Option<String>,
    /// Service name (a DNS label).
    pub name: Option<String>,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Instance address; empty means the node's.
    pub address: Option<String>,
    /// Port; signed so that out-of-range values get our message rather than serde's.
    pub port: Option<i64>,
    /// Metadata.
    pub meta: Option<BTreeMap<String, String>>,
    /// SRV weights.
    pub weights: Option<WeightsDefinition>,
    /// Only affects Consul's anti-entropy, which Meridian does not have: accepted, ignored.
    pub enable_tag_override: Option<bool>,
    /// Accepted for compatibility, not stored yet.
    pub tagged_addresses: Option<Value>,
    /// `typical` (the default) or `connect-proxy`.
    pub kind: Option<String>,
    /// A single check.
    pub check: Option<CheckDefinition>,
    /// Several checks.
    pub checks: Option<Vec<CheckDefinition>>,
    /// Unix sockets are not supported.
    pub socket_path: Option<String>,
    /// A sidecar's proxy block (with `Kind: connect-proxy`).
    pub proxy: Option<ProxyDefinition>,
    /// Connect-native services and `SidecarService` are not supported.
    pub connect: Option<Value>,
    /// Enterprise namespaces: only the default one.
    pub namespace: Option<String>,
    /// Enterprise partitions: only the default one.
    pub partition: Option<String>,
    /// Accepted, ignored.
    pub locality: Option<Value>,
    /// ACL token: Meridian has no ACLs yet, so it is ignored.
    pub token: Option<String>,
}

/// SRV weights as Consul spells them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct WeightsDefinition {
    /// Weight while passing; must be at least 1.
    pub passing: Option<u32>,
    /// Weight while warning.
    pub warning: Option<u32>,
}

/// A duration as Consul accepts it: a Go duration string or a number of nanoseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    /// `"10s"`.
    Text(String),
    /// Nanoseconds.
    Nanos(u64),
}

/// A check inside a service definition (Consul's `CheckType`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CheckDefinition {
    /// Check ID.
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
    /// Check ID (the spelling of Consul's check definitions).
    #[serde(rename = "ID")]
    pub id: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Initial status (Consul's default: critical).
    pub status: Option<String>,
    /// TCP check target, `host:port`.
    #[serde(rename = "TCP")]
    pub tcp: Option<String>,
    /// TCP over TLS: not supported.
    #[serde(rename = "TCPUseTLS")]
    pub tcp_use_tls: Option<bool>,
    /// HTTP check URL.
    #[serde(rename = "HTTP")]
    pub http: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// HTTP headers.
    pub header: Option<BTreeMap<String, Vec<String>>>,
    /// HTTP request body: not supported.
    pub body: Option<String>,
    /// Accepted, ignored.
    pub disable_redirects: Option<bool>,
    /// Accepted, ignored (no HTTPS checks).
    #[serde(rename = "TLSServerName")]
    pub tls_server_name: Option<String>,
    /// Accepted, ignored (no HTTPS checks).
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: Option<bool>,
    /// TTL of a TTL check.
    #[serde(rename = "TTL")]
    pub ttl: Option<DurationValue>,
    /// Time between runs.
    pub interval: Option<DurationValue>,
    /// Time a run may take.
    pub timeout: Option<DurationValue>,
    /// Deregister the instance after this long critical.
    pub deregister_critical_service_after: Option<DurationValue>,
    /// Accepted, ignored.
    pub success_before_passing: Option<u32>,
    /// Accepted, ignored.
    pub failures_before_warning: Option<u32>,
    /// Accepted, ignored.
    pub failures_before_critical: Option<u32>,
    /// Accepted, ignored.
    pub output_max_size: Option<u64>,
    /// Script check: not supported.
    pub args: Option<Vec<String>>,
    /// Script check: not supported.
    pub script_args: Option<Vec<String>>,
    /// Legacy (pre-1.1) script check: not supported.
    pub script: Option<String>,
    /// Docker check: not supported.
    pub shell: Option<String>,
    /// Docker check: not supported.
    #[serde(rename = "DockerContainerID")]
    pub docker_container_id: Option<String>,
    /// gRPC check: not supported.
    #[serde(rename = "GRPC")]
    pub grpc: Option<String>,
    /// gRPC check: not supported.
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: Option<bool>,
    /// H2PING check: not supported.
    #[serde(rename = "H2PING")]
    pub h2ping: Option<String>,
    /// H2PING check: not supported.
    #[serde(rename = "H2PingUseTLS")]
    pub h2ping_use_tls: Option<bool>,
    /// UDP check: not supported.
    #[serde(rename = "UDP")]
    pub udp: Option<String>,
    /// Alias check: not supported.
    pub alias_node: Option<String>,
    /// Alias check: not supported.
    pub alias_service: Option<String>,
    /// Windows service check: not supported.
    #[serde(rename = "OSService")]
    pub os_service: Option<String>,
    /// The instance the check belongs to (`/v1/agent/check/register`; inside a service
    /// definition it can only name that service).
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
}

/// The body of `PUT /v1/agent/check/update/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CheckUpdate {
    /// `passing`, `warning` or `critical`.
    pub status: Option<String>,
    /// New output.
    pub output: Option<String>,
}

/// Parses a JSON body into `T` after mapping its keys (and those of the nested objects `nested`
/// names) to their canonical spelling.
pub(super) fn decode_fields<T: serde::de::DeserializeOwned>(
    body: &[u8],
    fields: &'static [&'static str],
    nested: &dyn Fn(&mut Value),
) -> Result<T, ApiError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "Request decode failed: the body must be a JSON object",
        ));
    }
    canonicalize(&mut value, fields);
    nested(&mut value);
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))
}

/// Decodes a service definition body.
pub fn decode_service_definition(body: &[u8]) -> Result<ServiceDefinition, ApiError> {
    decode_fields(body, SERVICE_FIELDS, &|v| {
        let Some(obj) = v.as_object_mut() else {
            return;
        };
        if let Some(w) = obj.get_mut("Weights") {
            canonicalize(w, WEIGHTS_FIELDS);
        }
        if let Some(p) = obj.get_mut("Proxy") {
            canonicalize(p, PROXY_FIELDS);
            if let Some(Value::Array(us)) = p.get_mut("Upstreams") {
                for u in us {
                    canonicalize(u, UPSTREAM_FIELDS);
                }
            }
        }
        if let Some(c) = obj.get_mut("Check") {
            canonicalize(c, CHECK_FIELDS);
            // Consul skips a single Check that is entirely zero (Go clients send `{}`).
            if is_zero(c) {
                *c = Value::Null;
            }
        }
        if let Some(Value::Array(cs)) = obj.get_mut("Checks") {
            for c in cs {
                canonicalize(c, CHECK_FIELDS);
            }
        }
    })
}

/// Consul's `Proxy` block of a `connect-proxy` registration, after key canonicalization.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ProxyDefinition {
    /// The service the sidecar fronts.
    pub destination_service_name: Option<String>,
    /// That service's instance ID.
    #[serde(rename = "DestinationServiceID")]
    pub destination_service_id: Option<String>,
    /// Where the application listens (empty: loopback).
    pub local_service_address: Option<String>,
    /// The application's port.
    pub local_service_port: Option<i64>,
    /// Unix sockets are not supported.
    pub local_service_socket_path: Option<String>,
    /// Only the default mode (no transparent proxy).
    pub mode: Option<String>,
    /// Transparent proxying is not supported.
    pub transparent_proxy: Option<Value>,
    /// Opaque proxy configuration: accepted, not stored.
    pub config: Option<Value>,
    /// The services the application calls through the sidecar.
    pub upstreams: Option<Vec<UpstreamDefinition>>,
    /// Meridian's gateways are always used across DCs: only the default is accepted.
    pub mesh_gateway: Option<Value>,
    /// Not supported.
    pub expose: Option<Value>,
    /// Not supported.
    pub access_logs: Option<Value>,
}

/// One entry of `Proxy.Upstreams`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct UpstreamDefinition {
    /// `service` (the default); prepared-query upstreams are not supported.
    pub destination_type: Option<String>,
    /// Only the default namespace.
    pub destination_namespace: Option<String>,
    /// Only the default partition.
    pub destination_partition: Option<String>,
    /// Cluster peering is not supported.
    pub destination_peer: Option<String>,
    /// The service called.
    pub destination_name: Option<String>,
    /// A fixed datacenter; empty resolves by the failover policy.
    pub datacenter: Option<String>,
    /// The local listening address (empty: loopback).
    pub local_bind_address: Option<String>,
    /// The local listening port.
    pub local_bind_port: Option<i64>,
    /// Unix sockets are not supported.
    pub local_bind_socket_path: Option<String>,
    /// Unix sockets are not supported.
    pub local_bind_socket_mode: Option<String>,
    /// Opaque configuration: accepted, not stored.
    pub config: Option<Value>,
    /// Only the default.
    pub mesh_gateway: Option<Value>,
    /// Accepted, ignored.
    pub centrally_configured: Option<bool>,
}

/// Checks a `connect-proxy`'s `Proxy` block and builds the model's [`Proxy`].
fn build_proxy(def: Option<ProxyDefinition>) -> Result<Proxy, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    let def = def.ok_or_else(|| bad("a connect-proxy needs a Proxy block".into()))?;
    let destination = non_empty(&def.destination_service_name)
        .ok_or_else(|| bad("Proxy.DestinationServiceName is required".into()))?;
    validate_label("Proxy.DestinationServiceName", destination).map_err(|e| bad(e.to_string()))?;
    let destination_id = non_empty(&def.destination_service_id).unwrap_or(destination);
    validate_id("Proxy.DestinationServiceID", destination_id).map_err(|e| bad(e.to_string()))?;
    let local_address = def.local_service_address.unwrap_or_default();
    if !local_address.is_empty() {
        validate_id("Proxy.LocalServiceAddress", &local_address).map_err(|e| bad(e.to_string()))?;
    }
    let local_port = port_field(
        "Proxy.LocalServicePort",
        def.local_service_port.unwrap_or(0),
    )?;
    if let Some(mode) = non_empty(&def.mode)
        && mode != "direct"
    {
        return Err(bad(format!("Proxy.Mode {mode:?} is not supported")));
    }
    for (field, v) in [
        ("Proxy.TransparentProxy", &def.transparent_proxy),
        ("Proxy.MeshGateway", &def.mesh_gateway),
        ("Proxy.Expose", &def.expose),
        ("Proxy.AccessLogs", &def.access_logs),
    ] {
        if v.as_ref().is_some_and(|v| !is_zero(v)) {
            return Err(bad(format!("{field} is not supported")));
        }
    }
    if non_empty(&def.local_service_socket_path).is_some() {
        return Err(bad("Proxy.LocalServiceSocketPath is not supported".into()));
    }
    let defs = def.upstreams.unwrap_or_default();
    if defs.len() > MAX_PROXY_UPSTREAMS {
        return Err(bad(format!(
            "Proxy.Upstreams: at most {MAX_PROXY_UPSTREAMS} upstreams"
        )));
    }
    let mut upstreams: Vec<Upstream> = Vec::with_capacity(defs.len());
    for u in defs {
        if let Some(t) = non_empty(&u.destination_type)
            && t != "service"
        {
            return Err(bad(format!(
                "Proxy.Upstreams: DestinationType {t:?} is not supported (only service)"
            )));
        }
        for (field, v) in [
            ("DestinationNamespace", &u.destination_namespace),
            ("DestinationPartition", &u.destination_partition),
        ] {
            if let Some(v) = non_empty(v)
                && v != "default"
            {
                return Err(bad(format!(
                    "Proxy.Upstreams: {field} {v:?} is not supported: only the default one exists"
                )));
            }
        }
        if non_empty(&u.destination_peer).is_some()
            || non_empty(&u.local_bind_socket_path).is_some()
            || u.mesh_gateway.as_ref().is_some_and(|v| !is_zero(v))
        {
            return Err(bad(
                "Proxy.Upstreams: peers, sockets and MeshGateway are not supported".into(),
            ));
        }
        let name = non_empty(&u.destination_name)
            .ok_or_else(|| bad("Proxy.Upstreams: DestinationName is required".into()))?;
        validate_label("Proxy.Upstreams: DestinationName", name).map_err(|e| bad(e.to_string()))?;
        let datacenter = u.datacenter.unwrap_or_default();
        if !datacenter.is_empty() {
            validate_label("Proxy.Upstreams: Datacenter", &datacenter)
                .map_err(|e| bad(e.to_string()))?;
        }
        let bind_address = u.local_bind_address.unwrap_or_default();
        if !bind_address.is_empty() && bind_address.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(format!(
                "Proxy.Upstreams: LocalBindAddress {bind_address:?} is not an IP address"
            )));
        }
        let bind_port = port_field(
            "Proxy.Upstreams: LocalBindPort",
            u.local_bind_port.unwrap_or(0),
        )?;
        if bind_port == 0 {
            return Err(bad("Proxy.Upstreams: LocalBindPort is required".into()));
        }
        if upstreams
            .iter()
            .any(|o| o.bind_port == bind_port && o.bind_address == bind_address)
        {
            return Err(bad(format!(
                "Proxy.Upstreams: two upstreams bind port {bind_port}"
            )));
        }
        upstreams.push(Upstream {
            destination: name.to_owned(),
            datacenter,
            bind_address,
            bind_port,
        });
    }
    Ok(Proxy {
        destination_service: destination.to_owned(),
        destination_id: destination_id.to_owned(),
        local_address,
        local_port,
        upstreams,
    })
}

fn port_field(field: &str, port: i64) -> Result<u16, ApiError> {
    u16::try_from(port)
        .map_err(|_| ApiError::bad_request(format!("Invalid {field} {port}: must be in 0..65535")))
}

/// Decodes the body of a check update.
pub fn decode_check_update(body: &[u8]) -> Result<CheckUpdate, ApiError> {
    decode_fields(body, CHECK_UPDATE_FIELDS, &|_| {})
}

/// Renames the keys of `value` (if an object) that match one of `fields` ignoring case and
/// underscores to that field's spelling. Other keys are kept, so that strict decoding names them.
pub(super) fn canonicalize(value: &mut Value, fields: &[&str]) {
    let Value::Object(map) = value else {
        return;
    };
    let old = std::mem::take(map);
    for (k, v) in old {
        let key = if fields.contains(&k.as_str()) {
            k
        } else {
            fields
                .iter()
                .find(|f| squashed(f).eq(squashed(&k)))
                .map_or(k, |f| (*f).to_owned())
        };
        // Go keeps the last of two keys that differ only in case; so do we.
        map.insert(key, v);
    }
}

/// The value of `obj`'s key that is `name` ignoring case and underscores, as Go's decoder
/// matches JSON keys to fields (the last such key, as Go keeps).
pub fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .rev()
        .find(|(k, _)| squashed(k).eq(squashed(name)))
        .map(|(_, v)| v)
}

/// `s` lowercased without underscores, as an iterator: keys are compared this way without
/// building new strings, since it runs for every key of every body.
fn squashed(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.bytes()
        .filter(|b| *b != b'_')
        .map(|b| b.to_ascii_lowercase())
}

/// Whether a JSON value is Go's zero value of its type.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

/// Parses a duration field; `what` names it in the error.
fn duration(what: &str, v: &Option<DurationValue>) -> Result<Option<Duration>, ApiError> {
    match v {
        None => Ok(None),
        Some(DurationValue::Nanos(n)) => {
            let d = Duration::from_nanos(*n);
            if d > MAX_DURATION {
                return Err(ApiError::bad_request(format!(
                    "{what}: {n} ns is too large (Go durations end at {MAX_DURATION:?})"
                )));
            }
            Ok(Some(d))
        }
        Some(DurationValue::Text(s)) if s.is_empty() => Ok(None),
        Some(DurationValue::Text(s)) => parse_go_duration(s)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{what}: {e}"))),
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// A checked registration, ready for `Command::Register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The instance.
    pub instance: Instance,
    /// Its checks, with Consul's IDs.
    pub checks: Vec<Check>,
}

/// Validates a service definition and builds the instance and checks that `node` registers.
/// `current` is the datacenter's current state: unless `replace_existing_checks`, the instance's
/// checks that the definition does not carry are kept, as Consul's agent keeps them.
pub fn build_registration(
    mut def: ServiceDefinition,
    node: &str,
    replace_existing_checks: bool,
    current: &DcState,
) -> Result<Registration, ApiError> {
    let name = non_empty(&def.name).ok_or_else(|| ApiError::bad_request("Missing service name"))?;
    validate_label("service name", name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = non_empty(&def.id).unwrap_or(name).to_owned();
    validate_id("service ID", &id).map_err(|e| ApiError::bad_request(e.to_string()))?;

    let proxy = match non_empty(&def.kind) {
        None | Some("typical") => {
            if def.proxy.is_some() {
                return Err(ApiError::bad_request(
                    "Proxy is only for a service of Kind connect-proxy",
                ));
            }
            None
        }
        Some(CONNECT_PROXY_KIND) => {
            if def.port.unwrap_or(0) == 0 {
                return Err(ApiError::bad_request("a connect-proxy needs a Port"));
            }
            Some(Arc::new(build_proxy(def.proxy.take())?))
        }
        Some(kind) => {
            return Err(ApiError::bad_request(format!(
                "unsupported service Kind {kind:?}: only typical and connect-proxy are supported"
            )));
        }
    };
    if non_empty(&def.socket_path).is_some() {
        return Err(ApiError::bad_request("SocketPath is not supported"));
    }
    if def.connect.as_ref().is_some_and(|v| !is_zero(v)) {
        return Err(ApiError::bad_request(
            "Connect is not supported: run `meridian connect proxy` as the sidecar, registered as Kind connect-proxy",
        ));
    }
    for (field, v) in [("Namespace", &def.namespace), ("Partition", &def.partition)] {
        if let Some(v) = non_empty(v)
            && v != "default"
        {
            return Err(ApiError::bad_request(format!(
                "{field} {v:?} is not supported: only the default one exists"
            )));
        }
    }

    let port = def.port.unwrap_or(0);
    let port = u16::try_from(port)
        .map_err(|_| ApiError::bad_request(format!("Invalid Port {port}: must be in 0..65535")))?;
    let address = def.address.unwrap_or_default();
    if !address.is_empty() {
        validate_id("service address", &address)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if address.contains(char::is_whitespace) {
            return Err(ApiError::bad_request(format!(
                "service address {address:?} contains whitespace"
            )));
        }
    }
    let tags = def.tags.unwrap_or_default();
    for t in &tags {
        validate_id("tag", t).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let meta = def.meta.unwrap_or_default();
    validate_meta(&meta).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let weights = match &def.weights {
        None => Weights::default(),
        Some(w) => {
            let passing = w.passing.unwrap_or(0);
            if passing == 0 {
                return Err(ApiError::bad_request("Passing must be greater than 0"));
            }
            Weights {
                passing,
                warning: w.warning.unwrap_or(0),
            }
        }
    };

    let instance = Instance {
        id: id.clone(),
        service: name.into(),
        node: node.into(),
        address,
        port,
        tags,
        meta,
        weights,
        create_index: 0,
        modify_index: 0,
        proxy,
    };

    let defs: Vec<(&str, &CheckDefinition)> = def
        .check
        .iter()
        .map(|c| ("Check", c))
        .chain(def.checks.iter().flatten().map(|c| ("Checks", c)))
        .collect();
    let numbered = defs.len() > 1;
    let mut checks: Vec<Check> = Vec::with_capacity(defs.len());
    for (i, (field, c)) in defs.into_iter().enumerate() {
        let default_id = if numbered {
            format!("service:{id}:{}", i + 1)
        } else {
            format!("service:{id}")
        };
        if let Some(sid) = non_empty(&c.service_id)
            && sid != id
        {
            return Err(ApiError::bad_request(format!(
                "{field}: ServiceID {sid:?} is not this service's ID {id:?}"
            )));
        }
        let owner = CheckOwner {
            node,
            service_id: &instance.id,
            service_name: &instance.service,
        };
        let check = build_check(c, field, default_id, owner)?;
        if checks.iter().any(|o| o.id == check.id) {
            return Err(ApiError::bad_request(format!(
                "duplicate check ID {:?} in the registration",
                check.id
            )));
        }
        if let Some(other) = current.check(node, &check.id)
            && other.service_id != id
        {
            return Err(taken(other));
        }
        checks.push(check);
    }
    if !replace_existing_checks {
        let kept: Vec<Check> = current
            .instance_checks(node, &id)
            .filter(|c| !checks.iter().any(|n| n.id == c.id))
            .cloned()
            .collect();
        checks.extend(kept);
    }
    Ok(Registration { instance, checks })
}

/// Decodes the body of `PUT /v1/agent/check/register`.
pub fn decode_check_definition(body: &[u8]) -> Result<CheckDefinition, ApiError> {
    decode_fields(body, CHECK_FIELDS, &|_| {})
}

/// What a check belongs to: a node, and an instance on it (empty for a node check).
#[derive(Clone, Copy, Debug)]
pub struct CheckOwner<'a> {
    /// The node.
    pub node: &'a str,
    /// The instance's ID; empty for a node check.
    pub service_id: &'a str,
    /// The instance's service.
    pub service_name: &'a str,
}

/// Validates a check registered on its own (`/v1/agent/check/register`) on `node`: a node
/// check, or one of an instance on `node` named by `ServiceID`. Its ID defaults to its name,
/// which is required, as in Consul.
pub fn build_agent_check(
    def: &CheckDefinition,
    node: &str,
    current: &DcState,
) -> Result<Check, ApiError> {
    let name = non_empty(&def.name).ok_or_else(|| ApiError::bad_request("Missing check name"))?;
    let (service_id, service_name) = match non_empty(&def.service_id) {
        None => ("", ""),
        Some(sid) => {
            let inst = current.instance(node, sid).ok_or_else(|| {
                ApiError::not_found(format!("ServiceID {sid:?} does not exist on this node"))
            })?;
            (inst.id.as_str(), inst.service.as_ref())
        }
    };
    let owner = CheckOwner {
        node,
        service_id,
        service_name,
    };
    let check = build_check(def, "check", name.to_owned(), owner)?;
    if let Some(other) = current.check(node, &check.id)
        && other.service_id != check.service_id
    {
        return Err(taken(other));
    }
    Ok(check)
}

/// The refusal of a check ID that `other` already holds on the node.
fn taken(other: &Check) -> ApiError {
    ApiError::bad_request(format!(
        "check ID {:?} already belongs to {} on this node",
        other.id,
        if other.service_id.is_empty() {
            "a node check".to_owned()
        } else {
            format!("service ID {:?}", other.service_id)
        }
    ))
}

/// Builds one check of `owner` from its definition; `field` names it in errors.
fn build_check(
    c: &CheckDefinition,
    field: &str,
    default_id: String,
    owner: CheckOwner<'_>,
) -> Result<Check, ApiError> {
    let bad = |msg: String| ApiError::bad_request(format!("{field}: {msg}"));

    let unsupported = [
        ("script", c.args.as_ref().is_some_and(|a| !a.is_empty())),
        (
            "script",
            c.script_args.as_ref().is_some_and(|a| !a.is_empty()),
        ),
        ("script", non_empty(&c.script).is_some()),
        ("docker", non_empty(&c.docker_container_id).is_some()),
        ("docker", non_empty(&c.shell).is_some()),
        ("gRPC", non_empty(&c.grpc).is_some()),
        ("H2PING", non_empty(&c.h2ping).is_some()),
        ("UDP", non_empty(&c.udp).is_some()),
        ("alias", non_empty(&c.alias_node).is_some()),
        ("alias", non_empty(&c.alias_service).is_some()),
        ("OSService", non_empty(&c.os_service).is_some()),
    ];
    if let Some((kind, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(bad(format!(
            "unsupported check type {kind:?}: only TCP, HTTP and TTL checks are supported"
        )));
    }
    if c.tcp_use_tls == Some(true) {
        return Err(bad("TCPUseTLS is not supported".to_owned()));
    }
    if non_empty(&c.body).is_some() {
        return Err(bad("Body is not supported for HTTP checks".to_owned()));
    }

    let id = match (non_empty(&c.check_id), non_empty(&c.id)) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(format!("CheckID {a:?} and ID {b:?} disagree")));
        }
        (Some(a), _) | (None, Some(a)) => a.to_owned(),
        (None, None) => default_id,
    };
    validate_id("check ID", &id).map_err(|e| bad(e.to_string()))?;
    let status = match non_empty(&c.status) {
        None => Health::Critical,
        Some(s) => Health::parse(s).ok_or_else(|| {
            bad(format!(
                "Status {s:?} is invalid: must be passing, warning or critical"
            ))
        })?,
    };

    let ttl = duration("TTL", &c.ttl).map_err(|e| bad(e.message))?;
    let interval = duration("Interval", &c.interval).map_err(|e| bad(e.message))?;
    let timeout = duration("Timeout", &c.timeout).map_err(|e| bad(e.message))?;
    let deregister = duration(
        "DeregisterCriticalServiceAfter",
        &c.deregister_critical_service_after,
    )
    .map_err(|e| bad(e.message))?
    .filter(|d| !d.is_zero())
    .map(|d| d.max(MIN_DEREGISTER_AFTER));

    let tcp = non_empty(&c.tcp);
    let http = non_empty(&c.http);
    let ttl = ttl.filter(|d| !d.is_zero());
    let kinds =
        usize::from(tcp.is_some()) + usize::from(http.is_some()) + usize::from(ttl.is_some());
    if kinds != 1 {
        return Err(bad(
            "a check needs exactly one of TCP, HTTP or TTL (script, gRPC, Docker, H2PING, UDP and alias checks are not supported)"
                .to_owned(),
        ));
    }

    let spec = if let Some(ttl) = ttl {
        CheckSpec {
            kind: CheckKind::Ttl { ttl },
            interval: ttl,
            timeout: ttl,
            deregister_critical_after: deregister,
        }
    } else {
        let interval = interval
            .filter(|d| !d.is_zero())
            .ok_or_else(|| bad("Interval is required for TCP and HTTP checks".to_owned()))?;
        let interval = if interval < MIN_INTERVAL {
            tracing::warn!(check = %id, ?interval, "check interval below the 1s minimum, raised to 1s");
            MIN_INTERVAL
        } else {
            interval
        };
        let timeout = timeout
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_TIMEOUT.min(interval));
        let kind = match (tcp, http) {
            (Some(addr), _) => {
                let ok = addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok || addr.contains(char::is_whitespace) {
                    return Err(bad(format!("TCP {addr:?} is not host:port")));
                }
                CheckKind::Tcp {
                    address: addr.to_owned(),
                }
            }
            (None, Some(url)) => http_kind(c, url).map_err(bad)?,
            // Exactly one kind was counted above; an error rather than a panic keeps this
            // harmless if that logic ever changes.
            (None, None) => return Err(ApiError::internal("check kind not determined")),
        };
        CheckSpec {
            kind,
            interval,
            timeout,
            deregister_critical_after: deregister,
        }
    };

    Ok(Check {
        id,
        name: non_empty(&c.name).map_or_else(
            || format!("Service '{}' check", owner.service_name),
            str::to_owned,
        ),
        node: owner.node.to_owned(),
        service_id: owner.service_id.to_owned(),
        service_name: owner.service_name.to_owned(),
        status,
        output: String::new(),
        notes: c.notes.clone().unwrap_or_default(),
        spec: Some(spec),
        create_index: 0,
        modify_index: 0,
    })
}

fn http_kind(c: &CheckDefinition, url: &str) -> Result<CheckKind, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("HTTP {url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "HTTP {url:?}: HTTPS checks are not supported yet (use http:// or a TCP check)"
            ));
        }
        other => return Err(format!("HTTP {url:?}: unsupported scheme {other:?}")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("HTTP {url:?} has no host"));
    }
    let method = non_empty(&c.method).unwrap_or("GET").to_owned();
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.len() > 16 {
        return Err(format!("Method {method:?} is not an HTTP method"));
    }
    let headers = c.header.clone().unwrap_or_default();
    for (name, values) in &headers {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("Header {name:?} is not a valid header name"))?;
        for v in values {
            HeaderValue::from_str(v)
                .map_err(|_| format!("Header {name:?} has an invalid value"))?;
        }
    }
    Ok(CheckKind::Http {
        url: url.to_owned(),
        method,
        headers,
    })
}

/// Bounds check output as Consul does, saying how much was kept.
pub fn truncate_output(output: &str) -> String {
    if output.len() <= MAX_OUTPUT_BYTES {
        return output.to_owned();
    }
    let mut end = MAX_OUTPUT_BYTES;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} ... (captured {end} of {} bytes)",
        &output[..end],
        output.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::Node;

    fn register(body: &str) -> Result<Registration, ApiError> {
        let def = decode_service_definition(body.as_bytes())?;
        build_registration(def, "n1", true, &DcState::default())
    }

    fn rejected(body: &str) -> String {
        let err = register(body).expect_err(body);
        assert_eq!(err.status, 400, "{body}: {err}");
        err.message
    }

    #[test]
    fn full_definition() {
        let r = register(
            r#"{
                "ID": "web-1", "Name": "web", "Tags": ["v1", "blue"], "Address": "10.0.0.5",
                "Port": 8080, "Meta": {"version": "1.2"}, "Weights": {"Passing": 10, "Warning": 1},
                "EnableTagOverride": false, "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 8080}},
                "Check": {"HTTP": "http://10.0.0.5:8080/health", "Interval": "10s", "Timeout": "1s",
                          "Header": {"X-A": ["b"]}, "Method": "HEAD", "Notes": "n",
                          "DeregisterCriticalServiceAfter": "90m", "TLSSkipVerify": true}
            }"#,
        )
        .expect("valid");
        let i = &r.instance;
        assert_eq!(
            (i.id.as_str(), i.service.as_ref(), i.node.as_ref()),
            ("web-1", "web", "n1")
        );
        assert_eq!((i.address.as_str(), i.port), ("10.0.0.5", 8080));
        assert_eq!(i.tags, ["v1", "blue"]);
        assert_eq!(
            i.weights,
            Weights {
                passing: 10,
                warning: 1
            }
        );
        assert_eq!(r.checks.len(), 1);
        let c = &r.checks[0];
        assert_eq!(c.id, "service:web-1");
        assert_eq!(c.name, "Service 'web' check");
        assert_eq!(c.status, Health::Critical);
        assert_eq!(c.service_id, "web-1");
        let spec = c.spec.as_ref().expect("spec");
        assert_eq!(spec.interval, Duration::from_secs(10));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!(
            spec.deregister_critical_after,
            Some(Duration::from_secs(5400))
        );
        match &spec.kind {
            CheckKind::Http {
                url,
                method,
                headers,
            } => {
                assert_eq!(url, "http://10.0.0.5:8080/health");
                assert_eq!(method, "HEAD");
                assert_eq!(headers["X-A"], ["b"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minimal_definition_defaults() {
        let r = register(r#"{"Name": "db"}"#).expect("valid");
        assert_eq!(r.instance.id, "db");
        assert_eq!(r.instance.port, 0);
        assert_eq!(r.instance.weights, Weights::default());
        assert!(r.checks.is_empty());
    }

    #[test]
    fn keys_match_case_insensitively_and_in_snake_case() {
        let r = register(
            r#"{"name": "api", "id": "api-1", "port": 9000, "enable_tag_override": true,
                "check": {"tcp": "127.0.0.1:9000", "interval": "5s", "check_id": "api-tcp",
                          "deregister_critical_service_after": "2m"}}"#,
        )
        .expect("valid");
        assert_eq!(r.instance.id, "api-1");
        assert_eq!(r.checks[0].id, "api-tcp");
        let spec = r.checks[0].spec.as_ref().expect("spec");
        assert_eq!(
            spec.kind,
            CheckKind::Tcp {
                address: "127.0.0.1:9000".into()
            }
        );
        assert_eq!(spec.timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_sidecar_registration_as_consul_clients_send_it() {
        let r = register(
            r#"{"Name": "web-sidecar-proxy", "ID": "web-proxy", "Kind": "connect-proxy", "Port": 21000,
                "Proxy": {"destination_service_name": "web", "DestinationServiceID": "web-1",
                          "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080,
                          "Mode": "", "Config": {"bind_address": "0.0.0.0"}, "MeshGateway": {},
                          "Upstreams": [{"DestinationType": "service", "DestinationName": "api",
                                         "Datacenter": "dc3", "LocalBindPort": 9191}]}}"#,
        )
        .expect("valid");
        assert_eq!(r.instance.kind(), "connect-proxy");
        let p = r.instance.proxy.as_deref().expect("proxy");
        assert_eq!(
            (p.destination_service.as_str(), p.destination_id.as_str()),
            ("web", "web-1")
        );
        assert_eq!(
            (p.local_address.as_str(), p.local_port),
            ("127.0.0.1", 8080)
        );
        assert_eq!(p.upstreams.len(), 1);
        assert_eq!(
            (
                p.upstreams[0].destination.as_str(),
                p.upstreams[0].datacenter.as_str(),
                p.upstreams[0].bind_port
            ),
            ("api", "dc3", 9191)
        );
        // A typical service has no kind and no proxy block, whatever Go clients send as zero.
        let r = register(r#"{"Name": "web", "Kind": "", "Proxy": null}"#).expect("valid");
        assert_eq!((r.instance.kind(), r.instance.proxy.is_none()), ("", true));
    }

    #[test]
    fn check_ids_as_consul_assigns_them() {
        let r = register(
            r#"{"Name": "web", "ID": "w1",
                "Check": {"TTL": "30s"},
                "Checks": [{"TCP": "localhost:80", "Interval": "10s"},
                           {"CheckID": "mine", "TTL": "1m", "Status": "passing", "Name": "custom"},
                           {"HTTP": "http://localhost/", "Interval": "1m30s"}]}"#,
        )
        .expect("valid");
        let ids: Vec<_> = r.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["service:w1:1", "service:w1:2", "mine", "service:w1:4"]
        );
        assert_eq!(r.checks[2].status, Health::Passing);
        assert_eq!(r.checks[2].name, "custom");
        assert_eq!(r.checks[1].name, "Service 'web' check");

        let r = register(r#"{"Name": "web", "Checks": [{"TTL": "30s"}]}"#).expect("valid");
        assert_eq!(r.checks[0].id, "service:web");

        // Go clients send an empty Check object when none is set; Consul skips it.
        let r = register(r#"{"Name": "web", "Check": {"Interval": "", "TCPUseTLS": false}}"#)
            .expect("valid");
        assert!(r.checks.is_empty());
    }

    #[test]
    fn durations_as_strings_or_nanoseconds() {
        let r = register(r#"{"Name": "x", "Check": {"TCP": "h:1", "Interval": 2000000000}}"#)
            .expect("valid");
        let spec = r.checks[0].spec.as_ref().expect("spec");
        assert_eq!(spec.interval, Duration::from_secs(2));
        let r = register(r#"{"Name": "x", "Check": {"TCP": "h:1", "Interval": "100ms"}}"#)
            .expect("valid");
        assert_eq!(
            r.checks[0].spec.as_ref().expect("spec").interval,
            MIN_INTERVAL
        );
    }

    #[test]
    fn bad_input_is_a_clear_400() {
        for (body, needle) in [
            ("{", "Request decode failed"),
            ("[]", "JSON object"),
            (r#"{"Name": "web", "Colour": "blue"}"#, "Colour"),
            (
                r#"{"Name": "web", "Check": {"TTL": "1s", "Colour": 1}}"#,
                "Colour",
            ),
            (
                r#"{"Name": "web", "Weights": {"Passing": 1, "Heavy": 1}}"#,
                "Heavy",
            ),
            (r#"{"Name": "web_api"}"#, "not a valid DNS label"),
            (r#"{"Name": "web.api"}"#, "not a valid DNS label"),
            (r#"{"Port": 80}"#, "Missing service name"),
            (r#"{"Name": "web", "Port": 70000}"#, "Invalid Port"),
            (r#"{"Name": "web", "Port": -1}"#, "Invalid Port"),
            (r#"{"Name": "web", "Port": "80"}"#, "Request decode failed"),
            (r#"{"Name": "web", "ID": "a/b"}"#, "service ID"),
            (r#"{"Name": "web", "Meta": {"consul-x": "y"}}"#, "reserved"),
            (
                r#"{"Name": "web", "Weights": {"Passing": 0}}"#,
                "Passing must be greater than 0",
            ),
            (
                r#"{"Name": "gw", "Kind": "mesh-gateway", "Port": 1}"#,
                "Kind",
            ),
            (r#"{"Name": "p", "Kind": "connect-proxy"}"#, "needs a Port"),
            (
                r#"{"Name": "p", "Kind": "connect-proxy", "Port": 1}"#,
                "Proxy block",
            ),
            (
                r#"{"Name": "web", "Proxy": {"DestinationServiceName": "web"}}"#,
                "only for a service of Kind connect-proxy",
            ),
            (
                r#"{"Name": "p", "Kind": "connect-proxy", "Port": 1, "Proxy": {}}"#,
                "DestinationServiceName is required",
            ),
            (
                r#"{"Name": "p", "Kind": "connect-proxy", "Port": 1,
                    "Proxy": {"DestinationServiceName": "web", "Upstreams": [{"DestinationName": "db"}]}}"#,
                "LocalBindPort is required",
            ),
            (
                r#"{"Name": "p", "Kind": "connect-proxy", "Port": 1,
                    "Proxy": {"DestinationServiceName": "web", "Upstreams": [
                        {"DestinationName": "db", "LocalBindPort": 9}, {"DestinationName": "x", "LocalBindPort": 9}]}}"#,
                "two upstreams bind port 9",
            ),
            (
                r#"{"Name": "p", "Kind": "connect-proxy", "Port": 1,
                    "Proxy": {"DestinationServiceName": "web", "Upstreams": [
                        {"DestinationType": "prepared_query", "DestinationName": "q", "LocalBindPort": 9}]}}"#,
                "prepared_query",
            ),
            (
                r#"{"Name": "p", "Kind": "connect-proxy", "Port": 1,
                    "Proxy": {"DestinationServiceName": "web", "Mode": "transparent"}}"#,
                "Mode",
            ),
            (r#"{"Name": "web", "Connect": {"Native": true}}"#, "Connect"),
            (
                r#"{"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}"#,
                "unsupported check type \"script\"",
            ),
            (
                r#"{"name": "web", "check": {"script": "/bin/true", "interval": "10s"}}"#,
                "unsupported check type \"script\"",
            ),
            (
                r#"{"Name": "web", "Check": {"GRPC": "h:1", "Interval": "10s"}}"#,
                "unsupported check type \"gRPC\"",
            ),
            (
                r#"{"Name": "web", "Checks": [{"DockerContainerID": "x", "Shell": "/bin/sh"}]}"#,
                "unsupported check type \"docker\"",
            ),
            (
                r#"{"Name": "web", "Check": {"UDP": "h:1", "Interval": "10s"}}"#,
                "\"UDP\"",
            ),
            (
                r#"{"Name": "web", "Check": {"AliasService": "db"}}"#,
                "\"alias\"",
            ),
            (
                r#"{"Name": "web", "Check": {"H2PING": "h:1", "Interval": "10s"}}"#,
                "\"H2PING\"",
            ),
            (
                r#"{"Name": "web", "Check": {"TCP": "h:1"}}"#,
                "Interval is required",
            ),
            (
                r#"{"Name": "web", "Check": {"TCP": "h:1", "TTL": "10s"}}"#,
                "exactly one",
            ),
            (r#"{"Name": "web", "Check": {"Notes": "x"}}"#, "exactly one"),
            (
                r#"{"Name": "web", "Check": {"TCP": "h", "Interval": "1s"}}"#,
                "host:port",
            ),
            (
                r#"{"Name": "web", "Check": {"TTL": "10 s"}}"#,
                "TTL: invalid duration",
            ),
            (r#"{"Name": "web", "Check": {"TTL": "-1s"}}"#, "negative"),
            (
                r#"{"Name": "web", "Check": {"TTL": 18446744073709551615}}"#,
                "too large",
            ),
            (
                r#"{"Name": "web", "Check": {"TTL": "2562048h"}}"#,
                "too large",
            ),
            (
                r#"{"Name": "web", "Check": {"TCP": "h:1", "Interval": "soon"}}"#,
                "Interval",
            ),
            (
                r#"{"Name": "web", "Check": {"TTL": "1s", "Status": "ok"}}"#,
                "Status",
            ),
            (
                r#"{"Name": "web", "Check": {"HTTP": "https://h/", "Interval": "1s"}}"#,
                "HTTPS",
            ),
            (
                r#"{"Name": "web", "Check": {"HTTP": "not a url", "Interval": "1s"}}"#,
                "not a URL",
            ),
            (
                r#"{"Name": "web", "Check": {"HTTP": "http://h/", "Interval": "1s", "Method": "g t"}}"#,
                "Method",
            ),
            (
                r#"{"Name": "web", "Checks": [{"TTL": "1s", "CheckID": "a"}, {"TTL": "1s", "CheckID": "a"}]}"#,
                "duplicate check ID",
            ),
            (
                r#"{"Name": "web", "Check": {"TTL": "1s", "CheckID": "a/b"}}"#,
                "check ID",
            ),
        ] {
            let msg = rejected(body);
            assert!(msg.contains(needle), "{body}: {msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn existing_checks_are_kept_unless_replaced() {
        let mut dc = DcState::default();
        dc.upsert_node(
            Node {
                name: "n1".into(),
                address: "127.0.0.1".into(),
                meta: Default::default(),
                create_index: 0,
                modify_index: 0,
            },
            1,
        );
        let first = register(
            r#"{"Name": "web", "Checks": [{"CheckID": "a", "TTL": "10s"}, {"CheckID": "b", "TTL": "10s"}]}"#,
        )
        .expect("valid");
        dc.register(first.instance, first.checks, 2);

        let body = br#"{"Name": "web", "Check": {"CheckID": "a", "TTL": "10s"}}"#;
        let keep = build_registration(
            decode_service_definition(body).expect("decodes"),
            "n1",
            false,
            &dc,
        )
        .expect("valid");
        let mut ids: Vec<_> = keep.checks.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b"]);

        let replace = build_registration(
            decode_service_definition(body).expect("decodes"),
            "n1",
            true,
            &dc,
        )
        .expect("valid");
        assert_eq!(replace.checks.len(), 1);

        // Another service cannot take over a check ID.
        let err = build_registration(
            decode_service_definition(
                br#"{"Name": "api", "Check": {"CheckID": "a", "TTL": "1s"}}"#,
            )
            .expect("decodes"),
            "n1",
            true,
            &dc,
        )
        .expect_err("taken");
        assert!(err.message.contains("already belongs"), "{}", err.message);
    }

    #[test]
    fn check_update_body() {
        let u = decode_check_update(br#"{"Status": "warning", "Output": "slow"}"#).expect("ok");
        assert_eq!(u.status.as_deref(), Some("warning"));
        let u = decode_check_update(br#"{"status": "passing"}"#).expect("ok");
        assert_eq!(u.status.as_deref(), Some("passing"));
        assert!(decode_check_update(br#"{"Status": "passing", "X": 1}"#).is_err());
    }

    #[test]
    fn output_is_bounded() {
        assert_eq!(truncate_output("ok"), "ok");
        let long = "é".repeat(3000);
        let t = truncate_output(&long);
        assert!(t.len() < MAX_OUTPUT_BYTES + 64);
        assert!(t.ends_with("of 6000 bytes)"));
    }
}
