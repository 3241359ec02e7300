//! Consul's Connect CA endpoints, over Meridian's mesh CA with no primary: `GET
//! /v1/connect/ca/roots` (and the agent's copy), `GET /v1/agent/connect/ca/leaf/:service` and
//! `POST /v1/agent/connect/authorize`.
//!
//! Every DC has its own mesh CA (made by its leader once `[gateway] trust_domain` is set), signs
//! the leaves of its services with it, and federation carries each DC's root to every other: the
//! roots listed are every DC's, the active one this DC's. A leaf is issued by the local DC alone,
//! so issuance goes on while the DC is cut off from every other.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use meridian_federation::now_ms;
use meridian_identity::PemPair;
use meridian_identity::mesh::{CertInfo, DEFAULT_LEAF_TTL, SpiffeId, cert_info, issue_leaf};
use meridian_topology::View;
use meridian_topology::mesh::{MeshCa, MeshRoot};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::acl::rfc3339;
use super::blocking::{DEFAULT_WAIT, MAX_WAIT, ReadParams, digest_index, wait_for_resolution};
use super::body::read_body;
use super::catalog::Pairs;
use super::register::decode_fields;
use super::{ApiError, ApiState, Grant};

fn no_ca() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "this datacenter has no mesh CA yet: set [gateway] trust_domain (the mesh's trust domain) and its leader makes one".into(),
    }
}

fn secs_to_rfc3339(secs: i64) -> String {
    rfc3339(u64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

/// One root as Consul's `CARoot` shows it, with Meridian's `Datacenter`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RootJson {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    serial_number: String,
    #[serde(rename = "SigningKeyID")]
    signing_key_id: String,
    external_trust_domain: String,
    not_before: String,
    not_after: String,
    root_cert: String,
    intermediate_certs: Vec<String>,
    active: bool,
    private_key_type: &'static str,
    private_key_bits: u32,
    create_index: u64,
    modify_index: u64,
    datacenter: String,
}

fn root_json(l: &Listed<'_>) -> Option<RootJson> {
    let info = cert_info(l.pem).ok()?;
    Some(RootJson {
        id: info.id.clone(),
        name: info.name,
        serial_number: info.serial,
        signing_key_id: info.id,
        external_trust_domain: l.root.trust_domain.clone(),
        not_before: secs_to_rfc3339(info.not_before),
        not_after: secs_to_rfc3339(info.not_after),
        root_cert: l.pem.to_owned(),
        intermediate_certs: Vec::new(),
        active: l.active,
        private_key_type: "ec",
        private_key_bits: 256,
        create_index: 0,
        modify_index: 0,
        datacenter: l.dc.to_owned(),
    })
}

/// One root certificate `view` holds in its DC's trust domain: its DC, its PEM, its root record
/// (for the trust domain and times), and whether it is the one this DC signs with.
struct Listed<'v> {
    dc: &'v str,
    pem: &'v str,
    root: &'v MeshRoot,
    active: bool,
}

/// Every root certificate `view` holds in its DC's trust domain, this DC's active one first:
/// each DC's active root, its next one during a rotation, and its retired ones until their end.
fn roots_in(view: &View) -> Vec<Listed<'_>> {
    let Some(own) = view.local().mesh_root() else {
        return Vec::new();
    };
    let now = now_ms();
    let mut out = Vec::new();
    for (i, pem) in own.trusted(now).enumerate() {
        out.push(Listed {
            dc: view.datacenter(),
            pem,
            root: own,
            active: i == 0,
        });
    }
    for r in view.remotes() {
        if let Some(root) = r
            .state
            .mesh_root()
            .filter(|root| root.trust_domain == own.trust_domain)
        {
            for pem in root.trusted(now) {
                out.push(Listed {
                    dc: &r.name[..],
                    pem,
                    root,
                    active: false,
                });
            }
        }
    }
    out
}

/// `GET /v1/connect/ca/roots` and `/v1/agent/connect/ca/roots`: every DC's mesh CA root in
/// this DC's trust domain; this DC's is the active one. `?pem=true` (or `1`) answers the roots as
/// one PEM bundle, as Consul does. A blocking query (`?index=`) waits until the roots change (a
/// DC's first root arrives, or a DC rotates), so a sidecar trusts a new DC without polling.
pub(super) async fn roots(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let pem = q
        .iter()
        .any(|(k, v)| k == "pem" && matches!(v.as_str(), "" | "1" | "true"));
    let params = ReadParams::parse(&q)?;
    let digest = |v: &View| {
        let pems: Vec<(&str, &str, bool)> = roots_in(v)
            .into_iter()
            .map(|l| (l.dc, l.pem, l.active))
            .collect();
        digest_index(&pems)
    };
    let view = wait_for_resolution(state.views(), &params, state.closing(), digest).await;
    let index = digest(&view);
    let listed = roots_in(&view);
    let own = listed.first().map(|l| l.root).ok_or_else(no_ca)?;
    let active = cert_info(&own.cert_pem)
        .map_err(|e| ApiError::internal(format!("this DC's mesh CA: {e}")))?;
    let roots: Vec<RootJson> = listed.iter().filter_map(root_json).collect();
    let index_header = (
        axum::http::HeaderName::from_static("x-consul-index"),
        axum::http::HeaderValue::from(index),
    );
    if pem {
        let bundle: String = roots.iter().map(|r| r.root_cert.as_str()).collect();
        return Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/pem-certificate-chain"),
                ),
                index_header,
            ],
            bundle,
        )
            .into_response());
    }
    Ok((
        [index_header],
        Json(json!({
            "ActiveRootID": active.id,
            "TrustDomain": own.trust_domain,
            "Roots": roots,
        })),
    )
        .into_response())
}

/// The most leaves one agent keeps (one per service asked for); beyond, the oldest are dropped.
const MAX_CACHED_LEAVES: usize = 4096;

/// One leaf this agent issued.
struct CachedLeaf {
    /// Its `X-Consul-Index`: a counter of this agent's issuances.
    index: u64,
    id: SpiffeId,
    pair: PemPair,
    info: CertInfo,
    /// The root that signed it: a new root makes the cache issue anew.
    root_pem: String,
    /// Two thirds of its life: from then on, a request gets a new leaf.
    renew_at: SystemTime,
}

/// The leaves this agent issued, by service: the same leaf is answered until two thirds of its
/// life (as Consul's agent cache does), and a blocking query (`?index=`) waits for the renewal,
/// so a Connect-native client learns of it without polling.
pub(super) struct LeafCache {
    inner: std::sync::Mutex<LeafInner>,
    ttl_ms: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct LeafInner {
    issued: u64,
    by_service: std::collections::HashMap<String, Arc<CachedLeaf>>,
}

impl Default for LeafCache {
    fn default() -> Self {
        LeafCache {
            inner: Default::default(),
            ttl_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(DEFAULT_LEAF_TTL.as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }
}

impl LeafCache {
    pub(super) fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(super) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeafInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leaf of `service` signed by `root_pem`, if one is cached (due for renewal or not).
    fn cached(&self, service: &str, root_pem: &str) -> Option<Arc<CachedLeaf>> {
        self.lock()
            .by_service
            .get(service)
            .filter(|l| l.root_pem == root_pem)
            .cloned()
    }

    /// Issues a leaf for `id` with `ca` and keeps it.
    fn issue(&self, ca: &MeshCa, id: SpiffeId) -> Result<Arc<CachedLeaf>, ApiError> {
        let pair = PemPair {
            cert_pem: ca.root.cert_pem.clone(),
            key_pem: ca.key.0.clone(),
        };
        #[allow(clippy::disallowed_methods)] // A certificate is dated by the wall clock.
        let now = SystemTime::now();
        let ttl = self.ttl();
        let leaf = issue_leaf(&pair, &id, now, ttl)
            .map_err(|e| ApiError::internal(format!("issuing the leaf: {e}")))?;
        let info = cert_info(&leaf.cert_pem)
            .map_err(|e| ApiError::internal(format!("reading the leaf: {e}")))?;
        let mut inner = self.lock();
        inner.issued += 1;
        let cached = Arc::new(CachedLeaf {
            index: inner.issued,
            id,
            pair: leaf,
            info,
            root_pem: ca.root.cert_pem.clone(),
            renew_at: now + ttl * 2 / 3,
        });
        if inner.by_service.len() >= MAX_CACHED_LEAVES
            && !inner.by_service.contains_key(&cached.id.service)
            && let Some(oldest) = inner
                .by_service
                .iter()
                .min_by_key(|(_, l)| l.index)
                .map(|(k, _)| k.clone())
        {
            inner.by_service.remove(&oldest);
        }
        inner
            .by_service
            .insert(cached.id.service.clone(), cached.clone());
        tracing::info!(service = %cached.id.service, serial = %cached.info.serial, "issued a mesh leaf");
        Ok(cached)
    }
}

/// `GET /v1/agent/connect/ca/leaf/:service`: the leaf of `service` of this DC, signed by this
/// DC's mesh CA, valid for `[mesh] leaf_ttl_s` (72 hours). The same leaf is answered until two
/// thirds of its life; `?index=` blocks (up to `?wait=`) until it is renewed. Needs a token that
/// may write the service (Consul's `service:write`). The answer holds the leaf's private key (as
/// Consul's does); it is never logged.
pub(super) async fn leaf(
    State(state): State<ApiState>,
    Path(service): Path<String>,
    Query(q): Pairs,
    grant: Option<axum::Extension<Grant>>,
) -> Result<Response, ApiError> {
    if let Some(g) = &grant {
        g.0.require_service_write(&service)?;
    }
    let params = ReadParams::parse(&q)?;
    let catalog = state.catalog();
    let mut ca = catalog.view().local().mesh_ca().ok_or_else(no_ca)?;
    let id = SpiffeId::new(&ca.root.trust_domain, catalog.datacenter(), &service)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cache = state.leaves();
    let wait = params.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let leaf = loop {
        #[allow(clippy::disallowed_methods)] // Renewal is due by the wall clock.
        let now = SystemTime::now();
        match cache.cached(&id.service, &ca.root.cert_pem) {
            Some(l) if now < l.renew_at => {
                if params.index.is_none_or(|i| l.index > i) {
                    break l;
                }
                // Block until the renewal, a new active root (a rotation: the next request gets
                // a leaf it signs), or the end of the wait: then the same leaf.
                let until = l.renew_at.duration_since(now).unwrap_or_default();
                let wake = (tokio::time::Instant::now() + until).min(deadline);
                let root_changed = async {
                    let root = |v: &meridian_topology::View| {
                        v.local().mesh_root().map(|r| r.cert_pem.clone())
                    };
                    let mut views = state.views().clone();
                    let seen = root(&views.borrow_and_update());
                    while views.changed().await.is_ok() {
                        if root(&views.borrow_and_update()) != seen {
                            return;
                        }
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    () = root_changed => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    break l;
                }
                ca = catalog.view().local().mesh_ca().ok_or_else(no_ca)?;
            }
            _ => break cache.issue(&ca, id.clone())?,
        }
    };
    let mut response = Json(json!({
        "SerialNumber": leaf.info.serial,
        "CertPEM": leaf.pair.cert_pem,
        "PrivateKeyPEM": leaf.pair.key_pem,
        "Service": leaf.id.service,
        "ServiceURI": leaf.id.uri(),
        "ValidAfter": secs_to_rfc3339(leaf.info.not_before),
        "ValidBefore": secs_to_rfc3339(leaf.info.not_after),
        "CreateIndex": leaf.index,
        "ModifyIndex": leaf.index,
        "Datacenter": catalog.datacenter(),
        "IssuedAt": rfc3339(now_ms()),
    }))
    .into_response();
    response
        .headers_mut()
        .insert("X-Consul-Index", axum::http::HeaderValue::from(leaf.index));
    Ok(response)
}

/// `GET /v1/connect/ca/configuration`: Consul's shape for the built-in provider, with this DC's
/// rotation (`Rotation`: the next root's ID and when it signs, or null).
pub(super) async fn configuration(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let view = state.view();
    let root = view.local().mesh_root().ok_or_else(no_ca)?;
    let rotation = root.next().map(|n| {
        let id = cert_info(&n.cert_pem).map(|i| i.id).unwrap_or_default();
        let at =
            n.since_unix_ms + u64::try_from(state.rotation_delay().as_millis()).unwrap_or(u64::MAX);
        json!({ "NextRootID": id, "ActivatesAt": rfc3339(at) })
    });
    let ttl = state.leaf_ttl();
    Ok(Json(json!({
        "Provider": "consul",
        "Config": {
            "LeafCertTTL": crate::duration::format_go_duration(ttl),
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
            "RootCertTTL": format!("{}h", meridian_identity::CA_VALIDITY_DAYS * 24),
        },
        "State": null,
        "ForceWithoutCrossSigning": false,
        "CreateIndex": 0,
        "ModifyIndex": 0,
        "TrustDomain": root.trust_domain,
        "Rotation": rotation,
    })))
}

/// The body of `PUT /v1/connect/ca/configuration`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CaConfigBody {
    provider: String,
    config: serde_json::Map<String, Value>,
    force_without_cross_signing: bool,
}

/// `PUT /v1/connect/ca/configuration` (operator): rotates this DC's mesh CA, as a new provider
/// configuration does in Consul. The new root is published at once (every DC trusts it) and
/// signs after `[mesh] rotation_activate_s`; the old one stays trusted until its last leaf has
/// expired, so no connection is refused on the way. Only the built-in provider (`consul`) with
/// EC P-256 keys: the TTLs are `[mesh]` settings of the config file, not of this call.
pub(super) async fn rotate(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body: CaConfigBody = decode_fields(
        &read_body(body, state.max_body_bytes()).await?,
        &["Provider", "Config", "ForceWithoutCrossSigning"],
        &|_| {},
    )?;
    if !body.provider.is_empty() && body.provider != "consul" {
        return Err(ApiError::bad_request(format!(
            "provider {:?} is not supported: only the built-in one (consul)",
            body.provider
        )));
    }
    for (k, v) in &body.config {
        let same = match k.as_str() {
            "PrivateKeyType" => v == "ec",
            "PrivateKeyBits" => v == 256,
            _ => false,
        };
        if !same {
            return Err(ApiError::bad_request(format!(
                "Config.{k} is not supported here: keys are EC P-256, and the TTLs are [mesh] settings of the config file"
            )));
        }
    }
    // Meridian never cross-signs (the next root is published before it signs), so forcing a
    // rotation without cross-signing changes nothing: the flag is read for Consul's clients.
    let _ = body.force_without_cross_signing;
    let view = state.view();
    let root = view.local().mesh_root().ok_or_else(no_ca)?;
    if root.next().is_some() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: "a rotation of this DC's mesh CA is under way: GET /v1/connect/ca/configuration says when it completes".into(),
        });
    }
    match crate::upkeep::prepare_rotation(&state).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: "the rotation was not taken (another one started meanwhile)".into(),
            });
        }
        Err(e) => return Err(ApiError::from(e)),
    }
    configuration(State(state)).await
}

/// The body of `POST /v1/agent/connect/authorize`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AuthorizeBody {
    target: String,
    #[serde(rename = "ClientCertURI")]
    client_cert_uri: String,
    client_cert_serial: String,
}

/// `POST /v1/agent/connect/authorize`: whether the caller named by `ClientCertURI` may connect to
/// `Target`, by the intentions in force (any DC's) or `[mesh] default_intention`. Needs a token
/// that may write the target (Consul's `service:write`).
pub(super) async fn authorize(
    State(state): State<ApiState>,
    grant: Option<axum::Extension<Grant>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body: AuthorizeBody = decode_fields(
        &read_body(body, state.max_body_bytes()).await?,
        &["Target", "ClientCertURI", "ClientCertSerial"],
        &|_| {},
    )?;
    if body.target.is_empty() || body.client_cert_uri.is_empty() {
        return Err(ApiError::bad_request(
            "Target and ClientCertURI are required",
        ));
    }
    if let Some(g) = &grant {
        g.0.require_service_write(&body.target)?;
    }
    // No revocation list: leaves are short-lived, so the serial is read and not checked.
    let _ = &body.client_cert_serial;
    let id = match SpiffeId::parse(&body.client_cert_uri) {
        Ok(id) => id,
        Err(e) => {
            return Ok(Json(json!({
                "Authorized": false,
                "Reason": format!("ClientCertURI is not a service identity: {e}"),
            })));
        }
    };
    let view = state.view();
    let ours = view.local().mesh_root().map(|r| r.trust_domain.as_str());
    if ours != Some(id.trust_domain.as_str()) {
        return Ok(Json(json!({
            "Authorized": false,
            "Reason": format!("ClientCertURI is of trust domain {:?}, not this mesh's", id.trust_domain),
        })));
    }
    let intentions = state.intentions();
    let (allowed, by) = intentions.allows(&id.service, &body.target, state.default_intention());
    let reason = match by {
        Some(e) => format!(
            "Matched L4 intention: {} => {} (Action: {}, Precedence: {}, written in {})",
            e.source,
            e.destination,
            e.intention.action.name(),
            e.precedence(),
            e.stamp.origin
        ),
        None => format!(
            "Default behavior configured by [mesh] default_intention: {}",
            state.default_intention().name()
        ),
    };
    Ok(Json(json!({ "Authorized": allowed, "Reason": reason })))
}
