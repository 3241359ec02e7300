//! The JSON shapes Consul's HTTP API answers with (PascalCase, same types), built from the
//! catalog's model, so that existing Consul clients decode our answers unchanged.

use std::collections::BTreeMap;

use meridian_topology::dc::DcState;
use meridian_topology::{Check, Instance, Node};
use serde::Serialize;

use crate::duration::format_go_duration;

/// SRV weights.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsJson {
    /// Weight while passing.
    pub passing: u32,
    /// Weight while warning.
    pub warning: u32,
}

impl From<meridian_topology::Weights> for WeightsJson {
    fn from(w: meridian_topology::Weights) -> Self {
        WeightsJson {
            passing: w.passing,
            warning: w.warning,
        }
    }
}

/// A node, as in `/v1/catalog/nodes` and the `Node` of a health entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson {
    /// Consul's node UUID; Meridian nodes have none yet, so it is empty.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// `lan`, `lan_ipv4`, `wan`, `wan_ipv4`: the node's address, as Consul fills them by default.
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    pub meta: BTreeMap<String, String>,
    /// Raft index that created the node.
    pub create_index: u64,
    /// Raft index that last changed the node.
    pub modify_index: u64,
}

impl NodeJson {
    /// Builds the node `name` of datacenter `dc`; a node missing from the catalog gets an empty
    /// address rather than failing the whole answer.
    pub fn new(dc: &str, name: &str, node: Option<&Node>) -> Self {
        let address = node.map(|n| n.address.clone()).unwrap_or_default();
        NodeJson {
            id: String::new(),
            node: name.to_owned(),
            datacenter: dc.to_owned(),
            tagged_addresses: tagged(&address),
            meta: node.map(|n| n.meta.clone()).unwrap_or_default(),
            address,
            create_index: node.map_or(0, |n| n.create_index),
            modify_index: node.map_or(0, |n| n.modify_index),
        }
    }
}

fn tagged(address: &str) -> BTreeMap<String, String> {
    if address.is_empty() {
        return BTreeMap::new();
    }
    let v4 = address.parse::<std::net::Ipv4Addr>().is_ok();
    let mut m = BTreeMap::new();
    for k in ["lan", "wan"] {
        m.insert(k.to_owned(), address.to_owned());
        let family = if v4 { "ipv4" } else { "ipv6" };
        if address.parse::<std::net::IpAddr>().is_ok() {
            m.insert(format!("{k}_{family}"), address.to_owned());
        }
    }
    m
}

/// An instance as `/v1/agent/services` and a health entry's `Service` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceJson {
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// Instance address (empty: the node's).
    pub address: String,
    /// SRV weights.
    pub weights: WeightsJson,
    /// Always false (no anti-entropy).
    pub enable_tag_override: bool,
    /// Datacenter.
    pub datacenter: String,
    /// Raft index that created the instance.
    pub create_index: u64,
    /// Raft index that last changed the instance.
    pub modify_index: u64,
}

impl AgentServiceJson {
    /// Builds from an instance of datacenter `dc`.
    pub fn new(dc: &str, i: &Instance) -> Self {
        AgentServiceJson {
            id: i.id.clone(),
            service: i.service.clone(),
            tags: i.tags.clone(),
            meta: i.meta.clone(),
            port: i.port,
            address: i.address.clone(),
            weights: i.weights.into(),
            enable_tag_override: false,
            datacenter: dc.to_owned(),
            create_index: i.create_index,
            modify_index: i.modify_index,
        }
    }
}

/// A health check as `/v1/health/service/...` and `/v1/agent/checks` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheckJson {
    /// Node.
    pub node: String,
    /// Check ID.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Notes.
    pub notes: String,
    /// Output of the last run.
    pub output: String,
    /// Instance ID (empty for node checks).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// The instance's tags.
    pub service_tags: Vec<String>,
    /// `tcp`, `http`, `ttl` or empty.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Interval as a Go duration (empty for TTL checks).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub interval: String,
    /// Timeout as a Go duration (empty for TTL checks).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub timeout: String,
    /// Raft index that created the check.
    pub create_index: u64,
    /// Raft index that last changed the check.
    pub modify_index: u64,
}

impl HealthCheckJson {
    /// Builds from a check; `tags` are its instance's.
    pub fn new(c: &Check, tags: &[String]) -> Self {
        let (interval, timeout) = match &c.spec {
            Some(s) if c.type_name() != "ttl" => (
                format_go_duration(s.interval),
                format_go_duration(s.timeout),
            ),
            _ => (String::new(), String::new()),
        };
        HealthCheckJson {
            node: c.node.clone(),
            check_id: c.id.clone(),
            name: c.name.clone(),
            status: c.status.as_str().to_owned(),
            notes: c.notes.clone(),
            output: c.output.clone(),
            service_id: c.service_id.clone(),
            service_name: c.service_name.clone(),
            service_tags: if c.service_id.is_empty() {
                Vec::new()
            } else {
                tags.to_vec()
            },
            kind: c.type_name().to_owned(),
            interval,
            timeout,
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }
}

/// One entry of `/v1/health/service/{name}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntryJson {
    /// The node.
    pub node: NodeJson,
    /// The instance.
    pub service: AgentServiceJson,
    /// Its checks and its node's.
    pub checks: Vec<HealthCheckJson>,
}

impl ServiceEntryJson {
    /// Builds the entry of `inst` from the datacenter's state.
    pub fn new(dc_name: &str, dc: &DcState, inst: &Instance) -> Self {
        ServiceEntryJson {
            node: NodeJson::new(dc_name, &inst.node, dc.node(&inst.node)),
            service: AgentServiceJson::new(dc_name, inst),
            checks: dc
                .checks_of(inst)
                .map(|c| HealthCheckJson::new(c, &inst.tags))
                .collect(),
        }
    }
}

/// One entry of `/v1/catalog/service/{name}` (Consul's `CatalogService`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogServiceJson {
    /// Node UUID (empty).
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// The node's tagged addresses.
    pub tagged_addresses: BTreeMap<String, String>,
    /// The node's metadata.
    pub node_meta: BTreeMap<String, String>,
    /// Always empty (typical service).
    pub service_kind: String,
    /// Instance ID.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Tags.
    pub service_tags: Vec<String>,
    /// Instance address.
    pub service_address: String,
    /// SRV weights.
    pub service_weights: WeightsJson,
    /// Metadata.
    pub service_meta: BTreeMap<String, String>,
    /// Port.
    pub service_port: u16,
    /// Always false.
    pub service_enable_tag_override: bool,
    /// Raft index that created the instance.
    pub create_index: u64,
    /// Raft index that last changed the instance.
    pub modify_index: u64,
}

impl CatalogServiceJson {
    /// Builds the entry of `inst` from the datacenter's state.
    pub fn new(dc_name: &str, dc: &DcState, inst: &Instance) -> Self {
        let node = NodeJson::new(dc_name, &inst.node, dc.node(&inst.node));
        CatalogServiceJson {
            id: node.id,
            node: node.node,
            address: node.address,
            datacenter: node.datacenter,
            tagged_addresses: node.tagged_addresses,
            node_meta: node.meta,
            service_kind: String::new(),
            service_id: inst.id.clone(),
            service_name: inst.service.clone(),
            service_tags: inst.tags.clone(),
            service_address: inst.address.clone(),
            service_weights: inst.weights.into(),
            service_meta: inst.meta.clone(),
            service_port: inst.port,
            service_enable_tag_override: false,
            create_index: inst.create_index,
            modify_index: inst.modify_index,
        }
    }
}
