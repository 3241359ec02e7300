#!/usr/bin/env bash
# The whole test suite: format, lints, every test (unit, storage conformance, and real
# `meridian` processes), then every benchmark's quick run, all in the one release profile so
# RocksDB is compiled once.
cd "$(dirname "$0")/.."
source scripts/env.sh
started=$(date +%s)
# The set-up's own detection, against fake library folders.
bash scripts/env-test.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
# Known advisories (RustSec) against Cargo.lock, from the snapshot in .ci/advisory-db (its date
# and how to refresh it: .ci/advisory-db/SNAPSHOT); what is ignored, and why: .cargo/audit.toml.
need_cargo_audit
cargo audit
# The chaos suite's checker self-tests run a deliberately broken build beside the real one
# (its own binary name, so target/release/meridian stays the real thing).
cargo build --release -p meridian --features chaos-broken --bin meridian-broken
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --no-fail-fast
else
    echo "meridian: cargo-nextest not found, using cargo test" >&2
    cargo test --release --workspace --no-fail-fast
fi
# The Debian package: built, installed, started as its unit would start it, purged (about 30 s;
# root; MERIDIAN_SKIP_PACKAGE=1 skips it).
if [ "${MERIDIAN_SKIP_PACKAGE:-0}" != 1 ]; then bash scripts/package-check.sh; fi
echo "meridian: tests finished in $(( $(date +%s) - started )) s"
# Every benchmark in its short form, beside its peers: fails only when a run could not complete
# (a target missed is a finding in the report, not a failure). The WAN benchmarks need root for
# their network namespace; MERIDIAN_SKIP_BENCH=1 skips this step.
if [ "${MERIDIAN_SKIP_BENCH:-0}" != 1 ]; then
    bench_started=$(date +%s)
    # Binaries and tests, as nextest built them: the same feature set (dev-dependencies'
    # features included), so the `meridian` the tests ran is reused and only the bench binary
    # compiles (`--all-targets` would add bench harnesses nobody runs).
    cargo build --release --workspace --bins --tests
    "$CARGO_TARGET_DIR/release/meridian-bench" all --quick --out "$CARGO_TARGET_DIR/bench-quick"
    echo "meridian: quick benchmarks finished in $(( $(date +%s) - bench_started )) s; reports in $CARGO_TARGET_DIR/bench-quick"
fi
