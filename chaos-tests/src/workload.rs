//! The client workload that runs through every scenario: registrations and deregistrations
//! (each with its outcome, so the checkers know what was acknowledged), DNS queries at every DC,
//! and TLS connections through every DC's gateways, all recorded in the [`History`].
//!
//! Clients pick nodes and timings from a seeded RNG. Every request has a timeout, so a frozen
//! or dead node costs a client a few seconds, never the run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_client::probe::{DnsOutcome, InstanceMap, resolve_srv};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::addr::dc_name;
use crate::backend::{self, SERVICE};
use crate::cluster::NodeAddr;
use crate::history::{History, Op, OpKind, Outcome, Probe};

/// The service the writers register (many instances, unique IDs).
pub const WRITE_SERVICE: &str = "chaos";

/// How much load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Writers per DC.
    pub writers: usize,
    /// Pause between one writer's operations.
    pub write_every: Duration,
    /// Pause between one DC's DNS queries.
    pub dns_every: Duration,
    /// Pause between one DC's gateway connections.
    pub connect_every: Duration,
}

impl Load {
    /// The default set's load.
    pub fn normal() -> Load {
        Load {
            writers: 2,
            write_every: Duration::from_millis(60),
            dns_every: Duration::from_millis(150),
            connect_every: Duration::from_millis(300),
        }
    }

    /// `--soak`: more clients.
    pub fn soak() -> Load {
        Load {
            writers: 6,
            write_every: Duration::from_millis(40),
            dns_every: Duration::from_millis(80),
            connect_every: Duration::from_millis(150),
        }
    }
}

/// The running clients; [`Workload::stop`] ends them.
pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// What the clients need to know about the cluster.
#[derive(Clone)]
pub struct Target {
    /// Every node.
    pub nodes: Vec<NodeAddr>,
    /// The backend of each DC that has one.
    pub backends: BTreeMap<usize, SocketAddr>,
    /// TLS client trusting the backends.
    pub tls: backend::Client,
}

impl Workload {
    /// Starts the clients.
    pub fn start(
        target: Target,
        history: History,
        seed: u64,
        load: Load,
    ) -> anyhow::Result<Workload> {
        let (stop, _) = watch::channel(false);
        let http = crate::cluster::api_client(Duration::from_secs(5))?;
        let mut map = InstanceMap::new("consul");
        for (dc, a) in &target.backends {
            map.add(&dc_name(*dc), a.ip(), a.port());
        }
        let map = Arc::new(map);
        let dcs: BTreeSet<usize> = target.nodes.iter().map(|n| n.dc).collect();
        let mut tasks = JoinSet::new();
        for &dc in &dcs {
            let nodes: Vec<NodeAddr> = target
                .nodes
                .iter()
                .filter(|n| n.dc == dc)
                .cloned()
                .collect();
            for w in 0..load.writers {
                let client_seed = seed ^ ((dc as u64) << 32) ^ (w as u64 + 1);
                tasks.spawn(writer(
                    format!("c{dc}x{w}"),
                    nodes.clone(),
                    http.clone(),
                    history.clone(),
                    StdRng::seed_from_u64(client_seed),
                    load.write_every,
                    stop.subscribe(),
                ));
            }
            let mut names = vec![format!("{SERVICE}.service.consul.")];
            for d in target.backends.keys() {
                names.push(format!("{SERVICE}.service.{}.consul.", dc_name(*d)));
            }
            tasks.spawn(dns_prober(
                nodes.clone(),
                names,
                map.clone(),
                history.clone(),
                StdRng::seed_from_u64(seed ^ 0xD15 ^ dc as u64),
                load.dns_every,
                stop.subscribe(),
            ));
            tasks.spawn(gateway_prober(
                nodes,
                target.tls.clone(),
                history.clone(),
                StdRng::seed_from_u64(seed ^ 0x6A7E ^ dc as u64),
                load.connect_every,
                stop.subscribe(),
            ));
        }
        Ok(Workload { stop, tasks })
    }

    /// Stops every client and waits for operations in flight to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sleeps `d`, or returns true as soon as the workload is stopped.
async fn stopped_during(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn outcome(r: reqwest::Result<reqwest::Response>) -> Outcome {
    match r {
        Ok(r) if r.status().is_success() => Outcome::Ok,
        Ok(r) if r.status().is_client_error() => Outcome::Failed(r.status().to_string()),
        Ok(r) => Outcome::Unknown(r.status().to_string()),
        Err(e) => Outcome::Unknown(if e.is_timeout() {
            "timeout".into()
        } else {
            e.to_string()
        }),
    }
}

/// Registers unique instances at the nodes of one DC in turn, and deregisters some of those it
/// saw acknowledged, at the node that registered them.
async fn writer(
    name: String,
    nodes: Vec<NodeAddr>,
    http: reqwest::Client,
    history: History,
    mut rng: StdRng,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut acked: Vec<(usize, String)> = Vec::new();
    let mut seq = 0u64;
    loop {
        let pause = every.mul_f64(rng.random_range(0.5..1.5));
        if stopped_during(&mut stop, pause).await {
            return;
        }
        let dereg = !acked.is_empty() && rng.random_bool(0.3);
        let (i, id, kind, req) = if dereg {
            let (i, id) = acked.swap_remove(rng.random_range(0..acked.len()));
            let url = nodes[i].url(&format!("/v1/agent/service/deregister/{id}"));
            (i, id, OpKind::Deregister, http.put(url))
        } else {
            seq += 1;
            let i = usize::try_from(seq).unwrap_or(0) % nodes.len();
            let id = format!("{name}-{seq}");
            let body = serde_json::json!({
                "ID": id, "Name": WRITE_SERVICE, "Port": 1 + seq % 60_000, "Address": "127.0.0.1",
            });
            let url = nodes[i].url("/v1/agent/service/register");
            (i, id, OpKind::Register, http.put(url).json(&body))
        };
        let start = history.now();
        let out = outcome(req.send().await);
        if kind == OpKind::Register && out == Outcome::Ok {
            acked.push((i, id.clone()));
        }
        history.op(Op {
            dc: nodes[i].dc,
            node: nodes[i].name.clone(),
            id,
            kind,
            start,
            end: history.now(),
            outcome: out,
        });
    }
}

/// Resolves the service's names at the nodes of one DC.
async fn dns_prober(
    nodes: Vec<NodeAddr>,
    names: Vec<String>,
    map: Arc<InstanceMap>,
    history: History,
    mut rng: StdRng,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut k = 0usize;
    loop {
        if stopped_during(&mut stop, every).await {
            return;
        }
        let node = &nodes[rng.random_range(0..nodes.len())];
        let name = &names[k % names.len()];
        k += 1;
        let start = history.now();
        let got = resolve_srv(node.dns(), name, &map).await;
        let (dcs, error) = match got {
            DnsOutcome::Answered { dcs, unattributed } => (
                dcs.iter()
                    .filter_map(|d| d.strip_prefix("dc").and_then(|n| n.parse().ok()))
                    .collect(),
                (unattributed > 0).then(|| format!("{unattributed} answers of no known DC")),
            ),
            DnsOutcome::Failed(e) => (BTreeSet::new(), Some(e)),
        };
        history.probe(Probe {
            observer: node.dc,
            node: node.name.clone(),
            what: "dns",
            name: name.trim_end_matches('.').to_owned(),
            start,
            end: history.now(),
            dcs,
            error,
        });
    }
}

/// Opens TLS connections for the service (by policy, no DC named) through the gateways of one
/// DC, and reads which DC's backend answered.
async fn gateway_prober(
    nodes: Vec<NodeAddr>,
    tls: backend::Client,
    history: History,
    mut rng: StdRng,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let sni = format!("{SERVICE}.service.consul");
    loop {
        if stopped_during(&mut stop, every).await {
            return;
        }
        let node = &nodes[rng.random_range(0..nodes.len())];
        let start = history.now();
        let got = tls.open(node.gateway(), &sni, Duration::from_secs(3)).await;
        let (dcs, error) = match got {
            Ok((_conn, dc)) => (
                dc.strip_prefix("dc")
                    .and_then(|n| n.parse().ok())
                    .into_iter()
                    .collect(),
                None,
            ),
            Err(e) => (BTreeSet::new(), Some(format!("{e:#}"))),
        };
        history.probe(Probe {
            observer: node.dc,
            node: node.name.clone(),
            what: "gateway",
            name: sni.clone(),
            start,
            end: history.now(),
            dcs,
            error,
        });
    }
}
