"""
One pillar tree for many machines that differ (pillar.example/fleet, docs/fleet.md).

Rendered as dom0 renders it: per machine a pillar root with the same shared
files and its own machine file (a link), salt-call's pillar.items against
that machine's fake Qubes (the addresses come from it).  Three machines:
the laptop has no VPN qube, the desk more forwards (and a qube of its own),
the studio a custom-persist sys-firewall.  Then broken fleet files fail only
this formula's pillar, naming the machine and the file; ``qubes_firewall.targets``
is what the documented qubesctl one-liner gets; ``qubes_firewall.fleet_status``
gives one row per machine that makes one table.  The lab test applies each
rendered pillar to its own lab machine, in the order ``targets`` gives.
"""

import csv
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.dom0 import fakequbes
from tests.e2e.formula_lab import Flow, FormulaLab, check_flows, matrix_text
from tests.lab import OutsideHost
from tests.lab.preflight import require_lab
from tests.modules import REPO, core
from tests.saltfactories_support import formula_minion

qf_view = core("view")

FLEET = REPO / "pillar.example" / "fleet"
SHARED = ("qubes_firewall.sls", "qubes_firewall_shared.yaml")
MACHINES = ("laptop", "desk", "studio")
UPLINK = {"laptop": "wlp0s20f3", "desk": "enp3s0", "studio": "ens6"}
SALT_CALL = Path(sys.executable).parent / "salt-call"
pytestmark = pytest.mark.skipif(not SALT_CALL.exists(), reason="salt-call is not installed beside python")
# another formula's pillar, in the same top file: it must render whatever happens to ours
OTHER_SLS = "other_formula:\n  setting: 1\n"


def release():
    return os.environ.get("QF_LAB_RELEASE", "").strip() or "4.3"


def qubes_world(machine):
    """The machine's Qubes: the manual page's install, as each machine has it."""
    world = fakequbes.seed_world()
    qubes = world["qubes"]
    qubes["debian-13"] = fakequbes._qube("TemplateVM", 14, state="Halted", template=None)
    if machine == "laptop":
        del qubes["sys-vpn"]
    if machine == "desk":
        qubes["media"] = fakequbes._qube("AppVM", 13, kernel="6.6.48-1.fc37")
    if machine == "studio":
        qubes["sys-firewall"]["template"] = "debian-13"
        qubes["sys-firewall"]["features"]["service.custom-persist"] = "1"
    return world


def pillar_root(tmp_path, machine, link="machine", machine_text=None, policy=None):
    """
    /srv/user_pillar of one machine: the shared files, the machines/ directory
    and its machine file (``link``: "machine" links it, None leaves it out, any
    other value links to machines/<value>.yaml).  ``machine_text`` replaces the
    machine's file; ``policy`` adds a lookup:policy_file to it (the test's own).
    """
    root = tmp_path / machine / "user_pillar"
    root.mkdir(parents=True)
    for name in SHARED:
        shutil.copy(FLEET / name, root / name)
    shutil.copytree(FLEET / "machines", root / "machines")
    top = (FLEET / "qubes_firewall.top").read_text()  # Jinja: the ids that need the pillar
    (root / "top.sls").write_text(top + "  '*':\n    - other_formula\n")
    (root / "other_formula.sls").write_text(OTHER_SLS)
    own = root / "machines" / ("%s.yaml" % machine)
    if machine_text is not None:
        own.write_text(machine_text)
    if policy is not None:
        data = yaml.safe_load(own.read_text())
        data["qubes_firewall"].setdefault("lookup", {})["policy_file"] = str(policy)
        own.write_text(yaml.safe_dump(data))
    if link is not None:
        target = machine if link == "machine" else link
        os.symlink("machines/%s.yaml" % target, root / "qubes_firewall_machine.yaml")
    return root


class Dom0:
    """One machine's dom0: its pillar root, its fake Qubes, salt-call --local there."""

    def __init__(self, salt_factories, tmp_path, machine, **root_args):
        self.factories, self.machine = salt_factories, machine
        self.root = pillar_root(tmp_path, machine, **root_args)
        here = tmp_path / machine
        bindir = fakequbes.install_tools(str(here / "bin"))
        self.world = fakequbes.write_world(here / "qubes.json", qubes_world(machine))
        self.release_file = here / "qubes-release"
        self.release_file.write_text("Qubes release %s.0 (R%s)\n" % (release(), release()))
        self.env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]), PYTHONWARNINGS="ignore",
                        **{fakequbes.STATE_ENV: str(self.world), fakequbes.LOG_ENV: str(here / "calls.log")})
        self.env.pop("PYTHONPATH", None)
        self.salt_root = tmp_path / machine / "salt"
        (self.salt_root).mkdir()
        (self.salt_root / "other_formula.sls").write_text("other-formula-ran:\n  test.succeed_without_changes: []\n")

    def run(self, *args, minion_id="dom0", **opts):
        """salt-call --local ARGS as minion ``minion_id``: (returncode, data, result)."""
        options = {"id": minion_id, "pillar_roots": {"user": [str(self.root)]},
                   "file_roots": {"base": [str(REPO / "salt"), str(self.salt_root)]},
                   "qubes_firewall_release_file": str(self.release_file)}
        options.update(opts)
        minion = formula_minion(self.factories, "%s-%s" % (self.machine, minion_id), self.root, **options)
        ret = minion.salt_call_cli(environ=self.env, timeout=300).run("--local", "--retcode-passthrough", *args)
        return ret.returncode, ret.data, ret

    def pillar(self, minion_id="dom0", **opts):
        rc, data, ret = self.run("pillar.items", minion_id=minion_id, **opts)
        assert rc == 0 and isinstance(data, dict), ret
        assert "_errors" not in data, data["_errors"]  # the pillar renders: no formula is stopped
        assert data["other_formula"] == {"setting": 1}, data
        return data


@pytest.fixture(scope="module")
def rendered(module_salt_factories, tmp_path_factory):
    """{machine: pillar.items in that machine's dom0}."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    return {m: Dom0(module_salt_factories, tmp_path, m).pillar() for m in MACHINES}


def test_each_machine_gets_the_shared_topology_with_its_own_file_merged(rendered):
    laptop, desk, studio = (rendered[m]["qubes_firewall"] for m in MACHINES)
    shared = yaml.safe_load((FLEET / "qubes_firewall_shared.yaml").read_text())["qubes_firewall"]
    # the laptop: no VPN; sys-firewall-2 on sys-firewall; the ConnectTCP entry to sys-vpn went with it
    assert "sys-vpn" not in laptop["qubes"] and laptop["qubes"]["sys-firewall-2"]["netvm"] == "sys-firewall"
    assert "connect_tcp" in shared and laptop["connect_tcp"] == []
    assert rendered["laptop"]["qubes_firewall_fleet"]["dropped"] == [
        {"kind": "connect_tcp", "path": "qubes_firewall:connect_tcp:0", "qube": "sys-vpn",
         "identity": "client: 'work', server: 'sys-vpn', port: 3128"}]
    # the desk: the shared forward on 8443, its own forward, qube and connection
    assert [(f["name"], f.get("external_port"), f["interfaces"]) for f in desk["port_forwards"]] == [
        ("https", 8443, ["enp3s0"]), ("media", None, ["enp3s0"])]
    assert desk["qubes"]["media"] == {"netvm": "sys-firewall"}
    assert desk["connections"] == shared["connections"] + [
        {"from": "work", "to": "media", "proto": "tcp", "ports": [8096]}]
    # the studio: two keys added to the shared sys-firewall, the shared connection with two ports
    assert studio["qubes"]["sys-firewall"] == dict(shared["qubes"]["sys-firewall"], custom_persist=True,
                                                   template="debian-13")
    assert studio["connections"] == [{"from": "work", "to": "build", "proto": "tcp", "ports": [22, 2222]}]
    # every machine: the uplink interfaces go to the forwards that name none, addresses from its Qubes
    assert laptop["port_forwards"] == [dict(shared["port_forwards"][0], interfaces=["wlp0s20f3"])]
    assert studio["port_forwards"][0]["interfaces"] == ["ens6"]
    for machine in MACHINES:
        pillar = rendered[machine]["qubes_firewall"]
        assert sorted(pillar["addresses"]) == sorted(pillar["qubes"]), machine
        assert pillar["lookup"] == {"qubes_release": release()}
        assert rendered[machine]["qubes_firewall_fleet"]["machine"] == machine
    assert desk["addresses"]["media"] == "10.137.0.13" and laptop["addresses"]["web"] == "10.137.0.11"
    # and what nobody changed is the shared part, identical
    for machine in MACHINES:
        pillar = rendered[machine]["qubes_firewall"]
        assert pillar["qubes"]["web"] == shared["qubes"]["web"]
        assert pillar["qubes"]["sys-net"] == shared["qubes"]["sys-net"]


def test_a_target_qube_gets_its_part_of_dom0s_pillar(salt_factories, tmp_path, rendered):
    dom0 = Dom0(salt_factories, tmp_path, "studio")
    pillar = dom0.pillar(minion_id="sys-firewall")
    whole = rendered["studio"]["qubes_firewall"]
    assert pillar["qubes_firewall"] == qf_view.view(whole, None, "sys-firewall")
    assert "qubes_firewall_fleet" not in pillar  # the machine's files and dropped entries are dom0's
    # the custom-persist sys-firewall's template gets the pillar too; a qube no file names does not
    assert dom0.pillar(minion_id="debian-13")["qubes_firewall"] == qf_view.view(whole, None, "debian-13")
    assert "qubes_firewall" not in dom0.pillar(minion_id="vault")


BROKEN = {
    # what the machine file is -> what the message must say
    "missing": (dict(link=None), ["/qubes_firewall_machine.yaml is missing: link it to this machine's file, "
                                  "once: `sudo ln -s machines/NAME.yaml ", "(NAME one of: desk, laptop, studio)"]),
    "unknown machine": (dict(link="lapotp"), ["machine lapotp: ", "links to machines/lapotp.yaml, which does "
                                              "not exist (machines: desk, laptop, studio)"]),
    "not yaml": (dict(machine_text="machine: laptop\nqubes_firewall:\n  qubes: [a\n"),
                 ["machine laptop (", "/machines/laptop.yaml): the machine file is not valid YAML at line 4"]),
    "merge": (dict(machine_text="qubes_firewall:\n  qubes:\n    sys-vpn: null\n"),
              ["machine laptop (", "/machines/laptop.yaml): qubes_firewall:qubes:sys-firewall-2:netvm: names "
               "sys-vpn, which this machine removes"]),
    "typo": (dict(machine_text="qubes_firewall:\n  qubes:\n    sys-vnp: null\n"),
             ["machine laptop (", "qubes_firewall:qubes:sys-vnp: null removes sys-vnp, but the shared file has no"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_fleet_file_fails_this_formula_only_and_names_machine_and_file(salt_factories, tmp_path, case):
    root_args, says = BROKEN[case]
    dom0 = Dom0(salt_factories, tmp_path, "laptop", **root_args)
    pillar = dom0.pillar()  # renders, with the other formula's pillar
    message = pillar["qubes_firewall"]["error"]
    assert set(pillar["qubes_firewall"]) == {"error"}
    for text in says:
        assert text in message, (text, message)
    # the formula's own validation says so, naming the key
    rc, errors, ret = dom0.run("qubes_firewall.pillar_errors")
    assert errors == ["qubes_firewall:error: " + message], ret


def test_a_broken_fleet_file_stops_this_formulas_runs_and_no_other(salt_factories, tmp_path):
    dom0 = Dom0(salt_factories, tmp_path, "laptop", link=None)
    before = dom0.world.read_bytes()
    rc, out, ret = dom0.run("state.apply", "qubes_firewall")
    assert rc != 0 and isinstance(out, dict), ret
    states = {v["__id__"]: v for v in out.values()}
    assert states["qubes_firewall-validated"]["result"] is False
    assert "qubes_firewall:error: " in states["qubes_firewall-validated"]["comment"]
    assert "qubes_firewall_machine.yaml is missing" in states["qubes_firewall-validated"]["comment"]
    assert dom0.world.read_bytes() == before
    rc, out, ret = dom0.run("state.apply", "other_formula", minion_id="work")
    assert rc == 0 and [v["result"] for v in out.values()] == [True], ret


def test_without_the_formula_in_dom0_the_pillar_still_renders(salt_factories, tmp_path):
    dom0 = Dom0(salt_factories, tmp_path, "laptop")
    # the formula's modules are not there: no module dir, the installed extension disabled
    pillar = dom0.pillar(module_dirs=[], disable_modules=["qubes_firewall"], disable_states=["qubes_firewall"])
    assert pillar["qubes_firewall"] == {
        "error": "this dom0's Salt has no qubes_firewall execution module: install the formula (README.md), "
                 "then run: sudo qubesctl saltutil.sync_all"}


def has_outputter(name):
    """Salt 3008 has no newline_values_only (dom0's Salt, 3006 or 3007, has)."""
    import importlib.util

    return importlib.util.find_spec("salt.output.%s" % name) is not None


def test_targets_as_the_documented_one_liner_gets_them(salt_factories, tmp_path, rendered):
    """
    ``sudo qubesctl --targets=$(sudo qubesctl qubes_firewall.targets
    --out=newline_values_only) state.apply qubes_firewall``: qubesctl hands
    what follows the function to dom0's ``salt-call --local`` as it is; what
    that prints is the --targets value, templates first.
    """
    want = {"laptop": "sys-net,sys-firewall,sys-firewall-2,web,build,work",
            "desk": "sys-net,sys-firewall,media,sys-vpn,web,sys-firewall-2,build,work",
            "studio": "debian-13,sys-net,sys-firewall,sys-vpn,web,sys-firewall-2,build,work"}
    for machine in MACHINES:
        dom0 = Dom0(salt_factories, tmp_path, machine)
        minion = formula_minion(dom0.factories, "%s-out" % machine, dom0.root, id="dom0",
                                pillar_roots={"user": [str(dom0.root)]},
                                qubes_firewall_release_file=str(dom0.release_file))
        out = "newline_values_only" if has_outputter("newline_values_only") else "txt"
        ret = minion.salt_call_cli(environ=dom0.env, timeout=300).run(
            "--local", "qubes_firewall.targets", "--out=%s" % out)
        assert ret.returncode == 0, ret
        line = ret.stdout.strip() if out == "newline_values_only" else ret.stdout.strip().split(" ", 1)[1]
        assert line == want[machine], (machine, ret.stdout)
        if machine == "studio":
            break  # one machine through the CLI is enough; the others through pillar data below
    from _qubes_firewall_fleet import targets

    for machine in MACHINES:
        assert ",".join(targets(rendered[machine]["qubes_firewall"])) == want[machine]


def test_the_fleet_view_one_row_per_machine_makes_one_table(salt_factories, tmp_path):
    rows = {}
    for machine in MACHINES:
        dom0 = Dom0(salt_factories, tmp_path, machine, policy=tmp_path / machine / "policy.d" / "30-fleet.policy")
        if machine == "laptop":  # the laptop's dom0 is applied: in sync
            rc, out, ret = dom0.run("state.apply", "qubes_firewall")
            assert rc == 0, ret
        rc, row, ret = dom0.run("qubes_firewall.fleet_status", "fmt=row")
        assert rc == 0 and isinstance(row, str) and "\n" not in row, ret
        rows[machine] = row
        if machine == "desk":  # --out=json: the row as data, with every difference
            rc, data, ret = dom0.run("qubes_firewall.fleet_status")
            assert rc == 0 and data["machine"] == "desk" and len(data["details"]) == 6, ret
    table = list(csv.reader(io.StringIO("\n".join(rows[m] for m in MACHINES)), delimiter="\t"))
    assert [r[0] for r in table] == list(MACHINES) and all(len(r) == 4 for r in table), table
    laptop, desk, studio = table
    assert laptop[1:3] == ["ok: dom0 matches the pillar; 6 qubes to check (qubes_firewall.drift)", "in sync"]
    assert laptop[3] == "sys-net,sys-firewall,sys-firewall-2,web,build,work"
    assert desk[1] == "dom0 drift (6): apply dom0 first: sudo qubesctl state.apply qubes_firewall", desk
    assert "sys-firewall-2 netvm sys-firewall -> sys-vpn" in desk[2] and "the qubes.ConnectTCP policy" in desk[2]
    assert studio[1].startswith("dom0 drift") and studio[3].startswith("debian-13,"), studio


@pytest.mark.lab
def test_three_machines_that_differ_in_the_lab(rendered, tmp_path):
    """
    Each machine's rendered pillar in its own lab machine, applied in the
    order ``targets`` gives (the studio's template first): every run
    converges, a second one changes nothing, and the flows differ as the
    machine files say.
    """
    require_lab()
    from _qubes_firewall_fleet import targets

    labs = {}
    try:
        for machine in MACHINES:
            pillar = {"qubes_firewall": rendered[machine]["qubes_firewall"]}
            labs[machine] = FormulaLab(pillar, tmp_path / ("lab-" + machine), outside=outside(machine))
        for machine, flab in labs.items():
            order = targets(flab.pillar["qubes_firewall"])
            assert set(order) - set(flab.lab.order) == ({"debian-13"} if machine == "studio" else set())
            first = {q: flab.apply(q) for q in order}
            assert all(r.retcode == 0 and not r.failed for r in first.values()), \
                (machine, {q: r.failed for q, r in first.items()})
            second = flab.apply_all()
            assert all(r.retcode == 0 and r.changed == {} for r in second.values()), \
                (machine, {q: r.changed for q, r in second.items()})
        if release() == "4.3":  # the studio's sys-firewall is replayed from its template
            etc = labs["studio"].etc_qubes("debian-13")
            assert (etc / "qubes-firewall.d" / "qubes-firewall-formula-sys-firewall").exists()
        for machine, flab in labs.items():
            flab.lab.serve_tcp("web", 443)
            flab.lab.serve_tcp("build", 22)
            flab.lab.serve_tcp("build", 2222)
            if machine == "desk":
                flab.lab.serve_tcp("media", 8096)
            results = check_flows(flab.lab, FLOWS[machine])
            assert all(got == flow.expect for flow, got in results), machine + "\n" + matrix_text(results)
        # a hand edit on the laptop's sys-net: its drift says so, the desk's sys-net is clean
        doc = labs["laptop"].lab.nft_json("sys-net")
        owned = sorted({item["chain"]["name"] for item in doc["nftables"] if "chain" in item
                        and item["chain"]["table"] == "qubes" and item["chain"]["name"].startswith("qf")})
        assert owned
        for chain in owned:
            labs["laptop"].lab.run("sys-net", ["nft", "flush", "chain", "ip", "qubes", chain])
        for machine, drifted in (("laptop", True), ("desk", False)):
            rc, out, proc = labs[machine].minion("sys-net").run("qubes_firewall.drift")
            assert isinstance(out, dict) and out["drifted"] is drifted and (rc != 0) is drifted, (machine, out)
    finally:
        for flab in labs.values():
            flab.close()


def outside(machine):
    """The LAN on the machine's uplink interface, and a second network on another machine's name."""
    other = UPLINK[MACHINES[(MACHINES.index(machine) + 1) % len(MACHINES)]]
    return [OutsideHost(name="lan", uplink="sys-net", ifname=UPLINK[machine], host_ip="192.168.1.50/24",
                        uplink_ip="192.168.1.10/24"),
            OutsideHost(name="wan", uplink="sys-net", ifname=other, host_ip="172.30.0.50/24",
                        uplink_ip="172.30.0.10/24")]


FLOWS = {
    "laptop": [Flow("https on the laptop's uplink", "lan", "192.168.1.10", 443, "web:443"),
               Flow("not on another interface", "wan", "172.30.0.10", 443, None),
               Flow("work -> build ssh (shared, no VPN hop)", "work", "build", 22, "build:22"),
               Flow("not the studio's second port", "work", "build", 2222, None)],
    "desk": [Flow("https on the desk's 8443", "lan", "192.168.1.10", 8443, "web:443"),
             Flow("not on 443 any more", "lan", "192.168.1.10", 443, None),
             Flow("the desk's media forward", "lan", "192.168.1.10", 8096, "media:8096"),
             Flow("work -> media (desk only)", "work", "media", 8096, "media:8096"),
             Flow("work -> build ssh (shared)", "work", "build", 22, "build:22")],
    "studio": [Flow("https on the studio's uplink", "lan", "192.168.1.10", 443, "web:443"),
               Flow("not on another interface", "wan", "172.30.0.10", 443, None),
               Flow("work -> build ssh (shared)", "work", "build", 22, "build:22"),
               Flow("work -> build 2222 (studio only)", "work", "build", 2222, "build:2222")],
}
