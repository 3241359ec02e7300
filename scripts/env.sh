# Sourced by the other scripts: checks and installs what the build needs, and picks the one
# persistent cargo target folder that the demo, the tests and the benchmarks share.
set -euo pipefail

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need_apt=()
command -v cargo >/dev/null || { echo "meridian: cargo is missing: install Rust stable (rustup) first" >&2; exit 1; }
command -v c++ >/dev/null || need_apt+=(g++)
# RocksDB's bindings are generated with bindgen, which loads libclang at build time.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    need_apt+=(libclang-dev)
fi
# The DNS integration tests query the agent with dig, and through unbound (a stub zone for consul.).
command -v unbound >/dev/null || [ -x /usr/sbin/unbound ] || need_apt+=(unbound)
command -v dig >/dev/null || need_apt+=(bind9-dnsutils)
# The gateway's integration tests put nginx (TLS) behind it and drive it with curl and openssl.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
# The failover tests cut a WAN link between two loopback addresses with iptables.
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need_apt+=(iptables)
# `cargo audit`, which scripts/test.sh runs (the demo does not need it): installed once into
# ~/.cargo/bin, built in cargo's own temporary folder rather than the project's target, pinned
# because the advisory database's format moves with the tool, without binary scanning (only
# Cargo.lock is audited).
need_cargo_audit() {
    cargo audit --version >/dev/null 2>&1 && return
    echo "meridian: installing cargo-audit (once, a few minutes)" >&2
    env -u CARGO_TARGET_DIR cargo install --locked --no-default-features cargo-audit@0.22.2 >&2
}
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "meridian: installing ${need_apt[*]} with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
        # Debian starts the packaged nginx on port 80; the tests run their own.
        service nginx stop >/dev/null 2>&1 || true
    else
        echo "meridian: missing build dependencies: run 'sudo apt-get install ${need_apt[*]}'" >&2
        exit 1
    fi
fi
