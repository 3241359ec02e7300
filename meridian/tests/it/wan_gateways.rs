//! Only the gateways face the WAN (`federation.transport = "gateway"`): three DCs on their own
//! loopback addresses, each DC's peers named by their gateways' addresses alone, and an iptables
//! fence that lets a packet from one DC's address to another's through only when it goes to or
//! comes from a gateway port, and drops and counts everything else. Federation, DNS answers for
//! other DCs, cross-DC TLS, and failover when a DC is lost must all work as in the direct mode,
//! and the fence must count no packet.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use crate::failover::{Wan, World, fails_back, host_in};
use crate::federation::with_certs;
use crate::gateway::{Nginx, certificate_for};
use crate::harness::{Agent, AgentConfig, Ports, eventually, quick_raft};
use meridian_testkit::config::Peer;

/// The iptables fence: a chain of its own (named after this process), jumped to from INPUT.
struct GatewaysOnly {
    chain: String,
}

/// This file's address plans (`host_in`): apart from each other and from the failover tests',
/// since tests run two at a time and each fences or cuts its own addresses.
const WORLD_NET: usize = 10;
const PAIR_NET: usize = 20;
const JOIN_NET: usize = 30;

/// The chains' name prefix; the process id follows.
const PREFIX: &str = "MWANGW";

fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables (this test needs root and iptables)")?;
    ensure!(
        out.status.success(),
        "iptables {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl GatewaysOnly {
    /// Fences the DCs at `host_in(net, i)` whose ports are `ports[i]`.
    fn new(net: usize, ports: &[Ports]) -> Result<GatewaysOnly> {
        let host = |i| host_in(net, i);
        remove_stale_chains();
        let chain = format!("{PREFIX}{}", std::process::id());
        let fence = GatewaysOnly { chain };
        let c = fence.chain.as_str();
        iptables(&["-N", c])?;
        for (a, pa) in ports.iter().enumerate() {
            for (b, pb) in ports.iter().enumerate() {
                if a == b {
                    continue;
                }
                let (src, dst) = (host(a), host(b));
                let (to_gw, from_gw) = (pb.gateway.to_string(), pa.gateway.to_string());
                for proto in ["tcp", "udp"] {
                    for (dir, port) in [("--dport", &to_gw), ("--sport", &from_gw)] {
                        iptables(&[
                            "-A", c, "-s", &src, "-d", &dst, "-p", proto, dir, port, "-j", "RETURN",
                        ])?;
                    }
                }
                // The kernel's own errors about gateway traffic (port unreachable, after a
                // gateway died) are not traffic.
                iptables(&[
                    "-A", c, "-s", &src, "-d", &dst, "-p", "icmp", "-j", "RETURN",
                ])?;
                iptables(&["-A", c, "-s", &src, "-d", &dst, "-j", "DROP"])?;
            }
        }
        iptables(&["-I", "INPUT", "-j", c])?;
        Ok(fence)
    }

    /// Fails if the fence dropped any packet: one between two DCs that did not go to or come
    /// from a gateway. The listing says which pair.
    fn check(&self) -> Result<()> {
        let listing = iptables(&["-L", &self.chain, "-v", "-n", "-x"])?;
        let dropped: u64 = listing
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        ensure!(
            dropped == 0,
            "{dropped} packets between DCs went elsewhere than a gateway:\n{listing}"
        );
        Ok(())
    }
}

impl Drop for GatewaysOnly {
    fn drop(&mut self) {
        remove_chain(&self.chain);
    }
}

fn remove_chain(chain: &str) {
    let _ = iptables(&["-D", "INPUT", "-j", chain]);
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

/// Chains left by runs that were killed (their process is gone): they would fence addresses
/// this run uses.
fn remove_stale_chains() {
    let Ok(rules) = iptables(&["-S"]) else {
        return;
    };
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain.strip_prefix(PREFIX) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_chain(chain);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_the_gateways_reachable_dcs_federate_route_and_fail_over() -> Result<()> {
    let mut fence = None;
    // `World::start_on` waits until every DC sees the others' `web` and gateways, and dc3
    // answers `web` with dc1 over DNS and through its gateway (TLS checked end to end).
    let mut w = World::start_on(false, Wan::Gateways, WORLD_NET, |ports| {
        fence = Some(GatewaysOnly::new(WORLD_NET, ports)?);
        Ok(())
    })
    .await?;
    let fence = fence.context("the fence was set")?;
    fence.check()?;
    // A registration made now replicates through the gateways too.
    let r = w.dcs[1]
        .put_json(
            "/v1/agent/service/register",
            &serde_json::json!({"ID": "api-1", "Name": "api", "Port": 9000, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success(), "register api in dc2");
    for at in [0, 2] {
        let a = &w.dcs[at];
        eventually(15, "dc2's api replicated", || async move {
            a.get_json("/v1/catalog/service/api?dc=dc2")
                .await
                .is_ok_and(|v| v.as_array().is_some_and(|l| l.len() == 1))
        })
        .await?;
    }
    // The streams did go through the gateways: dc1's gateway handed federation streams of the
    // other DCs to its server (counted when they end; these are open, so count the tunnel).
    let tunnelled = w.dcs[0]
        .metric("meridian_gateway_tunnel_streams_in_total")
        .await?;
    ensure!(tunnelled >= 2.0, "dc1's gateway took {tunnelled} streams");

    // A drill from dc2's API: dc1 down for 3 s, probed from dc2 and from dc3, whose node dc2
    // reaches only through the relay (its DNS server, its gateway and its API, as a client in
    // dc3 would), and dc1 drained and restored through the relay too.
    let report = api_drill(&w.dcs[1], "dc1", "web", "3s").await?;
    crate::drill::check_dc3(&report, 3000.0)?;
    println!(
        "gateways only: a drill of dc1 from dc2, dc3 probed through the relay: {}",
        crate::drill::entry(&report, "dc3")?
    );
    let relayed = w.dcs[2]
        .metric("meridian_federation_relayed_total{target=\"dns\",outcome=\"answered\"}")
        .await?;
    ensure!(relayed > 0.0, "dc3's node relayed no DNS query");
    fence.check()?;

    // Losing dc1: dc3's answers and routes move to dc2, as in the direct mode.
    let lost = Instant::now();
    w.dcs[0].kill9()?;
    w.moves_to(2, 1, Duration::from_secs(15)).await?;
    println!(
        "gateways only: dc1 lost, dc3 answers and routes to dc2 {:?} after the kill",
        lost.elapsed()
    );
    eventually(10, "dc1 found down by dc3", || async {
        w.status_of(2, "dc1").await.is_ok_and(|s| s == "down")
    })
    .await?;
    // And back: dc1's return is seen through the gateways (its federation streams resume).
    w.dcs[0].restart()?;
    let back = fails_back(&w, Instant::now()).await?;
    println!("gateways only: dc1 restarted, dc3 answers with it again {back:?} later");
    fence.check()?;
    Ok(())
}

/// Runs a drill (`kind` dc-down of `dc`, probing `service`, lasting `for_`) through `agent`'s
/// API and waits for it to end; its report.
async fn api_drill(
    agent: &Agent,
    dc: &str,
    service: &str,
    for_: &str,
) -> Result<serde_json::Value> {
    let r = agent
        .http
        .post(agent.url("/v1/operator/drill"))
        .json(&serde_json::json!({"Kind": "dc-down", "Datacenter": dc, "Service": service, "For": for_}))
        .send()
        .await?;
    ensure!(
        r.status().as_u16() == 202,
        "drill refused: {}",
        r.text().await?
    );
    let id = r.json::<serde_json::Value>().await?["ID"]
        .as_str()
        .context("the drill's ID")?
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = agent.get_json(&format!("/v1/operator/drill/{id}")).await?;
        match d["Phase"].as_str() {
            Some("done") => return Ok(d["Report"].clone()),
            Some("failed") => anyhow::bail!("the drill failed: {d:#}"),
            _ => {}
        }
        ensure!(
            Instant::now() < deadline,
            "the drill did not end in 120 s: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Which DC answers an HTTPS request for `name` through the gateway at `gateway` (curl checks
/// the backend's certificate, `ca`, end to end): the body, if any.
async fn through(gateway: std::net::SocketAddr, name: &str, ca: &std::path::Path) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "3", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            &format!("{name}:{}:{}", gateway.port(), gateway.ip()),
        ])
        .arg(format!("https://{name}:{}/", gateway.port()))
        .output()
        .await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The gateways of `dc` that `agent`'s catalog lists, by node, with their check's status.
async fn gateways(agent: &Agent, dc: &str) -> Result<Vec<(String, String)>> {
    let list = agent
        .get_json(&format!("/v1/health/service/meridian-gateway?dc={dc}"))
        .await?;
    Ok(list
        .as_array()
        .context("a list")?
        .iter()
        .map(|e| {
            let worst = e["Checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["Status"].as_str())
                .max_by_key(|s| match *s {
                    "critical" => 2,
                    "warning" => 1,
                    _ => 0,
                })
                .unwrap_or("passing");
            (
                e["Node"]["Node"].as_str().unwrap_or_default().to_owned(),
                worst.to_owned(),
            )
        })
        .collect())
}

/// The production shape: dc1's server has no gateway of its own and two gateway-only nodes on
/// its edge, which announce themselves to it; dc2 knows dc1 only by those two gateways. Both
/// are registered in dc1's catalog (and seen by dc2), carry federation and client traffic; one
/// killed (the one dc2's tunnel uses) is found dead by dc1's leader, left out, and federation
/// and traffic carry on through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_gateway_nodes_carry_their_dc_and_a_dead_one_is_left_out() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    crate::federation::make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1")])?;
    for g in ["g1", "g2"] {
        crate::federation::make_role_cert(&certs, "dc1", g, "gateway")?;
    }
    let name = "web.service.dc1.consul";
    let (cert, key) = certificate_for(dir.path(), name, &[])?;
    let web = Nginx::start(dir.path(), "dc1-web", &cert, &key, "dc1-web")?;
    let (p1, p2) = (Ports::free(), Ports::free());
    let (pg1, pg2) = (Ports::free(), Ports::free());
    let peer = |dc: &str, ports: &[Ports]| Peer {
        dc: dc.to_owned(),
        addresses: ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.gateway))
            .collect(),
    };
    let mut c1 = AgentConfig::new("dc1", "n1", p1, &dir.path().join("dc1"));
    c1.raft = quick_raft();
    with_certs(&mut c1, &certs, vec![peer("dc2", &[p2])]);
    c1.set("federation", "transport", "gateway")
        .set("gateway", "enabled", false);
    let mut dc1 = Agent::start("dc1", &c1, dir.path(), &[])?;
    let mut c2 = AgentConfig::new("dc2", "n1", p2, &dir.path().join("dc2"));
    c2.raft = quick_raft();
    with_certs(&mut c2, &certs, vec![peer("dc1", &[pg1, pg2])]);
    c2.set("federation", "transport", "gateway");
    let mut dc2 = Agent::start("dc2", &c2, dir.path(), &[])?;
    dc1.wait_ready().await?;
    dc2.wait_ready().await?;
    let follow = format!("127.0.0.1:{}", p1.wan);
    let mut edge = Vec::new();
    for (g, p) in [("g1", pg1), ("g2", pg2)] {
        let mut c = AgentConfig::new("dc1", g, p, &dir.path().join(g));
        c.gateway_only = true;
        with_certs(&mut c, &certs, Vec::new());
        c.set("federation", "transport", "gateway");
        edge.push(Agent::start(g, &c, dir.path(), &["--follow", &follow])?);
    }
    let r = dc1
        .put_json(
            "/v1/agent/service/register",
            &serde_json::json!({"ID": "web-1", "Name": "web", "Port": web.port, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success(), "register web in dc1");
    // Both gateway-only nodes are in dc1's catalog, alive, and dc2 sees them.
    for (at, who) in [(&dc1, "dc1"), (&dc2, "dc2")] {
        eventually(
            30,
            &format!("{who} lists dc1's two gateways, passing"),
            || async move {
                gateways(at, "dc1").await.is_ok_and(|g| {
                    g.len() == 2 && g.iter().all(|(n, s)| n.starts_with('g') && s == "passing")
                })
            },
        )
        .await?;
    }
    eventually(30, "dc2 reaches dc1's web through the gateways", || async {
        through(dc2.gateway(), name, &cert).await == "dc1-web"
    })
    .await?;
    // dc1's server follows dc2 through its gateway-only nodes (it has no gateway of its own).
    crate::federation::converged(&dc2, "dc2", &dc1, 30).await?;

    // The gateway dc2's tunnel to dc1 goes to: killed.
    let metrics = dc2.metrics().await?;
    let used = [(0, pg1), (1, pg2)]
        .into_iter()
        .find(|(_, p)| metrics.contains(&format!("gateway=\"127.0.0.1:{}\"", p.gateway)))
        .map(|(i, _)| i)
        .context("dc2's tunnel goes to one of dc1's gateway-only nodes")?;
    let dead = format!("g{}", used + 1);
    edge[used].kill9()?;
    let killed = Instant::now();
    eventually(
        15,
        "dc1's leader finds the dead gateway critical",
        || async {
            gateways(&dc1, "dc1")
                .await
                .is_ok_and(|g| g.iter().any(|(n, s)| *n == dead && s == "critical"))
        },
    )
    .await?;
    println!(
        "{dead} killed: critical in dc1's catalog after {:?}",
        killed.elapsed()
    );
    // A registration made now in dc1 reaches dc2 through the other gateway, and so does a
    // client connection.
    let r = dc1
        .put_json(
            "/v1/agent/service/register",
            &serde_json::json!({"ID": "api-1", "Name": "api", "Port": 9000, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success(), "register api in dc1");
    let registered = Instant::now();
    eventually(15, "dc1's api replicated to dc2", || async {
        dc2.get_json("/v1/catalog/service/api?dc=dc1")
            .await
            .is_ok_and(|v| v.as_array().is_some_and(|l| l.len() == 1))
    })
    .await?;
    println!(
        "a registration in dc1 reached dc2 {:?} after it was made ({:?} after the kill)",
        registered.elapsed(),
        killed.elapsed()
    );
    eventually(15, "dc2 still reaches dc1's web", || async {
        through(dc2.gateway(), name, &cert).await == "dc1-web"
    })
    .await?;
    // One gateway of two lost is not the DC lost: dc2 never found dc1 down meanwhile.
    let log = dc2.log_text();
    ensure!(
        !log.contains("datacenter down"),
        "dc2 found dc1 down when one of its two gateways died:\n{log}"
    );
    Ok(())
}

/// A one-node DC `dc<i+1>` on its own loopback address (in the address plan `net`), federating
/// through the gateways with `peers` (indices: the others' gateways), changed by `customize`.
#[allow(clippy::too_many_arguments)]
fn gateway_dc(
    net: usize,
    dir: &std::path::Path,
    certs: &std::path::Path,
    i: usize,
    ports: &[Ports],
    peers: &[usize],
    customize: impl FnOnce(&mut AgentConfig),
) -> Result<Agent> {
    let host = |i| host_in(net, i);
    let dc = format!("dc{}", i + 1);
    let mut c = AgentConfig::new(&dc, "n1", ports[i], &dir.join(&dc));
    c.bind = host(i).parse()?;
    c.servers[0].rpc = format!("{}:{}", host(i), ports[i].rpc);
    c.raft = quick_raft();
    let peers = peers
        .iter()
        .map(|j| Peer {
            dc: format!("dc{}", j + 1),
            addresses: vec![format!("{}:{}", host(*j), ports[*j].gateway)],
        })
        .collect();
    with_certs(&mut c, certs, peers);
    c.set("federation", "transport", "gateway");
    customize(&mut c);
    Agent::start(&dc, &c, dir, &[])
}

/// A partition between two DCs that federate through their gateways heals by digest: only the
/// changes made meanwhile cross (under 1/50 of the full sync), as in the direct mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_gateways_a_partition_heals_by_digest() -> Result<()> {
    use crate::federation::{converged, metric, register_many, remote};
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    crate::federation::make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1")])?;
    let ports = [Ports::free(), Ports::free()];
    let fence = GatewaysOnly::new(PAIR_NET, &ports)?;
    // A small change window: ten changes while cut push dc2's index out of it, so the heal must
    // use the digest catch-up.
    let mut dc1 = gateway_dc(PAIR_NET, dir.path(), &certs, 0, &ports, &[1], |c| {
        c.set("federation", "resume_window", 5);
    })?;
    let mut dc2 = gateway_dc(PAIR_NET, dir.path(), &certs, 1, &ports, &[0], |_| {})?;
    dc1.wait_ready().await?;
    dc2.wait_ready().await?;
    register_many(&dc1, (0..10_000).map(|i| format!("bulk{i}"))).await?;
    converged(&dc1, "dc1", &dc2, 120).await?;
    const RECEIVED: &str = "meridian_federation_received_bytes_total{dc=\"dc1\"}";
    let full = metric(&dc2, RECEIVED).await?;
    ensure!(remote(&dc2, "dc1").await?["Instances"] == 10_001);

    let cut = crate::failover::Partition::cut(&host_in(PAIR_NET, 0), &host_in(PAIR_NET, 1))?;
    eventually(30, "dc2 sees the link down", || async {
        remote(&dc2, "dc1")
            .await
            .is_ok_and(|r| r["Connected"] == false)
    })
    .await?;
    let before = metric(&dc2, RECEIVED).await?;
    for i in 0..5 {
        let r = dc1
            .put_json(
                &format!("/v1/agent/service/deregister/bulk{i}"),
                &serde_json::json!({}),
            )
            .await?;
        ensure!(r.status().is_success());
    }
    register_many(&dc1, (0..5).map(|i| format!("new{i}"))).await?;
    drop(cut);
    converged(&dc1, "dc1", &dc2, 60).await?;
    let resent = metric(&dc2, RECEIVED).await? - before;
    let partial = metric(&dc2, "meridian_federation_partial_syncs_total{dc=\"dc1\"}").await?;
    println!(
        "through the gateways: full sync of 10,000 instances {full} bytes; heal after 10 changes {resent} bytes"
    );
    ensure!(partial >= 1.0, "the heal was a digest catch-up ({partial})");
    ensure!(
        resent * 50.0 < full,
        "the heal received {resent} bytes, the full sync {full}"
    );
    fence.check()?;
    Ok(())
}

/// Joining through a gateway: dc2 is given only the address of dc1's gateway (`join`), dc1
/// nothing of dc2. Over the fence, dc2's gateway learns dc1 from that gateway's certificate, and
/// the two DCs federate both ways, answer for each other in DNS, and route TLS to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dc_joins_another_through_its_gateway_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    crate::federation::make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1")])?;
    let ports = [Ports::free(), Ports::free()];
    let fence = GatewaysOnly::new(JOIN_NET, &ports)?;
    let dc1_gateway = format!("{}:{}", host_in(JOIN_NET, 0), ports[0].gateway);
    let mut dc1 = gateway_dc(JOIN_NET, dir.path(), &certs, 0, &ports, &[], |_| {})?;
    let mut dc2 = gateway_dc(JOIN_NET, dir.path(), &certs, 1, &ports, &[], |c| {
        c.set("federation", "join", vec![dc1_gateway.as_str()]);
    })?;
    dc1.wait_ready().await?;
    dc2.wait_ready().await?;
    let (cert, key) = certificate_for(dir.path(), "web.service.dc1.consul", &[])?;
    let web = Nginx::start(dir.path(), "dc1-web", &cert, &key, "dc1-web")?;
    for (agent, body) in [
        (
            &dc1,
            serde_json::json!({"ID": "web-1", "Name": "web", "Port": web.port, "Address": "127.0.0.1"}),
        ),
        (
            &dc2,
            serde_json::json!({"ID": "api-1", "Name": "api", "Port": 9000, "Address": "127.0.0.1"}),
        ),
    ] {
        let r = agent.put_json("/v1/agent/service/register", &body).await?;
        ensure!(r.status().is_success(), "register in {}", agent.name);
    }
    for (agent, path) in [
        (&dc2, "/v1/catalog/service/web?dc=dc1"),
        (&dc1, "/v1/catalog/service/api?dc=dc2"),
    ] {
        eventually(60, &format!("{} reads {path}", agent.name), || async move {
            agent
                .get_json(path)
                .await
                .is_ok_and(|v| v.as_array().is_some_and(|l| l.len() == 1))
        })
        .await?;
    }
    let answer = crate::dns::query(
        dc2.dns(),
        "web.service.dc1.consul.",
        hickory_net::proto::rr::RecordType::SRV,
        false,
    )
    .await?;
    ensure!(
        crate::dns::srv_lines(&answer).len() == 1,
        "dc2 answers for dc1's web: {answer:?}"
    );
    eventually(30, "dc2 routes TLS to dc1's web", || async {
        through(dc2.gateway(), "web.service.dc1.consul", &cert).await == "dc1-web"
    })
    .await?;
    ensure!(
        dc2.log_text().contains("joined through a gateway"),
        "dc2 says whom it joined"
    );
    fence.check()?;
    Ok(())
}
