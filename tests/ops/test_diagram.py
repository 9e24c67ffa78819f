"""diagram: golden Mermaid and DOT text for every pillar.example file (QF_UPDATE_GOLDEN=1 rewrites them)."""

import os
import shutil
import subprocess

import pytest

from tests.ops.helpers import GOLDEN, REPO_EXAMPLES, diagram, example_model

EXAMPLES = sorted(p.stem for p in REPO_EXAMPLES.glob("*.sls"))


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("fmt,ext", [("mermaid", "mmd"), ("dot", "dot")])
def test_golden(name, fmt, ext):
    text = diagram.render(example_model(name), fmt)
    golden = GOLDEN / ("%s.%s" % (name, ext))
    if os.environ.get("QF_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


def test_full_example_draws_roles_forward_path_and_connection():
    graph = diagram.graph(example_model("full"))
    roles = {name: role for name, role, _ in graph["nodes"]}
    assert roles == {"(outside)": "outside", "sys-net": "uplink", "sys-firewall": "firewall",
                     "sys-vpn": "service", "sys-firewall-2": "firewall", "work": "client",
                     "build": "client", "web": "client"}
    forward = [(a, b) for kind, a, b, _ in graph["edges"] if kind == "forward"]
    assert forward == [("(outside)", "sys-net"), ("sys-net", "sys-firewall"), ("sys-firewall", "web")]
    assert ("connection", "work", "build", "tcp/22") in graph["edges"]


def test_connect_tcp_bindings_are_edges():
    edges = diagram.graph(example_model("connect-tcp"))["edges"]
    tcp = [e for e in edges if e[0] == "connect_tcp"]
    assert ("connect_tcp", "untrusted", "mytcp-service", "ConnectTCP 444 (local 10444)") in tcp


def test_unknown_format():
    with pytest.raises(ValueError):
        diagram.render(example_model("full"), "svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_dot_output_is_valid_graphviz():
    for name in EXAMPLES:
        subprocess.run(["dot", "-Tsvg"], input=diagram.dot(example_model(name)), text=True,
                       capture_output=True, check=True)


def test_a_pillar_with_ipv6_names_the_families():
    """IPv6 everywhere but build: links, the https forward and work -> build say which
    families they carry; each qube shows its IPv6 address; a qvm-firewall list its dst6 rules."""
    from tests.ops.helpers import example, model

    pillar = example("full")
    six = {q: "fd09:24ef:4179::a89:%s" % ip.split(".")[-1] for q, ip in pillar["addresses"].items() if q != "build"}
    pillar["addresses6"] = six
    pillar["qubes"]["work"]["firewall"] = [{"action": "accept", "dsthost": "2001:db8::/32"}, {"action": "drop"}]
    mdl = model.parse(pillar)
    graph = diagram.graph(mdl)
    assert graph["ipv6"] is True
    edges = dict(((kind, a, b), (label, fam)) for (kind, a, b, label), fam in zip(graph["edges"], graph["families"]))
    assert edges[("uplink", "(outside)", "sys-net")] == ("IPv4, IPv6", ("ipv4", "ipv6"))
    assert edges[("netvm", "sys-firewall-2", "work")] == ("IPv4, IPv6", ("ipv4", "ipv6"))
    assert edges[("netvm", "sys-firewall-2", "build")] == ("IPv4 only", ("ipv4",))
    assert edges[("forward", "sys-firewall", "web")] == ("https (IPv4, IPv6)", ("ipv4", "ipv6"))
    assert edges[("connection", "work", "build")] == ("tcp/22 (IPv4 only)", ("ipv4",))
    assert graph["extra"]["work"] == [six["work"], "qvm-firewall: 2 rules, 1 dst6"]
    assert "build" not in graph["extra"]
    text = diagram.mermaid(mdl)
    assert 'n_work["work<br/><i>client</i><br/>10.137.0.9<br/>%s<br/>qvm-firewall: 2 rules, 1 dst6"]' % six["work"] in text
    assert 'n_work ==>|"tcp/22 (IPv4 only)"| n_build' in text
    assert "%s\\nqvm-firewall: 2 rules, 1 dst6" % six["work"] in diagram.dot(mdl)


def test_a_dst6_rule_alone_makes_the_diagram_speak_of_families():
    """No qube has IPv6, but a qvm-firewall list names an IPv6 network: everything is IPv4 only."""
    from tests.ops.helpers import example, model

    pillar = example("full")
    pillar["qubes"]["web"]["firewall"] = [{"action": "accept", "dst6": "2001:db8::1"}]
    graph = diagram.graph(model.parse(pillar))
    assert graph["ipv6"] and graph["extra"] == {"web": ["qvm-firewall: 1 rule, 1 dst6"]}
    assert {label for kind, _, _, label in graph["edges"] if kind in ("netvm", "uplink")} == {"IPv4 only"}
    # and an IPv4-only pillar is drawn as before (the golden files above)
    assert diagram.graph(example_model("full"))["ipv6"] is False
