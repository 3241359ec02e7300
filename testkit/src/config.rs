//! A typed writer of `meridian agent` configuration files, so that no test, benchmark or chaos
//! scenario writes TOML with `format!`. [`AgentConfig`] holds what they set; anything rarer goes
//! into [`AgentConfig::extra`] as TOML values under its section. `meridian-node` has a test that
//! parses what this writes with the agent's own `Config`, so the two cannot drift apart.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ports::Ports;

/// The management token the kit's agents get unless a test says otherwise; [`crate::process`]'s
/// HTTP clients present it.
pub const TEST_TOKEN: &str = "meridian-test-management-token";

/// One voter of the agent's datacenter.
#[derive(Clone, Debug, Serialize)]
pub struct Server {
    /// Its Raft node id.
    pub id: u64,
    /// `host:port` of its rpc port.
    pub rpc: String,
}

/// Raft timings.
#[derive(Clone, Debug, Serialize)]
pub struct Raft {
    /// Leader heartbeat.
    pub heartbeat_ms: u64,
    /// Election timeout, low end.
    pub election_timeout_min_ms: u64,
    /// Election timeout, high end.
    pub election_timeout_max_ms: u64,
}

impl Raft {
    /// Fast elections, for tests (the ratios are the defaults').
    pub fn fast() -> Raft {
        Raft {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
        }
    }
}

/// Another DC to federate with.
#[derive(Clone, Debug, Serialize)]
pub struct Peer {
    /// Its name.
    pub dc: String,
    /// `host:port` of its nodes' WAN ports.
    pub addresses: Vec<String>,
}

impl Peer {
    /// Datacenter `dc` as one node at WAN port `wan` on 127.0.0.1.
    pub fn on_loopback(dc: &str, wan: u16) -> Peer {
        Peer {
            dc: dc.to_owned(),
            addresses: vec![format!("127.0.0.1:{wan}")],
        }
    }
}

/// `[federation]`: the node's certificates and the DCs it follows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Federation {
    /// The CA's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The node's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The node's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Services exported to other DCs (all when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<Vec<String>>,
    /// WAN addresses of nodes of other DCs to join.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    /// Other DCs, by name, with addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
}

impl Federation {
    /// The node certificate files `certs` holds for it (see [`crate::certs::Pki::node_files`]).
    pub fn with_certs(ca: &Path, cert: &Path, key: &Path) -> Federation {
        Federation {
            ca_file: Some(ca.to_owned()),
            cert_file: Some(cert.to_owned()),
            key_file: Some(key.to_owned()),
            ..Federation::default()
        }
    }
}

/// `[acl]`.
#[derive(Clone, Debug, Serialize)]
pub struct Acl {
    /// The management token.
    pub management_token: String,
    /// Scoped tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<AclToken>,
}

impl Acl {
    /// Only a management token.
    pub fn management(token: &str) -> Acl {
        Acl {
            management_token: token.to_owned(),
            tokens: Vec::new(),
        }
    }
}

/// One `[[acl.tokens]]`.
#[derive(Clone, Debug, Serialize)]
pub struct AclToken {
    /// What it is for.
    pub description: String,
    /// Its secret.
    pub secret: String,
    /// `read`, `write` or `operator`.
    pub scope: String,
    /// The services a `write` token may change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// One agent's configuration file.
#[derive(Clone, Debug, Serialize)]
pub struct AgentConfig {
    /// Its datacenter.
    pub datacenter: String,
    /// Its node name.
    pub node_name: String,
    /// Its Raft node id.
    pub node_id: u64,
    /// The address its listeners bind to.
    pub bind: IpAddr,
    /// The address others reach it at, when not `bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<IpAddr>,
    /// Its data folder.
    pub data_dir: PathBuf,
    /// The rpc port in plain text and no certificates (refused unless said).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Only the gateway: no catalog, no vote.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gateway_only: bool,
    /// Its ports.
    pub ports: Ports,
    /// Raft timings.
    pub raft: Raft,
    /// Its DC's voters (every node lists all of them, itself included).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Certificates and peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federation: Option<Federation>,
    /// The ACL (none: the HTTP API is open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Acl>,
    /// Other sections and keys, merged in as written: `extra["failover"]["nearest_n"] = 0`.
    #[serde(skip)]
    pub extra: toml::Table,
}

impl AgentConfig {
    /// A one-node DC `dc`, node `node` (id 1, its own only voter) on 127.0.0.1 with `ports`,
    /// data in `data_dir`, fast Raft, the rpc port in plain text, and the API behind
    /// [`TEST_TOKEN`].
    pub fn new(dc: &str, node: &str, ports: Ports, data_dir: &Path) -> AgentConfig {
        AgentConfig {
            datacenter: dc.to_owned(),
            node_name: node.to_owned(),
            node_id: 1,
            bind: IpAddr::from([127, 0, 0, 1]),
            advertise: None,
            data_dir: data_dir.to_owned(),
            insecure: true,
            gateway_only: false,
            ports,
            raft: Raft::fast(),
            servers: vec![Server {
                id: 1,
                rpc: format!("127.0.0.1:{}", ports.rpc),
            }],
            federation: None,
            acl: Some(Acl::management(TEST_TOKEN)),
            extra: toml::Table::new(),
        }
    }

    /// This configuration with the HTTP API open to anyone (no `[acl]`, `acl.enabled = false`),
    /// as benchmarks run it so that their figures measure the data path alone.
    pub fn open_api(mut self) -> AgentConfig {
        self.acl = None;
        self.set("acl", "enabled", false);
        self
    }

    /// Sets `section.key = value` in [`Self::extra`] (a top-level key when `section` is empty).
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        let table = if section.is_empty() {
            &mut self.extra
        } else {
            let entry = self
                .extra
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            match entry {
                toml::Value::Table(t) => t,
                _ => unreachable!("made a table just above"),
            }
        };
        table.insert(key.to_owned(), value.into());
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut doc = toml::Table::try_from(self)?;
        for (key, value) in &self.extra {
            match (doc.get_mut(key), value) {
                (Some(toml::Value::Table(have)), toml::Value::Table(add)) => {
                    have.extend(add.clone());
                }
                _ => {
                    doc.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(toml::to_string(&doc)?)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.to_toml()?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_keys_merge_into_their_sections() {
        let mut c = AgentConfig::new("dc1", "n1", Ports::free(), Path::new("/tmp/x"));
        c.federation = Some(Federation {
            join: vec!["127.0.0.1:1".into()],
            ..Federation::default()
        });
        c.set("federation", "heartbeat_ms", 100);
        c.set("failover", "nearest_n", 0);
        c.set("", "dev", false);
        let doc: toml::Table = toml::from_str(&c.to_toml().expect("toml")).expect("parses");
        assert_eq!(doc["datacenter"].as_str(), Some("dc1"));
        assert_eq!(doc["federation"]["heartbeat_ms"].as_integer(), Some(100));
        assert_eq!(doc["federation"]["join"][0].as_str(), Some("127.0.0.1:1"));
        assert_eq!(doc["failover"]["nearest_n"].as_integer(), Some(0));
        assert_eq!(doc["acl"]["management_token"].as_str(), Some(TEST_TOKEN));
        assert_eq!(doc["servers"].as_array().map(Vec::len), Some(1));
    }
}
