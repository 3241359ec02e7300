//! The upkeep of the ACL tokens created through the API: on the DC's Raft leader, every
//! `acl.token_prune_interval_ms` (a minute by default), the DC's token records that can never be in force again (outranked by another
//! DC's later write, or tombstones past [`TOMBSTONE_HORIZON_MS`]) are removed through Raft, so a
//! DC's records are bounded by the tokens in force and the recent deletes, not by every token
//! ever made.
//!
//! [`TOMBSTONE_HORIZON_MS`]: meridian_topology::token::TOMBSTONE_HORIZON_MS

use std::time::Duration;

use meridian_catalog::Command;
use meridian_federation::now_ms;
use meridian_topology::token::prunable;

use crate::http::ApiState;

/// Most records one prune removes (one Raft entry of bounded size; the rest wait a round).
const MAX_PRUNE_BATCH: usize = 1_000;

/// Prunes this DC's token records every `every` while this node leads its DC; runs until
/// aborted.
pub async fn prune_tokens(api: ApiState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let catalog = api.catalog();
        if !catalog.status().is_leader {
            continue;
        }
        let view = api.view();
        let mut records = prunable(
            view.local().tokens(),
            view.remotes().map(|r| r.state.tokens()),
            now_ms(),
        );
        if records.is_empty() {
            continue;
        }
        records.truncate(MAX_PRUNE_BATCH);
        let count = records.len();
        match catalog.write(Command::PruneTokens { records }).await {
            Ok(outcome) => {
                tracing::info!(
                    count,
                    changed = outcome.changed,
                    "pruned token records that can no longer be in force"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning token records failed; next round retries")
            }
        }
    }
}
