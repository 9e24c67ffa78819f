"""
Every command README.md and docs/ show a user, run as the user runs it, through
the qubesctl path (tests/qubesctl/harness.py), on pillar.example/full.sls (the
manual page's seven qubes), applied dom0 first, then the qubes.

In a qube (``sudo qubesctl --skip-dom0 --targets=QUBES ...``, salt-ssh):
status, drift, show_plan, backup, backups, revert, check, diagram,
pillar_errors, connect_tcp_commands, pillar.get.  In dom0 (``sudo qubesctl
...``, salt-call): check, diagram, addresses, qubes_release, dom0_problems,
pillar_errors, reconnect, connect_tcp_commands, pillar.items.

A plain execution function gets no pillar under salt-ssh (only its wrapper
modules, state.* and pillar.*, compile one): in a qube the functions answer
from the record the last apply left there (docs/operations.md, "In a qube
there is no pillar") and say so; a qube never applied says what to run.  A
failed target says why in one line of its log (bad pillar, failed nft load).
"""

import copy
import json
import pathlib

import pytest
import yaml

pytestmark = pytest.mark.lab

ALL = ["sys-net", "sys-firewall", "sys-vpn", "sys-firewall-2", "work", "build", "web"]


@pytest.fixture(scope="module")
def full(machine_factory):
    m = machine_factory("full")
    dom0 = m.qc.qubesctl("state.apply", "qubes_firewall")
    assert dom0.returncode == 0, dom0.stdout
    run = m.qc.qubesctl("--skip-dom0", m.targets(), "state.apply", "qubes_firewall")
    assert run.returncode == 0 and run.stdout.splitlines() == ["%s: OK" % q for q in m.qubes], run.stdout
    assert sorted(m.qubes) == sorted(ALL)
    return m


def in_qubes(m, qubes, *command):
    """``sudo qubesctl --skip-dom0 --targets=QUBES --show-output COMMAND --out=json``: {qube: (exit, data)}."""
    run = m.qc.qubesctl("--skip-dom0", "--show-output", "--targets=" + ",".join(qubes), *command, "--out=json")
    return run, {q: (run.targets[q].exit_code, run.targets[q].json()[q]) for q in qubes}


def in_dom0(m, *command, out="json"):
    """``sudo qubesctl COMMAND --out=json``: (exit code, data)."""
    run = m.qc.qubesctl(*command, "--out=" + out)
    if out != "json":
        return run.returncode, run.stdout
    return run.returncode, json.loads(run.dom0.stdout)["local"] if run.dom0.stdout.strip() else None


# ---------------------------------------------------------------- in the qubes


def test_status_in_a_qube(full):
    """docs/operations.md: sudo qubesctl --skip-dom0 --targets=sys-firewall qubes_firewall.status"""
    run, out = in_qubes(full, ["sys-firewall-2"], "qubes_firewall.status")
    rc, status = out["sys-firewall-2"]
    assert rc == 0 and status["missing"] == [], status
    assert [r["origin"] for r in status["rules"]] == ["connections:0 work->build forward"]


def test_status_of_an_origin_in_three_qubes(full):
    """docs/operations.md: --targets=sys-net,sys-firewall,web qubes_firewall.status origin=port_forwards:https"""
    run, out = in_qubes(full, ["sys-net", "sys-firewall", "web"], "qubes_firewall.status", "origin=port_forwards:https")
    assert run.returncode == 0, run.stdout
    rules = {q: data["by_origin"]["port_forwards:https"]["rules"] for q, (rc, data) in out.items()}
    assert rules == {"sys-net": 2, "sys-firewall": 2, "web": 1}


def test_status_as_text_in_a_qube(full):
    """docs/operations.md: ... qubes_firewall.status fmt=text prints text under qubesctl too"""
    run = full.qc.qubesctl("--skip-dom0", "--show-output", "--targets=sys-firewall-2", "qubes_firewall.status",
                           "fmt=text")
    assert run.returncode == 0, run.stdout
    assert "connections:0 work->build forward" in run.stdout


def test_drift_in_a_qube_passes_then_fails_on_a_hand_edit(full):
    """docs/operations.md: --targets=sys-firewall qubes_firewall.drift; README: fails on drift"""
    run, out = in_qubes(full, ["sys-firewall"], "qubes_firewall.drift")
    assert out["sys-firewall"][0] == 0 and out["sys-firewall"][1]["drifted"] is False, out
    full.lab.run("sys-firewall", ["nft", "add", "rule", "ip", "qubes", "qf-forward", "tcp", "dport", "9999", "accept"])
    try:
        run = full.qc.qubesctl("--skip-dom0", "--targets=sys-firewall", "qubes_firewall.drift")
        assert run.returncode != 0 and run.line("sys-firewall").startswith("sys-firewall: ERROR (exit code "), run.stdout
    finally:
        fixed = full.qc.qubesctl("--skip-dom0", "--targets=sys-firewall", "state.apply", "qubes_firewall")
        assert fixed.returncode == 0, fixed.stdout


def test_show_plan_in_a_qube(full):
    """README: qubes_firewall.show_plan, the rules the pillar wants in a qube"""
    run, out = in_qubes(full, ["sys-firewall-2"], "qubes_firewall.show_plan")
    rc, plan = out["sys-firewall-2"]
    assert rc == 0 and "connections:0 work->build forward" in json.dumps(plan), plan


def test_backup_backups_and_revert_in_a_qube(full):
    """docs/operations.md: --targets=sys-vpn qubes_firewall.backup / backups / revert"""
    qube = "sys-vpn"
    saved_model = full.flab.ruleset_model(qube)
    run, out = in_qubes(full, [qube], "qubes_firewall.backup")
    rc, saved = out[qube]
    assert rc == 0 and pathlib.Path(saved["path"]).is_file(), saved
    run, out = in_qubes(full, [qube], "qubes_firewall.backups")
    rc, listed = out[qube]
    assert rc == 0 and listed[0]["path"] == saved["path"], listed
    full.lab.run(qube, ["nft", "add", "rule", "ip", "qubes", "custom-forward", "tcp", "dport", "9999", "accept"])
    assert full.flab.ruleset_model(qube) != saved_model
    run, out = in_qubes(full, [qube], "qubes_firewall.revert")
    rc, reverted = out[qube]
    assert rc == 0 and reverted["path"] == saved["path"], reverted
    assert full.flab.ruleset_model(qube) == saved_model


def test_pillar_get_shows_what_a_target_sees(full):
    """docs/addresses.md: --targets=work pillar.get qubes_firewall:addresses (the addresses asked from Qubes);
    docs/fleet.md: --targets=sys-net pillar.get qubes_firewall"""
    # least privilege (docs/addresses.md): work's rules name only its own address (it is a connection's source)
    run, out = in_qubes(full, ["work"], "pillar.get", "qubes_firewall:addresses")
    rc, addresses = out["work"]
    assert rc == 0 and addresses == {"work": full.lab.ip("work")}, addresses
    # sys-net holds the https forward to web: the forward's path, nothing of work, build or the VPN
    run, out = in_qubes(full, ["sys-net"], "pillar.get", "qubes_firewall")
    rc, pillar = out["sys-net"]
    assert rc == 0 and set(pillar["qubes"]) == {"sys-net", "sys-firewall", "web"}, pillar
    assert "connections" not in pillar and pillar["lookup"]["qubes_release"] == full.qc.release


def test_check_in_a_qube(full):
    """README: qubes_firewall.check work build 22, a dom0 function; in a qube it answers from that
    qube's part of the pillar: sys-firewall-2, the hop of that connection, has both ends"""
    run, out = in_qubes(full, ["sys-firewall-2"], "qubes_firewall.check", "work", "build", "22")
    rc, answer = out["sys-firewall-2"]
    assert rc == 0 and answer["allowed"] is True and answer["rules"][0]["qube"] == "sys-firewall-2", answer


def test_diagram_in_a_qube(full):
    """README: qubes_firewall.diagram fmt=dot (a dom0 command; in a qube it draws the recorded pillar and
    says so in a DOT comment first)"""
    run, out = in_qubes(full, ["web"], "qubes_firewall.diagram", "fmt=dot")
    rc, text = out["web"]
    first, _, rest = text.partition("\n")
    assert rc == 0 and first.startswith("// " + RECORDED) and rest.startswith("digraph qubes_firewall {"), text


def test_pillar_errors_in_a_qube(full):
    """README: qubes_firewall.pillar_errors, every problem of the pillar (this one has none)"""
    run, out = in_qubes(full, ["web"], "qubes_firewall.pillar_errors")
    assert out["web"] == (0, []), out


def test_connect_tcp_commands_in_a_qube(full):
    """README: qubes_firewall.connect_tcp_commands (full.sls has no ConnectTCP entry: none)"""
    run, out = in_qubes(full, ["web"], "qubes_firewall.connect_tcp_commands")
    assert out["web"] == (0, []), out


# ---------------------------------------------------------------- in dom0


def test_check_in_dom0(full):
    """docs/operations.md: sudo qubesctl qubes_firewall.check work build 22 (text by default)"""
    rc, text = in_dom0(full, "qubes_firewall.check", "work", "build", "22", out="nested")
    assert rc == 0 and "ALLOWED: work -> build tcp/22" in text, text
    rc, answer = in_dom0(full, "qubes_firewall.check", "work", "build", "22")
    assert rc == 0 and answer["allowed"] is True, answer


def test_diagram_in_dom0(full, tmp_path):
    """docs/operations.md: sudo qubesctl qubes_firewall.diagram fmt=dot path=/tmp/topology.dot;
    qubes_firewall.diagram (Mermaid); the bare text with --out=newline_values_only"""
    target = tmp_path / "topology.dot"
    rc, out = in_dom0(full, "qubes_firewall.diagram", "fmt=dot", "path=%s" % target)
    assert rc == 0 and out == {"path": str(target)}, out
    assert target.read_text().startswith("digraph qubes_firewall {")
    rc, mermaid = in_dom0(full, "qubes_firewall.diagram")
    assert rc == 0 and mermaid.startswith("flowchart TB\n") and "n_work ==>|\"tcp/22\"| n_build" in mermaid, mermaid
    run = full.qc.qubesctl("qubes_firewall.diagram", "--out=newline_values_only")
    assert run.returncode == 0 and run.stdout.rstrip("\n") == mermaid.rstrip("\n"), run.stdout


def test_qubesctl_refuses_salt_options_before_the_command(full):
    """qubesctl parses its own options up to the command: ``qubesctl --out=X CMD`` is refused
    (the salt-call option goes after the command, as above)."""
    run = full.qc.qubesctl("--out=newline_values_only", "qubes_firewall.diagram")
    assert run.returncode == 2 and "unrecognized arguments: --out=newline_values_only" in run.stdout


def test_addresses_and_release_in_dom0(full):
    """docs/addresses.md: sudo qubesctl qubes_firewall.addresses work,web; README: qubes_release"""
    rc, out = in_dom0(full, "qubes_firewall.addresses", "work,web")
    assert rc == 0 and out == {"work": full.lab.ip("work"), "web": full.lab.ip("web")}, out
    rc, out = in_dom0(full, "qubes_firewall.qubes_release")
    assert rc == 0 and out == full.qc.release


def test_dom0_problems_and_pillar_errors_in_dom0(full):
    """docs/dom0.md: sudo qubesctl qubes_firewall.dom0_problems; README: pillar_errors"""
    assert in_dom0(full, "qubes_firewall.dom0_problems") == (0, [])
    assert in_dom0(full, "qubes_firewall.pillar_errors") == (0, [])


def test_reconnect_in_dom0(full):
    """docs/dom0.md: sudo qubesctl qubes_firewall.reconnect sys-net (its clients reconnected)"""
    rc, out = in_dom0(full, "qubes_firewall.reconnect", "sys-net")
    assert rc == 0 and out == ["sys-firewall"], out


def test_connect_tcp_commands_in_dom0(full):
    """README: qubes_firewall.connect_tcp_commands (none in full.sls)"""
    assert in_dom0(full, "qubes_firewall.connect_tcp_commands") == (0, [])


def test_pillar_items_in_dom0(full):
    """docs/fleet.md: sudo qubesctl pillar.items (dom0's view: the whole topology, Qubes' addresses)"""
    rc, pillar = in_dom0(full, "pillar.items")
    assert rc == 0 and set(pillar["qubes_firewall"]["qubes"]) == set(ALL)
    assert pillar["qubes_firewall"]["addresses"] == {q: full.lab.ip(q) for q in ALL}


# ---------------------------------------------------------------- the path itself


def test_one_salt_ssh_call_per_target_per_command(full):
    """qubesctl runs salt-ssh once per target; the formula adds no round trip of its own.
    state.apply is Salt's own sequence: grains (ssh; the thin missing: thin and ext_mods,
    scp scp, grains again, ssh), the state tarball (scp), state.pkg (ssh); an execution
    function: ssh (the thin missing: scp scp ssh).  The thin is missing unless a wrapper
    function (pillar.get) left it: -w wipes it only after a call that runs on the target."""
    qc = full.qc
    cold, warm = ["ssh", "scp", "scp", "ssh"], ["ssh"]
    qc.salt_ssh_calls.clear()
    qc.calls_log.write_text("")
    run = qc.qubesctl("--skip-dom0", "--targets=work,build", "state.apply", "qubes_firewall")
    assert run.returncode == 0, run.stdout
    assert sorted(qc.salt_ssh_calls) == ["build", "work"]
    for q in ("work", "build"):
        trips = [c.split()[0] for c in qc.wrapper_calls() if c.endswith(" " + q)]
        assert trips in (cold + ["scp", "ssh"], warm + ["scp", "ssh"]), qc.wrapper_calls()
    qc.salt_ssh_calls.clear()
    qc.calls_log.write_text("")
    run = qc.qubesctl("--skip-dom0", "--targets=sys-vpn", "qubes_firewall.backups")
    assert run.returncode == 0, run.stdout
    assert qc.salt_ssh_calls == ["sys-vpn"]
    assert [c.split()[0] for c in qc.wrapper_calls()] in (cold, warm), qc.wrapper_calls()


def test_a_failing_target_says_where_its_log_is(full):
    """qubesctl: VM: ERROR (exit code N, details in /var/log/qubes/mgmt-VM.log); the log holds the output."""
    run = full.qc.qubesctl("--skip-dom0", "--targets=web", "qubes_firewall.no_such_function")
    log = full.qc.log_dir / "mgmt-web.log"
    assert run.returncode != 0
    assert run.stdout == "web: ERROR (exit code %d, details in %s)\n" % (run.targets["web"].exit_code, log), run.stdout
    text = log.read_text()
    assert "calling 'qubes_firewall.no_such_function'..." in text and "output: " in text and "exit code: " in text


def test_the_target_runs_the_thin_with_its_own_python3(full):
    """The qube runs Salt's thin with its system python3 (Debian 12: 3.11, Debian 13: 3.13)."""
    run, out = in_qubes(full, ["web"], "grains.get", "pythonversion")
    rc, version = out["web"]
    own = full.lab.run("web", ["/usr/bin/python3", "-c", "import sys; print(list(sys.version_info[:3]))"]).stdout
    assert rc == 0 and version[:3] == json.loads(own), (version, own)


# ---------------------------------------------------------------- without a pillar, and failures


RECORDED = "as applied at "


def test_qube_functions_say_they_answer_from_the_record(full):
    """docs/operations.md: without a pillar (salt-ssh) the data's first key is pillar_source, the text's first line"""
    run, out = in_qubes(full, ["web"], "qubes_firewall.status")
    rc, status = out["web"]
    assert rc == 0 and list(status)[0] == "pillar_source", status
    assert status["pillar_source"].startswith(RECORDED) and "pillar not available under salt-ssh" in status["pillar_source"]
    record = full.qc.record_file("web")
    assert str(record) in status["pillar_source"]
    data = json.loads(record.read_text())
    # web's part of the pillar only (least privilege): its chain, none of the other qubes
    assert data["qube"] == "web" and set(data["pillar"]["qubes"]) == {"sys-net", "sys-firewall", "web"}
    run = full.qc.qubesctl("--skip-dom0", "--show-output", "--targets=web", "qubes_firewall.drift", "fmt=text")
    assert run.returncode == 0 and RECORDED in run.stdout and "test=True" in run.stdout, run.stdout


def test_status_after_a_restart_answers_from_the_record_under_rw(full):
    """docs/operations.md: the record lives under /rw, which a restart keeps; the root filesystem (the
    state_dir with it) starts anew; the lab pillar's state_dir is not the default one, and the
    pillar-less function finds the record without it, and never touches the default."""
    full.qc.restart_root("work")
    full.lab.reboot("work")
    run, out = in_qubes(full, ["work"], "qubes_firewall.status")
    rc, status = out["work"]
    assert rc == 0 and status["missing"] == [], status
    assert str(full.qc.record_file("work")) in status["pillar_source"], status
    assert not (full.qc.qube_dir("work") / "default-state").exists()


def test_a_qube_never_applied_says_what_to_run_in_one_line(full):
    """no pillar and no record: one line naming the command, in qubesctl's log"""
    record = full.qc.record_file("build")
    saved = record.read_text()
    record.unlink()
    try:
        run = full.qc.qubesctl("--skip-dom0", "--targets=build", "qubes_firewall.status")
        assert run.returncode != 0 and run.line("build").startswith("build: ERROR (exit code "), run.stdout
        log = (full.qc.log_dir / "mgmt-build.log").read_text()
        wanted = "sudo qubesctl --skip-dom0 --targets=build state.apply qubes_firewall"
        lines = [line for line in log.splitlines() if wanted in line]
        assert lines and "no qubes_firewall pillar here" in lines[-1], log[-3000:]
    finally:
        record.write_text(saved)


def _first_failure(log_text):
    """The comment of the first failed state in a qubesctl log, with the line after it."""
    lines = [line.split("output: ", 1)[-1] for line in log_text.splitlines()]
    for index, line in enumerate(lines):
        if line.strip() == "Result: False":
            comment = lines[index + 1].strip()
            assert comment.startswith("Comment: "), lines[index:index + 3]
            return comment[len("Comment: "):] + " " + lines[index + 2].strip()
    raise AssertionError("no failed state in:\n" + log_text[-3000:])


def _summary_line(log_text, qube):
    comments = [line.split("Comment: ", 1)[1] for line in log_text.splitlines() if "Comment: %s: " % qube in line]
    assert comments, log_text[-3000:]
    return comments[-1]


def test_a_bad_pillar_fails_the_qube_and_its_log_says_why_in_one_line(full):
    """A bad value: web: ERROR; the log's first failed state and the summary line say the pillar is
    invalid and where to see why (dom0's pillar_errors: a qube learns nothing of the topology's
    problems); nothing changed, the record stays the last good run's."""
    pillar_file = full.qc.srv / "user_pillar" / "qubes_firewall.sls"
    good = pillar_file.read_text()
    record = full.qc.record_file("web")
    recorded, before = record.read_text(), full.flab.ruleset_model("web")
    bad = copy.deepcopy(full.topology)
    bad["qubes"]["web"]["netvm"] = "sys firewall"
    pillar_file.write_text(yaml.safe_dump({"qubes_firewall": bad}, sort_keys=False))
    try:
        run = full.qc.qubesctl("--skip-dom0", "--targets=web", "state.apply", "qubes_firewall")
        assert run.returncode != 0 and run.line("web").startswith("web: ERROR (exit code "), run.stdout
        log = run.targets["web"].log.read_text()
        assert "qubes_firewall:error" in _first_failure(log) and "pillar_errors" in _first_failure(log), log
        line = _summary_line(log, "web")
        assert "FAILED" in line and "is invalid" in line and "pillar_errors in dom0" in line, line
        rc, errors = in_dom0(full, "qubes_firewall.pillar_errors")  # dom0 says why
        assert rc == 0 and any("qubes_firewall:qubes:web:netvm" in e and "sys firewall" in e for e in errors), errors
        assert record.read_text() == recorded and full.flab.ruleset_model("web") == before
    finally:
        pillar_file.write_text(good)


def test_a_failed_nft_load_fails_the_qube_and_its_log_says_why_in_one_line(full):
    """Qubes' table ip qubes gone (the load cannot go in): build: ERROR; the log's first failed state and
    the summary line say why; no record of that run."""
    qube = "build"
    saved = full.lab.run(qube, ["nft", "list", "ruleset"]).stdout
    record = full.qc.record_file(qube)
    recorded = record.read_text()
    full.lab.run(qube, ["nft", "delete", "table", "ip", "qubes"])
    try:
        run = full.qc.qubesctl("--skip-dom0", "--targets=" + qube, "state.apply", "qubes_firewall")
        assert run.returncode != 0 and run.line(qube).startswith(qube + ": ERROR (exit code "), run.stdout
        log = run.targets[qube].log.read_text()
        cause = _first_failure(log)
        assert "qubes" in cause, cause
        line = _summary_line(log, qube)
        assert "nft FAILED: " in line and "\n" not in line, line
        assert record.read_text() == recorded
    finally:
        full.lab.nft_load(qube, "flush ruleset\n" + saved)
    assert full.qc.qubesctl("--skip-dom0", "--targets=" + qube, "qubes_firewall.drift").returncode == 0


def test_targets_and_fleet_status_in_dom0(full):
    """README: sudo qubesctl qubes_firewall.targets --out=newline_values_only; docs/fleet.md: fleet_status"""
    rc, text = in_dom0(full, "qubes_firewall.targets", out="newline_values_only")
    assert rc == 0 and set(text.strip().split(",")) >= set(ALL), text
    rc, row = in_dom0(full, "qubes_firewall.fleet_status")
    assert rc == 0 and row["verdict"].startswith("ok: ") and set(row["targets"]) >= set(ALL), row
