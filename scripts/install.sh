#!/usr/bin/env bash
# Builds `meridian` in the shared release profile and installs it as a command, like `consul`:
# into /usr/local/bin as root, else ~/.local/bin (PREFIX overrides: PREFIX/bin/meridian).
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p meridian --bin meridian
if [ -z "${PREFIX:-}" ]; then
    if [ "$(id -u)" = 0 ]; then PREFIX=/usr/local; else PREFIX=$HOME/.local; fi
fi
install -D -m 755 "$CARGO_TARGET_DIR/release/meridian" "$PREFIX/bin/meridian"
echo "meridian: installed $PREFIX/bin/meridian ($("$PREFIX/bin/meridian" --version))"
case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) echo "meridian: $PREFIX/bin is not on your PATH: export PATH=$PREFIX/bin:\$PATH" ;;
esac
