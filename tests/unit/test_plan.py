"""The planner: pillar model + addresses -> each qube's owned chains and boot block."""

import json
import os
import pathlib

import pytest

from tests import examples
from tests.modules import model, plan

GOLDEN = pathlib.Path(__file__).parent / "golden"
EXAMPLES = ["default-43", "full", "port-forward", "qube-to-qube", "vpn-sandwich"]


def load_example(name):
    """The example with the lab's addresses (tests/examples.py)."""
    return examples.example(name)


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


def chains_of(p):
    return {c.name: c for c in p.chains}


def sets_of(p):
    return {s.name: s for s in p.sets}


def the_set(p, prefix):
    (found,) = [s for s in p.sets if s.name.startswith(prefix)]
    return found


def test_seed_port_forward_rules_per_hop():
    """Seed: sys-net DNATs LAN:443 to sys-firewall, sys-firewall to web, web accepts."""
    mdl = parse(load_example("port-forward"))
    net = plan.plan_qube(mdl, "sys-net")
    fw = plan.plan_qube(mdl, "sys-firewall")
    web = plan.plan_qube(mdl, "web")
    chains = chains_of(net)
    nat = the_set(net, "qf-nat-")
    (dnat,) = chains["qf-nat"].rules
    assert dnat.body == ('iifname "ens6" fib daddr type local ip saddr 192.168.1.0/24 meta l4proto { tcp, udp } '
                         'dnat ip to meta l4proto . th dport map @%s' % nat.name)
    assert [e.text for e in nat.elements] == ['tcp . 443 comment "qf port_forwards:https" : 10.137.0.6 . 443']
    (fwd,) = chains["qf-forward"].rules
    fwd_set = the_set(net, "qf-fwd-")
    assert fwd.body == ('iifname "ens6" ip saddr 192.168.1.0/24 ct state new '
                        'meta l4proto . ip daddr . th dport @%s accept' % fwd_set.name)
    assert [e.key for e in fwd_set.elements] == [("tcp", "10.137.0.6", 443)]
    chains = chains_of(fw)
    (dnat,) = chains["qf-nat"].rules
    assert dnat.match.startswith("iifgroup 1 ip daddr 10.137.0.6 ip saddr 192.168.1.0/24 ")
    assert the_set(fw, "qf-nat-").elements[0].value == ("10.137.0.11", 443)
    assert chains["qf-nat"].spec == "type nat hook prerouting priority filter + 1; policy accept;"
    (inp,) = web.chains[0].rules
    assert inp.match == ("iifgroup 1 ip saddr 192.168.1.0/24 ct state new "
                         "meta l4proto . ip daddr . th dport @%s" % the_set(web, "qf-in-").name)
    assert the_set(web, "qf-in-").elements[0].key == ("tcp", "10.137.0.11", 443)
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
        chains = chains_of(p)
        (dnat,) = chains["qf-nat"].rules
        (nat,) = the_set(p, "qf-nat-").elements
        (fwd,) = the_set(p, "qf-fwd-").elements
        last = i == depth - 1
        nxt = "10.137.2.1" if last else "10.137.1.%d" % (i + 2)
        assert nat.key == ("udp", 8443)
        assert nat.value == (nxt, 443 if last else 8443)
        assert fwd.key == ("udp", nxt, 443 if last else 8443)
        if i == 0:
            assert dnat.match.startswith('iifname != "vif*" fib daddr type local ')
        else:
            assert dnat.match.startswith("iifgroup 1 ip daddr 10.137.1.%d " % (i + 1))
        assert chains["qf-input"].rules == ()
    dest = plan.plan_qube(mdl, "dest")
    (inp,) = the_set(dest, "qf-in-").elements
    assert inp.key == ("udp", "10.137.2.1", 443)
    assert [c.name for c in dest.chains] == ["qf-input", "qf-forward"]


def test_forward_to_the_uplink_itself_redirects_the_external_port():
    pillar = {"addresses": {"net": "10.137.0.5"}, "qubes": {"net": {"netvm": None}},
              "port_forwards": [{"name": "ssh", "qube": "net", "port": 22, "external_port": 2222,
                                 "interfaces": ["wlan0", "ens6"]}]}
    p = plan.plan_qube(parse(pillar), "net")
    chains = chains_of(p)
    redir = the_set(p, "qf-redir-")
    (redirect,) = chains["qf-nat"].rules
    assert redirect.body == ('iifname { "ens6", "wlan0" } fib daddr type local meta l4proto { tcp, udp } '
                             'redirect to :meta l4proto . th dport map @%s' % redir.name)
    assert [(e.key, e.value) for e in redir.elements] == [(("tcp", 2222), (22,))]
    (inp,) = chains["qf-input"].rules
    assert inp.match.startswith('iifname { "ens6", "wlan0" } ct state new')
    assert the_set(p, "qf-in-").elements[0].key == ("tcp", "10.137.0.5", 22)


def many_forwards(n, groups=1):
    pillar = load_example("port-forward")
    pillar["port_forwards"] = [
        {"name": "f%d" % i, "qube": "web", "proto": "tcp" if i % 2 else "udp", "port": 1000 + i,
         **({"sources": ["192.168.%d.0/24" % (i % groups)]} if groups > 1 else {})}
        for i in range(n)]
    return pillar


def test_one_rule_per_group_however_many_forwards():
    """10,000 forwards: one nat map and one forward set, one rule each; one element per forward."""
    p = plan.plan_qube(parse(many_forwards(10000)), "sys-net")
    chains = chains_of(p)
    assert len(chains["qf-nat"].rules) == 1 and len(chains["qf-forward"].rules) == 1
    assert [len(s.elements) for s in p.sets] == [10000, 10000]
    p = plan.plan_qube(parse(many_forwards(300, groups=3)), "sys-firewall")
    assert len(chains_of(p)["qf-nat"].rules) == 3 and len(p.sets) == 6


def test_changing_one_forward_changes_only_its_elements():
    before = plan.plan_qube(parse(many_forwards(50)), "sys-net")
    pillar = many_forwards(50)
    pillar["port_forwards"][7]["port"] = 7777
    after = plan.plan_qube(parse(pillar), "sys-net")
    assert before.chains == after.chains
    assert [s.name for s in before.sets] == [s.name for s in after.sets]
    changed = [(b.name, set(b.elements) ^ set(a.elements)) for b, a in zip(before.sets, after.sets)]
    assert all(len(diff) == 2 and {e.origin for e in diff} == {"port_forwards:f7"} for _, diff in changed)


def test_qubes_off_the_path_get_no_forward_rules():
    mdl = parse(load_example("full"))
    for qube in ("sys-vpn", "sys-firewall-2", "work"):
        p = plan.plan_qube(mdl, qube)
        assert not p.sets and not any("port_forwards" in r.origin for c in p.chains for r in c.rules)


def test_connection_in_a_shared_firewall_qube():
    """Seed: forward rule in the shared netvm, input rule in the target, one way only."""
    mdl = parse(load_example("qube-to-qube"))
    fw = chains_of(plan.plan_qube(mdl, "sys-firewall"))
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


def test_rule_and_element_comments_trace_origin_and_fit_nft():
    mdl = parse(load_example("full"))
    for qube in mdl.qubes:
        p = plan.plan_qube(mdl, qube)
        for chain in p.chains:
            for rule in chain.rules:
                assert rule.comment == "qf %s" % rule.origin
                assert len(rule.comment) <= 128
        for item in p.sets:
            for element in item.elements:
                assert element.comment == "qf port_forwards:%s" % element.origin.split(":")[1]


def test_boot_block_is_guarded_and_replays_the_ruleset():
    mdl = parse(load_example("full"))
    p = plan.plan_qube(mdl, "sys-firewall")
    block = plan.persist_block(p)
    assert '[ "$(qubesdb-read /name 2>/dev/null)" = "sys-firewall" ]' in block
    assert plan.ruleset_text(p) in block
    assert block.count("jump qf-") == 2
    # sets and maps before the rules that look them up
    text = plan.ruleset_text(p)
    assert text.index("add map ip qubes qf-nat-") < text.index("add chain ip qubes qf-nat ")


@pytest.mark.parametrize("example", EXAMPLES)
def test_no_counter_before_a_lookup_that_can_miss(example):
    """A rule that looks up a set or map of forwards counts nothing (its elements count each forward):
    a counter before the lookup would count packets the lookup refuses and other groups' packets.
    Every other rule counts, right before its verdict."""
    mdl = parse(load_example(example))
    seen = {True: 0, False: 0}
    for qube in mdl.qubes:
        for chain in plan.plan_qube(mdl, qube).chains:
            for rule in chain.rules:
                text = json.dumps(rule.expr)
                looks_up = '"@qf-' in text
                assert ('"counter"' in text) is (not looks_up), rule.text
                assert rule.counted is (not looks_up)
                if rule.counted:
                    assert rule.expr[-2] == {"counter": {"packets": 0, "bytes": 0}}
                seen[looks_up] += 1
    if example in ("full", "port-forward"):
        assert seen[True] > 0
    if example in ("full", "qube-to-qube"):
        assert seen[False] > 0
