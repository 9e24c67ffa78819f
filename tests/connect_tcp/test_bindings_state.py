"""A client qube: the connect_tcp_bindings state on a fake /rw/config and a fake systemd."""

import os
import stat

from .conftest import GOLDEN, Minion, example_pillar, pillar_in, snapshot, systemctl_calls

SOCKET = "qf-connect-tcp-444-untrusted.socket"
SERVICE = "qf-connect-tcp-444-untrusted@.service"
BEGIN = "# BEGIN qubes_firewall:connect-tcp (managed by Salt, do not edit)"




def minion(tmp_path, run_dir=None, qube="untrusted", entries=None):
    opts = {}
    # never the host's /run/systemd/system: a missing dir stands for "systemd not running"
    opts["qubes_firewall_systemd_run_dir"] = str(run_dir or tmp_path / "no-systemd")
    return Minion(qube, pillar_in(tmp_path, entries), **opts)




def test_units_and_rc_local_block_without_systemd(tmp_path):
    ret = minion(tmp_path).state("connect_tcp_bindings_managed")
    assert ret["result"] is True, ret
    rw = tmp_path / "rw"
    assert (rw / SOCKET).read_text() == (GOLDEN / SOCKET).read_text()
    assert (rw / SERVICE).read_text() == (GOLDEN / SERVICE).read_text()
    block = (GOLDEN / "rc.local.block").read_text().replace("/rw/config", str(rw))
    rc_local = (rw / "rc.local").read_text()
    assert rc_local.startswith("#!/bin/sh\n" + BEGIN + "\n" + block)
    assert stat.S_IMODE((rw / "rc.local").stat().st_mode) == 0o755
    assert stat.S_IMODE((rw / SOCKET).stat().st_mode) == 0o644
    assert "systemd is not running here" in ret["comment"]
    assert "qvm-connect-tcp 10444:mytcp-service:444; qvm-connect-tcp ::445" in ret["comment"]
    assert "runtime" not in ret["changes"]


def test_second_run_reports_no_changes(tmp_path, fake_systemd):
    m = minion(tmp_path, fake_systemd)
    assert m.state("connect_tcp_bindings_managed")["changes"]
    before = snapshot(tmp_path / "rw"), snapshot(fake_systemd)
    calls = len(systemctl_calls(tmp_path))
    ret = m.state("connect_tcp_bindings_managed")
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert (snapshot(tmp_path / "rw"), snapshot(fake_systemd)) == before
    # the second run only asked whether the socket is active
    assert systemctl_calls(tmp_path)[calls:] == ["is-active --quiet " + SOCKET]


def test_test_mode_writes_nothing_and_runs_nothing(tmp_path, fake_systemd):
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "rc.local").write_text("#!/bin/sh\necho mine\n")
    m = minion(tmp_path, fake_systemd)
    before = snapshot(tmp_path)
    ret = m.state("connect_tcp_bindings_managed", test=True)
    assert ret["result"] is None, ret
    assert snapshot(tmp_path) == before
    assert all(call.startswith("is-active") for call in systemctl_calls(tmp_path))
    assert ret["changes"]["runtime"] == [
        "install %s/%s" % (fake_systemd, SOCKET), "install %s/%s" % (fake_systemd, SERVICE),
        "systemctl daemon-reload", "systemctl start " + SOCKET]
    real = m.state("connect_tcp_bindings_managed")
    assert real["changes"] == ret["changes"]


def test_runtime_start_installs_reloads_and_starts(tmp_path, fake_systemd):
    ret = minion(tmp_path, fake_systemd).state("connect_tcp_bindings_managed")
    assert ret["result"] is True, ret
    assert (fake_systemd / SOCKET).read_text() == (GOLDEN / SOCKET).read_text()
    assert (fake_systemd / SERVICE).read_text() == (GOLDEN / SERVICE).read_text()
    assert systemctl_calls(tmp_path) == ["daemon-reload", "start " + SOCKET]


def test_stopped_socket_is_started_again_without_reload(tmp_path, fake_systemd):
    m = minion(tmp_path, fake_systemd)
    m.state("connect_tcp_bindings_managed")
    (tmp_path / "systemctl" / "active").write_text("")
    ret = m.state("connect_tcp_bindings_managed")
    assert ret["changes"] == {"runtime": ["systemctl start " + SOCKET]}, ret
    assert systemctl_calls(tmp_path)[-2:] == ["is-active --quiet " + SOCKET, "start " + SOCKET]


def test_changed_server_rewrites_the_service_and_reloads(tmp_path, fake_systemd):
    m = minion(tmp_path, fake_systemd)
    m.state("connect_tcp_bindings_managed")
    entries = example_pillar()["connect_tcp"]
    entries[0] = dict(entries[0], server="other-service", call="named")
    m.set_pillar(pillar_in(tmp_path, entries))
    ret = m.state("connect_tcp_bindings_managed")
    assert ret["result"] is True, ret
    assert "ExecStart=qrexec-client-vm other-service qubes.ConnectTCP+444" in (
        tmp_path / "rw" / SERVICE).read_text()
    assert (fake_systemd / SERVICE).read_text() == (tmp_path / "rw" / SERVICE).read_text()
    # the description names the server, so the socket changed too: restarted
    assert ret["changes"]["runtime"][-2:] == ["systemctl daemon-reload", "systemctl restart " + SOCKET]


def test_removed_entry_removes_units_rc_local_lines_and_runtime(tmp_path, fake_systemd):
    rw = tmp_path / "rw"
    rw.mkdir()
    user = "#!/bin/sh\n# mine\nip link set eth1 up\n"
    (rw / "rc.local").write_text(user)
    (rw / "rc.local").chmod(0o755)
    (rw / "my-own.socket").write_text("[Socket]\n")
    m = minion(tmp_path, fake_systemd)
    m.state("connect_tcp_bindings_managed")
    assert (rw / SOCKET).exists()
    m.set_pillar(pillar_in(tmp_path, [e for e in example_pillar()["connect_tcp"] if not e.get("persistent")]))
    ret = m.state("connect_tcp_bindings_managed")
    assert ret["result"] is True, ret
    assert not (rw / SOCKET).exists() and not (rw / SERVICE).exists()
    assert (rw / "rc.local").read_text() == user
    assert (rw / "my-own.socket").exists()
    assert os.listdir(fake_systemd) == []
    assert systemctl_calls(tmp_path)[-2:] == ["stop " + SOCKET, "daemon-reload"]
    assert ret["changes"]["runtime"] == [
        "systemctl stop " + SOCKET, "rm %s/%s" % (fake_systemd, SOCKET),
        "rm %s/%s" % (fake_systemd, SERVICE), "systemctl daemon-reload"]
    assert m.state("connect_tcp_bindings_managed")["changes"] == {}


def test_other_qubes_units_in_a_shared_rw_config_are_left_alone(tmp_path):
    rw = tmp_path / "rw"
    rw.mkdir()
    theirs = ["qf-connect-tcp-444-untrusted-2.socket", "qf-connect-tcp-444-untrusted-2@.service"]
    for name in theirs:
        (rw / name).write_text("x\n")
    minion(tmp_path, entries=[]).state("connect_tcp_bindings_managed")
    assert sorted(os.listdir(rw)) == theirs


def test_qube_without_bindings_changes_nothing(tmp_path):
    ret = minion(tmp_path, qube="mytcp-service").state("connect_tcp_bindings_managed")
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert not (tmp_path / "rw").exists()
    assert "systemd" not in ret["comment"]


def test_rc_local_that_is_not_executable_is_made_executable(tmp_path):
    m = minion(tmp_path)
    m.state("connect_tcp_bindings_managed")
    rc_local = tmp_path / "rw" / "rc.local"
    rc_local.chmod(0o644)
    ret = m.state("connect_tcp_bindings_managed", test=True)
    assert ret["result"] is None and str(rc_local) in ret["changes"], ret
    assert stat.S_IMODE(rc_local.stat().st_mode) == 0o644
    m.state("connect_tcp_bindings_managed")
    assert stat.S_IMODE(rc_local.stat().st_mode) == 0o755


def test_systemctl_failure_is_a_failed_state_not_a_traceback(tmp_path, fake_systemd, fake_bin):
    (fake_bin / "systemctl").write_text("#!/bin/sh\necho 'Failed to start: Address in use' >&2\nexit 1\n")
    ret = minion(tmp_path, fake_systemd).state("connect_tcp_bindings_managed")
    assert ret["result"] is False
    assert "Address in use" in ret["comment"]
    # the files were written before systemd failed, and the changes say so
    assert str(tmp_path / "rw" / SOCKET) in ret["changes"]


def test_bad_unit_is_refused_by_systemd_analyze(tmp_path, fake_bin):
    (fake_bin / "systemd-analyze").write_text(
        "#!/bin/sh\nfor f; do case $f in *.socket) echo \"$f:5: Unknown key\";; esac; done\nexit 1\n")
    (fake_bin / "systemd-analyze").chmod(0o755)
    ret = minion(tmp_path).state("connect_tcp_bindings_managed")
    assert ret["result"] is False and "systemd-analyze verify rejects" in ret["comment"], ret
    assert ret["changes"] == {}
    assert not (tmp_path / "rw").exists()


def test_real_systemd_analyze_accepts_the_units(tmp_path):
    import shutil

    import pytest

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    ret = minion(tmp_path).state("connect_tcp_bindings_managed")
    assert ret["result"] is True, ret
    assert "systemd-analyze verify accepts the units" in ret["comment"]


def test_units_are_verified_only_when_they_change(tmp_path, fake_bin):
    log = tmp_path / "analyze.log"
    (fake_bin / "systemd-analyze").write_text('#!/bin/sh\necho "$@" >> %s\n' % log)
    (fake_bin / "systemd-analyze").chmod(0o755)
    m = minion(tmp_path)
    assert "systemd-analyze verify accepts" in m.state("connect_tcp_bindings_managed")["comment"]
    assert len(log.read_text().splitlines()) == 1
    assert SOCKET in log.read_text() and SERVICE in log.read_text()
    assert m.state("connect_tcp_bindings_managed")["changes"] == {}
    assert len(log.read_text().splitlines()) == 1
