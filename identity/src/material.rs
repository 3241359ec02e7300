//! A node's loaded TLS material and the rustls server and client configurations built from it.
//!
//! The configurations do not hold the certificates themselves: they resolve this node's
//! certificate and verify peers through the material's current keys at every handshake. So a
//! reload ([`TlsMaterial::reload_from_files`]) changes what every new connection presents and
//! trusts (the rpc port, federation, the QUIC tunnel, each holding its configurations since
//! start-up), and cuts no open one.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::TlsError;
use crate::error::{material, pem_reason};
use crate::issue::{PemPair, create_node_cert};
use crate::names::{Identity, Role, peer_identity};
use crate::{ALPN_H2, DEFAULT_NODE_CERT_DAYS, DEV_CA_CERT_PEM, DEV_CA_KEY_PEM, DOMAIN};

/// One PEM input and the file it came from, if any.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
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

pub(crate) fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS identity: the CA roots it trusts, its certificate chain and key, and the
/// [`Identity`] its certificate names. It never holds a CA key. Cheap to clone: clones share
/// the current keys, so a reload through any of them is seen by every configuration built from
/// any of them.
#[derive(Clone)]
pub struct TlsMaterial {
    /// What the certificate names; a reload must keep it.
    identity: Identity,
    keys: Arc<ArcSwap<Keys>>,
}

/// The material as loaded at one moment, with the verifiers built from its roots.
struct Keys {
    roots: Vec<CertificateDer<'static>>,
    certified: Arc<CertifiedKey>,
    identity: Identity,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TlsMaterial {
    /// Loads PEM text: `ca_pem` holds one or more CA certificates (the trusted roots), `cert_pem`
    /// the node certificate (then any intermediates), `key_pem` its private key.
    ///
    /// Fails unless the node certificate names a node, matches the key, and verifies against the
    /// roots now as both a server of its datacenter (in its role) and a client.
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
    /// [`crate::TlsMaterial::from_pem`]; errors name the file.
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

    /// Signs a fresh certificate for node `node` of `dc` in `role` with the **insecure**
    /// development CA, in memory. For `--dev` only: see [`DEV_CA_CERT_PEM`].
    pub fn dev(dc: &str, node: &str, role: Role) -> Result<Self, TlsError> {
        let ca = PemPair {
            cert_pem: DEV_CA_CERT_PEM.to_owned(),
            key_pem: DEV_CA_KEY_PEM.to_owned(),
        };
        let pair = create_node_cert(&ca, dc, node, role, &[], DEFAULT_NODE_CERT_DAYS)?;
        Self::from_pem(DEV_CA_CERT_PEM, &pair.cert_pem, &pair.key_pem)
    }

    fn load(ca: Source<'_>, cert: Source<'_>, key: Source<'_>) -> Result<Self, TlsError> {
        let keys = Keys::load(ca, cert, key)?;
        Ok(Self {
            identity: keys.identity.clone(),
            keys: Arc::new(ArcSwap::from_pointee(keys)),
        })
    }

    /// Loads the files again, as [`Self::from_files`] does, and makes them the material every
    /// new handshake uses, on both sides, in every configuration built from this material; open
    /// connections keep theirs. The certificate must name the same datacenter, node and role:
    /// anything else needs a restart. On error nothing changes.
    pub fn reload_from_files(&self, ca: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
        self.reload_from(&Self::from_files(ca, cert, key)?, Some(cert))
    }

    /// Makes `fresh`'s keys this material's, as [`Self::reload_from_files`] does with what it
    /// loaded (`cert`, when given, names the file in an error).
    pub fn reload_from(&self, fresh: &TlsMaterial, cert: Option<&Path>) -> Result<(), TlsError> {
        if fresh.identity != self.identity {
            return Err(material(
                "node certificate",
                cert,
                format!(
                    "it names {} but this node runs as {}: a new identity needs a restart",
                    fresh.identity, self.identity
                ),
            ));
        }
        self.keys.store(fresh.keys.load_full());
        Ok(())
    }

    /// The datacenter, node and role this material's certificate names.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether the development CA is among the trusted roots (then anyone can join: `--dev` only).
    pub fn uses_dev_ca(&self) -> bool {
        CertificateDer::from_pem_slice(DEV_CA_CERT_PEM.as_bytes())
            .is_ok_and(|dev| self.keys.load().roots.contains(&dev))
    }
}

impl Keys {
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
        let certified =
            CertifiedKey::from_der(cert_chain.clone(), key_der, &provider).map_err(|e| {
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
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone())
                .build()
                .map_err(|e| material("CA certificate", ca.path, e.to_string()))?;
        server_verifier
            .verify_server_cert(
                leaf,
                intermediates,
                &identity.role.server_name(&identity.dc)?,
                &[],
                now,
            )
            .map_err(not_trusted)?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(store, provider)
            .build()
            .map_err(|e| material("CA certificate", ca.path, e.to_string()))?;
        client_verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(not_trusted)?;

        Ok(Keys {
            roots,
            certified: Arc::new(certified),
            identity,
            server_verifier,
            client_verifier,
        })
    }
}

impl TlsMaterial {
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
        let mut config = ServerConfig::builder_with_provider(ring())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(wrap(Arc::new(Live(self.keys.clone()))))
            .with_cert_resolver(Arc::new(Live(self.keys.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration that trusts only the CA roots, presents this node's certificate,
    /// speaks TLS 1.3 and ALPN `h2`. Verify servers with [`server_name`].
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_with(|live| live)
    }

    /// A client configuration (TLS 1.3, ALPN `h2`, this node's certificate) whose server check
    /// is `wrap` around the CA roots' check.
    fn client_config_with(
        &self,
        wrap: impl FnOnce(Arc<dyn ServerCertVerifier>) -> Arc<dyn ServerCertVerifier>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let config_err = |e: rustls::Error| TlsError::Config {
            side: "client",
            reason: e.to_string(),
        };
        let mut config = ClientConfig::builder_with_provider(ring())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .dangerous()
            .with_custom_certificate_verifier(wrap(Arc::new(Live(self.keys.clone()))))
            .with_client_cert_resolver(Arc::new(Live(self.keys.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

impl TlsMaterial {
    /// A server configuration for the LAN rpc port: like [`Self::server_config`], but a client
    /// must also hold a server certificate naming this node's own datacenter, so neither a node
    /// of another DC under the same CA nor a gateway-only node can join this DC's Raft group.
    pub fn lan_server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let dc = self.identity.dc.clone();
        self.server_config_with(move |inner| Arc::new(SameDcServerVerifier { inner, dc }))
    }

    /// A client configuration for joining a datacenter known only by address: the server must
    /// hold a certificate from the CA roots that is valid for the datacenter it names itself,
    /// which the caller then reads with [`peer_identity`]. Otherwise as [`Self::client_config`].
    pub fn discovery_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_with(|inner| {
            Arc::new(OwnDcVerifier {
                inner,
                either_role: false,
            })
        })
    }
}

impl TlsMaterial {
    /// A client configuration for the tunnel: as [`Self::client_config`], but the far gateway
    /// may hold either role's certificate for the datacenter dialled (`server.<dc>.meridian`,
    /// or `gateway.<dc>.meridian` for a gateway-only node). Federation keeps
    /// [`Self::client_config`]: a gateway certificate never passes for a federation server.
    pub fn tunnel_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_with(|inner| Arc::new(EitherRoleVerifier { inner }))
    }

    /// A client configuration for joining through a gateway known only by address: as
    /// [`Self::discovery_client_config`], but the far end may hold either role's certificate,
    /// valid for the name of its own role and datacenter (a gateway-only node's gateway holds a
    /// gateway certificate). The caller reads whom it reached with [`peer_identity`].
    pub fn tunnel_discovery_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_with(|inner| {
            Arc::new(OwnDcVerifier {
                inner,
                either_role: true,
            })
        })
    }
}

/// The signature checks of a verifier that wraps another, reached as `self.<path>` (a field,
/// or the current keys' verifier): only the certificate check differs.
macro_rules! delegate_signature_checks {
    ($($inner:tt)+) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.$($inner)+.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.$($inner)+.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$($inner)+.supported_verify_schemes()
        }
    };
}

/// Verifies a client certificate as WebPKI does, then requires it to name a server of
/// datacenter `dc`.
#[derive(Debug)]
struct SameDcServerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    dc: String,
}

impl ClientCertVerifier for SameDcServerVerifier {
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
            Ok(id) if id.dc == self.dc && id.role == Role::Server => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    delegate_signature_checks!(inner);
}

/// Verifies a server certificate as WebPKI does, against the name of the datacenter the
/// certificate itself names: proves "a federation server of some datacenter", for joins (or,
/// with `either_role`, "a server or gateway of some datacenter", for joins through a gateway).
#[derive(Debug)]
struct OwnDcVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    /// The name checked is that of the role the certificate names (a gateway's too), not
    /// always a server's.
    either_role: bool,
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
        let role = if self.either_role {
            identity.role
        } else {
            Role::Server
        };
        let name = role
            .server_name(&identity.dc)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    delegate_signature_checks!(inner);
}

/// Verifies a server certificate as WebPKI does against the name dialled, a server's
/// (`server.<dc>.meridian`), or failing that against the gateway name of the same datacenter.
#[derive(Debug)]
struct EitherRoleVerifier {
    inner: Arc<dyn ServerCertVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for EitherRoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let first = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let Err(rustls::Error::InvalidCertificate(_)) = &first else {
            return first;
        };
        let server_prefix = format!("{}.", Role::Server.label());
        let gateway = match server_name {
            ServerName::DnsName(d) => d
                .as_ref()
                .strip_prefix(&server_prefix)
                .and_then(|rest| rest.strip_suffix(&format!(".{DOMAIN}")))
                .and_then(|dc| Role::Gateway.server_name(dc).ok()),
            _ => None,
        };
        match gateway {
            Some(name) => self
                .inner
                .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
                .or(first),
            None => first,
        }
    }

    delegate_signature_checks!(inner);
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("roots", &keys.roots.len())
            .field("cert_chain", &keys.certified.cert.len())
            .field("uses_dev_ca", &self.uses_dev_ca())
            .finish_non_exhaustive()
    }
}

/// The material's current keys, as every configuration built from it sees them: this node's
/// certificate for either side of a handshake, and the WebPKI verifiers of the current roots.
struct Live(Arc<ArcSwap<Keys>>);

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Live")
            .field(&self.0.load().identity)
            .finish()
    }
}

impl Live {
    /// The keys as they are now.
    fn keys(&self) -> arc_swap::Guard<Arc<Keys>> {
        self.0.load()
    }
}

impl ResolvesServerCert for Live {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.keys().certified.clone())
    }
}

impl ResolvesClientCert for Live {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.keys().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Live {
    /// No hints: the roots change with a reload and a borrowed list cannot follow them. Every
    /// Meridian client has one certificate and sends it regardless.
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.keys()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    delegate_signature_checks!(keys().client_verifier);
}

impl ServerCertVerifier for Live {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.keys().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    delegate_signature_checks!(keys().server_verifier);
}
