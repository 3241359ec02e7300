//! The WAN links: a user-space TCP and UDP proxy in front of every node's WAN face (see
//! [`crate::addr`]), with faults per direction between two DCs, switchable at run time.
//!
//! Shaping (delay, jitter, loss, bandwidth cap) always happens here, drawn from one seeded
//! RNG. Cuts (one-way, blackhole, partition) happen here too, or in the kernel when a
//! [`crate::kernel::Iptables`] is given, so that blackholed SYNs and resets are the kernel's own.
//!
//! How the proxy models each fault on TCP: a silent cut (blackhole or one-way) stops reading in
//! the cut direction, so the sender's socket buffer fills and nothing arrives, exactly as with
//! dropped packets and retransmissions, and a new connection is held (its SYN "lost") until the
//! cut lifts; a partition resets every connection on the link and refuses new ones; a reset
//! closes every connection with SO_LINGER 0 (an RST) once. Loss on TCP is a retransmission delay
//! (a chunk is late by an RTO), since a stream cannot lose bytes. On UDP, loss and cuts drop
//! datagrams.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use crate::addr;
use crate::kernel::Iptables;

/// The retransmission timeout a lost TCP segment costs.
const TCP_RTO: Duration = Duration::from_millis(200);
/// A datagram queued longer than this behind a bandwidth cap is dropped (a router's tail drop).
const UDP_QUEUE_LIMIT: Duration = Duration::from_secs(1);

/// Shaping of one direction of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    /// Added one-way delay.
    pub delay: Duration,
    /// Up to this much more delay, uniformly drawn per chunk or datagram.
    pub jitter: Duration,
    /// Probability that a datagram is lost (UDP) or a chunk retransmitted (TCP).
    pub loss: f64,
    /// Bandwidth cap in bytes per second.
    pub rate: Option<u64>,
}

/// One direction of the link between two DCs.
#[derive(Debug)]
struct Dir {
    shape: Shape,
    /// Traffic in this direction is silently dropped.
    silent: bool,
    /// When the bandwidth cap lets the next byte go.
    next_free: Instant,
}

impl Default for Dir {
    fn default() -> Self {
        Dir {
            shape: Shape::default(),
            silent: false,
            next_free: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct State {
    dirs: HashMap<(usize, usize), Dir>,
    /// Unordered pairs under a partition (resets, refusals).
    refused: HashSet<(usize, usize)>,
    /// Unordered pair to the number of resets asked so far.
    resets: HashMap<(usize, usize), u64>,
    rng: StdRng,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every change, so held connections re-check.
    changed: watch::Sender<u64>,
    /// Cuts are the kernel's: the proxy only shapes.
    kernel_cuts: bool,
}

/// All links of a federation, and the proxies that carry them. Dropping it stops the proxies
/// and removes any kernel rules.
pub struct Wan {
    inner: Arc<Inner>,
    // Owned here rather than in `Inner`, so its rules go when the `Wan` does, not when the
    // last proxy task has been torn down.
    kernel: Option<Iptables>,
    tasks: Mutex<JoinSet<()>>,
}

/// What happens to one datagram.
enum Fate {
    Drop,
    After(Instant),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn silent(&self, from: usize, to: usize) -> bool {
        self.lock().dirs.get(&(from, to)).is_some_and(|d| d.silent)
    }

    fn refused(&self, a: usize, b: usize) -> bool {
        self.lock().refused.contains(&pair(a, b))
    }

    fn resets(&self, a: usize, b: usize) -> u64 {
        self.lock().resets.get(&pair(a, b)).copied().unwrap_or(0)
    }

    /// Waits until traffic from `from` to `to` flows.
    async fn wait_open(&self, from: usize, to: usize, sub: &mut watch::Receiver<u64>) {
        loop {
            sub.borrow_and_update();
            if !self.silent(from, to) {
                return;
            }
            if sub.changed().await.is_err() {
                return;
            }
        }
    }

    /// When a TCP chunk of `n` bytes read now is delivered; never before `after` (order).
    fn deliver_at(&self, from: usize, to: usize, n: usize, after: Instant) -> Instant {
        let mut st = self.lock();
        let State { dirs, rng, .. } = &mut *st;
        let dir = dirs.entry((from, to)).or_default();
        let now = Instant::now();
        let mut delay = dir.shape.delay + jitter(rng, dir.shape.jitter);
        if dir.shape.loss > 0.0 && rng.random_bool(dir.shape.loss.clamp(0.0, 1.0)) {
            delay += TCP_RTO;
        }
        let mut at = now + delay;
        if let Some(rate) = dir.shape.rate.filter(|r| *r > 0) {
            let start = dir.next_free.max(now);
            dir.next_free = start + transmit(n, rate);
            at = at.max(dir.next_free + delay);
        }
        at.max(after)
    }

    /// What happens to a datagram of `n` bytes from `from` to `to`.
    fn datagram(&self, from: usize, to: usize, n: usize) -> Fate {
        if !self.kernel_cuts && self.refused(from, to) {
            return Fate::Drop;
        }
        let mut st = self.lock();
        let State { dirs, rng, .. } = &mut *st;
        let dir = dirs.entry((from, to)).or_default();
        if dir.silent {
            return Fate::Drop;
        }
        if dir.shape.loss > 0.0 && rng.random_bool(dir.shape.loss.clamp(0.0, 1.0)) {
            return Fate::Drop;
        }
        let now = Instant::now();
        let mut at = now + dir.shape.delay + jitter(rng, dir.shape.jitter);
        if let Some(rate) = dir.shape.rate.filter(|r| *r > 0) {
            let start = dir.next_free.max(now);
            if start > now + UDP_QUEUE_LIMIT {
                return Fate::Drop;
            }
            dir.next_free = start + transmit(n, rate);
            at = at.max(dir.next_free);
        }
        Fate::After(at)
    }
}

fn jitter(rng: &mut StdRng, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_micros(rng.random_range(0..=u64::try_from(max.as_micros()).unwrap_or(u64::MAX)))
}

fn transmit(n: usize, rate: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate as f64)
}

impl Wan {
    /// Links with no faults; shaping draws from `seed`. With `kernel`, cuts are iptables rules.
    pub fn new(seed: u64, kernel: Option<Iptables>) -> Wan {
        let (changed, _) = watch::channel(0);
        Wan {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    dirs: HashMap::new(),
                    refused: HashSet::new(),
                    resets: HashMap::new(),
                    rng: StdRng::seed_from_u64(seed),
                }),
                changed,
                kernel_cuts: kernel.is_some(),
            }),
            kernel,
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// Which mechanism cuts links: `"iptables"` or `"proxy"`.
    pub fn cut_mechanism(&self) -> &'static str {
        if self.kernel.is_some() {
            "iptables"
        } else {
            "proxy"
        }
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(f);
    }

    /// Proxies TCP from `listen` (a WAN face of DC `dc`) to `upstream` (the node).
    pub async fn proxy_tcp(
        &self,
        dc: usize,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<()> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("link proxy cannot listen on tcp {listen}"))?;
        let inner = self.inner.clone();
        self.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((client, peer)) = accepted {
                            conns.spawn(tcp_conn(inner.clone(), client, peer, dc, upstream));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(())
    }

    /// Proxies UDP datagrams from `listen` (a WAN face of DC `dc`) to `upstream` (the node).
    pub async fn proxy_udp(
        &self,
        dc: usize,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<()> {
        let sock = Arc::new(
            UdpSocket::bind(listen)
                .await
                .with_context(|| format!("link proxy cannot listen on udp {listen}"))?,
        );
        self.spawn(udp_listener(self.inner.clone(), sock, dc, upstream));
        Ok(())
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.inner.lock());
        self.inner.bump();
    }

    /// Shapes traffic from `from` to `to`.
    pub fn shape(&self, from: usize, to: usize, shape: Shape) {
        self.set(|s| s.dirs.entry((from, to)).or_default().shape = shape);
    }

    /// Drops everything from `from` to `to`, silently (the other way still flows).
    pub fn one_way(&self, from: usize, to: usize) -> Result<()> {
        if let Some(k) = &self.kernel {
            return k.drop_dir(from, to);
        }
        self.set(|s| s.dirs.entry((from, to)).or_default().silent = true);
        Ok(())
    }

    /// Drops everything between `a` and `b` both ways, silently: no reset, no refusal.
    pub fn blackhole(&self, a: usize, b: usize) -> Result<()> {
        self.one_way(a, b)?;
        self.one_way(b, a)
    }

    /// A partition that answers: connections between `a` and `b` are reset, new ones refused.
    pub fn partition(&self, a: usize, b: usize) -> Result<()> {
        if let Some(k) = &self.kernel {
            return k.reject(a, b);
        }
        self.set(|s| {
            s.refused.insert(pair(a, b));
        });
        Ok(())
    }

    /// Resets every TCP connection between `a` and `b` now (SO_LINGER 0); new ones work.
    pub fn reset(&self, a: usize, b: usize) {
        self.set(|s| *s.resets.entry(pair(a, b)).or_default() += 1);
    }

    /// Lifts every cut between `a` and `b` (shaping stays).
    pub fn heal(&self, a: usize, b: usize) -> Result<()> {
        if let Some(k) = &self.kernel {
            k.heal(a, b)?;
        }
        self.set(|s| {
            s.refused.remove(&pair(a, b));
            for d in [(a, b), (b, a)] {
                if let Some(dir) = s.dirs.get_mut(&d) {
                    dir.silent = false;
                }
            }
        });
        Ok(())
    }

    /// Lifts every cut and every shaping.
    pub fn heal_all(&self) -> Result<()> {
        if let Some(k) = &self.kernel {
            k.heal_all()?;
        }
        self.set(|s| {
            s.refused.clear();
            s.dirs.clear();
        });
        Ok(())
    }
}

/// One proxied TCP connection from DC `src` (by the client's address) to node `upstream` of
/// DC `dst`.
async fn tcp_conn(
    inner: Arc<Inner>,
    client: TcpStream,
    peer: SocketAddr,
    dst: usize,
    upstream: SocketAddr,
) {
    let src = addr::dc_of(peer.ip()).unwrap_or(0);
    let mut sub = inner.changed.subscribe();
    let resets_before = inner.resets(src, dst);
    // A cut either way loses the SYN or its answer: the connection waits for the heal.
    loop {
        sub.borrow_and_update();
        if inner.refused(src, dst) {
            abort(&client);
            return;
        }
        if !inner.silent(src, dst) && !inner.silent(dst, src) {
            break;
        }
        if sub.changed().await.is_err() {
            return;
        }
    }
    let server = match timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            abort(&client);
            return;
        }
    };
    let (mut client, mut server) = (client, server);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let reset = {
        // Borrowed halves: dropping them closes nothing, so a reset can still RST both sockets.
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let relay = async {
            tokio::join!(
                pump(&inner, cr, sw, src, dst),
                pump(&inner, sr, cw, dst, src)
            )
        };
        let reset = async {
            loop {
                sub.borrow_and_update();
                if inner.resets(src, dst) != resets_before || inner.refused(src, dst) {
                    return;
                }
                if sub.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = relay => false,
            () = reset => true,
        }
    };
    if reset {
        abort(&client);
        abort(&server);
    }
}

/// Closes `s` with an RST rather than a FIN.
fn abort(s: &TcpStream) {
    #[allow(deprecated)] // the replacement's name differs across tokio versions
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Copies `r` to `w` through the shaping and cuts of direction `from` to `to`; ends with a
/// FIN towards `w` once `r` ends.
async fn pump<R, W>(inner: &Inner, mut r: R, mut w: W, from: usize, to: usize)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>(32);
    let reader = async {
        let tx = tx;
        let mut sub = inner.changed.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        let mut last = Instant::now();
        loop {
            inner.wait_open(from, to, &mut sub).await;
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            last = inner.deliver_at(from, to, n, last);
            if tx.send((last, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async {
        let mut rx = rx;
        let mut sub = inner.changed.subscribe();
        while let Some((at, chunk)) = rx.recv().await {
            sleep_until(at).await;
            inner.wait_open(from, to, &mut sub).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

async fn udp_listener(inner: Arc<Inner>, sock: Arc<UdpSocket>, dst: usize, upstream: SocketAddr) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut back = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let src = addr::dc_of(peer.ip()).unwrap_or(0);
        let up = match sessions.get(&peer) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(upstream).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                back.spawn(udp_back(
                    inner.clone(),
                    u.clone(),
                    sock.clone(),
                    peer,
                    dst,
                    src,
                ));
                sessions.insert(peer, u.clone());
                u
            }
        };
        let data = buf[..n].to_vec();
        if let Fate::After(at) = inner.datagram(src, dst, n) {
            tokio::spawn(async move {
                sleep_until(at).await;
                let _ = up.send(&data).await;
            });
        }
    }
}

/// Carries the node's answers back to one client of a UDP session.
async fn udp_back(
    inner: Arc<Inner>,
    up: Arc<UdpSocket>,
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    from: usize,
    to: usize,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(n) = up.recv(&mut buf).await else {
            // An ICMP error from a dead node surfaces here; the session stays for its return.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let data = buf[..n].to_vec();
        if let Fate::After(at) = inner.datagram(from, to, n) {
            let sock = sock.clone();
            tokio::spawn(async move {
                sleep_until(at).await;
                let _ = sock.send_to(&data, peer).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{link_ip, node_ip};
    use meridian_testkit::free_port_on;
    use tokio::net::TcpSocket;

    /// An echo server at node 1 of dc2, the proxy at its WAN face; a client in dc1.
    async fn tcp_setup(wan: &Wan) -> anyhow::Result<SocketAddr> {
        let port = free_port_on(&[node_ip(2, 1).into(), link_ip(2, 1).into()]);
        let echo = TcpListener::bind((node_ip(2, 1), port)).await?;
        tokio::spawn(async move {
            while let Ok((s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let face = SocketAddr::from((link_ip(2, 1), port));
        wan.proxy_tcp(2, face, (node_ip(2, 1), port).into()).await?;
        Ok(face)
    }

    async fn dial(face: SocketAddr) -> anyhow::Result<TcpStream> {
        let s = TcpSocket::new_v4()?;
        s.bind((node_ip(1, 1), 0).into())?;
        Ok(s.connect(face).await?)
    }

    /// Sends one byte and waits up to `limit` for its echo.
    async fn echo(s: &mut TcpStream, limit: Duration) -> bool {
        if s.write_all(b"x").await.is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(timeout(limit, s.read_exact(&mut b)).await, Ok(Ok(_)))
    }

    #[tokio::test]
    async fn tcp_faults_delay_hold_and_reset() -> anyhow::Result<()> {
        let wan = Wan::new(1, None);
        let face = tcp_setup(&wan).await?;
        let mut s = dial(face).await?;
        assert!(echo(&mut s, Duration::from_secs(2)).await);

        wan.shape(
            1,
            2,
            Shape {
                delay: Duration::from_millis(150),
                ..Shape::default()
            },
        );
        let t = Instant::now();
        assert!(echo(&mut s, Duration::from_secs(2)).await);
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        wan.shape(1, 2, Shape::default());

        // A blackhole holds bytes (no reset); they arrive after the heal, as retransmitted.
        wan.blackhole(1, 2)?;
        assert!(!echo(&mut s, Duration::from_millis(300)).await);
        wan.heal(1, 2)?;
        let mut b = [0u8; 1];
        timeout(Duration::from_secs(2), s.read_exact(&mut b)).await??;

        // One way: the answer is what is lost.
        wan.one_way(2, 1)?;
        assert!(!echo(&mut s, Duration::from_millis(300)).await);
        wan.heal(1, 2)?;
        timeout(Duration::from_secs(2), s.read_exact(&mut b)).await??;

        // A reset ends the connection with an RST; a new one works.
        wan.reset(1, 2);
        let mut buf = [0u8; 8];
        let got = timeout(Duration::from_secs(2), s.read(&mut buf)).await?;
        assert!(
            matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{got:?}"
        );
        let mut s = dial(face).await?;
        assert!(echo(&mut s, Duration::from_secs(2)).await);

        // A partition resets what is open and refuses what comes.
        wan.partition(1, 2)?;
        let got = timeout(Duration::from_secs(2), s.read(&mut buf)).await?;
        assert!(got.is_err() || matches!(got, Ok(0)), "{got:?}");
        let mut s = dial(face).await?;
        assert!(!echo(&mut s, Duration::from_millis(500)).await);
        wan.heal_all()?;
        let mut s = dial(face).await?;
        assert!(echo(&mut s, Duration::from_secs(2)).await);
        Ok(())
    }

    /// Which of 200 datagrams came back through a link losing half of them, for `seed`.
    async fn udp_survivors(seed: u64) -> anyhow::Result<Vec<u16>> {
        let wan = Wan::new(seed, None);
        let port = free_port_on(&[node_ip(2, 1).into(), link_ip(2, 1).into()]);
        let echo = UdpSocket::bind((node_ip(2, 1), port)).await?;
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let face = SocketAddr::from((link_ip(2, 1), port));
        wan.proxy_udp(2, face, (node_ip(2, 1), port).into()).await?;
        wan.shape(
            1,
            2,
            Shape {
                loss: 0.5,
                ..Shape::default()
            },
        );
        let client = UdpSocket::bind((node_ip(1, 1), 0)).await?;
        client.connect(face).await?;
        let mut back = Vec::new();
        for i in 0..200u16 {
            client.send(&i.to_be_bytes()).await?;
            let mut b = [0u8; 2];
            if let Ok(Ok(2)) = timeout(Duration::from_millis(30), client.recv(&mut b)).await {
                back.push(u16::from_be_bytes(b));
            }
        }
        server.abort();
        Ok(back)
    }

    #[tokio::test]
    async fn udp_loss_is_drawn_from_the_seed() -> anyhow::Result<()> {
        let a = udp_survivors(7).await?;
        let b = udp_survivors(7).await?;
        assert!((40..160).contains(&a.len()), "{} of 200 came back", a.len());
        assert_eq!(a, b, "the same seed dropped different datagrams");
        Ok(())
    }
}
