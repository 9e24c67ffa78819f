"""
Every pillar.example scenario applied in the lab (issue 6): it applies cleanly
in every qube, a second run changes nothing, and the flows its comments
promise pass while the reverse stays closed; after every qube reboots (a
disposable restarting from its disposable template's /rw, as Qubes does) and
qubes-firewall restarts, the same flows pass.  The examples carry no
addresses; the lab supplies them (tests/examples.py).  (pillar.example/full.sls
has its own module; connect-tcp.sls runs in tests/connect_tcp/test_lab_connect_tcp.py.)
"""

import shutil

import pytest

from tests import examples
from tests.e2e.formula_lab import Flow, FormulaLab, check_flows, matrix_text
from tests.lab.qubes_base import RELEASES

VPN_FLOWS = [
    Flow("work reaches the LAN through four hops", "work", "lan", 80, "lan:80"),
    Flow("the VPN qube cannot open connections to work", "sys-vpn", "work", 22, None),
    Flow("nothing opened from outside", "lan", "192.168.1.10", 22, None),
]

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
    "vpn-sandwich": ([("lan", 80), ("work", 22)], VPN_FLOWS),
    "default-43": ([("lan", 80), ("work", 22)], VPN_FLOWS),
}


def restart_disposable(flab, qube, template):
    """A named disposable starts with a fresh /rw/config: a copy of its disposable template's."""
    rw = flab.rw_config(qube)
    for item in rw.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in flab.rw_config(template).iterdir():
        if item.is_dir():
            shutil.copytree(item, rw / item.name, symlinks=True)
        else:
            shutil.copy2(item, rw / item.name)


@pytest.mark.parametrize("release", RELEASES, ids=["qubes-" + r for r in RELEASES])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_example_applies_idempotently_and_keeps_its_promises(name, release, tmp_path):
    """In both releases, then a reboot and a qubes-firewall restart restore the same flows."""
    assert "addresses" not in examples.raw(name)
    pillar = examples.sls(name)
    servers, flows = SCENARIOS[name]
    with FormulaLab(pillar, tmp_path, release=release) as flab:
        disposables = {q: spec.dispvm_template for q, spec in flab.model.qubes.items() if spec.dispvm_template}
        templates = sorted(set(disposables.values()))
        first = dict(flab.apply_all(), **{t: flab.apply(t) for t in templates})
        assert all(r.retcode == 0 and not r.failed for r in first.values()), {q: r.failed for q, r in first.items()}
        second = dict(flab.apply_all(), **{t: flab.apply(t) for t in templates})
        assert all(r.changed == {} for r in second.values()), {q: r.changed for q, r in second.items()}
        for node, port in servers:
            flab.lab.serve_tcp(node, port)
        results = check_flows(flab.lab, flows)
        assert all(got == flow.expect for flow, got in results), "\n" + matrix_text(results)
        flab.lab.stop_servers()
        for qube in flab.lab.order:
            if qube in disposables:
                restart_disposable(flab, qube, disposables[qube])
            flab.lab.reboot(qube)
            if flab.lab.spec(qube).runs_qubes_firewall:
                flab.lab.restart_qubes_firewall(qube)
        for node, port in servers:
            flab.lab.serve_tcp(node, port)
        results = check_flows(flab.lab, flows)
        assert all(got == flow.expect for flow, got in results), "after reboot\n" + matrix_text(results)
        # and Salt agrees nothing drifted, the disposables' fresh /rw included
        assert all(r.changed == {} for r in flab.apply_all().values())


def test_every_example_is_covered():
    assert set(examples.names()) == set(SCENARIOS) | {"full", "connect-tcp"}
