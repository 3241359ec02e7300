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
//! `mesh` runs Meridian's sidecars (`meridian connect proxy`) beside a stunnel pair and direct,
//! sidecar to sidecar with mutual TLS: connections/s, requests/s, bulk, added latency and CPU
//! (see [`mesh`]).
//!
//! `scale` runs one node following twenty datacenters of 50,000 instances each, served by
//! synthetic origins that speak the real federation protocol: initial sync, memory, DNS CPU per
//! query, convergence under churn and the digest resume after a partition (see [`scale`]).
//!
//! `wan` times a new client connection's first response byte from dc2 to a service in dc1 over
//! a delayed WAN: through the warm QUIC tunnel, the TCP fallback, two HAProxy relaying by SNI
//! (Consul's way) and directly (see [`wan`]).

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

mod all;
mod backup;
mod catalog;
mod dns;
mod failover;
mod federation;
mod gateway;
mod membership;
mod mesh;
mod procs;
mod profile;
mod scale;
mod tokens;
mod tools;
mod wan;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

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
    /// Record a CPU profile of Meridian during the benchmark (`perf record`, all CPUs, then the
    /// `meridian` processes' stacks) and write it as `<bench>.folded` and a `<bench>.svg`
    /// flamegraph next to the reports.
    #[arg(long, global = true)]
    profile: bool,
    /// Samples per second per CPU of `--profile` (more for a short per-request path, fewer
    /// for a long run).
    #[arg(long, global = true, default_value_t = 99)]
    profile_hz: u32,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Every benchmark in turn, each as its own process (one that cannot complete does not stop
    /// the others), then a summary in `all.md` and `all.json`.
    All,
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
        /// Run the nodes as a real deployment does: mutual TLS on the rpc port (Raft) and ACL
        /// tokens on the HTTP API (the report is then `catalog-secure`).
        #[arg(long)]
        secure: bool,
        /// Send every registration to this node (1-3) instead of round-robin to all three.
        #[arg(long)]
        node: Option<usize>,
        /// Instances registered before the timed load (not timed), so that every snapshot the
        /// load triggers serializes and stores a catalog this big (the report is then
        /// `catalog-snapshot`).
        #[arg(long, default_value_t = 0)]
        preload: usize,
        /// The nodes' `raft.snapshot_every` (log entries between snapshots); with `--preload`
        /// a small value makes the timed load run beside several snapshots.
        #[arg(long)]
        snapshot_every: Option<u64>,
        /// Worker threads of each node's runtime (tokio's `TOKIO_WORKER_THREADS`); unset, each
        /// node starts one per core, as it would alone on a machine.
        #[arg(long)]
        node_threads: Option<usize>,
        /// Each registration carries a passing TTL check, as most services' do (the report is
        /// then `catalog-checks`).
        #[arg(long)]
        checks: bool,
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
        /// Server threads: Meridian's `[dns] threads`, Knot's `udp-workers`, all on the
        /// server's one core. Above 1, dnsperf sends from 8 sockets (`-c 8`), so that servers
        /// with a socket per thread get every thread's share.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Pin nothing: the servers' threads and dnsperf share every core (the scheduler
        /// places them), so that a server's threads can run on different cores.
        #[arg(long)]
        unpinned: bool,
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
        /// How federation crosses the WAN: `direct` (server to server) or `gateway` (through
        /// the gateways' tunnel).
        #[arg(long, value_enum, default_value_t = federation::Transport::Direct)]
        transport: federation::Transport,
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
    /// Sidecar to sidecar with mutual TLS: Meridian's `connect proxy` pair beside a stunnel pair
    /// and direct: new connections/s, keep-alive requests/s, bulk MB/s, added latency, CPU.
    Mesh {
        /// Seconds per throughput run (default 8, quick 2).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seconds per latency run (default 5, quick 2).
        #[arg(long)]
        latency_seconds: Option<u64>,
        /// Repetitions, the order of the routes rotating (default 3, quick 1).
        #[arg(long)]
        reps: Option<usize>,
        /// Size of the bulk file in MiB.
        #[arg(long, default_value_t = 64)]
        file_mib: usize,
        /// wrk connections for new connections per second (`Connection: close`).
        #[arg(long, default_value_t = 32)]
        close_connections: usize,
        /// wrk connections for keep-alive requests per second.
        #[arg(long, default_value_t = 64)]
        keepalive_connections: usize,
        /// wrk connections for the bulk transfer.
        #[arg(long, default_value_t = 4)]
        bulk_connections: usize,
        /// Tests to run, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        tests: Vec<mesh::Test>,
    },
    /// Save and restore times of `/v1/snapshot` on a 3-node DC.
    Backup {
        /// Catalog sizes, in instances (default 10,000 and 20,000; quick 2,000).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
    },
    /// The write pause while a dead server is replaced (`kill -9` of the leader, `add-peer` of a
    /// new node, `remove-peer` of the dead one) on a 3-node DC under load.
    Membership {
        /// Instances registered before the replacement (default 10,000, quick 2,000): what the
        /// new node catches up on.
        #[arg(long)]
        preload: Option<usize>,
        /// Repetitions (default 3, quick 1); medians are reported.
        #[arg(long)]
        reps: Option<usize>,
    },
    /// How long an ACL token created in one DC takes to work in another, and a delete in a
    /// third to be refused there, on three federated DCs.
    Tokens {
        /// Rounds (default 50, quick 10).
        #[arg(long)]
        rounds: Option<usize>,
        /// Tokens created before the rounds (default 1,000, quick 100).
        #[arg(long)]
        background: Option<usize>,
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
    /// One node following many datacenters (20 × 50,000 instances) served by synthetic origins:
    /// initial sync, memory, DNS CPU per query, convergence under churn, resume after a partition.
    Scale {
        /// Remote datacenters the node follows.
        #[arg(long, default_value_t = 20)]
        dcs: usize,
        /// Instances per datacenter (default 50,000, quick 2,000).
        #[arg(long)]
        instances: Option<usize>,
        /// Instances per service.
        #[arg(long, default_value_t = 5)]
        per_service: usize,
        /// Catalog nodes per datacenter (default 100, quick 10).
        #[arg(long)]
        nodes: Option<usize>,
        /// Changes per second in all, spread over the datacenters.
        #[arg(long, default_value_t = 1_000)]
        churn_rate: u64,
        /// Seconds of churn timed for convergence (default 30, quick 5).
        #[arg(long)]
        churn_seconds: Option<u64>,
        /// Every this many changes, one is a timed probe.
        #[arg(long, default_value_t = 50)]
        probe_every: u64,
        /// One-way delay of the synthetic WAN, in milliseconds.
        #[arg(long, default_value_t = 50)]
        wan_delay_ms: u64,
        /// Seconds every datacenter stays partitioned, the churn going on (default 5, quick 2).
        #[arg(long)]
        partition_seconds: Option<u64>,
        /// The origins' change window in entries (smaller than the changes of a partition, so
        /// that the resume is a digest catch-up).
        #[arg(long, default_value_t = 50)]
        window: usize,
        /// Seconds per dnsperf run (default 10, quick 3).
        #[arg(long)]
        dns_seconds: Option<u64>,
        /// dnsperf runs (default 2, quick 1).
        #[arg(long)]
        dns_reps: Option<usize>,
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
    let bin = match cli.meridian.clone() {
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
    let profile = if cli.profile && !matches!(cli.what, What::All) && !in_netns(&cli.what) {
        Some(profile::Recorder::start(
            &cli.out,
            cli.what.name(),
            cli.profile_hz,
        )?)
    } else {
        None
    };
    let result = run(cli, &bin).await;
    if let Some(p) = profile {
        match p.finish() {
            Ok(svg) => eprintln!("profile: {}", svg.display()),
            Err(e) => eprintln!("profile: not recorded: {e:#}"),
        }
    }
    result
}

/// Whether this process is a benchmark re-run inside its own network namespace (its parent,
/// outside, does the profiling).
fn in_netns(what: &What) -> bool {
    match what {
        What::Federation { in_netns, .. } | What::Wan { in_netns, .. } => in_netns.is_some(),
        _ => false,
    }
}

impl What {
    /// The benchmark's name, as on the command line.
    fn name(&self) -> &'static str {
        match self {
            What::All => "all",
            What::Catalog { .. } => "catalog",
            What::Dns { .. } => "dns",
            What::Federation { .. } => "federation",
            What::Gateway { .. } => "gateway",
            What::Mesh { .. } => "mesh",
            What::Failover { .. } => "failover",
            What::Membership { .. } => "membership",
            What::Backup { .. } => "backup",
            What::Tokens { .. } => "tokens",
            What::Wan { .. } => "wan",
            What::Scale { .. } => "scale",
        }
    }
}

async fn run(cli: Cli, bin: &std::path::Path) -> Result<()> {
    let bin = bin.to_owned();
    match cli.what {
        What::All => all::run(&bin, cli.quick, cli.profile, &cli.out)?,
        What::Mesh {
            seconds,
            latency_seconds,
            reps,
            file_mib,
            close_connections,
            keepalive_connections,
            bulk_connections,
            tests,
        } => {
            let opt = mesh::Options {
                tests,
                seconds: seconds.unwrap_or(if cli.quick { 2 } else { 8 }),
                latency_seconds: latency_seconds.unwrap_or(if cli.quick { 2 } else { 5 }),
                reps: reps.unwrap_or(if cli.quick { 1 } else { 3 }),
                file_mib,
                close_connections,
                keepalive_connections,
                bulk_connections,
            };
            mesh::run(&bin, cli.quick, &cli.out, opt).await?;
        }
        What::Catalog {
            clients,
            count,
            reps,
            node,
            secure,
            preload,
            snapshot_every,
            node_threads,
            checks,
        } => {
            let load = catalog::Load {
                clients,
                count: count.unwrap_or(if cli.quick { 2_000 } else { 20_000 }),
                node,
                secure,
                preload,
                snapshot_every,
                node_threads,
                checks,
            };
            let reps = reps.unwrap_or(if cli.quick { 1 } else { 3 });
            catalog::run(&bin, &cli.out, &load, reps).await?;
        }
        What::Dns {
            services,
            instances,
            seconds,
            reps,
            outstanding,
            servers,
            threads,
            unpinned,
        } => {
            let opt = dns::Options {
                services,
                instances,
                seconds: seconds.unwrap_or(if cli.quick { 5 } else { 15 }),
                reps: reps.unwrap_or(if cli.quick { 2 } else { 4 }),
                outstanding,
                servers,
                threads,
                unpinned,
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
            transport,
        } => {
            let opt = federation::Options {
                services: services.unwrap_or(if cli.quick { 1_000 } else { 10_000 }),
                instances,
                registrations: registrations.unwrap_or(if cli.quick { 100 } else { 1_000 }),
                changes,
                clients,
                wan_delay_ms,
                in_netns,
                transport,
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
        What::Backup { sizes } => {
            let sizes = if !sizes.is_empty() {
                sizes
            } else if cli.quick {
                vec![2_000]
            } else {
                vec![10_000, 20_000]
            };
            backup::run(&bin, &cli.out, &sizes).await?;
        }
        What::Tokens { rounds, background } => {
            let rounds = rounds.unwrap_or(if cli.quick { 10 } else { 50 });
            let background = background.unwrap_or(if cli.quick { 100 } else { 1_000 });
            tokens::run(&bin, &cli.out, rounds.max(1), background).await?;
        }
        What::Membership { preload, reps } => {
            let preload = preload.unwrap_or(if cli.quick { 2_000 } else { 10_000 });
            let reps = reps.unwrap_or(if cli.quick { 1 } else { 3 });
            membership::run(&bin, &cli.out, preload, reps.max(1)).await?;
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
        What::Scale {
            dcs,
            instances,
            per_service,
            nodes,
            churn_rate,
            churn_seconds,
            probe_every,
            wan_delay_ms,
            partition_seconds,
            window,
            dns_seconds,
            dns_reps,
        } => {
            let q = cli.quick;
            let opt = scale::Options {
                dcs,
                instances: instances.unwrap_or(if q { 2_000 } else { 50_000 }),
                per_service,
                nodes: nodes.unwrap_or(if q { 10 } else { 100 }),
                churn_rate,
                churn_seconds: churn_seconds.unwrap_or(if q { 5 } else { 30 }),
                probe_every,
                wan_delay_ms,
                partition_seconds: partition_seconds.unwrap_or(if q { 2 } else { 5 }),
                window,
                dns_seconds: dns_seconds.unwrap_or(if q { 3 } else { 10 }),
                dns_reps: dns_reps.unwrap_or(if q { 1 } else { 2 }),
            };
            scale::run(&bin, cli.quick, &cli.out, opt).await?;
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
