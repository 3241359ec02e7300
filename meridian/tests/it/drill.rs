//! `meridian drill` as an operator runs it: a real federation of three one-node datacenters,
//! `web` in dc1 and dc2 behind real TLS servers (a certificate of their own each, from one test
//! CA), dc3 preferring dc1 then dc2. The drill runs as a process of the binary; its JSON report is
//! checked: dc3 moved away from dc1 and back, with no answer pointing at a DC it already listed as
//! drained or down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use meridian_client::probe::{self, InstanceMap, TlsProber};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::federation::{config_dc, make_certs};
use crate::harness::{Agent, AgentConfig, BIN, eventually};

/// Runs openssl, failing with its stderr.
fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A test CA (`ca.pem`) and, for each DC, a server certificate signed by it for
/// `web.service.consul` and `web.service.<dc>.consul`: `(cert, key)` per DC.
fn certificates(dir: &Path, dcs: &[&str]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=drill test CA"],
            &["-keyout", &p("ca-key.pem"), "-out", &p("ca.pem")],
        ]
        .concat(),
    )?;
    let mut out = Vec::new();
    for dc in dcs {
        let (key, csr, cert, ext) = (
            p(&format!("web-{dc}-key.pem")),
            p(&format!("web-{dc}.csr")),
            p(&format!("web-{dc}.pem")),
            p(&format!("web-{dc}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=DNS:web.service.consul,DNS:web.service.{dc}.consul\n\
                 basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        openssl(
            &[
                &["req", "-new"][..],
                &ec,
                &[
                    "-subj",
                    &format!("/CN=web {dc}"),
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                ],
            ]
            .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca-key.pem"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ])?;
        out.push((PathBuf::from(cert), PathBuf::from(key)));
    }
    Ok(out)
}

/// A TLS server on loopback answering every connection with a line naming its DC; stopped
/// when dropped.
struct Backend {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(cert: &Path, key: &Path, dc: &str) -> Result<Backend> {
        let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let line = format!("{dc}\n");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, line) = (acceptor.clone(), line.clone());
                tokio::spawn(async move {
                    let serve = async {
                        let mut tls = acceptor.accept(tcp).await?;
                        tls.write_all(line.as_bytes()).await?;
                        tls.shutdown().await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), serve).await;
                });
            }
        });
        Ok(Backend { port, task })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Three one-node DCs with certificates from `certs`, each changed by `customize`, ready; dc3
/// prefers dc1, then dc2 (it is meant to have no `web` of its own).
pub(crate) async fn three_dcs(
    dir: &Path,
    certs: &Path,
    customize: impl Fn(&mut AgentConfig),
) -> Result<(Agent, Agent, Agent)> {
    let mut dc1 = config_dc(dir, certs, "dc1", &[], &customize)?;
    dc1.wait_ready().await?;
    let mut dc2 = config_dc(dir, certs, "dc2", &[("dc1", dc1.ports.wan)], &customize)?;
    let mut dc3 = config_dc(
        dir,
        certs,
        "dc3",
        &[("dc1", dc1.ports.wan), ("dc2", dc2.ports.wan)],
        |c| {
            customize(c);
            c.set("failover", "nearest_n", 0)
                .set("failover", "datacenters", vec!["dc1", "dc2"]);
        },
    )?;
    dc2.wait_ready().await?;
    dc3.wait_ready().await?;
    Ok((dc1, dc2, dc3))
}

async fn register(agent: &Agent, body: Value) -> Result<()> {
    let r = agent.put_json("/v1/agent/service/register", &body).await?;
    ensure!(r.status().is_success(), "register: {}", r.text().await?);
    Ok(())
}

/// Fails unless `agent`'s ports are served by that agent (DC `dc`): another test process may
/// have bound a port the harness picked for it, and the drill would then probe a stranger.
async fn check_identity(agent: &mut Agent, dc: &str) -> Result<()> {
    let me = agent.get_json("/v1/agent/self").await?;
    let m = &me["Meridian"];
    let want = |key: &str, port: u16| m[key].as_str() == Some(&format!("127.0.0.1:{port}"));
    ensure!(
        me["Config"]["Datacenter"] == dc
            && want("HttpAddr", agent.ports.http)
            && want("DnsAddr", agent.ports.dns)
            && want("GatewayAddr", agent.ports.gateway)
            && agent.is_running(),
        "{}'s ports are served by another process (a port taken between the harness's pick and \
         the agent's bind): {me}",
        agent.name
    );
    Ok(())
}

/// Runs `meridian drill` with `args` and the three nodes; its JSON report.
async fn drill(args: &[&str], nodes: &[&Agent]) -> Result<Value> {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("drill").args(args).arg("--json");
    cmd.env("MERIDIAN_HTTP_TOKEN", crate::harness::TEST_TOKEN);
    for n in nodes {
        cmd.args(["--http", &format!("127.0.0.1:{}", n.ports.http)]);
    }
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .context("the drill ran for more than 180 s")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "drill {args:?} exited with {}: {stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "drill output is not JSON: {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The report's entry of `dc`.
pub(crate) fn entry<'a>(report: &'a Value, dc: &str) -> Result<&'a Value> {
    report["datacenters"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["datacenter"] == dc))
        .with_context(|| format!("no {dc} in the report: {report:#}"))
}

/// Checks what every drill must show from dc3: it answered with dc1, stopped within the
/// drill, and came back after it, in DNS and through the gateway, with no stale answer.
pub(crate) fn check_dc3(report: &Value, for_ms: f64) -> Result<()> {
    let ctx = || format!("{report:#}");
    ensure!(report["completed"] == true, "not completed: {}", ctx());
    let dc3 = entry(report, "dc3")?;
    for channel in ["dns", "gateway"] {
        let c = &dc3[channel];
        ensure!(
            c["attributed"] == true && c["with_target_before"] == true,
            "dc3 {channel} answered with dc1 before: {}",
            ctx()
        );
        let stopped = c["stopped_ms"].as_f64().with_context(ctx)?;
        ensure!(
            c["stopped"] == true && stopped < for_ms,
            "dc3 {channel} stopped answering with dc1 within the drill ({stopped} ms): {}",
            ctx()
        );
        ensure!(
            c["failed_back"] == true && c["failback_ms"].as_f64().is_some(),
            "dc3 {channel} failed back: {}",
            ctx()
        );
    }
    ensure!(
        report["overall"]["stale_answers"] == 0,
        "stale answers: {}",
        ctx()
    );
    ensure!(report["overall"]["failed_back"] == true, "{}", ctx());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_move_answers_away_from_a_datacenter_and_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs, &[("dc1", "n1"), ("dc2", "n1"), ("dc3", "n1")])?;
    let tls = certificates(dir.path(), &["dc1", "dc2"])?;
    let web1 = Backend::start(&tls[0].0, &tls[0].1, "dc1").await?;
    let web2 = Backend::start(&tls[1].0, &tls[1].1, "dc2").await?;

    let (mut dc1, mut dc2, mut dc3) = three_dcs(dir.path(), &certs, |_| {}).await?;
    for (agent, dc) in [(&mut dc1, "dc1"), (&mut dc2, "dc2"), (&mut dc3, "dc3")] {
        check_identity(agent, dc).await?;
    }
    // dc1's instance has a TTL check, which service-down fails. It starts passing: one that
    // started critical would be held back for the failback period once it passed, and whether
    // dc3 saw the critical state first depends on how replication batched the two writes.
    register(
        &dc1,
        json!({"ID": "web-1", "Name": "web", "Port": web1.port, "Address": "127.0.0.1",
               "Check": {"TTL": "600s", "Status": "passing"}}),
    )
    .await?;
    register(
        &dc2,
        json!({"ID": "web-1", "Name": "web", "Port": web2.port, "Address": "127.0.0.1"}),
    )
    .await?;

    // Ready: dc3 answers with dc1, in DNS and through its gateway (the QUIC tunnel to dc1).
    let mut map = InstanceMap::new("consul");
    map.add("dc1", "127.0.0.1".parse().context("ip")?, web1.port);
    map.add("dc2", "127.0.0.1".parse().context("ip")?, web2.port);
    let dns3 = SocketAddr::from(([127, 0, 0, 1], dc3.ports.dns));
    let gw3 = SocketAddr::from(([127, 0, 0, 1], dc3.ports.gateway));
    let ca = dir.path().join("ca.pem");
    let prober = TlsProber::new(Some(&ca))?;
    eventually(
        60,
        "dc3 answering web with dc1 in DNS and through its gateway",
        || async {
            let dns = probe::resolve_srv(dns3, "web.service.consul.", &map).await;
            let dns_ok = dns
                .dcs()
                .is_some_and(|d| d.iter().map(String::as_str).eq(["dc1"]));
            dns_ok
                && matches!(
                    prober.connect(gw3, "web.service.consul").await,
                    probe::ConnectOutcome::Connected { .. }
                )
        },
    )
    .await?;
    // Every DC sees every other up (the detector has probed them).
    for agent in [&dc1, &dc2, &dc3] {
        eventually(30, "every DC up", || async {
            agent
                .get_json("/v1/federation/datacenters")
                .await
                .is_ok_and(|v| {
                    v.as_array()
                        .is_some_and(|a| a.len() == 3 && a.iter().all(|d| d["Status"] == "up"))
                })
        })
        .await
        .with_context(|| format!("statuses of {}", agent.name))?;
    }

    for (agent, dc) in [(&mut dc1, "dc1"), (&mut dc2, "dc2"), (&mut dc3, "dc3")] {
        check_identity(agent, dc).await?;
    }
    let nodes = [&dc1, &dc2, &dc3];
    let ca_arg = ca.to_string_lossy().into_owned();
    let report = drill(
        &[
            "dc-down",
            "--dc",
            "dc1",
            "--for",
            "5s",
            "--service",
            "web",
            "--ca",
            &ca_arg,
        ],
        &nodes,
    )
    .await?;
    check_dc3(&report, 5000.0)?;
    // dc2 answers with its own instance throughout: nothing to move, nothing failed.
    let dc2_entry = entry(&report, "dc2")?;
    ensure!(
        dc2_entry["dns"]["with_target_before"] == false && dc2_entry["dns"]["stopped"] == true,
        "{report:#}"
    );
    ensure!(
        entry(&report, "dc1").is_err(),
        "the drained DC is not a prober"
    );
    // dc3's status listed dc1 as drained during the drill.
    ensure!(
        entry(&report, "dc3")?["status_marked_ms"]
            .as_f64()
            .is_some(),
        "{report:#}"
    );
    // dc1 is back: the drill undrained it.
    eventually(30, "dc1 up again everywhere", || async {
        dc3.get_json("/v1/federation/datacenters")
            .await
            .is_ok_and(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().all(|d| d["Status"] == "up"))
            })
    })
    .await?;

    // The same with only web's instances in dc1 failing (their TTL check), probed from every DC.
    let report = drill(
        &[
            "service-down",
            "--dc",
            "dc1",
            "--for",
            "5s",
            "--service",
            "web",
            "--ca",
            &ca_arg,
        ],
        &nodes,
    )
    .await?;
    check_dc3(&report, 5000.0)?;
    let dc1_entry = entry(&report, "dc1")?;
    ensure!(
        dc1_entry["dns"]["with_target_before"] == true && dc1_entry["dns"]["stopped"] == true,
        "dc1 fails over from its own failed instances: {report:#}"
    );
    let health = dc1.get_json("/v1/health/service/web").await?;
    ensure!(
        health[0]["Checks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["Status"] == "passing")),
        "the check was restored: {health}"
    );

    // A drill that cannot run says so and exits non-zero, changing nothing.
    let out = tokio::process::Command::new(BIN)
        .args(["drill", "dc-down", "--dc", "dc9", "--for", "1s", "--http"])
        .arg(format!("127.0.0.1:{}", dc1.ports.http))
        .env("MERIDIAN_HTTP_TOKEN", crate::harness::TEST_TOKEN)
        .output()
        .await?;
    ensure!(!out.status.success(), "an unknown DC fails the drill");
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.contains("dc9") {
        bail!("the error names the DC: {err}");
    }
    drop((web1, web2));
    Ok(())
}
