//! `dns`: Meridian's DNS server beside Knot DNS, both loaded by dnsperf on loopback with the same
//! names and the same query mix. Meridian answers from a one-node agent whose services are registered
//! through the HTTP API; Knot answers the same records from a generated static `consul.` zone. Each
//! server is pinned to core 0 (with one worker thread where it can be configured), dnsperf to
//! core 1; the order of the servers alternates across repetitions. The report gives queries per
//! second, average latency, CPU seconds and peak RSS of each server, the ratio Meridian/Knot, and
//! each server's latency at 0.7× Knot's rate (the target).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_net::proto::op::{Message, MessageType, Query};
use hickory_net::proto::rr::{Name, RecordType};
use meridian_testkit::meter::{clock_ticks, cpu_seconds, status_kib};
use meridian_testkit::stats::median;
use meridian_testkit::{Ports, Proc};
use serde::Serialize;

use crate::procs;
use crate::tools::{self, find_tool};

/// Which servers to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Servers {
    /// Meridian and Knot, alternating.
    Both,
    /// Knot alone (to check the harness).
    Knot,
    /// Meridian alone.
    Meridian,
}

/// What `meridian-bench dns` was asked for.
pub struct Options {
    /// Services registered (and in the zone).
    pub services: usize,
    /// Instances per service, each with its own address.
    pub instances: usize,
    /// Seconds per dnsperf run.
    pub seconds: u64,
    /// Repetitions per server (the order alternates).
    pub reps: usize,
    /// dnsperf's bound on outstanding queries.
    pub outstanding: usize,
    /// Which servers to measure.
    pub servers: Servers,
    /// Server threads (Meridian's `[dns] threads`, Knot's `udp-workers`), on the server's core.
    pub threads: usize,
    /// Pin neither the servers nor dnsperf.
    pub unpinned: bool,
}

/// One dnsperf run against one server.
#[derive(Serialize, Clone)]
pub(crate) struct Run {
    pub(crate) server: &'static str,
    pub(crate) rep: usize,
    /// The dnsperf `-Q` rate limit, if any.
    pub(crate) rate_limit: Option<f64>,
    pub(crate) sent: u64,
    pub(crate) completed: u64,
    pub(crate) lost: u64,
    pub(crate) response_codes: String,
    pub(crate) qps: f64,
    pub(crate) avg_latency_ms: f64,
    pub(crate) min_latency_ms: f64,
    pub(crate) max_latency_ms: f64,
    /// dnsperf's average response size in bytes (the same answers should weigh the same).
    pub(crate) avg_response_bytes: f64,
    /// User + system CPU seconds the server spent during the run.
    pub(crate) server_cpu_seconds: f64,
    /// Server CPU microseconds per completed query.
    pub(crate) server_cpu_us_per_query: f64,
    /// dnsperf's own CPU seconds (sampled every 50 ms, so a little low).
    pub(crate) dnsperf_cpu_seconds: f64,
    /// CPU seconds the whole machine spent beyond the server and dnsperf: other work competing
    /// with the run (another build, say) shows here.
    pub(crate) other_cpu_seconds: f64,
}

/// The summary of one server.
#[derive(Serialize)]
struct Summary {
    server: &'static str,
    median_qps: f64,
    median_avg_latency_ms: f64,
    /// Server CPU seconds over all saturating runs.
    cpu_seconds: f64,
    median_cpu_us_per_query: f64,
    /// dnsperf's average response size.
    avg_response_bytes: f64,
    /// VmHWM at the end of the benchmark.
    peak_rss_kib: u64,
    /// Average latency when dnsperf sends at 0.7× Knot's median rate.
    latency_at_target_rate_ms: Option<f64>,
    /// The queries/s reached when sending at that rate.
    qps_at_target_rate: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    date: String,
    machine: String,
    command: String,
    services: usize,
    instances_per_service: usize,
    query_mix: &'static str,
    pinning: String,
    seconds_per_run: u64,
    outstanding: usize,
    runs: Vec<Run>,
    summaries: Vec<Summary>,
    /// Meridian's median qps over Knot's.
    ratio_meridian_over_knot: Option<f64>,
    /// 0.7 × Knot's median qps.
    target_rate: Option<f64>,
    /// Where the two servers' answers to the sampled queries differ.
    answer_differences: Vec<String>,
}

/// The query mix, one line per service and type, as described in the report.
const QUERY_MIX: &str = "per service: `svc-N.service.consul SRV`, `_svc-N._tcp.service.consul SRV`, \
     `svc-N.service.consul A` (UDP, no EDNS)";

/// Finds knotd and dnsperf, installing the Debian packages `knot` and `dnsperf` with apt-get when
/// they are missing and we are root; otherwise fails with a one-line message.
fn ensure_peers() -> Result<(PathBuf, PathBuf)> {
    let wanted = [("knotd", "knot"), ("dnsperf", "dnsperf")];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    crate::tools::apt_install("dns", &missing)?;
    let knotd = find_tool("knotd").context("knotd not found after installing knot")?;
    let dnsperf = find_tool("dnsperf").context("dnsperf not found after installing it")?;
    Ok((knotd, dnsperf))
}

/// One registered instance.
struct Instance {
    service: usize,
    index: usize,
    addr: Ipv4Addr,
    port: u16,
}

impl Instance {
    /// The SRV target Meridian gives an instance with its own address: `<hexip>.addr.dc1.consul.`.
    fn target(&self) -> String {
        format!("{:08x}.addr.dc1.consul.", u32::from(self.addr))
    }
}

fn instances(services: usize, per: usize) -> Vec<Instance> {
    let mut v = Vec::with_capacity(services * per);
    for s in 0..services {
        for i in 0..per {
            v.push(Instance {
                service: s,
                index: i,
                addr: Ipv4Addr::new(10, (i + 1) as u8, (s / 256) as u8, (s % 256) as u8),
                port: 20_000 + i as u16,
            });
        }
    }
    v
}

/// The static zone Knot serves: what Meridian answers for the same registrations.
fn zone(insts: &[Instance]) -> Result<String> {
    let mut z = String::from(
        "$ORIGIN consul.\n$TTL 0\n\
         @ SOA dev.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 0\n\
         @ NS dev.node.dc1.consul.\ndev.node.dc1 A 127.0.0.1\n",
    );
    for i in insts {
        let s = i.service;
        let (port, target, addr) = (i.port, i.target(), i.addr);
        writeln!(z, "svc-{s}.service SRV 1 1 {port} {target}")?;
        writeln!(z, "_svc-{s}._tcp.service SRV 1 1 {port} {target}")?;
        writeln!(z, "svc-{s}.service A {addr}")?;
        writeln!(z, "{target} A {addr}")?;
    }
    Ok(z)
}

fn query_file(services: usize) -> Result<String> {
    let mut q = String::new();
    for s in 0..services {
        writeln!(q, "svc-{s}.service.consul SRV")?;
        writeln!(q, "_svc-{s}._tcp.service.consul SRV")?;
        writeln!(q, "svc-{s}.service.consul A")?;
    }
    Ok(q)
}

/// A DNS server under test: its process (killed when dropped) and its port on 127.0.0.1.
pub(crate) struct Server {
    pub(crate) name: &'static str,
    pub(crate) proc: Proc,
    pub(crate) port: u16,
}

impl Server {
    fn pid(&self) -> Result<u32> {
        procs::pid(&self.proc)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its CPU seconds so far; an error once it is gone.
    fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid()?).with_context(|| format!("{} is gone", self.name))
    }
}

fn start_knot(
    knotd: &Path,
    dir: &Path,
    zone_text: &str,
    core: Option<usize>,
    threads: usize,
) -> Result<Server> {
    let kdir = dir.join("knot");
    std::fs::create_dir_all(&kdir)?;
    let port = meridian_testkit::free_port();
    std::fs::write(kdir.join("consul.zone"), zone_text)?;
    let conf = kdir.join("knot.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n    background-workers: 1\n    \
             udp-workers: {threads}\n    tcp-workers: 1\n\
             database:\n    storage: {d}\n\
             log:\n  - target: stderr\n    any: warning\n\
             zone:\n  - domain: consul.\n    file: {d}/consul.zone\n    journal-content: none\n    \
             zonefile-sync: -1\n",
            d = kdir.display()
        ),
    )?;
    let conf = conf.to_str().context("a UTF-8 path")?.to_owned();
    let proc = procs::start(
        "knot",
        core,
        knotd,
        vec!["-c".to_owned(), conf],
        &[],
        &kdir.join("knot.log"),
    )?;
    Ok(Server {
        name: "knot",
        proc,
        port,
    })
}

/// A one-node datacenter like `meridian agent --dev` (dc1, node `dev`), from a config file so that
/// `[dns] threads` is explicit. Returns the server and its agent's HTTP API.
fn start_meridian(
    bin: &Path,
    dir: &Path,
    core: Option<usize>,
    threads: usize,
) -> Result<(Server, String)> {
    let ports = Ports::free();
    let mut config = tools::one_node_config("dev", &dir.join("meridian"), ports);
    // dnsperf sends 100,000+ queries a second from the one address 127.0.0.1: the per-client
    // response-rate limit (on by default) would measure itself, not the server.
    config.set("dns", "response_rate_limit", 0);
    config.set("dns", "threads", i64::try_from(threads)?);
    let agent =
        procs::configured_agent("meridian", bin, &config, dir, &[("RUST_LOG", "warn")], core)?;
    let base = agent.base();
    Ok((
        Server {
            name: "meridian",
            proc: agent.proc,
            port: ports.dns,
        },
        base,
    ))
}

/// Registers every instance through the agent's HTTP API at `base`, 32 requests at a time.
async fn register(base: &str, insts: Vec<Instance>) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    meridian_testkit::wait::leader_known(&client, &[base.to_owned()], Duration::from_secs(60))
        .await?;
    let url = Arc::new(format!("{base}/v1/agent/service/register"));
    let insts = Arc::new(insts);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url, insts, next) = (client.clone(), url.clone(), insts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(i) = insts.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let body = serde_json::json!({
                    "ID": format!("svc-{}-{}", i.service, i.index),
                    "Name": format!("svc-{}", i.service),
                    "Port": i.port,
                    "Address": i.addr.to_string(),
                });
                let r = client.put(url.as_str()).json(&body).send().await?;
                let status = r.status();
                if !status.is_success() {
                    bail!(
                        "registering: {status}: {}",
                        r.text().await.unwrap_or_default()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One resource record of an answer, in a comparable text form.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rr {
    pub(crate) section: &'static str,
    name: String,
    pub(crate) rtype: u16,
    pub(crate) data: String,
}

/// A DNS answer, its records in a comparable form.
pub(crate) struct Answer {
    pub(crate) rcode: u16,
    truncated: bool,
    pub(crate) records: Vec<Rr>,
}

/// The records of `m` (the EDNS OPT record aside, as hickory keeps it apart), names lowercased,
/// sorted.
fn records(m: &Message) -> Vec<Rr> {
    let mut records: Vec<Rr> = [
        ("answer", &m.answers),
        ("authority", &m.authorities),
        ("additional", &m.additionals),
    ]
    .into_iter()
    .flat_map(|(section, rrs)| {
        rrs.iter().map(move |r| Rr {
            section,
            name: r.name.to_ascii().to_ascii_lowercase(),
            rtype: r.record_type().into(),
            data: r.data.to_string().to_ascii_lowercase(),
        })
    })
    .collect();
    records.sort();
    records
}

/// One UDP query (no recursion desired, no EDNS) with a 1 s timeout and up to three tries.
pub(crate) fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Answer> {
    let qname = Name::from_ascii(name).with_context(|| format!("bad name {name:?}"))?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 65_535];
    for id in 1..=3u16 {
        let mut q = Message::query();
        q.add_query(Query::query(qname.clone(), qtype));
        q.metadata.id = id;
        q.metadata.recursion_desired = false;
        sock.send_to(&q.to_vec().context("encoding the query")?, server)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(m) = Message::from_vec(&buf[..n])
            && m.metadata.id == id
            && m.metadata.message_type == MessageType::Response
        {
            return Ok(Answer {
                rcode: m.metadata.response_code.into(),
                truncated: m.metadata.truncation,
                records: records(&m),
            });
        }
    }
    bail!("no answer from {server} to {name} after 3 tries")
}

/// Waits until `server` answers the last service's SRV query with all its instances.
fn wait_dns(server: &mut Server, services: usize, per: usize) -> Result<()> {
    let name = format!("svc-{}.service.consul", services - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        procs::check_running(&mut server.proc)?;
        let last = ask(server.addr(), &name, RecordType::SRV);
        let srv = u16::from(RecordType::SRV);
        if let Ok(a) = &last
            && a.records
                .iter()
                .filter(|r| r.section == "answer" && r.rtype == srv)
                .count()
                == per
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            let got = match last {
                Ok(a) => format!("rcode {} with {} records", a.rcode, a.records.len()),
                Err(e) => e.to_string(),
            };
            bail!(
                "{} does not answer {name} SRV with {per} records within 60 s (last: {got})",
                server.name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compares both servers' answers to the three query types of a few services.
fn compare(meridian: SocketAddr, knot: SocketAddr, services: usize) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    for s in [0, services / 2, services - 1] {
        for (name, qtype) in [
            (format!("svc-{s}.service.consul"), RecordType::SRV),
            (format!("_svc-{s}._tcp.service.consul"), RecordType::SRV),
            (format!("svc-{s}.service.consul"), RecordType::A),
        ] {
            let m = ask(meridian, &name, qtype)?;
            let k = ask(knot, &name, qtype)?;
            let what = qtype;
            if m.rcode != k.rcode || m.truncated != k.truncated {
                diffs.push(format!(
                    "{name} {what}: meridian rcode {} tc {}, knot rcode {} tc {}",
                    m.rcode, m.truncated, k.rcode, k.truncated
                ));
            }
            for r in &m.records {
                if !k.records.contains(r) {
                    diffs.push(format!("{name} {what}: only meridian: {r:?}"));
                }
            }
            for r in &k.records {
                if !m.records.contains(r) {
                    diffs.push(format!("{name} {what}: only knot: {r:?}"));
                }
            }
        }
    }
    Ok(diffs)
}

/// Busy CPU seconds of the whole machine (all cores), from the first line of /proc/stat.
fn machine_busy_seconds(ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: f64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Ok(busy / ticks)
}

/// What one dnsperf run printed.
struct Perf {
    sent: u64,
    completed: u64,
    lost: u64,
    response_codes: String,
    qps: f64,
    avg_ms: f64,
    min_ms: f64,
    max_ms: f64,
    response_bytes: f64,
}

fn parse_dnsperf(out: &str) -> Result<Perf> {
    let field = |key: &str| -> Result<&str> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .with_context(|| format!("dnsperf printed no `{key}`:\n{out}"))
    };
    let first = |s: &str| -> Result<f64> {
        Ok(s.split_whitespace()
            .next()
            .context("empty dnsperf field")?
            .parse()?)
    };
    let lat = field("Average Latency (s):")?;
    // "0.000049 (min 0.000014, max 0.008170)"
    let nums: Vec<f64> = lat
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    Ok(Perf {
        sent: first(field("Queries sent:")?)? as u64,
        completed: first(field("Queries completed:")?)? as u64,
        lost: first(field("Queries lost:")?)? as u64,
        response_codes: field("Response codes:")?.to_owned(),
        qps: first(field("Queries per second:")?)?,
        avg_ms: nums.first().copied().unwrap_or(0.0) * 1000.0,
        min_ms: nums.get(1).copied().unwrap_or(0.0) * 1000.0,
        max_ms: nums.get(2).copied().unwrap_or(0.0) * 1000.0,
        response_bytes: field("Average packet size:")?
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0),
    })
}

/// The settings every dnsperf run shares.
pub(crate) struct Load<'a> {
    pub(crate) dnsperf: &'a Path,
    pub(crate) queries: &'a Path,
    pub(crate) dir: &'a Path,
    pub(crate) core: Option<usize>,
    pub(crate) outstanding: usize,
    /// dnsperf's sockets (`-c`): more than one spreads the queries over the source ports a
    /// server with a socket per thread hashes to its threads.
    pub(crate) clients: usize,
    pub(crate) ticks: f64,
    /// Reruns of a run disturbed by other work (none with `--quick`, to stay short).
    pub(crate) retries: usize,
}

impl Load<'_> {
    /// [`Load::run`], repeated (at most `retries` times) while other work on the machine took
    /// more than a tenth of a core during the run; the last attempt is kept, its interference
    /// recorded.
    pub(crate) fn run_clean(
        &self,
        server: &mut Server,
        seconds: u64,
        rate: Option<f64>,
        rep: usize,
    ) -> Result<Run> {
        let mut attempt = 1;
        loop {
            let r = self.run(server, seconds, rate, rep)?;
            if r.other_cpu_seconds <= 0.1 * seconds as f64 || attempt > self.retries {
                return Ok(r);
            }
            attempt += 1;
            eprintln!("dns: running it again (attempt {attempt})");
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// One dnsperf run against `server`, bounded by `-l seconds` (and killed 20 s after that).
    fn run(&self, server: &mut Server, seconds: u64, rate: Option<f64>, rep: usize) -> Result<Run> {
        let out_path = self.dir.join("dnsperf.out");
        // Each run's output alone (the kit's process appends to its log).
        std::fs::File::create(&out_path)?;
        let mut args: Vec<String> = ["-s", "127.0.0.1", "-p", &server.port.to_string(), "-d"]
            .map(str::to_owned)
            .into();
        args.push(self.queries.to_str().context("a UTF-8 path")?.to_owned());
        args.extend(
            [
                "-l",
                &seconds.to_string(),
                "-c",
                &self.clients.to_string(),
                "-T",
                "1",
                "-t",
                "2",
                "-q",
                &self.outstanding.to_string(),
            ]
            .map(str::to_owned),
        );
        if let Some(r) = rate {
            args.extend(["-Q".to_owned(), format!("{}", r.round() as u64)]);
        }
        let cpu0 = server.cpu_seconds()?;
        let busy0 = machine_busy_seconds(self.ticks)?;
        let mut child = procs::start("dnsperf", self.core, self.dnsperf, args, &[], &out_path)?;
        // dnsperf's output is the result, printed by the caller when it fails.
        child.print_log_on_failure = false;
        let pid = procs::pid(&child)?;
        let deadline = Instant::now() + Duration::from_secs(seconds + 20);
        let mut client_cpu = 0.0;
        let status = loop {
            if let Some(c) = cpu_seconds(pid) {
                client_cpu = c;
            }
            if let Some(s) = child.exit_status() {
                break s;
            }
            if Instant::now() > deadline {
                bail!("dnsperf against {} did not stop in time", server.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cpu = server.cpu_seconds()? - cpu0;
        let busy = machine_busy_seconds(self.ticks)? - busy0;
        let text = std::fs::read_to_string(&out_path)?;
        if !status.success() {
            bail!("dnsperf against {} failed ({status}):\n{text}", server.name);
        }
        let p = parse_dnsperf(&text)?;
        let other = (busy - cpu - client_cpu).max(0.0);
        if other > 0.1 * seconds as f64 {
            eprintln!(
                "dns: warning: other work took {other:.1} CPU s during this {seconds} s run \
                 against {}: its figures are not clean",
                server.name
            );
        }
        Ok(Run {
            server: server.name,
            rep,
            rate_limit: rate,
            sent: p.sent,
            completed: p.completed,
            lost: p.lost,
            response_codes: p.response_codes,
            qps: p.qps,
            avg_latency_ms: p.avg_ms,
            min_latency_ms: p.min_ms,
            max_latency_ms: p.max_ms,
            avg_response_bytes: p.response_bytes,
            server_cpu_seconds: cpu,
            server_cpu_us_per_query: if p.completed > 0 {
                cpu * 1e6 / p.completed as f64
            } else {
                0.0
            },
            dnsperf_cpu_seconds: client_cpu,
            other_cpu_seconds: other,
        })
    }
}

/// Runs the benchmark and writes `dns.json` and `dns.md` into `out`.
pub async fn run(bin: &Path, quick: bool, out: &Path, opt: Options) -> Result<()> {
    if opt.services == 0 || opt.services > 65_536 || opt.instances == 0 || opt.instances > 250 {
        bail!("--services must be 1..=65536 and --instances 1..=250");
    }
    if opt.threads == 0 || opt.threads > 16 {
        bail!("--threads must be 1..=16");
    }
    let clients = if opt.threads > 1 { 8 } else { 1 };
    let (knotd, dnsperf) = ensure_peers()?;
    let dir = tempfile::tempdir()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_core, client_core) = if cores >= 2 && !opt.unpinned {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let pinning = match server_core {
        Some(_) => format!(
            "servers on core 0 (taskset -c 0; knotd udp-workers {t}, tcp/background-workers 1; \
             meridian whole agent with `[dns] threads = {t}`), dnsperf on core 1 (-T 1 -c {clients})",
            t = opt.threads
        ),
        None if opt.unpinned => format!(
            "none: servers (knotd udp-workers {t}; meridian `[dns] threads = {t}`) and dnsperf \
             (-T 1 -c {clients}) on any of {cores} cores",
            t = opt.threads
        ),
        None => "none (one core)".to_owned(),
    };
    let insts = instances(opt.services, opt.instances);
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, query_file(opt.services)?)?;
    let want_knot = opt.servers != Servers::Meridian;
    let want_meridian = opt.servers != Servers::Knot;

    let mut knot = None;
    if want_knot {
        let mut k = start_knot(&knotd, dir.path(), &zone(&insts)?, server_core, opt.threads)?;
        wait_dns(&mut k, opt.services, opt.instances)?;
        knot = Some(k);
    }
    let mut meridian = None;
    if want_meridian {
        let (mut m, http) = start_meridian(bin, dir.path(), server_core, opt.threads)?;
        let started = Instant::now();
        register(&http, insts).await?;
        eprintln!(
            "dns: registered {} instances in {:.1} s",
            opt.services * opt.instances,
            started.elapsed().as_secs_f64()
        );
        wait_dns(&mut m, opt.services, opt.instances)?;
        meridian = Some(m);
    }
    let answer_differences = match (&meridian, &knot) {
        (Some(m), Some(k)) => compare(m.addr(), k.addr(), opt.services)?,
        _ => Vec::new(),
    };
    for d in &answer_differences {
        eprintln!("dns: answers differ: {d}");
    }

    let load = Load {
        dnsperf: &dnsperf,
        queries: &queries,
        dir: dir.path(),
        core: client_core,
        outstanding: opt.outstanding,
        clients,
        ticks: clock_ticks(),
        retries: if quick { 0 } else { 2 },
    };
    // Warm-up (not recorded): caches, first allocations, the kernel's socket buffers.
    for s in [&mut knot, &mut meridian].into_iter().flatten() {
        load.run(s, 1, None, 0)?;
    }
    let mut runs: Vec<Run> = Vec::new();
    for rep in 1..=opt.reps {
        let order: [&mut Option<Server>; 2] = if rep % 2 == 1 {
            [&mut knot, &mut meridian]
        } else {
            [&mut meridian, &mut knot]
        };
        for s in order.into_iter().flatten() {
            let r = load.run_clean(s, opt.seconds, None, rep)?;
            eprintln!(
                "dns rep {rep} {}: {:.0} q/s, avg {:.3} ms, {} lost, CPU {:.2} s ({:.1} µs/query), \
                 dnsperf {:.2} s, other {:.2} s, {}",
                r.server,
                r.qps,
                r.avg_latency_ms,
                r.lost,
                r.server_cpu_seconds,
                r.server_cpu_us_per_query,
                r.dnsperf_cpu_seconds,
                r.other_cpu_seconds,
                r.response_codes
            );
            runs.push(r);
        }
    }
    let med = |server: &str, f: fn(&Run) -> f64| {
        median(
            &runs
                .iter()
                .filter(|r| r.server == server && r.rate_limit.is_none())
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let knot_qps = knot.as_ref().map(|_| med("knot", |r| r.qps));
    let meridian_qps = meridian.as_ref().map(|_| med("meridian", |r| r.qps));
    // The target rate: 0.7× Knot's; without Knot, 0.7× Meridian's own.
    let target_rate = knot_qps.or(meridian_qps).map(|q| q * 0.7);
    let mut at_rate = Vec::new();
    if let Some(rate) = target_rate {
        for s in [&mut knot, &mut meridian].into_iter().flatten() {
            let r = load.run_clean(s, opt.seconds, Some(rate), 0)?;
            eprintln!(
                "dns at {rate:.0} q/s {}: {:.0} q/s, avg {:.3} ms, max {:.3} ms, {} lost, \
                 other {:.2} s",
                r.server, r.qps, r.avg_latency_ms, r.max_latency_ms, r.lost, r.other_cpu_seconds
            );
            at_rate.push(r);
        }
    }
    let mut summaries = Vec::new();
    for s in [&knot, &meridian].into_iter().flatten() {
        let mine = |r: &&Run| r.server == s.name && r.rate_limit.is_none();
        let rated = at_rate.iter().find(|r| r.server == s.name);
        summaries.push(Summary {
            server: s.name,
            median_qps: med(s.name, |r| r.qps),
            median_avg_latency_ms: med(s.name, |r| r.avg_latency_ms),
            cpu_seconds: runs.iter().filter(mine).map(|r| r.server_cpu_seconds).sum(),
            median_cpu_us_per_query: med(s.name, |r| r.server_cpu_us_per_query),
            avg_response_bytes: med(s.name, |r| r.avg_response_bytes),
            peak_rss_kib: status_kib(s.pid()?, "VmHWM:")
                .with_context(|| format!("{} ended before its peak RSS was read", s.name))?,
            latency_at_target_rate_ms: rated.map(|r| r.avg_latency_ms),
            qps_at_target_rate: rated.map(|r| r.qps),
        });
    }
    runs.extend(at_rate);
    drop((knot, meridian));
    let ratio = match (meridian_qps, knot_qps) {
        (Some(m), Some(k)) if k > 0.0 => Some(m / k),
        _ => None,
    };
    let report = Report {
        benchmark: "dns",
        date: crate::today(),
        machine: crate::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        services: opt.services,
        instances_per_service: opt.instances,
        query_mix: QUERY_MIX,
        pinning,
        seconds_per_run: opt.seconds,
        outstanding: opt.outstanding,
        runs,
        summaries,
        ratio_meridian_over_knot: ratio,
        target_rate,
        answer_differences,
    };
    let md = markdown(&report, quick)?;
    tools::write_report(out, "dns", &report, &md)
}

fn markdown(r: &Report, quick: bool) -> Result<String> {
    let reps = r.runs.iter().map(|x| x.rep).max().unwrap_or(0);
    let mut md = format!(
        "dns{}: {} services × {} instances, {} s per run, {} outstanding, median of {reps}\n\n\
         | server | queries/s | avg latency | CPU µs/query | CPU s (all runs) | peak RSS | \
         avg response | avg latency at {:.0} q/s |\n|---|---|---|---|---|---|---|---|\n",
        if quick { " (quick)" } else { "" },
        r.services,
        r.instances_per_service,
        r.seconds_per_run,
        r.outstanding,
        r.target_rate.unwrap_or(0.0),
    );
    for s in &r.summaries {
        writeln!(
            md,
            "| {} | {:.0} | {:.3} ms | {:.1} | {:.1} | {:.1} MiB | {:.0} B | {} |",
            s.server,
            s.median_qps,
            s.median_avg_latency_ms,
            s.median_cpu_us_per_query,
            s.cpu_seconds,
            s.peak_rss_kib as f64 / 1024.0,
            s.avg_response_bytes,
            s.latency_at_target_rate_ms
                .zip(s.qps_at_target_rate)
                .map_or("-".to_owned(), |(l, q)| format!("{l:.3} ms ({q:.0} q/s)")),
        )?;
    }
    writeln!(md, "\nPinning: {}.", r.pinning)?;
    if let Some(ratio) = r.ratio_meridian_over_knot {
        writeln!(
            md,
            "\nMeridian/Knot queries/s: **{ratio:.2}** (target ≥ 0.70)"
        )?;
    }
    let other: f64 = r.runs.iter().map(|x| x.other_cpu_seconds).sum();
    let wall = r.runs.len() as f64 * r.seconds_per_run as f64;
    writeln!(
        md,
        "\nOther work on the machine during the runs: {other:.1} CPU s over {wall:.0} s \
         (should be near 0)."
    )?;
    if !r.answer_differences.is_empty() {
        writeln!(
            md,
            "\nAnswers differ on {} sampled records (see dns.json).",
            r.answer_differences.len()
        )?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_net::proto::op::OpCode;
    use hickory_net::proto::rr::rdata::{A, SRV};
    use hickory_net::proto::rr::{RData, Record};

    #[test]
    fn records_compare_by_section_name_type_and_lowercased_data() {
        let name = Name::from_ascii("svc-0.service.consul.").expect("name");
        let target = Name::from_ascii("0A01_0000.addr.DC1.consul.").expect("name");
        let mut m = Message::response(1, OpCode::Query);
        m.answers.push(Record::from_rdata(
            name,
            0,
            RData::SRV(SRV::new(1, 1, 20_000, target.clone())),
        ));
        m.additionals
            .push(Record::from_rdata(target, 0, RData::A(A::new(10, 1, 0, 0))));
        let m = Message::from_vec(&m.to_vec().expect("encodes")).expect("decodes");
        let rs = records(&m);
        assert_eq!(rs.len(), 2);
        assert_eq!(
            (rs[0].section, rs[0].rtype, rs[0].data.as_str()),
            ("additional", 1, "10.1.0.0")
        );
        assert_eq!(rs[0].name, "0a01_0000.addr.dc1.consul.");
        assert_eq!(
            (rs[1].section, rs[1].rtype, rs[1].data.as_str()),
            ("answer", 33, "1 1 20000 0a01_0000.addr.dc1.consul.")
        );
    }
}
