"""pillar.example/full.sls in the lab: its servers and the connectivity it promises."""

from tests import examples
from tests.e2e.formula_lab import Flow


def full_pillar():
    """
    pillar.example/full.sls with the lab's addresses (tests/examples.py), its
    sys-firewall a plain qube: the lab emulates no disposables, so the pillar
    leaves out ``dispvm_template`` (test_formula_in_lab's disposable test and
    test_examples_in_lab put it back and restart the disposable from its
    template as Qubes does).
    """
    pillar = examples.sls("full")
    pillar["qubes_firewall"]["qubes"]["sys-firewall"].pop("dispvm_template")
    return pillar


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
