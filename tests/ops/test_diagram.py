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
