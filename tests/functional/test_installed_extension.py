"""
The formula as ``pip install .`` installs it: a wheel whose ``salt.loader``
entry point (pyproject.toml) hands Salt the directories of the shipped
``_modules``/``_states`` files, so ``salt-call --local qubes_firewall.*`` works
with no ``--module-dirs`` (scripts/bootstrap.sh installs the checkout into each
test venv; tests/saltfactories_support.py fails when that copy is stale).
Runs on every Salt of the matrix (3006, 3007, 3008).
"""

import os
import pathlib

import salt.config
import salt.loader

from tests import examples
from tests.modules import REPO
from tests.saltfactories_support import (
    formula_minion,
    installed_formula_problem,
    installed_loader_dirs,
    write_pillar_tree,
)

FULL = examples.sls("full")  # with the lab's addresses, as a qube's rendered pillar has them


def test_the_installed_wheel_ships_every_flat_file_and_only_them():
    assert installed_formula_problem() is None, installed_formula_problem()
    dirs = installed_loader_dirs()
    assert sorted(dirs) == ["modules", "states"]
    for kind, source in (("modules", "_modules"), ("states", "_states")):
        (installed,) = (pathlib.Path(d) for d in dirs[kind])
        assert not installed.is_relative_to(REPO), installed      # the installed copy, not the checkout
        assert {p.name for p in installed.glob("*.py")} == {p.name for p in (REPO / source).glob("*.py")}


def test_salts_loader_finds_the_extension_through_the_entry_point(tmp_path):
    opts = salt.config.minion_config(None)
    opts.update({"module_dirs": [], "extension_modules": str(tmp_path / "extmods")})
    dirs = installed_loader_dirs()
    assert dirs["modules"][0] in salt.loader._module_dirs(opts, "modules", "module")
    assert dirs["states"][0] in salt.loader._module_dirs(opts, "states")
    assert not any(str(REPO) in d for d in salt.loader._module_dirs(opts, "modules", "module"))


def test_salt_call_runs_a_public_function_without_module_dirs(salt_factories, tmp_path):
    pillar = dict(FULL)
    pillar["qubes_firewall"] = dict(FULL["qubes_firewall"], lookup={"rw_config": str(tmp_path / "rw")})
    minion = formula_minion(salt_factories, "sys-firewall", write_pillar_tree(tmp_path / "pillar", pillar))
    assert "module_dirs" not in minion.config or not minion.config["module_dirs"], minion.config["module_dirs"]
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ret = minion.salt_call_cli(environ=environ, cwd=str(tmp_path), timeout=300).run(
        "--local", "--retcode-passthrough", "qubes_firewall.show_plan")
    assert ret.returncode == 0, ret
    assert ret.data["persist_file"] == "qubes-firewall-user-script", ret.data
    assert sorted(ret.data["chains"]) == ["qf-forward", "qf-input", "qf-nat"]
    # the only copy Salt could load is the installed one: nothing was synced into extmods
    assert not list(pathlib.Path(minion.config["extension_modules"]).rglob("qubes_firewall*.py"))
    ret = minion.salt_call_cli(environ=environ, cwd=str(tmp_path), timeout=300).run(
        "--local", "sys.list_state_functions", "qubes_firewall")
    assert ret.returncode == 0 and "qubes_firewall.persisted_rules" in ret.data, ret
