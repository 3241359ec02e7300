//! The UDP response-rate limit: each client prefix (IPv4 /24, IPv6 /56, as BIND's RRL groups
//! them) gets at most `rate` responses a second after a burst of `burst`, so that queries with a
//! spoofed source cannot turn the server into an amplifier aimed at one network. Over the limit a
//! response is dropped, except every `slip`-th one, which goes out as an empty truncated reply
//! (TC=1): a real client behind that prefix then retries over TCP, which is never limited, while
//! the spoofed victim receives no more bytes than the attacker sent.
//!
//! Each prefix is a GCRA (a token bucket kept as one "theoretical arrival time") in a fixed table
//! of [`SLOTS`] atomic words shared by every server thread: memory never grows, whatever the
//! sources, and the hot path is one hash, two loads and one compare-and-swap, with no lock.
//! The table is shared rather than per thread because the server threads read duplicates of one
//! socket (and even with `SO_REUSEPORT` the kernel spreads a resolver's randomised source ports
//! over every socket), so a per-thread table would multiply the limit by the thread count.
//!
//! Only sources that can be spoofed from afar are limited: loopback, site-local addresses
//! (private, shared, unique-local, link-local), the host's own networks and the operator's
//! `exempt` prefixes never are. They cannot be aimed at a victim on the Internet, and they are
//! where a DC's real heavy clients sit: a host's local forwarder (systemd-resolved, dnsmasq,
//! unbound) or a cluster's CoreDNS sends the queries of thousands of clients from one address.
//!
//! The limit counts bytes as well as responses: a response longer than [`BYTES_PER_CHARGE`]
//! is charged once more for every started [`BYTES_PER_CHARGE`] bytes beyond the first, after it
//! is sent ([`RateLimiter::charge_bytes`]), so a prefix receives at most `rate` ×
//! [`BYTES_PER_CHARGE`] bytes a second whatever it asks for (large answers, forwarded ones).
//!
//! Sans-IO: time comes in as microseconds from an origin of the caller's choosing.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_topology::net::{Prefix, is_site_local};

/// Bits of an IPv4 client address that name its group.
pub const IPV4_PREFIX: u32 = 24;
/// Bits of an IPv6 client address that name its group (a site's allocation is /48 to /56).
pub const IPV6_PREFIX: u32 = 56;
/// Bytes of a response that one charge covers (the classic DNS datagram).
pub const BYTES_PER_CHARGE: usize = 512;
/// Slots in the table (8 bytes each: 128 KiB), in sets of two.
pub const SLOTS: usize = 1 << 14;
/// Low bits of a slot: the prefix's theoretical arrival time, in microseconds, wrapping.
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// Largest burst window kept; far below the 2^47 µs (4.4 years) that wrapping time allows.
const MAX_TOLERANCE_US: u64 = 1 << 40;

/// The response-rate limit's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Responses a second per client prefix once its burst is spent; 0 turns the limit off.
    pub rate: u32,
    /// Responses a client prefix may get at once after being quiet (at least 1).
    pub burst: u32,
    /// Every `slip`-th response over the limit is sent as an empty truncated reply; 0: none.
    pub slip: u32,
    /// Limit loopback, site-local sources and the host's networks too (off: they are exempt).
    pub limit_local: bool,
    /// Client prefixes never limited, besides the local ones.
    pub exempt: Vec<Prefix>,
}

impl Default for RateLimitSettings {
    /// 1,000 responses/s per /24 with a 2 s burst, every second response over the limit slipped.
    ///
    /// Consul's TTLs are 0 by default, so clients do not cache and a rack of busy hosts behind
    /// one /24 can reach a few hundred queries a second; 1,000/s leaves room for that and its
    /// spikes, yet caps what spoofed queries can aim at one network at under 1% of what one
    /// server thread answers (about 120,000/s). Slip 2 is BIND's default: half of the over-limit
    /// responses become TC replies no larger than the query, so a real client retries over TCP
    /// at once instead of after a timeout, and reflection gains nothing.
    fn default() -> Self {
        RateLimitSettings {
            rate: 1000,
            burst: 2000,
            slip: 2,
            limit_local: false,
            exempt: Vec::new(),
        }
    }
}

/// What to do with one UDP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: send it.
    Send,
    /// Over the limit: send nothing.
    Drop,
    /// Over the limit: send an empty truncated reply instead.
    Slip,
}

/// The shared table of client prefixes. See the module documentation.
pub struct RateLimiter {
    slots: Box<[AtomicU64]>,
    /// Keyed with random keys per process, so that sources cannot be chosen to collide.
    hasher: RandomState,
    /// Microseconds between responses at the sustained rate.
    interval: u64,
    /// How far (µs) a prefix's arrival time may run ahead of now: `(burst - 1) × interval`.
    tolerance: u64,
    slip: u32,
    limit_local: bool,
    /// The operator's prefixes and, unless local sources are limited, the host's networks.
    exempt: Vec<Prefix>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("interval_us", &self.interval)
            .field("tolerance_us", &self.tolerance)
            .field("slip", &self.slip)
            .finish_non_exhaustive()
    }
}

/// The group `ip` belongs to: its first [`IPV4_PREFIX`] or [`IPV6_PREFIX`] bits, with the family.
fn prefix(ip: IpAddr) -> (u8, u64) {
    // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: group them as IPv4.
    match ip.to_canonical() {
        IpAddr::V4(v4) => (4, u64::from(u32::from(v4) >> (32 - IPV4_PREFIX))),
        IpAddr::V6(v6) => {
            let high = (u128::from(v6) >> 64) as u64;
            (6, high >> (64 - IPV6_PREFIX))
        }
    }
}

impl RateLimiter {
    /// A limiter with `settings`; `None` when its rate is 0 (no limit).
    #[cfg(test)]
    pub fn new(settings: &RateLimitSettings) -> Option<Self> {
        Self::with_host_networks(settings, Vec::new())
    }

    /// [`RateLimiter::new`], with the host's networks `host` exempt unless local sources are
    /// limited ([`host_networks`] lists them).
    pub fn with_host_networks(settings: &RateLimitSettings, host: Vec<Prefix>) -> Option<Self> {
        if settings.rate == 0 {
            return None;
        }
        let mut exempt = settings.exempt.clone();
        if !settings.limit_local {
            exempt.extend(host);
        }
        // At least 1 µs: a rate above 1,000,000/s is as good as none on one server.
        let interval = (1_000_000 / u64::from(settings.rate)).max(1);
        let tolerance = (u64::from(settings.burst.max(1) - 1) * interval).min(MAX_TOLERANCE_US);
        Some(RateLimiter {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            interval,
            tolerance,
            slip: settings.slip,
            limit_local: settings.limit_local,
            exempt,
        })
    }

    /// Whether responses to `ip` are never limited. A couple of compares for a site-local
    /// source; the exempt list (a few prefixes) is read only for public ones.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        (!self.limit_local && is_site_local(ip)) || self.exempt.iter().any(|p| p.contains(ip))
    }

    /// How far `tat` is ahead of `now` (both wrapping µs); 0 when it is behind, which is a full
    /// bucket. A state no update can produce (a slot idle for years) also reads as full.
    fn ahead(&self, tat: u64, now: u64) -> u64 {
        let d = tat.wrapping_sub(now) & TIME_MASK;
        if d > self.tolerance + self.interval {
            0
        } else {
            d
        }
    }

    /// `ip`'s prefix's tag and the first slot of its set.
    fn slot(&self, ip: IpAddr) -> (u64, usize) {
        let h = self.hasher.hash_one(prefix(ip));
        // Two slots per set, side by side in one cache line.
        (h >> TIME_BITS, (h as usize) & (SLOTS - 1) & !1)
    }

    /// Charges `ip`'s prefix `extra` more responses at `now_us`, without refusing anything: its
    /// next responses are limited sooner. The debt stops at the point where the next one is
    /// refused, so a prefix is never held back longer than one interval past its burst.
    pub fn debit(&self, ip: IpAddr, now_us: u64, extra: u64) {
        let (tag, set) = self.slot(ip);
        let now = now_us & TIME_MASK;
        let most = self.tolerance + self.interval;
        for i in [set, set + 1] {
            let mut seen = self.slots[i].load(Ordering::Relaxed);
            // A prefix not in its set (its slot was taken meanwhile) owes nothing more.
            while seen >> TIME_BITS == tag {
                let ahead = self.ahead(seen & TIME_MASK, now);
                let owed = ahead
                    .saturating_add(extra.saturating_mul(self.interval))
                    .min(most);
                let tat = (now + owed) & TIME_MASK;
                match self.slots[i].compare_exchange_weak(
                    seen,
                    tag << TIME_BITS | tat,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(now_seen) => seen = now_seen,
                }
            }
        }
    }

    /// Charges one response to `ip`'s prefix at `now_us`; false when the prefix is over its
    /// limit (nothing is charged then).
    pub fn allow(&self, ip: IpAddr, now_us: u64) -> bool {
        let (tag, set) = self.slot(ip);
        let now = now_us & TIME_MASK;
        loop {
            let (a, b) = (
                self.slots[set].load(Ordering::Relaxed),
                self.slots[set + 1].load(Ordering::Relaxed),
            );
            let (i, seen, ahead) = if a >> TIME_BITS == tag {
                (set, a, self.ahead(a & TIME_MASK, now))
            } else if b >> TIME_BITS == tag {
                (set + 1, b, self.ahead(b & TIME_MASK, now))
            } else {
                // A new prefix takes the slot closer to a full bucket: losing a full bucket
                // loses nothing, so only a set whose two prefixes are both being limited can
                // hand a fresh burst to one of them.
                let (da, db) = (
                    self.ahead(a & TIME_MASK, now),
                    self.ahead(b & TIME_MASK, now),
                );
                if da <= db {
                    (set, a, 0)
                } else {
                    (set + 1, b, 0)
                }
            };
            if ahead > self.tolerance {
                return false;
            }
            let tat = (now + ahead + self.interval) & TIME_MASK;
            // Relaxed: each slot is its own state and guards no other memory.
            if self.slots[i]
                .compare_exchange_weak(
                    seen,
                    tag << TIME_BITS | tat,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return true;
            }
        }
    }
}

/// The networks of the host's interfaces (address and netmask), for
/// [`RateLimiter::with_host_networks`]; empty where they cannot be listed.
pub fn host_networks() -> Vec<Prefix> {
    #[cfg(target_os = "linux")]
    {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for a in addrs {
            let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
                continue;
            };
            let (ip, len) = if let (Some(ip), Some(m)) =
                (addr.as_sockaddr_in(), mask.as_sockaddr_in())
            {
                (IpAddr::V4(ip.ip()), u32::from(m.ip()).count_ones())
            } else if let (Some(ip), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (IpAddr::V6(ip.ip()), u128::from(m.ip()).count_ones())
            } else {
                continue;
            };
            if let Some(p) = u8::try_from(len).ok().and_then(|l| Prefix::new(ip, l))
                && !out.contains(&p)
            {
                out.push(p);
            }
        }
        out
    }
    #[cfg(not(target_os = "linux"))]
    Vec::new()
}

impl RateLimiter {
    /// Charges `ip`'s prefix for a response of `len` bytes that was sent: once more per started
    /// [`BYTES_PER_CHARGE`] beyond the first (which [`ClientLimit::check`] charged). Nothing for a
    /// short response or an exempt source.
    pub fn charge_bytes(&self, ip: IpAddr, now_us: u64, len: usize) {
        let extra = (len.saturating_sub(1) / BYTES_PER_CHARGE) as u64;
        if extra > 0 && !self.is_exempt(ip) {
            self.debit(ip, now_us, extra);
        }
    }
}

/// One server thread's use of the shared [`RateLimiter`]: it counts the responses it limited,
/// so the slip count needs no shared counter.
#[derive(Debug)]
pub struct ClientLimit<'a> {
    limiter: &'a RateLimiter,
    limited: u32,
}

impl<'a> ClientLimit<'a> {
    /// This thread's handle on `limiter`.
    pub fn new(limiter: &'a RateLimiter) -> Self {
        ClientLimit {
            limiter,
            limited: 0,
        }
    }

    /// What to do with a response to `ip` at `now_us`.
    pub fn check(&mut self, ip: IpAddr, now_us: u64) -> Verdict {
        if self.limiter.is_exempt(ip) || self.limiter.allow(ip, now_us) {
            return Verdict::Send;
        }
        let slip = self.limiter.slip;
        if slip == 0 {
            return Verdict::Drop;
        }
        self.limited += 1;
        if self.limited >= slip {
            self.limited = 0;
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn limiter(rate: u32, burst: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitSettings {
            rate,
            burst,
            slip,
            ..RateLimitSettings::default()
        })
        .expect("rate > 0")
    }

    /// How many of `n` responses to `ip` at `now` are allowed.
    fn allowed(l: &RateLimiter, ip: IpAddr, now: u64, n: usize) -> usize {
        (0..n).filter(|_| l.allow(ip, now)).count()
    }

    /// Large responses spend a prefix's burst faster: a 1,232-byte answer costs three charges,
    /// so a burst of ten covers four of them where it covers ten short ones; the refusal that
    /// follows lasts no longer than for short ones (one interval after the bucket refills).
    #[test]
    fn large_responses_are_charged_by_their_bytes() {
        let l = limiter(10, 10, 0);
        let big = ip("192.0.2.1");
        let mut sent = 0;
        while l.allow(big, 0) {
            l.charge_bytes(big, 0, 1232);
            sent += 1;
            assert!(sent <= 10, "never refused");
        }
        assert_eq!(sent, 4);
        assert_eq!(
            allowed(&l, ip("203.0.113.5"), 0, 100),
            10,
            "a short-answer prefix"
        );
        // 100 ms later (one interval at 10/s) the big prefix gets exactly one more.
        assert_eq!(allowed(&l, big, 100_000, 5), 1);
        // Short answers and exempt sources are never charged extra.
        let short = ip("198.51.100.1");
        for _ in 0..10 {
            assert!(l.allow(short, 0));
            l.charge_bytes(short, 0, BYTES_PER_CHARGE);
        }
        assert!(!l.allow(short, 0));
        let local = ip("10.0.0.53");
        l.charge_bytes(local, 0, 65_535);
        let mut c = ClientLimit::new(&l);
        assert_eq!(c.check(local, 0), Verdict::Send);
    }

    /// A forwarder on the host, a cluster's CoreDNS on a private address, a host on one of the
    /// node's networks or in an exempt prefix: never limited. A public source is.
    #[test]
    fn local_and_exempt_sources_are_never_limited() {
        let settings = RateLimitSettings {
            rate: 1,
            burst: 1,
            slip: 0,
            exempt: vec!["198.51.100.0/24".parse().expect("prefix")],
            ..RateLimitSettings::default()
        };
        let host = vec!["203.0.113.0/24".parse().expect("prefix")];
        let l = RateLimiter::with_host_networks(&settings, host.clone()).expect("on");
        for src in [
            "127.0.0.1",
            "::1",
            "10.0.0.53",
            "fd00::53",
            "198.51.100.9",
            "203.0.113.7",
        ] {
            let mut c = ClientLimit::new(&l);
            assert!(
                (0..1000).all(|_| c.check(ip(src), 0) == Verdict::Send),
                "{src}"
            );
        }
        let mut c = ClientLimit::new(&l);
        assert_eq!(c.check(ip("192.0.2.1"), 0), Verdict::Send);
        assert_eq!(c.check(ip("192.0.2.1"), 0), Verdict::Drop);
        // Limiting local sources too (the host's networks with them); exempt prefixes stay so.
        let all = RateLimitSettings {
            limit_local: true,
            ..settings
        };
        let l = RateLimiter::with_host_networks(&all, host).expect("on");
        for src in ["127.0.0.1", "10.0.0.53", "203.0.113.7"] {
            let mut c = ClientLimit::new(&l);
            assert_eq!(c.check(ip(src), 0), Verdict::Send, "{src}");
            assert_eq!(c.check(ip(src), 0), Verdict::Drop, "{src}");
        }
        assert!(l.is_exempt(ip("198.51.100.9")));
    }

    #[test]
    fn rate_zero_is_off() {
        assert!(
            RateLimiter::new(&RateLimitSettings {
                rate: 0,
                burst: 10,
                slip: 2,
                ..RateLimitSettings::default()
            })
            .is_none()
        );
    }

    #[test]
    fn burst_then_rate() {
        let l = limiter(100, 20, 0);
        let c = ip("192.0.2.7");
        let t0 = 5_000_000;
        assert_eq!(allowed(&l, c, t0, 50), 20, "exactly the burst at once");
        // 100/s is one per 10 ms: nothing more within the same 10 ms, one after it.
        assert_eq!(allowed(&l, c, t0 + 9_999, 5), 0);
        assert_eq!(allowed(&l, c, t0 + 10_000, 5), 1);
        // Over one second at a steady offered 1,000/s, about 100 get through.
        let mut got = 0;
        for ms in 0..1000u64 {
            got += allowed(&l, c, t0 + 20_000 + ms * 1000, 1);
        }
        assert!((99..=101).contains(&got), "sustained rate: {got}");
        // After a quiet spell the whole burst is back, and no more.
        assert_eq!(allowed(&l, c, t0 + 60_000_000, 50), 20);
    }

    #[test]
    fn clients_are_grouped_by_prefix() {
        let l = limiter(10, 5, 0);
        let t = 1_000_000;
        assert_eq!(allowed(&l, ip("198.51.100.1"), t, 3), 3);
        assert_eq!(
            allowed(&l, ip("198.51.100.200"), t, 10),
            2,
            "same /24 shares the bucket"
        );
        assert_eq!(
            allowed(&l, ip("198.51.101.1"), t, 10),
            5,
            "next /24 is apart"
        );
        assert_eq!(
            allowed(&l, ip("::ffff:198.51.100.9"), t, 10),
            0,
            "IPv4-mapped is IPv4"
        );
        assert_eq!(allowed(&l, ip("2001:db8:0:ab00::1"), t, 3), 3);
        assert_eq!(
            allowed(&l, ip("2001:db8:0:abff:ffff::2"), t, 10),
            2,
            "same /56"
        );
        assert_eq!(allowed(&l, ip("2001:db8:0:ac00::1"), t, 10), 5, "next /56");
    }

    #[test]
    fn slip_every_nth_over_the_limit() {
        let l = limiter(1, 1, 3);
        let mut c = ClientLimit::new(&l);
        let a = ip("203.0.113.5");
        let verdicts: Vec<Verdict> = (0..7).map(|_| c.check(a, 0)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Send, Drop, Drop, Slip, Drop, Drop, Slip]);
        let l = limiter(1, 1, 0);
        let mut c = ClientLimit::new(&l);
        assert_eq!(c.check(a, 0), Send);
        assert!((0..100).all(|_| c.check(a, 0) == Drop), "slip 0: never");
        let l = limiter(1, 1, 1);
        let mut c = ClientLimit::new(&l);
        assert_eq!(c.check(a, 0), Send);
        assert!((0..100).all(|_| c.check(a, 0) == Slip), "slip 1: always");
    }

    #[test]
    fn time_wraps_without_locking_anyone_out() {
        let l = limiter(1000, 10, 0);
        let c = ip("192.0.2.1");
        let before = TIME_MASK - 500;
        assert_eq!(allowed(&l, c, before, 20), 10);
        // 48-bit time wraps: 10 ms later is a small number again, and the bucket refilled.
        assert_eq!(allowed(&l, c, before + 10_000, 20), 10);
        // A slot last touched half a wrap ago reads as a full bucket, not as years ahead.
        assert_eq!(allowed(&l, c, before + 10_000 + (1 << 47), 20), 10);
    }

    #[test]
    fn a_spoofed_flood_neither_grows_memory_nor_frees_a_limited_prefix() {
        let l = limiter(100, 10, 0);
        let victim = ip("192.0.2.1");
        // 200,000 other /24s, one response each, 1 µs apart (far more than a thread answers),
        // while the victim's prefix is asked all the time. Each spoofed prefix holds its slot
        // for only 10 ms, so none evicts the victim's, whose bucket stays empty: over 200 ms
        // the victim gets its burst and 100/s, where each eviction would hand it 10 more.
        let (mut victim_got, mut spoofed_got) = (0, 0);
        for now in 0..200_000u32 {
            let spoofed = IpAddr::from((now + 1).wrapping_mul(2_654_435_761).to_be_bytes());
            spoofed_got += usize::from(l.allow(spoofed, u64::from(now)));
            victim_got += usize::from(l.allow(victim, u64::from(now)));
        }
        assert!(victim_got <= 10 + 21, "evicted: {victim_got} responses");
        assert!(spoofed_got > 199_000, "fresh prefixes get their burst");
        assert_eq!(l.slots.len(), SLOTS, "the table never grows");
    }

    #[test]
    fn threads_share_one_limit() {
        let l = limiter(1, 1000, 0);
        let c = ip("192.0.2.1");
        let got: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| allowed(&l, c, 7, 1000)))
                .collect();
            hs.into_iter().map(|h| h.join().expect("no panic")).sum()
        });
        assert_eq!(got, 1000, "four threads together get one burst, not four");
    }
}
