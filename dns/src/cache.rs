//! Answers kept as wire bytes, per view version: the UDP fast path.
//!
//! What a name answers changes only when the view does, so each UDP loop keeps, for the view it
//! last saw, every question's answer already encoded: one run of bytes per answer group (the
//! answer record, and its additional record without its owner name), names compressed against
//! the question only, so that groups can be shuffled and cut per query without re-encoding.
//! Per query what is left is the work that must differ per query: read the question straight
//! from the datagram, pick and shuffle the groups that fit, point each additional record at its
//! group's target, and write the header. A question this path cannot answer exactly as
//! [`crate::handler`] would (another opcode, EDNS options beyond version 0, compression in the
//! question, a record type it does not encode, a name outside our domains) goes the general way.
//!
//! The cache belongs to one loop (no lock), is emptied when the view changes, and is bounded
//! in entries and bytes: past either bound it is emptied and filled again.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use meridian_topology::View;

use crate::answer::{Answer, Outcome};

/// Most questions kept per loop.
const MAX_ENTRIES: usize = 65_536;
/// Most bytes of answers kept per loop.
const MAX_BYTES: usize = 64 << 20;
/// A compression pointer reaches only the first 16 KiB of a message: larger responses go the
/// general way.
const POINTER_REACH: usize = 0x3FFF;
/// The OPT record of a response: root owner, type 41, size, no extended flags, no options.
const OPT_LEN: usize = 11;

/// A query read straight from a datagram: one question, class IN, maybe an OPT of version 0.
#[derive(Debug)]
pub(crate) struct Query<'a> {
    raw: &'a [u8],
    /// Where the question ends (after its type and class).
    question_end: usize,
    /// The question's name as on the wire (no compression).
    name: &'a [u8],
    qtype: u16,
    /// The client's UDP payload size, when it sent an OPT.
    edns: Option<u16>,
}

impl Query<'_> {
    /// The question's type.
    pub(crate) fn qtype(&self) -> RecordType {
        RecordType::from(self.qtype)
    }

    /// Whether the query carried EDNS.
    pub(crate) fn has_edns(&self) -> bool {
        self.edns.is_some()
    }

    /// The largest UDP response it may get, given ours (`max_udp`).
    pub(crate) fn udp_limit(&self, max_udp: u16) -> usize {
        usize::from(self.edns.unwrap_or(512).min(max_udp).max(512))
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads `raw` as a plain query, or `None` when it is anything else (which the general path
/// decodes, answers or counts).
pub(crate) fn parse(raw: &[u8]) -> Option<Query<'_>> {
    let header = raw.get(..12)?;
    // QR clear, opcode QUERY; one question, no answers or authority, at most an OPT.
    if header[2] & 0xF8 != 0 || u16_at(header, 4)? != 1 || u16_at(header, 6)? != 0 {
        return None;
    }
    let (ns, ar) = (u16_at(header, 8)?, u16_at(header, 10)?);
    if ns != 0 || ar > 1 {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*raw.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        // A pointer or an extended label type: not in a question we answer here.
        if len > 63 {
            return None;
        }
        at += 1 + len;
        if at - 12 > 255 {
            return None;
        }
    }
    let name = &raw[12..at];
    let qtype = u16_at(raw, at)?;
    if u16_at(raw, at + 2)? != 1 {
        return None;
    }
    let question_end = at + 4;
    let mut edns = None;
    if ar == 1 {
        // Root owner, type OPT, the payload size in the class, version 0, no options.
        let opt = raw.get(question_end..question_end + OPT_LEN)?;
        if opt[0] != 0 || u16_at(opt, 1)? != 41 || opt[6] != 0 || u16_at(opt, 9)? != 0 {
            return None;
        }
        edns = Some(u16_at(opt, 3)?);
        if raw.len() != question_end + OPT_LEN {
            return None;
        }
    } else if raw.len() != question_end {
        return None;
    }
    Some(Query {
        raw,
        question_end,
        name,
        qtype,
        edns,
    })
}

/// One answer group as bytes: the answer record, and its additional record's type, class, TTL
/// and data (its owner is a pointer to the answer's target, written per query).
#[derive(Debug)]
struct Group {
    answer: (u32, u32),
    /// Offset in the answer record of the name the additional record belongs to.
    target: u16,
    /// Empty when the group brought no additional record.
    extra: (u32, u32),
    /// Groups whose additional records are the same record share this (the first's index).
    extra_id: u32,
}

/// A question's answer as bytes.
#[derive(Debug)]
struct Wire {
    rcode: ResponseCode,
    bytes: Vec<u8>,
    groups: Vec<Group>,
    /// The SOA of NXDOMAIN and NODATA, and where in it the serial is (it is the time).
    soa: Option<((u32, u32), u32)>,
}

#[derive(Debug)]
enum Entry {
    /// Answered the general way.
    General,
    Wire(Wire),
}

/// How the general path would set the parts of a response that do not come from the answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Most answer groups, whatever the size (`a_record_limit`, `udp_answer_limit`).
    pub(crate) cap: usize,
    /// Largest response.
    pub(crate) limit: usize,
    /// RA: whether recursors are configured.
    pub(crate) recursion_available: bool,
    /// Our UDP payload size, echoed (within the client's) in the OPT.
    pub(crate) max_udp: u16,
    /// The SOA serial (the time).
    pub(crate) serial: u32,
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// The response code.
    pub(crate) rcode: ResponseCode,
    /// Whether answer groups were left out for size (TC set).
    pub(crate) truncated: bool,
}

/// One UDP loop's answers, for the view it last saw.
#[derive(Debug, Default)]
pub(crate) struct AnswerCache {
    view: Weak<View>,
    entries: HashMap<Box<[u8]>, Entry>,
    bytes: usize,
    /// The key being looked up: the type, then the lowercased name.
    key: Vec<u8>,
    /// Per query: group indices, shuffled as far as they are used.
    order: Vec<u32>,
    /// Per query: which additional records were written (by `extra_id`).
    seen: Vec<u64>,
    /// Per query: the groups kept, and for each that brings its additional record where its
    /// target was written (0 for the others).
    kept: Vec<(u32, usize)>,
}

impl AnswerCache {
    /// An empty cache.
    pub(crate) fn new() -> Self {
        AnswerCache::default()
    }

    /// Answers `q` from `view` into `out` as the general path would, building the answer on
    /// first sight; `None` (and `out` unspecified) when the general path must answer it.
    /// `build` makes the whole answer for a name (see [`crate::answer::answer_whole`]).
    pub(crate) fn answer(
        &mut self,
        view: &Arc<View>,
        q: &Query<'_>,
        shape: Shape,
        build: impl FnOnce(&Name, RecordType) -> Outcome,
        out: &mut Vec<u8>,
    ) -> Option<Sent> {
        if shape.limit > POINTER_REACH {
            return None;
        }
        if !std::ptr::eq(self.view.as_ptr(), Arc::as_ptr(view)) {
            self.entries.clear();
            self.bytes = 0;
            self.view = Arc::downgrade(view);
        }
        self.key.clear();
        self.key.extend_from_slice(&q.qtype.to_be_bytes());
        self.key
            .extend(q.name.iter().map(|c| c.to_ascii_lowercase()));
        if !self.entries.contains_key(self.key.as_slice()) {
            let entry = self.make(q, build);
            if self.entries.len() >= MAX_ENTRIES || self.bytes >= MAX_BYTES {
                self.entries.clear();
                self.bytes = 0;
            }
            if let Entry::Wire(w) = &entry {
                self.bytes += w.bytes.len() + w.groups.len() * size_of::<Group>();
            }
            self.bytes += self.key.len();
            self.entries
                .insert(self.key.clone().into_boxed_slice(), entry);
        }
        let Some(Entry::Wire(wire)) = self.entries.get(self.key.as_slice()) else {
            return None;
        };
        Some(emit(
            wire,
            q,
            shape,
            (&mut self.order, &mut self.seen, &mut self.kept),
            out,
        ))
    }

    fn make(&self, q: &Query<'_>, build: impl FnOnce(&Name, RecordType) -> Outcome) -> Entry {
        // The question's name, lowercased (the key without its type).
        let lower = &self.key[2..];
        let Ok(name) = Name::read(&mut BinDecoder::new(lower)) else {
            return Entry::General;
        };
        match build(&name, q.qtype()) {
            Outcome::Ours(a) => encode(&a, lower).map_or(Entry::General, Entry::Wire),
            Outcome::NotOurs => Entry::General,
        }
    }
}

/// The offsets (from the message's start) of each label of the question's name, and the
/// lowercased labels from there to the root, for compression.
struct Suffixes<'a> {
    question: &'a [u8],
    starts: Vec<usize>,
}

impl<'a> Suffixes<'a> {
    fn new(question: &'a [u8]) -> Self {
        let mut starts = Vec::new();
        let mut at = 0;
        while let Some(&len) = question.get(at) {
            if len == 0 {
                break;
            }
            starts.push(at);
            at += 1 + usize::from(len);
        }
        Suffixes { question, starts }
    }

    /// Writes `name`, its longest suffix found in the question as a pointer there.
    fn write(&self, name: &Name, out: &mut Vec<u8>) -> Option<()> {
        let labels: Vec<&[u8]> = name.iter().collect();
        for k in 0..labels.len() {
            let rest = &labels[k..];
            let found = self.starts.iter().find(|&&s| {
                let mut at = s;
                for l in rest {
                    let len = usize::from(self.question[at]);
                    let Some(got) = self.question.get(at + 1..at + 1 + len) else {
                        return false;
                    };
                    if !got.eq_ignore_ascii_case(l) {
                        return false;
                    }
                    at += 1 + len;
                }
                self.question.get(at) == Some(&0)
            });
            if let Some(&s) = found {
                let ptr = u16::try_from(12 + s).ok()? | 0xC000;
                for l in &labels[..k] {
                    label(l, out)?;
                }
                out.extend_from_slice(&ptr.to_be_bytes());
                return Some(());
            }
        }
        full(name, out)
    }
}

fn label(l: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.push(u8::try_from(l.len()).ok().filter(|&n| n <= 63)?);
    out.extend_from_slice(l);
    Some(())
}

/// Writes `name` whole: no compression (an SRV target, RFC 2782).
fn full(name: &Name, out: &mut Vec<u8>) -> Option<()> {
    for l in name.iter() {
        label(l, out)?;
    }
    out.push(0);
    Some(())
}

/// Whether `name` is the question (`lower`, the question's lowercased wire name).
fn is_question(name: &Name, lower: &[u8]) -> bool {
    let mut at = 0;
    for l in name.iter() {
        let len = usize::from(lower.get(at).copied().unwrap_or(0));
        match lower.get(at + 1..at + 1 + len) {
            Some(got) if len == l.len() && got.eq_ignore_ascii_case(l) => at += 1 + len,
            _ => return false,
        }
    }
    lower.get(at) == Some(&0) && at + 1 == lower.len()
}

/// Type, class IN, TTL, then the data written by `data` with its length in front. Returns the
/// offset of the data in `out`.
fn typed(
    rtype: u16,
    ttl: u32,
    out: &mut Vec<u8>,
    data: impl FnOnce(&mut Vec<u8>) -> Option<()>,
) -> Option<usize> {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    data(out)?;
    let len = u16::try_from(out.len() - len_at - 2).ok()?;
    out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    Some(len_at + 2)
}

/// The data of the types a kept answer holds; `None` for any other.
fn rdata(r: &Record, out: &mut Vec<u8>) -> Option<()> {
    match &r.data {
        RData::A(a) => out.extend_from_slice(&a.0.octets()),
        RData::AAAA(a) => out.extend_from_slice(&a.0.octets()),
        RData::SRV(srv) => {
            out.extend_from_slice(&srv.priority.to_be_bytes());
            out.extend_from_slice(&srv.weight.to_be_bytes());
            out.extend_from_slice(&srv.port.to_be_bytes());
            full(&srv.target, out)?;
        }
        _ => return None,
    }
    Some(())
}

/// `a` as bytes against the question `lower`, or `None` when it holds what this path does not
/// write (then the general path answers the name).
fn encode(a: &Answer, lower: &[u8]) -> Option<Wire> {
    if !matches!(a.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        return None;
    }
    let s = Suffixes::new(lower);
    let mut bytes = Vec::with_capacity(a.answers.len() * 48);
    let mut groups = Vec::with_capacity(a.answers.len());
    // The first group bringing each target's additional record.
    let mut first: HashMap<Vec<u8>, u32> = HashMap::new();
    for (i, r) in a.answers.iter().enumerate() {
        if !is_question(&r.name, lower) {
            return None;
        }
        let start = bytes.len();
        bytes.extend_from_slice(&[0xC0, 0x0C]);
        let data_at = typed(u16::from(r.record_type()), r.ttl, &mut bytes, |o| {
            rdata(r, o)
        })?;
        let answer = (u32::try_from(start).ok()?, u32::try_from(bytes.len()).ok()?);
        let extras = &a.extras[if i == 0 { 0 } else { a.extra_ends[i - 1] }..a.extra_ends[i]];
        let mut group = Group {
            answer,
            target: 0,
            extra: (answer.1, answer.1),
            extra_id: u32::try_from(i).ok()?,
        };
        match (extras, &r.data) {
            ([], _) => {}
            ([e], RData::SRV(srv)) if e.name == srv.target => {
                // The target is after priority, weight and port.
                group.target = u16::try_from(data_at + 6 - start).ok()?;
                let from = bytes.len();
                typed(u16::from(e.record_type()), e.ttl, &mut bytes, |o| {
                    rdata(e, o)
                })?;
                group.extra = (u32::try_from(from).ok()?, u32::try_from(bytes.len()).ok()?);
                // The same target with the same record: one additional record for both. (The
                // target is the last field of the SRV data.)
                let mut key = bytes[data_at + 6..from].to_vec();
                key.extend_from_slice(&bytes[from..]);
                group.extra_id = *first.entry(key).or_insert(group.extra_id);
            }
            _ => return None,
        }
        groups.push(group);
    }
    let soa = match (a.authority.as_slice(), a.answers.is_empty()) {
        ([], _) => None,
        ([r], true) => {
            let RData::SOA(soa) = &r.data else {
                return None;
            };
            let start = bytes.len();
            s.write(&r.name, &mut bytes)?;
            let mut serial_at = 0;
            typed(u16::from(r.record_type()), r.ttl, &mut bytes, |o| {
                s.write(&soa.mname, o)?;
                s.write(&soa.rname, o)?;
                serial_at = o.len();
                o.extend_from_slice(&soa.serial.to_be_bytes());
                for v in [soa.refresh, soa.retry, soa.expire] {
                    o.extend_from_slice(&v.to_be_bytes());
                }
                o.extend_from_slice(&soa.minimum.to_be_bytes());
                Some(())
            })?;
            Some((
                (u32::try_from(start).ok()?, u32::try_from(bytes.len()).ok()?),
                u32::try_from(serial_at - start).ok()?,
            ))
        }
        _ => return None,
    };
    if a.answers.is_empty() && soa.is_none() {
        return None;
    }
    Some(Wire {
        rcode: a.rcode,
        bytes,
        groups,
        soa,
    })
}

/// Writes the response to `q` from `w`: header, the question as asked, the groups that fit in
/// a random order, their additional records (each once), the SOA when there are no answers,
/// and the OPT.
fn emit(
    w: &Wire,
    q: &Query<'_>,
    shape: Shape,
    (order, seen, kept): (&mut Vec<u32>, &mut Vec<u64>, &mut Vec<(u32, usize)>),
    out: &mut Vec<u8>,
) -> Sent {
    out.clear();
    out.extend_from_slice(&q.raw[..12]);
    out.extend_from_slice(&q.raw[12..q.question_end]);
    let fixed = out.len() + if q.edns.is_some() { OPT_LEN } else { 0 };
    let n = w.groups.len();
    let want = shape.cap.min(n);
    order.clear();
    order.extend(0..u32::try_from(n).unwrap_or(u32::MAX));
    seen.clear();
    seen.resize(n.div_ceil(64), 0);
    kept.clear();
    let mut size = fixed;
    for i in 0..want {
        // A partial Fisher–Yates shuffle: only as far as groups are taken.
        let j = fastrand::usize(i..n);
        order.swap(i, j);
        let g = &w.groups[order[i] as usize];
        let id = g.extra_id as usize;
        let extra = g.extra.1 > g.extra.0 && seen[id / 64] & (1 << (id % 64)) == 0;
        let mut add = (g.answer.1 - g.answer.0) as usize;
        if extra {
            add += 2 + (g.extra.1 - g.extra.0) as usize;
        }
        if size + add > shape.limit {
            break;
        }
        size += add;
        if extra {
            seen[id / 64] |= 1 << (id % 64);
        }
        kept.push((order[i], usize::from(extra)));
    }
    let truncated = kept.len() < want;
    // Answers, noting where each carrier's target landed.
    let mut carriers = 0u16;
    for (gi, target) in kept.iter_mut() {
        let g = &w.groups[*gi as usize];
        let start = out.len();
        out.extend_from_slice(&w.bytes[g.answer.0 as usize..g.answer.1 as usize]);
        if *target != 0 {
            *target = start + usize::from(g.target);
            carriers += 1;
        }
    }
    for &(gi, target) in kept.iter().filter(|k| k.1 != 0) {
        let g = &w.groups[gi as usize];
        // Within `POINTER_REACH`: the whole response is no longer than `shape.limit`.
        let ptr = u16::try_from(target).unwrap_or(0) | 0xC000;
        out.extend_from_slice(&ptr.to_be_bytes());
        out.extend_from_slice(&w.bytes[g.extra.0 as usize..g.extra.1 as usize]);
    }
    let mut authority = 0u16;
    if kept.is_empty()
        && let Some(((from, to), serial_at)) = w.soa
    {
        let start = out.len();
        out.extend_from_slice(&w.bytes[from as usize..to as usize]);
        let s = start + serial_at as usize;
        out[s..s + 4].copy_from_slice(&shape.serial.to_be_bytes());
        authority = 1;
    }
    if let Some(size) = q.edns {
        let payload = size.min(shape.max_udp).max(512);
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    let rd_cd = (q.raw[2] & 0x01, q.raw[3] & 0x10);
    out[2] = 0x80 | 0x04 | if truncated { 0x02 } else { 0 } | rd_cd.0;
    out[3] = if shape.recursion_available { 0x80 } else { 0 } | rd_cd.1 | (w.rcode.low() & 0x0F);
    let answers = u16::try_from(kept.len()).unwrap_or(u16::MAX);
    let additional = carriers + u16::from(q.edns.is_some());
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..8].copy_from_slice(&answers.to_be_bytes());
    out[8..10].copy_from_slice(&authority.to_be_bytes());
    out[10..12].copy_from_slice(&additional.to_be_bytes());
    Sent {
        rcode: w.rcode,
        truncated,
    }
}
