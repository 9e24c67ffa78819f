"""
Print the real outputs docs/operations.md shows (needs root): builds the lab from
pillar.example/full.sls, applies the formula in every qube, sends a few packets, then runs
each documented command with salt-call in its qube.

    .venv/salt-3008/bin/python -m tests.ops.capture_docs > /tmp/ops-output.txt
"""

import subprocess
import sys
import tempfile
import time

from tests.e2e.formula_lab import FormulaLab
from tests.e2e.full_example import full_pillar, start_servers
from tests.ops.test_ops_lab import configure_backups


def salt(flab, qube, *args, out="nested"):
    """salt-call in ``qube`` with Salt's default outputter for functions (``nested``), or ``out``."""
    argv = flab.minion(qube).argv(*args) + ["--out=" + out]
    proc = subprocess.run(argv, capture_output=True, text=True)
    shown = " ".join(a for a in args)
    print("### [%s] salt-call %s   (exit %d)" % (qube, shown, proc.returncode))
    print(proc.stdout.rstrip() or proc.stderr.rstrip())
    print()
    return proc


def shell(flab, qube, cmd):
    proc = flab.lab.sh(qube, cmd, check=False)
    print("### [%s] %s   (exit %d)" % (qube, cmd, proc.returncode))
    print((proc.stdout + proc.stderr).rstrip())
    print()


def tcpdump(flab, qube, cmd):
    proc = subprocess.Popen(["ip", "netns", "exec", flab.lab.netns(qube)] + cmd.split(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)
    flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2)
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    print("### [%s] %s" % (qube, cmd))
    print(out.rstrip())
    print()


def main():
    with tempfile.TemporaryDirectory(prefix="qf-ops-docs-") as root:
        with FormulaLab(full_pillar(), root) as flab:
            configure_backups(flab, root)
            flab.apply_all()
            start_servers(flab.lab)
            for _ in range(3):
                flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2)
            flab.lab.probe_tcp("work", "build", 22, timeout=2)
            salt(flab, "sys-firewall", "qubes_firewall.status")
            salt(flab, "sys-firewall", "qubes_firewall.status", out="json")
            for qube in ("sys-net", "sys-firewall", "web"):
                salt(flab, qube, "qubes_firewall.status", "origin=port_forwards:https")
            shell(flab, "sys-net", "nft list chain ip qubes qf-nat; nft list maps ip")
            salt(flab, "sys-firewall", "qubes_firewall.drift")
            shell(flab, "sys-firewall", "nft add rule ip qubes qf-forward tcp dport 9999 accept")
            salt(flab, "sys-firewall", "qubes_firewall.drift")
            rc_local = flab.lab.rw_config("web") / "rc.local"
            rc_local.write_text(rc_local.read_text().split("# BEGIN qubes_firewall:rules")[0])
            salt(flab, "web", "qubes_firewall.drift")
            salt(flab, "sys-firewall", "state.apply", "qubes_firewall", "test=True", out="highstate")
            salt(flab, "sys-firewall", "state.apply", "qubes_firewall", out="highstate")
            salt(flab, "sys-firewall", "qubes_firewall.drift")
            salt(flab, "sys-firewall", "qubes_firewall.drift", "fmt=data", out="yaml")
            salt(flab, "sys-vpn", "qubes_firewall.backup", out="yaml")
            time.sleep(0.01)
            salt(flab, "sys-vpn", "qubes_firewall.backup", out="yaml")
            salt(flab, "sys-vpn", "qubes_firewall.backups", out="yaml")
            shell(flab, "sys-vpn", "nft flush chain ip qubes custom-input")
            salt(flab, "sys-vpn", "qubes_firewall.revert", out="yaml")
            salt(flab, "web", "qubes_firewall.diagram", out="newline_values_only")
            salt(flab, "work", "qubes_firewall.check", "work", "build", "22")
            salt(flab, "work", "qubes_firewall.check", "build", "work", "22")
            salt(flab, "work", "qubes_firewall.check", "build", "work", "22", out="json")
            salt(flab, "work", "qubes_firewall.check", "outside", "web", "443")
            salt(flab, "work", "qubes_firewall.check", "lan", "sys-net", "443", "interface=ens6",
                 "source_ip=192.168.1.50")
            tcpdump(flab, "sys-firewall", "tcpdump -l -c 2 -i any -nn tcp dst port 443")
        return 0


if __name__ == "__main__":
    sys.exit(main())
