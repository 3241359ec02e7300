#!/usr/bin/env bash
# Tests scripts/env.sh's detection against fake library folders and fake programs, so that a
# check satisfied by an unrelated file (Debian's libclang-cpp.so.14 taken for bindgen's libclang)
# or by a program too old to use cannot come back. Run by scripts/test.sh; prints
# "env detection: N passed, M failed".
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

# `make_program NAME PROGRAM SCRIPT`: an executable $work/NAME/PROGRAM (relative) running the
# shell SCRIPT.
make_program() {
    local file=$work/$1/$2
    mkdir -p "$(dirname "$file")"
    printf '#!/bin/sh\n%s\n' "$3" >"$file"
    chmod +x "$file"
}

# `expect NAME yes|no [PACKAGE]`: whether detection under the fake root NAME, with only its bin/
# on PATH, must ask for PACKAGE (default libclang-dev).
expect() {
    local name=$1 want=$2 package=${3:-libclang-dev} got=no missing
    # Read whole before grep: `grep -q` would stop reading at its match, and the writer's
    # SIGPIPE would fail the pipeline (pipefail).
    missing=$(PATH=$work/$name/bin MERIDIAN_ROOT=$work/$name meridian_missing_packages)
    if grep -qx "$package" <<<"$missing"; then
        got=yes
    fi
    if [ "$got" = "$want" ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "env detection: $name: asks for $package: $got, expected $want" >&2
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
expect empty yes nodejs
expect empty yes npm
expect empty yes python3-venv

# Node.js and npm are asked what version they are. Debian 12's node 18 and npm 9 do.
make_program node18 bin/node 'echo 18'
make_program node18 bin/npm 'echo 9.2.0'
expect node18 no nodejs
expect node18 no npm
# Debian 11's node 12 and npm 7: node is too old for the tests, npm reads lockfile v3.
make_program node12 bin/node 'echo 12'
make_program node12 bin/npm 'echo 7.5.2'
expect node12 yes nodejs
expect node12 no npm
# A node that does not run (a broken install), and npm 6, which cannot read the lock file.
make_program broken bin/node 'exit 127'
make_program broken bin/npm 'echo 6.14.4'
expect broken yes nodejs
expect broken yes npm

# Debian's python3 is run with the real check: this machine's, as it is (scripts/env.sh has
# installed python3-venv by now); without ensurepip (python3-venv missing); and claiming 3.9.
mkdir -p "$work/venv/usr/bin" "$work/no-ensurepip/usr/bin" "$work/py39/usr/bin"
ln -s /usr/bin/python3 "$work/venv/usr/bin/python3"
expect venv no python3-venv
mkdir -p "$work/no-ensurepip/lib"
echo 'raise ImportError("no module named ensurepip")' >"$work/no-ensurepip/lib/ensurepip.py"
make_program no-ensurepip usr/bin/python3 "PYTHONPATH=$work/no-ensurepip/lib exec /usr/bin/python3 \"\$@\""
expect no-ensurepip yes python3-venv
mkdir -p "$work/py39/lib"
echo 'import sys; sys.version_info = (3, 9, 2, "final", 0)' >"$work/py39/lib/sitecustomize.py"
make_program py39 usr/bin/python3 "PYTHONPATH=$work/py39/lib exec /usr/bin/python3 \"\$@\""
expect py39 yes python3-venv

# Chromium is run: Debian's prints its version; a stub that exits (a removed package's leftover
# alternatives link, an Ubuntu snap transition script) does not count.
make_program chromium bin/chromium 'echo "Chromium 156.0.8078.114 built on Debian GNU/Linux 12 (bookworm)"'
expect chromium no chromium
make_program chromium-stub bin/chromium 'echo "Command '"'"'chromium'"'"' requires the chromium snap to be installed." >&2; exit 1'
expect chromium-stub yes chromium
expect empty yes chromium
# A font is a TrueType file in a font folder, not the fontconfig configuration alone.
make_root fonts usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
expect fonts no fonts-dejavu-core
make_root fontconfig-only etc/fonts/fonts.conf usr/share/fonts/X11/misc/fonts.dir
expect fontconfig-only yes fonts-dejavu-core

echo "env detection: $passed passed, $failed failed"
[ "$failed" = 0 ]
