//! The JSON shapes Consul's HTTP API answers with (PascalCase, same types), built from the
//! catalog's model, so that existing Consul clients decode our answers unchanged.
//!
//! They borrow from the view they describe: a read serializes straight from the catalog instead
//! of copying every string of every instance first.

use std::collections::BTreeMap;

use meridian_topology::dc::DcState;
use meridian_topology::{Check, Instance, Node, Proxy};
use serde::Serialize;

use crate::duration::format_go_duration;

/// Metadata of a node missing from the catalog.
static NO_META: BTreeMap<String, String> = BTreeMap::new();

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
pub struct NodeJson<'a> {
    /// Consul's node UUID; Meridian nodes have none yet, so it is empty.
    #[serde(rename = "ID")]
    pub id: &'static str,
    /// Node name.
    pub node: &'a str,
    /// Node address.
    pub address: &'a str,
    /// Datacenter.
    pub datacenter: &'a str,
    /// `lan`, `lan_ipv4`, `wan`, `wan_ipv4`: the node's address, as Consul fills them by default.
    pub tagged_addresses: BTreeMap<&'static str, &'a str>,
    /// Node metadata.
    pub meta: &'a BTreeMap<String, String>,
    /// Raft index that created the node.
    pub create_index: u64,
    /// Raft index that last changed the node.
    pub modify_index: u64,
}

impl<'a> NodeJson<'a> {
    /// Builds the node `name` of datacenter `dc`; a node missing from the catalog gets an empty
    /// address rather than failing the whole answer.
    pub fn new(dc: &'a str, name: &'a str, node: Option<&'a Node>) -> Self {
        let address = node.map_or("", |n| n.address.as_str());
        NodeJson {
            id: "",
            node: name,
            address,
            datacenter: dc,
            tagged_addresses: tagged(address),
            meta: node.map_or(&NO_META, |n| &n.meta),
            create_index: node.map_or(0, |n| n.create_index),
            modify_index: node.map_or(0, |n| n.modify_index),
        }
    }
}

fn tagged(address: &str) -> BTreeMap<&'static str, &str> {
    let mut m = BTreeMap::new();
    if address.is_empty() {
        return m;
    }
    m.insert("lan", address);
    m.insert("wan", address);
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => {
            m.insert("lan_ipv4", address);
            m.insert("wan_ipv4", address);
        }
        Ok(std::net::IpAddr::V6(_)) => {
            m.insert("lan_ipv6", address);
            m.insert("wan_ipv6", address);
        }
        Err(_) => {}
    }
    m
}

/// An instance as `/v1/agent/services` and a health entry's `Service` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceJson<'a> {
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: &'a str,
    /// Service name.
    pub service: &'a str,
    /// Tags.
    pub tags: &'a [String],
    /// Metadata.
    pub meta: &'a BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// Instance address (empty: the node's).
    pub address: &'a str,
    /// SRV weights.
    pub weights: WeightsJson,
    /// Always false (no anti-entropy).
    pub enable_tag_override: bool,
    /// Datacenter.
    pub datacenter: &'a str,
    /// Raft index that created the instance.
    pub create_index: u64,
    /// Raft index that last changed the instance.
    pub modify_index: u64,
    /// `connect-proxy` for a sidecar; omitted for a typical service, as Consul omits it.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kind: &'static str,
    /// A sidecar's proxy block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyJson<'a>>,
}

/// Consul's `Proxy` block of a `connect-proxy` instance.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyJson<'a> {
    /// The service the sidecar fronts.
    pub destination_service_name: &'a str,
    /// That service's instance ID.
    #[serde(rename = "DestinationServiceID")]
    pub destination_service_id: &'a str,
    /// Where the application listens.
    pub local_service_address: &'a str,
    /// The application's port.
    pub local_service_port: u16,
    /// Always empty (no transparent proxy).
    pub mode: &'static str,
    /// Always empty: across DCs Meridian's gateways are always used.
    pub mesh_gateway: BTreeMap<&'static str, &'static str>,
    /// Always empty.
    pub expose: BTreeMap<&'static str, &'static str>,
    /// The services the application calls through the sidecar.
    pub upstreams: Vec<UpstreamJson<'a>>,
}

/// One entry of a `Proxy.Upstreams`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpstreamJson<'a> {
    /// Always `service`.
    pub destination_type: &'static str,
    /// The service called.
    pub destination_name: &'a str,
    /// A fixed datacenter, or empty.
    pub datacenter: &'a str,
    /// The local listening address.
    pub local_bind_address: &'a str,
    /// The local listening port.
    pub local_bind_port: u16,
    /// Always empty.
    pub mesh_gateway: BTreeMap<&'static str, &'static str>,
}

impl<'a> ProxyJson<'a> {
    /// Builds from the model's proxy block.
    pub fn new(p: &'a Proxy) -> Self {
        ProxyJson {
            destination_service_name: &p.destination_service,
            destination_service_id: &p.destination_id,
            local_service_address: &p.local_address,
            local_service_port: p.local_port,
            mode: "",
            mesh_gateway: BTreeMap::new(),
            expose: BTreeMap::new(),
            upstreams: p
                .upstreams
                .iter()
                .map(|u| UpstreamJson {
                    destination_type: "service",
                    destination_name: &u.destination,
                    datacenter: &u.datacenter,
                    local_bind_address: &u.bind_address,
                    local_bind_port: u.bind_port,
                    mesh_gateway: BTreeMap::new(),
                })
                .collect(),
        }
    }
}

impl<'a> AgentServiceJson<'a> {
    /// Builds from an instance of datacenter `dc`.
    pub fn new(dc: &'a str, i: &'a Instance) -> Self {
        AgentServiceJson {
            id: &i.id,
            service: &i.service,
            tags: &i.tags,
            meta: &i.meta,
            port: i.port,
            address: &i.address,
            weights: i.weights.into(),
            enable_tag_override: false,
            datacenter: dc,
            create_index: i.create_index,
            modify_index: i.modify_index,
            kind: i.kind(),
            proxy: i.proxy.as_deref().map(ProxyJson::new),
        }
    }
}

/// A health check as `/v1/health/service/...` and `/v1/agent/checks` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheckJson<'a> {
    /// Node.
    pub node: &'a str,
    /// Check ID.
    #[serde(rename = "CheckID")]
    pub check_id: &'a str,
    /// Name.
    pub name: &'a str,
    /// `passing`, `warning` or `critical`.
    pub status: &'static str,
    /// Notes.
    pub notes: &'a str,
    /// Output of the last run.
    pub output: &'a str,
    /// Instance ID (empty for node checks).
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    /// Service name.
    pub service_name: &'a str,
    /// The instance's tags.
    pub service_tags: &'a [String],
    /// `tcp`, `http`, `ttl` or empty.
    #[serde(rename = "Type")]
    pub kind: &'static str,
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

impl<'a> HealthCheckJson<'a> {
    /// Builds from a check; `tags` are its instance's.
    pub fn new(c: &'a Check, tags: &'a [String]) -> Self {
        let (interval, timeout) = match &c.spec {
            Some(s) if c.type_name() != "ttl" => (
                format_go_duration(s.interval),
                format_go_duration(s.timeout),
            ),
            _ => (String::new(), String::new()),
        };
        HealthCheckJson {
            node: &c.node,
            check_id: &c.id,
            name: &c.name,
            status: c.status.as_str(),
            notes: &c.notes,
            output: &c.output,
            service_id: &c.service_id,
            service_name: &c.service_name,
            service_tags: if c.service_id.is_empty() { &[] } else { tags },
            kind: c.type_name(),
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
pub struct ServiceEntryJson<'a> {
    /// The node.
    pub node: NodeJson<'a>,
    /// The instance.
    pub service: AgentServiceJson<'a>,
    /// Its checks and its node's.
    pub checks: Vec<HealthCheckJson<'a>>,
}

impl<'a> ServiceEntryJson<'a> {
    /// Builds the entry of `inst` from the datacenter's state.
    pub fn new(dc_name: &'a str, dc: &'a DcState, inst: &'a Instance) -> Self {
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
pub struct CatalogServiceJson<'a> {
    /// Node UUID (empty).
    #[serde(rename = "ID")]
    pub id: &'static str,
    /// Node name.
    pub node: &'a str,
    /// Node address.
    pub address: &'a str,
    /// Datacenter.
    pub datacenter: &'a str,
    /// The node's tagged addresses.
    pub tagged_addresses: BTreeMap<&'static str, &'a str>,
    /// The node's metadata.
    pub node_meta: &'a BTreeMap<String, String>,
    /// Empty for a typical service, `connect-proxy` for a sidecar.
    pub service_kind: &'static str,
    /// A sidecar's proxy block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_proxy: Option<ProxyJson<'a>>,
    /// Instance ID.
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    /// Service name.
    pub service_name: &'a str,
    /// Tags.
    pub service_tags: &'a [String],
    /// Instance address.
    pub service_address: &'a str,
    /// SRV weights.
    pub service_weights: WeightsJson,
    /// Metadata.
    pub service_meta: &'a BTreeMap<String, String>,
    /// Port.
    pub service_port: u16,
    /// Always false.
    pub service_enable_tag_override: bool,
    /// Raft index that created the instance.
    pub create_index: u64,
    /// Raft index that last changed the instance.
    pub modify_index: u64,
}

impl<'a> CatalogServiceJson<'a> {
    /// Builds the entry of `inst` from the datacenter's state.
    pub fn new(dc_name: &'a str, dc: &'a DcState, inst: &'a Instance) -> Self {
        let node = NodeJson::new(dc_name, &inst.node, dc.node(&inst.node));
        CatalogServiceJson {
            id: node.id,
            node: node.node,
            address: node.address,
            datacenter: node.datacenter,
            tagged_addresses: node.tagged_addresses,
            node_meta: node.meta,
            service_kind: inst.kind(),
            service_proxy: inst.proxy.as_deref().map(ProxyJson::new),
            service_id: &inst.id,
            service_name: &inst.service,
            service_tags: &inst.tags,
            service_address: &inst.address,
            service_weights: inst.weights.into(),
            service_meta: &inst.meta,
            service_port: inst.port,
            service_enable_tag_override: false,
            create_index: inst.create_index,
            modify_index: inst.modify_index,
        }
    }
}

/// `/v1/catalog/node/{node}`: a node and its instances by ID (Consul's `NodeServices`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServicesJson<'a> {
    /// The node.
    pub node: NodeJson<'a>,
    /// Its instances, by ID.
    pub services: BTreeMap<&'a str, AgentServiceJson<'a>>,
}

/// `/v1/catalog/node-services/{node}`: a node and its instances as a list (Consul's
/// `NodeServiceList`); `Node` is null for a node the catalog does not hold.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServiceListJson<'a> {
    /// The node, if known.
    pub node: Option<NodeJson<'a>>,
    /// Its instances.
    pub services: Vec<AgentServiceJson<'a>>,
}

/// The checks of `checks` as Consul shows them, each with its instance's tags.
pub fn checks_json<'a>(
    dc: &'a DcState,
    checks: impl Iterator<Item = &'a Check> + 'a,
) -> Vec<HealthCheckJson<'a>> {
    checks
        .map(|c| {
            let tags = dc
                .instance(&c.node, &c.service_id)
                .map(|i| i.tags.as_slice())
                .unwrap_or_default();
            HealthCheckJson::new(c, tags)
        })
        .collect()
}
