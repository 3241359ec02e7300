//! `meridian demo`: three federated datacenters in this process, on loopback. `web` runs behind
//! real TLS in dc1 and dc2 (backends with a certificate from a demo CA), `api` in dc1 and `db` in
//! dc2 with HTTP and TTL checks; dc3 has no services of its own and fails over, dc1 first. The
//! demo shows each DC's DNS answer, a connection through dc3's gateway that checks the backend's
//! certificate end to end, the mesh path (api's sidecar in dc3 calls web's in dc1 through both
//! gateways; an intention written in dc1 stops it in dc3 and another restores it, each timed),
//! then runs `meridian drill dc-down` against dc1 and prints its report, and serves until Ctrl-C
//! (or `--exit-after`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::routing::get;
use meridian_identity::{PemPair, Role, create_ca, create_node_cert};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use clap::Args;
use meridian_client::api::{ApiClient, HealthEntry, worst};
use meridian_node::agent::{Agent, dev_data_dir, shutdown_signal};
use meridian_node::config::Config;
use meridian_sidecar::{Sidecar, SidecarConfig, UpstreamSpec};

use crate::args::NodeArgs;

/// `meridian demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECS")]
    pub exit_after: Option<u64>,
    /// Where dc1 listens; dc2 and dc3 listen `--port-step` and twice that further (a port
    /// given as 0 is a free one for each DC).
    #[command(flatten)]
    pub node: NodeArgs,
    /// How far apart the three datacenters' ports are.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub port_step: u16,
}

/// How long the demo waits for its services to pass their checks and federate.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// TTL of the `db` check; the demo refreshes it three times per TTL.
const DB_TTL: Duration = Duration::from_secs(15);
/// The datacenters.
const DCS: [&str; 3] = ["dc1", "dc2", "dc3"];
/// The name the TLS backends hold a certificate for, and clients send as SNI.
const WEB: &str = "web.service.consul";
/// The demo mesh's trust domain.
const TRUST_DOMAIN: &str = "6d656d6f.consul";
/// How long the demo's drill keeps dc1 drained.
const DRILL_FOR: Duration = Duration::from_secs(5);

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("meridian-demo-")
        .tempdir()
        .context("cannot create the demo's folder")?;
    let ca = create_ca("Meridian demo CA")?;
    let ca_file = scratch.path().join("demo-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem)?;

    let mut tasks = JoinSet::new();
    let web1 = tls_backend(&mut tasks, &ca, "dc1").await?;
    let web2 = tls_backend(&mut tasks, &ca, "dc2").await?;
    let api = backend(&mut tasks, "api").await?;

    let mut agents: Vec<Agent> = Vec::new();
    let mut result = Ok(());
    for (i, dc) in DCS.iter().enumerate() {
        match start_dc(&args, i, dc, agents.first()).await {
            Ok(a) => agents.push(a),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = demo(
            &agents,
            &mut tasks,
            [web1, web2, api],
            &ca_file,
            args.exit_after,
        )
        .await;
    }
    tasks.shutdown().await;
    for a in agents.into_iter().rev() {
        a.shutdown().await;
    }
    result
}

/// Starts datacenter `dc`, the `i`th: dc1 on the ports given (8500, 8600, ... by default), the
/// others `--port-step` further each, joining dc1 over the WAN.
async fn start_dc(
    args: &DemoArgs,
    i: usize,
    dc: &str,
    first: Option<&Agent>,
) -> anyhow::Result<Agent> {
    let mut ov = args.node.overrides();
    ov.datacenter = Some(dc.to_owned());
    ov.node_name = Some(format!("{dc}-n1"));
    ov.data_dir = args.node.data_dir.as_ref().map(|d| d.join(dc));
    if let Some(a) = first.and_then(Agent::wan_addr) {
        ov.join_wan = vec![a.to_string()];
    }
    let offset = u16::try_from(i)
        .ok()
        .and_then(|i| i.checked_mul(args.port_step))
        .context("--port-step too large")?;
    let base = Config::dev(&ov).ports;
    for (port, default) in [
        (&mut ov.http_port, base.http),
        (&mut ov.dns_port, base.dns),
        (&mut ov.rpc_port, base.rpc),
        (&mut ov.wan_port, base.wan),
        (&mut ov.gateway_port, base.gateway),
    ] {
        *port = Some(if default == 0 {
            free_port()?
        } else {
            default
                .checked_add(offset)
                .with_context(|| format!("{dc}'s ports would pass 65535: lower --port-step"))?
        });
    }
    let mut cfg = Config::dev(&ov);
    // One mesh across the three DCs: each DC's leader makes its own mesh CA.
    cfg.gateway.trust_domain = Some(TRUST_DOMAIN.to_owned());
    if dc == "dc3" {
        // dc3 has no `web` of its own: it prefers dc1, then dc2, so the drill has work to do.
        cfg.failover.nearest_n = 0;
        cfg.failover.datacenters = vec!["dc1".to_owned(), "dc2".to_owned()];
    }
    let temp = dev_data_dir(&mut cfg)?;
    let agent = Agent::start(cfg, temp)
        .await
        .with_context(|| format!("cannot start {dc}"))?;
    // The UI's drills run the same engine as `meridian drill`.
    agent
        .api()
        .drills()
        .set_runner(std::sync::Arc::new(crate::drill::ApiRunner::new(
            agent.federation(),
        )));
    Ok(agent)
}

/// A port free on loopback right now (for a port given as 0: each DC gets its own).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

async fn demo(
    agents: &[Agent],
    tasks: &mut JoinSet<()>,
    [web1, web2, api]: [SocketAddr; 3],
    ca_file: &Path,
    exit_after: Option<u64>,
) -> anyhow::Result<()> {
    let clients: Vec<ApiClient> = agents
        .iter()
        .map(|a| ApiClient::new(&a.http_addr().to_string(), None))
        .collect::<Result<_, _>>()?;
    let web = |addr: SocketAddr, dc: &str| {
        json!({"ID": "web-1", "Name": "web", "Tags": ["tls"], "Address": "127.0.0.1", "Port": addr.port(),
               "Meta": {"demo": dc},
               "Check": {"TCP": addr.to_string(), "Interval": "1s", "Timeout": "1s"}})
    };
    register_with_retry(&clients[0], &web(web1, "dc1")).await?;
    register_with_retry(
        &clients[0],
        &json!({"ID": "api", "Name": "api", "Tags": ["http"], "Address": "127.0.0.1", "Port": api.port(),
                "Check": {"HTTP": format!("http://{api}/health"), "Interval": "1s", "Timeout": "1s"}}),
    )
    .await?;
    register_with_retry(&clients[1], &web(web2, "dc2")).await?;
    register_with_retry(
        &clients[1],
        &json!({"ID": "db", "Name": "db", "Tags": ["primary"], "Address": "127.0.0.1", "Port": 5432,
                "Check": {"CheckID": "service:db", "TTL": format!("{}s", DB_TTL.as_secs())}}),
    )
    .await?;
    // The TTL check starts critical: pass it now and keep it passing.
    clients[1]
        .put("/v1/agent/check/pass/service:db?note=demo", None)
        .await?;
    let ttl_client = clients[1].clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(DB_TTL / 3);
        loop {
            tick.tick().await;
            if let Err(e) = ttl_client
                .put("/v1/agent/check/pass/service:db?note=demo", None)
                .await
            {
                tracing::warn!(error = %e.chain(), "cannot refresh the db TTL check");
            }
        }
    });

    // dc3 sees both DCs' `web` and gateways, and every DC is up for the others.
    wait_until_passing(
        &clients[2],
        &[
            ("web", "dc1", 1),
            ("web", "dc2", 1),
            ("api", "dc1", 1),
            ("db", "dc2", 1),
        ],
    )
    .await?;
    wait_until_passing(
        &clients[2],
        &[
            ("meridian-gateway", "dc1", 1),
            ("meridian-gateway", "dc2", 1),
        ],
    )
    .await?;
    wait_until_passing(&clients[0], &[("meridian-gateway", "dc3", 1)]).await?;

    println!(
        "\nMeridian demo: three federated datacenters on loopback; web (TLS) in dc1 and dc2, api in dc1, db in dc2.\n"
    );
    let connector = tls_connector(ca_file)?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    // Failover (and the RTT used to order DCs) starts once the first probes have answered.
    loop {
        let line = through_gateway(&connector, gateway_of(&agents[2])?, WEB).await;
        if line.as_deref().is_ok_and(|l| l.contains("dc1")) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("dc3's gateway did not reach web in dc1 within {READY_TIMEOUT:?}: {line:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("DNS: `{WEB}` SRV at each DC's DNS server");
    for a in agents {
        let dns = a.dns_addr().context("the DNS server is not running")?;
        let answer = srv(dns, WEB).await.unwrap_or_else(|e| format!("({e})"));
        println!("  {:<4} {dns:<16} -> {answer}", a.config().datacenter);
    }
    println!(
        "\nA TLS connection through dc3's gateway, SNI `{WEB}` (certificate checked end to end):"
    );
    let gw = gateway_of(&agents[2])?;
    let body = through_gateway(&connector, gw, WEB).await?;
    println!("  dc3 gateway {gw} -> {body}");
    let named = "web.service.dc2.consul";
    let gw1 = gateway_of(&agents[0])?;
    match through_gateway(&connector, gw1, named).await {
        Ok(body) => println!("  dc1 gateway {gw1}, SNI `{named}` -> {body}"),
        Err(e) => println!("  dc1 gateway {gw1}, SNI `{named}` -> failed: {e:#}"),
    }

    let (web_sidecar, api_sidecar, upstream) = mesh(agents, &clients, tasks).await?;

    println!(
        "\nDrill: dc1 drained for {}s while every other DC resolves and connects every 100 ms.\n",
        DRILL_FOR.as_secs()
    );
    let drill = crate::drill::DrillCommand::DcDown(crate::drill::DcDownArgs {
        dc: "dc1".to_owned(),
        service: Some("web".to_owned()),
        common: crate::drill::CommonArgs {
            duration: DRILL_FOR,
            http: agents.iter().map(|a| a.http_addr().to_string()).collect(),
            token: None,
            interval: Duration::from_millis(100),
            failback_timeout: Duration::from_secs(30),
            ca: Some(ca_file.to_owned()),
            domain: "consul".to_owned(),
            json: false,
        },
    });
    let code = crate::drill::run(drill).await?;
    if code != std::process::ExitCode::SUCCESS {
        bail!("the drill could not run");
    }
    print_banner(agents, ca_file, upstream, exit_after);

    match exit_after {
        Some(secs) => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                () = shutdown_signal() => {}
            }
        }
        None => shutdown_signal().await,
    }
    tracing::info!("demo stopping");
    api_sidecar.shutdown().await;
    web_sidecar.shutdown().await;
    Ok(())
}

/// The mesh path: web's sidecar in dc1, api's in dc3 with web as its upstream. An intention
/// written in dc3 lets api call web (through dc3's and dc1's gateways, mutual TLS end to end);
/// a deny written in dc1 stops it in dc3, and an allow restores it, each timed.
async fn mesh(
    agents: &[Agent],
    clients: &[ApiClient],
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(Sidecar, Sidecar, SocketAddr)> {
    // Every DC's root known in dc1 and dc3 first: each sidecar trusts all three.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for c in [&clients[0], &clients[2]] {
        loop {
            let roots: serde_json::Value = c.get("/v1/connect/ca/roots").await.unwrap_or_default();
            if roots["Roots"]
                .as_array()
                .is_some_and(|r| r.len() == DCS.len())
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the mesh CAs were not known everywhere within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let web_app = backend(tasks, "web, through the mesh").await?;
    let api_app = backend(tasks, "api").await?;
    let web = Sidecar::start(SidecarConfig::new(
        "web",
        any,
        web_app,
        &agents[0].http_addr().to_string(),
    ))
    .await
    .context("starting web's sidecar in dc1")?;
    let mut config = SidecarConfig::new("api", any, api_app, &agents[2].http_addr().to_string());
    config.upstreams = vec![UpstreamSpec {
        service: "web".to_owned(),
        datacenter: None,
        bind: any,
    }];
    let api = Sidecar::start(config)
        .await
        .context("starting api's sidecar in dc3")?;
    let upstream = api.upstreams[0];
    let intention =
        |action: &str| Some(serde_json::to_vec(&json!({ "Action": action })).unwrap_or_default());
    const PAIR: &str = "/v1/connect/intentions/exact?source=api&destination=web";

    println!(
        "\nThe mesh: api in dc3 calls web in dc1 through its sidecar ({upstream}), across dc3's and dc1's gateways, mutual TLS end to end:"
    );
    clients[2].put(PAIR, intention("allow")).await?;
    let first = until(READY_TIMEOUT, Duration::from_millis(100), upstream, true).await?;
    println!("  intention api -> web allow (written in dc3); api's call -> {first}");
    let started = tokio::time::Instant::now();
    clients[0].put(PAIR, intention("deny")).await?;
    until(READY_TIMEOUT, Duration::from_millis(5), upstream, false).await?;
    println!(
        "  intention api -> web deny written in dc1: api's calls refused in dc3 {} ms after the write",
        started.elapsed().as_millis()
    );
    let started = tokio::time::Instant::now();
    clients[0].put(PAIR, intention("allow")).await?;
    until(READY_TIMEOUT, Duration::from_millis(5), upstream, true).await?;
    println!(
        "  intention api -> web allow written in dc1: calls pass again {} ms after the write",
        started.elapsed().as_millis()
    );
    Ok((web, api, upstream))
}

/// Calls `upstream` every `every` until the call succeeds (`pass`) or fails (not `pass`), at most
/// `limit`: the body of the last call.
async fn until(
    limit: Duration,
    every: Duration,
    upstream: SocketAddr,
    pass: bool,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = http_get(upstream).await;
        if got.is_ok() == pass {
            return Ok(got.unwrap_or_default());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the mesh call through {upstream} did not {} within {limit:?}: {got:?}",
                if pass { "pass" } else { "fail" }
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// `GET /` over plain HTTP (the application's side of a sidecar): the body's first line.
async fn http_get(addr: SocketAddr) -> anyhow::Result<String> {
    let call = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").await?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .context("timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("answer: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.lines().next().unwrap_or_default().to_owned())
}

fn gateway_of(agent: &Agent) -> anyhow::Result<SocketAddr> {
    agent.gateway_addr().context("the gateway is not running")
}

/// The SRV answer for `name` at `dns`, as `host:port` pairs.
async fn srv(dns: SocketAddr, name: &str) -> anyhow::Result<String> {
    use hickory_net::client::{Client, ClientHandle as _};
    use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
    use hickory_net::runtime::TokioRuntimeProvider;
    use hickory_net::udp::UdpClientStream;
    let stream = UdpClientStream::builder(dns, TokioRuntimeProvider::default()).build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    let m = tokio::time::timeout(
        Duration::from_secs(2),
        client.query(Name::from_ascii(name)?, DNSClass::IN, RecordType::SRV),
    )
    .await
    .context("no answer within 2 s")??;
    let m = m.into_message();
    let mut out: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(format!("{}:{}", s.target, s.port)),
            _ => None,
        })
        .collect();
    out.sort();
    if out.is_empty() {
        out.push(format!("{:?}", m.metadata.response_code));
    }
    Ok(out.join(", "))
}

/// A TLS client that trusts only the demo CA in `ca_file`.
fn tls_connector(ca_file: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One HTTPS request through the gateway at `gw` with SNI `name`: the response's last line.
async fn through_gateway(
    connector: &tokio_rustls::TlsConnector,
    gw: SocketAddr,
    name: &str,
) -> anyhow::Result<String> {
    let attempt = async {
        let tcp = TcpStream::connect(gw).await?;
        let mut tls = connector
            .connect(ServerName::try_from(name.to_owned())?, tcp)
            .await?;
        tls.write_all(
            format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::with_capacity(512);
        (&mut tls).take(8192).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        anyhow::Ok(text.lines().last().unwrap_or_default().trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .context("no answer within 3 s")?
}

/// Serves HTTPS on a free loopback port with a certificate for `web.service.consul` from `ca`,
/// answering every request with the DC it stands in.
async fn tls_backend(
    tasks: &mut JoinSet<()>,
    ca: &PemPair,
    dc: &'static str,
) -> anyhow::Result<SocketAddr> {
    let names = [WEB.to_owned(), format!("web.service.{dc}.consul")];
    let pair = create_node_cert(ca, dc, "web", Role::Server, &names, 30)?;
    let certs = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
        .chain(CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a demo backend on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    tasks.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let serve = async {
                    let mut tls = acceptor.accept(tcp).await?;
                    // Read the request head (bounded), then answer and close.
                    let mut buf = [0u8; 4096];
                    let mut seen = 0;
                    while seen < buf.len() {
                        let n = tls.read(&mut buf[seen..]).await?;
                        if n == 0 {
                            break;
                        }
                        seen += n;
                        if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let body = format!("hello from web in {dc}\n");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    tls.write_all(head.as_bytes()).await?;
                    tls.write_all(body.as_bytes()).await?;
                    tls.shutdown().await?;
                    std::io::Result::Ok(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), serve).await;
            });
        }
    });
    Ok(addr)
}

/// Serves a tiny HTTP backend on a free loopback port, for the demo's checks.
async fn backend(tasks: &mut JoinSet<()>, name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a demo backend on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback(move || async move { format!("hello from {name}\n") });
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(backend = name, error = %e, "demo backend stopped");
        }
    });
    Ok(addr)
}

/// Registers a definition, retrying while the fresh datacenter elects its leader.
async fn register_with_retry(client: &ApiClient, def: &serde_json::Value) -> anyhow::Result<()> {
    let body = serde_json::to_vec(def)?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match client
            .put("/v1/agent/service/register", Some(body.clone()))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if e.status() == Some(503) && tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for a leader");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot register {def}"))),
        }
    }
}

/// Waits until each `(service, dc, n)` has `n` passing instances as `client` sees them.
async fn wait_until_passing(
    client: &ApiClient,
    wanted: &[(&str, &str, usize)],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let mut pending = Vec::new();
        for (service, dc, n) in wanted {
            let entries: Vec<HealthEntry> = client
                .get(&format!("/v1/health/service/{service}?dc={dc}"))
                .await
                .unwrap_or_default();
            let passing = entries
                .iter()
                .filter(|e| worst(&e.checks) == "passing")
                .count();
            if passing < *n {
                pending.push(format!("{service} in {dc}: {passing}/{n} passing"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the demo services did not pass their checks within {READY_TIMEOUT:?}: {}",
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_banner(agents: &[Agent], ca_file: &Path, upstream: SocketAddr, exit_after: Option<u64>) {
    let exe = std::env::current_exe()
        .ok()
        .map_or_else(|| "meridian".to_owned(), |p| p.display().to_string());
    println!(
        "\n  DC    HTTP API (Consul)        DNS                 Gateway (TCP + QUIC)   WAN (federation)"
    );
    for a in agents {
        let opt = |x: Option<SocketAddr>| x.map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!(
            "  {:<5} http://{:<17} {:<19} {:<22} {}",
            a.config().datacenter,
            a.http_addr().to_string(),
            opt(a.dns_addr()),
            opt(a.gateway_addr()),
            opt(a.wan_addr()),
        );
    }
    let (h1, h3) = (agents[0].http_addr(), agents[2].http_addr());
    let dns3 = agents[2].dns_addr();
    let gw3 = agents[2].gateway_addr();
    let https: Vec<String> = agents
        .iter()
        .map(|a| format!("--http {}", a.http_addr()))
        .collect();
    println!(
        "\nThe UI: http://{h3}/ui/ (dc3's view; every node serves its own)\
         \n\nTry:\
         \n  curl -s http://{h3}/v1/federation/datacenters\
         \n  curl -s 'http://{h3}/v1/health/service/web?dc=dc2&passing'\
         \n  dig @{dns_ip} -p {dns_port} web.service.consul SRV\
         \n  curl --cacert {ca} --resolve web.service.consul:{gw_port}:{gw_ip} https://web.service.consul:{gw_port}/\
         \n  curl -s -X PUT http://{h1}/v1/operator/drain     # then ask dc3 again; DELETE undrains\
         \n  curl -s http://{upstream}/      # api's sidecar in dc3 -> web in dc1, through the mesh\
         \n  curl -s -X PUT 'http://{h1}/v1/connect/intentions/exact?source=api&destination=web' -d '{{\"Action\": \"deny\"}}'\
         \n  {exe} drill dc-down --dc dc1 --for 10s --service web --ca {ca} {https}\
         \n  {exe} services list --http-addr {h3}\n\
         \n{stop}",
        ca = ca_file.display(),
        dns_ip = dns3.map_or_else(|| "127.0.0.1".to_owned(), |a| a.ip().to_string()),
        dns_port = dns3.map_or(0, |a| a.port()),
        gw_ip = gw3.map_or_else(|| "127.0.0.1".to_owned(), |a| a.ip().to_string()),
        gw_port = gw3.map_or(0, |a| a.port()),
        https = https.join(" "),
        stop = match exit_after {
            Some(secs) => format!("Stopping in {secs} s (or on Ctrl-C)."),
            None => "Press Ctrl-C to stop.".to_owned(),
        },
    );
}
