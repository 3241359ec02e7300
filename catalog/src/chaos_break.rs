//! Deliberate faults, compiled in only with the `chaos-broken` feature and switched on by
//! `MERIDIAN_CHAOS_BREAK` (comma-separated names), so the chaos tests can show their checkers
//! fail when a property is broken. `ack-before-commit`: a registration is acknowledged at once
//! and committed 1.5 s later, so a crash in between loses an acknowledged write.
//! `skip-wal-sync`: the catalog's RocksDB write-ahead log is never synced (appends are still
//! written, so they survive kill -9, but not a power loss).

use std::sync::OnceLock;
use std::time::Duration;

use crate::{Catalog, Command, WriteOutcome};

tokio::task_local! {
    /// Set on the delayed write itself, which must take the real path.
    static DELAYED: ();
}

/// Whether fault `name` is switched on.
fn active(name: &str) -> bool {
    std::env::var("MERIDIAN_CHAOS_BREAK").is_ok_and(|v| v.split(',').any(|f| f.trim() == name))
}

/// Whether the catalog store syncs its write-ahead log: false with `skip-wal-sync` on. Read once,
/// because store.rs asks at every sync point (the sync thread's `flush_wal`, every `set_sync`).
pub(crate) fn wal_sync() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    !*SKIP.get_or_init(|| active("skip-wal-sync"))
}

/// With `ack-before-commit` on, starts the write in the background and returns a made-up
/// acknowledgement for a registration.
pub(crate) fn ack_before_commit(cat: &Catalog, cmd: &Command) -> Option<WriteOutcome> {
    if DELAYED.try_with(|()| ()).is_ok()
        || !matches!(cmd, Command::Register { .. })
        || !active("ack-before-commit")
    {
        return None;
    }
    let (cat, cmd) = (cat.clone(), cmd.clone());
    tokio::spawn(DELAYED.scope((), async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = cat.write(cmd).await;
    }));
    Some(WriteOutcome {
        index: 0,
        changed: true,
        found: true,
        ..WriteOutcome::default()
    })
}
