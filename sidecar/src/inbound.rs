//! The way in: a mesh connection for the sidecar's service is accepted with mutual TLS (the
//! service's leaf; a caller's leaf the trust bundle proves), the caller's SPIFFE ID is read from
//! its certificate, the intentions decide, and an allowed connection is relayed in plaintext to
//! the local application. A refused handshake or a denial closes the connection and is counted.
//!
//! Decisions are the agent's (`/v1/agent/connect/authorize`, the one pure function of
//! `topology::intention` over the federated view), cached by caller for as long as the
//! intentions that apply to the service have not changed: a connection from a known caller costs
//! a map lookup, not a request. When they change (the agent's blocking `match` query wakes), the
//! cache is stale at once, so a new intention applies to the next connection; and every open
//! connection asks again and is closed if it is now denied (Consul's proxies keep them open: we
//! choose the stricter reading of "deny").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_gateway::relay::copy_both_with;
use meridian_identity::mesh::SpiffeId;
use meridian_topology::caps::KeyedCap;
use rustls::{CertificateError, Error as TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::Shared;

/// Decisions by caller URI, valid for one generation of the intentions.
#[derive(Default)]
pub(crate) struct Decisions {
    inner: Mutex<DecisionsInner>,
}

#[derive(Default)]
struct DecisionsInner {
    generation: u64,
    /// Caller URI → (generation decided in, allowed).
    by_caller: HashMap<String, (u64, bool)>,
}

/// The most callers whose decisions are kept; beyond, the cache starts over.
const MAX_CALLERS: usize = 65_536;

impl Decisions {
    /// Marks every decision stale: the intentions changed.
    pub(crate) fn invalidate(&self, generation: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.generation = generation;
    }

    fn lookup(&self, caller: &str) -> (u64, Option<(u64, bool)>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.generation, inner.by_caller.get(caller).copied())
    }

    fn store(&self, caller: &str, generation: u64, allowed: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A decision asked before a change and answered after it is not kept as current.
        if inner.generation != generation {
            return;
        }
        if inner.by_caller.len() >= MAX_CALLERS && !inner.by_caller.contains_key(caller) {
            inner.by_caller.clear();
        }
        inner
            .by_caller
            .insert(caller.to_owned(), (generation, allowed));
    }
}

/// Whether `caller` may reach the sidecar's service now: the cached decision of this generation,
/// else the agent's. If the agent cannot answer, the last decision stands; with none, the
/// connection is refused (fail closed).
pub(crate) async fn authorized(shared: &Shared, caller: &str) -> bool {
    let fresh = |known: Option<(u64, bool)>, generation: u64| {
        known.and_then(|(g, allowed)| (g == generation).then_some(allowed))
    };
    let (generation, known) = shared.decisions.lookup(caller);
    if let Some(allowed) = fresh(known, generation) {
        return allowed;
    }
    // One question to the agent at a time: after a change every open connection asks again at
    // once, and all but the first find the answer cached when their turn comes.
    let _turn = shared.asking.lock().await;
    let (generation, known) = shared.decisions.lookup(caller);
    if let Some(allowed) = fresh(known, generation) {
        return allowed;
    }
    match shared.agent.authorize(&shared.config.service, caller).await {
        Ok(allowed) => {
            shared.decisions.store(caller, generation, allowed);
            allowed
        }
        Err(e) => {
            tracing::warn!(error = %e, "the agent could not authorize; keeping the last decision");
            known.is_some_and(|(_, allowed)| allowed)
        }
    }
}

/// Accepts inbound mesh connections until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let per_client = KeyedCap::new(shared.config.max_connections_per_client);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.refused("cap");
            continue;
        };
        let Some(client_slot) = per_client.try_acquire(peer.ip()) else {
            shared.metrics.refused("cap");
            continue;
        };
        let shared = shared.clone();
        let span = tracing::info_span!("inbound", %peer);
        tokio::spawn(
            async move {
                let _slots = (slot, client_slot);
                connection(stream, peer, &shared).await;
            }
            .instrument(span),
        );
    }
}

/// Why a handshake failed, as the metric's `reason`.
fn refusal(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) {
        Some(TlsError::NoCertificatesPresented) => "no_certificate",
        Some(TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "expired",
        Some(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "untrusted",
        Some(TlsError::InvalidCertificate(CertificateError::NotValidForName)) => "wrong_identity",
        Some(TlsError::InvalidCertificate(_)) => "untrusted",
        _ => "tls",
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let material = shared.material.load_full();
    let acceptor = tokio_rustls::TlsAcceptor::from(material.server.clone());
    let handshake = tokio::time::timeout(shared.config.handshake_timeout, acceptor.accept(stream));
    let mut tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        // A TCP health check, or a scan: closed before a ClientHello. Not a refusal.
        Ok(Err(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                && e.get_ref()
                    .is_none_or(|e| e.downcast_ref::<TlsError>().is_none()) =>
        {
            tracing::debug!("closed before the handshake");
            return;
        }
        Ok(Err(e)) => {
            let reason = refusal(&e);
            shared.metrics.refused(reason);
            tracing::info!(%reason, error = %e, "refused a mesh handshake");
            return;
        }
        Err(_) => {
            shared.metrics.refused("timeout");
            return;
        }
    };
    // The verifier proved the leaf; read which identity it proves.
    let caller = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| SpiffeId::of_cert(c).ok());
    let Some(caller) = caller else {
        shared.metrics.refused("wrong_identity");
        return;
    };
    let uri = caller.uri();
    // Bounded like the handshake: a queue of questions behind a slow agent refuses rather than
    // holds connections.
    match tokio::time::timeout(shared.config.handshake_timeout, authorized(shared, &uri)).await {
        Ok(true) => {}
        Ok(false) => {
            shared.metrics.decided("deny");
            tracing::info!(caller = %uri, "denied by intentions");
            return;
        }
        Err(_) => {
            shared.metrics.decided("unanswered");
            tracing::warn!(caller = %uri, "no decision in time: refused");
            return;
        }
    }
    shared.metrics.decided("allow");
    tracing::info!(caller = %uri, "mesh connection authorized");
    let app = match tokio::time::timeout(
        shared.config.connect_timeout,
        TcpStream::connect(shared.config.local_app),
    )
    .await
    {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, app = %shared.config.local_app, "the local application refused");
            return;
        }
        Err(_) => {
            tracing::warn!(app = %shared.config.local_app, "the local application did not answer");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let mut app = app;
    shared.metrics.inbound_open.fetch_add(1, Ordering::Relaxed);
    let mut generations = shared.generations.clone();
    generations.borrow_and_update();
    let revoked = async {
        // Each change of the intentions: ask again; a denial ends the connection.
        while generations.changed().await.is_ok() {
            if !authorized(shared, &uri).await {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        r = copy_both_with(&mut tls, &mut app, shared.config.idle_timeout, crate::RELAY_BUF) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "inbound relay ended");
            }
        }
        () = revoked => {
            shared.metrics.revoked.fetch_add(1, Ordering::Relaxed);
            tracing::info!(caller = %uri, "closed: an intention now denies it");
        }
    }
    shared.metrics.inbound_open.fetch_sub(1, Ordering::Relaxed);
}
