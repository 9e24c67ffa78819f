"""
The sets-and-maps layout in the lab (issues 9.2 and 11): real salt-call, real nft, real packets.
Owned objects are compared by content, so hand edits inside them are drift and the next apply
restores them; removal leaves nothing owned and user rules alone; 1,200 forwards load and the
re-run is a no-op.
"""

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.formula_lab import FormulaLab
from tests.modules import model, nft, plan
from tests.unit.fixtures.record import BASE

pytestmark = pytest.mark.lab


def pillar(forwards=()):
    return {"qubes_firewall": {
        "addresses": {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "web": "10.137.0.11"},
        "qubes": {"sys-net": {"netvm": None}, "sys-firewall": {"netvm": "sys-net"},
                  "web": {"netvm": "sys-firewall"}},
        "port_forwards": [{"name": "https", "qube": "web", "proto": "tcp", "port": 443,
                           "interfaces": ["ens6"], "sources": ["192.168.1.0/24"]},
                          {"name": "ssh", "qube": "web", "proto": "tcp", "port": 22, "external_port": 2222}]
        + list(forwards),
    }}


def call(flab, qube, *args):
    rc, out, proc = flab.minion(qube).run(*args)
    assert out is not None, proc.stderr
    return rc, out


def owned_names(flab, qube):
    live = nft.live_state(flab.lab.nft_json(qube))
    return sorted(live["chains"]) + sorted(live["sets"])


@pytest.fixture(scope="module")
def flab(tmp_path_factory):
    lab = FormulaLab(pillar(), tmp_path_factory.mktemp("layout-lab"))
    try:
        lab.lab.sh("sys-net", 'nft add rule ip qubes custom-input tcp dport 9999 accept comment "mine"')
        lab.lab.sh("sys-firewall", 'nft add rule ip qubes custom-forward tcp dport 8888 accept comment "mine"')
        for qube, result in lab.apply_all().items():
            assert result.retcode == 0 and not result.failed, (qube, result.failed)
        lab.lab.serve_tcp("web", 443)
        lab.lab.serve_tcp("web", 22)
        yield lab
    finally:
        lab.close()


def test_apply_twice_the_second_changes_nothing_and_forwards_pass(flab):
    assert owned_names(flab, "sys-net")[:3] == ["qf-forward", "qf-input", "qf-nat"]
    before = flab.snapshot_all()
    assert all(r.retcode == 0 and r.changed == {} for r in flab.apply_all().values())
    assert flab.snapshot_all() == before
    assert flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2) == "web:443"
    assert flab.lab.probe_tcp("lan", "192.168.1.10", 2222, timeout=2) == "web:22"


def test_each_forward_keeps_its_own_counters_in_every_hop(flab):
    def counters():
        out = {}
        for qube in ("sys-net", "sys-firewall", "web"):
            rc, status = call(flab, qube, "qubes_firewall.status", "origin=port_forwards:")
            assert rc == 0 and status["missing"] == [], status
            out[qube] = status["by_origin"]
        return out

    before = counters()
    assert {q: c["port_forwards:https"]["rules"] for q, c in before.items()} == {
        "sys-net": 2, "sys-firewall": 2, "web": 1}
    for _ in range(3):
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2) == "web:443"
    after = counters()
    for qube in ("sys-net", "sys-firewall", "web"):
        assert after[qube]["port_forwards:https"]["packets"] >= before[qube]["port_forwards:https"]["packets"] + 3
        assert after[qube]["port_forwards:ssh"] == before[qube]["port_forwards:ssh"]


def all_counters(flab):
    """Every counter the formula owns in the forward's hops: {(qube, chain or set, item): (packets, origin)}."""
    out = {}
    for qube in ("sys-net", "sys-firewall", "web"):
        live = nft.live_state(flab.lab.nft_json(qube))
        for chain, body in live["chains"].items():
            for rule in body["rules"]:
                if rule["counters"] is not None:
                    out[(qube, chain, rule["handle"])] = (rule["counters"]["packets"], rule["comment"])
        for name, body in live["sets"].items():
            for key, elem in body["elements"].items():
                out[(qube, name, key)] = (elem["counters"]["packets"], elem["comment"])
    return out


def changed_counters(before, after):
    return {k: (after[k][1], after[k][0] - before[k][0]) for k in after if after[k][0] != before.get(k, (0,))[0]}


def test_a_packet_raises_the_counters_of_its_forward_and_no_other(flab):
    """Two groups (https: ens6 from the LAN; ssh: any interface, any source): three https connections
    raise the https elements by three in every hop and nothing else, though the ssh group's rules
    see the packets first or too; refused packets (a port nobody forwards, a source outside the https
    group's) raise no counter at all."""
    before = all_counters(flab)
    assert sum(1 for v in before.values() if v[1] == "qf port_forwards:https") == 5  # 2 + 2 + 1 hops' roles
    for _ in range(3):
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2) == "web:443"
    after = all_counters(flab)
    changed = changed_counters(before, after)
    assert sorted(changed.values()) == [("qf port_forwards:https", 3)] * 5, changed
    assert {k[0] for k in changed} == {"sys-net", "sys-firewall", "web"}
    # refused: a port no forward has; the https port from the other network (not ens6, not the LAN)
    assert flab.lab.probe_tcp("lan", "192.168.1.10", 444, timeout=1) is None
    assert flab.lab.probe_tcp("wan", "172.30.0.10", 443, timeout=1) is None
    assert changed_counters(after, all_counters(flab)) == {}


@pytest.mark.parametrize("edit, kind", [
    # the edit: an owned rule rewritten with its comment kept
    ("rewrite", "rule edited"),
    ("add rule ip qubes qf-forward tcp dport 9999 accept", "rule unexpected"),
    ("delete element", "element missing"),
    ("add element", "element unexpected"),
])
def test_hand_edits_inside_owned_objects_are_drift_and_get_restored(flab, edit, kind):
    qube = "sys-firewall"
    live = nft.live_state(flab.lab.nft_json(qube))
    fwd_set = next(n for n, s in live["sets"].items() if n.startswith("qf-fwd-") and any(
        e["comment"] == "qf port_forwards:https" for e in s["elements"].values()))
    if edit == "rewrite":
        doc = flab.lab.nft_json(qube)
        rule = [i["rule"] for i in doc["nftables"] if "rule" in i and i["rule"]["chain"] == "qf-forward"][0]
        flab.lab.nft_load(qube, 'replace rule ip qubes qf-forward handle %d tcp dport 1-65535 counter accept '
                                'comment "%s"\n' % (rule["handle"], rule["comment"]))
    elif edit == "delete element":
        flab.lab.nft_load(qube, "delete element ip qubes %s { tcp . 10.137.0.11 . 443 }\n" % fwd_set)
    elif edit == "add element":
        flab.lab.nft_load(qube, "add element ip qubes %s { tcp . 10.137.0.11 . 3306 }\n" % fwd_set)
    else:
        flab.lab.nft_load(qube, edit + "\n")
    rc, out = call(flab, qube, "qubes_firewall.drift")
    assert rc == 1 and out["drifted"] is True
    assert [d["kind"] for d in out["live"]] == [kind], out["live"]
    if kind == "rule edited":
        assert "origin port_forwards forward @qf-fwd-" in out["live"][0]["detail"]
    if kind == "element missing":
        assert "port_forwards:https" in out["live"][0]["detail"]
    result = flab.apply(qube)
    assert result.retcode == 0 and result.changed, result.states
    rc, out = call(flab, qube, "qubes_firewall.drift")
    assert rc == 0 and out["drifted"] is False, out
    assert flab.apply(qube).changed == {}
    assert any("8888" in r for r in flab.lab.chain_rules(qube, "custom-forward"))


def test_no_plan_removes_everything_owned_and_leaves_user_rules(flab):
    qube = "sys-net"
    user_before = flab.lab.chain_rules(qube, "custom-input")
    script, summary = nft.transaction(None, nft.live_state(flab.lab.nft_json(qube)))
    assert summary["chains_removed"] == ["qf-forward", "qf-input", "qf-nat"]
    flab.lab.nft_load(qube, script)
    assert owned_names(flab, qube) == []
    assert not nft.owned(nft.live_state(flab.lab.nft_json(qube)))
    assert nft.transaction(None, nft.live_state(flab.lab.nft_json(qube))) == ("", {})
    assert [r for r in flab.lab.chain_rules(qube, "custom-input") if "9999" in r] == [
        r for r in user_before if "9999" in r] != []
    assert flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2) is None
    # the next apply brings it all back
    assert flab.apply(qube).retcode == 0
    assert flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2) == "web:443"


def test_changing_one_forward_changes_only_its_elements(flab):
    changed = pillar()
    changed["qubes_firewall"]["port_forwards"][1]["external_port"] = 2022
    flab.set_pillar(changed)
    try:
        rc, drift = call(flab, "sys-net", "qubes_firewall.drift")
        assert rc == 1
        lines = drift["fix"].splitlines()  # the transaction the apply loads
        assert lines and all(line.startswith(("delete element", "add element")) for line in lines), lines
        result = flab.apply("sys-net")
        state = result.states["qubes_firewall-runtime-rules"]
        assert result.retcode == 0
        nft = state["changes"]["nft"]
        assert (nft["added"], nft["removed"], nft["entries changed"]) == (2, 2, ["port_forwards:ssh"]), nft
        assert "objects" not in nft, nft
        # the external port travels down to the last hop, which changes it
        assert flab.apply("sys-firewall").retcode == 0
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 2022, timeout=2) == "web:22"
    finally:
        flab.set_pillar(pillar())
        assert flab.apply("sys-net").retcode == 0 and flab.apply("sys-firewall").retcode == 0


def test_1200_forwards_load_in_one_transaction_and_the_rerun_is_a_no_op(tmp_path):
    many = [{"name": "pf-%d" % i, "qube": "web", "proto": "udp" if i % 2 else "tcp", "port": 20000 + i,
             "external_port": 10000 + i, "interfaces": ["ens6"]} for i in range(1200)]
    with FormulaLab(pillar(many), tmp_path) as flab:
        first = flab.apply("sys-net")
        assert first.retcode == 0 and not first.failed, first.failed
        second = flab.apply("sys-net")
        assert second.retcode == 0 and second.changed == {}
        live = nft.live_state(flab.lab.nft_json("sys-net"))
        assert len(live["chains"]["qf-nat"]["rules"]) == 3  # one per group of interfaces and sources
        assert sum(len(s["elements"]) for s in live["sets"].values()) == 2 * 1202
        wanted = plan.plan_qube(model.parse(pillar(many)["qubes_firewall"]), "sys-net")
        assert nft.transaction(wanted, live) == ("", {})
        assert sum(e["comment"] == "qf port_forwards:pf-1199"
                   for s in live["sets"].values() for e in s["elements"].values()) == 2


FORWARD = st.fixed_dictionaries({
    "proto": st.sampled_from(["tcp", "udp"]),
    "port": st.integers(1, 65535),
    "external_port": st.integers(1, 65535),
    "qube": st.sampled_from(["web", "sys-firewall", "sys-net"]),
    "sources": st.sampled_from([[], ["192.168.1.0/24"], ["10.0.0.0/8", "192.168.7.7"]]),
    "interfaces": st.sampled_from([[], ["ens6"], ["ens6", "wlan0"]]),
})


def distinct(forwards):
    seen, out = set(), []
    for i, f in enumerate(forwards):
        if (f["proto"], f["external_port"]) not in seen:
            seen.add((f["proto"], f["external_port"]))
            out.append(dict(f, name="f%d" % i))
    return out


@pytest.fixture(scope="module")
def bare_ns():
    """One namespace with a Qubes-like ip qubes table (custom chains with a user rule)."""
    name = "qf-layout-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ns_nft(ns, *argv, stdin=None):
    return subprocess.run(["ip", "netns", "exec", ns, "nft"] + list(argv), input=stdin, text=True,
                          capture_output=True, check=True).stdout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FORWARD, max_size=6), st.lists(FORWARD, max_size=6), st.sampled_from(["sys-net", "sys-firewall"]))
def test_any_plan_to_any_plan_converges_in_one_transaction_on_real_nft(bare_ns, before, after, qube):
    """From plan A loaded by real nft to plan B: one script, then B is a no-op; the boot replay of B
    changes nothing either; removal leaves nothing owned and the user's rule."""
    ns_nft(bare_ns, "flush", "ruleset")
    ns_nft(bare_ns, "-f", "-", stdin=BASE)
    plans = [plan.plan_qube(model.parse(dict(pillar()["qubes_firewall"], port_forwards=distinct(fwds))), qube)
             for fwds in (before, after)]
    for wanted in plans:
        script, _ = nft.transaction(wanted, nft.live_state(json.loads(ns_nft(bare_ns, "-j", "list", "ruleset"))))
        if script:
            ns_nft(bare_ns, "-f", "-", stdin=script)
        live = nft.live_state(json.loads(ns_nft(bare_ns, "-j", "list", "ruleset")))
        assert nft.transaction(wanted, live) == ("", {})
    ns_nft(bare_ns, "-f", "-", stdin=plan.ruleset_text(plans[1]))
    live = nft.live_state(json.loads(ns_nft(bare_ns, "-j", "list", "ruleset")))
    assert nft.transaction(plans[1], live) == ("", {})
    ns_nft(bare_ns, "-f", "-", stdin=nft.transaction(None, live)[0])
    listing = ns_nft(bare_ns, "list", "ruleset")
    assert "qf-" not in listing and "user rule" in listing
