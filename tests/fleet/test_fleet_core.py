"""
The fleet's pure core (_modules/_qubes_firewall_fleet.py): the merge rule,
what removing a qube does, the errors, ``targets`` and the fleet view's row.
No Salt: the module imports with ``_modules`` on sys.path (tests/fleet/conftest.py).
"""

import copy

import _qubes_firewall_fleet as fleet
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.modules import REPO
from tests.modules import model as model_mod

FLEET = REPO / "pillar.example" / "fleet"
SHARED = yaml.safe_load((FLEET / "qubes_firewall_shared.yaml").read_text())


def machine(patch=None, uplinks=("eth0",), **extra):
    out = {"machine": "m", "uplink_interfaces": list(uplinks)}
    if patch is not None:
        out["qubes_firewall"] = patch
    out.update(extra)
    return out


def merged(patch=None, shared=SHARED, **kwargs):
    return fleet.machine_pillar(copy.deepcopy(shared), machine(patch, **kwargs))["qubes_firewall"]


def error(patch=None, shared=SHARED, **kwargs):
    with pytest.raises(fleet.FleetError) as exc:
        fleet.machine_pillar(copy.deepcopy(shared), machine(patch, **kwargs) if kwargs.get("raw") is None
                             else kwargs["raw"])
    return str(exc.value)


# ---- the merge rule ----


def test_an_empty_machine_file_gives_the_shared_topology_on_its_uplink():
    out = merged()
    assert out["qubes"] == SHARED["qubes_firewall"]["qubes"]
    assert out["port_forwards"] == [dict(SHARED["qubes_firewall"]["port_forwards"][0], interfaces=["eth0"])]
    assert out["connections"] == SHARED["qubes_firewall"]["connections"]
    model_mod.parse(dict(out, addresses={q: "10.137.0.%d" % (i + 2) for i, q in enumerate(out["qubes"])}))


def test_mappings_merge_key_by_key_and_replace_scalars_and_other_lists():
    out = merged({"qubes": {"sys-firewall": {"custom_persist": True, "template": "debian-13"},
                            "sys-net": {"provides_network": False}},
                  "lookup": {"state_dir": "/var/lib/x"}})
    assert out["qubes"]["sys-firewall"] == {"netvm": "sys-net", "provides_network": True,
                                            "custom_persist": True, "template": "debian-13"}
    assert out["qubes"]["sys-net"] == {"netvm": "none", "provides_network": False}
    assert out["lookup"] == {"state_dir": "/var/lib/x"}
    # a list that is not one of the three replaces: ports, interfaces, sources
    out = merged({"port_forwards": [{"name": "https", "sources": ["10.0.0.0/8"], "interfaces": ["wlan0"]}]})
    assert out["port_forwards"][0]["sources"] == ["10.0.0.0/8"]
    assert out["port_forwards"][0]["interfaces"] == ["wlan0"]


def test_null_deletes_a_key_that_is_there_and_only_one_that_is():
    out = merged({"qubes": {"sys-vpn": {"service": None}}})
    assert "service" not in out["qubes"]["sys-vpn"]
    assert error({"qubes": {"sys-vpn": {"firewall": None}}}) == (
        "qubes_firewall:qubes:sys-vpn:firewall: null removes firewall, but the shared file has no "
        "qubes_firewall:qubes:sys-vpn:firewall")


def test_forwards_merge_by_name_connections_by_from_to_proto_connect_tcp_by_client_server_port():
    out = merged({
        "port_forwards": [{"name": "https", "external_port": 8443}, {"name": "ssh", "qube": "build", "port": 22}],
        "connections": [{"from": "work", "to": "build", "proto": "tcp", "ports": [22, 2222]},
                        {"from": "work", "to": "build", "proto": "udp", "ports": [60001]}],
        "connect_tcp": [{"client": "work", "server": "sys-vpn", "port": 3128, "persistent": True},
                        {"client": "build", "server": "sys-vpn", "port": 3128}],
    })
    assert [(f["name"], f.get("external_port"), f["interfaces"]) for f in out["port_forwards"]] == [
        ("https", 8443, ["eth0"]), ("ssh", None, ["eth0"])]
    assert out["port_forwards"][0]["qube"] == "web"  # the rest of the shared entry stays
    assert out["connections"] == [{"from": "work", "to": "build", "proto": "tcp", "ports": [22, 2222]},
                                  {"from": "work", "to": "build", "proto": "udp", "ports": [60001]}]
    assert out["connect_tcp"] == [{"client": "work", "server": "sys-vpn", "port": 3128, "persistent": True},
                                  {"client": "build", "server": "sys-vpn", "port": 3128}]


def test_remove_true_deletes_a_shared_entry_by_its_identity():
    out = merged({"port_forwards": [{"name": "https", "remove": True}],
                  "connections": [{"from": "work", "to": "build", "proto": "tcp", "remove": True}]})
    assert out["port_forwards"] == [] and out["connections"] == []
    assert error({"port_forwards": [{"name": "http", "remove": True}]}) == (
        "qubes_firewall:port_forwards:0: removes the port_forwards entry name: 'http', but the shared file has none")
    assert error({"port_forwards": [{"name": "https", "remove": "yes"}]}) == (
        "qubes_firewall:port_forwards:0:remove: must be true, got 'yes'")
    assert error({"port_forwards": [{"name": "https", "port": 1, "remove": True}]}) == (
        "qubes_firewall:port_forwards:0: remove: true takes only the identity keys (name), not port")
    # a connection's identity includes its proto: none is not tcp
    assert "but the shared file has none" in error({"connections": [{"from": "work", "to": "build",
                                                                     "remove": True}]})


def test_entries_without_identity_and_ambiguous_or_repeated_identities_are_errors():
    assert error({"port_forwards": [{"qube": "web", "port": 80}]}) == (
        "qubes_firewall:port_forwards:0: a machine file entry without name: the port_forwards entries are "
        "told apart by name")
    twice = copy.deepcopy(SHARED)
    twice["qubes_firewall"]["connections"].append({"from": "work", "to": "build", "proto": "tcp", "ports": [80]})
    assert merged(shared=twice)["connections"] == twice["qubes_firewall"]["connections"]  # alone: fine
    assert "the shared connections has 2 entries with from: 'work', to: 'build', proto: 'tcp'" in error(
        {"connections": [{"from": "work", "to": "build", "proto": "tcp", "ports": [1]}]}, shared=twice)
    assert error({"port_forwards": [{"name": "x", "qube": "web", "port": 1},
                                    {"name": "x", "qube": "web", "port": 2}]}) == (
        "qubes_firewall:port_forwards:1: name: 'x' again (also qubes_firewall:port_forwards:0)")
    assert error({"port_forwards": {"name": "x"}}) == (
        "qubes_firewall:port_forwards: must be a list, got {\"name\": \"x\"}")


def test_removing_a_qube_drops_the_entries_that_name_it_and_refuses_orphaned_clients():
    out = fleet.machine_pillar(copy.deepcopy(SHARED), machine(
        {"qubes": {"sys-vpn": None, "sys-firewall-2": {"netvm": "sys-firewall"}}}))
    assert "sys-vpn" not in out["qubes_firewall"]["qubes"]
    assert out["qubes_firewall"]["connect_tcp"] == []
    assert out["dropped"] == [{"kind": "connect_tcp", "path": "qubes_firewall:connect_tcp:0", "qube": "sys-vpn",
                               "identity": "client: 'work', server: 'sys-vpn', port: 3128"}]
    # removing it by hand as well is fine; changing it is not
    assert merged({"qubes": {"sys-vpn": None, "sys-firewall-2": {"netvm": "sys-firewall"}},
                   "connect_tcp": [{"client": "work", "server": "sys-vpn", "port": 3128, "remove": True}]}
                  )["connect_tcp"] == []
    assert error({"qubes": {"sys-vpn": None, "sys-firewall-2": {"netvm": "sys-firewall"}},
                  "connect_tcp": [{"client": "work", "server": "sys-vpn", "port": 3128, "persistent": True}]}) == (
        "qubes_firewall:connect_tcp:0: changes the connect_tcp entry client: 'work', server: 'sys-vpn', port: 3128, "
        "which goes with the removed qube sys-vpn")
    assert error({"qubes": {"sys-vpn": None}}) == (
        "qubes_firewall:qubes:sys-firewall-2:netvm: names sys-vpn, which this machine removes: give "
        "sys-firewall-2 another netvm here (qubes_firewall: {qubes: {sys-firewall-2: {netvm: ...}}}) or remove "
        "it too")
    # a forward and connections to a removed qube go as well
    out = merged({"qubes": {"web": None, "build": None}})
    assert out["port_forwards"] == [] and out["connections"] == []


def test_the_machine_file_itself():
    assert error(raw=["a"]) == "a machine file is a mapping (machine, uplink_interfaces, qubes_firewall), got [\"a\"]"
    assert error(raw={"machine": "m", "qubes": {}}) == (
        "unknown key qubes (a machine file has machine, uplink_interfaces, qubes_firewall; what changes the "
        "topology goes under qubes_firewall:)")
    assert error(uplinks=()) == "uplink_interfaces: must be a list of interface names, got []"
    assert error(raw={"machine": "m"}) == (
        "qubes_firewall:port_forwards:0: the port forward 'https' names no interfaces and the machine file no "
        "uplink_interfaces: set uplink_interfaces (sys-net's interfaces to the LAN), or interfaces in the forward")
    assert merged({"port_forwards": [{"name": "https", "interfaces": []}]}, uplinks=["x"])[
        "port_forwards"][0]["interfaces"] == []
    assert error(shared={"qubes_firewall": {}, "other": 1}) == "the shared file holds only qubes_firewall:, not other"
    assert error(shared={"qubes": {}}).startswith("the shared file must hold a qubes_firewall: mapping")


def test_machine_names_and_yaml_errors():
    assert fleet.machine_name({"machine": "desk"}, "machines/desk.yaml") == "desk"
    assert fleet.machine_name({}, "machines/desk.yaml") == "desk"
    assert fleet.machine_name({"machine": "desk"}) == "desk"
    assert fleet.machine_name({}) is None
    with pytest.raises(fleet.FleetError, match="machine: says laptop, but the file is machines/desk.yaml"):
        fleet.machine_name({"machine": "laptop"}, "machines/desk.yaml")
    with pytest.raises(fleet.FleetError, match=r"^the machine file is not valid YAML at line 3 column 1: expected ',' or ']'"):
        fleet.load_yaml("a: 1\nb: [c\n", "the machine file")


def test_the_example_machines_make_valid_pillars():
    for path in sorted((FLEET / "machines").glob("*.yaml")):
        out = fleet.machine_pillar(copy.deepcopy(SHARED), yaml.safe_load(path.read_text()))["qubes_firewall"]
        addresses = {q: "10.137.0.%d" % (i + 2) for i, q in enumerate(out["qubes"])}
        model_mod.parse(dict(out, addresses=addresses))


# ---- properties of the merge ----

NAMES = st.sampled_from(["a", "b", "c", "d"])
SCALARS = st.one_of(st.integers(0, 3), st.booleans(), NAMES)
TREES = st.recursive(SCALARS, lambda inner: st.dictionaries(NAMES, inner, max_size=3), max_leaves=8)


@given(st.dictionaries(NAMES, TREES, max_size=4))
@settings(max_examples=200, deadline=None)
def test_an_empty_patch_changes_nothing_and_a_mapping_merged_onto_itself_is_itself(tree):
    assert fleet.merge(tree, {}) == tree
    assert fleet.merge(tree, tree) == tree


@given(st.dictionaries(NAMES, TREES, max_size=4), st.dictionaries(NAMES, TREES, max_size=4))
@settings(max_examples=200, deadline=None)
def test_the_patch_wins_wherever_it_says_something(base, patch):
    out = fleet.merge(base, patch)
    assert set(out) == set(base) | set(patch)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert out[key] == fleet.merge(base[key], value, ["qubes_firewall", key])
        else:
            assert out[key] == value
    for key in set(base) - set(patch):
        assert out[key] == base[key]


FORWARDS = st.lists(st.fixed_dictionaries({"name": NAMES, "port": st.integers(1, 3)}), max_size=4,
                    unique_by=lambda f: f["name"])


@given(FORWARDS, FORWARDS)
@settings(max_examples=200, deadline=None)
def test_list_entries_merge_by_identity_keeping_the_shared_order(base, patch):
    out = fleet.merge_list("port_forwards", base, patch, ["qubes_firewall", "port_forwards"])
    by_name = {f["name"]: f for f in patch}
    assert out == [dict(f, **by_name.get(f["name"], {})) for f in base] + [
        f for f in patch if f["name"] not in {b["name"] for b in base}]
    removed = fleet.merge_list("port_forwards", base, [{"name": f["name"], "remove": True} for f in base],
                               ["qubes_firewall", "port_forwards"])
    assert removed == []


# ---- targets ----


def pillar(qubes, connect_tcp=()):
    return {"qubes": qubes, "connect_tcp": list(connect_tcp)}


def test_targets_templates_first_then_the_qubes_from_the_uplink_then_connect_tcp_clients():
    qubes = {"work": {"netvm": "fw"}, "fw": {"netvm": "net", "dispvm_template": "dvm"},
             "net": {"netvm": "none"}, "app": {"netvm": "fw", "custom_persist": True, "template": "deb"},
             "vpn": {"netvm": "fw", "custom_persist": False, "template": "fed"}}
    entries = [{"client": "vault", "server": "work", "port": 22}, {"client": "@anyvm", "server": "work", "port": 1},
               {"client": "@tag:x", "server": "web", "port": 1}, {"client": "work", "server": "net", "port": 2}]
    assert fleet.targets(pillar(qubes, entries)) == ["deb", "dvm", "net", "fw", "app", "vpn", "work", "vault"]
    assert fleet.targets({}) == [] and fleet.targets(None) == []


def test_targets_of_the_examples():
    for sls in ("full.sls", "port-forward.sls", "connect-tcp.sls", "vpn-sandwich.sls", "qube-to-qube.sls"):
        data = yaml.safe_load((REPO / "pillar.example" / sls).read_text())["qubes_firewall"]
        names = fleet.targets(data)
        assert set(data.get("qubes") or {}) <= set(names), sls
        assert len(names) == len(set(names)), sls


TOPOLOGIES = st.dictionaries(st.sampled_from(["q%d" % i for i in range(8)]), st.fixed_dictionaries({
    "netvm": st.sampled_from(["none"] + ["q%d" % i for i in range(8)]),
    "custom_persist": st.booleans(), "template": st.sampled_from(["t1", "t2"]),
    "dispvm_template": st.sampled_from([None, "dvm1", "dvm2"])}), max_size=8)


@given(TOPOLOGIES, st.lists(st.fixed_dictionaries({"client": st.sampled_from(["q1", "c1", "@anyvm"]),
                                                   "server": st.just("q0"), "port": st.just(1)}), max_size=3))
@settings(max_examples=300, deadline=None)
def test_targets_hold_every_qube_once_templates_before_qubes_netvms_before_clients(qubes, entries):
    names = fleet.targets(pillar(qubes, entries))
    assert len(names) == len(set(names)) and "dom0" not in names
    assert set(qubes) <= set(names)
    templates = {q["template"] for q in qubes.values() if q["custom_persist"]} - set(qubes)
    templates |= {q["dispvm_template"] for q in qubes.values() if q["dispvm_template"]} - set(qubes)
    assert set(names[:len(templates)]) == templates
    clients = {e["client"] for e in entries if not e["client"].startswith("@")} - set(qubes) - templates
    assert set(names[len(names) - len(clients):]) == clients
    position = {n: i for i, n in enumerate(names)}
    for name, spec in qubes.items():  # a netvm before its clients (unless they form a loop)
        netvm = spec["netvm"]
        chain, seen = netvm, {name}
        while chain in qubes and chain not in seen:
            seen.add(chain)
            chain = qubes[chain]["netvm"]
        if netvm in qubes and chain not in seen and name not in templates:
            assert position[netvm] < position[name], (names, name, netvm)


# ---- the fleet view's row ----


def test_a_row_per_machine_one_line_each():
    ok = fleet.status_row("desk", ["sys-net", "web"])
    assert fleet.row_text(ok) == ("desk\tok: dom0 matches the pillar; 2 qubes to check (qubes_firewall.drift)"
                                  "\tin sync\tsys-net,web")
    drift = fleet.status_row("laptop", ["sys-net"], prefs=[{"qube": "work", "prop": "netvm", "old": None,
                                                            "new": "sys-firewall"}],
                             firewall=["web"], policy=True)
    assert fleet.row_text(drift).split("\t") == [
        "laptop", "dom0 drift (3): apply dom0 first: sudo qubesctl state.apply qubes_firewall",
        "work netvm none -> sys-firewall; qvm-firewall of web; the qubes.ConnectTCP policy", "sys-net"]
    bad = fleet.status_row("studio", errors=["qubes_firewall:error: machine studio (x): broken\tline", "two"])
    assert fleet.row_text(bad).split("\t") == [
        "studio", "pillar error: qubes_firewall:error: machine studio (x): broken line (and 1 more)",
        "not checked", "-"]
    refused = fleet.status_row("desk", ["a"], problems=["qubes_firewall:qubes:x: no such qube"])
    assert refused["verdict"] == "refused by dom0's preflight: qubes_firewall:qubes:x: no such qube"
    assert fleet.header_text() == "MACHINE\tVERDICT\tDOM0\tTARGETS"
    assert yaml.safe_load(fleet.row_json(drift)) == drift
