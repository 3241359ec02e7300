//! The sidecar's TLS material: its service's leaf, the federation's trust bundle, and the rustls
//! configurations built from them, swapped as one value when the leaf is renewed or the roots
//! change. A connection takes the current value when it starts and keeps it: a renewal never
//! touches a connection already open.

use std::collections::HashMap;
use std::sync::Arc;

use meridian_identity::PemPair;
use meridian_identity::mesh::{TrustBundle, client_config, server_config};
use rustls::{ClientConfig, ServerConfig};

use crate::SidecarError;
use crate::agent::{LeafAnswer, RootsAnswer};

/// The material in force.
pub(crate) struct Material {
    /// The mesh's trust domain (the last part of Consul's mesh SNI).
    pub trust_domain: String,
    /// The local datacenter (the leaf's).
    pub dc: String,
    /// The leaf's serial, for the logs.
    pub serial: String,
    /// The inbound side: presents the leaf, requires a caller the bundle proves.
    pub server: Arc<ServerConfig>,
    /// The outbound side, by the service it expects at the other end.
    pub clients: HashMap<String, Arc<ClientConfig>>,
}

impl Material {
    /// Builds the configurations of `leaf` and `roots`, with a client side for each upstream
    /// service in `upstreams`.
    pub(crate) fn build(
        leaf: &LeafAnswer,
        roots: &RootsAnswer,
        upstreams: &[String],
    ) -> Result<Material, SidecarError> {
        let tls = |e: meridian_identity::TlsError| SidecarError::Tls(e.to_string());
        let pairs: Vec<(String, String)> = roots
            .roots
            .iter()
            .map(|r| (r.datacenter.clone(), r.root_cert.clone()))
            .collect();
        let bundle = Arc::new(TrustBundle::new(&roots.trust_domain, &pairs).map_err(tls)?);
        let pair = PemPair {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
        };
        let server = server_config(&bundle, &pair).map_err(tls)?;
        let mut clients = HashMap::new();
        for service in upstreams {
            let key = service.to_ascii_lowercase();
            if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(key) {
                let config = client_config(&bundle, &pair, slot.key()).map_err(tls)?;
                slot.insert(config);
            }
        }
        Ok(Material {
            trust_domain: bundle.trust_domain().to_owned(),
            dc: leaf.datacenter.to_ascii_lowercase(),
            serial: leaf.serial_number.clone(),
            server,
            clients,
        })
    }
}
