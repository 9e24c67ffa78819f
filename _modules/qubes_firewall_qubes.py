"""
The Qubes backend of qubes-firewall-formula (dom0 only): one small interface
over the two ways dom0 can talk to Qubes.

- ``qubesadmin``: the Admin API client library, in-process (no process per
  call). Used whenever ``import qubesadmin`` works, which it does in dom0.
- ``cli``: the ``qvm-*`` tools (``qvm-ls``, ``qvm-prefs``, ``qvm-firewall``,
  ``qvm-features``), one process per call. Used otherwise, or when the minion
  option ``qubes_firewall_backend: cli`` asks for it.

Every function returns plain data (strings, bools, lists, dicts), the same for
both implementations, so the pure dom0 planner (``qubes_firewall_dom0``) never
sees which one ran.  Qubes' refusals (``... does not provide network``,
``Loops in network are unsupported``, a bad rule) become
:class:`CommandExecutionError` with Qubes' own message.

Firewall rules travel as Qubes' canonical rule lines (``qvm-firewall --raw VM
list``, ``Rule.rule``), e.g. ``action=accept proto=tcp dsthost=example.com
dstports=443-443``.

Loaded by Salt as ``qubes_firewall_qubes``.
"""

import subprocess

from salt.exceptions import CommandExecutionError

__virtualname__ = "qubes_firewall_qubes"

# One qvm-ls call reads all of these for every qube.
INVENTORY_FIELDS = ("name", "klass", "netvm", "provides_network", "ip", "state", "template", "kernel")
RUNNING_STATES = ("Running", "Paused", "Transient", "Suspended")
_TIMEOUT = 300


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------
# choosing the implementation
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


def backend():
    """
    The implementation in use: ``qubesadmin`` or ``cli``.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall_qubes.backend
    """
    wanted = (__opts__ or {}).get("qubes_firewall_backend", "auto")
    if wanted == "cli":
        return "cli"
    if _qubesadmin() is not None:
        return "qubesadmin"
    if wanted == "qubesadmin":
        raise CommandExecutionError("qubes_firewall_backend is qubesadmin, but it cannot be imported")
    return "cli"


def _impl():
    return _Admin(_qubesadmin()) if backend() == "qubesadmin" else _Cli()


def _entry(name, klass, netvm, provides, ip, state, template, kernel):
    return {
        "name": name,
        "klass": klass,
        "netvm": netvm or None,
        "provides_network": bool(provides),
        "ip": ip or None,
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
                raise CommandExecutionError("qvm-ls printed an unexpected line: %r" % line)
            row = dict(zip(INVENTORY_FIELDS, values))
            result[row["name"]] = _entry(
                row["name"], row["klass"], row["netvm"], row["provides_network"] == "True",
                row["ip"], row["state"], row["template"], row["kernel"],
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

    def features(self, vm):
        out = self.run(["qvm-features", vm]).stdout
        result = {}
        for line in out.splitlines():
            if not line.strip():
                continue
            parts = line.split(None, 1)
            result[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
        return result

    def get_firewall(self, vm):
        out = self.run(["qvm-firewall", "--raw", vm, "list"]).stdout
        return [line for line in out.splitlines() if line.strip()]

    def set_firewall(self, vm, lines):
        # The CLI has no "replace the list": delete from the end (each state a
        # prefix of the old list: never more open than before), reach the empty
        # list (everything blocked), then add in order (each state a prefix of
        # the new list: never more open than the goal). Fail-closed throughout.
        current = self.get_firewall(vm)
        for index in range(len(current) - 1, -1, -1):
            self.run(["qvm-firewall", vm, "del", "--rule-no", str(index)])
        for line in lines:
            self.run(["qvm-firewall", vm, "add"] + _cli_rule_args(line))


def _cli_rule_args(line):
    """A canonical rule line as qvm-firewall add arguments (comment kept whole)."""
    head, sep, comment = line.partition("comment=")
    args = head.split()
    if sep:
        args.append("comment=" + comment)
    return args


# --------------------------------------------------------------------------
# qubesadmin, in-process
# --------------------------------------------------------------------------


class _Admin:
    def __init__(self, qubesadmin):
        self.qa = qubesadmin
        self.app = qubesadmin.Qubes()

    def _vm(self, name):
        try:
            return self.app.domains[name]
        except KeyError as exc:
            raise CommandExecutionError("no such qube: %r" % name) from exc

    def _call(self, what, func, *args):
        try:
            return func(*args)
        except (self.qa.exc.QubesException, ValueError, KeyError) as exc:
            raise CommandExecutionError("%s: %s" % (what, exc)) from exc

    def inventory(self):
        def read():
            if hasattr(self.app, "cache_enabled"):
                # 4.2: one admin.vm.List (plus property GetAll) for all qubes
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
                result[name] = _entry(
                    name, klass, str(netvm) if netvm is not None else None,
                    bool(getattr(vm, "provides_network", False)), str(ip) if ip else None,
                    str(vm.get_power_state()), str(template) if template is not None else None,
                    str(kernel) if kernel else None,
                )
            return result

        try:
            return self._call("reading the qubes", read)
        finally:
            if hasattr(self.app, "cache_enabled"):
                self.app.cache_enabled = False

    def set_pref(self, vm, prop, value):
        obj = self._vm(vm)
        self._call("qvm-prefs %s %s %s" % (vm, prop, value), setattr, obj, prop, value)

    def reset_pref(self, vm, prop):
        obj = self._vm(vm)
        self._call("qvm-prefs -D %s %s" % (vm, prop), delattr, obj, prop)

    def features(self, vm):
        obj = self._vm(vm)
        return self._call("qvm-features %s" % vm, lambda: {str(k): str(v) for k, v in obj.features.items()})

    def get_firewall(self, vm):
        obj = self._vm(vm)

        def read():
            obj.firewall.load_rules()
            return [str(rule.rule) for rule in obj.firewall.rules]

        return self._call("qvm-firewall %s list" % vm, read)

    def set_firewall(self, vm, lines):
        obj = self._vm(vm)

        def write():
            # admin.vm.firewall.Set: one call replaces the whole list
            rules = [self.qa.firewall.Rule(line) for line in lines]
            obj.firewall.rules = rules

        self._call("setting the qvm-firewall rules of %s" % vm, write)


# --------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------


def inventory():
    """
    Every qube Qubes knows (dom0 included) in one call:
    ``{name: {name, klass, netvm, provides_network, ip, state, running,
    template, kernel, disposable}}``. ``netvm``, ``ip``, ``template`` and
    ``kernel`` are None when Qubes has none.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall_qubes.inventory
    """
    return _impl().inventory()


def set_pref(vm, prop, value):
    """
    Set a qube property (``netvm``: a name or None to disconnect;
    ``provides_network``: a bool). Qubes' refusal raises CommandExecutionError.
    """
    _impl().set_pref(vm, prop, value)
    return True


def reset_pref(vm, prop):
    """Reset a qube property to Qubes' default (``qvm-prefs -D VM PROP``)."""
    _impl().reset_pref(vm, prop)
    return True


def features(vm):
    """The qube's own features as ``{name: value}`` (services are ``service.NAME``)."""
    return _impl().features(vm)


def get_firewall(vm):
    """The qube's qvm-firewall list as canonical rule lines, in order."""
    return _impl().get_firewall(vm)


def set_firewall(vm, rules):
    """Replace the qube's whole qvm-firewall list with these canonical rule lines."""
    _impl().set_firewall(vm, list(rules))
    return True


def reconnect(netvm, test=False):
    """
    Re-attach the running clients of ``netvm`` (the seed's "Reconnecting qubes
    after a NetVM reboot": ``qvm-prefs CLIENT netvm NETVM``), network
    providers (sys-firewall) first. Returns the clients, in order. With
    ``test=True`` nothing is written.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall_qubes.reconnect sys-net
    """
    impl = _impl()
    inv = impl.inventory()
    if netvm not in inv:
        raise CommandExecutionError("no such qube: %r" % netvm)
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
        for name in names:
            impl.set_pref(name, "netvm", netvm)
    return names

