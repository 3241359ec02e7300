//! `wan`: time to first byte of a new client connection to a service in another datacenter, over
//! a WAN with an added one-way delay (50 ms by default), through four paths side by side:
//!
//! 1. **Meridian, QUIC tunnel** (`wan_transport = "quic"`, the default): the client connects to
//!    dc2's gateway with the SNI `web.service.dc1.consul`; dc2's gateway opens a new stream on
//!    its pooled, already warm QUIC connection to dc1's gateway, which relays to dc1's backend.
//! 2. **Meridian, TCP fallback** (`wan_transport = "tcp"`): the same, but every client
//!    connection is a new TCP connection and mutual-TLS handshake between the two gateways.
//! 3. **Two HAProxy, Consul's way**: an SNI-routed TCP relay (`mode tcp`, `req.ssl_sni`) in dc2
//!    opens a new TCP connection per client connection to an SNI-routed TCP relay in dc1, which
//!    relays to the backend; no TLS between the relays.
//! 4. **Direct**: the client connects to the backend itself across the WAN (a reference).
//!
//! The backend is one nginx with TLS 1.3 and a certificate for the name, and the client a new
//! `curl` process per connection, which checks that certificate end to end (so no path
//! terminates TLS) and reports when TCP connected, when TLS was done and when the first byte of
//! the response came. The delay is added the way `federation` adds it (this machine's kernel has
//! no netem): everything runs in a network namespace of the benchmark's own, and every packet to
//! or from a WAN port (TCP, and UDP for QUIC) crosses an iptables `NFQUEUE` rule on INPUT to the
//! delayer of [`crate::federation`]. The WAN ports are dc1's gateway ports, dc1's HAProxy's port,
//! the backend's second port (the direct path's) and the agents' federation ports; the client's
//! hop to dc2's gateway or HAProxy and the hop from dc1's gateway or HAProxy to the backend are
//! not delayed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meridian_testkit::certs::Pki;
use meridian_testkit::config::{Federation, Peer};
use meridian_testkit::meter::{Meter, ProcessUsage, mib};
use meridian_testkit::{Agent, Ports, Proc};
use serde::Serialize;
use serde_json::Value;

use crate::federation::{Delayer, Netns, probe_rtt, sh};
use crate::procs;
use crate::tools::fixed_ports;

/// What `meridian-bench wan` was asked for.
pub struct Options {
    /// New client connections timed per path.
    pub connections: usize,
    /// Unrecorded connections per path before the timed ones.
    pub warmup: usize,
    /// Added one-way WAN delay in milliseconds (0: none).
    pub wan_delay_ms: u64,
    /// Set when this process already runs inside the benchmark's namespace (its name).
    pub in_netns: Option<String>,
}

/// The netfilter queue the delayer reads (per namespace; `federation` uses 7).
const QUEUE: u16 = 8;
/// The port of the RTT probe listener inside the namespace (delayed like the WAN).
const PROBE_PORT: u16 = 8399;
/// The service name every path asks for.
const NAME: &str = "web.service.dc1.consul";
/// The backend's port for the relays (local to dc1, not delayed).
const BACKEND_PORT: u16 = 9001;
/// The backend's second port, for the direct path (delayed like the WAN).
const BACKEND_WAN_PORT: u16 = 9002;
/// dc1's HAProxy (reached across the WAN, delayed).
const HAPROXY_DC1_PORT: u16 = 9101;
/// dc2's HAProxy (the client's local relay, not delayed).
const HAPROXY_DC2_PORT: u16 = 9102;
/// Agents log warnings and the tunnel's connects; `MERIDIAN_BENCH_AGENT_LOG` overrides it.
const AGENT_LOG: &str = "warn,meridian_gateway::tunnel=info";
/// What the backend answers.
const BODY: &str = "dc1-web";

// ---------------------------------------------------------------------------------------------
// Entry point: create the namespace and run inside it.

/// Runs the benchmark inside a network namespace of its own (it needs root).
pub async fn run(bin: &Path, quick: bool, out: &Path, opt: Options) -> Result<()> {
    if let Some(ns) = opt.in_netns.clone() {
        return inner(bin, quick, out, &opt, &ns).await;
    }
    let ns = Netns::create().context(
        "wan: the benchmark needs its own network namespace and iptables (run it as root)",
    )?;
    crate::federation::run_inside(ns, "wan").await
}

/// Runs the measurement in a temporary folder, kept (with every process's log) when something
/// fails or when `MERIDIAN_BENCH_KEEP` is set.
async fn inner(bin: &Path, quick: bool, out: &Path, opt: &Options, ns: &str) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("meridian-bench-wan")
        .tempdir()?;
    let r = measure(bin, quick, out, opt, ns, dir.path()).await;
    if r.is_err() || std::env::var_os("MERIDIAN_BENCH_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("wan: the logs are kept in {}", kept.display());
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The WAN: iptables rules feeding the delayer, for TCP and UDP.

/// One iptables rule: protocol, direction (`spt`/`dpt`) and port.
#[derive(Clone, Serialize)]
struct Rule {
    proto: &'static str,
    dir: &'static str,
    port: u16,
    packets: u64,
    bytes: u64,
}

/// Adds, on INPUT, a rule per protocol, port and direction sending the packets to `queue` (or
/// only counting them without a delay). INPUT, not OUTPUT, for the reason given in
/// [`crate::federation`]: on loopback a packet is detached from its socket before INPUT.
fn install_rules(tcp: &[u16], udp: &[u16], queue: Option<u16>) -> Result<()> {
    for (proto, ports) in [("tcp", tcp), ("udp", udp)] {
        for port in ports {
            for dir in ["--sport", "--dport"] {
                let p = port.to_string();
                let q = queue.map(|q| q.to_string());
                let mut args = vec!["-w", "-A", "INPUT", "-p", proto, dir, &p, "-j"];
                match &q {
                    Some(q) => args.extend(["NFQUEUE", "--queue-num", q, "--queue-bypass"]),
                    None => args.push("ACCEPT"),
                }
                sh("iptables", &args)?;
            }
        }
    }
    Ok(())
}

/// The rules' packet and byte counters.
fn read_rules() -> Result<Vec<Rule>> {
    let text = sh("iptables", &["-w", "-L", "INPUT", "-v", "-x", "-n"])?;
    let mut rules = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(packets), Some(bytes)) = (
            f.first().and_then(|x| x.parse().ok()),
            f.get(1).and_then(|x| x.parse().ok()),
        ) else {
            continue;
        };
        // iptables prints the protocol as a number (6, 17) or a name, depending on its version.
        let proto = match f.get(3) {
            Some(&("tcp" | "6")) => "tcp",
            Some(&("udp" | "17")) => "udp",
            _ => continue,
        };
        let Some((dir, port)) = f.iter().find_map(|x| {
            x.strip_prefix("spt:")
                .map(|p| ("spt", p))
                .or_else(|| x.strip_prefix("dpt:").map(|p| ("dpt", p)))
        }) else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        rules.push(Rule {
            proto,
            dir,
            port,
            packets,
            bytes,
        });
    }
    Ok(rules)
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Finds a program on PATH or in /usr/sbin (nginx and haproxy live there).
fn tool(name: &str) -> Result<PathBuf> {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        return Ok(sbin);
    }
    let found = sh("sh", &["-c", &format!("command -v {name}")])
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    ensure!(
        !found.is_empty(),
        "{name} not found: install the Debian package {name}"
    );
    Ok(PathBuf::from(found))
}

/// The first line a program prints about its version (on stdout or stderr).
fn version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_owned())
        })
        .unwrap_or_default()
}

/// A self-signed P-256 certificate for [`NAME`], made with openssl: `(cert, key)`.
fn backend_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("web.pem"), dir.join("web-key.pem"));
    crate::tools::self_signed_cert(Path::new("openssl"), &cert, &key, NAME, &[NAME])?;
    Ok((cert, key))
}

/// The backend: nginx with TLS 1.3, one worker, on [`BACKEND_PORT`] and [`BACKEND_WAN_PORT`].
fn start_backend(nginx: &Path, dir: &Path, cert: &Path, key: &Path) -> Result<Proc> {
    let prefix = dir.join("backend");
    std::fs::create_dir_all(&prefix)?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  \
             proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  \
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  server {{\n    \
             listen 127.0.0.1:{BACKEND_PORT} ssl;\n    listen 127.0.0.1:{BACKEND_WAN_PORT} ssl;\n    \
             ssl_certificate {c};\n    ssl_certificate_key {k};\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    \
             location = / {{ return 200 \"{BODY}\\n\"; }}\n  }}\n}}\n",
            p = prefix.display(),
            c = cert.display(),
            k = key.display(),
        ),
    )?;
    let args = vec![
        "-p".to_owned(),
        prefix.to_str().context("a UTF-8 path")?.to_owned(),
        "-c".to_owned(),
        conf.to_str().context("a UTF-8 path")?.to_owned(),
    ];
    let mut p = procs::start(
        "backend nginx",
        None,
        nginx,
        args,
        &[],
        &prefix.join("stdout.log"),
    )?;
    procs::wait_listening(&mut p, BACKEND_PORT)?;
    Ok(p)
}

/// HAProxy in `mode tcp` on `port`: waits for the ClientHello, routes its SNI [`NAME`] to `to`.
fn start_haproxy(haproxy: &Path, dir: &Path, tag: &str, port: u16, to: u16) -> Result<Proc> {
    let conf = dir.join(format!("haproxy-{tag}.cfg"));
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 1024\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
             timeout server 30s\n\
             frontend sni\n  bind 127.0.0.1:{port}\n  tcp-request inspect-delay 5s\n  \
             tcp-request content accept if {{ req.ssl_hello_type 1 }}\n  \
             use_backend next if {{ req.ssl_sni -i {NAME} }}\n\
             backend next\n  server next 127.0.0.1:{to}\n"
        ),
    )?;
    let args = vec![
        "-db".to_owned(),
        "-f".to_owned(),
        conf.to_str().context("a UTF-8 path")?.to_owned(),
    ];
    let mut p = procs::start(
        &format!("haproxy {tag}"),
        None,
        haproxy,
        args,
        &[],
        &dir.join(format!("haproxy-{tag}.log")),
    )?;
    procs::wait_listening(&mut p, port)?;
    Ok(p)
}

/// A one-node datacenter `dc` (agent `tag`) on `ports` with the tunnel's `transport`, its node
/// certificate from `pki`, following dc1 at `peer_wan` when given.
#[allow(clippy::too_many_arguments)]
fn start_agent(
    bin: &Path,
    dir: &Path,
    pki: &Pki,
    tag: &str,
    dc: &str,
    ports: Ports,
    transport: &str,
    peer_wan: Option<u16>,
) -> Result<Agent> {
    let mut config = crate::tools::open_config(dc, "n1", ports, &dir.join(format!("{tag}-data")));
    config.raft = crate::tools::fast_raft();
    config.set("gateway", "wan_transport", transport);
    let f = pki.node_files(dc, "n1", &[])?;
    config.federation = Some(Federation {
        peers: peer_wan
            .map(|w| Peer::on_loopback("dc1", w))
            .into_iter()
            .collect(),
        ..Federation::with_certs(&f.ca, &f.cert, &f.key)
    });
    let log = procs::agent_log(AGENT_LOG);
    procs::configured_agent(tag, bin, &config, dir, &[("RUST_LOG", &log)], None)
}

/// Waits (60 s at most) until `dc2` holds dc1's `web` and `meridian-gateway` through federation.
async fn wait_replicated(dc2: &mut Agent, dc1: &mut Agent) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        procs::check_running(&mut dc1.proc)?;
        procs::check_running(&mut dc2.proc)?;
        let one = |v: Result<Value>| v.is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 1));
        if one(dc2.get_json("/v1/catalog/service/web?dc=dc1").await)
            && one(dc2
                .get_json("/v1/catalog/service/meridian-gateway?dc=dc1")
                .await)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not learn dc1's web and gateway within 60 s",
            dc2.proc.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The paths and the client.

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Way {
    MeridianQuic,
    MeridianTcp,
    HaproxyChain,
    Direct,
}

const WAYS: [Way; 4] = [
    Way::MeridianQuic,
    Way::MeridianTcp,
    Way::HaproxyChain,
    Way::Direct,
];

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::MeridianQuic => "Meridian, warm QUIC tunnel",
            Way::MeridianTcp => "Meridian, TCP fallback (`wan_transport = \"tcp\"`)",
            Way::HaproxyChain => "two HAProxy, TCP relay by SNI (Consul's way)",
            Way::Direct => "direct to the backend across the WAN",
        }
    }

    /// WAN round trips before the first response byte, counted from the protocols: each TCP
    /// connect and each handshake across the WAN is one, the client's TLS 1.3 handshake with
    /// the backend one, its HTTP request one.
    fn expected_rtts(self) -> u32 {
        match self {
            // TLS hello/ServerHello on a new stream, then the request.
            Way::MeridianQuic => 2,
            // TCP connect, mutual TLS between gateways, then as above.
            Way::MeridianTcp => 4,
            // TCP connect from relay to relay, then as above.
            Way::HaproxyChain | Way::Direct => 3,
        }
    }
}

/// One timed client connection, in milliseconds from curl's start.
#[derive(Clone, Copy, Serialize)]
struct Sample {
    round: usize,
    connect_ms: f64,
    tls_done_ms: f64,
    ttfb_ms: f64,
    total_ms: f64,
}

/// One new connection with a new curl process, checking the backend's certificate for [`NAME`]
/// and the answer: `(connect, appconnect, starttransfer, total)` in ms.
async fn curl_once(port: u16, ca: &Path, verbose: bool) -> Result<(Sample, String)> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "--http1.1", "--noproxy", "*", "--max-time", "10"])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{NAME}:{port}:127.0.0.1")])
        .args([
            "-w",
            "%{http_code} %{time_connect} %{time_appconnect} %{time_starttransfer} \
             %{time_total}",
        ]);
    if verbose {
        cmd.arg("-v");
    }
    let out = cmd
        .arg(format!("https://{NAME}:{port}/"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "curl to port {port}: {} {}",
        out.status,
        stderr.trim()
    );
    // The body (one line), then the timings.
    let stats: Vec<&str> = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split(' ')
        .collect();
    ensure!(
        stats.first() == Some(&"200") && stdout.starts_with(&format!("{BODY}\n")),
        "curl to port {port}: unexpected answer {stdout:?}"
    );
    let num = |i: usize| -> Result<f64> {
        let s: f64 = stats
            .get(i)
            .context("curl's timings")?
            .parse()
            .context("curl's timings")?;
        Ok(s * 1000.0)
    };
    Ok((
        Sample {
            round: 0,
            connect_ms: num(1)?,
            tls_done_ms: num(2)?,
            ttfb_ms: num(3)?,
            total_ms: num(4)?,
        },
        stderr,
    ))
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Serialize, Default, Clone, Copy)]
struct Dist {
    count: usize,
    mean_ms: f64,
    min_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Nearest-rank percentiles.
fn dist(mut v: Vec<f64>) -> Dist {
    if v.is_empty() {
        return Dist::default();
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Dist {
        count: v.len(),
        mean_ms: v.iter().sum::<f64>() / v.len() as f64,
        min_ms: v[0],
        p50_ms: pct(0.5),
        p90_ms: pct(0.9),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    }
}

#[derive(Serialize)]
struct WayResult {
    way: Way,
    name: &'static str,
    /// The port the client connects to.
    port: u16,
    expected_wan_rtts: u32,
    /// TTFB p50 minus `expected_wan_rtts` nominal round trips: what the path adds beyond the
    /// protocol's round trips (curl's own TLS work included, about 5 ms here).
    ttfb_p50_excess_ms: f64,
    /// Connections whose TTFB was more than 20 ms above this path's fastest one.
    slow: usize,
    /// The TLS line of curl's verbose output on the first warm-up connection.
    tls: String,
    ok: usize,
    failed: usize,
    errors: Vec<String>,
    connect: Dist,
    tls_done: Dist,
    ttfb: Dist,
    samples: Vec<Sample>,
}

#[derive(Serialize)]
struct Wan {
    mode: String,
    one_way_delay_ms: u64,
    nominal_rtt_ms: f64,
    /// TCP connects to a probe port under the same rules (median of 5 before and after).
    rtt_before_ms: Vec<f64>,
    rtt_after_ms: Vec<f64>,
    delayed_packets: u64,
    overruns: u64,
    rules: Vec<Rule>,
}

#[derive(Serialize)]
struct Tunnels {
    /// dc2's QUIC connects before the warm-up (0: the tunnel was cold), after it, after the run.
    quic_connects_before_warmup: f64,
    quic_connects_after_warmup: f64,
    quic_connects_after_run: f64,
    /// One QUIC connection, opened by the warm-up, carried every timed connection.
    warm_throughout: bool,
    /// The first warm-up connection through the QUIC path (it opened the tunnel).
    quic_cold_first_connection: Option<Sample>,
    quic_streams_out: f64,
    quic_streams_in_dc1: f64,
    tcp_fallback_quic_connects: f64,
    tcp_fallback_streams_out: f64,
    tcp_fallback_tunnelled_in_dc1: f64,
}

#[derive(Serialize)]
struct Comparison {
    /// HAProxy chain's TTFB minus the QUIC tunnel's, at each percentile, in ms.
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    /// The same per round (both in the same round, back to back): median and minimum.
    paired_median_ms: f64,
    paired_min_ms: f64,
    /// The p50 difference in nominal WAN round trips.
    p50_in_rtts: f64,
    /// Target: the p50 difference is at least one nominal round trip.
    target_ms: f64,
    met: bool,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    date: String,
    machine: String,
    command: String,
    quick: bool,
    connections_per_path: usize,
    warmup_per_path: usize,
    versions: BTreeMap<&'static str, String>,
    wan: Wan,
    paths: Vec<WayResult>,
    tunnels: Tunnels,
    quic_vs_haproxy: Comparison,
    tcp_fallback_vs_quic_p50_ms: f64,
    /// How long the timed connections took, and every server's CPU seconds over them and its
    /// peak RSS.
    timed_seconds: f64,
    processes: Vec<ProcessFigures>,
    targets: Vec<String>,
}

/// One server's CPU seconds over the timed connections (warm-up excluded), its peak RSS
/// (VmHWM since it started) and VmRSS at the end.
#[derive(Serialize)]
struct ProcessFigures {
    #[serde(flatten)]
    usage: ProcessUsage,
    /// Timed connections that went through it.
    connections: usize,
}

// ---------------------------------------------------------------------------------------------
// The measurement.

async fn measure(
    bin: &Path,
    quick: bool,
    out: &Path,
    opt: &Options,
    ns: &str,
    dir: &Path,
) -> Result<()> {
    ensure!(opt.connections > 0, "--connections must be at least 1");
    let delay = Duration::from_millis(opt.wan_delay_ms);
    let nominal_rtt = 2.0 * opt.wan_delay_ms as f64;
    let nginx = tool("nginx")?;
    let haproxy = tool("haproxy")?;
    tool("curl")?;
    tool("openssl")?;

    // Ports: [quic dc1, quic dc2, tcp dc1, tcp dc2].
    let ports = [
        fixed_ports(1),
        fixed_ports(2),
        fixed_ports(3),
        fixed_ports(4),
    ];
    let probe = TcpListener::bind(("127.0.0.1", PROBE_PORT))?;

    // The WAN: the delayer first, then the rules that feed it.
    let delayer = if delay.is_zero() {
        None
    } else {
        Some(Delayer::start(QUEUE, delay).context("starting the WAN delayer")?)
    };
    let mut wan_tcp: Vec<u16> = ports.iter().map(|p| p.wan).collect();
    wan_tcp.extend([
        ports[0].gateway,
        ports[2].gateway,
        HAPROXY_DC1_PORT,
        BACKEND_WAN_PORT,
        PROBE_PORT,
    ]);
    let wan_udp = [ports[0].gateway, ports[2].gateway];
    install_rules(&wan_tcp, &wan_udp, delayer.as_ref().map(|_| QUEUE))?;
    let mode = format!(
        "namespace {ns}: every packet to or from a WAN port (TCP {}; UDP {}) held {} ms by an \
         NFQUEUE delayer on INPUT (the kernel has no netem), loopback MTU 1500",
        wan_tcp
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        wan_udp
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        opt.wan_delay_ms
    );
    let rtt_before = tokio::task::block_in_place(|| probe_rtt(PROBE_PORT, 5, &probe))?;
    eprintln!(
        "wan: {mode}; TCP connect RTT through it: {} ms",
        rtt_before
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // The backend and the two HAProxy.
    let (cert, key) = backend_certificate(dir)?;
    let mut backend = start_backend(&nginx, dir, &cert, &key)?;
    let mut hap1 = start_haproxy(&haproxy, dir, "dc1", HAPROXY_DC1_PORT, BACKEND_PORT)?;
    let mut hap2 = start_haproxy(&haproxy, dir, "dc2", HAPROXY_DC2_PORT, HAPROXY_DC1_PORT)?;

    // Two federations of two one-node datacenters: one with the QUIC tunnel, one with the TCP
    // fallback; dc2 follows dc1 across the WAN.
    let certs = dir.join("certs");
    let pki = Pki::new(&certs)?;
    let mut q1 = start_agent(bin, dir, &pki, "quic-dc1", "dc1", ports[0], "quic", None)?;
    let mut q2 = start_agent(
        bin,
        dir,
        &pki,
        "quic-dc2",
        "dc2",
        ports[1],
        "quic",
        Some(ports[0].wan),
    )?;
    let mut t1 = start_agent(bin, dir, &pki, "tcp-dc1", "dc1", ports[2], "tcp", None)?;
    let mut t2 = start_agent(
        bin,
        dir,
        &pki,
        "tcp-dc2",
        "dc2",
        ports[3],
        "tcp",
        Some(ports[2].wan),
    )?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let bases: Vec<String> = [&q1, &q2, &t1, &t2].map(|a| a.base()).into();
    meridian_testkit::wait::leader_known(&http, &bases, Duration::from_secs(60)).await?;
    for dc1 in [&q1, &t1] {
        let r = http
            .put(dc1.url("/v1/agent/service/register"))
            .json(&serde_json::json!({
                "ID": "web-1", "Name": "web", "Port": BACKEND_PORT, "Address": "127.0.0.1",
            }))
            .send()
            .await?;
        ensure!(r.status().is_success(), "registering web: {}", r.status());
    }
    wait_replicated(&mut q2, &mut q1).await?;
    wait_replicated(&mut t2, &mut t1).await?;
    eprintln!("wan: dc2 knows dc1's web and gateway in both federations");

    let port_of = |w: Way| match w {
        Way::MeridianQuic => ports[1].gateway,
        Way::MeridianTcp => ports[3].gateway,
        Way::HaproxyChain => HAPROXY_DC2_PORT,
        Way::Direct => BACKEND_WAN_PORT,
    };
    let connects = "meridian_gateway_tunnel_connects_total";
    let streams_out = "meridian_gateway_tunnel_streams_out_total";
    let streams_in = "meridian_gateway_tunnel_streams_in_total";
    let tunnelled_in =
        "meridian_gateway_connections_total{route=\"tunnelled_in\",outcome=\"relayed\"}";

    // Warm-up: every path, unrecorded; the first QUIC connection opens the tunnel.
    let quic_connects_before_warmup = procs::metric_or_zero(&q2, connects).await?;
    let mut tls = BTreeMap::new();
    let mut cold = None;
    for w in WAYS {
        for i in 0..opt.warmup.max(1) {
            let (s, stderr) = curl_once(port_of(w), &cert, i == 0)
                .await
                .with_context(|| format!("warm-up through {}", w.name()))?;
            if i == 0 {
                let line = stderr
                    .lines()
                    .find(|l| l.contains("SSL connection using"))
                    .map(|l| l.trim_start_matches(['*', ' ']).to_owned())
                    .unwrap_or_default();
                tls.insert(port_of(w), line);
                if w == Way::MeridianQuic {
                    cold = Some(s);
                    eprintln!(
                        "wan: first connection through the cold QUIC tunnel: TTFB {:.1} ms",
                        s.ttfb_ms
                    );
                }
            }
        }
    }
    let quic_connects_after_warmup = procs::metric_or_zero(&q2, connects).await?;
    let quic_out0 = procs::metric_or_zero(&q2, streams_out).await?;
    let quic_in0 = procs::metric_or_zero(&q1, streams_in).await?;
    let tcp_out0 = procs::metric_or_zero(&t2, streams_out).await?;
    let tcp_in0 = procs::metric_or_zero(&t1, tunnelled_in).await?;

    // The timed connections: one per path per round, one at a time, the order rotating.
    eprintln!(
        "wan: {} new connections per path, one at a time, the paths taking turns",
        opt.connections
    );
    let mut samples: BTreeMap<u16, Vec<Sample>> = BTreeMap::new();
    let mut errors: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    // CPU and memory of every server over the timed connections, and the path each serves.
    let mut meters: Vec<(Meter, Option<Way>)> = [
        (&backend, None),
        (&hap1, Some(Way::HaproxyChain)),
        (&hap2, Some(Way::HaproxyChain)),
        (&q1.proc, Some(Way::MeridianQuic)),
        (&q2.proc, Some(Way::MeridianQuic)),
        (&t1.proc, Some(Way::MeridianTcp)),
        (&t2.proc, Some(Way::MeridianTcp)),
    ]
    .into_iter()
    .map(|(p, w)| Ok((Meter::start(&p.name, procs::pid(p)?), w)))
    .collect::<Result<_>>()?;
    let timed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60 + 10 * opt.connections as u64);
    for round in 0..opt.connections {
        ensure!(
            Instant::now() < deadline,
            "the timed connections took too long"
        );
        for k in 0..WAYS.len() {
            let w = WAYS[(round + k) % WAYS.len()];
            match curl_once(port_of(w), &cert, false).await {
                Ok((mut s, _)) => {
                    s.round = round;
                    samples.entry(port_of(w)).or_default().push(s);
                }
                Err(e) => errors.entry(port_of(w)).or_default().push(format!("{e:#}")),
            }
        }
        if (round + 1) % 10 == 0 {
            eprintln!("wan: {} rounds done", round + 1);
        }
    }
    for (m, _) in &mut meters {
        m.sample();
    }
    let timed_seconds = timed.elapsed().as_secs_f64();
    for p in [&mut backend, &mut hap1, &mut hap2] {
        procs::check_running(p)?;
    }
    for a in [&mut q1, &mut q2, &mut t1, &mut t2] {
        procs::check_running(&mut a.proc)?;
    }
    let tunnels = Tunnels {
        quic_connects_before_warmup,
        quic_connects_after_warmup,
        quic_connects_after_run: procs::metric_or_zero(&q2, connects).await?,
        warm_throughout: false,
        quic_cold_first_connection: cold,
        quic_streams_out: procs::metric_or_zero(&q2, streams_out).await? - quic_out0,
        quic_streams_in_dc1: procs::metric_or_zero(&q1, streams_in).await? - quic_in0,
        tcp_fallback_quic_connects: procs::metric_or_zero(&t2, connects).await?,
        tcp_fallback_streams_out: procs::metric_or_zero(&t2, streams_out).await? - tcp_out0,
        tcp_fallback_tunnelled_in_dc1: procs::metric_or_zero(&t1, tunnelled_in).await? - tcp_in0,
    };
    let tunnels = Tunnels {
        warm_throughout: tunnels.quic_connects_before_warmup == 0.0
            && tunnels.quic_connects_after_warmup == 1.0
            && tunnels.quic_connects_after_run == 1.0,
        ..tunnels
    };
    if !tunnels.warm_throughout {
        eprintln!(
            "wan: WARNING: the QUIC tunnel was not one warm connection throughout ({} connects \
             before the warm-up, {} after, {} after the run)",
            tunnels.quic_connects_before_warmup,
            tunnels.quic_connects_after_warmup,
            tunnels.quic_connects_after_run
        );
    }
    let rtt_after = tokio::task::block_in_place(|| probe_rtt(PROBE_PORT, 5, &probe))?;
    let rules = read_rules()?;
    let (delayed_packets, overruns) = delayer.as_ref().map_or((0, 0), |d| {
        (
            d.delayed.load(Ordering::Relaxed),
            d.overruns.load(Ordering::Relaxed),
        )
    });
    drop((q1, q2, t1, t2, hap1, hap2, backend));
    drop(delayer);

    let paths: Vec<WayResult> = WAYS
        .iter()
        .map(|&w| {
            let port = port_of(w);
            let s = samples.remove(&port).unwrap_or_default();
            let e = errors.remove(&port).unwrap_or_default();
            WayResult {
                way: w,
                name: w.name(),
                port,
                expected_wan_rtts: w.expected_rtts(),
                ttfb_p50_excess_ms: dist(s.iter().map(|s| s.ttfb_ms).collect()).p50_ms
                    - f64::from(w.expected_rtts()) * nominal_rtt,
                slow: {
                    let min = s.iter().map(|s| s.ttfb_ms).fold(f64::INFINITY, f64::min);
                    s.iter().filter(|s| s.ttfb_ms > min + 20.0).count()
                },
                tls: tls.remove(&port).unwrap_or_default(),
                ok: s.len(),
                failed: e.len(),
                errors: e.into_iter().take(5).collect(),
                connect: dist(s.iter().map(|s| s.connect_ms).collect()),
                tls_done: dist(s.iter().map(|s| s.tls_done_ms).collect()),
                ttfb: dist(s.iter().map(|s| s.ttfb_ms).collect()),
                samples: s,
            }
        })
        .collect();
    let by = |w: Way| paths.iter().find(|p| p.way == w).context("every path ran");
    let (quic, tcp, hap) = (
        by(Way::MeridianQuic)?,
        by(Way::MeridianTcp)?,
        by(Way::HaproxyChain)?,
    );
    ensure!(
        quic.ok > 0 && hap.ok > 0,
        "no connection through the QUIC tunnel ({} errors, first: {:?}) or the HAProxy chain \
         ({} errors, first: {:?})",
        quic.failed,
        quic.errors.first(),
        hap.failed,
        hap.errors.first()
    );
    let hap_by_round: BTreeMap<usize, f64> =
        hap.samples.iter().map(|s| (s.round, s.ttfb_ms)).collect();
    let paired = dist(
        quic.samples
            .iter()
            .filter_map(|s| Some(hap_by_round.get(&s.round)? - s.ttfb_ms))
            .collect(),
    );
    let p50 = hap.ttfb.p50_ms - quic.ttfb.p50_ms;
    let cmp = Comparison {
        p50_ms: p50,
        p90_ms: hap.ttfb.p90_ms - quic.ttfb.p90_ms,
        p99_ms: hap.ttfb.p99_ms - quic.ttfb.p99_ms,
        paired_median_ms: paired.p50_ms,
        paired_min_ms: paired.min_ms,
        p50_in_rtts: if nominal_rtt > 0.0 {
            p50 / nominal_rtt
        } else {
            0.0
        },
        target_ms: nominal_rtt,
        met: nominal_rtt > 0.0 && p50 >= nominal_rtt && tunnels.warm_throughout,
    };
    let targets = vec![format!(
        "A new connection through the warm QUIC tunnel reaches its first response byte at least \
         one WAN round trip ({nominal_rtt:.0} ms) sooner than through the HAProxy chain: p50 \
         {:.1} ms against {:.1} ms, {:.1} ms sooner ({:.2} RTT; one QUIC connection throughout: \
         {}): {}",
        quic.ttfb.p50_ms,
        hap.ttfb.p50_ms,
        p50,
        cmp.p50_in_rtts,
        if tunnels.warm_throughout { "yes" } else { "no" },
        met(cmp.met)
    )];
    let tcp_fallback_vs_quic_p50_ms = tcp.ttfb.p50_ms - quic.ttfb.p50_ms;
    let processes = meters
        .iter()
        .map(|(m, w)| ProcessFigures {
            usage: m.usage(),
            // The backend answers every path's connections.
            connections: paths
                .iter()
                .filter(|p| w.is_none_or(|w| w == p.way))
                .map(|p| p.ok + p.failed)
                .sum(),
        })
        .collect();
    let mut versions = BTreeMap::new();
    versions.insert("meridian", version(bin, "--version"));
    versions.insert("curl", version(Path::new("curl"), "--version"));
    versions.insert("haproxy", version(&haproxy, "-v"));
    versions.insert("nginx", version(&nginx, "-v"));
    let report = Report {
        benchmark: "wan",
        date: crate::today(),
        machine: crate::machine(),
        command: std::env::args()
            .take_while(|a| a != "--in-netns")
            .collect::<Vec<_>>()
            .join(" "),
        quick,
        connections_per_path: opt.connections,
        warmup_per_path: opt.warmup.max(1),
        versions,
        wan: Wan {
            mode,
            one_way_delay_ms: opt.wan_delay_ms,
            nominal_rtt_ms: nominal_rtt,
            rtt_before_ms: rtt_before,
            rtt_after_ms: rtt_after,
            delayed_packets,
            overruns,
            rules,
        },
        paths,
        tunnels,
        quic_vs_haproxy: cmp,
        tcp_fallback_vs_quic_p50_ms,
        timed_seconds,
        processes,
        targets,
    };
    let md = markdown(&report)?;
    crate::tools::write_report(out, "wan", &report, &md)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn markdown(r: &Report) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "{}",
        crate::tools::wan_line(
            &r.wan.mode,
            &r.wan.rtt_before_ms,
            &r.wan.rtt_after_ms,
            r.wan.delayed_packets,
            r.wan.overruns
        )
    )?;
    writeln!(
        s,
        "{} new client connections per path (a new curl process each, `--http1.1`, checking the \
         backend's certificate), one at a time, the paths taking turns, after {} unrecorded \
         ones per path. Times from curl's start; nominal WAN round trip {:.0} ms.\n",
        r.connections_per_path, r.warmup_per_path, r.wan.nominal_rtt_ms
    )?;
    writeln!(
        s,
        "| path | WAN RTTs by protocol | ok | TCP connect p50 | TLS done p50 | TTFB p50 | TTFB p90 \
         | TTFB p99 | TTFB max | TTFB p50 − RTTs | > fastest + 20 ms |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for p in &r.paths {
        writeln!(
            s,
            "| {} | {} | {}/{} | {:.1} ms | {:.1} ms | **{:.1} ms** | {:.1} ms | {:.1} ms | {:.1} ms \
             | {:+.1} ms | {} |",
            p.name,
            p.expected_wan_rtts,
            p.ok,
            p.ok + p.failed,
            p.connect.p50_ms,
            p.tls_done.p50_ms,
            p.ttfb.p50_ms,
            p.ttfb.p90_ms,
            p.ttfb.p99_ms,
            p.ttfb.max_ms,
            p.ttfb_p50_excess_ms,
            p.slow
        )?;
    }
    let c = &r.quic_vs_haproxy;
    writeln!(
        s,
        "\nQUIC tunnel against the HAProxy chain (Consul's way), TTFB: **{:.1} ms sooner at p50 \
         ({:.2} WAN RTT)**, {:.1} ms at p90, {:.1} ms at p99; per round (the two back to back): \
         median {:.1} ms, minimum {:.1} ms. Target ≥ {:.0} ms (one RTT) at p50: **{}**.\n",
        c.p50_ms,
        c.p50_in_rtts,
        c.p90_ms,
        c.p99_ms,
        c.paired_median_ms,
        c.paired_min_ms,
        c.target_ms,
        met(c.met)
    )?;
    writeln!(
        s,
        "TCP fallback against the QUIC tunnel, TTFB p50: {:+.1} ms.\n",
        r.tcp_fallback_vs_quic_p50_ms
    )?;
    let t = &r.tunnels;
    writeln!(
        s,
        "Tunnel: dc2 (QUIC) had {:.0} QUIC connections before the warm-up, {:.0} after it and \
         {:.0} after the run, and opened {:.0} streams during the run (dc1 accepted {:.0}); the \
         first warm-up connection, which opened the tunnel, had its first byte after {}. The TCP \
         fallback's dc2 made {:.0} QUIC connections and {:.0} TCP + TLS tunnel connections \
         during the run (dc1 relayed {:.0}).\n",
        t.quic_connects_before_warmup,
        t.quic_connects_after_warmup,
        t.quic_connects_after_run,
        t.quic_streams_out,
        t.quic_streams_in_dc1,
        t.quic_cold_first_connection
            .map_or("–".to_owned(), |s| format!("{:.1} ms", s.ttfb_ms)),
        t.tcp_fallback_quic_connects,
        t.tcp_fallback_streams_out,
        t.tcp_fallback_tunnelled_in_dc1
    )?;
    for p in &r.paths {
        if !p.errors.is_empty() {
            writeln!(
                s,
                "Errors through {} ({}): {}\n",
                p.name,
                p.failed,
                p.errors.join("; ")
            )?;
        }
    }
    writeln!(
        s,
        "CPU seconds (user + system) of every server over the {:.1} s of timed connections \
         (the agents' include their background work: failover probes, federation heartbeats, \
         Raft), and its peak RSS (VmHWM):\n\n\
         | process | connections through it | CPU s | peak RSS | RSS at the end |\n\
         |---|---|---|---|---|",
        r.timed_seconds
    )?;
    for p in &r.processes {
        let u = &p.usage;
        writeln!(
            s,
            "| {} | {} | {:.2} s | {} | {} |",
            u.name,
            p.connections,
            u.cpu_seconds,
            mib(u.peak_rss_kib),
            mib(u.rss_kib)
        )?;
    }
    writeln!(s)?;
    let rules: Vec<String> = r
        .wan
        .rules
        .iter()
        .filter(|x| x.packets > 0)
        .map(|x| format!("{} {}:{} {}", x.proto, x.dir, x.port, x.packets))
        .collect();
    writeln!(s, "Packets through the WAN rules: {}.\n", rules.join(", "))?;
    let v: Vec<String> = r.versions.values().cloned().collect();
    writeln!(s, "Versions: {}.", v.join("; "))?;
    Ok(s)
}
