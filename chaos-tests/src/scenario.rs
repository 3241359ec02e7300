//! The scenarios: a fault schedule drawn from a seed, run against a fresh federation while the
//! workload runs, then healed and checked. The same seed gives the same schedule (which DCs,
//! which nodes by role, when, how long) and the same shaping draws on the links; what the
//! processes do in between is theirs.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::addr::dc_name;
use crate::backend::{self, SERVICE};
use crate::check::{self, Violation};
use crate::cluster::{Cluster, ClusterSpec, DOWN_AFTER, FAILBACK};
use crate::history::FaultEntry;
use crate::link::Shape;
use crate::workload::{Load, Target, Workload};

/// How long after a DC became unreachable no answer may point at it: `down_after_ms`, one probe
/// interval, and slack for a query already in flight.
pub const DETECTION_BOUND: Duration = Duration::from_millis(DOWN_AFTER.as_millis() as u64 + 1500);
/// How long after the heal every replica must be at its origin's digest.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
/// How much sooner than the failback period an answer may return to a DC (the probe that
/// first sees the DC again may come up to a probe timeout after the heal, and a query in
/// flight is timed from when it was sent).
pub const FAILBACK_SLACK: Duration = Duration::from_millis(500);
/// How long a DC must have been reachable before every query naming it must be answered: the
/// detection bound, the failback period, and as much again for a probe to land.
pub const SETTLED: Duration = Duration::from_secs(10);
/// Largest resident memory of a node.
pub const MEMORY_LIMIT_KIB: u64 = 512 * 1024;

/// A scenario of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Every node of dc1 killed (-9), then restarted.
    DcLoss,
    /// Both ways between two DCs: blackhole or reset-and-refuse (by seed).
    Partition,
    /// One direction between two DCs dropped.
    OneWayPartition,
    /// dc1's leader killed (-9) during writes, restarted later.
    LeaderKill,
    /// dc1's leader frozen (SIGSTOP) for 10 s.
    FrozenLeader,
    /// A dc1 node (its gateway) killed with connections open through the gateways.
    GatewayKill,
    /// 200 ms, jitter, 5% loss and a 4 Mbit/s cap on every WAN link.
    SlowWan,
    /// A link cut and restored every 2 s (resets on some returns).
    FlappingLink,
    /// dc2 partitioned from all, its node killed and cold-started from its persisted views.
    RestartInPartition,
    /// Every node of dc1 killed and restarted at once.
    DcRestart,
}

impl Scenario {
    /// The default set, in the order CI runs it.
    pub const ALL: [Scenario; 10] = [
        Scenario::DcLoss,
        Scenario::Partition,
        Scenario::OneWayPartition,
        Scenario::LeaderKill,
        Scenario::FrozenLeader,
        Scenario::GatewayKill,
        Scenario::SlowWan,
        Scenario::FlappingLink,
        Scenario::RestartInPartition,
        Scenario::DcRestart,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::DcLoss => "dc-loss",
            Scenario::Partition => "partition",
            Scenario::OneWayPartition => "one-way-partition",
            Scenario::LeaderKill => "leader-kill",
            Scenario::FrozenLeader => "frozen-leader",
            Scenario::GatewayKill => "gateway-kill",
            Scenario::SlowWan => "slow-wan",
            Scenario::FlappingLink => "flapping-link",
            Scenario::RestartInPartition => "restart-in-partition",
            Scenario::DcRestart => "dc-restart",
        }
    }

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How to run a scenario.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The seed (random when `None`; printed either way).
    pub seed: Option<u64>,
    /// Longer faults, more clients.
    pub soak: bool,
    /// The binary (default: `meridian` beside this executable, built if cargo is at hand).
    pub bin: Option<PathBuf>,
    /// Extra environment for the agents.
    pub env: Vec<(String, String)>,
    /// How links are cut: `proxy` or `iptables` (default: `MERIDIAN_CHAOS_NET`, else iptables
    /// when root, else the proxy).
    pub cuts: Option<&'static str>,
    /// Only the gateways face the WAN (see [`crate::cluster::ClusterSpec::gateways_only`]).
    pub gateways_only: bool,
}

/// Which node a step acts on.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// The DC's Raft leader when the step runs.
    Leader(usize),
    /// Node `idx` of DC `dc`.
    Node(usize, usize),
    /// Every node of the DC.
    All(usize),
    /// The nodes the last Kill/Freeze acted on.
    Same,
}

/// One step of a fault schedule.
#[derive(Clone, Debug)]
enum Step {
    Wait(Duration),
    Kill(Who),
    Freeze(Who),
    Thaw(Who),
    Restart(Who),
    Blackhole(usize, usize),
    Partition(usize, usize),
    OneWay(usize, usize),
    Reset(usize, usize),
    Heal(usize, usize),
    Shape(Shape),
    HealAll,
    /// Opens long-lived connections to dc `.0`'s service through every gateway.
    OpenConnections(usize),
    /// New connections to dc `.0`'s service work through every running gateway within 10 s,
    /// and the long-lived ones through running gateways of that DC still carry data.
    ExpectGatewaysServe(usize),
    /// Node `.1` of DC `.0` answers for DC `.2` from its persisted replica within 15 s.
    ExpectColdStart(usize, usize, usize),
}

/// A fault schedule.
#[derive(Clone, Debug)]
pub struct Plan {
    steps: Vec<Step>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.steps.iter().map(|s| format!("{s:?}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

fn secs(rng: &mut StdRng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(lo..hi))
}

/// The schedule of `scenario` for `seed`.
pub fn plan(scenario: Scenario, seed: u64, soak: bool) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let long = if soak { 3.0 } else { 1.0 };
    let pairs = [(1, 3), (2, 3), (1, 2)];
    let mut steps = Vec::new();
    match scenario {
        Scenario::DcLoss => {
            steps.extend([
                Step::Kill(Who::All(1)),
                Step::Wait(secs(&mut rng, 8.0 * long, 12.0 * long)),
                Step::Restart(Who::Same),
            ]);
        }
        Scenario::Partition => {
            let (a, b) = pairs[rng.random_range(0..pairs.len())];
            let cut = if rng.random_bool(0.5) {
                Step::Blackhole(a, b)
            } else {
                Step::Partition(a, b)
            };
            steps.extend([
                cut,
                Step::Wait(secs(&mut rng, 8.0 * long, 12.0 * long)),
                Step::Heal(a, b),
            ]);
        }
        Scenario::OneWayPartition => {
            let (a, b) = pairs[rng.random_range(0..pairs.len())];
            let (from, to) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
            steps.extend([
                Step::OneWay(from, to),
                Step::Wait(secs(&mut rng, 8.0 * long, 12.0 * long)),
                Step::Heal(from, to),
            ]);
        }
        Scenario::LeaderKill => {
            steps.extend([
                Step::Kill(Who::Leader(1)),
                Step::Wait(secs(&mut rng, 4.0 * long, 6.0 * long)),
                Step::Restart(Who::Same),
            ]);
        }
        Scenario::FrozenLeader => {
            steps.extend([
                Step::Freeze(Who::Leader(1)),
                Step::Wait(Duration::from_secs(10)),
                Step::Thaw(Who::Same),
            ]);
        }
        Scenario::GatewayKill => {
            let victim = rng.random_range(1..=3);
            steps.extend([
                Step::OpenConnections(1),
                Step::Kill(Who::Node(1, victim)),
                Step::ExpectGatewaysServe(1),
                Step::Wait(secs(&mut rng, 2.0 * long, 4.0 * long)),
                Step::Restart(Who::Same),
            ]);
        }
        Scenario::SlowWan => {
            steps.extend([
                Step::Shape(Shape {
                    delay: Duration::from_millis(200),
                    jitter: Duration::from_millis(20),
                    loss: 0.05,
                    // 4 Mbit/s: far above what the workload needs, so it shapes bursts only.
                    rate: Some(512 * 1024),
                }),
                Step::Wait(Duration::from_secs_f64(20.0 * long)),
                Step::HealAll,
            ]);
        }
        Scenario::FlappingLink => {
            let (a, b) = pairs[rng.random_range(0..pairs.len())];
            // Down and up every 2 s: a minute in soak, 16 s in the default set.
            let cycles = if soak { 15 } else { 4 };
            for _ in 0..cycles {
                steps.extend([
                    Step::Blackhole(a, b),
                    Step::Wait(Duration::from_secs(2)),
                    Step::Heal(a, b),
                ]);
                if rng.random_bool(0.5) {
                    steps.push(Step::Reset(a, b));
                }
                steps.push(Step::Wait(Duration::from_secs(2)));
            }
        }
        Scenario::RestartInPartition => {
            steps.extend([
                Step::Blackhole(2, 1),
                Step::Blackhole(2, 3),
                Step::Wait(secs(&mut rng, 3.0 * long, 5.0 * long)),
                Step::Kill(Who::Node(2, 1)),
                Step::Restart(Who::Same),
                Step::ExpectColdStart(2, 1, 1),
                Step::Wait(secs(&mut rng, 2.0 * long, 4.0 * long)),
                Step::HealAll,
            ]);
        }
        Scenario::DcRestart => {
            steps.extend([
                Step::Kill(Who::All(1)),
                Step::Wait(secs(&mut rng, 0.5, 1.5)),
                Step::Restart(Who::Same),
            ]);
        }
    }
    Plan { steps }
}

/// What a run saw.
#[derive(Debug)]
pub struct RunReport {
    /// The scenario.
    pub scenario: Scenario,
    /// Its seed.
    pub seed: u64,
    /// The schedule.
    pub plan: String,
    /// Broken properties.
    pub violations: Vec<Violation>,
    /// The fault timeline.
    pub faults: Vec<FaultEntry>,
    /// Counts and timings worth printing.
    pub notes: Vec<String>,
    /// The run folder, kept when the run failed.
    pub run_dir: Option<PathBuf>,
    /// Wall time.
    pub took: Duration,
    /// Run with only the gateways facing the WAN.
    pub gateways_only: bool,
}

impl RunReport {
    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The checkers that failed.
    pub fn failed_checkers(&self) -> BTreeSet<&'static str> {
        self.violations.iter().map(|v| v.checker).collect()
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {} seed {}{}: {} in {:.1}s (replay: meridian-chaos --scenario {} --seed {}{})",
            self.scenario.name(),
            self.seed,
            if self.gateways_only {
                ", gateways only"
            } else {
                ""
            },
            if self.passed() { "PASS" } else { "FAIL" },
            self.took.as_secs_f64(),
            self.scenario.name(),
            self.seed,
            if self.gateways_only {
                " --gateways-only"
            } else {
                ""
            },
        )?;
        for n in &self.notes {
            writeln!(f, "  {n}")?;
        }
        if !self.passed() {
            writeln!(f, "  schedule: {}", self.plan)?;
            writeln!(f, "  fault timeline:")?;
            for e in &self.faults {
                writeln!(f, "    {:>8.3}s  {}", e.at.as_secs_f64(), e.what)?;
            }
            writeln!(f, "  violations:")?;
            for v in &self.violations {
                write!(f, "    {v}")?;
            }
            if let Some(d) = &self.run_dir {
                writeln!(
                    f,
                    "  configs, data and logs (dcD-nI.log) kept in {}",
                    d.display()
                )?;
            }
        }
        Ok(())
    }
}

/// The path of binary `name` of the `meridian` package in this executable's target folder
/// (`cargo nextest run --workspace` builds `meridian`). A binary that needs `features` is built
/// first when cargo is at hand (a no-op when fresh). `MERIDIAN_BIN_DIR` names a folder of
/// prebuilt binaries instead (the test kit's [`meridian_testkit::process::prebuilt_dir`]).
pub fn binary(name: &str, features: &[&str]) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    if let Some(dir) = meridian_testkit::process::prebuilt_dir() {
        return Ok(dir.join(name));
    }
    let release = meridian_testkit::process::target_dir()?;
    let path = release.join(name);
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Only the broken build is built here: nothing else builds it, and building `meridian`
    // with this package's feature set would replace the workspace's own build of it.
    if !features.is_empty()
        && !built.contains(name)
        && let Some(cargo) = std::env::var_os("CARGO")
    {
        let target = release
            .parent()
            .context("release folder without a parent")?;
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--release", "-p", "meridian", "--bin", name])
            .arg("--target-dir")
            .arg(target);
        // What cargo and nextest set for a test (CARGO_PKG_*, NEXTEST_*, LD_LIBRARY_PATH) would
        // reach build scripts that watch such variables (ring's does) and rebuild half the tree,
        // for this build and the next outer one: the build gets the environment of a shell.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let keep = k == "CARGO_HOME" || k == "CARGO_TARGET_DIR";
            if !keep
                && (k.starts_with("CARGO_")
                    || k.starts_with("NEXTEST")
                    || k == "LD_LIBRARY_PATH"
                    || k == "RUST_RECURSION_COUNT")
            {
                cmd.env_remove(k.as_ref());
            }
        }
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        let status = cmd.status().context("running cargo build")?;
        ensure!(status.success(), "cargo build of {name} failed");
        built.insert(name.to_owned());
    }
    ensure!(
        path.exists(),
        "{} is missing: run cargo build --release -p meridian --bin {name}",
        path.display()
    );
    Ok(path)
}

/// Runs one scenario end to end and reports; errors only when the run itself could not happen.
pub async fn run(scenario: Scenario, opts: &Options) -> Result<RunReport> {
    let seed = opts.seed.unwrap_or_else(rand::random);
    let plan = plan(scenario, seed, opts.soak);
    eprintln!(
        "chaos: scenario {} seed {seed}{} (replay with --scenario {} --seed {seed}{}); schedule: {plan}",
        scenario.name(),
        if opts.gateways_only {
            ", gateways only"
        } else {
            ""
        },
        scenario.name(),
        if opts.gateways_only {
            " --gateways-only"
        } else {
            ""
        },
    );
    let started = Instant::now();
    let bin = match &opts.bin {
        Some(b) => b.clone(),
        None => binary("meridian", &[])?,
    };
    let t_build = started.elapsed();
    let mut c = Cluster::start(ClusterSpec {
        nodes: vec![3, 1, 1],
        web_in: vec![1, 2],
        bin,
        env: opts.env.clone(),
        seed,
        cuts: opts.cuts,
        gateways_only: opts.gateways_only,
    })
    .await?;
    let t_started = started.elapsed();
    let load = if opts.soak {
        Load::soak()
    } else {
        Load::normal()
    };
    let workload = Workload::start(
        Target {
            nodes: c.addrs(),
            backends: c.backends.clone(),
            tls: c.tls_client()?,
        },
        c.history.clone(),
        seed,
        load,
    )?;
    c.sleep(Duration::from_secs(3)).await;
    let mut runner = Runner {
        violations: Vec::new(),
        notes: Vec::new(),
        marked: Vec::new(),
        conns: Vec::new(),
    };
    let t_faults = started.elapsed();
    let outcome = runner.execute(&mut c, &plan).await;
    let t_healing = started.elapsed();
    // Whatever happened, heal and bring every process back before checking.
    let healed = heal_everything(&mut c).await;
    c.sleep(Duration::from_secs(3)).await;
    workload.stop().await;
    // Writes acknowledged at the very end land before the state is read, so a finding is a
    // loss, not a race with the read.
    c.sleep(Duration::from_secs(2)).await;
    let mut violations = runner.violations;
    if let Err(e) = outcome.and(healed) {
        violations.push(Violation {
            checker: "scenario",
            what: format!("the schedule could not run: {e:#}"),
            entries: Vec::new(),
        });
    }
    let t_checks = started.elapsed();
    violations.extend(check::liveness(&mut c));
    let catalogs = check::final_catalogs(&mut c, Duration::from_secs(20)).await;
    let snapshot = c.history.snapshot();
    violations.extend(check::durability(&snapshot, &catalogs));
    let (converged, v) = check::convergence(&mut c, CONVERGENCE_BOUND).await;
    violations.extend(v);
    violations.extend(check::dead_dc_answers(&snapshot, DETECTION_BOUND));
    violations.extend(check::failback_hysteresis(
        &snapshot,
        FAILBACK,
        FAILBACK_SLACK,
    ));
    let with_web = c.backends.keys().copied().collect();
    violations.extend(check::reachable_dcs_answered(&snapshot, SETTLED, &with_web));
    violations.extend(check::memory(&c, MEMORY_LIMIT_KIB));

    let mut notes = runner.notes;
    notes.push(format!(
        "phases: binary ready {:.1}s, cluster up {:.1}s, faults from {:.1}s, heal from {:.1}s, checks from {:.1}s, done {:.1}s",
        t_build.as_secs_f64(),
        t_started.as_secs_f64(),
        t_faults.as_secs_f64(),
        t_healing.as_secs_f64(),
        t_checks.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    let acked = snapshot
        .ops
        .iter()
        .filter(|o| o.outcome == crate::history::Outcome::Ok)
        .count();
    let dns_ok = snapshot
        .probes
        .iter()
        .filter(|p| p.what == "dns" && p.error.is_none())
        .count();
    let gw: Vec<_> = snapshot
        .probes
        .iter()
        .filter(|p| p.what == "gateway")
        .collect();
    notes.push(format!(
        "workload: {} operations ({acked} acknowledged), {} DNS queries ({dns_ok} answered), {} gateway connections ({} reached a backend)",
        snapshot.ops.len(),
        snapshot.probes.iter().filter(|p| p.what == "dns").count(),
        gw.len(),
        gw.iter().filter(|p| p.error.is_none()).count()
    ));
    let mut failed: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for p in snapshot.probes.iter().filter(|p| p.error.is_some()) {
        let why = p.error.as_deref().unwrap_or_default();
        let why: String = why.chars().take(40).collect();
        *failed
            .entry(format!(
                "{} at dc{} for {} ({why})",
                p.what, p.observer, p.name
            ))
            .or_default() += 1;
    }
    let mut failed: Vec<(String, usize)> = failed.into_iter().collect();
    failed.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    if !failed.is_empty() {
        let top: Vec<String> = failed
            .iter()
            .take(4)
            .map(|(k, n)| format!("{n}x {k}"))
            .collect();
        notes.push(format!("most failed probes: {}", top.join("; ")));
    }
    notes.push(match converged {
        Some(t) => format!(
            "replicas at their origin's digest {:.1}s after the heal",
            t.as_secs_f64()
        ),
        None => "replicas did not converge".into(),
    });
    let rss = c
        .nodes
        .iter()
        .map(|n| n.proc.max_rss_kib)
        .max()
        .unwrap_or(0);
    notes.push(format!(
        "largest resident memory {} MiB; links cut by {}",
        rss / 1024,
        c.wan.cut_mechanism()
    ));
    let passed = violations.is_empty();
    // MERIDIAN_CHAOS_KEEP=1 keeps the folder of a passing run too, to read its logs.
    let keep = std::env::var("MERIDIAN_CHAOS_KEEP").is_ok_and(|v| v == "1");
    let run_dir = if passed && !keep {
        None
    } else {
        Some(c.keep())
    };
    c.shutdown();
    Ok(RunReport {
        scenario,
        seed,
        plan: plan.to_string(),
        violations,
        faults: snapshot.faults,
        notes,
        run_dir,
        took: started.elapsed(),
        gateways_only: opts.gateways_only,
    })
}

/// Heals every link, thaws frozen nodes, restarts killed ones, and waits for leaders.
async fn heal_everything(c: &mut Cluster) -> Result<()> {
    c.heal_all()?;
    for i in 0..c.nodes.len() {
        if c.nodes[i].proc.is_frozen() {
            c.thaw(i)?;
        }
        if c.nodes[i].killed_on_purpose {
            c.restart(i)?;
        }
    }
    for dc in 1..=c.dcs() {
        c.wait_leader(dc, Duration::from_secs(60)).await?;
    }
    Ok(())
}

/// A long-lived connection opened by [`Step::OpenConnections`].
struct HeldConn {
    via: String,
    via_node: usize,
    conn: tokio::io::BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

struct Runner {
    violations: Vec<Violation>,
    notes: Vec<String>,
    /// Nodes the last Kill or Freeze acted on.
    marked: Vec<usize>,
    conns: Vec<HeldConn>,
}

impl Runner {
    async fn resolve(&self, c: &mut Cluster, who: Who) -> Result<Vec<usize>> {
        Ok(match who {
            Who::Leader(dc) => vec![c.wait_leader(dc, Duration::from_secs(30)).await?],
            Who::Node(dc, idx) => c
                .nodes_of(dc)
                .into_iter()
                .filter(|i| c.nodes[*i].addr.idx == idx)
                .collect(),
            Who::All(dc) => c.nodes_of(dc),
            Who::Same => self.marked.clone(),
        })
    }

    async fn execute(&mut self, c: &mut Cluster, plan: &Plan) -> Result<()> {
        for step in &plan.steps {
            match step {
                Step::Wait(d) => c.sleep(*d).await,
                Step::Kill(who) => {
                    self.marked = self.resolve(c, *who).await?;
                    for i in self.marked.clone() {
                        c.kill9(i)?;
                    }
                }
                Step::Freeze(who) => {
                    self.marked = self.resolve(c, *who).await?;
                    for i in self.marked.clone() {
                        c.freeze(i)?;
                    }
                }
                Step::Thaw(who) => {
                    for i in self.resolve(c, *who).await? {
                        c.thaw(i)?;
                    }
                }
                Step::Restart(who) => {
                    for i in self.resolve(c, *who).await? {
                        c.restart(i)?;
                    }
                }
                Step::Blackhole(a, b) => c.blackhole(*a, *b)?,
                Step::Partition(a, b) => c.partition(*a, *b)?,
                Step::OneWay(a, b) => c.one_way(*a, *b)?,
                Step::Reset(a, b) => {
                    c.wan.reset(*a, *b);
                    c.history
                        .fault(format!("reset every TCP connection dc{a} <-> dc{b}"));
                }
                Step::Heal(a, b) => c.heal(*a, *b)?,
                Step::Shape(s) => c.shape_all(*s),
                Step::HealAll => c.heal_all()?,
                Step::OpenConnections(dc) => self.open_connections(c, *dc).await?,
                Step::ExpectGatewaysServe(dc) => self.expect_gateways_serve(c, *dc).await?,
                Step::ExpectColdStart(dc, idx, other) => {
                    self.expect_cold_start(c, *dc, *idx, *other).await?
                }
            }
        }
        Ok(())
    }

    /// Two connections to `dc`'s service through every gateway of every DC.
    async fn open_connections(&mut self, c: &mut Cluster, dc: usize) -> Result<()> {
        let client = c.tls_client()?;
        let sni = format!("{SERVICE}.service.{}.consul", dc_name(dc));
        for (i, n) in c.nodes.iter().enumerate() {
            for _ in 0..2 {
                let (conn, got) = client
                    .open(n.addr.gateway(), &sni, Duration::from_secs(5))
                    .await
                    .with_context(|| format!("opening {sni} through {}", n.addr.label()))?;
                ensure!(
                    got == dc_name(dc),
                    "{sni} through {} reached {got}",
                    n.addr.label()
                );
                self.conns.push(HeldConn {
                    via: n.addr.label(),
                    via_node: i,
                    conn,
                });
            }
        }
        c.history.fault(format!(
            "{} connections open to {sni} through every gateway",
            self.conns.len()
        ));
        Ok(())
    }

    async fn expect_gateways_serve(&mut self, c: &mut Cluster, dc: usize) -> Result<()> {
        let client = c.tls_client()?;
        let sni = format!("{SERVICE}.service.{}.consul", dc_name(dc));
        let killed_at = Instant::now();
        let mut failing = Vec::new();
        for n in &mut c.nodes {
            if !n.proc.is_running() {
                continue;
            }
            let mut last = String::new();
            let deadline = killed_at + Duration::from_secs(10);
            let ok = loop {
                match client
                    .open(n.addr.gateway(), &sni, Duration::from_secs(3))
                    .await
                {
                    Ok((_, got)) if got == dc_name(dc) => break true,
                    Ok((_, got)) => last = format!("reached {got}"),
                    Err(e) => last = format!("{e:#}"),
                }
                if Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if !ok {
                failing.push(format!("through {}: {last}", n.addr.label()));
            }
        }
        self.notes.push(format!(
            "after the gateway kill, new connections to {sni} worked through every running gateway after {:.1}s",
            killed_at.elapsed().as_secs_f64()
        ));
        if !failing.is_empty() {
            self.violations.push(Violation {
                checker: "gateway-availability",
                what: format!("new connections to {sni} failed for 10 s after a gateway died"),
                entries: failing,
            });
        }
        // Long-lived connections through gateways that still run, to a DC whose nodes run,
        // keep carrying data; through the dead one they end (reported, not a finding).
        let (mut alive, mut dead, mut broken) = (0, 0, Vec::new());
        for h in &mut self.conns {
            let via_running = c.nodes[h.via_node].proc.is_running();
            match backend::Client::ping(&mut h.conn, Duration::from_secs(3)).await {
                Ok(()) => alive += 1,
                Err(e) => {
                    dead += 1;
                    // Local relays through a gateway that still runs must survive the death
                    // of another node; tunnelled ones may have used the dead gateway.
                    if via_running && c.nodes[h.via_node].addr.dc == dc {
                        broken.push(format!("through {}: {e:#}", h.via));
                    }
                }
            }
        }
        self.notes.push(format!(
            "long-lived connections after the kill: {alive} still carry data, {dead} ended"
        ));
        if !broken.is_empty() {
            self.violations.push(Violation {
                checker: "gateway-availability",
                what: "connections through gateways that kept running were cut".into(),
                entries: broken,
            });
        }
        self.conns.clear();
        Ok(())
    }

    async fn expect_cold_start(
        &mut self,
        c: &mut Cluster,
        dc: usize,
        idx: usize,
        other: usize,
    ) -> Result<()> {
        let i = c
            .nodes_of(dc)
            .into_iter()
            .find(|i| c.nodes[*i].addr.idx == idx)
            .context("no such node")?;
        let url = c.nodes[i].addr.url(&format!(
            "/v1/health/service/{SERVICE}?dc={}",
            dc_name(other)
        ));
        let http = c.http.clone();
        let started = Instant::now();
        let mut last = String::from("no answer");
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(r) = http.get(&url).send().await {
                let stale = r
                    .headers()
                    .get("X-Meridian-Stale")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let status = r.status();
                let n = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v.as_array().map(Vec::len));
                if status.is_success() && n == Some(1) {
                    self.notes.push(format!(
                        "cold start in the partition: {} answered for {} from its persisted replica after {:.1}s (X-Meridian-Stale: {stale})",
                        c.nodes[i].addr.label(),
                        dc_name(other),
                        started.elapsed().as_secs_f64()
                    ));
                    if stale != "true" {
                        self.violations.push(Violation {
                            checker: "cold-start",
                            what: format!(
                                "{} answered for unreachable {} without X-Meridian-Stale: true",
                                c.nodes[i].addr.label(),
                                dc_name(other)
                            ),
                            entries: vec![format!("X-Meridian-Stale: {stale:?}")],
                        });
                    }
                    return Ok(());
                }
                last = format!("{status}, {n:?} instances, stale {stale:?}");
            }
            c.sleep(Duration::from_millis(200)).await;
        }
        self.violations.push(Violation {
            checker: "cold-start",
            what: format!(
                "{} restarted in a partition did not answer for {} from its persisted views within 15 s",
                c.nodes[i].addr.label(),
                dc_name(other)
            ),
            entries: vec![format!("last: {last}")],
        });
        Ok(())
    }
}

/// Runs `scenarios` one after another; fails naming those that failed.
pub async fn run_all(scenarios: &[Scenario], opts: &Options) -> Result<Vec<RunReport>> {
    let mut reports = Vec::new();
    for s in scenarios {
        let r = run(*s, opts).await?;
        println!("{r}");
        reports.push(r);
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.scenario.name())
        .collect();
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(reports)
}
