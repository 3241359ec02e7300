//! The power cut itself: reads the journal the interposer (`interposer.c`) wrote for one node's
//! data folder, works out what a power loss would have kept, and rolls the folder back to it.
//!
//! # What is modelled
//!
//! The model is POSIX's promise, as RocksDB relies on it (the journal of a real run shows each
//! step: `IDENTITY` and `CURRENT` written to a `*.dbtmp`, fdatasync'ed, renamed, and the folder
//! fsync'ed; a new `MANIFEST-*` and WAL `*.log` created and made durable by the next folder fsync;
//! the WAL fdatasync'ed up to the bytes an acknowledgement depends on):
//!
//! - **File contents** are durable up to the size the file had when it was last fsync'ed or
//!   fdatasync'ed (the size is read *before* the sync, so bytes appended by another thread during
//!   the sync do not count). A file never synced keeps nothing: it goes back to length 0. Writes
//!   through an `O_DSYNC`/`O_SYNC` descriptor are durable when they return. `sync_file_range` is
//!   recorded but never counts: it only starts or waits for write-back of data pages, not the
//!   file's metadata (its size, its block map) nor the disk's cache, so it promises nothing about
//!   a power loss. Everything after the durable size is cut off (appended data rolled back).
//! - **Names** are durable only through an fsync of their folder: a folder's fsync makes its
//!   listing at that moment the durable one. A file created (or renamed into place) since the
//!   last fsync of its folder disappears; a rename not followed by an fsync of the target's folder
//!   is undone (the replaced file's inode was hard-linked aside by the interposer, so `CURRENT`
//!   comes back with its previous content, and the source name comes back if it was durable).
//!   Files that existed before the node started (none, in the tests: the data folders start
//!   empty) are durable as they were.
//!
//! # What is not
//!
//! - Unlinks are taken as durable at once (a deleted file never comes back: that would need its
//!   content kept). RocksDB only deletes files it no longer needs, so their return would be
//!   harmless to it anyway.
//! - Folders themselves (mkdir, rmdir) are not rolled back: the data folder and RocksDB's folder
//!   are created once at first start, and are kept. (Meridian does not fsync the parent of a
//!   folder it creates; on a first start cut by a power loss the whole folder could vanish,
//!   which loses nothing acknowledged since nothing was yet.)
//! - Data is never reordered or torn inside the durable prefix, and nothing after it survives
//!   (a real disk may keep some unsynced pages: keeping none is the harsher case, and the one
//!   that fails a build that forgets a sync). The metadata of a file (mode, times) is ignored.
//! - Overwriting bytes that were already durable, truncating below the durable size, hard links,
//!   mmap writes (`msync`), `sync`/`syncfs` and descriptors past 65,535 are not modelled: the
//!   journal notes the first four, or an `X` line, and [`PowerCut::unmodelled`] lists them, so a
//!   test can refuse a run the model cannot represent rather than pass it by accident. RocksDB as
//!   Meridian configures it appends only, so the list is empty.
//! - The interposer sees the libc calls of the node process only (raw syscalls and io_uring
//!   would bypass it; RocksDB and Rust's std use libc).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A regular file under the data folder was opened.
    Open {
        ino: u64,
        created: bool,
        truncated: bool,
        path: PathBuf,
    },
    /// Bytes written at `offset`.
    Write { ino: u64, offset: u64, len: u64 },
    /// The file was synced with its size at `size` (`how`: fsync, fdatasync, o_dsync).
    Sync { ino: u64, size: u64, how: String },
    /// `sync_file_range` (not durable).
    RangeSync,
    /// `ftruncate` to `len`.
    Truncate { ino: u64, len: u64 },
    /// `fallocate` (with `KEEP_SIZE` the size does not change; the model needs nothing from it).
    Allocate,
    /// A folder was fsync'ed; its regular files at that moment.
    DirSync {
        dir: PathBuf,
        entries: Vec<(u64, String)>,
    },
    /// A rename into the data folder; the replaced file's inode linked at `saved`.
    Rename {
        ino: u64,
        saved: Option<PathBuf>,
        from: Option<PathBuf>,
        to: PathBuf,
    },
    /// An unlink.
    Unlink { path: PathBuf },
    /// Something the interposer could not record (see the module docs).
    Unrecorded(String),
    /// A process loaded the interposer.
    Process,
}

fn num(field: Option<&str>, line: &str) -> Result<u64> {
    field
        .context("missing field")
        .and_then(|f| f.parse::<u64>().context("not a number"))
        .with_context(|| format!("journal line {line:?}"))
}

fn text<'a>(field: Option<&'a str>, line: &str) -> Result<&'a str> {
    field.with_context(|| format!("journal line {line:?}: missing field"))
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (s != "-").then(|| PathBuf::from(s))
}

fn parse_line(line: &str) -> Result<Event> {
    let mut f = line.split('\t');
    let tag = f.next().unwrap_or_default();
    Ok(match tag {
        "O" => Event::Open {
            ino: num(f.next(), line)?,
            created: num(f.next(), line)? == 1,
            truncated: num(f.next(), line)? == 1,
            path: {
                let _size = num(f.next(), line)?;
                PathBuf::from(text(f.next(), line)?)
            },
        },
        "W" => Event::Write {
            ino: num(f.next(), line)?,
            offset: num(f.next(), line)?,
            len: num(f.next(), line)?,
        },
        "S" => Event::Sync {
            ino: num(f.next(), line)?,
            size: num(f.next(), line)?,
            how: text(f.next(), line)?.to_owned(),
        },
        "Y" => Event::RangeSync,
        "T" => Event::Truncate {
            ino: num(f.next(), line)?,
            len: num(f.next(), line)?,
        },
        "F" => Event::Allocate,
        "D" => {
            let dir = PathBuf::from(text(f.next(), line)?);
            let entries = f
                .map(|e| {
                    let (ino, name) = e
                        .split_once(':')
                        .with_context(|| format!("journal line {line:?}: entry {e:?}"))?;
                    Ok((num(Some(ino), line)?, name.to_owned()))
                })
                .collect::<Result<_>>()?;
            Event::DirSync { dir, entries }
        }
        "R" => Event::Rename {
            ino: num(f.next(), line)?,
            saved: opt_path(text(f.next(), line)?),
            from: opt_path(text(f.next(), line)?),
            to: PathBuf::from(text(f.next(), line)?),
        },
        "U" => Event::Unlink {
            path: PathBuf::from(text(f.next(), line)?),
        },
        "X" => Event::Unrecorded(f.collect::<Vec<_>>().join(" ")),
        "P" => Event::Process,
        _ => bail!("journal line {line:?}: unknown record"),
    })
}

/// What a power cut did to one data folder, and what the journal showed.
#[derive(Debug, Default, Clone)]
pub struct PowerCut {
    /// Files whose name was not durable, removed.
    pub removed: Vec<PathBuf>,
    /// Files cut back to their durable size: (path, bytes dropped).
    pub truncated: Vec<(PathBuf, u64)>,
    /// Names that went back to an older file (a rename undone), or came back.
    pub restored: Vec<PathBuf>,
    /// fsync/fdatasync of the catalog's write-ahead log files (`raft/*.log`).
    pub wal_syncs: usize,
    /// fsyncs of the catalog's RocksDB folder.
    pub raft_dir_syncs: usize,
    /// All file syncs and folder syncs seen.
    pub syncs: usize,
    /// `sync_file_range` calls seen (not counted as durable).
    pub range_syncs: usize,
    /// Journal lines.
    pub records: usize,
    /// What the model could not represent (see the module docs); empty in a trustworthy run.
    pub unmodelled: Vec<String>,
}

impl PowerCut {
    /// Bytes dropped from files that stayed.
    pub fn bytes_dropped(&self) -> u64 {
        self.truncated.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for PowerCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records, {} syncs ({} of the WAL, {} of raft/), {} sync_file_range ignored; \
             removed {} files, cut {} bytes from {} files, restored {} names",
            self.records,
            self.syncs,
            self.wal_syncs,
            self.raft_dir_syncs,
            self.range_syncs,
            self.removed.len(),
            self.bytes_dropped(),
            self.truncated.len(),
            self.restored.len(),
        )?;
        if !self.unmodelled.is_empty() {
            write!(f, "; NOT MODELLED: {}", self.unmodelled.join("; "))?;
        }
        Ok(())
    }
}

/// Regular files under `dir` (recursively): path -> (inode, size).
fn walk(dir: &Path) -> Result<BTreeMap<PathBuf, (u64, u64)>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                todo.push(e.path());
            } else if meta.is_file() {
                out.insert(e.path(), (meta.ino(), meta.len()));
            }
        }
    }
    Ok(out)
}

/// The durable state of one data folder, replayed from its journal.
#[derive(Debug, Default)]
pub struct Model {
    /// Durable size of every inode seen.
    size: HashMap<u64, u64>,
    /// Durable names: path -> inode.
    names: BTreeMap<PathBuf, u64>,
    /// The last name of every inode, for the report.
    paths: HashMap<u64, PathBuf>,
}

impl Model {
    /// The state before the node starts: every file already in `data` is durable as it is.
    pub fn before_start(data: &Path) -> Result<Model> {
        let mut m = Model::default();
        for (path, (ino, len)) in walk(data)? {
            m.size.insert(ino, len);
            m.paths.insert(ino, path.clone());
            m.names.insert(path, ino);
        }
        Ok(m)
    }

    fn durable(&self, ino: u64) -> u64 {
        // An inode never seen (created by a path the interposer did not track) kept nothing.
        self.size.get(&ino).copied().unwrap_or(0)
    }

    fn apply(&mut self, e: Event, cut: &mut PowerCut) {
        match e {
            Event::Open {
                ino,
                created,
                truncated,
                path,
            } => {
                if created {
                    // A new file (its inode number may be a deleted file's: start afresh).
                    self.size.insert(ino, 0);
                } else if truncated && self.durable(ino) > 0 {
                    cut.unmodelled
                        .push(format!("O_TRUNC of durable data in {}", path.display()));
                }
                self.paths.insert(ino, path);
            }
            Event::Write { ino, offset, len } => {
                if len > 0 && offset < self.durable(ino) {
                    cut.unmodelled.push(format!(
                        "overwrite of durable bytes at {offset} in {}",
                        self.name(ino)
                    ));
                }
            }
            Event::Sync { ino, size, how: _ } => {
                cut.syncs += 1;
                if self.is_wal(ino) {
                    cut.wal_syncs += 1;
                }
                self.size.insert(ino, size);
            }
            Event::RangeSync => cut.range_syncs += 1,
            Event::Truncate { ino, len } => {
                if len < self.durable(ino) {
                    cut.unmodelled.push(format!(
                        "truncation of durable data to {len} in {}",
                        self.name(ino)
                    ));
                }
            }
            Event::Allocate | Event::Process => {}
            Event::DirSync { dir, entries } => {
                cut.syncs += 1;
                if dir.file_name().is_some_and(|n| n == "raft") {
                    cut.raft_dir_syncs += 1;
                }
                self.names.retain(|p, _| p.parent() != Some(dir.as_path()));
                for (ino, name) in entries {
                    self.names.insert(dir.join(name), ino);
                }
            }
            Event::Rename { ino, to, .. } => {
                // Durable only through the next fsync of the folder (DirSync above); the old
                // target's inode is in the saved folder meanwhile.
                self.paths.insert(ino, to);
            }
            Event::Unlink { path } => {
                self.names.remove(&path);
            }
            Event::Unrecorded(what) => cut.unmodelled.push(format!("interposer: {what}")),
        }
    }

    fn name(&self, ino: u64) -> String {
        self.paths
            .get(&ino)
            .map_or_else(|| format!("inode {ino}"), |p| p.display().to_string())
    }

    /// A write-ahead log file of the catalog's RocksDB (`…/raft/NNNNNN.log`).
    fn is_wal(&self, ino: u64) -> bool {
        self.paths.get(&ino).is_some_and(|p| {
            p.extension().is_some_and(|x| x == "log")
                && p.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == "raft")
        })
    }
}

/// Rolls `data` back to what a power cut would have kept, by the journal at `journal`, starting
/// from `before` (the state at the node's start); `saved` is the interposer's folder of replaced
/// files, emptied afterwards. The node must be dead (kill -9) already.
pub fn power_cut(data: &Path, journal: &Path, saved: &Path, before: Model) -> Result<PowerCut> {
    let text = std::fs::read_to_string(journal)
        .with_context(|| format!("reading the journal {}", journal.display()))?;
    let mut cut = PowerCut::default();
    let mut model = before;
    for line in text.lines() {
        cut.records += 1;
        model.apply(parse_line(line)?, &mut cut);
    }

    // Where each inode's content can still be read: its current names, or the saved links.
    let now = walk(data)?;
    let mut live: HashMap<u64, PathBuf> = HashMap::new();
    for (path, (ino, _)) in walk(saved)?.into_iter().chain(now.clone()) {
        live.insert(ino, path);
    }

    // Read every durable file's content first, then replace the folder's files with them: a
    // name may need another name's inode (a rename undone).
    let mut keep: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (name, ino) in &model.names {
        let Some(source) = live.get(ino) else {
            // Listed by a folder fsync, then unlinked (unlinks count at once): gone.
            continue;
        };
        let want = model.durable(*ino);
        let mut bytes =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        if (bytes.len() as u64) < want {
            cut.unmodelled.push(format!(
                "{} is shorter ({}) than its durable size ({want})",
                source.display(),
                bytes.len()
            ));
        }
        bytes.truncate(usize::try_from(want).unwrap_or(usize::MAX));
        match now.get(name) {
            Some((cur_ino, len)) if cur_ino == ino => {
                if *len > bytes.len() as u64 {
                    cut.truncated
                        .push((name.clone(), *len - bytes.len() as u64));
                }
            }
            _ => cut.restored.push(name.clone()),
        }
        keep.push((name.clone(), bytes));
    }
    for path in now.keys() {
        if !model.names.contains_key(path) {
            cut.removed.push(path.clone());
        }
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    for (name, bytes) in keep {
        std::fs::write(&name, bytes).with_context(|| format!("writing {}", name.display()))?;
    }
    let _ = std::fs::remove_dir_all(saved);
    std::fs::create_dir_all(saved)?;
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::write(p, s).expect("write");
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).expect("stat").ino()
    }

    /// A hand-written journal of RocksDB's steps: a synced, listed WAL keeps its synced prefix;
    /// an unsynced file and an unlisted one vanish; a rename without a folder fsync is undone.
    #[test]
    fn the_model_keeps_only_what_was_synced_and_listed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let raft = data.join("raft");
        let saved = tmp.path().join("saved");
        std::fs::create_dir_all(&raft).expect("mkdir");
        std::fs::create_dir_all(&saved).expect("mkdir");
        let before = Model::before_start(&data).expect("walk");

        let (wal, current, tmpf, fresh) = (
            raft.join("000004.log"),
            raft.join("CURRENT"),
            raft.join("000009.dbtmp"),
            raft.join("000010.sst"),
        );
        write(&wal, "durable-tail");
        write(&current, "MANIFEST-1\n");
        let (w, c) = (ino(&wal), ino(&current));
        let mut j = format!(
            "P\t1\nO\t{w}\t1\t1\t0\t{}\nW\t{w}\t0\t7\nS\t{w}\t7\tfdatasync\nW\t{w}\t7\t5\n\
             O\t{c}\t1\t1\t0\t{}\nS\t{c}\t11\tfdatasync\nD\t{}\t{w}:000004.log\t{c}:CURRENT\n",
            wal.display(),
            current.display(),
            raft.display()
        );
        // CURRENT replaced by a rename that no folder fsync followed; its old inode saved.
        let keep = saved.join("r1-1");
        std::fs::hard_link(&current, &keep).expect("link");
        write(&tmpf, "MANIFEST-2\n");
        let t = ino(&tmpf);
        std::fs::rename(&tmpf, &current).expect("rename");
        j += &format!(
            "O\t{t}\t1\t1\t0\t{}\nS\t{t}\t11\tfdatasync\nR\t{t}\t{}\t{}\t{}\n",
            tmpf.display(),
            keep.display(),
            tmpf.display(),
            current.display()
        );
        // A synced file whose folder was never fsync'ed afterwards.
        write(&fresh, "sst");
        let s = ino(&fresh);
        j += &format!(
            "O\t{s}\t1\t1\t0\t{}\nS\t{s}\t3\tfsync\nY\t{s}\t0\t3\n",
            fresh.display()
        );
        let journal = tmp.path().join("journal");
        write(&journal, &j);

        let cut = power_cut(&data, &journal, &saved, before).expect("cut");
        assert!(cut.unmodelled.is_empty(), "{cut}");
        assert_eq!(cut.wal_syncs, 1);
        assert_eq!(cut.range_syncs, 1);
        assert_eq!(std::fs::read_to_string(&wal).expect("wal"), "durable");
        assert_eq!(
            std::fs::read_to_string(&current).expect("current"),
            "MANIFEST-1\n"
        );
        assert!(!fresh.exists());
        assert_eq!(cut.removed, vec![fresh]);
        assert_eq!(cut.truncated, vec![(wal, 5)]);
        assert_eq!(cut.restored, vec![current]);
    }

    #[test]
    fn overwriting_durable_bytes_is_reported_as_not_modelled() {
        let mut m = Model::default();
        let mut cut = PowerCut::default();
        for line in ["O\t5\t1\t0\t0\t/d/f", "S\t5\t10\tfsync", "W\t5\t4\t2"] {
            m.apply(parse_line(line).expect("parses"), &mut cut);
        }
        assert_eq!(cut.unmodelled.len(), 1, "{cut}");
        assert!(parse_line("Q\t1").is_err());
        assert!(parse_line("S\tx\t1\tfsync").is_err());
    }
}
