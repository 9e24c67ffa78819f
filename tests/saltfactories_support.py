"""
pytest-salt-factories for this formula: a minion configured for ``salt-call
--local`` (the formula's modules, its state tree, a pillar tree of the test)
whose every directory lives in the test's tmp_path, its ``salt_call_cli``, and
the in-process loaders (``saltfactories.utils.functional.Loaders``) over the
same configuration.

Registered for every test by tests/conftest.py (pytest_plugins); in a test::

    def test_x(salt_factories, tmp_path):
        minion = formula_minion(salt_factories, "sys-net", pillar_dir)
        ret = minion.salt_call_cli().run("--local", "qubes_firewall.show_plan")
        loaders = Loaders(minion.config.copy())

Why our own ``salt_factories`` fixture: pyproject's addopts disable the
toolkit's event-listener and log-server plugins (they start a ZeroMQ server
per test session that only daemon tests need), and the toolkit's own fixture
requires both.  Nothing here starts a daemon: ``salt-call --local`` and the
loaders need neither, so the manager gets a placeholder listener address and
the minions' log forwarding is switched off (``pytest-minion: log: disabled``).
Its CLI runs the real ``salt-call`` beside this Python (``scripts_dir``), not a
generated wrapper script: Salt reuses the pillar it compiled at start for
``state.apply`` only when its program is named salt-call, as qubesctl's is.
"""

import functools
import importlib.metadata
import logging
import pathlib
import sys
import types

import pytest
import salt._logging
import yaml
from saltfactories.manager import FactoriesManager

from tests.modules import REPO

ENTRY_POINT = "saltext.qubes_firewall"
SHIPPED = {"modules": "_modules", "states": "_states"}


def installed_loader_dirs():
    """{"modules": [dir], "states": [dir]} of the installed extension's salt.loader entry point, or None."""
    for entry_point in importlib.metadata.entry_points().select(group="salt.loader", name=ENTRY_POINT):
        return entry_point.load()()
    return None


@functools.lru_cache(maxsize=None)
def installed_formula_problem():
    """Why this Python's installed formula is not the checkout's (missing, stale), or None."""
    dirs = installed_loader_dirs()
    if dirs is None:
        return "the formula is not installed in %s (scripts/bootstrap.sh installs it)" % sys.executable
    differ = []
    for kind, source in SHIPPED.items():
        (installed,) = (pathlib.Path(d) for d in dirs[kind])
        want = {p.name: p.read_bytes() for p in (REPO / source).glob("*.py")}
        have = {p.name: p.read_bytes() for p in installed.glob("*.py")}
        differ += ["%s/%s" % (source, name) for name in sorted(set(want) | set(have)) if want.get(name) != have.get(name)]
    if differ:
        return ("the formula installed in %s differs from the checkout in %s: run scripts/bootstrap.sh "
                "(it reinstalls it)" % (sys.executable, ", ".join(differ)))
    return None


def factories_manager(root):
    """
    The factories manager rooted in ``root`` (configs, caches, logs, scripts),
    for the formula as installed in this Python (fails the test when the
    installed formula is not the checkout's).
    """
    problem = installed_formula_problem()
    if problem:
        pytest.fail(problem)
    # Salt buffers log records in a deferred stderr handler until it configures
    # logging, and flushes them at exit, when pytest has closed stderr: hand
    # them to pytest's log capture instead (shown with a failing test).
    salt._logging.shutdown_temp_handler()
    # the manager logs its own repr as a warning when created: not a warning here
    logger = logging.getLogger("saltfactories.manager")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return FactoriesManager(root_dir=root, log_server_port=None, log_server_level=None, log_server_host=None,
                                event_listener=types.SimpleNamespace(host="127.0.0.1", port=None),
                                scripts_dir=pathlib.Path(sys.executable).parent)
    finally:
        logger.setLevel(level)


@pytest.fixture
def salt_factories(tmp_path):
    """The factories manager, rooted in this test's tmp_path."""
    root = tmp_path / "salt-factories"
    root.mkdir()
    return factories_manager(root)


@pytest.fixture(scope="module")
def module_salt_factories(tmp_path_factory):
    """The same, shared by a module's tests (for what several tests read, made once)."""
    return factories_manager(tmp_path_factory.mktemp("salt-factories"))


def write_pillar_tree(pillar_dir, pillar, name="qubes_firewall"):
    """``pillar_dir`` with a top file and one SLS: ``pillar`` as a dict (the whole pillar) or SLS text."""
    pillar_dir.mkdir(parents=True, exist_ok=True)
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - %s\n" % name)
    text = pillar if isinstance(pillar, str) else yaml.safe_dump(pillar, sort_keys=False)
    (pillar_dir / ("%s.sls" % name)).write_text(text)
    return pillar_dir


def formula_minion(salt_factories, minion_id, pillar_dir, **opts):
    """
    A minion (not started) for ``salt-call --local``: the formula's modules
    and states (the installed extension, no module_dirs), its SLS tree,
    ``pillar_dir`` as the pillar root, backups in its root dir; ``opts`` are
    more minion options.
    """
    root = salt_factories.root_dir / minion_id
    overrides = {
        "file_client": "local",
        "file_roots": {"base": [str(REPO / "salt")]},
        "pillar_roots": {"base": [str(pillar_dir)]},
        "qubes_firewall_backup_dir": str(root / "backups"),
        "qubes_firewall_state_dir": str(root / "state"),
        "log_level_logfile": "warning",
        "pillar_mask_output": False,
        "pytest-minion": {"log": {"disabled": True}},
    }
    overrides.update(opts)
    return salt_factories.salt_minion_daemon(minion_id, overrides=overrides)


def states_by_id(data):
    """``state.apply`` output (a dict keyed by state tag) -> {state id: result}."""
    assert isinstance(data, dict), data
    return {v["__id__"]: v for v in data.values()}
