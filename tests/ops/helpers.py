"""The operations modules for unit tests: the formula's core, imported as plain Python."""

import pathlib

from tests import examples
from tests.modules import REPO, core, files, model, nft, plan

dom0 = core("dom0")
report = core("report")
diagram = core("diagram")
flow = core("flow")
backup = core("backup")
HERE = pathlib.Path(__file__).parent
GOLDEN = HERE / "golden"
REPO_EXAMPLES = REPO / "pillar.example"
FIXTURES = REPO / "tests" / "unit" / "fixtures"


def example(name):
    """The ``qubes_firewall`` value of ``pillar.example/<name>.sls``, with the lab's addresses."""
    return examples.example(name)


def example_model(name="full"):
    return model.parse(example(name))


__all__ = ["backup", "diagram", "dom0", "example", "example_model", "files", "flow", "model", "nft", "plan",
           "report", "GOLDEN", "FIXTURES", "REPO_EXAMPLES"]


def applied_and_serving(lab, ports):
    """Apply the pillar in every qube of ``lab`` (a FormulaLab), each run clean, then serve ``ports`` on every node and the LAN."""
    for qube, result in lab.apply_all().items():
        assert result.retcode == 0 and not result.failed, (qube, result.failed)
    for node in list(lab.lab.order) + ["lan"]:
        for port in ports:
            lab.lab.serve_tcp(node, port)
    return lab
