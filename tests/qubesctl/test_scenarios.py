"""
The pillar.example scenarios as users apply them on Qubes (README, "Use it on
Qubes" step 3), through the qubesctl path: dom0 renders each qube's pillar
from the topology with the formula's pillar files of docs/addresses.md (the
addresses asked from Qubes, here the lab's; each qube only its part), salt-ssh of the management Salt runs the
state in each lab qube.

    sudo qubesctl state.apply qubes_firewall test=True
    sudo qubesctl state.apply qubes_firewall
    sudo qubesctl --skip-dom0 --targets=QUBES state.apply qubes_firewall

test=True (dom0's, then the qubes', once dom0 wired them) changes nothing and
announces exactly the states the real run then changes; the run converges in every qube (its flows pass); a second
run changes nothing; ``state.apply qubes_firewall.clean`` takes the qubes back
to what Qubes booted.
"""

import json

import pytest

from tests.e2e.formula_lab import check_flows, matrix_text
from tests.e2e.test_examples_in_lab import SCENARIOS

pytestmark = pytest.mark.lab


def flows_pass(m, scenario):
    """Serve the scenario's servers in ``m``'s lab and probe its flows: (all as promised, the matrix)."""
    servers, flows = SCENARIOS[scenario]
    for node, port in servers:
        m.lab.serve_tcp(node, port)
    try:
        results = check_flows(m.lab, flows)
    finally:
        m.lab.stop_servers()
    return all(got == flow.expect for flow, got in results), "\n" + matrix_text(results)


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def machine(request, machine_factory):
    m = machine_factory(request.param)
    m.booted = {q: m.flab.ruleset_model(q) for q in m.qubes}
    m.booted_files = {q: m.flab.snapshot(q)[1] for q in m.qubes}
    return m


def states_of(value):
    """{state id: result} of one minion's state.apply output."""
    assert isinstance(value, dict), value
    return {s.get("__id__", key): s for key, s in value.items()}


def qube_states(run, qube):
    target = run.targets[qube]
    return states_of(target.json()[qube])


def dom0_states(run):
    return states_of(json.loads(run.dom0.stdout)["local"])


def changed(states):
    return {sid for sid, s in states.items() if s["changes"]}


def would_change(states):
    """test=True: the states announcing a change (result None, or changes listed)."""
    return {sid for sid, s in states.items() if s["result"] is None or s["changes"]}


def machine_state(m):
    """Everything a run could change: every qube's ruleset and /rw/config, dom0's Qubes and policy."""
    policy = m.qc.lab_paths["dom0"]["policy_file"]
    try:
        policy_text = open(policy).read()
    except FileNotFoundError:
        policy_text = None
    with open(m.qc.world) as handle:
        world = json.load(handle)
    world.pop("events", None)
    return ({q: m.flab.ruleset_model(q) for q in m.qubes}, {q: m.flab.snapshot(q)[1] for q in m.qubes},
            world, policy_text)


def test_apply_is_announced_honestly_converges_and_stays(machine):
    m = machine
    qc = m.qc
    everything = {}

    # dom0: look first (changes nothing), then apply: it changes what it announced
    before = machine_state(m)
    look = qc.qubesctl("state.apply", "qubes_firewall", "test=True", "--out=json")
    assert look.returncode == 0, look.stdout
    assert machine_state(m) == before, "test=True in dom0 changed something"
    announced = everything["dom0"] = would_change(dom0_states(look)) - {"qubes_firewall-summary"}
    first = qc.qubesctl("state.apply", "qubes_firewall", "--out=json")
    assert first.returncode == 0, first.stdout
    assert changed(dom0_states(first)) - {"qubes_firewall-summary"} == announced, first.stdout

    # the qubes: look first (changes nothing), then apply: each changes what it announced
    before = machine_state(m)
    look = qc.qubesctl("--skip-dom0", "--show-output", m.targets(), "state.apply", "qubes_firewall", "test=True",
                       "--out=json")
    assert look.returncode == 0, look.stdout
    assert machine_state(m) == before, "test=True in the qubes changed something"
    for q in m.qubes:
        everything[q] = would_change(qube_states(look, q)) - {"qubes_firewall-summary"}
    applied = qc.qubesctl("--skip-dom0", "--show-output", m.targets(), "state.apply", "qubes_firewall", "--out=json")
    assert applied.returncode == 0, applied.stdout
    for q in m.qubes:
        states = qube_states(applied, q)
        failed = {sid: s["comment"] for sid, s in states.items() if s["result"] is False}
        assert not failed, (q, failed)
        assert changed(states) - {"qubes_firewall-summary"} == everything[q], (q, changed(states), everything[q])
    assert any(everything.values()), everything

    # the flows the example promises
    ok, text = flows_pass(m, m.name)
    assert ok, text

    # a second run, dom0 and the qubes in one command: one line per qube, and nothing changes
    converged = machine_state(m)
    again = qc.qubesctl(m.targets(), "state.apply", "qubes_firewall")
    assert again.returncode == 0, again.stdout
    assert again.stdout.splitlines()[-len(m.qubes):] == ["%s: OK" % q for q in m.qubes], again.stdout
    assert machine_state(m) == converged


def test_clean_takes_every_qube_back_to_what_qubes_booted(machine):
    m = machine
    run = m.qc.qubesctl("--skip-dom0", m.targets(), "state.apply", "qubes_firewall.clean")
    assert run.returncode == 0, run.stdout
    assert run.stdout.splitlines() == ["%s: OK" % q for q in m.qubes], run.stdout
    dom0 = m.qc.qubesctl("state.apply", "qubes_firewall.clean")
    assert dom0.returncode == 0, dom0.stdout
    for q in m.qubes:
        assert m.flab.ruleset_model(q) == m.booted[q], q
        assert m.flab.snapshot(q)[1] == m.booted_files[q], q
