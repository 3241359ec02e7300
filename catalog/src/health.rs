//! Health checks of the instances registered on this node: TCP, HTTP and TTL.
//!
//! Checks run only on the node that registered the instance (as Consul's agent does), with one
//! exception: a gateway-only node has no catalog and no agent of its own, so the TCP checks of
//! nodes marked [`GATEWAY_ONLY_META`] that hold a `meridian-gateway` instance are run by the DC's
//! Raft leader (whichever server leads now). A result is written to Raft only when the status differs from the one in the current
//! view, so a steady service costs no Raft traffic however often it is checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_topology::{CheckKind, CheckSpec, GATEWAY_SERVICE, Health, View};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{Catalog, CheckPolicy, Command};

/// Node meta key (value `true`) of a gateway-only node, registered by the server it follows:
/// its TCP checks are run by the DC's leader.
pub const GATEWAY_ONLY_META: &str = "meridian-gateway-only";

/// How often the runner asks whether this node leads (it starts or stops running the checks
/// of gateway-only nodes when that changes).
const LEADERSHIP_POLL: Duration = Duration::from_secs(1);

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
    policy: Arc<CheckPolicy>,
    ttl_touch: Mutex<HashMap<String, Arc<Notify>>>,
    stop: watch::Sender<bool>,
}

impl HealthRunner {
    pub(crate) fn new(node: String, policy: CheckPolicy) -> Self {
        HealthRunner {
            inner: Arc::new(Inner {
                node,
                policy: Arc::new(policy),
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
        // Keyed by node and check ID: the leader runs other nodes' checks beside its own.
        let mut running = Running::new();
        // The view last reconciled. This node's checks are reconciled by what changed since:
        // an agent's node may hold thousands of checks, and rebuilding a map of all of them on
        // every view was half of a node's CPU while instances were being registered.
        let mut last: Option<Arc<View>> = None;
        let mut poll = tokio::time::interval(LEADERSHIP_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let view = views.borrow_and_update().clone();
            let state = view.local();
            let own = &self.inner.node;
            let changed: Vec<&str> = match &last {
                Some(old) => state.checks_changed_on(old.local(), own),
                None => state.checks_on(own).map(|c| c.id.as_str()).collect(),
            };
            for id in changed {
                let want = state.check(own, id).and_then(|c| c.spec.as_ref());
                self.reconcile(&mut running, &catalog, own, id, want);
            }
            // The TCP checks of gateway-only nodes, run while this node leads. Few, and found
            // through the gateway instances (an index), not by scanning every node: reconciled
            // in full on every view, so that leadership moving is followed too.
            let leads = catalog.status().is_leader;
            let agentless: HashMap<(&str, &str), &CheckSpec> = state
                .instances_of(GATEWAY_SERVICE)
                .filter(|_| leads)
                .filter(|i| {
                    state
                        .node(&i.node)
                        .is_some_and(|n| n.meta.get(GATEWAY_ONLY_META).is_some_and(|v| v == "true"))
                })
                .flat_map(|i| state.checks_on(&i.node))
                .filter_map(|c| {
                    let spec = c.spec.as_ref()?;
                    matches!(spec.kind, CheckKind::Tcp { .. })
                        .then_some(((c.node.as_str(), c.id.as_str()), spec))
                })
                .collect();
            let gone: Vec<(String, String)> = running
                .keys()
                .filter(|(node, id)| {
                    node != own && !agentless.contains_key(&(node.as_str(), id.as_str()))
                })
                .cloned()
                .collect();
            for (node, id) in gone {
                self.reconcile(&mut running, &catalog, &node, &id, None);
            }
            for ((node, id), spec) in agentless {
                if node != own {
                    self.reconcile(&mut running, &catalog, node, id, Some(spec));
                }
            }
            last = Some(view.clone());
            tokio::select! {
                changed = views.changed() => if changed.is_err() { break },
                // Leadership moves without a view change: look again now and then.
                _ = poll.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, (_, task)) in running {
            task.abort();
        }
    }

    /// Makes the task of check `id` on `node` run `want` (none: no task): left alone when it
    /// already does, else stopped and started again with the new spec.
    fn reconcile(
        &self,
        running: &mut Running,
        catalog: &Catalog,
        node: &str,
        id: &str,
        want: Option<&CheckSpec>,
    ) {
        let key = (node.to_owned(), id.to_owned());
        if let Some((spec, task)) = running.get(&key) {
            if want == Some(spec) {
                return;
            }
            task.abort();
            running.remove(&key);
            if node == self.inner.node
                && let Ok(mut m) = self.inner.ttl_touch.lock()
            {
                m.remove(id);
            }
        }
        let Some(spec) = want else {
            return;
        };
        let touch = Arc::new(Notify::new());
        // TTL checks are this node's own (the others run are TCP).
        if node == self.inner.node
            && let Ok(mut m) = self.inner.ttl_touch.lock()
        {
            m.insert(id.to_owned(), touch.clone());
        }
        let task = CheckTask {
            catalog: catalog.clone(),
            node: node.to_owned(),
            policy: self.inner.policy.clone(),
            id: id.to_owned(),
            spec: spec.clone(),
            touch,
            critical_since: None,
        };
        let span = info_span!("check", %node, check = %id, kind = spec.kind.type_name());
        running.insert(
            key,
            (spec.clone(), tokio::spawn(task.run().instrument(span))),
        );
    }
}

/// The check tasks running, by node and check ID, with the spec each runs.
type Running = HashMap<(String, String), (CheckSpec, JoinHandle<()>)>;

struct CheckTask {
    catalog: Catalog,
    node: String,
    policy: Arc<CheckPolicy>,
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
                            Some(client) => {
                                let target = HttpTarget {
                                    url,
                                    method,
                                    headers,
                                };
                                probe_http(client, &target, &self.policy, timeout).await
                            }
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

/// What an HTTP check asks for.
struct HttpTarget<'a> {
    url: &'a str,
    method: &'a str,
    headers: &'a std::collections::BTreeMap<String, Vec<String>>,
}

/// Whether `policy` lets a check reach `addr`: never a link-local address (cloud metadata)
/// unless allowed, never this node's own API.
fn allowed(policy: &CheckPolicy, addr: std::net::SocketAddr) -> Result<(), String> {
    let ip = addr.ip().to_canonical();
    let link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    if link_local && !policy.allow.iter().any(|p| p.contains(ip)) {
        return Err(format!(
            "{ip} is link-local, where clouds serve instance metadata (allow it in checks.http_allow)"
        ));
    }
    let own = policy.own_api.iter().any(|api| {
        api.port() == addr.port() && (ip.is_loopback() || api.ip().to_canonical() == ip)
    });
    if own {
        return Err(format!("{addr} is this node's own HTTP API"));
    }
    Ok(())
}

/// The check's URL pinned to each resolved, allowed address in turn (so that a name cannot
/// resolve to something else between the check and the connect), and the `Host` it names.
async fn pin(
    url: &str,
    policy: &CheckPolicy,
    timeout: Duration,
) -> Result<(Vec<reqwest::Url>, String), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().ok_or("no host")?.to_owned();
    let port = parsed.port_or_known_default().ok_or("no port")?;
    let authority = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addrs: Vec<std::net::SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((bare.as_str(), port)))
            .await
            .map_err(|_| format!("resolving {host} took over {timeout:?}"))?
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
    let mut refusal = None;
    let mut pinned = Vec::new();
    for addr in addrs {
        match allowed(policy, addr) {
            Ok(()) => {
                let mut u = parsed.clone();
                if u.set_ip_host(addr.ip()).is_ok() {
                    pinned.push(u);
                }
            }
            Err(why) => refusal = refusal.or(Some(why)),
        }
    }
    // One refused address refuses the name: a name is either safe to check or not.
    if let Some(why) = refusal {
        return Err(why);
    }
    if pinned.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok((pinned, authority))
}

async fn probe_http(
    client: &reqwest::Client,
    target: &HttpTarget<'_>,
    policy: &CheckPolicy,
    timeout: Duration,
) -> (Health, String) {
    let HttpTarget {
        url,
        method,
        headers,
    } = *target;
    let method = match reqwest::Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return (Health::Critical, format!("invalid HTTP method {method:?}")),
    };
    let (pinned, authority) = match pin(url, policy, timeout).await {
        Ok(p) => p,
        Err(why) => {
            return (
                Health::Critical,
                format!("HTTP {method} {url}: refused: {why}"),
            );
        }
    };
    // Each address in turn, as a client of the name would (`localhost` is often ::1 first).
    let mut last_error = None;
    let mut answer = None;
    for target in pinned {
        let mut req = client
            .request(method.clone(), target)
            .header(reqwest::header::HOST, authority.as_str());
        for (k, vs) in headers {
            for v in vs {
                req = req.header(k, v);
            }
        }
        match req.send().await {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(e) if e.is_connect() => last_error = Some(e),
            Err(e) => return (Health::Critical, format!("HTTP {method} {url}: {e}")),
        }
    }
    let Some(mut resp) = answer else {
        let why = last_error.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        return (Health::Critical, format!("HTTP {method} {url}: {why}"));
    };
    let code = resp.status();
    let status = if code.is_success() {
        Health::Passing
    } else if code == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Health::Warning
    } else {
        Health::Critical
    };
    if !policy.keep_body {
        return (status, format!("HTTP {method} {url}: {code}"));
    }
    let mut body = Vec::new();
    while body.len() < MAX_OUTPUT {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(MAX_OUTPUT - body.len())])
            }
            _ => break,
        }
    }
    (
        status,
        format!(
            "HTTP {method} {url}: {code} Output: {}",
            String::from_utf8_lossy(&body)
        ),
    )
}
