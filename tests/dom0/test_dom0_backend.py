"""
The Qubes backend (``_qubes_firewall_qubes.Qubes``): the same scenarios against the
qvm-* tools (fake tools on PATH) and against qubesadmin (fake object API),
both over one fake Qubes world.
"""

import fake_qubesadmin
import pytest
from salt.exceptions import CommandExecutionError

INVENTORY_CALL = ["qvm-ls", "--raw-data", "--fields",
                  "name,klass,netvm,provides_network,ip,state,template,kernel,ip6"]


def test_backend_is_chosen_by_what_can_be_imported(dom0, backend):
    assert dom0.qubes_firewall_qubes.backend() == backend


def test_cli_backend_can_be_forced(qubes, monkeypatch):
    fake_qubesadmin.install(monkeypatch)
    from conftest import Dom0, full_pillar

    d = Dom0(full_pillar(), qubes_firewall_backend="cli")
    assert d.qubes_firewall_qubes.backend() == "cli"
    d.qubes_firewall_qubes.inventory()
    assert qubes.calls() == [INVENTORY_CALL]


def test_inventory_is_read_once_per_run_with_defaults_resolved(dom0, qubes, backend):
    inv = dom0.qubes_firewall_qubes.inventory()
    assert dom0.qubes_firewall_qubes.inventory() == inv  # the same run: from __context__
    if backend == "cli":
        assert qubes.calls() == [INVENTORY_CALL]
    else:
        # one admin.vm.List (power states included), one GetAll per qube but dom0
        assert fake_qubesadmin.calls == {"Qubes": 1, "admin.vm.List": 1, "admin.vm.property.GetAll": 10}
    dom0.new_run()
    dom0.qubes_firewall_qubes.inventory()
    assert len([c for c in qubes.calls() if c[:2] in (["qvm-ls", "--raw-data"], ["qubesd", "admin.vm.List"])]) == 2
    assert inv["dom0"]["klass"] == "AdminVM" and inv["dom0"]["ip"] is None
    assert inv["sys-net"] == {
        "name": "sys-net", "klass": "AppVM", "netvm": None, "provides_network": True,
        "ip": "10.137.0.5", "ip6": None, "state": "Running", "running": True, "template": "fedora-39-xfce",
        "kernel": "6.6.48-1.fc37", "disposable": False,
    }
    # netvm through Qubes' default_netvm, not pinned
    assert inv["work"]["netvm"] == "sys-firewall" and qubes.world().is_default("work", "netvm")
    assert inv["build"]["running"] is False and inv["build"]["state"] == "Halted"
    assert inv["fedora-39-xfce"]["netvm"] is None and inv["fedora-39-xfce"]["ip"] is None


def test_inventory_of_disposables_and_unnetworked_qubes(qubes, monkeypatch, backend):
    from conftest import Dom0, full_pillar

    def add(data):
        data["qubes"]["disp-fw"] = {"klass": "DispVM", "qid": 40, "dispid": 7, "state": "Running",
                                    "template": "default-dvm", "props": {"provides_network": True,
                                                                         "netvm": "sys-net"},
                                    "features": {}}
        data["qubes"]["vault"] = {"klass": "AppVM", "qid": 41, "state": "Halted",
                                  "template": "fedora-39-xfce", "props": {"netvm": None}, "features": {}}

    qubes.edit(add)
    inv = Dom0(full_pillar()).qubes_firewall_qubes.inventory()
    assert inv["disp-fw"]["disposable"] and inv["disp-fw"]["ip"] == "10.138.0.7"
    assert inv["disp-fw"]["template"] == "default-dvm"
    assert inv["vault"]["netvm"] is None and inv["vault"]["ip"] is None


def test_inventory_reads_ipv6_as_qubes_decides_it_along_the_netvm_chain(qubes, backend):
    """ip6 is Qubes' ip6 property: an address only where the ipv6 feature is in effect (set on a
    netvm, it reaches its clients down the chain; ``ipv6 ''`` turns it off for one qube)."""
    from conftest import Dom0, full_pillar

    def add(data):
        data["qubes"]["sys-net"]["features"]["ipv6"] = "1"
        data["qubes"]["build"]["features"]["ipv6"] = ""
        data["qubes"]["personal"]["props"]["ip6"] = "fd09:24ef:4179::a89:99"  # qvm-prefs personal ip6 ...: set wins
        data["qubes"]["disp-web"] = {"klass": "DispVM", "qid": 42, "dispid": 300, "state": "Running",
                                     "template": "default-dvm", "props": {"netvm": "sys-firewall"},
                                     "features": {}}

    before = Dom0(full_pillar()).qubes_firewall_qubes.inventory()
    assert {n: q["ip6"] for n, q in before.items() if q["ip6"]} == {}
    qubes.edit(add)
    inv = Dom0(full_pillar()).qubes_firewall_qubes.inventory()
    world = qubes.world()
    assert inv["sys-net"]["ip6"] == "fd09:24ef:4179::a89:%x" % world.qube("sys-net")["qid"]
    assert inv["sys-firewall"]["ip6"] == "fd09:24ef:4179::a89:%x" % world.qube("sys-firewall")["qid"]
    assert inv["work"]["ip6"] == "fd09:24ef:4179::a89:%x" % world.qube("work")["qid"]
    assert inv["disp-web"]["ip6"] == "fd09:24ef:4179::a8a:12c"
    assert inv["build"]["ip6"] is None  # ipv6 '' on the qube itself
    assert inv["dom0"]["ip6"] is None and inv["fedora-39-xfce"]["ip6"] is None
    assert inv["personal"]["ip6"] == "fd09:24ef:4179::a89:99"


def test_set_pref_and_qubes_refusals(dom0, qubes, backend):
    mod = dom0.qubes_firewall_qubes
    with pytest.raises(CommandExecutionError, match="The work qube does not provide network"):
        mod.set_pref("build", "netvm", "work")
    with pytest.raises(CommandExecutionError, match="Loops in network are unsupported"):
        mod.set_pref("sys-net", "netvm", "sys-firewall")
    qubes.edit(lambda d: d["qubes"]["sys-vpn"].update(state="Halted"))
    mod.set_pref("sys-vpn", "provides_network", True)
    with pytest.raises(CommandExecutionError, match="Cannot dynamically attach to stopped NetVM"):
        mod.set_pref("work", "netvm", "sys-vpn")
    with pytest.raises(CommandExecutionError, match="still used by other qubes"):
        mod.set_pref("sys-firewall", "provides_network", False)
    assert qubes.get("work", "netvm") == "sys-firewall"
    mod.set_pref("work", "netvm", None)
    assert qubes.get("work", "netvm") is None and not qubes.world().is_default("work", "netvm")
    mod.reset_pref("work", "netvm")
    assert qubes.get("work", "netvm") == "sys-firewall" and qubes.world().is_default("work", "netvm")
    mod.set_pref("sys-vpn", "provides_network", False)
    assert qubes.get("sys-vpn", "provides_network") is False


def test_no_such_qube(dom0, backend):
    with pytest.raises(CommandExecutionError, match="(?i)no such (domain|qube)"):
        dom0.qubes_firewall_qubes.set_pref("nope", "netvm", None)
    with pytest.raises(CommandExecutionError, match="(?i)no such (domain|qube)"):
        dom0.qubes_firewall_qubes.get_firewall("nope")


def fields(*lines):
    """Rule lines as rule elements, the way the formula passes them."""
    out = []
    for line in lines:
        head, sep, comment = line.partition("comment=")
        pairs = [tuple(t.split("=", 1)) for t in head.split()]
        if sep:
            pairs.append(("comment", comment))
        out.append(pairs)
    return out


def test_firewall_list_round_trip_in_canonical_form(dom0, qubes, backend):
    mod = dom0.qubes_firewall_qubes
    assert mod.get_firewall("work") == ["action=accept"]  # no firewall.xml: all allowed
    lines = [
        "action=accept proto=tcp dsthost=example.com dstports=443-443",
        "action=accept proto=udp dst4=10.137.0.10/32 dstports=1000-2000 comment=lab traffic, see 1",
        "action=accept proto=icmp icmptype=8",
        "action=accept specialtarget=dns",
        "action=drop",
    ]
    mod.set_firewall("work", fields(*lines))
    assert mod.get_firewall("work") == lines
    mod.set_firewall("work", [])
    assert mod.get_firewall("work") == []  # empty list: everything blocked
    mod.set_firewall("work", fields("action=drop proto=tcp dst4=10.0.0.1/32"))
    assert mod.get_firewall("work") == ["action=drop proto=tcp dst4=10.0.0.1/32"]


def test_each_rule_element_is_one_argument(dom0, qubes, backend):
    mod = dom0.qubes_firewall_qubes
    mod.set_firewall("work", fields("action=accept proto=tcp dstports=22-22 comment=ssh from the lab, see 1"))
    assert mod.get_firewall("work") == ["action=accept proto=tcp dstports=22-22 comment=ssh from the lab, see 1"]
    if backend == "cli":
        adds = [c for c in qubes.calls() if "add" in c]
        assert adds == [["qvm-firewall", "work", "add", "action=accept", "proto=tcp", "dstports=22-22",
                         "comment=ssh from the lab, see 1"]]


@pytest.mark.parametrize("bad", [
    [("action", "accept"), ("dst6", "fe80::%x y/128")],      # a scope id with a space
    [("action", "accept"), ("proto", "tcp dstports=1-65535")],
    [("action", "accept"), ("comment", "a\nb")],
    [("action", "accept"), ("dsthost", "example.com"), ("dst4", "1.2.3.4/32")],
    "action=accept proto=tcp",                                # a line to split: refused
])
def test_a_rule_outside_the_grammar_changes_nothing(dom0, qubes, backend, bad):
    mod = dom0.qubes_firewall_qubes
    mod.set_firewall("work", fields("action=drop"))
    before = qubes.path.read_bytes()
    qubes.clear_calls()
    fake_qubesadmin.reset_calls()
    with pytest.raises(CommandExecutionError, match="nothing changed"):
        mod.set_firewall("work", fields("action=accept specialtarget=dns") + [bad])
    assert qubes.path.read_bytes() == before
    assert [c for c in qubes.calls() if c[0] != "qubesd" and "list" not in c] == []
    assert fake_qubesadmin.writes() == 0


def test_firewall_replacement_is_one_call_with_qubesadmin_and_fail_closed_with_the_cli(dom0, qubes, backend):
    mod = dom0.qubes_firewall_qubes
    mod.set_firewall("work", fields("action=accept proto=tcp dstports=22-22", "action=drop"))
    qubes.edit(lambda d: d.update(firewall_sets=[]))
    qubes.clear_calls()
    new = ["action=accept proto=tcp dstports=443-443", "action=accept specialtarget=dns", "action=drop"]
    mod.set_firewall("work", fields(*new))
    assert mod.get_firewall("work") == new
    if backend == "qubesadmin":
        assert qubes.data()["firewall_sets"] == ["work"]
        return
    # deleting from the end then adding in order: every list Qubes held on the
    # way was a prefix of the old or of the new list (never more open)
    calls = [c for c in qubes.calls() if c[0] == "qvm-firewall" and c[-1] != "list"]
    assert calls == [
        ["qvm-firewall", "work", "del", "--rule-no", "1"],
        ["qvm-firewall", "work", "del", "--rule-no", "0"],
        ["qvm-firewall", "work", "add", "action=accept", "proto=tcp", "dstports=443-443"],
        ["qvm-firewall", "work", "add", "action=accept", "specialtarget=dns"],
        ["qvm-firewall", "work", "add", "action=drop"],
    ]


def test_a_rule_qubes_refuses_leaves_the_old_list(dom0, qubes, backend):
    mod = dom0.qubes_firewall_qubes
    old = ["action=accept proto=tcp dstports=22-22 comment=ssh, kept", "action=drop"]
    mod.set_firewall("work", fields(*old))
    # the grammar passes it; Qubes refuses ports above 65536
    with pytest.raises(CommandExecutionError) as err:
        mod.set_firewall("work", fields("action=accept specialtarget=dns",
                                        "action=accept proto=tcp dstports=70000-70000"))
    assert "Traceback" not in str(err.value)
    assert mod.get_firewall("work") == old
    if backend == "cli":
        assert "the old list of work was put back" in str(err.value)


def test_features(dom0, qubes, backend):
    qubes.edit(lambda d: d["qubes"]["sys-vpn"]["features"].update(
        {"service.qubes-firewall": "", "os": "Linux", "menu-items": "a b c", "service.custom-persist": "1"}))
    # only the features the formula looks at
    assert dom0.qubes_firewall_qubes.features("sys-vpn") == {
        "os": "Linux", "service.qubes-firewall": "", "service.custom-persist": "1"}
    if backend == "qubesadmin":  # one List, one Get per wanted feature present
        assert fake_qubesadmin.calls["admin.vm.feature.List"] == 1
        assert fake_qubesadmin.calls["admin.vm.feature.Get"] == 3


def test_reconnect_reattaches_running_clients_sys_firewall_first(dom0, qubes, backend):
    def wire(data):
        data["qubes"]["sys-usb-net"] = {"klass": "AppVM", "qid": 30, "state": "Running",
                                        "template": "fedora-39-xfce", "features": {},
                                        "props": {"netvm": "sys-net", "provides_network": True}}
        data["qubes"]["apt-cacher"] = {"klass": "AppVM", "qid": 31, "state": "Running",
                                       "template": "fedora-39-xfce", "features": {},
                                       "props": {"netvm": "sys-net"}}
        data["qubes"]["offline"] = {"klass": "AppVM", "qid": 32, "state": "Halted",
                                    "template": "fedora-39-xfce", "features": {},
                                    "props": {"netvm": "sys-net"}}

    qubes.edit(wire)
    assert dom0.qubes_firewall.reconnect("sys-net", test=True) == ["sys-firewall", "sys-usb-net", "apt-cacher"]
    assert qubes.data()["events"] == []
    assert dom0.qubes_firewall.reconnect("sys-net") == ["sys-firewall", "sys-usb-net", "apt-cacher"]
    assert qubes.data()["events"] == [["attach", "sys-firewall", "sys-net"],
                                      ["attach", "sys-usb-net", "sys-net"],
                                      ["attach", "apt-cacher", "sys-net"]]
    # nothing pinned that was not pinned before
    assert qubes.world().is_default("apt-cacher", "provides_network")


def test_reconnect_refuses_a_stopped_netvm(dom0, qubes, backend):
    qubes.edit(lambda d: d["qubes"]["sys-net"].update(state="Halted"))
    with pytest.raises(CommandExecutionError, match="sys-net is not running"):
        dom0.qubes_firewall.reconnect("sys-net")
    assert qubes.data()["events"] == []


def test_a_write_drops_what_the_run_read(dom0, qubes, backend):
    mod = dom0.qubes_firewall_qubes
    assert mod.inventory()["work"]["netvm"] == "sys-firewall"
    assert mod.get_firewall("work") == ["action=accept"]
    mod.set_pref("work", "netvm", None)
    assert mod.inventory()["work"]["netvm"] is None  # read again
    mod.set_firewall("work", [[("action", "drop")]])
    assert mod.get_firewall("work") == ["action=drop"]
    # a change made behind the run's back is not seen until something is written
    qubes.edit(lambda d: d["qubes"]["web"]["props"].update(netvm=None))
    assert mod.inventory()["web"]["netvm"] == "sys-firewall"
    dom0.new_run()
    assert mod.inventory()["web"]["netvm"] is None


def test_messages_name_what_was_asked(dom0, qubes, backend):
    with pytest.raises(CommandExecutionError) as err:
        dom0.qubes_firewall_qubes.set_pref("build", "netvm", "work")
    if backend == "qubesadmin":
        assert str(err.value) == ("setting netvm of build to work (admin.vm.property.Set): "
                                  "The work qube does not provide network")
    else:
        assert str(err.value).startswith("qvm-prefs build netvm work failed (exit 1): ")
