"""
``qubes_firewall.check`` and ``qubes_firewall.diagram`` through the real Salt
loader, for a pillar with IPv6 (``addresses6``): the answer keeps its IPv4
keys and adds ``ipv6`` and ``families``; the text has a line per family; the
diagram names the families.  (The walks themselves: tests/ops/test_flow.py.)
"""

from saltfactories.utils.functional import Loaders

from tests import examples
from tests.saltfactories_support import formula_minion, write_pillar_tree


def _pillar(without=()):
    pillar = examples.sls("full")
    addresses = pillar["qubes_firewall"]["addresses"]
    pillar["qubes_firewall"]["addresses6"] = {
        q: "fd09:24ef:4179::a89:%s" % ip.split(".")[-1] for q, ip in addresses.items() if q not in without}
    return pillar


def test_check_and_diagram_know_both_families(salt_factories, tmp_path):
    minion = formula_minion(salt_factories, "dom0", write_pillar_tree(tmp_path / "pillar", _pillar(("sys-net",))))
    loaders = Loaders(minion.config.copy(), loaded_base_name="tests.functional.loaded_families")
    try:
        fw = loaders.modules.qubes_firewall
        answer = fw.check("web", "internet", 443, fmt="data")
        assert answer["allowed"] is True and answer["reason"] == "allowed: web reaches internet tcp/443"
        assert answer["families"] == {"ipv4": "allowed", "ipv6": "not (sys-net has no IPv6)"}
        assert answer["ipv6"]["allowed"] is False and answer["ipv6"]["steps"][-1].startswith("sys-net has no IPv6")
        text = fw.check("web", "internet", 443, fmt="text")
        assert text.splitlines()[:2] == ["ALLOWED: web -> internet tcp/443: web reaches internet tcp/443",
                                         "ipv4: allowed; ipv6: not (sys-net has no IPv6)"], text
        assert "IPv6 path, hop by hop:" in text  # it went up to sys-net
        mermaid = fw.diagram()
        assert 'n_sys_firewall --- n_web' not in mermaid and 'n_sys_firewall ---|"IPv4, IPv6"| n_web' in mermaid
        assert 'n_sys_net ---|"IPv4, IPv6"| n_sys_firewall' not in mermaid  # sys-net has no IPv6
        assert 'n_sys_net ---|"IPv4 only"| n_sys_firewall' in mermaid, mermaid
    finally:
        loaders.reset_state()
