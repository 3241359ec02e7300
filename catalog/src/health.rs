//! Health checks of the instances registered on this node: TCP, HTTP and TTL.
//!
//! Checks run only on the node that registered the instance (as Consul's agent does). A result is
//! written to Raft only when the status differs from the one in the current view, so a steady
//! service costs no Raft traffic however often it is checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_topology::{CheckKind, CheckSpec, Health};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{Catalog, Command};

/// Most bytes of an HTTP check's body kept as its output.
const MAX_OUTPUT: usize = 4096;
/// Longest interval, TTL or timeout a check task uses: tokio's timers overflow on absurd
/// durations, and nobody means a check that runs less than once a month.
const MAX_CHECK_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);

fn bounded(d: Duration) -> Duration {
    d.clamp(Duration::from_millis(100), MAX_CHECK_PERIOD)
}

/// Starts, restarts and stops this node's check tasks as the catalog changes.
#[derive(Clone)]
pub(crate) struct HealthRunner {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    ttl_touch: Mutex<HashMap<String, Arc<Notify>>>,
    stop: watch::Sender<bool>,
}

impl HealthRunner {
    pub(crate) fn new(node: String) -> Self {
        HealthRunner {
            inner: Arc::new(Inner {
                node,
                ttl_touch: Mutex::new(HashMap::new()),
                stop: watch::channel(false).0,
            }),
        }
    }

    /// Restarts the TTL of a TTL check.
    pub(crate) fn touch_ttl(&self, check_id: &str) {
        if let Ok(map) = self.inner.ttl_touch.lock()
            && let Some(n) = map.get(check_id)
        {
            n.notify_one();
        }
    }

    pub(crate) fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Follows the catalog and keeps one task per check of this node.
    pub(crate) async fn run(self, catalog: Catalog) {
        let mut views = catalog.watch();
        let mut stop = self.inner.stop.subscribe();
        let mut running: HashMap<String, (CheckSpec, JoinHandle<()>)> = HashMap::new();
        loop {
            let view = views.borrow_and_update().clone();
            let wanted: HashMap<&str, &CheckSpec> = view
                .local()
                .checks_on(&self.inner.node)
                .filter_map(|c| c.spec.as_ref().map(|s| (c.id.as_str(), s)))
                .collect();
            running.retain(|id, (spec, task)| {
                let keep = wanted.get(id.as_str()).is_some_and(|w| *w == spec);
                if !keep {
                    task.abort();
                    if let Ok(mut m) = self.inner.ttl_touch.lock() {
                        m.remove(id);
                    }
                }
                keep
            });
            for (id, spec) in wanted {
                if running.contains_key(id) {
                    continue;
                }
                let touch = Arc::new(Notify::new());
                if let Ok(mut m) = self.inner.ttl_touch.lock() {
                    m.insert(id.to_owned(), touch.clone());
                }
                let task = CheckTask {
                    catalog: catalog.clone(),
                    node: self.inner.node.clone(),
                    id: id.to_owned(),
                    spec: spec.clone(),
                    touch,
                    critical_since: None,
                };
                let span = info_span!("check", check = %id, kind = spec.kind.type_name());
                running.insert(
                    id.to_owned(),
                    (spec.clone(), tokio::spawn(task.run().instrument(span))),
                );
            }
            tokio::select! {
                changed = views.changed() => if changed.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, (_, task)) in running {
            task.abort();
        }
    }
}

struct CheckTask {
    catalog: Catalog,
    node: String,
    id: String,
    spec: CheckSpec,
    touch: Arc<Notify>,
    critical_since: Option<Instant>,
}

impl CheckTask {
    async fn run(mut self) {
        match self.spec.kind.clone() {
            CheckKind::Ttl { ttl } => self.run_ttl(ttl).await,
            kind => {
                let mut tick = tokio::time::interval(bounded(self.spec.interval));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let timeout = bounded(self.spec.timeout);
                let http = reqwest::Client::builder().timeout(timeout).build().ok();
                loop {
                    tick.tick().await;
                    let (status, output) = match &kind {
                        CheckKind::Tcp { address } => probe_tcp(address, timeout).await,
                        CheckKind::Http {
                            url,
                            method,
                            headers,
                        } => match &http {
                            Some(client) => probe_http(client, url, method, headers).await,
                            None => (Health::Critical, "cannot build an HTTP client".to_owned()),
                        },
                        CheckKind::Ttl { .. } => return,
                    };
                    self.report(status, output).await;
                }
            }
        }
    }

    async fn run_ttl(&mut self, ttl: Duration) {
        let ttl = bounded(ttl);
        loop {
            let expired = tokio::select! {
                () = tokio::time::sleep(ttl) => true,
                () = self.touch.notified() => false,
            };
            if expired {
                let view = self.catalog.view();
                let status = view
                    .local()
                    .check(&self.node, &self.id)
                    .map_or(Health::Critical, |c| c.status);
                if status != Health::Critical {
                    info!(ttl = ?ttl, "TTL expired");
                }
                self.report(
                    Health::Critical,
                    format!("TTL expired (no update for {ttl:?})"),
                )
                .await;
            }
        }
    }

    /// Writes the status if it differs from the catalog's, and deregisters the instance once it
    /// has been critical for longer than `deregister_critical_after`.
    async fn report(&mut self, status: Health, output: String) {
        let view = self.catalog.view();
        let Some(current) = view.local().check(&self.node, &self.id) else {
            return;
        };
        let service_id = current.service_id.clone();
        if current.status != status {
            debug!(from = %current.status, to = %status, "check status changed");
            let cmd = Command::UpdateCheck {
                node: self.node.clone(),
                check_id: self.id.clone(),
                status,
                output,
            };
            if let Err(e) = self.catalog.write(cmd).await {
                warn!(error = %e, "cannot record check status; will retry");
                return;
            }
        }
        if status == Health::Critical {
            let since = *self.critical_since.get_or_insert_with(Instant::now);
            if let Some(after) = self.spec.deregister_critical_after
                && !service_id.is_empty()
                && since.elapsed() >= after
            {
                info!(service_id = %service_id, "deregistering an instance critical for too long");
                let cmd = Command::Deregister {
                    node: self.node.clone(),
                    id: service_id,
                };
                if let Err(e) = self.catalog.write(cmd).await {
                    warn!(error = %e, "cannot deregister; will retry");
                }
            }
        } else {
            self.critical_since = None;
        }
    }
}

async fn probe_tcp(address: &str, timeout: Duration) -> (Health, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => (Health::Passing, format!("TCP connect {address}: Success")),
        Ok(Err(e)) => (Health::Critical, format!("dial tcp {address}: {e}")),
        Err(_) => (
            Health::Critical,
            format!("dial tcp {address}: timeout after {timeout:?}"),
        ),
    }
}

async fn probe_http(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    headers: &std::collections::BTreeMap<String, Vec<String>>,
) -> (Health, String) {
    let method = match reqwest::Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return (Health::Critical, format!("invalid HTTP method {method:?}")),
    };
    let mut req = client.request(method.clone(), url);
    for (k, vs) in headers {
        for v in vs {
            req = req.header(k, v);
        }
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (Health::Critical, format!("HTTP {method} {url}: {e}")),
    };
    let code = resp.status();
    let mut body = Vec::new();
    while body.len() < MAX_OUTPUT {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(MAX_OUTPUT - body.len())])
            }
            _ => break,
        }
    }
    let status = if code.is_success() {
        Health::Passing
    } else if code == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Health::Warning
    } else {
        Health::Critical
    };
    (
        status,
        format!(
            "HTTP {method} {url}: {code} Output: {}",
            String::from_utf8_lossy(&body)
        ),
    )
}
