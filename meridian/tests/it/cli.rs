//! The CLI, run as a process against a real agent.

use std::process::Command;

use anyhow::{Result, ensure};

use crate::harness::{BIN, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_members_commands() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agent = crate::harness::dev("dev", &dir.path().join("data"), dir.path(), &[])?;
    agent.wait_ready().await?;

    let (ok, out) = cli(
        &agent,
        None,
        &[
            "services", "register", "--name", "cache", "--port", "6379", "--tag", "primary",
        ],
    )?;
    ensure!(ok, "register: {out}");
    let (ok, out) = cli(&agent, None, &["services", "list"])?;
    ensure!(
        ok && out.contains("cache") && out.contains("primary"),
        "list: {out}"
    );
    let (ok, out) = cli(&agent, None, &["services", "show", "cache"])?;
    ensure!(ok && out.contains("6379"), "show: {out}");
    let (ok, out) = cli(&agent, None, &["members"])?;
    ensure!(ok && out.contains("dev"), "members: {out}");
    let (ok, out) = cli(&agent, None, &["services", "deregister", "cache"])?;
    ensure!(ok, "deregister: {out}");
    ensure!(agent.instance_ids("cache").await?.is_empty());
    let (ok, out) = cli(
        &agent,
        None,
        &["services", "register", "--name", "bad_name", "--port", "1"],
    )?;
    ensure!(
        !ok && out.contains("DNS label"),
        "a bad name must fail with the API's message: {out}"
    );
    Ok(())
}

/// The README's main job: three federated DCs, DNS answers, a connection through a gateway, a
/// drill with its report, then a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_federates_three_dcs_and_runs_a_drill() -> Result<()> {
    // Port 0: every DC's ports are free ones.
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(BIN)
            .args(["demo", "--exit-after", "1"])
            .args(["--http-port", "0", "--dns-port", "0", "--rpc-port", "0"])
            .args(["--wan-port", "0", "--gateway-port", "0"])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "the demo failed:\n{all}");
    for want in [
        // dc3 has no web: it answers from dc1, and its gateway carries a verified connection.
        "dc3 gateway",
        "-> hello from web in dc1",
        "SNI `web.service.dc2.consul` -> hello from web in dc2",
        // The drill's verdict.
        "every DC stopped answering with dc1: yes; failed back: yes; stale answers: 0",
    ] {
        ensure!(stdout.contains(want), "missing {want:?} in:\n{all}");
    }
    Ok(())
}

/// An agent whose limits need more file descriptors than the process may open does not start,
/// and says in one line which keys to change; lowering the process's hard limit (as a tight
/// container would) makes even a modest explicit gateway cap too much.
#[test]
fn an_agent_refuses_limits_beyond_its_descriptors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = meridian_testkit::AgentConfig::new(
        "dc1",
        "n1",
        meridian_testkit::Ports::free(),
        &dir.path().join("data"),
    );
    c.set("gateway", "max_connections", 4000);
    let file = dir.path().join("agent.toml");
    c.write(&file)?;
    let file = file.to_str().unwrap_or_default().to_owned();
    // `prlimit` sets the hard limit the agent starts under: 4,096 descriptors.
    let out = Command::new("prlimit")
        .args(["--nofile=4096:4096", "--", BIN, "agent", "--config", &file])
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success(), "the agent started: {text}");
    ensure!(
        text.contains("gateway.max_connections x2 = 8000") && text.contains("ulimit -n"),
        "the refusal names the keys and the limit: {text}"
    );
    Ok(())
}
