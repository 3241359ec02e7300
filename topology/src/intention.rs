//! Intentions: which service may open connections to which, written in any datacenter and in
//! force in every one, with no primary (Consul needs its primary DC for this).
//!
//! Each DC writes its intentions into its own Raft group as its records, keyed by
//! `source/destination`; federation carries every DC's records to every other; the intention in
//! force for a pair is the last writer's ([`crate::lww`]), so every DC decides the same after a
//! partition heals. A decision for a connection takes the matching intention of highest
//! precedence, as Consul defines it for one namespace: exact source and destination (9), any
//! source to an exact destination (8), an exact source to any destination (6), any to any (5);
//! no match falls to the default (`[mesh] default_intention`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::lww::{Decided, Keyed, Records, Stamp, all_keys, changed_keys, decide};

/// What an intention says of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The source may connect.
    Allow,
    /// It may not.
    Deny,
}

impl Action {
    /// `allow` or `deny`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }

    /// The action named `name` (ignoring case).
    pub fn parse(name: &str) -> Option<Action> {
        [Action::Allow, Action::Deny]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }
}

/// An intention's content: everything but its pair, which keys it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intention {
    /// Allow or deny.
    pub action: Action,
    /// Free text.
    pub description: String,
    /// Free key/value metadata.
    pub meta: BTreeMap<String, String>,
    /// When the pair's intention was first written, in ms since the Unix epoch (kept by updates).
    pub created_unix_ms: u64,
}

/// One DC's record of the intention of one pair, keyed `source/destination`.
pub type IntentionRecord = Keyed<Intention>;

/// One DC's intention records, by lowercased `source/destination`.
pub type IntentionMap = Records<Intention>;

/// Most intention records (tombstones included) one DC keeps.
pub const MAX_INTENTION_RECORDS: usize = 10_000;

/// How long a DC keeps its tombstone of a deleted intention (as for tokens: long enough for every
/// DC to have dropped what it outranks).
pub const TOMBSTONE_HORIZON_MS: u64 = crate::token::TOMBSTONE_HORIZON_MS;

/// Longest description accepted.
pub const MAX_DESCRIPTION_LEN: usize = 512;

/// Most metadata pairs, and the longest key and value.
pub const MAX_META: (usize, usize, usize) = (64, 128, 512);

/// The wildcard that matches any service.
pub const ANY: &str = "*";

/// The key of the pair: `source/destination` (service names hold no `/`).
pub fn key(source: &str, destination: &str) -> String {
    format!("{source}/{destination}")
}

/// The pair of a key, as [`key`] wrote it.
pub fn pair(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// Whether `name` may be one side of an intention: a service name, or `*`.
pub fn is_side(name: &str) -> bool {
    name == ANY || crate::names::is_label(name)
}

/// Consul's precedence of an intention between `source` and `destination` (one namespace).
pub fn precedence(source: &str, destination: &str) -> u8 {
    match (source == ANY, destination == ANY) {
        (false, false) => 9,
        (true, false) => 8,
        (false, true) => 6,
        (true, true) => 5,
    }
}

/// Why a key is not a pair of sides ([`is_side`]), as [`key`] writes it (a tombstone's check).
pub fn check_pair(key: &str) -> Result<(), String> {
    let (source, destination) =
        pair(key).ok_or_else(|| format!("{key:?} is not a source/destination pair"))?;
    for (what, name) in [("source", source), ("destination", destination)] {
        if !is_side(name) {
            return Err(format!(
                "{what} {name:?} is not a service name or `*` (namespaces other than the default are not supported)"
            ));
        }
    }
    Ok(())
}

/// Why an intention is refused (by the API that writes it, and by a replica that receives it).
pub fn check_intention(key: &str, i: &Intention) -> Result<(), String> {
    check_pair(key)?;
    if i.description.len() > MAX_DESCRIPTION_LEN {
        return Err(format!(
            "Description is longer than {MAX_DESCRIPTION_LEN} bytes"
        ));
    }
    let (pairs, key_len, value_len) = MAX_META;
    if i.meta.len() > pairs
        || i.meta
            .iter()
            .any(|(k, v)| k.len() > key_len || v.len() > value_len)
    {
        return Err(format!(
            "Meta holds at most {pairs} pairs, keys of {key_len} bytes and values of {value_len}"
        ));
    }
    Ok(())
}

/// An intention in force: its pair, content and the write that made it so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    /// The source service, as written (`*`: any).
    pub source: String,
    /// The destination service, as written (`*`: any).
    pub destination: String,
    /// The winning write (its origin is the DC that last wrote the intention).
    pub stamp: Stamp,
    /// The intention.
    pub intention: Intention,
}

impl Effective {
    /// Its precedence.
    pub fn precedence(&self) -> u8 {
        precedence(&self.source, &self.destination)
    }
}

/// The intentions in force given every DC's records. Built once, then followed change by change
/// ([`Intentions::updated`]); a decision is at most four map lookups. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Intentions {
    by_key: imbl::HashMap<String, Arc<Effective>>,
}

/// At most this share (1/n) of the records may change for [`Intentions::updated`] to decide only
/// them.
const INCREMENTAL_SHARE: usize = 4;

impl Intentions {
    /// Decides every pair from `maps` (one per DC, in any order).
    pub fn build<'a>(maps: impl IntoIterator<Item = &'a IntentionMap>) -> Intentions {
        let maps: Vec<&IntentionMap> = maps.into_iter().collect();
        let keys = all_keys(&maps);
        let mut out = Intentions::default();
        for key in keys {
            if let Some(e) = effective(&maps, key) {
                out.by_key.insert(key.to_owned(), Arc::new(e));
            }
        }
        out
    }

    /// These intentions after the DCs' records went from `old` to `new` (the same DCs, in the
    /// same order): only the pairs whose records changed are decided again.
    pub fn updated(&self, old: &[IntentionMap], new: &[IntentionMap]) -> Intentions {
        let total: usize = new.iter().map(IntentionMap::len).sum();
        let Some(changed) = changed_keys(old, new, total / INCREMENTAL_SHARE + 16) else {
            return Intentions::build(new);
        };
        let maps: Vec<&IntentionMap> = new.iter().collect();
        let mut out = self.clone();
        for key in changed {
            match effective(&maps, key) {
                Some(e) => {
                    out.by_key.insert(key.to_owned(), Arc::new(e));
                }
                None => {
                    out.by_key.remove(key);
                }
            }
        }
        out
    }

    /// The intention in force for exactly this pair (ignoring case).
    pub fn exact(&self, source: &str, destination: &str) -> Option<&Effective> {
        self.by_key
            .get(key(source, destination).to_ascii_lowercase().as_str())
            .map(|e| &**e)
    }

    /// Every intention in force, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Effective> {
        self.by_key.values().map(|e| &**e)
    }

    /// How many intentions are in force.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The intention that decides a connection from `source` to `destination` (services, not
    /// wildcards): the matching one of highest precedence, if any.
    pub fn matching(&self, source: &str, destination: &str) -> Option<&Effective> {
        [
            (source, destination),
            (ANY, destination),
            (source, ANY),
            (ANY, ANY),
        ]
        .into_iter()
        .find_map(|(s, d)| self.exact(s, d))
    }

    /// Whether `source` may connect to `destination`, and the intention that decided (`None`:
    /// none matched, `default` did).
    pub fn allows(
        &self,
        source: &str,
        destination: &str,
        default: Action,
    ) -> (bool, Option<&Effective>) {
        match self.matching(source, destination) {
            Some(e) => (e.intention.action == Action::Allow, Some(e)),
            None => (default == Action::Allow, None),
        }
    }

    /// The intentions that apply to `name` as a source (`by_source`) or as a destination, in the
    /// order they are evaluated: highest precedence first, then by source and destination.
    pub fn matching_name(&self, by_source: bool, name: &str) -> Vec<&Effective> {
        let mut out: Vec<&Effective> = self
            .iter()
            .filter(|e| {
                let side = if by_source { &e.source } else { &e.destination };
                side == ANY || side.eq_ignore_ascii_case(name)
            })
            .collect();
        sort_by_precedence(&mut out);
        out
    }
}

impl Decided for Intentions {
    type Value = Intention;

    fn build(maps: &[IntentionMap]) -> Self {
        Intentions::build(maps)
    }

    fn updated(&self, old: &[IntentionMap], new: &[IntentionMap]) -> Self {
        Intentions::updated(self, old, new)
    }
}

/// Sorts intentions in evaluation order: highest precedence first, then by source and
/// destination (ignoring case).
pub fn sort_by_precedence(v: &mut [&Effective]) {
    v.sort_by(|a, b| {
        b.precedence()
            .cmp(&a.precedence())
            .then_with(|| {
                a.source
                    .to_ascii_lowercase()
                    .cmp(&b.source.to_ascii_lowercase())
            })
            .then_with(|| {
                a.destination
                    .to_ascii_lowercase()
                    .cmp(&b.destination.to_ascii_lowercase())
            })
    });
}

/// This DC's intention records that can never be in force again ([`crate::lww::prunable`] with
/// [`TOMBSTONE_HORIZON_MS`]).
pub fn prunable<'a>(
    local: &IntentionMap,
    remotes: impl IntoIterator<Item = &'a IntentionMap>,
    now_ms: u64,
) -> Vec<(String, Stamp)> {
    crate::lww::prunable(local, remotes, now_ms, TOMBSTONE_HORIZON_MS)
}

/// The intention in force under the lowercased `key`, given every DC's `maps`.
fn effective(maps: &[&IntentionMap], key: &str) -> Option<Effective> {
    let r = decide(maps, key)?;
    let (source, destination) = pair(&r.key)?;
    Some(Effective {
        source: source.to_owned(),
        destination: destination.to_owned(),
        stamp: r.record.stamp.clone(),
        intention: r.record.value.clone()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lww::Record;
    use proptest::prelude::*;

    fn record(
        source: &str,
        destination: &str,
        hlc: u64,
        origin: &str,
        action: Option<Action>,
    ) -> IntentionRecord {
        Keyed {
            key: key(source, destination),
            record: Record {
                stamp: Stamp {
                    hlc,
                    origin: origin.to_owned(),
                },
                value: action.map(|action| Intention {
                    action,
                    description: String::new(),
                    meta: BTreeMap::new(),
                    created_unix_ms: 0,
                }),
            },
        }
    }

    #[test]
    fn the_most_precise_intention_decides_and_none_falls_to_the_default() {
        let mut dc1 = IntentionMap::default();
        dc1.put(record("*", "*", 1, "dc1", Some(Action::Deny)));
        dc1.put(record("*", "web", 2, "dc1", Some(Action::Allow)));
        dc1.put(record("api", "web", 3, "dc1", Some(Action::Deny)));
        dc1.put(record("api", "*", 4, "dc1", Some(Action::Allow)));
        let i = Intentions::build([&dc1]);
        assert!(!i.allows("api", "web", Action::Allow).0, "exact beats all");
        assert!(i.allows("cli", "web", Action::Deny).0, "* → web");
        assert!(i.allows("api", "db", Action::Deny).0, "api → *");
        assert!(!i.allows("cli", "db", Action::Allow).0, "* → *");
        assert_eq!(
            i.matching_name(false, "web")
                .iter()
                .map(|e| (e.source.as_str(), e.precedence()))
                .collect::<Vec<_>>(),
            [("api", 9), ("*", 8), ("api", 6), ("*", 5)]
        );
        let none = Intentions::default();
        assert_eq!(none.allows("a", "b", Action::Deny), (false, None));
        assert_eq!(none.allows("a", "b", Action::Allow), (true, None));
    }

    #[test]
    fn a_later_write_in_another_dc_wins_and_a_delete_anywhere_removes() {
        let mut dc1 = IntentionMap::default();
        dc1.put(record("api", "web", 10, "dc1", Some(Action::Deny)));
        let mut dc2 = IntentionMap::default();
        dc2.put(record("API", "Web", 11, "dc2", Some(Action::Allow)));
        for order in [[&dc1, &dc2], [&dc2, &dc1]] {
            let i = Intentions::build(order);
            assert!(i.allows("api", "web", Action::Deny).0);
            assert_eq!(
                i.exact("api", "web").map(|e| e.stamp.origin.as_str()),
                Some("dc2")
            );
        }
        let mut dc3 = IntentionMap::default();
        dc3.put(record("api", "web", 12, "dc3", None));
        let i = Intentions::build([&dc1, &dc2, &dc3]);
        assert!(i.is_empty());
    }

    #[test]
    fn pairs_are_checked() {
        let ok = record("api", "*", 1, "dc1", Some(Action::Allow));
        let value = ok.record.value.clone().expect("value");
        assert!(check_intention(&ok.key, &value).is_ok());
        assert!(check_intention("api", &value).is_err());
        assert!(check_intention("ns/api/web", &value).is_err());
        assert!(check_intention("a_b/web", &value).is_err());
        assert_eq!(Action::parse("DENY"), Some(Action::Deny));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(128)))]

        /// Deciding by the four lookups equals the brute force over every intention (highest
        /// precedence among the matching ones), and following writes decides as a rebuild does,
        /// whatever DC wrote what.
        #[test]
        fn decisions_follow_precedence_and_every_order_agrees(
            writes in proptest::collection::vec(
                (0usize..3, 0usize..4, 0usize..4, 1u64..40, proptest::option::of(any::<bool>())),
                1..50,
            ),
        ) {
            let names = ["*", "a", "b", "c"];
            let mut maps = vec![IntentionMap::default(), IntentionMap::default(), IntentionMap::default()];
            let mut followed = Intentions::build(&maps);
            for (dc, s, d, hlc, allow) in writes {
                let before = maps.clone();
                let action = allow.map(|a| if a { Action::Allow } else { Action::Deny });
                maps[dc].put(record(names[s], names[d], hlc, &format!("dc{dc}"), action));
                followed = followed.updated(&before, &maps);
                let rebuilt = Intentions::build(maps.iter().rev());
                for src in ["a", "b", "c"] {
                    for dst in ["a", "b", "c"] {
                        let fast = followed.allows(src, dst, Action::Deny);
                        prop_assert_eq!(fast.0, rebuilt.allows(src, dst, Action::Deny).0);
                        let brute = rebuilt
                            .iter()
                            .filter(|e| (e.source == "*" || e.source == src) && (e.destination == "*" || e.destination == dst))
                            .max_by_key(|e| e.precedence());
                        prop_assert_eq!(fast.1.map(|e| e.precedence()), brute.map(|e| e.precedence()));
                        prop_assert_eq!(fast.0, brute.is_some_and(|e| e.intention.action == Action::Allow));
                    }
                }
            }
        }
    }
}
