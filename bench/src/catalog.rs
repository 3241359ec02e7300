//! `catalog`: acknowledged registrations per second on a 3-node datacenter. Many concurrent
//! HTTP clients register services through every node (followers forward to the leader); each
//! acknowledgement means the entry is fsynced on a majority and applied.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_testkit::Agent;
use meridian_testkit::agent::{dc_configs, leader_index};
use meridian_testkit::certs::Pki;
use meridian_testkit::config::{Acl, Federation};
use meridian_testkit::meter::{Meter, ProcessUsage, mib};
use meridian_testkit::stats::median;
use serde::Serialize;

use crate::{machine, procs, today};

/// One repetition's load: who registers how much where, and the catalog it runs beside.
pub struct Load {
    /// Concurrent clients.
    pub clients: usize,
    /// Timed registrations.
    pub count: usize,
    /// Every registration to this node (1-3) instead of round-robin.
    pub node: Option<usize>,
    /// Mutual TLS on the rpc port and ACL tokens on the HTTP API.
    pub secure: bool,
    /// Instances registered (untimed) before the timed load.
    pub preload: usize,
    /// The nodes' `raft.snapshot_every`, when not the default.
    pub snapshot_every: Option<u64>,
    /// Worker threads of each node's runtime, when not one per core.
    pub node_threads: Option<usize>,
    /// Each registration carries a health check (a TTL check, passing), as most services'
    /// do: every instance a node's agent registers adds a check on that node.
    pub checks: bool,
}

/// Runs `reps` repetitions of `load`, and writes `catalog.json` and `catalog.md` (or the
/// `-secure` / `-snapshot` variants) into `out`.
pub async fn run(bin: &Path, out: &Path, load: &Load, reps: usize) -> Result<()> {
    let mut runs = Vec::new();
    for rep in 0..reps {
        let run = catalog_once(bin, load).await?;
        eprintln!(
            "catalog rep {}: {:.0}/s acknowledged, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} failed, {} snapshots during the load, {} writes per Raft entry",
            rep + 1,
            run.per_second,
            run.p50_ms,
            run.p99_ms,
            run.max_ms,
            run.failed,
            run.snapshots_during
                .map_or("?".to_owned(), |n| n.to_string()),
            run.writes_per_entry
                .map_or("?".to_owned(), |n| format!("{n:.1}")),
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
        node_threads: load.node_threads,
        runs,
    };
    let mut beside = match (load.preload, load.snapshot_every) {
        (0, _) => String::new(),
        (n, Some(every)) => {
            format!(", beside {n} preloaded instances, a snapshot every {every} entries")
        }
        (n, None) => format!(", beside {n} preloaded instances"),
    };
    if let Some(n) = load.node_threads {
        write!(beside, ", {n} worker thread(s) per node")?;
    }
    if load.checks {
        beside.push_str(", a TTL check with each instance");
    }
    let mut md = format!(
        "| benchmark | clients | registrations | acknowledged/s (median of {}) | p50 | p99 |\n\
         |---|---|---|---|---|---|\n\
         | catalog, 3-node DC, fsync{}{beside} | {} | {} | {:.0} | {:.1} ms | {:.1} ms |\n",
        report.runs.len(),
        if load.secure {
            ", mutual TLS on rpc, ACL token"
        } else {
            ""
        },
        load.clients,
        load.count,
        report.median_per_second,
        report.median_p50_ms,
        report.median_p99_ms
    );
    if load.preload > 0 {
        md.push_str("\nPer repetition: p99 and the slowest acknowledgement, and the snapshots the three nodes built during the timed load (`meridian_raft_snapshots_built_total`; ? where the binary has no such metric):\n\n| rep | p99 | max | snapshots | snapshot build time |\n|---|---|---|---|---|\n");
        for (i, r) in report.runs.iter().enumerate() {
            writeln!(
                md,
                "| {} | {:.1} ms | {:.1} ms | {} | {} |",
                i + 1,
                r.p99_ms,
                r.max_ms,
                r.snapshots_during.map_or("?".to_owned(), |n| n.to_string()),
                r.snapshot_seconds_during
                    .map_or("?".to_owned(), |s| format!("{s:.2} s")),
            )?;
        }
    }
    md.push_str(&resources_table(&report.runs)?);
    let name = match (load.secure, load.preload, load.checks) {
        (true, _, _) => "catalog-secure",
        (false, 0, false) => "catalog",
        (false, 0, true) => "catalog-checks",
        (false, _, _) => "catalog-snapshot",
    };
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
    /// Instances registered before the timed load.
    preloaded: usize,
    /// Snapshots built by the three nodes during the timed load (None: no such metric).
    snapshots_during: Option<u64>,
    /// Seconds the three nodes spent building them.
    snapshot_seconds_during: Option<f64>,
    /// Mean writes per Raft entry the leader proposed during the load (its proposer's batches).
    writes_per_entry: Option<f64>,
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
    /// Worker threads of each node's runtime; none: one per core.
    node_threads: Option<usize>,
}

/// The management token of `--secure` runs.
const BENCH_TOKEN: &str = "meridian-bench-management-token";

/// Starts a 3-node DC (nodes `n1`…`n3`) in `dir`: secure (`--secure`: certificates for the rpc
/// port from the kit's CA, an ACL) or open (see `tools::open_config`), with the node's default
/// Raft timings either way.
pub(crate) fn start_dc(
    bin: &Path,
    dir: &Path,
    secure: bool,
    snapshot_every: Option<u64>,
    node_threads: Option<usize>,
) -> Result<Vec<Agent>> {
    let threads = node_threads.map(|n| n.to_string());
    let mut env = vec![("RUST_LOG", "warn")];
    if let Some(n) = &threads {
        env.push(("TOKIO_WORKER_THREADS", n));
    }
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
        if let Some(every) = snapshot_every {
            c.set("raft", "snapshot_every", i64::try_from(every)?);
        }
        if let Some(pki) = &pki {
            let f = pki.node_files("dc1", &c.node_name, &[])?;
            c.insecure = false;
            c.federation = Some(Federation::with_certs(&f.ca, &f.cert, &f.key));
            c.extra.remove("acl");
            c.acl = Some(Acl::management(BENCH_TOKEN));
        }
        let name = c.node_name.clone();
        nodes.push(procs::configured_agent(&name, bin, &c, dir, &env, None)?);
    }
    Ok(nodes)
}

async fn catalog_once(bin: &Path, load: &Load) -> Result<CatalogRun> {
    let dir = tempfile::tempdir()?;
    let mut nodes = start_dc(
        bin,
        dir.path(),
        load.secure,
        load.snapshot_every,
        load.node_threads,
    )?;
    let mut headers = reqwest::header::HeaderMap::new();
    if load.secure {
        headers.insert(
            "x-consul-token",
            reqwest::header::HeaderValue::from_static(BENCH_TOKEN),
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(load.clients)
        .build()?;
    let token = load.secure.then_some(BENCH_TOKEN);
    let bases: Vec<String> = nodes.iter().map(Agent::base).collect();
    meridian_testkit::wait::leader_known(&http, &bases, Duration::from_secs(60)).await?;
    let urls: Arc<Vec<String>> = Arc::new(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| load.node.is_none_or(|o| o == i + 1))
            .map(|(_, n)| n.url("/v1/agent/service/register"))
            .collect(),
    );
    if load.preload > 0 {
        let t = Instant::now();
        let (lat, failed) =
            register_all(token, &urls, "pre", load.preload, load.clients, load.checks).await?;
        eprintln!(
            "catalog: preloaded {} instances in {:.1} s ({failed} failed)",
            lat.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let before = totals(&http, &bases).await;
    let mut meters: Vec<Meter> = nodes
        .iter()
        .map(|n| Ok(Meter::start(&n.name, procs::pid(&n.proc)?)))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let (mut lat, failed) =
        register_all(token, &urls, "svc", load.count, load.clients, load.checks).await?;
    let seconds = started.elapsed().as_secs_f64();
    for m in &mut meters {
        m.sample();
    }
    let after = totals(&http, &bases).await;
    let during = before.zip(after).map(|(b, a)| Totals {
        snapshots: a.snapshots.saturating_sub(b.snapshots),
        snapshot_seconds: a.snapshot_seconds - b.snapshot_seconds,
        entries: a.entries.saturating_sub(b.entries),
        writes: a.writes.saturating_sub(b.writes),
    });
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
        clients: load.clients,
        attempted: load.count,
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
        preloaded: load.preload,
        snapshots_during: during.map(|d| d.snapshots),
        snapshot_seconds_during: during.map(|d| d.snapshot_seconds),
        writes_per_entry: during
            .filter(|d| d.entries > 0)
            .map(|d| d.writes as f64 / d.entries as f64),
    })
}

/// Registers `count` instances `<prefix>-<i>` (of 100 services) by `clients` concurrent
/// clients, client `c` to `urls[c % urls.len()]`, each presenting `token` when given, each
/// with a passing TTL check when `checks`: each acknowledged registration's latency, and how
/// many failed.
///
/// Each client is one HTTP/1.1 connection (keep-alive, `TCP_NODELAY`), as a Consul agent's
/// client library holds one, and sends its next request when the last is answered. The load
/// generator shares the machine's cores with the three nodes, so it is kept lean: a pooled client
/// (reqwest) cost about 55 µs of CPU per registration here, a fifth of the whole; see [`put`].
pub(crate) async fn register_all(
    token: Option<&'static str>,
    urls: &Arc<Vec<String>>,
    prefix: &'static str,
    count: usize,
    clients: usize,
    checks: bool,
) -> Result<(Vec<Duration>, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let uri: hyper::Uri = urls[c % urls.len()].parse()?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            let mut conn = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let check = if checks {
                    r#","Check":{"TTL":"1h","Status":"passing"}"#
                } else {
                    ""
                };
                let body = format!(
                    r#"{{"ID":"{prefix}-{i}","Name":"{prefix}-{}","Port":{},"Address":"10.1.2.3","Tags":["bench"]{check}}}"#,
                    i % 100,
                    1024 + (i % 60000)
                );
                let t = Instant::now();
                let sent = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    put(&mut conn, &uri, token, body.as_bytes()),
                )
                .await;
                match sent {
                    Ok(Ok(true)) => lat.push(t.elapsed()),
                    Ok(Ok(false)) => failed += 1,
                    // A broken or stuck connection is counted and replaced.
                    Ok(Err(_)) | Err(_) => {
                        failed += 1;
                        conn = None;
                    }
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
    Ok((lat, failed))
}

/// Longest wait for one registration's answer, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer head (status line and headers) a load client reads.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body a load client reads.
const MAX_BODY: usize = 1024 * 1024;

/// One load client's keep-alive connection and its read buffer.
struct Conn {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// Sends `body` as `PUT uri` on `conn` (connecting first if there is none) and reads the whole
/// answer: whether it was a success.
///
/// HTTP/1.1 written and read by hand, as wrk does: the request is one `write`, the answer is
/// read until its `Content-Length` is complete. hyper's client connection (a task of its own, so a
/// second wake-up per request) cost about 6 µs more CPU per registration on the cores the three
/// nodes share (the bench process 1.40-1.63 against 1.05-1.21 CPU s per 60,000).
async fn put(
    conn: &mut Option<Conn>,
    uri: &hyper::Uri,
    token: Option<&str>,
    body: &[u8],
) -> Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = uri.authority().context("a URL with a host")?.as_str();
    let c = match conn {
        Some(c) => c,
        None => {
            let tcp = tokio::net::TcpStream::connect(authority).await?;
            tcp.set_nodelay(true)?;
            conn.insert(Conn {
                tcp,
                buf: Vec::with_capacity(1024),
            })
        }
    };
    let mut req = Vec::with_capacity(256 + body.len());
    write!(
        req,
        "PUT {} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        uri.path(),
        body.len()
    )?;
    if let Some(t) = token {
        write!(req, "x-consul-token: {t}\r\n")?;
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    c.tcp.write_all(&req).await?;
    // The head, then as much of the body as its length says.
    c.buf.clear();
    let head_end = loop {
        if let Some(at) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if c.buf.len() > MAX_HEAD {
            bail!("an answer head over {MAX_HEAD} bytes");
        }
        if c.tcp.read_buf(&mut c.buf).await? == 0 {
            bail!("the node closed the connection mid-answer");
        }
    };
    let head = std::str::from_utf8(&c.buf[..head_end]).context("an answer head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("an answer without a status line")?;
    let (mut length, mut close) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("a bad content-length")?);
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a chunked answer (this client reads content-length only)");
        }
    }
    let length = length.context("an answer without content-length")?;
    if length > MAX_BODY {
        bail!("an answer body over {MAX_BODY} bytes");
    }
    let want = head_end + length;
    while c.buf.len() < want {
        if c.tcp.read_buf(&mut c.buf).await? == 0 {
            bail!("the node closed the connection mid-answer");
        }
    }
    if c.buf.len() > want {
        bail!("bytes after the answer, which nothing asked for");
    }
    if close {
        *conn = None;
    }
    Ok((200..300).contains(&status))
}

/// The instance IDs the node at `base` holds of the 100 services `<prefix>-0` … `<prefix>-99`
/// that [`register_all`] registers into (its own copy: `?stale`).
pub(crate) async fn instance_ids(
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
) -> Result<std::collections::HashSet<String>> {
    let mut ids = std::collections::HashSet::new();
    for s in 0..100 {
        let entries: serde_json::Value = http
            .get(format!("{base}/v1/catalog/service/{prefix}-{s}?stale"))
            .send()
            .await?
            .json()
            .await?;
        for e in entries.as_array().into_iter().flatten() {
            if let Some(id) = e["ServiceID"].as_str() {
                ids.insert(id.to_owned());
            }
        }
    }
    Ok(ids)
}

/// Counters of the nodes at `bases`, summed: snapshots built, seconds spent building them, Raft
/// entries proposed and the writes they carried (None when a node does not export them).
#[derive(Clone, Copy, Default)]
struct Totals {
    snapshots: u64,
    snapshot_seconds: f64,
    entries: u64,
    writes: u64,
}

async fn totals(http: &reqwest::Client, bases: &[String]) -> Option<Totals> {
    use meridian_testkit::metrics::value;
    let mut t = Totals::default();
    for base in bases {
        let text = meridian_testkit::metrics::scrape(http, base).await.ok()?;
        t.snapshots += value(&text, "meridian_raft_snapshots_built_total")? as u64;
        t.snapshot_seconds += value(&text, "meridian_raft_snapshot_build_seconds_total")?;
        t.entries += value(&text, "meridian_raft_proposed_entries_total")? as u64;
        t.writes += value(&text, "meridian_raft_proposed_writes_total")? as u64;
    }
    Some(t)
}
