"""
The validated pillar model of qubes-firewall-formula.

Pure code: ``parse(pillar)`` turns the ``qubes_firewall`` pillar dictionary into
plain, immutable dataclasses, or raises :class:`PillarError` listing every
problem, each prefixed with its pillar path (``qubes_firewall:port_forwards:1:
interfaces:0: ...``).  Nothing here touches the system.

Everything that later reaches a shell script, an nft ruleset, a qrexec policy or
a systemd unit passes through this module first, so the rules are strict: names,
addresses, ports, CIDRs and interfaces are checked against what Qubes and Linux
accept, and every string that survives contains only characters that are safe
unquoted in ``sh`` and inside double quotes in ``nft``.

Loaded by Salt as the execution module ``qubes_firewall_model`` (other modules
reach it through ``__salt__``) and imported directly by the unit tests.
"""

import dataclasses
import ipaddress
import re
from typing import Mapping, Optional, Tuple

__virtualname__ = "qubes_firewall_model"

ROOT = "qubes_firewall"

DEFAULT_RW_CONFIG = "/rw/config"
DEFAULT_POLICY_FILE = "/etc/qubes/policy.d/30-user-networking.policy"

# core-admin qubes/vm/__init__.py validate_name
_QUBE_NAME = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]{0,30}\Z")
_RESERVED_QUBE_NAMES = ("none", "default", "dom0")
_FORWARD_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,22}\Z")
# Linux: at most 15 bytes, no '/', ':' or whitespace; we allow the portable
# subset, which is also safe inside nft double quotes and sh words.
_IFNAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
_PATH = re.compile(r"\A(/[A-Za-z0-9_.-]+)+/?\Z")
# qrexec refuses policy.d files with other characters (and then denies everything)
_POLICY_BASENAME = re.compile(r"\A[0-9a-z_-][0-9a-z_.-]*\.policy\Z")
_DSTHOST_NAME = re.compile(r"\A[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?\Z")
_TAG = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
_FW_COMMENT = re.compile(r"\A[A-Za-z0-9 :;,./_\[\]-]{1,200}\Z")

PROTOCOLS = ("tcp", "udp")
CONNECTION_PROTOCOLS = ("tcp", "udp", "icmp")


class PillarError(ValueError):
    """The pillar is invalid. ``errors`` is a list of "path: reason" strings."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("invalid pillar:\n  " + "\n  ".join(self.errors))


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lookup:
    rw_config: str = DEFAULT_RW_CONFIG
    policy_file: str = DEFAULT_POLICY_FILE


@dataclasses.dataclass(frozen=True)
class FirewallRule:
    """One qvm-firewall rule (QUBES_FACTS section 6), canonical form."""

    action: str
    proto: Optional[str] = None
    dsthost: Optional[str] = None  # IPv4/IPv6 with prefix, or a host name
    dstports: Optional[Tuple[int, int]] = None
    icmptype: Optional[int] = None
    specialtarget: Optional[str] = None
    expire: Optional[int] = None
    comment: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Qube:
    name: str
    netvm: Optional[str]
    provides_network: bool
    # what the pillar said; None = not given (the Qubes value is left alone)
    provides_network_explicit: Optional[bool] = None
    service: bool = False
    # None = not managed; () = an empty list (everything blocked)
    firewall: Optional[Tuple[FirewallRule, ...]] = None
    # a named disposable: its /rw comes from this disposable template at each
    # start, so the boot replay of its rules is written there
    dispvm_template: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Connection:
    index: int
    source: str
    target: str
    proto: Optional[str] = None
    ports: Tuple[int, ...] = ()

    @property
    def origin(self):
        return "connections:%d" % self.index


@dataclasses.dataclass(frozen=True)
class ConnectTcp:
    index: int
    client: str  # a qube name, or an explicit @anyvm / @tag:T
    server: str
    port: int
    local_port: int
    persistent: bool = False
    # "default": the client calls @default (qvm-connect-tcp ::PORT) and the
    # policy names the server with target=; "named": the client names the
    # server (qvm-connect-tcp LOCAL:SERVER:PORT).
    call: str = "default"

    @property
    def origin(self):
        return "connect_tcp:%d" % self.index


@dataclasses.dataclass(frozen=True)
class PortForward:
    name: str
    qube: str
    proto: str
    port: int
    external_port: int
    interfaces: Tuple[str, ...] = ()
    sources: Tuple[str, ...] = ()

    @property
    def origin(self):
        return "port_forwards:%s" % self.name


@dataclasses.dataclass(frozen=True)
class Model:
    lookup: Lookup
    addresses: Mapping[str, str]
    qubes: Mapping[str, Qube]
    connections: Tuple[Connection, ...] = ()
    connect_tcp: Tuple[ConnectTcp, ...] = ()
    port_forwards: Tuple[PortForward, ...] = ()

    def chain(self, name):
        """The qube and its netvms up to the uplink: [name, netvm, ..., uplink]."""
        out = [name]
        while self.qubes[out[-1]].netvm is not None:
            out.append(self.qubes[out[-1]].netvm)
        return out

    def uplink(self, name):
        return self.chain(name)[-1]

    def clients(self, name):
        return sorted(q.name for q in self.qubes.values() if q.netvm == name)

    def disposables_of(self, template):
        """The named disposables whose /rw comes from ``template``."""
        return sorted(q.name for q in self.qubes.values() if q.dispvm_template == template)


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


class _Errors:
    def __init__(self):
        self.items = []

    def add(self, path, reason):
        self.items.append("%s: %s" % (":".join(str(p) for p in path), reason))


def _show(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mapping(value, path, errors, allowed=None, required=()):
    if not isinstance(value, Mapping):
        errors.add(path, "must be a mapping, got %s" % _show(value))
        return None
    ok = True
    for key in value:
        if not isinstance(key, str):
            errors.add(path, "keys must be strings, got %s" % _show(key))
            ok = False
        elif allowed is not None and key not in allowed:
            errors.add(path + [key], "unknown key (allowed: %s)" % ", ".join(sorted(allowed)))
            ok = False
    for key in required:
        if key not in value:
            errors.add(path + [key], "required")
            ok = False
    return value if ok else None


def _list(value, path, errors):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    errors.add(path, "must be a list, got %s" % _show(value))
    return None


def _bool(value, path, errors):
    if isinstance(value, bool):
        return value
    errors.add(path, "must be true or false, got %s" % _show(value))
    return None


def _int(value, path, errors, low, high, what="port"):
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(path, "%s must be an integer %d-%d, got %s" % (what, low, high, _show(value)))
        return None
    if not low <= value <= high:
        errors.add(path, "%s must be %d-%d, got %d" % (what, low, high, value))
        return None
    return value


def _port(value, path, errors):
    return _int(value, path, errors, 1, 65535)


def _choice(value, path, errors, choices):
    if isinstance(value, str) and value in choices:
        return value
    errors.add(path, "must be one of %s, got %s" % ("|".join(choices), _show(value)))
    return None


def _qube_name(value, path, errors):
    if not isinstance(value, str) or not _QUBE_NAME.match(value):
        errors.add(
            path,
            "not a qube name Qubes accepts (a letter, then letters, digits, _ . -; "
            "at most 31 characters), got %s" % _show(value),
        )
        return None
    if value in _RESERVED_QUBE_NAMES or value.endswith("-dm"):
        errors.add(path, "%r is reserved by Qubes and cannot name a managed qube" % value)
        return None
    return value


def _ipv4(value, path, errors):
    if isinstance(value, str) and re.fullmatch(r"[0-9.]{7,15}", value):
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            pass
    errors.add(path, "not an IPv4 address, got %s" % _show(value))
    return None


def _ipv4_cidr(value, path, errors):
    if isinstance(value, str) and re.fullmatch(r"[0-9.]{7,15}(/[0-9]{1,2})?", value):
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            errors.add(path, "not a valid IPv4 network (%s), got %s" % (exc, _show(value)))
            return None
        return str(net.network_address) if net.prefixlen == 32 else str(net)
    errors.add(path, "not an IPv4 address or CIDR network, got %s" % _show(value))
    return None


def _ifname(value, path, errors):
    if (
        not isinstance(value, str)
        or not _IFNAME.match(value)
        or value in (".", "..")
    ):
        errors.add(
            path,
            "not a valid Linux interface name (1-15 of A-Z a-z 0-9 _ . -), got %s" % _show(value),
        )
        return None
    if value.startswith("vif") or value == "lo":
        errors.add(path, "%r is not an uplink interface (Qubes client vifs and lo are not)" % value)
        return None
    return value


def _path(value, path, errors):
    if isinstance(value, str) and _PATH.match(value) and "/../" not in value + "/" and "/./" not in value + "/":
        return value.rstrip("/") or "/"
    errors.add(path, "must be an absolute path of A-Z a-z 0-9 _ . - components, got %s" % _show(value))
    return None


def _lookup(raw, errors):
    path = [ROOT, "lookup"]
    if raw is None:
        return Lookup()
    raw = _mapping(raw, path, errors, allowed=("rw_config", "policy_file"))
    if raw is None:
        return Lookup()
    rw_config = _path(raw.get("rw_config", DEFAULT_RW_CONFIG), path + ["rw_config"], errors)
    policy_file = _path(raw.get("policy_file", DEFAULT_POLICY_FILE), path + ["policy_file"], errors)
    if policy_file and not _POLICY_BASENAME.match(policy_file.rsplit("/", 1)[-1]):
        errors.add(
            path + ["policy_file"],
            "qrexec reads only names of 0-9 a-z _ . - ending in .policy, not starting "
            "with '.' (one bad name in policy.d makes it deny every call), got %s" % _show(policy_file),
        )
        policy_file = None
    return Lookup(rw_config or DEFAULT_RW_CONFIG, policy_file or DEFAULT_POLICY_FILE)


def _addresses(raw, errors):
    path = [ROOT, "addresses"]
    out = {}
    if raw is None:
        return out
    raw = _mapping(raw, path, errors)
    if raw is None:
        return out
    for name, value in raw.items():
        name_ok = _qube_name(name, path + [name], errors)
        addr = _ipv4(value, path + [name], errors)
        if name_ok and addr:
            out[name] = addr
    return out


def _dstports(value, path, errors):
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}-[0-9]{1,5}", value):
        low, high = (int(p) for p in value.split("-"))
    else:
        low = high = _int(value, path, errors, 0, 65535)
        if low is None:
            return None
    if not (0 <= low <= high <= 65535):
        errors.add(path, "must be N or N-M with 0 <= N <= M <= 65535, got %s" % _show(value))
        return None
    return (low, high)


def _dsthost(value, path, errors):
    if not isinstance(value, str):
        errors.add(path, "must be an address, network or host name, got %s" % _show(value))
        return None
    try:
        if ":" in value:
            return str(ipaddress.IPv6Network(value, strict=True))
        if re.fullmatch(r"[0-9.]+(/[0-9]{1,2})?", value):
            return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        errors.add(path, "not a valid address or network (%s): %s" % (exc, _show(value)))
        return None
    if len(value) <= 253 and _DSTHOST_NAME.match(value):
        return value
    errors.add(path, "not a valid host name (a-z 0-9 . -), got %s" % _show(value))
    return None


_FW_KEYS = ("action", "proto", "dsthost", "dst4", "dst6", "dstports", "icmptype",
            "specialtarget", "expire", "comment")


def _firewall_rule(raw, path, errors):
    raw = _mapping(raw, path, errors, allowed=_FW_KEYS, required=("action",))
    if raw is None:
        return None
    n = len(errors.items)
    action = _choice(raw["action"], path + ["action"], errors, ("accept", "drop"))
    proto = None
    if raw.get("proto") is not None:
        proto = _choice(raw["proto"], path + ["proto"], errors, ("tcp", "udp", "icmp"))
    hosts = [k for k in ("dsthost", "dst4", "dst6") if raw.get(k) is not None]
    dsthost = None
    if len(hosts) > 1:
        errors.add(path, "give at most one of dsthost, dst4, dst6")
    elif hosts:
        dsthost = _dsthost(raw[hosts[0]], path + [hosts[0]], errors)
        if dsthost and hosts[0] == "dst4" and ":" in dsthost:
            errors.add(path + ["dst4"], "dst4 needs an IPv4 address")
        if dsthost and hosts[0] == "dst6" and ":" not in dsthost:
            errors.add(path + ["dst6"], "dst6 needs an IPv6 address")
    dstports = None
    if raw.get("dstports") is not None:
        dstports = _dstports(raw["dstports"], path + ["dstports"], errors)
        if proto not in ("tcp", "udp"):
            errors.add(path + ["dstports"], "dstports needs proto tcp or udp")
    icmptype = None
    if raw.get("icmptype") is not None:
        icmptype = _int(raw["icmptype"], path + ["icmptype"], errors, 0, 255, "icmptype")
        if proto != "icmp":
            errors.add(path + ["icmptype"], "icmptype needs proto icmp")
    special = None
    if raw.get("specialtarget") is not None:
        special = _choice(raw["specialtarget"], path + ["specialtarget"], errors, ("dns",))
    expire = None
    if raw.get("expire") is not None:
        expire = _int(raw["expire"], path + ["expire"], errors, 0, 2**63 - 1, "expire")
    comment = None
    if raw.get("comment") is not None:
        if isinstance(raw["comment"], str) and _FW_COMMENT.match(raw["comment"]):
            comment = raw["comment"]
        else:
            errors.add(path + ["comment"], "comment allows A-Z a-z 0-9 space and :;,./_[]- only, got %s"
                       % _show(raw["comment"]))
    if len(errors.items) != n:
        return None
    return FirewallRule(action, proto, dsthost, dstports, icmptype, special, expire, comment)


_QUBE_KEYS = ("netvm", "provides_network", "service", "firewall", "dispvm_template")


def _qubes(raw, errors):
    path = [ROOT, "qubes"]
    raw = _mapping(raw, path, errors)
    if raw is None:
        return {}
    parsed = {}
    for name, spec in raw.items():
        qpath = path + [name]
        if _qube_name(name, qpath, errors) is None:
            continue
        if spec is None:
            spec = {}
        spec = _mapping(spec, qpath, errors, allowed=_QUBE_KEYS, required=("netvm",))
        if spec is None:
            continue
        netvm = spec["netvm"]
        if netvm is None or netvm == "none" or netvm == "":
            netvm = None
        else:
            netvm = _qube_name(netvm, qpath + ["netvm"], errors)
            if netvm is None:
                continue
        provides = None
        if spec.get("provides_network") is not None:
            provides = _bool(spec["provides_network"], qpath + ["provides_network"], errors)
        service = False
        if spec.get("service") is not None:
            service = bool(_bool(spec["service"], qpath + ["service"], errors))
        firewall = None
        if "firewall" in spec:
            rules = _list(spec["firewall"], qpath + ["firewall"], errors)
            if rules is not None:
                firewall = tuple(
                    r for r in (
                        _firewall_rule(rule, qpath + ["firewall", i], errors)
                        for i, rule in enumerate(rules)
                    ) if r is not None
                )
        dvm = None
        if spec.get("dispvm_template") is not None:
            dvm = _qube_name(spec["dispvm_template"], qpath + ["dispvm_template"], errors)
            if dvm == name:
                errors.add(qpath + ["dispvm_template"], "a qube cannot be its own disposable template")
        parsed[name] = (netvm, provides, service, firewall, dvm)

    # topology: netvms exist, provide network, no cycles
    used_as_netvm = {spec[0] for spec in parsed.values() if spec[0]}
    qubes = {}
    for name, (netvm, provides, service, firewall, dvm) in parsed.items():
        qpath = path + [name]
        if netvm is not None:
            if netvm == name:
                errors.add(qpath + ["netvm"], "a qube cannot be its own netvm")
            elif netvm not in parsed:
                errors.add(
                    qpath + ["netvm"],
                    "unknown qube %r (every netvm must be listed under %s:qubes)" % (netvm, ROOT),
                )
            elif parsed[netvm][1] is False:
                errors.add(
                    qpath + ["netvm"],
                    "%r does not provide network (%s:qubes:%s:provides_network is false)"
                    % (netvm, ROOT, netvm),
                )
        if service and provides is False:
            errors.add(qpath + ["service"], "a network service qube must provide network")
        effective = provides if provides is not None else (name in used_as_netvm or service)
        if dvm is not None and dvm in parsed:
            errors.add(qpath + ["dispvm_template"],
                       "%r is listed under %s:qubes; a disposable template runs no qube's network" % (dvm, ROOT))
        qubes[name] = Qube(name, netvm, effective, provides, service, firewall, dvm)
    for name in sorted(qubes):
        seen = [name]
        current = qubes[name].netvm
        while current is not None and current in qubes:
            if current in seen:
                if current == name:
                    errors.add(
                        path + [name, "netvm"],
                        "netvm cycle: %s" % " -> ".join(seen + [current]),
                    )
                break
            seen.append(current)
            current = qubes[current].netvm
    return qubes


def _known_qube(value, path, errors, qubes):
    name = _qube_name(value, path, errors)
    if name is not None and name not in qubes:
        errors.add(path, "unknown qube %r (not listed under %s:qubes)" % (name, ROOT))
        return None
    return name


def _ports_list(value, path, errors):
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    items = _list(value, path, errors)
    if items is None:
        return None
    out = []
    for i, item in enumerate(items):
        port = _port(item, path + [i], errors)
        if port is not None and port not in out:
            out.append(port)
    return tuple(sorted(out))


def _connections(raw, errors, qubes):
    path = [ROOT, "connections"]
    items = _list(raw, path, errors) or []
    out = []
    for index, item in enumerate(items):
        cpath = path + [index]
        item = _mapping(item, cpath, errors, allowed=("from", "to", "proto", "ports"), required=("from", "to"))
        if item is None:
            continue
        n = len(errors.items)
        source = _known_qube(item["from"], cpath + ["from"], errors, qubes)
        target = _known_qube(item["to"], cpath + ["to"], errors, qubes)
        proto = None
        if item.get("proto") is not None:
            proto = _choice(item["proto"], cpath + ["proto"], errors, CONNECTION_PROTOCOLS)
        ports = ()
        if item.get("ports") is not None:
            ports = _ports_list(item["ports"], cpath + ["ports"], errors)
            if proto == "icmp" and ports:
                errors.add(cpath + ["ports"], "icmp has no ports")
        if source and target and source == target:
            errors.add(cpath, "from and to are the same qube")
        if len(errors.items) == n:
            out.append(Connection(index, source, target, proto, ports or ()))
    return tuple(out)


def _client_token(value, path, errors):
    if isinstance(value, str) and value == "@anyvm":
        return value
    if isinstance(value, str) and value.startswith("@tag:") and _TAG.match(value[5:]):
        return value
    return _qube_name(value, path, errors)


def _connect_tcp(raw, errors, qubes):
    path = [ROOT, "connect_tcp"]
    items = _list(raw, path, errors) or []
    out = []
    keys = ("client", "server", "port", "local_port", "persistent", "call")
    for index, item in enumerate(items):
        cpath = path + [index]
        item = _mapping(item, cpath, errors, allowed=keys, required=("client", "server", "port"))
        if item is None:
            continue
        n = len(errors.items)
        client = _client_token(item["client"], cpath + ["client"], errors)
        server = _qube_name(item["server"], cpath + ["server"], errors)
        port = _port(item["port"], cpath + ["port"], errors)
        local_port = port
        if item.get("local_port") is not None:
            local_port = _port(item["local_port"], cpath + ["local_port"], errors)
        persistent = False
        if item.get("persistent") is not None:
            persistent = bool(_bool(item["persistent"], cpath + ["persistent"], errors))
        call = "default"
        if item.get("call") is not None:
            call = _choice(item["call"], cpath + ["call"], errors, ("default", "named"))
        if persistent and client is not None and client.startswith("@"):
            errors.add(cpath + ["persistent"], "a persistent binding needs one client qube, not %r" % client)
        if client and server and client == server:
            errors.add(cpath, "client and server are the same qube")
        if len(errors.items) == n:
            out.append(ConnectTcp(index, client, server, port, local_port, persistent, call))
    # one binding per (client, local port); one server per (client, port) for @default calls
    seen_local = {}
    seen_default = {}
    for entry in out:
        if entry.persistent:
            key = (entry.client, entry.local_port)
            if key in seen_local:
                errors.add(path + [entry.index, "local_port"],
                           "%s already binds local port %d (%s:connect_tcp:%d)"
                           % (entry.client, entry.local_port, ROOT, seen_local[key]))
            seen_local.setdefault(key, entry.index)
        if entry.call == "default":
            key = (entry.client, entry.port)
            if key in seen_default and seen_default[key][1] != entry.server:
                errors.add(path + [entry.index, "server"],
                           "%s port %d already goes to %s by @default (%s:connect_tcp:%d)"
                           % (entry.client, entry.port, seen_default[key][1], ROOT, seen_default[key][0]))
            seen_default.setdefault(key, (entry.index, entry.server))
    return tuple(out)


_FORWARD_KEYS = ("name", "qube", "proto", "port", "external_port", "interfaces", "sources")


def _port_forwards(raw, errors, qubes):
    path = [ROOT, "port_forwards"]
    items = _list(raw, path, errors) or []
    out = []
    names = {}
    for index, item in enumerate(items):
        fpath = path + [index]
        item = _mapping(item, fpath, errors, allowed=_FORWARD_KEYS, required=("name", "qube", "port"))
        if item is None:
            continue
        n = len(errors.items)
        name = item["name"]
        if not isinstance(name, str) or not _FORWARD_NAME.match(name):
            errors.add(fpath + ["name"], "must be 1-23 of a-z 0-9 - (starting with a letter or digit), "
                       "got %s" % _show(name))
            name = None
        elif name in names:
            errors.add(fpath + ["name"], "duplicate port forward name %r (also %s:port_forwards:%d)"
                       % (name, ROOT, names[name]))
        else:
            names[name] = index
        qube = _known_qube(item["qube"], fpath + ["qube"], errors, qubes)
        proto = _choice(item.get("proto", "tcp"), fpath + ["proto"], errors, PROTOCOLS)
        port = _port(item["port"], fpath + ["port"], errors)
        external = port
        if item.get("external_port") is not None:
            external = _port(item["external_port"], fpath + ["external_port"], errors)
        interfaces = []
        for i, value in enumerate(_list(item.get("interfaces"), fpath + ["interfaces"], errors) or []):
            ifname = _ifname(value, fpath + ["interfaces", i], errors)
            if ifname and ifname not in interfaces:
                interfaces.append(ifname)
        sources = []
        for i, value in enumerate(_list(item.get("sources"), fpath + ["sources"], errors) or []):
            cidr = _ipv4_cidr(value, fpath + ["sources", i], errors)
            if cidr and cidr not in sources:
                sources.append(cidr)
        if len(errors.items) == n:
            out.append(PortForward(name, qube, proto, port, external, tuple(interfaces), tuple(sources)))
    return tuple(out)


def _check_forward_paths(model, errors):
    taken = {}
    for index, fwd in enumerate(model.port_forwards):
        uplink = model.uplink(fwd.qube)
        key = (uplink, fwd.proto, fwd.external_port)
        if key in taken:
            errors.add(
                [ROOT, "port_forwards", index, "external_port"],
                "%s/%d on uplink %s is already forwarded by %r"
                % (fwd.proto, fwd.external_port, uplink, taken[key]),
            )
        taken.setdefault(key, fwd.name)


def parse(pillar):
    """
    Validate the ``qubes_firewall`` pillar value (the dictionary under that
    key) and return a :class:`Model`. Raises :class:`PillarError`.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall_model.parse "$(cat pillar.json)"
    """
    errors = _Errors()
    if pillar is None:
        pillar = {}
    allowed = ("lookup", "addresses", "qubes", "connections", "connect_tcp", "port_forwards")
    raw = _mapping(pillar, [ROOT], errors, allowed=allowed)
    if raw is None:
        raise PillarError(errors.items)
    lookup = _lookup(raw.get("lookup"), errors)
    addresses = _addresses(raw.get("addresses"), errors)
    qubes = _qubes(raw.get("qubes") or {}, errors)
    connections = _connections(raw.get("connections"), errors, qubes)
    connect_tcp = _connect_tcp(raw.get("connect_tcp"), errors, qubes)
    forwards = _port_forwards(raw.get("port_forwards"), errors, qubes)
    if errors.items:
        raise PillarError(errors.items)
    model = Model(lookup, addresses, qubes, connections, connect_tcp, forwards)
    _check_forward_paths(model, errors)
    if errors.items:
        raise PillarError(errors.items)
    return model


def errors(pillar):
    """
    The list of pillar errors (empty when the pillar is valid).

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall_model.errors
    """
    try:
        parse(pillar)
    except PillarError as exc:
        return exc.errors
    return []


def to_dict(model):
    """The model as plain data (for Salt output and golden files)."""
    return dataclasses.asdict(model)

