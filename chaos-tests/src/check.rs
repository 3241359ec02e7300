//! The invariants, checked after each scenario against the history and the nodes' final state
//! (the openraft/turmoil habit: one property per checker, each reporting the entries that
//! break it).
//!
//! - [`durability`]: no acknowledged registration lost, none resurrected after its
//!   deregistration was acknowledged, on every node of its DC (each node's own applied state).
//! - [`convergence`]: every node's replica of every other DC reaches the origin's digest within
//!   a bound after the heal.
//! - [`dead_dc_answers`]: no DNS answer or gateway route pointed at a DC after it had been
//!   unreachable for longer than the detection bound.
//! - [`failback_hysteresis`]: answers return to a DC only after it was reachable for the
//!   failback period, so a flapping link moves them at most once per period.
//! - [`reachable_dcs_answered`]: a DC its observer could reach all along is answered for (a
//!   failure detector that calls a live DC down fails this).
//! - [`liveness`] and [`memory`]: every process alive unless the scenario killed it, and none
//!   grew past a bound.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::addr::dc_name;
use crate::cluster::{Cluster, NodeAddr};
use crate::history::{Op, OpKind, Outcome, Snapshot};
use crate::workload::WRITE_SERVICE;

/// Most history entries printed per violation.
const MAX_ENTRIES: usize = 12;

/// A broken property, with what shows it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The checker that found it.
    pub checker: &'static str,
    /// What is wrong.
    pub what: String,
    /// The offending history entries and states.
    pub entries: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[{}] {}", self.checker, self.what)?;
        for e in self.entries.iter().take(MAX_ENTRIES) {
            writeln!(f, "      {e}")?;
        }
        if self.entries.len() > MAX_ENTRIES {
            writeln!(f, "      ... and {} more", self.entries.len() - MAX_ENTRIES)?;
        }
        Ok(())
    }
}

/// The instances of the written service one node holds: (node, ID) pairs.
pub type Held = BTreeSet<(String, String)>;

/// Reads the written service's instances from a node's own copy of the catalog.
pub async fn held(http: &reqwest::Client, a: &NodeAddr) -> anyhow::Result<Held> {
    let r = http
        .get(a.url(&format!("/v1/catalog/service/{WRITE_SERVICE}")))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{}: {}", a.label(), r.status());
    let v: Value = r.json().await?;
    Ok(v.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| {
                    Some((
                        e["Node"].as_str()?.to_owned(),
                        e["ServiceID"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Waits up to `limit` for the running nodes of each DC to hold the same instances (a follower
/// may trail by a heartbeat), then reads each node's copy. Nodes that disagree at the end are
/// reported by [`durability`] through their own copies.
pub async fn final_catalogs(
    c: &mut Cluster,
    limit: Duration,
) -> BTreeMap<String, (usize, anyhow::Result<Held>)> {
    let start = Instant::now();
    loop {
        let mut out = BTreeMap::new();
        for n in &mut c.nodes {
            if n.proc.is_running() {
                out.insert(n.addr.label(), (n.addr.dc, held(&c.http, &n.addr).await));
            }
        }
        let mut agree = true;
        for dc in 1..=c.dcs() {
            let sets: BTreeSet<&Held> = out
                .values()
                .filter(|(d, _)| *d == dc)
                .filter_map(|(_, h)| h.as_ref().ok())
                .collect();
            let errors = out.values().filter(|(d, h)| *d == dc && h.is_err()).count();
            agree &= sets.len() <= 1 && errors == 0;
        }
        if agree || start.elapsed() > limit {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operations on one instance, its registration's outcome and its deregistration's.
type KeyOps<'a> = (Vec<&'a Op>, Option<&'a Outcome>, Option<&'a Outcome>);

/// No acknowledged registration lost, none resurrected after an acknowledged deregistration.
pub fn durability(
    h: &Snapshot,
    catalogs: &BTreeMap<String, (usize, anyhow::Result<Held>)>,
) -> Vec<Violation> {
    // Per (dc, node, id): the registration's outcome and the deregistration's, if any.
    let mut keys: BTreeMap<(usize, String, String), KeyOps<'_>> = BTreeMap::new();
    for op in &h.ops {
        let e = keys
            .entry((op.dc, op.node.clone(), op.id.clone()))
            .or_default();
        e.0.push(op);
        match op.kind {
            OpKind::Register => e.1 = Some(&op.outcome),
            OpKind::Deregister => e.2 = Some(&op.outcome),
        }
    }
    let mut out = Vec::new();
    let mut lost_at_dereg = Vec::new();
    for ((dc, node, id), (ops, reg, dereg)) in &keys {
        if reg == &Some(&Outcome::Ok)
            && let Some(Outcome::Failed(why)) = dereg
            && why.starts_with("404")
        {
            lost_at_dereg.push(format!(
                "dc{dc}/{node}/{id}: {}",
                ops.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ; ")
            ));
        }
    }
    if !lost_at_dereg.is_empty() {
        out.push(Violation {
            checker: "durability",
            what: format!(
                "{} acknowledged registrations were gone when deregistered (404)",
                lost_at_dereg.len()
            ),
            entries: lost_at_dereg,
        });
    }
    for (label, (dc, got)) in catalogs {
        let held = match got {
            Ok(h) => h,
            Err(e) => {
                out.push(Violation {
                    checker: "durability",
                    what: format!("cannot read the catalog of {label}: {e:#}"),
                    entries: Vec::new(),
                });
                continue;
            }
        };
        let mut lost = Vec::new();
        let mut resurrected = Vec::new();
        for ((kdc, node, id), (ops, reg, dereg)) in &keys {
            if kdc != dc {
                continue;
            }
            let present = held.contains(&(node.clone(), id.clone()));
            let line = || {
                format!(
                    "{node}/{id}: {}",
                    ops.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ; ")
                )
            };
            if reg == &Some(&Outcome::Ok) && dereg.is_none() && !present {
                lost.push(line());
            }
            if dereg == &Some(&Outcome::Ok) && present {
                resurrected.push(line());
            }
        }
        if !lost.is_empty() {
            out.push(Violation {
                checker: "durability",
                what: format!("{label}: {} acknowledged registrations lost", lost.len()),
                entries: lost,
            });
        }
        if !resurrected.is_empty() {
            out.push(Violation {
                checker: "durability",
                what: format!(
                    "{label}: {} instances back after their deregistration was acknowledged",
                    resurrected.len()
                ),
                entries: resurrected,
            });
        }
    }
    out
}

/// `Export.Digest` of a node and its replicas' digests by DC.
async fn digests(
    http: &reqwest::Client,
    a: &NodeAddr,
) -> Option<(String, BTreeMap<String, String>)> {
    let v: Value = http
        .get(a.url("/v1/federation/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let export = v["Export"]["Digest"].as_str()?.to_owned();
    let remotes = v["Remotes"]
        .as_array()?
        .iter()
        .filter_map(|r| {
            Some((
                r["Datacenter"].as_str()?.to_owned(),
                r["Digest"].as_str()?.to_owned(),
            ))
        })
        .collect();
    Some((export, remotes))
}

/// Every running node's replica of every other DC equals that DC's export digest within
/// `limit`; the time it took.
pub async fn convergence(c: &mut Cluster, limit: Duration) -> (Option<Duration>, Vec<Violation>) {
    let start = Instant::now();
    loop {
        let mut table = BTreeMap::new();
        for n in &mut c.nodes {
            if n.proc.is_running() && !n.proc.is_frozen() {
                table.insert(n.addr.label(), (n.addr.dc, digests(&c.http, &n.addr).await));
            }
        }
        let mut wrong = Vec::new();
        for origin in 1..=c.dcs() {
            let exports: BTreeSet<&str> = table
                .values()
                .filter(|(d, _)| *d == origin)
                .filter_map(|(_, s)| s.as_ref().map(|(e, _)| e.as_str()))
                .collect();
            if exports.len() != 1 {
                wrong.push(format!("{} nodes export {exports:?}", dc_name(origin)));
                continue;
            }
            let want = exports.into_iter().next().unwrap_or_default();
            for (label, (d, s)) in &table {
                if *d == origin {
                    continue;
                }
                let got = s.as_ref().and_then(|(_, r)| r.get(&dc_name(origin)));
                if got.map(String::as_str) != Some(want) {
                    wrong.push(format!(
                        "{label} holds {} at {got:?}, origin exports {want}",
                        dc_name(origin)
                    ));
                }
            }
        }
        if wrong.is_empty() {
            return (Some(start.elapsed()), Vec::new());
        }
        if start.elapsed() > limit {
            return (
                None,
                vec![Violation {
                    checker: "convergence",
                    what: format!("replicas not at their origin's digest {limit:?} after the heal"),
                    entries: wrong,
                }],
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// No answer (DNS) or route (gateway) pointed at a DC its observer had not been able to reach
/// for longer than `bound` (the detection bound), for the whole time of the query.
pub fn dead_dc_answers(h: &Snapshot, bound: Duration) -> Vec<Violation> {
    let mut entries = Vec::new();
    for p in &h.probes {
        for &dc in &p.dcs {
            let span = h.unreachable.iter().find(|u| {
                u.observer == p.observer
                    && u.target == dc
                    && u.from + bound <= p.start
                    && u.to.is_none_or(|to| to >= p.end)
            });
            if let Some(u) = span {
                entries.push(format!("{p}   while {u}"));
            }
        }
    }
    if entries.is_empty() {
        return Vec::new();
    }
    vec![Violation {
        checker: "dead-dc-answers",
        what: format!(
            "{} answers pointed at a DC unreachable for more than {bound:?}",
            entries.len()
        ),
        entries,
    }]
}

/// Every process runs unless the scenario killed it.
pub fn liveness(c: &mut Cluster) -> Vec<Violation> {
    let mut entries = Vec::new();
    for n in &mut c.nodes {
        if !n.killed_on_purpose && !n.proc.is_running() {
            entries.push(format!(
                "{} is not running ({}); log {}",
                n.addr.label(),
                n.proc.crashes.join(", "),
                n.proc.log().display()
            ));
        }
    }
    if entries.is_empty() {
        return Vec::new();
    }
    vec![Violation {
        checker: "liveness",
        what: "processes died that the scenario did not kill".into(),
        entries,
    }]
}

/// No process's resident set grew past `limit_kib`.
pub fn memory(c: &Cluster, limit_kib: u64) -> Vec<Violation> {
    let entries: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.proc.max_rss_kib > limit_kib)
        .map(|n| format!("{}: {} MiB", n.addr.label(), n.proc.max_rss_kib / 1024))
        .collect();
    if entries.is_empty() {
        return Vec::new();
    }
    vec![Violation {
        checker: "memory",
        what: format!("resident memory above {} MiB", limit_kib / 1024),
        entries,
    }]
}

/// Answers come back to a DC only after it has been reachable for the failback period: a
/// DNS answer (or gateway route) returning to DC `d` at `t`, after the observer answered with
/// another DC, needs `d` reachable from the observer through `[t - failback + slack, t]`.
pub fn failback_hysteresis(h: &Snapshot, failback: Duration, slack: Duration) -> Vec<Violation> {
    let window = failback.saturating_sub(slack);
    // The previous answer per (observer node, kind, name).
    let mut last: BTreeMap<(usize, &str, &str, &str), &BTreeSet<usize>> = BTreeMap::new();
    let mut probes: Vec<&crate::history::Probe> =
        h.probes.iter().filter(|p| p.error.is_none()).collect();
    probes.sort_by_key(|p| p.start);
    let mut entries = Vec::new();
    for p in probes {
        let key = (p.observer, p.node.as_str(), p.what, p.name.as_str());
        if let Some(prev) = last.insert(key, &p.dcs) {
            for &d in p.dcs.difference(prev) {
                let broken = h.unreachable.iter().find(|u| {
                    u.observer == p.observer
                        && u.target == d
                        && u.to.is_some_and(|to| to + window > p.start)
                        && u.from <= p.start
                });
                if let Some(u) = broken {
                    entries.push(format!("{p}   back within {window:?} of: {u}"));
                }
            }
        }
    }
    if entries.is_empty() {
        return Vec::new();
    }
    vec![Violation {
        checker: "failback-hysteresis",
        what: format!(
            "{} answers returned to a DC before it had been reachable for {window:?}",
            entries.len()
        ),
        entries,
    }]
}

/// A DC that its observer could reach all along is answered for: a DNS query naming DC `d`
/// (`<service>.service.<d>.<domain>`) at a node of DC `o` succeeds whenever `d` has been
/// reachable from `o`, and that node running and not frozen, for `settled` before the query (long enough to be found up again after
/// any earlier fault). DNS is answered from the local view, so the WAN cannot lose these
/// queries: a failure means the node believes a reachable DC down.
pub fn reachable_dcs_answered(
    h: &Snapshot,
    settled: Duration,
    dcs_with_service: &BTreeSet<usize>,
) -> Vec<Violation> {
    let mut entries = Vec::new();
    let mut asked = 0usize;
    for p in h.probes.iter().filter(|p| p.what == "dns") {
        let Some(d) = dcs_with_service.iter().copied().find(|d| {
            p.name
                .ends_with(&format!(".service.{}.consul", dc_name(*d)))
        }) else {
            continue;
        };
        if p.start < settled {
            continue;
        }
        let since = p.start - settled;
        let disturbed = h.unreachable.iter().any(|u| {
            u.observer == p.observer
                && u.target == d
                && u.from <= p.end
                && u.to.is_none_or(|to| to > since)
        });
        // A node that was itself dead or frozen could not see the DC either.
        let blind = h.blind.iter().any(|b| {
            b.dc == p.observer
                && b.node == p.node
                && b.from <= p.end
                && b.to.is_none_or(|to| to > since)
        });
        if disturbed || blind {
            continue;
        }
        asked += 1;
        if p.error.is_some() || !p.dcs.contains(&d) {
            entries.push(p.to_string());
        }
    }
    if entries.is_empty() {
        return Vec::new();
    }
    vec![Violation {
        checker: "reachable-dcs-answered",
        what: format!(
            "{} of {asked} queries naming a DC reachable for {settled:?} got no answer from it",
            entries.len()
        ),
        entries,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Probe, Unreachable};

    fn op(id: &str, kind: OpKind, outcome: Outcome, at: u64) -> Op {
        Op {
            dc: 1,
            node: "n1".into(),
            id: id.into(),
            kind,
            start: Duration::from_millis(at),
            end: Duration::from_millis(at + 5),
            outcome,
        }
    }

    fn probe(observer: usize, dcs: &[usize], at: u64) -> Probe {
        Probe {
            observer,
            node: "n1".into(),
            what: "dns",
            name: "web.service.consul".into(),
            start: Duration::from_millis(at),
            end: Duration::from_millis(at + 2),
            dcs: dcs.iter().copied().collect(),
            error: None,
        }
    }

    fn cut(observer: usize, target: usize, from: u64, to: Option<u64>) -> Unreachable {
        Unreachable {
            observer,
            target,
            from: Duration::from_millis(from),
            to: to.map(Duration::from_millis),
        }
    }

    fn held(ids: &[&str]) -> BTreeMap<String, (usize, anyhow::Result<Held>)> {
        let set = ids
            .iter()
            .map(|i| ("n1".to_owned(), (*i).to_owned()))
            .collect();
        BTreeMap::from([("dc1-n1".to_owned(), (1, Ok(set)))])
    }

    #[test]
    fn durability_flags_lost_and_resurrected_but_not_unknown_outcomes() {
        let h = Snapshot {
            ops: vec![
                op("kept", OpKind::Register, Outcome::Ok, 0),
                op("lost", OpKind::Register, Outcome::Ok, 10),
                op(
                    "maybe",
                    OpKind::Register,
                    Outcome::Unknown("timeout".into()),
                    20,
                ),
                op("back", OpKind::Register, Outcome::Ok, 30),
                op("back", OpKind::Deregister, Outcome::Ok, 40),
                op("gone", OpKind::Register, Outcome::Ok, 50),
                op("gone", OpKind::Deregister, Outcome::Ok, 60),
            ],
            ..Snapshot::default()
        };
        assert!(durability(&h, &held(&["kept", "lost"])).is_empty());
        let v = durability(&h, &held(&["kept", "back"]));
        let what: Vec<&str> = v.iter().map(|v| v.what.as_str()).collect();
        assert_eq!(v.len(), 2, "{what:?}");
        assert!(v[0].entries[0].starts_with("n1/lost"), "{:?}", v[0].entries);
        assert!(v[1].entries[0].starts_with("n1/back"), "{:?}", v[1].entries);
    }

    #[test]
    fn dead_dc_answers_only_after_the_bound_and_while_unreachable() {
        let bound = Duration::from_secs(3);
        let h = Snapshot {
            probes: vec![
                probe(3, &[1], 1_000),  // before the cut
                probe(3, &[1], 3_000),  // within the bound
                probe(3, &[1], 6_000),  // after the bound: a finding
                probe(2, &[1], 6_000),  // another observer, which could reach dc1
                probe(3, &[2], 6_000),  // another DC
                probe(3, &[1], 12_000), // after the heal
            ],
            unreachable: vec![cut(3, 1, 2_000, Some(10_000))],
            ..Snapshot::default()
        };
        let v = dead_dc_answers(&h, bound);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].entries.len(), 1, "{:?}", v[0].entries);
        assert!(v[0].entries[0].starts_with("[6.000s"), "{:?}", v[0].entries);
    }

    #[test]
    fn failback_before_the_stable_period_is_a_finding() {
        let failback = Duration::from_secs(3);
        let slack = Duration::from_millis(500);
        let early = Snapshot {
            probes: vec![
                probe(3, &[1], 1_000),
                probe(3, &[2], 5_000),
                probe(3, &[1], 9_000),
            ],
            unreachable: vec![cut(3, 1, 2_000, Some(8_000))],
            ..Snapshot::default()
        };
        assert_eq!(failback_hysteresis(&early, failback, slack).len(), 1);
        let patient = Snapshot {
            probes: vec![
                probe(3, &[1], 1_000),
                probe(3, &[2], 5_000),
                probe(3, &[1], 11_000),
            ],
            ..early
        };
        assert!(failback_hysteresis(&patient, failback, slack).is_empty());
    }
}
