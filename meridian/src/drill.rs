//! `meridian drill`: rehearses a failover against a running federation and reports what clients
//! saw, in numbers.
//!
//! `dc-down` drains a datacenter (`PUT /v1/operator/drain` on one of its nodes), `service-down`
//! fails one service's instances in one datacenter (their TTL checks, `PUT
//! /v1/agent/check/fail/<id>`). Meanwhile a probe client per datacenter ([`probe`]) resolves
//! `<service>.service.<domain>` at that DC's DNS server, completes a TLS handshake through its
//! gateway with that name as SNI, and reads that DC's status of every DC, once per interval. After
//! `--for` the drill restores what it changed and keeps probing until every DC answers as it did
//! before (or a timeout), then prints the findings ([`report`]).
//!
//! Bounded: every loop ends by time and by count, every request has a timeout, and traffic goes
//! only to the nodes given with `--http` and the DNS and gateway addresses they report.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail, ensure};
use clap::{Args, Subcommand};
use meridian_topology::names::is_label;
use meridian_topology::{DRAIN_SERVICE, GATEWAY_SERVICE};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use meridian_client::api::path_segment;
use meridian_client::probe::{
    self, HTTP_TIMEOUT, Http, InstanceMap, NodeInfo, RawRound, RoundProbe, TlsProber, dc_statuses,
    ms_since,
};
use meridian_client::report::{self, Kind, Observed, Report, Setup};
use meridian_federation::{Federation, Transport};
use meridian_node::http::drills::{DrillRequest, DrillRun, DrillRunner, DrillState};

/// Longest drill (`--for`).
const MAX_FOR: Duration = Duration::from_secs(3600);
/// Shortest and longest probe interval.
const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(10));
/// Longest failback wait.
const MAX_FAILBACK: Duration = Duration::from_secs(600);
/// Most nodes given with `--http`.
const MAX_NODES: usize = 64;
/// Most probe rounds per probing DC (about 3 hours at the default interval): bounds memory.
const MAX_ROUNDS: usize = 100_000;
/// Restore attempts (one second apart) before giving up.
const RESTORE_ATTEMPTS: usize = 5;
/// Services that are not applications.
const INTERNAL_SERVICES: [&str; 3] = [GATEWAY_SERVICE, DRAIN_SERVICE, "consul"];

/// `meridian drill ...`.
#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Drains a datacenter for a while, probes DNS and the gateways from every other DC, restores
    /// it, and reports how fast answers moved away and back.
    DcDown(DcDownArgs),
    /// Fails one service's instances in one datacenter (their TTL checks) for a while, probes
    /// from every DC, restores the checks, and reports.
    ServiceDown(ServiceDownArgs),
}

/// `meridian drill dc-down`.
#[derive(Debug, Args)]
pub struct DcDownArgs {
    /// The datacenter to drain.
    #[arg(long, value_name = "DC")]
    pub dc: String,
    /// The service to resolve and connect to (default: one registered in the drained DC,
    /// preferably one that other DCs have too).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// What every drill takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `meridian drill service-down`.
#[derive(Debug, Args)]
pub struct ServiceDownArgs {
    /// The datacenter whose instances fail.
    #[arg(long, value_name = "DC")]
    pub dc: String,
    /// The service whose instances fail; each needs a TTL check (the API sets only those).
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// What every drill takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The arguments every drill takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// How long the failure lasts (a Go duration: `30s`, `1m`).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_for)]
    pub duration: Duration,
    /// HTTP API (`host:port` or URL) of a node; give at least one node per datacenter (the
    /// first one of each DC is probed). Repeatable.
    #[arg(long = "http", value_name = "ADDR", required = true)]
    pub http: Vec<String>,
    /// ACL token for the drill's changes and reads: an `operator` token (or the management
    /// token) covers drains and check updates.
    #[arg(long, env = "MERIDIAN_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Time between probe rounds of each DC.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_interval)]
    pub interval: Duration,
    /// Longest wait, after the restore, for answers to come back.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_failback)]
    pub failback_timeout: Duration,
    /// Check the certificates the gateways' connections reach against the CA certificates in
    /// this PEM file. Without it ANY certificate is accepted: the drill then checks that the
    /// handshake completes, not whom it reaches.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The DNS domain of the names resolved and sent as SNI.
    #[arg(long, value_name = "DOMAIN", default_value = "consul")]
    pub domain: String,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_bounded(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = meridian_node::duration::parse_go_duration(s).map_err(|e| e.to_string())?;
    if d < min || d > max {
        return Err(format!(
            "must be between {} and {}",
            meridian_node::duration::format_go_duration(min),
            meridian_node::duration::format_go_duration(max)
        ));
    }
    Ok(d)
}

fn parse_for(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::from_millis(100), MAX_FOR)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_bounded(s, INTERVAL_RANGE.0, INTERVAL_RANGE.1)
}

fn parse_failback(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::ZERO, MAX_FAILBACK)
}

/// What the drill changes, and how to undo it.
enum Action {
    /// Drain the DC through this node.
    Drain { via: NodeInfo },
    /// Fail these TTL checks, then set each back to its status.
    FailChecks { checks: Vec<TtlCheck> },
}

/// A TTL check of an instance of the service.
#[derive(Clone, Debug)]
struct TtlCheck {
    node: NodeInfo,
    id: String,
    instance: String,
    /// `pass` or `warn`: how to restore it (critical ones are left alone).
    restore: Option<&'static str>,
}

/// One probing DC.
struct Prober {
    node: NodeInfo,
    attributed: bool,
    rounds: Arc<Mutex<Vec<RawRound>>>,
}

impl Prober {
    fn observed(&self, t0: Instant) -> Observed {
        let rounds = self
            .rounds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|r| r.relative_to(t0))
            .collect();
        Observed {
            dc: self.node.dc.clone(),
            node: self.node.base.clone(),
            gateway_attributed: self.attributed,
            rounds,
        }
    }
}

/// What a drill does: from `meridian drill`'s arguments, or from `POST /v1/operator/drill`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// dc-down or service-down.
    pub kind: Kind,
    /// The DC drained, or whose instances fail.
    pub target: String,
    /// The service probed (picked when `None`, for dc-down).
    pub service: Option<String>,
    /// How long the failure lasts.
    pub duration: Duration,
    /// One or more HTTP API addresses per DC.
    pub http: Vec<String>,
    /// Nodes of other DCs reached through the relay (the gateway transport): loopback
    /// stand-ins for their HTTP API, DNS server and gateway.
    pub relayed: Vec<Relayed>,
    /// The token of the drill's calls.
    pub token: Option<String>,
    /// Time between probe rounds.
    pub interval: Duration,
    /// Longest wait for answers to come back after the restore.
    pub failback_timeout: Duration,
    /// CA certificates to check the gateways' connections against.
    pub ca: Option<PathBuf>,
    /// The DNS domain.
    pub domain: String,
}

/// A node of another DC reached through the relay: where this process reaches its listeners.
#[derive(Debug, Clone)]
pub struct Relayed {
    /// Its HTTP API.
    pub http: String,
    /// Its DNS server.
    pub dns: SocketAddr,
    /// Its DC's gateway.
    pub gateway: SocketAddr,
}

/// Where a drill tells how it goes: the terminal (`meridian drill`) or a drill's published
/// state (the API's).
pub struct Progress {
    out: Option<watch::Sender<DrillState>>,
}

/// Most progress lines a published state keeps.
const MAX_LOG_LINES: usize = 100;

impl Progress {
    /// Lines to stderr.
    pub fn terminal() -> Self {
        Progress { out: None }
    }

    /// Lines, phases and partial reports into `out`.
    pub fn published(out: watch::Sender<DrillState>) -> Self {
        Progress { out: Some(out) }
    }

    fn line(&self, line: String) {
        match &self.out {
            None => eprintln!("{line}"),
            Some(out) => {
                tracing::info!(drill = %line);
                out.send_modify(|s| {
                    if s.log.len() < MAX_LOG_LINES {
                        s.log.push(line);
                    }
                });
            }
        }
    }

    fn phase(&self, phase: &str) {
        if let Some(out) = &self.out {
            out.send_modify(|s| s.phase = phase.to_owned());
        }
    }

    /// Whether anyone reads partial reports.
    fn wants_reports(&self) -> bool {
        self.out.is_some()
    }

    fn report(&self, report: &Report) {
        if let Some(out) = &self.out {
            let v = serde_json::to_value(report).ok();
            out.send_modify(|s| s.report = v);
        }
    }
}

/// How often a published drill's partial report is refreshed.
const PARTIAL_REPORT_EVERY: Duration = Duration::from_millis(500);

/// How a drill ended.
pub struct Outcome {
    /// The findings.
    pub report: Report,
    /// Interrupted by the operator.
    pub interrupted: bool,
    /// The restore failed: what to do by hand.
    pub not_restored: Option<anyhow::Error>,
}

/// Runs the drill; the exit code (the report is printed whenever the drill started).
#[tracing::instrument(skip_all)]
pub async fn run(cmd: DrillCommand) -> anyhow::Result<ExitCode> {
    let (kind, target, service, common) = match cmd {
        DrillCommand::DcDown(a) => (Kind::DcDown, a.dc, a.service, a.common),
        DrillCommand::ServiceDown(a) => (Kind::ServiceDown, a.dc, Some(a.service), a.common),
    };
    let plan = Plan {
        kind,
        target,
        service,
        duration: common.duration,
        http: common.http,
        relayed: Vec::new(),
        token: common.token,
        interval: common.interval,
        failback_timeout: common.failback_timeout,
        ca: common.ca,
        domain: common.domain,
    };
    let (stop_tx, stop) = watch::channel(false);
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop_tx.send_replace(true);
        }
    });
    let outcome = execute(plan, &Progress::terminal(), stop).await;
    ctrl_c.abort();
    let outcome = outcome?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&outcome.report)?);
    } else {
        print!("{}", report::human(&outcome.report));
    }
    if let Some(e) = outcome.not_restored {
        return Err(e);
    }
    Ok(if outcome.interrupted {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits `d`, or until `stop` turns true (then true), publishing partial reports meanwhile.
async fn wait_or_stop(
    d: Duration,
    stop: &mut watch::Receiver<bool>,
    progress: &Progress,
    partial: &(dyn Fn() -> Report + Sync),
) -> bool {
    let end = Instant::now() + d;
    loop {
        let step = if progress.wants_reports() {
            PARTIAL_REPORT_EVERY
        } else {
            d
        };
        let until = (Instant::now() + step).min(end);
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            _ = stop.wait_for(|s| *s) => return true,
        }
        if progress.wants_reports() {
            progress.report(&partial());
        }
        if Instant::now() >= end {
            return false;
        }
    }
}

/// Runs the drill `plan`, telling `progress` how it goes, until done or `stop` turns true
/// (then it restores at once).
pub async fn execute(
    plan: Plan,
    progress: &Progress,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    let Plan {
        kind,
        target,
        service,
        duration,
        http: http_addrs,
        relayed,
        token,
        interval,
        failback_timeout,
        ca,
        domain,
    } = plan;
    let target = target.to_ascii_lowercase();
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    ensure!(is_label(&target), "--dc {target:?} is not a DNS label");
    ensure!(
        !domain.is_empty() && domain.split('.').all(is_label),
        "--domain {domain:?} is not a DNS name"
    );
    if let Some(s) = &service {
        ensure!(is_label(s), "--service {s:?} is not a DNS label");
    }
    ensure!(
        http_addrs.len() + relayed.len() <= MAX_NODES,
        "at most {MAX_NODES} --http nodes"
    );
    let http = Http::new(token.as_deref())?;
    let tls = TlsProber::new(ca.as_deref())?;

    // Who is who.
    let mut by_dc: BTreeMap<String, Vec<NodeInfo>> = BTreeMap::new();
    for addr in &http_addrs {
        let node = probe::discover(&http, addr).await?;
        ensure!(
            is_label(&node.dc),
            "{} reports datacenter {:?}, not a DNS label",
            node.base,
            node.dc
        );
        tracing::debug!(dc = %node.dc, node = %node.node, dns = %node.dns, gateway = ?node.gateway, "node");
        by_dc.entry(node.dc.clone()).or_default().push(node);
    }
    for r in &relayed {
        let mut node = probe::discover(&http, &r.http).await?;
        ensure!(
            is_label(&node.dc),
            "a relayed node reports datacenter {:?}, not a DNS label",
            node.dc
        );
        // The addresses it reports are on its own network: this process reaches them through
        // the relay's stand-ins.
        node.dns = r.dns;
        node.gateway = Some(r.gateway);
        tracing::debug!(dc = %node.dc, node = %node.node, "node reached through the relay");
        by_dc.entry(node.dc.clone()).or_default().push(node);
    }
    let target_nodes = by_dc.get(&target).cloned().with_context(|| {
        format!(
            "no --http node is in {target} (the nodes given are in {})",
            by_dc.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let via = target_nodes[0].clone();
    let known = federation_dcs(&http, &via).await?;
    let mut notes = Vec::new();
    for dc in &known {
        if !by_dc.contains_key(dc) {
            notes.push(format!(
                "{dc} is not probed: no --http node of it was given"
            ));
        }
    }

    let service = match service {
        Some(s) => s.to_ascii_lowercase(),
        None => {
            let pick = pick_service(&http, &via, &known).await?;
            progress.line(format!(
                "drill: probing service {pick} (pass --service to choose)"
            ));
            pick
        }
    };
    let mut map = InstanceMap::new(&domain);
    for dc in &known {
        let node = by_dc.get(dc).map_or(&via, |n| &n[0]);
        let url = node.url(&format!("/v1/health/service/{service}?dc={dc}"));
        let health = http.get_json(&url, HTTP_TIMEOUT).await?;
        map.add_health(dc, &health);
    }
    ensure!(
        map.instances_in(&target) > 0,
        "{service} has no instance with an IP address in {target}: there is nothing to fail over"
    );

    let probers: Vec<NodeInfo> = by_dc
        .iter()
        .filter(|(dc, _)| kind == Kind::ServiceDown || **dc != target)
        .map(|(_, nodes)| nodes[0].clone())
        .collect();
    ensure!(
        !probers.is_empty(),
        "no other datacenter to probe from: give --http nodes of the other DCs"
    );

    let action = match kind {
        Kind::DcDown => {
            let statuses = dc_statuses(&http, &via, HTTP_TIMEOUT)
                .await
                .with_context(|| format!("reading {target}'s status at {}", via.base))?;
            if statuses.get(&target).map(String::as_str) == Some("drained") {
                bail!(
                    "{target} is drained already; undrain it first (DELETE /v1/operator/drain), \
                     since the drill would undrain it at its end"
                );
            }
            Action::Drain { via }
        }
        Kind::ServiceDown => {
            notes.push(
                "the instances were failed through their TTL checks: an application that \
                 refreshes its TTL check during the drill ends the failure early"
                    .into(),
            );
            Action::FailChecks {
                checks: ttl_checks(&http, &target_nodes, &service).await?,
            }
        }
    };

    // Certificates: which DC's instances present which certificate, through each prober's
    // gateway with the names that pin a DC.
    let mut tls = tls;
    let mut learn_error = None;
    for p in &probers {
        let Some(gw) = p.gateway else { continue };
        for dc in map.dcs().map(str::to_owned).collect::<Vec<_>>() {
            let tries = (2 * map.instances_in(&dc)).clamp(2, 8);
            let sni = format!("{service}.service.{dc}.{domain}");
            for _ in 0..tries {
                if let Err(e) = tls.learn(gw, &sni, &dc).await {
                    learn_error.get_or_insert(format!("{sni} through {gw}: {e}"));
                }
            }
        }
    }
    if let Some(e) = learn_error {
        notes.push(format!(
            "some connections failed before the drill (the first: {e}); the probe client \
             speaks TLS 1.3 only"
        ));
    }
    let attributed_target = tls.attributable_dcs().contains(&target);
    if !attributed_target {
        notes.push(format!(
            "gateway connections cannot be placed in a DC: {target}'s instances present no \
             certificate of their own (or none answered through a gateway), so only their \
             success is measured"
        ));
    }
    let tls = Arc::new(tls);
    let qname = format!("{service}.service.{domain}.");
    let sni = format!("{service}.service.{domain}");

    // Probe, from the baseline to the end.
    let baseline = (interval * 5).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let total = baseline + duration + failback_timeout + Duration::from_secs(30);
    let max_rounds = usize::try_from(total.as_millis() / interval.as_millis().max(1))
        .unwrap_or(usize::MAX)
        .saturating_add(100)
        .min(MAX_ROUNDS);
    let (ctl_tx, ctl_rx) = watch::channel(false);
    let map = Arc::new(map);
    let mut handles = Vec::new();
    let mut running = Vec::new();
    for node in probers {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let ctx = ProbeCtx {
            probe: RoundProbe {
                http: http.clone(),
                node: node.clone(),
                qname: qname.clone(),
                sni: sni.clone(),
                map: map.clone(),
                tls: tls.clone(),
            },
            interval,
            max_rounds,
            rounds: rounds.clone(),
        };
        handles.push(tokio::spawn(probe_loop(ctx, ctl_rx.clone())));
        running.push(Prober {
            attributed: attributed_target && node.gateway.is_some(),
            node,
            rounds,
        });
    }
    let from: Vec<&str> = running.iter().map(|p| p.node.dc.as_str()).collect();
    progress.line(format!(
        "drill {}: probing {sni} from {} every {} ms; baseline for {} ms",
        kind.as_str(),
        from.join(", "),
        interval.as_millis(),
        baseline.as_millis()
    ));
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let setup = |t0: Instant,
                 action_ack_ms: Option<f64>,
                 restore_ms: Option<f64>,
                 restore_ack_ms: Option<f64>,
                 interrupted: bool| Setup {
        kind,
        target: target.clone(),
        service: service.clone(),
        domain: domain.clone(),
        for_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        started_unix_s,
        action_ack_ms,
        restore_ms,
        restore_ack_ms,
        end_ms: ms_since(t0, Instant::now()),
        interrupted,
        notes: notes.clone(),
    };
    let observe =
        |t0: Instant| -> Vec<Observed> { running.iter().map(|p| p.observed(t0)).collect() };
    progress.phase("baseline");
    let before = Instant::now();
    if wait_or_stop(baseline, &mut stop, progress, &|| {
        report::analyse(&setup(before, None, None, None, false), &observe(before))
    })
    .await
    {
        ctl_tx.send_replace(true);
        bail!("interrupted before the drill started; nothing was changed");
    }

    // The failure.
    let t0 = Instant::now();
    if let Err(e) = act(&http, &action).await {
        // Undo whatever part of it happened.
        let _ = restore(&http, &action).await;
        ctl_tx.send_replace(true);
        return Err(e.context("the drill could not start"));
    }
    let action_ack_ms = ms_since(t0, Instant::now());
    kick(&ctl_tx);
    progress.phase("failing");
    progress.line(format!(
        "drill {}: {} at +0 ms (acknowledged in {:.0} ms); restoring after {} ms",
        kind.as_str(),
        match kind {
            Kind::DcDown => format!("{target} drained"),
            Kind::ServiceDown => format!("{service} failed in {target}"),
        },
        action_ack_ms,
        duration.as_millis()
    ));
    let mut interrupted = wait_or_stop(duration, &mut stop, progress, &|| {
        report::analyse(
            &setup(t0, Some(action_ack_ms), None, None, false),
            &observe(t0),
        )
    })
    .await;
    if interrupted {
        progress.line("drill: interrupted; restoring now".to_owned());
    }

    // The restore, then the wait for answers to come back.
    let t1 = Instant::now();
    let restored = restore(&http, &action).await;
    let restore_ms = ms_since(t0, t1);
    let restore_ack_ms = restored
        .as_ref()
        .ok()
        .map(|()| ms_since(t1, Instant::now()));
    kick(&ctl_tx);
    if restored.is_ok() && !interrupted {
        progress.phase("failing-back");
        progress.line(format!(
            "drill {}: restored; waiting up to {} ms for answers to come back",
            kind.as_str(),
            failback_timeout.as_millis()
        ));
        let deadline = t1 + failback_timeout;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_partial = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => { interrupted = true; break; }
            }
            let observed = observe(t0);
            if progress.wants_reports() && last_partial.elapsed() >= PARTIAL_REPORT_EVERY {
                last_partial = Instant::now();
                progress.report(&report::analyse(
                    &setup(
                        t0,
                        Some(action_ack_ms),
                        Some(restore_ms),
                        restore_ack_ms,
                        false,
                    ),
                    &observed,
                ));
            }
            if report::failed_back(&observed, &target, restore_ms) || Instant::now() >= deadline {
                break;
            }
        }
    }
    ctl_tx.send_replace(true);
    for h in handles {
        // Each round is bounded by its timeouts; a stuck task is not waited for long.
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    let report = report::analyse(
        &setup(
            t0,
            Some(action_ack_ms),
            Some(restore_ms),
            restore_ack_ms,
            interrupted,
        ),
        &observe(t0),
    );
    progress.report(&report);
    let not_restored = restored.err().map(|e| {
        e.context(format!(
            "{target} was NOT restored: {}",
            match &action {
                Action::Drain { via } =>
                    format!("undrain it with DELETE {}", via.url("/v1/operator/drain")),
                Action::FailChecks { .. } =>
                    "set the instances' TTL checks back with PUT /v1/agent/check/pass/<id>".into(),
            }
        ))
    });
    Ok(Outcome {
        report,
        interrupted,
        not_restored,
    })
}

/// Runs the API's drills (`POST /v1/operator/drill`) with this engine.
pub struct ApiRunner {
    /// The node's federation, when its transport is the gateways: other DCs' nodes are then
    /// reached through the relay, not at the HTTP addresses their gateways advertise.
    relay: Option<Arc<Federation>>,
}

impl ApiRunner {
    /// The runner of a node with `federation` (none: every DC is reached directly).
    pub fn new(federation: Option<&Arc<Federation>>) -> ApiRunner {
        ApiRunner {
            relay: federation
                .filter(|f| matches!(f.transport(), Transport::Gateway(_)))
                .cloned(),
        }
    }
}

impl DrillRunner for ApiRunner {
    fn run(
        &self,
        mut req: DrillRequest,
        out: watch::Sender<DrillState>,
        stop: watch::Receiver<bool>,
    ) -> DrillRun {
        let relay = self.relay.clone();
        Box::pin(async move {
            // Through the gateways: one relay per other DC, kept open for the drill.
            let mut forwards = Vec::new();
            let mut relayed = Vec::new();
            if let Some(f) = &relay {
                req.http.truncate(1);
                let view = f.watch().borrow().clone();
                for r in view.remotes() {
                    match f.relay(&r.name).await {
                        Ok(fw) => {
                            relayed.push(Relayed {
                                http: fw.http.to_string(),
                                dns: fw.dns,
                                gateway: fw.gateway,
                            });
                            forwards.push(fw);
                        }
                        Err(e) => {
                            out.send_modify(|s| {
                                s.phase = "failed".into();
                                s.error = Some(format!("{}: {e}", r.name));
                            });
                            return;
                        }
                    }
                }
            }
            let kind = if req.kind == "service-down" {
                Kind::ServiceDown
            } else {
                Kind::DcDown
            };
            let plan = Plan {
                kind,
                target: req.datacenter,
                service: req.service,
                duration: req.duration,
                http: req.http,
                relayed,
                token: req.token,
                interval: Duration::from_millis(100),
                failback_timeout: Duration::from_secs(30),
                ca: None,
                domain: req.domain,
            };
            let progress = Progress::published(out.clone());
            // A node shutting down stops its drill, which restores what it changed at once.
            let outcome = execute(plan, &progress, stop).await;
            out.send_modify(|s| match outcome {
                Ok(o) => {
                    s.phase = "done".into();
                    s.report = serde_json::to_value(&o.report).ok();
                    s.error = o.not_restored.map(|e| format!("{e:#}"));
                }
                Err(e) => {
                    s.phase = "failed".into();
                    s.error = Some(format!("{e:#}"));
                }
            });
        })
    }
}

/// The datacenters the federation knows, as `node` sees them.
async fn federation_dcs(http: &Http, node: &NodeInfo) -> anyhow::Result<BTreeSet<String>> {
    let v = http
        .get_json(&node.url("/v1/catalog/datacenters"), HTTP_TIMEOUT)
        .await?;
    let mut dcs: BTreeSet<String> = v
        .as_array()
        .context("/v1/catalog/datacenters is not an array")?
        .iter()
        .filter_map(|d| d.as_str().map(str::to_ascii_lowercase))
        .filter(|d| is_label(d))
        .collect();
    dcs.insert(node.dc.clone());
    Ok(dcs)
}

/// A service of the drained DC to probe: preferably one that other DCs have too.
async fn pick_service(
    http: &Http,
    via: &NodeInfo,
    known: &BTreeSet<String>,
) -> anyhow::Result<String> {
    let names = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !INTERNAL_SERVICES.contains(&k.as_str()) && is_label(k))
                    .map(|k| k.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default()
    };
    let local = names(
        &http
            .get_json(&via.url("/v1/catalog/services"), HTTP_TIMEOUT)
            .await?,
    );
    let mut elsewhere = BTreeSet::new();
    for dc in known.iter().filter(|d| **d != via.dc) {
        let url = via.url(&format!("/v1/catalog/services?dc={dc}"));
        elsewhere.extend(names(&http.get_json(&url, HTTP_TIMEOUT).await?));
    }
    local
        .iter()
        .find(|s| elsewhere.contains(*s))
        .or_else(|| local.iter().next())
        .cloned()
        .with_context(|| format!("{} has no service to probe; pass --service", via.dc))
}

/// The TTL checks of every instance of `service` in the DC of `nodes`; each instance needs one,
/// and its node must be among `nodes` (checks are set on the node that holds them).
async fn ttl_checks(
    http: &Http,
    nodes: &[NodeInfo],
    service: &str,
) -> anyhow::Result<Vec<TtlCheck>> {
    let url = nodes[0].url(&format!("/v1/health/service/{service}"));
    let health = http.get_json(&url, HTTP_TIMEOUT).await?;
    let mut out = Vec::new();
    for e in health.as_array().into_iter().flatten() {
        let node_name = e["Node"]["Node"].as_str().unwrap_or("");
        let instance = e["Service"]["ID"].as_str().unwrap_or("").to_owned();
        let node = nodes
            .iter()
            .find(|n| n.node == node_name)
            .with_context(|| {
                format!(
                    "instance {instance} is on node {node_name}: give that node's HTTP address \
                     with --http (checks are set on the node that holds them)"
                )
            })?;
        let mut found = false;
        for c in e["Checks"].as_array().into_iter().flatten() {
            if c["ServiceID"].as_str() != Some(instance.as_str()) || c["Type"] != "ttl" {
                continue;
            }
            let id = c["CheckID"].as_str().unwrap_or("").to_owned();
            let restore = match c["Status"].as_str() {
                Some("passing") => Some("pass"),
                Some("warning") => Some("warn"),
                _ => None,
            };
            out.push(TtlCheck {
                node: node.clone(),
                id,
                instance: instance.clone(),
                restore,
            });
            found = true;
        }
        ensure!(
            found,
            "instance {instance} of {service} has no TTL check: service-down fails instances \
             through their TTL checks (PUT /v1/agent/check/fail/<id>), the only health the API \
             lets a client set; register the instances with a TTL check"
        );
    }
    ensure!(
        !out.is_empty(),
        "{service} has no instance in {}",
        nodes[0].dc
    );
    Ok(out)
}

/// Applies the drill's failure.
async fn act(http: &Http, action: &Action) -> anyhow::Result<()> {
    match action {
        Action::Drain { via } => {
            http.put_json(
                &via.url("/v1/operator/drain"),
                &json!({"Reason": "meridian drill dc-down"}),
            )
            .await?;
            Ok(())
        }
        Action::FailChecks { checks } => {
            for c in checks {
                let url = c.node.url(&format!(
                    "/v1/agent/check/fail/{}?note=meridian%20drill%20service-down",
                    path_segment(&c.id)
                ));
                http.put_empty(&url)
                    .await
                    .with_context(|| format!("failing instance {}", c.instance))?;
            }
            Ok(())
        }
    }
}

/// Undoes the drill's failure, retrying a few times.
async fn restore(http: &Http, action: &Action) -> anyhow::Result<()> {
    let mut last = anyhow!("not tried");
    for attempt in 0..RESTORE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let r = match action {
            Action::Drain { via } => http.delete(&via.url("/v1/operator/drain")).await,
            Action::FailChecks { checks } => {
                let mut r = Ok(());
                for c in checks {
                    let Some(verb) = c.restore else { continue };
                    let url = c
                        .node
                        .url(&format!("/v1/agent/check/{verb}/{}", path_segment(&c.id)));
                    if let Err(e) = http.put_empty(&url).await {
                        r = Err(e);
                    }
                }
                r
            }
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                let e = anyhow::Error::new(e);
                tracing::warn!(attempt, error = %format!("{e:#}"), "restore failed");
                last = e;
            }
        }
    }
    Err(last)
}

/// What one probing task needs.
struct ProbeCtx {
    probe: RoundProbe,
    interval: Duration,
    max_rounds: usize,
    rounds: Arc<Mutex<Vec<RawRound>>>,
}

/// Starts a round of every probing task at once (they see a change of the stop flag that left
/// it false).
fn kick(ctl: &watch::Sender<bool>) {
    ctl.send_modify(|_| {});
}

/// Probes one DC until told to stop (see [`RoundProbe::run`]).
#[tracing::instrument(skip_all, fields(dc = %ctx.probe.node.dc))]
async fn probe_loop(ctx: ProbeCtx, ctl: watch::Receiver<bool>) {
    ctx.probe
        .run(ctx.interval, ctx.max_rounds, &ctx.rounds, ctl)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_for("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_for("2h").is_err());
        assert!(parse_for("0").is_err());
        assert_eq!(parse_interval("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_interval("1ms").is_err());
        assert!(parse_interval("x").is_err());
        assert_eq!(parse_failback("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn parses_the_documented_commands() {
        use clap::Parser as _;
        /// `meridian drill` alone, so the test needs nothing of the whole command line.
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: Commands,
        }
        #[derive(Debug, clap::Subcommand)]
        enum Commands {
            #[command(subcommand)]
            Drill(DrillCommand),
        }
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let cli = parse(&[
            "meridian", "drill", "dc-down", "--dc", "dc1", "--for", "30s", "--http", "h1:8500",
            "--http", "h2:8500", "--json",
        ])
        .expect("dc-down");
        let Commands::Drill(DrillCommand::DcDown(a)) = cli.command else {
            panic!("dc-down parsed as something else");
        };
        assert_eq!(a.common.http, ["h1:8500", "h2:8500"]);
        assert_eq!(a.common.interval, Duration::from_millis(100));
        assert!(a.common.json && a.service.is_none() && a.common.ca.is_none());
        parse(&[
            "meridian",
            "drill",
            "service-down",
            "--dc",
            "dc1",
            "--service",
            "web",
            "--for",
            "5s",
            "--http",
            "h",
            "--ca",
            "ca.pem",
            "--interval",
            "50ms",
        ])
        .expect("service-down");
        // --for and --http are required; service-down needs --service.
        assert!(parse(&["meridian", "drill", "dc-down", "--dc", "dc1", "--http", "h"]).is_err());
        assert!(parse(&["meridian", "drill", "dc-down", "--dc", "dc1", "--for", "1s"]).is_err());
        assert!(
            parse(&[
                "meridian",
                "drill",
                "service-down",
                "--dc",
                "d",
                "--for",
                "1s",
                "--http",
                "h"
            ])
            .is_err()
        );
    }

    #[test]
    fn names_are_dns_labels() {
        // The one rule of every name (topology's): a name DNS cannot carry is refused up front,
        // since the drill resolves it over DNS.
        assert!(is_label("web") && is_label("dc-1"));
        assert!(!is_label("_x") && !is_label("-x") && !is_label("my_svc"));
        assert!(!is_label("") && !is_label("a/b") && !is_label("a.b") && !is_label("w?dc=x"));
        assert!(!is_label(&"a".repeat(64)));
    }

    #[test]
    fn check_ids_are_escaped_in_paths() {
        assert_eq!(path_segment("service:web-1"), "service:web-1");
        assert_eq!(path_segment("a b/c?"), "a%20b%2Fc%3F");
    }
}
