//! The mesh CA with no primary, between two federated datacenters of real processes: each DC
//! makes its own CA, federation carries every root to every DC, a leaf issued in dc2 for `api`
//! and one issued in dc1 for `web` complete a mutual-TLS handshake verified by the roots the API
//! lists, `authorize` follows the intentions written in any DC, and dc2 keeps issuing leaves
//! once dc1 is gone.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use meridian_identity::PemPair;
use meridian_identity::mesh::{SpiffeId, TrustBundle, client_config, server_config};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{Agent, eventually};

use crate::sidecar::TRUST_DOMAIN;

pub(crate) async fn leaf(agent: &Agent, service: &str) -> Result<(PemPair, Value)> {
    let v = agent
        .get_json(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await?;
    let pem = |k: &str| -> Result<String> {
        Ok(v[k]
            .as_str()
            .with_context(|| format!("{k} in {v}"))?
            .to_owned())
    };
    Ok((
        PemPair {
            cert_pem: pem("CertPEM")?,
            key_pem: pem("PrivateKeyPEM")?,
        },
        v,
    ))
}

/// The trust bundle from `agent`'s `/v1/connect/ca/roots`.
pub(crate) async fn bundle(agent: &Agent) -> Result<Arc<TrustBundle>> {
    let v = agent.get_json("/v1/connect/ca/roots").await?;
    let roots: Vec<(String, String)> = v["Roots"]
        .as_array()
        .context("Roots")?
        .iter()
        .filter_map(|r| {
            Some((
                r["Datacenter"].as_str()?.to_owned(),
                r["RootCert"].as_str()?.to_owned(),
            ))
        })
        .collect();
    Ok(Arc::new(TrustBundle::new(
        v["TrustDomain"].as_str().context("TrustDomain")?,
        &roots,
    )?))
}

async fn authorized(agent: &Agent, target: &str, uri: &str) -> Result<(bool, String)> {
    let r = agent
        .http
        .post(agent.url("/v1/agent/connect/authorize"))
        .json(&json!({"Target": target, "ClientCertURI": uri}))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::OK, "authorize: {}", r.status());
    let v: Value = r.json().await?;
    Ok((
        v["Authorized"].as_bool().context("Authorized")?,
        v["Reason"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dc_issues_leaves_every_dc_trusts_and_keeps_issuing_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Leaves of 4 s in dc1, renewed after 2.7 s: the blocking renewal below.
    let (mut dc1, dc2) = crate::sidecar::two_dcs(dir.path(), &[("dc1", "leaf_ttl_s", 4)]).await?;

    // Each DC makes its own CA; each lists both roots, its own active.
    for (agent, own) in [(&dc1, "dc1"), (&dc2, "dc2")] {
        eventually(30, "both roots listed", || async {
            agent
                .get_json("/v1/connect/ca/roots")
                .await
                .is_ok_and(|v| v["Roots"].as_array().is_some_and(|r| r.len() == 2))
        })
        .await
        .with_context(|| format!("roots in {}", agent.name))?;
        let v = agent.get_json("/v1/connect/ca/roots").await?;
        ensure!(v["TrustDomain"] == TRUST_DOMAIN, "{v}");
        let active: Vec<&Value> = v["Roots"]
            .as_array()
            .context("Roots")?
            .iter()
            .filter(|r| r["Active"] == true)
            .collect();
        ensure!(
            active.len() == 1
                && active[0]["Datacenter"] == own
                && active[0]["ID"] == v["ActiveRootID"],
            "{}: {v}",
            agent.name
        );
    }

    // api's leaf from dc2, web's from dc1: mutual TLS, verified by the roots dc2 lists.
    let (api, api_json) = leaf(&dc2, "api").await?;
    let (web, _) = leaf(&dc1, "web").await?;
    let api_uri = api_json["ServiceURI"]
        .as_str()
        .context("ServiceURI")?
        .to_owned();
    ensure!(
        api_uri == format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc2/svc/api"),
        "{api_uri}"
    );
    let trust = bundle(&dc2).await?;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let inbound = tokio_rustls::TlsAcceptor::from(server_config(&trust, &web)?);
    let served = tokio::spawn(async move {
        let mut tls = inbound.accept(b).await?;
        let caller = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .context("no caller certificate")?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        anyhow::Ok(SpiffeId::of_cert(&caller)?)
    });
    let outbound = tokio_rustls::TlsConnector::from(client_config(&trust, &api, "web")?);
    let mut tls = outbound
        .connect(ServerName::try_from("web")?, a)
        .await
        .context("api's handshake with web")?;
    tls.write_all(b"ping").await?;
    tls.flush().await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    ensure!(&buf == b"pong");
    let caller = served.await??;
    ensure!(caller.uri() == api_uri, "web saw {caller}");

    // authorize follows intentions written in any DC; the default is deny.
    let (ok, reason) = authorized(&dc1, "web", &api_uri).await?;
    ensure!(!ok && reason.contains("default"), "{reason}");
    let r = dc2
        .put_json(
            "/v1/connect/intentions/exact?source=api&destination=web",
            &json!({"Action": "allow"}),
        )
        .await?;
    ensure!(r.status() == StatusCode::OK);
    eventually(30, "dc2's intention authorizes in dc1", || async {
        authorized(&dc1, "web", &api_uri)
            .await
            .is_ok_and(|(ok, _)| ok)
    })
    .await?;
    let foreign = "spiffe://other.consul/ns/default/dc/dc2/svc/api";
    ensure!(
        !authorized(&dc1, "web", foreign).await?.0,
        "another trust domain"
    );

    // The agent answers the same leaf until two thirds of its life; a blocking query waits for
    // the renewal and gets a new one.
    let r = dc1
        .http
        .get(dc1.url("/v1/agent/connect/ca/leaf/web"))
        .send()
        .await?;
    let index: u64 = r
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .context("X-Consul-Index")?;
    let first: Value = r.json().await?;
    let (again, _) = leaf(&dc1, "web").await?;
    ensure!(
        again.cert_pem == first["CertPEM"],
        "a second ask gets the same leaf"
    );
    let asked = std::time::Instant::now();
    let renewed = dc1
        .get_json(&format!(
            "/v1/agent/connect/ca/leaf/web?index={index}&wait=30s"
        ))
        .await?;
    let waited = asked.elapsed();
    ensure!(
        renewed["SerialNumber"] != first["SerialNumber"]
            && renewed["ModifyIndex"].as_u64() > Some(index),
        "renewed {renewed}"
    );
    ensure!(
        waited < std::time::Duration::from_secs(10),
        "the renewal came after {waited:?}"
    );

    // dc1 is gone for good: dc2 still issues leaves, and they verify.
    dc1.kill9()?;
    let (alone, _) = leaf(&dc2, "api").await?;
    let der = CertificateDer::from_pem_slice(alone.cert_pem.as_bytes())?;
    let proved = trust.verify(&der, &[], rustls::pki_types::UnixTime::now())?;
    ensure!(proved.uri() == api_uri, "{proved}");

    // A leaf needs a token that may write the service.
    let anonymous = reqwest::Client::new()
        .get(dc2.url("/v1/agent/connect/ca/leaf/api"))
        .send()
        .await?;
    ensure!(
        anonymous.status() == StatusCode::FORBIDDEN,
        "{}",
        anonymous.status()
    );
    Ok(())
}
