//! `backup`: how long `GET /v1/snapshot` (save) and `PUT /v1/snapshot` (restore) take on a
//! 3-node DC, and how big the file is, for catalogs of a given size. A restore is acknowledged
//! once its one Raft entry is committed on a majority and applied; the benchmark then checks that
//! every server holds every instance.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meridian_testkit::Agent;
use serde::Serialize;

use crate::{machine, today};

/// Runs one save and one restore for each size in `sizes`; writes `backup.json` and `backup.md`.
pub async fn run(bin: &Path, out: &Path, sizes: &[usize]) -> Result<()> {
    let mut runs = Vec::new();
    for &instances in sizes {
        let run = once(bin, instances).await?;
        eprintln!(
            "backup {instances}: {} bytes, save {:.0} ms, restore {:.0} ms",
            run.bytes, run.save_ms, run.restore_ms
        );
        runs.push(run);
    }
    let mut md = String::from(
        "Backup and restore of a 3-node DC (default Raft timings, fsync): `GET /v1/snapshot` after \
         its consistent-read barrier, and `PUT /v1/snapshot` until acknowledged (its one entry \
         committed on a majority and applied):\n\n\
         | instances | file | save | restore | every server holds them after |\n\
         |---|---|---|---|---|\n",
    );
    for r in &runs {
        writeln!(
            md,
            "| {} | {:.1} MiB | {:.0} ms | {:.0} ms | {:.0} ms |",
            r.instances,
            r.bytes as f64 / (1024.0 * 1024.0),
            r.save_ms,
            r.restore_ms,
            r.everywhere_ms
        )?;
    }
    let report = BackupReport {
        benchmark: "backup",
        date: today(),
        machine: machine(),
        runs,
    };
    crate::tools::write_report(out, "backup", &report, &md)
}

#[derive(Serialize)]
struct BackupReport {
    benchmark: &'static str,
    date: String,
    machine: String,
    runs: Vec<BackupRun>,
}

#[derive(Serialize)]
struct BackupRun {
    instances: usize,
    bytes: usize,
    save_ms: f64,
    restore_ms: f64,
    /// From the restore's start until every server answers with every instance.
    everywhere_ms: f64,
}

async fn once(bin: &Path, instances: usize) -> Result<BackupRun> {
    let dir = tempfile::tempdir()?;
    let nodes = crate::catalog::start_dc(bin, dir.path(), false, None, None)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let bases: Vec<String> = nodes.iter().map(Agent::base).collect();
    meridian_testkit::wait::leader_known(&http, &bases, Duration::from_secs(60)).await?;
    let urls = Arc::new(vec![nodes[0].url("/v1/agent/service/register")]);
    let (acked, failed) =
        crate::catalog::register_all(None, &urls, "pre", instances, 32, false).await?;
    ensure!(failed == 0, "{failed} of {instances} registrations failed");

    let started = Instant::now();
    let r = http.get(nodes[1].url("/v1/snapshot")).send().await?;
    ensure!(r.status().is_success(), "save: {}", r.status());
    let file = r.bytes().await?;
    let save_ms = started.elapsed().as_secs_f64() * 1000.0;

    // Something to undo: half the instances gone before the restore.
    let gone = Arc::new(
        (0..instances / 2)
            .map(|i| nodes[0].url(&format!("/v1/agent/service/deregister/pre-{i}")))
            .collect::<Vec<_>>(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (http, gone, next) = (http.clone(), gone.clone(), next.clone());
            tokio::spawn(async move {
                let mut failed = 0usize;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(url) = gone.get(i) else {
                        return failed;
                    };
                    let ok = http
                        .put(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    failed += usize::from(!ok);
                }
            })
        })
        .collect();
    for w in workers {
        ensure!(w.await? == 0, "a deregistration failed");
    }

    let started = Instant::now();
    let r = http
        .put(nodes[2].url("/v1/snapshot"))
        .body(file.clone())
        .send()
        .await?;
    let status = r.status();
    ensure!(status.is_success(), "restore: {status} {}", r.text().await?);
    let restore_ms = started.elapsed().as_secs_f64() * 1000.0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for base in bases {
        while crate::catalog::instance_ids(&http, &base, "pre")
            .await?
            .len()
            < acked.len()
        {
            ensure!(
                Instant::now() < deadline,
                "{base} never held every instance"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(BackupRun {
        instances,
        bytes: file.len(),
        save_ms,
        restore_ms,
        everywhere_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}
