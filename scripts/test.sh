#!/usr/bin/env bash
# The whole test suite as a matrix of legs (run as root on Debian 12 or 13; it installs
# what it needs).  Each leg names a stack: bookworm (Python 3.11, nft 1.0.6) or trixie
# (Python 3.13, nft 1.1.3, what Qubes 4.3's Debian 13 templates run).  A leg runs on this
# machine when its stack is this machine's Debian, else inside a cached Debian root of that
# stack (scripts/stack-root.sh, scripts/in-root.sh).  Under CI=true lab tests fail instead
# of skipping; CI (.ci/run) runs this script.
#
#   leg        stack     Salt  Qubes  what
#   salt3008   bookworm  3008  4.3    ruff, salt-lint, yamllint; the whole suite (tests/lab
#                                     and the pillar.example scenarios in 4.2 and 4.3)
#   qubes42    bookworm  3008  4.2    every other lab test (e2e, ops, connect_tcp) on 4.2
#   salt3006   bookworm  3006  4.3    everything but the lab, plus a lab smoke test
#   trixie     trixie    3007  4.3    the whole suite on Python 3.13 and nft 1.1.3
#
#   scripts/test.sh [pytest args...]     # args are added to every leg's pytest
#   QF_LEGS="salt3008 trixie" scripts/test.sh    # only these legs
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
export PYTHONWARNINGS=ignore PYTHONDONTWRITEBYTECODE=1
legs="${QF_LEGS:-salt3008 qubes42 salt3006 trixie}"
host_stack="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
start_all=$SECONDS
summary=()
failed=()

# python_for STACK VERSION: print "host PY" or "ROOT PY" for Salt VERSION on STACK.
python_for() {
    local stack="$1" version="$2" root=- py
    if [ "$stack" = "$host_stack" ]; then
        py="$(scripts/bootstrap.sh "$version")" || return 1
    else
        root="$(scripts/stack-root.sh "$stack")" || return 1
        py="$(scripts/in-root.sh "$root" env QF_VENV_DIR=/opt/qf-venv "$here/scripts/bootstrap.sh" "$version")" \
            || return 1
    fi
    [ -n "$py" ] || return 1
    echo "$root $py"
}

# run_in WHERE CMD...: run on the host (WHERE = -) or in the stack root WHERE.
run_in() {
    local where="$1"
    shift
    if [ "$where" = "-" ]; then
        "$@"
    else
        scripts/in-root.sh "$where" env -C "$here" CI="${CI:-}" PYTHONWARNINGS=ignore PYTHONDONTWRITEBYTECODE=1 \
            QF_LAB_RELEASE="${QF_LAB_RELEASE:-}" QF_EXPECT_NFT="${QF_EXPECT_NFT:-}" "$@"
    fi
}

# leg NAME STACK SALT RELEASE NFT -- CHECKS...; a check is "lint" or pytest's arguments as
# one string (split on spaces).
leg() {
    local name="$1" stack="$2" version="$3" release="$4" nft="$5" setup where py rc=0 t0=$SECONDS
    shift 6
    case " $legs " in *" $name "*) ;; *) return 0 ;; esac
    echo "== leg $name: Salt $version, $stack (expects nft $nft), Qubes $release"
    if ! setup="$(python_for "$stack" "$version")"; then
        summary+=("$(printf '%-9s %-9s salt-%-5s qubes-%s  %-7s %5ss  (setup failed)' "$name" "$stack" "$version" "$release" FAILED $((SECONDS - t0)))")
        failed+=("$name")
        return 0
    fi
    where="${setup%% *}"
    py="${setup#* }"
    export QF_LAB_RELEASE="$release" QF_EXPECT_NFT="$nft"
    run_in "$where" "$py" -c 'import platform, salt.version; print("   python", platform.python_version(), "salt", salt.version.__version__)'
    run_in "$where" nft --version | sed 's/^/   /'
    for check in "$@"; do
        if [ "$check" = lint ]; then
            local bin
            bin="$(dirname "$py")"
            echo "-- ruff";      run_in "$where" "$bin/ruff" check . || rc=1
            echo "-- salt-lint"; run_in "$where" "$bin/salt-lint" salt/qubes_firewall/*.sls || rc=1
            echo "-- yamllint";  run_in "$where" "$bin/yamllint" -s -c .yamllint.yaml pillar.example || rc=1
        else
            # shellcheck disable=SC2086
            echo "-- pytest $check"; run_in "$where" "$py" -m pytest $check "${pytest_args[@]}" || rc=1
        fi
    done
    unset QF_LAB_RELEASE QF_EXPECT_NFT
    local verdict=ok
    [ "$rc" = 0 ] || { verdict=FAILED; failed+=("$name"); }
    summary+=("$(printf '%-9s %-9s salt-%-5s qubes-%s  %-7s %5ss' "$name" "$stack" "$version" "$release" "$verdict" $((SECONDS - t0)))")
}

pytest_args=("$@")
leg salt3008 bookworm 3008 4.3 1.0.6 -- lint "tests"
leg qubes42  bookworm 3008 4.2 1.0.6 -- "tests -m lab --ignore=tests/lab --ignore=tests/e2e/test_examples_in_lab.py"
leg salt3006 bookworm 3006 4.3 1.0.6 -- "tests -m not(lab)or(smoke)"
leg trixie   trixie   3007 4.3 1.1.3 -- "tests"

echo
echo "leg       stack     salt        qubes     result  time"
printf '%s\n' "${summary[@]}"
echo "total $((SECONDS - start_all))s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all checks passed"
