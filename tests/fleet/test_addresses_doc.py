"""
The pillar files a user installs (pillar.example/install, shown in
docs/addresses.md), rendered as qubesctl renders them: in dom0, per id
(``salt-call --local --id=VM pillar.items``), against a fake Qubes, beside a
topology without addresses and another formula's pillar in the same tree.
dom0 gets everything, each target only its part, a qube the pillar does not
need nothing; without the formula's modules, or with a broken topology, the
other formula's pillar still renders for every id.
"""

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.dom0 import fakequbes
from tests.modules import REPO, core
from tests.saltfactories_support import formula_minion

SALT_CALL = Path(sys.executable).parent / "salt-call"
INSTALL = REPO / "pillar.example" / "install"
FILES = ("qubes_firewall.top", "qubes_firewall_pillar.sls")
OTHER = "other_formula:\n  setting: 1\n"
qf_view = core("view")
pytestmark = pytest.mark.skipif(not SALT_CALL.exists(), reason="salt-call is not installed beside python")

ADDRESSES = {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "sys-vpn": "10.137.0.7",
             "sys-firewall-2": "10.137.0.8", "work": "10.137.0.9", "build": "10.137.0.10", "web": "10.137.0.11"}


def test_the_doc_shows_the_installed_files_unchanged():
    doc = (REPO / "docs" / "addresses.md").read_text()
    blocks = re.findall(r"```jinja\n(.*?)```", doc, re.S)
    assert blocks == [(INSTALL / name).read_text() for name in FILES]


class Dom0:
    """A dom0 with the installed pillar files, a topology, another formula; salt-call --local per id."""

    def __init__(self, salt_factories, tmp_path, topology_text=None, modules=True):
        self.factories, self.tmp = salt_factories, tmp_path
        self.root = tmp_path / "user_pillar"
        self.root.mkdir()
        topology = yaml.safe_load((REPO / "pillar.example" / "full.sls").read_text())
        assert "addresses" not in topology["qubes_firewall"]  # the examples carry none: dom0 asks Qubes
        self.topology = topology["qubes_firewall"]
        (self.root / "qubes_firewall.sls").write_text(topology_text or yaml.safe_dump(topology))
        (self.root / "qubes_firewall_pillar.sls").write_text((INSTALL / FILES[1]).read_text())
        # the formula's top beside another formula's, as qubesctl's top.enable merges them
        (self.root / "top.sls").write_text((INSTALL / FILES[0]).read_text() + "  '*':\n    - other_formula\n")
        (self.root / "other_formula.sls").write_text(OTHER)
        bindir = fakequbes.install_tools(str(tmp_path / "bin"))
        world = fakequbes.write_world(tmp_path / "qubes.json", fakequbes.seed_world())
        self.world = fakequbes.World(str(world))
        self.release = tmp_path / "qubes-release"
        self.release.write_text("Qubes release 4.2.4 (R4.2)\n")
        self.env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]), PYTHONWARNINGS="ignore",
                        **{fakequbes.STATE_ENV: str(world), fakequbes.LOG_ENV: str(tmp_path / "calls.log")})
        self.env.pop("PYTHONPATH", None)
        self.module_dirs = [str(REPO)]
        # without the formula: no module dir, and the installed extension (the test venv's
        # `pip install .`) disabled, as a dom0 where it was never installed
        self.absent = {} if modules else {"disable_modules": ["qubes_firewall"], "disable_states": ["qubes_firewall"]}
        if not modules:
            (tmp_path / "no-modules").mkdir()
            self.module_dirs = [str(tmp_path / "no-modules")]

    def pillar(self, minion_id):
        """``pillar.items`` of ``minion_id``, rendered in dom0 (qubesctl's --id=VM)."""
        minion = formula_minion(self.factories, minion_id, self.root, id=minion_id,
                                pillar_roots={"user": [str(self.root)]}, module_dirs=self.module_dirs,
                                qubes_firewall_release_file=str(self.release), **self.absent)
        ret = minion.salt_call_cli(environ=self.env, timeout=300).run("--local", "pillar.items")
        assert ret.returncode == 0 and isinstance(ret.data, dict), ret
        assert "_errors" not in ret.data, ret.data["_errors"]  # it renders: no formula is stopped
        assert ret.data["other_formula"] == {"setting": 1}, ret.data
        return ret.data


def test_each_id_gets_its_part_and_an_unrelated_qube_nothing(salt_factories, tmp_path):
    dom0 = Dom0(salt_factories, tmp_path)
    whole = dom0.pillar("dom0")["qubes_firewall"]
    assert whole["addresses"] == ADDRESSES and whole["lookup"] == {"qubes_release": "4.2"}
    assert whole == dict(dom0.topology, addresses=ADDRESSES, lookup={"qubes_release": "4.2"})
    assert "qubes_firewall_fleet" in dom0.pillar("dom0")
    for qube in ("default-dvm", "sys-net", "sys-firewall", "work", "build", "web"):
        pillar = dom0.pillar(qube)
        assert pillar["qubes_firewall"] == qf_view.view(whole, None, qube), qube
        assert "qubes_firewall_fleet" not in pillar
    work = dom0.pillar("work")["qubes_firewall"]
    assert "web" not in work["qubes"] and "port_forwards" not in work and set(work["addresses"]) == {"work"}
    # the disposable template of sys-firewall holds its boot block: it gets sys-firewall's part
    assert dom0.pillar("default-dvm")["qubes_firewall"]["qubes"]["sys-firewall"]["dispvm_template"] == "default-dvm"
    # a qube the pillar does not need: the top gives it nothing
    assert "qubes_firewall" not in dom0.pillar("vault")


def test_ipv6_addresses_go_to_the_qubes_on_the_way_of_what_they_plan(salt_factories, tmp_path):
    """Qubes' ipv6 feature on sys-net reaches every qube below it; build turns it off (ipv6 ''):
    dom0 gets every IPv6 address Qubes gives, a qube those of the qubes on the way of the
    forwards and connections it plans, a qube that plans none of them none."""
    dom0 = Dom0(salt_factories, tmp_path)
    dom0.world.set_feature("sys-net", "ipv6", "1")
    dom0.world.set_feature("build", "ipv6", "")
    whole = dom0.pillar("dom0")["qubes_firewall"]
    six = whole["addresses6"]
    assert set(six) == {"sys-net", "sys-firewall", "sys-vpn", "sys-firewall-2", "work", "web"}, six
    assert all(ip.startswith("fd09:24ef:4179::a89:") for ip in six.values()), six
    assert whole == dict(dom0.topology, addresses=ADDRESSES, addresses6=six, lookup={"qubes_release": "4.2"})
    for qube in ("sys-net", "sys-firewall", "work", "build", "web"):
        assert dom0.pillar(qube)["qubes_firewall"] == qf_view.view(whole, None, qube), qube
    # the https forward's path has IPv6 all the way: its hops and its qube get those three
    for qube in ("sys-net", "sys-firewall", "web"):
        assert dom0.pillar(qube)["qubes_firewall"]["addresses6"] == {
            q: six[q] for q in ("sys-net", "sys-firewall", "web")}, qube
    # work -> build crosses build, which has no IPv6: build learns which of the others have it
    assert dom0.pillar("build")["qubes_firewall"]["addresses6"] == {q: six[q] for q in ("work", "sys-firewall-2")}
    assert "addresses6" not in dom0.pillar("work")["qubes_firewall"]  # its rules allow nothing of it


def test_without_the_formula_other_formulas_render_and_dom0_says_why(salt_factories, tmp_path):
    dom0 = Dom0(salt_factories, tmp_path, modules=False)
    assert "saltutil.sync_all" in dom0.pillar("dom0")["qubes_firewall"]["error"]
    for qube in ("work", "web", "vault"):
        assert "qubes_firewall" not in dom0.pillar(qube)


def test_a_broken_topology_fails_this_formula_only(salt_factories, tmp_path):
    dom0 = Dom0(salt_factories, tmp_path, topology_text="qubes_firewall:\n  qubes: [a\n")
    assert "is not valid YAML" in dom0.pillar("dom0")["qubes_firewall"]["error"]
    for qube in ("work", "vault"):
        assert "qubes_firewall" not in dom0.pillar(qube)
