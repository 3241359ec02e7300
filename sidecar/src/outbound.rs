//! The way out: each upstream is a local listener. A connection to it goes where the agent
//! resolves the upstream's mesh endpoints (`/v1/health/connect/:service?failover`, the same
//! `topology::resolve` as DNS and the gateway): straight to a sidecar of the upstream when they
//! are in this datacenter, else to a local gateway with Consul's mesh SNI
//! (`<service>.default.<dc>.internal.<trust-domain>`), which carries it, still encrypted, to that
//! datacenter. Either way the sidecar speaks mutual TLS with its service's leaf and accepts only
//! a server proving the upstream's identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use meridian_gateway::relay::copy_both_with;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::agent::Endpoints;
use crate::{Shared, UpstreamSpec};

/// How many endpoints a connection tries before it gives up.
const ATTEMPTS: usize = 3;

/// One upstream: what it is and where it currently resolves.
pub(crate) struct Upstream {
    pub spec: UpstreamSpec,
    pub endpoints: ArcSwap<Endpoints>,
}

/// Where a connection goes: an address, and the SNI to send there.
fn plan(shared: &Shared, up: &Upstream) -> Option<(Vec<SocketAddr>, String)> {
    let endpoints = up.endpoints.load();
    if endpoints.dc.is_empty() {
        return None;
    }
    let material = shared.material.load();
    let sni = format!(
        "{}.default.{}.internal.{}",
        up.spec.service.to_ascii_lowercase(),
        endpoints.dc,
        material.trust_domain
    );
    let mut addrs = if endpoints.dc == material.dc {
        endpoints.addrs.clone()
    } else {
        shared.gateways.load().as_ref().clone()
    };
    if addrs.is_empty() {
        return None;
    }
    fastrand::shuffle(&mut addrs);
    addrs.truncate(ATTEMPTS);
    Some((addrs, sni))
}

/// Accepts the application's connections to `up` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    up: Arc<Upstream>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.upstream(&up.spec.service, "cap");
            continue;
        };
        let (shared, up) = (shared.clone(), up.clone());
        let span = tracing::info_span!("upstream", service = %up.spec.service);
        tokio::spawn(
            async move {
                let _slot = slot;
                connection(stream, &up, &shared).await;
            }
            .instrument(span),
        );
    }
}

async fn connection(mut app: TcpStream, up: &Upstream, shared: &Shared) {
    let _ = app.set_nodelay(true);
    let service = &up.spec.service;
    let Some((addrs, sni)) = plan(shared, up) else {
        shared.metrics.upstream(service, "no_route");
        tracing::info!("no mesh endpoint of the upstream is reachable");
        return;
    };
    let material = shared.material.load_full();
    let Some(config) = material.clients.get(&service.to_ascii_lowercase()).cloned() else {
        shared.metrics.upstream(service, "no_route");
        return;
    };
    let Ok(name) = ServerName::try_from(sni.clone()) else {
        shared.metrics.upstream(service, "no_route");
        return;
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut last = "connect_failed";
    for addr in addrs {
        let tcp =
            match tokio::time::timeout(shared.config.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => s,
                _ => {
                    last = "connect_failed";
                    continue;
                }
            };
        let _ = tcp.set_nodelay(true);
        let handshake = tokio::time::timeout(
            shared.config.handshake_timeout,
            connector.connect(name.clone(), tcp),
        );
        let mut tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%addr, %sni, error = %e, "mesh handshake failed");
                last = "tls_failed";
                continue;
            }
            Err(_) => {
                last = "tls_failed";
                continue;
            }
        };
        shared.metrics.upstream(service, "relayed");
        shared.metrics.outbound_open.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = copy_both_with(
            &mut app,
            &mut tls,
            shared.config.idle_timeout,
            crate::RELAY_BUF,
        )
        .await
        {
            tracing::debug!(error = %e, "outbound relay ended");
        }
        shared.metrics.outbound_open.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    shared.metrics.upstream(service, last);
}
