//! Raft membership at run time, on real processes: a dead server replaced under a registration
//! load with the operator CLI (a fourth node joins as a learner, then votes; the dead one is
//! removed), and a live server removed, the leader among them, which then refuses writes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serde_json::Value;

use crate::harness::*;

/// `(id, voter)` of every server `agent` lists in its Raft configuration.
async fn members(agent: &Agent) -> Result<BTreeSet<(u64, bool)>> {
    let config = agent.get_json("/v1/operator/raft/configuration").await?;
    let servers = config["Servers"].as_array().cloned().unwrap_or_default();
    servers
        .iter()
        .map(|s| {
            let id = s["ID"].as_str().and_then(|v| v.parse().ok());
            match (id, s["Voter"].as_bool()) {
                (Some(id), Some(voter)) => Ok((id, voter)),
                _ => bail!("bad server entry {s}"),
            }
        })
        .collect()
}

/// Registers `id` through `agent`; the status code.
async fn register(agent: &Agent, id: &str) -> Result<u16> {
    let r = agent
        .put_json("/v1/agent/service/register", &service("load", id, 9000))
        .await?;
    Ok(r.status().as_u16())
}

/// Waits until `agent` answers HTTP at all (a joining node knows no leader, so it is never
/// "ready" in the kit's sense until it has been added).
async fn answering(agent: &Agent) -> Result<()> {
    let http = agent.http.clone();
    let url = agent.url("/v1/status/peers");
    eventually(30, &format!("{} to answer", agent.name), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).send().await.is_ok() }
    })
    .await
}

/// The operator's replacement of a dead server: kill -9 the leader for good, start a fourth node
/// with `[raft] join = true`, `add-peer` it and `remove-peer` the dead one, all while clients
/// register through a survivor. No acknowledged registration is lost, the new node votes (the DC
/// then survives losing one more of the original servers), and the dead one is gone everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_replaced_under_load_without_losing_a_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut configs = meridian_testkit::agent::dc_configs("dc1", 4, dir.path());
    let all_servers = configs[0].servers.clone();
    for c in configs.iter_mut().take(3) {
        c.servers.truncate(3);
    }
    // Snapshots every few entries, the log behind them purged: the newcomer catches up by one.
    for c in configs.iter_mut() {
        c.set("raft", "snapshot_every", 20)
            .set("raft", "keep_logs", 5);
    }
    configs[3].set("raft", "join", true);
    let mut agents = configs[..3]
        .iter()
        .map(|c| Agent::start(&c.node_name, c, dir.path(), &[]))
        .collect::<Result<Vec<_>>>()?;
    for a in agents.iter_mut() {
        a.wait_ready().await?;
    }
    let dead = leader_index(&agents).await?;
    let (front, other) = ((dead + 1) % 3, (dead + 2) % 3);
    let dead_id = dead as u64 + 1;

    let load = Load::start(&agents[front], 4, 20_000);
    load.advance(100, "100 registrations before the kill")
        .await?;
    agents[dead].kill9()?;
    load.advance(100, "100 registrations after the kill")
        .await?;

    // The newcomer answers, but takes no write until it votes. Its ports other than rpc (which
    // the membership names) are picked now: picked at the start, seconds ago, another process
    // of the suite may have taken one since.
    configs[3].ports = Ports {
        rpc: configs[3].ports.rpc,
        ..Ports::free()
    };
    let mut newcomer = Agent::start("n4", &configs[3], dir.path(), &[])?;
    answering(&newcomer).await?;
    let r = newcomer
        .put_json(
            "/v1/agent/service/register",
            &service("load", "early", 9000),
        )
        .await?;
    let (status, body) = (r.status(), r.text().await?);
    ensure!(
        status == 503 && body.contains("not a voter"),
        "a joining node answered a write with {status} {body}"
    );

    let address = all_servers[3].rpc.clone();
    let (ok, out) = cli(
        &agents[front],
        Some(TEST_TOKEN),
        &[
            "operator",
            "raft",
            "add-peer",
            "--id",
            "4",
            "--address",
            &address,
        ],
    )?;
    ensure!(ok, "add-peer failed:\n{out}");
    ensure!(out.contains("is a voter"), "{out}");
    let installed = newcomer
        .metric("meridian_raft_snapshots_installed_total")
        .await?;
    ensure!(
        installed >= 1.0,
        "the newcomer caught up without a snapshot"
    );
    load.advance(100, "100 registrations after the add").await?;

    let dead_arg = dead_id.to_string();
    let (ok, out) = cli(
        &agents[other],
        Some(TEST_TOKEN),
        &["operator", "raft", "remove-peer", "--id", &dead_arg],
    )?;
    ensure!(ok, "remove-peer failed:\n{out}");
    load.advance(100, "100 registrations after the remove")
        .await?;
    let acked = load.finish().await?;

    let want: BTreeSet<(u64, bool)> = [front, other]
        .iter()
        .map(|i| (*i as u64 + 1, true))
        .chain([(4, true)])
        .collect();
    for a in [&agents[front], &agents[other], &newcomer] {
        let listed = eventually(
            10,
            &format!("{} to list the new membership", a.name),
            || async { members(a).await.is_ok_and(|m| m == want) },
        )
        .await;
        if let Err(e) = listed {
            bail!(
                "{e}: {} lists {:?}, not {want:?}",
                a.name,
                members(a).await?
            );
        }
        holds_all(a, "after the replacement", &acked).await?;
    }
    ensure!(
        register(&newcomer, "through-n4").await? == 200,
        "the new voter refuses writes"
    );

    // The new node really votes: with one more original server gone, the two left commit.
    agents[other].kill9()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while register(&agents[front], "after-second-loss").await? != 200 {
        ensure!(
            Instant::now() < deadline,
            "no write committed by the original survivor and the new voter"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = BTreeSet::from(["after-second-loss".to_owned()]);
    holds_all(&newcomer, "after a second loss", &last).await?;
    newcomer.stop()?;
    Ok(())
}

/// A live server removed with `DELETE /v1/operator/raft/peer` learns it no longer votes and
/// refuses writes (503, saying why) instead of forwarding them; removing the leader moves the
/// leadership to the others. Unknown servers and callers without an operator token are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_server_refuses_writes_and_the_others_go_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agents = three_node_dc(dir.path()).await?;
    let leader = leader_index(&agents).await?;
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let http = reqwest::Client::new();
    let peer_url = |a: &Agent, q: &str| a.url(&format!("/v1/operator/raft/peer?{q}"));

    let anonymous = http
        .delete(peer_url(&agents[rest[0]], "id=1"))
        .send()
        .await?;
    ensure!(anonymous.status() == 403, "{}", anonymous.status());
    let unknown = agents[rest[0]]
        .http
        .delete(peer_url(&agents[rest[0]], "id=99"))
        .send()
        .await?;
    let (status, body) = (unknown.status(), unknown.text().await?);
    ensure!(
        status == 400 && body.contains("not found"),
        "{status} {body}"
    );

    // Remove the leader, asked through a follower, by address as Consul's CLI does.
    let rpc = agents[leader].rpc();
    let removed = agents[rest[0]]
        .http
        .delete(peer_url(&agents[rest[0]], &format!("address={rpc}")))
        .send()
        .await?;
    let status = removed.status();
    ensure!(status == 200, "{status} {}", removed.text().await?);

    let r = agents[leader]
        .put_json(
            "/v1/agent/service/register",
            &service("web", "after-removal", 80),
        )
        .await?;
    let (status, body) = (r.status(), r.text().await?);
    ensure!(
        status == 503 && body.contains("not a voter"),
        "the removed server answered a write with {status} {body}"
    );

    let want: BTreeSet<(u64, bool)> = rest.iter().map(|i| (*i as u64 + 1, true)).collect();
    for i in &rest {
        let a = &agents[*i];
        eventually(
            10,
            &format!("{} to drop the removed server", a.name),
            || async { members(a).await.is_ok_and(|m| m == want) },
        )
        .await?;
    }
    let new_leader: Value = agents[rest[1]].get_json("/v1/status/leader").await?;
    ensure!(
        new_leader.as_str() != Some(rpc.as_str()),
        "the removed server still leads"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while register(&agents[rest[1]], "after-removal").await? != 200 {
        ensure!(Instant::now() < deadline, "the two left commit no write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
