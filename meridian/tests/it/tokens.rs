//! ACL tokens created at run time, between three federated datacenters of real processes: a
//! token created in dc2 authorizes writes in dc1, within its scope; changed in dc3 and deleted in
//! dc1, it follows the last write everywhere; its secret is in the create's answer and nowhere
//! else (no other answer, no log, even at debug level).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meridian_testkit::agent::Launch;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::federation::{all_know, dc_config, make_certs};
use crate::harness::{Agent, Ports, eventually};
use meridian_testkit::config::TEST_TOKEN;

/// A one-node DC following `peers`, its meridian crates logging at debug level.
fn start_dc(dir: &Path, certs: &Path, dc: &str, peers: &[(&str, u16)]) -> Result<Agent> {
    let mut c = dc_config(dir, certs, dc, Ports::free(), peers);
    // Records outranked elsewhere are pruned within a fifth of a second, not a minute.
    c.set("acl", "token_prune_interval_ms", 200);
    let launch = Launch {
        env: vec![(
            "RUST_LOG".into(),
            "debug,openraft=info,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,tonic=info,quinn=info,reqwest=info"
                .into(),
        )],
        ..Launch::default()
    };
    Agent::launch(dc, &c, dir, &[], &launch)
}

/// Sends `method path` with `token` (none: no token), returns the status and the body.
async fn call(
    agent: &Agent,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(StatusCode, String)> {
    let mut r = reqwest::Client::new().request(method, agent.url(path));
    if let Some(t) = token {
        r = r.header("X-Consul-Token", t);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.timeout(Duration::from_secs(10)).send().await?;
    let status = r.status();
    Ok((status, r.text().await?))
}

async fn register(agent: &Agent, token: &str, service: &str) -> Result<StatusCode> {
    let body = json!({"ID": format!("{service}-1"), "Name": service, "Port": 80});
    let (status, _) = call(
        agent,
        reqwest::Method::PUT,
        "/v1/agent/service/register",
        Some(token),
        Some(&body),
    )
    .await?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_in_one_dc_works_in_every_dc_until_deleted_in_another() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1"), ("dc3", "n1")])?;
    let mut dc1 = start_dc(dir.path(), &certs, "dc1", &[])?;
    dc1.wait_ready().await?;
    let wan1 = dc1.ports.wan;
    let mut dc2 = start_dc(dir.path(), &certs, "dc2", &[("dc1", wan1)])?;
    let mut dc3 = start_dc(dir.path(), &certs, "dc3", &[("dc1", wan1)])?;
    dc2.wait_ready().await?;
    dc3.wait_ready().await?;
    let all = [&dc1, &dc2, &dc3];
    all_know(&all, 3).await?;

    ensure!(
        register(&dc1, "not-a-token-of-any-dc-0123", "web").await? == StatusCode::FORBIDDEN,
        "an unknown secret is refused"
    );

    // Created in dc2 with the management token of the file.
    let (status, body) = call(
        &dc2,
        reqwest::Method::PUT,
        "/v1/acl/token",
        Some(TEST_TOKEN),
        Some(&json!({"Description": "web deployer", "Scope": "write", "Services": ["web"]})),
    )
    .await?;
    ensure!(status == StatusCode::OK, "create: {status} {body}");
    let created: Value = serde_json::from_str(&body)?;
    let secret = created["SecretID"].as_str().context("SecretID")?.to_owned();
    let accessor = created["AccessorID"]
        .as_str()
        .context("AccessorID")?
        .to_owned();
    ensure!(secret.len() >= 32 && accessor != secret, "{created}");
    ensure!(created["Datacenter"] == "dc2" && created["Scope"] == "write");
    let created_at = Instant::now();

    // It authorizes a write of its service in dc1, once federation has carried it.
    let mut replicated = None;
    while created_at.elapsed() < Duration::from_secs(30) {
        if register(&dc1, &secret, "web").await? == StatusCode::OK {
            replicated = Some(created_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replicated = replicated.context("the token never worked in dc1")?;
    eprintln!("token created in dc2 authorized a write in dc1 after {replicated:?}");
    ensure!(
        register(&dc1, &secret, "db").await? == StatusCode::FORBIDDEN,
        "only within its scope"
    );
    ensure!(
        register(&dc2, &secret, "web").await? == StatusCode::OK,
        "and in its own DC"
    );

    // Reads show it without its secret, in every DC; a token reads itself.
    for agent in all {
        let path = format!("/v1/acl/token/{accessor}");
        eventually(30, "the token readable", || async {
            call(agent, reqwest::Method::GET, &path, Some(TEST_TOKEN), None)
                .await
                .is_ok_and(|(s, _)| s == StatusCode::OK)
        })
        .await
        .with_context(|| format!("in {}", agent.name))?;
        for (path, token) in [
            (path.as_str(), TEST_TOKEN),
            ("/v1/acl/tokens", TEST_TOKEN),
            ("/v1/acl/token/self", secret.as_str()),
        ] {
            let (status, body) = call(agent, reqwest::Method::GET, path, Some(token), None).await?;
            ensure!(status == StatusCode::OK, "{path}: {status} {body}");
            ensure!(body.contains(&accessor), "{path}: {body}");
            ensure!(!body.contains(&secret), "{path} shows the secret: {body}");
            ensure!(body.contains("<hidden>"), "{path}: {body}");
        }
    }
    // A write token may neither list nor make tokens; no token may not read itself.
    for (method, path) in [
        (reqwest::Method::GET, "/v1/acl/tokens"),
        (reqwest::Method::PUT, "/v1/acl/token"),
    ] {
        let body = json!({"Scope": "management"});
        let (status, _) = call(&dc1, method, path, Some(&secret), Some(&body)).await?;
        ensure!(status == StatusCode::FORBIDDEN, "{path}: {status}");
    }
    let (status, _) = call(&dc1, reqwest::Method::GET, "/v1/acl/token/self", None, None).await?;
    ensure!(
        status == StatusCode::FORBIDDEN,
        "self without a token: {status}"
    );

    // Changed in dc3: the later write holds in dc1 too.
    let (status, body) = call(
        &dc3,
        reqwest::Method::PUT,
        &format!("/v1/acl/token/{accessor}"),
        Some(TEST_TOKEN),
        Some(&json!({"Description": "web and api deployer", "Scope": "write", "Services": ["web", "api"]})),
    )
    .await?;
    ensure!(status == StatusCode::OK, "update: {status} {body}");
    ensure!(
        !body.contains(&secret),
        "the update's answer shows the secret"
    );
    eventually(30, "the change in force in dc1", || async {
        register(&dc1, &secret, "api")
            .await
            .is_ok_and(|s| s == StatusCode::OK)
    })
    .await?;
    // dc2's record is outranked by dc3's: pruned, and the token lives on in dc3's.
    eventually(30, "dc2's outranked record pruned", || async {
        dc2.metric("meridian_acl_token_records")
            .await
            .is_ok_and(|n| n == 0.0)
    })
    .await?;
    ensure!(register(&dc1, &secret, "web").await? == StatusCode::OK);

    // Deleted in dc1: refused everywhere.
    let (status, body) = call(
        &dc1,
        reqwest::Method::DELETE,
        &format!("/v1/acl/token/{accessor}"),
        Some(TEST_TOKEN),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK && body.trim() == "true",
        "delete: {status} {body}"
    );
    let deleted_at = Instant::now();
    for agent in all {
        eventually(30, "the token refused", || async {
            register(agent, &secret, "web")
                .await
                .is_ok_and(|s| s == StatusCode::FORBIDDEN)
        })
        .await
        .with_context(|| format!("in {}", agent.name))?;
        let (status, _) = call(
            agent,
            reqwest::Method::GET,
            &format!("/v1/acl/token/{accessor}"),
            Some(TEST_TOKEN),
            None,
        )
        .await?;
        ensure!(
            status == StatusCode::NOT_FOUND,
            "{}: read after delete {status}",
            agent.name
        );
    }
    eprintln!(
        "deleted in dc1, refused in every DC after {:?}",
        deleted_at.elapsed()
    );

    // A deleted token cannot be changed back to life from a DC that still held it.
    let (status, _) = call(
        &dc2,
        reqwest::Method::PUT,
        &format!("/v1/acl/token/{accessor}"),
        Some(TEST_TOKEN),
        Some(&json!({"Scope": "management"})),
    )
    .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "update after delete: {status}"
    );

    // The secret is in no log, though every node logged at debug level.
    for agent in all {
        let log = agent.log_text();
        ensure!(
            log.contains(&accessor),
            "{}: the log names the token",
            agent.name
        );
        ensure!(
            !log.contains(&secret),
            "{}: the secret is in the log",
            agent.name
        );
    }
    Ok(())
}
