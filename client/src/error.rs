//! The client's one error type, [`ClientError`]: what failed, in the words the CLI prints, with
//! the request, address or file in fields and the underlying error as its source, so that
//! `{:#}` in an `anyhow` caller prints the whole chain on one line.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to a Meridian agent or probing a datacenter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The ACL token cannot be sent in an HTTP header (the token itself is never shown).
    #[error("the ACL token is not valid in an HTTP header")]
    InvalidToken(#[source] reqwest::header::InvalidHeaderValue),

    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),

    /// A request got no answer: nothing listening, the connection refused or reset, or no
    /// answer within the request's time limit.
    #[error("{method} {url}: no answer")]
    NoAnswer {
        /// The HTTP method.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// Why, by its innermost cause.
        #[source]
        source: TransportError,
    },

    /// The API answered with an error status; `message` is the API's own.
    #[error(
        "{method} {url}: {status} {reason}{}{message}",
        if message.is_empty() { "" } else { ": " }
    )]
    Status {
        /// The HTTP method.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// Its reason phrase (empty for an unknown code).
        reason: String,
        /// The body the API sent, trimmed.
        message: String,
    },

    /// The answer's body is larger than the client reads.
    #[error("{method} {url}: answer too large (over {limit} bytes)")]
    AnswerTooLarge {
        /// The HTTP method.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// The largest body read, in bytes.
        limit: usize,
    },

    /// The answer's body was cut off (or timed out) while being read.
    #[error("{method} {url}: answer cut")]
    AnswerCut {
        /// The HTTP method.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// The read's error.
        #[source]
        source: reqwest::Error,
    },

    /// The answer is not the JSON expected.
    #[error("{method} {url}: unexpected answer")]
    InvalidJson {
        /// The HTTP method.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },

    /// An answer decoded but lacks what the client needs (a field, an array).
    #[error("{url} {problem}")]
    IncompleteAnswer {
        /// The URL (or API path) that answered.
        url: String,
        /// What is wrong with it, e.g. `has no Config.Datacenter`.
        problem: &'static str,
    },

    /// The node at `base` could not tell who it is.
    #[error("cannot reach the Meridian node at {base}")]
    NodeUnreachable {
        /// Base URL of its HTTP API.
        base: String,
        /// The request's failure.
        #[source]
        source: Box<ClientError>,
    },

    /// An address a node reported about itself cannot be used.
    #[error("bad {field} from {base}")]
    NodeAddress {
        /// Base URL of the node's HTTP API.
        base: String,
        /// The field of `/v1/agent/self`, e.g. `Meridian.DnsAddr`.
        field: &'static str,
        /// Why it cannot be used.
        #[source]
        source: Box<ClientError>,
    },

    /// Text that should be a socket address (`ip:port`) is not one.
    #[error("{text:?} is not an address")]
    InvalidAddress {
        /// The text.
        text: String,
        /// The parse error.
        #[source]
        source: std::net::AddrParseError,
    },

    /// A host name could not be resolved to an address (in time).
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host (with its port).
        host: String,
        /// The resolver's error, a timeout, or no address.
        #[source]
        source: std::io::Error,
    },

    /// A DNS name to query is not valid.
    #[error("bad DNS name {name:?}")]
    InvalidDnsName {
        /// The name.
        name: String,
        /// Why it is not valid (or could not be encoded).
        #[source]
        source: hickory_net::proto::ProtoError,
    },

    /// A DNS query could not be sent to a DNS server, or its answer not received.
    #[error("DNS exchange failed")]
    Dns {
        /// The DNS server.
        server: SocketAddr,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },

    /// A name to send as SNI is not a valid DNS name.
    #[error("bad SNI {sni:?}")]
    InvalidSni {
        /// The name.
        sni: String,
        /// Why it is not valid.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },

    /// A TLS probe could not connect to a gateway over TCP.
    #[error("cannot connect to the gateway")]
    GatewayConnect {
        /// The gateway.
        gateway: SocketAddr,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },

    /// A TLS probe's handshake through a gateway failed (an alert, a bad certificate, a close).
    #[error("TLS handshake failed")]
    TlsHandshake {
        /// The gateway.
        gateway: SocketAddr,
        /// The TLS error.
        #[source]
        source: std::io::Error,
    },

    /// A TLS probe did not complete its connection and handshake in time.
    #[error("no TLS handshake within {limit:?}")]
    TlsTimeout {
        /// The gateway.
        gateway: SocketAddr,
        /// The time allowed.
        limit: Duration,
    },

    /// The TLS client of the probes could not be set up.
    #[error("cannot set up the TLS client")]
    TlsConfig(#[source] rustls::Error),

    /// The CA certificates file (`--ca`) cannot be read or is not PEM.
    #[error("cannot read the CA certificates in {}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The read or PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    /// A certificate of the CA certificates file is not usable as a root.
    #[error("bad certificate in {}", path.display())]
    CaCertificate {
        /// The file.
        path: PathBuf,
        /// Why it is not usable.
        #[source]
        source: rustls::Error,
    },

    /// The CA certificates file holds no certificate.
    #[error("no certificate in {}", path.display())]
    NoCaCertificate {
        /// The file.
        path: PathBuf,
    },
}

impl ClientError {
    /// The HTTP status the API answered with, when that is the error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::NodeUnreachable { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The error and its sources on one line, separated by `: ` (as `anyhow` prints `{:#}`).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = self.source();
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

/// Why a request got no answer, shown as its innermost cause (`Connection refused (os error
/// 111)`, `operation timed out`): reqwest's outer layers repeat the URL and say little more. The
/// whole error stays available through [`TransportError::get_ref`].
#[derive(Debug)]
pub struct TransportError(reqwest::Error);

impl TransportError {
    /// Wraps a failed request's error.
    pub(crate) fn new(e: reqwest::Error) -> Self {
        TransportError(e)
    }

    /// Whether the request ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.0.is_timeout()
    }

    /// Whether the connection could not be made.
    pub fn is_connect(&self) -> bool {
        self.0.is_connect()
    }

    /// The reqwest error, with its whole chain.
    pub fn get_ref(&self) -> &reqwest::Error {
        &self.0
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cause: &dyn StdError = &self.0;
        while let Some(next) = cause.source() {
            cause = next;
        }
        fmt::Display::fmt(cause, f)
    }
}

// No `source()`: the message is already the innermost cause.
impl StdError for TransportError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_read_as_before() {
        let e = ClientError::Status {
            method: "GET",
            url: "http://h:1/v1/x".into(),
            status: 503,
            reason: "Service Unavailable".into(),
            message: "no leader".into(),
        };
        assert_eq!(
            e.to_string(),
            "GET http://h:1/v1/x: 503 Service Unavailable: no leader"
        );
        assert_eq!(e.status(), Some(503));
        let empty = ClientError::Status {
            method: "PUT",
            url: "u".into(),
            status: 404,
            reason: "Not Found".into(),
            message: String::new(),
        };
        assert_eq!(empty.to_string(), "PUT u: 404 Not Found");
        let wrapped = ClientError::NodeUnreachable {
            base: "http://h:1".into(),
            source: Box::new(e),
        };
        assert_eq!(wrapped.status(), Some(503));
    }

    #[test]
    fn chains_print_every_cause() {
        let e = ClientError::NodeAddress {
            base: "http://h:1".into(),
            field: "Meridian.DnsAddr",
            source: Box::new(ClientError::InvalidAddress {
                text: "nope".into(),
                source: "nope".parse::<SocketAddr>().expect_err("not an address"),
            }),
        };
        let chain = e.chain();
        assert!(
            chain.starts_with("bad Meridian.DnsAddr from http://h:1: \"nope\" is not an address: "),
            "{chain}"
        );
        assert_eq!(chain, format!("{:#}", anyhow::Error::new(e)));
    }
}
