"""
A test double of Qubes 4.2 dom0, faithful where the formula depends on it.

One "world" (a JSON file named by $QUBES_FAKE_STATE) holds the qubes, their
explicit properties, features and qvm-firewall lists.  Two faces read and
write it, so both backends of ``qubes_firewall_qubes`` meet the same Qubes:

- the command-line tools ``qvm-ls``, ``qvm-prefs``, ``qvm-firewall``,
  ``qvm-features``, ``qvm-service``, ``qvm-create`` (``cli_main``; installed on PATH by
  ``install_tools``), printing what the real ones print (core-admin-client tools):
  values, ``-`` for none, errors on stderr as ``TOOL: error: ...``, exit 2 for
  usage errors (unknown property, unknown rule key, no such domain), a Python
  traceback and exit 1 for a bad rule value;
- the ``qubesadmin`` object API (``tests/dom0/fake_qubesadmin.py``).

Qubes' refusals are kept (core-admin ``qubes/vm/mix/net.py``): a netvm that
does not provide network, loops, a running qube attached to a stopped netvm,
``provides_network`` off while clients are attached.

Two worlds: ``seed_world`` (the qubes of the manual page on a 4.2 machine,
sys-firewall an AppVM) and ``default_world`` (a default 4.3 install, sys-firewall
a disposable of default-dvm, to which the pillar examples add their qubes with
``qvm-create``).

Each tool invocation is appended to $QUBES_FAKE_LOG (one JSON argv per line)
so tests can count calls; each qube (re)attachment to a netvm is recorded in
the world's ``events``.
"""

import argparse
import datetime
import ipaddress
import json
import os
import socket
import string
import sys
import tempfile

STATE_ENV = "QUBES_FAKE_STATE"
LOG_ENV = "QUBES_FAKE_LOG"
TOOLS = ("qvm-ls", "qvm-prefs", "qvm-firewall", "qvm-features", "qvm-service", "qvm-create")
RUNNING = ("Running", "Paused", "Transient")
PROPERTIES = ("ip", "ip6", "kernel", "klass", "label", "name", "netvm", "provides_network", "qid", "template")
IPV6_PREFIX = "fd09:24ef:4179:0000"  # core-admin's qubes.config.qubes_ipv6_prefix
WRITABLE = ("ip", "ip6", "kernel", "label", "netvm", "provides_network")


class QubesException(Exception):
    """Like qubesadmin.exc.QubesException: the message is what the tools print."""


class QubesValueError(QubesException, ValueError):
    pass


class QubesVMNotStartedError(QubesException):
    pass


class QubesVMNotFoundError(QubesException, KeyError):
    def __str__(self):
        return Exception.__str__(self)


class QubesNoSuchPropertyError(QubesException, AttributeError):
    pass


class QubesFeatureNotFoundError(QubesException, KeyError):
    def __str__(self):
        return Exception.__str__(self)


# --------------------------------------------------------------------------
# qvm-firewall rules (the semantics of qubesadmin/firewall.py, 4.2)
# --------------------------------------------------------------------------


class Rule:
    """A qvm-firewall rule; ``rule`` is the canonical line."""

    ELEMENTS = ("action", "proto", "dsthost", "dst4", "dst6", "specialtarget",
                "dstports", "icmptype", "expire", "comment")

    def __init__(self, rule=None, **kwargs):
        self.action = self.proto = self.dsthost = self.dstports = None
        self.icmptype = self.specialtarget = self.expire = self.comment = None
        self._host_type = None
        opts = {}
        if rule is not None:
            head, _, comment = rule.partition("comment=")
            opts = dict(opt.split("=", 1) for opt in head.split(" ") if opt)
            if comment:
                opts["comment"] = comment
        opts.update(kwargs)
        for key in self.ELEMENTS:
            value = opts.pop(key, None)
            if value is None:
                continue
            getattr(self, "_set_" + ("dsthost" if key in ("dst4", "dst6") else key))(str(value))
        if opts:
            raise ValueError("Unknown rule elements: {!r}".format(opts))
        if self.action is None:
            raise ValueError("missing action=")

    def _set_action(self, value):
        if value not in ("accept", "drop"):
            raise ValueError(value)
        self.action = value

    def _set_proto(self, value):
        if value not in ("tcp", "udp", "icmp"):
            raise ValueError(value)
        if value not in ("tcp", "udp"):
            self.dstports = None
        if value != "icmp":
            self.icmptype = None
        self.proto = value

    def _set_dsthost(self, value):
        if value.count("/") > 1:
            raise ValueError("Too many /: " + value)
        host, _, prefix = value.partition("/")
        for family, version, maxlen in ((socket.AF_INET6, "6", 128), (socket.AF_INET, "4", 32)):
            try:
                socket.inet_pton(family, host)
            except OSError:
                continue
            if version == "4" and host.count(".") != 3:
                raise ValueError("Invalid number of dots in IPv4 address")
            length = int(prefix) if prefix else maxlen
            if not 0 <= length <= maxlen:
                raise ValueError("netmask for IPv%s must be between 0 and %d" % (version, maxlen))
            self.dsthost, self._host_type, self._prefix = "%s/%d" % (host, length), version, length
            return
        if prefix:
            raise ValueError("Invalid IP address: " + host)
        if not all(c in string.ascii_lowercase + string.digits + "-._" for c in value):
            raise ValueError("Invalid hostname")
        self.dsthost, self._host_type, self._prefix = value, "host", None

    def _set_dstports(self, value):
        if self.proto not in ("tcp", "udp"):
            raise ValueError("dstports valid only for 'tcp' and 'udp' protocols")
        if value.count("-") == 1:
            low, high = (int(x) for x in value.split("-", 1))
        elif "-" not in value:
            low = high = int(value)
        else:
            raise ValueError(value)
        if not (0 <= low <= 65536 and 0 <= high <= 65536):
            raise ValueError("Ports out of range")
        if low > high:
            raise ValueError("Invalid port range")
        self.dstports = (low, high)

    def _set_icmptype(self, value):
        if self.proto != "icmp":
            raise ValueError("icmptype valid only for 'icmp' protocol")
        if not 0 <= int(value) <= 255:
            raise ValueError("ICMP type out of range")
        self.icmptype = int(value)

    def _set_specialtarget(self, value):
        if value != "dns":
            raise ValueError(value)
        self.specialtarget = value

    def _set_expire(self, value):
        datetime.datetime.fromtimestamp(int(value), tz=datetime.timezone.utc)
        self.expire = int(value)

    def _set_comment(self, value):
        self.comment = value

    def expired(self, now=None):
        now = datetime.datetime.now(tz=datetime.timezone.utc).timestamp() if now is None else now
        return self.expire is not None and self.expire <= now

    @property
    def rule(self):
        parts = ["action=" + self.action]
        if self.proto:
            parts.append("proto=" + self.proto)
        if self.dsthost is not None:
            if self._host_type == "host":
                parts.append("dsthost=" + self.dsthost)
            elif self._prefix != 0:
                parts.append("dst%s=%s" % (self._host_type, self.dsthost))
        if self.dstports:
            parts.append("dstports=%d-%d" % self.dstports)
        if self.icmptype is not None:
            parts.append("icmptype=%d" % self.icmptype)
        if self.specialtarget:
            parts.append("specialtarget=" + self.specialtarget)
        if self.expire is not None:
            parts.append("expire=%d" % self.expire)
        if self.comment:
            parts.append("comment=" + self.comment)
        return " ".join(parts)

    def __eq__(self, other):
        if isinstance(other, Rule):
            return self.rule == other.rule
        if isinstance(other, str):
            return False  # qubesadmin 4.2 bug kept: Rule == str is always False
        return NotImplemented

    def __repr__(self):
        return "Rule(%r)" % self.rule


# --------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------


def _parse_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise QubesValueError("Invalid value for property: %r" % value)


class World:
    def __init__(self, path=None):
        self.path = path or os.environ[STATE_ENV]
        with open(self.path) as handle:
            self.data = json.load(handle)
        self.data.setdefault("events", [])
        self.data.setdefault("global", {})

    def save(self):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path))
        with os.fdopen(fd, "w") as handle:
            json.dump(self.data, handle, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    # ---- qubes
    def names(self):
        return sorted(["dom0"] + list(self.data["qubes"]))

    def exists(self, name):
        return name == "dom0" or name in self.data["qubes"]

    def qube(self, name):
        if name == "dom0":
            return {"klass": "AdminVM", "qid": 0, "state": "Running", "props": {}, "features": {}}
        try:
            return self.data["qubes"][name]
        except KeyError:
            raise QubesVMNotFoundError("No such domain: {!r}".format(name)) from None

    def running(self, name):
        return self.qube(name).get("state", "Halted") in RUNNING

    def state(self, name):
        return self.qube(name).get("state", "Halted")

    def property_list(self, name):
        if name == "dom0":
            return ("klass", "label", "name", "qid")
        return PROPERTIES

    def is_default(self, name, prop):
        return prop not in ("name", "klass", "qid", "template") and prop not in self.qube(name)["props"]

    def default(self, name, prop):
        q = self.qube(name)
        if prop == "netvm":
            if q["klass"] == "TemplateVM":
                return None
            default = self.data["global"].get("default_netvm")
            return None if default == name else default
        if prop == "provides_network":
            return False
        if prop == "ip":
            if not self.networked(name):
                return None
            if q["klass"] == "DispVM":
                n, prefix = q["dispid"], "10.138"
            else:
                n, prefix = q["qid"], "10.137"
            if n < 255:
                return "%s.0.%d" % (prefix, n)
            return "%s.%d.%d" % (prefix, (n - 1) // 254, (n - 1) % 254 + 1)
        if prop == "ip6":
            # core-admin: None unless networked and features.check_with_netvm('ipv6', False)
            if not self.networked(name) or not self.check_with_netvm(name, "ipv6"):
                return None
            if q["klass"] == "DispVM":
                return str(ipaddress.IPv6Address("%s::a8a:%x" % (IPV6_PREFIX, q["dispid"])))
            return str(ipaddress.IPv6Address("%s::a89:%x" % (IPV6_PREFIX, q["qid"])))
        if prop == "label":
            return "red"
        return None

    def check_with_netvm(self, name, feature, default=False):
        """features.check_with_netvm: the qube's own value if set, else its netvm's, up the chain."""
        seen = []
        while name is not None and name not in seen:
            feats = self.features(name) if name != "dom0" else {}
            if feature in feats:
                return feats[feature]
            seen.append(name)
            name = self.get(name, "netvm")
        return default

    def get(self, name, prop):
        if prop not in self.property_list(name):
            raise QubesNoSuchPropertyError("Invalid property name: {!r}".format(prop))
        q = self.qube(name)
        if prop == "name":
            return name
        if prop in ("klass", "qid", "template", "kernel"):
            if prop == "kernel" and "kernel" in q["props"]:
                return q["props"]["kernel"]
            return q.get(prop)
        if prop in q["props"]:
            return q["props"][prop]
        return self.default(name, prop)

    def networked(self, name):
        return bool(self.get(name, "provides_network")) or self.get(name, "netvm") is not None

    def upstream(self, name):
        out, current = [], self.get(name, "netvm")
        while current is not None and current not in out:
            out.append(current)
            current = self.get(current, "netvm")
        return out

    def connected(self, name):
        return [n for n in self.names() if n != "dom0" and self.get(n, "netvm") == name]

    def set(self, name, prop, value):
        """admin.vm.property.Set with core-admin's checks; value is text or VM name/None."""
        if prop not in self.property_list(name):
            raise QubesNoSuchPropertyError("Invalid property name: {!r}".format(prop))
        if prop not in WRITABLE:
            raise QubesValueError("property {!r} is read-only".format(prop))
        q = self.qube(name)
        if prop == "netvm":
            if value in (None, "", "none", "None"):
                value = None
            elif not self.exists(value) or value == "dom0":
                raise QubesVMNotFoundError("No such domain: {!r}".format(value))
            if value is not None:
                if not self.get(value, "provides_network"):
                    raise QubesValueError("The {!s} qube does not provide network".format(value))
                if value == name or name in self.upstream(value):
                    raise QubesValueError("Loops in network are unsupported")
                if self.running(name) and not self.running(value):
                    raise QubesVMNotStartedError(
                        "Cannot dynamically attach to stopped NetVM: {!r}".format(value))
            q["props"]["netvm"] = value
            if value is not None and self.running(name):
                self.data["events"].append(["attach", name, value])
        elif prop == "provides_network":
            value = _parse_bool(value)
            if not value and self.connected(name):
                # core-admin refuses this; the wording is UNCERTAIN
                raise QubesValueError("The {} qube is still used by other qubes: {}".format(
                    name, ", ".join(self.connected(name))))
            q["props"]["provides_network"] = value
        elif prop == "ip6":
            # core-admin: type=ipaddress.IPv6Address; a set ip6 wins over the default, feature or not
            try:
                q["props"]["ip6"] = str(ipaddress.IPv6Address(value))
            except ValueError as exc:
                raise QubesValueError(str(exc)) from None
        else:
            q["props"][prop] = value
        self.save()

    def reset(self, name, prop):
        if prop not in self.property_list(name):
            raise QubesNoSuchPropertyError("Invalid property name: {!r}".format(prop))
        q = self.qube(name)
        old = self.get(name, prop)
        q["props"].pop(prop, None)
        # core-admin re-attaches only when the reset changes the netvm
        # (property-reset:netvm returns early when the default is the old value)
        new = self.get(name, "netvm") if prop == "netvm" else None
        if prop == "netvm" and self.running(name) and new and new != old:
            self.data["events"].append(["attach", name, new])
        self.save()

    # ---- features
    def features(self, name):
        return self.qube(name).setdefault("features", {})

    def set_feature(self, name, key, value):
        self.features(name)[key] = value
        self.save()

    def del_feature(self, name, key):
        self.features(name).pop(key, None)
        self.save()

    # ---- firewall
    def firewall(self, name):
        """
        admin.vm.firewall.Get: the rule lines (no firewall.xml: accept all);
        a rule past its expire is left out, as qubesd does.
        """
        self.qube(name)
        lines = self.qube(name).get("firewall")
        if lines is None:
            return ["action=accept"]
        return [line for line in lines if not Rule(line).expired()]

    def set_firewall(self, name, lines):
        """
        admin.vm.firewall.Set: the whole list; an invalid line changes
        nothing; a rule past its expire is not saved (core-admin's save).
        """
        self.qube(name)
        canonical = [Rule(line).rule for line in lines]
        canonical = [line for line in canonical if not Rule(line).expired()]
        self.qube(name)["firewall"] = canonical
        self.data.setdefault("firewall_sets", []).append(name)
        self.save()


# --------------------------------------------------------------------------
# the command-line tools
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    pass


def _error(tool, message, code):
    sys.stderr.write("usage: %s [options] VMNAME ...\n" % tool if code == 2 else "")
    sys.stderr.write("%s: error: %s\n" % (tool, message))
    return code


def _show(value):
    if value is None or value == "":
        return "-"
    return str(value)


def qvm_ls(world, argv):
    parser = _Parser(prog="qvm-ls")
    parser.add_argument("--raw-data", action="store_true")
    parser.add_argument("--fields", default="name,state,klass,label,template,netvm")
    parser.add_argument("-n", "--network", action="store_true")
    parser.add_argument("vms", nargs="*")
    args = parser.parse_args(argv)
    fields = [f.strip().lower() for f in args.fields.split(",")]
    if args.network:
        fields = ["name", "state", "netvm", "ip"]
    rows = []
    for name in world.names():
        if args.vms and name not in args.vms:
            continue
        row = []
        for field in fields:
            if field == "state":
                row.append(world.state(name))
            elif field in world.property_list(name):
                row.append(_show(world.get(name, field)))
            else:
                row.append("-")
        rows.append(row)
    if args.raw_data:
        for row in rows:
            print("|".join(row))
    else:
        widths = [max(len(x) for x in col) for col in zip([f.upper() for f in fields], *rows)]
        for row in [[f.upper() for f in fields]] + rows:
            print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0


def qvm_prefs(world, argv):
    tool = "qvm-prefs"
    default = False
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt in ("-D", "--default"):
            default = True
        elif opt == "--":
            break
        else:
            return _error(tool, "unrecognized arguments: %s" % opt, 2)
    if not argv:
        return _error(tool, "the following arguments are required: VMNAME", 2)
    if any(a.startswith("-") and a not in ("-",) for a in argv[1:2]):
        # options after the qube name are not options (as in qvm-prefs)
        return _error(tool, "unrecognized arguments: %s" % " ".join(argv[1:]), 2)
    name, rest = argv[0], argv[1:]
    if not world.exists(name):
        return _error(tool, "no such domain: {!r}".format(name), 2)
    if len(rest) > 2:
        return _error(tool, "unrecognized arguments: %s" % " ".join(rest[2:]), 2)
    if not rest:
        props = world.property_list(name)
        width = max(len(p) for p in props)
        for prop in sorted(props):
            flag = "D" if world.is_default(name, prop) else "-"
            print("{:{w}s}  {}  {}".format(prop, flag, _value_text(world.get(name, prop)), w=width).rstrip())
        return 0
    prop = rest[0].replace("-", "_")
    if prop not in world.property_list(name):
        return _error(tool, "no such property: {!r}".format(prop), 2)
    try:
        if default:
            if len(rest) > 1:
                return _error(tool, "cannot set and reset a property at once", 2)
            world.reset(name, prop)
        elif len(rest) == 2:
            world.set(name, prop, rest[1])
        else:
            value = world.get(name, prop)
            if value is not None:
                print(_value_text(value))
    except QubesException as exc:
        return _error(tool, str(exc), 1)
    return 0


def _value_text(value):
    return "" if value is None else str(value)


class _RuleAction(argparse.Action):
    """qvm-firewall's rule parser: key=value (or positional) words -> Rule."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not values:
            setattr(namespace, self.dest, None)
            return
        assumed = ["action", "dsthost", "proto", "dstports", "icmptype"]
        allowed = assumed + ["specialtarget", "comment", "expire"]
        kwargs = {}
        for opt in values:
            parts = opt.split("=")
            if len(parts) == 2:
                key, value = parts
            elif len(parts) == 1:
                key, value = assumed[0], opt
            else:
                raise argparse.ArgumentError(None, "invalid rule description: {}".format(opt))
            if key in ("dst4", "dst6"):
                key = "dsthost"
            if key not in allowed:
                raise argparse.ArgumentError(None, "Invalid rule element: {}".format(opt))
            kwargs[key] = value
            if key in assumed:
                assumed.remove(key)
            if key == "proto" and value in ("tcp", "udp") and "icmptype" in assumed:
                assumed.remove("icmptype")
            elif key == "proto" and value == "icmp" and "dstports" in assumed:
                assumed.remove("dstports")
        # a bad value raises ValueError here: a traceback, exit 1, like Qubes
        setattr(namespace, self.dest, Rule(None, **kwargs))


def qvm_firewall(world, argv):
    parser = _Parser(prog="qvm-firewall")
    parser.add_argument("--reload", "-r", action="store_true")
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("VMNAME")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("add")
    add.add_argument("--before", type=int, default=None)
    add.add_argument("rule", nargs="+", action=_RuleAction)
    delete = sub.add_parser("del")
    delete.add_argument("--rule-no", dest="rule_no", type=int)
    delete.add_argument("rule", nargs="*", action=_RuleAction)
    sub.add_parser("list")
    sub.add_parser("reset")
    args = parser.parse_args(argv)
    if not world.exists(args.VMNAME) or args.VMNAME == "dom0":
        parser.error("no such domain: {!r}".format(args.VMNAME))
    rules = [Rule(line) for line in world.firewall(args.VMNAME)]
    if args.command == "add":
        if args.before is not None:
            rules.insert(args.before, args.rule)
        else:
            rules.append(args.rule)
        world.set_firewall(args.VMNAME, [r.rule for r in rules])
    elif args.command == "del":
        if args.rule_no is not None:
            rules.pop(args.rule_no)
        else:
            rules.remove(args.rule)
        world.set_firewall(args.VMNAME, [r.rule for r in rules])
    elif args.command == "reset":
        world.set_firewall(args.VMNAME, ["action=accept"])
    elif args.raw:
        for rule in rules:
            sys.stdout.write(rule.rule + "\n")
    else:
        print("NO  ACTION  HOST  PROTOCOL  PORT(S)  SPECIAL TARGET  ICMP TYPE  EXPIRE  COMMENT")
        for index, rule in enumerate(rules):
            ports = rule.dstports and ("%d" % rule.dstports[0] if rule.dstports[0] == rule.dstports[1]
                                       else "%d-%d" % rule.dstports)
            print("  ".join(_show(v) for v in (index, rule.action, rule.dsthost, rule.proto, ports,
                                                 rule.specialtarget, rule.icmptype, rule.expire,
                                                 rule.comment)))
    return 0


def qvm_features(world, argv):
    tool = "qvm-features"
    parser = _Parser(prog=tool)
    parser.add_argument("--unset", "--default", "--delete", "-D", dest="delete", action="store_true")
    parser.add_argument("VMNAME")
    parser.add_argument("feature", nargs="?")
    parser.add_argument("value", nargs="?")
    args = parser.parse_args(argv)
    if not world.exists(args.VMNAME):
        parser.error("no such domain: {!r}".format(args.VMNAME))
    feats = world.features(args.VMNAME)
    if args.feature is None:
        if args.delete:
            parser.error("--unset requires a feature")
        width = max((len(k) for k in feats), default=0)
        for key in sorted(feats):
            print("{:{w}s}  {}".format(key, feats[key], w=width))
        return 0
    if args.delete:
        world.del_feature(args.VMNAME, args.feature)
    elif args.value is None:
        if args.feature not in feats:
            return 1
        print(feats[args.feature])
    else:
        world.set_feature(args.VMNAME, args.feature, args.value)
    return 0


def qvm_service(world, argv):
    parser = _Parser(prog="qvm-service")
    parser.add_argument("--unset", "--default", "-D", dest="delete", action="store_true")
    parser.add_argument("VMNAME")
    parser.add_argument("service", nargs="?")
    parser.add_argument("value", nargs="?")
    args = parser.parse_args(argv)
    if not world.exists(args.VMNAME):
        parser.error("no such domain: {!r}".format(args.VMNAME))
    feats = world.features(args.VMNAME)
    services = {k[len("service."):]: v for k, v in feats.items() if k.startswith("service.")}
    if args.service is None:
        width = max((len(k) for k in services), default=0)
        for key in sorted(services):
            print("{:{w}s}  {}".format(key, "on" if services[key] else "off", w=width))
        return 0
    key = "service." + args.service
    if args.delete:
        world.del_feature(args.VMNAME, key)
    elif args.value is None:
        if args.service in services:
            print("on" if services[args.service] else "off")
    else:
        on = args.value.lower() in ("1", "on", "true", "yes", "enable")
        if not on and args.value.lower() not in ("0", "off", "false", "no", "disable"):
            parser.error("invalid service value: {!r}".format(args.value))
        world.set_feature(args.VMNAME, key, "1" if on else "")
    return 0


def qvm_create(world, argv):
    """
    qvm-create [--class CLASS] [--template T] --label L [--property NAME=VALUE ...] NAME:
    a new, halted qube with the next free qid (a DispVM also gets a dispid),
    as core-admin-client's qvm-create does; its properties are set with
    qvm-prefs' checks (one that fails leaves the qube created, exit 2).
    """
    parser = _Parser(prog="qvm-create")
    parser.add_argument("--class", "-C", dest="klass", default="AppVM",
                        choices=("AppVM", "DispVM", "StandaloneVM", "TemplateVM"))
    parser.add_argument("--template", "-t", default=None)
    parser.add_argument("--label", "-l", required=True)
    parser.add_argument("--property", "--prop", "-p", dest="props", action="append", default=[])
    parser.add_argument("VMNAME")
    args = parser.parse_args(argv)
    if world.exists(args.VMNAME):
        return _error("qvm-create", "VM {} already exists".format(args.VMNAME), 1)
    template = args.template
    if args.klass in ("AppVM", "DispVM"):
        template = template or (world.data["global"].get("default_dispvm") if args.klass == "DispVM"
                                else world.data["global"].get("default_template"))
        if not template or not world.exists(template):
            return _error("qvm-create", "no such template: {!r}".format(template), 1)
        if args.klass == "DispVM" and not world.qube(template).get("template_for_dispvms"):
            return _error("qvm-create", "template for DispVM ({}) needs to be an AppVM with "
                          "template_for_dispvms=True".format(template), 1)
    elif args.klass == "TemplateVM":
        template = None
    qids = [q["qid"] for q in world.data["qubes"].values()]
    entry = _qube(args.klass, max(qids + [0]) + 1, state="Halted", template=template)
    entry["props"]["label"] = args.label
    if args.klass == "DispVM":
        dispids = [q.get("dispid", 0) for q in world.data["qubes"].values()]
        entry["dispid"] = max(dispids + [0]) + 211  # Qubes draws it at random; any unused one
    world.data["qubes"][args.VMNAME] = entry
    world.save()
    retcode = 0
    for prop in args.props:
        key, _, value = prop.partition("=")
        try:
            world.set(args.VMNAME, key.replace("-", "_"), value)
        except QubesException as exc:
            # the qube stays (core-admin-client qvm_create.py)
            sys.stderr.write("Error setting property {} (but VM created): {!s}\n".format(key, exc))
            retcode = 2
    return retcode


def run_command(path, command):
    """Run one dom0 command line (``qvm-create ...``) of the fake tools on the world at ``path``."""
    import shlex

    argv = shlex.split(command)
    tool = argv[0]
    if tool not in TOOLS:
        raise ValueError("not a fake Qubes tool: %r" % command)
    world = World(str(path))
    return TOOL_FUNCS[tool](world, argv[1:])


def cli_main(tool, argv):
    if os.environ.get(LOG_ENV):
        with open(os.environ[LOG_ENV], "a") as handle:
            handle.write(json.dumps([tool] + list(argv)) + "\n")
    world = World()
    return TOOL_FUNCS[tool](world, list(argv))


TOOL_FUNCS = {"qvm-ls": qvm_ls, "qvm-prefs": qvm_prefs, "qvm-firewall": qvm_firewall,
              "qvm-features": qvm_features, "qvm-service": qvm_service, "qvm-create": qvm_create}


def install_tools(bindir):
    """Write the qvm-* tools into ``bindir`` (put it first on PATH)."""
    os.makedirs(bindir, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    for tool in TOOLS:
        path = os.path.join(bindir, tool)
        with open(path, "w") as handle:
            handle.write(
                "#!%s\nimport sys\nsys.path.insert(0, %r)\nimport fakequbes\n"
                "sys.exit(fakequbes.cli_main(%r, sys.argv[1:]))\n" % (sys.executable, here, tool)
            )
        os.chmod(path, 0o755)
    return bindir


# --------------------------------------------------------------------------
# a seed-document machine
# --------------------------------------------------------------------------


def _qube(klass, qid, state="Running", template="fedora-39-xfce", props=None, features=None, **extra):
    entry = {"klass": klass, "qid": qid, "state": state, "template": template,
             "props": dict(props or {}), "features": dict(features or {})}
    entry.update(extra)
    return entry


def seed_world():
    """A fresh Qubes 4.2 install plus the qubes the manual page names, not yet wired."""
    return {
        "global": {"default_netvm": "sys-firewall"},
        "events": [],
        "qubes": {
            "fedora-39-xfce": _qube("TemplateVM", 2, state="Halted", template=None),
            "default-dvm": _qube("AppVM", 3, state="Halted"),
            "sys-net": _qube("AppVM", 5, props={"netvm": None, "provides_network": True},
                             kernel="6.6.48-1.fc37"),
            "sys-firewall": _qube("AppVM", 6, props={"netvm": "sys-net", "provides_network": True},
                                  kernel="6.6.48-1.fc37"),
            "sys-vpn": _qube("AppVM", 7, kernel="6.6.48-1.fc37"),
            "sys-firewall-2": _qube("AppVM", 8, kernel="6.6.48-1.fc37"),
            "work": _qube("AppVM", 9, kernel="6.6.48-1.fc37"),
            "build": _qube("AppVM", 10, state="Halted", kernel="6.6.48-1.fc37"),
            "web": _qube("AppVM", 11, kernel="6.6.48-1.fc37"),
            "personal": _qube("AppVM", 12, state="Halted", kernel="6.6.48-1.fc37"),
        },
    }


def default_world():
    """
    A default Qubes 4.3 install, as its installer leaves it: sys-net, a
    disposable sys-firewall (a named DispVM of default-dvm, the installer's
    default), a disposable sys-usb, default-dvm and the app qubes work,
    personal, untrusted and vault, on the templates fedora-42-xfce (the
    default) and debian-13-xfce; default_netvm sys-firewall.  Right after
    boot: the service qubes run, the others are halted.
    """
    kernel = "6.12.47-1.qubes.fc41"
    fedora = "fedora-42-xfce"
    return {
        "global": {"default_netvm": "sys-firewall", "default_template": fedora,
                   "default_dispvm": "default-dvm", "updatevm": "sys-firewall", "clockvm": "sys-net"},
        "events": [],
        "qubes": {
            fedora: _qube("TemplateVM", 1, state="Halted", template=None, props={"label": "black"}),
            "debian-13-xfce": _qube("TemplateVM", 2, state="Halted", template=None, props={"label": "black"}),
            "sys-net": _qube("AppVM", 3, template=fedora, kernel=kernel,
                             props={"netvm": None, "provides_network": True, "label": "red"}),
            "default-dvm": _qube("AppVM", 4, state="Halted", template=fedora, kernel=kernel,
                                 props={"label": "red"}, template_for_dispvms=True),
            "sys-firewall": _qube("DispVM", 5, template="default-dvm", kernel=kernel, dispid=4917,
                                  props={"netvm": "sys-net", "provides_network": True, "label": "green"}),
            "sys-usb": _qube("DispVM", 6, template="default-dvm", kernel=kernel, dispid=2306,
                             props={"netvm": None, "label": "red"}),
            "work": _qube("AppVM", 7, state="Halted", template=fedora, kernel=kernel, props={"label": "blue"}),
            "personal": _qube("AppVM", 8, state="Halted", template=fedora, kernel=kernel,
                              props={"label": "yellow"}),
            "untrusted": _qube("AppVM", 9, state="Halted", template=fedora, kernel=kernel,
                               props={"label": "red"}),
            "vault": _qube("AppVM", 10, state="Halted", template=fedora, kernel=kernel,
                           props={"netvm": None, "label": "black"}),
        },
    }


def write_world(path, data):
    with open(path, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    return path
