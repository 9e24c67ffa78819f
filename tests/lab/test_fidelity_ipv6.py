"""Fidelity of the lab's IPv6: qubes get it exactly as Qubes OS 4.2 and 4.3 give it (each
test runs once per release, on one lab built per module and release).

Sources (identical in release4.2 and release4.3 where it matters here): core-admin
qubes/vm/mix/net.py (the ``ipv6`` feature via check_with_netvm, addresses), qubes/vm/qubesvm.py
(QubesDB keys); core-agent-linux network/setup-ip (client side), network/vif-route-qubes (netvm
side), network/qubes-ipv6.nft, qubes-ipv6-disabled.nft, qubes-iptables (which ip6 ruleset
loads), vm-systemd/network-proxy-setup.sh (IPv6 forwarding), qubesagent/firewall.py (the
``ip6 qubes-firewall`` table).

Topology: the manual page's (tests.lab.seed) with ``ipv6 1`` on sys-net, so every qube has
IPv6, plus, under sys-firewall: ``nov6`` (``ipv6 ''``: no IPv6), ``narrow`` (a qvm-firewall
list with a dst6 rule) and the disposable ``disp3`` (dispid 3).  The LAN host has
2001:db8:1::50 (+::51) on sys-net's ens6 (2001:db8:1::10).

A probe that must fail uses a 1 s timeout: a dropped SYN times out, a reject answers at once.
"""

import json

import pytest

from tests.lab import Lab, QubeSpec, netns
from tests.lab.preflight import require_lab
from tests.lab.qubes_base import chain_for_addr
from tests.lab.seed import seed_outside, seed_qubes

pytestmark = pytest.mark.lab

DROP = 1.0
PREFIX = "fd09:24ef:4179::"
SYS_NET_LAN6 = "2001:db8:1::10"
LAN6 = "2001:db8:1::50"


def v6(qid):
    return "{}a89:{:x}".format(PREFIX, qid)


def v6_qubes():
    qubes = seed_qubes(ipv6=True)
    qubes.update({
        "nov6": QubeSpec(ip="10.137.0.12", netvm="sys-firewall", ipv6=""),
        "narrow": QubeSpec(ip="10.137.0.13", netvm="sys-firewall", firewall_rules=[
            "action=accept proto=tcp dst6={}/128 dstports=8080-8080".format(LAN6),
            "action=accept proto=udp dst4=192.168.1.50/32 dstports=5353-5353",
            "action=drop"]),
        "disp3": QubeSpec(ip="10.138.0.3", netvm="sys-firewall"),
    })
    return qubes


@pytest.fixture(scope="module")
def v6lab(tmp_path_factory, release):
    require_lab()
    with Lab(v6_qubes(), seed_outside(), workdir=tmp_path_factory.mktemp("v6-lab"), release=release) as lab:
        yield lab


_CLEAN = "".join("flush chain {} qubes {}\n".format(fam, chain)
                 for fam in ("ip", "ip6") for chain in ("custom-input", "custom-forward"))


@pytest.fixture
def fresh_v6lab(v6lab):
    """The module lab, cleaned after the test more cheaply than Lab.reset() (which reboots
    every qube): servers stopped, custom-input/custom-forward emptied, qvm-firewall lists
    back to the topology's.  Tests undo routes and addresses they add themselves."""
    try:
        yield v6lab
    finally:
        v6lab.stop_servers()
        for qube in v6lab.order:
            v6lab.nft_load(qube, _CLEAN)
        for qube, spec in v6_qubes().items():
            if v6lab.spec(qube).firewall_rules != spec.firewall_rules:
                v6lab.set_firewall_rules(qube, spec.firewall_rules)


def _chains(ruleset, family, table):
    return {item["chain"]["name"]: item["chain"] for item in ruleset["nftables"]
            if "chain" in item and item["chain"]["family"] == family and item["chain"]["table"] == table}


def _hook(chain):
    return (chain.get("type"), chain.get("hook"), chain.get("prio"), chain.get("policy"))


def _qdb(lab, qube, key):
    proc = lab.run(qube, ["qubesdb-read", key], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _counter(lab, qube, family, table, chain, needle):
    """Packets counted by the first rule of the chain whose JSON contains needle."""
    listing = json.loads(lab.run(qube, ["nft", "-j", "list", "chain", family, table, chain]).stdout)
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule is not None and needle in json.dumps(rule["expr"]):
            return [e["counter"]["packets"] for e in rule["expr"] if "counter" in e][0]
    raise AssertionError("no rule with {!r} in {} {} {}".format(needle, qube, table, chain))


def _addrs6(lab, qube, dev):
    doc = json.loads(lab.run(qube, ["ip", "-j", "-6", "addr", "show", "dev", dev]).stdout)
    return sorted((a["local"], a["prefixlen"]) for a in doc[0]["addr_info"] if a.get("scope") != "link")


def _client_jumps6(lab, qube):
    chain = "forward" if lab.release == "4.2" else "qubes-forward"
    return [r for r in lab.chain_rules(qube, chain, "qubes-firewall", "ip6") if "jump qbs-" in r]


# ---------------------------------------------------------------------------------------
# Addresses, QubesDB, plumbing


def test_addresses_and_qubesdb_as_core_admin_writes_them(v6lab):
    """ip6 = fd09:24ef:4179::a89:<qid hex> (disposables ::a8a:<dispid hex>), from the ipv6
    feature on sys-net down the chain; ipv6 '' turns it off.  QubesDB: /qubes-ip6 and
    /qubes-gateway6 (= the netvm's ip6) for clients, /qubes-netvm-gateway6 (own ip6) for
    providers, /connected-ips6 the clients' ip6."""
    lab = v6lab
    assert lab.ip6("work") == v6(9) and lab.ip6("web") == v6(11) and lab.ip6("sys-net") == v6(5)
    assert lab.ip6("disp3") == PREFIX + "a8a:3"
    assert lab.ip6("nov6") is None and not lab.ipv6_enabled("nov6") and lab.ipv6_enabled("work")

    assert _qdb(lab, "work", "/qubes-ip6") == v6(9)
    assert _qdb(lab, "work", "/qubes-gateway6") == v6(8)
    assert _qdb(lab, "work", "/qubes-netvm-gateway6") is None
    assert _qdb(lab, "disp3", "/qubes-ip6") == PREFIX + "a8a:3"
    assert _qdb(lab, "sys-firewall-2", "/qubes-netvm-gateway6") == v6(8)
    assert _qdb(lab, "sys-firewall-2", "/connected-ips6") == "{} {}".format(v6(9), v6(10))
    assert _qdb(lab, "sys-firewall", "/connected-ips6") == " ".join(
        [v6(7), v6(11), v6(13), PREFIX + "a8a:3"])
    assert _qdb(lab, "sys-firewall", "/connected-ips") == "10.137.0.7 10.137.0.11 10.137.0.12 10.137.0.13 10.138.0.3"
    assert _qdb(lab, "sys-net", "/qubes-ip6") is None  # no netvm: no /qubes-ip6 (core-admin)
    assert _qdb(lab, "sys-net", "/qubes-netvm-gateway6") == v6(5)
    for key in ("/qubes-ip6", "/qubes-gateway6", "/qubes-netvm-gateway6"):
        assert _qdb(lab, "nov6", key) is None, key
    assert _qdb(lab, "nov6", "/qubes-ip") == "10.137.0.12"


def test_plumbing_as_setup_ip_and_vif_route_qubes(v6lab):
    """Client: eth0 has ip6/128, the gateway6 as permanent neighbour fe:ff:ff:ff:ff:ff, a
    route to gateway6/128 and the default via gateway6 (onlink).  Netvm, per client with an
    ip6: permanent neighbour, ip6 qubes allowed/downstream elements, a route with metric
    32752-domid, its own ip6/128 on the vif, proxy_ndp=1; IPv6 forwarding on in providers with
    IPv6.  A client without IPv6 gets none of it."""
    lab = v6lab
    assert _addrs6(lab, "work", "eth0") == [(v6(9), 128)]
    routes = lab.run("work", ["ip", "-6", "route"]).stdout
    assert "default via {} dev eth0".format(v6(8)) in routes and "onlink" in routes
    assert "{} dev eth0".format(v6(8)) in routes
    neigh = lab.run("work", ["ip", "-6", "neigh", "show", v6(8)]).stdout
    assert "lladdr fe:ff:ff:ff:ff:ff" in neigh and "PERMANENT" in neigh

    vif = lab.vif("work")
    assert _addrs6(lab, "sys-firewall-2", vif) == [(v6(8), 128)]
    assert "{} dev {} metric {}".format(v6(9), vif, 32752 - lab.domid("work")) in \
        lab.run("sys-firewall-2", ["ip", "-6", "route"]).stdout
    neigh = lab.run("sys-firewall-2", ["ip", "-6", "neigh", "show", v6(9)]).stdout
    assert "dev {}".format(vif) in neigh and "PERMANENT" in neigh
    assert netns.read_proc(lab.netns("sys-firewall-2"), "net/ipv6/conf/{}/proxy_ndp".format(vif)) == "1"
    allowed = lab.run("sys-firewall-2", ["nft", "-j", "list", "set", "ip6", "qubes", "allowed"]).stdout
    assert '"{}"'.format(vif) in allowed and v6(9) in allowed
    downstream = lab.run("sys-firewall-2", ["nft", "-j", "list", "set", "ip6", "qubes", "downstream"]).stdout
    assert v6(9) in downstream and v6(10) in downstream
    for qube in ("sys-net", "sys-firewall", "sys-firewall-2"):
        assert netns.read_proc(lab.netns(qube), "net/ipv6/conf/all/forwarding") == "1", qube
    assert netns.read_proc(lab.netns("work"), "net/ipv6/conf/all/forwarding") == "0"

    # nov6: no address but link-local, no IPv6 route out, nothing for it in its netvm.
    assert _addrs6(lab, "nov6", "eth0") == []
    assert "default" not in lab.run("nov6", ["ip", "-6", "route"]).stdout
    nov6_vif = lab.vif("nov6")
    allowed = lab.run("sys-firewall", ["nft", "-j", "list", "set", "ip6", "qubes", "allowed"]).stdout
    assert '"{}"'.format(nov6_vif) not in allowed and '"{}"'.format(lab.vif("web")) in allowed
    assert _addrs6(lab, "sys-firewall", nov6_vif) == [(v6(6), 128)]  # its netvm's own, as on every vif
    routes = lab.run("sys-firewall", ["ip", "-6", "route", "show", "dev", nov6_vif]).stdout.splitlines()
    assert routes and all("proto kernel" in line for line in routes), routes  # no route to a client ip6


# ---------------------------------------------------------------------------------------
# The ip6 tables


IP6_QUBES_CHAINS = {
    "antispoof": (None, None, None, None),
    "prerouting": ("filter", "prerouting", -300, "accept"),
    "postrouting": ("nat", "postrouting", 100, "accept"),
    "_icmpv6": (None, None, None, None),
    "input": ("filter", "input", 0, "drop"),
    "forward": ("filter", "forward", 0, "accept"),
    "custom-input": (None, None, None, None),
    "custom-forward": (None, None, None, None),
}


def test_ip6_tables_as_qubes_loads_them(v6lab):
    """Every qube, with IPv6 or not (Qubes' qubes-iptables bug), has the full ``ip6 qubes`` of
    qubes-antispoof.nft + qubes-ipv6.nft and no ``ip6 qbs-filter``.  Providers have ``ip6
    qubes-firewall`` with one qbs- chain per client ip6 (none for nov6), jumped to from forward
    (4.2) or qubes-forward (4.3); a dst6 rule lands in the ip6 chain only, with icmpv6
    admin-prohibited rejects; /connected-ips6 fills prerouting/postrouting."""
    lab = v6lab
    for qube in lab.order:
        ruleset = lab.nft_json(qube)
        chains = _chains(ruleset, "ip6", "qubes")
        assert {name: _hook(c) for name, c in chains.items()} == IP6_QUBES_CHAINS, qube
        assert not _chains(ruleset, "ip6", "qbs-filter"), qube
    assert lab.chain_rules("nov6", "input", family="ip6") == [
        "jump custom-input",
        "ct state invalid counter drop",
        "ct state established,related accept",
        "iifgroup 2 goto _icmpv6",
        'iif "lo" accept',
        "ip6 saddr fe80::/64 ip6 daddr fe80::/64 udp dport 546 accept",
        "meta l4proto ipv6-icmp accept",
        "counter",
    ]
    assert lab.chain_rules("nov6", "_icmpv6", family="ip6") == [
        "meta l4proto != ipv6-icmp counter reject with icmpv6 admin-prohibited",
        "icmpv6 type { nd-router-advert, nd-redirect } counter drop",
        "accept",
    ]
    assert lab.chain_rules("sys-firewall", "postrouting", family="ip6") == [
        "oifgroup 2 accept", 'oif "lo" accept', "masquerade"]
    assert lab.chain_rules("sys-firewall", "forward", family="ip6") == [
        "jump custom-forward", "ct state invalid counter drop",
        "ct state established,related accept", "oifgroup 2 counter drop"]
    assert lab.chain_rules("nov6", "custom-input", family="ip6") == []

    fw = _chains(lab.nft_json("sys-firewall"), "ip6", "qubes-firewall")
    assert _hook(fw["forward"]) == ("filter", "forward", 0, "drop")
    qbs = sorted(name for name in fw if name.startswith("qbs-"))
    assert qbs == sorted(chain_for_addr(lab.ip6(c)) for c in ("sys-vpn", "web", "narrow", "disp3"))
    assert chain_for_addr(lab.ip6("narrow")) == "qbs-fd09-24ef-4179--a89-d"
    assert _client_jumps6(lab, "sys-firewall") == [
        "ip6 saddr {} jump {}".format(lab.ip6(c), chain_for_addr(lab.ip6(c)))
        for c in ("sys-vpn", "web", "narrow", "disp3")]
    assert lab.chain_rules("sys-firewall", chain_for_addr(lab.ip6("web")), "qubes-firewall", "ip6") == [
        "accept", "reject with icmpv6 admin-prohibited"]
    assert lab.chain_rules("sys-firewall", chain_for_addr(lab.ip6("narrow")), "qubes-firewall", "ip6") == [
        "ip6 daddr {} tcp dport 8080 accept".format(LAN6),
        "reject with icmpv6 admin-prohibited", "reject with icmpv6 admin-prohibited"]
    assert lab.chain_rules("sys-firewall", "qbs-10-137-0-13", "qubes-firewall") == [
        "ip daddr 192.168.1.50 udp dport 5353 accept",
        "reject with icmp admin-prohibited", "reject with icmp admin-prohibited"]
    assert lab.chain_rules("sys-firewall-2", "prerouting", "qubes-firewall", "ip6") == [
        'iifname != "vif*" ip6 saddr {{ {}, {} }} drop'.format(v6(9), v6(10))]
    assert lab.chain_rules("sys-firewall-2", "postrouting", "qubes-firewall", "ip6") == [
        'oifname != "vif*" ip6 daddr {{ {}, {} }} drop'.format(v6(9), v6(10))]
    if lab.release == "4.3":
        doc = json.loads(lab.run("sys-firewall", ["nft", "-j", "list", "set", "ip6", "qubes-firewall",
                                                  "dns-addr"]).stdout)
        assert [item["set"].get("elem", []) for item in doc["nftables"] if "set" in item] == [[]]


def test_fixed_qubes_iptables_loads_ipv6_disabled(make_lab):
    """With qubes-iptables fixed (its IPv6 test working), a qube with neither /qubes-ip6 nor
    /qubes-netvm-gateway6 gets ``ip6 qbs-filter`` (input and forward policy drop) and, from
    qubes-antispoof.nft, only the antispoof part of ``ip6 qubes``: no custom-input or
    custom-forward to add rules to.  Qubes with IPv6 still get the full table and reach the
    LAN over IPv6; the qube without IPv6 still reaches it over IPv4."""
    qubes = {
        "sys-net": QubeSpec(ip="10.137.0.5", provides_network=True, ipv6="1"),
        "work": QubeSpec(ip="10.137.0.9", netvm="sys-net"),
        "nov6": QubeSpec(ip="10.137.0.12", netvm="sys-net", ipv6=""),
    }
    lab = make_lab(qubes, seed_outside()[:1], fixed_qubes_iptables=True)
    ruleset = lab.nft_json("nov6")
    assert {n: _hook(c) for n, c in _chains(ruleset, "ip6", "qbs-filter").items()} == {
        "input": ("filter", "input", 0, "drop"), "forward": ("filter", "forward", 0, "drop")}
    assert sorted(_chains(ruleset, "ip6", "qubes")) == ["antispoof", "prerouting"]
    assert lab.chain_rules("nov6", "input", "qbs-filter", "ip6") == ['iif "lo" accept', "counter"]
    assert lab.run("nov6", ["nft", "add", "rule", "ip6", "qubes", "custom-input", "accept"], check=False).returncode != 0
    for qube in ("sys-net", "work"):
        ruleset = lab.nft_json(qube)
        assert set(_chains(ruleset, "ip6", "qubes")) == set(IP6_QUBES_CHAINS), qube
        assert not _chains(ruleset, "ip6", "qbs-filter"), qube
    lab.serve_tcp("lan", 8080, report_peer=True)
    assert lab.probe_tcp6("work", "lan", 8080) == "lan:8080:" + SYS_NET_LAN6
    assert lab.probe_tcp("nov6", "lan", 8080) == "lan:8080:192.168.1.10"


# ---------------------------------------------------------------------------------------
# Traffic


def test_clients_reach_lan_over_ipv6_masqueraded_at_each_hop(fresh_v6lab):
    """work (four providers down), web and a disposable reach a LAN server over IPv6, TCP and
    UDP; the server sees only sys-net's LAN address (NAT66 at every hop), a service qube in
    between sees the ip6 of the firewall qube below it; IPv4 works as before."""
    lab = fresh_v6lab
    lab.serve_tcp("lan", 8080, report_peer=True)
    lab.serve_udp("lan", 5353, report_peer=True)
    for client in ("work", "web", "disp3"):
        assert lab.probe_tcp6(client, "lan", 8080) == "lan:8080:" + SYS_NET_LAN6, client
    assert lab.probe_udp6("work", "lan", 5353) == "lan:5353:" + SYS_NET_LAN6
    assert lab.probe_tcp6("work", "2001:db8:1::51", 8080) == "lan:8080:" + SYS_NET_LAN6
    assert lab.probe_tcp("work", "lan", 8080) == "lan:8080:192.168.1.10"

    lab.serve_tcp("sys-vpn", 8081, report_peer=True)
    lab.sh("sys-vpn", "nft add rule ip6 qubes custom-input tcp dport 8081 accept")
    assert lab.probe_tcp6("work", "sys-vpn", 8081) == "sys-vpn:8081:" + v6(8)
    # Without that rule, sys-vpn's ip6 qubes input rejects (via _icmpv6) what a client sends it.
    assert lab.probe_tcp6_result("web", "sys-firewall", 8081, timeout=DROP).error == "unreachable"


def test_lan_cannot_open_a_connection_to_a_client(fresh_v6lab):
    """Even with routes to web's ip6 in the LAN host and sys-net, a new connection from the
    LAN dies in sys-net's ``ip6 qubes forward`` (oifgroup 2 drop), and one from sys-net dies in
    sys-firewall's."""
    lab = fresh_v6lab
    lab.serve_tcp("web", 443)
    lab.sh("lan", "ip -6 route add {}/48 via {}".format(PREFIX, SYS_NET_LAN6))
    lab.sh("sys-net", "ip -6 route add {} via {} dev {}".format(v6(11), v6(6), lab.vif("sys-firewall")))
    try:
        before = _counter(lab, "sys-net", "ip6", "qubes", "forward", "oifgroup")
        assert lab.probe_tcp6("lan", "web", 443, timeout=DROP) is None
        assert _counter(lab, "sys-net", "ip6", "qubes", "forward", "oifgroup") > before
        before = _counter(lab, "sys-firewall", "ip6", "qubes", "forward", "oifgroup")
        assert lab.probe_tcp6("sys-net", "web", 443, timeout=DROP) is None
        assert _counter(lab, "sys-firewall", "ip6", "qubes", "forward", "oifgroup") > before
    finally:
        lab.sh("lan", "ip -6 route del {}/48".format(PREFIX), check=False)
        lab.sh("sys-net", "ip -6 route del {}".format(v6(11)), check=False)


def test_client_without_ipv6_is_dropped_at_its_netvm(fresh_v6lab):
    """nov6 (ipv6 '') cannot send IPv6 out (no route); when it forces an address and a
    route by hand, its netvm drops every packet in ``ip6 qubes antispoof`` (no allowed element
    for its vif).  Its IPv4 works."""
    lab = fresh_v6lab
    lab.serve_tcp("lan", 8080)
    assert lab.probe_tcp6_result("nov6", LAN6, 8080, timeout=DROP).error == "unreachable"  # no route
    assert lab.probe_tcp("nov6", "lan", 8080) == "lan:8080"
    lab.sh("nov6", "ip -6 addr add {}/128 dev eth0 nodad && ip -6 route add default via {} dev eth0 onlink && "
                   "ip -6 neigh replace {} lladdr fe:ff:ff:ff:ff:ff dev eth0 nud permanent".format(
                       v6(12), v6(6), v6(6)))
    try:
        before = _counter(lab, "sys-firewall", "ip6", "qubes", "antispoof", "drop")
        assert lab.probe_tcp6_result("nov6", LAN6, 8080, timeout=DROP).error == "timeout"
        assert _counter(lab, "sys-firewall", "ip6", "qubes", "antispoof", "drop") > before
    finally:
        lab.sh("nov6", "ip -6 route del default; ip -6 neigh del {} dev eth0; ip -6 addr del {}/128 dev eth0".format(
            v6(6), v6(12)), check=False)


def test_qvm_firewall_dst6_rule_enforced_by_the_firewall_qube(fresh_v6lab):
    """narrow's list [accept tcp dst6=LAN6 port 8080, accept udp dst4=192.168.1.50 port 5353,
    drop]: over IPv6 exactly tcp to LAN6:8080 passes sys-firewall, anything else is rejected
    (icmpv6 admin-prohibited, at once); over IPv4 the dst6 rule does not apply.  Replacing
    the list refills both chains."""
    lab = fresh_v6lab
    lab.serve_tcp("lan", 8080)
    lab.serve_tcp("lan", 8081)
    lab.serve_udp("lan", 5353)
    assert lab.probe_tcp6("narrow", "lan", 8080) == "lan:8080"
    assert lab.probe_tcp6_result("narrow", "lan", 8081, timeout=DROP).error == "unreachable"
    assert lab.probe_tcp6_result("narrow", "2001:db8:1::51", 8080, timeout=DROP).error == "unreachable"
    assert lab.probe_udp6_result("narrow", "lan", 5353, timeout=DROP).error == "unreachable"
    assert lab.probe_tcp_result("narrow", "lan", 8080, timeout=DROP).error == "unreachable"
    assert lab.probe_udp("narrow", "lan", 5353) == "lan:5353"

    lab.set_firewall_rules("narrow", ["action=accept dst6=2001:db8:1::/64", "action=drop"])
    assert lab.probe_tcp6("narrow", "2001:db8:1::51", 8081) == "lan:8081"
    assert lab.probe_udp_result("narrow", "lan", 5353, timeout=DROP).error == "unreachable"


def test_networking_between_two_qubes_by_hand_over_ipv6(fresh_v6lab):
    """The manual page's recipe typed for ip6 (custom-forward in sys-firewall-2, custom-input
    in build) lets work reach build over IPv6, unNATed; not build -> work, not web -> build;
    the source's qvm-firewall list still applies, through its ip6 chain."""
    lab = fresh_v6lab
    lab.sh("sys-firewall-2", "nft add rule ip6 qubes custom-forward ip6 saddr {} ip6 daddr {} "
                             "ct state new,established,related counter accept".format(v6(9), v6(10)))
    lab.sh("build", "nft add rule ip6 qubes custom-input ip6 saddr {} ct state new,established,related "
                    "counter accept".format(v6(9)))
    lab.serve_tcp("build", 22, report_peer=True)
    lab.serve_tcp("work", 22, report_peer=True)
    assert lab.probe_tcp6("work", "build", 22) == "build:22:" + v6(9)
    assert lab.probe_tcp6("build", "work", 22, timeout=DROP) is None
    assert lab.probe_tcp6("web", "build", 22, timeout=DROP) is None
    assert lab.probe_tcp("work", "build", 22, timeout=DROP) is None  # IPv4 still closed

    lab.set_firewall_rules("work", ["action=drop"])
    assert lab.probe_tcp6_result("work", "build", 22, timeout=DROP).error == "unreachable"


def test_restarts_keep_ipv6(fresh_v6lab):
    """A restarted client gets a new vif whose ip6 elements replace the old ones, and its
    network hooks run once per address (vif-route-qubes loops over the vif's ip list: the
    IPv4 address, then the IPv6 one); restarting qubes-firewall rebuilds the ip6 client
    chains; IPv6 flows again."""
    lab = fresh_v6lab
    hook = lab.rw_config("sys-firewall") / "network-hooks.d" / "10-log"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text('#!/bin/sh\necho "$*" >> "$QF_LAB_RW_CONFIG/hooks"\n')
    hook.chmod(0o755)
    try:
        old_vif = lab.vif("web")
        lab.restart_qube("web")
        new_vif = lab.vif("web")
        allowed = lab.run("sys-firewall", ["nft", "-j", "list", "set", "ip6", "qubes", "allowed"]).stdout
        assert '"{}"'.format(new_vif) in allowed and '"{}"'.format(old_vif) not in allowed
        assert (lab.rw_config("sys-firewall") / "hooks").read_text().splitlines() == [
            "online {} vif 10.137.0.11".format(new_vif), "online {} vif {}".format(new_vif, v6(11))]
        assert _addrs6(lab, "web", "eth0") == [(v6(11), 128)]

        lab.restart_qubes_firewall("sys-firewall")
        assert chain_for_addr(v6(11)) in _chains(lab.nft_json("sys-firewall"), "ip6", "qubes-firewall")
        assert _client_jumps6(lab, "sys-firewall")[1] == "ip6 saddr {} jump {}".format(v6(11), chain_for_addr(v6(11)))
        lab.serve_tcp("lan", 8080, report_peer=True)
        assert lab.probe_tcp6("web", "lan", 8080) == "lan:8080:" + SYS_NET_LAN6
    finally:
        hook.unlink()
        (lab.rw_config("sys-firewall") / "hooks").unlink(missing_ok=True)
