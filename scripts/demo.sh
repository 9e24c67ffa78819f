#!/usr/bin/env bash
# The main job on an embedded default (run as root): build the Qubes lab from
# pillar.example/full.sls, apply the formula in every emulated qube, print what
# it did and the connectivity matrix it verified, tear the lab down.
#   scripts/demo.sh [pillar.sls]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
py="$(scripts/bootstrap.sh 3008)"
export PYTHONWARNINGS=ignore PYTHONDONTWRITEBYTECODE=1
exec "$py" -m tests.e2e.demo "$@"
