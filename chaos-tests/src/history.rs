//! What happened during a run, each entry timed from the run's start: client operations and
//! their outcomes, DNS answers and gateway connections per observing DC, the fault timeline,
//! and the ground truth of which DC could reach which (from the faults applied).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Time since the start of the run.
pub type At = Duration;

/// How a client operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (2xx).
    Ok,
    /// Refused in a way that says it did not happen (4xx).
    Failed(String),
    /// No answer, a timeout or a 5xx: it may or may not have happened.
    Unknown(String),
}

/// A registration or deregistration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `PUT /v1/agent/service/register`.
    Register,
    /// `PUT /v1/agent/service/deregister/{id}`.
    Deregister,
}

/// One client operation on the catalog.
#[derive(Clone, Debug)]
pub struct Op {
    /// The DC written to.
    pub dc: usize,
    /// The node written to (its name, which is also the instance's node).
    pub node: String,
    /// The instance ID.
    pub id: String,
    /// What was asked.
    pub kind: OpKind,
    /// Sent.
    pub start: At,
    /// Answered or given up.
    pub end: At,
    /// How it ended.
    pub outcome: Outcome,
}

/// One DNS query or gateway connection.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The DC of the node asked.
    pub observer: usize,
    /// The node asked.
    pub node: String,
    /// `dns` or `gateway`.
    pub what: &'static str,
    /// The name asked for (DNS name or SNI).
    pub name: String,
    /// Sent.
    pub start: At,
    /// Answered.
    pub end: At,
    /// DCs the answer pointed at (empty when it failed).
    pub dcs: BTreeSet<usize>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// One entry of the fault timeline.
#[derive(Clone, Debug)]
pub struct FaultEntry {
    /// When it was applied.
    pub at: At,
    /// What, in words.
    pub what: String,
}

/// A span during which `target` could not be reached from `observer`.
#[derive(Clone, Copy, Debug)]
pub struct Unreachable {
    /// The DC looking.
    pub observer: usize,
    /// The DC it could not reach.
    pub target: usize,
    /// Since.
    pub from: At,
    /// Until (open while it lasts).
    pub to: Option<At>,
}

/// A span during which one node was dead or frozen (it could see nothing).
#[derive(Clone, Debug)]
pub struct Blind {
    /// Its DC.
    pub dc: usize,
    /// Its node name.
    pub node: String,
    /// Since.
    pub from: At,
    /// Until it ran again (open while it lasts).
    pub to: Option<At>,
}

#[derive(Debug, Default)]
struct Inner {
    ops: Vec<Op>,
    probes: Vec<Probe>,
    faults: Vec<FaultEntry>,
    unreachable: Vec<Unreachable>,
    blind: Vec<Blind>,
    /// Open spans: (observer, target) to index in `unreachable`.
    open: BTreeMap<(usize, usize), usize>,
}

/// The shared record of a run.
#[derive(Clone, Debug)]
pub struct History {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history starting now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Time since the start.
    pub fn now(&self) -> At {
        self.start.elapsed()
    }

    /// Records an operation.
    pub fn op(&self, op: Op) {
        self.lock().ops.push(op);
    }

    /// Records a probe.
    pub fn probe(&self, p: Probe) {
        self.lock().probes.push(p);
    }

    /// Records a fault (also printed as it happens, so a hung run still shows its timeline).
    pub fn fault(&self, what: impl Into<String>) {
        let entry = FaultEntry {
            at: self.now(),
            what: what.into(),
        };
        eprintln!("chaos: {:>8.3}s  {}", entry.at.as_secs_f64(), entry.what);
        self.lock().faults.push(entry);
    }

    /// Sets the reachability ground truth to `pairs` (observer, target) from now on: spans
    /// open for pairs newly in it and close for pairs no longer in it.
    pub fn set_unreachable(&self, pairs: &BTreeSet<(usize, usize)>) {
        let now = self.now();
        let mut g = self.lock();
        let Inner {
            unreachable, open, ..
        } = &mut *g;
        open.retain(|k, i| {
            if pairs.contains(k) {
                return true;
            }
            unreachable[*i].to = Some(now);
            false
        });
        for &(observer, target) in pairs {
            open.entry((observer, target)).or_insert_with(|| {
                unreachable.push(Unreachable {
                    observer,
                    target,
                    from: now,
                    to: None,
                });
                unreachable.len() - 1
            });
        }
    }

    /// Node `node` of DC `dc` stops running (killed) or answering (frozen).
    pub fn node_blind(&self, dc: usize, node: &str) {
        let now = self.now();
        let mut g = self.lock();
        if !g
            .blind
            .iter()
            .any(|b| b.dc == dc && b.node == node && b.to.is_none())
        {
            g.blind.push(Blind {
                dc,
                node: node.to_owned(),
                from: now,
                to: None,
            });
        }
    }

    /// Node `node` of DC `dc` runs again.
    pub fn node_back(&self, dc: usize, node: &str) {
        let now = self.now();
        for b in &mut self.lock().blind {
            if b.dc == dc && b.node == node && b.to.is_none() {
                b.to = Some(now);
            }
        }
    }

    /// A copy of everything recorded.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot {
            ops: g.ops.clone(),
            probes: g.probes.clone(),
            faults: g.faults.clone(),
            unreachable: g.unreachable.clone(),
            blind: g.blind.clone(),
        }
    }
}

/// A copy of a [`History`], for the checkers.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Client operations, in completion order.
    pub ops: Vec<Op>,
    /// DNS queries and gateway connections.
    pub probes: Vec<Probe>,
    /// The fault timeline.
    pub faults: Vec<FaultEntry>,
    /// Who could not reach whom, when.
    pub unreachable: Vec<Unreachable>,
    /// When single nodes were dead or frozen.
    pub blind: Vec<Blind>,
}

fn secs(d: At) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{} .. {}] {:?} dc{}/{} id={} -> {:?}",
            secs(self.start),
            secs(self.end),
            self.kind,
            self.dc,
            self.node,
            self.id,
            self.outcome
        )
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{} .. {}] {} at dc{}/{} for {} -> ",
            secs(self.start),
            secs(self.end),
            self.what,
            self.observer,
            self.node,
            self.name
        )?;
        match &self.error {
            Some(e) => write!(f, "failed: {e}"),
            None => write!(
                f,
                "{:?}",
                self.dcs
                    .iter()
                    .map(|d| format!("dc{d}"))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dc{} could not reach dc{} from {} to {}",
            self.observer,
            self.target,
            secs(self.from),
            self.to.map_or("the end".to_owned(), secs)
        )
    }
}
