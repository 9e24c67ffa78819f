#!/usr/bin/env bash
# The whole test suite: linters (ruff, salt-lint, yamllint), then pytest under
# Salt 3008 and Salt 3006.  Run as root so the lab tests (real nftables in
# network namespaces) run; under CI=true they fail instead of skipping.
#   scripts/test.sh [pytest args...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
py3008="$(scripts/bootstrap.sh 3008)"
py3006="$(scripts/bootstrap.sh 3006)"
bin="$(dirname "$py3008")"
export PYTHONWARNINGS=ignore PYTHONDONTWRITEBYTECODE=1

failed=()
echo "== ruff"
"$bin/ruff" check . || failed+=(ruff)
echo "== salt-lint"
"$bin/salt-lint" salt/qubes_firewall/*.sls || failed+=(salt-lint)
echo "== yamllint"
"$bin/yamllint" -s -c .yamllint.yaml pillar.example || failed+=(yamllint)
for py in "$py3008" "$py3006"; do
    version="$("$py" -c 'import salt.version; print(salt.version.__version__)')"
    echo "== pytest with Salt $version"
    "$py" -m pytest "$@" || failed+=("pytest-salt-$version")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all checks passed"
