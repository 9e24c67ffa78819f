"""
The formula in the lab, on any pillar: build the lab from the pillar's
topology (one network namespace per qube, Qubes plumbing and base ruleset),
apply the formula in every emulated qube with salt-call, apply again (nothing
may change), then probe with real packets every flow the pillar implies and
compare each with what ``qubes_firewall.check`` says it should do.

    scripts/demo.sh                    # as root: pillar.example/full.sls
    scripts/demo.sh path/to/pillar.sls # your own pillar (plain YAML)

Addresses the pillar leaves out are filled in the way Qubes hands them out
(10.137.0.N, the next free N, in the pillar's order of qubes).  The flows
probed: between the qubes that connections and port forwards name, on every
port they name (a connection without ports: port 80 as a sample), each way;
from each of those qubes out to a LAN host; and from outside to every port
forward, on each interface it names and on one it does not name.  The
expectation of each comes from ``qubes_firewall.check`` (the pillar-only walk
through the planner's rules, here in-process).

Exit status: 0 when every flow behaves as check says, 1 when a flow or an
apply does not, 2 when the pillar or the machine cannot run the demo (a
message says why).  The lab is torn down in every case.
"""

import argparse
import ipaddress
import pathlib
import sys
import tempfile
import traceback

import yaml

from tests.e2e.formula_lab import Flow, FormulaLab, check_flows, matrix_text
from tests.lab import LabCommandError, OutsideHost
from tests.lab.preflight import missing_requirement
from tests.ops.helpers import flow as flow_mod
from tests.ops.helpers import model as model_mod

DEFAULT = pathlib.Path(__file__).resolve().parents[2] / "pillar.example" / "full.sls"
ANY_PORT_SAMPLE = 80
OUTBOUND_PORT = 80


class DemoError(Exception):
    """A problem the user can fix; the message says what and where."""


# ---------------------------------------------------------------- the pillar


def load_pillar(path):
    """The ``qubes_firewall`` value of the SLS file at ``path``."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DemoError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    if "{%" in text or "{{" in text:
        raise DemoError("%s uses Jinja; the demo reads plain YAML. Render it first, e.g.\n"
                        "  salt-call --local slsutil.renderer %s --out=yaml" % (path, path.resolve()))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " (line %d, column %d)" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DemoError("%s is not valid YAML%s: %s" % (path, where, problem)) from None
    if not isinstance(data, dict) or "qubes_firewall" not in data:
        keys = ", ".join(sorted(str(k) for k in data)) if isinstance(data, dict) else "none"
        raise DemoError("%s has no qubes_firewall key (top-level keys: %s); the pillar must start with\n"
                        "  qubes_firewall:\n    qubes: ..." % (path, keys))
    if not isinstance(data["qubes_firewall"], dict):
        raise DemoError("%s: qubes_firewall must be a mapping (qubes:, connections:, ...)" % path)
    return data["qubes_firewall"]


def fill_addresses(raw):
    """
    (pillar with every qube's address, {qube: address filled in}).  Leaves an
    invalid ``addresses`` value alone for the validation to report.
    """
    raw = dict(raw)
    given = raw.get("addresses")
    qubes = raw.get("qubes")
    if given is None:
        given = {}
    if not isinstance(given, dict) or not isinstance(qubes, dict):
        return raw, {}
    used = set()
    for value in given.values():
        try:
            used.add(ipaddress.IPv4Address(str(value)))
        except ValueError:
            pass
    addresses, filled, n = dict(given), {}, 2
    for name in qubes:
        if name in addresses:
            continue
        while ipaddress.IPv4Address("10.137.0.%d" % n) in used:
            n += 1
        if n > 254:
            raise DemoError("more qubes than free addresses in 10.137.0.0/24: list addresses in the pillar")
        addresses[name] = filled[name] = "10.137.0.%d" % n
        used.add(ipaddress.IPv4Address(addresses[name]))
    raw["addresses"] = addresses
    return raw, filled


def validate(raw):
    """The parsed model; DemoError with every pillar error (each names its pillar path)."""
    errors = model_mod.errors(raw)
    if errors:
        raise DemoError("invalid pillar:\n" + "\n".join("  " + str(e) for e in errors))
    return model_mod.parse(raw)


# ---------------------------------------------------------------- the flows


def outside_hosts(mdl):
    """
    For each uplink qube: a LAN host on every interface its port forwards name
    (ens6 when they name none), inside the forward's first source network when
    it has one, and one host on an interface no forward names.
    """
    hosts = []
    uplinks = [name for name, q in mdl.qubes.items() if q.netvm is None]
    for u, uplink in enumerate(uplinks):
        forwards = [f for f in mdl.port_forwards if mdl.uplink(f.qube) == uplink]
        names = []
        for fwd in forwards:
            for ifname in fwd.interfaces:
                if ifname not in names:
                    names.append(ifname)
        names = names or ["ens6"]
        for i, ifname in enumerate(names + [_unnamed(names)]):
            net = None
            for fwd in forwards:
                if ifname in fwd.interfaces or not fwd.interfaces:
                    if fwd.sources:
                        net = ipaddress.IPv4Network(fwd.sources[0])
                        break
            if net is None or net.num_addresses < 64 or i == len(names):
                net = ipaddress.IPv4Network("192.168.%d.0/24" % (1 + 10 * u + i))
            host, uplink_ip = net.network_address + 50, net.network_address + 10
            label = ("lan" if i < len(names) else "other") + ("" if u == 0 else str(u + 1)) + \
                ("" if i == 0 or i == len(names) else "-%d" % (i + 1))
            hosts.append(OutsideHost(name=label, uplink=uplink, ifname=ifname, host_ip="%s/%d" % (host, net.prefixlen),
                                     uplink_ip="%s/%d" % (uplink_ip, net.prefixlen)))
    return hosts


def _unnamed(names):
    for candidate in ("ens7", "ens8", "eth9"):
        if candidate not in names:
            return candidate
    return "eth10"


def _check(mdl, source, target, port, proto, **kwargs):
    return flow_mod.check(mdl, source, target, port, proto, **kwargs)


def expected_flows(mdl, hosts):
    """([Flow with the expectation check gives], {(node, proto, port) to serve})."""
    endpoints, ports = [], []

    def add(lst, item):
        if item not in lst:
            lst.append(item)

    for conn in mdl.connections:
        add(endpoints, conn.source)
        add(endpoints, conn.target)
        proto = conn.proto or "tcp"
        for port in (conn.ports or (ANY_PORT_SAMPLE,)):
            add(ports, (proto if proto in ("tcp", "udp") else "tcp", port))
    for fwd in mdl.port_forwards:
        add(endpoints, fwd.qube)
        add(ports, (fwd.proto, fwd.port))
    if not endpoints:  # e.g. a VPN chain with nothing opened: every client qube
        endpoints = [name for name, q in mdl.qubes.items() if not q.provides_network]
    flows, servers = [], set()
    for source in endpoints:
        for target in endpoints:
            if source == target:
                continue
            for proto, port in ports:
                verdict = _check(mdl, source, target, port, proto)
                expect = "%s:%d" % (target, port) if verdict["allowed"] else None
                flows.append(Flow("%s -> %s" % (source, target), source, target, port, expect, proto))
                servers.add((target, proto, port))
    for qube in endpoints:
        uplink = mdl.uplink(qube)
        lan = next((h for h in hosts if h.uplink == uplink), None)
        if lan is None or mdl.qubes[qube].provides_network:
            continue
        verdict = _check(mdl, qube, "outside", OUTBOUND_PORT, "tcp")
        expect = "%s:%d" % (lan.name, OUTBOUND_PORT) if verdict["allowed"] else None
        flows.append(Flow("%s -> the LAN" % qube, qube, lan.host_ip.split("/")[0], OUTBOUND_PORT, expect))
        servers.add((lan.name, "tcp", OUTBOUND_PORT))
    for fwd in mdl.port_forwards:
        uplink = mdl.uplink(fwd.qube)
        for host in (h for h in hosts if h.uplink == uplink):
            source_ip = host.host_ip.split("/")[0]
            verdict = _check(mdl, "outside", fwd.qube, fwd.external_port, fwd.proto,
                             interface=host.ifname, source_ip=source_ip)
            reaches = verdict.get("reaches")
            expect = "%s:%d" % (reaches["node"], reaches["port"]) if verdict["allowed"] and reaches else None
            flows.append(Flow("forward %s from %s on %s" % (fwd.name, host.name, host.ifname), host.name,
                              host.uplink_ip.split("/")[0], fwd.external_port, expect, fwd.proto))
            servers.add((fwd.qube, fwd.proto, fwd.port))
    return flows, servers


# ---------------------------------------------------------------- the run


def show_plan(flab):
    for qube in flab.lab.order:
        rc, out, _ = flab.minion(qube).run("qubes_firewall.show_plan")
        if not isinstance(out, dict) or "chains" not in out:
            continue
        print("  %s  (persisted in %s)" % (qube, out.get("persist_file")))
        for chain, body in out["chains"].items():
            for rule in body.get("rules", []):
                print("      %-16s %s" % (chain, rule))


def run(raw, workdir):
    raw, filled = fill_addresses(raw)
    mdl = validate(raw)
    if filled:
        print("Addresses the pillar leaves out, filled in as Qubes would hand them out:")
        for name, addr in filled.items():
            print("  %-16s %s" % (name, addr))
        print()
    hosts = outside_hosts(mdl)
    flows, servers = expected_flows(mdl, hosts)
    ok = True
    print("Building the lab (one network namespace per qube)...")
    with FormulaLab({"qubes_firewall": raw}, workdir, outside=hosts) as flab:
        for qube in flab.lab.order:
            spec = flab.lab.spec(qube)
            print("  %-16s %-13s netvm=%s" % (qube, spec.ip, spec.netvm or "none (uplink)"))
        for host in hosts:
            print("  %-16s %-13s outside, on %s:%s" % (host.name, host.host_ip.split("/")[0], host.uplink, host.ifname))
        print("\nApplying the formula in every qube (salt-call --local state.apply qubes_firewall)...")
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
            ok &= not result.changed and result.retcode == 0
            print("  %-16s %s" % (qube, again))
        if not flows:
            print("\nThe pillar implies no flow to probe.")
        else:
            for node, proto, port in sorted(servers):
                (flab.lab.serve_tcp if proto == "tcp" else flab.lab.serve_udp)(node, port)
            results = check_flows(flab.lab, flows)
            print("\nEvery flow the pillar implies, expected by qubes_firewall.check, probed with real packets:")
            print(matrix_text(results))
            wrong = [(f, got) for f, got in results if got != f.expect]
            for f, got in wrong:
                print("MISMATCH: %s (%s %s/%d): check says %s, the packet %s" % (
                    f.label, f.dest, f.proto, f.port, "it reaches " + f.expect if f.expect else "it is blocked",
                    "reached " + got if got else "was blocked"))
            ok &= not wrong
    print("\nLab torn down.")
    print("RESULT: %s" % ("all as expected" if ok else "MISMATCH"))
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pillar", nargs="?", help="pillar SLS (plain YAML) with a qubes_firewall key")
    parser.add_argument("--debug", action="store_true", help="show a traceback on unexpected errors")
    args = parser.parse_args(argv)
    try:
        raw = load_pillar(args.pillar or DEFAULT)
        reason = missing_requirement()
        if reason:
            raise DemoError("the demo cannot build its lab here: %s" % reason.replace("lab tests", "it"))
        with tempfile.TemporaryDirectory(prefix="qubes-firewall-demo-") as workdir:
            return run(raw, workdir)
    except DemoError as exc:
        print("demo: %s" % exc, file=sys.stderr)
        return 2
    except LabCommandError as exc:
        print("demo: building the lab failed %s" % str(exc).splitlines()[0], file=sys.stderr)
        print("      %s" % (exc.stderr or "").strip().replace("\n", "\n      "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted; the lab is torn down", file=sys.stderr)
        return 2
    except Exception as exc:  # the promise: a message, never a traceback (unless asked for)
        if args.debug:
            traceback.print_exc()
        print("demo: unexpected error: %s: %s (run with --debug for the traceback)"
              % (type(exc).__name__, exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
