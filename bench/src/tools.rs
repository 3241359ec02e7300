//! What every subcommand shares beyond the test kit: finding and installing the peer programs
//! the benchmarks run (Debian packages), the agent configurations benchmarks start from,
//! certificates for peers, and the reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use meridian_testkit::config::Raft;
use meridian_testkit::stats::median;
use meridian_testkit::{AgentConfig, Ports};
use serde::Serialize;

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

/// The agent configuration every benchmark starts from: one-node DC `dc`, node `node` on
/// 127.0.0.1 and `ports`, data in `data`, the node's default Raft timings, the LAN rpc port in
/// plain text and the HTTP API without tokens, so the figures measure the data path alone (the
/// agent refuses both outside `--dev` unless told, as here).
pub fn open_config(dc: &str, node: &str, ports: Ports, data: &Path) -> AgentConfig {
    let mut c = AgentConfig::new(dc, node, ports, data).open_api();
    c.raft = Raft {
        heartbeat_ms: 250,
        election_timeout_min_ms: 1000,
        election_timeout_max_ms: 2000,
    };
    c
}

/// Raft timings a little faster than the kit's [`Raft::fast`], as the one-node benchmarks have
/// always used: a one-node DC elects itself sooner.
pub fn fast_raft() -> Raft {
    Raft {
        heartbeat_ms: 100,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
    }
}

/// A one-node datacenter dc1 (node `node`) on `ports`, data in `data`: [`open_config`] with
/// [`fast_raft`] timings and one DNS thread.
pub fn one_node_config(node: &str, data: &Path, ports: Ports) -> AgentConfig {
    let mut c = open_config("dc1", node, ports, data);
    c.raft = fast_raft();
    c.set("dns", "threads", 1);
    c
}

/// Fixed ports for agent `k` in a benchmark's own network namespace (nothing else runs there),
/// below the ephemeral range so that a client port can never be mistaken for a WAN port by the
/// firewall rules.
pub fn fixed_ports(k: u16) -> Ports {
    Ports {
        http: 8500 + k,
        dns: 8600 + k,
        rpc: 8300 + k,
        wan: 8310 + k,
        gateway: 8440 + k,
    }
}

/// Makes a self-signed ECDSA P-256 certificate valid two days, with common name `cn` and the DNS
/// names `names`, into `cert` and `key`, with `openssl`.
pub fn self_signed_cert(
    openssl: &Path,
    cert: &Path,
    key: &Path,
    cn: &str,
    names: &[&str],
) -> Result<()> {
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let out = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}")])
        .args(["-addext", &format!("subjectAltName={}", sans.join(","))])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Writes a benchmark's report: `out/<name>.json` (every raw figure) and `out/<name>.md` (its
/// tables), and prints the tables.
pub fn write_report(out: &Path, name: &str, report: &impl Serialize, md: &str) -> Result<()> {
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join(format!("{name}.md")), md)?;
    println!("{md}");
    Ok(())
}

/// The report line that says how the WAN was emulated and that it held: the delayer's mode, the
/// TCP connect RTT through it before and after (medians), packets delayed and overruns.
pub fn wan_line(
    mode: &str,
    before_ms: &[f64],
    after_ms: &[f64],
    delayed: u64,
    overruns: u64,
) -> String {
    format!(
        "WAN: {mode}; TCP connect RTT {:.1} ms before, {:.1} ms after (median of 5); {delayed} \
         packets delayed, {overruns} overruns.\n",
        median(before_ms),
        median(after_ms),
    )
}
