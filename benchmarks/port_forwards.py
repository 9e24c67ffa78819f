"""
Benchmark (not a test): 200 port forwards applied to one qube (the uplink,
sys-net) by this formula and by Salt's built-in nftables states, side by side,
in one run, each on the same fresh Qubes base ruleset in its own network
namespace.  Reports, for the first run and for the re-run: nft processes
spawned, wall time of salt-call, and the rules in the table afterwards.

    sudo .venv/salt-3008/bin/python -m benchmarks.port_forwards [--forwards 200]

The built-in comparison expresses the same rules with ``nftables.chain_present``
(one nat chain per forward) and ``nftables.append`` (its DNAT rule, and a
forward accept in one chain).  Spawns are counted by an ``nft`` shim placed
first on PATH for salt-call (both Salt's nftables module and ours find nft
through PATH).
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from tests.lab import qubes_base
from tests.salt_call import SaltCall

NS = "qf-bench-%d" % os.getpid()


def sh_ns(*argv, stdin=None):
    return subprocess.run(["ip", "netns", "exec", NS] + list(argv), input=stdin, text=True,
                          capture_output=True, check=True).stdout


def fresh_namespace():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    for table in qubes_base.base_tables():
        sh_ns("nft", "-f", "-", stdin=table)
    sh_ns("nft", "-f", "-", stdin=qubes_base.qubes_firewall_tables())


def rule_count():
    doc = json.loads(sh_ns("nft", "-j", "list", "table", "ip", "qubes"))
    return sum(1 for item in doc["nftables"] if "rule" in item)


def pillar(n, work):
    """sys-net with ``n`` forwards to web; the boot files go under ``work``, never the host's /rw."""
    return {"qubes_firewall": {
        "lookup": {"rw_config": str(pathlib.Path(work) / "rw-config"),
                   "etc_qubes": str(pathlib.Path(work) / "etc-qubes")},
        "addresses": {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "web": "10.137.0.11"},
        "qubes": {"sys-net": {"netvm": None}, "sys-firewall": {"netvm": "sys-net"},
                  "web": {"netvm": "sys-firewall"}},
        "port_forwards": [
            {"name": "pf-%d" % i, "qube": "web", "port": 20000 + i, "external_port": 10000 + i,
             "interfaces": ["ens6"], "sources": ["192.168.1.0/24"]}
            for i in range(n)
        ],
    }}


def builtin_sls(n):
    states = {}
    for i in range(n):
        chain = "qf-dnat-pf-%d" % i
        states["chain-%d" % i] = {"nftables.chain_present": [
            {"name": chain}, {"table": "qubes"}, {"family": "ipv4"},
            {"table_type": "nat"}, {"hook": "prerouting"}, {"priority": 1}]}
        states["dnat-%d" % i] = {"nftables.append": [
            {"table": "qubes"}, {"chain": chain}, {"family": "ipv4"}, {"if": "ens6"},
            {"saddr": "192.168.1.0/24"}, {"proto": "tcp"}, {"dport": 10000 + i}, {"counter": True},
            {"jump": "dnat to 10.137.0.6"}]}
        states["forward-%d" % i] = {"nftables.append": [
            {"table": "qubes"}, {"chain": "custom-forward"}, {"family": "ipv4"}, {"if": "ens6"},
            {"saddr": "192.168.1.0/24"}, {"daddr": "10.137.0.6"}, {"proto": "tcp"},
            {"dport": 10000 + i}, {"counter": True}, {"jump": "accept"}]}
    return yaml.safe_dump(states)


class Spawns:
    def __init__(self, workdir):
        self.bin = workdir / "shim"
        self.bin.mkdir()
        self.log = workdir / "nft.log"
        real = shutil.which("nft")
        (self.bin / "nft").write_text('#!/bin/sh\necho "$*" >> "%s"\nexec %s "$@"\n' % (self.log, real))
        (self.bin / "nft").chmod(0o755)

    def reset(self):
        self.log.write_text("")

    def count(self):
        return len(self.log.read_text().splitlines())

    @property
    def env(self):
        return {"PATH": "%s:%s" % (self.bin, os.environ["PATH"])}


def run(label, call, args, spawns):
    rows = []
    for attempt in ("first run", "re-run"):
        spawns.reset()
        start = time.monotonic()
        rc, out, proc = call.run(*args)
        wall = time.monotonic() - start
        if rc != 0 and attempt == "first run":
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        state_ms = sum(s.get("duration", 0) for s in (out or {}).values()) if isinstance(out, dict) else 0
        changed = sum(1 for s in (out or {}).values() if s.get("changes")) if isinstance(out, dict) else 0
        rows.append((label, attempt, spawns.count(), "%.2f" % wall, "%.0f" % state_ms, changed, rule_count(),
                     "ok" if rc == 0 else "rc=%d" % rc))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forwards", type=int, default=200)
    args = parser.parse_args()
    n = args.forwards
    work = pathlib.Path(tempfile.mkdtemp(prefix="qf-bench-"))
    spawns = Spawns(work)
    rows = []
    try:
        fresh_namespace()
        ours = SaltCall(work / "ours", "sys-net", pillar(n, work), netns=NS, env=spawns.env)
        rows += run("qubes_firewall", ours, ("state.apply", "qubes_firewall"), spawns)

        fresh_namespace()
        builtin_root = work / "builtin-states"
        builtin_root.mkdir()
        (builtin_root / "builtin_bench.sls").write_text(builtin_sls(n))
        builtin = SaltCall(work / "builtin", "sys-net", {"x": 1}, netns=NS, env=spawns.env)
        args_builtin = ("--file-root=" + str(builtin_root), "state.apply", "builtin_bench")
        # the file root given last wins over the formula's
        rows += run("salt nftables.append", builtin, args_builtin, spawns)
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    header = ("approach", "run", "nft spawns", "wall s", "states ms", "states changed", "rules in table", "")
    table = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print("%d port forwards applied to sys-net (Salt %s)\n" % (n, _salt_version()))
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _salt_version():
    import salt.version

    return salt.version.__version__


if __name__ == "__main__":
    main()
