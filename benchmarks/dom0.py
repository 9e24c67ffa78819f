"""
Benchmark (not a test): the dom0 part on a fake Qubes of N qubes (default
30), run as qubesctl runs it in dom0 (``salt-call --local --id=dom0
state.apply qubes_firewall``), with each backend: the fake qvm-* tools on
PATH, and the fake qubesadmin (tests/dom0) as an importable package.

Reports, for a no-op run (the machine already matches the pillar): qvm-*
processes spawned, Admin API calls, and the wall time of salt-call against
the floor (``salt-call --local test.ping`` with the same config, median of
the runs), plus the same for a run that changes one qvm-firewall list.

    .venv/salt-3008/bin/python -m benchmarks.dom0 [--qubes 30] [--runs 5]

The pillar: sys-net <- sys-firewall <- N-2 app qubes, one port forward to
the first app qube, a connection between the first two, a qvm-firewall list
on every fifth qube; the addresses pillar file of docs/dom0.md beside it (it
reads the inventory once more, while the pillar is rendered).
"""

import argparse
import collections
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from tests.salt_call import REPO, write_minion_config

sys.path.insert(0, str(REPO / "tests" / "dom0"))

import fake_qubesadmin  # noqa: E402
import fakequbes  # noqa: E402

SALT_CALL = pathlib.Path(sys.executable).parent / "salt-call"
ADDRESSES_SLS = """\
{%- import_yaml 'qubes_firewall.sls' as topology %}
qubes_firewall:
  addresses: {{ salt['qubes_firewall.addresses'](topology.qubes_firewall.qubes.keys() | list) | yaml }}
"""


def world(n):
    data = fakequbes.seed_world()
    qubes = {k: v for k, v in data["qubes"].items() if k in ("fedora-39-xfce", "sys-net", "sys-firewall")}
    for i in range(n - 2):
        qubes["app-%02d" % i] = fakequbes._qube("AppVM", 20 + i, kernel="6.6.48-1.fc37")
    data["qubes"] = qubes
    return data


def pillar(n, tmp):
    apps = ["app-%02d" % i for i in range(n - 2)]
    qubes = {"sys-net": {"netvm": None, "provides_network": True},
             "sys-firewall": {"netvm": "sys-net", "provides_network": True}}
    for i, name in enumerate(apps):
        qubes[name] = {"netvm": "sys-firewall"}
        if i % 5 == 0:
            qubes[name]["firewall"] = [
                {"action": "accept", "proto": "tcp", "dsthost": "10.137.0.%d" % (21), "dstports": 22},
                {"action": "accept", "proto": "tcp", "dsthost": "example.com", "dstports": 443},
                {"action": "accept", "specialtarget": "dns"},
                {"action": "drop"}]
    return {"qubes_firewall": {
        "lookup": {"policy_file": str(tmp / "policy.d" / "30-user-networking.policy"),
                   "rw_config": str(tmp / "rw")},
        "qubes": qubes,
        "connections": [{"from": apps[0], "to": apps[1], "proto": "tcp", "ports": [22]}],
        "port_forwards": [{"name": "https", "qube": apps[0], "proto": "tcp", "port": 443}],
    }}


class Machine:
    def __init__(self, tmp, n, backend):
        self.tmp = tmp
        self.state = fakequbes.write_world(tmp / "qubes.json", world(n))
        self.log = tmp / "calls.log"
        bindir = fakequbes.install_tools(str(tmp / "bin"))
        self.conf = write_minion_config(tmp / "conf", tmp)
        pillar_dir = tmp / "pillar"
        pillar_dir.mkdir()
        (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - qubes_firewall\n    - qubes_firewall_addresses\n")
        (pillar_dir / "qubes_firewall.sls").write_text(yaml.safe_dump(pillar(n, tmp)))
        (pillar_dir / "qubes_firewall_addresses.sls").write_text(ADDRESSES_SLS)
        self.pillar_dir = pillar_dir
        self.env = dict(os.environ)
        self.env.update({"PATH": "%s:%s" % (bindir, self.env.get("PATH", "")), "PYTHONWARNINGS": "ignore",
                         fakequbes.STATE_ENV: str(self.state), fakequbes.LOG_ENV: str(self.log)})
        self.env.pop("PYTHONPATH", None)
        if backend == "qubesadmin":
            self.env["PYTHONPATH"] = fake_qubesadmin.write_package(tmp / "pylib")

    def salt_call(self, *args):
        argv = [str(SALT_CALL), "--config-dir", str(self.conf), "--local", "--id", "dom0",
                "--module-dirs", str(REPO), "--file-root", str(REPO / "salt"),
                "--pillar-root", str(self.pillar_dir), "--out", "json"] + list(args)
        if self.log.exists():
            self.log.unlink()
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL,
                              check=False)
        wall = time.perf_counter() - start
        calls = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return wall, calls, proc

    def apply(self):
        wall, calls, proc = self.salt_call("state.apply", "qubes_firewall")
        out = json.loads(proc.stdout)["local"]
        failed = [v["comment"] for v in out.values() if v["result"] is False]
        if failed:
            raise SystemExit("the run failed:\n" + "\n".join(failed))
        changed = sorted(v["__id__"] for v in out.values() if v["changes"])
        return wall, calls, changed


def counts(calls):
    tools = collections.Counter(c[0] for c in calls if c[0] != "qubesd")
    admin = collections.Counter(c[1] for c in calls if c[0] == "qubesd")
    return sum(tools.values()), sum(admin.values()), tools, admin


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for backend in ("cli", "qubesadmin"):
        with tempfile.TemporaryDirectory(prefix="qf-bench-dom0-") as tmp:
            machine = Machine(pathlib.Path(tmp), args.qubes, backend)
            machine.apply()  # converge
            floors, noop = [], []
            for _ in range(args.runs):  # interleaved: the machine's load hits both alike
                floors.append(machine.salt_call("test.ping")[0])
                noop.append(machine.apply())
            if any(changed for _, _, changed in noop):
                raise SystemExit("the no-op run changed %s" % noop[0][2])
            floor = statistics.median(floors)
            wall = statistics.median(w for w, _, _ in noop)
            tools, admin, tool_kinds, admin_kinds = counts(noop[0][1])
            rows.append((backend, "no-op", tools, admin, wall, floor, dict(tool_kinds), dict(admin_kinds)))
            # a change: one qube's qvm-firewall list edited by hand
            fakequbes.World(str(machine.state)).set_firewall("app-00", ["action=accept"])
            wall, calls, changed = machine.apply()
            if changed != ["qubes_firewall-dom0-firewall"]:
                raise SystemExit("the run changed %s" % changed)
            tools, admin, tool_kinds, admin_kinds = counts(calls)
            rows.append((backend, "one list", tools, admin, wall, floor, dict(tool_kinds), dict(admin_kinds)))
    print("dom0, fake Qubes with %d qubes, %s, Python %s, %d runs (median)"
          % (args.qubes, _salt_version(), platform.python_version(), args.runs))
    print()
    print("| backend | run | qvm-* calls | Admin API calls | wall | test.ping floor | / floor |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for backend, run, tools, admin, wall, floor, _, _ in rows:
        print("| %s | %s | %d | %d | %.2f s | %.2f s | %.2fx |"
              % (backend, run, tools, admin, wall, floor, wall / floor))
    print()
    for backend, run, _, _, _, _, tool_kinds, admin_kinds in rows:
        print("%s %s: %s" % (backend, run, json.dumps(tool_kinds or admin_kinds, sort_keys=True)))


def _salt_version():
    out = subprocess.run([str(SALT_CALL), "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip() or "salt"


if __name__ == "__main__":
    main()
