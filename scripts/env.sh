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
# The checkout this file belongs to, wherever it is sourced from.
MERIDIAN_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

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

# Whether the `node` on PATH can run the npm `consul` client's tests: Node.js 18 or newer
# (Debian 12's; consul 2.0.1 declares no engines, but its uuid 10 needs 16, and the tests use the
# global fetch of 18). Asked of the program itself: a node that does not run does not count.
meridian_has_node() {
    local major
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || return 1
    [[ $major =~ ^[0-9]+$ ]] && [ "$major" -ge 18 ]
}

# Whether the `npm` on PATH reads the committed package-lock.json (lockfile v3: npm 7 or newer;
# Debian 12 has 9). NodeSource's nodejs brings its own npm, so Debian's is asked for only when
# there is none that works.
meridian_has_npm() {
    local version
    version=$(npm --version 2>/dev/null) || return 1
    [[ ${version%%.*} =~ ^[0-9]+$ ]] && [ "${version%%.*}" -ge 7 ]
}

# Whether Debian's python3 under the folder $1 ("" for the real system) can make the py-consul
# venv: Python 3.10 or newer (py-consul 1.8.0's floor) with venv's ensurepip and the pip wheel it
# installs (python3-venv; without it `python3 -m venv` fails). Never the python3 on PATH, which
# may be a pyenv shim or another interpreter.
meridian_has_python_venv() {
    "$1/usr/bin/python3" -c 'import sys, venv, ensurepip; ensurepip.version(); sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1
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
    # The client compatibility tests (meridian/tests/it/clients.rs) run the npm `consul` client
    # with node and py-consul in a venv of Debian's python3.
    meridian_has_node || echo nodejs
    meridian_has_npm || echo npm
    meridian_has_python_venv "$root" || echo python3-venv
    # The UI's browser tests (meridian/tests/it/ui.rs) drive Debian's chromium headless, and read
    # its text in fonts that fontconfig must find (fonts-dejavu-core: chromium only recommends
    # fonts, and a page without any renders empty boxes in the screenshots).
    meridian_has_chromium || echo chromium
    meridian_has_font "$root" || echo fonts-dejavu-core
}

# Whether Debian's chromium runs (the program is run, not looked for: a dangling alternatives
# link or a snap stub does not count).
meridian_has_chromium() {
    local version
    version=$(chromium --version 2>/dev/null) || return 1
    [[ $version =~ ^Chromium\ [0-9] ]]
}

# Whether a TrueType font is installed under the folder $1 ("" for the real system).
meridian_has_font() {
    local f
    for f in "$1"/usr/share/fonts/truetype/*/*.ttf; do
        [ -e "$f" ] && return 0
    done
    return 1
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

# `meridian_need PACKAGE COMMAND...`, for a tool only one script needs (the Debian package's):
# runs COMMAND (a harmless one, such as `dpkg-shlibdeps --version`) to see that the tool works,
# and when it does not, installs the Debian package PACKAGE (as root, with apt-get) or says
# exactly what to install, then runs it again.
meridian_need() {
    local package=$1
    shift
    "$@" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "meridian: installing $package with apt-get (for $1)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
        "$@" >/dev/null 2>&1 && return 0
        echo "meridian: '$*' still fails after installing $package" >&2
    else
        echo "meridian: $1 is missing: run 'sudo apt-get install $package'" >&2
    fi
    exit 1
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

# The Consul clients that meridian/tests/it/clients.rs drives, pinned in meridian/tests/clients/:
# the npm `consul` (package-lock.json, installed with `npm ci`) and PyPI's py-consul
# (requirements.txt with hashes, into a venv of Debian's /usr/bin/python3). Each goes into a
# folder of ~/.cache/meridian/clients named by the hash of what pins it (and of the Python
# version), so a changed pin installs anew and checkouts pinning different versions keep their
# own; a folder counts only once the client loads from it, and installs are serialized by a lock
# so parallel runs do not interleave. Exports MERIDIAN_NODE_CLIENTS (a folder whose node_modules
# holds `consul`) and MERIDIAN_PY_CLIENTS (the venv's python) for the tests.
meridian_install_clients() {
    local src=$MERIDIAN_REPO/meridian/tests/clients cache=$HOME/.cache/meridian/clients hash
    local npm_dir venv_dir
    mkdir -p "$cache"
    hash=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)
    npm_dir=$cache/npm-$hash
    hash=$({ cat "$src/requirements.txt"; /usr/bin/python3 --version; } | sha256sum | cut -c1-16)
    venv_dir=$cache/venv-$hash
    (
        flock 9
        meridian_npm_install "the npm consul client" "$src" "$npm_dir" meridian_npm_clients_load
        if ! meridian_py_clients_load "$venv_dir" "$src/requirements.txt"; then
            echo "meridian: installing py-consul into the venv $venv_dir" >&2
            rm -rf "$venv_dir"
            /usr/bin/python3 -m venv "$venv_dir"
            "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
                --require-hashes --only-binary=:all: -r "$src/requirements.txt" >&2
            meridian_py_clients_load "$venv_dir" "$src/requirements.txt" || { echo "meridian: py-consul does not import from $venv_dir after pip install" >&2; exit 1; }
        fi
    ) 9>"$cache/install.lock"
    export MERIDIAN_NODE_CLIENTS=$npm_dir
    export MERIDIAN_PY_CLIENTS=$venv_dir/bin/python
}

# The UI's browser driver, pinned in ui/tests/ (package-lock.json): puppeteer-core, which drives
# the system's chromium and downloads no browser. Into a folder of ~/.cache/meridian/clients named
# by the hash of its pins, like the Consul clients; exports MERIDIAN_UI_TOOLS (a folder whose
# node_modules holds puppeteer-core) for the tests.
meridian_install_ui_tools() {
    local src=$MERIDIAN_REPO/ui/tests cache=$HOME/.cache/meridian/clients hash dir
    mkdir -p "$cache"
    hash=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)
    dir=$cache/ui-$hash
    (
        flock 9
        meridian_npm_install puppeteer-core "$src" "$dir" meridian_ui_tools_load
    ) 9>"$cache/install.lock"
    export MERIDIAN_UI_TOOLS=$dir
}

# Whether puppeteer-core loads from the folder $1, at its locked versions.
meridian_ui_tools_load() {
    meridian_npm_loads "$1" 'if (typeof require("puppeteer-core").launch !== "function") process.exit(1);'
}

# `meridian_npm_install WHAT SRC DIR CHECK`: unless the function CHECK says the folder DIR holds
# them, installs the npm packages SRC pins (its package.json and package-lock.json) into DIR with
# `npm ci` (no install scripts), then asks CHECK again. The caller holds the install lock.
meridian_npm_install() {
    local what=$1 src=$2 dir=$3 check=$4
    "$check" "$dir" && return 0
    echo "meridian: installing $what (npm ci) into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    "$check" "$dir" || { echo "meridian: $what does not load from $dir after npm ci" >&2; exit 1; }
}

# `meridian_npm_loads DIR SCRIPT`: whether the folder DIR holds every package of its
# package-lock.json at the locked version and the node SCRIPT (which loads them) runs there.
meridian_npm_loads() {
    (cd "$1" 2>/dev/null && node -e '
        const fs = require("fs");
        for (const [path, locked] of Object.entries(require("./package-lock.json").packages)) {
            if (path && JSON.parse(fs.readFileSync(`${path}/package.json`)).version !== locked.version) process.exit(1);
        }
    ' && node -e "$2") >/dev/null 2>&1
}

# Whether the npm `consul` client loads from the folder $1, at its locked versions, and makes a
# client.
meridian_npm_clients_load() {
    meridian_npm_loads "$1" 'const Consul = require("consul"); new Consul({ host: "127.0.0.1" });'
}

# Whether the venv $1 holds every package that requirements.txt $2 pins, at its pinned version,
# and py-consul imports from it and makes a client.
meridian_py_clients_load() {
    "$1/bin/python" -c '
import re, sys
from importlib.metadata import version
for name, pinned in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(sys.argv[1]).read(), re.M):
    if version(name) != pinned:
        sys.exit(1)
import consul
consul.Consul(host="127.0.0.1", port=8500)
' "$2" >/dev/null 2>&1
}

# scripts/env-test.sh sources this file only for its functions.
if [ "${MERIDIAN_ENV_FUNCTIONS_ONLY:-0}" != 1 ]; then
    meridian_install_missing
    meridian_install_clients
    meridian_install_ui_tools
fi
