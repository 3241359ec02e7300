//! The gateway between real TLS peers: nginx instances holding a certificate for the service
//! name behind it, curl in front of it checking that certificate end to end (proof that nothing
//! in the path terminated TLS); an instance killed mid-run; bad and slow clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::federation::dev_dc;
use crate::harness::{Agent, AgentConfig, Ports, eventually, free_port, quick_raft};
use meridian_testkit::config::Peer;

const NAME: &str = "web.service.consul";

/// A self-signed certificate for `name`, made with openssl: `(cert, key)` paths.
fn certificate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    certificate_for(dir, name, &[])
}

/// A self-signed certificate for `name` and the names in `also`.
pub(crate) fn certificate_for(dir: &Path, name: &str, also: &[&str]) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let sans: Vec<String> = std::iter::once(name)
        .chain(also.iter().copied())
        .map(|n| format!("DNS:{n}"))
        .collect();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName={}", sans.join(","))])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((cert, key))
}

/// An nginx serving HTTPS on `port` with `cert`, answering every request with `body`.
pub(crate) struct Nginx {
    child: Child,
    pub(crate) port: u16,
}

impl Nginx {
    pub(crate) fn start(
        dir: &Path,
        tag: &str,
        cert: &Path,
        key: &Path,
        body: &str,
    ) -> Result<Nginx> {
        let port = free_port();
        let prefix = dir.join(format!("nginx-{tag}"));
        std::fs::create_dir_all(prefix.join("logs"))?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
                 fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
                 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n\
                 location / {{ return 200 \"{body}\\n\"; }}\n  }}\n}}\n",
                p = prefix.display(),
                c = cert.display(),
                k = key.display(),
            ),
        )?;
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "nginx {tag} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { child, port })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// One agent from a config file, with gateway limits suited to tests.
fn gateway_agent(dir: &Path) -> Result<Agent> {
    let mut c = AgentConfig::new("dc1", "n1", Ports::free(), &dir.join("data"));
    c.raft = quick_raft();
    c.set("gateway", "handshake_timeout_ms", 1500)
        .set("gateway", "connect_timeout_ms", 1000);
    Agent::start("gw", &c, dir, &[])
}

/// `curl` through the gateway at `gw_port`, trusting only `ca`: the body, or the error.
async fn curl(gw_port: u16, name: &str, ca: &Path) -> Result<String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{name}:{gw_port}:127.0.0.1")])
        .arg(format!("https://{name}:{gw_port}/"))
        .output()
        .await
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits until `agent` (in dc2) has dc1's one instance of `service` and dc1's gateway, learnt
/// through federation.
pub(crate) async fn replicated_with_gateway(agent: &Agent, service: &str) -> Result<()> {
    let what = format!("dc1's {service} and gateway replicated to dc2");
    eventually(30, &what, || async {
        let one = |path: String| async move {
            agent
                .get_json(&path)
                .await
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 1))
        };
        one(format!("/v1/catalog/service/{service}?dc=dc1")).await
            && one("/v1/catalog/service/meridian-gateway?dc=dc1".to_owned()).await
    })
    .await
}

/// A sample on `/metrics`, 0 when absent (or the agent does not answer).
pub(crate) async fn metric(agent: &Agent, name: &str) -> f64 {
    crate::federation::metric(agent, name).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passes_through_end_to_end_and_a_killed_instance_is_routed_around() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate(dir.path(), NAME)?;
    let mut a = Nginx::start(dir.path(), "a", &cert, &key, "backend-a")?;
    let b = Nginx::start(dir.path(), "b", &cert, &key, "backend-b")?;
    let mut agent = gateway_agent(dir.path())?;
    agent.wait_ready().await?;
    for (id, port) in [("web-a", a.port), ("web-b", b.port)] {
        let r = agent
            .put_json(
                "/v1/agent/service/register",
                &json!({"ID": id, "Name": "web", "Port": port, "Address": "127.0.0.1"}),
            )
            .await?;
        ensure!(r.status().is_success());
    }
    let gw = agent.ports.gateway;

    // curl checks nginx's certificate for the name: it would fail had anything in between
    // terminated TLS (the gateway holds no certificate at all).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(curl(gw, NAME, &cert).await?);
    }
    ensure!(
        seen == ["backend-a", "backend-b"].map(str::to_owned).into(),
        "both instances get connections: {seen:?}"
    );
    // An unknown service is refused (TLS alert unrecognized_name), never relayed elsewhere.
    ensure!(curl(gw, "nope.service.consul", &cert).await.is_err());

    // Kill one instance (its registration stays): every new connection still succeeds.
    a.kill();
    for _ in 0..10 {
        let body = curl(gw, NAME, &cert).await?;
        ensure!(body == "backend-b", "after the kill: {body}");
    }
    ensure!(
        metric(
            &agent,
            "meridian_gateway_connections_total{route=\"local\",outcome=\"relayed\"}"
        )
        .await
            >= 30.0
    );
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_slow_clients_are_cut_and_do_not_starve_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate(dir.path(), NAME)?;
    let backend = Nginx::start(dir.path(), "a", &cert, &key, "backend-a")?;
    let mut agent = gateway_agent(dir.path())?;
    agent.wait_ready().await?;
    let r = agent
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "web-a", "Name": "web", "Port": backend.port, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success());
    let gw = ("127.0.0.1", agent.ports.gateway);

    // Not TLS: closed, counted.
    let mut plain = tokio::net::TcpStream::connect(gw).await?;
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await?;
    let mut sink = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink)).await??;
    ensure!(
        n < 16,
        "a plain HTTP client gets at most an alert, got {n} bytes"
    );

    // Hundreds of idle connections and a slowloris client (one byte of a ClientHello a
    // second): new clients are still served, and the slow ones are cut at the handshake
    // timeout (1.5 s here). All from 127.0.0.1, as curl is: 200 stay within one address's
    // share (`max_connections_per_client`, 256); beyond it, see gateway_caps.rs.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(gw).await?);
    }
    let slow = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(gw).await?;
        let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        let started = Instant::now();
        for b in hello {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        anyhow::Ok(started.elapsed())
    });
    let body = curl(agent.ports.gateway, NAME, &cert).await?;
    ensure!(
        body == "backend-a",
        "served beside 200 idle connections: {body}"
    );
    let cut_after = slow.await??;
    ensure!(
        cut_after < Duration::from_secs(5),
        "the slowloris client was cut after {cut_after:?}"
    );
    // The idle ones were cut too: their reads end.
    for mut s in idle.drain(..).take(5) {
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await?;
        ensure!(matches!(r, Ok(0) | Err(_)), "an idle connection was closed");
    }
    eventually(10, "refusals counted", || async {
        metric(
            &agent,
            "meridian_gateway_connections_total{route=\"none\",outcome=\"handshake_timeout\"}",
        )
        .await
            >= 200.0
            && metric(&agent, "meridian_gateway_hello_failures_total").await >= 1.0
    })
    .await?;
    ensure!(agent.is_running());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_datacenter_is_reached_through_the_quic_tunnel() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let remote_name = "web.service.dc1.consul";
    let (cert, key) = certificate_for(dir.path(), NAME, &[remote_name])?;
    let backend = Nginx::start(dir.path(), "dc1-web", &cert, &key, "dc1-web")?;
    let mut dc1 = dev_dc(dir.path(), "dc1", None)?;
    dc1.wait_ready().await?;
    let mut dc2 = dev_dc(dir.path(), "dc2", Some(dc1.ports.wan))?;
    dc2.wait_ready().await?;
    let r = dc1
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "web-1", "Name": "web", "Port": backend.port, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success());
    // dc2 learns web and dc1's gateway through federation.
    replicated_with_gateway(&dc2, "web").await?;

    // Through dc2's gateway, with curl checking the dc1 backend's certificate end to end.
    for _ in 0..5 {
        let body = curl(dc2.ports.gateway, remote_name, &cert).await?;
        ensure!(body == "dc1-web", "through the tunnel: {body}");
    }
    // One QUIC connection carried them all, as streams.
    let connects = metric(&dc2, "meridian_gateway_tunnel_connects_total").await;
    if connects != 1.0 {
        let text = dc2.metrics().await?;
        bail!("{connects} tunnel connections:\n{text}");
    }
    ensure!(metric(&dc2, "meridian_gateway_tunnel_streams_out_total").await >= 5.0);
    ensure!(metric(&dc1, "meridian_gateway_tunnel_streams_in_total").await >= 5.0);
    // A connection is counted when its relay ends, which may be just after curl has its body.
    eventually(10, "five relayed remote connections counted", || async {
        metric(
            &dc2,
            "meridian_gateway_connections_total{route=\"remote\",outcome=\"relayed\"}",
        )
        .await
            >= 5.0
    })
    .await?;
    // A name for dc2 itself, with no such service there, is not sent anywhere.
    ensure!(
        curl(dc2.ports.gateway, "web.service.dc2.consul", &cert)
            .await
            .is_err()
    );
    Ok(())
}

/// dc1 of three nodes and dc2 of one, federated both ways with certificates from `certs`
/// (`make_certs`: dc1's n1-n3 and dc2's n1), every node with a gateway (a short tunnel idle
/// timeout, so a dead gateway is noticed in seconds); dc1 registers `web` on `backend_port`, and
/// dc2 has learnt it with dc1's three gateways.
async fn two_dcs_with_tls(
    dir: &Path,
    certs: &Path,
    backend_port: u16,
) -> Result<(Vec<Agent>, Agent)> {
    let node_config = |c: &mut AgentConfig, peers: Vec<Peer>| {
        crate::federation::with_certs(c, certs, peers);
        c.set("gateway", "connect_timeout_ms", 1000)
            .set("gateway", "tunnel_idle_timeout_ms", 3000);
    };
    let dc1_configs = meridian_testkit::agent::dc_configs("dc1", 3, dir);
    let mut c2 = AgentConfig::new("dc2", "n1", Ports::free(), &dir.join("dc2-n1"));
    let mut dc1 = Vec::new();
    for mut c in dc1_configs.clone() {
        c.data_dir = dir.join(format!("dc1-{}", c.node_name));
        node_config(
            &mut c,
            vec![crate::federation::peer_at("dc2", std::slice::from_ref(&c2))],
        );
        dc1.push(Agent::start(&format!("dc1-{}", c.node_name), &c, dir, &[])?);
    }
    for a in &mut dc1 {
        a.wait_ready().await?;
    }
    node_config(
        &mut c2,
        vec![crate::federation::peer_at("dc1", &dc1_configs)],
    );
    let mut dc2 = Agent::start("dc2-n1", &c2, dir, &[])?;
    dc2.wait_ready().await?;
    let r = dc1[0]
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "web-1", "Name": "web", "Port": backend_port, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success());
    eventually(60, "dc1's web and three gateways in dc2", || async {
        let web = dc2.get_json("/v1/catalog/service/web?dc=dc1").await;
        let gw = dc2
            .get_json("/v1/catalog/service/meridian-gateway?dc=dc1")
            .await;
        web.is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 1))
            && gw.is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 3))
    })
    .await?;
    Ok((dc1, dc2))
}

/// The gateway tunnel address (`ip:port`) dc2 uses for dc1, from its metrics.
async fn tunnel_gateway(agent: &Agent) -> Option<String> {
    let text = agent.metrics().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("meridian_gateway_tunnel_up{dc=\"dc1\",gateway=\""))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_remote_gateway_dies_the_tunnel_moves_to_another() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    crate::federation::make_certs(
        &certs,
        &[("dc1", "n1"), ("dc1", "n2"), ("dc1", "n3"), ("dc2", "n1")],
    )?;
    let remote_name = "web.service.dc1.consul";
    let (cert, key) = certificate_for(dir.path(), NAME, &[remote_name])?;
    let backend = Nginx::start(dir.path(), "dc1-web", &cert, &key, "dc1-web")?;

    let (mut dc1, dc2) = two_dcs_with_tls(dir.path(), &certs, backend.port).await?;
    for _ in 0..3 {
        ensure!(curl(dc2.ports.gateway, remote_name, &cert).await? == "dc1-web");
    }
    let first = tunnel_gateway(&dc2).await.context("a live tunnel")?;
    let victim = dc1
        .iter()
        .position(|a| first.ends_with(&format!(":{}", a.ports.gateway)))
        .context("the tunnel goes to a dc1 gateway")?;
    dc1[victim].kill9()?;

    // New connections find their way through another gateway of dc1.
    eventually(30, "a connection through another gateway", || async {
        curl(dc2.ports.gateway, remote_name, &cert).await.is_ok()
    })
    .await?;
    for _ in 0..5 {
        let body = curl(dc2.ports.gateway, remote_name, &cert).await?;
        ensure!(body == "dc1-web", "after the gateway died: {body}");
    }
    let now = tunnel_gateway(&dc2).await.context("a live tunnel again")?;
    ensure!(now != first, "the tunnel moved from {first}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_fallback_carries_cross_dc_connections_without_udp() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    crate::federation::make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1")])?;
    let remote_name = "web.service.dc1.consul";
    let (cert, key) = certificate_for(dir.path(), NAME, &[remote_name])?;
    let backend = Nginx::start(dir.path(), "dc1-web", &cert, &key, "dc1-web")?;
    let tcp = |c: &mut AgentConfig| {
        c.set("gateway", "wan_transport", "tcp");
    };
    let mut dc1 = crate::federation::config_dc(dir.path(), &certs, "dc1", &[], tcp)?;
    dc1.wait_ready().await?;
    let mut dc2 =
        crate::federation::config_dc(dir.path(), &certs, "dc2", &[("dc1", dc1.ports.wan)], tcp)?;
    dc2.wait_ready().await?;
    let r = dc1
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "web-1", "Name": "web", "Port": backend.port, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success());
    replicated_with_gateway(&dc2, "web").await?;
    for _ in 0..3 {
        let body = curl(dc2.ports.gateway, remote_name, &cert).await?;
        ensure!(body == "dc1-web", "through the TCP fallback: {body}");
    }
    // No QUIC connection: every client connection was its own TLS connection over TCP.
    ensure!(metric(&dc2, "meridian_gateway_tunnel_connects_total").await == 0.0);
    ensure!(metric(&dc2, "meridian_gateway_tunnel_streams_out_total").await >= 3.0);
    // A connection is counted when its relay ends, which may be just after curl has its body.
    eventually(
        10,
        "three relayed tunnelled-in connections counted",
        || async {
            metric(
                &dc1,
                "meridian_gateway_connections_total{route=\"tunnelled_in\",outcome=\"relayed\"}",
            )
            .await
                >= 3.0
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_only_node_follows_its_datacenter_and_reaches_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dc2_name = "web.service.dc2.consul";
    let (cert, key) = certificate_for(dir.path(), NAME, &[dc2_name])?;
    let web1 = Nginx::start(dir.path(), "dc1-web", &cert, &key, "dc1-web")?;
    let web2 = Nginx::start(dir.path(), "dc2-web", &cert, &key, "dc2-web")?;
    let mut dc1 = dev_dc(dir.path(), "dc1", None)?;
    dc1.wait_ready().await?;
    let mut dc2 = dev_dc(dir.path(), "dc2", Some(dc1.ports.wan))?;
    dc2.wait_ready().await?;
    for (agent, port) in [(&dc1, web1.port), (&dc2, web2.port)] {
        let r = agent
            .put_json(
                "/v1/agent/service/register",
                &json!({"ID": "web-1", "Name": "web", "Port": port, "Address": "127.0.0.1"}),
            )
            .await?;
        ensure!(r.status().is_success());
    }
    // No catalog, no vote: it follows dc1's server, and learns dc2 through it.
    let follow = format!("127.0.0.1:{}", dc1.ports.wan);
    let g1 = Agent::start_dev(
        "dc1-g1",
        Ports::free(),
        &dir.path().join("g1"),
        dir.path(),
        &[
            "--dc",
            "dc1",
            "--node",
            "g1",
            "--gateway-only",
            "--follow",
            &follow,
        ],
    )?;
    eventually(30, "dc1's web through the gateway-only node", || async {
        curl(g1.ports.gateway, NAME, &cert)
            .await
            .is_ok_and(|b| b == "dc1-web")
    })
    .await?;
    eventually(
        30,
        "dc2's web through the gateway-only node's tunnel",
        || async {
            curl(g1.ports.gateway, dc2_name, &cert)
                .await
                .is_ok_and(|b| b == "dc2-web")
        },
    )
    .await?;
    let answer = crate::dns::query(
        crate::dns::dns_addr(&g1),
        "web.service.consul.",
        hickory_net::proto::rr::RecordType::SRV,
        false,
    )
    .await?;
    ensure!(
        crate::dns::srv_lines(&answer).len() == 1,
        "DNS from the followed catalog: {answer:?}"
    );
    ensure!(metric(&g1, "meridian_gateway_tunnel_streams_out_total").await >= 1.0);
    // Its UI, read-only: the page, the map of both DCs, and dc2's web where a client of dc1 gets
    // it (its own DC first).
    let page = reqwest::get(g1.url("/ui/")).await?;
    ensure!(page.status().is_success() && page.text().await?.contains("app.js"));
    let dcs = g1.get_json("/v1/internal/ui/datacenters").await?;
    ensure!(
        dcs["Datacenter"] == "dc1" && dcs["Datacenters"].as_array().map(Vec::len) == Some(2),
        "{dcs}"
    );
    let services = g1.get_json("/v1/internal/ui/services").await?;
    let web = services["Services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["Name"] == "web"))
        .with_context(|| format!("{services}"))?;
    ensure!(
        web["Counts"] == json!([[1, 0, 0], [1, 0, 0]]) && web["Answer"]["Datacenter"] == "dc1",
        "{web}"
    );
    let drill = g1
        .http
        .post(g1.url("/v1/operator/drill"))
        .json(&json!({"Kind": "dc-down", "Datacenter": "dc1"}))
        .send()
        .await?;
    ensure!(
        drill.status().is_client_error() || drill.status().is_server_error(),
        "a gateway-only node runs no drill: {}",
        drill.status()
    );
    Ok(())
}

/// Waits until `to` sees the instance `id` registered now in `from`, of DC `dc` (through
/// federation).
async fn replicates_to(from: &Agent, dc: &str, to: &Agent, id: &str) -> Result<()> {
    let r = from
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": id, "Name": "rot", "Port": 80}),
        )
        .await?;
    ensure!(
        r.status().is_success(),
        "register {id}: {}",
        r.text().await?
    );
    eventually(30, &format!("{} sees {id} of {dc}", to.name), || async {
        to.get_json(&format!("/v1/catalog/service/rot?dc={dc}"))
            .await
            .is_ok_and(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|e| e["ServiceID"] == id))
            })
    })
    .await
}

/// Whether a client holding `cert`/`key` (trusting `ca`) gets through `addr`'s mutual TLS: the
/// server's verdict on a client certificate arrives after a TLS 1.3 handshake, so a refusal
/// shows as a closed stream.
async fn mtls_admits(addr: &str, dc: &str, ca: &str, cert: &Path, key: &Path) -> Result<bool> {
    let material = meridian_identity::TlsMaterial::from_pem(
        ca,
        &std::fs::read_to_string(cert)?,
        &std::fs::read_to_string(key)?,
    )?;
    let Ok(mut s) =
        meridian_identity::connect(material.client_config()?, addr, dc, Duration::from_secs(3))
            .await
    else {
        return Ok(false);
    };
    // An HTTP/2 server speaks first (its SETTINGS frame) once it has accepted the client.
    let mut buf = [0u8; 9];
    let read = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    Ok(matches!(read, Ok(Ok(n)) if n > 0))
}

/// SECURITY.md's CA rotation with reloads only, never a restart: trust both CAs, new
/// certificates, drop the old CA, each step a reload of every node (SIGHUP, `meridian reload`,
/// or `PUT /v1/agent/reload`). Throughout, registrations go through a follower of the 3-node dc1
/// (forwarded over the mutual-TLS rpc port), federation replicates both ways, and connections
/// cross from dc2 to dc1 through the gateways' QUIC tunnel: none may fail. At the end the running
/// nodes refuse a certificate of the old CA on the rpc and WAN ports and admit one of the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_by_reloads_keeps_rpc_federation_and_the_tunnel_carrying_traffic()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let (certs, new) = (dir.path().join("certs"), dir.path().join("new"));
    let nodes = [("dc1", "n1"), ("dc1", "n2"), ("dc1", "n3"), ("dc2", "n1")];
    crate::federation::make_certs(&certs, &nodes)?;
    crate::federation::make_certs(&new, &nodes)?;
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old)?;
    for f in [
        "dc2-n1.pem",
        "dc2-n1-key.pem",
        "dc1-n2.pem",
        "dc1-n2-key.pem",
    ] {
        std::fs::copy(certs.join(f), old.join(f))?;
    }
    let remote_name = "web.service.dc1.consul";
    let (cert, key) = certificate_for(dir.path(), NAME, &[remote_name])?;
    let backend = Nginx::start(dir.path(), "dc1-web", &cert, &key, "dc1-web")?;

    let (dc1, dc2) = two_dcs_with_tls(dir.path(), &certs, backend.port).await?;
    let mut agents = dc1;
    agents.push(dc2);
    let dc2 = &agents[3];
    ensure!(curl(dc2.ports.gateway, remote_name, &cert).await? == "dc1-web");
    // The check made at the end, before the rotation: the old CA's dc1 server is admitted.
    let ca_pem = std::fs::read_to_string(certs.join("meridian-ca.pem"))?;
    let (old_rpc, old_rpc_key) = (old.join("dc1-n2.pem"), old.join("dc1-n2-key.pem"));
    ensure!(
        mtls_admits(&agents[0].rpc(), "dc1", &ca_pem, &old_rpc, &old_rpc_key).await?,
        "rpc: a server certificate of the DC's own CA refused"
    );

    // The workload: registrations through a dc1 follower, and connections through the tunnel.
    let leader = crate::harness::leader_index(&agents[..3]).await?;
    let follower = (leader + 1) % 3;
    let load = crate::harness::Load::start(&agents[follower], 2, 100_000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gw = agents[3].ports.gateway;
    let crossing = {
        let (stop, cert) = (stop.clone(), cert.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match curl(gw, remote_name, &cert).await {
                    Ok(body) if body == "dc1-web" => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failed)
        })
    };

    let ca = certs.join("meridian-ca.pem");
    let old_ca = std::fs::read_to_string(&ca)?;
    let new_ca = std::fs::read_to_string(new.join("meridian-ca.pem"))?;
    for step in ["trust-both", "new-cert", "new-ca"] {
        match step {
            "trust-both" => std::fs::write(&ca, format!("{old_ca}{new_ca}"))?,
            "new-ca" => std::fs::write(&ca, &new_ca)?,
            _ => {}
        }
        for (i, (dc, name)) in nodes.iter().enumerate() {
            if step == "new-cert" {
                for f in [format!("{dc}-{name}.pem"), format!("{dc}-{name}-key.pem")] {
                    std::fs::copy(new.join(&f), certs.join(&f))?;
                }
            }
            let a = &agents[i];
            // Each of the three ways an operator reloads.
            match i % 3 {
                0 => sighup(a, "SIGHUP: config file reloaded").await?,
                1 => {
                    let (ok, out) =
                        crate::harness::cli(a, Some(crate::harness::TEST_TOKEN), &["reload"])?;
                    ensure!(ok, "meridian reload of {}: {out}", a.name);
                }
                _ => {
                    let r = a.http.put(a.url("/v1/agent/reload")).send().await?;
                    let (status, body) = (r.status(), r.text().await?);
                    ensure!(
                        status.is_success() && body.contains("certificates"),
                        "reload of {}: {status} {body}",
                        a.name
                    );
                }
            }
            ensure!(
                agents[i].is_running(),
                "{} stopped on a reload",
                agents[i].name
            );
            let tag = format!("{step}-{i}");
            replicates_to(&agents[0], "dc1", &agents[3], &format!("{tag}-a")).await?;
            replicates_to(&agents[3], "dc2", &agents[1], &format!("{tag}-b")).await?;
        }
    }
    load.advance(50, "registrations after the rotation").await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failures = load.failures();
    let acked = load.finish().await?;
    let (crossed, refused) = crossing.await?;
    ensure!(
        failures == 0,
        "{failures} registrations failed during the rotation"
    );
    ensure!(
        refused.is_empty(),
        "{} of {} cross-DC connections failed: {refused:?}",
        refused.len(),
        crossed + refused.len()
    );
    ensure!(
        crossed >= 10,
        "only {crossed} cross-DC connections were tried"
    );
    for a in &agents[..3] {
        crate::harness::holds_all(a, "after the rotation", &acked).await?;
    }

    // The running nodes trust the new CA alone now: an old-CA certificate is refused on the rpc
    // and WAN ports, a new-CA one admitted.
    let both = format!("{old_ca}{new_ca}");
    let (old_cert, old_key) = (old.join("dc2-n1.pem"), old.join("dc2-n1-key.pem"));
    let (new_cert, new_key) = (new.join("dc1-n2.pem"), new.join("dc1-n2-key.pem"));
    let wan = format!("127.0.0.1:{}", agents[0].ports.wan);
    ensure!(
        !mtls_admits(&wan, "dc1", &both, &old_cert, &old_key).await?,
        "WAN: old CA admitted"
    );
    ensure!(
        mtls_admits(&wan, "dc1", &both, &new_cert, &new_key).await?,
        "WAN: new CA refused"
    );
    let rpc = agents[0].rpc();
    ensure!(
        !mtls_admits(&rpc, "dc1", &both, &old_rpc, &old_rpc_key).await?,
        "rpc: old CA admitted"
    );
    ensure!(
        mtls_admits(&rpc, "dc1", &both, &new_cert, &new_key).await?,
        "rpc: new CA refused"
    );
    Ok(())
}

/// A gateway-only node (config file, certificates, `--follow`) reloads on SIGHUP too: its tokens
/// at once, its certificate renewed in place; a change that needs a restart is refused and
/// logged with the key, and the node keeps running as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_only_node_reloads_on_sighup() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    crate::federation::make_certs(&certs, &[("dc1", "n1")])?;
    crate::federation::make_role_cert(&certs, "dc1", "g1", "gateway")?;
    let mut dc1 = crate::federation::config_dc(dir.path(), &certs, "dc1", &[], |_| {})?;
    dc1.wait_ready().await?;
    let mut c = AgentConfig::new("dc1", "g1", Ports::free(), &dir.path().join("g1"));
    c.gateway_only = true;
    crate::federation::with_certs(&mut c, &certs, Vec::new());
    let follow = format!("127.0.0.1:{}", dc1.ports.wan);
    let g1 = Agent::start("g1", &c, dir.path(), &["--follow", &follow])?;
    eventually(30, "the gateway-only node follows dc1", || async {
        g1.get_json("/v1/federation/status").await.is_ok_and(|s| {
            s["Remotes"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|d| d["Datacenter"] == "dc1" && d["Connected"] == true)
            })
        })
    })
    .await?;
    const READER: &str = "gateway-reader-secret";
    let read_with = |token: &str| {
        let request = reqwest::Client::new()
            .get(g1.url("/v1/catalog/datacenters"))
            .header("X-Consul-Token", token);
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    ensure!(read_with(READER).await? == 403);
    // A new token, and the certificate renewed under the same CA.
    let mut acl = meridian_testkit::config::Acl::management(crate::harness::TEST_TOKEN);
    acl.tokens.push(meridian_testkit::config::AclToken {
        description: "reader".into(),
        secret: READER.into(),
        scope: "read".into(),
        services: Vec::new(),
    });
    c.acl = Some(acl);
    c.write(&dir.path().join("g1.toml"))?;
    for f in ["dc1-g1.pem", "dc1-g1-key.pem"] {
        std::fs::remove_file(certs.join(f))?;
    }
    crate::federation::make_role_cert(&certs, "dc1", "g1", "gateway")?;
    sighup(&g1, "SIGHUP: config file reloaded").await?;
    let log = g1.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("SIGHUP: config file reloaded"))
        .unwrap_or_default();
    ensure!(
        line.contains("certificates") && line.contains("acl"),
        "the reload's line: {line}"
    );
    ensure!(read_with(READER).await? == 200, "the reloaded token");

    // A new DNS port needs a restart: refused, named, and the node goes on as it was.
    let mut moved = c.clone();
    moved.ports.dns = crate::harness::free_port();
    moved.write(&dir.path().join("g1.toml"))?;
    sighup(&g1, "SIGHUP: config file not reloaded").await?;
    ensure!(
        g1.log_text().contains("ports.dns"),
        "the refusal names the key"
    );
    ensure!(
        read_with(READER).await? == 200,
        "a refused file changed the tokens"
    );
    ensure!(
        g1.get_json("/v1/federation/status").await.is_ok(),
        "the node stopped answering"
    );
    Ok(())
}

/// Sends `agent` a SIGHUP and waits until its log shows `want` once more.
async fn sighup(agent: &Agent, want: &str) -> Result<()> {
    let before = agent.log_text().matches(want).count();
    let pid = agent.proc.pid().context("pid")?;
    let sent = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    ensure!(sent.success(), "kill -HUP {pid}");
    eventually(10, &format!("{}: {want}", agent.name), || async {
        agent.log_text().matches(want).count() > before
    })
    .await
}
