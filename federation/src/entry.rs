//! The unit of replication and its wire form: a node with its node-level checks, an instance
//! with its own checks, or the origin's record of an API token; keys, stable hashes and digest
//! buckets shared by both ends of the WAN.

use meridian_protos::federation as pb;
use meridian_topology::dc::DcState;
use meridian_topology::intention::{self, Action, Intention, IntentionRecord, check_intention};
use meridian_topology::lww::{Record, Stamp};
use meridian_topology::token::{ApiToken, Scope, TokenRecord, check_token};
use meridian_topology::{
    Check, Health, Instance, InstanceKey, MAX_PROXY_UPSTREAMS, Node, Proxy, Upstream, Weights,
};
use prost::Message as _;
use std::sync::Arc;

/// What an entry is keyed by. Node names are lowercased (nodes are looked up ignoring case).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// A node, by lowercased name.
    Node(String),
    /// An instance, by node and ID.
    Instance(InstanceKey),
    /// A token record, by lowercased accessor ID.
    Token(String),
    /// An intention record, by lowercased `source/destination`.
    Intention(String),
    /// The origin's mesh CA root (one per DC).
    MeshRoot,
}

impl Key {
    /// The key of the node named `name`.
    pub fn node(name: &str) -> Key {
        Key::Node(name.to_ascii_lowercase())
    }

    /// The key of the token record with accessor ID `id`.
    pub fn token(id: &str) -> Key {
        Key::Token(id.to_ascii_lowercase())
    }

    /// The key of the intention record keyed `key` (`source/destination`).
    pub fn intention(key: &str) -> Key {
        Key::Intention(key.to_ascii_lowercase())
    }

    /// A stable 64-bit hash of the key; its top bits pick the digest bucket.
    pub fn hash(&self) -> u64 {
        let mut h = Fnv::new();
        match self {
            Key::Node(n) => {
                h.write(b"n\0");
                h.write(n.as_bytes());
            }
            Key::Instance(k) => {
                h.write(b"i\0");
                h.write(k.node().as_bytes());
                h.write(b"\0");
                h.write(k.id().as_bytes());
            }
            Key::Token(t) => {
                h.write(b"t\0");
                h.write(t.as_bytes());
            }
            Key::Intention(k) => {
                h.write(b"x\0");
                h.write(k.as_bytes());
            }
            Key::MeshRoot => h.write(b"r\0"),
        }
        mix(h.0)
    }

    /// The digest bucket of this key when there are `2^bits` buckets.
    pub fn bucket(&self, bits: u32) -> u32 {
        bucket_of(self.hash(), bits)
    }

    /// The key's wire form.
    pub fn to_proto(&self) -> pb::EntryKey {
        let key = match self {
            Key::Node(n) => pb::entry_key::Key::Node(n.clone()),
            Key::Instance(k) => pb::entry_key::Key::Instance(pb::InstanceKey {
                node: k.node().to_owned(),
                id: k.id().to_owned(),
            }),
            Key::Token(t) => pb::entry_key::Key::Token(t.clone()),
            Key::Intention(k) => pb::entry_key::Key::Intention(k.clone()),
            Key::MeshRoot => pb::entry_key::Key::MeshRoot(true),
        };
        pb::EntryKey { key: Some(key) }
    }

    /// Reads a key from the wire.
    pub fn from_proto(k: &pb::EntryKey) -> Option<Key> {
        match k.key.as_ref()? {
            pb::entry_key::Key::Node(n) => Some(Key::node(n)),
            pb::entry_key::Key::Instance(i) => {
                Some(Key::Instance(InstanceKey::new(&i.node, &i.id)))
            }
            pb::entry_key::Key::Token(t) => Some(Key::token(t)),
            pb::entry_key::Key::Intention(k) => Some(Key::intention(k)),
            pb::entry_key::Key::MeshRoot(_) => Some(Key::MeshRoot),
        }
    }

    /// The key's bytes in the persistent store (ordered like the key).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Key::Node(n) => [b"n\0", n.as_bytes()].concat(),
            Key::Instance(k) => [b"i\0", k.node().as_bytes(), b"\0", k.id().as_bytes()].concat(),
            Key::Token(t) => [b"t\0", t.as_bytes()].concat(),
            Key::Intention(k) => [b"x\0", k.as_bytes()].concat(),
            Key::MeshRoot => b"r\0".to_vec(),
        }
    }
}

/// The bucket of a key hash when there are `2^bits` buckets.
pub fn bucket_of(key_hash: u64, bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        // Top bits: `bits` is at most 20, so the shifted value fits in u32.
        u32::try_from(key_hash >> (64 - bits.min(32))).unwrap_or(0)
    }
}

/// The most digest buckets either side accepts (2^20, 8 MiB of digest).
pub const MAX_BUCKET_BITS: u32 = 20;

/// How many buckets a subscriber holding `entries` entries sums its keys in (a catch-up with an
/// index): about 32 keys per bucket. Fewer than entry sums use: a bucket costs 4 bytes of every
/// such request, and differs only where a key was removed, which its key list (4 bytes a key)
/// then repairs.
pub fn key_bucket_bits_for(entries: usize) -> u32 {
    bucket_bits_for(entries / 4)
}

/// A key's hash as key sums and key lists carry it: its low 32 bits (buckets use the top ones).
pub fn short_key_hash(key_hash: u64) -> u32 {
    (key_hash & 0xffff_ffff) as u32
}

/// How many digest buckets a subscriber holding `entries` entries asks with: about eight entries
/// per bucket, so a catch-up after a few changes resends a few small buckets.
pub fn bucket_bits_for(entries: usize) -> u32 {
    let target = (entries / 8).max(1);
    (usize::BITS - target.leading_zeros()).clamp(4, 16)
}

/// An entry's wire form with its key and content hash, computed once.
#[derive(Clone, Debug, PartialEq)]
pub struct Hashed {
    /// The entry's key.
    pub key: Key,
    /// The key's hash (bucket selection).
    pub key_hash: u64,
    /// Hash of key and content; digests are sums of these.
    pub hash: u64,
    /// The entry on the wire.
    pub entry: pb::Entry,
}

impl Hashed {
    /// Hashes `entry` under `key`.
    pub fn new(key: Key, entry: pb::Entry) -> Hashed {
        let key_hash = key.hash();
        let mut h = Fnv::new();
        h.write(&key_hash.to_le_bytes());
        h.write(&entry.encode_to_vec());
        Hashed {
            key,
            key_hash,
            hash: mix(h.0),
            entry,
        }
    }

    /// Reads an entry from the wire, checking that it is well formed.
    pub fn from_proto(entry: pb::Entry) -> Result<Hashed, &'static str> {
        let key = entry_key(&entry)?;
        Ok(Hashed::new(key, entry))
    }
}

/// The key an entry is stored under, or why the entry is malformed.
pub fn entry_key(entry: &pb::Entry) -> Result<Key, &'static str> {
    match entry.entry.as_ref() {
        Some(pb::entry::Entry::Node(n)) => {
            let node = n.node.as_ref().ok_or("node entry without a node")?;
            if node.name.is_empty() {
                return Err("node entry without a name");
            }
            Ok(Key::node(&node.name))
        }
        Some(pb::entry::Entry::Instance(i)) => {
            let inst = i
                .instance
                .as_ref()
                .ok_or("instance entry without an instance")?;
            if inst.node.is_empty() || inst.id.is_empty() || inst.service.is_empty() {
                return Err("instance entry without a node, ID or service");
            }
            if u16::try_from(inst.port).is_err() {
                return Err("instance port out of range");
            }
            if let Some(p) = &inst.proxy {
                if p.destination_service.is_empty() {
                    return Err("proxy entry without a destination");
                }
                if p.upstreams.len() > MAX_PROXY_UPSTREAMS {
                    return Err("proxy entry with too many upstreams");
                }
                let ports =
                    std::iter::once(p.local_port).chain(p.upstreams.iter().map(|u| u.bind_port));
                if ports.into_iter().any(|port| u16::try_from(port).is_err()) {
                    return Err("proxy port out of range");
                }
            }
            Ok(Key::Instance(InstanceKey::new(&inst.node, &inst.id)))
        }
        Some(pb::entry::Entry::Token(t)) => {
            let record = token_from_proto(t)?;
            if let Some(token) = &record.record.value {
                check_token(&record.key, token).map_err(|_| "token entry out of bounds")?;
            } else if !meridian_topology::token::is_accessor_id(&record.key) {
                return Err("token entry with a malformed accessor ID");
            }
            Ok(Key::token(&t.accessor_id))
        }
        Some(pb::entry::Entry::Intention(i)) => {
            let record = intention_from_proto(i)?;
            match &record.record.value {
                Some(value) => check_intention(&record.key, value),
                None => intention::check_pair(&record.key),
            }
            .map_err(|_| "intention entry out of bounds")?;
            Ok(Key::intention(&record.key))
        }
        Some(pb::entry::Entry::MeshRoot(r)) => {
            use meridian_topology::mesh::{MAX_OTHER_ROOTS, MAX_ROOT_PEM};
            if r.trust_domain.is_empty()
                || r.cert_pem.is_empty()
                || r.cert_pem.len() > MAX_ROOT_PEM
                || r.others.len() > MAX_OTHER_ROOTS
                || r.others
                    .iter()
                    .any(|o| o.cert_pem.is_empty() || o.cert_pem.len() > MAX_ROOT_PEM)
            {
                return Err("mesh root entry empty or over its bound");
            }
            Ok(Key::MeshRoot)
        }
        None => Err("empty entry"),
    }
}

/// The exported entry under `key` in `state`, if the key exists there and `exported` lets its
/// service out. A node is exported when `all_nodes` or when it hosts an exported instance.
pub fn export_entry(
    state: &DcState,
    key: &Key,
    exported: &dyn Fn(&str) -> bool,
    all_nodes: bool,
) -> Option<pb::Entry> {
    match key {
        Key::Node(name) => {
            let node = state.node(name)?;
            if !all_nodes && !state.instances_on(&node.name).any(|i| exported(&i.service)) {
                return None;
            }
            let checks = state
                .instance_checks(&node.name, "")
                .map(check_to_proto)
                .collect();
            Some(pb::Entry {
                entry: Some(pb::entry::Entry::Node(pb::NodeEntry {
                    node: Some(node_to_proto(node)),
                    checks,
                })),
            })
        }
        Key::Instance(k) => {
            let inst = state.instance_at(k)?;
            if !exported(&inst.service) {
                return None;
            }
            let checks = state
                .instance_checks(&inst.node, &inst.id)
                .map(check_to_proto)
                .collect();
            Some(pb::Entry {
                entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
                    instance: Some(instance_to_proto(inst)),
                    checks,
                })),
            })
        }
        // Tokens leave whatever the policy: they are usable in every DC.
        Key::Token(id) => state.tokens().get(id).map(|t| pb::Entry {
            entry: Some(pb::entry::Entry::Token(token_to_proto(t))),
        }),
        Key::Intention(k) => state.intentions().get(k).map(|i| pb::Entry {
            entry: Some(pb::entry::Entry::Intention(intention_to_proto(i))),
        }),
        // The root leaves whatever the policy; the key never does.
        Key::MeshRoot => state.mesh_root().map(|r| pb::Entry {
            entry: Some(pb::entry::Entry::MeshRoot(pb::MeshRootEntry {
                trust_domain: r.trust_domain.clone(),
                cert_pem: r.cert_pem.clone(),
                created_unix_ms: r.created_unix_ms,
                others: r
                    .others
                    .iter()
                    .map(|o| pb::MeshOtherRoot {
                        cert_pem: o.cert_pem.clone(),
                        since_unix_ms: o.since_unix_ms,
                        until_unix_ms: o.until_unix_ms,
                    })
                    .collect(),
            })),
        }),
    }
}

/// Writes a well-formed entry (see [`entry_key`]) into a replica.
pub fn apply_entry(state: &mut DcState, entry: &pb::Entry) {
    match entry.entry.as_ref() {
        Some(pb::entry::Entry::Node(n)) => {
            if let Some(node) = &n.node {
                // Node names ignore case but checks are filed under the name as spelled: the
                // old record goes first, with its checks, or a node re-sent in another case
                // (`n1`, then `N1`) would keep checks that no removal ever reaches.
                state.remove_node(&node.name);
                state.put_node(
                    node_from_proto(node),
                    n.checks.iter().map(check_from_proto).collect(),
                );
            }
        }
        Some(pb::entry::Entry::Instance(i)) => {
            if let Some(inst) = &i.instance {
                state.put_instance(
                    instance_from_proto(inst),
                    i.checks.iter().map(check_from_proto).collect(),
                );
            }
        }
        Some(pb::entry::Entry::Token(t)) => {
            if let Ok(record) = token_from_proto(t) {
                state.put_token(record);
            }
        }
        Some(pb::entry::Entry::Intention(i)) => {
            if let Ok(record) = intention_from_proto(i) {
                state.put_intention(record);
            }
        }
        Some(pb::entry::Entry::MeshRoot(r)) => {
            state.put_mesh_root(Some(meridian_topology::mesh::MeshRoot {
                trust_domain: r.trust_domain.clone(),
                cert_pem: r.cert_pem.clone(),
                created_unix_ms: r.created_unix_ms,
                others: r
                    .others
                    .iter()
                    .map(|o| meridian_topology::mesh::OtherRoot {
                        cert_pem: o.cert_pem.clone(),
                        since_unix_ms: o.since_unix_ms,
                        until_unix_ms: o.until_unix_ms,
                    })
                    .collect(),
            }));
        }
        None => {}
    }
}

/// Removes the entry under `key` from a replica.
pub fn remove_entry(state: &mut DcState, key: &Key) {
    match key {
        Key::Node(n) => {
            state.remove_node(n);
        }
        Key::Instance(k) => {
            state.remove_instance(k.node(), k.id());
        }
        Key::Token(t) => {
            state.remove_token(t);
        }
        Key::Intention(k) => {
            state.remove_intention(k);
        }
        Key::MeshRoot => state.put_mesh_root(None),
    }
}

fn intention_to_proto(r: &IntentionRecord) -> pb::IntentionEntry {
    let (source, destination) = intention::pair(&r.key).unwrap_or((&r.key, ""));
    let stamp = &r.record.stamp;
    let mut e = pb::IntentionEntry {
        source: source.to_owned(),
        destination: destination.to_owned(),
        hlc: stamp.hlc,
        origin: stamp.origin.clone(),
        deleted: r.record.value.is_none(),
        ..Default::default()
    };
    if let Some(v) = &r.record.value {
        e.action = v.action.name().to_owned();
        e.description = v.description.clone();
        e.meta = v.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        e.created_unix_ms = v.created_unix_ms;
    }
    e
}

/// An intention record from the wire, or why it is malformed (its bounds are checked by
/// [`entry_key`]).
fn intention_from_proto(e: &pb::IntentionEntry) -> Result<IntentionRecord, &'static str> {
    if e.origin.is_empty() {
        return Err("intention entry without an origin");
    }
    let value = if e.deleted {
        None
    } else {
        Some(Intention {
            action: Action::parse(&e.action).ok_or("intention entry with an unknown action")?,
            description: e.description.clone(),
            meta: e.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            created_unix_ms: e.created_unix_ms,
        })
    };
    Ok(IntentionRecord {
        key: intention::key(&e.source, &e.destination),
        record: Record {
            stamp: Stamp {
                hlc: e.hlc,
                origin: e.origin.to_ascii_lowercase(),
            },
            value,
        },
    })
}

fn token_to_proto(t: &TokenRecord) -> pb::TokenEntry {
    let stamp = &t.record.stamp;
    let mut e = pb::TokenEntry {
        accessor_id: t.key.clone(),
        hlc: stamp.hlc,
        origin: stamp.origin.clone(),
        deleted: t.record.value.is_none(),
        ..Default::default()
    };
    if let Some(v) = &t.record.value {
        e.secret_sha256 = v.secret_sha256.to_vec();
        e.scope = v.scope.name().to_owned();
        e.services = v.services.clone();
        e.description = v.description.clone();
        e.create_unix_ms = v.create_unix_ms;
    }
    e
}

/// A token record from the wire, or why it is malformed (its bounds are checked by
/// [`entry_key`]).
fn token_from_proto(t: &pb::TokenEntry) -> Result<TokenRecord, &'static str> {
    if t.origin.is_empty() {
        return Err("token entry without an origin");
    }
    let value = if t.deleted {
        None
    } else {
        Some(ApiToken {
            secret_sha256: t
                .secret_sha256
                .as_slice()
                .try_into()
                .map_err(|_| "token entry whose secret digest is not 32 bytes")?,
            scope: Scope::parse(&t.scope).ok_or("token entry with an unknown scope")?,
            services: t.services.clone(),
            description: t.description.clone(),
            create_unix_ms: t.create_unix_ms,
        })
    };
    Ok(TokenRecord {
        key: t.accessor_id.clone(),
        record: Record {
            stamp: Stamp {
                hlc: t.hlc,
                origin: t.origin.to_ascii_lowercase(),
            },
            value,
        },
    })
}

fn node_to_proto(n: &Node) -> pb::Node {
    pb::Node {
        name: n.name.clone(),
        address: n.address.clone(),
        meta: n.meta.clone(),
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

fn node_from_proto(n: &pb::Node) -> Node {
    Node {
        name: n.name.clone(),
        address: n.address.clone(),
        meta: n.meta.clone(),
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

fn instance_to_proto(i: &Instance) -> pb::Instance {
    pb::Instance {
        id: i.id.clone(),
        service: i.service.to_string(),
        node: i.node.to_string(),
        address: i.address.clone(),
        port: u32::from(i.port),
        tags: i.tags.clone(),
        meta: i.meta.clone(),
        weight_passing: i.weights.passing,
        weight_warning: i.weights.warning,
        create_index: i.create_index,
        modify_index: i.modify_index,
        proxy: i.proxy.as_deref().map(|p| pb::Proxy {
            destination_service: p.destination_service.clone(),
            destination_id: p.destination_id.clone(),
            local_address: p.local_address.clone(),
            local_port: u32::from(p.local_port),
            upstreams: p
                .upstreams
                .iter()
                .map(|u| pb::ProxyUpstream {
                    destination: u.destination.clone(),
                    datacenter: u.datacenter.clone(),
                    bind_address: u.bind_address.clone(),
                    bind_port: u32::from(u.bind_port),
                })
                .collect(),
        }),
    }
}

fn instance_from_proto(i: &pb::Instance) -> Instance {
    Instance {
        id: i.id.clone(),
        service: i.service.as_str().into(),
        node: i.node.as_str().into(),
        address: i.address.clone(),
        // Checked by `entry_key` before an entry is applied.
        port: u16::try_from(i.port).unwrap_or(0),
        tags: i.tags.clone(),
        meta: i.meta.clone(),
        weights: Weights {
            passing: i.weight_passing,
            warning: i.weight_warning,
        },
        create_index: i.create_index,
        modify_index: i.modify_index,
        // Ports checked by `entry_key` before an entry is applied.
        proxy: i.proxy.as_ref().map(|p| {
            Arc::new(Proxy {
                destination_service: p.destination_service.clone(),
                destination_id: p.destination_id.clone(),
                local_address: p.local_address.clone(),
                local_port: u16::try_from(p.local_port).unwrap_or(0),
                upstreams: p
                    .upstreams
                    .iter()
                    .map(|u| Upstream {
                        destination: u.destination.clone(),
                        datacenter: u.datacenter.clone(),
                        bind_address: u.bind_address.clone(),
                        bind_port: u16::try_from(u.bind_port).unwrap_or(0),
                    })
                    .collect(),
            })
        }),
    }
}

fn check_to_proto(c: &Check) -> pb::Check {
    let status = match c.status {
        Health::Passing => pb::Health::Passing,
        Health::Warning => pb::Health::Warning,
        Health::Critical => pb::Health::Critical,
    };
    pb::Check {
        id: c.id.clone(),
        name: c.name.clone(),
        node: c.node.clone(),
        service_id: c.service_id.clone(),
        service_name: c.service_name.clone(),
        status: status.into(),
        output: c.output.clone(),
        notes: c.notes.clone(),
        create_index: c.create_index,
        modify_index: c.modify_index,
    }
}

fn check_from_proto(c: &pb::Check) -> Check {
    // An unknown status from a newer origin is treated as the worst one.
    let status = match pb::Health::try_from(c.status) {
        Ok(pb::Health::Passing) => Health::Passing,
        Ok(pb::Health::Warning) => Health::Warning,
        Ok(pb::Health::Critical) | Err(_) => Health::Critical,
    };
    Check {
        id: c.id.clone(),
        name: c.name.clone(),
        node: c.node.clone(),
        service_id: c.service_id.clone(),
        service_name: c.service_name.clone(),
        status,
        output: c.output.clone(),
        notes: c.notes.clone(),
        spec: None,
        create_index: c.create_index,
        modify_index: c.modify_index,
    }
}

/// FNV-1a, 64 bit: stable across builds and platforms, unlike `std`'s hasher.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// splitmix64's finalizer: spreads FNV's weak high bits, which pick buckets and feed sums.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(node: &str, id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            node: node.into(),
            address: "10.0.0.1".into(),
            port: 8080,
            tags: vec!["v1".into()],
            meta: [("k".to_owned(), "v".to_owned())].into(),
            weights: Weights::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        }
    }

    #[test]
    fn exported_entries_rebuild_the_same_state() {
        let mut s = DcState::default();
        s.upsert_node(
            Node {
                name: "N1".into(),
                address: "10.0.0.1".into(),
                meta: Default::default(),
                create_index: 0,
                modify_index: 0,
            },
            1,
        );
        s.register(inst("N1", "web1", "web"), vec![], 2);
        s.register(inst("N1", "secret1", "secret"), vec![], 3);
        let only_web = |svc: &str| svc == "web";
        let mut replica = DcState::default();
        for key in [
            Key::node("N1"),
            Key::Instance(InstanceKey::new("N1", "web1")),
            Key::Instance(InstanceKey::new("N1", "secret1")),
        ] {
            if let Some(e) = export_entry(&s, &key, &only_web, false) {
                let h = Hashed::from_proto(e).expect("well formed");
                assert_eq!(h.key, key);
                apply_entry(&mut replica, &h.entry);
            }
        }
        assert_eq!(replica.instances_of("web").count(), 1);
        assert_eq!(replica.instances_of("secret").count(), 0, "not exported");
        assert_eq!(
            replica.node("n1").map(|n| n.address.as_str()),
            Some("10.0.0.1")
        );
        let web = replica.instance("N1", "web1").expect("web1");
        assert_eq!(web, s.instance("N1", "web1").expect("origin"));
    }

    #[test]
    fn hashes_are_stable_and_content_sensitive() {
        let s = {
            let mut s = DcState::default();
            s.register(inst("n1", "a", "web"), vec![], 1);
            s
        };
        let key = Key::Instance(InstanceKey::new("n1", "a"));
        let all = |_: &str| true;
        let e = export_entry(&s, &key, &all, true).expect("entry");
        let a = Hashed::new(key.clone(), e.clone());
        assert_eq!(a.hash, Hashed::new(key.clone(), e.clone()).hash);
        let mut changed = e;
        if let Some(pb::entry::Entry::Instance(i)) = changed.entry.as_mut()
            && let Some(inst) = i.instance.as_mut()
        {
            inst.port = 8081;
        }
        assert_ne!(a.hash, Hashed::new(key, changed).hash);
        // Pinned, so that a change to the hash (which would make old and new nodes disagree on
        // every digest) is noticed.
        assert_eq!(Key::node("n1").hash(), Key::node("N1").hash());
        assert_eq!(Key::node("n1").hash(), 5_818_097_258_811_336_266);
        assert_eq!(Key::node("n1").bucket(0), 0);
        assert!(Key::node("n1").bucket(4) < 16);
    }

    #[test]
    fn malformed_entries_are_rejected() {
        assert!(Hashed::from_proto(pb::Entry { entry: None }).is_err());
        let bad_port = pb::Entry {
            entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
                instance: Some(pb::Instance {
                    id: "a".into(),
                    service: "web".into(),
                    node: "n1".into(),
                    port: 70000,
                    ..Default::default()
                }),
                checks: vec![],
            })),
        };
        assert!(Hashed::from_proto(bad_port).is_err());
    }

    #[test]
    fn token_records_travel_whatever_the_policy_and_malformed_ones_are_refused() {
        let mut s = DcState::default();
        let token = ApiToken {
            secret_sha256: [9; 32],
            scope: Scope::Write,
            services: vec!["web".into()],
            description: "ci".into(),
            create_unix_ms: 5,
        };
        let record = |value| TokenRecord {
            key: "Acc-1".into(),
            record: Record {
                stamp: Stamp {
                    hlc: 7,
                    origin: "dc2".into(),
                },
                value,
            },
        };
        assert!(s.set_token(record(Some(token)), 1));
        let nothing = |_: &str| false;
        let e = export_entry(&s, &Key::token("acc-1"), &nothing, false).expect("exported");
        let h = Hashed::from_proto(e.clone()).expect("well formed");
        assert_eq!(h.key, Key::token("ACC-1"));
        let mut replica = DcState::default();
        apply_entry(&mut replica, &h.entry);
        assert_eq!(replica.tokens().get("acc-1"), s.tokens().get("acc-1"));
        remove_entry(&mut replica, &h.key);
        assert!(replica.tokens().is_empty());

        let tombstone = TokenRecord {
            key: "acc-1".into(),
            record: Record {
                stamp: Stamp {
                    hlc: 8,
                    origin: "dc1".into(),
                },
                value: None,
            },
        };
        let t = Hashed::from_proto(pb::Entry {
            entry: Some(pb::entry::Entry::Token(token_to_proto(&tombstone))),
        })
        .expect("a tombstone is well formed");
        apply_entry(&mut replica, &t.entry);
        assert_eq!(replica.tokens().get("acc-1"), Some(&tombstone));

        let mut bad = e;
        if let Some(pb::entry::Entry::Token(t)) = bad.entry.as_mut() {
            t.secret_sha256.pop();
        }
        assert!(Hashed::from_proto(bad.clone()).is_err(), "short digest");
        if let Some(pb::entry::Entry::Token(t)) = bad.entry.as_mut() {
            t.secret_sha256.push(0);
            t.scope = "root".into();
        }
        assert!(Hashed::from_proto(bad.clone()).is_err(), "unknown scope");
        if let Some(pb::entry::Entry::Token(t)) = bad.entry.as_mut() {
            t.scope = "write".into();
            t.services = vec!["x".into(); 65];
        }
        assert!(Hashed::from_proto(bad).is_err(), "too many services");
    }

    #[test]
    fn bucket_bits_grow_with_the_replica() {
        assert_eq!(bucket_bits_for(0), 4);
        assert_eq!(bucket_bits_for(10_000), 11);
        assert_eq!(bucket_bits_for(10_000_000), 16);
    }
}
