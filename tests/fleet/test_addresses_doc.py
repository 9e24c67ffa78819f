"""docs/addresses.md shows the addresses pillar file that tests/fleet renders against a (fake) Qubes."""

import re

from tests.modules import REPO


def test_the_documented_addresses_file_is_the_tested_one():
    doc = (REPO / "docs" / "addresses.md").read_text()
    blocks = re.findall(r"```jinja\n(.*?)```", doc, re.S)
    assert blocks == [(REPO / "pillar.example" / "fleet" / "qubes_firewall_addresses.sls").read_text()]
