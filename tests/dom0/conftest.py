"""
Fixtures for the dom0 tests: a fake Qubes world (JSON file), the fake qvm-*
tools on PATH, the fake qubesadmin module, and the formula's execution module and states
with the dunders Salt's loader gives them (``__opts__``, ``__pillar__``, ``__context__``).
"""

import copy
import json
import os
import pathlib
import sys

import pytest
import yaml

from tests.modules import core, load, load_file  # noqa: F401  (used here and by the tests)

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fake_qubesadmin  # noqa: E402
import fakequbes  # noqa: E402

FULL = yaml.safe_load((REPO / "pillar.example" / "full.sls").read_text())["qubes_firewall"]
assert "addresses" not in FULL  # dom0 finds them in Qubes

def full_pillar():
    """
    pillar.example/full.sls for the seed world (``fakequbes.seed_world``), whose
    sys-firewall is an AppVM, not the disposable of a default 4.3 install: without
    ``dispvm_template`` (tests/dom0/test_examples_preflight.py runs the example as
    it is on a default install).
    """
    data = copy.deepcopy(FULL)
    data["qubes"]["sys-firewall"].pop("dispvm_template")
    return data


class Dom0:
    """
    The formula's dom0 modules and states, wired like Salt's loader does: one
    ``__context__`` shared by every module and state of a run (``run`` and
    ``new_run`` start a new one, as a new salt-call does).
    """

    def __init__(self, pillar, **opts):
        self.opts = {"id": "dom0", "test": False}
        self.opts.update(opts)
        self.pillar = {"qubes_firewall": pillar}
        self.context = {}
        dunders = {"salt": {}, "opts": self.opts, "pillar": self.pillar, "context": self.context}
        self.qubes_firewall = load("qubes_firewall", **dunders)
        self.states = load("qubes_firewall", kind="_states", **dunders)
        self.qubes_firewall_dom0 = core("dom0")

    def shell(self):
        """The run (``_qubes_firewall_run.Run``) the execution module and the states build from Salt's dunders."""
        return core("run").Run(self.opts, self.pillar, self.context)

    @property
    def qubes_firewall_qubes(self):
        """This run's Qubes backend (what it read is kept in the run's context)."""
        return core("qubes").Qubes(self.opts, self.context)

    def set_pillar(self, pillar):
        if isinstance(pillar, dict) and "lookup" not in pillar and "lookup" in (self.pillar["qubes_firewall"] or {}):
            pillar = dict(pillar, lookup=self.pillar["qubes_firewall"]["lookup"])  # never the real /etc
        self.pillar["qubes_firewall"] = pillar
        self.new_run()

    def new_run(self):
        self.context.clear()

    def run(self, test=False):
        """The dom0 states in SLS order, each only if its requisites passed."""
        self.new_run()
        self.opts["test"] = test
        out = {"validated": self.states.validated("qubes_firewall-validated")}
        ok = out["validated"]["result"] is not False
        out["topology"] = self.states.topology_valid("qubes_firewall-dom0-topology") if ok else None
        ok = ok and out["topology"]["result"] is not False
        out["policy"] = self.states.connect_tcp_policy_managed("qubes_firewall-connect-tcp-policy") if ok else None
        out["firewall"] = self.states.firewall_managed("qubes_firewall-dom0-firewall") if ok else None
        ok = ok and out["firewall"]["result"] is not False
        out["prefs"] = self.states.netvm_managed("qubes_firewall-dom0-prefs") if ok else None
        self.opts["test"] = False
        return out


class FakeQubes:
    """The world file, the call log, and helpers to look at them."""

    def __init__(self, tmp_path, monkeypatch, data=None):
        self.path = tmp_path / "qubes.json"
        self.log = tmp_path / "qvm-calls.log"
        self.bin = tmp_path / "bin"
        fakequbes.write_world(self.path, data if data is not None else fakequbes.seed_world())
        fakequbes.install_tools(str(self.bin))
        monkeypatch.setenv(fakequbes.STATE_ENV, str(self.path))
        monkeypatch.setenv(fakequbes.LOG_ENV, str(self.log))
        monkeypatch.setenv("PATH", "%s:%s" % (self.bin, os.environ.get("PATH", "")))

    def world(self):
        return fakequbes.World(str(self.path))

    def data(self):
        return json.loads(self.path.read_text())

    def edit(self, func):
        data = self.data()
        func(data)
        fakequbes.write_world(self.path, data)

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def clear_calls(self):
        if self.log.exists():
            self.log.unlink()

    def get(self, vm, prop):
        return self.world().get(vm, prop)


@pytest.fixture
def qubes(tmp_path, monkeypatch):
    return FakeQubes(tmp_path, monkeypatch)


@pytest.fixture(params=["cli", "qubesadmin"])
def backend(request, monkeypatch):
    """Run the test once with the qvm-* tools and once with qubesadmin."""
    if request.param == "qubesadmin":
        fake_qubesadmin.install(monkeypatch)
    else:
        # an entry of None makes "import qubesadmin" raise ImportError
        monkeypatch.setitem(sys.modules, "qubesadmin", None)
    return request.param


@pytest.fixture
def dom0(qubes, backend, tmp_path):
    pillar = full_pillar()
    pillar["lookup"] = {"policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy"),
                        "rw_config": str(tmp_path / "rw")}
    d = Dom0(pillar)
    d.tmp = tmp_path
    return d
