"""
The formula through the real Salt loader: salt-call --local state.apply
qubes_firewall, as dom0 and as the client qube, applied twice, through
pytest-salt-factories' salt_call_cli: its minion's config, caches and logs live
inside tmp_path, so /etc/salt and /var/cache/salt are never touched; a fake
systemctl stands in for the qube's systemd.
"""

import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.saltfactories_support import formula_minion

from .conftest import (
    FAKE_POLICY_LINT,
    FAKE_SYSTEMCTL,
    GOLDEN,
    REPO,
    example_pillar,
    pillar_in,
    systemctl_calls,
    write_tool,
)

SALT_CALL = Path(sys.executable).parent / "salt-call"
POLICY_ID = "qubes_firewall_|-qubes_firewall-connect-tcp-policy_|-qubes_firewall-connect-tcp-policy_|-connect_tcp_policy_managed"
BINDINGS_ID = ("qubes_firewall_|-qubes_firewall-connect-tcp-bindings_|-qubes_firewall-connect-tcp-bindings"
               "_|-connect_tcp_bindings_managed")

pytestmark = pytest.mark.skipif(not SALT_CALL.exists(), reason="salt-call is not installed beside python")


@pytest.fixture
def salt_env(tmp_path, salt_factories):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_tool(bin_dir, "qubes-policy-lint", FAKE_POLICY_LINT)
    write_tool(bin_dir, "systemctl", FAKE_SYSTEMCTL)
    (tmp_path / "systemctl").mkdir()
    run_dir = tmp_path / "run-systemd-system"
    run_dir.mkdir()
    env = dict(os.environ)
    env.update({"PATH": "%s:%s" % (bin_dir, env["PATH"]), "PYTHONWARNINGS": "ignore",
                "FAKE_SYSTEMCTL_DIR": str(tmp_path / "systemctl")})
    return {"factories": salt_factories, "env": env, "run_dir": run_dir}


def write_pillar(tmp_path, data):
    pillar_dir = tmp_path / "pillar"
    pillar_dir.mkdir(exist_ok=True)
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - qubes_firewall\n")
    (pillar_dir / "qubes_firewall.sls").write_text(yaml.safe_dump({"qubes_firewall": data}))
    return pillar_dir




def apply(salt_env, tmp_path, minion_id, test=False):
    minion = formula_minion(salt_env["factories"], minion_id, tmp_path / "pillar",
                            qubes_firewall_systemd_run_dir=str(salt_env["run_dir"]))
    args = ["--local", "--retcode-passthrough", "state.apply", "qubes_firewall"] + (["test=True"] if test else [])
    ret = minion.salt_call_cli(environ=salt_env["env"], timeout=300).run(*args)
    states = ret.data
    if states is None:
        pytest.fail("salt-call gave no state output (rc %d):\n%s\n%s" % (ret.returncode, ret.stdout, ret.stderr))
    assert isinstance(states, dict), states
    return states


def fake_qubes(tmp_path, salt_env):
    """dom0's policy requires the preflight, which reads Qubes: the fake qvm-* tools."""
    sys.path.insert(0, str(REPO / "tests" / "dom0"))
    import fakequbes

    world = fakequbes.seed_world()
    for qid, name in enumerate(("untrusted", "mytcp-service", "mytcp-service-bis"), 40):
        world["qubes"][name] = fakequbes._qube("AppVM", qid)
    state = fakequbes.write_world(tmp_path / "qubes.json", world)
    bindir = fakequbes.install_tools(str(tmp_path / "qvm-bin"))
    salt_env["env"].update({"PATH": "%s:%s" % (bindir, salt_env["env"]["PATH"]),
                            fakequbes.STATE_ENV: str(state)})
    salt_env["env"].pop("PYTHONPATH", None)  # no qubesadmin: the qvm-* tools


def test_dom0_policy_through_salt_call_twice(tmp_path, salt_env):
    write_pillar(tmp_path, pillar_in(tmp_path))
    fake_qubes(tmp_path, salt_env)
    policy = tmp_path / "policy.d" / "30-user-networking.policy"

    dry = apply(salt_env, tmp_path, "dom0", test=True)[POLICY_ID]
    assert dry["result"] is None and str(policy) in dry["changes"], dry
    assert not policy.exists()

    first = apply(salt_env, tmp_path, "dom0")[POLICY_ID]
    assert first["result"] is True and first["changes"], first
    assert "qubes-policy-lint accepts" in first["comment"]
    assert (GOLDEN / "seed.policy").read_text() in policy.read_text()
    assert first["changes"][str(policy)] == dry["changes"][str(policy)]

    second = apply(salt_env, tmp_path, "dom0")[POLICY_ID]
    assert second["result"] is True and second["changes"] == {}, second


def test_client_bindings_through_salt_call_twice_then_removed(tmp_path, salt_env):
    write_pillar(tmp_path, pillar_in(tmp_path))
    rw = tmp_path / "rw"
    socket = "qf-connect-tcp-444-untrusted.socket"

    dry = apply(salt_env, tmp_path, "untrusted", test=True)[BINDINGS_ID]
    assert dry["result"] is None and dry["changes"], dry
    assert not rw.exists() and os.listdir(salt_env["run_dir"]) == []

    first = apply(salt_env, tmp_path, "untrusted")[BINDINGS_ID]
    assert first["result"] is True, first
    assert first["changes"] == dry["changes"]
    assert (rw / socket).read_text() == (GOLDEN / socket).read_text()
    assert "qubes_firewall:connect-tcp" in (rw / "rc.local").read_text()
    assert sorted(os.listdir(salt_env["run_dir"])) == [socket, "qf-connect-tcp-444-untrusted@.service"]
    assert systemctl_calls(tmp_path)[-2:] == ["daemon-reload", "start " + socket]

    second = apply(salt_env, tmp_path, "untrusted")[BINDINGS_ID]
    assert second["result"] is True and second["changes"] == {}, second

    write_pillar(tmp_path, pillar_in(tmp_path, []))
    removed = apply(salt_env, tmp_path, "untrusted")[BINDINGS_ID]
    assert removed["result"] is True and removed["changes"], removed
    # the units are gone; what stays is rc.local and the record of the last apply
    assert sorted(os.listdir(rw)) == ["qubes-firewall-formula", "rc.local"]
    assert os.listdir(rw / "qubes-firewall-formula") == ["applied-untrusted.json"]
    assert "qubes_firewall:connect-tcp" not in (rw / "rc.local").read_text()
    assert os.listdir(salt_env["run_dir"]) == []


def test_bad_pillar_stops_before_anything_changes(tmp_path, salt_env):
    entries = example_pillar()["connect_tcp"] + [{"client": "work", "server": "db", "port": 70000}]
    write_pillar(tmp_path, pillar_in(tmp_path, entries))
    states = apply(salt_env, tmp_path, "dom0")
    assert states[POLICY_ID]["result"] is False
    validated = [s for k, s in states.items() if "qubes_firewall-validated" in k][0]
    assert "qubes_firewall:connect_tcp:3:port" in validated["comment"]
    assert not (tmp_path / "policy.d").exists()
