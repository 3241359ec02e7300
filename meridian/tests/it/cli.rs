//! The CLI, run as a process against a real agent.

use std::process::Command;

use anyhow::{Result, ensure};

use crate::harness::{Agent, BIN, Mode, Ports};

fn cli(agent: &Agent, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(BIN)
        .args(args)
        .env(
            "MERIDIAN_HTTP_ADDR",
            format!("127.0.0.1:{}", agent.ports.http),
        )
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_members_commands() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mode = Mode::Dev {
        data_dir: dir.path().join("data"),
    };
    let mut agent = Agent::start("dev", mode, Ports::free(), dir.path())?;
    agent.wait_ready().await?;

    let (ok, out) = cli(
        &agent,
        &[
            "services", "register", "--name", "cache", "--port", "6379", "--tag", "primary",
        ],
    )?;
    ensure!(ok, "register: {out}");
    let (ok, out) = cli(&agent, &["services", "list"])?;
    ensure!(
        ok && out.contains("cache") && out.contains("primary"),
        "list: {out}"
    );
    let (ok, out) = cli(&agent, &["services", "show", "cache"])?;
    ensure!(ok && out.contains("6379"), "show: {out}");
    let (ok, out) = cli(&agent, &["members"])?;
    ensure!(ok && out.contains("dev"), "members: {out}");
    let (ok, out) = cli(&agent, &["services", "deregister", "cache"])?;
    ensure!(ok, "deregister: {out}");
    ensure!(agent.instance_ids("cache").await?.is_empty());
    let (ok, out) = cli(
        &agent,
        &["services", "register", "--name", "bad_name", "--port", "1"],
    )?;
    ensure!(
        !ok && out.contains("DNS label"),
        "a bad name must fail with the API's message: {out}"
    );
    Ok(())
}
