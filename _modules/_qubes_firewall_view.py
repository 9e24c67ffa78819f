"""
Least privilege: the part of the ``qubes_firewall`` pillar one minion needs.

Plain Python, no Salt.  qubesctl renders each target qube's pillar in dom0
(``--id=QUBE``); ``view(raw, addresses, minion)`` is what that render hands
the qube: dom0 gets the whole pillar; a qube gets only what its own run
computes from:

- the qubes it plans: itself (when named), the named disposables whose boot
  blocks it writes (a disposable template), the custom-persist qubes whose
  replay it writes (a template);
- per planned qube, the port forwards whose path crosses it (with every qube
  on that path) and the connections that give it rules or that cannot be
  routed (the same refusal as with the whole pillar), with both ends;
- its own ConnectTCP entries (it is their client);
- each named qube's netvm chain up to the uplink (the pillar's grammar:
  every netvm is listed), its ``provides_network`` as the whole pillar
  makes it (given explicitly when only a client or ``service`` implied it),
  ``dispvm_template`` / ``custom_persist`` / ``template`` / ``vpn`` where they
  decide what its run writes, and the addresses its rules name;
- ``addresses6`` (IPv6, where Qubes' ``ipv6`` feature is in effect): those of
  the qubes on the way of each forward and connection it keeps (whether all
  of them have IPv6 decides whether its rules have an IPv6 side, and which do
  not is what its plan's note names); none when no qube on those ways has
  IPv6;
- ``lookup`` as given.

Nothing else: no ``firewall`` lists, no ``service`` flags (dom0's business),
no other qube's forwards, connections or ConnectTCP entries.  A list entry
the qube does not need becomes ``null`` (the model skips it) so that the
others keep their numbers: rule comments name them (``connections:3``).
A qube that needs nothing gets no qubes (``qubes: {}``, ``connect_tcp: []``):
its run removes the formula's leftovers and says it is not named.

``needs_pillar(raw)`` is the list of ids a pillar top gives the pillar: dom0
and ``_qubes_firewall_fleet.targets``.
"""

import _qubes_firewall_fleet as qf_fleet
import _qubes_firewall_flow as qf_flow
import _qubes_firewall_model as qf_model
import _qubes_firewall_plan as qf_plan

ROOT = qf_model.ROOT
DOM0 = "dom0"
LISTS = ("connections", "connect_tcp")
# the qube keys a qube's run reads (firewall and service are dom0's)
QUBE_KEYS = ("netvm", "provides_network", "dispvm_template", "custom_persist", "template", "vpn")
INVALID = ("the qubes_firewall pillar is invalid (%d problems): run sudo qubesctl "
           "qubes_firewall.pillar_errors in dom0")


def with_addresses(raw, addresses, addresses6=None):
    """``raw`` with ``addresses`` / ``addresses6`` (when not None) as those keys; ``raw`` is not changed."""
    if not isinstance(raw, dict):
        return raw
    if addresses is not None:
        raw = dict(raw, addresses=dict(addresses))
    if addresses6 is not None:
        raw = dict(raw, addresses6=dict(addresses6))
    return raw


def needs_pillar(raw):
    """
    The minion ids that need the pillar: dom0 and the targets.  For an invalid
    pillar, dom0 and every qube it lists under a well-formed name: their
    pillar is ``{error: ...}``, so that a run there says why it cannot run.
    """
    try:
        qf_model.parse(raw)
    except ValueError:
        qubes = raw.get("qubes") if isinstance(raw, dict) else None
        names = [n for n in qubes or () if isinstance(n, str) and qf_model.QUBE_NAME_ANY.match(n)
                 and n != DOM0] if isinstance(qubes, dict) else []
        return [DOM0] + sorted(names)
    return [DOM0] + qf_fleet.targets(raw)


def view(raw, addresses, minion, addresses6=None):
    """
    The ``qubes_firewall`` pillar ``minion`` needs (module docstring), from
    ``raw`` (the whole pillar's ``qubes_firewall``), ``addresses`` (``{qube:
    ip}``, None: those of ``raw``) and ``addresses6`` (``{qube: ip6}``, None:
    those of ``raw``).  An invalid pillar gives dom0 the whole of it (its run
    names every problem) and a qube ``{"error": ...}``.
    """
    raw = with_addresses(raw, addresses, addresses6)
    if minion == DOM0:
        return raw
    try:
        model = qf_model.parse(raw)
    except ValueError as exc:
        if isinstance(raw, dict) and set(raw) == {"error"}:
            return raw
        return {"error": INVALID % len(getattr(exc, "errors", None) or [exc])}
    need = Needs(model, minion)
    return need.pillar(raw)


class Needs:
    """What ``minion``'s run reads from ``model``: qubes, list entries, addresses."""

    def __init__(self, model, minion):
        self.model = model
        self.minion = minion
        self.qubes = set()  # named with their netvm chain
        self.duties = set()  # keys that decide what the run writes: dispvm_template, custom_persist, template
        self.addresses = set()
        self.addresses6 = set()  # the qubes on the way of what it keeps: their IPv6, where they have it
        self.entries = {kind: set() for kind in LISTS}
        self.forwards = set()
        for name in self.planned():
            self.plan_needs(name)
        for entry in model.connect_tcp:
            if entry.client == minion:
                self.entries["connect_tcp"].add(entry.index)

    def planned(self):
        """The qubes the run plans: itself, its named disposables, its custom-persist children."""
        model, minion = self.model, self.minion
        names = [minion] if minion in model.qubes else []
        names += model.disposables_of(minion) + list(model.template_children(minion))
        own = model.qubes.get(minion)
        if own is not None and own.dispvm_template is not None:
            # a disposable's /rw is its template's: the siblings' blocks there stay (they are not stale)
            for sibling in model.disposables_of(own.dispvm_template):
                self.duties.add(sibling)
                self.add_chain(sibling)
        self.duties.update(names)
        return names

    def add_chain(self, name):
        self.qubes.update(self.model.chain(name))

    def plan_needs(self, name):
        model = self.model
        self.add_chain(name)
        if model.qubes[name].netvm is not None:  # the planner reads a hop's own address below the uplink
            self.addresses.add(name)
        if model.qubes[name].vpn is not None:  # its fail-closed rules have an IPv6 side where it has IPv6
            self.add_ipv6_path((name,))
        for fwd in model.port_forwards:
            path = model.chain(fwd.qube)
            if name in path:
                self.forwards.add(fwd.name)
                self.add_chain(fwd.qube)
                where = path.index(name)
                if where:  # it DNATs to the next hop down
                    self.addresses.add(path[where - 1])
                if where == 0:  # the forward ends here
                    self.addresses.add(name)
                self.add_ipv6_path(qf_flow.forward_path(model, fwd))
        for conn in model.connections:
            touched = set(model.chain(conn.source)) | set(model.chain(conn.target))
            if name not in touched:
                continue
            try:
                shared, source = qf_plan.connection_route(model, conn)
            except ValueError:
                shared, source = name, None  # refused: the same refusal here
            if name not in (shared, conn.target):
                continue
            self.entries["connections"].add(conn.index)
            self.add_chain(conn.source)
            self.add_chain(conn.target)
            if source is not None:  # the rules name the source (as seen), the forward hop also the target
                self.addresses.update((source, conn.target) if name == shared else (source,))
                self.add_chain(source)
                self.add_ipv6_path(qf_flow.connection_path(model, conn))

    def add_ipv6_path(self, path):
        """The planner reads which qubes of ``path`` have IPv6 (all: an IPv6 side; else a note naming the others)."""
        self.addresses6.update(q for q in path or () if q in self.model.addresses6)

    def qube_spec(self, name, raw_spec):
        spec = raw_spec if isinstance(raw_spec, dict) else {}
        out = {"netvm": spec["netvm"]}
        if self.model.qubes[name].provides_network:
            out["provides_network"] = True
        elif "provides_network" in spec:
            out["provides_network"] = spec["provides_network"]
        if name in self.duties:
            out.update((k, spec[k]) for k in QUBE_KEYS[2:] if k in spec)
        return out

    def pillar(self, raw):
        """The reduced ``qubes_firewall`` pillar, built from ``raw``'s own values."""
        out = {}
        if "lookup" in raw:
            out["lookup"] = raw["lookup"]
        raw_qubes = raw.get("qubes") or {}
        out["qubes"] = {name: self.qube_spec(name, spec) for name, spec in raw_qubes.items() if name in self.qubes}
        known = raw.get("addresses") or {}
        addresses = {name: ip for name, ip in known.items() if name in self.addresses}
        if addresses:
            out["addresses"] = addresses
        known6 = raw.get("addresses6") or {}
        addresses6 = {name: ip for name, ip in known6.items() if name in self.addresses6}
        if addresses6:
            out["addresses6"] = addresses6
        for kind in LISTS:
            items = list(raw.get(kind) or [])
            kept = [item if index in self.entries[kind] else None for index, item in enumerate(items)]
            while kept and kept[-1] is None:
                kept.pop()
            if kept or (kind == "connect_tcp" and (kind in raw or not out["qubes"])):
                out[kind] = kept
        forwards = [f for f in raw.get("port_forwards") or [] if isinstance(f, dict) and f.get("name") in self.forwards]
        if forwards:
            out["port_forwards"] = forwards
        return out
