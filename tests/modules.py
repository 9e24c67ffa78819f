"""Load the formula's flat Salt modules as plain Python modules for unit tests."""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def load(name, kind="_modules", **dunders):
    """Import ``<kind>/<name>.py`` under a private name and set Salt dunders on it."""
    path = REPO / kind / ("%s.py" % name)
    modname = "qf_test_%s_%s" % (kind.strip("_"), name)
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    for key, value in dunders.items():
        setattr(module, "__%s__" % key, value)
    return module


model = load("qubes_firewall_model")
plan = load("qubes_firewall_plan")
nft = load("qubes_firewall_nft")
files = load("qubes_firewall_files")
