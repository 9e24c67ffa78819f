"""pillar.example/full.sls in the lab: its servers and the connectivity it promises."""

import yaml

from tests.e2e.formula_lab import Flow
from tests.modules import REPO


def full_pillar():
    return yaml.safe_load((REPO / "pillar.example" / "full.sls").read_text())


SERVERS = [("web", 443), ("web", 8443), ("build", 22), ("build", 80), ("work", 22), ("sys-net", 443)]

FLOWS = [
    Flow("port forward https", "lan", "192.168.1.10", 443, "web:443"),
    Flow("port forward, second LAN address", "lan", "192.168.1.10", 443, "web:443", from_ip="192.168.1.51"),
    Flow("port forward, other interface", "wan", "172.30.0.10", 443, None),
    Flow("other port of web stays closed", "lan", "192.168.1.10", 8443, None),
    Flow("web not reachable directly", "lan", "10.137.0.11", 443, None),
    Flow("work -> build ssh", "work", "build", 22, "build:22"),
    Flow("work -> build other port", "work", "build", 80, None),
    Flow("build -> work (one way only)", "build", "work", 22, None),
    Flow("web -> build", "web", "build", 22, None),
]


def start_servers(lab):
    for qube, port in SERVERS:
        lab.serve_tcp(qube, port)
