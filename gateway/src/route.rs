//! Routing, pure over a `topology::View`: from an SNI name to a service query, in the grammar
//! DNS uses (`topology::names`): `[<tag>.]<service>.service[.<dc>].<domain>` and Consul's mesh
//! form `<service>.<namespace>.<dc>.internal.<trust-domain>` ([`route`]); then, through
//! `topology::resolve` exactly as DNS answers, to where the connection goes ([`target`]): this
//! datacenter's instances, or another datacenter's gateways.
//!
//! Anything else is an unknown name and is refused: the gateway is never an open relay, so IP
//! literals, node or address names and names outside the configured domains go nowhere. Nor is
//! it ever its own backend: Meridian's own services (`meridian-*`) are not routed, and no local
//! target is the address of a gateway (this one's listening address, or any gateway the view
//! knows), so one connection causes at most one backend connection. No sockets and no clock
//! here: the failover decision is the view's, never the gateway's.

use std::net::{IpAddr, SocketAddr};

use meridian_topology::names::{
    NameQuery, QueryNameError, is_label, parse_mesh_name, parse_query_name, strip_domain,
};
use meridian_topology::{
    GATEWAY_SERVICE, ResolveError, ServiceQuery, View, is_internal_service, resolve,
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

/// The addresses that reach this gateway itself: its listening port on its listening IP, or on
/// every IP of the host when it listens on all of them. A local target among them would make
/// the gateway its own backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnAddrs {
    /// The listening port (0: unknown, nothing is own).
    pub port: u16,
    /// The IPs that reach the port: the listening IP, or the host's (loopback included).
    pub ips: Vec<IpAddr>,
    /// Whether any loopback IP (`127.0.0.0/8`, `::1`) reaches the port.
    pub loopback: bool,
}

impl OwnAddrs {
    /// The addresses of a gateway listening on `listen`; `host_ips` are the host's addresses,
    /// used when it listens on all of them (`0.0.0.0` or `::`).
    pub fn new(listen: SocketAddr, host_ips: Vec<IpAddr>) -> OwnAddrs {
        let ip = listen.ip();
        if ip.is_unspecified() {
            OwnAddrs {
                port: listen.port(),
                ips: host_ips,
                loopback: true,
            }
        } else {
            OwnAddrs {
                port: listen.port(),
                ips: vec![ip],
                loopback: ip.is_loopback(),
            }
        }
    }

    /// Whether `addr` reaches this gateway.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.port != 0
            && addr.port() == self.port
            && ((self.loopback && addr.ip().is_loopback()) || self.ips.contains(&addr.ip()))
    }
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
    /// The mesh form: the name asks for the service's sidecars (its mesh endpoints), which
    /// verify the caller, not for its instances.
    pub connect: bool,
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
            connect: self.connect,
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
    /// One of Meridian's own services (`meridian-gateway`, `meridian-drain`): never a
    /// destination (routing to a gateway would have it connect to itself).
    #[error("unknown name: {service} is one of Meridian's own services")]
    Internal {
        /// The service the name asked for.
        service: String,
    },
}

impl UnknownName {
    /// A short, stable name for the reason, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            UnknownName::NotOurs => "not_ours",
            UnknownName::NotAService => "not_a_service",
            UnknownName::Namespace { .. } => "namespace",
            UnknownName::Internal { .. } => "internal",
        }
    }
}

/// Maps an SNI name to the service it asks for; Meridian's own services are refused.
pub fn route<'a>(sni: &'a str, config: &NameConfig) -> Result<Route<'a>, UnknownName> {
    let r = parse_route(sni, config)?;
    if is_internal_service(r.service) {
        return Err(UnknownName::Internal {
            service: r.service.to_owned(),
        });
    }
    Ok(r)
}

fn parse_route<'a>(sni: &'a str, config: &NameConfig) -> Result<Route<'a>, UnknownName> {
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
                    connect: true,
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
        Ok(NameQuery::Service { service, tag, dc }) => Ok(Route {
            service,
            tag,
            dc,
            connect: false,
        }),
        _ => Err(UnknownName::NotAService),
    }
}

/// Where a name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Instances of this datacenter.
    Local(Vec<SocketAddr>),
    /// Another datacenter, through one of its gateways.
    Remote {
        /// The datacenter.
        dc: String,
        /// Its gateways' tunnel addresses.
        gateways: Vec<SocketAddr>,
    },
}

/// Why a name has no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The SNI is not a name the gateway routes.
    #[error(transparent)]
    UnknownName(#[from] UnknownName),
    /// The name is a service, but it resolved to nothing.
    #[error("{sni}: {error}")]
    Resolve {
        /// The name asked for.
        sni: String,
        /// Why it resolved to nothing.
        error: ResolveError,
    },
    /// Every local instance of the name is at the address of a gateway (this one, or one the
    /// view knows): relaying there would loop.
    #[error("{sni}: every instance is at a gateway's address")]
    SelfRoute {
        /// The name asked for.
        sni: String,
    },
}

/// Where the SNI goes in `view`: healthy local instances, or a remote DC and its gateways.
/// `local_only` (tunnelled streams) resolves in this datacenter whatever the name says. A local
/// instance at a gateway's address (in `own`, or any DC's `meridian-gateway` instance, whatever
/// its health) is left out, and refused when none is left.
pub fn target(
    view: &View,
    sni: &str,
    names: &NameConfig,
    own: &OwnAddrs,
    only_passing: bool,
    local_only: bool,
) -> Result<Target, RouteError> {
    let r = route(sni, names)?;
    let mut query = r.query(only_passing);
    if local_only {
        query.dc = Some(view.datacenter());
    }
    let resolution = resolve(view, &query).map_err(|error| RouteError::Resolve {
        sni: sni.to_owned(),
        error,
    })?;
    let state = resolution.state;
    // The data plane does no DNS lookups: an address that is not an IP is skipped.
    let socket = |addr: &str, port: u16| Some(SocketAddr::new(addr.parse::<IpAddr>().ok()?, port));
    if resolution.dc != view.datacenter() {
        return Ok(Target::Remote {
            dc: resolution.dc.to_owned(),
            gateways: state.gateway_addrs(),
        });
    }
    let resolved = resolution.instances.len();
    let candidates: Vec<SocketAddr> = resolution
        .instances
        .iter()
        .filter_map(|(inst, _)| socket(state.address_of(inst), inst.port))
        .filter(|addr| !own.contains(*addr) && !is_gateway_addr(view, *addr))
        .collect();
    if candidates.is_empty() && resolved > 0 {
        return Err(RouteError::SelfRoute {
            sni: sni.to_owned(),
        });
    }
    Ok(Target::Local(candidates))
}

/// Whether `addr` is where some datacenter's gateway is registered (any health: a gateway
/// marked critical still listens).
fn is_gateway_addr(view: &View, addr: SocketAddr) -> bool {
    std::iter::once(view.local())
        .chain(view.remotes().map(|r| &r.state))
        .any(|state| {
            state.instances_of(GATEWAY_SERVICE).any(|i| {
                i.port == addr.port()
                    && state
                        .address_of(i)
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| ip == addr.ip())
            })
        })
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
        Ok(Route {
            service,
            tag,
            dc,
            connect: false,
        })
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
                connect: false,
            }
        );
    }

    #[test]
    fn mesh_names() {
        let c = config();
        let name = format!("web.default.dc2.internal.{TD}");
        let mesh = route(&name, &c).expect("routes");
        assert_eq!(
            mesh,
            Route {
                connect: true,
                ..r("web", None, Some("dc2")).expect("a route")
            }
        );
        assert!(mesh.query(true).connect);
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

    #[test]
    fn mesh_names_reach_the_sidecars_not_the_service() {
        use meridian_topology::{Instance, Proxy};
        use std::sync::Arc;
        let mut state = crate::fixtures::web_state(&[9001]);
        let sidecar = Instance {
            proxy: Some(Arc::new(Proxy {
                destination_service: "web".into(),
                ..Proxy::default()
            })),
            ..crate::fixtures::instance("web-proxy", "web-sidecar-proxy", 21000)
        };
        state.register(sidecar, vec![], 10);
        let view = View::new("dc1", state);
        let names = config();
        let own = OwnAddrs::default();
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mesh = format!("web.default.dc1.internal.{TD}");
        assert_eq!(
            target(&view, &mesh, &names, &own, true, false),
            Ok(Target::Local(vec![at(21000)]))
        );
        assert_eq!(
            target(&view, "web.service.consul", &names, &own, true, false),
            Ok(Target::Local(vec![at(9001)]))
        );
        // A service with no sidecar has no mesh endpoint.
        let mut bare = crate::fixtures::web_state(&[9001]);
        bare.register(crate::fixtures::instance("api", "api", 9002), vec![], 5);
        let api = format!("api.default.dc1.internal.{TD}");
        assert!(matches!(
            target(&View::new("dc1", bare), &api, &names, &own, true, false),
            Err(RouteError::Resolve { .. })
        ));
    }

    #[test]
    fn targets_follow_the_view() {
        use meridian_topology::dc::DcState;
        use meridian_topology::{GATEWAY_SERVICE, Instance, RemoteDc};
        use std::sync::Arc;
        let instance = |service: &str, port: u16| Instance {
            id: format!("{service}-{port}"),
            service: service.into(),
            node: "n1".into(),
            address: "127.0.0.1".into(),
            port,
            tags: vec![],
            meta: Default::default(),
            weights: Default::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        };
        let state = |instances: &[(&str, u16)]| {
            let mut s = DcState::default();
            for (i, (service, port)) in instances.iter().enumerate() {
                s.register(instance(service, *port), vec![], i as u64 + 1);
            }
            s
        };
        let dc2 = RemoteDc {
            name: "dc2".into(),
            state: state(&[("web", 9001), (GATEWAY_SERVICE, 8443)]),
            connected: true,
            synced: true,
            ..RemoteDc::default()
        };
        let mut view = View::new("dc1", DcState::default())
            .with_remotes(std::iter::once((Arc::<str>::from("dc2"), Arc::new(dc2))).collect());
        let names = config();
        let gw: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        // No local instance: the name fails over to dc2, through its gateway.
        assert_eq!(
            target(
                &view,
                "web.service.consul",
                &names,
                &OwnAddrs::default(),
                false,
                false
            ),
            Ok(Target::Remote {
                dc: "dc2".into(),
                gateways: vec![gw],
            })
        );
        assert_eq!(
            target(
                &view,
                "web.service.dc2.consul",
                &names,
                &OwnAddrs::default(),
                false,
                false
            ),
            Ok(Target::Remote {
                dc: "dc2".into(),
                gateways: vec![gw],
            })
        );
        // A tunnelled stream resolves here only, whatever the name says.
        assert!(matches!(
            target(
                &view,
                "web.service.dc2.consul",
                &names,
                &OwnAddrs::default(),
                false,
                true
            ),
            Err(RouteError::Resolve { .. })
        ));
        view = View::new("dc1", state(&[("web", 9002)]));
        let local: SocketAddr = "127.0.0.1:9002".parse().expect("addr");
        assert_eq!(
            target(
                &view,
                "web.service.consul",
                &names,
                &OwnAddrs::default(),
                true,
                true
            ),
            Ok(Target::Local(vec![local]))
        );
        assert_eq!(
            target(
                &view,
                "n1.node.consul",
                &names,
                &OwnAddrs::default(),
                false,
                false
            ),
            Err(RouteError::UnknownName(UnknownName::NotAService))
        );

        // Never the gateway itself: Meridian's own services are not routed, in any form ...
        view = View::new(
            "dc1",
            state(&[("web", 9002), (GATEWAY_SERVICE, 8443), ("loop", 8443)]),
        );
        for sni in [
            "meridian-gateway.service.consul",
            "meridian-gateway.service.dc1.consul",
            "MERIDIAN-Gateway.service.dc2.consul",
            "meridian-drain.service.consul",
            "tunnel.meridian-gateway.service.consul",
        ] {
            assert!(
                matches!(
                    target(&view, sni, &names, &OwnAddrs::default(), false, false),
                    Err(RouteError::UnknownName(UnknownName::Internal { .. }))
                ),
                "{sni}"
            );
        }
        // ... and no instance at a gateway's address is a backend: `loop` is registered where
        // the gateway listens.
        assert_eq!(
            target(
                &view,
                "loop.service.consul",
                &names,
                &OwnAddrs::default(),
                false,
                false
            ),
            Err(RouteError::SelfRoute {
                sni: "loop.service.consul".into()
            })
        );
        // This gateway's own port, even where no gateway is registered: on every host address
        // when it listens on all of them, on its one address otherwise.
        view = View::new("dc1", state(&[("web", 9002), ("echo", 7000)]));
        let any = OwnAddrs::new("0.0.0.0:7000".parse().expect("addr"), vec![]);
        assert!(matches!(
            target(&view, "echo.service.consul", &names, &any, false, false),
            Err(RouteError::SelfRoute { .. })
        ));
        assert_eq!(
            target(&view, "web.service.consul", &names, &any, false, false),
            Ok(Target::Local(vec![local]))
        );
        let elsewhere = OwnAddrs::new("10.0.0.5:7000".parse().expect("addr"), vec![]);
        assert!(matches!(
            target(
                &view,
                "echo.service.consul",
                &names,
                &elsewhere,
                false,
                false
            ),
            Ok(Target::Local(_))
        ));
        assert!(elsewhere.contains("10.0.0.5:7000".parse().expect("addr")));
        let host = OwnAddrs::new(
            "[::]:7000".parse().expect("addr"),
            vec!["192.0.2.7".parse().expect("ip")],
        );
        assert!(host.contains("192.0.2.7:7000".parse().expect("addr")));
        assert!(host.contains("127.0.0.2:7000".parse().expect("addr")));
        assert!(!host.contains("192.0.2.8:7000".parse().expect("addr")));
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
