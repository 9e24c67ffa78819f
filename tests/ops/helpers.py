"""The operations modules loaded for unit tests, wired to each other as Salt would."""

import pathlib

from tests import examples
from tests.modules import REPO, SaltDict, files, load, model, nft, plan

dom0 = load("qubes_firewall_dom0")
report = load("qubes_firewall_report")
diagram = load("qubes_firewall_diagram")
SALT = SaltDict({
    "qubes_firewall_plan.plan_qube": plan.plan_qube,
    "qubes_firewall_dom0.wanted_firewall": dom0.wanted_firewall,
    "qubes_firewall_dom0.firewall_verdict": dom0.firewall_verdict,
    "qubes_firewall_files.get_block": files.get_block,
    "qubes_firewall_files.read": files.read,
    "qubes_firewall_files.write_atomic": files.write_atomic,
})
flow = load("qubes_firewall_flow", salt=SALT)
backup = load("qubes_firewall_backup", salt=SALT)
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
           "report", "SALT", "GOLDEN", "FIXTURES", "REPO_EXAMPLES"]
