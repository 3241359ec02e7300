//! Certificates for tests, through `meridian-identity` (the code `meridian tls` runs): one CA per
//! run, and node certificates written as the files an agent's `[federation]` section names.

use std::path::{Path, PathBuf};

use anyhow::Result;
use meridian_identity::{PemPair, Role, create_ca, create_node_cert};

/// A CA and the folder its files go to.
pub struct Pki {
    /// The CA (certificate and key).
    pub ca: PemPair,
    dir: PathBuf,
}

/// The three files of one node: the CA's certificate, the node's certificate and its key.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

impl Pki {
    /// A new CA whose certificate is written to `dir/meridian-ca.pem`.
    pub fn new(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = create_ca("Meridian test CA")?;
        std::fs::write(dir.join("meridian-ca.pem"), &ca.cert_pem)?;
        Ok(Pki {
            ca,
            dir: dir.to_owned(),
        })
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("meridian-ca.pem")
    }

    /// A server certificate for node `node` of `dc` (valid 30 days, with `extra_sans`), written
    /// to `dir/<dc>-<node>.pem` and `dir/<dc>-<node>-key.pem`.
    pub fn node_files(&self, dc: &str, node: &str, extra_sans: &[String]) -> Result<NodeFiles> {
        self.role_files(dc, node, Role::Server, extra_sans)
    }

    /// [`Pki::node_files`] for a node in `role`.
    pub fn role_files(
        &self,
        dc: &str,
        node: &str,
        role: Role,
        extra_sans: &[String],
    ) -> Result<NodeFiles> {
        let pair = create_node_cert(&self.ca, dc, node, role, extra_sans, 30)?;
        let cert = self.dir.join(format!("{dc}-{node}.pem"));
        let key = self.dir.join(format!("{dc}-{node}-key.pem"));
        std::fs::write(&cert, &pair.cert_pem)?;
        std::fs::write(&key, &pair.key_pem)?;
        Ok(NodeFiles {
            ca: self.ca_file(),
            cert,
            key,
        })
    }
}
