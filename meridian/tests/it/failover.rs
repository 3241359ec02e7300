//! Geo-failover against real processes: three DCs on their own loopback addresses, `web` behind
//! real TLS (nginx) in dc1 and dc2. Losing dc1 (every process killed), losing only its `web`
//! instances (checks critical) and a WAN partition between dc1 and dc3 alone must each move the
//! answers of `web.service.consul` (DNS, and a connection through the gateway) to dc2, and move
//! them back only after the failback period.
//!
//! Timing targets are the benchmark's (`meridian-bench failover`); these tests check behaviour
//! with generous bounds and print what they measured.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hickory_net::proto::op::{Message, ResponseCode};
use hickory_net::proto::rr::{RData, RecordType};
use serde_json::{Value, json};

use crate::dns::{dns_addr, query};
use crate::federation::make_certs;
use crate::gateway::{Nginx, certificate_for};
use crate::harness::{Agent, AgentConfig, Ports, eventually, header, quick_raft};
use meridian_testkit::config::Peer;

const NAME: &str = "web.service.consul";
/// The failback period these tests configure.
const FAILBACK: Duration = Duration::from_secs(3);

/// Three DCs, each one node on its own address, every DC a configured peer of the others; dc3
/// prefers dc1 then dc2 for names without a DC.
pub(crate) struct World {
    pub(crate) dcs: Vec<Agent>,
    /// `web`'s backend port in dc1 and dc2.
    ports: [u16; 2],
    ca: std::path::PathBuf,
    _backends: Vec<Nginx>,
    _dir: tempfile::TempDir,
}

/// The loopback address of the `i`-th DC's node.
pub(crate) fn host(i: usize) -> String {
    host_in(0, i)
}

/// The loopback address of the `i`-th DC's node in the address plan starting at `127.0.<net +
/// 1>.1`: tests that may run at once and cut or fence links by address each use their own.
pub(crate) fn host_in(net: usize, i: usize) -> String {
    format!("127.0.{}.1", net + i + 1)
}

/// How the World's DCs federate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wan {
    /// Server to server, each DC's peers at the others' WAN ports.
    Direct,
    /// `federation.transport = "gateway"`, each DC's peers at the others' gateways.
    Gateways,
}

impl World {
    async fn start(web_check: bool) -> Result<World> {
        World::start_on(web_check, Wan::Direct, 0, |_| Ok(())).await
    }

    /// [`World::start`] federating over `wan`, its nodes at `host_in(net, i)`; `before` runs once
    /// every port is known and before any agent starts (to fence the WAN to them).
    pub(crate) async fn start_on(
        web_check: bool,
        wan: Wan,
        net: usize,
        before: impl FnOnce(&[Ports]) -> Result<()>,
    ) -> Result<World> {
        let host = |i| host_in(net, i);
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs)?;
        make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1"), ("dc3", "n1")])?;
        // Each backend its own certificate, so that a drill can tell which DC a connection
        // reached; clients trust both.
        let mut backends = Vec::new();
        let mut bundle = String::new();
        for dc in ["dc1", "dc2"] {
            let own = dir.path().join(format!("{dc}-web"));
            std::fs::create_dir_all(&own)?;
            let (cert, key) = certificate_for(&own, NAME, &[])?;
            let name = format!("{dc}-web");
            backends.push(Nginx::start(dir.path(), &name, &cert, &key, &name)?);
            bundle.push_str(&std::fs::read_to_string(&cert)?);
        }
        let cert = dir.path().join("web-ca.pem");
        std::fs::write(&cert, bundle)?;
        let ports: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
        before(&ports)?;
        let mut dcs = Vec::new();
        for i in 0..3 {
            let dc = format!("dc{}", i + 1);
            let peers = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, p)| Peer {
                    dc: format!("dc{}", j + 1),
                    addresses: vec![format!(
                        "{}:{}",
                        host(j),
                        if wan == Wan::Gateways {
                            p.gateway
                        } else {
                            p.wan
                        }
                    )],
                })
                .collect();
            let mut c = AgentConfig::new(&dc, "n1", ports[i], &dir.path().join(&dc));
            c.bind = host(i).parse()?;
            c.servers[0].rpc = format!("{}:{}", host(i), ports[i].rpc);
            c.raft = quick_raft();
            crate::federation::with_certs(&mut c, &certs, peers);
            c.set("failover", "failback_after_ms", FAILBACK.as_millis() as i64);
            if wan == Wan::Gateways {
                c.set("federation", "transport", "gateway");
            }
            if i == 2 {
                c.set("failover", "nearest_n", 0).set(
                    "failover",
                    "datacenters",
                    vec!["dc1", "dc2"],
                );
            }
            let agent = Agent::start(&dc, &c, dir.path(), &[])?;
            dcs.push(agent);
        }
        for a in &mut dcs {
            a.wait_ready().await?;
        }
        for (i, b) in backends.iter().enumerate() {
            let mut def =
                json!({"ID": "web-1", "Name": "web", "Port": b.port, "Address": "127.0.0.1"});
            if web_check {
                def["Check"] = json!({"CheckID": "web-ttl", "TTL": "300s"});
            }
            let r = dcs[i].put_json("/v1/agent/service/register", &def).await?;
            ensure!(r.status().is_success(), "register in dc{}", i + 1);
            if web_check {
                set_check(&dcs[i], "pass").await?;
            }
        }
        let world = World {
            dcs,
            ports: [backends[0].port, backends[1].port],
            ca: cert,
            _backends: backends,
            _dir: dir,
        };
        // Everyone sees everyone's `web` and gateway; dc3 answers with dc1, its first choice.
        for (i, a) in world.dcs.iter().enumerate() {
            for dc in ["dc1", "dc2", "dc3"] {
                let n = if dc == "dc3" { 0 } else { 1 };
                eventually(60, &format!("dc{} sees {dc}", i + 1), || async move {
                    let web = a
                        .get_json(&format!("/v1/health/service/web?dc={dc}&passing=1"))
                        .await;
                    let gw = a
                        .get_json(&format!("/v1/catalog/service/meridian-gateway?dc={dc}"))
                        .await;
                    web.is_ok_and(|v| v.as_array().is_some_and(|v| v.len() == n))
                        && gw.is_ok_and(|v| v.as_array().is_some_and(|v| v.len() == 1))
                })
                .await?;
            }
        }
        if web_check {
            // The checks went from critical to passing: the instances are inside the failback
            // period, and answered from only as a last resort, until it ends.
            tokio::time::sleep(FAILBACK + Duration::from_millis(500)).await;
        }
        let w = &world;
        eventually(
            30,
            "dc3 answers with dc1 over DNS and the gateway",
            || async move { w.answer(2).await == Some(0) && w.route(2).await == Some(0) },
        )
        .await?;
        Ok(world)
    }

    /// Which DC (index into `ports`) `web.service.consul` resolves to in DNS at `dc`, if any.
    pub(crate) async fn answer(&self, dc: usize) -> Option<usize> {
        let m = query(dns_addr(&self.dcs[dc]), NAME, RecordType::SRV, false)
            .await
            .ok()?;
        if m.metadata.response_code != ResponseCode::NoError {
            return None;
        }
        let ports = srv_ports(&m);
        let first = *ports.first()?;
        // One answer never mixes DCs.
        if ports.iter().any(|p| *p != first) {
            return Some(usize::MAX);
        }
        self.ports.iter().position(|p| *p == first)
    }

    /// Which DC's backend answers an HTTPS request through `dc`'s gateway (curl checks the
    /// backend's certificate end to end), if any.
    pub(crate) async fn route(&self, dc: usize) -> Option<usize> {
        self.route_within(dc, 3).await
    }

    /// [`Self::route`] with a client that waits up to `secs`.
    pub(crate) async fn route_within(&self, dc: usize, secs: u32) -> Option<usize> {
        let a = &self.dcs[dc];
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", &secs.to_string(), "--cacert"])
            .arg(&self.ca)
            .args([
                "--resolve",
                &format!("{NAME}:{}:{}", a.ports.gateway, a.host),
            ])
            .arg(format!("https://{NAME}:{}/", a.ports.gateway))
            .output()
            .await
            .ok()?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "dc1-web" => Some(0),
            "dc2-web" => Some(1),
            _ => None,
        }
    }

    /// Polls until `dc` answers with `want` in DNS and through the gateway; the time it took.
    pub(crate) async fn moves_to(
        &self,
        dc: usize,
        want: usize,
        within: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let (answer, route) = (self.answer(dc).await, self.route(dc).await);
            if answer == Some(want) && route == Some(want) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!(
                    "dc{} still answers {answer:?} and routes to {route:?} (want {want}) after {within:?}; log:\n{}",
                    dc + 1,
                    self.dcs[dc].log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks for `period` that `dc` keeps answering with `want`, never another DC.
    pub(crate) async fn stays(&self, dc: usize, want: usize, period: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < period {
            let answer = self.answer(dc).await;
            ensure!(
                answer == Some(want),
                "dc{} answered {answer:?} (want {want}) {:?} into a stable period",
                dc + 1,
                start.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub(crate) async fn status_of(&self, at: usize, dc: &str) -> Result<String> {
        let list = self.dcs[at].get_json("/v1/federation/datacenters").await?;
        list.as_array()
            .and_then(|l| l.iter().find(|e| e["Datacenter"] == dc))
            .and_then(|e| e["Status"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("dc{} does not list {dc}: {list}", at + 1))
    }
}

/// The ports of the SRV records in an answer, in answer order.
fn srv_ports(m: &Message) -> Vec<u16> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect()
}

async fn set_check(agent: &Agent, verb: &str) -> Result<()> {
    let r = agent
        .http
        .put(agent.url(&format!("/v1/agent/check/{verb}/web-ttl")))
        .send()
        .await?;
    ensure!(r.status().is_success(), "check {verb}: {}", r.status());
    Ok(())
}

/// Waits for the answers of dc3 to come back to dc1 after `since`, and checks that they did
/// not come back before the failback period.
pub(crate) async fn fails_back(w: &World, since: Instant) -> Result<Duration> {
    w.moves_to(2, 0, Duration::from_secs(60)).await?;
    let took = since.elapsed();
    ensure!(
        took >= FAILBACK,
        "dc3 answered with dc1 again {took:?} after it recovered, inside the {FAILBACK:?} failback period; log:\n{}",
        w.dcs[2].log_text()
    );
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_whole_dc_moves_answers_and_routes_and_they_return_after_the_stable_period()
-> Result<()> {
    let mut w = World::start(false).await?;
    // dc3 publishes how long finding dc1 lost may take: the default `down_after_ms` (900) plus
    // the slack of a loopback RTT; its own DC has none.
    let list = w.dcs[2].get_json("/v1/federation/datacenters").await?;
    let bound = |dc: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|e| e["Datacenter"] == dc))
            .map(|e| e["DetectionBoundMs"].as_u64())
    };
    ensure!(
        bound("dc1")
            .flatten()
            .is_some_and(|b| (900..1000).contains(&b))
            && bound("dc3") == Some(None),
        "published detection bounds: {list}"
    );
    let lost = Instant::now();
    w.dcs[0].kill9()?;
    // A connection opened at once still goes to dc1 (not yet found down); its ClientHello got no
    // answer, so when dc1 is found down the gateway sends it to dc2, and the client never knows.
    let in_flight = w.route_within(2, 10).await;
    let rescued = lost.elapsed();
    ensure!(
        in_flight == Some(1),
        "a connection opened as dc1 died reached {in_flight:?} (want dc2) after {rescued:?}"
    );
    w.moves_to(2, 1, Duration::from_secs(15)).await?;
    w.moves_to(1, 1, Duration::from_secs(15)).await?;
    println!(
        "dc1 lost: a connection opened at once reached dc2 after {rescued:?}; dc3 answers and routes to dc2 {:?} after the kill",
        lost.elapsed()
    );
    // dc2 answers `web` from its own instances whatever it thinks of dc1, so its verdict may
    // trail dc3's by a probe or two.
    for at in [2, 1] {
        eventually(10, "dc1 found down", || async {
            w.status_of(at, "dc1").await.is_ok_and(|s| s == "down")
        })
        .await?;
    }
    w.stays(2, 1, Duration::from_secs(2)).await?;

    w.dcs[0].restart()?;
    let restarted = Instant::now();
    let back = fails_back(&w, restarted).await?;
    println!(
        "dc1 restarted: dc3 answers with it again {back:?} later (lost for {:?})",
        lost.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_instances_fail_over_even_inside_their_own_dc_and_fail_back_after_the_stable_period()
-> Result<()> {
    let w = World::start(true).await?;
    set_check(&w.dcs[0], "fail").await?;
    let took = w.moves_to(2, 1, Duration::from_secs(15)).await?;
    // Plain names fail over inside dc1 too (Consul's never do).
    w.moves_to(0, 1, Duration::from_secs(15)).await?;
    // HTTP clients see the same answer when they ask for it (`?failover`), and Consul's
    // answer (dc1's critical instance) when they do not.
    let r = w.dcs[0]
        .http
        .get(w.dcs[0].url("/v1/health/service/web?failover&passing"))
        .send()
        .await?;
    let dc = header(&r, "x-meridian-datacenter");
    let entries: Value = r.json().await?;
    ensure!(dc.as_deref() == Some("dc2"), "{dc:?} {entries}");
    ensure!(
        entries[0]["Service"]["Port"] == w.ports[1] && entries[0]["Node"]["Datacenter"] == "dc2",
        "{entries}"
    );
    let plain = w.dcs[0].get_json("/v1/health/service/web").await?;
    ensure!(plain[0]["Service"]["Port"] == w.ports[0], "{plain}");
    println!("web critical in dc1: dc3 answers with dc2 after {took:?}");
    // The DC itself is fine: only the service moved.
    ensure!(w.status_of(2, "dc1").await? == "up");

    set_check(&w.dcs[0], "pass").await?;
    let healthy = Instant::now();
    let back = fails_back(&w, healthy).await?;
    w.moves_to(0, 0, Duration::from_secs(15)).await?;
    println!("web passing in dc1 again: dc3 answers with dc1 {back:?} later");
    Ok(())
}

/// Maintenance mode is a failing check like any other: a service put in maintenance in dc1
/// leaves dc1's DNS answers and gateway routes for dc2's, everywhere, within the bound of a
/// failing check, and comes back after the failback period once maintenance ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_in_maintenance_fails_over_as_a_failing_check_does() -> Result<()> {
    let w = World::start(false).await?;
    let maintenance = |on: bool| {
        let url = w.dcs[0].url(&format!(
            "/v1/agent/service/maintenance/web-1?enable={on}&reason=upgrade"
        ));
        let http = w.dcs[0].http.clone();
        async move {
            let r = http.put(url).send().await?;
            ensure!(r.status().is_success(), "maintenance {on}: {}", r.status());
            anyhow::Ok(())
        }
    };
    maintenance(true).await?;
    let took = w.moves_to(2, 1, Duration::from_secs(15)).await?;
    w.moves_to(0, 1, Duration::from_secs(15)).await?;
    println!("web in maintenance in dc1: dc3 answers and routes with dc2 after {took:?}");
    ensure!(w.status_of(2, "dc1").await? == "up");
    maintenance(false).await?;
    let back = fails_back(&w, Instant::now()).await?;
    println!("web out of maintenance: dc3 answers with dc1 {back:?} later");
    Ok(())
}

/// A WAN partition on loopback: every packet between two addresses dropped (a blackhole, no
/// reset), in both directions, until dropped.
pub(crate) struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    pub(crate) fn cut(a: &str, b: &str) -> Result<Partition> {
        let mut p = Partition { rules: Vec::new() };
        for (s, d) in [(a, b), (b, a)] {
            let rule: Vec<String> = ["INPUT", "-s", s, "-d", d, "-j", "DROP"]
                .iter()
                .map(|x| (*x).to_owned())
                .collect();
            // Rules a killed earlier run left behind would cut the link before the test does.
            for _ in 0..16 {
                let gone = Command::new("iptables")
                    .arg("-D")
                    .args(&rule)
                    .stderr(std::process::Stdio::null())
                    .status();
                if !gone.is_ok_and(|s| s.success()) {
                    break;
                }
            }
            let out = Command::new("iptables")
                .arg("-I")
                .args(&rule)
                .output()
                .context("running iptables (the partition test needs root and iptables)")?;
            ensure!(
                out.status.success(),
                "iptables: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            p.rules.push(rule);
        }
        Ok(p)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(rule).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_dc1_and_dc3_fails_over_dc3_only() -> Result<()> {
    let w = World::start(false).await?;
    let cut = Partition::cut(&host(0), &host(2))?;
    let took = w.moves_to(2, 1, Duration::from_secs(15)).await?;
    println!("dc1 cut from dc3: dc3 answers with dc2 after {took:?}");
    ensure!(w.status_of(2, "dc1").await? == "down");
    // dc2 still reaches dc1: it neither marks it down nor stops answering for it.
    ensure!(w.status_of(1, "dc1").await? == "up");
    let m = query(
        dns_addr(&w.dcs[1]),
        "web.service.dc1.consul",
        RecordType::SRV,
        false,
    )
    .await?;
    let ports = srv_ports(&m);
    ensure!(
        ports == [w.ports[0]],
        "dc2 answers dc1's web with {ports:?}"
    );
    // dc3 no longer answers for dc1 even when asked by name: its replica is stale and the DC
    // unreachable.
    let m = query(
        dns_addr(&w.dcs[2]),
        "web.service.dc1.consul",
        RecordType::SRV,
        false,
    )
    .await?;
    ensure!(m.answers.is_empty(), "dc3 still answers for dc1: {m:?}");
    w.stays(2, 1, Duration::from_secs(2)).await?;

    drop(cut);
    let healed = Instant::now();
    let back = fails_back(&w, healed).await?;
    println!("partition healed: dc3 answers with dc1 {back:?} later");
    let v: Value = w.dcs[2].get_json("/v1/federation/datacenters").await?;
    ensure!(v.as_array().is_some_and(|l| l.len() == 3), "{v}");
    Ok(())
}
