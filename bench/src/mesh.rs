//! `mesh`: Meridian's sidecars (`meridian connect proxy`, a client-side one for `api` with an
//! upstream listener and a server-side one for `web`) beside a pair of stunnel processes doing
//! the same job (client mode with a client certificate, server mode that requires and verifies
//! one), and beside direct, all in front of one plaintext nginx. Both pairs use the same P-256
//! leaves from the agent's mesh CA and TLS 1.3; wrk speaks plain HTTP to the client side, as an
//! application does.
//!
//! Layout on two cores: nginx, wrk and the agent on core 0, the two proxies of the path measured
//! on core 1 (the pair has that core alone). Runs: new connections per second (`Connection:
//! close`, each request a new mutual-TLS connection between the proxies), keep-alive requests
//! per second, bulk MB/s, and unloaded latency on one connection, new each time and kept alive:
//! the added latency per new connection and per request is the path's minus direct's. CPU per
//! connection is the two proxies' user + system CPU over the requests.
//!
//! stunnel verifies the chain only; the sidecars also check the peer's SPIFFE ID and ask the
//! intentions (cached per caller): Meridian does more per connection, not less.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meridian_testkit::stats::median;
use meridian_testkit::{Ports, free_port};
use serde::Serialize;
use serde_json::{Value, json};

use crate::gateway::{
    Tracked, WrkOut, big_file, cpu_seconds, nginx_args, nginx_common, wrk_script,
};
use crate::procs;
use crate::tools::{self, find_tool};

/// The mesh's trust domain in the benchmark.
const TRUST_DOMAIN: &str = "b3e4c0de.consul";

/// What `meridian-bench mesh` was asked for.
pub struct Options {
    /// Seconds per throughput run.
    pub seconds: u64,
    /// Seconds per latency run.
    pub latency_seconds: u64,
    /// Repetitions, the order of the paths rotating.
    pub reps: usize,
    /// Size of the bulk file in MiB.
    pub file_mib: usize,
    /// wrk connections for new connections per second.
    pub close_connections: usize,
    /// wrk connections for keep-alive requests per second.
    pub keepalive_connections: usize,
    /// wrk connections for the bulk transfer.
    pub bulk_connections: usize,
    /// The tests to run (empty: all).
    pub tests: Vec<Test>,
}

/// One way from wrk to nginx.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Route {
    Direct,
    Meridian,
    Stunnel,
}

impl Route {
    const ALL: [Route; 3] = [Route::Direct, Route::Meridian, Route::Stunnel];

    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Meridian => "meridian",
            Route::Stunnel => "stunnel",
        }
    }
}

/// One kind of wrk run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// `Connection: close`: every request on a new mutual-TLS connection between the proxies.
    NewConnections,
    /// Keep-alive requests.
    KeepAlive,
    /// The large file.
    Bulk,
    /// One connection at a time, each request on a new one: latency per new connection.
    NewConnectionLatency,
    /// One kept-alive connection: latency per request.
    RequestLatency,
}

impl Test {
    const ALL: [Test; 5] = [
        Test::NewConnections,
        Test::KeepAlive,
        Test::Bulk,
        Test::NewConnectionLatency,
        Test::RequestLatency,
    ];

    fn name(self) -> &'static str {
        match self {
            Test::NewConnections => "new_connections",
            Test::KeepAlive => "keep_alive",
            Test::Bulk => "bulk",
            Test::NewConnectionLatency => "new_connection_latency",
            Test::RequestLatency => "request_latency",
        }
    }
}

/// One wrk run.
#[derive(Serialize, Clone)]
struct Run {
    route: Route,
    test: Test,
    rep: usize,
    connections: usize,
    seconds: f64,
    requests: u64,
    per_second: f64,
    mb_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// User + system CPU seconds of the two proxies (none for direct).
    proxies_cpu_seconds: f64,
    /// Of that, per request (per connection for `new_connections`), in microseconds.
    proxies_cpu_us_per_request: f64,
    /// Per MB relayed, in microseconds.
    proxies_cpu_us_per_mb: f64,
}

/// Medians of one test on one route.
#[derive(Serialize, Clone, Default)]
struct Cell {
    per_second: f64,
    mb_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    cpu_us_per_mb: f64,
    errors: u64,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    date: String,
    machine: String,
    quick: bool,
    versions: Vec<String>,
    layout: &'static str,
    runs: Vec<Run>,
    /// `route → test → medians`.
    cells: Vec<(Route, Test, Cell)>,
    verdicts: Vec<(String, bool)>,
    sidecar_metrics: Vec<String>,
}

struct Paths {
    wrk: PathBuf,
    nginx: PathBuf,
    stunnel: PathBuf,
}

fn ensure_tools() -> Result<Paths> {
    let wanted = [
        ("nginx", "nginx"),
        ("wrk", "wrk"),
        ("stunnel", "stunnel4"),
        ("taskset", "util-linux"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        tools::apt_install("mesh", &missing)?;
    }
    let get = |n: &str| find_tool(n).with_context(|| format!("{n} not found after installing"));
    Ok(Paths {
        wrk: get("wrk")?,
        nginx: get("nginx")?,
        stunnel: get("stunnel")?,
    })
}

/// The plaintext application: nginx, one worker, `/` answering `ok`, the bulk file.
fn start_app(nginx: &Path, dir: &Path, www: &Path, core: usize) -> Result<(Tracked, u16)> {
    let port = free_port();
    let prefix = dir.join("app");
    std::fs::create_dir_all(&prefix)?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "{common}http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  \
             proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  \
             scgi_temp_path {p}/scgi;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
             server {{\n    listen 127.0.0.1:{port};\n    root {www};\n    \
             location = / {{ return 200 \"ok\\n\"; }}\n    location = /big.bin {{ }}\n  }}\n}}\n",
            common = nginx_common(&prefix),
            p = prefix.display(),
            www = www.display(),
        ),
    )?;
    let mut p = Tracked::start(
        "app nginx",
        Some(core),
        nginx,
        nginx_args(&prefix, &conf)?,
        &[],
        &prefix.join("stdout.log"),
    )?;
    procs::wait_listening(&mut p.proc, port)?;
    Ok((p, port))
}

/// A `meridian connect proxy` on `core`.
fn start_sidecar(
    bin: &Path,
    dir: &Path,
    http: u16,
    args: &[String],
    core: usize,
) -> Result<Tracked> {
    let mut all = vec![
        "connect".to_owned(),
        "proxy".to_owned(),
        "--http-addr".to_owned(),
        format!("127.0.0.1:{http}"),
    ];
    all.extend(args.iter().cloned());
    let name = args.get(1).cloned().unwrap_or_default();
    Tracked::start(
        &format!("sidecar {name}"),
        Some(core),
        bin,
        all,
        &[("RUST_LOG", "warn")],
        &dir.join(format!("sidecar-{name}.log")),
    )
}

/// A stunnel process with `service` (its config body), on `core`.
fn start_stunnel(
    stunnel: &Path,
    dir: &Path,
    name: &str,
    service: &str,
    core: usize,
) -> Result<Tracked> {
    let conf = dir.join(format!("stunnel-{name}.conf"));
    std::fs::write(
        &conf,
        format!("foreground = yes\npid =\ndebug = 3\n\n[{name}]\n{service}"),
    )?;
    Tracked::start(
        &format!("stunnel {name}"),
        Some(core),
        stunnel,
        vec![conf.to_str().context("UTF-8 path")?.to_owned()],
        &[],
        &dir.join(format!("stunnel-{name}.log")),
    )
}

/// GET `path` at the agent, as JSON.
async fn get_json(http: u16, path: &str) -> Result<Value> {
    let r = reqwest::get(format!("http://127.0.0.1:{http}{path}")).await?;
    ensure!(r.status().is_success(), "{path}: {}", r.status());
    Ok(r.json().await?)
}

/// Writes the leaf of `service` (cert, key) into `dir`.
async fn write_leaf(http: u16, service: &str, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let v = get_json(http, &format!("/v1/agent/connect/ca/leaf/{service}")).await?;
    let (cert, key) = (
        dir.join(format!("{service}.pem")),
        dir.join(format!("{service}-key.pem")),
    );
    std::fs::write(&cert, v["CertPEM"].as_str().context("CertPEM")?)?;
    std::fs::write(&key, v["PrivateKeyPEM"].as_str().context("PrivateKeyPEM")?)?;
    Ok((cert, key))
}

/// One `curl` through `port`: the body.
fn fetch(port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "3"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_path(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if fetch(port).as_deref() == Some("ok\n") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what} does not reach the application within 60 s")
}

/// One wrk run against `port`, bounded by `-d` (and killed 30 s after that).
#[allow(clippy::too_many_arguments)]
fn wrk_run(
    wrk: &Path,
    dir: &Path,
    core: usize,
    port: u16,
    route: Route,
    test: Test,
    rep: usize,
    proxies: &[u32],
    opt: &Options,
) -> Result<Run> {
    let (connections, path, close, seconds) = match test {
        Test::NewConnections => (opt.close_connections, "/", true, opt.seconds),
        Test::KeepAlive => (opt.keepalive_connections, "/", false, opt.seconds),
        Test::Bulk => (opt.bulk_connections, "/big.bin", false, opt.seconds),
        Test::NewConnectionLatency => (1, "/", true, opt.latency_seconds),
        Test::RequestLatency => (1, "/", false, opt.latency_seconds),
    };
    let script = dir.join("wrk.lua");
    std::fs::write(&script, wrk_script(0))?;
    let mut args = vec![
        "-t1".to_owned(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--timeout".to_owned(),
        "30s".to_owned(),
        "-s".to_owned(),
        script.to_str().context("UTF-8 path")?.to_owned(),
    ];
    if close {
        args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    args.push(format!("http://127.0.0.1:{port}{path}"));
    let out_path = dir.join("wrk.out");
    std::fs::File::create(&out_path)?;
    let cpu =
        |pids: &[u32]| -> Result<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum::<Result<f64>>() };
    let cpu0 = cpu(proxies)?;
    let started = Instant::now();
    let mut child = Tracked::start("wrk", Some(core), wrk, args, &[], &out_path)?;
    child.proc.print_log_on_failure = false;
    let deadline = started + Duration::from_secs(seconds + 30);
    let status = loop {
        if let Some(s) = child.proc.exit_status() {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "wrk {} on {} did not stop",
            test.name(),
            route.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let proxies_cpu = cpu(proxies)? - cpu0;
    let text = std::fs::read_to_string(&out_path)?;
    ensure!(
        status.success(),
        "wrk {} on {} failed:\n{text}",
        test.name(),
        route.name()
    );
    let w: WrkOut = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .with_context(|| format!("wrk printed no summary:\n{text}"))
        .and_then(|j| serde_json::from_str(j).context("wrk's summary"))?;
    let secs = w.duration_us as f64 / 1e6;
    let mb = w.bytes as f64 / 1e6;
    Ok(Run {
        route,
        test,
        rep,
        connections,
        seconds: secs,
        requests: w.requests,
        per_second: w.requests as f64 / secs.max(1e-9),
        mb_per_second: mb / secs.max(1e-9),
        p50_ms: w.p50_us / 1000.0,
        p99_ms: w.p99_us / 1000.0,
        errors: w.connect + w.read + w.write + w.status + w.timeout,
        proxies_cpu_seconds: proxies_cpu,
        proxies_cpu_us_per_request: if w.requests > 0 {
            proxies_cpu * 1e6 / w.requests as f64
        } else {
            0.0
        },
        proxies_cpu_us_per_mb: if mb > 0.0 {
            proxies_cpu * 1e6 / mb
        } else {
            0.0
        },
    })
}

fn cell(runs: &[Run], route: Route, test: Test) -> Cell {
    let of: Vec<&Run> = runs
        .iter()
        .filter(|r| r.route == route && r.test == test)
        .collect();
    let m = |f: fn(&Run) -> f64| median(&of.iter().map(|r| f(r)).collect::<Vec<_>>());
    Cell {
        per_second: m(|r| r.per_second),
        mb_per_second: m(|r| r.mb_per_second),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        cpu_us_per_request: m(|r| r.proxies_cpu_us_per_request),
        cpu_us_per_mb: m(|r| r.proxies_cpu_us_per_mb),
        errors: of.iter().map(|r| r.errors).sum(),
    }
}

fn version(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty() && !l.starts_with("Initializing"))
                .unwrap_or("?")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "?".into())
}

/// Runs the benchmark and writes `mesh.json` and `mesh.md` into `out`.
pub async fn run(bin: &Path, quick: bool, out: &Path, opt: Options) -> Result<()> {
    let tools = ensure_tools()?;
    let (proxy_core, load_core) = (1, 0);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    big_file(&www.join("big.bin"), opt.file_mib as u64 * 1024 * 1024)?;

    // One DC whose leader makes the mesh CA; the default intention denies, api → web allows.
    let ports = Ports::free();
    let mut config = tools::one_node_config("n1", &dir.join("data"), ports);
    config.set("gateway", "trust_domain", TRUST_DOMAIN);
    let mut agent = procs::configured_agent(
        "n1",
        bin,
        &config,
        dir,
        &[("RUST_LOG", &procs::agent_log("warn"))],
        Some(load_core),
    )?;
    agent.wait_ready().await?;
    let http = ports.http;
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(http, "/v1/connect/ca/roots").await.is_err() {
        ensure!(Instant::now() < deadline, "no mesh CA within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = reqwest::Client::new()
        .put(format!(
            "http://127.0.0.1:{http}/v1/connect/intentions/exact?source=api&destination=web"
        ))
        .json(&json!({"Action": "allow"}))
        .send()
        .await?;
    ensure!(r.status().is_success(), "intention: {}", r.status());

    let (app, app_port) = start_app(&tools.nginx, dir, &www, load_core)?;

    // Meridian's pair.
    let web_in = free_port();
    let web_metrics = free_port();
    let upstream = free_port();
    let mut web = start_sidecar(
        bin,
        dir,
        http,
        &[
            "--service".into(),
            "web".into(),
            "--local".into(),
            format!("127.0.0.1:{app_port}"),
            "--listen".into(),
            format!("127.0.0.1:{web_in}"),
            "--metrics-addr".into(),
            format!("127.0.0.1:{web_metrics}"),
        ],
        proxy_core,
    )?;
    let mut api = start_sidecar(
        bin,
        dir,
        http,
        &[
            "--service".into(),
            "api".into(),
            "--local".into(),
            format!("127.0.0.1:{}", free_port()),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--upstream".into(),
            format!("web:{upstream}"),
        ],
        proxy_core,
    )?;

    // stunnel's pair, with the same leaves and the DC's root.
    let (api_cert, api_key) = write_leaf(http, "api", dir).await?;
    let (web_cert, web_key) = write_leaf(http, "web", dir).await?;
    let roots = dir.join("roots.pem");
    let pem = reqwest::get(format!(
        "http://127.0.0.1:{http}/v1/connect/ca/roots?pem=true"
    ))
    .await?
    .text()
    .await?;
    std::fs::write(&roots, pem)?;
    let (st_in, st_up) = (free_port(), free_port());
    let tls = "sslVersionMin = TLSv1.3\nverifyChain = yes\n";
    let mut st_web = start_stunnel(
        &tools.stunnel,
        dir,
        "web",
        &format!(
            "accept = 127.0.0.1:{st_in}\nconnect = 127.0.0.1:{app_port}\ncert = {}\nkey = {}\nCAfile = {}\n{tls}",
            web_cert.display(),
            web_key.display(),
            roots.display()
        ),
        proxy_core,
    )?;
    let mut st_api = start_stunnel(
        &tools.stunnel,
        dir,
        "api",
        &format!(
            "client = yes\naccept = 127.0.0.1:{st_up}\nconnect = 127.0.0.1:{st_in}\ncert = {}\nkey = {}\nCAfile = {}\n{tls}",
            api_cert.display(),
            api_key.display(),
            roots.display()
        ),
        proxy_core,
    )?;

    wait_path(app_port, "direct").await?;
    wait_path(upstream, "Meridian's sidecars").await?;
    wait_path(st_up, "stunnel").await?;

    let tests: Vec<Test> = if opt.tests.is_empty() {
        Test::ALL.to_vec()
    } else {
        opt.tests.clone()
    };
    let mut runs = Vec::new();
    for rep in 0..opt.reps {
        for &test in &tests {
            // The order of the routes rotates with the repetition.
            for k in 0..Route::ALL.len() {
                let route = Route::ALL[(k + rep) % Route::ALL.len()];
                let (port, pids) = match route {
                    Route::Direct => (app_port, vec![]),
                    Route::Meridian => {
                        web.check_running()?;
                        api.check_running()?;
                        (upstream, vec![api.pid(), web.pid()])
                    }
                    Route::Stunnel => {
                        st_web.check_running()?;
                        st_api.check_running()?;
                        (st_up, vec![st_api.pid(), st_web.pid()])
                    }
                };
                let r = wrk_run(
                    &tools.wrk, dir, load_core, port, route, test, rep, &pids, &opt,
                )?;
                eprintln!(
                    "mesh: {} {} rep {rep}: {:.0}/s, {:.1} MB/s, p50 {:.3} ms, {:.1} µs CPU per request, {} errors",
                    route.name(),
                    test.name(),
                    r.per_second,
                    r.mb_per_second,
                    r.p50_ms,
                    r.proxies_cpu_us_per_request,
                    r.errors
                );
                runs.push(r);
            }
        }
    }
    let mut cells = Vec::new();
    for route in Route::ALL {
        for &test in &tests {
            cells.push((route, test, cell(&runs, route, test)));
        }
    }
    let get = |route: Route, test: Test| cell(&runs, route, test);
    let mut verdicts = Vec::new();
    if tests.contains(&Test::NewConnections) {
        let (m, st) = (
            get(Route::Meridian, Test::NewConnections),
            get(Route::Stunnel, Test::NewConnections),
        );
        verdicts.push((
            "connections/s at least stunnel's".to_owned(),
            m.per_second >= st.per_second,
        ));
        verdicts.push((
            "CPU per connection no more than stunnel's".to_owned(),
            m.cpu_us_per_request <= st.cpu_us_per_request,
        ));
    }
    if tests.contains(&Test::Bulk) {
        verdicts.push((
            "bulk throughput at least stunnel's".to_owned(),
            get(Route::Meridian, Test::Bulk).mb_per_second
                >= get(Route::Stunnel, Test::Bulk).mb_per_second,
        ));
    }
    // web's sidecar's own counters: every connection it relayed was decided.
    let sidecar_metrics = reqwest::get(format!("http://127.0.0.1:{web_metrics}/metrics"))
        .await?
        .text()
        .await?
        .lines()
        .filter(|l| l.starts_with("meridian_mesh_"))
        .map(str::to_owned)
        .collect();
    drop((app, web, api, st_web, st_api));
    agent.stop()?;
    let report = Report {
        benchmark: "mesh",
        date: crate::today(),
        machine: crate::machine(),
        quick,
        versions: vec![
            version(bin, "--version"),
            version(&tools.stunnel, "-version"),
            version(&tools.nginx, "-v"),
            version(&tools.wrk, "-v"),
        ],
        layout: "app nginx (1 worker), wrk (-t1) and the agent on core 0; the two proxies of the route on core 1",
        runs,
        cells,
        verdicts,
        sidecar_metrics,
    };
    let md = markdown(&report, &opt);
    tools::write_report(out, "mesh", &report, &md)
}

fn markdown(r: &Report, opt: &Options) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# meridian-bench mesh{}\n\n{} · {}\n\nSidecar to sidecar with mutual TLS (TLS 1.3, P-256 leaves of the agent's mesh CA): \
         Meridian's `connect proxy` pair beside a stunnel pair (client mode with a certificate, \
         server mode with `verifyChain`) and direct, in front of a plaintext nginx. {}. \
         {} s per throughput run, {} s per latency run, {} repetition(s), medians.\n",
        if r.quick { " (quick)" } else { "" },
        r.date,
        r.machine,
        r.layout,
        opt.seconds,
        opt.latency_seconds,
        opt.reps
    );
    let c = |route: Route, test: Test| {
        r.cells
            .iter()
            .find(|(ro, t, _)| *ro == route && *t == test)
            .map(|(_, _, c)| c.clone())
            .unwrap_or_default()
    };
    let _ = writeln!(
        md,
        "| route | new conn/s (c={}) | CPU µs/conn | keep-alive req/s (c={}) | CPU µs/req | bulk MB/s (c={}) | CPU µs/MB | new conn p50 ms | added | request p50 ms | added | errors |",
        opt.close_connections, opt.keepalive_connections, opt.bulk_connections
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let direct_new = c(Route::Direct, Test::NewConnectionLatency).p50_ms;
    let direct_req = c(Route::Direct, Test::RequestLatency).p50_ms;
    for route in Route::ALL {
        let (n, k, b) = (
            c(route, Test::NewConnections),
            c(route, Test::KeepAlive),
            c(route, Test::Bulk),
        );
        let (nl, rl) = (
            c(route, Test::NewConnectionLatency),
            c(route, Test::RequestLatency),
        );
        let errors: u64 = Test::ALL.iter().map(|t| c(route, *t).errors).sum();
        let dash = |v: f64| {
            if route == Route::Direct {
                "—".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.0} | {} | {:.0} | {} | {:.3} | {} | {:.3} | {} | {} |",
            route.name(),
            n.per_second,
            dash(n.cpu_us_per_request),
            k.per_second,
            dash(k.cpu_us_per_request),
            b.mb_per_second,
            dash(b.cpu_us_per_mb),
            nl.p50_ms,
            if route == Route::Direct {
                "—".into()
            } else {
                format!("{:+.3}", nl.p50_ms - direct_new)
            },
            rl.p50_ms,
            if route == Route::Direct {
                "—".into()
            } else {
                format!("{:+.3}", rl.p50_ms - direct_req)
            },
            errors
        );
    }
    let _ = writeln!(md, "\nTargets:\n");
    for (what, met) in &r.verdicts {
        let _ = writeln!(md, "- {what}: {}", if *met { "met" } else { "**not met**" });
    }
    let _ = writeln!(md, "\nVersions: {}.", r.versions.join("; "));
    let _ = writeln!(
        md,
        "\nweb's sidecar after the runs:\n\n```\n{}\n```",
        r.sidecar_metrics.join("\n")
    );
    md
}
