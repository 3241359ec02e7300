//! WAN federation between real agent processes on loopback: replication of registrations,
//! deregistrations and health to every other datacenter (HTTP `?dc=` and DNS), convergence after
//! a partition with only the changes resent, answers from the persisted replica after a restart
//! while the origin is gone, and refusal of bad peers.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hickory_net::proto::op::ResponseCode;
use hickory_net::proto::rr::RecordType;
use meridian_identity::{self as tls, Role, TlsMaterial};
use meridian_protos::federation::SubscribeRequest;
use meridian_protos::federation::federation_client::FederationClient;
use serde_json::{Value, json};

use crate::dns::{dns_addr, query, srv_lines};
use crate::harness::{Agent, AgentConfig, BIN, Ports, eventually, header, quick_raft};
use meridian_testkit::config::{Federation, Peer};

/// A `--dev` agent of datacenter `dc`, joining the node at WAN port `join` if given.
pub(crate) fn dev_dc(dir: &Path, dc: &str, join: Option<u16>) -> Result<Agent> {
    let join = join.map(|p| format!("127.0.0.1:{p}"));
    let mut extra = vec!["--dc", dc, "--node", "n1"];
    if let Some(j) = &join {
        extra.extend(["--join-wan", j.as_str()]);
    }
    Agent::start_dev(dc, Ports::free(), &dir.join(dc), dir, &extra)
}

async fn status(agent: &Agent) -> Result<Value> {
    agent.get_json("/v1/federation/status").await
}

/// The remote `dc` in `agent`'s federation status.
pub(crate) async fn remote(agent: &Agent, dc: &str) -> Result<Value> {
    let s = status(agent).await?;
    s["Remotes"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["Datacenter"] == dc))
        .cloned()
        .with_context(|| format!("{} does not know {dc}: {s}", agent.name))
}

/// Waits until `holder`'s replica of `origin`'s datacenter is connected and has the origin's
/// exact digest.
pub(crate) async fn converged(origin: &Agent, dc: &str, holder: &Agent, secs: u64) -> Result<()> {
    let last = std::sync::Mutex::new(String::new());
    let ok = eventually(secs, "replica digest equal to the origin's", || async {
        let (Ok(o), Ok(r)) = (status(origin).await, remote(holder, dc).await) else {
            return false;
        };
        if let Ok(mut l) = last.lock() {
            *l = format!("origin {}\nreplica {r}", o["Export"]);
        }
        r["Connected"] == true && r["Digest"] == o["Export"]["Digest"]
    })
    .await;
    ok.with_context(|| last.lock().map(|l| l.clone()).unwrap_or_default())
}

/// The value of a sample line `name` (with its labels, exactly as printed) on `/metrics`.
pub(crate) async fn metric(agent: &Agent, name: &str) -> Result<f64> {
    agent.metric(name).await
}

/// The sum of the samples on `/metrics` whose name and labels start with `prefix`.
async fn metric_sum(agent: &Agent, prefix: &str) -> Result<f64> {
    Ok(meridian_testkit::metrics::sum(
        &agent.metrics().await?,
        prefix,
    ))
}

async fn register(agent: &Agent, body: &Value) -> Result<()> {
    let r = agent.put_json("/v1/agent/service/register", body).await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);
    Ok(())
}

async fn health_ids(agent: &Agent, path: &str) -> Result<Vec<String>> {
    let v = agent.get_json(path).await?;
    let mut ids: Vec<String> = v
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

async fn srv(agent: &Agent, name: &str) -> Vec<String> {
    match query(dns_addr(agent), name, RecordType::SRV, false).await {
        Ok(m) if m.metadata.response_code == ResponseCode::NoError => srv_lines(&m),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datacenters_see_each_others_registrations_health_and_deregistrations() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut dc1 = dev_dc(dir.path(), "dc1", None)?;
    dc1.wait_ready().await?;
    let mut dc2 = dev_dc(dir.path(), "dc2", Some(dc1.ports.wan))?;
    let mut dc3 = dev_dc(dir.path(), "dc3", Some(dc1.ports.wan))?;
    dc2.wait_ready().await?;
    dc3.wait_ready().await?;

    let web = json!({"ID": "web1", "Name": "web", "Port": 8080, "Address": "127.0.0.1",
                     "Check": {"TTL": "300s"}});
    register(&dc1, &web).await?;
    let r = dc1
        .put_json("/v1/agent/check/pass/service:web1", &json!({}))
        .await?;
    ensure!(r.status().is_success());

    for holder in [&dc2, &dc3] {
        eventually(30, "web1 of dc1 passing in another DC", || async {
            health_ids(holder, "/v1/health/service/web?dc=dc1&passing")
                .await
                .is_ok_and(|ids| ids == ["web1"])
        })
        .await
        .with_context(|| format!("in {}", holder.name))?;
        let answers = srv(holder, "web.service.dc1.consul.").await;
        ensure!(
            answers.len() == 1 && answers[0].contains(" 8080 "),
            "{}: SRV {answers:?}",
            holder.name
        );
        let rfc2782 = srv(holder, "_web._tcp.service.dc1.consul.").await;
        ensure!(
            rfc2782.len() == 1,
            "{}: RFC 2782 SRV {rfc2782:?}",
            holder.name
        );
        // The local DC has no such service: a name without a DC fails over to dc1, answered
        // from the local replica (no query crosses the WAN).
        let failed_over = srv(holder, "web.service.consul.").await;
        ensure!(
            failed_over.len() == 1 && failed_over[0].contains(" 8080 "),
            "{}: failover SRV {failed_over:?}",
            holder.name
        );
    }

    // Joining one DC is enough to learn the federation: dc3 follows dc2, dc1 follows both.
    for (agent, want) in [(&dc1, ["dc1", "dc2", "dc3"]), (&dc3, ["dc3", "dc1", "dc2"])] {
        eventually(30, "every datacenter known", || async {
            agent
                .get_json("/v1/catalog/datacenters")
                .await
                .is_ok_and(|v| v == json!(want))
        })
        .await
        .with_context(|| format!("datacenters of {}", agent.name))?;
    }
    register(&dc2, &json!({"ID": "api1", "Name": "api", "Port": 9090})).await?;
    for holder in [&dc1, &dc3] {
        eventually(30, "api1 of dc2 everywhere", || async {
            health_ids(holder, "/v1/health/service/api?dc=dc2")
                .await
                .is_ok_and(|ids| ids == ["api1"])
        })
        .await
        .with_context(|| format!("in {}", holder.name))?;
    }

    // A health change travels.
    let r = dc1
        .put_json("/v1/agent/check/fail/service:web1", &json!({}))
        .await?;
    ensure!(r.status().is_success());
    for holder in [&dc2, &dc3] {
        eventually(30, "web1 critical in another DC", || async {
            health_ids(holder, "/v1/health/service/web?dc=dc1&passing")
                .await
                .is_ok_and(|ids| ids.is_empty())
        })
        .await?;
        ensure!(srv(holder, "web.service.dc1.consul.").await.is_empty());
    }

    // And so does a deregistration.
    let r = dc1
        .put_json("/v1/agent/service/deregister/web1", &json!({}))
        .await?;
    ensure!(r.status().is_success());
    for holder in [&dc2, &dc3] {
        eventually(30, "web1 gone in another DC", || async {
            holder
                .get_json("/v1/catalog/service/web?dc=dc1")
                .await
                .is_ok_and(|v| v == json!([]))
        })
        .await?;
    }
    converged(&dc1, "dc1", &dc2, 30).await?;
    converged(&dc1, "dc1", &dc3, 30).await?;
    Ok(())
}

/// Certificates made with `meridian tls`, as an operator would.
pub(crate) fn make_certs(dir: &Path, nodes: &[(&str, &str)]) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(BIN).args(args).output()?;
        ensure!(
            out.status.success(),
            "meridian {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let d = dir.to_str().context("utf-8 path")?;
    run(&["tls", "ca", "create", "--dir", d])?;
    for (dc, node) in nodes {
        make_role_cert(dir, dc, node, "server")?;
    }
    Ok(())
}

/// With `meridian tls cert create`, a certificate of `node` of `dc` in `role` (`server` or
/// `gateway`) signed by the CA that [`make_certs`] wrote to `dir`.
pub(crate) fn make_role_cert(dir: &Path, dc: &str, node: &str, role: &str) -> Result<()> {
    let d = dir.to_str().context("utf-8 path")?;
    let ca = dir.join("meridian-ca.pem");
    let key = dir.join("meridian-ca-key.pem");
    let args = [
        "tls",
        "cert",
        "create",
        "--dc",
        dc,
        "--node",
        node,
        "--role",
        role,
        "--dir",
        d,
        "--ca",
        ca.to_str().context("utf-8")?,
        "--ca-key",
        key.to_str().context("utf-8")?,
    ];
    let out = Command::new(BIN).args(args).output()?;
    ensure!(
        out.status.success(),
        "meridian {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A one-node datacenter from a config file with certificates from `certs`, following `peers`
/// (`(dc, wan port)` on 127.0.0.1), changed by `customize`.
pub(crate) fn config_dc(
    dir: &Path,
    certs: &Path,
    dc: &str,
    peers: &[(&str, u16)],
    customize: impl FnOnce(&mut AgentConfig),
) -> Result<Agent> {
    config_dc_on(dir, certs, dc, Ports::free(), peers, customize)
}

/// Makes `c` a node holding its certificate from `certs` (as [`make_certs`] names them), mutual
/// TLS on its rpc port, following `peers`.
pub(crate) fn with_certs(c: &mut AgentConfig, certs: &Path, peers: Vec<Peer>) {
    let (dc, name) = (c.datacenter.clone(), c.node_name.clone());
    c.insecure = false;
    c.federation = Some(Federation {
        peers,
        ..Federation::with_certs(
            &certs.join("meridian-ca.pem"),
            &certs.join(format!("{dc}-{name}.pem")),
            &certs.join(format!("{dc}-{name}-key.pem")),
        )
    });
}

/// A peer entry for datacenter `dc` at the WAN ports of its nodes' `configs`.
pub(crate) fn peer_at(dc: &str, configs: &[AgentConfig]) -> Peer {
    Peer {
        dc: dc.to_owned(),
        addresses: configs
            .iter()
            .map(|c| format!("127.0.0.1:{}", c.ports.wan))
            .collect(),
    }
}

/// [`config_dc`] on given ports.
pub(crate) fn config_dc_on(
    dir: &Path,
    certs: &Path,
    dc: &str,
    p: Ports,
    peers: &[(&str, u16)],
    customize: impl FnOnce(&mut AgentConfig),
) -> Result<Agent> {
    let mut c = dc_config(dir, certs, dc, p, peers);
    customize(&mut c);
    Agent::start(dc, &c, dir, &[])
}

/// Waits until each of `agents` knows `n` datacenters (itself included).
pub(crate) async fn all_know(agents: &[&Agent], n: usize) -> Result<()> {
    for agent in agents {
        eventually(60, "every datacenter known", || async {
            agent
                .get_json("/v1/catalog/datacenters")
                .await
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == n))
        })
        .await
        .with_context(|| format!("datacenters of {}", agent.name))?;
    }
    Ok(())
}

/// The config of a one-node datacenter on ports `p` with certificates from `certs`, following
/// `peers` (`(dc, wan port)` on 127.0.0.1).
pub(crate) fn dc_config(
    dir: &Path,
    certs: &Path,
    dc: &str,
    p: Ports,
    peers: &[(&str, u16)],
) -> AgentConfig {
    let mut c = AgentConfig::new(dc, "n1", p, &dir.join(dc));
    c.raft = quick_raft();
    let peers = peers
        .iter()
        .map(|(peer, wan)| Peer::on_loopback(peer, *wan))
        .collect();
    with_certs(&mut c, certs, peers);
    c
}

/// Deregisters `ids` from `agent`, one after the other.
async fn deregister_many(agent: &Agent, ids: impl Iterator<Item = String>) -> Result<()> {
    for id in ids {
        let r = agent
            .put_json(&format!("/v1/agent/service/deregister/{id}"), &json!({}))
            .await?;
        ensure!(r.status().is_success(), "deregister {id}: {}", r.status());
    }
    Ok(())
}

/// Registers `ids` in `agent`, 64 at a time.
pub(crate) async fn register_many(agent: &Agent, ids: impl Iterator<Item = String>) -> Result<()> {
    use futures::StreamExt as _;
    let results: Vec<Result<()>> = futures::stream::iter(ids)
        .map(|id| async move {
            register(
                agent,
                &json!({"ID": id, "Name": "bulk", "Port": 7000, "Address": "127.0.0.1"}),
            )
            .await
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_only_the_changes_are_resent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1")])?;
    // dc2 reaches dc1 only through a relay the test can cut, as a WAN partition would: dc1
    // advertises the relay. A small change window, so that ten changes while cut push dc2's
    // index out of it and the heal must use the digest catch-up.
    let dc1_ports = Ports::free();
    let wan = Relay::start(dc1_ports.wan).await?;
    let mut dc1 = config_dc_on(dir.path(), &certs, "dc1", dc1_ports, &[], |c| {
        c.set("federation", "resume_window", 5).set(
            "federation",
            "advertise",
            vec![format!("127.0.0.1:{}", wan.port)],
        );
    })?;
    dc1.wait_ready().await?;
    let mut dc2 = config_dc(dir.path(), &certs, "dc2", &[("dc1", wan.port)], |_| {})?;
    dc2.wait_ready().await?;

    // 10,000 instances, plus the one each node registers for its own gateway.
    register_many(&dc1, (0..10_000).map(|i| format!("bulk{i}"))).await?;
    converged(&dc1, "dc1", &dc2, 120).await?;
    let full = metric(&dc2, "meridian_federation_received_bytes_total{dc=\"dc1\"}").await?;
    ensure!(remote(&dc2, "dc1").await?["Instances"] == 10_001);

    // Cut the WAN between them (dc2 keeps running); dc1 changes ten instances.
    wan.cut();
    eventually(30, "dc2 sees the link down", || async {
        remote(&dc2, "dc1")
            .await
            .is_ok_and(|r| r["Connected"] == false)
    })
    .await?;
    let before = metric(&dc2, "meridian_federation_received_bytes_total{dc=\"dc1\"}").await?;
    let sent_before = metric(&dc2, "meridian_federation_sent_bytes_total{dc=\"dc1\"}").await?;
    deregister_many(&dc1, (0..5).map(|i| format!("bulk{i}"))).await?;
    register_many(&dc1, (0..5).map(|i| format!("new{i}"))).await?;
    // While cut, dc2 still answers for dc1, from the last state it had.
    ensure!(remote(&dc2, "dc1").await?["Instances"] == 10_001);

    // Heal.
    wan.heal();
    converged(&dc1, "dc1", &dc2, 60).await?;
    let ids = dc2.get_json("/v1/catalog/service/bulk?dc=dc1").await?;
    let ids: Vec<&str> = ids
        .as_array()
        .context("array")?
        .iter()
        .filter_map(|e| e["ServiceID"].as_str())
        .collect();
    ensure!(ids.len() == 10_000, "{} bulk instances", ids.len());
    ensure!(ids.contains(&"new4") && !ids.contains(&"bulk0"));
    let healed = metric(&dc2, "meridian_federation_received_bytes_total{dc=\"dc1\"}").await?;
    let resent = healed - before;
    let sent =
        metric(&dc2, "meridian_federation_sent_bytes_total{dc=\"dc1\"}").await? - sent_before;
    let partial = metric(&dc2, "meridian_federation_partial_syncs_total{dc=\"dc1\"}").await?;
    eprintln!(
        "full sync of 10,000 instances: {full} bytes; heal after 10 changes: {resent} bytes \
         received, {sent} sent"
    );
    ensure!(partial >= 1.0, "the heal was a digest catch-up ({partial})");
    // The changed entries and key lists for the removals, not whole buckets; and a digest of
    // key sums, not of entry hashes (both ways: under 1 % of the full sync).
    ensure!(
        (resent + sent) * 100.0 < full,
        "the heal received {resent} bytes and sent {sent}, the full sync {full}: not \
         proportional to 10 changes"
    );

    // A short cut inside the window resumes from dc2's index instead.
    dc2.stop()?;
    register_many(&dc1, (0..2).map(|i| format!("later{i}"))).await?;
    dc2.restart()?;
    dc2.wait_ready().await?;
    converged(&dc1, "dc1", &dc2, 60).await?;
    let resumes = metric(&dc2, "meridian_federation_resumes_total{dc=\"dc1\"}").await?;
    ensure!(resumes >= 1.0, "resumed from the index ({resumes})");
    Ok(())
}

/// The commonest way past the change window: the origin restarted (its window is in memory, so
/// it starts empty). It then knows when each entry last changed from the catalog's own indices,
/// and a subscriber that was away gets only what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_origin_restarts_a_subscriber_gets_only_what_changed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1")])?;
    let mut dc1 = config_dc(dir.path(), &certs, "dc1", &[], |_| {})?;
    dc1.wait_ready().await?;
    let mut dc2 = config_dc(dir.path(), &certs, "dc2", &[("dc1", dc1.ports.wan)], |_| {})?;
    dc2.wait_ready().await?;
    register_many(&dc1, (0..2_000).map(|i| format!("bulk{i}"))).await?;
    converged(&dc1, "dc1", &dc2, 120).await?;
    let full = metric(&dc2, "meridian_federation_received_bytes_total{dc=\"dc1\"}").await?;

    // dc2 goes away; dc1 removes three instances, adds three and changes one, and restarts.
    dc2.stop()?;
    deregister_many(&dc1, (0..3).map(|i| format!("bulk{i}"))).await?;
    register_many(&dc1, (0..3).map(|i| format!("fresh{i}"))).await?;
    register(
        &dc1,
        &json!({"ID": "bulk10", "Name": "bulk", "Port": 7001, "Address": "127.0.0.1"}),
    )
    .await?;
    dc1.restart()?;
    dc1.wait_ready().await?;

    // dc2 comes back with its persisted index, past dc1's (empty) change window.
    dc2.restart()?;
    dc2.wait_ready().await?;
    converged(&dc1, "dc1", &dc2, 60).await?;
    let ids = dc2.get_json("/v1/catalog/service/bulk?dc=dc1").await?;
    let ports: std::collections::HashMap<&str, u64> = ids
        .as_array()
        .context("array")?
        .iter()
        .filter_map(|e| Some((e["ServiceID"].as_str()?, e["ServicePort"].as_u64()?)))
        .collect();
    ensure!(ports.len() == 2_000, "{} bulk instances", ports.len());
    ensure!(ports.contains_key("fresh2") && !ports.contains_key("bulk0"));
    ensure!(
        ports.get("bulk10") == Some(&7001),
        "bulk10: {:?}",
        ports.get("bulk10")
    );
    let holder = &dc2;
    let m = |name: &str| {
        let name = format!("meridian_federation_{name}{{dc=\"dc1\"}}");
        async move { metric(holder, &name).await }
    };
    let (partial, fulls, mismatches) = (
        m("partial_syncs_total").await?,
        m("full_syncs_total").await?,
        metric(&dc2, "meridian_federation_digest_mismatches_total").await?,
    );
    let (got, sent) = (
        m("received_bytes_total").await?,
        m("sent_bytes_total").await?,
    );
    eprintln!(
        "full sync of 2,000 instances: {full} bytes; after dc1's restart, 7 changes: {got} bytes \
         received, {sent} sent"
    );
    ensure!(
        partial == 1.0 && fulls == 0.0 && mismatches == 0.0,
        "one key-sum catch-up, right the first time: {partial} partial, {fulls} full syncs, \
         {mismatches} digest mismatches"
    );
    // About 1 % (7 entries, three removals' key lists, 64 key sums); entry sums and whole
    // buckets, as before, made about 5 %.
    ensure!(
        (got + sent) * 40.0 < full,
        "the catch-up moved {got} + {sent} bytes, the full sync {full}: not the changes alone"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_the_origin_is_gone_answers_from_disk_marked_stale() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dc1 = dev_dc(dir.path(), "dc1", None)?;
    dc1.wait_ready().await?;
    let mut dc2 = dev_dc(dir.path(), "dc2", Some(dc1.ports.wan))?;
    dc2.wait_ready().await?;
    register(
        &dc1,
        &json!({"ID": "web1", "Name": "web", "Port": 8080, "Address": "127.0.0.1"}),
    )
    .await?;
    converged(&dc1, "dc1", &dc2, 30).await?;
    // web1 and dc1's own gateway (every node advertises its gateway in the catalog).
    ensure!(remote(&dc2, "dc1").await?["Instances"] == 2);

    dc1.kill9()?;
    dc2.restart()?;
    dc2.wait_ready().await?;
    // At once, without dc1: from the replica on disk.
    let r = dc2
        .http
        .get(dc2.url("/v1/health/service/web?dc=dc1"))
        .send()
        .await?;
    let stale = header(&r, "x-meridian-stale");
    let body: Value = r.json().await?;
    ensure!(body.as_array().map(Vec::len) == Some(1), "answer: {body}");
    ensure!(
        stale.as_deref() == Some("true"),
        "X-Meridian-Stale: {stale:?}"
    );
    let rem = remote(&dc2, "dc1").await?;
    ensure!(rem["Stale"] == true && rem["Synced"] == true, "{rem}");
    // DNS and the gateway follow the failure detector: once dc1 is found down (no probe or
    // stream answers), no answer points at it, from disk or not.
    eventually(30, "dc1 down as dc2 sees it, and out of DNS", || async {
        let down = dc2
            .get_json("/v1/federation/datacenters")
            .await
            .is_ok_and(|v| {
                v.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|e| e["Datacenter"] == "dc1" && e["Status"] == "down")
                })
            });
        down && srv(&dc2, "web.service.dc1.consul.").await.is_empty()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_and_counted_and_the_node_keeps_serving() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dc1 = dev_dc(dir.path(), "dc1", None)?;
    dc1.wait_ready().await?;
    let wan = format!("127.0.0.1:{}", dc1.ports.wan);
    let t = Duration::from_secs(5);

    // Plain TCP with garbage, and a silent TCP client.
    {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect(&wan).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut junk = tokio::net::TcpStream::connect(&wan).await?;
        junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0])
            .await?;
    }
    // A certificate from another CA.
    let ca = tls::create_ca("some other CA")?;
    let pair = tls::create_node_cert(&ca, "dc2", "evil", Role::Server, &[], 30)?;
    // The client trusts dc1's (dev) CA, so it gets as far as sending its own certificate.
    let foreign = TlsMaterial::from_pem(
        &format!("{}{}", tls::DEV_CA_CERT_PEM, ca.cert_pem),
        &pair.cert_pem,
        &pair.key_pem,
    )?;
    let refused = async {
        let ch =
            meridian_federation::client::channel(foreign.client_config()?, &wan, "dc1", t).await?;
        FederationClient::new(ch)
            .subscribe(request("dc2", "dc1"))
            .await
            .map_err(anyhow::Error::from)
            .map(|_| ())
    };
    ensure!(
        refused.await.is_err(),
        "a foreign CA's certificate was accepted"
    );

    // A good certificate for dc2 whose request claims dc3.
    let dc2 = TlsMaterial::dev("dc2", "liar", Role::Server)?;
    let ch = meridian_federation::client::channel(dc2.client_config()?, &wan, "dc1", t).await?;
    let mut client = FederationClient::new(ch);
    match client.subscribe(request("dc3", "dc1")).await {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => bail!("a request claiming another DC got {other:?}"),
    }
    match client.subscribe(request("dc2", "dc9")).await {
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
        other => bail!("a request for another origin got {other:?}"),
    }
    // The same client, honest, is served.
    let mut stream = client.subscribe(request("dc2", "dc1")).await?.into_inner();
    let first = tokio::time::timeout(t, stream.message()).await??;
    ensure!(first.is_some(), "an honest subscriber gets the snapshot");

    eventually(10, "three handshake refusals counted", || async {
        metric_sum(&dc1, "meridian_federation_refused_total{reason=\"handshake")
            .await
            .is_ok_and(|n| n >= 3.0)
    })
    .await?;
    ensure!(
        metric(
            &dc1,
            "meridian_federation_refused_total{reason=\"wrong_dc\"}"
        )
        .await?
            >= 1.0
    );
    ensure!(
        metric(
            &dc1,
            "meridian_federation_refused_total{reason=\"wrong_origin\"}"
        )
        .await?
            >= 1.0
    );
    ensure!(dc1.is_running(), "dc1 survived");
    ensure!(dc1.get_json("/v1/catalog/services").await.is_ok());
    Ok(())
}

/// A TCP relay to a local port that can be cut (every connection dropped, new ones closed at
/// once) and healed: a WAN partition on loopback.
pub(crate) struct Relay {
    pub(crate) port: u16,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub(crate) async fn start(target: u16) -> Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(tokio::sync::watch::Sender::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *c.borrow() {
                    continue; // dropped: closed at once
                }
                let mut cut_rx = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Ok(Relay { port, cut, task })
    }

    pub(crate) fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub(crate) fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn request(subscriber: &str, origin: &str) -> SubscribeRequest {
    SubscribeRequest {
        subscriber_dc: subscriber.to_owned(),
        origin_dc: origin.to_owned(),
        subscriber_node: "test".to_owned(),
        ..SubscribeRequest::default()
    }
}
