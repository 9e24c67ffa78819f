"""
The formula's modules for unit tests: the core (``_modules/_qubes_firewall_*.py``)
imported as plain Python with ``_modules`` on ``sys.path``, as the execution
module and the states import it; the Salt-facing files loaded with Salt's
dunders set by hand.
"""

import importlib
import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
MODULES_DIR = str(REPO / "_modules")
if MODULES_DIR not in sys.path:
    sys.path.insert(0, MODULES_DIR)


def core(name):
    """The core file ``_modules/_qubes_firewall_<name>.py``, imported once as the formula imports it."""
    return importlib.import_module("_qubes_firewall_" + name)


def load_file(relpath, modname):
    """A fresh copy of the repository file ``relpath``, imported as ``modname``."""
    spec = importlib.util.spec_from_file_location(modname, str(REPO / relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def load(name, kind="_modules", **dunders):
    """Import the Salt-facing ``<kind>/<name>.py`` under a private name and set Salt dunders on it."""
    module = load_file("%s/%s.py" % (kind, name), "qf_test_%s_%s" % (kind.strip("_"), name))
    for key, value in dunders.items():
        setattr(module, "__%s__" % key, value)
    return module


model = core("model")
plan = core("plan")
nft = core("nft")
files = core("files")
