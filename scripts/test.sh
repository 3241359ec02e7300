#!/usr/bin/env bash
# The whole test suite: format, lints, then every test (unit, storage conformance, and real
# `meridian` processes), all in the one release profile so RocksDB is compiled once.
cd "$(dirname "$0")/.."
source scripts/env.sh
started=$(date +%s)
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --no-fail-fast
else
    echo "meridian: cargo-nextest not found, using cargo test" >&2
    cargo test --release --workspace --no-fail-fast
fi
echo "meridian: tests finished in $(( $(date +%s) - started )) s"
