#!/usr/bin/env bash
# Builds the Debian package: `meridian` from the shared release profile, the systemd unit, the
# one-node config (a conffile) and the maintainer scripts of packaging/deb/, assembled and built
# with dpkg-deb alone. Prints the path of meridian_<version>_<arch>.deb.
#
#   scripts/package-deb.sh [--binary FILE] [--out DIR]
#
# --binary packages a binary already built instead of building one; --out is where the package
# goes (default: $CARGO_TARGET_DIR/deb). The version is the binary's own (`meridian --version`);
# Depends is what dpkg-shlibdeps finds the binary linked against (RocksDB is linked in
# statically: libc6, libgcc-s1, libstdc++6), plus adduser for the postinst.
cd "$(dirname "$0")/.."
source scripts/env.sh

binary=""
out="$CARGO_TARGET_DIR/deb"
while [ $# -gt 0 ]; do
    case $1 in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: scripts/package-deb.sh [--binary FILE] [--out DIR]" >&2; exit 2 ;;
    esac
done

meridian_need dpkg dpkg-deb --version
meridian_need dpkg-dev dpkg-shlibdeps --version
meridian_need binutils strip --version

if [ -z "$binary" ]; then
    cargo build --release -p meridian --bin meridian >&2
    binary="$CARGO_TARGET_DIR/release/meridian"
fi
version=$("$binary" --version | awk '{ print $2 }')
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
    echo "meridian: '$binary --version' gives no version a Debian package can carry: '$version'" >&2
    exit 1
fi
arch=$(dpkg --print-architecture)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps looks for debian/control, and for the package's files under debian/<package>.
root=$work/debian/meridian
mkdir -p "$root"
printf 'Source: meridian\n\nPackage: meridian\nArchitecture: any\n' >"$work/debian/control"
src=packaging/deb
doc=$root/usr/share/doc/meridian
install -D -m 0755 "$binary" "$root/usr/bin/meridian"
# The C++ parts' debug sections (the symbols stay, for readable backtraces).
strip --strip-debug "$root/usr/bin/meridian"
# Debian 12 keeps packaged units in /lib (merged /usr or not).
install -D -m 0644 "$src/meridian.service" "$root/lib/systemd/system/meridian.service"
# 0750 and 0640: the postinst gives them to group meridian; the config will hold tokens.
install -d -m 0750 "$root/etc/meridian"
install -m 0640 "$src/meridian.toml" "$root/etc/meridian/meridian.toml"
install -d "$doc"
install -m 0644 "$src/copyright" "$doc/copyright"
gzip -9n <README.md >"$doc/README.md.gz"
gzip -9n <SECURITY.md >"$doc/SECURITY.md.gz"
chmod 0644 "$doc"/*.gz
install -d "$root/DEBIAN"
install -m 0755 "$src/postinst" "$src/prerm" "$src/postrm" "$root/DEBIAN/"
install -m 0644 "$src/conffiles" "$root/DEBIAN/conffiles"
# For `dpkg --verify`; conffiles are tracked by dpkg itself.
(cd "$root" && find usr lib -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
depends=$(cd "$work" && dpkg-shlibdeps -O debian/meridian/usr/bin/meridian)
depends=${depends#shlibs:Depends=}
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
    "$src/control.in" >"$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/meridian_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
echo "$deb"
