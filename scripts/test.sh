#!/usr/bin/env bash
# The whole test suite as a matrix of legs (run as root on Debian 12 or 13; it installs
# what it needs).  Each leg names a stack: bookworm (Python 3.11, nft 1.0.6) or trixie
# (Python 3.13, nft 1.1.3, what Qubes 4.3's Debian 13 templates run).  A leg runs on this
# machine when its stack is this machine's Debian, else inside a cached Debian root of that
# stack (scripts/stack-root.sh, scripts/in-root.sh).  Under CI=true no test may skip
# (tests/conftest.py); CI (.ci/run) runs this script.
#
#   leg           stack     Salt  Qubes  what
#   salt3008      bookworm  3008  4.3    ruff, salt-lint, yamllint; every test outside the lab
#   salt3008-lab  bookworm  3008  4.3    the lab tests in 4.3 but those of salt3008-ctl
#   salt3008-ctl  bookworm  3008  4.3    the lab tests in 4.3 of tests/qubesctl, tests/lab, tests/ops
#   qubes42       bookworm  3008  4.2    the lab tests in 4.2 but those of qubes42-ctl
#   qubes42-ctl   bookworm  3008  4.2    the lab tests in 4.2 of tests/qubesctl, tests/lab, tests/ops
#   trixie        trixie    3007  4.3    Python 3.13: every test outside the lab
#   trixie-lab    trixie    3007  4.3    nft 1.1.3 and a 3.13 target, the lab in 4.3: every lab test
#                                        but the slow ones whose outcome neither nft's JSON nor
#                                        Python's version changes (fleet, lifecycle and its
#                                        concurrency rounds, the demo, the docstring examples,
#                                        every documented command and the templates through
#                                        qubesctl, the examples through salt-call: the same
#                                        examples through qubesctl into a 3.13 target stay);
#                                        the lab legs of salt3008 and qubes42 run those.  What differs in 4.2 is Qubes' daemon, not nft
#                                        or Python: qubes42 proves it.  Each leg in a stack root
#                                        has its own /run and /tmp (scripts/in-root.sh), so the
#                                        two trixie legs run side by side.
#   salt3006      bookworm  3006  4.3    every test that loads Salt, outside the lab, plus a lab
#                                        smoke test (tests/unit and tests/packaging use no Salt:
#                                        salt3008 runs them on the same Python)
#
# salt3008, salt3008-lab and salt3008-ctl are one stack, Salt and release split in three
# (outside the lab, the lab in two), and qubes42 and qubes42-ctl are one split in two: parts
# that run side by side, so that no leg is much longer than the others.
#
# A lab test parametrized by release (ids qubes-4.2, qubes-4.3) runs in the bookworm leg
# of that release; the others run in the release of $QF_LAB_RELEASE.  tests/qubesctl
# (marked lab) drives salt-ssh from the management venv of the leg's release
# ($QF_SALT_PYTHON_3007 for 4.3, $QF_SALT_PYTHON_3006 for 4.2) into the leg's target
# Python (3.11 on bookworm, 3.13 on trixie).  Python 3.9 (tests/unit/test_python39.py)
# comes from a Debian 11 root, as `python3.9` on the PATH of the legs that run on this
# machine; a leg in a stack root leaves that test to them.
#
# First everything is prepared, one step at a time (apt and pip must not race): the
# venvs of every stack (the leg's Salt, and Salt 3006 and 3007 for salt-ssh, each with
# the formula installed as `pip install .` does), the stack roots, Python 3.9.  Then the
# legs run, $QF_JOBS at a time (default 3: the lab tests wait on packets and timeouts
# much of their time, so a third leg fills two cores), the longest first, each into its own
# log, printed whole when the leg ends.  Then the leak check: nothing a test made may
# outlive the legs (a file or directory in the legs' TMPDIR, a lab network namespace, a
# table in this machine's own ruleset, a process the legs started).  A summary table and
# one closing line "N passed, N failed" end the run.
#
#   scripts/test.sh [pytest args...]           # args are added to every leg's pytest
#   QF_LEGS="salt3008 trixie" scripts/test.sh  # only these legs
#   QF_JOBS=1 scripts/test.sh                  # one leg at a time
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
export PYTHONWARNINGS=ignore PYTHONDONTWRITEBYTECODE=1
# the longest first (the critical path): the trixie lab, then the lab halves, then the rest
legs="${QF_LEGS:-trixie-lab salt3008-ctl qubes42-ctl salt3008-lab qubes42 trixie salt3008 salt3006}"
jobs="${QF_JOBS:-3}"
host_stack="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
pytest_args=("$@")
start_all=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/qf-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The legs: NAME STACK SALT RELEASE NFT CHECK...; a check is "lint" or pytest's arguments
# as one string (split on spaces; -k and -m expressions without spaces).
declare -A LEG
LEG[salt3008]="bookworm 3008 4.3 1.0.6|lint|tests -m not(lab) -k not(qubes-4.2)"
LEG[salt3008-lab]="bookworm 3008 4.3 1.0.6|tests -m lab -k not(qubes-4.2) --ignore=tests/qubesctl --ignore=tests/lab --ignore=tests/ops"
LEG[salt3008-ctl]="bookworm 3008 4.3 1.0.6|tests/qubesctl tests/lab tests/ops -m lab -k not(qubes-4.2)"
LEG[qubes42]="bookworm 3008 4.2 1.0.6|tests -m lab -k not(qubes-4.3) --ignore=tests/qubesctl --ignore=tests/lab --ignore=tests/ops"
LEG[qubes42-ctl]="bookworm 3008 4.2 1.0.6|tests/qubesctl tests/lab tests/ops -m lab -k not(qubes-4.3)"
LEG[trixie]="trixie 3007 4.3 1.1.3|tests -m not(lab) -k not(qubes-4.2)"
LEG[trixie-lab]="trixie 3007 4.3 1.1.3|tests -m lab -k not(qubes-4.2)and(not(test_the_qube_examples_succeed_in_the_lab)) --ignore=tests/fleet --ignore=tests/e2e/test_lifecycle.py --ignore=tests/e2e/test_demo.py --ignore=tests/qubesctl/test_documented_commands.py --ignore=tests/qubesctl/test_templates.py --ignore=tests/e2e/test_examples_in_lab.py"
LEG[salt3006]="bookworm 3006 4.3 1.0.6|tests -m not(lab)or(smoke) --ignore=tests/unit --ignore=tests/packaging"
for name in $legs; do
    [ -n "${LEG[$name]:-}" ] || { echo "test.sh: unknown leg $name (known: ${!LEG[*]})" >&2; exit 2; }
done

# ---- prepare (sequential) ----------------------------------------------------------------
declare -A WHERE PY   # WHERE[stack]: "-" (this machine) or its root; PY[stack/salt]: venv python
prepare_failed=()
# This machine's venvs live beside the stack roots, outside the checkout, so that a fresh
# clone (CI) reuses them; bootstrap.sh rebuilds one whose requirements or Python changed
# and reinstalls the formula when a shipped file changed.
export QF_VENV_DIR="${QF_VENV_DIR:-${QF_STACK_CACHE:-/var/cache/qubes-firewall-formula}/venvs}"

# venv STACK SALT: the venv python of Salt SALT on STACK (created or refreshed), in PY.
venv() {
    local stack="$1" version="$2" py
    if [ "${WHERE[$stack]}" = - ]; then
        py="$(scripts/bootstrap.sh "$version")"
    else
        py="$(scripts/in-root.sh "${WHERE[$stack]}" env QF_VENV_DIR=/opt/qf-venv "$here/scripts/bootstrap.sh" "$version")"
    fi
    [ -n "$py" ] && PY[$stack/$version]="$py"
}

echo "== prepare: stacks, venvs (Salt of each leg, and 3006/3007 for salt-ssh), Python 3.9"
t0=$SECONDS
needs39=no
for name in $legs; do
    read -r stack version _ <<<"${LEG[$name]%%|*}"
    [ "$stack" = "$host_stack" ] && needs39=yes
    if [ -z "${WHERE[$stack]:-}" ]; then
        if [ "$stack" = "$host_stack" ]; then
            WHERE[$stack]=-
        elif root="$(scripts/stack-root.sh "$stack")"; then
            WHERE[$stack]="$root"
        else
            prepare_failed+=("$stack root"); WHERE[$stack]=FAILED; continue
        fi
    fi
    [ "${WHERE[$stack]}" = FAILED ] && continue
    for v in "$version" 3006 3007; do
        # once per stack and Salt: a venv that failed is set and empty
        [ -n "${PY[$stack/$v]+set}" ] || venv "$stack" "$v" || { prepare_failed+=("$stack salt-$v venv"); PY[$stack/$v]=; }
    done
done
bindir="$work/bin"
mkdir -p "$bindir"
if [ "$needs39" = yes ]; then
    if root39="$(scripts/stack-root.sh bullseye)"; then
        printf '#!/bin/sh\nexec %q %q python3.9 "$@"\n' "$here/scripts/in-root.sh" "$root39" > "$bindir/python3.9"
        chmod +x "$bindir/python3.9"
        "$bindir/python3.9" -c 'import sys; assert sys.version_info[:2] == (3, 9); print("   python3.9:", sys.version.split()[0], "(Debian 11 root)")' \
            || prepare_failed+=("python3.9")
    else
        prepare_failed+=("bullseye root (python3.9)")
    fi
fi
for key in "${!PY[@]}"; do echo "   $key: ${PY[$key]}"; done | sort
echo "   prepared in $((SECONDS - t0))s"
[ "${#prepare_failed[@]}" = 0 ] || echo "   prepare FAILED: ${prepare_failed[*]}"

# ---- the legs ----------------------------------------------------------------------------
# run_in WHERE CMD...: run on this machine (WHERE = -) or in the stack root WHERE, with the
# leg's environment (exported by run_leg).
run_in() {
    local where="$1"
    shift
    if [ "$where" = - ]; then
        "$@"
    else
        scripts/in-root.sh "$where" env -C "$here" CI="${CI:-}" PYTHONWARNINGS=ignore PYTHONDONTWRITEBYTECODE=1 \
            QF_LAB_RELEASE="$QF_LAB_RELEASE" QF_EXPECT_NFT="$QF_EXPECT_NFT" \
            QF_SALT_PYTHON_3006="$QF_SALT_PYTHON_3006" QF_SALT_PYTHON_3007="$QF_SALT_PYTHON_3007" "$@"
    fi
}

# run_leg NAME: every check of the leg; prints "passed failed" counts into $work/NAME.counts.
run_leg() {
    local name="$1" spec stack version release nft where py passed=0 failed=0 check out
    IFS='|' read -r spec checks_joined <<<"${LEG[$name]}"
    read -r stack version release nft <<<"$spec"
    where="${WHERE[$stack]}"
    py="${PY[$stack/$version]:-}"
    echo "== leg $name: Salt $version, $stack (expects nft $nft), Qubes $release"
    if [ "$where" = FAILED ] || [ -z "$py" ] || [ -z "${PY[$stack/3006]:-}" ] || [ -z "${PY[$stack/3007]:-}" ]; then
        echo "   setup failed (see prepare above)"
        echo "0 1" > "$work/$name.counts"
        return
    fi
    export QF_LAB_RELEASE="$release" QF_EXPECT_NFT="$nft"
    # the leak check's marks: this run's TMPDIR (legs on this machine; a stack root has a
    # /tmp of its own, dropped when the leg ends) and, in every process's environment, the run
    export TMPDIR="$leak_tmp" QF_TEST_RUN="$work"
    export QF_SALT_PYTHON_3006="${PY[$stack/3006]}" QF_SALT_PYTHON_3007="${PY[$stack/3007]}"
    [ "$where" = - ] && export PATH="$bindir:$PATH"
    run_in "$where" "$py" -c 'import platform, salt.version; print("   python", platform.python_version(), "salt", salt.version.__version__)'
    run_in "$where" nft --version | sed 's/^/   /'
    IFS='|' read -r -a checks <<<"$checks_joined"
    local extra=()
    # python3.9 is on the PATH of this machine's legs only (prepare)
    [ "$where" = - ] || extra=(--ignore=tests/unit/test_python39.py)
    for check in "${checks[@]}"; do
        if [ "$check" = lint ]; then
            local bin
            bin="$(dirname "$py")"
            for tool in "ruff check ." "salt-lint salt/qubes_firewall/*.sls" "yamllint -s -c .yamllint.yaml pillar.example"; do
                echo "-- ${tool%% *}"
                # shellcheck disable=SC2086
                if run_in "$where" "$bin/"$tool; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
            done
        else
            echo "-- pytest $check"
            out="$work/$name.pytest"
            # shellcheck disable=SC2086
            run_in "$where" "$py" -m pytest $check --durations=10 --basetemp="$(basetemp "$where" "$name")" \
                "${extra[@]}" "${pytest_args[@]}" 2>&1 | tee "$out"
            local rc="${PIPESTATUS[0]}" last p f e
            last="$(grep -E '( passed| failed| errors?| no tests ran).* in [0-9.]+s' "$out" | tail -1)"
            p="$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+')"
            f="$(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+')"
            e="$(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+')"
            passed=$((passed + ${p:-0}))
            failed=$((failed + ${f:-0} + ${e:-0}))
            # a pytest that failed without counting a failure (usage error, crash, no tests)
            if [ "$rc" != 0 ] && [ "$((${f:-0} + ${e:-0}))" = 0 ]; then failed=$((failed + 1)); fi
        fi
    done
    echo "$passed $failed" > "$work/$name.counts"
}

# basetemp WHERE NAME: a pytest base temp of the leg's own (legs run side by side).
basetemp() {
    if [ "$1" = - ]; then echo "$work/tmp-$2"; else echo "/tmp/qf-$2"; fi
}

# ---- what may not leak: what exists before the legs ----------------------------------------
leak_tmp="$work/tmpdir"
mkdir -p "$leak_tmp"
netns_list() { ip netns list 2>/dev/null | awk '{print $1}' | sort; }
netns_before="$(netns_list)"
tables_before="$(nft list tables 2>/dev/null | sort)"

echo
echo "== legs: $legs ($jobs at a time; each leg's log is printed when it ends)"
declare -A STARTED
running=0
finish_one() {
    local name rc=0
    wait -n || rc=$?
    if [ "$rc" = 127 ]; then   # no leg left to wait for: one died unseen
        for name in "${!STARTED[@]}"; do
            [ -f "$work/$name.done" ] || { echo "?" > "$work/$name.time"; touch "$work/$name.done"; }
        done
    fi
    for name in "${!STARTED[@]}"; do
        if [ -f "$work/$name.done" ] && [ ! -f "$work/$name.shown" ]; then
            touch "$work/$name.shown"
            echo
            echo "######## leg $name: log ($(cat "$work/$name.time")s) ########"
            cat "$work/$name.log"
            running=$((running - 1))
        fi
    done
}
for name in $legs; do
    while [ "$running" -ge "$jobs" ]; do finish_one; done
    echo "   $(date -u +%H:%M:%S) leg $name started"
    STARTED[$name]=1
    (
        t=$SECONDS
        run_leg "$name" > "$work/$name.log" 2>&1
        echo $((SECONDS - t)) > "$work/$name.time"
        # CPU seconds of everything the leg ran (user + system, reaped children)
        times > "$work/$name.times"
        awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }
             printf "%d", n }' "$work/$name.times" > "$work/$name.cpu"
        touch "$work/$name.done"
    ) &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do finish_one; done

# ---- leaks: what the legs made and left ----------------------------------------------------
# a test cleans up after itself (pytest's tmp_path, fixtures that close what they open):
# anything left in the legs' TMPDIR, a lab namespace whose creating process (the pid in its
# name) is gone, a new table in this machine's ruleset, a process of this run still alive
echo
echo "== leak check"
leaks=()
for _ in 1 2 3 4 5; do   # a process that was killed may take a moment to go
    mapfile -t procs < <(grep -lxzsF "QF_TEST_RUN=$work" /proc/[0-9]*/environ | cut -d/ -f3)
    [ "${#procs[@]}" = 0 ] && break
    sleep 1
done
for pid in "${procs[@]}"; do
    leaks+=("process $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)")
done
while read -r left; do
    [ -n "$left" ] && leaks+=("left in TMPDIR: $left")
done < <(find "$leak_tmp" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort)
while read -r ns; do
    [ -n "$ns" ] || continue
    pid="$(grep -oE '[0-9]+' <<<"$ns" | head -1)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then leaks+=("network namespace $ns"); fi
done < <(comm -13 <(echo "$netns_before") <(netns_list))
while read -r table; do
    [ -n "$table" ] && leaks+=("nft $table in this machine's ruleset")
done < <(comm -13 <(echo "$tables_before") <(nft list tables 2>/dev/null | sort))
if [ "${#leaks[@]}" = 0 ]; then
    echo "   nothing left behind"
else
    printf '   LEAK: %s\n' "${leaks[@]}"
fi

# ---- summary -----------------------------------------------------------------------------
echo
echo "leg           stack     salt        qubes      result  passed failed   time    cpu"
total_passed=0
total_failed=0
failed_legs=()
for name in $legs; do
    read -r stack version release _ <<<"${LEG[$name]%%|*}"
    read -r p f < "$work/$name.counts" 2>/dev/null || { p=0; f=1; }
    verdict=ok
    [ "$f" = 0 ] || { verdict=FAILED; failed_legs+=("$name"); }
    printf '%-13s %-9s salt-%-5s  qubes-%s  %-7s %6s %6s %5ss %5ss\n' "$name" "$stack" "$version" "$release" "$verdict" \
        "$p" "$f" "$(cat "$work/$name.time" 2>/dev/null || echo '?')" "$(cat "$work/$name.cpu" 2>/dev/null || echo '?')"
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
done
if [ "${#prepare_failed[@]}" -gt 0 ]; then
    echo "prepare FAILED: ${prepare_failed[*]}"
    total_failed=$((total_failed + ${#prepare_failed[@]}))
fi
if [ "${#leaks[@]}" -gt 0 ]; then
    echo "leak check FAILED: ${#leaks[@]} things left behind (above)"
    total_failed=$((total_failed + 1))
fi
echo "total $((SECONDS - start_all))s (counts: pytest tests, plus one per linter; cpu: user + system seconds)"
[ "${#failed_legs[@]}" -gt 0 ] && echo "FAILED legs: ${failed_legs[*]}"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" = 0 ]
