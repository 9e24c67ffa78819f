"""
The seed scenarios over IPv6 (issue 18): real salt-call in every emulated qube, real
nftables, real packets, in a lab where Qubes gives the qubes IPv6 (the ``ipv6`` feature on
sys-net) and dom0 hands the formula ``addresses6``.  Where IPv6 is in effect the port
forwards and connections work over IPv6 as over IPv4 (each family with its own sources);
where it is not, the formula plans nothing in ``ip6 qubes`` and IPv6 packets are not
forwarded.
"""

import copy
import json

import pytest

from tests.e2e.formula_lab import Flow, FormulaLab, check_flows, matrix_text, outside_hosts
from tests.e2e.full_example import FLOWS, full_pillar, start_servers

V6 = {"sys-net": "1"}  # the ipv6 feature on sys-net: every qube below has IPv6
LAN_UPLINK6 = "2001:db8:1::10"  # sys-net's address on the LAN
WAN_UPLINK6 = "2001:db8:30::10"


def ipv6_pillar():
    """The full example, its https forward open to the LAN's IPv6 network too, a forward
    through every hop of the VPN sandwich open to the LAN's IPv6 network only, a UDP one open
    to anyone on any interface, and a connection across branches (masqueraded hops)."""
    pillar = full_pillar()
    forwards = pillar["qubes_firewall"]["port_forwards"]
    forwards[0]["sources"].append("2001:db8:1::/64")
    forwards.append({"name": "ssh-work", "qube": "work", "proto": "tcp", "port": 22, "external_port": 2222,
                     "sources": ["2001:db8:1::/64"]})
    forwards.append({"name": "dns-build", "qube": "build", "proto": "udp", "port": 5353, "external_port": 53})
    pillar["qubes_firewall"]["connections"].append({"from": "work", "to": "web", "proto": "tcp", "ports": [8443]})
    return pillar


FLOWS6 = [
    Flow("port forward https over IPv6", "lan", LAN_UPLINK6, 443, "web:443", family=6),
    Flow("https over IPv6, second LAN address", "lan", LAN_UPLINK6, 443, "web:443", from_ip="2001:db8:1::51",
         family=6),
    Flow("https over IPv6, other interface", "wan", WAN_UPLINK6, 443, None, family=6),
    Flow("other port of web stays closed (IPv6)", "lan", LAN_UPLINK6, 8443, None, family=6),
    Flow("four hops down to work, port changed (IPv6 source only)", "lan", LAN_UPLINK6, 2222, "work:22", family=6),
    Flow("... and not over IPv4 (no IPv4 source)", "lan", "192.168.1.10", 2222, None),
    Flow("udp forward, any source and interface (IPv6)", "wan", WAN_UPLINK6, 53, "build:5353", proto="udp",
         family=6),
    Flow("work -> build ssh over IPv6", "work", "build", 22, "build:22", family=6),
    Flow("work -> web across branches over IPv6", "work", "web", 8443, "web:8443", family=6),
    Flow("web -> work stays closed (IPv6)", "web", "work", 22, None, family=6),
    Flow("work -> build other port (IPv6)", "work", "build", 80, None, family=6),
    Flow("build -> work (one way only, IPv6)", "build", "work", 22, None, family=6),
    Flow("web -> build (IPv6)", "web", "build", 22, None, family=6),
]


def assert_flows(lab, flows):
    results = check_flows(lab, flows)
    assert all(got == flow.expect for flow, got in results), "\n" + matrix_text(results)


def owned(lab, qube, family):
    """The formula's chains and sets in ``<family> qubes``, and its jumps there."""
    doc = json.loads(lab.run(qube, ["nft", "-j", "list", "ruleset"]).stdout)
    names, jumps = set(), []
    for item in doc["nftables"]:
        (kind, body), = item.items()
        if not isinstance(body, dict) or body.get("family") != family or body.get("table") != "qubes":
            continue
        if kind in ("chain", "set", "map") and body["name"].startswith("qf-"):
            names.add(body["name"])
        if kind == "rule" and body.get("comment") == "qf jump":
            jumps.append(body["chain"])
    return names, sorted(jumps)


def start_all(lab):
    lab.stop_servers()
    start_servers(lab)  # work:22 among them
    lab.serve_udp("build", 5353)


@pytest.fixture(scope="module")
def applied6(tmp_path_factory):
    flab = FormulaLab(ipv6_pillar(), tmp_path_factory.mktemp("e2e-ipv6"), ipv6=V6)
    try:
        first = flab.apply_all()
        start_all(flab.lab)
        yield flab, first
    finally:
        flab.close()


def test_both_tables_applied_everywhere_and_the_second_apply_changes_nothing(applied6):
    flab, first = applied6
    assert sorted(flab.pillar["qubes_firewall"]["addresses6"]) == sorted(flab.lab.order)
    for qube, result in first.items():
        assert result.retcode == 0 and not result.failed, (qube, result.failed)
        names, jumps = owned(flab.lab, qube, "ip6")
        assert {"qf-input", "qf-forward"} <= names and jumps == ["custom-forward", "custom-input"], qube
    assert "qf-nat" in owned(flab.lab, "sys-vpn", "ip6")[0]
    before = flab.snapshot_all()
    second = flab.apply_all()
    for qube, result in second.items():
        assert result.retcode == 0 and result.changed == {}, (qube, result.changed)
    assert flab.snapshot_all() == before


def test_connectivity_matrix_over_both_families(applied6):
    """The full example's promises over IPv4 and IPv6; a forward whose sources are IPv6 only
    is not opened over IPv4; nothing else."""
    flab, _ = applied6
    assert_flows(flab.lab, FLOWS + FLOWS6)
    lab = flab.lab
    # work reaches web masqueraded as sys-vpn (the last hop on its way up), over IPv6 as over IPv4
    lab.stop_servers()
    lab.serve_tcp("web", 8443, report_peer=True)
    try:
        assert lab.probe_tcp6("work", "web", 8443, timeout=1.0) == "web:8443:" + lab.ip6("sys-vpn")
        assert lab.probe_tcp("work", "web", 8443, timeout=1.0) == "web:8443:10.137.0.7"
    finally:
        start_all(lab)


def test_boot_replay_restores_both_tables(applied6):
    """Reboot every qube: the boot scripts restore the same rules in both tables (re-running
    them adds nothing); after a qubes-firewall restart too; and Salt sees no drift."""
    flab, _ = applied6
    live = {q: flab.ruleset_model(q) for q in flab.lab.order}
    for qube in flab.lab.order:
        flab.lab.reboot(qube)
    for qube in flab.lab.order:
        assert flab.ruleset_model(qube) == live[qube], qube
    for qube in ("sys-net", "sys-firewall"):
        flab.lab.restart_qubes_firewall(qube)
        assert flab.ruleset_model(qube) == live[qube], qube
    start_all(flab.lab)
    assert_flows(flab.lab, FLOWS + FLOWS6)
    assert all(r.changed == {} for r in flab.apply_all().values())


def test_a_transaction_nft_refuses_changes_neither_table(applied6):
    """A stale chain in the formula's ip6 namespace that something else still jumps to: the
    whole transaction (both tables) is refused, the ruleset and files stay byte-identical."""
    flab, _ = applied6
    lab = flab.lab
    lab.nft_load("sys-net", "add chain ip6 qubes qf-legacy\nadd rule ip6 qubes custom-forward jump qf-legacy\n")
    try:
        changed = copy.deepcopy(flab.pillar)
        changed["qubes_firewall"]["port_forwards"][0]["name"] = "web-https"
        changed["qubes_firewall"]["port_forwards"][0]["external_port"] = 4443
        flab.set_pillar(changed)
        before = flab.snapshot("sys-net")
        result = flab.apply("sys-net")
        assert result.retcode != 0
        assert "nothing was changed" in result.states["qubes_firewall-runtime-rules"]["comment"]
        assert flab.snapshot("sys-net") == before
    finally:
        flab.set_pillar(flab.with_addresses6(ipv6_pillar()))
        handle = [i["rule"]["handle"] for i in lab.nft_json("sys-net")["nftables"]
                  if i.get("rule", {}).get("family") == "ip6" and i["rule"]["chain"] == "custom-forward"
                  and i["rule"]["expr"] == [{"jump": {"target": "qf-legacy"}}]]
        lab.nft_load("sys-net", "delete rule ip6 qubes custom-forward handle %d\ndelete chain ip6 qubes qf-legacy\n"
                     % handle[0])
    assert flab.apply("sys-net").changed == {}


def test_when_ipv6_goes_away_its_rules_go_and_ipv4_stays(applied6):
    """dom0 no longer hands addresses6 (the ipv6 feature removed): the next run removes what
    the formula had in ``ip6 qubes`` (chains, sets, jumps), keeps IPv4; IPv6 is no longer
    forwarded."""
    flab, _ = applied6
    pillar = ipv6_pillar()
    flab.set_pillar(pillar)
    results = flab.apply_all()
    for qube, result in results.items():
        assert result.retcode == 0 and result.changed, qube
        assert owned(flab.lab, qube, "ip6") == (set(), []), qube
        if qube == "work":  # its only rules were ssh-work's, whose sources are IPv6 only
            assert owned(flab.lab, qube, "ip") == (set(), []), qube
        else:
            assert {"qf-input", "qf-forward"} <= owned(flab.lab, qube, "ip")[0], qube
    start_all(flab.lab)
    assert_flows(flab.lab, FLOWS + [
        Flow("https over IPv6 no longer forwarded", "lan", LAN_UPLINK6, 443, None, family=6),
        Flow("work -> build over IPv6 closed again", "work", "build", 22, None, family=6)])
    assert all(r.changed == {} for r in flab.apply_all().values())


def test_ipv6_only_where_qubes_has_it_and_a_missing_ip6_custom_chain_still_loads(tmp_path):
    """web has ``ipv6 ''`` (no IPv6): the https forward stays IPv4 in every hop and web gets
    no ip6 object; the other forward and work -> build work over IPv6.  build's ``ip6 qubes``
    lacks custom-forward (a Qubes where it is missing or partial): its run still loads,
    creating it."""
    with FormulaLab(ipv6_pillar(), tmp_path, ipv6={"sys-net": "1", "web": ""}) as flab:
        lab = flab.lab
        assert "web" not in flab.pillar["qubes_firewall"]["addresses6"]
        rules = lab.nft_json("build")["nftables"]
        (jump,) = [i["rule"]["handle"] for i in rules if i.get("rule", {}).get("family") == "ip6"
                   and i["rule"]["chain"] == "forward" and i["rule"]["expr"] == [{"jump": {"target": "custom-forward"}}]]
        lab.nft_load("build", "delete rule ip6 qubes forward handle %d\n"
                              "delete chain ip6 qubes custom-forward\n" % jump)
        results = flab.apply_all()
        assert not any(r.failed for r in results.values()), {q: r.failed for q, r in results.items()}
        assert owned(lab, "web", "ip6") == (set(), [])
        assert owned(lab, "build", "ip6")[1] == ["custom-forward", "custom-input"]
        for qube in ("sys-net", "sys-firewall"):
            text = lab.run(qube, ["nft", "list", "table", "ip6", "qubes"]).stdout
            assert "port_forwards:https" not in text and "port_forwards:ssh-work" in text, qube
        start_all(lab)
        assert_flows(lab, FLOWS + [
            Flow("https over IPv6 (web has none)", "lan", LAN_UPLINK6, 443, None, family=6),
            Flow("four hops down to work over IPv6", "lan", LAN_UPLINK6, 2222, "work:22", family=6),
            Flow("work -> build ssh over IPv6", "work", "build", 22, "build:22", family=6)])
        assert all(r.changed == {} for r in flab.apply_all().values())


def test_without_ipv6_nothing_is_planned_for_it_and_ipv6_is_not_forwarded(tmp_path):
    """The seed without the ipv6 feature (Qubes' default), the LAN with IPv6 all the same, a
    pillar with IPv6 sources: no ``ip6 qubes`` object of the formula anywhere, IPv6 packets
    to the published ports are not forwarded, IPv4 works."""
    pillar = ipv6_pillar()
    with FormulaLab(pillar, tmp_path, outside=outside_hosts(["sys-net"], ipv6=True)) as flab:
        assert "addresses6" not in flab.pillar["qubes_firewall"]
        results = flab.apply_all()
        assert not any(r.failed for r in results.values())
        for qube in flab.lab.order:
            assert owned(flab.lab, qube, "ip6") == (set(), []), qube
        start_all(flab.lab)
        assert_flows(flab.lab, FLOWS + [
            Flow("https over IPv6", "lan", LAN_UPLINK6, 443, None, family=6),
            Flow("ssh-work over IPv6", "lan", LAN_UPLINK6, 2222, None, family=6)])
