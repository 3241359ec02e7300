//! Consul's ACL token API: `PUT /v1/acl/token` (create), `GET`/`PUT`/`DELETE
//! /v1/acl/token/{accessor}`, `GET /v1/acl/tokens` and `GET /v1/acl/token/self`.
//!
//! Tokens are global: one created, changed or deleted through any agent of any DC is in force in
//! every DC once federation has carried it (last writer wins, [`meridian_topology::token`]). A
//! write goes into this DC's Raft group as this DC's record, stamped after every record of the
//! token this node can see. Meridian has scopes, not Consul's policies: a token carries `Scope`
//! and, for `write`, `Services`; `Policies: [{"Name": "global-management"}]` is read as the
//! management scope. The secret is returned by the create that made it and never again (reads
//! show `<hidden>`, as Consul shows a secret its reader may not see), and never logged.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_catalog::Command;
use meridian_federation::now_ms;
use meridian_topology::DcState;
use meridian_topology::prepared::format_query_id;
use meridian_topology::token::{ApiToken, Effective, MAX_TOKEN_RECORDS, Scope, check_token};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::body::read_body;
use super::register::{decode_fields, field};
use super::{ApiError, ApiState, GlobalKind, Grant};
use crate::acl::sha256;

/// What a read shows in place of a secret.
const HIDDEN: &str = "<hidden>";

/// Consul's built-in policies that a Meridian scope is: `global-management` (management) and
/// `builtin/global-read-only` (read), by ID and name.
const GLOBAL_MANAGEMENT: (&str, &str) =
    ("00000000-0000-0000-0000-000000000001", "global-management");
const GLOBAL_READ_ONLY: (&str, &str) = (
    "00000000-0000-0000-0000-000000000002",
    "builtin/global-read-only",
);

/// Shortest secret a client may choose (as for the file's tokens).
const MIN_SECRET_LEN: usize = 16;

const TOKEN_FIELDS: &[&str] = &[
    "AccessorID",
    "SecretID",
    "Description",
    "Scope",
    "Services",
    "Policies",
    "Roles",
    "ServiceIdentities",
    "NodeIdentities",
    "TemplatedPolicies",
    "Local",
    "ExpirationTime",
    "ExpirationTTL",
    "AuthMethod",
    "Namespace",
    "Partition",
];

/// A create or update body. Fields not named here (what a client echoes back from a read:
/// `CreateTime`, `Hash`, the indexes, …) are ignored; the ones that would change what a token
/// may do, and that Meridian cannot honour, are read to be refused.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TokenBody {
    #[serde(rename = "AccessorID")]
    accessor_id: Option<String>,
    #[serde(rename = "SecretID")]
    secret_id: Option<String>,
    description: Option<String>,
    scope: Option<String>,
    services: Option<Vec<String>>,
    policies: Option<Vec<PolicyLink>>,
    roles: Option<Vec<Value>>,
    service_identities: Option<Vec<Value>>,
    node_identities: Option<Vec<Value>>,
    templated_policies: Option<Vec<Value>>,
    local: bool,
    expiration_time: Option<Value>,
    #[serde(rename = "ExpirationTTL")]
    expiration_ttl: Option<Value>,
    auth_method: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
}

/// A scope a body asks for, with the services it names (if it names any).
type Asked = (Scope, Option<Vec<String>>);

/// A link to a Consul policy; only `global-management` means something here.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PolicyLink {
    #[serde(rename = "ID", alias = "Id", alias = "id")]
    id: String,
    #[serde(rename = "Name", alias = "name")]
    name: String,
}

impl TokenBody {
    fn decode(body: &[u8]) -> Result<TokenBody, ApiError> {
        decode_fields(body, TOKEN_FIELDS, &|_| {})
    }

    /// Refuses what Meridian cannot honour, naming it.
    fn check_supported(&self) -> Result<(), ApiError> {
        let unsupported = |what: &str| {
            Err(ApiError::bad_request(format!(
                "{what} is not supported: Meridian's tokens have a Scope (read, write, operator, management) and, for write, Services"
            )))
        };
        if self.local {
            return Err(ApiError::bad_request(
                "Local tokens are not supported: every Meridian token is usable in every datacenter",
            ));
        }
        if self.roles.as_ref().is_some_and(|r| !r.is_empty()) {
            return unsupported("Roles");
        }
        if self.node_identities.as_ref().is_some_and(|r| !r.is_empty()) {
            return unsupported("NodeIdentities");
        }
        if self
            .templated_policies
            .as_ref()
            .is_some_and(|r| !r.is_empty())
        {
            return unsupported("TemplatedPolicies");
        }
        if self.expiration_time.as_ref().is_some_and(|v| !v.is_null())
            || self.expiration_ttl.as_ref().is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::bad_request(
                "Token expiry is not supported: delete the token when it is no longer needed",
            ));
        }
        if self.auth_method.as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("AuthMethod");
        }
        for (what, v) in [
            ("Namespace", &self.namespace),
            ("Partition", &self.partition),
        ] {
            if v.as_ref().is_some_and(|v| !v.is_empty() && v != "default") {
                return Err(ApiError::bad_request(format!(
                    "{what} {v:?}: Meridian has only the default namespace and partition",
                    v = v.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// What the body asks the token to be: its `Scope` (with `Services`); else Consul's
    /// spelling of one: `ServiceIdentities` (a write token of those services, in every DC), or
    /// the `global-management` or `builtin/global-read-only` policy. `None`: nothing said.
    fn grant(&self) -> Result<Option<Asked>, ApiError> {
        if let Some(s) = &self.scope {
            let scope = Scope::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Scope {s:?} is not one of read, write, operator, management"
                ))
            })?;
            return Ok(Some((scope, self.services.clone())));
        }
        if let Some(ids) = self.service_identities.as_ref().filter(|i| !i.is_empty()) {
            let mut services = Vec::with_capacity(ids.len());
            for id in ids {
                let obj = id.as_object();
                let name = obj
                    .and_then(|o| field(o, "ServiceName"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::bad_request("ServiceIdentities: each needs a ServiceName")
                    })?;
                let dcs = obj.and_then(|o| field(o, "Datacenters"));
                if dcs.and_then(Value::as_array).is_some_and(|d| !d.is_empty()) {
                    return Err(ApiError::bad_request(
                        "ServiceIdentities with Datacenters are not supported: a Meridian token is valid in every datacenter",
                    ));
                }
                services.push(name.to_owned());
            }
            return Ok(Some((Scope::Write, Some(services))));
        }
        let is = |p: &PolicyLink, (id, name): (&str, &str)| p.name == name || p.id == id;
        match self.policies.as_deref() {
            None | Some([]) => Ok(None),
            Some([p]) if is(p, GLOBAL_MANAGEMENT) => Ok(Some((Scope::Management, None))),
            Some([p]) if is(p, GLOBAL_READ_ONLY) => Ok(Some((Scope::Read, None))),
            Some(_) => Err(ApiError::bad_request(
                "Meridian has no ACL policies: give the token a Scope (read, write, operator, management) and, for write, Services; the policies understood are global-management and builtin/global-read-only",
            )),
        }
    }
}

/// A token as the API shows it: Consul's fields, and Meridian's `Scope`, `Services`,
/// `Datacenter` (the DC of the last write) and `Source` (`api`, or `config` for a file token).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TokenJson {
    #[serde(rename = "AccessorID")]
    accessor_id: String,
    #[serde(rename = "SecretID")]
    secret_id: String,
    description: String,
    scope: &'static str,
    services: Vec<String>,
    policies: Vec<Value>,
    service_identities: Vec<Value>,
    local: bool,
    create_time: String,
    datacenter: String,
    source: &'static str,
}

impl TokenJson {
    fn of(e: &Effective, secret: Option<String>) -> TokenJson {
        TokenJson {
            accessor_id: e.accessor_id.clone(),
            secret_id: secret.unwrap_or_else(|| HIDDEN.to_owned()),
            description: e.token.description.clone(),
            scope: e.token.scope.name(),
            services: e.token.services.clone(),
            policies: policies(e.token.scope),
            service_identities: service_identities(e.token.scope, &e.token.services),
            local: false,
            create_time: rfc3339(e.token.create_unix_ms),
            datacenter: e.stamp.origin.clone(),
            source: "api",
        }
    }
}

/// A scope as Consul's built-in policies show it (operator has no Consul equivalent).
fn policies(scope: Scope) -> Vec<Value> {
    let link = |(id, name): (&str, &str)| vec![serde_json::json!({"ID": id, "Name": name})];
    match scope {
        Scope::Management => link(GLOBAL_MANAGEMENT),
        Scope::Read => link(GLOBAL_READ_ONLY),
        Scope::Write | Scope::Operator => Vec::new(),
    }
}

/// A write token's services as Consul's service identities.
fn service_identities(scope: Scope, services: &[String]) -> Vec<Value> {
    if scope != Scope::Write {
        return Vec::new();
    }
    services
        .iter()
        .map(|s| serde_json::json!({ "ServiceName": s }))
        .collect()
}

fn not_found(accessor: &str) -> ApiError {
    ApiError::not_found(format!(
        "ACL not found: no token with AccessorID {accessor:?}"
    ))
}

/// API tokens, as the API writes them.
const TOKENS: GlobalKind<ApiToken> = GlobalKind {
    what: "token",
    records: DcState::tokens,
    cap: MAX_TOKEN_RECORDS,
    command: |token| Command::SetToken { token },
};

/// Writes this DC's record of the token `accessor` and shows it as written.
async fn write_token(
    state: &ApiState,
    accessor: &str,
    token: ApiToken,
) -> Result<Effective, ApiError> {
    let stamp = state
        .write_global(&TOKENS, accessor, Some(token.clone()))
        .await?;
    Ok(Effective {
        accessor_id: accessor.to_owned(),
        stamp,
        token,
    })
}

/// `PUT /v1/acl/token`: creates a token. `AccessorID` and `SecretID` are generated unless the
/// body chooses them (a chosen secret is at least 16 printable characters and no other token's).
/// The answer is the only one that ever holds the secret.
pub(super) async fn create(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Json<TokenJson>, ApiError> {
    let body = TokenBody::decode(&read_body(body, state.max_body_bytes()).await?)?;
    body.check_supported()?;
    let (scope, services) = body.grant()?.ok_or_else(|| {
        ApiError::bad_request(
            "a token needs a Scope: read, write (with Services), operator or management",
        )
    })?;
    let tokens = state.api_tokens();
    let accessor = match &body.accessor_id {
        Some(a) if !a.is_empty() => {
            if tokens.by_accessor(a).is_some() {
                return Err(ApiError::bad_request(format!(
                    "a token with AccessorID {a:?} already exists"
                )));
            }
            a.clone()
        }
        _ => format_query_id(rand::random()),
    };
    let secret = match &body.secret_id {
        Some(s) if !s.is_empty() => {
            if s.len() < MIN_SECRET_LEN || !s.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(ApiError::bad_request(format!(
                    "SecretID must be at least {MIN_SECRET_LEN} printable characters without spaces"
                )));
            }
            s.clone()
        }
        _ => format_query_id(rand::random()),
    };
    let digest = sha256(&secret);
    if tokens.by_secret(&digest).is_some() || state.acl().knows(&digest) {
        return Err(ApiError::bad_request("SecretID is already another token's"));
    }
    let token = ApiToken {
        secret_sha256: digest,
        scope,
        services: services.unwrap_or_default(),
        description: body.description.unwrap_or_default(),
        create_unix_ms: now_ms(),
    };
    check_token(&accessor, &token).map_err(ApiError::bad_request)?;
    let written = write_token(&state, &accessor, token).await?;
    Ok(Json(TokenJson::of(&written, Some(secret))))
}

/// `PUT /v1/acl/token/{accessor}`: replaces a token's description, scope and services (its
/// secret stays; a body naming another secret or accessor is refused).
pub(super) async fn update(
    State(state): State<ApiState>,
    Path(accessor): Path<String>,
    body: Body,
) -> Result<Json<TokenJson>, ApiError> {
    let body = TokenBody::decode(&read_body(body, state.max_body_bytes()).await?)?;
    body.check_supported()?;
    let tokens = state.api_tokens();
    let old = tokens
        .by_accessor(&accessor)
        .ok_or_else(|| not_found(&accessor))?;
    if body
        .accessor_id
        .as_ref()
        .is_some_and(|a| !a.is_empty() && !a.eq_ignore_ascii_case(&accessor))
    {
        return Err(ApiError::bad_request(
            "AccessorID in the body is not the one in the path",
        ));
    }
    if body
        .secret_id
        .as_ref()
        .is_some_and(|s| !s.is_empty() && s != HIDDEN && sha256(s) != old.token.secret_sha256)
    {
        return Err(ApiError::bad_request(
            "a token's SecretID cannot change: create a new token and delete this one",
        ));
    }
    // What is not said stays; a new scope without services drops the old ones.
    let (scope, services) = match body.grant()? {
        Some((scope, services)) => (scope, services.unwrap_or_default()),
        None => (old.token.scope, old.token.services.clone()),
    };
    let token = ApiToken {
        secret_sha256: old.token.secret_sha256,
        scope,
        services,
        description: body
            .description
            .unwrap_or_else(|| old.token.description.clone()),
        create_unix_ms: old.token.create_unix_ms,
    };
    let accessor = old.accessor_id.clone();
    check_token(&accessor, &token).map_err(ApiError::bad_request)?;
    let written = write_token(&state, &accessor, token).await?;
    Ok(Json(TokenJson::of(&written, None)))
}

/// `DELETE /v1/acl/token/{accessor}`: deletes a token in every DC (a tombstone that outranks
/// every earlier write of it). Answers `true`, as Consul does.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Path(accessor): Path<String>,
) -> Result<Json<bool>, ApiError> {
    let tokens = state.api_tokens();
    let old = tokens
        .by_accessor(&accessor)
        .ok_or_else(|| not_found(&accessor))?;
    let accessor = old.accessor_id.clone();
    state.write_global(&TOKENS, &accessor, None).await?;
    Ok(Json(true))
}

/// `GET /v1/acl/token/{accessor}`.
pub(super) async fn read(
    State(state): State<ApiState>,
    Path(accessor): Path<String>,
) -> Result<Json<TokenJson>, ApiError> {
    let tokens = state.api_tokens();
    let t = tokens
        .by_accessor(&accessor)
        .ok_or_else(|| not_found(&accessor))?;
    Ok(Json(TokenJson::of(t, None)))
}

/// `GET /v1/acl/tokens`: the tokens created through the API (the file's are not listed), by
/// creation time.
pub(super) async fn list(State(state): State<ApiState>) -> Json<Vec<TokenJson>> {
    let tokens = state.api_tokens();
    let mut all: Vec<&Effective> = tokens.iter().collect();
    all.sort_by(|a, b| {
        (a.token.create_unix_ms, &a.accessor_id).cmp(&(b.token.create_unix_ms, &b.accessor_id))
    });
    Json(all.into_iter().map(|t| TokenJson::of(t, None)).collect())
}

/// `GET /v1/acl/token/self`: the token the request presents (an API token as `read` shows it;
/// a file token by its description and scope, with `Source: config`).
pub(super) async fn read_self(
    State(state): State<ApiState>,
    grant: Option<axum::Extension<Grant>>,
) -> Result<Json<TokenJson>, ApiError> {
    let denied = || ApiError {
        status: StatusCode::FORBIDDEN,
        message: "ACL not found: present a token (X-Consul-Token) to read it".into(),
    };
    let grant = grant.ok_or_else(denied)?.0;
    if let Some(accessor) = grant.accessor() {
        let tokens = state.api_tokens();
        let t = tokens.by_accessor(accessor).ok_or_else(denied)?;
        return Ok(Json(TokenJson::of(t, None)));
    }
    if grant.name() == "anonymous" || !state.acl().enabled() {
        return Err(denied());
    }
    Ok(Json(TokenJson {
        accessor_id: String::new(),
        secret_id: HIDDEN.to_owned(),
        description: grant.name().to_owned(),
        scope: grant.scope().name(),
        services: grant.services().to_vec(),
        policies: policies(grant.scope()),
        service_identities: service_identities(grant.scope(), grant.services()),
        local: true,
        create_time: String::new(),
        datacenter: String::new(),
        source: "config",
    }))
}

/// `ms` (since the Unix epoch) as RFC 3339 in UTC, as Consul writes `CreateTime`.
pub(super) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_083_199_000), "2026-11-30T23:59:59.000Z");
    }

    #[test]
    fn bodies_map_to_scopes_and_refuse_what_cannot_be_honoured() {
        let scope = |b: &str| TokenBody::decode(b.as_bytes()).and_then(|t| t.grant());
        let web = Some(vec!["web".to_owned()]);
        assert_eq!(
            scope(r#"{"scope":"Write","services":["web"]}"#).ok(),
            Some(Some((Scope::Write, web.clone())))
        );
        assert_eq!(
            scope(r#"{"ServiceIdentities":[{"ServiceName":"web"}]}"#).ok(),
            Some(Some((Scope::Write, web)))
        );
        assert!(
            scope(r#"{"ServiceIdentities":[{"ServiceName":"web","Datacenters":["dc1"]}]}"#)
                .is_err()
        );
        assert_eq!(
            scope(r#"{"Policies":[{"Name":"global-management"}]}"#).ok(),
            Some(Some((Scope::Management, None)))
        );
        assert_eq!(
            scope(r#"{"Policies":[{"ID":"00000000-0000-0000-0000-000000000002"}]}"#).ok(),
            Some(Some((Scope::Read, None)))
        );
        assert!(scope(r#"{"Policies":[{"Name":"readers"}]}"#).is_err());
        assert!(scope(r#"{"Scope":"root"}"#).is_err());
        let supported = |b: &str| TokenBody::decode(b.as_bytes()).and_then(|t| t.check_supported());
        assert!(supported(r#"{"Scope":"read","Local":true}"#).is_err());
        assert!(supported(r#"{"Scope":"read","ExpirationTTL":"1h"}"#).is_err());
        assert!(supported(r#"{"Scope":"read","Roles":[{"Name":"x"}]}"#).is_err());
        assert!(supported(r#"{"Scope":"read","CreateIndex":5,"Hash":"x"}"#).is_ok());
    }
}
