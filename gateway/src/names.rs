//! From an SNI name to a service query, in the grammar DNS uses (`topology::names`):
//! `[<tag>.]<service>.service[.<dc>].<domain>` and Consul's mesh form
//! `<service>.<namespace>.<dc>.internal.<trust-domain>`.
//!
//! Anything else is an unknown name and is refused: the gateway is never an open relay, so IP
//! literals, node or address names and names outside the configured domains go nowhere.

use meridian_topology::ServiceQuery;
use meridian_topology::names::{
    NameQuery, QueryNameError, is_label, parse_mesh_name, parse_query_name, strip_domain,
};

/// The only namespace routed: Meridian's catalog has no namespaces, so a name in another one
/// (Consul Enterprise) is a different service that we do not have.
const MESH_NAMESPACE: &str = "default";

/// Which names the gateway routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameConfig {
    /// DNS domains (`consul`, an `alt_domain`), as DNS serves them.
    pub domains: Vec<String>,
    /// The mesh trust domain (`<uuid>.consul`); `None` turns the mesh form off.
    pub trust_domain: Option<String>,
}

/// Where a name points: the service query to resolve, borrowed from the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// Service name.
    pub service: &'a str,
    /// Tag filter (DNS form only).
    pub tag: Option<&'a str>,
    /// Explicit datacenter; `None` resolves by policy.
    pub dc: Option<&'a str>,
}

impl<'a> Route<'a> {
    /// The query for `topology::resolve`.
    pub fn query(&self, only_passing: bool) -> ServiceQuery<'a> {
        ServiceQuery {
            service: self.service,
            tag: self.tag,
            dc: self.dc,
            only_passing,
            tags: &[],
            policy: None,
        }
    }
}

/// Why a name is not routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnknownName {
    /// The name is under none of the configured domains or the trust domain.
    #[error("unknown name: outside our domains")]
    NotOurs,
    /// Inside a domain, but not a service name (a node, an address, a query, a bad label, ...).
    #[error("unknown name: not a service name")]
    NotAService,
    /// A mesh name in a namespace other than `default`.
    #[error("unknown name: namespace {namespace:?} is not served")]
    Namespace {
        /// The namespace the name asked for.
        namespace: String,
    },
}

impl UnknownName {
    /// A short, stable name for the reason, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            UnknownName::NotOurs => "not_ours",
            UnknownName::NotAService => "not_a_service",
            UnknownName::Namespace { .. } => "namespace",
        }
    }
}

/// Maps an SNI name to the service it asks for.
pub fn route<'a>(sni: &'a str, config: &NameConfig) -> Result<Route<'a>, UnknownName> {
    // Names are ASCII; this also keeps the domain suffix matching on character boundaries.
    if !sni.is_ascii() {
        return Err(UnknownName::NotOurs);
    }
    // The mesh form first: a trust domain usually ends in a DNS domain (`<uuid>.consul`).
    if let Some(td) = &config.trust_domain {
        match parse_mesh_name(sni, td) {
            Ok(m) if m.namespace.eq_ignore_ascii_case(MESH_NAMESPACE) => {
                return Ok(Route {
                    service: m.service,
                    tag: None,
                    dc: Some(m.dc),
                });
            }
            Ok(m) => {
                return Err(UnknownName::Namespace {
                    namespace: m.namespace.to_owned(),
                });
            }
            Err(QueryNameError::NotOurs) => {}
            Err(_) => return Err(UnknownName::NotAService),
        }
    }
    // One domain at a time: no allocation on the connection path.
    let (_, rest) = config
        .domains
        .iter()
        .find_map(|d| strip_domain(sni, &[d.as_str()]))
        .ok_or(UnknownName::NotOurs)?;
    // `_web._tcp` (RFC 2782) also parses as a service, but is no host name: SNI takes the
    // plain form only.
    if !rest.split('.').all(is_label) {
        return Err(UnknownName::NotAService);
    }
    match parse_query_name(rest) {
        Ok(NameQuery::Service { service, tag, dc }) => Ok(Route { service, tag, dc }),
        _ => Err(UnknownName::NotAService),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TD: &str = "7c5e4a1f-1b2c-4d3e-8f90-a1b2c3d4e5f6.consul";

    fn config() -> NameConfig {
        NameConfig {
            domains: vec!["consul".into(), "alt.example".into()],
            trust_domain: Some(TD.into()),
        }
    }

    fn r(
        service: &'static str,
        tag: Option<&'static str>,
        dc: Option<&'static str>,
    ) -> Result<Route<'static>, UnknownName> {
        Ok(Route { service, tag, dc })
    }

    #[test]
    fn service_names() {
        let c = config();
        assert_eq!(route("web.service.consul", &c), r("web", None, None));
        assert_eq!(
            route("web.service.dc2.consul", &c),
            r("web", None, Some("dc2"))
        );
        assert_eq!(
            route("v1.web.service.consul", &c),
            r("web", Some("v1"), None)
        );
        assert_eq!(
            route("v1.web.service.dc1.alt.example", &c),
            r("web", Some("v1"), Some("dc1"))
        );
        let q = route("v1.web.service.dc1.consul", &c)
            .expect("routes")
            .query(true);
        assert_eq!(
            q,
            ServiceQuery {
                service: "web",
                tag: Some("v1"),
                dc: Some("dc1"),
                only_passing: true,
                tags: &[],
                policy: None,
            }
        );
    }

    #[test]
    fn mesh_names() {
        let c = config();
        let name = format!("web.default.dc2.internal.{TD}");
        assert_eq!(route(&name, &c), r("web", None, Some("dc2")));
        let other = format!("web.team-a.dc2.internal.{TD}");
        assert_eq!(
            route(&other, &c),
            Err(UnknownName::Namespace {
                namespace: "team-a".into()
            })
        );
        let short = format!("web.dc2.internal.{TD}");
        assert_eq!(route(&short, &c), Err(UnknownName::NotAService));
        // Another cluster's trust domain is not ours, even though it ends in `.consul`.
        assert_eq!(
            route("web.default.dc2.internal.0000-other.consul", &c),
            Err(UnknownName::NotAService)
        );
        let off = NameConfig {
            trust_domain: None,
            ..config()
        };
        assert_eq!(route(&name, &off), Err(UnknownName::NotAService));
    }

    #[test]
    fn never_an_open_relay() {
        let c = config();
        for not_ours in [
            "127.0.0.1",
            "::1",
            "example.com",
            "web.service.consul.evil.com",
            "consulx",
            "wéb.service.consul",
        ] {
            assert_eq!(route(not_ours, &c), Err(UnknownName::NotOurs), "{not_ours}");
        }
        for not_service in [
            "consul",
            "n1.node.consul",
            "7f000001.addr.consul",
            "fail.query.consul",
            "_web._tcp.service.consul",
            "a.b.web.service.consul",
            "web.consul",
            "web_1.service.consul",
        ] {
            assert_eq!(
                route(not_service, &c),
                Err(UnknownName::NotAService),
                "{not_service}"
            );
        }
    }

    proptest! {
        #[test]
        fn routes_only_service_names(s in "[a-zA-Z0-9._-]{0,80}(\\.service(\\.dc1)?)?\\.(consul|example)") {
            if let Ok(route) = route(&s, &config()) {
                prop_assert!(is_label(route.service));
                prop_assert!(s.to_ascii_lowercase().ends_with(".consul"));
            }
        }
    }
}
