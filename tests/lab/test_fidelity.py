"""Fidelity of the lab: packets in it pass or die exactly where they would on Qubes OS 4.2
and 4.3 (every test using seed_lab or make_lab runs once per release).

Each test names the fact it proves (Qubes' own behaviour, the manual page's sections
"Enabling networking between two qubes" and "Port forwarding to a qube from the outside
world").  Topology: tests.lab.seed (sys-net, sys-firewall, sys-vpn, sys-firewall-2,
work, build, web; hosts lan on ens6 and wan on ens7).

A probe that must fail uses a 1 s timeout: a dropped SYN times out, a reject answers at once.
"""

import json
import os
import subprocess
import time

import pytest

from tests.lab import Lab, OutsideHost, QubeSpec, cleanup_stale, netns
from tests.lab.qubes_base import chain_for_addr

pytestmark = pytest.mark.lab

DROP = 1.0  # timeout of probes expected to fail
SYS_NET_LAN = "192.168.1.10"
SYS_NET_WAN = "172.30.0.10"


def _chains(ruleset, family, table):
    return [item["chain"] for item in ruleset["nftables"]
            if "chain" in item and item["chain"]["family"] == family and item["chain"]["table"] == table]


def _tables(ruleset):
    return {(item["table"]["family"], item["table"]["name"]) for item in ruleset["nftables"] if "table" in item}


def _hook(chain):
    return (chain.get("type"), chain.get("hook"), chain.get("prio"), chain.get("policy"))


def _root_links():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _new_lab_like_links(before):
    """Root-namespace links that appeared since `before` and could be lab interfaces."""
    return sorted(name for name in _root_links() - before if name.startswith(("vif", "ens", "eth", "qf")))


def _client_jumps(lab, qube):
    """The per-client jumps of qubes-firewall, checking where each release keeps them: 4.2
    appends them to forward; 4.3's forward ends with `jump qubes-forward`, which holds them."""
    forward = lab.chain_rules(qube, "forward", "qubes-firewall")
    head = ["ct state established,related accept", 'iifname != "vif*" accept']
    if lab.release == "4.2":
        assert forward[:2] == head
        return forward[2:]
    assert forward == head + ["jump qubes-forward"]
    return lab.chain_rules(qube, "qubes-forward", "qubes-firewall")


def _dns_addr(lab, qube):
    doc = json.loads(lab.run(qube, ["nft", "-j", "list", "set", "ip", "qubes-firewall", "dns-addr"]).stdout)
    return [item["set"].get("elem", []) for item in doc["nftables"] if "set" in item][0]


def _counter_packets(lab, qube, table, chain, needle):
    """Packets counted by the first rule of chain containing needle."""
    listing = json.loads(lab.run(qube, ["nft", "-j", "list", "chain", "ip", table, chain]).stdout)
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        text = json.dumps(rule["expr"])
        if needle in text:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return expr["counter"]["packets"]
    raise AssertionError("no rule with {!r} in {} {}".format(needle, qube, chain))


# ---------------------------------------------------------------------------------------
# The base ruleset and plumbing, as Qubes' network/*.nft files and vif scripts set them up


def test_base_ruleset_matches_qubes(seed_lab):
    """Every qube has ip/ip6 qubes with the 4.2 chains (type, hook, priority, policy, order
    and rules); only providers have dnat-dns and the qubes-firewall tables; each client has a
    qbs- chain in its netvm holding Qubes' default [accept] then the admin-prohibited reject;
    vif set elements exist; no inet qubes-nat-accel."""
    lab = seed_lab
    expected_hooks = {
        "prerouting": ("filter", "prerouting", -300, "accept"),
        "antispoof": (None, None, None, None),
        "postrouting": ("nat", "postrouting", 100, "accept"),
        "input": ("filter", "input", 0, "drop"),
        "forward": ("filter", "forward", 0, "accept"),
        "custom-input": (None, None, None, None),
        "custom-forward": (None, None, None, None),
        "dnat-dns": ("nat", "prerouting", -100, "accept"),
    }
    for name, spec in lab.qubes.items():
        ruleset = lab.nft_json(name)
        chains = _chains(ruleset, "ip", "qubes")
        names = [c["name"] for c in chains]
        want = list(expected_hooks) if spec.provides_network else list(expected_hooks)[:-1]
        assert names == want, name
        for chain in chains:
            assert _hook(chain) == expected_hooks[chain["name"]], (name, chain["name"])
        tables = _tables(ruleset)
        assert ("ip6", "qubes") in tables
        assert ("inet", "qubes-nat-accel") not in tables
        assert (("ip", "qubes-firewall") in tables) == spec.provides_network, name
        assert lab.chain_rules(name, "custom-input") == []
        assert lab.chain_rules(name, "custom-forward") == []
        ip_forward = netns.read_proc(lab.netns(name), "net/ipv4/ip_forward")
        assert ip_forward == ("1" if spec.provides_network else "0"), name

    assert lab.chain_rules("work", "input") == [
        "jump custom-input",
        "ct state invalid counter drop",
        "iifgroup 2 udp dport 68 counter drop",
        "ct state established,related accept",
        "iifgroup 2 meta l4proto icmp accept",
        'iif "lo" accept',
        "iifgroup 2 counter reject with icmp host-prohibited",
        "counter",
    ]
    assert lab.chain_rules("sys-firewall", "forward") == [
        "jump custom-forward",
        "ct state invalid counter drop",
        "ct state established,related accept",
        "oifgroup 2 counter drop",
    ]
    assert lab.chain_rules("sys-firewall", "postrouting") == ["oifgroup 2 accept", 'oif "lo" accept', "masquerade"]
    assert lab.chain_rules("sys-firewall", "dnat-dns") == [
        "ip daddr 10.139.1.1 udp dport 53 dnat to 10.139.1.1",
        "ip daddr 10.139.1.1 tcp dport 53 dnat to 10.139.1.1",
        "ip daddr 10.139.1.2 udp dport 53 dnat to 10.139.1.2",
        "ip daddr 10.139.1.2 tcp dport 53 dnat to 10.139.1.2",
    ]
    # sys-net has no upstream resolver in the lab: Qubes then drops virtual-DNS queries.
    assert lab.chain_rules("sys-net", "dnat-dns")[0] == "ip daddr 10.139.1.1 udp dport 53 drop"

    fw_chains = {c["name"]: c for c in _chains(lab.nft_json("sys-firewall-2"), "ip", "qubes-firewall")}
    assert _hook(fw_chains["forward"]) == ("filter", "forward", 0, "drop")
    assert _hook(fw_chains["prerouting"]) == ("filter", "prerouting", -300, "accept")
    assert _hook(fw_chains["postrouting"]) == ("filter", "postrouting", -300, "accept")
    assert _client_jumps(lab, "sys-firewall-2") == [
        "ip saddr 10.137.0.9 jump qbs-10-137-0-9",
        "ip saddr 10.137.0.10 jump qbs-10-137-0-10",
    ]
    if lab.release == "4.3":
        assert _hook(fw_chains["qubes-forward"]) == (None, None, None, None)
        assert _dns_addr(lab, "sys-firewall-2") == ["10.139.1.1", "10.139.1.2"]
    else:
        assert "qubes-forward" not in fw_chains
        assert "dns-addr" not in lab.run("sys-firewall-2", ["nft", "list", "table", "ip", "qubes-firewall"]).stdout
    for client in ("work", "build"):
        assert lab.chain_rules("sys-firewall-2", chain_for_addr(lab.ip(client)), "qubes-firewall") == [
            "accept", "reject with icmp admin-prohibited"]
    assert lab.chain_rules("sys-firewall-2", "prerouting", "qubes-firewall") == [
        'iifname != "vif*" ip saddr { 10.137.0.9, 10.137.0.10 } drop']

    allowed = lab.run("sys-firewall-2", ["nft", "-j", "list", "set", "ip", "qubes", "allowed"]).stdout
    for client in ("work", "build"):
        assert '"{}"'.format(lab.vif(client)) in allowed and lab.ip(client) in allowed
    assert lab.vif("work").startswith("vif")


def test_plumbing_matches_qubes(seed_lab):
    """Client eth0 is group 1 with IP/32, a scope-link route to the gateway and an onlink
    default; the netvm's vif is group 2 with the netvm's own IP/32, proxy_arp and a /32 route
    to the client; physical NICs stay in group 0; QubesDB keys are those of core-admin."""
    lab = seed_lab
    link = json.loads(lab.run("work", ["ip", "-j", "-d", "link", "show", "eth0"]).stdout)[0]
    assert str(link["group"]) == "1"
    addrs = json.loads(lab.run("work", ["ip", "-j", "-4", "addr", "show", "eth0"]).stdout)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.137.0.9", 32)]
    routes = lab.run("work", ["ip", "-4", "route"]).stdout
    assert "default via 10.137.0.8 dev eth0 onlink" in routes
    assert "10.137.0.8 dev eth0 scope link" in routes

    vif = lab.vif("work")
    link = json.loads(lab.run("sys-firewall-2", ["ip", "-j", "-d", "link", "show", vif]).stdout)[0]
    assert str(link["group"]) == "2"
    addrs = json.loads(lab.run("sys-firewall-2", ["ip", "-j", "-4", "addr", "show", vif]).stdout)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.137.0.8", 32)]
    assert netns.read_proc(lab.netns("sys-firewall-2"), "net/ipv4/conf/{}/proxy_arp".format(vif)) == "1"
    assert "10.137.0.9 dev {}".format(vif) in lab.run("sys-firewall-2", ["ip", "-4", "route"]).stdout
    link = json.loads(lab.run("sys-net", ["ip", "-j", "-d", "link", "show", "ens6"]).stdout)[0]
    assert str(link["group"]) in ("0", "default")

    def qdb(qube, key):
        proc = lab.run(qube, ["qubesdb-read", key], check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    assert qdb("work", "/name") == "work"
    assert qdb("work", "/qubes-ip") == "10.137.0.9"
    assert qdb("work", "/qubes-gateway") == "10.137.0.8"
    assert qdb("work", "/qubes-netvm-gateway") is None
    assert qdb("sys-firewall-2", "/qubes-netvm-gateway") == "10.137.0.8"
    assert qdb("sys-firewall-2", "/connected-ips") == "10.137.0.9 10.137.0.10"
    assert qdb("sys-net", "/qubes-ip") is None  # no netvm, no /qubes-ip (core-admin)
    assert qdb("sys-net", "/qubes-netvm-gateway") == "10.137.0.5"
    assert qdb("web", "/no-such-key") is None

    # No ipv6 feature anywhere (Qubes' default): no IPv6 keys, addresses, routes, client
    # chains or forwarding, though the outside links carry IPv6 (test_fidelity_ipv6.py has
    # the rest).
    assert qdb("work", "/qubes-ip6") is None and qdb("work", "/qubes-gateway6") is None
    assert qdb("sys-firewall-2", "/qubes-netvm-gateway6") is None
    assert qdb("sys-firewall-2", "/connected-ips6") == ""
    assert lab.run("work", ["ip", "-6", "addr", "show", "scope", "global"]).stdout == ""
    assert "default" not in lab.run("work", ["ip", "-6", "route"]).stdout
    assert netns.read_proc(lab.netns("sys-firewall-2"), "net/ipv6/conf/all/forwarding") == "0"
    assert "qbs-" not in lab.run("sys-firewall-2", ["nft", "list", "table", "ip6", "qubes-firewall"]).stdout
    assert "2001:db8:1::10/64" in lab.run("sys-net", ["ip", "-6", "addr", "show", "dev", "ens6"]).stdout


# ---------------------------------------------------------------------------------------
# 1. The base ruleset alone


def test_base_ruleset_blocks_port_forward_and_inter_qube(fresh_seed_lab):
    """With Qubes' base ruleset only: the outside cannot reach a service in web through
    sys-net's LAN address, work cannot reach build (same firewall qube), and web cannot
    reach build (other branch)."""
    lab = fresh_seed_lab
    lab.serve_tcp("web", 443)
    lab.serve_tcp("build", 22)
    assert lab.probe_tcp("web", "127.0.0.1", 443) == "web:443"  # the service itself is up
    assert lab.probe_tcp("build", "127.0.0.1", 22) == "build:22"

    assert lab.probe_tcp("lan", SYS_NET_LAN, 443, timeout=DROP) is None
    assert lab.probe_tcp("work", "build", 22, timeout=DROP) is None
    assert lab.probe_tcp("web", "build", 22, timeout=DROP) is None


# ---------------------------------------------------------------------------------------
# 2. Clients reach upstream, masqueraded at every hop; nothing reaches them from outside


def test_clients_reach_upstream_masqueraded(fresh_seed_lab):
    """work reaches a LAN server through four providers; the server sees only sys-net's LAN
    address (masquerade at each hop); a network service qube sees the
    address of the firewall qube below it, not the client's."""
    lab = fresh_seed_lab
    lab.serve_tcp("lan", 8080, report_peer=True)
    lab.serve_udp("lan", 5353, report_peer=True)
    for client in ("work", "build", "web"):
        assert lab.probe_tcp(client, "lan", 8080) == "lan:8080:" + SYS_NET_LAN, client
    assert lab.probe_udp("work", "lan", 5353) == "lan:5353:" + SYS_NET_LAN

    lab.serve_tcp("sys-vpn", 8081, report_peer=True)
    lab.sh("sys-vpn", "nft add rule ip qubes custom-input tcp dport 8081 accept")
    assert lab.probe_tcp("work", "sys-vpn", 8081) == "sys-vpn:8081:10.137.0.8"


def test_client_unreachable_from_lan_even_with_routes(fresh_seed_lab):
    """Even when the LAN host and sys-net have routes to web, new connections into it die
    in sys-net's `ip qubes forward` (oifgroup 2 drop), and from sys-net in sys-firewall's."""
    lab = fresh_seed_lab
    lab.serve_tcp("web", 443)
    lab.sh("lan", "ip route add 10.137.0.0/16 via " + SYS_NET_LAN)
    lab.sh("sys-net", "ip route add 10.137.0.11 via 10.137.0.6 dev " + lab.vif("sys-firewall"))
    try:
        before = _counter_packets(lab, "sys-net", "qubes", "forward", "oifgroup")
        assert lab.probe_tcp("lan", "web", 443, timeout=DROP) is None
        assert _counter_packets(lab, "sys-net", "qubes", "forward", "oifgroup") > before
        before = _counter_packets(lab, "sys-firewall", "qubes", "forward", "oifgroup")
        assert lab.probe_tcp("sys-net", "web", 443, timeout=DROP) is None
        assert _counter_packets(lab, "sys-firewall", "qubes", "forward", "oifgroup") > before
    finally:
        lab.sh("lan", "ip route del 10.137.0.0/16", check=False)
        lab.sh("sys-net", "ip route del 10.137.0.11", check=False)


# ---------------------------------------------------------------------------------------
# 3. Manual page: "Port forwarding to a qube from the outside world", typed per hop

SEED_PORT_FORWARD = {
    "sys-net": [
        "nft add chain qubes custom-dnat-qubeDEST '{ type nat hook prerouting priority filter +1 ; policy accept; }'",
        'nft add rule qubes custom-dnat-qubeDEST iif == "ens6" ip saddr 192.168.1.0/24 tcp dport 443 '
        "ct state new,established,related counter dnat 10.137.0.6",
        'nft add rule qubes custom-forward iif == "ens6" ip saddr 192.168.1.0/24 ip daddr 10.137.0.6 '
        "tcp dport 443 ct state new,established,related counter accept",
    ],
    "sys-firewall": [
        "nft add chain qubes custom-dnat-qubeDEST '{ type nat hook prerouting priority filter +1 ; policy accept; }'",
        'nft add rule qubes custom-dnat-qubeDEST iif == "eth0" ip saddr 192.168.1.0/24 tcp dport 443 '
        "ct state new,established,related counter dnat 10.137.0.11",
        'nft add rule qubes custom-forward iif == "eth0" ip saddr 192.168.1.0/24 ip daddr 10.137.0.11 '
        "tcp dport 443 ct state new,established,related counter accept",
    ],
    "web": [
        "nft add rule qubes custom-input tcp dport 443 ip daddr 10.137.0.11 ct state new,established,related "
        "counter accept",
    ],
}


def test_seed_port_forward(fresh_seed_lab):
    """The manual page's hand-typed port forward (DNAT + forward accept in sys-net and sys-firewall,
    input accept in web) opens lan -> 192.168.1.10:443 -> web:443; the LAN source address
    reaches web (no NAT going down); the wan host (other interface and network) is refused;
    another port stays closed."""
    lab = fresh_seed_lab
    for qube, commands in SEED_PORT_FORWARD.items():
        for command in commands:
            lab.sh(qube, command)
    lab.serve_tcp("web", 443, report_peer=True)
    lab.serve_tcp("web", 444, report_peer=True)

    assert lab.probe_tcp("lan", SYS_NET_LAN, 443) == "web:443:192.168.1.50"
    assert lab.probe_tcp("lan", SYS_NET_LAN, 443, source="192.168.1.51") == "web:443:192.168.1.51"
    assert _counter_packets(lab, "sys-net", "qubes", "custom-dnat-qubeDEST", "dnat") > 0

    assert lab.probe_tcp("wan", SYS_NET_WAN, 443, timeout=DROP) is None
    assert lab.probe_tcp("wan", SYS_NET_LAN, 443, timeout=DROP) is None
    assert lab.probe_tcp("lan", SYS_NET_LAN, 444, timeout=DROP) is None
    assert lab.probe_tcp("lan", SYS_NET_LAN, 443) == "web:443:192.168.1.50"  # still open


# ---------------------------------------------------------------------------------------
# 4. Manual page: "Enabling networking between two qubes"

SEED_TWO_QUBES = {
    "sys-firewall-2": ["sudo nft add rule ip qubes custom-forward ip saddr 10.137.0.9 ip daddr 10.137.0.10 "
                       "ct state new,established,related counter accept"],
    "build": ["sudo nft add rule qubes custom-input ip saddr 10.137.0.9 ct state new,established,related "
              "counter accept"],
}


def _typed(command):
    # The manual page types `sudo nft ...`; the lab runs as root already.
    return command[len("sudo "):] if command.startswith("sudo ") else command


def test_seed_networking_between_two_qubes(fresh_seed_lab):
    """The manual page's two rules (custom-forward in the shared firewall qube, custom-input in the
    server) let work reach build:22, unNATed; not build -> work, not web -> build.  The
    source's qvm-firewall list still applies to vif -> vif traffic."""
    lab = fresh_seed_lab
    for qube, commands in SEED_TWO_QUBES.items():
        for command in commands:
            lab.sh(qube, _typed(command))
    lab.serve_tcp("build", 22, report_peer=True)
    lab.serve_tcp("work", 22, report_peer=True)

    assert lab.probe_tcp("work", "build", 22) == "build:22:10.137.0.9"
    assert lab.probe_tcp("build", "work", 22, timeout=DROP) is None
    assert lab.probe_tcp("web", "build", 22, timeout=DROP) is None

    lab.set_firewall_rules("work", ["action=drop"])
    result = lab.probe_tcp_result("work", "build", 22, timeout=DROP)
    assert result.banner is None and result.error == "unreachable"  # admin-prohibited reject


# ---------------------------------------------------------------------------------------
# 5. The qubes-firewall table (qvm-firewall lists) matters


def test_qvm_firewall_list_filters_client(make_lab):
    """A client whose qvm-firewall list is [drop] is rejected (icmp admin-prohibited, at once)
    in its netvm; a list accepting one tcp port to one host lets exactly that through; a
    literal nft rule text works too; the default list [accept] lets everything out."""
    qubes = {
        "sys-net": QubeSpec(ip="10.137.0.5", provides_network=True),
        "sys-firewall": QubeSpec(ip="10.137.0.6", netvm="sys-net", provides_network=True),
        "work": QubeSpec(ip="10.137.0.9", netvm="sys-firewall", firewall_rules=["action=drop"]),
        "narrow": QubeSpec(ip="10.137.0.12", netvm="sys-firewall", firewall_rules=[
            "action=accept proto=tcp dst4=192.168.1.50 dstports=8080-8080", "action=drop"]),
        "silent": QubeSpec(ip="10.137.0.13", netvm="sys-firewall", firewall_rules=["drop"]),
        "web": QubeSpec(ip="10.137.0.11", netvm="sys-firewall"),
    }
    outside = [OutsideHost(name="lan", uplink="sys-net", ifname="ens6", host_ip="192.168.1.50/24",
                           uplink_ip="192.168.1.10/24")]
    lab = make_lab(qubes, outside)
    assert lab.chain_rules("sys-firewall", "qbs-10-137-0-9", "qubes-firewall") == [
        "reject with icmp admin-prohibited", "reject with icmp admin-prohibited"]
    assert lab.chain_rules("sys-firewall", "qbs-10-137-0-12", "qubes-firewall") == [
        "ip daddr 192.168.1.50 tcp dport 8080 accept",
        "reject with icmp admin-prohibited", "reject with icmp admin-prohibited"]
    lab.serve_tcp("lan", 8080)
    lab.serve_tcp("lan", 8081)

    assert lab.probe_tcp("web", "lan", 8080) == "lan:8080"
    assert lab.probe_tcp("web", "lan", 8081) == "lan:8081"
    result = lab.probe_tcp_result("work", "lan", 8080, timeout=DROP)
    assert result.banner is None and result.error == "unreachable"
    assert lab.probe_tcp("narrow", "lan", 8080) == "lan:8080"
    assert lab.probe_tcp_result("narrow", "lan", 8081, timeout=DROP).error == "unreachable"
    assert lab.probe_tcp_result("silent", "lan", 8080, timeout=DROP).error == "timeout"

    lab.set_firewall_rules("work", None)  # qvm-firewall work reset -> [accept]
    assert lab.probe_tcp("work", "lan", 8080) == "lan:8080"


# ---------------------------------------------------------------------------------------
# 6. Reboot and qubes-firewall restart replay what Qubes replays, and nothing else

USER_SCRIPT = """#!/bin/sh
echo "user-script name=$(qubesdb-read /name) env=$QF_LAB_QUBE ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)" \\
    >> "$QF_LAB_RW_CONFIG/trace"
nft add rule ip qubes custom-forward ip saddr 10.137.0.9 ip daddr 10.137.0.10 ct state new,established,related counter accept
"""
DROP_IN = """#!/bin/sh
echo "drop-in" >> "$QF_LAB_RW_CONFIG/trace"
echo "drop-in complains" >&2
exit 3
"""
RC_LOCAL_PROVIDER = """#!/bin/sh
echo "rc.local ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)" >> "$QF_LAB_RW_CONFIG/trace"
"""
RC_LOCAL_BUILD = """#!/bin/sh
nft add rule qubes custom-input ip saddr 10.137.0.9 accept
"""


def _write(path, text, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(str(path), mode)


def test_reboot_and_qubes_firewall_restart(fresh_seed_lab):
    """Rules typed by hand are gone after reboot.  At reboot a provider runs
    qubes-firewall.d/* then qubes-firewall-user-script (ip_forward still 0, qubesdb-read
    answers), then rc.local (ip_forward 1); non-executable scripts are skipped; script
    errors are ignored but logged.  Restarting qubes-firewall re-runs the user script without
    resetting ip qubes, so a plain `nft add rule` script duplicates its rule, as on Qubes."""
    lab = fresh_seed_lab
    lab.serve_tcp("build", 22)
    for qube, commands in SEED_TWO_QUBES.items():
        for command in commands:
            lab.sh(qube, _typed(command))
    assert lab.probe_tcp("work", "build", 22) == "build:22"
    lab.reboot("sys-firewall-2")
    lab.reboot("build")
    assert lab.chain_rules("sys-firewall-2", "custom-forward") == []
    assert lab.chain_rules("build", "custom-input") == []
    assert lab.probe_tcp("work", "build", 22, timeout=DROP) is None

    fw_rw, build_rw = lab.rw_config("sys-firewall-2"), lab.rw_config("build")
    _write(fw_rw / "qubes-firewall-user-script", USER_SCRIPT, 0o755)
    _write(fw_rw / "qubes-firewall.d" / "10-drop-in", DROP_IN, 0o755)
    _write(fw_rw / "qubes-firewall.d" / "20-not-executable", "#!/bin/sh\necho no >> \"$QF_LAB_RW_CONFIG/trace\"\n",
           0o644)
    _write(fw_rw / "rc.local", RC_LOCAL_PROVIDER, 0o755)
    _write(build_rw / "rc.local", RC_LOCAL_BUILD, 0o755)
    _write(build_rw / "rc.local.d" / "10-skipped.rc", "#!/bin/sh\nnft add rule qubes custom-input drop\n", 0o644)
    lab.reboot("sys-firewall-2")
    lab.reboot("build")

    assert (fw_rw / "trace").read_text().splitlines() == [
        "drop-in",
        "user-script name=sys-firewall-2 env=sys-firewall-2 ip_forward=0",
        "rc.local ip_forward=1",
    ]
    assert "drop-in complains" in lab.boot_log("sys-firewall-2")
    assert "(rc=3)" in lab.boot_log("sys-firewall-2")
    assert lab.chain_rules("build", "custom-input") == ["ip saddr 10.137.0.9 accept"]
    forward_rule = "ip saddr 10.137.0.9 ip daddr 10.137.0.10 ct state established,related,new counter accept"
    assert lab.chain_rules("sys-firewall-2", "custom-forward") == [forward_rule]
    assert lab.probe_tcp("work", "build", 22) == "build:22"

    lab.restart_qubes_firewall("sys-firewall-2")
    assert lab.chain_rules("sys-firewall-2", "custom-forward") == [forward_rule, forward_rule]
    assert _client_jumps(lab, "sys-firewall-2") == [
        "ip saddr 10.137.0.9 jump qbs-10-137-0-9",
        "ip saddr 10.137.0.10 jump qbs-10-137-0-10",
    ]
    assert (fw_rw / "trace").read_text().splitlines()[-1].startswith("user-script")
    assert lab.probe_tcp("work", "build", 22) == "build:22"
    with pytest.raises(ValueError):
        lab.restart_qubes_firewall("work")


# ---------------------------------------------------------------------------------------
# 7. Teardown leaves nothing behind

SMALL = {
    "sys-net": QubeSpec(ip="10.137.0.5", provides_network=True),
    "web": QubeSpec(ip="10.137.0.11", netvm="sys-net"),
}
SMALL_OUTSIDE = [OutsideHost(name="lan", uplink="sys-net", ifname="ens6", host_ip="192.168.1.50/24",
                             uplink_ip="192.168.1.10/24")]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/{}/stat".format(pid)) as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_teardown_when_body_raises(tmp_path):
    """Leaving the `with` block by an exception stops the servers and deletes every
    namespace; the root namespace never gets a lab interface."""
    links_before = _root_links()
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(SMALL, SMALL_OUTSIDE, workdir=tmp_path) as lab:
            server = lab.serve_tcp("web", 80)
            namespaces = lab.namespaces
            assert all(netns.exists(ns) for ns in namespaces)
            assert _new_lab_like_links(links_before) == []
            raise RuntimeError("boom")
    assert not any(netns.exists(ns) for ns in namespaces)
    assert not [ns for ns in netns.list_lab_namespaces() if ns.startswith(lab.prefix)]
    assert not _pid_alive(server.pid)
    assert _new_lab_like_links(links_before) == []


def test_teardown_when_build_fails_halfway(tmp_path, monkeypatch):
    """A build that fails after namespaces and links exist still removes all of them."""
    from tests.lab import boot

    links_before = _root_links()
    prefixes = []
    real_new_prefix = netns.new_prefix

    def recording_new_prefix():
        prefixes.append(real_new_prefix())
        return prefixes[-1]

    def broken(*args, **kwargs):
        assert [ns for ns in netns.list_lab_namespaces() if ns.startswith(prefixes[0])]  # built so far
        raise RuntimeError("vif hotplug failed")

    monkeypatch.setattr(netns, "new_prefix", recording_new_prefix)
    monkeypatch.setattr(boot, "vif_online", broken)
    with pytest.raises(RuntimeError, match="vif hotplug failed"):
        Lab(SMALL, SMALL_OUTSIDE, workdir=tmp_path)
    assert len(prefixes) == 1
    assert [ns for ns in netns.list_lab_namespaces() if ns.startswith(prefixes[0])] == []
    assert _new_lab_like_links(links_before) == []


def test_cleanup_stale_removes_dead_runs_only(tmp_path):
    """cleanup_stale() deletes namespaces (and their processes) left by a dead lab process,
    and leaves those of live processes alone; two labs at once do not collide."""
    with open("/proc/sys/kernel/pid_max") as handle:
        dead_pid = int(handle.read()) + 1  # no process can have it
    stale = "{}{}x1-sys-net".format(netns.PREFIX, dead_pid)
    live = "{}{}x999999-keep".format(netns.PREFIX, os.getpid())
    netns.run_root(["ip", "netns", "add", stale])
    netns.run_root(["ip", "netns", "add", live])
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while sleeper.pid not in netns.pids(stale) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sleeper.pid in netns.pids(stale)
        removed = cleanup_stale()
        assert stale in removed
        assert not netns.exists(stale)
        assert netns.exists(live)
        sleeper.wait(timeout=5)
    finally:
        sleeper.kill()
        netns.delete(stale)
        netns.delete(live)

    with Lab(SMALL, SMALL_OUTSIDE, workdir=tmp_path / "a") as first, \
            Lab(SMALL, SMALL_OUTSIDE, workdir=tmp_path / "b") as second:
        assert first.prefix != second.prefix
        first.serve_tcp("lan", 8080, report_peer=True)
        second.serve_tcp("lan", 8080, report_peer=True)
        assert first.probe_tcp("web", "lan", 8080) == "lan:8080:192.168.1.10"
        assert second.probe_tcp("web", "lan", 8080) == "lan:8080:192.168.1.10"


SEED_SYS_NET_USER_SCRIPT = """#!/bin/sh

# create the dnat chain for qubeDEST if it doesn't already exist
if nft add chain qubes custom-dnat-qubeDEST '{ type nat hook prerouting priority filter +1 ; policy accept; }'
then
  # create the dnat rule
  nft add rule qubes custom-dnat-qubeDEST iif == "ens6" saddr 192.168.1.0/24 tcp dport 443 ct state new,established,related counter dnat 10.137.0.6

  # allow forwarded traffic
  nft add rule qubes custom-forward iif == "ens6" ip saddr 192.168.1.0/24 ip daddr 10.137.0.6 tcp dport 443 ct state new,established,related counter accept
fi
"""  # noqa: E501  (the manual page's sys-net qubes-firewall-user-script, addresses filled in)


def test_seed_persisted_script_replays_with_its_flaws(fresh_seed_lab):
    """The manual page's sys-net qubes-firewall-user-script, replayed at boot as Qubes does: its
    dnat line (`saddr` without `ip`) fails and the failure is only logged, so the DNAT chain
    stays empty; its `if nft add chain` guard is always true, so a qubes-firewall restart
    appends the forward rule again."""
    lab = fresh_seed_lab
    _write(lab.rw_config("sys-net") / "qubes-firewall-user-script", SEED_SYS_NET_USER_SCRIPT, 0o755)
    lab.reboot("sys-net")
    log = lab.boot_log("sys-net")
    assert "Error: No symbol type information" in log and "saddr 192.168.1.0/24 tcp dport 443" in log
    assert lab.chain_rules("sys-net", "custom-dnat-qubeDEST") == []
    forward = lab.chain_rules("sys-net", "custom-forward")
    assert len(forward) == 1 and 'iif "ens6" ip saddr 192.168.1.0/24 ip daddr 10.137.0.6' in forward[0]
    lab.restart_qubes_firewall("sys-net")
    assert lab.chain_rules("sys-net", "custom-forward") == forward * 2


def test_restart_qube_renames_its_vif(fresh_seed_lab):
    """Restarting a client gives it a new domid, so a new vif name in its netvm (Qubes:
    never match a vif by name); antispoof then holds only the new vif, a netvm rule pinned to
    the old vif name no longer matches, traffic flows again, and its rc.local runs again."""
    lab = fresh_seed_lab
    lab.serve_tcp("lan", 8080)
    old_vif = lab.vif("web")
    lab.sh("sys-firewall", 'nft add rule ip qubes custom-forward iifname "{}" tcp dport 8080 '
                           "reject with icmp type admin-prohibited".format(old_vif))
    assert lab.probe_tcp_result("web", "lan", 8080, timeout=DROP).error == "unreachable"
    _write(lab.rw_config("web") / "rc.local", "#!/bin/sh\necho booted >> \"$QF_LAB_RW_CONFIG/trace\"\n", 0o755)

    lab.restart_qube("web")
    new_vif = lab.vif("web")
    assert new_vif != old_vif and new_vif.startswith("vif")
    allowed = lab.run("sys-firewall", ["nft", "-j", "list", "set", "ip", "qubes", "allowed"]).stdout
    assert '"{}"'.format(new_vif) in allowed and '"{}"'.format(old_vif) not in allowed
    assert lab.probe_tcp("web", "lan", 8080) == "lan:8080"
    assert (lab.rw_config("web") / "trace").read_text() == "booted\n"
    with pytest.raises(ValueError):
        lab.restart_qube("sys-firewall")


# ---------------------------------------------------------------------------------------
# 8. What 4.3 changed: custom-persist, SIGHUP reload, DNS rules through dns-addr

TRACE = '#!/bin/sh\necho "{tag} $(qubesdb-read /name) ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)" >> "$QF_LAB_ROOT/trace"\n'


def _trace(lab, qube):
    path = lab.root_dir(qube) / "trace"
    return path.read_text().splitlines() if path.exists() else []


def test_custom_persist_boot(make_lab, release):
    """With custom-persist, Qubes 4.3 runs neither /rw/config/qubes-firewall.d, the user script,
    rc.local.d nor rc.local, but still <template root>/etc/qubes/qubes-firewall.d/* at every
    qubes-firewall start, and systemd's enabled units of the template; 4.2 has no such
    service and runs everything.  Qubes of one template share its root."""
    qubes = {
        "sys-net": QubeSpec(ip="10.137.0.5", provides_network=True),
        "sys-firewall": QubeSpec(ip="10.137.0.6", netvm="sys-net", provides_network=True,
                                 custom_persist=True, template="debian-13"),
        "work": QubeSpec(ip="10.137.0.9", netvm="sys-firewall", custom_persist=True, template="debian-13"),
        "plain": QubeSpec(ip="10.137.0.10", netvm="sys-firewall"),
    }
    lab = make_lab(qubes)
    assert lab.root_dir("sys-firewall") == lab.root_dir("work") == lab.template_dir("debian-13")
    assert lab.root_dir("plain") != lab.root_dir("work")
    assert lab.etc_qubes("work") == lab.template_dir("debian-13") / "etc" / "qubes"
    assert lab.systemd_dir("work") == lab.template_dir("debian-13") / "etc" / "systemd" / "system"
    assert lab.template("work") == "debian-13" and lab.template("plain") is None
    assert lab.custom_persist("work") == (release == "4.3") and not lab.custom_persist("plain")
    has_service = lab.run("work", ["qubesdb-read", "/qubes-service/custom-persist"], check=False).returncode == 0
    assert has_service == (release == "4.3")

    for qube in ("sys-firewall", "work"):
        rw = lab.rw_config(qube)
        _write(rw / "qubes-firewall.d" / "10-rw", TRACE.format(tag="rw-drop-in"), 0o755)
        _write(rw / "qubes-firewall-user-script", TRACE.format(tag="user-script"), 0o755)
        _write(rw / "rc.local.d" / "10-rw.rc", TRACE.format(tag="rc.local.d"), 0o755)
        _write(rw / "rc.local", TRACE.format(tag="rc.local"), 0o755)
    etc = lab.etc_qubes("sys-firewall")
    _write(etc / "qubes-firewall.d" / "50-etc", TRACE.format(tag="etc-drop-in") +
           "nft add rule ip qubes custom-input tcp dport 22 accept\n", 0o755)
    system = lab.systemd_dir("work")
    _write(system / "qf-boot.service", "[Unit]\nDescription=t\n[Service]\nType=oneshot\n"
           "ExecStart=/bin/sh -c 'echo unit $(qubesdb-read /name) >> \"$QF_LAB_ROOT/trace\"'\n"
           "[Install]\nWantedBy=multi-user.target\n", 0o644)
    (system / "multi-user.target.wants").mkdir()
    (system / "multi-user.target.wants" / "qf-boot.service").symlink_to("/etc/systemd/system/qf-boot.service")

    lab.reboot("sys-firewall")
    lab.reboot("work")
    if release == "4.3":
        assert _trace(lab, "work") == ["etc-drop-in sys-firewall ip_forward=0", "unit sys-firewall",
                                       "unit work"]
    else:
        assert _trace(lab, "work") == [
            "etc-drop-in sys-firewall ip_forward=0", "rw-drop-in sys-firewall ip_forward=0",
            "user-script sys-firewall ip_forward=0", "rc.local.d sys-firewall ip_forward=1",
            "rc.local sys-firewall ip_forward=1", "unit sys-firewall",
            "rc.local.d work ip_forward=0", "rc.local work ip_forward=0", "unit work"]
    assert lab.chain_rules("sys-firewall", "custom-input") == ["tcp dport 22 accept"]
    lab.restart_qubes_firewall("sys-firewall")
    assert _trace(lab, "work")[-1].startswith("user-script" if release == "4.2" else "etc-drop-in")
    assert lab.chain_rules("sys-firewall", "custom-input") == ["tcp dport 22 accept"] * 2
    lab.reboot("plain")
    assert _trace(lab, "plain") == []  # a root of its own: no unit, no etc drop-in
    assert "unit" not in lab.boot_log("plain")
    assert "qf-boot.service: /bin/sh -c" in lab.boot_log("work")


def test_qvm_firewall_dns_and_reload(make_lab, release):
    """A client's list [dns, drop] is enforced in its netvm: DNS to the virtual resolvers
    passes (4.2: their addresses in the rule, 4.3: the dns-addr set), anything else is
    rejected.  4.3's reload (SIGHUP) refills every client chain without running scripts;
    4.2 has no reload."""
    qubes = {
        "sys-net": QubeSpec(ip="10.137.0.5", provides_network=True),
        "sys-firewall": QubeSpec(ip="10.137.0.6", netvm="sys-net", provides_network=True),
        "work": QubeSpec(ip="10.137.0.9", netvm="sys-firewall",
                         firewall_rules=["action=accept specialtarget=dns", "action=drop"]),
    }
    outside = [OutsideHost(name="lan", uplink="sys-net", ifname="ens6", host_ip="192.168.1.50/24",
                           uplink_ip="192.168.1.10/24")]
    lab = make_lab(qubes, outside, uplink_dns=["192.168.1.50"])
    rules = lab.chain_rules("sys-firewall", "qbs-10-137-0-9", "qubes-firewall")
    dns_match = "ip daddr @dns-addr" if release == "4.3" else "ip daddr { 10.139.1.1-10.139.1.2 }"  # nft prints a range
    assert rules[0].startswith(dns_match), rules
    lab.serve_udp("lan", 53, report_peer=True)
    lab.serve_tcp("lan", 8080)
    assert lab.probe_udp("work", "10.139.1.1", 53) == "lan:53:192.168.1.10"
    assert lab.probe_udp("work", "10.139.1.2", 53) == "lan:53:192.168.1.10"
    assert lab.probe_tcp_result("work", "lan", 8080, timeout=DROP).error == "unreachable"

    _write(lab.rw_config("sys-firewall") / "qubes-firewall-user-script", TRACE.format(tag="user-script"), 0o755)
    lab.sh("sys-firewall", "nft flush chain ip qubes-firewall qbs-10-137-0-9")
    if release == "4.2":
        with pytest.raises(ValueError, match="cannot reload"):
            lab.reload_qubes_firewall("sys-firewall")
        return
    lab.sh("sys-firewall", "nft flush set ip qubes-firewall dns-addr")
    lab.reload_qubes_firewall("sys-firewall")
    assert lab.chain_rules("sys-firewall", "qbs-10-137-0-9", "qubes-firewall") == rules
    assert _dns_addr(lab, "sys-firewall") == ["10.139.1.1", "10.139.1.2"]
    assert _trace(lab, "sys-firewall") == []  # no script ran
    assert lab.probe_udp("work", "10.139.1.1", 53) == "lan:53:192.168.1.10"
    with pytest.raises(ValueError):
        lab.reload_qubes_firewall("work")
