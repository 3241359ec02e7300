//! `resolve`: where a name goes. The one function DNS answers and gateway routes both come from,
//! so the two can never disagree.

use crate::dc::DcState;
use crate::model::{Health, Instance};
use crate::view::View;

/// A request for the instances of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceQuery<'a> {
    /// Service name (case-insensitive).
    pub service: &'a str,
    /// Only instances carrying this tag (case-insensitive).
    pub tag: Option<&'a str>,
    /// An explicit datacenter (local or a federated replica); `None` resolves by policy (today:
    /// the local DC).
    pub dc: Option<&'a str>,
    /// Leave out instances whose health is `warning` (critical ones are always left out).
    pub only_passing: bool,
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
}

/// Why a query resolved to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The query names a datacenter this view does not know.
    #[error("unknown datacenter")]
    UnknownDatacenter,
    /// No instance of the service is registered (with that tag).
    #[error("no such service")]
    NoSuchService,
    /// Instances exist, but none is healthy enough.
    #[error("no healthy instance")]
    NoHealthyInstance,
}

/// Resolves a service query against a view.
pub fn resolve<'v>(view: &'v View, q: &ServiceQuery<'_>) -> Result<Resolution<'v>, ResolveError> {
    let Some((dc, state)) = view.dc_state(q.dc) else {
        return Err(ResolveError::UnknownDatacenter);
    };
    let mut any = false;
    let mut instances = Vec::new();
    for inst in state.instances_of(q.service) {
        if let Some(tag) = q.tag
            && !inst.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
        {
            continue;
        }
        any = true;
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
    if !any {
        Err(ResolveError::NoSuchService)
    } else if instances.is_empty() {
        Err(ResolveError::NoHealthyInstance)
    } else {
        Ok(Resolution {
            dc,
            state,
            instances,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Check, Weights};
    use crate::view::RemoteDc;
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
        let q = ServiceQuery {
            service: "WEB",
            tag: None,
            dc: None,
            only_passing: false,
        };
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
        let q = ServiceQuery {
            service: "web",
            tag: None,
            dc: Some("DC2"),
            only_passing: false,
        };
        let r = resolve(&v, &q).expect("resolves in dc2");
        assert_eq!((r.dc, ids(&r)), ("dc2", vec!["r1".to_owned()]));
        assert_eq!(r.state.instance_count(), 1);
        let local = ServiceQuery { dc: None, ..q };
        assert_eq!(ids(&resolve(&v, &local).expect("local")), ["a", "b"]);
    }
}
