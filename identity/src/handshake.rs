//! Bounded TLS handshakes over tokio: accept, connect (from a chosen source address), discover.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::{CertificateError, ClientConfig};
use tokio::net::TcpStream;

use crate::error::TlsError;
use crate::names::{Identity, peer_identity, server_name};

/// A TCP connection to `to`, from `source` when given (and of the same family).
async fn connect_tcp(
    to: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    match source {
        Some(ip) if ip.is_ipv4() == to.is_ipv4() => {
            let socket = if to.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
            socket.connect(to).await
        }
        _ => TcpStream::connect(to).await,
    }
}

/// Connects to `addr` as [`connect`] does, accepting a server of any datacenter under the CA
/// (`config` from [`crate::TlsMaterial::discovery_client_config`]), and returns the identity its
/// certificate names.
pub async fn discover(
    config: Arc<ClientConfig>,
    addr: &str,
    timeout: Duration,
    source: Option<std::net::IpAddr>,
) -> Result<Identity, TlsError> {
    // The name is not checked by the discovery verifier; any valid one will do.
    let stream = connect_from(config, addr, "join", timeout, source).await?;
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| TlsError::NoIdentity {
            reason: format!("{addr} presented no certificate"),
        })?;
    peer_identity(cert)
}

/// Sorts a failed handshake into [`TlsError::Handshake`], [`TlsError::WrongName`] (when the client
/// expected `expected_dc`) or [`TlsError::Io`].
fn handshake_error(peer: String, expected_dc: Option<&str>, err: io::Error) -> TlsError {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match (tls, expected_dc) {
        (
            Some(
                source @ rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ),
            ),
            Some(dc),
        ) => TlsError::WrongName {
            peer,
            expected_dc: dc.to_owned(),
            source: Box::new(source),
        },
        (Some(source), _) => TlsError::Handshake {
            peer,
            source: Box::new(source),
        },
        (None, _) => TlsError::Io {
            op: "TLS handshake with",
            peer,
            source: err,
        },
    }
}

/// Runs the server side of the handshake on `tcp`, bounded by `timeout`, and returns the stream
/// with the identity the client's (verified) certificate names.
#[tracing::instrument(level = "debug", skip_all, fields(peer))]
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Identity), TlsError> {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_owned(), |addr| addr.to_string());
    tracing::Span::current().record("peer", peer.as_str());
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(handshake_error(peer, None, err)),
        Err(_) => {
            return Err(TlsError::Timeout {
                op: "TLS handshake with",
                peer,
                after: timeout,
            });
        }
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| TlsError::NoIdentity {
            reason: format!("{peer} presented no certificate"),
        })?;
    let identity = peer_identity(cert)?;
    tracing::debug!(%identity, "federation peer authenticated");
    Ok((stream, identity))
}

/// Connects to `addr` (`host:port`, resolved now; each address is tried in turn) and runs the
/// client side of the handshake, requiring the server to be a server of `dc`. The whole (resolve,
/// connect, handshake) is bounded by `timeout`.
pub async fn connect(
    config: Arc<ClientConfig>,
    addr: &str,
    dc: &str,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    connect_from(config, addr, dc, timeout, None).await
}

/// [`connect`] from the local address `source` (any when `None`), so that WAN traffic leaves
/// from the node's own address on a host with several.
#[tracing::instrument(level = "debug", skip_all, fields(peer = addr, dc))]
pub async fn connect_from(
    config: Arc<ClientConfig>,
    addr: &str,
    dc: &str,
    timeout: Duration,
    source: Option<std::net::IpAddr>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    let name = server_name(dc)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let attempt = async {
        let addrs = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| TlsError::Io {
                op: "resolve",
                peer: addr.to_owned(),
                source,
            })?;
        let mut last_error = None;
        for sock_addr in addrs {
            let tcp = match connect_tcp(sock_addr, source).await {
                Ok(tcp) => tcp,
                Err(source) => {
                    tracing::debug!(%sock_addr, error = %source, "connect failed");
                    last_error = Some(TlsError::Io {
                        op: "connect to",
                        peer: sock_addr.to_string(),
                        source,
                    });
                    continue;
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            return connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|err| handshake_error(sock_addr.to_string(), Some(dc), err));
        }
        Err(last_error.unwrap_or_else(|| TlsError::Io {
            op: "resolve",
            peer: addr.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TlsError::Timeout {
            op: "TLS connection to",
            peer: addr.to_owned(),
            after: timeout,
        }),
    }
}
