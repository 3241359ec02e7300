//! Test fixtures shared by the connection-path tests (`serve.rs`, `inbound.rs`, `gateway.rs`):
//! views, a configuration, a TLS backend and client with certificates made at run time, and
//! real ClientHellos. Compiled for tests only.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_topology::dc::DcState;
use meridian_topology::{Instance, RemoteDc, View, Weights};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

use crate::local::LocalConfig;
use crate::route::NameConfig;

/// The name the TLS backend holds a certificate for.
pub const NAME: &str = "web.service.consul";

/// The crypto provider of every test config.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An instance of `service` on loopback.
pub fn instance(id: &str, service: &str, port: u16) -> Instance {
    Instance {
        id: id.to_owned(),
        service: service.into(),
        node: "n1".into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec![],
        meta: Default::default(),
        weights: Weights::default(),
        create_index: 0,
        modify_index: 0,
        proxy: None,
    }
}

/// A catalog with one `web` instance per port.
pub fn web_state(ports: &[u16]) -> DcState {
    let mut s = DcState::default();
    for (i, port) in ports.iter().enumerate() {
        s.register(
            instance(&format!("web-{i}"), "web", *port),
            vec![],
            i as u64 + 1,
        );
    }
    s
}

/// DC `dc1` with one `web` instance per port.
pub fn view(ports: &[u16]) -> View {
    View::new("dc1", web_state(ports))
}

/// DC `local`, with remote DC `remote` whose catalog is `state` plus a gateway at `gateway`.
pub fn view_with_remote(local: &str, remote: &str, mut state: DcState, gateway: u16) -> View {
    state.register(
        instance("gw", meridian_topology::GATEWAY_SERVICE, gateway),
        vec![],
        1000,
    );
    let dc = RemoteDc {
        name: remote.into(),
        state,
        connected: true,
        synced: true,
        ..RemoteDc::default()
    };
    View::new(local, DcState::default()).with_remotes(
        std::iter::once((Arc::<str>::from(remote.to_ascii_lowercase()), Arc::new(dc))).collect(),
    )
}

/// Settings for `consul` names, with this handshake timeout.
pub fn config(handshake_timeout: Duration) -> LocalConfig {
    LocalConfig {
        names: NameConfig {
            domains: vec!["consul".into()],
            trust_domain: None,
        },
        handshake_timeout,
        connect_timeout: Duration::from_secs(2),
        only_passing: false,
        idle_timeout: Duration::from_secs(30),
        max_connections: 64,
        max_connections_per_client: 64,
        export: None,
        own: crate::route::OwnAddrs::default(),
        federation: None,
    }
}

/// A self-signed certificate for `names` and its key.
pub fn cert(names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let ck = rcgen::generate_simple_self_signed(names).expect("cert");
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    (ck.cert.der().clone(), key)
}

/// A rustls server holding a self-signed certificate for `NAME`: answers `pong:` and the
/// first four bytes it reads, then closes. Returns its address and the certificate.
pub fn tls_backend() -> (SocketAddr, CertificateDer<'static>) {
    tls_backend_for(NAME)
}

/// [`tls_backend`], with a certificate for `name`.
pub fn tls_backend_for(name: &str) -> (SocketAddr, CertificateDer<'static>) {
    let (cert, key) = cert(&[name]);
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let conn = ServerConnection::new(config).expect("server conn");
                let mut tls = StreamOwned::new(conn, sock);
                let mut ping = [0u8; 4];
                if tls.read_exact(&mut ping).is_ok() {
                    let _ = tls.write_all(b"pong:");
                    let _ = tls.write_all(&ping);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            });
        }
    });
    (addr, cert)
}

/// A rustls client trusting only `root`: sends `ping` to `name` through `addr` and reads
/// the answer to the end. Blocking.
pub fn tls_client(
    addr: SocketAddr,
    name: &str,
    root: CertificateDer<'static>,
) -> io::Result<Vec<u8>> {
    let mut roots = RootCertStore::empty();
    roots.add(root).map_err(io::Error::other)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let sock = std::net::TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(b"ping")?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out)?;
    Ok(out)
}

/// A port on loopback where nothing listens: connects are refused.
pub fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The first flight of a rustls client for `name`.
pub fn hello_for(name: &str) -> Vec<u8> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned()).expect("name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("write_tls");
    out
}
