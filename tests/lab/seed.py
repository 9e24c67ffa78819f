"""The topology of the Qubes firewall manual page, shared by lab tests.

    lan 192.168.1.50 (+.51) --ens6-- sys-net 10.137.0.5 --ens7-- wan 172.30.0.50
    sys-net <- sys-firewall .6 <- sys-vpn .7 <- sys-firewall-2 .8 <- work .9, build .10
    sys-firewall <- web .11
"""

from typing import Dict, List

from tests.lab.spec import OutsideHost, QubeSpec


def seed_qubes() -> Dict[str, QubeSpec]:
    return {
        "sys-net": QubeSpec(ip="10.137.0.5", netvm=None, provides_network=True),
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
                    uplink_ip="192.168.1.10/24", extra_ips=["192.168.1.51/24"]),
        OutsideHost(name="wan", uplink="sys-net", ifname="ens7", host_ip="172.30.0.50/24",
                    uplink_ip="172.30.0.10/24"),
    ]
