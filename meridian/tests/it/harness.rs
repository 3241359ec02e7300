//! What these tests add to the test kit (`meridian-testkit`): the binary under test, dev and
//! three-node starts in this suite's shape, and Consul-shaped bodies.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

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
