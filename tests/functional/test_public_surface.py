"""
The formula's public surface, through the real Salt loader: the functions
``salt-call sys.list_functions`` shows are exactly the public ones of
``qubes_firewall`` (the core files ``_qubes_firewall_*.py`` next to it are
imported, never loaded as modules), the execution module and the states share
one run through Salt's dunders, and every CLI
example in the public docstrings runs and succeeds: the dom0 ones against a
fake Qubes (the fake qvm-* tools of tests/dom0), the qube ones in the lab
(real nftables in a network namespace) after the pillar has been applied.
"""

import ast
import inspect
import os
import pathlib
import re
import shlex
import shutil
import sys

import pytest
import yaml
from saltfactories.utils.functional import Loaders

from tests import examples
from tests.dom0 import fakequbes
from tests.modules import REPO, load
from tests.saltfactories_support import formula_minion, write_pillar_tree

# the functions a user calls: growing this list is a decision, not an accident
PUBLIC = ("addresses", "backup", "backups", "check", "connect_tcp_commands", "diagram", "dom0_problems", "drift",
          "fleet_pillar", "fleet_status", "pillar_errors", "qubes_release", "reconnect", "revert", "show_plan",
          "status", "targets")
SURFACE = sorted("qubes_firewall.%s" % f for f in PUBLIC)
# run in dom0 (against the fake Qubes) when an example does not say where
DOM0 = ("addresses", "diagram", "dom0_problems", "qubes_release", "reconnect")
# where a qube example without --targets runs: web, the qube the revert example's backup name
# names (revert of sys-net's DNAT map, through nft's text, is tested in tests/ops/test_ops_lab.py)
QUBE = "web"
SALT_CALL = pathlib.Path(sys.executable).parent / "salt-call"
FULL = examples.sls("full")


def examples():
    """[(function, example line)] of every ``.. code-block:: bash`` of the public docstrings, in file order."""
    out = []
    for node in ast.parse((REPO / "_modules" / "qubes_firewall.py").read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name in PUBLIC:
            doc = ast.get_docstring(node) or ""
            for block in re.findall(r"^\.\. code-block:: bash\n\n((?:    .*\n?|\n)+)", doc, re.M):
                out += [(node.name, line.strip()) for line in block.splitlines() if line.strip()]
    return out


def parse(line):
    """
    An example line -> (function, args, where): ``where`` is the minion ids it
    runs on (qubesctl's targets, dom0 unless --skip-dom0), None for a plain
    salt-call; None for a line that runs no Salt (``dot -Tpng ...``).
    """
    words = shlex.split(line)
    if words[0] == "sudo":
        words = words[1:]
    if words[0] not in ("salt-call", "qubesctl"):
        return None
    options = [w for w in words[1:] if w.startswith("--")]
    rest = [w for w in words[1:] if not w.startswith("--")]
    where = None
    if words[0] == "qubesctl":
        targets = [o.split("=", 1)[1].split(",") for o in options if o.startswith("--targets=")]
        where = ([] if "--skip-dom0" in options else ["dom0"]) + (targets[0] if targets else [])
    return rest[0], rest[1:], where


def bind(function, args):
    """Bind the example's arguments to the public function's signature (TypeError when they do not fit)."""
    module = load("qubes_firewall")
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    return inspect.signature(getattr(module, function)).bind(*positional, **named)


def test_the_loader_shows_exactly_the_public_functions(salt_factories, tmp_path):
    minion = formula_minion(salt_factories, "sys-net", write_pillar_tree(tmp_path / "pillar", FULL))
    loaders = Loaders(minion.config.copy(), loaded_base_name="tests.functional.loaded_surface")
    try:
        assert sorted(loaders.modules.sys.list_functions("qubes_firewall*")) == SURFACE
        docs = loaders.modules.sys.doc("qubes_firewall*")
        for name in SURFACE:
            assert "CLI Example:" in docs[name], name
        # the core next to the module is not a module of its own
        assert not [m for m in loaders.modules.sys.list_modules() if m.startswith("_qubes_firewall")]
        # the CLI shows the same list
        ret = minion.salt_call_cli().run("--local", "sys.list_functions", "qubes_firewall*")
        assert ret.returncode == 0 and sorted(ret.data) == SURFACE, ret
    finally:
        loaders.reset_state()


def test_the_module_and_the_states_share_one_run_through_salts_dunders(salt_factories, tmp_path):
    """__opts__, __pillar__ and __context__ reach the core through the module and the states alike."""
    minion = formula_minion(salt_factories, "sys-firewall", write_pillar_tree(tmp_path / "pillar", FULL),
                            qubes_firewall_state_dir=str(tmp_path / "state"))
    loaders = Loaders(minion.config.copy(), loaded_base_name="tests.functional.loaded_dunders")
    try:
        fw = loaders.modules.qubes_firewall
        assert fw.pillar_errors() == []  # __pillar__
        plan = fw.show_plan()  # __opts__["id"]: sys-firewall's plan
        assert plan["persist_file"] == "qubes-firewall-user-script" and "qf-nat" in plan["chains"]
        parsed = loaders.context["qubes_firewall.parsed"]  # __context__: parsed once per run
        assert parsed["model"] is not None and "sys-firewall" in parsed["plans"]
        ret = loaders.states.qubes_firewall.boot_replay_managed(name="persisted", test=True)
        assert ret.result in (True, None), ret
        assert loaders.context["qubes_firewall.parsed"] is parsed  # the states used the same parse
    finally:
        loaders.reset_state()


def test_every_public_function_has_examples_that_name_it_with_valid_arguments():
    found = examples()
    assert sorted({f for f, _ in found}) == sorted(PUBLIC)
    for function, line in found:
        parsed = parse(line)
        if parsed is None:
            continue
        name, args, _ = parsed
        assert name == "qubes_firewall." + function, line
        bind(function, args)


def run_line(minion_for, line, tmp_path):
    """Run one example line on every minion it names; [(minion, line, why)] for each failure."""
    name, args, where = parse(line)
    function = name.split(".", 1)[1]
    args = [a.replace("/tmp/", str(tmp_path) + "/") for a in args]  # nothing outside the test's tmp
    if where is None:
        where = ["dom0"] if function in DOM0 else [QUBE]
    failures = []
    for minion_id in where:
        rc, out, text = minion_for(minion_id, name, args)
        if rc != 0 or out is None:
            failures.append((minion_id, line, "rc %s: %s" % (rc, text)))
    return failures


@pytest.fixture
def fake_dom0(tmp_path, salt_factories):
    """run(minion_id, function, args) -> (rc, data, text): salt-call --local against a fake Qubes."""
    bindir = fakequbes.install_tools(str(tmp_path / "bin"))
    state = fakequbes.write_world(tmp_path / "qubes.json", fakequbes.seed_world())
    release = tmp_path / "qubes-release"
    release.write_text("Qubes release 4.3.0 (R4.3)\n")
    # dom0's pillar as the documented pillar file renders it: the topology with the
    # addresses Qubes gives (the fake Qubes of seed_world gives the lab's)
    pillar = yaml.safe_load(yaml.safe_dump(FULL))
    pillar["qubes_firewall"]["lookup"] = {"rw_config": str(tmp_path / "rw"),
                                          "policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy")}
    pillar_dir = write_pillar_tree(tmp_path / "pillar", pillar)
    environ = dict(os.environ)
    environ.update({"PATH": "%s:%s" % (bindir, environ.get("PATH", "")), "PYTHONWARNINGS": "ignore",
                    fakequbes.STATE_ENV: str(state), fakequbes.LOG_ENV: str(tmp_path / "calls.log")})
    environ.pop("PYTHONPATH", None)

    def run(minion_id, name, args):
        minion = formula_minion(salt_factories, minion_id, pillar_dir, qubes_firewall_release_file=str(release),
                                qubes_firewall_state_dir=str(tmp_path / "state"))
        ret = minion.salt_call_cli(environ=environ, timeout=300).run("--local", "--retcode-passthrough", name, *args)
        return ret.returncode, ret.data, ret.stdout + ret.stderr

    return run


@pytest.mark.skipif(not SALT_CALL.exists(), reason="salt-call is not installed beside python")
def test_the_dom0_examples_succeed_against_a_fake_qubes(fake_dom0, tmp_path):
    lines = [line for function, line in examples() if parse(line) is not None
             and (parse(line)[2] == ["dom0"] or (parse(line)[2] is None and function in DOM0))]
    assert len(lines) >= 6, lines
    failures = []
    for line in lines:
        failures += run_line(fake_dom0, line, tmp_path)
    assert not failures, "\n".join("%s: %s\n    %s" % f for f in failures)
    assert (tmp_path / "topology.dot").read_text().startswith("digraph")


@pytest.mark.lab
def test_the_qube_examples_succeed_in_the_lab(tmp_path):
    """After the full example is applied in the lab, every qube-side example succeeds where it says it runs."""
    from tests.e2e.formula_lab import FormulaLab
    from tests.e2e.full_example import full_pillar
    from tests.lab.preflight import require_lab
    from tests.ops.test_ops_lab import configure_backups

    require_lab()
    flab = FormulaLab(full_pillar(), tmp_path)
    try:
        configure_backups(flab, tmp_path)
        for qube, result in flab.apply_all().items():
            assert result.retcode == 0 and not result.failed, (qube, result.failed)

        def run(minion_id, name, args):
            rc, out, proc = flab.minion(minion_id).run(name, *args)
            return rc, out, proc.stdout + proc.stderr

        lines = [line for function, line in examples() if parse(line) is not None
                 and parse(line)[2] != ["dom0"] and not (parse(line)[2] is None and function in DOM0)]
        assert len(lines) >= 8, lines
        failures = []
        for line in lines:
            name, args, _ = parse(line)
            named = [a.split("=", 1)[1] for a in args if a.startswith("name=")]
            if name == "qubes_firewall.revert" and named:  # the example's backup: the newest, under its name
                saved = sorted((tmp_path / "backups").glob(QUBE + "-2*.json"))
                assert saved, "no backup of %s to revert to" % QUBE
                shutil.copy(saved[-1], tmp_path / "backups" / named[0])
            failures += run_line(run, line, tmp_path)
        assert not failures, "\n".join("%s: %s\n    %s" % f for f in failures)
    finally:
        flab.close()


def test_examples_parse_as_documented():
    assert parse("sudo qubesctl --skip-dom0 --targets=sys-net,web qubes_firewall.status origin=x") == \
        ("qubes_firewall.status", ["origin=x"], ["sys-net", "web"])
    assert parse("sudo qubesctl qubes_firewall.addresses work,web") == \
        ("qubes_firewall.addresses", ["work,web"], ["dom0"])
    assert parse("salt-call qubes_firewall.check work build 22") == \
        ("qubes_firewall.check", ["work", "build", "22"], None)
    assert parse("dot -Tpng /tmp/topology.dot -o topology.png") is None
    with pytest.raises(TypeError):
        bind("check", ["work"])
