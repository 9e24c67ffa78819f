"""backup / backups / revert with the nft calls faked: names, pruning, one checked transaction."""

import datetime
import json

import pytest
from salt.exceptions import CommandExecutionError

from tests.modules import SaltDict
from tests.ops.helpers import SALT, backup


def doc(*tables):
    """An nft -j list ruleset document with these (empty) ip tables."""
    return {"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
            + [{"table": {"family": "ip", "name": t, "handle": i + 1}} for i, t in enumerate(tables)]}


@pytest.fixture
def fake_nft(monkeypatch):
    state = {"ruleset": doc("qubes"), "loaded": []}
    salt = SaltDict(SALT)
    salt["qubes_firewall_nft.read"] = lambda: state["ruleset"]
    salt["qubes_firewall_nft.load_json"] = lambda document: state["loaded"].append(document) or True
    monkeypatch.setattr(backup, "__salt__", salt, raising=False)
    return state


def test_file_names_sort_by_time_and_belong_to_one_owner():
    t = datetime.datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=datetime.timezone.utc)
    assert backup.file_name("sys-net", t) == "sys-net-20240501T120000.000005Z.json"
    names = ["sys-net-20240501T120000.000005Z.json", "sys-net-20240101T000000.000000Z.json",
             "sys-net-2-20240101T000000.000000Z.json", "sys-net-x.nft", "notes.txt"]
    assert backup.owned(names, "sys-net") == ["sys-net-20240101T000000.000000Z.json",
                                              "sys-net-20240501T120000.000005Z.json"]
    assert backup.owned(names, "sys-net-2") == ["sys-net-2-20240101T000000.000000Z.json"]
    assert backup.to_prune(names, "sys-net", 1) == ["sys-net-20240101T000000.000000Z.json"]


def test_backup_keeps_the_newest_n(tmp_path, fake_nft):
    paths = []
    for i in range(5):
        fake_nft["ruleset"] = doc("qubes", "t%d" % i)
        paths.append(backup.backup(str(tmp_path), keep=3, owner="web")["path"])
    other = backup.backup(str(tmp_path), keep=1, owner="work")["path"]
    listed = backup.backups(str(tmp_path), owner="web")
    assert [b["path"] for b in listed] == list(reversed(paths[2:]))
    assert json.loads(open(listed[0]["path"]).read()) == doc("qubes", "t4")
    assert (tmp_path / other.rsplit("/", 1)[1]).exists()  # another owner's files stay


def test_revert_is_one_flush_ruleset_transaction(tmp_path, fake_nft):
    first = backup.backup(str(tmp_path), keep=10, owner="web")["path"]
    fake_nft["ruleset"] = doc("qubes", "x")
    backup.backup(str(tmp_path), keep=10, owner="web")
    out = backup.revert(str(tmp_path), owner="web")
    flush = {"flush": {"ruleset": None}}
    assert fake_nft["loaded"][-1] == {"nftables": [flush] + doc("qubes", "x")["nftables"][1:]}
    name = first.rsplit("/", 1)[1]
    assert backup.revert(str(tmp_path), owner="web", name=name) == {"reverted_to": name, "path": first}
    assert fake_nft["loaded"][-1] == {"nftables": [flush] + doc("qubes")["nftables"][1:]}
    assert out["reverted_to"] != name


def test_revert_refuses_unknown_names_and_other_owners(tmp_path, fake_nft):
    with pytest.raises(CommandExecutionError, match="no backup of web"):
        backup.revert(str(tmp_path), owner="web")
    path = backup.backup(str(tmp_path), keep=10, owner="work")["path"]
    for name in (path.rsplit("/", 1)[1], "../etc/passwd", "x.json"):
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

    def refuse(document):
        raise CommandExecutionError("nft -c rejected the transaction, nothing was changed")

    monkeypatch.setitem(backup.__salt__, "qubes_firewall_nft.load_json", refuse)
    with pytest.raises(CommandExecutionError, match="nothing was changed"):
        backup.revert(str(tmp_path), owner="web")
