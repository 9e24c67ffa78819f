"""IPv6: the planner's ``ip6 qubes`` objects (where Qubes' IPv6 is in effect: ``addresses6``),
their rendering, and the nft comparison of both tables, by content."""

import copy
import json
import os
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from salt.exceptions import CommandExecutionError

from tests import examples
from tests.modules import model, nft, plan
from tests.unit.test_plan import EXAMPLES

GOLDEN = pathlib.Path(__file__).parent / "golden"
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
PREFIX = "fd09:24ef:4179::a89:"


def v6(qube):
    """The lab's ip6 of a qube: Qubes' prefix and the qid of its 10.137.0.<qid> address."""
    return PREFIX + "%x" % int(examples.LAB_ADDRESSES[qube].rsplit(".", 1)[1])


def with_ipv6(pillar, qubes=None):
    """``pillar`` with ``addresses6`` for ``qubes`` (default: every qube it lists)."""
    pillar = copy.deepcopy(pillar)
    names = pillar["qubes"] if qubes is None else qubes
    pillar["addresses6"] = {q: PREFIX + "%x" % int(pillar["addresses"][q].rsplit(".", 1)[1]) for q in names}
    return pillar


def ipv6_full():
    """pillar.example/full.sls with IPv6 in every qube and the LAN's IPv6 network among the sources."""
    pillar = with_ipv6(examples.example("full"))
    pillar["port_forwards"][0]["sources"].append("2001:db8:1::/64")
    return pillar


def plan_of(pillar, qube):
    return plan.plan_qube(model.parse(pillar), qube)


def of(p, family):
    return {c.name: c for c in p.chains_of(family)}, {s.name.rsplit("-", 1)[0]: s for s in p.sets_of(family)}


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


# --------------------------------------------------------------------------
# the matcher helper


def test_m_ip_builds_the_match_of_either_family():
    m4 = plan.m_ip("saddr", ["192.168.1.0/24"])
    m6 = plan.m_ip("saddr", ["2001:db8::/32", "fd00::1"], "ip6")
    assert m4.text == "ip saddr 192.168.1.0/24" and m4 == plan.m_ip("saddr", ["192.168.1.0/24"], "ip")
    assert m6.text == "ip6 saddr { 2001:db8::/32, fd00::1 }"
    assert m6.json == {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                                 "right": {"set": [{"prefix": {"addr": "2001:db8::", "len": 32}}, "fd00::1"]}}}
    assert plan.table_of("ip6") == "ip6 qubes" and plan.ref("ip6", "qf-input") == "ip6 qf-input"
    assert plan.split_ref("ip6 qf-input") == ("ip6", "qf-input") and plan.split_ref("qf-nat") == ("ip", "qf-nat")
    with pytest.raises(ValueError):
        plan.table_of("inet")


# --------------------------------------------------------------------------
# what is planned where


@pytest.mark.parametrize("example", EXAMPLES)
def test_without_addresses6_nothing_is_planned_for_ipv6(example):
    mdl = model.parse(examples.example(example))
    for qube in mdl.qubes:
        p = plan.plan_qube(mdl, qube)
        assert p.families == ("ip",) and all(c.family == "ip" for c in p.chains)
        assert "ip6" not in plan.ruleset_text(p) and "ip6" not in plan.persist_block(p)


@pytest.mark.parametrize("example", EXAMPLES)
def test_ipv6_leaves_the_ipv4_objects_byte_for_byte(example):
    """With IPv6 in every qube, the ip objects are those of the IPv4-only plan, and the ip
    part of every rendering comes first, unchanged."""
    mdl4 = model.parse(examples.example(example))
    mdl6 = model.parse(with_ipv6(examples.example(example)))
    for qube in mdl4.qubes:
        p4, p6 = plan.plan_qube(mdl4, qube), plan.plan_qube(mdl6, qube)
        assert p6.families == ("ip", "ip6")
        assert p6.chains_of("ip") == p4.chains and p6.sets_of("ip") == p4.sets
        assert plan.ruleset_text(p6).startswith(plan.ruleset_text(p4))
        assert {c.name for c in p6.chains_of("ip6")} >= {"qf-input", "qf-forward"}
        names4 = {s.name for s in p6.sets_of("ip")}
        assert not names4 & {s.name for s in p6.sets_of("ip6")}  # set names unique in the qube


def test_port_forward_over_ipv6_per_hop():
    """sys-net DNATs [LAN]:443 (ip6, fib local on the uplink) to sys-firewall's ip6, sys-firewall
    (iifgroup 1, addressed to its ip6) to web's, web accepts; sources of each family."""
    pillar = ipv6_full()
    net, fw, web = (plan_of(pillar, q) for q in ("sys-net", "sys-firewall", "web"))
    chains, sets = of(net, "ip6")
    (dnat,) = chains["qf-nat"].rules
    assert dnat.family == "ip6" and chains["qf-nat"].hook == plan.NAT_HOOK
    assert dnat.body == ('iifname "ens6" fib daddr type local ip6 saddr 2001:db8:1::/64 meta l4proto { tcp, udp } '
                         'dnat ip6 to meta l4proto . th dport map @%s' % sets["qf-nat"].name)
    assert sets["qf-nat"].spec == "type inet_proto . inet_service : ipv6_addr . inet_service; counter;"
    assert [e.value for e in sets["qf-nat"].elements] == [(v6("sys-firewall"), 443)]
    (fwd,) = chains["qf-forward"].rules
    assert fwd.body == ('iifname "ens6" ip6 saddr 2001:db8:1::/64 ct state new '
                        'meta l4proto . ip6 daddr . th dport @%s accept' % sets["qf-fwd"].name)
    assert sets["qf-fwd"].key_type == ("inet_proto", "ipv6_addr", "inet_service")
    # the IPv4 side keeps only its IPv4 source
    (dnat4,) = of(net, "ip")[0]["qf-nat"].rules
    assert "ip saddr 192.168.1.0/24 meta" in dnat4.body and "2001" not in dnat4.body
    chains, sets = of(fw, "ip6")
    (dnat,) = chains["qf-nat"].rules
    assert dnat.match.startswith("iifgroup 1 ip6 daddr %s ip6 saddr 2001:db8:1::/64 " % v6("sys-firewall"))
    assert sets["qf-nat"].elements[0].value == (v6("web"), 443)
    chains, sets = of(web, "ip6")
    (inp,) = chains["qf-input"].rules
    assert inp.match.startswith("iifgroup 1 ip6 saddr 2001:db8:1::/64 ct state new ")
    assert sets["qf-in"].elements[0].key == ("tcp", v6("web"), 443)
    assert net.notes == ()


def test_a_forward_is_ipv6_only_where_its_whole_path_has_ipv6():
    """web without IPv6: the https forward stays IPv4 in every hop, with a note where IPv6 is on;
    web gets no ip6 object at all."""
    pillar = ipv6_full()
    del pillar["addresses6"]["web"]
    net, web = plan_of(pillar, "sys-net"), plan_of(pillar, "web")
    assert web.families == ("ip",)
    assert of(net, "ip6")[1] == {} and [c.rules for c in net.chains_of("ip6")] == [(), ()]
    assert net.notes == ("port_forwards:https: not planned for IPv6, web has no IPv6",)
    assert of(net, "ip")[1]["qf-nat"].elements[0].value == ("10.137.0.6", 443)


@pytest.mark.parametrize("sources, families", [
    (["192.168.1.0/24"], ("ip",)),
    (["2001:db8:1::/64"], ("ip6",)),
    (["192.168.1.0/24", "2001:db8:1::/64", "2001:db8:2::7"], ("ip", "ip6")),
    ([], ("ip", "ip6")),
])
def test_sources_never_open_a_family_wider_than_the_pillar(sources, families):
    pillar = with_ipv6(examples.example("port-forward"))
    pillar["port_forwards"][0]["sources"] = sources
    for qube in ("sys-net", "sys-firewall", "web"):
        p = plan_of(pillar, qube)
        planned = tuple(f for f in ("ip", "ip6") if p.sets_of(f))
        assert planned == families, qube
        for family in planned:
            for rule in (r for c in p.chains_of(family) for r in c.rules):
                want = [s for s in sources if (":" in s) == (family == "ip6")]
                if want:
                    assert rule.match.count("%s saddr" % family) == 1, rule.body
                    assert all(s in rule.body for s in want) and all(
                        s not in rule.body for s in sources if s not in want), rule.body
                else:
                    assert "saddr" not in rule.body
        if len(families) == 1 and sources:
            other = "IPv6" if families == ("ip",) else "IPv4"
            assert p.notes == ("port_forwards:https: not planned for %s, its sources name no %s network"
                               % (other, other),), p.notes


def test_sources_accept_ipv6_and_refuse_what_is_not_an_address():
    pillar = examples.example("port-forward")
    pillar["port_forwards"][0]["sources"] = ["2001:DB8:1::/64", "fd00::1/128"]
    assert model.parse(pillar).port_forwards[0].sources == ("2001:db8:1::/64", "fd00::1")
    for bad in ("2001:db8::1/64", "fe80::1%eth0", "2001:db8::/129", "1.2.3.4/33"):
        pillar["port_forwards"][0]["sources"] = [bad]
        with pytest.raises(model.PillarError) as err:
            model.parse(pillar)
        assert "qubes_firewall:port_forwards:0:sources:0" in str(err.value), bad


def test_deeper_hops_dnat_by_ipv6_address_and_port():
    """The VPN sandwich: LAN -> sys-net -> sys-firewall -> sys-vpn -> sys-firewall-2 -> work,
    the port changed at the last hop, over both families."""
    pillar = ipv6_full()
    pillar["port_forwards"].append({"name": "ssh-work", "qube": "work", "proto": "tcp", "port": 22,
                                    "external_port": 2222})
    hops = ["sys-net", "sys-firewall", "sys-vpn", "sys-firewall-2", "work"]
    for i, hop in enumerate(hops[:-1]):
        p = plan_of(pillar, hop)
        nat = [e for s in p.sets_of("ip6") for e in s.elements if e.origin == "port_forwards:ssh-work"
               and s.kind == "map"]
        assert [e.value for e in nat] == [(v6(hops[i + 1]), 22 if i == 3 else 2222)], hop
        rules = [r for r in p.chains_of("ip6")[2].rules]
        assert any(r.match.startswith("iifgroup 1 ip6 daddr %s " % v6(hop)) for r in rules) == (i > 0)
    work = plan_of(pillar, "work")
    assert [e.key for s in work.sets_of("ip6") for e in s.elements] == [("tcp", v6("work"), 22)]


def test_connections_over_ipv6_where_both_ends_paths_have_it():
    pillar = ipv6_full()
    pillar["connections"].append({"from": "work", "to": "web", "proto": "icmp"})
    fw2, build = plan_of(pillar, "sys-firewall-2"), plan_of(pillar, "build")
    (rule,) = of(fw2, "ip6")[0]["qf-forward"].rules
    assert rule.body == ("iifgroup 2 ip6 saddr %s ip6 daddr %s tcp dport 22 ct state new counter accept"
                         % (v6("work"), v6("build")))
    (rule,) = of(build, "ip6")[0]["qf-input"].rules
    assert rule.body == "iifgroup 1 ip6 saddr %s tcp dport 22 ct state new counter accept" % v6("work")
    # work -> web across branches: masqueraded as sys-vpn, ICMP is ICMPv6 in ip6
    (rule,) = [r for r in of(plan_of(pillar, "sys-firewall"), "ip6")[0]["qf-forward"].rules
               if r.origin.startswith("connections:1")]
    assert rule.body == ("iifgroup 2 ip6 saddr %s ip6 daddr %s meta l4proto ipv6-icmp ct state new counter accept"
                         % (v6("sys-vpn"), v6("web")))
    (rule,) = [r for r in of(plan_of(pillar, "sys-firewall"), "ip")[0]["qf-forward"].rules
               if r.origin.startswith("connections:1")]
    assert "meta l4proto icmp " in rule.body
    # sys-vpn without IPv6: work -> build crosses only sys-firewall-2 and keeps IPv6 ...
    del pillar["addresses6"]["sys-vpn"]
    assert len(of(plan_of(pillar, "sys-firewall-2"), "ip6")[0]["qf-forward"].rules) == 1
    # ... work -> web crosses sys-vpn: IPv4 only
    assert not [r for r in of(plan_of(pillar, "sys-firewall"), "ip6")[0]["qf-forward"].rules
                if r.origin.startswith("connections:1")]
    # ... and build without IPv6: IPv4 only, with a note
    pillar = ipv6_full()
    del pillar["addresses6"]["build"]
    fw2 = plan_of(pillar, "sys-firewall-2")
    assert of(fw2, "ip6")[0]["qf-forward"].rules == ()
    assert "connections:0 work->build: not planned for IPv6, build has no IPv6" in fw2.notes
    assert len(of(fw2, "ip")[0]["qf-forward"].rules) == 1


def test_boot_block_creates_the_ipv6_table_and_adds_each_tables_jumps_once():
    p = plan_of(ipv6_full(), "sys-net")
    block = plan.persist_block(p)
    text = plan.ruleset_text(p)
    ip6 = text.index("add table ip6 qubes\nadd chain ip6 qubes custom-input\nadd chain ip6 qubes custom-forward\n")
    assert all(line.startswith(("add", "flush")) for line in text.splitlines())
    assert max(i for i, line in enumerate(text.splitlines(True)) if " ip qubes " in line) < \
        len(text[:ip6].splitlines())
    assert "nft list chain ip qubes qf-input >/dev/null 2>&1 && qf_jumps=0" in block
    assert "nft list chain ip6 qubes qf-input >/dev/null 2>&1 && qf_jumps6=0" in block
    assert block.count('add rule ip6 qubes custom-input jump qf-input comment "qf jump"') == 1
    assert 'if [ "$qf_jumps6" = 1 ]; then' in block


@pytest.mark.parametrize("example", EXAMPLES)
def test_golden_ipv6_plans_of_the_examples(example):
    """Every qube's rules with IPv6 in every qube but web (sources of both families), byte for byte."""
    pillar = with_ipv6(examples.example(example))
    pillar["addresses6"].pop("web", None)
    for fwd in pillar.get("port_forwards") or []:
        if fwd.get("sources"):
            fwd["sources"].append("2001:db8:1::/64")
    mdl = model.parse(pillar)
    got = {}
    for qube in sorted(mdl.qubes):
        p = plan.plan_qube(mdl, qube)
        fresh = {"chains": {}, "sets": {}, "jumps": {}, "custom_chains": ["custom-input", "custom-forward"]}
        got[qube] = dict(plan.plan_dict(p), ruleset=plan.ruleset_text(p), boot=plan.persist_block(p),
                         transaction=nft.transaction(p, fresh)[0])
    path = GOLDEN / ("ipv6-%s.json" % example)
    if os.environ.get("QF_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


# --------------------------------------------------------------------------
# both tables in nft


def as_listed(p, doc=None):
    """The nft -j listing of ``p`` applied to ``doc`` (default: Qubes' custom chains of both
    tables, each with a user rule), built from the plan's own JSON."""
    if doc is None:
        doc = {"nftables": [{"table": {"family": f, "name": "qubes", "handle": 1}} for f in ("ip", "ip6")]}
        for family in ("ip", "ip6"):
            for i, custom in enumerate(("custom-input", "custom-forward")):
                doc["nftables"].append({"chain": {"family": family, "table": "qubes", "name": custom,
                                                  "handle": 2 + i}})
    doc = copy.deepcopy(doc)
    items, handle = doc["nftables"], 100
    for item in p.sets:
        elems = []
        for e in item.elements:
            elem = {"elem": {"val": json.loads(e.key_json), "comment": e.comment,
                             "counter": {"packets": 0, "bytes": 0}}}
            elems.append([elem, json.loads(e.value_json)] if item.kind == "map" else elem)
        handle += 1
        items.append({item.kind: dict(json.loads(item.head), family=item.family, name=item.name, table="qubes",
                                      handle=handle, elem=elems)})
    for chain in p.chains:
        handle += 1
        spec = dict(zip(("type", "hook", "prio", "policy"), chain.hook)) if chain.hook else {}
        items.append({"chain": dict(spec, family=chain.family, table="qubes", name=chain.name, handle=handle)})
        for rule in chain.rules:
            handle += 1
            items.append({"rule": {"family": chain.family, "table": "qubes", "chain": chain.name,
                                   "handle": handle, "comment": rule.comment, "expr": rule.expr}})
    for custom, target in p.jumps:
        family, custom = plan.split_ref(custom)
        handle += 1
        items.append({"rule": {"family": family, "table": "qubes", "chain": custom, "handle": handle,
                               "comment": "qf jump", "expr": [{"jump": {"target": plan.split_ref(target)[1]}}]}})
    return doc


def test_recorded_ipv6_apply_is_up_to_date():
    """Recorded from real nft after applying sys-net's plan (both tables) to a ruleset without
    any ip6 table: nft lists exactly the plan's JSON, so applying twice changes nothing."""
    doc = fixture("sys-net-applied-ipv6.json")
    live = nft.live_state(doc)
    p = plan_of(ipv6_full(), "sys-net")
    assert sorted(live["chains"]) == sorted(c.ref for c in p.chains)
    assert "ip6 qf-nat" in live["chains"] and live["tables"] == ["ip", "ip6"]
    assert sorted(live["jumps"]) == sorted(p.jumps)
    assert nft.transaction(p, live) == ("", {})
    listed = nft.live_state(as_listed(p))
    assert listed["sets"] == live["sets"]
    assert {k: [r["key"] for r in c["rules"]] for k, c in listed["chains"].items()} == \
        {k: [r["key"] for r in c["rules"]] for k, c in live["chains"].items()}


def test_a_ruleset_without_the_ipv6_table_gets_it_created_in_the_same_script():
    """Qubes' IPv4 table is a precondition (refused without it); IPv6's is created: table and
    custom chains added (idempotent add) before the formula's ip6 objects."""
    live = nft.live_state(fixture("fresh-qubes-table.json"))
    p = plan_of(ipv6_full(), "sys-net")
    script, summary = nft.transaction(p, live)
    lines = script.splitlines()
    first6 = min(i for i, line in enumerate(lines) if " ip6 qubes" in line)
    assert lines[first6:first6 + 3] == ["add table ip6 qubes", "add chain ip6 qubes custom-input",
                                        "add chain ip6 qubes custom-forward"]
    assert lines[-2:] == ['add rule ip6 qubes custom-input jump qf-input comment "qf jump"',
                          'add rule ip6 qubes custom-forward jump qf-forward comment "qf jump"']
    assert "ip6 qf-nat" in summary["chains_added"] and "ip6 custom-input -> ip6 qf-input" in summary["jumps_added"]
    # nothing on an object the formula does not own, but its jumps and the idempotent adds
    for line in lines:
        assert " qf-" in line or line in lines[first6:first6 + 3], line
    # without the IPv4 custom chains: refused, naming them
    with pytest.raises(CommandExecutionError, match="custom-input"):
        nft.transaction(p, nft.live_state({"nftables": []}))


def test_an_ip6_change_touches_only_ip6_and_needs_the_prelude_only_then():
    doc = fixture("sys-net-applied-ipv6.json")
    pillar = ipv6_full()
    pillar["port_forwards"][0]["external_port"] = 8443
    pillar["port_forwards"][0]["sources"] = ["192.168.1.0/24", "2001:db8:1::/64"]
    script, _ = nft.transaction(plan_of(pillar, "sys-net"), nft.live_state(doc))
    assert script.startswith("add table ip6 qubes\n")
    assert all(line.startswith(("add element", "delete element")) for line in script.splitlines()[3:])
    pillar["port_forwards"][0]["sources"] = ["192.168.1.0/24"]  # no IPv6 source: ip6 forward removed
    script, summary = nft.transaction(plan_of(pillar, "sys-net"), nft.live_state(doc))
    assert "delete chain ip6 qubes qf-nat" in script and "delete chain ip qubes" not in script
    assert sorted(summary["sets_removed"]) == sorted(
        k for k in nft.live_state(doc)["sets"] if k.startswith("ip6 "))


def test_when_ipv6_goes_away_the_formulas_ip6_objects_go_too():
    doc = fixture("sys-net-applied-ipv6.json")
    pillar = ipv6_full()
    del pillar["addresses6"]
    p = plan_of(pillar, "sys-net")
    script, summary = nft.transaction(p, nft.live_state(doc))
    assert script and all(" ip6 qubes " in line for line in script.splitlines())
    assert not any(line.startswith("add ") for line in script.splitlines())
    assert sorted(summary["jumps_removed"]) == ["ip6 custom-forward -> ip6 qf-forward",
                                                "ip6 custom-input -> ip6 qf-input"]
    assert sorted(summary["chains_removed"]) == ["ip6 qf-forward", "ip6 qf-input", "ip6 qf-nat"]
    # jumps first, then flush, then delete: nft deletes a chain only once nothing jumps to it
    lines = script.splitlines()
    assert max(i for i, x in enumerate(lines) if " custom-" in x) < min(
        i for i, x in enumerate(lines) if x.startswith("delete chain"))
    # the result is exactly the IPv4-only applied ruleset's owned part
    after = nft.live_state(as_listed(p))
    assert nft.transaction(p, after) == ("", {})
    removal, summary = nft.transaction(None, nft.live_state(doc))
    assert "delete chain ip6 qubes qf-input" in removal and "delete chain ip qubes qf-input" in removal
    assert len(summary["jumps_removed"]) == 4


def test_drift_and_status_name_the_table():
    from tests.modules import core

    report = core("report")
    p = plan_of(ipv6_full(), "sys-net")
    doc = fixture("sys-net-applied-ipv6.json")
    assert report.live_drift(p, nft.live_state(doc)) == []
    edited = copy.deepcopy(doc)
    edited["nftables"] = [i for i in edited["nftables"]
                          if not ("rule" in i and i["rule"]["family"] == "ip6" and i["rule"]["chain"] == "qf-forward")]
    drift = report.live_drift(p, nft.live_state(edited))
    assert [(d["kind"], d["chain"]) for d in drift] == [("rule missing", "ip6 qf-forward")]
    status = report.status(p, nft.live_state(doc))
    assert {r["chain"] for r in status["rules"]} == {s.ref for s in p.sets}
    assert any(r["chain"].startswith("ip6 qf-nat-") and r["kind"] == "dnat" for r in status["rules"])
    assert sorted(status["lookups"]) == sorted("%s: %s" % (c.ref, r.origin) for c in p.chains for r in c.rules)


FORWARD = st.fixed_dictionaries({
    "qube": st.sampled_from(["web", "sys-firewall", "sys-net"]),
    "proto": st.sampled_from(["tcp", "udp"]),
    "port": st.integers(1, 65535),
    "sources": st.lists(st.sampled_from(["192.168.1.0/24", "10.0.0.0/8", "2001:db8:1::/64", "fd00::7"]),
                        max_size=3, unique=True),
    "interfaces": st.sampled_from([[], ["ens6"]]),
})


def forwards_pillar(forwards, ipv6):
    pillar = examples.example("port-forward")
    pillar["port_forwards"] = []
    seen = set()
    for i, f in enumerate(forwards):  # one forward per protocol and external port
        if (f["proto"], f["port"]) not in seen:
            seen.add((f["proto"], f["port"]))
            pillar["port_forwards"].append(dict(f, name="f%d" % i, external_port=f["port"]))
    return with_ipv6(pillar, ipv6)


IPV6_QUBES = st.sets(st.sampled_from(["sys-net", "sys-firewall", "web"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(FORWARD, max_size=6), IPV6_QUBES, st.lists(FORWARD, max_size=6), IPV6_QUBES)
def test_any_change_of_forwards_or_ipv6_converges_on_both_tables(before, v6_before, after, v6_after):
    """From any live plan A to any plan B (forwards, sources of both families, which qubes
    have IPv6): B listed against B is a no-op, the script names only owned objects (and the
    idempotent adds of the ip6 table), and removal names none of Qubes' chains but jumps."""
    mdl_a = model.parse(forwards_pillar(before, v6_before))
    mdl_b = model.parse(forwards_pillar(after, v6_after))
    for qube in ("sys-net", "sys-firewall", "web"):
        a, b = plan.plan_qube(mdl_a, qube), plan.plan_qube(mdl_b, qube)
        assert ("ip6" in b.families) == (qube in v6_after)
        assert nft.transaction(b, nft.live_state(as_listed(b))) == ("", {})
        script, _ = nft.transaction(b, nft.live_state(as_listed(a)))
        for line in script.splitlines():
            assert " qf-" in line or line in plan.table_prelude("ip6") or (
                line.startswith("delete rule ") and " custom-" in line and " handle " in line), line
        if "ip6" not in b.families:
            assert "add " not in "".join(x for x in script.splitlines() if " ip6 " in x)
        removal, _ = nft.transaction(None, nft.live_state(as_listed(a)))
        assert "custom-input jump" not in removal and "add " not in removal
