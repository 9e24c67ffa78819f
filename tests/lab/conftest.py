"""Fixtures for lab tests (real nftables in network namespaces).

A test marked ``lab`` (tests/conftest.py; and any test using the fixtures below) SKIPS
when the lab cannot run here (not root, no ip/nft), and FAILS instead under CI=true.  Tests elsewhere that
build a Lab should call tests.lab.preflight.require_lab() first, to the same effect.

Fixtures:
    release       "4.2" then "4.3": every test using it (or the fixtures below) runs for
                  both Qubes releases.
    seed_lab      the manual page's topology (tests.lab.seed), built once per module and release.
    fresh_seed_lab  that module lab, reset after the test (servers stopped, rw_config
                  emptied, every qube rebooted): for tests that change rules.
    make_lab      factory: make_lab(qubes, outside=(), **kw) -> Lab of that release, closed
                  after the test.
"""

import pytest

from tests.lab.preflight import require_lab
from tests.lab.qubes_base import RELEASES
from tests.lab.seed import seed_outside, seed_qubes
from tests.lab.topology import Lab


@pytest.fixture(scope="module", params=RELEASES, ids=["qubes-" + r for r in RELEASES])
def release(request):
    return request.param


@pytest.fixture(scope="module")
def seed_lab(tmp_path_factory, release):
    require_lab()
    with Lab(seed_qubes(), seed_outside(), workdir=tmp_path_factory.mktemp("seed-lab"), release=release) as lab:
        yield lab


@pytest.fixture
def fresh_seed_lab(seed_lab):
    try:
        yield seed_lab
    finally:
        seed_lab.reset()


@pytest.fixture
def make_lab(tmp_path, release):
    require_lab()
    labs = []

    def factory(qubes, outside=(), **kwargs):
        kwargs.setdefault("workdir", tmp_path / "lab{}".format(len(labs)))
        kwargs.setdefault("release", release)
        lab = Lab(qubes, outside, **kwargs)
        labs.append(lab)
        return lab

    yield factory
    for lab in labs:
        lab.close()
