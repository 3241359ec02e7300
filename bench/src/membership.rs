//! `membership`: how long writes pause while an operator replaces a dead server. A 3-node DC with
//! the node's default Raft timings holds a preloaded catalog; clients register through one
//! survivor the whole time; the leader is killed with `kill -9` for good; a fourth node started
//! with `[raft] join = true` is added (`PUT /v1/operator/raft/peer`: learner, snapshot, voter)
//! and the dead one removed (`DELETE`). The longest gap between two acknowledgements in each
//! phase is the write pause; the target is one election.
//!
//! One election, in openraft 0.9 with the node's defaults: a follower that knew a leader first
//! lets its lease run out (`election_timeout_max`), then waits its randomized election timeout
//! (`election_timeout_min`..`max`) before it stands, so a leader's death costs 3 to 4 s of
//! writes, plus a vote round trip.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use meridian_testkit::Agent;
use meridian_testkit::agent::{dc_configs, leader_index};
use meridian_testkit::stats::median;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::{machine, procs, today};

/// One election with the node's defaults, the target of every pause: the leader lease plus the
/// longest randomized election timeout (both `raft.election_timeout_max_ms`, 2,000 ms).
const ELECTION_MS: f64 = 4000.0;

/// Concurrent clients of the load.
const CLIENTS: usize = 8;

/// Runs `reps` replacements beside a catalog of `preload` instances; writes `membership.json`
/// and `membership.md` into `out`.
pub async fn run(bin: &Path, out: &Path, preload: usize, reps: usize) -> Result<()> {
    let mut runs = Vec::new();
    for rep in 0..reps {
        let run = replace_once(bin, preload).await?;
        eprintln!(
            "membership rep {}: pause at the leader's death {:.0} ms (new leader after {:.0} ms), \
             during add-peer {:.0} ms (took {:.0} ms), during remove-peer {:.0} ms (took {:.0} \
             ms); {} acknowledged, {} lost, {} failed",
            rep + 1,
            run.kill.pause_ms,
            run.kill.took_ms,
            run.add.pause_ms,
            run.add.took_ms,
            run.remove.pause_ms,
            run.remove.took_ms,
            run.acknowledged,
            run.lost,
            run.failed,
        );
        runs.push(run);
    }
    let med = |f: fn(&ReplaceRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let report = MembershipReport {
        benchmark: "membership",
        date: today(),
        machine: machine(),
        election_ms: ELECTION_MS,
        median_kill_pause_ms: med(|r| r.kill.pause_ms),
        median_add_pause_ms: med(|r| r.add.pause_ms),
        median_remove_pause_ms: med(|r| r.remove.pause_ms),
        lost: runs.iter().map(|r| r.lost).sum(),
        runs,
    };
    // The kill's pause is measured against the election of the same run (its own length varies
    // by the randomized timeout); the membership changes against a whole election.
    let beyond = |r: &ReplaceRun| r.kill.pause_ms - r.kill.took_ms;
    let worst_beyond = report.runs.iter().map(beyond).fold(f64::MIN, f64::max);
    let verdict = |ms: f64| {
        if ms <= ELECTION_MS {
            "within one election"
        } else {
            "**over one election**"
        }
    };
    let mut md = format!(
        "Replacing a dead server of a 3-node DC ({preload} instances preloaded; {CLIENTS} clients \
         registering through a survivor throughout; default Raft timings: an election is the \
         leader lease, then a randomized election timeout, 3 to 4 s and a vote). Longest gap \
         between two acknowledgements, median of {}:\n\n\
         | phase | write pause | |\n|---|---|---|\n\
         | `kill -9` of the leader | {:.0} ms | the election itself (the survivor named a new \
         leader after {:.0} ms); writes resumed at most {:.0} ms after it |\n\
         | `add-peer` of a fourth node (learner, snapshot, joint consensus, voter) | {:.0} ms | {} |\n\
         | `remove-peer` of the dead one (demote, then drop) | {:.0} ms | {} |\n\n\
         Acknowledged registrations lost: {}.\n\n\
         | rep | kill pause | new leader after | add pause | add took | remove pause | remove took | acknowledged | failed |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        report.runs.len(),
        report.median_kill_pause_ms,
        median(
            &report
                .runs
                .iter()
                .map(|r| r.kill.took_ms)
                .collect::<Vec<_>>()
        ),
        worst_beyond.max(0.0),
        report.median_add_pause_ms,
        verdict(report.median_add_pause_ms),
        report.median_remove_pause_ms,
        verdict(report.median_remove_pause_ms),
        report.lost,
    );
    for (i, r) in report.runs.iter().enumerate() {
        writeln!(
            md,
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} |",
            i + 1,
            r.kill.pause_ms,
            r.kill.took_ms,
            r.add.pause_ms,
            r.add.took_ms,
            r.remove.pause_ms,
            r.remove.took_ms,
            r.acknowledged,
            r.failed
        )?;
    }
    crate::tools::write_report(out, "membership", &report, &md)?;
    if report.lost > 0 {
        bail!("{} acknowledged registrations were lost", report.lost);
    }
    Ok(())
}

#[derive(Serialize)]
struct MembershipReport {
    benchmark: &'static str,
    date: String,
    machine: String,
    election_ms: f64,
    runs: Vec<ReplaceRun>,
    median_kill_pause_ms: f64,
    median_add_pause_ms: f64,
    median_remove_pause_ms: f64,
    lost: usize,
}

#[derive(Serialize)]
struct ReplaceRun {
    kill: Phase,
    add: Phase,
    remove: Phase,
    acknowledged: usize,
    failed: usize,
    /// Acknowledged registrations missing from a survivor or the new node at the end.
    lost: usize,
}

/// One phase: how long the operation took (for the kill: until the survivor named a new leader)
/// and the longest write pause from its start until a second after its end.
#[derive(Serialize, Clone, Copy)]
struct Phase {
    took_ms: f64,
    pause_ms: f64,
}

/// The load: every acknowledgement's time and id.
struct Load {
    acks: Arc<Mutex<Vec<(Instant, usize)>>>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// At most this many registrations, for at most three minutes: the load is bounded.
    const MAX: usize = 200_000;

    fn start(http: &reqwest::Client, url: String) -> Load {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(180);
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (acks, failed, stop, next) =
                    (acks.clone(), failed.clone(), stop.clone(), next.clone());
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= Self::MAX {
                            return;
                        }
                        let body = serde_json::json!({
                            "ID": format!("load-{i}"), "Name": format!("load-{}", i % 100),
                            "Port": 1024 + (i % 60000), "Address": "10.1.2.3",
                        });
                        let ok = http
                            .put(&url)
                            .json(&body)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        if ok {
                            acks.lock().await.push((Instant::now(), i));
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            acks,
            failed,
            stop,
            tasks,
        }
    }

    async fn count(&self) -> usize {
        self.acks.lock().await.len()
    }

    /// Waits for `more` acknowledgements (30 s at most).
    async fn advance(&self, more: usize, what: &str) -> Result<()> {
        let want = self.count().await + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count().await < want {
            ensure!(Instant::now() < deadline, "no progress {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn finish(self) -> Result<(Vec<(Instant, usize)>, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        let mut acks = self.acks.lock().await.clone();
        acks.sort();
        Ok((acks, self.failed.load(Ordering::Relaxed)))
    }
}

/// The longest gap between consecutive acknowledgements that ends in `[from, to]` (the gap that
/// spans `from` included).
fn longest_pause(acks: &[(Instant, usize)], from: Instant, to: Instant) -> f64 {
    let mut longest = Duration::ZERO;
    for pair in acks.windows(2) {
        let (a, b) = (pair[0].0, pair[1].0);
        if b >= from && b <= to {
            longest = longest.max(b - a);
        }
    }
    longest.as_secs_f64() * 1000.0
}

async fn replace_once(bin: &Path, preload: usize) -> Result<ReplaceRun> {
    let dir = tempfile::tempdir()?;
    let mut configs = dc_configs("dc1", 4, dir.path());
    let new_rpc = configs[3].servers[3].rpc.clone();
    let mut nodes = Vec::new();
    for (i, kit) in configs.iter_mut().enumerate() {
        let mut c = crate::tools::open_config("dc1", &kit.node_name, kit.ports, &kit.data_dir);
        c.node_id = kit.node_id;
        c.servers = kit.servers.clone();
        if i < 3 {
            c.servers.truncate(3);
        } else {
            c.set("raft", "join", true);
        }
        *kit = c;
    }
    for c in &configs[..3] {
        nodes.push(procs::configured_agent(
            &c.node_name,
            bin,
            c,
            dir.path(),
            &[("RUST_LOG", "warn")],
            None,
        )?);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let bases: Vec<String> = nodes.iter().map(Agent::base).collect();
    meridian_testkit::wait::leader_known(&http, &bases, Duration::from_secs(60)).await?;
    let dead = leader_index(&nodes, Duration::from_secs(30)).await?;
    let front = (dead + 1) % 3;
    let other = (dead + 2) % 3;

    if preload > 0 {
        let urls = Arc::new(vec![nodes[front].url("/v1/agent/service/register")]);
        let (lat, failed) =
            crate::catalog::register_all(None, &urls, "pre", preload, 32, false).await?;
        eprintln!(
            "membership: preloaded {} instances ({failed} failed)",
            lat.len()
        );
    }

    let load = Load::start(&http, nodes[front].url("/v1/agent/service/register"));
    load.advance(200, "before the kill").await?;

    let dead_rpc = nodes[dead].rpc();
    let killed = Instant::now();
    nodes[dead].kill9()?;
    // When the survivor writes go through names a new leader: the election's own length.
    let leader_url = nodes[front].url("/v1/status/leader");
    let elected = loop {
        let leader: String = match http.get(&leader_url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if !leader.is_empty() && leader != dead_rpc {
            break Instant::now();
        }
        ensure!(killed.elapsed() < Duration::from_secs(30), "no new leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    load.advance(200, "after the kill").await?;
    let kill_done = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let newcomer = procs::configured_agent(
        &configs[3].node_name,
        bin,
        &configs[3],
        dir.path(),
        &[("RUST_LOG", "warn")],
        None,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(newcomer.url("/v1/status/peers"))
        .send()
        .await
        .is_err()
    {
        ensure!(Instant::now() < deadline, "the fourth node never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let add_started = Instant::now();
    let r = http
        .put(nodes[front].url(&format!("/v1/operator/raft/peer?id=4&address={new_rpc}")))
        .send()
        .await?;
    let add_done = Instant::now();
    let status = r.status();
    ensure!(
        status.is_success(),
        "add-peer: {status} {}",
        r.text().await?
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let remove_started = Instant::now();
    let r = http
        .delete(nodes[other].url(&format!("/v1/operator/raft/peer?id={}", dead + 1)))
        .send()
        .await?;
    let remove_done = Instant::now();
    let status = r.status();
    ensure!(
        status.is_success(),
        "remove-peer: {status} {}",
        r.text().await?
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acks, failed) = load.finish().await?;

    // Every acknowledged registration on both survivors and on the new node.
    let mut lost = 0;
    for base in [nodes[front].base(), nodes[other].base(), newcomer.base()] {
        lost = lost.max(missing(&http, &base, &acks).await?);
    }
    let second = Duration::from_secs(1);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(ReplaceRun {
        kill: Phase {
            took_ms: ms(elected - killed),
            pause_ms: longest_pause(&acks, killed, kill_done + second),
        },
        add: Phase {
            took_ms: ms(add_done - add_started),
            pause_ms: longest_pause(&acks, add_started, add_done + second),
        },
        remove: Phase {
            took_ms: ms(remove_done - remove_started),
            pause_ms: longest_pause(&acks, remove_started, remove_done + second),
        },
        acknowledged: acks.len(),
        failed,
        lost,
    })
}

/// How many of `acks` the node at `base` does not hold, after giving it 30 s to catch up.
async fn missing(http: &reqwest::Client, base: &str, acks: &[(Instant, usize)]) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = crate::catalog::instance_ids(http, base, "load").await?;
        let gone = acks
            .iter()
            .filter(|(_, i)| !have.contains(&format!("load-{i}")))
            .count();
        if gone == 0 || Instant::now() > deadline {
            return Ok(gone);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
