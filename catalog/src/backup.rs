//! Backups of a datacenter's Raft state (`meridian snapshot save | restore | inspect`, and
//! `GET`/`PUT /v1/snapshot`): everything the group holds (nodes, instances, checks, prepared
//! queries) in one file with a format version and a SHA-256 checksum, so that a restore refuses
//! a file from another version, a damaged one, or one of another datacenter, before it touches
//! anything.
//!
//! The file is the line `MERIDIAN-SNAPSHOT`, a one-line JSON header ([`BackupHeader`]), then
//! the catalog as JSON. A restore replaces the DC's state through one Raft entry
//! ([`crate::Command::Restore`]), so every server ends equal; that entry bounds a backup's size
//! ([`MAX_BACKUP_BYTES`]).

use meridian_topology::DcState;
use meridian_topology::dc::DcSnapshot;
use serde::{Deserialize, Serialize};

/// The first line of every backup file.
const MAGIC: &[u8] = b"MERIDIAN-SNAPSHOT\n";

/// The format this version writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// The largest backup a restore accepts: it travels as one Raft entry, which must fit in an
/// AppendEntries beside 31 ordinary batches (the rpc port's 32 MiB message limit). 80,000
/// instances without checks make 14.2 MiB (the `backup` benchmark).
pub const MAX_BACKUP_BYTES: usize = 16 * 1024 * 1024;

/// What a backup says of itself, on its second line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The file format ([`BACKUP_FORMAT`]).
    pub format: u32,
    /// The datacenter it was taken in.
    pub datacenter: String,
    /// The catalog's index when it was taken.
    pub index: u64,
    /// Nodes it holds.
    pub nodes: usize,
    /// Instances it holds.
    pub instances: usize,
    /// Checks it holds.
    pub checks: usize,
    /// Prepared queries it holds.
    pub queries: usize,
    /// Bytes of the catalog that follows the header.
    pub bytes: usize,
    /// SHA-256 of those bytes, in hex.
    pub sha256: String,
}

/// A backup read back: its header and the catalog it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// What the file says of itself.
    pub header: BackupHeader,
    /// The datacenter's state.
    pub catalog: DcSnapshot,
}

/// Why a file is not a backup this version can restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The file does not start as a backup does.
    #[error("not a Meridian snapshot (it does not start with MERIDIAN-SNAPSHOT)")]
    NotABackup,
    /// Written in a format this version does not read.
    #[error("snapshot format {found} is not supported: this version reads format {BACKUP_FORMAT}")]
    Format {
        /// The file's format.
        found: u32,
    },
    /// The catalog's bytes do not match the header: the file is damaged or truncated.
    #[error(
        "snapshot checksum mismatch: the header says {expected}, the data hashes to {found} (damaged or truncated file)"
    )]
    Checksum {
        /// The header's checksum.
        expected: String,
        /// The data's.
        found: String,
    },
    /// The header or the catalog cannot be read, or they disagree.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    /// Larger than a restore can carry.
    #[error("the snapshot is {bytes} bytes; a restore takes at most {MAX_BACKUP_BYTES}")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

/// Writes `state`, the catalog of `datacenter`, as a backup file.
pub fn encode(datacenter: &str, state: &DcState) -> Result<Vec<u8>, BackupError> {
    let catalog = state.to_snapshot();
    let body = serde_json::to_vec(&catalog).map_err(|e| BackupError::Malformed(e.to_string()))?;
    let header = BackupHeader {
        format: BACKUP_FORMAT,
        datacenter: datacenter.to_owned(),
        index: catalog.index,
        nodes: catalog.nodes.len(),
        instances: catalog.instances.len(),
        checks: catalog.checks.len(),
        queries: catalog.queries.len(),
        bytes: body.len(),
        sha256: sha256_hex(&body),
    };
    let head = serde_json::to_vec(&header).map_err(|e| BackupError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + head.len() + 1 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&head);
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a backup file, checking its format, size, checksum and counts.
pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    let newline = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| BackupError::Malformed("no header line".into()))?;
    let (head, body) = (&rest[..newline], &rest[newline + 1..]);
    // The format first: a newer header may not parse as this one.
    let format = serde_json::from_slice::<serde_json::Value>(head)
        .ok()
        .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| BackupError::Malformed("the header has no format".into()))?;
    if format != u64::from(BACKUP_FORMAT) {
        return Err(BackupError::Format {
            found: u32::try_from(format).unwrap_or(u32::MAX),
        });
    }
    let header: BackupHeader =
        serde_json::from_slice(head).map_err(|e| BackupError::Malformed(format!("header: {e}")))?;
    if body.len() > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge { bytes: body.len() });
    }
    let found = sha256_hex(body);
    if body.len() != header.bytes || found != header.sha256 {
        return Err(BackupError::Checksum {
            expected: header.sha256,
            found,
        });
    }
    let catalog: DcSnapshot = serde_json::from_slice(body)
        .map_err(|e| BackupError::Malformed(format!("catalog: {e}")))?;
    let counts = (
        catalog.nodes.len(),
        catalog.instances.len(),
        catalog.checks.len(),
        catalog.queries.len(),
    );
    if counts
        != (
            header.nodes,
            header.instances,
            header.checks,
            header.queries,
        )
    {
        return Err(BackupError::Malformed(format!(
            "the header counts {} nodes, {} instances, {} checks and {} queries; the catalog holds {counts:?}",
            header.nodes, header.instances, header.checks, header.queries
        )));
    }
    Ok(Backup { header, catalog })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `catalog` as a restore applied at log index `index` leaves it: every entry modified then, so
/// that blocking queries and `X-Consul-Index` move forward even when the backup is older than
/// what clients have seen.
pub(crate) fn restamp(mut catalog: DcSnapshot, index: u64) -> DcSnapshot {
    catalog.index = index;
    for n in &mut catalog.nodes {
        n.modify_index = index;
    }
    for i in &mut catalog.instances {
        i.modify_index = index;
    }
    for c in &mut catalog.checks {
        c.modify_index = index;
    }
    for q in &mut catalog.queries {
        q.modify_index = index;
    }
    catalog
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::{Instance, Node};

    fn state() -> DcState {
        let mut s = DcState::default();
        s.upsert_node(
            Node {
                name: "n1".into(),
                address: "10.0.0.1".into(),
                meta: Default::default(),
                create_index: 0,
                modify_index: 0,
            },
            1,
        );
        s.register(
            Instance {
                id: "web-1".into(),
                service: "web".into(),
                node: "n1".into(),
                address: String::new(),
                port: 80,
                tags: Vec::new(),
                meta: Default::default(),
                weights: Default::default(),
                create_index: 0,
                modify_index: 0,
                proxy: None,
            },
            Vec::new(),
            2,
        );
        s
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let bytes = encode("dc1", &state()).expect("encode");
        let backup = decode(&bytes).expect("decode");
        assert_eq!(backup.header.datacenter, "dc1");
        assert_eq!((backup.header.nodes, backup.header.instances), (1, 1));
        assert_eq!(backup.catalog, state().to_snapshot());
    }

    #[test]
    fn damage_another_format_and_garbage_are_refused_by_name() {
        let bytes = encode("dc1", &state()).expect("encode");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        assert!(matches!(
            decode(&flipped),
            Err(BackupError::Checksum { .. })
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(BackupError::Checksum { .. })
        ));
        let text = String::from_utf8(bytes).expect("utf-8");
        let newer = text.replacen("\"format\":1", "\"format\":2", 1);
        let err = decode(newer.as_bytes()).expect_err("format 2");
        assert!(err.to_string().contains("format 2"), "{err}");
        assert!(matches!(decode(b"{}"), Err(BackupError::NotABackup)));
        assert!(matches!(
            decode(b"MERIDIAN-SNAPSHOT\nnot json\n{}"),
            Err(BackupError::Malformed(_))
        ));
    }

    #[test]
    fn a_restore_moves_every_index_forward() {
        let restored = restamp(state().to_snapshot(), 900);
        assert_eq!(restored.index, 900);
        assert!(restored.instances.iter().all(|i| i.modify_index == 900));
        assert!(restored.nodes.iter().all(|n| n.modify_index == 900));
    }
}
