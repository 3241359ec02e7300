//! The `/metrics` page: one registry per node, on which every part registers its own families
//! (the HTTP API, the catalog, DNS, federation, the gateway, failover), encoded in the
//! OpenMetrics text format at each scrape. No globals: two nodes in one process count apart.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

/// The content type of [`exposition`]'s text (Prometheus asks for it and reads it).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every family registered on `registry`, in the OpenMetrics text format.
pub fn exposition(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        // Writing into a String fails only if a collector reports an error.
        tracing::warn!(error = %e, "a metric family could not be encoded");
    }
    text
}

/// The `/metrics` response for `registry`.
pub fn page(registry: &Registry) -> Response {
    (
        [(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)],
        exposition(registry),
    )
        .into_response()
}
