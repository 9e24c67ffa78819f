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
import pathlib
import shutil
import signal
import subprocess
import time

from tests.e2e.formula_lab import FormulaLab, check_flows
from tests.e2e.full_example import FLOWS, full_pillar, start_servers
from tests.salt_call import SaltCall

BEGIN = "# BEGIN qubes_firewall:"
TMP_TAG = ".qubes_firewall.tmp."


def owned(flab, qube):
    """
    The formula's objects and jumps in the qube: ({(kind, name)} of its chains,
    sets and maps, [(custom chain, target, handle)]).
    """
    doc = flab.lab.nft_json(qube)
    chains, jumps = set(), []
    for item in doc["nftables"]:
        (kind, body), = item.items()
        if kind in ("chain", "set", "map") and body["table"] == "qubes" and body["name"].startswith("qf-"):
            chains.add((kind, body["name"]))
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
    script += ["flush chain ip qubes %s" % n for k, n in sorted(chains) if k == "chain"]
    script += ["delete %s ip qubes %s" % (k, n) for k, n in sorted(chains)]
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
        assert {("chain", "qf-input"), ("chain", "qf-forward")} <= owned(flab, "web")[0]
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
        assert nft_calls(log) == ["-j", "-f"]  # one read, one atomic write
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
        web.env, log = nft_shim(tmp_path)
        rc, states = web.apply(test=True, sls="qubes_firewall.clean")
        assert nft_calls(log) == ["-j", "-c"]  # one read, the check of test mode
        assert rc == 0, states
        cleaned = states["qubes_firewall-cleaned"]
        assert cleaned["result"] is None, cleaned
        assert cleaned["changes"]["nft"]["removed"] > 0, cleaned
        assert "chains removed" in cleaned["changes"]["nft"]["objects"], cleaned
        assert str(rw / "rc.local") in cleaned["changes"]
        assert flab.snapshot("web") == before

        rc, states = web.apply(sls="qubes_firewall.clean")
        assert rc == 0, states
        assert nft_calls(log) == ["-j", "-f"]  # one read, one atomic write
        assert states["qubes_firewall-cleaned"]["changes"]
        assert owned(flab, "web") == (set(), [])
        assert flab.lab.chain_rules("web", "custom-input") == [r for r in user_rules if "jump qf-" not in r]
        assert (rw / "rc.local").read_text() == "#!/bin/sh\necho mine\n"
        assert sorted(p.name for p in rw.iterdir()) == ["rc.local"]

        rc, states = web.apply(sls="qubes_firewall.clean")
        assert rc == 0 and all(not s["changes"] for s in states.values()), states
        assert nft_calls(log) == ["-j"]


def test_concurrent_runs_in_one_qube_serialise(tmp_path):
    """
    Two salt-call runs at once in one qube, 3 rounds: both succeed, the second
    finds the first one's work, never a duplicated jump.  Each run has its own
    Salt cache (as runs from two management qubes do; a shared cache makes Salt
    queue them itself); they share the qube's lookup:state_dir.

    Every round forces the race instead of hoping for it: a run's nft read
    waits (up to 60 s) until the other run has read too, or is at the lock (it
    holds ``<state_dir>/lock`` open).  Without the lock both runs read before
    either loads, and the round fails; with it the first run goes on as soon
    as the second is waiting for the lock, and the round proves that it waited
    (the shim saw it at the lock, and exactly one run's lock state says it
    waited).  So one round already decides; three guard against a lock that
    works by chance of timing.
    """
    shim, barrier, state = tmp_path / "slow-nft", tmp_path / "barrier", tmp_path / "state"
    shim.mkdir()
    lock = state / "lock"
    (shim / "nft").write_text(
        '#!/bin/sh\nif [ "$1" = -j ]; then\n  touch %(barrier)s/read-$$\n  i=0\n'
        '  while [ "$(ls %(barrier)s | grep -c ^read-)" -lt 2 ] && [ $i -lt 300 ]; do\n'
        # the other run holds the lock file open: it waits for the lock this run holds
        '    if [ "$(find /proc/[0-9]*/fd -lname %(lock)s 2>/dev/null | cut -d/ -f3 | sort -u | wc -l)" -ge 2 ]; then\n'
        '      touch %(barrier)s/at-lock; break\n    fi\n'
        '    sleep 0.2; i=$((i+1))\n  done\nfi\nexec %(nft)s "$@"\n'
        % {"barrier": barrier, "lock": lock, "nft": shutil.which("nft")})
    (shim / "nft").chmod(0o755)
    with FormulaLab(full_pillar(), tmp_path / "lab") as flab:
        pillar = flab.qube_pillar("sys-firewall")
        pillar["qubes_firewall"]["lookup"]["state_dir"] = str(state)
        netns = flab.lab.netns("sys-firewall")
        minions = [SaltCall(tmp_path / ("salt%d" % i), "sys-firewall", pillar, netns=netns) for i in (1, 2)]
        env = dict(os.environ, PYTHONWARNINGS="ignore", PATH="%s:%s" % (shim, os.environ["PATH"]))
        for _round in range(3):
            remove_owned(flab, "sys-firewall")
            shutil.rmtree(barrier, ignore_errors=True)
            barrier.mkdir()
            procs = [subprocess.Popen(m.argv("state.apply", "qubes_firewall"), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for m in minions]
            outs = [p.communicate(timeout=300) for p in procs]
            assert [p.returncode for p in procs] == [0, 0], outs
            changed, waited = [], []
            for out, _err in outs:
                states = {s["__id__"]: s for s in json.loads(out)["local"].values()}
                changed.append(bool(states["qubes_firewall-runtime-rules"]["changes"]))
                waited.append(not states["qubes_firewall-locked"]["comment"].endswith("(waited 0.0 s)."))
            jumps = [(c, t) for c, t, _h in owned(flab, "sys-firewall")[1]]
            assert sorted(jumps) == [("custom-forward", "qf-forward"), ("custom-input", "qf-input")], jumps
            assert sorted(changed) == [False, True]  # the second run found the first one's work
            # the race happened: the second run was at the lock while the first one read
            assert (barrier / "at-lock").exists(), sorted(p.name for p in barrier.iterdir())
            assert sorted(waited) == [False, True], [o for o, _e in outs]


def test_a_run_killed_mid_way_leaves_nothing_after_the_next_run(tmp_path):
    with FormulaLab(full_pillar(), tmp_path) as flab:
        minion = flab.minion("sys-net")
        rw = flab.rw_config("sys-net")
        rw.mkdir(parents=True, exist_ok=True)
        # <lookup:state_dir>/scratch: the run's temporary files
        scratch = pathlib.Path(flab.qube_pillar("sys-net")["qubes_firewall"]["lookup"]["state_dir"]) / "scratch"
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        for delay in (0.8, 1.6, 2.4, 3.2):
            remove_owned(flab, "sys-net")
            shutil.rmtree(rw)
            rw.mkdir()
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
            assert not [p.name for p in rw.rglob("*") if TMP_TAG in p.name]  # the record's directory too
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


def test_custom_persist_qubes_get_their_rules_back_from_the_template(tmp_path):
    """
    Qubes 4.3, custom-persist on sys-firewall (a network qube) and web: Qubes runs
    none of their /rw/config scripts.  The run on their template debian-13 writes a
    name-guarded script in its /etc/qubes/qubes-firewall.d (sys-firewall) and an
    enabled unit (web); boot and qubes-firewall restarts bring the same rules back.
    """
    pillar = full_pillar()
    for qube in ("sys-firewall", "web"):
        pillar["qubes_firewall"]["qubes"][qube].update({"custom_persist": True, "template": "debian-13"})
    with FormulaLab(pillar, tmp_path, release="4.3") as flab:
        assert not any(r.failed for r in flab.apply_all().values())
        for qube in ("sys-firewall", "web"):  # the qube's own run writes no /rw block
            assert not any(BEGIN in p.read_text() for p in flab.rw_config(qube).glob("*") if p.is_file())
        live = {q: flab.ruleset_model(q) for q in ("sys-firewall", "web")}
        # without the template's replay, a reboot loses the rules (Qubes skips /rw)
        flab.lab.reboot("web")
        assert flab.ruleset_model("web") != live["web"]

        template = flab.apply("debian-13")
        assert template.retcode == 0 and template.changed, template.failed
        etc = flab.etc_qubes("debian-13")
        units = flab.systemd_dir("debian-13")
        assert os.access(etc / "qubes-firewall.d" / "qubes-firewall-formula-sys-firewall", os.X_OK)
        assert (units / "multi-user.target.wants" / "qubes-firewall-formula-web.service").is_symlink()
        assert flab.apply("debian-13").changed == {}

        for qube in ("sys-firewall", "web"):
            flab.lab.reboot(qube)
            assert flab.ruleset_model(qube) == live[qube], qube
        flab.lab.restart_qubes_firewall("sys-firewall")
        flab.lab.restart_qubes_firewall("sys-firewall")
        assert flab.ruleset_model("sys-firewall") == live["sys-firewall"]
        start_servers(flab.lab)
        assert check_flows(flab.lab, FLOWS) == [(f, f.expect) for f in FLOWS]
        again = {q: r.changed for q, r in flab.apply_all().items() if r.changed}
        assert again == {}, again

        # clean on the template removes what its runs wrote; a qube booted from it cleans nothing there
        rc, states = flab.minion("web").apply(sls="qubes_firewall.clean")
        assert rc == 0 and (etc / "qubes-firewall.d" / "qubes-firewall-formula-sys-firewall").exists()
        rc, states = flab.minion("debian-13").apply(sls="qubes_firewall.clean")
        assert rc == 0 and states["qubes_firewall-cleaned"]["changes"], states
        assert not [p for p in etc.rglob("*qubes-firewall-formula*")]
        assert not [p for p in units.rglob("qubes-firewall-formula-*")]
        assert flab.apply("debian-13").changed

        # custom-persist off again: the template's run removes its files
        plain = full_pillar()
        flab.set_pillar(plain)
        removed = flab.apply("debian-13")
        assert removed.retcode == 0 and removed.changed
        assert not [p for p in etc.rglob("*qubes-firewall-formula*")]
        assert not [p for p in units.rglob("qubes-firewall-formula-*")]
