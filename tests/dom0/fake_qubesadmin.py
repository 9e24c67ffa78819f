"""
A test double of the ``qubesadmin`` object API (core-admin-client 4.2/4.3),
over the same world as the fake qvm-* tools (``fakequbes.World``).

``install(monkeypatch)`` puts ``qubesadmin``, ``qubesadmin.exc`` and
``qubesadmin.firewall`` into ``sys.modules``; ``write_package(dir)`` writes a
``qubesadmin`` package that does the same for another process (salt-call).

What the formula uses behaves as in Qubes, Admin API calls included (counted
in ``calls`` by method name, and logged to $QUBES_FAKE_LOG as ``["qubesd",
method, qube]``):

- ``Qubes().domains``: the qube list is one ``admin.vm.List`` per app,
  fetched on first use and kept (``clear_cache`` drops it); iterate,
  ``[name]`` (KeyError), ``in``; VM objects are kept per app;
- properties: ``admin.vm.property.Get`` per read; with ``app.cache_enabled``
  the first read of a qube fetches all of them in one
  ``admin.vm.property.GetAll`` and later reads come from that cache, which
  nothing refreshes (as without qubesadmin's events dispatcher); netvm and
  template read as VM objects; ``vm.netvm = name|VM|None`` with Qubes'
  refusals as ``QubesException``s (``admin.vm.property.Set``), ``del
  vm.netvm`` resets (``admin.vm.property.Reset``), ``property_is_default``;
- ``get_power_state()``: from the list when it was fetched with the cache
  enabled, else ``admin.vm.CurrentState``;
- ``vm.features``: ``keys()``/iteration is ``admin.vm.feature.List``,
  ``[key]``/``get`` one ``admin.vm.feature.Get``;
- ``vm.firewall``: ``load_rules`` is ``admin.vm.firewall.Get`` (expired rules
  left out, as qubesd does), assigning ``rules`` is one
  ``admin.vm.firewall.Set`` of the whole list.
"""

import json
import os
import sys
import types

import fakequbes

calls = {}
WRITES = ("admin.vm.property.Set", "admin.vm.property.Reset", "admin.vm.firewall.Set",
          "admin.vm.feature.Set", "admin.vm.feature.Remove")


def _call(method, dest):
    calls[method] = calls.get(method, 0) + 1
    log = os.environ.get(fakequbes.LOG_ENV)
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps(["qubesd", method, dest]) + "\n")


def reset_calls():
    calls.clear()


def writes():
    return sum(calls.get(m, 0) for m in WRITES)


class _Features:
    def __init__(self, vm):
        self._vm = vm

    def _feats(self):
        return fakequbes.World(self._vm._path).features(self._vm.name)

    def keys(self):
        _call("admin.vm.feature.List", self._vm.name)
        return list(self._feats())

    def __iter__(self):
        return iter(self.keys())

    def __getitem__(self, key):
        _call("admin.vm.feature.Get", self._vm.name)
        feats = self._feats()
        if key not in feats:
            raise fakequbes.QubesFeatureNotFoundError("Feature not set: %s" % key)
        return feats[key]

    def get(self, key, default=None):
        try:
            return self[key]
        except fakequbes.QubesFeatureNotFoundError:
            return default

    def items(self):
        return [(key, self[key]) for key in self.keys()]

    def __setitem__(self, key, value):
        _call("admin.vm.feature.Set", self._vm.name)
        fakequbes.World(self._vm._path).set_feature(self._vm.name, key, str(value))

    def __delitem__(self, key):
        _call("admin.vm.feature.Remove", self._vm.name)
        fakequbes.World(self._vm._path).del_feature(self._vm.name, key)


class _Firewall:
    def __init__(self, vm):
        self.vm = vm
        self._rules = []
        self._loaded = False

    def load_rules(self):
        _call("admin.vm.firewall.Get", self.vm.name)
        world = fakequbes.World(self.vm._path)
        self._rules = [fakequbes.Rule(line) for line in world.firewall(self.vm.name)]
        self._loaded = True

    @property
    def rules(self):
        if not self._loaded:
            self.load_rules()
        return self._rules

    @rules.setter
    def rules(self, value):
        self.save_rules(value)
        self._rules = value

    def save_rules(self, rules=None):
        if rules is None:
            rules = self._rules
        for rule in rules:
            if not isinstance(rule, fakequbes.Rule):
                raise TypeError("rules must be Rule objects")
        _call("admin.vm.firewall.Set", self.vm.name)
        # the payload is the rule lines; qubesd parses every line before it
        # changes anything
        fakequbes.World(self.vm._path).set_firewall(self.vm.name, [r.rule for r in rules])


class _VM:
    def __init__(self, app, name, klass=None, power_state=None):
        object.__setattr__(self, "_app", app)
        object.__setattr__(self, "_path", app._path)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_klass", klass)
        object.__setattr__(self, "_power_state", power_state)
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "features", _Features(self))
        object.__setattr__(self, "firewall", _Firewall(self))

    def _world(self):
        return fakequbes.World(self._path)

    def __str__(self):
        return self.name

    def __repr__(self):
        return "<VM %s>" % self.name

    def __eq__(self, other):
        if isinstance(other, _VM):
            return self.name == other.name
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self):
        return hash(self.name)

    def _value(self, prop, value):
        if prop in ("netvm", "template") and value is not None:
            return self._app.domains.get_blind(value)
        return value

    def _read(self, prop):
        """(is_default, value) as qubesadmin's PropertyHolder gets it."""
        world = self._world()
        if self._app.cache_enabled and not self._cache:
            _call("admin.vm.property.GetAll", self.name)
            for name in world.property_list(self.name):
                self._cache[name] = (world.is_default(self.name, name), world.get(self.name, name))
        if prop in self._cache:
            return self._cache[prop]
        _call("admin.vm.property.Get", self.name)
        if prop not in world.property_list(self.name):
            raise AttributeError(prop)
        pair = (world.is_default(self.name, prop), world.get(self.name, prop))
        if self._app.cache_enabled:
            self._cache[prop] = pair
        return pair

    @property
    def klass(self):
        if self._klass is not None:
            return self._klass
        return self._read("klass")[1]

    def __getattr__(self, prop):
        if prop.startswith("_"):
            raise AttributeError(prop)
        return self._value(prop, self._read(prop)[1])

    def __setattr__(self, prop, value):
        if isinstance(value, _VM):
            value = value.name
        elif isinstance(value, bool):
            value = "True" if value else "False"
        elif value is None:
            value = ""
        _call("admin.vm.property.Set", self.name)
        self._world().set(self.name, prop, value)

    def __delattr__(self, prop):
        _call("admin.vm.property.Reset", self.name)
        self._world().reset(self.name, prop)

    def property_is_default(self, prop):
        return self._read(prop)[0]

    def property_list(self):
        return list(self._world().property_list(self.name))

    def get_power_state(self):
        if self._power_state is not None:
            return self._power_state
        _call("admin.vm.CurrentState", self.name)
        state = self._world().state(self.name)
        if self._app.cache_enabled:
            object.__setattr__(self, "_power_state", state)
        return state

    def is_running(self):
        return self.get_power_state() in fakequbes.RUNNING


class _Domains:
    def __init__(self, app):
        self._app = app
        self._list = None
        self._objects = {}

    def clear_cache(self):
        self._list = None

    def refresh_cache(self, force=False):
        if self._list is not None and not force:
            return
        _call("admin.vm.List", "dom0")
        world = fakequbes.World(self._app._path)
        self._list = {}
        for name in world.names():
            entry = {"class": world.qube(name)["klass"]}
            if self._app.cache_enabled:
                entry["state"] = world.state(name)
            self._list[name] = entry

    def get_blind(self, name):
        if name not in self._objects:
            entry = (self._list or {}).get(name, {})
            self._objects[name] = _VM(self._app, name, entry.get("class"), entry.get("state"))
        return self._objects[name]

    def __iter__(self):
        self.refresh_cache()
        return iter([self[name] for name in sorted(self._list)])

    def __contains__(self, name):
        self.refresh_cache()
        return str(name) in self._list

    def __getitem__(self, name):
        name = str(name)
        if name not in self:
            raise KeyError(name)
        return self.get_blind(name)

    def keys(self):
        self.refresh_cache()
        return list(self._list)


class Qubes:
    def __init__(self):
        calls["Qubes"] = calls.get("Qubes", 0) + 1
        self._path = os.environ[fakequbes.STATE_ENV]
        self.cache_enabled = False
        self.blind_mode = False
        self.domains = _Domains(self)


def modules():
    pkg = types.ModuleType("qubesadmin")
    exc = types.ModuleType("qubesadmin.exc")
    firewall = types.ModuleType("qubesadmin.firewall")
    for name in ("QubesException", "QubesValueError", "QubesVMNotStartedError",
                 "QubesVMNotFoundError", "QubesNoSuchPropertyError", "QubesFeatureNotFoundError"):
        setattr(exc, name, getattr(fakequbes, name))
    firewall.Rule = fakequbes.Rule
    pkg.Qubes = Qubes
    pkg.exc = exc
    pkg.firewall = firewall
    return pkg, exc, firewall


def install(monkeypatch):
    """Make ``import qubesadmin`` find this double (undone by monkeypatch)."""
    reset_calls()
    pkg, exc, firewall = modules()
    monkeypatch.setitem(sys.modules, "qubesadmin", pkg)
    monkeypatch.setitem(sys.modules, "qubesadmin.exc", exc)
    monkeypatch.setitem(sys.modules, "qubesadmin.firewall", firewall)
    return pkg


def write_package(directory):
    """
    A ``qubesadmin`` package in ``directory`` that is this double: put
    ``directory`` on PYTHONPATH of a salt-call to give it the qubesadmin backend.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.join(str(directory), "qubesadmin")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as handle:
        handle.write(
            "import sys\nsys.path.insert(0, %r)\nimport fake_qubesadmin as _f\n"
            "_pkg, exc, firewall = _f.modules()\nQubes = _f.Qubes\n"
            "sys.modules['qubesadmin.exc'] = exc\nsys.modules['qubesadmin.firewall'] = firewall\n" % here)
    return str(directory)
