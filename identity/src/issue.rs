//! Issuing: the CA and node certificates (`meridian tls` calls these).

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::string::{BmpString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use crate::error::TlsError;
use crate::error::{generate, material, pem_reason};
use crate::names::{Role, validate_label};
use crate::{CA_VALIDITY_DAYS, CLOCK_SKEW_ALLOWANCE, DOMAIN, MAX_NODE_CERT_DAYS};

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

/// Makes the certificate of node `node` of datacenter `dc` in `role`, signed by `ca`: ECDSA
/// P-256, DNS names `<role>.<dc>.meridian` and `<node>.<role>.<dc>.meridian` plus `extra_sans`
/// (IP addresses or DNS names outside `.meridian`), serverAuth and clientAuth, valid for `days`
/// days.
pub fn create_node_cert(
    ca: &PemPair,
    dc: &str,
    node: &str,
    role: Role,
    extra_sans: &[String],
    days: u32,
) -> Result<PemPair, TlsError> {
    validate_label("datacenter name", dc)?;
    validate_label("node name", node)?;
    if !(1..=MAX_NODE_CERT_DAYS).contains(&days) {
        return Err(TlsError::InvalidDays { days });
    }
    sign_node_cert(ca, dc, node, role, extra_sans, validity(days))
}

/// Signs a node certificate valid from `.0` to `.1` (no checks on the names or the period: the
/// caller's, or a test's that needs an expired one).
pub(crate) fn sign_node_cert(
    ca: &PemPair,
    dc: &str,
    node: &str,
    role: Role,
    extra_sans: &[String],
    (not_before, not_after): (SystemTime, SystemTime),
) -> Result<PemPair, TlsError> {
    let mut sans = vec![
        dns_san(role.dns_name(dc))?,
        dns_san(role.node_dns_name(dc, node))?,
    ];
    for extra in extra_sans {
        let san = extra_san(extra)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let issuer = ca_issuer(ca)?;
    sign_end_entity(
        &issuer,
        ("node key", "node certificate"),
        role.node_dns_name(dc, node),
        sans,
        (not_before, not_after),
    )
}

/// Signs an end-entity certificate with `issuer`: a fresh ECDSA P-256 key, common name `cn`,
/// `sans`, digitalSignature with serverAuth and clientAuth, valid from `.0` to `.1` of
/// `validity`. `what` names the key and the certificate in errors.
pub(crate) fn sign_end_entity(
    issuer: &Issuer<'static, KeyPair>,
    what: (&'static str, &'static str),
    cn: String,
    sans: Vec<SanType>,
    (not_before, not_after): (SystemTime, SystemTime),
) -> Result<PemPair, TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate(what.0))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.signed_by(&key, issuer).map_err(generate(what.1))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// `notBefore` (backdated by [`CLOCK_SKEW_ALLOWANCE`]) and `notAfter` for `days` days from now.
pub(crate) fn validity(days: u32) -> (SystemTime, SystemTime) {
    #[allow(clippy::disallowed_methods)] // Certificate dates are wall-clock time by nature.
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
pub(crate) fn ca_issuer(ca: &PemPair) -> Result<Issuer<'static, KeyPair>, TlsError> {
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
