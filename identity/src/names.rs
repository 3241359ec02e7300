//! The names a node certificate carries, and the identity read back from a peer's certificate.

use std::fmt;

use rustls::pki_types::{CertificateDer, ServerName};
use x509_parser::extensions::GeneralName;

use crate::error::TlsError;
use crate::{DOMAIN, GATEWAY_LABEL, SERVER_LABEL};

/// What a node certificate lets its holder be. The role is a label of the certificate's names
/// (`<node>.<role>.<dc>.meridian`), so a peer that verifies one role's name cannot be shown a
/// certificate of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// A Raft voter of its datacenter: joins the rpc port, serves federation and the tunnel.
    #[default]
    Server,
    /// A gateway-only node: follows federation and opens tunnel streams; never a Raft member,
    /// never a federation endpoint of its datacenter.
    Gateway,
}

impl Role {
    /// The label that names the role in a certificate: `server` or `gateway`.
    pub fn label(self) -> &'static str {
        match self {
            Role::Server => SERVER_LABEL,
            Role::Gateway => GATEWAY_LABEL,
        }
    }

    /// The role a label names.
    pub fn from_label(label: &str) -> Option<Role> {
        [Role::Server, Role::Gateway]
            .into_iter()
            .find(|r| r.label() == label)
    }

    /// The DNS name every node of this role in `dc` carries: `<role>.<dc>.meridian`.
    pub fn dns_name(self, dc: &str) -> String {
        format!("{}.{dc}.{DOMAIN}", self.label())
    }

    /// The DNS name of one node of this role: `<node>.<role>.<dc>.meridian`.
    pub fn node_dns_name(self, dc: &str, node: &str) -> String {
        format!("{node}.{}.{dc}.{DOMAIN}", self.label())
    }

    /// The name a client verifies to prove its peer holds this role in `dc`.
    pub fn server_name(self, dc: &str) -> Result<ServerName<'static>, TlsError> {
        validate_label("datacenter name", dc)?;
        let name = self.dns_name(dc);
        ServerName::try_from(name.clone()).map_err(|_| TlsError::InvalidName {
            what: "server name",
            value: name,
            reason: "it is not a valid DNS name",
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::from_label(&s.to_ascii_lowercase())
            .ok_or_else(|| format!("{s:?} is not a role: use server or gateway"))
    }
}

/// Which node of which datacenter a certificate belongs to, in which role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The datacenter (a DNS label).
    pub dc: String,
    /// The node (a DNS label).
    pub node: String,
    /// What the certificate lets the node be.
    pub role: Role,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dc, self.node)?;
        if self.role != Role::Server {
            write!(f, " ({})", self.role)?;
        }
        Ok(())
    }
}

/// The DNS name every server of datacenter `dc` carries: `server.<dc>.meridian`.
pub fn server_dns_name(dc: &str) -> String {
    Role::Server.dns_name(dc)
}

/// The DNS name that identifies one server: `<node>.server.<dc>.meridian`.
pub fn node_dns_name(dc: &str, node: &str) -> String {
    Role::Server.node_dns_name(dc, node)
}

/// The name a client verifies to prove its peer is a server of `dc`: `server.<dc>.meridian`.
pub fn server_name(dc: &str) -> Result<ServerName<'static>, TlsError> {
    Role::Server.server_name(dc)
}

/// Checks that `value` is a lowercase DNS label (`a-z`, `0-9`, `-`; 1 to 63 characters; not
/// starting or ending with `-`); `what` names it in the error. The rule is
/// [`meridian_topology::names::is_label`], the one every name in Meridian follows, with upper
/// case refused: a certificate names a node in the one spelling that peers compare.
pub fn validate_label(what: &'static str, value: &str) -> Result<(), TlsError> {
    if is_label(value) {
        return Ok(());
    }
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > 63 {
        "it is longer than 63 characters"
    } else if value.starts_with('-') || value.ends_with('-') {
        "it starts or ends with '-'"
    } else {
        "only lowercase letters a-z, digits 0-9 and '-' are allowed"
    };
    Err(TlsError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    })
}

/// Whether `value` is a DNS label ([`meridian_topology::names::is_label`]) in lower case.
pub(crate) fn is_label(value: &str) -> bool {
    meridian_topology::names::is_label(value) && !value.bytes().any(|b| b.is_ascii_uppercase())
}

/// Reads the datacenter, node and role from a certificate's `<node>.<role>.<dc>.meridian` DNS
/// name.
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
            "none of its DNS names {dns_names:?} has the form <node>.{SERVER_LABEL}.<dc>.{DOMAIN} or <node>.{GATEWAY_LABEL}.<dc>.{DOMAIN}"
        ),
    })
}

/// The identity a DNS name `<node>.<role>.<dc>.meridian` stands for.
pub(crate) fn identity_of(dns_name: &str) -> Option<Identity> {
    let name = dns_name.to_ascii_lowercase();
    let mut labels = name.split('.');
    let (Some(node), Some(role), Some(dc), Some(domain), None) = (
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
    ) else {
        return None;
    };
    let role = Role::from_label(role)?;
    (domain == DOMAIN && is_label(node) && is_label(dc)).then(|| Identity {
        dc: dc.to_owned(),
        node: node.to_owned(),
        role,
    })
}
