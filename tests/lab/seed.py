"""The topology of the Qubes firewall manual page, shared by lab tests.

    lan 192.168.1.50 (+.51) --ens6-- sys-net 10.137.0.5 --ens7-- wan 172.30.0.50
    sys-net <- sys-firewall .6 <- sys-vpn .7 <- sys-firewall-2 .8 <- work .9, build .10
    sys-firewall <- web .11

The outside links carry IPv6 too (documentation prefix 2001:db8::/32): lan 2001:db8:1::50
(+::51) and sys-net 2001:db8:1::10 on ens6, wan 2001:db8:30::50 and sys-net 2001:db8:30::10
on ens7.  Qubes gives the qubes IPv6 only with seed_qubes(ipv6=True): the ``ipv6`` feature
on sys-net, so every qube below it gets fd09:24ef:4179::a89:<qid> (qid = last byte above).
"""

from typing import Dict, List

from tests.lab.spec import OutsideHost, QubeSpec


def seed_qubes(ipv6: bool = False) -> Dict[str, QubeSpec]:
    return {
        "sys-net": QubeSpec(ip="10.137.0.5", netvm=None, provides_network=True, ipv6="1" if ipv6 else None),
        "sys-firewall": QubeSpec(ip="10.137.0.6", netvm="sys-net", provides_network=True),
        "sys-vpn": QubeSpec(ip="10.137.0.7", netvm="sys-firewall", provides_network=True),
        "sys-firewall-2": QubeSpec(ip="10.137.0.8", netvm="sys-vpn", provides_network=True),
        "work": QubeSpec(ip="10.137.0.9", netvm="sys-firewall-2"),
        "build": QubeSpec(ip="10.137.0.10", netvm="sys-firewall-2"),
        "web": QubeSpec(ip="10.137.0.11", netvm="sys-firewall"),
    }


def seed_outside() -> List[OutsideHost]:
    return [
        OutsideHost(name="lan", uplink="sys-net", ifname="ens6", host_ip="192.168.1.50/24",
                    uplink_ip="192.168.1.10/24", extra_ips=["192.168.1.51/24"],
                    host_ip6="2001:db8:1::50/64", uplink_ip6="2001:db8:1::10/64",
                    extra_ips6=["2001:db8:1::51/64"]),
        OutsideHost(name="wan", uplink="sys-net", ifname="ens7", host_ip="172.30.0.50/24",
                    uplink_ip="172.30.0.10/24", host_ip6="2001:db8:30::50/64",
                    uplink_ip6="2001:db8:30::10/64"),
    ]
