//! The mesh CA as a datacenter's catalog holds it: its root certificate, which federation
//! carries to every DC (the trust bundle is every DC's root), and its signing key, which never
//! leaves the DC's Raft group. Each DC makes its own (no primary): it issues leaves while cut off
//! from every other.
//!
//! A DC rotates its CA in two steps, so that no connection is refused on the way: the next root
//! is published first (every DC trusts it, but it signs nothing yet), and only after a delay
//! long enough for federation to carry it everywhere does it become the active one; the old root
//! is then retired, still trusted until the last leaf it signed has expired.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest root certificate accepted (PEM), from the API or from a peer.
pub const MAX_ROOT_PEM: usize = 8 * 1024;

/// The most roots a DC vouches for beside its active one (the next, and retired ones).
pub const MAX_OTHER_ROOTS: usize = 3;

/// A DC's mesh CA certificate, as every DC may see it, with the other roots the DC vouches for
/// during a rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshRoot {
    /// The federation's trust domain it signs in.
    pub trust_domain: String,
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// When it was made, in ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The next root (published, not yet signing) and retired ones (trusted until their last
    /// leaf has expired).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<OtherRoot>,
}

/// A root a DC vouches for beside its active one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherRoot {
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// When it was published (the next root) or made (a retired one), ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// A retired root: trusted until then. 0: the next root, which signs nothing yet.
    pub until_unix_ms: u64,
}

impl OtherRoot {
    /// Whether this is the next root (published, not yet active).
    pub fn is_next(&self) -> bool {
        self.until_unix_ms == 0
    }
}

impl MeshRoot {
    /// The next root, while a rotation is under way.
    pub fn next(&self) -> Option<&OtherRoot> {
        self.others.iter().find(|o| o.is_next())
    }

    /// Every certificate the DC vouches for at `now_ms`: the active one first, then the next and
    /// the retired ones not yet past their end.
    pub fn trusted(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        std::iter::once(self.cert_pem.as_str()).chain(
            self.others
                .iter()
                .filter(move |o| o.is_next() || o.until_unix_ms > now_ms)
                .map(|o| o.cert_pem.as_str()),
        )
    }
}

/// A mesh CA's private key (PEM): shown as `[redacted]` by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MeshKey(pub String);

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A DC's own mesh CA: its root and its signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshCa {
    /// The root every DC trusts.
    pub root: MeshRoot,
    /// The key that signs this DC's leaves.
    pub key: MeshKey,
}
