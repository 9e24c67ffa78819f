"""IPv6 of lab qubes, computed the way Qubes' core-admin computes it (release4.2 and
release4.3 agree): qubes/vm/mix/net.py, qubes/features.py, qubes/config.py.

- The ``ipv6`` feature is read with ``features.check_with_netvm('ipv6', False)``: the
  qube's own value if it has the feature, else its netvm's, and so on up the chain;
  the first qube that has it decides, by the truth of its string value.  So ``ipv6 1``
  on sys-net gives IPv6 to every qube below it, and ``ipv6 ''`` on a qube turns it off
  there and below (unless a qube further down sets it again).  Feature values are
  strings: ``'0'`` is true, as in Qubes (only ``''`` is false; True/False are stored as
  ``'1'``/``''``).
- ``ip6`` (a networked qube with the feature on): ``fd09:24ef:4179::a89:<qid hex>``;
  disposables ``fd09:24ef:4179::a8a:<dispid hex>`` (``qubes_ipv6_prefix`` plus the hex of
  the IPv4 prefix 10.137 / 10.138).  The qid (dispid) comes from the QubeSpec, else from
  its 10.137 (10.138) address, whose last two bytes encode it (``vmid_to_ipv4``).
- ``gateway6`` (what a netvm gives its clients): its own ``visible_ip6`` (= ip6) when it
  provides network and the feature is on for it; ``visible_gateway6`` of a client: its
  netvm's gateway6, when the feature is on for the client.

QubesDB (qubes/vm/qubesvm.py create_qdb_entries): a qube with a netvm gets ``/qubes-ip6``
when it has an ip6 and ``/qubes-gateway6`` when it has a visible_gateway6; a provider gets
``/qubes-netvm-gateway6`` when it has a gateway6; every provider's ``/connected-ips6``
lists its clients' ip6 (reload_connected_ips).  So a client with ``ipv6 1`` under a netvm
without IPv6 gets an address and no gateway (no route).
"""

import ipaddress
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

QUBES_IPV6_PREFIX = "fd09:24ef:4179:0000"
_VM_NET = ipaddress.IPv4Network("10.137.0.0/16")
_DISP_NET = ipaddress.IPv4Network("10.138.0.0/16")


def feature_value(value) -> Optional[str]:
    """A feature value as Qubes stores it: None (not set) stays None, bools become '1'/''."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else ""
    return str(value)


def vmid_to_ipv4(prefix: str, vmid: int) -> str:
    """core-admin's vmid_to_ipv4: avoids .0 and .255 above vmid 254."""
    if vmid < 255:
        return "{}.{}.{}".format(prefix, (vmid >> 8) & 0xFF, vmid & 0xFF)
    vmid -= 1
    return "{}.{}.{}".format(prefix, vmid // 254, (vmid % 254) + 1)


def vmid_from_ipv4(ip: str) -> Optional[int]:
    """The qid (10.137) or dispid (10.138) whose default address is ip, else None."""
    addr = ipaddress.IPv4Address(ip)
    if addr not in _VM_NET and addr not in _DISP_NET:
        return None
    third, fourth = ip.split(".")[2:]
    vmid = int(third) * 254 + int(fourth)
    prefix = "10.137" if addr in _VM_NET else "10.138"
    return vmid if vmid > 0 and vmid_to_ipv4(prefix, vmid) == ip else None


def ip6_for(qid: Optional[int] = None, dispid: Optional[int] = None) -> str:
    """get_ip6_for_vm: the address of a qube (qid) or a disposable (dispid), compressed as
    str(IPv6Address) writes it to QubesDB."""
    if dispid is not None:
        text = "{}::a8a:{:x}".format(QUBES_IPV6_PREFIX, dispid)
    elif qid is not None:
        text = "{}::a89:{:x}".format(QUBES_IPV6_PREFIX, qid)
    else:
        raise ValueError("ip6_for: needs a qid or a dispid")
    return str(ipaddress.IPv6Address(text))


@dataclass(frozen=True)
class Net6:
    """IPv6 facts of one qube (None: not there).

    enabled: check_with_netvm('ipv6', False) is true for it.
    ip6: its address (vm.ip6 = visible_ip6); gateway6: what it gives its clients;
    visible_gateway6: its netvm's gateway6 as it sees it (its default route).
    """

    enabled: bool
    ip6: Optional[str]
    gateway6: Optional[str]
    visible_gateway6: Optional[str]


def check_with_netvm(qubes: Mapping[str, object], name: str) -> bool:
    """features.check_with_netvm('ipv6', False) of qube `name` (QubeSpec-like: .ipv6, .netvm)."""
    current: Optional[str] = name
    while current is not None:
        value = feature_value(getattr(qubes[current], "ipv6", None))
        if value is not None:
            return bool(value)
        current = qubes[current].netvm
    return False


def _vmid(name: str, spec) -> Dict[str, int]:
    dispid = getattr(spec, "dispid", None)
    qid = getattr(spec, "qid", None)
    if dispid is not None:
        return {"dispid": dispid}
    if qid is not None:
        return {"qid": qid}
    vmid = vmid_from_ipv4(spec.ip)
    if vmid is None:
        raise ValueError("qube {}: IPv6 is on but its qid cannot be told from ip {} (not a default "
                         "10.137/10.138 address): give QubeSpec(qid=...) or (dispid=...)".format(name, spec.ip))
    return {"dispid": vmid} if ipaddress.IPv4Address(spec.ip) in _DISP_NET else {"qid": vmid}


def compute(qubes: Mapping[str, object]) -> Dict[str, Net6]:
    """Net6 of every qube of a (validated) topology."""
    out: Dict[str, Net6] = {}
    enabled = {name: check_with_netvm(qubes, name) for name in qubes}
    for name, spec in qubes.items():
        networked = spec.provides_network or spec.netvm is not None
        ip6 = ip6_for(**_vmid(name, spec)) if networked and enabled[name] else None
        out[name] = Net6(enabled=enabled[name], ip6=ip6, gateway6=None, visible_gateway6=None)
    for name, spec in qubes.items():
        gateway6 = out[name].ip6 if enabled[name] and spec.provides_network else None
        out[name] = Net6(out[name].enabled, out[name].ip6, gateway6, None)
    for name, spec in qubes.items():
        visible = out[spec.netvm].gateway6 if enabled[name] and spec.netvm is not None else None
        out[name] = Net6(out[name].enabled, out[name].ip6, out[name].gateway6, visible)
    return out
