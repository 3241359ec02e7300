//! A DC-wide power loss: a 3-node DC of real `meridian` processes runs under an `LD_PRELOAD`
//! interposer (`powerloss/interposer.c`, compiled here with `cc` at run time) that journals,
//! for the files under each node's data folder, what has been made durable; a client registers
//! services over the HTTP API right up to the cut; then every node is killed (-9) at once, each
//! data folder is rolled back to what a power cut would have kept ([`journal::power_cut`], whose
//! docs say exactly what is modelled), the nodes restart on it, and every registration that was
//! acknowledged must still be in every node's catalog.
//!
//! Why this exists: kill -9 alone is survived by the page cache, so a build that never syncs
//! its write-ahead log passes every kill test. This one fails it (`skip-wal-sync`).
//!
//! Why all three nodes: with a majority cut, the survivor still holds every acknowledged entry
//! in memory and on its page cache, wins the election with the longest log and re-replicates it,
//! so a build without WAL syncs would lose nothing, by luck. A DC-wide power loss (DESIGN.md:
//! acknowledged writes survive "a power loss") leaves the fsync as the only thing between an
//! acknowledgement and its loss, so the broken build fails every run, and the real one must pass
//! every run.
//!
//! Why C for the interposer, not a Rust cdylib: `open`, `open64` and `openat` are variadic, which
//! stable Rust cannot define; a cdylib would also bring Rust's runtime into every process that
//! loads it and a crate to build, where `cc` (from the `g++` that scripts/env.sh installs) builds
//! 400 lines of C in a fraction of a second.

pub mod journal;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use meridian_testkit::agent::{api_client_with, dc_configs, leader_index};
use meridian_testkit::config::TEST_TOKEN;
use meridian_testkit::{Agent, AgentConfig, Launch};

pub use journal::PowerCut;

/// The service the client registers (one instance per registration, unique IDs).
pub const SERVICE: &str = "powerloss";
/// Registered after the restart: once a node shows it, it has applied everything committed
/// before it.
const BARRIER: &str = "powerloss-barrier";
/// The interposer's source.
const INTERPOSER_C: &str = include_str!("powerloss/interposer.c");
/// How long the restarted DC may take to elect a leader, commit the barrier and show it.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// How a power-loss run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The binary (the workspace's `meridian` when `None`).
    pub bin: Option<PathBuf>,
    /// Environment for the nodes (`MERIDIAN_CHAOS_BREAK` for the broken build).
    pub env: Vec<(String, String)>,
    /// Concurrent client connections registering.
    pub writers: usize,
    /// How long they register before the cut (it comes while requests are in flight).
    pub write_for: Duration,
    /// At most this many registrations in all.
    pub max_writes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bin: None,
            env: Vec::new(),
            writers: 6,
            write_for: Duration::from_secs(3),
            max_writes: 20_000,
        }
    }
}

/// What a run saw.
#[derive(Debug)]
pub struct Report {
    /// Registrations sent.
    pub attempted: u64,
    /// Registrations acknowledged (HTTP 200) before the cut.
    pub acked: usize,
    /// Acknowledged registrations missing after the restart, per node.
    pub lost: BTreeMap<String, Vec<String>>,
    /// What the cut did to each node's data folder.
    pub cuts: Vec<(String, PowerCut)>,
    /// From the cut until every node showed the barrier.
    pub recovery: Duration,
    /// The whole run.
    pub took: Duration,
    /// The run folder (configs, logs, journals, data).
    pub run_dir: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Report {
    /// The most acknowledged registrations any node lost.
    pub fn most_lost(&self) -> usize {
        self.lost.values().map(Vec::len).max().unwrap_or(0)
    }

    /// Whether the journals showed anything the model cannot represent.
    pub fn unmodelled(&self) -> bool {
        self.cuts.iter().any(|(_, c)| !c.unmodelled.is_empty())
    }

    /// Keeps the run folder (it is removed with the report otherwise) and returns it.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.run_dir.clone()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "power loss of all 3 nodes: {} of {} registrations acknowledged before the cut; \
             recovered in {:.1} s; run took {:.1} s; folder {}",
            self.acked,
            self.attempted,
            self.recovery.as_secs_f64(),
            self.took.as_secs_f64(),
            self.run_dir.display()
        )?;
        for (node, cut) in &self.cuts {
            writeln!(f, "  {node} cut: {cut}")?;
        }
        for (node, lost) in &self.lost {
            let first: Vec<&str> = lost.iter().take(5).map(String::as_str).collect();
            writeln!(
                f,
                "  {node}: {} acknowledged registrations lost{}",
                lost.len(),
                if first.is_empty() {
                    String::new()
                } else {
                    format!(" (first: {})", first.join(", "))
                }
            )?;
        }
        Ok(())
    }
}

/// Compiles the interposer into `dir` and returns the shared library's path.
pub fn build_interposer(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("interposer.c");
    let lib = dir.join("libmeridian_powerloss.so");
    std::fs::write(&src, INTERPOSER_C)?;
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .context("running cc (scripts/env.sh installs it with g++)")?;
    ensure!(
        out.status.success(),
        "cc failed to build the interposer:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(lib)
}

/// One node's interposer files.
struct Tracked {
    journal: PathBuf,
    saved: PathBuf,
}

/// Runs the power loss as `opts` says. Errors only when the run itself could not happen (the
/// run folder is then kept, and named in the error); lost writes are in the report.
pub async fn run(opts: &Options) -> Result<Report> {
    let base =
        std::env::var_os("MERIDIAN_CHAOS_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("meridian-powerloss-")
        .tempdir_in(&base)?;
    // The interposer compares absolute paths: no symlink in the prefix.
    let dir = tmp.path().canonicalize()?;
    match run_in(&dir, opts).await {
        Ok(mut r) => {
            r.dir = Some(tmp);
            if std::env::var("MERIDIAN_CHAOS_KEEP").is_ok_and(|v| v == "1") {
                r.keep();
            }
            Ok(r)
        }
        Err(e) => {
            let _ = tmp.keep();
            Err(e.context(format!("power-loss run folder kept: {}", dir.display())))
        }
    }
}

fn launch(
    c: &AgentConfig,
    dir: &Path,
    bin: Option<&PathBuf>,
    env: Vec<(String, String)>,
) -> Result<Agent> {
    Agent::launch(
        &c.node_name,
        c,
        dir,
        &[],
        &Launch {
            bin: bin.cloned(),
            env,
            core: None,
        },
    )
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

async fn run_in(dir: &Path, opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let lib = build_interposer(dir)?;
    let configs = dc_configs("dc1", 3, dir);

    let mut agents = Vec::new();
    let mut tracked = Vec::new();
    let mut models = Vec::new();
    for c in &configs {
        let t = Tracked {
            journal: dir.join(format!("{}.journal", c.node_name)),
            saved: dir.join(format!("{}.saved", c.node_name)),
        };
        std::fs::create_dir_all(&t.saved)?;
        models.push(journal::Model::before_start(&c.data_dir)?);
        let mut env = opts.env.clone();
        env.extend([
            ("LD_PRELOAD".to_owned(), path_str(&lib)?),
            ("MERIDIAN_POWERLOSS_DATA".to_owned(), path_str(&c.data_dir)?),
            (
                "MERIDIAN_POWERLOSS_JOURNAL".to_owned(),
                path_str(&t.journal)?,
            ),
            ("MERIDIAN_POWERLOSS_SAVED".to_owned(), path_str(&t.saved)?),
        ]);
        agents.push(launch(c, dir, opts.bin.as_ref(), env)?);
        tracked.push(t);
    }
    for a in &mut agents {
        a.wait_ready().await?;
    }

    // The client: registrations spread over the three nodes (followers forward to the leader),
    // until the cut. A 200 means committed on a majority, so durable there.
    let http = api_client_with(Some(TEST_TOKEN), Duration::from_secs(2))?;
    let bases: Arc<Vec<String>> = Arc::new(agents.iter().map(Agent::base).collect());
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let attempted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..opts.writers {
        let (http, bases, acked, attempted, stop) = (
            http.clone(),
            bases.clone(),
            acked.clone(),
            attempted.clone(),
            stop.clone(),
        );
        let max = opts.max_writes;
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = attempted.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    break;
                }
                let id = format!("pl-{w}-{n}");
                let body = serde_json::json!({
                    "ID": id, "Name": SERVICE, "Port": 1 + n % 60_000, "Address": "127.0.0.1",
                });
                let base = &bases[usize::try_from(n).unwrap_or(0) % bases.len()];
                let r = http
                    .put(format!("{base}/v1/agent/service/register"))
                    .json(&body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    acked
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(id);
                }
            }
        }));
    }
    tokio::time::sleep(opts.write_for).await;

    // The cut: one SIGKILL to each node from one `kill` command, so they die within
    // microseconds of each other, with registrations in flight.
    let pids: Vec<String> = agents
        .iter()
        .filter_map(|a| a.proc.pid())
        .map(|p| p.to_string())
        .collect();
    ensure!(
        pids.len() == agents.len(),
        "a node was not running at the cut"
    );
    let status = std::process::Command::new("kill")
        .arg("-9")
        .args(&pids)
        .status()
        .context("running kill")?;
    let cut_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for a in &mut agents {
        a.kill9()?;
    }
    ensure!(status.success(), "kill -9 {} failed", pids.join(" "));
    for w in writers {
        w.await?;
    }
    let acked: Vec<String> = std::mem::take(
        &mut *acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let attempted = attempted.load(Ordering::Relaxed).min(opts.max_writes);
    drop(agents);

    // The power loss proper: every data folder back to what was durable.
    let mut cuts = Vec::new();
    for ((c, t), model) in configs.iter().zip(&tracked).zip(models) {
        let cut = journal::power_cut(&c.data_dir, &t.journal, &t.saved, model)
            .with_context(|| format!("cutting the power of {}", c.node_name))?;
        cuts.push((c.node_name.clone(), cut));
    }

    // Power back: the same nodes on the same data, without the interposer.
    let mut agents = configs
        .iter()
        .map(|c| launch(c, dir, opts.bin.as_ref(), opts.env.clone()))
        .collect::<Result<Vec<_>>>()?;
    let leader = leader_index(&agents, RECOVERY_LIMIT).await?;
    barrier(&agents[leader]).await?;
    let mut lost = BTreeMap::new();
    for a in &mut agents {
        wait_for_barrier(a).await?;
        let present: BTreeSet<String> = a.instance_ids(SERVICE).await?.into_iter().collect();
        let missing: Vec<String> = acked
            .iter()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        lost.insert(a.name.clone(), missing);
    }
    let recovery = cut_at.elapsed();
    for a in &mut agents {
        a.kill9()?;
    }
    Ok(Report {
        attempted,
        acked: acked.len(),
        lost,
        cuts,
        recovery,
        took: started.elapsed(),
        run_dir: dir.to_owned(),
        dir: None,
    })
}

/// Registers the barrier instance at `a` (retried while the new leader settles).
async fn barrier(a: &Agent) -> Result<()> {
    let deadline = Instant::now() + RECOVERY_LIMIT;
    let body = serde_json::json!({
        "ID": BARRIER, "Name": BARRIER, "Port": 1, "Address": "127.0.0.1",
    });
    loop {
        match a.put_json("/v1/agent/service/register", &body).await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if Instant::now() > deadline => {
                bail!("registering the barrier at {}: {}", a.name, r.status())
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("registering the barrier at {}", a.name)));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until `a`'s catalog shows the barrier: it has then applied everything before it.
async fn wait_for_barrier(a: &Agent) -> Result<()> {
    meridian_testkit::wait::eventually(
        RECOVERY_LIMIT,
        &format!("the barrier in {}'s catalog", a.name),
        || async {
            a.instance_ids(BARRIER)
                .await
                .is_ok_and(|ids| ids.iter().any(|i| i == BARRIER))
        },
    )
    .await
}
