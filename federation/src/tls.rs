//! The federation's mutual-TLS identities: a federation CA signs one certificate per node, and the
//! certificate names the node's datacenter. A node of datacenter `dc1` called `n1` carries the DNS
//! names `server.dc1.meridian` and `n1.server.dc1.meridian`; a client that verifies a peer
//! against [`server_name`]`("dc1")` has proved the peer belongs to `dc1`, and a server reads the
//! subscriber's datacenter and node from its certificate with [`peer_identity`].
//!
//! [`create_ca`] and [`create_node_cert`] make the PEM files (the `meridian tls` commands call
//! them); [`TlsMaterial`] loads them, checks that they fit together (the node certificate verifies
//! against the CA roots, names a node, and matches its key), and builds the rustls
//! [`ServerConfig`] and [`ClientConfig`]: TLS 1.3, ALPN `h2`, client certificates required, and
//! always the `ring` provider passed explicitly, never a process-wide default. [`accept`] and
//! [`connect`] run a bounded handshake over tokio.
//!
//! [`DEV_CA_CERT_PEM`] and [`DEV_CA_KEY_PEM`] are a published, **insecure** CA for `--dev` only:
//! anyone can sign certificates with it. [`TlsMaterial::uses_dev_ca`] lets the agent refuse it
//! outside `--dev`.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::string::{BmpString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::x509::X509Name;

/// The DNS zone every federation identity lives in.
pub const DOMAIN: &str = "meridian";
/// The label that marks a federation server name: `server.<dc>.meridian`.
pub const SERVER_LABEL: &str = "server";
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

fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

fn material(what: &'static str, path: Option<&Path>, reason: impl Into<String>) -> TlsError {
    TlsError::Material {
        what,
        path: path.map(Path::to_path_buf),
        reason: reason.into(),
    }
}

fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate { what, source }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret key elided]")
            .finish()
    }
}

/// Which node of which datacenter a certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The datacenter (a DNS label).
    pub dc: String,
    /// The node (a DNS label).
    pub node: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dc, self.node)
    }
}

/// The DNS name every server of datacenter `dc` carries: `server.<dc>.meridian`.
pub fn server_dns_name(dc: &str) -> String {
    format!("{SERVER_LABEL}.{dc}.{DOMAIN}")
}

/// The DNS name that identifies one node: `<node>.server.<dc>.meridian`.
pub fn node_dns_name(dc: &str, node: &str) -> String {
    format!("{node}.{SERVER_LABEL}.{dc}.{DOMAIN}")
}

/// The name a client verifies to prove its peer is a server of `dc`: `server.<dc>.meridian`.
pub fn server_name(dc: &str) -> Result<ServerName<'static>, TlsError> {
    validate_label("datacenter name", dc)?;
    let name = server_dns_name(dc);
    ServerName::try_from(name.clone()).map_err(|_| TlsError::InvalidName {
        what: "server name",
        value: name,
        reason: "it is not a valid DNS name",
    })
}

/// Checks that `value` is a lowercase DNS label (`a-z`, `0-9`, `-`; 1 to 63 characters; not
/// starting or ending with `-`); `what` names it in the error.
pub fn validate_label(what: &'static str, value: &str) -> Result<(), TlsError> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > 63 {
        "it is longer than 63 characters"
    } else if !value
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        "only lowercase letters a-z, digits 0-9 and '-' are allowed"
    } else if value.starts_with('-') || value.ends_with('-') {
        "it starts or ends with '-'"
    } else {
        return Ok(());
    };
    Err(TlsError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    })
}

fn is_label(value: &str) -> bool {
    validate_label("", value).is_ok()
}

/// Makes a self-signed federation CA: ECDSA P-256, CA with path length 0, key usages certSign
/// and cRLSign, valid for [`CA_VALIDITY_DAYS`] days.
pub fn create_ca(common_name: &str) -> Result<PemPair, TlsError> {
    if common_name.trim().is_empty() || common_name.chars().any(char::is_control) {
        return Err(TlsError::InvalidName {
            what: "CA common name",
            value: common_name.to_owned(),
            reason: "it is empty or contains control characters",
        });
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate("CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (not_before, not_after) = validity(CA_VALIDITY_DAYS);
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params
        .self_signed(&key)
        .map_err(generate("CA certificate"))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Makes the certificate of node `node` of datacenter `dc`, signed by `ca`: ECDSA P-256, DNS names
/// `server.<dc>.meridian` and `<node>.server.<dc>.meridian` plus `extra_sans` (IP addresses or DNS
/// names outside `.meridian`), serverAuth and clientAuth, valid for `days` days.
pub fn create_node_cert(
    ca: &PemPair,
    dc: &str,
    node: &str,
    extra_sans: &[String],
    days: u32,
) -> Result<PemPair, TlsError> {
    validate_label("datacenter name", dc)?;
    validate_label("node name", node)?;
    if !(1..=MAX_NODE_CERT_DAYS).contains(&days) {
        return Err(TlsError::InvalidDays { days });
    }
    let mut sans = vec![
        dns_san(server_dns_name(dc))?,
        dns_san(node_dns_name(dc, node))?,
    ];
    for extra in extra_sans {
        let san = extra_san(extra)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let issuer = ca_issuer(ca)?;

    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate("node key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node_dns_name(dc, node));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let (not_before, not_after) = validity(days);
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate("node certificate"))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// `notBefore` (backdated by [`CLOCK_SKEW_ALLOWANCE`]) and `notAfter` for `days` days from now.
fn validity(days: u32) -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    let not_before = now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now);
    let not_after = now + Duration::from_secs(u64::from(days) * 24 * 60 * 60);
    (not_before, not_after)
}

fn dns_san(name: String) -> Result<SanType, TlsError> {
    Ok(SanType::DnsName(
        name.try_into().map_err(generate("DNS name"))?,
    ))
}

/// An extra SAN: an IP address, or a DNS name that cannot pose as a federation identity.
fn extra_san(value: &str) -> Result<SanType, TlsError> {
    let invalid = |reason| TlsError::InvalidName {
        what: "extra SAN",
        value: value.to_owned(),
        reason,
    };
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = value.to_ascii_lowercase();
    if name.contains('*') {
        return Err(invalid("wildcard names are not allowed"));
    }
    if name.ends_with('.') {
        return Err(invalid("write the name without a trailing '.'"));
    }
    if name == DOMAIN || name.ends_with(&format!(".{DOMAIN}")) {
        return Err(invalid(
            "names under .meridian are reserved for the federation identities",
        ));
    }
    match ServerName::try_from(name.as_str()) {
        Ok(ServerName::DnsName(_)) => dns_san(name),
        _ => Err(invalid("it is neither an IP address nor a valid DNS name")),
    }
}

/// Rebuilds the issuer (subject name, key identifier, key) of a CA made by [`create_ca`] or by
/// another tool, checking that the key belongs to the certificate.
fn ca_issuer(ca: &PemPair) -> Result<Issuer<'static, KeyPair>, TlsError> {
    const WHAT: &str = "CA certificate";
    let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .map_err(|e| material(WHAT, None, pem_reason(&e, "CERTIFICATE")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| material(WHAT, None, format!("it cannot be parsed: {e}")))?;
    match x509.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err(material(WHAT, None, "it is not a CA (basicConstraints)")),
    }
    if x509.validity().time_to_expiration().is_none() {
        return Err(material(WHAT, None, "it has expired or is not yet valid"));
    }
    let key = KeyPair::from_pem(&ca.key_pem)
        .map_err(|e| material("CA key", None, format!("it cannot be loaded: {e}")))?;
    if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
        return Err(material(
            "CA key",
            None,
            "it does not belong to the CA certificate",
        ));
    }

    let mut params = CertificateParams::default();
    params.distinguished_name =
        distinguished_name(x509.subject()).map_err(|reason| material(WHAT, None, reason))?;
    params.key_identifier_method = subject_key_id(&x509)
        .map(|id| KeyIdMethod::PreSpecified(id.to_vec()))
        .unwrap_or(KeyIdMethod::Sha256);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(Issuer::new(params, key))
}

fn subject_key_id<'a>(x509: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    x509.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
            _ => None,
        })
}

/// The subject name of a CA, in the string types it was written with, so that the issuer name of
/// the certificates it signs matches it byte for byte (chain building compares the raw names).
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("its subject has a multi-valued name component".to_owned());
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("its subject has an attribute type that is too large")?
            .collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(format!("its subject repeats the attribute {ty:?}"));
        }
        let value = attr.attr_value();
        let data = value.data;
        let text = || {
            std::str::from_utf8(data).map_err(|_| "its subject has a malformed string".to_owned())
        };
        let bad = |e: rcgen::Error| format!("its subject has an unusable string: {e}");
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => {
                DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).map_err(bad)?)
            }
            Tag::UniversalString => {
                DnValue::UniversalString(UniversalString::from_utf32be(data.to_vec()).map_err(bad)?)
            }
            other => {
                return Err(format!(
                    "its subject has a value of unsupported type {other}"
                ));
            }
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// Why PEM text could not be read; `expected` names the block looked for (`CERTIFICATE`, ...).
fn pem_reason(e: &rustls::pki_types::pem::Error, expected: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no {expected} PEM block"),
        other => format!("malformed PEM: {other}"),
    }
}

/// Reads the datacenter and node from a certificate's `<node>.server.<dc>.meridian` DNS name.
///
/// It does not verify the certificate: rustls has verified the chain by the time a server calls
/// this on its peer's certificate.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| TlsError::NoIdentity {
            reason: format!("the certificate cannot be parsed: {e}"),
        })?;
    let sans = x509
        .subject_alternative_name()
        .map_err(|e| TlsError::NoIdentity {
            reason: format!("its subjectAltName extension cannot be parsed: {e}"),
        })?;
    let dns_names: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
        .collect();
    let mut found: Option<Identity> = None;
    for id in dns_names.iter().filter_map(|name| identity_of(name)) {
        match &found {
            Some(previous) if *previous != id => {
                return Err(TlsError::NoIdentity {
                    reason: format!("it names two nodes, {previous} and {id}"),
                });
            }
            _ => found = Some(id),
        }
    }
    found.ok_or_else(|| TlsError::NoIdentity {
        reason: format!(
            "none of its DNS names {dns_names:?} has the form <node>.{SERVER_LABEL}.<dc>.{DOMAIN}"
        ),
    })
}

/// The identity a DNS name `<node>.server.<dc>.meridian` stands for.
fn identity_of(dns_name: &str) -> Option<Identity> {
    let name = dns_name.to_ascii_lowercase();
    let mut labels = name.split('.');
    let (Some(node), Some(server), Some(dc), Some(domain), None) = (
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
    ) else {
        return None;
    };
    (server == SERVER_LABEL && domain == DOMAIN && is_label(node) && is_label(dc)).then(|| {
        Identity {
            dc: dc.to_owned(),
            node: node.to_owned(),
        }
    })
}

/// One PEM input and the file it came from, if any.
#[derive(Clone, Copy)]
struct Source<'a> {
    pem: &'a str,
    path: Option<&'a Path>,
}

impl<'a> Source<'a> {
    fn certs(self, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(self.pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| material(what, self.path, pem_reason(&e, "CERTIFICATE")))?;
        if certs.is_empty() {
            return Err(material(what, self.path, "no CERTIFICATE PEM block"));
        }
        Ok(certs)
    }
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS identity: the CA roots it trusts, its certificate chain and key, and the
/// [`Identity`] its certificate names. It never holds a CA key.
pub struct TlsMaterial {
    roots: Vec<CertificateDer<'static>>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl TlsMaterial {
    /// Loads PEM text: `ca_pem` holds one or more CA certificates (the trusted roots), `cert_pem`
    /// the node certificate (then any intermediates), `key_pem` its private key.
    ///
    /// Fails unless the node certificate names a node, matches the key, and verifies against the
    /// roots now as both a server of its datacenter and a client.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Self::load(
            Source {
                pem: ca_pem,
                path: None,
            },
            Source {
                pem: cert_pem,
                path: None,
            },
            Source {
                pem: key_pem,
                path: None,
            },
        )
    }

    /// Loads the CA certificates, node certificate and node key from PEM files, like
    /// [`TlsMaterial::from_pem`]; errors name the file.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::File {
                path: path.to_path_buf(),
                source,
            })
        };
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        Self::load(
            Source {
                pem: &ca_pem,
                path: Some(ca),
            },
            Source {
                pem: &cert_pem,
                path: Some(cert),
            },
            Source {
                pem: &key_pem,
                path: Some(key),
            },
        )
    }

    /// Signs a fresh certificate for node `node` of `dc` with the **insecure** development CA, in
    /// memory. For `--dev` only: see [`DEV_CA_CERT_PEM`].
    pub fn dev(dc: &str, node: &str) -> Result<Self, TlsError> {
        let ca = PemPair {
            cert_pem: DEV_CA_CERT_PEM.to_owned(),
            key_pem: DEV_CA_KEY_PEM.to_owned(),
        };
        let pair = create_node_cert(&ca, dc, node, &[], DEFAULT_NODE_CERT_DAYS)?;
        Self::from_pem(DEV_CA_CERT_PEM, &pair.cert_pem, &pair.key_pem)
    }

    fn load(ca: Source<'_>, cert: Source<'_>, key: Source<'_>) -> Result<Self, TlsError> {
        let roots = ca.certs("CA certificate")?;
        let mut store = RootCertStore::empty();
        for root in &roots {
            store
                .add(root.clone())
                .map_err(|e| material("CA certificate", ca.path, e.to_string()))?;
        }
        let store = Arc::new(store);

        let cert_chain = cert.certs("node certificate")?;
        let key_der = PrivateKeyDer::from_pem_slice(key.pem.as_bytes())
            .map_err(|e| material("node key", key.path, pem_reason(&e, "PRIVATE KEY")))?;
        let (leaf, intermediates) = cert_chain
            .split_first()
            .ok_or_else(|| material("node certificate", cert.path, "it is empty"))?;
        let identity = peer_identity(leaf).map_err(|e| match e {
            TlsError::NoIdentity { reason } => material("node certificate", cert.path, reason),
            other => other,
        })?;

        let provider = ring();
        rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key_der.clone_key(), &provider)
            .map_err(|e| {
                let reason = match e {
                    rustls::Error::InconsistentKeys(_) => {
                        "it does not belong to the node certificate".to_owned()
                    }
                    other => other.to_string(),
                };
                material("node key", key.path, reason)
            })?;

        let not_trusted = |e: rustls::Error| {
            material(
                "node certificate",
                cert.path,
                format!("it does not verify against the CA certificates: {e}"),
            )
        };
        let now = UnixTime::now();
        WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| material("CA certificate", ca.path, e.to_string()))?
            .verify_server_cert(leaf, intermediates, &server_name(&identity.dc)?, &[], now)
            .map_err(not_trusted)?;
        WebPkiClientVerifier::builder_with_provider(store, provider)
            .build()
            .map_err(|e| material("CA certificate", ca.path, e.to_string()))?
            .verify_client_cert(leaf, intermediates, now)
            .map_err(not_trusted)?;

        Ok(Self {
            roots,
            cert_chain,
            key: key_der,
            identity,
        })
    }

    /// The datacenter and node this material's certificate names.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The trusted CA certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The node certificate, then any intermediates.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// Whether the development CA is among the trusted roots (then anyone can join: `--dev` only).
    pub fn uses_dev_ca(&self) -> bool {
        CertificateDer::from_pem_slice(DEV_CA_CERT_PEM.as_bytes())
            .is_ok_and(|dev| self.roots.contains(&dev))
    }

    fn root_store(&self, side: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone()).map_err(|e| TlsError::Config {
                side,
                reason: e.to_string(),
            })?;
        }
        Ok(Arc::new(store))
    }

    /// A server configuration that requires a client certificate signed by the CA roots, presents
    /// this node's certificate, speaks TLS 1.3 and ALPN `h2`.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with(|webpki| webpki)
    }

    /// [`Self::server_config`] with the client verifier `wrap` makes of the WebPKI one.
    fn server_config_with(
        &self,
        wrap: impl FnOnce(Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        const SIDE: &str = "server";
        let config_err = |e: rustls::Error| TlsError::Config {
            side: SIDE,
            reason: e.to_string(),
        };
        let provider = ring();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.root_store(SIDE)?, provider.clone())
                .build()
                .map_err(|e| TlsError::Config {
                    side: SIDE,
                    reason: e.to_string(),
                })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(wrap(verifier))
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(config_err)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration that trusts only the CA roots, presents this node's certificate,
    /// speaks TLS 1.3 and ALPN `h2`. Verify servers with [`server_name`].
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        const SIDE: &str = "client";
        let config_err = |e: rustls::Error| TlsError::Config {
            side: SIDE,
            reason: e.to_string(),
        };
        let mut config = ClientConfig::builder_with_provider(ring())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(self.root_store(SIDE)?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(config_err)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

impl TlsMaterial {
    /// A server configuration for the LAN rpc port: like [`Self::server_config`], but a client
    /// must also hold a certificate naming this node's own datacenter, so a node of another DC
    /// under the same CA cannot join this DC's Raft group.
    pub fn lan_server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let dc = self.identity.dc.clone();
        self.server_config_with(move |inner| Arc::new(SameDcClientVerifier { inner, dc }))
    }

    /// A client configuration for joining a datacenter known only by address: the server must
    /// hold a certificate from the CA roots that is valid for the datacenter it names itself,
    /// which the caller then reads with [`peer_identity`]. Otherwise as [`Self::client_config`].
    pub fn discovery_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        const SIDE: &str = "client";
        let config_err = |e: rustls::Error| TlsError::Config {
            side: SIDE,
            reason: e.to_string(),
        };
        let provider = ring();
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.root_store(SIDE)?, provider.clone())
                .build()
                .map_err(|e| TlsError::Config {
                    side: SIDE,
                    reason: e.to_string(),
                })?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OwnDcVerifier { inner }))
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(config_err)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The signature checks of a verifier that wraps a WebPKI one in `inner`: only the certificate
/// check differs.
macro_rules! delegate_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Verifies a client certificate as WebPKI does, then requires it to name datacenter `dc`.
#[derive(Debug)]
struct SameDcClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    dc: String,
}

impl ClientCertVerifier for SameDcClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match peer_identity(end_entity) {
            Ok(id) if id.dc == self.dc => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    delegate_signature_checks!();
}

/// Verifies a server certificate as WebPKI does, against the name of the datacenter the
/// certificate itself names: proves "a federation server of some datacenter", for joins.
#[derive(Debug)]
struct OwnDcVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for OwnDcVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let identity = peer_identity(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        let name = server_name(&identity.dc)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    delegate_signature_checks!();
}

/// A TCP connection to `to`, from `source` when given (and of the same family).
async fn connect_tcp(
    to: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    match source {
        Some(ip) if ip.is_ipv4() == to.is_ipv4() => {
            let socket = if to.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
            socket.connect(to).await
        }
        _ => TcpStream::connect(to).await,
    }
}

/// Connects to `addr` as [`connect`] does, accepting a server of any datacenter under the CA
/// (`config` from [`TlsMaterial::discovery_client_config`]), and returns the identity its
/// certificate names.
pub async fn discover(
    config: Arc<ClientConfig>,
    addr: &str,
    timeout: Duration,
    source: Option<std::net::IpAddr>,
) -> Result<Identity, TlsError> {
    // The name is not checked by the discovery verifier; any valid one will do.
    let stream = connect_from(config, addr, "join", timeout, source).await?;
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| TlsError::NoIdentity {
            reason: format!("{addr} presented no certificate"),
        })?;
    peer_identity(cert)
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("roots", &self.roots.len())
            .field("cert_chain", &self.cert_chain.len())
            .field("uses_dev_ca", &self.uses_dev_ca())
            .finish_non_exhaustive()
    }
}

/// Sorts a failed handshake into [`TlsError::Handshake`], [`TlsError::WrongName`] (when the client
/// expected `expected_dc`) or [`TlsError::Io`].
fn handshake_error(peer: String, expected_dc: Option<&str>, err: io::Error) -> TlsError {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match (tls, expected_dc) {
        (
            Some(
                source @ rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ),
            ),
            Some(dc),
        ) => TlsError::WrongName {
            peer,
            expected_dc: dc.to_owned(),
            source: Box::new(source),
        },
        (Some(source), _) => TlsError::Handshake {
            peer,
            source: Box::new(source),
        },
        (None, _) => TlsError::Io {
            op: "TLS handshake with",
            peer,
            source: err,
        },
    }
}

/// Runs the server side of the handshake on `tcp`, bounded by `timeout`, and returns the stream
/// with the identity the client's (verified) certificate names.
#[tracing::instrument(level = "debug", skip_all, fields(peer))]
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Identity), TlsError> {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_owned(), |addr| addr.to_string());
    tracing::Span::current().record("peer", peer.as_str());
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(handshake_error(peer, None, err)),
        Err(_) => {
            return Err(TlsError::Timeout {
                op: "TLS handshake with",
                peer,
                after: timeout,
            });
        }
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| TlsError::NoIdentity {
            reason: format!("{peer} presented no certificate"),
        })?;
    let identity = peer_identity(cert)?;
    tracing::debug!(%identity, "federation peer authenticated");
    Ok((stream, identity))
}

/// Connects to `addr` (`host:port`, resolved now; each address is tried in turn) and runs the
/// client side of the handshake, requiring the server to be a server of `dc`. The whole (resolve,
/// connect, handshake) is bounded by `timeout`.
pub async fn connect(
    config: Arc<ClientConfig>,
    addr: &str,
    dc: &str,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    connect_from(config, addr, dc, timeout, None).await
}

/// [`connect`] from the local address `source` (any when `None`), so that WAN traffic leaves
/// from the node's own address on a host with several.
#[tracing::instrument(level = "debug", skip_all, fields(peer = addr, dc))]
pub async fn connect_from(
    config: Arc<ClientConfig>,
    addr: &str,
    dc: &str,
    timeout: Duration,
    source: Option<std::net::IpAddr>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    let name = server_name(dc)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let attempt = async {
        let addrs = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| TlsError::Io {
                op: "resolve",
                peer: addr.to_owned(),
                source,
            })?;
        let mut last_error = None;
        for sock_addr in addrs {
            let tcp = match connect_tcp(sock_addr, source).await {
                Ok(tcp) => tcp,
                Err(source) => {
                    tracing::debug!(%sock_addr, error = %source, "connect failed");
                    last_error = Some(TlsError::Io {
                        op: "connect to",
                        peer: sock_addr.to_string(),
                        source,
                    });
                    continue;
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            return connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|err| handshake_error(sock_addr.to_string(), Some(dc), err));
        }
        Err(last_error.unwrap_or_else(|| TlsError::Io {
            op: "resolve",
            peer: addr.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TlsError::Timeout {
            op: "TLS connection to",
            peer: addr.to_owned(),
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_rustls::TlsAcceptor;

    /// Handshake budget for the tests that expect success (loopback, so far more than enough).
    const LONG: Duration = Duration::from_secs(10);

    type Accepted = Result<(tokio_rustls::server::TlsStream<TcpStream>, Identity), TlsError>;

    fn node(ca: &PemPair, dc: &str, node: &str) -> TlsMaterial {
        let pair = create_node_cert(ca, dc, node, &[], 30).expect("node certificate");
        TlsMaterial::from_pem(&ca.cert_pem, &pair.cert_pem, &pair.key_pem).expect("material")
    }

    fn x509_of(pem: &str, check: impl FnOnce(&X509Certificate<'_>)) {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
        check(&x509);
    }

    /// A loopback listener whose first connection goes through [`accept`] with `timeout`.
    async fn serve_once(server: &TlsMaterial, timeout: Duration) -> (String, JoinHandle<Accepted>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let acceptor = TlsAcceptor::from(server.server_config().expect("server config"));
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("TCP accept");
            accept(&acceptor, tcp, timeout).await
        });
        (addr, task)
    }

    #[test]
    fn create_ca_makes_a_p256_ca_with_path_length_zero_for_ten_years() {
        let ca = create_ca(DEFAULT_CA_COMMON_NAME).expect("CA");
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        x509_of(&ca.cert_pem, |x509| {
            assert_eq!(x509.subject(), x509.issuer());
            let cn = x509.subject().iter_common_name().next().expect("CN");
            assert_eq!(cn.as_str().expect("CN text"), DEFAULT_CA_COMMON_NAME);
            let bc = x509
                .basic_constraints()
                .expect("ext")
                .expect("basicConstraints");
            assert!(bc.critical && bc.value.ca);
            assert_eq!(bc.value.path_len_constraint, Some(0));
            let ku = x509.key_usage().expect("ext").expect("keyUsage").value;
            assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
            assert_eq!(
                x509.public_key()
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok()),
                Some(x509_parser::oid_registry::OID_EC_P256)
            );
            let years = (x509.validity().not_after.timestamp()
                - x509.validity().not_before.timestamp())
                / (365 * 24 * 3600);
            assert_eq!(years, 10);
        });
        assert!(matches!(create_ca(" "), Err(TlsError::InvalidName { .. })));
    }

    #[test]
    fn node_cert_carries_the_federation_names_extra_sans_and_both_ekus() {
        let ca = create_ca("Test CA").expect("CA");
        let extra = ["10.0.0.7".to_owned(), "Fed.Example.COM".to_owned()];
        let pair = create_node_cert(&ca, "dc1", "n1", &extra, 90).expect("node certificate");
        x509_of(&pair.cert_pem, |x509| {
            let cn = x509.subject().iter_common_name().next().expect("CN");
            assert_eq!(cn.as_str().expect("CN text"), "n1.server.dc1.meridian");
            let sans = x509.subject_alternative_name().expect("ext").expect("SAN");
            let names: Vec<String> = sans
                .value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::DNSName(dns) => (*dns).to_owned(),
                    GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(
                names,
                [
                    "server.dc1.meridian",
                    "n1.server.dc1.meridian",
                    "ip:[10, 0, 0, 7]",
                    "fed.example.com"
                ]
            );
            let eku = x509.extended_key_usage().expect("ext").expect("EKU").value;
            assert!(eku.server_auth && eku.client_auth);
            let bc = x509
                .basic_constraints()
                .expect("ext")
                .expect("basicConstraints");
            assert!(!bc.value.ca);
            let days = (x509.validity().not_after.timestamp()
                - x509.validity().not_before.timestamp())
                / (24 * 3600);
            assert_eq!(days, 90, "90 days plus the clock-skew allowance");
        });
        let id =
            peer_identity(&CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("PEM"))
                .expect("identity");
        assert_eq!(
            id,
            Identity {
                dc: "dc1".into(),
                node: "n1".into()
            }
        );
    }

    /// (a) Two nodes of different datacenters, one CA: the handshake completes, the server sees
    /// the client's identity and the client has verified `server.dc1.meridian`.
    #[tokio::test]
    async fn nodes_of_two_dcs_signed_by_one_ca_complete_a_handshake() {
        let ca = create_ca("Test CA").expect("CA");
        let server = node(&ca, "dc1", "n1");
        let client = node(&ca, "dc2", "n2");
        assert_eq!(
            client.identity(),
            &Identity {
                dc: "dc2".into(),
                node: "n2".into()
            }
        );
        assert_eq!(
            server_name("dc1").expect("name").to_str(),
            "server.dc1.meridian"
        );

        let (addr, task) = serve_once(&server, LONG).await;
        let config = client.client_config().expect("client config");
        let mut tls = connect(config, &addr, "dc1", LONG)
            .await
            .expect("client handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));

        let (mut served, identity) = task.await.expect("join").expect("server handshake");
        assert_eq!(
            identity,
            Identity {
                dc: "dc2".into(),
                node: "n2".into()
            }
        );
        assert_eq!(served.get_ref().1.alpn_protocol(), Some(ALPN_H2));

        tls.write_all(b"ping").await.expect("client write");
        tls.flush().await.expect("client flush");
        let mut buf = [0; 4];
        served.read_exact(&mut buf).await.expect("server read");
        assert_eq!(&buf, b"ping");
        served.write_all(b"pong").await.expect("server write");
        served.flush().await.expect("server flush");
        tls.read_exact(&mut buf).await.expect("client read");
        assert_eq!(&buf, b"pong");
    }

    /// (b) A client whose certificate comes from another CA is refused by the server, even though
    /// the client itself trusts the server's CA.
    #[tokio::test]
    async fn client_with_a_certificate_from_another_ca_is_refused() {
        let ca = create_ca("Test CA").expect("CA");
        let rogue_ca = create_ca("Rogue CA").expect("rogue CA");
        let server = node(&ca, "dc1", "n1");
        let rogue = create_node_cert(&rogue_ca, "dc1", "n2", &[], 30).expect("rogue cert");
        let both_roots = format!("{}{}", ca.cert_pem, rogue_ca.cert_pem);
        let client =
            TlsMaterial::from_pem(&both_roots, &rogue.cert_pem, &rogue.key_pem).expect("material");

        let (addr, task) = serve_once(&server, LONG).await;
        // TLS 1.3: the client finishes its side before the server has judged its certificate.
        let client_result =
            connect(client.client_config().expect("config"), &addr, "dc1", LONG).await;
        let err = task
            .await
            .expect("join")
            .expect_err("server must refuse the client");
        assert!(
            matches!(
                &err,
                TlsError::Handshake { source, .. } if matches!(
                    **source,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                )
            ),
            "{err}"
        );
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        if let Ok(mut tls) = client_result {
            let mut buf = [0; 1];
            assert!(
                !matches!(tls.read(&mut buf).await, Ok(n) if n > 0),
                "the refused client must not receive data"
            );
        }
    }

    /// (c) A client expecting dc3 refuses a dc1 server: the name does not match.
    #[tokio::test]
    async fn client_expecting_another_dc_refuses_the_server() {
        let ca = create_ca("Test CA").expect("CA");
        let server = node(&ca, "dc1", "n1");
        let client = node(&ca, "dc3", "n3");
        let (addr, task) = serve_once(&server, LONG).await;
        let err = connect(client.client_config().expect("config"), &addr, "dc3", LONG)
            .await
            .expect_err("the name must not match");
        assert!(
            matches!(&err, TlsError::WrongName { expected_dc, .. } if expected_dc == "dc3"),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("\"dc3\""), "{err}");
        assert!(task.await.expect("join").is_err());
    }

    /// (d) Bytes that are not TLS make the handshake fail cleanly.
    #[tokio::test]
    async fn garbage_bytes_fail_the_handshake() {
        let ca = create_ca("Test CA").expect("CA");
        let server = node(&ca, "dc1", "n1");
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0u8; 64][..],
        ] {
            let (addr, task) = serve_once(&server, LONG).await;
            let mut tcp = TcpStream::connect(&addr).await.expect("TCP connect");
            tcp.write_all(garbage).await.expect("write garbage");
            let err = task.await.expect("join").expect_err("not TLS");
            assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
            assert!(!err.is_transient());
            drop(tcp);
        }
    }

    /// (d) A client that connects and says nothing is dropped when the timeout expires.
    #[tokio::test]
    async fn silent_client_times_out() {
        let ca = create_ca("Test CA").expect("CA");
        let server = node(&ca, "dc1", "n1");
        let timeout = Duration::from_millis(300);
        let (addr, task) = serve_once(&server, timeout).await;
        let tcp = TcpStream::connect(&addr).await.expect("TCP connect");
        let started = tokio::time::Instant::now();
        let err = task.await.expect("join").expect_err("silent client");
        let elapsed = started.elapsed();
        assert!(
            matches!(err, TlsError::Timeout { after, .. } if after == timeout),
            "{err}"
        );
        assert!(err.is_transient());
        assert!(elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
        drop(tcp);
    }

    #[tokio::test]
    async fn connect_to_a_closed_port_is_an_io_error() {
        let ca = create_ca("Test CA").expect("CA");
        let client = node(&ca, "dc1", "n1");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let err = connect(client.client_config().expect("config"), &addr, "dc1", LONG)
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(
                err,
                TlsError::Io {
                    op: "connect to",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_transient());
    }

    /// (e) Nodes made with the development CA federate, and are flagged as such.
    #[tokio::test]
    async fn dev_nodes_handshake_and_are_flagged_as_dev() {
        let server = TlsMaterial::dev("dc1", "n1").expect("dev server");
        let client = TlsMaterial::dev("dc2", "n2").expect("dev client");
        assert!(server.uses_dev_ca() && client.uses_dev_ca());
        let (addr, task) = serve_once(&server, LONG).await;
        connect(client.client_config().expect("config"), &addr, "dc1", LONG)
            .await
            .expect("client handshake");
        let (_, identity) = task.await.expect("join").expect("server handshake");
        assert_eq!(
            identity,
            Identity {
                dc: "dc2".into(),
                node: "n2".into()
            }
        );

        let ca = create_ca("Test CA").expect("CA");
        assert!(!node(&ca, "dc1", "n1").uses_dev_ca());
    }

    #[test]
    fn the_dev_ca_is_the_published_insecure_one_and_still_valid() {
        let ca = PemPair {
            cert_pem: DEV_CA_CERT_PEM.to_owned(),
            key_pem: DEV_CA_KEY_PEM.to_owned(),
        };
        ca_issuer(&ca).expect("the dev CA key matches its certificate");
        x509_of(DEV_CA_CERT_PEM, |x509| {
            let cn = x509.subject().iter_common_name().next().expect("CN");
            assert_eq!(cn.as_str().expect("CN text"), DEV_CA_COMMON_NAME);
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs();
            let left_days = (x509.validity().not_after.timestamp() - now as i64) / (24 * 3600);
            assert!(
                left_days > 365,
                "the development CA expires within a year: make a new one (see src/dev_ca/README.md)"
            );
        });
    }

    /// (f) Datacenter and node names must be lowercase DNS labels; extra SANs must not pose as
    /// federation names.
    #[test]
    fn invalid_names_and_sans_are_rejected() {
        let ca = create_ca("Test CA").expect("CA");
        let long = "a".repeat(64);
        for dc in ["", "DC1", "-dc", "dc-", "dc.1", "dc_1", long.as_str()] {
            let err = create_node_cert(&ca, dc, "n1", &[], 30).expect_err(dc);
            assert!(
                matches!(&err, TlsError::InvalidName { what: "datacenter name", value, .. } if value == dc),
                "{err}"
            );
        }
        let err = create_node_cert(&ca, "dc1", "N1", &[], 30).expect_err("uppercase node");
        assert_eq!(
            err.to_string(),
            "invalid node name \"N1\": only lowercase letters a-z, digits 0-9 and '-' are allowed"
        );
        create_node_cert(&ca, "d-1", &"n".repeat(63), &[], 30).expect("63-character label");
        for san in [
            "server.dc2.meridian",
            "n9.server.dc2.meridian",
            "*.dc2.meridian",
            "X.MERIDIAN",
            "*.example.com",
            "host.",
            "not a name",
        ] {
            let err = create_node_cert(&ca, "dc1", "n1", &[san.to_owned()], 30).expect_err(san);
            assert!(
                matches!(
                    &err,
                    TlsError::InvalidName {
                        what: "extra SAN",
                        ..
                    }
                ),
                "{err}"
            );
        }
        for days in [0, MAX_NODE_CERT_DAYS + 1] {
            assert!(matches!(
                create_node_cert(&ca, "dc1", "n1", &[], days),
                Err(TlsError::InvalidDays { .. })
            ));
        }
        assert!(server_name("Dc1").is_err());
    }

    #[test]
    fn identity_comes_only_from_a_node_server_name() {
        assert_eq!(
            identity_of("n1.server.dc1.meridian"),
            Some(Identity {
                dc: "dc1".into(),
                node: "n1".into()
            })
        );
        for name in [
            "server.dc1.meridian",
            "n1.client.dc1.meridian",
            "n1.server.dc1.consul",
            "a.n1.server.dc1.meridian",
            "-n.server.dc1.meridian",
            "n1.server..meridian",
        ] {
            assert_eq!(identity_of(name), None, "{name}");
        }

        let plain = rcgen::generate_simple_self_signed(["example.com".to_owned()]).expect("cert");
        let err = peer_identity(plain.cert.der()).expect_err("no identity");
        assert!(err.to_string().contains("example.com"), "{err}");
        let two = rcgen::generate_simple_self_signed([
            "n1.server.dc1.meridian".to_owned(),
            "n2.server.dc1.meridian".to_owned(),
        ])
        .expect("cert");
        assert!(matches!(
            peer_identity(two.cert.der()),
            Err(TlsError::NoIdentity { .. })
        ));
        assert!(peer_identity(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }

    #[test]
    fn material_that_does_not_fit_together_is_rejected() {
        let ca = create_ca("Test CA").expect("CA");
        let other_ca = create_ca("Other CA").expect("other CA");
        let n1 = create_node_cert(&ca, "dc1", "n1", &[], 30).expect("n1");
        let n2 = create_node_cert(&ca, "dc1", "n2", &[], 30).expect("n2");

        let err = TlsMaterial::from_pem(&ca.cert_pem, &n1.cert_pem, &n2.key_pem)
            .expect_err("key of another node");
        assert!(
            matches!(
                &err,
                TlsError::Material {
                    what: "node key",
                    ..
                }
            ),
            "{err}"
        );
        let err = TlsMaterial::from_pem(&other_ca.cert_pem, &n1.cert_pem, &n1.key_pem)
            .expect_err("signed by another CA");
        assert!(
            matches!(
                &err,
                TlsError::Material {
                    what: "node certificate",
                    ..
                }
            ),
            "{err}"
        );
        let err = TlsMaterial::from_pem(&ca.cert_pem, &ca.cert_pem, &ca.key_pem)
            .expect_err("the CA is not a node");
        assert!(err.to_string().contains("none of its DNS names"), "{err}");
        let err = TlsMaterial::from_pem("", &n1.cert_pem, &n1.key_pem).expect_err("no roots");
        assert!(
            matches!(
                &err,
                TlsError::Material {
                    what: "CA certificate",
                    ..
                }
            ),
            "{err}"
        );
        let err =
            TlsMaterial::from_pem(&ca.cert_pem, &n1.cert_pem, &n1.cert_pem).expect_err("no key");
        assert!(
            matches!(
                &err,
                TlsError::Material {
                    what: "node key",
                    ..
                }
            ),
            "{err}"
        );

        let wrong_key = PemPair {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other_ca.key_pem.clone(),
        };
        let err = create_node_cert(&wrong_key, "dc1", "n1", &[], 30).expect_err("CA key mismatch");
        assert!(
            matches!(&err, TlsError::Material { what: "CA key", .. }),
            "{err}"
        );
        let not_a_ca = PemPair {
            cert_pem: n1.cert_pem.clone(),
            key_pem: n1.key_pem.clone(),
        };
        let err = create_node_cert(&not_a_ca, "dc1", "n3", &[], 30).expect_err("not a CA");
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    #[test]
    fn from_files_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = create_ca("Test CA").expect("CA");
        let n1 = create_node_cert(&ca, "dc1", "n1", &[], 30).expect("n1");
        let ca_path = dir.path().join("ca.pem");
        let cert_path = dir.path().join("dc1-n1.pem");
        let key_path = dir.path().join("dc1-n1-key.pem");
        std::fs::write(&ca_path, &ca.cert_pem).expect("write");
        std::fs::write(&cert_path, &n1.cert_pem).expect("write");
        std::fs::write(&key_path, &n1.key_pem).expect("write");

        let material = TlsMaterial::from_files(&ca_path, &cert_path, &key_path).expect("load");
        assert_eq!(material.identity().to_string(), "dc1/n1");
        assert!(!format!("{material:?}").contains("PRIVATE"));

        let missing = dir.path().join("missing.pem");
        let err = TlsMaterial::from_files(&ca_path, &missing, &key_path).expect_err("missing");
        assert!(
            matches!(&err, TlsError::File { path, .. } if *path == missing),
            "{err}"
        );
        assert!(err.to_string().contains("missing.pem"), "{err}");

        std::fs::write(&key_path, "not a key").expect("write");
        let err = TlsMaterial::from_files(&ca_path, &cert_path, &key_path).expect_err("bad key");
        assert!(err.to_string().contains("dc1-n1-key.pem"), "{err}");
    }

    /// A CA made by another tool, with a subject in PrintableString and no subject key
    /// identifier: the certificates signed with it still chain to it.
    #[tokio::test]
    async fn a_foreign_ca_signs_certificates_that_chain_to_it() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CountryName,
            DnValue::PrintableString("NL".try_into().expect("printable")),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example Ops");
        params.distinguished_name.push(
            DnType::CommonName,
            DnValue::PrintableString("Ops Root".try_into().expect("printable")),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).expect("foreign CA");
        let ca = PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let server = node(&ca, "dc1", "n1");
        let client = node(&ca, "dc2", "n2");
        let (addr, task) = serve_once(&server, LONG).await;
        connect(client.client_config().expect("config"), &addr, "dc1", LONG)
            .await
            .expect("client handshake");
        task.await.expect("join").expect("server handshake");
    }
}
