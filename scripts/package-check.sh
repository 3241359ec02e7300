#!/usr/bin/env bash
# The Debian package's must-hold check (scripts/test.sh runs it after the tests): builds the
# package with scripts/package-deb.sh, checks its control data and files, has systemd-analyze
# verify the unit (it must refuse it while /usr/bin/meridian is missing, then accept it once
# installed) and rate its sandbox, installs it with `dpkg -i`, runs the unit's ExecStart as its
# User with the installed config until the node leads and answers DNS, stops it with SIGTERM,
# reinstalls over an edited config (which must survive, with the certificates), then purges it
# and checks that nothing is left. A trap purges on failure too.
#
# PID 1 here need not be systemd, so the unit is not started by systemctl: the check runs its
# command as systemd would as far as a shell can (User and Group, LimitNOFILE, UMask, no new
# privileges, no capabilities, an empty environment, in /). The rest of the sandbox
# (ProtectSystem, the system call filter, ...) is checked by systemd-analyze only.
#
#   scripts/package-check.sh [--binary FILE]     (FILE: package this binary, as package-deb.sh)
#
# Root only, since it installs a package. It purges only what it installed itself: it marks
# that in /var/tmp/meridian-package-check, and refuses to run over a meridian package, user or
# file it did not install.
cd "$(dirname "$0")/.."
build=()
case "${1:-}" in
--binary) build=(--binary "$2") ;;
"") ;;
*) echo "usage: scripts/package-check.sh [--binary FILE]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "meridian: the package check installs and purges a Debian package: run it as root (MERIDIAN_SKIP_PACKAGE=1 makes scripts/test.sh skip it)" >&2
    exit 1
fi
source scripts/env.sh
started=$(date +%s)

# Each tool is run, not looked for.
meridian_need dpkg dpkg --version
meridian_need systemd systemd-analyze --version
meridian_need util-linux setpriv --version
meridian_need util-linux prlimit --version
meridian_need curl curl --version
meridian_need bind9-dnsutils dig -v
meridian_need iproute2 ss -V
# A dependency of the package, which `dpkg -i` does not install.
meridian_need adduser adduser --version

unit=/lib/systemd/system/meridian.service
conf=/etc/meridian/meridian.toml
marker=/var/tmp/meridian-package-check
logs=$CARGO_TARGET_DIR/deb/check
mkdir -p "$logs"
agent=""

fail() {
    echo "meridian: package check failed: $*" >&2
    exit 1
}

# What a meridian package leaves on this machine, one per line.
leftovers() {
    local status f
    status=$(dpkg-query -W -f='${db:Status-Status}' meridian 2>/dev/null) || status=not-installed
    [ "$status" = not-installed ] || echo "package meridian ($status)"
    getent passwd meridian >/dev/null && echo "user meridian"
    getent group meridian >/dev/null && echo "group meridian"
    for f in /usr/bin/meridian /etc/meridian /var/lib/meridian "$unit"; do
        [ -e "$f" ] && echo "$f"
    done
    return 0
}

# Stops the agent this check started (its pid is in the marker), if it still runs.
stop_agent() {
    local pid=${1:-}
    [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/meridian ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Purges what this check installed, and checks that nothing is left.
purge() {
    stop_agent "$(cat "$marker" 2>/dev/null)"
    dpkg --purge meridian >>"$logs/dpkg.log" 2>&1 || true
    local left
    left=$(leftovers)
    [ -z "$left" ] || { echo "meridian: left after dpkg --purge meridian: ${left//$'\n'/, }" >&2; return 1; }
    rm -f "$marker"
}

on_exit() {
    local rc=$?
    if [ -e "$marker" ]; then
        purge || rc=1
    fi
    [ $rc = 0 ] || echo "meridian: package check logs in $logs" >&2
    exit $rc
}

left=$(leftovers)
if [ -n "$left" ]; then
    [ -e "$marker" ] || fail "this machine already has ${left//$'\n'/, }, which this check did not install (remove them first, or set MERIDIAN_SKIP_PACKAGE=1)"
    echo "meridian: purging what an earlier package check left: ${left//$'\n'/, }" >&2
    purge || exit 1
fi
trap on_exit EXIT
: >"$logs/dpkg.log"

# The installed config's ports (packaging/deb/meridian.toml).
busy=$(ss -Hlntu '( sport = :8500 or sport = :8600 or sport = :8300 or sport = :8302 or sport = :8443 )')
[ -z "$busy" ] || fail "ports the installed config uses (8500, 8600, 8300, 8302, 8443) are taken:"$'\n'"$busy"

deb=$(bash scripts/package-deb.sh "${build[@]}")
echo "meridian: built $deb"

# Control data and files.
version=$("${build[1]:-$CARGO_TARGET_DIR/release/meridian}" --version | awk '{ print $2 }')
[ "$(dpkg-deb --field "$deb" Package)" = meridian ] || fail "Package is not meridian"
[ "$(dpkg-deb --field "$deb" Version)" = "$version" ] || fail "Version is not the binary's $version"
depends=$(dpkg-deb --field "$deb" Depends)
for d in adduser libc6 libgcc-s1 libstdc++6; do
    sed 's/ *([^)]*)//g; s/, */\n/g' <<<"$depends" | grep -qxF "$d" || fail "Depends lacks $d: $depends"
done
[ "$(dpkg-deb --info "$deb" conffiles)" = "$conf" ] || fail "the conffiles are not just $conf"
paths=$(dpkg-deb --contents "$deb" | awk '{ print $NF }')
for f in /usr/bin/meridian "$unit" "$conf" /usr/share/doc/meridian/copyright; do
    grep -qxF ".$f" <<<"$paths" || fail "the package lacks $f"
done

# systemd-analyze verify checks that ExecStart's binary exists: before the install it must not.
scratch=$(mktemp -d)
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$scratch" ".$unit"
if out=$(systemd-analyze verify "$scratch$unit" 2>&1) || [[ $out != *"/usr/bin/meridian"* ]]; then
    rm -rf "$scratch"
    fail "systemd-analyze verify accepted the unit before /usr/bin/meridian existed: $out"
fi
rm -rf "$scratch"

# From here on, whatever happens, the trap purges what this check installs.
: >"$marker"
dpkg -i "$deb" </dev/null >>"$logs/dpkg.log" 2>&1 || fail "dpkg -i $deb (see $logs/dpkg.log)"
echo "meridian: installed"
out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $out"
[ -z "$out" ] || fail "systemd-analyze verify $unit warns: $out"
# Exposure on systemd's 0-10 scale; --threshold is on its 0-100 one. 2.0 or more is a regression.
security=$(systemd-analyze security --offline=yes --threshold=20 "$unit" 2>&1) ||
    fail "the unit's sandbox got weaker:"$'\n'"$(grep -F '✗' <<<"$security")"$'\n'"$(tail -1 <<<"$security")"
echo "meridian: systemd-analyze verify: no findings; security: ${security##*$'\n'}"

# What the postinst made.
[ "$(getent passwd meridian | cut -d: -f6,7)" = /var/lib/meridian:/usr/sbin/nologin ] || fail "user meridian: $(getent passwd meridian)"
for f in "meridian:meridian 750 /var/lib/meridian" "root:meridian 750 /etc/meridian" \
    "root:meridian 640 $conf" "root:meridian 640 /etc/meridian/tls/dc1-n1-key.pem"; do
    [ "$(stat -c '%U:%G %a %n' "${f##* }" 2>&1)" = "$f" ] || fail "expected $f, found $(stat -c '%U:%G %a %n' "${f##* }" 2>&1)"
done
[ -z "$(find /etc/meridian -name '*ca-key*')" ] || fail "the CA's key was left in /etc/meridian"

# The unit's command, as the unit's user, with its LimitNOFILE (or this machine's hard limit,
# when that is lower: raising it takes what PID 1 has) and UMask.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
user=$(sed -n 's/^User=//p' "$unit")
nofile=$(sed -n 's/^LimitNOFILE=//p' "$unit")
umask=$(sed -n 's/^UMask=//p' "$unit")
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then
    echo "meridian: this machine's hard open-file limit ($hard) is below the unit's LimitNOFILE=$nofile: running with $hard"
    nofile=$hard
fi
# shellcheck disable=SC2086 # ExecStart is split into words, as systemd splits it.
(cd / && umask "$umask" && exec prlimit --nofile="$nofile:$nofile" setpriv --reuid="$user" --regid="$user" \
    --init-groups --no-new-privs --inh-caps=-all --bounding-set=-all \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $exec_start) >"$logs/agent.log" 2>&1 &
agent=$!
echo "$agent" >"$marker"

# Ready: leads its one-node DC, has printed its endpoints, and catches SIGTERM (it sets that
# handler right after printing them; a SIGTERM before that kills it uncleanly).
ready() {
    local caught
    leader=$(curl -sf --max-time 2 http://127.0.0.1:8500/v1/status/leader) && [ -n "$leader" ] &&
        [ "$leader" != '""' ] && grep -q '^meridian agent: node=n1' "$logs/agent.log" &&
        caught=$(awk '/^SigCgt:/ { print $2 }' "/proc/$agent/status" 2>/dev/null) &&
        (( 0x${caught:-0} & (1 << (15 - 1)) ))
}
deadline=$((SECONDS + 30))
until ready; do
    kill -0 "$agent" 2>/dev/null || fail "the installed agent exited:"$'\n'"$(tail -5 "$logs/agent.log")"
    [ $SECONDS -lt $deadline ] || fail "the installed agent did not lead within 30 s:"$'\n'"$(tail -5 "$logs/agent.log")"
    sleep 0.2
done
[ "$(ps -o user= -p "$agent")" = meridian ] || fail "the agent runs as $(ps -o user= -p "$agent"), not meridian"
for proto in +notcp +tcp; do
    answer=$(dig @127.0.0.1 -p 8600 "$proto" +short +time=2 +tries=2 n1.node.consul A) || true
    [ "$answer" = 127.0.0.1 ] || fail "DNS ($proto) answered '$answer' for n1.node.consul"
done
[ -d /var/lib/meridian/raft ] || fail "no Raft data in /var/lib/meridian"
echo "meridian: the installed agent leads ($leader) and answers DNS, as user meridian"

kill -TERM "$agent"
for _ in $(seq 100); do kill -0 "$agent" 2>/dev/null || break; sleep 0.1; done
kill -0 "$agent" 2>/dev/null && fail "the agent did not stop within 10 s of SIGTERM"
rc=0
wait "$agent" || rc=$?
agent=""
[ $rc = 0 ] || fail "the agent exited with $rc on SIGTERM"
grep -q 'agent stopped' "$logs/agent.log" || fail "the agent did not log its clean stop"

# An upgrade (here: the same package again) keeps an edited config and the certificates.
echo "# edited by scripts/package-check.sh" >>"$conf"
cert=$(sha256sum </etc/meridian/tls/dc1-n1.pem)
dpkg -i "$deb" </dev/null >>"$logs/dpkg.log" 2>&1 || fail "dpkg -i again"
grep -q '^# edited by scripts/package-check.sh$' "$conf" || fail "reinstalling replaced the edited $conf"
[ "$(sha256sum </etc/meridian/tls/dc1-n1.pem)" = "$cert" ] || fail "reinstalling replaced the certificate"

purge || fail "dpkg --purge meridian left files behind"
trap - EXIT
echo "meridian: package check passed in $(($(date +%s) - started)) s; purged, nothing left"
