//! Answers built from a [`View`], as Consul builds them, with no I/O: which records a question
//! gets, in which section, with which TTL and response code. Size limits are applied later (see
//! [`crate::handler`]); here an answer is only cut to a number of answer groups.
//!
//! An answer is a list of *groups*: one answer record and the additional records it brought
//! (the A/AAAA of an SRV target). Trimming keeps a prefix of the groups, so the additional
//! section always stays in step with the answer section.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use meridian_topology::names::{hex_ip, parse_query_name, parse_reverse, strip_domain};
use meridian_topology::{AddressMode, Health, Instance, NameQuery, ServiceQuery, View, resolve};

use crate::settings::DnsSettings;

/// Most groups an answer ever holds: a 64 KiB message cannot carry more records of 16 bytes.
pub const MAX_GROUPS: usize = 4096;

/// What our domains have to say about one question.
#[derive(Debug, Default)]
pub struct Answer {
    /// NOERROR (with or without records) or NXDOMAIN.
    pub rcode: ResponseCode,
    /// Answer records, one per group.
    pub answers: Vec<Record>,
    /// Additional records of all groups, in group order.
    pub extras: Vec<Record>,
    /// `extras[..extra_ends[i]]` belong to groups `0..=i`.
    pub extra_ends: Vec<usize>,
    /// The authority section (the SOA of NXDOMAIN and NODATA).
    pub authority: Vec<Record>,
}

impl Answer {
    fn push(&mut self, answer: Record, extra: Option<Record>) {
        self.answers.push(answer);
        if let Some(e) = extra {
            self.extras.push(e);
        }
        self.extra_ends.push(self.extras.len());
    }

    /// Number of answer groups.
    pub fn groups(&self) -> usize {
        self.answers.len()
    }

    /// The additional records that belong to the first `groups` groups.
    pub fn extras_of(&self, groups: usize) -> &[Record] {
        let end = groups
            .checked_sub(1)
            .and_then(|i| self.extra_ends.get(i))
            .copied()
            .unwrap_or(0);
        &self.extras[..end]
    }
}

/// Whether a question is ours to answer.
#[derive(Debug)]
pub enum Outcome {
    /// A name in one of our domains (or a reverse name we know): here is the answer.
    Ours(Answer),
    /// Outside our domains: refuse, or ask the recursors.
    NotOurs,
}

/// Answers one question from `view`. `max_groups` bounds the answer groups built (the
/// `a_record_limit`, a UDP answer limit, or what the message size allows); `now` is the SOA serial.
pub fn answer(
    s: &DnsSettings,
    view: &View,
    name: &Name,
    qtype: RecordType,
    max_groups: usize,
    now: u32,
) -> Outcome {
    build(s, view, name, qtype, max_groups.min(MAX_GROUPS), now, true)
}

/// Most groups an answer kept for a view version holds ([`answer_whole`]): a service of more
/// instances is answered from its first ones in the view's order, shuffled among themselves.
pub const MAX_KEPT_GROUPS: usize = 65_536;

/// Every group of the answer to one question, in the view's order and unshuffled, each group
/// with its additional record even when an earlier group brought the same one: what
/// [`crate::cache`] keeps per view version and shuffles, cuts and deduplicates per query.
pub fn answer_whole(
    s: &DnsSettings,
    view: &View,
    name: &Name,
    qtype: RecordType,
    now: u32,
) -> Outcome {
    build(s, view, name, qtype, MAX_KEPT_GROUPS, now, false)
}

/// The answer to one question. `live`: shuffled, and each additional record only once (an
/// answer sent as built); otherwise in the view's order with every group's own additional
/// record (an answer kept, to be shuffled and deduplicated when it is sent).
fn build(
    s: &DnsSettings,
    view: &View,
    name: &Name,
    qtype: RecordType,
    max_groups: usize,
    now: u32,
    live: bool,
) -> Outcome {
    let mut buf = [0u8; 256];
    let text = name_text(name, &mut buf);
    let mut b = Builder {
        s,
        view,
        asked: name,
        domain: &s.domain,
        now,
        live,
        scratch: String::with_capacity(64),
        out: Answer::default(),
    };
    if matches!(qtype, RecordType::PTR | RecordType::ANY)
        && let Some(ip) = parse_reverse(text)
    {
        b.ptr(ip);
        return if b.out.answers.is_empty() {
            Outcome::NotOurs
        } else {
            Outcome::Ours(b.out)
        };
    }
    let alt = s.alt_domain.as_deref().unwrap_or("");
    let domains: [&str; 2] = [&s.domain, alt];
    let n = if alt.is_empty() { 1 } else { 2 };
    let Some((i, rest)) = strip_domain(text, &domains[..n]) else {
        return Outcome::NotOurs;
    };
    b.domain = domains[i];
    match parse_query_name(rest) {
        Err(_) => b.nxdomain(),
        Ok(NameQuery::Apex) => b.apex(qtype),
        Ok(NameQuery::Service { service, tag, dc }) => b.service(
            &ServiceQuery {
                service,
                tag,
                dc,
                only_passing: s.only_passing,
                tags: &[],
                policy: None,
                connect: false,
            },
            None,
            qtype,
            max_groups,
        ),
        // Consul's `.connect` names: the service's sidecars, failing over as the service does.
        Ok(NameQuery::Connect { service, dc }) => b.service(
            &ServiceQuery {
                connect: true,
                only_passing: s.only_passing,
                ..ServiceQuery::new(service, dc)
            },
            None,
            qtype,
            max_groups,
        ),
        Ok(NameQuery::Node { node, dc }) => b.node(node, dc, qtype),
        Ok(NameQuery::Addr { ip, dc }) => b.addr(ip, dc, qtype),
        Ok(NameQuery::Query { name, dc }) => b.prepared(name, dc, qtype, max_groups),
    }
    Outcome::Ours(b.out)
}

/// The name as text (`web.service.consul`), written into `buf`. Bytes that cannot be part of a
/// name we serve (dots inside a label, non-ASCII, control characters) become `?`, which matches
/// nothing, so the text is always valid UTF-8.
fn name_text<'b>(name: &Name, buf: &'b mut [u8; 256]) -> &'b str {
    let mut n = 0;
    for label in name.iter() {
        if n > 0 && n < buf.len() {
            buf[n] = b'.';
            n += 1;
        }
        for &c in label {
            if n == buf.len() {
                break;
            }
            buf[n] = if c.is_ascii_graphic() && c != b'.' {
                c
            } else {
                b'?'
            };
            n += 1;
        }
    }
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

struct Builder<'a> {
    s: &'a DnsSettings,
    view: &'a View,
    asked: &'a Name,
    /// The domain the question was asked in, as configured.
    domain: &'a str,
    now: u32,
    /// Shuffle, and send each additional record once (see [`build`]).
    live: bool,
    scratch: String,
    out: Answer,
}

/// A set of keys seen so far: a linear scan while small, a hash set beyond.
struct Seen<K> {
    small: Vec<K>,
    big: Option<HashSet<K>>,
}

impl<K: Eq + std::hash::Hash + Copy> Seen<K> {
    fn new() -> Self {
        Seen {
            small: Vec::new(),
            big: None,
        }
    }

    /// Whether `k` is new (and records it).
    fn insert(&mut self, k: K) -> bool {
        if let Some(big) = &mut self.big {
            return big.insert(k);
        }
        if self.small.contains(&k) {
            return false;
        }
        self.small.push(k);
        if self.small.len() > 32 {
            self.big = Some(self.small.drain(..).collect());
        }
        true
    }
}

fn weight(inst: &Instance, health: Health) -> u16 {
    let w = match health {
        Health::Warning => inst.weights.warning,
        _ => inst.weights.passing,
    };
    u16::try_from(w).unwrap_or(u16::MAX)
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn family_wanted(qtype: RecordType, ip: IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// `labels... . <domain> .` as a name, written through `scratch`.
fn fqdn(scratch: &mut String, domain: &str, labels: &[&str]) -> Option<Name> {
    scratch.clear();
    for l in labels {
        scratch.push_str(l);
        scratch.push('.');
    }
    scratch.push_str(domain);
    scratch.push('.');
    Name::from_ascii(&*scratch).ok()
}

impl<'a> Builder<'a> {
    /// `labels... . <domain> .` as a name.
    fn name(&mut self, labels: &[&str]) -> Option<Name> {
        fqdn(&mut self.scratch, self.domain, labels)
    }

    fn soa(&mut self) -> Option<Record> {
        let (view, s) = (self.view, self.s);
        let mname = self.name(&[&s.node_name, "node", view.datacenter()])?;
        let rname = self.name(&["hostmaster"])?;
        let apex = self.name(&[])?;
        let soa = &self.s.soa;
        let clamp = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        Some(Record::from_rdata(
            apex,
            soa.min_ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                self.now,
                clamp(soa.refresh),
                clamp(soa.retry),
                clamp(soa.expire),
                soa.min_ttl,
            )),
        ))
    }

    /// NXDOMAIN, with the SOA.
    fn nxdomain(&mut self) {
        self.out = Answer {
            rcode: ResponseCode::NXDomain,
            ..Answer::default()
        };
        let soa = self.soa();
        self.out.authority.extend(soa);
    }

    /// NOERROR without records (NODATA), with the SOA.
    fn nodata(&mut self) {
        self.out = Answer::default();
        let soa = self.soa();
        self.out.authority.extend(soa);
    }

    fn apex(&mut self, qtype: RecordType) {
        let any = qtype == RecordType::ANY;
        if (qtype == RecordType::SOA || any)
            && let Some(soa) = self.soa()
        {
            self.out.push(soa, None);
        }
        if qtype == RecordType::NS || any {
            let (view, s) = (self.view, self.s);
            let node = s.node_name.as_str();
            if let (Some(apex), Some(ns)) = (
                self.name(&[]),
                self.name(&[node, "node", view.datacenter()]),
            ) {
                let glue = view
                    .local()
                    .node(node)
                    .and_then(|n| n.address.parse::<IpAddr>().ok())
                    .map(|ip| Record::from_rdata(ns.clone(), self.s.node_ttl, addr_rdata(ip)));
                self.out
                    .push(Record::from_rdata(apex, 0, RData::NS(NS(ns))), glue);
            }
        }
        if self.out.answers.is_empty() {
            self.nodata();
        }
    }

    /// Whether `dc` (local when `None`) is a datacenter this view answers for.
    fn dc_known(&self, dc: Option<&str>) -> bool {
        self.view.dc_state(dc).is_some()
    }

    /// A prepared query (by name or ID, or a template by the longest prefix of the name):
    /// answered like its service, with its tags, health filter, failover targets and DNS TTL.
    fn prepared(&mut self, name: &str, dc: Option<&str>, qtype: RecordType, max_groups: usize) {
        let view = self.view;
        // Queries live in their own DC and are not federated: only the local DC's are known.
        if dc.is_some_and(|d| !d.eq_ignore_ascii_case(view.datacenter())) {
            return self.nxdomain();
        }
        let Some(pq) = view.local().resolve_query(name) else {
            return self.nxdomain();
        };
        let policy = pq.policy(view.failover().policy.address_mode);
        let q = pq.service_query(&policy);
        self.service(&q, pq.dns_ttl, qtype, max_groups);
    }

    /// Instances of a service; `ttl` overrides the configured service TTL.
    fn service(
        &mut self,
        q: &ServiceQuery<'_>,
        ttl: Option<u32>,
        qtype: RecordType,
        max_groups: usize,
    ) {
        let Ok(mut res) = resolve(self.view, q) else {
            return self.nxdomain();
        };
        if res.address_mode == AddressMode::Gateway {
            // The client reaches the chosen DC through our own gateways, by SNI.
            res = res.through_gateways(self.view);
            if res.instances.is_empty() {
                return self.nxdomain();
            }
        }
        let mut instances = res.instances;
        if self.live {
            fastrand::shuffle(&mut instances);
        }
        let ttl = ttl.unwrap_or_else(|| self.s.service_ttl.get(q.service));
        let state = res.state;
        match qtype {
            RecordType::SRV => {
                let mut seen_answer = Seen::new();
                let mut seen_extra = Seen::new();
                let mut hex = [0u8; 32];
                for (inst, health) in &instances {
                    if self.out.groups() >= max_groups {
                        break;
                    }
                    let own = !inst.address.is_empty();
                    let addr = state.address_of(inst);
                    let ip = addr.parse::<IpAddr>().ok();
                    // Key of the target: the instance's own address, or its node.
                    let key = if own { addr } else { inst.node.as_ref() };
                    if !seen_answer.insert((own, key, inst.port)) {
                        continue;
                    }
                    let target = match (own, ip) {
                        (true, Some(ip)) => self.name(&[hex_ip(ip, &mut hex), "addr", res.dc]),
                        // A hostname as the instance's address is the target itself (no
                        // additional record: we do not resolve other zones).
                        (true, None) => Name::from_ascii(format!("{addr}.")).ok(),
                        (false, _) => self.name(&[&inst.node, "node", res.dc]),
                    };
                    let Some(target) = target else { continue };
                    let extra = ip
                        .filter(|_| !self.live || seen_extra.insert((own, key)))
                        .map(|ip| Record::from_rdata(target.clone(), ttl, addr_rdata(ip)));
                    let srv = SRV::new(1, weight(inst, *health), inst.port, target);
                    self.out.push(
                        Record::from_rdata(self.asked.clone(), ttl, RData::SRV(srv)),
                        extra,
                    );
                }
            }
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let mut seen = Seen::new();
                for (inst, _) in &instances {
                    if self.out.groups() >= max_groups {
                        break;
                    }
                    // Hostname addresses are left out: we answer no CNAMEs.
                    let Ok(ip) = state.address_of(inst).parse::<IpAddr>() else {
                        continue;
                    };
                    if family_wanted(qtype, ip) && seen.insert(ip) {
                        self.out.push(
                            Record::from_rdata(self.asked.clone(), ttl, addr_rdata(ip)),
                            None,
                        );
                    }
                }
            }
            _ => {}
        }
        if self.out.answers.is_empty() {
            self.nodata();
        }
    }

    fn node(&mut self, node: &str, dc: Option<&str>, qtype: RecordType) {
        let found = self.view.dc_state(dc).and_then(|(_, s)| s.node(node));
        let Some(node) = found else {
            return self.nxdomain();
        };
        let ttl = self.s.node_ttl;
        if let Ok(ip) = node.address.parse::<IpAddr>()
            && family_wanted(qtype, ip)
        {
            self.out.push(
                Record::from_rdata(self.asked.clone(), ttl, addr_rdata(ip)),
                None,
            );
        }
        if matches!(qtype, RecordType::TXT | RecordType::ANY) {
            for (k, v) in &node.meta {
                self.scratch.clear();
                let _ = write!(self.scratch, "{k}={v}");
                // A character-string holds at most 255 bytes: longer pairs take several.
                let chunks: Vec<&[u8]> = self.scratch.as_bytes().chunks(255).collect();
                let txt = TXT::from_bytes(chunks);
                self.out.push(
                    Record::from_rdata(self.asked.clone(), ttl, RData::TXT(txt)),
                    None,
                );
            }
        }
        if self.out.answers.is_empty() {
            self.nodata();
        }
    }

    fn addr(&mut self, ip: IpAddr, dc: Option<&str>, qtype: RecordType) {
        if !self.dc_known(dc) {
            return self.nxdomain();
        }
        if family_wanted(qtype, ip) {
            let r = Record::from_rdata(self.asked.clone(), self.s.node_ttl, addr_rdata(ip));
            self.out.push(r, None);
        } else {
            self.nodata();
        }
    }

    fn ptr(&mut self, ip: IpAddr) {
        let ttl = self.s.node_ttl;
        let dc = self.view.datacenter();
        let state = self.view.local();
        for node in state.nodes_at(ip) {
            if let Some(target) = self.name(&[&node.name, "node", dc]) {
                let r = Record::from_rdata(self.asked.clone(), ttl, RData::PTR(PTR(target)));
                self.out.push(r, None);
            }
        }
        let mut seen = Seen::new();
        for inst in state.instances_at(ip) {
            let service = inst.service.to_ascii_lowercase();
            if self.out.groups() >= MAX_GROUPS || !seen.insert(inst.service.as_ref()) {
                continue;
            }
            if let Some(target) = self.name(&[&service, "service", dc]) {
                let r = Record::from_rdata(self.asked.clone(), ttl, RData::PTR(PTR(target)));
                self.out.push(r, None);
            }
        }
    }
}
