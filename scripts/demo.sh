#!/usr/bin/env bash
# The main job: three federated datacenters on loopback with TLS demo services; shows DNS answers,
# a connection through the gateways and a failover drill with its report, then serves until Ctrl-C.
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p meridian --bin meridian
exec "$CARGO_TARGET_DIR/release/meridian" demo "$@"
