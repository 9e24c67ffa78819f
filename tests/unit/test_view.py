"""
The pillar view (``_qubes_firewall_view``): what a qube's rendered pillar
holds.  For every qube of generated topologies and of the examples, its run
computes the same from its view as from the whole pillar (the plans of the
qubes it plans, the boot blocks, a template's custom-persist files, the
ConnectTCP units), and the view names nothing that run does not read.
"""

import os
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import examples
from tests.modules import REPO, core

qf_model = core("model")
qf_plan = core("plan")
qf_persist = core("persist")
qf_files = core("files")
qf_connect_tcp = core("connect_tcp")
qf_fleet = core("fleet")
qf_view = core("view")
qf_flow = core("flow")

STRANGER = "stranger"  # a qube no pillar names


def _plan_or_error(mdl, name):
    try:
        return qf_plan.plan_qube(mdl, name)
    except qf_plan.PlanError as exc:
        return "error: %s" % exc


def _planner(mdl):
    cache = {}

    def plan_of(name):
        if name not in cache:
            cache[name] = qf_plan.plan_qube(mdl, name)
        return cache[name]

    return plan_of


def _seed_files(root, mdl, minion):
    """
    The files a former run may have left: a rules block, the blocks of the
    disposables it holds, a stale one, a custom-persist file.  (A block of a
    disposable of ANOTHER template, which only a former template of it could
    hold, is left alone with the whole pillar and removed with the view.)
    """
    rw = os.path.join(root, "rw")
    os.makedirs(rw, exist_ok=True)
    # a disposable's /rw is a copy of its template's: the blocks of its template's disposables
    own = mdl.qubes.get(minion)
    templates = {minion, own.dispvm_template if own else None} - {None}
    names = ["rules", "rules:gone"] + ["rules:" + q for q in sorted(mdl.qubes)
                                        if mdl.qubes[q].dispvm_template in templates]
    for filename in qf_persist.BOOT_FILES:
        text = None
        for name in names:
            text = qf_files.replace_block(text, name, "echo %s\n" % name, header="#!/bin/sh\n")
        with open(os.path.join(rw, filename), "w") as handle:
            handle.write(text)
    hooks = os.path.join(root, "etc", "qubes-firewall.d")
    os.makedirs(hooks, exist_ok=True)
    with open(os.path.join(hooks, qf_persist.PERSIST_PREFIX + "gone"), "w") as handle:
        handle.write("#!/bin/sh\n%s\n" % (qf_persist.PERSIST_MARK % minion))


def _lookup(root):
    return {"rw_config": os.path.join(root, "rw"), "etc_qubes": os.path.join(root, "etc"),
            "systemd_dir": os.path.join(root, "systemd"), "qubes_release": "4.3"}


def what_the_run_computes(raw, minion, root):
    """Everything a qube-side run of ``minion`` computes from the pillar ``raw``."""
    mdl = qf_model.parse(raw)
    plan_of = _planner(mdl)
    planned = ([minion] if minion in mdl.qubes else []) + mdl.disposables_of(minion) + \
        list(mdl.template_children(minion))
    out = {"plans": {name: _plan_or_error(mdl, name) for name in planned}}
    own = mdl.qubes.get(minion)
    out["named"] = own is not None
    out["provides_network"] = own.provides_network if own else None
    try:
        out["boot"] = qf_persist.boot_files(mdl, minion, plan_of)
        out["template"] = qf_persist.template_files(mdl, minion, plan_of)
    except qf_plan.PlanError as exc:
        out["boot"] = out["template"] = str(exc)
    out["bindings"] = qf_connect_tcp.binding_plan(mdl, minion)
    out["commands"] = qf_connect_tcp.commands(mdl.connect_tcp, minion)
    return out


def named_in(pillar):
    """Every qube name a reduced pillar mentions, anywhere."""
    names = set(pillar.get("qubes") or {}) | set(pillar.get("addresses") or {}) | set(pillar.get("addresses6") or {})
    for spec in (pillar.get("qubes") or {}).values():
        names |= {spec.get(k) for k in ("netvm", "dispvm_template", "template")} - {None, "none"}
    for fwd in pillar.get("port_forwards") or []:
        names.add(fwd["qube"])
    for conn in pillar.get("connections") or []:
        if conn:
            names |= {conn["from"], conn["to"]}
    for entry in pillar.get("connect_tcp") or []:
        if entry:
            names |= {entry["client"], entry["server"]}
    return names


def check_view(raw, minion):
    """The view of ``minion`` computes what the whole pillar does, and holds only what it reads."""
    reduced = qf_view.view(raw, None, minion)
    assert "error" not in reduced, reduced
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        full_raw = dict(raw, lookup=_lookup(one))
        view_raw = dict(reduced, lookup=_lookup(two))
        mdl = qf_model.parse(full_raw)
        _seed_files(one, mdl, minion)
        _seed_files(two, mdl, minion)
        full = what_the_run_computes(full_raw, minion, one)
        mine = what_the_run_computes(view_raw, minion, two)
    text = repr(mine).replace(two, one)
    assert text == repr(full), minion
    planned = set(full["plans"])
    full_model = qf_model.parse(raw)
    # least privilege: every address the view hands over is in a planned qube's rules
    rules = " ".join(qf_plan.ruleset_text(p) for p in full["plans"].values() if not isinstance(p, str))
    errors = " ".join(p for p in full["plans"].values() if isinstance(p, str))
    for name, ip in (reduced.get("addresses") or {}).items():
        own = name in planned and full_model.qubes[name].netvm is not None  # the planner reads it
        assert ip in rules or errors or own, (minion, name)  # (a refused plan shows no rules)
    # IPv6: only qubes on the way of a kept forward or connection, and a planned VPN qube itself
    paths = [qf_flow.forward_path(full_model, f) for f in full_model.port_forwards
             if f.name in {g["name"] for g in reduced.get("port_forwards") or []}]
    paths += [qf_flow.connection_path(full_model, c) for c in full_model.connections
              if c.index < len(reduced.get("connections") or []) and reduced["connections"][c.index]]
    paths += [(q,) for q in planned if full_model.qubes[q].vpn is not None]  # a VPN qube's own fail-closed rules
    assert set(reduced.get("addresses6") or {}) <= {q for p in paths if p for q in p}, minion
    assert all(reduced["addresses6"][q] == raw["addresses6"][q] for q in reduced.get("addresses6") or {})
    # every forward of the view crosses a planned qube; every connection gives one rules (or is refused)
    for fwd in reduced.get("port_forwards") or []:
        assert planned & set(full_model.chain(fwd["qube"])), (minion, fwd)
    for index, conn in enumerate(reduced.get("connections") or []):
        if conn is not None:
            origin = "connections:%d " % index
            assert origin in rules or errors, (minion, conn)  # (a refused plan shows no rules)
    # and each qube it names is on the way of something it keeps: a planned qube, a forward, a connection
    keep = set(planned)
    keep |= {f["qube"] for f in reduced.get("port_forwards") or []}
    keep |= {c[k] for c in reduced.get("connections") or [] if c for k in ("from", "to")}
    keep |= {q for q, s in (reduced.get("qubes") or {}).items() if s.get("dispvm_template")}
    on_the_way = set()
    for name in keep & set(full_model.qubes):
        on_the_way |= set(full_model.chain(name))
    servers = {e["server"] for e in reduced.get("connect_tcp") or [] if e}
    assert named_in(reduced) - on_the_way - servers - {minion} <= {
        s.get("dispvm_template") for s in (reduced.get("qubes") or {}).values()} | {
        s.get("template") for s in (reduced.get("qubes") or {}).values()}, minion
    return reduced


# ---- generated topologies ----

NAMES = ["q%d" % i for i in range(9)]


@st.composite
def topologies(draw):
    """A valid pillar: a forest of netvm chains, forwards, connections, ConnectTCP, disposables, custom-persist."""
    count = draw(st.integers(2, 9))
    names = NAMES[:count]
    qubes = {}
    for index, name in enumerate(names):
        netvm = draw(st.sampled_from(["none"] + names[:index])) if index else "none"
        qubes[name] = {"netvm": netvm}
    for name, spec in qubes.items():
        if draw(st.booleans()) and draw(st.booleans()):
            spec["dispvm_template"] = draw(st.sampled_from(["dvm-a", "dvm-b"]))
        elif draw(st.booleans()) and draw(st.booleans()):
            spec["custom_persist"] = True
            spec["template"] = draw(st.sampled_from(["tpl-a", "tpl-b", names[0]]))
            if spec["template"] == name:
                spec["template"] = "tpl-a"
        if draw(st.booleans()) and draw(st.booleans()):
            spec["firewall"] = [{"action": "accept"}]
    pillar = {"qubes": qubes, "addresses": {n: "10.137.0.%d" % (i + 2) for i, n in enumerate(names)}}
    with_ipv6 = [n for n in names if draw(st.booleans())]  # Qubes' ipv6 feature, in effect here or not
    if with_ipv6:
        pillar["addresses6"] = {n: "fd09:24ef:4179::a89:%x" % (i + 2) for i, n in enumerate(names) if n in with_ipv6}
    forwards, used = [], set()
    for index in range(draw(st.integers(0, 4))):
        qube = draw(st.sampled_from(names))
        port = draw(st.sampled_from([22, 80, 443]))
        up = qube
        while qubes[up]["netvm"] != "none":
            up = qubes[up]["netvm"]
        if (up, port) in used:
            continue
        used.add((up, port))
        forwards.append({"name": "f%d" % index, "qube": qube, "port": port,
                         "interfaces": ["eth0"], "sources": draw(st.sampled_from([[], ["192.168.1.0/24"]]))})
    if forwards:
        pillar["port_forwards"] = forwards
    conns = []
    for _ in range(draw(st.integers(0, 4))):
        a, b = draw(st.sampled_from(names)), draw(st.sampled_from(names))
        if a != b:
            conns.append({"from": a, "to": b, "proto": "tcp", "ports": [draw(st.sampled_from([22, 8080]))]})
    if conns:
        pillar["connections"] = conns
    tcp = []
    for index in range(draw(st.integers(0, 3))):
        client = draw(st.sampled_from(names + ["outsider", "@anyvm"]))
        server = draw(st.sampled_from(names + ["server-x"]))
        if client != server:
            tcp.append({"client": client, "server": server, "port": 1000 + index,
                        "persistent": client != "@anyvm" and draw(st.booleans())})
    if tcp:
        pillar["connect_tcp"] = tcp
    # make provides_network follow from use (some given explicitly)
    for name, spec in qubes.items():
        if any(s["netvm"] == name for s in qubes.values()) and draw(st.booleans()):
            spec["provides_network"] = True
    try:
        qf_model.parse(pillar)
    except qf_model.PillarError:
        from hypothesis import assume
        assume(False)
    return pillar


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(topologies())
def test_every_qube_computes_from_its_view_what_it_computes_from_the_whole_pillar(raw):
    ids = qf_view.needs_pillar(raw)
    assert ids[0] == "dom0" and set(ids[1:]) == set(qf_fleet.targets(raw))
    for minion in sorted(set(ids[1:]) | set(raw["qubes"]) | {STRANGER}):
        reduced = check_view(raw, minion)
        if minion not in ids:
            assert reduced["qubes"] == {} and reduced["connect_tcp"] == [], reduced
    assert qf_view.view(raw, None, "dom0") == raw


# ---- the examples ----

EXAMPLE_FILES = sorted(p.stem for p in (REPO / "pillar.example").glob("*.sls"))


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_each_example_qube_computes_the_same_from_its_view(name):
    raw = examples.example(name)
    for minion in sorted(set(qf_fleet.targets(raw)) | set(raw.get("qubes") or {}) | {STRANGER}):
        check_view(raw, minion)


def test_work_learns_nothing_about_unrelated_qubes():
    raw = examples.example("full")
    raw = dict(raw, qubes=dict(raw["qubes"], vault={"netvm": "none"}))
    work = qf_view.view(raw, None, "work")
    assert "vault" not in named_in(work) and "vault" not in yaml.safe_dump(work)
    assert "web" not in work["qubes"] and "port_forwards" not in work, work  # web's forward is not work's
    # work opens the connection to build: its own rules allow nothing for it, so it learns nothing of it
    assert set(work["qubes"]) == {"work", "sys-firewall-2", "sys-vpn", "sys-firewall", "sys-net"}, work
    assert "connections" not in work and set(work["addresses"]) == {"work"}, work
    build = qf_view.view(raw, None, "build")
    assert build["connections"] == raw["connections"] and set(build["addresses"]) == {"work", "build"}
    web = qf_view.view(raw, None, "web")
    assert named_in(web) == {"web", "sys-firewall", "sys-net"}, web
    assert [f["name"] for f in web["port_forwards"]] == ["https"]
    raw["qubes"]["web"] = dict(raw["qubes"]["web"], firewall=[{"action": "drop"}])
    vpn = qf_view.view(raw, None, "sys-vpn")
    for reduced in (qf_view.view(raw, None, "web"), vpn):  # qvm-firewall lists and service are dom0's
        assert not [s for s in reduced["qubes"].values() if "firewall" in s or "service" in s], reduced
    assert vpn["qubes"]["sys-vpn"] == {"netvm": "sys-firewall", "provides_network": True}


def test_ipv6_addresses_of_the_qubes_on_the_way_of_what_it_plans():
    """full.sls with IPv6 everywhere but build: the qubes of web's forward learn the forward's
    three IPv6 addresses; build (IPv4-only) learns those of the other qubes of work -> build
    (what its plan's note names: build has no IPv6), work and the qubes that plan nothing of
    either none; an IPv4-only pillar hands out none."""
    raw = examples.example("full")
    assert all("addresses6" not in qf_view.view(raw, None, q) for q in qf_fleet.targets(raw))
    six = {q: "fd09:24ef:4179::a89:%x" % (i + 5) for i, q in enumerate(sorted(raw["qubes"])) if q != "build"}
    raw = dict(raw, addresses6=six)
    for qube in ("sys-net", "sys-firewall", "web"):
        assert qf_view.view(raw, None, qube)["addresses6"] == {q: six[q] for q in ("sys-net", "sys-firewall", "web")}
    for qube in ("build", "sys-firewall-2"):
        assert qf_view.view(raw, None, qube)["addresses6"] == {q: six[q] for q in ("work", "sys-firewall-2")}, qube
    for qube in ("work", "sys-vpn"):
        assert "addresses6" not in qf_view.view(raw, None, qube), qube
    # given apart from the pillar, as dom0's pillar file does
    assert qf_view.view(examples.example("full"), None, "web", addresses6=six)["addresses6"] == {
        q: six[q] for q in ("sys-net", "sys-firewall", "web")}
    assert qf_view.view(raw, None, "dom0") == raw


def test_a_qube_that_needs_nothing_gets_no_qubes_and_its_run_says_so():
    raw = examples.example("full")
    reduced = qf_view.view(raw, raw.get("addresses"), STRANGER)
    assert reduced == {"qubes": {}, "connect_tcp": []} or reduced == {
        "lookup": raw["lookup"], "qubes": {}, "connect_tcp": []}, reduced
    mdl = qf_model.parse(reduced)
    assert mdl.qubes == {} and mdl.connect_tcp == ()


def test_left_out_entries_keep_the_others_numbers():
    raw = {"qubes": {"a": {"netvm": "none"}, "b": {"netvm": "a"}, "c": {"netvm": "a"}, "d": {"netvm": "none"},
                     "e": {"netvm": "d"}},
           "connections": [{"from": "e", "to": "d"}, {"from": "b", "to": "c", "proto": "tcp", "ports": [22]}],
           "connect_tcp": [{"client": "e", "server": "d", "port": 1}, {"client": "c", "server": "b", "port": 2}]}
    b = qf_view.view(raw, {"a": "10.137.0.2", "b": "10.137.0.3", "c": "10.137.0.4"}, "c")
    assert b["connections"] == [None, raw["connections"][1]]
    assert b["connect_tcp"] == [None, raw["connect_tcp"][1]]
    assert set(b["qubes"]) == {"a", "b", "c"} and b["addresses"] == {"b": "10.137.0.3", "c": "10.137.0.4"}
    mdl = qf_model.parse(b)
    assert [c.origin for c in mdl.connections] == ["connections:1"]
    assert [c.origin for c in mdl.connect_tcp] == ["connect_tcp:1"]


def test_an_invalid_pillar_gives_a_qube_an_error_and_dom0_everything():
    raw = {"qubes": {"a": {"netvm": "nowhere"}}}
    assert qf_view.view(raw, None, "dom0") == raw
    assert qf_view.view(raw, None, "a") == {"error": qf_view.INVALID % 1}
    # the qubes it lists get that error (their runs say why); a name outside every
    # Qubes grammar never reaches the top file's list
    assert qf_view.needs_pillar(raw) == ["dom0", "a"]
    assert qf_view.needs_pillar(dict(raw, qubes=dict(raw["qubes"], **{"x y,dom0": {}}))) == ["dom0", "a"]
    assert qf_view.needs_pillar({"qubes": ["a"]}) == ["dom0"]
    assert qf_view.view({"error": "broken file"}, None, "a") == {"error": "broken file"}


def test_a_vpn_qube_with_ipv6_gets_its_own_ipv6_address():
    """Its fail-closed rules have an IPv6 side where it has IPv6: it plans them from its view too."""
    raw = examples.example("vpn-sandwich")
    raw["qubes"]["sys-vpn"] = dict(raw["qubes"]["sys-vpn"], vpn={
        "interfaces": ["wg0"], "endpoints": [{"address": "198.51.100.7", "port": 51820}], "dns": ["10.8.0.1"]})
    six = {q: "fd09:24ef:4179::a89:%x" % (i + 5) for i, q in enumerate(sorted(raw["qubes"]))}
    raw["addresses6"] = six
    reduced = qf_view.view(raw, None, "sys-vpn")
    assert reduced["addresses6"] == {"sys-vpn": six["sys-vpn"]}, reduced
    check_view(raw, "sys-vpn")
    plan = qf_plan.plan_qube(qf_model.parse(reduced), "sys-vpn")
    assert "ip6" in plan.families, plan.families
