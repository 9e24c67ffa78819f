#!/usr/bin/env bash
# A Debian root (debootstrap) with another nftables and Python than the host's,
# cached OUTSIDE the checkout, for the test matrix:
#   scripts/stack-root.sh trixie      # Debian 13: nft 1.1.3, Python 3.13
#   scripts/stack-root.sh bookworm    # Debian 12: nft 1.0.6, Python 3.11
# Prints the root's path.  Rebuilt when missing or when the recipe below (suite,
# packages) changes; the recipe is kept in ROOT/.qf-recipe.  Needs root.
# The cache directory is $QF_STACK_CACHE (default /var/cache/qubes-firewall-formula).
set -euo pipefail
suite="${1:?usage: stack-root.sh trixie|bookworm}"
case "$suite" in trixie|bookworm) ;; *) echo "stack-root: unknown suite $suite" >&2; exit 2 ;; esac
cache="${QF_STACK_CACHE:-/var/cache/qubes-firewall-formula}"
root="$cache/$suite"
mirror="${QF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the root must hold: nft and ip for the lab, a Python with venv and a compiler
# (Salt on Python 3.13 builds a dependency from source), ca-certificates for pip, netbase
# (/etc/protocols: nft resolves protocol names such as ipv6-icmp there).
packages="nftables,iproute2,netbase,python3,python3-venv,python3-dev,gcc,ca-certificates,procps"
recipe="suite=$suite packages=$packages version=1"

if [ -f "$root/.qf-recipe" ] && [ "$(cat "$root/.qf-recipe")" = "$recipe" ]; then
    echo "$root"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "stack-root: needs root" >&2; exit 1; }
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
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.$suite.XXXXXX")"
echo "stack-root: debootstrap $suite into $root (a few minutes, once)" >&2
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1; then
    tail -20 "$tmp.log" >&2
    rm -rf "$tmp"
    exit 1
fi
rm -f "$tmp.log"
rm -rf "$tmp/var/cache/apt/archives/"*.deb
printf '%s' "$recipe" > "$tmp/.qf-recipe"
mv "$tmp" "$root"
echo "$root"
