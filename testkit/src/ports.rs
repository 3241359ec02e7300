//! Free ports for agents, and the five ports of one agent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// A port free for TCP and UDP on every address of `ips`, never handed out twice in this
/// process nor, within [`CLAIM_FOR`], by another test process on this machine (each claims its
/// ports with a file in [`claims_dir`]: tests run as parallel processes, and two that drew the
/// same free port raced for it). Drawn at random below the kernel's ephemeral range (32768 and
/// up), so neither the outgoing connections of other tests nor another process asking the kernel
/// for a port can take it between this check and the agent's bind.
pub fn free_port_on(ips: &[IpAddr]) -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port: u16 = rand::random_range(10_000..32_768);
        if given.contains(&port) || !claim(port) {
            continue;
        }
        let free = ips.iter().all(|ip| {
            let a = SocketAddr::new(*ip, port);
            TcpListener::bind(a).is_ok() && UdpSocket::bind(a).is_ok()
        });
        if free {
            given.push(port);
            return port;
        }
    }
}

/// How long a port claimed by one test process stays off limits to the others.
const CLAIM_FOR: Duration = Duration::from_secs(600);

/// Where test processes claim ports, one empty file per port.
fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("meridian-test-ports")
}

/// Claims `port` for this process unless another claimed it less than [`CLAIM_FOR`] ago. A
/// claims folder that cannot be written claims nothing and refuses nothing.
fn claim(port: u16) -> bool {
    let dir = claims_dir();
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let file = dir.join(port.to_string());
    let fresh = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_some_and(|age| age < CLAIM_FOR);
    if fresh {
        return false;
    }
    // An old claim (or none): take it. `create_new` settles two processes that draw the port
    // at once; two that both find the same stale claim can still both win, far more rarely than
    // the race this removes.
    let _ = std::fs::remove_file(&file);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .is_ok()
}

/// A port free for TCP and UDP on 127.0.0.1 (see [`free_port_on`]).
pub fn free_port() -> u16 {
    free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

/// The ports of one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ports {
    /// HTTP API.
    pub http: u16,
    /// DNS (UDP and TCP).
    pub dns: u16,
    /// LAN gRPC: Raft and forwarded writes.
    pub rpc: u16,
    /// WAN gRPC: federation.
    pub wan: u16,
    /// Gateway (TCP) and its QUIC tunnel (UDP).
    pub gateway: u16,
}

impl Ports {
    /// Five free ports on 127.0.0.1.
    pub fn free() -> Ports {
        Ports::free_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)])
    }

    /// The `meridian agent` flags that set these ports (`--http-port N` …).
    pub fn args(&self) -> Vec<String> {
        [
            ("--http-port", self.http),
            ("--dns-port", self.dns),
            ("--rpc-port", self.rpc),
            ("--wan-port", self.wan),
            ("--gateway-port", self.gateway),
        ]
        .into_iter()
        .flat_map(|(flag, port)| [flag.to_owned(), port.to_string()])
        .collect()
    }

    /// Five ports free on every address of `ips`.
    pub fn free_on(ips: &[IpAddr]) -> Ports {
        Ports {
            http: free_port_on(ips),
            dns: free_port_on(ips),
            rpc: free_port_on(ips),
            wan: free_port_on(ips),
            gateway: free_port_on(ips),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_never_handed_out_twice() {
        let a = Ports::free();
        let b = Ports::free();
        let all = [
            a.http, a.dns, a.rpc, a.wan, a.gateway, b.http, b.dns, b.rpc, b.wan, b.gateway,
        ];
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{all:?}");
        assert!(all.iter().all(|p| (10_000..32_768).contains(p)));
        assert!(TcpListener::bind(("127.0.0.1", a.http)).is_ok());
    }
}
