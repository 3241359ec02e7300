//! openraft's own storage test suite, run against our RocksDB log store and state machine.

use std::sync::Arc;

use meridian_catalog::{LogStore, StateMachineStore, TypeConfig, open_store};
use meridian_topology::{DcState, View};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use tokio::sync::watch;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (views, _) = watch::channel(Arc::new(View::new("dc1", DcState::default())));
        let (log, sm) = open_store(dir.path(), "dc1", views)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(RocksBuilder)?;
    Ok(())
}
