"""
The fleet tests: the formula's pure core importable (``_modules`` on
sys.path, as Salt's loader has it while it imports the formula); a module's
tests share renders through ``module_salt_factories``
(tests/saltfactories_support.py).
"""

import sys

from tests.modules import REPO

if str(REPO / "_modules") not in sys.path:
    sys.path.insert(0, str(REPO / "_modules"))
