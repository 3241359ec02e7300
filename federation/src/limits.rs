//! The caps federation puts on what one peer can make this node hold: subscribe streams per
//! peer identity (as an origin), the size of a replica and of a staged snapshot (as a
//! subscriber), and how long a learned address may go without answering. Every cap has a safe
//! default and is set from `[federation]` by the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_identity::Identity;

/// The federation limits of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Subscribe streams served at once to one peer certificate (`<node>.<role>.<dc>`). An
    /// honest node holds one per origin DC it follows; the slack covers reconnects racing the
    /// end of the old stream.
    pub max_streams_per_identity: usize,
    /// Entries one remote DC's replica (or a snapshot being staged for it) may hold.
    pub max_replica_entries: usize,
    /// Bytes a snapshot being staged may hold before it is written at `Synced`.
    pub max_staging_bytes: usize,
    /// A learned address that never answered (no completed sync at it) is forgotten after this
    /// long; a learned datacenter left without addresses is forgotten with it.
    pub unproven_ttl: Duration,
    /// A learned address that answered once but not since is forgotten after this long, also
    /// across restarts (its last answer is persisted).
    pub learned_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams_per_identity: 16,
            max_replica_entries: 1_000_000,
            max_staging_bytes: 256 << 20,
            unproven_ttl: Duration::from_secs(10 * 60),
            learned_ttl: Duration::from_secs(72 * 60 * 60),
        }
    }
}

/// Counts the streams open per peer identity and refuses one over the cap.
#[derive(Debug)]
pub struct StreamCap {
    max: usize,
    open: Arc<Mutex<HashMap<Identity, Open>>>,
}

#[derive(Debug, Default)]
struct Open {
    streams: usize,
    /// A refusal was logged since the identity was last under the cap (logged once, counted
    /// every time).
    warned: bool,
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The cap.
    pub max: usize,
    /// Whether this is the first refusal since the identity was under the cap (log it).
    pub first: bool,
}

/// One open stream of an identity: the count goes down when it is dropped.
#[derive(Debug)]
pub struct StreamPermit {
    identity: Identity,
    open: Arc<Mutex<HashMap<Identity, Open>>>,
}

impl StreamCap {
    /// At most `max` streams per identity (at least one).
    pub fn new(max: usize) -> StreamCap {
        StreamCap {
            max: max.max(1),
            open: Arc::default(),
        }
    }

    /// A permit for one more stream of `identity`, or why not.
    pub fn acquire(&self, identity: &Identity) -> Result<StreamPermit, OverCap> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let o = open.entry(identity.clone()).or_default();
        if o.streams >= self.max {
            let first = !o.warned;
            o.warned = true;
            return Err(OverCap {
                max: self.max,
                first,
            });
        }
        o.streams += 1;
        Ok(StreamPermit {
            identity: identity.clone(),
            open: self.open.clone(),
        })
    }

    /// Streams of `identity` open now.
    pub fn open(&self, identity: &Identity) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(identity).map_or(0, |o| o.streams)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = open.get_mut(&self.identity) {
            o.streams = o.streams.saturating_sub(1);
            o.warned = false;
            // Identities come and go (certificate rotation): keep only those with streams.
            if o.streams == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_identity::Role;

    fn id(dc: &str, node: &str) -> Identity {
        Identity {
            dc: dc.into(),
            node: node.into(),
            role: Role::Server,
        }
    }

    #[test]
    fn streams_are_capped_per_identity_and_freed_when_dropped() {
        let cap = StreamCap::new(2);
        let a = id("dc2", "n1");
        let p1 = cap.acquire(&a).expect("first");
        let p2 = cap.acquire(&a).expect("second");
        assert_eq!(
            cap.acquire(&a).map(|_| ()),
            Err(OverCap {
                max: 2,
                first: true
            })
        );
        assert_eq!(
            cap.acquire(&a).map(|_| ()),
            Err(OverCap {
                max: 2,
                first: false
            }),
            "logged once"
        );
        // Another node of the same DC, and the same node name in another role, have their own.
        let _b = cap.acquire(&id("dc2", "n2")).expect("another identity");
        let gw = Identity {
            role: Role::Gateway,
            ..a.clone()
        };
        let _g = cap.acquire(&gw).expect("another role");
        drop(p1);
        assert_eq!(cap.open(&a), 1);
        let _p3 = cap.acquire(&a).expect("a freed slot is reused");
        drop(p2);
        drop(_p3);
        assert_eq!(cap.open(&a), 0);
        assert!(cap.open.lock().expect("lock").get(&a).is_none());
    }
}
