//! Reading request bodies, bounded in size and in time.
//!
//! A body over the limit gets 413, but only after the rest of it has been read and thrown away
//! (up to a cap, for a few seconds): a server that answers and closes while the client is still
//! sending makes most clients report a broken pipe instead of the 413 and its message.

use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::http::StatusCode;
use tokio::time::{Instant, timeout_at};

use super::ApiError;

/// How long a client may take to send a whole body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an oversized body read and discarded so the client sees the 413.
const DRAIN_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// Longest time spent discarding an oversized body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

fn too_large(limit: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("Request body too large: the limit is {limit} bytes"),
    }
}

/// Reads the whole body, at most `limit` bytes and [`BODY_READ_TIMEOUT`].
pub async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > limit as u64 {
        if body.size_hint().lower() <= DRAIN_MAX_BYTES {
            drain(body).await;
        }
        return Err(too_large(limit));
    }
    let deadline = Instant::now() + BODY_READ_TIMEOUT;
    let mut buf = Vec::new();
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let frame = match timeout_at(deadline, next).await {
            Err(_) => {
                return Err(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    message: format!("Request body not received within {BODY_READ_TIMEOUT:?}"),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!(
                    "Cannot read the request body: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards what is left of `body`, within the drain caps.
async fn drain(mut body: Body) {
    let deadline = Instant::now() + DRAIN_TIME;
    let mut seen: u64 = 0;
    while seen <= DRAIN_MAX_BYTES {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match timeout_at(deadline, next).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    seen += data.len() as u64;
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_within_the_limit() {
        let got = read_body(Body::from("hello"), 5).await.expect("fits");
        assert_eq!(&got[..], b"hello");
        let err = read_body(Body::from("hello!"), 5)
            .await
            .expect_err("too large");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.message.contains("limit is 5 bytes"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_is_refused() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..10).map(|_| Ok(Bytes::from(vec![b'x'; 100]))).collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let err = read_body(body, 250).await.expect_err("too large");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);

        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..2).map(|_| Ok(Bytes::from(vec![b'x'; 100]))).collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        assert_eq!(read_body(body, 250).await.expect("fits").len(), 200);
    }
}
