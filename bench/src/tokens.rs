//! `tokens`: how long an ACL token created through the API in one datacenter takes to authorize
//! a request in another, and how long a delete made in a third takes to be refused there. Three
//! one-node DCs of real processes (default Raft timings, fsync, mutual TLS between DCs, ACLs on),
//! dc2 and dc3 joined to dc1; `background` tokens exist before the rounds start, so every
//! change is decided among that many.
//!
//! Each round: `PUT /v1/acl/token` in dc2, then `GET /v1/acl/token/self` with the new secret in
//! dc1 every millisecond until it answers 200; once dc3 holds it too, `DELETE` in dc3, then the
//! same read in dc1 until it answers 403. Times run from the write's acknowledgement.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meridian_testkit::certs::Pki;
use meridian_testkit::config::{Federation, Peer, TEST_TOKEN};
use meridian_testkit::stats::{median, percentile};
use meridian_testkit::{Agent, AgentConfig, Ports};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{machine, today};

/// How long one round waits for a change to reach dc1 before the benchmark fails.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct TokensReport {
    benchmark: &'static str,
    date: String,
    machine: String,
    rounds: usize,
    background_tokens: usize,
    /// Create in dc2 acknowledged → usable in dc1, per round (ms).
    create_ms: Vec<f64>,
    /// Delete in dc3 acknowledged → refused in dc1, per round (ms).
    delete_ms: Vec<f64>,
    /// How long `PUT /v1/acl/token` took to be acknowledged in dc2, per round (ms).
    write_ms: Vec<f64>,
}

/// Runs `rounds` rounds after creating `background` tokens; writes `tokens.json` and
/// `tokens.md`.
pub async fn run(bin: &Path, out: &Path, rounds: usize, background: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(&dir.path().join("certs"))?;
    let config = |dc: &str, peers: &[(&str, u16)]| -> Result<AgentConfig> {
        let mut c = AgentConfig::new(dc, "n1", Ports::free(), &dir.path().join(dc));
        let f = pki.node_files(dc, "n1", &[])?;
        c.insecure = false;
        c.federation = Some(Federation {
            peers: peers
                .iter()
                .map(|(peer, port)| Peer::on_loopback(peer, *port))
                .collect(),
            ..Federation::with_certs(&f.ca, &f.cert, &f.key)
        });
        Ok(c)
    };
    let c1 = config("dc1", &[])?;
    let mut dc1 = crate::procs::configured_agent("dc1", bin, &c1, dir.path(), &[], None)?;
    dc1.wait_ready().await?;
    let wan1 = c1.ports.wan;
    let mut dc2 = crate::procs::configured_agent(
        "dc2",
        bin,
        &config("dc2", &[("dc1", wan1)])?,
        dir.path(),
        &[],
        None,
    )?;
    let mut dc3 = crate::procs::configured_agent(
        "dc3",
        bin,
        &config("dc3", &[("dc1", wan1)])?,
        dir.path(),
        &[],
        None,
    )?;
    dc2.wait_ready().await?;
    dc3.wait_ready().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    for agent in [&dc1, &dc2, &dc3] {
        let start = Instant::now();
        loop {
            let dcs = get(&http, agent, "/v1/catalog/datacenters", TEST_TOKEN).await?;
            if dcs.1.as_array().is_some_and(|a| a.len() == 3) {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "{} never knew every DC",
                agent.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Background tokens, spread over the three DCs.
    let started = Instant::now();
    for i in 0..background {
        let at = [&dc1, &dc2, &dc3][i % 3];
        create(&http, at, &format!("background {i}")).await?;
    }
    if background > 0 {
        eprintln!(
            "tokens: {background} background tokens created in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    let (mut create_ms, mut delete_ms, mut write_ms) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let t0 = Instant::now();
        let (accessor, secret) = create(&http, &dc2, &format!("round {round}")).await?;
        let acked = Instant::now();
        write_ms.push(ms(acked - t0));
        wait_self(&http, &dc1, &secret, StatusCode::OK).await?;
        create_ms.push(ms(acked.elapsed()));
        // dc3 deletes what it holds: wait for the token to reach it too.
        let path = format!("/v1/acl/token/{accessor}");
        let start = Instant::now();
        while get(&http, &dc3, &path, TEST_TOKEN).await?.0 != StatusCode::OK {
            ensure!(start.elapsed() < ROUND_LIMIT, "the token never reached dc3");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let r = http
            .delete(dc3.url(&format!("/v1/acl/token/{accessor}")))
            .header("X-Consul-Token", TEST_TOKEN)
            .send()
            .await?;
        ensure!(r.status() == StatusCode::OK, "delete: {}", r.status());
        let deleted = Instant::now();
        wait_self(&http, &dc1, &secret, StatusCode::FORBIDDEN).await?;
        delete_ms.push(ms(deleted.elapsed()));
    }
    let line = |what: &str, v: &[f64]| {
        format!(
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms |",
            median(v),
            percentile(v, 99.0),
            v.iter().copied().fold(0.0, f64::max)
        )
    };
    let mut md = format!(
        "ACL tokens across three federated one-node DCs (default Raft timings, fsync, mutual TLS \
         between DCs), {background} tokens already in force, {rounds} rounds:\n\n\
         | from the acknowledgement of | median | p99 | max |\n|---|---|---|---|\n"
    );
    writeln!(
        md,
        "{}",
        line("the create in dc2 (its own time)", &write_ms)
    )?;
    writeln!(
        md,
        "{}",
        line("a create in dc2 → usable in dc1", &create_ms)
    )?;
    writeln!(
        md,
        "{}",
        line("a delete in dc3 → refused in dc1", &delete_ms)
    )?;
    eprint!("{md}");
    let report = TokensReport {
        benchmark: "tokens",
        date: today(),
        machine: machine(),
        rounds,
        background_tokens: background,
        create_ms,
        delete_ms,
        write_ms,
    };
    crate::tools::write_report(out, "tokens", &report, &md)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn get(
    http: &reqwest::Client,
    agent: &Agent,
    path: &str,
    token: &str,
) -> Result<(StatusCode, Value)> {
    let r = http
        .get(agent.url(path))
        .header("X-Consul-Token", token)
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Creates a write token in `agent`'s DC; its accessor ID and secret.
async fn create(
    http: &reqwest::Client,
    agent: &Agent,
    description: &str,
) -> Result<(String, String)> {
    let r = http
        .put(agent.url("/v1/acl/token"))
        .header("X-Consul-Token", TEST_TOKEN)
        .json(&json!({"Description": description, "Scope": "write", "Services": ["web"]}))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    ensure!(
        status == StatusCode::OK,
        "create in {}: {status} {body}",
        agent.name
    );
    let field = |k: &str| -> Result<String> {
        Ok(body[k]
            .as_str()
            .with_context(|| format!("{k} in {body}"))?
            .to_owned())
    };
    Ok((field("AccessorID")?, field("SecretID")?))
}

/// Reads `/v1/acl/token/self` with `secret` in `agent` every millisecond until it answers `want`.
async fn wait_self(
    http: &reqwest::Client,
    agent: &Agent,
    secret: &str,
    want: StatusCode,
) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < ROUND_LIMIT {
        if get(http, agent, "/v1/acl/token/self", secret).await?.0 == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!(
        "{} did not answer {want} within {ROUND_LIMIT:?}",
        agent.name
    )
}
