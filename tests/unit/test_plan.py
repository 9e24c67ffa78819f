"""The planner: pillar model + addresses -> each qube's owned chains and boot block."""

import json
import os
import pathlib

import pytest
import yaml

from tests.modules import REPO, model, plan

GOLDEN = pathlib.Path(__file__).parent / "golden"
EXAMPLES = ["full", "port-forward", "qube-to-qube", "vpn-sandwich"]


def load_example(name):
    return yaml.safe_load((REPO / "pillar.example" / ("%s.sls" % name)).read_text())["qubes_firewall"]


def parse(pillar):
    return model.parse(pillar)


def all_plans(mdl):
    out = {}
    for qube in sorted(mdl.qubes):
        p = plan.plan_qube(mdl, qube)
        out[qube] = dict(plan.plan_dict(p), ruleset=plan.ruleset_text(p))
    return out


@pytest.mark.parametrize("example", EXAMPLES)
def test_golden_plans_of_the_examples(example):
    """Every qube's rules for each pillar.example scenario, byte for byte."""
    got = all_plans(parse(load_example(example)))
    path = GOLDEN / ("%s.json" % example)
    if os.environ.get("QF_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


def test_seed_port_forward_rules_per_hop():
    """Seed: sys-net DNATs LAN:443 to sys-firewall, sys-firewall to web, web accepts."""
    mdl = parse(load_example("port-forward"))
    net = plan.plan_qube(mdl, "sys-net")
    fw = plan.plan_qube(mdl, "sys-firewall")
    web = plan.plan_qube(mdl, "web")
    chains = {c.name: c for c in net.chains}
    (dnat,) = chains["qf-dnat-https"].rules
    assert dnat.body == ('iifname "ens6" fib daddr type local ip saddr 192.168.1.0/24 tcp dport 443 '
                         'counter dnat to 10.137.0.6')
    (fwd,) = chains["qf-forward"].rules
    assert fwd.body == ('iifname "ens6" ip saddr 192.168.1.0/24 ip daddr 10.137.0.6 tcp dport 443 '
                        'ct state new counter accept')
    chains = {c.name: c for c in fw.chains}
    (dnat,) = chains["qf-dnat-https"].rules
    assert dnat.body == ("iifgroup 1 ip daddr 10.137.0.6 ip saddr 192.168.1.0/24 tcp dport 443 "
                         "counter dnat to 10.137.0.11")
    assert chains["qf-dnat-https"].spec == "type nat hook prerouting priority filter + 1; policy accept;"
    (inp,) = web.chains[0].rules
    assert inp.body == ("iifgroup 1 ip saddr 192.168.1.0/24 ip daddr 10.137.0.11 tcp dport 443 "
                        "ct state new counter accept")
    assert net.persist_file == "qubes-firewall-user-script"
    assert web.persist_file == "rc.local"


def deep_pillar(depth, external_port=8443, port=443):
    """uplink q0 -> q1 -> ... -> q<depth-1> -> dest, with a forward to dest."""
    qubes = {"q0": {"netvm": None}}
    addresses = {"q0": "10.137.1.1"}
    for i in range(1, depth):
        qubes["q%d" % i] = {"netvm": "q%d" % (i - 1)}
        addresses["q%d" % i] = "10.137.1.%d" % (i + 1)
    qubes["dest"] = {"netvm": "q%d" % (depth - 1)}
    addresses["dest"] = "10.137.2.1"
    return {
        "addresses": addresses,
        "qubes": qubes,
        "port_forwards": [{"name": "svc", "qube": "dest", "proto": "udp", "port": port,
                           "external_port": external_port}],
    }


@pytest.mark.parametrize("depth", [1, 2, 4, 7])
def test_every_hop_of_a_deep_chain_forwards(depth):
    """Each hop DNATs to the next one down; the port changes only at the last hop."""
    mdl = parse(deep_pillar(depth))
    for i in range(depth):
        p = plan.plan_qube(mdl, "q%d" % i)
        chains = {c.name: c for c in p.chains}
        (dnat,) = chains["qf-dnat-svc"].rules
        (fwd,) = chains["qf-forward"].rules
        last = i == depth - 1
        nxt = "10.137.2.1" if last else "10.137.1.%d" % (i + 2)
        assert dnat.verdict == ("dnat to %s:443" % nxt if last else "dnat to %s" % nxt)
        assert "udp dport 8443" in dnat.match
        assert "ip daddr %s" % nxt in fwd.match
        assert ("udp dport 443" if last else "udp dport 8443") in fwd.match
        if i == 0:
            assert 'iifname != "vif*"' in dnat.match
        else:
            assert dnat.match.startswith("iifgroup 1 ip daddr 10.137.1.%d " % (i + 1))
        assert chains["qf-input"].rules == ()
    dest = plan.plan_qube(mdl, "dest")
    (inp,) = dest.chains[0].rules
    assert "udp dport 443" in inp.match and "ip daddr 10.137.2.1" in inp.match
    assert [c.name for c in dest.chains] == ["qf-input", "qf-forward"]


def test_forward_to_the_uplink_itself_redirects_the_external_port():
    pillar = {"addresses": {"net": "10.137.0.5"}, "qubes": {"net": {"netvm": None}},
              "port_forwards": [{"name": "ssh", "qube": "net", "port": 22, "external_port": 2222,
                                 "interfaces": ["ens6", "wlan0"]}]}
    p = plan.plan_qube(parse(pillar), "net")
    chains = {c.name: c for c in p.chains}
    (redirect,) = chains["qf-dnat-ssh"].rules
    assert redirect.body == ('iifname { "ens6", "wlan0" } fib daddr type local tcp dport 2222 '
                             'counter redirect to :22')
    (inp,) = chains["qf-input"].rules
    assert "tcp dport 22" in inp.match and 'iifname { "ens6", "wlan0" }' in inp.match


def test_qubes_off_the_path_get_no_forward_rules():
    mdl = parse(load_example("full"))
    for qube in ("sys-vpn", "sys-firewall-2", "work"):
        assert not any("port_forwards" in r.origin for c in plan.plan_qube(mdl, qube).chains for r in c.rules)


def test_connection_in_a_shared_firewall_qube():
    """Seed: forward rule in the shared netvm, input rule in the target, one way only."""
    mdl = parse(load_example("qube-to-qube"))
    fw = {c.name: c for c in plan.plan_qube(mdl, "sys-firewall-2").chains}
    (rule,) = fw["qf-forward"].rules
    assert rule.body == ("iifgroup 2 ip saddr 10.137.0.9 ip daddr 10.137.0.10 tcp dport 22 "
                         "ct state new counter accept")
    (inp,) = plan.plan_qube(mdl, "build").chains[0].rules
    assert inp.body == "iifgroup 1 ip saddr 10.137.0.9 tcp dport 22 ct state new counter accept"
    work = plan.plan_qube(mdl, "work")
    assert work.rule_count == 0


def test_connection_across_branches_uses_the_masqueraded_source():
    """work (behind sys-firewall-2 and sys-vpn) -> web (on sys-firewall): sys-firewall sees sys-vpn."""
    pillar = load_example("full")
    pillar["connections"] = [{"from": "work", "to": "web", "ports": [80, 8080]}]
    mdl = parse(pillar)
    fw = {c.name: c for c in plan.plan_qube(mdl, "sys-firewall").chains}
    (rule,) = [r for r in fw["qf-forward"].rules if r.origin.startswith("connections:0")]
    assert rule.match == ("iifgroup 2 ip saddr 10.137.0.7 ip daddr 10.137.0.11 "
                          "meta l4proto { tcp, udp } th dport { 80, 8080 } ct state new")
    web = plan.plan_qube(mdl, "web")
    assert web.notes and "masqueraded as sys-vpn" in web.notes[0]
    for qube in ("sys-firewall-2", "sys-vpn"):
        assert plan.plan_qube(mdl, qube).rule_count == 0


def test_connection_to_an_upstream_netvm_is_an_input_rule_only():
    pillar = load_example("full")
    pillar["connections"] = [{"from": "work", "to": "sys-vpn", "proto": "udp", "ports": 53}]
    mdl = parse(pillar)
    (inp,) = plan.plan_qube(mdl, "sys-vpn").chains[0].rules
    assert inp.match == "iifgroup 2 ip saddr 10.137.0.8 udp dport 53 ct state new"


def test_connection_to_a_qube_deeper_in_another_branch_is_refused():
    pillar = load_example("full")
    pillar["connections"] = [{"from": "web", "to": "build"}]
    with pytest.raises(plan.PlanError):
        plan.plan_qube(parse(pillar), "sys-firewall")
    errors = plan.check_model(parse(pillar))
    assert errors == [
        "qubes_firewall:connections:0: build is not attached directly to sys-firewall, the netvm web and "
        "build share; Qubes routes only to a netvm's own clients (use a port forward for deeper qubes)"
    ]


def test_missing_address_names_the_pillar_path():
    pillar = load_example("port-forward")
    del pillar["addresses"]["sys-firewall"]
    with pytest.raises(plan.PlanError) as err:
        plan.plan_qube(parse(pillar), "sys-net")
    assert str(err.value).splitlines()[1].strip().startswith("qubes_firewall:addresses:sys-firewall:")


def test_rule_comments_trace_origin_and_fit_nft():
    mdl = parse(load_example("full"))
    for qube in mdl.qubes:
        for chain in plan.plan_qube(mdl, qube).chains:
            for rule in chain.rules:
                assert rule.comment.startswith("qf %s" % rule.origin)
                assert len(rule.comment) <= 128


def test_boot_block_is_guarded_and_replays_the_ruleset():
    mdl = parse(load_example("full"))
    p = plan.plan_qube(mdl, "sys-firewall")
    block = plan.persist_block(p)
    assert '[ "$(qubesdb-read /name 2>/dev/null)" = "sys-firewall" ]' in block
    assert plan.ruleset_text(p) in block
    assert block.count("jump qf-") == 2
