//! `all`: every benchmark in turn, each as its own process of this binary (so one that cannot
//! complete does not stop the others, and each starts from a clean slate), then one summary:
//! `all.md` (every benchmark's table, in order) and `all.json` (every benchmark's own report).
//! Exits non-zero only when a benchmark could not complete; a target not met is a finding in
//! the report, not a failure.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{machine, today};

/// The benchmarks, in the order they run.
const BENCHES: [&str; 11] = [
    "catalog",
    "membership",
    "backup",
    "tokens",
    "dns",
    "federation",
    "scale",
    "gateway",
    "mesh",
    "wan",
    "failover",
];

/// One benchmark's run.
#[derive(Serialize)]
struct Entry {
    benchmark: &'static str,
    completed: bool,
    /// The process's exit code (`None`: killed, by a signal or by the time bound).
    exit_code: Option<i32>,
    seconds: f64,
    /// The benchmark's own JSON report, when it wrote one.
    report: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Summary {
    benchmark: &'static str,
    date: String,
    machine: String,
    quick: bool,
    runs: Vec<Entry>,
}

/// Runs every benchmark with the `meridian` binary `bin`, reports into `out`.
pub fn run(bin: &Path, quick: bool, profile: bool, out: &Path) -> Result<()> {
    let me = std::env::current_exe().context("finding this binary")?;
    // Generous per-benchmark bounds: the longest full run (gateway) takes about 15 minutes.
    let bound = if quick {
        Duration::from_secs(10 * 60)
    } else {
        Duration::from_secs(45 * 60)
    };
    let mut runs = Vec::new();
    for name in BENCHES {
        let (md, json) = (
            out.join(format!("{name}.md")),
            out.join(format!("{name}.json")),
        );
        // A report left from an earlier run must not pass for this one.
        let _ = std::fs::remove_file(&md);
        let _ = std::fs::remove_file(&json);
        eprintln!(
            "\n== meridian-bench {name}{}",
            if quick { " --quick" } else { "" }
        );
        let start = Instant::now();
        let mut cmd = Command::new(&me);
        cmd.arg(name)
            .arg("--meridian")
            .arg(bin)
            .arg("--out")
            .arg(out);
        if quick {
            cmd.arg("--quick");
        }
        if profile {
            cmd.arg("--profile");
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() > bound {
                eprintln!("== {name}: still running after {bound:?}; stopped");
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let report = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let completed = status.is_some_and(|s| s.success()) && report.is_some();
        runs.push(Entry {
            benchmark: name,
            completed,
            exit_code: status.and_then(|s| s.code()),
            seconds: start.elapsed().as_secs_f64(),
            report,
        });
    }
    let summary = Summary {
        benchmark: "all",
        date: today(),
        machine: machine(),
        quick,
        runs,
    };
    let mut md = format!(
        "# meridian-bench all{}: {}, {}\n",
        if quick { " --quick" } else { "" },
        summary.date,
        summary.machine
    );
    for r in &summary.runs {
        let _ = write!(md, "\n## {} ({:.0} s)\n\n", r.benchmark, r.seconds);
        match std::fs::read_to_string(out.join(format!("{}.md", r.benchmark))) {
            Ok(table) if r.completed => md.push_str(table.trim_end()),
            _ => {
                let _ = write!(
                    md,
                    "**Did not complete** (exit code {}); its output above says why.",
                    r.exit_code
                        .map_or_else(|| "none: stopped".to_owned(), |c| c.to_string())
                );
            }
        }
        md.push('\n');
    }
    crate::tools::write_report(out, "all", &summary, &md)?;
    let failed: Vec<&str> = summary
        .runs
        .iter()
        .filter(|r| !r.completed)
        .map(|r| r.benchmark)
        .collect();
    eprintln!(
        "== meridian-bench all: {} of {} completed in {:.0} s; reports in {}",
        summary.runs.len() - failed.len(),
        summary.runs.len(),
        summary.runs.iter().map(|r| r.seconds).sum::<f64>(),
        out.display()
    );
    if !failed.is_empty() {
        bail!("could not complete: {}", failed.join(", "));
    }
    Ok(())
}
