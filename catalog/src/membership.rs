//! Changes of a DC's Raft membership at run time: a server added (a learner first, caught up,
//! then a voter) or removed (demoted to a learner, told, then dropped), each step a joint-consensus
//! change through openraft. The leader carries a change out whole, so a change forwarded from any
//! node runs where the membership and the replication progress are known;
//! [`crate::Catalog::change_membership`] gets it there.
//!
//! Every step checks what is already done first, so a change retried after a lost reply or a
//! leader change finishes the work instead of failing on it.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::time::Instant;
use tracing::info;

use crate::types::Raft;

/// The longest a new server may be given to catch up: a forwarded change must finish within the
/// rpc server's 30 s request limit. A server that needs longer stays a learner, still receiving
/// the log, and the same change asked again promotes it once it has caught up.
pub const MAX_CATCH_UP: Duration = Duration::from_secs(25);

/// How long a removal waits for a live server to hear that it no longer votes before dropping
/// it.
const TELL_REMOVED: Duration = Duration::from_secs(3);

/// How long a removal waits for a server whose replication has not moved at all (dead).
const DEAD_AFTER: Duration = Duration::from_millis(500);

/// A change of the DC's Raft membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a server (started with `[raft] join`): a learner first, then a voter once caught up.
    Add {
        /// Its Raft id.
        id: u64,
        /// Its rpc address, `host:port`.
        addr: String,
    },
    /// Removes a server, voter or learner.
    Remove {
        /// Its Raft id.
        id: u64,
    },
}

/// Why the leader did not (yet) carry out a change.
#[derive(Debug)]
pub(crate) enum Step {
    /// This node does not lead; the leader's address when known.
    NotLeader(Option<String>),
    /// Not now (another change in progress, no quorum): try again.
    Retry(String),
    /// Not as asked: retrying cannot help.
    Refused(String),
    /// Raft has stopped here.
    Stopped,
}

/// Carries out `change` on this node, which must lead; returns the log index of the membership
/// entry that holds it (the current one when there was nothing left to do).
pub(crate) async fn apply(
    raft: &Raft,
    change: &MembershipChange,
    catch_up: Duration,
) -> Result<u64, Step> {
    let deadline = Instant::now() + catch_up.min(MAX_CATCH_UP);
    match change {
        MembershipChange::Add { id, addr } => add(raft, *id, addr, deadline).await,
        MembershipChange::Remove { id } => remove(raft, *id).await,
    }
}

/// What the membership says of one id, read once from the leader's metrics.
struct Standing {
    /// The id's address, when it is a member.
    addr: Option<String>,
    /// Whether it votes.
    voter: bool,
    /// The member that already has the address asked for, if another one does.
    addr_owner: Option<u64>,
    /// Every voter.
    voters: BTreeSet<u64>,
    /// The index of the membership entry.
    index: u64,
}

fn standing(raft: &Raft, id: u64, addr: Option<&str>) -> Result<Standing, Step> {
    let m = raft.metrics();
    let m = m.borrow();
    if m.state != ServerState::Leader {
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        return Err(Step::NotLeader(leader));
    }
    let stored = &m.membership_config;
    let membership = stored.membership();
    if membership.get_joint_config().len() > 1 {
        return Err(Step::Retry(
            "another membership change is in progress (joint configuration)".into(),
        ));
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    Ok(Standing {
        addr: membership.get_node(&id).map(|n| n.addr.clone()),
        voter: voters.contains(&id),
        addr_owner: addr.and_then(|a| {
            membership
                .nodes()
                .find(|(other, n)| **other != id && n.addr.eq_ignore_ascii_case(a))
                .map(|(other, _)| *other)
        }),
        voters,
        index: stored.log_id().map_or(0, |l| l.index),
    })
}

async fn add(raft: &Raft, id: u64, addr: &str, deadline: Instant) -> Result<u64, Step> {
    let s = standing(raft, id, Some(addr))?;
    if let Some(owner) = s.addr_owner {
        return Err(Step::Refused(format!(
            "{addr} is already the address of server {owner}"
        )));
    }
    match &s.addr {
        Some(known) if !known.eq_ignore_ascii_case(addr) => {
            return Err(Step::Refused(format!(
                "server {id} is already a member at {known}; remove it first to move it"
            )));
        }
        Some(_) if s.voter => return Ok(s.index),
        Some(_) => {}
        None => {
            raft.add_learner(id, BasicNode::new(addr), false)
                .await
                .map_err(step)?;
            info!(id, addr, "added a learner; waiting for it to catch up");
        }
    }
    caught_up(raft, id, deadline).await?;
    let done = raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
        .await
        .map_err(step)?;
    info!(id, addr, index = done.log_id.index, "server is now a voter");
    Ok(done.log_id.index)
}

/// Waits until the replication to `id` has reached the leader's log twice over: where the log
/// was when the wait began (a snapshot and the log behind it), then where it was after that. A
/// voter that joins far behind would hold every commit of the larger quorum until it caught up.
async fn caught_up(raft: &Raft, id: u64, deadline: Instant) -> Result<(), Step> {
    let mut metrics = raft.metrics();
    for _ in 0..2 {
        let target = metrics.borrow().last_log_index.unwrap_or(0);
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return Err(Step::NotLeader(None));
                }
                if matched(&m, id) >= target {
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let timed_out = left.is_zero()
                || matches!(
                    tokio::time::timeout(left, metrics.changed()).await,
                    Err(_) | Ok(Err(_))
                );
            if timed_out {
                return Err(Step::Refused(format!(
                    "server {id} did not catch up with the leader in time; it stays a learner \
                     and keeps receiving the log. Check that it runs with `[raft] join = true` \
                     and that the leader reaches its rpc address, then ask again to promote it"
                )));
            }
        }
    }
    Ok(())
}

async fn remove(raft: &Raft, id: u64) -> Result<u64, Step> {
    let s = standing(raft, id, None)?;
    if s.addr.is_none() {
        return Ok(s.index);
    }
    if s.voter {
        if s.voters.len() == 1 {
            return Err(Step::Refused(format!(
                "server {id} is the only voter: a datacenter cannot remove its last server"
            )));
        }
        // Kept as a learner for a moment, so that a live server hears it no longer votes (and
        // refuses writes) before the leader stops replicating to it.
        let demoted = raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
            .await
            .map_err(step)?;
        info!(id, index = demoted.log_id.index, "server no longer votes");
        told(raft, id, demoted.log_id.index).await;
    }
    let done = raft
        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
        .await
        .map_err(step)?;
    info!(
        id,
        index = done.log_id.index,
        "server removed from the raft group"
    );
    Ok(done.log_id.index)
}

/// Waits until the replication to `id` has reached `index`: for [`TELL_REMOVED`] at most, and
/// for [`DEAD_AFTER`] only when its replication has not moved at all (a dead server, as when an
/// operator replaces one, should not hold the removal).
async fn told(raft: &Raft, id: u64, index: u64) {
    let mut metrics = raft.metrics();
    let started = Instant::now();
    let first = matched(&metrics.borrow(), id);
    loop {
        {
            let m = metrics.borrow_and_update();
            let now = matched(&m, id);
            if m.state != ServerState::Leader || now >= index {
                return;
            }
            if now == first && started.elapsed() >= DEAD_AFTER {
                info!(id, "the removed server does not answer; dropping it anyway");
                return;
            }
        }
        let left = (started + TELL_REMOVED).saturating_duration_since(Instant::now());
        if left.is_zero() {
            info!(
                id,
                "the removed server did not catch up in time; dropping it anyway"
            );
            return;
        }
        let wake = left.min(Duration::from_millis(100));
        if let Ok(Err(_)) = tokio::time::timeout(wake, metrics.changed()).await {
            return;
        }
    }
}

/// The last log index the leader knows `id` holds (0 when it knows none): its replication
/// progress, as the leader's metrics report it.
fn matched(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64) -> u64 {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map_or(0, |l| l.index)
}

fn step(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Step {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Step::NotLeader(f.leader_node.map(|n| n.addr))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => Step::Retry(p.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Step::Refused(e.to_string())
        }
        RaftError::Fatal(_) => Step::Stopped,
    }
}
