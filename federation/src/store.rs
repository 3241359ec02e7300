//! Remote replicas on disk (RocksDB), so that a node restarted while the WAN is down answers for
//! remote datacenters at once from the last state it knew.
//!
//! Layout: `e<dc>\0<key>` holds an entry's protobuf, `m<dc>` the replica's index, last
//! confirmation time and whether it ever completed a sync. Writes are not fsynced: a replica is
//! a cache that the next sync corrects, and the WAL still survives a process crash.

use std::path::Path;

use meridian_protos::federation as pb;
use prost::Message as _;
use rocksdb::{DB, Options, WriteBatch, WriteOptions};

use crate::entry::Key;
use crate::error::FederationError;

/// A replica as it was last written.
#[derive(Debug, Default)]
pub struct Stored {
    /// Its entries.
    pub entries: Vec<pb::Entry>,
    /// Entries that no longer decoded (skipped, counted by the caller).
    pub corrupt: usize,
    /// Origin index.
    pub index: u64,
    /// Last confirmation, ms since the Unix epoch.
    pub confirmed_unix_ms: u64,
    /// Whether it ever completed a sync.
    pub synced: bool,
}

/// The replicas' database.
pub struct Store {
    db: DB,
}

fn entry_prefix(dc: &str) -> Vec<u8> {
    [b"e", dc.as_bytes(), b"\0"].concat()
}

fn entry_key(dc: &str, key: &Key) -> Vec<u8> {
    [entry_prefix(dc), key.to_bytes()].concat()
}

fn meta_key(dc: &str) -> Vec<u8> {
    [b"m", dc.as_bytes()].concat()
}

fn addresses_key(dc: &str) -> Vec<u8> {
    [b"a", dc.as_bytes()].concat()
}

/// The end of the key range that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    // Prefixes end in 0x00 (after a DC name, which never holds 0xff), so incrementing the last
    // byte cannot overflow.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Changes to one replica, written atomically.
pub struct StoreBatch {
    dc: String,
    batch: WriteBatch,
}

impl StoreBatch {
    /// A batch for datacenter `dc`'s replica.
    pub fn new(dc: &str) -> StoreBatch {
        StoreBatch {
            dc: dc.to_owned(),
            batch: WriteBatch::default(),
        }
    }

    /// Drops every entry of the replica.
    pub fn clear(&mut self) {
        let prefix = entry_prefix(&self.dc);
        self.batch.delete_range(&prefix, &prefix_end(&prefix));
    }

    /// Writes an entry.
    pub fn put(&mut self, key: &Key, entry: &pb::Entry) {
        self.batch
            .put(entry_key(&self.dc, key), entry.encode_to_vec());
    }

    /// Removes an entry.
    pub fn delete(&mut self, key: &Key) {
        self.batch.delete(entry_key(&self.dc, key));
    }

    /// Records the WAN addresses the datacenter answered at, each with its last answer (ms
    /// since the Unix epoch), so that a restarted node follows it again without its
    /// configuration naming it, and forgets an address that stopped answering long ago.
    pub fn addresses(&mut self, addresses: &[(String, u64)]) {
        let lines: Vec<String> = addresses
            .iter()
            .map(|(a, ms)| format!("{a}\t{ms}"))
            .collect();
        self.batch.put(addresses_key(&self.dc), lines.join("\n"));
    }

    /// Drops everything held for the datacenter: entries, position and addresses (it was
    /// forgotten).
    pub fn forget(&mut self) {
        self.clear();
        self.batch.delete(meta_key(&self.dc));
        self.batch.delete(addresses_key(&self.dc));
    }

    /// Bytes the batch holds (what a staged snapshot costs in memory until it is written).
    pub fn size_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }

    /// Records the replica's position.
    pub fn meta(&mut self, index: u64, confirmed_unix_ms: u64, synced: bool) {
        let mut v = Vec::with_capacity(17);
        v.extend_from_slice(&index.to_be_bytes());
        v.extend_from_slice(&confirmed_unix_ms.to_be_bytes());
        v.push(u8::from(synced));
        self.batch.put(meta_key(&self.dc), v);
    }
}

/// Most files RocksDB keeps open for the replicas (part of the node's descriptor budget).
pub const FEDERATION_MAX_OPEN_FILES: i32 = 128;

impl Store {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Store, FederationError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Replicas are small next to the catalog; keep RocksDB's memory modest.
        opts.set_write_buffer_size(16 << 20);
        // A bounded share of the process's descriptors (the node's budget counts it).
        opts.set_max_open_files(FEDERATION_MAX_OPEN_FILES);
        let db = DB::open(&opts, path).map_err(|e| FederationError::Store(e.to_string()))?;
        Ok(Store { db })
    }

    /// Reads datacenter `dc`'s replica.
    pub fn load(&self, dc: &str) -> Result<Stored, FederationError> {
        let mut out = Stored::default();
        if let Some(m) = self
            .db
            .get(meta_key(dc))
            .map_err(|e| FederationError::Store(e.to_string()))?
            && m.len() == 17
        {
            let word = |r: std::ops::Range<usize>| {
                m.get(r)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes)
            };
            out.index = word(0..8);
            out.confirmed_unix_ms = word(8..16);
            out.synced = m[16] == 1;
        }
        let prefix = entry_prefix(dc);
        let iter = self.db.iterator(rocksdb::IteratorMode::From(
            &prefix,
            rocksdb::Direction::Forward,
        ));
        for item in iter {
            let (k, v) = item.map_err(|e| FederationError::Store(e.to_string()))?;
            if !k.starts_with(&prefix) {
                break;
            }
            match pb::Entry::decode(&*v) {
                Ok(e) => out.entries.push(e),
                Err(_) => out.corrupt += 1,
            }
        }
        Ok(out)
    }

    /// The datacenters with addresses on disk, and those addresses with their last answer (0
    /// when not recorded, as older versions wrote them).
    #[allow(clippy::type_complexity)]
    pub fn known_datacenters(&self) -> Result<Vec<(String, Vec<(String, u64)>)>, FederationError> {
        let mut out = Vec::new();
        let iter = self.db.iterator(rocksdb::IteratorMode::From(
            b"a",
            rocksdb::Direction::Forward,
        ));
        for item in iter {
            let (k, v) = item.map_err(|e| FederationError::Store(e.to_string()))?;
            let Some(dc) = k.strip_prefix(b"a") else {
                break;
            };
            let (Ok(dc), Ok(v)) = (std::str::from_utf8(dc), std::str::from_utf8(&v)) else {
                continue;
            };
            let addresses: Vec<(String, u64)> = v
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| match l.split_once('\t') {
                    Some((a, ms)) => (a.to_owned(), ms.parse().unwrap_or(0)),
                    None => (l.to_owned(), 0),
                })
                .collect();
            if !addresses.is_empty() {
                out.push((dc.to_owned(), addresses));
            }
        }
        Ok(out)
    }

    /// Applies `batch` atomically.
    pub fn write(&self, batch: StoreBatch) -> Result<(), FederationError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db
            .write_opt(batch.batch, &wo)
            .map_err(|e| FederationError::Store(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::InstanceKey;

    fn entry(id: &str) -> (Key, pb::Entry) {
        let e = pb::Entry {
            entry: Some(pb::entry::Entry::Instance(pb::InstanceEntry {
                instance: Some(pb::Instance {
                    id: id.into(),
                    service: "web".into(),
                    node: "n1".into(),
                    port: 80,
                    ..Default::default()
                }),
                checks: vec![],
            })),
        };
        (Key::Instance(InstanceKey::new("n1", id)), e)
    }

    #[test]
    fn replicas_survive_a_reopen_and_stay_apart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let store = Store::open(dir.path())?;
            let mut b = StoreBatch::new("dc1");
            for id in ["a", "b", "c"] {
                let (k, e) = entry(id);
                b.put(&k, &e);
            }
            b.meta(42, 1_000, true);
            b.addresses(&[("10.0.0.1:8302".into(), 7), ("dc1.example:8302".into(), 0)]);
            store.write(b)?;
            let mut b = StoreBatch::new("dc10");
            let (k, e) = entry("z");
            b.put(&k, &e);
            store.write(b)?;
            let mut b = StoreBatch::new("dc1");
            b.delete(&entry("b").0);
            store.write(b)?;
        }
        let store = Store::open(dir.path())?;
        assert_eq!(
            store.known_datacenters()?,
            [(
                "dc1".to_owned(),
                vec![
                    ("10.0.0.1:8302".to_owned(), 7),
                    ("dc1.example:8302".to_owned(), 0)
                ]
            )]
        );
        let dc1 = store.load("dc1")?;
        assert_eq!(dc1.entries.len(), 2);
        assert_eq!(
            (dc1.index, dc1.confirmed_unix_ms, dc1.synced),
            (42, 1_000, true)
        );
        assert_eq!(
            store.load("dc10")?.entries.len(),
            1,
            "dc1's prefix is not dc10's"
        );
        let mut b = StoreBatch::new("dc1");
        b.clear();
        store.write(b)?;
        assert!(store.load("dc1")?.entries.is_empty());
        assert_eq!(store.load("dc10")?.entries.len(), 1);
        // A forgotten datacenter leaves nothing behind, and nothing of another.
        let mut b = StoreBatch::new("dc1");
        b.forget();
        store.write(b)?;
        assert!(store.known_datacenters()?.is_empty());
        assert_eq!(store.load("dc1")?.index, 0);
        assert_eq!(store.load("dc10")?.entries.len(), 1);
        Ok(())
    }
}
