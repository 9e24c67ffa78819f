"""
Functions without a pillar (salt-ssh gives a plain execution function none):
each real apply in a qube records the pillar it used in
``<lookup:rw_config>/qubes-firewall-formula/applied-QUBE.json`` (under /rw: kept
across restarts) once the live ruleset took its rules, a disposable template's
run for its named disposables too;
``FunctionRun`` answers from that record and says so; without either, one line
says what to run; clean removes the record.  And the public module stays small.
"""

import json

import pytest

from tests import examples
from tests.modules import REPO, core, load

qf_run = core("run")
qf_files = core("files")
MAX_PUBLIC_LINES = 400


def test_the_public_module_stays_small():
    """_modules/qubes_firewall.py holds the public functions only: logic goes in Run, prose in docs/."""
    lines = len((REPO / "_modules" / "qubes_firewall.py").read_text().splitlines())
    assert lines <= MAX_PUBLIC_LINES, "_modules/qubes_firewall.py has %d lines (at most %d)" % (lines, MAX_PUBLIC_LINES)


@pytest.fixture
def raw(tmp_path):
    data = examples.sls("full")["qubes_firewall"]
    data["qubes"]["sys-firewall"].pop("dispvm_template")
    data["lookup"] = {"rw_config": str(tmp_path / "rw"), "state_dir": str(tmp_path / "state")}
    return data


def opts(tmp_path, qube="work", **more):
    return dict({"id": qube, "qubes_firewall_state_dir": str(tmp_path / "state"),
                 "qubes_firewall_rw_config": str(tmp_path / "rw")}, **more)


def record_file(tmp_path, qube="work"):
    return tmp_path / "rw" / "qubes-firewall-formula" / ("applied-%s.json" % qube)


def record(tmp_path, raw, qube="work", summary=None, test=False):
    run = qf_run.Run(opts(tmp_path, qube), {"qubes_firewall": raw}, {})
    summary = {"nft": {"added": 1, "removed": 0, "kept": 0}, "changed": [], "failed": []} if summary is None else summary
    return qf_run.record_applied(run, summary, test)


def test_a_real_apply_records_the_pillar_it_used(tmp_path, raw):
    assert record(tmp_path, raw) == ""
    path = record_file(tmp_path)
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["qube"] == "work" and data["pillar"] == raw
    assert data["applied_at"].endswith("Z")
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text(path.read_text().replace(data["applied_at"], "2000-01-01T00:00:00Z"))
    assert record(tmp_path, raw) == "" and "2000-01-01T00:00:00Z" in path.read_text()  # same pillar: not rewritten
    raw["qubes"]["work"]["netvm"] = "sys-firewall"
    assert record(tmp_path, raw) == "" and json.loads(path.read_text())["pillar"] == raw


@pytest.mark.parametrize("summary, test, qube", [
    ({"nft": {"added": 1}}, True, "work"),  # test=True writes nothing
    ({"nft": None, "failed": ["nft"]}, False, "work"),  # the nft load failed
    ({"failed": ["nft"]}, False, "work"),  # the plan or the read failed
    ({}, False, "work"),  # the run never reached the live rules (a bad pillar)
    ({"nft": {"added": 1}}, False, "dom0"),  # dom0 always has its pillar
])
def test_no_record_unless_the_live_ruleset_took_the_rules(tmp_path, raw, summary, test, qube):
    assert record(tmp_path, raw, qube=qube, summary=summary, test=test) == ""
    assert not record_file(tmp_path, qube).exists()


def test_a_record_that_cannot_be_written_is_one_line_and_fails_nothing(tmp_path, raw):
    (tmp_path / "rw").mkdir()
    (tmp_path / "rw" / "qubes-firewall-formula").write_text("a file where the directory should be")
    note = record(tmp_path, raw)
    assert note.startswith("\nwork: cannot record this run in ") and note.count("\n") == 1


def test_without_a_pillar_a_function_answers_from_the_record_and_says_so(tmp_path, raw):
    record(tmp_path, raw)
    run = qf_run.FunctionRun(opts(tmp_path), {}, {})
    assert run.model().qubes["work"].netvm == raw["qubes"]["work"]["netvm"]
    assert run.qube_plan() is not None and run.pillar_errors() == []
    note = run.source()
    assert note.startswith("as applied at ") and "pillar not available under salt-ssh" in note
    assert run.annotated({"a": 1}) == {"pillar_source": note, "a": 1}
    assert run.annotated("text", comment="%% ") == "%% " + note + "\ntext"
    assert run.annotated([]) == []


def test_with_a_pillar_the_record_is_not_read(tmp_path, raw):
    record(tmp_path, raw)
    changed = json.loads(json.dumps(raw))
    changed["qubes"]["work"]["netvm"] = "sys-firewall"
    run = qf_run.FunctionRun(opts(tmp_path), {"qubes_firewall": changed}, {})
    assert run.source() is None and run.model().qubes["work"].netvm == "sys-firewall"
    assert run.annotated({"a": 1}) == {"a": 1}


def test_without_pillar_and_record_one_line_says_what_to_run(tmp_path):
    run = qf_run.FunctionRun(opts(tmp_path, "web"), {}, {})
    with pytest.raises(qf_run.CommandExecutionError) as err:
        run.model()
    text = str(err.value)
    assert "\n" not in text and "no qubes_firewall pillar here" in text
    assert "sudo qubesctl --skip-dom0 --targets=web state.apply qubes_firewall" in text
    assert str(record_file(tmp_path, "web")) in text
    assert run.pillar_errors() == [text]


def test_a_damaged_record_names_its_path(tmp_path):
    record_file(tmp_path).parent.mkdir(parents=True)
    record_file(tmp_path).write_text("{not json")
    with pytest.raises(qf_run.CommandExecutionError, match="applied-work.json is damaged"):
        qf_run.FunctionRun(opts(tmp_path), {}, {})


def test_drift_without_a_pillar_says_what_it_compared(tmp_path, raw, monkeypatch):
    record(tmp_path, raw, qube="web")
    run = qf_run.FunctionRun(opts(tmp_path, "web"), {}, {})
    monkeypatch.setattr(qf_run.Run, "drift", lambda self: {"drifted": False})
    assert "state.apply qubes_firewall test=True" in run.drift()["comment"]


def test_clean_removes_the_record(tmp_path, raw):
    record(tmp_path, raw)
    legacy = tmp_path / "state" / "applied.json"
    legacy.parent.mkdir(exist_ok=True)
    legacy.write_text("{}")
    run = qf_run.Run(opts(tmp_path), {}, {})
    files = qf_run.record_clean_files(run)
    assert sorted(files) == sorted([str(record_file(tmp_path)), str(legacy)])
    assert all(new is None for _old, new in files.values())


def test_the_record_survives_a_restart_and_names_a_state_dir_of_its_own(tmp_path, raw):
    """The record is under /rw (a restart wipes the root fs, where state_dir is); found without the
    pillar at its default place, it names the lookup:state_dir of the run (the lock, backups go there)."""
    raw["lookup"]["state_dir"] = str(tmp_path / "elsewhere")
    record(tmp_path, raw)
    assert not (tmp_path / "state").exists() and not (tmp_path / "elsewhere" / "applied.json").exists()
    run = qf_run.FunctionRun(opts(tmp_path), {}, {})
    assert run.source() and run.state_dir() == str(tmp_path / "elsewhere")
    assert run.backup_args()["directory"] == str(tmp_path / "elsewhere" / "backups")


def test_a_record_of_0_2_0_is_read_then_replaced(tmp_path, raw):
    """0.2.0 kept the record in <state_dir>/applied.json: still read; the next apply moves it under /rw."""
    legacy = tmp_path / "state" / "applied.json"
    legacy.parent.mkdir()
    legacy.write_text(qf_run.record_text("work", raw))
    run = qf_run.FunctionRun(opts(tmp_path), {}, {})
    assert run.record_file == str(legacy) and run.model().qubes["work"]
    record(tmp_path, raw)
    assert not legacy.exists() and record_file(tmp_path).exists()
    assert qf_run.FunctionRun(opts(tmp_path), {}, {}).record_file == str(record_file(tmp_path))


def test_a_disposable_template_records_for_its_disposables(tmp_path, raw):
    """default-dvm's run writes sys-firewall's record into its /rw (the disposable's /rw at each start);
    a record of a qube that is no longer a disposable there goes; a disposable keeps its siblings'."""
    raw["qubes"]["sys-firewall"]["dispvm_template"] = "default-dvm"
    stale = record_file(tmp_path, "old-disposable")
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    assert record(tmp_path, raw, qube="default-dvm") == ""
    data = json.loads(record_file(tmp_path, "sys-firewall").read_text())
    assert data["qube"] == "sys-firewall" and data["pillar"] == raw
    assert record_file(tmp_path, "default-dvm").exists() and not stale.exists()
    run = qf_run.FunctionRun(opts(tmp_path, "sys-firewall"), {}, {})
    assert run.qube_plan().qube == "sys-firewall"
    # a failed boot replay on the template: its disposables' records are not written
    record_file(tmp_path, "sys-firewall").unlink()
    assert record(tmp_path, raw, qube="default-dvm", summary={"nft": {"kept": 0}, "failed": ["boot replay"]}) == ""
    assert not record_file(tmp_path, "sys-firewall").exists()
    # the disposable's own run keeps a sibling's record (its /rw is the template's copy)
    raw["qubes"]["web"]["dispvm_template"] = "default-dvm"
    record_file(tmp_path, "web").write_text("{}")
    assert record(tmp_path, raw, qube="sys-firewall") == ""
    assert record_file(tmp_path, "web").exists()


def test_the_public_functions_use_the_record(tmp_path, raw):
    record(tmp_path, raw)
    module = load("qubes_firewall", opts=dict(opts(tmp_path), output="json"), pillar={}, context={}, grains={})
    plan = module.show_plan()
    assert plan["pillar_source"].startswith("as applied at ") and plan["qube"] == "work"
    answer = module.check("work", "build", "22")
    assert answer["allowed"] is True and answer["pillar_source"] == plan["pillar_source"]
    assert module.diagram(fmt="dot").startswith("// as applied at ")
    assert module.connect_tcp_commands() == []


def test_a_failed_run_s_summary_line_names_the_cause():
    """The last state's one line in qubesctl's log: what failed and why (the first problem)."""
    report = core("report")
    assert report.first_cause("invalid pillar:\nqubes_firewall:qubes:web:netvm: 'sys firewall' is not a qube name\n"
                              "qubes_firewall:x: y") == \
        "invalid pillar: qubes_firewall:qubes:web:netvm: 'sys firewall' is not a qube name"
    assert report.first_cause("nft -f failed: Error: No such file or directory\n  add chain ...") == \
        "nft -f failed: Error: No such file or directory"
    assert report.first_cause("") == ""
    line = report.qube_summary_line("web", {"failed": ["nft"], "why": "nft -f failed: Error: no table"})
    assert line == "web: nft FAILED: nft -f failed: Error: no table"
    assert report.qube_summary_line("web", {"nft": {"kept": 3}}) == "web: 3 kept, nothing to change (nft)"


def test_a_run_removes_what_a_run_killed_while_recording_left(tmp_path, raw):
    """The record is written atomically; a temporary file a killed run left goes with the next run,
    also when the record itself stays as it is."""
    assert record(tmp_path, raw) == ""
    path = record_file(tmp_path, "work")
    before = path.read_text()
    stale = path.parent / (qf_files.temp_prefix(str(path)) + "dead")
    stale.write_text("half")
    assert record(tmp_path, raw) == ""
    assert not stale.exists() and path.read_text() == before
