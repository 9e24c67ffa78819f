"""
The fleet tests: the formula's pure core importable (``_modules`` on
sys.path, as Salt's loader has it while it imports the formula), and a
pytest-salt-factories manager shared by a module's tests, for renders that
several tests read.
"""

import logging
import pathlib
import sys
import types

import pytest
from saltfactories.manager import FactoriesManager

from tests.modules import REPO

if str(REPO / "_modules") not in sys.path:
    sys.path.insert(0, str(REPO / "_modules"))


@pytest.fixture(scope="module")
def module_salt_factories(tmp_path_factory):
    """Like tests.saltfactories_support's ``salt_factories``, rooted in a directory of the module."""
    root = tmp_path_factory.mktemp("salt-factories")
    logger = logging.getLogger("saltfactories.manager")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return FactoriesManager(root_dir=root, log_server_port=None, log_server_level=None, log_server_host=None,
                                event_listener=types.SimpleNamespace(host="127.0.0.1", port=None),
                                scripts_dir=pathlib.Path(sys.executable).parent)
    finally:
        logger.setLevel(level)
