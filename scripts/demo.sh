#!/usr/bin/env bash
# The main job: a one-node datacenter with demo services, its endpoints printed. Ctrl-C stops it.
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p meridian --bin meridian
exec "$CARGO_TARGET_DIR/release/meridian" demo "$@"
