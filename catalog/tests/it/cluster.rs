//! Real catalog nodes in one process: writes through any node, forwarding, restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_catalog::{Catalog, CatalogConfig, Command, RaftTuning};
use meridian_topology::{Instance, Weights};

use crate::free_port;

fn config(dir: &Path, id: u64, servers: &BTreeMap<u64, String>) -> CatalogConfig {
    CatalogConfig {
        datacenter: "dc1".into(),
        node_name: format!("n{id}"),
        node_id: id,
        advertise_addr: "127.0.0.1".into(),
        rpc_bind: servers[&id].parse().expect("socket address"),
        data_dir: dir.join(format!("n{id}")),
        servers: servers.clone(),
        join: false,
        raft: RaftTuning {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            snapshot_every: 50,
            keep_logs: 10,
        },
        write_timeout: Duration::from_secs(20),
        tls: None,
        checks: Default::default(),
    }
}

fn instance(node: &str, id: &str) -> Instance {
    Instance {
        id: id.into(),
        service: "web".into(),
        node: node.into(),
        address: "10.0.0.1".into(),
        port: 8080,
        tags: vec!["v1".into()],
        meta: Default::default(),
        weights: Weights::default(),
        create_index: 0,
        modify_index: 0,
        proxy: None,
    }
}

/// Polls `ok` for up to a minute (generous: the machine may be busy building).
async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..1200 {
        if ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out waiting for {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_keeps_its_catalog_across_restarts_and_snapshots() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let servers = BTreeMap::from([(1, format!("127.0.0.1:{}", free_port()))]);
    let cat = Catalog::start(config(dir.path(), 1, &servers)).await?;
    // More writes than `snapshot_every`, so the restart goes through a snapshot plus log replay.
    for i in 0..120 {
        let out = cat
            .write(Command::Register {
                instance: instance("n1", &format!("web-{i}")),
                checks: vec![],
            })
            .await?;
        assert!(out.changed && out.found);
    }
    let removed = cat
        .write(Command::Deregister {
            node: "n1".into(),
            id: "web-7".into(),
        })
        .await?;
    assert!(removed.found);
    let missing = cat
        .write(Command::Deregister {
            node: "n1".into(),
            id: "nope".into(),
        })
        .await?;
    assert!(!missing.found);
    cat.shutdown().await;
    drop(cat);

    // Raft's tasks drop their store handles asynchronously after shutdown; RocksDB's lock is
    // free once the last one is gone.
    let mut restarted = None;
    for _ in 0..100 {
        match Catalog::start(config(dir.path(), 1, &servers)).await {
            Ok(c) => {
                restarted = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let cat = restarted.context("restart on the same data folder")?;
    wait_for("the catalog to be replayed", || {
        cat.view().local().instances_of("web").count() == 119
    })
    .await?;
    assert!(cat.view().local().instance("n1", "web-7").is_none());
    assert!(cat.view().local().instance("n1", "web-119").is_some());
    cat.shutdown().await;
    Ok(())
}

/// Starts a 3-node DC in `dir` and waits until one of them leads.
async fn start_three(dir: &Path) -> Result<Vec<Catalog>> {
    let servers: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Catalog::start(config(dir, id, &servers)).await?);
    }
    wait_for("a leader", || nodes.iter().any(|n| n.status().is_leader)).await?;
    Ok(nodes)
}

/// Writes that reach a follower together go to the leader together: fewer calls than writes,
/// each write acknowledged with its own outcome and readable on the follower once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_are_forwarded_in_batches() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = start_three(dir.path()).await?;
    let follower = nodes
        .iter()
        .find(|n| !n.status().is_leader)
        .context("a follower")?
        .clone();
    const WRITES: usize = 300;
    let writes = (0..WRITES).map(|i| {
        let follower = follower.clone();
        tokio::spawn(async move {
            let id = format!("web-{i}");
            let outcome = follower
                .write(Command::Register {
                    instance: instance(follower.node_name(), &id),
                    checks: vec![],
                })
                .await?;
            // Read-your-writes: the follower holds the write once it is acknowledged.
            let here = follower
                .view()
                .local()
                .instance(follower.node_name(), &id)
                .is_some();
            anyhow::Ok((outcome.changed, here))
        })
    });
    for w in futures::future::join_all(writes).await {
        let (changed, here) = w??;
        assert!(changed, "every write registers a new instance");
        assert!(
            here,
            "a write through the follower is readable there once acknowledged"
        );
    }
    for n in &nodes {
        wait_for("replication to every node", || {
            n.view().local().instances_of("web").count() == WRITES
        })
        .await?;
    }
    let counters = follower.counters();
    let forwarded = meridian_catalog::CatalogCounters::get(&counters.writes_forwarded);
    let calls = meridian_catalog::CatalogCounters::get(&counters.forward_calls);
    assert!(forwarded >= WRITES as u64, "{forwarded} writes forwarded");
    assert!(
        calls * 2 <= forwarded,
        "{WRITES} concurrent writes went to the leader in {calls} calls"
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_reach_every_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = start_three(dir.path()).await?;
    let follower = nodes
        .iter()
        .find(|n| !n.status().is_leader)
        .context("a follower")?;
    for i in 0..20 {
        follower
            .write(Command::Register {
                instance: instance(follower.node_name(), &format!("web-{i}")),
                checks: vec![],
            })
            .await?;
    }
    for n in &nodes {
        wait_for("replication to every node", || {
            n.view().local().instances_of("web").count() == 20
        })
        .await?;
        // Every node registered itself, through whichever node led.
        wait_for("node registration", || {
            n.view().local().nodes().count() == 3
        })
        .await?;
    }
    let status = nodes[0].status();
    assert_eq!(status.peers.len(), 3);
    assert!(status.leader.is_some());
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
