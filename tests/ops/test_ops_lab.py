"""
Operations in the lab (issue 6): pillar.example/full.sls applied with real salt-call in every
emulated qube, then status, drift, backup/revert and check, each compared with what real nft and
real packets say.
"""

import concurrent.futures
import json
import pathlib
import subprocess

import pytest
import yaml

from tests.e2e.formula_lab import FormulaLab
from tests.e2e.full_example import full_pillar
from tests.ops.helpers import applied_and_serving, backup, example_model, flow

PORTS = (22, 443)
LAN = {"interface": "ens6", "source_ip": "192.168.1.50"}
FORWARD_HOPS = ("sys-net", "sys-firewall", "web")


def configure_backups(flab, root):
    """Each minion keeps its backups in the test's tmp dir (never /var/lib of the test machine)."""
    for qube in flab.lab.order:
        minion = flab.minion(qube)
        conf = minion.conf / "minion"
        options = yaml.safe_load(conf.read_text())
        options["qubes_firewall_backup_dir"] = str(pathlib.Path(root) / "backups")
        options["qubes_firewall_backup_keep"] = 2
        conf.write_text(yaml.safe_dump(options))


@pytest.fixture(scope="module")
def flab(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops-lab")
    lab = FormulaLab(full_pillar(), root)
    try:
        configure_backups(lab, root)
        applied_and_serving(lab, PORTS)
        yield lab
    finally:
        lab.close()


def call(flab, qube, *args):
    rc, out, proc = flab.minion(qube).run(*args)
    assert out is not None, proc.stderr
    return rc, out


def https_counters(flab):
    out = {}
    for qube in FORWARD_HOPS:
        rc, status = call(flab, qube, "qubes_firewall.status", "origin=port_forwards:https")
        assert rc == 0 and status["missing"] == [], status
        out[qube] = status["by_origin"]["port_forwards:https"]
    return out


def test_status_counters_grow_with_real_packets_in_every_hop(flab):
    before = https_counters(flab)
    assert {q: c["rules"] for q, c in before.items()} == {"sys-net": 2, "sys-firewall": 2, "web": 1}
    for _ in range(3):
        assert flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2) == "web:443"
    after = https_counters(flab)
    for qube in FORWARD_HOPS:
        assert after[qube]["packets"] >= before[qube]["packets"] + 3, (qube, before, after)
        assert after[qube]["bytes"] > before[qube]["bytes"]
    rc, status = call(flab, "sys-firewall-2", "qubes_firewall.status")
    assert [r["origin"] for r in status["rules"]] == ["connections:0 work->build forward"]


def test_check_agrees_with_real_probes_for_every_ordered_pair(flab):
    mdl = example_model("full")
    nodes = ["lan"] + list(flab.lab.order)
    questions = [(s, t, p) for s in nodes for t in nodes if s != t for p in PORTS]

    def probe(question):
        source, target, port = question
        if source == "lan":  # from outside: what the uplink publishes on its LAN address
            return flab.lab.probe_tcp("lan", "192.168.1.10", port, source=LAN["source_ip"], timeout=1.5)
        return flab.lab.probe_tcp(source, target, port, timeout=1.5)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        banners = dict(zip(questions, pool.map(probe, questions)))
    mismatches = []
    for question in questions:
        source, target, port = question
        answer = flow.check(mdl, source, target, port, **(LAN if source == "lan" else {}))
        reach = answer["reaches"]
        expected = "%s:%d" % (reach["node"], reach["port"]) if reach else None
        if banners[question] != expected or answer["allowed"] != (expected == "%s:%d" % (target, port)):
            mismatches.append((question, answer["allowed"], expected, banners[question], answer["reason"]))
    assert not mismatches, "\n".join(str(m) for m in mismatches)
    allowed = sorted(q for q in questions if banners[q] and banners[q].startswith(q[1] + ":"))
    assert ("work", "build", 22) in allowed and ("lan", "web", 443) in allowed
    # the same answer through salt-call, as a user asks it
    rc, out = call(flab, "work", "qubes_firewall.check", "work", "build", "22")
    assert rc == 0 and out["allowed"] is True and out["rules"][0]["qube"] == "sys-firewall-2"


def test_drift_finds_hand_edits_and_a_lost_block_with_a_nonzero_exit(flab):
    rc, out = call(flab, "sys-firewall", "qubes_firewall.drift")
    assert rc == 0 and out["drifted"] is False, out
    flab.lab.run("sys-firewall", ["nft", "add", "rule", "ip", "qubes", "qf-forward", "tcp", "dport", "9999",
                                  "accept"])
    rc, out = call(flab, "sys-firewall", "qubes_firewall.drift")
    assert rc == 1 and out["drifted"] is True
    assert [d["kind"] for d in out["live"]] == ["rule unexpected"] and "flush chain" in out["fix"]

    rc_local = flab.lab.rw_config("web") / "rc.local"
    text = rc_local.read_text()
    rc_local.write_text(text.split("# BEGIN qubes_firewall:rules")[0])
    rc, out = call(flab, "web", "qubes_firewall.drift")
    assert rc == 1 and [d["kind"] for d in out["persisted"]] == ["block missing"] and out["live"] == []

    flab.lab.run("sys-net", ["nft", "flush", "chain", "ip", "qubes", "qf-forward"])
    rc, out = call(flab, "sys-net", "qubes_firewall.drift")
    assert rc == 1 and {d["kind"] for d in out["live"]} == {"rule missing"}

    for qube in ("sys-firewall", "web", "sys-net"):
        assert flab.apply(qube).retcode == 0
        rc, out = call(flab, qube, "qubes_firewall.drift")
        assert rc == 0 and out["drifted"] is False, (qube, out)


def test_backup_and_revert_restore_the_ruleset_byte_for_byte(flab):
    qube = "sys-vpn"
    rc, saved = call(flab, qube, "qubes_firewall.backup")
    assert rc == 0
    text = flab.lab.run(qube, ["nft", "list", "ruleset"]).stdout
    assert json.loads(pathlib.Path(saved["path"]).read_text()) == json.loads(
        flab.lab.run(qube, ["nft", "-j", "list", "ruleset"]).stdout)
    flab.lab.run(qube, ["nft", "flush", "chain", "ip", "qubes", "custom-input"])
    flab.lab.run(qube, ["nft", "add", "table", "ip", "mistake"])
    assert flab.lab.run(qube, ["nft", "list", "ruleset"]).stdout != text
    rc, out = call(flab, qube, "qubes_firewall.revert")
    assert rc == 0 and out["path"] == saved["path"]
    assert flab.lab.run(qube, ["nft", "list", "ruleset"]).stdout == text


def without_handles(document):
    """An nft JSON listing without its handles and metainfo (handles are renumbered by any reload)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "handle"}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return [strip(item) for item in document["nftables"] if "metainfo" not in item]


def test_revert_restores_a_dnat_map_of_concatenated_data(flab):
    """sys-net holds the port forwards' DNAT map (ipv4_addr . inet_service data): nft 1.0.6 cannot load
    it back from JSON, so revert goes through nft's text, built in a scratch netns."""
    qube = "sys-net"
    document = json.loads(flab.lab.run(qube, ["nft", "-j", "list", "ruleset"]).stdout)
    assert any(backup.concat_data(item) for item in document["nftables"])  # the case under test
    rc, saved = call(flab, qube, "qubes_firewall.backup")
    assert rc == 0
    text = flab.lab.run(qube, ["nft", "list", "ruleset"]).stdout
    stripped = without_handles(json.loads(pathlib.Path(saved["path"]).read_text()))
    assert stripped == without_handles(json.loads(flab.lab.run(qube, ["nft", "-j", "list", "ruleset"]).stdout))
    flab.lab.run(qube, ["nft", "flush", "chain", "ip", "qubes", "qf-forward"])
    flab.lab.run(qube, ["nft", "flush", "ruleset"])
    flab.lab.run(qube, ["nft", "add", "table", "ip", "mistake"])
    assert flab.lab.run(qube, ["nft", "list", "ruleset"]).stdout != text
    rc, out = call(flab, qube, "qubes_firewall.revert")
    assert rc == 0 and out["path"] == saved["path"], out
    # byte-identical as nft text (counters included), identical as nft JSON but for the handles
    assert flab.lab.run(qube, ["nft", "list", "ruleset"]).stdout == text
    assert without_handles(json.loads(flab.lab.run(qube, ["nft", "-j", "list", "ruleset"]).stdout)) == stripped
    assert flab.lab.probe_tcp("lan", "192.168.1.10", 443, timeout=2) == "web:443"  # the forward works again


def test_a_bad_backup_with_a_dnat_map_leaves_the_ruleset_as_it_was(flab):
    # stateless listings: the lab's own background traffic (IPv6 neighbour discovery on the
    # uplink) may move a Qubes counter meanwhile; every rule, set and element is compared
    qube = "sys-net"
    rc, saved = call(flab, qube, "qubes_firewall.backup")
    before = flab.lab.run(qube, ["nft", "-s", "list", "ruleset"]).stdout
    document = json.loads(pathlib.Path(saved["path"]).read_text())
    assert any(backup.concat_data(item) for item in document["nftables"])
    for bad, says in (({"rule": {"family": "ip", "table": "missing", "chain": "c", "expr": [{"accept": None}]}},
                       "scratch network namespace"),
                      ({"map": dict(next(i["map"] for i in document["nftables"] if backup.concat_data(i)),
                                    name="qf-extra", timeout=30)}, "cannot revert this backup")):
        pathlib.Path(saved["path"]).write_text(json.dumps({"nftables": document["nftables"] + [bad]}))
        rc, _, proc = flab.minion(qube).run("qubes_firewall.revert")
        assert rc != 0 and says in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert flab.lab.run(qube, ["nft", "-s", "list", "ruleset"]).stdout == before


NAT_MAP = """table ip t {
  set s0 { type ipv4_addr; counter; elements = { 1.2.3.4 comment "x" } }
  map m { type inet_proto . inet_service : ipv4_addr . inet_service; counter; comment "mc";
          elements = { tcp . 443 comment "e1" : 10.1.1.1 . 443, udp . 53 : 10.1.1.2 . 5353 } }
  map r { type inet_proto . inet_service : inet_service; counter; elements = { tcp . 80 : 8080 } }
  chain c { type nat hook prerouting priority 1; policy accept; dnat ip to meta l4proto . th dport map @m; }
}
"""


def test_scratch_text_is_what_nft_lists_for_the_original_ruleset():
    proc = subprocess.run(["unshare", "--net", "sh", "-c",
                           'nft -f - && nft -j list ruleset && echo "=====" && nft list ruleset'],
                          input=NAT_MAP, capture_output=True, text=True, check=True)
    listed, text = proc.stdout.split("=====\n")
    assert backup.scratch_text(json.loads(listed)) == text


def test_a_bad_backup_leaves_the_ruleset_as_it_was(flab):
    # stateless listings, as above
    qube = "build"
    rc, saved = call(flab, qube, "qubes_firewall.backup")
    before = flab.lab.run(qube, ["nft", "-s", "list", "ruleset"]).stdout
    document = json.loads(pathlib.Path(saved["path"]).read_text())
    document["nftables"].append({"rule": {"family": "ip", "table": "missing", "chain": "c",
                                          "expr": [{"accept": None}]}})
    pathlib.Path(saved["path"]).write_text(json.dumps(document))
    rc, _, proc = flab.minion(qube).run("qubes_firewall.revert")
    assert rc != 0 and "nothing was changed" in proc.stdout + proc.stderr
    assert flab.lab.run(qube, ["nft", "-s", "list", "ruleset"]).stdout == before


def test_the_state_backs_up_before_each_write_and_keeps_the_last_n(flab):
    qube = "web"
    for _ in range(3):  # each hand edit makes the state write, after a backup
        flab.lab.run(qube, ["nft", "flush", "chain", "ip", "qubes", "qf-input"])
        broken = json.loads(flab.lab.run(qube, ["nft", "-j", "list", "ruleset"]).stdout)
        result = flab.apply(qube)
        state = result.states["qubes_firewall-runtime-rules"]
        assert result.retcode == 0 and state["changes"], state
        rc, listed = call(flab, qube, "qubes_firewall.backups")
        assert listed[0]["path"] in state["comment"]
        assert json.loads(pathlib.Path(listed[0]["path"]).read_text()) == broken
    assert len(listed) == 2  # qubes_firewall_backup_keep: 2
    assert flab.apply(qube, test=True).retcode == 0
    assert call(flab, qube, "qubes_firewall.backups")[1] == listed  # no write, no backup


def test_diagram_through_salt_call(flab, tmp_path):
    rc, text = call(flab, "web", "qubes_firewall.diagram", "fmt=dot")
    assert rc == 0 and text.startswith("digraph qubes_firewall {")
    target = tmp_path / "topology.mmd"
    rc, out = call(flab, "web", "qubes_firewall.diagram", "path=%s" % target)
    assert rc == 0 and out == {"path": str(target)}
    assert target.read_text() == (pathlib.Path(__file__).parent / "golden" / "full.mmd").read_text()
