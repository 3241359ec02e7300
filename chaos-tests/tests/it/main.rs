//! The chaos suite against the real `meridian` binary: every scenario of the default set must
//! pass, and the checkers must fail on a deliberately broken build (`meridian-broken`, feature
//! `chaos-broken`), which shows that each would notice its property broken.
//!
//! The scenarios run one at a time (a nextest test group of one thread, and a lock for
//! `cargo test`): each starts five processes, and cuts by address range. `MERIDIAN_CHAOS_SEED`
//! replays a seed in every test.

use anyhow::{Result, ensure};
use meridian_chaos_tests::powerloss;
use meridian_chaos_tests::scenario::{self, Options, RunReport, Scenario};

/// One scenario at a time in this process, too.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seed() -> Option<u64> {
    std::env::var("MERIDIAN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
}

async fn must_pass(s: Scenario, cuts: Option<&'static str>) -> Result<()> {
    must_pass_in(s, cuts, false).await
}

/// [`must_pass`], with only the gateways facing the WAN when `gateways_only`.
async fn must_pass_in(s: Scenario, cuts: Option<&'static str>, gateways_only: bool) -> Result<()> {
    let _one = SERIAL.lock().await;
    let r = scenario::run(
        s,
        &Options {
            seed: seed(),
            cuts,
            gateways_only,
            ..Options::default()
        },
    )
    .await?;
    println!("{r}");
    ensure!(r.passed(), "{r}");
    Ok(())
}

/// Runs `s` on the broken build with `fault` on, and checks that `checker` fails.
async fn must_catch(s: Scenario, fault: &str, checker: &str) -> Result<RunReport> {
    let _one = SERIAL.lock().await;
    let bin = scenario::binary("meridian-broken", &["chaos-broken"])?;
    let r = scenario::run(
        s,
        &Options {
            seed: seed(),
            bin: Some(bin),
            env: vec![("MERIDIAN_CHAOS_BREAK".into(), fault.into())],
            ..Options::default()
        },
    )
    .await?;
    println!("{r}");
    ensure!(
        r.failed_checkers().contains(checker),
        "the {checker} checker passed a build with {fault}:\n{r}"
    );
    // The failure was the point: its folder is not worth keeping.
    if let Some(d) = &r.run_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(r)
}

/// One test per scenario; `proxy` forces the user-space cuts (the others cut with iptables
/// when the tests run as root, as CI does), so both mechanisms run in CI.
macro_rules! scenarios {
    ($($test:ident => $s:expr, $cuts:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() -> Result<()> {
            must_pass($s, $cuts).await
        }
    )*};
}

scenarios! {
    dc_loss_and_return => Scenario::DcLoss, None;
    symmetric_partition => Scenario::Partition, None;
    symmetric_partition_in_the_proxy => Scenario::Partition, Some("proxy");
    one_way_partition => Scenario::OneWayPartition, Some("proxy");
    leader_kill_during_writes => Scenario::LeaderKill, None;
    frozen_leader => Scenario::FrozenLeader, None;
    gateway_killed_with_connections_open => Scenario::GatewayKill, None;
    slow_wan => Scenario::SlowWan, None;
    flapping_link => Scenario::FlappingLink, Some("proxy");
    node_restarted_during_a_partition => Scenario::RestartInPartition, None;
    whole_dc_restarted_at_once => Scenario::DcRestart, None;
}

/// The same scenarios where only the gateways face the WAN (federation through them, no link
/// for a server's WAN port): the ones that exercise the WAN's shape.
macro_rules! through_the_gateways {
    ($($test:ident => $s:expr, $cuts:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() -> Result<()> {
            must_pass_in($s, $cuts, true).await
        }
    )*};
}

through_the_gateways! {
    gateways_only_dc_loss_and_return => Scenario::DcLoss, None;
    gateways_only_symmetric_partition => Scenario::Partition, None;
    gateways_only_gateway_killed_with_connections_open => Scenario::GatewayKill, None;
    gateways_only_slow_wan => Scenario::SlowWan, None;
    gateways_only_node_restarted_during_a_partition => Scenario::RestartInPartition, None;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_checker_catches_acknowledging_before_commit() -> Result<()> {
    must_catch(Scenario::LeaderKill, "ack-before-commit", "durability").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_dc_checker_catches_a_resolver_that_ignores_down() -> Result<()> {
    must_catch(Scenario::DcLoss, "ignore-down", "dead-dc-answers").await?;
    Ok(())
}

/// A DC-wide power loss (every data folder rolled back to what was fsync'ed) on the real build:
/// no acknowledged registration may be lost, and the journals must show the WAL being synced
/// (else the test would pass for the wrong reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_keeps_every_acknowledged_write() -> Result<()> {
    let _one = SERIAL.lock().await;
    let mut r = powerloss::run(&powerloss::Options::default()).await?;
    println!("{r}");
    let ok = r.acked > 0
        && r.most_lost() == 0
        && !r.unmodelled()
        && r.cuts
            .iter()
            .all(|(_, c)| c.wal_syncs > 0 && c.raft_dir_syncs > 0);
    if !ok {
        r.keep();
    }
    ensure!(r.acked > 0, "nothing was acknowledged before the cut:\n{r}");
    ensure!(
        !r.unmodelled(),
        "the journals show what the model cannot represent:\n{r}"
    );
    ensure!(
        r.cuts
            .iter()
            .all(|(_, c)| c.wal_syncs > 0 && c.raft_dir_syncs > 0),
        "the interposer saw no fsync of some node's WAL or RocksDB folder:\n{r}"
    );
    ensure!(r.most_lost() == 0, "acknowledged registrations lost:\n{r}");
    Ok(())
}

/// The same power loss on a build that never syncs its WAL (`skip-wal-sync`): acknowledged
/// registrations must be lost, which shows the test above would notice a missing sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_catches_a_skipped_wal_sync() -> Result<()> {
    let _one = SERIAL.lock().await;
    let bin = scenario::binary("meridian-broken", &["chaos-broken"])?;
    let mut r = powerloss::run(&powerloss::Options {
        bin: Some(bin),
        env: vec![("MERIDIAN_CHAOS_BREAK".into(), "skip-wal-sync".into())],
        ..powerloss::Options::default()
    })
    .await?;
    println!("{r}");
    if r.acked == 0 || r.most_lost() == 0 {
        r.keep();
    }
    ensure!(r.acked > 0, "nothing was acknowledged before the cut:\n{r}");
    ensure!(
        r.most_lost() > 0,
        "a build that never syncs its WAL lost no acknowledged registration:\n{r}"
    );
    Ok(())
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    for s in Scenario::ALL {
        for seed in [1, 42, 7_777] {
            assert_eq!(
                scenario::plan(s, seed, false).to_string(),
                scenario::plan(s, seed, false).to_string()
            );
        }
    }
    let differ = (0..20u64)
        .map(|seed| scenario::plan(Scenario::Partition, seed, false).to_string())
        .collect::<std::collections::BTreeSet<_>>();
    assert!(differ.len() > 1, "seeds do not change the schedule");
}
