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


def set_counter(doc, comment_part, packets, nbytes):
    for item in doc["nftables"]:
        rule = item.get("rule")
        if rule and comment_part in rule.get("comment", ""):
            for expr in rule["expr"]:
                if "counter" in expr:
                    expr["counter"] = {"packets": packets, "bytes": nbytes}


def block_of(text):
    return files.get_block(text, "rules")


def persisted_ok(p):
    block = plan.persist_block(p)
    text = files.replace_block("#!/bin/sh\n# my line\n", "rules", block)
    return {"/rw/config/qubes-firewall-user-script": (text, text), "/rw/config/rc.local": (None, None)}


def test_status_lists_every_owned_rule_with_origin_and_counters():
    doc = applied()
    set_counter(doc, "dnat sys-firewall", 3, 180)
    set_counter(doc, "forward sys-firewall", 7, 448)
    out = report.status(sys_net_plan(), nft.live_state(doc))
    assert out["qube"] == "sys-net" and out["missing"] == []
    by_chain = {(r["chain"], r["origin"]): r for r in out["rules"]}
    assert by_chain[("qf-dnat-https", "port_forwards:https dnat sys-firewall")]["packets"] == 3
    assert by_chain[("qf-forward", "port_forwards:https forward sys-firewall")]["bytes"] == 448
    assert "dnat to 10.137.0.6" in by_chain[("qf-dnat-https", "port_forwards:https dnat sys-firewall")]["rule"]
    assert out["by_origin"] == {"port_forwards:https": {"packets": 10, "bytes": 628, "rules": 2}}
    assert out["total"] == {"rules": 2, "packets": 10, "bytes": 628}
    table = report.status_table(out)
    assert table.splitlines()[0].split() == ["chain", "packets", "bytes", "origin"]
    assert "port_forwards:https dnat sys-firewall" in table


def test_status_filters_by_origin_and_reports_missing_rules():
    doc = applied()
    doc["nftables"] = [i for i in doc["nftables"]
                       if not ("rule" in i and i["rule"]["chain"] == "qf-forward")]
    out = report.status(sys_net_plan(), nft.live_state(doc), origin="port_forwards:https")
    assert [r["chain"] for r in out["rules"]] == ["qf-dnat-https"]
    assert len(out["missing"]) == 1 and out["missing"][0].startswith("qf-forward: qf port_forwards:https forward")
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
                               or ("chain" in i and i["chain"]["name"] == "qf-dnat-https"))]
    p = sys_net_plan()
    kinds = [(d["kind"], d["chain"]) for d in report.drift(p, nft.live_state(doc), persisted_ok(p), block_of)["live"]]
    assert ("chain missing", "qf-dnat-https") in kinds
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
    p = sys_net_plan()
    live = report.drift(p, nft.live_state(doc), persisted_ok(p), block_of)["live"]
    kinds = [d["kind"] for d in live]
    assert "jump duplicated" in kinds and "chain unexpected" in kinds


def test_lost_or_edited_block_is_drift():
    p = sys_net_plan()
    live = nft.live_state(applied())
    path = "/rw/config/qubes-firewall-user-script"
    good = persisted_ok(p)[path][1]
    lost = {path: ("#!/bin/sh\n# my line\n", good)}
    assert report.drift(p, live, lost, block_of)["persisted"] == [
        {"kind": "block missing", "path": path,
         "detail": "the managed block is gone, the rules do not come back at boot"}]
    edited = {path: (good.replace("dnat to", "dnat  to"), good)}
    assert report.drift(p, live, edited, block_of)["persisted"][0]["kind"] == "block differs"
    absent = {path: (None, good)}
    assert report.drift(p, live, absent, block_of)["persisted"][0]["kind"] == "file missing"
    stale = {"/rw/config/rc.local": (good, "#!/bin/sh\n# my line\n")}
    assert report.drift(p, live, stale, block_of)["persisted"][0]["kind"] == "block stale"


def test_origin_of_a_comment():
    assert report.origin_of("qf connections:0 work->build forward #0123456789") == "connections:0 work->build forward"
    assert report.origin_of("qf jump") is None and report.origin_of("") is None
