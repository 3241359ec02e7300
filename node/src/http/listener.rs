//! The HTTP API's listener: a bound on open connections, `TCP_NODELAY`, and a deadline for
//! reading each request's head.
//!
//! axum's `serve` builds hyper's connections without a timer, so hyper's `header_read_timeout`
//! never fires there: a client that connects and sends nothing, or a header a byte a minute,
//! would hold its socket and task forever. The deadline is therefore kept on the socket: while
//! none of the connection's requests is being handled, a request head must arrive within the
//! timeout of the connection opening or of the previous answer, or the read fails and hyper
//! closes the connection (which also closes idle keep-alive connections). While a request is
//! being handled there is no deadline, since a blocking query may rightly take ten minutes;
//! [`Activity::begin`] tells the connection, reached through the `ConnectInfo` axum attaches to
//! every request. Request bodies have their own deadline (see `body.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use meridian_topology::caps::{ClientSlot, KeyedCap};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Time a client has to send a request's head (hyper's default `header_read_timeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP listener that holds at most `max_connections` connections open at once (further clients
/// wait in the kernel's backlog), at most `per_client` of them from one source address (more are
/// closed at once and counted), and gives each a request-head deadline.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    header_timeout: Duration,
    clients: KeyedCap<IpAddr>,
    refused: Arc<AtomicU64>,
}

impl LimitedListener {
    /// Wraps `inner`; connections refused for `per_client` are counted in `refused`.
    pub fn new(
        inner: TcpListener,
        max_connections: usize,
        per_client: usize,
        header_timeout: Duration,
        refused: Arc<AtomicU64>,
    ) -> Self {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            header_timeout,
            clients: KeyedCap::new(per_client),
            refused,
        }
    }
}

impl Listener for LimitedListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        // The semaphore is never closed, so this only waits; `None` would merely lift the bound.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let (stream, addr, slot) = loop {
            // axum's accept logs and retries errors such as running out of file descriptors.
            let (stream, addr) = Listener::accept(&mut self.inner).await;
            match self.clients.try_acquire(addr.ip()) {
                Some(slot) => break (stream, addr, slot),
                None => {
                    // Dropping the stream closes it: one source cannot take every connection.
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %addr.ip(), "HTTP connection refused: too many from this client");
                }
            }
        };
        // Small request/response exchanges: Nagle's delay would add tens of milliseconds to each.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let activity = Activity(Arc::new(ActivityInner {
            in_flight: AtomicUsize::new(0),
            idle_deadline: Mutex::new(Instant::now() + self.header_timeout),
            header_timeout: self.header_timeout,
        }));
        let deadline = Box::pin(tokio::time::sleep_until(activity.idle_deadline()));
        let conn = Conn {
            stream,
            activity,
            deadline,
            _permit: permit,
            _slot: slot,
        };
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Whether a connection is handling a request, and until when it may stay idle otherwise.
/// Cheap to clone; every request of the connection carries one as `ConnectInfo`.
#[derive(Clone, Debug)]
pub struct Activity(Arc<ActivityInner>);

#[derive(Debug)]
struct ActivityInner {
    in_flight: AtomicUsize,
    idle_deadline: Mutex<Instant>,
    header_timeout: Duration,
}

impl Activity {
    /// Marks a request as being handled until the returned guard is dropped; then the next
    /// request head is due within the header timeout.
    pub fn begin(&self) -> RequestGuard {
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    fn busy(&self) -> bool {
        self.0.in_flight.load(Ordering::SeqCst) > 0
    }

    fn idle_deadline(&self) -> Instant {
        match self.0.idle_deadline.lock() {
            Ok(d) => *d,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

impl Connected<IncomingStream<'_, LimitedListener>> for Activity {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        stream.io().activity.clone()
    }
}

/// Ends a request's exemption from the header deadline when dropped (answered or cancelled).
#[derive(Debug)]
pub struct RequestGuard(Activity);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let inner = &self.0.0;
        // Set the deadline before the count reaches zero, so a read never sees an old one.
        let next = Instant::now() + inner.header_timeout;
        match inner.idle_deadline.lock() {
            Ok(mut d) => *d = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One accepted connection: the socket, its request-head deadline, and its connection permit.
pub struct Conn {
    stream: TcpStream,
    activity: Activity,
    deadline: Pin<Box<Sleep>>,
    _permit: Option<OwnedSemaphorePermit>,
    _slot: ClientSlot,
}

fn head_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no complete request head within the header read timeout",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.busy() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let due = this.activity.idle_deadline();
        // Checked before reading too: a client trickling bytes never lets the read pend.
        if Instant::now() >= due {
            return Poll::Ready(Err(head_timed_out()));
        }
        if let Poll::Ready(r) = Pin::new(&mut this.stream).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        if this.deadline.deadline() != due {
            this.deadline.as_mut().reset(due);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(head_timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::{ConnectInfo, Request};
    use axum::middleware::{self, Next};
    use axum::response::Response;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const TIMEOUT: Duration = Duration::from_millis(300);

    async fn track(req: Request, next: Next) -> Response {
        let guard = req
            .extensions()
            .get::<ConnectInfo<Activity>>()
            .map(|c| c.0.begin());
        let resp = next.run(req).await;
        drop(guard);
        resp
    }

    async fn server(max_connections: usize) -> SocketAddr {
        server_with(max_connections, usize::MAX, Arc::default()).await
    }

    async fn server_with(
        max_connections: usize,
        per_client: usize,
        refused: Arc<AtomicU64>,
    ) -> SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            // Longer than the header timeout, as a blocking query is.
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(TIMEOUT * 3).await;
                    "slow"
                }),
            )
            .layer(middleware::from_fn(track));
        let listener = LimitedListener::new(tcp, max_connections, per_client, TIMEOUT, refused);
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<Activity>(),
            )
            .await;
        });
        addr
    }

    /// Sends `GET path` and reads until the server closes or a timeout.
    async fn get_once(s: &mut TcpStream, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn one_client_cannot_take_every_connection() {
        let refused = Arc::new(AtomicU64::new(0));
        let addr = server_with(8, 2, refused.clone()).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.expect("answer");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            held.push(s);
        }
        // A third connection from the same address is closed without an answer.
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(get_once(&mut third, "/").await, "");
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        // Its share comes back when one closes.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = TcpStream::connect(addr).await.expect("connect");
        assert!(get_once(&mut again, "/").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_silent_or_trickling_client_is_cut_off() {
        let addr = server(8).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("closed by the server, not by the test's timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        tokio::time::sleep(TIMEOUT * 2).await;
        let _ = slow.write_all(b"Host: x\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    }

    #[tokio::test]
    async fn a_long_request_is_not_cut_off() {
        let addr = server(8).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let answer = get_once(&mut s, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait() {
        let addr = server(1).await;
        let first = TcpStream::connect(addr).await.expect("connect");
        let mut second = TcpStream::connect(addr).await.expect("connect (backlog)");
        // Served only once the first connection is gone (closed by the header timeout here).
        let started = Instant::now();
        let answer = get_once(&mut second, "/").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(started.elapsed() >= TIMEOUT / 2, "{:?}", started.elapsed());
        drop(first);
    }
}
