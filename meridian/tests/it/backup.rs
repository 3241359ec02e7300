//! Backup and restore on real processes: a 3-node DC of 10,000 instances saved with `meridian
//! snapshot save`, every data folder wiped, the DC re-formed empty, the file restored with
//! `meridian snapshot restore`; every instance, check and prepared query comes back on every
//! server, and a federated DC converges to the restored state by digest.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, ensure};
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::federation::{converged, make_certs};
use crate::harness::{Agent, TEST_TOKEN, cli};
use meridian_testkit::config::Peer;

const INSTANCES: usize = 10_000;
const SERVICES: usize = 100;

/// Every instance with its checks, and every prepared query, as `agent` answers them, in a
/// form that compares entry by entry (indexes left out: a restore moves them forward).
async fn contents(agent: &Agent) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let paths: Vec<String> = (0..SERVICES)
        .map(|s| format!("/v1/health/service/svc-{s}"))
        .collect();
    let answers: Vec<Result<Value>> = futures::stream::iter(paths)
        .map(|p| async move { agent.get_json(&p).await })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut entries = BTreeSet::new();
    for answer in answers {
        for e in answer?.as_array().into_iter().flatten() {
            let s = &e["Service"];
            let checks: Vec<Value> = e["Checks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!([c["CheckID"], c["Status"], c["Output"], c["ServiceID"]]))
                .collect();
            entries.insert(
                json!([
                    e["Node"]["Node"],
                    e["Node"]["Address"],
                    s["ID"],
                    s["Service"],
                    s["Port"],
                    s["Address"],
                    s["Tags"],
                    s["Meta"],
                    checks
                ])
                .to_string(),
            );
        }
    }
    let queries = agent
        .get_json("/v1/query")
        .await?
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            json!([
                q["ID"],
                q["Name"],
                q["Service"]["Service"],
                q["Service"]["Failover"]
            ])
            .to_string()
        })
        .collect();
    Ok((entries, queries))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_dc_is_restored_entry_by_entry_and_its_federation_converges() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(
        &certs,
        &[("dc1", "n1"), ("dc1", "n2"), ("dc1", "n3"), ("dc2", "n1")],
    )?;
    let with_certs = |c: &mut meridian_testkit::config::AgentConfig, peers: Vec<Peer>| {
        c.raft = crate::harness::quick_raft();
        crate::federation::with_certs(c, &certs, peers);
    };
    let mut dc1 = Vec::new();
    let dc1_configs = meridian_testkit::agent::dc_configs("dc1", 3, dir.path());
    for mut c in dc1_configs.clone() {
        with_certs(&mut c, Vec::new());
        dc1.push(Agent::start(
            &format!("dc1-{}", c.node_name),
            &c,
            dir.path(),
            &[],
        )?);
    }
    for a in &mut dc1 {
        a.wait_ready().await?;
    }
    let mut c2 = meridian_testkit::config::AgentConfig::new(
        "dc2",
        "n1",
        meridian_testkit::Ports::free(),
        &dir.path().join("dc2"),
    );
    with_certs(
        &mut c2,
        vec![crate::federation::peer_at("dc1", &dc1_configs)],
    );
    let mut dc2 = Agent::start("dc2-n1", &c2, dir.path(), &[])?;
    dc2.wait_ready().await?;

    // 10,000 instances on 50 external nodes, each with a check, and three prepared queries.
    let front = &dc1[1];
    let statuses = ["passing", "warning", "critical"];
    let results: Vec<Result<()>> = futures::stream::iter(0..INSTANCES)
        .map(|i| async move {
            let body = json!({
                "Node": format!("ext-{}", i % 50),
                "Address": format!("10.1.{}.{}", i % 50, 1 + i % 200),
                "Service": {
                    "ID": format!("i-{i}"), "Service": format!("svc-{}", i % SERVICES),
                    "Port": 1000 + i % 5000, "Tags": [format!("t{}", i % 7)],
                    "Meta": {"n": i.to_string()},
                },
                "Check": {
                    "CheckID": format!("c-{i}"), "Name": "probe", "ServiceID": format!("i-{i}"),
                    "Status": statuses[i % 3], "Output": format!("out {i}"),
                },
            });
            let r = front.put_json("/v1/catalog/register", &body).await?;
            ensure!(r.status().is_success(), "register {i}: {}", r.text().await?);
            Ok(())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    for q in 0..3 {
        let body = json!({
            "Name": format!("q-{q}"),
            "Service": {"Service": format!("svc-{q}"), "Failover": {"NearestN": 2}},
        });
        let r = front
            .http
            .post(front.url("/v1/query"))
            .json(&body)
            .send()
            .await?;
        ensure!(r.status().is_success(), "query {q}: {}", r.text().await?);
    }
    let before = contents(front).await?;
    ensure!(
        before.0.len() == INSTANCES && before.1.len() == 3,
        "{} instances, {} queries registered",
        before.0.len(),
        before.1.len()
    );
    converged(&dc1[0], "dc1", &dc2, 60).await?;

    let file = dir.path().join("dc1.snap");
    let file_arg = file.to_str().context("utf-8 path")?;
    let (ok, out) = cli(&dc1[2], Some(TEST_TOKEN), &["snapshot", "save", file_arg])?;
    // Ours and the three servers' own (their gateways): 10,003.
    ensure!(ok && out.contains("10003 instances"), "save: {out}");
    let (ok, out) = cli(&dc1[2], None, &["snapshot", "inspect", file_arg])?;
    ensure!(ok && out.contains("3 prepared queries"), "inspect: {out}");

    // Every server gone, every data folder wiped, the DC formed again from nothing.
    for a in dc1.iter_mut() {
        a.stop()?;
    }
    for c in &dc1_configs {
        std::fs::remove_dir_all(&c.data_dir)?;
    }
    for a in dc1.iter_mut() {
        a.restart()?;
    }
    for a in dc1.iter_mut() {
        a.wait_ready().await?;
    }
    let empty = contents(&dc1[0]).await?;
    ensure!(
        empty.0.is_empty() && empty.1.is_empty(),
        "the DC did not start empty"
    );

    // A damaged file is refused and changes nothing.
    let mut damaged = std::fs::read(&file)?;
    let last = damaged.len() - 3;
    damaged[last] ^= 0x20;
    let r = dc1[0]
        .http
        .put(dc1[0].url("/v1/snapshot"))
        .body(damaged)
        .send()
        .await?;
    let (status, body) = (r.status(), r.text().await?);
    ensure!(
        status == 400 && body.contains("checksum"),
        "{status} {body}"
    );

    let (ok, out) = cli(
        &dc1[0],
        Some(TEST_TOKEN),
        &["snapshot", "restore", file_arg],
    )?;
    ensure!(ok, "restore: {out}");
    for a in &dc1 {
        let after = contents(a).await?;
        ensure!(
            after.0 == before.0,
            "{}: {} instances differ after the restore (of {})",
            a.name,
            after.0.symmetric_difference(&before.0).count(),
            before.0.len()
        );
        ensure!(
            after.1 == before.1,
            "{}: queries {:?} != {:?}",
            a.name,
            after.1,
            before.1
        );
    }
    converged(&dc1[0], "dc1", &dc2, 60).await?;
    let replica = dc2.get_json("/v1/catalog/service/svc-7?dc=dc1").await?;
    ensure!(
        replica
            .as_array()
            .is_some_and(|a| a.len() == INSTANCES / SERVICES),
        "dc2's replica of svc-7: {replica}"
    );
    Ok(())
}
