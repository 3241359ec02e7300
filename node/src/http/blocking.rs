//! Read-side query parameters (`dc`, `index`, `wait`, `passing`, `tag`, `filter`), Consul's blocking
//! queries over the catalog's view watch, and the `X-Consul-*` headers every read carries.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use meridian_catalog::Catalog;
use meridian_topology::{Resolution, View};
use tokio::sync::watch;

use super::error::ApiError;
use super::filter::Filter;
use crate::duration::parse_go_duration;

/// Wait of a blocking query that names none (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest wait of a blocking query (Consul's maximum).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The query parameters of a read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadParams {
    /// `?dc=`.
    pub dc: Option<String>,
    /// `?index=`: block while the index is still this.
    pub index: Option<u64>,
    /// `?wait=`, bounded by [`MAX_WAIT`].
    pub wait: Option<Duration>,
    /// `?passing`.
    pub passing: bool,
    /// `?tag=`, repeatable: an instance must carry all of them.
    pub tags: Vec<String>,
    /// `?node-meta=key:value`, repeatable: the node must carry all of them.
    pub node_meta: Vec<(String, String)>,
    /// `?cached`: answered with `X-Cache` (the local view is Meridian's cache).
    pub cached: bool,
    /// `?failover` (health of a service only): resolved by the failover policy, as DNS and the
    /// gateway resolve the service's plain name.
    pub failover: bool,
}

/// Whether a flag parameter (`?passing`, `?replace-existing-checks`) is on: present with no
/// value or a true value.
pub fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "" | "true" | "1" | "True" | "TRUE" => Ok(true),
        "false" | "0" | "False" | "FALSE" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value for ?{name}: {value:?}"
        ))),
    }
}

impl ReadParams {
    /// Parses the query pairs of an endpoint that has no `?filter` (a filter is refused: ignoring
    /// it would return wrong data).
    pub fn parse(pairs: &[(String, String)]) -> Result<ReadParams, ApiError> {
        let (p, filter) = ReadParams::parse_filtered(pairs)?;
        if filter.is_some() {
            return Err(ApiError::bad_request(
                "?filter is not supported on this endpoint",
            ));
        }
        if !p.node_meta.is_empty() {
            return Err(ApiError::bad_request(
                "?node-meta is not supported on this endpoint",
            ));
        }
        Ok(p)
    }

    /// Parses the query pairs of a listing endpoint, which honours `?node-meta` too, with its
    /// `?filter` expression (Consul's filter language; an empty one is none).
    pub fn parse_filtered(
        pairs: &[(String, String)],
    ) -> Result<(ReadParams, Option<Filter>), ApiError> {
        let mut p = ReadParams::default();
        let mut filter = None;
        for (k, v) in pairs {
            match k.as_str() {
                "dc" if !v.is_empty() => p.dc = Some(v.clone()),
                "index" => {
                    p.index = Some(
                        v.parse()
                            .map_err(|_| ApiError::bad_request(format!("Invalid index {v:?}")))?,
                    );
                }
                "wait" => {
                    let d = parse_go_duration(v)
                        .map_err(|e| ApiError::bad_request(format!("Invalid wait time: {e}")))?;
                    p.wait = Some(d.min(MAX_WAIT));
                }
                "passing" => p.passing = flag("passing", v)?,
                "tag" => p.tags.push(v.clone()),
                "node-meta" => {
                    let (key, value) = v.split_once(':').ok_or_else(|| {
                        ApiError::bad_request(format!("?node-meta={v:?}: expected key:value"))
                    })?;
                    p.node_meta.push((key.to_owned(), value.to_owned()));
                }
                "cached" => p.cached = flag("cached", v)?,
                "failover" => p.failover = flag("failover", v)?,
                "filter" => filter = Filter::from_query(Some(v))?,
                _ => {}
            }
        }
        Ok((p, filter))
    }

    /// Whether `node` carries every `?node-meta` pair (a node missing from the catalog carries
    /// none).
    pub fn node_meta_ok(&self, node: Option<&meridian_topology::Node>) -> bool {
        self.node_meta.iter().all(|(k, v)| {
            node.and_then(|n| n.meta.get(k))
                .is_some_and(|have| have == v)
        })
    }

    /// Fails as Consul does when the query names a datacenter this node cannot answer for.
    pub fn check_dc(&self, view: &View) -> Result<(), ApiError> {
        match &self.dc {
            Some(dc)
                if !view
                    .datacenters()
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(dc)) =>
            {
                Err(ApiError::internal("No path to datacenter"))
            }
            _ => Ok(()),
        }
    }
}

/// The index a client sees for datacenter `dc` (local when `None`): never 0, because Consul
/// clients treat 0 as "do not block".
pub fn reported_index(view: &View, dc: Option<&str>) -> u64 {
    view.dc_state(dc).map_or(0, |(_, s)| s.index()).max(1)
}

/// The view to answer with: at once, or (for a blocking query whose index is not behind the
/// catalog's) the first view with a greater index, or the current one when the wait (plus jitter)
/// runs out or `closing` turns true.
///
/// As in Consul, a query blocks while the index is *at most* the one asked for: a client that has
/// seen index N from one agent and asks a lagging one waits for it to catch up, rather than being
/// answered at once with older data.
pub async fn wait_for_view(
    views: &watch::Receiver<Arc<View>>,
    params: &ReadParams,
    closing: watch::Receiver<bool>,
) -> Arc<View> {
    let Some(index) = params.index.filter(|i| *i > 0) else {
        return views.borrow().clone();
    };
    let dc = params.dc.as_deref();
    wait_until(views, params, closing, |view| {
        reported_index(view, dc) > index
    })
    .await
}

/// The first view for which `moved` holds (the current one included), or the current one when
/// the blocking query's wait (plus jitter) runs out or `closing` turns true.
async fn wait_until(
    views: &watch::Receiver<Arc<View>>,
    params: &ReadParams,
    mut closing: watch::Receiver<bool>,
    moved: impl Fn(&View) -> bool,
) -> Arc<View> {
    let mut rx = views.clone();
    let current = rx.borrow_and_update().clone();
    if moved(&current) {
        return current;
    }
    let wait = params.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    // Jitter spreads out the clients that all started waiting at the same moment.
    let jitter_ms = u64::try_from(wait.as_millis() / 16).unwrap_or(0);
    let jitter = Duration::from_millis(rand::random_range(0..=jitter_ms));
    let deadline = tokio::time::Instant::now() + wait + jitter;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                let view = rx.borrow_and_update().clone();
                if changed.is_err() || moved(&view) {
                    return view;
                }
            }
            () = tokio::time::sleep_until(deadline) => return rx.borrow().clone(),
            _ = closing.wait_for(|c| *c) => return rx.borrow().clone(),
        }
    }
}

/// The index of an answer that follows the failover policy (a prepared query's execution,
/// `?failover`), from what it resolved to: a digest of the DC, how many were passed over, and
/// each instance with its index, health, node and checks, so that a blocking query wakes exactly
/// when the answer changes, whichever DC it comes from. Not monotonic: Consul's clients reset a
/// blocking query whose index goes backwards, as its documentation asks. Below 2^53 (JavaScript
/// clients) and never 0 (which means "do not block").
pub fn resolution_index(
    view: &View,
    resolved: &Result<Resolution<'_>, meridian_topology::ResolveError>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match resolved {
        Ok(res) => {
            res.dc.hash(&mut h);
            res.failovers.hash(&mut h);
            let mut seen: Vec<_> = res
                .instances
                .iter()
                .map(|(i, health)| (&i.node, &i.id, i.modify_index, *health))
                .collect();
            seen.sort_unstable();
            seen.hash(&mut h);
            // Node and check changes (a node check, a check's output) move the answer's body too.
            for (i, _) in &res.instances {
                res.state.node(&i.node).map(|n| n.modify_index).hash(&mut h);
                for c in res.state.checks_of(i) {
                    (c.modify_index, c.status).hash(&mut h);
                }
            }
        }
        Err(e) => (view.datacenter(), e.to_string()).hash(&mut h),
    }
    (h.finish() & ((1 << 53) - 1)).max(1)
}

/// A blocking query's index for an answer that is not the catalog's: a hash of what the answer
/// is made of, in JavaScript's safe integer range and never 0.
pub fn digest_index(of: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    of.hash(&mut h);
    (h.finish() & ((1 << 53) - 1)).max(1)
}

/// The view to answer a query by failover policy from: the current one without `?index`, else
/// the first whose `digest` (the [`resolution_index`] of its answer) differs from the index the
/// client saw, or the current one when the wait runs out.
pub async fn wait_for_resolution(
    views: &watch::Receiver<Arc<View>>,
    params: &ReadParams,
    closing: watch::Receiver<bool>,
    digest: impl Fn(&View) -> u64,
) -> Arc<View> {
    match params.index.filter(|i| *i > 0) {
        Some(seen) => wait_until(views, params, closing, |v| digest(v) != seen).await,
        None => views.borrow().clone(),
    }
}

/// `X-Consul-Index`, `X-Consul-KnownLeader` and `X-Consul-LastContact` for an answer from `view`.
///
/// For a remote datacenter, "leader" and "last contact" describe the federation stream: known
/// while it is up, and the milliseconds since the origin last confirmed the replica;
/// `X-Meridian-Stale` says whether the answer comes from a replica that is not being updated.
pub fn consul_headers(catalog: &Catalog, view: &View, dc: Option<&str>) -> HeaderMap {
    let (known_leader, last_contact_ms, stale) = match dc.and_then(|d| view.remote(d)) {
        Some(r) => (
            r.connected,
            meridian_federation::now_ms().saturating_sub(r.confirmed_unix_ms),
            !r.connected,
        ),
        None => {
            let status = catalog.status();
            let ms = status
                .last_contact
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            (status.leader.is_some(), ms, false)
        }
    };
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("x-consul-index", reported_index(view, dc).to_string()),
        ("x-consul-knownleader", known_leader.to_string()),
        ("x-consul-lastcontact", last_contact_ms.to_string()),
        ("x-meridian-stale", stale.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_read_params() {
        let p = ReadParams::parse(&pairs(&[
            ("index", "42"),
            ("wait", "30s"),
            ("passing", ""),
            ("tag", "a"),
            ("tag", "b"),
            ("dc", "dc1"),
            ("stale", ""),
        ]))
        .expect("valid");
        assert_eq!(p.index, Some(42));
        assert_eq!(p.wait, Some(Duration::from_secs(30)));
        assert!(p.passing);
        assert_eq!(p.tags, ["a", "b"]);
        assert_eq!(p.dc.as_deref(), Some("dc1"));

        let p = ReadParams::parse(&pairs(&[("wait", "1h"), ("passing", "false")])).expect("ok");
        assert_eq!(p.wait, Some(MAX_WAIT));
        assert!(!p.passing);
    }

    #[test]
    fn rejects_bad_read_params() {
        for q in [
            ("index", "x"),
            ("index", "-1"),
            ("wait", "10"),
            ("passing", "maybe"),
            ("filter", "Service == web"),
        ] {
            let err = ReadParams::parse(&pairs(&[q])).expect_err(q.0);
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn unknown_dc_has_no_path() {
        let view = View::new("dc1", Default::default());
        let p = ReadParams {
            dc: Some("dc9".into()),
            ..ReadParams::default()
        };
        let err = p.check_dc(&view).expect_err("dc9");
        assert_eq!(
            (err.status.as_u16(), err.message.as_str()),
            (500, "No path to datacenter")
        );
        let p = ReadParams {
            dc: Some("DC1".into()),
            ..ReadParams::default()
        };
        p.check_dc(&view).expect("local dc");
        assert_eq!(reported_index(&view, None), 1);
    }
}
