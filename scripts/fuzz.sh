#!/usr/bin/env bash
# A deeper fuzzing run than the test suite's: every proptest-based fuzz test with
# PROPTEST_CASES cases (default 100000), each test binary bounded by FUZZ_SECONDS (default 600),
# then the DNS request target with cargo-fuzz for FUZZ_SECONDS when `cargo +nightly fuzz` is
# there (skipped with a message otherwise). See SECURITY.md.
#
# Usage: scripts/fuzz.sh [cases] [seconds]
cd "$(dirname "$0")/.."
source scripts/env.sh

cases=${1:-${PROPTEST_CASES:-100000}}
seconds=${2:-${FUZZ_SECONDS:-600}}
failed=0

# One crate's fuzz tests, bounded by time; a timeout counts as a failure, so it is noticed.
run() {
    local crate=$1
    shift
    echo "fuzz: $crate $* (PROPTEST_CASES=$cases, at most ${seconds}s)" >&2
    if ! PROPTEST_CASES=$cases timeout --signal=INT "$seconds" \
        cargo nextest run --release --no-fail-fast -p "$crate" "$@"; then
        echo "fuzz: $crate failed or ran out of time" >&2
        failed=1
    fi
}

run meridian-gateway header::fuzz
run meridian-federation replica::fuzz export::fuzz
run meridian-node fuzz::
run meridian-dns random_bytes_never_panic mutated_queries_never_panic \
    hostile_recursor_answers_never_reach_the_client_unchecked

if cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz, dns/fuzz target request, ${seconds}s" >&2
    if ! (cd dns && cargo +nightly fuzz run request fuzz/corpus/request -- \
        -max_total_time="$seconds"); then
        failed=1
    fi
else
    echo "fuzz: skipping dns/fuzz (needs nightly and cargo-fuzz: rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
fi
exit "$failed"
