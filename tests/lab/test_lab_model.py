"""The lab's pure parts (no root needed): topology validation, the qvm-firewall -> nft
mapping of qubesagent/firewall.py, dnat-dns rendering, QubesDB keys."""

import pytest

from tests.lab import OutsideHost, QubeSpec
from tests.lab.boot import enabled_units, exec_start, firewall_scripts, rc_scripts
from tests.lab.qubes_base import (
    chain_for_addr,
    client_chain_create,
    client_chain_fill,
    client_rules,
    dnat_dns,
    qubes_firewall_tables,
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
     ["ip daddr @dns-addr tcp dport 53 accept", "ip daddr @dns-addr udp dport 53 accept"]),
    ({"action": "accept", "specialtarget": "dns", "dstports": "80"}, []),
    ({"action": "accept", "dst6": "fd00::/8"}, []),
    ({"action": "accept", "expire": "1700000000", "comment": "x"}, ["accept"]),
])
def test_qvm_firewall_mapping(rule, nft):
    assert qvm_rule_to_nft(rule) == nft


def test_qvm_firewall_dns_rules_differ_by_release():
    """4.2 writes the netvm's resolvers into the rule and drops it without any; 4.3 matches
    the dns-addr set, which every client-chain refill flushes and fills."""
    dns = {"action": "accept", "specialtarget": "dns"}
    assert qvm_rule_to_nft(dns, release="4.2") == [
        "ip daddr { 10.139.1.1/32, 10.139.1.2/32 } tcp dport 53 accept",
        "ip daddr { 10.139.1.1/32, 10.139.1.2/32 } udp dport 53 accept"]
    assert qvm_rule_to_nft(dns, dns_servers=[], release="4.2") == []
    assert qvm_rule_to_nft(dns, dns_servers=[], release="4.3") == [
        "ip daddr @dns-addr tcp dport 53 accept", "ip daddr @dns-addr udp dport 53 accept"]
    fill = client_chain_fill("10.137.0.9", ["accept"], "4.3", ["10.139.1.1", "10.139.1.2"])
    assert fill.splitlines()[:3] == ["flush set ip qubes-firewall dns-addr",
                                     "add element ip qubes-firewall dns-addr { 10.139.1.1, 10.139.1.2 }",
                                     "flush chain ip qubes-firewall qbs-10-137-0-9"]
    assert "dns-addr" not in client_chain_fill("10.137.0.9", ["accept"], "4.2")
    assert "dns-addr" not in client_chain_fill("10.137.0.9", ["accept"], "4.3", []).splitlines()[1]


def test_qubes_firewall_tables_by_release():
    assert "qubes-forward" not in qubes_firewall_tables("4.2")
    assert "jump qubes-forward" in qubes_firewall_tables("4.3")
    assert "chain qubes-forward" in client_chain_create("10.137.0.9", "4.3")
    assert "chain forward" in client_chain_create("10.137.0.9", "4.2")
    with pytest.raises(ValueError, match="4.2 and 4.3"):
        qubes_firewall_tables("4.1")


def test_qvm_firewall_mapping_refuses_hostnames_and_bad_actions():
    with pytest.raises(ValueError, match="IP addresses only"):
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


def _script(path, mode=0o755):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_boot_scripts_with_and_without_custom_persist(tmp_path):
    rw, etc = tmp_path / "rw" / "config", tmp_path / "root" / "etc" / "qubes"
    etc_drop = _script(etc / "qubes-firewall.d" / "50-formula")
    _script(etc / "qubes-firewall.d" / "60-off", 0o644)
    rw_drop = _script(rw / "qubes-firewall.d" / "10-mine")
    user = _script(rw / "qubes-firewall-user-script")
    rc_d = _script(rw / "rc.local.d" / "10-x.rc")
    rc = _script(rw / "rc.local")
    assert firewall_scripts(rw, etc) == [etc_drop, rw_drop, user]
    assert firewall_scripts(rw, etc, custom_persist=True) == [etc_drop]
    assert rc_scripts(rw) == [rc_d, rc]
    assert rc_scripts(rw, custom_persist=True) == []


def test_enabled_units_and_their_exec_start(tmp_path):
    system = tmp_path / "etc" / "systemd" / "system"
    wants = system / "multi-user.target.wants"
    wants.mkdir(parents=True)
    (system / "qf-rules.service").write_text(
        "[Unit]\nDescription=x\nExecStart=/not/this\n[Service]\nType=oneshot\n"
        "ExecStart=-/usr/local/bin/qf 'a b' c\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    (system / "other.service").write_text("[Service]\nExecStart=/bin/false\n")  # not enabled
    (wants / "qf-rules.service").symlink_to("/etc/systemd/system/qf-rules.service")  # host path: not followed
    (wants / "x.timer").write_text("")
    assert enabled_units(system) == [system / "qf-rules.service"]
    assert exec_start(system / "qf-rules.service") == [["/usr/local/bin/qf", "a b", "c"], ["/bin/true"]]
    assert enabled_units(tmp_path / "none") == []
