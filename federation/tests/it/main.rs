//! Federation against real gRPC over mutual TLS on loopback: real `Federation` nodes, and a
//! scripted origin (a compromised node with a valid certificate) where the test needs one.

mod caps;
mod harness;
