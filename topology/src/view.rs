//! The immutable snapshot of the world that readers consult: the local datacenter's catalog and
//! the federated replicas of the remote ones.

use std::sync::Arc;

use imbl::OrdMap;

use crate::dc::DcState;
use crate::failover::Failover;

/// A remote datacenter as this node knows it: a read-only replica fed by federation.
#[derive(Clone, Debug, Default)]
pub struct RemoteDc {
    /// The datacenter's name as configured.
    pub name: Arc<str>,
    /// The replica of its exported catalog.
    pub state: DcState,
    /// The origin's Raft index the replica is at (0 before the first sync).
    pub index: u64,
    /// When the origin last confirmed the replica (update or heartbeat), in ms since the Unix
    /// epoch; 0 if never.
    pub confirmed_unix_ms: u64,
    /// Whether a federation stream to the datacenter is up and synced right now.
    pub connected: bool,
    /// Whether the replica was ever complete (a full sync finished, now or in a previous run).
    pub synced: bool,
    /// The replica's content digest, equal to the origin's export digest when in sync.
    pub digest: u64,
}

/// Everything a reader needs to answer a query, frozen at one moment. Cheap to clone.
#[derive(Clone, Debug)]
pub struct View {
    datacenter: Arc<str>,
    local: DcState,
    /// Remote datacenters by lowercased name.
    remotes: OrdMap<Arc<str>, Arc<RemoteDc>>,
    /// Liveness, failback holds and the default failover policy.
    failover: Arc<Failover>,
}

impl View {
    /// A view of the local datacenter `datacenter` with catalog `local`.
    pub fn new(datacenter: impl Into<Arc<str>>, local: DcState) -> Self {
        View {
            datacenter: datacenter.into(),
            local,
            remotes: OrdMap::new(),
            failover: Arc::default(),
        }
    }

    /// This view with the remote datacenters `remotes` (keyed by lowercased name).
    pub fn with_remotes(mut self, remotes: OrdMap<Arc<str>, Arc<RemoteDc>>) -> Self {
        self.remotes = remotes;
        self
    }

    /// This view with the failover state `failover`.
    pub fn with_failover(mut self, failover: Arc<Failover>) -> Self {
        self.failover = failover;
        self
    }

    /// The failover state: liveness, holds and the default policy.
    pub fn failover(&self) -> &Failover {
        &self.failover
    }

    /// The local datacenter's name.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// The local datacenter's catalog.
    pub fn local(&self) -> &DcState {
        &self.local
    }

    /// The remote datacenters, by lowercased name.
    pub fn remotes(&self) -> impl Iterator<Item = &RemoteDc> {
        self.remotes.values().map(|r| &**r)
    }

    /// Every datacenter's catalog this view holds: the local one first, then the remote replicas
    /// by name.
    pub fn states(&self) -> impl Iterator<Item = &DcState> {
        std::iter::once(&self.local).chain(self.remotes.values().map(|r| &r.state))
    }

    /// A remote datacenter by name (ignoring case).
    pub fn remote(&self, dc: &str) -> Option<&RemoteDc> {
        if dc.bytes().any(|b| b.is_ascii_uppercase()) {
            self.remotes
                .get(dc.to_ascii_lowercase().as_str())
                .map(|r| &**r)
        } else {
            self.remotes.get(dc).map(|r| &**r)
        }
    }

    /// The catalog a query for `dc` reads, with the datacenter's name: the local one for `None`
    /// or the local name, a remote replica otherwise, `None` for an unknown datacenter.
    pub fn dc_state(&self, dc: Option<&str>) -> Option<(&str, &DcState)> {
        match dc {
            None => Some((&self.datacenter, &self.local)),
            Some(d) if d.eq_ignore_ascii_case(&self.datacenter) => {
                Some((&self.datacenter, &self.local))
            }
            Some(d) => self.remote(d).map(|r| (&*r.name, &r.state)),
        }
    }

    /// The view of a node without a catalog (a gateway-only node): the replica of its own
    /// datacenter `dc` becomes the local catalog, the other replicas stay remote.
    pub fn followed(&self, dc: &str) -> View {
        let key: Arc<str> = dc.to_ascii_lowercase().into();
        let local = self
            .remotes
            .get(&key)
            .map(|r| r.state.clone())
            .unwrap_or_default();
        View {
            datacenter: self.datacenter.clone(),
            local,
            remotes: self.remotes.without(&key),
            failover: self.failover.clone(),
        }
    }

    /// The datacenters this view knows, local first, then remote ones by name.
    pub fn datacenters(&self) -> Vec<&str> {
        let mut all = Vec::with_capacity(1 + self.remotes.len());
        all.push(&*self.datacenter);
        all.extend(self.remotes.values().map(|r| &*r.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_state_finds_local_and_remote_ignoring_case() {
        let remote = RemoteDc {
            name: "DC2".into(),
            ..RemoteDc::default()
        };
        let view = View::new("dc1", DcState::default())
            .with_remotes(OrdMap::unit("dc2".into(), Arc::new(remote)));
        assert_eq!(view.dc_state(None).map(|(n, _)| n), Some("dc1"));
        assert_eq!(view.dc_state(Some("DC1")).map(|(n, _)| n), Some("dc1"));
        assert_eq!(view.dc_state(Some("dc2")).map(|(n, _)| n), Some("DC2"));
        assert_eq!(view.dc_state(Some("Dc2")).map(|(n, _)| n), Some("DC2"));
        assert!(view.dc_state(Some("dc3")).is_none());
        assert_eq!(view.datacenters(), ["dc1", "DC2"]);
        let followed = view.followed("dc2");
        assert_eq!(
            followed.datacenters(),
            ["dc1"],
            "its own replica became local"
        );
    }
}
