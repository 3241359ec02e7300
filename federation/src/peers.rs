//! The datacenters this node follows: those configured, those joined by address, and those
//! learned from other nodes (a subscriber's own addresses, an origin's list of datacenters).
//! Learning a new datacenter starts a follower for it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use meridian_protos::federation as pb;

/// A remote datacenter and the addresses of its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub dc: String,
    /// `host:port` of its nodes' WAN ports; host names are resolved at every connect.
    pub addresses: Vec<String>,
}

/// Most addresses remembered per datacenter.
const MAX_ADDRESSES: usize = 16;
/// Most datacenters learned from the network (configured ones are not counted).
const MAX_LEARNED: usize = 256;

/// The known datacenters.
pub struct Registry {
    own_dc: String,
    own_addresses: Vec<String>,
    known: Mutex<BTreeMap<String, Peer>>,
    spawn: Box<dyn Fn(Peer) + Send + Sync>,
}

impl Registry {
    /// A registry for datacenter `own_dc` reachable at `own_addresses`; `spawn` starts a
    /// follower for each datacenter learned.
    pub fn new(
        own_dc: &str,
        own_addresses: Vec<String>,
        spawn: Box<dyn Fn(Peer) + Send + Sync>,
    ) -> Registry {
        Registry {
            own_dc: own_dc.to_ascii_lowercase(),
            own_addresses,
            known: Mutex::new(BTreeMap::new()),
            spawn,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Peer>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a configured datacenter, whose follower the caller starts.
    pub fn learn_configured(&self, peer: &Peer) {
        self.lock()
            .insert(peer.dc.to_ascii_lowercase(), peer.clone());
    }

    /// Adds what is known of datacenter `dc`: a follower starts if it is new.
    pub fn learn(&self, dc: &str, addresses: &[String]) {
        let key = dc.to_ascii_lowercase();
        if key == self.own_dc
            || meridian_topology::names::validate_label("datacenter name", dc).is_err()
        {
            return;
        }
        let addresses: Vec<String> = addresses
            .iter()
            .filter(|a| !a.is_empty() && a.len() <= 255)
            .take(MAX_ADDRESSES)
            .cloned()
            .collect();
        let new = {
            let mut known = self.lock();
            let full = known.len() >= MAX_LEARNED;
            match known.get_mut(&key) {
                Some(p) => {
                    for a in addresses {
                        if p.addresses.len() < MAX_ADDRESSES && !p.addresses.contains(&a) {
                            p.addresses.push(a);
                        }
                    }
                    None
                }
                None if addresses.is_empty() || full => None,
                None => {
                    let peer = Peer {
                        dc: dc.to_owned(),
                        addresses,
                    };
                    known.insert(key, peer.clone());
                    Some(peer)
                }
            }
        };
        if let Some(peer) = new {
            tracing::info!(dc = %peer.dc, addresses = ?peer.addresses, "following a new datacenter");
            (self.spawn)(peer);
        }
    }

    /// The addresses of datacenter `dc` known now.
    pub fn addresses(&self, dc: &str) -> Vec<String> {
        self.lock()
            .get(&dc.to_ascii_lowercase())
            .map(|p| p.addresses.clone())
            .unwrap_or_default()
    }

    /// This node's addresses.
    pub fn own_addresses(&self) -> &[String] {
        &self.own_addresses
    }

    /// Every datacenter known, this one first, for the wire.
    pub fn to_proto(&self) -> Vec<pb::Datacenter> {
        let mut out = vec![pb::Datacenter {
            name: self.own_dc.clone(),
            addresses: self.own_addresses.clone(),
        }];
        out.extend(self.lock().values().map(|p| pb::Datacenter {
            name: p.dc.clone(),
            addresses: p.addresses.clone(),
        }));
        out
    }

    /// Learns every datacenter in a list received from a peer.
    pub fn learn_all(&self, list: &[pb::Datacenter]) {
        for d in list.iter().take(MAX_LEARNED) {
            self.learn(&d.name, &d.addresses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn learning_starts_one_follower_per_new_datacenter() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let s = started.clone();
        let r = Registry::new(
            "dc1",
            vec!["10.0.0.1:8302".into()],
            Box::new(move |p| s.lock().expect("lock").push(p.dc)),
        );
        r.learn("dc2", &["10.0.0.2:8302".into()]);
        r.learn("DC2", &["10.0.0.3:8302".into()]);
        r.learn("dc1", &["10.0.0.9:8302".into()]);
        r.learn("dc3", &[]);
        r.learn("not a label", &["x:1".into()]);
        assert_eq!(*started.lock().expect("lock"), ["dc2"]);
        assert_eq!(r.addresses("dc2"), ["10.0.0.2:8302", "10.0.0.3:8302"]);
        let list = r.to_proto();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "dc1");
    }
}
