"""
The Qubes backend of qubes-firewall-formula (dom0 only): one small interface
over the two ways dom0 can talk to Qubes.

- ``qubesadmin``: the Admin API client library, in-process (no process per
  call). Used whenever ``import qubesadmin`` works, which it does in dom0.
- ``cli``: the ``qvm-*`` tools (``qvm-ls``, ``qvm-prefs``, ``qvm-firewall``,
  ``qvm-features``), one process per call. Used otherwise, or when the minion
  option ``qubes_firewall_backend: cli`` asks for it.

Every function returns plain data (strings, bools, lists, dicts), the same for
both implementations, so the pure dom0 planner (``_qubes_firewall_dom0``) never
sees which one ran.  Qubes' refusals (``... does not provide network``,
``Loops in network are unsupported``, a bad rule) become
:class:`CommandExecutionError` with Qubes' own message.

Firewall rules travel as Qubes' canonical rule lines (``qvm-firewall --raw VM
list``, ``Rule.rule``), e.g. ``action=accept proto=tcp dsthost=example.com
dstports=443-443``.

``Qubes(opts, context)`` holds one run's reads.
"""

import copy
import os
import re
import subprocess

from salt.exceptions import CommandExecutionError

# One qvm-ls call reads all of these for every qube.
# ip6: Qubes' own answer to "is IPv6 in effect here": None unless the ipv6 feature is on along
# the netvm chain (core-admin's default for ip6 is features.check_with_netvm('ipv6', False))
INVENTORY_FIELDS = ("name", "klass", "netvm", "provides_network", "ip", "state", "template", "kernel", "ip6")
# The only features the run looks at.
FEATURES = ("os", "service.qubes-firewall", "service.custom-persist")
RUNNING_STATES = ("Running", "Paused", "Transient", "Suspended")
RELEASE_FILE = "/etc/qubes-release"
_TIMEOUT = 300
# context key of what this run read from Qubes (a property write drops all
# of it, a qvm-firewall write that qube's list)
CACHE_KEY = "qubes_firewall_qubes.cache"

# The strict grammar of each qvm-firewall rule element, as this formula writes
# it (Qubes' canonical form): a value that does not match never reaches Qubes.
_IPV4 = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
RULE_GRAMMAR = {
    "action": re.compile(r"\A(accept|drop)\Z"),
    "proto": re.compile(r"\A(tcp|udp|icmp)\Z"),
    "dst4": re.compile(r"\A%s/([0-9]|[12][0-9]|3[0-2])\Z" % _IPV4),
    "dst6": re.compile(r"\A[0-9a-f:.]{2,45}/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])\Z"),
    "dsthost": re.compile(r"\A[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?\Z"),
    "dstports": re.compile(r"\A[0-9]{1,5}-[0-9]{1,5}\Z"),
    "icmptype": re.compile(r"\A[0-9]{1,3}\Z"),
    "specialtarget": re.compile(r"\Adns\Z"),
    "expire": re.compile(r"\A[0-9]{1,19}\Z"),
    "comment": re.compile(r"\A[A-Za-z0-9 :;,./_\[\]-]{1,200}\Z"),
}
RULE_ORDER = ("action", "proto", "dst4", "dst6", "dsthost", "dstports", "icmptype", "specialtarget",
              "expire", "comment")


# --------------------------------------------------------------------------
# rules as fields
# --------------------------------------------------------------------------


def rule_problem(fields):
    """
    Why a rule (a list of ``(key, value)`` pairs) would not reach Qubes as one
    argument per element, or None: every key known and given once, in Qubes'
    order, every value matching the strict grammar of its key.
    """
    seen = []
    for pair in fields:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return "not a key/value pair: %s" % (pair,)
        key, value = pair
        if key not in RULE_GRAMMAR:
            return "unknown rule element %s" % key
        if key in seen:
            return "%s given twice" % key
        if not isinstance(value, str) or not RULE_GRAMMAR[key].match(value):
            return "%s=%s does not match the grammar of %s" % (key, value, key)
        seen.append(key)
    if not seen or seen[0] != "action":
        return "a rule starts with action"
    hosts = [k for k in seen if k in ("dst4", "dst6", "dsthost")]
    if len(hosts) > 1:
        return "more than one destination (%s)" % ", ".join(hosts)
    return None


def parse_line(line):
    """
    A rule line as Qubes prints it (``key=value`` words, everything after
    ``comment=`` the comment) as ``[(key, value)]``. Raises ValueError.
    """
    head, sep, comment = line.partition("comment=")
    fields = []
    for token in head.split(" "):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not eq:
            raise ValueError("not key=value: %s" % token)
        fields.append((key, value))
    if sep:
        fields.append(("comment", comment))
    return fields


def line_of(fields):
    """The rule line of ``[(key, value)]`` (comment last, as Qubes prints it)."""
    return " ".join("%s=%s" % (key, value) for key, value in fields)


# --------------------------------------------------------------------------
# choosing the implementation, and what this run already read
# --------------------------------------------------------------------------


def _qubesadmin():
    """The qubesadmin package, or None when it cannot be imported."""
    try:
        import qubesadmin  # only present in dom0
        import qubesadmin.exc  # noqa: F401
        import qubesadmin.firewall  # noqa: F401
    except ImportError:
        return None
    return qubesadmin


def _entry(name, klass, netvm, provides, ip, state, template, kernel, ip6=None):
    return {
        "name": name,
        "klass": klass,
        "netvm": netvm or None,
        "provides_network": bool(provides),
        "ip": ip or None,
        "ip6": ip6 or None,
        "state": state,
        "running": state in RUNNING_STATES,
        "template": template or None,
        "kernel": kernel or None,
        "disposable": klass == "DispVM",
    }


# --------------------------------------------------------------------------
# qvm-* command-line tools
# --------------------------------------------------------------------------


class _Cli:
    def run(self, argv, ok=(0,)):
        try:
            proc = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                universal_newlines=True, timeout=_TIMEOUT, check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise CommandExecutionError("%s: %s" % (" ".join(argv), exc)) from exc
        if proc.returncode not in ok:
            err = (proc.stderr or proc.stdout or "").strip()
            if "Traceback" in err:  # a bad value ends in a Python traceback: keep its last line
                err = err.splitlines()[-1]
            raise CommandExecutionError("%s failed (exit %d): %s" % (" ".join(argv), proc.returncode, err))
        return proc

    def inventory(self):
        out = self.run(["qvm-ls", "--raw-data", "--fields", ",".join(INVENTORY_FIELDS)]).stdout
        result = {}
        for line in out.splitlines():
            if not line.strip():
                continue
            values = [None if v == "-" else v for v in line.split("|")]
            if len(values) != len(INVENTORY_FIELDS):
                raise CommandExecutionError("qvm-ls printed an unexpected line: %s" % line)
            row = dict(zip(INVENTORY_FIELDS, values))
            result[row["name"]] = _entry(
                row["name"], row["klass"], row["netvm"], row["provides_network"] == "True",
                row["ip"], row["state"], row["template"], row["kernel"], row["ip6"],
            )
        return result

    def set_pref(self, vm, prop, value):
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "True" if value else "False"
        else:
            text = str(value)
        self.run(["qvm-prefs", vm, prop, text])

    def reset_pref(self, vm, prop):
        self.run(["qvm-prefs", "-D", vm, prop])

    def is_default(self, vm, prop):
        # `qvm-prefs VM` lists every property as "name  D|-  value"
        for line in self.run(["qvm-prefs", vm]).stdout.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[0] == prop:
                return parts[1] == "D"
        raise CommandExecutionError("qvm-prefs %s lists no property %s" % (vm, prop))

    def features(self, vm):
        out = self.run(["qvm-features", vm]).stdout
        result = {}
        for line in out.splitlines():
            if not line.strip():
                continue
            parts = line.split(None, 1)
            if parts[0] in FEATURES:
                result[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
        return result

    def get_firewall(self, vm):
        out = self.run(["qvm-firewall", "--raw", vm, "list"]).stdout
        return [line for line in out.splitlines() if line.strip()]

    def set_firewall(self, vm, rules, old):
        # The tools have no "replace the list": delete from the end (each state
        # a prefix of the old list: never more open than before), reach the
        # empty list (everything blocked), then add in order (each state a
        # prefix of the new list: never more open than the goal). Each rule
        # element is one argument. If a step fails, the old list is put back.
        def add(fields):
            self.run(["qvm-firewall", vm, "add"] + ["%s=%s" % pair for pair in fields])

        def delete_all(count):
            for index in range(count - 1, -1, -1):
                self.run(["qvm-firewall", vm, "del", "--rule-no", str(index)])

        try:
            delete_all(len(old))
            for fields in rules:
                add(fields)
        except CommandExecutionError as exc:
            try:
                delete_all(len(self.get_firewall(vm)))
                for line in old:
                    add(parse_line(line))
            except CommandExecutionError as again:
                raise CommandExecutionError(
                    "%s; putting the old list back failed too (%s): check qvm-firewall %s list"
                    % (exc, again, vm)) from exc
            raise CommandExecutionError("%s; the old list of %s was put back" % (exc, vm)) from exc


# --------------------------------------------------------------------------
# qubesadmin, in-process
# --------------------------------------------------------------------------


class _Admin:
    """One ``qubesadmin.Qubes()`` per run: its qube list is fetched once."""

    def __init__(self, qubesadmin):
        self.qa = qubesadmin
        self.app = qubesadmin.Qubes()

    def _vm(self, name):
        try:
            return self.app.domains[name]
        except KeyError as exc:
            raise CommandExecutionError("no such qube: %s" % name) from exc

    def _call(self, what, func, *args):
        try:
            return func(*args)
        except (self.qa.exc.QubesException, ValueError, KeyError) as exc:
            raise CommandExecutionError("%s: %s" % (what, exc)) from exc

    def inventory(self):
        def read():
            # admin.vm.List (with power states) once, then one
            # admin.vm.property.GetAll per qube
            self.app.cache_enabled = True
            result = {}
            for vm in self.app.domains:
                name = str(vm.name)
                klass = str(vm.klass)
                if klass == "AdminVM":
                    result[name] = _entry(name, klass, None, False, None, "Running", None, None)
                    continue
                netvm = getattr(vm, "netvm", None)
                template = getattr(vm, "template", None)
                kernel = getattr(vm, "kernel", None)
                ip = getattr(vm, "ip", None)
                ip6 = getattr(vm, "ip6", None)
                result[name] = _entry(
                    name, klass, str(netvm) if netvm is not None else None,
                    bool(getattr(vm, "provides_network", False)), str(ip) if ip else None,
                    str(vm.get_power_state()), str(template) if template is not None else None,
                    str(kernel) if kernel else None, str(ip6) if ip6 else None,
                )
            return result

        try:
            return self._call("listing the qubes (admin.vm.List)", read)
        finally:
            self.app.cache_enabled = False

    def set_pref(self, vm, prop, value):
        obj = self._vm(vm)
        self._call("setting %s of %s to %s (admin.vm.property.Set)" % (prop, vm, "none" if value is None else value),
                   setattr, obj, prop, value)

    def reset_pref(self, vm, prop):
        obj = self._vm(vm)
        self._call("resetting %s of %s to its default (admin.vm.property.Reset)" % (prop, vm),
                   delattr, obj, prop)

    def is_default(self, vm, prop):
        obj = self._vm(vm)
        return bool(self._call("reading %s of %s (admin.vm.property.Get)" % (prop, vm), obj.property_is_default, prop))

    def features(self, vm):
        obj = self._vm(vm)

        def read():
            # admin.vm.feature.List, then one Get per wanted feature present
            present = [str(k) for k in obj.features.keys()]
            return {key: str(obj.features[key]) for key in FEATURES if key in present}

        return self._call("reading the features of %s (admin.vm.feature.List)" % vm, read)

    def get_firewall(self, vm):
        obj = self._vm(vm)

        def read():
            obj.firewall.load_rules()
            return [str(rule.rule) for rule in obj.firewall.rules]

        return self._call("reading the qvm-firewall rules of %s (admin.vm.firewall.Get)" % vm, read)

    def set_firewall(self, vm, rules, old):
        obj = self._vm(vm)

        def write():
            built = [self.qa.firewall.Rule(None, **dict(fields)) for fields in rules]
            # admin.vm.firewall.Set: one call replaces the whole list; Qubes
            # refuses a bad line without changing anything
            obj.firewall.rules = built

        self._call("replacing the qvm-firewall rules of %s (admin.vm.firewall.Set)" % vm, write)


# --------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------


class Qubes:
    """
    This run's view of Qubes: the minion options (``_qubes_firewall_backend``,
    ``qubes_firewall_release_file``) and the run's context dict, where what the
    run read from Qubes is kept (a property write drops all of it, a
    qvm-firewall write that qube's list).
    """

    def __init__(self, opts, context):
        self.opts = opts or {}
        self.context = context if context is not None else {}

    def backend(self):
        """
        The implementation in use: ``qubesadmin`` or ``cli``.
        """
        wanted = self.opts.get("qubes_firewall_backend", "auto")
        if wanted == "cli":
            return "cli"
        if _qubesadmin() is not None:
            return "qubesadmin"
        if wanted == "qubesadmin":
            raise CommandExecutionError("qubes_firewall_backend is qubesadmin, but it cannot be imported")
        return "cli"

    def _cache(self):
        """What this run read from Qubes, shared by every state of the run through the context."""
        ctx = self.context
        name = self.backend()
        cache = ctx.get(CACHE_KEY)
        if not isinstance(cache, dict) or cache.get("backend") != name:
            cache = {"backend": name, "impl": None, "inventory": None, "features": {}, "firewall": {}}
            ctx[CACHE_KEY] = cache
        return cache

    def _impl(self):
        cache = self._cache()
        if cache["impl"] is None:
            cache["impl"] = _Admin(_qubesadmin()) if cache["backend"] == "qubesadmin" else _Cli()
        return cache["impl"]

    def invalidate(self):
        """Forget what this run read from Qubes (every write calls it)."""
        self.context.pop(CACHE_KEY, None)
        return True

    def inventory(self):
        """
        Every qube Qubes knows (dom0 included), read once per run:
        ``{name: {name, klass, netvm, provides_network, ip, ip6, state,
        running, template, kernel, disposable}}``. ``netvm``, ``ip``,
        ``template`` and ``kernel`` are None when Qubes has none; ``ip6`` is
        None unless IPv6 is in effect for the qube (the ``ipv6`` feature along
        its netvm chain, as Qubes decides it).
        """
        cache = self._cache()
        if cache["inventory"] is None:
            cache["inventory"] = self._impl().inventory()
        return copy.deepcopy(cache["inventory"])

    def set_pref(self, vm, prop, value):
        """
        Set a qube property (``netvm``: a name or None to disconnect;
        ``provides_network``: a bool). Qubes' refusal raises CommandExecutionError.
        """
        try:
            self._impl().set_pref(vm, prop, value)
        finally:
            self.invalidate()
        return True

    def reset_pref(self, vm, prop):
        """Reset a qube property to Qubes' default (``qvm-prefs -D VM PROP``)."""
        try:
            self._impl().reset_pref(vm, prop)
        finally:
            self.invalidate()
        return True

    def features(self, vm):
        """
        The features of the qube this formula looks at (``FEATURES``: ``os``,
        ``service.qubes-firewall``, ``service.custom-persist``) as
        ``{name: value}``, read once per run.
        """
        cache = self._cache()
        if vm not in cache["features"]:
            cache["features"][vm] = self._impl().features(vm)
        return dict(cache["features"][vm])

    def get_firewall(self, vm):
        """The qube's qvm-firewall list as Qubes' rule lines, in order (read once per run)."""
        cache = self._cache()
        if vm not in cache["firewall"]:
            cache["firewall"][vm] = self._impl().get_firewall(vm)
        return list(cache["firewall"][vm])

    def set_firewall(self, vm, rules):
        """
        Replace the qube's whole qvm-firewall list with ``rules``, each a list of
        ``(key, value)`` pairs (one argument per element on a command line, never
        a string split on spaces). Every rule is checked against the strict
        grammar before the first write; with qubesadmin the list is replaced in
        one ``admin.vm.firewall.Set``, with the tools a failure puts the old list
        back.
        """
        for index, fields in enumerate(rules):
            if isinstance(fields, str) or not isinstance(fields, (list, tuple)):
                raise CommandExecutionError(
                    "qvm-firewall %s: rule %d must be a list of (key, value) elements, not a line to "
                    "split; nothing changed" % (vm, index))
        rules = [[tuple(pair) if isinstance(pair, (list, tuple)) else (pair,) for pair in fields]
                 for fields in rules]
        for index, fields in enumerate(rules):
            problem = rule_problem(fields)
            if problem:
                raise CommandExecutionError(
                    "qvm-firewall %s: rule %d (%s): %s; nothing changed" % (vm, index, line_of(
                        [p for p in fields if isinstance(p, tuple) and len(p) == 2]), problem))
        impl = self._impl()
        old = self.get_firewall(vm)
        try:
            impl.set_firewall(vm, rules, old)
        finally:
            # a qvm-firewall list changes nothing else: only that list is read again
            self._cache()["firewall"].pop(vm, None)
        return True

    def is_default(self, vm, prop):
        """Does ``vm`` follow Qubes' default for ``prop`` (``qvm-prefs VM`` shows ``D``)?"""
        return self._impl().is_default(vm, prop)

    def reconnect(self, netvm, test=False):
        """
        Re-attach the running clients of ``netvm`` (the Qubes firewall manual page's "Reconnecting qubes
        after a NetVM reboot": ``qvm-prefs CLIENT netvm NETVM``), network
        providers (sys-firewall) first. A client that follows Qubes' default netvm
        keeps following it: after the set that re-attaches it, its netvm is reset
        to the default (the same qube, so Qubes does not re-attach again). Returns
        the clients, in order. With ``test=True`` nothing is written.
        """
        inv = self.inventory()
        if netvm not in inv:
            raise CommandExecutionError("no such qube: %s" % netvm)
        clients = sorted(
            (q for q in inv.values() if q["netvm"] == netvm and q["running"]),
            key=lambda q: (not q["provides_network"], q["name"]),
        )
        if clients and not inv[netvm]["running"]:
            raise CommandExecutionError(
                "%s is not running (%s): start it first, then reconnect its clients"
                % (netvm, inv[netvm]["state"])
            )
        names = [q["name"] for q in clients]
        if not test:
            impl = self._impl()
            defaults = {name: impl.is_default(name, "netvm") for name in names}
            try:
                for name in names:
                    impl.set_pref(name, "netvm", netvm)
                    if defaults[name]:
                        impl.reset_pref(name, "netvm")
            finally:
                self.invalidate()
        return names

    def qubes_release(self, path=None):
        """
        The Qubes release of this dom0, ``"4.2"`` or ``"4.3"``, from
        ``/etc/qubes-release`` (``Qubes release 4.3.0 (R4.3)``; the minion option
        ``qubes_firewall_release_file`` names another file, for tests). Raises
        CommandExecutionError when it cannot be read or names another release.
        """
        path = path or self.opts.get("qubes_firewall_release_file") or RELEASE_FILE
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read(4096)
        except OSError as exc:
            raise CommandExecutionError(
                "cannot read %s (%s): is this dom0? Give qubes_firewall:lookup:qubes_release "
                "in the pillar instead" % (path, exc.strerror or exc)) from exc
        match = re.search(r"\bR?([0-9]+)\.([0-9]+)", text)
        release = "%s.%s" % match.groups() if match else None
        if release not in ("4.2", "4.3"):
            raise CommandExecutionError(
                "%s says %s: this formula knows Qubes 4.2 and 4.3" % (path, text.strip()[:80] or "nothing"))
        return release

    def release_known(self):
        """True when this machine has a release file to detect the release from."""
        path = self.opts.get("qubes_firewall_release_file") or RELEASE_FILE
        return os.path.exists(path)
