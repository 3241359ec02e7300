//! Meridian's identities and every rustls configuration built from them (the rpc port, the WAN and
//! the tunnel). The federation's mutual-TLS identities: a federation CA signs one certificate per
//! node, and the certificate names the node's datacenter and role ([`Role`]). A server of
//! datacenter `dc1` called `n1` carries the DNS names `server.dc1.meridian` and
//! `n1.server.dc1.meridian`; a gateway-only node `g1` carries `gateway.dc1.meridian` and
//! `g1.gateway.dc1.meridian`. A client that verifies a peer against [`server_name`]`("dc1")` has
//! proved the peer is a server of `dc1`, and a server reads the peer's datacenter, node and role
//! from its certificate with [`peer_identity`] (the rpc port admits servers of its own DC only).
//!
//! [`create_ca`] and [`create_node_cert`] make the PEM files (the `meridian tls` commands call
//! them); [`TlsMaterial`] loads them, checks that they fit together (the node certificate verifies
//! against the CA roots, names a node, and matches its key), and builds the rustls
//! [`rustls::ServerConfig`] and [`rustls::ClientConfig`]: TLS 1.3, ALPN `h2`, client certificates required, and
//! always the `ring` provider passed explicitly, never a process-wide default. [`accept`] and
//! [`connect`] run a bounded handshake over tokio.
//!
//! The service mesh's identities (each DC's mesh CA, SPIFFE-named workload certificates, the
//! trust bundle of every DC's roots) are in [`mesh`].
//!
//! [`DEV_CA_CERT_PEM`] and [`DEV_CA_KEY_PEM`] are a published, **insecure** CA for `--dev` only:
//! anyone can sign certificates with it. [`TlsMaterial::uses_dev_ca`] lets the agent refuse it
//! outside `--dev`.

mod error;
mod handshake;
mod issue;
mod material;
pub mod mesh;
mod names;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use error::TlsError;
pub use handshake::{accept, connect, connect_from, discover};
pub use issue::{PemPair, create_ca, create_node_cert};
pub use material::TlsMaterial;
pub use names::{
    Identity, Role, node_dns_name, peer_identity, server_dns_name, server_name, validate_label,
};

/// The DNS zone every federation identity lives in.
pub const DOMAIN: &str = "meridian";
/// The label that marks a federation server name: `server.<dc>.meridian`.
pub const SERVER_LABEL: &str = "server";
/// The label that marks a gateway-only node's name: `gateway.<dc>.meridian`.
pub const GATEWAY_LABEL: &str = "gateway";
/// The common name [`create_ca`] is usually given.
pub const DEFAULT_CA_COMMON_NAME: &str = "Meridian Federation CA";
/// The common name of the published development CA.
pub const DEV_CA_COMMON_NAME: &str = "Meridian INSECURE development CA";
/// How long a CA made by [`create_ca`] is valid, in days (10 years).
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// How long a node certificate is valid unless the caller says otherwise, in days.
pub const DEFAULT_NODE_CERT_DAYS: u32 = 365;
/// The longest node certificate validity [`create_node_cert`] accepts, in days.
pub const MAX_NODE_CERT_DAYS: u32 = CA_VALIDITY_DAYS;
/// How far back `notBefore` is set, so that peers whose clocks run behind accept new certificates.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);
/// The only ALPN protocol federation connections speak (gRPC is HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The development CA's certificate (PEM).
///
/// **INSECURE BY DESIGN.** This CA and its private key ([`DEV_CA_KEY_PEM`]) are published in the
/// source code, so anyone can sign a certificate that it trusts: it authenticates nothing. It
/// exists only so that `meridian agent --dev` and demos can federate without making certificates.
/// Never trust it outside `--dev`; the agent checks [`TlsMaterial::uses_dev_ca`] and refuses it.
pub const DEV_CA_CERT_PEM: &str = include_str!("dev_ca/ca.pem");

/// The development CA's private key (PEM). **INSECURE BY DESIGN: public, for `--dev` only.**
///
/// See [`DEV_CA_CERT_PEM`]: anyone can sign certificates with this key.
pub const DEV_CA_KEY_PEM: &str = include_str!("dev_ca/ca-key.pem");
