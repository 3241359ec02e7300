//! `federation`: WAN federation between three one-node datacenters (`agent --dev`, dc1, dc2, dc3)
//! with an added one-way WAN delay.
//!
//! The kernel of this machine has no `netem`, so the WAN delay is added in user space: the
//! benchmark creates its own network namespace (loopback only, MTU 1500), runs itself and the
//! three agents inside it, and sends every TCP packet to or from a WAN port through an iptables
//! `NFQUEUE` rule to a small netlink delayer (in this file) that holds each packet for the delay
//! before accepting it. Packets cross the queue once per hop (INPUT on loopback), so the one-way
//! delay between two DCs is the configured delay, and the round trip twice that (measured with a
//! TCP connect to a probe port under the same rule). The benchmark's own HTTP and DNS traffic
//! uses other ports and is not delayed. Without root or namespaces the benchmark runs on the
//! host's loopback without delay and says so.
//!
//! Phases: (1) dc1 alone gets `services × instances` registrations (64 clients); (2) dc2 starts
//! and joins dc1: initial sync time and bytes (the federation metrics' protobuf bytes, and the
//! IP bytes the firewall counted on dc1's WAN port), against the protobuf size of the same entries
//! rebuilt from dc1's API; (3) dc3 joins likewise; (4) an idle window measures heartbeat bytes;
//! (5) convergence: one registration at a time in dc1, and from its HTTP acknowledgement, DNS
//! queries to dc2 and dc3 every millisecond until the answer holds the new address; (6) steady
//! state: single registrations 50 ms apart, and the bytes dc2 received per change; (5b)
//! intentions: one intention at a time written in dc1 (`PUT /v1/connect/intentions/exact`), and
//! from its acknowledgement, `GET /v1/connect/intentions/check` in dc2 and dc3 every millisecond
//! until the decision is the new one; (7) memory:
//! three fresh DCs register 100,000 instances between them (10,000 with `--quick`), a third
//! each, and once every replica has converged each agent's RSS is read (every node then holds
//! all of them). Each agent's CPU seconds per phase and peak RSS are reported too.
//!
//! `--transport gateway` runs the same phases with federation through the gateways: agents from
//! config files with certificates, dc2 and dc3 naming dc1 by its gateway, every subscription
//! through the subscriber's own gateway and the QUIC tunnel. The delayer then holds the tunnel's
//! UDP packets on the gateway ports instead (the first hop, TCP to the local gateway, is not
//! delayed), and "dc1's WAN port" in the figures is its gateway's tunnel port.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hickory_net::proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_net::proto::rr::{Name, RData, RecordType};
use meridian_protos::federation as pb;
use meridian_testkit::meter::{Meter, ProcessUsage, mib, status_kib};
use meridian_testkit::wait::leader_known;
use meridian_testkit::{Agent, Ports, Proc, free_port};
use prost::Message as _;
use serde::Serialize;
use serde_json::Value;

use crate::procs;
use crate::tools::{fixed_ports, is_root};
use meridian_testkit::certs::Pki;

/// What `meridian-bench federation` was asked for.
pub struct Options {
    /// Services registered in dc1 before dc2 and dc3 join (initial sync).
    pub services: usize,
    /// Instances per service.
    pub instances: usize,
    /// Registrations timed from acknowledgement to DNS answer (convergence).
    pub registrations: usize,
    /// Single changes whose bytes are counted (steady state).
    pub changes: usize,
    /// Concurrent HTTP clients for the bulk registrations.
    pub clients: usize,
    /// Added one-way WAN delay in milliseconds (0: none).
    pub wan_delay_ms: u64,
    /// Set when this process already runs inside the benchmark's namespace (its name).
    pub in_netns: Option<String>,
    /// How the DCs' federation streams cross the WAN.
    pub transport: Transport,
}

/// `federation.transport` of the benchmark's agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server to server on the WAN port (`--dev` agents, `--join-wan`).
    Direct,
    /// Through the gateways and their QUIC tunnel (agents from config files with certificates,
    /// each DC's peers named by their gateways).
    Gateway,
}

/// How the benchmark's agents federate, and the certificates the gateway transport needs.
struct Setup {
    transport: Transport,
    pki: Option<Pki>,
}

impl Setup {
    fn new(transport: Transport, dir: &Path) -> Result<Setup> {
        let pki = match transport {
            Transport::Direct => None,
            Transport::Gateway => Some(Pki::new(&dir.join("certs"))?),
        };
        Ok(Setup { transport, pki })
    }

    /// The port whose packets cross the WAN, and their protocol: the WAN port (TCP), or the
    /// gateway port's tunnel (UDP; the TCP of the gateway port is this DC's own first hop).
    fn wan(&self, ports: &Ports) -> (&'static str, u16) {
        match self.transport {
            Transport::Direct => ("tcp", ports.wan),
            Transport::Gateway => ("udp", ports.gateway),
        }
    }
}

/// Raft entries are batched, DNS polls are this far apart.
const POLL: Duration = Duration::from_millis(1);
/// The mesh's trust domain in the benchmark.
const TRUST_DOMAIN: &str = "fede4a11.consul";
/// A registration not seen in a replica's DNS after this long counts as a timeout.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Spacing of the steady-state changes.
const CHANGE_SPACING: Duration = Duration::from_millis(50);
/// The netfilter queue the delayer reads.
const QUEUE: u16 = 7;
/// The port of the RTT probe listener inside the namespace.
const PROBE_PORT: u16 = 8399;
/// Agents log warnings, and federation's info lines (joined, replica synced); the environment
/// variable `MERIDIAN_BENCH_AGENT_LOG` overrides it.
const AGENT_LOG: &str = "warn,meridian_federation=info";

// ---------------------------------------------------------------------------------------------
// Entry point: create the namespace and run inside it.

/// Runs the benchmark: inside a namespace of its own when possible.
pub async fn run(bin: &Path, quick: bool, out: &Path, opt: Options) -> Result<()> {
    if let Some(ns) = opt.in_netns.clone() {
        return inner(bin, quick, out, &opt, Some(ns)).await;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!(
                "federation: cannot create a network namespace ({e:#}); running on the host's \
                 loopback WITHOUT any WAN delay"
            );
            return inner(bin, quick, out, &opt, None).await;
        }
    };
    run_inside(ns, "federation").await
}

/// A network namespace of this benchmark, deleted (with anything still running in it) on drop.
pub(crate) struct Netns {
    pub(crate) name: String,
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command, failing with its stderr.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// iptables, installed with apt-get (Debian package `iptables`) when missing.
fn ensure_iptables() -> Result<()> {
    if have("iptables") {
        return Ok(());
    }
    crate::tools::apt_install("federation", &["iptables"])
}

/// Runs this benchmark's own command line again inside `ns` (with `--in-netns`), and deletes
/// the namespace when it ends, fails or is interrupted; `bench` names the subcommand.
pub(crate) async fn run_inside(ns: Netns, bench: &str) -> Result<()> {
    eprintln!(
        "{bench}: network namespace {} (loopback, MTU 1500); running the benchmark inside it",
        ns.name
    );
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .arg("--in-netns")
        .arg(&ns.name)
        .kill_on_drop(true)
        .spawn()
        .context("ip netns exec")?;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = tokio::signal::ctrl_c() => {
            let _ = child.kill().await;
            drop(ns);
            bail!("interrupted");
        }
    };
    drop(ns);
    ensure!(
        status.success(),
        "the benchmark inside the namespace failed ({status})"
    );
    Ok(())
}

impl Netns {
    pub(crate) fn create() -> Result<Netns> {
        ensure!(is_root(), "not root");
        ensure!(have("ip"), "ip (iproute2) not found");
        ensure_iptables()?;
        let name = format!("mbench-fed-{}", std::process::id());
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        // MTU 1500 like a WAN link, so that TCP's windows count in WAN-sized segments.
        sh(
            "ip",
            &["-n", &ns.name, "link", "set", "lo", "mtu", "1500", "up"],
        )?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only this benchmark's processes can be in its namespace (agents left by a crash).
        if let Ok(pids) = sh("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// The WAN delay: an NFQUEUE reader over raw netlink.

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NF_ACCEPT: u32 = 1;

/// An nfnetlink_queue message for queue `queue` with attributes `attrs`.
fn nfq_message(kind: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(&[0, 0]); // nfgenmsg: AF_UNSPEC, NFNETLINK_V0
    m.extend_from_slice(&queue.to_be_bytes());
    for (ty, payload) in attrs {
        let len = 4 + payload.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(payload);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
    }
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the netlink messages of one datagram: appends queued packets' IDs to `ids` and returns
/// the error code of an acknowledgement, if the datagram holds one (0 is success).
fn parse_netlink(buf: &[u8], ids: &mut Vec<u32>) -> Option<i32> {
    let mut ack = None;
    let mut pos = 0;
    while let (Some(len), Some(ty)) = (ne_u32(buf, pos), ne_u16(buf, pos + 4)) {
        let len = len as usize;
        let Some(msg) = buf.get(pos..pos + len).filter(|_| len >= 16) else {
            break;
        };
        if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let mut a = 20; // nlmsghdr + nfgenmsg
            while let (Some(alen), Some(aty)) = (ne_u16(msg, a), ne_u16(msg, a + 2)) {
                let alen = usize::from(alen);
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                if aty & 0x3fff == NFQA_PACKET_HDR
                    && let Some(id) = msg.get(a + 4..a + 8)
                {
                    ids.push(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
                }
                a += (alen + 3) & !3;
            }
        } else if ty == NLMSG_ERROR {
            ack = ne_u32(msg, 16).map(|e| e as i32);
        }
        pos += (len + 3) & !3;
    }
    ack
}

/// Holds every packet of netfilter queue `QUEUE` for a fixed delay, then accepts it. One thread
/// reads the queue, another sleeps until each packet is due and accepts all due packets with
/// one batch verdict (the delay is constant, so packets leave in the order they came).
pub(crate) struct Delayer {
    stop: Arc<AtomicBool>,
    pub(crate) delayed: Arc<AtomicU64>,
    pub(crate) overruns: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Delayer {
    pub(crate) fn start(queue: u16, delay: Duration) -> Result<Delayer> {
        use nix::errno::Errno;
        use nix::sys::socket::{
            AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv,
            send, setsockopt, socket, sockopt,
        };
        use nix::sys::time::{TimeVal, TimeValLike};

        let fd: Arc<OwnedFd> = Arc::new(
            socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkNetFilter,
            )
            .context("netlink socket")?,
        );
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).context("binding the netlink socket")?;
        setsockopt(&*fd, sockopt::RcvBufForce, &(16 << 20)).context("SO_RCVBUFFORCE")?;
        setsockopt(&*fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(100))
            .context("SO_RCVTIMEO")?;
        let mut params = 0u32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        let cfg = nfq_message(
            NFQNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            1,
            queue,
            &[
                (NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]),
                (NFQA_CFG_PARAMS, &params),
                (NFQA_CFG_QUEUE_MAXLEN, &100_000u32.to_be_bytes()),
                (NFQA_CFG_MASK, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes()),
                (NFQA_CFG_FLAGS, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes()),
            ],
        );
        send(fd.as_raw_fd(), &cfg, MsgFlags::empty()).context("configuring the queue")?;
        let mut buf = vec![0u8; 1 << 16];
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
            .context("no answer from nfnetlink_queue")?;
        match parse_netlink(&buf[..n], &mut Vec::new()) {
            Some(0) => {}
            Some(e) => bail!("binding netfilter queue {queue}: {}", Errno::from_raw(-e)),
            None => bail!("binding netfilter queue {queue}: no acknowledgement"),
        }

        let stop = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(AtomicU64::new(0));
        let overruns = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<(Instant, u32)>();
        let reader = {
            let (fd, stop, delayed, overruns) =
                (fd.clone(), stop.clone(), delayed.clone(), overruns.clone());
            std::thread::Builder::new()
                .name("wan-delay-read".into())
                .spawn(move || {
                    let mut ids = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                            Ok(n) => {
                                let due = Instant::now() + delay;
                                ids.clear();
                                parse_netlink(&buf[..n], &mut ids);
                                for id in &ids {
                                    delayed.fetch_add(1, Ordering::Relaxed);
                                    if tx.send((due, *id)).is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(Errno::EAGAIN | Errno::EINTR) => {}
                            Err(Errno::ENOBUFS) => {
                                overruns.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("federation: WAN delayer stopped reading: {e}");
                                return;
                            }
                        }
                    }
                })?
        };
        let releaser = std::thread::Builder::new()
            .name("wan-delay-release".into())
            .spawn(move || {
                let mut next: Option<(Instant, u32)> = None;
                let mut seq = 2u32;
                loop {
                    let (due, id) = match next.take() {
                        Some(x) => x,
                        None => match rx.recv() {
                            Ok(x) => x,
                            Err(_) => return,
                        },
                    };
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let mut last = id;
                    loop {
                        match rx.try_recv() {
                            Ok((d, i)) if d <= Instant::now() => last = i,
                            Ok(x) => {
                                next = Some(x);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let mut hdr = NF_ACCEPT.to_be_bytes().to_vec();
                    hdr.extend_from_slice(&last.to_be_bytes());
                    let msg = nfq_message(
                        NFQNL_MSG_VERDICT_BATCH,
                        NLM_F_REQUEST,
                        seq,
                        queue,
                        &[(NFQA_VERDICT_HDR, &hdr)],
                    );
                    seq = seq.wrapping_add(1);
                    if let Err(e) = send(fd.as_raw_fd(), &msg, MsgFlags::empty()) {
                        eprintln!("federation: WAN delayer cannot send a verdict: {e}");
                    }
                }
            })?;
        Ok(Delayer {
            stop,
            delayed,
            overruns,
            threads: vec![reader, releaser],
        })
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// iptables rules in the namespace: one per WAN port and direction, each counting packets and
/// bytes, and queueing them to the delayer when there is a delay.
///
/// The rules sit on INPUT, not OUTPUT: on OUTPUT a held packet still belongs to the sending
/// socket, and TCP Small Queues then lets only about two packets per socket wait below TCP, which
/// capped a stream at two segments per delay (about 60 KB/s). On loopback a packet is detached
/// from its socket before INPUT, as netem detaches delayed packets, so TCP's windows and slow
/// start behave as over a real link of that delay.
struct Firewall;

/// Packets and bytes per rule, keyed `spt:PORT` / `dpt:PORT`.
type IpCounters = BTreeMap<String, (u64, u64)>;

impl Firewall {
    /// Rules for `ports`, each with its protocol (`tcp` or `udp`).
    fn install(ports: &[(&str, u16)], queue: Option<u16>) -> Result<Firewall> {
        for (proto, port) in ports {
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
        Ok(Firewall)
    }

    fn counters(&self) -> Result<IpCounters> {
        let text = sh("iptables", &["-w", "-L", "INPUT", "-v", "-x", "-n"])?;
        let mut m = IpCounters::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(pkts), Some(bytes)) = (
                f.first().and_then(|x| x.parse().ok()),
                f.get(1).and_then(|x| x.parse().ok()),
            ) else {
                continue;
            };
            if let Some(key) = f
                .iter()
                .find(|x| x.starts_with("spt:") || x.starts_with("dpt:"))
            {
                m.insert((*key).to_owned(), (pkts, bytes));
            }
        }
        Ok(m)
    }
}

fn ip_delta(a: &IpCounters, b: &IpCounters, key: &str) -> (u64, u64) {
    let (p0, b0) = a.get(key).copied().unwrap_or_default();
    let (p1, b1) = b.get(key).copied().unwrap_or_default();
    (p1.saturating_sub(p0), b1.saturating_sub(b0))
}

/// TCP connect times to the probe port (whose packets cross the delayer like the WAN's): the
/// SYN and the SYN-ACK each cross it once, so this is the round trip.
pub(crate) fn probe_rtt(port: u16, n: usize, listener: &TcpListener) -> Result<Vec<f64>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        v.push(ms(t.elapsed()));
        drop(s);
        let _ = listener.accept();
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Agents.

/// Starts datacenter `dc` (node `n1`) on `ports`, data in `dir/<dc>`, joining dc1 (on `join`)
/// when given; its log in `dir/<dc>.log`. The direct transport runs `meridian agent --dev`
/// joining dc1's WAN port; the gateway transport a config file with certificates naming dc1 by
/// its gateway (dc1 learns the others from their subscriptions).
fn start_agent(
    bin: &Path,
    dir: &Path,
    dc: &str,
    ports: Ports,
    join: Option<Ports>,
    setup: &Setup,
) -> Result<Agent> {
    let filter = procs::agent_log(AGENT_LOG);
    if let Some(pki) = &setup.pki {
        let mut c = crate::tools::open_config(dc, "n1", ports, &dir.join(dc));
        let f = pki.node_files(dc, "n1", &[])?;
        c.insecure = false;
        c.federation = Some(meridian_testkit::config::Federation {
            peers: join
                .map(|p| meridian_testkit::config::Peer {
                    dc: "dc1".to_owned(),
                    addresses: vec![format!("127.0.0.1:{}", p.gateway)],
                })
                .into_iter()
                .collect(),
            ..meridian_testkit::config::Federation::with_certs(&f.ca, &f.cert, &f.key)
        });
        c.set("federation", "transport", "gateway")
            .set("gateway", "trust_domain", TRUST_DOMAIN);
        return procs::configured_agent(dc, bin, &c, dir, &[("RUST_LOG", &filter)], None);
    }
    let join = join.map(|p| p.wan);
    let mut args: Vec<String> = ["--dev", "--dc", dc, "--node", "n1", "--bind", "127.0.0.1"]
        .map(str::to_owned)
        .into();
    args.push("--data-dir".to_owned());
    args.push(dir.join(dc).to_str().context("a UTF-8 path")?.to_owned());
    // One mesh: each DC's leader makes its mesh CA (the sidecar phase needs dc2's).
    args.push("--trust-domain".to_owned());
    args.push(TRUST_DOMAIN.to_owned());
    args.extend(ports.args());
    if let Some(j) = join {
        args.push("--join-wan".to_owned());
        args.push(format!("127.0.0.1:{j}"));
    }
    procs::agent(
        dc,
        bin,
        args,
        &[("RUST_LOG", &filter)],
        &dir.join(format!("{dc}.log")),
        ports,
        None,
    )
}

/// An echo server on loopback: the application behind web's sidecar.
async fn echo_app() -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(port)
}

/// One call through api's sidecar: whether a byte came back (web's sidecar let it through).
async fn mesh_call(upstream: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let call = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        let n = s.read(&mut b).await?;
        anyhow::Ok(n == 1)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), call).await,
        Ok(Ok(true))
    )
}

/// Phase 5c: sidecars for web and api in dc2 (`meridian connect proxy`), the intention api →
/// web written in dc1, deny and allow in turn, `rounds` times; each write's acknowledgement to
/// the first call through api's sidecar that web's sidecar treats by it (calls every 1 ms).
async fn sidecar_enforcement(
    bin: &Path,
    dir: &Path,
    http: &reqwest::Client,
    dc1: &Agent,
    dc2: &Agent,
    rounds: usize,
    wan_delay_ms: u64,
) -> Result<Enforcement> {
    eprintln!(
        "federation: sidecars: {rounds} intentions written in dc1, each awaited at web's sidecar in dc2"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(dc2.url("/v1/connect/ca/roots"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(Instant::now() < deadline, "dc2 has no mesh CA within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = echo_app().await?;
    let (web_in, upstream) = (free_port(), free_port());
    let agent = format!("127.0.0.1:{}", dc2.ports.http);
    let sidecar = |name: &str, extra: Vec<String>| -> Result<Proc> {
        let mut args: Vec<String> = ["connect", "proxy", "--http-addr", &agent, "--service", name]
            .map(str::to_owned)
            .into();
        args.extend(extra);
        procs::start(
            &format!("sidecar {name}"),
            None,
            bin,
            args,
            &[("RUST_LOG", "warn")],
            &dir.join(format!("sidecar-{name}.log")),
        )
    };
    let _web = sidecar(
        "web",
        vec![
            "--local".into(),
            format!("127.0.0.1:{app}"),
            "--listen".into(),
            format!("127.0.0.1:{web_in}"),
        ],
    )?;
    let _api = sidecar(
        "api",
        vec![
            "--local".into(),
            format!("127.0.0.1:{}", free_port()),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--upstream".into(),
            format!("web@dc2:{upstream}"),
        ],
    )?;
    let write = |action: &'static str| async move {
        let t = Instant::now();
        let r = http
            .put(dc1.url("/v1/connect/intentions/exact?source=api&destination=web"))
            .body(format!(r#"{{"Action": "{action}"}}"#))
            .send()
            .await?;
        ensure!(r.status().is_success(), "intention write: {}", r.status());
        anyhow::Ok(t.elapsed())
    };
    // The first allow: the sidecars registered, web's endpoints known in dc2, calls passing.
    write("allow").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mesh_call(upstream).await {
        ensure!(
            Instant::now() < deadline,
            "no call through the sidecars within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut deny, mut allow) = (Vec::new(), Vec::new());
    let (mut deny_timeouts, mut allow_timeouts) = (0, 0);
    for i in 0..rounds {
        let to_deny = i % 2 == 0;
        write(if to_deny { "deny" } else { "allow" }).await?;
        let acked = Instant::now();
        let mut seen = None;
        while acked.elapsed() < CONVERGE_TIMEOUT {
            if mesh_call(upstream).await != to_deny {
                seen = Some(ms(acked.elapsed()));
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        match (to_deny, seen) {
            (true, Some(v)) => deny.push(v),
            (false, Some(v)) => allow.push(v),
            (true, None) => deny_timeouts += 1,
            (false, None) => allow_timeouts += 1,
        }
    }
    Ok(Enforcement {
        attempted: rounds,
        deny: dist(deny),
        allow: dist(allow),
        deny_timeouts,
        allow_timeouts,
        target_p99_ms: wan_delay_ms as f64 + 50.0,
    })
}

/// The agent's process id; 0 once it has been killed, which `/proc` reads as gone.
fn pid(a: &Agent) -> u32 {
    a.proc.pid().unwrap_or(0)
}

/// `a`'s `/v1/federation/status`.
pub(crate) async fn status(http: &reqwest::Client, a: &Agent) -> Result<Value> {
    Ok(http
        .get(a.url("/v1/federation/status"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The origin `dc`'s export digest as this agent's replica holds it, if connected and synced.
pub(crate) fn replica_digest<'a>(status: &'a Value, dc: &str) -> Option<&'a str> {
    let r = status["Remotes"]
        .as_array()?
        .iter()
        .find(|r| r["Datacenter"] == dc)?;
    (r["Connected"] == true && r["Synced"] == true)
        .then(|| r["Digest"].as_str())
        .flatten()
}

/// The value of sample `key` in Prometheus text `text`, as a count (0 when absent).
pub(crate) fn metric(text: &str, key: &str) -> u64 {
    meridian_testkit::metrics::value(text, key).map_or(0, |v| v as u64)
}

/// What a subscriber received from `origin`, and what the origin served it.
#[derive(Clone, Copy, Default, Serialize)]
struct Bytes {
    received_bytes: u64,
    received_messages: u64,
}

async fn received(http: &reqwest::Client, sub: &Agent, origin: &str) -> Result<Bytes> {
    let text = meridian_testkit::metrics::scrape(http, &sub.base()).await?;
    Ok(Bytes {
        received_bytes: metric(
            &text,
            &format!("meridian_federation_received_bytes_total{{dc=\"{origin}\"}}"),
        ),
        received_messages: metric(
            &text,
            &format!("meridian_federation_received_messages_total{{dc=\"{origin}\"}}"),
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// CPU seconds of an agent since it started (0 once it is gone: every phase checks that the
/// agents still run).
fn cpu_seconds(pid: u32) -> f64 {
    meridian_testkit::meter::cpu_seconds(pid).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// DNS.

/// The A records of `m` if it is the answer to query `id` (empty for NXDOMAIN or no data);
/// `None` when it is not that answer.
fn a_records(m: &Message, id: u16) -> Option<Vec<Ipv4Addr>> {
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return None;
    }
    if m.metadata.response_code != ResponseCode::NoError {
        return Some(Vec::new());
    }
    Some(
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
    )
}

/// Asks one DNS server, over and over, whether a name has an address.
pub(crate) struct DnsProbe {
    sock: UdpSocket,
    server: SocketAddr,
    pub(crate) queries: u64,
    /// The query for the name last asked (no recursion desired, no EDNS), built once per name:
    /// the probe asks every millisecond.
    query: Option<(String, Message)>,
}

impl DnsProbe {
    pub(crate) fn new(server: SocketAddr) -> Result<DnsProbe> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(DnsProbe {
            sock,
            server,
            queries: 0,
            query: None,
        })
    }

    /// Whether the server's answer to `name` A holds `want` (false on no answer within 100 ms).
    pub(crate) fn has(&mut self, name: &str, want: Ipv4Addr) -> Result<bool> {
        let (_, q) = match &mut self.query {
            Some(q) if q.0 == name => q,
            slot => {
                let qname = Name::from_ascii(name).with_context(|| format!("bad name {name:?}"))?;
                let mut q = Message::query();
                q.add_query(Query::query(qname, RecordType::A));
                q.metadata.id = 0;
                q.metadata.recursion_desired = false;
                slot.insert((name.to_owned(), q))
            }
        };
        q.metadata.id = q.metadata.id.wrapping_add(1);
        let id = q.metadata.id;
        self.queries += 1;
        self.sock
            .send_to(&q.to_vec().context("encoding the query")?, self.server)?;
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Ok(m) = Message::from_vec(&buf[..n])
                        && let Some(addrs) = a_records(&m, id)
                    {
                        return Ok(addrs.contains(&want));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report.

#[derive(Serialize)]
struct Wan {
    /// How the delay was added.
    mode: String,
    /// The configured one-way delay between two DCs.
    one_way_delay_ms: u64,
    /// TCP connect times through the delayed path, before the benchmark.
    rtt_before_ms: Vec<f64>,
    /// The same at the end (the delay was still there).
    rtt_after_ms: Vec<f64>,
    /// Packets the delayer held.
    delayed_packets: u64,
    /// Netlink receive-buffer overruns (packets accepted without delay by fail-open, if any).
    overruns: u64,
}

#[derive(Serialize)]
struct Load {
    registrations: usize,
    clients: usize,
    acknowledged: usize,
    failed: usize,
    seconds: f64,
    per_second: f64,
    /// Bytes of the compact JSON bodies sent (acknowledged ones).
    json_body_bytes: u64,
}

#[derive(Serialize)]
struct DataSize {
    /// Entries rebuilt from dc1's API (`/v1/agent/services`, `/v1/catalog/nodes`).
    entries: usize,
    /// dc1's `Export.Entries`.
    exported_entries: u64,
    /// Sum of the protobuf sizes of those `Entry` messages (federation's wire encoding).
    protobuf_bytes: u64,
    /// Checks dc1 has (none expected; they would be part of the entries).
    checks: usize,
}

#[derive(Serialize)]
struct SyncRun {
    subscriber: String,
    /// From the subscriber's process start until its replica's digest equals dc1's export's.
    from_start_ms: f64,
    /// From the process start until its HTTP API first answered.
    http_ready_ms: f64,
    /// From the first status listing dc1 until the digests are equal: 0 since a node lists a
    /// remote DC only once its replica first synced (kept for the record; the target reads the
    /// log's figure).
    from_learned_ms: f64,
    /// From the subscriber's log: `joined` (dc1 discovered) to `replica synced` for dc1.
    log_joined_to_synced_ms: Option<f64>,
    received: Bytes,
    full_syncs: u64,
    /// What dc1 counted as served to this subscriber.
    served_bytes: u64,
    /// IP packets and bytes (headers, TLS, HTTP/2, gRPC framing) from dc1's WAN port.
    ip_packets_from_origin: u64,
    ip_bytes_from_origin: u64,
    /// IP bytes to dc1's WAN port (requests and ACKs).
    ip_bytes_to_origin: u64,
    received_over_protobuf_data: f64,
    ip_over_protobuf_data: f64,
    received_bytes_per_entry: f64,
    origin_cpu_seconds: f64,
    subscriber_cpu_seconds: f64,
}

#[derive(Serialize, Default)]
pub(crate) struct Dist {
    pub(crate) count: usize,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

pub(crate) fn dist(mut v: Vec<f64>) -> Dist {
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    Dist {
        count: v.len(),
        mean_ms: if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        },
        p50_ms: pct(0.5),
        p90_ms: pct(0.9),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    }
}

#[derive(Serialize)]
struct Convergence {
    attempted: usize,
    /// HTTP acknowledgement latency of the registrations in dc1.
    ack: Dist,
    dc2: Dist,
    dc3: Dist,
    dc2_timeouts: usize,
    dc3_timeouts: usize,
    seconds: f64,
    dns_queries: u64,
    /// The target: p99 at most the one-way delay plus 50 ms.
    target_p99_ms: f64,
    /// Bytes dc2 received from dc1 over the phase, per registration.
    dc2_bytes_per_change: f64,
    dc2_messages_per_change: f64,
}

/// Intentions written in dc1, one at a time, until dc2 and dc3 decide by them.
#[derive(Serialize)]
struct IntentionConvergence {
    attempted: usize,
    /// HTTP acknowledgement latency of the writes in dc1.
    ack: Dist,
    dc2: Dist,
    dc3: Dist,
    dc2_timeouts: usize,
    dc3_timeouts: usize,
    /// The same bound as registrations: one-way delay plus 50 ms.
    target_p99_ms: f64,
}

/// Intentions enforced by sidecars in dc2: the pair api → web written in dc1, deny and allow in
/// turn; from each write's acknowledgement to the first connection through api's sidecar that
/// web's sidecar (both in dc2) treats by it.
#[derive(Serialize)]
struct Enforcement {
    attempted: usize,
    deny: Dist,
    allow: Dist,
    deny_timeouts: usize,
    allow_timeouts: usize,
    target_p99_ms: f64,
}

#[derive(Serialize)]
struct Steady {
    changes: usize,
    spacing_ms: u64,
    /// From the first registration until dc2's replica digest equals dc1's.
    seconds: f64,
    dc2: Bytes,
    bytes_per_change: f64,
    messages_per_change: f64,
    /// Idle window before: what dc2 received from dc1 with no change (heartbeats).
    idle_seconds: f64,
    idle: Bytes,
    heartbeat_bytes_per_second: f64,
    /// `(bytes − heartbeat rate × seconds) / changes`: an upper bound on what heartbeats could
    /// add (an origin sends none while changes flow more often than its heartbeat interval).
    bytes_per_change_minus_idle_rate: f64,
    /// IP bytes from dc1's WAN port per change and per subscriber (dc2 and dc3 both follow).
    ip_bytes_per_change_per_subscriber: f64,
    ip_packets_per_change_per_subscriber: f64,
}

#[derive(Serialize)]
struct Process {
    dc: String,
    /// CPU seconds in each phase.
    cpu_seconds: BTreeMap<String, f64>,
    /// VmHWM and VmRSS after the steady state (none: the agent was gone).
    peak_rss_kib: Option<u64>,
    rss_kib_at_end: Option<u64>,
}

/// The memory phase: three fresh DCs, each registering a third of the instances, every node
/// then holding all of them (its own and two replicas).
#[derive(Serialize)]
struct Memory {
    /// Instances in all (100,000; 10,000 with `--quick`).
    instances: usize,
    instances_per_service: usize,
    /// Registrations acknowledged in all (the three DCs at once) and how long they took.
    acknowledged: usize,
    registration_seconds: f64,
    /// From the last acknowledgement until every replica holds its origin's digest.
    convergence_seconds: f64,
    nodes: Vec<MemoryNode>,
    /// (Σ RSS holding − Σ RSS empty) ÷ (3 × instances): resident bytes per instance held.
    rss_bytes_per_instance_held: f64,
}

#[derive(Serialize)]
struct MemoryNode {
    dc: String,
    /// Instances this DC registered (`services` services).
    own_instances: usize,
    services: usize,
    /// Instances in this node's replicas of the two other DCs (`/v1/federation/status`).
    replica_instances: u64,
    /// Entries this DC exports (its instances and its node).
    exported_entries: u64,
    /// VmRSS with the three DCs federated and nothing registered.
    rss_empty_kib: u64,
    /// CPU seconds from the first registration to convergence, VmRSS then, and VmHWM.
    usage: ProcessUsage,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    date: String,
    machine: String,
    command: String,
    quick: bool,
    /// How federation crossed the WAN.
    transport: Transport,
    services: usize,
    instances_per_service: usize,
    wan: Wan,
    load: Load,
    data: DataSize,
    initial_sync: Vec<SyncRun>,
    convergence: Convergence,
    intentions: IntentionConvergence,
    enforcement: Enforcement,
    steady_state: Steady,
    processes: Vec<Process>,
    memory: Memory,
    targets: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// The phases.

/// Registers `bodies` in dc1 with `clients` concurrent clients; bounded by count and `limit`.
async fn register_all(
    http: &reqwest::Client,
    url: String,
    bodies: Vec<Vec<u8>>,
    clients: usize,
    limit: Duration,
) -> Result<Load> {
    let count = bodies.len();
    let bodies = Arc::new(bodies);
    let url = Arc::new(url);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, bodies, next) = (http.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut bytes) = (0usize, 0usize, 0u64);
            while Instant::now() < deadline {
                let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                let r = http
                    .put(url.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    ok += 1;
                    bytes += body.len() as u64;
                } else {
                    failed += 1;
                }
            }
            (ok, failed, bytes)
        }));
    }
    let (mut ok, mut failed, mut bytes) = (0, 0, 0);
    for t in tasks {
        let (o, f, b) = t.await?;
        ok += o;
        failed += f;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Load {
        registrations: count,
        clients,
        acknowledged: ok,
        failed,
        seconds,
        per_second: ok as f64 / seconds,
        json_body_bytes: bytes,
    })
}

fn register_body(id: &str, name: &str, port: u16, addr: Ipv4Addr) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "ID": id, "Name": name, "Port": port, "Address": addr.to_string(),
    }))?)
}

async fn put(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<()> {
    let r = http
        .put(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    if !status.is_success() {
        bail!(
            "registration refused: {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// The protobuf size of dc1's exported entries, rebuilt from its HTTP API exactly as federation
/// exports them (`federation::entry::export_entry`: one entry per node and per instance).
async fn data_size(http: &reqwest::Client, dc1: &Agent) -> Result<DataSize> {
    let get = |path: &str| {
        let url = dc1.url(path);
        async move {
            http.get(&url)
                .timeout(Duration::from_secs(120))
                .send()
                .await?
                .error_for_status()?
                .json::<Value>()
                .await
                .with_context(|| format!("GET {url}"))
        }
    };
    let services = get("/v1/agent/services").await?;
    let nodes = get("/v1/catalog/nodes").await?;
    let checks = get("/v1/agent/checks").await?;
    let status = status(http, dc1).await?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let n = |v: &Value| v.as_u64().unwrap_or_default();
    let meta = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default()
    };
    let mut entries = 0usize;
    let mut bytes = 0u64;
    let node_list = nodes.as_array().context("nodes: not a list")?;
    let node_name = node_list
        .first()
        .map(|v| s(&v["Node"]))
        .unwrap_or_else(|| "n1".into());
    for v in node_list {
        let e = pb::Entry {
            entry: Some(pb::entry::Entry::Node(pb::NodeEntry {
                node: Some(pb::Node {
                    name: s(&v["Node"]),
                    address: s(&v["Address"]),
                    meta: meta(&v["Meta"]),
                    create_index: n(&v["CreateIndex"]),
                    modify_index: n(&v["ModifyIndex"]),
                }),
                checks: vec![],
            })),
        };
        entries += 1;
        bytes += e.encoded_len() as u64;
    }
    for v in services
        .as_object()
        .context("services: not an object")?
        .values()
    {
        let e = pb::Entry {
            entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
                instance: Some(pb::Instance {
                    id: s(&v["ID"]),
                    service: s(&v["Service"]),
                    node: node_name.clone(),
                    address: s(&v["Address"]),
                    port: n(&v["Port"]) as u32,
                    tags: v["Tags"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect())
                        .unwrap_or_default(),
                    meta: meta(&v["Meta"]),
                    weight_passing: n(&v["Weights"]["Passing"]) as u32,
                    weight_warning: n(&v["Weights"]["Warning"]) as u32,
                    create_index: n(&v["CreateIndex"]),
                    modify_index: n(&v["ModifyIndex"]),
                    proxy: None,
                }),
                checks: vec![],
            })),
        };
        entries += 1;
        bytes += e.encoded_len() as u64;
    }
    Ok(DataSize {
        entries,
        exported_entries: n(&status["Export"]["Entries"]),
        protobuf_bytes: bytes,
        checks: checks.as_object().map_or(0, |o| o.len()),
    })
}

/// Seconds of the day of a log line's RFC 3339 timestamp.
fn log_seconds(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let time = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = time.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// `joined` (dc1) to the first `replica synced` for dc1, from an agent's log.
fn log_sync_ms(log: &Path, origin: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let dc = format!("dc={origin}");
    let joined = text
        .lines()
        .find(|l| l.contains(" joined") && l.contains(&dc))
        .and_then(log_seconds)?;
    let synced = text
        .lines()
        .find(|l| l.contains("replica synced") && l.contains(&dc))
        .and_then(log_seconds)?;
    Some((synced - joined) * 1000.0)
}

/// Starts `dc` joining dc1 and measures its initial sync of dc1's catalog.
#[allow(clippy::too_many_arguments)]
async fn initial_sync(
    http: &reqwest::Client,
    bin: &Path,
    dir: &Path,
    dc: &str,
    ports: Ports,
    dc1: &mut Agent,
    fw: Option<&Firewall>,
    data: &DataSize,
    setup: &Setup,
) -> Result<(Agent, SyncRun)> {
    let want = status(http, dc1).await?["Export"]["Digest"]
        .as_str()
        .context("dc1 exports no digest")?
        .to_owned();
    let ip0 = fw.map(Firewall::counters).transpose()?.unwrap_or_default();
    let cpu0 = cpu_seconds(pid(dc1));
    let t0 = Instant::now();
    let mut sub = start_agent(bin, dir, dc, ports, Some(dc1.ports), setup)?;
    let (mut ready, mut learned) = (None, None);
    let deadline = t0 + Duration::from_secs(120);
    let synced = loop {
        procs::check_running(&mut sub.proc)?;
        procs::check_running(&mut dc1.proc)?;
        if let Ok(st) = status(http, &sub).await {
            let now = t0.elapsed();
            ready.get_or_insert(now);
            let listed = st["Remotes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["Datacenter"] == "dc1"));
            if listed {
                learned.get_or_insert(now);
            }
            if replica_digest(&st, "dc1") == Some(want.as_str()) {
                break now;
            }
        }
        if Instant::now() > deadline {
            bail!("{dc} did not sync dc1's catalog within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let ready = ready.unwrap_or(synced);
    let learned = learned.unwrap_or(synced);
    let got = received(http, &sub, "dc1").await?;
    let sub_text = meridian_testkit::metrics::scrape(http, &sub.base()).await?;
    let origin_text = meridian_testkit::metrics::scrape(http, &dc1.base()).await?;
    let ip1 = fw.map(Firewall::counters).transpose()?.unwrap_or_default();
    let (_, wan1) = setup.wan(&dc1.ports);
    let (pk_from, by_from) = ip_delta(&ip0, &ip1, &format!("spt:{wan1}"));
    let (_, by_to) = ip_delta(&ip0, &ip1, &format!("dpt:{wan1}"));
    let data_bytes = data.protobuf_bytes.max(1) as f64;
    let run = SyncRun {
        subscriber: dc.to_owned(),
        from_start_ms: ms(synced),
        http_ready_ms: ms(ready),
        from_learned_ms: ms(synced.saturating_sub(learned)),
        log_joined_to_synced_ms: log_sync_ms(sub.proc.log(), "dc1"),
        received: got,
        full_syncs: metric(
            &sub_text,
            "meridian_federation_full_syncs_total{dc=\"dc1\"}",
        ),
        served_bytes: metric(
            &origin_text,
            &format!("meridian_federation_served_bytes_total{{subscriber_dc=\"{dc}\"}}"),
        ),
        ip_packets_from_origin: pk_from,
        ip_bytes_from_origin: by_from,
        ip_bytes_to_origin: by_to,
        received_over_protobuf_data: got.received_bytes as f64 / data_bytes,
        ip_over_protobuf_data: by_from as f64 / data_bytes,
        received_bytes_per_entry: got.received_bytes as f64 / data.exported_entries.max(1) as f64,
        origin_cpu_seconds: cpu_seconds(pid(dc1)) - cpu0,
        subscriber_cpu_seconds: cpu_seconds(pid(&sub)),
    };
    eprintln!(
        "federation: {dc} synced dc1 ({} entries) in {:.0} ms from its start, {:.0} ms after \
         learning dc1 (log: {}); received {} B in {} messages ({:.2}× the protobuf data), \
         {} IP bytes from dc1's WAN port ({:.2}×)",
        data.exported_entries,
        run.from_start_ms,
        run.from_learned_ms,
        run.log_joined_to_synced_ms
            .map_or("-".into(), |v| format!("{v:.0} ms")),
        got.received_bytes,
        got.received_messages,
        run.received_over_protobuf_data,
        by_from,
        run.ip_over_protobuf_data
    );
    Ok((sub, run))
}

/// Waits until every agent's replica of every other DC has that DC's export digest.
async fn wait_mesh(
    http: &reqwest::Client,
    agents: &mut [&mut Agent],
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut statuses = Vec::new();
        for a in agents.iter_mut() {
            procs::check_running(&mut a.proc)?;
            statuses.push(status(http, a).await.ok());
        }
        let ok = statuses.iter().enumerate().all(|(i, s)| {
            let Some(s) = s else { return false };
            statuses.iter().enumerate().all(|(j, o)| {
                i == j
                    || o.as_ref().is_some_and(|o| {
                        let dc = o["Datacenter"].as_str().unwrap_or_default();
                        replica_digest(s, dc).is_some()
                            && replica_digest(s, dc) == o["Export"]["Digest"].as_str()
                    })
            })
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the three datacenters did not converge within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `sub`'s replica of dc1 has dc1's export digest.
async fn wait_replica(
    http: &reqwest::Client,
    dc1: &Agent,
    sub: &Agent,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let (Ok(o), Ok(s)) = (status(http, dc1).await, status(http, sub).await)
            && o["Export"]["Digest"].as_str().is_some()
            && replica_digest(&s, "dc1") == o["Export"]["Digest"].as_str()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{}'s replica of dc1 did not converge within {limit:?}",
                sub.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The address of convergence registration `i`.
pub(crate) fn conv_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (i / 256) as u8, (i % 256) as u8)
}

/// Instances of the memory phase in all (a third registered in each DC), and with `--quick`.
const MEMORY_INSTANCES: usize = 100_000;
const MEMORY_INSTANCES_QUICK: usize = 10_000;

/// The memory phase: starts dc1, dc2 and dc3 afresh in `dir` (dc2 and dc3 joining dc1), waits
/// until they are federated, reads each agent's RSS, registers `instances` between them (a
/// third in each DC, all three at once, `opt.instances` per service), waits until every replica
/// holds its origin's digest, and reads each agent's RSS, peak RSS and CPU seconds again.
async fn memory_phase(
    http: &reqwest::Client,
    bin: &Path,
    dir: &Path,
    ports: [Ports; 3],
    instances: usize,
    opt: &Options,
    setup: &Setup,
) -> Result<Memory> {
    std::fs::create_dir_all(dir)?;
    let per_service = opt.instances.max(1);
    eprintln!(
        "federation: memory: three fresh DCs registering {instances} instances between them \
         ({per_service} per service), each node then holding all of them"
    );
    let mut a1 = start_agent(bin, dir, "dc1", ports[0], None, setup)?;
    leader_known(http, &[a1.base()], Duration::from_secs(60)).await?;
    let mut a2 = start_agent(bin, dir, "dc2", ports[1], Some(a1.ports), setup)?;
    let mut a3 = start_agent(bin, dir, "dc3", ports[2], Some(a1.ports), setup)?;
    leader_known(http, &[a2.base(), a3.base()], Duration::from_secs(60)).await?;
    wait_mesh(
        http,
        &mut [&mut a1, &mut a2, &mut a3],
        Duration::from_secs(60),
    )
    .await?;
    let agents = [&a1, &a2, &a3];
    let empty: Vec<u64> = agents
        .iter()
        .map(|a| status_kib(pid(a), "VmRSS:").unwrap_or(0))
        .collect();
    let mut meters: Vec<Meter> = agents
        .iter()
        .map(|a| Meter::start(&a.name, pid(a)))
        .collect();
    // DC k registers instances k, k + 3, k + 6, …: a third each, the first DCs one more.
    let shares: Vec<usize> = (0..3).map(|k| (instances + 2 - k) / 3).collect();
    let bodies = |share: usize| -> Result<Vec<Vec<u8>>> {
        (0..share)
            .map(|i| {
                let (s, k) = (i / per_service, i % per_service);
                register_body(
                    &format!("svc-{s}-{k}"),
                    &format!("svc-{s}"),
                    20_000u16.saturating_add(k as u16),
                    Ipv4Addr::new(10, (k + 1) as u8, (s / 256) as u8, (s % 256) as u8),
                )
            })
            .collect()
    };
    let (b1, b2, b3) = (bodies(shares[0])?, bodies(shares[1])?, bodies(shares[2])?);
    let url = |a: &Agent| a.url("/v1/agent/service/register");
    let limit = Duration::from_secs(600);
    let t0 = Instant::now();
    let (l1, l2, l3) = tokio::join!(
        register_all(http, url(agents[0]), b1, opt.clients, limit),
        register_all(http, url(agents[1]), b2, opt.clients, limit),
        register_all(http, url(agents[2]), b3, opt.clients, limit),
    );
    let loads = [l1?, l2?, l3?];
    let registration_seconds = t0.elapsed().as_secs_f64();
    let acknowledged: usize = loads.iter().map(|l| l.acknowledged).sum();
    ensure!(
        acknowledged == instances,
        "memory: only {acknowledged} of {instances} registrations were acknowledged"
    );
    let t1 = Instant::now();
    wait_mesh(
        http,
        &mut [&mut a1, &mut a2, &mut a3],
        Duration::from_secs(300),
    )
    .await?;
    let convergence_seconds = t1.elapsed().as_secs_f64();
    for m in &mut meters {
        m.sample();
    }
    let agents = [&a1, &a2, &a3];
    let mut nodes = Vec::new();
    for (k, a) in agents.iter().enumerate() {
        let st = status(http, a).await?;
        let replica_instances: u64 = st["Remotes"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["Instances"].as_u64()).sum())
            .unwrap_or(0);
        let usage = meters[k].usage();
        eprintln!(
            "federation: memory: {} holds {} own + {} replica instances: RSS {} (empty {}), \
             peak {}, {:.2} CPU s",
            a.name,
            shares[k],
            replica_instances,
            mib(usage.rss_kib),
            mib(empty[k]),
            mib(usage.peak_rss_kib),
            usage.cpu_seconds
        );
        nodes.push(MemoryNode {
            dc: a.name.clone(),
            own_instances: shares[k],
            services: shares[k].div_ceil(per_service),
            replica_instances,
            exported_entries: st["Export"]["Entries"].as_u64().unwrap_or(0),
            rss_empty_kib: empty[k],
            usage,
        });
    }
    drop((a1, a2, a3));
    let held: u64 = nodes
        .iter()
        .map(|n| n.own_instances as u64 + n.replica_instances)
        .sum();
    let grown: f64 = nodes
        .iter()
        .map(|n| n.usage.rss_kib as f64 - n.rss_empty_kib as f64)
        .sum();
    Ok(Memory {
        instances,
        instances_per_service: per_service,
        acknowledged,
        registration_seconds,
        convergence_seconds,
        nodes,
        rss_bytes_per_instance_held: grown * 1024.0 / held.max(1) as f64,
    })
}

/// Runs the phases in a temporary folder, kept (with the agents' logs) when something fails or
/// when `MERIDIAN_BENCH_KEEP` is set.
async fn inner(
    bin: &Path,
    quick: bool,
    out: &Path,
    opt: &Options,
    netns: Option<String>,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("meridian-bench-fed")
        .tempdir()?;
    let r = phases(bin, quick, out, opt, netns, dir.path()).await;
    if r.is_err() || std::env::var_os("MERIDIAN_BENCH_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!(
            "federation: the agents' logs are kept in {}",
            kept.display()
        );
    }
    r
}

async fn phases(
    bin: &Path,
    quick: bool,
    out: &Path,
    opt: &Options,
    netns: Option<String>,
    dir: &Path,
) -> Result<()> {
    let delay = Duration::from_millis(if netns.is_some() { opt.wan_delay_ms } else { 0 });
    let ports = if netns.is_some() {
        [fixed_ports(1), fixed_ports(2), fixed_ports(3)]
    } else {
        [Ports::free(), Ports::free(), Ports::free()]
    };
    let probe_port = if netns.is_some() {
        PROBE_PORT
    } else {
        meridian_testkit::free_port()
    };
    let probe = TcpListener::bind(("127.0.0.1", probe_port))?;
    let setup = Setup::new(opt.transport, dir)?;

    // The WAN: the delayer first, then the rules that feed it.
    let (delayer, fw, mode) = match &netns {
        Some(ns) => {
            let delayer = if delay.is_zero() {
                None
            } else {
                Some(Delayer::start(QUEUE, delay).context("starting the WAN delayer")?)
            };
            let fw = Firewall::install(
                &[
                    setup.wan(&ports[0]),
                    setup.wan(&ports[1]),
                    setup.wan(&ports[2]),
                    ("tcp", probe_port),
                ],
                delayer.as_ref().map(|_| QUEUE),
            )?;
            let mode = if delay.is_zero() {
                format!("namespace {ns}, no delay")
            } else {
                format!(
                    "namespace {ns}: every {} held {} ms by an NFQUEUE delayer (the kernel has \
                     no netem), loopback MTU 1500",
                    match setup.transport {
                        Transport::Direct => "TCP packet to or from a WAN port",
                        Transport::Gateway => "tunnel (UDP) packet to or from a gateway port",
                    },
                    delay.as_millis()
                )
            };
            (delayer, Some(fw), mode)
        }
        None => (
            None,
            None,
            "host loopback, NO delay (no network namespace: not root?)".to_owned(),
        ),
    };
    let rtt_before = tokio::task::block_in_place(|| probe_rtt(probe_port, 5, &probe))?;
    eprintln!(
        "federation: WAN {mode}; TCP connect RTT through it: {}",
        rtt_before
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
            + " ms"
    );

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(opt.clients)
        .tcp_nodelay(true)
        .build()?;

    // 1. dc1 alone, loaded.
    let mut dc1 = start_agent(bin, dir, "dc1", ports[0], None, &setup)?;
    leader_known(&http, &[dc1.base()], Duration::from_secs(60)).await?;
    procs::check_running(&mut dc1.proc)?;
    let mut cpu: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    let mut mark = |phase: &str, agents: &[(&str, u32)]| {
        for (dc, pid) in agents {
            // A gone agent gets no mark: its later phases show no figure.
            if let Some(v) = meridian_testkit::meter::cpu_seconds(*pid) {
                cpu.entry((*dc).to_owned())
                    .or_default()
                    .push((phase.to_owned(), v));
            }
        }
    };
    mark("start", &[("dc1", pid(&dc1))]);
    let mut bodies = Vec::with_capacity(opt.services * opt.instances);
    for s in 0..opt.services {
        for k in 0..opt.instances {
            bodies.push(register_body(
                &format!("svc-{s}-{k}"),
                &format!("svc-{s}"),
                20_000 + k as u16,
                Ipv4Addr::new(10, (k + 1) as u8, (s / 256) as u8, (s % 256) as u8),
            )?);
        }
    }
    eprintln!(
        "federation: registering {} services × {} instances in dc1 ({} clients)",
        opt.services, opt.instances, opt.clients
    );
    let load = register_all(
        &http,
        dc1.url("/v1/agent/service/register"),
        bodies,
        opt.clients,
        Duration::from_secs(600),
    )
    .await?;
    eprintln!(
        "federation: {} acknowledged in {:.1} s ({:.0}/s), {} failed",
        load.acknowledged, load.seconds, load.per_second, load.failed
    );
    ensure!(
        load.acknowledged == load.registrations,
        "only {} of {} registrations were acknowledged",
        load.acknowledged,
        load.registrations
    );
    mark("load", &[("dc1", pid(&dc1))]);
    let data = data_size(&http, &dc1).await?;
    eprintln!(
        "federation: dc1 exports {} entries; rebuilt {} entries from its API: {} B of protobuf \
         ({:.1} B per entry); JSON bodies sent: {} B",
        data.exported_entries,
        data.entries,
        data.protobuf_bytes,
        data.protobuf_bytes as f64 / data.entries.max(1) as f64,
        load.json_body_bytes
    );
    if data.entries as u64 != data.exported_entries || data.checks > 0 {
        eprintln!(
            "federation: WARNING: the rebuilt data may differ from the export ({} entries \
             rebuilt, {} exported, {} checks)",
            data.entries, data.exported_entries, data.checks
        );
    }

    // 2, 3. Initial syncs.
    let (mut dc2, sync2) = initial_sync(
        &http,
        bin,
        dir,
        "dc2",
        ports[1],
        &mut dc1,
        fw.as_ref(),
        &data,
        &setup,
    )
    .await?;
    let (mut dc3, sync3) = initial_sync(
        &http,
        bin,
        dir,
        "dc3",
        ports[2],
        &mut dc1,
        fw.as_ref(),
        &data,
        &setup,
    )
    .await?;
    wait_mesh(
        &http,
        &mut [&mut dc1, &mut dc2, &mut dc3],
        Duration::from_secs(60),
    )
    .await?;
    let pids = [("dc1", pid(&dc1)), ("dc2", pid(&dc2)), ("dc3", pid(&dc3))];
    mark("initial sync", &pids);

    // 4. Idle: heartbeats only.
    let idle_for = Duration::from_secs(if quick { 3 } else { 5 });
    let i0 = received(&http, &dc2, "dc1").await?;
    let t_idle = Instant::now();
    tokio::time::sleep(idle_for).await;
    let i1 = received(&http, &dc2, "dc1").await?;
    let idle_seconds = t_idle.elapsed().as_secs_f64();
    let idle = Bytes {
        received_bytes: i1.received_bytes - i0.received_bytes,
        received_messages: i1.received_messages - i0.received_messages,
    };
    mark("idle", &pids);

    // 5. Convergence.
    eprintln!(
        "federation: convergence: {} registrations in dc1, each awaited in dc2's and dc3's DNS",
        opt.registrations
    );
    let url = dc1.url("/v1/agent/service/register");
    let mut probes = [DnsProbe::new(dc2.dns())?, DnsProbe::new(dc3.dns())?];
    let (mut acks, mut seen) = (Vec::new(), [Vec::new(), Vec::new()]);
    let mut timeouts = [0usize; 2];
    let c0 = received(&http, &dc2, "dc1").await?;
    let t_conv = Instant::now();
    let conv_deadline = t_conv + Duration::from_secs(if quick { 120 } else { 600 });
    let mut attempted = 0;
    for i in 0..opt.registrations {
        if Instant::now() > conv_deadline {
            eprintln!("federation: convergence phase stopped at its time bound after {i}");
            break;
        }
        attempted += 1;
        let name = format!("conv-{i}");
        let addr = conv_addr(i);
        let body = register_body(&name, &name, 9000, addr)?;
        let t = Instant::now();
        put(&http, &url, body).await?;
        let acked = Instant::now();
        acks.push(ms(acked - t));
        let qname = format!("{name}.service.dc1.consul.");
        let got = tokio::task::block_in_place(|| -> Result<[Option<f64>; 2]> {
            let mut got = [None, None];
            loop {
                for (k, p) in probes.iter_mut().enumerate() {
                    if got[k].is_none() && p.has(&qname, addr)? {
                        got[k] = Some(ms(acked.elapsed()));
                    }
                }
                if got.iter().all(Option::is_some) || acked.elapsed() > CONVERGE_TIMEOUT {
                    return Ok(got);
                }
                std::thread::sleep(POLL);
            }
        })?;
        for k in 0..2 {
            match got[k] {
                Some(v) => seen[k].push(v),
                None => timeouts[k] += 1,
            }
        }
        if (i + 1) % 100 == 0 {
            procs::check_running(&mut dc1.proc)?;
            procs::check_running(&mut dc2.proc)?;
            procs::check_running(&mut dc3.proc)?;
            let d = dist(seen[0].clone());
            eprintln!(
                "federation: {} registrations: dc2 p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                i + 1,
                d.p50_ms,
                d.p99_ms,
                d.max_ms
            );
        }
    }
    let conv_seconds = t_conv.elapsed().as_secs_f64();
    wait_replica(&http, &dc1, &dc2, Duration::from_secs(30)).await?;
    let c1 = received(&http, &dc2, "dc1").await?;
    let [seen2, seen3] = seen;
    let convergence = Convergence {
        attempted,
        ack: dist(acks),
        dc2: dist(seen2),
        dc3: dist(seen3),
        dc2_timeouts: timeouts[0],
        dc3_timeouts: timeouts[1],
        seconds: conv_seconds,
        dns_queries: probes.iter().map(|p| p.queries).sum(),
        target_p99_ms: opt.wan_delay_ms as f64 + 50.0,
        dc2_bytes_per_change: (c1.received_bytes - c0.received_bytes) as f64
            / attempted.max(1) as f64,
        dc2_messages_per_change: (c1.received_messages - c0.received_messages) as f64
            / attempted.max(1) as f64,
    };
    mark("convergence", &pids);

    // 5b. Intentions: one at a time in dc1, each awaited in dc2's and dc3's decisions.
    let rounds = (opt.registrations / 5).clamp(10, 200);
    eprintln!(
        "federation: intentions: {rounds} written in dc1, each awaited in dc2's and dc3's /check"
    );
    let (mut acks, mut seen) = (Vec::new(), [Vec::new(), Vec::new()]);
    let mut timeouts = [0usize; 2];
    for i in 0..rounds {
        let source = format!("caller-{i}");
        let t = Instant::now();
        let r = http
            .put(dc1.url(&format!(
                "/v1/connect/intentions/exact?source={source}&destination=web"
            )))
            .body(r#"{"Action": "allow"}"#)
            .send()
            .await?;
        ensure!(r.status().is_success(), "intention write: {}", r.status());
        let acked = Instant::now();
        acks.push(ms(acked - t));
        let path = format!("/v1/connect/intentions/check?source={source}&destination=web");
        let mut got = [None, None];
        while got.iter().any(Option::is_none) && acked.elapsed() < CONVERGE_TIMEOUT {
            for (k, a) in [&dc2, &dc3].into_iter().enumerate() {
                if got[k].is_none() {
                    let v: Value = http.get(a.url(&path)).send().await?.json().await?;
                    if v["Allowed"] == true {
                        got[k] = Some(ms(acked.elapsed()));
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
        for k in 0..2 {
            match got[k] {
                Some(v) => seen[k].push(v),
                None => timeouts[k] += 1,
            }
        }
    }
    let [seen2, seen3] = seen;
    let intentions = IntentionConvergence {
        attempted: rounds,
        ack: dist(acks),
        dc2: dist(seen2),
        dc3: dist(seen3),
        dc2_timeouts: timeouts[0],
        dc3_timeouts: timeouts[1],
        target_p99_ms: opt.wan_delay_ms as f64 + 50.0,
    };
    mark("intentions", &pids);

    // 5c. The same through sidecars: web's and api's in dc2, api → web written in dc1.
    let enforcement =
        sidecar_enforcement(bin, dir, &http, &dc1, &dc2, rounds, opt.wan_delay_ms).await?;
    mark("enforcement", &pids);

    // 6. Steady state: single changes, spaced.
    let s0 = received(&http, &dc2, "dc1").await?;
    let ip0 = fw
        .as_ref()
        .map(Firewall::counters)
        .transpose()?
        .unwrap_or_default();
    let t_steady = Instant::now();
    for j in 0..opt.changes {
        let name = format!("chg-{j}");
        put(
            &http,
            &url,
            register_body(&name, &name, 9001, Ipv4Addr::new(10, 201, 0, 1))?,
        )
        .await?;
        tokio::time::sleep(CHANGE_SPACING).await;
    }
    wait_replica(&http, &dc1, &dc2, Duration::from_secs(30)).await?;
    wait_replica(&http, &dc1, &dc3, Duration::from_secs(30)).await?;
    let steady_seconds = t_steady.elapsed().as_secs_f64();
    let s1 = received(&http, &dc2, "dc1").await?;
    let ip1 = fw
        .as_ref()
        .map(Firewall::counters)
        .transpose()?
        .unwrap_or_default();
    let (pk, by) = ip_delta(&ip0, &ip1, &format!("spt:{}", setup.wan(&dc1.ports).1));
    let changes = opt.changes.max(1) as f64;
    let delta = Bytes {
        received_bytes: s1.received_bytes - s0.received_bytes,
        received_messages: s1.received_messages - s0.received_messages,
    };
    let hb_rate = idle.received_bytes as f64 / idle_seconds;
    let steady = Steady {
        changes: opt.changes,
        spacing_ms: CHANGE_SPACING.as_millis() as u64,
        seconds: steady_seconds,
        dc2: delta,
        bytes_per_change: delta.received_bytes as f64 / changes,
        messages_per_change: delta.received_messages as f64 / changes,
        idle_seconds,
        idle,
        heartbeat_bytes_per_second: hb_rate,
        bytes_per_change_minus_idle_rate: (delta.received_bytes as f64 - hb_rate * steady_seconds)
            / changes,
        ip_bytes_per_change_per_subscriber: by as f64 / changes / 2.0,
        ip_packets_per_change_per_subscriber: pk as f64 / changes / 2.0,
    };
    mark("steady state", &pids);
    eprintln!(
        "federation: steady state: {:.1} B and {:.2} messages per change received by dc2 \
         ({:.0} IP bytes per change per subscriber); idle: {:.1} B/s of heartbeats",
        steady.bytes_per_change,
        steady.messages_per_change,
        steady.ip_bytes_per_change_per_subscriber,
        steady.heartbeat_bytes_per_second
    );

    let rtt_after = tokio::task::block_in_place(|| probe_rtt(probe_port, 5, &probe))?;
    let processes = [&dc1, &dc2, &dc3]
        .iter()
        .map(|a| {
            let marks = cpu.get(&a.name).cloned().unwrap_or_default();
            let mut per = BTreeMap::new();
            let mut prev = 0.0;
            for (phase, v) in marks {
                if phase != "start" {
                    per.insert(phase, v - prev);
                }
                prev = v;
            }
            Process {
                dc: a.name.clone(),
                cpu_seconds: per,
                peak_rss_kib: status_kib(pid(a), "VmHWM:"),
                rss_kib_at_end: status_kib(pid(a), "VmRSS:"),
            }
        })
        .collect();
    let wan = Wan {
        mode,
        one_way_delay_ms: delay.as_millis() as u64,
        rtt_before_ms: rtt_before,
        rtt_after_ms: rtt_after,
        delayed_packets: delayer
            .as_ref()
            .map_or(0, |d| d.delayed.load(Ordering::Relaxed)),
        overruns: delayer
            .as_ref()
            .map_or(0, |d| d.overruns.load(Ordering::Relaxed)),
    };
    drop(dc3);
    drop(dc2);
    drop(dc1);

    // 7. Memory: three fresh DCs holding the instances between them, with the same WAN delay.
    let memory_instances = if quick {
        MEMORY_INSTANCES_QUICK
    } else {
        MEMORY_INSTANCES
    };
    let memory_ports = if netns.is_some() {
        let p = [fixed_ports(4), fixed_ports(5), fixed_ports(6)];
        Firewall::install(
            &[setup.wan(&p[0]), setup.wan(&p[1]), setup.wan(&p[2])],
            delayer.as_ref().map(|_| QUEUE),
        )?;
        p
    } else {
        [Ports::free(), Ports::free(), Ports::free()]
    };
    let memory = memory_phase(
        &http,
        bin,
        &dir.join("memory"),
        memory_ports,
        memory_instances,
        opt,
        &setup,
    )
    .await?;
    drop(delayer);

    let target = convergence.target_p99_ms;
    let syncs = [sync2, sync3];
    let targets = vec![
        replica_target(
            "convergence",
            [
                ("dc2", &convergence.dc2, convergence.dc2_timeouts),
                ("dc3", &convergence.dc3, convergence.dc3_timeouts),
            ],
            target,
        ),
        replica_target(
            "intention enforced by web's sidecar in dc2",
            [
                ("deny", &enforcement.deny, enforcement.deny_timeouts),
                ("allow", &enforcement.allow, enforcement.allow_timeouts),
            ],
            enforcement.target_p99_ms,
        ),
        replica_target(
            "intention in force",
            [
                ("dc2", &intentions.dc2, intentions.dc2_timeouts),
                ("dc3", &intentions.dc3, intentions.dc3_timeouts),
            ],
            intentions.target_p99_ms,
        ),
        format!(
            "initial sync under 2 s (the subscriber's log: dc1 joined → replica synced; from \
             its start when the log has no such lines): {}",
            syncs
                .iter()
                .map(|s| {
                    // Not `from_learned_ms`: a node lists a remote DC only once its replica has
                    // synced, so the first status naming dc1 already has its digest (0 ms).
                    let ms = s.log_joined_to_synced_ms.unwrap_or(s.from_start_ms);
                    format!("{} {:.0} ms ({})", s.subscriber, ms, met(ms < 2000.0))
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "initial sync bytes under 2× the protobuf size of the data: {}",
            syncs
                .iter()
                .map(|s| format!(
                    "{} received {:.2}×, IP {:.2}× ({})",
                    s.subscriber,
                    s.received_over_protobuf_data,
                    s.ip_over_protobuf_data,
                    met(s.received_over_protobuf_data < 2.0
                        && (fw.is_none() || s.ip_over_protobuf_data < 2.0))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    let command = std::iter::once("meridian-bench".to_owned())
        .chain(std::env::args().skip(1).take_while(|a| a != "--in-netns"))
        .collect::<Vec<_>>()
        .join(" ");
    let report = Report {
        benchmark: "federation",
        date: crate::today(),
        machine: crate::machine(),
        command,
        quick,
        transport: opt.transport,
        services: opt.services,
        instances_per_service: opt.instances,
        wan,
        load,
        data,
        initial_sync: syncs.into(),
        convergence,
        intentions,
        enforcement,
        steady_state: steady,
        processes,
        memory,
        targets,
    };
    let md = markdown(&report)?;
    crate::tools::write_report(out, "federation", &report, &md)
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

pub(crate) fn kib(b: u64) -> String {
    if b >= 10 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    } else if b >= 10 << 10 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// One replica's times: its name, their distribution, and how many never came.
type ReplicaRow<'a> = (&'a str, &'a Dist, usize);

/// The verdict of a replica's p99 against `target`: met when within it and nothing timed out.
fn replica_met((_, d, timeouts): &ReplicaRow<'_>, target: f64) -> &'static str {
    met(d.p99_ms <= target && *timeouts == 0)
}

/// The table of the replicas' times (`verb`: what a replica did, "answered", "decided").
fn replica_table(
    s: &mut String,
    verb: &str,
    rows: [ReplicaRow<'_>; 2],
    target: f64,
) -> std::fmt::Result {
    writeln!(
        s,
        "| replica | {verb} | p50 | p90 | p99 | max | mean | target p99 | |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    for row in &rows {
        let (dc, d, t) = row;
        writeln!(
            s,
            "| {dc} | {}/{} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | ≤ {target:.0} ms | {} |",
            d.count,
            d.count + t,
            d.p50_ms,
            d.p90_ms,
            d.p99_ms,
            d.max_ms,
            d.mean_ms,
            replica_met(row, target)
        )?;
    }
    Ok(())
}

/// The target line of the replicas' p99 (`what`: what is timed).
fn replica_target(what: &str, rows: [ReplicaRow<'_>; 2], target: f64) -> String {
    let [a, b] = &rows;
    format!(
        "{what} p99 at most one-way delay + 50 ms = {target:.0} ms: {} {:.1} ms ({}), {} {:.1} ms ({})",
        a.0,
        a.1.p99_ms,
        replica_met(a, target),
        b.0,
        b.1.p99_ms,
        replica_met(b, target),
    )
}

fn markdown(r: &Report) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "Transport: **{}** ({}).\n",
        match r.transport {
            Transport::Direct => "direct",
            Transport::Gateway => "gateway",
        },
        match r.transport {
            Transport::Direct => "each DC's servers subscribe to the others' WAN ports",
            Transport::Gateway =>
                "each subscription goes to the subscriber's own gateway, through the QUIC tunnel \
                 to the origin DC's gateway, and on to its server; only the tunnel's UDP is \
                 delayed",
        }
    )?;
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
    let c = &r.convergence;
    writeln!(
        s,
        "Convergence: registration acknowledged by dc1 → first DNS answer (A, UDP, polled every \
         1 ms) holding it, {} registrations one at a time (dc1 acknowledgement p50 {:.1} ms, \
         p99 {:.1} ms):\n",
        c.attempted, c.ack.p50_ms, c.ack.p99_ms
    )?;
    replica_table(
        &mut s,
        "answered",
        [
            ("dc2", &c.dc2, c.dc2_timeouts),
            ("dc3", &c.dc3, c.dc3_timeouts),
        ],
        c.target_p99_ms,
    )?;
    let i = &r.intentions;
    writeln!(
        s,
        "\nIntentions: written in dc1 (`PUT /v1/connect/intentions/exact`, acknowledgement p50 \
         {:.1} ms, p99 {:.1} ms) → the first `/v1/connect/intentions/check` in the replica \
         (polled every 1 ms) that decides by it, {} intentions one at a time:\n",
        i.ack.p50_ms, i.ack.p99_ms, i.attempted
    )?;
    replica_table(
        &mut s,
        "decided",
        [
            ("dc2", &i.dc2, i.dc2_timeouts),
            ("dc3", &i.dc3, i.dc3_timeouts),
        ],
        i.target_p99_ms,
    )?;
    let e = &r.enforcement;
    writeln!(
        s,
        "\nEnforced by sidecars (`meridian connect proxy` for web and for api, both in dc2): the \
         intention api → web written in dc1, deny and allow in turn, {} writes → the first call \
         through api's sidecar (every 1 ms) that web's sidecar treats by it:\n",
        e.attempted
    )?;
    replica_table(
        &mut s,
        "enforced",
        [
            ("deny", &e.deny, e.deny_timeouts),
            ("allow", &e.allow, e.allow_timeouts),
        ],
        e.target_p99_ms,
    )?;
    writeln!(
        s,
        "\nInitial sync of dc1's {} entries ({} services × {} instances + 1 node; registered at \
         {:.0}/s with {} clients). Data: {} in protobuf `Entry` messages ({:.1} B per entry), \
         {} as the JSON registration bodies sent.\n",
        r.data.exported_entries,
        r.services,
        r.instances_per_service,
        r.load.per_second,
        r.load.clients,
        kib(r.data.protobuf_bytes),
        r.data.protobuf_bytes as f64 / r.data.entries.max(1) as f64,
        kib(r.load.json_body_bytes)
    )?;
    writeln!(
        s,
        "| subscriber | from process start | from learning dc1 | log: joined → synced | received (sync messages) | ÷ data | IP bytes from dc1 | ÷ data | B per entry |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    for x in &r.initial_sync {
        writeln!(
            s,
            "| {} | {:.0} ms | {:.0} ms | {} | {} in {} messages | {:.2} | {} | {:.2} | {:.1} |",
            x.subscriber,
            x.from_start_ms,
            x.from_learned_ms,
            x.log_joined_to_synced_ms
                .map_or("-".into(), |v| format!("{v:.0} ms")),
            kib(x.received.received_bytes),
            x.received.received_messages,
            x.received_over_protobuf_data,
            kib(x.ip_bytes_from_origin),
            x.ip_over_protobuf_data,
            x.received_bytes_per_entry
        )?;
    }
    let st = &r.steady_state;
    writeln!(
        s,
        "\nSteady state: {} single registrations {} ms apart; dc2 received {:.1} B and {:.2} \
         messages per change ({:.0} IP bytes and {:.1} packets per change per subscriber from \
         dc1's WAN port). Idle: {:.1} B/s of heartbeats ({} messages in {:.1} s); per change \
         minus that rate: {:.1} B. During the convergence phase: {:.1} B and {:.2} messages per \
         change.\n",
        st.changes,
        st.spacing_ms,
        st.bytes_per_change,
        st.messages_per_change,
        st.ip_bytes_per_change_per_subscriber,
        st.ip_packets_per_change_per_subscriber,
        st.heartbeat_bytes_per_second,
        st.idle.received_messages,
        st.idle_seconds,
        st.bytes_per_change_minus_idle_rate,
        c.dc2_bytes_per_change,
        c.dc2_messages_per_change
    )?;
    writeln!(
        s,
        "Each agent's CPU seconds (user + system) per phase, and its peak RSS (VmHWM) after the \
         steady state:\n"
    )?;
    writeln!(
        s,
        "| process | CPU s: load | initial sync | idle | convergence | steady state | peak RSS |\n|---|---|---|---|---|---|---|"
    )?;
    for p in &r.processes {
        let g = |k: &str| {
            p.cpu_seconds
                .get(k)
                .map_or("-".into(), |v| format!("{v:.2}"))
        };
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.0} MiB |",
            p.dc,
            g("load"),
            g("initial sync"),
            g("idle"),
            g("convergence"),
            g("steady state"),
            p.peak_rss_kib.map_or(0.0, |v| v as f64 / 1024.0)
        )?;
    }
    let m = &r.memory;
    let own = m.nodes.first().map_or(0, |n| n.own_instances);
    writeln!(
        s,
        "\nMemory holding {} instances across 3 DCs{}: three fresh one-node DCs, federated, each \
         registering about a third ({} = {} services × {}, all three at once: {} acknowledged in \
         {:.1} s), every node then holding all {} (its own and two replicas; all replicas \
         converged {:.1} s after the last acknowledgement). RSS read then; CPU from the first \
         registration to convergence:\n",
        m.instances,
        if r.quick {
            " (`--quick`: scaled down from 100,000)"
        } else {
            ""
        },
        own,
        m.nodes.first().map_or(0, |n| n.services),
        m.instances_per_service,
        m.acknowledged,
        m.registration_seconds,
        m.instances,
        m.convergence_seconds
    )?;
    writeln!(
        s,
        "| node | own instances | replica instances | RSS empty | RSS holding them | peak RSS | CPU s |\n|---|---|---|---|---|---|---|"
    )?;
    for n in &m.nodes {
        writeln!(
            s,
            "| {} | {} | {} | {} | **{}** | {} | {:.2} |",
            n.dc,
            n.own_instances,
            n.replica_instances,
            mib(n.rss_empty_kib),
            mib(n.usage.rss_kib),
            mib(n.usage.peak_rss_kib),
            n.usage.cpu_seconds
        )?;
    }
    writeln!(
        s,
        "\nReplica instances include each other DC's own `meridian-gateway` instance. RSS grown \
         per instance held: {:.0} B ((RSS holding − RSS empty) ÷ instances held, over the three \
         nodes).",
        m.rss_bytes_per_instance_held
    )?;
    writeln!(s, "\nTargets:\n")?;
    for t in &r.targets {
        writeln!(s, "- {t}")?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_net::proto::op::OpCode;
    use hickory_net::proto::rr::Record;
    use hickory_net::proto::rr::rdata::A;

    #[test]
    fn only_the_answer_to_our_query_counts() {
        let name = Name::from_ascii("svc-1.service.consul.").expect("name");
        let mut m = Message::response(7, OpCode::Query);
        m.answers
            .push(Record::from_rdata(name, 0, RData::A(A::new(10, 200, 0, 1))));
        let wire = m.to_vec().expect("encodes");
        let m = Message::from_vec(&wire).expect("decodes");
        assert_eq!(a_records(&m, 7), Some(vec![Ipv4Addr::new(10, 200, 0, 1)]));
        assert_eq!(a_records(&m, 8), None, "another query's answer");
        let mut nx = Message::response(7, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(a_records(&nx, 7), Some(Vec::new()));
        let mut q = Message::query();
        q.metadata.id = 7;
        assert_eq!(a_records(&q, 7), None, "a query is no answer");
    }
}
