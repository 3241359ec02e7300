//! Why a certificate could not be made or loaded, or a TLS connection failed.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::MAX_NODE_CERT_DAYS;

/// Why a certificate could not be made or loaded, or a TLS connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A socket operation failed (resolve, connect, or I/O during the handshake).
    #[error("{op} {peer}: {source}")]
    Io {
        /// What was being done (`connect to`, `TLS handshake with`, ...).
        op: &'static str,
        /// The peer's address, as given or as resolved.
        peer: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The connection or handshake did not finish in time.
    #[error("{op} {peer} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The peer's address.
        peer: String,
        /// The time allowed.
        after: Duration,
    },
    /// The TLS handshake failed: unknown CA, expired or malformed certificate, alert, not TLS...
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer's address.
        peer: String,
        /// What rustls reported.
        source: Box<rustls::Error>,
    },
    /// The server's certificate is valid but does not name the expected datacenter.
    #[error("{peer} is not a server of datacenter {expected_dc:?}: {source}")]
    WrongName {
        /// The peer's address.
        peer: String,
        /// The datacenter the client expected.
        expected_dc: String,
        /// What rustls reported (it lists the names the certificate holds).
        source: Box<rustls::Error>,
    },
    /// A certificate carries no `<node>.server.<dc>.meridian` name (or several).
    #[error("the certificate names no Meridian node: {reason}")]
    NoIdentity {
        /// Why, with the names found.
        reason: String,
    },
    /// A datacenter name, node name, SAN or common name is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What the name is (`datacenter name`, `node name`, `extra SAN`, ...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A node certificate validity outside `1..=MAX_NODE_CERT_DAYS`.
    #[error("a certificate validity of {days} days is out of range (1 to {MAX_NODE_CERT_DAYS})")]
    InvalidDays {
        /// The rejected number of days.
        days: u32,
    },
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A certificate or key (PEM text or file) is malformed or does not fit with the others.
    #[error("invalid {what}{}: {reason}", in_file(path.as_deref()))]
    Material {
        /// What it is (`CA certificate`, `node certificate`, `node key`, ...).
        what: &'static str,
        /// The file it came from, when it came from one.
        path: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },
    /// The rustls configuration could not be built.
    #[error("cannot build the TLS {side} configuration: {reason}")]
    Config {
        /// `server` or `client`.
        side: &'static str,
        /// What rustls reported.
        reason: String,
    },
    /// rcgen could not generate a key or certificate.
    #[error("cannot generate the {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// What rcgen reported.
        source: rcgen::Error,
    },
}

impl TlsError {
    /// Whether trying again later may help (network trouble), as opposed to an error that needs
    /// a change of certificates or configuration.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Timeout { .. })
    }
}

pub(crate) fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

pub(crate) fn material(
    what: &'static str,
    path: Option<&Path>,
    reason: impl Into<String>,
) -> TlsError {
    TlsError::Material {
        what,
        path: path.map(Path::to_path_buf),
        reason: reason.into(),
    }
}

pub(crate) fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate { what, source }
}

/// Why PEM text could not be read; `expected` names the block looked for (`CERTIFICATE`, ...).
pub(crate) fn pem_reason(e: &rustls::pki_types::pem::Error, expected: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no {expected} PEM block"),
        other => format!("malformed PEM: {other}"),
    }
}
