"""
The formula under the real Salt loader, with pytest-salt-factories: the
execution and state modules through its in-process loaders
(``saltfactories.utils.functional.Loaders``), the CLI through the minion's
``salt_call_cli`` (``salt-call --local``).  The SLS renders for dom0 and for a
qube, the modules load, bad pillar stops the run with a path-named message,
and the file states keep their promises (test=True writes nothing, the second
run changes nothing).  Every Salt directory lives in the test's tmp_path.
"""

import copy

import pytest
from saltfactories.utils.functional import Loaders

from tests import examples
from tests.saltfactories_support import formula_minion, states_by_id, write_pillar_tree

EXAMPLE = examples.sls("full")


def pillar_with(tmp_path, **changes):
    pillar = copy.deepcopy(EXAMPLE)
    pillar["qubes_firewall"]["lookup"] = {"rw_config": str(tmp_path / "rw" / "config"),
                                          "policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy")}
    pillar["qubes_firewall"].update(changes)
    return pillar


@pytest.fixture
def make_loaders(salt_factories, tmp_path):
    """make_loaders(minion_id, pillar) -> Loaders for that minion with that pillar."""
    made = []

    def make(minion_id, pillar):
        pillar_dir = write_pillar_tree(tmp_path / "pillar" / minion_id, pillar)
        minion = formula_minion(salt_factories, minion_id, pillar_dir)
        made.append(Loaders(minion.config.copy(), loaded_base_name="tests.functional.loaded"))
        return made[-1]

    yield make
    for loaders in made:
        loaders.reset_state()


@pytest.mark.parametrize("minion_id", ["dom0", "sys-net", "work", "not-in-pillar"])
def test_sls_renders_for_dom0_and_qubes(make_loaders, tmp_path, minion_id):
    out = make_loaders(minion_id, pillar_with(tmp_path)).modules.state.show_sls("qubes_firewall")
    assert isinstance(out, dict), out
    assert "qubes_firewall-validated" in out
    assert ("qubes_firewall-runtime-rules" in out) == (minion_id != "dom0")


def test_show_plan_through_the_loader(make_loaders, tmp_path):
    out = make_loaders("sys-firewall", pillar_with(tmp_path)).modules.qubes_firewall.show_plan()
    assert out["persist_file"] == "qubes-firewall-user-script"
    assert sorted(out["chains"]) == ["qf-forward", "qf-input", "qf-nat"]
    assert out["chains"]["qf-nat"]["rules"][0].startswith("iifgroup 1 ip daddr 10.137.0.6 ")


def test_bad_pillar_fails_with_its_path_and_changes_nothing(make_loaders, tmp_path):
    pillar = pillar_with(tmp_path)
    pillar["qubes_firewall"]["port_forwards"][0]["interfaces"] = ["ens6; reboot"]
    ret = make_loaders("sys-net", pillar).modules.state.apply("qubes_firewall")
    states = {r.id: r for r in ret}
    assert states["qubes_firewall-validated"].result is False
    assert "qubes_firewall:port_forwards:0:interfaces:0: not a valid Linux interface name" in \
        states["qubes_firewall-validated"].comment
    for sid in ("qubes_firewall-runtime-rules", "qubes_firewall-persisted-rules"):
        assert states[sid].result is False and not states[sid].changes
    assert not (tmp_path / "rw").exists()


def test_unnamed_minion_does_nothing_and_says_so(make_loaders, tmp_path):
    ret = make_loaders("personal", pillar_with(tmp_path)).modules.state.apply("qubes_firewall")
    states = {r.id: r for r in ret}
    assert not ret.failed
    assert "personal is not named in the qubes_firewall:qubes pillar" in states["qubes_firewall-runtime-rules"].comment
    assert not (tmp_path / "rw").exists()


def test_persisted_block_test_mode_then_apply_twice(make_loaders, tmp_path):
    rw = tmp_path / "rw" / "config"
    rw.mkdir(parents=True)
    script = rw / "rc.local"
    script.write_text("#!/bin/sh\n# my own line\necho hello >/dev/null\n")
    script.chmod(0o644)
    before = script.read_bytes()
    states = make_loaders("build", pillar_with(tmp_path)).states
    # the state alone (in the SLS it also requires the live nft apply, tested in the lab)
    ret = states.qubes_firewall.boot_replay_managed(name="qubes_firewall-persisted-rules", test=True)
    assert ret.result is None and str(script) in ret.changes
    assert script.read_bytes() == before and (script.stat().st_mode & 0o777) == 0o644
    ret = states.qubes_firewall.boot_replay_managed(name="qubes_firewall-persisted-rules")
    assert ret.result is True and ret.changes, ret
    text = script.read_text()
    assert text.startswith(before.decode()) and "BEGIN qubes_firewall:rules" in text
    assert script.stat().st_mode & 0o111
    assert not (rw / "qubes-firewall-user-script").exists()
    ret = states.qubes_firewall.boot_replay_managed(name="qubes_firewall-persisted-rules")
    assert ret.result is True and ret.changes == {}


def test_disposable_netvm_block_is_written_by_its_disposable_template(make_loaders, tmp_path):
    """
    sys-firewall as a named disposable of default-dvm (the Qubes 4.2 default):
    the run on default-dvm writes sys-firewall's boot block (guarded by its
    name) into the template's /rw/config; sys-firewall's own run writes none,
    since its /rw is replaced from the template at every start.
    """
    pillar = pillar_with(tmp_path)
    pillar["qubes_firewall"]["qubes"]["sys-firewall"]["dispvm_template"] = "default-dvm"
    template = make_loaders("default-dvm", pillar).states
    ret = template.qubes_firewall.boot_replay_managed(name="persisted")
    assert ret.result is True, ret
    script = (tmp_path / "rw" / "config" / "qubes-firewall-user-script").read_text()
    assert "# BEGIN qubes_firewall:rules:sys-firewall " in script
    assert '[ "$(qubesdb-read /name 2>/dev/null)" = "sys-firewall" ]' in script
    assert "add chain ip qubes qf-nat " in script
    assert template.qubes_firewall.boot_replay_managed(name="persisted").changes == {}
    # the disposable's own run keeps its hands off its throw-away /rw
    ret = make_loaders("sys-firewall", pillar).states.qubes_firewall.boot_replay_managed(name="persisted")
    assert ret.result is True and ret.changes == {}
    # no longer a disposable: the template's block goes away
    del pillar["qubes_firewall"]["qubes"]["sys-firewall"]["dispvm_template"]
    ret = make_loaders("default-dvm", pillar).states.qubes_firewall.boot_replay_managed(name="persisted")
    assert ret.result is True and ret.changes
    assert "rules:sys-firewall" not in (tmp_path / "rw" / "config" / "qubes-firewall-user-script").read_text()


def test_cli_state_apply_exit_codes(salt_factories, tmp_path):
    """salt-call --local, as users run it: a bad pillar exits non-zero, an unnamed minion zero."""
    pillar = pillar_with(tmp_path)
    good = formula_minion(salt_factories, "personal", write_pillar_tree(tmp_path / "good", pillar))
    ret = good.salt_call_cli().run("--local", "--retcode-passthrough", "state.apply", "qubes_firewall")
    assert ret.returncode == 0, ret
    assert "qubes_firewall-runtime-rules" in states_by_id(ret.data)
    pillar["qubes_firewall"]["qubes"]["sys-net"]["netvm"] = "sys-nope"
    bad = formula_minion(salt_factories, "sys-net", write_pillar_tree(tmp_path / "bad", pillar))
    ret = bad.salt_call_cli().run("--local", "--retcode-passthrough", "state.apply", "qubes_firewall")
    assert ret.returncode != 0
    comment = states_by_id(ret.data)["qubes_firewall-validated"]["comment"]
    assert "qubes_firewall:qubes:sys-net:netvm" in comment, comment
    assert not (tmp_path / "rw").exists()


def test_a_state_takes_its_data_as_arguments_and_answers_to_its_old_name(make_loaders, tmp_path):
    """Through Salt's loader: a forward given to the state, not in the pillar, reaches the boot replay."""
    (tmp_path / "rw" / "config").mkdir(parents=True)
    extra = {"name": "extra", "qube": "web", "proto": "tcp", "port": 8443, "external_port": 8443,
             "interfaces": ["ens6"], "sources": ["192.168.1.0/24"]}
    states = make_loaders("sys-net", pillar_with(tmp_path)).states
    ret = states.qubes_firewall.boot_replay_managed(name="replay", port_forwards=[extra])
    assert ret.result is True and ret.changes, ret
    script = (tmp_path / "rw" / "config" / "qubes-firewall-user-script").read_text()
    assert "port_forwards:extra" in script and "port_forwards:https" in script
    # the old name, without the argument: the pillar alone, so the forward goes again
    ret = make_loaders("sys-net", pillar_with(tmp_path)).states.qubes_firewall.persisted_rules(name="replay")
    assert ret.result is True and "use qubes_firewall.boot_replay_managed" in ret.comment, ret
    script = (tmp_path / "rw" / "config" / "qubes-firewall-user-script").read_text()
    assert "port_forwards:extra" not in script and "port_forwards:https" in script
