//! The mesh CA as a datacenter's catalog holds it: its root certificate, which federation
//! carries to every DC (the trust bundle is every DC's root), and its signing key, which never
//! leaves the DC's Raft group. Each DC makes its own (no primary): it issues leaves while cut off
//! from every other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest root certificate accepted (PEM), from the API or from a peer.
pub const MAX_ROOT_PEM: usize = 8 * 1024;

/// A DC's mesh CA certificate, as every DC may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshRoot {
    /// The federation's trust domain it signs in.
    pub trust_domain: String,
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// When it was made, in ms since the Unix epoch.
    pub created_unix_ms: u64,
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
