//! `meridian-bench`: benchmarks of real `meridian` processes on loopback.
//!
//! `catalog` measures acknowledged registrations per second on a 3-node datacenter: many
//! concurrent HTTP clients register services through every node (followers forward to the
//! leader), each acknowledgement meaning the entry is fsynced on a majority and applied.
//!
//! `dns` loads Meridian's DNS server and Knot DNS (the same names as a static zone) with dnsperf,
//! one core each, and reports queries/s, latency, CPU and memory side by side (see [`dns`]).
//!
//! `federation` runs three datacenters with an added WAN delay in a network namespace of its own
//! and measures convergence (registration acknowledged in dc1 to DNS answer in dc2), initial sync
//! time and bytes, and bytes per change (see [`federation`]).
//!
//! `gateway` loads Meridian's gateway, HAProxy and nginx's stream module (TLS passthrough routed
//! by SNI) and the backend directly with wrk over HTTPS: new TLS connections/s, keep-alive
//! requests/s, bulk MB/s and added latency, with each proxy's CPU and memory (see [`gateway`]).
//!
//! `failover` drains datacenter dc1 with `meridian drill dc-down` and kills it with `kill -9`,
//! and measures from dc3 how long DNS answers and gateway connections keep going to dc1 and how
//! long they take to come back (see [`failover`]).
//!
//! `wan` times a new client connection's first response byte from dc2 to a service in dc1 over
//! a delayed WAN: through the warm QUIC tunnel, the TCP fallback, two HAProxy relaying by SNI
//! (Consul's way) and directly (see [`wan`]).

mod dns;
mod failover;
mod federation;
mod gateway;
mod tools;
mod wan;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Benchmarks of Meridian on loopback")]
struct Cli {
    /// The meridian binary (default: next to this one).
    #[arg(long, global = true)]
    meridian: Option<PathBuf>,
    /// Short runs, for CI.
    #[arg(long, global = true)]
    quick: bool,
    /// Where to write the JSON and Markdown reports.
    #[arg(long, global = true, default_value = "bench/results")]
    out: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Acknowledged registrations per second on a 3-node datacenter.
    Catalog {
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Registrations in all (bounded load).
        #[arg(long)]
        count: Option<usize>,
        /// Repetitions; the median is reported.
        #[arg(long)]
        reps: Option<usize>,
        /// Send every registration to this node (1-3) instead of round-robin to all three.
        #[arg(long)]
        node: Option<usize>,
    },
    /// dnsperf against Meridian's DNS server and against Knot DNS serving the same names.
    Dns {
        /// Services registered (and in Knot's zone).
        #[arg(long, default_value_t = 1_000)]
        services: usize,
        /// Instances per service.
        #[arg(long, default_value_t = 3)]
        instances: usize,
        /// Seconds per dnsperf run (default 15, quick 5).
        #[arg(long)]
        seconds: Option<u64>,
        /// Repetitions per server, the order alternating (default 4, quick 2).
        #[arg(long)]
        reps: Option<usize>,
        /// dnsperf's bound on outstanding queries.
        #[arg(long, default_value_t = 20)]
        outstanding: usize,
        /// Which servers to measure.
        #[arg(long, value_enum, default_value_t = dns::Servers::Both)]
        servers: dns::Servers,
    },
    /// Three datacenters over a delayed WAN: convergence, initial sync, bytes per change.
    Federation {
        /// Services registered in dc1 before the others join (default 10,000, quick 1,000).
        #[arg(long)]
        services: Option<usize>,
        /// Instances per service.
        #[arg(long, default_value_t = 5)]
        instances: usize,
        /// Registrations timed to dc2's DNS answer (default 1,000, quick 100).
        #[arg(long)]
        registrations: Option<usize>,
        /// Single changes whose bytes are counted.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Concurrent clients for the bulk registrations.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Added one-way WAN delay between datacenters, in milliseconds.
        #[arg(long, default_value_t = 50)]
        wan_delay_ms: u64,
        /// Internal: set when re-run inside the benchmark's network namespace.
        #[arg(long, hide = true)]
        in_netns: Option<String>,
    },
    /// TLS passthrough by SNI: Meridian's gateway beside HAProxy, nginx stream and direct.
    Gateway {
        /// Seconds per throughput run: new connections, keep-alive, bulk (default 8, quick 2).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seconds per latency run: one connection, paced (default 5, quick 2).
        #[arg(long)]
        latency_seconds: Option<u64>,
        /// Repetitions, the order of the paths rotating; the median is reported (default 3,
        /// quick 1).
        #[arg(long)]
        reps: Option<usize>,
        /// Size of the bulk file in MiB.
        #[arg(long, default_value_t = 64)]
        file_mib: usize,
        /// wrk connections for new TLS connections per second (`Connection: close`).
        #[arg(long, default_value_t = 32)]
        close_connections: usize,
        /// wrk connections for keep-alive requests per second.
        #[arg(long, default_value_t = 64)]
        keepalive_connections: usize,
        /// wrk connections for the bulk transfer.
        #[arg(long, default_value_t = 4)]
        bulk_connections: usize,
        /// wrk connections for the paced latency run.
        #[arg(long, default_value_t = 8)]
        paced_connections: usize,
        /// Think time of each paced connection between requests, in milliseconds.
        #[arg(long, default_value_t = 2)]
        think_ms: u64,
        /// Paths to measure, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        targets: Vec<gateway::Target>,
        /// Process layouts, comma-separated, measured one after the other (default: both;
        /// quick: own-core).
        #[arg(long, value_enum, value_delimiter = ',')]
        layouts: Vec<gateway::Layout>,
    },
    /// Failover and failback times from dc3 when dc1 is drained (`meridian drill dc-down`) and
    /// when it is lost (`kill -9`), with the answers pointing at a DC already marked down.
    Failover {
        /// Drain drills (default 20, quick 3).
        #[arg(long)]
        drains: Option<usize>,
        /// DC-loss runs (default 20, quick 3).
        #[arg(long)]
        losses: Option<usize>,
        /// How long each drain lasts, in seconds.
        #[arg(long, default_value_t = 3)]
        drain_seconds: u64,
        /// Probe interval in milliseconds (the resolution of every time).
        #[arg(long, default_value_t = 50)]
        poll_ms: u64,
    },
    /// Time to first byte of a new connection to another DC over a delayed WAN: the warm QUIC
    /// tunnel beside the TCP fallback, two HAProxy relaying by SNI (Consul's way) and direct.
    Wan {
        /// New client connections timed per path (default 50, quick 10).
        #[arg(long)]
        connections: Option<usize>,
        /// Unrecorded connections per path first (the first one opens the QUIC tunnel).
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Added one-way WAN delay between the datacenters, in milliseconds.
        #[arg(long, default_value_t = 50)]
        wan_delay_ms: u64,
        /// Internal: set when re-run inside the benchmark's network namespace.
        #[arg(long, hide = true)]
        in_netns: Option<String>,
    },
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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

/// Waits until every agent on `http_ports` knows a Raft leader (60 s at most in all).
async fn wait_leader(http: &reqwest::Client, http_ports: &[u16]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in http_ports {
        let url = format!("http://127.0.0.1:{port}/v1/status/leader");
        loop {
            if let Ok(r) = http.get(&url).send().await
                && let Ok(s) = r.json::<String>().await
                && !s.is_empty()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("no leader known at 127.0.0.1:{port} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
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
    wait_leader(&http, &ports).await?;
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match cli.meridian {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("bench binary has a folder")?
            .join("meridian"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p meridian` or pass --meridian",
            bin.display()
        );
    }
    std::fs::create_dir_all(&cli.out)?;
    match cli.what {
        What::Catalog {
            clients,
            count,
            reps,
            node,
        } => {
            let count = count.unwrap_or(if cli.quick { 2_000 } else { 20_000 });
            let reps = reps.unwrap_or(if cli.quick { 1 } else { 3 });
            let mut runs = Vec::new();
            for rep in 0..reps {
                let run = catalog_once(&bin, clients, count, node).await?;
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
            std::fs::write(cli.out.join("catalog.json"), &json)?;
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
            std::fs::write(cli.out.join("catalog.md"), &md)?;
            println!("{md}");
        }
        What::Dns {
            services,
            instances,
            seconds,
            reps,
            outstanding,
            servers,
        } => {
            let opt = dns::Options {
                services,
                instances,
                seconds: seconds.unwrap_or(if cli.quick { 5 } else { 15 }),
                reps: reps.unwrap_or(if cli.quick { 2 } else { 4 }),
                outstanding,
                servers,
            };
            dns::run(&bin, cli.quick, &cli.out, opt).await?;
        }
        What::Federation {
            services,
            instances,
            registrations,
            changes,
            clients,
            wan_delay_ms,
            in_netns,
        } => {
            let opt = federation::Options {
                services: services.unwrap_or(if cli.quick { 1_000 } else { 10_000 }),
                instances,
                registrations: registrations.unwrap_or(if cli.quick { 100 } else { 1_000 }),
                changes,
                clients,
                wan_delay_ms,
                in_netns,
            };
            federation::run(&bin, cli.quick, &cli.out, opt).await?;
        }
        What::Gateway {
            seconds,
            latency_seconds,
            reps,
            file_mib,
            close_connections,
            keepalive_connections,
            bulk_connections,
            paced_connections,
            think_ms,
            targets,
            layouts,
        } => {
            let opt = gateway::Options {
                seconds: seconds.unwrap_or(if cli.quick { 2 } else { 8 }),
                latency_seconds: latency_seconds.unwrap_or(if cli.quick { 2 } else { 5 }),
                reps: reps.unwrap_or(if cli.quick { 1 } else { 3 }),
                file_mib,
                close_connections,
                keepalive_connections,
                bulk_connections,
                paced_connections,
                think_ms,
                targets,
                layouts: if !layouts.is_empty() {
                    layouts
                } else if cli.quick {
                    vec![gateway::Layout::OwnCore]
                } else {
                    vec![gateway::Layout::OwnCore, gateway::Layout::SharedCore]
                },
            };
            gateway::run(&bin, cli.quick, &cli.out, opt).await?;
        }
        What::Failover {
            drains,
            losses,
            drain_seconds,
            poll_ms,
        } => {
            let opt = failover::Options {
                drains: drains.unwrap_or(if cli.quick { 3 } else { 20 }),
                losses: losses.unwrap_or(if cli.quick { 3 } else { 20 }),
                drain_seconds,
                poll_ms: poll_ms.clamp(10, 1000),
            };
            failover::run(&bin, &cli.out, opt).await?;
        }
        What::Wan {
            connections,
            warmup,
            wan_delay_ms,
            in_netns,
        } => {
            let opt = wan::Options {
                connections: connections.unwrap_or(if cli.quick { 10 } else { 50 }),
                warmup,
                wan_delay_ms,
                in_netns,
            };
            wan::run(&bin, cli.quick, &cli.out, opt).await?;
        }
    }
    Ok(())
}
