"""
Benchmark (not a test): the per-target cost of the path users run on Qubes,
``sudo qubesctl --skip-dom0 --targets=VM state.apply qubes_firewall``
(tests/qubesctl/harness.py: the pillar rendered in dom0, salt-ssh of the
management Salt deploying Salt's thin and running the state through the
ssh-wrapper stand-in), against ``salt-call --local state.apply
qubes_firewall`` of the same run in the same lab qube.  Both runs are no-op
runs (the qube already converged), the formula's steady state.

Prints, per qube, median wall time and CPU time (this process's children:
the honest number on a shared machine), the dom0 pillar render's share, and
the salt-ssh calls and ssh/scp round trips of one qubesctl run (qubesctl makes
one salt-ssh call per target per command; salt-ssh's own round trips for
state.apply are grains, thin + ext_mods, state tarball, state.pkg).  One more
line: a run whose management disposable builds Salt's thin itself, as on
Qubes (the tests copy one built per session).

Run it with the python of the release's management Salt (4.3: 3007, 4.2: 3006),
as root (the lab):

    /opt/qf-venvs/salt-3007/bin/python -m benchmarks.qubesctl_path [--release 4.3] [--runs 3]
        [--scenario full] [--qubes sys-net,sys-firewall,work]
"""

import argparse
import copy
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time

import yaml

from tests.e2e.demo import fill_addresses
from tests.e2e.formula_lab import FormulaLab
from tests.qubesctl.harness import REPO, QubesctlLab


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(func, runs):
    """(median wall, median CPU) of ``runs`` calls of func()."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu, start = children_cpu(), time.monotonic()
        func()
        walls.append(time.monotonic() - start)
        cpus.append(children_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="4.3", choices=["4.2", "4.3"])
    parser.add_argument("--scenario", default="full")
    parser.add_argument("--qubes", default="sys-net,sys-firewall,work")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    topology = yaml.safe_load((REPO / "pillar.example" / ("%s.sls" % args.scenario)).read_text())["qubes_firewall"]
    topology.pop("addresses", None)
    filled, _ = fill_addresses(copy.deepcopy(topology))
    qubes = args.qubes.split(",")
    with tempfile.TemporaryDirectory(prefix="qf-bench-qubesctl-") as tmp:
        tmp = pathlib.Path(tmp)
        with FormulaLab({"qubes_firewall": filled}, tmp, release=args.release) as flab:
            qc = QubesctlLab(flab.lab, topology, tmp, python=sys.executable, thin_cache=tmp / "thin")
            assert qc.qubesctl("state.apply", "qubes_firewall").returncode == 0
            run = qc.qubesctl("--skip-dom0", "--targets=" + ",".join(flab.lab.order), "state.apply", "qubes_firewall")
            assert run.returncode == 0, run.stdout
            for qube in flab.lab.order:  # converge the salt-call minions' own state too
                assert flab.apply(qube).retcode == 0
            rows = [("qube", "salt-call s", "cpu s", "qubesctl s", "cpu s", "render s", "x wall",
                     "salt-ssh calls", "ssh+scp")]
            for qube in qubes:
                local = measure(lambda q=qube: flab.apply(q), args.runs)
                render = measure(lambda q=qube: qc.render_pillar(q), args.runs)
                qc.salt_ssh_calls.clear()
                qc.calls_log.write_text("")

                def path(q=qube):
                    result = qc.qubesctl("--skip-dom0", "--targets=" + q, "state.apply", "qubes_firewall")
                    assert result.returncode == 0, result.stdout
                ssh = measure(path, args.runs)
                calls = len(qc.salt_ssh_calls) / args.runs
                trips = len(qc.wrapper_calls()) / args.runs
                rows.append((qube, "%.2f" % local[0], "%.2f" % local[1], "%.2f" % ssh[0], "%.2f" % ssh[1],
                             "%.2f" % render[0], "%.1f" % (ssh[0] / local[0]), "%g" % calls, "%g" % trips))
            fresh = QubesctlLab(flab.lab, topology, tmp / "fresh", python=sys.executable)
            first = measure(lambda: fresh.qubesctl("--skip-dom0", "--targets=" + qubes[0], "state.apply",
                                                   "qubes_firewall"), 1)
    print("qubesctl path vs salt-call --local, no-op state.apply qubes_firewall, %s, Qubes %s, median of %d"
          % (args.scenario, args.release, args.runs))
    print("python %s, %s, %d CPUs" % (platform.python_version(), platform.platform(), __import__("os").cpu_count()))
    print(table(rows))
    print("%s with a management disposable that builds Salt's thin itself (as on Qubes): %.2f s wall, %.2f s CPU"
          % (qubes[0], first[0], first[1]))


if __name__ == "__main__":
    main()
