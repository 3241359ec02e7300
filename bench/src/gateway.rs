//! `gateway`: Meridian's mesh gateway (TLS passthrough routed by SNI) beside HAProxy (`mode tcp`,
//! `req.ssl_sni` routing) and nginx's stream module (`ssl_preread`, a `map` on the server name),
//! and direct to the backend as the limit. One backend for all four paths: an nginx holding a
//! certificate for `web.service.consul` that answers `/` with `ok` and serves a large generated
//! file for the bulk test. One load generator: wrk over HTTPS with the SNI name, run in a private
//! mount namespace whose `/etc/hosts` maps the name to 127.0.0.1 (the host's file is untouched).
//!
//! Pinning on two cores or more: every proxy on core 1 with one thread or worker each (Meridian's
//! whole agent pinned there, its tokio runtime at one worker); the backend and wrk (one thread) on
//! core 0, for all four paths alike. The tests, each bounded by wrk's `-d` (and a kill deadline):
//! (a) new TLS connections per second (`Connection: close`, one request per connection),
//! (b) keep-alive requests per second, (c) bulk MB/s (the large file over a few connections),
//! (d) latency: one connection in a closed loop and a paced load (connections with a think time,
//! far below saturation), whose p50/p99 less direct's is the latency a proxy adds.
//!
//! Per run the report gives wrk's figures (from a Lua `done` hook, so nothing is parsed from its
//! rounded text), each process's CPU seconds (from `/proc/<pid>/stat`), the CPU the rest of the
//! machine used meanwhile (a disturbed run is run again in a full run), and at the end each
//! process's RSS. Before loading, every path is checked once with curl verifying the backend's
//! certificate for the name (so nothing in between terminated TLS), and a name no proxy routes
//! is checked to be refused.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meridian_testkit::meter::{clock_ticks, status_kib};
use meridian_testkit::stats::median;
use meridian_testkit::{Ports, Proc, free_port};
use serde::{Deserialize, Serialize};

use crate::procs;
use crate::tools::{self, find_tool, is_root};

/// The name every path is reached by (SNI and HTTP Host).
const NAME: &str = "web.service.consul";
/// The nginx stream module, from the Debian package `libnginx-mod-stream`.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// One way to reach the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Straight to the backend: the limit.
    Direct,
    /// Through Meridian's gateway port.
    Meridian,
    /// Through HAProxy, `mode tcp`, routed on `req.ssl_sni`.
    Haproxy,
    /// Through nginx's stream module with `ssl_preread`.
    NginxStream,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::Direct,
        Target::Meridian,
        Target::Haproxy,
        Target::NginxStream,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Meridian => "meridian",
            Target::Haproxy => "haproxy",
            Target::NginxStream => "nginx-stream",
        }
    }
}

/// Where the processes run on a two-core machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Backend and wrk on core 0, the proxy alone on core 1: the proxy is never short of CPU,
    /// core 0 (TLS on both ends) bounds every path.
    OwnCore,
    /// Backend and proxy on core 0, wrk alone on core 1: the proxy takes its CPU from the
    /// backend's core, so a cheaper proxy shows as more throughput.
    SharedCore,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::OwnCore => "own-core",
            Layout::SharedCore => "shared-core",
        }
    }

    /// Cores of the backend, the proxy and wrk.
    fn cores(self) -> (usize, usize, usize) {
        match self {
            Layout::OwnCore => (0, 1, 0),
            Layout::SharedCore => (0, 0, 1),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Layout::OwnCore => {
                "backend nginx (1 worker) and wrk (-t1) on core 0, the proxy alone on core 1"
            }
            Layout::SharedCore => {
                "backend nginx (1 worker) and the proxy on core 0, wrk (-t1) alone on core 1"
            }
        }
    }
}

/// What `meridian-bench gateway` was asked for.
pub struct Options {
    /// Seconds per throughput run (tests a, b, c).
    pub seconds: u64,
    /// Seconds per latency run (test d).
    pub latency_seconds: u64,
    /// Repetitions; the median is reported.
    pub reps: usize,
    /// Size of the bulk file in MiB.
    pub file_mib: usize,
    /// wrk connections for new connections per second (each request on a new connection).
    pub close_connections: usize,
    /// wrk connections for keep-alive requests per second.
    pub keepalive_connections: usize,
    /// wrk connections for the bulk transfer.
    pub bulk_connections: usize,
    /// wrk connections for the paced latency run.
    pub paced_connections: usize,
    /// Think time of each paced connection between its requests, in milliseconds.
    pub think_ms: u64,
    /// Which paths to measure (empty: all four).
    pub targets: Vec<Target>,
    /// The layouts to measure, one after the other.
    pub layouts: Vec<Layout>,
}

/// One kind of wrk run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Test {
    /// (a) `Connection: close`: every request on a new TLS connection.
    NewConnections,
    /// (b) keep-alive requests.
    KeepAlive,
    /// (c) the large file.
    Bulk,
    /// (d) one keep-alive connection, closed loop: unloaded latency.
    OneConnection,
    /// (d) keep-alive connections with a think time: latency at a moderate rate.
    Paced,
}

impl Test {
    const ALL: [Test; 5] = [
        Test::NewConnections,
        Test::KeepAlive,
        Test::Bulk,
        Test::OneConnection,
        Test::Paced,
    ];

    fn name(self) -> &'static str {
        match self {
            Test::NewConnections => "new_connections",
            Test::KeepAlive => "keep_alive",
            Test::Bulk => "bulk",
            Test::OneConnection => "one_connection",
            Test::Paced => "paced",
        }
    }
}

/// What wrk's `done` hook printed (times in microseconds).
#[derive(Deserialize, Serialize, Clone, Default)]
pub(crate) struct WrkOut {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub status: u64,
    pub timeout: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// One wrk run against one path.
#[derive(Serialize, Clone)]
struct Run {
    layout: Layout,
    target: Target,
    test: Test,
    rep: usize,
    connections: usize,
    think_ms: u64,
    seconds: f64,
    requests: u64,
    bytes: u64,
    /// Completed requests per second (for `new_connections`: TLS connections per second).
    per_second: f64,
    /// Bytes read by wrk per second, in MB (10^6 B) per second.
    mb_per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    /// wrk's connect, read, write, timeout errors and non-2xx answers.
    errors: u64,
    /// User + system CPU seconds of the proxy (none for `direct`).
    proxy_cpu_seconds: f64,
    backend_cpu_seconds: f64,
    /// wrk's CPU seconds (sampled every 50 ms, so a little low).
    wrk_cpu_seconds: f64,
    /// Softirq seconds of the whole machine: loopback TCP processing, which with IRQ time
    /// accounting is charged to no process.
    softirq_seconds: f64,
    /// Busy seconds of the proxy's core where the proxy has it alone (`own-core`): the proxy's
    /// own CPU plus the softirq work it causes there, plus anything else that ran on that core.
    proxy_core_busy_seconds: f64,
    /// Busy time of the proxy's core per request, in microseconds.
    proxy_core_us_per_request: f64,
    /// CPU seconds the rest of the machine used during the run, softirq aside (other work
    /// disturbs the run).
    other_cpu_seconds: f64,
    /// Proxy CPU microseconds per request (per connection for `new_connections`).
    proxy_cpu_us_per_request: f64,
    /// Proxy CPU microseconds per MB relayed.
    proxy_cpu_us_per_mb: f64,
}

/// Medians over the repetitions of one test on one path.
#[derive(Serialize, Clone, Default)]
struct Cell {
    per_second: f64,
    mb_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    proxy_cpu_us_per_request: f64,
    proxy_cpu_us_per_mb: f64,
    /// Busy time of the proxy's core (softirq included) per request and per MB, microseconds.
    proxy_core_us_per_request: f64,
    proxy_core_us_per_mb: f64,
    /// Backend CPU per request and per MB, microseconds: what a proxy in front costs the backend.
    backend_cpu_us_per_request: f64,
    backend_cpu_us_per_mb: f64,
    /// Lowest and highest of the repetitions.
    per_second_range: (f64, f64),
    mb_per_second_range: (f64, f64),
    errors: u64,
}

/// Everything about one path.
#[derive(Serialize)]
struct Summary {
    target: Target,
    port: u16,
    /// What curl reported for the path (verifying the certificate): TLS version and cipher.
    tls: String,
    new_connections: Cell,
    /// Concurrency over new connections per second: the mean life of one connection (TLS
    /// handshake, request, answer, close), by Little's law.
    mean_connection_ms: f64,
    keep_alive: Cell,
    bulk: Cell,
    one_connection: Cell,
    paced: Cell,
    /// p50 and p99 less direct's, one connection.
    added_one_connection_ms: Option<(f64, f64)>,
    /// p50 and p99 less direct's, paced.
    added_paced_ms: Option<(f64, f64)>,
    /// p50 and p99 less direct's, keep-alive at saturation.
    added_keep_alive_ms: Option<(f64, f64)>,
    /// CPU seconds of the proxy over this layout's recorded runs.
    proxy_cpu_seconds: f64,
}

/// One process of the benchmark, over the whole benchmark.
#[derive(Serialize)]
struct ProcInfo {
    name: &'static str,
    /// RSS before the load and peak RSS (VmHWM) at the end, in KiB.
    idle_rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    /// Threads at the end, and their names (Meridian: every thread of the agent).
    threads: Option<usize>,
    thread_names: String,
}

/// The figures of one layout.
#[derive(Serialize)]
struct LayoutReport {
    layout: Layout,
    pinning: String,
    summaries: Vec<Summary>,
    verdicts: Vec<Verdict>,
}

/// A verdict on one of the targets.
#[derive(Serialize)]
struct Verdict {
    target: String,
    meridian: f64,
    reference: f64,
    ratio: f64,
    met: bool,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    date: String,
    machine: String,
    command: String,
    versions: Vec<String>,
    /// The threads of each process (the same in every layout).
    threads: String,
    seconds_per_run: u64,
    latency_seconds_per_run: u64,
    reps: usize,
    file_bytes: u64,
    close_connections: usize,
    keepalive_connections: usize,
    bulk_connections: usize,
    paced_connections: usize,
    think_ms: u64,
    layouts: Vec<LayoutReport>,
    processes: Vec<ProcInfo>,
    runs: Vec<Run>,
    /// Checks before the load that did not go as expected (empty when all passed).
    check_problems: Vec<String>,
    /// Meridian's `meridian_gateway_*` metrics after the runs.
    meridian_metrics: Vec<String>,
}

/// The processes alive now, killed by [`kill_on_signal`] if the benchmark is interrupted (a
/// signal skips the `Drop` guards).
static LIVE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
/// The benchmark's temporary folder, removed by [`kill_on_signal`] too.
static LIVE_DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

fn track(pid: u32) {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(pid);
}

fn untrack(pid: u32) {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|p| *p != pid);
}

/// On SIGINT or SIGTERM: kills every process the benchmark started, then exits.
async fn kill_on_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    let pids = LIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    if let Some(dir) = LIVE_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    eprintln!("gateway: interrupted: killed {} processes", pids.len());
    std::process::exit(130);
}

/// A process started by the benchmark (the kit's [`Proc`], killed when dropped), listed in
/// [`LIVE`] while it lives so that an interrupt kills it too.
pub(crate) struct Tracked {
    pub proc: Proc,
    pid: u32,
}

impl Tracked {
    /// Starts `program args…` on `core` (see [`procs::start`]), output into `log`, and tracks it.
    pub(crate) fn start(
        name: &str,
        core: Option<usize>,
        program: &Path,
        args: Vec<String>,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Tracked> {
        let proc = procs::start(name, core, program, args, env, log)?;
        let pid = procs::pid(&proc)?;
        track(pid);
        Ok(Tracked { proc, pid })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn check_running(&mut self) -> Result<()> {
        procs::check_running(&mut self.proc)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Killed by the `Proc` dropped right after; an interrupt in between finds it untracked
        // and leaves it to that.
        untrack(self.pid);
    }
}

/// The programs the benchmark runs.
struct Tools {
    nginx: PathBuf,
    haproxy: PathBuf,
    wrk: PathBuf,
    curl: PathBuf,
    openssl: PathBuf,
}

/// Finds the peers and tools, installing the Debian packages when missing and root.
fn ensure_tools() -> Result<Tools> {
    let wanted = [
        ("nginx", "nginx"),
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("taskset", "util-linux"),
        ("unshare", "util-linux"),
    ];
    let mut missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !Path::new(STREAM_MODULE).exists() {
        missing.push("libnginx-mod-stream");
    }
    missing.dedup();
    if !missing.is_empty() {
        crate::tools::apt_install("gateway", &missing)?;
        // Debian starts the packaged nginx and haproxy as services; the benchmark runs its own.
        for svc in ["nginx", "haproxy"] {
            let _ = Command::new("service")
                .args([svc, "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let get = |n: &str| find_tool(n).with_context(|| format!("{n} not found after installing"));
    Ok(Tools {
        nginx: get("nginx")?,
        haproxy: get("haproxy")?,
        wrk: get("wrk")?,
        curl: get("curl")?,
        openssl: get("openssl")?,
    })
}

/// `-p prefix -c conf`: an nginx of its own.
pub(crate) fn nginx_args(prefix: &Path, conf: &Path) -> Result<Vec<String>> {
    Ok(vec![
        "-p".to_owned(),
        prefix.to_str().context("a UTF-8 path")?.to_owned(),
        "-c".to_owned(),
        conf.to_str().context("a UTF-8 path")?.to_owned(),
    ])
}

/// A self-signed ECDSA P-256 certificate for [`NAME`], made with openssl.
fn certificate(openssl: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    crate::tools::self_signed_cert(openssl, &cert, &key, NAME, &[NAME])?;
    Ok((cert, key))
}

/// Writes `bytes` of pseudo-random data (TLS would hide any pattern anyway).
pub(crate) fn big_file(path: &Path, bytes: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

pub(crate) fn nginx_common(prefix: &Path) -> String {
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\nevents {{ worker_connections 4096; }}\n",
        p = prefix.display()
    )
}

/// The backend: nginx with TLS, one worker, `/` answering `ok`, the bulk file under `/big.bin`.
fn start_backend(
    nginx: &Path,
    dir: &Path,
    cert: &Path,
    key: &Path,
    www: &Path,
    core: Option<usize>,
) -> Result<(Tracked, u16)> {
    let port = free_port();
    let prefix = dir.join("backend");
    std::fs::create_dir_all(&prefix)?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "{common}http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  \
             proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  \
             scgi_temp_path {p}/scgi;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {c};\n    \
             ssl_certificate_key {k};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    root {www};\n    \
             location = / {{ return 200 \"ok\\n\"; }}\n    location = /big.bin {{ }}\n  }}\n}}\n",
            common = nginx_common(&prefix),
            p = prefix.display(),
            c = cert.display(),
            k = key.display(),
            www = www.display(),
        ),
    )?;
    let mut p = Tracked::start(
        "backend nginx",
        core,
        nginx,
        nginx_args(&prefix, &conf)?,
        &[],
        &prefix.join("stdout.log"),
    )?;
    procs::wait_listening(&mut p.proc, port)?;
    Ok((p, port))
}

/// nginx's stream module: `ssl_preread` and a map from the server name to the backend.
fn start_nginx_stream(
    nginx: &Path,
    dir: &Path,
    backend: u16,
    core: Option<usize>,
) -> Result<(Tracked, u16)> {
    let port = free_port();
    let prefix = dir.join("nginx-stream");
    std::fs::create_dir_all(&prefix)?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {STREAM_MODULE};\n{common}stream {{\n  \
             map $ssl_preread_server_name $upstream {{\n    {NAME} 127.0.0.1:{backend};\n    \
             default 127.0.0.1:1;\n  }}\n  server {{\n    listen 127.0.0.1:{port};\n    \
             ssl_preread on;\n    proxy_pass $upstream;\n    proxy_connect_timeout 2s;\n    \
             proxy_timeout 300s;\n  }}\n}}\n",
            common = nginx_common(&prefix),
        ),
    )?;
    let mut p = Tracked::start(
        "nginx stream",
        core,
        nginx,
        nginx_args(&prefix, &conf)?,
        &[],
        &prefix.join("stdout.log"),
    )?;
    procs::wait_listening(&mut p.proc, port)?;
    Ok((p, port))
}

/// HAProxy in `mode tcp`: waits for the ClientHello and routes on its SNI.
fn start_haproxy(
    haproxy: &Path,
    dir: &Path,
    backend: u16,
    core: Option<usize>,
) -> Result<(Tracked, u16)> {
    let port = free_port();
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 300s\n  timeout server 300s\n\
             frontend gateway\n  bind 127.0.0.1:{port}\n  tcp-request inspect-delay 5s\n  \
             tcp-request content accept if {{ req.ssl_hello_type 1 }}\n  \
             use_backend web if {{ req.ssl_sni -i {NAME} }}\n\
             backend web\n  server web-a 127.0.0.1:{backend}\n"
        ),
    )?;
    let args = vec![
        "-db".to_owned(),
        "-f".to_owned(),
        conf.to_str().context("a UTF-8 path")?.to_owned(),
    ];
    let mut p = Tracked::start(
        "haproxy",
        core,
        haproxy,
        args,
        &[],
        &dir.join("haproxy.log"),
    )?;
    procs::wait_listening(&mut p.proc, port)?;
    Ok((p, port))
}

/// A one-node Meridian datacenter from a config file, `[gateway]` at its defaults (written out),
/// its tokio runtime at one worker thread. Returns the process, its gateway port and the base
/// URL of its HTTP API.
fn start_meridian(bin: &Path, dir: &Path, core: Option<usize>) -> Result<(Tracked, u16, String)> {
    let ports = Ports::free();
    let mut config = tools::one_node_config("n1", &dir.join("meridian-data"), ports);
    config
        .set("gateway", "enabled", true)
        .set("gateway", "max_connections", 10_000)
        .set("gateway", "handshake_timeout_ms", 5_000)
        .set("gateway", "connect_timeout_ms", 2_000)
        .set("gateway", "idle_timeout_ms", 300_000);
    let agent = procs::configured_agent(
        "meridian",
        bin,
        &config,
        dir,
        &[("RUST_LOG", "warn"), ("TOKIO_WORKER_THREADS", "1")],
        core,
    )?;
    let base = agent.base();
    let pid = procs::pid(&agent.proc)?;
    track(pid);
    let mut p = Tracked {
        proc: agent.proc,
        pid,
    };
    procs::wait_listening(&mut p.proc, ports.gateway)?;
    Ok((p, ports.gateway, base))
}

/// Registers the backend as `web` and waits until the gateway relays to it.
async fn register(
    m: &mut Tracked,
    base: &str,
    backend: u16,
    curl: &Path,
    gw: u16,
    cert: &Path,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    meridian_testkit::wait::leader_known(&client, &[base.to_owned()], Duration::from_secs(60))
        .await?;
    let r = client
        .put(format!("{base}/v1/agent/service/register"))
        .json(&serde_json::json!({
            "ID": "web-a", "Name": "web", "Port": backend, "Address": "127.0.0.1",
        }))
        .send()
        .await?;
    let status = r.status();
    ensure!(
        status.is_success(),
        "registering: {status}: {}",
        r.text().await.unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        m.check_running()?;
        match curl_get(curl, gw, cert, NAME, "/") {
            Ok(c) if c.body == "ok\n" => return Ok(()),
            last => {
                if Instant::now() > deadline {
                    bail!(
                        "the gateway does not relay to the backend within 30 s: {:?}",
                        last.map(|c| c.body)
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one verifying curl got.
struct CurlGot {
    body: String,
    tls: String,
    http_code: String,
    size: u64,
}

/// curl to `https://<name>:<port><path>` resolved to 127.0.0.1, trusting only `cert`.
fn curl_get(curl: &Path, port: u16, cert: &Path, name: &str, path: &str) -> Result<CurlGot> {
    let body_file = std::env::temp_dir().join(format!("meridian-bench-gw-{}.body", port));
    let out = Command::new(curl)
        .args(["-sS", "-v", "--max-time", "30", "--cacert"])
        .arg(cert)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg("-o")
        .arg(&body_file)
        .args(["-w", "%{http_code} %{size_download}"])
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .context("running curl")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let body = std::fs::read(&body_file).unwrap_or_default();
    let _ = std::fs::remove_file(&body_file);
    if !out.status.success() {
        let err = stderr
            .lines()
            .filter(|l| l.starts_with("curl:"))
            .collect::<Vec<_>>()
            .join(" ");
        bail!("curl {name}:{port}{path}: {err}");
    }
    let w = String::from_utf8_lossy(&out.stdout);
    let mut w = w.split_whitespace();
    let tls = stderr
        .lines()
        .find_map(|l| l.split("SSL connection using ").nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    Ok(CurlGot {
        body: if body.len() < 1024 {
            String::from_utf8_lossy(&body).into_owned()
        } else {
            String::new()
        },
        tls,
        http_code: w.next().unwrap_or("").to_owned(),
        size: w.next().and_then(|s| s.parse().ok()).unwrap_or(0),
    })
}

/// User + system CPU seconds of a process (all its threads); an error once it is gone.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    meridian_testkit::meter::cpu_seconds(pid).with_context(|| format!("process {pid} is gone"))
}

/// CPU time from /proc/stat: per core, busy seconds (everything but idle and iowait, softirq
/// included), and the whole machine's softirq seconds.
struct CpuTimes {
    cores: Vec<f64>,
    softirq: f64,
}

impl CpuTimes {
    fn read(ticks: f64) -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let fields = |line: &str| -> Vec<f64> {
            line.split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0.0))
                .collect()
        };
        // user nice system idle iowait irq softirq steal
        let busy = |f: &[f64]| -> f64 {
            f.iter()
                .take(8)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, v)| v)
                .sum::<f64>()
                / ticks
        };
        let total = fields(stat.lines().next().context("empty /proc/stat")?);
        let cores = stat
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("cpu"))
            .map(|l| busy(&fields(l)))
            .collect();
        Ok(CpuTimes {
            cores,
            softirq: total.get(6).copied().unwrap_or(0.0) / ticks,
        })
    }

    fn busy(&self) -> f64 {
        self.cores.iter().sum()
    }
}

fn thread_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// Thread names of a process, counted: `name ×n`.
fn thread_names(pid: u32) -> String {
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            *names.entry(comm.trim().to_owned()).or_default() += 1;
        }
    }
    names
        .iter()
        .map(|(n, c)| format!("{n} ×{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// wrk's Lua hook: optional think time, and the summary as one JSON line.
pub(crate) fn wrk_script(think_ms: u64) -> String {
    let delay = if think_ms > 0 {
        format!("function delay() return {think_ms} end\n")
    } else {
        String::new()
    };
    format!(
        "{delay}function done(summary, latency, requests)\n  local e = summary.errors\n  \
         io.write(string.format('WRKJSON {{\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\
         \"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50_us\":%.1f,\
         \"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f}}\\n',\n    \
         summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, \
         e.timeout,\n    latency:percentile(50), latency:percentile(90), latency:percentile(99), \
         latency.max, latency.mean))\nend\n"
    )
}

/// The settings every wrk run shares.
struct Load<'a> {
    wrk: &'a Path,
    dir: &'a Path,
    hosts: &'a Path,
    layout: Layout,
    /// wrk's core (none: unpinned).
    core: Option<usize>,
    /// The proxy's core where it has it alone.
    proxy_core: Option<usize>,
    ticks: f64,
    backend_pid: u32,
    opt: &'a Options,
    /// Reruns of a run disturbed by other work (none with `--quick`).
    retries: usize,
    /// How long to wait at most for the machine to be quiet before each run (zero: no check,
    /// with `--quick`).
    quiet_wait: Duration,
}

impl Load<'_> {
    /// Waits (at most `quiet_wait`) until the whole machine is less than a tenth of a core busy
    /// over half a second: this machine also builds the project.
    fn wait_quiet(&self) -> Result<()> {
        if self.quiet_wait.is_zero() {
            return Ok(());
        }
        let deadline = Instant::now() + self.quiet_wait;
        let mut said = false;
        loop {
            let a = CpuTimes::read(self.ticks)?;
            std::thread::sleep(Duration::from_millis(500));
            let busy = CpuTimes::read(self.ticks)?.busy() - a.busy();
            if busy < 0.05 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "gateway: the machine is still busy ({:.1} cores) after waiting {} s: going on",
                    busy * 2.0,
                    self.quiet_wait.as_secs()
                );
                return Ok(());
            }
            if !said {
                eprintln!(
                    "gateway: waiting for the machine to be quiet ({:.1} cores busy)",
                    busy * 2.0
                );
                said = true;
            }
        }
    }

    /// [`Load::run`], repeated (at most `retries` times) while other work on the machine took
    /// more than a tenth of a core during the run; the last attempt is kept.
    fn run_clean(
        &self,
        target: Target,
        port: u16,
        proxy: Option<&mut Tracked>,
        test: Test,
        rep: usize,
    ) -> Result<Run> {
        let mut proxy = proxy;
        let mut attempt = 1;
        loop {
            self.wait_quiet()?;
            let r = self.run(target, port, proxy.as_deref_mut(), test, rep, None)?;
            if r.other_cpu_seconds <= 0.1 * r.seconds || attempt > self.retries {
                if r.other_cpu_seconds > 0.1 * r.seconds {
                    eprintln!(
                        "gateway: warning: other work took {:.1} CPU s during this {:.0} s run: \
                         its figures are not clean",
                        r.other_cpu_seconds, r.seconds
                    );
                }
                return Ok(r);
            }
            attempt += 1;
            eprintln!(
                "gateway: other work took {:.1} CPU s during {} {}: running it again (attempt \
                 {attempt})",
                r.other_cpu_seconds,
                target.name(),
                test.name()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// One wrk run through `port`, bounded by `-d` (and killed 30 s after that).
    fn run(
        &self,
        target: Target,
        port: u16,
        mut proxy: Option<&mut Tracked>,
        test: Test,
        rep: usize,
        seconds: Option<u64>,
    ) -> Result<Run> {
        let o = self.opt;
        let (connections, think_ms, path, close, default_seconds) = match test {
            Test::NewConnections => (o.close_connections, 0, "/", true, o.seconds),
            Test::KeepAlive => (o.keepalive_connections, 0, "/", false, o.seconds),
            Test::Bulk => (o.bulk_connections, 0, "/big.bin", false, o.seconds),
            Test::OneConnection => (1, 0, "/", false, o.latency_seconds),
            Test::Paced => (
                o.paced_connections,
                o.think_ms,
                "/",
                false,
                o.latency_seconds,
            ),
        };
        let seconds = seconds.unwrap_or(default_seconds);
        let script = self.dir.join(format!("wrk-{think_ms}.lua"));
        std::fs::write(&script, wrk_script(think_ms))?;
        let header = if close { " -H 'Connection: close'" } else { "" };
        // wrk takes its SNI from the URL's host; in this private mount namespace /etc/hosts maps
        // that name to 127.0.0.1, the host's own file is untouched.
        let shell = format!(
            "mount --bind '{hosts}' /etc/hosts && exec '{wrk}' -t1 -c{connections} -d{seconds}s \
             --timeout 30s -s '{script}'{header} https://{NAME}:{port}{path}",
            hosts = self.hosts.display(),
            wrk = self.wrk.display(),
            script = script.display(),
        );
        let out_path = self.dir.join("wrk.out");
        // Each run's output alone (the kit's process appends to its log).
        std::fs::File::create(&out_path)?;
        // Not root: a user namespace of our own lets us bind-mount there too.
        let args = vec![
            if is_root() { "-m" } else { "-rm" }.to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            shell,
        ];
        if let Some(p) = proxy.as_deref_mut() {
            p.check_running()?;
        }
        let proxy_pid = proxy.as_ref().map(|p| p.pid());
        let proxy0 = proxy_pid.map_or(Ok(0.0), cpu_seconds)?;
        let backend0 = cpu_seconds(self.backend_pid)?;
        let cpu0 = CpuTimes::read(self.ticks)?;
        let started = Instant::now();
        let mut child =
            Tracked::start("wrk", self.core, Path::new("unshare"), args, &[], &out_path)
                .context("starting wrk (through unshare)")?;
        // wrk's output is the result, shown by the caller when it fails.
        child.proc.print_log_on_failure = false;
        let deadline = started + Duration::from_secs(seconds + 30);
        let mut wrk_cpu = 0.0;
        let status = loop {
            if let Some(c) = meridian_testkit::meter::cpu_seconds(child.pid()) {
                wrk_cpu = c;
            }
            if let Some(s) = child.proc.exit_status() {
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "wrk {} against {} did not stop in time",
                    test.name(),
                    target.name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let proxy_cpu = proxy_pid.map_or(Ok(0.0), cpu_seconds)? - proxy0;
        let backend_cpu = cpu_seconds(self.backend_pid)? - backend0;
        let cpu1 = CpuTimes::read(self.ticks)?;
        let busy = cpu1.busy() - cpu0.busy();
        let softirq = cpu1.softirq - cpu0.softirq;
        let proxy_core_busy = match (self.proxy_core, proxy_pid) {
            (Some(c), Some(_)) => {
                cpu1.cores.get(c).copied().unwrap_or(0.0)
                    - cpu0.cores.get(c).copied().unwrap_or(0.0)
            }
            _ => 0.0,
        };
        let text = std::fs::read_to_string(&out_path)?;
        ensure!(
            status.success(),
            "wrk {} against {} failed ({status}):\n{text}",
            test.name(),
            target.name()
        );
        let w: WrkOut = text
            .lines()
            .find_map(|l| l.strip_prefix("WRKJSON "))
            .with_context(|| format!("wrk printed no summary:\n{text}"))
            .and_then(|j| serde_json::from_str(j).context("wrk's summary"))?;
        let secs = w.duration_us as f64 / 1e6;
        let mb = w.bytes as f64 / 1e6;
        let errors = w.connect + w.read + w.write + w.status + w.timeout;
        Ok(Run {
            layout: self.layout,
            target,
            test,
            rep,
            connections,
            think_ms,
            seconds: secs,
            requests: w.requests,
            bytes: w.bytes,
            per_second: w.requests as f64 / secs.max(1e-9),
            mb_per_second: mb / secs.max(1e-9),
            p50_ms: w.p50_us / 1000.0,
            p90_ms: w.p90_us / 1000.0,
            p99_ms: w.p99_us / 1000.0,
            max_ms: w.max_us / 1000.0,
            mean_ms: w.mean_us / 1000.0,
            errors,
            proxy_cpu_seconds: proxy_cpu,
            backend_cpu_seconds: backend_cpu,
            wrk_cpu_seconds: wrk_cpu,
            softirq_seconds: softirq,
            proxy_core_busy_seconds: proxy_core_busy,
            proxy_core_us_per_request: if w.requests > 0 {
                proxy_core_busy * 1e6 / w.requests as f64
            } else {
                0.0
            },
            other_cpu_seconds: (busy - softirq - proxy_cpu - backend_cpu - wrk_cpu).max(0.0),
            proxy_cpu_us_per_request: if w.requests > 0 {
                proxy_cpu * 1e6 / w.requests as f64
            } else {
                0.0
            },
            proxy_cpu_us_per_mb: if mb > 0.0 { proxy_cpu * 1e6 / mb } else { 0.0 },
        })
    }
}

/// Meridian's `meridian_gateway_*` metric lines, from its API at `base`.
async fn gateway_metrics(base: &str) -> Vec<String> {
    let Ok(text) = meridian_testkit::metrics::scrape(&reqwest::Client::new(), base).await else {
        return vec!["(metrics unavailable)".into()];
    };
    text.lines()
        .filter(|l| l.starts_with("meridian_gateway_"))
        .map(str::to_owned)
        .collect()
}

fn version(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

/// `taskset -a -p -c <core> <pid>`: moves every thread of a running process to `core`.
fn repin(pid: u32, core: usize) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .output()
        .context("running taskset")?;
    ensure!(
        out.status.success(),
        "taskset -a -p -c {core} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The medians of one test on one path in one layout.
fn cell(runs: &[Run], layout: Layout, t: Target, test: Test) -> Cell {
    let rs: Vec<&Run> = runs
        .iter()
        .filter(|r| r.layout == layout && r.target == t && r.test == test)
        .collect();
    let med = |f: &dyn Fn(&Run) -> f64| median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
    let range = |f: &dyn Fn(&Run) -> f64| {
        rs.iter()
            .map(|r| f(r))
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let per_mb = |secs: f64, r: &Run| {
        let mb = r.bytes as f64 / 1e6;
        if mb > 0.0 { secs * 1e6 / mb } else { 0.0 }
    };
    Cell {
        per_second: med(&|r| r.per_second),
        mb_per_second: med(&|r| r.mb_per_second),
        p50_ms: med(&|r| r.p50_ms),
        p99_ms: med(&|r| r.p99_ms),
        proxy_cpu_us_per_request: med(&|r| r.proxy_cpu_us_per_request),
        proxy_cpu_us_per_mb: med(&|r| r.proxy_cpu_us_per_mb),
        proxy_core_us_per_request: med(&|r| r.proxy_core_us_per_request),
        proxy_core_us_per_mb: med(&|r| per_mb(r.proxy_core_busy_seconds, r)),
        backend_cpu_us_per_request: med(&|r| {
            if r.requests > 0 {
                r.backend_cpu_seconds * 1e6 / r.requests as f64
            } else {
                0.0
            }
        }),
        backend_cpu_us_per_mb: med(&|r| per_mb(r.backend_cpu_seconds, r)),
        per_second_range: range(&|r| r.per_second),
        mb_per_second_range: range(&|r| r.mb_per_second),
        errors: rs.iter().map(|r| r.errors).sum(),
    }
}

/// The summaries and verdicts of one layout.
fn layout_report(
    runs: &[Run],
    layout: Layout,
    pinning: String,
    paths: &[(Target, u16)],
    tls: &std::collections::HashMap<&str, String>,
    close_connections: usize,
) -> LayoutReport {
    let c = |t, test| cell(runs, layout, t, test);
    let direct = paths.iter().any(|(t, _)| *t == Target::Direct).then(|| {
        (
            c(Target::Direct, Test::OneConnection),
            c(Target::Direct, Test::Paced),
            c(Target::Direct, Test::KeepAlive),
        )
    });
    let added = |x: &Cell, d: &Cell| Some((x.p50_ms - d.p50_ms, x.p99_ms - d.p99_ms));
    let mut summaries = Vec::new();
    for (t, port) in paths {
        let (one, paced, ka, nc) = (
            c(*t, Test::OneConnection),
            c(*t, Test::Paced),
            c(*t, Test::KeepAlive),
            c(*t, Test::NewConnections),
        );
        summaries.push(Summary {
            target: *t,
            port: *port,
            tls: tls.get(t.name()).cloned().unwrap_or_default(),
            mean_connection_ms: if nc.per_second > 0.0 {
                close_connections as f64 * 1000.0 / nc.per_second
            } else {
                0.0
            },
            new_connections: nc,
            added_one_connection_ms: direct.as_ref().and_then(|d| added(&one, &d.0)),
            added_paced_ms: direct.as_ref().and_then(|d| added(&paced, &d.1)),
            added_keep_alive_ms: direct.as_ref().and_then(|d| added(&ka, &d.2)),
            keep_alive: ka,
            bulk: c(*t, Test::Bulk),
            one_connection: one,
            paced,
            proxy_cpu_seconds: runs
                .iter()
                .filter(|r| r.layout == layout && r.target == *t)
                .map(|r| r.proxy_cpu_seconds)
                .sum(),
        });
    }
    let find = |t: Target| summaries.iter().find(|s| s.target == t);
    let mut verdicts = Vec::new();
    if let (Some(m), Some(h)) = (find(Target::Meridian), find(Target::Haproxy)) {
        for (what, mv, hv) in [
            (
                "(a) new TLS connections/s ≥ HAProxy",
                m.new_connections.per_second,
                h.new_connections.per_second,
            ),
            (
                "(b) keep-alive requests/s ≥ HAProxy",
                m.keep_alive.per_second,
                h.keep_alive.per_second,
            ),
            (
                "(c) bulk MB/s ≥ HAProxy",
                m.bulk.mb_per_second,
                h.bulk.mb_per_second,
            ),
        ] {
            verdicts.push(Verdict {
                target: what.to_owned(),
                meridian: mv,
                reference: hv,
                ratio: if hv > 0.0 { mv / hv } else { 0.0 },
                met: mv >= hv,
            });
        }
    }
    if let (Some(m), Some(dr)) = (find(Target::Meridian), find(Target::Direct)) {
        let (mv, dv) = (m.bulk.mb_per_second, dr.bulk.mb_per_second);
        verdicts.push(Verdict {
            target: "(c) bulk within 1.3× of direct (direct/Meridian ≤ 1.3)".to_owned(),
            meridian: mv,
            reference: dv,
            ratio: if mv > 0.0 { dv / mv } else { f64::INFINITY },
            met: mv > 0.0 && dv / mv <= 1.3,
        });
    }
    LayoutReport {
        layout,
        pinning,
        summaries,
        verdicts,
    }
}

/// Runs the benchmark and writes `gateway.json` and `gateway.md` into `out`.
pub async fn run(bin: &Path, quick: bool, out: &Path, opt: Options) -> Result<()> {
    ensure!(
        opt.seconds > 0 && opt.latency_seconds > 0 && opt.reps > 0 && opt.file_mib > 0,
        "--seconds, --latency-seconds, --reps and --file-mib must be > 0"
    );
    ensure!(
        opt.close_connections > 0
            && opt.keepalive_connections > 0
            && opt.bulk_connections > 0
            && opt.paced_connections > 0,
        "connection counts must be > 0"
    );
    ensure!(!opt.layouts.is_empty(), "no layout to measure");
    let guard = tokio::spawn(kill_on_signal());
    let result = measure(bin, quick, out, opt).await;
    guard.abort();
    result
}

async fn measure(bin: &Path, quick: bool, out: &Path, opt: Options) -> Result<()> {
    let tools = ensure_tools()?;
    let targets: Vec<Target> = if opt.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        Target::ALL
            .into_iter()
            .filter(|t| opt.targets.contains(t))
            .collect()
    };
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    *LIVE_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(d.to_owned());
    let pinned_cores = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    if !pinned_cores {
        eprintln!("gateway: fewer than two cores: nothing is pinned, the layouts are all alike");
    }
    let core = |c: usize| pinned_cores.then_some(c);
    let (backend_core, proxy_core, _) = opt.layouts[0].cores();

    let (cert, key) = certificate(&tools.openssl, d)?;
    let www = d.join("www");
    std::fs::create_dir_all(&www)?;
    let file_bytes = opt.file_mib as u64 * 1024 * 1024;
    big_file(&www.join("big.bin"), file_bytes)?;
    let hosts = d.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n::1 localhost\n127.0.0.1 {NAME}\n"),
    )?;

    let (mut backend, backend_port) =
        start_backend(&tools.nginx, d, &cert, &key, &www, core(backend_core))?;
    let mut procs: Vec<(Target, Option<Tracked>, u16)> = Vec::new();
    let mut meridian_http = None;
    for t in &targets {
        match t {
            Target::Direct => procs.push((*t, None, backend_port)),
            Target::Meridian => {
                let (mut m, gw, http) = start_meridian(bin, d, core(proxy_core))?;
                register(&mut m, &http, backend_port, &tools.curl, gw, &cert).await?;
                meridian_http = Some(http);
                procs.push((*t, Some(m), gw));
            }
            Target::Haproxy => {
                let (p, port) = start_haproxy(&tools.haproxy, d, backend_port, core(proxy_core))?;
                procs.push((*t, Some(p), port));
            }
            Target::NginxStream => {
                let (p, port) =
                    start_nginx_stream(&tools.nginx, d, backend_port, core(proxy_core))?;
                procs.push((*t, Some(p), port));
            }
        }
    }

    // Every path once with curl verifying the backend's certificate for the name, the bulk
    // file whole, and a name nobody routes refused.
    let mut check_problems = Vec::new();
    let mut tls = std::collections::HashMap::new();
    for (t, _, port) in &procs {
        let got = curl_get(&tools.curl, *port, &cert, NAME, "/")
            .with_context(|| format!("checking {} with curl", t.name()))?;
        ensure!(
            got.http_code == "200" && got.body == "ok\n",
            "{}: curl got {} {:?}",
            t.name(),
            got.http_code,
            got.body
        );
        let big = curl_get(&tools.curl, *port, &cert, NAME, "/big.bin")?;
        if big.http_code != "200" || big.size != file_bytes {
            check_problems.push(format!(
                "{}: /big.bin gave {} with {} of {file_bytes} bytes",
                t.name(),
                big.http_code,
                big.size
            ));
        }
        if *t != Target::Direct
            && let Ok(g) = curl_get(&tools.curl, *port, &cert, "nope.service.consul", "/")
        {
            check_problems.push(format!(
                "{}: an unrouted name was relayed ({} {:?})",
                t.name(),
                g.http_code,
                g.body
            ));
        }
        eprintln!("gateway: {} verified with curl: {}", t.name(), got.tls);
        tls.insert(t.name(), got.tls);
    }
    for p in &check_problems {
        eprintln!("gateway: check: {p}");
    }
    let idle_rss: Vec<Option<u64>> = procs
        .iter()
        .map(|(_, p, _)| p.as_ref().and_then(|p| status_kib(p.pid(), "VmRSS:")))
        .collect();
    let backend_idle_rss = status_kib(backend.pid(), "VmRSS:");

    let ticks = clock_ticks();
    let mut runs: Vec<Run> = Vec::new();
    for layout in &opt.layouts {
        let (bc, pc, wc) = layout.cores();
        if pinned_cores {
            repin(backend.pid(), bc)?;
            for (_, p, _) in &procs {
                if let Some(p) = p {
                    repin(p.pid(), pc)?;
                }
            }
        }
        eprintln!(
            "gateway: layout {}: {}",
            layout.name(),
            if pinned_cores {
                layout.describe()
            } else {
                "unpinned"
            }
        );
        let load = Load {
            wrk: &tools.wrk,
            dir: d,
            hosts: &hosts,
            layout: *layout,
            core: core(wc),
            proxy_core: core(pc).filter(|c| *c != bc && *c != wc),
            ticks,
            backend_pid: backend.pid(),
            opt: &opt,
            retries: if quick { 0 } else { 2 },
            quiet_wait: Duration::from_secs(if quick { 0 } else { 300 }),
        };
        // Warm-up (not recorded): the page cache holds the bulk file, first allocations are
        // made, every process has run on its new core.
        for (t, p, port) in &mut procs {
            load.run(*t, *port, p.as_mut(), Test::KeepAlive, 0, Some(1))?;
            load.run(*t, *port, p.as_mut(), Test::Bulk, 0, Some(1))?;
        }
        for rep in 1..=opt.reps {
            for test in Test::ALL {
                // The order of the paths rotates with each repetition.
                let n = procs.len();
                for i in 0..n {
                    let (t, p, port) = &mut procs[(i + rep - 1) % n];
                    let r = load.run_clean(*t, *port, p.as_mut(), test, rep)?;
                    eprintln!(
                        "gateway {} rep {rep} {:<13} {:<15} {:>9.0}/s {:>8.1} MB/s p50 {:.3} ms \
                         p99 {:.3} ms, {} errors, proxy CPU {:.2} s ({:.1} µs/req), backend \
                         {:.2} s, wrk {:.2} s, other {:.2} s",
                        layout.name(),
                        t.name(),
                        test.name(),
                        r.per_second,
                        r.mb_per_second,
                        r.p50_ms,
                        r.p99_ms,
                        r.errors,
                        r.proxy_cpu_seconds,
                        r.proxy_cpu_us_per_request,
                        r.backend_cpu_seconds,
                        r.wrk_cpu_seconds,
                        r.other_cpu_seconds
                    );
                    runs.push(r);
                }
            }
            backend.check_running()?;
        }
    }
    let meridian_metrics = match meridian_http {
        Some(h) => gateway_metrics(&h).await,
        None => Vec::new(),
    };
    let mut processes = vec![ProcInfo {
        name: "backend nginx",
        idle_rss_kib: backend_idle_rss,
        peak_rss_kib: status_kib(backend.pid(), "VmHWM:"),
        threads: thread_count(backend.pid()),
        thread_names: thread_names(backend.pid()),
    }];
    for ((t, p, _), idle) in procs.iter().zip(&idle_rss) {
        if let Some(p) = p {
            processes.push(ProcInfo {
                name: t.name(),
                idle_rss_kib: *idle,
                peak_rss_kib: status_kib(p.pid(), "VmHWM:"),
                threads: thread_count(p.pid()),
                thread_names: thread_names(p.pid()),
            });
        }
    }
    let paths: Vec<(Target, u16)> = procs.iter().map(|(t, _, port)| (*t, *port)).collect();
    drop(procs);
    drop(backend);

    let layouts = opt
        .layouts
        .iter()
        .map(|l| {
            let pinning = if pinned_cores {
                l.describe().to_owned()
            } else {
                "unpinned (one core)".to_owned()
            };
            layout_report(&runs, *l, pinning, &paths, &tls, opt.close_connections)
        })
        .collect();
    let report = Report {
        benchmark: "gateway",
        date: crate::today(),
        machine: crate::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        versions: vec![
            version(&tools.nginx, "-v"),
            version(&tools.haproxy, "-v"),
            version(&tools.wrk, "-v"),
            version(bin, "--version"),
        ],
        threads: "one thread or worker per process: backend nginx `worker_processes 1`, \
                  `master_process off`; HAProxy `nbthread 1`; nginx stream `worker_processes 1`, \
                  `master_process off`; Meridian's whole agent pinned to the proxy core with \
                  `TOKIO_WORKER_THREADS=1` (its other threads idle: Raft log sync, RocksDB, DNS); \
                  wrk `-t1`"
            .to_owned(),
        seconds_per_run: opt.seconds,
        latency_seconds_per_run: opt.latency_seconds,
        reps: opt.reps,
        file_bytes,
        close_connections: opt.close_connections,
        keepalive_connections: opt.keepalive_connections,
        bulk_connections: opt.bulk_connections,
        paced_connections: opt.paced_connections,
        think_ms: opt.think_ms,
        layouts,
        processes,
        runs,
        check_problems,
        meridian_metrics,
    };
    let md = markdown(&report, quick)?;
    crate::tools::write_report(out, "gateway", &report, &md)
}

fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

fn signed_ms(v: Option<(f64, f64)>) -> (String, String) {
    match v {
        Some((a, b)) => (format!("{a:+.3} ms"), format!("{b:+.3} ms")),
        None => ("-".into(), "-".into()),
    }
}

/// `value (low–high)` when there were several repetitions.
fn with_range(v: f64, (lo, hi): (f64, f64), reps: usize) -> String {
    if reps > 1 {
        format!("{v:.0} ({lo:.0}–{hi:.0})")
    } else {
        format!("{v:.0}")
    }
}

fn markdown(r: &Report, quick: bool) -> Result<String> {
    let mut md = format!(
        "gateway{}: {} × {} s per throughput run, {} s per latency run (median of {}); \
         {} MiB bulk file; {}\n",
        if quick { " (quick)" } else { "" },
        r.reps,
        r.seconds_per_run,
        r.latency_seconds_per_run,
        r.reps,
        r.file_bytes / (1024 * 1024),
        r.threads,
    );
    for l in &r.layouts {
        writeln!(
            md,
            "\n### layout {}: {}\n\n\
             | path | (a) new TLS conns/s ({} conns) | (b) keep-alive req/s ({} conns) | (c) bulk \
             MB/s ({} conns) | proxy CPU µs per new conn | per keep-alive req | per MB bulk | \
             backend CPU µs per keep-alive req | per MB bulk | errors |\n\
             |---|---|---|---|---|---|---|---|---|---|",
            l.layout.name(),
            l.pinning,
            r.close_connections,
            r.keepalive_connections,
            r.bulk_connections,
        )?;
        for s in &l.summaries {
            let errors = s.new_connections.errors
                + s.keep_alive.errors
                + s.bulk.errors
                + s.one_connection.errors
                + s.paced.errors;
            let cpu = |process: f64, core: f64| {
                if s.target == Target::Direct {
                    "-".to_owned()
                } else if core > 0.0 {
                    format!("{process:.1} ({core:.1})")
                } else {
                    format!("{process:.1}")
                }
            };
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
                s.target.name(),
                with_range(
                    s.new_connections.per_second,
                    s.new_connections.per_second_range,
                    r.reps
                ),
                with_range(
                    s.keep_alive.per_second,
                    s.keep_alive.per_second_range,
                    r.reps
                ),
                with_range(s.bulk.mb_per_second, s.bulk.mb_per_second_range, r.reps),
                cpu(
                    s.new_connections.proxy_cpu_us_per_request,
                    s.new_connections.proxy_core_us_per_request
                ),
                cpu(
                    s.keep_alive.proxy_cpu_us_per_request,
                    s.keep_alive.proxy_core_us_per_request
                ),
                cpu(s.bulk.proxy_cpu_us_per_mb, s.bulk.proxy_core_us_per_mb),
                s.keep_alive.backend_cpu_us_per_request,
                s.bulk.backend_cpu_us_per_mb,
                errors,
            )?;
        }
        writeln!(
            md,
            "\nLatency (wrk: request to answer on an open connection) and what each proxy adds \
             to direct's:\n\n\
             | path | 1 conn p50 | p99 | added p50 | added p99 | paced ({} conns, {} ms think) \
             req/s | p50 | p99 | added p50 | added p99 | keep-alive ({} conns) p50 | p99 | added \
             p50 | added p99 | mean new-connection life |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            r.paced_connections, r.think_ms, r.keepalive_connections,
        )?;
        for s in &l.summaries {
            let (o50, o99) = signed_ms(s.added_one_connection_ms);
            let (p50, p99) = signed_ms(s.added_paced_ms);
            let (k50, k99) = signed_ms(s.added_keep_alive_ms);
            writeln!(
                md,
                "| {} | {} | {} | {o50} | {o99} | {:.0} | {} | {} | {p50} | {p99} | {} | {} | \
                 {k50} | {k99} | {} |",
                s.target.name(),
                ms(s.one_connection.p50_ms),
                ms(s.one_connection.p99_ms),
                s.paced.per_second,
                ms(s.paced.p50_ms),
                ms(s.paced.p99_ms),
                ms(s.keep_alive.p50_ms),
                ms(s.keep_alive.p99_ms),
                ms(s.mean_connection_ms),
            )?;
        }
        if !l.verdicts.is_empty() {
            writeln!(
                md,
                "\n| target ({}) | Meridian | reference | ratio | met |\n|---|---|---|---|---|",
                l.layout.name()
            )?;
            for v in &l.verdicts {
                writeln!(
                    md,
                    "| {} | {:.1} | {:.1} | {:.2} | {} |",
                    v.target,
                    v.meridian,
                    v.reference,
                    v.ratio,
                    if v.met { "**met**" } else { "**not met**" }
                )?;
            }
        }
    }
    writeln!(
        md,
        "\nProxy CPU: the process's user + system time; in parentheses, where the proxy has its \
         core alone, that core's busy time, softirq included (loopback TCP work is charged to no \
         process). Ranges: lowest–highest of the repetitions.\n\n\
         | process | RSS idle | peak RSS | threads |\n|---|---|---|---|"
    )?;
    for p in &r.processes {
        let mib =
            |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        writeln!(
            md,
            "| {} | {} | {} | {} |",
            p.name,
            mib(p.idle_rss_kib),
            mib(p.peak_rss_kib),
            p.threads.map_or("-".to_owned(), |t| t.to_string()),
        )?;
    }
    let other: f64 = r.runs.iter().map(|x| x.other_cpu_seconds).sum();
    let softirq: f64 = r.runs.iter().map(|x| x.softirq_seconds).sum();
    let wall: f64 = r.runs.iter().map(|x| x.seconds).sum();
    writeln!(
        md,
        "\nOther work on the machine during the runs: {other:.1} CPU s over {wall:.0} s \
         (should be near 0); softirq (loopback TCP): {softirq:.1} CPU s."
    )?;
    for p in &r.check_problems {
        writeln!(md, "\nCheck failed: {p}")?;
    }
    Ok(md)
}
