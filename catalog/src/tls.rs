//! Mutual TLS on the LAN rpc port: the accept loop that admits only peers whose certificate the
//! configured verifier accepts, and the connector the Raft and forwarding clients dial with.
//!
//! The catalog does not decide who belongs to the DC: the caller builds the rustls
//! configurations (the agent requires a certificate from the DC's CA that names this DC). A
//! connection that fails the handshake never reaches Raft, so it cannot send a single entry.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::server::Connected;
use tracing::{info, warn};

/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

/// The rpc port's TLS: who this node accepts, how it dials its peers.
#[derive(Clone)]
pub struct RpcTls {
    /// Server side: must require and verify client certificates.
    pub server: Arc<rustls::ServerConfig>,
    /// Client side: presents this node's certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// The name every server of the DC proves (its certificate is valid for it).
    pub server_name: ServerName<'static>,
    /// Time an incoming connection has to finish its handshake.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for RpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTls")
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// A TLS connection from an authenticated peer of the DC.
pub(crate) struct PeerConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for PeerConn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` and yields those that complete the handshake; refusals
/// are logged and counted in `refused`. Ends when the receiver is dropped.
pub(crate) fn accept_loop(
    listener: TcpListener,
    tls: &RpcTls,
    refused: Arc<AtomicU64>,
) -> mpsc::Receiver<std::io::Result<PeerConn>> {
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let timeout = tls.handshake_timeout;
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "rpc accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let (acceptor, tx, refused) = (acceptor.clone(), tx.clone(), refused.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(PeerConn(stream))).await;
                    }
                    Ok(Err(e)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        info!(%peer, error = %e, "rpc connection refused: TLS handshake failed");
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        info!(%peer, ?timeout, "rpc connection refused: TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// Connects to `addr` (`host:port`) and runs the client handshake, requiring the peer to prove
/// `tls.server_name`.
pub(crate) async fn connect(
    tls: &RpcTls,
    addr: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
}
