//! [`DnsHandler`]: the request path. Checks a decoded request (opcode, class, question count),
//! answers it from the latest [`View`] (see [`crate::answer`]), fits the answer to the transport's
//! size (512 bytes over UDP without EDNS, the EDNS size with it, 64 KiB over TCP) by dropping
//! whole answer groups, and encodes it. Names outside our domains are refused or forwarded to the
//! recursors. Response codes are chosen here and only here.
//!
//! The handler is a hickory-server [`RequestHandler`]; the socket loops in [`crate::server`] use
//! the same steps without the trait's boxing ([`DnsHandler::prepare`], [`DnsHandler::encode`]).

use std::iter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Message, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use meridian_topology::View;
use meridian_topology::net::Prefix;
use tokio::net::UdpSocket;

use crate::answer::{Answer, MAX_GROUPS, Outcome, answer, answer_whole};
use crate::cache::{AnswerCache, Query, Shape};
use crate::counters::DnsCounters;
use crate::settings::DnsSettings;

/// Largest DNS message over TCP.
pub const TCP_MAX: usize = 65535;
/// Largest UDP response to a query without EDNS.
pub const UDP_PLAIN_MAX: usize = 512;
/// Smallest encoded record (a compressed owner name and an A record): no message carries more
/// records than its size divided by this.
const MIN_RECORD: usize = 16;

/// Answers DNS requests from the live view. Cheap to clone.
#[derive(Clone)]
pub struct DnsHandler {
    shared: Arc<Shared>,
}

struct Shared {
    settings: DnsSettings,
    view: Arc<ArcSwap<View>>,
    counters: Arc<DnsCounters>,
    /// One permit per query being forwarded (`max_forwards`).
    forwards: Arc<tokio::sync::Semaphore>,
    /// Who may recurse: `recursor_allow` and the host's own networks (loopback always may).
    recursion: Vec<Prefix>,
}

/// A response ready to encode: its header, records and OPT.
#[derive(Debug)]
pub struct Reply {
    meta: Metadata,
    answer: Answer,
    /// Answer groups kept.
    groups: usize,
    /// Additional records kept.
    extras: usize,
    edns: Option<Edns>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Prepared {
    /// Send this.
    Reply(Reply),
    /// Ask the recursors (slow: run it off the socket loop).
    Forward,
}

/// The OPT record of a response to `request`: version 0, echoing the client's UDP size (at
/// least 512).
fn response_edns(request: &Request, max_udp: u16) -> Option<Edns> {
    request.edns.as_ref().map(|e| {
        let mut out = Edns::new();
        // What this server accepts and sends over UDP (RFC 6891 6.2.3), within the client's.
        out.set_max_payload(e.max_payload().min(max_udp).max(512));
        out
    })
}

/// The largest response `request` may get on its transport.
fn size_limit(request: &Request, max_udp: u16) -> usize {
    match request.protocol() {
        Protocol::Udp => usize::from(request.max_payload().min(max_udp)).max(UDP_PLAIN_MAX),
        _ => TCP_MAX,
    }
}

/// An upper bound of a name's encoded size (no compression).
fn name_bound(n: &hickory_server::proto::rr::Name) -> usize {
    n.len() + 1
}

/// An upper bound of a record's encoded size; `TCP_MAX` for types we never build.
fn record_bound(r: &Record) -> usize {
    let rdata = match &r.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::SRV(srv) => 6 + name_bound(&srv.target),
        RData::NS(ns) => name_bound(&ns.0),
        RData::PTR(ptr) => name_bound(&ptr.0),
        RData::SOA(soa) => name_bound(&soa.mname) + name_bound(&soa.rname) + 20,
        RData::TXT(txt) => txt.txt_data.iter().map(|s| s.len() + 1).sum(),
        _ => TCP_MAX,
    };
    name_bound(&r.name) + 10 + rdata
}

#[allow(clippy::disallowed_methods)] // The SOA serial is the Unix time, as Consul's is.
fn now_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

impl DnsHandler {
    /// A handler answering from `view` (swapped by the server as the catalog changes).
    pub fn new(
        settings: DnsSettings,
        view: Arc<ArcSwap<View>>,
        counters: Arc<DnsCounters>,
    ) -> Self {
        let mut recursion = settings.recursor_allow.clone();
        if !settings.recursors.is_empty() {
            recursion.extend(crate::ratelimit::host_networks());
        }
        DnsHandler {
            shared: Arc::new(Shared {
                forwards: Arc::new(tokio::sync::Semaphore::new(settings.max_forwards.max(1))),
                recursion,
                settings,
                view,
                counters,
            }),
        }
    }

    /// The counters this handler adds to.
    pub fn counters(&self) -> &Arc<DnsCounters> {
        &self.shared.counters
    }

    /// The settings this handler answers with.
    pub fn settings(&self) -> &DnsSettings {
        &self.shared.settings
    }

    /// An error response (no records) with `rcode`.
    fn error(&self, request: &Request, rcode: ResponseCode) -> Reply {
        let s = &self.shared.settings;
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = rcode;
        Reply {
            meta,
            answer: Answer::default(),
            groups: 0,
            extras: 0,
            edns: response_edns(request, s.max_udp_payload),
        }
    }

    /// Everything that needs no network: checks, the answer, and fitting it to the transport.
    pub fn prepare(&self, request: &Request) -> Prepared {
        if request.metadata.op_code != OpCode::Query {
            return Prepared::Reply(self.error(request, ResponseCode::NotImp));
        }
        // RFC 6891 6.1.3: we speak EDNS version 0 only.
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            let mut reply = self.error(request, ResponseCode::BADVERS);
            if let Some(e) = reply.edns.as_mut() {
                e.set_rcode_high(ResponseCode::BADVERS.high());
            }
            return Prepared::Reply(reply);
        }
        let [query] = request.queries.queries() else {
            return Prepared::Reply(self.error(request, ResponseCode::FormErr));
        };
        if query.query_class() != DNSClass::IN {
            return Prepared::Reply(self.error(request, ResponseCode::NotImp));
        }
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Prepared::Reply(self.error(request, ResponseCode::Refused));
        }
        let s = &self.shared.settings;
        let limit = size_limit(request, s.max_udp_payload);
        let plain_udp = request.protocol() == Protocol::Udp && request.edns.is_none();
        let mut policy_cap = MAX_GROUPS;
        if s.a_record_limit > 0 {
            policy_cap = policy_cap.min(s.a_record_limit);
        }
        if plain_udp && s.udp_answer_limit > 0 {
            policy_cap = policy_cap.min(s.udp_answer_limit);
        }
        let size_cap = limit / MIN_RECORD;
        let view = self.shared.view.load();
        let name = query.original().name();
        let built = answer(
            s,
            &view,
            name,
            qtype,
            policy_cap.min(size_cap),
            now_serial(),
        );
        let ans = match built {
            Outcome::Ours(a) => a,
            Outcome::NotOurs if s.recursors.is_empty() => {
                return Prepared::Reply(self.error(request, ResponseCode::Refused));
            }
            // Not an open resolver: only local clients may have names outside our domains
            // forwarded.
            Outcome::NotOurs if !self.may_recurse(request.src().ip()) => {
                self.shared.counters.recursion_refused();
                return Prepared::Reply(self.error(request, ResponseCode::Refused));
            }
            Outcome::NotOurs => return Prepared::Forward,
        };
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = ans.rcode;
        meta.authoritative = true;
        meta.recursion_available = !s.recursors.is_empty();
        let mut reply = Reply {
            meta,
            groups: ans.groups(),
            extras: ans.extras.len(),
            answer: ans,
            edns: response_edns(request, s.max_udp_payload),
        };
        let built_groups = reply.groups;
        fit(request, &mut reply, limit);
        // Cut for size (not for an answer limit): over UDP the client should retry over TCP.
        let cut_for_size =
            reply.groups < built_groups || (built_groups == size_cap && size_cap < policy_cap);
        if cut_for_size && request.protocol() == Protocol::Udp {
            reply.meta.truncation = true;
            self.shared.counters.truncated();
        }
        Prepared::Reply(reply)
    }

    /// Answers the UDP query `q` into `out` from `cache` (see [`crate::cache`]) and counts it;
    /// false when it must go the general way ([`DnsHandler::decode`], [`DnsHandler::prepare`]).
    pub(crate) fn answer_cached(
        &self,
        cache: &mut AnswerCache,
        q: &Query<'_>,
        out: &mut Vec<u8>,
    ) -> bool {
        let qtype = q.qtype();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return false;
        }
        let s = &self.shared.settings;
        let mut cap = MAX_GROUPS;
        if s.a_record_limit > 0 {
            cap = cap.min(s.a_record_limit);
        }
        if !q.has_edns() && s.udp_answer_limit > 0 {
            cap = cap.min(s.udp_answer_limit);
        }
        let shape = Shape {
            cap,
            limit: q.udp_limit(s.max_udp_payload),
            recursion_available: !s.recursors.is_empty(),
            max_udp: s.max_udp_payload,
            serial: now_serial(),
        };
        let view = self.shared.view.load();
        let build = |name: &_, qtype| answer_whole(s, &view, name, qtype, shape.serial);
        let Some(sent) = cache.answer(&view, q, shape, build, out) else {
            return false;
        };
        if sent.truncated {
            self.shared.counters.truncated();
        }
        self.shared.counters.answered(sent.rcode);
        true
    }

    /// Whether a client at `ip` may have names outside our domains forwarded: loopback, the
    /// host's own networks and `recursor_allow`.
    fn may_recurse(&self, ip: std::net::IpAddr) -> bool {
        ip.to_canonical().is_loopback() || self.shared.recursion.iter().any(|p| p.contains(ip))
    }

    /// Asks the recursors, in order, each within the configured timeout; SERVFAIL if none answers
    /// or when `max_forwards` queries are already being forwarded.
    pub async fn forward(&self, request: &Request) -> Reply {
        let s = &self.shared.settings;
        let Ok(_slot) = self.shared.forwards.clone().try_acquire_owned() else {
            self.shared.counters.forward_busy();
            return self.error(request, ResponseCode::ServFail);
        };
        for r in &s.recursors {
            match ask_recursor(*r, request.as_slice(), s.recursor_timeout).await {
                Ok(msg) => {
                    self.shared.counters.forwarded(false);
                    let mut meta = Metadata::response_from_request(&request.metadata);
                    meta.response_code = msg.metadata.response_code;
                    meta.truncation = msg.metadata.truncation;
                    meta.recursion_available = msg.metadata.recursion_available;
                    meta.authentic_data = msg.metadata.authentic_data;
                    let answer = Answer {
                        rcode: msg.metadata.response_code,
                        extra_ends: vec![msg.additionals.len(); msg.answers.len()],
                        answers: msg.answers,
                        extras: msg.additionals,
                        authority: msg.authorities,
                    };
                    let mut reply = Reply {
                        meta,
                        groups: answer.answers.len(),
                        extras: answer.extras.len(),
                        answer,
                        edns: response_edns(request, s.max_udp_payload),
                    };
                    let before = reply.groups;
                    fit(request, &mut reply, size_limit(request, s.max_udp_payload));
                    if reply.groups < before && request.protocol() == Protocol::Udp {
                        reply.meta.truncation = true;
                    }
                    return reply;
                }
                Err(e) => tracing::debug!(recursor = %r, error = %e, "recursor failed"),
            }
        }
        self.shared.counters.forwarded(true);
        self.error(request, ResponseCode::ServFail)
    }

    /// Encodes `reply` into `out` (cleared first), bounded by the transport's size, and counts it.
    pub fn encode(&self, request: &Request, reply: &Reply, out: &mut Vec<u8>) {
        out.clear();
        let mut enc = BinEncoder::new(out);
        let limit = size_limit(request, self.shared.settings.max_udp_payload);
        enc.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
        let rcode = match build(request, reply).destructive_emit(&mut enc) {
            Ok(_) => reply.meta.response_code,
            Err(e) => {
                // Cannot happen with the records we build; answer SERVFAIL rather than nothing.
                tracing::warn!(error = %e, "cannot encode a DNS response");
                let failed = self.error(request, ResponseCode::ServFail);
                out.clear();
                let mut enc = BinEncoder::new(out);
                let _ = build(request, &failed).destructive_emit(&mut enc);
                ResponseCode::ServFail
            }
        };
        self.shared.counters.answered(rcode);
    }

    /// Encodes into `out` (cleared first) the reply the response-rate limit sends instead of an
    /// answer: no records, TC set, so that a real client retries over TCP. It is no larger than
    /// the query (a header, the question, an OPT), so reflecting it gains an attacker nothing.
    pub fn encode_slip(&self, request: &Request, out: &mut Vec<u8>) {
        let mut reply = self.error(request, ResponseCode::NoError);
        reply.meta.truncation = true;
        out.clear();
        let mut enc = BinEncoder::new(out);
        if let Err(e) = build(request, &reply).destructive_emit(&mut enc) {
            // Cannot happen for a question that was decoded; send nothing rather than a stub.
            tracing::warn!(error = %e, "cannot encode a truncated DNS reply");
            out.clear();
        }
    }

    /// Decodes a packet. A packet that is not a query we can read is counted as malformed; the
    /// `Err` carries a FORMERR response when the header was readable (and was not a response).
    pub fn decode(
        &self,
        raw: &[u8],
        src: SocketAddr,
        protocol: Protocol,
    ) -> Result<Request, Option<[u8; 12]>> {
        // Responses are never answered (no reflection); they are not counted as queries either.
        if raw.len() >= 12 && raw[2] & 0x80 != 0 {
            self.shared.counters.malformed();
            return Err(None);
        }
        match Request::from_bytes(raw.to_vec(), src, protocol) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.shared.counters.malformed();
                Err(formerr(raw))
            }
        }
    }
}

/// A FORMERR header answering a packet whose 12-byte header is readable: same ID and opcode, no
/// records.
pub fn formerr(raw: &[u8]) -> Option<[u8; 12]> {
    let h = raw.get(..12)?;
    let mut out = [0u8; 12];
    out[0] = h[0];
    out[1] = h[1];
    // QR, the request's opcode, RD copied; RCODE 1.
    out[2] = 0x80 | (h[2] & 0x78) | (h[2] & 0x01);
    out[3] = 0x01;
    Some(out)
}

/// The hickory message of `reply`.
fn build<'q>(
    request: &'q Request,
    reply: &'q Reply,
) -> MessageResponse<
    'q,
    'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
    impl Iterator<Item = &'q Record> + Send + 'q,
> {
    let a = &reply.answer;
    // Authority records (the SOA) go only with an answer section left whole.
    let authority: &[Record] = if reply.groups == a.answers.len() {
        &a.authority
    } else {
        &[]
    };
    MessageResponseBuilder::new(&request.queries, reply.edns.as_ref()).build(
        reply.meta,
        a.answers[..reply.groups].iter(),
        authority.iter(),
        iter::empty(),
        a.extras[..reply.extras].iter(),
    )
}

/// Keeps the most answer groups (with their additional records) that fit in `limit` bytes.
fn fit(request: &Request, reply: &mut Reply, limit: usize) {
    let a = &reply.answer;
    let fixed = 12 + request.queries.as_bytes().len() + if reply.edns.is_some() { 11 } else { 0 };
    let bound: usize = fixed
        + a.answers
            .iter()
            .chain(&a.extras)
            .chain(&a.authority)
            .map(record_bound)
            .sum::<usize>();
    if bound <= limit {
        return;
    }
    // A whole answer keeps every additional record (a forwarded referral has some without
    // answers); a cut one keeps those of the groups left.
    let extras_for = |r: &Reply, k: usize| {
        if k == r.answer.answers.len() {
            r.answer.extras.len()
        } else {
            r.answer.extras_of(k).len()
        }
    };
    let mut scratch = Vec::with_capacity(limit.min(TCP_MAX));
    let mut fits = |r: &mut Reply, k: usize| {
        r.groups = k;
        r.extras = extras_for(r, k);
        scratch.clear();
        let mut enc = BinEncoder::new(&mut scratch);
        enc.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
        match build(request, r).destructive_emit(&mut enc) {
            Ok(info) => !info.truncation && scratch.len() <= limit,
            Err(_) => false,
        }
    };
    // Largest k that fits; 0 groups always fits (a header, the question and an OPT).
    let (mut lo, mut hi) = (0, reply.answer.answers.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(reply, mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    reply.groups = lo;
    reply.extras = extras_for(reply, lo);
}

/// Sends `query` to one recursor with a fresh ID and waits for its response.
async fn ask_recursor(
    addr: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Message, std::io::Error> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    let id = fastrand::u16(..).to_be_bytes();
    let mut q = query.to_vec();
    if q.len() < 12 {
        return Err(std::io::Error::other("query shorter than a header"));
    }
    q[..2].copy_from_slice(&id);
    sock.send(&q).await?;
    let mut buf = vec![0u8; TCP_MAX];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        let got = &buf[..n];
        if n >= 12 && got[..2] == id && got[2] & 0x80 != 0 {
            return Message::from_vec(got).map_err(std::io::Error::other);
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = match self.prepare(request) {
            Prepared::Reply(r) => r,
            Prepared::Forward => self.forward(request).await,
        };
        self.shared.counters.answered(reply.meta.response_code);
        match response_handle.send_response(build(request, &reply)).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS response");
                let mut meta = reply.meta;
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_server::proto::op::Header {
                    metadata: meta,
                    counts: Default::default(),
                })
            }
        }
    }
}
