//! The built-in sidecar between two federated datacenters of real processes: `web` in dc1 and
//! `api` in dc2 each run `meridian connect proxy`; curl calls `web` through api's upstream
//! listener, across dc2's gateway, the QUIC tunnel and dc1's gateway, to web's sidecar, with
//! mutual TLS the whole way (the gateways route the mesh SNI and never decrypt). Intentions
//! written in either DC decide, at once for new connections and for open ones; a caller with
//! a foreign CA's certificate, an expired one, another service's, or none is refused at web's
//! sidecar and counted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meridian_identity::PemPair;
use meridian_identity::mesh::{SpiffeId, TrustBundle, client_config, create_mesh_ca, issue_leaf};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::federation::{all_know, dc_config, make_certs};
use crate::harness::{Agent, BIN, Ports, TEST_TOKEN, eventually, free_port};

/// The mesh's trust domain in these tests.
pub(crate) const TRUST_DOMAIN: &str = "5d1c0ffe.consul";

/// The application behind a sidecar: an HTTP `GET` gets `hello from <name>` (for curl); any
/// other first bytes start an echo, prefixed, until the peer closes.
async fn app(name: &'static str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if buf[..n].starts_with(b"GET ") {
                    let body = format!("hello from {name}");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                    return;
                }
                let mut n = n;
                loop {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    n = s.read(&mut buf).await.unwrap_or(0);
                }
            });
        }
    });
    Ok(addr)
}

/// A `meridian connect proxy` process, killed when dropped; its log is kept.
struct Sidecar {
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
}

impl Sidecar {
    fn start(dir: &Path, agent: &Agent, name: &str, args: &[&str]) -> Result<Sidecar> {
        let log = dir.join(format!("sidecar-{name}.log"));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(BIN)
            .args(["connect", "proxy"])
            .args(args)
            .args(["--metrics-addr", &metrics.to_string()])
            .env(
                "MERIDIAN_HTTP_ADDR",
                format!("127.0.0.1:{}", agent.ports.http),
            )
            .env("MERIDIAN_HTTP_TOKEN", TEST_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Sidecar {
            child,
            log,
            metrics,
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metric(&self, key: &str) -> Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0.0))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` through `upstream`: the body, or None when the call fails.
fn curl(upstream: SocketAddr) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{upstream}/"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn set_intention(agent: &Agent, source: &str, action: &str) -> Result<()> {
    let r = agent
        .put_json(
            &format!("/v1/connect/intentions/exact?source={source}&destination=web"),
            &json!({ "Action": action }),
        )
        .await?;
    ensure!(r.status().is_success(), "intention: {}", r.status());
    Ok(())
}

/// A handshake with web's sidecar at `at` presenting `leaf` (the server checked by `trust`),
/// then a byte sent and one read: whether the connection carried it.
async fn call_with(at: SocketAddr, trust: &Arc<TrustBundle>, leaf: &PemPair) -> Result<bool> {
    let config = client_config(trust, leaf, "web")?;
    let tcp = TcpStream::connect(at).await?;
    let name = ServerName::try_from(format!("web.default.dc1.internal.{TRUST_DOMAIN}"))?;
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    else {
        return Ok(false);
    };
    // TLS 1.3: the server judges the client's certificate after the client's handshake ends,
    // so a refusal shows on the first read.
    if tls.write_all(b"x").await.is_err() {
        return Ok(false);
    }
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b)).await;
    Ok(matches!(read, Ok(Ok(1))))
}

/// Two federated DCs of one mesh (dc2 joins dc1), `mesh` set in `[mesh]` of each, every root
/// known everywhere.
pub(crate) async fn two_dcs(dir: &Path, mesh: &[(&str, &str, i64)]) -> Result<(Agent, Agent)> {
    let certs = dir.join("certs");
    make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1")])?;
    let start = |dc: &str, peers: &[(&str, u16)]| {
        let mut c = dc_config(dir, &certs, dc, Ports::free(), peers);
        c.set("gateway", "trust_domain", TRUST_DOMAIN);
        for (only, key, value) in mesh {
            if *only == dc {
                c.set("mesh", key, *value);
            }
        }
        Agent::start(dc, &c, dir, &[])
    };
    let mut dc1 = start("dc1", &[])?;
    dc1.wait_ready().await?;
    let mut dc2 = start("dc2", &[("dc1", dc1.ports.wan)])?;
    dc2.wait_ready().await?;
    all_know(&[&dc1, &dc2], 2).await?;
    for agent in [&dc1, &dc2] {
        eventually(30, "both roots", || async {
            agent
                .get_json("/v1/connect/ca/roots")
                .await
                .is_ok_and(|v| v["Roots"].as_array().is_some_and(|r| r.len() == 2))
        })
        .await?;
    }
    Ok((dc1, dc2))
}

/// web's sidecar in dc1 (mesh connections at the address returned) and api's in dc2, with web
/// as its upstream at the address returned.
async fn web_and_api(
    dir: &Path,
    dc1: &Agent,
    dc2: &Agent,
) -> Result<(Sidecar, SocketAddr, SocketAddr, Sidecar, SocketAddr)> {
    let web_app = app("web").await?;
    let web_in = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let web = Sidecar::start(
        dir,
        dc1,
        "web",
        &[
            "--service",
            "web",
            "--local",
            &web_app.to_string(),
            "--listen",
            &web_in.to_string(),
        ],
    )?;
    let api_app = app("api").await?;
    let upstream = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = Sidecar::start(
        dir,
        dc2,
        "api",
        &[
            "--service",
            "api",
            "--local",
            &api_app.to_string(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--upstream",
            &format!("web:{}", upstream.port()),
        ],
    )?;
    Ok((web, web_in, web_app, api, upstream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_call_crosses_both_gateways_and_intentions_decide() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Leaves of 3 s in dc2, renewed every 2 s: api's sidecar renews all through the test.
    let (dc1, dc2) = two_dcs(dir.path(), &[("dc2", "leaf_ttl_s", 3)]).await?;
    let (web, web_in, web_app, api, upstream) = web_and_api(dir.path(), &dc1, &dc2).await?;

    // web's sidecar is web's mesh endpoint, in Consul's shape, and dc2 resolves web to dc1.
    let r = eventually(60, "web's sidecar known and passing in dc2", || async {
        let r = dc2
            .http
            .get(dc2.url("/v1/health/connect/web?failover&passing"))
            .send()
            .await;
        match r {
            Ok(r) => {
                let dc = crate::harness::header(&r, "x-meridian-datacenter");
                let v: Value = r.json().await.unwrap_or_default();
                dc.as_deref() == Some("dc1") && v.as_array().is_some_and(|a| a.len() == 1)
            }
            Err(_) => false,
        }
    })
    .await;
    if let Err(e) = r {
        let here = dc1.get_json("/v1/health/connect/web").await;
        let there = dc2.get_json("/v1/health/connect/web?dc=dc1").await;
        let resolved = dc2.get_json("/v1/health/connect/web?failover").await;
        anyhow::bail!(
            "{e}: in dc1 {here:?}\nin dc2 of dc1 {there:?}\nresolved {resolved:?}\n{}",
            web.log_text()
        );
    }
    let v = dc1.get_json("/v1/catalog/connect/web").await?;
    let e = &v[0];
    ensure!(
        e["ServiceKind"] == "connect-proxy"
            && e["ServiceName"] == "web-sidecar-proxy"
            && e["ServicePort"] == web_in.port()
            && e["ServiceProxy"]["DestinationServiceName"] == "web"
            && e["ServiceProxy"]["LocalServicePort"] == web_app.port(),
        "{v}"
    );
    let v = dc2.get_json("/v1/agent/services").await?;
    let proxy = &v["api-sidecar-proxy"];
    ensure!(
        proxy["Kind"] == "connect-proxy"
            && proxy["Proxy"]["Upstreams"][0]["DestinationName"] == "web"
            && proxy["Proxy"]["Upstreams"][0]["LocalBindPort"] == upstream.port(),
        "{v}"
    );

    // Default deny: nothing passes until an intention allows it.
    ensure!(curl(upstream).is_none(), "a call passed with no intention");
    set_intention(&dc2, "api", "allow").await?;
    eventually(30, "curl through the mesh", || async {
        curl(upstream).as_deref() == Some("hello from web")
    })
    .await
    .with_context(|| format!("web: {}\napi: {}", web.log_text(), api.log_text()))?;
    // web's sidecar saw who called.
    let caller = format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc2/svc/api");
    ensure!(web.log_text().contains(&caller), "{}", web.log_text());
    ensure!(
        web.metric("meridian_mesh_authorizations_total{decision=\"allow\"}")
            .await?
            >= 1.0
    );
    // The gateways carried it: dc2's to dc1 (remote), dc1's to web's sidecar (local).
    ensure!(
        dc2.metric("meridian_gateway_connections_total{route=\"remote\",outcome=\"relayed\"}")
            .await?
            >= 1.0
    );

    // An open connection, then a deny written in the other DC: new calls fail, and the open
    // connection is closed.
    let mut open = TcpStream::connect(upstream).await?;
    open.write_all(b"ping").await?;
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), open.read_exact(&mut b)).await??;
    ensure!(&b == b"ping");
    set_intention(&dc1, "api", "deny").await?;
    eventually(30, "the deny enforced", || async {
        curl(upstream).is_none()
    })
    .await?;
    let closed = tokio::time::timeout(Duration::from_secs(10), open.read(&mut b)).await;
    ensure!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the open connection survived a deny"
    );
    ensure!(web.metric("meridian_mesh_revoked_total").await? >= 1.0);
    ensure!(
        web.metric("meridian_mesh_authorizations_total{decision=\"deny\"}")
            .await?
            >= 1.0
    );
    set_intention(&dc1, "api", "allow").await?;
    eventually(30, "allowed again", || async {
        curl(upstream).as_deref() == Some("hello from web")
    })
    .await?;
    // api's leaf is renewed (3 s leaves, renewed after 2 s) under an open connection, which
    // goes on, and new calls go on with the new leaf.
    let mut open = TcpStream::connect(upstream).await?;
    open.write_all(b"pong").await?;
    tokio::time::timeout(Duration::from_secs(10), open.read_exact(&mut b)).await??;
    let first = api.metric("meridian_mesh_leaves_total").await?;
    eventually(20, "api's leaf renewed", || async {
        api.metric("meridian_mesh_leaves_total")
            .await
            .is_ok_and(|n| n > first)
    })
    .await
    .with_context(|| api.log_text())?;
    open.write_all(b"ping").await?;
    tokio::time::timeout(Duration::from_secs(10), open.read_exact(&mut b)).await??;
    ensure!(&b == b"ping", "the open connection broke on the renewal");
    ensure!(curl(upstream).as_deref() == Some("hello from web"));
    drop(open);

    // Refused at web's sidecar, each counted: no certificate (openssl as a plain TLS client), a
    // foreign CA's certificate, an expired one, and another service's (denied by intentions).
    let plain = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &web_in.to_string(),
            "-tls1_3",
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = tokio::task::spawn_blocking(move || plain.wait_with_output()).await??;
    ensure!(!String::from_utf8_lossy(&out.stdout).contains("hello"));
    let trust = crate::mesh::bundle(&dc1).await?;
    let foreign_ca = create_mesh_ca(TRUST_DOMAIN, "dc2")?;
    let forged = issue_leaf(
        &foreign_ca,
        &SpiffeId::new(TRUST_DOMAIN, "dc2", "api")?,
        std::time::SystemTime::now(),
        Duration::from_secs(3600),
    )?;
    ensure!(
        !call_with(web_in, &trust, &forged).await?,
        "a foreign CA's leaf was let in"
    );
    let expired = crate::mesh::leaf(&dc2, "api").await?.0;
    ensure!(
        call_with(web_in, &trust, &expired).await?,
        "api's own fresh leaf was refused"
    );
    // 3 s leaves, backdated by the clock-skew allowance: past their end after a few seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        !call_with(web_in, &trust, &expired).await?,
        "an expired leaf was let in"
    );
    let db = crate::mesh::leaf(&dc2, "db").await?.0;
    let denied_before = web
        .metric("meridian_mesh_authorizations_total{decision=\"deny\"}")
        .await?;
    ensure!(
        !call_with(web_in, &trust, &db).await?,
        "db was let in by no intention"
    );
    ensure!(
        web.metric("meridian_mesh_authorizations_total{decision=\"deny\"}")
            .await?
            > denied_before
    );
    for reason in ["no_certificate", "untrusted", "expired"] {
        let n = web
            .metric(&format!(
                "meridian_mesh_handshake_failures_total{{reason=\"{reason}\"}}"
            ))
            .await?;
        ensure!(n >= 1.0, "{reason} not counted: {}", web.log_text());
    }

    // A stopped sidecar deregisters: web has no mesh endpoint left.
    drop(api);
    let mut web = web;
    sigterm(&mut web.child)?;
    eventually(30, "web's sidecar deregistered", || async {
        dc1.get_json("/v1/catalog/connect/web")
            .await
            .is_ok_and(|v| v.as_array().is_some_and(Vec::is_empty))
    })
    .await?;
    Ok(())
}

/// Sends SIGTERM to `child` with the `kill` command (no unsafe code here).
fn sigterm(child: &mut Child) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let _ = child.wait();
    Ok(())
}

/// The active root's ID in `agent`'s `/v1/connect/ca/roots`, and how many roots of `dc` it lists.
async fn roots_of(agent: &Agent, dc: &str) -> Result<(String, usize)> {
    let v = agent.get_json("/v1/connect/ca/roots").await?;
    let n = v["Roots"]
        .as_array()
        .context("Roots")?
        .iter()
        .filter(|r| r["Datacenter"] == dc)
        .count();
    Ok((v["ActiveRootID"].as_str().unwrap_or_default().to_owned(), n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_dcs_mesh_ca_drops_no_call_and_no_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The next root signs 2 s after it is published.
    let (dc1, dc2) = two_dcs(dir.path(), &[("dc1", "rotation_activate_s", 2)]).await?;
    let (web, _, _, api, upstream) = web_and_api(dir.path(), &dc1, &dc2).await?;
    set_intention(&dc1, "api", "allow").await?;
    eventually(60, "curl through the mesh", || async {
        curl(upstream).as_deref() == Some("hello from web")
    })
    .await
    .with_context(|| format!("web: {}\napi: {}", web.log_text(), api.log_text()))?;
    let mut open = TcpStream::connect(upstream).await?;
    let mut b = [0u8; 4];
    open.write_all(b"ping").await?;
    tokio::time::timeout(Duration::from_secs(10), open.read_exact(&mut b)).await??;
    let (old_root, _) = roots_of(&dc1, "dc1").await?;
    let leaves_before = web.metric("meridian_mesh_leaves_total").await?;

    // Rotate dc1's CA (Consul's call); calls go on every 100 ms all the while.
    let r = dc1
        .http
        .put(dc1.url("/v1/connect/ca/configuration"))
        .json(&json!({"Provider": "consul", "Config": {"PrivateKeyType": "ec"}}))
        .send()
        .await?;
    ensure!(r.status().is_success(), "rotate: {}", r.status());
    let v: Value = r.json().await?;
    let next = v["Rotation"]["NextRootID"]
        .as_str()
        .context("NextRootID")?
        .to_owned();
    ensure!(next != old_root, "{v}");
    // A second rotation waits for this one.
    let again = dc1
        .http
        .put(dc1.url("/v1/connect/ca/configuration"))
        .json(&json!({}))
        .send()
        .await?;
    ensure!(
        again.status() == reqwest::StatusCode::CONFLICT,
        "{}",
        again.status()
    );
    let (mut calls, mut failed) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        calls += 1;
        if curl(upstream).as_deref() != Some("hello from web") {
            failed += 1;
        }
        let (active, n) = roots_of(&dc1, "dc1").await?;
        let renewed = web.metric("meridian_mesh_leaves_total").await? > leaves_before;
        if active == next && n == 2 && renewed {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the rotation did not complete: {active} {n} {renewed}\n{}",
            web.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // dc2 trusts both of dc1's roots; calls with web's new leaf pass; the open connection lives.
    eventually(30, "both of dc1's roots in dc2", || async {
        roots_of(&dc2, "dc1").await.is_ok_and(|(_, n)| n == 2)
    })
    .await?;
    for _ in 0..5 {
        calls += 1;
        if curl(upstream).as_deref() != Some("hello from web") {
            failed += 1;
        }
    }
    ensure!(
        failed == 0,
        "{failed} of {calls} calls failed during the rotation\n{}",
        web.log_text()
    );
    open.write_all(b"pong").await?;
    tokio::time::timeout(Duration::from_secs(10), open.read_exact(&mut b)).await??;
    ensure!(&b == b"pong", "the open connection broke in the rotation");
    let v = dc1.get_json("/v1/connect/ca/configuration").await?;
    ensure!(v["Rotation"].is_null() && v["Provider"] == "consul", "{v}");
    Ok(())
}
