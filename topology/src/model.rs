//! The catalog's data model: nodes, service instances, health checks and their health.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Health of a check or of an instance (the worst of its checks), in Consul's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Healthy.
    Passing,
    /// Degraded but serving; still answered unless only passing instances are asked for.
    Warning,
    /// Not serving; never answered.
    Critical,
}

impl Health {
    /// Consul's lowercase name (`passing`, `warning`, `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    /// Parses Consul's lowercase name.
    pub fn parse(s: &str) -> Option<Health> {
        match s {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A machine that runs a Meridian agent and hosts service instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name, a DNS label, unique in its datacenter.
    pub name: String,
    /// Address other machines reach the node at.
    pub address: String,
    /// Free-form metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Raft index that created the node.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index that last changed the node.
    #[serde(default)]
    pub modify_index: u64,
}

/// SRV weights an instance gets while passing and while warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while all checks pass.
    pub passing: u32,
    /// Weight while any check warns.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One registered instance of a service on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance ID, unique on its node (defaults to the service name).
    pub id: String,
    /// Service name, a DNS label.
    pub service: Arc<str>,
    /// Node that registered the instance and runs its checks.
    pub node: Arc<str>,
    /// The instance's own address; empty means the node's address.
    #[serde(default)]
    pub address: String,
    /// Port the instance listens on.
    pub port: u16,
    /// Tags, in registration order.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// SRV weights.
    #[serde(default)]
    pub weights: Weights,
    /// Raft index that created the instance.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index that last changed the instance.
    #[serde(default)]
    pub modify_index: u64,
    /// Set when the instance is a mesh sidecar (Consul's `Kind: connect-proxy`): the service it
    /// fronts. A service's mesh endpoints are the proxies whose destination it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Arc<Proxy>>,
}

impl Instance {
    /// The key of the instance in its datacenter's catalog.
    pub fn key(&self) -> InstanceKey {
        InstanceKey::new(&self.node, &self.id)
    }

    /// Consul's `Kind`: `""` for a typical service, `connect-proxy` for a sidecar.
    pub fn kind(&self) -> &'static str {
        if self.proxy.is_some() {
            CONNECT_PROXY_KIND
        } else {
            ""
        }
    }
}

/// The most upstreams one sidecar registration carries (registration and federation refuse more).
pub const MAX_PROXY_UPSTREAMS: usize = 64;

/// Consul's `Kind` of a mesh sidecar.
pub const CONNECT_PROXY_KIND: &str = "connect-proxy";

/// What a mesh sidecar fronts and where its application listens (Consul's `Proxy` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// The service the sidecar accepts mesh connections for.
    pub destination_service: String,
    /// The instance ID of that service on the same node.
    #[serde(default)]
    pub destination_id: String,
    /// Where the sidecar relays accepted connections (empty: loopback).
    #[serde(default)]
    pub local_address: String,
    /// The application's port.
    #[serde(default)]
    pub local_port: u16,
    /// The services the application calls through the sidecar.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
}

/// One service an application reaches through its sidecar, on a local port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The service called.
    pub destination: String,
    /// A fixed datacenter; empty resolves by the failover policy.
    #[serde(default)]
    pub datacenter: String,
    /// The local address the sidecar listens on (empty: loopback).
    #[serde(default)]
    pub bind_address: String,
    /// The local port the sidecar listens on.
    pub bind_port: u16,
}

/// `(node, instance id)`: instance IDs are unique per node, as in Consul.
///
/// Both names live in one shared allocation, so the catalog's maps (instances, by service, by
/// destination) hold the same key for the price of a pointer each: with a million remote
/// instances, the key's copies (two owned strings in each map) were a fifth of a replica's
/// memory.
#[derive(Clone)]
pub struct InstanceKey {
    /// The node name, then the instance ID.
    text: Arc<str>,
    /// Where the node name ends in `text`.
    node_len: usize,
}

impl InstanceKey {
    /// Builds a key.
    pub fn new(node: &str, id: &str) -> Self {
        let mut text = String::with_capacity(node.len() + id.len());
        text.push_str(node);
        text.push_str(id);
        InstanceKey {
            text: text.into(),
            node_len: node.len(),
        }
    }

    /// The node name.
    pub fn node(&self) -> &str {
        self.text.get(..self.node_len).unwrap_or_default()
    }

    /// The instance ID on that node.
    pub fn id(&self) -> &str {
        self.text.get(self.node_len..).unwrap_or_default()
    }
}

impl PartialEq for InstanceKey {
    fn eq(&self, other: &Self) -> bool {
        self.node_len == other.node_len && self.text == other.text
    }
}

impl Eq for InstanceKey {}

impl Ord for InstanceKey {
    /// By node, then by ID (not by the joined text: `a`+`bc` and `ab`+`c` differ).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.node(), self.id()).cmp(&(other.node(), other.id()))
    }
}

impl PartialOrd for InstanceKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for InstanceKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.node().hash(state);
        self.id().hash(state);
    }
}

impl fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceKey")
            .field("node", &self.node())
            .field("id", &self.id())
            .finish()
    }
}

/// How a check decides its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    /// Passing while a TCP connect to `address` (`host:port`) succeeds.
    Tcp {
        /// `host:port` to connect to.
        address: String,
    },
    /// Passing on a 2xx answer, warning on 429, critical otherwise.
    Http {
        /// URL to request.
        url: String,
        /// HTTP method (GET by default).
        method: String,
        /// Extra request headers.
        #[serde(default)]
        headers: BTreeMap<String, Vec<String>>,
    },
    /// Set from outside through the agent API; critical when not refreshed within `ttl`.
    Ttl {
        /// How long a status holds without a refresh.
        ttl: Duration,
    },
}

impl CheckKind {
    /// Consul's name for the check type.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Ttl { .. } => "ttl",
        }
    }
}

/// How and how often a check runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// The kind of probe.
    pub kind: CheckKind,
    /// Time between runs (unused by TTL checks).
    pub interval: Duration,
    /// Time a single run may take.
    pub timeout: Duration,
    /// Deregister the instance after it has been critical this long.
    #[serde(default)]
    pub deregister_critical_after: Option<Duration>,
}

/// A health check and its current status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Check ID, unique on its node (`service:<id>` for a service's single check).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Node the check runs on.
    pub node: String,
    /// Instance the check belongs to; empty for a node-level check.
    #[serde(default)]
    pub service_id: String,
    /// Service name of that instance.
    #[serde(default)]
    pub service_name: String,
    /// Current status.
    pub status: Health,
    /// Output of the last run, or the note given with a TTL update.
    #[serde(default)]
    pub output: String,
    /// Operator notes.
    #[serde(default)]
    pub notes: String,
    /// How the check runs; `None` for checks only set from outside.
    #[serde(default)]
    pub spec: Option<CheckSpec>,
    /// Raft index that created the check.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index that last changed the check.
    #[serde(default)]
    pub modify_index: u64,
}

impl Check {
    /// Consul's `Type` field (`tcp`, `http`, `ttl`, or empty).
    pub fn type_name(&self) -> &'static str {
        self.spec.as_ref().map_or("", |s| s.kind.type_name())
    }
}
