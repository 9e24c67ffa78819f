"""
scripts/demo.sh on a pillar of the user's (tests/e2e/demo.py): problems are
messages with exit status 2, never tracebacks; a custom pillar without
addresses gets them filled in, and every flow it implies is probed against
what qubes_firewall.check expects.
"""

import pytest

from tests.e2e import demo

CUSTOM = """\
qubes_firewall:
  qubes:
    sys-net: {netvm: none, provides_network: true}
    sys-firewall: {netvm: sys-net, provides_network: true}
    game: {netvm: sys-firewall}
    work: {netvm: sys-firewall}
  connections:
    - {from: work, to: game}
  port_forwards:
    - {name: game, qube: game, proto: udp, port: 27015, external_port: 7777, interfaces: [eth5]}
"""


@pytest.mark.parametrize("text, message", [
    ("qubes_firewall:\n  qubes:\n    web: {netvm: sys-nett}\n",
     "demo: invalid pillar:\n  qubes_firewall:qubes:web:netvm: unknown qube 'sys-nett'"),
    ("qubes_firewall:\n  addresses: {web: 10.137.0.300}\n  qubes:\n    web: {netvm: none}\n",
     "qubes_firewall:addresses:web"),
    ("qubes_firewall:\n  qubes: [\n", "is not valid YAML (line 3, column 1)"),
    ("qubes-firewall:\n  qubes: {}\n", "has no qubes_firewall key (top-level keys: qubes-firewall)"),
    ("{% set x = 1 %}\nqubes_firewall: {}\n", "uses Jinja; the demo reads plain YAML"),
])
def test_bad_input_is_a_message_and_exit_2(tmp_path, capsys, text, message):
    path = tmp_path / "my.sls"
    path.write_text(text)
    assert demo.main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert message in err, err
    assert "Traceback" not in out + err


def test_missing_file(tmp_path, capsys):
    assert demo.main([str(tmp_path / "nope.sls")]) == 2
    assert "demo: cannot read %s: No such file or directory" % (tmp_path / "nope.sls") in capsys.readouterr().err


def test_addresses_are_filled_in_after_the_given_ones():
    raw = {"addresses": {"sys-net": "10.137.0.2"}, "qubes": {"sys-net": {}, "a": {}, "b": {}}}
    filled, new = demo.fill_addresses(raw)
    assert new == {"a": "10.137.0.3", "b": "10.137.0.4"}
    assert filled["addresses"] == {"sys-net": "10.137.0.2", "a": "10.137.0.3", "b": "10.137.0.4"}


def test_a_custom_pillar_without_addresses_is_probed(tmp_path, capsys):
    path = tmp_path / "my.sls"
    path.write_text(CUSTOM)
    rc = demo.main([str(path)])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "filled in as Qubes would hand them out" in out
    # udp forward: on its interface to game's port, not on another interface; work -> game on the sample port
    assert "forward game from lan on eth5" in out and "game:27015" in out
    assert "forward game from other on ens7" in out
    assert "work -> game" in out and "RESULT: all as expected" in out
