//! The drill's findings, computed from the probe rounds alone (pure: no I/O, no clock), and
//! their two renderings: a table for people and JSON for scripts.
//!
//! Times are milliseconds since the drill's action (the drain, or the checks failed) was sent;
//! rounds before it are the baseline. A probe "answers with" a DC when a DNS record points at one
//! of that DC's instances, or when the certificate a gateway connection got is one seen only from
//! that DC's instances before the drill. Rounds run once per probe interval, and one at once right
//! after the failure and after the restore, so a change faster than the interval is timed as it
//! happens; a slower one is timed to within the interval.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::probe::{ConnectOutcome, DnsOutcome, Round, unavailable};

/// Everything the drill observed from one DC.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The probing DC.
    pub dc: String,
    /// The node probed (its HTTP API).
    pub node: String,
    /// Whether its gateway connections can be placed in DCs (certificates tell DCs apart).
    pub gateway_attributed: bool,
    /// Its rounds, in order.
    pub rounds: Vec<Round>,
}

/// What kind of drill ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A datacenter drained.
    DcDown,
    /// A service's instances in one DC failed.
    ServiceDown,
}

impl Kind {
    /// The subcommand's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DcDown => "dc-down",
            Kind::ServiceDown => "service-down",
        }
    }
}

/// The drill's settings and milestones, beside the rounds; the report carries them as they are.
#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    /// The drill.
    #[serde(rename = "drill")]
    pub kind: Kind,
    /// The DC drained, or whose instances failed.
    #[serde(rename = "datacenter")]
    pub target: String,
    /// The service probed.
    pub service: String,
    /// The DNS domain.
    #[serde(skip)]
    pub domain: String,
    /// How long the DC stayed drained, as asked.
    pub for_ms: u64,
    /// The probe interval.
    pub interval_ms: u64,
    /// Wall-clock start (Unix seconds).
    pub started_unix_s: u64,
    /// How long the action took to be acknowledged.
    pub action_ack_ms: Option<f64>,
    /// When the restore was sent (None: never).
    pub restore_ms: Option<f64>,
    /// How long the restore took to be acknowledged (None: not acknowledged).
    pub restore_ack_ms: Option<f64>,
    /// When probing ended.
    pub end_ms: f64,
    /// Interrupted by the operator.
    pub interrupted: bool,
    /// Things the operator should know (limits of this run).
    pub notes: Vec<String>,
}

/// The report: per probing DC and overall. The probe interval is the resolution of its times
/// (beside the rounds run at once after the failure and the restore); times are since the
/// action.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was drilled, and when things happened.
    #[serde(flatten)]
    pub setup: Setup,
    /// The name resolved and sent as SNI.
    pub name: String,
    /// The drill ran to its end and the DC was restored.
    pub completed: bool,
    /// The restore was acknowledged.
    pub restored: bool,
    /// Over every probing DC.
    pub overall: Overall,
    /// Each probing DC.
    pub datacenters: Vec<DcReport>,
}

/// The figures over every probing DC.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overall {
    /// Time until every DC that answered with the target stopped doing so, in DNS (None: some
    /// never stopped, or none answered with it).
    pub dns_stopped_ms: Option<f64>,
    /// The same through the gateways (only DCs whose connections can be placed).
    pub gateway_stopped_ms: Option<f64>,
    /// Every DC that answered with the target stopped, in DNS and through the gateways.
    pub stopped: bool,
    /// Failed resolutions after the action.
    pub dns_failures: usize,
    /// Failed connections after the action.
    pub gateway_failures: usize,
    /// Time after the restore until every DC that answered with the target before does again,
    /// in DNS.
    pub dns_failback_ms: Option<f64>,
    /// The same through the gateways.
    pub gateway_failback_ms: Option<f64>,
    /// Every DC answers with the target again where it did before.
    pub failed_back: bool,
    /// Answers pointing at a DC the answering DC's own status listed as `down` or `drained`
    /// before and after the query.
    pub stale_answers: usize,
    /// Answers pointing at a DC listed `down` or `drained` before the query but no more after it
    /// (the status changed while the query ran: not counted as stale).
    pub stale_in_transition: usize,
    /// Time until every probing DC's status listed the target as `drained` or `down`.
    pub status_marked_ms: Option<f64>,
}

/// The figures of one probing DC.
#[derive(Clone, Debug, Serialize)]
pub struct DcReport {
    /// The probing DC.
    pub datacenter: String,
    /// The node whose DNS, gateway and status were probed.
    pub node: String,
    /// Probe rounds in all.
    pub rounds: usize,
    /// First round after the action whose status listed the target as `drained` or `down`.
    pub status_marked_ms: Option<f64>,
    /// First round after the restore whose status no longer did.
    pub status_cleared_ms: Option<f64>,
    /// DNS.
    pub dns: Channel,
    /// Connections through the gateway (absent when the DC reported no gateway).
    pub gateway: Option<Channel>,
    /// DNS and gateway stale answers.
    pub stale_answers: usize,
    /// DNS and gateway answers in a status transition.
    pub stale_in_transition: usize,
}

/// What one probing DC's DNS or gateway did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Channel {
    /// Answers can be placed in DCs (for the gateway: certificates tell the DCs apart).
    pub attributed: bool,
    /// DCs answered with before the action, with counts.
    pub before: BTreeMap<String, usize>,
    /// It answered with the target before the action: stopping and failback apply.
    pub with_target_before: bool,
    /// After the action, the last answer still pointing at the target.
    pub last_with_target_ms: Option<f64>,
    /// After the action, the first answer without the target after the last one with it.
    pub stopped_ms: Option<f64>,
    /// It does not answer with the target any more (or never did).
    pub stopped: bool,
    /// DCs answered with between the action and the restore, with counts.
    pub during: BTreeMap<String, usize>,
    /// Answers that could not be placed in a DC, after the action.
    pub unattributed: usize,
    /// Failed before the action (the baseline).
    pub failures_before: usize,
    /// Failed between the action and the restore.
    pub failures_during: usize,
    /// Failed after the restore.
    pub failures_after: usize,
    /// Why they failed (after the action), with counts.
    pub failure_reasons: BTreeMap<String, usize>,
    /// The longest a failed attempt took to fail, after the action (a client waits that long).
    pub slowest_failure_ms: Option<f64>,
    /// Time after the restore until it answered with the target again.
    pub failback_ms: Option<f64>,
    /// Answers with the target again (None: it never did before).
    pub failed_back: Option<bool>,
    /// Answers pointing at a DC its own status listed `down`/`drained` before and after.
    pub stale: usize,
    /// Answers pointing at a DC listed so before the query only.
    pub stale_in_transition: usize,
    /// Rounds whose status could not be read, so staleness was not judged.
    pub unjudged: usize,
}

/// One answer, reduced: when, and the DCs it pointed at (None: failed).
struct Answer<'a> {
    sent_ms: f64,
    at_ms: f64,
    dcs: Option<BTreeSet<&'a str>>,
    /// Why it failed.
    failure: Option<&'a str>,
    unattributed: bool,
    before: Option<&'a BTreeMap<String, String>>,
    after: Option<&'a BTreeMap<String, String>>,
}

fn dns_answers(rounds: &[Round]) -> Vec<Answer<'_>> {
    rounds
        .iter()
        .map(|r| {
            let (dcs, unattributed, failure) = match &r.dns.outcome {
                DnsOutcome::Answered { dcs, unattributed } => (
                    Some(dcs.iter().map(String::as_str).collect()),
                    *unattributed > 0,
                    None,
                ),
                DnsOutcome::Failed(why) => (None, false, Some(why.as_str())),
            };
            Answer {
                sent_ms: r.dns.sent_ms,
                at_ms: r.dns.at_ms,
                dcs,
                failure,
                unattributed,
                before: r.status_before.as_ref(),
                after: r.status_after.as_ref(),
            }
        })
        .collect()
}

fn gateway_answers(rounds: &[Round]) -> Vec<Answer<'_>> {
    rounds
        .iter()
        .filter_map(|r| {
            let g = r.gateway.as_ref()?;
            let (dcs, unattributed, failure) = match &g.outcome {
                ConnectOutcome::Connected { dc: Some(dc) } => {
                    (Some(BTreeSet::from([dc.as_str()])), false, None)
                }
                ConnectOutcome::Connected { dc: None } => (Some(BTreeSet::new()), true, None),
                ConnectOutcome::Failed(why) => (None, false, Some(why.as_str())),
            };
            Some(Answer {
                sent_ms: g.sent_ms,
                at_ms: g.at_ms,
                dcs,
                failure,
                unattributed,
                before: r.status_before.as_ref(),
                after: r.status_after.as_ref(),
            })
        })
        .collect()
}

fn lists_unavailable(status: Option<&BTreeMap<String, String>>, dc: &str) -> Option<bool> {
    status.map(|s| s.get(dc).is_some_and(|st| unavailable(st)))
}

/// Computes one channel's figures.
fn channel(answers: &[Answer<'_>], attributed: bool, target: &str, restore_ms: f64) -> Channel {
    let mut c = Channel {
        attributed,
        ..Channel::default()
    };
    let during = |a: &&Answer<'_>| a.sent_ms >= 0.0 && a.sent_ms < restore_ms;
    for a in answers {
        if a.dcs.is_none() && a.sent_ms >= 0.0 {
            let why: String = a.failure.unwrap_or("failed").chars().take(120).collect();
            *c.failure_reasons.entry(why).or_default() += 1;
            let took = a.at_ms - a.sent_ms;
            c.slowest_failure_ms = Some(c.slowest_failure_ms.map_or(took, |s| s.max(took)));
        }
        match &a.dcs {
            None if a.sent_ms < 0.0 => c.failures_before += 1,
            None if a.sent_ms < restore_ms => c.failures_during += 1,
            None => c.failures_after += 1,
            Some(dcs) => {
                if a.sent_ms < 0.0 {
                    for dc in dcs {
                        *c.before.entry((*dc).to_owned()).or_default() += 1;
                    }
                } else {
                    if a.unattributed {
                        c.unattributed += 1;
                    }
                    if a.sent_ms < restore_ms {
                        for dc in dcs {
                            *c.during.entry((*dc).to_owned()).or_default() += 1;
                        }
                    }
                }
                // Staleness: any DC answered with that the prober's own status listed as
                // unavailable before the query.
                let mut before_stale = false;
                let mut after_stale = true;
                let mut judged = true;
                for dc in dcs {
                    match lists_unavailable(a.before, dc) {
                        None => judged = false,
                        Some(true) => {
                            before_stale = true;
                            // Unreadable after: judged on the status before alone.
                            if lists_unavailable(a.after, dc) == Some(false) {
                                after_stale = false;
                            }
                        }
                        Some(false) => {}
                    }
                }
                if !judged {
                    c.unjudged += 1;
                } else if before_stale && after_stale {
                    c.stale += 1;
                } else if before_stale {
                    c.stale_in_transition += 1;
                }
            }
        }
    }
    c.with_target_before = c.before.contains_key(target);
    let has_target = |a: &Answer<'_>| a.dcs.as_ref().is_some_and(|d| d.contains(target));
    let ok = |a: &Answer<'_>| a.dcs.as_ref().is_some_and(|d| !d.is_empty());
    let drill: Vec<&Answer<'_>> = answers.iter().filter(during).collect();
    let last_with = drill.iter().rposition(|a| has_target(a));
    c.last_with_target_ms = last_with.map(|i| drill[i].at_ms);
    let first_without = drill
        .iter()
        .skip(last_with.map_or(0, |i| i + 1))
        .find(|a| ok(a) && !has_target(a));
    if c.with_target_before {
        c.stopped_ms = first_without.map(|a| a.at_ms);
        c.stopped = c.stopped_ms.is_some();
        let back = answers
            .iter()
            .find(|a| a.sent_ms >= restore_ms && has_target(a));
        c.failback_ms = back.map(|a| a.at_ms - restore_ms);
        c.failed_back = Some(back.is_some());
    } else {
        c.stopped = last_with.is_none();
    }
    c
}

/// Whether every probing DC answers with the target again where it did before: DNS, and the
/// gateway where its connections can be placed. Used to end the failback wait.
pub fn failed_back(observed: &[Observed], target: &str, restore_ms: f64) -> bool {
    observed.iter().all(|o| {
        let dns = channel(&dns_answers(&o.rounds), true, target, restore_ms);
        let gw_ok = !o.gateway_attributed || {
            let gw = channel(&gateway_answers(&o.rounds), true, target, restore_ms);
            gw.failed_back != Some(false)
        };
        dns.failed_back != Some(false) && gw_ok
    })
}

fn max_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut out: Option<f64> = None;
    for v in values {
        let v = v?;
        out = Some(out.map_or(v, |o| o.max(v)));
    }
    out
}

/// Computes the report from the setup and every DC's rounds.
pub fn analyse(setup: &Setup, observed: &[Observed]) -> Report {
    let target = setup.target.as_str();
    // Without a restore, every round after the action belongs to the drill.
    let restore_ms = setup.restore_ms.unwrap_or(f64::INFINITY);
    let mut dcs = Vec::new();
    for o in observed {
        let dns = channel(&dns_answers(&o.rounds), true, target, restore_ms);
        let gateway = o.rounds.iter().any(|r| r.gateway.is_some()).then(|| {
            channel(
                &gateway_answers(&o.rounds),
                o.gateway_attributed,
                target,
                restore_ms,
            )
        });
        let status_of = |r: &Round| lists_unavailable(r.status_before.as_ref(), target);
        let status_marked_ms = o
            .rounds
            .iter()
            .find(|r| {
                r.dns.sent_ms >= 0.0 && r.dns.sent_ms < restore_ms && status_of(r) == Some(true)
            })
            .map(|r| r.dns.sent_ms);
        // Only a status that was marked can clear.
        let status_cleared_ms = o
            .rounds
            .iter()
            .find(|r| r.dns.sent_ms >= restore_ms && status_of(r) == Some(false))
            .filter(|_| status_marked_ms.is_some())
            .map(|r| r.dns.sent_ms - restore_ms);
        let stale = dns.stale + gateway.as_ref().map_or(0, |g| g.stale);
        let transition =
            dns.stale_in_transition + gateway.as_ref().map_or(0, |g| g.stale_in_transition);
        dcs.push(DcReport {
            datacenter: o.dc.clone(),
            node: o.node.clone(),
            rounds: o.rounds.len(),
            status_marked_ms,
            status_cleared_ms,
            dns,
            gateway,
            stale_answers: stale,
            stale_in_transition: transition,
        });
    }
    let applicable_gw = |d: &DcReport| {
        d.gateway
            .as_ref()
            .filter(|g| g.attributed && g.with_target_before)
            .cloned()
    };
    let dns_applicable: Vec<&Channel> = dcs
        .iter()
        .map(|d| &d.dns)
        .filter(|c| c.with_target_before)
        .collect();
    let gw_applicable: Vec<Channel> = dcs.iter().filter_map(applicable_gw).collect();
    let nonempty = |v: Option<f64>, n: usize| if n == 0 { None } else { v };
    let overall = Overall {
        dns_stopped_ms: nonempty(
            max_opt(dns_applicable.iter().map(|c| c.stopped_ms)),
            dns_applicable.len(),
        ),
        gateway_stopped_ms: nonempty(
            max_opt(gw_applicable.iter().map(|c| c.stopped_ms)),
            gw_applicable.len(),
        ),
        stopped: dcs.iter().all(|d| {
            d.dns.stopped
                && d.gateway
                    .as_ref()
                    .is_none_or(|g| !g.attributed || g.stopped)
        }),
        dns_failures: dcs
            .iter()
            .map(|d| d.dns.failures_during + d.dns.failures_after)
            .sum(),
        gateway_failures: dcs
            .iter()
            .filter_map(|d| d.gateway.as_ref())
            .map(|g| g.failures_during + g.failures_after)
            .sum(),
        dns_failback_ms: nonempty(
            max_opt(dns_applicable.iter().map(|c| c.failback_ms)),
            dns_applicable.len(),
        ),
        gateway_failback_ms: nonempty(
            max_opt(gw_applicable.iter().map(|c| c.failback_ms)),
            gw_applicable.len(),
        ),
        failed_back: setup.restore_ms.is_some()
            && dns_applicable.iter().all(|c| c.failed_back == Some(true))
            && gw_applicable.iter().all(|c| c.failed_back == Some(true)),
        stale_answers: dcs.iter().map(|d| d.stale_answers).sum(),
        stale_in_transition: dcs.iter().map(|d| d.stale_in_transition).sum(),
        status_marked_ms: if setup.kind == Kind::DcDown && !dcs.is_empty() {
            max_opt(dcs.iter().map(|d| d.status_marked_ms))
        } else {
            None
        },
    };
    let restored = setup.restore_ack_ms.is_some();
    Report {
        setup: setup.clone(),
        name: format!("{}.service.{}", setup.service, setup.domain),
        completed: restored && !setup.interrupted,
        restored,
        overall,
        datacenters: dcs,
    }
}

/// A time in milliseconds for people: `850 ms`, `5.10 s`, or `-` when absent.
fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), duration)
}

fn duration(ms: f64) -> String {
    if ms.abs() < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn dc_list(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        "-".to_owned()
    } else {
        m.keys().cloned().collect::<Vec<_>>().join("+")
    }
}

/// The moved/failback cell of a channel: a time, "never", or "n/a" when the DC did not answer
/// with the target before.
fn moved_cell(c: &Channel, stopped: bool) -> String {
    if !c.attributed {
        return "?".to_owned();
    }
    if !c.with_target_before {
        return "n/a".to_owned();
    }
    let v = if stopped { c.stopped_ms } else { c.failback_ms };
    v.map_or_else(|| "never".to_owned(), duration)
}

/// The report as a table with a few lines of context.
pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let what = match r.setup.kind {
        Kind::DcDown => format!("{} drained", r.setup.target),
        Kind::ServiceDown => format!("{} failed in {}", r.setup.service, r.setup.target),
    };
    let from: Vec<&str> = r
        .datacenters
        .iter()
        .map(|d| d.datacenter.as_str())
        .collect();
    let _ = writeln!(
        s,
        "drill {}: {what} for {:.1} s; {} probed every {} ms from {}",
        r.setup.kind.as_str(),
        r.setup.for_ms as f64 / 1000.0,
        r.name,
        r.setup.interval_ms,
        from.join(", ")
    );
    let _ = writeln!(
        s,
        "action acknowledged in {}; restore sent at {} (acknowledged in {}); probing ended at {}",
        secs(r.setup.action_ack_ms),
        secs(r.setup.restore_ms),
        secs(r.setup.restore_ack_ms),
        secs(Some(r.setup.end_ms)),
    );
    let _ = writeln!(s);
    let header = [
        "datacenter",
        "before",
        "status seen",
        "DNS moved",
        "gateway moved",
        "DNS fails",
        "conn fails",
        "DNS failback",
        "gateway failback",
        "stale",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for d in &r.datacenters {
        let gw = d.gateway.as_ref();
        rows.push(vec![
            d.datacenter.clone(),
            dc_list(&d.dns.before),
            secs(d.status_marked_ms),
            moved_cell(&d.dns, true),
            gw.map_or_else(|| "no gateway".into(), |g| moved_cell(g, true)),
            (d.dns.failures_during + d.dns.failures_after).to_string(),
            gw.map_or_else(
                || "-".into(),
                |g| (g.failures_during + g.failures_after).to_string(),
            ),
            moved_cell(&d.dns, false),
            gw.map_or_else(|| "-".into(), |g| moved_cell(g, false)),
            d.stale_answers.to_string(),
        ]);
    }
    let o = &r.overall;
    rows.push(vec![
        "all".into(),
        String::new(),
        secs(o.status_marked_ms),
        secs(o.dns_stopped_ms),
        secs(o.gateway_stopped_ms),
        o.dns_failures.to_string(),
        o.gateway_failures.to_string(),
        secs(o.dns_failback_ms),
        secs(o.gateway_failback_ms),
        o.stale_answers.to_string(),
    ]);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(s, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(s);
    let verdict = |ok: bool| if ok { "yes" } else { "NO" };
    let _ = writeln!(
        s,
        "every DC stopped answering with {}: {}; failed back: {}; stale answers: {}{}",
        r.setup.target,
        verdict(o.stopped),
        verdict(o.failed_back),
        o.stale_answers,
        if o.stale_in_transition > 0 {
            format!(
                " ({} more during a status change, not counted)",
                o.stale_in_transition
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "\"seen\" and \"moved\": since the {}; failback: since the restore. Rounds every {} ms, \
         and one at once after the failure and after the restore. \"?\": connections cannot be \
         placed in a DC (the same certificate everywhere); \"n/a\": it did not answer with {} \
         before.",
        match r.setup.kind {
            Kind::DcDown => "drain",
            Kind::ServiceDown => "checks failed",
        },
        r.setup.interval_ms,
        r.setup.target
    );
    if r.setup.interrupted {
        let _ = writeln!(s, "INTERRUPTED: the drill was stopped early.");
    }
    if !r.restored {
        let _ = writeln!(s, "NOT RESTORED: see the error below.");
    }
    for n in &r.setup.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Timed;

    fn status(dc1: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([
            ("dc1".to_owned(), dc1.to_owned()),
            ("dc2".to_owned(), "up".to_owned()),
        ]))
    }

    /// A round at `t` ms answering with `dns` (None: failed), the gateway reaching `gw`, with
    /// dc1's status before and after.
    fn round(t: f64, dns: Option<&[&str]>, gw: Option<&str>, before: &str, after: &str) -> Round {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Round {
            status_before: status(before),
            status_after: status(after),
            dns: Timed {
                sent_ms: t,
                at_ms: t + 1.0,
                outcome: match dns {
                    Some(d) => DnsOutcome::Answered {
                        dcs: set(d),
                        unattributed: 0,
                    },
                    None => DnsOutcome::Failed("timeout".into()),
                },
            },
            gateway: Some(Timed {
                sent_ms: t + 2.0,
                at_ms: t + 3.0,
                outcome: match gw {
                    Some(dc) => ConnectOutcome::Connected {
                        dc: Some(dc.to_owned()),
                    },
                    None => ConnectOutcome::Failed("refused".into()),
                },
            }),
        }
    }

    fn setup() -> Setup {
        Setup {
            kind: Kind::DcDown,
            target: "dc1".into(),
            service: "web".into(),
            domain: "consul".into(),
            for_ms: 1000,
            interval_ms: 100,
            started_unix_s: 0,
            action_ack_ms: Some(1.0),
            restore_ms: Some(1000.0),
            restore_ack_ms: Some(2.0),
            end_ms: 1500.0,
            interrupted: false,
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_clean_drill_is_measured() {
        let rounds = vec![
            round(-200.0, Some(&["dc1"]), Some("dc1"), "up", "up"),
            round(-100.0, Some(&["dc1"]), Some("dc1"), "up", "up"),
            // The drain has not reached this DC yet.
            round(0.0, Some(&["dc1"]), Some("dc1"), "up", "drained"),
            round(100.0, None, None, "drained", "drained"),
            round(200.0, Some(&["dc2"]), Some("dc2"), "drained", "drained"),
            round(900.0, Some(&["dc2"]), Some("dc2"), "drained", "drained"),
            // Restored at 1000.
            round(1000.0, Some(&["dc2"]), Some("dc2"), "drained", "drained"),
            round(1100.0, Some(&["dc1"]), Some("dc2"), "up", "up"),
            round(1200.0, Some(&["dc1"]), Some("dc1"), "up", "up"),
        ];
        let o = Observed {
            dc: "dc3".into(),
            node: "http://n".into(),
            gateway_attributed: true,
            rounds,
        };
        let r = analyse(&setup(), std::slice::from_ref(&o));
        let d = &r.datacenters[0];
        assert!(d.dns.with_target_before);
        assert_eq!(d.dns.last_with_target_ms, Some(1.0));
        assert_eq!(d.dns.stopped_ms, Some(201.0));
        assert_eq!(d.dns.failures_during, 1);
        assert_eq!(d.dns.failure_reasons.get("timeout"), Some(&1));
        assert_eq!(d.dns.slowest_failure_ms, Some(1.0));
        assert_eq!(d.dns.failback_ms, Some(101.0));
        let g = d.gateway.as_ref().expect("gateway");
        assert_eq!(g.stopped_ms, Some(203.0));
        assert_eq!(g.failback_ms, Some(203.0));
        assert_eq!(d.status_marked_ms, Some(100.0));
        assert_eq!(d.status_cleared_ms, Some(100.0));
        assert_eq!(d.stale_answers, 0);
        assert!(r.overall.stopped && r.overall.failed_back && r.completed);
        assert_eq!(r.overall.dns_stopped_ms, Some(201.0));
        assert_eq!(r.overall.gateway_failures, 1);
        assert!(failed_back(&[o], "dc1", 1000.0));
        let text = human(&r);
        assert!(text.contains("dc3") && text.contains("201 ms"), "{text}");
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["drill"], "dc-down");
        assert_eq!(json["overall"]["stale_answers"], 0);
    }

    #[test]
    fn stale_answers_are_counted_and_transitions_are_not() {
        let rounds = vec![
            round(-100.0, Some(&["dc1"]), Some("dc1"), "up", "up"),
            // Listed drained before and after: stale, in DNS and through the gateway.
            round(100.0, Some(&["dc1"]), Some("dc1"), "drained", "drained"),
            // Drained before, up after: the status changed during the round.
            round(1100.0, Some(&["dc1"]), Some("dc1"), "drained", "up"),
            // Down counts like drained; no status after: judged on the one before.
            Round {
                status_after: None,
                ..round(1200.0, Some(&["dc1"]), None, "down", "down")
            },
            Round {
                status_before: None,
                ..round(1300.0, Some(&["dc1"]), None, "down", "down")
            },
        ];
        let o = Observed {
            dc: "dc3".into(),
            node: "n".into(),
            gateway_attributed: true,
            rounds,
        };
        let r = analyse(&setup(), &[o]);
        let d = &r.datacenters[0];
        assert_eq!(d.dns.stale, 2);
        assert_eq!(d.dns.stale_in_transition, 1);
        assert_eq!(d.dns.unjudged, 1);
        assert_eq!(d.stale_answers, 3);
        assert_eq!(r.overall.stale_in_transition, 2);
        assert!(!d.dns.stopped && !r.overall.stopped);
        assert_eq!(r.overall.dns_stopped_ms, None);
    }

    #[test]
    fn a_dc_that_never_answered_with_the_target_is_not_applicable() {
        let rounds = vec![
            round(-100.0, Some(&["dc2"]), Some("dc2"), "up", "up"),
            round(100.0, Some(&["dc2"]), Some("dc2"), "drained", "drained"),
            round(1100.0, Some(&["dc2"]), Some("dc2"), "up", "up"),
        ];
        let o = Observed {
            dc: "dc2".into(),
            node: "n".into(),
            gateway_attributed: false,
            rounds,
        };
        let r = analyse(&setup(), std::slice::from_ref(&o));
        let d = &r.datacenters[0];
        assert!(!d.dns.with_target_before && d.dns.stopped);
        assert_eq!(d.dns.failed_back, None);
        assert_eq!(r.overall.dns_stopped_ms, None);
        assert!(r.overall.stopped && r.overall.failed_back);
        assert!(failed_back(&[o], "dc1", 1000.0));
        assert!(human(&r).contains("n/a"));
    }

    #[test]
    fn no_failback_and_no_restore_are_reported() {
        let rounds = vec![
            round(-100.0, Some(&["dc1"]), Some("dc1"), "up", "up"),
            round(100.0, Some(&["dc2"]), Some("dc2"), "drained", "drained"),
            round(1100.0, Some(&["dc2"]), Some("dc2"), "up", "up"),
        ];
        let o = Observed {
            dc: "dc3".into(),
            node: "n".into(),
            gateway_attributed: true,
            rounds,
        };
        assert!(!failed_back(std::slice::from_ref(&o), "dc1", 1000.0));
        let r = analyse(&setup(), std::slice::from_ref(&o));
        assert!(r.overall.stopped && !r.overall.failed_back);
        assert_eq!(r.datacenters[0].dns.failed_back, Some(false));
        let mut s = setup();
        s.restore_ms = None;
        s.restore_ack_ms = None;
        let r = analyse(&s, &[o]);
        assert!(!r.completed && !r.restored && !r.overall.failed_back);
        // Every round after the action counts as the drill's.
        assert_eq!(r.datacenters[0].dns.during.get("dc2"), Some(&2));
        assert!(human(&r).contains("NOT RESTORED"));
    }
}
