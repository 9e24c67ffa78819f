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


# ---- both families ----

# full.sls with Qubes' ipv6 feature in effect everywhere (each qube's ip6 as Qubes derives it)
IPV6 = {q: "fd09:24ef:4179::a89:%s" % ip.split(".")[-1] for q, ip in example("full")["addresses"].items()}


def with_ipv6(pillar, without=()):
    return dict(pillar, addresses6={q: ip for q, ip in IPV6.items() if q not in without})


def test_an_ipv4_only_pillar_answers_ipv6_not_at_the_first_qube():
    answer = flow.check(FULL, "work", "build", 22)
    assert answer["ipv6"]["allowed"] is False and answer["ipv6"]["reaches"] is None
    assert answer["ipv6"]["reason"] == "work has no IPv6"
    assert answer["ipv6"]["steps"] == ["work has no IPv6 (Qubes' ipv6 feature is not in effect there): "
                                       "the IPv6 packet stops here"]
    assert answer["families"] == {"ipv4": "allowed", "ipv6": "not (work has no IPv6)"}
    assert flow.check(FULL, "outside", "web", 443)["families"]["ipv6"] == "not (sys-net has no IPv6)"
    assert flow.check(FULL, "build", "work", 22)["families"]["ipv4"] == (
        "not (sys-firewall-2 drops forwarding to its client work (Qubes' forward chain))")


def test_ipv6_stops_at_the_first_hop_without_it():
    """sys-net without the ipv6 feature (the qubes below have it: sys-firewall's own): work
    reaches the outside over IPv4, over IPv6 its packet stops in sys-net; between qubes below
    sys-net IPv6 still flows (the walk goes on)."""
    mdl = model.parse(with_ipv6(example("full"), without=("sys-net",)))
    answer = flow.check(mdl, "work", "lan", 443)
    assert answer["allowed"] and not answer["ipv6"]["allowed"]
    assert answer["families"] == {"ipv4": "allowed", "ipv6": "not (sys-net has no IPv6)"}
    assert answer["ipv6"]["steps"][0] == "work: sends to an outside address tcp/443"
    assert answer["ipv6"]["steps"][-1].startswith("sys-net has no IPv6")
    assert any("masquerades it as %s" % IPV6["sys-vpn"] in s for s in answer["ipv6"]["steps"])
    assert flow.check(mdl, "lan", "web", 443, **LAN)["ipv6"]["reason"] == "sys-net has no IPv6"
    # the target without IPv6: nothing to address
    mdl = model.parse(with_ipv6(example("full"), without=("build",)))
    assert flow.check(mdl, "work", "build", 22)["ipv6"]["reason"] == "build has no IPv6"


def test_ipv6_to_the_outside_needs_the_uplinks_own_ipv6():
    mdl = model.parse(with_ipv6(example("full")))
    answer = flow.check(mdl, "web", "internet", 443)
    assert answer["ipv6"]["allowed"] and answer["ipv6"]["reaches"] == {"node": "internet", "port": 443}
    assert answer["ipv6"]["conditions"] == ["sys-net has IPv6 on its outside network"]
    assert answer["conditions"] == [] and answer["families"] == {"ipv4": "allowed", "ipv6": "allowed"}
    assert answer["ipv6"]["steps"][0] == "web: sends to an outside address tcp/443"


def test_ipv6_walks_the_ip6_objects_only():
    """The IPv6 walk reads the plan's ip6 objects only: where the planner writes the connection's
    ip6 rules they let it through (named in ``ipv6``'s rules, with IPv6 addresses); without them
    Qubes' ip6 chains decide (forwarding down to a client is dropped), whatever the ip rules allow."""
    mdl = model.parse(with_ipv6(example("full")))
    answer = flow.check(mdl, "work", "build", 22)
    assert answer["allowed"] and answer["rules"]
    if any(getattr(c, "family", "ip") == "ip6" for q in mdl.qubes for c in plan.plan_qube(mdl, q).chains):
        assert answer["ipv6"]["allowed"], answer["ipv6"]
        assert [(r["qube"], r["chain"]) for r in answer["ipv6"]["rules"]] == [("sys-firewall-2", "qf-forward"),
                                                                             ("build", "qf-input")]
        assert IPV6["work"] in answer["ipv6"]["rules"][0]["rule"] and "ip6 saddr" in answer["ipv6"]["rules"][0]["rule"]
    else:
        assert answer["ipv6"]["reason"] == "sys-firewall-2 drops forwarding to its client build (Qubes' forward chain)"
        assert answer["ipv6"]["rules"] == []


def _ipv6_plan(real_plan, mapping):
    """A planner that also writes every ip object as ip6, with the IPv6 addresses (what check reads)."""
    import json
    import types

    def six(data):
        text = json.dumps(data, sort_keys=True).replace('"protocol": "ip"', '"protocol": "ip6"')
        text = text.replace('"family": "ip"', '"family": "ip6"')
        for ip4, ip6 in mapping.items():
            text = text.replace('"%s"' % ip4, '"%s"' % ip6)
        return json.loads(text)

    def expr(e):
        return plan._expr(e.text, six(e.json))

    def value(v):
        return tuple(mapping.get(x, x) if isinstance(x, str) else x for x in v) if v is not None else None

    def planner(mdl, qube):
        real = real_plan(mdl, qube)
        chains = [types.SimpleNamespace(name=c.name, hook=c.hook, family="ip6", rules=tuple(
            plan.Rule(r.chain, tuple(expr(m) for m in r.matches), expr(r.verdict), r.origin, r.counted)
            for r in c.rules)) for c in real.chains]
        sets = [types.SimpleNamespace(name=s.name, family="ip6", elements=tuple(
            plan.Element(value(e.key), value(e.value), e.origin) for e in s.elements)) for s in real.sets]
        return types.SimpleNamespace(chains=list(real.chains) + chains, sets=list(real.sets) + sets)

    return planner


def test_ipv6_walks_ip6_rules_and_maps_like_ip(monkeypatch):
    """With ip6 objects in the plan (the IPv4 ones with IPv6 addresses), IPv6 answers as IPv4
    does, through ip6 rules, sets and maps; a path without IPv6 still stops."""
    pillar = with_ipv6(example("full"))
    mdl = model.parse(pillar)
    monkeypatch.setattr(flow.qf_plan, "plan_qube",
                        _ipv6_plan(flow.qf_plan.plan_qube, {pillar["addresses"][q]: IPV6[q] for q in IPV6}))
    answer = flow.check(mdl, "work", "build", 22)
    assert answer["families"] == {"ipv4": "allowed", "ipv6": "allowed"}
    assert [(r["qube"], r["chain"]) for r in answer["ipv6"]["rules"]] == [("sys-firewall-2", "qf-forward"),
                                                                         ("build", "qf-input")]
    assert answer["ipv6"]["steps"][0] == "work: sends to %s (build) tcp/22" % IPV6["build"]
    assert not flow.check(mdl, "build", "work", 22)["ipv6"]["allowed"]
    lan = flow.check(mdl, "lan", "web", 443, interface="ens6", source_ip="192.168.1.50")
    assert lan["allowed"] and lan["ipv6"]["allowed"], lan["ipv6"]
    assert any("rewrites the destination to %s (web) port 443" % IPV6["web"] in s for s in lan["ipv6"]["steps"])
    # an IPv4 source_ip is IPv4's: over IPv6 the source is unknown, so the rule's sources are a condition
    assert "comes from 192.168.1.0/24" in lan["ipv6"]["conditions"]
    assert lan["conditions"] == []
    text = flow.check_text(lan)
    assert text.splitlines()[1] == "ipv4: allowed; ipv6: allowed"
    assert "IPv6 path, hop by hop:" in text and "the formula's IPv6 rules on the way:" in text
    monkeypatch.undo()
    cut = model.parse(with_ipv6(example("full"), without=("sys-firewall",)))
    assert flow.check(cut, "work", "lan", 443)["ipv6"]["reason"] == "sys-firewall has no IPv6"


def test_only_ipv6_lets_it_through_says_so(monkeypatch):
    pillar = with_ipv6(example("full"))
    pillar["qubes"]["work"]["firewall"] = [{"action": "accept", "dsthost": IPV6["build"]}, {"action": "drop"}]
    mdl = model.parse(pillar)
    monkeypatch.setattr(flow.qf_plan, "plan_qube",
                        _ipv6_plan(flow.qf_plan.plan_qube, {pillar["addresses"][q]: IPV6[q] for q in IPV6}))
    answer = flow.check(mdl, "work", "build", 22)
    assert not answer["allowed"] and answer["ipv6"]["allowed"]
    assert answer["reason"] == "work's qvm-firewall list drops it in sys-firewall-2"
    assert any("accept by rule 0 (action=accept dst6=%s/128)" % IPV6["build"] in s
               for s in answer["ipv6"]["steps"]), answer["ipv6"]["steps"]
    assert flow.check_text(answer).startswith("ALLOWED over IPv6 only: work -> build tcp/22: work reaches build")


def test_dst4_and_dst6_rules_for_an_unknown_outside_destination_are_named():
    pillar = with_ipv6(example("full"))
    pillar["qubes"]["work"]["firewall"] = [{"action": "accept", "dsthost": "2001:db8::/32"},
                                          {"action": "accept", "dsthost": "192.0.2.0/24"}, {"action": "drop"}]
    answer = flow.check(model.parse(pillar), "work", "internet", 443)
    assert not answer["allowed"] and not answer["ipv6"]["allowed"]
    assert answer["notes"] == ["work's qvm-firewall rules for IPv4 networks (dst4=) were not evaluated: "
                               "the outside destination is unknown"]
    assert answer["ipv6"]["notes"] == ["work's qvm-firewall rules for IPv6 networks (dst6=) were not evaluated: "
                                       "the outside destination is unknown"]


def test_source_ip_of_either_family():
    with pytest.raises(flow.FlowError, match="source_ip must be an IPv4 or IPv6 address"):
        flow.check(FULL, "lan", "web", 443, source_ip="nope")
    assert flow.check(FULL, "lan", "web", 443, interface="ens6", source_ip="2001:db8::1")["conditions"] == [
        "comes from 192.168.1.0/24"]


def test_match_ip6_statements_match_ipv6_packets_only():
    v4 = {"iifgroup": 1, "iifname": "eth0", "saddr": "10.0.0.1", "daddr": "10.0.0.2",
          "local_addrs": set(), "proto": "tcp", "dport": 22}
    v6 = dict(v4, family=6, saddr="fd00::1", daddr="fd00::2")
    ip6_saddr = {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                           "right": {"prefix": {"addr": "fd00::", "len": 64}}}}
    assert flow.match([ip6_saddr], v6) == (True, [], None)
    assert flow.match([ip6_saddr], v4)[0] is False
    assert flow.match([plan.m_ip("saddr", ["10.0.0.0/24"])], v6)[0] is False
    assert flow.match([plan.m_ip("saddr", ["10.0.0.0/24"])], v4)[0] is True
