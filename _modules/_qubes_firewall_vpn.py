"""
A VPN qube that fails closed: the nftables objects the formula owns in a
network service qube with ``vpn:`` in the pillar (``qubes:<qube>:vpn``).

Pure planning, no I/O: ``objects(model, qube)`` says what to write as plain
data (each statement as its nft text and the JSON ``nft -j list`` prints for
it); the planner (``_qubes_firewall_plan.plan_qube``) turns it into its
chains, rules and sets, so the VPN objects are compared, loaded, replayed at
boot and counted exactly like every other owned object.

What the VPN qube gets, in ``table ip qubes`` and, where the planner writes
IPv6 objects for it, ``table ip6 qubes`` (DNS stays IPv4); at most five rules
per packet whatever the number of endpoints (the tunnel interfaces and the
endpoints are sets, the resolvers a map):

- ``qf-vpn-fwd`` (``type filter hook forward priority filter - 1``): its
  clients (``iifgroup 2``) may be forwarded only to a tunnel interface (set
  ``qf-vpn-tunnels``) or to another client, and nothing reaches its clients (``oifgroup 2``) but from a
  tunnel interface or another client.  Both are drops in a base chain of
  their own: a drop is final whatever another base chain on the hook accepts
  (Qubes' ``ct state established,related accept`` included), so when the
  tunnel is down and the routes fall back to ``eth0`` (``oifgroup 1``), a
  client's packet, new or established, goes nowhere.  It runs before Qubes'
  flow offload (``inet qubes-nat-accel``, ``filter + 5``), so no such flow
  is ever offloaded past it.
- ``qf-vpn-out`` (``type filter hook output priority filter``): the VPN
  qube's own packets leave by its upstream (``oifgroup 1``) only to an
  endpoint (set ``qf-vpn-ep``: address or network . protocol . port, one
  counted element per endpoint); everything else out of ``eth0``, established
  or not, is dropped.
- ``qf-vpn-dns`` (``type nat hook prerouting priority filter - 101``, just
  before Qubes' ``dnat-dns`` at ``dstnat``, which points the virtual DNS
  addresses at the upstream's resolvers; the first nat chain that maps a
  connection wins): the clients' DNS to 10.139.1.1 / 10.139.1.2 is sent to
  the resolvers of ``vpn:dns`` (map ``qf-vpn-resolvers``, the first to .1,
  the second, else the first again, to .2), or dropped with ``dns: none``.
"""

import collections

FORWARD = "qf-vpn-fwd"
OUTPUT = "qf-vpn-out"
DNS = "qf-vpn-dns"
ENDPOINTS = "qf-vpn-ep"
TUNNELS = "qf-vpn-tunnels"
RESOLVERS = "qf-vpn-resolvers"
VIRTUAL_DNS = ("10.139.1.1", "10.139.1.2")
_FORWARD_HOOK = ("filter", "forward", -1, "accept")
_OUTPUT_HOOK = ("filter", "output", 0, "accept")
_DNS_HOOK = ("nat", "prerouting", -101, "accept")  # dstnat - 1

# plain data the planner turns into its objects; a statement is (nft text, nft JSON)
VpnRule = collections.namedtuple("VpnRule", "matches verdict origin counted")
VpnChain = collections.namedtuple("VpnChain", "family name hook rules")
VpnSet = collections.namedtuple("VpnSet", "family name key_type value_type flags elements")
VpnElement = collections.namedtuple("VpnElement", "key value origin")
VpnObjects = collections.namedtuple("VpnObjects", "chains sets")

_NONE = VpnObjects((), ())


def _match(text, left, right, op="=="):
    return text, {"match": {"op": op, "left": left, "right": right}}


def _meta(key):
    return {"meta": {"key": key}}


def _group(key, group, negate=False):
    return _match("%s %s%d" % (key, "!= " if negate else "", group), _meta(key), group,
                  "!=" if negate else "==")


def _not_tunnel(key):
    """``iifname`` / ``oifname`` is none of the tunnel interfaces (set ``qf-vpn-tunnels``)."""
    return _match("%s != @%s" % (key, TUNNELS), _meta(key), "@" + TUNNELS, "!=")


_DROP = ("drop", {"drop": None})
_ACCEPT = ("accept", {"accept": None})


def _forward_rules(vpn):
    """Clients out only through a tunnel; nothing in to the clients but from a tunnel (or another client)."""
    return (
        VpnRule((_group("iifgroup", 2), _group("oifgroup", 2, True), _not_tunnel("oifname")),
                _DROP, "vpn: the clients leave only through the tunnel", True),
        VpnRule((_group("oifgroup", 2), _group("iifgroup", 2, True), _not_tunnel("iifname")),
                _DROP, "vpn: the clients get nothing but from the tunnel", True),
    )


def _tunnels(vpn, family):
    elements = tuple(VpnElement((name,), None, "vpn:interfaces:%d" % i) for i, name in enumerate(vpn.interfaces))
    return VpnSet(family, TUNNELS, ("ifname",), None, (), elements)


def _endpoint_key(family):
    field = {"payload": {"protocol": family, "field": "daddr"}}
    left = {"concat": [field, _meta("l4proto"), {"payload": {"protocol": "th", "field": "dport"}}]}
    text = "%s daddr . meta l4proto . th dport @%s" % (family, ENDPOINTS)
    return _match(text, left, "@" + ENDPOINTS)


def _output(vpn, family, addr_type):
    """The VPN qube's own packets out of its upstream: to the endpoints only."""
    version = 6 if family == "ip6" else 4
    endpoints = [e for e in vpn.endpoints if e.family == version]
    elements = tuple(VpnElement((e.address, e.protocol, e.port), None, "vpn:endpoints:%d" % i)
                     for i, e in enumerate(vpn.endpoints) if e.family == version)
    rules = ()
    sets = ()
    if endpoints:
        sets = (VpnSet(family, ENDPOINTS, (addr_type, "inet_proto", "inet_service"), None, ("interval",),
                       elements),)
        rules = (VpnRule((_group("oifgroup", 1), _endpoint_key(family)), _ACCEPT,
                         "vpn: the endpoints @%s" % ENDPOINTS, False),)
    rules += (VpnRule((_group("oifgroup", 1),), _DROP, "vpn: nothing else out of the upstream", True),)
    return VpnChain(family, OUTPUT, _OUTPUT_HOOK, rules), sets


def _dns(vpn):
    """The clients' DNS to the resolvers behind the tunnel, or dropped."""
    matches = (
        _group("iifgroup", 2),
        _match("ip daddr { %s }" % ", ".join(VIRTUAL_DNS), {"payload": {"protocol": "ip", "field": "daddr"}},
               {"set": list(VIRTUAL_DNS)}),
        _match("meta l4proto { tcp, udp }", _meta("l4proto"), {"set": ["tcp", "udp"]}),
        _match("th dport 53", {"payload": {"protocol": "th", "field": "dport"}}, 53),
    )
    if not vpn.dns:
        return VpnChain("ip", DNS, _DNS_HOOK, (VpnRule(matches, _DROP, "vpn:dns none: dropped", True),)), ()
    servers = [vpn.dns[0], vpn.dns[1] if len(vpn.dns) > 1 else vpn.dns[0]]
    elements = tuple(VpnElement((virtual,), (server,), "vpn:dns:%d" % vpn.dns.index(server))
                     for virtual, server in zip(VIRTUAL_DNS, servers))
    resolvers = VpnSet("ip", RESOLVERS, ("ipv4_addr",), "ipv4_addr", (), elements)
    key = {"payload": {"protocol": "ip", "field": "daddr"}}
    verdict = ("dnat ip to ip daddr map @%s" % RESOLVERS,
               {"dnat": {"addr": {"map": {"key": key, "data": "@" + RESOLVERS}}}})
    rule = VpnRule(matches, verdict, "vpn:dns to the resolvers @%s" % RESOLVERS, False)
    return VpnChain("ip", DNS, _DNS_HOOK, (rule,)), (resolvers,)


def objects(model, qube, families=("ip",)):
    """
    The VPN objects of ``qube`` (``VpnObjects(chains, sets)``), empty when it
    has no ``vpn``.  ``families``: the nft families to write them for (``ip``,
    and ``ip6`` where the planner writes IPv6 objects).
    """
    vpn = model.qubes[qube].vpn if qube in model.qubes else None
    if vpn is None:
        return _NONE
    chains, sets = [], []
    for family in families:
        addr_type = "ipv6_addr" if family == "ip6" else "ipv4_addr"
        chains.append(VpnChain(family, FORWARD, _FORWARD_HOOK, _forward_rules(vpn)))
        sets.append(_tunnels(vpn, family))
        out, out_sets = _output(vpn, family, addr_type)
        chains.append(out)
        sets += out_sets
        if family == "ip":  # DNS stays IPv4 in Qubes (the virtual 10.139.1.1 / .2)
            dns, dns_sets = _dns(vpn)
            chains.append(dns)
            sets += dns_sets
    return VpnObjects(tuple(chains), tuple(sets))


# --------------------------------------------------------------------------
# what check asks: does a client's packet leave by the upstream when the tunnel is down?
# --------------------------------------------------------------------------


def _value_in(value, right, sets):
    if isinstance(right, str) and right.startswith("@"):
        if right[1:] not in sets:
            raise ValueError("a rule looks up %s, which the plan does not hold" % right)
        return value in sets[right[1:]]
    items = right["set"] if isinstance(right, dict) and "set" in right else [right]
    return value in items


def forward_verdict(rules, packet, sets):
    """
    The verdict the VPN forward rules (``(statements as nft JSON, verdict
    JSON, origin)``) give ``packet`` (``{"iifgroup", "oifgroup", "iifname",
    "oifname"}``): ``("drop", origin)`` or ``("accept", None)`` (no rule
    drops it: the chain's policy).  ``sets``: ``{name: values}`` of the sets
    the rules look up.  Evaluates the statements the planner wrote, as nft
    would; raises ValueError on one it never writes.
    """
    for matches, verdict, origin in rules:
        ok = True
        for stmt in matches:
            m = stmt.get("match") if isinstance(stmt, dict) else None
            key = m.get("left", {}).get("meta", {}).get("key") if m else None
            if key not in ("iifgroup", "oifgroup", "iifname", "oifname"):
                raise ValueError("unknown statement %r" % (stmt,))
            found = _value_in(packet[key], m["right"], sets)
            ok = ok and (found if m["op"] == "==" else not found)
        if ok and "drop" in verdict:
            return "drop", origin
    return "accept", None


def leak_packet(direction):
    """A client's packet that the fallen-back routes send out by ``eth0`` (``up``), or the reverse (``down``)."""
    client = {"group": 2, "name": "vif0.0"}
    upstream = {"group": 1, "name": "eth0"}
    src, dst = (client, upstream) if direction == "up" else (upstream, client)
    return {"iifgroup": src["group"], "iifname": src["name"], "oifgroup": dst["group"], "oifname": dst["name"]}
