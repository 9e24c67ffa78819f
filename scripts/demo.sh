#!/usr/bin/env bash
# The formula in the lab (run as root): build the Qubes lab from a pillar
# (default pillar.example/full.sls; missing addresses filled in as Qubes would),
# apply the formula in every emulated qube twice, probe every flow the pillar
# implies against what qubes_firewall.check expects, tear the lab down.
#   scripts/demo.sh [pillar.sls]     # exit 0 as expected, 1 mismatch, 2 bad pillar/machine
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
py="$(scripts/bootstrap.sh 3008)"
export PYTHONWARNINGS=ignore PYTHONDONTWRITEBYTECODE=1
exec "$py" -m tests.e2e.demo "$@"
