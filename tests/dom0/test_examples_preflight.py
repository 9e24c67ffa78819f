"""
Every pillar.example file on a default Qubes 4.3 install (fakequbes.default_world):
the qubes its comments tell the user to create are created with the fake
``qvm-create`` exactly as written there; then dom0's preflight passes (both
backends), the dom0 run changes nothing but what the scenario needs, a second
run changes nothing, and the qubesctl targets the comments give cover every
qube that needs a run.
"""

import copy
import subprocess

import fakequbes
import pytest
from conftest import Dom0, FakeQubes

from tests import examples
from tests.modules import core

dom0_mod = core("dom0")

# What applying each example changes in a default install once its qubes are
# created: exactly the qvm-prefs the scenario needs, nothing on the qubes that
# already fit (a default-install qube keeps its default netvm, unpinned).
CHANGES = {
    "connect-tcp": [],
    "qube-to-qube": [],
    "port-forward": [],
    "vpn-sandwich": ["sys-firewall-2 provides_network True", "sys-vpn provides_network True",
                     "sys-firewall-2 netvm sys-vpn", "work netvm sys-firewall-2"],
    "default-43": ["sys-firewall-2 provides_network True", "sys-vpn provides_network True",
                   "sys-firewall-2 netvm sys-vpn", "work netvm sys-firewall-2"],
    "full": ["sys-firewall-2 provides_network True", "sys-vpn provides_network True",
             "sys-firewall-2 netvm sys-vpn", "build netvm sys-firewall-2", "work netvm sys-firewall-2"],
}
DEFAULT_QUBES = set(fakequbes.default_world()["qubes"])


def test_every_example_is_covered():
    assert set(examples.names()) == set(CHANGES)


def test_the_default_install():
    """What a default 4.3 install looks like to the formula: disposable sys-firewall on sys-net."""
    world = fakequbes.default_world()
    assert world["global"]["default_netvm"] == "sys-firewall"
    fw = world["qubes"]["sys-firewall"]
    assert (fw["klass"], fw["template"], fw["props"]["netvm"]) == ("DispVM", "default-dvm", "sys-net")
    assert world["qubes"]["default-dvm"]["template_for_dispvms"]


def create(qubes, name):
    """Run the dom0 commands of the example's comments (qvm-*) through the fake tools on PATH."""
    created = []
    for command in examples.dom0_commands(name):
        if command.startswith("sudo qubesctl "):
            continue
        assert command.startswith("qvm-create "), command
        out = subprocess.run(command, shell=True, capture_output=True, text=True)
        assert out.returncode == 0, (command, out.stderr)
        created.append(command.split()[-1])
    return created


def targets(name):
    """The qubes the example's qubesctl --skip-dom0 lines target."""
    out = set()
    for command in examples.dom0_commands(name):
        if "--skip-dom0" in command:
            (arg,) = [a for a in command.split() if a.startswith("--targets=")]
            out.update(arg[len("--targets="):].split(","))
    return out


def dom0_for(name, tmp_path):
    pillar = examples.raw(name)
    assert "addresses" not in pillar, "%s.sls: leave addresses to dom0" % name
    pillar = copy.deepcopy(pillar)
    pillar["lookup"] = {"policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy"),
                        "rw_config": str(tmp_path / "rw")}
    return Dom0(pillar)


def steps(result):
    """The qvm-prefs the prefs state ran, in order ("1. qvm-prefs QUBE PROP VALUE" lines of its comment)."""
    out = []
    for line in result["comment"].splitlines():
        head, _, command = line.partition(". qvm-prefs ")
        if head.isdigit():
            out.append(command)
    return out


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_example_on_a_default_install(name, tmp_path, monkeypatch, backend):
    qubes = FakeQubes(tmp_path, monkeypatch, data=fakequbes.default_world())
    created = create(qubes, name)
    assert not set(created) & DEFAULT_QUBES
    raw = examples.raw(name)
    listed = set(raw.get("qubes") or {})
    servers = {e["server"] for e in raw.get("connect_tcp") or []}
    # the example creates every qube it names that a default install lacks
    assert (listed | servers) - DEFAULT_QUBES == set(created)

    d = dom0_for(name, tmp_path)
    assert d.qubes_firewall.dom0_problems() == []
    first = d.run()
    assert first["topology"]["result"] is True, first["topology"]["comment"]
    assert all(first[k]["result"] is True for k in ("policy", "firewall", "prefs")), first
    assert steps(first["prefs"]) == CHANGES[name]
    assert first["firewall"]["changes"] == {}  # no example replaces a qvm-firewall list
    second = d.run()
    assert all(second[k]["changes"] == {} for k in ("topology", "policy", "firewall", "prefs")), second


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_the_targets_cover_every_qube_that_needs_a_run(name):
    """Every listed qube (its owned chains), the templates keeping boot replays, persistent ConnectTCP clients."""
    raw = examples.raw(name)
    model = core("model").parse(examples.example(name))
    needed = set(model.qubes)
    needed |= {q.dispvm_template for q in model.qubes.values() if q.dispvm_template}
    needed |= {q.template for q in model.qubes.values() if q.custom_persist}
    needed |= {e.client for e in model.connect_tcp if e.persistent}
    assert targets(name) == needed
    assert dom0_mod.boot_holders(model) <= needed
    assert "addresses" not in raw


def test_fake_qvm_create_as_qubes_does(tmp_path):
    """Next free qid, halted, default netvm; a named disposable gets a 10.138 address; refusals kept."""
    path = fakequbes.write_world(tmp_path / "qubes.json", fakequbes.default_world())
    assert fakequbes.run_command(path, "qvm-create --template debian-13-xfce --label orange build") == 0
    assert fakequbes.run_command(path, "qvm-create -C DispVM -t default-dvm -l green "
                                       "--property provides_network=True sys-fw-dvm") == 0
    world = fakequbes.World(str(path))
    build = world.qube("build")
    assert (build["qid"], build["klass"], build["state"], build["template"]) == (11, "AppVM", "Halted",
                                                                                 "debian-13-xfce")
    assert world.get("build", "netvm") == "sys-firewall" and world.is_default("build", "netvm")
    assert world.get("build", "ip") == "10.137.0.11"
    assert world.get("sys-fw-dvm", "ip").startswith("10.138.") and world.get("sys-fw-dvm", "provides_network")
    assert fakequbes.run_command(path, "qvm-create --template debian-13-xfce --label red build") == 1
    assert fakequbes.run_command(path, "qvm-create -C DispVM -t work -l red disp") == 1
    # vault provides no network: the property fails, the qube stays (as qvm-create does)
    assert fakequbes.run_command(path, "qvm-create -l red --property netvm=vault x") == 2
    assert fakequbes.World(str(path)).exists("x")
