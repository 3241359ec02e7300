//! Consul's intentions API, exact-match model (Consul 1.9+): `GET`/`PUT`/`DELETE
//! /v1/connect/intentions/exact?source=&destination=`, `GET /v1/connect/intentions`,
//! `GET /v1/connect/intentions/match?by=&name=` and `GET /v1/connect/intentions/check`.
//!
//! An intention written through any agent of any DC is in force in every DC once federation has
//! carried it, with no primary: the write goes into this DC's Raft group as its record of the
//! pair, stamped after every record of the pair this node sees, and the last writer wins
//! ([`meridian_topology::intention`]). Answers show each intention's `Datacenter` (the DC of the
//! last write) and `Version` (its clock). `?dc=` may name any known DC: every DC holds the same
//! intentions.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use meridian_catalog::Command;
use meridian_federation::now_ms;
use meridian_topology::DcState;
use meridian_topology::intention::{
    self, ANY, Action, Effective, Intention, MAX_INTENTION_RECORDS, check_intention, is_side,
    sort_by_precedence,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::acl::rfc3339;
use super::blocking::{ReadParams, digest_index, wait_for_resolution};
use super::body::read_body;
use super::catalog::Pairs;
use super::register::decode_fields;
use super::{ApiError, ApiState, GlobalKind, Grant};

const INTENTION_FIELDS: &[&str] = &[
    "Description",
    "SourceNS",
    "DestinationNS",
    "SourcePartition",
    "DestinationPartition",
    "SourcePeer",
    "SourceSamenessGroup",
    "SourceType",
    "Action",
    "Permissions",
    "Meta",
];

/// A `PUT …/exact` body. Fields not named here (what a client echoes back from a read: the
/// names, `Precedence`, the times and indexes, …) are ignored; the ones Meridian cannot honour
/// are read to be refused.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct IntentionBody {
    action: Option<String>,
    description: Option<String>,
    meta: Option<BTreeMap<String, String>>,
    source_type: Option<String>,
    permissions: Option<Vec<Value>>,
    #[serde(rename = "SourceNS")]
    source_ns: Option<String>,
    #[serde(rename = "DestinationNS")]
    destination_ns: Option<String>,
    source_partition: Option<String>,
    destination_partition: Option<String>,
    source_peer: Option<String>,
    source_sameness_group: Option<String>,
}

impl IntentionBody {
    fn decode(body: &[u8]) -> Result<IntentionBody, ApiError> {
        decode_fields(body, INTENTION_FIELDS, &|_| {})
    }

    /// The action, refusing what Meridian cannot honour.
    fn action(&self) -> Result<Action, ApiError> {
        if self.permissions.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(ApiError::bad_request(
                "Permissions (L7 intentions) are not supported: give an Action, allow or deny",
            ));
        }
        if self
            .source_type
            .as_ref()
            .is_some_and(|t| !t.is_empty() && !t.eq_ignore_ascii_case("consul"))
        {
            return Err(ApiError::bad_request(
                "SourceType must be consul: Meridian's sources are its catalog's services",
            ));
        }
        for (what, v) in [
            ("SourceNS", &self.source_ns),
            ("DestinationNS", &self.destination_ns),
            ("SourcePartition", &self.source_partition),
            ("DestinationPartition", &self.destination_partition),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty() && *v != "default") {
                return Err(ApiError::bad_request(format!(
                    "{what} {v:?}: Meridian has only the default namespace and partition"
                )));
            }
        }
        if self.source_peer.as_ref().is_some_and(|p| !p.is_empty())
            || self
                .source_sameness_group
                .as_ref()
                .is_some_and(|p| !p.is_empty())
        {
            return Err(ApiError::bad_request(
                "cluster peering and sameness groups are not supported: every DC of the federation is a source already",
            ));
        }
        let a = self
            .action
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("an intention needs an Action: allow or deny"))?;
        Action::parse(a)
            .ok_or_else(|| ApiError::bad_request(format!("Action {a:?} is not allow or deny")))
    }
}

/// An intention as Consul shows it, with Meridian's `Datacenter` (the DC of the last write) and
/// `Version` (that write's hybrid logical clock).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct IntentionJson {
    #[serde(rename = "ID")]
    id: &'static str,
    description: String,
    #[serde(rename = "SourceNS")]
    source_ns: &'static str,
    source_name: String,
    #[serde(rename = "DestinationNS")]
    destination_ns: &'static str,
    destination_name: String,
    source_type: &'static str,
    action: &'static str,
    meta: BTreeMap<String, String>,
    precedence: u8,
    created_at: String,
    updated_at: String,
    create_index: u64,
    modify_index: u64,
    datacenter: String,
    version: u64,
}

impl IntentionJson {
    fn of(e: &Effective) -> IntentionJson {
        IntentionJson {
            id: "",
            description: e.intention.description.clone(),
            source_ns: "default",
            source_name: e.source.clone(),
            destination_ns: "default",
            destination_name: e.destination.clone(),
            source_type: "consul",
            action: e.intention.action.name(),
            meta: e.intention.meta.clone(),
            precedence: e.precedence(),
            created_at: rfc3339(e.intention.created_unix_ms),
            updated_at: rfc3339(e.stamp.hlc),
            create_index: 0,
            modify_index: 0,
            datacenter: e.stamp.origin.clone(),
            version: e.stamp.hlc,
        }
    }
}

/// Reads `name` from the query pairs.
fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The `?source=&destination=` pair, checked; `wildcards` says whether `*` is accepted.
fn pair_of(q: &[(String, String)], wildcards: bool) -> Result<(String, String), ApiError> {
    let mut out = Vec::with_capacity(2);
    for what in ["source", "destination"] {
        let v = param(q, what).filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::bad_request(format!("required query parameter {what} is missing"))
        })?;
        // Consul's `namespace/name` and `partition/namespace/name` forms: only the default.
        let name = match v.rsplit_once('/') {
            Some((ns, name)) if ns == "default" || ns == "default/default" => name,
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "{what} {v:?}: Meridian has only the default namespace and partition"
                )));
            }
            None => v,
        };
        if !is_side(name) || (!wildcards && name == ANY) {
            return Err(ApiError::bad_request(format!(
                "{what} {name:?} is not a service name{}",
                if wildcards { " or `*`" } else { "" }
            )));
        }
        out.push(name.to_owned());
    }
    let destination = out.pop().unwrap_or_default();
    let source = out.pop().unwrap_or_default();
    Ok((source, destination))
}

/// Checks `?dc=` (any known DC: every DC holds the same intentions).
fn check_dc(state: &ApiState, q: &[(String, String)]) -> Result<(), ApiError> {
    let p = ReadParams::parse(q)?;
    p.check_dc(&state.view())
}

fn not_found(source: &str, destination: &str) -> ApiError {
    ApiError::not_found(format!(
        "Intention not found: no intention from {source:?} to {destination:?}"
    ))
}

/// A write of intentions for `destination` needs the operator scope or a write token of that
/// service (Consul's `intentions:write` on the destination).
fn require_write(grant: &Grant, destination: &str) -> Result<(), ApiError> {
    if grant.may_update_checks(destination) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "Permission denied: token {:?} may not write intentions to {destination:?} (operator scope, or a write token of that service)",
                grant.name()
            ),
        })
    }
}

/// Intentions, as the API writes them.
const INTENTIONS: GlobalKind<Intention> = GlobalKind {
    what: "intention",
    records: DcState::intentions,
    cap: MAX_INTENTION_RECORDS,
    command: |intention| Command::SetIntention { intention },
};

/// `PUT /v1/connect/intentions/exact?source=&destination=`: creates or replaces the intention of
/// the pair; answers `true`.
pub(super) async fn put_exact(
    State(state): State<ApiState>,
    Query(q): Pairs,
    grant: Option<axum::Extension<Grant>>,
    body: Body,
) -> Result<Json<bool>, ApiError> {
    check_dc(&state, &q)?;
    let (source, destination) = pair_of(&q, true)?;
    if let Some(g) = &grant {
        require_write(&g.0, &destination)?;
    }
    let body = IntentionBody::decode(&read_body(body, state.max_body_bytes()).await?)?;
    let action = body.action()?;
    let created = state
        .intentions()
        .exact(&source, &destination)
        .map_or_else(now_ms, |e| e.intention.created_unix_ms);
    let value = Intention {
        action,
        description: body.description.unwrap_or_default(),
        meta: body.meta.unwrap_or_default(),
        created_unix_ms: created,
    };
    let key = intention::key(&source, &destination);
    check_intention(&key, &value).map_err(ApiError::bad_request)?;
    state.write_global(&INTENTIONS, &key, Some(value)).await?;
    Ok(Json(true))
}

/// `DELETE /v1/connect/intentions/exact?source=&destination=`: deletes the intention of the pair
/// in every DC; answers `true` (also when there was none, as Consul does).
pub(super) async fn delete_exact(
    State(state): State<ApiState>,
    Query(q): Pairs,
    grant: Option<axum::Extension<Grant>>,
) -> Result<Json<bool>, ApiError> {
    check_dc(&state, &q)?;
    let (source, destination) = pair_of(&q, true)?;
    if let Some(g) = &grant {
        require_write(&g.0, &destination)?;
    }
    if state.intentions().exact(&source, &destination).is_some() {
        let key = intention::key(&source, &destination);
        state.write_global(&INTENTIONS, &key, None).await?;
    }
    Ok(Json(true))
}

/// `GET /v1/connect/intentions/exact?source=&destination=`.
pub(super) async fn get_exact(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Json<IntentionJson>, ApiError> {
    check_dc(&state, &q)?;
    let (source, destination) = pair_of(&q, true)?;
    let all = state.intentions();
    let e = all
        .exact(&source, &destination)
        .ok_or_else(|| not_found(&source, &destination))?;
    Ok(Json(IntentionJson::of(e)))
}

/// `GET /v1/connect/intentions`: every intention in force, in evaluation order.
pub(super) async fn list(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Json<Vec<IntentionJson>>, ApiError> {
    check_dc(&state, &q)?;
    let all = state.intentions();
    let mut v: Vec<&Effective> = all.iter().collect();
    sort_by_precedence(&mut v);
    Ok(Json(v.into_iter().map(IntentionJson::of).collect()))
}

/// `GET /v1/connect/intentions/match?by=source|destination&name=`: for each `name` (it may be
/// repeated), the intentions that apply to it, in evaluation order. A blocking query (`?index=`)
/// waits until that answer (or `[mesh] default_intention`) changes: how a sidecar learns at once
/// that its decisions may have changed.
pub(super) async fn match_by(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    check_dc(&state, &q)?;
    let by_source = match param(&q, "by") {
        Some("source") => true,
        Some("destination") => false,
        _ => {
            return Err(ApiError::bad_request(
                "required query parameter by must be source or destination",
            ));
        }
    };
    let names: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "name")
        .map(|(_, v)| v.as_str())
        .collect();
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "required query parameter name is missing",
        ));
    }
    let params = ReadParams::parse(&q)?;
    let answer = || {
        let all = state.intentions();
        let body: BTreeMap<String, Vec<IntentionJson>> = names
            .iter()
            .map(|n| {
                let matched = all.matching_name(by_source, n);
                (
                    (*n).to_owned(),
                    matched.into_iter().map(IntentionJson::of).collect(),
                )
            })
            .collect();
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let index = digest_index(&(json.as_slice(), state.default_intention().name()));
        (json, index)
    };
    // The answer is a function of the view: wait for a view whose answer differs.
    let _ = wait_for_resolution(state.views(), &params, state.closing(), |_| answer().1).await;
    let (json, index) = answer();
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                HeaderName::from_static("x-consul-index"),
                HeaderValue::from(index),
            ),
        ],
        json,
    )
        .into_response())
}

/// `GET /v1/connect/intentions/check?source=&destination=`: `{"Allowed": …}` by the intention of
/// highest precedence that matches, or `[mesh] default_intention`.
pub(super) async fn check(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Json<Value>, ApiError> {
    check_dc(&state, &q)?;
    if let Some(t) = param(&q, "source-type").filter(|t| !t.eq_ignore_ascii_case("consul")) {
        return Err(ApiError::bad_request(format!(
            "source-type {t:?} is not consul"
        )));
    }
    let (source, destination) = pair_of(&q, false)?;
    let all = state.intentions();
    let (allowed, by) = all.allows(&source, &destination, state.default_intention());
    Ok(Json(json!({
        "Allowed": allowed,
        // Meridian's: what decided (absent: the default).
        "Intention": by.map(IntentionJson::of),
    })))
}
