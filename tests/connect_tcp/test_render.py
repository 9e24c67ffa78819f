"""Rendering: policy lines, systemd units, rc.local block, one-off commands (golden files)."""

import os

import pytest

from .conftest import GOLDEN, core, example_pillar

model_mod = core("model")
ct = core("connect_tcp")


def parse(entries):
    names = {e[k] for e in entries for k in ("client", "server") if not e[k].startswith("@")}
    return model_mod.parse({"connect_tcp": entries, "qubes": {n: {"netvm": "none"} for n in sorted(names)}})


def check_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("QF_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), "golden file %s differs (QF_UPDATE_GOLDEN=1 rewrites it)" % name


def test_seed_policy_matches_golden():
    model = model_mod.parse(example_pillar())
    check_golden("seed.policy", ct.policy_body(model.connect_tcp))


def test_seed_units_match_golden():
    model = model_mod.parse(example_pillar())
    units = ct.units(model.connect_tcp, "untrusted")
    assert sorted(units) == ["qf-connect-tcp-444-untrusted.socket", "qf-connect-tcp-444-untrusted@.service"]
    for name, text in units.items():
        check_golden(name, text)


def test_seed_rc_local_block_matches_golden():
    model = model_mod.parse(example_pillar())
    check_golden("rc.local.block", ct.rc_local_body(model.connect_tcp, "untrusted", "/rw/config"))


def test_seed_one_off_commands_match_golden():
    model = model_mod.parse(example_pillar())
    lines = ["%s %s: %s" % c for c in ct.commands(model.connect_tcp)]
    check_golden("commands.txt", "\n".join(lines) + "\n")


def test_seed_variant_1_simple_binding_calls_default():
    (entry,) = parse([{"client": "untrusted", "server": "mytcp-service", "port": 444}]).connect_tcp
    assert ct.policy_line(entry) == "qubes.ConnectTCP +444 untrusted @default allow target=mytcp-service"
    assert ct.command(entry) == "qvm-connect-tcp ::444"


def test_seed_variant_2_named_server_other_local_port():
    (entry,) = parse([{"client": "untrusted", "server": "mytcp-service", "port": 444,
                       "local_port": 10444, "call": "named"}]).connect_tcp
    assert ct.policy_line(entry) == "qubes.ConnectTCP +444 untrusted mytcp-service allow"
    assert ct.command(entry) == "qvm-connect-tcp 10444:mytcp-service:444"


def test_seed_variant_3_one_port_to_another_server():
    model = parse([{"client": "untrusted", "server": "mytcp-service", "port": 444},
                   {"client": "untrusted", "server": "mytcp-service-bis", "port": 445}])
    assert ct.policy_body(model.connect_tcp).splitlines()[1::2] == [
        "qubes.ConnectTCP +444 untrusted @default allow target=mytcp-service",
        "qubes.ConnectTCP +445 untrusted @default allow target=mytcp-service-bis",
    ]


def test_default_call_with_other_local_port_command():
    (entry,) = parse([{"client": "work", "server": "db", "port": 5432, "local_port": 15432}]).connect_tcp
    assert ct.command(entry) == "qvm-connect-tcp 15432::5432"


@pytest.mark.parametrize("call, exec_start", [
    ("default", "ExecStart=qrexec-client-vm '' qubes.ConnectTCP+444"),
    ("named", "ExecStart=qrexec-client-vm mytcp-service qubes.ConnectTCP+444"),
])
def test_seed_variant_4_permanent_binding_units(call, exec_start):
    model = parse([{"client": "untrusted", "server": "mytcp-service", "port": 444,
                    "local_port": 10444, "persistent": True, "call": call}])
    units = ct.units(model.connect_tcp, "untrusted")
    socket = units["qf-connect-tcp-10444-untrusted.socket"].splitlines()
    service = units["qf-connect-tcp-10444-untrusted@.service"].splitlines()
    assert "ListenStream=127.0.0.1:10444" in socket
    assert "Accept=true" in socket
    assert "WantedBy=sockets.target" in socket
    assert exec_start in service
    assert "StandardInput=socket" in service
    assert "StandardOutput=inherit" in service


def test_units_only_for_the_qubes_own_persistent_entries():
    model = parse([
        {"client": "a", "server": "s", "port": 1, "persistent": True},
        {"client": "b", "server": "s", "port": 2, "persistent": True},
        {"client": "a", "server": "s", "port": 3},
    ])
    assert sorted(ct.units(model.connect_tcp, "a")) == [
        "qf-connect-tcp-1-a.socket", "qf-connect-tcp-1-a@.service"]
    assert ct.units(model.connect_tcp, "other") == {}
    assert ct.rc_local_body(model.connect_tcp, "other", "/rw/config") is None


def test_unit_file_names_round_trip_to_their_qube():
    model = parse([{"client": "my.qube-2_x", "server": "s", "port": 80, "local_port": 8080,
                    "persistent": True}])
    for name in ct.units(model.connect_tcp, "my.qube-2_x"):
        match = ct._UNIT_FILE.match(name)
        assert match and match.group(1) == "8080" and match.group(2) == "my.qube-2_x"


def test_rc_local_block_is_guarded_by_the_qube_name():
    model = parse([{"client": "untrusted", "server": "s", "port": 444, "persistent": True},
                   {"client": "untrusted", "server": "t", "port": 80, "local_port": 8080,
                    "persistent": True}])
    body = ct.rc_local_body(model.connect_tcp, "untrusted", "/rw/config")
    assert 'if [ "$(qubesdb-read /name 2>/dev/null)" = untrusted ]; then' in body
    assert "systemctl start qf-connect-tcp-444-untrusted.socket qf-connect-tcp-8080-untrusted.socket" in body
    assert body.count("systemctl daemon-reload") == 1


def test_wildcards_only_when_the_pillar_says_so_and_most_specific_first():
    model = parse([
        {"client": "@anyvm", "server": "cache", "port": 3128},
        {"client": "@tag:dev", "server": "git", "port": 22},
        {"client": "work", "server": "cache2", "port": 3128},
    ])
    lines = [line for line in ct.policy_body(model.connect_tcp).splitlines() if not line.startswith("#")]
    assert lines == [
        "qubes.ConnectTCP +3128 work @default allow target=cache2",
        "qubes.ConnectTCP +22 @tag:dev @default allow target=git",
        "qubes.ConnectTCP +3128 @anyvm @default allow target=cache",
    ]
    single = parse([{"client": "work", "server": "cache", "port": 3128}])
    assert "@anyvm" not in ct.policy_body(single.connect_tcp)
    assert " * " not in ct.policy_body(model.connect_tcp)


def test_entries_with_the_same_line_share_it():
    model = parse([
        {"client": "work", "server": "db", "port": 5432},
        {"client": "work", "server": "db", "port": 5432, "local_port": 15432, "persistent": True},
    ])
    body = ct.policy_body(model.connect_tcp)
    assert body.count("qubes.ConnectTCP +5432 work @default allow target=db\n") == 1
    assert "# connect_tcp:0:" in body and "# connect_tcp:1:" in body


def test_no_entries_no_block():
    assert ct.policy_body(()) is None


def test_public_connect_tcp_commands_lists_the_non_persistent_entries():
    from .conftest import Minion

    minion = Minion("dom0", example_pillar())
    commands = minion.qubes_firewall.connect_tcp_commands
    assert commands() == [
        {"origin": "connect_tcp:1", "client": "untrusted", "command": "qvm-connect-tcp 10444:mytcp-service:444"},
        {"origin": "connect_tcp:2", "client": "untrusted", "command": "qvm-connect-tcp ::445"},
    ]
    assert commands(qube="work") == []
