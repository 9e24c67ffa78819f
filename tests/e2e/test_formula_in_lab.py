"""
The formula end to end (issue 3): real salt-call in every emulated qube, real
nftables, real packets.  Each test reads like the manual page scenario it replaces.
"""

import copy
import os
import shutil
import subprocess

import pytest

from tests.e2e.formula_lab import FormulaLab, check_flows, matrix_text
from tests.e2e.full_example import FLOWS, full_pillar, start_servers
from tests.modules import plan


def assert_flows(lab, flows):
    results = check_flows(lab, flows)
    assert all(got == flow.expect for flow, got in results), "\n" + matrix_text(results)


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """The full example applied once in every qube (shared by the read-only tests)."""
    flab = FormulaLab(full_pillar(), tmp_path_factory.mktemp("e2e-full"))
    try:
        first = flab.apply_all()
        start_servers(flab.lab)
        yield flab, first
    finally:
        flab.close()


@pytest.mark.smoke
def test_first_apply_succeeds_everywhere_and_the_second_changes_nothing(applied):
    flab, first = applied
    for qube, result in first.items():
        assert result.retcode == 0 and not result.failed, (qube, result.failed)
    assert first["sys-net"].changed and first["web"].changed and first["build"].changed
    before = flab.snapshot_all()
    second = flab.apply_all()
    for qube, result in second.items():
        assert result.retcode == 0 and result.changed == {}, (qube, result.changed)
    assert flab.snapshot_all() == before


@pytest.mark.smoke
def test_connectivity_matrix_of_the_full_example(applied):
    """Port forward from the LAN through every hop; work -> build one way; nothing else."""
    flab, _ = applied
    assert_flows(flab.lab, FLOWS)


def test_test_mode_reports_without_writing(tmp_path):
    with FormulaLab(full_pillar(), tmp_path) as flab:
        before = flab.snapshot_all()
        results = flab.apply_all(test=True)
        assert flab.snapshot_all() == before
        net = results["sys-net"]
        assert net.retcode == 0
        assert net.states["qubes_firewall-runtime-rules"]["result"] is None
        nft = net.states["qubes_firewall-runtime-rules"]["changes"]["nft"]
        assert "port_forwards:https" in nft["entries added"] and "chains added" in nft["objects"], nft
        assert nft["added"] > 0 and nft["removed"] == 0 and nft["kept"] == 0, nft
        # the reported change is exactly what the real run then makes
        real = flab.apply("sys-net")
        assert real.states["qubes_firewall-runtime-rules"]["changes"]["nft"] == nft


def test_four_hop_forward_through_the_vpn_sandwich(tmp_path):
    """LAN -> sys-net -> sys-firewall -> sys-vpn -> sys-firewall-2 -> work, port changed at the last hop."""
    pillar = full_pillar()
    pillar["qubes_firewall"]["port_forwards"].append(
        {"name": "ssh-work", "qube": "work", "proto": "tcp", "port": 22, "external_port": 2222,
         "sources": ["192.168.1.0/24"]})
    pillar["qubes_firewall"]["port_forwards"].append(
        {"name": "dns-build", "qube": "build", "proto": "udp", "port": 5353, "external_port": 53})
    with FormulaLab(pillar, tmp_path) as flab:
        assert not any(r.failed for r in flab.apply_all().values())
        flab.lab.serve_tcp("work", 22, report_peer=True)
        flab.lab.serve_udp("build", 5353)
        flab.lab.serve_tcp("build", 2222)
        # traffic going down is not NATed: work sees the LAN address
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 2222) == "work:22:192.168.1.50"
        assert flab.lab.probe_tcp("wan", "172.30.0.10", 2222) is None  # not from the allowed sources
        assert flab.lab.probe_udp("wan", "172.30.0.10", 53) == "build:5353"  # no interface/source limit
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 22) is None


def test_persisted_blocks_replay_after_reboot_and_firewall_restart(tmp_path):
    """Reboot every qube: the boot scripts restore the same rules; re-running them adds nothing."""
    with FormulaLab(full_pillar(), tmp_path) as flab:
        assert not any(r.failed for r in flab.apply_all().values())
        live = {q: flab.ruleset_model(q) for q in flab.lab.order}
        for qube in flab.lab.order:
            flab.lab.reboot(qube)
        # the owned part of the ruleset is exactly the runtime one (Qubes' own sets and
        # chains are rebuilt identically by the lab's boot)
        for qube in flab.lab.order:
            assert flab.ruleset_model(qube) == live[qube], qube
        for qube in ("sys-net", "sys-firewall", "sys-vpn", "sys-firewall-2"):
            flab.lab.restart_qubes_firewall(qube)
            flab.lab.restart_qubes_firewall(qube)
            assert flab.ruleset_model(qube) == live[qube], qube
        start_servers(flab.lab)
        assert_flows(flab.lab, FLOWS)
        # and Salt agrees nothing drifted
        assert all(r.changed == {} for r in flab.apply_all().values())


def test_removing_a_forward_removes_its_rules_and_keeps_user_rules(tmp_path):
    with FormulaLab(full_pillar(), tmp_path) as flab:
        flab.lab.sh("sys-net", 'nft add rule ip qubes custom-input tcp dport 9999 accept comment "mine"')
        flab.apply_all()
        start_servers(flab.lab)
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 443) == "web:443"
        pillar = full_pillar()
        pillar["qubes_firewall"]["port_forwards"] = []
        flab.set_pillar(pillar)
        results = flab.apply_all()
        assert results["sys-net"].changed and results["sys-firewall"].changed and results["web"].changed
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 443) is None
        assert flab.lab.probe_tcp("work", "build", 22) == "build:22"
        rules = flab.lab.chain_rules("sys-net", "custom-input")
        assert any("9999" in r for r in rules)
        assert "qf-nat" not in flab.lab.run("sys-net", ["nft", "list", "ruleset"]).stdout
        # the boot block changed too: after a reboot the forward stays gone
        flab.lab.reboot("sys-net")
        assert "qf-nat" not in flab.lab.run("sys-net", ["nft", "list", "ruleset"]).stdout


def test_bad_pillar_fails_before_anything_changes(tmp_path):
    with FormulaLab(full_pillar(), tmp_path) as flab:
        flab.apply_all()
        before = flab.snapshot_all()
        bad = full_pillar()
        bad["qubes_firewall"]["port_forwards"][0]["sources"] = ["192.168.1.0/24; flush ruleset"]
        bad["qubes_firewall"]["port_forwards"][0]["port"] = 8443
        flab.set_pillar(bad)
        for _qube, result in flab.apply_all().items():
            assert result.retcode != 0
            assert "qubes_firewall:port_forwards:0:sources:0" in result.states["qubes_firewall-validated"]["comment"]
        assert flab.snapshot_all() == before


def test_a_transaction_nft_refuses_leaves_everything_byte_identical(tmp_path):
    """
    A stale chain in the formula's namespace that something else still jumps to
    cannot be deleted: nft -c refuses the whole transaction (which also renames
    the forward's chains), and the ruleset and files stay byte-identical.
    """
    pillar = full_pillar()
    with FormulaLab(pillar, tmp_path) as flab:
        flab.apply_all()
        flab.lab.nft_load("sys-net", "add chain ip qubes qf-legacy\n"
                                     "add rule ip qubes custom-forward jump qf-legacy\n")
        changed = copy.deepcopy(pillar)
        changed["qubes_firewall"]["port_forwards"][0]["name"] = "web-https"
        flab.set_pillar(changed)
        before = flab.snapshot("sys-net")
        result = flab.apply("sys-net")
        assert result.retcode != 0
        comment = result.states["qubes_firewall-runtime-rules"]["comment"]
        assert "nothing was changed" in comment
        assert result.states["qubes_firewall-persisted-rules"]["changes"] == {}
        assert flab.snapshot("sys-net") == before


def test_connection_across_branches_through_masquerading_hops(tmp_path):
    """work (behind sys-firewall-2 and the VPN qube) -> web on sys-firewall: allowed by the masqueraded source."""
    pillar = full_pillar()
    pillar["qubes_firewall"]["connections"].append({"from": "work", "to": "web", "proto": "tcp", "ports": [8443]})
    with FormulaLab(pillar, tmp_path) as flab:
        assert not any(r.failed for r in flab.apply_all().values())
        flab.lab.serve_tcp("web", 8443, report_peer=True)
        assert flab.lab.probe_tcp("work", "web", 8443) == "web:8443:10.137.0.7"
        assert flab.lab.probe_tcp("web", "work", 22) is None
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 8443) is None


def test_disposable_sys_firewall_gets_its_rules_from_its_template(tmp_path):
    """
    Qubes 4.2 installs sys-firewall as a named disposable: its /rw is copied
    from default-dvm at each start.  The formula run on default-dvm writes the
    boot block; a restart of sys-firewall (new /rw from the template, boot)
    brings the port forward back.
    """
    pillar = full_pillar()
    pillar["qubes_firewall"]["qubes"]["sys-firewall"]["dispvm_template"] = "default-dvm"
    with FormulaLab(pillar, tmp_path) as flab:
        assert not any(r.failed for r in flab.apply_all().values())
        template = flab.apply("default-dvm")
        assert template.retcode == 0 and template.changed
        assert not (flab.rw_config("sys-firewall") / "qubes-firewall-user-script").exists()
        start_servers(flab.lab)
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 443) == "web:443"
        # the disposable restarts: /rw from the template, then boot
        rw = flab.rw_config("sys-firewall")
        for item in flab.rw_config("default-dvm").iterdir():
            target = rw / item.name
            if item.is_dir():  # the record of the last apply (qubes-firewall-formula/)
                shutil.copytree(item, target, dirs_exist_ok=True)
                continue
            target.write_bytes(item.read_bytes())
            target.chmod(item.stat().st_mode)
        flab.lab.reboot("sys-firewall")
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 443) == "web:443"
        assert flab.apply("sys-firewall").changed == {}


def test_one_nft_read_and_one_atomic_write_per_run(tmp_path):
    """Counted with an nft shim first on salt-call's PATH: read, load (atomic); a no-op run only reads."""
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "nft.log"
    real = shutil.which("nft")
    (shim / "nft").write_text('#!/bin/sh\necho "$*" >> "%s"\nexec %s "$@"\n' % (log, real))
    (shim / "nft").chmod(0o755)
    with FormulaLab(full_pillar(), tmp_path / "lab") as flab:
        minion = flab.minion("sys-firewall")
        minion.env = {"PATH": "%s:%s" % (shim, os.environ["PATH"])}
        log.write_text("")
        minion.apply()
        calls = log.read_text().splitlines()
        assert calls == ["-j list ruleset", "-f -"], calls
        assert calls[0] == "-j list ruleset"
        log.write_text("")
        rc, states = minion.apply()
        assert rc == 0 and all(not s["changes"] for s in states.values())
        assert log.read_text().splitlines() == ["-j list ruleset"]


SEED_FORWARD = {"qubes_firewall": {
    "addresses": {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "web": "10.137.0.11"},
    "qubes": {"sys-net": {"netvm": None}, "sys-firewall": {"netvm": "sys-net"}, "web": {"netvm": "sys-firewall"}},
    "port_forwards": [{"name": "https", "qube": "web", "proto": "tcp", "port": 443,
                       "interfaces": ["ens6"], "sources": ["192.168.1.0/24"]}]}}
# the seed's port forward printed 136 lines per qube under test=True before the
# output was made compact (each rule three times); now ~82, most of it Salt's own
# per-state lines
MAX_LINES = 90


def highstate_output(flab, qube, *args):
    argv = flab.minion(qube).argv("state.apply", "qubes_firewall", *args) + ["--out=highstate"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_output_shows_each_change_once_and_one_summary_line_per_qube(tmp_path):
    with FormulaLab(SEED_FORWARD, tmp_path) as flab:
        for args, phrase in ((["test=True"], "would add"), ([], "added")):
            for qube in ("sys-net", "sys-firewall", "web"):
                out = highstate_output(flab, qube, *args)
                assert len(out.splitlines()) <= MAX_LINES, out
                p = plan.plan_qube(flab.model, qube)
                texts = [r.body for c in p.chains for r in c.rules] + [e.text for s in p.sets for e in s.elements]
                assert texts
                for text in texts + ["port_forwards:https"]:
                    assert out.count(text) <= 1, (text, out)
                summary = [line.strip() for line in out.splitlines() if line.strip().startswith("Comment: %s:" % qube)]
                assert len(summary) == 1 and phrase in summary[0] and "boot replay" in summary[0], out
        # the no-op run: the summary says so, and nothing is listed as changed
        out = highstate_output(flab, "web")
        assert "Comment: web: 2 kept, nothing to change (nft)" in out, out
        assert "changed=" not in out, out
