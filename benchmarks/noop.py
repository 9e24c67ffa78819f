"""
Benchmark (not a test): the no-op run of a qube against Salt's floor.

    sudo .venv/salt-3008/bin/python -m benchmarks.noop [--forwards 12,3000] [--repeat 7]
    sudo .venv/salt-3008/bin/python -m benchmarks.noop --profile 3000 [--top 30]

For each N (sys-net with N port forwards to its client web, on a fresh Qubes
base ruleset in a network namespace): the first ``state.apply`` loads the
rules, then ``--repeat`` no-op ``state.apply`` runs and as many ``salt-call
test.ping`` runs alternate (and as many ``state.apply`` of an SLS holding one
``test.nop``: Salt's own cost of a state run with this pillar, which
compiles the pillar a second time); the table shows the median of each, the ratio to test.ping,
the extra CPU seconds over the floor, and the nft processes a no-op run
spawned (one ``nft -j list ruleset``).  Each figure is wall seconds and CPU
seconds (user + system of salt-call and its children, from ``getrusage``):
on a shared machine the wall time follows the other work, the CPU time much
less.  Interleaving the runs keeps the load out of the ratio as far as it can.

``--profile N`` runs one no-op ``state.apply`` at N forwards under cProfile
(``python -m cProfile``, the whole salt-call process) and prints the top
functions by cumulative time and by own time, restricted to the formula's
files unless ``--all``.
"""

import argparse
import os
import pathlib
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.port_forwards import NS, Spawns, fresh_namespace, pillar
from tests.salt_call import SaltCall, salt_call_binary


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(call, spawns, *args):
    spawns.reset()
    start, cpu = time.monotonic(), _children_cpu()
    rc, out, proc = call.run(*args)
    wall, cpu = time.monotonic() - start, _children_cpu() - cpu
    if rc != 0:
        print(proc.stdout[-1500:], proc.stderr[-1500:], file=sys.stderr)
    changed = sum(1 for s in out.values() if s.get("changes")) if isinstance(out, dict) and "state.apply" in args else 0
    return {"rc": rc, "wall": wall, "cpu": cpu, "spawns": spawns.count(), "changed": changed}


def salt_env(work, spawns, bytecode):
    """
    salt-call's environment: the nft shim first on PATH and, unless
    ``bytecode`` is False, Python's bytecode cache on (in the work directory,
    never in the repository), as on a user's minion; without it (e.g.
    PYTHONDONTWRITEBYTECODE=1 in the environment) every run compiles the
    formula's modules again.
    """
    env = dict(spawns.env)
    if bytecode:
        env.update(PYTHONDONTWRITEBYTECODE="", PYTHONPYCACHEPREFIX=str(work / "pycache"))
    return env


def measure(work, env, spawns, n, repeat):
    fresh_namespace()
    call = SaltCall(work / ("n%d" % n), "sys-net", pillar(n, work), netns=NS, env=env)
    first = timed(call, spawns, "state.apply", "qubes_firewall")
    nop_root = work / "nop-sls"
    nop_root.mkdir(exist_ok=True)
    (nop_root / "nop.sls").write_text("nothing:\n  test.nop: []\n")
    nop_args = ("--file-root=" + str(nop_root), "state.apply", "nop")
    call.run("test.ping")  # warm the floor's caches too
    call.run(*nop_args)
    noop, ping, nop = [], [], []
    for _ in range(repeat):
        noop.append(timed(call, spawns, "state.apply", "qubes_firewall"))
        ping.append(timed(call, spawns, "test.ping"))
        nop.append(timed(call, spawns, *nop_args))
    ok = first["rc"] == 0 and all(r["rc"] == 0 and r["changed"] == 0 for r in noop)

    def median(runs, key):
        return statistics.median(r[key] for r in runs)

    return (n, "%.2f / %.2f" % (median(ping, "wall"), median(ping, "cpu")),
            "%.2f / %.2f" % (median(nop, "wall"), median(nop, "cpu")),
            "%.2f / %.2f" % (median(noop, "wall"), median(noop, "cpu")),
            "%.2fx / %.2fx" % (median(noop, "wall") / median(ping, "wall"), median(noop, "cpu") / median(ping, "cpu")),
            "%+.2f" % (median(noop, "cpu") - median(ping, "cpu")),
            max(r["spawns"] for r in noop), "ok" if ok else "FAILED (or not a no-op)")


def profile(work, env, n, top, everything):
    fresh_namespace()
    call = SaltCall(work / ("n%d" % n), "sys-net", pillar(n, work), netns=NS, env=env)
    call.run("state.apply", "qubes_firewall", check=True)
    out = work / "noop.prof"
    argv = call.argv("state.apply", "qubes_firewall")
    at = argv.index(salt_call_binary())
    argv[at:at + 1] = [sys.executable, "-m", "cProfile", "-o", str(out), salt_call_binary()]
    start = time.monotonic()
    subprocess.run(argv, capture_output=True, text=True, check=True,
                   env=dict(os.environ, PYTHONWARNINGS="ignore", **env))
    print("no-op state.apply at %d forwards under cProfile: %.2f s wall\n" % (n, time.monotonic() - start))
    stats = pstats.Stats(str(out))
    pattern = [] if everything else ["qubes_firewall"]
    for order in ("cumulative", "tottime"):
        print("---- by %s ----" % order)
        stats.sort_stats(order).print_stats(*(pattern + [top]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forwards", default="12,3000")
    parser.add_argument("--repeat", type=int, default=7, help="no-op runs and test.ping runs per N (median)")
    parser.add_argument("--profile", type=int, metavar="N", help="profile one no-op run at N forwards")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--all", action="store_true", help="profile: every function, not only the formula's")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="compile the formula's modules in every run (as with PYTHONDONTWRITEBYTECODE=1)")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="qf-noop-"))
    spawns = Spawns(work)
    env = salt_env(work, spawns, not args.no_bytecode_cache)
    try:
        if args.profile:
            profile(work, env, args.profile, args.top, args.all)
            return
        rows = [measure(work, env, spawns, int(n), args.repeat) for n in args.forwards.split(",")]
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    header = ("forwards", "test.ping", "state.apply test.nop", "no-op state.apply", "ratio",
              "CPU over floor", "nft spawns", "")
    table = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print("median of %d alternating runs each; seconds of wall / of CPU (salt-call and its children); %s\n"
          % (args.repeat, "compiled every run" if args.no_bytecode_cache else "bytecode cached"))
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
