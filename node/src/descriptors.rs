//! The process's file-descriptor budget. Every connection the node holds takes descriptors (a
//! relayed gateway connection two: the client's and the backend's), and so does RocksDB; when
//! they run out, RocksDB cannot open a file and Raft fails with it. At start-up the node raises
//! its soft `RLIMIT_NOFILE` to the hard limit, adds up what its configured limits allow plus a
//! fixed share for storage and a reserve, and refuses to start, in one line naming the keys,
//! when that does not fit. The default gateway cap alone is lowered to fit instead: a first run
//! on a host with a modest limit must work.

use std::fmt;

use meridian_catalog::CATALOG_MAX_OPEN_FILES;
use meridian_federation::store::FEDERATION_MAX_OPEN_FILES;

use crate::config::{Config, GatewaySection};

/// Descriptors kept for everything not counted by a limit: Raft, federation and tunnel sockets,
/// the log, the binary and libraries, `/proc` reads, health-check probes.
pub const RESERVE: u64 = 256;

/// What the configured limits let the node hold open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Gateway connections, two descriptors each.
    pub gateway: u64,
    /// HTTP API connections.
    pub http: u64,
    /// DNS over TCP connections (per server thread).
    pub dns_tcp: u64,
    /// RocksDB's open files (catalog and replicas).
    pub storage: u64,
}

impl Budget {
    /// The budget of `config` with the gateway capped at `gateway_connections`.
    pub fn of(config: &Config, gateway_connections: usize) -> Budget {
        let gateway = if config.gateway.enabled {
            2 * gateway_connections as u64
        } else {
            0
        };
        let threads = config.dns.threads.max(1) as u64;
        Budget {
            gateway,
            http: config.limits.max_connections as u64,
            dns_tcp: threads * meridian_dns::TCP_MAX_CONNECTIONS as u64,
            storage: (CATALOG_MAX_OPEN_FILES + FEDERATION_MAX_OPEN_FILES)
                .unsigned_abs()
                .into(),
        }
    }

    /// Every descriptor the node may need, the reserve included.
    pub fn total(&self) -> u64 {
        self.gateway + self.http + self.dns_tcp + self.storage + RESERVE
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (gateway.max_connections x2 = {}, limits.max_connections = {}, DNS over TCP = {}, storage = {}, reserve = {RESERVE})",
            self.total(),
            self.gateway,
            self.http,
            self.dns_tcp,
            self.storage
        )
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit in force (the
/// soft limit as it was, when it cannot be read or raised).
pub fn raise_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            u64::MAX
        }
    }
}

/// The gateway connection cap that keeps the node's budget within `limit` descriptors: the
/// configured one when everything fits; the default one lowered to fit (logged); an error
/// naming the keys to change otherwise.
pub fn gateway_connections(config: &Config, limit: u64) -> anyhow::Result<usize> {
    let wanted = config.gateway.max_connections;
    let budget = Budget::of(config, wanted);
    if budget.total() <= limit {
        return Ok(wanted);
    }
    let is_default = wanted == GatewaySection::default().max_connections;
    let without_gateway = Budget::of(config, 0).total();
    // What is left for the gateway, two descriptors a connection; at least a few to be useful.
    let fits = usize::try_from(limit.saturating_sub(without_gateway) / 2).unwrap_or(usize::MAX);
    if is_default && config.gateway.enabled && fits >= 64 {
        tracing::info!(
            limit,
            max_connections = fits,
            "gateway.max_connections lowered from the default {wanted} to fit the open-file limit (ulimit -n); raise the hard limit for more"
        );
        return Ok(fits);
    }
    anyhow::bail!(
        "the configured limits need {budget} file descriptors, but this process may open {limit} (ulimit -n): raise the hard limit (LimitNOFILE= for systemd) or lower those limits"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn the_default_gateway_cap_shrinks_to_fit_and_an_explicit_one_is_refused() {
        let mut c = Config::dev(&Overrides::default());
        let full = Budget::of(&c, 10_000);
        assert_eq!(full.gateway, 20_000);
        assert_eq!(gateway_connections(&c, 1 << 20).expect("fits"), 10_000);
        // 20,000 descriptors (this kind of host): the default is lowered, all else kept.
        let n = gateway_connections(&c, 20_000).expect("default lowered");
        assert!(n < 10_000 && Budget::of(&c, n).total() <= 20_000, "{n}");
        // Not when the operator chose the number: one line naming what to change.
        c.gateway.max_connections = 15_000;
        let err = gateway_connections(&c, 20_000)
            .expect_err("explicit")
            .to_string();
        assert!(
            err.contains("gateway.max_connections") && err.contains("ulimit -n"),
            "{err}"
        );
        // Nor when too little is left to be of use.
        c.gateway.max_connections = GatewaySection::default().max_connections;
        assert!(gateway_connections(&c, 1024).is_err());
        c.gateway.enabled = false;
        assert_eq!(Budget::of(&c, 10_000).gateway, 0);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{Resource, getrlimit};
        let limit = raise_limit();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!((soft, limit), (hard, hard));
    }
}
