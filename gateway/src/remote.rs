//! Carrying a client connection to another datacenter: a stream through the tunnel (the pooled
//! QUIC connection, or TCP + TLS), opened with the header ([`crate::header`]) and the
//! ClientHello in one write, then the wait for the remote side's first answer.
//!
//! Until that answer the client has received nothing, so a DC that does not answer can be
//! rescued: if the name now resolves elsewhere (the DC was just found down), the same
//! ClientHello is replayed there, at most [`MAX_RESCUES`] times. After it, the connection is
//! relayed both ways like a local one.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::ConnError;
use crate::header::Header;
use crate::local::LocalGateway;
use crate::route::Target;

/// Most times a connection to another DC that never answered is resolved and sent again.
pub(crate) const MAX_RESCUES: usize = 2;

impl LocalGateway {
    /// Relays `client`, whose ClientHello `hello` asked for `sni`, to datacenter `dc` through
    /// one of its `gateways`; returns the route (`remote`, or `local` after a rescue here) and
    /// the bytes copied each way, the ClientHello and the first answer included. Only a
    /// `rescuable` name (a service, not a federation name) is sent elsewhere when `dc` does
    /// not answer.
    pub(crate) async fn relay_remote(
        &self,
        client: &mut TcpStream,
        sni: String,
        mut dc: String,
        mut gateways: Vec<SocketAddr>,
        hello: &[u8],
        rescuable: bool,
    ) -> Result<(&'static str, u64, u64), ConnError> {
        let Some(tunnel) = &self.tunnel else {
            return Err(ConnError::Remote { sni, dc });
        };
        // Its share of each DC's stream budget is per client address.
        let client_ip = client.peer_addr().ok().map(|a| a.ip());
        let mut rescues = 0;
        let (mut remote, _permit, answer) = loop {
            let attempt = async {
                let (mut remote, permit) = tunnel.open(&dc, &gateways, client_ip).await?;
                let header = Header {
                    name: sni.clone(),
                    dc: dc.clone(),
                };
                // Header and ClientHello in one write: one frame, one packet across the WAN.
                let mut first = Vec::with_capacity(header.encoded_len() + hello.len());
                header
                    .encode_into(&mut first)
                    .map_err(|_| ConnError::BadHeader("name too long".into()))?;
                first.extend_from_slice(hello);
                let answer = tokio::time::timeout(
                    self.config.idle_timeout,
                    first_answer(&mut remote, &first),
                )
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))?;
                Ok::<_, ConnError>((remote, permit, answer))
            };
            let error = match attempt.await {
                Ok(done) => break done,
                Err(e) => e,
            };
            if !rescuable {
                return Err(error);
            }
            // Nothing reached the client yet: if the name now resolves elsewhere (the DC was
            // just found down), replay the ClientHello there.
            let next = self.target(&sni, false)?;
            let moved = match &next {
                Target::Remote { dc: d, .. } => !d.eq_ignore_ascii_case(&dc),
                Target::Local(_) => true,
            };
            if !moved || rescues == MAX_RESCUES {
                return Err(error);
            }
            rescues += 1;
            self.counters.rescues.fetch_add(1, Ordering::Relaxed);
            debug!(%dc, error = %error, "remote DC did not answer; sending the connection where the name resolves now");
            match next {
                Target::Remote { dc: d, gateways: g } => (dc, gateways) = (d, g),
                Target::Local(candidates) => {
                    return self.relay_local(client, &sni, candidates, hello).await;
                }
            }
        };
        client.write_all(&answer).await?;
        self.counters
            .bytes_down
            .fetch_add(answer.len() as u64, Ordering::Relaxed);
        let (up, down) = self.copy(client, &mut remote).await?;
        Ok((
            "remote",
            up + hello.len() as u64,
            down + answer.len() as u64,
        ))
    }
}

/// Writes `first` (header and ClientHello) to a tunnel stream and waits for the remote side's
/// first bytes. Until they come the client has received nothing, so a stream that fails here can
/// still be sent elsewhere with the same ClientHello.
async fn first_answer<S>(remote: &mut S, first: &[u8]) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    remote.write_all(first).await?;
    let mut answer = Vec::with_capacity(crate::relay::BUF);
    if remote.read_buf(&mut answer).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the remote side closed without answering",
        ));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_answer_is_awaited_and_a_silent_close_is_an_error() {
        let (mut near, mut far) = tokio::io::duplex(1024);
        let peer = tokio::spawn(async move {
            let mut got = [0u8; 5];
            far.read_exact(&mut got).await.expect("read");
            far.write_all(b"answer").await.expect("write");
            got
        });
        let answer = first_answer(&mut near, b"first").await.expect("answered");
        assert_eq!(answer, b"answer");
        assert_eq!(&peer.await.expect("join"), b"first");

        let (mut near, mut far) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut got = [0u8; 5];
            let _ = far.read_exact(&mut got).await;
            let _ = far.shutdown().await;
        });
        let err = first_answer(&mut near, b"first").await.expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
