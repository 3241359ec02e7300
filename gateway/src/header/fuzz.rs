//! Bounded fuzzing on stable (proptest) of [`Header::read`]: any bytes, delivered in any chunks,
//! give the header or the error a reference decoder predicts, reading exactly the bytes that
//! decoder consumed (never past [`MAX_HEADER`]). Each property runs a few thousand cases in the
//! ordinary test run; `PROPTEST_CASES` raises that for a deeper run (scripts/fuzz.sh).

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use super::*;

/// How the stream ends once its bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    /// A reset connection, say: not the end of the stream.
    Error,
}

/// A stream that hands out `data` in the given chunk sizes (cycled; 0 is a `Pending` that wakes
/// itself at once, then one byte), then ends as `end` says, and counts what was taken.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    turn: usize,
    /// The last poll was a `Pending`.
    pended: bool,
    end: End,
}

impl Chunked {
    fn new(data: Vec<u8>, chunks: Vec<usize>, end: End) -> Chunked {
        Chunked {
            data,
            pos: 0,
            chunks,
            turn: 0,
            pended: false,
            end,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let chunk = if this.chunks.is_empty() {
            usize::MAX
        } else {
            this.chunks[this.turn % this.chunks.len()]
        };
        this.turn += 1;
        if chunk == 0 && !this.pended {
            this.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pended = false;
        let chunk = chunk.max(1);
        let left = &this.data[this.pos..];
        if left.is_empty() {
            return Poll::Ready(match this.end {
                End::Eof => Ok(()),
                End::Error => Err(io::ErrorKind::ConnectionReset.into()),
            });
        }
        let n = chunk.min(left.len()).min(buf.remaining());
        buf.put_slice(&left[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs `Header::read` over `r` to completion. The reader never waits on anything outside
/// itself, so polling with a no-op waker is enough; the bound catches a read that spins.
fn read(r: &mut Chunked) -> Result<Header, HeaderError> {
    let mut fut = pin!(Header::read(r));
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("Header::read made no progress");
}

/// What a header read gives, by kind (`HeaderError` holds an `io::Error`, so it is not `Eq`).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Header(Header),
    UnknownVersion(u8),
    Truncated,
    NotAscii(&'static str),
    Io,
}

impl From<Result<Header, HeaderError>> for Outcome {
    fn from(r: Result<Header, HeaderError>) -> Outcome {
        match r {
            Ok(h) => Outcome::Header(h),
            Err(HeaderError::UnknownVersion(v)) => Outcome::UnknownVersion(v),
            Err(HeaderError::Truncated) => Outcome::Truncated,
            Err(HeaderError::NotAscii { field }) => Outcome::NotAscii(field),
            Err(HeaderError::Io(_)) => Outcome::Io,
            Err(e) => panic!("a read cannot fail with {e}"),
        }
    }
}

/// The reference decoder: what reading `data` (then `end`) gives, and how many bytes it takes.
fn decode(data: &[u8], end: End) -> (Outcome, usize) {
    let short = |taken| {
        let outcome = match end {
            End::Eof => Outcome::Truncated,
            End::Error => Outcome::Io,
        };
        (outcome, taken)
    };
    let Some(&version) = data.first() else {
        return short(0);
    };
    if version != VERSION {
        return (Outcome::UnknownVersion(version), 1);
    }
    let mut at = 1;
    let mut fields = Vec::new();
    for field in ["name", "dc"] {
        let Some(&len) = data.get(at) else {
            return short(data.len());
        };
        let start = at + 1;
        let Some(bytes) = data.get(start..start + usize::from(len)) else {
            return short(data.len());
        };
        at = start + usize::from(len);
        if !bytes.is_ascii() {
            return (Outcome::NotAscii(field), at);
        }
        fields.push(String::from_utf8(bytes.to_vec()).expect("ASCII is UTF-8"));
    }
    let dc = fields.pop().expect("two fields");
    let name = fields.pop().expect("two fields");
    (Outcome::Header(Header { name, dc }), at)
}

/// Chunk sizes: mostly small (every split of a short header), with `Pending`s (0) and
/// whole-buffer reads.
fn chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![4 => 0usize..4, 2 => 4usize..64, 1 => Just(usize::MAX)],
        0..8,
    )
}

/// Any header the sender can encode: ASCII fields of up to [`MAX_FIELD`] bytes, an empty name
/// (a probe) included.
fn header() -> impl Strategy<Value = Header> {
    let field = prop_oneof![
        "[a-z0-9.-]{0,40}",
        proptest::collection::vec(0u8..0x80, 0..=MAX_FIELD)
            .prop_map(|b| String::from_utf8(b).expect("ASCII")),
        Just("x".repeat(MAX_FIELD)),
    ];
    (field.clone(), field).prop_map(|(name, dc)| Header { name, dc })
}

/// Bytes that start like a header more often than not: a version byte that is usually right,
/// lengths near the ends of their range, ASCII or not.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (
            prop_oneof![4 => Just(VERSION), 1 => any::<u8>()],
            proptest::collection::vec(prop_oneof![0u8..0x80, any::<u8>()], 0..MAX_HEADER + 40),
            prop_oneof![Just(0u8), Just(1), Just(254), Just(255), any::<u8>()],
        )
            .prop_map(|(version, mut rest, len)| {
                if let Some(first) = rest.first_mut() {
                    *first = len;
                }
                rest.insert(0, version);
                rest
            }),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![3 => Just(End::Eof), 1 => Just(End::Error)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(meridian_topology::fuzz_cases(3000)))]

    /// Any bytes, in any chunks: exactly what the reference decoder gives (a header or a clean
    /// error, never a panic), having read exactly the bytes it took, never past `MAX_HEADER`.
    #[test]
    fn any_bytes_in_any_chunks_read_as_the_reference_decoder_says(
        data in header_like(),
        chunks in chunks(),
        end in end(),
    ) {
        let (want, taken) = decode(&data, end);
        let mut r = Chunked::new(data, chunks, end);
        let got = Outcome::from(read(&mut r));
        prop_assert_eq!(got, want);
        prop_assert_eq!(r.pos, taken);
        prop_assert!(r.pos <= MAX_HEADER);
    }

    /// Any header the crate encodes reads back equal in any chunks, leaving what follows it
    /// unread.
    #[test]
    fn encoded_headers_read_back_equal_in_any_chunks(
        h in header(),
        after in proptest::collection::vec(any::<u8>(), 0..64),
        chunks in chunks(),
    ) {
        let mut bytes = Vec::new();
        h.encode_into(&mut bytes).expect("encodes");
        prop_assert_eq!(bytes.len(), h.encoded_len());
        prop_assert!(bytes.len() <= MAX_HEADER);
        let len = bytes.len();
        bytes.extend_from_slice(&after);
        let mut r = Chunked::new(bytes, chunks, End::Eof);
        prop_assert_eq!(Outcome::from(read(&mut r)), Outcome::Header(h));
        prop_assert_eq!(r.pos, len);
    }

    /// Every strict prefix of an encoded header, in any chunks, is `Truncated` once the stream
    /// ends (an i/o error when it fails instead), having read the whole prefix.
    #[test]
    fn strict_prefixes_of_a_header_are_truncated(
        h in header(),
        cut in any::<prop::sample::Index>(),
        chunks in chunks(),
        end in end(),
    ) {
        let bytes = h.encode().expect("encodes");
        let cut = cut.index(bytes.len());
        let mut r = Chunked::new(bytes[..cut].to_vec(), chunks, end);
        let want = match end {
            End::Eof => Outcome::Truncated,
            End::Error => Outcome::Io,
        };
        prop_assert_eq!(Outcome::from(read(&mut r)), want);
        prop_assert_eq!(r.pos, cut);
    }
}
