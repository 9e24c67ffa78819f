"""
The dom0 part through the real Salt loader, as qubesctl runs it in dom0:

    salt-call --local --id=dom0 --module-dirs=REPO --file-root=REPO/salt \
              --pillar-root=PILLARDIR state.apply qubes_firewall

with the fake qvm-* tools first on PATH (qubesadmin is not importable here, so
the CLI backend runs), through pytest-salt-factories' salt_call_cli (its
minion's config, caches and logs inside tmp_path). Also the
earlier pillar set-up of docs/addresses.md (a '*' top, an addresses file),
which keeps working: the addresses pillar resolved in dom0.
"""

import json
import os
import sys
from pathlib import Path

import fake_qubesadmin
import fakequbes
import pytest
import yaml
from conftest import full_pillar

from tests.saltfactories_support import formula_minion

SALT_CALL = Path(sys.executable).parent / "salt-call"
pytestmark = pytest.mark.skipif(not SALT_CALL.exists(), reason="salt-call is not installed beside python")

# the addresses pillar file of the earlier layout (docs/addresses.md; with lookup:qubes_release)
ADDRESSES_SLS = """\
{%- import_yaml 'qubes_firewall.sls' as topology %}
qubes_firewall:
  addresses: {{ salt['qubes_firewall.addresses'](topology.qubes_firewall.qubes.keys() | list) | yaml }}
  lookup:
    qubes_release: '{{ salt['qubes_firewall.qubes_release']() }}'
"""


@pytest.fixture(params=["cli", "qubesadmin"])
def env(tmp_path, request, salt_factories):
    bindir = fakequbes.install_tools(str(tmp_path / "bin"))
    state = fakequbes.write_world(tmp_path / "qubes.json", fakequbes.seed_world())
    release = tmp_path / "qubes-release"
    release.write_text("Qubes release 4.3.0 (R4.3)\n")
    pillar_dir = tmp_path / "pillar"
    pillar_dir.mkdir()
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - qubes_firewall\n    - qubes_firewall_addresses\n")
    (pillar_dir / "qubes_firewall_addresses.sls").write_text(ADDRESSES_SLS)
    pillar = full_pillar()
    pillar["lookup"] = {"rw_config": str(tmp_path / "rw"),
                        "policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy")}
    pillar["qubes"]["work"]["firewall"] = [
        {"action": "accept", "proto": "tcp", "dsthost": "10.137.0.10", "dstports": 22},
        {"action": "accept", "specialtarget": "dns"},
        {"action": "drop"},
    ]
    (pillar_dir / "qubes_firewall.sls").write_text(yaml.safe_dump({"qubes_firewall": pillar}))
    environ = dict(os.environ)
    environ.update({"PATH": "%s:%s" % (bindir, environ.get("PATH", "")), "PYTHONWARNINGS": "ignore",
                    fakequbes.STATE_ENV: str(state), fakequbes.LOG_ENV: str(tmp_path / "calls.log")})
    environ.pop("PYTHONPATH", None)
    if request.param == "qubesadmin":  # the fake qubesadmin package, importable by salt-call
        environ["PYTHONPATH"] = fake_qubesadmin.write_package(tmp_path / "pylib")
    return {"factories": salt_factories, "opts": {"qubes_firewall_release_file": str(release)},
            "pillar": pillar_dir, "env": environ, "state": state,
            "log": tmp_path / "calls.log", "backend": request.param, "tmp": tmp_path,
            "policy": Path(pillar["lookup"]["policy_file"])}


def calls(env):
    log = env["log"]
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def write_calls(env):
    return [c for c in calls(env)
            if (c[0] == "qubesd" and c[1] in fake_qubesadmin.WRITES)
            or (c[0] == "qvm-prefs" and ("-D" in c or len(c) >= 4))
            or (c[0] == "qvm-firewall" and any(a in ("add", "del", "reset") for a in c))]


def salt_call(env, minion_id, *args):
    minion = formula_minion(env["factories"], minion_id, env["pillar"], **env["opts"])
    ret = minion.salt_call_cli(environ=env["env"], timeout=300).run("--local", "--retcode-passthrough", *args)
    if ret.data is None:
        pytest.fail("salt-call printed no result (rc %d):\n%s\n%s" % (ret.returncode, ret.stdout, ret.stderr))
    return ret.returncode, ret.data, ret


def apply(env, test=False):
    rc, out, proc = salt_call(env, "dom0", "state.apply", "qubes_firewall", *(["test=True"] if test else []))
    assert isinstance(out, dict), (out, proc.stderr)
    return rc, {v["__id__"]: v for v in out.values()}


def mine(states):
    return {k: v for k, v in states.items() if k.startswith("qubes_firewall-dom0-")}


def test_dom0_apply_test_mode_then_twice(env):
    before = env["state"].read_bytes()

    rc, dry = apply(env, test=True)
    assert env["state"].read_bytes() == before
    dry = mine(dry)
    assert sorted(dry) == ["qubes_firewall-dom0-firewall", "qubes_firewall-dom0-prefs",
                           "qubes_firewall-dom0-topology"]
    assert write_calls(env) == []
    assert dry["qubes_firewall-dom0-topology"]["result"] is True
    assert dry["qubes_firewall-dom0-prefs"]["result"] is None and dry["qubes_firewall-dom0-prefs"]["changes"]
    assert dry["qubes_firewall-dom0-firewall"]["result"] is None
    # state order: topology, then qvm-firewall, then prefs
    order = sorted(dry.values(), key=lambda s: s["__run_num__"])
    assert [s["__id__"] for s in order] == ["qubes_firewall-dom0-topology", "qubes_firewall-dom0-firewall",
                                            "qubes_firewall-dom0-prefs"]

    rc, first = apply(env)
    first = mine(first)
    for sid in ("qubes_firewall-dom0-firewall", "qubes_firewall-dom0-prefs"):
        assert first[sid]["result"] is True and first[sid]["changes"] == dry[sid]["changes"], first[sid]
    world = fakequbes.World(str(env["state"]))
    assert world.get("work", "netvm") == "sys-firewall-2"
    assert world.firewall("work") == ["action=accept proto=tcp dst4=10.137.0.10/32 dstports=22-22",
                                      "action=accept specialtarget=dns", "action=drop"]

    after_first = env["state"].read_bytes()
    env["log"].unlink()
    rc, second = apply(env)
    for sid, state in mine(second).items():
        assert state["result"] is True and state["changes"] == {}, (sid, state)
    assert env["state"].read_bytes() == after_first
    # the inventory is read once by all the dom0 states together, and once
    # when the pillar's addresses file is rendered (its own loader)
    if env["backend"] == "cli":
        assert len([c for c in calls(env) if c[0] == "qvm-ls"]) == 2
    else:
        assert [c for c in calls(env) if c[0] != "qubesd"] == []  # no qvm-* tool
        assert len([c for c in calls(env) if c[1] == "admin.vm.List"]) == 2


def test_dom0_topology_error_stops_every_change(env):
    data = json.loads(env["state"].read_text())
    data["qubes"]["sys-firewall"]["kernel"] = "mirage-firewall"
    fakequbes.write_world(env["state"], data)
    before = env["state"].read_bytes()
    rc, states = apply(env)
    states = mine(states)
    assert rc != 0
    assert states["qubes_firewall-dom0-topology"]["result"] is False
    assert "qubes_firewall:port_forwards:0: port forward 'https' goes through sys-firewall" in \
        states["qubes_firewall-dom0-topology"]["comment"]
    for sid in ("qubes_firewall-dom0-firewall", "qubes_firewall-dom0-prefs"):
        assert states[sid]["result"] is False and states[sid]["changes"] == {}
    assert env["state"].read_bytes() == before


def test_a_pillar_the_qubes_cannot_carry_writes_nothing_anywhere(env):
    # web (client of sys-firewall) to build (behind sys-firewall-2 and the VPN
    # qube), and a ConnectTCP grant for a qube that does not exist
    pillar_file = env["pillar"] / "qubes_firewall.sls"
    data = yaml.safe_load(pillar_file.read_text())
    data["qubes_firewall"]["connections"].append({"from": "web", "to": "build", "proto": "tcp", "ports": [80]})
    data["qubes_firewall"]["connect_tcp"] = [{"client": "work", "server": "ghost-service", "port": 444}]
    pillar_file.write_text(yaml.safe_dump(data))
    env["policy"].parent.mkdir()
    env["policy"].write_text("# mine\nqubes.ConnectTCP +22 work build allow\n")
    world, policy = env["state"].read_bytes(), env["policy"].read_bytes()
    rc, states = apply(env)
    assert rc != 0
    top = states["qubes_firewall-dom0-topology"]
    assert top["result"] is False
    assert "qubes_firewall:connect_tcp:0:server: ghost-service does not exist in this Qubes" in top["comment"]
    assert "qubes_firewall:connections:1: build is not attached directly to sys-firewall" in top["comment"]
    assert "qvm-ls" not in top["comment"]
    assert states["qubes_firewall-connect-tcp-policy"]["result"] is False
    assert states["qubes_firewall-connect-tcp-policy"]["changes"] == {}
    assert env["state"].read_bytes() == world and env["policy"].read_bytes() == policy
    assert write_calls(env) == []


@pytest.mark.parametrize("minion_id", ["work", "sys-firewall-2"])
def test_pillar_rendered_in_dom0_carries_addresses_from_qubes(env, minion_id):
    rc, out, proc = salt_call(env, minion_id, "pillar.get", "qubes_firewall:lookup:qubes_release")
    assert rc == 0, proc.stderr
    assert out in ("4.3", "**********")  # the release dom0 detected, next to the addresses
    rc, out, proc = salt_call(env, minion_id, "pillar.get", "qubes_firewall:addresses")
    assert rc == 0, proc.stderr
    expected = {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "sys-vpn": "10.137.0.7",
                "sys-firewall-2": "10.137.0.8", "work": "10.137.0.9", "build": "10.137.0.10",
                "web": "10.137.0.11"}
    assert sorted(out) == sorted(expected)
    if not any(v == "**********" for v in out.values()):  # Salt 3008 masks pillar values in its output
        assert out == expected
    # only the pillar's qubes: other qubes' names and addresses stay in dom0
    assert "personal" not in out and "default-dvm" not in out


def test_addresses_execution_function(env):
    rc, out, proc = salt_call(env, "dom0", "qubes_firewall.addresses")
    assert rc == 0, proc.stderr
    assert out["work"] == "10.137.0.9" and "personal" not in out
    rc, out, proc = salt_call(env, "dom0", "qubes_firewall.addresses", "personal,work")
    assert out == {"personal": "10.137.0.12", "work": "10.137.0.9"}
    rc, out, proc = salt_call(env, "dom0", "qubes_firewall.addresses", "family=6")
    assert rc == 0 and out == {}, proc.stderr  # no qube has the ipv6 feature in this world


def test_dom0_clean_removes_the_policy_block_only(env):
    pillar_file = env["pillar"] / "qubes_firewall.sls"
    data = yaml.safe_load(pillar_file.read_text())
    data["qubes_firewall"]["connect_tcp"] = [{"client": "work", "server": "build", "port": 22}]
    pillar_file.write_text(yaml.safe_dump(data))
    env["policy"].parent.mkdir()
    env["policy"].write_text("# mine\n")
    rc, states = apply(env)
    assert rc == 0 and "qubes.ConnectTCP +22 work" in env["policy"].read_text()
    world = env["state"].read_bytes()
    env["log"].unlink()

    def clean(test=False):
        rc, out, proc = salt_call(env, "dom0", "state.apply", "qubes_firewall.clean",
                                  *(["test=True"] if test else []))
        assert isinstance(out, dict), (out, proc.stderr)
        return rc, {v["__id__"]: v for v in out.values()}

    rc, dry = clean(test=True)
    assert dry["qubes_firewall-policy-absent"]["result"] is None
    assert "qubes.ConnectTCP +22 work" in env["policy"].read_text()
    rc, first = clean()
    state = first["qubes_firewall-policy-absent"]
    assert rc == 0 and state["result"] is True and state["changes"]
    assert "qvm-prefs (netvm, provides_network) and qvm-firewall lists are left as they are" in state["comment"]
    assert env["policy"].read_text() == "# mine\n"
    rc, second = clean()
    assert second["qubes_firewall-policy-absent"]["changes"] == {}
    assert env["state"].read_bytes() == world and write_calls(env) == []
