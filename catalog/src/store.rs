//! Raft storage on RocksDB: the log (durable, fsync before an append is acknowledged), the vote,
//! and the state machine with its snapshots.
//!
//! One database with four column families: `logs` (big-endian index -> entry), `meta` (vote,
//! committed, last purged), `snapshot` (the latest snapshot) and nothing else. The state machine
//! itself lives in memory as a [`DcState`]; it is rebuilt at start from the latest snapshot plus
//! the committed log after it, which openraft replays. A log prefix is purged only after a
//! snapshot covering it was written with fsync, so nothing committed can be lost.
//!
//! Appends are group-committed: `append` writes the batch (visible to readers at once), then a
//! dedicated thread fsyncs the write-ahead log once for every append queued meanwhile and only then
//! tells openraft the entries are durable.
//!
//! Nothing here fsyncs or serializes the catalog on a runtime worker: the vote, truncation,
//! purge, and a snapshot's build, install and read run on tokio's blocking pool. The runtime's
//! few workers also answer DNS, HTTP and Raft heartbeats, and a 100 ms snapshot build on one of
//! them is a 100 ms stall for everything queued behind it.

// openraft's traits fix the error type to its (large) `StorageError`; boxing it here would only
// move the cost around.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use meridian_topology::dc::DcSnapshot;
use meridian_topology::{DcState, View};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::command::{BatchOutcome, Command, WriteOutcome};
use crate::counters::CatalogCounters;
use crate::types::{StorageError, TypeConfig};

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const CF_SNAPSHOT: &str = "snapshot";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

/// Most files RocksDB keeps open for the catalog (part of the node's descriptor budget).
pub const CATALOG_MAX_OPEN_FILES: i32 = 512;

/// Opens (or creates) the catalog database in `dir` and returns its log store and state machine.
/// `datacenter` names the local DC in the published views; `views` receives a new view after every
/// applied batch that changed the catalog; `counters` counts snapshots.
pub fn open_store(
    dir: &Path,
    datacenter: &str,
    views: watch::Sender<Arc<View>>,
    counters: Arc<CatalogCounters>,
) -> Result<(LogStore, StateMachineStore), StorageError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Raft entries are small and short-lived; LZ4 is the one codec we build RocksDB with.
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // A bounded share of the process's descriptors (the node's budget counts it), so that a
    // flood of connections elsewhere can never leave RocksDB unable to open a file.
    opts.set_max_open_files(CATALOG_MAX_OPEN_FILES);
    let cfs = [CF_LOGS, CF_META, CF_SNAPSHOT]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, opts.clone()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(read_err)?;
    let db = Arc::new(Db {
        inner: Some(db),
        closed: Arc::new(AtomicBool::new(false)),
        snapshot: std::sync::Mutex::new(()),
        counters,
    });

    let (sync_tx, sync_rx) = std_mpsc::channel::<LogFlushed<TypeConfig>>();
    let sync_db = db.clone();
    std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || wal_sync_loop(&sync_db, &sync_rx))
        .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;

    let log = LogStore {
        db: db.clone(),
        sync: sync_tx,
        recent: Arc::default(),
        committed_saved: None,
    };
    let mut sm = StateMachineStore {
        db,
        datacenter: datacenter.into(),
        views,
        inner: SmInner::default(),
    };
    sm.load_snapshot()?;
    sm.publish();
    Ok((log, sm))
}

/// The database, shared by the log store, the state machine and the sync thread. Whichever
/// handle goes last closes RocksDB and then raises `closed`, so that shutdown (and a process
/// exit right after it) can wait until RocksDB has really finished: its background threads must
/// not outlive the process's static destructors.
pub(crate) struct Db {
    inner: Option<DB>,
    closed: Arc<AtomicBool>,
    /// Held while a snapshot is compared with the stored one and written (`save_snapshot`).
    snapshot: std::sync::Mutex<()>,
    /// The node's counters (snapshots built and installed).
    counters: Arc<CatalogCounters>,
}

impl std::ops::Deref for Db {
    type Target = DB;

    fn deref(&self) -> &DB {
        // `inner` is only taken in `drop`.
        self.inner
            .as_ref()
            .expect("the database is open until dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        drop(self.inner.take());
        self.closed.store(true, Ordering::Release);
    }
}

/// Fsyncs the write-ahead log for every batch of queued appends, then acknowledges them.
fn wal_sync_loop(db: &DB, rx: &std_mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        pending.extend(rx.try_iter());
        let result = db.flush_wal(crate::chaos_break::wal_sync());
        for cb in pending {
            cb.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
        }
    }
}

/// Runs `work` on tokio's blocking pool (see the module's note on why).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(
            StorageIOError::write(&std::io::Error::other(format!("storage task failed: {e}")))
                .into(),
        )
    })
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write(&e).into()
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or_else(|| {
        StorageIOError::read(&std::io::Error::other(format!(
            "column family {name} is missing"
        )))
        .into()
    })
}

fn sync_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(crate::chaos_break::wal_sync());
    o
}

fn get_json<T: for<'de> Deserialize<'de>>(
    db: &DB,
    cf_name: &str,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match db.get_cf(cf(db, cf_name)?, key).map_err(read_err)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(read_err),
    }
}

fn put_json<T: Serialize>(
    db: &DB,
    cf_name: &str,
    key: &[u8],
    value: &T,
    sync: bool,
) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(value).map_err(write_err)?;
    let mut opts = WriteOptions::default();
    opts.set_sync(sync && crate::chaos_break::wal_sync());
    db.put_cf_opt(cf(db, cf_name)?, key, bytes, &opts)
        .map_err(write_err)
}

/// The Raft log and vote, in RocksDB.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    sync: std_mpsc::Sender<LogFlushed<TypeConfig>>,
    /// The entries appended last, shared with every reader this store hands out.
    recent: Arc<std::sync::Mutex<Recent>>,
    /// When the committed log ID was last written (see [`COMMITTED_EVERY`]).
    committed_saved: Option<tokio::time::Instant>,
}

/// Least time between two writes of the committed log ID. Under load every node learns of
/// hundreds of commits a second and each write was a RocksDB write (a WAL `write(2)` beside the
/// log's); a stored ID older than the truth only means a restarted node applies less of its log
/// at start and the rest once a leader tells it the commit index (within a heartbeat, or at once
/// when it is elected itself).
const COMMITTED_EVERY: Duration = Duration::from_millis(100);

/// Most entries [`Recent`] keeps: openraft reads an entry back within a few entries of appending
/// it; a follower further behind is sent older entries from RocksDB.
const RECENT_ENTRIES: usize = 256;
/// Most bytes (as stored) of the entries [`Recent`] keeps.
const RECENT_BYTES: usize = 4 * 1024 * 1024;

/// The last entries appended, as appended, with consecutive indexes. Openraft reads each entry
/// back right after appending it (the leader to send it to each follower, every node to apply
/// it); served from here those reads cost a clone of the entry (its commands are shared) instead
/// of a RocksDB read and a JSON parse. Anything else is read from RocksDB.
#[derive(Default)]
struct Recent {
    /// Each entry with its stored size.
    entries: std::collections::VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, entry: Entry<TypeConfig>, size: usize) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.log_id.index.checked_add(1) == Some(entry.log_id.index));
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            match self.entries.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Forgets the entries at `index` and after (a truncation).
    fn truncate(&mut self, index: u64) {
        while let Some((last, size)) = self.entries.back() {
            if last.log_id.index < index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
    }

    /// Forgets the entries up to `index` (a purge).
    fn purge(&mut self, index: u64) {
        while let Some((first, size)) = self.entries.front() {
            if first.log_id.index > index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_front();
        }
    }

    /// The entries `start..end`, if every one of them is here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        if start < first || end > last.checked_add(1)? || start > end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }
}

impl LogStore {
    /// A flag raised once RocksDB is closed (every handle dropped and the database shut down).
    pub fn closed_watch(&self) -> Arc<AtomicBool> {
        self.db.closed.clone()
    }

    /// Writes `entries` (readable at once, durable once the WAL is synced) and keeps them as the
    /// recent entries.
    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), StorageError> {
        let cf_logs = cf(&self.db, CF_LOGS)?;
        let mut batch = WriteBatch::default();
        let mut appended = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.put_cf(cf_logs, entry.log_id.index.to_be_bytes(), &bytes);
            appended.push((entry, bytes.len()));
        }
        // Written (and readable) now; durable once the sync thread has fsynced the WAL.
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut recent = self.recent.lock().map_err(|_| {
            StorageIOError::write_logs(&std::io::Error::other("recent log poisoned"))
        })?;
        for (entry, size) in appended {
            recent.push(entry, size);
        }
        Ok(())
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, StorageError> {
        let mut it = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS)?, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                let entry: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Openraft asks for bounded ranges; an open end is read from RocksDB.
        let end = match range.end_bound() {
            Bound::Included(x) => x.checked_add(1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(end) = end {
            let recent = self.recent.lock().map_err(|_| {
                read_err(std::io::Error::other(
                    "the recent log entries' lock is poisoned",
                ))
            })?;
            if let Some(entries) = recent.get(start, end) {
                return Ok(entries);
            }
        }
        let cf_logs = cf(&self.db, CF_LOGS)?;
        let mut out = Vec::new();
        let start_key = start.to_be_bytes();
        let it = self
            .db
            .iterator_cf(cf_logs, IteratorMode::From(&start_key, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(read_err)?;
            let idx = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| read_err(std::io::Error::other("log key is not 8 bytes")))?,
            );
            if !range.contains(&idx) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId<u64>> = get_json(&self.db, CF_META, KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let (db, vote) = (self.db.clone(), *vote);
        off_runtime(move || {
            put_json(&db, CF_META, KEY_VOTE, &vote, true)
                .map_err(|e| StorageIOError::write_vote(&e).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        get_json(&self.db, CF_META, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError> {
        let now = tokio::time::Instant::now();
        if self
            .committed_saved
            .is_some_and(|at| now.duration_since(at) < COMMITTED_EVERY)
        {
            return Ok(());
        }
        self.committed_saved = Some(now);
        // Not synced: losing it only delays re-applying the log until the leader commits again.
        put_json(&self.db, CF_META, KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError> {
        Ok(get_json::<Option<LogId<u64>>>(&self.db, CF_META, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        self.write_entries(entries)?;
        self.sync
            .send(callback)
            .map_err(|_| StorageIOError::write_logs(&std::io::Error::other("sync thread gone")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        self.recent
            .lock()
            .map_err(|_| StorageIOError::write_logs(&std::io::Error::other("recent log poisoned")))?
            .truncate(log_id.index);
        let db = self.db.clone();
        off_runtime(move || {
            let cf_logs = cf(&db, CF_LOGS)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf_logs, log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
            batch.delete_cf(cf_logs, u64::MAX.to_be_bytes());
            db.write_opt(batch, &sync_opts())
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        self.recent
            .lock()
            .map_err(|_| StorageIOError::write_logs(&std::io::Error::other("recent log poisoned")))?
            .purge(log_id.index);
        let db = self.db.clone();
        off_runtime(move || {
            let cf_logs = cf(&db, CF_LOGS)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(
                cf(&db, CF_META)?,
                KEY_LAST_PURGED,
                serde_json::to_vec(&log_id).map_err(write_err)?,
            );
            batch.delete_range_cf(
                cf_logs,
                0u64.to_be_bytes(),
                log_id.index.saturating_add(1).to_be_bytes(),
            );
            db.write_opt(batch, &sync_opts())
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }
}

#[derive(Default, Clone)]
struct SmInner {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    state: DcState,
}

impl SmInner {
    /// The state machine a snapshot's body holds.
    fn decode(bytes: &[u8]) -> Result<SmInner, StorageError> {
        let body: SnapshotBody =
            serde_json::from_slice(bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(SmInner {
            last_applied: body.last_applied,
            membership: body.membership,
            state: DcState::from_snapshot(body.catalog),
        })
    }
}

/// What a snapshot holds: the catalog and the Raft position it reflects.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    catalog: DcSnapshot,
}

/// The catalog state machine: in memory, published as views, snapshotted to RocksDB.
pub struct StateMachineStore {
    db: Arc<Db>,
    datacenter: Arc<str>,
    views: watch::Sender<Arc<View>>,
    inner: SmInner,
}

impl StateMachineStore {
    fn load_snapshot(&mut self) -> Result<(), StorageError> {
        let Some(bytes) = self
            .db
            .get_cf(cf(&self.db, CF_SNAPSHOT)?, KEY_SNAPSHOT_DATA)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(());
        };
        self.inner = SmInner::decode(&bytes)?;
        Ok(())
    }

    fn publish(&self) {
        let view = View::new(self.datacenter.clone(), self.inner.state.clone());
        self.views.send_replace(Arc::new(view));
    }

    fn apply_command(state: &mut DcState, cmd: Command, index: u64) -> WriteOutcome {
        let (changed, found) = match cmd {
            Command::RegisterNode { node } => (state.upsert_node(node, index), true),
            Command::Register { instance, checks } => {
                (state.register(instance, checks, index), true)
            }
            Command::Deregister { node, id } => {
                let existed = state.deregister(&node, &id, index);
                (existed, existed)
            }
            Command::UpdateCheck {
                node,
                check_id,
                status,
                output,
            } => match state.update_check(&node, &check_id, status, &output, index) {
                Some(changed) => (changed, true),
                None => (false, false),
            },
            // A refused query write changes nothing; the caller explains it from the view.
            Command::SetQuery { query, create } => match state.set_query(query, create, index) {
                Ok(changed) => (changed, true),
                Err(_) => (false, false),
            },
            Command::DeleteQuery { id } => {
                let existed = state.delete_query(&id, index);
                (existed, existed)
            }
            Command::Prune { tokens, intentions } => {
                let mut removed = false;
                for (accessor, stamp) in &tokens {
                    removed |= state.prune_token(accessor, stamp, index);
                }
                for (key, stamp) in &intentions {
                    removed |= state.prune_intention(key, stamp, index);
                }
                (removed, true)
            }
            Command::SetMeshCa { ca } => {
                let taken = state.set_mesh_ca(*ca, index);
                (taken, taken)
            }
            Command::PrepareMeshRotation { next, now_ms } => {
                let taken = state.prepare_mesh_rotation(*next, now_ms, index);
                (taken, taken)
            }
            Command::ActivateMeshRotation { retire_until_ms } => {
                let taken = state.activate_mesh_rotation(retire_until_ms, index);
                (taken, taken)
            }
            Command::SetIntention { intention } => {
                let taken = state.set_intention(intention, index);
                (taken, taken)
            }
            Command::SetToken { token } => {
                let taken = state.set_token(token, index);
                (taken, taken)
            }
            Command::SetCheck { check } => match state.set_check(check, index) {
                Some(changed) => (changed, true),
                None => (false, false),
            },
            Command::DeregisterCheck { node, check_id } => {
                let existed = state.delete_check(&node, &check_id, index);
                (existed, existed)
            }
            Command::DeregisterNode { node } => {
                let existed = state.deregister_node(&node, index);
                (existed, existed)
            }
            Command::Restore { catalog } => {
                *state = DcState::from_snapshot(crate::backup::restamp(*catalog, index));
                (true, true)
            }
            Command::Guarded {
                node,
                id,
                service,
                command,
            } => {
                let now = state.instance(&node, &id).map(|i| &*i.service);
                if now != service.as_deref() {
                    return WriteOutcome {
                        index,
                        guard_failed: true,
                        ..WriteOutcome::default()
                    };
                }
                return Self::apply_command(state, *command, index);
            }
        };
        WriteOutcome {
            index,
            changed,
            found,
            ..WriteOutcome::default()
        }
    }
}

/// Builds snapshots from a frozen copy of the state machine.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    frozen: SmInner,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // The frozen copy shares its maps with the live state (persistent maps): cloning it
        // is cheap, serializing it is not, and that happens off the runtime.
        let (db, frozen) = (self.db.clone(), self.frozen.clone());
        off_runtime(move || build_snapshot(&db, &frozen)).await
    }
}

/// Serializes `frozen` and stores it as the snapshot unless a newer one is stored; the
/// snapshot that is current afterwards. Blocking.
fn build_snapshot(db: &Db, frozen: &SmInner) -> Result<Snapshot<TypeConfig>, StorageError> {
    #[allow(clippy::disallowed_methods)] // a duration for a metric; nothing decides by it
    let started = std::time::Instant::now();
    let body = SnapshotBody {
        last_applied: frozen.last_applied,
        membership: frozen.membership.clone(),
        catalog: frozen.state.to_snapshot(),
    };
    let data = serde_json::to_vec(&body).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
    let snapshot_id = match frozen.last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
        None => format!("empty-{}", data.len()),
    };
    let meta = SnapshotMeta {
        last_log_id: frozen.last_applied,
        last_membership: frozen.membership.clone(),
        snapshot_id,
    };
    let saved = save_snapshot(db, &meta, &data, Replace::IfNewer)?;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    CatalogCounters::inc(&db.counters.snapshots_built);
    db.counters
        .snapshot_build_us
        .fetch_add(micros, Ordering::Relaxed);
    if !saved {
        // A newer snapshot was installed while this one was built (openraft builds on its
        // own task): it stays, and is the current one.
        if let Some(current) = current_snapshot(db)? {
            return Ok(current);
        }
    }
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

/// Whether [`save_snapshot`] may replace a stored snapshot that is as new or newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replace {
    /// Always: a snapshot installed from the leader is the state machine's state now.
    Always,
    /// Only an older one: a snapshot built here from a frozen copy may have been overtaken by
    /// an install meanwhile, and must never replace it (the node would serve a stale snapshot,
    /// and after a restart could not replay the log the newer one let it purge).
    IfNewer,
}

/// The stored snapshot, if any.
fn current_snapshot(db: &DB) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    let Some(meta) = get_json::<SnapshotMeta<u64, BasicNode>>(db, CF_SNAPSHOT, KEY_SNAPSHOT_META)?
    else {
        return Ok(None);
    };
    let data = db
        .get_cf(cf(db, CF_SNAPSHOT)?, KEY_SNAPSHOT_DATA)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?
        .unwrap_or_default();
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}

/// Persists a snapshot with fsync (the log before it may be purged right after); with
/// [`Replace::IfNewer`], only when the stored one is older. Whether it was written.
fn save_snapshot(
    db: &Db,
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
    replace: Replace,
) -> Result<bool, StorageError> {
    let sig = Some(meta.signature());
    // Compared and written under one lock: a build and an install never interleave here.
    let _guard = db
        .snapshot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if replace == Replace::IfNewer
        && let Some(stored) =
            get_json::<SnapshotMeta<u64, BasicNode>>(db, CF_SNAPSHOT, KEY_SNAPSHOT_META)?
        && stored.last_log_id >= meta.last_log_id
        && stored.snapshot_id != meta.snapshot_id
    {
        tracing::info!(
            stored = ?stored.last_log_id,
            built = ?meta.last_log_id,
            "a newer snapshot was installed meanwhile; the one built is dropped"
        );
        return Ok(false);
    }
    let cf_snap = cf(db, CF_SNAPSHOT)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(
        cf_snap,
        KEY_SNAPSHOT_META,
        serde_json::to_vec(meta).map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?,
    );
    batch.put_cf(cf_snap, KEY_SNAPSHOT_DATA, data);
    db.write_opt(batch, &sync_opts())
        .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
    Ok(true)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError> {
        Ok((self.inner.last_applied, self.inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let before = self.inner.state.index();
        let mut out = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            self.inner.last_applied = Some(entry.log_id);
            let outcomes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                // Copied while the log's recent entries still hold the batch (as they nearly
                // always do): cheaper than the JSON parse this read used to be.
                EntryPayload::Normal(batch) => Arc::unwrap_or_clone(batch.commands)
                    .into_iter()
                    .map(|cmd| Self::apply_command(&mut self.inner.state, cmd, index))
                    .collect(),
                EntryPayload::Membership(m) => {
                    self.inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            out.push(BatchOutcome { outcomes });
        }
        if self.inner.state.index() != before {
            self.publish();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            frozen: self.inner.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let (db, meta) = (self.db.clone(), meta.clone());
        // Decoded, then stored with fsync, off the runtime; the state machine changes only
        // once both succeeded.
        self.inner = off_runtime(move || {
            let data = snapshot.into_inner();
            let inner = SmInner::decode(&data)?;
            save_snapshot(&db, &meta, &data, Replace::Always)?;
            CatalogCounters::inc(&db.counters.snapshots_installed);
            Ok(inner)
        })
        .await?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        off_runtime(move || current_snapshot(&db)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Batch;
    use meridian_topology::prepared::{PreparedQuery, QueryService};
    use openraft::CommittedLeaderId;

    fn query(id: &str, name: &str) -> PreparedQuery {
        PreparedQuery {
            id: id.into(),
            name: name.into(),
            service: QueryService {
                service: "web".into(),
                ..Default::default()
            },
            dns_ttl: Some(10),
            template: None,
            create_index: 0,
            modify_index: 0,
        }
    }

    fn entry(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch {
                commands: Arc::new(commands),
            }),
        }
    }

    fn open(dir: &Path) -> (LogStore, StateMachineStore, watch::Receiver<Arc<View>>) {
        let (views, rx) = watch::channel(Arc::new(View::new("dc1", DcState::default())));
        let (log, sm) =
            open_store(dir, "dc1", views, Arc::new(CatalogCounters::default())).expect("opens");
        (log, sm, rx)
    }

    /// Drops the store and waits until RocksDB is closed, so it can be opened again.
    fn close(log: LogStore, sm: StateMachineStore) {
        let closed = log.closed_watch();
        drop((log, sm));
        for _ in 0..1000 {
            if closed.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the store was not closed within 10 s");
    }

    /// Reads after a truncation see the entries written after it, never the truncated ones, from
    /// the recent entries and from RocksDB alike.
    #[tokio::test]
    async fn a_truncated_entry_is_never_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut log, sm, _rx) = open(dir.path());
        let term = |t: u64, index: u64| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(t, 1), index),
            payload: EntryPayload::Blank,
        };
        log.write_entries((1..=5).map(|i| term(1, i)))
            .expect("written");
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .expect("truncated");
        let read = log.try_get_log_entries(1..6).await.expect("read");
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [1, 2]
        );
        log.write_entries([term(2, 3)]).expect("written");
        for _ in 0..2 {
            let read = log.try_get_log_entries(1..4).await.expect("read");
            let ids: Vec<_> = read
                .iter()
                .map(|e| (e.log_id.index, e.log_id.leader_id.term))
                .collect();
            assert_eq!(ids, [(1, 1), (2, 1), (3, 2)]);
            // Again with nothing recent: from RocksDB.
            *log.recent.lock().expect("recent") = Recent::default();
        }
        close(log, sm);
    }

    /// The recent entries answer only ranges they hold whole, forget what a truncation or a purge
    /// removes, start over when the indexes jump, and stay within their bounds.
    #[test]
    fn recent_entries_answer_only_what_they_hold() {
        let mut r = Recent::default();
        for i in 1..=5 {
            r.push(entry(i, vec![]), 10);
        }
        let indexes = |v: Option<Vec<Entry<TypeConfig>>>| {
            v.map(|v| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        };
        assert_eq!(indexes(r.get(2, 5)), Some(vec![2, 3, 4]));
        assert_eq!(indexes(r.get(5, 5)), Some(vec![]));
        assert_eq!(indexes(r.get(0, 3)), None, "index 0 is not held");
        assert_eq!(indexes(r.get(4, 7)), None, "index 6 is not held");
        r.truncate(4);
        assert_eq!(indexes(r.get(3, 5)), None, "4 was truncated");
        r.push(entry(4, vec![]), 10);
        assert_eq!(indexes(r.get(1, 5)), Some(vec![1, 2, 3, 4]));
        r.purge(2);
        assert_eq!(indexes(r.get(2, 4)), None, "2 was purged");
        assert_eq!(indexes(r.get(3, 5)), Some(vec![3, 4]));
        // A gap (an install of a snapshot, say) starts over.
        r.push(entry(9, vec![]), 10);
        assert_eq!(indexes(r.get(3, 5)), None);
        assert_eq!(indexes(r.get(9, 10)), Some(vec![9]));
        assert_eq!(r.bytes, 10);
        for i in 10..10 + RECENT_ENTRIES as u64 + 5 {
            r.push(entry(i, vec![]), 10);
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.bytes, 10 * RECENT_ENTRIES);
        r.push(entry(10 + RECENT_ENTRIES as u64 + 5, vec![]), RECENT_BYTES);
        assert_eq!(r.entries.len(), 1, "a large entry pushes the others out");
    }

    /// openraft builds a snapshot on its own task from a frozen copy; a newer snapshot can be
    /// installed before that build finishes. The older build must not replace it, now or after
    /// a restart.
    #[tokio::test]
    async fn an_older_snapshot_build_never_replaces_a_newer_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = "aaaaaaaa-0000-0000-0000-000000000001";
        let b = "bbbbbbbb-0000-0000-0000-000000000002";
        let (log, mut sm, _rx) = open(dir.path());
        let set = |id: &str, name: &str| Command::SetQuery {
            query: query(id, name),
            create: true,
        };
        sm.apply([entry(1, vec![set(a, "old")])])
            .await
            .expect("applies");
        let mut stale = sm.get_snapshot_builder().await;
        sm.apply([entry(2, vec![set(b, "new")])])
            .await
            .expect("applies");
        let newer = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("newer snapshot");
        assert_eq!(newer.meta.last_log_id.map(|l| l.index), Some(2));
        // The newer one arrives as an install (as from a leader), then the stale build ends.
        let data = newer.snapshot.into_inner();
        sm.install_snapshot(&newer.meta, Box::new(Cursor::new(data)))
            .await
            .expect("installs");
        let built = stale.build_snapshot().await.expect("stale build");
        assert_eq!(
            built.meta.last_log_id.map(|l| l.index),
            Some(2),
            "the newer is current"
        );
        let current = sm
            .get_current_snapshot()
            .await
            .expect("reads")
            .expect("a snapshot");
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(2));
        drop(stale);
        close(log, sm);
        // After a restart the state is the newer snapshot's.
        let (log, sm, rx) = open(dir.path());
        assert!(
            rx.borrow().local().query(b).is_some(),
            "the newer snapshot was kept"
        );
        close(log, sm);
    }

    #[tokio::test]
    async fn prepared_queries_are_applied_published_and_kept_in_snapshots() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = "aaaaaaaa-0000-0000-0000-000000000001";
        let b = "bbbbbbbb-0000-0000-0000-000000000002";
        let (log, mut sm, rx) = open(dir.path());
        let out = sm
            .apply([
                entry(
                    1,
                    vec![
                        Command::SetQuery {
                            query: query(a, "web-fo"),
                            create: true,
                        },
                        // The name is taken: refused, nothing changes.
                        Command::SetQuery {
                            query: query(b, "WEB-FO"),
                            create: true,
                        },
                        // An update of a query that does not exist: refused.
                        Command::SetQuery {
                            query: query(b, "other"),
                            create: false,
                        },
                    ],
                ),
                entry(
                    2,
                    vec![
                        Command::SetQuery {
                            query: query(b, "db-fo"),
                            create: true,
                        },
                        Command::DeleteQuery { id: b.into() },
                        Command::DeleteQuery { id: b.into() },
                    ],
                ),
            ])
            .await
            .expect("applies");
        let flags: Vec<Vec<(bool, bool)>> = out
            .iter()
            .map(|o| o.outcomes.iter().map(|w| (w.changed, w.found)).collect())
            .collect();
        assert_eq!(
            flags,
            [
                vec![(true, true), (false, false), (false, false)],
                vec![(true, true), (true, true), (false, false)],
            ]
        );
        let view = rx.borrow().clone();
        let q = view.local().query_named("web-fo").expect("published");
        assert_eq!((q.id.as_str(), q.create_index, q.dns_ttl), (a, 1, Some(10)));
        assert!(view.local().query(b).is_none());
        assert_eq!(view.local().index(), 2);

        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.expect("snapshot");
        drop(builder);
        close(log, sm);

        // A restart rebuilds the state from the snapshot: the query is still there.
        let (log, sm, rx) = open(dir.path());
        let view = rx.borrow().clone();
        assert_eq!(
            view.local().query(a).map(|q| q.name.as_str()),
            Some("web-fo")
        );
        close(log, sm);
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;
    use meridian_topology::{Instance, Weights};

    fn instance(id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: Vec::new(),
            meta: Default::default(),
            weights: Weights::default(),
            create_index: 0,
            modify_index: 0,
            proxy: None,
        }
    }

    fn guarded(service: Option<&str>, command: Command) -> Command {
        Command::Guarded {
            node: "n1".into(),
            id: "x".into(),
            service: service.map(str::to_owned),
            command: Box::new(command),
        }
    }

    fn service_of_x(state: &DcState) -> Option<String> {
        state.instance("n1", "x").map(|i| i.service.to_string())
    }

    /// A write checked against one owner of an instance ID never lands on another: the ID was
    /// re-registered as `db` between a `web` token's check and its write.
    #[test]
    fn a_guarded_write_applies_only_to_the_instance_its_check_saw() {
        let mut state = DcState::default();
        let register = |service: &str| Command::Register {
            instance: instance("x", service),
            checks: Vec::new(),
        };
        let deregister = Command::Deregister {
            node: "n1".into(),
            id: "x".into(),
        };
        // Checked while absent: a new registration.
        let o = StateMachineStore::apply_command(&mut state, guarded(None, register("web")), 1);
        assert!(o.changed && !o.guard_failed);
        // Meanwhile the ID became `db`'s (another token's write committed first).
        StateMachineStore::apply_command(&mut state, register("db"), 2);
        for (i, stale) in [
            guarded(Some("web"), deregister.clone()),
            guarded(None, register("web")),
        ]
        .into_iter()
        .enumerate()
        {
            let o = StateMachineStore::apply_command(&mut state, stale, 3 + i as u64);
            assert!(o.guard_failed && !o.changed, "{o:?}");
            assert_eq!(service_of_x(&state).as_deref(), Some("db"), "untouched");
        }
        // Checked against what is there now, it applies.
        let o = StateMachineStore::apply_command(&mut state, guarded(Some("db"), deregister), 5);
        assert!(o.found && o.changed && !o.guard_failed);
        assert_eq!(service_of_x(&state), None);
    }
}
