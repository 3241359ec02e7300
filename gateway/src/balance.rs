//! Local balancing: which instance of this datacenter a connection goes to. Power of two choices
//! on the connections this gateway has open to each instance; a connect that fails or times out
//! moves on to the next candidate before the client notices.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use crate::error::ConnError;

/// Open connections per instance address, for power of two choices.
#[derive(Debug, Default)]
pub(crate) struct Balancer(Arc<Load>);

#[derive(Debug, Default)]
struct Load(Mutex<HashMap<SocketAddr, usize>>);

impl Load {
    fn open(&self, addr: SocketAddr) -> usize {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&addr).copied().unwrap_or(0)
    }

    fn acquire(self: &Arc<Self>, addr: SocketAddr) -> LoadGuard {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry(addr).or_insert(0) += 1;
        LoadGuard {
            load: Arc::clone(self),
            addr,
        }
    }
}

/// Counts one open connection to an instance until dropped.
pub(crate) struct LoadGuard {
    load: Arc<Load>,
    addr: SocketAddr,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut map = self.load.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

impl Balancer {
    /// Connects to one of `candidates` (instances of `sni`), by power of two choices, trying the
    /// others on failure; each connect has `timeout`. The guard counts the connection as open
    /// until dropped.
    pub(crate) async fn connect(
        &self,
        sni: &str,
        mut candidates: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<(TcpStream, LoadGuard), ConnError> {
        let mut tried = 0;
        while !candidates.is_empty() {
            let i = self.pick(&candidates);
            let addr = candidates.swap_remove(i);
            tried += 1;
            let guard = self.0.acquire(addr);
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small writes (the hello, interactive protocols) go out at once.
                    stream.set_nodelay(true)?;
                    return Ok((stream, guard));
                }
                Ok(Err(e)) => debug!(%addr, error = %e, "connect failed, trying the next instance"),
                Err(_) => debug!(%addr, "connect timed out, trying the next instance"),
            }
        }
        Err(ConnError::NoInstance {
            sni: sni.to_owned(),
            tried,
        })
    }

    /// Power of two choices: of two distinct random candidates, the one with fewer open
    /// connections.
    fn pick(&self, candidates: &[SocketAddr]) -> usize {
        let n = candidates.len();
        if n < 2 {
            return 0;
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        if self.0.open(candidates[b]) < self.0.open(candidates[a]) {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn two_choices_prefer_the_less_loaded_and_guards_release() {
        let b = Balancer::default();
        let busy = (0..3).map(|_| b.0.acquire(addr(1))).collect::<Vec<_>>();
        // With two candidates both are always drawn: the idle one wins every time.
        for _ in 0..50 {
            assert_eq!(b.pick(&[addr(1), addr(2)]), 1);
        }
        assert_eq!(b.0.open(addr(1)), 3);
        drop(busy);
        assert_eq!(b.0.open(addr(1)), 0);
        assert!(b.0.0.lock().expect("lock").is_empty());
    }
}
