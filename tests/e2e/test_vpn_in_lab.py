"""
A VPN qube that fails closed, proven with real packets (``qubes:<qube>:vpn``).

The manual page's network service qube between two firewall qubes::

    outside (lan, wan) <- sys-net <- sys-firewall <- sys-vpn <- sys-firewall-2 <- work

``sys-vpn`` runs a VPN client (tests.lab.vpn_tunnel: IP in UDP over a TUN interface
``tun0``) whose server is the outside host ``wan`` (endpoint 172.30.0.50 udp/51820,
resolver 10.8.0.1 behind the tunnel).  Its routes are those of a VPN client without a
kill switch (OpenVPN's ``def1``): 0.0.0.0/1 and 128.0.0.0/1 through the tunnel, the
endpoint through ``eth0``, Qubes' default route through ``eth0`` left in place, so
when the tunnel goes down everything falls back to ``eth0``: the leak the formula must
stop.  ``wan`` answers with the source address it sees: the tunnel's (10.8.0.2) or, in
clear, sys-net's (172.30.0.10).

The formula runs only in sys-vpn (real salt-call); its qvm-firewall list (the
endpoint, as dom0 writes it) is enforced in sys-firewall.  First, without the formula,
the lab shows the leak, so the checks below can fail.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.formula_lab import FormulaLab
from tests.lab import OutsideHost, netns, vpn_tunnel
from tests.modules import core
from tests.modules import model as model_mod

dom0 = core("dom0")

ENDPOINT, PORT = "172.30.0.50", 51820
WORLD = "172.30.0.51"  # an outside address the clients reach through the tunnel
TUNNEL_CLIENT, TUNNEL_SERVER = "10.8.0.2", "10.8.0.1"
CLEAR = "172.30.0.10"  # sys-net's address on wan's network: what wan sees of a leak
ADDRESSES = {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "sys-vpn": "10.137.0.7",
             "sys-firewall-2": "10.137.0.8", "work": "10.137.0.9"}
WORLD6, LAN6 = "2001:db8:30::51", "2001:db8:1::50"


def outside(ipv6):
    lan6 = dict(host_ip6=LAN6 + "/64", uplink_ip6="2001:db8:1::10/64") if ipv6 else {}
    wan6 = dict(host_ip6="2001:db8:30::50/64", uplink_ip6="2001:db8:30::10/64",
                extra_ips6=[WORLD6 + "/64"]) if ipv6 else {}
    return [
        OutsideHost(name="lan", uplink="sys-net", ifname="ens6", host_ip="192.168.1.50/24",
                    uplink_ip="192.168.1.10/24", **lan6),
        OutsideHost(name="wan", uplink="sys-net", ifname="ens7", host_ip=ENDPOINT + "/24",
                    uplink_ip=CLEAR + "/24", extra_ips=[WORLD + "/24"], **wan6),
    ]
_SCRIPT = str(Path(vpn_tunnel.__file__).resolve())


def pillar(dns=(TUNNEL_SERVER,)):
    return {"qubes_firewall": {
        "addresses": dict(ADDRESSES),
        "qubes": {
            "sys-net": {"netvm": "none"},
            "sys-firewall": {"netvm": "sys-net"},
            "sys-vpn": {"netvm": "sys-firewall", "vpn": {
                "interfaces": ["tun0"],
                "endpoints": [{"address": ENDPOINT, "port": PORT}],
                "dns": list(dns) or "none"}},
            "sys-firewall-2": {"netvm": "sys-vpn"},
            "work": {"netvm": "sys-firewall-2"},
        }}}


class Tunnel:
    """The VPN: its server in wan, its client in sys-vpn, and the client's routes."""

    def __init__(self, lab):
        self.lab = lab
        self.procs = []
        self.server = self._start("wan", ["server", "tun0", str(PORT)])
        lab.sh("wan", "ip addr add %s/24 dev tun0 && ip link set tun0 up" % TUNNEL_SERVER)
        lab.sh("sys-vpn", "ip route add %s/32 via %s dev eth0 onlink" % (ENDPOINT, ADDRESSES["sys-firewall"]))
        self.client = None
        self.connect()

    def _start(self, node, args):
        proc = subprocess.Popen(["ip", "netns", "exec", self.lab.netns(node), sys.executable, _SCRIPT] + args,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        line = proc.stdout.readline()
        assert line.strip() == vpn_tunnel.READY, proc.stderr.read()
        self.procs.append(proc)
        return proc

    def connect(self):
        """Start the VPN client (tun0 appears) and route through it, as a VPN client does."""
        self.client = self._start("sys-vpn", ["client", "tun0", ENDPOINT, str(PORT), str(PORT)])
        self.up()

    def up(self):
        self.lab.sh("sys-vpn", "ip addr replace %s/24 dev tun0 && ip link set tun0 up && "
                    "ip route replace 0.0.0.0/1 dev tun0 && ip route replace 128.0.0.0/1 dev tun0"
                    % TUNNEL_CLIENT)

    def down(self):
        """The tunnel interface goes down: its routes go, the default route via eth0 remains."""
        self.lab.sh("sys-vpn", "ip link set tun0 down")

    def delete(self):
        """The VPN client exits: tun0 is deleted."""
        self.stop(self.client)
        for _ in range(50):
            if self.lab.run("sys-vpn", ["ip", "link", "show", "tun0"], check=False).returncode != 0:
                return
            time.sleep(0.1)
        raise AssertionError("tun0 still exists after its process ended")

    def stop(self, proc):
        netns.kill_pids([proc.pid])
        proc.wait(timeout=5)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                self.stop(proc)


WATCHED = ("sys-firewall", "sys-net")  # sys-vpn's upstream, and the qube with the network cards


def observe(lab):
    """A counter in sys-firewall and sys-net of every packet from a client but the tunnel's datagrams
    (IPv4 and IPv6: an inet table) and the IPv6 link-local traffic every qube sends on its own
    (router solicitations, MLD reports: never routed, they carry no client's data)."""
    for node in WATCHED:
        lab.nft_load(node, "table inet labobs {\n chain pre {\n  type filter hook prerouting priority -400;\n"
                     '  iifname "vif*" meta nfproto ipv4 udp dport %d return\n'
                     '  ip6 saddr fe80::/10 return\n  ip6 daddr ff02::/16 return\n'
                     '  iifname "vif*" counter\n }\n}\n' % PORT)


def observed(lab):
    """{node: packets counted}; sys-firewall sees a leak before it enforces sys-vpn's qvm-firewall list."""
    out = {}
    for node in WATCHED:
        for item in lab.nft_json(node)["nftables"]:
            rule = item.get("rule")
            counters = [e["counter"]["packets"] for e in (rule or {}).get("expr", []) if "counter" in e]
            if rule and rule["table"] == "labobs" and counters:
                out[node] = counters[0]
    assert set(out) == set(WATCHED), out
    return out


def reached(lab, node, proto="tcp", dest=WORLD, port=8080):
    probe = lab.probe_tcp if proto == "tcp" else lab.probe_udp
    return probe(node, dest, port, timeout=1.0)


def assert_through_the_tunnel(lab):
    assert reached(lab, "work") == "wan:8080:%s" % TUNNEL_CLIENT
    # (a UDP answer leaves wan from the address its route picks: ask the tunnel's own address)
    assert reached(lab, "work", "udp", dest=TUNNEL_SERVER) == "wan:8080:%s" % TUNNEL_CLIENT
    # the clients' DNS goes to the VPN's resolver, through the tunnel
    assert lab.probe_udp("work", "10.139.1.1", 53, timeout=1.0) == "wan:53:%s" % TUNNEL_CLIENT
    assert lab.probe_udp("work", "10.139.1.2", 53, timeout=1.0) == "wan:53:%s" % TUNNEL_CLIENT


def assert_no_ipv6_out(lab, why):
    """The tunnel carries IPv4 only: a client's IPv6 must not leave by sys-vpn's eth0 (up or down)."""
    if lab.ip6("work") is None:
        return
    for probe in (lab.probe_tcp6, lab.probe_udp6):
        assert probe("work", WORLD6, 8080, timeout=1.0) is None, (why, "IPv6")
        assert probe("work", LAN6, 8080, timeout=1.0) is None, (why, "IPv6 lan")
    assert lab.probe_tcp6("sys-vpn", WORLD6, 8080, timeout=1.0) is None, (why, "sys-vpn's own IPv6")


def assert_nothing_leaks(lab, why):
    before = observed(lab)
    assert_no_ipv6_out(lab, why)
    for proto in ("tcp", "udp"):
        assert reached(lab, "work", proto) is None, (why, proto)
        assert reached(lab, "work", proto, dest=TUNNEL_SERVER) is None, (why, proto, "the VPN server")
        assert reached(lab, "work", proto, dest="192.168.1.50") is None, (why, proto, "lan")
        assert reached(lab, "work", proto, dest=ADDRESSES["sys-net"]) is None, (why, proto, "sys-net")
    for dns in ("10.139.1.1", "10.139.1.2"):
        assert lab.probe_udp("work", dns, 53, timeout=1.0) is None, (why, dns)
    # sys-vpn's own traffic: only the endpoint, and only the VPN's port
    assert reached(lab, "sys-vpn") is None, why
    assert reached(lab, "sys-vpn", dest=ENDPOINT) is None, why
    assert observed(lab) == before, "%s: packets leaked out of sys-vpn's upstream" % why


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def vpn_lab(tmp_path, request):
    ipv6 = {"sys-net": "1"} if request.param else None
    flab = FormulaLab(pillar(), tmp_path, outside=outside(request.param), ipv6=ipv6)
    lab = flab.lab
    tunnel = Tunnel(lab)
    try:
        for port in (8080,):
            lab.serve_tcp("wan", port, report_peer=True)
            lab.serve_udp("wan", port, report_peer=True)
        lab.serve_tcp("lan", 8080)
        lab.serve_udp("lan", 8080)
        lab.serve_tcp("sys-net", 8080)
        lab.serve_udp("wan", 53, report_peer=True)
        observe(lab)
        yield flab, tunnel
    finally:
        tunnel.close()
        flab.close()


def test_the_vpn_qube_fails_closed(vpn_lab):
    flab, tunnel = vpn_lab
    lab = flab.lab
    # without the formula: through the tunnel while it is up, in clear once it is down
    assert reached(lab, "work") == "wan:8080:%s" % TUNNEL_CLIENT
    tunnel.down()
    before = observed(lab)
    assert reached(lab, "work") == "wan:8080:%s" % CLEAR, "the lab must show the leak the formula stops"
    assert all(observed(lab)[node] > before[node] for node in WATCHED), "the counters must see a leak"
    tunnel.up()
    if lab.ip6("work") is not None:  # and IPv6 leaves in clear, tunnel or not (it carries IPv4 only)
        assert lab.probe_tcp6("work", WORLD6, 8080, timeout=1.0) == "wan:8080:2001:db8:30::10"

    applied = flab.apply("sys-vpn")
    assert applied.retcode == 0 and not applied.failed, applied.failed
    mdl = model_mod.parse(pillar()["qubes_firewall"])
    lines = dom0.wanted_firewall(mdl.qubes["sys-vpn"])
    assert lines == ["action=accept proto=udp dst4=%s/32 dstports=%d-%d comment=vpn endpoint" % (ENDPOINT, PORT, PORT)]
    lab.set_firewall_rules("sys-vpn", [line.split(" comment=")[0] for line in lines])

    assert_through_the_tunnel(lab)
    assert_no_ipv6_out(lab, "tun0 up")
    tunnel.down()
    assert_nothing_leaks(lab, "tun0 down")
    tunnel.up()
    assert_through_the_tunnel(lab)  # back by itself, no Salt
    tunnel.delete()
    assert_nothing_leaks(lab, "tun0 deleted")
    tunnel.connect()
    assert_through_the_tunnel(lab)

    # the rules are replayed at boot and after qubes-firewall restarts
    for event in (lab.reboot, lab.restart_qubes_firewall):
        event("sys-vpn")
        tunnel.up()  # a reboot of the lab keeps links and routes; the VPN client brings tun0 up again
        assert_through_the_tunnel(lab)
        tunnel.down()
        assert_nothing_leaks(lab, "tun0 down after %s" % event.__name__)
        tunnel.up()
    assert flab.apply("sys-vpn").changed == {}


def test_dns_none_drops_the_clients_dns(tmp_path):
    flab = FormulaLab(pillar(dns=()), tmp_path, outside=outside(False))
    lab = flab.lab
    tunnel = Tunnel(lab)
    try:
        lab.serve_udp("wan", 53, report_peer=True)
        lab.serve_tcp("wan", 8080, report_peer=True)
        # as if Qubes' dnat-dns pointed at a resolver the tunnel reaches: answered before the formula
        lab.sh("sys-vpn", "nft insert rule ip qubes dnat-dns ip daddr 10.139.1.1 udp dport 53 dnat to %s"
               % TUNNEL_SERVER)
        assert lab.probe_udp("work", "10.139.1.1", 53, timeout=1.0) == "wan:53:%s" % TUNNEL_CLIENT
        assert flab.apply("sys-vpn").retcode == 0
        assert lab.probe_udp("work", "10.139.1.1", 53, timeout=1.0) is None
        assert lab.probe_udp("work", "10.139.1.2", 53, timeout=1.0) is None
        assert reached(lab, "work") == "wan:8080:%s" % TUNNEL_CLIENT
    finally:
        tunnel.close()
        flab.close()
