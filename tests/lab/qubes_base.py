"""The nftables text Qubes OS 4.2 and 4.3 load in a qube.

Pure functions returning `nft -f` input.  Sources mirrored (core-agent-linux, branches
release4.2 and release4.3): network/qubes-antispoof.nft, qubes-ipv4.nft, qubes-ipv6.nft
(identical in both releases; ip6 always loaded, even without IPv6), qubes-setup-dnat-to-ns
(dnat-dns), qubesagent/firewall.py (qubes-firewall tables and qbs- chains),
network/vif-route-qubes (set elements).  ``inet qubes-nat-accel`` is left out: it makes
no policy decision.

What 4.3 changed in the qubes-firewall daemon (``release`` arguments below):
- its ``forward`` base chain ends with ``jump qubes-forward``, a regular chain holding
  the per-client ``ip saddr X jump qbs-X`` rules (4.2 appends them to ``forward``);
- a ``dns-addr`` set holds the netvm's resolvers, refilled with every client chain, and
  ``specialtarget=dns`` rules match ``ip daddr @dns-addr`` (4.2 writes the addresses into
  each rule, and drops the rule when there are none);
- SIGHUP reloads every client chain (qubes-setup-dnat-to-ns sends it when dnat-dns changes).
"""

import ipaddress
from typing import Iterable, List, Mapping, Optional, Sequence, Union

# Addresses a qube's resolv.conf points to; every provider DNATs them (dnat-dns).
VIRTUAL_DNS = ("10.139.1.1", "10.139.1.2")

RELEASES = ("4.2", "4.3")
DEFAULT_RELEASE = "4.3"


def check_release(release: str) -> str:
    if release not in RELEASES:
        raise ValueError("Qubes release {!r}: the lab emulates {}".format(release, " and ".join(RELEASES)))
    return release

ANTISPOOF = """\
table ip qubes {
   set downstream {
      type ipv4_addr
   }

   set allowed {
      type ifname . ipv4_addr
   }

   chain prerouting {
      type filter hook prerouting priority raw; policy accept;
      iifgroup 2 goto antispoof
      ip saddr @downstream counter drop
   }

   chain antispoof {
      iifname . ip saddr @allowed accept
      counter drop
   }
}

table ip6 qubes {
   set downstream {
      type ipv6_addr
   }

   set allowed {
      type ifname . ipv6_addr
   }

   chain antispoof {
      iifname . ip6 saddr @allowed accept
      counter drop
   }

   chain prerouting {
      type filter hook prerouting priority raw; policy accept;
      iifgroup 2 goto antispoof
      ip6 saddr @downstream counter drop
   }
}
"""

IPV4 = """\
table ip qubes {
   chain postrouting {
      type nat hook postrouting priority srcnat; policy accept;
      oifgroup 2 accept
      oif lo accept
      masquerade
   }

   chain input {
      type filter hook input priority filter; policy drop;
      jump custom-input
      ct state invalid counter drop
      iifgroup 2 meta l4proto udp udp dport 68 counter drop
      ct state related,established accept
      iifgroup 2 meta l4proto icmp accept
      iif lo accept
      iifgroup 2 counter reject with icmp type host-prohibited
      counter
   }

   chain forward {
      type filter hook forward priority filter; policy accept;
      jump custom-forward
      ct state invalid counter drop
      ct state related,established accept
      oifgroup 2 counter drop
   }

   # These chains are reserved for end-users.  Qubes OS itself will
   # never modify them.
   chain custom-input {}
   chain custom-forward {}
}
"""

IPV6 = """\
table ip6 qubes {
   chain postrouting {
      type nat hook postrouting priority srcnat; policy accept;
      oifgroup 2 accept
      oif lo accept
      masquerade
   }

   chain _icmpv6 {
      meta l4proto != ipv6-icmp counter reject with icmpv6 type admin-prohibited
      icmpv6 type { nd-router-advert, nd-redirect } counter drop
      accept
   }

   chain input {
      type filter hook input priority filter; policy drop;
      jump custom-input
      ct state invalid counter drop
      ct state related,established accept
      iifgroup 2 goto _icmpv6
      iif lo accept
      meta l4proto udp ip6 saddr fe80::/64 ip6 daddr fe80::/64 udp dport 546 accept
      meta l4proto ipv6-icmp accept
      counter
   }

   chain forward {
      type filter hook forward priority filter; policy accept;
      jump custom-forward
      ct state invalid counter drop
      ct state related,established accept
      oifgroup 2 counter drop
   }

   # These chains are reserved for end-users.  Qubes OS itself will
   # never modify them.
   chain custom-input {}
   chain custom-forward {}
}
"""

_QUBES_FIREWALL_TABLE = """\
table {family} qubes-firewall {{
  chain forward {{
    type filter hook forward priority filter;
    policy drop;
    ct state established,related accept
    meta iifname != "vif*" accept
  }}
  chain prerouting {{
    type filter hook prerouting priority raw;
    policy accept;
  }}
  chain postrouting {{
    type filter hook postrouting priority raw;
    policy accept;
  }}
}}
"""


def base_tables() -> List[str]:
    """The three files every qube loads at boot, in order (antispoof, ipv4, ipv6)."""
    return [ANTISPOOF, IPV4, IPV6]


def dnat_dns(upstream: Optional[Sequence[str]]) -> str:
    """`ip qubes dnat-dns` as qubes-setup-dnat-to-ns (re)creates it, in one transaction.

    upstream: the provider's own resolvers (sys-net: real servers; a proxy qube: its
    resolv.conf, i.e. 10.139.1.1/2, giving identity rules).  Empty/None: drop rules.
    """
    lines = [
        "add table ip qubes",
        "add chain ip qubes dnat-dns",
        "delete chain ip qubes dnat-dns",
        "table ip qubes {",
        "chain dnat-dns {",
        "type nat hook prerouting priority dstnat; policy accept;",
    ]
    servers = [s for s in (upstream or []) if ipaddress.ip_address(s).version == 4][:2]
    if not servers:
        for vdns in VIRTUAL_DNS:
            lines += ["ip daddr {} udp dport 53 drop".format(vdns),
                      "ip daddr {} tcp dport 53 drop".format(vdns)]
    else:
        while len(servers) < len(VIRTUAL_DNS):
            servers = servers + servers
        for vdns, dest in zip(VIRTUAL_DNS, servers):
            lines += ["ip daddr {} udp dport 53 dnat to {}".format(vdns, dest),
                      "ip daddr {} tcp dport 53 dnat to {}".format(vdns, dest)]
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


_QUBES_FIREWALL_TABLE_43 = """\
table {family} qubes-firewall {{
  set dns-addr {{
    type {addr_type}
  }}
  chain qubes-forward {{
  }}
  chain forward {{
    type filter hook forward priority filter;
    policy drop;
    ct state established,related accept
    meta iifname != "vif*" accept
    jump qubes-forward
  }}
  chain prerouting {{
    type filter hook prerouting priority raw;
    policy accept;
  }}
  chain postrouting {{
    type filter hook postrouting priority raw;
    policy accept;
  }}
}}
"""


def qubes_firewall_tables(release: str = DEFAULT_RELEASE) -> str:
    """What the qubes-firewall daemon creates at start (``ip`` and ``ip6 qubes-firewall``)."""
    if check_release(release) == "4.2":
        return "".join(_QUBES_FIREWALL_TABLE.format(family=fam) for fam in ("ip", "ip6"))
    return "".join(_QUBES_FIREWALL_TABLE_43.format(family=fam, addr_type=typ)
                   for fam, typ in (("ip", "ipv4_addr"), ("ip6", "ipv6_addr")))


def client_jump_chain(release: str = DEFAULT_RELEASE) -> str:
    """The qubes-firewall chain holding the per-client jumps: forward (4.2), qubes-forward (4.3)."""
    return "forward" if check_release(release) == "4.2" else "qubes-forward"


def qubes_firewall_delete() -> str:
    """What the qubes-firewall daemon does at stop."""
    return "delete table ip qubes-firewall\ndelete table ip6 qubes-firewall\n"


def chain_for_addr(addr: str) -> str:
    """qbs- chain name of a client address: 10.137.0.9 -> qbs-10-137-0-9."""
    return "qbs-" + addr.replace(".", "-").replace(":", "-")


def _qvm_rule_dict(rule: Union[str, Mapping[str, str]]) -> Optional[dict]:
    if isinstance(rule, Mapping):
        return dict(rule)
    if "action=" in rule:
        return dict(part.split("=", 1) for part in rule.split())
    return None


def qvm_rule_to_nft(rule: Mapping[str, str], dns_servers: Sequence[str] = VIRTUAL_DNS,
                    release: str = DEFAULT_RELEASE) -> List[str]:
    """Translate one qvm-firewall rule (IPv4) the way qubesagent/firewall.py does.

    drop -> ``reject with icmp type admin-prohibited``; proto -> ``ip protocol X``;
    dst4/dsthost -> ``ip daddr``; dstports -> ``tcp|udp dport A[-B]`` (no proto: a tcp and a
    udp rule); specialtarget=dns -> port 53 to the netvm's resolvers (4.2: the addresses,
    rule dropped when there are none; 4.3: ``@dns-addr``); icmptype -> ``icmp type N``.
    Hostnames are refused: resolving them would send DNS traffic out of the lab.
    """
    check_release(release)
    rule = dict(rule)
    rule.pop("comment", None)
    rule.pop("expire", None)
    action = rule.pop("action", None)
    if action == "accept":
        verdict = "accept"
    elif action == "drop":
        verdict = "reject with icmp type admin-prohibited"
    else:
        raise ValueError("qvm-firewall rule: bad action {!r}".format(action))
    unknown = set(rule) - {"proto", "dst4", "dst6", "dsthost", "dstports", "specialtarget", "icmptype"}
    if unknown:
        raise ValueError("qvm-firewall rule: unsupported option(s) {}".format(sorted(unknown)))
    if "dst6" in rule:
        return []  # an IPv6 rule does not appear in the IPv4 chain
    text = ""
    proto = rule.get("proto")
    if proto:
        text += " ip protocol {}".format(proto)
    dst = rule.get("dst4") or rule.get("dsthost")
    if dst:
        try:
            net = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            raise ValueError("qvm-firewall rule: dsthost {!r}: the lab takes IPv4 addresses only".format(dst)) from None
        text += " ip daddr {}".format(net)
    dstports = rule.get("dstports")
    if dstports is not None:
        low, _, high = dstports.partition("-")
        dstports = low if not high or high == low else dstports
    if rule.get("specialtarget") == "dns":
        if dstports not in ("53", None):
            return []
        dstports = "53"
        if release != "4.2":
            text += " ip daddr @dns-addr"
        elif not dns_servers:
            return []
        else:
            text += " ip daddr {{ {} }}".format(", ".join(s + "/32" for s in dns_servers))
    if "icmptype" in rule:
        text += " icmp type {}".format(rule["icmptype"])
    if dstports is not None:
        protos = [proto] if proto else ["tcp", "udp"]
        return [(text + " {} dport {} {}".format(p, dstports, verdict)).strip() for p in protos]
    return [(text + " " + verdict).strip()]


def client_rules(firewall_rules: Optional[Iterable[Union[str, Mapping[str, str]]]],
                 dns_servers: Sequence[str] = VIRTUAL_DNS, release: str = DEFAULT_RELEASE) -> List[str]:
    """The rule texts of a client's qbs- chain: its list, then the policy reject.

    None means Qubes' default list [action=accept].
    """
    if firewall_rules is None:
        firewall_rules = ["action=accept"]
    out: List[str] = []
    for rule in firewall_rules:
        as_dict = _qvm_rule_dict(rule)
        if as_dict is None:
            out.append(str(rule).strip())
        else:
            out.extend(qvm_rule_to_nft(as_dict, dns_servers, release))
    out.append("reject with icmp type admin-prohibited")
    return out


def client_chain_create(addr: str, release: str = DEFAULT_RELEASE) -> str:
    """First sight of a client: its chain, and the jump appended to forward (4.2) or
    qubes-forward (4.3)."""
    chain = chain_for_addr(addr)
    return ("table ip qubes-firewall {{\n  chain {chain} {{\n  }}\n  chain {jumps} {{\n"
            "    ip saddr {ip} jump {chain}\n  }}\n}}\n").format(
                chain=chain, ip=addr, jumps=client_jump_chain(release))


def client_chain_fill(addr: str, rules: Sequence[str], release: str = DEFAULT_RELEASE,
                      dns_servers: Sequence[str] = VIRTUAL_DNS) -> str:
    """Replace a client's qbs- chain content in one transaction (flush, then the list);
    4.3 refills the dns-addr set in the same transaction."""
    chain = chain_for_addr(addr)
    body = "\n".join("    " + rule for rule in rules)
    head = ""
    if check_release(release) != "4.2":
        head = "flush set ip qubes-firewall dns-addr\n"
        if dns_servers:
            head += "add element ip qubes-firewall dns-addr {{ {} }}\n".format(", ".join(dns_servers))
    return head + ("flush chain ip qubes-firewall {chain}\ntable ip qubes-firewall {{\n"
                   "  chain {chain} {{\n{body}\n  }}\n}}\n").format(chain=chain, body=body)


def connected_ips(ips: Sequence[str]) -> str:
    """Refill qubes-firewall prerouting/postrouting from /connected-ips (IPv4)."""
    if ips:
        addrs = "{ " + ", ".join(ips) + " }"
        irule = '    iifname != "vif*" ip saddr {} drop\n'.format(addrs)
        orule = '    oifname != "vif*" ip daddr {} drop\n'.format(addrs)
    else:
        irule = orule = ""
    return ("flush chain ip qubes-firewall prerouting\nflush chain ip qubes-firewall postrouting\n"
            "table ip qubes-firewall {{\n  chain prerouting {{\n{}  }}\n"
            "  chain postrouting {{\n{}  }}\n}}\n").format(irule, orule)


def vif_online(vif: str, client_ip: str) -> str:
    """Set elements vif-route-qubes adds when a client's vif comes online."""
    return ('add element ip qubes allowed {{ "{vif}" . {ip} }}\n'
            "add element ip qubes downstream {{ {ip} }}\n").format(vif=vif, ip=client_ip)


def vif_offline(vif: str, client_ip: str) -> str:
    return ('delete element ip qubes allowed {{ "{vif}" . {ip} }}\n'
            "delete element ip qubes downstream {{ {ip} }}\n").format(vif=vif, ip=client_ip)
