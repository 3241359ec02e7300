//! Access control for the HTTP API: the `[acl]` section, the tokens it defines, and the decision
//! for one request (who presented which token, and what it may do).
//!
//! A client presents its token as Consul's clients do: the `X-Consul-Token` header,
//! `Authorization: Bearer`, or `?token=`. Secrets are kept only as SHA-256 digests and never
//! logged: a token is named in logs by its `description`. The file's tokens (bootstrap and
//! break-glass) are compared in constant time against every one of them and win; then the
//! digest is looked up among the tokens created through the API in any DC
//! ([`meridian_topology::token::Tokens`]), a map lookup by a digest that says nothing of the
//! secret.

use std::sync::Arc;

use meridian_topology::is_internal_service;
use meridian_topology::names::{is_service_pattern, pattern_matches};
use meridian_topology::token::{Effective, Tokens};
use ring::digest::{SHA256, digest};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

/// A secret from the configuration: shown as `[redacted]` by `Debug`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

pub use meridian_topology::token::Scope;

/// One scoped token (`[[acl.tokens]]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// Names the token in logs and errors (never the secret).
    #[serde(default)]
    pub description: String,
    /// The secret a client presents.
    pub secret: Secret,
    /// What it may do.
    pub scope: Scope,
    /// For `write`: the services it may change (names, `prefix*`, or `*`).
    #[serde(default)]
    pub services: Vec<String>,
}

/// `[acl]`: who may use the HTTP API.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AclSection {
    /// Enforce tokens. Default: on, except for `--dev` agents.
    pub enabled: Option<bool>,
    /// Reads need no token (DNS-style anonymous use of the catalog); writes still do.
    pub anonymous_read: bool,
    /// A token that may do everything.
    pub management_token: Option<Secret>,
    /// Scoped tokens.
    pub tokens: Vec<TokenSection>,
    /// How often the DC's leader prunes the token records (of tokens created through the API)
    /// that can never be in force again, in ms. Default 60,000.
    pub token_prune_interval_ms: Option<u64>,
}

/// An `[acl]` value the agent refuses: its key (TOML path) and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid config key `{key}`: {reason}")]
pub struct AclError {
    /// The key, in TOML path notation (`acl.tokens[0].secret`).
    pub key: String,
    /// Why it is refused.
    pub reason: String,
}

impl AclError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        AclError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Shortest secret accepted: guessing must stay out of reach.
const MIN_SECRET_LEN: usize = 16;

impl AclSection {
    /// [`AclSection::token_prune_interval_ms`], or its default.
    pub fn token_prune_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.token_prune_interval_ms.unwrap_or(60_000))
    }

    pub(crate) fn validate(&self) -> Result<(), AclError> {
        if let Some(ms) = self.token_prune_interval_ms
            && !(100..=86_400_000).contains(&ms)
        {
            return Err(AclError::invalid(
                "acl.token_prune_interval_ms",
                "must be between 100 (0.1 s) and 86400000 (a day)",
            ));
        }
        let mut secrets: Vec<&str> = Vec::new();
        if let Some(m) = &self.management_token {
            check_secret("acl.management_token", &m.0)?;
            secrets.push(&m.0);
        }
        for (i, t) in self.tokens.iter().enumerate() {
            check_secret(&format!("acl.tokens[{i}].secret"), &t.secret.0)?;
            if secrets.contains(&t.secret.0.as_str()) {
                return Err(AclError::invalid(
                    format!("acl.tokens[{i}].secret"),
                    "is the secret of another token",
                ));
            }
            secrets.push(&t.secret.0);
            match (t.scope, t.services.is_empty()) {
                (Scope::Write, true) => {
                    return Err(AclError::invalid(
                        format!("acl.tokens[{i}].services"),
                        "a `write` token needs the services it may change (`*` for all)",
                    ));
                }
                (Scope::Read | Scope::Operator | Scope::Management, false) => {
                    return Err(AclError::invalid(
                        format!("acl.tokens[{i}].services"),
                        "only `write` tokens are limited to services",
                    ));
                }
                _ => {}
            }
            for (j, p) in t.services.iter().enumerate() {
                if !is_service_pattern(p) {
                    return Err(AclError::invalid(
                        format!("acl.tokens[{i}].services[{j}]"),
                        format!("{p:?} is not a service name or a `prefix*` pattern"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rules for an agent (`dev` agents default to no enforcement).
    pub fn to_acl(&self, dev: bool) -> Acl {
        let mut tokens: Vec<Token> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| Token {
                digest: sha256(&t.secret.0),
                grant: Grant {
                    scope: t.scope,
                    services: t.services.clone().into(),
                    name: if t.description.is_empty() {
                        format!("acl.tokens[{i}]").into()
                    } else {
                        t.description.as_str().into()
                    },
                    accessor: None,
                },
            })
            .collect();
        if let Some(m) = &self.management_token {
            tokens.push(Token {
                digest: sha256(&m.0),
                grant: Grant::management("management token"),
            });
        }
        Acl {
            enabled: self.enabled.unwrap_or(!dev),
            anonymous_read: self.anonymous_read,
            tokens,
        }
    }
}

fn check_secret(key: &str, s: &str) -> Result<(), AclError> {
    if s.len() < MIN_SECRET_LEN {
        return Err(AclError::invalid(
            key,
            format!(
                "must be at least {MIN_SECRET_LEN} characters (generate one with `openssl rand -hex 16`)"
            ),
        ));
    }
    if !s.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(AclError::invalid(
            key,
            "must be printable ASCII without spaces (it travels in an HTTP header)",
        ));
    }
    Ok(())
}

/// The SHA-256 of a secret: how a token is kept and compared.
pub(crate) fn sha256(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, s.as_bytes()).as_ref());
    out
}

struct Token {
    digest: [u8; 32],
    grant: Grant,
}

/// The rules the HTTP API enforces.
pub struct Acl {
    enabled: bool,
    anonymous_read: bool,
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl")
            .field("enabled", &self.enabled)
            .field("anonymous_read", &self.anonymous_read)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// What a request may do once its token is known.
#[derive(Clone, Debug)]
pub struct Grant {
    scope: Scope,
    services: Arc<[String]>,
    name: Arc<str>,
    /// The accessor ID of a token created through the API; `None` for the file's tokens.
    accessor: Option<Arc<str>>,
}

impl Grant {
    fn management(name: &str) -> Self {
        Grant {
            scope: Scope::Management,
            services: Arc::from([]),
            name: name.into(),
            accessor: None,
        }
    }

    fn of_api(t: &Effective) -> Self {
        let name = if t.token.description.is_empty() {
            format!("token {}", t.accessor_id)
        } else {
            t.token.description.clone()
        };
        Grant {
            scope: t.token.scope,
            services: t.token.services.clone().into(),
            name: name.into(),
            accessor: Some(t.accessor_id.as_str().into()),
        }
    }

    /// The token's scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The services a `write` token may change.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// How logs and errors name the token.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The accessor ID of a token created through the API (`None`: a file token, or none).
    pub fn accessor(&self) -> Option<&str> {
        self.accessor.as_deref()
    }

    /// Whether this grant may change instances and checks of `service`. Meridian's own
    /// services (`meridian-gateway`, `meridian-drain`: `meridian-*`) are the node's and the
    /// management token's only, whatever a write token's patterns say: registering one would
    /// drain the DC or point other DCs' tunnels elsewhere.
    pub fn may_write_service(&self, service: &str) -> bool {
        match self.scope {
            Scope::Management => true,
            Scope::Write => {
                !is_internal_service(service)
                    && self.services.iter().any(|p| pattern_matches(p, service))
            }
            Scope::Read | Scope::Operator => false,
        }
    }

    /// Whether this grant may update checks of `service` (writers of it, and operators).
    pub fn may_update_checks(&self, service: &str) -> bool {
        self.scope == Scope::Operator || self.may_write_service(service)
    }

    /// Checks [`Grant::may_write_service`], with the 403 a client sees.
    pub fn require_service_write(&self, service: &str) -> Result<(), Denied> {
        if self.may_write_service(service) {
            Ok(())
        } else if is_internal_service(service) {
            Err(Denied::Reserved {
                token: self.name.clone(),
                service: service.to_owned(),
            })
        } else {
            Err(Denied::Service {
                token: self.name.clone(),
                service: service.to_owned(),
            })
        }
    }

    /// Checks [`Grant::may_update_checks`], with the 403 a client sees.
    pub fn require_check_update(&self, service: &str) -> Result<(), Denied> {
        if self.may_update_checks(service) {
            Ok(())
        } else {
            Err(Denied::Service {
                token: self.name.clone(),
                service: service.to_owned(),
            })
        }
    }

    /// Checks that this grant may change node-level state (node checks, node maintenance):
    /// operators and management.
    pub fn require_node_write(&self) -> Result<(), Denied> {
        match self.scope {
            Scope::Operator | Scope::Management => Ok(()),
            Scope::Read | Scope::Write => Err(Denied::Scope {
                token: self.name.clone(),
                scope: self.scope.name(),
                what: "change node-level checks or maintenance (operator scope)",
            }),
        }
    }

    /// Whether this is the management grant (or ACLs are off).
    pub fn is_management(&self) -> bool {
        self.scope == Scope::Management
    }
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: public data (the mesh CA roots, which Consul serves without a token too).
    Public,
    /// Reading.
    Read,
    /// Changing instances of a service (the handler checks which).
    ServiceWrite,
    /// Updating checks of a service (the handler checks which).
    CheckUpdate,
    /// Drains, prepared queries, node maintenance and external nodes.
    Operator,
    /// Anything else.
    Management,
}

impl Need {
    /// What `method` on `path` needs. Unknown writes need the management token, so a new route
    /// is closed until it is classified here.
    pub fn of(method: &axum::http::Method, path: &str) -> Need {
        use axum::http::Method;
        // A backup holds the whole DC at once: an operator's, like its restore.
        if path == "/v1/snapshot" {
            return Need::Operator;
        }
        // Certificates every peer must have to verify anyone: public, as in Consul.
        if path == "/v1/connect/ca/roots" || path == "/v1/agent/connect/ca/roots" {
            return Need::Public;
        }
        // The UI's page and scripts hold no data: the browser loads them before any token is
        // typed (its calls for data carry the token).
        if (method == Method::GET || method == Method::HEAD)
            && (path == "/" || path == "/ui" || path.starts_with("/ui/"))
        {
            return Need::Public;
        }
        // A token reads itself; listing or reading others' is management's, like changing them.
        if path == "/v1/acl/token/self" && (method == Method::GET || method == Method::HEAD) {
            return Need::Read;
        }
        if path.starts_with("/v1/acl/") {
            return Need::Management;
        }
        // A leaf is a service's identity, and authorizing is asked by the target's proxy: both
        // need a token that may write that service (the handler checks which).
        if path.starts_with("/v1/agent/connect/ca/leaf/") || path == "/v1/agent/connect/authorize" {
            return Need::ServiceWrite;
        }
        if method == Method::GET || method == Method::HEAD {
            return Need::Read;
        }
        if path == "/v1/agent/service/register"
            || path.starts_with("/v1/agent/service/deregister/")
            || path.starts_with("/v1/agent/service/maintenance/")
        {
            Need::ServiceWrite
        } else if path.starts_with("/v1/agent/check/") {
            Need::CheckUpdate
        } else if path == "/v1/connect/intentions/exact" {
            // Operators, and writers of the destination (the handler checks which).
            Need::CheckUpdate
        } else if path.starts_with("/v1/operator/")
            || path == "/v1/connect/ca/configuration"
            || path.starts_with("/v1/query")
            || path == "/v1/agent/maintenance"
            || path == "/v1/agent/reload"
            || path == "/v1/catalog/register"
            || path == "/v1/catalog/deregister"
        {
            Need::Operator
        } else {
            Need::Management
        }
    }
}

/// Why a request was refused (403).
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// No token was presented and anonymous access does not cover the endpoint.
    #[error(
        "Permission denied: this endpoint needs an ACL token (X-Consul-Token header, Authorization: Bearer, or ?token=)"
    )]
    NoToken,
    /// The token is not one of the configured ones.
    #[error("Permission denied: ACL not found (the token is not one this agent knows)")]
    UnknownToken,
    /// The token's scope does not cover the endpoint.
    #[error("Permission denied: token {token:?} ({scope}) cannot {what}")]
    Scope {
        /// The token's description.
        token: Arc<str>,
        /// Its scope.
        scope: &'static str,
        /// What was attempted.
        what: &'static str,
    },
    /// The token may not change this service.
    #[error("Permission denied: token {token:?} may not change service {service:?}")]
    Service {
        /// The token's description.
        token: Arc<str>,
        /// The service.
        service: String,
    },
    /// The service is one of Meridian's own (`meridian-*`): only the node and the management
    /// token change it (drains have their own operator endpoint).
    #[error(
        "Permission denied: token {token:?} may not change service {service:?}: meridian-* services are Meridian's own (use the management token, or PUT /v1/operator/drain for a drain)"
    )]
    Reserved {
        /// The token's description.
        token: Arc<str>,
        /// The service.
        service: String,
    },
}

impl Acl {
    /// No enforcement: every request may do everything (`--dev`, in-process tests).
    pub fn open() -> Self {
        Acl {
            enabled: false,
            anonymous_read: true,
            tokens: Vec::new(),
        }
    }

    /// Whether tokens are enforced.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a token of the file has the secret with this SHA-256.
    pub fn knows(&self, secret_sha256: &[u8; 32]) -> bool {
        self.tokens.iter().fold(false, |found, t| {
            found | bool::from(t.digest.ct_eq(secret_sha256))
        })
    }

    /// The grant of `presented` for an endpoint that needs `need`, or why not: a file token,
    /// else one of the tokens created through the API, in force in any DC, which `api` gives
    /// (asked only for a secret that no file token has: requests without a token, or with one
    /// of the file's, never pay for it).
    pub fn authorize(
        &self,
        presented: Option<&str>,
        need: Need,
        api: &dyn Fn() -> Arc<Tokens>,
    ) -> Result<Grant, Denied> {
        if !self.enabled {
            return Ok(Grant::management("acl disabled"));
        }
        let Some(secret) = presented else {
            return if need == Need::Public || (need == Need::Read && self.anonymous_read) {
                Ok(Grant {
                    scope: Scope::Read,
                    services: Arc::from([]),
                    name: "anonymous".into(),
                    accessor: None,
                })
            } else {
                Err(Denied::NoToken)
            };
        };
        let presented = sha256(secret);
        // Every token is compared, whatever matched, so timing says nothing about which did.
        let mut found: Option<&Grant> = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&presented)) {
                found = Some(&t.grant);
            }
        }
        let from_api;
        let grant = match found {
            Some(g) => g,
            None => {
                let tokens = api();
                from_api = Grant::of_api(tokens.by_secret(&presented).ok_or(Denied::UnknownToken)?);
                &from_api
            }
        };
        let ok = match need {
            Need::Public | Need::Read => true,
            Need::ServiceWrite => matches!(grant.scope, Scope::Write | Scope::Management),
            Need::CheckUpdate => {
                matches!(
                    grant.scope,
                    Scope::Write | Scope::Operator | Scope::Management
                )
            }
            Need::Operator => matches!(grant.scope, Scope::Operator | Scope::Management),
            Need::Management => grant.scope == Scope::Management,
        };
        if ok {
            Ok(grant.clone())
        } else {
            Err(Denied::Scope {
                token: grant.name.clone(),
                scope: grant.scope.name(),
                what: match need {
                    Need::Public | Need::Read => "read",
                    Need::ServiceWrite => "register or deregister services",
                    Need::CheckUpdate => "update checks",
                    Need::Operator => "do operator actions (drains, prepared queries)",
                    Need::Management => "do this (it needs the management token)",
                },
            })
        }
    }
}

/// The token a request presents: `X-Consul-Token`, then `Authorization: Bearer`, then
/// `?token=`. A header that is not valid text counts as no token.
pub fn presented_token(req: &axum::http::request::Parts) -> Option<String> {
    if let Some(v) = req.headers.get("x-consul-token") {
        return v.to_str().ok().map(str::to_owned);
    }
    if let Some(v) = req.headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned());
    }
    let query = req.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> impl Fn() -> Arc<Tokens> {
        || Arc::new(Tokens::default())
    }

    fn acl() -> Acl {
        let section: AclSection = toml::from_str(
            r#"
            management_token = "mgmt-0123456789abcdef"
            [[tokens]]
            description = "reader"
            secret = "read-0123456789abcdef"
            scope = "read"
            [[tokens]]
            description = "web deployer"
            secret = "write-0123456789abcdef"
            scope = "write"
            services = ["web", "api-*"]
            [[tokens]]
            secret = "oper-0123456789abcdef"
            scope = "operator"
            "#,
        )
        .expect("acl section");
        section.validate().expect("valid");
        section.to_acl(false)
    }

    #[test]
    fn no_token_reads_only_when_anonymous_read_is_on() {
        let mut a = acl();
        assert!(matches!(
            a.authorize(None, Need::Read, &none()),
            Err(Denied::NoToken)
        ));
        a.anonymous_read = true;
        assert!(a.authorize(None, Need::Read, &none()).is_ok());
        assert!(matches!(
            a.authorize(None, Need::ServiceWrite, &none()),
            Err(Denied::NoToken)
        ));
    }

    #[test]
    fn scopes_cover_what_they_say() {
        let a = acl();
        let read = Some("read-0123456789abcdef");
        let write = Some("write-0123456789abcdef");
        let oper = Some("oper-0123456789abcdef");
        let mgmt = Some("mgmt-0123456789abcdef");
        assert!(a.authorize(read, Need::Read, &none()).is_ok());
        for need in [
            Need::ServiceWrite,
            Need::CheckUpdate,
            Need::Operator,
            Need::Management,
        ] {
            assert!(a.authorize(read, need, &none()).is_err(), "{need:?}");
            assert!(a.authorize(mgmt, need, &none()).is_ok(), "{need:?}");
        }
        let w = a
            .authorize(write, Need::ServiceWrite, &none())
            .expect("write");
        assert!(w.may_write_service("web") && w.may_write_service("API-v2"));
        assert!(!w.may_write_service("db") && !w.may_write_service("webx"));
        // Meridian's own services are the management token's, whatever a pattern says.
        let any = Grant {
            scope: Scope::Write,
            services: Arc::from(["*".to_owned(), "meridian-*".to_owned()]),
            name: "deployer".into(),
            accessor: None,
        };
        assert!(any.may_write_service("db"));
        for own in ["meridian-drain", "meridian-gateway", "Meridian-Gateway"] {
            assert!(!any.may_write_service(own), "{own}");
            assert!(matches!(
                any.require_service_write(own),
                Err(Denied::Reserved { .. })
            ));
        }
        let m = a
            .authorize(mgmt, Need::ServiceWrite, &none())
            .expect("management");
        assert!(m.may_write_service("meridian-drain"));
        assert!(a.authorize(write, Need::Operator, &none()).is_err());
        let o = a
            .authorize(oper, Need::CheckUpdate, &none())
            .expect("operator");
        assert!(o.may_update_checks("db") && !o.may_write_service("db"));
        assert!(a.authorize(oper, Need::ServiceWrite, &none()).is_err());
        assert!(matches!(
            a.authorize(Some("nope-0123456789abcdef"), Need::Read, &none()),
            Err(Denied::UnknownToken)
        ));
    }

    #[test]
    fn disabled_acl_allows_everything() {
        let a = AclSection::default().to_acl(true);
        assert!(!a.enabled());
        assert!(
            a.authorize(None, Need::Management, &none())
                .expect("open")
                .is_management()
        );
        assert!(AclSection::default().to_acl(false).enabled());
    }

    #[test]
    fn bad_sections_are_refused_by_key() {
        for (toml, key) in [
            ("management_token = \"short\"", "acl.management_token"),
            (
                "[[tokens]]\nsecret = \"write-0123456789abcdef\"\nscope = \"write\"",
                "acl.tokens[0].services",
            ),
            (
                "[[tokens]]\nsecret = \"read-0123456789abcdef\"\nscope = \"read\"\nservices = [\"x\"]",
                "acl.tokens[0].services",
            ),
            (
                "[[tokens]]\nsecret = \"write-0123456789abcdef\"\nscope = \"write\"\nservices = [\"a b\"]",
                "acl.tokens[0].services[0]",
            ),
            (
                "management_token = \"same-0123456789abcdef\"\n[[tokens]]\nsecret = \"same-0123456789abcdef\"\nscope = \"read\"",
                "acl.tokens[0].secret",
            ),
        ] {
            let s: AclSection = toml::from_str(toml).expect(toml);
            match s.validate() {
                Err(AclError { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s: AclSection =
            toml::from_str("management_token = \"mgmt-0123456789abcdef\"").expect("section");
        let shown = format!("{s:?} {:?}", s.to_acl(false));
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }

    #[test]
    fn tokens_are_read_from_every_place_consul_clients_put_them() {
        let parts = |req: axum::http::Request<()>| req.into_parts().0;
        let h = axum::http::Request::builder()
            .uri("/v1/x")
            .header("X-Consul-Token", "abc")
            .body(())
            .expect("req");
        assert_eq!(presented_token(&parts(h)).as_deref(), Some("abc"));
        let b = axum::http::Request::builder()
            .uri("/v1/x")
            .header("Authorization", "Bearer def")
            .body(())
            .expect("req");
        assert_eq!(presented_token(&parts(b)).as_deref(), Some("def"));
        let q = axum::http::Request::builder()
            .uri("/v1/x?dc=a&token=g%2Bh")
            .body(())
            .expect("req");
        assert_eq!(presented_token(&parts(q)).as_deref(), Some("g+h"));
        let none = axum::http::Request::builder()
            .uri("/v1/x?dc=a")
            .body(())
            .expect("req");
        assert_eq!(presented_token(&parts(none)), None);
    }

    #[test]
    fn unknown_writes_need_management() {
        use axum::http::Method;
        assert_eq!(Need::of(&Method::GET, "/v1/agent/self"), Need::Read);
        assert_eq!(
            Need::of(&Method::PUT, "/v1/agent/service/register"),
            Need::ServiceWrite
        );
        assert_eq!(
            Need::of(&Method::PUT, "/v1/agent/check/pass/x"),
            Need::CheckUpdate
        );
        assert_eq!(Need::of(&Method::DELETE, "/v1/query/1"), Need::Operator);
        // A backup holds the whole DC: reading it is an operator's, as is restoring it.
        assert_eq!(Need::of(&Method::GET, "/v1/snapshot"), Need::Operator);
        assert_eq!(Need::of(&Method::PUT, "/v1/snapshot"), Need::Operator);
        assert_eq!(Need::of(&Method::PUT, "/v1/agent/reload"), Need::Operator);
        assert_eq!(
            Need::of(&Method::DELETE, "/v1/operator/raft/peer"),
            Need::Operator
        );
        assert_eq!(Need::of(&Method::POST, "/v1/anything"), Need::Management);
    }
}
