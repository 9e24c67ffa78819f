"""The lab's pure parts (no root needed): topology validation, the qvm-firewall -> nft
mapping of qubesagent/firewall.py, dnat-dns rendering, QubesDB keys."""

import pytest

from tests.lab import OutsideHost, QubeSpec
from tests.lab.qubes_base import (
    chain_for_addr,
    client_rules,
    dnat_dns,
    qvm_rule_to_nft,
)
from tests.lab.qubesdb import entries
from tests.lab.seed import seed_outside, seed_qubes
from tests.lab.spec import validate

REJECT = "reject with icmp type admin-prohibited"


def test_seed_topology_orders_uplinks_first():
    order = validate(seed_qubes(), seed_outside())
    for name, spec in seed_qubes().items():
        if spec.netvm:
            assert order.index(spec.netvm) < order.index(name)


@pytest.mark.parametrize("qubes, message", [
    ({"a": QubeSpec(ip="10.137.0.2", netvm="b")}, "not in the topology"),
    ({"a": QubeSpec(ip="10.137.0.2"), "b": QubeSpec(ip="10.137.0.3", netvm="a")}, "does not provide network"),
    ({"a": QubeSpec(ip="10.137.0.2", netvm="b", provides_network=True),
      "b": QubeSpec(ip="10.137.0.3", netvm="a", provides_network=True)}, "loops"),
    ({"a": QubeSpec(ip="10.137.0.2"), "b": QubeSpec(ip="10.137.0.2")}, "already used"),
    ({"a": QubeSpec(ip="10.137.0")}, "not an IPv4 address"),
])
def test_bad_topologies_are_refused(qubes, message):
    with pytest.raises(ValueError, match=message):
        validate(qubes, [])


def test_bad_outside_hosts_are_refused():
    qubes = {"sys-net": QubeSpec(ip="10.137.0.5", provides_network=True)}
    with pytest.raises(ValueError, match="needs a prefix"):
        validate(qubes, [OutsideHost("lan", "sys-net", "ens6", "192.168.1.50", "192.168.1.10/24")])
    with pytest.raises(ValueError, match="bad ifname"):
        validate(qubes, [OutsideHost("lan", "sys-net", "vif9.0", "192.168.1.50/24", "192.168.1.10/24")])
    with pytest.raises(ValueError, match="not a qube"):
        validate(qubes, [OutsideHost("lan", "nope", "ens6", "192.168.1.50/24", "192.168.1.10/24")])


def test_qubes_firewall_qbs_chain_names():
    assert chain_for_addr("10.137.0.9") == "qbs-10-137-0-9"
    assert chain_for_addr("fd09:24ef:4179::a89:9") == "qbs-fd09-24ef-4179--a89-9"


@pytest.mark.parametrize("rule, nft", [
    ({"action": "accept"}, ["accept"]),
    ({"action": "drop"}, [REJECT]),
    ({"action": "accept", "proto": "tcp", "dstports": "443-443"}, ["ip protocol tcp tcp dport 443 accept"]),
    ({"action": "accept", "dstports": "80-90"}, ["tcp dport 80-90 accept", "udp dport 80-90 accept"]),
    ({"action": "drop", "dst4": "192.168.1.0/24"}, ["ip daddr 192.168.1.0/24 " + REJECT]),
    ({"action": "accept", "proto": "icmp", "icmptype": "8"}, ["ip protocol icmp icmp type 8 accept"]),
    ({"action": "accept", "specialtarget": "dns"},
     ["ip daddr { 10.139.1.1/32, 10.139.1.2/32 } tcp dport 53 accept",
      "ip daddr { 10.139.1.1/32, 10.139.1.2/32 } udp dport 53 accept"]),
    ({"action": "accept", "specialtarget": "dns", "dstports": "80"}, []),
    ({"action": "accept", "dst6": "fd00::/8"}, []),
    ({"action": "accept", "expire": "1700000000", "comment": "x"}, ["accept"]),
])
def test_qvm_firewall_mapping(rule, nft):
    assert qvm_rule_to_nft(rule) == nft


def test_qvm_firewall_mapping_refuses_hostnames_and_bad_actions():
    with pytest.raises(ValueError, match="IPv4 addresses only"):
        qvm_rule_to_nft({"action": "accept", "dsthost": "example.com"})
    with pytest.raises(ValueError, match="bad action"):
        qvm_rule_to_nft({"action": "allow"})


def test_client_rules_default_list_and_policy():
    assert client_rules(None) == ["accept", REJECT]
    assert client_rules([]) == [REJECT]  # empty list: everything blocked
    assert client_rules(["action=drop"]) == [REJECT, REJECT]
    assert client_rules(["drop", "action=accept proto=udp dstports=53-53"]) == [
        "drop", "ip protocol udp udp dport 53 accept", REJECT]


def test_dnat_dns_like_qubes_setup_dnat_to_ns():
    text = dnat_dns(["192.168.1.1"])
    assert text.splitlines()[:3] == ["add table ip qubes", "add chain ip qubes dnat-dns",
                                     "delete chain ip qubes dnat-dns"]
    assert "ip daddr 10.139.1.1 udp dport 53 dnat to 192.168.1.1" in text
    assert "ip daddr 10.139.1.2 tcp dport 53 dnat to 192.168.1.1" in text  # repeated if short
    assert "ip daddr 10.139.1.2 udp dport 53 drop" in dnat_dns(None)


def test_qubesdb_keys_follow_core_admin():
    app = entries("work", "10.137.0.9", "10.137.0.8", False)
    assert app["/qubes-ip"] == "10.137.0.9" and app["/qubes-gateway"] == "10.137.0.8"
    assert "/qubes-netvm-gateway" not in app
    uplink = entries("sys-net", "10.137.0.5", None, True, ["10.137.0.6"])
    assert "/qubes-ip" not in uplink and "/qubes-gateway" not in uplink
    assert uplink["/qubes-netvm-gateway"] == "10.137.0.5"
    assert uplink["/connected-ips"] == "10.137.0.6"
