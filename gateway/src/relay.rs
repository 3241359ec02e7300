//! Copying a relayed connection both ways: half-close honoured (EOF on one side shuts down the
//! write side of the other, and the other direction goes on), and closed when no byte has moved
//! either way for the idle timeout.
//!
//! The copy is the hot path, and depends on nothing else in the crate: bytes are counted by
//! wrapping the streams (`meter.rs`), not here. One buffer per direction, filled
//! in place and never zeroed; no lock of its own and no copy but the one into that buffer.

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
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, either way.
    let last = AtomicU64::new(0);
    let moved = AtomicU64::new(0);
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let up = half(&mut ar, &mut bw, &last, &moved, start, buf);
    let down = half(&mut br, &mut aw, &last, &moved, start, buf);
    let watchdog = async {
        loop {
            let idle_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = idle_since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let r = tokio::select! {
        r = async { tokio::try_join!(up, down) } => r,
        () = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    };
    match r {
        // A peer that closes with data unread makes its kernel send a reset: after an exchange,
        // that is how many clients end (`Connection: close`), not a failure.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) && moved.load(Ordering::Relaxed) > 0 =>
        {
            Ok((0, 0))
        }
        r => r,
    }
}

async fn half<R, W>(
    r: &mut R,
    w: &mut W,
    last: &AtomicU64,
    moved: &AtomicU64,
    start: Instant,
    capacity: usize,
) -> io::Result<u64>
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
        moved.fetch_add(n as u64, Ordering::Relaxed);
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(ms, Ordering::Relaxed);
        if n == buf.capacity() && n < capacity {
            buf = Vec::with_capacity((n * 2).min(capacity));
        }
    }
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
        // The client sends and half-closes; the backend still answers afterwards.
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
        let (up, down) = relay.await.expect("join").expect("relay");
        assert_eq!((up, down), (7, 11));

        // A connection where nothing moves is closed after the idle timeout.
        let (_c, mut gw_c) = tokio::io::duplex(64);
        let (mut gw_b, _b) = tokio::io::duplex(64);
        let r = copy_both(&mut gw_c, &mut gw_b, Duration::from_millis(150)).await;
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    }
}
