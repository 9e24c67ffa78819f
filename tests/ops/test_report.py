"""status and drift: recorded nft -j of sys-net after a real apply (tests/unit/fixtures), edited as a
user or a restart would."""

import copy
import json

from tests.ops.helpers import FIXTURES, example_model, files, nft, plan, report


def applied():
    return json.loads((FIXTURES / "sys-net-applied.json").read_text())


def sys_net_plan():
    return plan.plan_qube(example_model(), "sys-net")


def rules_of(doc, chain):
    return [i["rule"] for i in doc["nftables"] if "rule" in i and i["rule"]["chain"] == chain]


def owned_set(doc, prefix):
    (found,) = [i.get("set") or i.get("map") for i in doc["nftables"]
                if (i.get("set") or i.get("map") or {}).get("name", "").startswith(prefix)]
    return found


def set_element_counter(doc, prefix, packets, nbytes):
    item = owned_set(doc, prefix)
    (elem,) = item["elem"]
    elem = elem[0] if isinstance(elem, list) else elem
    elem["elem"]["counter"] = {"packets": packets, "bytes": nbytes}


def block_of(text):
    return files.get_block(text, "rules")


def persisted_ok(p):
    block = plan.persist_block(p)
    text = files.replace_block("#!/bin/sh\n# my line\n", "rules", block)
    return {"/rw/config/qubes-firewall-user-script": (text, text), "/rw/config/rc.local": (None, None)}


def test_status_lists_every_owned_rule_and_element_with_origin_and_counters():
    doc = applied()
    set_element_counter(doc, "qf-nat-", 3, 180)
    set_element_counter(doc, "qf-fwd-", 7, 448)
    out = report.status(sys_net_plan(), nft.live_state(doc))
    assert out["qube"] == "sys-net" and out["missing"] == []
    nat, fwd = owned_set(doc, "qf-nat-")["name"], owned_set(doc, "qf-fwd-")["name"]
    by_chain = {(r["chain"], r["kind"]): r for r in out["rules"]}
    assert by_chain[(nat, "dnat")]["packets"] == 3 and by_chain[(nat, "dnat")]["origin"] == "port_forwards:https"
    assert by_chain[(nat, "dnat")]["rule"] == "tcp . 443 : 10.137.0.6 . 443"
    assert by_chain[(fwd, "forward")]["bytes"] == 448
    # the rules that look a group up have no counter: not in the per-rule view, listed apart
    assert ("qf-nat", "rule") not in by_chain and ("qf-forward", "rule") not in by_chain
    assert out["lookups"] == ["qf-forward: port_forwards forward @" + fwd, "qf-nat: port_forwards dnat @" + nat]
    # per forward: its elements in this hop; the group rules are not a pillar entry of their own
    assert out["by_origin"] == {"port_forwards:https": {"packets": 10, "bytes": 628, "rules": 2}}
    assert out["total"] == {"rules": 2, "packets": 10, "bytes": 628}
    table = report.status_table(out)
    assert table.splitlines()[0].split() == ["chain", "packets", "bytes", "origin"]
    assert "port_forwards:https dnat" in table


def test_status_filters_by_origin_and_reports_missing_elements():
    doc = applied()
    owned_set(doc, "qf-fwd-")["elem"] = []
    out = report.status(sys_net_plan(), nft.live_state(doc), origin="port_forwards:https")
    assert [r["kind"] for r in out["rules"]] == ["dnat"]
    assert len(out["missing"]) == 1 and out["missing"][0].startswith(
        "%s: qf port_forwards:https tcp . 10.137.0.6 . 443" % owned_set(doc, "qf-fwd-")["name"])
    assert report.status(sys_net_plan(), nft.live_state(doc), origin="connections")["rules"] == []


def test_no_drift_right_after_apply():
    p = sys_net_plan()
    out = report.drift(p, nft.live_state(applied()), persisted_ok(p), block_of)
    assert out == {"qube": "sys-net", "drifted": False, "live": [], "persisted": []}


def test_hand_edit_in_an_owned_chain_is_drift():
    doc = applied()
    extra = copy.deepcopy(rules_of(doc, "qf-forward")[0])
    extra.update(handle=99, comment="my test rule")
    doc["nftables"].append({"rule": extra})
    p = sys_net_plan()
    out = report.drift(p, nft.live_state(doc), persisted_ok(p), block_of)
    assert out["drifted"] and out["persisted"] == []
    assert out["live"] == [{"kind": "rule unexpected", "chain": "qf-forward", "detail": "handle 99: my test rule"}]


def test_rules_missing_after_a_restart_are_drift():
    """A qubes-firewall restart or `nft flush chain` by hand: chains and jumps gone."""
    doc = applied()
    doc["nftables"] = [i for i in doc["nftables"]
                       if not (("rule" in i and (i["rule"]["chain"].startswith("qf-") or "jump" in str(i)))
                               or ("chain" in i and i["chain"]["name"] == "qf-nat") or "map" in i)]
    p = sys_net_plan()
    kinds = [(d["kind"], d["chain"]) for d in report.drift(p, nft.live_state(doc), persisted_ok(p), block_of)["live"]]
    assert ("chain missing", "qf-nat") in kinds
    assert ("set missing", p.sets[0].name) in kinds
    assert ("rule missing", "qf-forward") in kinds
    assert ("jump missing", "custom-input") in kinds and ("jump missing", "custom-forward") in kinds


def test_duplicated_jump_and_stale_chain_are_drift():
    doc = applied()
    jump = [i for i in doc["nftables"] if "rule" in i and i["rule"]["chain"] == "custom-forward"
            and "jump" in str(i["rule"]["expr"])][0]
    dup = copy.deepcopy(jump)
    dup["rule"]["handle"] = 77
    doc["nftables"].append(dup)
    doc["nftables"].append({"chain": {"family": "ip", "table": "qubes", "name": "qf-dnat-old", "handle": 78}})
    doc["nftables"].append({"set": {"family": "ip", "table": "qubes", "name": "qf-fwd-old", "handle": 79,
                                    "type": "ipv4_addr"}})
    p = sys_net_plan()
    live = report.drift(p, nft.live_state(doc), persisted_ok(p), block_of)["live"]
    kinds = [d["kind"] for d in live]
    assert "jump duplicated" in kinds and "chain unexpected" in kinds and "set unexpected" in kinds


def test_rule_edited_in_place_with_its_comment_kept_is_drift():
    """Issue: `tcp dport 1-65535 accept` with the formula's comment kept is named, with its origin."""
    doc = applied()
    (rule,) = rules_of(doc, "qf-forward")
    rule["expr"] = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                               "right": {"range": [1, 65535]}}}, {"counter": {"packets": 0, "bytes": 0}},
                    {"accept": None}]
    p = sys_net_plan()
    (item,) = report.drift(p, nft.live_state(doc), persisted_ok(p), block_of)["live"]
    assert item["kind"] == "rule edited" and item["chain"] == "qf-forward"
    assert "origin port_forwards forward @qf-fwd-" in item["detail"]
    assert "the pillar's" in item["detail"] and "is not in the live rule" in item["detail"]


def test_elements_deleted_edited_or_added_are_drift():
    doc = applied()
    owned_set(doc, "qf-fwd-")["elem"] = []
    nat = owned_set(doc, "qf-nat-")
    nat["elem"][0][1] = {"concat": ["10.137.0.99", 443]}
    nat["elem"].append([{"elem": {"val": {"concat": ["tcp", 22]}}}, {"concat": ["10.137.0.99", 22]}])
    p = sys_net_plan()
    live = report.drift(p, nft.live_state(doc), persisted_ok(p), block_of)["live"]
    assert [(d["kind"], d["chain"][:7]) for d in live] == [
        ("element unexpected", "qf-nat-"), ("element edited", "qf-nat-"), ("element missing", "qf-fwd-")]
    assert live[0]["detail"] == "tcp . 22 : 10.137.0.99 . 22 (no comment: a hand edit?)"
    assert "origin port_forwards:https" in live[1]["detail"] and "10.137.0.99" in live[1]["detail"]
    assert "tcp . 10.137.0.6 . 443" in live[2]["detail"] and "origin port_forwards:https" in live[2]["detail"]


def test_lost_or_edited_block_is_drift():
    p = sys_net_plan()
    live = nft.live_state(applied())
    path = "/rw/config/qubes-firewall-user-script"
    good = persisted_ok(p)[path][1]
    lost = {path: ("#!/bin/sh\n# my line\n", good)}
    assert report.drift(p, live, lost, block_of)["persisted"] == [
        {"kind": "block missing", "path": path,
         "detail": "the managed block is gone, the rules do not come back at boot"}]
    edited = {path: (good.replace("dnat ip to", "dnat  ip to"), good)}
    assert report.drift(p, live, edited, block_of)["persisted"][0]["kind"] == "block differs"
    absent = {path: (None, good)}
    assert report.drift(p, live, absent, block_of)["persisted"][0]["kind"] == "file missing"
    stale = {"/rw/config/rc.local": (good, "#!/bin/sh\n# my line\n")}
    assert report.drift(p, live, stale, block_of)["persisted"][0]["kind"] == "block stale"


def test_origin_of_a_comment():
    assert report.origin_of("qf connections:0 work->build forward #0123456789") == "connections:0 work->build forward"
    assert report.origin_of("qf port_forwards:https") == "port_forwards:https"
    assert report.origin_of("qf jump") is None and report.origin_of("") is None
