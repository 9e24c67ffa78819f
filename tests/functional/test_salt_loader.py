"""
The formula under the real Salt loader (``salt-call --local``, as CONTRACT.md
section 2 runs it): the SLS renders for dom0 and for a qube, the modules load,
bad pillar stops the run with a path-named message, and the file states keep
their promises (test=True writes nothing, the second run changes nothing).
"""

import copy

import pytest
import yaml

from tests.modules import REPO
from tests.salt_call import SaltCall

EXAMPLE = yaml.safe_load((REPO / "pillar.example" / "full.sls").read_text())


def pillar_with(tmp_path, **changes):
    pillar = copy.deepcopy(EXAMPLE)
    pillar["qubes_firewall"]["lookup"] = {"rw_config": str(tmp_path / "rw" / "config"),
                                          "policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy")}
    pillar["qubes_firewall"].update(changes)
    return pillar


@pytest.mark.parametrize("minion_id", ["dom0", "sys-net", "work", "not-in-pillar"])
def test_sls_renders_for_dom0_and_qubes(tmp_path, minion_id):
    rc, out, proc = SaltCall(tmp_path, minion_id, pillar_with(tmp_path)).run("state.show_sls", "qubes_firewall")
    assert rc == 0, proc.stderr
    assert "qubes_firewall-validated" in out
    assert ("qubes_firewall-runtime-rules" in out) == (minion_id != "dom0")


def test_show_plan_through_the_loader(tmp_path):
    rc, out, proc = SaltCall(tmp_path, "sys-firewall", pillar_with(tmp_path)).run("qubes_firewall.show_plan")
    assert rc == 0, proc.stderr
    assert out["persist_file"] == "qubes-firewall-user-script"
    assert sorted(out["chains"]) == ["qf-forward", "qf-input", "qf-nat"]
    assert out["chains"]["qf-nat"]["rules"][0].startswith("iifgroup 1 ip daddr 10.137.0.6 ")


def test_bad_pillar_fails_with_its_path_and_changes_nothing(tmp_path):
    pillar = pillar_with(tmp_path)
    pillar["qubes_firewall"]["port_forwards"][0]["interfaces"] = ["ens6; reboot"]
    minion = SaltCall(tmp_path, "sys-net", pillar)
    rc, states = minion.apply()
    assert rc != 0
    assert states["qubes_firewall-validated"]["result"] is False
    assert "qubes_firewall:port_forwards:0:interfaces:0: not a valid Linux interface name" in \
        states["qubes_firewall-validated"]["comment"]
    for sid in ("qubes_firewall-runtime-rules", "qubes_firewall-persisted-rules"):
        assert states[sid]["result"] is False and not states[sid]["changes"]
    assert not (tmp_path / "rw").exists()


def test_unnamed_minion_does_nothing_and_says_so(tmp_path):
    rc, states = SaltCall(tmp_path, "personal", pillar_with(tmp_path)).apply()
    assert rc == 0
    assert "personal is not named in the qubes_firewall:qubes pillar" in \
        states["qubes_firewall-runtime-rules"]["comment"]
    assert not (tmp_path / "rw").exists()


def test_persisted_block_test_mode_then_apply_twice(tmp_path):
    rw = tmp_path / "rw" / "config"
    rw.mkdir(parents=True)
    script = rw / "rc.local"
    script.write_text("#!/bin/sh\n# my own line\necho hello >/dev/null\n")
    script.chmod(0o644)
    before = script.read_bytes()
    minion = SaltCall(tmp_path, "build", pillar_with(tmp_path))
    # the state alone (in the SLS it also requires the live nft apply, tested in the lab)
    sls_id = ("state.single", "qubes_firewall.persisted_rules", "name=qubes_firewall-persisted-rules")
    rc, out, proc = minion.run(*sls_id, "test=True")
    (result,) = out.values()
    assert result["result"] is None and str(script) in result["changes"]
    assert script.read_bytes() == before and (script.stat().st_mode & 0o777) == 0o644
    rc, out, proc = minion.run(*sls_id)
    (result,) = out.values()
    assert rc == 0 and result["result"] is True and result["changes"], proc.stderr
    text = script.read_text()
    assert text.startswith(before.decode()) and "BEGIN qubes_firewall:rules" in text
    assert script.stat().st_mode & 0o111
    assert not (rw / "qubes-firewall-user-script").exists()
    rc, out, proc = minion.run(*sls_id)
    (result,) = out.values()
    assert result["result"] is True and result["changes"] == {}


def test_disposable_netvm_block_is_written_by_its_disposable_template(tmp_path):
    """
    sys-firewall as a named disposable of default-dvm (the Qubes 4.2 default):
    the run on default-dvm writes sys-firewall's boot block (guarded by its
    name) into the template's /rw/config; sys-firewall's own run writes none,
    since its /rw is replaced from the template at every start.
    """
    pillar = pillar_with(tmp_path)
    pillar["qubes_firewall"]["qubes"]["sys-firewall"]["dispvm_template"] = "default-dvm"
    template = SaltCall(tmp_path, "default-dvm", pillar)
    single = ("state.single", "qubes_firewall.persisted_rules", "name=persisted")
    rc, out, proc = template.run(*single)
    (result,) = out.values()
    assert rc == 0 and result["result"] is True, proc.stderr
    script = (tmp_path / "rw" / "config" / "qubes-firewall-user-script").read_text()
    assert "# BEGIN qubes_firewall:rules:sys-firewall " in script
    assert '[ "$(qubesdb-read /name 2>/dev/null)" = "sys-firewall" ]' in script
    assert "add chain ip qubes qf-nat " in script
    rc, out, proc = template.run(*single)
    assert list(out.values())[0]["changes"] == {}
    # the disposable's own run keeps its hands off its throw-away /rw
    rc, out, proc = SaltCall(tmp_path / "fw", "sys-firewall", pillar).run(*single)
    (result,) = out.values()
    assert result["result"] is True and result["changes"] == {}
    # no longer a disposable: the template's block goes away
    del pillar["qubes_firewall"]["qubes"]["sys-firewall"]["dispvm_template"]
    template.set_pillar(pillar)
    rc, out, proc = template.run(*single)
    assert "rules:sys-firewall" not in (tmp_path / "rw" / "config" / "qubes-firewall-user-script").read_text()
