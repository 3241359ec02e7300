#!/usr/bin/env bash
# Tests scripts/env.sh's detection against fake library folders, so that a check satisfied by an
# unrelated file (Debian's libclang-cpp.so.14 taken for bindgen's libclang) cannot come back.
# Run by scripts/test.sh; prints "env detection: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
MERIDIAN_ENV_FUNCTIONS_ONLY=1 source scripts/env.sh
unset LIBCLANG_PATH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# A fake system root: `make_root NAME FILE...` creates each FILE (relative) under $work/NAME.
make_root() {
    local root=$work/$1 f
    shift
    mkdir -p "$root"
    for f in "$@"; do
        mkdir -p "$root/$(dirname "$f")"
        : >"$root/$f"
    done
}

# `expect NAME yes|no`: whether detection under the fake root NAME must ask for libclang-dev.
expect() {
    local name=$1 want=$2 got=no
    if MERIDIAN_ROOT=$work/$name meridian_missing_packages | grep -qx libclang-dev; then
        got=yes
    fi
    if [ "$got" = "$want" ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "env detection: $name: asks for libclang-dev: $got, expected $want" >&2
    fi
}

headers=usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h
# Debian's base system: only libclang-cpp, a different library. The old glob took it for libclang.
make_root cpp-only usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/x86_64-linux-gnu/libclang-cpp.so.14 "$headers"
expect cpp-only yes
# libclang-dev installed: libclang.so.1 in LLVM's folder, with clang's builtin headers.
make_root llvm-lib usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/llvm-14/lib/libclang.so.1 "$headers"
expect llvm-lib no
# The versioned name in the multiarch folder.
make_root multiarch usr/lib/x86_64-linux-gnu/libclang-14.so.1 "$headers"
expect multiarch no
# The runtime library alone (libclang1-14): bindgen's clang cannot find stddef.h.
make_root no-headers usr/lib/llvm-14/lib/libclang.so.1
expect no-headers yes
# LIBCLANG_PATH is where clang-sys looks first.
make_root custom opt/llvm/lib/libclang.so "$headers"
expect custom yes
LIBCLANG_PATH=/opt/llvm/lib expect custom no
# Nothing at all.
make_root empty
expect empty yes

echo "env detection: $passed passed, $failed failed"
[ "$failed" = 0 ]
