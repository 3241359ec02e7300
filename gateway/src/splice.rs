//! Relaying a client's TCP connection to a local backend's TCP connection on Linux: a copy
//! while the connection is chatty, splice(2) once a direction carries a bulk transfer. Spliced,
//! the bytes go socket → pipe → socket inside the kernel, never through a userspace buffer,
//! which is the CPU the copy spends per byte; but a splice costs more than a read for a few
//! hundred bytes, and a pipe is two descriptors and two more system calls to make, so a request
//! and its answer are copied as in `relay.rs`, and only a direction that fills the copy's buffer
//! [`BULK_READS`] reads in a row gets a pipe (HAProxy's `splice-auto` makes the same choice).
//! This file owns those pipes (one per spliced direction, made when it turns bulk, closed when
//! the direction ends) and both loops. The semantics are `relay.rs`'s, with its watchdog and its
//! rule for resets: both directions at once, half-close passed on, `TimedOut` after the idle
//! timeout, a reset after an exchange a normal end; the bytes handed on each way are added to
//! the caller's counters as they go.
//!
//! Only plain sockets on both sides qualify (the local route, after the ClientHello has been
//! replayed to the backend): a tunnel stream or a TLS side has no socket holding the bytes, and
//! is copied by `relay.rs`. Pipes are capped by the caller's semaphore; a direction that gets no
//! permit or no pipe ([`SetupError`]) goes on copying.
//!
//! Readiness is tokio's: the copy reads and writes through tokio's own `poll_read` and
//! `poll_write`, which also clear it after a short read or write, saving the system call that
//! would block; a splice that would block goes through `try_io`, which clears the readiness it
//! read, so the task waits for the next edge rather than spinning. A splice into a pipe would
//! also block on a full pipe, so the pipe is always emptied before the next splice into it: a
//! splice from a socket that would block then means the socket has nothing.

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use nix::unistd::pipe2;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::relay::{Activity, watched};

/// What a direction's pipe is grown to once the direction carries a bulk transfer. A pipe holds
/// a number of page-sized slots, not bytes: a splice from a socket takes a slot per segment it
/// moves, so the default 16 slots carry about 23 KiB of 1448-byte segments per pair of splices
/// (the copy's 16 KiB buffer, near enough). 64 slots carry four times as much per pair of system
/// calls, and up to 256 KiB of loopback's large segments. Not more: pipe pages count against
/// the user's `fs.pipe-user-pages-soft` (64 MiB by default), past which an unprivileged user's
/// new pipes get 2 slots and its pipes cannot grow; the larger each pipe, the fewer connections
/// get one worth splicing through.
const BULK_PIPE: usize = 256 * 1024;

/// The smallest pipe worth splicing through: the copy's buffer. A smaller one is the 2-slot pipe
/// the kernel gives a user past its pipe limit, and would move less per system call than the
/// copy.
const MIN_PIPE: usize = crate::relay::BUF;

/// Why a connection cannot be spliced; the caller copies it instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SetupError {
    /// No pipe could be made (out of descriptors, most likely).
    #[error("cannot make a pipe: {0}")]
    Pipe(#[source] Errno),
    /// The pipe's capacity could not be read.
    #[error("cannot read a pipe's capacity: {0}")]
    Capacity(#[source] Errno),
    /// The kernel gave a pipe too small to be worth it (the user's pipe limit is reached).
    #[error("the pipe holds only {0} bytes (fs.pipe-user-pages-soft reached?)")]
    Small(usize),
}

/// One direction's pipe: what was spliced from the source and not yet into the destination.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity in bytes, as the kernel reports it: the most one splice into it asks for.
    capacity: usize,
}

impl Pipe {
    fn new() -> Result<Pipe, SetupError> {
        // Non-blocking, so a splice never sleeps in the kernel with the runtime's thread; not
        // inherited by the health checks' or anyone's child processes.
        let (read, write) =
            pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(SetupError::Pipe)?;
        let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ).map_err(SetupError::Capacity)?;
        let capacity = usize::try_from(capacity).unwrap_or(0);
        if capacity < MIN_PIPE {
            return Err(SetupError::Small(capacity));
        }
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Grows the pipe to [`BULK_PIPE`], once; called only while it is empty. A refusal (the
    /// user's pipe pages are spent: `EPERM`) keeps the pipe as it is.
    fn grow(&mut self) {
        let want = i32::try_from(BULK_PIPE).unwrap_or(i32::MAX);
        match fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(want)) {
            Ok(got) => self.capacity = usize::try_from(got).unwrap_or(self.capacity),
            Err(e) => debug!(error = %e, capacity = self.capacity, "cannot grow a splice pipe"),
        }
    }
}

/// Where one direction of a relay reports: the byte counter it adds to as it writes, and the
/// count of directions moved on to splice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted<'a> {
    /// Bytes handed on this way.
    pub(crate) bytes: &'a AtomicU64,
    /// Directions moved on to splice (shared by both ways).
    pub(crate) spliced: &'a AtomicU64,
}

/// Relays `a`→`b` and `b`→`a` until both directions have ended; returns the bytes handed on
/// each way, added to `to_b` and `to_a` as they go. Each direction starts as a copy through a
/// 16 KiB buffer and moves on to splice(2) once it has filled that buffer [`BULK_READS`] reads
/// in a row, when `pipes` (one permit per pipe) has a permit and a pipe can be made: a request
/// and its answer stay a read and a write each, a bulk transfer leaves user space. Fails with
/// `TimedOut` after `idle` without traffic; a reset after bytes have moved is a normal end with
/// `(0, 0)`, as for [`crate::relay::copy_both`].
pub(crate) async fn relay(
    a: &mut TcpStream,
    b: &mut TcpStream,
    idle: Duration,
    pipes: &Semaphore,
    to_b: Counted<'_>,
    to_a: Counted<'_>,
) -> io::Result<(u64, u64)> {
    let activity = Activity::new();
    let (mut ar, mut aw) = a.split();
    let (mut br, mut bw) = b.split();
    let up = half(&mut ar, &mut bw, pipes, to_b, &activity);
    let down = half(&mut br, &mut aw, pipes, to_a, &activity);
    watched(async { tokio::try_join!(up, down) }, &activity, idle).await
}

/// Full reads of the copy's buffer in a row after which a direction is a bulk transfer.
pub(crate) const BULK_READS: u32 = 2;

/// Relays `src` → `dst` until `src` ends, then shuts down `dst`'s write side (half-close: the
/// other direction goes on); returns the bytes handed to `dst`. Copies until the direction
/// shows itself a bulk transfer, then splices (see [`relay`]).
async fn half(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    pipes: &Semaphore,
    counted: Counted<'_>,
    activity: &Activity,
) -> io::Result<u64> {
    let mut total = 0u64;
    // Read into spare capacity: never zeroed, as in `relay.rs`.
    let mut buf = Vec::with_capacity(crate::relay::BUF);
    let mut full = 0u32;
    loop {
        buf.clear();
        // Through tokio's `poll_read`, not `try_read`: a short read clears the readiness, so a
        // request costs one read, not a read and a read that would block.
        let n = src.read_buf(&mut buf).await?;
        if n == 0 {
            // Half-close: the peer may still be sending the other way.
            dst.shutdown().await?;
            return Ok(total);
        }
        // Likewise a short write clears the write readiness.
        dst.write_all(&buf[..n]).await?;
        total += n as u64;
        counted.bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.record(n as u64);
        full = if n == buf.capacity() { full + 1 } else { 0 };
        if full >= BULK_READS {
            full = 0;
            // No permit or no pipe: go on copying (and ask again after the next full reads).
            let Ok(_permit) = pipes.try_acquire() else {
                continue;
            };
            match Pipe::new() {
                Ok(mut pipe) => {
                    counted.spliced.fetch_add(1, Ordering::Relaxed);
                    // Proven bulk: worth the larger pipe at once.
                    pipe.grow();
                    drop(buf);
                    let (src, dst) = (src.as_ref(), dst.as_ref());
                    let rest = spliced(src, dst, &pipe, counted.bytes, activity).await?;
                    return Ok(total + rest);
                }
                Err(e) => debug!(error = %e, "splice unavailable, copying"),
            }
        }
    }
}

/// Splices `src` → `dst` through `pipe` until `src` ends, then shuts down `dst`'s write side;
/// returns the bytes handed to `dst`.
async fn spliced(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<u64> {
    // SPLICE_F_MOVE is a hint (pages are moved, not copied, where the kernel can); NONBLOCK
    // makes the pipe side never wait (the sockets are non-blocking already, tokio's).
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        src.readable().await?;
        // The pipe is empty here, so `WouldBlock` means the socket has nothing: `try_io`
        // clears its readiness and the next `readable` waits for more.
        let spliced = src.try_io(Interest::READABLE, || {
            splice(src, None, &pipe.write, None, pipe.capacity, flags).map_err(io::Error::from)
        });
        let mut in_pipe = match spliced {
            // End of stream (a `len` of 0 is never asked for, so 0 is only that).
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        };
        // Empty the pipe into `dst` before reading more; counted as it is written, as the copy
        // counts after each write.
        while in_pipe > 0 {
            dst.writable().await?;
            // The pipe holds bytes, so `WouldBlock` means the socket's send buffer is full.
            let written = dst.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, dst, None, in_pipe, flags).map_err(io::Error::from)
            });
            let n = match written {
                // Not a documented answer with bytes in the pipe; never spin on it.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            };
            in_pipe = in_pipe.saturating_sub(n);
            total += n as u64;
            counter.fetch_add(n as u64, Ordering::Relaxed);
            activity.record(n as u64);
        }
    }
    // Half-close: the peer may still be sending the other way. tokio's own shutdown is this
    // same call, on a `&mut` stream this direction does not have (the other one reads `dst`).
    shutdown(dst.as_raw_fd(), Shutdown::Write)?;
    Ok(total)
}

/// Whether a splice's error means "try again": not ready (readiness is cleared) or interrupted.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use crate::relay::{HALF_CLOSE_BYTES, half_close_exchange};

    /// A connected pair of loopback sockets.
    async fn sockets() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    /// What a relay ended with: its result, what the counters (towards the backend, towards
    /// the client) hold, and how many directions were spliced.
    type Ended = (io::Result<(u64, u64)>, u64, u64, u64);

    /// The relay between a client and a backend: `(client, backend, relay)`, with `pipes`
    /// permits.
    async fn relayed(
        idle: Duration,
        pipes: usize,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Ended>) {
        let (client, mut gw_client) = sockets().await;
        let (mut gw_backend, backend) = sockets().await;
        let relay = tokio::spawn(async move {
            let (up, down, spliced) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
            let pipes = Semaphore::new(pipes);
            let count = |bytes| Counted {
                bytes,
                spliced: &spliced,
            };
            let r = relay(
                &mut gw_client,
                &mut gw_backend,
                idle,
                &pipes,
                count(&up),
                count(&down),
            )
            .await;
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            (r, load(&up), load(&down), load(&spliced))
        });
        (client, backend, relay)
    }

    /// `len` pseudo-random bytes (xorshift): a chunk lost, repeated or reordered shows.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    /// Sends `data` on `sock`, half-closes it and reads what comes back until the peer's end.
    async fn exchange(sock: TcpStream, data: Arc<Vec<u8>>) -> Vec<u8> {
        let (mut r, mut w) = sock.into_split();
        let send = async move {
            w.write_all(&data).await.expect("write");
            w.shutdown().await.expect("half-close");
        };
        let recv = async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read");
            got
        };
        tokio::join!(send, recv).1
    }

    /// Sends megabytes each way through a relay with `pipes` permits; returns how many
    /// directions were spliced.
    async fn megabytes_each_way(pipes: usize) -> u64 {
        // Not multiples of a page, a pipe or the copy's buffer: the last read or splice of each
        // way is a partial one.
        let up_data = Arc::new(pattern(8 * 1024 * 1024 + 4099, 1));
        let down_data = Arc::new(pattern(5 * 1024 * 1024 + 77, 2));
        let (client, backend, relay) = relayed(Duration::from_secs(10), pipes).await;
        let done = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(
                exchange(client, Arc::clone(&up_data)),
                exchange(backend, Arc::clone(&down_data)),
                relay,
            )
        })
        .await
        .expect("the transfer finishes");
        let (at_client, at_backend, relay) = done;
        assert!(at_backend == *up_data, "client → backend bytes differ");
        assert!(at_client == *down_data, "backend → client bytes differ");
        let (r, up, down, spliced) = relay.expect("join");
        let (up_len, down_len) = (up_data.len() as u64, down_data.len() as u64);
        assert_eq!(r.expect("relay"), (up_len, down_len));
        assert_eq!((up, down), (up_len, down_len));
        spliced
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_directions_are_spliced_and_arrive_whole_and_counted() {
        // Both ways turn bulk and get a pipe each.
        assert_eq!(megabytes_each_way(2).await, 2);
        // Without any, both are copied, to the same bytes.
        assert_eq!(megabytes_each_way(0).await, 0);
    }

    #[tokio::test]
    async fn half_close_lets_the_backend_answer_afterwards() {
        let (mut client, mut backend, relay) = relayed(Duration::from_secs(10), 2).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            half_close_exchange(&mut client, &mut backend).await;
            let (r, up, down, spliced) = relay.await.expect("join");
            assert_eq!(r.expect("relay"), HALF_CLOSE_BYTES);
            assert_eq!((up, down), HALF_CLOSE_BYTES);
            // A request and its answer: copied, no pipe made.
            assert_eq!(spliced, 0);
        })
        .await
        .expect("the exchange finishes");
    }

    #[tokio::test]
    async fn an_idle_connection_ends_at_the_idle_timeout() {
        let (_client, _backend, relay) = relayed(Duration::from_millis(150), 2).await;
        let started = tokio::time::Instant::now();
        let (r, up, down, _) = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("ended by the watchdog")
            .expect("join");
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!((up, down), (0, 0));
    }

    #[tokio::test]
    async fn a_reset_after_an_exchange_is_a_normal_end() {
        let (mut client, mut backend, relay) = relayed(Duration::from_secs(10), 2).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            client.write_all(b"hello").await.expect("write");
            let mut got = [0u8; 5];
            backend.read_exact(&mut got).await.expect("read");
            // A close with SO_LINGER 0 sends a reset, as a client closing with data unread does.
            client.set_zero_linger().expect("linger");
            drop(client);
            let (r, up, down, _) = relay.await.expect("join");
            assert_eq!(r.expect("a normal end"), (0, 0));
            assert_eq!((up, down), (5, 0));
        })
        .await
        .expect("the relay ends");
    }

    #[test]
    fn new_pipes_hold_at_least_the_copy_buffer_and_grow() {
        let mut pipe = Pipe::new().expect("pipe");
        assert!(pipe.capacity >= MIN_PIPE, "{}", pipe.capacity);
        let before = pipe.capacity;
        pipe.grow();
        // Grown where the user's pipe pages allow it, unchanged where they do not.
        assert!(pipe.capacity == BULK_PIPE || pipe.capacity == before);
        let reported = fcntl(&pipe.write, FcntlArg::F_GETPIPE_SZ).expect("size");
        assert_eq!(usize::try_from(reported).ok(), Some(pipe.capacity));
    }
}
