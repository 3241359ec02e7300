//! `dns`: Meridian's DNS server beside Knot DNS, both loaded by dnsperf on loopback with the same
//! names and the same query mix. Meridian answers from a one-node agent whose services are registered
//! through the HTTP API; Knot answers the same records from a generated static `consul.` zone. Each
//! server is pinned to core 0 (with one worker thread where it can be configured), dnsperf to
//! core 1; the order of the servers alternates across repetitions. The report gives queries per
//! second, average latency, CPU seconds and peak RSS of each server, the ratio Meridian/Knot, and
//! each server's latency at 0.7× Knot's rate (the target).

use crate::tools::pinned;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::tools::{self, find_tool};
use anyhow::{Context, Result, bail};
use serde::Serialize;

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
}

/// One dnsperf run against one server.
#[derive(Serialize, Clone)]
struct Run {
    server: &'static str,
    rep: usize,
    /// The dnsperf `-Q` rate limit, if any.
    rate_limit: Option<f64>,
    sent: u64,
    completed: u64,
    lost: u64,
    response_codes: String,
    qps: f64,
    avg_latency_ms: f64,
    min_latency_ms: f64,
    max_latency_ms: f64,
    /// dnsperf's average response size in bytes (the same answers should weigh the same).
    avg_response_bytes: f64,
    /// User + system CPU seconds the server spent during the run.
    server_cpu_seconds: f64,
    /// Server CPU microseconds per completed query.
    server_cpu_us_per_query: f64,
    /// dnsperf's own CPU seconds (sampled every 50 ms, so a little low).
    dnsperf_cpu_seconds: f64,
    /// CPU seconds the whole machine spent beyond the server and dnsperf: other work competing
    /// with the run (another build, say) shows here.
    other_cpu_seconds: f64,
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

/// A server process, killed when dropped.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its CPU seconds so far; an error once it is gone.
    fn cpu_seconds(&self) -> Result<f64> {
        tools::cpu_seconds(self.pid()).with_context(|| format!("{} is gone", self.name))
    }

    fn check_running(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; log:\n{}",
                self.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_knot(knotd: &Path, dir: &Path, zone_text: &str, core: Option<usize>) -> Result<Server> {
    let kdir = dir.join("knot");
    std::fs::create_dir_all(&kdir)?;
    let port = crate::tools::free_port()?;
    std::fs::write(kdir.join("consul.zone"), zone_text)?;
    let conf = kdir.join("knot.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n    background-workers: 1\n    \
             udp-workers: 1\n    tcp-workers: 1\n\
             database:\n    storage: {d}\n\
             log:\n  - target: stderr\n    any: warning\n\
             zone:\n  - domain: consul.\n    file: {d}/consul.zone\n    journal-content: none\n    \
             zonefile-sync: -1\n",
            d = kdir.display()
        ),
    )?;
    let log = std::fs::File::create(kdir.join("knot.log"))?;
    let child = tools::spawn_logged(pinned(core, knotd).arg("-c").arg(&conf), log, "knotd")?;
    Ok(Server {
        name: "knot",
        child,
        port,
    })
}

/// A one-node datacenter like `meridian agent --dev` (dc1, node `dev`), from a config file so that
/// `[dns] threads = 1` is explicit.
fn start_meridian(bin: &Path, dir: &Path, core: Option<usize>) -> Result<(Server, u16)> {
    let ports = tools::Ports::free()?;
    let (http, dns) = (ports.http, ports.dns);
    // dnsperf sends 100,000+ queries a second from the one address 127.0.0.1: the per-client
    // response-rate limit (on by default) would measure itself, not the server. `extra` lands
    // in the `[dns]` section.
    let conf = tools::one_node_config(
        dir,
        "dev",
        &dir.join("meridian"),
        &ports,
        "response_rate_limit = 0\n\n",
    )?;
    let log = std::fs::File::create(dir.join("meridian.log"))?;
    let child = tools::spawn_logged(
        pinned(core, bin)
            .arg("agent")
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "warn"),
        log,
        &bin.display().to_string(),
    )?;
    Ok((
        Server {
            name: "meridian",
            child,
            port: dns,
        },
        http,
    ))
}

/// Registers every instance through the agent's HTTP API, 32 requests at a time.
async fn register(http_port: u16, insts: Vec<Instance>) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    crate::tools::wait_leader(&client, &[http_port]).await?;
    let url = Arc::new(format!(
        "http://127.0.0.1:{http_port}/v1/agent/service/register"
    ));
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
struct Rr {
    section: &'static str,
    name: String,
    rtype: u16,
    data: String,
}

/// A parsed DNS answer.
struct Answer {
    rcode: u8,
    truncated: bool,
    records: Vec<Rr>,
}

fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // no RD, one question
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).context("label too long")?;
        m.push(len);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    Ok(m)
}

fn u16_at(m: &[u8], pos: usize) -> Result<u16> {
    let b = m.get(pos..pos + 2).context("short DNS message")?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a possibly compressed name at `pos`; returns it and the position after it.
fn read_name(m: &[u8], mut pos: usize) -> Result<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *m.get(pos).context("short name")?;
        if len & 0xc0 == 0xc0 {
            end.get_or_insert(pos + 2);
            pos = usize::from(u16_at(m, pos)? & 0x3fff);
            continue;
        }
        if len == 0 {
            if name.is_empty() {
                name.push('.');
            }
            return Ok((name.to_ascii_lowercase(), end.unwrap_or(pos + 1)));
        }
        let label = m
            .get(pos + 1..pos + 1 + usize::from(len))
            .context("short label")?;
        name.push_str(&String::from_utf8_lossy(label));
        name.push('.');
        pos += 1 + usize::from(len);
    }
    bail!("name too long or a compression loop")
}

fn parse_answer(m: &[u8]) -> Result<Answer> {
    let flags = u16_at(m, 2)?;
    let counts = [u16_at(m, 4)?, u16_at(m, 6)?, u16_at(m, 8)?, u16_at(m, 10)?];
    let mut pos = 12;
    for _ in 0..counts[0] {
        pos = read_name(m, pos)?.1 + 4;
    }
    let mut records = Vec::new();
    for (section, n) in [
        ("answer", counts[1]),
        ("authority", counts[2]),
        ("additional", counts[3]),
    ] {
        for _ in 0..n {
            let (name, p) = read_name(m, pos)?;
            let rtype = u16_at(m, p)?;
            let rdlen = usize::from(u16_at(m, p + 8)?);
            let rd = p + 10;
            let rdata = m.get(rd..rd + rdlen).context("short rdata")?;
            let data = match rtype {
                1 if rdlen == 4 => {
                    Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string()
                }
                33 => format!(
                    "{} {} {} {}",
                    u16_at(m, rd)?,
                    u16_at(m, rd + 2)?,
                    u16_at(m, rd + 4)?,
                    read_name(m, rd + 6)?.0
                ),
                6 => {
                    let (mname, p2) = read_name(m, rd)?;
                    let (rname, p3) = read_name(m, p2)?;
                    let nums: Vec<String> = (0..5)
                        .map(|k| -> Result<String> {
                            let b = m.get(p3 + 4 * k..p3 + 4 * k + 4).context("short SOA")?;
                            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]).to_string())
                        })
                        .collect::<Result<_>>()?;
                    format!("{mname} {rname} {}", nums.join(" "))
                }
                2 => read_name(m, rd)?.0,
                _ => format!("{rdata:02x?}"),
            };
            pos = rd + rdlen;
            if rtype != 41 {
                records.push(Rr {
                    section,
                    name,
                    rtype,
                    data,
                });
            }
        }
    }
    records.sort();
    Ok(Answer {
        rcode: (flags & 0xf) as u8,
        truncated: flags & 0x0200 != 0,
        records,
    })
}

/// One UDP query with a 1 s timeout and up to three tries.
fn ask(server: SocketAddr, name: &str, qtype: u16) -> Result<Answer> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 65_535];
    for id in 1..=3u16 {
        sock.send_to(&encode_query(id, name, qtype)?, server)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && n >= 12
            && u16_at(&buf, 0)? == id
        {
            return parse_answer(&buf[..n]);
        }
    }
    bail!("no answer from {server} to {name} after 3 tries")
}

/// Waits until `server` answers the last service's SRV query with all its instances.
fn wait_dns(server: &mut Server, log: &Path, services: usize, per: usize) -> Result<()> {
    let name = format!("svc-{}.service.consul", services - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.check_running(log)?;
        let last = ask(server.addr(), &name, 33);
        if let Ok(a) = &last
            && a.records
                .iter()
                .filter(|r| r.section == "answer" && r.rtype == 33)
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
            (format!("svc-{s}.service.consul"), 33),
            (format!("_svc-{s}._tcp.service.consul"), 33),
            (format!("svc-{s}.service.consul"), 1),
        ] {
            let m = ask(meridian, &name, qtype)?;
            let k = ask(knot, &name, qtype)?;
            let what = if qtype == 33 { "SRV" } else { "A" };
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

/// The median, the mean of the middle two for an even count (reps alternate, so counts are even).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
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
struct Load<'a> {
    dnsperf: &'a Path,
    queries: &'a Path,
    dir: &'a Path,
    core: Option<usize>,
    outstanding: usize,
    ticks: f64,
    /// Reruns of a run disturbed by other work (none with `--quick`, to stay short).
    retries: usize,
}

impl Load<'_> {
    /// [`Load::run`], repeated (at most `retries` times) while other work on the machine took
    /// more than a tenth of a core during the run; the last attempt is kept, its interference
    /// recorded.
    fn run_clean(
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
        let out = std::fs::File::create(&out_path)?;
        let mut cmd = pinned(self.core, self.dnsperf);
        cmd.args(["-s", "127.0.0.1", "-p", &server.port.to_string()])
            .arg("-d")
            .arg(self.queries)
            .args(["-l", &seconds.to_string(), "-c", "1", "-T", "1", "-t", "2"])
            .args(["-q", &self.outstanding.to_string()]);
        if let Some(r) = rate {
            cmd.args(["-Q", &format!("{}", r.round() as u64)]);
        }
        let cpu0 = server.cpu_seconds()?;
        let busy0 = machine_busy_seconds(self.ticks)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting dnsperf")?;
        let deadline = Instant::now() + Duration::from_secs(seconds + 20);
        let mut client_cpu = 0.0;
        let status = loop {
            if let Some(c) = tools::cpu_seconds(child.id()) {
                client_cpu = c;
            }
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
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
    let (knotd, dnsperf) = ensure_peers()?;
    let dir = tempfile::tempdir()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_core, client_core) = if cores >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let pinning = match server_core {
        Some(_) => "servers on core 0 (taskset -c 0; knotd udp/tcp/background-workers 1; \
                    meridian whole agent with `[dns] threads = 1`), dnsperf on core 1 (-T 1 -c 1)"
            .to_owned(),
        None => "none (one core)".to_owned(),
    };
    let insts = instances(opt.services, opt.instances);
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, query_file(opt.services)?)?;
    let want_knot = opt.servers != Servers::Meridian;
    let want_meridian = opt.servers != Servers::Knot;

    let mut knot = None;
    if want_knot {
        let mut k = start_knot(&knotd, dir.path(), &zone(&insts)?, server_core)?;
        wait_dns(
            &mut k,
            &dir.path().join("knot/knot.log"),
            opt.services,
            opt.instances,
        )?;
        knot = Some(k);
    }
    let mut meridian = None;
    if want_meridian {
        let (mut m, http) = start_meridian(bin, dir.path(), server_core)?;
        let started = Instant::now();
        register(http, insts).await?;
        eprintln!(
            "dns: registered {} instances in {:.1} s",
            opt.services * opt.instances,
            started.elapsed().as_secs_f64()
        );
        wait_dns(
            &mut m,
            &dir.path().join("meridian.log"),
            opt.services,
            opt.instances,
        )?;
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
        ticks: tools::clock_ticks(),
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
            runs.iter()
                .filter(|r| r.server == server && r.rate_limit.is_none())
                .map(f)
                .collect(),
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
            peak_rss_kib: tools::status_kib(s.pid(), "VmHWM:")
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
