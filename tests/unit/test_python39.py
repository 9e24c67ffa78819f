"""Runtime code must run on Python 3.9 (older Qubes templates): compile it all, run the pure core."""

import glob
import os
import shutil
import subprocess

import pytest

from tests.modules import REPO


def _python39():
    """A working Python 3.9 (a pyenv shim may exist without a 3.9 selected)."""
    candidates = [shutil.which("python3.9"), "/usr/bin/python3.9"] + sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9"))
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
                                        capture_output=True, check=False).returncode == 0:
            return candidate
    return None


PY39 = _python39()

SMOKE = r"""
import json, sys
sys.path.insert(0, "%(repo)s/_modules")
import _qubes_firewall_model as model, _qubes_firewall_plan as plan
pillar = json.loads(sys.stdin.read())
m = model.parse(pillar)
print(json.dumps({q: plan.plan_dict(plan.plan_qube(m, q)) for q in sorted(m.qubes)}, sort_keys=True))
"""


@pytest.mark.skipif(PY39 is None, reason="no python3.9 on this machine")
def test_runtime_modules_compile_and_plan_under_python39():
    files = sorted(str(p) for p in list((REPO / "_modules").glob("*.py")) + list((REPO / "_states").glob("*.py")))
    subprocess.run([PY39, "-c", "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')"]
                   + files, check=True)
    import json

    from tests import examples
    from tests.modules import model, plan

    pillar = examples.example("full")
    out = subprocess.run([PY39, "-c", SMOKE % {"repo": REPO}], input=json.dumps(pillar), text=True,
                         capture_output=True, check=True).stdout
    m = model.parse(pillar)
    assert json.loads(out) == {q: plan.plan_dict(plan.plan_qube(m, q)) for q in sorted(m.qubes)}
