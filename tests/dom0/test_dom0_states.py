"""
The dom0 states over both backends: test=True reads only (the world file stays
byte for byte, no write call), a real run changes what test=True announced,
the second run changes nothing, errors are result False with a comment and
change nothing.
"""

import copy
import re

import fake_qubesadmin
import fakequbes
import yaml
from conftest import REPO, core, full_pillar

WRITES = {"qvm-prefs": lambda c: len([a for a in c[1:] if not a.startswith("-")]) >= 3 or "-D" in c,
          "qvm-firewall": lambda c: any(a in ("add", "del", "reset") for a in c),
          "qvm-features": lambda c: len(c) >= 4,
          "qvm-service": lambda c: len(c) >= 4}


def writes(calls):
    return [c for c in calls if c[0] in WRITES and WRITES[c[0]](c)]


def sandwich_with_firewall():
    pillar = full_pillar()
    pillar["qubes"]["work"]["firewall"] = [
        {"action": "accept", "proto": "tcp", "dsthost": "10.137.0.10", "dstports": 22},
        {"action": "accept", "proto": "tcp", "dsthost": "example.com", "dstports": 443},
        {"action": "accept", "specialtarget": "dns"},
        {"action": "drop"},
    ]
    return pillar


def test_test_mode_then_apply_then_nothing(dom0, qubes, backend):
    dom0.set_pillar(sandwich_with_firewall())
    before = qubes.path.read_bytes()

    dry = dom0.run(test=True)
    assert qubes.path.read_bytes() == before
    assert writes(qubes.calls()) == []
    assert dry["topology"]["result"] is True
    assert dry["firewall"]["result"] is None and "work" in dry["firewall"]["changes"]
    assert "+action=accept proto=tcp dst4=10.137.0.10/32 dstports=22-22" in dry["firewall"]["changes"]["work"]["diff"]
    assert dry["prefs"]["result"] is None
    assert dry["prefs"]["changes"] == {
        "sys-firewall-2": {"provides_network": {"old": False, "new": True},
                           "netvm": {"old": "sys-firewall", "new": "sys-vpn"}},
        "sys-vpn": {"provides_network": {"old": False, "new": True}},
        "build": {"netvm": {"old": "sys-firewall", "new": "sys-firewall-2"}},
        "work": {"netvm": {"old": "sys-firewall", "new": "sys-firewall-2"}},
    }
    assert dry["prefs"]["comment"].splitlines()[1:] == [
        "1. qvm-prefs sys-firewall-2 provides_network True",
        "2. qvm-prefs sys-vpn provides_network True",
        "3. qvm-prefs sys-firewall-2 netvm sys-vpn",
        "4. qvm-prefs build netvm sys-firewall-2",
        "5. qvm-prefs work netvm sys-firewall-2",
    ]

    real = dom0.run()
    for key in ("firewall", "prefs"):
        assert real[key]["result"] is True and real[key]["changes"] == dry[key]["changes"], real[key]
    world = qubes.world()
    assert world.get("work", "netvm") == "sys-firewall-2" and world.get("sys-firewall-2", "netvm") == "sys-vpn"
    assert world.is_default("sys-vpn", "netvm") and world.is_default("web", "netvm")  # nothing pinned
    assert world.firewall("work")[0] == "action=accept proto=tcp dst4=10.137.0.10/32 dstports=22-22"

    qubes.clear_calls()
    again = dom0.run()
    assert all(again[k]["result"] is True and again[k]["changes"] == {} for k in again), again
    assert writes(qubes.calls()) == []


def test_topology_error_fails_and_stops_the_other_states(dom0, qubes, backend):
    pillar = full_pillar()
    pillar["qubes"]["work"]["netvm"] = "sys-vpn"
    dom0.set_pillar(pillar)
    before = qubes.path.read_bytes()
    out = dom0.run()
    assert out["topology"]["result"] is False
    assert "qubes_firewall:qubes:work:netvm: sys-vpn is a network service qube" in out["topology"]["comment"]
    assert out["firewall"] is None and out["prefs"] is None
    assert qubes.path.read_bytes() == before


def test_bad_pillar_fails_before_reading_qubes(dom0, qubes, backend):
    pillar = full_pillar()
    pillar["qubes"]["work"]["netvm"] = "sys-firewall-3"
    dom0.set_pillar(pillar)
    out = dom0.run()
    assert out["validated"]["result"] is False and "qubes_firewall:qubes:work:netvm" in out["validated"]["comment"]
    assert out["topology"] is None and qubes.calls() == []


def test_refusal_mid_way_is_a_failed_state_naming_what_was_done(dom0, qubes, backend, monkeypatch):
    # Qubes changes under our feet between planning and applying: sys-vpn stops
    steps = dom0.shell().dom0_prefs_plan()
    qubes.edit(lambda d: d["qubes"]["sys-vpn"].update(state="Halted"))
    monkeypatch.setattr(core("run").Run, "dom0_prefs_plan", lambda self: steps)
    ret = dom0.states.netvm_managed("qubes_firewall-dom0-prefs")
    assert ret["result"] is False
    assert "Cannot dynamically attach to stopped NetVM: 'sys-vpn'" in ret["comment"]
    assert "done before: sys-firewall-2 provides_network=True, sys-vpn provides_network=True" in ret["comment"]
    assert ret["changes"] == {"sys-firewall-2": {"provides_network": {"old": False, "new": True}},
                              "sys-vpn": {"provides_network": {"old": False, "new": True}}}


def test_the_old_dom0_state_names_run_the_new_states(dom0, qubes, backend):
    dom0.opts["test"] = True
    for old, new in (("prefs", "netvm_managed"), ("firewall_rules", "firewall_managed"),
                     ("connect_tcp_policy", "connect_tcp_policy_managed"),
                     ("policy_absent", "connect_tcp_policy_absent")):
        want, got = getattr(dom0.states, new)("s"), getattr(dom0.states, old)("s")
        assert got["result"] == want["result"] and got["changes"] == want["changes"], old
        assert got["comment"] == want["comment"] + (
            "\n(qubes_firewall.%s is deprecated and goes in the next release: use qubes_firewall.%s)" % (old, new))
    assert dom0.states.netvm_managed("s")["changes"]  # the fake Qubes differs from the pillar: a real comparison


def test_reconnected_state(dom0, qubes, backend):
    dom0.opts["test"] = True
    ret = dom0.states.reconnected("sys-net")
    assert ret["result"] is None and ret["changes"] == {"reattached": ["sys-firewall"]}
    assert qubes.data()["events"] == []
    dom0.opts["test"] = False
    ret = dom0.states.reconnected("sys-net")
    assert ret["result"] is True and qubes.data()["events"] == [["attach", "sys-firewall", "sys-net"]]
    ret = dom0.states.reconnected("personal")
    assert ret["result"] is True and ret["changes"] == {}
    ret = dom0.states.reconnected("nope")
    assert ret["result"] is False and "no such qube" in ret["comment"]


# ---- the whole-machine preflight ---------------------------------------------


def no_writes(qubes):
    """Neither backend wrote anything to Qubes."""
    return writes(qubes.calls()) == [] and fake_qubesadmin.writes() == 0 and \
        not [c for c in qubes.calls() if c[0] == "qubesd" and c[1] in fake_qubesadmin.WRITES]


def with_policy(dom0, pillar, entries):
    """A policy file holding the user's line and a stale block of the formula."""
    pillar["connect_tcp"] = entries
    dom0.set_pillar(pillar)
    path = dom0.tmp / "policy.d" / "30-user-networking.policy"
    path.parent.mkdir(exist_ok=True)
    path.write_text("# mine\nqubes.ConnectTCP +22 work build allow\n"
                    "# BEGIN qubes_firewall:connect-tcp (managed by Salt, do not edit)\n"
                    "qubes.ConnectTCP +1 work @default allow target=build\n"
                    "# END qubes_firewall:connect-tcp\n")
    return path


def test_a_connection_the_qubes_cannot_carry_fails_in_dom0_before_any_write(dom0, qubes, backend):
    # web is a client of sys-firewall, build of sys-firewall-2 behind the VPN
    # qube: no qube can route web -> build. dom0 plans every qube and stops.
    pillar = full_pillar()
    pillar["connections"].append({"from": "web", "to": "build", "proto": "tcp", "ports": [8080]})
    pillar["qubes"]["work"]["firewall"] = [{"action": "drop"}]
    policy = with_policy(dom0, pillar, [{"client": "web", "server": "build", "port": 8080}])
    world, text = qubes.path.read_bytes(), policy.read_bytes()
    qubes.clear_calls()
    fake_qubesadmin.reset_calls()
    out = dom0.run()
    assert out["topology"]["result"] is False
    assert "qubes_firewall:connections:1: build is not attached directly to sys-firewall" in out["topology"]["comment"]
    assert out["policy"] is None and out["firewall"] is None and out["prefs"] is None
    assert qubes.path.read_bytes() == world and policy.read_bytes() == text
    assert no_writes(qubes)


def test_an_unknown_connect_tcp_server_is_named_and_nothing_is_written(dom0, qubes, backend):
    policy = with_policy(dom0, full_pillar(), [{"client": "untrusted", "server": "ghost-service", "port": 444}])
    qubes.edit(lambda d: d["qubes"].update(untrusted=fakequbes._qube("AppVM", 30)))
    world, text = qubes.path.read_bytes(), policy.read_bytes()
    qubes.clear_calls()
    fake_qubesadmin.reset_calls()
    out = dom0.run()
    comment = out["topology"]["comment"]
    assert out["topology"]["result"] is False
    assert "qubes_firewall:connect_tcp:0:server: ghost-service does not exist in this Qubes" in comment
    assert "qvm-ls" not in comment
    assert out["policy"] is None
    assert qubes.path.read_bytes() == world and policy.read_bytes() == text
    assert no_writes(qubes)


def test_a_failing_preflight_stops_the_policy_in_the_sls():
    sls = (REPO / "salt" / "qubes_firewall" / "init.sls").read_text()
    block = sls.split("{#- dom0 part: BEGIN dom0 states #}")[1].split("{#- dom0 part: END dom0 states #}")[0]
    data = yaml.safe_load(re.sub(r"\{#.*?#\}", "", block, flags=re.S))
    for sid, body in data.items():
        if sid == "qubes_firewall-dom0-topology":
            continue
        requires = [r for item in body[next(iter(body))] if "require" in item for r in item["require"]]
        assert {"qubes_firewall": "qubes_firewall-dom0-topology"} in requires, sid


def test_the_preflight_plans_every_qube_with_addresses_from_qubes(dom0, qubes, backend):
    # no addresses in the pillar: they come from the inventory; a qube Qubes
    # has not networked yet plans with a placeholder
    qubes.edit(lambda d: d["qubes"]["build"]["props"].update(netvm=None))
    out = dom0.run(test=True)
    assert out["topology"]["result"] is True, out["topology"]


def test_a_pillar_release_other_than_the_detected_one_is_refused(dom0, qubes, backend):
    release = dom0.tmp / "qubes-release"
    release.write_text("Qubes release 4.3.0 (R4.3)\n")
    dom0.opts["qubes_firewall_release_file"] = str(release)
    assert dom0.qubes_firewall.qubes_release() == "4.3"
    pillar = full_pillar()
    pillar["lookup"] = dict(dom0.pillar["qubes_firewall"]["lookup"], qubes_release="4.2")
    dom0.set_pillar(pillar)
    before = qubes.path.read_bytes()
    out = dom0.run()
    assert out["topology"]["result"] is False
    assert ("qubes_firewall:lookup:qubes_release: '4.2', but this dom0 runs Qubes 4.3" in out["topology"]["comment"]
            or "qubes_firewall:lookup:qubes_release: 4.2, but this dom0 runs Qubes 4.3" in out["topology"]["comment"])
    assert qubes.path.read_bytes() == before and no_writes(qubes)
    pillar["lookup"]["qubes_release"] = "4.3"
    dom0.set_pillar(pillar)
    assert dom0.run(test=True)["topology"]["result"] is True
    release.write_text("Qubes release 4.2.4 (R4.2)\n")
    assert dom0.qubes_firewall.qubes_release() == "4.2"


def test_custom_persist_and_template_are_checked_against_qubes(dom0, qubes, backend):
    # sys-firewall holds the https forward's rules; with custom-persist Qubes
    # runs none of its /rw/config scripts at boot
    qubes.edit(lambda d: d["qubes"]["sys-firewall"]["features"].update({"service.custom-persist": "1"}))
    out = dom0.run(test=True)
    assert out["topology"]["result"] is False
    assert ("qubes_firewall:qubes:sys-firewall: sys-firewall has the feature service.custom-persist in Qubes"
            in out["topology"]["comment"])
    assert "add `custom_persist: true` and `template: fedora-39-xfce`" in out["topology"]["comment"]

    pillar = full_pillar()
    pillar["qubes"]["sys-firewall"].update(custom_persist=True, template="debian-13")
    dom0.set_pillar(pillar)
    out = dom0.run(test=True)
    assert ("qubes_firewall:qubes:sys-firewall:template: debian-13, but sys-firewall boots from the root "
            "filesystem of fedora-39-xfce: set `template: fedora-39-xfce`") in out["topology"]["comment"]

    pillar["qubes"]["sys-firewall"]["template"] = "fedora-39-xfce"
    dom0.set_pillar(pillar)
    assert dom0.run(test=True)["topology"]["result"] is True

    # the pillar says custom_persist, Qubes does not have it
    qubes.edit(lambda d: d["qubes"]["sys-firewall"]["features"].pop("service.custom-persist"))
    out = dom0.run(test=True)
    assert ("qubes_firewall:qubes:sys-firewall:custom_persist: true, but sys-firewall does not have the "
            "feature service.custom-persist") in out["topology"]["comment"]


def test_the_root_template_of_a_disposable_is_its_disposable_templates_template(dom0, qubes, backend):
    def add(data):
        data["qubes"]["disp-fw"] = {"klass": "DispVM", "qid": 40, "dispid": 7, "state": "Running",
                                    "template": "default-dvm", "features": {"service.custom-persist": "1"},
                                    "props": {"provides_network": True, "netvm": "sys-net"}}
    qubes.edit(add)
    pillar = full_pillar()
    pillar["qubes"]["disp-fw"] = {"netvm": "sys-net", "provides_network": True, "custom_persist": True,
                                  "template": "default-dvm", "dispvm_template": "default-dvm"}
    pillar["qubes"]["web"]["netvm"] = "disp-fw"
    dom0.set_pillar(pillar)
    out = dom0.run(test=True)
    assert ("qubes_firewall:qubes:disp-fw:template: default-dvm, but disp-fw boots from the root filesystem "
            "of fedora-39-xfce") in out["topology"]["comment"]


def test_reconnect_keeps_a_default_client_on_the_default(dom0, qubes, backend):
    # web follows the global default (sys-firewall); personal is pinned to it
    qubes.edit(lambda d: d["qubes"]["personal"].update(state="Running", props={"netvm": "sys-firewall"}))
    assert dom0.qubes_firewall.reconnect("sys-firewall") == \
        ["personal", "sys-firewall-2", "sys-vpn", "web", "work"]  # none provides network: by name
    world = qubes.world()
    events = qubes.data()["events"]
    assert sorted(e[1] for e in events) == ["personal", "sys-firewall-2", "sys-vpn", "web", "work"]
    assert all(e[2] == "sys-firewall" for e in events) and len(events) == 5  # each re-attached once
    for name in ("web", "work", "sys-vpn", "sys-firewall-2"):
        assert world.is_default(name, "netvm"), name
    assert not world.is_default("personal", "netvm")


def test_a_noop_run_reads_the_inventory_once(dom0, qubes, backend):
    pillar = full_pillar()
    pillar["qubes"]["work"]["firewall"] = [
        {"action": "accept", "proto": "tcp", "dsthost": "10.137.0.10", "dstports": 22},
        {"action": "accept", "specialtarget": "dns"}, {"action": "drop"}]
    dom0.set_pillar(pillar)
    dom0.run()
    qubes.clear_calls()
    fake_qubesadmin.reset_calls()
    out = dom0.run()
    assert all(v is not None and v["result"] is True and v["changes"] == {} for v in out.values()), out
    calls = qubes.calls()
    if backend == "cli":
        assert [c for c in calls if c[0] == "qvm-ls"] == [["qvm-ls", "--raw-data", "--fields",
                                                           "name,klass,netvm,provides_network,ip,state,template,kernel,ip6"]]
        assert len([c for c in calls if c[0] == "qvm-firewall"]) == 1  # work's list, once
    else:
        assert fake_qubesadmin.calls["admin.vm.List"] == 1 and fake_qubesadmin.calls["Qubes"] == 1
        assert fake_qubesadmin.calls["admin.vm.firewall.Get"] == 1
        assert "admin.vm.property.Get" not in fake_qubesadmin.calls
    assert no_writes(qubes)


# ---- what can never work: refused by the preflight, nothing written ----------


def _refused(dom0, qubes, pillar):
    dom0.set_pillar(pillar)
    world = qubes.path.read_bytes()
    qubes.clear_calls()
    fake_qubesadmin.reset_calls()
    out = dom0.run()
    assert out["topology"]["result"] is False, out["topology"]
    assert out["policy"] is None and out["firewall"] is None and out["prefs"] is None
    assert qubes.path.read_bytes() == world and no_writes(qubes)
    return out["topology"]["comment"]


def _isolated_pillar(dom0):
    pillar = copy.deepcopy(dom0.pillar["qubes_firewall"])
    pillar["qubes"]["vault"] = {"netvm": "none"}
    return pillar


def test_a_forward_to_a_qube_without_any_network_is_refused_before_any_write(dom0, qubes, backend):
    qubes.edit(lambda d: d["qubes"].update(vault=fakequbes._qube("AppVM", 31, props={"netvm": None})))
    pillar = _isolated_pillar(dom0)
    pillar["port_forwards"].append({"name": "vault-ssh", "qube": "vault", "port": 22, "interfaces": ["ens6"]})
    comment = _refused(dom0, qubes, pillar)
    assert ("qubes_firewall:port_forwards:1:qube: port forward 'vault-ssh' can never reach vault: vault has "
            "netvm none and does not provide network: it has no network at all") in comment, comment
    # the same pillar with vault on a netvm is accepted: the refusal is about the missing network
    pillar["qubes"]["vault"] = {"netvm": "sys-firewall"}
    pillar["port_forwards"][-1]["port"] = 2222
    dom0.set_pillar(pillar)
    assert "vault" not in " ".join(dom0.states.topology_valid("t")["comment"].splitlines()[1:])


def test_a_connection_from_or_to_a_qube_without_any_network_is_refused_before_any_write(dom0, qubes, backend):
    qubes.edit(lambda d: d["qubes"].update(vault=fakequbes._qube("AppVM", 31, props={"netvm": None})))
    pillar = _isolated_pillar(dom0)
    pillar["connections"] += [{"from": "work", "to": "vault", "proto": "tcp", "ports": [22]},
                              {"from": "vault", "to": "build"}]
    comment = _refused(dom0, qubes, pillar)
    assert ("qubes_firewall:connections:1:to: the connection work -> vault can never pass: vault has netvm "
            "none and does not provide network") in comment, comment
    assert "qubes_firewall:connections:2:from: the connection vault -> build can never pass" in comment


def test_a_network_qube_without_a_netvm_is_an_uplink_and_may_take_a_forward(dom0, qubes, backend):
    # sys-net itself: netvm none, provides network; a forward to it is a local redirect
    pillar = copy.deepcopy(dom0.pillar["qubes_firewall"])
    pillar["port_forwards"].append({"name": "net-ssh", "qube": "sys-net", "port": 22, "interfaces": ["ens6"]})
    dom0.set_pillar(pillar)
    assert dom0.states.topology_valid("t")["result"] is not False


def test_a_vpn_qube_gets_its_endpoints_as_its_qvm_firewall_list(dom0, qubes, backend):
    pillar = full_pillar()
    pillar["qubes"]["sys-vpn"]["vpn"] = {
        "interfaces": ["wg0"], "dns": ["10.8.0.1"],
        "endpoints": [{"address": "198.51.100.7", "port": 51820},
                      {"address": "2001:db8::/64", "port": 443, "protocol": "tcp"}]}
    dom0.set_pillar(pillar)
    real = dom0.run()
    assert real["firewall"]["result"] is True and "sys-vpn" in real["firewall"]["changes"], real["firewall"]
    assert qubes.world().firewall("sys-vpn") == [
        "action=accept proto=udp dst4=198.51.100.7/32 dstports=51820-51820 comment=vpn endpoint",
        "action=accept proto=tcp dst6=2001:db8::/64 dstports=443-443 comment=vpn endpoint"]
    qubes.clear_calls()
    again = dom0.run()
    assert again["firewall"]["changes"] == {} and writes(qubes.calls()) == []
    # a firewall list of its own as well: refused by its path, nothing written
    pillar["qubes"]["sys-vpn"]["firewall"] = [{"action": "accept"}]
    dom0.set_pillar(pillar)
    out = dom0.run()
    assert out["validated"]["result"] is False
    assert "qubes_firewall:qubes:sys-vpn:firewall: sys-vpn has vpn" in out["validated"]["comment"]
    assert writes(qubes.calls()) == []
