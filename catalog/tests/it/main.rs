//! Catalog tests: openraft's storage conformance suite on the RocksDB store, and real catalog
//! nodes (real RocksDB, real gRPC on loopback) in one process.

mod cluster;
mod storage;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
