"""The pillar model: the README's pillar reference parsed strictly, every error path-named."""

import copy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.modules import model, plan

README_EXAMPLE = {
    "lookup": {"rw_config": "/rw/config", "policy_file": "/etc/qubes/policy.d/30-user-networking.policy"},
    "addresses": {"sys-net": "10.137.0.5"},
    "qubes": {
        "sys-net": {"netvm": "none", "provides_network": True},
        "sys-firewall": {"netvm": "sys-net", "provides_network": True},
        "sys-vpn": {"netvm": "sys-firewall", "provides_network": True, "service": True},
        "sys-firewall-2": {"netvm": "sys-vpn", "provides_network": True},
        "work": {"netvm": "sys-firewall-2", "firewall": [
            {"action": "accept", "proto": "tcp", "dsthost": "example.com", "dstports": 443},
            {"action": "accept", "specialtarget": "dns"},
            {"action": "drop"},
        ]},
        "build": {"netvm": "sys-firewall-2"},
        "web": {"netvm": "sys-firewall"},
    },
    "connections": [{"from": "work", "to": "build", "proto": "tcp", "ports": [22]}],
    "connect_tcp": [{"client": "untrusted", "server": "mytcp-service", "port": 444, "local_port": 10444,
                     "persistent": True}],
    "port_forwards": [{"name": "https", "qube": "web", "proto": "tcp", "port": 443, "external_port": 443,
                       "interfaces": ["ens6"], "sources": ["192.168.1.0/24"]}],
}


def errors_of(pillar):
    with pytest.raises(model.PillarError) as err:
        model.parse(pillar)
    return err.value.errors


def test_readme_example_parses():
    m = model.parse(README_EXAMPLE)
    assert m.chain("work") == ["work", "sys-firewall-2", "sys-vpn", "sys-firewall", "sys-net"]
    assert m.qubes["sys-net"].netvm is None
    assert m.qubes["work"].firewall[0].dstports == (443, 443)
    assert m.connect_tcp[0].local_port == 10444
    assert m.port_forwards[0].sources == ("192.168.1.0/24",)
    assert m.lookup.rw_config == "/rw/config"


def test_provides_network_defaults_to_true_for_a_netvm_only():
    pillar = {"qubes": {"net": {"netvm": None}, "app": {"netvm": "net"}}}
    m = model.parse(pillar)
    assert m.qubes["net"].provides_network is True and m.qubes["net"].provides_network_explicit is None
    assert m.qubes["app"].provides_network is False


def with_change(path, value):
    pillar = copy.deepcopy(README_EXAMPLE)
    node = pillar
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return pillar


BAD = [
    (["qubes", "web", "netvm"], "sys-nope", "qubes_firewall:qubes:web:netvm: unknown qube 'sys-nope'"),
    (["qubes", "web", "netvm"], KeyError, "qubes_firewall:qubes:web:netvm: required"),
    (["qubes", "sys-net", "netvm"], "web", "qubes_firewall:qubes:sys-net:netvm: netvm cycle"),
    (["qubes", "sys-firewall", "provides_network"], False,
     "qubes_firewall:qubes:sys-vpn:netvm: 'sys-firewall' does not provide network"),
    (["qubes", "web", "provides_network"], "yes", "qubes_firewall:qubes:web:provides_network: must be true or false"),
    (["qubes", "work", "firewall", 0, "dstports"], 70000, "qubes_firewall:qubes:work:firewall:0:dstports:"),
    (["qubes", "work", "firewall", 1, "proto"], "sctp", "qubes_firewall:qubes:work:firewall:1:proto:"),
    (["qubes", "work", "firewall", 2, "frobnicate"], 1, "qubes_firewall:qubes:work:firewall:2:frobnicate: unknown key"),
    (["addresses", "sys-net"], "10.137.0.256", "qubes_firewall:addresses:sys-net: not an IPv4 address"),
    (["connections", 0, "ports", 0], 0, "qubes_firewall:connections:0:ports:0: port must be 1-65535"),
    (["connections", 0, "to"], "ghost", "qubes_firewall:connections:0:to: unknown qube 'ghost'"),
    (["port_forwards", 0, "interfaces", 0], "en s6", "qubes_firewall:port_forwards:0:interfaces:0: not a valid Linux"),
    (["port_forwards", 0, "interfaces", 0], "a" * 16, "qubes_firewall:port_forwards:0:interfaces:0: not a valid Linux"),
    (["port_forwards", 0, "interfaces", 0], "vif3.0", "qubes_firewall:port_forwards:0:interfaces:0: 'vif3.0' is not"),
    (["port_forwards", 0, "sources", 0], "192.168.1.5/24", "qubes_firewall:port_forwards:0:sources:0: '192.168.1.5/24' has host bits set (write 192.168.1.0/24)"),
    (["port_forwards", 0, "sources", 0], "10.0.0.0/33", "qubes_firewall:port_forwards:0:sources:0:"),
    (["port_forwards", 0, "port"], 65536, "qubes_firewall:port_forwards:0:port: port must be 1-65535"),
    (["port_forwards", 0, "port"], True, "qubes_firewall:port_forwards:0:port: port must be an integer"),
    (["port_forwards", 0, "proto"], "icmp", "qubes_firewall:port_forwards:0:proto: must be one of tcp|udp"),
    (["port_forwards", 0, "name"], "web;reboot", "qubes_firewall:port_forwards:0:name: must be"),
    (["port_forwards", 0, "qube"], "-web", "qubes_firewall:port_forwards:0:qube: not a qube name"),
    (["lookup", "rw_config"], "/rw/$(reboot)", "qubes_firewall:lookup:rw_config: must be an absolute, normalised path"),
    (["lookup", "policy_file"], "/etc/qubes/policy.d/30-User.policy", "qubes_firewall:lookup:policy_file: qrexec"),
    (["connect_tcp", 0, "port"], "444; rm", "qubes_firewall:connect_tcp:0:port: port must be"),
    (["connect_tcp", 0, "client"], "@anyvm\nx", "qubes_firewall:connect_tcp:0:client: a client is a qube name, @anyvm or @tag:TAG"),
    (["frobnicate"], 1, "qubes_firewall:frobnicate: unknown key"),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[":".join(map(str, b[0])) + "=" + repr(b[1])[:12] for b in BAD])
def test_bad_values_are_rejected_with_their_path(path, value, expected):
    errors = errors_of(with_change(path, value))
    assert any(e.startswith(expected) for e in errors), errors


def test_qube_names_qubes_would_refuse():
    for bad in ["1abc", "a" * 32, "web server", "default", "none", "foo-dm", "wéb", ""]:
        pillar = {"qubes": {bad: {"netvm": None}}}
        errors = errors_of(pillar)
        key = bad or "''"
        assert errors and errors[0].startswith("qubes_firewall:qubes:%s: " % key), (bad, errors)


def test_duplicate_forward_names_and_external_ports():
    pillar = copy.deepcopy(README_EXAMPLE)
    pillar["port_forwards"].append(dict(pillar["port_forwards"][0]))
    errors = errors_of(pillar)
    assert errors == ["qubes_firewall:port_forwards:1:name: duplicate port forward name 'https' "
                      "(also qubes_firewall:port_forwards:0)"]
    pillar["port_forwards"][1]["name"] = "https2"
    errors = errors_of(pillar)
    assert errors == ["qubes_firewall:port_forwards:1:external_port: tcp/443 on uplink sys-net is already "
                      "forwarded by 'https'"]


def test_all_errors_are_reported_at_once():
    pillar = with_change(["port_forwards", 0, "port"], 0)
    pillar["connections"][0]["from"] = "nobody"
    errors = errors_of(pillar)
    assert len(errors) == 2


# -- hypothesis: any string in any field is rejected with a path, or renders safely

STRING_FIELDS = [
    ["qubes", "web", "netvm"],
    ["addresses", "web"],
    ["connections", 0, "proto"],
    ["connections", 0, "ports", 0],
    ["port_forwards", 0, "name"],
    ["port_forwards", 0, "qube"],
    ["port_forwards", 0, "proto"],
    ["port_forwards", 0, "port"],
    ["port_forwards", 0, "external_port"],
    ["port_forwards", 0, "interfaces", 0],
    ["port_forwards", 0, "sources", 0],
    ["lookup", "rw_config"],
    ["lookup", "policy_file"],
    ["qubes", "work", "firewall", 0, "dsthost"],
    ["qubes", "work", "firewall", 0, "comment"],
]

hostile = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='abc019./-_ ;$`"\'\\\n{}*:@', max_size=20),
    st.sampled_from(["ens6", "sys-net", "10.137.0.12", "192.168.0.0/16", "443", "tcp", "udp", "a" * 15,
                     '"; flush ruleset; "', "$(reboot)", "`id`", "ens6\n", "web\x00", "/rw/config/../x"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(STRING_FIELDS), value=hostile)
def test_hostile_strings_are_rejected_with_a_path_or_rendered_safely(field, value):
    pillar = README_EXAMPLE
    pillar = with_change(field, value)
    pillar["addresses"] = dict(pillar["addresses"], **{
        "sys-firewall": "10.137.0.6", "web": pillar["addresses"].get("web", "10.137.0.11"),
        "sys-firewall-2": "10.137.0.8", "work": "10.137.0.9", "build": "10.137.0.10", "sys-vpn": "10.137.0.7"})
    try:
        m = model.parse(pillar)
    except model.PillarError as exc:
        assert exc.errors and all(e.startswith("qubes_firewall:") for e in exc.errors)
        return
    for qube in m.qubes:
        try:
            p = plan.plan_qube(m, qube)
        except plan.PlanError as exc:
            assert all(e.startswith("qubes_firewall:") for e in exc.errors)
            continue
        for chain in p.chains:
            for rule in chain.rules:
                # inside nft: no quote, newline, semicolon or shell-active character can break out
                assert re.fullmatch(r'[A-Za-z0-9 _.,:/{}!=*"#>@-]+', rule.text), rule.text
                assert rule.text.count('"') % 2 == 0
        block = plan.persist_block(p)
        assert "`" not in block and "$(" not in block.replace("$(qubesdb-read /name 2>/dev/null)", "")


@pytest.mark.parametrize("key, value", [("dst6", "::/0"), ("dsthost", "::/0"), ("dst6", "0::0/0")])
def test_an_ipv6_destination_of_any_address_is_refused(key, value):
    """Qubes takes dst6=::/0 as no destination: the rule would silently match any (QubesOS issue 9323)."""
    pillar = with_change(["qubes", "work", "firewall", 0], {"action": "accept", key: value})
    errors = errors_of(pillar)
    assert len(errors) == 1 and errors[0].startswith(
        "qubes_firewall:qubes:work:firewall:0:%s: " % key), errors
    assert "any destination" in errors[0] and "9323" in errors[0] and value in errors[0]
    # a narrower network, and the same rule without a destination, are fine
    assert model.errors(with_change(["qubes", "work", "firewall", 0], {"action": "accept", key: "2000::/3"})) == []
    assert model.errors(with_change(["qubes", "work", "firewall", 0], {"action": "accept"})) == []


def test_addresses6_are_optional_and_canonical():
    """A pillar without addresses6 is IPv4-only, as every pillar before it; entries are one IPv6
    address per qube, written canonically."""
    assert model.parse(README_EXAMPLE).addresses6 == {}
    pillar = copy.deepcopy(README_EXAMPLE)
    pillar["addresses6"] = {"sys-net": "fd09:24ef:4179:0000:0000:0000:0a89:0005", "web": "FD09:24EF:4179::A89:B"}
    assert model.parse(pillar).addresses6 == {"sys-net": "fd09:24ef:4179::a89:5", "web": "fd09:24ef:4179::a89:b"}
    assert model.parse(pillar).addresses == model.parse(README_EXAMPLE).addresses


@pytest.mark.parametrize("value", ["10.137.0.5", "fd00::/64", "fe80::1%eth0", "::", "::1", "ff02::1",
                                   "fd09::a89:5; flush ruleset", 5, None, ["fd00::1"], "g::1"])
def test_addresses6_entries_that_are_not_a_qube_address_name_their_path(value):
    pillar = copy.deepcopy(README_EXAMPLE)
    pillar["addresses6"] = {"web": value}
    assert errors_of(pillar) == ["qubes_firewall:addresses6:web: not a qube's IPv6 address "
                                 "(like fd09:24ef:4179::a89:5), got %s" % model.show(value)]
    pillar["addresses6"] = {"Bad Name": "fd00::1"}
    assert [e.split(": ")[0] for e in errors_of(pillar)] == ["qubes_firewall:addresses6:Bad Name"]
