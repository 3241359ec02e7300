//! `catalog`: acknowledged registrations per second on a 3-node datacenter. Many concurrent
//! HTTP clients register services through every node (followers forward to the leader); each
//! acknowledgement means the entry is fsynced on a majority and applied.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use meridian_testkit::Agent;
use meridian_testkit::agent::{dc_configs, leader_index};
use meridian_testkit::certs::Pki;
use meridian_testkit::config::{Acl, Federation};
use meridian_testkit::meter::{Meter, ProcessUsage, mib};
use meridian_testkit::stats::median;
use serde::Serialize;

use crate::{machine, procs, today};

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
        median_per_second: median(&runs.iter().map(|r| r.per_second).collect::<Vec<_>>()),
        median_p50_ms: median(&runs.iter().map(|r| r.p50_ms).collect::<Vec<_>>()),
        median_p99_ms: median(&runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>()),
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

/// The management token of `--secure` runs.
const BENCH_TOKEN: &str = "meridian-bench-management-token";

/// Starts a 3-node DC (nodes `n1`…`n3`) in `dir`: secure (`--secure`: certificates for the rpc
/// port from the kit's CA, an ACL) or open (see `tools::open_config`), with the node's default
/// Raft timings either way.
fn start_dc(bin: &Path, dir: &Path, secure: bool) -> Result<Vec<Agent>> {
    let pki = if secure {
        Some(Pki::new(&dir.join("certs"))?)
    } else {
        None
    };
    let mut nodes = Vec::new();
    for kit in dc_configs("dc1", 3, dir) {
        let mut c = crate::tools::open_config("dc1", &kit.node_name, kit.ports, &kit.data_dir);
        c.node_id = kit.node_id;
        c.servers = kit.servers;
        if let Some(pki) = &pki {
            let f = pki.node_files("dc1", &c.node_name, &[])?;
            c.insecure = false;
            c.federation = Some(Federation::with_certs(&f.ca, &f.cert, &f.key));
            c.extra.remove("acl");
            c.acl = Some(Acl::management(BENCH_TOKEN));
        }
        let name = c.node_name.clone();
        nodes.push(procs::configured_agent(
            &name,
            bin,
            &c,
            dir,
            &[("RUST_LOG", "warn")],
            None,
        )?);
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
    let mut nodes = start_dc(bin, dir.path(), secure)?;
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
    let bases: Vec<String> = nodes.iter().map(Agent::base).collect();
    meridian_testkit::wait::leader_known(&http, &bases, Duration::from_secs(60)).await?;
    let urls: Arc<Vec<String>> = Arc::new(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o == i + 1))
            .map(|(_, n)| n.url("/v1/agent/service/register"))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut meters: Vec<Meter> = nodes
        .iter()
        .map(|n| Ok(Meter::start(&n.name, procs::pid(&n.proc)?)))
        .collect::<Result<_>>()?;
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
    // The nodes' own clients present no token: a secure DC's leader is asked with ours.
    for n in &mut nodes {
        n.http = http.clone();
    }
    let leader = leader_index(&nodes, Duration::from_secs(5))
        .await
        .ok()
        .map(|i| nodes[i].name.clone());
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
