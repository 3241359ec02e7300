//! Intentions between three federated datacenters of real processes, with no primary: one
//! written in dc1 is in force in dc3; while dc1 and dc2 are partitioned each accepts a write of
//! the same pair, and after the heal every DC holds the same intentions, the later write, and
//! decides alike.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::federation::{Relay, all_know, converged, dc_config, make_certs};
use crate::harness::{Agent, Ports, eventually};

/// `GET /v1/connect/intentions/check` in `agent`: whether `source` may call `destination`.
async fn allowed(agent: &Agent, source: &str, destination: &str) -> Result<bool> {
    let v = agent
        .get_json(&format!(
            "/v1/connect/intentions/check?source={source}&destination={destination}"
        ))
        .await?;
    v["Allowed"].as_bool().context("Allowed")
}

async fn put_intention(agent: &Agent, source: &str, destination: &str, action: &str) -> Result<()> {
    let r = agent
        .put_json(
            &format!("/v1/connect/intentions/exact?source={source}&destination={destination}"),
            &json!({"Action": action, "Description": format!("{action} from {}", agent.name)}),
        )
        .await?;
    let status = r.status();
    let body = r.text().await?;
    ensure!(
        status == StatusCode::OK && body.trim() == "true",
        "{}: {status} {body}",
        agent.name
    );
    Ok(())
}

/// Every intention `agent` holds, as `(source, destination, action, datacenter, version)`.
async fn held(agent: &Agent) -> Result<Vec<(String, String, String, String, u64)>> {
    let v = agent.get_json("/v1/connect/intentions").await?;
    let all = v.as_array().context("array")?;
    Ok(all
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
            (
                s("SourceName"),
                s("DestinationName"),
                s("Action"),
                s("Datacenter"),
                i["Version"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intention_written_anywhere_holds_everywhere_and_a_partition_heals_to_the_last_write()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1"), ("dc3", "n1")])?;
    // dc1 and dc2 are reached only through relays the test can cut: each advertises its relay,
    // so every stream to it goes through (a cut isolates dc3 too, which then has no writes).
    let (p1, p2) = (Ports::free(), Ports::free());
    let (wan1, wan2) = (Relay::start(p1.wan).await?, Relay::start(p2.wan).await?);
    let start = |dc: &str, p: Ports, relay: Option<&Relay>, peers: &[(&str, u16)]| {
        let mut c = dc_config(dir.path(), &certs, dc, p, peers);
        if let Some(r) = relay {
            c.set(
                "federation",
                "advertise",
                vec![format!("127.0.0.1:{}", r.port)],
            );
        }
        Agent::start(dc, &c, dir.path(), &[])
    };
    let mut dc1 = start("dc1", p1, Some(&wan1), &[])?;
    dc1.wait_ready().await?;
    let mut dc2 = start("dc2", p2, Some(&wan2), &[("dc1", wan1.port)])?;
    // dc3 joins through dc1's relay too: federation tells every DC the addresses others know,
    // and a direct one would let dc2 around the cut.
    let mut dc3 = start("dc3", Ports::free(), None, &[("dc1", wan1.port)])?;
    dc2.wait_ready().await?;
    dc3.wait_ready().await?;
    let all = [&dc1, &dc2, &dc3];
    all_know(&all, 3).await?;

    // The default is deny; an intention written in dc1 allows api → web in dc3.
    ensure!(!allowed(&dc3, "api", "web").await?, "denied by default");
    put_intention(&dc1, "api", "web", "allow").await?;
    let written = Instant::now();
    eventually(30, "dc1's allow in force in dc3", || async {
        allowed(&dc3, "api", "web").await.unwrap_or(false)
    })
    .await?;
    eprintln!(
        "an intention written in dc1 was in force in dc3 after {:?}",
        written.elapsed()
    );
    let exact = dc3
        .get_json("/v1/connect/intentions/exact?source=api&destination=web")
        .await?;
    ensure!(
        exact["Action"] == "allow" && exact["Datacenter"] == "dc1" && exact["Precedence"] == 9,
        "{exact}"
    );
    // A wildcard of lower precedence does not override it; for other callers it decides.
    put_intention(&dc3, "*", "web", "deny").await?;
    eventually(30, "dc3's wildcard in force in dc1", || async {
        held(&dc1).await.is_ok_and(|h| h.len() == 2)
    })
    .await?;
    ensure!(allowed(&dc1, "api", "web").await?, "exact beats *");
    ensure!(!allowed(&dc1, "cli", "web").await?, "* → web deny");
    let matched = dc1
        .get_json("/v1/connect/intentions/match?by=destination&name=web")
        .await?;
    let order: Vec<&str> = matched["web"]
        .as_array()
        .context("match")?
        .iter()
        .filter_map(|i| i["SourceName"].as_str())
        .collect();
    ensure!(order == ["api", "*"], "evaluation order {order:?}");

    // Partition dc1 from dc2 (both ways); each accepts a write of the same pair.
    wan1.cut();
    wan2.cut();
    for (agent, other) in [(&dc1, "dc2"), (&dc2, "dc1")] {
        eventually(30, "the link seen down", || async {
            agent
                .get_json("/v1/federation/status")
                .await
                .is_ok_and(|s| {
                    s["Remotes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| r["Datacenter"] == other && r["Connected"] == false)
                })
        })
        .await
        .with_context(|| format!("{} sees {other} down", agent.name))?;
    }
    // db → web: dc1 first, dc2 later; ops → web: dc2 first, dc1 later. Each side wins one.
    put_intention(&dc1, "db", "web", "allow").await?;
    put_intention(&dc2, "ops", "web", "allow").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    put_intention(&dc2, "db", "web", "deny").await?;
    put_intention(&dc1, "ops", "web", "deny").await?;
    ensure!(
        allowed(&dc1, "db", "web").await?,
        "dc1 holds its own write while cut"
    );
    ensure!(
        !allowed(&dc2, "db", "web").await?,
        "dc2 holds its own write while cut"
    );

    // Heal: every DC holds the same intentions, dc2's later deny among them, and decides alike.
    wan1.heal();
    wan2.heal();
    let same_everywhere = || async {
        let (Ok(a), Ok(b), Ok(c)) = (held(&dc1).await, held(&dc2).await, held(&dc3).await) else {
            return false;
        };
        a.len() == 4 && a == b && b == c
    };
    if eventually(60, "the same intentions everywhere", same_everywhere)
        .await
        .is_err()
    {
        anyhow::bail!(
            "after the heal: dc1 {:?}, dc2 {:?}, dc3 {:?}",
            held(&dc1).await?,
            held(&dc2).await?,
            held(&dc3).await?
        );
    }
    let reference = held(&dc2).await?;
    for agent in all {
        ensure!(
            !allowed(agent, "db", "web").await?,
            "{}: db → web",
            agent.name
        );
        ensure!(
            !allowed(agent, "ops", "web").await?,
            "{}: ops → web",
            agent.name
        );
        ensure!(
            allowed(agent, "api", "web").await?,
            "{}: api → web",
            agent.name
        );
    }
    ensure!(
        reference
            .iter()
            .any(|(s, d, a, dc, _)| s == "db" && d == "web" && a == "deny" && dc == "dc2")
            && reference
                .iter()
                .any(|(s, d, a, dc, _)| s == "ops" && d == "web" && a == "deny" && dc == "dc1"),
        "{reference:?}"
    );
    // And every replica holds exactly its origin's records (federation digests equal).
    for (origin, dc) in [(&dc1, "dc1"), (&dc2, "dc2"), (&dc3, "dc3")] {
        for holder in all.iter().filter(|h| h.name != dc) {
            converged(origin, dc, holder, 60).await?;
        }
    }

    // Deleted in dc3: gone everywhere, back to the default.
    let r = dc3
        .http
        .delete(dc3.url("/v1/connect/intentions/exact?source=api&destination=web"))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::OK);
    for agent in all {
        eventually(30, "api → web back to the default", || async {
            allowed(agent, "api", "web").await.is_ok_and(|a| !a)
        })
        .await
        .with_context(|| format!("in {}", agent.name))?;
        let (status, _): (StatusCode, Value) = {
            let r = agent
                .http
                .get(agent.url("/v1/connect/intentions/exact?source=api&destination=web"))
                .send()
                .await?;
            (r.status(), Value::Null)
        };
        ensure!(status == StatusCode::NOT_FOUND, "{}: {status}", agent.name);
    }
    Ok(())
}
