"""
The main job on its embedded default: build the lab from pillar.example/full.sls
(one network namespace per qube, Qubes 4.2 plumbing and base ruleset), apply the
formula in every emulated qube with salt-call, apply again (nothing may change),
then probe every flow the pillar allows or forbids and print the matrix.

    scripts/demo.sh                    # as root
    scripts/demo.sh path/to/pillar.sls # your own pillar (needs addresses for every qube)

Exit status 0 when every flow behaves as expected (for the default pillar), 1
otherwise.  The lab is torn down in every case.
"""

import argparse
import pathlib
import sys
import tempfile

import yaml

from tests.e2e.formula_lab import FormulaLab, check_flows, matrix_text
from tests.e2e.full_example import FLOWS, full_pillar, start_servers


def show_plan(flab):
    for qube in flab.lab.order:
        rc, out, _ = flab.minion(qube).run("qubes_firewall.show_plan")
        if not out:
            continue
        print("  %s  (persisted in %s)" % (qube, out["persist_file"]))
        for chain, body in out["chains"].items():
            for rule in body["rules"]:
                print("      %-16s %s" % (chain, rule))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pillar", nargs="?", help="pillar SLS (YAML) with a qubes_firewall key")
    args = parser.parse_args(argv)
    pillar = yaml.safe_load(pathlib.Path(args.pillar).read_text()) if args.pillar else full_pillar()
    with tempfile.TemporaryDirectory(prefix="qubes-firewall-demo-") as workdir:
        print("Building the lab (one network namespace per qube)...")
        with FormulaLab(pillar, workdir) as flab:
            for qube in flab.lab.order:
                spec = flab.lab.spec(qube)
                print("  %-16s %-13s netvm=%s" % (qube, spec.ip, spec.netvm or "none (uplink)"))
            for host in flab.outside:
                print("  %-16s %-13s outside, on %s:%s" % (host.name, host.host_ip.split("/")[0],
                                                           host.uplink, host.ifname))
            print("\nApplying the formula in every qube (salt-call --local state.apply qubes_firewall)...")
            ok = True
            for qube, result in flab.apply_all().items():
                changed = ", ".join(sorted(result.changed)) or "no changes"
                status = "ok" if result.retcode == 0 and not result.failed else "FAILED"
                ok &= status == "ok"
                print("  %-16s %-6s %s" % (qube, status, changed))
                for sid, comment in result.failed.items():
                    print("      %s: %s" % (sid, comment))
            print("\nRules the formula owns, per qube:")
            show_plan(flab)
            print("\nApplying again (must change nothing)...")
            for qube, result in flab.apply_all().items():
                again = "no changes" if not result.changed else "CHANGED: " + ", ".join(sorted(result.changed))
                ok &= not result.changed
                print("  %-16s %s" % (qube, again))
            if args.pillar:
                print("\n(custom pillar: no connectivity expectations to probe)")
                return 0 if ok else 1
            start_servers(flab.lab)
            results = check_flows(flab.lab, FLOWS)
            print("\nConnectivity verified with real packets:")
            print(matrix_text(results))
            ok &= all(got == flow.expect for flow, got in results)
        print("\nLab torn down.")
    print("RESULT: %s" % ("all as expected" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
