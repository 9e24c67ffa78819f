#!/usr/bin/env bash
# Set up what the lab and the tests need on a fresh Debian machine (12 or 13), then print
# the path of the virtualenv's python for Salt VERSION (3006, 3007 or 3008).
#   scripts/bootstrap.sh 3008
# Idempotent: installs only what is missing.  Needs root for apt (nftables, iproute2,
# python3-venv, graphviz, rpm, systemd; gcc and the Python headers on Python >= 3.13, where Salt builds
# a dependency from source).  The venv lives in .venv/salt-VERSION inside the checkout, or
# in $QF_VENV_DIR/salt-VERSION (the test matrix keeps the venvs of other stacks there).
# It checks that the installed Salt is exactly the pinned one, then installs this checkout
# into the venv as `pip install .` does (the Salt extension the functional tests load
# through its salt.loader entry point), again whenever a file the wheel ships changes.
set -euo pipefail
version="${1:-3008}"
here="$(cd "$(dirname "$0")/.." && pwd)"
req="$here/requirements/salt-$version.txt"
[ -f "$req" ] || { echo "bootstrap: no requirements/salt-$version.txt" >&2; exit 2; }
pin="$(sed -n 's/^salt==\([0-9.]*\)$/\1/p' "$req")"
[ -n "$pin" ] || { echo "bootstrap: $req must pin salt==X.Y" >&2; exit 2; }

need_apt=()
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
[ -f /etc/protocols ] || need_apt+=(netbase)   # nft resolves protocol names there
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)   # the diagram test checks DOT text with dot
command -v rpmbuild >/dev/null 2>&1 || need_apt+=(rpm)   # tests/packaging builds the RPM
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)   # verifies the ConnectTCP units
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
    if python3 -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then
        command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
        inc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
        [ -f "$inc/Python.h" ] || need_apt+=(python3-dev)
    fi
else
    need_apt+=(python3-venv)
fi
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

venv="${QF_VENV_DIR:-$here/.venv}/salt-$version"
stamp="$venv/.requirements"
want="$(python3 --version) $(cat "$req" "$here/requirements/test.txt")"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: creating $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$req" -r "$here/requirements/test.txt" >&2 2> >(grep -v "^WARNING: Location" >&2)
    got="$("$venv/bin/python" -c 'import salt.config, salt.version; print(salt.version.__version__)')" || got="a broken install"
    if [ "$got" != "$pin" ]; then
        echo "bootstrap: $venv has Salt $got, requirements/salt-$version.txt pins $pin" >&2
        exit 1
    fi
    printf '%s' "$want" > "$stamp"
fi

# The formula as an installed Salt extension: a non-editable install, built from a copy of
# what the wheel ships (pyproject.toml), so the build leaves nothing in the checkout.
# Reinstalled when one of those files changes (their hashes are the stamp).
cd "$here"
shipped=(pyproject.toml VERSION README.md packaging/saltext/*.py _modules/*.py _states/*.py)
fstamp="$venv/.formula"
fwant="$(sha256sum "${shipped[@]}")"
if [ "$(cat "$fstamp" 2>/dev/null)" != "$fwant" ]; then
    echo "bootstrap: installing the formula into $venv" >&2
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    tar -C "$here" -cf - "${shipped[@]}" | tar -C "$src" -xf -
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$src" >&2 \
        2> >(grep -v "^WARNING: Location" >&2)
    printf '%s' "$fwant" > "$fstamp"
fi
echo "$venv/bin/python"
