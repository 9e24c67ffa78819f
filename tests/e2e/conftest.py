"""End-to-end tests need the lab: root, nft, ip; under CI=true they fail instead of skipping."""

import pytest

from tests.lab.preflight import require_lab


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _needs_lab():
    require_lab()
