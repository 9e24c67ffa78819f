"""dom0: the connect_tcp_policy state on a policy file in tmp_path."""

import copy
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import FAKE_POLICY_LINT, GOLDEN, Minion, core, example_pillar, pillar_in, snapshot, write_tool

BEGIN = "# BEGIN qubes_firewall:connect-tcp (managed by Salt, do not edit)"
END = "# END qubes_firewall:connect-tcp"




def policy_path(tmp_path):
    return tmp_path / "policy.d" / "30-user-networking.policy"




def test_new_policy_file_holds_the_seed_block_mode_0664(tmp_path):
    minion = Minion("dom0", pillar_in(tmp_path))
    ret = minion.state("connect_tcp_policy_managed")
    assert ret["result"] is True, ret
    path = policy_path(tmp_path)
    text = path.read_text()
    assert text.split(BEGIN + "\n")[1].split(END)[0] == (GOLDEN / "seed.policy").read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    assert str(path) in ret["changes"]


def test_second_run_reports_no_changes(tmp_path):
    minion = Minion("dom0", pillar_in(tmp_path))
    assert minion.state("connect_tcp_policy_managed")["changes"]
    before = snapshot(tmp_path)
    ret = minion.state("connect_tcp_policy_managed")
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert snapshot(tmp_path) == before


def test_test_mode_writes_nothing_and_shows_the_exact_diff(tmp_path):
    path = policy_path(tmp_path)
    path.parent.mkdir()
    path.write_text("qubes.ConnectTCP +22 work build allow\n")
    minion = Minion("dom0", pillar_in(tmp_path))
    before = snapshot(tmp_path)
    ret = minion.state("connect_tcp_policy_managed", test=True)
    assert ret["result"] is None, ret
    assert snapshot(tmp_path) == before
    diff = ret["changes"][str(path)]
    real = minion.state("connect_tcp_policy_managed")
    assert real["changes"][str(path)] == diff
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert "\n".join(added) + "\n" == path.read_text().split("qubes.ConnectTCP +22 work build allow\n")[1]


def test_removed_entries_lose_their_lines_and_the_users_lines_stay(tmp_path):
    path = policy_path(tmp_path)
    path.parent.mkdir()
    user = "# mine\nqubes.ConnectTCP +22 work build allow\n"
    path.write_text(user)
    minion = Minion("dom0", pillar_in(tmp_path))
    minion.state("connect_tcp_policy_managed")
    assert "target=mytcp-service-bis" in path.read_text()
    entries = [e for e in example_pillar()["connect_tcp"] if e["server"] != "mytcp-service-bis"]
    minion.set_pillar(pillar_in(tmp_path, entries))
    ret = minion.state("connect_tcp_policy_managed")
    assert ret["result"] is True and ret["changes"]
    assert "mytcp-service-bis" not in path.read_text()
    minion.set_pillar(pillar_in(tmp_path, []))
    ret = minion.state("connect_tcp_policy_managed")
    assert path.read_text() == user, ret


def test_a_file_the_formula_created_goes_away_with_the_last_entry(tmp_path):
    minion = Minion("dom0", pillar_in(tmp_path))
    minion.state("connect_tcp_policy_managed")
    minion.set_pillar(pillar_in(tmp_path, []))
    ret = minion.state("connect_tcp_policy_managed")
    assert ret["result"] is True and ret["changes"]
    assert not policy_path(tmp_path).exists()
    assert minion.state("connect_tcp_policy_managed")["changes"] == {}


def test_lint_failure_leaves_the_old_file(tmp_path, fake_bin):
    write_tool(fake_bin, "qubes-policy-lint", FAKE_POLICY_LINT)
    path = policy_path(tmp_path)
    path.parent.mkdir()
    # the user's own broken line: the new file would not lint, so nothing is written
    old = "qubes.ConnectTCP +22 work @default allow\n"
    path.write_text(old)
    path.chmod(0o640)
    minion = Minion("dom0", pillar_in(tmp_path))
    for test in (True, False):
        ret = minion.state("connect_tcp_policy_managed", test=test)
        assert ret["result"] is False, ret
        assert ret["changes"] == {}
        assert "%s:1: error: allow to @default requires target=" % path in ret["comment"]
        assert path.read_text() == old
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_lint_passes_the_formulas_own_lines(tmp_path, fake_bin):
    write_tool(fake_bin, "qubes-policy-lint", FAKE_POLICY_LINT)
    minion = Minion("dom0", pillar_in(tmp_path, example_pillar()["connect_tcp"] + [
        {"client": "@anyvm", "server": "cache", "port": 3128},
        {"client": "@tag:dev", "server": "git", "port": 22, "call": "named"}]))
    ret = minion.state("connect_tcp_policy_managed")
    assert ret["result"] is True, ret
    assert "qubes-policy-lint accepts" in ret["comment"]


def test_policy_file_name_qubes_would_refuse_fails_before_any_change(tmp_path):
    data = pillar_in(tmp_path)
    data["lookup"]["policy_file"] = str(tmp_path / "policy.d" / "30-User.policy")
    minion = Minion("dom0", data)
    ret = minion.state("connect_tcp_policy_managed")
    assert ret["result"] is False
    assert "qubes_firewall:lookup:policy_file" in ret["comment"]
    assert not (tmp_path / "policy.d").exists()


def test_broken_markers_fail_and_change_nothing(tmp_path):
    path = policy_path(tmp_path)
    path.parent.mkdir()
    old = BEGIN + "\nqubes.ConnectTCP +1 a @default allow target=b\n"
    path.write_text(old)
    ret = Minion("dom0", pillar_in(tmp_path)).state("connect_tcp_policy_managed")
    assert ret["result"] is False and "markers" in ret["comment"]
    assert path.read_text() == old


# user content around the block: any printable lines that are not our markers
_line = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\r"),
                max_size=40).filter(lambda s: "qubes_firewall:connect-tcp" not in s)
_user = st.lists(_line, max_size=6).map(lambda ls: "".join(x + "\n" for x in ls))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=_user, after=_user, last_newline=st.booleans())
def test_users_lines_around_the_block_stay_byte_for_byte(tmp_path_factory, before, after, last_newline):
    tmp_path = tmp_path_factory.mktemp("policy")
    path = policy_path(tmp_path)
    path.parent.mkdir()
    minion = Minion("dom0", pillar_in(tmp_path))
    # the block in the middle of the user's lines
    path.write_text(before + BEGIN + "\nold line\n" + END + "\n" + after)
    assert minion.state("connect_tcp_policy_managed")["result"] is True
    text = path.read_text()
    assert text.startswith(before + BEGIN + "\n")
    assert text.endswith(END + "\n" + after)
    assert minion.state("connect_tcp_policy_managed")["changes"] == {}
    # removal gives back exactly the user's lines
    minion.set_pillar(pillar_in(tmp_path, []))
    assert minion.state("connect_tcp_policy_managed")["result"] is True
    rest = before + after
    if rest.strip() == "":
        assert not path.exists()
    else:
        assert path.read_text() == rest

    # a file without the block: the block is added, the user's bytes stay
    user = before + after
    if user and not last_newline:
        user = user[:-1]
    path.parent.mkdir(exist_ok=True)
    path.write_text(user)
    minion.set_pillar(pillar_in(tmp_path))
    assert minion.state("connect_tcp_policy_managed")["result"] is True
    text = path.read_text()
    start = text.index(BEGIN)
    end = text.index(END) + len(END) + 1
    assert text[:start] + text[end:] == (user if user.endswith("\n") or not user else user + "\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another group")
def test_new_file_gets_the_policy_group_when_it_exists(tmp_path, monkeypatch):
    import grp

    minion = Minion("dom0", pillar_in(tmp_path))
    module = core("connect_tcp")
    assert module.POLICY_GROUP == "qubes"
    # this machine has no group qubes: stand in with another existing group
    monkeypatch.setattr(module, "POLICY_GROUP", grp.getgrgid(1).gr_name)
    assert minion.state("connect_tcp_policy_managed")["result"] is True
    assert policy_path(tmp_path).stat().st_gid == 1


def test_no_policy_group_no_chown(tmp_path, monkeypatch):
    minion = Minion("dom0", pillar_in(tmp_path))
    monkeypatch.setattr(core("connect_tcp"), "POLICY_GROUP", "no-such-group-qf")
    assert minion.state("connect_tcp_policy_managed")["result"] is True
    assert policy_path(tmp_path).stat().st_gid == os.getegid()


# ---- dom0 clean: policy_absent ---------------------------------------------


@pytest.mark.parametrize("user", ["", "# mine\nqubes.ConnectTCP +22 work build allow\n"])
def test_policy_absent_removes_the_block_only_test_mode_first_then_nothing(tmp_path, user):
    path = policy_path(tmp_path)
    if user:
        path.parent.mkdir()
        path.write_text(user)
    minion = Minion("dom0", pillar_in(tmp_path))
    assert minion.state("connect_tcp_policy_managed")["result"] is True
    before = snapshot(tmp_path)

    dry = minion.state("connect_tcp_policy_absent", test=True)
    assert dry["result"] is None and str(path) in dry["changes"], dry
    assert snapshot(tmp_path) == before
    assert "qvm-prefs (netvm, provides_network) and qvm-firewall lists are left as they are" in dry["comment"]

    ret = minion.state("connect_tcp_policy_absent")
    assert ret["result"] is True and ret["changes"] == dry["changes"], ret
    if user:
        assert path.read_text() == user  # the user's bytes, nothing else
    else:
        assert not path.exists()  # the formula created it and nothing else is left
    assert "qvm-firewall lists are left as they are" in ret["comment"]

    after = snapshot(tmp_path)
    again = minion.state("connect_tcp_policy_absent")
    assert again["result"] is True and again["changes"] == {}, again
    assert snapshot(tmp_path) == after


def test_policy_absent_without_a_file_changes_nothing(tmp_path):
    ret = Minion("dom0", pillar_in(tmp_path)).state("connect_tcp_policy_absent")
    assert ret["result"] is True and ret["changes"] == {}
    assert not policy_path(tmp_path).parent.exists()


def test_policy_absent_with_broken_markers_fails_and_changes_nothing(tmp_path):
    path = policy_path(tmp_path)
    path.parent.mkdir()
    old = "# mine\n" + BEGIN + "\nqubes.ConnectTCP +1 a @default allow target=b\n"
    path.write_text(old)
    ret = Minion("dom0", pillar_in(tmp_path)).state("connect_tcp_policy_absent")
    assert ret["result"] is False and "nothing changed" in ret["comment"] and ret["changes"] == {}
    assert path.read_text() == old


def test_policy_absent_works_with_a_broken_pillar(tmp_path):
    minion = Minion("dom0", pillar_in(tmp_path))
    assert minion.state("connect_tcp_policy_managed")["result"] is True
    broken = copy.deepcopy(pillar_in(tmp_path))  # never the shared QUBES of conftest
    broken["qubes"]["untrusted"]["netvm"] = "no-such-qube"
    minion.set_pillar(broken)
    ret = minion.state("connect_tcp_policy_absent")
    assert ret["result"] is True and ret["changes"], ret
    assert not policy_path(tmp_path).exists()
