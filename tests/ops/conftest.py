"""The lab test of tests/ops needs root, nft and ip: skipped without, failed under CI=true."""

import pytest

from tests.lab.preflight import require_lab


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.fspath.basename == "test_ops_lab.py":
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _needs_lab(request):
    if request.node.get_closest_marker("lab") is not None:
        require_lab()
