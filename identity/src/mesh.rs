//! The service mesh's identities, with no primary datacenter: every DC has a mesh CA of its own
//! (so it issues while cut off from every other), a workload certificate (leaf) names one service
//! of one DC by its SPIFFE ID, `spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`
//! (Consul's form), and a [`TrustBundle`] holds every DC's mesh CA roots. A peer's leaf is
//! accepted when it names the bundle's trust domain and a root **of the DC it names** signed it:
//! one DC's CA cannot speak for another DC's services.
//!
//! Leaves are ECDSA P-256, short-lived ([`DEFAULT_LEAF_TTL`]), and carry both serverAuth and
//! clientAuth, so one leaf serves a sidecar's inbound and outbound sides. Both sides verify by
//! SPIFFE ID, not by host name: [`TrustBundle::client_verifier`] for the side that accepts,
//! [`TrustBundle::server_verifier`] (with the service it expects) for the side that connects.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::error::{TlsError, generate, material, pem_reason};
use crate::issue::{PemPair, ca_issuer, sign_end_entity};
use crate::names::validate_label;
use crate::{CA_VALIDITY_DAYS, CLOCK_SKEW_ALLOWANCE};

/// How long a leaf is valid unless asked otherwise (Consul's default, 72 h); renew at two thirds.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);

/// The longest leaf [`issue_leaf`] signs.
pub const MAX_LEAF_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A workload's identity: one service of one datacenter, in one trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The federation's trust domain (`<uuid>.consul`, or any DNS name).
    pub trust_domain: String,
    /// The datacenter whose mesh CA vouches for it.
    pub dc: String,
    /// The service.
    pub service: String,
}

impl SpiffeId {
    /// The identity of `service` in `dc`, checked: a trust domain of DNS labels, a DC and a
    /// service that are labels (names compare ignoring case, so they are kept lowercase).
    pub fn new(trust_domain: &str, dc: &str, service: &str) -> Result<SpiffeId, TlsError> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_ascii_lowercase(),
            dc: dc.to_ascii_lowercase(),
            service: service.to_ascii_lowercase(),
        };
        check_trust_domain(&id.trust_domain)?;
        validate_label("datacenter name", &id.dc)?;
        validate_label("service name", &id.service)?;
        Ok(id)
    }

    /// `spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/ns/default/dc/{}/svc/{}",
            self.trust_domain, self.dc, self.service
        )
    }

    /// Reads a service identity URI (Consul's form, namespace `default`).
    pub fn parse(uri: &str) -> Result<SpiffeId, TlsError> {
        let bad = |reason| TlsError::InvalidName {
            what: "SPIFFE ID",
            value: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or(bad("it is not a spiffe:// URI"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", "default", "dc", dc, "svc", svc] => SpiffeId::new(td, dc, svc),
            [_, "ns", _, "dc", _, "svc", _] => Err(bad("only the default namespace exists")),
            _ => Err(bad(
                "it is not spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>",
            )),
        }
    }

    /// The identity a leaf certificate names (its one `spiffe://` URI SAN).
    pub fn of_cert(der: &CertificateDer<'_>) -> Result<SpiffeId, TlsError> {
        const WHAT: &str = "workload certificate";
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| material(WHAT, None, format!("it cannot be parsed: {e}")))?;
        let mut uris = x509
            .iter_extensions()
            .filter_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            });
        match (uris.next().as_deref(), uris.next()) {
            (Some([uri]), None) => SpiffeId::parse(uri),
            _ => Err(material(
                WHAT,
                None,
                "it does not name exactly one spiffe:// identity",
            )),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

fn check_trust_domain(td: &str) -> Result<(), TlsError> {
    if td.is_empty() || td.len() > 253 || td.split('.').any(|l| validate_label("x", l).is_err()) {
        return Err(TlsError::InvalidName {
            what: "trust domain",
            value: td.to_owned(),
            reason: "it must be a DNS name: labels of letters, digits and '-', separated by '.'",
        });
    }
    Ok(())
}

/// Makes datacenter `dc`'s mesh CA in `trust_domain`: self-signed, ECDSA P-256, a CA that signs
/// leaves only (path length 0), its URI SAN the trust domain (`spiffe://<trust-domain>`, as
/// Consul's roots), valid for [`CA_VALIDITY_DAYS`] days.
pub fn create_mesh_ca(trust_domain: &str, dc: &str) -> Result<PemPair, TlsError> {
    let (trust_domain, dc) = (trust_domain.to_ascii_lowercase(), dc.to_ascii_lowercase());
    check_trust_domain(&trust_domain)?;
    validate_label("datacenter name", &dc)?;
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate("mesh CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Meridian mesh CA {dc}"));
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (not_before, not_after) = crate::issue::validity(CA_VALIDITY_DAYS);
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params
        .self_signed(&key)
        .map_err(generate("mesh CA certificate"))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Signs a leaf for `id` with the mesh CA `ca` (its DC's), valid for `ttl` (at most
/// [`MAX_LEAF_TTL`]) from `now`, backdated by the clock-skew allowance.
pub fn issue_leaf(
    ca: &PemPair,
    id: &SpiffeId,
    now: SystemTime,
    ttl: Duration,
) -> Result<PemPair, TlsError> {
    if ttl.is_zero() || ttl > MAX_LEAF_TTL {
        return Err(TlsError::InvalidName {
            what: "leaf lifetime",
            value: format!("{ttl:?}"),
            reason: "it must be above zero and at most 30 days",
        });
    }
    sign_leaf(ca, id, period(now, ttl))
}

/// Signs a leaf valid from `.0` to `.1` (no check on the period: the caller's, or a test's that
/// needs an expired one).
pub(crate) fn sign_leaf(
    ca: &PemPair,
    id: &SpiffeId,
    (not_before, not_after): (SystemTime, SystemTime),
) -> Result<PemPair, TlsError> {
    let issuer = ca_issuer(ca)?;
    sign_end_entity(
        &issuer,
        ("leaf key", "leaf certificate"),
        id.service.clone(),
        vec![uri_san(&id.uri())?],
        (not_before, not_after),
    )
}

fn period(now: SystemTime, ttl: Duration) -> (SystemTime, SystemTime) {
    (
        now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now),
        now + ttl,
    )
}

fn uri_san(uri: &str) -> Result<SanType, TlsError> {
    Ok(SanType::URI(
        uri.to_owned().try_into().map_err(generate("URI SAN"))?,
    ))
}

/// What the Connect API shows of a CA or leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Colon-separated hex of the first 20 bytes of the certificate's SHA-256 (a stable ID).
    pub id: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// Subject common name.
    pub name: String,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: i64,
    /// See `not_before`.
    pub not_after: i64,
}

/// Reads [`CertInfo`] from a PEM certificate.
pub fn cert_info(pem: &str) -> Result<CertInfo, TlsError> {
    const WHAT: &str = "certificate";
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| material(WHAT, None, pem_reason(&e, "CERTIFICATE")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| material(WHAT, None, format!("it cannot be parsed: {e}")))?;
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Ok(CertInfo {
        id: hex(&digest.as_ref()[..20]),
        serial: hex(x509.raw_serial()),
        name: x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        not_before: x509.validity().not_before.timestamp(),
        not_after: x509.validity().not_after.timestamp(),
    })
}

/// Every DC's mesh CA roots, in one trust domain: what a sidecar trusts.
pub struct TrustBundle {
    trust_domain: String,
    /// The chain check of each DC's roots (a DC rotating its CA has two).
    by_dc: HashMap<String, Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut dcs: Vec<&String> = self.by_dc.keys().collect();
        dcs.sort();
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("dcs", &dcs)
            .finish()
    }
}

impl TrustBundle {
    /// The bundle of `roots`: `(dc, PEM of one of its mesh CA certificates)`.
    pub fn new(trust_domain: &str, roots: &[(String, String)]) -> Result<TrustBundle, TlsError> {
        let trust_domain = trust_domain.to_ascii_lowercase();
        check_trust_domain(&trust_domain)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut stores: HashMap<String, RootCertStore> = HashMap::new();
        for (dc, pem) in roots {
            validate_label("datacenter name", &dc.to_ascii_lowercase())?;
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| material("mesh CA root", None, pem_reason(&e, "CERTIFICATE")))?;
            stores
                .entry(dc.to_ascii_lowercase())
                .or_insert_with(RootCertStore::empty)
                .add(der)
                .map_err(|e| material("mesh CA root", None, e.to_string()))?;
        }
        let mut by_dc = HashMap::new();
        for (dc, store) in stores {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| material("mesh CA root", None, e.to_string()))?;
            by_dc.insert(dc, verifier);
        }
        Ok(TrustBundle {
            trust_domain,
            by_dc,
            provider,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Verifies the leaf a peer presented (with its `intermediates`) at `now`: it names this
    /// trust domain, and a root of the DC it names signed it, and it is valid now. Returns the
    /// identity it proves.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let unknown = || rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let id = SpiffeId::of_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        if id.trust_domain != self.trust_domain {
            return Err(unknown());
        }
        let verifier = self.by_dc.get(&id.dc).ok_or_else(unknown)?;
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        Ok(id)
    }

    /// The verifier of the side that accepts connections: every caller must present a leaf
    /// this bundle proves ([`TrustBundle::verify`]); read which with [`SpiffeId::of_cert`] on
    /// the connection's peer certificate.
    pub fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(MeshVerifier {
            bundle: self.clone(),
            expect: None,
        })
    }

    /// The verifier of the side that connects: the server must present a leaf this bundle
    /// proves, of the service `expect` (any DC).
    pub fn server_verifier(self: &Arc<Self>, expect: &str) -> Arc<dyn ServerCertVerifier> {
        Arc::new(MeshVerifier {
            bundle: self.clone(),
            expect: Some(expect.to_ascii_lowercase()),
        })
    }
}

/// The handshake signature checks of a verifier, by the crypto provider's algorithms (the same
/// for both directions; only the certificate check differs).
macro_rules! provider_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, self.algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, self.algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms().supported_schemes()
        }
    };
}

/// Verifies a peer's leaf by its SPIFFE ID and the roots of the DC it names (both directions).
#[derive(Debug)]
struct MeshVerifier {
    bundle: Arc<TrustBundle>,
    /// The service a server must be (the connecting side); `None` on the accepting side.
    expect: Option<String>,
}

impl MeshVerifier {
    fn algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.bundle.provider.signature_verification_algorithms
    }
}

impl ClientCertVerifier for MeshVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Many DCs' roots: no hints; a sidecar presents its one leaf anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.bundle.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    provider_signature_checks!();
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self.bundle.verify(end_entity, intermediates, now)?;
        match &self.expect {
            Some(service) if *service != id.service => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    provider_signature_checks!();
}

/// The certificate chain and key of `leaf`.
fn certified(
    leaf: &PemPair,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| material("workload certificate", None, pem_reason(&e, "CERTIFICATE")))?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
        .map_err(|e| material("workload key", None, pem_reason(&e, "PRIVATE KEY")))?;
    Ok((chain, key))
}

/// The accepting side of a mesh connection (a sidecar's inbound): TLS 1.3, presents `leaf`,
/// requires a caller's leaf that `bundle` proves.
pub fn server_config(
    bundle: &Arc<TrustBundle>,
    leaf: &PemPair,
) -> Result<Arc<ServerConfig>, TlsError> {
    let err = |e: rustls::Error| TlsError::Config {
        side: "mesh server",
        reason: e.to_string(),
    };
    let (chain, key) = certified(leaf)?;
    let config = ServerConfig::builder_with_provider(bundle.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_client_cert_verifier(bundle.client_verifier())
        .with_single_cert(chain, key)
        .map_err(err)?;
    Ok(Arc::new(config))
}

/// The connecting side of a mesh connection (a sidecar's outbound): TLS 1.3, presents `leaf`,
/// requires the server's leaf to be one `bundle` proves for service `expect`.
pub fn client_config(
    bundle: &Arc<TrustBundle>,
    leaf: &PemPair,
    expect: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let err = |e: rustls::Error| TlsError::Config {
        side: "mesh client",
        reason: e.to_string(),
    };
    let (chain, key) = certified(leaf)?;
    let config = ClientConfig::builder_with_provider(bundle.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .dangerous()
        .with_custom_certificate_verifier(bundle.server_verifier(expect))
        .with_client_auth_cert(chain, key)
        .map_err(err)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const TD: &str = "7b3a9f2e.consul";

    fn id(dc: &str, svc: &str) -> SpiffeId {
        SpiffeId::new(TD, dc, svc).expect("id")
    }

    fn der(pair: &PemPair) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("PEM")
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[allow(clippy::disallowed_methods)] // Certificates are dated by the wall clock.
    fn wall() -> SystemTime {
        SystemTime::now()
    }

    struct World {
        dc1: PemPair,
        dc2: PemPair,
        bundle: Arc<TrustBundle>,
    }

    fn world() -> World {
        let dc1 = create_mesh_ca(TD, "dc1").expect("dc1 CA");
        let dc2 = create_mesh_ca(TD, "dc2").expect("dc2 CA");
        let bundle = TrustBundle::new(
            TD,
            &[
                ("dc1".into(), dc1.cert_pem.clone()),
                ("dc2".into(), dc2.cert_pem.clone()),
            ],
        )
        .expect("bundle");
        World {
            dc1,
            dc2,
            bundle: Arc::new(bundle),
        }
    }

    #[test]
    fn spiffe_ids_are_consuls_form_and_read_back_from_the_leaf() {
        let web = id("DC1", "Web");
        assert_eq!(
            web.uri(),
            "spiffe://7b3a9f2e.consul/ns/default/dc/dc1/svc/web"
        );
        assert_eq!(SpiffeId::parse(&web.uri()).expect("parse"), web);
        assert!(SpiffeId::parse("spiffe://td/ns/team/dc/dc1/svc/web").is_err());
        assert!(SpiffeId::parse("https://td/ns/default/dc/dc1/svc/web").is_err());
        assert!(SpiffeId::new("bad domain", "dc1", "web").is_err());
        let w = world();
        let leaf = issue_leaf(&w.dc1, &web, wall(), DEFAULT_LEAF_TTL).expect("leaf");
        assert_eq!(SpiffeId::of_cert(&der(&leaf)).expect("id"), web);
        assert!(issue_leaf(&w.dc1, &web, wall(), MAX_LEAF_TTL * 2).is_err());
        assert!(
            SpiffeId::of_cert(&der(&w.dc1)).is_err(),
            "a root names no service"
        );
    }

    #[test]
    fn a_leaf_is_proved_only_by_the_roots_of_the_dc_it_names_in_its_lifetime() {
        let w = world();
        let good = issue_leaf(&w.dc2, &id("dc2", "api"), wall(), DEFAULT_LEAF_TTL).expect("leaf");
        assert_eq!(
            w.bundle.verify(&der(&good), &[], now()).expect("proved"),
            id("dc2", "api")
        );
        // dc1's CA may not speak for dc2's services.
        let forged = issue_leaf(&w.dc1, &id("dc2", "api"), wall(), DEFAULT_LEAF_TTL).expect("leaf");
        assert!(w.bundle.verify(&der(&forged), &[], now()).is_err());
        // A CA outside the bundle, though it claims dc1 in the same trust domain.
        let rogue = create_mesh_ca(TD, "dc1").expect("rogue CA");
        let foreign =
            issue_leaf(&rogue, &id("dc1", "web"), wall(), DEFAULT_LEAF_TTL).expect("leaf");
        assert!(w.bundle.verify(&der(&foreign), &[], now()).is_err());
        // Another trust domain.
        let other = SpiffeId::new("other.consul", "dc1", "web").expect("id");
        let elsewhere = issue_leaf(&w.dc1, &other, wall(), DEFAULT_LEAF_TTL).expect("leaf");
        assert!(w.bundle.verify(&der(&elsewhere), &[], now()).is_err());
        // Expired an hour ago.
        let hour = Duration::from_secs(3600);
        let expired = sign_leaf(
            &w.dc1,
            &id("dc1", "web"),
            (wall() - hour * 3, wall() - hour),
        )
        .expect("leaf");
        assert!(w.bundle.verify(&der(&expired), &[], now()).is_err());
        // A node certificate of the federation is not a workload.
        let fed = crate::create_ca("Federation").expect("CA");
        let node =
            crate::create_node_cert(&fed, "dc1", "n1", crate::Role::Server, &[], 30).expect("node");
        assert!(w.bundle.verify(&der(&node), &[], now()).is_err());
    }

    /// Runs one handshake over an in-memory pipe: the client's outcome, and the server's (with
    /// the caller's identity).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Result<(), String>, Result<SpiffeId, String>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(b)
                .await
                .map_err(|e| e.to_string())?;
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .ok_or("no peer certificate")?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            SpiffeId::of_cert(&peer).map_err(|e| e.to_string())
        });
        let name = ServerName::try_from("web.mesh").expect("name");
        let client = async {
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, a)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        }
        .await;
        let server = accept.await.unwrap_or_else(|e| Err(e.to_string()));
        (client, server)
    }

    #[tokio::test]
    async fn mutual_tls_between_dcs_proves_both_services_and_refuses_the_rest() {
        let w = world();
        let web = issue_leaf(&w.dc1, &id("dc1", "web"), wall(), DEFAULT_LEAF_TTL).expect("leaf");
        let api = issue_leaf(&w.dc2, &id("dc2", "api"), wall(), DEFAULT_LEAF_TTL).expect("leaf");
        let inbound = server_config(&w.bundle, &web).expect("server");

        // api in dc2 calls web in dc1: both sides proved.
        let outbound = client_config(&w.bundle, &api, "web").expect("client");
        let (client, server) = handshake(inbound.clone(), outbound).await;
        assert_eq!(client, Ok(()));
        assert_eq!(server, Ok(id("dc2", "api")));

        // The caller expected db, but reached web: the caller refuses.
        let wrong = client_config(&w.bundle, &api, "db").expect("client");
        let (client, _) = handshake(inbound.clone(), wrong).await;
        assert!(client.is_err(), "{client:?}");

        // A caller with a leaf of a foreign CA is refused by web.
        let rogue = create_mesh_ca(TD, "dc2").expect("rogue");
        let forged = issue_leaf(&rogue, &id("dc2", "api"), wall(), DEFAULT_LEAF_TTL).expect("leaf");
        let forged = client_config(&w.bundle, &forged, "web").expect("client");
        let (_, server) = handshake(inbound.clone(), forged).await;
        assert!(server.is_err(), "{server:?}");

        // A plain TLS client (no certificate) is refused.
        let plain = ClientConfig::builder_with_provider(w.bundle.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(w.bundle.server_verifier("web"))
            .with_no_client_auth();
        let (_, server) = handshake(inbound, Arc::new(plain)).await;
        assert!(server.is_err(), "{server:?}");
    }
}
