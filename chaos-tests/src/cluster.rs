//! A whole federation of real `meridian` processes on loopback: N datacenters of M nodes, every
//! inter-DC path through a [`Wan`] link, a TLS backend for `web` in some DCs, federation
//! certificates made at run time, and a run folder holding configs, data and logs (kept when a
//! run fails, removed when it passes).
//!
//! Every agent configuration is made by [`agent_config`] (as testkit's typed
//! [`AgentConfig`]), and only there, so settings every agent needs (security defaults, say) are
//! added in one place. Ports, processes, certificates and waits are testkit's.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use meridian_identity::{PemPair, create_ca};
use meridian_testkit::certs::{NodeFiles, Pki};
use meridian_testkit::config::{Acl, AgentConfig, Federation, Peer, Server};
use meridian_testkit::process::Proc;
use meridian_testkit::{Ports, free_port_on, wait};
use serde_json::{Value, json};

use crate::addr::{backend_ip, dc_name, link_ip, node_ip};
use crate::backend::{self, Backend, SERVICE};
use crate::history::History;
use crate::kernel;
use crate::link::Wan;

/// The failback period agents are configured with.
pub const FAILBACK: Duration = Duration::from_secs(3);
/// `down_after_ms` agents are configured with (the default).
pub const DOWN_AFTER: Duration = Duration::from_millis(900);

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Nodes per DC (1, 3 or 5); DC `d` is `nodes[d - 1]`.
    pub nodes: Vec<usize>,
    /// DCs with a `web` backend; the others fail over to these, in this order.
    pub web_in: Vec<usize>,
    /// The binary under test.
    pub bin: PathBuf,
    /// Extra environment for every agent (a fault to compile in, for the broken build).
    pub env: Vec<(String, String)>,
    /// Seeds the links' RNG.
    pub seed: u64,
    /// How links are cut (`proxy` or `iptables`; default: see [`kernel::choose`]).
    pub cuts: Option<&'static str>,
    /// Only the gateways face the WAN: federation goes through them
    /// (`federation.transport = "gateway"`), peers are named by their gateways, and the links
    /// carry the gateway port alone; no link exists for a server's WAN port, so a server cannot
    /// reach another DC at all but through a gateway.
    pub gateways_only: bool,
}

/// Where a node is, for clients (shared with the workload; the process stays in the cluster).
#[derive(Clone, Debug)]
pub struct NodeAddr {
    /// Its DC (from 1).
    pub dc: usize,
    /// Its index in the DC (from 1).
    pub idx: usize,
    /// Its node name (`n<idx>`).
    pub name: String,
    /// Its listen address.
    pub ip: IpAddr,
    /// Its ports.
    pub ports: Ports,
}

impl NodeAddr {
    /// `http://ip:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.ports.http)
    }

    /// The DNS server.
    pub fn dns(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.ports.dns)
    }

    /// The gateway.
    pub fn gateway(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.ports.gateway)
    }

    /// `dcD-nI`, for logs and reports.
    pub fn label(&self) -> String {
        format!("{}-{}", dc_name(self.dc), self.name)
    }

    /// `ip:port` of its rpc port, as `/v1/status/leader` names a leader.
    pub fn rpc(&self) -> String {
        SocketAddr::new(self.ip, self.ports.rpc).to_string()
    }
}

/// Everything [`agent_config`] needs to make one agent's configuration.
#[derive(Debug)]
pub struct AgentSpec<'a> {
    /// The node.
    pub node: &'a NodeAddr,
    /// Its DC's voters.
    pub servers: Vec<&'a NodeAddr>,
    /// Every other DC's nodes (reached at their link addresses).
    pub peers: Vec<&'a NodeAddr>,
    /// Its data folder.
    pub data_dir: &'a Path,
    /// Its certificate files (the CA's, its own and its key; see [`Pki::node_files`]).
    pub certs: &'a NodeFiles,
    /// DCs to fail over to in order, when the node's own DC has no `web`.
    pub failover_order: Option<&'a [usize]>,
    /// Federation through the gateways, peers named by their gateways ([`ClusterSpec`]).
    pub gateways_only: bool,
}

/// The management token of every agent the harness starts; its HTTP clients present it.
pub const TOKEN: &str = "meridian-chaos-management-token";

/// An HTTP client of the agents' API that presents [`TOKEN`].
pub fn api_client(timeout: Duration) -> Result<reqwest::Client> {
    meridian_testkit::agent::api_client_with(Some(TOKEN), timeout)
}

/// The configuration of one agent. The one place agent configs are made: bound to its node
/// address, advertising its WAN face, fast Raft (testkit's), its DC's voters, the failback
/// period (and the failover order in a DC without `web`), mutual TLS with its certificates,
/// the other DCs at their link addresses, and the API behind [`TOKEN`].
pub fn agent_config(c: &AgentSpec<'_>) -> AgentConfig {
    let n = c.node;
    let mut cfg = AgentConfig::new(&dc_name(n.dc), &n.name, n.ports, c.data_dir);
    cfg.node_id = n.idx as u64;
    cfg.bind = n.ip;
    cfg.advertise = Some(link_ip(n.dc, n.idx).into());
    cfg.servers = c
        .servers
        .iter()
        .map(|srv| Server {
            id: srv.idx as u64,
            rpc: srv.rpc(),
        })
        .collect();
    cfg.set(
        "failover",
        "failback_after_ms",
        i64::try_from(FAILBACK.as_millis()).unwrap_or(i64::MAX),
    );
    if let Some(order) = c.failover_order {
        let dcs: Vec<String> = order.iter().map(|d| dc_name(*d)).collect();
        cfg.set("failover", "nearest_n", 0);
        cfg.set("failover", "datacenters", dcs);
    }
    let mut by_dc: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for p in &c.peers {
        let port = if c.gateways_only {
            p.ports.gateway
        } else {
            p.ports.wan
        };
        by_dc
            .entry(p.dc)
            .or_default()
            .push(SocketAddr::new(link_ip(p.dc, p.idx).into(), port).to_string());
    }
    cfg.federation = Some(Federation {
        peers: by_dc
            .into_iter()
            .map(|(d, addresses)| Peer {
                dc: dc_name(d),
                addresses,
            })
            .collect(),
        ..Federation::with_certs(&c.certs.ca, &c.certs.cert, &c.certs.key)
    });
    if c.gateways_only {
        cfg.set("federation", "transport", "gateway");
    }
    // The rpc port runs mutual TLS with the certificates above; the API needs the token.
    cfg.insecure = false;
    cfg.acl = Some(Acl::management(TOKEN));
    cfg
}

/// A node: where it is and its process.
#[derive(Debug)]
pub struct Node {
    /// Its address and ports.
    pub addr: NodeAddr,
    /// Its process.
    pub proc: Proc,
    /// The scenario killed it (a dead process is then no finding).
    pub killed_on_purpose: bool,
}

/// A running federation.
pub struct Cluster {
    /// What was started.
    pub spec: ClusterSpec,
    /// Every node, DC by DC.
    pub nodes: Vec<Node>,
    /// The WAN links.
    pub wan: Wan,
    /// The run's record.
    pub history: History,
    /// CA of the backends' certificates.
    pub web_ca: PemPair,
    /// Backend addresses per DC.
    pub backends: BTreeMap<usize, SocketAddr>,
    _backends: Vec<Backend>,
    /// HTTP client for control and checks.
    pub http: reqwest::Client,
    /// Directed cuts in force (from, to), for the reachability ground truth.
    cuts: BTreeSet<(usize, usize)>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Cluster {
    /// Starts everything and waits until every node sees every DC up with its services.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        ensure!(spec.bin.exists(), "{} does not exist", spec.bin.display());
        let base =
            std::env::var_os("MERIDIAN_CHAOS_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new()
            .prefix("meridian-chaos-")
            .tempdir_in(&base)?;
        let path = dir.path().to_owned();
        let kernel = kernel::choose(spec.cuts)?;
        let wan = Wan::new(spec.seed, kernel);
        let history = History::new();
        history.fault(format!(
            "run folder {}; binary {}; WAN cuts by {}; shaping by the proxy (netem {})",
            path.display(),
            spec.bin.display(),
            wan.cut_mechanism(),
            if kernel::netem_available() {
                "present but unused"
            } else {
                "absent"
            }
        ));

        // The federation's CA and every node's certificate, in `certs/`.
        let pki = Pki::new(&path.join("certs"))?;
        let mut addrs = Vec::new();
        let mut certs = Vec::new();
        for (d0, count) in spec.nodes.iter().enumerate() {
            let dc = d0 + 1;
            for idx in 1..=*count {
                let ports = Ports::free_on(&[node_ip(dc, idx).into(), link_ip(dc, idx).into()]);
                let name = format!("n{idx}");
                certs.push(pki.node_files(&dc_name(dc), &name, &[])?);
                addrs.push(NodeAddr {
                    dc,
                    idx,
                    name,
                    ip: node_ip(dc, idx).into(),
                    ports,
                });
            }
        }
        for a in &addrs {
            if !spec.gateways_only {
                wan.proxy_tcp(
                    a.dc,
                    (link_ip(a.dc, a.idx), a.ports.wan).into(),
                    (a.ip, a.ports.wan).into(),
                )
                .await?;
            }
            wan.proxy_udp(
                a.dc,
                (link_ip(a.dc, a.idx), a.ports.gateway).into(),
                (a.ip, a.ports.gateway).into(),
            )
            .await?;
            // The tunnel's TCP transport, should a config ask for it.
            wan.proxy_tcp(
                a.dc,
                (link_ip(a.dc, a.idx), a.ports.gateway).into(),
                (a.ip, a.ports.gateway).into(),
            )
            .await?;
        }

        let web_ca = create_ca("meridian chaos web")?;
        let mut backends = BTreeMap::new();
        let mut servers_up = Vec::new();
        for &dc in &spec.web_in {
            let port = free_port_on(&[backend_ip(dc).into()]);
            let b = Backend::start(dc, (backend_ip(dc), port).into(), &web_ca).await?;
            backends.insert(dc, b.addr);
            servers_up.push(b);
        }

        let mut nodes = Vec::new();
        for (a, files) in addrs.iter().zip(&certs) {
            let data = path.join(a.label());
            let file = path.join(format!("{}.toml", a.label()));
            agent_config(&AgentSpec {
                node: a,
                servers: addrs.iter().filter(|b| b.dc == a.dc).collect(),
                peers: addrs.iter().filter(|b| b.dc != a.dc).collect(),
                data_dir: &data,
                certs: files,
                failover_order: (!spec.web_in.contains(&a.dc)).then_some(spec.web_in.as_slice()),
                gateways_only: spec.gateways_only,
            })
            .write(&file)?;
            let proc = Proc::start(
                &a.label(),
                &spec.bin,
                vec![
                    "agent".into(),
                    "--config".into(),
                    file.display().to_string(),
                ],
                spec.env.clone(),
                &path.join(format!("{}.log", a.label())),
            )?;
            nodes.push(Node {
                addr: a.clone(),
                proc,
                killed_on_purpose: false,
            });
        }
        let mut c = Cluster {
            spec,
            nodes,
            wan,
            history,
            web_ca,
            backends,
            _backends: servers_up,
            http: api_client(Duration::from_secs(5))?,
            cuts: BTreeSet::new(),
            dir: Some(dir),
            path,
        };
        if let Err(e) = c.settle_start().await {
            let kept = c.keep();
            return Err(e.context(format!("configs and logs kept in {}", kept.display())));
        }
        Ok(c)
    }

    async fn settle_start(&mut self) -> Result<()> {
        let dcs = self.spec.nodes.len();
        for dc in 1..=dcs {
            self.wait_leader(dc, Duration::from_secs(60)).await?;
        }
        for (&dc, addr) in &self.backends.clone() {
            let node = self
                .addrs()
                .into_iter()
                .find(|a| a.dc == dc)
                .context("a node")?;
            let body = json!({"ID": "web-1", "Name": SERVICE, "Port": addr.port(), "Address": addr.ip().to_string()});
            let r = self
                .http
                .put(node.url("/v1/agent/service/register"))
                .json(&body)
                .send()
                .await?;
            ensure!(
                r.status().is_success(),
                "registering web in dc{dc}: {}",
                r.status()
            );
        }
        // Every node sees every DC's gateways and web, and every DC up.
        let want_web: BTreeMap<usize, usize> = (1..=dcs)
            .map(|d| (d, usize::from(self.backends.contains_key(&d))))
            .collect();
        let addrs = self.addrs();
        let client = self.http.clone();
        self.wait_for(
            Duration::from_secs(90),
            "every node to see every DC up with its services",
            || {
                let (http, addrs, want_web) = (client.clone(), addrs.clone(), want_web.clone());
                async move {
                    for a in &addrs {
                        for (&dc, &n) in &want_web {
                            let url = a.url(&format!(
                                "/v1/health/service/{SERVICE}?dc={}&passing=1",
                                dc_name(dc)
                            ));
                            if count(&http, &url).await != Some(n) {
                                return false;
                            }
                            let url = a.url(&format!(
                                "/v1/catalog/service/meridian-gateway?dc={}",
                                dc_name(dc)
                            ));
                            if count(&http, &url).await.unwrap_or(0) == 0 {
                                return false;
                            }
                            if dc != a.dc && status_of(&http, a, dc).await.as_deref() != Some("up")
                            {
                                return false;
                            }
                        }
                    }
                    true
                }
            },
        )
        .await?;
        self.history
            .fault("cluster ready: every node sees every DC up");
        Ok(())
    }

    /// Waits up to `limit` for `f` to hold ([`wait::eventually`]), sampling every process
    /// meanwhile; how long it took.
    pub async fn wait_for<F, Fut>(&mut self, limit: Duration, what: &str, f: F) -> Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        self.sampling(wait::eventually(limit, what, f)).await?;
        Ok(start.elapsed())
    }

    /// Runs `fut` to its end, sampling every process's memory and liveness every 200 ms
    /// meanwhile.
    async fn sampling<T>(&mut self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                () = tokio::time::sleep(Duration::from_millis(200)) => self.sample(),
            }
        }
    }

    /// Sleeps `d`, sampling every process's memory and liveness twice a second.
    pub async fn sleep(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.sample();
            tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(500))).await;
        }
    }

    /// Samples memory and notices processes that died by themselves.
    pub fn sample(&mut self) {
        for n in &mut self.nodes {
            if !n.killed_on_purpose && !n.proc.is_running() {
                continue;
            }
            n.proc.sample_rss();
        }
    }

    /// Where every node is.
    pub fn addrs(&self) -> Vec<NodeAddr> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Number of DCs.
    pub fn dcs(&self) -> usize {
        self.spec.nodes.len()
    }

    /// Indexes (into `nodes`) of DC `dc`'s nodes.
    pub fn nodes_of(&self, dc: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].addr.dc == dc)
            .collect()
    }

    /// Waits for DC `dc` to have a leader that its live nodes agree on; its index in `nodes`.
    pub async fn wait_leader(&mut self, dc: usize, limit: Duration) -> Result<usize> {
        // Who runs unfrozen changes only by the scenario's hand, not during the wait (a node
        // that dies meanwhile answers nothing, and so names no leader).
        let asked: Vec<String> = self
            .nodes_of(dc)
            .into_iter()
            .map(|i| &self.nodes[i])
            .filter(|n| n.proc.pid().is_some() && !n.proc.is_frozen())
            .map(|n| n.addr.url(""))
            .collect();
        let rpcs: Vec<(usize, String)> = self
            .nodes_of(dc)
            .into_iter()
            .map(|i| (i, self.nodes[i].addr.rpc()))
            .collect();
        let http = self.http.clone();
        let what = format!("a leader that the live nodes of {} agree on", dc_name(dc));
        self.sampling(wait::until_some(limit, &what, || {
            agreed_leader(&http, &asked, &rpcs)
        }))
        .await
    }

    fn recompute_reachability(&self) {
        let dcs = self.dcs();
        let mut out = BTreeSet::new();
        for t in 1..=dcs {
            let alive = self
                .nodes
                .iter()
                .filter(|n| n.addr.dc == t && n.proc.pid().is_some() && !n.proc.is_frozen())
                .count();
            for o in 1..=dcs {
                if o != t
                    && (alive == 0 || self.cuts.contains(&(o, t)) || self.cuts.contains(&(t, o)))
                {
                    out.insert((o, t));
                }
            }
        }
        self.history.set_unreachable(&out);
    }

    /// kill -9 of node `i`.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        n.proc.kill9()?;
        n.killed_on_purpose = true;
        let label = n.addr.label();
        self.history.fault(format!("kill -9 {label}"));
        self.history
            .node_blind(self.nodes[i].addr.dc, &self.nodes[i].addr.name);
        self.recompute_reachability();
        Ok(())
    }

    /// SIGSTOP of node `i`.
    pub fn freeze(&mut self, i: usize) -> Result<()> {
        self.nodes[i].proc.freeze()?;
        let label = self.nodes[i].addr.label();
        self.history.fault(format!("SIGSTOP {label}"));
        self.history
            .node_blind(self.nodes[i].addr.dc, &self.nodes[i].addr.name);
        self.recompute_reachability();
        Ok(())
    }

    /// SIGCONT of node `i`.
    pub fn thaw(&mut self, i: usize) -> Result<()> {
        self.nodes[i].proc.thaw()?;
        let label = self.nodes[i].addr.label();
        self.history.fault(format!("SIGCONT {label}"));
        self.history
            .node_back(self.nodes[i].addr.dc, &self.nodes[i].addr.name);
        self.recompute_reachability();
        Ok(())
    }

    /// Starts node `i` again on its data folder.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.nodes[i].proc.restart()?;
        self.nodes[i].killed_on_purpose = false;
        let label = self.nodes[i].addr.label();
        self.history
            .fault(format!("restart {label} on its data folder"));
        self.history
            .node_back(self.nodes[i].addr.dc, &self.nodes[i].addr.name);
        self.recompute_reachability();
        Ok(())
    }

    /// Silently drops everything from `from` to `to`.
    pub fn one_way(&mut self, from: usize, to: usize) -> Result<()> {
        self.wan.one_way(from, to)?;
        self.cuts.insert((from, to));
        self.history.fault(format!(
            "one-way cut dc{from} -> dc{to} ({})",
            self.wan.cut_mechanism()
        ));
        self.recompute_reachability();
        Ok(())
    }

    /// Silently drops everything between `a` and `b`.
    pub fn blackhole(&mut self, a: usize, b: usize) -> Result<()> {
        self.wan.blackhole(a, b)?;
        self.cuts.extend([(a, b), (b, a)]);
        self.history.fault(format!(
            "blackhole dc{a} <-> dc{b} ({})",
            self.wan.cut_mechanism()
        ));
        self.recompute_reachability();
        Ok(())
    }

    /// Partition that resets and refuses between `a` and `b`.
    pub fn partition(&mut self, a: usize, b: usize) -> Result<()> {
        self.wan.partition(a, b)?;
        self.cuts.extend([(a, b), (b, a)]);
        self.history.fault(format!(
            "partition (reset, refuse) dc{a} <-> dc{b} ({})",
            self.wan.cut_mechanism()
        ));
        self.recompute_reachability();
        Ok(())
    }

    /// Lifts the cuts between `a` and `b`.
    pub fn heal(&mut self, a: usize, b: usize) -> Result<()> {
        self.wan.heal(a, b)?;
        self.cuts.remove(&(a, b));
        self.cuts.remove(&(b, a));
        self.history.fault(format!("heal dc{a} <-> dc{b}"));
        self.recompute_reachability();
        Ok(())
    }

    /// Lifts every cut and shaping.
    pub fn heal_all(&mut self) -> Result<()> {
        self.wan.heal_all()?;
        self.cuts.clear();
        self.history.fault("heal every link");
        self.recompute_reachability();
        Ok(())
    }

    /// Shapes every link both ways.
    pub fn shape_all(&mut self, shape: crate::link::Shape) {
        for a in 1..=self.dcs() {
            for b in 1..=self.dcs() {
                if a != b {
                    self.wan.shape(a, b, shape);
                }
            }
        }
        self.history
            .fault(format!("every WAN link shaped: {shape:?}"));
    }

    /// A client for TLS connections through the gateways.
    pub fn tls_client(&self) -> Result<backend::Client> {
        backend::Client::new(&self.web_ca)
    }

    /// The run folder (configs, data, logs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the run folder after the cluster is gone (a failed run).
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }

    /// Stops every process (SIGKILL; the data is checked before this).
    pub fn shutdown(&mut self) {
        for n in &mut self.nodes {
            let _ = n.proc.kill9();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The node (index and rpc address among `rpcs`) that every agent at `bases` that answers
/// names as its leader, when they all name the same one.
async fn agreed_leader(
    http: &reqwest::Client,
    bases: &[String],
    rpcs: &[(usize, String)],
) -> Option<usize> {
    let mut seen = BTreeSet::new();
    for base in bases {
        if let Some(leader) = wait::leader_of(http, base).await {
            seen.insert(leader);
        }
    }
    if seen.len() != 1 {
        return None;
    }
    let leader = seen.pop_first()?;
    rpcs.iter().find(|(_, rpc)| *rpc == leader).map(|(i, _)| *i)
}

/// Length of the JSON array at `url`, if it answers one.
pub async fn count(http: &reqwest::Client, url: &str) -> Option<usize> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<Value>().await.ok()?.as_array().map(Vec::len)
}

/// The status of DC `dc` as node `a` sees it (`up`, `suspect`, `down`, `drained`).
pub async fn status_of(http: &reqwest::Client, a: &NodeAddr, dc: usize) -> Option<String> {
    let r = http
        .get(a.url("/v1/federation/datacenters"))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    v.as_array()?
        .iter()
        .find(|e| e["Datacenter"] == dc_name(dc).as_str())
        .and_then(|e| e["Status"].as_str())
        .map(str::to_owned)
}
