//! The web UI: its files (`ui/src/`, embedded in the binary, served at `/ui/`) and the two reads
//! made for it, each a blocking query over the view: `GET /v1/internal/ui/datacenters` (the
//! federation map: every DC's liveness, RTT, replica and gateways) and
//! `GET /v1/internal/ui/services` (every service of every DC with its health counts, and where
//! `<name>.service.<domain>` resolves from this DC right now, and why). Gateway-only nodes serve
//! the same, read-only ([`read_only`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use meridian_topology::{
    DcState, GATEWAY_SERVICE, Health, INTERNAL_SERVICE_PREFIX, ServiceQuery, View, explain, resolve,
};
use serde::Serialize;
use tokio::sync::watch;

use super::blocking::{ReadParams, digest_index, wait_for_resolution};
use super::catalog::Pairs;
use super::{ApiError, ApiState};

/// One embedded file of the UI.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../ui/src/", $path)),
        }
    };
}

/// Every file of the UI, as `ui/src/` holds them.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("lib.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
];

/// The routes of the UI's files: `/` and `/ui` lead to `/ui/`, which is the page; `/ui/<file>`
/// its scripts and styles. Any other path under `/ui/` is the page too, so a reload of a
/// deep link (`/ui/services/web`) works.
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route(
            "/ui/{*path}",
            get(|axum::extract::Path(p): axum::extract::Path<String>| async move { file(&p) }),
        )
}

fn file(path: &str) -> Response {
    let asset = ASSETS
        .iter()
        .find(|a| a.path == path)
        .or_else(|| (!path.contains('.')).then(|| &ASSETS[0]));
    match asset {
        Some(a) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(a.content_type)),
                // Embedded in the binary: a new binary is a new UI, so always revalidate.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
                    ),
                ),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file in the UI").into_response(),
    }
}

/// One DC on the map.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DcJson<'a> {
    datacenter: &'a str,
    local: bool,
    status: &'static str,
    /// Milliseconds in this status (null where the node has no detector clock).
    for_ms: Option<u64>,
    rtt_ms: Option<f64>,
    /// The control stream is lost while the data plane answers.
    stale: bool,
    /// The federation stream is up and synced (always true for the local DC).
    connected: bool,
    /// The origin's Raft index the replica (or the local catalog) is at.
    index: u64,
    /// How far the replica is behind the origin's newest announced index (null: local, or a
    /// node that does not count it).
    index_lag: Option<u64>,
    /// The replica's digest (hex; null for the local DC).
    digest: Option<String>,
    /// Milliseconds since the origin last confirmed the replica (null: local, or never).
    last_contact_ms: Option<u64>,
    services: usize,
    instances: usize,
    gateways: Vec<GatewayJson<'a>>,
}

/// A DC's gateway, as its catalog holds it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GatewayJson<'a> {
    node: &'a str,
    address: &'a str,
    port: u16,
    health: &'static str,
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Passing => "passing",
        Health::Warning => "warning",
        Health::Critical => "critical",
    }
}

fn gateways(state: &DcState) -> Vec<GatewayJson<'_>> {
    state
        .instances_of(GATEWAY_SERVICE)
        .map(|i| GatewayJson {
            node: &i.node,
            address: state.address_of(i),
            port: i.port,
            health: health_name(state.health_of(i)),
        })
        .collect()
}

fn user_services(state: &DcState) -> usize {
    state
        .service_names()
        .filter(|s| !s.starts_with(INTERNAL_SERVICE_PREFIX))
        .count()
}

/// The map's body: every DC, this one first.
fn datacenters_body(
    view: &View,
    now_ms: Option<u64>,
    node: &str,
    lag: &dyn Fn(&str) -> Option<u64>,
) -> serde_json::Value {
    let f = view.failover();
    let wall = meridian_federation::now_ms();
    let dcs: Vec<DcJson<'_>> = view
        .datacenters()
        .into_iter()
        .enumerate()
        .filter_map(|(i, dc)| {
            let l = f.liveness(dc);
            let (state, remote) = if i == 0 {
                (view.local(), None)
            } else {
                let r = view.remote(dc)?;
                (&r.state, Some(r))
            };
            Some(DcJson {
                datacenter: dc,
                local: i == 0,
                status: l.status.as_str(),
                for_ms: now_ms.map(|n| n.saturating_sub(l.since_ms)),
                rtt_ms: l.rtt_us.map(|us| f64::from(us) / 1000.0),
                stale: l.stale,
                connected: remote.is_none_or(|r| r.connected),
                index: remote.map_or(state.index(), |r| r.index),
                index_lag: remote.and_then(|r| lag(&r.name)),
                digest: remote.map(|r| format!("{:016x}", r.digest)),
                last_contact_ms: remote
                    .filter(|r| r.confirmed_unix_ms > 0)
                    .map(|r| wall.saturating_sub(r.confirmed_unix_ms)),
                services: user_services(state),
                instances: state.instance_count(),
                gateways: gateways(state),
            })
        })
        .collect();
    serde_json::json!({
        "Datacenter": view.datacenter(),
        "Node": node,
        "Datacenters": dcs,
    })
}

/// What the map's answer is made of, less its clocks: a blocking query wakes when a DC's state,
/// replica, catalog or RTT (to the millisecond) changes.
fn datacenters_digest(view: &View) -> u64 {
    let f = view.failover();
    let seen: Vec<_> = view
        .datacenters()
        .into_iter()
        .map(|dc| {
            let l = f.liveness(dc);
            let replica = view.remote(dc).map(|r| (r.index, r.connected, r.digest));
            let rtt_ms = l.rtt_us.map(|us| us / 1000);
            (
                dc,
                l.status.as_str(),
                l.stale,
                rtt_ms,
                replica,
                view.local().index(),
            )
        })
        .collect();
    digest_index(&seen)
}

/// Where a service's plain name resolves from this DC, and why.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AnswerJson<'a> {
    /// The DC the answer comes from (null: no answer).
    datacenter: Option<&'a str>,
    /// Healthy instances in the answer.
    healthy: usize,
    /// DCs passed over before it (left out when none).
    #[serde(skip_serializing_if = "is_zero")]
    failovers: usize,
    /// `gateway` when the answer is this DC's gateways (by SNI); left out for `direct` (the
    /// instances' own addresses).
    #[serde(skip_serializing_if = "is_direct")]
    address_mode: &'static str,
    /// Why the local DC did or did not answer (`local`, `dc-drained`, `none-healthy-here`, ...).
    why: &'static str,
    /// The same for people.
    reason: String,
    /// Why there is no answer, if there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Other DCs that have the service but answer nothing now (`dc1 is drained`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_direct(mode: &&str) -> bool {
    *mode == "direct"
}

/// One service of the federation: 10,000 of them make the UI's first load, so what is usual is
/// left out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJson<'a> {
    name: &'a str,
    /// `connect-proxy` for sidecars (left out for plain services).
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'static str,
    /// Meridian's own (`meridian-*`; left out when not).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    internal: bool,
    /// Per DC, in `Datacenters` order: `[passing, warning, critical]` instances, or null where
    /// the DC has none.
    counts: Vec<Option<[u32; 3]>>,
    answer: AnswerJson<'a>,
}

/// Per service name (lowercased), its instance health counts in one DC, and whether it is a
/// sidecar.
fn counts(state: &DcState) -> std::collections::HashMap<String, ([u32; 3], bool)> {
    let mut m: std::collections::HashMap<String, ([u32; 3], bool)> =
        std::collections::HashMap::new();
    for i in state.instances() {
        let e = m.entry(i.service.to_ascii_lowercase()).or_default();
        let slot = match state.health_of(i) {
            Health::Passing => 0,
            Health::Warning => 1,
            Health::Critical => 2,
        };
        e.0[slot] += 1;
        e.1 |= i.proxy.is_some();
    }
    m
}

/// The services list's body; `domain` is the DNS domain names are answered in.
fn services_body(view: &View, domain: &str) -> serde_json::Value {
    let dcs = view.datacenters();
    let per_dc: Vec<_> = dcs
        .iter()
        .map(|dc| {
            view.dc_state(Some(dc))
                .map(|(_, s)| counts(s))
                .unwrap_or_default()
        })
        .collect();
    let mut names: Vec<&str> = per_dc
        .iter()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    let services: Vec<ServiceJson<'_>> = names
        .into_iter()
        .map(|name| {
            let q = ServiceQuery::new(name, None);
            let resolved = resolve(view, &q);
            let why = explain(view, &q);
            let f = view.failover();
            let skipped: Vec<String> = view
                .remotes()
                .filter(|r| f.unavailable(&r.name) && r.state.instances_of(name).next().is_some())
                .map(|r| format!("{} is {}", r.name, f.liveness(&r.name).status.as_str()))
                .collect();
            let answer = match &resolved {
                Ok(r) => AnswerJson {
                    datacenter: Some(r.dc),
                    healthy: r.instances.len(),
                    failovers: r.failovers,
                    address_mode: r.address_mode.as_str(),
                    why: why.key(),
                    reason: why.describe(),
                    error: None,
                    skipped,
                },
                Err(e) => AnswerJson {
                    datacenter: None,
                    healthy: 0,
                    failovers: 0,
                    address_mode: "direct",
                    why: why.key(),
                    reason: why.describe(),
                    error: Some(e.to_string()),
                    skipped,
                },
            };
            ServiceJson {
                name,
                kind: if per_dc.iter().any(|m| m.get(name).is_some_and(|c| c.1)) {
                    "connect-proxy"
                } else {
                    ""
                },
                internal: name.starts_with(INTERNAL_SERVICE_PREFIX),
                counts: per_dc.iter().map(|m| m.get(name).map(|c| c.0)).collect(),
                answer,
            }
        })
        .collect();
    serde_json::json!({
        "Datacenter": view.datacenter(),
        "Domain": domain,
        "Datacenters": dcs,
        "Services": services,
    })
}

/// What the services list is made of: every DC's catalog index, the DCs' states and the
/// failback holds and policy that move answers.
fn services_digest(view: &View) -> u64 {
    let f = view.failover();
    let dcs: Vec<_> = view
        .datacenters()
        .into_iter()
        .map(|dc| {
            let index = view.dc_state(Some(dc)).map(|(_, s)| s.index());
            (dc, f.liveness(dc).status.as_str(), index)
        })
        .collect();
    let held: Vec<_> = f.held.iter().collect();
    digest_index(&(dcs, &f.order, held, Arc::as_ptr(&f.policy) as usize))
}

/// Answers a blocking read of `body`, waking when `digest` changes.
async fn blocking_answer(
    views: &watch::Receiver<Arc<View>>,
    closing: watch::Receiver<bool>,
    q: &[(String, String)],
    digest: fn(&View) -> u64,
    body: impl FnOnce(&View) -> serde_json::Value,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(q)?;
    let view = wait_for_resolution(views, &params, closing, digest).await;
    let index = digest(&view);
    let mut response = axum::Json(body(&view)).into_response();
    response
        .headers_mut()
        .insert("X-Consul-Index", HeaderValue::from(index));
    Ok(response)
}

/// `GET /v1/internal/ui/datacenters`.
pub(super) async fn datacenters(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let now = state.node().map(|n| n.clock.now_ms());
    let node = state.catalog().node_name().to_owned();
    let federation = state.federation().cloned();
    let lag = move |dc: &str| {
        let f = federation.as_ref()?;
        Some(
            f.counters()
                .peer(dc)
                .lag
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    blocking_answer(
        state.views(),
        state.closing(),
        &q,
        datacenters_digest,
        |v| datacenters_body(v, now, &node, &lag),
    )
    .await
}

/// `GET /v1/internal/ui/services`.
pub(super) async fn services(
    State(state): State<ApiState>,
    Query(q): Pairs,
) -> Result<Response, ApiError> {
    let domain = state
        .node()
        .map_or_else(|| "consul".to_owned(), |n| n.domain.clone());
    blocking_answer(state.views(), state.closing(), &q, services_digest, |v| {
        services_body(v, &domain)
    })
    .await
}

/// The UI's reads for a gateway-only node, which has a view but no catalog: the same two
/// endpoints, over `views`, beside the page's files.
pub fn read_only<S: Clone + Send + Sync + 'static>(
    views: watch::Receiver<Arc<View>>,
    node: String,
    domain: String,
) -> Router<S> {
    let (never_tx, never) = watch::channel(false);
    // Held by the routes so the channel stays open: a gateway-only node's reads never close
    // early.
    let never_tx = Arc::new(never_tx);
    let dc_views = views.clone();
    let dc_never = never.clone();
    let keep = never_tx.clone();
    Router::new()
        .route(
            "/v1/internal/ui/datacenters",
            get(move |Query(q): Pairs| {
                let (views, never, node, _keep) = (
                    dc_views.clone(),
                    dc_never.clone(),
                    node.clone(),
                    keep.clone(),
                );
                async move {
                    blocking_answer(&views, never, &q, datacenters_digest, |v| {
                        datacenters_body(v, None, &node, &|_| None)
                    })
                    .await
                }
            }),
        )
        .route(
            "/v1/internal/ui/services",
            get(move |Query(q): Pairs| {
                let (views, never, domain, _keep) = (
                    views.clone(),
                    never.clone(),
                    domain.clone(),
                    never_tx.clone(),
                );
                async move {
                    blocking_answer(&views, never, &q, services_digest, |v| {
                        services_body(v, &domain)
                    })
                    .await
                }
            }),
        )
        .merge(assets())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::{Check, DcLiveness, DcStatus, Failover, Instance, RemoteDc};

    fn instance(service: &str, id: &str, meta: &[(&str, &str)]) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            port: 443,
            tags: Vec::new(),
            meta: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            weights: Default::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        }
    }

    fn state(instances: &[(&str, &str, Health)]) -> DcState {
        let mut s = DcState::default();
        for (i, (service, id, health)) in instances.iter().enumerate() {
            let check = Check {
                id: format!("service:{id}"),
                name: String::new(),
                node: "n1".into(),
                service_id: (*id).into(),
                service_name: (*service).into(),
                status: *health,
                output: String::new(),
                notes: String::new(),
                spec: None,
                create_index: 0,
                modify_index: 0,
            };
            s.register(instance(service, id, &[]), vec![check], i as u64 + 1);
        }
        s
    }

    /// dc3 (local, no web) following dc1 (web, drained) and dc2 (web and db: one passing, one
    /// critical).
    fn view(dc1: DcStatus) -> View {
        let remote = |name: &str, s: DcState| {
            (
                Arc::<str>::from(name),
                Arc::new(RemoteDc {
                    name: name.into(),
                    state: s,
                    connected: true,
                    ..RemoteDc::default()
                }),
            )
        };
        let f = Failover {
            liveness: [
                (
                    Arc::from("dc1"),
                    DcLiveness {
                        status: dc1,
                        rtt_us: Some(1_000),
                        ..DcLiveness::default()
                    },
                ),
                (
                    Arc::from("dc2"),
                    DcLiveness {
                        rtt_us: Some(20_000),
                        ..DcLiveness::default()
                    },
                ),
            ]
            .into_iter()
            .collect(),
            ..Failover::default()
        };
        View::new("dc3", state(&[("api", "api-1", Health::Passing)]))
            .with_remotes(
                [
                    remote("dc1", state(&[("web", "w1", Health::Passing)])),
                    remote(
                        "dc2",
                        state(&[
                            ("web", "w2", Health::Passing),
                            ("db", "db-1", Health::Critical),
                        ]),
                    ),
                ]
                .into_iter()
                .collect(),
            )
            .with_failover(Arc::new(f))
    }

    fn service<'a>(body: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        body["Services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["Name"] == name))
            .unwrap_or(&serde_json::Value::Null)
    }

    #[test]
    fn each_service_has_its_counts_per_dc_and_its_answer_here_with_the_reason() {
        let body = services_body(&view(DcStatus::Up), "consul");
        assert_eq!(
            body["Datacenters"],
            serde_json::json!(["dc3", "dc1", "dc2"])
        );
        let web = service(&body, "web");
        assert_eq!(
            web["Counts"],
            serde_json::json!([null, [1, 0, 0], [1, 0, 0]])
        );
        assert_eq!(web["Answer"]["Datacenter"], "dc1", "the nearest: {web}");
        assert_eq!(web["Answer"]["Why"], "none-here");
        assert!(web["Answer"].get("Skipped").is_none(), "{web}");
        let db = service(&body, "db");
        assert_eq!(db["Counts"], serde_json::json!([null, null, [0, 0, 1]]));
        assert_eq!(db["Answer"]["Datacenter"], serde_json::Value::Null);
        assert_eq!(db["Answer"]["Error"], "no healthy instance");
        let api = service(&body, "api");
        assert_eq!(
            (&api["Answer"]["Datacenter"], &api["Answer"]["Why"]),
            (&serde_json::json!("dc3"), &serde_json::json!("local"))
        );

        // dc1 drained: web goes to dc2, and the answer says dc1 was passed over.
        let body = services_body(&view(DcStatus::Drained), "consul");
        let web = service(&body, "web");
        assert_eq!(web["Answer"]["Datacenter"], "dc2");
        assert_eq!(
            web["Answer"]["Skipped"],
            serde_json::json!(["dc1 is drained"])
        );
        assert_ne!(
            services_digest(&view(DcStatus::Up)),
            services_digest(&view(DcStatus::Drained)),
            "a drain wakes the UI's blocking query"
        );
    }

    #[test]
    fn the_map_lists_every_dc_with_its_state_and_replica() {
        let body = datacenters_body(&view(DcStatus::Drained), Some(5_000), "n1", &|dc| {
            (dc == "dc2").then_some(3)
        });
        let dcs = body["Datacenters"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = dcs
            .iter()
            .filter_map(|d| d["Datacenter"].as_str())
            .collect();
        assert_eq!(names, ["dc3", "dc1", "dc2"]);
        assert_eq!(dcs[0]["Local"], true);
        assert_eq!(dcs[1]["Status"], "drained");
        assert_eq!(dcs[1]["RttMs"], 1.0);
        assert_eq!(dcs[2]["IndexLag"], 3);
        assert_eq!(dcs[2]["Services"], 2);
        assert_eq!(dcs[0]["Digest"], serde_json::Value::Null);
    }

    #[test]
    fn drills_probe_from_this_node_and_from_each_dcs_advertised_gateway() {
        let mut dc2 = state(&[]);
        dc2.register(
            instance(
                GATEWAY_SERVICE,
                GATEWAY_SERVICE,
                &[(super::super::drills::HTTP_META, "10.0.2.1:8500")],
            ),
            Vec::new(),
            1,
        );
        let v = View::new("dc1", state(&[])).with_remotes(
            [
                (
                    Arc::<str>::from("dc2"),
                    Arc::new(RemoteDc {
                        name: "dc2".into(),
                        state: dc2,
                        ..RemoteDc::default()
                    }),
                ),
                (
                    // No gateway: nothing to probe from there.
                    Arc::<str>::from("dc3"),
                    Arc::new(RemoteDc {
                        name: "dc3".into(),
                        ..RemoteDc::default()
                    }),
                ),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(
            super::super::drills::probe_nodes(&v, "127.0.0.1:8500"),
            ["127.0.0.1:8500", "10.0.2.1:8500"]
        );
    }

    #[test]
    fn every_file_is_embedded_and_unknown_paths_are_the_page_or_404() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            assert_eq!(file(a.path).status(), StatusCode::OK);
        }
        assert_eq!(file("services/web").status(), StatusCode::OK);
        assert_eq!(file("nope.js").status(), StatusCode::NOT_FOUND);
    }
}
