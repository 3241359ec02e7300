//! The Consul-compatible HTTP API: shapes, blocking queries, and bad input that changes nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::harness::{Agent, service};

async fn dev_agent(dir: &std::path::Path) -> Result<Agent> {
    let mut agent = crate::harness::dev("dev", &dir.join("data"), dir, &[])?;
    agent.wait_ready().await?;
    Ok(agent)
}

fn index_of(r: &reqwest::Response) -> Result<u64> {
    r.headers()
        .get("X-Consul-Index")
        .context("X-Consul-Index header")?
        .to_str()?
        .parse()
        .context("numeric X-Consul-Index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_shapes_and_blocking_queries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dev_agent(dir.path()).await?;
    let mut body = service("web", "web-1", 8080);
    body["Tags"] = json!(["blue", "v2"]);
    body["Meta"] = json!({ "version": "2" });
    body["Weights"] = json!({ "Passing": 3, "Warning": 1 });
    let r = agent.put_json("/v1/agent/service/register", &body).await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);

    let services = agent.get_json("/v1/catalog/services").await?;
    ensure!(services["web"] == json!(["blue", "v2"]), "{services}");
    let entries = agent.get_json("/v1/catalog/service/web").await?;
    let e = &entries[0];
    ensure!(
        e["ServiceID"] == "web-1" && e["ServiceName"] == "web",
        "{e}"
    );
    ensure!(
        e["ServicePort"] == 8080 && e["ServiceAddress"] == "127.0.0.1",
        "{e}"
    );
    ensure!(
        e["Datacenter"] == "dc1" && e["ServiceMeta"]["version"] == "2",
        "{e}"
    );
    ensure!(e["ServiceWeights"]["Passing"] == 3, "{e}");
    let tagged = agent.get_json("/v1/catalog/service/web?tag=blue").await?;
    ensure!(tagged.as_array().map(Vec::len) == Some(1));
    let untagged = agent.get_json("/v1/catalog/service/web?tag=green").await?;
    ensure!(untagged.as_array().map(Vec::len) == Some(0));
    let health = agent.get_json("/v1/health/service/web?passing").await?;
    ensure!(health[0]["Service"]["ID"] == "web-1", "{health}");
    ensure!(health[0]["Node"]["Node"].is_string(), "{health}");
    let dcs = agent.get_json("/v1/catalog/datacenters").await?;
    ensure!(dcs == json!(["dc1"]), "{dcs}");
    let nodes = agent.get_json("/v1/catalog/nodes").await?;
    ensure!(nodes.as_array().is_some_and(|n| n.len() == 1), "{nodes}");
    let peers = agent.get_json("/v1/status/peers").await?;
    ensure!(
        peers == json!([format!("127.0.0.1:{}", agent.ports.rpc)]),
        "{peers}"
    );

    // A blocking query returns when the catalog changes, not when its wait runs out.
    let r = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .send()
        .await?;
    let index = index_of(&r)?;
    let url = agent.url(&format!("/v1/catalog/services?index={index}&wait=60s"));
    let http = agent.http.clone();
    let started = Instant::now();
    let blocked = tokio::spawn(async move { http.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !blocked.is_finished(),
        "a blocking query returned before any change"
    );
    let r = agent
        .put_json("/v1/agent/service/register", &service("api", "api-1", 9090))
        .await?;
    ensure!(r.status().is_success());
    let r = blocked.await??;
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "woke only at timeout"
    );
    ensure!(index_of(&r)? > index);
    let v: Value = r.json().await?;
    ensure!(v.get("api").is_some(), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dev_agent(dir.path()).await?;
    let r = agent
        .put_json("/v1/agent/service/register", &service("web", "web-1", 80))
        .await?;
    ensure!(r.status().is_success());
    let before = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .send()
        .await?;
    let index = index_of(&before)?;
    let services_before: Value = before.json().await?;

    let raw = |body: &'static str| (body.to_owned(), "malformed");
    let cases: Vec<(String, &str)> = vec![
        raw("{\"Name\": \"web\", "),
        raw("[1,2,3]"),
        raw("not json at all"),
        (
            json!({"Name": "web", "Port": 80, "Bogus": 1}).to_string(),
            "unknown field",
        ),
        (
            json!({"Name": "web_app", "Port": 80}).to_string(),
            "not a DNS label",
        ),
        (
            json!({"Name": "a.b", "Port": 80}).to_string(),
            "not a DNS label",
        ),
        (json!({"Name": "", "Port": 80}).to_string(), "empty name"),
        (
            json!({"Name": "web", "Port": 70000}).to_string(),
            "port out of range",
        ),
        (
            json!({"Name": "web", "Port": "x"}).to_string(),
            "port not a number",
        ),
        (json!({"Name": "web", "ID": "a/b"}).to_string(), "bad id"),
        (
            json!({"Name": "web", "Meta": {"bad key": "x"}}).to_string(),
            "bad meta",
        ),
        (
            json!({"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}).to_string(),
            "script check",
        ),
        (
            json!({"Name": "web", "Check": {"GRPC": "127.0.0.1:1", "Interval": "10s"}}).to_string(),
            "grpc check",
        ),
        (
            json!({"Name": "web", "Check": {"TCP": "127.0.0.1:1"}}).to_string(),
            "tcp check without interval",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "ten seconds"}}).to_string(),
            "bad duration",
        ),
        (
            json!({"Name": "web", "Check": {"TCP": "127.0.0.1:1", "TTL": "10s", "Interval": "1s"}})
                .to_string(),
            "two check types",
        ),
    ];
    for (body, why) in cases {
        let r = agent
            .http
            .put(agent.url("/v1/agent/service/register"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = r.status();
        let msg = r.text().await?;
        ensure!(status == 400, "{why}: {body} gave {status}: {msg}");
        ensure!(!msg.trim().is_empty(), "{why}: empty error message");
    }
    // Oversized body.
    let big = json!({"Name": "web", "Port": 80, "Meta": {"k": "x".repeat(4 * 1024 * 1024)}});
    let r = agent.put_json("/v1/agent/service/register", &big).await?;
    ensure!(r.status() == 413, "oversized body gave {}", r.status());
    // Oversized headers.
    let r = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .header("x-padding", "x".repeat(20 * 1024))
        .send()
        .await?;
    ensure!(r.status() == 431, "oversized headers gave {}", r.status());
    // Unknown things.
    let r = agent
        .http
        .put(agent.url("/v1/agent/service/deregister/nope"))
        .send()
        .await?;
    ensure!(r.status() == 404, "unknown deregister gave {}", r.status());
    let r = agent
        .http
        .put(agent.url("/v1/agent/check/pass/nope"))
        .send()
        .await?;
    ensure!(r.status() == 404, "unknown check gave {}", r.status());
    let r = agent
        .http
        .get(agent.url("/v1/agent/service/register"))
        .send()
        .await?;
    ensure!(
        r.status() == 405,
        "GET on a PUT endpoint gave {}",
        r.status()
    );
    let r = agent
        .http
        .get(agent.url("/v1/catalog/service/web?index=abc"))
        .send()
        .await?;
    ensure!(r.status() == 400, "bad index gave {}", r.status());

    let after = agent
        .http
        .get(agent.url("/v1/catalog/services"))
        .send()
        .await?;
    ensure!(index_of(&after)? == index, "the catalog index moved");
    let services_after: Value = after.json().await?;
    ensure!(
        services_after == services_before,
        "{services_after} != {services_before}"
    );
    ensure!(agent.instance_ids("web").await? == ["web-1"]);
    let metrics = agent.metrics().await?;
    ensure!(
        metrics.contains("meridian_http_bad_requests_total"),
        "{metrics}"
    );
    Ok(())
}
