//! `catalog`: acknowledged registrations per second on a 3-node datacenter. Many concurrent
//! HTTP clients register services through every node (followers forward to the leader); each
//! acknowledgement means the entry is fsynced on a majority and applied.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::tools::BENCH_SECURITY;
use crate::tools::{Meter, ProcessUsage, free_port, mib};
use crate::{machine, median, today};

/// Runs `reps` repetitions of `count` registrations by `clients` clients (all to node `node`
/// when given), and writes `catalog.json` and `catalog.md` into `out`.
pub async fn run(
    bin: &Path,
    out: &Path,
    clients: usize,
    count: usize,
    reps: usize,
    node: Option<usize>,
    secure: bool,
) -> Result<()> {
    let mut runs = Vec::new();
    for rep in 0..reps {
        let run = catalog_once(bin, clients, count, node, secure).await?;
        eprintln!(
            "catalog rep {}: {:.0}/s acknowledged, p50 {:.1} ms, p99 {:.1} ms, {} failed",
            rep + 1,
            run.per_second,
            run.p50_ms,
            run.p99_ms,
            run.failed
        );
        if run.acknowledged == 0 {
            bail!("no registration was acknowledged");
        }
        runs.push(run);
    }
    let report = CatalogReport {
        benchmark: "catalog",
        date: today(),
        machine: machine(),
        median_per_second: median(runs.iter().map(|r| r.per_second).collect()),
        median_p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        median_p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
        runs,
    };
    let mut md = format!(
        "| benchmark | clients | registrations | acknowledged/s (median of {}) | p50 | p99 |\n\
         |---|---|---|---|---|---|\n\
         | catalog, 3-node DC, fsync{} | {} | {} | {:.0} | {:.1} ms | {:.1} ms |\n",
        report.runs.len(),
        if secure {
            ", mutual TLS on rpc, ACL token"
        } else {
            ""
        },
        clients,
        count,
        report.median_per_second,
        report.median_p50_ms,
        report.median_p99_ms
    );
    md.push_str(&resources_table(&report.runs)?);
    let name = if secure { "catalog-secure" } else { "catalog" };
    crate::tools::write_report(out, name, &report, &md)
}

/// Each node's CPU seconds and peak RSS per repetition, and the three nodes' CPU per
/// acknowledged registration.
fn resources_table(runs: &[CatalogRun]) -> Result<String> {
    let mut s = String::from(
        "\nCPU seconds (user + system) of each agent over the load, from the first registration \
         to the last answer, and its peak RSS (VmHWM):\n\n\
         | rep | n1 CPU / peak RSS | n2 | n3 | CPU of the 3 nodes per registration |\n\
         |---|---|---|---|---|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let cells: Vec<String> = r
            .processes
            .iter()
            .map(|p| {
                let leader = if r.leader.as_deref() == Some(p.name.as_str()) {
                    " (leader)"
                } else {
                    ""
                };
                format!("{}{leader}", p.cell())
            })
            .collect();
        writeln!(
            s,
            "| {} | {} | {:.0} µs |",
            i + 1,
            cells.join(" | "),
            r.cpu_us_per_registration
        )?;
    }
    let peak = runs
        .iter()
        .flat_map(|r| r.processes.iter().map(|p| p.peak_rss_kib))
        .max()
        .unwrap_or(0);
    writeln!(s, "\nHighest peak RSS of a node: {}.", mib(peak))?;
    Ok(s)
}

#[derive(Serialize)]
struct CatalogRun {
    clients: usize,
    attempted: usize,
    acknowledged: usize,
    failed: usize,
    seconds: f64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The node that was the Raft leader at the end of the load (`n1`..`n3`), when known.
    leader: Option<String>,
    /// Each agent's CPU seconds over the load (first registration to last answer) and its peak
    /// RSS (VmHWM, read at the end of the load).
    processes: Vec<ProcessUsage>,
    /// The three agents' CPU microseconds per acknowledged registration.
    cpu_us_per_registration: f64,
}

#[derive(Serialize)]
struct CatalogReport {
    benchmark: &'static str,
    date: String,
    machine: String,
    runs: Vec<CatalogRun>,
    median_per_second: f64,
    median_p50_ms: f64,
    median_p99_ms: f64,
}

struct Node {
    name: String,
    child: Child,
    http: u16,
    rpc: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The management token of `--secure` runs.
const BENCH_TOKEN: &str = "meridian-bench-management-token";

/// The TOML that makes a node secure (`--secure`) or plain: certificates for its rpc port (made
/// with `meridian tls`, as an operator would) and an ACL, or [`BENCH_SECURITY`].
fn security_toml(bin: &Path, dir: &Path, name: &str, secure: bool) -> Result<(String, String)> {
    if !secure {
        return Ok((BENCH_SECURITY.to_owned(), String::new()));
    }
    let certs = dir.join("certs");
    let ca = certs.join("meridian-ca.pem");
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(bin).args(args).output()?;
        if !out.status.success() {
            bail!(
                "meridian {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let d = certs.display().to_string();
    if !ca.exists() {
        run(&["tls", "ca", "create", "--dir", &d])?;
    }
    let (ca_s, key_s) = (
        ca.display().to_string(),
        certs.join("meridian-ca-key.pem").display().to_string(),
    );
    run(&[
        "tls", "cert", "create", "--dc", "dc1", "--node", name, "--dir", &d, "--ca", &ca_s,
        "--ca-key", &key_s,
    ])?;
    Ok((
        String::new(),
        format!(
            "\n[federation]\nca_file = \"{ca_s}\"\ncert_file = \"{d}/dc1-{name}.pem\"\n\
             key_file = \"{d}/dc1-{name}-key.pem\"\n\n[acl]\nmanagement_token = \"{BENCH_TOKEN}\"\n"
        ),
    ))
}

fn start_dc(bin: &Path, dir: &Path, secure: bool) -> Result<Vec<Node>> {
    let ports: Vec<[u16; 5]> = (0..3)
        .map(|_| -> Result<[u16; 5]> {
            Ok([
                free_port()?,
                free_port()?,
                free_port()?,
                free_port()?,
                free_port()?,
            ])
        })
        .collect::<Result<_>>()?;
    let mut servers = String::new();
    for (i, p) in ports.iter().enumerate() {
        write!(
            servers,
            "\n[[servers]]\nid = {}\nrpc = \"127.0.0.1:{}\"\n",
            i + 1,
            p[2]
        )?;
    }
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let cfg = dir.join(format!("{name}.toml"));
        let (top, tables) = security_toml(bin, dir, &name, secure)?;
        std::fs::write(
            &cfg,
            format!(
                "{top}datacenter = \"dc1\"\nnode_name = \"{name}\"\nnode_id = {}\nbind = \"127.0.0.1\"\n\
                 data_dir = \"{}\"\n\n[ports]\nhttp = {}\ndns = {}\nrpc = {}\nwan = {}\ngateway = {}\n{servers}{tables}",
                i + 1,
                dir.join(&name).display(),
                p[0],
                p[1],
                p[2],
                p[3],
                p[4]
            ),
        )?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = crate::tools::spawn_logged(
            Command::new(bin)
                .arg("agent")
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", "warn"),
            log,
            &bin.display().to_string(),
        )?;
        nodes.push(Node {
            name,
            child,
            http: p[0],
            rpc: p[2],
        });
    }
    Ok(nodes)
}

async fn catalog_once(
    bin: &Path,
    clients: usize,
    count: usize,
    only: Option<usize>,
    secure: bool,
) -> Result<CatalogRun> {
    let dir = tempfile::tempdir()?;
    let nodes = start_dc(bin, dir.path(), secure)?;
    let mut headers = reqwest::header::HeaderMap::new();
    if secure {
        headers.insert(
            "x-consul-token",
            reqwest::header::HeaderValue::from_static(BENCH_TOKEN),
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(clients)
        .build()?;
    let ports: Vec<u16> = nodes.iter().map(|n| n.http).collect();
    crate::tools::wait_leader(&http, &ports).await?;
    let urls: Arc<Vec<String>> = Arc::new(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o == i + 1))
            .map(|(_, n)| format!("http://127.0.0.1:{}/v1/agent/service/register", n.http))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut meters: Vec<Meter> = nodes
        .iter()
        .map(|n| Meter::start(&n.name, n.child.id()))
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, urls, next) = (http.clone(), urls.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let body = serde_json::json!({
                    "ID": format!("svc-{i}"), "Name": format!("svc-{}", i % 100),
                    "Port": 1024 + (i % 60000), "Address": "10.1.2.3", "Tags": ["bench"],
                });
                let t = Instant::now();
                let ok = http
                    .put(&urls[c % urls.len()])
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    lat.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    for m in &mut meters {
        m.sample();
    }
    let leader = leader_name(&http, &nodes).await;
    drop(nodes);
    let processes: Vec<ProcessUsage> = meters.iter().map(Meter::usage).collect();
    let cpu: f64 = processes.iter().map(|p| p.cpu_seconds).sum();
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i].as_secs_f64() * 1000.0
    };
    Ok(CatalogRun {
        clients,
        attempted: count,
        acknowledged: lat.len(),
        failed,
        seconds,
        per_second: lat.len() as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        leader,
        processes,
        cpu_us_per_registration: cpu * 1e6 / lat.len().max(1) as f64,
    })
}

/// The name of the node the first answering node names as the Raft leader (by RPC address).
async fn leader_name(http: &reqwest::Client, nodes: &[Node]) -> Option<String> {
    for n in nodes {
        let url = format!("http://127.0.0.1:{}/v1/status/leader", n.http);
        if let Ok(r) = http.get(&url).send().await
            && let Ok(addr) = r.json::<String>().await
            && let Some(l) = nodes
                .iter()
                .find(|m| addr == format!("127.0.0.1:{}", m.rpc))
        {
            return Some(l.name.clone());
        }
    }
    None
}
