"""
For every test directory:

- the lab marker: every test of tests/e2e, tests/qubesctl and
  tests/ops/test_ops_lab.py is a lab test (others mark themselves); a lab test
  needs root, nft and network namespaces (tests/lab/preflight.py: it skips
  without them, and fails under ``CI=true``);

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

from tests.lab.preflight import require_lab

pytest_plugins = ["tests.saltfactories_support"]

# the paths (relative to the checkout) whose every test is a lab test
LAB_PATHS = ("tests/e2e/", "tests/qubesctl/", "tests/ops/test_ops_lab.py")

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.relative_to(config.rootpath).as_posix().startswith(LAB_PATHS):
            item.add_marker(pytest.mark.lab)


def pytest_runtest_setup(item):
    if item.get_closest_marker("lab") is not None:
        require_lab()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _no_skip((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _no_skip((yield))
