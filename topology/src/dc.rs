//! One datacenter's catalog state: nodes, instances, checks, prepared queries and its records of
//! API tokens and intentions, with their mutations.
//!
//! The maps are persistent (structure-shared) so that cloning a `DcState` to publish a new
//! [`View`](crate::View) costs O(1) however large the catalog is, and a mutation costs O(log n).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::instance_set::InstanceSet;
use crate::intention::{IntentionMap, IntentionRecord, MAX_INTENTION_RECORDS};
use crate::lww::Stamp;
use crate::mesh::{MAX_OTHER_ROOTS, MeshCa, MeshKey, MeshRoot, OtherRoot};
use crate::model::{Check, Health, Instance, InstanceKey, Node};
use crate::prepared::PreparedQuery;
use crate::token::{MAX_TOKEN_RECORDS, TokenMap, TokenRecord};

type CheckKey = (String, String);
/// Checks by node, then by check ID: lookups borrow the caller's strings, allocate nothing.
type ChecksByNode = OrdMap<String, NodeChecks>;

/// The checks on one node: by check ID, and the IDs of each instance's checks. One agent's node
/// may hold thousands of instances, each with its checks; without the second map, finding an
/// instance's checks (for its health, a registration, a removal) walked every check on the node,
/// and registering the node's n-th instance cost O(n).
#[derive(Clone, Debug, Default)]
struct NodeChecks {
    by_id: OrdMap<String, Arc<Check>>,
    /// Check IDs, sorted, by the service ID of the instance they belong to; the node's own
    /// checks under "". Shared slices: an instance has a check or two, and an `OrdMap` node
    /// copied on write clones its values.
    by_instance: OrdMap<String, Arc<[String]>>,
}

/// Two nodes' checks are the same when their checks are: `by_instance` follows from `by_id`.
impl PartialEq for NodeChecks {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id
    }
}

impl NodeChecks {
    fn get(&self, id: &str) -> Option<&Arc<Check>> {
        self.by_id.get(id)
    }

    /// Stores `c`, replacing the check with its ID; returns the one replaced.
    fn insert(&mut self, c: Arc<Check>) -> Option<Arc<Check>> {
        let old = self.by_id.insert(c.id.clone(), c.clone());
        match &old {
            Some(o) if o.service_id == c.service_id => {}
            Some(o) => {
                self.unlist(&o.service_id, &o.id);
                self.list(&c.service_id, &c.id);
            }
            None => self.list(&c.service_id, &c.id),
        }
        old
    }

    /// Removes the check `id`; returns it.
    fn remove(&mut self, id: &str) -> Option<Arc<Check>> {
        let old = self.by_id.remove(id)?;
        self.unlist(&old.service_id, &old.id);
        Some(old)
    }

    fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The checks of the instance `service_id` (with "", the node's own), by ID.
    fn of_instance<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Check> + use<'a> {
        let ids = self
            .by_instance
            .get(service_id)
            .map_or(&[][..], |ids| &ids[..]);
        ids.iter().filter_map(|id| self.by_id.get(id)).map(|c| &**c)
    }

    fn list(&mut self, service_id: &str, id: &str) {
        let ids = self
            .by_instance
            .get(service_id)
            .map_or(&[][..], |ids| &ids[..]);
        if let Err(at) = ids.binary_search_by(|i| i.as_str().cmp(id)) {
            let mut v = ids.to_vec();
            v.insert(at, id.to_owned());
            self.by_instance.insert(service_id.to_owned(), v.into());
        }
    }

    fn unlist(&mut self, service_id: &str, id: &str) {
        let Some(ids) = self.by_instance.get(service_id) else {
            return;
        };
        let Ok(at) = ids.binary_search_by(|i| i.as_str().cmp(id)) else {
            return;
        };
        if ids.len() == 1 {
            self.by_instance.remove(service_id);
        } else {
            let mut v = ids.to_vec();
            v.remove(at);
            self.by_instance.insert(service_id.to_owned(), v.into());
        }
    }
}

/// Service and node names are looked up case-insensitively (as DNS does, and Consul with it):
/// the maps are keyed by the lowercased name, which allocates only when the name has capitals.
fn lower(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Instances by lowercased name (a service's, or a destination's sidecars). The names are shared
/// (`Arc<str>`), not owned: every write copies the path to its set, and a copied leaf of owned
/// names was an allocation and a copy per name on it (a tenth of a catalog node's CPU under a
/// stream of registrations, `meridian-bench catalog`).
type NameIndex = OrdMap<Arc<str>, InstanceSet>;

/// Adds `inst` under `key` to the set of `name` in an index, creating the set. A new set's key
/// is `shared` itself when that is `name` and already lowercase (a service's name, which its
/// instances share), so that the index costs no allocation of its own per name.
fn index_in(
    index: &mut NameIndex,
    name: &str,
    shared: Option<&Arc<str>>,
    key: &InstanceKey,
    inst: Arc<Instance>,
) {
    let lowered = lower(name);
    if let Some(set) = index.get_mut(&*lowered) {
        set.insert(key, inst);
        return;
    }
    let mut set = InstanceSet::default();
    set.insert(key, inst);
    let name = match (lowered, shared) {
        (Cow::Borrowed(_), Some(shared)) => shared.clone(),
        (lowered, _) => Arc::from(&*lowered),
    };
    index.insert(name, set);
}

/// Removes `key` from the set of `name` in an index, and the set once empty.
fn unindex_in(index: &mut NameIndex, name: &str, key: &InstanceKey) {
    let name = lower(name);
    if let Some(set) = index.get_mut(&*name) {
        set.remove(key);
        if set.is_empty() {
            index.remove(&*name);
        }
    }
}

/// Whether an address string is the IP `ip` (hostnames never are).
fn same_ip(addr: &str, ip: IpAddr) -> bool {
    !addr.is_empty() && addr.parse::<IpAddr>().is_ok_and(|a| a == ip)
}

/// A datacenter's catalog at one Raft index.
#[derive(Clone, Debug, Default)]
pub struct DcState {
    nodes: OrdMap<String, Arc<Node>>,
    instances: OrdMap<InstanceKey, Arc<Instance>>,
    by_service: NameIndex,
    /// Mesh sidecars by the service they front (lowercase): that service's mesh endpoints.
    by_destination: NameIndex,
    checks: ChecksByNode,
    /// How many of `checks` are critical, kept by the check's one insert and one removal: a
    /// catalog with none has no instance that is down (see [`DcState::has_critical_checks`]).
    critical_checks: usize,
    /// Prepared queries by lowercased ID. They are the datacenter's own and never federated, so
    /// [`DcState::changes_since`] does not look at them.
    queries: OrdMap<String, Arc<PreparedQuery>>,
    /// Lowercased query name to lowercased query ID, for the queries that have a name.
    query_names: OrdMap<String, String>,
    /// Lowercased name (the prefix it answers; empty for a catch-all) to lowercased query ID,
    /// for the name-prefix templates.
    templates: OrdMap<String, String>,
    /// This DC's records of API tokens (its writes, or a replica of another DC's), federated
    /// to every DC.
    tokens: TokenMap,
    /// This DC's records of intentions, federated to every DC like the tokens.
    intentions: IntentionMap,
    /// The DC's mesh CA root (federated; in a replica, the origin's).
    mesh_root: Option<Arc<MeshRoot>>,
    /// The DC's mesh CA signing key (never federated; a replica has none).
    mesh_key: Option<Arc<MeshKey>>,
    /// The key of the next root while a rotation is under way (never federated).
    mesh_next_key: Option<Arc<MeshKey>>,
    index: u64,
}

/// Why [`DcState::set_query`] refused a query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryConflict {
    /// An update named a query that does not exist.
    #[error("no prepared query with ID {0:?}")]
    NotFound(String),
    /// A create named an ID that another query already has.
    #[error("a prepared query with ID {0:?} already exists")]
    IdTaken(String),
    /// Another query already has the name (ignoring case).
    #[error("name {name:?} aliases an existing query name (query {id})")]
    NameTaken {
        /// The name.
        name: String,
        /// The ID of the query that has it.
        id: String,
    },
}

/// The keys that differ between two states of one catalog (see [`DcState::changes_since`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes added, changed or removed, by lowercased name.
    pub nodes: Vec<String>,
    /// Instances added, changed or removed.
    pub instances: Vec<InstanceKey>,
    /// Nodes (as named by their checks) whose checks changed.
    pub check_nodes: Vec<String>,
    /// Token records added, changed or removed, by lowercased accessor ID.
    pub tokens: Vec<String>,
    /// Intention records added, changed or removed, by lowercased `source/destination`.
    pub intentions: Vec<String>,
    /// The mesh CA root changed.
    pub mesh_root: bool,
}

fn diff_key<'a, K, V>(d: imbl::ordmap::DiffItem<'a, 'a, K, V>) -> &'a K {
    match d {
        imbl::ordmap::DiffItem::Add(k, _) | imbl::ordmap::DiffItem::Remove(k, _) => k,
        imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k,
    }
}

/// A `DcState` flattened for snapshots and persistence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcSnapshot {
    /// Index of the last change.
    pub index: u64,
    /// All nodes.
    pub nodes: Vec<Node>,
    /// All instances.
    pub instances: Vec<Instance>,
    /// All checks.
    pub checks: Vec<Check>,
    /// All prepared queries (absent from snapshots written before queries existed).
    #[serde(default)]
    pub queries: Vec<PreparedQuery>,
    /// The DC's token records (absent from snapshots written before API tokens existed).
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
    /// The DC's intention records (absent from snapshots written before intentions existed).
    #[serde(default)]
    pub intentions: Vec<IntentionRecord>,
    /// The DC's mesh CA, key included (absent before the mesh CA existed).
    #[serde(default)]
    pub mesh_ca: Option<MeshCa>,
    /// The next root's key while a rotation is under way.
    #[serde(default)]
    pub mesh_next_key: Option<MeshKey>,
}

impl DcState {
    /// The Raft index of the last change that altered the catalog (not of the last entry applied).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// All nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|n| &**n)
    }

    /// A node by name, ignoring case.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(&*lower(name)).map(|n| &**n)
    }

    /// Names of the services with at least one instance, sorted (ignoring case), as registered.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.by_service
            .values()
            .filter_map(|set| set.first().map(|i| &*i.service))
    }

    /// Number of registered instances.
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// All instances of `service` (ignoring case), in key order.
    pub fn instances_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_service
            .get(&*lower(service))
            .into_iter()
            .flat_map(InstanceSet::iter)
    }

    /// The mesh sidecars (`connect-proxy` instances) whose destination is `service` (ignoring
    /// case), in key order.
    pub fn proxies_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_destination
            .get(&*lower(service))
            .into_iter()
            .flat_map(InstanceSet::iter)
    }

    /// All instances, in key order.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().map(|i| &**i)
    }

    /// The keys of all instances, in order.
    pub fn instance_keys(&self) -> impl Iterator<Item = &InstanceKey> {
        self.instances.keys()
    }

    /// An instance by its key.
    pub fn instance_at(&self, key: &InstanceKey) -> Option<&Instance> {
        self.instances.get(key).map(|i| &**i)
    }

    /// An instance by node and ID.
    pub fn instance(&self, node: &str, id: &str) -> Option<&Instance> {
        self.instance_at(&InstanceKey::new(node, id))
    }

    /// A check by node and check ID.
    pub fn check(&self, node: &str, id: &str) -> Option<&Check> {
        self.checks.get(node)?.get(id).map(|c| &**c)
    }

    /// The checks of the instance `service_id` on `node` only, not its node's (with an empty
    /// `service_id`, the node's own checks), by ID. Found without walking the node's other
    /// checks.
    pub fn instance_checks<'a>(
        &'a self,
        node: &str,
        service_id: &str,
    ) -> impl Iterator<Item = &'a Check> + use<'a> {
        self.checks
            .get(node)
            .map(|m| m.of_instance(service_id))
            .into_iter()
            .flatten()
    }

    /// All checks on `node`, node-level and service-level.
    pub fn checks_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks
            .get(node)
            .into_iter()
            .flat_map(|m| m.by_id.values())
            .map(|c| &**c)
    }

    /// The IDs of the checks on `node` added, changed or removed since `old`. Costs
    /// O(changes × log n) when this state was derived from `old` (shared subtrees are skipped),
    /// however many checks the node holds.
    pub fn checks_changed_on<'a>(&'a self, old: &'a DcState, node: &str) -> Vec<&'a str> {
        let ids = |m: &'a NodeChecks| m.by_id.keys().map(String::as_str).collect();
        match (old.checks.get(node), self.checks.get(node)) {
            (Some(o), Some(n)) => o
                .by_id
                .diff(&n.by_id)
                .map(|d| diff_key(d).as_str())
                .collect(),
            (None, Some(m)) | (Some(m), None) => ids(m),
            (None, None) => Vec::new(),
        }
    }

    /// All checks.
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .values()
            .flat_map(|m| m.by_id.values())
            .map(|c| &**c)
    }

    /// The checks that decide an instance's health: its own and its node's, by ID (as the
    /// node's checks are listed).
    pub fn checks_of<'a>(&'a self, inst: &'a Instance) -> impl Iterator<Item = &'a Check> + 'a {
        let mut node = self.instance_checks(&inst.node, "").peekable();
        let mut own = self.instance_checks(&inst.node, &inst.id).peekable();
        // Two lists sorted by ID, merged.
        std::iter::from_fn(move || match (node.peek(), own.peek()) {
            (Some(a), Some(b)) if b.id < a.id => own.next(),
            (Some(_), _) => node.next(),
            (None, _) => own.next(),
        })
    }

    /// The address an instance is reached at: its own, else its node's (empty if neither is
    /// known).
    pub fn address_of<'a>(&'a self, inst: &'a Instance) -> &'a str {
        if inst.address.is_empty() {
            self.node(&inst.node).map_or("", |n| n.address.as_str())
        } else {
            &inst.address
        }
    }

    /// Nodes whose address is `ip` (for reverse lookups). A linear scan: reverse lookups are rare.
    pub fn nodes_at(&self, ip: IpAddr) -> impl Iterator<Item = &Node> {
        self.nodes().filter(move |n| same_ip(&n.address, ip))
    }

    /// Instances with their own address equal to `ip` (for reverse lookups), in key order.
    pub fn instances_at(&self, ip: IpAddr) -> impl Iterator<Item = &Instance> {
        self.instances().filter(move |i| same_ip(&i.address, ip))
    }

    /// Where the DC's gateways take tunnelled connections: the address and port of every
    /// instance of [`GATEWAY_SERVICE`](crate::GATEWAY_SERVICE) that is not critical. An address
    /// that is not an IP is left out (the data plane does no DNS lookups).
    pub fn gateway_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.instances_of(crate::GATEWAY_SERVICE)
            .filter(|i| self.health_of(i) != Health::Critical)
            .filter_map(|i| {
                let ip = self.address_of(i).parse::<IpAddr>().ok()?;
                Some(std::net::SocketAddr::new(ip, i.port))
            })
            .collect()
    }

    /// Where this DC's own nodes reach its gateways: the address on their network of every
    /// instance of [`GATEWAY_SERVICE`](crate::GATEWAY_SERVICE) that is not critical
    /// ([`GATEWAY_LAN_META`](crate::GATEWAY_LAN_META)), else its advertised address.
    pub fn gateway_lan_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.instances_of(crate::GATEWAY_SERVICE)
            .filter(|i| self.health_of(i) != Health::Critical)
            .filter_map(|i| {
                let lan = i
                    .meta
                    .get(crate::GATEWAY_LAN_META)
                    .and_then(|a| a.parse().ok());
                lan.or_else(|| {
                    let ip = self.address_of(i).parse::<IpAddr>().ok()?;
                    Some(std::net::SocketAddr::new(ip, i.port))
                })
            })
            .collect()
    }

    /// Whether any check (of a node or an instance) is critical: without one, no instance is.
    pub fn has_critical_checks(&self) -> bool {
        self.critical_checks > 0
    }

    /// The worst status among an instance's checks; passing when it has none.
    pub fn health_of(&self, inst: &Instance) -> Health {
        // On the DNS path: the two lists without merging them (the order does not matter).
        self.instance_checks(&inst.node, "")
            .chain(self.instance_checks(&inst.node, &inst.id))
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    }

    /// Adds or replaces a node. Returns whether anything changed.
    pub fn upsert_node(&mut self, mut node: Node, index: u64) -> bool {
        let key = lower(&node.name).into_owned();
        match self.nodes.get(&key) {
            Some(old) => {
                node.create_index = old.create_index;
                node.modify_index = old.modify_index;
                if **old == node {
                    return false;
                }
            }
            None => node.create_index = index,
        }
        node.modify_index = index;
        self.nodes.insert(key, Arc::new(node));
        self.index = index;
        true
    }

    /// Registers (or re-registers) an instance with its checks, which replace the instance's
    /// previous checks. A check that already existed keeps its status and output, so a
    /// re-registration does not flap a healthy instance; a check ID that belongs to another
    /// instance on the node is skipped. Returns whether anything changed.
    pub fn register(&mut self, mut inst: Instance, checks: Vec<Check>, index: u64) -> bool {
        let key = inst.key();
        let old = self.instances.get(&key).cloned();
        let mut changed = false;
        match &old {
            Some(o) => {
                inst.create_index = o.create_index;
                inst.modify_index = o.modify_index;
                if **o != inst {
                    inst.modify_index = index;
                    changed = true;
                }
            }
            None => {
                inst.create_index = index;
                inst.modify_index = index;
                changed = true;
            }
        }
        if let Some(o) = &old {
            self.unindex(o, &key);
        }

        // Drop the instance's checks that the new registration no longer carries.
        let stale: Vec<CheckKey> = self
            .instance_checks(&inst.node, &inst.id)
            .filter(|c| !checks.iter().any(|n| n.id == c.id))
            .map(|c| (c.node.clone(), c.id.clone()))
            .collect();
        for (n, id) in stale {
            self.remove_check(&n, &id);
            changed = true;
        }
        for mut c in checks {
            match self.checks.get(&c.node).and_then(|m| m.get(&c.id)) {
                // A check ID belongs to one instance: a registration never takes over another's.
                Some(old) if old.service_id != c.service_id => continue,
                Some(old) => {
                    c.status = old.status;
                    c.output.clone_from(&old.output);
                    c.create_index = old.create_index;
                    c.modify_index = old.modify_index;
                    if **old != c {
                        c.modify_index = index;
                        self.insert_check(c);
                        changed = true;
                    }
                }
                None => {
                    c.create_index = index;
                    c.modify_index = index;
                    self.insert_check(c);
                    changed = true;
                }
            }
        }
        if changed {
            self.insert_instance(inst, key);
            self.index = index;
        } else if let Some(o) = old {
            // Unchanged: put back the index entries taken out above.
            self.insert_instance_arc(o, key);
        }
        changed
    }

    /// Removes an instance and its checks. Returns whether it existed.
    pub fn deregister(&mut self, node: &str, id: &str, index: u64) -> bool {
        if !self.remove_instance(node, id) {
            return false;
        }
        self.index = index;
        true
    }

    /// Sets a check's status and output. Returns `None` if there is no such check, otherwise
    /// whether anything changed.
    pub fn update_check(
        &mut self,
        node: &str,
        id: &str,
        status: Health,
        output: &str,
        index: u64,
    ) -> Option<bool> {
        let old = self.checks.get(node)?.get(id)?;
        if old.status == status && old.output == output {
            return Some(false);
        }
        let mut c = (**old).clone();
        c.status = status;
        c.output = output.to_owned();
        c.modify_index = index;
        self.insert_check(c);
        self.index = index;
        Some(true)
    }

    /// Adds or replaces one check, as given (status included): node-level when its
    /// `service_id` is empty, else of that instance on its node, whose service name it takes.
    /// Returns `None` when that instance does not exist, else whether anything changed.
    pub fn set_check(&mut self, mut c: Check, index: u64) -> Option<bool> {
        if !c.service_id.is_empty() {
            c.service_name = self.instance(&c.node, &c.service_id)?.service.to_string();
        }
        match self.checks.get(&c.node).and_then(|m| m.get(&c.id)) {
            Some(old) => {
                c.create_index = old.create_index;
                c.modify_index = old.modify_index;
                if **old == c {
                    return Some(false);
                }
            }
            None => c.create_index = index,
        }
        c.modify_index = index;
        self.insert_check(c);
        self.index = index;
        Some(true)
    }

    /// Removes one check (node-level or of an instance). Returns whether it existed.
    pub fn delete_check(&mut self, node: &str, id: &str, index: u64) -> bool {
        if self.check(node, id).is_none() {
            return false;
        }
        self.remove_check(node, id);
        self.index = index;
        true
    }

    /// Removes a node with every instance and check on it. Returns whether any of them existed.
    pub fn deregister_node(&mut self, name: &str, index: u64) -> bool {
        let name = self.node(name).map_or(name, |n| n.name.as_str()).to_owned();
        let ids: Vec<String> = self.instances_on(&name).map(|i| i.id.clone()).collect();
        let mut existed = !ids.is_empty();
        for id in ids {
            self.remove_instance(&name, &id);
        }
        let checks: Vec<String> = self.checks_on(&name).map(|c| c.id.clone()).collect();
        existed |= !checks.is_empty();
        for id in checks {
            self.remove_check(&name, &id);
        }
        existed |= self.remove_node(&name);
        if existed {
            self.index = index;
        }
        existed
    }

    /// The instances registered on `node` (exact name), in ID order.
    pub fn instances_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        let start = InstanceKey::new(node, "");
        let node = node.to_owned();
        self.instances
            .range(start..)
            .take_while(move |(k, _)| k.node() == node)
            .map(|(_, i)| &**i)
    }

    /// Sets a node and its node-level checks exactly as given, indexes included: the write side
    /// of a read-only replica, which mirrors its origin rather than merging.
    pub fn put_node(&mut self, node: Node, checks: Vec<Check>) {
        let stale: Vec<String> = self
            .instance_checks(&node.name, "")
            .map(|c| c.id.clone())
            .collect();
        for id in stale {
            self.remove_check(&node.name, &id);
        }
        for c in checks {
            self.insert_check(c);
        }
        self.nodes
            .insert(lower(&node.name).into_owned(), Arc::new(node));
    }

    /// Removes a node and its node-level checks (replicas). Returns whether it existed.
    pub fn remove_node(&mut self, name: &str) -> bool {
        let Some(old) = self.nodes.remove(&*lower(name)) else {
            return false;
        };
        let own: Vec<String> = self
            .instance_checks(&old.name, "")
            .map(|c| c.id.clone())
            .collect();
        for id in own {
            self.remove_check(&old.name, &id);
        }
        true
    }

    /// Sets an instance and its checks exactly as given, indexes included (replicas).
    pub fn put_instance(&mut self, inst: Instance, checks: Vec<Check>) {
        let key = inst.key();
        self.remove_instance_at(&key);
        for c in checks {
            self.insert_check(c);
        }
        self.insert_instance(inst, key);
    }

    /// Removes an instance and its checks without touching the index (replicas). Returns whether
    /// it existed.
    pub fn remove_instance(&mut self, node: &str, id: &str) -> bool {
        self.remove_instance_at(&InstanceKey::new(node, id))
    }

    /// [`DcState::remove_instance`] by key.
    fn remove_instance_at(&mut self, key: &InstanceKey) -> bool {
        let Some(old) = self.instances.remove(key) else {
            return false;
        };
        self.unindex(&old, key);
        let own: Vec<CheckKey> = self
            .instance_checks(key.node(), key.id())
            .map(|c| (c.node.clone(), c.id.clone()))
            .collect();
        for (n, id) in own {
            self.remove_check(&n, &id);
        }
        true
    }

    /// Sets the index the state is at (replicas follow their origin's index).
    pub fn set_index(&mut self, index: u64) {
        self.index = index;
    }

    /// What differs between `old` and this state, as keys. Costs O(changes × log n) when this
    /// state was derived from `old`, because shared subtrees are skipped.
    pub fn changes_since(&self, old: &DcState) -> Changes {
        let mut out = Changes::default();
        out.nodes
            .extend(old.nodes.diff(&self.nodes).map(|d| diff_key(d).clone()));
        out.instances.extend(
            old.instances
                .diff(&self.instances)
                .map(|d| diff_key(d).clone()),
        );
        out.check_nodes
            .extend(old.checks.diff(&self.checks).map(|d| diff_key(d).clone()));
        out.tokens
            .extend(self.tokens.changed_since(&old.tokens).map(str::to_owned));
        out.intentions.extend(
            self.intentions
                .changed_since(&old.intentions)
                .map(str::to_owned),
        );
        out.mesh_root = self.mesh_root != old.mesh_root;
        out
    }

    /// The DC's mesh CA root, if it has made one (in a replica: the origin's).
    pub fn mesh_root(&self) -> Option<&MeshRoot> {
        self.mesh_root.as_deref()
    }

    /// The DC's mesh CA, key included (none in a replica).
    pub fn mesh_ca(&self) -> Option<MeshCa> {
        Some(MeshCa {
            root: MeshRoot::clone(self.mesh_root.as_deref()?),
            key: MeshKey::clone(self.mesh_key.as_deref()?),
        })
    }

    /// Sets the DC's mesh CA, only if it has none yet or it is of another trust domain (the first
    /// one made wins: every server of the DC then signs with the same key). Returns whether it
    /// was taken.
    pub fn set_mesh_ca(&mut self, ca: MeshCa, index: u64) -> bool {
        if self
            .mesh_root
            .as_ref()
            .is_some_and(|r| r.trust_domain == ca.root.trust_domain)
        {
            return false;
        }
        self.mesh_root = Some(Arc::new(ca.root));
        self.mesh_key = Some(Arc::new(ca.key));
        self.mesh_next_key = None;
        self.index = index;
        true
    }

    /// Publishes `next` as the DC's next mesh root (trusted everywhere, signing nothing yet), at
    /// `now_ms`: only if the DC has a CA of the same trust domain and no rotation is under way.
    /// Retired roots past their end are dropped, and the oldest ones beyond
    /// [`MAX_OTHER_ROOTS`]. Returns whether it was taken.
    pub fn prepare_mesh_rotation(&mut self, next: MeshCa, now_ms: u64, index: u64) -> bool {
        let Some(root) = self.mesh_root.as_deref() else {
            return false;
        };
        if root.trust_domain != next.root.trust_domain
            || root.next().is_some()
            || self.mesh_key.is_none()
        {
            return false;
        }
        let mut root = root.clone();
        root.others.retain(|o| o.until_unix_ms > now_ms);
        root.others
            .sort_by_key(|o| std::cmp::Reverse(o.until_unix_ms));
        root.others.truncate(MAX_OTHER_ROOTS - 1);
        root.others.push(OtherRoot {
            cert_pem: next.root.cert_pem,
            since_unix_ms: now_ms,
            until_unix_ms: 0,
        });
        self.mesh_root = Some(Arc::new(root));
        self.mesh_next_key = Some(Arc::new(next.key));
        self.changed_at(true, index)
    }

    /// Makes the next root the active one (it signs from now on) and retires the old one, still
    /// trusted until `retire_until_ms`. Returns whether a rotation was under way.
    pub fn activate_mesh_rotation(&mut self, retire_until_ms: u64, index: u64) -> bool {
        let (Some(root), Some(key)) = (self.mesh_root.as_deref(), self.mesh_next_key.clone())
        else {
            return false;
        };
        let Some(next) = root.next().cloned() else {
            return false;
        };
        let mut others: Vec<OtherRoot> = root
            .others
            .iter()
            .filter(|o| !o.is_next())
            .cloned()
            .collect();
        others.push(OtherRoot {
            cert_pem: root.cert_pem.clone(),
            since_unix_ms: root.created_unix_ms,
            until_unix_ms: retire_until_ms.max(1),
        });
        others.sort_by_key(|o| std::cmp::Reverse(o.until_unix_ms));
        others.truncate(MAX_OTHER_ROOTS);
        let active = MeshRoot {
            trust_domain: root.trust_domain.clone(),
            cert_pem: next.cert_pem,
            created_unix_ms: next.since_unix_ms,
            others,
        };
        self.mesh_root = Some(Arc::new(active));
        self.mesh_key = Some(key);
        self.mesh_next_key = None;
        self.changed_at(true, index)
    }

    /// Puts the origin's mesh CA root into a replica (`None`: it has none).
    pub fn put_mesh_root(&mut self, root: Option<MeshRoot>) {
        self.mesh_root = root.map(Arc::new);
    }

    /// Moves the state's index to `index` if `changed`; returns `changed`.
    fn changed_at(&mut self, changed: bool, index: u64) -> bool {
        if changed {
            self.index = index;
        }
        changed
    }

    /// This DC's token records.
    pub fn tokens(&self) -> &TokenMap {
        &self.tokens
    }

    /// Applies a token write made in this DC: taken only if its stamp is later than the record
    /// it replaces (a write stamps after what its writer saw, so a stale retry is refused), and
    /// a new accessor ID only while fewer than [`MAX_TOKEN_RECORDS`] are kept. Returns whether
    /// it was taken.
    pub fn set_token(&mut self, token: TokenRecord, index: u64) -> bool {
        let taken = self.tokens.set(token, MAX_TOKEN_RECORDS);
        self.changed_at(taken, index)
    }

    /// Removes this DC's record of `accessor_id` if it is still the one stamped `stamp` (a
    /// later write of it is kept). Returns whether it was removed.
    pub fn prune_token(&mut self, accessor_id: &str, stamp: &Stamp, index: u64) -> bool {
        let removed = self.tokens.prune(accessor_id, stamp);
        self.changed_at(removed, index)
    }

    /// Puts a token record into a replica as its origin holds it.
    pub fn put_token(&mut self, token: TokenRecord) {
        self.tokens.put(token);
    }

    /// This DC's intention records.
    pub fn intentions(&self) -> &IntentionMap {
        &self.intentions
    }

    /// Applies an intention write made in this DC, as [`DcState::set_token`] does a token's
    /// (within [`MAX_INTENTION_RECORDS`]).
    pub fn set_intention(&mut self, intention: IntentionRecord, index: u64) -> bool {
        let taken = self.intentions.set(intention, MAX_INTENTION_RECORDS);
        self.changed_at(taken, index)
    }

    /// Removes this DC's record of the intention `key` if it is still the one stamped `stamp`.
    pub fn prune_intention(&mut self, key: &str, stamp: &Stamp, index: u64) -> bool {
        let removed = self.intentions.prune(key, stamp);
        self.changed_at(removed, index)
    }

    /// Puts an intention record into a replica as its origin holds it.
    pub fn put_intention(&mut self, intention: IntentionRecord) {
        self.intentions.put(intention);
    }

    /// Removes an intention record from a replica. Returns whether it was there.
    pub fn remove_intention(&mut self, key: &str) -> bool {
        self.intentions.remove(key)
    }

    /// Removes a token record from a replica. Returns whether it was there.
    pub fn remove_token(&mut self, accessor_id: &str) -> bool {
        self.tokens.remove(accessor_id)
    }

    fn insert_check(&mut self, c: Check) {
        let critical = c.status == Health::Critical;
        let replaced = self
            .checks
            .entry(c.node.clone())
            .or_default()
            .insert(Arc::new(c));
        self.critical_checks += usize::from(critical);
        if replaced.is_some_and(|old| old.status == Health::Critical) {
            self.critical_checks -= 1;
        }
    }

    fn remove_check(&mut self, node: &str, id: &str) {
        if let Some(m) = self.checks.get_mut(node) {
            if m.remove(id)
                .is_some_and(|old| old.status == Health::Critical)
            {
                self.critical_checks -= 1;
            }
            if m.is_empty() {
                self.checks.remove(node);
            }
        }
    }

    /// Stores `inst` under `key` (its key, which the caller has at hand).
    fn insert_instance(&mut self, mut inst: Instance, key: InstanceKey) {
        self.share_names(&mut inst, &key);
        self.insert_instance_arc(Arc::new(inst), key);
    }

    /// Points `inst`'s service and node names at the copies another instance already holds, so
    /// that a service's instances, and a node's, share one allocation of each name (a replica
    /// of a million instances otherwise holds a million copies of a few thousand names). A
    /// node's instances are neighbours in key order, so one of `key`'s neighbours is on the same
    /// node if any instance is.
    fn share_names(&self, inst: &mut Instance, key: &InstanceKey) {
        let same_service = self
            .by_service
            .get(&*lower(&inst.service))
            .and_then(InstanceSet::first);
        if let Some(other) = same_service
            && other.service == inst.service
        {
            inst.service = other.service.clone();
        }
        let same_node = self
            .instances
            .range::<_, InstanceKey>(..key)
            .next_back()
            .into_iter()
            .chain(self.instances.range::<_, InstanceKey>(key..).next())
            .find(|(k, _)| k.node() == key.node());
        if let Some((_, other)) = same_node {
            inst.node = other.node.clone();
        }
    }

    /// Stores an instance under its key, with its index entries (by service, and by destination
    /// for a proxy).
    fn insert_instance_arc(&mut self, inst: Arc<Instance>, key: InstanceKey) {
        let service = Some(&inst.service);
        index_in(
            &mut self.by_service,
            &inst.service,
            service,
            &key,
            inst.clone(),
        );
        if let Some(p) = &inst.proxy {
            let dest = &p.destination_service;
            index_in(&mut self.by_destination, dest, None, &key, inst.clone());
        }
        self.instances.insert(key, inst);
    }

    /// Takes an instance's index entries out (not the instance itself).
    fn unindex(&mut self, inst: &Instance, key: &InstanceKey) {
        unindex_in(&mut self.by_service, &inst.service, key);
        if let Some(p) = &inst.proxy {
            unindex_in(&mut self.by_destination, &p.destination_service, key);
        }
    }

    /// All prepared queries, by ID.
    pub fn queries(&self) -> impl Iterator<Item = &PreparedQuery> {
        self.queries.values().map(|q| &**q)
    }

    /// A prepared query by ID, ignoring case.
    pub fn query(&self, id: &str) -> Option<&PreparedQuery> {
        self.queries.get(&*lower(id)).map(|q| &**q)
    }

    /// A prepared query by name, ignoring case.
    pub fn query_named(&self, name: &str) -> Option<&PreparedQuery> {
        let id = self.query_names.get(&*lower(name))?;
        self.queries.get(id).map(|q| &**q)
    }

    /// The query a client executes as `id_or_name`, as Consul resolves it: by ID (a template
    /// only by name), then by exact name, then the template whose name is the longest prefix of
    /// it (names never have the shape of an ID, so the lookups cannot collide). A template comes
    /// back rendered for the name asked; any other query is borrowed as stored.
    pub fn resolve_query(&self, id_or_name: &str) -> Option<Cow<'_, PreparedQuery>> {
        if let Some(q) = self.query(id_or_name) {
            return (!q.is_template()).then_some(Cow::Borrowed(q));
        }
        let name = lower(id_or_name);
        let found = self.query_names.get(&*name).or_else(|| {
            if self.templates.is_empty() {
                return None;
            }
            // Longest first; every prefix ends on a character boundary.
            (0..name.len())
                .rev()
                .filter(|n| name.is_char_boundary(*n))
                .find_map(|n| self.templates.get(&name[..n]))
        })?;
        let q = self.queries.get(found)?;
        Some(if q.is_template() {
            Cow::Owned(q.render(id_or_name))
        } else {
            Cow::Borrowed(&**q)
        })
    }

    /// The ID of the query other than `key` that holds `query`'s name: a name is unique ignoring
    /// case, and so is the one catch-all template (the template with an empty name).
    fn name_holder(&self, name_key: &str, query: &PreparedQuery, key: &str) -> Option<&String> {
        let holder = if !name_key.is_empty() {
            self.query_names.get(name_key)
        } else if query.is_template() {
            self.templates.get(name_key)
        } else {
            None
        };
        holder.filter(|h| *h != key)
    }

    /// Adds `q` (stored under `key`) to the name indexes.
    fn index_query_name(&mut self, q: &PreparedQuery, key: &str) {
        let name = lower(&q.name).into_owned();
        if q.is_template() {
            self.templates.insert(name.clone(), key.to_owned());
        }
        if !name.is_empty() {
            self.query_names.insert(name, key.to_owned());
        }
    }

    /// Removes `q` from the name indexes.
    fn unindex_query_name(&mut self, q: &PreparedQuery) {
        let name = lower(&q.name);
        if q.is_template() {
            self.templates.remove(&*name);
        }
        self.query_names.remove(&*name);
    }

    /// Creates (`create`: the ID must be new) or replaces (the ID must exist) a prepared query.
    /// Its name must not be another query's. Indexes are set here; writing a query equal to the
    /// stored one changes nothing, so a create retried after a lost reply succeeds. Returns
    /// whether anything changed.
    pub fn set_query(
        &mut self,
        mut query: PreparedQuery,
        create: bool,
        index: u64,
    ) -> Result<bool, QueryConflict> {
        let key = lower(&query.id).into_owned();
        let old = self.queries.get(&key).cloned();
        match &old {
            None if !create => return Err(QueryConflict::NotFound(query.id)),
            None => query.create_index = index,
            Some(o) => {
                query.create_index = o.create_index;
                query.modify_index = o.modify_index;
                if **o == query {
                    return Ok(false);
                }
                if create {
                    return Err(QueryConflict::IdTaken(query.id));
                }
            }
        }
        let name_key = lower(&query.name).into_owned();
        if let Some(holder) = self.name_holder(&name_key, &query, &key) {
            return Err(QueryConflict::NameTaken {
                id: holder.clone(),
                name: query.name,
            });
        }
        if let Some(o) = &old {
            self.unindex_query_name(o);
        }
        self.index_query_name(&query, &key);
        query.modify_index = index;
        self.queries.insert(key, Arc::new(query));
        self.index = index;
        Ok(true)
    }

    /// Deletes a prepared query by ID (ignoring case). Returns whether it existed.
    pub fn delete_query(&mut self, id: &str, index: u64) -> bool {
        let Some(old) = self.queries.remove(&*lower(id)) else {
            return false;
        };
        self.unindex_query_name(&old);
        self.index = index;
        true
    }

    /// Flattens the state for a snapshot.
    pub fn to_snapshot(&self) -> DcSnapshot {
        DcSnapshot {
            index: self.index,
            nodes: self.nodes().cloned().collect(),
            instances: self.instances().cloned().collect(),
            checks: self.checks().cloned().collect(),
            queries: self.queries().cloned().collect(),
            tokens: self.tokens.iter().cloned().collect(),
            intentions: self.intentions.iter().cloned().collect(),
            mesh_ca: self.mesh_ca(),
            mesh_next_key: self.mesh_next_key.as_deref().cloned(),
        }
    }

    /// Rebuilds a state from a snapshot.
    pub fn from_snapshot(snap: DcSnapshot) -> Self {
        let mut s = DcState::default();
        for n in snap.nodes {
            s.nodes.insert(lower(&n.name).into_owned(), Arc::new(n));
        }
        for i in snap.instances {
            let key = i.key();
            s.insert_instance(i, key);
        }
        for c in snap.checks {
            s.insert_check(c);
        }
        for q in snap.queries {
            let key = lower(&q.id).into_owned();
            s.index_query_name(&q, &key);
            s.queries.insert(key, Arc::new(q));
        }
        for t in snap.tokens {
            s.put_token(t);
        }
        for i in snap.intentions {
            s.put_intention(i);
        }
        if let Some(ca) = snap.mesh_ca {
            s.mesh_root = Some(Arc::new(ca.root));
            s.mesh_key = Some(Arc::new(ca.key));
        }
        s.mesh_next_key = snap.mesh_next_key.map(Arc::new);
        s.index = snap.index;
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Weights;

    /// An instance with no address, tags or checks, on port 80.
    pub(crate) fn inst(node: &str, id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            node: node.into(),
            address: String::new(),
            port: 80,
            tags: vec![],
            meta: Default::default(),
            weights: Weights::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        }
    }

    fn sidecar(node: &str, id: &str, destination: &str) -> Instance {
        Instance {
            proxy: Some(Arc::new(crate::Proxy {
                destination_service: destination.into(),
                ..Default::default()
            })),
            ..inst(node, id, &format!("{destination}-sidecar-proxy"))
        }
    }

    /// A service's instances, and a node's, hold one copy of each name, and the catalog's maps
    /// one copy of each key, however the instances arrived (registered or replicated); a name
    /// spelled in another case is its own.
    #[test]
    fn names_and_keys_are_shared_not_copied() {
        let mut s = DcState::default();
        s.register(inst("n1", "web1", "web"), vec![], 1);
        s.put_instance(inst("n1", "web2", "web"), vec![]);
        s.put_instance(inst("n2", "web3", "web"), vec![]);
        s.register(inst("n1", "api1", "api"), vec![], 2);
        s.put_instance(inst("n2", "Web4", "WEB"), vec![]);
        let get = |id: &str, node: &str| s.instance(node, id).cloned().expect(id);
        let (w1, w2, w3, a1, w4) = (
            get("web1", "n1"),
            get("web2", "n1"),
            get("web3", "n2"),
            get("api1", "n1"),
            get("Web4", "n2"),
        );
        assert!(Arc::ptr_eq(&w1.service, &w2.service) && Arc::ptr_eq(&w1.service, &w3.service));
        assert!(Arc::ptr_eq(&w1.node, &w2.node) && Arc::ptr_eq(&w1.node, &a1.node));
        assert!(Arc::ptr_eq(&w3.node, &w4.node));
        assert_eq!(&*w4.service, "WEB");
        assert_eq!(s.instances_of("web").count(), 4);
        for (key, inst) in s.instances.iter() {
            let indexed = s.by_service[&*lower(&inst.service)]
                .iter()
                .find(|i| i.key() == *key)
                .expect("indexed");
            assert!(std::ptr::eq(indexed, &**inst), "{key:?}");
        }
    }

    fn ca(td: &str, cert: &str) -> MeshCa {
        MeshCa {
            root: MeshRoot {
                trust_domain: td.into(),
                cert_pem: cert.into(),
                created_unix_ms: 1,
                others: vec![],
            },
            key: MeshKey(format!("key of {cert}")),
        }
    }

    #[test]
    fn a_rotation_publishes_the_next_root_first_then_retires_the_old_one() {
        let mut s = DcState::default();
        assert!(
            !s.prepare_mesh_rotation(ca("td", "B"), 10, 1),
            "no CA to rotate"
        );
        assert!(s.set_mesh_ca(ca("td", "A"), 2));
        assert!(
            !s.prepare_mesh_rotation(ca("other", "B"), 10, 3),
            "another trust domain"
        );
        assert!(s.prepare_mesh_rotation(ca("td", "B"), 10, 4));
        // Published: trusted, but A still signs; a second rotation waits for this one.
        let root = s.mesh_root().expect("root").clone();
        assert_eq!(root.trusted(10).collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(s.mesh_ca().expect("ca").key.0, "key of A");
        assert!(!s.prepare_mesh_rotation(ca("td", "C"), 11, 5));
        // The next key survives a snapshot (a restart or a new server mid-rotation).
        let mut s = DcState::from_snapshot(s.to_snapshot());
        assert!(s.activate_mesh_rotation(1_000, 6));
        let ca_now = s.mesh_ca().expect("ca");
        assert_eq!(
            (ca_now.root.cert_pem.as_str(), ca_now.key.0.as_str()),
            ("B", "key of B")
        );
        assert_eq!(ca_now.root.trusted(999).collect::<Vec<_>>(), ["B", "A"]);
        assert_eq!(
            ca_now.root.trusted(1_000).collect::<Vec<_>>(),
            ["B"],
            "A retired"
        );
        assert!(!s.activate_mesh_rotation(2_000, 7), "nothing under way");
        // The next rotation drops what is past its end.
        assert!(s.prepare_mesh_rotation(ca("td", "C"), 5_000, 8));
        let root = s.mesh_root().expect("root");
        assert_eq!(root.others.len(), 1);
        assert_eq!(root.trusted(5_000).collect::<Vec<_>>(), ["B", "C"]);
    }

    #[test]
    fn sidecars_are_found_by_the_service_they_front() {
        let mut s = DcState::default();
        s.register(inst("n1", "web", "web"), vec![], 1);
        s.register(sidecar("n1", "web-proxy", "Web"), vec![], 2);
        s.register(sidecar("n2", "web-proxy", "web"), vec![], 3);
        let ids = |s: &DcState, d: &str| -> Vec<String> {
            s.proxies_of(d)
                .map(|i| format!("{}/{}", i.node, i.id))
                .collect()
        };
        assert_eq!(ids(&s, "WEB"), ["n1/web-proxy", "n2/web-proxy"]);
        // The proxies are instances of their own name too; the service's own are not proxies.
        assert_eq!(s.instances_of("web-sidecar-proxy").count(), 2);
        assert_eq!(s.instances_of("web").count(), 1);
        // A re-registration that fronts another service moves; unchanged, it stays.
        s.register(sidecar("n2", "web-proxy", "api"), vec![], 4);
        s.register(sidecar("n1", "web-proxy", "web"), vec![], 5);
        assert_eq!(ids(&s, "web"), ["n1/web-proxy"]);
        assert_eq!(ids(&s, "api"), ["n2/web-proxy"]);
        let back = DcState::from_snapshot(s.to_snapshot());
        assert_eq!(ids(&back, "api"), ["n2/web-proxy"]);
        assert!(s.deregister("n2", "web-proxy", 6));
        assert!(ids(&s, "api").is_empty());
        // Typical again: no longer an endpoint of anything.
        s.register(inst("n1", "web-proxy", "web-sidecar-proxy"), vec![], 7);
        assert!(ids(&s, "web").is_empty());
    }

    fn check(node: &str, id: &str, service_id: &str, status: Health) -> Check {
        Check {
            id: id.into(),
            name: id.into(),
            node: node.into(),
            service_id: service_id.into(),
            service_name: String::new(),
            status,
            output: String::new(),
            notes: String::new(),
            spec: None,
            create_index: 0,
            modify_index: 0,
        }
    }

    #[test]
    fn a_check_set_alone_decides_health_and_a_node_check_covers_every_instance() {
        let mut s = DcState::default();
        s.register(inst("n1", "web1", "web"), vec![], 1);
        s.register(inst("n1", "api1", "api"), vec![], 2);
        // A check of an instance that does not exist is refused, and changes nothing.
        assert_eq!(
            s.set_check(check("n1", "c", "nope", Health::Critical), 3),
            None
        );
        assert_eq!(s.index(), 2);
        // A service check takes its instance's service name, and its status as given.
        let c = check("n1", "_service_maintenance:web1", "web1", Health::Critical);
        assert_eq!(s.set_check(c.clone(), 4), Some(true));
        let stored = s.check("n1", "_service_maintenance:web1").expect("set");
        assert_eq!(
            (stored.service_name.as_str(), stored.create_index),
            ("web", 4)
        );
        assert_eq!(
            s.health_of(s.instance("n1", "web1").expect("web1")),
            Health::Critical
        );
        assert_eq!(
            s.health_of(s.instance("n1", "api1").expect("api1")),
            Health::Passing
        );
        // The same check again changes nothing; a new status does, keeping its creation.
        assert_eq!(s.set_check(c.clone(), 5), Some(false));
        let passing = Check {
            status: Health::Passing,
            ..c
        };
        assert_eq!(s.set_check(passing, 6), Some(true));
        let stored = s.check("n1", "_service_maintenance:web1").expect("set");
        assert_eq!((stored.create_index, stored.modify_index), (4, 6));
        // A node check covers every instance on the node.
        s.set_check(check("n1", "_node_maintenance", "", Health::Critical), 7);
        assert_eq!(
            s.health_of(s.instance("n1", "api1").expect("api1")),
            Health::Critical
        );
        assert!(s.delete_check("n1", "_node_maintenance", 8));
        assert!(!s.delete_check("n1", "_node_maintenance", 9));
        assert_eq!(s.index(), 8);
        assert_eq!(
            s.health_of(s.instance("n1", "api1").expect("api1")),
            Health::Passing
        );
    }

    #[test]
    fn deregistering_a_node_removes_everything_on_it_and_nothing_else() {
        let mut s = DcState::default();
        let node = Node {
            name: "ext".into(),
            address: "10.0.0.2".into(),
            meta: Default::default(),
            create_index: 0,
            modify_index: 0,
        };
        s.upsert_node(node, 1);
        s.register(
            inst("ext", "db1", "db"),
            vec![check("ext", "c1", "db1", Health::Passing)],
            2,
        );
        s.set_check(check("ext", "ping", "", Health::Passing), 3);
        s.register(inst("n1", "db2", "db"), vec![], 4);
        assert!(s.deregister_node("EXT", 5));
        assert!(s.node("ext").is_none());
        assert!(s.instance("ext", "db1").is_none());
        assert_eq!(s.checks_on("ext").count(), 0);
        assert_eq!(s.instances_of("db").count(), 1);
        assert_eq!(s.index(), 5);
        assert!(!s.deregister_node("ext", 6));
        assert_eq!(s.index(), 5);
    }

    #[test]
    fn addresses_and_reverse_lookups() {
        let mut s = DcState::default();
        let node = |name: &str, address: &str| Node {
            name: name.into(),
            address: address.into(),
            meta: Default::default(),
            create_index: 0,
            modify_index: 0,
        };
        s.upsert_node(node("n1", "10.0.0.1"), 1);
        s.upsert_node(node("n2", "db.example"), 2);
        let mut own = inst("n1", "web2", "web");
        own.address = "10.0.0.9".into();
        s.register(inst("n1", "web1", "web"), vec![], 3);
        s.register(own, vec![], 4);
        s.register(inst("n3", "orphan", "web"), vec![], 5);
        let addr = |id: &str, node: &str| {
            let i = s.instance(node, id).expect("instance");
            s.address_of(i).to_owned()
        };
        assert_eq!(addr("web1", "n1"), "10.0.0.1");
        assert_eq!(addr("web2", "n1"), "10.0.0.9");
        assert_eq!(addr("orphan", "n3"), "");
        let ip = |a: &str| a.parse::<IpAddr>().expect("ip");
        let nodes: Vec<_> = s.nodes_at(ip("10.0.0.1")).map(|n| n.name.clone()).collect();
        assert_eq!(nodes, ["n1"]);
        assert_eq!(s.nodes_at(ip("10.0.0.9")).count(), 0);
        let own: Vec<_> = s
            .instances_at(ip("10.0.0.9"))
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(own, ["web2"], "only instances with their own address");
        assert_eq!(s.instances_at(ip("10.0.0.1")).count(), 0);
    }

    #[test]
    fn register_is_idempotent_and_indexed() {
        let mut s = DcState::default();
        assert!(s.register(inst("n1", "web1", "web"), vec![], 5));
        assert!(!s.register(inst("n1", "web1", "web"), vec![], 6));
        assert_eq!(s.index(), 5);
        let i = s.instance("n1", "web1").expect("registered");
        assert_eq!((i.create_index, i.modify_index), (5, 5));
        let mut changed = inst("n1", "web1", "web");
        changed.port = 81;
        assert!(s.register(changed, vec![], 7));
        let i = s.instance("n1", "web1").expect("registered");
        assert_eq!((i.create_index, i.modify_index, i.port), (5, 7, 81));
    }

    #[test]
    fn service_and_node_names_ignore_case() {
        let mut s = DcState::default();
        s.register(inst("n1", "a", "Web"), vec![], 1);
        s.register(inst("n1", "b", "web"), vec![], 2);
        assert_eq!(s.instances_of("WEB").count(), 2);
        assert_eq!(s.service_names().collect::<Vec<_>>(), ["Web"]);
        s.upsert_node(
            Node {
                name: "Node1".into(),
                address: "10.0.0.1".into(),
                meta: Default::default(),
                create_index: 0,
                modify_index: 0,
            },
            3,
        );
        assert_eq!(s.node("node1").map(|n| n.name.as_str()), Some("Node1"));
        assert!(s.deregister("n1", "a", 4));
        assert_eq!(s.service_names().collect::<Vec<_>>(), ["web"]);
    }

    #[test]
    fn same_id_on_two_nodes_are_two_instances() {
        let mut s = DcState::default();
        s.register(inst("n1", "web", "web"), vec![], 1);
        s.register(inst("n2", "web", "web"), vec![], 2);
        assert_eq!(s.instances_of("web").count(), 2);
        assert!(s.deregister("n1", "web", 3));
        assert_eq!(s.instances_of("web").count(), 1);
        assert!(!s.deregister("n1", "web", 4));
    }

    #[test]
    fn health_is_worst_of_own_and_node_checks() {
        let mut s = DcState::default();
        s.register(
            inst("n1", "web1", "web"),
            vec![check("n1", "service:web1", "web1", Health::Passing)],
            1,
        );
        s.register(
            inst("n1", "db1", "db"),
            vec![check("n1", "service:db1", "db1", Health::Critical)],
            2,
        );
        let web = s.instance("n1", "web1").cloned().expect("web");
        assert_eq!(s.health_of(&web), Health::Passing);
        assert_eq!(
            s.update_check("n1", "service:web1", Health::Warning, "slow", 3),
            Some(true)
        );
        assert_eq!(s.health_of(&web), Health::Warning);
        assert_eq!(
            s.update_check("n1", "service:web1", Health::Warning, "slow", 4),
            Some(false)
        );
        assert_eq!(s.index(), 3);
        assert_eq!(s.update_check("n1", "nope", Health::Passing, "", 5), None);
    }

    #[test]
    fn reregistration_keeps_check_status_and_drops_removed_checks() {
        let mut s = DcState::default();
        s.register(
            inst("n1", "web1", "web"),
            vec![
                check("n1", "a", "web1", Health::Critical),
                check("n1", "b", "web1", Health::Critical),
            ],
            1,
        );
        s.update_check("n1", "a", Health::Passing, "ok", 2);
        s.register(
            inst("n1", "web1", "web"),
            vec![check("n1", "a", "web1", Health::Critical)],
            3,
        );
        assert_eq!(s.check("n1", "a").map(|c| c.status), Some(Health::Passing));
        assert!(s.check("n1", "b").is_none());
        // Another instance cannot take over check "a".
        s.register(
            inst("n1", "web2", "web"),
            vec![check("n1", "a", "web2", Health::Passing)],
            4,
        );
        assert_eq!(
            s.check("n1", "a").map(|c| c.service_id.as_str()),
            Some("web1")
        );
        assert!(s.deregister("n1", "web1", 5));
        assert!(s.check("n1", "a").is_none());
    }

    /// Whether some instance or node check is critical, the slow way.
    fn any_critical(s: &DcState) -> bool {
        s.checks().any(|c| c.status == Health::Critical)
    }

    #[test]
    fn critical_checks_are_counted_through_every_change() {
        let mut s = DcState::default();
        s.register(
            inst("n1", "web1", "web"),
            vec![check("n1", "a", "web1", Health::Passing)],
            1,
        );
        assert!(!s.has_critical_checks());
        s.update_check("n1", "a", Health::Critical, "down", 2);
        assert!(s.has_critical_checks());
        // Re-registered with the same check: it keeps its (critical) status.
        s.register(
            inst("n1", "web1", "web"),
            vec![check("n1", "a", "web1", Health::Passing)],
            3,
        );
        assert!(s.has_critical_checks() && any_critical(&s));
        let frozen = s.clone();
        s.update_check("n1", "a", Health::Passing, "up", 4);
        assert!(!s.has_critical_checks());
        assert!(frozen.has_critical_checks(), "a clone keeps its own count");
        s.set_check(check("n1", "node", "", Health::Critical), 5);
        s.set_check(check("n1", "node2", "", Health::Critical), 6);
        assert!(s.has_critical_checks());
        assert!(s.delete_check("n1", "node", 7));
        assert!(s.has_critical_checks(), "one of two is left");
        s.set_check(check("n1", "node2", "", Health::Warning), 8);
        assert!(!s.has_critical_checks());
        s.update_check("n1", "a", Health::Critical, "down", 9);
        // Deregistering the instance takes its checks, and the count with them.
        assert!(s.deregister("n1", "web1", 10));
        assert_eq!(s.has_critical_checks(), any_critical(&s));
        assert!(!s.has_critical_checks());
        // A snapshot rebuilds the count.
        s.register(
            inst("n2", "db1", "db"),
            vec![check("n2", "b", "db1", Health::Critical)],
            11,
        );
        assert!(DcState::from_snapshot(s.to_snapshot()).has_critical_checks());
        assert!(s.deregister_node("n2", 12));
        assert!(!s.has_critical_checks() && !any_critical(&s));
    }

    #[test]
    fn snapshot_round_trip() {
        let mut s = DcState::default();
        s.upsert_node(
            Node {
                name: "n1".into(),
                address: "127.0.0.1".into(),
                meta: Default::default(),
                create_index: 0,
                modify_index: 0,
            },
            1,
        );
        assert_eq!(
            s.node("n1").map(|n| (n.create_index, n.modify_index)),
            Some((1, 1))
        );
        s.register(
            inst("n1", "web1", "web"),
            vec![check("n1", "c", "web1", Health::Warning)],
            2,
        );
        let snap = s.to_snapshot();
        let json = serde_json::to_string(&snap).expect("serialize");
        let back = DcState::from_snapshot(serde_json::from_str(&json).expect("deserialize"));
        assert_eq!(back.to_snapshot(), snap);
        assert_eq!(back.instances_of("web").count(), 1);
    }

    #[test]
    fn changes_since_names_what_moved_and_replica_writes_mirror() {
        let mut a = DcState::default();
        a.register(
            inst("n1", "web1", "web"),
            vec![check("n1", "c1", "web1", Health::Passing)],
            1,
        );
        a.register(inst("n2", "db1", "db"), vec![], 2);
        let mut b = a.clone();
        b.update_check("n1", "c1", Health::Critical, "down", 3);
        b.deregister("n2", "db1", 4);
        b.register(inst("n3", "api1", "api"), vec![], 5);
        let ch = b.changes_since(&a);
        assert_eq!(ch.check_nodes, ["n1"]);
        assert_eq!(
            ch.instances,
            [
                InstanceKey::new("n2", "db1"),
                InstanceKey::new("n3", "api1")
            ]
        );
        assert!(ch.nodes.is_empty());
        assert_eq!(b.changes_since(&b), Changes::default());

        // A replica built with the put/remove API answers like its origin.
        let mut r = DcState::default();
        for i in b.instances() {
            r.put_instance(i.clone(), b.checks_of(i).cloned().collect());
        }
        r.set_index(b.index());
        assert_eq!(r.to_snapshot(), b.to_snapshot());
        assert_eq!(r.instances_on("n1").count(), 1);
        assert!(r.remove_instance("n1", "web1"));
        assert!(r.check("n1", "c1").is_none());
        assert!(!r.remove_instance("n1", "web1"));
    }

    fn query(id: &str, name: &str, service: &str) -> PreparedQuery {
        PreparedQuery {
            id: id.into(),
            name: name.into(),
            service: crate::prepared::QueryService {
                service: service.into(),
                ..Default::default()
            },
            dns_ttl: None,
            template: None,
            create_index: 0,
            modify_index: 0,
        }
    }

    #[test]
    fn prepared_queries_are_stored_by_id_and_unique_by_name() {
        let mut s = DcState::default();
        let a = "aaaaaaaa-0000-0000-0000-000000000001";
        let b = "bbbbbbbb-0000-0000-0000-000000000002";
        assert_eq!(s.set_query(query(a, "Web-Fo", "web"), true, 3), Ok(true));
        assert_eq!(s.index(), 3);
        let q = s.query_named("web-fo").expect("by name, ignoring case");
        assert_eq!((q.id.as_str(), q.create_index, q.modify_index), (a, 3, 3));
        assert_eq!(
            s.query(&a.to_ascii_uppercase()).map(|q| q.name.as_str()),
            Some("Web-Fo")
        );
        let id_of = |s: &DcState, n: &str| s.resolve_query(n).map(|q| q.id.clone());
        assert_eq!(id_of(&s, a).as_deref(), Some(a));
        assert_eq!(id_of(&s, "WEB-FO").as_deref(), Some(a));
        assert!(s.resolve_query("nope").is_none());
        assert!(
            s.resolve_query("web-fo-2").is_none(),
            "a query that is no template answers its name only"
        );

        // A create retried after a lost reply changes nothing and succeeds.
        assert_eq!(s.set_query(query(a, "Web-Fo", "web"), true, 4), Ok(false));
        assert_eq!(s.index(), 3);
        // Another query cannot take the name, in any case.
        assert_eq!(
            s.set_query(query(b, "WEB-fo", "db"), true, 5),
            Err(QueryConflict::NameTaken {
                name: "WEB-fo".into(),
                id: a.into()
            })
        );
        // A different query under an existing ID is not a create.
        assert_eq!(
            s.set_query(query(a, "other", "db"), true, 5),
            Err(QueryConflict::IdTaken(a.into()))
        );
        assert_eq!(
            s.set_query(query(b, "db", "db"), false, 5),
            Err(QueryConflict::NotFound(b.into()))
        );
        // Unnamed queries do not collide with each other.
        assert_eq!(s.set_query(query(b, "", "db"), true, 6), Ok(true));
        let c = "cccccccc-0000-0000-0000-000000000003";
        assert_eq!(s.set_query(query(c, "", "db"), true, 7), Ok(true));
        assert!(s.query_named("").is_none());

        // Renaming frees the old name; the update keeps the create index.
        assert_eq!(s.set_query(query(a, "api-fo", "api"), false, 8), Ok(true));
        let q = s.query(a).expect("still there");
        assert_eq!((q.create_index, q.modify_index), (3, 8));
        assert!(s.query_named("web-fo").is_none());
        assert_eq!(s.set_query(query(b, "web-fo", "db"), false, 9), Ok(true));
        assert_eq!(s.queries().count(), 3);

        assert!(s.delete_query(&b.to_ascii_uppercase(), 10));
        assert!(!s.delete_query(b, 11));
        assert_eq!(s.index(), 10);
        assert!(s.query_named("web-fo").is_none());
        assert_eq!(s.set_query(query(c, "web-fo", "db"), false, 12), Ok(true));
    }

    fn template(id: &str, name: &str, service: &str) -> PreparedQuery {
        PreparedQuery {
            template: Some(crate::prepared::QueryTemplate::default()),
            ..query(id, name, service)
        }
    }

    #[test]
    fn templates_answer_the_longest_prefix_after_exact_names() {
        let mut s = DcState::default();
        let (a, b, c, d, e) = (
            "aaaaaaaa-0000-0000-0000-000000000001",
            "bbbbbbbb-0000-0000-0000-000000000002",
            "cccccccc-0000-0000-0000-000000000003",
            "dddddddd-0000-0000-0000-000000000004",
            "eeeeeeee-0000-0000-0000-000000000005",
        );
        assert_eq!(
            s.set_query(template(a, "geo-", "${name.suffix}"), true, 2),
            Ok(true)
        );
        assert_eq!(
            s.set_query(template(b, "geo-db-", "db-${name.suffix}"), true, 3),
            Ok(true)
        );
        assert_eq!(
            s.set_query(query(c, "geo-web", "static"), true, 4),
            Ok(true)
        );
        let service = |s: &DcState, n: &str| s.resolve_query(n).map(|q| q.service.service.clone());
        assert_eq!(service(&s, "geo-api").as_deref(), Some("api"));
        assert_eq!(
            service(&s, "GEO-DB-eu").as_deref(),
            Some("db-eu"),
            "the longest prefix"
        );
        assert_eq!(
            service(&s, "geo-web").as_deref(),
            Some("static"),
            "an exact name first"
        );
        assert_eq!(
            service(&s, "geo-").as_deref(),
            Some(""),
            "its own name: empty suffix"
        );
        assert_eq!(service(&s, "ge"), None);
        assert!(
            s.resolve_query(a).is_none(),
            "a template is resolved by name only"
        );
        // One catch-all (empty name) template at most; it answers what nothing else does.
        assert_eq!(
            s.set_query(template(d, "", "${name.full}"), true, 5),
            Ok(true)
        );
        assert!(matches!(
            s.set_query(template(e, "", "x"), true, 6),
            Err(QueryConflict::NameTaken { .. })
        ));
        assert_eq!(service(&s, "anything").as_deref(), Some("anything"));
        assert_eq!(service(&s, "geo-x").as_deref(), Some("x"));
        // A template's name is taken for plain queries too, and the indexes follow deletes and
        // snapshots.
        assert!(matches!(
            s.set_query(query(e, "GEO-", "web"), true, 6),
            Err(QueryConflict::NameTaken { .. })
        ));
        assert!(s.delete_query(b, 7));
        assert_eq!(
            service(&s, "geo-db-eu").as_deref(),
            Some("db-eu"),
            "now from geo-"
        );
        let back = DcState::from_snapshot(s.to_snapshot());
        assert_eq!(service(&back, "geo-db-eu").as_deref(), Some("db-eu"));
        assert_eq!(service(&back, "zzz").as_deref(), Some("zzz"));
        assert!(s.delete_query(d, 8));
        assert_eq!(service(&s, "zzz"), None);
    }

    #[test]
    fn prepared_queries_are_in_snapshots_but_not_in_changes() {
        let mut s = DcState::default();
        s.register(inst("n1", "web1", "web"), vec![], 1);
        let before = s.clone();
        let id = "aaaaaaaa-0000-0000-0000-000000000001";
        assert_eq!(s.set_query(query(id, "web-fo", "web"), true, 2), Ok(true));
        assert_eq!(
            s.changes_since(&before),
            Changes::default(),
            "queries are DC-local: federation never exports them"
        );
        let snap = s.to_snapshot();
        assert_eq!(snap.queries.len(), 1);
        let json = serde_json::to_string(&snap).expect("serialize");
        let back = DcState::from_snapshot(serde_json::from_str(&json).expect("deserialize"));
        assert_eq!(back.to_snapshot(), snap);
        assert_eq!(back.query_named("WEB-FO").map(|q| q.id.as_str()), Some(id));
        assert_eq!(back.index(), 2);

        // A snapshot written before queries existed still loads.
        let old = r#"{"index":1,"nodes":[],"instances":[],"checks":[]}"#;
        let old = DcState::from_snapshot(serde_json::from_str(old).expect("old snapshot"));
        assert_eq!(old.queries().count(), 0);
    }

    #[test]
    fn the_checks_changed_on_a_node_are_those_added_changed_or_removed() {
        let mut s = DcState::default();
        for (i, k) in [(0u8, "a"), (1, "b"), (2, "c")] {
            let c = check("n1", &format!("c{k}"), &format!("i{i}"), Health::Passing);
            s.register(
                inst("n1", &format!("i{i}"), "web"),
                vec![c],
                u64::from(i) + 1,
            );
        }
        s.set_check(check("n2", "other", "", Health::Passing), 4);
        let old = s.clone();
        assert!(s.checks_changed_on(&old, "n1").is_empty());
        s.update_check("n1", "ca", Health::Critical, "down", 5);
        s.delete_check("n1", "cb", 6);
        s.set_check(check("n1", "cd", "", Health::Passing), 7);
        // The unchanged `cc`, and the other node's check, are not among them.
        assert_eq!(s.checks_changed_on(&old, "n1"), ["ca", "cb", "cd"]);
        assert!(s.checks_changed_on(&old, "n2").is_empty());
        s.deregister_node("n2", 8);
        assert_eq!(s.checks_changed_on(&old, "n2"), ["other"]);
        assert_eq!(old.checks_changed_on(&s, "n2"), ["other"]);
        assert!(s.checks_changed_on(&old, "n3").is_empty());
    }

    /// One write of [`an_instance_s_checks_are_found_as_a_walk_of_its_node_s_would_find_them`].
    #[derive(Clone, Debug)]
    enum CheckOp {
        /// Register instance `i` on node `n` with checks `c<k>` for the given `k`s.
        Register(u8, u8, Vec<u8>),
        /// Set check `c<k>` on node `n`, node-level (`None`) or of instance `i`, critical or not.
        Set(u8, u8, Option<u8>, bool),
        Delete(u8, u8),
        Deregister(u8, u8),
        DeregisterNode(u8),
    }

    fn check_op() -> impl proptest::strategy::Strategy<Value = CheckOp> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..2, 0u8..4, proptest::collection::vec(0u8..6, 0..3))
                .prop_map(|(n, i, c)| CheckOp::Register(n, i, c)),
            (0u8..2, 0u8..6, proptest::option::of(0u8..4), any::<bool>())
                .prop_map(|(n, c, i, crit)| CheckOp::Set(n, c, i, crit)),
            (0u8..2, 0u8..6).prop_map(|(n, c)| CheckOp::Delete(n, c)),
            (0u8..2, 0u8..4).prop_map(|(n, i)| CheckOp::Deregister(n, i)),
            (0u8..2).prop_map(CheckOp::DeregisterNode),
        ]
    }

    proptest::proptest! {
        /// Whatever registrations, check writes and removals a node goes through (check IDs
        /// moving between instances and the node included), an instance's checks and health are
        /// what a walk of every check on its node finds, in the same order.
        #[test]
        fn an_instance_s_checks_are_found_as_a_walk_of_its_node_s_would_find_them(
            ops in proptest::collection::vec(check_op(), 1..60),
        ) {
            let mut s = DcState::default();
            for (at, op) in ops.into_iter().enumerate() {
                let index = at as u64 + 1;
                match op {
                    CheckOp::Register(n, i, cs) => {
                        let (node, id) = (format!("n{n}"), format!("i{i}"));
                        let checks = cs
                            .iter()
                            .map(|k| check(&node, &format!("c{k}"), &id, Health::Passing))
                            .collect();
                        s.register(inst(&node, &id, "web"), checks, index);
                    }
                    CheckOp::Set(n, k, i, critical) => {
                        let owner = i.map(|i| format!("i{i}")).unwrap_or_default();
                        let status = if critical { Health::Critical } else { Health::Passing };
                        let c = check(&format!("n{n}"), &format!("c{k}"), &owner, status);
                        s.set_check(c, index);
                    }
                    CheckOp::Delete(n, k) => {
                        s.delete_check(&format!("n{n}"), &format!("c{k}"), index);
                    }
                    CheckOp::Deregister(n, i) => {
                        s.deregister(&format!("n{n}"), &format!("i{i}"), index);
                    }
                    CheckOp::DeregisterNode(n) => {
                        s.deregister_node(&format!("n{n}"), index);
                    }
                }
                for node in ["n0", "n1"] {
                    let walk = |owner: &str| -> Vec<String> {
                        s.checks_on(node)
                            .filter(|c| c.service_id == owner)
                            .map(|c| c.id.clone())
                            .collect()
                    };
                    let found = |owner: &str| -> Vec<String> {
                        s.instance_checks(node, owner).map(|c| c.id.clone()).collect()
                    };
                    proptest::prop_assert_eq!(found(""), walk(""));
                    for i in s.instances_on(node) {
                        proptest::prop_assert_eq!(found(&i.id), walk(&i.id));
                        let of: Vec<String> = s.checks_of(i).map(|c| c.id.clone()).collect();
                        let walked: Vec<String> = s
                            .checks_on(node)
                            .filter(|c| c.service_id.is_empty() || c.service_id == i.id)
                            .map(|c| c.id.clone())
                            .collect();
                        proptest::prop_assert_eq!(of, walked);
                        let worst = s
                            .checks_on(node)
                            .filter(|c| c.service_id.is_empty() || c.service_id == i.id)
                            .map(|c| c.status)
                            .max()
                            .unwrap_or(Health::Passing);
                        proptest::prop_assert_eq!(s.health_of(i), worst);
                    }
                }
            }
        }
    }
}
