//! Nothing acknowledged is lost: kill -9 of a leader under load, restarts of whole datacenters;
//! and a consistent read sees every acknowledged write, or is refused.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::harness::{Agent, Load, eventually, holds_all, leader_index, service, three_node_dc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_keeps_its_catalog_across_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agent = crate::harness::dev("dev", &dir.path().join("data"), dir.path(), &[])?;
    agent.wait_ready().await?;
    for i in 0..5 {
        let r = agent
            .put_json(
                "/v1/agent/service/register",
                &service("web", &format!("web-{i}"), 8080),
            )
            .await?;
        ensure!(r.status().is_success(), "register: {}", r.status());
    }
    let r = agent
        .http
        .put(agent.url("/v1/agent/service/deregister/web-3"))
        .send()
        .await?;
    ensure!(r.status().is_success(), "deregister: {}", r.status());

    // A clean stop, then a kill -9 right after more acknowledged writes: both keep everything.
    agent.stop()?;
    agent.restart()?;
    agent.wait_ready().await?;
    let r = agent
        .put_json("/v1/agent/service/register", &service("web", "web-9", 8080))
        .await?;
    ensure!(r.status().is_success());
    agent.kill9()?;
    agent.restart()?;
    agent.wait_ready().await?;
    eventually(30, "the catalog to come back", || async {
        agent.instance_ids("web").await.unwrap_or_default().len() == 5
    })
    .await?;
    let ids: BTreeSet<_> = agent.instance_ids("web").await?.into_iter().collect();
    let want: BTreeSet<String> = ["web-0", "web-1", "web-2", "web-4", "web-9"]
        .map(String::from)
        .into();
    ensure!(ids == want, "after restarts: {ids:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_registration() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agents = three_node_dc(dir.path()).await?;
    let leader = leader_index(&agents).await?;
    let follower = (leader + 1) % agents.len();
    let load = Load::start(&agents[follower], 8, 400);
    // Kill the leader once the load is well under way.
    load.advance(100, "the first 100 acknowledgements").await?;
    agents[leader].kill9()?;
    let acked = load.drain().await?;
    for (i, a) in agents.iter_mut().enumerate() {
        ensure!(i == leader || a.is_running(), "{} died", a.name);
    }
    ensure!(
        acked.len() > 100,
        "only {} registrations acknowledged",
        acked.len()
    );

    check_all(&agents, Some(leader), "on the survivors", &acked).await?;

    // Every node down, then all up again: still all there.
    for a in agents.iter_mut() {
        a.kill9()?;
    }
    for a in agents.iter_mut() {
        a.restart()?;
    }
    for a in agents.iter_mut() {
        a.wait_ready().await?;
    }
    check_all(&agents, None, "after restarting all three", &acked).await?;
    Ok(())
}

/// Checks that every agent but `skip` holds every acknowledged registration, within a minute.
async fn check_all(
    agents: &[Agent],
    skip: Option<usize>,
    when: &str,
    acked: &BTreeSet<String>,
) -> Result<()> {
    for (i, a) in agents.iter().enumerate() {
        if Some(i) != skip {
            holds_all(a, when, acked).await?;
        }
    }
    Ok(())
}

/// The service IDs of a `/v1/catalog/service/:name` answer.
fn service_ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["ServiceID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `?consistent` reads are linearizable: on any node, right after a write acknowledged through
/// another, the read has it (and every server lists the same Raft configuration). A node cut off
/// from its quorum refuses them (503) rather than answer from a replica that may be behind, and
/// still serves the default (stale) reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_reads_see_every_acknowledged_write_and_need_a_quorum() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agents = three_node_dc(dir.path()).await?;
    let leader = leader_index(&agents).await?;
    // Every server lists the same three voters, with the leader marked (Consul's shape).
    let leader_name =
        agents[leader].get_json("/v1/agent/self").await?["Config"]["NodeName"].clone();
    for a in &agents {
        let c = a.get_json("/v1/operator/raft/configuration").await?;
        let servers = c["Servers"].as_array().cloned().unwrap_or_default();
        let leaders: Vec<&serde_json::Value> = servers
            .iter()
            .filter(|s| s["Leader"] == true)
            .map(|s| &s["Node"])
            .collect();
        ensure!(
            servers.len() == 3
                && servers
                    .iter()
                    .all(|s| s["Voter"] == true && s["Address"].is_string())
                && leaders == [&leader_name]
                && c["Index"].is_u64(),
            "the raft configuration on {}: {c}",
            a.name
        );
    }
    for i in 0..6u16 {
        let (w, r) = (usize::from(i) % 3, (usize::from(i) + 1) % 3);
        let id = format!("lin-{i}");
        let resp = agents[w]
            .put_json("/v1/agent/service/register", &service("lin", &id, 9000 + i))
            .await?;
        ensure!(
            resp.status().is_success(),
            "register {id}: {}",
            resp.status()
        );
        let got = agents[r]
            .get_json("/v1/catalog/service/lin?consistent")
            .await?;
        ensure!(
            service_ids(&got).contains(&id),
            "a consistent read on node {r} after {id} was acknowledged by node {w}: {got}"
        );
    }

    let survivor = (leader + 1) % 3;
    for (i, a) in agents.iter_mut().enumerate() {
        if i != survivor {
            a.stop()?;
        }
    }
    let a = &agents[survivor];
    let started = Instant::now();
    let r = a
        .http
        .get(a.url("/v1/catalog/service/lin?consistent"))
        .send()
        .await?;
    let (code, text) = (r.status().as_u16(), r.text().await?);
    ensure!(
        code == 503,
        "a consistent read without a quorum: {code} {text} after {:?}",
        started.elapsed()
    );
    let stale = a.get_json("/v1/catalog/service/lin").await?;
    ensure!(
        service_ids(&stale).len() == 6,
        "a stale read still answers: {stale}"
    );
    Ok(())
}
