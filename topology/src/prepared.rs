//! Prepared queries, as Consul has them: a named, stored service lookup (service, tags,
//! only-passing, failover datacenters, DNS TTL) that clients execute over HTTP
//! (`/v1/query/<id or name>/execute`) or DNS (`<name>.query.<domain>`).
//!
//! A query belongs to the datacenter whose Raft group stores it and is never federated (Consul's
//! are DC-local too). A query may be a name-prefix template (Consul's `name_prefix_match`): it
//! answers every name that starts with its own, the longest prefix winning, with `${name.full}`,
//! `${name.prefix}` and `${name.suffix}` in its service, tags and failover datacenters filled in
//! from the name asked ([`PreparedQuery::render`]). [`PreparedQuery`] is the stored form and serializes in Consul's JSON shape;
//! [`QueryDefinition`] is what a client sends, checked by [`QueryDefinition::into_query`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::failover::{AddressMode, FailoverPolicy};
use crate::names::is_label;

/// Longest tag accepted in a query (the limit of instance tags).
const MAX_TAG_LEN: usize = crate::names::MAX_ID_LEN;
/// Most tags or failover datacenters a query may list; far beyond any real use, it bounds the
/// work one stored query adds to every lookup.
const MAX_LIST: usize = 64;

/// Why a query definition was rejected. Messages follow Consul's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// `Service.Service` is missing or empty.
    #[error("Must provide a Service name to query")]
    MissingService,
    /// The service name is not a DNS label.
    #[error("Bad Service name {0:?}: not a valid DNS label")]
    BadService(String),
    /// The query name is neither empty nor a DNS label.
    #[error(
        "Bad query name {0:?}: it must be empty or a valid DNS label (1-63 letters, digits or '-', not starting or ending with '-'), so that it can be asked for as <name>.query.<domain>"
    )]
    BadName(String),
    /// The name has the shape of a query ID, which would make lookups by ID or name ambiguous.
    #[error("Bad query name {0:?}: names shaped like a query ID are reserved")]
    NameLooksLikeId(String),
    /// `Failover.NearestN` is negative.
    #[error("Bad NearestN '{0}', must be >= 0")]
    BadNearestN(i64),
    /// A failover datacenter is not a DNS label.
    #[error("Bad failover datacenter {0:?}: not a valid datacenter name")]
    BadDatacenter(String),
    /// A tag is empty, too long, or only `!`.
    #[error("Bad tag {0:?}: tags must be 1-256 bytes, with or without a leading '!'")]
    BadTag(String),
    /// A list is longer than this implementation accepts.
    #[error("{what} lists {len} entries; at most {MAX_LIST} are accepted")]
    TooMany {
        /// The field.
        what: &'static str,
        /// How many were given.
        len: usize,
    },
    /// `DNS.TTL` is not a duration.
    #[error("Bad DNS TTL '{ttl}': {reason}")]
    BadTtl {
        /// The TTL as given.
        ttl: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// `Template.Type` is neither empty nor `name_prefix_match`.
    #[error("Bad Template.Type {0:?}: only \"name_prefix_match\" is supported")]
    BadTemplateType(String),
    /// A template's text names a variable that does not exist, or is not closed.
    #[error(
        "Bad template text {text:?}: {reason} (the variables are ${{name.full}}, ${{name.prefix}}, ${{name.suffix}} and ${{agent.segment}})"
    )]
    BadTemplateText {
        /// The text with the variable.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A Consul feature Meridian does not have was asked for.
    #[error("{0} is not supported by Meridian")]
    Unsupported(&'static str),
}

/// A prepared query as stored in the catalog and shown by `GET /v1/query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PreparedQuery {
    /// Query ID, UUID-shaped (8-4-4-4-12 lowercase hex).
    #[serde(rename = "ID")]
    pub id: String,
    /// Query name, unique in its datacenter ignoring case; empty for a query reached by ID only.
    #[serde(default)]
    pub name: String,
    /// What the query looks up.
    pub service: QueryService,
    /// The TTL of DNS answers, in seconds; `None` uses the agent's configured service TTL.
    #[serde(rename = "DNS", default, with = "dns_options")]
    pub dns_ttl: Option<u32>,
    /// Set for a name-prefix template. In Consul's `Template` shape (all zero for a query that
    /// is none); queries stored before templates existed have none.
    #[serde(default, with = "template_options")]
    pub template: Option<QueryTemplate>,
    /// Raft index that created the query.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index that last changed the query.
    #[serde(default)]
    pub modify_index: u64,
}

/// The service a query looks up and how (Consul's `ServiceQuery`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryService {
    /// Service name (case-insensitive).
    pub service: String,
    /// Every tag must be on the instance (ignoring case); a tag starting with `!` must be absent.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Leave out instances whose health is `warning` too (critical ones always are).
    #[serde(default)]
    pub only_passing: bool,
    /// Where to look when the local datacenter has no healthy instance.
    #[serde(default)]
    pub failover: QueryFailover,
}

/// A query's failover targets (Consul's `QueryFailoverOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryFailover {
    /// Up to this many other datacenters, nearest first by measured RTT, are tried first.
    #[serde(rename = "NearestN", default)]
    pub nearest_n: usize,
    /// Then these datacenters, in this order (those not tried yet).
    #[serde(default, with = "arc_strs")]
    pub datacenters: Vec<Arc<str>>,
}

/// What makes a query a template (Consul's `QueryTemplateOptions` with `Type:
/// "name_prefix_match"`; regular-expression templates are not supported).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryTemplate {
    /// Drop the tags that interpolate to the empty string.
    pub remove_empty_tags: bool,
}

/// The only template type: the query answers every name its own name is a prefix of.
pub const NAME_PREFIX_MATCH: &str = "name_prefix_match";

/// One variable of a template's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Full,
    Prefix,
    Suffix,
    Segment,
}

/// One piece of a template's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a str),
    Var(Var),
}

/// Calls `each` for each run of text and each variable of `text`, in order; fails on an unknown
/// or unclosed variable.
fn walk_template<'a>(text: &'a str, mut each: impl FnMut(Piece<'a>)) -> Result<(), QueryError> {
    let bad = |reason| QueryError::BadTemplateText {
        text: text.to_owned(),
        reason,
    };
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        each(Piece::Literal(&rest[..at]));
        let after = &rest[at + 2..];
        let end = after.find('}').ok_or_else(|| bad("a ${ is not closed"))?;
        let name = after[..end].trim();
        each(Piece::Var(match name {
            "name.full" => Var::Full,
            "name.prefix" => Var::Prefix,
            "name.suffix" => Var::Suffix,
            "agent.segment" => Var::Segment,
            n if n.starts_with("match(") => {
                return Err(QueryError::Unsupported(
                    "${match(N)} (regular-expression templates)",
                ));
            }
            _ => return Err(bad("unknown variable")),
        }));
        rest = &after[end + 1..];
    }
    each(Piece::Literal(rest));
    Ok(())
}

/// `text` with its variables filled in for the name `full`, of which `prefix` is the template's
/// name; text that is not a valid template is kept as it is (it was checked when stored).
fn interpolate(text: &str, full: &str, prefix: &str) -> String {
    if !text.contains("${") {
        return text.to_owned();
    }
    let suffix = full.get(prefix.len()..).unwrap_or("");
    let mut out = String::with_capacity(text.len() + full.len());
    let walked = walk_template(text, |piece| {
        out.push_str(match piece {
            Piece::Literal(l) => l,
            Piece::Var(Var::Full) => full,
            Piece::Var(Var::Prefix) => prefix,
            Piece::Var(Var::Suffix) => suffix,
            // Network segments are Consul Enterprise's; Meridian has the default one.
            Piece::Var(Var::Segment) => "",
        })
    });
    if walked.is_ok() { out } else { text.to_owned() }
}

/// Checks a template's `text`, which must be `valid` once its variables are left out.
fn check_template_text(
    text: &str,
    valid: impl Fn(&str) -> bool,
    err: impl Fn(String) -> QueryError,
) -> Result<(), QueryError> {
    let mut literal = String::new();
    walk_template(text, |piece| {
        if let Piece::Literal(l) = piece {
            literal.push_str(l);
        }
    })?;
    if literal.is_empty() || valid(&literal) {
        Ok(())
    } else {
        Err(err(text.to_owned()))
    }
}

/// Whether `s` can start a DNS label: up to 63 letters, digits or `-`, not starting with `-`
/// (a template's name; the name asked adds the rest).
fn is_label_prefix(s: &str) -> bool {
    s.len() <= 63
        && !s.starts_with('-')
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

/// Whether `s` is made of what a DNS label is made of (a template's literal text).
fn is_label_text(s: &str) -> bool {
    s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

impl PreparedQuery {
    /// Whether the query is a name-prefix template.
    pub fn is_template(&self) -> bool {
        self.template.is_some()
    }

    /// The query that the template answers the name `full` with: its service, tags and failover
    /// datacenters with `${name.full}`, `${name.prefix}` (its own name) and `${name.suffix}`
    /// filled in (and empty tags dropped if it says so). A query that is not a template is
    /// returned as it is.
    pub fn render(&self, full: &str) -> PreparedQuery {
        let mut q = self.clone();
        let Some(t) = &self.template else {
            return q;
        };
        let prefix = self.name.as_str();
        q.service.service = interpolate(&self.service.service, full, prefix);
        q.service.tags = self
            .service
            .tags
            .iter()
            .map(|tag| interpolate(tag, full, prefix))
            .filter(|tag| !(t.remove_empty_tags && tag.is_empty()))
            .collect();
        q.service.failover.datacenters = self
            .service
            .failover
            .datacenters
            .iter()
            .map(|dc| {
                if dc.contains("${") {
                    Arc::from(interpolate(dc, full, prefix))
                } else {
                    dc.clone()
                }
            })
            .collect();
        q
    }

    /// The failover policy the query resolves with: its own targets, always enabled (a query
    /// without targets simply has nowhere to fail over to), addressed as `address_mode` says.
    pub fn policy(&self, address_mode: AddressMode) -> FailoverPolicy {
        FailoverPolicy {
            enabled: true,
            nearest_n: self.service.failover.nearest_n,
            // Arc clones: building a policy per DNS question copies no strings.
            datacenters: self.service.failover.datacenters.clone(),
            spill_below: None,
            address_mode,
        }
    }

    /// The service query the prepared query stands for, resolved with `policy` (from
    /// [`Self::policy`]).
    pub fn service_query<'a>(&'a self, policy: &'a FailoverPolicy) -> crate::ServiceQuery<'a> {
        crate::ServiceQuery {
            service: &self.service.service,
            tag: None,
            dc: None,
            only_passing: self.service.only_passing,
            tags: &self.service.tags,
            policy: Some(policy),
            connect: false,
        }
    }

    /// `DNS.TTL` as Consul shows it (`"10s"`, or empty when unset).
    pub fn ttl_text(&self) -> String {
        format_ttl(self.dns_ttl)
    }
}

/// Formats a query ID (UUID-shaped, 8-4-4-4-12 lowercase hex) from 16 random bytes. The caller
/// draws the bytes: this crate has no randomness of its own, and the ID must be chosen before the
/// write enters the Raft log so that every replica applies the same one.
pub fn format_query_id(bytes: [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// Whether `s` has the shape of a query ID (8-4-4-4-12 hex digits, any case).
pub fn is_query_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Parses a DNS TTL as Consul accepts it, a Go duration (`"10s"`, `"1m30s"`, `"1.5h"`), or,
/// more leniently than Consul, a plain number of seconds; `"0"` is zero. The result is whole
/// seconds, rounded down as Consul does (`"500ms"` is 0).
pub fn parse_ttl(ttl: &str) -> Result<u32, QueryError> {
    let bad = |reason| QueryError::BadTtl {
        ttl: ttl.to_owned(),
        reason,
    };
    let s = ttl.strip_prefix('+').unwrap_or(ttl);
    if s.starts_with('-') {
        return Err(bad("must be >= 0"));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad("it is too large"));
    }
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let max = u128::from(u32::MAX) * NANOS_PER_SEC;
    let mut rest = s;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => f.split_at(f.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad(
                "expected a duration such as \"10s\", \"1m\" or \"500ms\"",
            ));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let unit: u128 = match &after[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            "" => return Err(bad("missing unit (ns, us, ms, s, m or h)")),
            _ => return Err(bad("unknown unit (expected ns, us, ms, s, m or h)")),
        };
        rest = &after[unit_len..];
        let too_large = || bad("it is too large");
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        nanos = whole
            .checked_mul(unit)
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(too_large)?;
        // Fraction digits beyond nanosecond precision cannot change whole seconds.
        let mut scale = unit;
        for d in frac_part.bytes().take(20) {
            scale /= 10;
            nanos += u128::from(d - b'0') * scale;
        }
        if nanos > max {
            return Err(too_large());
        }
    }
    u32::try_from(nanos / NANOS_PER_SEC).map_err(|_| bad("it is too large"))
}

/// Formats a TTL in seconds as a Go duration (`"10s"`); `None` is the empty string.
pub fn format_ttl(ttl: Option<u32>) -> String {
    ttl.map(|s| format!("{s}s")).unwrap_or_default()
}

/// `DNS: {"TTL": "10s"}` on the wire, an optional number of seconds in memory.
mod dns_options {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct DnsOptions {
        #[serde(rename = "TTL", default)]
        ttl: String,
    }

    pub(super) fn serialize<S: Serializer>(ttl: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        DnsOptions {
            ttl: format_ttl(*ttl),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let o = DnsOptions::deserialize(d)?;
        if o.ttl.is_empty() {
            return Ok(None);
        }
        parse_ttl(&o.ttl)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// `Template: {"Type": "name_prefix_match", "Regexp": "", "RemoveEmptyTags": false}` on the
/// wire (every field zero for a query that is no template), an optional [`QueryTemplate`] in
/// memory.
mod template_options {
    use super::*;

    #[derive(Serialize, Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct TemplateOptions {
        #[serde(rename = "Type", default)]
        kind: String,
        #[serde(default)]
        regexp: String,
        #[serde(default)]
        remove_empty_tags: bool,
    }

    pub(super) fn serialize<S: Serializer>(
        t: &Option<QueryTemplate>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        TemplateOptions {
            kind: t.as_ref().map_or("", |_| NAME_PREFIX_MATCH).to_owned(),
            regexp: String::new(),
            remove_empty_tags: t.as_ref().is_some_and(|t| t.remove_empty_tags),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<QueryTemplate>, D::Error> {
        let o = Option::<TemplateOptions>::deserialize(d)?.unwrap_or_default();
        Ok((o.kind == NAME_PREFIX_MATCH).then_some(QueryTemplate {
            remove_empty_tags: o.remove_empty_tags,
        }))
    }
}

/// `Vec<Arc<str>>` as a list of strings (the workspace's serde has no `rc` feature).
mod arc_strs {
    use super::*;

    pub(super) fn serialize<S: Serializer>(v: &[Arc<str>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| &**d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<str>>, D::Error> {
        // Consul's Go clients send `null` for an empty list.
        let v: Option<Vec<String>> = Option::deserialize(d)?;
        Ok(v.unwrap_or_default().into_iter().map(Arc::from).collect())
    }
}

/// A query as a client sends it (`POST /v1/query`, `PUT /v1/query/<id>`): Consul's whole
/// `PreparedQuery` shape, so that Consul's clients (which send every field, mostly zero) are
/// understood. Fields Meridian does not implement are accepted only at their zero value; an
/// unknown field is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct QueryDefinition {
    /// Ignored: the ID comes from the URL, or is generated on create.
    #[serde(rename = "ID")]
    pub id: Option<String>,
    /// Query name.
    pub name: Option<String>,
    /// Session-bound queries: not supported.
    pub session: Option<String>,
    /// ACL token: Meridian has no ACLs yet, so it is ignored.
    pub token: Option<String>,
    /// Name-prefix templates.
    pub template: Option<TemplateDefinition>,
    /// What to look up.
    pub service: Option<ServiceDefinition>,
    /// DNS options.
    #[serde(rename = "DNS")]
    pub dns: Option<DnsDefinition>,
    /// Ignored: indexes are the catalog's.
    pub create_index: Option<u64>,
    /// Ignored: indexes are the catalog's.
    pub modify_index: Option<u64>,
}

/// Consul's `QueryTemplateOptions`: no type, or `name_prefix_match` without a regexp.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct TemplateDefinition {
    /// Template type (`name_prefix_match`).
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    /// Regular expression.
    pub regexp: Option<String>,
    /// Whether empty interpolated tags are dropped.
    pub remove_empty_tags: Option<bool>,
}

/// Consul's `ServiceQuery` as sent by clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceDefinition {
    /// Service name (required).
    pub service: Option<String>,
    /// Failover targets.
    pub failover: Option<FailoverDefinition>,
    /// Only instances whose health is passing.
    pub only_passing: Option<bool>,
    /// Required (`tag`) and forbidden (`!tag`) tags.
    pub tags: Option<Vec<String>>,
    /// Sorting by distance to a node: accepted and ignored (results are shuffled, as Consul
    /// does when no coordinates are known).
    pub near: Option<String>,
    /// Check IDs to ignore: not supported.
    #[serde(rename = "IgnoreCheckIDs")]
    pub ignore_check_ids: Option<Vec<String>>,
    /// Node metadata filter: not supported.
    pub node_meta: Option<BTreeMap<String, String>>,
    /// Service metadata filter: not supported.
    pub service_meta: Option<BTreeMap<String, String>>,
    /// Connect-capable endpoints: not supported.
    pub connect: Option<bool>,
    /// Cluster peering: not supported.
    pub peer: Option<String>,
    /// Sameness groups: not supported.
    pub sameness_group: Option<String>,
    /// Enterprise namespace: only the default one.
    pub namespace: Option<String>,
    /// Enterprise partition: only the default one.
    pub partition: Option<String>,
}

/// Consul's `QueryFailoverOptions` as sent by clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct FailoverDefinition {
    /// Nearest datacenters to try; signed so that a negative value gets Consul's message.
    #[serde(rename = "NearestN")]
    pub nearest_n: Option<i64>,
    /// Datacenters to try, in order.
    pub datacenters: Option<Vec<String>>,
    /// Peer and datacenter targets: not supported (use `Datacenters`).
    pub targets: Option<Vec<serde::de::IgnoredAny>>,
}

/// Consul's `QueryDNSOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct DnsDefinition {
    /// TTL of DNS answers, a Go duration.
    #[serde(rename = "TTL")]
    pub ttl: Option<String>,
}

fn set(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

fn non_empty_list<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

fn non_empty_map(m: &Option<BTreeMap<String, String>>) -> bool {
    m.as_ref().is_some_and(|m| !m.is_empty())
}

impl QueryDefinition {
    /// Checks the definition and builds the query with ID `id` (indexes are set when the
    /// catalog applies it).
    pub fn into_query(self, id: String) -> Result<PreparedQuery, QueryError> {
        if set(&self.session) {
            return Err(QueryError::Unsupported("Session"));
        }
        let t = self.template.unwrap_or_default();
        let template = match t.kind.as_deref().unwrap_or("") {
            "" => None,
            NAME_PREFIX_MATCH => Some(QueryTemplate {
                remove_empty_tags: t.remove_empty_tags.unwrap_or(false),
            }),
            other => return Err(QueryError::BadTemplateType(other.to_owned())),
        };
        if set(&t.regexp) {
            return Err(QueryError::Unsupported(
                "Template.Regexp (regular-expression templates)",
            ));
        }
        let name = self.name.unwrap_or_default();
        if !name.is_empty() {
            if is_query_id(&name) {
                return Err(QueryError::NameLooksLikeId(name));
            }
            // A template's name is the start of the names it answers.
            let valid = if template.is_some() {
                is_label_prefix(&name)
            } else {
                is_label(&name)
            };
            if !valid {
                return Err(QueryError::BadName(name));
            }
        }
        let svc = self.service.unwrap_or_default();
        let service = svc
            .service
            .filter(|s| !s.is_empty())
            .ok_or(QueryError::MissingService)?;
        if template.is_some() {
            check_template_text(&service, is_label_text, QueryError::BadService)?;
        } else if !is_label(&service) {
            return Err(QueryError::BadService(service));
        }
        let unsupported = [
            (
                non_empty_list(&svc.ignore_check_ids),
                "Service.IgnoreCheckIDs",
            ),
            (non_empty_map(&svc.node_meta), "Service.NodeMeta"),
            (non_empty_map(&svc.service_meta), "Service.ServiceMeta"),
            (svc.connect == Some(true), "Service.Connect"),
            (set(&svc.peer), "Service.Peer (cluster peering)"),
            (set(&svc.sameness_group), "Service.SamenessGroup"),
            (
                svc.namespace
                    .as_deref()
                    .is_some_and(|n| !n.is_empty() && n != "default"),
                "Service.Namespace other than \"default\"",
            ),
            (
                svc.partition
                    .as_deref()
                    .is_some_and(|p| !p.is_empty() && p != "default"),
                "Service.Partition other than \"default\"",
            ),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(QueryError::Unsupported(what));
        }
        let tags = svc.tags.unwrap_or_default();
        if tags.len() > MAX_LIST {
            return Err(QueryError::TooMany {
                what: "Service.Tags",
                len: tags.len(),
            });
        }
        for tag in &tags {
            if template.is_some() {
                // Checked for its variables; what it interpolates to may be empty.
                check_template_text(tag, |_| true, QueryError::BadTag)?;
            }
            let bare = tag.strip_prefix('!').unwrap_or(tag);
            let empty_ok = template.is_some() && tag.contains("${");
            if (bare.is_empty() && !empty_ok)
                || tag.len() > MAX_TAG_LEN
                || tag.chars().any(char::is_control)
            {
                return Err(QueryError::BadTag(tag.clone()));
            }
        }
        let fo = svc.failover.unwrap_or_default();
        if non_empty_list(&fo.targets) {
            return Err(QueryError::Unsupported(
                "Service.Failover.Targets (use Service.Failover.Datacenters)",
            ));
        }
        let nearest = fo.nearest_n.unwrap_or(0);
        let nearest_n = usize::try_from(nearest).map_err(|_| QueryError::BadNearestN(nearest))?;
        let datacenters = fo.datacenters.unwrap_or_default();
        if datacenters.len() > MAX_LIST {
            return Err(QueryError::TooMany {
                what: "Service.Failover.Datacenters",
                len: datacenters.len(),
            });
        }
        for dc in &datacenters {
            if template.is_some() && dc.contains("${") {
                check_template_text(dc, is_label_text, QueryError::BadDatacenter)?;
            } else if !is_label(dc) {
                return Err(QueryError::BadDatacenter(dc.clone()));
            }
        }
        let dns_ttl = match self.dns.and_then(|d| d.ttl).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(parse_ttl(&t)?),
        };
        Ok(PreparedQuery {
            id,
            name,
            service: QueryService {
                service,
                tags,
                only_passing: svc.only_passing.unwrap_or(false),
                failover: QueryFailover {
                    nearest_n,
                    datacenters: datacenters.into_iter().map(Arc::from).collect(),
                },
            },
            dns_ttl,
            template,
            create_index: 0,
            modify_index: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

    fn failover_dcs(q: &PreparedQuery) -> Vec<&str> {
        q.service
            .failover
            .datacenters
            .iter()
            .map(|d| &**d)
            .collect()
    }

    fn build(v: serde_json::Value) -> Result<PreparedQuery, QueryError> {
        let def: QueryDefinition = serde_json::from_value(v).expect("decodes");
        def.into_query(ID.to_owned())
    }

    #[test]
    fn ids_are_uuid_shaped() {
        let id = format_query_id([
            0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6, 0xd7,
            0xe8, 0xf9,
        ]);
        assert_eq!(id, ID);
        assert!(is_query_id(&id));
        assert!(is_query_id(&id.to_ascii_uppercase()));
        assert!(!is_query_id("web"));
        assert!(!is_query_id("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f"));
        assert!(!is_query_id("0a1b2c3d44e5f-6071-8293-a4b5c6d7e8f9"));
        assert!(!is_query_id("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8fg"));
    }

    #[test]
    fn a_full_consul_definition_builds_and_round_trips_in_consul_shape() {
        // What Consul's Go client sends: every field, most at their zero value.
        let q = build(json!({
            "ID": "", "Name": "web-failover", "Session": "", "Token": "",
            "Template": { "Type": "", "Regexp": "", "RemoveEmptyTags": false },
            "Service": {
                "Service": "web", "Failover": { "NearestN": 2, "Datacenters": ["dc2", "dc3"], "Targets": null },
                "IgnoreCheckIDs": null, "OnlyPassing": true, "Near": "_agent",
                "Tags": ["v1", "!canary"], "NodeMeta": null, "ServiceMeta": {}, "Connect": false,
                "Peer": "", "SamenessGroup": "", "Namespace": "default", "Partition": ""
            },
            "DNS": { "TTL": "10s" }, "CreateIndex": 0, "ModifyIndex": 0
        }))
        .expect("valid");
        assert_eq!(q.id, ID);
        assert_eq!(q.name, "web-failover");
        assert_eq!(q.service.service, "web");
        assert_eq!(q.service.tags, ["v1", "!canary"]);
        assert!(q.service.only_passing);
        assert_eq!(q.service.failover.nearest_n, 2);
        let dcs = failover_dcs(&q);
        assert_eq!(dcs, ["dc2", "dc3"]);
        assert_eq!(q.dns_ttl, Some(10));

        let v = serde_json::to_value(&q).expect("serializes");
        assert_eq!(
            v,
            json!({
                "ID": ID, "Name": "web-failover",
                "Service": {
                    "Service": "web", "Tags": ["v1", "!canary"], "OnlyPassing": true,
                    "Failover": { "NearestN": 2, "Datacenters": ["dc2", "dc3"] }
                },
                "DNS": { "TTL": "10s" }, "CreateIndex": 0, "ModifyIndex": 0,
                "Template": { "Type": "", "Regexp": "", "RemoveEmptyTags": false }
            })
        );
        let back: PreparedQuery = serde_json::from_value(v).expect("deserializes");
        assert_eq!(back, q);

        let policy = q.policy(AddressMode::Gateway);
        assert!(policy.enabled);
        assert_eq!(policy.nearest_n, 2);
        assert_eq!(policy.datacenters, q.service.failover.datacenters);
        assert_eq!(policy.address_mode, AddressMode::Gateway);
        assert_eq!(policy.spill_below, None);
    }

    #[test]
    fn a_minimal_definition_gets_defaults() {
        let q = build(json!({ "Service": { "Service": "db" } })).expect("valid");
        assert_eq!(q.name, "");
        assert!(q.service.tags.is_empty() && !q.service.only_passing);
        assert_eq!(q.service.failover, QueryFailover::default());
        assert_eq!(q.dns_ttl, None);
        assert_eq!(q.ttl_text(), "");
        let v = serde_json::to_value(&q).expect("serializes");
        assert_eq!(v["DNS"], json!({ "TTL": "" }));
        // Stored queries with absent or null optional parts still load.
        let back: PreparedQuery = serde_json::from_value(json!({
            "ID": ID, "Service": { "Service": "db", "Failover": { "Datacenters": null } }
        }))
        .expect("loads");
        assert_eq!(back, q);
    }

    #[test]
    fn bad_definitions_are_rejected_with_a_reason() {
        let err = |v| build(v).expect_err("invalid").to_string();
        assert_eq!(
            err(json!({ "Name": "x" })),
            "Must provide a Service name to query"
        );
        assert_eq!(
            err(json!({ "Service": { "Service": "" } })),
            "Must provide a Service name to query"
        );
        assert!(
            err(json!({ "Name": "bad name", "Service": { "Service": "web" } }))
                .contains("Bad query name")
        );
        assert!(err(json!({ "Name": ID, "Service": { "Service": "web" } })).contains("reserved"));
        assert!(err(json!({ "Service": { "Service": "we_b" } })).contains("Bad Service name"));
        assert_eq!(
            err(json!({ "Service": { "Service": "web", "Failover": { "NearestN": -1 } } })),
            "Bad NearestN '-1', must be >= 0"
        );
        assert!(
            err(
                json!({ "Service": { "Service": "web", "Failover": { "Datacenters": ["dc 2"] } } })
            )
            .contains("Bad failover datacenter")
        );
        assert!(err(json!({ "Service": { "Service": "web", "Tags": ["!"] } })).contains("Bad tag"));
        assert!(err(json!({ "Service": { "Service": "web", "Tags": [""] } })).contains("Bad tag"));
        assert!(
            err(json!({ "Service": { "Service": "web" }, "DNS": { "TTL": "ten" } }))
                .starts_with("Bad DNS TTL 'ten'")
        );
        assert!(
            err(json!({ "Service": { "Service": "web" }, "Session": "s1" })).contains("Session")
        );
        assert!(
            err(json!({ "Service": { "Service": "web" }, "Template": { "Type": "regexp" } }))
                .contains("Template.Type")
        );
        assert!(
            err(json!({ "Service": { "Service": "web" }, "Template": { "Type": "name_prefix_match", "Regexp": "^geo-(.*)$" } }))
                .contains("Regexp")
        );
        for (service, message) in [
            ("${match(1)}", "match(N)"),
            ("${name.middle}", "unknown variable"),
            ("web-${name.suffix", "not closed"),
            ("we_b-${name.suffix}", "Bad Service name"),
        ] {
            let e = err(
                json!({ "Service": { "Service": service }, "Template": { "Type": "name_prefix_match" } }),
            );
            assert!(e.contains(message), "{service}: {e}");
        }
        assert!(
            err(json!({ "Service": { "Service": "${name.suffix}" } })).contains("Bad Service name"),
            "variables only in a template"
        );
        assert!(
            err(json!({ "Service": { "Service": "web", "NodeMeta": { "a": "b" } } }))
                .contains("NodeMeta")
        );
        assert!(
            err(json!({ "Service": { "Service": "web", "Failover": { "Targets": [{ "Peer": "p" }] } } }))
                .contains("Targets")
        );
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        assert!(
            err(json!({ "Service": { "Service": "web", "Tags": many } })).contains("at most 64")
        );
        // Unknown fields are named by the decoder.
        let e = serde_json::from_value::<QueryDefinition>(json!({ "Servce": {} }))
            .expect_err("unknown field");
        assert!(e.to_string().contains("Servce"), "{e}");
    }

    #[test]
    fn a_name_prefix_template_renders_the_name_asked() {
        let q = build(json!({
            "Name": "geo-",
            "Template": { "Type": "name_prefix_match", "RemoveEmptyTags": true },
            "Service": {
                "Service": "${name.suffix}",
                "Tags": ["${agent.segment}", "!canary", "from-${ name.prefix }"],
                "Failover": { "Datacenters": ["dc2", "${name.suffix}-dc"] }
            }
        }))
        .expect("a template");
        assert!(q.is_template());
        let r = q.render("geo-db");
        assert_eq!(r.service.service, "db");
        assert_eq!(r.service.tags, ["!canary", "from-geo-"]);
        let dcs = failover_dcs(&r);
        assert_eq!(dcs, ["dc2", "db-dc"]);
        assert_eq!(r.name, "geo-", "the stored query is unchanged");
        // Without RemoveEmptyTags the empty tag stays (and so matches nothing).
        let keep = build(json!({
            "Name": "x", "Template": { "Type": "name_prefix_match" },
            "Service": { "Service": "${name.full}", "Tags": ["${agent.segment}"] }
        }))
        .expect("a template");
        assert_eq!(keep.render("xyz").service.tags, [""]);
        assert_eq!(keep.render("xyz").service.service, "xyz");
        // A catch-all template (empty name) and a prefix that is no whole label.
        assert!(
            build(json!({ "Template": { "Type": "name_prefix_match" }, "Service": { "Service": "${name.full}" } }))
                .is_ok()
        );
        assert!(
            build(json!({ "Name": "-geo", "Template": { "Type": "name_prefix_match" }, "Service": { "Service": "web" } }))
                .is_err()
        );
        // Stored in Consul's shape, and read back; a query stored before templates existed
        // (no `Template`) reads back as none.
        let stored = serde_json::to_value(&q).expect("serializes");
        assert_eq!(
            stored["Template"],
            json!({ "Type": "name_prefix_match", "Regexp": "", "RemoveEmptyTags": true })
        );
        let back: PreparedQuery = serde_json::from_value(stored).expect("reads back");
        assert_eq!(back, q);
        let mut old = serde_json::to_value(&keep).expect("serializes");
        old.as_object_mut().map(|o| o.remove("Template"));
        let back: PreparedQuery = serde_json::from_value(old).expect("reads back");
        assert_eq!(back.template, None);
    }

    #[test]
    fn ttls_parse_like_go_durations_or_seconds() {
        assert_eq!(parse_ttl("10s"), Ok(10));
        assert_eq!(parse_ttl("1m"), Ok(60));
        assert_eq!(parse_ttl("1m30s"), Ok(90));
        assert_eq!(parse_ttl("1.5h"), Ok(5400));
        assert_eq!(parse_ttl("500ms"), Ok(0), "rounded down to whole seconds");
        assert_eq!(parse_ttl("2500ms"), Ok(2));
        assert_eq!(parse_ttl("0"), Ok(0));
        assert_eq!(parse_ttl("30"), Ok(30), "plain seconds");
        assert_eq!(parse_ttl("+5s"), Ok(5));
        for bad in [
            "",
            "-1s",
            "s",
            "10x",
            "1.s.",
            "9999999999999s",
            "99999999999",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(format_ttl(Some(90)), "90s");
        assert_eq!(format_ttl(None), "");
        // A stored TTL that no longer parses is a load error, not a silent default.
        let e = serde_json::from_value::<PreparedQuery>(json!({
            "ID": ID, "Service": { "Service": "db" }, "DNS": { "TTL": "-1s" }
        }))
        .expect_err("negative");
        assert!(e.to_string().contains("must be >= 0"), "{e}");
    }
}
