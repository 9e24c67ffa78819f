"""
check over IPv6 agrees with real IPv6 packets: pillar.example/full.sls applied with real
salt-call in every emulated qube, Qubes' ipv6 feature on sys-net (so every qube below has
IPv6, NAT66 at each hop) and off on build (``ipv6 ''``), the LAN with IPv6 on sys-net's
ens6.  For every ordered pair of qubes plus the LAN, on ports 22 and 443, check's ``ipv6``
answer says where an IPv6 connection lands, and a real IPv6 connection lands there; the IPv4
answers stay those of tests/ops/test_ops_lab.py.
"""

import concurrent.futures

import pytest

from tests.e2e.formula_lab import FormulaLab
from tests.e2e.full_example import full_pillar
from tests.ops.helpers import applied_and_serving, flow, model

pytestmark = pytest.mark.lab

PORTS = (22, 443)
LAN6 = {"interface": "ens6", "source_ip": "2001:db8:1::50"}
SYS_NET_LAN6 = "2001:db8:1::10"  # sys-net's address on the LAN (what a forward would publish)


@pytest.fixture(scope="module")
def v6flab(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops-v6-lab")
    lab = FormulaLab(full_pillar(), root, ipv6={"sys-net": "1", "build": ""})  # addresses6 as dom0 hands them
    try:
        applied_and_serving(lab, PORTS)
        yield lab
    finally:
        lab.close()


def test_the_lab_gives_ipv6_as_the_pillar_says(v6flab):
    six = v6flab.pillar["qubes_firewall"]["addresses6"]
    assert "build" not in six and set(six) == set(v6flab.lab.order) - {"build"}, six
    assert six["work"] == "fd09:24ef:4179::a89:9"


def test_check_over_ipv6_agrees_with_real_ipv6_probes_for_every_ordered_pair(v6flab):
    mdl = model.parse(v6flab.pillar["qubes_firewall"])
    nodes = ["lan"] + list(v6flab.lab.order)
    questions = [(s, t, p) for s in nodes for t in nodes if s != t for p in PORTS]

    def probe(question):
        source, target, port = question
        if "build" in (source, target):
            return None  # no IPv6 address to send from or to
        if source == "lan":
            return v6flab.lab.probe_tcp6("lan", SYS_NET_LAN6, port, source=LAN6["source_ip"], timeout=1.5)
        return v6flab.lab.probe_tcp6(source, target, port, timeout=1.5)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        banners = dict(zip(questions, pool.map(probe, questions)))
    mismatches = []
    for question in questions:
        source, target, port = question
        answer = flow.check(mdl, source, target, port, **(LAN6 if source == "lan" else {}))["ipv6"]
        reach = answer["reaches"]
        expected = "%s:%d" % (reach["node"], reach["port"]) if reach else None
        if banners[question] != expected or answer["allowed"] != (expected == "%s:%d" % (target, port)):
            mismatches.append((question, answer["allowed"], expected, banners[question], answer["reason"]))
    assert not mismatches, "\n".join(str(m) for m in mismatches)
    # what the pillar lets through over IPv6 with the formula's present rules: every qube with IPv6
    # reaches the LAN (masqueraded at each hop), the answer naming the uplink's outside IPv6
    allowed = {q for q in questions if banners[q] and banners[q].startswith(q[1] + ":")}
    assert ("work", "lan", 443) in allowed and ("web", "lan", 22) in allowed
    assert not any("build" in q[:2] for q in allowed)
    answer = flow.check(mdl, "work", "lan", 443)
    assert answer["ipv6"]["conditions"] == ["sys-net has IPv6 on its outside network"]
    assert flow.check(mdl, "build", "lan", 443)["families"] == {"ipv4": "allowed", "ipv6": "not (build has no IPv6)"}
