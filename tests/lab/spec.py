"""What a lab is made of: qubes (QubeSpec) and hosts outside Qubes (OutsideHost).

Plain data plus one validator. Nothing here touches the system.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Union

from tests.lab import ipv6

# Qubes allows letters, digits, '_', '.', '-' in qube names (31 chars max).
_QUBE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")
# Linux interface names: at most 15 characters, no '/', ':' or spaces.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

# A qvm-firewall rule as Qubes stores it: "action=accept proto=tcp dstports=443-443"
# or the same as a dict.  Anything else in firewall_rules is taken as nft rule text.
FirewallRule = Union[str, Mapping[str, str]]


@dataclass(frozen=True)
class QubeSpec:
    """One qube of the lab.

    ip: its Qubes IPv4 address (``vm.ip``), e.g. "10.137.0.9".
    netvm: name of the qube giving it network, or None (an uplink qube such as sys-net).
    provides_network: whether other qubes may use it as netvm (ProxyVM/NetVM).
    qubes_firewall: whether the qubes-firewall service runs (tables ``ip/ip6 qubes-firewall``,
        qubes-firewall.d scripts, qubes-firewall-user-script).  Default: == provides_network.
    firewall_rules: its qvm-firewall list as enforced in its netvm's ``qbs-<ip>`` chain.
        None = Qubes' default list ``[action=accept]``.  Entries are either qvm-firewall rule
        lines/dicts ("action=drop", {"action": "accept", "proto": "tcp", "dstports": "443"}),
        translated exactly like qubes-firewall does, or literal nft rule texts ("drop").
        The implicit policy ``reject with icmp type admin-prohibited`` always follows.  A
        client with an ip6 also gets an ``ip6 qubes-firewall`` chain: the same list for IPv6
        (dst6 rules there only, dst4 rules and nft texts in the IPv4 chain only).
    custom_persist: the qube has the service custom-persist (``qvm-features Q
        service.custom-persist 1``).  On Qubes 4.3 its boot then runs neither
        /rw/config/rc.local(.d) nor /rw/config/qubes-firewall.d/* nor
        qubes-firewall-user-script; 4.2 has no such service (the flag changes nothing there).
    template: the template whose root filesystem (/etc included) the qube boots from.
        Qubes naming the same template share one emulated root (Lab.root_dir); None: the
        qube gets a root of its own.
    ipv6: the qube's own value of the ``ipv6`` feature (``qvm-features Q ipv6 1``), None when
        it has none.  Read like Qubes' check_with_netvm (tests.lab.ipv6): set on a netvm it
        gives IPv6 to the qubes below it; ``""`` (or False) turns it off for this qube and
        below.  Default: no IPv6 anywhere, as on Qubes.
    qid / dispid: the qube's qid (its ip6 is fd09:24ef:4179::a89:<qid hex>) or, for a
        disposable, its dispid (::a8a:<dispid hex>).  None: told from its default 10.137 /
        10.138 address (only needed when IPv6 is on for it).
    """

    ip: str
    netvm: Optional[str] = None
    provides_network: bool = False
    qubes_firewall: Optional[bool] = None
    firewall_rules: Optional[Sequence[FirewallRule]] = None
    custom_persist: bool = False
    template: Optional[str] = None
    ipv6: Optional[Union[str, bool]] = None
    qid: Optional[int] = None
    dispid: Optional[int] = None

    @property
    def runs_qubes_firewall(self) -> bool:
        if self.qubes_firewall is None:
            return self.provides_network
        return bool(self.qubes_firewall)


@dataclass(frozen=True)
class OutsideHost:
    """A machine outside Qubes, wired to a physical interface of an uplink qube.

    name: node name used with Lab.run/probe/serve (e.g. "lan").
    uplink: the qube holding the physical interface (e.g. "sys-net").
    ifname: the interface name in the uplink qube (e.g. "ens6"); group 0 like a real NIC.
    host_ip / uplink_ip: CIDR addresses of the host and of the uplink qube on that link.
    extra_ips: more CIDR addresses on the host (to probe from other sources).
    default_route: also give the uplink qube a default route via this host.
    host_ifname: the interface name on the host side.
    host_ip6 / uplink_ip6: optional IPv6 CIDR addresses of the host and of the uplink qube on
        that link (e.g. "2001:db8:1::50/64"; no duplicate address detection, like Qubes'
        /128 addresses they are usable at once); the host's default route then points at
        uplink_ip6 too, and default_route gives the uplink qube one via host_ip6.
    extra_ips6: more IPv6 CIDR addresses on the host.
    """

    name: str
    uplink: str
    ifname: str
    host_ip: str
    uplink_ip: str
    extra_ips: List[str] = field(default_factory=list)
    default_route: bool = False
    host_ifname: str = "eth0"
    host_ip6: Optional[str] = None
    uplink_ip6: Optional[str] = None
    extra_ips6: List[str] = field(default_factory=list)


def _check_ip(what: str, value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError("{}: not an IPv4 address: {!r}".format(what, value)) from None


def _check_cidr(what: str, value: str) -> None:
    try:
        ipaddress.IPv4Interface(value)
    except ValueError:
        raise ValueError("{}: not an IPv4 address/prefix: {!r}".format(what, value)) from None
    if "/" not in value:
        raise ValueError("{}: needs a prefix length (e.g. /24): {!r}".format(what, value))


def _check_cidr6(what: str, value: str) -> None:
    try:
        ipaddress.IPv6Interface(value)
    except ValueError:
        raise ValueError("{}: not an IPv6 address/prefix: {!r}".format(what, value)) from None
    if "/" not in value:
        raise ValueError("{}: needs a prefix length (e.g. /64): {!r}".format(what, value))


def _check_vmid(what: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError("{}: not a positive integer: {!r}".format(what, value))


def validate(qubes: Mapping[str, QubeSpec], outside: Sequence[OutsideHost]) -> List[str]:
    """Check a topology; return the qube names ordered uplinks first (netvm before client).

    Raises ValueError naming the offending entry.
    """
    if not qubes:
        raise ValueError("topology: no qubes")
    seen_ips: Dict[str, str] = {}
    for name, spec in qubes.items():
        if not _QUBE_NAME.match(name):
            raise ValueError("qube {!r}: bad name".format(name))
        if not isinstance(spec, QubeSpec):
            raise ValueError("qube {!r}: not a QubeSpec".format(name))
        _check_ip("qube {} ip".format(name), spec.ip)
        if spec.ip in seen_ips:
            raise ValueError("qube {}: ip {} already used by {}".format(name, spec.ip, seen_ips[spec.ip]))
        seen_ips[spec.ip] = name
        _check_vmid("qube {} qid".format(name), spec.qid)
        _check_vmid("qube {} dispid".format(name), spec.dispid)
        if spec.ipv6 is not None and not isinstance(spec.ipv6, (str, bool)):
            raise ValueError("qube {}: ipv6 feature must be a string, a bool or None: {!r}".format(name, spec.ipv6))
        if spec.template is not None and (not _QUBE_NAME.match(spec.template) or spec.template in qubes):
            raise ValueError("qube {}: template {!r} must be a qube name outside the network "
                             "(templates run no network)".format(name, spec.template))
        if spec.netvm is not None:
            if spec.netvm not in qubes:
                raise ValueError("qube {}: netvm {!r} is not in the topology".format(name, spec.netvm))
            if not qubes[spec.netvm].provides_network:
                raise ValueError("qube {}: netvm {} does not provide network".format(name, spec.netvm))
    order: List[str] = []
    for name in qubes:
        chain = []
        cur: Optional[str] = name
        while cur is not None and cur not in order:
            if cur in chain:
                raise ValueError("qube {}: loops in network are unsupported".format(name))
            chain.append(cur)
            cur = qubes[cur].netvm
        order.extend(reversed(chain))
    seen_ip6s: Dict[str, str] = {}
    for name, net6 in ipv6.compute(qubes).items():
        if net6.ip6 is not None:
            if net6.ip6 in seen_ip6s:
                raise ValueError("qube {}: ip6 {} already used by {} (same qid/dispid?)".format(
                    name, net6.ip6, seen_ip6s[net6.ip6]))
            seen_ip6s[net6.ip6] = name
    names = set(qubes)
    uplink_ifs = set()
    for host in outside:
        if not _QUBE_NAME.match(host.name) or host.name in names:
            raise ValueError("outside host {!r}: bad or duplicate name".format(host.name))
        names.add(host.name)
        if host.uplink not in qubes:
            raise ValueError("outside host {}: uplink {!r} is not a qube".format(host.name, host.uplink))
        for what, ifname in (("ifname", host.ifname), ("host_ifname", host.host_ifname)):
            if not _IFNAME.match(ifname) or ifname.startswith("vif"):
                raise ValueError("outside host {}: bad {} {!r}".format(host.name, what, ifname))
        taken = host.ifname == "eth0" and qubes[host.uplink].netvm is not None
        if taken or (host.uplink, host.ifname) in uplink_ifs:
            raise ValueError("outside host {}: interface {} already used in {}".format(
                host.name, host.ifname, host.uplink))
        uplink_ifs.add((host.uplink, host.ifname))
        _check_cidr("outside host {} host_ip".format(host.name), host.host_ip)
        _check_cidr("outside host {} uplink_ip".format(host.name), host.uplink_ip)
        for extra in host.extra_ips:
            _check_cidr("outside host {} extra_ips".format(host.name), extra)
        if (host.host_ip6 is None) != (host.uplink_ip6 is None):
            raise ValueError("outside host {}: host_ip6 and uplink_ip6 go together".format(host.name))
        if host.host_ip6 is None and host.extra_ips6:
            raise ValueError("outside host {}: extra_ips6 needs host_ip6".format(host.name))
        for what, value in (("host_ip6", host.host_ip6), ("uplink_ip6", host.uplink_ip6)):
            if value is not None:
                _check_cidr6("outside host {} {}".format(host.name, what), value)
        for extra in host.extra_ips6:
            _check_cidr6("outside host {} extra_ips6".format(host.name), extra)
    return order
