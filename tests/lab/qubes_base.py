"""The nftables text Qubes OS 4.2 and 4.3 load in a qube.

Pure functions returning `nft -f` input.  Sources mirrored (core-agent-linux, branches
release4.2 and release4.3): network/qubes-antispoof.nft, qubes-ipv4.nft, qubes-ipv6.nft,
qubes-ipv6-disabled.nft (all identical in both releases), qubes-setup-dnat-to-ns
(dnat-dns), qubesagent/firewall.py (qubes-firewall tables and qbs- chains),
network/vif-route-qubes (set elements).  ``inet qubes-nat-accel`` is left out: it makes
no policy decision.

IPv6 base tables: qubes-antispoof.service loads qubes-antispoof.nft (``ip qubes`` and
``ip6 qubes`` sets, prerouting, antispoof) in every qube; then network/qubes-iptables runs
``start ipv4 && start ipv6`` and means to load qubes-ipv6-disabled.nft (``ip6 qbs-filter``:
input and forward policy drop) instead of qubes-ipv6.nft when the qube has neither
/qubes-ip6 nor /qubes-netvm-gateway6 in QubesDB, but tests ``"$ipt" = "ip6tables"`` while
called with ``ipv6``: so in 4.2 and 4.3 the full ``ip6 qubes`` (postrouting masquerade,
_icmpv6, input, forward, custom-input, custom-forward) loads in every qube, IPv6 or not.
base_tables(ipv6_disabled=True) gives what a fixed qubes-iptables would load.

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

IPV6_DISABLED = """\
table ip6 qbs-filter {
   chain input {
      type filter hook input priority filter; policy drop;
      iif lo accept
      counter
   }

   chain forward {
      type filter hook forward priority filter; policy drop;
      counter
   }
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


def base_tables(ipv6_disabled: bool = False) -> List[str]:
    """The three files a qube loads at boot, in order: antispoof, ipv4, then ipv6 or, when
    ipv6_disabled (only a fixed qubes-iptables does that, in a qube without IPv6),
    ipv6-disabled."""
    return [ANTISPOOF, IPV4, IPV6_DISABLED if ipv6_disabled else IPV6]


def family_of(addr: str) -> int:
    """4 or 6: the address family of an address (or network), as firewall.py's is_ip6."""
    return 6 if ":" in addr else 4


def nft_family(family: int) -> str:
    return "ip6" if family == 6 else "ip"


def resolvers_of_family(servers: Sequence[str], family: int) -> List[str]:
    """The resolv.conf servers qubes-firewall's dns_addresses(family) yields."""
    return [s for s in servers if family_of(s) == family]


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
                    release: str = DEFAULT_RELEASE, family: int = 4) -> List[str]:
    """Translate one qvm-firewall rule the way qubesagent/firewall.py does, for the client's
    IPv4 chain (family 4) or its IPv6 one (family 6).

    drop -> ``reject with icmp type admin-prohibited`` (icmpv6 for 6); proto -> ``ip protocol
    X`` (6: ``ip6 nexthdr X``, icmp -> icmpv6); dst4/dst6/dsthost -> ``ip daddr`` / ``ip6
    daddr``; dstports -> ``tcp|udp dport A[-B]`` (no proto: a tcp and a udp rule);
    specialtarget=dns -> port 53 to the netvm's resolvers of that family (4.2: the
    addresses, rule dropped when there are none; 4.3: ``@dns-addr``); icmptype -> ``icmp
    type N`` (6: ``icmpv6 type N``).  A rule for the other family is left out, as core-admin's
    Firewall.qdb_entries(addr_family) leaves it out of that chain (a dsthost written as an
    address counts as dst4/dst6, as core-admin's DstHost types it).  Hostnames are refused:
    resolving them would send DNS traffic out of the lab.
    """
    check_release(release)
    if family not in (4, 6):
        raise ValueError("qvm-firewall rule: family must be 4 or 6, not {!r}".format(family))
    rule = dict(rule)
    rule.pop("comment", None)
    rule.pop("expire", None)
    action = rule.pop("action", None)
    icmp = "icmpv6" if family == 6 else "icmp"
    if action == "accept":
        verdict = "accept"
    elif action == "drop":
        verdict = "reject with {} type admin-prohibited".format(icmp)
    else:
        raise ValueError("qvm-firewall rule: bad action {!r}".format(action))
    unknown = set(rule) - {"proto", "dst4", "dst6", "dsthost", "dstports", "specialtarget", "icmptype"}
    if unknown:
        raise ValueError("qvm-firewall rule: unsupported option(s) {}".format(sorted(unknown)))
    dst = rule.get("dst4") or rule.get("dst6") or rule.get("dsthost")
    net = None
    if dst:
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            raise ValueError("qvm-firewall rule: dsthost {!r}: the lab takes IP addresses only (IPv4 or IPv6), "
                             "no host names".format(dst)) from None
        if ("dst4" in rule and net.version != 4) or ("dst6" in rule and net.version != 6):
            raise ValueError("qvm-firewall rule: {!r} is not an IPv{} network".format(
                dst, 4 if "dst4" in rule else 6))
        if net.version != family:
            return []  # a rule of the other family does not appear in this chain
    match = nft_family(family)
    text = ""
    proto = rule.get("proto")
    if proto:
        if family == 4:
            text += " ip protocol {}".format(proto)
        else:
            text += " ip6 nexthdr {}".format("icmpv6" if proto == "icmp" else proto)
    if net is not None:
        text += " {} daddr {}".format(match, net)
    dstports = rule.get("dstports")
    if dstports is not None:
        low, _, high = dstports.partition("-")
        dstports = low if not high or high == low else dstports
    if rule.get("specialtarget") == "dns":
        if dstports not in ("53", None):
            return []
        dstports = "53"
        servers = resolvers_of_family(dns_servers, family)
        if release != "4.2":
            text += " {} daddr @dns-addr".format(match)
        elif not servers:
            return []
        else:
            mask = "/128" if family == 6 else "/32"
            text += " {} daddr {{ {} }}".format(match, ", ".join(s + mask for s in servers))
    if "icmptype" in rule:
        text += " {} type {}".format(icmp, rule["icmptype"])
    if dstports is not None:
        protos = [proto] if proto else ["tcp", "udp"]
        return [(text + " {} dport {} {}".format(p, dstports, verdict)).strip() for p in protos]
    return [(text + " " + verdict).strip()]


def client_rules(firewall_rules: Optional[Iterable[Union[str, Mapping[str, str]]]],
                 dns_servers: Sequence[str] = VIRTUAL_DNS, release: str = DEFAULT_RELEASE,
                 family: int = 4) -> List[str]:
    """The rule texts of a client's qbs- chain of that family: its list, then the policy
    reject.  None means Qubes' default list [action=accept].  Literal nft rule texts go
    into the IPv4 chain only.
    """
    if firewall_rules is None:
        firewall_rules = ["action=accept"]
    out: List[str] = []
    for rule in firewall_rules:
        as_dict = _qvm_rule_dict(rule)
        if as_dict is None:
            if family == 4:
                out.append(str(rule).strip())
        else:
            out.extend(qvm_rule_to_nft(as_dict, dns_servers, release, family))
    out.append("reject with {} type admin-prohibited".format("icmpv6" if family == 6 else "icmp"))
    return out


def client_chain_create(addr: str, release: str = DEFAULT_RELEASE) -> str:
    """First sight of a client address: its chain, and the jump appended to forward (4.2) or
    qubes-forward (4.3), in ``ip`` or ``ip6 qubes-firewall`` after the address's family."""
    chain = chain_for_addr(addr)
    return ("table {fam} qubes-firewall {{\n  chain {chain} {{\n  }}\n  chain {jumps} {{\n"
            "    {fam} saddr {ip} jump {chain}\n  }}\n}}\n").format(
                fam=nft_family(family_of(addr)), chain=chain, ip=addr, jumps=client_jump_chain(release))


def client_chain_fill(addr: str, rules: Sequence[str], release: str = DEFAULT_RELEASE,
                      dns_servers: Sequence[str] = VIRTUAL_DNS) -> str:
    """Replace a client address's qbs- chain content in one transaction (flush, then the
    list); 4.3 refills that family's dns-addr set (resolvers of that family) in the same
    transaction."""
    chain = chain_for_addr(addr)
    family = family_of(addr)
    fam = nft_family(family)
    body = "\n".join("    " + rule for rule in rules)
    head = ""
    if check_release(release) != "4.2":
        head = "flush set {} qubes-firewall dns-addr\n".format(fam)
        servers = resolvers_of_family(dns_servers, family)
        if servers:
            head += "add element {} qubes-firewall dns-addr {{ {} }}\n".format(fam, ", ".join(servers))
    return head + ("flush chain {fam} qubes-firewall {chain}\ntable {fam} qubes-firewall {{\n"
                   "  chain {chain} {{\n{body}\n  }}\n}}\n").format(fam=fam, chain=chain, body=body)


def connected_ips(ips: Sequence[str], family: int = 4) -> str:
    """Refill qubes-firewall prerouting/postrouting from /connected-ips (family 4) or
    /connected-ips6 (family 6)."""
    fam = nft_family(family)
    if ips:
        addrs = "{ " + ", ".join(ips) + " }"
        irule = '    iifname != "vif*" {} saddr {} drop\n'.format(fam, addrs)
        orule = '    oifname != "vif*" {} daddr {} drop\n'.format(fam, addrs)
    else:
        irule = orule = ""
    return ("flush chain {fam} qubes-firewall prerouting\nflush chain {fam} qubes-firewall postrouting\n"
            "table {fam} qubes-firewall {{\n  chain prerouting {{\n{}  }}\n"
            "  chain postrouting {{\n{}  }}\n}}\n").format(irule, orule, fam=fam)


def vif_online(vif: str, client_ip: str) -> str:
    """Set elements vif-route-qubes adds when a client's vif comes online, for one client
    address (``ip qubes`` or ``ip6 qubes`` after its family)."""
    return ('add element {fam} qubes allowed {{ "{vif}" . {ip} }}\n'
            "add element {fam} qubes downstream {{ {ip} }}\n").format(
                fam=nft_family(family_of(client_ip)), vif=vif, ip=client_ip)


def vif_offline(vif: str, client_ip: str) -> str:
    return ('delete element {fam} qubes allowed {{ "{vif}" . {ip} }}\n'
            "delete element {fam} qubes downstream {{ {ip} }}\n").format(
                fam=nft_family(family_of(client_ip)), vif=vif, ip=client_ip)
