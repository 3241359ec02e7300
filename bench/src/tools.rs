//! What every subcommand shares: finding and installing the peer programs the benchmarks run
//! (Debian packages), free ports, waiting for a Raft leader, and the CPU seconds and memory of
//! the processes under test (from `/proc`, see [`Meter`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, bail};
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

// ---------------------------------------------------------------------------------------------
// CPU and memory of a process, from /proc (the same inside a network namespace: it is the same
// process table).

/// Clock ticks per second of the CPU times in `/proc` (`getconf CLK_TCK`; 100, Linux's value,
/// if that fails), asked once.
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of process `pid` (all its threads) since it started, from
/// `/proc/<pid>/stat`; `None` once the process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold spaces: count from its end. After
    // it, the state is field 3, utime field 14 and stime field 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A field of `/proc/<pid>/status` in KiB (`"VmRSS:"`, `"VmHWM:"`); `None` once the process is
/// gone (or has no memory left: a zombie).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What a process had used at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Peak resident set since the process started (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Resident set now (`VmRSS`), KiB.
    pub rss_kib: u64,
}

impl Usage {
    /// Reads process `pid` now; `None` once it is gone.
    pub fn read(pid: u32) -> Option<Usage> {
        Some(Usage {
            cpu_seconds: cpu_seconds(pid)?,
            peak_rss_kib: status_kib(pid, "VmHWM:")?,
            rss_kib: status_kib(pid, "VmRSS:")?,
        })
    }
}

/// CPU seconds and peak RSS of one process over a measured phase: the CPU it spent from
/// [`Meter::start`] to the last [`Meter::sample`] (its start-up before is not counted), and the
/// highest `VmHWM` read. A process that is started again ([`Meter::restarted`]) is counted from
/// its new start, every incarnation added up.
#[derive(Clone, Debug)]
pub struct Meter {
    name: String,
    pid: u32,
    /// CPU seconds of the current incarnation not counted (what it spent before the phase).
    base_cpu: f64,
    /// CPU seconds of the earlier incarnations, over the phase.
    done_cpu: f64,
    /// The last reading of the current incarnation.
    last: Option<Usage>,
    peak_rss_kib: u64,
    starts: u32,
    gone: bool,
}

impl Meter {
    /// Starts measuring process `pid` (called `name` in reports) now.
    pub fn start(name: &str, pid: u32) -> Meter {
        let now = Usage::read(pid);
        Meter {
            name: name.to_owned(),
            pid,
            base_cpu: now.map_or(0.0, |u| u.cpu_seconds),
            done_cpu: 0.0,
            last: now,
            peak_rss_kib: now.map_or(0, |u| u.peak_rss_kib),
            starts: 1,
            gone: now.is_none(),
        }
    }

    /// Reads the process now. Once it is gone, the figures stay those of the last reading.
    pub fn sample(&mut self) -> Option<Usage> {
        let now = Usage::read(self.pid);
        match now {
            Some(u) => {
                self.peak_rss_kib = self.peak_rss_kib.max(u.peak_rss_kib);
                self.last = Some(u);
                self.gone = false;
            }
            None => self.gone = true,
        }
        now
    }

    /// The process was started again as `pid` (sample the old one just before it is stopped):
    /// the new one counts from its start, since starting again is part of the measured work.
    pub fn restarted(&mut self, pid: u32) {
        self.done_cpu += self.phase_cpu();
        self.pid = pid;
        self.base_cpu = 0.0;
        self.last = None;
        self.starts += 1;
        self.sample();
    }

    fn phase_cpu(&self) -> f64 {
        self.last
            .map_or(0.0, |u| (u.cpu_seconds - self.base_cpu).max(0.0))
    }

    /// The figures so far, as of the last reading.
    pub fn usage(&self) -> ProcessUsage {
        ProcessUsage {
            name: self.name.clone(),
            cpu_seconds: self.done_cpu + self.phase_cpu(),
            peak_rss_kib: self.peak_rss_kib,
            rss_kib: self.last.map_or(0, |u| u.rss_kib),
            starts: self.starts,
            gone: self.gone,
        }
    }
}

/// One process's resource use over a measured phase (see [`Meter`]).
#[derive(Clone, Debug, Serialize)]
pub struct ProcessUsage {
    pub name: String,
    /// User + system CPU seconds (all threads) over the phase.
    pub cpu_seconds: f64,
    /// The highest `VmHWM` read, KiB (since the process started: start-up included).
    pub peak_rss_kib: u64,
    /// `VmRSS` at the last reading, KiB.
    pub rss_kib: u64,
    /// Processes counted: 1, or more when it was started again during the phase.
    pub starts: u32,
    /// The process was gone at the last reading: its figures are those of the reading before.
    pub gone: bool,
}

impl ProcessUsage {
    /// `CPU s / peak RSS`, for a Markdown cell: `4.21 s / 81.3 MiB`.
    pub fn cell(&self) -> String {
        format!("{:.2} s / {}", self.cpu_seconds, mib(self.peak_rss_kib))
    }
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Starts `cmd` with no input and both outputs into `log` (`what` names it in the error).
pub fn spawn_logged(
    cmd: &mut Command,
    log: std::fs::File,
    what: &str,
) -> Result<std::process::Child> {
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {what}"))
}

/// The ports of one agent.
#[derive(Clone, Copy, Serialize)]
pub struct Ports {
    /// HTTP API.
    pub http: u16,
    /// DNS.
    pub dns: u16,
    /// LAN gRPC (Raft).
    pub rpc: u16,
    /// WAN gRPC (federation).
    pub wan: u16,
    /// Gateway (TCP, and UDP for the tunnel).
    pub gateway: u16,
}

impl Ports {
    /// Fixed ports for agent `k` in a benchmark's own network namespace (nothing else runs
    /// there), below the ephemeral range so that a client port can never be mistaken for a WAN
    /// port by the firewall rules.
    pub fn fixed(k: u16) -> Ports {
        Ports {
            http: 8500 + k,
            dns: 8600 + k,
            rpc: 8300 + k,
            wan: 8310 + k,
            gateway: 8440 + k,
        }
    }

    /// Free loopback ports (the kernel's pick).
    pub fn free() -> Result<Ports> {
        Ok(Ports {
            http: free_port()?,
            dns: free_port()?,
            rpc: free_port()?,
            wan: free_port()?,
            gateway: free_port()?,
        })
    }
}

/// `program` run on CPU `core` (`taskset -c`), or anywhere without one.
pub fn pinned(core: Option<usize>, program: &Path) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// The top of every agent configuration a benchmark writes: the LAN rpc port in plain text and
/// the HTTP API without tokens, so the figures measure the data path alone (the agent refuses
/// both outside `--dev` unless told, as here).
pub const BENCH_SECURITY: &str = "insecure = true\nacl.enabled = false\n";

/// Writes `dir/meridian.toml`: a one-node datacenter dc1 (node `node`) on 127.0.0.1 and `p`,
/// data in `data`, fast Raft timings, one DNS thread, then the TOML `extra`. Returns its path.
pub fn one_node_config(
    dir: &Path,
    node: &str,
    data: &Path,
    p: &Ports,
    extra: &str,
) -> Result<PathBuf> {
    let conf = dir.join("meridian.toml");
    std::fs::write(
        &conf,
        format!(
            "{BENCH_SECURITY}datacenter = \"dc1\"\nnode_name = \"{node}\"\nnode_id = 1\nbind = \"127.0.0.1\"\n\
             data_dir = \"{}\"\n\n[ports]\nhttp = {}\ndns = {}\nrpc = {}\nwan = {}\n\
             gateway = {}\n\n[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 300\n\
             election_timeout_max_ms = 600\n\n[dns]\nthreads = 1\n\n{extra}\
             [[servers]]\nid = 1\nrpc = \"127.0.0.1:{}\"\n",
            data.display(),
            p.http,
            p.dns,
            p.rpc,
            p.wan,
            p.gateway,
            p.rpc,
        ),
    )?;
    Ok(conf)
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
        crate::median(before_ms.to_vec()),
        crate::median(after_ms.to_vec()),
    )
}
