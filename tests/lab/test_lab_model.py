"""The lab's pure parts (no root needed): topology validation, the qvm-firewall -> nft
mapping of qubesagent/firewall.py, dnat-dns rendering, QubesDB keys, IPv6 addressing."""

import pytest

from tests.lab import OutsideHost, QubeSpec, ipv6
from tests.lab.boot import enabled_units, exec_start, firewall_scripts, rc_scripts
from tests.lab.qubes_base import (
    IPV6,
    IPV6_DISABLED,
    base_tables,
    chain_for_addr,
    client_chain_create,
    client_chain_fill,
    client_rules,
    connected_ips,
    dnat_dns,
    qubes_firewall_tables,
    qvm_rule_to_nft,
    vif_online,
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


# ---------------------------------------------------------------------------------------
# IPv6 (core-admin qubes/vm/mix/net.py, qubes/features.py; core-agent-linux firewall.py)

P6 = "fd09:24ef:4179::"
REJECT6 = "reject with icmpv6 type admin-prohibited"


def test_vmid_and_ip6_like_core_admin():
    assert ipv6.ip6_for(qid=9) == P6 + "a89:9"
    assert ipv6.ip6_for(qid=300) == P6 + "a89:12c"
    assert ipv6.ip6_for(dispid=4660) == P6 + "a8a:1234"
    for vmid in (1, 9, 254, 255, 256, 300, 508, 509, 10000):
        assert ipv6.vmid_from_ipv4(ipv6.vmid_to_ipv4("10.137", vmid)) == vmid
    assert ipv6.vmid_to_ipv4("10.137", 255) == "10.137.1.1"
    assert ipv6.vmid_from_ipv4("10.137.0.255") is None  # never a default address
    assert ipv6.vmid_from_ipv4("192.168.1.9") is None


def test_ipv6_feature_follows_the_netvm_chain():
    """check_with_netvm: the nearest qube (itself first) having the feature decides; '' is
    off, any other string on ('0' too, as Qubes stores strings); None: not set."""
    qubes = {
        "sys-net": QubeSpec(ip="10.137.0.5", provides_network=True, ipv6="1"),
        "fw": QubeSpec(ip="10.137.0.6", netvm="sys-net", provides_network=True),
        "work": QubeSpec(ip="10.137.0.9", netvm="fw"),
        "off": QubeSpec(ip="10.137.0.10", netvm="fw", ipv6=""),
        "fw-off": QubeSpec(ip="10.137.0.11", netvm="sys-net", provides_network=True, ipv6=False),
        "below-off": QubeSpec(ip="10.137.0.12", netvm="fw-off"),
        "own": QubeSpec(ip="10.137.0.13", netvm="fw-off", ipv6="0"),
        "disp": QubeSpec(ip="10.138.0.7", netvm="fw"),
        "moved": QubeSpec(ip="10.137.5.5", netvm="fw", qid=77),
    }
    net = ipv6.compute(qubes)
    assert net["sys-net"] == ipv6.Net6(True, P6 + "a89:5", P6 + "a89:5", None)
    assert net["fw"] == ipv6.Net6(True, P6 + "a89:6", P6 + "a89:6", P6 + "a89:5")
    assert net["work"] == ipv6.Net6(True, P6 + "a89:9", None, P6 + "a89:6")
    assert net["off"] == ipv6.Net6(False, None, None, None)
    assert net["fw-off"] == ipv6.Net6(False, None, None, None)
    assert net["below-off"] == ipv6.Net6(False, None, None, None)
    # Its own feature gives it an address, but its netvm gives no gateway6: no route.
    assert net["own"] == ipv6.Net6(True, P6 + "a89:d", None, None)
    assert net["disp"].ip6 == P6 + "a8a:7"
    assert net["moved"].ip6 == P6 + "a89:4d"
    assert not ipv6.compute({"a": QubeSpec(ip="10.137.0.5", provides_network=True)})["a"].enabled
    with pytest.raises(ValueError, match="qid"):
        ipv6.compute({"a": QubeSpec(ip="192.168.0.5", provides_network=True, ipv6="1")})


@pytest.mark.parametrize("qubes, message", [
    ({"a": QubeSpec(ip="10.137.0.2", ipv6=1)}, "ipv6 feature"),
    ({"a": QubeSpec(ip="10.137.0.2", qid=0)}, "qid"),
    ({"a": QubeSpec(ip="10.137.0.2", provides_network=True, ipv6="1"),
      "b": QubeSpec(ip="10.137.0.3", netvm="a", qid=2)}, "ip6 .* already used"),
])
def test_bad_ipv6_topologies_are_refused(qubes, message):
    with pytest.raises(ValueError, match=message):
        validate(qubes, [])


def test_bad_ipv6_outside_hosts_are_refused():
    qubes = {"sys-net": QubeSpec(ip="10.137.0.5", provides_network=True)}
    ok = dict(name="lan", uplink="sys-net", ifname="ens6", host_ip="192.168.1.50/24", uplink_ip="192.168.1.10/24")
    validate(qubes, [OutsideHost(**ok, host_ip6="2001:db8:1::50/64", uplink_ip6="2001:db8:1::10/64")])
    with pytest.raises(ValueError, match="go together"):
        validate(qubes, [OutsideHost(**ok, host_ip6="2001:db8:1::50/64")])
    with pytest.raises(ValueError, match="needs a prefix"):
        validate(qubes, [OutsideHost(**ok, host_ip6="2001:db8:1::50", uplink_ip6="2001:db8:1::10/64")])
    with pytest.raises(ValueError, match="not an IPv6"):
        validate(qubes, [OutsideHost(**ok, host_ip6="192.168.1.5/24", uplink_ip6="2001:db8:1::10/64")])
    with pytest.raises(ValueError, match="needs host_ip6"):
        validate(qubes, [OutsideHost(**ok, extra_ips6=["2001:db8:1::51/64"])])


def test_qubesdb_ipv6_keys_follow_core_admin():
    app = entries("work", "10.137.0.9", "10.137.0.8", False, ip6=P6 + "a89:9", gateway6=P6 + "a89:8")
    assert app["/qubes-ip6"] == P6 + "a89:9" and app["/qubes-gateway6"] == P6 + "a89:8"
    assert "/qubes-netvm-gateway6" not in app and "/qubes-netmask6" not in app
    uplink = entries("sys-net", "10.137.0.5", None, True, ["10.137.0.6"], ip6=P6 + "a89:5",
                     netvm_gateway6=P6 + "a89:5", connected6=[P6 + "a89:6"])
    assert "/qubes-ip6" not in uplink  # no netvm: no /qubes-ip6
    assert uplink["/qubes-netvm-gateway6"] == P6 + "a89:5"
    assert uplink["/connected-ips6"] == P6 + "a89:6"
    plain = entries("sys-net", "10.137.0.5", None, True, ["10.137.0.6"])
    assert plain["/connected-ips6"] == "" and "/qubes-netvm-gateway6" not in plain


@pytest.mark.parametrize("rule, nft", [
    ({"action": "accept"}, ["accept"]),
    ({"action": "drop"}, [REJECT6]),
    ({"action": "accept", "proto": "tcp", "dst6": "2001:db8::1/128", "dstports": "443-443"},
     ["ip6 nexthdr tcp ip6 daddr 2001:db8::1/128 tcp dport 443 accept"]),
    ({"action": "accept", "proto": "icmp", "icmptype": "128"}, ["ip6 nexthdr icmpv6 icmpv6 type 128 accept"]),
    ({"action": "drop", "dstports": "80-90"}, ["tcp dport 80-90 " + REJECT6, "udp dport 80-90 " + REJECT6]),
    ({"action": "accept", "dst4": "192.168.1.0/24"}, []),
    ({"action": "accept", "dsthost": "192.168.1.9"}, []),
    ({"action": "accept", "dsthost": "2001:db8::/32"}, ["ip6 daddr 2001:db8::/32 accept"]),
    ({"action": "accept", "specialtarget": "dns"},
     ["ip6 daddr @dns-addr tcp dport 53 accept", "ip6 daddr @dns-addr udp dport 53 accept"]),
])
def test_qvm_firewall_mapping_ipv6(rule, nft):
    assert qvm_rule_to_nft(rule, family=6) == nft


def test_qvm_firewall_ipv6_dns_and_family_mixups():
    dns = {"action": "accept", "specialtarget": "dns"}
    assert qvm_rule_to_nft(dns, release="4.2", family=6) == []  # no IPv6 resolver: rule dropped
    assert qvm_rule_to_nft(dns, dns_servers=["10.139.1.1", "fd00::53"], release="4.2", family=6) == [
        "ip6 daddr { fd00::53/128 } tcp dport 53 accept", "ip6 daddr { fd00::53/128 } udp dport 53 accept"]
    assert qvm_rule_to_nft({"action": "accept", "dsthost": "2001:db8::1"}) == []  # IPv6: not in the ip chain
    with pytest.raises(ValueError, match="not an IPv6 network"):
        qvm_rule_to_nft({"action": "accept", "dst6": "10.0.0.0/8"}, family=6)
    assert client_rules(None, family=6) == ["accept", REJECT6]
    assert client_rules(["drop", "action=accept dst6=2001:db8::/32"], family=6) == [
        "ip6 daddr 2001:db8::/32 accept", REJECT6]


def test_ip6_client_chain_and_elements():
    addr = P6 + "a89:9"
    create = client_chain_create(addr, "4.3")
    assert "table ip6 qubes-firewall" in create and "ip6 saddr {} jump qbs-fd09-24ef-4179--a89-9".format(addr) in create
    assert "chain forward" in client_chain_create(addr, "4.2")
    fill = client_chain_fill(addr, ["accept"], "4.3", ["10.139.1.1", "10.139.1.2"])
    assert fill.splitlines()[:2] == ["flush set ip6 qubes-firewall dns-addr",
                                     "flush chain ip6 qubes-firewall qbs-fd09-24ef-4179--a89-9"]
    assert "ip6 saddr { a, b } drop" in connected_ips(["a", "b"], 6)
    assert vif_online("vif3.0", addr).splitlines() == [
        'add element ip6 qubes allowed {{ "vif3.0" . {} }}'.format(addr),
        "add element ip6 qubes downstream {{ {} }}".format(addr)]


def test_ip6_base_tables_and_the_fixed_qubes_iptables():
    assert base_tables()[2] is IPV6 and base_tables(ipv6_disabled=True)[2] is IPV6_DISABLED
    assert "table ip6 qbs-filter" in IPV6_DISABLED and "policy drop" in IPV6_DISABLED
    assert "chain custom-forward" in IPV6 and "masquerade" in IPV6
