//! Meridian's HTTP API driven by two real Consul client libraries, as their users drive Consul:
//! the npm `consul` (v2) and PyPI's `py-consul`, pinned in `meridian/tests/clients/` and
//! installed by `scripts/env.sh` (which exports where: `MERIDIAN_NODE_CLIENTS`,
//! `MERIDIAN_PY_CLIENTS`). Each test starts a `meridian agent --dev` and runs one client's script
//! against it; the script checks every answer field by field against Consul's documented shapes
//! and exits nonzero, naming each failed case and field, if any differs.
//!
//! Each client runs two scripts: the core calls, and the node, health, member, check,
//! maintenance and catalog-register calls with the full shapes of `agent.self` and `query.get`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::harness::{Agent, AgentConfig, Ports, TEST_TOKEN};

/// Longest a client script may run; each takes about 2 s.
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// Variables a developer's shell may hold that would send a client elsewhere than the agent
/// under test: proxies (py-consul uses requests, which reads them) and Consul's own settings.
const FOREIGN_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "NODE_OPTIONS",
];

/// The folder of the scripts, `package.json` and `requirements.txt`.
fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Where `scripts/env.sh` installed a client, from the variable `var` it exports.
fn installed(var: &str) -> Result<String> {
    std::env::var(var).with_context(|| {
        format!(
            "{var} is not set: run the tests with scripts/test.sh, or `source scripts/env.sh` \
             first (it installs the pinned Consul clients and exports it)"
        )
    })
}

/// A `--dev` agent, ready.
async fn dev_agent(dir: &std::path::Path) -> Result<Agent> {
    let mut agent = crate::harness::dev("dev", &dir.join("data"), dir, &[])?;
    agent.wait_ready().await?;
    Ok(agent)
}

/// Runs `program args…` in the scripts' folder against `agent`; fails with everything the
/// script printed unless it exits 0 within [`SCRIPT_LIMIT`].
async fn run_script(
    agent: &Agent,
    program: &str,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> Result<()> {
    let me = agent.get_json("/v1/agent/self").await?;
    let node = me["Config"]["NodeName"]
        .as_str()
        .context("agent.self NodeName")?;
    let dc = me["Config"]["Datacenter"]
        .as_str()
        .context("agent.self Datacenter")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(scripts_dir())
        .env(
            "CONSUL_HTTP_ADDR",
            format!("{}:{}", agent.host, agent.ports.http),
        )
        .env("MERIDIAN_NODE_NAME", node)
        .env("MERIDIAN_DC", dc)
        .env("MERIDIAN_RPC_ADDR", agent.rpc())
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A script still running at the limit is killed when its future is dropped.
        .kill_on_drop(true);
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
    let what = format!("{program} {}", args.join(" "));
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let out = match tokio::time::timeout(SCRIPT_LIMIT, child.wait_with_output()).await {
        Ok(out) => out.with_context(|| format!("running {what}"))?,
        Err(_) => bail!(
            "{what} did not end within {SCRIPT_LIMIT:?}; agent log:\n{}",
            agent.log_text()
        ),
    };
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown by the test runner on failure, or with --no-capture.
    println!(
        "{what} ({:.1} s):\n{output}",
        started.elapsed().as_secs_f64()
    );
    if !out.status.success() {
        bail!("{what} exited with {}:\n{output}", out.status);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_consul_client() -> Result<()> {
    let modules = installed("MERIDIAN_NODE_CLIENTS")?;
    let dir = tempfile::tempdir()?;
    let agent = dev_agent(dir.path()).await?;
    for script in ["consul-npm.test.mjs", "consul-npm.nodes.test.mjs"] {
        run_script(
            &agent,
            "node",
            &[script],
            &[("MERIDIAN_NODE_CLIENTS", &modules)],
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_client() -> Result<()> {
    let python = installed("MERIDIAN_PY_CLIENTS")?;
    let dir = tempfile::tempdir()?;
    let agent = dev_agent(dir.path()).await?;
    // -E: none of the caller's PYTHON* variables; -B: no bytecode written into the source tree.
    for script in [
        "test_py_consul.py",
        "test_py_consul_nodes.py",
        "test_py_consul_intentions.py",
    ] {
        run_script(&agent, &python, &["-E", "-B", script], &[]).await?;
    }
    Ok(())
}

/// The ACL token API and the Connect CA through py-consul, against an agent that enforces tokens
/// (a `--dev` agent does not) and has a trust domain (so a mesh CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_client_acl_tokens_and_connect_ca() -> Result<()> {
    let python = installed("MERIDIAN_PY_CLIENTS")?;
    let dir = tempfile::tempdir()?;
    let mut c = AgentConfig::new("dc1", "n1", Ports::free(), &dir.path().join("data"));
    c.raft = crate::harness::quick_raft();
    const TRUST_DOMAIN: &str = "5f3e1c2a.consul";
    c.set("gateway", "trust_domain", TRUST_DOMAIN);
    let mut agent = Agent::start("n1", &c, dir.path(), &[])?;
    agent.wait_ready().await?;
    for script in ["test_py_consul_acl.py", "test_py_consul_connect.py"] {
        run_script(
            &agent,
            &python,
            &["-E", "-B", script],
            &[
                ("MERIDIAN_MANAGEMENT_TOKEN", TEST_TOKEN),
                ("MERIDIAN_TRUST_DOMAIN", TRUST_DOMAIN),
            ],
        )
        .await?;
    }
    Ok(())
}
