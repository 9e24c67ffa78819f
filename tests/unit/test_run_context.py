"""
One run parses the pillar once, plans each qube once and reads nft once: the
states share them through ``__context__`` (the real module files, wired as
Salt's loader wires them, with counting doubles for the pure core and nft).
"""

import subprocess
import sys

from tests.unit.states_double import Run


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
