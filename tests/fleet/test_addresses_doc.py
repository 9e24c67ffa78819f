"""
docs/addresses.md shows the addresses pillar file of a single machine: that
very text, beside a topology without addresses, renders in dom0 (against a
fake Qubes) to every qube's address and this dom0's release.
"""

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.dom0 import fakequbes
from tests.modules import REPO
from tests.saltfactories_support import formula_minion

SALT_CALL = Path(sys.executable).parent / "salt-call"


@pytest.mark.skipif(not SALT_CALL.exists(), reason="salt-call is not installed beside python")
def test_the_documented_addresses_file_renders_in_dom0(salt_factories, tmp_path):
    doc = (REPO / "docs" / "addresses.md").read_text()
    blocks = re.findall(r"```jinja\n(.*?)```", doc, re.S)
    tops = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if b.startswith("user:")]
    assert len(blocks) == 1 and len(tops) == 1, (blocks, tops)
    topology = yaml.safe_load((REPO / "pillar.example" / "full.sls").read_text())
    assert "addresses" not in topology["qubes_firewall"]  # the examples carry none: dom0 asks Qubes
    root = tmp_path / "user_pillar"
    root.mkdir()
    (root / "qubes_firewall.sls").write_text(yaml.safe_dump(topology))
    (root / "qubes_firewall_addresses.sls").write_text(blocks[0])
    (root / "top.sls").write_text(tops[0])
    bindir = fakequbes.install_tools(str(tmp_path / "bin"))
    seed = fakequbes.seed_world()
    seed["qubes"]["sys-firewall"]["features"]["ipv6"] = "1"  # IPv6 from sys-firewall down
    world = fakequbes.write_world(tmp_path / "qubes.json", seed)
    release = tmp_path / "qubes-release"
    release.write_text("Qubes release 4.2.4 (R4.2)\n")
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]), PYTHONWARNINGS="ignore",
               **{fakequbes.STATE_ENV: str(world), fakequbes.LOG_ENV: str(tmp_path / "calls.log")})
    env.pop("PYTHONPATH", None)
    minion = formula_minion(salt_factories, "dom0", root, pillar_roots={"user": [str(root)]},
                            qubes_firewall_release_file=str(release))
    ret = minion.salt_call_cli(environ=env, timeout=300).run("--local", "pillar.items")
    assert ret.returncode == 0 and "_errors" not in ret.data, ret
    pillar = ret.data["qubes_firewall"]
    assert pillar["addresses"] == {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "sys-vpn": "10.137.0.7",
                                   "sys-firewall-2": "10.137.0.8", "work": "10.137.0.9", "build": "10.137.0.10",
                                   "web": "10.137.0.11"}
    qubes = fakequbes.World(str(world))
    expected6 = {name: qubes.get(name, "ip6") for name in topology["qubes_firewall"]["qubes"]
                 if qubes.get(name, "ip6")}
    assert "sys-firewall" in expected6 and "sys-net" not in expected6  # the feature reaches down, not up
    assert pillar["addresses6"] == expected6
    assert pillar["lookup"] == {"qubes_release": "4.2"}
    assert pillar["qubes"] == topology["qubes_firewall"]["qubes"]
