"""
``qubes:<qube>:vpn``: the pillar's VPN qube, checked by the model, planned by
``_qubes_firewall_vpn`` through the planner, its qvm-firewall list made for dom0,
its part of the least-privilege pillar, and ``check``'s "leaks if the tunnel is
down?".  Real packets: tests/e2e/test_vpn_in_lab.py.
"""

import copy
import json
import pathlib

import pytest

from tests.modules import core, model, nft, plan

dom0 = core("dom0")
flow = core("flow")
view = core("view")
vpn_mod = core("vpn")

ADDRESSES = {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "sys-vpn": "10.137.0.7",
             "sys-firewall-2": "10.137.0.8", "work": "10.137.0.9", "web": "10.137.0.11"}
VPN = {"interfaces": ["wg0"],
       "endpoints": [{"address": "198.51.100.7", "port": 51820},
                     {"address": "203.0.113.0/24", "port": 443, "protocol": "tcp"},
                     {"address": "2001:db8::/64", "port": 1194}],
       "dns": ["10.8.0.1"]}


def pillar(**vpn):
    return {"addresses": dict(ADDRESSES), "qubes": {
        "sys-net": {"netvm": "none"},
        "sys-firewall": {"netvm": "sys-net"},
        "web": {"netvm": "sys-firewall"},
        "sys-vpn": {"netvm": "sys-firewall", "vpn": dict(copy.deepcopy(VPN), **vpn)},
        "sys-firewall-2": {"netvm": "sys-vpn"},
        "work": {"netvm": "sys-firewall-2"},
    }}


def with_ipv6(raw):
    raw = copy.deepcopy(raw)
    raw["addresses6"] = {q: "fd09:24ef:4179::a89:%x" % int(a.rsplit(".", 1)[1]) for q, a in ADDRESSES.items()}
    return raw


def test_the_vpn_block_in_the_model():
    qube = model.parse(pillar()).qubes["sys-vpn"]
    assert qube.service and qube.provides_network
    assert qube.vpn.interfaces == ("wg0",)
    assert [(e.address, e.port, e.protocol, e.family) for e in qube.vpn.endpoints] == [
        ("198.51.100.7", 51820, "udp", 4), ("203.0.113.0/24", 443, "tcp", 4), ("2001:db8::/64", 1194, "udp", 6)]
    assert qube.vpn.dns == ("10.8.0.1",)
    assert model.parse(pillar(dns="none")).qubes["sys-vpn"].vpn.dns == ()


@pytest.mark.parametrize("change, error", [
    ({"vpn": {"interfaces": ["eth0"]}}, "qubes:sys-vpn:vpn:interfaces:0: eth0 is the VPN qube's upstream"),
    ({"vpn": {"interfaces": ["vif3.0"]}}, "qubes:sys-vpn:vpn:interfaces:0: 'vif3.0' is not an uplink interface"),
    ({"vpn": {"interfaces": ["0tun"]}}, "qubes:sys-vpn:vpn:interfaces:0: a tunnel interface name starts with a letter"),
    ({"vpn": {"interfaces": ["wg0; drop"]}}, "qubes:sys-vpn:vpn:interfaces:0: not a valid Linux interface name"),
    ({"vpn": {"interfaces": []}}, "qubes:sys-vpn:vpn:interfaces: is empty"),
    ({"vpn": {"endpoints": [{"address": "vpn.example.com", "port": 1}]}},
     "qubes:sys-vpn:vpn:endpoints:0:address: must be an IPv4 or IPv6 address or network"),
    ({"vpn": {"endpoints": [{"address": "0.0.0.0/0", "port": 1}]}},
     "qubes:sys-vpn:vpn:endpoints:0:address: '0.0.0.0/0' is every address"),
    ({"vpn": {"endpoints": [{"address": "::/0", "port": 1}]}}, "qubes:sys-vpn:vpn:endpoints:0:address: '::/0' is every"),
    ({"vpn": {"endpoints": [{"address": "10.0.0.1/8", "port": 1}]}}, "has host bits set (write 10.0.0.0/8)"),
    ({"vpn": {"endpoints": [{"address": "198.51.100.7", "port": 0}]}}, "qubes:sys-vpn:vpn:endpoints:0:port: port must"),
    ({"vpn": {"endpoints": [{"address": "198.51.100.7", "port": 1, "protocol": "icmp"}]}},
     "qubes:sys-vpn:vpn:endpoints:0:protocol: must be one of tcp|udp"),
    ({"vpn": {"endpoints": [{"address": "198.51.100.7"}]}}, "qubes:sys-vpn:vpn:endpoints:0:port: required"),
    ({"vpn": {"dns": ["fd00::1"]}}, "qubes:sys-vpn:vpn:dns:0: 'fd00::1': Qubes gives its qubes IPv4 DNS only"),
    ({"vpn": {"dns": None}}, "qubes:sys-vpn:vpn:dns: must be a list of IPv4 addresses"),
    ({"vpn": {"dns": ["10.8.0"]}}, "qubes:sys-vpn:vpn:dns:0: not an IPv4 address"),
    ({"vpn": {"dnss": []}}, "qubes:sys-vpn:vpn:dnss: unknown key; did you mean dns?"),
    ({"firewall": [{"action": "accept"}]}, "qubes:sys-vpn:firewall: sys-vpn has vpn: its qvm-firewall list is its "
                                           "endpoints (qubes_firewall:qubes:sys-vpn:vpn:endpoints)"),
    ({"service": False}, "qubes:sys-vpn:service: a qube with vpn is a network service qube"),
    ({"provides_network": False}, "qubes:sys-vpn:service: a network service qube must provide network"),
    ({"netvm": "none"}, "qubes:sys-vpn:vpn: a VPN qube needs a netvm"),
])
def test_a_bad_vpn_block_is_refused_by_path(change, error):
    raw = pillar()
    spec = raw["qubes"]["sys-vpn"]
    for key, value in change.items():
        if key == "vpn":
            spec["vpn"].update(value)
        else:
            spec[key] = value
    if change.get("netvm") == "none":
        raw["qubes"]["sys-firewall-2"]["netvm"] = "sys-vpn"
    errors = model.errors(raw)
    assert any(e.startswith("qubes_firewall:") and error in e for e in errors), errors


def test_nothing_may_need_what_the_vpn_qube_drops():
    raw = pillar()
    raw["port_forwards"] = [{"name": "ssh", "qube": "work", "port": 22}, {"name": "web", "qube": "web", "port": 443}]
    raw["connections"] = [{"from": "work", "to": "web"}, {"from": "web", "to": "sys-vpn"},
                          {"from": "work", "to": "sys-firewall-2"}]
    errors = model.errors(raw)
    assert errors == [
        "qubes_firewall:port_forwards:0:qube: work is behind the VPN qube sys-vpn (qubes_firewall:qubes:sys-vpn:vpn), "
        "which takes nothing in from its upstream; a port forward cannot reach it",
        "qubes_firewall:connections:0: work -> web crosses the VPN qube sys-vpn (qubes_firewall:qubes:sys-vpn:vpn), "
        "which lets its clients out only through the tunnel and nothing in or out of its upstream but the endpoints",
        "qubes_firewall:connections:1: web -> sys-vpn crosses the VPN qube sys-vpn (qubes_firewall:qubes:sys-vpn:vpn), "
        "which lets its clients out only through the tunnel and nothing in or out of its upstream but the endpoints",
    ]


def chains_of(p):
    return {c.ref: c for c in p.chains}


def test_the_plan_of_the_vpn_qube():
    p = plan.plan_qube(model.parse(pillar()), "sys-vpn")
    chains = chains_of(p)
    assert chains["qf-vpn-fwd"].hook == ("filter", "forward", -1, "accept")
    assert chains["qf-vpn-out"].hook == ("filter", "output", 0, "accept")
    assert chains["qf-vpn-dns"].hook == ("nat", "prerouting", -101, "accept")  # before Qubes' dnat-dns (-100)
    assert [r.body for r in chains["qf-vpn-fwd"].rules] == [
        "iifgroup 2 oifgroup != 2 oifname != @qf-vpn-tunnels counter drop",
        "oifgroup 2 iifgroup != 2 iifname != @qf-vpn-tunnels counter drop"]
    assert [r.body for r in chains["qf-vpn-out"].rules] == [
        "oifgroup 1 ip daddr . meta l4proto . th dport @qf-vpn-ep accept",
        "oifgroup 1 counter drop"]
    assert [r.body for r in chains["qf-vpn-dns"].rules] == [
        "iifgroup 2 ip daddr { 10.139.1.1, 10.139.1.2 } meta l4proto { tcp, udp } th dport 53 "
        "dnat ip to ip daddr map @qf-vpn-resolvers"]
    sets = {s.ref: s for s in p.sets}
    assert [e.text for e in sets["qf-vpn-ep"].elements] == [
        '198.51.100.7 . udp . 51820 comment "qf vpn:endpoints:0"',
        '203.0.113.0/24 . tcp . 443 comment "qf vpn:endpoints:1"']
    assert sets["qf-vpn-ep"].spec == "type ipv4_addr . inet_proto . inet_service; flags interval; counter;"
    assert [e.text for e in sets["qf-vpn-resolvers"].elements] == [
        '10.139.1.1 comment "qf vpn:dns:0" : 10.8.0.1', '10.139.1.2 comment "qf vpn:dns:0" : 10.8.0.1']
    assert [e.text for e in sets["qf-vpn-tunnels"].elements] == ['wg0 comment "qf vpn:interfaces:0"']
    # IPv4 only: the qube has no IPv6
    assert p.families == ("ip",)
    # replayed at boot by the user script, like the other rules
    assert p.persist_file == "qubes-firewall-user-script"
    block = plan.persist_block(p)
    assert "add chain ip qubes qf-vpn-fwd { type filter hook forward priority filter - 1; policy accept; }" in block
    assert "add chain ip qubes qf-vpn-dns { type nat hook prerouting priority filter - 101; policy accept; }" in block


def test_two_resolvers_and_dns_none():
    p = plan.plan_qube(model.parse(pillar(dns=["10.8.0.1", "10.8.0.2"])), "sys-vpn")
    sets = {s.ref: s for s in p.sets}
    assert [e.value for e in sets["qf-vpn-resolvers"].elements] == [("10.8.0.1",), ("10.8.0.2",)]
    p = plan.plan_qube(model.parse(pillar(dns="none")), "sys-vpn")
    assert "qf-vpn-resolvers" not in {s.ref for s in p.sets}
    assert [r.body for r in chains_of(p)["qf-vpn-dns"].rules] == [
        "iifgroup 2 ip daddr { 10.139.1.1, 10.139.1.2 } meta l4proto { tcp, udp } th dport 53 counter drop"]


def test_ipv6_where_the_vpn_qube_has_it():
    p = plan.plan_qube(model.parse(with_ipv6(pillar())), "sys-vpn")
    chains = chains_of(p)
    assert p.families == ("ip", "ip6")
    assert [r.body for r in chains["ip6 qf-vpn-fwd"].rules] == [r.body for r in chains["qf-vpn-fwd"].rules]
    assert [r.body for r in chains["ip6 qf-vpn-out"].rules] == [
        "oifgroup 1 ip6 daddr . meta l4proto . th dport @qf-vpn-ep accept", "oifgroup 1 counter drop"]
    assert "ip6 qf-vpn-dns" not in chains  # Qubes' DNS is IPv4
    sets = {s.ref: s for s in p.sets}
    assert [e.text for e in sets["ip6 qf-vpn-ep"].elements] == ['2001:db8::/64 . udp . 1194 comment "qf vpn:endpoints:2"']
    assert sets["ip6 qf-vpn-ep"].key_type[0] == "ipv6_addr"
    # no IPv6 endpoint: the qube's own IPv6 out of eth0 is all dropped
    raw = with_ipv6(pillar(endpoints=[{"address": "198.51.100.7", "port": 51820}]))
    p = plan.plan_qube(model.parse(raw), "sys-vpn")
    assert [r.body for r in chains_of(p)["ip6 qf-vpn-out"].rules] == ["oifgroup 1 counter drop"]
    assert "ip6 qf-vpn-ep" not in {s.ref for s in p.sets}


@pytest.mark.parametrize("count", [1, 50, 500])
def test_a_constant_number_of_rules_per_packet(count):
    endpoints = [{"address": "198.51.%d.%d" % (i // 250, i % 250 + 1), "port": 51820} for i in range(count)]
    p = plan.plan_qube(model.parse(pillar(endpoints=endpoints)), "sys-vpn")
    vpn_rules = sum(len(c.rules) for c in p.chains if c.name.startswith("qf-vpn-"))
    assert vpn_rules == 5
    assert len({s.ref: s for s in p.sets}["qf-vpn-ep"].elements) == count


def test_other_qubes_get_no_vpn_objects():
    mdl = model.parse(pillar())
    for qube in ("sys-net", "sys-firewall", "sys-firewall-2", "work"):
        p = plan.plan_qube(mdl, qube)
        assert not [c for c in p.chains if c.name.startswith("qf-vpn")]
        assert not [s for s in p.sets if s.name.startswith("qf-vpn")]


def test_dom0_makes_the_qvm_firewall_list_the_endpoints():
    mdl = model.parse(pillar())
    assert dom0.wanted_firewall(mdl.qubes["sys-vpn"]) == [
        "action=accept proto=udp dst4=198.51.100.7/32 dstports=51820-51820 comment=vpn endpoint",
        "action=accept proto=tcp dst4=203.0.113.0/24 dstports=443-443 comment=vpn endpoint",
        "action=accept proto=udp dst6=2001:db8::/64 dstports=1194-1194 comment=vpn endpoint"]
    changes = dom0.firewall_changes(mdl, {"sys-vpn": ["action=accept"]}, now=0)
    assert changes["sys-vpn"]["old"] == ["action=accept"]
    assert changes["sys-vpn"]["new"] == dom0.wanted_firewall(mdl.qubes["sys-vpn"])
    # the list as dom0 wrote it: nothing to change
    assert dom0.firewall_changes(mdl, {"sys-vpn": changes["sys-vpn"]["new"]}, now=0) == {}


def test_the_vpn_qube_gets_its_vpn_block_and_plans_the_same():
    raw = pillar()
    mdl = model.parse(raw)
    mine = view.view(raw, None, "sys-vpn")
    assert mine["qubes"]["sys-vpn"]["vpn"] == raw["qubes"]["sys-vpn"]["vpn"]
    assert plan.plan_qube(model.parse(mine), "sys-vpn") == plan.plan_qube(mdl, "sys-vpn")
    # a client's run needs no vpn block
    assert "vpn" not in view.view(raw, None, "sys-firewall-2")["qubes"]["sys-vpn"]


def test_check_says_a_client_does_not_leak_when_the_tunnel_is_down():
    mdl = model.parse(pillar())
    answer = flow.check(mdl, "work", "outside", 443)
    assert answer["allowed"]
    assert any("routes it into the tunnel (wg0)" in s for s in answer["steps"])
    assert answer["tunnel_down"] == [{
        "vpn": "sys-vpn", "leaks": False,
        "reason": "the routes fall back to sys-vpn's upstream (eth0), where sys-vpn drops it "
                  "(qf-vpn-fwd: qf vpn: the clients leave only through the tunnel)",
        "dns": "10.139.1.1 and 10.139.1.2: sent to 10.8.0.1 through the tunnel; dropped with it when it is down"}]
    assert "if sys-vpn's tunnel is down: no leak" in flow.check_text(answer)
    # upstream qubes are not reached through a VPN qube
    assert not flow.check(mdl, "work", "web", 443)["allowed"]
    # qubes not behind the VPN qube: no such question
    assert flow.check(mdl, "web", "outside", 443)["tunnel_down"] == []
    assert flow.check(mdl, "work", "sys-firewall-2", 22)["tunnel_down"] == []


def test_check_sees_a_leak_when_the_plan_has_no_drop():
    """The answer comes from the planned rules: without them, the same question says it leaks."""
    rules = [([], {"accept": None}, "nothing")]
    assert vpn_mod.forward_verdict(rules, vpn_mod.leak_packet("up"), {}) == ("accept", None)
    assert vpn_mod.forward_verdict([], vpn_mod.leak_packet("up"), {}) == ("accept", None)
    p = plan.plan_qube(model.parse(pillar()), "sys-vpn")
    fwd = chains_of(p)["qf-vpn-fwd"]
    planned = [([m.json for m in r.matches], r.verdict.json, r.comment) for r in fwd.rules]
    tunnels = {"qf-vpn-tunnels": ["wg0"]}
    assert vpn_mod.forward_verdict(planned, vpn_mod.leak_packet("up"), tunnels)[0] == "drop"
    assert vpn_mod.forward_verdict(planned, vpn_mod.leak_packet("down"), tunnels)[0] == "drop"
    through = dict(vpn_mod.leak_packet("up"), oifgroup=0, oifname="wg0")
    assert vpn_mod.forward_verdict(planned, through, tunnels) == ("accept", None)
    with pytest.raises(ValueError):
        vpn_mod.forward_verdict(planned, through, {})


FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def recorded_pillar():
    """The pillar of fixtures/sys-vpn-applied-nft-*.json: both families, networks and addresses."""
    raw = with_ipv6(pillar(interfaces=["wg0", "tun0"], dns=["10.8.0.1", "10.8.0.2"], endpoints=[
        {"address": "198.51.100.7", "port": 51820},
        {"address": "203.0.113.0/24", "port": 443, "protocol": "tcp"},
        {"address": "2001:db8::/64", "port": 443, "protocol": "tcp"},
        {"address": "2001:db8:1::5", "port": 1194}]))
    raw["addresses6"] = {q: a for q, a in raw["addresses6"].items() if q != "web"}
    return raw


@pytest.mark.parametrize("version", ["1.0.6", "1.1.3"])
def test_the_vpn_objects_as_nft_lists_them_are_the_plan(version):
    """Recorded: the plan's ruleset loaded with nft 1.0.6 (Debian 12) and 1.1.3 (Debian 13) and
    listed with ``nft -j``: applying again changes nothing (interval sets, ifname set, map)."""
    doc = json.loads((FIXTURES / ("sys-vpn-applied-nft-%s.json" % version)).read_text())
    p = plan.plan_qube(model.parse(recorded_pillar()), "sys-vpn")
    assert nft.transaction(p, nft.live_state(doc)) == ("", {})
    # one endpoint more: its set is refilled (an element of a network cannot be deleted by name)
    raw = recorded_pillar()
    raw["qubes"]["sys-vpn"]["vpn"]["endpoints"].append({"address": "192.0.2.0/24", "port": 1})
    script, summary = nft.transaction(plan.plan_qube(model.parse(raw), "sys-vpn"), nft.live_state(doc))
    assert summary["sets_replaced"] == ["qf-vpn-ep"] and "192.0.2.0/24 . udp . 1" in script
