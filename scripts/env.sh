# Sourced by the other scripts: checks and installs what the build and the tests need, and picks
# the one persistent cargo target folder that the demo, the tests and the benchmarks share.
#
# Every dependency is detected by the very file or program that is loaded or run, never by a
# name that an unrelated package can also match: Debian's base system ships libclang-cpp14
# (libclang-cpp.so.14), which a `libclang*.so*` glob once took for bindgen's libclang, so
# libclang-dev was never installed and RocksDB's build failed on a fresh machine.
# scripts/env-test.sh runs `meridian_missing_packages` against fake folders.
set -euo pipefail

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Whether a program is on PATH or in the sbin folders (unbound, nginx and iptables live there, and
# a non-root PATH may lack them). `[ -x ]` follows symlinks, so a dangling alternatives link left
# by a removed package does not count.
meridian_has_program() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# Whether bindgen (through clang-sys) can load a libclang and find clang's builtin headers, under
# the folder $1 ("" for the real system). clang-sys loads only `libclang.so`, `libclang.so.N`,
# `libclang-N.so` or `libclang-N.so.N` (N a version), from LIBCLANG_PATH or the usual library
# folders; `libclang-cpp.so.N` is a different library. bindgen's clang also needs its resource
# headers (stddef.h, from libclang-common-N-dev), which the runtime library alone lacks.
meridian_has_libclang() {
    local root=$1 dirs=() dir lib name found=""
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        dirs+=("$root$LIBCLANG_PATH")
    fi
    dirs+=("$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib "$root"/usr/local/lib)
    for dir in "${dirs[@]}"; do
        for lib in "$dir"/libclang*; do
            [ -e "$lib" ] || continue
            name=${lib##*/}
            if [[ $name =~ ^libclang(-[0-9][0-9.]*)?\.so(\.[0-9][0-9.]*)?$ ]]; then
                found=$lib
                break 2
            fi
        done
    done
    [ -n "$found" ] || return 1
    for lib in "$root"/usr/lib/llvm-*/lib/clang/*/include/stddef.h "$root"/usr/lib/clang/*/include/stddef.h "$root"/usr/local/lib/clang/*/include/stddef.h; do
        [ -e "$lib" ] && return 0
    done
    return 1
}

# The Debian packages this machine lacks for the build and the tests, one per line. The library
# folders are searched under MERIDIAN_ROOT (default: the real system), which is how
# scripts/env-test.sh checks the detection itself.
meridian_missing_packages() {
    local root="${MERIDIAN_ROOT:-}"
    meridian_has_program c++ || echo g++
    # The power-loss chaos tests compile their LD_PRELOAD interposer with cc at run time (g++
    # brings gcc along, but cc alone must be checked: it is what is run).
    meridian_has_program cc || echo gcc
    # RocksDB's bindings are generated with bindgen, which loads libclang at build time.
    meridian_has_libclang "$root" || echo libclang-dev
    # The DNS integration tests query the agent with dig, and through unbound (a stub zone for consul.).
    meridian_has_program unbound || echo unbound
    meridian_has_program dig || echo bind9-dnsutils
    # The gateway's integration tests put nginx (TLS) behind it and drive it with curl and openssl.
    meridian_has_program nginx || echo nginx
    meridian_has_program curl || echo curl
    meridian_has_program openssl || echo openssl
    # The failover tests cut a WAN link with iptables; the WAN benchmarks and chaos scenarios make
    # network namespaces with ip.
    meridian_has_program iptables || echo iptables
    meridian_has_program ip || echo iproute2
}

# `cargo audit`, which scripts/test.sh runs (the demo does not need it): installed once into
# ~/.cargo/bin, built in cargo's own temporary folder rather than the project's target, pinned
# because the advisory database's format moves with the tool, without binary scanning (only
# Cargo.lock is audited).
need_cargo_audit() {
    cargo audit --version >/dev/null 2>&1 && return
    echo "meridian: installing cargo-audit (once, a few minutes)" >&2
    env -u CARGO_TARGET_DIR cargo install --quiet --locked --no-default-features cargo-audit@0.22.2 >&2
}

# Installs what is missing (as root, with apt-get), or says exactly what to install.
meridian_install_missing() {
    local missing
    command -v cargo >/dev/null || { echo "meridian: cargo is missing: install Rust with rustup first (rust-toolchain.toml pins the version it then uses)" >&2; exit 1; }
    mapfile -t missing < <(meridian_missing_packages)
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "meridian: installing ${missing[*]} with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        # Debian starts the packaged nginx on port 80; the tests run their own.
        service nginx stop >/dev/null 2>&1 || true
        mapfile -t missing < <(meridian_missing_packages)
        if [ ${#missing[@]} -gt 0 ]; then
            echo "meridian: still missing after apt-get: ${missing[*]}" >&2
            exit 1
        fi
    else
        echo "meridian: missing build dependencies: run 'sudo apt-get install ${missing[*]}'" >&2
        exit 1
    fi
}

# scripts/env-test.sh sources this file only for its functions.
if [ "${MERIDIAN_ENV_FUNCTIONS_ONLY:-0}" != 1 ]; then
    meridian_install_missing
fi
