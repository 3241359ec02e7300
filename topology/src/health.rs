//! The DC failure detector: turns probe results (data plane) and federation stream state
//! (control plane) into each remote DC's `Up`/`Suspect`/`Down`, with hysteresis, plus `Drained`
//! when an operator says so. Pure: the caller feeds it events and the time, in milliseconds of
//! any monotonic clock.
//!
//! A DC goes `Down` after `down_after` without evidence of life, and comes back `Up` only after
//! `failback_after` of unbroken evidence, so a flapping link changes answers at most once per
//! `min(down_after, failback_after)`. Both silences are measured on top of the WAN's own slack,
//! twice the DC's smoothed probe round trip (at most `down_after`): on a long, lossy WAN an
//! answer delayed by one lost packet arrives a round trip or two late, and that is no sign of
//! death. A lost DC is therefore `Down` within `down_after + min(2 × RTT, down_after)` of its
//! last answer. The data plane is the evidence while it is being probed
//! (it is what carries traffic: a DC whose gateways are all dead is `Down` even if its servers
//! still stream); otherwise the control stream is. Control lost while the data plane answers is
//! `stale`, not `Down`.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::OrdMap;
use serde::Serialize;

/// A datacenter's state as the detector sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DcStatus {
    /// Answers and routes may point at it.
    #[default]
    Up,
    /// Evidence of life is late; still answered from, watched closely.
    Suspect,
    /// Lost: no answer or route points at it until it recovers for the stable period.
    Down,
    /// Taken out by an operator or a drill; treated like `Down` without waiting.
    Drained,
}

impl DcStatus {
    /// The state's name in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DcStatus::Up => "up",
            DcStatus::Suspect => "suspect",
            DcStatus::Down => "down",
            DcStatus::Drained => "drained",
        }
    }
}

/// One DC's published liveness.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DcLiveness {
    /// The state answers follow.
    pub status: DcStatus,
    /// When `status` last changed, in the detector's clock (ms).
    pub since_ms: u64,
    /// Smoothed data-plane round-trip time in microseconds, once measured.
    pub rtt_us: Option<u32>,
    /// The control stream is lost (the replica is stale) while the data plane still answers.
    pub stale: bool,
    /// If the DC were lost now, it would be `Down` at most this long after (ms): `down_after`
    /// plus the WAN's slack (twice the RTT, at most `down_after`), plus half an RTT for an
    /// answer already on its way. 0 where no detector measures it.
    pub bound_ms: u64,
}

/// The detector's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Without evidence of life for this long, a DC is `Suspect`.
    pub suspect_after_ms: u64,
    /// Without evidence of life for this long, a DC is `Down`.
    pub down_after_ms: u64,
    /// A `Down` DC is `Up` again after this long of unbroken evidence of life.
    pub failback_after_ms: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        // With probes every 100 ms a DC answering normally is never silent for more than
        // about 100 ms, so 900 ms is nine probes lost in a row (plus the WAN's slack), and room
        // for the tunnel to tell a dead gateway from a WAN that slowed down and move to the
        // DC's next gateway (see the README's failover section): a lost DC is `Down` 0.8 to
        // 0.9 s after the loss on a short WAN, inside the 1 s bound we publish.
        DetectorConfig {
            suspect_after_ms: 450,
            down_after_ms: 900,
            failback_after_ms: 5000,
        }
    }
}

/// One source of evidence (data plane or control plane).
#[derive(Clone, Copy, Debug, Default)]
struct Source {
    /// Last time this source said "alive".
    last_ok: Option<u64>,
    /// Start of the current unbroken run of "alive", if the last report was "alive".
    streak: Option<u64>,
    /// Last time this source reported anything.
    last_report: Option<u64>,
    /// First time this source reported anything: a source that never said "alive" has been
    /// silent since then, not since the DC was first seen (its gateways may have been unknown
    /// until its replica named them).
    first_report: Option<u64>,
}

impl Source {
    /// Records a report; a gap of more than `gap` since the previous one breaks the streak,
    /// since nothing vouched for the DC in between. A failure alone does not: what breaks a
    /// streak is silence (see [`Source::expire`]), so on a lossy WAN a lost probe among answered
    /// ones is no sign of death, and a run that any single loss broke would keep a reachable DC
    /// down for good.
    fn report(&mut self, now: u64, alive: bool, gap: u64) {
        if self
            .last_report
            .is_some_and(|t| now.saturating_sub(t) > gap)
        {
            self.streak = None;
        }
        self.last_report = Some(now);
        self.first_report.get_or_insert(now);
        if alive {
            self.last_ok = Some(now);
            self.streak.get_or_insert(now);
        }
    }

    /// Breaks the streak once the source has been silent for more than `tolerance` at `now`.
    fn expire(&mut self, now: u64, tolerance: u64) {
        if self
            .last_ok
            .is_none_or(|t| now.saturating_sub(t) > tolerance)
        {
            self.streak = None;
        }
    }
}

#[derive(Clone, Debug)]
struct Track {
    health: DcStatus,
    /// When `health` last changed (or the DC was first seen).
    health_since: u64,
    /// When the published status (health or drained) last changed.
    since: u64,
    data: Source,
    control: Source,
    control_up: bool,
    rtt_us: Option<f64>,
    /// The latest RTT sample, in microseconds.
    last_rtt_us: Option<f64>,
    /// The one before it.
    prev_rtt_us: Option<f64>,
    drained: bool,
}

/// The failure detector for every remote DC of one node.
#[derive(Clone, Debug, Default)]
pub struct Detector {
    config: DetectorConfig,
    dcs: BTreeMap<Arc<str>, Track>,
}

/// How long after its last report the data plane stays the evidence (see `Track::evidence`).
fn data_evidence_ms(config: &DetectorConfig, slack: u64) -> u64 {
    2 * (config.down_after_ms + slack)
}

/// Weight of a new RTT sample in the moving average.
const RTT_ALPHA: f64 = 0.2;

impl Detector {
    /// A detector with thresholds `config`.
    pub fn new(config: DetectorConfig) -> Self {
        Detector {
            config,
            dcs: BTreeMap::new(),
        }
    }

    /// Takes thresholds `config` from now on (a reload), keeping what it knows of every DC:
    /// statuses, evidence and RTTs.
    pub fn set_config(&mut self, config: DetectorConfig) {
        self.config = config;
    }

    fn track(&mut self, dc: &str, now: u64) -> &mut Track {
        let key: Arc<str> = dc.to_ascii_lowercase().into();
        self.dcs.entry(key).or_insert_with(|| Track {
            health: DcStatus::Up,
            health_since: now,
            since: now,
            data: Source::default(),
            control: Source::default(),
            control_up: false,
            rtt_us: None,
            last_rtt_us: None,
            prev_rtt_us: None,
            drained: false,
        })
    }

    /// Starts watching `dc` (no-op if already watched): it is `Up` until evidence says otherwise,
    /// but published as `Down` until it first shows evidence of life.
    pub fn watch(&mut self, dc: &str, now: u64) {
        self.track(dc, now);
    }

    /// A data-plane probe of `dc` at `now`: answered after `rtt_us`, or failed (`None`).
    pub fn probe(&mut self, dc: &str, now: u64, rtt_us: Option<u32>) {
        let config = self.config;
        let t = self.track(dc, now);
        t.data.report(now, rtt_us.is_some(), config.down_after_ms);
        if let Some(rtt) = rtt_us {
            let rtt = f64::from(rtt);
            t.rtt_us = Some(t.rtt_us.map_or(rtt, |s| s + RTT_ALPHA * (rtt - s)));
            t.prev_rtt_us = t.last_rtt_us.replace(rtt);
        }
        t.evaluate(now, &config);
    }

    /// The control plane's state for `dc` at `now`: whether its federation stream is up and
    /// confirmed the replica recently.
    pub fn control(&mut self, dc: &str, now: u64, up: bool) {
        let config = self.config;
        let t = self.track(dc, now);
        t.control_up = up;
        t.control.report(now, up, config.down_after_ms);
        t.evaluate(now, &config);
    }

    /// Marks `dc` drained (or not), as an operator or a drill decided.
    pub fn set_drained(&mut self, dc: &str, now: u64, drained: bool) {
        let config = self.config;
        let t = self.track(dc, now);
        if t.drained != drained {
            t.drained = drained;
            t.since = now;
        }
        t.evaluate(now, &config);
    }

    /// Re-evaluates every DC at `now` (time passing is evidence too).
    pub fn tick(&mut self, now: u64) {
        let config = self.config;
        for t in self.dcs.values_mut() {
            t.evaluate(now, &config);
        }
    }

    /// The earliest time after `now` at which time passing alone may change some DC's status
    /// (a silence reaching a threshold, a streak reaching the failback period), if any: the
    /// caller evaluates then ([`Detector::tick`]), so a lost DC is `Down` when its silence
    /// reaches the bound, not at the next probe interval after. It may come early (an
    /// evaluation that changes nothing), never late.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let config = &self.config;
        self.dcs
            .values()
            .filter_map(|t| t.next_deadline(now, config))
            .min()
    }

    /// The smoothed probe round trip to `dc` (any case), in microseconds, once measured.
    pub fn rtt_us(&self, dc: &str) -> Option<f64> {
        self.dcs.get(dc.to_ascii_lowercase().as_str())?.rtt_us
    }

    /// How long `dc` (any case) may be silent before it is `Down`: `down_after` plus its WAN's
    /// slack. A probe of it may be answered this late and still count.
    pub fn silence_bound_ms(&self, dc: &str) -> u64 {
        let config = &self.config;
        self.dcs
            .get(dc.to_ascii_lowercase().as_str())
            .map_or(config.down_after_ms, |t| {
                config.down_after_ms + t.slack_ms(config)
            })
    }

    /// The status of `dc` (any case), if watched.
    pub fn status(&self, dc: &str) -> Option<DcStatus> {
        self.dcs
            .get(dc.to_ascii_lowercase().as_str())
            .map(Track::status)
    }

    /// Every watched DC's liveness, keyed by lowercased name.
    pub fn liveness(&self) -> OrdMap<Arc<str>, DcLiveness> {
        self.dcs
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    DcLiveness {
                        status: t.published_status(),
                        since_ms: t.since,
                        // Rounded to whole microseconds; an RTT beyond u32 is no RTT.
                        rtt_us: t.rtt_us.map(|r| r.round().min(f64::from(u32::MAX)) as u32),
                        stale: t.stale(),
                        bound_ms: t.bound_ms(&self.config),
                    },
                )
            })
            .collect()
    }
}

impl Track {
    fn status(&self) -> DcStatus {
        if self.drained {
            DcStatus::Drained
        } else {
            self.health
        }
    }

    /// The status answers go by: a DC that has shown no evidence of life since this node started
    /// is not answered for (as if `Down`), since its replica on disk may be all that is left of
    /// it; its first evidence makes it `Up` at once, as it was never found down.
    fn published_status(&self) -> DcStatus {
        if !self.drained && self.never_heard() {
            DcStatus::Down
        } else {
            self.status()
        }
    }

    /// Whether neither plane has shown evidence of life since this node started.
    fn never_heard(&self) -> bool {
        self.data.last_ok.is_none() && self.control.last_ok.is_none()
    }

    /// The data plane is the evidence while it is probed, the control plane otherwise. A probe
    /// may report as late as the DC may be silent, and probes that all waited on one connection
    /// attempt report at once, so the next report may come a whole such period after the
    /// previous: the data plane stays the evidence for twice that. Handing over sooner let a
    /// one-way cut's stream heartbeats vouch for a DC no probe could reach.
    fn evidence(&self, now: u64, config: &DetectorConfig, slack: u64) -> &Source {
        match self.data.last_report {
            Some(t) if now.saturating_sub(t) <= data_evidence_ms(config, slack) => &self.data,
            _ => &self.control,
        }
    }

    /// See [`DcLiveness::bound_ms`].
    fn bound_ms(&self, config: &DetectorConfig) -> u64 {
        let half_rtt = self.rtt_us.map_or(0, |us| (us / 2000.0).round() as u64);
        config.down_after_ms + self.slack_ms(config) + half_rtt
    }

    fn stale(&self) -> bool {
        !self.control_up && self.data.streak.is_some()
    }

    /// How much longer than the thresholds an answer may be late on this DC's WAN: twice the
    /// probe round trip (a lost packet costs about that), at most `down_after`, so that the
    /// detection bound at most doubles however slow the WAN. The round trip is the larger of
    /// the smoothed one and the smaller of the last two samples: when the WAN slows down at
    /// once, the smoothed value takes several answers to follow, and meanwhile the next answers
    /// are as late as the new round trip, which is no sign of death; but one slow answer alone
    /// (a busy moment on either host) is no new round trip, and letting it widen the slack
    /// delayed the detection of a DC lost just after it by twice that answer's time.
    fn slack_ms(&self, config: &DetectorConfig) -> u64 {
        let recent = match (self.last_rtt_us, self.prev_rtt_us) {
            (Some(l), Some(p)) => Some(l.min(p)),
            (l, _) => l,
        };
        let rtt = match (self.rtt_us, recent) {
            (Some(s), Some(r)) => Some(s.max(r)),
            (s, r) => s.or(r),
        };
        rtt.map_or(0, |us| (2.0 * us / 1000.0) as u64)
            .min(config.down_after_ms)
    }

    /// The first time after `now` at which [`Track::evaluate`] may decide otherwise with no new
    /// report: a threshold of a source's silence (the streak's tolerance, `suspect`, `down`,
    /// the data plane ceasing to be the evidence) or the failback period of a streak, each
    /// counted as `evaluate` counts it.
    fn next_deadline(&self, now: u64, config: &DetectorConfig) -> Option<u64> {
        let slack = self.slack_ms(config);
        let tolerance = config.suspect_after_ms + slack;
        let down = config.down_after_ms + slack;
        let since = self.health_since;
        let mut next: Option<u64> = None;
        let mut consider = |at: u64| {
            if at > now && next.is_none_or(|n| at < n) {
                next = Some(at);
            }
        };
        for source in [&self.data, &self.control] {
            // As `evaluate` counts a silence: from the start when the source never reported.
            let last = source
                .last_ok
                .or(source.first_report)
                .unwrap_or(0)
                .max(since);
            consider(last + tolerance);
            consider(last + tolerance + 1);
            consider(last + down);
            if let Some(t) = source.last_report {
                consider(t + data_evidence_ms(config, slack) + 1);
            }
            if let Some(start) = source.streak {
                consider(start.max(since) + config.failback_after_ms);
            }
        }
        next
    }

    fn evaluate(&mut self, now: u64, config: &DetectorConfig) {
        let before = self.status();
        let health_before = self.health;
        let slack = self.slack_ms(config);
        let tolerance = config.suspect_after_ms + slack;
        self.data.expire(now, tolerance);
        self.control.expire(now, tolerance);
        let source = *self.evidence(now, config, slack);
        // Both periods count from the last change at the earliest, so that switching between
        // evidence sources never shortens the hysteresis.
        let from = |t: u64| now.saturating_sub(t.max(self.health_since));
        let silent = from(source.last_ok.or(source.first_report).unwrap_or(0));
        // A DC not heard from since this node started is published as down anyway (see
        // `published_status`) but is not *found* down: its first evidence makes it up at once.
        // Finding it down for its silence made its first evidence wait out the failback period,
        // so a first sync longer than `down_after` (a big replica) left the DC unanswered for
        // five seconds after it had arrived whole.
        let never_heard = self.never_heard();
        self.health = match self.health {
            DcStatus::Up | DcStatus::Suspect if never_heard => DcStatus::Up,
            DcStatus::Down | DcStatus::Drained => match source.streak {
                Some(start) if from(start) >= config.failback_after_ms => DcStatus::Up,
                _ => DcStatus::Down,
            },
            DcStatus::Up | DcStatus::Suspect => {
                if silent >= config.down_after_ms + slack {
                    DcStatus::Down
                } else if silent >= tolerance {
                    DcStatus::Suspect
                } else {
                    DcStatus::Up
                }
            }
        };
        if self.health != health_before
            && (self.health == DcStatus::Down || health_before == DcStatus::Down)
        {
            self.health_since = now;
        }
        if self.status() != before {
            self.since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const C: DetectorConfig = DetectorConfig {
        suspect_after_ms: 600,
        down_after_ms: 1500,
        failback_after_ms: 5000,
    };

    #[test]
    fn a_silent_dc_goes_suspect_then_down_and_recovers_after_the_stable_period() {
        let mut d = Detector::new(C);
        for t in (0..=1000).step_by(250) {
            d.probe("dc2", t, Some(40_000));
        }
        assert_eq!(d.status("DC2"), Some(DcStatus::Up));
        d.probe("dc2", 1250, None);
        d.tick(1700);
        assert_eq!(d.status("dc2"), Some(DcStatus::Suspect));
        d.probe("dc2", 2400, None);
        assert_eq!(d.status("dc2"), Some(DcStatus::Suspect));
        d.tick(2570);
        assert_eq!(d.status("dc2"), Some(DcStatus::Suspect));
        d.tick(2580);
        assert_eq!(
            d.status("dc2"),
            Some(DcStatus::Down),
            "1.5 s and twice the 40 ms round trip after the last answer"
        );
        // Answers again: still Down until 5 s of unbroken answers.
        for t in (3000..7000).step_by(250) {
            d.probe("dc2", t, Some(40_000));
            assert_eq!(d.status("dc2"), Some(DcStatus::Down), "at {t}");
        }
        // Failures for longer than `suspect_after` without an answer restart the period.
        for t in [7000, 7250, 7500, 7750] {
            d.probe("dc2", t, None);
        }
        for t in (8000..13_000).step_by(250) {
            d.probe("dc2", t, Some(40_000));
        }
        d.tick(12_900);
        assert_eq!(
            d.status("dc2"),
            Some(DcStatus::Down),
            "failures restart the period"
        );
        d.probe("dc2", 13_000, Some(40_000));
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));
        let l = d.liveness();
        let dc2 = l.get("dc2").expect("watched");
        assert_eq!((dc2.status, dc2.since_ms), (DcStatus::Up, 13_000));
        assert_eq!(dc2.rtt_us, Some(40_000));
    }

    #[test]
    fn a_dc_first_probed_late_is_judged_by_its_probes_from_the_first() {
        // Watched at 0 and alive on its control stream; its gateways become known (and probed)
        // only at 3000, and the first probes go to one that just died.
        let mut d = Detector::new(C);
        d.watch("dc2", 0);
        d.control("dc2", 2900, true);
        d.probe("dc2", 3000, None);
        d.probe("dc2", 3250, None);
        assert_eq!(
            d.status("dc2"),
            Some(DcStatus::Up),
            "0.25 s of failed probes"
        );
        // Another gateway answers within `down_after` of the first probe: never Down.
        d.probe("dc2", 3900, Some(1_000));
        d.tick(4000);
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));
        // All of them dead from their first probe: Down after `down_after` of failed probes.
        let mut dead = Detector::new(C);
        dead.watch("dc3", 0);
        dead.control("dc3", 2900, true);
        for t in (3000..=4500).step_by(250) {
            dead.probe("dc3", t, None);
        }
        assert_eq!(dead.status("dc3"), Some(DcStatus::Down));
    }

    #[test]
    fn an_isolated_lost_probe_does_not_restart_the_failback_period() {
        let mut d = Detector::new(C);
        d.probe("dc2", 0, Some(1_000));
        d.tick(1600);
        assert_eq!(d.status("dc2"), Some(DcStatus::Down));
        // Answers for 5 s, with one probe lost on a lossy link in the middle.
        for t in (2000..=7000).step_by(250) {
            d.probe("dc2", t, (t != 4500).then_some(1_000));
        }
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));
    }

    #[test]
    fn on_a_long_lossy_wan_late_answers_are_not_death_and_a_lost_dc_is_down_within_the_bound() {
        // 400 ms round trips: the slack is 800 ms, so `Suspect` after 1.4 s of silence, `Down`
        // after 2.3 s, and a failback streak survives silences of up to 1.4 s.
        let mut d = Detector::new(C);
        let mut t = 0;
        d.probe("dc2", t, Some(400_000));
        // Answers every 250 ms, except that lost packets leave gaps of up to 2.2 s.
        for gap in [250, 250, 2200, 250, 1200, 250, 900, 250, 2200, 250] {
            d.tick(t + gap - 1);
            assert_ne!(d.status("dc2"), Some(DcStatus::Down), "at {}", t + gap - 1);
            t += gap;
            d.probe("dc2", t, Some(400_000));
        }
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));
        d.tick(t + 2299);
        assert_eq!(d.status("dc2"), Some(DcStatus::Suspect));
        d.tick(t + 2300);
        assert_eq!(d.status("dc2"), Some(DcStatus::Down), "1.5 s + 2 RTT");

        // Gaps shorter than the tolerance while `Down` do not restart the failback period: 5 s
        // after its first answer it is back.
        let mut d = Detector::new(C);
        d.probe("dc2", 0, Some(400_000));
        d.tick(3000);
        assert_eq!(d.status("dc2"), Some(DcStatus::Down));
        let mut t = 4000;
        d.probe("dc2", t, Some(400_000));
        for gap in [250, 1300, 250, 250, 1300, 250, 1300] {
            for _ in 0..gap / 50 {
                t += 50;
                d.tick(t);
                assert_eq!(d.status("dc2"), Some(DcStatus::Down), "at {t}");
            }
            d.probe("dc2", t, Some(400_000));
        }
        d.probe("dc2", 9_000, Some(400_000));
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));

        // A silence longer than the tolerance restarts it, failed probes or not.
        let mut d = Detector::new(C);
        d.probe("dc2", 0, Some(400_000));
        d.tick(3000);
        assert_eq!(d.status("dc2"), Some(DcStatus::Down));
        for t in (4000..=5000).step_by(250) {
            d.probe("dc2", t, Some(400_000));
        }
        d.tick(6000);
        d.tick(6500);
        for t in (6500..11_500).step_by(250) {
            d.probe("dc2", t, Some(400_000));
            assert_eq!(d.status("dc2"), Some(DcStatus::Down), "at {t}");
        }
        d.probe("dc2", 11_500, Some(400_000));
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));
    }

    #[test]
    fn control_lost_with_the_data_plane_answering_is_stale_not_down() {
        let mut d = Detector::new(C);
        d.control("dc2", 0, true);
        for t in (0..=10_000).step_by(250) {
            d.probe("dc2", t, Some(1000));
            if t == 500 {
                d.control("dc2", t, false);
            }
        }
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));
        assert!(d.liveness()["dc2"].stale);
        d.control("dc2", 10_000, true);
        assert!(!d.liveness()["dc2"].stale);
    }

    #[test]
    fn without_probes_the_control_stream_decides() {
        let mut d = Detector::new(C);
        d.control("dc3", 0, true);
        d.control("dc3", 1000, true);
        d.control("dc3", 1100, false);
        d.tick(2400);
        assert_eq!(d.status("dc3"), Some(DcStatus::Suspect));
        d.tick(2500);
        assert_eq!(d.status("dc3"), Some(DcStatus::Down));
    }

    #[test]
    fn probes_that_stop_hand_over_to_the_control_stream() {
        let mut d = Detector::new(C);
        d.probe("dc2", 0, Some(1000));
        for t in (0..10_000).step_by(500) {
            d.control("dc2", t, true);
        }
        assert_eq!(
            d.status("dc2"),
            Some(DcStatus::Up),
            "control alone keeps it up"
        );
    }

    #[test]
    fn drained_is_immediate_both_ways_and_keeps_the_health_underneath() {
        let mut d = Detector::new(C);
        d.probe("dc2", 0, Some(1000));
        d.set_drained("dc2", 100, true);
        assert_eq!(d.status("dc2"), Some(DcStatus::Drained));
        assert_eq!(d.liveness()["dc2"].since_ms, 100);
        d.probe("dc2", 200, Some(1000));
        d.set_drained("dc2", 300, false);
        assert_eq!(d.status("dc2"), Some(DcStatus::Up));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Probe(u64, bool),
        Control(u64, bool),
        Tick(u64),
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        let event = prop_oneof![
            (1u64..700, any::<bool>()).prop_map(|(dt, ok)| Event::Probe(dt, ok)),
            (1u64..700, any::<bool>()).prop_map(|(dt, up)| Event::Control(dt, up)),
            (1u64..3000).prop_map(Event::Tick),
        ];
        proptest::collection::vec(event, 1..400)
    }

    #[test]
    fn a_dc_is_answered_for_only_once_it_has_shown_evidence_of_life() {
        let mut d = Detector::new(C);
        d.watch("dc2", 0);
        // A node that starts while dc2 is cut off must not answer from dc2's replica on disk.
        assert_eq!(d.liveness()["dc2"].status, DcStatus::Down);
        d.probe("dc2", 100, Some(1_000));
        // Its first evidence brings it back at once: it was never found down.
        assert_eq!(d.liveness()["dc2"].status, DcStatus::Up);
        let mut c = Detector::new(C);
        c.watch("dc3", 0);
        c.control("dc3", 50, true);
        assert_eq!(c.liveness()["dc3"].status, DcStatus::Up);
    }

    #[test]
    fn a_silent_dc_is_down_at_its_deadline_not_a_probe_interval_later() {
        let mut d = Detector::new(C);
        for t in (0..=1000).step_by(100) {
            d.probe("dc2", t, Some(40));
        }
        // Woken only at the deadlines it names, the caller sees each change when it happens.
        let (mut now, mut suspect, mut down) = (1000, None, None);
        while let Some(at) = d.next_deadline(now) {
            now = at;
            d.tick(now);
            match d.status("dc2") {
                Some(DcStatus::Suspect) => suspect = suspect.or(Some(now)),
                Some(DcStatus::Down) => down = down.or(Some(now)),
                _ => {}
            }
        }
        assert_eq!(suspect, Some(1000 + C.suspect_after_ms));
        assert_eq!(down, Some(1000 + C.down_after_ms));
        assert_eq!(d.liveness()["dc2"].bound_ms, C.down_after_ms);
    }

    #[test]
    fn a_dc_first_heard_from_after_a_long_sync_is_up_at_once() {
        let mut d = Detector::new(C);
        d.watch("dc2", 0);
        // Its stream is open but its first sync takes 10 s: no confirmation meanwhile, and its
        // gateways are unknown until the replica names them.
        for t in (0..10_000).step_by(100) {
            d.control("dc2", t, false);
            d.tick(t);
            assert_eq!(
                d.liveness()["dc2"].status,
                DcStatus::Down,
                "published at {t}"
            );
        }
        d.control("dc2", 10_000, true);
        assert_eq!(d.liveness()["dc2"].status, DcStatus::Up);
        // Once heard from, silence is judged as always.
        d.tick(10_000 + C.down_after_ms);
        assert_eq!(d.liveness()["dc2"].status, DcStatus::Down);
    }

    /// The moment a DC that answered every 100 ms (after `rtts`, in µs) and then fell silent
    /// at 1 s is found down.
    fn down_at(rtts: &[u32]) -> u64 {
        let mut d = Detector::new(C);
        let mut t = 0;
        for rtt in rtts {
            d.probe("dc2", t, Some(*rtt));
            t += 100;
        }
        let last = t - 100;
        let mut now = last;
        while let Some(at) = d.next_deadline(now) {
            now = at;
            d.tick(now);
            if d.status("dc2") == Some(DcStatus::Down) {
                return now - last;
            }
        }
        u64::MAX
    }

    #[test]
    fn one_slow_answer_does_not_widen_the_bound_but_a_slower_wan_does() {
        let lan = [1_000; 11];
        assert_eq!(down_at(&lan), 1502, "2 × 1 ms of slack");
        // One answer in 75 ms just before the loss (a busy moment): only the smoothed RTT moves
        // (by a fifth), not the slack by twice 75 ms.
        let mut busy = lan;
        busy[10] = 75_000;
        assert_eq!(down_at(&busy), 1531);
        // Two slow answers in a row: the WAN slowed down, and the next answers may be that late.
        let mut slower = lan;
        slower[9] = 75_000;
        slower[10] = 80_000;
        assert_eq!(down_at(&slower), 1650, "2 × 75 ms");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A caller that evaluates only when something is reported and at each deadline the
        /// detector names sees every status a caller evaluating every millisecond sees, at the
        /// same millisecond.
        #[test]
        fn waking_at_the_deadlines_misses_no_change(events in events()) {
            let (mut every_ms, mut at_deadlines) = (Detector::new(C), Detector::new(C));
            every_ms.watch("dc2", 0);
            at_deadlines.watch("dc2", 0);
            let mut now = 0u64;
            for e in events.into_iter().take(120) {
                let dt = match e {
                    Event::Probe(dt, _) | Event::Control(dt, _) => dt,
                    Event::Tick(dt) => dt.min(700),
                };
                for t in now + 1..now + dt {
                    every_ms.tick(t);
                    if at_deadlines.next_deadline(t - 1) == Some(t) {
                        at_deadlines.tick(t);
                    }
                    prop_assert_eq!(every_ms.status("dc2"), at_deadlines.status("dc2"), "at {} ms", t);
                }
                now += dt;
                for d in [&mut every_ms, &mut at_deadlines] {
                    match e {
                        Event::Probe(_, ok) => d.probe("dc2", now, ok.then_some(5000)),
                        Event::Control(_, up) => d.control("dc2", now, up),
                        Event::Tick(_) => d.tick(now),
                    }
                }
                prop_assert_eq!(every_ms.status("dc2"), at_deadlines.status("dc2"), "at {} ms", now);
            }
        }
    }

    proptest! {
        /// Answers change no faster than the hysteresis allows: every period outside `Down`
        /// lasts at least `down_after`, every `Down` period at least `failback_after`; and a DC
        /// that has given no evidence for `down_after` is `Down`.
        #[test]
        fn hysteresis_bounds_flapping(events in events()) {
            let mut d = Detector::new(C);
            let mut now = 0;
            d.watch("dc2", now);
            let mut last_change = 0u64;
            let mut was_down = false;
            for e in events {
                match e {
                    Event::Probe(dt, ok) => { now += dt; d.probe("dc2", now, ok.then_some(5000)); }
                    Event::Control(dt, up) => { now += dt; d.control("dc2", now, up); }
                    Event::Tick(dt) => { now += dt; d.tick(now); }
                }
                let down = d.status("dc2") == Some(DcStatus::Down);
                if down != was_down {
                    let lasted = now - last_change;
                    let bound = if was_down { C.failback_after_ms } else { C.down_after_ms };
                    prop_assert!(lasted >= bound, "a {} period lasted {lasted} ms", if was_down { "down" } else { "up" });
                    last_change = now;
                    was_down = down;
                }
            }
        }
    }
}
