//! `catalog`: acknowledged registrations per second on a 3-node datacenter. Many concurrent
//! HTTP clients register services through every node (followers forward to the leader); each
//! acknowledgement means the entry is fsynced on a majority and applied.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::tools::free_port;
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
) -> Result<()> {
    let mut runs = Vec::new();
    for rep in 0..reps {
        let run = catalog_once(bin, clients, count, node).await?;
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
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out.join("catalog.json"), &json)?;
    let md = format!(
        "| benchmark | clients | registrations | acknowledged/s (median of {}) | p50 | p99 |\n\
         |---|---|---|---|---|---|\n\
         | catalog, 3-node DC, fsync | {} | {} | {:.0} | {:.1} ms | {:.1} ms |\n",
        report.runs.len(),
        clients,
        count,
        report.median_per_second,
        report.median_p50_ms,
        report.median_p99_ms
    );
    std::fs::write(out.join("catalog.md"), &md)?;
    println!("{md}");
    Ok(())
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
    child: Child,
    http: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dc(bin: &Path, dir: &Path) -> Result<Vec<Node>> {
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
        std::fs::write(
            &cfg,
            format!(
                "datacenter = \"dc1\"\nnode_name = \"{name}\"\nnode_id = {}\nbind = \"127.0.0.1\"\n\
                 data_dir = \"{}\"\n\n[ports]\nhttp = {}\ndns = {}\nrpc = {}\nwan = {}\ngateway = {}\n{servers}",
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
        let child = Command::new(bin)
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        nodes.push(Node { child, http: p[0] });
    }
    Ok(nodes)
}

async fn catalog_once(
    bin: &Path,
    clients: usize,
    count: usize,
    only: Option<usize>,
) -> Result<CatalogRun> {
    let dir = tempfile::tempdir()?;
    let nodes = start_dc(bin, dir.path())?;
    let http = reqwest::Client::builder()
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
    drop(nodes);
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
    })
}
