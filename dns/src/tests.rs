//! Unit tests of the request path over a hand-built [`View`]: every query form, the answer
//! shapes, health, response codes with their SOA, TTLs, trimming and TC, bad packets (with a
//! proptest over random bytes), forwarding, and the handler inside hickory's own server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use meridian_topology::{Check, DcState, Health, Instance, Node, View, Weights};
use proptest::prelude::*;

use crate::cache::{self, AnswerCache};
use crate::handler::{DnsHandler, Prepared};
use crate::settings::{DnsSettings, TtlMap};
use crate::{DnsCounters, SoaSettings};

fn node(name: &str, address: &str) -> Node {
    Node {
        name: name.into(),
        address: address.into(),
        meta: BTreeMap::new(),
        create_index: 0,
        modify_index: 0,
    }
}

fn inst(service: &str, id: &str, node: &str, address: &str, port: u16) -> Instance {
    Instance {
        id: id.into(),
        service: service.into(),
        node: node.into(),
        address: address.into(),
        port,
        tags: vec![],
        meta: BTreeMap::new(),
        weights: Weights::default(),
        create_index: 0,
        modify_index: 0,
        proxy: None,
    }
}

fn check(inst: &Instance, status: Health) -> Check {
    Check {
        id: format!("service:{}", inst.id),
        name: String::new(),
        node: inst.node.to_string(),
        service_id: inst.id.clone(),
        service_name: inst.service.to_string(),
        status,
        output: String::new(),
        notes: String::new(),
        spec: None,
        create_index: 0,
        modify_index: 0,
    }
}

/// dc1: nodes n1 (10.0.0.1, meta), n2 (10.0.0.2), n6 (IPv6); `web` ×3 (one with its own address,
/// one warning with weights 10/3), `db` critical only, `v6` on n6, `dup` ×2 on one address.
fn view() -> View {
    let mut s = DcState::default();
    let mut n1 = node("n1", "10.0.0.1");
    n1.meta.insert("rack".into(), "r1".into());
    s.upsert_node(n1, 1);
    s.upsert_node(node("n2", "10.0.0.2"), 2);
    s.upsert_node(node("n6", "2001:db8::6"), 3);
    let mut a = inst("web", "web-a", "n1", "", 8080);
    a.tags = vec!["v1".into()];
    let mut b = inst("web", "web-b", "n2", "", 8081);
    b.weights = Weights {
        passing: 10,
        warning: 3,
    };
    b.tags = vec!["v2".into()];
    let c = inst("web", "web-c", "n1", "10.0.0.9", 8082);
    for (i, st) in [
        (a, Health::Passing),
        (b, Health::Warning),
        (c, Health::Passing),
    ] {
        let ck = check(&i, st);
        s.register(i, vec![ck], 4);
    }
    let db = inst("db", "db-1", "n1", "", 5432);
    let ck = check(&db, Health::Critical);
    s.register(db, vec![ck], 5);
    s.register(inst("v6", "v6-1", "n6", "", 443), vec![], 6);
    s.register(inst("dup", "dup-1", "n1", "10.0.0.7", 1), vec![], 7);
    s.register(inst("dup", "dup-2", "n2", "10.0.0.7", 1), vec![], 8);
    View::new("dc1", s)
}

fn big_view(n: usize) -> View {
    let mut s = DcState::default();
    for i in 0..n {
        let name = format!("node-{i}");
        s.upsert_node(
            node(
                &name,
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            ),
            1,
        );
        s.register(inst("big", &format!("big-{i}"), &name, "", 80), vec![], 2);
    }
    View::new("dc1", s)
}

fn settings() -> DnsSettings {
    let mut s = DnsSettings::new("consul", "n1");
    s.alt_domain = Some("meridian.internal".into());
    s
}

fn handler_with(s: DnsSettings, v: View) -> DnsHandler {
    DnsHandler::new(
        s,
        Arc::new(ArcSwap::from_pointee(v)),
        Arc::new(DnsCounters::default()),
    )
}

fn handler() -> DnsHandler {
    handler_with(settings(), view())
}

fn src() -> SocketAddr {
    "127.0.0.1:5353".parse().expect("addr")
}

fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encodes")
}

/// Runs raw bytes through the handler as the UDP loop does (a plain UDP query from a cache of
/// answers first, built afresh); `None` when dropped.
fn exchange(h: &DnsHandler, raw: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
    if protocol == Protocol::Udp
        && let Some(q) = cache::parse(raw)
    {
        let mut out = Vec::new();
        if h.answer_cached(&mut AnswerCache::new(), &q, &mut out) {
            return Some(out);
        }
    }
    general(h, raw, protocol)
}

/// Runs raw bytes through the handler's general path: decoded, answered, encoded.
fn general(h: &DnsHandler, raw: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
    let req = match h.decode(raw, src(), protocol) {
        Ok(r) => r,
        Err(formerr) => return formerr.map(|f| f.to_vec()),
    };
    let reply = match h.prepare(&req) {
        Prepared::Reply(r) => r,
        Prepared::Forward => panic!("no recursors configured"),
    };
    let mut out = Vec::new();
    h.encode(&req, &reply, &mut out);
    Some(out)
}

fn ask_with(
    h: &DnsHandler,
    name: &str,
    qtype: RecordType,
    edns: Option<u16>,
    p: Protocol,
) -> Message {
    let raw = exchange(h, &query_bytes(name, qtype, edns), p).expect("answered");
    Message::from_vec(&raw).expect("valid response")
}

fn ask(name: &str, qtype: RecordType) -> Message {
    ask_with(&handler(), name, qtype, Some(1232), Protocol::Udp)
}

fn srv_targets(m: &Message) -> Vec<String> {
    let mut t: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(format!(
                "{} {} {} {}",
                s.priority, s.weight, s.port, s.target
            )),
            _ => None,
        })
        .collect();
    t.sort();
    t
}

fn addrs(records: &[Record]) -> Vec<String> {
    let mut a: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(format!("{} {}", r.name, a.0)),
            RData::AAAA(a) => Some(format!("{} {}", r.name, a.0)),
            _ => None,
        })
        .collect();
    a.sort();
    a
}

fn assert_soa_authority(m: &Message, domain: &str) {
    assert_eq!(m.authorities.len(), 1, "{m:?}");
    let RData::SOA(soa) = &m.authorities[0].data else {
        panic!("no SOA in {m:?}");
    };
    assert_eq!(m.authorities[0].name.to_string(), format!("{domain}."));
    assert_eq!(soa.mname.to_string(), format!("n1.node.dc1.{domain}."));
    assert_eq!(soa.rname.to_string(), format!("hostmaster.{domain}."));
    assert_eq!(
        (soa.refresh, soa.retry, soa.expire, soa.minimum),
        (3600, 600, 86400, 0)
    );
    assert!(soa.serial > 1_700_000_000, "serial is a timestamp");
}

/// The additional section holds exactly the addresses of the SRV targets in the answer.
fn assert_extras_in_step(m: &Message) {
    let mut targets: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_string()),
            _ => None,
        })
        .collect();
    targets.sort();
    targets.dedup();
    let mut extra: Vec<String> = m.additionals.iter().map(|r| r.name.to_string()).collect();
    extra.sort();
    assert_eq!(targets, extra, "additional records follow the answers");
}

#[test]
fn connect_names_answer_the_sidecars() {
    let mut v = view();
    let mut s = v.local().clone();
    let mut proxy = inst("web-sidecar-proxy", "web-proxy", "n2", "", 21000);
    proxy.proxy = Some(Arc::new(meridian_topology::Proxy {
        destination_service: "web".into(),
        ..Default::default()
    }));
    s.register(proxy, vec![], 9);
    v = View::new("dc1", s);
    let h = handler_with(settings(), v);
    let m = ask_with(
        &h,
        "web.connect.consul.",
        RecordType::SRV,
        Some(1232),
        Protocol::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(srv_targets(&m), ["1 1 21000 n2.node.dc1.consul."]);
    let m = ask_with(
        &h,
        "web.connect.dc1.consul.",
        RecordType::A,
        Some(1232),
        Protocol::Udp,
    );
    assert_eq!(addrs(&m.answers), ["web.connect.dc1.consul. 10.0.0.2"]);
    // A service without a sidecar has no mesh endpoint; `.service` still answers its instances.
    let m = ask_with(
        &h,
        "db.connect.consul.",
        RecordType::SRV,
        Some(1232),
        Protocol::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask_with(
        &h,
        "web.service.consul.",
        RecordType::SRV,
        Some(1232),
        Protocol::Udp,
    );
    assert_eq!(srv_targets(&m).len(), 3);
}

#[test]
fn srv_answers_as_consul_builds_them() {
    let m = ask("web.service.consul.", RecordType::SRV);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.truncation);
    assert_eq!(
        srv_targets(&m),
        [
            "1 1 8080 n1.node.dc1.consul.",
            "1 1 8082 0a000009.addr.dc1.consul.",
            "1 3 8081 n2.node.dc1.consul.",
        ]
    );
    assert!(
        m.answers
            .iter()
            .all(|r| r.name.to_string() == "web.service.consul.")
    );
    assert_eq!(
        addrs(&m.additionals),
        [
            "0a000009.addr.dc1.consul. 10.0.0.9",
            "n1.node.dc1.consul. 10.0.0.1",
            "n2.node.dc1.consul. 10.0.0.2",
        ]
    );
    assert_extras_in_step(&m);
    // The OPT record echoes the client's UDP size.
    assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(1232));
}

#[test]
fn every_service_form_resolves() {
    for (name, n) in [
        ("web.service.consul", 3),
        ("WEB.Service.CONSUL", 3),
        ("v1.web.service.consul", 1),
        ("web.service.dc1.consul", 3),
        ("v2.web.service.dc1.consul", 1),
        ("_web._tcp.service.consul", 3),
        ("_web._udp.consul", 3),
        ("_web._v1.service.dc1.consul", 1),
        ("_web._tcp.dc1.consul", 3),
        ("web.service.meridian.internal", 3),
    ] {
        let m = ask(name, RecordType::SRV);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(m.answers.len(), n, "{name}");
        assert_extras_in_step(&m);
    }
    // Answers use the domain that was asked.
    let m = ask("web.service.meridian.internal", RecordType::SRV);
    assert!(
        srv_targets(&m)
            .iter()
            .all(|t| t.ends_with(".dc1.meridian.internal."))
    );
    assert!(
        m.additionals
            .iter()
            .all(|r| r.name.to_string().ends_with(".dc1.meridian.internal."))
    );
}

#[test]
fn health_decides_who_is_answered() {
    // Critical never; warning unless only_passing.
    let m = ask("db.service.consul", RecordType::SRV);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_soa_authority(&m, "consul");
    let mut s = settings();
    s.only_passing = true;
    let h = handler_with(s, view());
    let m = ask_with(
        &h,
        "web.service.consul",
        RecordType::SRV,
        None,
        Protocol::Udp,
    );
    assert_eq!(
        srv_targets(&m),
        [
            "1 1 8080 n1.node.dc1.consul.",
            "1 1 8082 0a000009.addr.dc1.consul."
        ]
    );
}

#[test]
fn address_answers_use_the_asked_name_and_are_deduplicated() {
    let m = ask("Web.Service.Consul", RecordType::A);
    assert_eq!(
        addrs(&m.answers),
        [
            "Web.Service.Consul. 10.0.0.1",
            "Web.Service.Consul. 10.0.0.2",
            "Web.Service.Consul. 10.0.0.9",
        ]
    );
    let m = ask("dup.service.consul", RecordType::A);
    assert_eq!(addrs(&m.answers), ["dup.service.consul. 10.0.0.7"]);
    let m = ask("dup.service.consul", RecordType::SRV);
    assert_eq!(m.answers.len(), 1, "same address and port: one SRV");
    let m = ask("v6.service.consul", RecordType::AAAA);
    assert_eq!(addrs(&m.answers), ["v6.service.consul. 2001:db8::6"]);
    // A service without records of the asked type: NODATA with the SOA.
    for (name, t) in [
        ("v6.service.consul", RecordType::A),
        ("web.service.consul", RecordType::AAAA),
        ("web.service.consul", RecordType::TXT),
    ] {
        let m = ask(name, t);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {t}"
        );
        assert!(m.answers.is_empty(), "{name} {t}");
        assert_soa_authority(&m, "consul");
    }
}

#[test]
fn shuffled_on_every_query() {
    let h = handler_with(settings(), big_view(50));
    let first = |m: &Message| match &m.answers[0].data {
        RData::A(a) => a.0,
        other => panic!("{other:?}"),
    };
    let firsts: std::collections::HashSet<_> = (0..40)
        .map(|_| {
            first(&ask_with(
                &h,
                "big.service.consul",
                RecordType::A,
                Some(4096),
                Protocol::Udp,
            ))
        })
        .collect();
    assert!(firsts.len() > 5, "order barely changes: {firsts:?}");
}

#[test]
fn nodes_addrs_and_queries() {
    let m = ask("n1.node.consul", RecordType::A);
    assert_eq!(addrs(&m.answers), ["n1.node.consul. 10.0.0.1"]);
    let m = ask("N1.node.dc1.consul", RecordType::TXT);
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("{m:?}");
    };
    assert_eq!(&*txt.txt_data[0], b"rack=r1");
    let m = ask("n1.node.consul", RecordType::ANY);
    assert_eq!(m.answers.len(), 2, "A and TXT");
    let m = ask("n1.node.consul", RecordType::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_soa_authority(&m, "consul");
    let m = ask("n6.node.consul", RecordType::AAAA);
    assert_eq!(addrs(&m.answers), ["n6.node.consul. 2001:db8::6"]);

    let m = ask("0a000009.addr.dc1.consul", RecordType::A);
    assert_eq!(addrs(&m.answers), ["0a000009.addr.dc1.consul. 10.0.0.9"]);
    let hex6 = "20010db8000000000000000000000006";
    let m = ask(&format!("{hex6}.addr.consul"), RecordType::AAAA);
    assert_eq!(m.answers.len(), 1);
    let m = ask("0a000009.addr.consul", RecordType::AAAA);
    assert!(m.answers.is_empty());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    for name in [
        "nope.node.consul",
        "n1.node.dc9.consul",
        "nope.service.consul",
        "web.service.dc9.consul",
        "v9.web.service.consul",
        "failover.query.consul",
        "_web._tcp.query.consul",
        "0a000009.addr.dc9.consul",
        "zz.addr.consul",
        "what.consul",
        "a.b.c.web.service.consul",
    ] {
        let m = ask(name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty());
        assert_soa_authority(&m, "consul");
    }
    let m = ask("nope.service.meridian.internal", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_soa_authority(&m, "meridian.internal");
}

#[test]
fn apex_soa_and_ns() {
    let mut s = settings();
    s.soa = SoaSettings {
        refresh: 10,
        retry: 20,
        expire: 30,
        min_ttl: 40,
    };
    let h = handler_with(s, view());
    let m = ask_with(&h, "consul.", RecordType::SOA, None, Protocol::Udp);
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("{m:?}");
    };
    assert_eq!(
        (soa.refresh, soa.retry, soa.expire, soa.minimum),
        (10, 20, 30, 40)
    );
    assert_eq!(m.answers[0].ttl, 40);
    let m = ask("consul", RecordType::NS);
    let RData::NS(ns) = &m.answers[0].data else {
        panic!("{m:?}");
    };
    assert_eq!(ns.0.to_string(), "n1.node.dc1.consul.");
    assert_eq!(addrs(&m.additionals), ["n1.node.dc1.consul. 10.0.0.1"]);
    let m = ask("consul", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_soa_authority(&m, "consul");
}

#[test]
fn reverse_lookups() {
    let m = ask("1.0.0.10.in-addr.arpa", RecordType::PTR);
    let ptrs: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ptrs, ["n1.node.dc1.consul."]);
    let m = ask("9.0.0.10.in-addr.arpa", RecordType::PTR);
    let ptrs: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ptrs, ["web.service.dc1.consul."]);
    let m = ask(
        "6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        RecordType::PTR,
    );
    assert_eq!(m.answers.len(), 1);
    let m = ask("4.3.2.1.in-addr.arpa", RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn response_codes_for_what_we_do_not_serve() {
    let h = handler();
    let m = ask("example.com", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // Unknown opcode: NOTIMP.
    let mut raw = query_bytes("web.service.consul", RecordType::A, None);
    raw[2] = (raw[2] & 0x87) | (2 << 3);
    let m = Message::from_vec(&exchange(&h, &raw, Protocol::Udp).expect("answered")).expect("msg");
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    // Class CH: NOTIMP.
    let mut q = Query::query(
        Name::from_ascii("version.bind").expect("name"),
        RecordType::TXT,
    );
    q.set_query_class(DNSClass::CH);
    let mut msg = Message::new(1, MessageType::Query, OpCode::Query);
    msg.add_query(q);
    let raw = msg.to_vec().expect("encodes");
    let m = Message::from_vec(&exchange(&h, &raw, Protocol::Udp).expect("answered")).expect("msg");
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    // Two questions or none: FORMERR.
    let mut msg = Message::new(2, MessageType::Query, OpCode::Query);
    for n in ["a.service.consul", "b.service.consul"] {
        msg.add_query(Query::query(
            Name::from_ascii(n).expect("name"),
            RecordType::A,
        ));
    }
    let raw = msg.to_vec().expect("encodes");
    let m = Message::from_vec(&exchange(&h, &raw, Protocol::Udp).expect("answered")).expect("msg");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    let raw = Message::new(3, MessageType::Query, OpCode::Query)
        .to_vec()
        .expect("encodes");
    let m = Message::from_vec(&exchange(&h, &raw, Protocol::Udp).expect("answered")).expect("msg");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Zone transfers are refused.
    let m = ask("consul", RecordType::AXFR);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(h.counters().responses_with(ResponseCode::NotImp) >= 2);
}

#[test]
fn ttls_from_settings() {
    let mut s = settings();
    s.node_ttl = 30;
    s.service_ttl = TtlMap::new([("*", 5), ("we*", 7), ("web", 9)]);
    let h = handler_with(s, view());
    let ttls = |name: &str, t| {
        let m = ask_with(&h, name, t, None, Protocol::Udp);
        m.answers
            .iter()
            .chain(&m.additionals)
            .map(|r| r.ttl)
            .collect::<Vec<_>>()
    };
    assert!(
        ttls("web.service.consul", RecordType::SRV)
            .iter()
            .all(|t| *t == 9)
    );
    assert!(
        ttls("v6.service.consul", RecordType::AAAA)
            .iter()
            .all(|t| *t == 5)
    );
    assert_eq!(ttls("n1.node.consul", RecordType::A), [30]);
    assert_eq!(ttls("0a000009.addr.consul", RecordType::A), [30]);
}

#[test]
fn udp_without_edns_is_cut_to_512_bytes_with_tc() {
    // Consul's default answer limit: 3 answers, not a truncation.
    let h = handler_with(settings(), big_view(40));
    let m = ask_with(
        &h,
        "big.service.consul",
        RecordType::SRV,
        None,
        Protocol::Udp,
    );
    assert_eq!(m.answers.len(), 3);
    assert!(!m.metadata.truncation);
    assert_extras_in_step(&m);

    // Without the answer limit, the size limit cuts whole groups and sets TC.
    let mut s = settings();
    s.udp_answer_limit = 0;
    let h = handler_with(s, big_view(40));
    for t in [RecordType::SRV, RecordType::A] {
        let raw = exchange(
            &h,
            &query_bytes("big.service.consul", t, None),
            Protocol::Udp,
        )
        .expect("answered");
        assert!(raw.len() <= 512, "{} bytes", raw.len());
        let m = Message::from_vec(&raw).expect("valid");
        assert!(m.metadata.truncation, "{t}");
        assert!(
            m.answers.len() > 3 && m.answers.len() < 40,
            "{t}: {}",
            m.answers.len()
        );
        assert_extras_in_step(&m);
    }
    assert!(h.counters().truncated_total() >= 2);

    // A client's EDNS asks for 4,096 bytes, but UDP answers stop at max_udp_payload (1,232 by
    // default): cut, with TC, and the OPT says what this server sends.
    let m = ask_with(
        &h,
        "big.service.consul",
        RecordType::SRV,
        Some(4096),
        Protocol::Udp,
    );
    assert!(m.answers.len() < 40 && m.metadata.truncation);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    assert_extras_in_step(&m);
    // With room for everything: no TC.
    let mut s = settings();
    s.max_udp_payload = 4096;
    let h = handler_with(s, big_view(40));
    let m = ask_with(
        &h,
        "big.service.consul",
        RecordType::SRV,
        Some(4096),
        Protocol::Udp,
    );
    assert_eq!(m.answers.len(), 40);
    assert!(!m.metadata.truncation);
    assert_extras_in_step(&m);
}

#[test]
fn thousands_of_instances_never_overflow() {
    let mut s = settings();
    s.udp_answer_limit = 0;
    let h = handler_with(s, big_view(5000));
    for (edns, proto, limit) in [
        (None, Protocol::Udp, 512),
        (Some(1232), Protocol::Udp, 1232),
        // Whatever the client claims, UDP stops at max_udp_payload.
        (Some(65535), Protocol::Udp, 1232),
        (None, Protocol::Tcp, 65535),
    ] {
        for t in [RecordType::SRV, RecordType::A] {
            let raw =
                exchange(&h, &query_bytes("big.service.consul", t, edns), proto).expect("answered");
            assert!(
                raw.len() <= limit,
                "{t} {edns:?} {proto}: {} bytes",
                raw.len()
            );
            let m = Message::from_vec(&raw).expect("valid");
            assert!(!m.answers.is_empty());
            assert!(m.answers.len() < 5000);
            assert_eq!(
                m.metadata.truncation,
                proto == Protocol::Udp,
                "{t} {edns:?} {proto}"
            );
            assert_extras_in_step(&m);
        }
    }
    // a_record_limit bounds every transport.
    let mut s = settings();
    s.a_record_limit = 5;
    let h = handler_with(s, big_view(50));
    let m = ask_with(
        &h,
        "big.service.consul",
        RecordType::SRV,
        None,
        Protocol::Tcp,
    );
    assert_eq!(m.answers.len(), 5);
    assert_extras_in_step(&m);
}

#[test]
fn bad_packets_are_formerr_or_dropped() {
    let h = handler();
    // Shorter than a header: dropped.
    assert_eq!(exchange(&h, &[0x12, 0x34, 0x01], Protocol::Udp), None);
    // A response sent to us: dropped (no reflection).
    let mut resp = query_bytes("web.service.consul", RecordType::A, None);
    resp[2] |= 0x80;
    assert_eq!(exchange(&h, &resp, Protocol::Udp), None);
    let formerr = |raw: &[u8]| {
        let out = exchange(&h, raw, Protocol::Udp).expect("answered");
        let m = Message::from_vec(&out).expect("valid");
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, u16::from_be_bytes([raw[0], raw[1]]));
    };
    // Header claims a question that is not there.
    formerr(&[0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
    // A compression pointer to itself.
    let mut looped = vec![0xab, 0xce, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    formerr(&looped);
    // Two pointers to each other.
    let mut pair = vec![0xab, 0xcf, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    pair.extend_from_slice(&[1, b'a', 0xc0, 16, 0xc0, 12, 0, 1, 0, 1]);
    formerr(&pair);
    // 200 one-byte labels: longer than 255 bytes.
    let mut long = vec![0xab, 0xd0, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    for _ in 0..200 {
        long.extend_from_slice(&[1, b'x']);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(&long);
    assert_eq!(h.counters().malformed_total(), 6);
}

/// A burst of queries from one socket arrives in batches (`recvmmsg`/`sendmmsg` on Linux): every
/// query gets exactly one answer, carrying its own ID, question and response code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_udp_queries_gets_one_matching_answer_each() {
    let (_views, rx) = tokio::sync::watch::channel(Arc::new(view()));
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = crate::DnsServer::start(settings(), rx, bind, 1)
        .await
        .expect("server starts");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("client socket");
    let cases = [
        ("web.service.consul", ResponseCode::NoError),
        ("n1.node.consul", ResponseCode::NoError),
        ("nope.service.consul", ResponseCode::NXDomain),
        ("example.com", ResponseCode::Refused),
    ];
    const N: u16 = 200;
    for id in 0..N {
        let (name, _) = cases[usize::from(id) % cases.len()];
        let mut raw = query_bytes(name, RecordType::A, Some(1232));
        raw[..2].copy_from_slice(&id.to_be_bytes());
        sock.send_to(&raw, server.local_addr()).await.expect("send");
    }
    let mut seen = vec![false; usize::from(N)];
    let mut buf = vec![0u8; 4096];
    for _ in 0..N {
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("recv");
        let m = Message::from_vec(&buf[..n]).expect("valid response");
        let id = m.metadata.id;
        let (name, rcode) = cases[usize::from(id) % cases.len()];
        assert!(!seen[usize::from(id)], "two answers for query {id}");
        seen[usize::from(id)] = true;
        assert_eq!(
            m.queries[0].name().to_ascii().trim_end_matches('.'),
            name,
            "query {id}"
        );
        assert_eq!(m.metadata.response_code, rcode, "query {id} ({name})");
    }
    server.shutdown().await;
}

#[test]
fn edns_version_above_zero_is_badvers() {
    let mut m = Message::new(9, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("web.service.consul").expect("name"),
        RecordType::SRV,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let raw = exchange(&handler(), &m.to_vec().expect("encodes"), Protocol::Udp).expect("answered");
    let resp = Message::from_vec(&raw).expect("valid response");
    // BADVERS and BADSIG share the value 16; hickory decodes it as BADSIG.
    assert_eq!(
        u16::from(resp.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(resp.answers.is_empty());
    assert_eq!(resp.edns.as_ref().map(Edns::version), Some(0));
}

/// The fuzzing corpus in `dns/fuzz/corpus/request` (malformed headers, compression loops, huge
/// label counts, odd classes and opcodes, EDNS variants, every query form) is replayed here on
/// every test run, over UDP and TCP: each packet is answered with a parseable message or a bare
/// FORMERR header, or dropped; none panics.
#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let path = entry.expect("corpus entry").path();
        let raw = std::fs::read(&path).expect("corpus file");
        let h = handler();
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            if let Some(out) = exchange(&h, &raw, protocol) {
                assert!(
                    out.len() == 12 || Message::from_vec(&out).is_ok(),
                    "{}: unparseable response",
                    path.display()
                );
                if protocol == Protocol::Udp {
                    assert!(
                        out.len() <= 1232,
                        "{}: {} bytes over UDP",
                        path.display(),
                        out.len()
                    );
                }
            }
        }
        n += 1;
    }
    assert!(n >= 30, "the corpus has only {n} packets");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(meridian_topology::fuzz_cases(2000)))]

    #[test]
    fn random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        let h = handler();
        if let Some(out) = exchange(&h, &raw, Protocol::Udp) {
            prop_assert!(out.len() <= 512 || raw.len() > 12);
            prop_assert!(out.len() >= 12);
        }
    }

    #[test]
    fn mutated_queries_never_panic(
        name in prop::sample::select(vec![
            "web.service.consul", "_web._tcp.consul", "n1.node.consul", "0a000009.addr.consul",
            "1.0.0.10.in-addr.arpa", "consul", "example.com",
        ]),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let h = handler();
        let mut raw = query_bytes(name, RecordType::SRV, Some(1232));
        for (i, b) in flips {
            let i = i % raw.len();
            raw[i] ^= b;
        }
        raw.truncate(cut % (raw.len() + 1) + 1);
        if let Some(out) = exchange(&h, &raw, Protocol::Udp) {
            prop_assert!(Message::from_vec(&out).is_ok() || out.len() == 12);
        }
    }
}

/// A fake upstream that answers every query with one A record (192.0.2.1).
async fn fake_recursor() -> SocketAddr {
    hostile_recursor(Arc::new(std::sync::Mutex::new(Spoil {
        answers: 1,
        ..Spoil::default()
    })))
    .await
}

#[tokio::test]
async fn outside_names_go_to_the_recursors() {
    let mut s = settings();
    // A dead recursor first (nothing listens there), then a live one.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    s.recursors = vec![dead_addr, fake_recursor().await];
    s.recursor_timeout = Duration::from_millis(300);
    let h = handler_with(s, view());
    let raw = query_bytes("example.com", RecordType::A, None);
    let req = h.decode(&raw, src(), Protocol::Udp).expect("decodes");
    assert!(matches!(h.prepare(&req), Prepared::Forward));
    let reply = h.forward(&req).await;
    let mut out = Vec::new();
    h.encode(&req, &reply, &mut out);
    let m = Message::from_vec(&out).expect("valid");
    assert_eq!(m.metadata.id, 7);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.recursion_available);
    assert_eq!(addrs(&m.answers), ["example.com. 192.0.2.1"]);
    // Our own names are never forwarded.
    let req = h
        .decode(
            &query_bytes("web.service.consul", RecordType::A, None),
            src(),
            Protocol::Udp,
        )
        .expect("decodes");
    assert!(matches!(h.prepare(&req), Prepared::Reply(_)));

    let mut s = settings();
    s.recursors = vec![dead_addr];
    s.recursor_timeout = Duration::from_millis(200);
    let h = handler_with(s, view());
    let req = h.decode(&raw, src(), Protocol::Udp).expect("decodes");
    let reply = h.forward(&req).await;
    h.encode(&req, &reply, &mut out);
    let m = Message::from_vec(&out).expect("valid");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(h.counters().forward_failed_total(), 1);
}

/// Not an open resolver: a client outside loopback, the host's networks and `recursor_allow`
/// is refused names outside our domains; one inside it is forwarded.
#[tokio::test]
async fn only_allowed_clients_may_recurse() {
    let mut s = settings();
    s.recursors = vec![fake_recursor().await];
    s.recursor_allow = vec!["198.51.100.0/24".parse().expect("prefix")];
    let h = handler_with(s, view());
    let raw = query_bytes("example.com", RecordType::A, None);
    for (from, forwarded) in [
        ("127.0.0.1:5353", true),
        ("198.51.100.7:5353", true),
        // Outside the host's networks (this machine's eth0 is in 192.0.2.0/24).
        ("203.0.113.66:5353", false),
    ] {
        let from: SocketAddr = from.parse().expect("addr");
        let req = h.decode(&raw, from, Protocol::Udp).expect("decodes");
        match h.prepare(&req) {
            Prepared::Forward => assert!(forwarded, "{from} was forwarded"),
            Prepared::Reply(r) => {
                assert!(!forwarded, "{from} was not forwarded");
                let mut out = Vec::new();
                h.encode(&req, &r, &mut out);
                let m = Message::from_vec(&out).expect("valid");
                assert_eq!(m.metadata.response_code, ResponseCode::Refused);
            }
        }
    }
    assert_eq!(h.counters().recursion_refused_total(), 1);
}

/// At most `max_forwards` queries are forwarded at once: the next gets SERVFAIL at once,
/// counted, instead of another socket and buffer.
#[tokio::test]
async fn forwards_beyond_the_cap_get_servfail_at_once() {
    // A recursor that never answers: every forward holds its slot until the timeout.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut s = settings();
    s.recursors = vec![silent.local_addr().expect("addr")];
    s.recursor_timeout = Duration::from_secs(5);
    s.max_forwards = 2;
    let h = handler_with(s, view());
    let raw = query_bytes("example.com", RecordType::A, None);
    let req = Arc::new(h.decode(&raw, src(), Protocol::Udp).expect("decodes"));
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (h, req) = (h.clone(), Arc::clone(&req));
            tokio::spawn(async move { h.forward(&req).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let reply = h.forward(&req).await;
    assert!(started.elapsed() < Duration::from_secs(1), "not at once");
    let mut out = Vec::new();
    h.encode(&req, &reply, &mut out);
    let m = Message::from_vec(&out).expect("valid");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(h.counters().forward_busy_total(), 1);
    for t in held {
        t.abort();
    }
}

#[tokio::test]
async fn the_handler_serves_inside_hickory_server() {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    let mut server = hickory_server::Server::new(handler());
    server.register_socket(sock);
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    client
        .send_to(
            &query_bytes("web.service.consul", RecordType::SRV, None),
            addr,
        )
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("answer in time")
        .expect("recv");
    let m = Message::from_vec(&buf[..n]).expect("valid");
    assert_eq!(m.answers.len(), 3);
    server.shutdown_gracefully().await.expect("shutdown");
}

#[test]
fn addresses_are_ip_literals_only() {
    // An instance whose address is a hostname: SRV targets it, A leaves it out.
    let mut s = DcState::default();
    s.upsert_node(node("n1", "10.0.0.1"), 1);
    s.register(
        inst("ext", "ext-1", "n1", "db.example.org", 5432),
        vec![],
        2,
    );
    let h = handler_with(settings(), View::new("dc1", s));
    let m = ask_with(
        &h,
        "ext.service.consul",
        RecordType::SRV,
        None,
        Protocol::Udp,
    );
    assert_eq!(srv_targets(&m), ["1 1 5432 db.example.org."]);
    assert!(m.additionals.is_empty());
    let m = ask_with(&h, "ext.service.consul", RecordType::A, None, Protocol::Udp);
    assert!(m.answers.is_empty());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let _: IpAddr = "10.0.0.1".parse().expect("ip");
}

/// A prepared query for `service` with `tags`, `only_passing`, failover to `failover` and a TTL.
fn prepared(
    id: &str,
    name: &str,
    service: &str,
    tags: &[&str],
    only_passing: bool,
    failover: &[&str],
    ttl: Option<u32>,
) -> meridian_topology::PreparedQuery {
    use meridian_topology::prepared::{QueryFailover, QueryService};
    meridian_topology::PreparedQuery {
        id: id.into(),
        name: name.into(),
        service: QueryService {
            service: service.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            only_passing,
            failover: QueryFailover {
                nearest_n: 0,
                datacenters: failover.iter().map(|d| Arc::from(*d)).collect(),
            },
        },
        dns_ttl: ttl,
        template: None,
        create_index: 0,
        modify_index: 0,
    }
}

#[test]
fn prepared_queries_answer_like_their_service() {
    const ID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
    let mut local = view().local().clone();
    for (i, q) in [
        prepared(ID, "web-v1", "web", &["v1"], false, &[], Some(42)),
        prepared(
            "11111111-0000-0000-0000-000000000001",
            "web-ok",
            "web",
            &["!v1"],
            true,
            &[],
            None,
        ),
        prepared(
            "22222222-0000-0000-0000-000000000002",
            "db-fo",
            "db",
            &[],
            false,
            &["dc2"],
            None,
        ),
        prepared(
            "33333333-0000-0000-0000-000000000003",
            "db-local",
            "db",
            &[],
            false,
            &[],
            None,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        local.set_query(q, true, 10 + i as u64).expect("stored");
    }
    // dc2 holds a healthy `db`; dc1's is critical.
    let mut dc2 = DcState::default();
    dc2.upsert_node(node("m1", "10.2.0.1"), 1);
    dc2.register(inst("db", "db-9", "m1", "", 6432), vec![], 2);
    let remote = meridian_topology::RemoteDc {
        name: "dc2".into(),
        state: dc2,
        ..Default::default()
    };
    let v = View::new("dc1", local).with_remotes(
        [(Arc::<str>::from("dc2"), Arc::new(remote))]
            .into_iter()
            .collect(),
    );
    let mut s = settings();
    s.service_ttl = TtlMap::new([("*", 5)]);
    let h = handler_with(s, v);
    let ask = |name: &str, t| ask_with(&h, name, t, Some(1232), Protocol::Udp);

    // Tags: only web-a carries v1. The query's TTL wins over the service TTL.
    for name in [
        "web-v1.query.consul",
        "WEB-V1.query.dc1.consul",
        &format!("{ID}.query.consul"),
    ] {
        let m = ask(name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(m.answers.len(), 1, "{name}: {m:?}");
        assert_eq!(m.answers[0].ttl, 42);
    }
    let m = ask("_web-v1._tcp.query.consul", RecordType::SRV);
    assert_eq!(srv_targets(&m), ["1 1 8080 n1.node.dc1.consul."]);
    assert_extras_in_step(&m);
    assert!(m.answers.iter().chain(&m.additionals).all(|r| r.ttl == 42));

    // `!v1` and only-passing: web-b (warning) and web-a (v1) are left out.
    let m = ask("web-ok.query.consul", RecordType::SRV);
    assert_eq!(srv_targets(&m), ["1 1 8082 0a000009.addr.dc1.consul."]);
    assert!(m.answers.iter().all(|r| r.ttl == 5), "the service TTL");

    // Failover: dc1's db is critical, so the query answers from dc2.
    let m = ask("db-fo.query.consul", RecordType::SRV);
    assert_eq!(srv_targets(&m), ["1 1 6432 m1.node.dc2.consul."]);
    assert_eq!(addrs(&m.additionals), ["m1.node.dc2.consul. 10.2.0.1"]);
    // Without failover targets there is nothing to answer with.
    for name in [
        "db-local.query.consul",
        "nope.query.consul",
        "web-v1.query.dc2.consul",
        "_nope._tcp.query.consul",
    ] {
        let m = ask(name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_soa_authority(&m, "consul");
    }
}

/// dc1 with `db` critical and two local gateways (one critical); dc2 with a passing `db`.
fn failover_view(mode: meridian_topology::AddressMode, dc2: meridian_topology::DcStatus) -> View {
    use meridian_topology::{DcLiveness, Failover, FailoverPolicy, GATEWAY_SERVICE, RemoteDc};
    let mut v = view();
    let mut local = v.local().clone();
    let gw = inst(GATEWAY_SERVICE, "gw-1", "n1", "10.0.0.1", 8443);
    local.register(gw, vec![], 9);
    let dead = inst(GATEWAY_SERVICE, "gw-2", "n2", "10.0.0.2", 8443);
    let ck = check(&dead, Health::Critical);
    local.register(dead, vec![ck], 10);
    let mut remote = DcState::default();
    remote.upsert_node(node("m1", "10.2.0.1"), 1);
    remote.register(inst("db", "db-2", "m1", "", 6432), vec![], 2);
    v = View::new("dc1", local).with_remotes(
        std::iter::once((
            Arc::<str>::from("dc2"),
            Arc::new(RemoteDc {
                name: "dc2".into(),
                state: remote,
                ..RemoteDc::default()
            }),
        ))
        .collect(),
    );
    let failover = Failover {
        liveness: std::iter::once((
            Arc::<str>::from("dc2"),
            DcLiveness {
                status: dc2,
                ..DcLiveness::default()
            },
        ))
        .collect(),
        policy: Arc::new(FailoverPolicy {
            address_mode: mode,
            ..FailoverPolicy::default()
        }),
        ..Failover::default()
    };
    v.with_failover(Arc::new(failover))
}

#[test]
fn plain_names_fail_over_directly_or_through_the_local_gateways() {
    use meridian_topology::{AddressMode, DcStatus};
    let ask_in = |v: View, name: &str, t| {
        ask_with(
            &handler_with(settings(), v),
            name,
            t,
            Some(1232),
            Protocol::Udp,
        )
    };

    // Direct: the remote instance, named in its own DC.
    let v = failover_view(AddressMode::Direct, DcStatus::Up);
    let m = ask_in(v.clone(), "db.service.consul", RecordType::SRV);
    assert_eq!(srv_targets(&m), ["1 1 6432 m1.node.dc2.consul."]);
    assert_eq!(addrs(&m.additionals), ["m1.node.dc2.consul. 10.2.0.1"]);
    // A name with the DC is that DC only, as before.
    let m = ask_in(v, "db.service.dc1.consul", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // Gateway: the live local gateway stands in; the client's SNI carries the service.
    let v = failover_view(AddressMode::Gateway, DcStatus::Up);
    let m = ask_in(v.clone(), "db.service.consul", RecordType::A);
    assert_eq!(addrs(&m.answers), ["db.service.consul. 10.0.0.1"]);
    let m = ask_in(v, "_db._tcp.service.consul", RecordType::SRV);
    assert_eq!(srv_targets(&m), ["1 1 8443 0a000001.addr.dc1.consul."]);

    // dc2 down or drained: nothing to answer with, rather than a dead DC.
    for status in [DcStatus::Down, DcStatus::Drained] {
        let v = failover_view(AddressMode::Direct, status);
        let m = ask_in(v.clone(), "db.service.consul", RecordType::SRV);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{status:?}"
        );
        let m = ask_in(v, "db.service.dc2.consul", RecordType::SRV);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{status:?}"
        );
    }
}

/// Over real sockets: a client that outruns the response-rate limit gets its burst, then every
/// second response as an empty TC reply and none for the rest; a client in another /24 keeps its
/// own burst; TCP from the limited address is answered in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_and_slips_udp_per_prefix_and_spares_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut s = settings();
    // 1/s after the burst, so that a slow machine adds at most a response or two.
    // Loopback is exempt unless local sources are limited too.
    s.rate_limit = crate::RateLimitSettings {
        rate: 1,
        burst: 20,
        slip: 2,
        limit_local: true,
        exempt: Vec::new(),
    };
    let (_views, rx) = tokio::sync::watch::channel(Arc::new(view()));
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = crate::DnsServer::start(s, rx, bind, 1)
        .await
        .expect("server starts");
    let to = server.local_addr();
    let counters = server.counters();

    /// Sends `n` queries from `sock` and sorts what comes back: (full answers, TC replies).
    async fn flood(sock: &tokio::net::UdpSocket, to: SocketAddr, n: u16) -> (usize, usize) {
        for id in 0..n {
            let mut raw = query_bytes("web.service.consul", RecordType::A, None);
            raw[..2].copy_from_slice(&id.to_be_bytes());
            sock.send_to(&raw, to).await.expect("send");
        }
        let (mut full, mut slipped) = (0, 0);
        let mut buf = vec![0u8; 4096];
        // Until the server has been quiet for a while: dropped queries get nothing.
        while let Ok(got) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
        {
            let (len, _) = got.expect("recv");
            let m = Message::from_vec(&buf[..len]).expect("valid response");
            assert!(m.metadata.id < n, "an answer to a query we sent");
            assert_eq!(m.queries.len(), 1, "the question is echoed");
            if m.metadata.truncation {
                assert!(
                    m.answers.is_empty() && m.additionals.is_empty(),
                    "slip is empty"
                );
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                slipped += 1;
            } else {
                assert_eq!(m.answers.len(), 3, "a full answer");
                full += 1;
            }
        }
        (full, slipped)
    }

    #[allow(clippy::disallowed_methods)] // The test measures real time.
    let started = std::time::Instant::now();
    let a = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("client a");
    let (full, slipped) = flood(&a, to, 200).await;
    let extra = usize::try_from(started.elapsed().as_secs()).expect("seconds") + 1;
    assert!(
        (20..=20 + extra).contains(&full),
        "the burst and about 1/s: {full} full answers"
    );
    let limited = 200 - full;
    assert_eq!(
        slipped,
        limited / 2,
        "every second limited response slipped"
    );
    assert_eq!(
        counters.rate_limited_slipped_total(),
        u64::try_from(slipped).expect("n")
    );
    assert_eq!(
        counters.rate_limited_dropped_total(),
        u64::try_from(limited - limited / 2).expect("n")
    );

    // 127.0.1.1 is in another /24 (all of 127/8 is loopback): its own, untouched burst.
    let b = tokio::net::UdpSocket::bind("127.0.1.1:0")
        .await
        .expect("client b");
    assert_eq!(
        flood(&b, to, 20).await,
        (20, 0),
        "another prefix is not limited"
    );

    // TCP from the limited address: more queries than the burst, all answered in full.
    let mut tcp = tokio::net::TcpStream::connect(to).await.expect("tcp");
    for id in 0..50u16 {
        let mut raw = query_bytes("web.service.consul", RecordType::A, None);
        raw[..2].copy_from_slice(&id.to_be_bytes());
        // Length and message in one write: two would wait on Nagle and a delayed ACK.
        let mut framed = u16::try_from(raw.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&raw);
        tcp.write_all(&framed).await.expect("write");
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.expect("length");
        let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut resp).await.expect("response");
        let m = Message::from_vec(&resp).expect("valid response");
        assert_eq!(m.metadata.id, id);
        assert!(
            !m.metadata.truncation && m.answers.len() == 3,
            "TCP is never limited"
        );
    }
    server.shutdown().await;
}

/// How the hostile recursor spoils its next answer.
#[derive(Clone, Debug, Default)]
struct Spoil {
    /// A records in the answer (past 1,232 bytes from about 80).
    answers: usize,
    /// Answer with another query ID.
    wrong_id: bool,
    /// Bytes XORed at these offsets (modulo the length).
    flips: Vec<(usize, u8)>,
    /// Keep this many bytes (modulo the length + 1); `None`: all.
    cut: Option<usize>,
}

/// A recursor on loopback that answers each query as `spoil` says at that moment, with A
/// records 192.0.2.1, 192.0.2.2, ….
async fn hostile_recursor(spoil: Arc<std::sync::Mutex<Spoil>>) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let plan = spoil.lock().expect("not poisoned").clone();
            let id = if plan.wrong_id {
                q.metadata.id.wrapping_add(1)
            } else {
                q.metadata.id
            };
            let mut r = Message::new(id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            if let Some(first) = q.queries.first() {
                for i in 0..plan.answers {
                    let ip = std::net::Ipv4Addr::from(0xC000_0201u32 + i as u32);
                    r.add_answer(Record::from_rdata(
                        first.name().clone(),
                        60,
                        RData::A(ip.into()),
                    ));
                }
            }
            let mut out = r.to_vec().expect("encodes");
            for &(i, b) in &plan.flips {
                let i = i % out.len();
                out[i] ^= b;
            }
            if let Some(cut) = plan.cut {
                out.truncate(cut % (out.len() + 1));
            }
            let _ = sock.send_to(&out, from).await;
        }
    });
    addr
}

/// Whatever a recursor sends back (oversize, cut, corrupted, another query's ID), the client
/// gets one well-formed reply with its own ID, within its UDP payload size: the
/// real forwarding path (sockets, timeout, re-encoding) under a bounded proptest.
#[test]
fn hostile_recursor_answers_never_reach_the_client_unchecked() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spoil = Arc::new(std::sync::Mutex::new(Spoil::default()));
    let mut s = settings();
    s.recursors = vec![rt.block_on(hostile_recursor(spoil.clone()))];
    s.recursor_timeout = Duration::from_millis(40);
    let h = handler_with(s, view());
    let strategy = (
        0usize..160,
        any::<bool>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        proptest::option::of(any::<usize>()),
        prop_oneof![Just(None), Just(Some(512u16)), Just(Some(4096u16))],
        prop::sample::select(vec![RecordType::A, RecordType::TXT, RecordType::ANY]),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(
        meridian_topology::fuzz_cases(200),
    ));
    let result = runner.run(&strategy, |(answers, wrong_id, flips, cut, edns, qtype)| {
        *spoil.lock().expect("not poisoned") = Spoil {
            answers,
            wrong_id,
            flips,
            cut,
        };
        let raw = query_bytes("example.com", qtype, edns);
        let req = h.decode(&raw, src(), Protocol::Udp).expect("decodes");
        prop_assert!(matches!(h.prepare(&req), Prepared::Forward));
        let reply = rt.block_on(h.forward(&req));
        let mut out = Vec::new();
        h.encode(&req, &reply, &mut out);
        let limit = match edns {
            None => 512,
            Some(size) => usize::from(size).clamp(512, 1232),
        };
        prop_assert!(out.len() <= limit, "{} bytes over {limit}", out.len());
        let m = Message::from_vec(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(m.metadata.id, 7);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// One client holding its share of DNS-over-TCP connections (all four threads' worth would
/// be 1,024) cannot stop another: the next connection from its address is closed at once and
/// counted, another address is answered, and a closed connection gives its place back.
#[tokio::test]
async fn one_client_cannot_hold_every_tcp_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut s = settings();
    s.max_tcp_per_client = 4;
    let (_views, rx) = tokio::sync::watch::channel(Arc::new(view()));
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = crate::DnsServer::start(s, rx, bind, 2)
        .await
        .expect("server starts");
    let to = server.local_addr();
    let counters = server.counters();

    async fn connect_from(src: &str, to: SocketAddr) -> tokio::net::TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(format!("{src}:0").parse().expect("addr"))
            .expect("bind");
        sock.connect(to).await.expect("connect")
    }
    /// One query over `conn`: the answer's ID, or `None` when the server closed it.
    async fn ask_tcp(conn: &mut tokio::net::TcpStream) -> Option<u16> {
        let raw = query_bytes("web.service.consul", RecordType::A, None);
        let len = u16::try_from(raw.len()).expect("short");
        conn.write_all(&len.to_be_bytes()).await.ok()?;
        conn.write_all(&raw).await.ok()?;
        let mut len = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut len))
            .await
            .expect("an answer or a close within 5 s")
            .ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut buf).await.ok()?;
        Some(Message::from_vec(&buf).expect("valid").metadata.id)
    }

    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from("127.0.0.2", to).await;
        assert_eq!(ask_tcp(&mut c).await, Some(7), "within the share");
        held.push(c);
    }
    let mut over = connect_from("127.0.0.2", to).await;
    assert_eq!(ask_tcp(&mut over).await, None, "the fifth is closed");
    assert_eq!(counters.tcp_client_limit_total(), 1);
    let mut other = connect_from("127.0.0.3", to).await;
    assert_eq!(
        ask_tcp(&mut other).await,
        Some(7),
        "another client is served"
    );
    // A closed connection gives its place back (the server sees the close, then frees it).
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut c = connect_from("127.0.0.2", to).await;
        if ask_tcp(&mut c).await.is_some() {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the freed place is given again");
}

/// The records of a section as sorted text (order is shuffled per query), lowercased: a name
/// compressed against the question takes the question's case, as in Knot's answers.
fn section(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data).to_lowercase())
        .collect();
    v.sort();
    v
}

#[test]
fn kept_answers_match_the_general_path() {
    let mut s = settings();
    s.service_ttl = TtlMap::new([("*", 5), ("web", 30)]);
    s.node_ttl = 7;
    let h = handler_with(s, view());
    let names = [
        "web.service.consul",
        "WEB.Service.CONSUL",
        "v1.web.service.consul",
        "_web._tcp.service.consul",
        "_web._udp.consul",
        "web.service.dc1.consul",
        "web.service.meridian.internal",
        "db.service.consul",
        "v6.service.consul",
        "dup.service.consul",
        "nope.service.consul",
        "web.service.dc9.consul",
        "n1.node.consul",
        "n6.node.dc1.consul",
        "0a000001.addr.dc1.consul",
        "consul",
        "1.0.0.10.in-addr.arpa",
        "example.org",
        "web.connect.consul",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::ANY,
        RecordType::TXT,
        RecordType::PTR,
        RecordType::SOA,
        RecordType::NS,
        RecordType::MX,
    ];
    let mut kept = 0;
    for name in names {
        for t in types {
            for edns in [None, Some(1232), Some(4096)] {
                let raw = query_bytes(name, t, edns);
                let slow = general(&h, &raw, Protocol::Udp).expect("answered");
                let slow = Message::from_vec(&slow).expect("valid");
                let q = cache::parse(&raw).expect("a plain query");
                let mut out = Vec::new();
                if !h.answer_cached(&mut AnswerCache::new(), &q, &mut out) {
                    continue;
                }
                kept += 1;
                let what = format!("{name} {t} {edns:?}");
                assert!(out.len() <= q.udp_limit(1232), "{what}");
                let fast = Message::from_vec(&out).expect("valid");
                // The header as the general path sets it, the question as asked.
                assert_eq!(fast.metadata, slow.metadata, "{what}");
                assert_eq!(fast.queries, slow.queries, "{what}");
                assert_eq!(section(&fast.answers), section(&slow.answers), "{what}");
                assert_eq!(
                    section(&fast.additionals),
                    section(&slow.additionals),
                    "{what}"
                );
                assert_eq!(
                    section(&fast.authorities),
                    section(&slow.authorities),
                    "{what}"
                );
                assert_eq!(
                    fast.edns.as_ref().map(|e| e.max_payload()),
                    slow.edns.as_ref().map(|e| e.max_payload()),
                    "{what}"
                );
                assert_extras_in_step(&fast);
            }
        }
    }
    // Services, nodes, addresses, NXDOMAIN and NODATA take the kept path; the rest does not.
    assert!(kept > 150, "{kept} questions answered from kept answers");
}

#[test]
fn kept_answers_follow_the_view_and_the_cut() {
    let views = Arc::new(ArcSwap::from_pointee(big_view(40)));
    let mut s = settings();
    s.udp_answer_limit = 0;
    let h = DnsHandler::new(s, views.clone(), Arc::new(DnsCounters::default()));
    let mut c = AnswerCache::new();
    let ask = |c: &mut AnswerCache, name: &str, edns| {
        let raw = query_bytes(name, RecordType::SRV, edns);
        let q = cache::parse(&raw).expect("plain");
        let mut out = Vec::new();
        assert!(h.answer_cached(c, &q, &mut out), "{name}");
        assert!(out.len() <= q.udp_limit(1232));
        Message::from_vec(&out).expect("valid")
    };
    // Without EDNS: 512 bytes, whole groups, TC; the additional records in step.
    let m = ask(&mut c, "big.service.consul", None);
    assert!(m.metadata.truncation);
    assert!(m.answers.len() > 3 && m.answers.len() < 40);
    assert_extras_in_step(&m);
    // With EDNS (1,232 bytes): more fit, still cut.
    let m = ask(&mut c, "big.service.consul", Some(4096));
    assert!(
        m.answers.len() > 12 && m.answers.len() < 40,
        "{}",
        m.answers.len()
    );
    assert_extras_in_step(&m);
    assert!(h.counters().truncated_total() >= 2);
    // Shuffled per query from the same kept answer.
    let firsts: std::collections::HashSet<String> = (0..20)
        .map(|_| section(&ask(&mut c, "big.service.consul", Some(4096)).answers[..1])[0].clone())
        .collect();
    assert!(firsts.len() > 1);
    // A new view: the same cache answers from it, not from what it kept.
    views.store(Arc::new(big_view(2)));
    let m = ask(&mut c, "big.service.consul", None);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.additionals.len(), 2);
}

#[test]
fn only_plain_queries_take_the_kept_path() {
    let plain = query_bytes("n1.node.consul", RecordType::A, Some(1232));
    assert!(cache::parse(&plain).is_some());
    // (One record: answers compare byte for byte.) A response, another opcode, two questions, EDNS version 1, an option, trailing bytes, a
    // pointer in the question, class CH: all go the general way.
    let mut response = plain.clone();
    response[2] |= 0x80;
    let mut notify = plain.clone();
    notify[2] |= 4 << 3;
    let mut two = Message::new(1, MessageType::Query, OpCode::Query);
    for n in ["a.service.consul.", "b.service.consul."] {
        two.add_query(Query::query(
            Name::from_ascii(n).expect("name"),
            RecordType::A,
        ));
    }
    let two = two.to_vec().expect("encodes");
    let mut v1 = plain.clone();
    let opt = v1.len() - 11;
    v1[opt + 6] = 1;
    let mut option = plain.clone();
    option[opt + 10] = 4;
    option.extend_from_slice(&[0, 10, 0, 0]);
    let mut trailing = plain.clone();
    trailing.push(0);
    let mut pointer = query_bytes("n1.node.consul", RecordType::A, None);
    pointer.truncate(12);
    pointer.extend_from_slice(&[2, b'n', b'1', 0xC0, 12, 0, 1, 0, 1]);
    let mut chaos = query_bytes("n1.node.consul", RecordType::A, None);
    let class = chaos.len() - 1;
    chaos[class] = 3;
    for (what, raw) in [
        ("response", response),
        ("notify", notify),
        ("two questions", two),
        ("EDNS version 1", v1),
        ("an option", option),
        ("trailing", trailing),
        ("pointer", pointer),
        ("class CH", chaos),
    ] {
        assert!(cache::parse(&raw).is_none(), "{what}");
        // And the whole path still answers (or drops) it as before.
        let h = handler();
        assert_eq!(
            exchange(&h, &raw, Protocol::Udp),
            general(&h, &raw, Protocol::Udp),
            "{what}"
        );
    }
}
