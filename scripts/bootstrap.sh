#!/usr/bin/env bash
# Set up what the lab and the tests need on a fresh Debian machine, then print
# the path of the virtualenv's python for Salt VERSION (3008 or 3006).
#   scripts/bootstrap.sh 3008
# Idempotent: installs only what is missing.  Needs root for apt (nftables,
# iproute2); the venv lives in .venv/salt-VERSION inside the checkout.
set -euo pipefail
version="${1:-3008}"
here="$(cd "$(dirname "$0")/.." && pwd)"
req="$here/requirements/salt-$version.txt"
[ -f "$req" ] || { echo "bootstrap: no requirements/salt-$version.txt" >&2; exit 2; }

need_apt=()
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: please install ${need_apt[*]} (needs root)" >&2
        exit 1
    fi
    echo "bootstrap: apt-get install ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need_apt[@]}" >&2
fi

venv="$here/.venv/salt-$version"
stamp="$venv/.requirements"
want="$(cat "$req" "$here/requirements/test.txt")"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: creating $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$req" -r "$here/requirements/test.txt" >&2 2> >(grep -v "^WARNING: Location" >&2)
    printf '%s' "$want" > "$stamp"
fi
echo "$venv/bin/python"
