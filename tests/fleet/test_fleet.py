"""
One pillar tree for many machines (pillar.example/fleet, docs/fleet.md).

Rendered as dom0 renders it: two pillar roots with the same shared files and a
different machine file each (laptop, desk), the real addresses file asking a
fake Qubes for every qube's IP (each machine its own Qubes: media exists on
the desk only).  Then applied: each rendered pillar in its own lab machine
(uplink interface wlp0s20f3 on the laptop, enp3s0 on the desk), both converge
(the second apply changes nothing), the flows differ as the machine files say,
and ``qubes_firewall.drift`` is reported per machine.
"""

import copy
import os
import shutil

import pytest

from tests.dom0 import fakequbes
from tests.e2e.formula_lab import Flow, FormulaLab, check_flows, matrix_text
from tests.lab import OutsideHost
from tests.lab.preflight import require_lab
from tests.modules import REPO
from tests.saltfactories_support import formula_minion

FLEET = REPO / "pillar.example" / "fleet"
SHARED = ("qubes_firewall.sls", "qubes_firewall_addresses.sls")
UPLINK = {"laptop": "wlp0s20f3", "desk": "enp3s0"}


def qubes_world(machine):
    """The machine's Qubes: the manual page's install, plus media on the desk."""
    world = fakequbes.seed_world()
    if machine == "desk":
        world["qubes"]["media"] = fakequbes._qube("AppVM", 13, kernel="6.6.48-1.fc37")
    return world


def pillar_root(tmp_path, machine, with_machine_file=True):
    """/srv/user_pillar of one machine: the shared files, and its machine file (a link)."""
    root = tmp_path / machine / "user_pillar"
    root.mkdir(parents=True)
    for name in SHARED:
        shutil.copy(FLEET / name, root / name)
    shutil.copy(FLEET / "qubes_firewall.top", root / "top.sls")
    if with_machine_file:
        os.symlink(FLEET / "machines" / ("%s.yaml" % machine), root / "qubes_firewall_machine.yaml")
    return root


def render(salt_factories, tmp_path, machine, minion_id="dom0", with_machine_file=True):
    """pillar.items for ``minion_id``, rendered in this machine's dom0: (returncode, pillar, result)."""
    root = pillar_root(tmp_path, machine, with_machine_file)
    bindir = fakequbes.install_tools(str(tmp_path / machine / "bin"))
    state = fakequbes.write_world(tmp_path / machine / "qubes.json", qubes_world(machine))
    release = tmp_path / machine / "qubes-release"
    release.write_text("Qubes release 4.3.0 (R4.3)\n")
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]), PYTHONWARNINGS="ignore",
               **{fakequbes.STATE_ENV: str(state), fakequbes.LOG_ENV: str(tmp_path / machine / "calls.log")})
    minion = formula_minion(salt_factories, "%s-%s" % (machine, minion_id), root,
                            id=minion_id, pillar_roots={"user": [str(root)]},
                            qubes_firewall_release_file=str(release))
    ret = minion.salt_call_cli(environ=env, timeout=300).run("--local", "--retcode-passthrough", "pillar.items")
    return ret.returncode, ret.data, ret


@pytest.fixture
def rendered(salt_factories, tmp_path):
    out = {}
    for machine in UPLINK:
        rc, pillar, ret = render(salt_factories, tmp_path, machine)
        assert rc == 0 and isinstance(pillar, dict), ret
        out[machine] = pillar
    return out


def test_one_tree_renders_per_machine(rendered):
    laptop, desk = rendered["laptop"]["qubes_firewall"], rendered["desk"]["qubes_firewall"]
    assert laptop["port_forwards"][0]["interfaces"] == ["wlp0s20f3"]
    assert desk["port_forwards"][0]["interfaces"] == ["enp3s0"]
    assert "media" not in laptop["qubes"] and desk["qubes"]["media"] == {"netvm": "sys-firewall"}
    assert desk["connections"] == laptop["connections"] + [
        {"from": "work", "to": "media", "proto": "tcp", "ports": [8096]}]
    # addresses from each machine's Qubes, for exactly the qubes of its topology
    assert laptop["addresses"] == {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "work": "10.137.0.9",
                                   "build": "10.137.0.10", "web": "10.137.0.11"}
    assert desk["addresses"] == dict(laptop["addresses"], media="10.137.0.13")
    assert laptop["lookup"] == desk["lookup"] == {"qubes_release": "4.3"}
    # everything else is the shared part, identical
    strip = copy.deepcopy(desk)
    del strip["qubes"]["media"], strip["addresses"]["media"], strip["connections"][-1]
    strip["port_forwards"][0]["interfaces"] = ["wlp0s20f3"]
    assert strip == laptop


def test_a_target_qube_gets_the_same_pillar_as_dom0(salt_factories, tmp_path, rendered):
    rc, pillar, ret = render(salt_factories, tmp_path / "target", "desk", minion_id="sys-net")
    assert rc == 0, ret
    assert pillar["qubes_firewall"] == rendered["desk"]["qubes_firewall"]


def test_a_machine_without_its_machine_file_fails_to_render_and_says_which(salt_factories, tmp_path):
    rc, pillar, ret = render(salt_factories, tmp_path, "laptop", with_machine_file=False)
    assert "qubes_firewall" not in pillar and pillar["_errors"], pillar  # a state run stops on _errors
    assert "qubes_firewall_machine.yaml is missing or names no uplink_interfaces: on each machine, link " \
        "/srv/user_pillar/qubes_firewall_machine.yaml to its file under machines/" in str(ret.stderr), ret.stderr


def outside(machine):
    """The LAN on the machine's uplink interface, and a second network on the other machine's name."""
    other = [name for m, name in UPLINK.items() if m != machine][0]
    return [OutsideHost(name="lan", uplink="sys-net", ifname=UPLINK[machine], host_ip="192.168.1.50/24",
                        uplink_ip="192.168.1.10/24"),
            OutsideHost(name="wan", uplink="sys-net", ifname=other, host_ip="172.30.0.50/24",
                        uplink_ip="172.30.0.10/24")]


FLOWS = {
    "laptop": [Flow("port forward on the laptop's uplink", "lan", "192.168.1.10", 443, "web:443"),
               Flow("not on another interface", "wan", "172.30.0.10", 443, None),
               Flow("work -> build ssh (shared)", "work", "build", 22, "build:22")],
    "desk": [Flow("port forward on the desk's uplink", "lan", "192.168.1.10", 443, "web:443"),
             Flow("not on another interface", "wan", "172.30.0.10", 443, None),
             Flow("work -> build ssh (shared)", "work", "build", 22, "build:22"),
             Flow("work -> media (desk only)", "work", "media", 8096, "media:8096"),
             Flow("media -> work refused", "media", "work", 8096, None)],
}


def drift_by_machine(labs):
    """{machine: {qube: drifted?}} from qubes_firewall.drift in every qube."""
    report = {}
    for machine, flab in labs.items():
        report[machine] = {}
        for qube in flab.lab.order:
            rc, out, proc = flab.minion(qube).run("qubes_firewall.drift")
            assert isinstance(out, dict) and (rc != 0) == bool(out["drifted"]), (machine, qube, rc, out, proc.stderr)
            report[machine][qube] = bool(out["drifted"])
    return report


@pytest.mark.lab
def test_one_tree_applied_to_two_machines(rendered, tmp_path):
    require_lab()
    labs = {}
    try:
        for machine, pillar in rendered.items():
            labs[machine] = FormulaLab(pillar, tmp_path / ("lab-" + machine), outside=outside(machine))
        assert "media" in labs["desk"].lab.qubes and "media" not in labs["laptop"].lab.qubes
        for machine, flab in labs.items():
            first = flab.apply_all()
            assert all(r.retcode == 0 and not r.failed for r in first.values()), \
                (machine, {q: r.failed for q, r in first.items()})
            second = flab.apply_all()
            assert all(r.retcode == 0 and r.changed == {} for r in second.values()), \
                (machine, {q: r.changed for q, r in second.items()})
        for machine, flab in labs.items():
            flab.lab.serve_tcp("web", 443)
            flab.lab.serve_tcp("build", 22)
            if machine == "desk":
                flab.lab.serve_tcp("media", 8096)
                flab.lab.serve_tcp("work", 8096)
            results = check_flows(flab.lab, FLOWS[machine])
            assert all(got == flow.expect for flow, got in results), machine + "\n" + matrix_text(results)

        clean = drift_by_machine(labs)
        assert clean == {m: {q: False for q in flab.lab.order} for m, flab in labs.items()}
        # a hand edit on the laptop's sys-net: its own drift says so, the desk stays clean
        doc = labs["laptop"].lab.nft_json("sys-net")
        owned = sorted({item["chain"]["name"] for item in doc["nftables"]
                        if "chain" in item and item["chain"]["table"] == "qubes"
                        and item["chain"]["name"].startswith("qf")})
        assert owned
        for chain in owned:
            labs["laptop"].lab.run("sys-net", ["nft", "flush", "chain", "ip", "qubes", chain])
        report = drift_by_machine(labs)
        assert report["laptop"]["sys-net"] is True
        assert not any(d for q, d in report["laptop"].items() if q != "sys-net")
        assert not any(report["desk"].values())
    finally:
        for flab in labs.values():
            flab.close()
