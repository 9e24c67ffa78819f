"""
Templates as qubesctl targets (README "Use it on Qubes", docs/operations.md):
a custom-persist qube's template and a named disposable's disposable template
are targets too, templates first (``qubes_firewall.targets``), and what their
runs write is what the qubes start with.

Topology: pillar.example/port-forward.sls (sys-firewall a disposable of
default-dvm) with custom-persist on sys-net (a network qube: a hook in its
template's /etc/qubes/qubes-firewall.d) and web (an enabled unit in its
template's /etc/systemd/system), both booting from debian-13.  The templates
run in namespaces of their own (tests/qubesctl/harness.py); the lab qubes
"start" from what the templates hold: sys-net and web boot from debian-13's
root (Qubes 4.3 runs none of their /rw/config scripts), sys-firewall from a
fresh copy of default-dvm's /rw.  Real packets prove the rules live after
that; test=True is honest, a second run changes nothing, a qube's
``qubes_firewall.status`` answers after the restart from the record its
disposable template wrote, and ``qubes_firewall.clean`` on the templates
removes their files (a qube started after that has no rules of the formula).
"""

import json
import os

import pytest

from tests.qubesctl.conftest import scenario_topology
from tests.qubesctl.test_scenarios import changed, flows_pass, qube_states, would_change

pytestmark = pytest.mark.lab

TEMPLATE, DVM = "debian-13", "default-dvm"
PERSISTENT = ("sys-net", "web")  # custom-persist, from debian-13
SUMMARY = "qubes_firewall-summary"
MARK = "qubes-firewall-formula"


def topology():
    data = scenario_topology("port-forward")
    for qube in PERSISTENT:
        data["qubes"][qube].update({"custom_persist": True, "template": TEMPLATE})
    return data


@pytest.fixture(scope="module")
def m(machine_factory):
    machine = machine_factory("templates", topology())
    machine.booted = {q: machine.flab.ruleset_model(q) for q in machine.qubes}
    return machine


def files_under(path):
    """{relative path: (bytes or link target, mode)} of every file and symlink under path."""
    out = {}
    for root, dirs, names in os.walk(str(path)):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, str(path))
            if os.path.islink(full):
                out[rel] = ("->" + os.readlink(full), None)
            else:
                with open(full, "rb") as handle:
                    out[rel] = (handle.read(), os.stat(full).st_mode)
    return out


def machine_state(m):
    """Every ruleset, every /rw/config (the templates' too), the templates' root filesystem."""
    qc = m.qc
    return ({q: m.flab.ruleset_model(q) for q in m.qubes},
            {t: files_under(qc.rw_config(t)) for t in m.qubes + qc.templates},
            files_under(m.lab.template_dir(TEMPLATE)))


def targets(m):
    """dom0's answer to ``sudo qubesctl qubes_firewall.targets --out=newline_values_only``."""
    run = m.qc.qubesctl("qubes_firewall.targets", "--out=newline_values_only")
    assert run.returncode == 0, run.stdout
    return run.stdout.strip().split(",")


def test_templates_first_then_the_qubes_announced_honestly_and_converged(m):
    qc = m.qc
    dom0 = qc.qubesctl("state.apply", "qubes_firewall")
    assert dom0.returncode == 0, dom0.stdout
    names = [t for t in targets(m) if t != "dom0"]
    assert names[:2] == [TEMPLATE, DVM] and sorted(names[2:]) == sorted(m.qubes), names
    assert sorted(qc.templates) == sorted([TEMPLATE, DVM])
    given = "--targets=" + ",".join(names)

    before = machine_state(m)
    look = qc.qubesctl("--skip-dom0", "--show-output", given, "state.apply", "qubes_firewall", "test=True", "--out=json")
    assert look.returncode == 0, look.stdout
    assert machine_state(m) == before, "test=True changed something"
    announced = {q: would_change(qube_states(look, q)) - {SUMMARY} for q in names}
    assert "qubes_firewall-custom-persist-replay" in announced[TEMPLATE], announced
    assert "qubes_firewall-persisted-rules" in announced[DVM], announced

    applied = qc.qubesctl("--skip-dom0", "--show-output", given, "state.apply", "qubes_firewall", "--out=json")
    assert applied.returncode == 0, applied.stdout
    for q in names:
        states = qube_states(applied, q)
        assert not {sid: s["comment"] for sid, s in states.items() if s["result"] is False}, q
        assert changed(states) - {SUMMARY} == announced[q], (q, changed(states), announced[q])

    # what the templates hold: the hook, the enabled unit, the disposable's boot block and record
    root = m.lab.template_dir(TEMPLATE)
    hook = root / "etc" / "qubes" / "qubes-firewall.d" / (MARK + "-sys-net")
    assert os.access(str(hook), os.X_OK)
    assert (root / "etc" / "systemd" / "system" / "multi-user.target.wants" / (MARK + "-web.service")).is_symlink()
    assert "qubes_firewall:rules:sys-firewall" in (qc.rw_config(DVM) / "qubes-firewall-user-script").read_text()
    record = json.loads(qc.record_file(DVM, "sys-firewall").read_text())
    assert record["qube"] == "sys-firewall" and "sys-firewall" in record["pillar"]["qubes"]
    # and the qubes' own /rw no replay: their rules can only come back from the templates
    for q in m.qubes:
        assert not [p for p in qc.rw_config(q).glob("*") if p.is_file() and "qubes_firewall:" in p.read_text()], q
    ok, text = flows_pass(m, "port-forward")
    assert ok, text

    converged = machine_state(m)
    again = qc.qubesctl("--skip-dom0", "--show-output", given, "state.apply", "qubes_firewall", "--out=json")
    assert again.returncode == 0, again.stdout
    assert {q: changed(qube_states(again, q)) for q in names} == {q: set() for q in names}
    assert machine_state(m) == converged


def test_the_qubes_started_from_the_templates_have_their_rules_live(m):
    """Each qube restarts (its root filesystem anew; a disposable's /rw a copy of its template's):
    the same rules are live, and the real packets of the scenario pass or are refused as before."""
    qc = m.qc
    live = {q: m.flab.ruleset_model(q) for q in m.qubes}
    for q in ("sys-net", "web"):
        qc.restart_root(q)
        m.lab.reboot(q)
    qc.start_disposable("sys-firewall", DVM)
    assert all(live[q] != m.booted[q] for q in m.qubes)  # each has rules of the formula
    assert {q: m.flab.ruleset_model(q) for q in m.qubes} == live
    ok, text = flows_pass(m, "port-forward")
    assert ok, text


def test_after_the_restart_status_answers_from_the_record_under_rw(m):
    """The disposable's record came with its /rw from default-dvm's run; the others' stayed in their
    /rw; a run in each changes nothing."""
    qc = m.qc
    assert qc.record_file("sys-firewall").read_text() == qc.record_file(DVM, "sys-firewall").read_text()
    run = qc.qubesctl("--skip-dom0", "--show-output", "--targets=" + ",".join(m.qubes), "qubes_firewall.status",
                      "--out=json")
    assert run.returncode == 0, run.stdout
    for q in m.qubes:
        status = run.targets[q].json()[q]
        assert status["missing"] == [] and status["rules"], (q, status)
        assert str(qc.record_file(q)) in status["pillar_source"], (q, status)
    again = qc.qubesctl("--skip-dom0", "--show-output", "--targets=" + ",".join(m.qubes), "state.apply",
                        "qubes_firewall", "--out=json")
    assert again.returncode == 0, again.stdout
    assert {q: changed(qube_states(again, q)) for q in m.qubes} == {q: set() for q in m.qubes}


def test_clean_on_the_templates_removes_what_they_hold(m):
    qc = m.qc
    run = qc.qubesctl("--skip-dom0", "--targets=%s,%s" % (TEMPLATE, DVM), "state.apply", "qubes_firewall.clean")
    assert run.returncode == 0 and run.stdout.splitlines() == ["%s: OK" % TEMPLATE, "%s: OK" % DVM], run.stdout
    assert not [p for p in files_under(m.lab.template_dir(TEMPLATE)) if MARK in p]
    assert files_under(qc.rw_config(DVM)) == {}, files_under(qc.rw_config(DVM))
    # a qube started now has none of the formula's rules: they came from the template only
    qc.restart_root("web")
    m.lab.reboot("web")
    assert m.flab.ruleset_model("web") == m.booted["web"]
    again = qc.qubesctl("--skip-dom0", "--targets=%s,%s" % (TEMPLATE, DVM), "state.apply", "qubes_firewall.clean")
    assert again.returncode == 0, again.stdout
