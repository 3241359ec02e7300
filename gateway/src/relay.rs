//! Copying a relayed connection both ways: half-close honoured (EOF on one side shuts down the
//! write side of the other, and the other direction goes on), and closed when no byte has moved
//! either way for the idle timeout.
//!
//! The copy is the hot path, and depends on nothing else in the crate: bytes are counted by
//! wrapping the streams (`meter.rs`), not here. One buffer per direction, filled
//! in place and never zeroed; no lock of its own and no copy but the one into that buffer.
//!
//! The idle watchdog and the rule that a reset after an exchange is a normal end ([`Activity`],
//! [`watched`]) are shared with the splice path (`splice.rs`), which relays plain TCP to plain
//! TCP on Linux without this copy: both ways of relaying end a connection for the same reasons.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Buffer per direction: large enough for bulk transfers, small enough for many connections.
pub(crate) const BUF: usize = 16 * 1024;

/// Copies `a`→`b` and `b`→`a` until both directions have ended; returns the bytes copied each
/// way. Fails with `TimedOut` after `idle` without traffic.
pub async fn copy_both<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    copy_both_with(a, b, idle, BUF).await
}

/// [`copy_both`] with buffers of up to `buf` bytes per direction, grown from [`BUF`] while
/// reads fill them (a TLS side takes several records in one read).
pub async fn copy_both_with<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    buf: usize,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let up = half(&mut ar, &mut bw, &activity, buf);
    let down = half(&mut br, &mut aw, &activity, buf);
    watched(async { tokio::try_join!(up, down) }, &activity, idle).await
}

/// When a relay last moved a byte, either way, and how many it moved: what the idle watchdog
/// and the reset rule of [`watched`] read.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte moved, either way.
    last: AtomicU64,
    /// Bytes moved either way so far.
    moved: AtomicU64,
}

impl Activity {
    /// A relay that has moved nothing yet, starting now.
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            moved: AtomicU64::new(0),
        }
    }

    /// `n` bytes were just handed on, one way or the other.
    pub(crate) fn record(&self, n: u64) {
        self.moved.fetch_add(n, Ordering::Relaxed);
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`; never, when `idle` is too long to add to a
    /// clock reading (a configured "forever" must not panic).
    async fn idle_for(&self, idle: Duration) {
        loop {
            let idle_since = self
                .start
                .checked_add(Duration::from_millis(self.last.load(Ordering::Relaxed)));
            let Some(deadline) = idle_since.and_then(|t| t.checked_add(idle)) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Runs `both` (the two directions of one relay, which report to `activity`) until it ends or
/// nothing has moved for `idle` (`TimedOut`). A reset or broken pipe after bytes have moved is
/// a normal end, with `(0, 0)`: the byte counters have counted them already.
pub(crate) async fn watched<F>(
    both: F,
    activity: &Activity,
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    F: Future<Output = io::Result<(u64, u64)>>,
{
    let r = tokio::select! {
        r = both => r,
        () = activity.idle_for(idle) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    };
    match r {
        // A peer that closes with data unread makes its kernel send a reset: after an exchange,
        // that is how many clients end (`Connection: close`), not a failure.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) && activity.moved.load(Ordering::Relaxed) > 0 =>
        {
            Ok((0, 0))
        }
        r => r,
    }
}

async fn half<R, W>(r: &mut R, w: &mut W, activity: &Activity, capacity: usize) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Read into spare capacity: the buffer is never zeroed (it was 1% of a new connection).
    // Start at `BUF` and grow (doubling, up to `capacity`) only while reads fill the buffer: a
    // bulk transfer gets big reads, an idle or chatty connection keeps a small buffer.
    let mut buf = Vec::with_capacity(BUF.min(capacity));
    let mut total = 0u64;
    loop {
        buf.clear();
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            // Half-close: the peer may still be sending the other way.
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf).await?;
        // A TLS writer may take the bytes into records it could not send yet (the socket was
        // full) and wait for the next write to send them: with nothing more coming from this
        // side, they would sit there. Flushing sends them now (a no-op on a plain socket).
        w.flush().await?;
        total += n as u64;
        activity.record(n as u64);
        if n == buf.capacity() && n < capacity {
            buf = Vec::with_capacity((n * 2).min(capacity));
        }
    }
}

/// Bytes [`half_close_exchange`] sends each way: (client to backend, backend to client).
#[cfg(test)]
pub(crate) const HALF_CLOSE_BYTES: (u64, u64) = (7, 11);

/// Through a relay between `client` and `backend`: the client sends and half-closes, the backend
/// sees its end (the FIN was passed on) and still answers afterwards (the other way stayed open),
/// and the client reads the answer to the backend's end. Shared by the copy's and splice's tests.
#[cfg(test)]
pub(crate) async fn half_close_exchange<C, B>(client: &mut C, backend: &mut B)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    client.write_all(b"request").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"request");
    backend.write_all(b"late answer").await.expect("write");
    backend.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.expect("read");
    assert_eq!(answer, b"late answer");
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, not tokio's paused clock: `test-util` in a dev-dependency would give the test
    // build a different tokio than the binaries', and every workspace crate would compile twice.
    #[tokio::test]
    async fn half_close_is_honoured_and_idle_connections_end() {
        let (mut client, mut gw_client) = tokio::io::duplex(1024);
        let (mut gw_backend, mut backend) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            copy_both(&mut gw_client, &mut gw_backend, Duration::from_secs(10)).await
        });
        half_close_exchange(&mut client, &mut backend).await;
        let (up, down) = relay.await.expect("join").expect("relay");
        assert_eq!((up, down), HALF_CLOSE_BYTES);

        // A connection where nothing moves is closed after the idle timeout.
        let (_c, mut gw_c) = tokio::io::duplex(64);
        let (mut gw_b, _b) = tokio::io::duplex(64);
        let r = copy_both(&mut gw_c, &mut gw_b, Duration::from_millis(150)).await;
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    }
}
