"""
The formula's life on a qube, in the lab with real salt-call runs: leftovers
of a qube the pillar no longer names are reported and removed, clean removes
everything the formula made (even with a broken pillar), concurrent runs
serialise on the minion's lock, a run killed mid-way leaves nothing behind
after the next one, and a failing run writes nothing anywhere.
"""

import copy
import json
import os
import shutil
import signal
import subprocess
import time

from tests.e2e.formula_lab import FormulaLab
from tests.e2e.full_example import full_pillar

BEGIN = "# BEGIN qubes_firewall:"
TMP_TAG = ".qubes_firewall.tmp."


def owned(flab, qube):
    """The formula's chains and jumps in the qube: ({chain names}, [(custom chain, target)])."""
    doc = flab.lab.nft_json(qube)
    chains, jumps = set(), []
    for item in doc["nftables"]:
        if "chain" in item and item["chain"]["table"] == "qubes" and item["chain"]["name"].startswith("qf-"):
            chains.add(item["chain"]["name"])
        rule = item.get("rule")
        if rule and rule["table"] == "qubes" and rule["chain"] in ("custom-input", "custom-forward"):
            for expr in rule["expr"]:
                if "jump" in expr and expr["jump"]["target"].startswith("qf-"):
                    jumps.append((rule["chain"], expr["jump"]["target"], rule["handle"]))
    return chains, jumps


def remove_owned(flab, qube):
    """Take the formula's objects out of the ruleset by hand (a fresh qube's state)."""
    chains, jumps = owned(flab, qube)
    script = ["delete rule ip qubes %s handle %d" % (c, h) for c, _t, h in jumps]
    script += ["flush chain ip qubes %s\ndelete chain ip qubes %s" % (c, c) for c in sorted(chains)]
    if script:
        flab.lab.nft_load(qube, "\n".join(script) + "\n")


def managed_blocks(flab, qube):
    rw = flab.rw_config(qube)
    return {p.name: p.read_text().count(BEGIN) for p in sorted(rw.glob("*")) if p.is_file()}


def nft_shim(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "nft.log"
    (shim / "nft").write_text('#!/bin/sh\necho "$*" >> "%s"\nexec %s "$@"\n' % (log, shutil.which("nft")))
    (shim / "nft").chmod(0o755)
    return {"PATH": "%s:%s" % (shim, os.environ["PATH"])}, log


def nft_calls(log):
    calls = [line.split()[0] for line in log.read_text().splitlines()]
    log.write_text("")
    return calls


def test_a_qube_the_pillar_drops_is_reported_then_cleared_and_user_rules_stay(tmp_path):
    pillar = full_pillar()
    with FormulaLab(pillar, tmp_path) as flab:
        # named with nothing to do: no chains, no boot block
        work = flab.apply("work")
        assert work.retcode == 0 and work.changed == {}, work.changed
        assert owned(flab, "work") == (set(), [])
        assert managed_blocks(flab, "work") == {}
        for qube in ("sys-net", "sys-firewall", "web"):
            assert flab.apply(qube).retcode == 0
        assert owned(flab, "web")[0] == {"qf-input", "qf-forward"}
        flab.lab.sh("web", 'nft add rule ip qubes custom-input tcp dport 9999 accept comment "mine"')
        rc_local = flab.rw_config("web") / "rc.local"
        rc_local.write_text(rc_local.read_text() + "echo mine\n")

        dropped = copy.deepcopy(pillar)
        del dropped["qubes_firewall"]["qubes"]["web"]
        dropped["qubes_firewall"]["port_forwards"] = []
        flab.set_pillar(dropped)
        web = flab.minion("web")
        rc, out, _ = web.run("qubes_firewall.drift")
        assert rc == 1 and out["drifted"], out
        assert any(item["kind"] == "leftover chains removed" for item in out["live"]), out["live"]
        assert [item["kind"] for item in out["persisted"]] == ["block stale"], out["persisted"]

        web.env, log = nft_shim(tmp_path)
        result = flab.apply("web")
        assert result.retcode == 0, result.failed
        assert nft_calls(log) == ["-j", "-c", "-f"]  # one read, one checked write
        assert owned(flab, "web") == (set(), [])
        assert any("9999" in rule for rule in flab.lab.chain_rules("web", "custom-input"))
        assert BEGIN not in rc_local.read_text() and rc_local.read_text().endswith("echo mine\n")
        assert web.run("qubes_firewall.drift")[0] == 0
        log.write_text("")
        again = flab.apply("web")
        assert again.retcode == 0 and again.changed == {}, again.changed
        assert nft_calls(log) == ["-j"]

        # sys-net is still named, but with nothing to do: its chains and block go too
        net = flab.apply("sys-net")
        assert net.retcode == 0 and net.changed
        assert owned(flab, "sys-net") == (set(), [])
        assert managed_blocks(flab, "sys-net") == {"qubes-firewall-user-script": 0}


def test_clean_removes_everything_the_formula_made_even_with_a_broken_pillar(tmp_path):
    pillar = full_pillar()
    pillar["qubes_firewall"]["connect_tcp"] = [
        {"client": "web", "server": "build", "port": 444, "persistent": True}]
    with FormulaLab(pillar, tmp_path) as flab:
        rw = flab.rw_config("web")
        rw.mkdir(parents=True, exist_ok=True)
        (rw / "rc.local").write_text("#!/bin/sh\necho mine\n")
        (rw / "rc.local").chmod(0o755)
        for qube in ("sys-net", "sys-firewall", "web"):
            assert flab.apply(qube).retcode == 0
        assert managed_blocks(flab, "web")["rc.local"] == 2  # rules and connect-tcp
        assert any(p.name.startswith("qf-connect-tcp-") for p in rw.iterdir())
        flab.lab.sh("web", 'nft add rule ip qubes custom-input tcp dport 9999 accept comment "mine"')
        user_rules = flab.lab.chain_rules("web", "custom-input")

        web = flab.minion("web")
        broken = flab.qube_pillar("web")
        broken["qubes_firewall"]["qubes"] = "web"  # invalid; only lookup still says where /rw/config is
        web.set_pillar(broken)
        assert flab.apply("web").retcode != 0  # the formula itself refuses to run
        before = flab.snapshot("web")
        rc, states = web.apply(test=True, sls="qubes_firewall.clean")
        assert rc == 0, states
        cleaned = states["qubes_firewall-cleaned"]
        assert cleaned["result"] is None, cleaned
        assert "delete chain ip qubes qf-input" in cleaned["changes"]["transaction"]
        assert str(rw / "rc.local") in cleaned["changes"]
        assert flab.snapshot("web") == before

        rc, states = web.apply(sls="qubes_firewall.clean")
        assert rc == 0, states
        assert states["qubes_firewall-cleaned"]["changes"]
        assert owned(flab, "web") == (set(), [])
        assert flab.lab.chain_rules("web", "custom-input") == [r for r in user_rules if "jump qf-" not in r]
        assert (rw / "rc.local").read_text() == "#!/bin/sh\necho mine\n"
        assert sorted(p.name for p in rw.iterdir()) == ["rc.local"]

        rc, states = web.apply(sls="qubes_firewall.clean")
        assert rc == 0 and all(not s["changes"] for s in states.values()), states


def test_concurrent_runs_in_one_qube_serialise(tmp_path):
    """
    Two salt-call runs at once, many times: never a duplicated jump, both runs
    succeed.  ``concurrent=True`` turns off Salt's own refusal of a second
    state run sharing the cache directory (runs from two salt-ssh masters, or
    a state run beside a module call, do not share it): the formula's lock is
    what serialises them.
    """
    with FormulaLab(full_pillar(), tmp_path) as flab:
        minion = flab.minion("sys-firewall")
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        for _round in range(12):
            remove_owned(flab, "sys-firewall")
            procs = [subprocess.Popen(minion.argv("state.apply", "qubes_firewall", "concurrent=True"), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
            outs = [p.communicate(timeout=300) for p in procs]
            assert [p.returncode for p in procs] == [0, 0], outs
            changed = []
            for out, _err in outs:
                states = json.loads(out)["local"]
                changed.append(bool(next(s for s in states.values()
                                         if s["__id__"] == "qubes_firewall-runtime-rules")["changes"]))
            assert sorted(changed) == [False, True]  # the second run found the first one's work
            jumps = [(c, t) for c, t, _h in owned(flab, "sys-firewall")[1]]
            assert sorted(jumps) == [("custom-forward", "qf-forward"), ("custom-input", "qf-input")], jumps


def test_a_run_killed_mid_way_leaves_nothing_after_the_next_run(tmp_path):
    with FormulaLab(full_pillar(), tmp_path) as flab:
        minion = flab.minion("sys-net")
        rw = flab.rw_config("sys-net")
        rw.mkdir(parents=True, exist_ok=True)
        scratch = minion.workdir / "state" / "scratch"
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        for delay in (0.8, 1.6, 2.4, 3.2):
            remove_owned(flab, "sys-net")
            for path in rw.glob("*"):
                path.unlink()
            # what a kill between the temp file and its rename leaves
            (rw / (".qubes-firewall-user-script" + TMP_TAG + "dead")).write_text("half")
            scratch.mkdir(parents=True, exist_ok=True)
            (scratch / "qf-units-dead").mkdir(exist_ok=True)
            proc = subprocess.Popen(minion.argv("state.apply", "qubes_firewall"), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result = flab.apply("sys-net")  # the lock died with the killed run
            assert result.retcode == 0, result.failed
            assert not [p.name for p in rw.iterdir() if TMP_TAG in p.name]
            assert not list(scratch.iterdir())
            assert sorted((c, t) for c, t, _h in owned(flab, "sys-net")[1]) == [
                ("custom-forward", "qf-forward"), ("custom-input", "qf-input")]
            assert managed_blocks(flab, "sys-net") == {"qubes-firewall-user-script": 1}


def test_a_failed_nft_load_or_a_planner_refusal_writes_no_binding(tmp_path):
    pillar = full_pillar()
    pillar["qubes_firewall"]["connect_tcp"] = [
        {"client": "web", "server": "build", "port": 444, "persistent": True}]
    with FormulaLab(pillar, tmp_path) as flab:
        rw = flab.rw_config("web")
        rw.mkdir(parents=True, exist_ok=True)
        # something else jumps to a chain in the formula's namespace: nft refuses the removal
        flab.lab.nft_load("web", "add chain ip qubes qf-legacy\nadd rule ip qubes custom-forward jump qf-legacy\n")
        before = flab.snapshot("web")
        result = flab.apply("web")
        assert result.retcode != 0
        assert "nothing was changed" in result.states["qubes_firewall-runtime-rules"]["comment"]
        for sid in ("qubes_firewall-persisted-rules", "qubes_firewall-connect-tcp-bindings"):
            assert result.states[sid]["result"] is False and not result.states[sid]["changes"], sid
        assert flab.snapshot("web") == before

        # the planner refuses (web's address is missing): nothing is read or written
        flab.lab.sh("web", "nft delete rule ip qubes custom-forward handle %d" % next(
            r["rule"]["handle"] for r in flab.lab.nft_json("web")["nftables"]
            if "rule" in r and r["rule"]["chain"] == "custom-forward"
            and any("jump" in e and e["jump"]["target"] == "qf-legacy" for e in r["rule"]["expr"])))
        broken = copy.deepcopy(pillar)
        del broken["qubes_firewall"]["addresses"]["web"]
        flab.set_pillar(broken)
        before = flab.snapshot("web")
        result = flab.apply("web")
        assert result.retcode != 0
        assert "qubes_firewall:addresses:web" in result.states["qubes_firewall-validated"]["comment"]
        assert all(not s["changes"] for s in result.states.values())
        assert flab.snapshot("web") == before
