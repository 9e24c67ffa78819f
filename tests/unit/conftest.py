"""Fixtures shared by the unit tests."""

import pytest

from tests import examples


@pytest.fixture
def pillar(tmp_path):
    data = examples.sls("full")
    # sys-firewall as a plain qube (a disposable's run leaves its /rw alone)
    data["qubes_firewall"]["qubes"]["sys-firewall"].pop("dispvm_template")
    data["qubes_firewall"]["lookup"] = {"rw_config": str(tmp_path / "rw"), "state_dir": str(tmp_path / "state"),
                                        "etc_qubes": str(tmp_path / "etc"), "systemd_dir": str(tmp_path / "systemd")}
    return data
