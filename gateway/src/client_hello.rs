//! A sans-IO TLS ClientHello parser: given the first bytes a client sent, it finds the SNI
//! (RFC 6066 `server_name`, `host_name` type) or says why there is none.
//!
//! [`parse`] takes everything received so far and answers "need more bytes" (`Ok(None)`), the
//! hello, or an error; it never looks past [`MAX_HELLO`] bytes. The caller keeps the bytes and
//! replays them to the backend unchanged. TLS records may be split anywhere and the hello may span
//! several records (post-quantum hellos are 1.5-2 KiB and more). The answer depends only on the
//! bytes it has seen: every prefix of a valid hello yields `Ok(None)`, and once a prefix yields a
//! hello or an error, every longer input yields the same answer.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use meridian_topology::names::is_label;

/// The most bytes read to find the ClientHello; a hello that does not end within them is refused.
pub const MAX_HELLO: usize = 16 * 1024;

/// TLS record header: content type, legacy version, 16-bit length.
const RECORD_HEADER: usize = 5;
/// Largest plaintext record fragment (RFC 8446 section 5.1).
const MAX_FRAGMENT: usize = 1 << 14;
/// Handshake header: message type and 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// Longest DNS name in text form, without the trailing dot.
const MAX_NAME_LEN: usize = 253;

/// A parsed ClientHello: what the gateway needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hello {
    /// The server name, lowercased and checked to be a DNS name (never an IP literal).
    pub sni: String,
    /// How many bytes of the input the hello takes, up to the end of its last byte.
    pub len: usize,
}

/// Why the first bytes of a connection are not a ClientHello we can route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The bytes do not start with a TLS record (plain HTTP, SSH, ...).
    #[error("not TLS")]
    NotTls,
    /// An SSL 2.0-style hello (two-byte header with the high bit set), which carries no SNI.
    #[error("SSLv2-style hello")]
    Sslv2,
    /// A TLS record, but not a handshake record (an alert, application data, ...).
    #[error("the first TLS record is not a handshake (content type {content_type})")]
    NotHandshake {
        /// The record's content type.
        content_type: u8,
    },
    /// A handshake message other than a ClientHello.
    #[error("the first handshake message is not a ClientHello (type {msg_type})")]
    NotClientHello {
        /// The handshake message type.
        msg_type: u8,
    },
    /// The hello does not end within [`MAX_HELLO`] bytes.
    #[error("the ClientHello needs {needed} bytes or more, over the {MAX_HELLO}-byte bound")]
    TooLarge {
        /// A lower bound on the bytes the hello would need.
        needed: usize,
    },
    /// A length or field is inconsistent.
    #[error("malformed ClientHello: {what}")]
    Malformed {
        /// Which field or rule is broken.
        what: &'static str,
    },
    /// The hello has no `server_name` extension (or no `host_name` in it).
    #[error("no SNI")]
    NoSni,
    /// Two `server_name` extensions, or two `host_name` entries (RFC 6066 forbids both).
    #[error("duplicate SNI")]
    DuplicateSni,
    /// The `host_name` is not a DNS name: an IP literal, a bad label, too long, not ASCII.
    #[error("no valid SNI: {reason}")]
    InvalidSni {
        /// Why the name is refused.
        reason: &'static str,
    },
}

impl HelloError {
    /// A short, stable name for the reason, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            HelloError::NotTls => "not_tls",
            HelloError::Sslv2 => "sslv2",
            HelloError::NotHandshake { .. } => "not_handshake",
            HelloError::NotClientHello { .. } => "not_client_hello",
            HelloError::TooLarge { .. } => "too_large",
            HelloError::Malformed { .. } => "malformed",
            HelloError::NoSni => "no_sni",
            HelloError::DuplicateSni => "duplicate_sni",
            HelloError::InvalidSni { .. } => "invalid_sni",
        }
    }
}

fn malformed(what: &'static str) -> HelloError {
    HelloError::Malformed { what }
}

/// Parses the ClientHello at the start of `buf` (everything received so far). `Ok(None)` means
/// that more bytes are needed; only the first [`MAX_HELLO`] bytes are ever looked at.
pub fn parse(buf: &[u8]) -> Result<Option<Hello>, HelloError> {
    let buf = &buf[..buf.len().min(MAX_HELLO)];
    // Handshake bytes of each record seen so far; one entry in the common case.
    let mut frags: Vec<&[u8]> = Vec::new();
    let mut have = 0;
    let mut pos = 0;
    loop {
        let header = &buf[pos..buf.len().min(pos + RECORD_HEADER)];
        check_record_header(header, pos == 0)?;
        if header.len() < RECORD_HEADER {
            return need_more(buf);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            // RFC 8446 5.1 forbids empty handshake fragments; also bounds the loop's work.
            return Err(malformed("empty handshake record"));
        }
        if len > MAX_FRAGMENT {
            return Err(malformed("record longer than 2^14 bytes"));
        }
        let start = pos + RECORD_HEADER;
        let end = start + len;
        let frag = &buf[start..end.min(buf.len())];
        frags.push(frag);
        have += frag.len();

        // Bytes of handshake data needed in all, once the handshake header is known.
        let mut head = [0u8; HANDSHAKE_HEADER];
        let got = gather(&frags, &mut head);
        if got >= 1 && head[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::NotClientHello { msg_type: head[0] });
        }
        if got == HANDSHAKE_HEADER {
            let body_len =
                usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
            let total = HANDSHAKE_HEADER + body_len;
            // At best the whole message sits in this record and the ones after it.
            if pos + RECORD_HEADER + total > MAX_HELLO + (have - frag.len()) {
                return Err(HelloError::TooLarge {
                    needed: pos + RECORD_HEADER + total - (have - frag.len()),
                });
            }
            if have >= total {
                // Bytes of this record past the hello belong to no one we route; leave them to
                // the backend, which sees everything.
                let used_here = frag.len() - (have - total);
                let msg = join(&frags, total);
                let sni = parse_body(&msg[HANDSHAKE_HEADER..])?;
                return Ok(Some(Hello {
                    sni,
                    len: start + used_here,
                }));
            }
        }
        if end > buf.len() {
            return need_more(buf);
        }
        pos = end;
    }
}

/// `Ok(None)` while the bound leaves room for more bytes.
fn need_more(buf: &[u8]) -> Result<Option<Hello>, HelloError> {
    if buf.len() >= MAX_HELLO {
        Err(HelloError::TooLarge {
            needed: MAX_HELLO + 1,
        })
    } else {
        Ok(None)
    }
}

/// Checks what is there of a record header (possibly fewer than 5 bytes).
fn check_record_header(h: &[u8], first: bool) -> Result<(), HelloError> {
    if let Some(&ct) = h.first()
        && ct != CONTENT_HANDSHAKE
    {
        if !first {
            return Err(malformed("non-handshake record inside the ClientHello"));
        }
        return Err(match ct {
            // change_cipher_spec, alert, application_data, heartbeat
            20 | 21 | 23 | 24 => HelloError::NotHandshake { content_type: ct },
            // SSLv2's header is a 15-bit length with the high bit set, then type 1.
            c if c & 0x80 != 0 => HelloError::Sslv2,
            _ => HelloError::NotTls,
        });
    }
    if let Some(&major) = h.get(1)
        && major != 3
    {
        return Err(if first {
            HelloError::NotTls
        } else {
            malformed("record version")
        });
    }
    Ok(())
}

/// Copies the first handshake bytes (up to `out.len()`) out of the fragments; returns how many.
fn gather(frags: &[&[u8]], out: &mut [u8]) -> usize {
    let mut n = 0;
    for b in frags.iter().flat_map(|f| f.iter()).take(out.len()) {
        out[n] = *b;
        n += 1;
    }
    n
}

/// The first `total` handshake bytes: borrowed when they sit in one record, copied otherwise.
fn join<'a>(frags: &[&'a [u8]], total: usize) -> Cow<'a, [u8]> {
    match frags {
        [one] => Cow::Borrowed(&one[..total]),
        _ => {
            let mut v = Vec::with_capacity(total);
            for f in frags {
                let take = (total - v.len()).min(f.len());
                v.extend_from_slice(&f[..take]);
            }
            Cow::Owned(v)
        }
    }
}

/// A bounds-checked cursor; every read names the field it was reading when it ran out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.0.len() {
            return Err(malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses a ClientHello body (after the handshake header) and returns its SNI.
fn parse_body(body: &[u8]) -> Result<String, HelloError> {
    let mut r = Reader(body);
    let version = r.take(2, "legacy_version")?;
    if version[0] != 3 {
        return Err(malformed("legacy_version"));
    }
    r.take(32, "random")?;
    if r.vec8("legacy_session_id")?.len() > 32 {
        return Err(malformed("legacy_session_id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(malformed("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(malformed("legacy_compression_methods"));
    }
    if r.is_empty() {
        // A hello without extensions (SSL 3.0 style) cannot carry a name.
        return Err(HelloError::NoSni);
    }
    let exts = r.vec16("extensions")?;
    if !r.is_empty() {
        return Err(malformed("bytes after the extensions"));
    }
    let mut exts = Reader(exts);
    let mut sni = None;
    while !exts.is_empty() {
        let ty = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if ty == EXT_SERVER_NAME {
            if sni.is_some() {
                return Err(HelloError::DuplicateSni);
            }
            sni = Some(parse_server_name(data)?);
        }
    }
    match sni {
        Some(Some(name)) => check_host_name(name),
        _ => Err(HelloError::NoSni),
    }
}

/// Parses a `server_name` extension's body; returns its `host_name`, if it has one.
fn parse_server_name(data: &[u8]) -> Result<Option<&[u8]>, HelloError> {
    let mut r = Reader(data);
    let list = r.vec16("server_name_list")?;
    if !r.is_empty() || list.is_empty() {
        return Err(malformed("server_name_list length"));
    }
    let mut list = Reader(list);
    let mut host = None;
    while !list.is_empty() {
        let ty = list.u8("server name type")?;
        if ty != NAME_TYPE_HOST_NAME {
            // Only host_name is defined, and an unknown type's encoding is unknown, so the rest
            // of the list cannot be read (rustls stops here too).
            break;
        }
        let name = list.vec16("host_name")?;
        if host.is_some() {
            return Err(HelloError::DuplicateSni);
        }
        host = Some(name);
    }
    Ok(host)
}

/// Checks that a `host_name` is a DNS name (RFC 6066: no IP literals, no trailing dot) and
/// lowercases it.
fn check_host_name(name: &[u8]) -> Result<String, HelloError> {
    let invalid = |reason| Err(HelloError::InvalidSni { reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("longer than 253 bytes");
    }
    let Ok(name) = std::str::from_utf8(name) else {
        return invalid("not ASCII");
    };
    if !name.split('.').all(is_label) {
        return invalid("not a sequence of DNS labels");
    }
    // An all-numeric last label is no TLD (RFC 3696 2); it also rules out IPv4 literals
    // (IPv6 ones fail the label check on ':').
    let last = name.rsplit('.').next().unwrap_or(name);
    if name.parse::<Ipv4Addr>().is_ok() || last.bytes().all(|c| c.is_ascii_digit()) {
        return invalid("an IP literal or all-numeric top label");
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rustls::crypto::{ActiveKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, NamedGroup, RootCertStore};
    use std::sync::{Arc, LazyLock};

    /// A stand-in for X25519MLKEM768 with a key share of the real size (1216 bytes), so rustls
    /// (ring has no ML-KEM) writes a hello as large as a post-quantum client's.
    #[derive(Debug)]
    struct FakeMlKem;

    static FAKE_SHARE: [u8; 1216] = [0x42; 1216];

    impl SupportedKxGroup for FakeMlKem {
        fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
            Ok(Box::new(FakeMlKem))
        }
        fn name(&self) -> NamedGroup {
            NamedGroup::X25519MLKEM768
        }
    }

    impl ActiveKeyExchange for FakeMlKem {
        fn complete(self: Box<Self>, _: &[u8]) -> Result<SharedSecret, rustls::Error> {
            Err(rustls::Error::General("test key exchange".into()))
        }
        fn pub_key(&self) -> &[u8] {
            &FAKE_SHARE
        }
        fn group(&self) -> NamedGroup {
            NamedGroup::X25519MLKEM768
        }
    }

    static FAKE_MLKEM: FakeMlKem = FakeMlKem;

    /// The first flight rustls writes for `name`, after `tweak` adjusts its config.
    fn rustls_hello(name: &str, pq: bool, tweak: impl FnOnce(&mut ClientConfig)) -> Vec<u8> {
        let mut provider = rustls::crypto::ring::default_provider();
        if pq {
            provider.kx_groups.insert(0, &FAKE_MLKEM);
        }
        let provider: Arc<CryptoProvider> = Arc::new(provider);
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        tweak(&mut config);
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    /// Re-frames a one-record hello into records of the given sizes (cycled).
    fn reframe(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
        let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!(hello.len(), RECORD_HEADER + len, "one record");
        let mut out = Vec::new();
        let mut rest = &hello[RECORD_HEADER..];
        for &n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (frag, tail) = rest.split_at(n.min(rest.len()));
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(frag.len()).expect("len").to_be_bytes());
            out.extend_from_slice(frag);
            rest = tail;
        }
        out
    }

    /// Real hellos from rustls, with the name each carries.
    static HELLOS: LazyLock<Vec<(&'static str, Vec<u8>)>> = LazyLock::new(|| {
        let plain = rustls_hello("web.service.consul", false, |_| {});
        let pq = rustls_hello("web.service.dc2.consul", true, |_| {});
        // A big ALPN list makes a hello well over 2 KiB, as some clients' are.
        let alpn = rustls_hello("api.default.dc1.internal.example.consul", false, |c| {
            c.alpn_protocols = (0..40)
                .map(|i| format!("proto-{i:02}-{}", "x".repeat(50)).into_bytes())
                .collect();
        });
        let upper = rustls_hello("V1.Web.Service.CONSUL", false, |_| {});
        vec![
            ("web.service.consul", reframe(&plain, &[1, 2, 3, 5, 7])),
            ("web.service.dc2.consul", reframe(&pq, &[300, 17, 1000])),
            ("web.service.consul", plain),
            ("web.service.dc2.consul", pq),
            ("api.default.dc1.internal.example.consul", alpn),
            ("v1.web.service.consul", upper),
        ]
    });

    fn sni(buf: &[u8]) -> Result<Option<String>, HelloError> {
        parse(buf).map(|h| h.map(|h| h.sni))
    }

    #[test]
    fn real_hellos() {
        for (name, hello) in HELLOS.iter() {
            let h = parse(hello).expect("parses").expect("complete");
            assert_eq!(h.sni, *name);
            assert_eq!(h.len, hello.len(), "{name}");
        }
        // The ML-KEM-sized key share (1216 bytes) and the ALPN-heavy hello are the large ones.
        assert!(HELLOS[3].1.len() > 1400, "{}", HELLOS[3].1.len());
        assert!(HELLOS[4].1.len() > 2048, "{}", HELLOS[4].1.len());
        // Re-framed: many records.
        assert!(HELLOS[0].1.len() > HELLOS[2].1.len() + 50 * RECORD_HEADER);
    }

    #[test]
    fn check_all_prefixes() {
        for (name, hello) in HELLOS.iter() {
            for i in 0..hello.len() {
                assert_eq!(parse(&hello[..i]), Ok(None), "{name}: prefix of {i} bytes");
            }
        }
    }

    /// Reads `hello` as a server would, in pieces ending at `cuts`, and returns the first answer.
    fn feed(hello: &[u8], cuts: &[usize]) -> Result<Option<Hello>, HelloError> {
        let mut buf = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([hello.len()].iter()) {
            buf.extend_from_slice(&hello[from..to]);
            from = to;
            if let Some(answer) = parse(&buf).transpose() {
                return answer.map(Some);
            }
        }
        Ok(None)
    }

    #[test]
    fn every_split() {
        for (name, hello) in HELLOS.iter() {
            let whole = parse(hello);
            let n = hello.len();
            for i in 0..=n {
                assert_eq!(feed(hello, &[i]), whole, "{name}: split at {i}");
            }
            // Three pieces: every pair on the smaller hellos, a stride on the large ones.
            let step = if n > 1000 { 7 } else { 1 };
            for i in (0..=n).step_by(step) {
                for j in (i..=n).step_by(step) {
                    assert_eq!(feed(hello, &[i, j]), whole, "{name}: splits at {i}, {j}");
                }
            }
        }
    }

    #[test]
    fn bytes_after_the_hello_are_left_alone() {
        let (_, hello) = &HELLOS[2];
        let mut buf = hello.clone();
        // A change_cipher_spec and 0-RTT application data may follow at once.
        buf.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 3, 1, 2, 3]);
        let h = parse(&buf).expect("ok").expect("complete");
        assert_eq!(h.len, hello.len());
        assert_eq!(h.sni, "web.service.consul");
    }

    #[test]
    fn ip_literal_from_rustls_has_no_sni() {
        // rustls, like every client, sends no SNI when connecting to an address.
        let hello = rustls_hello("127.0.0.1", false, |_| {});
        assert_eq!(sni(&hello), Err(HelloError::NoSni));
    }

    /// A minimal, well-formed hello with the given extensions, in one record.
    fn build(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut e = Vec::new();
        for (ty, data) in exts {
            e.extend_from_slice(&ty.to_be_bytes());
            e.extend_from_slice(&u16::try_from(data.len()).expect("len").to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&u16::try_from(e.len()).expect("len").to_be_bytes());
        body.extend_from_slice(&e);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&u32::try_from(body.len()).expect("len").to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&u16::try_from(msg.len()).expect("len").to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    /// A `server_name` extension body with these (type, name) entries.
    fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (ty, name) in names {
            list.push(*ty);
            list.extend_from_slice(&u16::try_from(name.len()).expect("len").to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = u16::try_from(list.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        data.extend_from_slice(&list);
        (EXT_SERVER_NAME, data)
    }

    fn host(name: &str) -> Vec<u8> {
        build(&[(10, vec![0, 2, 0, 29]), sni_ext(&[(0, name.as_bytes())])])
    }

    #[test]
    fn names() {
        assert_eq!(
            sni(&host("Web.Service.Consul")),
            Ok(Some("web.service.consul".into()))
        );
        assert_eq!(
            sni(&host(&format!("{}.consul", "a".repeat(63)))).map(|s| s.is_some()),
            Ok(true)
        );
        let invalid = |name: &str| matches!(sni(&host(name)), Err(HelloError::InvalidSni { .. }));
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "[::1]",
            "2001:db8::1",
            "1.2.3",
            "web.service.consul.",
            "a..consul",
            "-web.consul",
            "web_1.consul",
            "wéb.consul",
            "web service.consul",
            "",
        ] {
            assert!(invalid(bad), "{bad:?}");
        }
        let long = format!("{}.consul", vec!["a".repeat(60); 5].join("."));
        assert!(long.len() > 253);
        assert!(invalid(&long));
        assert!(invalid(&format!("{}.consul", "a".repeat(64))));
    }

    #[test]
    fn missing_and_duplicate_sni() {
        assert_eq!(sni(&build(&[])), Err(HelloError::NoSni));
        assert_eq!(
            sni(&build(&[(10, vec![0, 2, 0, 29])])),
            Err(HelloError::NoSni)
        );
        let mut no_ext = build(&[]);
        // Drop the (empty) extensions block: a hello with no extensions at all.
        no_ext.truncate(no_ext.len() - 2);
        let fix = |b: &mut Vec<u8>| {
            let n = b.len() - RECORD_HEADER;
            b[3..5].copy_from_slice(&u16::try_from(n).expect("len").to_be_bytes());
            b[6..9].copy_from_slice(&u32::try_from(n - 4).expect("len").to_be_bytes()[1..]);
        };
        fix(&mut no_ext);
        assert_eq!(sni(&no_ext), Err(HelloError::NoSni));
        let a = sni_ext(&[(0, b"a.consul")]);
        assert_eq!(
            sni(&build(&[a.clone(), a.clone()])),
            Err(HelloError::DuplicateSni)
        );
        assert_eq!(
            sni(&build(&[sni_ext(&[(0, b"a.consul"), (0, b"b.consul")])])),
            Err(HelloError::DuplicateSni)
        );
        // An unknown name type ends the list; a host_name before it still counts.
        assert_eq!(
            sni(&build(&[sni_ext(&[(0, b"a.consul"), (7, b"zz")])])),
            Ok(Some("a.consul".into()))
        );
        assert_eq!(
            sni(&build(&[sni_ext(&[(7, b"a.consul")])])),
            Err(HelloError::NoSni)
        );
        assert!(matches!(
            sni(&build(&[(EXT_SERVER_NAME, vec![])])),
            Err(HelloError::Malformed { .. })
        ));
        assert!(matches!(
            sni(&build(&[sni_ext(&[])])),
            Err(HelloError::Malformed { .. })
        ));
    }

    #[test]
    fn not_a_routable_hello() {
        assert_eq!(sni(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(sni(b"SSH-2.0-OpenSSH_9.6\r\n"), Err(HelloError::NotTls));
        assert_eq!(sni(&[22, 2, 0]), Err(HelloError::NotTls));
        // SSLv2-compatible ClientHello header.
        assert_eq!(sni(&[0x80, 0x2e, 0x01, 0x03, 0x01]), Err(HelloError::Sslv2));
        // An alert, and application data.
        assert_eq!(
            sni(&[21, 3, 3, 0, 2, 2, 40]),
            Err(HelloError::NotHandshake { content_type: 21 })
        );
        assert_eq!(
            sni(&[23]),
            Err(HelloError::NotHandshake { content_type: 23 })
        );
        // A ServerHello.
        assert_eq!(
            sni(&[22, 3, 3, 0, 4, 2]),
            Err(HelloError::NotClientHello { msg_type: 2 })
        );
        // A 16 MiB hello is refused at its header, before any of it arrives.
        assert!(matches!(
            sni(&[22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff]),
            Err(HelloError::TooLarge { .. })
        ));
        assert!(matches!(
            sni(&[22, 3, 1, 0x40, 0, 1, 0, 0x3f, 0xfd]),
            Err(HelloError::TooLarge { .. })
        ));
        assert!(matches!(
            sni(&[22, 3, 1, 0, 0]),
            Err(HelloError::Malformed { .. })
        ));
        assert!(matches!(
            sni(&[22, 3, 1, 0x40, 1]),
            Err(HelloError::Malformed { .. })
        ));
    }

    #[test]
    fn bounds_and_framing() {
        let (_, pq) = &HELLOS[3];
        let big = rustls_hello("web.service.consul", true, |c| {
            c.alpn_protocols = (0..40).map(|i| vec![b'a' + i; 50]).collect();
        });
        assert_eq!(sni(&big), Ok(Some("web.service.consul".into())));
        // One-byte records cost five bytes of header each: the hello no longer fits the bound.
        let tiny = reframe(&big, &[1]);
        assert!(tiny.len() > MAX_HELLO);
        assert!(matches!(sni(&tiny), Err(HelloError::TooLarge { .. })));
        // An alert between two fragments of the hello.
        let mut split = reframe(pq, &[100]);
        split.splice(105..105, [21, 3, 3, 0, 2, 1, 0]);
        assert!(matches!(sni(&split), Err(HelloError::Malformed { .. })));
        // An extension whose length runs past the end of the message.
        let mut bad = host("web.service.consul");
        let n = bad.len();
        bad[n - 25..n - 23].copy_from_slice(&[0, 99]);
        assert!(
            matches!(sni(&bad), Err(HelloError::Malformed { .. })),
            "{:?}",
            sni(&bad)
        );
        // A truncated message: the record claims more bytes than the handshake header.
        let mut short = host("web.service.consul");
        short[8] -= 1;
        assert!(
            matches!(sni(&short), Err(HelloError::Malformed { .. })),
            "{:?}",
            sni(&short)
        );
    }

    /// Invariants that hold for any input: no panic, the hello stays within the bound and the
    /// input, bytes past the bound change nothing, and a prefix never disagrees with the whole.
    fn check_invariants(buf: &[u8], cut: usize) -> Result<(), TestCaseError> {
        let whole = parse(buf);
        if let Ok(Some(h)) = &whole {
            prop_assert!(h.len <= MAX_HELLO && h.len <= buf.len());
            prop_assert!(h.sni.split('.').all(is_label));
            prop_assert_eq!(h.sni.to_ascii_lowercase(), h.sni.clone());
        }
        prop_assert_eq!(&whole, &parse(&buf[..buf.len().min(MAX_HELLO)]));
        let prefix = parse(&buf[..cut.min(buf.len())]);
        prop_assert!(
            prefix == Ok(None) || prefix == whole,
            "{:?} vs {:?}",
            prefix,
            whole
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..20_000), cut in 0usize..20_000) {
            check_invariants(&buf, cut)?;
        }

        #[test]
        fn arbitrary_handshake_records(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            len in 0u16..4000,
            cut in 0usize..3000,
        ) {
            // A plausible record header so that the parse gets past the first checks.
            let mut buf = vec![22, 3, 1];
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&[1, 0]);
            buf.extend_from_slice(&body);
            check_invariants(&buf, cut)?;
        }

        #[test]
        fn mutated_real_hellos(
            which in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = HELLOS[which].1.clone();
            for (at, byte, kind) in edits {
                if buf.is_empty() {
                    break;
                }
                let i = at.index(buf.len());
                match kind {
                    0 => buf[i] = byte,
                    1 => buf[i] ^= 1 << (byte % 8),
                    2 => { buf.remove(i); }
                    _ => buf.insert(i, byte),
                }
            }
            let cut = cut.index(buf.len() + 1);
            check_invariants(&buf, cut)?;
        }
    }
}
