"""backup / backups / revert with the nft calls faked: names, pruning, one checked transaction."""

import datetime
import json

import pytest
from salt.exceptions import CommandExecutionError

from tests.ops.helpers import backup, nft


def doc(*tables):
    """An nft -j list ruleset document with these (empty) ip tables."""
    return {"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
            + [{"table": {"family": "ip", "name": t, "handle": i + 1}} for i, t in enumerate(tables)]}


@pytest.fixture
def fake_nft(monkeypatch):
    state = {"ruleset": doc("qubes"), "loaded": []}
    monkeypatch.setattr(nft, "read", lambda: state["ruleset"])
    monkeypatch.setattr(nft, "load_json", lambda document: state["loaded"].append(document) or True)
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

    monkeypatch.setattr(nft, "load_json", refuse)
    with pytest.raises(CommandExecutionError, match="nothing was changed"):
        backup.revert(str(tmp_path), owner="web")


def concat_map(**extra):
    """A DNAT map as nft 1.0.6 lists it in JSON (the formula's qf-nat-* shape)."""
    body = {"family": "ip", "name": "qf-nat-1", "table": "qubes", "type": ["inet_proto", "inet_service"],
            "handle": 7, "comment": "port forwards", "map": "ipv4_addr . inet_service",
            "elem": [[{"elem": {"val": {"concat": ["tcp", 443]}, "comment": "port_forwards:https",
                                "counter": {"packets": 3, "bytes": 180}}},
                      {"concat": ["10.137.0.5", 443]}],
                     [{"elem": {"val": {"concat": ["udp", 53]}}}, {"concat": ["10.137.0.6", 5353]}]],
            "stmt": [{"counter": None}]}
    body.update(extra)
    return {"map": body}


def test_concat_data_maps_are_recognised():
    assert backup.concat_data(concat_map())
    assert backup.concat_data(concat_map(map=["ipv4_addr", "inet_service"]))
    assert not backup.concat_data(concat_map(map="inet_service"))
    assert not backup.concat_data({"set": {"name": "s", "type": ["ipv4_addr", "inet_service"]}})
    assert not backup.concat_data({"table": {"family": "ip", "name": "qubes"}})


def test_concat_map_renders_as_nft_text():
    assert backup.set_text(concat_map()) == (
        "add table ip qubes\n"
        "add map ip qubes qf-nat-1 {\n"
        "\ttype inet_proto . inet_service : ipv4_addr . inet_service\n"
        "\tcounter\n"
        '\tcomment "port forwards"\n'
        "\telements = { tcp . 443 counter packets 3 bytes 180 comment \"port_forwards:https\" : 10.137.0.5 . 443,\n"
        "\tudp . 53 : 10.137.0.6 . 5353 }\n"
        "}\n")
    plain = concat_map(flags=["timeout"], elem=[], stmt=[])
    del plain["map"]["comment"]
    assert backup.set_text(plain) == (
        "add table ip qubes\nadd map ip qubes qf-nat-1 {\n"
        "\ttype inet_proto . inet_service : ipv4_addr . inet_service\n\tflags timeout\n}\n")


@pytest.mark.parametrize("extra, named", [
    ({"flags": ["interval"]}, "interval flag"),
    ({"timeout": 30}, "attribute(s) timeout"),
    ({"stmt": [{"limit": {"rate": 1}}]}, "statement(s)"),
    ({"comment": 'a "quoted" word'}, "comment"),
    ({"type": ["ifname", "inet_service"]}, "type"),
    ({"map": "ipv4_addr . inet_service; flush ruleset"}, "type"),
    ({"elem": [[{"elem": {"val": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"concat": ["10.0.0.1", 1]}]]},
     "element value"),
    ({"elem": [[{"concat": ["tcp", "443 } ; flush ruleset"]}, {"concat": ["10.0.0.1", 1]}]]}, "element value"),
    ({"elem": [[{"elem": {"val": "tcp", "timeout": 3}}, {"concat": ["10.0.0.1", 1]}]]}, "element"),
    ({"table": "x y"}, "name"),
])
def test_concat_map_refuses_what_it_cannot_render(extra, named):
    with pytest.raises(CommandExecutionError, match="cannot revert this backup: .*%s" % named.split("(")[0]):
        backup.set_text(concat_map(**extra))


def test_scratch_steps_keep_the_document_order():
    table = {"table": {"family": "ip", "name": "qubes", "handle": 1}}
    chain = {"chain": {"family": "ip", "table": "qubes", "name": "qf-nat", "handle": 2}}
    document = {"nftables": [{"metainfo": {"version": "1.0.6"}}, table, concat_map(), chain]}
    steps = backup.scratch_steps(document)
    assert [kind for kind, _ in steps] == ["json", "text", "json"]
    other = {"set": {"family": "ip", "table": "qubes", "name": "s", "type": "ipv4_addr",
                     "elem": [{"elem": {"val": "10.0.0.1", "counter": {"packets": 2, "bytes": 9}}}]}}
    odd = {"set": dict(other["set"], name="odd", type="ifname")}
    mixed = backup.scratch_steps({"nftables": [table, other, odd, chain]})
    assert [kind for kind, _ in mixed] == ["json", "text", "json"]  # the set it cannot render stays JSON
    assert mixed[1][1] == ("add table ip qubes\nadd set ip qubes s {\n\ttype ipv4_addr\n"
                           "\telements = { 10.0.0.1 counter packets 2 bytes 9 }\n}\n")
    assert json.loads(mixed[2][1]) == {"nftables": [odd, chain]}
    assert json.loads(steps[0][1]) == {"nftables": [table]}
    assert json.loads(steps[2][1]) == {"nftables": [chain]}


def test_revert_of_a_concat_map_loads_checked_text(tmp_path, fake_nft, monkeypatch):
    fake_nft["ruleset"] = {"nftables": doc("qubes")["nftables"] + [concat_map()]}
    backup.backup(str(tmp_path), owner="sys-net")
    calls = []
    monkeypatch.setattr(backup, "scratch_text", lambda saved: calls.append(("scratch", saved)) or "table ip qubes {\n}\n")
    monkeypatch.setattr(nft, "check", lambda script: calls.append(("check", script)))
    monkeypatch.setattr(nft, "load", lambda script: calls.append(("load", script)))
    backup.revert(str(tmp_path), owner="sys-net")
    script = "flush ruleset\ntable ip qubes {\n}\n"
    assert calls == [("scratch", fake_nft["ruleset"]), ("check", script), ("load", script)]
    assert fake_nft["loaded"] == []  # not the JSON load


def test_revert_of_a_concat_map_that_fails_the_check_loads_nothing(tmp_path, fake_nft, monkeypatch):
    fake_nft["ruleset"] = {"nftables": doc("qubes")["nftables"] + [concat_map()]}
    backup.backup(str(tmp_path), owner="sys-net")
    loaded = []
    monkeypatch.setattr(backup, "scratch_text", lambda saved: "table ip qubes {\n}\n")

    def refuse(script):
        raise CommandExecutionError("nft -c rejected the transaction, nothing was changed")

    monkeypatch.setattr(nft, "check", refuse)
    monkeypatch.setattr(nft, "load", loaded.append)
    with pytest.raises(CommandExecutionError, match="nothing was changed"):
        backup.revert(str(tmp_path), owner="sys-net")
    assert loaded == [] and fake_nft["loaded"] == []
