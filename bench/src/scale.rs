//! `scale`: one real `meridian` node (server of dc0) following twenty datacenters of 50,000
//! instances each (issue 23, item 5), and what that costs it.
//!
//! This module owns the synthetic origin and the phases measured against it. The origin is the
//! real origin code without Raft: per datacenter a `DcState` built only from federation
//! protobuf entries (`entry::apply_entry`), exported by the real `Exporter` and served by the
//! real `server::Service` behind `server::accept_loop` with mutual TLS (one certificate per
//! DC), all on a tokio runtime of its own inside this process. In front of each DC's TLS
//! listener sits a delay line (the "WAN"): every chunk of bytes, either way, is held for the
//! configured one-way delay before it is passed on, and a DC is partitioned by closing its
//! connections and refusing new ones there. Churn mutates a DC's `DcState` through the same
//! entries and calls `Exporter::update`, as an origin applying a Raft entry does.
//!
//! Phases: (0) a first node follows the twenty DCs while they are empty: its RSS is the
//! baseline; (1) the DCs are filled and a fresh node starts: initial sync time (to every
//! replica holding its origin's digest) and its CPU; (2) its RSS and peak RSS, per remote
//! instance above the baseline; (3) dnsperf against its DNS port (SRV and A queries for random
//! services across the DCs): node CPU per query, after checking a few answers; (4) churn at a
//! fixed rate spread over the DCs, every Nth change a probe (instance `probe` of one DC moves
//! to a new address) timed from the origin's apply to the node's DNS answer; then every digest
//! must match; (5) every DC partitioned while the churn goes on past the origins' change
//! window, then healed: the bytes the node received for the resume against those of the full
//! initial sync, and the time to matching digests.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hickory_net::proto::rr::RecordType;
use meridian_federation::counters::FederationCounters;
use meridian_federation::entry::{apply_entry, entry_key, remove_entry};
use meridian_federation::export::{ExportPolicy, Exporter};
use meridian_federation::limits::{Limits, StreamCap};
use meridian_federation::peers::Registry;
use meridian_federation::server;
use meridian_identity::TlsMaterial;
use meridian_protos::federation as pb;
use meridian_testkit::certs::Pki;
use meridian_testkit::meter::{cpu_seconds, mib, status_kib};
use meridian_testkit::{Agent, Ports};
use meridian_topology::dc::DcState;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::dns;
use crate::federation::{Dist, DnsProbe, conv_addr, dist, kib, met, metric, replica_digest};
use crate::procs;

/// What `meridian-bench scale` was asked for.
#[derive(Clone, Copy)]
pub struct Options {
    /// Remote datacenters the node follows.
    pub dcs: usize,
    /// Instances per datacenter.
    pub instances: usize,
    /// Instances per service.
    pub per_service: usize,
    /// Catalog nodes per datacenter (the instances are spread over them).
    pub nodes: usize,
    /// Changes per second in all, spread over the DCs.
    pub churn_rate: u64,
    /// Seconds of churn in the convergence phase.
    pub churn_seconds: u64,
    /// Every this many changes, one is a timed probe.
    pub probe_every: u64,
    /// One-way delay of the synthetic WAN, in milliseconds.
    pub wan_delay_ms: u64,
    /// Seconds the DCs stay partitioned (the churn going on).
    pub partition_seconds: u64,
    /// The origins' change window (entries): a subscriber further behind gets a digest
    /// catch-up.
    pub window: usize,
    /// Seconds per dnsperf run.
    pub dns_seconds: u64,
    /// dnsperf runs.
    pub dns_reps: usize,
}

/// The origins' heartbeat, as a node's default (`federation.heartbeat_ms`).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A probe not answered by the node's DNS after this long counts as a timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the prober asks the node about each outstanding probe.
const PROBE_POLL: Duration = Duration::from_millis(2);
/// The service of the probe instance (one per DC, on its first node).
const PROBE: &str = "probe";
/// Answers in a UDP response: the node's default `dns.udp_answer_limit` (Consul's), which the
/// benchmark keeps.
const UDP_ANSWER_LIMIT: usize = 3;
/// The node logs warnings and federation's info lines.
const AGENT_LOG: &str = "warn,meridian_federation=info";

// ---------------------------------------------------------------------------------------------
// The synthetic origin.

/// The name of datacenter `d`; the node's own is dc0, the origins dc1…dcN.
fn dc_name(d: usize) -> String {
    format!("dc{}", d + 1)
}

/// Catalog node `n` of a DC.
fn node_entry(n: usize) -> pb::Entry {
    pb::Entry {
        entry: Some(pb::entry::Entry::Node(pb::NodeEntry {
            node: Some(pb::Node {
                name: format!("node-{n}"),
                address: Ipv4Addr::new(10, 250, (n / 256) as u8, (n % 256) as u8).to_string(),
                create_index: 1,
                modify_index: 1,
                ..Default::default()
            }),
            checks: vec![],
        })),
    }
}

/// An instance entry (no checks: passing), as the origin's catalog would export it.
fn instance_entry(
    id: String,
    service: String,
    node: usize,
    addr: Ipv4Addr,
    port: u16,
    index: u64,
) -> pb::Entry {
    pb::Entry {
        entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
            instance: Some(pb::Instance {
                id,
                service,
                node: format!("node-{node}"),
                address: addr.to_string(),
                port: u32::from(port),
                create_index: 1,
                modify_index: index,
                ..Default::default()
            }),
            checks: vec![],
        })),
    }
}

/// Instance `i` of a DC: `svc-S-K` of service `svc-S` (K = i mod per_service), address
/// 10.(K+1).(S/256).(S%256), port `port` (20000 + K at first).
fn service_instance(
    i: usize,
    per_service: usize,
    nodes: usize,
    port: u16,
    index: u64,
) -> pb::Entry {
    let (s, k) = (i / per_service, i % per_service);
    instance_entry(
        format!("svc-{s}-{k}"),
        format!("svc-{s}"),
        i % nodes,
        Ipv4Addr::new(10, (k + 1) as u8, (s / 256) as u8, (s % 256) as u8),
        port,
        index,
    )
}

/// The probe instance of a DC at address `addr`.
fn probe_entry(addr: Ipv4Addr, index: u64) -> pb::Entry {
    instance_entry(PROBE.into(), PROBE.into(), 0, addr, 8080, index)
}

/// One synthetic datacenter: its catalog and the real export of it.
struct Origin {
    dc: String,
    state: Mutex<DcState>,
    exporter: Arc<Exporter>,
    /// The port the node dials: the delay line in front of the origin's TLS listener.
    port: u16,
    /// True while the DC is cut off from the node.
    cut: watch::Sender<bool>,
    /// When the first connection after the last heal came (the node's reconnect).
    reconnected: Arc<Mutex<Option<Instant>>>,
}

impl Origin {
    fn lock(&self) -> std::sync::MutexGuard<'_, DcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `edit` to the catalog as one change of the origin, at the next index, and exports
    /// it; returns whether the export changed (a change that did not is no change).
    fn step(&self, edit: impl FnOnce(&mut DcState, u64)) -> bool {
        let mut st = self.lock();
        let next = st.index() + 1;
        edit(&mut st, next);
        st.set_index(next);
        self.exporter.update(&st).is_some()
    }

    /// Applies the entry `make` builds for the next index as one change of the origin.
    fn change(&self, make: impl FnOnce(u64) -> pb::Entry) -> bool {
        self.step(|st, next| apply_entry(st, &make(next)))
    }

    /// Removes the instance `entry` is of as one change of the origin.
    fn remove(&self, entry: &pb::Entry) -> bool {
        let Ok(key) = entry_key(entry) else {
            return false;
        };
        self.step(|st, _| remove_entry(st, &key))
    }

    /// The export's digest as `/v1/federation/status` prints it.
    fn digest(&self) -> String {
        format!("{:016x}", self.exporter.position().1)
    }
}

/// The origins, their runtime and what stops it.
struct Origins {
    list: Arc<Vec<Origin>>,
    rt: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
}

impl Drop for Origins {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        // Dropped from async code: a runtime must not block there.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts `dcs` empty origins, each with its certificate from `pki`, behind a delay line of
/// `delay` each way.
fn start_origins(pki: &Pki, dcs: usize, window: usize, delay: Duration) -> Result<Origins> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("origin")
        .enable_all()
        .build()?;
    let (stop, stop_rx) = watch::channel(false);
    let mut list = Vec::new();
    for d in 0..dcs {
        let dc = dc_name(d);
        let files = pki.node_files(&dc, "origin", &[])?;
        let tls = TlsMaterial::from_files(&files.ca, &files.cert, &files.key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
        let inner = std::net::TcpListener::bind("127.0.0.1:0")?;
        let outer = std::net::TcpListener::bind("127.0.0.1:0")?;
        inner.set_nonblocking(true)?;
        outer.set_nonblocking(true)?;
        let (inner_addr, port) = (inner.local_addr()?, outer.local_addr()?.port());
        let state = DcState::default();
        let exporter = Arc::new(Exporter::new(ExportPolicy::all(), window, &state));
        let counters = Arc::new(FederationCounters::default());
        let registry = Arc::new(Registry::new(
            &dc,
            vec![format!("127.0.0.1:{port}")],
            Limits::default(),
            counters.clone(),
            // The origin follows no one: a subscribing DC is learned and left at that.
            Box::new(|_| {}),
        ));
        let service = server::Service {
            dc: dc.as_str().into(),
            exporter: exporter.clone(),
            registry,
            counters: counters.clone(),
            heartbeat: HEARTBEAT,
            stop: stop_rx.clone(),
            streams: StreamCap::new(Limits::default().max_streams_per_identity),
            on_gateway: None,
        };
        let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(16);
        let mut stop_srv = stop_rx.clone();
        let stop_acc = stop_rx.clone();
        rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(inner) else {
                return;
            };
            server::accept_loop(
                listener,
                acceptor,
                Duration::from_secs(10),
                counters,
                conn_tx,
                stop_acc,
            )
            .await;
        });
        rt.spawn(async move {
            let router = tonic::transport::Server::builder().add_service(service.into_server());
            let shutdown = async move {
                let _ = stop_srv.wait_for(|s| *s).await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(conn_rx),
                    shutdown,
                )
                .await
            {
                eprintln!("scale: origin server stopped: {e}");
            }
        });
        let (cut, cut_rx) = watch::channel(false);
        let reconnected = Arc::new(Mutex::new(None));
        rt.spawn(delay_line(
            outer,
            inner_addr,
            delay,
            cut_rx,
            reconnected.clone(),
            stop_rx.clone(),
        ));
        list.push(Origin {
            dc,
            state: Mutex::new(state),
            exporter,
            port,
            cut,
            reconnected,
        });
    }
    Ok(Origins {
        list: Arc::new(list),
        rt: Some(rt),
        stop,
    })
}

/// The WAN in front of one origin: accepts on `outer`, connects each connection to `inner` and
/// passes the bytes both ways, each chunk held `delay` first. While `cut` is true, open
/// connections are closed and new ones closed at once (a partition as the node sees it: its
/// streams break and its reconnects fail). Notes in `reconnected` the first connection after a
/// heal.
async fn delay_line(
    outer: std::net::TcpListener,
    inner: SocketAddr,
    delay: Duration,
    cut: watch::Receiver<bool>,
    reconnected: Arc<Mutex<Option<Instant>>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(outer) else {
        eprintln!("scale: cannot listen for the delay line of {inner}");
        return;
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((client, _)) = accepted else {
            // Out of descriptors and the like: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if *cut.borrow() {
            drop(client);
            continue;
        }
        reconnected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        let Ok(upstream) = tokio::net::TcpStream::connect(inner).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        tokio::spawn(pump(cr, uw, delay, cut.clone()));
        tokio::spawn(pump(ur, cw, delay, cut.clone()));
    }
}

/// One direction of a delayed connection: reads chunks from `from` and writes each to `to`
/// `delay` after it was read, until either end closes or `cut` turns true (both halves are
/// then dropped, which closes the connection). At most 256 chunks (16 MiB) wait in the line:
/// a full line stops the reading, as a full network path would.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    mut cut: watch::Receiver<bool>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = tokio::time::Instant::now() + delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(reader, writer) } => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}

/// Fills every origin with its catalog: `opt.nodes` nodes, `opt.instances` instances (the
/// probe among them), exported as one change each; the DCs are built in parallel (two threads,
/// this machine's cores).
fn fill(origins: &[Origin], opt: &Options) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let d = next.fetch_add(1, Ordering::Relaxed);
                    let Some(o) = origins.get(d) else { return };
                    let mut st = o.lock();
                    for n in 0..opt.nodes {
                        apply_entry(&mut st, &node_entry(n));
                    }
                    // The probe is one of the DC's instances.
                    apply_entry(&mut st, &probe_entry(conv_addr(0), 1));
                    for i in 0..opt.instances.saturating_sub(1) {
                        let port = 20_000 + (i % opt.per_service) as u16;
                        let e = service_instance(i, opt.per_service, opt.nodes, port, 1);
                        apply_entry(&mut st, &e);
                    }
                    let next = st.index() + 1;
                    st.set_index(next);
                    o.exporter.update(&st);
                }
            });
        }
    });
}

/// What the churn made.
#[derive(Serialize, Default, Clone, Debug)]
struct Churn {
    seconds: f64,
    changes: u64,
    probes: u64,
    /// Changes per second achieved.
    rate: f64,
    /// Distinct instances changed, per DC on average.
    distinct_per_dc: f64,
    /// How far the churn fell behind its schedule at worst (the origin's own cost).
    max_behind_ms: f64,
    /// Changes that left the export as it was (none expected: each must be a real change).
    unexported: u64,
    /// Of `changes`, deregistrations.
    removals: u64,
    /// Of `changes`, registrations again of an instance deregistered earlier in the phase.
    additions: u64,
}

/// A probe change: DC, the probe's new address, when the origin had applied and exported it.
type Probe = (usize, Ipv4Addr, Instant);

/// Changes `rate` times a second for `seconds` (bounded by both), spread over the DCs in turn:
/// a random service instance's port and modify index change (always a real change), or one in
/// ten its deregistration (registered again, with a new port, when next picked). With
/// `probes`, every `probe_every`-th change moves instead the probe instance of the next DC to
/// a new address, sent to `probes` once exported. Runs on the calling thread.
fn churn(
    origins: &[Origin],
    opt: &Options,
    seconds: u64,
    first_seq: u64,
    probes: Option<&mpsc::Sender<Probe>>,
) -> Churn {
    let dcs = origins.len().max(1);
    let total = opt.churn_rate.saturating_mul(seconds);
    let t0 = Instant::now();
    let mut rng = fastrand::Rng::with_seed(first_seq ^ 0x5ca1e);
    let mut touched: Vec<HashSet<usize>> = vec![HashSet::new(); dcs];
    // Instances deregistered and not yet back, per DC.
    let mut gone: Vec<HashSet<usize>> = vec![HashSet::new(); dcs];
    let mut out = Churn::default();
    let mut probe_no = first_seq / opt.probe_every.max(1);
    for c in 0..total {
        let due = t0 + Duration::from_secs_f64(c as f64 / opt.churn_rate.max(1) as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            out.max_behind_ms = out.max_behind_ms.max((now - due).as_secs_f64() * 1000.0);
        }
        let seq = first_seq + c;
        let d = (seq as usize) % dcs;
        if let Some(tx) = probes
            && seq.is_multiple_of(opt.probe_every.max(1))
        {
            probe_no += 1;
            let pd = (probe_no as usize) % dcs;
            let addr = conv_addr(probe_no as usize % 65_536);
            let o = &origins[pd];
            if !o.change(|index| probe_entry(addr, index)) {
                out.unexported += 1;
            }
            let _ = tx.send((pd, addr, Instant::now()));
            out.probes += 1;
        } else {
            // The probe (instance 0's slot) stays apart from the random churn.
            let i = rng.usize(0..opt.instances.saturating_sub(1).max(1));
            let o = &origins[d];
            let port = 30_000 + (seq % 30_000) as u16;
            let make = |index| service_instance(i, opt.per_service, opt.nodes, port, index);
            // One change in ten deregisters the instance; the next change that picks it
            // registers it again (a replaced pod): removals and additions, not only updates.
            let done = if gone[d].remove(&i) {
                out.additions += 1;
                o.change(make)
            } else if rng.u8(..10) == 0 {
                gone[d].insert(i);
                out.removals += 1;
                o.remove(&make(0))
            } else {
                o.change(make)
            };
            if !done {
                out.unexported += 1;
            }
            touched[d].insert(i);
        }
        out.changes += 1;
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out.rate = out.changes as f64 / out.seconds.max(1e-9);
    out.distinct_per_dc = touched.iter().map(HashSet::len).sum::<usize>() as f64 / dcs as f64;
    out
}

/// Watches the node's DNS for each probe until its answer holds the probe's new address;
/// returns the delays (ms) and the number that timed out. Ends when `rx` is closed and nothing
/// is outstanding.
fn watch_probes(dns: SocketAddr, rx: &mpsc::Receiver<Probe>) -> Result<(Vec<f64>, usize, u64)> {
    let mut probe = DnsProbe::new(dns)?;
    let mut outstanding: Vec<Probe> = Vec::new();
    let (mut delays, mut timeouts) = (Vec::new(), 0);
    let mut open = true;
    while open || !outstanding.is_empty() {
        loop {
            match rx.try_recv() {
                Ok(p) => outstanding.push(p),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if outstanding.is_empty() {
            if open {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(p) => outstanding.push(p),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
            }
            continue;
        }
        let mut still = Vec::with_capacity(outstanding.len());
        for (d, addr, made) in outstanding.drain(..) {
            let name = format!("{PROBE}.service.{}.consul", dc_name(d));
            if probe.has(&name, addr)? {
                delays.push(made.elapsed().as_secs_f64() * 1000.0);
            } else if made.elapsed() > PROBE_TIMEOUT {
                timeouts += 1;
            } else {
                still.push((d, addr, made));
            }
        }
        outstanding = still;
        std::thread::sleep(PROBE_POLL);
    }
    Ok((delays, timeouts, probe.queries))
}

// ---------------------------------------------------------------------------------------------
// The node under test.

/// Starts the node (server of dc0, node `n1`) following every origin, data in `dir/<name>`.
fn start_node(bin: &Path, dir: &Path, name: &str, pki: &Pki, origins: &[Origin]) -> Result<Agent> {
    let ports = Ports::free();
    let mut c = crate::tools::open_config("dc0", "n1", ports, &dir.join(name));
    let f = pki.node_files("dc0", "n1", &[])?;
    c.insecure = false;
    c.federation = Some(meridian_testkit::config::Federation {
        peers: origins
            .iter()
            .map(|o| meridian_testkit::config::Peer {
                dc: o.dc.clone(),
                addresses: vec![format!("127.0.0.1:{}", o.port)],
            })
            .collect(),
        ..meridian_testkit::config::Federation::with_certs(&f.ca, &f.cert, &f.key)
    });
    let filter = procs::agent_log(AGENT_LOG);
    procs::configured_agent(name, bin, &c, dir, &[("RUST_LOG", &filter)], None)
}

/// How many of the origins the node's replicas match (connected, synced, same digest), from
/// one `/v1/federation/status`; `None` while the node does not answer.
async fn matching(node: &mut Agent, origins: &[Origin]) -> Result<Option<usize>> {
    procs::check_running(&mut node.proc)?;
    let Ok(st) = crate::federation::status(&node.http, node).await else {
        return Ok(None);
    };
    Ok(Some(
        origins
            .iter()
            .filter(|o| replica_digest(&st, &o.dc) == Some(o.digest().as_str()))
            .count(),
    ))
}

/// Waits (at most `limit`) until every replica of the node holds its origin's digest; returns
/// how long that took.
async fn wait_synced(node: &mut Agent, origins: &[Origin], limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let n = matching(node, origins).await?;
        if n == Some(origins.len()) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!(
                "{} replicas of {} hold their origin's digest after {limit:?}",
                n.unwrap_or(0),
                origins.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Per-origin federation counters of the node, summed over the origins.
#[derive(Serialize, Default, Clone, Copy)]
struct Received {
    bytes: u64,
    /// Bytes of the node's subscription requests (their digests), the other way.
    sent: u64,
    messages: u64,
    full_syncs: u64,
    partial_syncs: u64,
    resumes: u64,
}

async fn received(node: &Agent, origins: &[Origin]) -> Result<Received> {
    let text = node.metrics().await?;
    let mut r = Received::default();
    for o in origins {
        let m = |name: &str| {
            metric(
                &text,
                &format!("meridian_federation_{name}{{dc=\"{}\"}}", o.dc),
            )
        };
        r.bytes += m("received_bytes_total");
        r.sent += m("sent_bytes_total");
        r.messages += m("received_messages_total");
        r.full_syncs += m("full_syncs_total");
        r.partial_syncs += m("partial_syncs_total");
        r.resumes += m("resumes_total");
    }
    Ok(r)
}

impl Received {
    fn since(&self, before: &Received) -> Received {
        Received {
            bytes: self.bytes.saturating_sub(before.bytes),
            sent: self.sent.saturating_sub(before.sent),
            messages: self.messages.saturating_sub(before.messages),
            full_syncs: self.full_syncs.saturating_sub(before.full_syncs),
            partial_syncs: self.partial_syncs.saturating_sub(before.partial_syncs),
            resumes: self.resumes.saturating_sub(before.resumes),
        }
    }
}

fn node_pid(node: &Agent) -> Result<u32> {
    procs::pid(&node.proc)
}

/// Node CPU seconds so far (an error once it is gone).
fn node_cpu(node: &Agent) -> Result<f64> {
    cpu_seconds(node_pid(node)?).context("the node is gone")
}

// ---------------------------------------------------------------------------------------------
// DNS.

/// Asks the node's DNS for services of the DCs (the first and last of each end, a few random)
/// and checks every answer: SRV records with the instances' ports, A records with their
/// addresses, as many as the UDP answer limit lets out (a random subset of them). Returns the
/// answers checked and what was wrong with each wrong one (with the HTTP catalog's instance
/// count of that service, to tell a DNS fault from a replica one).
async fn check_answers(
    dns: SocketAddr,
    node: &Agent,
    opt: &Options,
    dcs: usize,
) -> Result<(usize, Vec<String>)> {
    let services = (opt.instances - 1).div_ceil(opt.per_service);
    let mut rng = fastrand::Rng::with_seed(5);
    let mut pairs = vec![(0, 0), (dcs - 1, services - 1), (dcs / 2, services / 2)];
    pairs.extend((0..27).map(|_| (rng.usize(0..dcs), rng.usize(0..services))));
    let (mut checked, mut wrong) = (0, Vec::new());
    for (d, s) in pairs {
        // The last service may be short of instances (the probe took one slot).
        let count = ((opt.instances - 1) - s * opt.per_service).min(opt.per_service);
        let want_n = count.min(UDP_ANSWER_LIMIT);
        let name = format!("svc-{s}.service.{}.consul", dc_name(d));
        let srv = dns::ask(dns, &name, RecordType::SRV)?;
        let mut ports: Vec<u16> = srv
            .records
            .iter()
            .filter(|r| r.section == "answer" && r.rtype == u16::from(RecordType::SRV))
            .filter_map(|r| r.data.split_whitespace().nth(2)?.parse().ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let a = dns::ask(dns, &name, RecordType::A)?;
        let mut addrs: Vec<String> = a
            .records
            .iter()
            .filter(|r| r.section == "answer" && r.rtype == u16::from(RecordType::A))
            .map(|r| r.data.clone())
            .collect();
        addrs.sort();
        addrs.dedup();
        let want_ports: Vec<u16> = (0..count).map(|k| 20_000 + k as u16).collect();
        let want_addrs: Vec<String> = (0..count)
            .map(|k| Ipv4Addr::new(10, (k + 1) as u8, (s / 256) as u8, (s % 256) as u8).to_string())
            .collect();
        checked += 2;
        let srv_ok =
            srv.rcode == 0 && ports.len() == want_n && ports.iter().all(|p| want_ports.contains(p));
        let a_ok =
            a.rcode == 0 && addrs.len() == want_n && addrs.iter().all(|x| want_addrs.contains(x));
        if !(srv_ok && a_ok) {
            let http = node
                .get_json(&format!("/v1/catalog/service/svc-{s}?dc={}", dc_name(d)))
                .await
                .ok()
                .and_then(|v| v.as_array().map(Vec::len));
            // The DC's failover status: a DC `down` answers nothing by design.
            let status = node
                .get_json("/v1/federation/datacenters")
                .await
                .ok()
                .and_then(|v| {
                    let dc = v
                        .as_array()?
                        .iter()
                        .find(|x| x["Datacenter"] == dc_name(d).as_str())?;
                    Some(format!("{} for {} ms", dc["Status"], dc["ForMs"]))
                });
            wrong.push(format!(
                "{name}: SRV rcode {} ports {ports:?}, A rcode {} {addrs:?} (want {want_n} of \
                 {want_ports:?} / {want_addrs:?}); HTTP catalog: {http:?} instances; DC status \
                 {status:?}",
                srv.rcode, a.rcode
            ));
        }
    }
    Ok((checked, wrong))
}

/// The dnsperf query file: `lines` queries for random services of random DCs, SRV and A in
/// turn.
fn query_file(opt: &Options, dcs: usize, lines: usize) -> String {
    let services = (opt.instances.saturating_sub(1) / opt.per_service).max(1);
    let mut rng = fastrand::Rng::with_seed(23);
    let mut q = String::new();
    for l in 0..lines {
        let (d, s) = (rng.usize(0..dcs), rng.usize(0..services));
        let t = if l % 2 == 0 { "SRV" } else { "A" };
        let _ = writeln!(q, "svc-{s}.service.{}.consul {t}", dc_name(d));
    }
    q
}

// ---------------------------------------------------------------------------------------------
// Report.

#[derive(Serialize)]
struct Sync {
    /// From the node's start until every replica held its origin's digest.
    seconds: f64,
    /// From the start until the HTTP API answered.
    http_ready_seconds: f64,
    node_cpu_seconds: f64,
    /// This process's CPU (the twenty origins and the delay lines) over the same time.
    origin_cpu_seconds: f64,
    received: Received,
    /// Exported entries in all (instances and nodes).
    entries: usize,
}

#[derive(Serialize)]
struct Memory {
    /// The baseline node following the twenty DCs while they were empty.
    empty_rss_kib: u64,
    empty_peak_rss_kib: u64,
    /// The node after the initial sync (and a settling pause).
    rss_kib: u64,
    peak_rss_kib: u64,
    remote_instances: u64,
    /// (RSS − empty RSS) ÷ remote instances.
    rss_bytes_per_remote_instance: f64,
}

#[derive(Serialize)]
struct DnsFigures {
    answers_checked: usize,
    /// The answers that were not what the origins hold, 3 s after every replica matched.
    wrong_answers: Vec<String>,
    /// If some were wrong: seconds from that check until a whole round of checks was right.
    right_after_seconds: Option<f64>,
    /// Wrong answers in the last round (0 unless the DNS never caught up within 120 s).
    still_wrong: usize,
    runs: Vec<dns::Run>,
    median_qps: f64,
    median_cpu_us_per_query: f64,
}

#[derive(Serialize)]
struct Convergence {
    churn: Churn,
    /// Seen on the node's DNS − made at the origin, WAN delay included.
    delay: Dist,
    /// The same minus the WAN delay.
    over_wan: Dist,
    timeouts: usize,
    dns_queries: u64,
    /// From the end of the churn until every digest matched.
    settle_seconds: f64,
    node_cpu_seconds: f64,
    received: Received,
}

#[derive(Serialize)]
struct Resume {
    partition_seconds: f64,
    churn: Churn,
    /// From the heal until every digest matched.
    resync_seconds: f64,
    /// From the node's reconnection to the last DC after the heal (its reconnect backoff over)
    /// until every digest matched.
    from_reconnect_seconds: f64,
    received: Received,
    /// Resume bytes, both ways (the node's requests and what it received), ÷ the full initial
    /// sync's.
    ratio: f64,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    date: String,
    machine: String,
    command: String,
    quick: bool,
    load_before: String,
    dcs: usize,
    instances_per_dc: usize,
    instances_per_service: usize,
    nodes_per_dc: usize,
    wan_delay_ms: u64,
    window: usize,
    fill_seconds: f64,
    sync: Sync,
    memory: Memory,
    dns: DnsFigures,
    convergence: Convergence,
    resume: Resume,
    targets: Vec<String>,
}

/// The machine's load averages (`/proc/loadavg`), to say what else ran.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Runs the benchmark and writes `scale.json` and `scale.md` into `out`.
pub async fn run(bin: &Path, quick: bool, out: &Path, opt: Options) -> Result<()> {
    ensure!(
        (1..=250).contains(&opt.dcs)
            && opt.instances >= 2
            && (1..=250).contains(&opt.per_service)
            && opt.instances / opt.per_service < 65_536
            && (1..=65_536).contains(&opt.nodes)
            && opt.churn_rate > 0
            && opt.probe_every > 0,
        "scale: dcs 1-250, instances ≥ 2, 1-250 per service and < 65,536 services, nodes \
         1-65,536, churn rate and probe spacing > 0"
    );
    let dir = tempfile::Builder::new()
        .prefix("meridian-scale")
        .tempdir()?;
    let keep = std::env::var_os("MERIDIAN_BENCH_KEEP").is_some();
    let result = phases(bin, quick, out, &opt, dir.path()).await;
    if result.is_err() || keep {
        let kept = dir.keep();
        eprintln!("scale: logs kept in {}", kept.display());
    }
    result
}

async fn phases(bin: &Path, quick: bool, out: &Path, opt: &Options, dir: &Path) -> Result<()> {
    let load_before = loadavg();
    let delay = Duration::from_millis(opt.wan_delay_ms);
    let pki = Pki::new(&dir.join("certs"))?;
    let origins = start_origins(&pki, opt.dcs, opt.window, delay)?;
    let list = origins.list.clone();
    let total_instances = (opt.dcs * opt.instances) as u64;
    eprintln!(
        "scale: {} origins (dc1…dc{}) behind a {} ms one-way delay line; load before: {load_before}",
        opt.dcs, opt.dcs, opt.wan_delay_ms
    );

    // (0) The baseline: a node following the DCs while they are empty.
    let mut base = start_node(bin, dir, "empty", &pki, &list)?;
    wait_synced(&mut base, &list, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bpid = node_pid(&base)?;
    let empty_rss = status_kib(bpid, "VmRSS:").unwrap_or(0);
    let empty_hwm = status_kib(bpid, "VmHWM:").unwrap_or(0);
    base.stop()?;
    drop(base);
    eprintln!(
        "scale: baseline node following {} empty DCs: RSS {}",
        opt.dcs,
        mib(empty_rss)
    );

    // (1) Fill the DCs, then a fresh node syncs them all.
    let t = Instant::now();
    {
        let list = list.clone();
        let o = *opt;
        tokio::task::spawn_blocking(move || fill(&list, &o)).await?;
    }
    let fill_seconds = t.elapsed().as_secs_f64();
    let entries: usize = list.iter().map(|o| o.exporter.len()).sum();
    eprintln!(
        "scale: filled {} DCs ({entries} exported entries) in {fill_seconds:.1} s",
        opt.dcs
    );
    let me = std::process::id();
    let origin_cpu0 = cpu_seconds(me).unwrap_or(0.0);
    let t0 = Instant::now();
    let mut node = start_node(bin, dir, "node", &pki, &list)?;
    let mut http_ready = None;
    let limit = Duration::from_secs(if quick { 60 } else { 300 });
    let sync_time = loop {
        if let Some(n) = matching(&mut node, &list).await? {
            http_ready.get_or_insert(t0.elapsed());
            if n == list.len() {
                break t0.elapsed();
            }
        }
        ensure!(
            t0.elapsed() < limit,
            "the node did not sync the {} DCs within {limit:?}",
            opt.dcs
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let sync_cpu = node_cpu(&node)?;
    let full = received(&node, &list).await?;
    let sync = Sync {
        seconds: sync_time.as_secs_f64(),
        http_ready_seconds: http_ready.unwrap_or(sync_time).as_secs_f64(),
        node_cpu_seconds: sync_cpu,
        origin_cpu_seconds: cpu_seconds(me).unwrap_or(0.0) - origin_cpu0,
        received: full,
        entries,
    };
    eprintln!(
        "scale: initial sync of {total_instances} instances in {:.2} s (HTTP up at {:.2} s), node \
         CPU {:.1} s, origins' CPU {:.1} s, {} received in {} messages",
        sync.seconds,
        sync.http_ready_seconds,
        sync.node_cpu_seconds,
        sync.origin_cpu_seconds,
        kib(full.bytes),
        full.messages
    );

    // (2) Memory, after a settling pause.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = node_pid(&node)?;
    let st = crate::federation::status(&node.http, &node).await?;
    let remote_instances: u64 = st["Remotes"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["Instances"].as_u64()).sum())
        .unwrap_or(0);
    let rss = status_kib(pid, "VmRSS:").unwrap_or(0);
    let memory = Memory {
        empty_rss_kib: empty_rss,
        empty_peak_rss_kib: empty_hwm,
        rss_kib: rss,
        peak_rss_kib: status_kib(pid, "VmHWM:").unwrap_or(0),
        remote_instances,
        rss_bytes_per_remote_instance: (rss as f64 - empty_rss as f64) * 1024.0
            / remote_instances.max(1) as f64,
    };
    eprintln!(
        "scale: node RSS {} (peak {}, empty {}) holding {remote_instances} remote instances: {:.0} \
         B per instance",
        mib(memory.rss_kib),
        mib(memory.peak_rss_kib),
        mib(empty_rss),
        memory.rss_bytes_per_remote_instance
    );

    // (3) DNS at that size.
    let dns_addr = SocketAddr::from(([127, 0, 0, 1], node.ports.dns));
    let (answers_checked, wrong_answers) = check_answers(dns_addr, &node, opt, opt.dcs).await?;
    for w in wrong_answers.iter().take(3) {
        eprintln!("scale: WRONG DNS answer: {w}");
    }
    // Wrong answers once the replicas match are a fault; how long the DNS takes to answer
    // right after that is measured, bounded, so that the phases after it measure a node that
    // serves what it holds.
    let t_dns = Instant::now();
    let mut dns_rounds = 1;
    let mut last_wrong = wrong_answers.len();
    while last_wrong > 0 && t_dns.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last_wrong = check_answers(dns_addr, &node, opt, opt.dcs).await?.1.len();
        dns_rounds += 1;
    }
    let dns_right_after = (!wrong_answers.is_empty()).then(|| t_dns.elapsed().as_secs_f64());
    if let Some(t) = dns_right_after {
        eprintln!(
            "scale: the DNS answered right {t:.1} s later ({dns_rounds} rounds; {last_wrong} still \
             wrong at the end)"
        );
    }
    let dnsperf = match crate::tools::find_tool("dnsperf") {
        Some(p) => p,
        None => {
            crate::tools::apt_install("scale", &["dnsperf"])?;
            crate::tools::find_tool("dnsperf").context("dnsperf not found after installing it")?
        }
    };
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, query_file(opt, opt.dcs, 100_000))?;
    let Agent {
        name,
        ports,
        host,
        proc,
        http,
    } = node;
    let mut server = dns::Server {
        name: "meridian",
        proc,
        port: ports.dns,
    };
    let load = dns::Load {
        dnsperf: &dnsperf,
        queries: &queries,
        dir,
        core: None,
        outstanding: 20,
        clients: 1,
        ticks: meridian_testkit::meter::clock_ticks(),
        retries: 0,
    };
    let mut runs = Vec::new();
    for rep in 0..opt.dns_reps {
        let r = tokio::task::block_in_place(|| {
            load.run_clean(&mut server, opt.dns_seconds, None, rep)
        })?;
        eprintln!(
            "scale: dnsperf {}: {:.0} q/s, {:.2} µs node CPU per query, codes {}",
            rep + 1,
            r.qps,
            r.server_cpu_us_per_query,
            r.response_codes
        );
        runs.push(r);
    }
    let mut node = Agent {
        name,
        ports,
        host,
        proc: server.proc,
        http,
    };
    let dns_figures = DnsFigures {
        answers_checked,
        wrong_answers,
        right_after_seconds: dns_right_after,
        still_wrong: last_wrong,
        median_qps: meridian_testkit::stats::median(
            &runs.iter().map(|r| r.qps).collect::<Vec<_>>(),
        ),
        median_cpu_us_per_query: meridian_testkit::stats::median(
            &runs
                .iter()
                .map(|r| r.server_cpu_us_per_query)
                .collect::<Vec<_>>(),
        ),
        runs,
    };

    // (4) Convergence under churn.
    wait_synced(&mut node, &list, Duration::from_secs(30)).await?;
    let before = received(&node, &list).await?;
    let cpu0 = node_cpu(&node)?;
    let (tx, rx) = mpsc::channel();
    let churner = {
        let (list, o) = (list.clone(), *opt);
        std::thread::spawn(move || churn(&list, &o, o.churn_seconds, 0, Some(&tx)))
    };
    let watcher = std::thread::spawn(move || watch_probes(dns_addr, &rx));
    let churned = tokio::task::spawn_blocking(move || churner.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the churn thread panicked"))?;
    let settle = wait_synced(&mut node, &list, Duration::from_secs(60)).await?;
    let (delays, timeouts, dns_queries) = tokio::task::spawn_blocking(move || watcher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
    let wan = opt.wan_delay_ms as f64;
    let convergence = Convergence {
        churn: churned.clone(),
        over_wan: dist(delays.iter().map(|d| d - wan).collect()),
        delay: dist(delays),
        timeouts,
        dns_queries,
        settle_seconds: settle.as_secs_f64(),
        node_cpu_seconds: node_cpu(&node)? - cpu0,
        received: received(&node, &list).await?.since(&before),
    };
    eprintln!(
        "scale: churn {} changes in {:.1} s ({:.0}/s), {} probes: p50 {:.1} ms, p99 {:.1} ms, max \
         {:.1} ms over the {} ms WAN delay, {timeouts} timeouts; digests matched {:.2} s after",
        churned.changes,
        churned.seconds,
        churned.rate,
        churned.probes,
        convergence.over_wan.p50_ms,
        convergence.over_wan.p99_ms,
        convergence.over_wan.max_ms,
        opt.wan_delay_ms,
        convergence.settle_seconds
    );

    // (5) Partition every DC, churn past the change window, heal.
    for o in list.iter() {
        o.cut.send_replace(true);
    }
    let first_seq = churned.changes + 1;
    let cut_churn = {
        let (list, o) = (list.clone(), *opt);
        tokio::task::spawn_blocking(move || churn(&list, &o, o.partition_seconds, first_seq, None))
            .await?
    };
    let before = received(&node, &list).await?;
    let healed = Instant::now();
    for o in list.iter() {
        *o.reconnected.lock().unwrap_or_else(|e| e.into_inner()) = None;
        o.cut.send_replace(false);
    }
    let resync = wait_synced(&mut node, &list, Duration::from_secs(120)).await?;
    // The last DC the node came back to: before that, the follower's reconnect backoff.
    let last_reconnect = list
        .iter()
        .filter_map(|o| *o.reconnected.lock().unwrap_or_else(|e| e.into_inner()))
        .max()
        .unwrap_or(healed);
    let got = received(&node, &list).await?.since(&before);
    let resume = Resume {
        partition_seconds: cut_churn.seconds,
        churn: cut_churn,
        resync_seconds: resync.as_secs_f64(),
        from_reconnect_seconds: (healed + resync)
            .saturating_duration_since(last_reconnect)
            .as_secs_f64(),
        received: got,
        ratio: (got.bytes + got.sent) as f64 / (full.bytes + full.sent).max(1) as f64,
    };
    eprintln!(
        "scale: resume after a {:.1} s partition ({:.0} distinct instances changed per DC): {} \
         received and {} sent ({:.2} % of the full sync's {}), {} partial and {} full syncs, \
         digests matched {:.2} s after the heal",
        resume.partition_seconds,
        resume.churn.distinct_per_dc,
        kib(got.bytes),
        kib(got.sent),
        resume.ratio * 100.0,
        kib(full.bytes),
        got.partial_syncs,
        got.full_syncs,
        resume.resync_seconds
    );
    procs::check_running(&mut node.proc)?;

    let mem_ok = memory.rss_kib * 1024 < 1 << 30;
    let mut targets = vec![
        format!(
            "initial sync of {} × {} instances under 30 s: {:.1} s ({})",
            opt.dcs,
            opt.instances,
            sync.seconds,
            met(sync.seconds < 30.0)
        ),
        format!(
            "node memory under 1 GiB: RSS {} after the sync, peak {} ({})",
            mib(memory.rss_kib),
            mib(memory.peak_rss_kib),
            met(mem_ok)
        ),
        format!(
            "convergence p99 within 50 ms of the {} ms WAN delay under {:.0} changes/s: {:.1} ms \
             over it, {timeouts} timeouts ({})",
            opt.wan_delay_ms,
            churned.rate,
            convergence.over_wan.p99_ms,
            met(convergence.over_wan.p99_ms <= 50.0 && timeouts == 0)
        ),
        format!(
            "digest resume bytes (both ways) under 1 % of a full sync: {:.2} % after {:.0} distinct \
             changes per DC ({}; {} digest catch-ups, {} window resumes, {} full syncs)",
            resume.ratio * 100.0,
            resume.churn.distinct_per_dc,
            // Only a digest catch-up is what the target asks about: a resume from the change
            // window (the gap was short) or a full sync is a different path.
            if got.partial_syncs == 0 {
                "not measured: no digest catch-up"
            } else {
                met(resume.ratio < 0.01 && got.full_syncs == 0)
            },
            got.partial_syncs,
            got.resumes,
            got.full_syncs
        ),
    ];
    targets.push(format!(
        "DNS answers what the replicas hold once they match (no target number): {}",
        match dns_figures.right_after_seconds {
            Some(t) => format!("**not** at once: right {t:.1} s after the replicas matched + 3 s"),
            None => "yes".to_owned(),
        }
    ));
    let report = Report {
        benchmark: "scale",
        date: crate::today(),
        machine: crate::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick,
        load_before,
        dcs: opt.dcs,
        instances_per_dc: opt.instances,
        instances_per_service: opt.per_service,
        nodes_per_dc: opt.nodes,
        wan_delay_ms: opt.wan_delay_ms,
        window: opt.window,
        fill_seconds,
        sync,
        memory,
        dns: dns_figures,
        convergence,
        resume,
        targets,
    };
    let md = markdown(&report)?;
    // The same name with `--quick` (the report says which): `all` reads `scale.json`.
    crate::tools::write_report(out, "scale", &report, &md)?;
    drop(node);
    drop(origins);
    Ok(())
}

fn markdown(r: &Report) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "## Scale: one node following {} datacenters ({} instances each)\n\n{}, {}. Load before: \
         `{}`. Origins: the real export and federation service, in the benchmark's process, \
         behind a {} ms one-way delay line each; change window {} entries.\n",
        r.dcs, r.instances_per_dc, r.date, r.machine, r.load_before, r.wan_delay_ms, r.window
    )?;
    let (sy, m, d, c, re) = (&r.sync, &r.memory, &r.dns, &r.convergence, &r.resume);
    writeln!(s, "| figure | value |\n|---|---|")?;
    writeln!(
        s,
        "| initial sync ({} entries) | {:.2} s (HTTP up {:.2} s); node CPU {:.1} s, origins' CPU {:.1} s |",
        sy.entries, sy.seconds, sy.http_ready_seconds, sy.node_cpu_seconds, sy.origin_cpu_seconds
    )?;
    writeln!(
        s,
        "| full sync received | {} in {} messages ({:.0} B per entry), {} full syncs |",
        kib(sy.received.bytes),
        sy.received.messages,
        sy.received.bytes as f64 / sy.entries.max(1) as f64,
        sy.received.full_syncs
    )?;
    writeln!(
        s,
        "| node RSS | {} (peak {}); following the empty DCs {} |",
        mib(m.rss_kib),
        mib(m.peak_rss_kib),
        mib(m.empty_rss_kib)
    )?;
    writeln!(
        s,
        "| RSS per remote instance | {:.0} B ({} instances) |",
        m.rss_bytes_per_remote_instance, m.remote_instances
    )?;
    writeln!(
        s,
        "| DNS (SRV + A, random services of all DCs) | {:.0} q/s, {:.2} µs node CPU per query (median of {}); {} answers checked, {} pairs wrong; response codes (first run) {} |",
        d.median_qps,
        d.median_cpu_us_per_query,
        d.runs.len(),
        d.answers_checked,
        d.wrong_answers.len(),
        d.runs.first().map_or("-", |r| r.response_codes.as_str())
    )?;
    writeln!(
        s,
        "| churn | {} changes in {:.1} s ({:.0}/s, {:.0} distinct instances per DC, {} removals and {} additions, {} that did not change the export), {} probes |",
        c.churn.changes,
        c.churn.seconds,
        c.churn.rate,
        c.churn.distinct_per_dc,
        c.churn.removals,
        c.churn.additions,
        c.churn.unexported,
        c.churn.probes
    )?;
    writeln!(
        s,
        "| convergence (DNS answer − origin apply) | p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} timeouts |",
        c.delay.p50_ms, c.delay.p90_ms, c.delay.p99_ms, c.delay.max_ms, c.timeouts
    )?;
    writeln!(
        s,
        "| the same minus the WAN delay | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        c.over_wan.p50_ms, c.over_wan.p99_ms, c.over_wan.max_ms
    )?;
    writeln!(
        s,
        "| churn cost | node CPU {:.1} s ({:.0}% of a core), {} received ({:.0} B per change); digests matched {:.2} s after the churn |",
        c.node_cpu_seconds,
        c.node_cpu_seconds / c.churn.seconds.max(1e-9) * 100.0,
        kib(c.received.bytes),
        c.received.bytes as f64 / c.churn.changes.max(1) as f64,
        c.settle_seconds
    )?;
    writeln!(
        s,
        "| partition | {:.1} s, {} changes meanwhile ({:.0} distinct instances per DC; {} removals, {} additions) |",
        re.partition_seconds,
        re.churn.changes,
        re.churn.distinct_per_dc,
        re.churn.removals,
        re.churn.additions
    )?;
    writeln!(
        s,
        "| resume | {} received, {} sent ({:.2} % of the full sync, both ways); {} partial, {} full syncs, {} resumes; digests matched {:.2} s after the heal, {:.2} s after the last DC's reconnection |\n",
        kib(re.received.bytes),
        kib(re.received.sent),
        re.ratio * 100.0,
        re.received.partial_syncs,
        re.received.full_syncs,
        re.received.resumes,
        re.resync_seconds,
        re.from_reconnect_seconds
    )?;
    if let Some(t) = d.right_after_seconds {
        writeln!(
            s,
            "DNS behind the replicas: {} of {} answers wrong 3 s after every replica matched; \
             all right {t:.1} s later ({} still wrong at the end). The first:\n",
            d.wrong_answers.len(),
            d.answers_checked / 2,
            d.still_wrong
        )?;
        for w in d.wrong_answers.iter().take(3) {
            writeln!(s, "- {w}")?;
        }
        writeln!(s)?;
    }
    writeln!(s, "Targets:\n")?;
    for t in &r.targets {
        writeln!(s, "- {t}")?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback: what the delay line fronts in the test.
    async fn echo() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// The delay line holds each direction for the delay (a round trip takes twice it), and a
    /// cut closes the open connection and every new one until the heal.
    #[tokio::test]
    async fn delay_line_delays_both_ways_and_partitions() {
        let inner = echo().await;
        let outer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        outer.set_nonblocking(true).expect("nonblocking");
        let port = outer.local_addr().expect("addr").port();
        let (cut, cut_rx) = watch::channel(false);
        let (_stop, stop_rx) = watch::channel(false);
        let reconnected = Arc::new(Mutex::new(None));
        let delay = Duration::from_millis(40);
        tokio::spawn(delay_line(
            outer,
            inner,
            delay,
            cut_rx,
            reconnected.clone(),
            stop_rx,
        ));

        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut buf = [0u8; 5];
        let t = Instant::now();
        c.write_all(b"hello").await.expect("write");
        c.read_exact(&mut buf).await.expect("echo");
        let rtt = t.elapsed();
        assert_eq!(&buf, b"hello");
        assert!(rtt >= 2 * delay, "round trip {rtt:?} under twice the delay");
        assert!(
            rtt < 2 * delay + Duration::from_millis(200),
            "round trip {rtt:?}"
        );
        assert!(reconnected.lock().expect("lock").is_some());

        cut.send_replace(true);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the cut left the connection open"
        );
        let mut d = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let _ = d.write_all(b"x").await;
        let got = tokio::time::timeout(Duration::from_secs(2), d.read(&mut buf)).await;
        assert!(
            matches!(got, Ok(Ok(0)) | Ok(Err(_))),
            "a connection got through the cut"
        );

        cut.send_replace(false);
        let mut e = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        e.write_all(b"again").await.expect("write");
        e.read_exact(&mut buf).await.expect("echo after the heal");
        assert_eq!(&buf, b"again");
    }

    /// Every change the churn makes moves the origin's export (a new entry, a new digest), and
    /// the filled origin holds every instance and node.
    #[test]
    fn churn_changes_are_real() {
        let opt = Options {
            dcs: 2,
            instances: 100,
            per_service: 5,
            nodes: 4,
            churn_rate: 2_000,
            churn_seconds: 0,
            probe_every: 10,
            wan_delay_ms: 0,
            partition_seconds: 0,
            window: 1_000,
            dns_seconds: 0,
            dns_reps: 0,
        };
        let origins: Vec<Origin> = (0..opt.dcs)
            .map(|d| {
                let state = DcState::default();
                Origin {
                    dc: dc_name(d),
                    exporter: Arc::new(Exporter::new(ExportPolicy::all(), opt.window, &state)),
                    state: Mutex::new(state),
                    port: 0,
                    cut: watch::channel(false).0,
                    reconnected: Arc::default(),
                }
            })
            .collect();
        fill(&origins, &opt);
        for o in &origins {
            assert_eq!(o.exporter.len(), opt.instances + opt.nodes);
            assert_eq!(o.lock().instance_count(), opt.instances);
        }
        let before: Vec<(u64, u64)> = origins.iter().map(|o| o.exporter.position()).collect();
        let (tx, rx) = mpsc::channel();
        let c = churn(&origins, &opt, 1, 0, Some(&tx));
        assert_eq!(c.changes, 2_000);
        let probes: Vec<Probe> = rx.try_iter().collect();
        assert_eq!(probes.len() as u64, c.probes);
        assert_eq!(c.probes, 200);
        // Each change is one origin index, and each one changed the export.
        let advanced: u64 = origins
            .iter()
            .zip(&before)
            .map(|(o, b)| o.exporter.position().0 - b.0)
            .sum();
        assert_eq!(advanced, c.changes);
        assert_eq!(c.unexported, 0);
        // Removals and additions too, and the catalogs hold what they say.
        assert!(c.removals > 100 && c.additions > 50, "{c:?}");
        let held: usize = origins.iter().map(|o| o.lock().instance_count()).sum();
        assert_eq!(
            held as u64 + c.removals - c.additions,
            (opt.dcs * opt.instances) as u64
        );
        for (o, b) in origins.iter().zip(&before) {
            assert_ne!(
                o.exporter.position().1,
                b.1,
                "{}'s digest did not move",
                o.dc
            );
        }
    }
}
