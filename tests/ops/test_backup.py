"""backup / backups / revert with the nft calls faked: names, pruning, one checked transaction."""

import datetime

import pytest
from salt.exceptions import CommandExecutionError

from tests.ops.helpers import SALT, backup


@pytest.fixture
def fake_nft(monkeypatch):
    state = {"ruleset": "table ip qubes {\n}\n", "loaded": []}
    monkeypatch.setattr(backup, "ruleset_text", lambda: state["ruleset"])
    salt = dict(SALT)
    salt["qubes_firewall_nft.load"] = lambda script: state["loaded"].append(script) or True
    monkeypatch.setattr(backup, "__salt__", salt, raising=False)
    return state


def test_file_names_sort_by_time_and_belong_to_one_owner():
    t = datetime.datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=datetime.timezone.utc)
    assert backup.file_name("sys-net", t) == "sys-net-20240501T120000.000005Z.nft"
    names = ["sys-net-20240501T120000.000005Z.nft", "sys-net-20240101T000000.000000Z.nft",
             "sys-net-2-20240101T000000.000000Z.nft", "sys-net-x.nft", "notes.txt"]
    assert backup.owned(names, "sys-net") == ["sys-net-20240101T000000.000000Z.nft",
                                              "sys-net-20240501T120000.000005Z.nft"]
    assert backup.owned(names, "sys-net-2") == ["sys-net-2-20240101T000000.000000Z.nft"]
    assert backup.to_prune(names, "sys-net", 1) == ["sys-net-20240101T000000.000000Z.nft"]


def test_backup_keeps_the_newest_n(tmp_path, fake_nft):
    paths = []
    for i in range(5):
        fake_nft["ruleset"] = "table ip qubes { # %d\n}\n" % i
        paths.append(backup.backup(str(tmp_path), keep=3, owner="web")["path"])
    other = backup.backup(str(tmp_path), keep=1, owner="work")["path"]
    listed = backup.backups(str(tmp_path), owner="web")
    assert [b["path"] for b in listed] == list(reversed(paths[2:]))
    assert open(listed[0]["path"]).read() == "table ip qubes { # 4\n}\n"
    assert (tmp_path / other.rsplit("/", 1)[1]).exists()  # another owner's files stay


def test_revert_is_one_flush_ruleset_transaction(tmp_path, fake_nft):
    first = backup.backup(str(tmp_path), keep=10, owner="web")["path"]
    fake_nft["ruleset"] = "table ip qubes {\n\tchain x {\n\t}\n}\n"
    backup.backup(str(tmp_path), keep=10, owner="web")
    out = backup.revert(str(tmp_path), owner="web")
    assert fake_nft["loaded"][-1] == "flush ruleset\ntable ip qubes {\n\tchain x {\n\t}\n}\n"
    name = first.rsplit("/", 1)[1]
    assert backup.revert(str(tmp_path), owner="web", name=name) == {"reverted_to": name, "path": first}
    assert fake_nft["loaded"][-1] == "flush ruleset\ntable ip qubes {\n}\n"
    assert out["reverted_to"] != name


def test_revert_refuses_unknown_names_and_other_owners(tmp_path, fake_nft):
    with pytest.raises(CommandExecutionError, match="no backup of web"):
        backup.revert(str(tmp_path), owner="web")
    path = backup.backup(str(tmp_path), keep=10, owner="work")["path"]
    for name in (path.rsplit("/", 1)[1], "../etc/passwd", "x.nft"):
        with pytest.raises(CommandExecutionError, match="not a backup of web"):
            backup.revert(str(tmp_path), owner="web", name=name)
    assert fake_nft["loaded"] == []


def test_bad_keep_and_owner(tmp_path, fake_nft):
    with pytest.raises(CommandExecutionError):
        backup.backup(str(tmp_path), keep=0, owner="web")
    with pytest.raises(CommandExecutionError):
        backup.backup(str(tmp_path), keep="many", owner="web")
    with pytest.raises(CommandExecutionError):
        backup.backup(str(tmp_path), owner="../x")


def test_failed_load_raises_and_nothing_else_happens(tmp_path, fake_nft, monkeypatch):
    backup.backup(str(tmp_path), owner="web")

    def refuse(script):
        raise CommandExecutionError("nft -c rejected the transaction, nothing was changed")

    monkeypatch.setitem(backup.__salt__, "qubes_firewall_nft.load", refuse)
    with pytest.raises(CommandExecutionError, match="nothing was changed"):
        backup.revert(str(tmp_path), owner="web")
