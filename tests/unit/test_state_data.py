"""
The states take their data as arguments too, and the old state names still
work: a forward given to ``rules_managed`` is validated by the same model
(errors name the argument), planned with the pillar by the same planner, and
seen by the later states of the run; each deprecated name runs its new state.
"""

import ast
import inspect
import re

import yaml

from tests import examples
from tests.modules import REPO, core, load_file
from tests.unit.states_double import Run

EXTRA = {"name": "extra", "qube": "web", "proto": "tcp", "port": 8443, "external_port": 8443,
         "interfaces": ["ens6"], "sources": ["192.168.1.0/24"]}


def entries(ret):
    return [line for key in ("entries added", "entries changed") for line in ret["changes"]["nft"].get(key, [])]


def test_a_forward_given_as_argument_is_planned_with_the_pillar(tmp_path, pillar, monkeypatch):
    plain = Run(tmp_path, "sys-net", pillar, monkeypatch).states.rules_managed("r")
    run = Run(tmp_path, "sys-net", pillar, monkeypatch)
    ret = run.states.rules_managed("r", port_forwards=[EXTRA])
    assert ret["result"] is None, ret
    assert ret["changes"]["nft"]["added"] > plain["changes"]["nft"]["added"]
    assert "port_forwards:extra" in str(ret["changes"]["nft"]) and "port_forwards:https" in str(ret["changes"])
    assert "port_forwards:extra" not in str(plain["changes"])
    # the later states of the run (the boot replay) see the same data
    assert run.states.boot_replay_managed("p")["result"] is None
    files = run.states._run().persisted_files("sys-net").values()
    assert any("port_forwards:extra" in (new or "") for _old, new in files)
    # a new run (the lock state starts it) forgets what the last one was given
    run.states.run_locked("l")
    again = run.states.rules_managed("r")
    assert again["changes"]["nft"]["added"] == plain["changes"]["nft"]["added"]


def test_one_forward_in_an_sls_without_the_topology_pillar(tmp_path, monkeypatch):
    run = Run(tmp_path, "sys-net", {}, monkeypatch)
    ret = run.states.rules_managed(
        "r", qubes={"sys-net": {"netvm": "none", "provides_network": True}, "web": {"netvm": "sys-net"}},
        addresses={"sys-net": "10.137.0.5", "web": "10.137.0.11"}, port_forwards=[EXTRA])
    assert ret["result"] is None, ret
    assert "port_forwards:extra" in str(ret["changes"]["nft"])


def test_bad_arguments_are_named_as_arguments(tmp_path, pillar, monkeypatch):
    run = Run(tmp_path, "sys-net", pillar, monkeypatch)
    ret = run.states.rules_managed("r", port_forwards=[dict(EXTRA, port=99999)])
    assert ret["result"] is False
    assert "argument port_forwards:0:port: port must be 1-65535, got 99999" in ret["comment"]
    ret = Run(tmp_path, "sys-net", pillar, monkeypatch).states.validated("v", addresses={"extra-qube": "1.2.3"})
    assert ret["result"] is False and "argument addresses:extra-qube:" in ret["comment"], ret
    # a mapping key the pillar holds with another value: declared in two places
    ret = Run(tmp_path, "sys-net", pillar, monkeypatch).states.rules_managed("r", addresses={"web": "10.137.0.99"})
    assert ret["result"] is False and "argument addresses:web: the qubes_firewall pillar has" in ret["comment"]
    ret = Run(tmp_path, "sys-net", pillar, monkeypatch).states.rules_managed("r", port_forwards={"x": 1})
    assert ret["result"] is False and "argument port_forwards: must be a list" in ret["comment"]


QUBE_STATES = ("locked", "runtime_rules", "persisted_rules", "custom_persist_replay", "connect_tcp_bindings",
               "cleaned", "summary")


def test_every_old_state_name_runs_its_new_state(tmp_path, pillar, monkeypatch):
    states = Run(tmp_path, "sys-firewall", pillar, monkeypatch).states
    assert set(states.DEPRECATED) == set(QUBE_STATES) | {"connect_tcp_policy", "prefs", "firewall_rules",
                                                         "policy_absent"}
    for old, new in states.DEPRECATED.items():
        assert inspect.signature(getattr(states, old)) == inspect.signature(getattr(states, new)), old
    for old in QUBE_STATES:
        new = states.DEPRECATED[old]
        want = getattr(Run(tmp_path, "sys-firewall", pillar, monkeypatch).states, new)("s")
        got = getattr(Run(tmp_path, "sys-firewall", pillar, monkeypatch).states, old)("s")
        note = "\n(qubes_firewall.%s is deprecated and goes in the next release: use qubes_firewall.%s)" % (old, new)
        assert got["comment"] == want["comment"] + note, old
        assert (got["result"], got["changes"]) == (want["result"], want["changes"]), old


def docstring_examples():
    """{state: [the yaml of each ``.. code-block:: yaml`` of its docstring]}."""
    out = {}
    for node in ast.parse((REPO / "_states" / "qubes_firewall.py").read_text()).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            doc = ast.get_docstring(node) or ""
            out[node.name] = [yaml.safe_load(block) for block in
                              re.findall(r"^\.\. code-block:: yaml\n\n((?:    .*\n?|\n)+)", doc, re.M)]
    return out


def test_every_state_has_a_pasteable_example_whose_data_the_model_accepts():
    model = core("model")
    examples_by_state = docstring_examples()
    states = load_file("_states/qubes_firewall.py", "qf_doc_states")
    names = [n for n in examples_by_state if n not in states.DEPRECATED]
    assert "rules_managed" in names and "netvm_managed" in names
    for name in names:
        (sls,) = examples_by_state[name]
        for state_id, body in sls.items():
            if state_id in ("include", "extend"):
                continue
            assert isinstance(body, dict) and len(body) == 1, (name, state_id)
        for state_id, body in (sls.get("extend") or sls).items():
            if state_id == "include":
                continue
            ((function, args),) = body.items()
            assert function.startswith("qubes_firewall."), function
            assert hasattr(states, function.split(".", 1)[1]), function
            data = {k: v for arg in (args or []) for k, v in arg.items() if k in states.DATA_KEYS}
            if not data:
                continue
            if sls.get("extend"):  # added to the formula's pillar
                raw = examples.sls("full")["qubes_firewall"]
                raw = dict(raw, **{k: raw.get(k, []) + v for k, v in data.items()})
            else:
                raw = data
            assert model.errors(raw) == [], (name, data)
