"""
For every test directory:

- pytest-salt-factories' salt_factories fixture, rooted in each test's tmp_path
  (tests/saltfactories_support.py says why it is ours);
- under ``CI=true`` no test may skip: a skip (a missing tool, no root, no
  python3.9, no graphviz...) is turned into a failure naming its reason, so a
  CI run that lacks something fails instead of passing on fewer tests
  (scripts/test.sh installs everything the suite needs);
- under ``CI=true`` golden files are never rewritten (QF_UPDATE_GOLDEN=1 is a
  usage error there: a test that rewrites its expectation cannot fail), and
  hypothesis keeps no example database (the legs of scripts/test.sh run side by
  side on one checkout; each test's own settings bound its examples).
"""

import os

import pytest
from hypothesis import settings

pytest_plugins = ["tests.saltfactories_support"]

GOLDEN_ENV = "QF_UPDATE_GOLDEN"


def _ci():
    return os.environ.get("CI") == "true"


def _no_skip(report):
    """A skipped report becomes a failed one under CI=true (an xfail is not a skip)."""
    if _ci() and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
        report.outcome = "failed"
        report.longrepr = "CI=true: this test may not skip (%s)" % reason
    return report


settings.register_profile("ci", database=None)


def pytest_configure(config):
    if _ci() and os.environ.get(GOLDEN_ENV):
        raise pytest.UsageError("%s is set under CI=true: golden files are never rewritten in CI" % GOLDEN_ENV)
    if _ci():
        settings.load_profile("ci")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _no_skip((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _no_skip((yield))
