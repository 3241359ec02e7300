//! [`DnsServer`]: the UDP and TCP listeners on the DNS port, the task that keeps the handler's
//! view current, and orderly shutdown.
//!
//! Each server thread runs one UDP loop (receive, answer in place, send: no task per query) and
//! one TCP accept loop (a task per connection, idle and read timeouts, a cap on connections).
//! With `threads = 0` the loops run on the caller's runtime; otherwise each thread has its own
//! single-threaded runtime over duplicates of the same sockets.
//!
//! UDP responses pass the response-rate limit ([`crate::ratelimit`]): one table shared by every
//! thread, since any thread may read a client's next datagram from the shared socket. TCP is
//! never limited: it cannot be spoofed, and it is where a limited client is sent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_server::net::xfer::Protocol;
use meridian_topology::View;
use meridian_topology::caps::KeyedCap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::cache::AnswerCache;
use crate::counters::DnsCounters;
use crate::handler::{DnsHandler, Prepared};
use crate::ratelimit::{ClientLimit, RateLimiter, Verdict};
use crate::settings::DnsSettings;

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long reading one TCP query or writing one response may take once started.
const TCP_IO: Duration = Duration::from_secs(5);
/// Most TCP connections served at once per server thread.
pub const TCP_MAX_CONNECTIONS: usize = 256;

/// The response-rate limit as the UDP loops use it: the shared table and its clock's origin.
#[derive(Clone)]
struct UdpLimit {
    limiter: Arc<RateLimiter>,
    origin: Instant,
}

impl UdpLimit {
    /// Microseconds since the limit's origin.
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// One UDP loop's side of the response-rate limit: its handle on the shared table, and the time,
/// read once per batch of datagrams rather than once per datagram.
struct UdpGate<'a> {
    limit: Option<(&'a UdpLimit, ClientLimit<'a>)>,
    now_us: u64,
}

impl<'a> UdpGate<'a> {
    fn new(limit: Option<&'a UdpLimit>) -> Self {
        UdpGate {
            limit: limit.map(|l| (l, ClientLimit::new(&l.limiter))),
            now_us: 0,
        }
    }

    /// Reads the clock: microseconds since the limit's origin.
    fn tick(&mut self) {
        if let Some((l, _)) = &self.limit {
            self.now_us = l.now_us();
        }
    }

    /// Charges `src`'s prefix for the bytes of a `len`-byte response beyond the first charge.
    fn charge_bytes(&self, src: SocketAddr, len: usize) {
        if let Some((l, _)) = &self.limit {
            l.limiter.charge_bytes(src.ip(), self.now_us, len);
        }
    }

    /// The verdict on one response to `src` (always `Send` without a limit); counts what it
    /// holds back.
    fn check(&mut self, h: &DnsHandler, src: SocketAddr) -> Verdict {
        let Some((_, limit)) = &mut self.limit else {
            return Verdict::Send;
        };
        let verdict = limit.check(src.ip(), self.now_us);
        match verdict {
            Verdict::Send => {}
            Verdict::Drop => h.counters().rate_limited_dropped(),
            Verdict::Slip => h.counters().rate_limited_slipped(),
        }
        verdict
    }
}

/// Why the DNS server cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A listener could not be bound.
    #[error("cannot listen for DNS over {protocol} on {addr}")]
    Bind {
        /// `UDP` or `TCP`.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A server thread or its runtime could not be started.
    #[error("cannot start a DNS server thread")]
    Thread(#[source] std::io::Error),
}

/// A running DNS server.
pub struct DnsServer {
    addr: SocketAddr,
    handler: DnsHandler,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `bind` (port 0: one free port for both) and serves from the views
    /// published on `views`, on `threads` dedicated threads (0: on the current runtime).
    pub async fn start(
        settings: DnsSettings,
        mut views: watch::Receiver<Arc<View>>,
        bind: SocketAddr,
        threads: usize,
    ) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_both(bind)?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            protocol: "UDP",
            addr: bind,
            source,
        })?;
        let current = Arc::new(ArcSwap::new(views.borrow_and_update().clone()));
        let host = if settings.rate_limit.limit_local {
            Vec::new()
        } else {
            crate::ratelimit::host_networks()
        };
        let limit = RateLimiter::with_host_networks(&settings.rate_limit, host).map(|l| UdpLimit {
            limiter: Arc::new(l),
            // The rate limiter's own monotonic origin: it takes time as offsets from it.
            #[allow(clippy::disallowed_methods)]
            origin: Instant::now(),
        });
        // Shared by every thread's accept loop: any thread may accept a client's connection.
        let tcp_clients = KeyedCap::new(settings.max_tcp_per_client);
        let handler = DnsHandler::new(settings, current.clone(), Arc::new(DnsCounters::default()));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut feed_stop = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    changed = views.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        current.store(views.borrow_and_update().clone());
                    }
                    _ = feed_stop.changed() => break,
                }
            }
        });
        let mut handles = Vec::new();
        if threads == 0 {
            let (u, t) = into_tokio(udp, tcp).map_err(DnsError::Thread)?;
            tasks.spawn(serve_udp(u, handler.clone(), limit, stop_rx.clone()));
            tasks.spawn(serve_tcp(t, handler.clone(), tcp_clients, stop_rx));
        } else {
            for i in 0..threads {
                let udp = udp.try_clone().map_err(DnsError::Thread)?;
                let tcp = tcp.try_clone().map_err(DnsError::Thread)?;
                let h = handler.clone();
                let limit = limit.clone();
                let clients = tcp_clients.clone();
                let stop = stop_rx.clone();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(DnsError::Thread)?;
                let handle = std::thread::Builder::new()
                    .name(format!("meridian-dns-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            let (u, t) = match into_tokio(udp, tcp) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::error!(error = %e, "DNS thread cannot use its sockets");
                                    return;
                                }
                            };
                            let udp = tokio::spawn(serve_udp(u, h.clone(), limit, stop.clone()));
                            serve_tcp(t, h, clients, stop).await;
                            let _ = udp.await;
                        });
                    })
                    .map_err(DnsError::Thread)?;
                handles.push(handle);
            }
        }
        tracing::info!(%addr, threads, "DNS server started");
        Ok(DnsServer {
            addr,
            handler,
            stop,
            tasks,
            threads: handles,
        })
    }

    /// Where the server listens (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters.
    pub fn counters(&self) -> Arc<DnsCounters> {
        self.handler.counters().clone()
    }

    /// The handler (for embedding in another hickory server).
    pub fn handler(&self) -> &DnsHandler {
        &self.handler
    }

    /// Stops the listeners and waits for the server threads to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        tracing::info!("DNS server stopped");
    }
}

/// Binds UDP and TCP on the same port; with port 0, tries a few ports the system picks for UDP.
fn bind_both(bind: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let mut attempt = 0;
    loop {
        let udp = std::net::UdpSocket::bind(bind).map_err(|source| DnsError::Bind {
            protocol: "UDP",
            addr: bind,
            source,
        })?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            protocol: "UDP",
            addr: bind,
            source,
        })?;
        match std::net::TcpListener::bind(addr) {
            Ok(tcp) => {
                udp.set_nonblocking(true).map_err(DnsError::Thread)?;
                tcp.set_nonblocking(true).map_err(DnsError::Thread)?;
                return Ok((udp, tcp));
            }
            Err(_) if bind.port() == 0 && attempt < 10 => attempt += 1,
            Err(source) => {
                return Err(DnsError::Bind {
                    protocol: "TCP",
                    addr,
                    source,
                });
            }
        }
    }
}

fn into_tokio(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
}

/// Receives, answers and sends on one UDP socket until told to stop, in batches: one
/// `recvmmsg` takes everything queued (up to [`crate::batch::BATCH`] datagrams), the queries are
/// answered in place, and one `sendmmsg` sends the answers. Only forwarding (which waits on the
/// network) runs on a task of its own. The loop parks on readiness only when the socket is empty.
#[cfg(target_os = "linux")]
async fn serve_udp(
    sock: UdpSocket,
    h: DnsHandler,
    limit: Option<UdpLimit>,
    mut stop: watch::Receiver<bool>,
) {
    use std::os::fd::AsRawFd;

    use crate::batch::{BATCH, UdpBatch};

    let sock = Arc::new(sock);
    let fd = sock.as_raw_fd();
    let mut batch = UdpBatch::new();
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
    let mut ready: Vec<(usize, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut forwards = JoinSet::new();
    let mut gate = UdpGate::new(limit.as_ref());
    let mut cache = AnswerCache::new();
    loop {
        // Through tokio's readiness, so that an empty socket clears it and `readable()` parks.
        let n = match sock.try_io(tokio::io::Interest::READABLE, || batch.recv(fd)) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !park(&sock, &mut stop, &mut forwards).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                // ICMP errors surface here on some systems: not fatal.
                tracing::debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        ready.clear();
        gate.tick();
        for (i, out) in outs.iter_mut().enumerate().take(n) {
            let (data, src) = batch.datagram(i);
            if let Some(src) = src
                && answer_datagram(
                    &h,
                    data,
                    src,
                    out,
                    &sock,
                    &mut forwards,
                    &mut gate,
                    &mut cache,
                )
            {
                ready.push((i, src));
            }
        }
        let msgs: Vec<(&[u8], SocketAddr)> = ready
            .iter()
            .filter_map(|(i, dst)| outs.get(*i).map(|o| (o.as_slice(), *dst)))
            .collect();
        // Straight to the kernel (non-blocking); whatever it does not take goes one by one.
        let sent = match batch.send(fd, &msgs) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "DNS UDP batch send failed");
                }
                0
            }
        };
        for (msg, dst) in msgs.iter().skip(sent) {
            send_udp(&sock, msg, *dst).await;
        }
    }
}

#[cfg(not(target_os = "linux"))]
/// Receives, answers and sends on one UDP socket until told to stop. Queries are answered in
/// place; only forwarding (which waits on the network) runs on a task of its own.
///
/// The loop drains the socket with non-blocking reads and sends without awaiting, and only
/// parks on readiness when the socket is empty: under load a query costs one `recvfrom` and one
/// `sendto`, with no future, `select!` or wakeup per datagram.
async fn serve_udp(
    sock: UdpSocket,
    h: DnsHandler,
    limit: Option<UdpLimit>,
    mut stop: watch::Receiver<bool>,
) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    let mut forwards = JoinSet::new();
    let mut gate = UdpGate::new(limit.as_ref());
    let mut cache = AnswerCache::new();
    loop {
        let (n, src) = match sock.try_recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !park(&sock, &mut stop, &mut forwards).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                // ICMP errors surface here on some systems: not fatal.
                tracing::debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        gate.tick();
        if answer_datagram(
            &h,
            &buf[..n],
            src,
            &mut out,
            &sock,
            &mut forwards,
            &mut gate,
            &mut cache,
        ) {
            send_udp(&sock, &out, src).await;
        }
    }
}

/// Waits until the socket has datagrams again (reaping finished forwards meanwhile); false when
/// the server is told to stop instead.
async fn park(
    sock: &UdpSocket,
    stop: &mut watch::Receiver<bool>,
    forwards: &mut JoinSet<()>,
) -> bool {
    tokio::select! {
        r = sock.readable() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "DNS UDP socket not readable");
            }
        }
        _ = stop.changed() => return false,
    }
    while forwards.try_join_next().is_some() {}
    true
}

/// Answers one datagram into `out` and returns whether `out` now holds a reply to send. A plain
/// query is answered from `cache` when it can be; others are decoded and answered in full. A
/// query for the recursors is answered later, by a task of its own on `forwards`. Every reply is
/// first charged to the client's prefix at `gate`: over the limit it is dropped, or slipped as
/// an empty truncated reply, before any work is done for it.
#[allow(clippy::too_many_arguments)] // One loop's state, passed apart so the borrows stay simple.
fn answer_datagram(
    h: &DnsHandler,
    data: &[u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
    sock: &Arc<UdpSocket>,
    forwards: &mut JoinSet<()>,
    gate: &mut UdpGate<'_>,
    cache: &mut AnswerCache,
) -> bool {
    out.clear();
    let mut verdict = None;
    if let Some(q) = crate::cache::parse(data) {
        let v = gate.check(h, src);
        if v == Verdict::Send {
            let span = tracing::debug_span!("dns_query", qtype = %q.qtype(), proto = "udp", %src);
            let _enter = span.enter();
            if h.answer_cached(cache, &q, out) {
                gate.charge_bytes(src, out.len());
                return true;
            }
        }
        verdict = Some(v);
    }
    // Whether the reply may go: checked once per datagram.
    let check = |gate: &mut UdpGate<'_>| verdict.unwrap_or_else(|| gate.check(h, src));
    let request = match h.decode(data, src, Protocol::Udp) {
        Ok(r) => r,
        Err(Some(formerr)) => {
            let verdict = check(gate);
            if verdict == Verdict::Drop {
                return false;
            }
            out.extend_from_slice(&formerr);
            if verdict == Verdict::Slip {
                // A FORMERR is already header-only: slipping it only adds TC.
                out[2] |= 0x02;
            } else {
                h.counters()
                    .answered(hickory_server::proto::op::ResponseCode::FormErr);
            }
            return true;
        }
        Err(None) => return false,
    };
    match check(gate) {
        Verdict::Send => {}
        Verdict::Drop => return false,
        Verdict::Slip => {
            h.encode_slip(&request, out);
            return !out.is_empty();
        }
    }
    let span = query_span(&request);
    let prepared = {
        let _enter = span.enter();
        let p = h.prepare(&request);
        if let Prepared::Reply(reply) = &p {
            h.encode(&request, reply, out);
        }
        p
    };
    match prepared {
        Prepared::Reply(_) => {
            gate.charge_bytes(src, out.len());
            true
        }
        Prepared::Forward => {
            let (h, sock) = (h.clone(), sock.clone());
            let limit = gate.limit.as_ref().map(|(l, _)| (*l).clone());
            forwards.spawn(
                async move {
                    let reply = h.forward(&request).await;
                    let mut out = Vec::with_capacity(512);
                    h.encode(&request, &reply, &mut out);
                    if let Some(l) = limit {
                        l.limiter.charge_bytes(src.ip(), l.now_us(), out.len());
                    }
                    send_udp(&sock, &out, src).await;
                }
                .instrument(span),
            );
            false
        }
    }
}

/// Sends a datagram, waiting for buffer space only if the kernel has none right now.
async fn send_udp(sock: &UdpSocket, msg: &[u8], dst: SocketAddr) {
    let sent = match sock.try_send_to(msg, dst) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => sock.send_to(msg, dst).await,
        other => other,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, %dst, "DNS UDP send failed");
    }
}

/// The debug-level span of one query (its fields are only formatted when debug is enabled).
fn query_span(request: &hickory_server::server::Request) -> tracing::Span {
    match request.queries.queries().first() {
        Some(q) => tracing::debug_span!(
            "dns_query",
            name = %q.original().name(),
            qtype = %q.query_type(),
            proto = %request.protocol(),
            src = %request.src(),
        ),
        None => tracing::debug_span!("dns_query", proto = %request.protocol()),
    }
}

/// Accepts TCP connections until told to stop; each is served on its own task, at most
/// `max_tcp_per_client` of them per client address (`clients`, shared by every thread): more
/// are closed at once and counted, so one client cannot take a thread's every slot.
async fn serve_tcp(
    listener: TcpListener,
    h: DnsHandler,
    clients: KeyedCap<IpAddr>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (stream, src) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        let Some(slot) = clients.try_acquire(src.ip()) else {
            // Dropping the stream closes it; the permit goes back with it.
            h.counters().tcp_client_limit();
            continue;
        };
        let h = h.clone();
        conns.spawn(async move {
            serve_tcp_conn(stream, src, h).await;
            drop((permit, slot));
        });
    }
    conns.shutdown().await;
}

/// Serves length-prefixed queries on one connection until it closes, idles or misbehaves.
async fn serve_tcp_conn(mut stream: TcpStream, src: SocketAddr, h: DnsHandler) {
    let _ = stream.set_nodelay(true);
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        let mut buf = vec![0u8; n];
        match tokio::time::timeout(TCP_IO, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => {
                h.counters().malformed();
                return;
            }
        }
        let request = match h.decode(&buf, src, Protocol::Tcp) {
            Ok(r) => r,
            Err(Some(formerr)) => {
                h.counters()
                    .answered(hickory_server::proto::op::ResponseCode::FormErr);
                let _ = write_framed(&mut stream, &formerr).await;
                continue;
            }
            // A response sent to us, or less than a header: nothing sensible follows.
            Err(None) => return,
        };
        let span = query_span(&request);
        async {
            let reply = match h.prepare(&request) {
                Prepared::Reply(r) => r,
                Prepared::Forward => h.forward(&request).await,
            };
            h.encode(&request, &reply, &mut out);
        }
        .instrument(span)
        .await;
        if write_framed(&mut stream, &out).await.is_err() {
            return;
        }
    }
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::other("response larger than 64 KiB"))?
        .to_be_bytes();
    let write = async {
        stream.write_all(&len).await?;
        stream.write_all(msg).await
    };
    tokio::time::timeout(TCP_IO, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}
