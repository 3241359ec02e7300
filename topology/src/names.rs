//! The name grammar shared by DNS and SNI: what a valid DNS label, instance ID, tag and metadata
//! entry is, and how a query name (`web.service.dc1.consul`, `_web._tcp.consul`,
//! `n1.node.consul`, `7f000001.addr.consul`, ...) breaks down into what it asks for.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A name that must be a DNS label is not one.
    #[error(
        "{what} {name:?} is not a valid DNS label (1-63 letters, digits or '-', not starting or ending with '-')"
    )]
    NotALabel {
        /// What the name is (`service name`, `node name`, ...).
        what: &'static str,
        /// The rejected name.
        name: String,
    },
    /// A free-form identifier that is empty, too long, or has forbidden characters.
    #[error("{what} {name:?} is invalid: {reason}")]
    Invalid {
        /// What the identifier is.
        what: &'static str,
        /// The rejected identifier.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

/// Longest instance ID, check ID or tag accepted.
pub const MAX_ID_LEN: usize = 256;
/// Most metadata pairs per instance or node (Consul's limit).
pub const MAX_META_PAIRS: usize = 64;
/// Longest metadata key (Consul's limit).
pub const MAX_META_KEY_LEN: usize = 128;
/// Longest metadata value (Consul's limit).
pub const MAX_META_VALUE_LEN: usize = 512;

/// Whether `s` is a DNS label (RFC 1123 host label): 1-63 of `[A-Za-z0-9-]`, no leading or
/// trailing hyphen.
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `host:port`, with an IPv6 host in brackets (`[::1]:8500`).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether `p` is a service name pattern: a DNS label, `prefix*` (the prefix may end in `-`), or
/// `*`.
pub fn is_service_pattern(p: &str) -> bool {
    match p.strip_suffix('*') {
        Some(prefix) => {
            prefix.len() <= 63
                && prefix
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        }
        None => is_label(p),
    }
}

/// Whether `service` matches `pattern` (see [`is_service_pattern`]), ignoring case.
pub fn pattern_matches(pattern: &str, service: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            service.len() >= prefix.len()
                && service.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
        None => pattern.eq_ignore_ascii_case(service),
    }
}

/// Checks that `name` is a DNS label; `what` names it in the error.
pub fn validate_label(what: &'static str, name: &str) -> Result<(), NameError> {
    if is_label(name) {
        Ok(())
    } else {
        Err(NameError::NotALabel {
            what,
            name: name.to_owned(),
        })
    }
}

/// Checks a free-form identifier (instance ID, check ID, tag): non-empty, bounded, printable, and
/// free of `/` so that it can stand in a URL path.
pub fn validate_id(what: &'static str, name: &str) -> Result<(), NameError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_ID_LEN {
        "it is longer than 256 bytes"
    } else if name.chars().any(|c| c.is_control()) {
        "it contains a control character"
    } else if name.contains('/') {
        "it contains '/'"
    } else {
        return Ok(());
    };
    Err(NameError::Invalid {
        what,
        name: name.to_owned(),
        reason,
    })
}

/// Checks metadata as Consul does: at most 64 pairs, keys of `[A-Za-z0-9_-]` up to 128 bytes and
/// not starting with the reserved `consul-`, values up to 512 bytes.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), NameError> {
    let invalid = |name: &str, reason| NameError::Invalid {
        what: "metadata key",
        name: name.to_owned(),
        reason,
    };
    if meta.len() > MAX_META_PAIRS {
        return Err(invalid("", "more than 64 metadata pairs"));
    }
    for (k, v) in meta {
        if k.is_empty() {
            return Err(invalid(k, "it is empty"));
        }
        if k.len() > MAX_META_KEY_LEN {
            return Err(invalid(k, "it is longer than 128 bytes"));
        }
        if !k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(invalid(k, "only letters, digits, '_' and '-' are allowed"));
        }
        if k.starts_with("consul-") {
            return Err(invalid(k, "the 'consul-' prefix is reserved"));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return Err(invalid(k, "its value is longer than 512 bytes"));
        }
    }
    Ok(())
}

/// What a name inside one of our domains asks for. Labels borrow from the parsed name; matching
/// against the catalog is case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameQuery<'a> {
    /// The domain itself (`consul.`): SOA and NS live here.
    Apex,
    /// Instances of a service, optionally with a tag, in a DC or by policy.
    Service {
        /// Service name.
        service: &'a str,
        /// Tag filter.
        tag: Option<&'a str>,
        /// Explicit datacenter; `None` means "resolve by policy".
        dc: Option<&'a str>,
    },
    /// A node's own records (A/AAAA, TXT from its metadata).
    Node {
        /// Node name.
        node: &'a str,
        /// Explicit datacenter.
        dc: Option<&'a str>,
    },
    /// An address encoded in hex (`7f000001.addr`), as SRV targets of instances with their own
    /// address use.
    Addr {
        /// The decoded address.
        ip: IpAddr,
        /// Explicit datacenter.
        dc: Option<&'a str>,
    },
    /// A service's mesh endpoints (its `connect-proxy` sidecars), `<service>.connect[.<dc>]`,
    /// in a DC or by policy.
    Connect {
        /// Service name.
        service: &'a str,
        /// Explicit datacenter; `None` means "resolve by policy".
        dc: Option<&'a str>,
    },
    /// A named (prepared) query.
    Query {
        /// Query name.
        name: &'a str,
        /// Explicit datacenter.
        dc: Option<&'a str>,
    },
}

/// Why a name in our domain does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryNameError {
    /// The name is outside every configured domain.
    #[error("the name is outside our domains")]
    NotOurs,
    /// Inside our domain, but no form matches (answered NXDOMAIN).
    #[error("no such name")]
    Unknown,
}

/// Splits `name` (dots between labels, an optional trailing dot) at the first domain of
/// `domains` it ends with, case-insensitively. Returns the index of that domain and the labels
/// before it, rightmost last.
pub fn strip_domain<'a>(name: &'a str, domains: &[&str]) -> Option<(usize, &'a str)> {
    let name = name.strip_suffix('.').unwrap_or(name);
    for (i, d) in domains.iter().enumerate() {
        let d = d.trim_end_matches('.');
        if name.len() == d.len() && name.eq_ignore_ascii_case(d) {
            return Some((i, ""));
        }
        if name.len() > d.len() {
            // Compare bytes first: the cut is a character boundary only once the (ASCII) domain
            // matched, and a name with other characters must not panic here.
            let cut = name.len() - d.len();
            if name.as_bytes()[cut..].eq_ignore_ascii_case(d.as_bytes())
                && name.as_bytes()[cut - 1] == b'.'
            {
                return Some((i, &name[..cut - 1]));
            }
        }
    }
    None
}

/// Most labels a query name may have before the domain; anything longer is nothing we serve.
const MAX_QUERY_LABELS: usize = 8;

/// Parses the labels before the domain (as returned by [`strip_domain`]) into a [`NameQuery`].
pub fn parse_query_name(rest: &str) -> Result<NameQuery<'_>, QueryNameError> {
    if rest.is_empty() {
        return Ok(NameQuery::Apex);
    }
    let mut labels: [&str; MAX_QUERY_LABELS] = [""; MAX_QUERY_LABELS];
    let mut n = 0;
    for label in rest.split('.') {
        if n == MAX_QUERY_LABELS || label.is_empty() {
            return Err(QueryNameError::Unknown);
        }
        labels[n] = label;
        n += 1;
    }
    let l = &labels[..n];
    let is = |s: &str, kw: &str| s.eq_ignore_ascii_case(kw);

    // RFC 2782: _<service>._<tag|tcp|udp>[.service][.<dc>]
    if l[0].starts_with('_') && n >= 2 && l[1].starts_with('_') {
        let service = &l[0][1..];
        let proto = &l[1][1..];
        let tag = if is(proto, "tcp") || is(proto, "udp") {
            None
        } else {
            Some(proto)
        };
        let (kind, dc) = match &l[2..] {
            [] => ("service", None),
            [k] if is(k, "service") || is(k, "query") => (*k, None),
            [dc] => ("service", Some(*dc)),
            [k, dc] if is(k, "service") || is(k, "query") => (*k, Some(*dc)),
            _ => return Err(QueryNameError::Unknown),
        };
        if service.is_empty() || proto.is_empty() {
            return Err(QueryNameError::Unknown);
        }
        return Ok(if is(kind, "query") {
            NameQuery::Query { name: service, dc }
        } else {
            NameQuery::Service { service, tag, dc }
        });
    }

    // <...>.<kind>[.<dc>]: find the kind keyword in the last or second-to-last place.
    let kinds = ["service", "connect", "node", "addr", "query"];
    let (kind_at, dc) = if kinds.iter().any(|k| is(l[n - 1], k)) {
        (n - 1, None)
    } else if n >= 2 && kinds.iter().any(|k| is(l[n - 2], k)) {
        (n - 2, Some(l[n - 1]))
    } else {
        return Err(QueryNameError::Unknown);
    };
    let kind = l[kind_at];
    let before = &l[..kind_at];
    if is(kind, "service") {
        match before {
            [service] => Ok(NameQuery::Service {
                service,
                tag: None,
                dc,
            }),
            [tag, service] => Ok(NameQuery::Service {
                service,
                tag: Some(tag),
                dc,
            }),
            _ => Err(QueryNameError::Unknown),
        }
    } else if is(kind, "connect") {
        match before {
            [service] => Ok(NameQuery::Connect { service, dc }),
            _ => Err(QueryNameError::Unknown),
        }
    } else if is(kind, "node") {
        match before {
            [node] => Ok(NameQuery::Node { node, dc }),
            _ => Err(QueryNameError::Unknown),
        }
    } else if is(kind, "addr") {
        match before {
            [hex] => parse_hex_ip(hex)
                .map(|ip| NameQuery::Addr { ip, dc })
                .ok_or(QueryNameError::Unknown),
            _ => Err(QueryNameError::Unknown),
        }
    } else {
        match before {
            [name] => Ok(NameQuery::Query { name, dc }),
            _ => Err(QueryNameError::Unknown),
        }
    }
}

/// A Consul mesh SNI name, `<service>.<namespace>.<dc>.internal.<trust-domain>`, as Connect
/// proxies send it. Labels borrow from the parsed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshName<'a> {
    /// Service name.
    pub service: &'a str,
    /// Consul namespace (`default` outside Consul Enterprise).
    pub namespace: &'a str,
    /// The datacenter the name points at; the mesh form always has one.
    pub dc: &'a str,
}

/// Parses Consul's mesh SNI form under `trust_domain` (case-insensitive, optional trailing dot).
/// `NotOurs` if the name is not under `internal.<trust_domain>`, `Unknown` if the labels before
/// it are not exactly three DNS labels.
pub fn parse_mesh_name<'a>(
    name: &'a str,
    trust_domain: &str,
) -> Result<MeshName<'a>, QueryNameError> {
    let trust_domain = trust_domain.trim_end_matches('.');
    // Names are ASCII (SNI and DNS alike); checking first also keeps the slicing below on
    // character boundaries.
    if trust_domain.is_empty() || !name.is_ascii() {
        return Err(QueryNameError::NotOurs);
    }
    let Some((_, rest)) = strip_domain(name, &[trust_domain]) else {
        return Err(QueryNameError::NotOurs);
    };
    let Some(rest) = rest
        .len()
        .checked_sub(".internal".len())
        .filter(|&at| rest.as_bytes()[at..].eq_ignore_ascii_case(b".internal"))
        .map(|at| &rest[..at])
    else {
        return Err(QueryNameError::NotOurs);
    };
    let mut labels = rest.split('.');
    match (labels.next(), labels.next(), labels.next(), labels.next()) {
        (Some(service), Some(namespace), Some(dc), None)
            if is_label(service) && is_label(namespace) && is_label(dc) =>
        {
            Ok(MeshName {
                service,
                namespace,
                dc,
            })
        }
        _ => Err(QueryNameError::Unknown),
    }
}

/// Decodes Consul's `.addr` label: 8 hex digits for IPv4, 32 for IPv6.
pub fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    let b = hex.as_bytes();
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    match b.len() {
        8 => {
            let mut o = [0u8; 4];
            for (i, byte) in o.iter_mut().enumerate() {
                *byte = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        32 => {
            let mut o = [0u8; 16];
            for (i, byte) in o.iter_mut().enumerate() {
                *byte = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// Encodes an address as Consul's `.addr` label (lowercase hex), into `buf`; returns the label.
pub fn hex_ip(ip: IpAddr, buf: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (bytes, n): ([u8; 16], usize) = match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    };
    for (i, byte) in bytes[..n].iter().enumerate() {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[..2 * n]).unwrap_or("")
}

/// Parses a reverse-lookup name (`4.3.2.1.in-addr.arpa.`, nibbles under `ip6.arpa.`).
pub fn parse_reverse(name: &str) -> Option<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let lower_ends = |suffix: &str| {
        name.len() > suffix.len()
            && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    if lower_ends(".in-addr.arpa") {
        let rest = &name[..name.len() - ".in-addr.arpa".len()];
        let mut o = [0u8; 4];
        let mut n = 0;
        for label in rest.split('.') {
            if n == 4 || label.is_empty() || label.len() > 3 {
                return None;
            }
            o[3 - n] = label.parse().ok()?;
            n += 1;
        }
        (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(o)))
    } else if lower_ends(".ip6.arpa") {
        let rest = &name[..name.len() - ".ip6.arpa".len()];
        let mut o = [0u8; 16];
        let mut n = 0;
        for label in rest.split('.') {
            if n == 32 || label.len() != 1 {
                return None;
            }
            let d = label.chars().next()?.to_digit(16)? as u8;
            let pos = 31 - n;
            o[pos / 2] |= if pos % 2 == 0 { d << 4 } else { d };
            n += 1;
        }
        (n == 32).then(|| IpAddr::V6(Ipv6Addr::from(o)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels() {
        for ok in ["web", "a", "web-1", "W3B", &"a".repeat(63)] {
            assert!(is_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "web.api",
            "web_api",
            "wéb",
            "web api",
            &"a".repeat(64),
        ] {
            assert!(!is_label(bad), "{bad}");
        }
    }

    #[test]
    fn connect_names() {
        assert_eq!(
            parse_query_name("web.connect"),
            Ok(NameQuery::Connect {
                service: "web",
                dc: None
            })
        );
        assert_eq!(
            parse_query_name("web.CONNECT.dc2"),
            Ok(NameQuery::Connect {
                service: "web",
                dc: Some("dc2")
            })
        );
        // No tag form, as in Consul.
        assert_eq!(
            parse_query_name("v1.web.connect"),
            Err(QueryNameError::Unknown)
        );
    }

    #[test]
    fn ids() {
        assert!(validate_id("id", "web:1 (blue)").is_ok());
        assert!(validate_id("id", "").is_err());
        assert!(validate_id("id", "a/b").is_err());
        assert!(validate_id("id", "a\nb").is_err());
        assert!(validate_id("id", &"x".repeat(257)).is_err());
    }

    #[test]
    fn meta() {
        let mut m = BTreeMap::new();
        m.insert("version".to_owned(), "1.2".to_owned());
        assert!(validate_meta(&m).is_ok());
        m.insert("consul-x".to_owned(), String::new());
        assert!(validate_meta(&m).is_err());
        let mut m = BTreeMap::new();
        m.insert("bad key".to_owned(), String::new());
        assert!(validate_meta(&m).is_err());
    }

    proptest! {
        #[test]
        fn label_is_lowercase_alnum_hyphen(s in "\\PC{0,70}") {
            let ok = is_label(&s);
            if ok {
                prop_assert!(s.len() <= 63 && !s.starts_with('-') && !s.ends_with('-'));
                prop_assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
            }
            prop_assert_eq!(ok, validate_label("x", &s).is_ok());
        }
    }

    #[test]
    fn query_names() {
        use NameQuery::*;
        let d = ["consul", "alt.example"];
        let q = |name: &'static str| {
            let (_, rest) = strip_domain(name, &d).expect("ours");
            parse_query_name(rest)
        };
        assert_eq!(q("consul."), Ok(Apex));
        assert_eq!(
            q("web.service.consul"),
            Ok(Service {
                service: "web",
                tag: None,
                dc: None
            })
        );
        assert_eq!(
            q("WEB.Service.dc2.CONSUL."),
            Ok(Service {
                service: "WEB",
                tag: None,
                dc: Some("dc2")
            })
        );
        assert_eq!(
            q("v1.web.service.consul"),
            Ok(Service {
                service: "web",
                tag: Some("v1"),
                dc: None
            })
        );
        assert_eq!(
            q("v1.web.service.dc1.alt.example"),
            Ok(Service {
                service: "web",
                tag: Some("v1"),
                dc: Some("dc1")
            })
        );
        assert_eq!(
            q("_web._tcp.service.consul"),
            Ok(Service {
                service: "web",
                tag: None,
                dc: None
            })
        );
        assert_eq!(
            q("_web._udp.consul"),
            Ok(Service {
                service: "web",
                tag: None,
                dc: None
            })
        );
        assert_eq!(
            q("_web._v1.dc3.consul"),
            Ok(Service {
                service: "web",
                tag: Some("v1"),
                dc: Some("dc3")
            })
        );
        assert_eq!(
            q("_web._tcp.service.dc3.consul"),
            Ok(Service {
                service: "web",
                tag: None,
                dc: Some("dc3")
            })
        );
        assert_eq!(
            q("_fail._tcp.query.consul"),
            Ok(Query {
                name: "fail",
                dc: None
            })
        );
        assert_eq!(
            q("n1.node.consul"),
            Ok(Node {
                node: "n1",
                dc: None
            })
        );
        assert_eq!(
            q("n1.node.dc1.consul"),
            Ok(Node {
                node: "n1",
                dc: Some("dc1")
            })
        );
        assert_eq!(
            q("7f000001.addr.dc1.consul"),
            Ok(Addr {
                ip: "127.0.0.1".parse().expect("ip"),
                dc: Some("dc1")
            })
        );
        assert_eq!(
            q("fail.query.consul"),
            Ok(Query {
                name: "fail",
                dc: None
            })
        );
        for bad in [
            "web.consul",
            "a.b.web.service.consul",
            "xyz.addr.consul",
            "service.consul",
            "a..service.consul",
            "_web.consul",
            "a.b.c.d.e.f.g.h.i.service.consul",
        ] {
            assert_eq!(q(bad), Err(QueryNameError::Unknown), "{bad}");
        }
        assert_eq!(strip_domain("web.service.other", &d), None);
        assert_eq!(strip_domain("webconsul", &d), None);
        // Non-ASCII before the domain must not cut inside a character.
        assert_eq!(strip_domain("éonsul", &d), None);
        assert_eq!(strip_domain("wéb.consul", &d), Some((0, "wéb")));
        assert_eq!(parse_reverse("é.in-addr.arpa"), None);
    }

    #[test]
    fn mesh_names() {
        let td = "7c5e4a1f-1b2c-4d3e-8f90-a1b2c3d4e5f6.consul";
        let name = format!("web.default.dc2.internal.{td}");
        assert_eq!(
            parse_mesh_name(&name, td),
            Ok(MeshName {
                service: "web",
                namespace: "default",
                dc: "dc2"
            })
        );
        let upper = format!("Web.Default.DC2.Internal.{}.", td.to_ascii_uppercase());
        assert_eq!(
            parse_mesh_name(&upper, &format!("{td}.")).map(|m| m.dc),
            Ok("DC2")
        );
        for not_ours in [
            "web.default.dc2.internal.other.consul".to_owned(),
            format!("web.default.dc2.external.{td}"),
            format!("web.default.dc2internal.{td}"),
            format!("internal.{td}"),
            td.to_owned(),
            "web.service.consul".to_owned(),
            format!("wéb.default.dc2.internal.{td}"),
        ] {
            assert_eq!(
                parse_mesh_name(&not_ours, td),
                Err(QueryNameError::NotOurs),
                "{not_ours}"
            );
        }
        for unknown in [
            format!(".internal.{td}"),
            format!("default.dc2.internal.{td}"),
            format!("v1.web.default.dc2.internal.{td}"),
            format!("web..dc2.internal.{td}"),
            format!("web_1.default.dc2.internal.{td}"),
            format!("web.default.-dc2.internal.{td}"),
        ] {
            assert_eq!(
                parse_mesh_name(&unknown, td),
                Err(QueryNameError::Unknown),
                "{unknown}"
            );
        }
        assert_eq!(
            parse_mesh_name("a.b.c.internal", ""),
            Err(QueryNameError::NotOurs)
        );
    }

    #[test]
    fn hex_and_reverse() {
        let mut buf = [0u8; 32];
        let v4: IpAddr = "10.1.2.255".parse().expect("ip");
        assert_eq!(hex_ip(v4, &mut buf), "0a0102ff");
        assert_eq!(parse_hex_ip("0a0102ff"), Some(v4));
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        let h = hex_ip(v6, &mut buf).to_owned();
        assert_eq!(h.len(), 32);
        assert_eq!(parse_hex_ip(&h), Some(v6));
        assert_eq!(parse_reverse("255.2.1.10.in-addr.arpa."), Some(v4));
        let rev6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        assert_eq!(parse_reverse(rev6), Some(v6));
        assert_eq!(parse_reverse("1.2.3.in-addr.arpa"), None);
        assert_eq!(parse_reverse("300.2.1.10.in-addr.arpa"), None);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "(\\PC|[.]){0,300}") {
            if let Some((_, rest)) = strip_domain(&s, &["consul"]) {
                let _ = parse_query_name(rest);
            }
            let _ = parse_reverse(&s);
            let _ = parse_hex_ip(&s);
            if let Ok(m) = parse_mesh_name(&s, "td.consul") {
                prop_assert!(is_label(m.service) && is_label(m.namespace) && is_label(m.dc));
            }
        }
    }
}
