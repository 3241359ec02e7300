//! `meridian snapshot save | restore | inspect`: backups of a datacenter through an agent's
//! API (`GET`/`PUT /v1/snapshot`, operator scope); `inspect` reads a file on its own. Every file
//! is checked (format, checksum, counts) before it is written or sent.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use meridian_catalog::{Backup, MAX_BACKUP_BYTES, decode_backup};
use meridian_client::api::ApiClient;

use crate::args::ApiArgs;

/// `meridian snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The agent to talk to.
    #[command(flatten)]
    pub api: ApiArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// `meridian snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Saves the datacenter's state (every node, instance, check and prepared query) to FILE.
    Save {
        /// Where to write it.
        file: PathBuf,
        /// Take the answering server's copy as it is, without a consistent read first.
        #[arg(long)]
        stale: bool,
    },
    /// Replaces the datacenter's state with FILE's, on every server.
    Restore {
        /// A file `snapshot save` wrote.
        file: PathBuf,
    },
    /// Checks FILE (format, checksum) and prints what it holds; needs no agent.
    Inspect {
        /// A file `snapshot save` wrote.
        file: PathBuf,
    },
}

/// Runs a `snapshot` command.
pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Inspect { file } => {
            print(&read(&file)?);
        }
        SnapshotCommand::Save { file, stale } => {
            let client = ApiClient::new(&args.api.http_addr, args.api.token.as_deref())?;
            let path = if stale {
                "/v1/snapshot?stale"
            } else {
                "/v1/snapshot"
            };
            let bytes = client.get_bytes(path, MAX_BACKUP_BYTES + (1 << 20)).await?;
            let backup = decode_backup(&bytes).context("the agent's answer")?;
            // Whole or not at all: a file named as a backup is always a complete one.
            let tmp = file.with_extension("partial");
            let mut out = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            out.write_all(&bytes)
                .and_then(|()| out.sync_all())
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &file).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), file.display())
            })?;
            println!("saved {}", file.display());
            print(&backup);
        }
        SnapshotCommand::Restore { file } => {
            let backup = read(&file)?;
            let bytes = std::fs::read(&file)?;
            let client = ApiClient::new(&args.api.http_addr, args.api.token.as_deref())?;
            let answer = client.put_file("/v1/snapshot", bytes).await?;
            println!(
                "restored {} into {}: {answer}",
                file.display(),
                backup.header.datacenter
            );
        }
    }
    Ok(())
}

/// Reads and checks a backup file.
fn read(file: &Path) -> anyhow::Result<Backup> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if len > (MAX_BACKUP_BYTES + (1 << 20)) as u64 {
        bail!(
            "{} is {len} bytes: larger than any snapshot this version restores",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    decode_backup(&bytes).with_context(|| format!("{}", file.display()))
}

fn print(backup: &Backup) {
    let h = &backup.header;
    println!(
        "datacenter {}, index {}, format {}\n{} nodes, {} instances, {} checks, {} prepared queries\n{} bytes, sha256 {}",
        h.datacenter,
        h.index,
        h.format,
        h.nodes,
        h.instances,
        h.checks,
        h.queries,
        h.bytes,
        h.sha256
    );
}
