"""Comparing the live ruleset (nft -j, recorded from real nft 1.0.6) with a plan, by content."""

import copy
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from salt.exceptions import CommandExecutionError

from tests.modules import model, nft, plan
from tests.unit.test_plan import load_example

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


def sys_net_plan(pillar=None):
    return plan.plan_qube(model.parse(pillar or load_example("full")), "sys-net")


def rules_of(doc, chain):
    return [i["rule"] for i in doc["nftables"] if "rule" in i and i["rule"]["chain"] == chain]


def set_of(doc, prefix):
    (found,) = [i.get("set") or i.get("map") for i in doc["nftables"]
                if (i.get("set") or i.get("map") or {}).get("name", "").startswith(prefix)]
    return found


def as_listed(p, base="fresh-qubes-table.json"):
    """The nft -j listing of ``p`` applied to the fresh table, built from the plan's own JSON."""
    doc = fixture(base)
    items = doc["nftables"]
    handle = 100
    for item in p.sets:
        head = json.loads(item.head)
        elems = []
        for e in item.elements:
            elem = {"elem": {"val": json.loads(e.key_json),
                             "comment": e.comment, "counter": {"packets": 0, "bytes": 0}}}
            elems.append([elem, json.loads(e.value_json)] if item.kind == "map" else elem)
        handle += 1
        items.append({item.kind: dict(head, family="ip", name=item.name, table="qubes", handle=handle, elem=elems)})
    for chain in p.chains:
        handle += 1
        spec = {}
        if chain.hook:
            spec = dict(zip(("type", "hook", "prio", "policy"), chain.hook))
        items.append({"chain": dict(spec, family="ip", table="qubes", name=chain.name, handle=handle)})
        for rule in chain.rules:
            handle += 1
            items.append({"rule": {"family": "ip", "table": "qubes", "chain": chain.name, "handle": handle,
                                   "comment": rule.comment, "expr": rule.expr}})
    for custom, target in p.jumps:
        handle += 1
        items.append({"rule": {"family": "ip", "table": "qubes", "chain": custom, "handle": handle,
                               "comment": "qf jump", "expr": [{"jump": {"target": target}}]}})
    return doc


def test_fresh_table_gets_sets_chains_rules_and_jumps_in_one_script():
    live = nft.live_state(fixture("fresh-qubes-table.json"))
    assert live["chains"] == {} and live["jumps"] == {} and live["sets"] == {}
    script, summary = nft.transaction(sys_net_plan(), live)
    lines = script.splitlines()
    assert lines[-2:] == ['add rule ip qubes custom-input jump qf-input comment "qf jump"',
                          'add rule ip qubes custom-forward jump qf-forward comment "qf jump"']
    assert lines[0].startswith("add map ip qubes qf-nat-") and "elements = {" in lines[0]
    assert summary["chains_added"] == ["qf-input", "qf-forward", "qf-nat"]
    assert summary["counts"]["elements_added"] == 2
    # never a command on an object the formula does not own, except its jump rules
    for line in lines:
        assert " qf-" in line and ("custom-" not in line or "jump qf-" in line)


def test_applied_ruleset_is_up_to_date():
    """Recorded after a real apply of the same plan: the plan's JSON is exactly what nft lists."""
    live = nft.live_state(fixture("sys-net-applied.json"))
    assert sorted(live["chains"]) == ["qf-forward", "qf-input", "qf-nat"]
    assert live["chains"]["qf-nat"]["hook"] == ("nat", "prerouting", 1, "accept")
    assert nft.transaction(sys_net_plan(), live) == ("", {})
    # and the listing built from the plan's JSON is the recorded one
    assert nft.live_state(as_listed(sys_net_plan()))["sets"] == live["sets"]
    assert ([r["key"] for r in nft.live_state(as_listed(sys_net_plan()))["chains"]["qf-nat"]["rules"]]
            == [r["key"] for r in live["chains"]["qf-nat"]["rules"]])


def test_changed_forward_changes_its_elements_not_the_chains():
    pillar = load_example("full")
    pillar["port_forwards"][0]["external_port"] = 8443
    live = nft.live_state(fixture("sys-net-applied.json"))
    script, summary = nft.transaction(sys_net_plan(pillar), live)
    assert "chain" not in script and "jump" not in script
    nat, fwd = set_of(fixture("sys-net-applied.json"), "qf-nat-")["name"], set_of(
        fixture("sys-net-applied.json"), "qf-fwd-")["name"]
    assert sorted(script.splitlines()) == sorted([
        "delete element ip qubes %s { tcp . 443 }" % nat,
        'add element ip qubes %s { tcp . 8443 comment "qf port_forwards:https" : 10.137.0.6 . 8443 }' % nat,
        "delete element ip qubes %s { tcp . 10.137.0.6 . 443 }" % fwd,
        'add element ip qubes %s { tcp . 10.137.0.6 . 8443 comment "qf port_forwards:https" }' % fwd,
    ])
    assert summary["counts"] == {"elements_added": 2, "elements_removed": 2}
    assert summary["elements_added"] == ["%s: port_forwards:https" % nat, "%s: port_forwards:https" % fwd]


def test_changed_sources_make_a_new_group():
    pillar = load_example("full")
    pillar["port_forwards"][0]["sources"] = ["192.168.2.0/24"]
    live = nft.live_state(fixture("sys-net-applied.json"))
    script, summary = nft.transaction(sys_net_plan(pillar), live)
    assert "flush chain ip qubes qf-forward" in script and "flush chain ip qubes qf-nat" in script
    assert "qf-input" not in script and "add chain" not in script
    assert sorted(summary["sets_removed"]) == sorted(live["sets"])
    assert len(summary["sets_added"]) == 2
    # the rules go before the sets they look up are deleted
    lines = script.splitlines()
    assert max(i for i, x in enumerate(lines) if x.startswith("flush chain")) < min(
        i for i, x in enumerate(lines) if x.startswith(("delete set", "delete map")))


def test_removed_forward_deletes_its_chain_and_sets():
    pillar = load_example("full")
    pillar["port_forwards"] = []
    live = nft.live_state(fixture("sys-net-applied.json"))
    script, summary = nft.transaction(sys_net_plan(pillar), live)
    assert script.splitlines()[:3] == ["flush chain ip qubes qf-forward", "flush chain ip qubes qf-nat",
                                       "delete chain ip qubes qf-nat"]
    assert summary["chains_removed"] == ["qf-nat"]
    assert sorted(summary["sets_removed"]) == sorted(live["sets"])


def test_hand_added_rule_in_an_owned_chain_is_drift_and_gets_replaced():
    doc = fixture("sys-net-applied.json")
    extra = copy.deepcopy(rules_of(doc, "qf-forward")[0])
    extra["handle"] = 999
    del extra["comment"]
    doc["nftables"].append({"rule": extra})
    script, summary = nft.transaction(sys_net_plan(), nft.live_state(doc))
    assert script.startswith("flush chain ip qubes qf-forward\n")
    assert summary["rules_removed"] == ["qf-forward: a rule without comment (handle 999)"]


def test_rule_edited_with_its_comment_kept_is_drift():
    """tcp dport 1-65535 accept, with the formula's comment kept: compared by content, not by comment."""
    doc = fixture("sys-net-applied.json")
    (rule,) = rules_of(doc, "qf-forward")
    rule["expr"] = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                               "right": {"range": [1, 65535]}}}, {"counter": {"packets": 5, "bytes": 9}},
                    {"accept": None}]
    script, summary = nft.transaction(sys_net_plan(), nft.live_state(doc))
    assert script.startswith("flush chain ip qubes qf-forward\n")
    assert summary["counts"] == {"chains_replaced": 1, "rules_added": 1, "rules_removed": 1}


def test_counter_values_and_handles_are_not_drift():
    doc = fixture("sys-net-applied.json")
    for item in doc["nftables"]:
        for rule in [item.get("rule")] if item.get("rule") else []:
            rule["handle"] += 1000
            for expr in rule["expr"]:
                if "counter" in expr:
                    expr["counter"] = {"packets": 12, "bytes": 3456}
    set_of(doc, "qf-nat-")["elem"][0][0]["elem"]["counter"] = {"packets": 3, "bytes": 180}
    assert nft.transaction(sys_net_plan(), nft.live_state(doc)) == ("", {})


def test_deleted_edited_and_added_elements_are_restored():
    doc = fixture("sys-net-applied.json")
    set_of(doc, "qf-fwd-")["elem"] = []
    nat = set_of(doc, "qf-nat-")
    nat["elem"][0][1] = {"concat": ["10.137.0.99", 443]}
    nat["elem"].append([{"elem": {"val": {"concat": ["tcp", 22]}, "counter": {"packets": 0, "bytes": 0}}},
                        {"concat": ["10.137.0.99", 22]}])
    script, summary = nft.transaction(sys_net_plan(), nft.live_state(doc))
    lines = script.splitlines()
    nat_name, fwd_name = nat["name"], set_of(doc, "qf-fwd-")["name"]
    assert lines == [
        "delete element ip qubes %s { tcp . 443, tcp . 22 }" % nat_name,
        'add element ip qubes %s { tcp . 443 comment "qf port_forwards:https" : 10.137.0.6 . 443 }' % nat_name,
        'add element ip qubes %s { tcp . 10.137.0.6 . 443 comment "qf port_forwards:https" }' % fwd_name,
    ]
    assert summary["counts"] == {"elements_added": 2, "elements_removed": 2}


def test_duplicate_jumps_are_removed_by_handle_and_missing_ones_added():
    doc = fixture("sys-net-applied.json")
    jump = copy.deepcopy([i for i in doc["nftables"] if "rule" in i and i["rule"]["chain"] == "custom-input"
                          and i["rule"].get("comment") == "qf jump"][0])
    jump["rule"]["handle"] = 77
    doc["nftables"].append(jump)
    doc["nftables"] = [i for i in doc["nftables"] if not ("rule" in i and i["rule"]["chain"] == "custom-forward")]
    script, _ = nft.transaction(sys_net_plan(), nft.live_state(doc))
    assert script.splitlines() == [
        "delete rule ip qubes custom-input handle 77",
        'add rule ip qubes custom-forward jump qf-forward comment "qf jump"',
    ]


def test_user_rules_in_custom_chains_are_not_touched():
    live = nft.live_state(fixture("fresh-qubes-table.json"))
    script, _ = nft.transaction(sys_net_plan(), live)
    assert "8080" not in script and "delete rule" not in script and "flush chain ip qubes custom" not in script
    script, _ = nft.transaction(None, nft.live_state(fixture("sys-net-applied.json")))
    assert "8080" not in script and "flush chain ip qubes custom" not in script


def test_a_table_without_qubes_custom_chains_is_refused():
    doc = {"nftables": [{"table": {"family": "ip", "name": "qubes", "handle": 1}}]}
    with pytest.raises(CommandExecutionError, match="no custom-input or custom-forward"):
        nft.transaction(sys_net_plan(), nft.live_state(doc))


def test_no_plan_removes_everything_owned():
    live = nft.live_state(fixture("sys-net-applied.json"))
    script, summary = nft.transaction(None, live)
    lines = script.splitlines()
    assert lines[:2] == ["delete rule ip qubes custom-forward handle %d" % live["jumps"][("custom-forward", "qf-forward")][0],
                         "delete rule ip qubes custom-input handle %d" % live["jumps"][("custom-input", "qf-input")][0]]
    assert summary["chains_removed"] == ["qf-forward", "qf-input", "qf-nat"]
    assert sorted(summary["sets_removed"]) == sorted(live["sets"])
    assert nft.transaction(None, nft.live_state(fixture("fresh-qubes-table.json"))) == ("", {})
    assert not nft.owned(nft.live_state(fixture("fresh-qubes-table.json")))


FORWARD = st.fixed_dictionaries({
    "proto": st.sampled_from(["tcp", "udp"]),
    "port": st.integers(1, 65535),
    "qube": st.sampled_from(["web", "sys-firewall", "sys-net"]),
    "sources": st.sampled_from([[], ["192.168.1.0/24"], ["10.0.0.0/8", "192.168.7.7"]]),
    "interfaces": st.sampled_from([[], ["ens6"]]),
})


def forwards_pillar(forwards):
    pillar = load_example("port-forward")
    pillar["port_forwards"] = [dict(f, name="f%d" % i, external_port=f["port"]) for i, f in enumerate(forwards)]
    seen, out = set(), []
    for f in pillar["port_forwards"]:  # one forward per protocol and external port
        if (f["proto"], f["port"]) not in seen:
            seen.add((f["proto"], f["port"]))
            out.append(f)
    pillar["port_forwards"] = out
    return pillar


@settings(max_examples=60, deadline=None)
@given(st.lists(FORWARD, max_size=8), st.lists(FORWARD, max_size=8))
def test_any_change_is_planned_by_content_and_converges(before, after):
    """From any live plan A to any plan B: the script changes elements for forwards that
    stay in their groups, and B listed against B is a no-op."""
    mdl_a, mdl_b = model.parse(forwards_pillar(before)), model.parse(forwards_pillar(after))
    for qube in ("sys-net", "sys-firewall", "web"):
        a, b = plan.plan_qube(mdl_a, qube), plan.plan_qube(mdl_b, qube)
        assert nft.transaction(b, nft.live_state(as_listed(b))) == ("", {})
        script, summary = nft.transaction(b, nft.live_state(as_listed(a)))
        if a == b:
            assert script == ""
        if a.chains == b.chains and [s.name for s in a.sets] == [s.name for s in b.sets]:
            assert all(line.startswith(("add element", "delete element")) for line in script.splitlines())
        removal, _ = nft.transaction(None, nft.live_state(as_listed(a)))
        assert "custom-input jump" not in removal


def test_an_element_no_delete_command_can_name_makes_the_set_recreated():
    """A hand-added element of a form the formula never writes: the set is recreated, its rule refilled."""
    doc = fixture("sys-net-applied.json")
    fwd = set_of(doc, "qf-fwd-")
    fwd["elem"].append({"elem": {"val": {"concat": ["tcp", {"prefix": {"addr": "10.0.0.0", "len": 8}}, 22]}}})
    script, summary = nft.transaction(sys_net_plan(), nft.live_state(doc))
    lines = script.splitlines()
    assert lines[0] == "flush chain ip qubes qf-forward"
    assert lines[1] == "delete set ip qubes %s" % fwd["name"]
    assert lines[2].startswith("add set ip qubes %s { type inet_proto . ipv4_addr . inet_service; counter; "
                               "elements = { tcp . 10.137.0.6 . 443" % fwd["name"])
    assert lines[3].startswith("add rule ip qubes qf-forward ")
    assert summary["sets_replaced"] == [fwd["name"]]


def test_nft_1_1_spelling_of_a_concatenated_map_type_is_the_same_declaration():
    """nft 1.1 (Debian 13) lists a map's concatenated data type as a list, 1.0.6 as "a . b"."""
    doc = fixture("sys-net-applied.json")
    maps = [item["map"] for item in doc["nftables"] if "map" in item and " . " in str(item["map"].get("map"))]
    assert maps, "the recording holds a DNAT map of concatenated data"
    for item in maps:
        item["map"] = item["map"].split(" . ")
    assert nft.transaction(sys_net_plan(), nft.live_state(doc)) == ("", {})
    for item in maps:
        item["map"] = "ipv4_addr"  # another declaration is still drift
    assert nft.transaction(sys_net_plan(), nft.live_state(doc))[0]
