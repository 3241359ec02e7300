//! The API's error answer: a status code and a plain-text message, as Consul sends them, and the
//! one place catalog errors become HTTP status codes.

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use meridian_catalog::CatalogError;

/// An HTTP error with the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// Plain-text body.
    pub message: String,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 500 with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl From<crate::acl::Denied> for ApiError {
    fn from(e: crate::acl::Denied) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: e.to_string(),
        }
    }
}

/// A bad `?filter` expression: a 400 naming the position.
impl From<super::filter::FilterError> for ApiError {
    fn from(e: super::filter::FilterError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let status = match e {
            // No leader, or none committed in time, or shutting down: the client may retry.
            // A node that does not vote (joining, or removed): the client should try a server.
            CatalogError::Unavailable { .. }
            | CatalogError::Shutdown
            | CatalogError::NotVoter { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response()
    }
}
