//! `resolve`: where a name goes. The one function DNS answers and gateway routes both come from,
//! so the two can never disagree. A query naming a DC is answered from that DC; a query without
//! one is answered locally and fails over by policy (see [`FailoverPolicy`]).

use crate::dc::DcState;
use crate::failover::{AddressMode, Failover, FailoverPolicy};
use crate::health::DcStatus;
use crate::model::{Health, Instance};
use crate::view::View;

/// A request for the instances of a service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceQuery<'a> {
    /// Service name (case-insensitive).
    pub service: &'a str,
    /// Only instances carrying this tag (case-insensitive).
    pub tag: Option<&'a str>,
    /// An explicit datacenter (local or a federated replica); `None` resolves by policy.
    pub dc: Option<&'a str>,
    /// Leave out instances whose health is `warning` (critical ones are always left out).
    pub only_passing: bool,
    /// Further tags, as prepared queries give them: every one must be present, and one written
    /// `!tag` must be absent.
    pub tags: &'a [String],
    /// The failover policy for a query without a DC; `None` takes the view's default.
    pub policy: Option<&'a FailoverPolicy>,
    /// Ask for the service's mesh endpoints (its `connect-proxy` sidecars) rather than its
    /// instances, as Consul's mesh SNI and `.connect` names do.
    pub connect: bool,
}

impl<'a> ServiceQuery<'a> {
    /// A query for `service` in `dc` (or by policy), with the view's default policy.
    pub fn new(service: &'a str, dc: Option<&'a str>) -> Self {
        ServiceQuery {
            service,
            tag: None,
            dc,
            only_passing: false,
            tags: &[],
            policy: None,
            connect: false,
        }
    }
}

/// The instances a query resolved to, all in one datacenter.
#[derive(Debug, Clone)]
pub struct Resolution<'v> {
    /// The datacenter the instances are in.
    pub dc: &'v str,
    /// That datacenter's catalog (for node addresses and checks).
    pub state: &'v DcState,
    /// The healthy instances with their health, in catalog order (callers shuffle).
    pub instances: Vec<(&'v Instance, Health)>,
    /// How many DCs were passed over: 0 when the first DC asked answered.
    pub failovers: usize,
    /// How the answer is addressed: `Direct` unless it failed over under a `gateway` policy.
    pub address_mode: AddressMode,
}

impl<'v> Resolution<'v> {
    /// The same answer addressed through the local DC's gateways: their healthy instances stand
    /// in for the chosen DC's, which the gateway reaches by the client's SNI.
    pub fn through_gateways(self, view: &'v View) -> Resolution<'v> {
        let state = view.local();
        let instances = state
            .instances_of(crate::GATEWAY_SERVICE)
            .map(|i| (i, state.health_of(i)))
            .filter(|(_, h)| *h != Health::Critical)
            .collect();
        Resolution {
            dc: view.datacenter(),
            state,
            instances,
            ..self
        }
    }
}

/// Why a query resolved to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The query names a datacenter this view does not know.
    #[error("unknown datacenter")]
    UnknownDatacenter,
    /// The query names a datacenter that is `Down` or `Drained`.
    #[error("datacenter unavailable")]
    DatacenterUnavailable,
    /// No instance of the service is registered (with that tag).
    #[error("no such service")]
    NoSuchService,
    /// Instances exist, but none is healthy enough.
    #[error("no healthy instance")]
    NoHealthyInstance,
}

/// The usable instances of the query's service in one DC, and how many match at all.
fn in_dc<'v>(state: &'v DcState, q: &ServiceQuery<'_>) -> (Vec<(&'v Instance, Health)>, usize) {
    let mut matching = 0;
    let mut instances = Vec::new();
    let named = (!q.connect).then(|| state.instances_of(q.service));
    let proxies = q.connect.then(|| state.proxies_of(q.service));
    for inst in named
        .into_iter()
        .flatten()
        .chain(proxies.into_iter().flatten())
    {
        if let Some(tag) = q.tag
            && !has_tag(inst, tag)
        {
            continue;
        }
        if !q.tags.iter().all(|t| match t.strip_prefix('!') {
            Some(absent) => !has_tag(inst, absent),
            None => has_tag(inst, t),
        }) {
            continue;
        }
        matching += 1;
        let health = state.health_of(inst);
        let ok = match health {
            Health::Passing => true,
            Health::Warning => !q.only_passing,
            Health::Critical => false,
        };
        if ok {
            instances.push((inst, health));
        }
    }
    (instances, matching)
}

fn has_tag(inst: &Instance, tag: &str) -> bool {
    inst.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
}

fn empty_error(matching: usize) -> ResolveError {
    if matching == 0 {
        ResolveError::NoSuchService
    } else {
        ResolveError::NoHealthyInstance
    }
}

/// The DCs a failing-over query tries after the local one, in order: up to `nearest_n` of the
/// available ones by RTT (unmeasured last, by name), then the policy's list. Unavailable DCs are
/// skipped before counting, so a dead nearest DC does not use up a place.
fn candidates<'v>(view: &'v View, policy: &FailoverPolicy) -> Vec<(&'v str, &'v DcState)> {
    let f = view.failover();
    let mut near: Vec<(&'v str, &'v DcState)> = view
        .remotes()
        .filter(|r| !f.unavailable(&r.name))
        .map(|r| (&*r.name, &r.state))
        .collect();
    near.sort_by_key(|(name, _)| (f.rank(name), f.rtt_us(name).unwrap_or(u32::MAX), *name));
    near.truncate(policy.nearest_n);
    for dc in &policy.datacenters {
        if let Some((name, state)) = view.dc_state(Some(dc))
            && name != view.datacenter()
            && !near.iter().any(|(n, _)| *n == name)
        {
            near.push((name, state));
        }
    }
    near
}

fn spills(policy: &FailoverPolicy, healthy: usize, matching: usize) -> bool {
    policy
        .spill_below
        .is_some_and(|share| (healthy as f64) < share * matching as f64)
}

/// Resolves a service query against a view, failing over by policy when it names no DC.
///
/// A DC that is `Down` or `Drained` is never in an answer (the local DC answers a query that
/// names it explicitly, so tunnelled connections still reach it). A DC whose instances of the
/// service recovered within the failback period answers only when no other DC can.
pub fn resolve<'v>(view: &'v View, q: &ServiceQuery<'_>) -> Result<Resolution<'v>, ResolveError> {
    let f: &Failover = view.failover();
    let found = |dc: &'v str, state: &'v DcState, instances, failovers, mode| Resolution {
        dc,
        state,
        instances,
        failovers,
        address_mode: mode,
    };
    if let Some(dc) = q.dc {
        let Some((name, state)) = view.dc_state(Some(dc)) else {
            return Err(ResolveError::UnknownDatacenter);
        };
        if name != view.datacenter() && f.unavailable(name) {
            return Err(ResolveError::DatacenterUnavailable);
        }
        let (instances, matching) = in_dc(state, q);
        if instances.is_empty() {
            return Err(empty_error(matching));
        }
        return Ok(found(name, state, instances, 0, AddressMode::Direct));
    }
    let policy = q.policy.unwrap_or(&f.policy);
    let (local, state) = (view.datacenter(), view.local());
    let (instances, matching) = in_dc(state, q);
    if !policy.enabled {
        if instances.is_empty() {
            return Err(empty_error(matching));
        }
        return Ok(found(local, state, instances, 0, AddressMode::Direct));
    }
    let local_usable = !instances.is_empty() && !f.unavailable(local);
    if local_usable && !f.is_held(local, q.service) && !spills(policy, instances.len(), matching) {
        return Ok(found(local, state, instances, 0, AddressMode::Direct));
    }
    let mut any_matching = matching;
    let mut recovering = None;
    for (i, (dc, remote)) in candidates(view, policy).into_iter().enumerate() {
        if f.unavailable(dc) {
            continue;
        }
        let (found_here, m) = in_dc(remote, q);
        any_matching += m;
        if found_here.is_empty() {
            continue;
        }
        if f.is_held(dc, q.service) {
            recovering.get_or_insert((dc, remote, found_here, i + 1));
            continue;
        }
        return Ok(found(dc, remote, found_here, i + 1, policy.address_mode));
    }
    // Nothing better: the local DC below its spill share or still recovering, then a remote
    // one still recovering, beats no answer.
    if local_usable {
        return Ok(found(local, state, instances, 0, AddressMode::Direct));
    }
    if let Some((dc, remote, found_here, failovers)) = recovering {
        return Ok(found(
            dc,
            remote,
            found_here,
            failovers,
            policy.address_mode,
        ));
    }
    Err(empty_error(any_matching))
}

/// Why a query without a DC left the local DC (or why it stayed): what the UI and operators
/// read beside an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The local DC answered: it has healthy instances and nothing sent the query elsewhere.
    Local,
    /// Failover is off for names without a DC (the local DC answers or nothing does).
    FailoverOff,
    /// The local DC is `down` or `drained`.
    LocalUnavailable(DcStatus),
    /// No instance of the service is registered in the local DC.
    NoneHere,
    /// Instances are registered here but none is healthy enough.
    NoneHealthyHere,
    /// The local instances recovered too recently (inside the failback stable period).
    FailbackHold,
    /// Fewer than the policy's share of the local instances is healthy (`healthy` of `matching`).
    Spill {
        /// Healthy local instances.
        healthy: usize,
        /// Matching local instances.
        matching: usize,
    },
}

impl Why {
    /// A short sentence for people.
    pub fn describe(&self) -> String {
        match self {
            Why::Local => "healthy instances in this datacenter".to_owned(),
            Why::FailoverOff => "failover is off for names without a datacenter".to_owned(),
            Why::LocalUnavailable(s) => format!("this datacenter is {}", s.as_str()),
            Why::NoneHere => "no instance in this datacenter".to_owned(),
            Why::NoneHealthyHere => "no healthy instance in this datacenter".to_owned(),
            Why::FailbackHold => "the local instances are inside the failback hold".to_owned(),
            Why::Spill { healthy, matching } => {
                format!("only {healthy} of {matching} local instances healthy (spill)")
            }
        }
    }

    /// A stable key for machines (`local`, `failover-off`, `dc-drained`, `none-here`, ...).
    pub fn key(&self) -> &'static str {
        match self {
            Why::Local => "local",
            Why::FailoverOff => "failover-off",
            Why::LocalUnavailable(DcStatus::Drained) => "dc-drained",
            Why::LocalUnavailable(_) => "dc-down",
            Why::NoneHere => "none-here",
            Why::NoneHealthyHere => "none-healthy-here",
            Why::FailbackHold => "failback-hold",
            Why::Spill { .. } => "spill",
        }
    }
}

/// Why [`resolve`] sends `q` (a query without a DC, under the view's or the query's policy)
/// where it does, judged from the local DC alone: the same tests `resolve` makes, in its order.
pub fn explain(view: &View, q: &ServiceQuery<'_>) -> Why {
    let f = view.failover();
    let policy = q.policy.unwrap_or(&f.policy);
    let (instances, matching) = in_dc(view.local(), q);
    if !policy.enabled {
        return Why::FailoverOff;
    }
    let local = view.datacenter();
    if f.unavailable(local) {
        return Why::LocalUnavailable(f.liveness(local).status);
    }
    if matching == 0 {
        return Why::NoneHere;
    }
    if instances.is_empty() {
        return Why::NoneHealthyHere;
    }
    if f.is_held(local, q.service) {
        return Why::FailbackHold;
    }
    if spills(policy, instances.len(), matching) {
        return Why::Spill {
            healthy: instances.len(),
            matching,
        };
    }
    Why::Local
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{DcLiveness, DcStatus};
    use crate::model::{Check, Weights};
    use crate::view::RemoteDc;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn inst(id: &str, tags: &[&str]) -> Instance {
        Instance {
            id: id.into(),
            service: "web".into(),
            node: "n1".into(),
            address: String::new(),
            port: 80,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            meta: Default::default(),
            weights: Weights::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        }
    }

    fn check(service_id: &str, status: Health) -> Check {
        Check {
            id: format!("service:{service_id}"),
            name: String::new(),
            node: "n1".into(),
            service_id: service_id.into(),
            service_name: "web".into(),
            status,
            output: String::new(),
            notes: String::new(),
            spec: None,
            create_index: 0,
            modify_index: 0,
        }
    }

    fn view() -> View {
        let mut s = DcState::default();
        s.register(inst("a", &["v1"]), vec![check("a", Health::Passing)], 1);
        s.register(inst("b", &["V2"]), vec![check("b", Health::Warning)], 2);
        s.register(inst("c", &["v1"]), vec![check("c", Health::Critical)], 3);
        View::new("dc1", s)
    }

    fn ids(r: &Resolution<'_>) -> Vec<String> {
        r.instances.iter().map(|(i, _)| i.id.clone()).collect()
    }

    #[test]
    fn health_tags_and_datacenters() {
        let v = view();
        let q = ServiceQuery::new("WEB", None);
        assert_eq!(ids(&resolve(&v, &q).expect("resolves")), ["a", "b"]);
        let passing = ServiceQuery {
            only_passing: true,
            ..q
        };
        assert_eq!(ids(&resolve(&v, &passing).expect("resolves")), ["a"]);
        let v2 = ServiceQuery {
            tag: Some("v2"),
            dc: Some("DC1"),
            ..q
        };
        assert_eq!(ids(&resolve(&v, &v2).expect("resolves")), ["b"]);
        let only_critical = ServiceQuery {
            tag: Some("v1"),
            only_passing: true,
            service: "web",
            ..q
        };
        assert_eq!(ids(&resolve(&v, &only_critical).expect("resolves")), ["a"]);
        let none = ServiceQuery {
            tag: Some("v3"),
            ..q
        };
        assert_eq!(resolve(&v, &none).err(), Some(ResolveError::NoSuchService));
        let other = ServiceQuery {
            dc: Some("dc9"),
            ..q
        };
        assert_eq!(
            resolve(&v, &other).err(),
            Some(ResolveError::UnknownDatacenter)
        );
        let mut s = DcState::default();
        s.register(inst("c", &[]), vec![check("c", Health::Critical)], 1);
        let v = View::new("dc1", s);
        assert_eq!(resolve(&v, &q).err(), Some(ResolveError::NoHealthyInstance));
    }

    #[test]
    fn a_named_remote_datacenter_reads_its_replica() {
        let mut remote = DcState::default();
        remote.register(inst("r1", &[]), vec![check("r1", Health::Passing)], 7);
        let v = view().with_remotes(imbl::OrdMap::unit(
            "dc2".into(),
            Arc::new(RemoteDc {
                name: "dc2".into(),
                state: remote,
                ..RemoteDc::default()
            }),
        ));
        let q = ServiceQuery::new("web", Some("DC2"));
        let r = resolve(&v, &q).expect("resolves in dc2");
        assert_eq!((r.dc, ids(&r)), ("dc2", vec!["r1".to_owned()]));
        assert_eq!(r.state.instance_count(), 1);
        let local = ServiceQuery { dc: None, ..q };
        assert_eq!(ids(&resolve(&v, &local).expect("local")), ["a", "b"]);
    }

    fn remote(name: &str, instances: &[(&str, Health)]) -> (Arc<str>, Arc<RemoteDc>) {
        let mut s = DcState::default();
        for (i, (id, h)) in instances.iter().enumerate() {
            s.register(inst(id, &[]), vec![check(id, *h)], i as u64 + 1);
        }
        (
            name.into(),
            Arc::new(RemoteDc {
                name: name.into(),
                state: s,
                ..RemoteDc::default()
            }),
        )
    }

    fn live(status: DcStatus, rtt_us: u32) -> DcLiveness {
        DcLiveness {
            status,
            rtt_us: Some(rtt_us),
            ..DcLiveness::default()
        }
    }

    /// dc1 (local) with `web` instances of the given health; dc2 (rtt 30 ms) and dc3 (rtt
    /// 10 ms) each with one passing instance.
    fn federation(local: &[(&str, Health)], failover: Failover) -> View {
        let mut s = DcState::default();
        for (i, (id, h)) in local.iter().enumerate() {
            s.register(inst(id, &[]), vec![check(id, *h)], i as u64 + 1);
        }
        View::new("dc1", s)
            .with_remotes(
                [
                    remote("dc2", &[("w2", Health::Passing)]),
                    remote("dc3", &[("w3", Health::Passing)]),
                ]
                .into_iter()
                .collect(),
            )
            .with_failover(Arc::new(failover))
    }

    fn liveness(dc2: DcStatus, dc3: DcStatus) -> imbl::OrdMap<Arc<str>, DcLiveness> {
        [
            (Arc::from("dc2"), live(dc2, 30_000)),
            (Arc::from("dc3"), live(dc3, 10_000)),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn plain_names_fail_over_to_the_nearest_available_dc() {
        let q = ServiceQuery::new("web", None);
        let f = Failover {
            liveness: liveness(DcStatus::Up, DcStatus::Up),
            ..Failover::default()
        };
        let v = federation(&[("a", Health::Passing)], f.clone());
        let r = resolve(&v, &q).expect("local");
        assert_eq!((r.dc, r.failovers), ("dc1", 0));

        let v = federation(&[("a", Health::Critical)], f.clone());
        let r = resolve(&v, &q).expect("fails over");
        assert_eq!(
            (r.dc, r.failovers, ids(&r)),
            ("dc3", 1, vec!["w3".to_owned()])
        );

        let down = Failover {
            liveness: liveness(DcStatus::Up, DcStatus::Down),
            ..f.clone()
        };
        let v = federation(&[("a", Health::Critical)], down);
        assert_eq!(resolve(&v, &q).expect("dc2").dc, "dc2", "dc3 is down");

        let ordered = FailoverPolicy {
            nearest_n: 0,
            datacenters: vec!["DC2".into(), "dc3".into()],
            address_mode: AddressMode::Gateway,
            ..FailoverPolicy::default()
        };
        let v = federation(&[], f.clone());
        let r = resolve(
            &v,
            &ServiceQuery {
                policy: Some(&ordered),
                ..q
            },
        )
        .expect("list");
        assert_eq!((r.dc, r.address_mode), ("dc2", AddressMode::Gateway));

        let off = FailoverPolicy {
            enabled: false,
            ..FailoverPolicy::default()
        };
        let v = federation(&[("a", Health::Critical)], f);
        assert_eq!(
            resolve(
                &v,
                &ServiceQuery {
                    policy: Some(&off),
                    ..q
                }
            )
            .err(),
            Some(ResolveError::NoHealthyInstance),
            "Consul's behaviour when turned off"
        );
        let off_q = ServiceQuery {
            policy: Some(&off),
            ..q
        };
        assert_eq!(explain(&v, &off_q), Why::FailoverOff);
        assert_eq!(explain(&v, &q), Why::NoneHealthyHere);
        assert_eq!(explain(&v, &ServiceQuery::new("db", None)), Why::NoneHere);
    }

    #[test]
    fn spill_held_and_drained() {
        let q = ServiceQuery::new("web", None);
        let spill = Arc::new(FailoverPolicy {
            spill_below: Some(0.5),
            ..FailoverPolicy::default()
        });
        let f = Failover {
            liveness: liveness(DcStatus::Up, DcStatus::Up),
            policy: spill,
            ..Failover::default()
        };
        let one_of_three = [
            ("a", Health::Passing),
            ("b", Health::Critical),
            ("c", Health::Critical),
        ];
        let v = federation(&one_of_three, f.clone());
        assert_eq!(resolve(&v, &q).expect("spills").dc, "dc3");
        assert_eq!(
            explain(&v, &q),
            Why::Spill {
                healthy: 1,
                matching: 3
            }
        );
        let two_of_three = [
            ("a", Health::Passing),
            ("b", Health::Passing),
            ("c", Health::Critical),
        ];
        let v = federation(&two_of_three, f.clone());
        assert_eq!(resolve(&v, &q).expect("stays").dc, "dc1");
        assert_eq!(explain(&v, &q), Why::Local);

        // Recovered locally but inside the stable period: the remote DC still answers...
        let mut held = f.clone();
        held.held.insert(("dc1".into(), "web".into()));
        let v = federation(&two_of_three, held.clone());
        assert_eq!(resolve(&v, &q).expect("held").dc, "dc3");
        assert_eq!(explain(&v, &q), Why::FailbackHold);
        // ...unless nothing else can.
        held.liveness = liveness(DcStatus::Down, DcStatus::Drained);
        let v = federation(&two_of_three, held);
        assert_eq!(resolve(&v, &q).expect("only dc1").dc, "dc1");

        // A drained local DC sends even local clients away; an explicit remote DC that is down
        // answers nothing; the local DC named explicitly still answers (tunnelled streams).
        let mut drained = f;
        drained
            .liveness
            .insert("dc1".into(), live(DcStatus::Drained, 0));
        drained
            .liveness
            .insert("dc2".into(), live(DcStatus::Down, 0));
        let v = federation(&two_of_three, drained);
        assert_eq!(resolve(&v, &q).expect("away").dc, "dc3");
        let why = explain(&v, &q);
        assert_eq!(
            (why.key(), why.describe().as_str()),
            ("dc-drained", "this datacenter is drained")
        );
        assert_eq!(
            resolve(&v, &ServiceQuery::new("web", Some("dc2"))).err(),
            Some(ResolveError::DatacenterUnavailable)
        );
        assert_eq!(
            resolve(&v, &ServiceQuery::new("web", Some("dc1")))
                .expect("own")
                .dc,
            "dc1"
        );
    }

    #[test]
    fn prepared_query_tags_all_match_and_negations_exclude() {
        let mut s = DcState::default();
        s.register(
            inst("a", &["v1", "canary"]),
            vec![check("a", Health::Passing)],
            1,
        );
        s.register(inst("b", &["V1"]), vec![check("b", Health::Passing)], 2);
        let v = View::new("dc1", s);
        let tags = ["v1".to_owned(), "!canary".to_owned()];
        let q = ServiceQuery {
            tags: &tags,
            ..ServiceQuery::new("web", None)
        };
        assert_eq!(ids(&resolve(&v, &q).expect("b")), ["b"]);
    }

    fn status() -> impl Strategy<Value = DcStatus> {
        prop_oneof![
            Just(DcStatus::Up),
            Just(DcStatus::Suspect),
            Just(DcStatus::Down),
            Just(DcStatus::Drained),
        ]
    }

    fn health() -> impl Strategy<Value = Health> {
        prop_oneof![
            Just(Health::Passing),
            Just(Health::Warning),
            Just(Health::Critical)
        ]
    }

    proptest! {
        /// Whatever the liveness, health, holds and policy, an answer never points at a DC that
        /// is `Down` or `Drained` (the local DC named explicitly aside), and a query that fails
        /// over only does so when the policy allows it.
        #[test]
        fn no_answer_points_at_a_down_or_drained_dc(
            statuses in proptest::collection::vec(status(), 3),
            healths in proptest::collection::vec(proptest::collection::vec(health(), 0..3), 3),
            rtts in proptest::collection::vec(0u32..100_000, 3),
            held in proptest::collection::vec(any::<bool>(), 3),
            enabled in any::<bool>(),
            nearest_n in 0usize..4,
            list in proptest::collection::vec(0usize..4, 0..3),
            spill in proptest::option::of(0.0f64..1.0),
            explicit in proptest::option::of(0usize..4),
        ) {
            let names = ["dc1", "dc2", "dc3", "dc9"];
            let mut states = Vec::new();
            for (d, hs) in healths.iter().enumerate() {
                let mut s = DcState::default();
                for (i, h) in hs.iter().enumerate() {
                    let id = format!("{}-{i}", names[d]);
                    s.register(inst(&id, &[]), vec![check(&id, *h)], i as u64 + 1);
                }
                states.push(s);
            }
            let mut f = Failover::default();
            for d in 0..3 {
                f.liveness.insert(names[d].into(), live(statuses[d], rtts[d]));
                if held[d] {
                    f.held.insert((names[d].into(), "web".into()));
                }
            }
            let policy = FailoverPolicy {
                enabled,
                nearest_n,
                datacenters: list.iter().map(|&i| Arc::from(names[i])).collect(),
                spill_below: spill,
                address_mode: AddressMode::Direct,
            };
            // dc1 never marks itself down; only drained.
            if f.liveness["dc1"].status == DcStatus::Down {
                f.liveness.insert("dc1".into(), live(DcStatus::Up, 0));
            }
            let v = View::new("dc1", states[0].clone())
                .with_remotes((1..3).map(|d| (Arc::from(names[d]), Arc::new(RemoteDc {
                    name: names[d].into(),
                    state: states[d].clone(),
                    ..RemoteDc::default()
                }))).collect())
                .with_failover(Arc::new(f.clone()));
            let q = ServiceQuery {
                dc: explicit.map(|i| names[i]),
                policy: Some(&policy),
                ..ServiceQuery::new("web", None)
            };
            if let Ok(r) = resolve(&v, &q) {
                prop_assert!(!r.instances.is_empty());
                let explicit_local = q.dc == Some("dc1");
                if enabled || q.dc.is_some() {
                    prop_assert!(explicit_local || !f.unavailable(r.dc), "answered from {} which is {:?}", r.dc, f.liveness(r.dc).status);
                }
                if !enabled || q.dc.is_some() {
                    prop_assert_eq!(r.failovers, 0);
                }
            }
        }
    }
}
