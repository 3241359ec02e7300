//! The tunnel's wire protocol, both ends: the header that opens every tunnelled stream (version,
//! then the SNI and the datacenter the sender resolved it to, each with a one-byte length), and
//! the liveness probe (a header without a name, answered with [`PROBE_ANSWER`]).
//!
//! A header is at most [`MAX_HEADER`] bytes and is read exactly, byte for byte, so the client's
//! bytes that follow it on the stream are left for the relay. The format is version 1 on every
//! gateway in service: changing it needs a new version byte, not a new meaning for this one.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Header version byte.
const VERSION: u8 = 1;
/// Longest name or DC in a header (a DNS name is at most 253 bytes).
const MAX_FIELD: usize = 255;
/// Longest header on the wire: the version and two fields with their lengths.
pub const MAX_HEADER: usize = 3 + 2 * MAX_FIELD;
/// The byte a gateway answers a probe (a header without a name) with.
pub const PROBE_ANSWER: u8 = 0x50;

/// Why a header could not be written or read, or a probe answer was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The first byte is not a version this gateway speaks.
    #[error("unknown tunnel header version {0}")]
    UnknownVersion(u8),
    /// The stream ended inside the header.
    #[error("the stream ended inside the tunnel header")]
    Truncated,
    /// A field is not ASCII (names and datacenters are DNS labels).
    #[error("tunnel header field {field} is not ASCII")]
    NotAscii {
        /// `name` or `dc`.
        field: &'static str,
    },
    /// A field is longer than a one-byte length can carry (sender side).
    #[error("tunnel header field {field} is {len} bytes, more than {MAX_FIELD}")]
    TooLong {
        /// `name` or `dc`.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A probe was answered with another byte than [`PROBE_ANSWER`].
    #[error("unexpected probe answer {0:#04x}")]
    BadProbeAnswer(u8),
    /// Reading or writing the stream failed.
    #[error("tunnel i/o: {0}")]
    Io(io::Error),
}

impl From<io::Error> for HeaderError {
    fn from(e: io::Error) -> Self {
        // `read_exact` and `read_u8` report the end of the stream this way.
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HeaderError::Truncated
        } else {
            HeaderError::Io(e)
        }
    }
}

/// A stream's header, read by the receiving gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The SNI the client asked for; empty in a probe.
    pub name: String,
    /// The datacenter the sender resolved it to.
    pub dc: String,
}

impl Header {
    /// The header of a liveness probe of datacenter `dc`.
    pub fn probe(dc: &str) -> Header {
        Header {
            name: String::new(),
            dc: dc.to_owned(),
        }
    }

    /// Whether this header opens a liveness probe rather than a client connection.
    pub fn is_probe(&self) -> bool {
        self.name.is_empty()
    }

    /// The header's bytes: version, then name and DC, each with a one-byte length.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the header's bytes to `out` (so a caller can put what follows in the same
    /// buffer, and the same write).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), HeaderError> {
        let len = |field: &'static str, s: &str| {
            u8::try_from(s.len()).map_err(|_| HeaderError::TooLong {
                field,
                len: s.len(),
            })
        };
        let (name_len, dc_len) = (len("name", &self.name)?, len("dc", &self.dc)?);
        out.reserve(self.encoded_len());
        out.push(VERSION);
        out.push(name_len);
        out.extend_from_slice(self.name.as_bytes());
        out.push(dc_len);
        out.extend_from_slice(self.dc.as_bytes());
        Ok(())
    }

    /// The length of the header's bytes.
    pub fn encoded_len(&self) -> usize {
        3 + self.name.len() + self.dc.len()
    }

    /// Reads a header (at most [`MAX_HEADER`] bytes, and not one byte past it).
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, HeaderError> {
        let version = r.read_u8().await?;
        if version != VERSION {
            return Err(HeaderError::UnknownVersion(version));
        }
        let name = read_field(r, "name").await?;
        let dc = read_field(r, "dc").await?;
        Ok(Header { name, dc })
    }
}

/// One length-prefixed ASCII field.
async fn read_field<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
) -> Result<String, HeaderError> {
    // A one-byte length: the field fits this buffer whatever the sender claims.
    let mut buf = [0u8; MAX_FIELD];
    let n = usize::from(r.read_u8().await?);
    let bytes = &mut buf[..n];
    r.read_exact(bytes).await?;
    if !bytes.is_ascii() {
        return Err(HeaderError::NotAscii { field });
    }
    // ASCII is UTF-8.
    String::from_utf8(bytes.to_vec()).map_err(|_| HeaderError::NotAscii { field })
}

/// The receiving end of a probe: answers it and closes the stream.
pub async fn answer_probe<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(&[PROBE_ANSWER]).await?;
    stream.shutdown().await
}

/// The sending end of a probe: writes `header` (a [`Header::probe`], encoded) and waits for
/// the answer.
pub async fn send_probe<S>(stream: &mut S, header: &[u8]) -> Result<(), HeaderError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Plain i/o errors here: an end of stream is a probe left unanswered, not a bad header.
    stream.write_all(header).await.map_err(HeaderError::Io)?;
    stream.flush().await.map_err(HeaderError::Io)?;
    match stream.read_u8().await.map_err(HeaderError::Io)? {
        PROBE_ANSWER => Ok(()),
        other => Err(HeaderError::BadProbeAnswer(other)),
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Header {
        Header {
            name: "web.service.dc2.consul".into(),
            dc: "dc2".into(),
        }
    }

    #[tokio::test]
    async fn headers_round_trip_and_are_bounded() {
        let h = web();
        let bytes = h.encode().expect("encodes");
        assert_eq!(bytes.len(), h.encoded_len());
        let mut r = &bytes[..];
        assert_eq!(Header::read(&mut r).await.expect("reads"), h);
        let long = Header {
            name: "x".repeat(300),
            dc: "dc2".into(),
        };
        assert!(long.encode().is_err());
        let mut bad: &[u8] = &[9, 1, b'a', 1, b'b'];
        assert!(Header::read(&mut bad).await.is_err());
        let mut short: &[u8] = &[1, 5, b'a'];
        assert!(Header::read(&mut short).await.is_err());
    }

    #[tokio::test]
    async fn round_trip_leaves_what_follows_unread() {
        for h in [
            web(),
            Header::probe("dc2"),
            Header {
                name: "n".repeat(MAX_FIELD),
                dc: "d".repeat(MAX_FIELD),
            },
        ] {
            let mut bytes = Vec::new();
            h.encode_into(&mut bytes).expect("encodes");
            assert!(bytes.len() <= MAX_HEADER);
            bytes.extend_from_slice(b"\x16\x03\x01client hello");
            let mut r = &bytes[..];
            let got = Header::read(&mut r).await.expect("reads");
            assert_eq!(got, h);
            assert_eq!(got.is_probe(), h.name.is_empty());
            assert_eq!(r, b"\x16\x03\x01client hello");
        }
    }

    #[tokio::test]
    async fn truncated_headers_are_a_clean_error() {
        let bytes = web().encode().expect("encodes");
        // Every strict prefix, the empty one included.
        for cut in 0..bytes.len() {
            let mut r = &bytes[..cut];
            let err = Header::read(&mut r).await.expect_err("truncated");
            assert!(matches!(err, HeaderError::Truncated), "{cut}: {err}");
        }
    }

    #[test]
    fn oversized_fields_are_refused_on_the_sending_side() {
        let name = Header {
            name: "x".repeat(MAX_FIELD + 1),
            dc: "dc2".into(),
        };
        assert!(matches!(
            name.encode(),
            Err(HeaderError::TooLong {
                field: "name",
                len: 256
            })
        ));
        let dc = Header {
            name: "web.service.consul".into(),
            dc: "d".repeat(1000),
        };
        let mut out = b"kept".to_vec();
        assert!(matches!(
            dc.encode_into(&mut out),
            Err(HeaderError::TooLong {
                field: "dc",
                len: 1000
            })
        ));
        // Nothing half-written.
        assert_eq!(out, b"kept");
    }

    #[tokio::test]
    async fn unknown_versions_and_non_ascii_fields_are_refused() {
        for version in [0u8, 2, 9, 0xff] {
            let mut r: &[u8] = &[version, 1, b'a', 1, b'b'];
            assert!(matches!(
                Header::read(&mut r).await,
                Err(HeaderError::UnknownVersion(v)) if v == version
            ));
            // Refused at the first byte: nothing more is read.
            assert_eq!(r.len(), 4);
        }
        let mut r: &[u8] = &[VERSION, 2, 0xc3, 0xa9, 1, b'b'];
        assert!(matches!(
            Header::read(&mut r).await,
            Err(HeaderError::NotAscii { field: "name" })
        ));
        let mut r: &[u8] = &[VERSION, 1, b'a', 1, 0x80];
        assert!(matches!(
            Header::read(&mut r).await,
            Err(HeaderError::NotAscii { field: "dc" })
        ));
    }

    #[tokio::test]
    async fn probes_are_answered_with_the_probe_byte() {
        let header = Header::probe("dc2").encode().expect("encodes");
        let (mut near, mut far) = tokio::io::duplex(64);
        let answer = tokio::spawn(async move {
            let h = Header::read(&mut far).await.expect("reads");
            assert!(h.is_probe());
            answer_probe(&mut far).await.expect("answers");
        });
        send_probe(&mut near, &header).await.expect("answered");
        answer.await.expect("join");

        let (mut near, mut far) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = Header::read(&mut far).await;
            let _ = far.write_all(b"?").await;
        });
        assert!(matches!(
            send_probe(&mut near, &header).await,
            Err(HeaderError::BadProbeAnswer(b'?'))
        ));
        let (mut near, far) = tokio::io::duplex(64);
        drop(far);
        assert!(matches!(
            send_probe(&mut near, &header).await,
            Err(HeaderError::Io(_))
        ));
    }
}
