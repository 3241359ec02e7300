//! The failover runtime: probes every remote DC's gateways over the tunnel (data plane), reads
//! each federation stream's state (control plane), feeds both to `topology`'s detector, tracks
//! drains and services that recovered, and republishes the views with the result, so DNS, the
//! gateway and the API all follow one decision.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use meridian_gateway::Tunnel;
use meridian_topology::metrics;
use meridian_topology::{
    DRAIN_SERVICE, DcLiveness, DcState, DcStatus, Detector, Failover, FailoverPolicy, Health, View,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::FailoverSection;

/// The detector's clock: milliseconds since the runtime started.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            // The failover stage's epoch: every later reading is an offset from it.
            #[allow(clippy::disallowed_methods)]
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `ms` milliseconds after the start, for timers.
    fn instant(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_millis(ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Counters of the failover runtime (its families: [`FailoverMetrics`]).
#[derive(Debug, Default)]
pub struct FailoverCounters {
    /// Probes answered.
    pub probes_ok: std::sync::atomic::AtomicU64,
    /// Probes failed or timed out.
    pub probes_failed: std::sync::atomic::AtomicU64,
    /// Changes of some DC's published status.
    pub transitions: std::sync::atomic::AtomicU64,
}

/// The running failover stage between the producers' views and the readers.
pub struct FailoverRuntime {
    views: watch::Receiver<Arc<View>>,
    /// New settings (a reload), for the running stage.
    settings: watch::Sender<FailoverSection>,
    clock: Clock,
    tunnel: Arc<OnceLock<Arc<Tunnel>>>,
    counters: Arc<FailoverCounters>,
    task: JoinHandle<()>,
}

impl FailoverRuntime {
    /// Starts the stage on the producers' views `input`.
    pub fn start(config: &FailoverSection, input: watch::Receiver<Arc<View>>) -> Self {
        let clock = Clock::new();
        let tunnel = Arc::new(OnceLock::new());
        let counters = Arc::new(FailoverCounters::default());
        let policy = Arc::new(config.policy());
        let first = input.borrow().clone();
        let mut runner = Runner {
            config: config.clone(),
            detector: Detector::new(config.detector()),
            policy,
            clock,
            last_input: first.clone(),
            states: HashMap::new(),
            holds: HashMap::new(),
            published: None,
            order: Vec::new(),
            in_flight: HashMap::new(),
            tunnel: tunnel.clone(),
            counters: counters.clone(),
        };
        let now = clock.now_ms();
        runner.remember_states(&first);
        let (out, views) = watch::channel(runner.compose(&first, now));
        let (settings, reconfig) = watch::channel(config.clone());
        let task = tokio::spawn(runner.run(input, reconfig, out));
        FailoverRuntime {
            views,
            settings,
            clock,
            tunnel,
            counters,
            task,
        }
    }

    /// The views with failover applied.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.views.clone()
    }

    /// The detector's clock (for "in this state for" figures).
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The runtime's counters.
    pub fn counters(&self) -> &Arc<FailoverCounters> {
        &self.counters
    }

    /// The stage's metric families, to register on the node's registry.
    pub fn metrics(&self) -> FailoverMetrics {
        FailoverMetrics {
            views: self.views.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Probes go through `tunnel` from now on (once the gateway is up).
    pub fn set_tunnel(&self, tunnel: Arc<Tunnel>) {
        let _ = self.tunnel.set(tunnel);
    }

    /// Runs with `config` from now on (a reload): thresholds, probe timing, policy. What the
    /// detector knows of every DC is kept.
    pub fn reconfigure(&self, config: &FailoverSection) {
        self.settings.send_replace(config.clone());
    }

    /// Stops the stage.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for FailoverRuntime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The failover stage's families: every DC's status and RTT as this node sees them (from the
/// published views), and the probe counters. Register it on the node's registry.
#[derive(Debug, Clone)]
pub struct FailoverMetrics {
    views: watch::Receiver<Arc<View>>,
    counters: Arc<FailoverCounters>,
}

impl Collector for FailoverMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let view = self.views.borrow().clone();
        let f = view.failover();
        const STATUSES: [DcStatus; 4] = [
            DcStatus::Up,
            DcStatus::Suspect,
            DcStatus::Down,
            DcStatus::Drained,
        ];
        let dcs = view.datacenters();
        metrics::gauge_by(
            &mut enc,
            "meridian_failover_dc_status",
            "1 for each DC's current status as this node sees it.",
            dcs.iter().flat_map(|dc| {
                let current = f.liveness(dc).status;
                STATUSES.iter().map(move |s| {
                    (
                        [("dc", *dc), ("status", s.as_str())],
                        u32::from(current == *s),
                    )
                })
            }),
        )?;
        metrics::gauge_by(
            &mut enc,
            "meridian_failover_rtt_seconds",
            "Smoothed data-plane probe round trip to each DC.",
            dcs.iter()
                .filter_map(|dc| Some(([("dc", *dc)], f64::from(f.rtt_us(dc)?) / 1e6))),
        )?;
        let c = &self.counters;
        metrics::counter_by(
            &mut enc,
            "meridian_failover_probes",
            "Data-plane probes of remote DCs' gateways.",
            [
                ([("outcome", "ok")], c.probes_ok.load(Relaxed)),
                ([("outcome", "failed")], c.probes_failed.load(Relaxed)),
            ],
        )?;
        metrics::counters(
            &mut enc,
            &[(
                "meridian_failover_transitions",
                "Changes of a DC's status.",
                c.transitions.load(Relaxed),
            )],
        )
    }
}

type ProbeResult = (Arc<str>, Option<u32>);

struct Runner {
    config: FailoverSection,
    detector: Detector,
    policy: Arc<FailoverPolicy>,
    clock: Clock,
    last_input: Arc<View>,
    /// Each DC's catalog as last seen, to find services whose instances came back.
    states: HashMap<Arc<str>, DcState>,
    /// `(dc, service)` inside the failback period, until when (clock ms).
    holds: HashMap<(Arc<str>, Arc<str>), u64>,
    published: Option<Arc<Failover>>,
    /// Remote DCs nearest first, re-ranked with hysteresis at every publication.
    order: Vec<Arc<str>>,
    /// Probes in flight per DC.
    in_flight: HashMap<Arc<str>, usize>,
    tunnel: Arc<OnceLock<Arc<Tunnel>>>,
    counters: Arc<FailoverCounters>,
}

fn drained(state: &DcState) -> bool {
    state.instances_of(DRAIN_SERVICE).next().is_some()
}

/// Whether `state` has an instance of `service` that is not critical, and whether it has any.
fn service_health(state: &DcState, service: &str) -> (bool, bool) {
    let mut any = false;
    for i in state.instances_of(service) {
        any = true;
        if state.health_of(i) != Health::Critical {
            return (true, true);
        }
    }
    (false, any)
}

/// The services whose instances (or their nodes' checks) differ between `old` and `new`.
fn touched_services(old: &DcState, new: &DcState) -> HashSet<Arc<str>> {
    let changes = new.changes_since(old);
    let mut out: HashSet<Arc<str>> = HashSet::new();
    let mut add = |s: &str| {
        if !out.contains(s) {
            out.insert(s.to_ascii_lowercase().into());
        }
    };
    for key in &changes.instances {
        for state in [old, new] {
            if let Some(i) = state.instance_at(key) {
                add(&i.service);
            }
        }
    }
    for node in changes.nodes.iter().chain(&changes.check_nodes) {
        for state in [old, new] {
            for i in state.instances_on(node) {
                add(&i.service);
            }
        }
    }
    out
}

/// Waits until `deadline`, or for ever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Probes of one DC in flight at once, at most: enough for a new probe every interval while the
/// slowest may still be answered (see `probe_all`), and no more on a WAN so slow it would need
/// more.
const MAX_PROBES_IN_FLIGHT: usize = 20;

impl Runner {
    async fn run(
        mut self,
        mut input: watch::Receiver<Arc<View>>,
        mut reconfig: watch::Receiver<FailoverSection>,
        out: watch::Sender<Arc<View>>,
    ) {
        let (tx, mut rx) = mpsc::channel::<ProbeResult>(64);
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.config.probe_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut input_changed = false;
            // Woken when a silence reaches a threshold, not at the next tick after it: that
            // would add up to a probe interval to every detection.
            let deadline = self.detector.next_deadline(self.clock.now_ms());
            let deadline = deadline.map(|ms| self.clock.instant(ms));
            tokio::select! {
                () = until(deadline) => {}
                r = input.changed() => {
                    if r.is_err() { return }
                    let view = input.borrow_and_update().clone();
                    self.track_recoveries(&view);
                    self.last_input = view;
                    input_changed = true;
                }
                _ = ticker.tick() => self.probe_all(&tx),
                Ok(()) = reconfig.changed() => {
                    let config = reconfig.borrow_and_update().clone();
                    if config.probe_interval_ms != self.config.probe_interval_ms {
                        ticker = tokio::time::interval(Duration::from_millis(config.probe_interval_ms));
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    self.detector.set_config(config.detector());
                    self.policy = Arc::new(config.policy());
                    self.config = config;
                    // Republish: the policy may send answers elsewhere now.
                    input_changed = true;
                }
                Some((dc, rtt)) = rx.recv() => {
                    if let Some(n) = self.in_flight.get_mut(&dc) {
                        *n = n.saturating_sub(1);
                    }
                    let counter = if rtt.is_some() { &self.counters.probes_ok } else { &self.counters.probes_failed };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.detector.probe(&dc, self.clock.now_ms(), rtt);
                }
            }
            let now = self.clock.now_ms();
            self.observe(now);
            let failover = self.failover();
            let changed = self
                .published
                .as_ref()
                .is_none_or(|p| differs(p, &failover));
            if changed || input_changed {
                let newly_down = match &self.published {
                    Some(p) => {
                        self.count_transitions(p, &failover);
                        failover
                            .newly_down(p)
                            .map(|(dc, known)| (dc.clone(), known))
                            .collect()
                    }
                    None => Vec::new(),
                };
                let failover = Arc::new(failover);
                self.published = Some(failover.clone());
                let view = View::clone(&self.last_input).with_failover(failover);
                out.send_replace(Arc::new(view));
                self.announce_down(&newly_down);
            }
        }
    }

    /// The first view, before the loop runs.
    fn compose(&mut self, view: &Arc<View>, now: u64) -> Arc<View> {
        self.observe(now);
        let failover = Arc::new(self.failover());
        self.published = Some(failover.clone());
        Arc::new(View::clone(view).with_failover(failover))
    }

    /// Says which DCs were just found down. The gateway closes their tunnel connections itself
    /// once it reads the view without them (`meridian_gateway::Gateway::start`), so that streams
    /// stuck on a dead DC end then rather than at the idle timeout.
    fn announce_down(&self, down: &[(Arc<str>, bool)]) {
        for (dc, was_up) in down {
            // A DC this node has not seen yet is not news (every remote starts so): only one that
            // was published up and went down is a warning.
            if *was_up {
                // The bound it was found within, for a drill or a benchmark to hold it to.
                let bound_ms = self.published.as_ref().map(|f| f.liveness(dc).bound_ms);
                tracing::warn!(%dc, ?bound_ms, "datacenter down: answers and routes move away from it");
            } else {
                tracing::info!(%dc, "datacenter not yet reachable: no answers into it until it is");
            }
        }
    }

    fn count_transitions(&self, old: &Failover, new: &Failover) {
        let moved = new
            .liveness
            .iter()
            .filter(|(dc, l)| old.liveness.get(*dc).is_none_or(|o| o.status != l.status))
            .count();
        self.counters
            .transitions
            .fetch_add(moved as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Feeds the detector what the latest view says: the DCs, their control streams, drains.
    fn observe(&mut self, now: u64) {
        let unix = meridian_federation::now_ms();
        let view = self.last_input.clone();
        for r in view.remotes() {
            let fresh = r.connected
                && unix.saturating_sub(r.confirmed_unix_ms) <= self.config.control_stale_after_ms;
            self.detector.control(&r.name, now, fresh);
            self.detector.set_drained(&r.name, now, drained(&r.state));
        }
        self.detector.tick(now);
        self.holds.retain(|_, until| *until > now);
    }

    /// Starts a probe of every remote DC that has gateways and fewer probes in flight than its
    /// timeout needs (at most [`MAX_PROBES_IN_FLIGHT`]).
    fn probe_all(&mut self, tx: &mpsc::Sender<ProbeResult>) {
        let Some(tunnel) = self.tunnel.get() else {
            return;
        };
        let configured = Duration::from_millis(self.config.probe_timeout_ms);
        let interval = self.config.probe_interval_ms.max(1);
        for r in self.last_input.remotes() {
            let dc: Arc<str> = r.name.to_ascii_lowercase().into();
            // The timeout follows the DC's measured RTT: on a long WAN a probe that must
            // reconnect first takes three round trips, and one with a lost packet a
            // retransmission more. Past it the probe counts as failed for the tunnel's
            // connection (two such and the tunnel tries the DC's next gateway), but its answer
            // is awaited as long as the DC may be silent, `longest`: an answer that late still
            // counts as evidence, and it is how a WAN whose RTT just grew past the timeout
            // teaches the detector the new RTT (a late answer dropped would keep a slow DC
            // down for good). A later one could not change the verdict.
            let longest =
                Duration::from_millis(self.detector.silence_bound_ms(&dc)).max(configured);
            // Before the first answer the RTT is unknown, and the first probe connects too:
            // then it may take as long as the DC may be silent, or a WAN slower than the
            // configured timeout could never be measured at all.
            let timeout = self
                .detector
                .rtt_us(&dc)
                .map(|us| Duration::from_micros((us * 4.0) as u64))
                .map_or(longest, |t| t.clamp(configured, longest));
            // Probes overlap: one per interval for as long as the slowest may take, so that on a
            // long, lossy WAN probes waiting out lost packets never stop new ones going out.
            let cap = (u64::try_from(longest.as_millis()).unwrap_or(u64::MAX) / interval + 1)
                .clamp(3, MAX_PROBES_IN_FLIGHT as u64) as usize;
            if self.in_flight.get(&dc).is_some_and(|n| *n >= cap) {
                continue;
            }
            let gws = r.state.gateway_addrs();
            if gws.is_empty() {
                continue;
            }
            *self.in_flight.entry(dc.clone()).or_default() += 1;
            let (tunnel, tx) = (tunnel.clone(), tx.clone());
            tokio::spawn(async move {
                let rtt = match tunnel.probe(&dc, &gws, timeout, longest).await {
                    Ok(d) => {
                        tracing::trace!(%dc, rtt = ?d, "probe answered");
                        Some(u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
                    }
                    Err(e) => {
                        tracing::debug!(%dc, error = %e, ?timeout, "probe failed");
                        None
                    }
                };
                let _ = tx.send((dc, rtt)).await;
            });
        }
    }

    fn remember_states(&mut self, view: &View) {
        self.states.clear();
        self.states.insert(
            view.datacenter().to_ascii_lowercase().into(),
            view.local().clone(),
        );
        for r in view.remotes() {
            self.states
                .insert(r.name.to_ascii_lowercase().into(), r.state.clone());
        }
    }

    /// Holds every service whose instances in some DC were all critical and now are not, for
    /// the failback period; releases a hold when they fail again.
    fn track_recoveries(&mut self, view: &View) {
        let now = self.clock.now_ms();
        let until = now + self.config.failback_after_ms;
        let dcs = std::iter::once((view.datacenter(), view.local()))
            .chain(view.remotes().map(|r| (&*r.name, &r.state)));
        for (dc, state) in dcs {
            let key: Arc<str> = dc.to_ascii_lowercase().into();
            let Some(old) = self.states.get(&key) else {
                continue;
            };
            // A service recovers only from all its instances critical, and a hold is only ever
            // lifted: with no critical check before and no hold in this DC there is nothing to
            // find, and the diff (a walk of the changed catalog, per view) is skipped.
            if !old.has_critical_checks() && !self.holds.keys().any(|(d, _)| *d == key) {
                continue;
            }
            for service in touched_services(old, state) {
                let (was_healthy, existed) = service_health(old, &service);
                let (healthy, _) = service_health(state, &service);
                let hold = (key.clone(), service);
                if existed && !was_healthy && healthy {
                    tracing::info!(dc = %hold.0, service = %hold.1, for_ms = self.config.failback_after_ms, "instances recovered; answers return after the failback period");
                    self.holds.insert(hold, until);
                } else if !healthy {
                    self.holds.remove(&hold);
                }
            }
        }
        self.remember_states(view);
    }

    fn failover(&mut self) -> Failover {
        let mut liveness = self.detector.liveness();
        // Chaos self-test fault (feature `chaos-broken` only): a resolver that ignores `Down`.
        #[cfg(feature = "chaos-broken")]
        if crate::chaos_break::active("ignore-down") {
            liveness = liveness
                .into_iter()
                .map(|(dc, mut l)| {
                    if l.status == DcStatus::Down {
                        l.status = DcStatus::Up;
                    }
                    (dc, l)
                })
                .collect();
        }
        self.order = meridian_topology::rank_by_rtt(&self.order, &liveness);
        let local = &self.last_input;
        if drained(local.local()) {
            liveness.insert(
                local.datacenter().to_ascii_lowercase().into(),
                DcLiveness {
                    status: DcStatus::Drained,
                    ..DcLiveness::default()
                },
            );
        }
        Failover {
            liveness,
            held: self.holds.keys().cloned().collect(),
            policy: self.policy.clone(),
            order: self.order.clone(),
        }
    }
}

/// Whether readers must see `new`: a status, staleness or hold changed, or an RTT moved by more
/// than a fifth (which may reorder the nearest DCs).
fn differs(old: &Failover, new: &Failover) -> bool {
    if old.held != new.held || old.order != new.order || old.liveness.len() != new.liveness.len() {
        return true;
    }
    new.liveness.iter().any(|(dc, l)| {
        let Some(o) = old.liveness.get(dc) else {
            return true;
        };
        let rtt_moved = match (o.rtt_us, l.rtt_us) {
            (Some(a), Some(b)) => a.abs_diff(b) > a / 5,
            (a, b) => a.is_some() != b.is_some(),
        };
        o.status != l.status || o.stale != l.stale || rtt_moved
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::{Check, Instance};

    fn inst(id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            port: 443,
            tags: Vec::new(),
            meta: Default::default(),
            weights: Default::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        }
    }

    fn check(id: &str, status: Health) -> Check {
        Check {
            id: format!("service:{id}"),
            name: String::new(),
            node: "n1".into(),
            service_id: id.into(),
            service_name: String::new(),
            status,
            output: String::new(),
            notes: String::new(),
            spec: None,
            create_index: 0,
            modify_index: 0,
        }
    }

    fn runner(failback_after_ms: u64) -> Runner {
        let config = FailoverSection {
            failback_after_ms,
            ..FailoverSection::default()
        };
        Runner {
            detector: Detector::new(config.detector()),
            policy: Arc::new(config.policy()),
            config,
            clock: Clock::new(),
            last_input: Arc::new(View::new("dc3", DcState::default())),
            states: HashMap::new(),
            holds: HashMap::new(),
            published: None,
            order: Vec::new(),
            in_flight: HashMap::new(),
            tunnel: Arc::new(OnceLock::new()),
            counters: Arc::default(),
        }
    }

    fn with_remote(state: &DcState) -> View {
        let remote = meridian_topology::RemoteDc {
            name: "dc1".into(),
            state: state.clone(),
            ..Default::default()
        };
        View::new("dc3", DcState::default())
            .with_remotes(std::iter::once((Arc::<str>::from("dc1"), Arc::new(remote))).collect())
    }

    #[test]
    fn a_service_that_recovers_in_a_replica_is_held_for_the_failback_period() {
        let mut r = runner(60_000);
        let mut s = DcState::default();
        s.put_instance(inst("w1", "web"), vec![check("w1", Health::Passing)]);
        r.track_recoveries(&with_remote(&s));
        s.put_instance(inst("w1", "web"), vec![check("w1", Health::Critical)]);
        r.track_recoveries(&with_remote(&s));
        assert!(r.failover().held.is_empty(), "failing is not recovering");
        s.put_instance(inst("w1", "web"), vec![check("w1", Health::Passing)]);
        r.track_recoveries(&with_remote(&s));
        let held = r.failover().held;
        assert!(
            held.contains(&(Arc::from("dc1"), Arc::from("web"))),
            "{held:?}"
        );
        s.put_instance(inst("w1", "web"), vec![check("w1", Health::Critical)]);
        r.track_recoveries(&with_remote(&s));
        assert!(
            r.failover().held.is_empty(),
            "failing again releases the hold"
        );
    }

    #[test]
    fn touched_services_follow_instances_and_checks() {
        let mut a = DcState::default();
        a.register(inst("w1", "web"), vec![check("w1", Health::Critical)], 1);
        a.register(inst("d1", "db"), vec![check("d1", Health::Passing)], 2);
        let mut b = a.clone();
        b.update_check("n1", "service:w1", Health::Passing, "", 3);
        let t = touched_services(&a, &b);
        // Both instances are on n1, whose checks changed.
        assert!(t.contains("web"));
        assert_eq!(service_health(&a, "web"), (false, true));
        assert_eq!(service_health(&b, "web"), (true, true));
        assert_eq!(service_health(&b, "nope"), (false, false));
        assert!(b.gateway_addrs().is_empty());
    }
}
