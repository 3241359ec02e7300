//! DNS against a real `meridian agent`: services registered through the HTTP API, queried with
//! hickory's client over UDP and TCP and with `dig`, covering every name form, response code and
//! truncation rule, bad packets, and the counters on `/metrics`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{Message, ResponseCode};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use serde_json::{Value, json};

use crate::harness::{Agent, AgentConfig, Ports, eventually, quick_raft};

/// A one-node datacenter from a config file with a `[dns]` section: an alternative domain, no
/// UDP answer limit (so the 512-byte rule shows), TTLs.
async fn dns_agent(dir: &Path) -> Result<Agent> {
    let mut c = AgentConfig::new("dc1", "n1", Ports::free(), &dir.join("data"));
    c.raft = quick_raft();
    c.set("dns", "alt_domain", "meridian.test")
        .set("dns", "udp_answer_limit", 0)
        .set("dns", "node_ttl", 7);
    let mut ttl = toml::Table::new();
    ttl.insert("web*".into(), 5.into());
    ttl.insert("*".into(), 1.into());
    c.set("dns", "service_ttl", ttl);
    let mut agent = Agent::start("dns", &c, dir, &[])?;
    agent.wait_ready().await?;
    Ok(agent)
}

async fn register(agent: &Agent, body: Value) -> Result<()> {
    let r = agent.put_json("/v1/agent/service/register", &body).await?;
    ensure!(
        r.status().is_success(),
        "register {body}: {}",
        r.text().await?
    );
    Ok(())
}

pub(crate) fn dns_addr(agent: &Agent) -> SocketAddr {
    SocketAddr::new(agent.host, agent.ports.dns)
}

/// One query with hickory's client, over UDP (with EDNS, as the client sends) or TCP.
pub(crate) async fn query(
    addr: SocketAddr,
    name: &str,
    qtype: RecordType,
    tcp: bool,
) -> Result<Message> {
    let name = Name::from_ascii(name)?;
    let response = if tcp {
        let (connect, sender) = TcpClientStream::new(addr, None, None, TokioRuntimeProvider::new());
        let (mut client, bg) = Client::<TokioRuntimeProvider>::new(connect.await?, sender);
        tokio::spawn(bg);
        client.query(name, DNSClass::IN, qtype).await?
    } else {
        let conn = UdpClientStream::builder(addr, TokioRuntimeProvider::default()).build();
        let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
        tokio::spawn(bg);
        client.query(name, DNSClass::IN, qtype).await?
    };
    Ok(response.into_message())
}

/// A raw exchange over UDP: send `packet`, wait up to `wait` for one answer.
async fn raw_udp(addr: SocketAddr, packet: &[u8], wait: Duration) -> Result<Option<Vec<u8>>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(packet, addr).await?;
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(r) => {
            let (n, _) = r?;
            Ok(Some(buf[..n].to_vec()))
        }
        Err(_) => Ok(None),
    }
}

pub(crate) fn srv_lines(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
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
    v.sort();
    v
}

fn addr_lines(records: &[hickory_net::proto::rr::Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(format!("{} {}", r.name, a.0)),
            RData::AAAA(a) => Some(format!("{} {}", r.name, a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn has_soa(m: &Message, domain: &str) -> bool {
    m.authorities.len() == 1
        && matches!(m.authorities[0].data, RData::SOA(_))
        && m.authorities[0].name.to_string() == format!("{domain}.")
}

/// Runs `dig` against the agent and returns its output.
fn dig(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &agent.ports.dns.to_string()])
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .context("running dig (Debian package bind9-dnsutils)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "dig {args:?} failed: {text}");
    Ok(text)
}

fn dig_status(text: &str) -> Option<&str> {
    let rest = text.split("status: ").nth(1)?;
    rest.split(',').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_every_form_over_udp_and_tcp() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dns_agent(dir.path()).await?;
    let addr = dns_addr(&agent);
    register(
        &agent,
        json!({"ID": "web-1", "Name": "web", "Port": 8001, "Tags": ["v1"], "Address": "10.0.0.1",
               "Weights": {"Passing": 7, "Warning": 2}}),
    )
    .await?;
    register(
        &agent,
        json!({"ID": "web-2", "Name": "web", "Port": 8002, "Tags": ["v2"]}),
    )
    .await?;
    // A TTL check starts critical: never answered until it passes.
    register(
        &agent,
        json!({"ID": "web-3", "Name": "web", "Port": 8003, "Address": "10.0.0.3",
               "Check": {"CheckID": "web-3-ttl", "TTL": "60s"}}),
    )
    .await?;
    register(
        &agent,
        json!({"ID": "v6", "Name": "v6", "Port": 443, "Address": "2001:db8::6"}),
    )
    .await?;

    eventually(10, "web in DNS", || async {
        query(addr, "web.service.consul", RecordType::SRV, false)
            .await
            .is_ok_and(|m| m.answers.len() == 2)
    })
    .await?;

    // SRV: priority 1, weight from Weights, own address -> .addr target, else the node's.
    for tcp in [false, true] {
        let m = query(addr, "web.service.consul", RecordType::SRV, tcp).await?;
        ensure!(m.metadata.response_code == ResponseCode::NoError);
        ensure!(m.metadata.authoritative, "AA");
        ensure!(
            srv_lines(&m)
                == [
                    "1 1 8002 n1.node.dc1.consul.",
                    "1 7 8001 0a000001.addr.dc1.consul."
                ],
            "tcp={tcp}: {:?}",
            srv_lines(&m)
        );
        ensure!(
            addr_lines(&m.additionals)
                == [
                    "0a000001.addr.dc1.consul. 10.0.0.1",
                    "n1.node.dc1.consul. 127.0.0.1"
                ],
            "{:?}",
            m.additionals
        );
        ensure!(m.answers.iter().all(|r| r.ttl == 5), "service_ttl web*");
    }

    // Every service form.
    for (name, n) in [
        ("v1.web.service.consul", 1),
        ("web.service.dc1.consul", 2),
        ("v2.web.service.dc1.consul", 1),
        ("_web._tcp.service.consul", 2),
        ("_web._udp.consul", 2),
        ("_web._v1.service.dc1.consul", 1),
        ("WEB.SERVICE.CONSUL", 2),
        ("web.service.meridian.test", 2),
    ] {
        let m = query(addr, name, RecordType::SRV, false).await?;
        ensure!(m.answers.len() == n, "{name}: {:?}", m.answers);
    }
    let m = query(addr, "web.service.meridian.test", RecordType::SRV, false).await?;
    ensure!(
        srv_lines(&m)
            .iter()
            .all(|l| l.ends_with(".dc1.meridian.test.")),
        "alt domain answers in the alt domain: {:?}",
        srv_lines(&m)
    );

    // A / AAAA with the asked name.
    let m = query(addr, "Web.Service.Consul", RecordType::A, false).await?;
    ensure!(
        addr_lines(&m.answers)
            == [
                "Web.Service.Consul. 10.0.0.1",
                "Web.Service.Consul. 127.0.0.1"
            ],
        "{:?}",
        m.answers
    );
    let m = query(addr, "v6.service.consul", RecordType::AAAA, false).await?;
    ensure!(addr_lines(&m.answers) == ["v6.service.consul. 2001:db8::6"]);
    ensure!(m.answers[0].ttl == 1, "service_ttl *");

    // Nodes, addresses, reverse names, the apex.
    let m = query(addr, "n1.node.consul", RecordType::A, false).await?;
    ensure!(addr_lines(&m.answers) == ["n1.node.consul. 127.0.0.1"]);
    ensure!(m.answers[0].ttl == 7, "node_ttl");
    let m = query(addr, "0a000001.addr.dc1.consul", RecordType::A, true).await?;
    ensure!(addr_lines(&m.answers) == ["0a000001.addr.dc1.consul. 10.0.0.1"]);
    let m = query(addr, "1.0.0.127.in-addr.arpa", RecordType::PTR, false).await?;
    ensure!(
        m.answers
            .iter()
            .any(|r| r.data.to_string() == "n1.node.dc1.consul."),
        "{:?}",
        m.answers
    );
    let m = query(addr, "1.0.0.10.in-addr.arpa", RecordType::PTR, false).await?;
    ensure!(
        m.answers
            .iter()
            .any(|r| r.data.to_string() == "web.service.dc1.consul."),
        "{:?}",
        m.answers
    );
    let m = query(addr, "consul", RecordType::SOA, false).await?;
    ensure!(matches!(m.answers[0].data, RData::SOA(_)));
    let m = query(addr, "consul", RecordType::NS, true).await?;
    ensure!(m.answers[0].data.to_string() == "n1.node.dc1.consul.");

    // NXDOMAIN and NODATA carry the SOA.
    for name in [
        "nope.service.consul",
        "web.service.dc9.consul",
        "nope.node.consul",
        "failover.query.consul",
        "bogus.consul",
    ] {
        let m = query(addr, name, RecordType::A, false).await?;
        ensure!(m.metadata.response_code == ResponseCode::NXDomain, "{name}");
        ensure!(has_soa(&m, "consul"), "{name}: {:?}", m.authorities);
    }
    let m = query(addr, "nope.service.meridian.test", RecordType::A, false).await?;
    ensure!(has_soa(&m, "meridian.test"), "{:?}", m.authorities);
    for (name, t) in [
        ("web.service.consul", RecordType::TXT),
        ("web.service.consul", RecordType::AAAA),
        ("n1.node.consul", RecordType::AAAA),
    ] {
        let m = query(addr, name, t, false).await?;
        ensure!(
            m.metadata.response_code == ResponseCode::NoError,
            "{name} {t}"
        );
        ensure!(m.answers.is_empty() && has_soa(&m, "consul"), "{name} {t}");
    }
    // Outside our domains, without recursors: REFUSED.
    let m = query(addr, "example.com", RecordType::A, false).await?;
    ensure!(m.metadata.response_code == ResponseCode::Refused);

    // Health: the critical web-3 appears once its check passes.
    let r = agent
        .http
        .put(agent.url("/v1/agent/check/pass/web-3-ttl"))
        .send()
        .await?;
    ensure!(r.status().is_success(), "pass: {}", r.text().await?);
    eventually(10, "web-3 answered once passing", || async {
        query(addr, "web.service.consul", RecordType::SRV, false)
            .await
            .is_ok_and(|m| m.answers.len() == 3)
    })
    .await?;
    let r = agent
        .http
        .put(agent.url("/v1/agent/check/warn/web-3-ttl"))
        .send()
        .await?;
    ensure!(r.status().is_success());
    eventually(10, "warning still answered", || async {
        query(addr, "web.service.consul", RecordType::SRV, false)
            .await
            .is_ok_and(|m| srv_lines(&m).iter().any(|l| l.contains(" 8003 ")))
    })
    .await?;
    Ok(())
}

/// A query packet for `name`/`qtype` without EDNS.
fn plain_query(id: u16, name: &str, qtype: RecordType) -> Result<Vec<u8>> {
    use hickory_net::proto::op::{MessageType, OpCode, Query};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, qtype));
    Ok(m.to_vec()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_dig_and_bad_packets() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dns_agent(dir.path()).await?;
    let addr = dns_addr(&agent);
    for i in 0..60 {
        register(
            &agent,
            json!({"ID": format!("big-{i}"), "Name": "big", "Port": 9000 + i,
                   "Address": format!("10.9.0.{}", i + 1)}),
        )
        .await?;
    }
    eventually(20, "60 instances in DNS", || async {
        query(addr, "big.service.consul", RecordType::SRV, true)
            .await
            .is_ok_and(|m| m.answers.len() == 60)
    })
    .await?;

    // UDP without EDNS: at most 512 bytes, TC set, additional records in step.
    for qtype in [RecordType::SRV, RecordType::A] {
        let raw = raw_udp(
            addr,
            &plain_query(9, "big.service.consul", qtype)?,
            Duration::from_secs(5),
        )
        .await?
        .context("an answer")?;
        ensure!(raw.len() <= 512, "{qtype}: {} bytes", raw.len());
        let m = Message::from_vec(&raw)?;
        ensure!(m.metadata.truncation, "{qtype}: TC");
        ensure!(!m.answers.is_empty() && m.answers.len() < 60, "{qtype}");
        if qtype == RecordType::SRV {
            ensure!(m.additionals.len() == m.answers.len(), "in step");
        }
    }
    // hickory's UDP client sends EDNS (1232 bytes here): cut there, still TC.
    let m = query(addr, "big.service.consul", RecordType::SRV, false).await?;
    ensure!(m.metadata.truncation && m.answers.len() < 60);
    // TCP: everything.
    let m = query(addr, "big.service.consul", RecordType::SRV, true).await?;
    ensure!(!m.metadata.truncation && m.answers.len() == 60 && m.additionals.len() == 60);

    // dig: the same rules, as users see them.
    let out = dig(&agent, &["+noedns", "+ignore", "big.service.consul", "SRV"])?;
    ensure!(out.contains("flags: qr aa tc"), "TC over plain UDP:\n{out}");
    let out = dig(&agent, &["+noedns", "big.service.consul", "SRV"])?;
    ensure!(out.contains("ANSWER: 60,"), "dig retries over TCP:\n{out}");
    // A client's EDNS size is honoured up to the server's max_udp_payload (1,232 by default),
    // which the OPT record says; the rest comes over TCP.
    let out = dig(&agent, &["+bufsize=4096", "big.service.consul", "A"])?;
    ensure!(
        out.contains("ANSWER: 60,") && out.contains("udp: 1232"),
        "EDNS size honoured up to 1232 bytes:\n{out}"
    );
    let out = dig(&agent, &["+short", "big.service.consul", "SRV"])?;
    ensure!(out.lines().all(|l| l.starts_with("1 1 90")), "{out}");
    let out = dig(&agent, &["+short", "n1.node.dc1.consul"])?;
    ensure!(out.trim() == "127.0.0.1", "{out}");
    let out = dig(&agent, &["+short", "-x", "10.9.0.1"])?;
    ensure!(out.trim() == "big.service.dc1.consul.", "{out}");
    let out = dig(&agent, &["+tcp", "_big._tcp.service.meridian.test", "SRV"])?;
    ensure!(
        dig_status(&out) == Some("NOERROR") && out.contains("ANSWER: 60,"),
        "{out}"
    );
    let out = dig(&agent, &["nope.service.consul"])?;
    ensure!(
        dig_status(&out) == Some("NXDOMAIN") && out.contains("IN\tSOA"),
        "{out}"
    );
    let out = dig(&agent, &["big.service.consul", "TXT"])?;
    ensure!(
        dig_status(&out) == Some("NOERROR") && out.contains("ANSWER: 0,"),
        "{out}"
    );
    let out = dig(&agent, &["example.org"])?;
    ensure!(dig_status(&out) == Some("REFUSED"), "{out}");
    let out = dig(&agent, &["+opcode=status", "consul"])?;
    ensure!(dig_status(&out) == Some("NOTIMP"), "{out}");
    let out = dig(&agent, &["-c", "CH", "version.bind", "TXT"])?;
    ensure!(dig_status(&out) == Some("NOTIMP"), "{out}");

    // Bad packets: FORMERR when the header is readable, silence otherwise; never a crash.
    let wait = Duration::from_millis(500);
    ensure!(
        raw_udp(addr, &[1, 2, 3], wait).await?.is_none(),
        "short packet dropped"
    );
    let mut looped = vec![0xab, 0xce, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut long = vec![0xab, 0xd0, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    for _ in 0..200 {
        long.extend_from_slice(&[1, b'x']);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    let missing = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    for packet in [&looped, &long, &missing] {
        let raw = raw_udp(addr, packet, Duration::from_secs(5))
            .await?
            .context("FORMERR")?;
        let m = Message::from_vec(&raw)?;
        ensure!(m.metadata.response_code == ResponseCode::FormErr);
        ensure!(m.metadata.id == u16::from_be_bytes([packet[0], packet[1]]));
    }
    // Garbage over TCP closes the connection; the server keeps answering.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(&[0, 3, 1, 2, 3]).await?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
        ensure!(n == 0, "closed");
    }
    let m = query(addr, "big.service.consul", RecordType::A, false).await?;
    ensure!(!m.answers.is_empty(), "still serving");

    // The counters on /metrics.
    let text = agent.metrics().await?;
    let value = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .with_context(|| format!("{name} in /metrics:\n{text}"))?;
        Ok(line[name.len() + 1..].parse()?)
    };
    ensure!(value("meridian_dns_malformed_total")? >= 5, "{text}");
    ensure!(value("meridian_dns_truncated_total")? >= 3, "{text}");
    ensure!(
        value("meridian_dns_responses_total{rcode=\"NOERROR\"}")? >= 10,
        "{text}"
    );
    ensure!(
        value("meridian_dns_responses_total{rcode=\"NXDOMAIN\"}")? >= 1,
        "{text}"
    );
    ensure!(
        value("meridian_dns_responses_total{rcode=\"REFUSED\"}")? >= 1,
        "{text}"
    );
    ensure!(
        value("meridian_dns_responses_total{rcode=\"FORMERR\"}")? >= 3,
        "{text}"
    );
    ensure!(
        value("meridian_dns_responses_total{rcode=\"NOTIMP\"}")? >= 2,
        "{text}"
    );
    if !agent.log_text().contains("DNS server started") {
        bail!("no start line in the log");
    }
    Ok(())
}

/// A host's local forwarder sends every client's queries from loopback: the response-rate limit
/// never applies to it, however low the limit, while `response_rate_limit_local` brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spares_a_local_forwarder() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agents = Vec::new();
    for (name, limit_local) in [("spared", false), ("limited", true)] {
        let mut c = AgentConfig::new("dc1", "n1", Ports::free(), &dir.path().join(name));
        c.raft = quick_raft();
        c.set("dns", "response_rate_limit", 1)
            .set("dns", "response_rate_burst", 5)
            .set("dns", "response_rate_slip", 0)
            .set("dns", "response_rate_limit_local", limit_local);
        let mut agent = Agent::start(name, &c, dir.path(), &[])?;
        agent.wait_ready().await?;
        agents.push(agent);
    }
    for (agent, want_all) in agents.iter().zip([true, false]) {
        let addr = dns_addr(agent);
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let n: u16 = 200;
        for id in 0..n {
            sock.send_to(
                &plain_query(id, "consul.service.consul", RecordType::A)?,
                addr,
            )
            .await?;
        }
        let mut answered = 0u16;
        let mut buf = vec![0u8; 4096];
        while let Ok(got) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
        {
            got?;
            answered += 1;
        }
        let dropped = agent
            .metric("meridian_dns_rate_limited_dropped_total")
            .await
            .unwrap_or(0.0);
        if want_all {
            ensure!(answered == n, "{}: {answered} of {n} answered", agent.name);
            ensure!(dropped == 0.0, "{}: {dropped} dropped", agent.name);
        } else {
            ensure!(
                answered < n / 2,
                "{}: {answered} of {n} answered",
                agent.name
            );
            ensure!(dropped > 0.0, "{}: nothing dropped", agent.name);
        }
    }
    Ok(())
}
