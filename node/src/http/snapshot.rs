//! `GET /v1/snapshot` (save) and `PUT /v1/snapshot` (restore): a backup of this node's DC, in
//! Meridian's own format (versioned and checksummed: `meridian_catalog::encode_backup`), not
//! Consul's tar of Raft files. Both need the operator scope.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_catalog::{BackupError, Command, MAX_BACKUP_BYTES, decode_backup, encode_backup};

use super::body::read_body;
use super::{ApiError, ApiState};

/// `GET /v1/snapshot[?stale]`: the DC's state as a backup file. Taken after a linearizable read
/// barrier, so it holds every write acknowledged before the request, from whichever server
/// answers; `?stale` takes this server's copy as it is.
pub(super) async fn save(
    State(state): State<ApiState>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let catalog = state.catalog();
    if !q.iter().any(|(k, _)| k == "stale") {
        catalog.read_barrier().await?;
    }
    let view = catalog.view();
    let bytes = encode_backup(catalog.datacenter(), view.local())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("X-Consul-Index", HeaderValue::from(view.local().index()));
    Ok(response)
}

/// `PUT /v1/snapshot`: replaces the DC's state with the backup in the body, through one Raft
/// entry, so every server ends equal. Refused (400, nothing changed) when the file is not a
/// backup, is of another format or datacenter, or its checksum does not match.
pub(super) async fn restore(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Response, ApiError> {
    // A backup's own limit, not the API's: the file holds the whole DC.
    let bytes = read_body(body, MAX_BACKUP_BYTES + 64 * 1024).await?;
    let backup = decode_backup(&bytes).map_err(|e| match e {
        BackupError::TooLarge { .. } => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: e.to_string(),
        },
        other => ApiError::bad_request(other.to_string()),
    })?;
    let dc = state.catalog().datacenter();
    if !backup.header.datacenter.eq_ignore_ascii_case(dc) {
        return Err(ApiError::bad_request(format!(
            "this snapshot is of datacenter {}, and this is {dc}: restore it there",
            backup.header.datacenter
        )));
    }
    let header = backup.header;
    let outcome = state
        .write(Command::Restore {
            catalog: Box::new(backup.catalog),
        })
        .await?;
    tracing::info!(
        from_index = header.index,
        index = outcome.index,
        instances = header.instances,
        "the datacenter's state was restored from a snapshot"
    );
    Ok(axum::Json(serde_json::json!({
        "Datacenter": dc,
        "Index": outcome.index,
        "SnapshotIndex": header.index,
        "Nodes": header.nodes,
        "Instances": header.instances,
        "Checks": header.checks,
        "Queries": header.queries,
    }))
    .into_response())
}
