//! What these tests add to the test kit (`meridian-testkit`): the binary under test, dev and
//! three-node starts in this suite's shape, and Consul-shaped bodies.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;
use tokio::sync::Mutex;

pub use meridian_testkit::agent::Agent;
pub use meridian_testkit::config::{AgentConfig, TEST_TOKEN};
pub use meridian_testkit::{Ports, free_port};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A `meridian agent --dev` named `name` on free ports, data in `data_dir`, log in `dir`, with
/// `extra` arguments.
pub fn dev(name: &str, data_dir: &Path, dir: &Path, extra: &[&str]) -> Result<Agent> {
    Agent::start_dev(name, Ports::free(), data_dir, dir, extra)
}

/// A 3-node datacenter `dc1` from typed config files, every node ready.
pub async fn three_node_dc(dir: &Path) -> Result<Vec<Agent>> {
    let mut agents = meridian_testkit::agent::dc_configs("dc1", 3, dir)
        .iter()
        .map(|c| Agent::start(&c.node_name, c, dir, &[]))
        .collect::<Result<Vec<_>>>()?;
    for a in agents.iter_mut() {
        a.wait_ready().await?;
    }
    Ok(agents)
}

/// Index of the agent that is the Raft leader (60 s at most).
pub async fn leader_index(agents: &[Agent]) -> Result<usize> {
    meridian_testkit::agent::leader_index(agents, Duration::from_secs(60)).await
}

/// The header `name` of `r`, if present and text.
pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Polls `f` until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    meridian_testkit::wait::eventually(Duration::from_secs(secs), what, f).await
}

/// The Raft timings most of these tests run with (faster than the kit's default).
pub fn quick_raft() -> meridian_testkit::config::Raft {
    meridian_testkit::config::Raft {
        heartbeat_ms: 100,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
    }
}

/// A registration body in Consul's shape.
pub fn service(name: &str, id: &str, port: u16) -> Value {
    serde_json::json!({ "ID": id, "Name": name, "Port": port, "Tags": ["t1"], "Address": "127.0.0.1" })
}

/// Runs the CLI (`meridian args…`) against `agent`'s API, presenting `token`; whether it
/// succeeded, and its stdout and stderr.
pub fn cli(agent: &Agent, token: Option<&str>, args: &[&str]) -> Result<(bool, String)> {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env(
        "MERIDIAN_HTTP_ADDR",
        format!("127.0.0.1:{}", agent.ports.http),
    );
    if let Some(token) = token {
        cmd.env("MERIDIAN_HTTP_TOKEN", token);
    }
    let out = cmd.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Registrations `load-<i>` sent through one node by concurrent clients until stopped, `max` of
/// them at most, for two minutes at most; the acknowledged ones are kept.
pub struct Load {
    acked: Arc<Mutex<BTreeSet<String>>>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients registering through `agent`.
    pub fn start(agent: &Agent, clients: usize, max: usize) -> Load {
        let (acked, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let (next, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let url = agent.url("/v1/agent/service/register");
        let deadline = Instant::now() + Duration::from_secs(120);
        let clients = (0..clients)
            .map(|_| {
                let (acked, stop, next, failed): (Arc<Mutex<BTreeSet<String>>>, _, _, _) = (
                    Arc::clone(&acked),
                    stop.clone(),
                    next.clone(),
                    failed.clone(),
                );
                let (http, url) = (agent.http.clone(), url.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= max {
                            return;
                        }
                        let id = format!("load-{i}");
                        let ok = http
                            .put(&url)
                            .json(&service("load", &id, 9000))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        if ok {
                            acked.lock().await.insert(id);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            acked,
            failed,
            stop,
            clients,
        }
    }

    /// Registrations refused or unanswered so far.
    pub fn failures(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Registrations acknowledged so far.
    pub async fn count(&self) -> usize {
        self.acked.lock().await.len()
    }

    /// Waits until `more` further registrations are acknowledged (30 s at most).
    pub async fn advance(&self, more: usize, what: &str) -> Result<()> {
        let want = self.count().await + more;
        eventually(30, what, || async { self.count().await >= want }).await
    }

    /// Waits for the clients to end (`max` reached) without stopping them, then returns every
    /// acknowledged id.
    pub async fn drain(self) -> Result<BTreeSet<String>> {
        for c in self.clients {
            c.await?;
        }
        Ok(self.acked.lock().await.clone())
    }

    /// Stops the clients and returns every acknowledged id.
    pub async fn finish(self) -> Result<BTreeSet<String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.drain().await
    }
}

/// Fails unless `agent` holds every id of `acked` as an instance of `load` within a minute.
pub async fn holds_all(agent: &Agent, when: &str, acked: &BTreeSet<String>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have: BTreeSet<String> = agent
            .instance_ids("load")
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        if acked.is_subset(&have) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let lost: Vec<_> = acked.difference(&have).take(10).collect();
            bail!(
                "{when}: {} lost {} acknowledged registrations (first: {lost:?})",
                agent.name,
                acked.difference(&have).count()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
