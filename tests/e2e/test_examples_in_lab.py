"""
Every pillar.example scenario applied in the lab (issue 6): it applies cleanly
in every qube, a second run changes nothing, and the flows its comments
promise pass while the reverse stays closed.  (pillar.example/full.sls has its
own module; connect-tcp.sls runs in tests/connect_tcp/test_lab_connect_tcp.py.)
"""

import pytest
import yaml

from tests.e2e.formula_lab import Flow, FormulaLab, check_flows, matrix_text
from tests.lab.qubes_base import RELEASES
from tests.modules import REPO

SCENARIOS = {
    "port-forward": (
        [("web", 443), ("web", 22)],
        [Flow("LAN -> sys-net:443 reaches web", "lan", "192.168.1.10", 443, "web:443"),
         Flow("other interface refused", "wan", "172.30.0.10", 443, None),
         Flow("other port refused", "lan", "192.168.1.10", 22, None)],
    ),
    "qube-to-qube": (
        [("build", 22), ("work", 22)],
        [Flow("work -> build ssh", "work", "build", 22, "build:22"),
         Flow("build -> work refused", "build", "work", 22, None)],
    ),
    "vpn-sandwich": (
        [("lan", 80), ("build", 22)],
        [Flow("work reaches the LAN through four hops", "work", "lan", 80, "lan:80"),
         Flow("build reaches the LAN", "build", "lan", 80, "lan:80"),
         Flow("no qube-to-qube traffic", "work", "build", 22, None),
         Flow("nothing opened from outside", "lan", "192.168.1.10", 22, None)],
    ),
}


@pytest.mark.parametrize("release", RELEASES, ids=["qubes-" + r for r in RELEASES])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_example_applies_idempotently_and_keeps_its_promises(name, release, tmp_path):
    """In both releases, then a reboot and a qubes-firewall restart restore the same flows."""
    pillar = yaml.safe_load((REPO / "pillar.example" / ("%s.sls" % name)).read_text())
    servers, flows = SCENARIOS[name]
    with FormulaLab(pillar, tmp_path, release=release) as flab:
        first = flab.apply_all()
        assert all(r.retcode == 0 and not r.failed for r in first.values()), {q: r.failed for q, r in first.items()}
        second = flab.apply_all()
        assert all(r.changed == {} for r in second.values()), {q: r.changed for q, r in second.items()}
        for node, port in servers:
            flab.lab.serve_tcp(node, port)
        results = check_flows(flab.lab, flows)
        assert all(got == flow.expect for flow, got in results), "\n" + matrix_text(results)
        flab.lab.stop_servers()
        for qube in flab.lab.order:
            flab.lab.reboot(qube)
            if flab.lab.spec(qube).runs_qubes_firewall:
                flab.lab.restart_qubes_firewall(qube)
        for node, port in servers:
            flab.lab.serve_tcp(node, port)
        results = check_flows(flab.lab, flows)
        assert all(got == flow.expect for flow, got in results), "after reboot\n" + matrix_text(results)


def test_every_example_is_covered():
    names = {p.stem for p in (REPO / "pillar.example").glob("*.sls")}
    assert names == set(SCENARIOS) | {"full", "connect-tcp"}
