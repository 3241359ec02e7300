//! The identity crate's tests: issuing, loading, handshakes and names.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::CertificateError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::issue::ca_issuer;
use crate::names::identity_of;
use crate::*;

/// Handshake budget for the tests that expect success (loopback, so far more than enough).
const LONG: Duration = Duration::from_secs(10);

type Accepted = Result<(tokio_rustls::server::TlsStream<TcpStream>, Identity), TlsError>;

fn node(ca: &PemPair, dc: &str, node: &str) -> TlsMaterial {
    let pair = create_node_cert(ca, dc, node, Role::Server, &[], 30).expect("node certificate");
    TlsMaterial::from_pem(&ca.cert_pem, &pair.cert_pem, &pair.key_pem).expect("material")
}

fn x509_of(pem: &str, check: impl FnOnce(&X509Certificate<'_>)) {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    check(&x509);
}

/// A loopback listener whose first connection goes through [`accept`] with `timeout`.
async fn serve_once(server: &TlsMaterial, timeout: Duration) -> (String, JoinHandle<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let acceptor = TlsAcceptor::from(server.server_config().expect("server config"));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("TCP accept");
        accept(&acceptor, tcp, timeout).await
    });
    (addr, task)
}

#[test]
fn create_ca_makes_a_p256_ca_with_path_length_zero_for_ten_years() {
    let ca = create_ca(DEFAULT_CA_COMMON_NAME).expect("CA");
    assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    x509_of(&ca.cert_pem, |x509| {
        assert_eq!(x509.subject(), x509.issuer());
        let cn = x509.subject().iter_common_name().next().expect("CN");
        assert_eq!(cn.as_str().expect("CN text"), DEFAULT_CA_COMMON_NAME);
        let bc = x509
            .basic_constraints()
            .expect("ext")
            .expect("basicConstraints");
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = x509.key_usage().expect("ext").expect("keyUsage").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(
            x509.public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok()),
            Some(x509_parser::oid_registry::OID_EC_P256)
        );
        let years = (x509.validity().not_after.timestamp()
            - x509.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert_eq!(years, 10);
    });
    assert!(matches!(create_ca(" "), Err(TlsError::InvalidName { .. })));
}

#[test]
fn node_cert_carries_the_federation_names_extra_sans_and_both_ekus() {
    let ca = create_ca("Test CA").expect("CA");
    let extra = ["10.0.0.7".to_owned(), "Fed.Example.COM".to_owned()];
    let pair =
        create_node_cert(&ca, "dc1", "n1", Role::Server, &extra, 90).expect("node certificate");
    x509_of(&pair.cert_pem, |x509| {
        let cn = x509.subject().iter_common_name().next().expect("CN");
        assert_eq!(cn.as_str().expect("CN text"), "n1.server.dc1.meridian");
        let sans = x509.subject_alternative_name().expect("ext").expect("SAN");
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => (*dns).to_owned(),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "server.dc1.meridian",
                "n1.server.dc1.meridian",
                "ip:[10, 0, 0, 7]",
                "fed.example.com"
            ]
        );
        let eku = x509.extended_key_usage().expect("ext").expect("EKU").value;
        assert!(eku.server_auth && eku.client_auth);
        let bc = x509
            .basic_constraints()
            .expect("ext")
            .expect("basicConstraints");
        assert!(!bc.value.ca);
        let days = (x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp())
            / (24 * 3600);
        assert_eq!(days, 90, "90 days plus the clock-skew allowance");
    });
    let id = peer_identity(&CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("PEM"))
        .expect("identity");
    assert_eq!(
        id,
        Identity {
            dc: "dc1".into(),
            node: "n1".into(),
            role: Role::Server,
        }
    );
}

/// (a) Two nodes of different datacenters, one CA: the handshake completes, the server sees
/// the client's identity and the client has verified `server.dc1.meridian`.
#[tokio::test]
async fn nodes_of_two_dcs_signed_by_one_ca_complete_a_handshake() {
    let ca = create_ca("Test CA").expect("CA");
    let server = node(&ca, "dc1", "n1");
    let client = node(&ca, "dc2", "n2");
    assert_eq!(
        client.identity(),
        &Identity {
            dc: "dc2".into(),
            node: "n2".into(),
            role: Role::Server,
        }
    );
    assert_eq!(
        server_name("dc1").expect("name").to_str(),
        "server.dc1.meridian"
    );

    let (addr, task) = serve_once(&server, LONG).await;
    let config = client.client_config().expect("client config");
    let mut tls = connect(config, &addr, "dc1", LONG)
        .await
        .expect("client handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));

    let (mut served, identity) = task.await.expect("join").expect("server handshake");
    assert_eq!(
        identity,
        Identity {
            dc: "dc2".into(),
            node: "n2".into(),
            role: Role::Server,
        }
    );
    assert_eq!(served.get_ref().1.alpn_protocol(), Some(ALPN_H2));

    tls.write_all(b"ping").await.expect("client write");
    tls.flush().await.expect("client flush");
    let mut buf = [0; 4];
    served.read_exact(&mut buf).await.expect("server read");
    assert_eq!(&buf, b"ping");
    served.write_all(b"pong").await.expect("server write");
    served.flush().await.expect("server flush");
    tls.read_exact(&mut buf).await.expect("client read");
    assert_eq!(&buf, b"pong");
}

/// (b) A client whose certificate comes from another CA is refused by the server, even though
/// the client itself trusts the server's CA.
#[tokio::test]
async fn client_with_a_certificate_from_another_ca_is_refused() {
    let ca = create_ca("Test CA").expect("CA");
    let rogue_ca = create_ca("Rogue CA").expect("rogue CA");
    let server = node(&ca, "dc1", "n1");
    let rogue =
        create_node_cert(&rogue_ca, "dc1", "n2", Role::Server, &[], 30).expect("rogue cert");
    let both_roots = format!("{}{}", ca.cert_pem, rogue_ca.cert_pem);
    let client =
        TlsMaterial::from_pem(&both_roots, &rogue.cert_pem, &rogue.key_pem).expect("material");

    let (addr, task) = serve_once(&server, LONG).await;
    // TLS 1.3: the client finishes its side before the server has judged its certificate.
    let client_result = connect(client.client_config().expect("config"), &addr, "dc1", LONG).await;
    let err = task
        .await
        .expect("join")
        .expect_err("server must refuse the client");
    assert!(
        matches!(
            &err,
            TlsError::Handshake { source, .. } if matches!(
                **source,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            )
        ),
        "{err}"
    );
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    if let Ok(mut tls) = client_result {
        let mut buf = [0; 1];
        assert!(
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0),
            "the refused client must not receive data"
        );
    }
}

/// (c) A client expecting dc3 refuses a dc1 server: the name does not match.
#[tokio::test]
async fn client_expecting_another_dc_refuses_the_server() {
    let ca = create_ca("Test CA").expect("CA");
    let server = node(&ca, "dc1", "n1");
    let client = node(&ca, "dc3", "n3");
    let (addr, task) = serve_once(&server, LONG).await;
    let err = connect(client.client_config().expect("config"), &addr, "dc3", LONG)
        .await
        .expect_err("the name must not match");
    assert!(
        matches!(&err, TlsError::WrongName { expected_dc, .. } if expected_dc == "dc3"),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("\"dc3\""), "{err}");
    assert!(task.await.expect("join").is_err());
}

fn node_in_role(ca: &PemPair, dc: &str, node: &str, role: Role) -> TlsMaterial {
    let pair = create_node_cert(ca, dc, node, role, &[], 30).expect("node certificate");
    TlsMaterial::from_pem(&ca.cert_pem, &pair.cert_pem, &pair.key_pem).expect("material")
}

/// One handshake of `client` against `server`'s rpc-port configuration: did the server accept?
async fn rpc_port_accepts(server: &TlsMaterial, client: &TlsMaterial) -> bool {
    rpc_port_accepts_config(server, client.client_config().expect("config")).await
}

/// [`rpc_port_accepts`] for a client's raw rustls configuration.
async fn rpc_port_accepts_config(
    server: &TlsMaterial,
    client: std::sync::Arc<rustls::ClientConfig>,
) -> bool {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let acceptor = TlsAcceptor::from(server.lan_server_config().expect("rpc config"));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("TCP accept");
        accept(&acceptor, tcp, LONG).await
    });
    let dc = server.identity().dc.clone();
    // TLS 1.3: the client finishes its side before the server has judged its certificate.
    let _ = connect(client, &addr, &dc, LONG).await;
    task.await.expect("join").is_ok()
}

/// A gateway certificate names its role, and the rpc port (Raft and write forwarding) admits
/// servers of its own datacenter only: not a gateway-only node of that DC, not a server of
/// another.
#[tokio::test]
async fn the_rpc_port_admits_servers_of_its_dc_and_refuses_gateways() {
    let ca = create_ca("Test CA").expect("CA");
    let server = node(&ca, "dc1", "n1");
    let gateway = node_in_role(&ca, "dc1", "g1", Role::Gateway);
    assert_eq!(
        gateway.identity(),
        &Identity {
            dc: "dc1".into(),
            node: "g1".into(),
            role: Role::Gateway,
        }
    );
    assert_eq!(gateway.identity().to_string(), "dc1/g1 (gateway)");
    assert!(rpc_port_accepts(&server, &node(&ca, "dc1", "n2")).await);
    assert!(!rpc_port_accepts(&server, &gateway).await);
    assert!(!rpc_port_accepts(&server, &node(&ca, "dc2", "n2")).await);
    // Elsewhere (federation, the tunnel) a gateway is an authenticated client like any node.
    let (addr, task) = serve_once(&server, LONG).await;
    connect(gateway.client_config().expect("config"), &addr, "dc1", LONG)
        .await
        .expect("gateway as a client");
    let (_, identity) = task.await.expect("join").expect("server side");
    assert_eq!(identity.role, Role::Gateway);
}

/// A server certificate of this very DC is refused on the rpc port once expired, or before it
/// is valid: the port checks the validity period as well as the DC and the role.
#[tokio::test]
async fn an_expired_server_certificate_is_refused_on_the_rpc_port() {
    let ca = create_ca("Test CA").expect("CA");
    let server = node(&ca, "dc1", "n1");
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    for period in [(now - 30 * day, now - day), (now + day, now + 30 * day)] {
        let pair = crate::issue::sign_node_cert(&ca, "dc1", "n2", Role::Server, &[], period)
            .expect("node certificate");
        // A node refuses to load such material; an attacker's client presents it anyway.
        assert!(TlsMaterial::from_pem(&ca.cert_pem, &pair.cert_pem, &pair.key_pem).is_err());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("CA"))
            .expect("root");
        let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("cert")],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).expect("key"),
        )
        .expect("client config");
        assert!(
            !rpc_port_accepts_config(&server, std::sync::Arc::new(client)).await,
            "{period:?}"
        );
    }
    // The same node with a valid certificate is admitted.
    assert!(rpc_port_accepts(&server, &node(&ca, "dc1", "n2")).await);
}

/// A gateway certificate cannot pose as a server: a client that verifies `server.dc1.meridian`
/// refuses it, and a join (which looks for a server of any DC) does too.
#[tokio::test]
async fn a_gateway_certificate_cannot_pose_as_a_server() {
    let ca = create_ca("Test CA").expect("CA");
    let gateway = node_in_role(&ca, "dc1", "g1", Role::Gateway);
    let client = node(&ca, "dc2", "n2");
    let (addr, _task) = serve_once(&gateway, LONG).await;
    let err = connect(client.client_config().expect("config"), &addr, "dc1", LONG)
        .await
        .expect_err("a gateway is not a server");
    assert!(matches!(err, TlsError::WrongName { .. }), "{err}");
    let (addr, _task) = serve_once(&gateway, LONG).await;
    let config = client.discovery_client_config().expect("discovery config");
    assert!(discover(config, &addr, LONG, None).await.is_err());
}

/// The tunnel's client takes a gateway-only node of the DC it dials (it carries that DC's
/// tunnel) and still refuses one of another DC; federation's client refuses it (above).
#[tokio::test]
async fn the_tunnel_client_takes_either_role_of_the_dialled_datacenter_only() {
    let ca = create_ca("Test CA").expect("CA");
    let client = node(&ca, "dc2", "n2");
    for (server, dc, ok) in [
        (node_in_role(&ca, "dc1", "g1", Role::Gateway), "dc1", true),
        (node(&ca, "dc1", "n1"), "dc1", true),
        (node_in_role(&ca, "dc3", "g3", Role::Gateway), "dc1", false),
        (node(&ca, "dc3", "n3"), "dc1", false),
    ] {
        let (addr, _task) = serve_once(&server, LONG).await;
        let config = client.tunnel_client_config().expect("config");
        let got = connect(config, &addr, dc, LONG).await;
        assert_eq!(
            got.is_ok(),
            ok,
            "{:?} dialled as {dc}: {got:?}",
            server.identity()
        );
    }
}

/// (d) Bytes that are not TLS make the handshake fail cleanly.
#[tokio::test]
async fn garbage_bytes_fail_the_handshake() {
    let ca = create_ca("Test CA").expect("CA");
    let server = node(&ca, "dc1", "n1");
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[0u8; 64][..],
    ] {
        let (addr, task) = serve_once(&server, LONG).await;
        let mut tcp = TcpStream::connect(&addr).await.expect("TCP connect");
        tcp.write_all(garbage).await.expect("write garbage");
        let err = task.await.expect("join").expect_err("not TLS");
        assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
        assert!(!err.is_transient());
        drop(tcp);
    }
}

/// (d) A client that connects and says nothing is dropped when the timeout expires.
#[tokio::test]
async fn silent_client_times_out() {
    let ca = create_ca("Test CA").expect("CA");
    let server = node(&ca, "dc1", "n1");
    let timeout = Duration::from_millis(300);
    let (addr, task) = serve_once(&server, timeout).await;
    let tcp = TcpStream::connect(&addr).await.expect("TCP connect");
    let started = tokio::time::Instant::now();
    let err = task.await.expect("join").expect_err("silent client");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, TlsError::Timeout { after, .. } if after == timeout),
        "{err}"
    );
    assert!(err.is_transient());
    assert!(elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
    drop(tcp);
}

#[tokio::test]
async fn connect_to_a_closed_port_is_an_io_error() {
    let ca = create_ca("Test CA").expect("CA");
    let client = node(&ca, "dc1", "n1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let err = connect(client.client_config().expect("config"), &addr, "dc1", LONG)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(
            err,
            TlsError::Io {
                op: "connect to",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
}

/// (e) Nodes made with the development CA federate, and are flagged as such.
#[tokio::test]
async fn dev_nodes_handshake_and_are_flagged_as_dev() {
    let server = TlsMaterial::dev("dc1", "n1", Role::Server).expect("dev server");
    let client = TlsMaterial::dev("dc2", "n2", Role::Server).expect("dev client");
    assert!(server.uses_dev_ca() && client.uses_dev_ca());
    let (addr, task) = serve_once(&server, LONG).await;
    connect(client.client_config().expect("config"), &addr, "dc1", LONG)
        .await
        .expect("client handshake");
    let (_, identity) = task.await.expect("join").expect("server handshake");
    assert_eq!(
        identity,
        Identity {
            dc: "dc2".into(),
            node: "n2".into(),
            role: Role::Server,
        }
    );

    let ca = create_ca("Test CA").expect("CA");
    assert!(!node(&ca, "dc1", "n1").uses_dev_ca());
}

#[test]
fn the_dev_ca_is_the_published_insecure_one_and_still_valid() {
    let ca = PemPair {
        cert_pem: DEV_CA_CERT_PEM.to_owned(),
        key_pem: DEV_CA_KEY_PEM.to_owned(),
    };
    ca_issuer(&ca).expect("the dev CA key matches its certificate");
    x509_of(DEV_CA_CERT_PEM, |x509| {
        let cn = x509.subject().iter_common_name().next().expect("CN");
        assert_eq!(cn.as_str().expect("CN text"), DEV_CA_COMMON_NAME);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let left_days = (x509.validity().not_after.timestamp() - now as i64) / (24 * 3600);
        assert!(
            left_days > 365,
            "the development CA expires within a year: make a new one (see src/dev_ca/README.md)"
        );
    });
}

/// (f) Datacenter and node names must be lowercase DNS labels; extra SANs must not pose as
/// federation names.
#[test]
fn invalid_names_and_sans_are_rejected() {
    let ca = create_ca("Test CA").expect("CA");
    let long = "a".repeat(64);
    for dc in ["", "DC1", "-dc", "dc-", "dc.1", "dc_1", long.as_str()] {
        let err = create_node_cert(&ca, dc, "n1", Role::Server, &[], 30).expect_err(dc);
        assert!(
            matches!(&err, TlsError::InvalidName { what: "datacenter name", value, .. } if value == dc),
            "{err}"
        );
    }
    let err =
        create_node_cert(&ca, "dc1", "N1", Role::Server, &[], 30).expect_err("uppercase node");
    assert_eq!(
        err.to_string(),
        "invalid node name \"N1\": only lowercase letters a-z, digits 0-9 and '-' are allowed"
    );
    create_node_cert(&ca, "d-1", &"n".repeat(63), Role::Server, &[], 30)
        .expect("63-character label");
    for san in [
        "server.dc2.meridian",
        "n9.server.dc2.meridian",
        "*.dc2.meridian",
        "X.MERIDIAN",
        "*.example.com",
        "host.",
        "not a name",
    ] {
        let err =
            create_node_cert(&ca, "dc1", "n1", Role::Server, &[san.to_owned()], 30).expect_err(san);
        assert!(
            matches!(
                &err,
                TlsError::InvalidName {
                    what: "extra SAN",
                    ..
                }
            ),
            "{err}"
        );
    }
    for days in [0, MAX_NODE_CERT_DAYS + 1] {
        assert!(matches!(
            create_node_cert(&ca, "dc1", "n1", Role::Server, &[], days),
            Err(TlsError::InvalidDays { .. })
        ));
    }
    assert!(server_name("Dc1").is_err());
}

#[test]
fn identity_comes_only_from_a_node_name_of_a_known_role() {
    assert_eq!(
        identity_of("n1.server.dc1.meridian"),
        Some(Identity {
            dc: "dc1".into(),
            node: "n1".into(),
            role: Role::Server,
        })
    );
    assert_eq!(
        identity_of("g1.gateway.dc1.meridian").map(|id| id.role),
        Some(Role::Gateway)
    );
    for name in [
        "server.dc1.meridian",
        "gateway.dc1.meridian",
        "n1.client.dc1.meridian",
        "n1.server.dc1.consul",
        "a.n1.server.dc1.meridian",
        "-n.server.dc1.meridian",
        "n1.server..meridian",
    ] {
        assert_eq!(identity_of(name), None, "{name}");
    }

    let plain = rcgen::generate_simple_self_signed(["example.com".to_owned()]).expect("cert");
    let err = peer_identity(plain.cert.der()).expect_err("no identity");
    assert!(err.to_string().contains("example.com"), "{err}");
    let two = rcgen::generate_simple_self_signed([
        "n1.server.dc1.meridian".to_owned(),
        "n2.server.dc1.meridian".to_owned(),
    ])
    .expect("cert");
    assert!(matches!(
        peer_identity(two.cert.der()),
        Err(TlsError::NoIdentity { .. })
    ));
    assert!(peer_identity(&CertificateDer::from(vec![1, 2, 3])).is_err());
}

#[test]
fn material_that_does_not_fit_together_is_rejected() {
    let ca = create_ca("Test CA").expect("CA");
    let other_ca = create_ca("Other CA").expect("other CA");
    let n1 = create_node_cert(&ca, "dc1", "n1", Role::Server, &[], 30).expect("n1");
    let n2 = create_node_cert(&ca, "dc1", "n2", Role::Server, &[], 30).expect("n2");

    let err = TlsMaterial::from_pem(&ca.cert_pem, &n1.cert_pem, &n2.key_pem)
        .expect_err("key of another node");
    assert!(
        matches!(
            &err,
            TlsError::Material {
                what: "node key",
                ..
            }
        ),
        "{err}"
    );
    let err = TlsMaterial::from_pem(&other_ca.cert_pem, &n1.cert_pem, &n1.key_pem)
        .expect_err("signed by another CA");
    assert!(
        matches!(
            &err,
            TlsError::Material {
                what: "node certificate",
                ..
            }
        ),
        "{err}"
    );
    let err = TlsMaterial::from_pem(&ca.cert_pem, &ca.cert_pem, &ca.key_pem)
        .expect_err("the CA is not a node");
    assert!(err.to_string().contains("none of its DNS names"), "{err}");
    let err = TlsMaterial::from_pem("", &n1.cert_pem, &n1.key_pem).expect_err("no roots");
    assert!(
        matches!(
            &err,
            TlsError::Material {
                what: "CA certificate",
                ..
            }
        ),
        "{err}"
    );
    let err = TlsMaterial::from_pem(&ca.cert_pem, &n1.cert_pem, &n1.cert_pem).expect_err("no key");
    assert!(
        matches!(
            &err,
            TlsError::Material {
                what: "node key",
                ..
            }
        ),
        "{err}"
    );

    let wrong_key = PemPair {
        cert_pem: ca.cert_pem.clone(),
        key_pem: other_ca.key_pem.clone(),
    };
    let err = create_node_cert(&wrong_key, "dc1", "n1", Role::Server, &[], 30)
        .expect_err("CA key mismatch");
    assert!(
        matches!(&err, TlsError::Material { what: "CA key", .. }),
        "{err}"
    );
    let not_a_ca = PemPair {
        cert_pem: n1.cert_pem.clone(),
        key_pem: n1.key_pem.clone(),
    };
    let err =
        create_node_cert(&not_a_ca, "dc1", "n3", Role::Server, &[], 30).expect_err("not a CA");
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn from_files_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = create_ca("Test CA").expect("CA");
    let n1 = create_node_cert(&ca, "dc1", "n1", Role::Server, &[], 30).expect("n1");
    let ca_path = dir.path().join("ca.pem");
    let cert_path = dir.path().join("dc1-n1.pem");
    let key_path = dir.path().join("dc1-n1-key.pem");
    std::fs::write(&ca_path, &ca.cert_pem).expect("write");
    std::fs::write(&cert_path, &n1.cert_pem).expect("write");
    std::fs::write(&key_path, &n1.key_pem).expect("write");

    let material = TlsMaterial::from_files(&ca_path, &cert_path, &key_path).expect("load");
    assert_eq!(material.identity().to_string(), "dc1/n1");
    assert!(!format!("{material:?}").contains("PRIVATE"));

    let missing = dir.path().join("missing.pem");
    let err = TlsMaterial::from_files(&ca_path, &missing, &key_path).expect_err("missing");
    assert!(
        matches!(&err, TlsError::File { path, .. } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().contains("missing.pem"), "{err}");

    std::fs::write(&key_path, "not a key").expect("write");
    let err = TlsMaterial::from_files(&ca_path, &cert_path, &key_path).expect_err("bad key");
    assert!(err.to_string().contains("dc1-n1-key.pem"), "{err}");
}

/// A CA made by another tool, with a subject in PrintableString and no subject key
/// identifier: the certificates signed with it still chain to it.
#[tokio::test]
async fn a_foreign_ca_signs_certificates_that_chain_to_it() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CountryName,
        DnValue::PrintableString("NL".try_into().expect("printable")),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Ops");
    params.distinguished_name.push(
        DnType::CommonName,
        DnValue::PrintableString("Ops Root".try_into().expect("printable")),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).expect("foreign CA");
    let ca = PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let server = node(&ca, "dc1", "n1");
    let client = node(&ca, "dc2", "n2");
    let (addr, task) = serve_once(&server, LONG).await;
    connect(client.client_config().expect("config"), &addr, "dc1", LONG)
        .await
        .expect("client handshake");
    task.await.expect("join").expect("server handshake");
}

/// A reload changes what configurations built before it present and trust: after a CA rotation
/// (files rewritten, then reloaded) a server built at start admits a client of the new CA and
/// refuses one of the old; a client built at start presents its new certificate. A certificate
/// naming another node is refused and changes nothing.
#[tokio::test]
async fn a_reload_changes_what_existing_configurations_present_and_trust() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_ca, new_ca) = (
        create_ca("Old CA").expect("CA"),
        create_ca("New CA").expect("CA"),
    );
    let paths = ["ca.pem", "n1.pem", "n1-key.pem"].map(|f| dir.path().join(f));
    let write = |ca: &PemPair, cert: &PemPair| {
        std::fs::write(&paths[0], &ca.cert_pem).expect("write");
        std::fs::write(&paths[1], &cert.cert_pem).expect("write");
        std::fs::write(&paths[2], &cert.key_pem).expect("write");
    };
    let cert = |ca: &PemPair, name: &str| {
        create_node_cert(ca, "dc1", name, Role::Server, &[], 30).expect("node certificate")
    };
    write(&old_ca, &cert(&old_ca, "n1"));
    let server = TlsMaterial::from_files(&paths[0], &paths[1], &paths[2]).expect("load");
    let server_config = server.lan_server_config().expect("rpc config");
    let client_config = server.client_config().expect("client config");
    let (old_client, new_client) = (node(&old_ca, "dc1", "n2"), node(&new_ca, "dc1", "n2"));
    assert!(rpc_port_accepts(&server, &old_client).await);
    assert!(!rpc_port_accepts(&server, &new_client).await);

    write(&new_ca, &cert(&new_ca, "n1"));
    server
        .reload_from_files(&paths[0], &paths[1], &paths[2])
        .expect("reload");
    // The configuration built before the reload, not a new one.
    let accepts = |client: std::sync::Arc<rustls::ClientConfig>| {
        let server_config = server_config.clone();
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr").to_string();
            let acceptor = TlsAcceptor::from(server_config);
            let task = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.expect("TCP accept");
                accept(&acceptor, tcp, LONG).await
            });
            let client_ok = connect(client, &addr, "dc1", LONG).await.is_ok();
            client_ok && task.await.expect("join").is_ok()
        }
    };
    assert!(accepts(new_client.client_config().expect("config")).await);
    assert!(!accepts(old_client.client_config().expect("config")).await);
    // The client side built before the reload presents the new certificate to a new-CA server.
    let peer = node(&new_ca, "dc1", "n3");
    let (addr, task) = serve_once(&peer, LONG).await;
    connect(client_config, &addr, "dc1", LONG)
        .await
        .expect("the reloaded client connects");
    let (_, seen) = task.await.expect("join").expect("accepted");
    assert_eq!(seen.to_string(), "dc1/n1");

    write(&new_ca, &cert(&new_ca, "n9"));
    let err = server
        .reload_from_files(&paths[0], &paths[1], &paths[2])
        .expect_err("another node's certificate");
    assert!(err.to_string().contains("needs a restart"), "{err}");
    assert!(accepts(new_client.client_config().expect("config")).await);
}
