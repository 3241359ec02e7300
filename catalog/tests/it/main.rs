//! Catalog tests: openraft's storage conformance suite on the RocksDB store, and real catalog
//! nodes (real RocksDB, real gRPC on loopback) in one process.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

mod cluster;
mod storage;

pub use meridian_testkit::free_port;
