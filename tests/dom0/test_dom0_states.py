"""
The dom0 states over both backends: test=True reads only (the world file stays
byte for byte, no write call), a real run changes what test=True announced,
the second run changes nothing, errors are result False with a comment and
change nothing.
"""

from conftest import full_pillar

WRITES = {"qvm-prefs": lambda c: len([a for a in c[1:] if not a.startswith("-")]) >= 3 or "-D" in c,
          "qvm-firewall": lambda c: any(a in ("add", "del", "reset") for a in c),
          "qvm-features": lambda c: len(c) >= 4,
          "qvm-service": lambda c: len(c) >= 4}


def writes(calls):
    return [c for c in calls if c[0] in WRITES and WRITES[c[0]](c)]


def sandwich_with_firewall():
    pillar = full_pillar()
    pillar["qubes"]["work"]["firewall"] = [
        {"action": "accept", "proto": "tcp", "dsthost": "10.137.0.10", "dstports": 22},
        {"action": "accept", "proto": "tcp", "dsthost": "example.com", "dstports": 443},
        {"action": "accept", "specialtarget": "dns"},
        {"action": "drop"},
    ]
    return pillar


def test_test_mode_then_apply_then_nothing(dom0, qubes, backend):
    dom0.set_pillar(sandwich_with_firewall())
    before = qubes.path.read_bytes()

    dry = dom0.run(test=True)
    assert qubes.path.read_bytes() == before
    assert writes(qubes.calls()) == []
    assert dry["topology"]["result"] is True
    assert dry["firewall"]["result"] is None and "work" in dry["firewall"]["changes"]
    assert "+action=accept proto=tcp dst4=10.137.0.10/32 dstports=22-22" in dry["firewall"]["changes"]["work"]["diff"]
    assert dry["prefs"]["result"] is None
    assert dry["prefs"]["changes"] == {
        "sys-firewall-2": {"provides_network": {"old": False, "new": True},
                           "netvm": {"old": "sys-firewall", "new": "sys-vpn"}},
        "sys-vpn": {"provides_network": {"old": False, "new": True}},
        "build": {"netvm": {"old": "sys-firewall", "new": "sys-firewall-2"}},
        "work": {"netvm": {"old": "sys-firewall", "new": "sys-firewall-2"}},
    }
    assert dry["prefs"]["comment"].splitlines()[1:] == [
        "1. qvm-prefs sys-firewall-2 provides_network True",
        "2. qvm-prefs sys-vpn provides_network True",
        "3. qvm-prefs sys-firewall-2 netvm sys-vpn",
        "4. qvm-prefs build netvm sys-firewall-2",
        "5. qvm-prefs work netvm sys-firewall-2",
    ]

    real = dom0.run()
    for key in ("firewall", "prefs"):
        assert real[key]["result"] is True and real[key]["changes"] == dry[key]["changes"], real[key]
    world = qubes.world()
    assert world.get("work", "netvm") == "sys-firewall-2" and world.get("sys-firewall-2", "netvm") == "sys-vpn"
    assert world.is_default("sys-vpn", "netvm") and world.is_default("web", "netvm")  # nothing pinned
    assert world.firewall("work")[0] == "action=accept proto=tcp dst4=10.137.0.10/32 dstports=22-22"

    qubes.clear_calls()
    again = dom0.run()
    assert all(again[k]["result"] is True and again[k]["changes"] == {} for k in again), again
    assert writes(qubes.calls()) == []


def test_topology_error_fails_and_stops_the_other_states(dom0, qubes, backend):
    pillar = full_pillar()
    pillar["qubes"]["work"]["netvm"] = "sys-vpn"
    dom0.set_pillar(pillar)
    before = qubes.path.read_bytes()
    out = dom0.run()
    assert out["topology"]["result"] is False
    assert "qubes_firewall:qubes:work:netvm: sys-vpn is a network service qube" in out["topology"]["comment"]
    assert out["firewall"] is None and out["prefs"] is None
    assert qubes.path.read_bytes() == before


def test_bad_pillar_fails_before_reading_qubes(dom0, qubes, backend):
    pillar = full_pillar()
    pillar["qubes"]["work"]["netvm"] = "sys-firewall-3"
    dom0.set_pillar(pillar)
    out = dom0.run()
    assert out["validated"]["result"] is False and "qubes_firewall:qubes:work:netvm" in out["validated"]["comment"]
    assert out["topology"] is None and qubes.calls() == []


def test_refusal_mid_way_is_a_failed_state_naming_what_was_done(dom0, qubes, backend, monkeypatch):
    # Qubes changes under our feet between planning and applying: sys-vpn stops
    steps = dom0.qubes_firewall.dom0_prefs_plan()
    qubes.edit(lambda d: d["qubes"]["sys-vpn"].update(state="Halted"))
    monkeypatch.setitem(dom0.salt, "qubes_firewall.dom0_prefs_plan", lambda: steps)
    ret = dom0.states.prefs("qubes_firewall-dom0-prefs")
    assert ret["result"] is False
    assert "Cannot dynamically attach to stopped NetVM: 'sys-vpn'" in ret["comment"]
    assert "done before: sys-firewall-2 provides_network=True, sys-vpn provides_network=True" in ret["comment"]
    assert ret["changes"] == {"sys-firewall-2": {"provides_network": {"old": False, "new": True}},
                              "sys-vpn": {"provides_network": {"old": False, "new": True}}}


def test_reconnected_state(dom0, qubes, backend):
    dom0.opts["test"] = True
    ret = dom0.states.reconnected("sys-net")
    assert ret["result"] is None and ret["changes"] == {"reattached": ["sys-firewall"]}
    assert qubes.data()["events"] == []
    dom0.opts["test"] = False
    ret = dom0.states.reconnected("sys-net")
    assert ret["result"] is True and qubes.data()["events"] == [["attach", "sys-firewall", "sys-net"]]
    ret = dom0.states.reconnected("personal")
    assert ret["result"] is True and ret["changes"] == {}
    ret = dom0.states.reconnected("nope")
    assert ret["result"] is False and "no such qube" in ret["comment"]
