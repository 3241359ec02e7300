//! Security against real agent processes: ACL tokens on every write endpoint, mutual TLS on the
//! LAN rpc port (a rogue node can neither join nor inject, nor can a gateway-only node's
//! certificate; a server will not start on one), the gateway's refusal of names
//! outside its domains, and tokens changed by a reload. (The CA rotated by reloads, under
//! traffic, is in `gateway.rs`, beside the tunnel it exercises.)

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meridian_identity::TlsMaterial;
use meridian_protos::catalog::ForwardRequest;
use meridian_protos::catalog::catalog_client::CatalogClient;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::federation::{config_dc, make_certs, make_role_cert, metric};
use crate::harness::{Agent, AgentConfig, Ports, TEST_TOKEN, eventually, quick_raft};
use meridian_testkit::config::{Acl, AclToken, Federation, Server};

const READ: &str = "read-token-0123456789";
const WRITE_WEB: &str = "write-web-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";

/// An `[acl]` section with the harness's management token and three scoped tokens.
fn acl() -> Acl {
    let token = |description: &str, secret: &str, scope: &str, services: &[&str]| AclToken {
        description: description.to_owned(),
        secret: secret.to_owned(),
        scope: scope.to_owned(),
        services: services.iter().map(|s| (*s).to_owned()).collect(),
    };
    Acl {
        management_token: TEST_TOKEN.to_owned(),
        tokens: vec![
            token("reader", READ, "read", &[]),
            token("web deployer", WRITE_WEB, "write", &["web"]),
            token("operator", OPERATOR, "operator", &[]),
        ],
    }
}

async fn send(
    agent: &Agent,
    method: &Method,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, String)> {
    // A client without the harness's default token.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut req = client.request(method.clone(), agent.url(path));
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// What a write could change: instances, checks and their status, drains, prepared queries.
async fn state(agent: &Agent) -> Result<Value> {
    Ok(json!({
        "services": agent.get_json("/v1/catalog/services").await?,
        "instances": agent.get_json("/v1/agent/services").await?,
        "checks": agent.get_json("/v1/agent/checks").await?,
        "queries": agent.get_json("/v1/query").await?,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_endpoint_needs_a_token_of_the_right_scope() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1")])?;
    let mut dc1 = config_dc(dir.path(), &certs, "dc1", &[], |c| c.acl = Some(acl()))?;
    dc1.wait_ready().await?;
    for (id, name) in [("web-1", "web"), ("db-1", "db")] {
        let body = json!({"ID": id, "Name": name, "Port": 80,
            "Check": {"CheckID": format!("{name}-ttl"), "TTL": "600s"}});
        let (code, text) = send(
            &dc1,
            &Method::PUT,
            "/v1/agent/service/register",
            Some(&body),
            Some(TEST_TOKEN),
        )
        .await?;
        ensure!(code == 200, "register {id}: {code} {text}");
    }
    let query = json!({"Name": "q1", "Service": {"Service": "web"}});
    let (code, text) = send(
        &dc1,
        &Method::POST,
        "/v1/query",
        Some(&query),
        Some(TEST_TOKEN),
    )
    .await?;
    ensure!(code == 200, "create query: {code} {text}");
    let qid = serde_json::from_str::<Value>(&text)?["ID"]
        .as_str()
        .context("query ID")?
        .to_owned();
    let before = state(&dc1).await?;

    let web2 = json!({"ID": "web-2", "Name": "web", "Port": 81});
    let db2 = json!({"ID": "db-2", "Name": "db", "Port": 82});
    // Re-registering db's ID under web's name would replace db's instance.
    let hijack = json!({"ID": "db-1", "Name": "web", "Port": 83});
    let critical = json!({"Status": "critical"});
    let query_path = format!("/v1/query/{qid}");
    // Every write endpoint, and the scoped tokens it refuses (no token and the read token are
    // refused everywhere).
    let cases: Vec<(Method, &str, Option<&Value>, Vec<&str>)> = vec![
        (
            Method::PUT,
            "/v1/agent/service/register",
            Some(&web2),
            vec![OPERATOR],
        ),
        (
            Method::PUT,
            "/v1/agent/service/register",
            Some(&db2),
            vec![WRITE_WEB, OPERATOR],
        ),
        (
            Method::PUT,
            "/v1/agent/service/register",
            Some(&hijack),
            vec![WRITE_WEB],
        ),
        (
            Method::PUT,
            "/v1/agent/service/deregister/web-1",
            None,
            vec![OPERATOR],
        ),
        (
            Method::PUT,
            "/v1/agent/service/deregister/db-1",
            None,
            vec![WRITE_WEB, OPERATOR],
        ),
        (
            Method::PUT,
            "/v1/agent/check/pass/db-ttl",
            None,
            vec![WRITE_WEB],
        ),
        (
            Method::PUT,
            "/v1/agent/check/warn/db-ttl",
            None,
            vec![WRITE_WEB],
        ),
        (
            Method::PUT,
            "/v1/agent/check/fail/db-ttl",
            None,
            vec![WRITE_WEB],
        ),
        (
            Method::PUT,
            "/v1/agent/check/update/db-ttl",
            Some(&critical),
            vec![WRITE_WEB],
        ),
        (Method::PUT, "/v1/operator/drain", None, vec![WRITE_WEB]),
        (Method::DELETE, "/v1/operator/drain", None, vec![WRITE_WEB]),
        (Method::POST, "/v1/query", Some(&query), vec![WRITE_WEB]),
        (Method::PUT, &query_path, Some(&query), vec![WRITE_WEB]),
        (Method::DELETE, &query_path, None, vec![WRITE_WEB]),
    ];
    let mut refused = 0;
    for (method, path, body, wrong) in &cases {
        let tokens = [None, Some(READ), Some("not-a-token-0123456789")]
            .into_iter()
            .chain(wrong.iter().map(|t| Some(*t)));
        for token in tokens {
            let (code, text) = send(&dc1, method, path, *body, token).await?;
            ensure!(
                code == 403 && text.starts_with("Permission denied"),
                "{method} {path} with {token:?}: {code} {text}"
            );
            refused += 1;
        }
    }
    let after = state(&dc1).await?;
    ensure!(
        before == after,
        "refused writes changed the agent:\n{before}\n{after}"
    );
    let denied = metric(&dc1, "meridian_http_acl_denied_total").await?;
    ensure!(
        denied >= f64::from(refused),
        "{refused} refusals, {denied} counted"
    );

    // The right scopes do what the wrong ones could not.
    for (method, path, body, token) in [
        (
            Method::PUT,
            "/v1/agent/service/register",
            Some(&web2),
            WRITE_WEB,
        ),
        (
            Method::PUT,
            "/v1/agent/check/update/web-ttl",
            Some(&critical),
            WRITE_WEB,
        ),
        (Method::PUT, "/v1/agent/check/fail/db-ttl", None, OPERATOR),
        (Method::PUT, "/v1/operator/drain", None, OPERATOR),
        (Method::DELETE, "/v1/operator/drain", None, OPERATOR),
        (Method::DELETE, query_path.as_str(), None, OPERATOR),
    ] {
        let (code, text) = send(&dc1, &method, path, body, Some(token)).await?;
        ensure!(code == 200, "{method} {path}: {code} {text}");
    }
    let ids = dc1.instance_ids("web").await?;
    ensure!(
        ids.contains(&"web-2".to_owned()),
        "web-2 registered: {ids:?}"
    );

    // Reads need a token too (anonymous reads are off here), in any of Consul's three forms.
    let (code, _) = send(&dc1, &Method::GET, "/v1/catalog/services", None, None).await?;
    ensure!(code == 403, "an anonymous read: {code}");
    let plain = reqwest::Client::new();
    let bearer = plain
        .get(dc1.url("/v1/catalog/services"))
        .bearer_auth(READ)
        .send()
        .await?;
    ensure!(bearer.status() == 200, "Bearer: {}", bearer.status());
    let query = plain
        .get(dc1.url(&format!("/v1/catalog/services?token={READ}")))
        .send()
        .await?;
    ensure!(query.status() == 200, "?token=: {}", query.status());

    let log = dc1.log_text();
    for secret in [READ, WRITE_WEB, OPERATOR, TEST_TOKEN] {
        ensure!(!log.contains(secret), "a secret is in the log");
    }
    Ok(())
}

/// A 3-server DC config (`n1`..`n3`) for `node`, with its certificate and CA files.
fn dc1_node_config(
    dir: &Path,
    node: usize,
    ports: &[Ports],
    ca: &Path,
    cert: &Path,
) -> AgentConfig {
    let key = cert.with_file_name(
        cert.file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.replace(".pem", "-key.pem"))
            .unwrap_or_default(),
    );
    let name = format!("n{node}");
    let mut c = AgentConfig::new("dc1", &name, ports[node - 1], &dir.join(&name));
    c.node_id = node as u64;
    c.raft = quick_raft();
    c.insecure = false;
    c.servers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| Server {
            id: i as u64 + 1,
            rpc: format!("127.0.0.1:{}", p.rpc),
        })
        .collect();
    c.federation = Some(Federation::with_certs(ca, cert, &key));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_node_can_neither_join_raft_nor_inject_an_entry() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (certs, rogue) = (dir.path().join("certs"), dir.path().join("rogue"));
    make_certs(&certs, &[("dc1", "n1"), ("dc1", "n2"), ("dc2", "n1")])?;
    make_role_cert(&certs, "dc1", "g1", "gateway")?;
    // The rogue has its own CA (its certificate is "self-signed" as far as dc1 is concerned)
    // but trusts dc1's CA too, so only dc1's side of each handshake can stop it.
    make_certs(&rogue, &[("dc1", "n3")])?;
    let bundle = rogue.join("bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(rogue.join("meridian-ca.pem"))?
            + &std::fs::read_to_string(certs.join("meridian-ca.pem"))?,
    )?;
    let ports: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
    let mut nodes = Vec::new();
    for (node, ca, cert) in [
        (1, certs.join("meridian-ca.pem"), certs.join("dc1-n1.pem")),
        (2, certs.join("meridian-ca.pem"), certs.join("dc1-n2.pem")),
        (3, bundle.clone(), rogue.join("dc1-n3.pem")),
    ] {
        let config = dc1_node_config(dir.path(), node, &ports, &ca, &cert);
        nodes.push(Agent::start(&format!("n{node}"), &config, dir.path(), &[])?);
    }
    for n in &mut nodes[..2] {
        n.wait_ready().await?;
    }
    // n1 and n2 form the group over mutual TLS and replicate writes.
    let r = nodes[0]
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "web-1", "Name": "web", "Port": 80}),
        )
        .await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);
    eventually(30, "n2 replicates web-1", || async {
        nodes[1]
            .instance_ids("web")
            .await
            .is_ok_and(|ids| ids == ["web-1"])
    })
    .await?;

    // The rogue n3 never hears from the leader: the leader cannot verify it as a server of dc1
    // (its client certificate is refused), nor can it vote.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader: Value = nodes[2].get_json("/v1/status/leader").await?;
    ensure!(leader == "", "the rogue node learned a leader: {leader}");
    ensure!(
        nodes[2].instance_ids("web").await?.is_empty(),
        "the rogue node received entries"
    );
    // Injecting a write by hand into the leader: in plain text, with the rogue's certificate,
    // and with a certificate of the right CA for another DC. None reaches the catalog.
    let leader: Value = nodes[0].get_json("/v1/status/leader").await?;
    let n1_rpc = leader.as_str().context("leader address")?.to_owned();
    ensure!(
        n1_rpc != format!("127.0.0.1:{}", ports[2].rpc),
        "the rogue node leads"
    );
    let forward = |service: &str| -> Result<ForwardRequest> {
        let command = meridian_catalog::Command::Register {
            instance: meridian_topology::Instance {
                id: format!("{service}-1"),
                service: service.into(),
                node: "n1".into(),
                address: "203.0.113.1".into(),
                port: 1,
                tags: vec![],
                meta: Default::default(),
                weights: Default::default(),
                create_index: 0,
                modify_index: 0,
                proxy: None,
            },
            checks: vec![],
        };
        Ok(ForwardRequest {
            command: serde_json::to_vec(&command)?,
        })
    };
    let inject = forward("evil")?;
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{n1_rpc}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = CatalogClient::new(ch).forward(inject.clone()).await;
        ensure!(r.is_err(), "a plain-text forward was answered: {r:?}");
    }
    let read = |p: &Path| std::fs::read_to_string(p);
    let rogue_tls = TlsMaterial::from_pem(
        &read(&bundle)?,
        &read(&rogue.join("dc1-n3.pem"))?,
        &read(&rogue.join("dc1-n3-key.pem"))?,
    )?;
    let member = TlsMaterial::from_pem(
        &read(&certs.join("meridian-ca.pem"))?,
        &read(&certs.join("dc1-n2.pem"))?,
        &read(&certs.join("dc1-n2-key.pem"))?,
    )?;
    let other_dc = TlsMaterial::from_pem(
        &read(&certs.join("meridian-ca.pem"))?,
        &read(&certs.join("dc2-n1.pem"))?,
        &read(&certs.join("dc2-n1-key.pem"))?,
    )?;
    let gateway = TlsMaterial::from_pem(
        &read(&certs.join("meridian-ca.pem"))?,
        &read(&certs.join("dc1-g1.pem"))?,
        &read(&certs.join("dc1-g1-key.pem"))?,
    )?;
    for (who, tls) in [
        ("rogue CA", rogue_tls),
        ("dc2's certificate", other_dc),
        ("dc1's gateway certificate", gateway),
    ] {
        let ch = meridian_federation::client::channel_from(
            tls.client_config()?,
            &n1_rpc,
            "dc1",
            Duration::from_secs(2),
            None,
        )
        .await;
        if let Ok(ch) = ch {
            let r = CatalogClient::new(ch).forward(inject.clone()).await;
            ensure!(r.is_err(), "{who}: the forward was answered: {r:?}");
        }
    }
    // The same request with a member's certificate is applied: the refusals above are the
    // certificates', not the request's.
    let ch = meridian_federation::client::channel_from(
        member.client_config()?,
        &n1_rpc,
        "dc1",
        Duration::from_secs(2),
        None,
    )
    .await?;
    CatalogClient::new(ch).forward(forward("good")?).await?;
    eventually(30, "the member's write is applied", || async {
        nodes[0]
            .instance_ids("good")
            .await
            .is_ok_and(|ids| !ids.is_empty())
    })
    .await?;
    for n in &nodes[..2] {
        ensure!(
            n.instance_ids("evil").await?.is_empty(),
            "{}: an injected entry was applied",
            n.name
        );
    }
    let refused = metric(&nodes[0], "meridian_rpc_tls_refused_total").await?
        + metric(&nodes[1], "meridian_rpc_tls_refused_total").await?;
    ensure!(refused >= 3.0, "refused handshakes are counted: {refused}");

    // A server given a gateway certificate does not start, and says what to do instead.
    let spare: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
    let config = dc1_node_config(
        &dir.path().join("wrong-role"),
        1,
        &spare,
        &certs.join("meridian-ca.pem"),
        &certs.join("dc1-g1.pem"),
    );
    let mut wrong = Agent::start("wrong-role", &config, dir.path(), &[])?;
    eventually(30, "a server on a gateway certificate exits", || {
        let running = wrong.is_running();
        async move { !running }
    })
    .await?;
    let log = wrong.log_text();
    ensure!(
        log.contains("a server needs a server certificate") && log.contains("--role server"),
        "the refusal says why: {log}"
    );
    Ok(())
}

/// A ClientHello naming `sni` byte for byte, whatever it is (rustls will not put an IP literal
/// in SNI; an attacker will).
pub(crate) fn raw_client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let len16 = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes();
    let mut sni_ext = Vec::new();
    sni_ext.extend_from_slice(&len16(name.len() + 3));
    sni_ext.push(0);
    sni_ext.extend_from_slice(&len16(name.len()));
    sni_ext.extend_from_slice(name);
    let mut exts = vec![0, 0];
    exts.extend_from_slice(&len16(sni_ext.len()));
    exts.extend_from_slice(&sni_ext);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&len16(exts.len()));
    body.extend_from_slice(&exts);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&len16(body.len()));
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&len16(hs.len()));
    rec.extend_from_slice(&hs);
    rec
}

/// Sends a ClientHello for `sni` to the gateway and returns what came back before the close.
async fn hello(agent: &Agent, sni: &str) -> Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", agent.ports.gateway)).await?;
    s.write_all(&raw_client_hello(sni)).await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .context("the gateway kept the connection open")??;
    Ok(got)
}

async fn gateway_outcome(agent: &Agent, outcome: &str) -> Result<f64> {
    Ok(metric(
        agent,
        &format!("meridian_gateway_connections_total{{route=\"none\",outcome=\"{outcome}\"}}"),
    )
    .await
    .unwrap_or(0.0))
}

/// One connection causes at most one backend connection, whatever its SNI: Meridian's own
/// services are refused, and so is a service registered at the gateway's own address (it would
/// replay the ClientHello to itself, again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_never_loops_the_gateway() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1")])?;
    let mut dc1 = config_dc(dir.path(), &certs, "dc1", &[], |_| {})?;
    dc1.wait_ready().await?;
    eventually(30, "the gateway registers itself", || async {
        dc1.instance_ids("meridian-gateway")
            .await
            .is_ok_and(|ids| !ids.is_empty())
    })
    .await?;
    let gw = dc1.ports.gateway;
    for (id, address) in [("loop", "127.0.0.1"), ("loop-2", "127.0.0.2")] {
        let r = dc1
            .put_json(
                "/v1/agent/service/register",
                &json!({"ID": id, "Name": id, "Address": address, "Port": gw}),
            )
            .await?;
        ensure!(
            r.status().is_success(),
            "register {id}: {}",
            r.text().await?
        );
    }
    eventually(30, "the loops are in the view", || async {
        dc1.instance_ids("loop-2")
            .await
            .is_ok_and(|ids| !ids.is_empty())
    })
    .await?;
    let internal = [
        "meridian-gateway.service.consul",
        "meridian-gateway.service.dc1.consul",
        "tunnel.meridian-gateway.service.consul",
        "meridian-drain.service.consul",
    ];
    let own = [
        "loop.service.consul",
        "loop.service.dc1.consul",
        "loop-2.service.consul",
    ];
    for sni in internal.iter().chain(&own) {
        let got = hello(&dc1, sni).await?;
        ensure!(got.len() <= 7, "SNI {sni:?}: answered {} bytes", got.len());
    }
    let text = dc1.metrics().await?;
    let total = meridian_testkit::metrics::sum(&text, "meridian_gateway_connections_total{");
    ensure!(
        total == (internal.len() + own.len()) as f64,
        "each connection is counted once, none relayed to the gateway itself: {total}\n{text}"
    );
    let value = |key: &str| meridian_testkit::metrics::value(&text, key).unwrap_or(0.0);
    ensure!(
        value("meridian_gateway_connections_total{route=\"none\",outcome=\"internal\"}")
            == internal.len() as f64,
        "internal names are refused and counted:\n{text}"
    );
    ensure!(
        value("meridian_gateway_connections_total{route=\"local\",outcome=\"self_route\"}")
            == own.len() as f64,
        "the gateway's own address is refused and counted:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_no_open_relay() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1")])?;
    let mut dc1 = config_dc(dir.path(), &certs, "dc1", &[], |_| {})?;
    dc1.wait_ready().await?;
    // An HTTP API a relay would love to reach, registered as nothing.
    let http = dc1.ports.http;
    let unrecognized_name = vec![21, 3, 3, 0, 2, 2, 112];
    for sni in [
        "evil.example.com".to_owned(),
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{http}"),
        "::1".to_owned(),
        "web.service.consul.evil.example".to_owned(),
        "n1.node.consul".to_owned(),
    ] {
        let got = hello(&dc1, &sni).await?;
        ensure!(
            got == unrecognized_name,
            "SNI {sni:?}: the gateway answered {got:?} instead of refusing the name"
        );
    }
    let refused = gateway_outcome(&dc1, "not_ours").await?
        + gateway_outcome(&dc1, "invalid_sni").await?
        + gateway_outcome(&dc1, "not_a_service").await?;
    ensure!(refused >= 6.0, "refusals counted: {refused}");
    // A name in the domain is routed (to nothing here): the refusals above are about the name.
    let got = hello(&dc1, "web.service.consul").await?;
    ensure!(got == vec![21, 3, 3, 0, 2, 2, 80], "web: {got:?}");
    Ok(())
}

/// A reload (`PUT /v1/agent/reload`) applies the file's tokens at once, and refuses a file that
/// changes what needs a restart, naming the key and changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_tokens_and_refuses_what_needs_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = AgentConfig::new("dc1", "n1", Ports::free(), &dir.path().join("data"));
    let mut agent = Agent::start("n1", &c, dir.path(), &[])?;
    agent.wait_ready().await?;
    let file = dir.path().join("n1.toml");
    let reload = |agent: &Agent| {
        let request = agent.http.put(agent.url("/v1/agent/reload"));
        async move {
            let r = request.send().await?;
            anyhow::Ok((r.status().as_u16(), r.text().await?))
        }
    };
    let register_with = |agent: &Agent, token: &str| {
        let request = reqwest::Client::new()
            .put(agent.url("/v1/agent/service/register"))
            .header("X-Consul-Token", token)
            .json(&json!({"ID": "web-1", "Name": "web", "Port": 80}));
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    const DEPLOYER: &str = "reloaded-deployer-secret";
    ensure!(register_with(&agent, DEPLOYER).await? == 403);

    let mut acl = Acl::management(TEST_TOKEN);
    acl.tokens.push(AclToken {
        description: "deployer of web".into(),
        secret: DEPLOYER.into(),
        scope: "write".into(),
        services: vec!["web".into()],
    });
    c.acl = Some(acl);
    c.write(&file)?;
    let (status, body) = reload(&agent).await?;
    ensure!(status == 200 && body.contains("acl"), "{status} {body}");
    ensure!(
        register_with(&agent, DEPLOYER).await? == 200,
        "the new token"
    );

    // A new HTTP port needs a restart: the whole file is refused, the token removal with it.
    let mut moved = c.clone();
    moved.ports.http = crate::harness::free_port();
    moved.acl = Some(Acl::management(TEST_TOKEN));
    moved.write(&file)?;
    let (status, body) = reload(&agent).await?;
    ensure!(
        status == 400 && body.contains("ports.http") && body.contains("restart"),
        "{status} {body}"
    );
    ensure!(
        register_with(&agent, DEPLOYER).await? == 200,
        "a refused file changed the tokens"
    );

    // A bad log filter refuses the whole file too.
    let mut bad = c.clone();
    bad.set("", "log_level", "info,=[");
    bad.write(&file)?;
    let (status, body) = reload(&agent).await?;
    ensure!(
        status == 400 && body.contains("log_level"),
        "{status} {body}"
    );

    // The token removed, a smaller body cap, a log level and failover timings: applied.
    let mut removed = c.clone();
    removed.acl = Some(Acl::management(TEST_TOKEN));
    removed
        .set("limits", "max_body_bytes", 1024)
        .set("", "log_level", "info,meridian_node=debug")
        .set("failover", "down_after_ms", 2500);
    removed.write(&file)?;
    let (status, body) = reload(&agent).await?;
    ensure!(
        status == 200
            && ["acl", "limits", "log_level", "failover"]
                .iter()
                .all(|k| body.contains(k)),
        "{status} {body}"
    );
    ensure!(
        register_with(&agent, DEPLOYER).await? == 403,
        "a removed token"
    );
    let big = json!({"ID": "big", "Name": "web", "Port": 80, "Meta": {"m": "x".repeat(2000)}});
    let r = agent.put_json("/v1/agent/service/register", &big).await?;
    ensure!(
        r.status() == 413,
        "a 2 KB body after the cap went to 1 KiB: {}",
        r.status()
    );
    ensure!(agent.is_running());
    Ok(())
}
