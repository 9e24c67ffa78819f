"""
The qubesctl path (tests/qubesctl/harness.py) over the lab: lab tests, for the
release of $QF_LAB_RELEASE (else 4.3) with that release's management Salt
(4.3: 3007, 4.2: 3006; $QF_SALT_PYTHON_3007 / $QF_SALT_PYTHON_3006 name their
python, else scripts/bootstrap.sh provides it).  Under CI=true they fail
instead of skipping when the lab cannot run.

Fixtures:
    salt_thin       Salt's thin, built once per session (each management
                    disposable gets a copy instead of building its own)
    machine_factory machine_factory(name, topology=None) -> Machine: the lab of
                    that pillar.example scenario (or of ``topology``, a
                    qubes_firewall pillar without addresses; addresses as
                    Qubes would assign them), the fake dom0 and qubesctl
                    around it; closed at the end of the module.
"""

import copy
import dataclasses
import pathlib

import pytest
import yaml

from tests.e2e.demo import fill_addresses
from tests.e2e.formula_lab import FormulaLab
from tests.lab.preflight import require_lab
from tests.lab.topology import default_release
from tests.qubesctl.harness import QubesctlLab, salt_python

REPO = pathlib.Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/qubesctl/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _needs_lab():
    require_lab()


@pytest.fixture(scope="session")
def release():
    return default_release()


@pytest.fixture(scope="session")
def management_python(release):
    require_lab()
    return salt_python(release)


@pytest.fixture(scope="session")
def salt_thin(tmp_path_factory):
    return tmp_path_factory.mktemp("salt-thin")


def scenario_topology(name):
    """pillar.example/NAME.sls's qubes_firewall, without addresses (dom0 asks Qubes)."""
    data = yaml.safe_load((REPO / "pillar.example" / ("%s.sls" % name)).read_text())["qubes_firewall"]
    data.pop("addresses", None)
    return data


@dataclasses.dataclass
class Machine:
    name: str
    topology: dict
    flab: FormulaLab
    qc: QubesctlLab

    @property
    def lab(self):
        return self.flab.lab

    @property
    def qubes(self):
        return list(self.flab.lab.order)

    def targets(self, qubes=None):
        return "--targets=" + ",".join(qubes or self.qubes)


@pytest.fixture(scope="module")
def machine_factory(tmp_path_factory, release, management_python, salt_thin):
    machines = []

    def factory(name, topology=None):
        topology = copy.deepcopy(topology) if topology is not None else scenario_topology(name)
        filled, _ = fill_addresses(copy.deepcopy(topology))  # the lab's addresses, as Qubes assigns them
        workdir = tmp_path_factory.mktemp("qubesctl-" + name)
        flab = FormulaLab({"qubes_firewall": filled}, workdir, release=release)
        machines.append(flab)
        qc = QubesctlLab(flab.lab, topology, workdir, python=management_python, thin_cache=salt_thin)
        return Machine(name, topology, flab, qc)

    yield factory
    for flab in machines:
        flab.close()
