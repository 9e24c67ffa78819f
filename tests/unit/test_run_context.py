"""
One run parses the pillar once, plans each qube once and reads nft once: the
states share them through ``__context__`` (the real module files, wired as
Salt's loader wires them, with counting doubles for the pure core and nft).
"""

import subprocess
import sys

import pytest

from tests import examples
from tests.modules import core, load_file

qf_model, qf_plan, qf_nft, qf_run = core("model"), core("plan"), core("nft"), core("run")
# the states' names since the rename (the old ones stay as deprecated aliases: tests/unit/test_state_data.py)
NEW_NAMES = {"locked": "run_locked", "runtime_rules": "rules_managed", "persisted_rules": "boot_replay_managed",
             "custom_persist_replay": "custom_persist_replay_managed",
             "connect_tcp_bindings": "connect_tcp_bindings_managed", "summary": "run_summary"}


class Run:
    def __init__(self, tmp_path, minion_id, pillar, monkeypatch):
        self.context, self.calls = {}, {}
        self.opts = {"id": minion_id, "test": True, "qubes_firewall_state_dir": str(tmp_path / "state"),
                     "qubes_firewall_systemd_run_dir": str(tmp_path / "no-systemd")}
        self.pillar = pillar
        self.nft_doc = {"nftables": [
            {"chain": {"family": "ip", "table": "qubes", "name": n, "handle": i}}
            for i, n in enumerate(("custom-input", "custom-forward"), 1)]}
        monkeypatch.setattr(qf_nft, "read", lambda: self.nft_doc)
        monkeypatch.setattr(qf_nft, "check", lambda script: True)  # nft -c of test mode
        for module, name in ((qf_model, "parse"), (qf_plan, "plan_qube"), (qf_nft, "read")):
            key = "%s.%s" % (module.__name__.lstrip("_"), name)
            monkeypatch.setattr(module, name, self._count(key, getattr(module, name)))
        self.states = load_file("_states/qubes_firewall.py", "qf_ctx_test_states")
        self.states.__salt__, self.states.__opts__, self.states.__pillar__ = {}, self.opts, self.pillar
        self.states.__context__ = self.context

    def run(self):
        """The run the execution module and the states build from Salt's dunders."""
        return qf_run.Run(self.opts, self.pillar, self.context)

    def _count(self, key, func):
        def counted(*args, **kwargs):
            self.calls[key] = self.calls.get(key, 0) + 1
            return func(*args, **kwargs)
        return counted

    def apply(self):
        """The qube part of init.sls, in its order."""
        out = {}
        for state in ("locked", "validated", "runtime_rules", "persisted_rules", "custom_persist_replay",
                      "connect_tcp_bindings", "summary"):
            function = NEW_NAMES.get(state, state)
            out[state] = getattr(self.states, function)("qubes_firewall-" + state)
        return out


@pytest.fixture
def pillar(tmp_path):
    data = examples.sls("full")
    # sys-firewall as a plain qube (a disposable's run leaves its /rw alone)
    data["qubes_firewall"]["qubes"]["sys-firewall"].pop("dispvm_template")
    data["qubes_firewall"]["lookup"] = {"rw_config": str(tmp_path / "rw"), "state_dir": str(tmp_path / "state"),
                                        "etc_qubes": str(tmp_path / "etc"), "systemd_dir": str(tmp_path / "systemd")}
    return data


def test_one_parse_one_plan_per_qube_and_one_nft_read_per_run(tmp_path, pillar, monkeypatch):
    run = Run(tmp_path, "sys-firewall", pillar, monkeypatch)
    results = run.apply()
    assert all(r["result"] is not False for r in results.values()), results
    assert results["runtime_rules"]["changes"]["nft"]["added"] > 0
    assert run.calls == {"qubes_firewall_model.parse": 1, "qubes_firewall_plan.plan_qube": 1,
                         "qubes_firewall_nft.read": 1}


def test_a_changed_pillar_is_parsed_again(tmp_path, pillar, monkeypatch):
    run = Run(tmp_path, "sys-firewall", pillar, monkeypatch)
    run.run().model()
    run.run().model()
    assert run.calls["qubes_firewall_model.parse"] == 1
    pillar["qubes_firewall"]["port_forwards"][0]["port"] = 8443
    assert run.run().qube_plan("web").rule_count > 0
    assert run.calls["qubes_firewall_model.parse"] == 2


def test_a_planner_refusal_stops_the_run_at_validation(tmp_path, pillar, monkeypatch):
    del pillar["qubes_firewall"]["addresses"]["web"]
    run = Run(tmp_path, "web", pillar, monkeypatch)
    ret = run.states.validated("v")
    assert ret["result"] is False
    assert "qubes_firewall:addresses:web" in ret["comment"]


def test_a_missing_pillar_fails_validation_and_names_a_near_miss(tmp_path, pillar, monkeypatch):
    run = Run(tmp_path, "web", {"qubes-firewall": pillar["qubes_firewall"]}, monkeypatch)
    ret = run.states.validated("v")
    assert ret["result"] is False
    assert "no qubes_firewall pillar" in ret["comment"] and "qubes-firewall" in ret["comment"]


def test_the_lock_falls_back_to_a_safe_directory_when_the_pillar_is_invalid(tmp_path, monkeypatch):
    run = Run(tmp_path, "web", {"qubes_firewall": {"lookup": {"state_dir": "/tmp/x; rm -rf /"}, "qubes": 3}}, monkeypatch)
    assert run.run().state_dir() == str(tmp_path / "state")  # the minion's default
    held = run.states.run_locked("l")
    assert held["result"] is True and str(tmp_path / "state" / "lock") in held["comment"]
    # held for the process: taking it again does not wait on itself
    assert run.run().lock()["waited"] == 0.0


def test_a_second_process_waits_for_the_lock_and_gives_up_with_a_message(tmp_path, pillar, monkeypatch):
    lock = tmp_path / "state" / "lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        "f = open(%r, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)\n"
    ) % str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = Run(tmp_path, "web", pillar, monkeypatch)
        run.opts["qubes_firewall_lock_timeout"] = 0.3
        ret = run.states.run_locked("l")
        assert ret["result"] is False
        assert "another qubes_firewall run holds %s" % lock in ret["comment"]
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the lock is free again
    assert Run(tmp_path, "web", pillar, monkeypatch).run().lock(timeout=5)["path"] == str(lock)


def test_the_run_ends_with_one_summary_line_and_shows_each_change_once(tmp_path, pillar, monkeypatch):
    run = Run(tmp_path, "sys-firewall", pillar, monkeypatch)
    results = run.apply()
    nft = results["runtime_rules"]["changes"]["nft"]
    assert results["summary"]["comment"] == (
        "sys-firewall: would add %d, remove 0, keep 0 (nft); boot replay would be updated" % nft["added"])
    assert results["summary"]["changes"] == {} and results["summary"]["result"] is True
    # the boot block replays the nft change above: one line, not the rules again
    (note,) = [v for k, v in results["persisted_rules"]["changes"].items() if "mode" not in k]
    assert note.startswith("the managed block replays the nft rules above") and "\n" not in note
    # a second run of the same process starts a fresh summary
    again = run.apply()
    assert again["summary"]["comment"].count("sys-firewall:") == 1
