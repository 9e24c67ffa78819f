"""
The formula in the lab: a network-namespace Qubes (tests.lab) built from a
pillar's topology and addresses, with ``salt-call`` run inside each emulated
qube exactly as the README shows.  Each qube gets the pillar dom0
would render for it: the same pillar, with ``lookup:rw_config`` pointing at
that qube's emulated /rw/config and, when the model knows them, ``lookup:etc_qubes``
and ``lookup:systemd_dir`` at its root's (its template's) /etc/qubes and
/etc/systemd/system, ``lookup:state_dir`` at a directory of its own, and
``lookup:qubes_release`` at the lab's release (dom0 passes it so), unless the pillar
sets one of them.  A qube's ``custom_persist`` and ``template`` go into the lab.

IPv6: ``FormulaLab(pillar, workdir, ipv6={"sys-net": "1"})`` sets Qubes' ``ipv6``
feature on those qubes (``""`` turns it off below), gives the outside hosts
IPv6 (2001:db8:<n>::/64 links) and, as dom0 does, puts ``addresses6`` (the
lab's ip6 of each qube where IPv6 is in effect) into the pillar.
"""

import concurrent.futures
import copy
import dataclasses
import json
import pathlib
from typing import List, Optional

from tests.lab import Lab, OutsideHost, QubeSpec
from tests.modules import model as model_mod
from tests.salt_call import SaltCall


def outside_hosts(uplinks, ipv6=False):
    """A LAN host on ens6 and a second network on ens7 of each uplink qube (with ``ipv6``:
    lan 2001:db8:1::50 (+::51), its uplink 2001:db8:1::10; wan 2001:db8:30::50, uplink ::10)."""
    hosts = []
    for i, uplink in enumerate(sorted(uplinks)):
        suffix = "" if i == 0 else str(i + 1)
        lan6 = dict(host_ip6="2001:db8:%x::50/64" % (1 + 2 * i), uplink_ip6="2001:db8:%x::10/64" % (1 + 2 * i),
                    extra_ips6=["2001:db8:%x::51/64" % (1 + 2 * i)]) if ipv6 else {}
        wan6 = dict(host_ip6="2001:db8:%x::50/64" % (0x30 + i),
                    uplink_ip6="2001:db8:%x::10/64" % (0x30 + i)) if ipv6 else {}
        hosts.append(OutsideHost(name="lan" + suffix, uplink=uplink, ifname="ens6",
                                 host_ip="192.168.%d.50/24" % (1 + 2 * i), uplink_ip="192.168.%d.10/24" % (1 + 2 * i),
                                 extra_ips=["192.168.%d.51/24" % (1 + 2 * i)], **lan6))
        hosts.append(OutsideHost(name="wan" + suffix, uplink=uplink, ifname="ens7",
                                 host_ip="172.30.%d.50/24" % i, uplink_ip="172.30.%d.10/24" % i, **wan6))
    return hosts


def lab_qubes(mdl, ipv6=None):
    """The lab's qubes of the model; ``ipv6``: {qube: its ``ipv6`` feature value}."""
    ipv6 = ipv6 or {}
    return {
        name: QubeSpec(ip=mdl.addresses[name], netvm=q.netvm, provides_network=q.provides_network,
                       custom_persist=bool(getattr(q, "custom_persist", False)),
                       template=getattr(q, "template", None), ipv6=ipv6.get(name))
        for name, q in mdl.qubes.items()
    }


def lookup_keys():
    """The lookup keys this checkout's model accepts."""
    return {f.name for f in dataclasses.fields(model_mod.Lookup)}


@dataclasses.dataclass
class Applied:
    qube: str
    retcode: int
    states: dict

    @property
    def changed(self):
        return {sid: s["changes"] for sid, s in self.states.items() if s["changes"]}

    @property
    def failed(self):
        return {sid: s["comment"] for sid, s in self.states.items() if s["result"] is False}


class FormulaLab:
    """``with FormulaLab(pillar, workdir) as flab:`` builds the lab; ``flab.lab`` is the Lab."""

    def __init__(self, pillar: dict, workdir, outside: Optional[List[OutsideHost]] = None,
                 release: Optional[str] = None, ipv6: Optional[dict] = None):
        self.pillar = copy.deepcopy(pillar)
        self.workdir = pathlib.Path(workdir)
        self.model = model_mod.parse(self.pillar["qubes_firewall"])
        uplinks = [n for n, q in self.model.qubes.items() if q.netvm is None]
        self.outside = outside if outside is not None else outside_hosts(uplinks, ipv6=bool(ipv6))
        self.lab = Lab(lab_qubes(self.model, ipv6), self.outside, workdir=self.workdir / "lab", release=release)
        self.release = self.lab.release
        if ipv6:
            self.pillar = self.with_addresses6(self.pillar)
            self.model = model_mod.parse(self.pillar["qubes_firewall"])
        self._minions = {}

    def addresses6(self):
        """{qube: ip6} where Qubes' IPv6 is in effect in the lab: what dom0 hands the qubes."""
        return {q: self.lab.ip6(q) for q in self.lab.order if self.lab.ip6(q)}

    def with_addresses6(self, pillar):
        """``pillar`` with the lab's ``addresses6`` (none: the key left out, as dom0 does)."""
        pillar = copy.deepcopy(pillar)
        found = self.addresses6()
        if found:
            pillar["qubes_firewall"]["addresses6"] = found
        return pillar

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lab.close()

    def close(self):
        self.lab.close()

    def qube_pillar(self, qube, pillar=None):
        pillar = copy.deepcopy(pillar if pillar is not None else self.pillar)
        lookup = pillar["qubes_firewall"].setdefault("lookup", {}) if isinstance(pillar.get("qubes_firewall"), dict) else {}
        lookup["rw_config"] = str(self.rw_config(qube))
        known = lookup_keys()
        defaults = {
            "etc_qubes": str(self.etc_qubes(qube)),
            "systemd_dir": str(self.systemd_dir(qube)),
            "state_dir": str(self.workdir / "state" / qube),
            "qubes_release": self.release,
        }
        for key, value in defaults.items():
            if key in known:
                lookup.setdefault(key, value)
        return pillar

    def root_dir(self, qube):
        """The root filesystem a qube's run writes /etc into: a lab qube's root (its
        template's, see Lab.root_dir); a qube outside the lab is taken as a template and
        writes the root its qubes boot from."""
        if qube in self.lab.qubes:
            return self.lab.root_dir(qube)
        return self.lab.template_dir(qube)

    def etc_qubes(self, qube):
        return self.root_dir(qube) / "etc" / "qubes"

    def systemd_dir(self, qube):
        return self.root_dir(qube) / "etc" / "systemd" / "system"

    def rw_config(self, qube):
        """A lab qube's /rw/config; for a qube outside the lab (a disposable
        template, which runs no network) a directory of its own."""
        if qube in self.lab.qubes:
            return self.lab.rw_config(qube)
        path = self.workdir / "templates" / qube / "rw" / "config"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def minion(self, qube):
        if qube not in self._minions:
            netns = self.lab.netns(qube) if qube in self.lab.qubes else None
            self._minions[qube] = SaltCall(self.workdir / "salt", qube, self.qube_pillar(qube), netns=netns)
        return self._minions[qube]

    def set_pillar(self, pillar):
        self.pillar = copy.deepcopy(pillar)
        for qube, minion in self._minions.items():
            minion.set_pillar(self.qube_pillar(qube))

    def apply(self, qube, test=False):
        rc, states = self.minion(qube).apply(test=test)
        return Applied(qube, rc, states)

    def apply_all(self, test=False, parallel=4):
        """state.apply in every lab qube, up to ``parallel`` at once as qubesctl does
        (each qube-side run touches only its own qube); results in lab order."""
        for qube in self.lab.order:
            self.minion(qube)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            results = list(pool.map(lambda qube: self.apply(qube, test=test), self.lab.order))
        return dict(zip(self.lab.order, results))

    def snapshot(self, qube):
        """Everything the formula could change in a qube: its ruleset and its /rw/config files."""
        ruleset = self.lab.run(qube, ["nft", "-s", "list", "ruleset"]).stdout
        rw = self.lab.rw_config(qube)
        files = {str(p.relative_to(rw)): (p.read_bytes(), p.stat().st_mode)
                 for p in sorted(rw.rglob("*")) if p.is_file()}
        return ruleset, files

    def ruleset_model(self, qube):
        """
        The ruleset as data, for "same ruleset" comparisons: handles and counters
        dropped, chains keyed by table and name (the listing order of chains carries
        no meaning: Qubes itself recreates dnat-dns last), rules in order per chain.
        """
        doc = json.loads(self.lab.run(qube, ["nft", "-j", "-s", "list", "ruleset"]).stdout)
        out = {}
        for item in doc["nftables"]:
            (kind, body), = item.items()
            if kind == "metainfo":
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            table = (body.get("family"), body.get("table", body.get("name")))
            if kind == "rule":
                out.setdefault(("rules",) + table + (body["chain"],), []).append(json.dumps(body, sort_keys=True))
            else:
                out[(kind,) + table + (body.get("name", ""),)] = json.dumps(body, sort_keys=True)
        return out

    def snapshot_all(self):
        return {qube: self.snapshot(qube) for qube in self.lab.order}


@dataclasses.dataclass(frozen=True)
class Flow:
    """One probe of the connectivity matrix."""

    label: str
    source: str  # node (qube or outside host)
    dest: str  # node name or address
    port: int
    expect: Optional[str]  # banner expected, None = must not connect
    proto: str = "tcp"
    from_ip: Optional[str] = None
    family: int = 4  # 6: the probe goes over IPv6

    def probe(self, lab):
        if self.family == 6:
            fn = lab.probe_tcp6 if self.proto == "tcp" else lab.probe_udp6
        else:
            fn = lab.probe_tcp if self.proto == "tcp" else lab.probe_udp
        return fn(self.source, self.dest, self.port, source=self.from_ip, timeout=1.0)


def check_flows(lab, flows):
    """[(flow, got)] for every flow."""
    return [(flow, flow.probe(lab)) for flow in flows]


def matrix_text(results):
    rows = [("flow", "from", "to", "expected", "got", "")]
    for flow, got in results:
        to = "%s %s%s:%d" % (flow.dest, flow.proto, "6" if flow.family == 6 else "", flow.port)
        src = flow.source + (" (%s)" % flow.from_ip if flow.from_ip else "")
        rows.append((flow.label, src, to, flow.expect or "blocked", got or "blocked",
                     "ok" if got == flow.expect else "MISMATCH"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
