//! Failover: which datacenters a query without a DC may be answered from, in what order, and how
//! an answer that left the local DC is addressed. The liveness that drives it comes from
//! [`health`](crate::health); the state published here is what every reader consults.

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::health::{DcLiveness, DcStatus};

/// How an answer that failed over to another DC is addressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressMode {
    /// The remote instances' own addresses (Consul's behaviour): clients need a route there.
    #[default]
    Direct,
    /// The local gateways' addresses: the client's TLS SNI names the service and the gateway
    /// tunnels to the chosen DC, so clients never need a route to another DC.
    Gateway,
}

impl AddressMode {
    /// The mode's name in config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressMode::Direct => "direct",
            AddressMode::Gateway => "gateway",
        }
    }
}

/// Where a query without a DC may go when the local DC cannot answer it.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverPolicy {
    /// Whether such queries fail over at all (Consul's plain `.service` lookups do not).
    pub enabled: bool,
    /// Up to this many other DCs, nearest first by measured RTT, are tried first.
    pub nearest_n: usize,
    /// Then these DCs, in this order (those not already tried).
    pub datacenters: Vec<Arc<str>>,
    /// Fail over when fewer than this share (0 to 1) of the local matching instances is healthy.
    pub spill_below: Option<f64>,
    /// How answers from another DC are addressed.
    pub address_mode: AddressMode,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            enabled: true,
            nearest_n: 3,
            datacenters: Vec::new(),
            spill_below: None,
            address_mode: AddressMode::Direct,
        }
    }
}

/// The failover state a [`View`](crate::View) carries: every DC's liveness, the services that
/// recovered too recently to be answered from again, and the default policy.
#[derive(Clone, Debug, Default)]
pub struct Failover {
    /// Liveness by lowercased DC name; a DC without an entry counts as `Up`.
    pub liveness: OrdMap<Arc<str>, DcLiveness>,
    /// `(dc, service)`, both lowercased, whose instances came back and are still inside the
    /// failback stable period: used only when no other DC can answer.
    pub held: OrdSet<(Arc<str>, Arc<str>)>,
    /// The policy for names without a DC.
    pub policy: Arc<FailoverPolicy>,
    /// Remote DCs (lowercased) nearest first, ranked with hysteresis by [`rank_by_rtt`] so that
    /// RTT jitter does not reorder answers; DCs not listed come after, by RTT.
    pub order: Vec<Arc<str>>,
}

impl Failover {
    /// The liveness of `dc` (any case); `Up` with nothing measured when unknown.
    pub fn liveness(&self, dc: &str) -> DcLiveness {
        self.get(dc).cloned().unwrap_or_default()
    }

    fn get(&self, dc: &str) -> Option<&DcLiveness> {
        if dc.bytes().any(|b| b.is_ascii_uppercase()) {
            self.liveness.get(dc.to_ascii_lowercase().as_str())
        } else {
            self.liveness.get(dc)
        }
    }

    /// The DCs `Down` here and not in `old`, each with whether `old` listed it at all (a DC
    /// first listed `Down` has not been heard from yet, which is no news).
    pub fn newly_down<'a>(
        &'a self,
        old: &'a Failover,
    ) -> impl Iterator<Item = (&'a Arc<str>, bool)> {
        self.liveness.iter().filter_map(|(dc, l)| {
            if l.status != DcStatus::Down {
                return None;
            }
            match old.liveness.get(dc) {
                Some(o) if o.status == DcStatus::Down => None,
                known => Some((dc, known.is_some())),
            }
        })
    }

    /// Whether answers must not point at `dc`: it is `Down` or `Drained`.
    pub fn unavailable(&self, dc: &str) -> bool {
        self.get(dc)
            .is_some_and(|l| matches!(l.status, DcStatus::Down | DcStatus::Drained))
    }

    /// Whether `service` in `dc` is inside its failback stable period.
    pub fn is_held(&self, dc: &str, service: &str) -> bool {
        // Few services are ever inside their failback period at once: a scan, no allocation
        // on the DNS path.
        self.held
            .iter()
            .any(|(d, s)| d.eq_ignore_ascii_case(dc) && s.eq_ignore_ascii_case(service))
    }

    /// Where `dc` stands in [`Self::order`] (any case); `usize::MAX` when unranked.
    pub fn rank(&self, dc: &str) -> usize {
        self.order
            .iter()
            .position(|d| d.eq_ignore_ascii_case(dc))
            .unwrap_or(usize::MAX)
    }

    /// The smoothed RTT to `dc` in microseconds, if measured.
    pub fn rtt_us(&self, dc: &str) -> Option<u32> {
        self.get(dc).and_then(|l| l.rtt_us)
    }
}

/// A DC overtakes the one ranked ahead of it only when its RTT is below this share of that one's…
const OVERTAKE_SHARE: f64 = 0.8;
/// …and lower by at least this many microseconds: RTTs that differ by jitter keep their order.
const OVERTAKE_MARGIN_US: u32 = 1_000;

/// Ranks the DCs with a measured RTT in `liveness`, nearest first, starting from the previous
/// ranking `prev`: a DC moves ahead of another only when it is clearly nearer (both a fifth and
/// a millisecond), so two DCs at about the same distance do not swap places on every probe.
pub fn rank_by_rtt(prev: &[Arc<str>], liveness: &OrdMap<Arc<str>, DcLiveness>) -> Vec<Arc<str>> {
    let rtt = |dc: &Arc<str>| liveness.get(dc).and_then(|l| l.rtt_us);
    // Keep the previous order for DCs still measured, then add new ones by RTT.
    let mut order: Vec<Arc<str>> = prev.iter().filter(|d| rtt(d).is_some()).cloned().collect();
    let mut new: Vec<Arc<str>> = liveness
        .iter()
        .filter(|(dc, l)| l.rtt_us.is_some() && !order.contains(dc))
        .map(|(dc, _)| dc.clone())
        .collect();
    new.sort_by_key(|d| rtt(d));
    for dc in new {
        let r = rtt(&dc).unwrap_or(u32::MAX);
        let at = order
            .iter()
            .position(|o| rtt(o).unwrap_or(u32::MAX) > r)
            .unwrap_or(order.len());
        order.insert(at, dc);
    }
    let clearly_nearer = |a: u32, b: u32| {
        f64::from(a) < OVERTAKE_SHARE * f64::from(b) && b.saturating_sub(a) >= OVERTAKE_MARGIN_US
    };
    // Bubble passes: at most n, each swapping neighbours only on a clear difference.
    for _ in 0..order.len() {
        let mut swapped = false;
        for i in 1..order.len() {
            let (ahead, behind) = (rtt(&order[i - 1]), rtt(&order[i]));
            if let (Some(a), Some(b)) = (ahead, behind)
                && clearly_nearer(b, a)
            {
                order.swap(i - 1, i);
                swapped = true;
            }
        }
        if !swapped {
            break;
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn statuses(entries: &[(&str, DcStatus)]) -> Failover {
        let liveness = entries
            .iter()
            .map(|(dc, status)| {
                let l = DcLiveness {
                    status: *status,
                    ..DcLiveness::default()
                };
                (Arc::from(*dc), l)
            })
            .collect();
        Failover {
            liveness,
            ..Failover::default()
        }
    }

    #[test]
    fn newly_down_is_a_dc_that_was_not_down_before() {
        let before = statuses(&[
            ("dc2", DcStatus::Up),
            ("dc3", DcStatus::Down),
            ("dc4", DcStatus::Suspect),
            ("dc5", DcStatus::Drained),
        ]);
        let after = statuses(&[
            ("dc2", DcStatus::Down),
            ("dc3", DcStatus::Down),
            ("dc4", DcStatus::Up),
            ("dc5", DcStatus::Down),
            ("dc6", DcStatus::Down),
        ]);
        let down: Vec<(&str, bool)> = after
            .newly_down(&before)
            .map(|(dc, known)| (&**dc, known))
            .collect();
        // dc2 went down from up, dc5 from drained; dc3 was down already; dc6 appeared unseen,
        // which the runner does not warn about (every remote starts so).
        assert_eq!(down, [("dc2", true), ("dc5", true), ("dc6", false)]);
        assert_eq!(after.newly_down(&after).count(), 0);
        assert_eq!(before.newly_down(&after).count(), 0);
    }

    fn live(rtts: &[(&str, u32)]) -> OrdMap<Arc<str>, DcLiveness> {
        rtts.iter()
            .map(|(dc, us)| {
                (
                    Arc::<str>::from(*dc),
                    DcLiveness {
                        rtt_us: Some(*us),
                        ..DcLiveness::default()
                    },
                )
            })
            .collect()
    }

    fn names(v: &[Arc<str>]) -> Vec<&str> {
        v.iter().map(|d| &**d).collect()
    }

    #[test]
    fn jitter_keeps_the_order_and_a_clear_difference_changes_it() {
        let first = rank_by_rtt(&[], &live(&[("dc1", 4000), ("dc2", 3000), ("dc3", 50_000)]));
        assert_eq!(names(&first), ["dc2", "dc1", "dc3"]);
        // dc1 now a little nearer than dc2: within the margin, no swap.
        let jitter = rank_by_rtt(
            &first,
            &live(&[("dc1", 2900), ("dc2", 3200), ("dc3", 50_000)]),
        );
        assert_eq!(names(&jitter), ["dc2", "dc1", "dc3"]);
        // dc3 becomes clearly the nearest: it moves all the way up.
        let moved = rank_by_rtt(
            &jitter,
            &live(&[("dc1", 2900), ("dc2", 3200), ("dc3", 100)]),
        );
        assert_eq!(names(&moved), ["dc3", "dc2", "dc1"]);
        // A DC no longer measured leaves the ranking.
        let gone = rank_by_rtt(&moved, &live(&[("dc1", 2900), ("dc3", 100)]));
        assert_eq!(names(&gone), ["dc3", "dc1"]);
    }

    proptest! {
        /// RTTs that move by less than the margin never reorder a ranking.
        #[test]
        fn small_moves_never_reorder(
            base in proptest::collection::vec(0u32..200_000, 1..6),
            noise in proptest::collection::vec(0u32..999, 6),
        ) {
            let dcs: Vec<String> = (0..base.len()).map(|i| format!("dc{i}")).collect();
            let l1: OrdMap<Arc<str>, DcLiveness> = dcs.iter().zip(&base).map(|(d, r)| (Arc::from(d.as_str()), DcLiveness { rtt_us: Some(*r), ..DcLiveness::default() })).collect();
            let first = rank_by_rtt(&[], &l1);
            let l2: OrdMap<Arc<str>, DcLiveness> = dcs.iter().zip(&base).zip(&noise).map(|((d, r), n)| (Arc::from(d.as_str()), DcLiveness { rtt_us: Some(r.saturating_add(*n)), ..DcLiveness::default() })).collect();
            let second = rank_by_rtt(&first, &l2);
            prop_assert_eq!(first, second);
        }
    }
}
