//! The benchmark's processes on the kit's one process type ([`Proc`]) and agent type
//! ([`Agent`], started as [`Launch`] says): peers (Knot, nginx, HAProxy, dnsperf, wrk) and
//! `meridian agent`s, each optionally pinned to one core. What lives here is the benchmark's
//! shorthand for them (its own `meridian` binary, `--meridian`; an agent's log filter) and the
//! checks every benchmark makes (still running? listening yet?).

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use meridian_testkit::process::pinned;
use meridian_testkit::{Agent, AgentConfig, Launch, Ports, Proc};

/// Starts `program args…` (on `core`, see [`pinned`]) with `env`, both outputs into `log`.
pub fn start(
    name: &str,
    core: Option<usize>,
    program: &Path,
    args: Vec<String>,
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Proc> {
    let (program, args) = pinned(core, program, args)?;
    Proc::start(name, &program, args, owned(env), log)
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Its process id; an error once it has been killed.
pub fn pid(p: &Proc) -> Result<u32> {
    p.pid().with_context(|| format!("{} does not run", p.name))
}

/// Fails, with the end of its log, when `p` has exited.
pub fn check_running(p: &mut Proc) -> Result<()> {
    if let Some(status) = p.exit_status() {
        let log = p.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "{} exited with {status}; end of its log {}:\n{}",
            p.name,
            p.log().display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Waits (10 s at most) until something accepts TCP connections on 127.0.0.1:`port`, failing
/// at once if `p` exits.
pub fn wait_listening(p: &mut Proc, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        check_running(p)?;
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} does not listen on {port} after 10 s",
            p.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `RUST_LOG` of the agents of a benchmark: `MERIDIAN_BENCH_AGENT_LOG` when set (to see
/// more when something goes wrong), else `default`.
pub fn agent_log(default: &str) -> String {
    std::env::var("MERIDIAN_BENCH_AGENT_LOG").unwrap_or_else(|_| default.to_owned())
}

/// Starts `bin agent args…` (the benchmark's `meridian`, on `core`) as agent `name` on `ports`
/// at 127.0.0.1, with `env`, its output in `log`.
pub fn agent(
    name: &str,
    bin: &Path,
    args: Vec<String>,
    env: &[(&str, &str)],
    log: &Path,
    ports: Ports,
    core: Option<usize>,
) -> Result<Agent> {
    let mut all = vec!["agent".to_owned()];
    all.extend(args);
    Agent::launch_args(
        name,
        ports,
        [127, 0, 0, 1].into(),
        all,
        log,
        &launch(bin, env, core),
    )
}

/// Writes `config` to `dir/<name>.toml` and starts `bin agent --config` on it (see [`agent`]),
/// its output in `dir/<name>.log`.
pub fn configured_agent(
    name: &str,
    bin: &Path,
    config: &AgentConfig,
    dir: &Path,
    env: &[(&str, &str)],
    core: Option<usize>,
) -> Result<Agent> {
    Agent::launch(name, config, dir, &[], &launch(bin, env, core))
}

fn launch(bin: &Path, env: &[(&str, &str)], core: Option<usize>) -> Launch {
    Launch {
        bin: Some(bin.to_owned()),
        env: owned(env),
        core,
    }
}

/// The sample `key` of `agent`'s `/metrics` (name with labels, as printed); 0 when absent (a
/// counter not yet incremented is not printed).
pub async fn metric_or_zero(agent: &Agent, key: &str) -> Result<f64> {
    let text = agent.metrics().await?;
    Ok(meridian_testkit::metrics::value(&text, key).unwrap_or(0.0))
}
