//! openraft's own storage test suite, run against our RocksDB log store and state machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meridian_catalog::{CatalogCounters, LogStore, StateMachineStore, TypeConfig, open_store};
use meridian_topology::{DcState, View};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use tokio::sync::watch;

struct RocksBuilder;

/// Dropped after each test: waits until RocksDB is closed before the folder goes, so no database
/// is still shutting down on another thread when the next test starts or the process exits.
struct Guard {
    closed: Arc<AtomicBool>,
    _dir: TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for _ in 0..1000 {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the store was not closed within 10 s of the test's end");
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, Guard> for RocksBuilder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (views, _) = watch::channel(Arc::new(View::new("dc1", DcState::default())));
        let (log, sm) = open_store(
            dir.path(),
            "dc1",
            views,
            Arc::new(CatalogCounters::default()),
        )?;
        let guard = Guard {
            closed: log.closed_watch(),
            _dir: dir,
        };
        Ok((guard, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(RocksBuilder)?;
    Ok(())
}
