//! The datacenters this node follows: those configured, those joined by address, and those
//! learned from other nodes (a subscriber's own addresses, an origin's list of datacenters).
//! Learning a new datacenter starts a follower for it.
//!
//! Trust: an address of datacenter X is only as good as who told it.
//! - [`Source::Configured`]: the operator (`[[federation.peers]]`, `join`). Never expires.
//! - [`Source::Own`]: a server certificate holder of X itself (a subscriber from X, or an origin
//!   of X speaking of X), or an earlier run that completed a sync there.
//! - [`Source::Relayed`]: an origin of another datacenter. Relays are how a node joined to one
//!   datacenter finds the whole federation, so they are not refused outright; but a relayed
//!   address is only a candidate until X's own server answers a sync at it (the TLS handshake
//!   verifies `server.X.meridian`). Until then it is never persisted, never relayed onwards,
//!   never displaces a better address, is capped per datacenter, and a datacenter known only by
//!   relay counts against a small cap. One bad origin therefore cannot make the federation dial
//!   phantom datacenters beyond that cap, nor crowd out a real datacenter's addresses, nor do
//!   either across a restart.
//!
//! Expiry: a learned address that never answered is forgotten after `unproven_ttl`, one that
//! answered once but not since after `learned_ttl` (its last answer is persisted, so this holds
//! across restarts). A relayed address that expired is not taken again from a relay, and an
//! origin whose relayed candidates expired unanswered [`MAX_RELAY_STRIKES`] times is no longer
//! believed as a relay (its word on its own datacenter still counts). A learned
//! datacenter left without addresses is forgotten: its follower stops and its replica is
//! dropped. Configured entries never expire.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use meridian_protos::federation as pb;

use crate::counters::FederationCounters;
use crate::limits::Limits;

/// A remote datacenter and the addresses of its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub dc: String,
    /// `host:port` of its nodes' WAN ports; host names are resolved at every connect.
    pub addresses: Vec<String>,
}

/// Most addresses remembered per datacenter (configured ones are not counted).
pub const MAX_ADDRESSES: usize = 16;
/// Most relayed (not yet answered) addresses per datacenter.
pub const MAX_RELAYED_ADDRESSES: usize = 4;
/// Most datacenters learned from the network (configured ones are not counted).
pub const MAX_LEARNED: usize = 256;
/// Most datacenters known only from relays (no address vouched for by the datacenter itself).
pub const MAX_RELAYED_DATACENTERS: usize = 16;
/// Relayed candidates of one origin datacenter that may expire unanswered before its relays are
/// no longer believed (for the rest of the run): past this, its list is a source of phantoms.
pub const MAX_RELAY_STRIKES: usize = 16;
/// Most remembered refusals and expired relays (then the memory starts over).
const MAX_REMEMBERED: usize = 4096;

/// Who told this node an address (ordered by trust).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// An origin of another datacenter: a candidate until the datacenter answers there.
    Relayed,
    /// The datacenter's own server certificate holder, or a sync completed there.
    Own,
    /// This node's configuration.
    Configured,
}

#[derive(Clone, Debug)]
struct Address {
    addr: String,
    source: Source,
    /// When it was learned (ms since the Unix epoch).
    learned_ms: u64,
    /// Last sync completed at it (ms since the Unix epoch); 0: never.
    answered_ms: u64,
    /// Who told it (a datacenter, `disk`, `join`...), for relays' strikes and logs.
    told_by: String,
}

#[derive(Debug)]
struct Known {
    dc: String,
    configured: bool,
    addresses: Vec<Address>,
}

impl Known {
    /// Best first: configured, then the datacenter's own (answered first), then relays.
    fn sort(&mut self) {
        self.addresses.sort_by_key(|x| {
            (
                std::cmp::Reverse(x.source),
                std::cmp::Reverse(x.answered_ms),
            )
        });
    }

    fn relayed_only(&self) -> bool {
        !self.configured && self.addresses.iter().all(|a| a.source == Source::Relayed)
    }
}

#[derive(Default)]
struct State {
    known: BTreeMap<String, Known>,
    /// Datacenters with a follower running.
    following: BTreeSet<String>,
    /// Relayed `(dc, address)` pairs that expired without answering.
    expired: HashSet<(String, String)>,
    /// `(dc, address)` pairs refused once (counted and logged once, not at every heartbeat).
    refused: HashSet<(String, String)>,
    /// Per relaying datacenter, its relayed candidates that expired unanswered.
    strikes: BTreeMap<String, usize>,
}

impl State {
    /// Counts and logs a refusal the first time it is seen.
    fn refuse(
        &mut self,
        counters: &FederationCounters,
        reason: &'static str,
        dc: &str,
        addr: &str,
        from: &str,
    ) {
        if self.refused.len() >= MAX_REMEMBERED {
            self.refused.clear();
        }
        if self.refused.insert((dc.to_owned(), addr.to_owned())) {
            counters.refuse(reason);
            tracing::warn!(%dc, %addr, told_by = %from, reason, "refused a learned datacenter address");
        }
    }
}

/// The known datacenters.
pub struct Registry {
    own_dc: String,
    own_addresses: Vec<String>,
    limits: Limits,
    counters: Arc<FederationCounters>,
    state: Mutex<State>,
    spawn: Box<dyn Fn(Peer) + Send + Sync>,
}

impl Registry {
    /// A registry for datacenter `own_dc` reachable at `own_addresses`; `spawn` starts a
    /// follower for each datacenter learned.
    pub fn new(
        own_dc: &str,
        own_addresses: Vec<String>,
        limits: Limits,
        counters: Arc<FederationCounters>,
        spawn: Box<dyn Fn(Peer) + Send + Sync>,
    ) -> Registry {
        Registry {
            own_dc: own_dc.to_ascii_lowercase(),
            own_addresses,
            limits,
            counters,
            state: Mutex::new(State::default()),
            spawn,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a configured datacenter, whose follower the caller starts.
    pub fn learn_configured(&self, peer: &Peer) {
        let key = peer.dc.to_ascii_lowercase();
        let mut s = self.lock();
        s.following.insert(key.clone());
        let k = s.known.entry(key).or_insert_with(|| Known {
            dc: peer.dc.clone(),
            configured: true,
            addresses: Vec::new(),
        });
        k.configured = true;
        for a in &peer.addresses {
            k.addresses.retain(|x| &x.addr != a);
            k.addresses.push(Address {
                addr: a.clone(),
                source: Source::Configured,
                learned_ms: 0,
                answered_ms: 0,
                told_by: "configuration".to_owned(),
            });
        }
        // Configured first, whatever a relay told before the configuration was read.
        k.sort();
    }

    /// Adds addresses of datacenter `dc` that `source` told (`from` names it in logs) at
    /// wall-clock time `now_ms`: a follower starts if the datacenter is new.
    pub fn learn(&self, source: Source, from: &str, dc: &str, addresses: &[String], now_ms: u64) {
        self.learn_with(source, from, dc, addresses, &[], now_ms);
    }

    /// Re-learns a datacenter persisted by an earlier run, with each address's last answer
    /// (0: unknown, as written by older versions, which then has to answer anew).
    pub fn restore(&self, dc: &str, addresses: &[(String, u64)], now_ms: u64) {
        let (addrs, answered): (Vec<String>, Vec<u64>) = addresses.iter().cloned().unzip();
        self.learn_with(Source::Own, "disk", dc, &addrs, &answered, now_ms);
    }

    fn learn_with(
        &self,
        source: Source,
        from: &str,
        dc: &str,
        addresses: &[String],
        answered: &[u64],
        now_ms: u64,
    ) {
        let key = dc.to_ascii_lowercase();
        if key == self.own_dc
            || meridian_topology::names::validate_label("datacenter name", dc).is_err()
        {
            return;
        }
        let mut guard = self.lock();
        let s = &mut *guard;
        let mut fresh = Vec::new();
        for (i, a) in addresses.iter().enumerate().take(MAX_ADDRESSES) {
            if a.is_empty() || a.len() > 255 {
                continue;
            }
            // A relay may not bring back what expired unanswered; the datacenter itself may.
            if source == Source::Relayed && s.expired.contains(&(key.clone(), a.clone())) {
                s.refuse(&self.counters, "relayed_expired", &key, a, from);
                continue;
            }
            if source == Source::Relayed
                && s.strikes.get(from).copied().unwrap_or(0) >= MAX_RELAY_STRIKES
            {
                s.refuse(&self.counters, "relayed_distrusted", &key, a, from);
                continue;
            }
            if source > Source::Relayed {
                s.expired.remove(&(key.clone(), a.clone()));
            }
            fresh.push(Address {
                addr: a.clone(),
                source,
                learned_ms: now_ms,
                answered_ms: answered.get(i).copied().unwrap_or(0),
                told_by: from.to_owned(),
            });
        }
        if fresh.is_empty() {
            return;
        }
        if !s.known.contains_key(&key) {
            let learned = s.known.values().filter(|k| !k.configured).count();
            let relayed = s.known.values().filter(|k| k.relayed_only()).count();
            let reason = if learned >= MAX_LEARNED {
                Some("learned_full")
            } else if source == Source::Relayed && relayed >= MAX_RELAYED_DATACENTERS {
                Some("relayed_datacenter")
            } else {
                None
            };
            if let Some(reason) = reason {
                s.refuse(&self.counters, reason, &key, "", from);
                return;
            }
            s.known.insert(
                key.clone(),
                Known {
                    dc: dc.to_owned(),
                    configured: false,
                    addresses: Vec::new(),
                },
            );
        }
        let mut refusals = Vec::new();
        if let Some(k) = s.known.get_mut(&key) {
            for a in fresh {
                if let Some(x) = k.addresses.iter_mut().find(|x| x.addr == a.addr) {
                    // Told again: only ever upgraded, and told again is not answered (a
                    // repeated lie must not keep an address alive).
                    if a.source > x.source {
                        x.source = a.source;
                    }
                    x.answered_ms = x.answered_ms.max(a.answered_ms);
                    continue;
                }
                let learned = |k: &Known| {
                    k.addresses
                        .iter()
                        .filter(|x| x.source != Source::Configured)
                        .count()
                };
                let relayed = k
                    .addresses
                    .iter()
                    .filter(|x| x.source == Source::Relayed)
                    .count();
                match a.source {
                    Source::Configured => k.addresses.push(a),
                    Source::Relayed
                        if relayed >= MAX_RELAYED_ADDRESSES || learned(k) >= MAX_ADDRESSES =>
                    {
                        refusals.push(("relayed_address", a.addr));
                    }
                    Source::Relayed => k.addresses.push(a),
                    Source::Own => {
                        // The datacenter's own word displaces a relay's.
                        if learned(k) >= MAX_ADDRESSES
                            && let Some(i) = k
                                .addresses
                                .iter()
                                .rposition(|x| x.source == Source::Relayed)
                        {
                            k.addresses.remove(i);
                        }
                        if learned(k) >= MAX_ADDRESSES {
                            refusals.push(("addresses_full", a.addr));
                        } else {
                            k.addresses.push(a);
                        }
                    }
                }
            }
            k.sort();
        }
        for (reason, addr) in refusals {
            s.refuse(&self.counters, reason, &key, &addr, from);
        }
        let spawn = match s.known.get(&key) {
            Some(k) if !k.addresses.is_empty() && s.following.insert(key.clone()) => Some(Peer {
                dc: k.dc.clone(),
                addresses: k.addresses.iter().map(|a| a.addr.clone()).collect(),
            }),
            _ => None,
        };
        drop(guard);
        if let Some(peer) = spawn {
            tracing::info!(dc = %peer.dc, addresses = ?peer.addresses, told_by = %from, "following a new datacenter");
            (self.spawn)(peer);
        }
    }

    /// A sync completed with datacenter `dc` at `addr` at `now_ms`: the address is proven (the
    /// TLS handshake verified `dc`'s server certificate there).
    pub fn answered(&self, dc: &str, addr: &str, now_ms: u64) {
        let mut s = self.lock();
        if let Some(k) = s.known.get_mut(&dc.to_ascii_lowercase())
            && let Some(x) = k.addresses.iter_mut().find(|x| x.addr == addr)
        {
            if x.source == Source::Relayed {
                x.source = Source::Own;
            }
            x.answered_ms = x.answered_ms.max(now_ms);
            k.sort();
        }
    }

    /// Forgets learned addresses that went unanswered too long (see the module's docs) as of
    /// `now_ms`, and learned datacenters left without addresses; returns those datacenters.
    pub fn expire(&self, now_ms: u64) -> Vec<String> {
        let unproven = u64::try_from(self.limits.unproven_ttl.as_millis()).unwrap_or(u64::MAX);
        let learned = u64::try_from(self.limits.learned_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut s = self.lock();
        let mut gone = Vec::new();
        let mut expired_relays = Vec::new();
        let mut dropped = 0u64;
        for (key, k) in s.known.iter_mut() {
            k.addresses.retain(|a| {
                let keep = match (a.source, a.answered_ms) {
                    (Source::Configured, _) => true,
                    (_, 0) => now_ms.saturating_sub(a.learned_ms) <= unproven,
                    (_, t) => now_ms.saturating_sub(t) <= learned,
                };
                if !keep {
                    dropped += 1;
                    tracing::info!(dc = %k.dc, addr = %a.addr, answered_ms = a.answered_ms, "forgetting a learned address that does not answer");
                    if a.source == Source::Relayed {
                        expired_relays.push((key.clone(), a.addr.clone(), a.told_by.clone()));
                    }
                }
                keep
            });
            if !k.configured && k.addresses.is_empty() {
                gone.push(key.clone());
            }
        }
        if s.expired.len() + expired_relays.len() > MAX_REMEMBERED {
            s.expired.clear();
        }
        for (dc, addr, by) in expired_relays {
            s.expired.insert((dc, addr));
            let strikes = s.strikes.entry(by.clone()).or_default();
            *strikes += 1;
            if *strikes == MAX_RELAY_STRIKES {
                tracing::warn!(relayer = %by, strikes = MAX_RELAY_STRIKES, "relayed addresses from this datacenter keep going unanswered; its relays are no longer believed");
            }
        }
        for key in &gone {
            s.known.remove(key);
            tracing::info!(dc = %key, "forgetting a learned datacenter that does not answer");
        }
        self.counters.expired(dropped, gone.len() as u64);
        gone
    }

    /// Whether the follower of `dc` should go on; when not, it is marked stopped in the same
    /// step, so a datacenter learned again later gets a new follower.
    pub fn keep_following(&self, dc: &str) -> bool {
        let key = dc.to_ascii_lowercase();
        let mut s = self.lock();
        if s.known.contains_key(&key) || key == self.own_dc {
            return true;
        }
        s.following.remove(&key);
        false
    }

    /// The addresses of datacenter `dc` known now, best first.
    pub fn addresses(&self, dc: &str) -> Vec<String> {
        self.lock()
            .known
            .get(&dc.to_ascii_lowercase())
            .map(|k| k.addresses.iter().map(|a| a.addr.clone()).collect())
            .unwrap_or_default()
    }

    /// The addresses of datacenter `dc` worth persisting (those that answered a sync) and their
    /// last answer. Configured and joined ones too: a joined address names its DC only once
    /// discovery reaches it, so after a restart with that DC unreachable only the disk says
    /// which DC it was, and its replica is still served from disk (marked stale).
    pub fn proven(&self, dc: &str) -> Vec<(String, u64)> {
        self.lock()
            .known
            .get(&dc.to_ascii_lowercase())
            .map(|k| {
                k.addresses
                    .iter()
                    .filter(|a| a.answered_ms > 0)
                    .map(|a| (a.addr.clone(), a.answered_ms))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every datacenter known and its addresses.
    pub fn datacenters(&self) -> Vec<Peer> {
        self.lock()
            .known
            .values()
            .map(|k| Peer {
                dc: k.dc.clone(),
                addresses: k.addresses.iter().map(|a| a.addr.clone()).collect(),
            })
            .collect()
    }

    /// This node's addresses.
    pub fn own_addresses(&self) -> &[String] {
        &self.own_addresses
    }

    /// Every datacenter known, this one first, for the wire. Relayed addresses that never
    /// answered are not passed on: a bad origin's word travels one hop at most.
    pub fn to_proto(&self) -> Vec<pb::Datacenter> {
        let mut out = vec![pb::Datacenter {
            name: self.own_dc.clone(),
            addresses: self.own_addresses.clone(),
        }];
        out.extend(self.lock().known.values().filter_map(|k| {
            let addresses: Vec<String> = k
                .addresses
                .iter()
                .filter(|a| a.source != Source::Relayed)
                .map(|a| a.addr.clone())
                .collect();
            (!addresses.is_empty()).then(|| pb::Datacenter {
                name: k.dc.clone(),
                addresses,
            })
        }));
        out
    }

    /// Learns the list of datacenters an origin of `origin_dc` sent at `now_ms`: its entry for
    /// `origin_dc` is that datacenter's own word, the others are relays.
    pub fn learn_all(&self, origin_dc: &str, list: &[pb::Datacenter], now_ms: u64) {
        for d in list.iter().take(MAX_LEARNED) {
            let source = if d.name.eq_ignore_ascii_case(origin_dc) {
                Source::Own
            } else {
                Source::Relayed
            };
            self.learn(source, origin_dc, &d.name, &d.addresses, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn registry(started: &Arc<Mutex<Vec<String>>>) -> (Registry, Arc<FederationCounters>) {
        let s = started.clone();
        let counters = Arc::new(FederationCounters::default());
        let limits = Limits {
            unproven_ttl: Duration::from_secs(60),
            learned_ttl: Duration::from_secs(3600),
            ..Limits::default()
        };
        let r = Registry::new(
            "dc1",
            vec!["10.0.0.1:8302".into()],
            limits,
            counters.clone(),
            Box::new(move |p| s.lock().expect("lock").push(p.dc)),
        );
        (r, counters)
    }

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn learning_starts_one_follower_per_new_datacenter() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let (r, _) = registry(&started);
        r.learn(Source::Own, "dc2", "dc2", &addrs(&["10.0.0.2:8302"]), 1);
        r.learn(Source::Own, "dc2", "DC2", &addrs(&["10.0.0.3:8302"]), 1);
        r.learn(Source::Own, "x", "dc1", &addrs(&["10.0.0.9:8302"]), 1);
        r.learn(Source::Own, "dc3", "dc3", &[], 1);
        r.learn(Source::Own, "x", "not a label", &addrs(&["x:1"]), 1);
        assert_eq!(*started.lock().expect("lock"), ["dc2"]);
        assert_eq!(r.addresses("dc2"), ["10.0.0.2:8302", "10.0.0.3:8302"]);
        let list = r.to_proto();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "dc1");
    }

    #[test]
    fn a_relay_cannot_crowd_out_a_datacenters_own_addresses_nor_be_passed_on() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let (r, counters) = registry(&started);
        r.learn_configured(&Peer {
            dc: "dc2".into(),
            addresses: addrs(&["dc2-a:8302"]),
        });
        // dc3's origin claims twenty addresses for dc2.
        let lies: Vec<String> = (0..20).map(|i| format!("evil{i}:8302")).collect();
        r.learn_all(
            "dc3",
            &[pb::Datacenter {
                name: "dc2".into(),
                addresses: lies.clone(),
            }],
            1,
        );
        let known = r.addresses("dc2");
        assert_eq!(
            known[0], "dc2-a:8302",
            "the configured address is dialled first"
        );
        assert_eq!(known.len(), 1 + MAX_RELAYED_ADDRESSES);
        assert_eq!(
            counters.refused("relayed_address"),
            (MAX_ADDRESSES - MAX_RELAYED_ADDRESSES) as u64,
            "each refused address counted once (the list is capped at {MAX_ADDRESSES})"
        );
        // Heartbeats repeat the list: refusals are not counted again.
        r.learn_all(
            "dc3",
            &[pb::Datacenter {
                name: "dc2".into(),
                addresses: lies,
            }],
            2,
        );
        assert_eq!(counters.refused("relayed_address"), 12);
        // dc2's own servers fill its list: relays make room.
        let own: Vec<String> = (0..MAX_ADDRESSES)
            .map(|i| format!("dc2-{i}:8302"))
            .collect();
        r.learn(Source::Own, "dc2", "dc2", &own, 3);
        let known = r.addresses("dc2");
        assert!(
            !known.iter().any(|a| a.starts_with("evil")),
            "relays displaced: {known:?}"
        );
        assert_eq!(known.len(), 1 + MAX_ADDRESSES);
        // Nothing relayed is passed on, and nothing unanswered is worth persisting.
        let wire = r.to_proto();
        assert!(
            wire.iter()
                .all(|d| d.addresses.iter().all(|a| !a.starts_with("evil")))
        );
        assert!(r.proven("dc2").is_empty());
        r.answered("dc2", "dc2-3:8302", 4);
        assert_eq!(r.proven("dc2"), [("dc2-3:8302".to_owned(), 4)]);
        assert_eq!(r.addresses("dc2")[1], "dc2-3:8302", "answered first");
    }

    #[test]
    fn phantom_datacenters_are_capped_and_expire_and_do_not_come_back_by_relay() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let (r, counters) = registry(&started);
        let phantoms: Vec<pb::Datacenter> = (0..100)
            .map(|i| pb::Datacenter {
                name: format!("ghost{i}"),
                addresses: vec![format!("ghost{i}:8302")],
            })
            .collect();
        r.learn_all("dc3", &phantoms, 1_000);
        assert_eq!(started.lock().expect("lock").len(), MAX_RELAYED_DATACENTERS);
        assert_eq!(
            counters.refused("relayed_datacenter"),
            (100 - MAX_RELAYED_DATACENTERS) as u64
        );
        // A real DC told by its own server is not held back by the relays' cap.
        r.learn(Source::Own, "dc4", "dc4", &addrs(&["dc4:8302"]), 1_000);
        // One phantom that answers is a real datacenter after all.
        r.answered("ghost0", "ghost0:8302", 2_000);
        // Within the unproven TTL nothing is forgotten; after it, the rest are.
        assert!(r.expire(61_000).is_empty());
        let gone = r.expire(61_001);
        assert_eq!(gone.len(), MAX_RELAYED_DATACENTERS, "{gone:?}");
        assert!(
            gone.contains(&"dc4".to_owned()),
            "dc4 never answered either"
        );
        assert!(!gone.contains(&"ghost0".to_owned()));
        for dc in &gone {
            assert!(!r.keep_following(dc), "{dc}'s follower stops");
        }
        assert!(r.keep_following("ghost0"));
        // The relay repeats itself: expired phantoms are not taken back.
        r.learn_all("dc3", &phantoms[1..2], 62_000);
        assert!(r.addresses("ghost1").is_empty());
        assert_eq!(counters.refused("relayed_expired"), 1);
        // The datacenter's own word is: it gets a new follower.
        r.learn(
            Source::Own,
            "ghost1",
            "ghost1",
            &addrs(&["ghost1:8302"]),
            63_000,
        );
        assert_eq!(r.addresses("ghost1"), ["ghost1:8302"]);
        // One more of dc3's candidates goes unanswered: dc3 is no longer believed as a relay,
        // so the phantoms held back by the cap do not take the freed places.
        r.learn_all("dc3", &phantoms[20..21], 64_000);
        assert_eq!(r.addresses("ghost20"), ["ghost20:8302"]);
        r.expire(64_000 + 60_001);
        r.learn_all("dc3", &phantoms[30..40], 130_000);
        assert!(r.addresses("ghost30").is_empty());
        assert_eq!(counters.refused("relayed_distrusted"), 10);
        // An address that answered once is kept for the learned TTL after its last answer.
        assert!(r.expire(2_000 + 3_600_000).iter().all(|d| d != "ghost0"));
        assert!(r.expire(2_001 + 3_600_000).contains(&"ghost0".to_owned()));
    }

    #[test]
    fn configured_datacenters_never_expire_and_disk_entries_need_an_answer() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let (r, _) = registry(&started);
        let dc2 = Peer {
            dc: "dc2".into(),
            addresses: addrs(&["dc2:8302"]),
        };
        r.learn_configured(&dc2);
        r.learn(Source::Own, "dc2", "dc2", &addrs(&["dc2-b:8302"]), 0);
        r.restore(
            "dc5",
            &[("old:8302".into(), 0), ("proven:8302".into(), 500_000)],
            1_000_000,
        );
        let gone = r.expire(u64::MAX / 2);
        assert_eq!(gone, ["dc5"]);
        assert_eq!(r.addresses("dc2"), ["dc2:8302"], "the learned one went");
        assert!(r.keep_following("dc2"));
        // Restored on a later start: an address from an older version (no answer recorded) has
        // the unproven TTL, one that answered the learned TTL from its answer.
        r.restore(
            "dc6",
            &[("old:8302".into(), 0), ("proven:8302".into(), 500_000)],
            1_000_000,
        );
        r.expire(1_060_001);
        assert_eq!(r.addresses("dc6"), ["proven:8302"]);
        assert_eq!(*started.lock().expect("lock"), ["dc5", "dc6"]);
    }
}
