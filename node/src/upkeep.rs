//! The upkeep of what every DC writes and none owns (the ACL tokens created through the API,
//! intentions): on the DC's Raft leader, every `acl.token_prune_interval_ms` (a minute by
//! default), the DC's records that can never be in force again (outranked by another DC's later
//! write, or tombstones past their horizon) are removed through Raft, so a DC's records are
//! bounded by what is in force and the recent deletes, not by everything ever written. And the
//! DC's mesh CA, made once by its leader, and its rotation: the next root is published first and
//! signs only after `[mesh] rotation_activate_s`.

use std::time::Duration;

use meridian_catalog::Command;
use meridian_federation::now_ms;
use meridian_topology::mesh::{MeshCa, MeshKey, MeshRoot};
use meridian_topology::{intention, token};

use crate::http::ApiState;

/// Most records one prune removes (one Raft entry of bounded size; the rest wait a round).
const MAX_PRUNE_BATCH: usize = 1_000;

/// How often a node looks whether its DC needs a mesh CA (every node looks; the leader makes it).
const MESH_CA_CHECK: Duration = Duration::from_secs(2);

/// Makes this DC's mesh CA in `trust_domain` when this node leads its DC and the DC has none in
/// that trust domain (at the first start, or after a restore of a backup without one); runs until
/// aborted. The first CA committed wins, so two leaders in turn cannot leave two keys.
pub async fn ensure_mesh_ca(api: ApiState, trust_domain: String) {
    let mut tick = tokio::time::interval(MESH_CA_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let catalog = api.catalog();
        if !catalog.status().is_leader {
            continue;
        }
        let view = catalog.view();
        let root = view
            .local()
            .mesh_root()
            .filter(|r| r.trust_domain == trust_domain);
        if let Some(root) = root {
            // A rotation under way: its next root signs once published long enough.
            if let Some(next) = root.next()
                && now_ms() >= next.since_unix_ms + millis(api.rotation_delay())
            {
                // The old root's last leaf ends a leaf lifetime from now (plus the clock skew a
                // leaf is backdated by).
                let retire_until_ms = now_ms() + millis(api.leaf_ttl()) + 60_000;
                match catalog
                    .write(Command::ActivateMeshRotation { retire_until_ms })
                    .await
                {
                    Ok(o) if o.changed => {
                        tracing::info!("the next mesh root now signs; the old one is retired")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "activating the next mesh root failed; retrying")
                    }
                }
            }
            continue;
        }
        let pair =
            match meridian_identity::mesh::create_mesh_ca(&trust_domain, catalog.datacenter()) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make the mesh CA");
                    continue;
                }
            };
        let ca = MeshCa {
            root: MeshRoot {
                trust_domain: trust_domain.clone(),
                cert_pem: pair.cert_pem,
                created_unix_ms: now_ms(),
                others: Vec::new(),
            },
            key: MeshKey(pair.key_pem),
        };
        match catalog.write(Command::SetMeshCa { ca: Box::new(ca) }).await {
            Ok(o) if o.changed => tracing::info!(%trust_domain, "made this datacenter's mesh CA"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "storing the mesh CA failed; retrying"),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Publishes a new mesh CA as this DC's next root (`PUT /v1/connect/ca/configuration`): the
/// upkeep above activates it once `[mesh] rotation_activate_s` has passed. Whether it was taken
/// (not when a rotation is already under way).
pub async fn prepare_rotation(api: &ApiState) -> Result<bool, meridian_catalog::CatalogError> {
    let catalog = api.catalog();
    let Some(root) = catalog.view().local().mesh_root().cloned() else {
        return Ok(false);
    };
    let pair =
        match meridian_identity::mesh::create_mesh_ca(&root.trust_domain, catalog.datacenter()) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the next mesh CA");
                return Ok(false);
            }
        };
    let now = now_ms();
    let next = MeshCa {
        root: MeshRoot {
            trust_domain: root.trust_domain.clone(),
            cert_pem: pair.cert_pem,
            created_unix_ms: now,
            others: Vec::new(),
        },
        key: MeshKey(pair.key_pem),
    };
    let outcome = catalog
        .write(Command::PrepareMeshRotation {
            next: Box::new(next),
            now_ms: now,
        })
        .await?;
    if outcome.changed {
        tracing::info!("published the next mesh root; it signs after [mesh] rotation_activate_s");
        // The answer (`GET /v1/connect/ca/configuration`'s shape) names the next root: read it
        // from a view that holds it.
        api.settle(&outcome).await;
    }
    Ok(outcome.changed)
}

/// Prunes this DC's token and intention records every `every` while this node leads its DC;
/// runs until aborted.
pub async fn prune(api: ApiState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let catalog = api.catalog();
        if !catalog.status().is_leader {
            continue;
        }
        let view = api.view();
        let now = now_ms();
        let mut tokens = token::prunable(
            view.local().tokens(),
            view.remotes().map(|r| r.state.tokens()),
            now,
        );
        let mut intentions = intention::prunable(
            view.local().intentions(),
            view.remotes().map(|r| r.state.intentions()),
            now,
        );
        if tokens.is_empty() && intentions.is_empty() {
            continue;
        }
        tokens.truncate(MAX_PRUNE_BATCH);
        intentions.truncate(MAX_PRUNE_BATCH);
        let (t, i) = (tokens.len(), intentions.len());
        match catalog.write(Command::Prune { tokens, intentions }).await {
            Ok(outcome) => tracing::info!(
                tokens = t,
                intentions = i,
                changed = outcome.changed,
                "pruned records that can no longer be in force"
            ),
            Err(e) => tracing::warn!(error = %e, "pruning records failed; next round retries"),
        }
    }
}
