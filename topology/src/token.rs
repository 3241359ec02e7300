//! ACL tokens created through the API (`/v1/acl/token`): what one is, how each DC stores its
//! writes of them, and which tokens are in force given every DC's records.
//!
//! A token may be created, changed or deleted in any datacenter and is usable in all of them,
//! with no primary: each DC writes its records into its own Raft group, federation carries them
//! to every other DC, and the token in force under an accessor ID is the last writer's
//! ([`crate::lww`]). Only the SHA-256 of a secret is ever stored or replicated.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::lww::{Decided, Keyed, Records, Stamp, all_keys, changed_keys, decide};

/// What a token may do. Every scope may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read the catalog, health, federation and failover state, and `/metrics`.
    Read,
    /// Register and deregister instances, and update checks, of the services it names.
    Write,
    /// Drains, prepared queries, check updates of any service (drills), node-level checks and
    /// maintenance, and external nodes (`/v1/catalog/register`).
    Operator,
    /// Everything, tokens included.
    Management,
}

impl Scope {
    /// The scope's name as configured (`read`, `write`, `operator`, `management`).
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Operator => "operator",
            Scope::Management => "management",
        }
    }

    /// The scope named `name` (as [`Scope::name`] spells it, ignoring case).
    pub fn parse(name: &str) -> Option<Scope> {
        [
            Scope::Read,
            Scope::Write,
            Scope::Operator,
            Scope::Management,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// An API token's content: everything but its accessor ID, which keys it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// SHA-256 of the secret a client presents.
    pub secret_sha256: [u8; 32],
    /// What it may do.
    pub scope: Scope,
    /// For [`Scope::Write`]: the services it may change (names, `prefix*`, or `*`).
    pub services: Vec<String>,
    /// Free text naming the token in logs and listings (never the secret).
    pub description: String,
    /// When it was created, in ms since the Unix epoch (kept by updates).
    pub create_unix_ms: u64,
}

/// One DC's record of one token, keyed by its accessor ID: the token as that DC last wrote
/// it, or a tombstone.
pub type TokenRecord = Keyed<ApiToken>;

/// One DC's token records, by lowercased accessor ID.
pub type TokenMap = Records<ApiToken>;

/// Most token records (tombstones included) one DC keeps: a bound on what a management token
/// can make every DC hold.
pub const MAX_TOKEN_RECORDS: usize = 10_000;

/// Longest accessor ID accepted (Consul's are 36-character UUIDs).
pub const MAX_ACCESSOR_LEN: usize = 128;

/// Longest description accepted.
pub const MAX_DESCRIPTION_LEN: usize = 512;

/// Most service patterns one token may name.
pub const MAX_SERVICES: usize = 64;

/// Why a token's content is refused (by the API that writes it, and by a replica that receives
/// it: both apply the same rules, so an origin never writes what its peers refuse).
pub fn check_token(accessor_id: &str, token: &ApiToken) -> Result<(), String> {
    if !is_accessor_id(accessor_id) {
        return Err(format!(
            "AccessorID {accessor_id:?} must be 1 to {MAX_ACCESSOR_LEN} letters, digits, `-` or `_`"
        ));
    }
    if token.description.len() > MAX_DESCRIPTION_LEN {
        return Err(format!(
            "Description is longer than {MAX_DESCRIPTION_LEN} bytes"
        ));
    }
    if token.services.len() > MAX_SERVICES {
        return Err(format!("a token names at most {MAX_SERVICES} services"));
    }
    if let Some(p) = token
        .services
        .iter()
        .find(|p| !crate::names::is_service_pattern(p))
    {
        return Err(format!(
            "Services: {p:?} is not a service name or a `prefix*` pattern"
        ));
    }
    match (token.scope, token.services.is_empty()) {
        (Scope::Write, true) => {
            Err("a `write` token needs the services it may change in Services (`*` for all)".into())
        }
        (Scope::Read | Scope::Operator | Scope::Management, false) => {
            Err("only `write` tokens are limited to Services".into())
        }
        _ => Ok(()),
    }
}

/// Whether `id` may be an accessor ID: 1 to [`MAX_ACCESSOR_LEN`] characters of ASCII letters,
/// digits, `-` and `_` (it appears in URL paths).
pub fn is_accessor_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ACCESSOR_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A token in force: its content, accessor ID and the write that made it so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    /// Accessor ID, as created.
    pub accessor_id: String,
    /// The stamp of the winning write (its origin is the DC that last wrote the token).
    pub stamp: Stamp,
    /// The token.
    pub token: ApiToken,
}

/// The tokens in force given the records of every DC a node knows: for each accessor ID, the
/// last writer's record unless that is a tombstone. Built once, then followed change by change
/// ([`Tokens::updated`]), and looked up per request. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_accessor: imbl::HashMap<String, Arc<Effective>>,
    by_secret: imbl::HashMap<[u8; 32], Arc<Effective>>,
    /// Two accessor IDs in force hold one secret (two DCs created them at once with a chosen
    /// secret): the later write holds it. Rare; while it is so, changes rebuild the whole set.
    shared_secret: bool,
}

/// At most this share (1/n) of the records may change for [`Tokens::updated`] to decide only
/// them; beyond, deciding everything again is as cheap.
const INCREMENTAL_SHARE: usize = 4;

impl Tokens {
    /// Decides every accessor ID from `maps` (one per DC, in any order).
    pub fn build<'a>(maps: impl IntoIterator<Item = &'a TokenMap>) -> Tokens {
        let maps: Vec<&TokenMap> = maps.into_iter().collect();
        let keys = all_keys(&maps);
        let mut out = Tokens::default();
        for key in keys {
            if let Some(e) = effective(&maps, key) {
                out.insert_effective(key, e);
            }
        }
        out
    }

    /// These tokens after the DCs' records went from `old` to `new` (the same DCs, in the same
    /// order): only the accessor IDs whose records changed are decided again, which costs
    /// O(changes × log n) when each new map was derived from its old one.
    pub fn updated(&self, old: &[TokenMap], new: &[TokenMap]) -> Tokens {
        let total: usize = new.iter().map(TokenMap::len).sum();
        let changed = match changed_keys(old, new, total / INCREMENTAL_SHARE + 16) {
            Some(keys) if !self.shared_secret => keys,
            _ => return Tokens::build(new),
        };
        let maps: Vec<&TokenMap> = new.iter().collect();
        let mut out = self.clone();
        for key in changed {
            if let Some(old) = out.by_accessor.remove(key)
                && out
                    .by_secret
                    .get(&old.token.secret_sha256)
                    .is_some_and(|e| Arc::ptr_eq(e, &old))
            {
                out.by_secret.remove(&old.token.secret_sha256);
            }
            if let Some(e) = effective(&maps, key) {
                out.insert_effective(key, e);
            }
        }
        if out.shared_secret {
            return Tokens::build(new);
        }
        out
    }

    fn insert_effective(&mut self, key: &str, e: Effective) {
        let e = Arc::new(e);
        match self.by_secret.get(&e.token.secret_sha256) {
            Some(other) => {
                self.shared_secret = true;
                if other.stamp < e.stamp {
                    self.by_secret.insert(e.token.secret_sha256, e.clone());
                }
            }
            None => {
                self.by_secret.insert(e.token.secret_sha256, e.clone());
            }
        }
        self.by_accessor.insert(key.to_owned(), e);
    }

    /// The token in force under `accessor_id` (ignoring case).
    pub fn by_accessor(&self, accessor_id: &str) -> Option<&Effective> {
        self.by_accessor
            .get(accessor_id.to_ascii_lowercase().as_str())
            .map(|e| &**e)
    }

    /// The token whose secret has this SHA-256.
    pub fn by_secret(&self, secret_sha256: &[u8; 32]) -> Option<&Effective> {
        self.by_secret.get(secret_sha256).map(|e| &**e)
    }

    /// Every token in force, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Effective> {
        self.by_accessor.values().map(|e| &**e)
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.by_accessor.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_accessor.is_empty()
    }
}

/// How long a DC keeps its tombstone of a deleted token: long enough for every DC to have seen
/// it and dropped the records it outranks, so that none of them can come back. A DC out of
/// contact for longer may bring a deleted token back when it returns (as Consul's tombstone
/// reaping may).
pub const TOMBSTONE_HORIZON_MS: u64 = 72 * 3600 * 1000;

/// This DC's token records that can never be in force again ([`crate::lww::prunable`] with
/// [`TOMBSTONE_HORIZON_MS`]).
pub fn prunable<'a>(
    local: &TokenMap,
    remotes: impl IntoIterator<Item = &'a TokenMap>,
    now_ms: u64,
) -> Vec<(String, Stamp)> {
    crate::lww::prunable(local, remotes, now_ms, TOMBSTONE_HORIZON_MS)
}

/// The token in force under the lowercased accessor ID `key`, given every DC's `maps`.
fn effective(maps: &[&TokenMap], key: &str) -> Option<Effective> {
    let r = decide(maps, key)?;
    Some(Effective {
        accessor_id: r.key.clone(),
        stamp: r.record.stamp.clone(),
        token: r.record.value.clone()?,
    })
}

impl Decided for Tokens {
    type Value = ApiToken;

    fn build(maps: &[TokenMap]) -> Self {
        Tokens::build(maps)
    }

    fn updated(&self, old: &[TokenMap], new: &[TokenMap]) -> Self {
        Tokens::updated(self, old, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lww::Record;

    fn token(secret: u8, scope: Scope) -> ApiToken {
        ApiToken {
            secret_sha256: [secret; 32],
            scope,
            services: vec![],
            description: String::new(),
            create_unix_ms: 1,
        }
    }

    fn map(records: &[(&str, u64, &str, Option<ApiToken>)]) -> TokenMap {
        let mut m = TokenMap::default();
        for (accessor, hlc, origin, value) in records {
            m.put(TokenRecord {
                key: (*accessor).to_owned(),
                record: Record {
                    stamp: Stamp {
                        hlc: *hlc,
                        origin: (*origin).to_owned(),
                    },
                    value: value.clone(),
                },
            });
        }
        m
    }

    #[test]
    fn a_token_written_anywhere_is_in_force_until_a_later_delete_anywhere() {
        let dc2 = map(&[("A", 10, "dc2", Some(token(1, Scope::Write)))]);
        let dc1 = TokenMap::default();
        let t = Tokens::build([&dc1, &dc2]);
        assert_eq!(
            t.by_secret(&[1; 32]).map(|e| e.token.scope),
            Some(Scope::Write)
        );
        assert_eq!(
            t.by_accessor("a").map(|e| e.accessor_id.as_str()),
            Some("A")
        );

        // dc1 changes it, then dc3 deletes it: the later write wins whatever the order.
        let dc1 = map(&[("a", 20, "dc1", Some(token(1, Scope::Read)))]);
        let t = Tokens::build([&dc2, &dc1]);
        assert_eq!(
            t.by_secret(&[1; 32]).map(|e| e.token.scope),
            Some(Scope::Read)
        );
        let dc3 = map(&[("a", 30, "dc3", None)]);
        for order in [[&dc1, &dc2, &dc3], [&dc3, &dc2, &dc1]] {
            let t = Tokens::build(order);
            assert!(t.by_secret(&[1; 32]).is_none());
            assert!(t.is_empty());
        }
    }

    #[test]
    fn one_secret_under_two_accessors_belongs_to_the_later_write() {
        let dc1 = map(&[("a", 10, "dc1", Some(token(7, Scope::Read)))]);
        let dc2 = map(&[("b", 11, "dc2", Some(token(7, Scope::Management)))]);
        for order in [[&dc1, &dc2], [&dc2, &dc1]] {
            let t = Tokens::build(order);
            assert_eq!(
                t.by_secret(&[7; 32]).map(|e| e.accessor_id.as_str()),
                Some("b")
            );
            assert_eq!(t.len(), 2);
        }
    }

    /// Sorted (accessor, stamp) and (secret, accessor) pairs.
    type Decisions = (Vec<(String, Stamp)>, Vec<([u8; 32], String)>);

    /// The same decisions, as sorted pairs.
    fn decisions(t: &Tokens) -> Decisions {
        let mut a: Vec<_> = t
            .by_accessor
            .iter()
            .map(|(k, e)| (k.clone(), e.stamp.clone()))
            .collect();
        let mut s: Vec<_> = t
            .by_secret
            .iter()
            .map(|(k, e)| (*k, e.accessor_id.to_ascii_lowercase()))
            .collect();
        a.sort();
        s.sort();
        (a, s)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::fuzz_cases(128)))]

        /// Following the DCs' records write by write decides exactly what deciding them all
        /// again decides, secrets shared between accessors included.
        #[test]
        fn following_changes_decides_as_a_rebuild(
            writes in proptest::collection::vec(
                (0usize..3, 0u8..12, 0u64..40, proptest::option::of(0u8..6)),
                1..60,
            ),
        ) {
            let mut maps = vec![TokenMap::default(), TokenMap::default(), TokenMap::default()];
            let mut followed = Tokens::build(&maps);
            for (dc, accessor, hlc, secret) in writes {
                let before = maps.clone();
                let key = format!("a{accessor}");
                let record = TokenRecord {
                    key: key.clone(),
                    record: Record {
                        stamp: Stamp { hlc, origin: format!("dc{dc}") },
                        value: secret.map(|s| token(s, Scope::Read)),
                    },
                };
                if hlc % 7 == 0 {
                    maps[dc].remove(&key);
                } else {
                    maps[dc].put(record);
                }
                followed = followed.updated(&before, &maps);
                proptest::prop_assert_eq!(decisions(&followed), decisions(&Tokens::build(&maps)));
            }
        }
    }

    #[test]
    fn outranked_records_and_old_tombstones_are_prunable_and_nothing_else() {
        let now = TOMBSTONE_HORIZON_MS + 1_000;
        let dc1 = map(&[
            ("a", 10, "dc1", Some(token(1, Scope::Read))),
            ("b", 20, "dc1", Some(token(2, Scope::Read))),
            ("c", 999, "dc1", None),
            ("d", 1_001, "dc1", None),
        ]);
        let dc2 = map(&[
            ("a", 11, "dc2", None),
            ("b", 19, "dc2", Some(token(2, Scope::Write))),
        ]);
        let mut gone: Vec<String> = prunable(&dc1, [&dc2], now)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        gone.sort();
        // a: outranked by dc2's delete; c: a tombstone past the horizon. b wins; d is recent.
        assert_eq!(gone, ["a", "c"]);
        // Pruning them changes no decision.
        let mut pruned = dc1.clone();
        for k in &gone {
            pruned.remove(k);
        }
        assert_eq!(
            decisions(&Tokens::build([&dc1, &dc2])),
            decisions(&Tokens::build([&pruned, &dc2]))
        );
    }

    #[test]
    fn accessor_ids_are_url_safe_and_bounded() {
        assert!(is_accessor_id("6a1253d2-1785-24fd-91c2-f8e78c745511"));
        assert!(!is_accessor_id(""));
        assert!(!is_accessor_id("a/b"));
        assert!(!is_accessor_id(&"a".repeat(MAX_ACCESSOR_LEN + 1)));
        assert_eq!(Scope::parse("Operator"), Some(Scope::Operator));
        assert_eq!(Scope::parse("root"), None);
    }
}
