"""Load the formula's flat Salt modules as plain Python modules for unit tests."""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_file(relpath, modname):
    """A fresh copy of the repository file ``relpath``, imported as ``modname``."""
    spec = importlib.util.spec_from_file_location(modname, str(REPO / relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def load(name, kind="_modules", **dunders):
    """Import ``<kind>/<name>.py`` under a private name and set Salt dunders on it."""
    module = load_file("%s/%s.py" % (kind, name), "qf_test_%s_%s" % (kind.strip("_"), name))
    for key, value in dunders.items():
        setattr(module, "__%s__" % key, value)
    return module


model = load("qubes_firewall_model")
plan = load("qubes_firewall_plan")
nft = load("qubes_firewall_nft")
files = load("qubes_firewall_files")


class LibView:
    """
    What ``__salt__["VIRTUAL.lib"]()`` gives under Salt's loader, for a test's
    ``__salt__`` dict wired by function name (``"VIRTUAL.FUNC": func``): each
    function is looked up in that dict when used, so a test can replace one.
    """

    def __init__(self, salt, virtual):
        self._salt, self._virtual = salt, virtual

    def __getattr__(self, name):
        try:
            return self._salt["%s.%s" % (self._virtual, name)]
        except KeyError:
            raise AttributeError("%s has no function %s" % (self._virtual, name)) from None


class SaltDict(dict):
    """A test's ``__salt__``: ``"VIRTUAL.FUNC": func`` entries, and ``VIRTUAL.lib`` answered from them."""

    def __getitem__(self, key):
        if key.endswith(".lib"):
            virtual = key[:-len(".lib")]
            return lambda: LibView(self, virtual)
        return dict.__getitem__(self, key)
