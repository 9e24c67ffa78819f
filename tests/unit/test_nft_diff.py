"""Comparing the live ruleset (nft -j, recorded from real nft 1.0.6) with a plan."""

import copy
import json
import pathlib

import pytest
from salt.exceptions import CommandExecutionError

from tests.modules import model, nft, plan
from tests.unit.test_plan import load_example

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


def sys_net_plan(pillar=None):
    return plan.plan_qube(model.parse(pillar or load_example("full")), "sys-net")


def test_fresh_table_gets_chains_rules_and_jumps_in_one_script():
    live = nft.live_state(fixture("fresh-qubes-table.json"))
    assert live["chains"] == {} and live["jumps"] == {}
    script, summary = nft.transaction(sys_net_plan(), live)
    lines = script.splitlines()
    assert lines[-2:] == ['add rule ip qubes custom-input jump qf-input comment "qf jump"',
                          'add rule ip qubes custom-forward jump qf-forward comment "qf jump"']
    assert summary["chains_added"] == ["qf-input", "qf-forward", "qf-dnat-https"]
    # never a command on a chain the formula does not own, except its jump rules
    for line in lines:
        assert " qf-" in line and ("custom-" not in line or "jump qf-" in line)


def test_applied_ruleset_is_up_to_date():
    """Recorded after a real apply of the same plan: nothing to do, no script."""
    live = nft.live_state(fixture("sys-net-applied.json"))
    assert sorted(live["chains"]) == ["qf-dnat-https", "qf-forward", "qf-input"]
    assert live["chains"]["qf-dnat-https"]["hook"] == ("nat", "prerouting", 1, "accept")
    assert nft.transaction(sys_net_plan(), live) == ("", {})


def test_changed_rule_replaces_only_its_chain():
    pillar = load_example("full")
    pillar["port_forwards"][0]["sources"] = ["192.168.2.0/24"]
    live = nft.live_state(fixture("sys-net-applied.json"))
    script, summary = nft.transaction(sys_net_plan(pillar), live)
    assert "flush chain ip qubes qf-forward" in script and "flush chain ip qubes qf-dnat-https" in script
    assert "add chain" not in script and "jump" not in script
    assert "qf-input" not in script
    assert summary["chains_replaced"] == ["qf-forward", "qf-dnat-https"]


def test_removed_forward_deletes_its_chain():
    pillar = load_example("full")
    pillar["port_forwards"] = []
    live = nft.live_state(fixture("sys-net-applied.json"))
    script, summary = nft.transaction(sys_net_plan(pillar), live)
    assert script.splitlines()[-2:] == ["flush chain ip qubes qf-dnat-https", "delete chain ip qubes qf-dnat-https"]
    assert summary["chains_removed"] == ["qf-dnat-https"]


def test_hand_added_rule_in_an_owned_chain_is_drift_and_gets_replaced():
    doc = fixture("sys-net-applied.json")
    extra = copy.deepcopy([i for i in doc["nftables"] if "rule" in i and i["rule"]["chain"] == "qf-forward"][0])
    extra["rule"]["handle"] = 999
    del extra["rule"]["comment"]
    doc["nftables"].append(extra)
    script, summary = nft.transaction(sys_net_plan(), nft.live_state(doc))
    assert "flush chain ip qubes qf-forward" in script
    assert summary["rules_removed"] == ["qf-forward: (rule without comment)"]


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


def test_a_table_without_qubes_custom_chains_is_refused():
    doc = {"nftables": [{"table": {"family": "ip", "name": "qubes", "handle": 1}}]}
    with pytest.raises(CommandExecutionError, match="no custom-input or custom-forward"):
        nft.transaction(sys_net_plan(), nft.live_state(doc))
