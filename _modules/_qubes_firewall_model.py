"""
The validated pillar model of qubes-firewall-formula.

Pure code: ``parse(pillar, pillar_keys)`` turns the ``qubes_firewall`` pillar
dictionary into plain, immutable dataclasses, or raises :class:`PillarError`
listing every problem, each prefixed with its pillar path
(``qubes_firewall:port_forwards:1:interfaces:0: ...``) and showing the
offending value as YAML would (never a Python repr).  Nothing here touches the
system.

Everything that later reaches a shell script, an nft ruleset, a qrexec policy,
a systemd unit or a dom0 command line passes through this module first, so the
rules are strict: each field has its own grammar (qube names as the Qubes
release accepts them, addresses and networks without IPv6 scope ids, ports as
integers in range, interface names, host names, absolute normalised paths), and
every string that survives contains no whitespace, quote, control character or
separator that could end its field in any of those outputs.

Plain Python: the other files and the unit tests import it directly.
"""

import dataclasses
import difflib
import ipaddress
import math
import re
from typing import Mapping, Optional, Tuple

ROOT = "qubes_firewall"

RELEASES = ("4.2", "4.3")
DEFAULT_RELEASE = "4.3"
DEFAULT_RW_CONFIG = "/rw/config"
DEFAULT_ETC_QUBES = "/etc/qubes"
POLICY_NAME = "policy.d/30-user-networking.policy"
DEFAULT_POLICY_FILE = DEFAULT_ETC_QUBES + "/" + POLICY_NAME
DEFAULT_SYSTEMD_DIR = "/etc/systemd/system"
DEFAULT_STATE_DIR = "/var/lib/qubes-firewall-formula"

# core-admin qubes/vm/__init__.py validate_name: 4.2 allows no dot, 4.3 does
# (anywhere after the first letter); both at most 31 characters.
_QUBE_NAME = {
    "4.2": re.compile(r"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z"),
    "4.3": re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]{0,30}\Z"),
}
# the widest qube-name grammar (4.3): a name that may stand in a pillar top's list
QUBE_NAME_ANY = _QUBE_NAME["4.3"]
_RESERVED_QUBE_NAMES = ("none", "default", "dom0", "Domain-0")
_FORWARD_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,22}\Z")
# Linux: at most 15 bytes, no '/', ':' or whitespace; we allow the portable
# subset, which is also safe inside nft double quotes and sh words.
_IFNAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
# absolute, normalised: components of A-Za-z0-9_.- that are not all dots
_PATH_COMPONENT = re.compile(r"\A[A-Za-z0-9_.-]{1,255}\Z")
# qrexec refuses policy.d files with other characters (and then denies everything)
_POLICY_BASENAME = re.compile(r"\A[0-9a-z_-][0-9a-z_.-]*\.policy\Z")
_DNS_LABEL = re.compile(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_IPV4 = re.compile(r"\A(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}\Z")
_PREFIX = re.compile(r"\A(0|[1-9][0-9]{0,2})\Z")
_IPV6 = re.compile(r"\A[0-9a-fA-F:.]{2,45}\Z")
_TAG = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
# Qubes' own comment alphabet (core-admin qubes/firewall.py Comment), without
# leading or trailing spaces (they would not survive the round trip)
_FW_COMMENT = re.compile(r"\A[A-Za-z0-9:;,./_\[\]-]([A-Za-z0-9 :;,./_\[\]-]{0,198}[A-Za-z0-9:;,./_\[\]-])?\Z")

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
    qubes_release: str = DEFAULT_RELEASE
    etc_qubes: str = DEFAULT_ETC_QUBES
    systemd_dir: str = DEFAULT_SYSTEMD_DIR
    state_dir: str = DEFAULT_STATE_DIR


@dataclasses.dataclass(frozen=True)
class FirewallRule:
    """One qvm-firewall rule, canonical form."""

    action: str
    proto: Optional[str] = None
    dsthost: Optional[str] = None  # IPv4/IPv6 with prefix, or a host name
    dstports: Optional[Tuple[int, int]] = None
    icmptype: Optional[int] = None
    specialtarget: Optional[str] = None
    expire: Optional[int] = None  # always None: the pillar refuses expire
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
    # Qubes' custom-persist service: no /rw/config script runs in this qube,
    # so its rules are replayed from its template's /etc
    custom_persist: bool = False
    # the template whose root filesystem (/etc included) the qube boots from
    template: Optional[str] = None
    # a VPN qube: its tunnel, endpoints and resolvers (None: not a VPN qube)
    vpn: Optional["Vpn"] = None


@dataclasses.dataclass(frozen=True)
class VpnEndpoint:
    """One VPN server the VPN qube may reach through its upstream."""

    address: str  # an IPv4/IPv6 address (bare) or network (with prefix), canonical
    port: int
    protocol: str = "udp"

    @property
    def family(self):
        return 6 if ":" in self.address else 4

    @property
    def network(self):
        """The address as a network with its prefix (198.51.100.7/32), as qvm-firewall stores it."""
        return str(ipaddress.ip_network(self.address))


@dataclasses.dataclass(frozen=True)
class Vpn:
    """``vpn:`` of a network service qube: it fails closed (the tunnel or nothing)."""

    interfaces: Tuple[str, ...]
    endpoints: Tuple[VpnEndpoint, ...]
    dns: Tuple[str, ...] = ()  # IPv4 resolvers behind the tunnel; () = none: the clients' DNS is dropped


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
    # qube -> its IPv6 address, for the qubes where IPv6 is in effect (Qubes' ipv6 feature
    # along the netvm chain); a qube not in it has no IPv6
    addresses6: Mapping[str, str] = dataclasses.field(default_factory=dict)

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

    def template_children(self, name):
        """The custom-persist qubes whose rules are replayed from template ``name``'s /etc."""
        return sorted(q.name for q in self.qubes.values() if q.custom_persist and q.template == name)


# --------------------------------------------------------------------------
# Showing values and suggesting names (messages never show Python reprs)
# --------------------------------------------------------------------------

_PLAIN = re.compile(r"\A[A-Za-z0-9_./@+-][A-Za-z0-9_./@:+ -]*\Z")
_YAML_WORDS = ("true", "false", "yes", "no", "on", "off", "null", "none", "~", "")
_SHOW_MAX = 60


def _yaml_double(text):
    out = []
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append("\\x%02x" % code)
        elif not char.isprintable():
            out.append("\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code)
        else:
            out.append(char)
    return '"%s"' % "".join(out)


def _scalar(value, nested):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return str(value)
    if isinstance(value, str):
        if not value.isprintable():
            return _yaml_double(value)
        if nested:
            plain = (_PLAIN.match(value) and value.lower() not in _YAML_WORDS
                     and not value.endswith(" ") and ": " not in value)
            return value if plain else _yaml_double(value)
        return "'%s'" % value.replace("'", "''")
    if isinstance(value, bytes):
        return _scalar(value.decode("utf-8", "replace"), nested)
    return _scalar(str(value), nested)


def _flow(value, budget):
    """``value`` in YAML flow style, cut near ``budget`` characters."""
    if isinstance(value, Mapping):
        parts, used = [], 2
        for key, item in value.items():
            if used > budget:
                parts.append("...")
                break
            text = "%s: %s" % (_flow(key, budget // 2), _flow(item, budget - used))
            parts.append(text)
            used += len(text) + 2
        return "{%s}" % ", ".join(parts)
    if isinstance(value, (list, tuple, set, frozenset)):
        parts, used = [], 2
        for item in value:
            if used > budget:
                parts.append("...")
                break
            text = _flow(item, budget - used)
            parts.append(text)
            used += len(text) + 2
        return "[%s]" % ", ".join(parts)
    return _scalar(value, nested=True)


def _show(value):
    """A value as a YAML reader would write it, short: 'web', 443, true, null, [a, b], {a: 1}."""
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        text = _flow(value, _SHOW_MAX)
    else:
        text = _scalar(value, nested=False)
    if len(text) > _SHOW_MAX + 20:
        text = text[:_SHOW_MAX] + "..." + text[-1]
    return text


def show(value):
    """
    ``value`` as a YAML reader would write it, short and quoted ('web', 443,
    true, null, [a, b], {a: 1}): for other modules' messages, which must never
    show a Python repr.
    """
    return _show(value)


def _norm(word):
    return re.sub(r"[-_. ]+", "_", str(word).strip().lower())


def _suggest(word, choices):
    """The choice ``word`` was probably meant to be, or None."""
    choices = [c for c in choices if isinstance(c, str)]
    if not isinstance(word, str) or not choices:
        return None
    for choice in choices:
        if _norm(choice) == _norm(word) and choice != word:
            return choice
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    if close and close[0] != word:
        return close[0]
    # a part of one choice: release -> qubes_release
    parts = [c for c in choices if len(word) >= 4 and _norm(word) in _norm(c).split("_")]
    return parts[0] if len(parts) == 1 else None


def _did_you_mean(word, choices):
    match = _suggest(word, choices)
    return "; did you mean %s?" % match if match else ""


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


class _Errors:
    """The problems found so far, and the Qubes release names are checked for."""

    def __init__(self, release=DEFAULT_RELEASE):
        self.items = []
        self.release = release

    def add(self, path, reason):
        self.items.append("%s: %s" % (":".join(str(p) for p in path), reason))


def _key_text(key):
    return key if isinstance(key, str) and key.isprintable() and key else _show(key)


def _mapping(value, path, errors, allowed=None, required=(), what="a mapping"):
    if not isinstance(value, Mapping):
        errors.add(path, "must be %s, got %s" % (what, _show(value)))
        return None
    ok = True
    for key in value:
        if not isinstance(key, str):
            errors.add(path, "keys must be strings, got %s" % _show(key))
            ok = False
        elif allowed is not None and key not in allowed:
            errors.add(path + [_key_text(key)], "unknown key%s (allowed keys: %s)"
                       % (_did_you_mean(key, allowed), ", ".join(sorted(allowed))))
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
    errors.add(path, "must be one of %s, got %s%s"
               % ("|".join(choices), _show(value), _did_you_mean(value, choices)))
    return None


def _qube_name(value, path, errors):
    """A qube name as the Qubes release of ``errors`` accepts it, or None (error added)."""
    release = errors.release
    if isinstance(value, str) and release == "4.2" and "." in value and _QUBE_NAME["4.3"].match(value):
        errors.add(path, "%s: Qubes 4.2 allows no dot in qube names (4.3 does), and %s:lookup:qubes_release "
                   "is '4.2'; rename the qube, or set lookup:qubes_release: '4.3' on Qubes 4.3"
                   % (_show(value), ROOT))
        return None
    if not isinstance(value, str) or not _QUBE_NAME[release].match(value):
        chars = "letters, digits, _ -" if release == "4.2" else "letters, digits, _ . -"
        errors.add(
            path,
            "not a qube name Qubes %s accepts (a letter, then %s; at most 31 characters), got %s"
            % (release, chars, _show(value)),
        )
        return None
    if value in _RESERVED_QUBE_NAMES or value.endswith("-dm"):
        errors.add(path, "%s is reserved by Qubes and cannot name a managed qube" % _show(value))
        return None
    return value


def _ipv4(value, path, errors):
    if isinstance(value, str) and _IPV4.match(value):
        return str(ipaddress.IPv4Address(value))
    errors.add(path, "not an IPv4 address (like 10.137.0.5), got %s" % _show(value))
    return None


def _split_prefix(value):
    """(address, prefix length or None), or None when the text is malformed."""
    if value.count("/") > 1:
        return None
    addr, _, prefix = value.partition("/")
    if "/" in value and not _PREFIX.match(prefix):
        return None
    return addr, (int(prefix) if prefix else None)


def _ipv4_network(value, path, errors):
    """An IPv4 address or CIDR network (no host bits) as text, or None (error added)."""
    parts = _split_prefix(value) if isinstance(value, str) else None
    if parts is None or not _IPV4.match(parts[0]) or (parts[1] is not None and parts[1] > 32):
        errors.add(path, "not an IPv4 address or CIDR network (like 192.168.1.0/24), got %s" % _show(value))
        return None
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        errors.add(path, "%s has host bits set (write %s)"
                   % (_show(value), ipaddress.IPv4Network(value, strict=False)))
        return None
    return str(net)


def _ipv6_network(value, path, errors):
    """An IPv6 address or network (no scope id, no host bits) as text, or None (error added)."""
    parts = _split_prefix(value) if isinstance(value, str) else None
    net = None
    if parts is not None and _IPV6.match(parts[0]) and (parts[1] is None or parts[1] <= 128):
        try:
            net = ipaddress.IPv6Network(value, strict=False)
        except ValueError:
            net = None
    if net is None:
        errors.add(path, "not an IPv6 address or network (like fd00::/8; no %%scope), got %s" % _show(value))
        return None
    if str(net.network_address) != str(ipaddress.IPv6Address(parts[0])):
        errors.add(path, "%s has host bits set (write %s)" % (_show(value), net))
        return None
    return str(net)


def _ipv4_cidr(value, path, errors):
    net = _ipv4_network(value, path, errors)
    if net is not None and net.endswith("/32"):
        return net[:-3]
    return net


def _source_cidr(value, path, errors):
    """A port forward's source: an IPv4 or (with ``:``) IPv6 address or network; a host as bare address."""
    if isinstance(value, str) and ":" in value:
        net = _ipv6_network(value, path, errors)
        if net is not None and net.endswith("/128"):
            return net[:-4]
        return net
    return _ipv4_cidr(value, path, errors)


def _ifname(value, path, errors):
    if (
        not isinstance(value, str)
        or not _IFNAME.match(value)
        or value.strip(".") == ""
    ):
        errors.add(
            path,
            "not a valid Linux interface name (1-15 of A-Z a-z 0-9 _ . -), got %s" % _show(value),
        )
        return None
    if value.startswith("vif") or value in ("lo", "all", "default"):
        errors.add(path, "%s is not an uplink interface (Qubes client vifs, lo and the kernel's "
                   "all/default are not)" % _show(value))
        return None
    return value


def normal_path(value):
    """
    ``value`` as an absolute, normalised path (a trailing / is dropped), or
    None: the formula's one path grammar (the pillar's ``lookup`` paths, and
    the directories the run falls back to while the pillar is invalid).
    """
    if isinstance(value, str) and value.startswith("/") and value != "/":
        body = value[1:-1] if value.endswith("/") else value[1:]
        parts = body.split("/")
        if all(_PATH_COMPONENT.match(p) and p.strip(".") for p in parts):
            return "/" + "/".join(parts)
    return None


def _path(value, path, errors):
    """An absolute, normalised path (a trailing / is dropped), or None (error added)."""
    out = normal_path(value)
    if out is None:
        errors.add(path, "must be an absolute, normalised path (components of A-Z a-z 0-9 _ . -; no //, "
                   "no . or .. components), got %s" % _show(value))
    return out


def _release(value, path, errors):
    if isinstance(value, float) and not isinstance(value, bool) and str(value) in RELEASES:
        return str(value)
    if isinstance(value, str) and value in RELEASES:
        return value
    errors.add(path, "must be '4.2' or '4.3' (the Qubes release; dom0 detects it), got %s" % _show(value))
    return None


_LOOKUP_KEYS = ("rw_config", "policy_file", "qubes_release", "etc_qubes", "systemd_dir", "state_dir")


def _lookup(raw, errors):
    path = [ROOT, "lookup"]
    if raw is None:
        return Lookup()
    raw = _mapping(raw, path, errors, allowed=_LOOKUP_KEYS)
    if raw is None:
        return Lookup()
    release = DEFAULT_RELEASE
    if raw.get("qubes_release") is not None:
        release = _release(raw["qubes_release"], path + ["qubes_release"], errors) or DEFAULT_RELEASE
    paths = {}
    defaults = {"rw_config": DEFAULT_RW_CONFIG, "etc_qubes": DEFAULT_ETC_QUBES,
                "systemd_dir": DEFAULT_SYSTEMD_DIR, "state_dir": DEFAULT_STATE_DIR}
    for key, default in defaults.items():
        paths[key] = default
        if raw.get(key) is not None:
            paths[key] = _path(raw[key], path + [key], errors) or default
    # the policy file lives under etc_qubes unless given
    policy_file = paths["etc_qubes"] + "/" + POLICY_NAME
    if raw.get("policy_file") is not None:
        given = _path(raw["policy_file"], path + ["policy_file"], errors)
        if given and not _POLICY_BASENAME.match(given.rsplit("/", 1)[-1]):
            errors.add(
                path + ["policy_file"],
                "qrexec reads only names of 0-9 a-z _ . - ending in .policy, not starting "
                "with '.' (one bad name in policy.d makes it deny every call), got %s" % _show(given),
            )
            given = None
        policy_file = given or policy_file
    return Lookup(paths["rw_config"], policy_file, release, paths["etc_qubes"], paths["systemd_dir"],
                  paths["state_dir"])


def _addresses(raw, errors):
    path = [ROOT, "addresses"]
    out = {}
    if raw is None:
        return out
    raw = _mapping(raw, path, errors)
    if raw is None:
        return out
    for name, value in raw.items():
        name_ok = _qube_name(name, path + [_key_text(name)], errors)
        addr = _ipv4(value, path + [_key_text(name)], errors)
        if name_ok and addr:
            out[name] = addr
    return out


def _ipv6(value, path, errors):
    """One IPv6 address (no prefix, no scope id) in its canonical text, or None (error added)."""
    addr = None
    if isinstance(value, str) and _IPV6.match(value):
        try:
            addr = ipaddress.IPv6Address(value)
        except ValueError:
            addr = None
    if addr is None or addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        errors.add(path, "not a qube's IPv6 address (like fd09:24ef:4179::a89:5), got %s" % _show(value))
        return None
    return str(addr)


def _addresses6(raw, errors):
    """``addresses6``: qube -> IPv6 address; absent: no qube has IPv6 (the pillars before it)."""
    path = [ROOT, "addresses6"]
    out = {}
    raw = _mapping(raw, path, errors) if raw is not None else None
    for name, value in (raw or {}).items():
        name_ok = _qube_name(name, path + [_key_text(name)], errors)
        addr = _ipv6(value, path + [_key_text(name)], errors)
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


def _host_name(value, path, errors):
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if len(value) <= 253 and all(_DNS_LABEL.match(label) for label in labels) \
            and not re.fullmatch(r"[0-9.]+", value):
        return value
    hint = "; Qubes takes host names in lowercase: write %s" % _show(value.lower()) \
        if value.lower() != value and _host_name(value.lower(), path, _Errors()) else ""
    errors.add(path, "not a valid host name (labels of a-z 0-9 -, dot-separated), got %s%s"
               % (_show(value), hint))
    return None


def _dsthost(value, key, path, errors):
    """dsthost / dst4 / dst6: an address, a network, or (dsthost) a host name."""
    if not isinstance(value, str):
        errors.add(path, "must be an address, network or host name, got %s" % _show(value))
        return None
    if key == "dst6" or (key == "dsthost" and ":" in value):
        net = _ipv6_network(value, path, errors)
        if net is not None and net.endswith("/0"):
            # Qubes takes an IPv6 /0 destination as no destination at all: the rule then
            # matches any destination (QubesOS issue 9323)
            errors.add(path, "%s would silently match any destination in Qubes (QubesOS issue 9323): "
                             "leave dsthost, dst4 and dst6 out to mean any, or give a narrower "
                             "network (like 2000::/3)" % _show(value))
            return None
        return net
    if key == "dst4" or re.fullmatch(r"[0-9./]+", value):
        return _ipv4_network(value, path, errors)
    return _host_name(value, path, errors)


_FW_KEYS = ("action", "proto", "dsthost", "dst4", "dst6", "dstports", "icmptype",
            "specialtarget", "expire", "comment")


def _firewall_rule(raw, path, errors, qube):
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
        dsthost = _dsthost(raw[hosts[0]], hosts[0], path + [hosts[0]], errors)
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
    if "expire" in raw:
        errors.add(path + ["expire"],
                   "not supported: Qubes drops a rule once it expires, so a list with expire never "
                   "matches the pillar again and every run would rewrite it; add a temporary rule by "
                   "hand (qvm-firewall %s add ... expire=+SECONDS; the next run of the formula puts "
                   "the list back as the pillar says)" % qube)
    comment = None
    if raw.get("comment") is not None:
        if isinstance(raw["comment"], str) and _FW_COMMENT.match(raw["comment"]):
            comment = raw["comment"]
        else:
            errors.add(path + ["comment"], "a comment is 1-200 of A-Z a-z 0-9 space and :;,./_[]- "
                       "(no leading or trailing space), got %s" % _show(raw["comment"]))
    if len(errors.items) != n:
        return None
    return FirewallRule(action, proto, dsthost, dstports, icmptype, special, None, comment)


_QUBE_KEYS = ("netvm", "provides_network", "service", "firewall", "dispvm_template", "custom_persist",
              "template", "vpn")


def _netvm(value, path, errors):
    """(ok, netvm): netvm None for none/null/''."""
    if value is None or value == "none" or value == "":
        return True, None
    if isinstance(value, str) and value.lower() in ("none", "null") or value is False:
        errors.add(path, "%s is not a qube name; for no netvm write none, or null" % _show(value))
        return False, None
    name = _qube_name(value, path, errors)
    return name is not None, name


def _unknown_qube(value, path, errors, known, why):
    errors.add(path, "unknown qube %s%s (%s)" % (_show(value), _did_you_mean(value, sorted(known)), why))


def _qube_spec(name, spec, qpath, errors):
    """One qube's settings: ``(netvm, provides, service, firewall, dvm, custom_persist, template)``, or None."""
    ok, netvm = _netvm(spec["netvm"], qpath + ["netvm"], errors)
    if not ok:
        return None
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
                    _firewall_rule(rule, qpath + ["firewall", i], errors, name)
                    for i, rule in enumerate(rules)
                ) if r is not None
            )
    dvm = None
    if spec.get("dispvm_template") is not None:
        dvm = _qube_name(spec["dispvm_template"], qpath + ["dispvm_template"], errors)
        if dvm == name:
            errors.add(qpath + ["dispvm_template"], "a qube cannot be its own disposable template")
    custom_persist = False
    if spec.get("custom_persist") is not None:
        custom_persist = bool(_bool(spec["custom_persist"], qpath + ["custom_persist"], errors))
    template = None
    if spec.get("template") is not None:
        template = _qube_name(spec["template"], qpath + ["template"], errors)
        if template == name:
            errors.add(qpath + ["template"], "a qube cannot be its own template")
    elif custom_persist:
        errors.add(qpath + ["template"],
                   "required when custom_persist is true: with custom-persist Qubes runs no "
                   "/rw/config scripts (rc.local, qubes-firewall-user-script), so the rules are "
                   "replayed from the template's /etc; name the template %s boots from" % name)
    vpn = _vpn(spec["vpn"], qpath + ["vpn"], errors) if "vpn" in spec else None
    if vpn is not None and spec.get("service") is False:
        errors.add(qpath + ["service"], "a qube with vpn is a network service qube: leave service out, or true")
    return (netvm, provides, service, firewall, dvm, custom_persist, template, vpn)


def _qube_topology(parsed, path, errors):
    """The qubes, checked against each other: netvms exist and provide network."""
    used_as_netvm = {spec[0] for spec in parsed.values() if spec[0]}
    qubes = {}
    for name, (netvm, provides, service, firewall, dvm, custom_persist, template, vpn) in parsed.items():
        qpath = path + [name]
        if vpn is not None:
            service, firewall = _vpn_qube(name, netvm, service, firewall, vpn, qpath, errors)
        if netvm is not None:
            if netvm == name:
                errors.add(qpath + ["netvm"], "a qube cannot be its own netvm")
            elif netvm not in parsed:
                _unknown_qube(netvm, qpath + ["netvm"], errors, parsed,
                              "every netvm must be listed under %s:qubes" % ROOT)
            elif parsed[netvm][1] is False:
                errors.add(
                    qpath + ["netvm"],
                    "'%s' does not provide network (%s:qubes:%s:provides_network is false)"
                    % (netvm, ROOT, netvm),
                )
        if service and provides is False:
            errors.add(qpath + ["service"], "a network service qube must provide network")
        effective = provides if provides is not None else (name in used_as_netvm or service)
        if dvm is not None and dvm in parsed:
            errors.add(qpath + ["dispvm_template"],
                       "'%s' is listed under %s:qubes; a disposable template runs no qube's network" % (dvm, ROOT))
        qubes[name] = Qube(name, netvm, effective, provides, service, firewall, dvm, custom_persist, template, vpn)
    return qubes


# --------------------------------------------------------------------------
# vpn: a network service qube that fails closed
# --------------------------------------------------------------------------

_VPN_KEYS = ("interfaces", "endpoints", "dns")
_ENDPOINT_KEYS = ("address", "port", "protocol")


def _vpn_endpoint(raw, path, errors):
    raw = _mapping(raw, path, errors, allowed=_ENDPOINT_KEYS, required=("address", "port"))
    if raw is None:
        return None
    n = len(errors.items)
    value = raw["address"]
    address = None
    if isinstance(value, str) and ":" in value:
        address = _ipv6_network(value, path + ["address"], errors)
    elif isinstance(value, str) and re.fullmatch(r"[0-9./]+", value):
        address = _ipv4_network(value, path + ["address"], errors)
    else:
        errors.add(path + ["address"], "must be an IPv4 or IPv6 address or network (like 198.51.100.7 or "
                   "2001:db8::/64), got %s: a host name would need DNS outside the tunnel, which the "
                   "VPN qube must not do" % _show(value))
    if address is not None and address.endswith("/0"):
        errors.add(path + ["address"], "%s is every address: the VPN qube could then reach anything "
                   "through its upstream; name the VPN servers" % _show(value))
    elif address is not None and address.endswith(("/32", "/128")):
        address = address.rsplit("/", 1)[0]
    port = _port(raw["port"], path + ["port"], errors)
    protocol = _choice(raw.get("protocol", "udp"), path + ["protocol"], errors, PROTOCOLS)
    if len(errors.items) != n:
        return None
    return VpnEndpoint(address, port, protocol)


def _vpn_dns(value, path, errors):
    """The resolvers: a list of IPv4 addresses, or none (the clients' DNS is dropped)."""
    if value == "none" or value == []:
        return ()
    items = _list(value, path, errors) if value is not None else None
    if items is None:
        if value is None:
            errors.add(path, "must be a list of IPv4 addresses of resolvers behind the tunnel, or none "
                       "(the clients' DNS is dropped), got null")
        return None
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str) and ":" in item:
            errors.add(path + [i], "%s: Qubes gives its qubes IPv4 DNS only (10.139.1.1, 10.139.1.2), "
                       "which cannot be sent to an IPv6 resolver; give an IPv4 one" % _show(item))
            continue
        addr = _ipv4(item, path + [i], errors)
        if addr is not None and addr not in out:
            out.append(addr)
    return tuple(out)


def _vpn(raw, path, errors):
    """``qubes:<qube>:vpn``: a :class:`Vpn`, or None (errors added)."""
    raw = _mapping(raw, path, errors, allowed=_VPN_KEYS, required=_VPN_KEYS)
    if raw is None:
        return None
    n = len(errors.items)
    interfaces = []
    for i, value in enumerate(_list(raw["interfaces"], path + ["interfaces"], errors) or []):
        ifname = _ifname(value, path + ["interfaces", i], errors)
        if ifname == "eth0":
            errors.add(path + ["interfaces", i], "eth0 is the VPN qube's upstream, not its tunnel")
        elif ifname and not ifname[0].isalpha():
            errors.add(path + ["interfaces", i], "a tunnel interface name starts with a letter (like wg0, "
                       "tun0), got %s" % _show(ifname))
        elif ifname and ifname not in interfaces:
            interfaces.append(ifname)
    endpoints = []
    for i, value in enumerate(_list(raw["endpoints"], path + ["endpoints"], errors) or []):
        endpoint = _vpn_endpoint(value, path + ["endpoints", i], errors)
        if endpoint is not None and endpoint not in endpoints:
            endpoints.append(endpoint)
    dns = _vpn_dns(raw["dns"], path + ["dns"], errors)
    for key, items in (("interfaces", interfaces), ("endpoints", endpoints)):
        if len(errors.items) == n and not items:
            errors.add(path + [key], "is empty: a VPN qube needs at least one tunnel interface and one endpoint")
    if len(errors.items) != n:
        return None
    return Vpn(tuple(interfaces), tuple(endpoints), dns)


def vpn_firewall(vpn):
    """The qvm-firewall list of a VPN qube: its endpoints, nothing else (the implicit drop follows)."""
    return tuple(FirewallRule("accept", e.protocol, e.network, (e.port, e.port), comment="vpn endpoint")
                 for e in vpn.endpoints)


def _vpn_qube(name, netvm, service, firewall, vpn, qpath, errors):
    """A VPN qube is a network service qube with an upstream; its qvm-firewall list is made from vpn."""
    if netvm is None:
        errors.add(qpath + ["vpn"], "a VPN qube needs a netvm (its upstream, e.g. sys-firewall)")
    if firewall is not None:
        errors.add(qpath + ["firewall"], "%s has vpn: its qvm-firewall list is its endpoints "
                   "(%s:qubes:%s:vpn:endpoints); leave firewall out" % (name, ROOT, name))
    return True, vpn_firewall(vpn)


def _check_vpn_paths(model, errors):
    """No port forward or connection may need what a VPN qube drops: its upstream to or from its clients."""
    for vpn in sorted(n for n, q in model.qubes.items() if q.vpn is not None):
        where = "%s:qubes:%s:vpn" % (ROOT, vpn)
        for index, fwd in enumerate(model.port_forwards):
            if vpn in model.chain(fwd.qube):
                errors.add([ROOT, "port_forwards", index, "qube"],
                           "%s is behind the VPN qube %s (%s), which takes nothing in from its upstream; "
                           "a port forward cannot reach it" % (fwd.qube, vpn, where))
        for conn in model.connections:
            ends = [vpn in model.chain(q) for q in (conn.source, conn.target)]
            if ends[0] != ends[1]:
                errors.add([ROOT, "connections", conn.index],
                           "%s -> %s crosses the VPN qube %s (%s), which lets its clients out only through "
                           "the tunnel and nothing in or out of its upstream but the endpoints"
                           % (conn.source, conn.target, vpn, where))


def _netvm_cycles(qubes, path, errors):
    """No netvm cycle."""
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


def _qubes(raw, errors, has_connect_tcp=False):
    """
    The topology.  ``qubes`` may be absent or empty only in a pillar that has
    ``connect_tcp`` (qubes.ConnectTCP needs no networking; an empty list there
    removes the policy lines); anything but a mapping is an error.
    """
    path = [ROOT, "qubes"]
    if raw is None or (isinstance(raw, Mapping) and not raw):
        if not has_connect_tcp:
            errors.add(path, "%s: name the qubes the formula manages, each with its netvm (see "
                       "pillar.example/); to remove what the formula made, apply qubes_firewall.clean"
                       % ("required" if raw is None else "is empty"))
        return {}
    raw = _mapping(raw, path, errors, what="a mapping of qube name to its settings")
    if raw is None:
        return {}
    parsed = {}
    for name, spec in raw.items():
        qpath = path + [_key_text(name)]
        if _qube_name(name, qpath, errors) is None:
            continue
        if spec is None:
            spec = {}
        spec = _mapping(spec, qpath, errors, allowed=_QUBE_KEYS, required=("netvm",))
        if spec is None:
            continue
        spec = _qube_spec(name, spec, qpath, errors)
        if spec is not None:
            parsed[name] = spec
    # topology: netvms exist, provide network, no cycles
    qubes = _qube_topology(parsed, path, errors)
    _netvm_cycles(qubes, path, errors)
    return qubes


def _known_qube(value, path, errors, qubes):
    name = _qube_name(value, path, errors)
    if name is not None and name not in qubes:
        _unknown_qube(name, path, errors, qubes, "not listed under %s:qubes" % ROOT)
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
        if item is None:  # a left-out entry (the pillar view's): the others keep their numbers
            continue
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
    if isinstance(value, str) and value.startswith("@"):
        errors.add(path, "a client is a qube name, @anyvm or @tag:TAG (TAG: 1-64 of A-Z a-z 0-9 _ -), "
                   "got %s" % _show(value))
        return None
    return _qube_name(value, path, errors)


def _connect_tcp(raw, errors, qubes):
    path = [ROOT, "connect_tcp"]
    items = _list(raw, path, errors) or []
    out = []
    keys = ("client", "server", "port", "local_port", "persistent", "call")
    for index, item in enumerate(items):
        cpath = path + [index]
        if item is None:  # a left-out entry (the pillar view's): the others keep their numbers
            continue
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
            errors.add(cpath + ["persistent"], "a persistent binding needs one client qube, not %s" % _show(client))
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
            errors.add(fpath + ["name"], "duplicate port forward name '%s' (also %s:port_forwards:%d)"
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
            cidr = _source_cidr(value, fpath + ["sources", i], errors)
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
                "%s/%d on uplink %s is already forwarded by '%s'"
                % (fwd.proto, fwd.external_port, uplink, taken[key]),
            )
        taken.setdefault(key, fwd.name)


_TOP_KEYS = ("lookup", "addresses", "addresses6", "qubes", "connections", "connect_tcp", "port_forwards", "error")


def _missing(pillar_keys):
    """The error for a minion whose pillar has no ``qubes_firewall``."""
    by_norm = {}
    for key in pillar_keys or ():
        if isinstance(key, str) and key != ROOT:
            by_norm.setdefault(_norm(key), key)
    match = difflib.get_close_matches(_norm(ROOT), list(by_norm), n=1, cutoff=0.8)
    near = [by_norm[match[0]]] if match else []
    hint = ""
    if near:
        hint = "; the pillar has %s: did you mean %s?" % (_show(near[0]), ROOT)
    return ("%s: no %s pillar for this minion: nothing to apply (is the pillar top file enabled? "
            "`qubesctl top.enable qubes_firewall pillar=True`)%s" % (ROOT, ROOT, hint))


def _parse(pillar, pillar_keys):
    errors = _Errors()
    if pillar is None:
        if ROOT in (pillar_keys or ()):
            raise PillarError(["%s: is empty: give at least %s:qubes (see pillar.example/)" % (ROOT, ROOT)])
        raise PillarError([_missing(pillar_keys)])
    if isinstance(pillar, Mapping) and "error" in pillar:
        # a pillar file that could not build the pillar says why (pillar.example/fleet): that, and only that
        message = pillar["error"]
        raise PillarError(["%s:error: %s" % (ROOT, " ".join(message.split()) if isinstance(message, str)
                                              else _show(message))])
    raw = _mapping(pillar, [ROOT], errors, allowed=_TOP_KEYS)
    if raw is None:
        raise PillarError(errors.items)
    lookup = _lookup(raw.get("lookup"), errors)
    errors.release = lookup.qubes_release
    addresses = _addresses(raw.get("addresses"), errors)
    addresses6 = _addresses6(raw.get("addresses6"), errors)
    qubes = _qubes(raw.get("qubes"), errors, "connect_tcp" in raw)
    connections = _connections(raw.get("connections"), errors, qubes)
    connect_tcp = _connect_tcp(raw.get("connect_tcp"), errors, qubes)
    forwards = _port_forwards(raw.get("port_forwards"), errors, qubes)
    if errors.items:
        raise PillarError(errors.items)
    model = Model(lookup, addresses, qubes, connections, connect_tcp, forwards, addresses6)
    _check_forward_paths(model, errors)
    _check_vpn_paths(model, errors)
    if errors.items:
        raise PillarError(errors.items)
    return model


def parse(pillar, pillar_keys=()):
    """
    Validate the ``qubes_firewall`` pillar value (the dictionary under that
    key; None when the minion's pillar has no such key) and return a
    :class:`Model`.  ``pillar_keys``: the top keys of the minion's whole
    pillar, to name a near miss (``qubes-firewall``) when the key is absent.
    Raises :class:`PillarError`.
    """
    return _parse(pillar, pillar_keys)


def errors(pillar, pillar_keys=()):
    """
    The list of pillar errors (empty when the pillar is valid); arguments as
    for :func:`parse`.
    """
    try:
        _parse(pillar, pillar_keys)
    except PillarError as exc:
        return exc.errors
    return []


def to_dict(model):
    """The model as plain data (for Salt output and golden files)."""
    return dataclasses.asdict(model)
