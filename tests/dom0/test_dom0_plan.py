"""
The pure dom0 planner (``qubes_firewall_dom0``): property change order,
canonical qvm-firewall comparison, topology validation against an inventory,
the address map.  Plans are also replayed on the fake Qubes world, which
refuses what Qubes refuses, so "Qubes never refuses a step" is checked
against Qubes' rules rather than against the planner's own.
"""

import copy

import fakequbes
import pytest
from conftest import core, full_pillar
from hypothesis import given, settings
from hypothesis import strategies as st

model_mod = core("model")
dom0 = core("dom0")
qubes_mod = core("qubes")


def parse(pillar):
    return model_mod.parse(pillar)


def inventory_of(world):
    out = {}
    for name in world.names():
        q = world.qube(name)
        if q["klass"] == "AdminVM":
            out[name] = {"name": name, "klass": "AdminVM", "netvm": None, "provides_network": False,
                         "ip": None, "ip6": None, "state": "Running", "running": True, "template": None,
                         "kernel": None, "disposable": False}
            continue
        out[name] = {"name": name, "klass": q["klass"], "netvm": world.get(name, "netvm"),
                     "provides_network": bool(world.get(name, "provides_network")),
                     "ip": world.get(name, "ip"), "ip6": world.get(name, "ip6"), "state": world.state(name),
                     "running": world.running(name), "template": q.get("template"),
                     "kernel": q.get("kernel"), "disposable": q["klass"] == "DispVM"}
    return out


@pytest.fixture
def world(tmp_path):
    path = fakequbes.write_world(tmp_path / "qubes.json", fakequbes.seed_world())
    return fakequbes.World(str(path))


def replay(world, steps):
    for step in steps:
        world.set(step["qube"], step["prop"], step["new"])
    return fakequbes.World(world.path)


def steps_text(steps):
    return ["%s %s %s" % (s["qube"], s["prop"], s["new"]) for s in steps]


# ---- prefs order ---------------------------------------------------------


def test_seed_sandwich_from_a_fresh_install(world):
    model = parse(full_pillar())
    steps = dom0.prefs_steps(model, inventory_of(world))
    assert steps_text(steps) == [
        "sys-firewall-2 provides_network True",
        "sys-vpn provides_network True",
        "sys-firewall-2 netvm sys-vpn",
        "build netvm sys-firewall-2",
        "work netvm sys-firewall-2",
    ]
    # sys-vpn and web reach sys-firewall through Qubes' default: not pinned
    after = replay(world, steps)
    assert after.is_default("sys-vpn", "netvm") and after.is_default("web", "netvm")
    assert dom0.prefs_steps(model, inventory_of(after)) == []


def test_chain_reversal_needs_uplink_first_order(world):
    # live: sys-net <- fw-a <- fw-b ; wanted: sys-net <- fw-b <- fw-a
    world.data["qubes"]["fw-a"] = fakequbes._qube("AppVM", 20, props={"netvm": "sys-net", "provides_network": True})
    world.data["qubes"]["fw-b"] = fakequbes._qube("AppVM", 21, props={"netvm": "fw-a", "provides_network": True})
    world.save()
    pillar = {"qubes": {"sys-net": {"netvm": None}, "fw-a": {"netvm": "fw-b"}, "fw-b": {"netvm": "sys-net"}}}
    model = parse(pillar)
    steps = dom0.prefs_steps(model, inventory_of(world))
    assert steps_text(steps) == ["fw-b netvm sys-net", "fw-a netvm fw-b"]
    # the naive pillar order would have made a loop mid-way, and Qubes says so
    naive = fakequbes.World(world.path)
    with pytest.raises(fakequbes.QubesValueError, match="Loops in network are unsupported"):
        naive.set("fw-a", "netvm", "fw-b")
    after = replay(fakequbes.World(world.path), steps)
    assert after.get("fw-a", "netvm") == "fw-b" and after.get("fw-b", "netvm") == "sys-net"


def test_netvm_none_and_provides_network_off_after_the_clients_left(world):
    world.data["qubes"]["sys-vpn"]["props"] = {"provides_network": True}
    world.data["qubes"]["work"]["props"] = {"netvm": "sys-vpn"}
    world.save()
    pillar = {"qubes": {
        "sys-net": {"netvm": "none"}, "sys-firewall": {"netvm": "sys-net"},
        "sys-vpn": {"netvm": None, "provides_network": False},
        "work": {"netvm": "sys-firewall"},
        "personal": {"netvm": "none"},
    }}
    steps = dom0.prefs_steps(parse(pillar), inventory_of(world))
    assert steps_text(steps) == [
        "personal netvm None",
        "sys-vpn netvm None",
        "work netvm sys-firewall",
        "sys-vpn provides_network False",
    ]
    after = replay(world, steps)
    assert after.get("personal", "netvm") is None and not after.is_default("personal", "netvm")


def test_values_reached_through_defaults_change_nothing(world):
    pillar = {"qubes": {"sys-net": {"netvm": None, "provides_network": True},
                        "sys-firewall": {"netvm": "sys-net", "provides_network": True},
                        "web": {"netvm": "sys-firewall", "provides_network": False}}}
    assert dom0.prefs_steps(parse(pillar), inventory_of(world)) == []


def test_planner_never_emits_a_step_qubes_refuses(world):
    inv = inventory_of(world)
    inv["work"]["netvm"] = "sys-net"
    with pytest.raises(dom0.PlanError, match="Cannot dynamically attach to stopped NetVM"):
        inv["sys-vpn"]["running"] = False
        dom0.prefs_steps(parse(full_pillar()), inv)


# ---- firewall canonical form ---------------------------------------------


def test_firewall_rules_compare_in_canonical_form():
    pillar = full_pillar()
    pillar["qubes"]["work"]["firewall"] = [
        {"action": "accept", "proto": "tcp", "dsthost": "example.com", "dstports": 443},
        {"proto": "udp", "dstports": "1000-2000", "action": "accept", "dsthost": "192.168.1.7"},
        {"action": "accept", "proto": "tcp", "dst6": "2001:db8::1", "dstports": 22},
        {"action": "accept", "specialtarget": "dns"},
        {"action": "accept", "proto": "icmp", "icmptype": 8, "comment": "ping, see ticket 7"},
        {"action": "drop", "dsthost": "0.0.0.0/0"},
    ]
    model = parse(pillar)
    live = [
        "action=accept dstports=443 proto=tcp dsthost=example.com",
        "action=accept proto=udp dst4=192.168.1.7 dstports=1000-2000",
        "action=accept proto=tcp dst6=2001:db8:0::1/128 dstports=22-22",
        "action=accept specialtarget=dns",
        "action=accept proto=icmp icmptype=8 comment=ping, see ticket 7",
        "action=drop",
    ]
    assert dom0.firewall_changes(model, {"work": live}) == {}
    assert dom0.wanted_firewall(model.qubes["work"])[1] == \
        "action=accept proto=udp dst4=192.168.1.7/32 dstports=1000-2000"
    changed = dom0.firewall_changes(model, {"work": live[:-1]})
    assert changed["work"]["new"][-1] == "action=drop"
    # unmanaged qubes (no firewall key) are left alone, even with a live list
    assert "build" not in dom0.firewall_changes(model, {"build": ["action=drop"]})


def test_empty_pillar_list_means_block_everything():
    pillar = full_pillar()
    pillar["qubes"]["build"]["firewall"] = []
    changes = dom0.firewall_changes(parse(pillar), {"build": ["action=accept"]})
    assert changes == {"build": {"old": ["action=accept"], "new": [], "rules": []}}


# ---- topology validation ---------------------------------------------------


def problems(pillar, world, features=None, firewalls=None, mutate=None):
    inv = inventory_of(world)
    if mutate:
        mutate(inv)
    return dom0.problems(parse(pillar), inv, features or {}, firewalls or {}, now=1_700_000_000)


def test_the_seed_machine_fits(world):
    assert problems(full_pillar(), world) == []


def test_qubes_that_do_not_exist(world):
    pillar = full_pillar()
    pillar["qubes"]["sys-dns"] = {"netvm": "sys-firewall"}
    pillar["connect_tcp"] = [{"client": "work", "server": "db", "port": 5432}]
    out = problems(pillar, world)
    assert out == [
        "qubes_firewall:qubes:sys-dns: sys-dns does not exist in this Qubes; create the qube, or correct the name",
        "qubes_firewall:connect_tcp:0:server: db does not exist in this Qubes; create the qube, or correct the name",
    ]
    assert not any("qvm-ls" in line for line in out)


def test_live_rules_past_their_expire_are_not_compared():
    pillar = full_pillar()
    pillar["qubes"]["build"]["firewall"] = [{"action": "accept", "specialtarget": "dns"}, {"action": "drop"}]
    model = parse(pillar)
    now = 1_700_000_000
    wanted = ["action=accept specialtarget=dns", "action=drop"]
    # an expired rule Qubes still holds is inactive: the lists match
    live = ["action=accept proto=tcp dstports=22-22 expire=%d" % (now - 5)] + wanted
    assert dom0.firewall_changes(model, {"build": live}, now=now) == {}
    # a rule that has not expired yet is not in the pillar: replaced
    live = ["action=accept proto=tcp dstports=22-22 expire=%d" % (now + 3600)] + wanted
    changes = dom0.firewall_changes(model, {"build": live}, now=now)
    assert changes["build"]["new"] == wanted
    assert changes["build"]["rules"] == [[["action", "accept"], ["specialtarget", "dns"]], [["action", "drop"]]]


def test_service_qube_with_a_client_attached_directly(world):
    pillar = full_pillar()
    pillar["qubes"]["work"]["netvm"] = "sys-vpn"
    pillar["connections"] = []
    out = problems(pillar, world)
    assert len(out) == 1
    assert out[0].startswith("qubes_firewall:qubes:work:netvm: sys-vpn is a network service qube "
                             "(service: true) and work does not provide network")
    assert "work -> sys-firewall-2 -> sys-vpn" in out[0]


def test_service_qube_with_an_unmanaged_live_client(world):
    out = problems(full_pillar(), world, mutate=lambda inv: inv["personal"].update(netvm="sys-vpn"))
    assert len(out) == 1 and out[0].startswith("qubes_firewall:qubes:sys-vpn:service: sys-vpn is a network "
                                               "service qube (service: true) and personal")


def test_firewall_qube_in_front_of_a_service_qube_needs_its_qubes_firewall_service(world):
    out = problems(full_pillar(), world, features={"sys-firewall-2": {"service.qubes-firewall": ""}})
    assert any(p.startswith("qubes_firewall:qubes:sys-firewall-2:netvm: sys-vpn is a network service qube")
               and "has its qubes-firewall service off" in p for p in out)


def test_port_forward_through_a_mirage_firewall(world):
    def mirage(inv):
        inv["sys-firewall"]["kernel"] = "mirage-firewall"
    out = problems(full_pillar(), world, mutate=mirage)
    assert out == [
        "qubes_firewall:port_forwards:0: port forward 'https' goes through sys-firewall, which cannot "
        "hold the nft rules: sys-firewall runs the mirage unikernel firewall (kernel 'mirage-firewall'): "
        "it has no nftables and no shell",
    ]


def test_connection_through_a_provider_without_the_qubes_firewall_service(world):
    out = problems(full_pillar(), world, features={"sys-firewall-2": {"service.qubes-firewall": "",
                                                                      "os": "Linux"}})
    assert any(p.startswith("qubes_firewall:connections:0: the connection work -> build goes through "
                            "sys-firewall-2, which cannot hold the nft rules: sys-firewall-2 provides network "
                            "but its qubes-firewall service is off") for p in out)


def test_destination_that_is_not_linux(world):
    out = problems(full_pillar(), world, features={"web": {"os": "Windows"}})
    assert out == ["qubes_firewall:port_forwards:0: port forward 'https' goes through web, which cannot "
                   "hold the nft rules: web runs Windows, not Linux with nftables"]


def test_connection_dropped_by_the_pillar_list_of_its_source(world):
    pillar = full_pillar()
    pillar["qubes"]["work"]["firewall"] = [
        {"action": "accept", "proto": "tcp", "dsthost": "example.com", "dstports": 443},
        {"action": "accept", "specialtarget": "dns"},
        {"action": "drop"},
    ]
    out = problems(pillar, world)
    assert out == [
        "qubes_firewall:connections:0: the qvm-firewall pillar list qubes_firewall:qubes:work:firewall of "
        "work drops tcp/22 to build (10.137.0.10) in sys-firewall-2 by rule 2 (action=drop), before the "
        "formula's forward rule can accept it; put an accept rule for it first",
    ]
    pillar["qubes"]["work"]["firewall"].insert(0, {"action": "accept", "proto": "tcp",
                                                   "dsthost": "10.137.0.0/24", "dstports": "20-25"})
    assert problems(pillar, world) == []


def test_connection_dropped_by_the_live_list_of_its_source(world):
    live = {"work": ["action=accept proto=tcp dsthost=example.com dstports=443-443"]}
    out = problems(full_pillar(), world, firewalls=live)
    assert len(out) == 1 and "the qvm-firewall list in Qubes (qvm-firewall work) of work drops tcp/22" in out[0]
    assert "by the implicit final drop" in out[0]
    expired = {"work": ["action=accept proto=tcp dst4=10.137.0.10/32 expire=1600000000"]}
    assert len(problems(full_pillar(), world, firewalls=expired)) == 1
    fine = {"work": ["action=accept proto=tcp dst4=10.137.0.10/32 dstports=22-22", "action=drop"]}
    assert problems(full_pillar(), world, firewalls=fine) == []


def test_connection_without_proto_needs_every_protocol(world):
    pillar = full_pillar()
    pillar["connections"] = [{"from": "work", "to": "build"}]
    live = {"work": ["action=accept proto=tcp dst4=10.137.0.10/32", "action=drop"]}
    out = problems(pillar, world, firewalls=live)
    assert [p.split(" drops ")[1].split(" ")[0] for p in out] == ["udp", "icmp"]


def test_moves_qubes_would_refuse(world):
    def halted(inv):
        inv["sys-vpn"].update(running=False, state="Halted")
        inv["sys-firewall-2"]["netvm"] = "sys-firewall"
    out = problems(full_pillar(), world, mutate=halted)
    assert out == ["qubes_firewall:qubes:sys-firewall-2:netvm: sys-firewall-2 is running and sys-vpn is "
                   "Halted: Qubes refuses to attach a running qube to a stopped netvm; start sys-vpn first"]

    # provides_network off while qubes the pillar does not manage still use it
    pillar = {"qubes": {"sys-net": {"netvm": None},
                        "sys-firewall": {"netvm": "sys-net", "provides_network": False}}}
    out = problems(pillar, world)
    assert out == ["qubes_firewall:qubes:sys-firewall:provides_network: false, but build, default-dvm, personal, "
                   "sys-firewall-2, sys-vpn, web, work still use sys-firewall as netvm (Qubes refuses); "
                   "move them first"]


def test_connections_between_separate_chains(world):
    pillar = full_pillar()
    pillar["qubes"]["sys-net-2"] = {"netvm": None, "provides_network": True}
    pillar["qubes"]["lab"] = {"netvm": "sys-net-2"}
    pillar["connections"] = [{"from": "work", "to": "lab"}]
    inv_world = copy.deepcopy(world.data)
    inv_world["qubes"]["sys-net-2"] = fakequbes._qube("AppVM", 50, props={"netvm": None, "provides_network": True})
    inv_world["qubes"]["lab"] = fakequbes._qube("AppVM", 51, props={"netvm": "sys-net-2"})
    world.data = inv_world
    world.save()
    out = problems(pillar, fakequbes.World(world.path))
    assert out == ["qubes_firewall:connections:0: work and lab share no netvm chain (uplinks sys-net and "
                   "sys-net-2): no route between them"]


def test_hand_typed_addresses_that_disagree_with_qubes(world):
    pillar = full_pillar()
    pillar["addresses"] = {"work": "10.137.0.9", "web": "10.137.0.99"}
    out = problems(pillar, world)
    assert out == ["qubes_firewall:addresses:web: 10.137.0.99, but Qubes gives web the address 10.137.0.11 "
                   "(leave addresses to dom0: see docs/addresses.md)"]


def test_hand_typed_ipv6_addresses_that_disagree_with_qubes(world):
    """addresses6 typed on Qubes: dom0's run fails where Qubes gives another IPv6 address, or none
    to a networked qube (the ipv6 feature not in effect); the right ones pass."""
    world.set_feature("sys-net", "ipv6", "1")
    world.set_feature("work", "ipv6", "")
    pillar = full_pillar()
    pillar["addresses6"] = {"sys-net": "fd09:24ef:4179::a89:5", "web": "fd09:24ef:4179::a89:99",
                            "work": "fd09:24ef:4179::a89:9"}
    assert problems(pillar, world) == [
        "qubes_firewall:addresses6:web: fd09:24ef:4179::a89:99, but Qubes gives web the IPv6 address "
        "fd09:24ef:4179::a89:b (leave addresses6 to dom0: see docs/addresses.md)",
        "qubes_firewall:addresses6:work: fd09:24ef:4179::a89:9, but work has no IPv6 in Qubes (its ipv6 "
        "feature is not in effect: see docs/addresses.md)"]
    pillar["addresses6"] = {"sys-net": "fd09:24ef:4179::a89:5", "web": "fd09:24ef:4179::a89:b"}
    assert problems(pillar, world) == []


def test_connection_route_hops():
    model = parse(full_pillar())
    conn = model_mod.Connection(0, "work", "web", "tcp", (80,))
    assert dom0.connection_route(model, conn) == (["sys-firewall-2", "sys-vpn", "sys-firewall"], "sys-firewall")
    conn = model_mod.Connection(0, "web", "sys-firewall-2", "tcp", (80,))
    assert dom0.connection_route(model, conn) == (["sys-firewall", "sys-vpn"], "sys-firewall")
    conn = model_mod.Connection(0, "sys-firewall", "web", "tcp", (80,))
    assert dom0.connection_route(model, conn) == ([], "sys-firewall")


# ---- addresses -----------------------------------------------------------------


def test_addresses_from_the_inventory(world):
    inv = inventory_of(world)
    assert dom0.addresses(inv, ["work", "web", "nope", "fedora-39-xfce"]) == {
        "web": "10.137.0.11", "work": "10.137.0.9"}
    everything = dom0.addresses(inv)
    assert "dom0" not in everything and everything["sys-net"] == "10.137.0.5"


def test_ipv6_addresses_from_the_inventory_only_where_ipv6_is_in_effect(world):
    assert dom0.addresses(inventory_of(world), family=6) == {}
    world.set_feature("sys-firewall", "ipv6", "1")
    world.set_feature("web", "ipv6", "")
    inv = inventory_of(world)
    got = dom0.addresses(inv, ["sys-net", "sys-firewall", "work", "web", "dom0"], family=6)
    assert got == {"sys-firewall": inv["sys-firewall"]["ip6"], "work": inv["work"]["ip6"]}
    assert got["work"] == "fd09:24ef:4179::a89:%x" % world.qube("work")["qid"]
    assert dom0.addresses(inv, ["work"], family="6") == {"work": got["work"]}
    with pytest.raises(ValueError, match="family must be 4 or 6"):
        dom0.addresses(inv, family=5)


def test_qubes_ip6_follows_the_ipv6_feature_along_the_netvm_chain(world):
    """core-admin (release4.2 and release4.3 alike): ip6 defaults to an address only where
    features.check_with_netvm('ipv6', False) is true: the qube's own value first ('' turns it
    off), else its netvm's, up the chain; a disposable's from its dispid; an explicitly set ip6
    wins over the feature.  The inventory reads that property as it is."""
    world.set_feature("sys-net", "ipv6", "1")
    world.set_feature("web", "ipv6", "")
    world.set("work", "netvm", "sys-net")
    inv = inventory_of(world)
    assert inv["sys-net"]["ip6"] == "fd09:24ef:4179::a89:5" and inv["work"]["ip6"] == "fd09:24ef:4179::a89:9"
    assert inv["sys-firewall"]["ip6"] == "fd09:24ef:4179::a89:6" and inv["web"]["ip6"] is None
    assert inv["fedora-39-xfce"]["ip6"] is None  # a template: no netvm, no network
    # a qube's own feature without its netvm's: Qubes gives it an address (its netvm none, so
    # check walks stop at the netvm: "sys-firewall has no IPv6")
    world.del_feature("sys-net", "ipv6")
    world.set_feature("build", "ipv6", "1")
    inv = inventory_of(world)
    assert inv["build"]["ip6"] == "fd09:24ef:4179::a89:a" and inv["sys-firewall"]["ip6"] is None
    world.set("personal", "ip6", "fd09:24ef:4179::a89:77")
    assert inventory_of(world)["personal"]["ip6"] == "fd09:24ef:4179::a89:77"
    with pytest.raises(fakequbes.QubesValueError):
        world.set("personal", "ip6", "10.137.0.12")


def _disposable_sys_firewall(inv):
    inv["sys-firewall"].update(klass="DispVM", template="default-dvm", disposable=True)


def test_disposable_holding_rules_needs_its_dispvm_template(world):
    """Qubes 4.2's default sys-firewall is a named disposable: without dispvm_template its rules die at reboot."""
    out = problems(full_pillar(), world, mutate=_disposable_sys_firewall)
    assert out == ["qubes_firewall:qubes:sys-firewall: sys-firewall is a disposable whose /rw comes from "
                   "default-dvm at each start, so the boot replay of its rules must be written there: "
                   "add `dispvm_template: default-dvm`"]
    pillar = full_pillar()
    pillar["qubes"]["sys-firewall"]["dispvm_template"] = "default-dvm"
    assert problems(pillar, world, mutate=_disposable_sys_firewall) == []


def test_dispvm_template_must_match_qubes(world):
    pillar = full_pillar()
    pillar["qubes"]["sys-firewall"]["dispvm_template"] = "other-dvm"
    assert problems(pillar, world, mutate=_disposable_sys_firewall) == [
        "qubes_firewall:qubes:sys-firewall:dispvm_template: sys-firewall is a disposable of default-dvm, "
        "not of other-dvm"]
    assert problems(pillar, world) == [
        "qubes_firewall:qubes:sys-firewall:dispvm_template: sys-firewall is not a disposable (its class "
        "is AppVM); remove dispvm_template"]


def test_masqueraded_connection_passes_every_list_on_the_way_up(world):
    """work -> web crosses sys-firewall-2, sys-vpn and sys-firewall: each enforces the list of the qube below it."""
    pillar = full_pillar()
    pillar["connections"] = [{"from": "work", "to": "web", "proto": "tcp", "ports": [8443]}]
    model = parse(pillar)
    assert dom0.firewall_checkpoints(model, model.connections[0]) == [
        ("work", "sys-firewall-2"), ("sys-firewall-2", "sys-vpn"), ("sys-vpn", "sys-firewall")]
    assert dom0.needed_firewalls(model) == ["sys-firewall-2", "sys-vpn", "work"]
    out = problems(pillar, world, firewalls={"sys-vpn": ["action=accept proto=udp", "action=drop"]})
    assert out == [
        "qubes_firewall:connections:0: the qvm-firewall list in Qubes (qvm-firewall sys-vpn) of sys-vpn drops "
        "tcp/8443 to web (10.137.0.11) in sys-firewall by rule 1 (action=drop), before the formula's forward "
        "rule can accept it; put an accept rule for it first"]
    assert problems(pillar, world, firewalls={"sys-vpn": ["action=accept"]}) == []


def test_traffic_to_a_netvm_itself_is_not_checked_there(world):
    pillar = full_pillar()
    pillar["connections"] = [{"from": "work", "to": "sys-vpn", "proto": "udp", "ports": [53]}]
    model = parse(pillar)
    assert dom0.firewall_checkpoints(model, model.connections[0]) == [("work", "sys-firewall-2")]
    pillar["connections"] = [{"from": "sys-firewall", "to": "web"}]
    model = parse(pillar)
    assert dom0.firewall_checkpoints(model, model.connections[0]) == []


def test_root_template_follows_disposables_and_stops_at_own_roots():
    inv = {
        "debian-13-xfce": {"klass": "TemplateVM", "template": None},
        "default-dvm": {"klass": "AppVM", "template": "debian-13-xfce"},
        "sys-firewall": {"klass": "DispVM", "template": "default-dvm"},
        "work": {"klass": "AppVM", "template": "debian-13-xfce"},
        "vault": {"klass": "StandaloneVM", "template": None},
    }
    assert dom0.root_template("sys-firewall", inv) == "debian-13-xfce"
    assert dom0.root_template("work", inv) == "debian-13-xfce"
    assert dom0.root_template("vault", inv) is None
    assert dom0.root_template("debian-13-xfce", inv) is None


# every firewall value the pillar accepts reaches Qubes as one argument per
# element, inside the strict grammar of its key
_text = st.text(st.characters(min_codepoint=9, max_codepoint=0x2FF), max_size=30)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(["dsthost", "dst4", "dst6", "comment", "dstports", "proto", "icmptype"]),
       value=st.one_of(_text, st.sampled_from(["fe80::%x y", "fe80::1%eth0", "1.2.3.4/24", "::1/128",
                                               "example.com", "a b", "1-65535", "icmp"])))
def test_no_pillar_value_escapes_its_rule_element(key, value):
    rule = {"action": "accept", key: value}
    if key in ("dstports",):
        rule["proto"] = "tcp"
    if key == "icmptype":
        rule["proto"] = "icmp"
    pillar = full_pillar()
    pillar["qubes"]["work"]["firewall"] = [rule]
    try:
        model = parse(pillar)
    except model_mod.PillarError as exc:
        assert all(e.startswith("qubes_firewall:") for e in exc.errors)
        return
    fields = dom0.rule_fields(model.qubes["work"].firewall[0])
    assert qubes_mod.rule_problem(fields) is None, fields
    for k, v in fields:
        assert "=" not in v and "\n" not in v and "%" not in v
        if k != "comment":
            assert " " not in v and "\t" not in v
