"""
Benchmark (not a test): how a run of the formula in one qube (the uplink,
sys-net) scales with the number of port forwards, against the floor of any
salt-call (``test.ping``) and against Salt's built-in nftables states.

    sudo .venv/salt-3008/bin/python -m benchmarks.scaling [--forwards 10,100,1000,5000]

For each N, on a fresh Qubes base ruleset in a network namespace: the first
run (loads everything), the re-run (a no-op) and a run after one forward
changed; for each, nft processes spawned (a shim first on PATH counts them),
salt-call wall time, and the time Salt reports for the states; each the
fastest of ``--repeat`` runs (the machine may be shared: interference only
adds time).  Then Salt's
``nftables.chain_present`` / ``nftables.append`` states for the same kind of
forwards (``--builtin-forwards``, default 50: they take seconds per forward)
and the pure planner on a 1,000-qube, 5,000-forward pillar.
"""

import argparse
import copy
import json
import pathlib
import shutil
import subprocess
import tempfile
import time

from benchmarks import planner
from benchmarks.port_forwards import NS, Spawns, builtin_sls, fresh_namespace, pillar, sh_ns
from tests.modules import model, plan
from tests.salt_call import SaltCall


def rule_count():
    """Rules and set/map elements in table ip qubes."""
    doc = json.loads(sh_ns("nft", "-j", "list", "table", "ip", "qubes"))
    rules = sum(1 for item in doc["nftables"] if "rule" in item)
    return rules + sum(len((item.get("set") or item.get("map") or {}).get("elem", [])) for item in doc["nftables"])


def timed(call, spawns, *args):
    spawns.reset()
    start = time.monotonic()
    rc, out, proc = call.run(*args)
    wall = time.monotonic() - start
    states_ms = sum(s.get("duration", 0) for s in out.values()) if isinstance(out, dict) else 0
    changed = sum(1 for s in out.values() if s.get("changes")) if isinstance(out, dict) else 0
    if rc != 0:
        print(proc.stdout[-1500:], proc.stderr[-1500:])
    return {"rc": rc, "spawns": spawns.count(), "wall": wall, "states_ms": states_ms, "changed": changed}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forwards", default="10,100,1000,5000")
    parser.add_argument("--builtin-forwards", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the fastest is shown")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="qf-scale-"))
    spawns = Spawns(work)
    rows = []
    try:
        fresh_namespace()
        floor_call = SaltCall(work / "floor", "sys-net", pillar(1, work), netns=NS, env=spawns.env)
        floor_call.run("test.ping")  # warm caches
        floor = min(timed(floor_call, spawns, "test.ping")["wall"] for _ in range(max(3, args.repeat)))
        for n in [int(x) for x in args.forwards.split(",")]:
            call = SaltCall(work / ("n%d" % n), "sys-net", pillar(n, work), netns=NS, env=spawns.env)
            changed = copy.deepcopy(pillar(n, work))
            changed["qubes_firewall"]["port_forwards"][n // 2]["external_port"] += 40000
            runs = {"first run": [], "no-op": [], "one changed": []}
            for _ in range(args.repeat):
                fresh_namespace()
                call.set_pillar(pillar(n, work))
                runs["first run"].append(timed(call, spawns, "state.apply", "qubes_firewall"))
                runs["no-op"].append(timed(call, spawns, "state.apply", "qubes_firewall"))
                call.set_pillar(changed)
                runs["one changed"].append(timed(call, spawns, "state.apply", "qubes_firewall"))
            for label, results in runs.items():
                r = min(results, key=lambda x: x["wall"])
                rows.append(("qubes_firewall", n, label, r["spawns"], "%.2f" % r["wall"],
                             "%.2fx" % (r["wall"] / floor), "%.0f" % min(x["states_ms"] for x in results),
                             r["changed"], rule_count(), "ok" if all(x["rc"] == 0 for x in results) else "failed"))
        if args.builtin_forwards:
            n = args.builtin_forwards
            fresh_namespace()
            root = work / "builtin-states"
            root.mkdir()
            (root / "builtin_bench.sls").write_text(builtin_sls(n))
            call = SaltCall(work / "builtin", "sys-net", {"x": 1}, netns=NS, env=spawns.env)
            for label in ("first run", "re-run"):
                r = timed(call, spawns, "--file-root=" + str(root), "state.apply", "builtin_bench")
                rows.append(("salt nftables.append", n, label, r["spawns"], "%.2f" % r["wall"],
                             "%.2fx" % (r["wall"] / floor), "%.0f" % r["states_ms"], r["changed"], rule_count(),
                             "ok" if r["rc"] == 0 else "rc=%d" % r["rc"]))
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    header = ("approach", "forwards", "run", "nft spawns", "wall s", "/ floor", "states ms", "changed",
              "rules+elements", "")
    table = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print("salt-call test.ping floor: %.2f s\n" % floor)
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    raw = planner.big_pillar(1000, 5000)
    mdl = model.parse(raw)
    best = None
    for _ in range(3):
        plan._INDEX["model"] = None
        start = time.perf_counter()
        for qube in mdl.qubes:
            plan.plan_qube(mdl, qube)
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    print("\nplanner: every qube of %d qubes and %d port forwards in %.2f s (best of 3)"
          % (len(mdl.qubes), len(mdl.port_forwards), best))


if __name__ == "__main__":
    main()
