//! `GET /v1/federation/status`: this datacenter's export and every remote replica, with the
//! digests that show whether a replica holds exactly its origin's state.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;

/// The export side.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExportJson {
    index: u64,
    /// Hex, so that JSON readers do not round a 64-bit number.
    digest: String,
    entries: usize,
}

/// One remote datacenter's replica.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RemoteJson<'a> {
    datacenter: &'a str,
    index: u64,
    digest: String,
    connected: bool,
    synced: bool,
    /// Not being updated: the stream is down (answers come from the last known state).
    stale: bool,
    /// Milliseconds since the origin last confirmed the replica; null if it never did.
    last_contact_ms: Option<u64>,
    instances: usize,
    nodes: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StatusJson<'a> {
    datacenter: &'a str,
    enabled: bool,
    export: Option<ExportJson>,
    remotes: Vec<RemoteJson<'a>>,
}

/// `GET /v1/federation/status`.
pub(super) async fn status(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let view = state.view();
    let now = meridian_federation::now_ms();
    let export = state.federation().map(|f| {
        let (index, digest, entries) = f.export_position();
        ExportJson {
            index,
            digest: format!("{digest:016x}"),
            entries,
        }
    });
    let remotes = view
        .remotes()
        .map(|r| RemoteJson {
            datacenter: &r.name,
            index: r.index,
            digest: format!("{:016x}", r.digest),
            connected: r.connected,
            synced: r.synced,
            stale: !r.connected,
            last_contact_ms: (r.confirmed_unix_ms > 0)
                .then(|| now.saturating_sub(r.confirmed_unix_ms)),
            instances: r.state.instance_count(),
            nodes: r.state.nodes().count(),
        })
        .collect();
    let body = StatusJson {
        datacenter: view.datacenter(),
        enabled: state.federation().is_some(),
        export,
        remotes,
    };
    Json(serde_json::to_value(&body).unwrap_or_default())
}
