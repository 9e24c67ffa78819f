#!/usr/bin/env bash
# A Debian root (debootstrap) with another nftables and Python than the host's,
# cached OUTSIDE the checkout, for the test matrix:
#   scripts/stack-root.sh trixie      # Debian 13: nft 1.1.3, Python 3.13
#   scripts/stack-root.sh bookworm    # Debian 12: nft 1.0.6, Python 3.11
#   scripts/stack-root.sh bullseye    # Debian 11: Python 3.9 only (scripts/python3.9)
# Prints the root's path.  Built when missing or when its suite changes; packages added
# to the list below are installed into an existing root (apt-get in a chroot).  The
# recipe is kept in ROOT/.qf-recipe.  Needs root.  Concurrent calls for one suite
# serialise on a lock.  The cache directory is $QF_STACK_CACHE (default
# /var/cache/qubes-firewall-formula), the mirror $QF_DEBIAN_MIRROR.
set -euo pipefail
suite="${1:?usage: stack-root.sh trixie|bookworm|bullseye}"
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${QF_STACK_CACHE:-/var/cache/qubes-firewall-formula}"
root="$cache/$suite"
mirror="${QF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
case "$suite" in
    # What a lab root must hold: nft and ip for the lab, a Python with venv and a compiler
    # (Salt on Python 3.13 builds a dependency from source), ca-certificates for pip,
    # netbase (/etc/protocols: nft resolves protocol names such as ipv6-icmp there),
    # graphviz (the diagram test checks the DOT text with dot), rpm (tests/packaging),
    # systemd (systemd-analyze verifies the ConnectTCP units).
    trixie|bookworm)
        packages="nftables,iproute2,netbase,python3,python3-venv,python3-dev,gcc,ca-certificates,procps,graphviz,rpm,systemd" ;;
    # Python 3.9 for tests/unit/test_python39.py: the runtime modules compile and plan there.
    bullseye)
        packages="python3,netbase" ;;
    *) echo "stack-root: unknown suite $suite" >&2; exit 2 ;;
esac
recipe() { printf 'suite=%s packages=%s version=1' "$suite" "$1"; }

# current: the recipe of an existing root, or nothing
current() { cat "$root/.qf-recipe" 2>/dev/null || true; }
if [ "$(current)" = "$(recipe "$packages")" ]; then
    echo "$root"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "stack-root: needs root" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.$suite.lock"
flock 9
if [ "$(current)" = "$(recipe "$packages")" ]; then   # built while we waited
    echo "$root"
    exit 0
fi

# The same suite with fewer packages: add the missing ones (keeps the root's venvs).
have="$(current)"
if [ -n "$have" ] && [ "${have#suite="$suite" packages=}" != "$have" ] && [ "${have% version=1}" != "$have" ]; then
    old="${have#suite="$suite" packages=}"
    old=",${old% version=1},"
    missing=()
    for p in ${packages//,/ }; do
        case "$old" in *",$p,"*) ;; *) missing+=("$p") ;; esac
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "stack-root: apt-get install ${missing[*]} in $root" >&2
        if "$here/scripts/in-root.sh" "$root" env DEBIAN_FRONTEND=noninteractive sh -c \
                'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" && apt-get clean' \
                sh "${missing[@]}" >"$cache/.$suite.log" 2>&1; then
            rm -f "$cache/.$suite.log"
            recipe "$packages" > "$root/.qf-recipe"
            echo "$root"
            exit 0
        fi
        tail -20 "$cache/.$suite.log" >&2
        echo "stack-root: could not add ${missing[*]}, rebuilding $root" >&2
    fi
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "stack-root: apt-get install debootstrap" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq debootstrap >&2
fi
# A stale or half-built root: nothing may still be mounted below it.
if [ -d "$root" ]; then
    if grep -q " $root/" /proc/self/mounts; then
        echo "stack-root: $root has mounts below it, refusing to rebuild" >&2
        exit 1
    fi
    rm -rf "$root"
fi
tmp="$(mktemp -d "$cache/.$suite.XXXXXX")"
echo "stack-root: debootstrap $suite into $root (a few minutes, once)" >&2
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1; then
    tail -20 "$tmp.log" >&2
    rm -rf "$tmp"
    exit 1
fi
rm -f "$tmp.log"
rm -rf "$tmp/var/cache/apt/archives/"*.deb
recipe "$packages" > "$tmp/.qf-recipe"
mv "$tmp" "$root"
echo "$root"
