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
