"""
Benchmark (not a test): the pure planner on a big pillar.  Parses a pillar of
``--qubes`` qubes (uplinks, firewall qubes and clients) with ``--forwards``
port forwards and ``--connections`` connections, then plans every qube, as a
dom0 preflight does.  Prints the parse time and the time to plan every qube.

    .venv/salt-3008/bin/python -m benchmarks.planner [--qubes 1000 --forwards 5000]
"""

import argparse
import time

from tests.modules import model, plan


def big_pillar(qubes, forwards, connections=200):
    """10 uplinks, 40 firewall qubes under them, the rest clients of the firewall qubes."""
    names, netvm = [], {}
    for u in range(10):
        names.append("net%d" % u)
        netvm["net%d" % u] = None
    for f in range(40):
        names.append("fw%d" % f)
        netvm["fw%d" % f] = "net%d" % (f % 10)
    for c in range(qubes - 50):
        names.append("app%d" % c)
        netvm["app%d" % c] = "fw%d" % (c % 40)
    addresses = {n: "10.%d.%d.%d" % (137 + i // 65025, (i // 255) % 255, i % 255 + 1) for i, n in enumerate(names)}
    apps = [n for n in names if n.startswith("app")]
    pf = []
    for i in range(forwards):
        pf.append({"name": "pf%d" % i, "qube": apps[i % len(apps)], "proto": "tcp" if i % 3 else "udp",
                   "port": 1 + (i // 10) % 60000, "external_port": 1024 + i // 10,
                   "sources": ["192.168.%d.0/24" % (i % 4)]})
    # one forward per protocol and external port on an uplink: spread by uplink
    seen, kept = set(), []
    for f in pf:
        uplink = "net%d" % ((apps.index(f["qube"]) % 40) % 10)
        key = (uplink, f["proto"], f["external_port"])
        while key in seen:
            f["external_port"] += 1
            key = (uplink, f["proto"], f["external_port"])
        seen.add(key)
        kept.append(f)
    conns = [{"from": apps[i], "to": apps[i + 40], "proto": "tcp", "ports": [22]} for i in range(connections)]
    return {"addresses": addresses,
            "qubes": {n: {"netvm": netvm[n]} for n in names},
            "port_forwards": kept, "connections": conns}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--qubes", type=int, default=1000)
    parser.add_argument("--forwards", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    raw = big_pillar(args.qubes, args.forwards, args.connections)
    start = time.perf_counter()
    mdl = model.parse(raw)
    parsed = time.perf_counter() - start
    best = None
    for _ in range(3):
        plan._INDEX["model"] = None  # plan from scratch each round
        start = time.perf_counter()
        plans = [plan.plan_qube(mdl, q) for q in sorted(mdl.qubes)]
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    elements = sum(len(s.elements) for p in plans for s in p.sets)
    rules = sum(len(c.rules) for p in plans for c in p.chains)
    print("%d qubes, %d port forwards, %d connections: parse %.2f s, plan every qube %.2f s "
          "(best of 3; %d rules, %d set elements)"
          % (len(mdl.qubes), len(mdl.port_forwards), len(mdl.connections), parsed, best, rules, elements))


if __name__ == "__main__":
    main()
