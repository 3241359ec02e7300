//! Finding and installing the peer programs the benchmarks run (Debian packages), shared by
//! every subcommand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Finds a program on PATH or in /usr/sbin (knotd, nginx and haproxy live there, and a non-root
/// PATH may lack it).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !path.is_empty() {
        return Some(PathBuf::from(path));
    }
    let sbin = Path::new("/usr/sbin").join(name);
    sbin.exists().then_some(sbin)
}

/// Installs Debian `packages` with apt-get (refreshing the package lists once if the first try
/// fails); `bench` names the subcommand in messages. Fails with the command to run when this
/// process cannot install.
pub fn apt_install(bench: &str, packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() || find_tool("apt-get").is_none() {
        bail!(
            "meridian-bench {bench} needs {}: run 'sudo apt-get install -y {}'",
            packages.join(", "),
            packages.join(" ")
        );
    }
    eprintln!("{bench}: installing {} with apt-get", packages.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
        if !install() {
            bail!("apt-get install {} failed", packages.join(" "));
        }
    }
    Ok(())
}

/// A free TCP port on loopback (the kernel's pick).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until every agent on `http_ports` knows a Raft leader (60 s at most in all).
pub async fn wait_leader(http: &reqwest::Client, http_ports: &[u16]) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for port in http_ports {
        let url = format!("http://127.0.0.1:{port}/v1/status/leader");
        loop {
            if let Ok(r) = http.get(&url).send().await
                && let Ok(s) = r.json::<String>().await
                && !s.is_empty()
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("no leader known at 127.0.0.1:{port} within 60 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
