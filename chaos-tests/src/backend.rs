//! The services behind the gateways: one TLS server per DC that names its DC in its first line,
//! so a client knows end to end which DC a connection reached, and the client that opens such
//! connections through a gateway (with the service name as SNI, checking the backend's
//! certificate against the test CA).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use meridian_identity::{PemPair, Role, create_node_cert};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

/// The service every backend serves.
pub const SERVICE: &str = "web";

/// A TLS server for DC `dc`, answering `dcN\n` and then echoing.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Backend {
    /// Starts DC `dc`'s backend on `addr` with a certificate from `ca` for the service's names.
    pub async fn start(dc: usize, addr: SocketAddr, ca: &PemPair) -> Result<Backend> {
        let dc_name = crate::addr::dc_name(dc);
        let sans = vec![
            format!("{SERVICE}.service.consul"),
            format!("{SERVICE}.service.{dc_name}.consul"),
        ];
        let pair = create_node_cert(ca, &dc_name, SERVICE, Role::Server, &sans, 2)?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("backend cannot listen on {addr}"))?;
        let banner = format!("{dc_name}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, banner) = (acceptor.clone(), banner.clone());
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) =
                        timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    if tls.write_all(banner.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = tls.flush().await;
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(Backend { addr, task })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens TLS connections through gateways and reads which DC answered.
#[derive(Clone)]
pub struct Client {
    connector: tokio_rustls::TlsConnector,
}

impl Client {
    /// A client trusting only `ca`.
    pub fn new(ca: &PemPair) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Connects through `gateway` asking for `sni`; the open stream and the DC that answered.
    pub async fn open(
        &self,
        gateway: SocketAddr,
        sni: &str,
        limit: Duration,
    ) -> Result<(BufReader<TlsStream<TcpStream>>, String)> {
        let name = ServerName::try_from(sni.to_owned()).context("bad SNI")?;
        let attempt = async {
            let tcp = TcpStream::connect(gateway).await.context("connect")?;
            tcp.set_nodelay(true)?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .context("handshake")?;
            let mut tls = BufReader::new(tls);
            let mut line = String::new();
            tls.read_line(&mut line)
                .await
                .context("reading the banner")?;
            let dc = line.trim().to_owned();
            if dc.is_empty() {
                bail!("closed before the banner");
            }
            Ok((tls, dc))
        };
        timeout(limit, attempt).await.context("timeout")?
    }

    /// Sends a line on an open connection and waits for its echo: whether it still carries data.
    pub async fn ping(conn: &mut BufReader<TlsStream<TcpStream>>, limit: Duration) -> Result<()> {
        let attempt = async {
            conn.get_mut().write_all(b"ping\n").await?;
            conn.get_mut().flush().await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            if line.trim() != "ping" {
                bail!("echo was {line:?}");
            }
            Ok(())
        };
        timeout(limit, attempt).await.context("timeout")?
    }
}
