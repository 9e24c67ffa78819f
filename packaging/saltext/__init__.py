"""
saltext.qubes_firewall: the formula's Salt extension modules as an installed
package (``pip install .``).  The wheel maps the repository's flat files into
this package (pyproject.toml, [tool.setuptools.package-dir]): ``_modules/*.py``
into ``modules/``, ``_states/*.py`` into ``states/``; nothing is copied in git.
Salt finds them through the ``salt.loader`` entry point below, so
``salt-call --local qubes_firewall.show_plan`` works without ``--module-dirs``.
In dom0 and through qubesctl the formula is delivered by the RPM instead
(flat files synced from the state tree).
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_loader_dirs():
    """The ``salt.loader`` entry point: Salt's loader type -> the directories it loads from."""
    return {"modules": [os.path.join(HERE, "modules")], "states": [os.path.join(HERE, "states")]}
