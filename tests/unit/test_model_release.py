"""
The model's lookup paths, Qubes release, custom-persist templates, missing
pillar, did-you-mean, strict grammars, expire; messages that name the pillar
path and show values as YAML would (never a Python repr).
"""

import collections
import copy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.modules import model

BASE = {
    "qubes": {
        "sys-net": {"netvm": None},
        "sys-firewall": {"netvm": "sys-net"},
        "web": {"netvm": "sys-firewall"},
    },
}


def pillar(**changes):
    out = copy.deepcopy(BASE)
    out.update(copy.deepcopy(changes))
    return out


def qubes(**extra):
    return pillar(qubes=dict(copy.deepcopy(BASE["qubes"]), **extra))


def errors(raw, pillar_keys=()):
    return model.errors(raw, pillar_keys)


# -- lookup ------------------------------------------------------------------


def test_lookup_defaults():
    lookup = model.parse(BASE).lookup
    assert (lookup.qubes_release, lookup.etc_qubes, lookup.systemd_dir, lookup.state_dir, lookup.rw_config,
            lookup.policy_file) == ("4.3", "/etc/qubes", "/etc/systemd/system", "/var/lib/qubes-firewall-formula",
                                    "/rw/config", "/etc/qubes/policy.d/30-user-networking.policy")


@pytest.mark.parametrize("given,release", [("4.2", "4.2"), ("4.3", "4.3"), (4.2, "4.2"), (4.3, "4.3")])
def test_release_is_a_string_also_from_a_yaml_float(given, release):
    assert model.parse(pillar(lookup={"qubes_release": given})).lookup.qubes_release == release


@pytest.mark.parametrize("bad", ["4.4", 4, "R4.3", True, "4.3 ", [], "4,3"])
def test_release_refused(bad):
    out = errors(pillar(lookup={"qubes_release": bad}))
    assert len(out) == 1 and out[0].startswith("qubes_firewall:lookup:qubes_release: must be '4.2' or '4.3'"), out


def test_lookup_paths_are_normalised_and_policy_file_follows_etc_qubes():
    lookup = model.parse(pillar(lookup={"etc_qubes": "/tmp/t/etc/qubes/", "systemd_dir": "/tmp/t/systemd",
                                        "state_dir": "/tmp/t/state"})).lookup
    assert lookup.etc_qubes == "/tmp/t/etc/qubes"
    assert lookup.policy_file == "/tmp/t/etc/qubes/policy.d/30-user-networking.policy"
    assert (lookup.systemd_dir, lookup.state_dir) == ("/tmp/t/systemd", "/tmp/t/state")
    given = model.parse(pillar(lookup={"etc_qubes": "/x", "policy_file": "/y/50-a.policy"})).lookup
    assert given.policy_file == "/y/50-a.policy"


@pytest.mark.parametrize("key", ["rw_config", "policy_file", "etc_qubes", "systemd_dir", "state_dir"])
@pytest.mark.parametrize("bad", ["relative/x", "/a/../b", "/a/./b", "/a//b", "/a b", "/a\nb", "/a/..", "/", "",
                                 "/a/\x00", "~/x", "/a/$(id)", 17, "/a/...", "/ä"])
def test_lookup_paths_refused(key, bad):
    out = errors(pillar(lookup={key: bad}))
    assert out and all(e.startswith("qubes_firewall:lookup:%s: " % key) for e in out), out


def test_lookup_path_message_exactly():
    assert errors(pillar(lookup={"state_dir": "/var/lib/../tmp"})) == [
        "qubes_firewall:lookup:state_dir: must be an absolute, normalised path (components of A-Z a-z 0-9 _ . -; "
        "no //, no . or .. components), got '/var/lib/../tmp'"]


# -- release-aware qube names ------------------------------------------------


DOTTED_PLACES = {
    "key": lambda n: qubes(**{n: {"netvm": "sys-firewall"}}),
    "netvm": lambda n: qubes(**{n: {"netvm": "sys-net"}, "web": {"netvm": n}}),
    "template": lambda n: qubes(web={"netvm": "sys-firewall", "custom_persist": True, "template": n}),
    "dispvm_template": lambda n: qubes(web={"netvm": "sys-firewall", "dispvm_template": n}),
    "addresses": lambda n: dict(qubes(**{n: {"netvm": "sys-net"}}), addresses={n: "10.137.0.9"}),
    "connections": lambda n: dict(qubes(**{n: {"netvm": "sys-firewall"}}),
                                  connections=[{"from": n, "to": "web"}]),
    "connect_tcp client": lambda n: dict(BASE, connect_tcp=[{"client": n, "server": "web", "port": 1}]),
    "connect_tcp server": lambda n: dict(BASE, connect_tcp=[{"client": "web", "server": n, "port": 1}]),
    "port_forwards": lambda n: dict(qubes(**{n: {"netvm": "sys-firewall"}}),
                                    port_forwards=[{"name": "f", "qube": n, "port": 1}]),
}


@pytest.mark.parametrize("place", sorted(DOTTED_PLACES))
def test_dotted_names_only_on_4_3(place):
    for name in ("my.vm", "a..b", "a.", "vault.work-2"):
        raw = DOTTED_PLACES[place](name)
        assert errors(raw) == [], (place, name)
        raw["lookup"] = {"qubes_release": "4.2"}
        out = errors(raw)
        assert out, (place, name)
        for error in out:
            assert "'%s'" % name in error and "qubes_firewall:lookup:qubes_release is '4.2'" in error, error
            assert error.startswith("qubes_firewall:"), error


def test_dotted_name_on_4_2_message_exactly():
    raw = pillar(lookup={"qubes_release": 4.2}, qubes={"sys-net": {"netvm": None}, "my.vm": {"netvm": "sys-net"}})
    assert errors(raw) == [
        "qubes_firewall:qubes:my.vm: 'my.vm': Qubes 4.2 allows no dot in qube names (4.3 does), and "
        "qubes_firewall:lookup:qubes_release is '4.2'; rename the qube, or set lookup:qubes_release: '4.3' "
        "on Qubes 4.3"]


@pytest.mark.parametrize("release", ["4.2", "4.3"])
@pytest.mark.parametrize("bad", [".vm", "-vm", "_vm", "1vm", "a" * 32, "Domain-0", "none", "default", "x-dm",
                                 "a b", "a/b", "a\n", "wéb", "a+b", "a:b", "dom0"])
def test_names_no_release_accepts(release, bad):
    out = errors(dict(qubes(**{bad: {"netvm": "sys-net"}}), lookup={"qubes_release": release}))
    assert out and out[0].startswith("qubes_firewall:qubes:"), out


def test_longest_names():
    assert errors(qubes(**{"a" * 31: {"netvm": "sys-net"}})) == []
    assert errors(qubes(**{"a." * 15 + "b": {"netvm": "sys-net"}})) == []


# -- custom-persist ----------------------------------------------------------


def test_custom_persist_needs_a_template_and_says_why():
    out = errors(qubes(**{"sys-firewall": {"netvm": "sys-net", "custom_persist": True}}))
    assert out == [
        "qubes_firewall:qubes:sys-firewall:template: required when custom_persist is true: with custom-persist "
        "Qubes runs no /rw/config scripts (rc.local, qubes-firewall-user-script), so the rules are replayed "
        "from the template's /etc; name the template sys-firewall boots from"]


def test_template_children():
    mdl = model.parse(qubes(**{
        "sys-firewall": {"netvm": "sys-net", "custom_persist": True, "template": "debian-13"},
        "sys-net": {"netvm": None, "custom_persist": True, "template": "debian-13"},
        "web": {"netvm": "sys-firewall", "template": "debian-13"},  # no custom-persist: its own /rw
        "work": {"netvm": "sys-firewall", "custom_persist": True, "template": "fedora-42"},
    }))
    assert mdl.template_children("debian-13") == ["sys-firewall", "sys-net"]
    assert mdl.template_children("fedora-42") == ["work"]
    assert mdl.template_children("web") == []
    assert mdl.qubes["web"].template == "debian-13" and mdl.qubes["web"].custom_persist is False
    assert mdl.qubes["sys-firewall"].custom_persist is True


@pytest.mark.parametrize("spec,message", [
    ({"custom_persist": "yes", "template": "t"}, "qubes_firewall:qubes:web:custom_persist: must be true or false, "
                                                 "got 'yes'"),
    ({"custom_persist": 1, "template": "t"}, "qubes_firewall:qubes:web:custom_persist: must be true or false, got 1"),
    ({"template": "web"}, "qubes_firewall:qubes:web:template: a qube cannot be its own template"),
    ({"template": "t p"}, "qubes_firewall:qubes:web:template: not a qube name Qubes 4.3 accepts"),
])
def test_custom_persist_fields(spec, message):
    out = errors(qubes(web=dict({"netvm": "sys-firewall"}, **spec)))
    assert len(out) == 1 and out[0].startswith(message), out


# -- missing and empty pillar ------------------------------------------------

MISSING = ("qubes_firewall: no qubes_firewall pillar for this minion: nothing to apply (is the pillar top file "
           "enabled? `qubesctl top.enable qubes_firewall pillar=True`)")


def test_missing_pillar():
    assert errors(None) == [MISSING]
    assert errors(None, ["users", "qubes_firewall_addresses_x"]) == [MISSING]
    with pytest.raises(model.PillarError):
        model.parse(None)


@pytest.mark.parametrize("near", ["qubes-firewall", "qubes_firewal", "Qubes_Firewall", "QUBES-FIREWALL",
                                  "qubesfirewall", "qubes_firewalls", "qubes.firewall"])
def test_missing_pillar_names_a_near_miss(near):
    assert errors(None, ["salt", near, "other"]) == [MISSING + "; the pillar has '%s': did you mean "
                                                                "qubes_firewall?" % near]


def test_null_pillar_under_the_right_key():
    assert errors(None, ["qubes_firewall"]) == ["qubes_firewall: is empty: give at least qubes_firewall:qubes "
                                                "(see pillar.example/)"]


@pytest.mark.parametrize("value,shown", [([], "[]"), (False, "false"), ("", "''"), (0, "0"), ("web", "'web'"),
                                         ([{"web": None}], "[{web: null}]")])
def test_qubes_must_be_a_mapping(value, shown):
    assert errors({"qubes": value}) == [
        "qubes_firewall:qubes: must be a mapping of qube name to its settings, got %s" % shown]


def test_qubes_missing_or_empty():
    assert errors({}) == ["qubes_firewall:qubes: required: name the qubes the formula manages, each with its "
                          "netvm (see pillar.example/); to remove what the formula made, apply "
                          "qubes_firewall.clean"]
    assert errors({"qubes": None}) == errors({})
    assert errors({"qubes": {}}) == ["qubes_firewall:qubes: is empty: name the qubes the formula manages, each "
                                     "with its netvm (see pillar.example/); to remove what the formula made, "
                                     "apply qubes_firewall.clean"]
    assert errors({"lookup": {}}) == errors({})


def test_a_connect_tcp_only_pillar_needs_no_qubes():
    # qubes.ConnectTCP needs no networking (pillar.example/connect-tcp.sls)
    entries = [{"client": "untrusted", "server": "mytcp-service", "port": 444}]
    assert errors({"connect_tcp": entries}) == []
    assert errors({"qubes": {}, "connect_tcp": entries}) == []
    assert errors({"connect_tcp": []}) == []  # the last entry removed: its policy lines go
    assert errors({"qubes": [], "connect_tcp": entries}) == [
        "qubes_firewall:qubes: must be a mapping of qube name to its settings, got []"]


@pytest.mark.parametrize("top", [[], "x", 0, True])
def test_the_pillar_itself_must_be_a_mapping(top):
    out = errors(top)
    assert len(out) == 1 and out[0].startswith("qubes_firewall: must be a mapping, got "), out


# -- did you mean ------------------------------------------------------------


@pytest.mark.parametrize("raw,expected", [
    (dict(BASE, qube={}), "qubes_firewall:qube: unknown key; did you mean qubes? (allowed keys: addresses, addresses6, "
                          "connect_tcp, connections, error, lookup, port_forwards, qubes)"),
    (dict(BASE, port_forward=[]), "qubes_firewall:port_forward: unknown key; did you mean port_forwards?"),
    (dict(BASE, lookup={"rw-config": "/rw"}), "qubes_firewall:lookup:rw-config: unknown key; did you mean rw_config?"),
    (dict(BASE, lookup={"release": "4.2"}), "qubes_firewall:lookup:release: unknown key; did you mean qubes_release?"),
    (qubes(web={"netvm": "sys-firewall", "provides-network": True}),
     "qubes_firewall:qubes:web:provides-network: unknown key; did you mean provides_network?"),
    (qubes(web={"netvm": "sys-firewall", "Netvm": "x"}), "qubes_firewall:qubes:web:Netvm: unknown key; did you "
                                                         "mean netvm?"),
    (qubes(web={"netvm": "sys-firewall", "firewall": [{"action": "accept", "dst_host": "a.b"}]}),
     "qubes_firewall:qubes:web:firewall:0:dst_host: unknown key; did you mean dsthost?"),
    (dict(BASE, connections=[{"from": "web", "too": "sys-net"}]),
     "qubes_firewall:connections:0:too: unknown key; did you mean to?"),
    (dict(BASE, connect_tcp=[{"client": "web", "server": "x", "port": 1, "localport": 2}]),
     "qubes_firewall:connect_tcp:0:localport: unknown key; did you mean local_port?"),
    (dict(BASE, port_forwards=[{"name": "a", "qube": "web", "port": 1, "interface": ["ens6"]}]),
     "qubes_firewall:port_forwards:0:interface: unknown key; did you mean interfaces?"),
    (qubes(web={"netvm": "sys-firewal"}), "qubes_firewall:qubes:web:netvm: unknown qube 'sys-firewal'; did you mean "
                                          "sys-firewall? (every netvm must be listed under qubes_firewall:qubes)"),
    (dict(BASE, port_forwards=[{"name": "a", "qube": "web", "port": 1, "proto": "TCP"}]),
     "qubes_firewall:port_forwards:0:proto: must be one of tcp|udp, got 'TCP'; did you mean tcp?"),
])
def test_did_you_mean(raw, expected):
    out = errors(raw)
    assert any(e.startswith(expected) for e in out), out


@pytest.mark.parametrize("value", ["None", "NONE", "null", "Null"])
def test_netvm_none_as_a_string_hints_at_none(value):
    assert errors(qubes(web={"netvm": value})) == [
        "qubes_firewall:qubes:web:netvm: '%s' is not a qube name; for no netvm write none, or null" % value]


def test_netvm_null_and_none_are_fine():
    for value in (None, "none", ""):
        assert model.parse(qubes(web={"netvm": value})).qubes["web"].netvm is None


# -- strict grammars ---------------------------------------------------------


def rule(**fields):
    return qubes(web={"netvm": "sys-firewall", "firewall": [dict({"action": "accept"}, **fields)]})


@pytest.mark.parametrize("key,value", [
    ("dst6", "fe80::%x y"), ("dst6", "fe80::1%eth0"), ("dsthost", "fe80::1%eth0"), ("dst6", "fe80::1/129"),
    ("dst6", "fd00::1/8"), ("dst6", "10.0.0.0/8"), ("dst6", " fd00::/8"), ("dst4", "10.0.0.1 "),
    ("dst4", "10.0.0.01"), ("dst4", "10.0.0.0/8/8"), ("dst4", "10.0.0.1/33"), ("dst4", "example.com"),
    ("dst4", "fd00::/8"), ("dsthost", "exa mple.com"), ("dsthost", "-example.com"), ("dsthost", "a..b"),
    ("dsthost", "a_b.com"), ("dsthost", "Example.com"), ("dsthost", "a" * 64 + ".com"), ("dsthost", "1.2.3"),
    ("dsthost", "10.0.0.1/+8"), ("dsthost", "ex;ample.com"), ("dsthost", "x\ny"), ("dsthost", ""),
    ("dstports", True), ("dstports", "1-2-3"), ("dstports", "443 "), ("dstports", 70000), ("dstports", "9-8"),
    ("icmptype", True), ("icmptype", 256), ("icmptype", "8 "), ("comment", " x"), ("comment", "x "),
    ("comment", "a\nb"), ("comment", "a=b"), ("comment", "é"), ("comment", "x" * 201), ("comment", 5),
    ("specialtarget", "DNS"), ("action", "allow"), ("proto", "sctp"),
])
def test_firewall_fields_refused(key, value):
    fields = {key: value}
    if key == "dstports":
        fields["proto"] = "tcp"
    if key == "icmptype":
        fields["proto"] = "icmp"
    out = errors(rule(**fields))
    path = "qubes_firewall:qubes:web:firewall:0:%s: " % key
    assert out and any(e.startswith(path) for e in out), out


@pytest.mark.parametrize("key,value,stored", [
    ("dst6", "FD00::/8", "fd00::/8"), ("dst6", "fd00::1", "fd00::1/128"), ("dsthost", "fd00:0::/16", "fd00::/16"),
    ("dst4", "10.0.0.1", "10.0.0.1/32"), ("dsthost", "192.168.0.0/16", "192.168.0.0/16"),
    ("dsthost", "example.com.", "example.com."), ("dsthost", "xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_firewall_addresses_accepted(key, value, stored):
    assert model.parse(rule(**{key: value})).qubes["web"].firewall[0].dsthost == stored


def test_ports_are_integers_not_bools():
    out = errors(dict(BASE, connections=[{"from": "web", "to": "sys-firewall", "ports": [True]}]))
    assert out == ["qubes_firewall:connections:0:ports:0: port must be an integer 1-65535, got true"]


@pytest.mark.parametrize("value", ["all", "default", "lo", "vif3.0", ".", "..", "...", "-x", "en s6", "a/b", "a:b",
                                   "ens6\n", "a" * 16])
def test_interfaces_refused(value):
    out = errors(dict(BASE, port_forwards=[{"name": "a", "qube": "web", "port": 1, "interfaces": [value]}]))
    assert out and out[0].startswith("qubes_firewall:port_forwards:0:interfaces:0: "), out


@pytest.mark.parametrize("value", ["@tag:", "@tag:a b", "@tag:a\n", "@anyvm ", "@dispvm", "@default", "@adminvm"])
def test_connect_tcp_client_tokens_refused(value):
    out = errors(dict(BASE, connect_tcp=[{"client": value, "server": "web", "port": 1}]))
    assert out and out[0].startswith("qubes_firewall:connect_tcp:0:client: "), out


# -- expire ------------------------------------------------------------------


@pytest.mark.parametrize("expire", [1700000000, "+300", None, 0])
def test_expire_is_refused_with_the_reason(expire):
    assert errors(rule(expire=expire)) == [
        "qubes_firewall:qubes:web:firewall:0:expire: not supported: Qubes drops a rule once it expires, so a list "
        "with expire never matches the pillar again and every run would rewrite it; add a temporary rule by hand "
        "(qvm-firewall web add ... expire=+SECONDS; the next run of the formula puts the list back as the pillar "
        "says)"]


# -- no Python reprs -----------------------------------------------------------


@pytest.mark.parametrize("value,shown", [
    (True, "true"), (None, "null"), (1.5, "1.5"), ("web", "'web'"), ("it's", "'it''s'"), ("a\nb", '"a\\nb"'),
    ("a\x00", '"a\\x00"'), (collections.OrderedDict([("a", 1), ("b", [True, None])]), "{a: 1, b: [true, null]}"),
    ({"a b": "c: d"}, '{a b: "c: d"}'), (["x", "true", ""], '[x, "true", ""]'), (b"ab", "'ab'"),
])
def test_values_are_shown_as_yaml(value, shown):
    assert model._show(value) == shown


def test_show_is_public():
    assert model.show(collections.OrderedDict([("a", True)])) == "{a: true}"


def test_long_values_are_cut():
    assert len(model._show("x" * 500)) < 90
    assert len(model._show(list(range(500)))) < 90


JUNK_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                        st.text(max_size=12), st.binary(max_size=4))
JUNK = st.recursive(
    JUNK_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 3), st.booleans()), inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3).map(collections.OrderedDict),
    ),
    max_leaves=8,
)

JUNK_PLACES = [
    [], ["qubes"], ["qubes", "web"], ["qubes", "web", "netvm"], ["qubes", "web", "firewall"],
    ["qubes", "web", "firewall", 0], ["qubes", "web", "firewall", 0, "dsthost"], ["qubes", "web", "template"],
    ["qubes", "web", "custom_persist"], ["lookup"], ["lookup", "qubes_release"], ["lookup", "state_dir"],
    ["addresses"], ["addresses", "web"], ["connections"], ["connections", 0], ["connections", 0, "ports"],
    ["connect_tcp", 0], ["connect_tcp", 0, "client"], ["port_forwards"], ["port_forwards", 0, "sources"],
    ["port_forwards", 0, "interfaces"], ["port_forwards", 0],
]

FULL = dict(
    qubes(web={"netvm": "sys-firewall", "firewall": [{"action": "accept"}]}),
    lookup={"qubes_release": "4.3"}, addresses={"web": "10.137.0.9"},
    connections=[{"from": "web", "to": "sys-firewall", "ports": [22]}],
    connect_tcp=[{"client": "web", "server": "x", "port": 1}],
    port_forwards=[{"name": "a", "qube": "web", "port": 1, "sources": [], "interfaces": []}],
)


def _strings(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(JUNK_PLACES), junk=JUNK)
def test_junk_anywhere_gives_path_named_errors_without_python_reprs(place, junk):
    raw = copy.deepcopy(FULL)
    if place:
        node = raw
        for key in place[:-1]:
            node = node[key]
        node[place[-1]] = junk
    else:
        raw = junk
    out = errors(raw, ["qubes_firewal"])
    typed = "".join(_strings(junk))
    for error in out:
        assert error.startswith("qubes_firewall"), error
        for text in sorted(_strings(junk), key=len, reverse=True):  # the user's own text, shown or in a path
            error = error.replace(model._show(text), "").replace(text, "") if text else error
        for repr_mark in (r"OrderedDict", r"\{'", r"\['", r"\[\(", r"(?<!\w)b'", r"<\w+ object"):
            if not re.search(repr_mark, typed):
                assert not re.search(repr_mark, error), (repr_mark, error)
        for word in ("True", "False", "None"):
            if word not in typed:
                assert not re.search(r"\b%s\b" % word, error.replace("pillar=True", "")), (word, error)
