"""
The planner of qubes-firewall-formula: pure functions from the validated model
(``_qubes_firewall_model``) and the addresses map to one qube's plan: the
nftables objects the formula owns in that qube, every rule and set element
traced to its pillar origin, and the shell block that replays them at boot.

Nothing here touches the system.

Where rules live: objects named ``qf-*`` in ``table ip qubes`` and, in a
qube where Qubes' IPv6 is in effect (``addresses6`` in the model) and a
forward or connection has IPv6 rules, the same kinds in ``table ip6 qubes``;
every object carries its family.  In each
table ``qf-input`` and ``qf-forward`` are reached by one jump each from
Qubes' ``custom-input`` / ``custom-forward``; one nat base chain ``qf-nat``
(``type nat hook prerouting priority filter + 1``, after Qubes' dnat-dns)
holds every port forward's DNAT of this qube.  Port forwards are set and map
elements, one rule per group of forwards that share interfaces and sources:

- ``qf-nat-<g>``: map ``meta l4proto . th dport`` -> next hop ``address . port``
  (``dnat ip to ... map``), ``qf-redir-<g>``: -> local port (``redirect``);
- ``qf-fwd-<g>`` / ``qf-in-<g>``: set ``meta l4proto . ip daddr . th dport``
  of the forward and input accepts.

Every set and map has the ``counter`` flag and every element a comment naming
its forward (``qf port_forwards:https``), so each forward keeps its own
counters, raised only by the packets forwarded for it.  A rule that serves a
group of forwards has no counter (one before its lookup would count packets
the lookup then refuses, and those of other groups); every other rule has
one.  Every rule has a comment with its origin.

IPv6 (``ip6``): a port forward is planned for ip6 only when every qube on
its path has IPv6, a connection only when both ends' paths have it, each with
the IPv6 addresses of ``addresses6`` and the IPv6 networks of ``sources``
(sources that name only IPv4 networks keep the forward IPv4-only, and the
other way round: no family is opened wider than the pillar says).  A qube
without IPv6 (or without IPv6 rules) gets no ip6 object at all.  Loading ip6 objects first adds
``table ip6 qubes`` and its ``custom-input`` / ``custom-forward`` (an
idempotent ``add``), so a qube whose IPv6 table is missing or partial still
loads.

Each object exists twice, from the same data: as nft JSON exactly as ``nft -j
list`` prints it (what the live ruleset is compared with, rule by rule,
element by element) and as nft text (what is loaded, and the boot block).
"""

import dataclasses
import functools
import hashlib
import ipaddress
import json
from typing import Optional, Tuple

import _qubes_firewall_vpn as qf_vpn

FAMILY = "ip"
FAMILY6 = "ip6"
FAMILIES = (FAMILY, FAMILY6)
TABLE_NAME = "qubes"
TABLE = "ip qubes"
TABLE6 = "ip6 qubes"
INPUT_CHAIN = "qf-input"
FORWARD_CHAIN = "qf-forward"
NAT_CHAIN = "qf-nat"
OWNED_PREFIX = "qf-"
JUMP_COMMENT = "qf jump"
# (Qubes chain, our chain) pairs: one jump rule each
JUMPS = (("custom-input", INPUT_CHAIN), ("custom-forward", FORWARD_CHAIN))
# nat prerouting after Qubes' dnat-dns (dstnat, -100), as the Qubes firewall manual page does
NAT_HOOK = ("nat", "prerouting", 1, "accept")
DNAT_HOOK = NAT_HOOK  # compatible name

USER_SCRIPT = "qubes-firewall-user-script"
RC_LOCAL = "rc.local"
BLOCK_NAME = "rules"
HEREDOC = "QUBES_FIREWALL_NFT"

# set/map key and value types, as nft -j prints them
_ADDR_TYPE = {FAMILY: "ipv4_addr", FAMILY6: "ipv6_addr"}
_NAT_TYPE = ("inet_proto", "inet_service")
_REDIR_VALUE = "inet_service"


def _fwd_type(family):
    return ("inet_proto", _ADDR_TYPE[family], "inet_service")


def _nat_value(family):
    return "%s . inet_service" % _ADDR_TYPE[family]


def table_of(family):
    """The nft table of the formula's objects of ``family``: "ip qubes" or "ip6 qubes"."""
    if family not in FAMILIES:
        raise ValueError("unknown family %r" % (family,))
    return "%s %s" % (family, TABLE_NAME)


def ref(family, name):
    """
    How an owned object (or a Qubes chain) of ``family`` is named across both
    tables: its name in ``ip qubes`` (as before IPv6), "ip6 NAME" in ``ip6
    qubes``.  The keys of ``_qubes_firewall_nft.live_state`` and of
    ``plan_dict``, and what summaries and reports show.
    """
    return name if family == FAMILY else "%s %s" % (family, name)


def split_ref(text):
    """``(family, name)`` of a ``ref``."""
    family, _, name = text.partition(" ")
    return (family, name) if name else (FAMILY, text)


class PlanError(ValueError):
    """The pillar is valid on its own but cannot be planned (path-named)."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("cannot plan:\n  " + "\n  ".join(self.errors))


# --------------------------------------------------------------------------
# expressions: (nft text, nft JSON) pairs
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Expr:
    text: str
    data: str  # the JSON statement, serialised (canonical, hashable)

    @property
    def json(self):
        return json.loads(self.data)


def _expr(text, data):
    return Expr(text, json.dumps(data, sort_keys=True))


def _cached(func):
    """Expressions are immutable: build each distinct one once (planning every qube stays linear)."""
    cached = functools.lru_cache(maxsize=4096)(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return cached(*[tuple(a) if isinstance(a, list) else a for a in args], **kwargs)

    return wrapper


def _match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key):
    return {"meta": {"key": key}}


def _payload(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def _addr_json(cidr):
    if "/" in cidr:
        addr, length = cidr.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    return cidr


def _addr_key(cidr):
    """Sort key of an address or network: IPv4 by its octets, IPv6 after, by its value."""
    addr, _, length = cidr.partition("/")
    if ":" in addr:
        return (1, int(ipaddress.IPv6Address(addr)), int(length or 128))
    return (0, tuple(int(x) for x in addr.split(".")), int(length or 32))


def _values(items, as_json, key=None):
    items = sorted(items, key=key) if key else list(items)
    if len(items) == 1:
        return str(items[0]) if not as_json else items[0]
    if as_json:
        return {"set": list(items)}
    return "{ %s }" % ", ".join(str(i) for i in items)


@_cached
def m_iifgroup(group):
    return _expr("iifgroup %d" % group, _match(_meta("iifgroup"), group))


@_cached
def m_iifname(names, negate=False):
    names = sorted(names)
    text = "iifname %s%s" % ("!= " if negate else "",
                             names and ('"%s"' % names[0] if len(names) == 1
                                        else "{ %s }" % ", ".join('"%s"' % n for n in names)))
    right = names[0] if len(names) == 1 else {"set": names}
    return _expr(text, _match(_meta("iifname"), right, "!=" if negate else "=="))


@_cached
def m_fib_local():
    return _expr("fib daddr type local",
                 _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"))


@_cached
def m_ip(field, cidrs, family=FAMILY):
    """
    ``ip saddr``/``ip daddr`` (``family`` "ip") or ``ip6 saddr``/``ip6 daddr``
    (``family`` "ip6") matching one address or network, or any of several:
    the match of that family's header, for rules of that family's table.
    ``m_ip("saddr", ["fd00::/8"], "ip6")`` -> ``ip6 saddr fd00::/8``.
    """
    cidrs = sorted(cidrs, key=_addr_key)
    text = "%s %s %s" % (family, field, cidrs[0] if len(cidrs) == 1 else "{ %s }" % ", ".join(cidrs))
    right = _addr_json(cidrs[0]) if len(cidrs) == 1 else {"set": [_addr_json(c) for c in cidrs]}
    return _expr(text, _match(_payload(family, field), right))


@_cached
def m_l4proto(protos):
    protos = sorted(protos)
    text = "meta l4proto %s" % (protos[0] if len(protos) == 1 else "{ %s }" % ", ".join(protos))
    return _expr(text, _match(_meta("l4proto"), protos[0] if len(protos) == 1 else {"set": protos}))


@_cached
def m_dport(proto, ports):
    ports = sorted(ports)
    text = "%s dport %s" % (proto, ports[0] if len(ports) == 1 else "{ %s }" % ", ".join(map(str, ports)))
    return _expr(text, _match(_payload(proto, "dport"), ports[0] if len(ports) == 1 else {"set": ports}))


@_cached
def m_ct_new():
    return _expr("ct state new", _match({"ct": {"key": "state"}}, "new", "in"))


_KEY_TEXT = {"proto": "meta l4proto", "daddr": "%s daddr", "dport": "th dport"}
_KEY_JSON = {"proto": _meta("l4proto"), "dport": _payload("th", "dport")}


def _concat(fields, family=FAMILY):
    text = " . ".join(_KEY_TEXT[f] % family if f == "daddr" else _KEY_TEXT[f] for f in fields)
    return text, {"concat": [_payload(family, "daddr") if f == "daddr" else _KEY_JSON[f] for f in fields]}


@_cached
def m_lookup(fields, set_name, family=FAMILY):
    text, left = _concat(fields, family)
    return _expr("%s @%s" % (text, set_name), _match(left, "@" + set_name))


COUNTER = _expr("counter", {"counter": {"packets": 0, "bytes": 0}})
ACCEPT = _expr("accept", {"accept": None})


@_cached
def v_dnat_map(fields, map_name, family=FAMILY):
    text, key = _concat(fields, family)
    return _expr("dnat %s to %s map @%s" % (family, text, map_name),
                 {"dnat": {"family": family, "addr": {"map": {"key": key, "data": "@" + map_name}}}})


@_cached
def v_redirect_map(fields, map_name):
    text, key = _concat(fields)
    return _expr("redirect to :%s map @%s" % (text, map_name),
                 {"redirect": {"port": {"map": {"key": key, "data": "@" + map_name}}}})


# --------------------------------------------------------------------------
# owned objects
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    chain: str
    matches: Tuple[Expr, ...]
    verdict: Expr
    origin: str  # pillar origin, e.g. "connections:0 work->build forward"
    # False for a rule that looks a group of forwards up: its elements count each forward
    counted: bool = True
    family: str = FAMILY  # "ip" or "ip6": the table (``table_of``) the rule's chain is in

    @property
    def match(self):
        return " ".join(m.text for m in self.matches)

    @property
    def statements(self):
        return tuple(self.matches) + ((COUNTER,) if self.counted else ()) + (self.verdict,)

    @property
    def body(self):
        return " ".join(m.text for m in self.statements)

    @property
    def comment(self):
        return "qf %s" % self.origin

    @property
    def text(self):
        return '%s comment "%s"' % (self.body, self.comment)

    @functools.cached_property
    def expr(self):
        """The rule's statements as ``nft -j list`` prints them (counters zero)."""
        return [m.json for m in self.statements]

    @functools.cached_property
    def key(self):
        """What a live rule is compared with: (comment, statements) as canonical JSON."""
        return rule_key(self.comment, self.expr)


def rule_key(comment, exprs):
    return json.dumps([comment or "", exprs], sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Element:
    key: Tuple  # e.g. ("tcp", 443) or ("tcp", "10.137.0.6", 443)
    value: Optional[Tuple]  # maps only: ("10.137.0.6", 443) or (22,)
    origin: str  # "port_forwards:https"

    @property
    def comment(self):
        return "qf %s" % self.origin

    @property
    def key_text(self):
        return " . ".join(str(k) for k in self.key)

    @property
    def text(self):
        out = '%s comment "%s"' % (self.key_text, self.comment)
        if self.value is not None:
            out += " : " + " . ".join(str(v) for v in self.value)
        return out

    @property
    def key_json(self):
        """The key as nft -j lists it."""
        return json.dumps({"concat": list(self.key)} if len(self.key) > 1 else self.key[0], sort_keys=True)

    @property
    def value_json(self):
        if self.value is None:
            return None
        value = self.value[0] if len(self.value) == 1 else {"concat": list(self.value)}
        return json.dumps(value, sort_keys=True)


class _Owned:
    """What a planned set, map or chain knows of its table (it has ``family`` and ``name``)."""

    @property
    def table(self):
        return table_of(self.family)

    @property
    def ref(self):
        """Its name across both tables (``ref``): "qf-input", "ip6 qf-input"."""
        return ref(self.family, self.name)


@dataclasses.dataclass(frozen=True)
class Set(_Owned):
    name: str
    key_type: Tuple[str, ...]
    value_type: Optional[str]  # a map's value type, None for a set
    elements: Tuple[Element, ...]
    origin: str = "port_forwards"
    family: str = FAMILY  # "ip" or "ip6"
    flags: Tuple[str, ...] = ()  # ("interval",): elements may be networks

    @property
    def kind(self):
        return "set" if self.value_type is None else "map"

    @property
    def head(self):
        """The declaration as ``nft -j list`` prints it (name, family, table, handle and elements aside)."""
        head = {"type": list(self.key_type) if len(self.key_type) > 1 else self.key_type[0],
                "stmt": [{"counter": None}]}
        if self.value_type is not None:
            head["map"] = self.value_type
        if self.flags:
            head["flags"] = list(self.flags)
        return json.dumps(head, sort_keys=True)

    @property
    def spec(self):
        value = " : %s" % self.value_type if self.value_type else ""
        flags = " flags %s;" % ", ".join(self.flags) if self.flags else ""
        return "type %s%s;%s counter;" % (" . ".join(self.key_type), value, flags)

    def add_command(self, with_elements=True):
        elements = ""
        if with_elements and self.elements:
            elements = " elements = { %s }" % ", ".join(e.text for e in self.elements)
        return "add %s %s %s { %s%s }" % (self.kind, self.table, self.name, self.spec, elements)

    def element_command(self, verb, elements):
        if verb == "delete":
            items = ", ".join(e.key_text for e in elements)
        else:
            items = ", ".join(e.text for e in elements)
        return "%s element %s %s { %s }" % (verb, self.table, self.name, items)


@dataclasses.dataclass(frozen=True)
class Chain(_Owned):
    name: str
    hook: Optional[Tuple[str, str, int, str]] = None  # (type, hook, priority, policy)
    rules: Tuple[Rule, ...] = ()
    family: str = FAMILY  # "ip" or "ip6"

    @property
    def spec(self):
        if self.hook is None:
            return ""
        kind, hook, prio, policy = self.hook
        return "type %s hook %s priority %s; policy %s;" % (kind, hook, _priority(prio), policy)

    def commands(self, fresh):
        """nft commands that (re)fill the chain: create it when ``fresh``, else flush it."""
        spec = " { %s }" % self.spec if self.spec else ""
        head = ["add chain %s %s%s" % (self.table, self.name, spec)] if fresh else []
        head.append("flush chain %s %s" % (self.table, self.name))
        return head + self.rule_commands()

    def rule_commands(self):
        return ["add rule %s %s %s" % (self.table, self.name, r.text) for r in self.rules]


@dataclasses.dataclass(frozen=True)
class QubePlan:
    qube: str
    provides_network: bool
    chains: Tuple[Chain, ...]
    notes: Tuple[str, ...] = ()
    sets: Tuple[Set, ...] = ()

    @property
    def families(self):
        """The families the plan has objects in, "ip" first: ("ip",) or ("ip", "ip6")."""
        have = {c.family for c in self.chains} | {s.family for s in self.sets}
        return tuple(f for f in FAMILIES if f in have)

    def chains_of(self, family):
        return tuple(c for c in self.chains if c.family == family)

    def sets_of(self, family):
        return tuple(s for s in self.sets if s.family == family)

    @property
    def jumps(self):
        """(Qubes chain, owned chain) as ``ref``s, one jump rule each, for each owned chain of
        ``JUMPS`` the plan holds (qf-input and qf-forward of each of its tables)."""
        have = {c.ref for c in self.chains}
        return tuple((ref(f, custom), ref(f, target)) for f in self.families for custom, target in JUMPS
                     if ref(f, target) in have)

    @staticmethod
    def jump_command(custom, target):
        """The rule that jumps from ``custom`` to ``target`` (``ref``s of one family)."""
        family, custom = split_ref(custom)
        _, target = split_ref(target)
        return 'add rule %s %s jump %s comment "%s"' % (table_of(family), custom, target, JUMP_COMMENT)

    @property
    def persist_file(self):
        """Where the boot replay goes: the user script of network providers, else rc.local."""
        return USER_SCRIPT if self.provides_network else RC_LOCAL

    @property
    def rule_count(self):
        """Rules plus set/map elements: what the pillar puts in this qube."""
        return sum(len(c.rules) for c in self.chains) + sum(len(s.elements) for s in self.sets)


def _priority(prio):
    if prio == 0:
        return "filter"
    return "filter %s %d" % ("+" if prio > 0 else "-", abs(prio))


class _Addresses:
    """Looks the addresses of one family up, collecting the missing ones (path-named errors)."""

    def __init__(self, model, family=FAMILY):
        self.family = family
        self.table = model.addresses if family == FAMILY else model.addresses6
        self.key = "addresses" if family == FAMILY else "addresses6"
        self.missing = []

    def __call__(self, qube):
        addr = self.table.get(qube)
        if addr is None:
            if qube not in self.missing:
                self.missing.append(qube)
            return "0.0.0.0" if self.family == FAMILY else "::"
        return addr


# --------------------------------------------------------------------------
# the model's index, computed once per model (planning every qube is linear)
# --------------------------------------------------------------------------


class _Index:
    def __init__(self, model):
        self.chains = {}
        for name in model.qubes:
            self.chain(model, name)
        self.forwards = {}  # qube -> [(fwd, path)]
        for fwd in model.port_forwards:
            path = self.chains.get(fwd.qube)
            if path is None:
                continue
            for hop in path:
                self.forwards.setdefault(hop, []).append((fwd, path))
        self.connections = {}  # qube -> [conn]
        for conn in model.connections:
            touched = set()
            for end in (conn.source, conn.target):
                touched.update(self.chains.get(end, ()))
            for hop in touched:
                self.connections.setdefault(hop, []).append(conn)

    def chain(self, model, name):
        if name not in self.chains:
            netvm = model.qubes[name].netvm
            if netvm is None or netvm not in model.qubes:
                self.chains[name] = (name,)
            else:
                self.chains[name] = (name,) + self.chain(model, netvm)
        return self.chains[name]


_INDEX = {"model": None, "index": None}


def _index(model):
    if _INDEX["model"] is not model:
        _INDEX["index"] = _Index(model)
        _INDEX["model"] = model
    return _INDEX["index"]


# --------------------------------------------------------------------------
# port forwards (manual page: "Port forwarding to a qube from the outside world")
# --------------------------------------------------------------------------


@_cached
def _group_id(arriving, sources, family=FAMILY):
    text = "%s|%s" % (arriving.data, ",".join(sorted(sources, key=_addr_key)))
    if family != FAMILY:  # names unique across both tables of a qube
        text += "|" + family
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class _Groups:
    """The forwards of one qube, grouped by (how they arrive, sources)."""

    def __init__(self, family=FAMILY):
        self.family = family
        self.groups = {}  # gid -> {"arriving", "sources", "nat", "redir", "fwd", "in"}

    def get(self, arriving, sources):
        gid = _group_id(arriving, sources, self.family)
        if gid not in self.groups:
            self.groups[gid] = {"arriving": arriving, "sources": tuple(sources),
                                "nat": [], "redir": [], "fwd": [], "in": []}
        return gid, self.groups[gid]


def sources_of(fwd, family):
    """The networks of ``fwd.sources`` of ``family`` (IPv4 for "ip", IPv6 for "ip6")."""
    return tuple(s for s in fwd.sources if (":" in s) == (family == FAMILY6))


def forward_families(model, fwd, path):
    """
    ``{family: None or why not}``: whether port forward ``fwd`` (along
    ``path``, the target first) is planned in that family's table.  IPv6
    needs every qube on the path to have IPv6 (``addresses6``); a forward
    whose ``sources`` name networks of one family only is not opened in the
    other (never wider than the pillar says).
    """
    out = {}
    for family in FAMILIES:
        why = None
        if family == FAMILY6:
            without = [q for q in path if q not in model.addresses6]
            if without:
                why = "%s has no IPv6" % ", ".join(without)
        if why is None and fwd.sources and not sources_of(fwd, family):
            why = "its sources name no %s network" % ("IPv6" if family == FAMILY6 else "IPv4")
        out[family] = why
    return out


def _forward_elements(fwd, path, qube, ip, groups):
    """Adds the elements forward ``fwd`` needs in ``qube`` to ``groups`` (of ``ip``'s family)."""
    where = path.index(qube)
    uplink = where == len(path) - 1
    if uplink:
        arriving = m_iifname(fwd.interfaces) if fwd.interfaces else m_iifname(["vif*"], negate=True)
    else:
        # deeper hops: only what comes down from the netvm, addressed to this qube
        arriving = m_iifgroup(1)
    _, group = groups.get(arriving, sources_of(fwd, groups.family))
    if where == 0:
        if uplink and fwd.external_port != fwd.port:
            group["redir"].append(Element((fwd.proto, fwd.external_port), (fwd.port,), fwd.origin))
        group["in"].append(Element((fwd.proto, ip(qube), fwd.port), None, fwd.origin))
        return
    nxt = path[where - 1]
    to_port = fwd.port if where == 1 else fwd.external_port
    group["nat"].append(Element((fwd.proto, fwd.external_port), (ip(nxt), to_port), fwd.origin))
    group["fwd"].append(Element((fwd.proto, ip(nxt), to_port), None, fwd.origin))


def _forward_objects(groups, qube, uplink, ip):
    """(sets, nat rules, forward rules, input rules) of the grouped forwards (of ``groups.family``)."""
    family = groups.family
    sets, nat, forward, inputs = [], [], [], []
    # only what is addressed to this qube itself: its LAN address at the uplink
    # (unknown to the pillar, hence fib), its Qubes address below
    own = m_fib_local() if uplink else m_ip("daddr", [ip(qube)], family)
    for gid in sorted(groups.groups):
        group = groups.groups[gid]
        head = [group["arriving"]]
        sources = [m_ip("saddr", group["sources"], family)] if group["sources"] else []
        l4 = m_l4proto(["tcp", "udp"])
        if group["nat"]:
            name = "qf-nat-" + gid
            sets.append(Set(name, _NAT_TYPE, _nat_value(family), tuple(group["nat"]), family=family))
            nat.append(Rule(NAT_CHAIN, tuple(head + [own] + sources + [l4]),
                            v_dnat_map(("proto", "dport"), name, family), "port_forwards dnat @" + name,
                            counted=False, family=family))
        if group["redir"]:
            name = "qf-redir-" + gid
            sets.append(Set(name, _NAT_TYPE, _REDIR_VALUE, tuple(group["redir"]), family=family))
            nat.append(Rule(NAT_CHAIN, tuple(head + [m_fib_local()] + sources + [l4]),
                            v_redirect_map(("proto", "dport"), name), "port_forwards redirect @" + name,
                            counted=False, family=family))
        for kind, chain, out in (("fwd", FORWARD_CHAIN, forward), ("in", INPUT_CHAIN, inputs)):
            if group[kind]:
                name = "qf-%s-%s" % (kind, gid)
                sets.append(Set(name, _fwd_type(family), None, tuple(group[kind]), family=family))
                out.append(Rule(chain, tuple(head + sources + [m_ct_new(),
                                                               m_lookup(("proto", "daddr", "dport"), name, family)]),
                                ACCEPT, "port_forwards %s @%s" % ("forward" if kind == "fwd" else "input", name),
                                counted=False, family=family))
    return sets, nat, forward, inputs


# --------------------------------------------------------------------------
# connections (manual page: "Enabling networking between two qubes")
# --------------------------------------------------------------------------


def connection_route(model, conn):
    """
    How a connection from A to B flows: (shared, source) where ``shared`` is
    the qube whose forward chain passes it (None when B itself is on A's
    way up, or A is B's netvm) and ``source`` the qube whose address B and
    ``shared`` see (A, or the last hop on A's way up: Qubes masquerades
    every hop).  Raises PlanError when B cannot be reached.
    """
    a, b = conn.source, conn.target
    index = _index(model)
    chain_a, chain_b = index.chains[a], index.chains[b]
    common = next((q for q in chain_a if q in chain_b), None)
    path = "qubes_firewall:%s" % conn.origin
    if common is None:
        raise PlanError(["%s: %s and %s have no netvm in common (different uplinks)" % (path, a, b)])
    if common == b:
        return None, chain_a[chain_a.index(b) - 1]
    if model.qubes[b].netvm != common:
        raise PlanError([
            "%s: %s is not attached directly to %s, the netvm %s and %s share; "
            "Qubes routes only to a netvm's own clients (use a port forward for deeper qubes)"
            % (path, b, common, a, b)
        ])
    if common == a:
        return None, a
    return common, chain_a[chain_a.index(common) - 1]


def _l4(proto, ports, family=FAMILY):
    """Protocol and destination ports; None/() mean any.  ICMP is ICMPv6 in ip6."""
    if ports:
        if proto in ("tcp", "udp"):
            return [m_dport(proto, ports)]
        return [m_l4proto(["tcp", "udp"]), m_dport("th", ports)]
    if proto:
        return [m_l4proto(["ipv6-icmp" if family == FAMILY6 and proto == "icmp" else proto])]
    return []


def connection_families(model, conn):
    """
    ``{family: None or why not}``: whether connection ``conn`` is planned in
    that family's table.  IPv6 needs every qube its packets cross to have
    IPv6 (``addresses6``): both ends and their netvms up to the one they
    share.
    """
    index = _index(model)
    chain_a, chain_b = index.chains[conn.source], index.chains[conn.target]
    common = next((q for q in chain_a if q in chain_b), None)
    crossed = chain_a + chain_b
    if common is not None:
        crossed = chain_a[:chain_a.index(common) + 1] + chain_b[:chain_b.index(common)]
    without = [q for q in crossed if q not in model.addresses6]
    return {FAMILY: None, FAMILY6: "%s has no IPv6" % ", ".join(without) if without else None}


def _connection_rules(model, conn, qube, ip, route=None):
    family = getattr(ip, "family", FAMILY)
    shared, source = route or connection_route(model, conn)
    l4 = _l4(conn.proto, conn.ports, family)
    origin = "%s %s->%s" % (conn.origin, conn.source, conn.target)
    forward, inputs = [], []
    if qube == shared:
        forward.append(Rule(FORWARD_CHAIN,
                            tuple([m_iifgroup(2), m_ip("saddr", [ip(source)], family),
                                   m_ip("daddr", [ip(conn.target)], family)] + l4 + [m_ct_new()]),
                            ACCEPT, origin + " forward", family=family))
    if qube == conn.target:
        # from upstream (group 1), or from one of its own clients (group 2)
        group = 2 if model.qubes[source].netvm == qube else 1
        inputs.append(Rule(INPUT_CHAIN,
                           tuple([m_iifgroup(group), m_ip("saddr", [ip(source)], family)] + l4 + [m_ct_new()]),
                           ACCEPT, origin + " input", family=family))
    notes = ()
    if source != conn.source and qube == conn.target and family == FAMILY:
        notes = ("%s: %s reaches %s masqueraded as %s, so every qube behind %s may connect"
                 % (conn.origin, conn.source, conn.target, source, source),)
    return tuple(forward), tuple(inputs), notes


# --------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------


def _why_not(origin, family, why):
    return "%s: not planned for %s, %s" % (origin, "IPv6" if family == FAMILY6 else "IPv4", why)


def _plan_family(model, qube, family, errors, notes):
    """(chains, sets) of ``qube`` in ``family``'s table; errors and notes appended."""
    index = _index(model)
    ip = _Addresses(model, family)
    groups = _Groups(family)
    for fwd, path in index.forwards.get(qube, ()):
        why = forward_families(model, fwd, path)[family]
        if why is None:
            _forward_elements(fwd, path, qube, ip, groups)
        elif family == FAMILY6 or fwd.sources:
            notes.append(_why_not(fwd.origin, family, why))
    uplink = model.qubes[qube].netvm is None
    sets, nat, forward, inputs = _forward_objects(groups, qube, uplink, ip)
    for conn in index.connections.get(qube, ()):
        try:
            why = connection_families(model, conn)[family]
            if why is not None:
                if qube in (connection_route(model, conn)[0], conn.target):  # where it has rules
                    notes.append(_why_not("%s %s->%s" % (conn.origin, conn.source, conn.target), family, why))
                continue
            f, i, n = _connection_rules(model, conn, qube, ip)
        except PlanError as exc:
            errors += [e for e in exc.errors if e not in errors]
            continue
        forward += f
        inputs += i
        notes += n
    for missing in ip.missing:
        errors.append("qubes_firewall:%s:%s: the address of %s is needed by %s's rules "
                      "(on Qubes dom0 fills it in, see docs/addresses.md)" % (ip.key, missing, missing, qube))
    chains = (Chain(INPUT_CHAIN, None, tuple(inputs), family), Chain(FORWARD_CHAIN, None, tuple(forward), family))
    if nat:
        chains += (Chain(NAT_CHAIN, NAT_HOOK, tuple(nat), family),)
    return chains, tuple(sets)


def plan_qube(model, qube):
    """
    The plan for ``qube``: its owned chains, sets and maps, in a stable
    order: those of ``table ip qubes``, then (when IPv6 is in effect in
    ``qube``: ``addresses6``, and a forward or connection has IPv6 rules
    there) those of ``table ip6 qubes``.  Raises PlanError
    (path-named) when an address is missing or a connection cannot be routed.
    """
    if qube not in model.qubes:
        raise KeyError(qube)
    errors, notes = [], []
    chains, sets = _plan_family(model, qube, FAMILY, errors, notes)
    if qube in model.addresses6 and not errors:
        chains6, sets6 = _plan_family(model, qube, FAMILY6, errors, notes)
        if sets6 or any(c.rules for c in chains6):  # nothing in ip6 unless there is something to do
            chains, sets = chains + chains6, sets + sets6
    if errors:
        raise PlanError(errors)
    vpn_chains, vpn_sets = _vpn_objects(model, qube)
    return QubePlan(qube, model.qubes[qube].provides_network, chains + vpn_chains, tuple(notes), sets + vpn_sets)


def _vpn_objects(model, qube):
    """The VPN qube's chains and sets (``_qubes_firewall_vpn``) as the planner's objects, per table."""
    families = FAMILIES if qube in model.addresses6 else (FAMILY,)
    found = qf_vpn.objects(model, qube, families)
    sets = tuple(Set(s.name, s.key_type, s.value_type, tuple(Element(*e) for e in s.elements), "vpn", s.family,
                     s.flags) for s in found.sets)
    chains = tuple(Chain(c.name, c.hook, tuple(
        Rule(c.name, tuple(_expr(*m) for m in r.matches), _expr(*r.verdict), r.origin, r.counted, c.family)
        for r in c.rules), c.family) for c in found.chains)
    return chains, sets


def check_model(model):
    """Every plan error of the whole model (for a dom0 or validation run)."""
    errors = []
    for name in sorted(model.qubes):
        try:
            plan_qube(model, name)
        except PlanError as exc:
            errors += [e for e in exc.errors if e not in errors]
    return errors


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------


def table_prelude(family):
    """
    The idempotent ``add`` commands that make sure the table of ``family``
    and Qubes' custom-input / custom-forward chains in it exist before the
    formula's objects and jumps go there (none for "ip": Qubes' IPv4 table is
    a precondition; IPv6's may be missing or partial, and an ``add`` of what
    exists changes nothing).
    """
    if family == FAMILY:
        return []
    table = table_of(family)
    return ["add table %s" % table] + ["add chain %s %s" % (table, custom) for custom, _ in JUMPS]


def ruleset_text(plan):
    """
    The owned objects as one nft script that creates or empties them and
    fills them again, table by table (``ip qubes``, then ``ip6 qubes`` after
    its ``table_prelude``): sets and maps first (the rules look them up),
    then the chains.  Loading it any number of times yields the same objects.
    """
    lines = []
    for family in plan.families:
        lines += table_prelude(family)
        for item in plan.sets_of(family):
            lines.append(item.add_command(with_elements=False))
            lines.append("flush %s %s %s" % (item.kind, item.table, item.name))
            if item.elements:
                lines.append(item.element_command("add", item.elements))
        for chain in plan.chains_of(family):
            lines += chain.commands(fresh=True)
    return "\n".join(lines) + "\n"


def persist_block(plan):
    """
    The shell block that replays ``plan`` at boot, in the file named by
    ``plan.persist_file``.  Idempotent: the sets, maps and chains are created
    or emptied and refilled in one ``nft -f`` transaction, and the jumps from
    custom-input / custom-forward are added only together with the chains (per
    table: ``ip qubes``, and ``ip6 qubes`` when the plan has IPv6), so
    running it any number of times yields the ruleset of the runtime apply.
    Guarded by the qube's name, so a disposable template's copy acts only in
    its qube.
    """
    name = plan.qube
    probes, adds = "", ""
    for family in plan.families:
        var = "qf_jumps" + ("" if family == FAMILY else family[2:])  # qf_jumps, qf_jumps6
        jumps = "\n".join(plan.jump_command(c, t) for c, t in plan.jumps if split_ref(c)[0] == family)
        if not jumps:
            continue
        probes += ("    %(var)s=1\n"
                   "    nft list chain %(table)s %(input)s >/dev/null 2>&1 && %(var)s=0\n"
                   % {"var": var, "table": table_of(family), "input": INPUT_CHAIN})
        adds += ('        if [ "$%(var)s" = 1 ]; then\n'
                 "            cat <<'%(eof)s'\n"
                 "%(jumps)s\n"
                 "%(eof)s\n"
                 "        fi\n" % {"var": var, "eof": HEREDOC, "jumps": jumps})
    return (
        "# nftables rules of qube %(name)s from the qubes_firewall pillar; replayed at boot.\n"
        "# Changes here are overwritten: edit the pillar and re-run Salt instead.\n"
        'if [ "$(qubesdb-read /name 2>/dev/null)" = "%(name)s" ]; then\n'
        "%(probes)s"
        "    {\n"
        "        cat <<'%(eof)s'\n"
        "%(rules)s"
        "%(eof)s\n"
        "%(adds)s"
        '    } | nft -f - || echo "qubes_firewall: loading the rules of %(name)s failed" >&2\n'
        "fi\n"
    ) % {
        "name": name,
        "probes": probes,
        "eof": HEREDOC,
        "rules": ruleset_text(plan),
        "adds": adds,
    }


def plan_dict(plan):
    """The plan as plain data (Salt output, golden files)."""
    return {
        "qube": plan.qube,
        "persist_file": plan.persist_file,
        "chains": {
            c.ref: {"spec": c.spec, "rules": [r.text for r in c.rules]} for c in plan.chains
        },
        "sets": {
            s.ref: {"spec": s.spec, "elements": [e.text for e in s.elements]} for s in plan.sets
        },
        "notes": list(plan.notes),
    }
