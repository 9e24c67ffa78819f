"""
A test double of the ``qubesadmin`` object API (core-admin-client 4.2), over
the same world as the fake qvm-* tools (``fakequbes.World``).

``install(monkeypatch)`` puts ``qubesadmin``, ``qubesadmin.exc`` and
``qubesadmin.firewall`` into ``sys.modules``. What the formula uses behaves
as in Qubes: ``Qubes().domains`` (iterate, ``[name]`` -> KeyError), VM
properties read as VM objects / bools / strings, ``vm.netvm = name|VM|None``
with Qubes' refusals as ``QubesException``s, ``del vm.netvm`` resets to the
default, ``vm.property_is_default``, ``vm.get_power_state()``,
``vm.features`` (a mapping), ``vm.firewall.rules`` (Rule objects; assigning a
list saves the whole list, like ``admin.vm.firewall.Set``).

``calls`` counts Qubes() instances and Admin API-like calls per kind.
"""

import sys
import types

import fakequbes

calls = {"Qubes": 0, "firewall.Set": 0, "property.Set": 0, "property.Reset": 0}


class _Features:
    def __init__(self, world_path, name):
        self._path, self._name = world_path, name

    def _feats(self):
        return fakequbes.World(self._path).features(self._name)

    def __getitem__(self, key):
        return self._feats()[key]

    def get(self, key, default=None):
        return self._feats().get(key, default)

    def items(self):
        return list(self._feats().items())

    def keys(self):
        return list(self._feats())

    def __iter__(self):
        return iter(list(self._feats()))

    def __setitem__(self, key, value):
        fakequbes.World(self._path).set_feature(self._name, key, str(value))

    def __delitem__(self, key):
        fakequbes.World(self._path).del_feature(self._name, key)


class _Firewall:
    def __init__(self, vm):
        self.vm = vm
        self._rules = []
        self._loaded = False

    def load_rules(self):
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
        calls["firewall.Set"] += 1
        for rule in rules:
            if not isinstance(rule, fakequbes.Rule):
                raise TypeError("rules must be Rule objects")
        fakequbes.World(self.vm._path).set_firewall(self.vm.name, [r.rule for r in rules])


class _VM:
    def __init__(self, app, name):
        object.__setattr__(self, "_app", app)
        object.__setattr__(self, "_path", app._path)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "features", _Features(app._path, name))
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

    def __getattr__(self, prop):
        if prop.startswith("_"):
            raise AttributeError(prop)
        world = self._world()
        if prop not in world.property_list(self.name):
            raise fakequbes.QubesNoSuchPropertyError("Invalid property name: {!r}".format(prop))
        value = world.get(self.name, prop)
        if prop in ("netvm", "template") and value is not None:
            return _VM(self._app, value)
        return value

    def __setattr__(self, prop, value):
        if isinstance(value, _VM):
            value = value.name
        elif isinstance(value, bool):
            value = "True" if value else "False"
        calls["property.Set"] += 1
        self._world().set(self.name, prop, value)

    def __delattr__(self, prop):
        calls["property.Reset"] += 1
        self._world().reset(self.name, prop)

    def property_is_default(self, prop):
        return self._world().is_default(self.name, prop)

    def property_list(self):
        return list(self._world().property_list(self.name))

    def get_power_state(self):
        return self._world().state(self.name)

    def is_running(self):
        return self._world().running(self.name)


class _Domains:
    def __init__(self, app):
        self._app = app

    def __iter__(self):
        return iter([_VM(self._app, n) for n in fakequbes.World(self._app._path).names()])

    def __getitem__(self, name):
        name = str(name)
        if not fakequbes.World(self._app._path).exists(name):
            raise KeyError(name)
        return _VM(self._app, name)

    def __contains__(self, name):
        return fakequbes.World(self._app._path).exists(str(name))


class Qubes:
    def __init__(self):
        import os

        calls["Qubes"] += 1
        self._path = os.environ[fakequbes.STATE_ENV]
        self.domains = _Domains(self)
        self.cache_enabled = False


def install(monkeypatch):
    """Make ``import qubesadmin`` find this double (undone by monkeypatch)."""
    for key in calls:
        calls[key] = 0
    pkg = types.ModuleType("qubesadmin")
    exc = types.ModuleType("qubesadmin.exc")
    firewall = types.ModuleType("qubesadmin.firewall")
    for name in ("QubesException", "QubesValueError", "QubesVMNotStartedError",
                 "QubesVMNotFoundError", "QubesNoSuchPropertyError"):
        setattr(exc, name, getattr(fakequbes, name))
    firewall.Rule = fakequbes.Rule
    pkg.Qubes = Qubes
    pkg.exc = exc
    pkg.firewall = firewall
    monkeypatch.setitem(sys.modules, "qubesadmin", pkg)
    monkeypatch.setitem(sys.modules, "qubesadmin.exc", exc)
    monkeypatch.setitem(sys.modules, "qubesadmin.firewall", firewall)
    return pkg
