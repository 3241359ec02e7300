//! Protocol buffers and the generated tonic/prost code for Meridian's gRPC services.

#![allow(missing_docs, clippy::all)]

/// LAN RPC: Raft between a datacenter's voters and write forwarding.
pub mod catalog {
    tonic::include_proto!("meridian.catalog.v1");
}

/// WAN federation: a datacenter's exported catalog streamed to the others.
pub mod federation {
    tonic::include_proto!("meridian.federation.v1");
}

/// The type of the `bytes` fields generated as shared buffers (see `build.rs`).
pub use prost::bytes::Bytes;
