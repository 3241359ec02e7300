//! Health checks run by the registering node, visible in the health API.

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::harness::{Agent, eventually};

async fn passing_ids(agent: &Agent, service: &str) -> Vec<String> {
    agent
        .get_json(&format!("/v1/health/service/{service}?passing"))
        .await
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_ttl_checks_drive_health() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agent = crate::harness::dev("dev", &dir.path().join("data"), dir.path(), &[])?;
    agent.wait_ready().await?;

    // TCP: passing while something listens, critical once it stops.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let body = json!({
        "ID": "db-1", "Name": "db", "Port": port,
        "Check": { "TCP": format!("127.0.0.1:{port}"), "Interval": "200ms", "Timeout": "1s" }
    });
    let r = agent.put_json("/v1/agent/service/register", &body).await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);
    let health = agent.get_json("/v1/health/service/db").await?;
    ensure!(
        health[0]["Checks"][0]["CheckID"] == "service:db-1",
        "{health}"
    );
    eventually(30, "the TCP check to pass", || async {
        passing_ids(&agent, "db").await == ["db-1"]
    })
    .await?;
    drop(listener);
    eventually(30, "the TCP check to fail", || async {
        passing_ids(&agent, "db").await.is_empty()
    })
    .await?;
    let health = agent.get_json("/v1/health/service/db").await?;
    ensure!(health[0]["Checks"][0]["Status"] == "critical", "{health}");

    // TTL: critical until told otherwise, passing on /pass, critical again when it lapses.
    let body = json!({ "ID": "job-1", "Name": "job", "Port": 1, "Check": { "TTL": "2s" } });
    let r = agent.put_json("/v1/agent/service/register", &body).await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);
    ensure!(
        passing_ids(&agent, "job").await.is_empty(),
        "a new TTL check starts critical"
    );
    let r = agent
        .http
        .put(agent.url("/v1/agent/check/pass/service:job-1?note=alive"))
        .send()
        .await?;
    ensure!(r.status().is_success(), "pass: {}", r.status());
    let health: Value = agent.get_json("/v1/health/service/job").await?;
    ensure!(health[0]["Checks"][0]["Status"] == "passing", "{health}");
    ensure!(health[0]["Checks"][0]["Output"] == "alive", "{health}");
    eventually(30, "the TTL to lapse", || async {
        passing_ids(&agent, "job").await.is_empty()
    })
    .await?;
    let r = agent
        .http
        .put(agent.url("/v1/agent/check/warn/service:job-1"))
        .send()
        .await?;
    ensure!(r.status().is_success());
    let health: Value = agent.get_json("/v1/health/service/job").await?;
    ensure!(health[0]["Checks"][0]["Status"] == "warning", "{health}");
    Ok(())
}

/// The output of service `service`'s first check, once it reads `want`-ish (contains it).
async fn check_output(agent: &Agent, service: &str, want: &str) -> Result<String> {
    let mut last = String::new();
    for _ in 0..150 {
        let health = agent
            .get_json(&format!("/v1/health/service/{service}"))
            .await?;
        last = health[0]["Checks"][0]["Output"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if last.contains(want) {
            return Ok(last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("{service}: the check's output never contained {want:?}: {last:?}")
}

/// An HTTP check is written by a writer and read by every reader, so it is no way to fetch what
/// the writer cannot: cloud metadata (link-local) and the node's own API are refused before any
/// connection, and a reachable service's body is not kept, only its status line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_cannot_fetch_metadata_or_the_nodes_own_api() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agent = crate::harness::dev("dev", &dir.path().join("data"), dir.path(), &[])?;
    agent.wait_ready().await?;
    // A service that answers with a secret body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nsecret-body")
                .await;
        }
    });
    let http = agent.ports.http;
    // Each starts in the status it will leave, so that its first result is a change and is
    // written with its output (an unchanged status writes nothing).
    for (name, url, initial) in [
        (
            "meta",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "passing",
        ),
        (
            "own",
            format!("http://127.0.0.1:{http}/v1/agent/self"),
            "passing",
        ),
        ("web", format!("http://localhost:{port}/health"), "critical"),
    ] {
        let body = json!({
            "ID": format!("{name}-1"), "Name": name, "Port": 80,
            "Check": { "HTTP": url, "Interval": "200ms", "Timeout": "1s", "Status": initial }
        });
        let r = agent.put_json("/v1/agent/service/register", &body).await?;
        ensure!(
            r.status().is_success(),
            "register {name}: {}",
            r.text().await?
        );
    }
    let meta = check_output(&agent, "meta", "refused").await?;
    ensure!(meta.contains("link-local"), "{meta}");
    let own = check_output(&agent, "own", "refused").await?;
    ensure!(own.contains("own HTTP API"), "{own}");
    let web = check_output(&agent, "web", "200").await?;
    ensure!(!web.contains("secret-body"), "the body is not kept: {web}");
    ensure!(
        passing_ids(&agent, "web").await == ["web-1"]
            && passing_ids(&agent, "meta").await.is_empty(),
        "health follows"
    );
    Ok(())
}
