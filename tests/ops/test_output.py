"""Human output: the text renderers of status, drift, check and the states (golden files in
tests/ops/golden/output; ``QF_UPDATE_GOLDEN=1`` rewrites them), and the text/data choice."""

import copy
import json
import os
import types

import pytest
from salt.exceptions import CommandExecutionError

from tests.modules import load
from tests.ops.helpers import FIXTURES, GOLDEN, example, example_model, files, flow, model, nft, plan, report

OUT = GOLDEN / "output"


def golden(name, text):
    path = OUT / name
    if os.environ.get("QF_UPDATE_GOLDEN") == "1":
        path.write_text(text + "\n")
    assert text + "\n" == path.read_text()


def applied():
    return json.loads((FIXTURES / "sys-net-applied.json").read_text())


def fresh():
    return json.loads((FIXTURES / "fresh-qubes-table.json").read_text())


def sys_net_plan():
    return plan.plan_qube(example_model(), "sys-net")


def with_counters(doc):
    for item in doc["nftables"]:
        body = item.get("set") or item.get("map")
        if body and body.get("name", "").startswith(("qf-nat-", "qf-fwd-")):
            elem = body["elem"][0]
            elem = elem[0] if isinstance(elem, list) else elem
            elem["elem"]["counter"] = {"packets": 3, "bytes": 180}
    return doc


def test_status_text():
    text = report.status_text(report.status(sys_net_plan(), nft.live_state(with_counters(applied()))))
    golden("status-sys-net.txt", text)
    assert text.splitlines()[0] == ("sys-net: 2 rules and elements owned by the formula with counters, 6 packets, "
                                    "360 bytes (and 2 forward group lookups without)")
    # the rules that look up a group count nothing themselves: listed apart, no counter column
    assert text.split("no counter: each element above counts its forward):\n")[1].splitlines() == [
        "  qf-forward: port_forwards forward @qf-fwd-17972a6e", "  qf-nat: port_forwards dnat @qf-nat-17972a6e"]


def test_status_text_missing_and_not_named():
    doc = applied()
    doc["nftables"] = [i for i in doc["nftables"] if not (i.get("rule") or {}).get("chain") == "qf-forward"]
    text = report.status_text(report.status(sys_net_plan(), nft.live_state(doc)))
    assert "planned but not loaded" in text.splitlines()[0]
    assert "qf-forward:" in text.split("planned but not loaded (")[1]
    assert report.status_text({"qube": "x", "comment": "x is not named"}) == "x: x is not named."


def drift_of(doc, p=None):
    p = p or sys_net_plan()
    out = report.drift(p, nft.live_state(doc), {}, lambda text: files.get_block(text, "rules"))
    if out["live"]:
        out["fix"] = nft.transaction(p, nft.live_state(doc))[0]
    out.update({"connect_tcp": [], "template": []})
    return out


def test_drift_text_verdict_first():
    assert report.drift_text(drift_of(applied())) == (
        "sys-net: no drift: the live ruleset and the boot replay match the pillar.")
    doc = applied()
    rule = copy.deepcopy(next(i for i in doc["nftables"] if (i.get("rule") or {}).get("chain") == "qf-forward"))
    rule["rule"]["handle"] = 999
    rule["rule"].pop("comment", None)
    doc["nftables"].append(rule)
    text = report.drift_text(drift_of(doc))
    golden("drift-sys-net.txt", text)
    assert text.splitlines()[0] == "sys-net: drifted: 1 in the live ruleset."


def test_check_text_narrative_first():
    full = example_model("full")
    allowed = flow.check_text(flow.check(full, "work", "build", 22))
    golden("check-work-build-22.txt", allowed)
    assert allowed.splitlines()[0] == "ALLOWED: work -> build tcp/22: work reaches build tcp/22"
    assert allowed.index("path, hop by hop:") < allowed.index("the formula's rules on the way:")
    blocked = flow.check_text(flow.check(full, "build", "work", 22))
    golden("check-build-work-22.txt", blocked)
    assert blocked.startswith("BLOCKED: build -> work tcp/22: sys-firewall-2 drops forwarding")
    lan = flow.check_text(flow.check(full, "outside", "web", 443))
    assert "only if:" in lan


def test_nft_change_by_pillar_entry():
    p = sys_net_plan()
    script, summary = nft.transaction(p, nft.live_state(fresh()))
    change = report.nft_change(summary, p.rule_count)
    assert change == {"added": 4, "removed": 0, "kept": 0,
                      "entries added": ["port_forwards", "port_forwards:https"],
                      "objects": "3 chains added, 2 sets added, 2 jumps added"}, change
    # an external port changed: the forward's elements are replaced, everything else kept
    pillar = example("full")
    pillar["port_forwards"][0]["external_port"] = 8443
    changed = plan.plan_qube(model.parse(pillar), "sys-net")
    script, summary = nft.transaction(changed, nft.live_state(applied()))
    change = report.nft_change(summary, changed.rule_count)
    assert (change["added"], change["removed"], change["kept"]) == (2, 2, 2), change
    assert change["entries changed"] == ["port_forwards:https"] and "objects" not in change, change
    # removing everything
    script, summary = nft.transaction(None, nft.live_state(applied()))
    change = report.nft_change(summary, 0)
    assert change["removed"] == 2 and change["kept"] == 0 and "chains removed" in change["objects"], change


def test_qube_summary_line():
    line = report.qube_summary_line
    nft_change = {"added": 3, "removed": 1, "kept": 12}
    assert line("web", {"nft": nft_change, "changed": ["boot replay"]}) == (
        "web: 3 added, 1 removed, 12 kept (nft); boot replay updated")
    assert line("web", {"nft": nft_change, "changed": ["boot replay"]}, test=True) == (
        "web: would add 3, remove 1, keep 12 (nft); boot replay would be updated")
    assert line("web", {"nft": {"added": 0, "removed": 0, "kept": 5}, "changed": []}) == (
        "web: 5 kept, nothing to change (nft)")
    assert line("dom0", {"changed": ["qvm-prefs of 2 qubes"], "failed": ["qubes.ConnectTCP policy"]}) == (
        "dom0: qvm-prefs of 2 qubes updated; qubes.ConnectTCP policy FAILED")
    assert line("web", {}) == "web: nothing to change"


@pytest.mark.parametrize("output,fmt,data", [
    (None, None, False), ("nested", None, False), ("highstate", None, False),
    ("json", None, True), ("yaml", None, True), ("json", "text", False), (None, "data", True)])
def test_text_unless_data_is_asked_for(output, fmt, data):
    mod = load("qubes_firewall", opts={"output": output})
    assert mod._wants_data(fmt) is data
    with_pillar = types.SimpleNamespace(annotated=lambda out: out)  # a run with its pillar adds no source line
    assert mod._readable(with_pillar, {"a": 1}, fmt, lambda d: "text") == ({"a": 1} if data else "text")


def test_fmt_is_checked():
    mod = load("qubes_firewall", opts={})
    with pytest.raises(CommandExecutionError, match="fmt must be text or data"):
        mod._wants_data("xml")
