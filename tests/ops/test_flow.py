"""check: answers from the pillar alone, for every ordered pair of pillar.example/full.sls and for the
cases that need the planner's exact rules (masquerade, external ports, qvm-firewall lists)."""

import copy

import pytest

from tests.ops.helpers import example, example_model, flow, model, plan

LAN = {"interface": "ens6", "source_ip": "192.168.1.50"}
FULL = example_model("full")
NODES = ["lan"] + sorted(FULL.qubes)
# everything full.sls lets through; every other ordered pair is blocked
ALLOWED = {("work", "build", 22), ("lan", "web", 443)} | {
    (q, "lan", port) for q in FULL.qubes for port in (22, 443)}


@pytest.mark.parametrize("port", [22, 443])
@pytest.mark.parametrize("source", NODES)
def test_every_pair_of_the_full_example(source, port):
    for target in NODES:
        if target == source:
            continue
        answer = flow.check(FULL, source, target, port, **(LAN if source == "lan" else {}))
        assert answer["allowed"] == ((source, target, port) in ALLOWED), answer
        if not answer["allowed"]:
            assert answer["reason"] and not answer["reason"].startswith("allowed")


def test_work_to_build_names_the_connection_rules():
    answer = flow.check(FULL, "work", "build", 22)
    assert [(r["qube"], r["chain"]) for r in answer["rules"]] == [("sys-firewall-2", "qf-forward"),
                                                                  ("build", "qf-input")]
    assert all(r["comment"].startswith("qf connections:0 work->build") for r in answer["rules"])
    assert answer["reaches"] == {"node": "build", "port": 22}
    assert flow.check(FULL, "build", "work", 22)["reason"] == (
        "sys-firewall-2 drops forwarding to its client work (Qubes' forward chain)")


def test_port_forward_every_hop_and_the_lan_conditions():
    answer = flow.check(FULL, "outside", "web", 443)
    assert answer["allowed"]
    assert [(r["qube"], r["chain"]) for r in answer["rules"]] == [
        ("sys-net", "qf-nat"), ("sys-net", "qf-forward"),
        ("sys-firewall", "qf-nat"), ("sys-firewall", "qf-forward"), ("web", "qf-input")]
    assert answer["conditions"] == ["arrives on ens6", "comes from 192.168.1.0/24"]
    assert flow.check(FULL, "lan", "web", 443, **LAN)["conditions"] == []
    # the wrong interface or source: dropped at the uplink
    assert not flow.check(FULL, "wan", "web", 443, interface="ens7")["allowed"]
    assert not flow.check(FULL, "lan", "web", 443, interface="ens6", source_ip="10.0.0.1")["allowed"]
    # the uplink's 443 is web's, not sys-net's
    other = flow.check(FULL, "lan", "sys-net", 443, **LAN)
    assert not other["allowed"] and other["reaches"] == {"node": "web", "port": 443}


def test_external_port_changes_at_the_last_hop():
    pillar = example("full")
    pillar["port_forwards"][0].update(external_port=8443, interfaces=[], sources=[])
    mdl = model.parse(pillar)
    answer = flow.check(mdl, "outside", "web", 8443)
    assert answer["allowed"] and answer["reaches"] == {"node": "web", "port": 443}
    assert answer["conditions"] == []
    assert not flow.check(mdl, "outside", "web", 443)["allowed"]


def test_forward_to_the_uplink_itself_redirects():
    pillar = example("full")
    pillar["port_forwards"] = [{"name": "ssh", "qube": "sys-net", "port": 22, "external_port": 2222}]
    answer = flow.check(model.parse(pillar), "outside", "sys-net", 2222)
    assert answer["allowed"] and answer["reaches"] == {"node": "sys-net", "port": 22}


def test_forwards_in_several_groups_each_with_its_sources():
    """Two groups (by sources) of forwards: each port is reached only from its own sources."""
    pillar = example("full")
    pillar["port_forwards"] = [
        {"name": "a%d" % i, "qube": "web", "port": 1000 + i, "sources": ["192.168.1.0/24"]} for i in range(50)
    ] + [{"name": "b%d" % i, "qube": "web", "port": 2000 + i, "sources": ["10.9.0.0/16"]} for i in range(50)]
    mdl = model.parse(pillar)
    answer = flow.check(mdl, "outside", "web", 2042, source_ip="10.9.1.1", interface="ens6")
    assert answer["allowed"] and answer["reaches"] == {"node": "web", "port": 2042}
    assert {r["comment"] for r in answer["rules"]} == {"qf port_forwards:b42"}
    assert not flow.check(mdl, "outside", "web", 2042, source_ip="192.168.1.5", interface="ens6")["allowed"]
    assert flow.check(mdl, "outside", "web", 1042, source_ip="192.168.1.5", interface="ens6")["allowed"]
    assert not flow.check(mdl, "outside", "web", 3000, source_ip="192.168.1.5", interface="ens6")["allowed"]


def test_deeper_source_is_masqueraded_so_its_neighbours_get_through_too():
    pillar = example("full")
    pillar["connections"] = [{"from": "work", "to": "web", "proto": "tcp", "ports": [80]}]
    mdl = model.parse(pillar)
    answer = flow.check(mdl, "work", "web", 80)
    assert answer["allowed"], answer
    assert any("masquerades it as 10.137.0.7" in s for s in answer["steps"])
    # build sits behind the same hop (sys-vpn): the rules cannot tell them apart
    assert flow.check(mdl, "build", "web", 80)["allowed"]
    assert not flow.check(mdl, "web", "work", 80)["allowed"]


def test_qvm_firewall_list_of_the_source_applies_in_its_netvm():
    pillar = example("full")
    pillar["qubes"]["work"]["firewall"] = [{"action": "accept", "proto": "tcp", "dstports": 443},
                                          {"action": "drop"}]
    mdl = model.parse(pillar)
    blocked = flow.check(mdl, "work", "build", 22)
    assert not blocked["allowed"]
    assert blocked["reason"] == "work's qvm-firewall list drops it in sys-firewall-2"
    assert flow.check(mdl, "work", "lan", 443)["allowed"]
    assert not flow.check(mdl, "work", "lan", 22)["allowed"]
    assert flow.check(mdl, "build", "lan", 22)["allowed"]


def test_udp_and_proto_mismatch():
    pillar = example("full")
    pillar["connections"] = [{"from": "work", "to": "build", "proto": "udp", "ports": [53]}]
    mdl = model.parse(pillar)
    assert flow.check(mdl, "work", "build", 53, "udp")["allowed"]
    assert not flow.check(mdl, "work", "build", 53, "tcp")["allowed"]


def test_connection_without_ports_or_proto_allows_everything():
    pillar = example("full")
    pillar["connections"] = [{"from": "work", "to": "build"}]
    mdl = model.parse(pillar)
    assert flow.check(mdl, "work", "build", 5000)["allowed"]
    assert flow.check(mdl, "work", "build", 5000, "udp")["allowed"]


@pytest.mark.parametrize("args", [("work", "work", 22), ("nope", "build", 22), ("lan", "outside", 22),
                                  ("work", "build", 0), ("work", "build", "x"), ("work", "build", 22, "icmp")])
def test_bad_questions(args):
    with pytest.raises(flow.FlowError):
        flow.check(FULL, *args)


def test_match_refuses_clauses_the_planner_never_writes():
    packet = {"iifgroup": 1, "iifname": "eth0", "saddr": "10.0.0.1", "daddr": "10.0.0.2",
              "local_addrs": set(), "proto": "tcp", "dport": 22}
    assert flow.match([plan.m_dport("tcp", [22, 80]), plan.m_ct_new()], packet) == (True, [], None)
    assert flow.match([plan.m_l4proto(["tcp", "udp"]), plan.m_dport("th", [22])], packet) == (True, [], None)
    assert flow.match([plan.m_ip("saddr", ["10.0.0.0/24"]), plan.m_iifgroup(2)], packet) == (False, [], None)
    assert flow.match([plan.m_iifname(["ens6"])], dict(packet, iifname=None))[1] == ["arrives on ens6"]
    with pytest.raises(ValueError):
        flow.match([{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}}], packet)


def test_matrix_covers_every_ordered_pair():
    out = flow.matrix(FULL, NODES, [22], **{})
    assert len(out) == len(NODES) * (len(NODES) - 1)
    assert copy.deepcopy(out[("work", "build", 22)])["allowed"]
