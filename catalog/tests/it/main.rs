//! Catalog tests: openraft's storage conformance suite on the RocksDB store, and real catalog
//! nodes (real RocksDB, real gRPC on loopback) in one process.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

mod cluster;
mod storage;

/// A free TCP port on loopback, never the same one twice in this test process (the kernel may
/// hand a just-released port out again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
