"""tests/conftest.py: under CI=true a skip fails the run (and golden files cannot be rewritten)."""

import os
import subprocess
import sys

from tests.modules import REPO

SAMPLE = '''
import pytest

def test_passes():
    pass

@pytest.mark.skipif(True, reason="the frobnicator is not installed")
def test_marker_skip():
    pass

def test_call_skip():
    pytest.skip("no python3.9 on this machine")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.skip("graphviz is not installed", allow_module_level=True)
'''


def run(tmp_path, text, **env):
    (tmp_path / "test_sample.py").write_text(text)
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "QF_UPDATE_GOLDEN")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-p", "no:salt-factories-event-listener", "-p", "no:salt-factories-log-server",
                           "--rootdir", str(tmp_path), "-q", "-rA", str(tmp_path)],
                          cwd=str(REPO), env=environ, capture_output=True, text=True, check=False)


def test_skips_are_skips_outside_ci(tmp_path):
    out = run(tmp_path, SAMPLE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("1 passed, 2 skipped, 1 xfailed"), out.stdout
    out = run(tmp_path, MODULE_SKIP)
    assert out.stdout.splitlines()[-1].startswith("1 skipped"), out.stdout


def test_every_skip_fails_under_ci(tmp_path):
    out = run(tmp_path, SAMPLE, CI="true")
    assert out.returncode == 1, out.stdout + out.stderr
    for reason in ("the frobnicator is not installed", "no python3.9 on this machine"):
        assert "CI=true: this test may not skip (%s)" % reason in out.stdout, out.stdout
    last = out.stdout.splitlines()[-1]
    assert "skipped" not in last and "1 passed" in last and "1 xfailed" in last, out.stdout


def test_a_module_level_skip_fails_under_ci(tmp_path):
    out = run(tmp_path, MODULE_SKIP, CI="true")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "CI=true: this test may not skip (graphviz is not installed)" in out.stdout, out.stdout


def test_golden_update_is_refused_under_ci(tmp_path):
    out = run(tmp_path, SAMPLE, CI="true", QF_UPDATE_GOLDEN="1")
    assert out.returncode != 0
    assert "QF_UPDATE_GOLDEN is set under CI=true" in out.stdout + out.stderr
