"""
Pure planning for the dom0 part of qubes-firewall-formula.

Everything here takes the validated pillar :class:`Model` (from
``_qubes_firewall_model``) and plain data read from Qubes by
``_qubes_firewall_qubes`` (the inventory, features, qvm-firewall lists), and
returns plain data: problems (``"pillar:path: reason"`` strings), an ordered
list of qube property changes, the qvm-firewall lists to replace, the address
map. Nothing here touches the system, so it is tested without Qubes.

The rules it keeps (Qubes core-admin and core-admin-client behaviour):

- the order of property changes never makes Qubes refuse one: a qube gets
  ``provides_network`` before any client points at it, clients move in the
  order of the wanted chains (uplink first), so no loop exists mid-way, and
  ``provides_network`` is dropped only after the clients left;
- a property already at the wanted value, also through its Qubes default, is
  not touched (never pinned);
- qvm-firewall lists compare in Qubes' canonical form (``dstports`` always a
  range, bare IPs with ``/32``, ``/0`` omitted, key order fixed).
"""

import dataclasses
import ipaddress
import time

import _qubes_firewall_model as qf_model

_RULE_KEYS = ("action", "proto", "dsthost", "dst4", "dst6", "dstports", "icmptype",
              "specialtarget", "expire", "comment")


class PlanError(ValueError):
    """A step Qubes would refuse; the dom0 validation should have caught it."""


# --------------------------------------------------------------------------
# qvm-firewall rules in canonical form
# --------------------------------------------------------------------------


def _host_token(host):
    if host is None or host == "":
        return None
    try:
        net = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return "dsthost=" + host.lower()
    if net.prefixlen == 0:
        return None  # 0.0.0.0/0 and ::/0 limit nothing; Qubes omits them
    return "dst%d=%s" % (net.version, net.with_prefixlen)


def _ports(value):
    if isinstance(value, (tuple, list)):
        low, high = value
    else:
        text = str(value)
        low, _, high = text.partition("-")
        high = high or low
    return "%d-%d" % (int(low), int(high))


def _fields(action, proto=None, dsthost=None, dstports=None, icmptype=None,
            specialtarget=None, expire=None, comment=None):
    # qubesadmin Rule.rule order: action, proto, dst*, dstports, icmptype,
    # specialtarget, expire, comment (always last)
    parts = [("action", str(action))]
    if proto:
        parts.append(("proto", str(proto)))
    host = _host_token(dsthost)
    if host:
        parts.append(tuple(host.split("=", 1)))
    if dstports is not None and proto in ("tcp", "udp"):
        parts.append(("dstports", _ports(dstports)))
    if icmptype is not None and proto == "icmp":
        parts.append(("icmptype", "%d" % int(icmptype)))
    if specialtarget:
        parts.append(("specialtarget", str(specialtarget)))
    if expire is not None:
        parts.append(("expire", "%d" % int(expire)))
    if comment:
        parts.append(("comment", str(comment)))
    return parts


def _line(**kwargs):
    return " ".join("%s=%s" % pair for pair in _fields(**kwargs))


def rule_fields(rule):
    """
    The ``[(key, value)]`` elements of a model ``FirewallRule`` in Qubes'
    canonical order: one command-line argument each, never split on spaces.
    """
    return _fields(rule.action, rule.proto, rule.dsthost, rule.dstports, rule.icmptype,
                   rule.specialtarget, getattr(rule, "expire", None), rule.comment)


def rule_line(rule):
    """The canonical Qubes rule line of a model ``FirewallRule``."""
    return " ".join("%s=%s" % pair for pair in rule_fields(rule))


def canonical_line(line):
    """
    A Qubes rule line (``qvm-firewall --raw VM list``, Admin API order or any
    key order; bare IPs, single ports) in canonical form. Raises ValueError on
    an unknown or repeated key.
    """
    head, sep, comment = line.partition("comment=")
    fields = {}
    for token in head.split():
        key, eq, value = token.partition("=")
        if not eq or key not in _RULE_KEYS:
            raise ValueError("unknown rule element %r in %r" % (token, line))
        if key in ("dst4", "dst6"):
            key = "dsthost"
        if key in fields:
            raise ValueError("repeated rule element %r in %r" % (key, line))
        fields[key] = value
    if "action" not in fields:
        raise ValueError("rule without action: %r" % line)
    if sep:
        fields["comment"] = comment
    return _line(action=fields.pop("action"), **fields)


def _canonical_or_raw(line):
    try:
        return canonical_line(line)
    except (ValueError, TypeError):
        return line.strip()


def _expired(rule_expire, now):
    return rule_expire is not None and int(rule_expire) <= now


def wanted_rules(qube, now=None):
    """
    The pillar's rules of a qube as Qubes stores them, or None (unmanaged): a
    rule whose ``expire`` has passed is dropped by Qubes when it saves the
    list, so it is not wanted either.
    """
    if qube.firewall is None:
        return None
    now = time.time() if now is None else now
    return [rule_fields(rule) for rule in qube.firewall
            if not _expired(getattr(rule, "expire", None), now)]


def wanted_firewall(qube, now=None):
    """The canonical lines the pillar wants for a qube, or None (unmanaged)."""
    rules = wanted_rules(qube, now)
    if rules is None:
        return None
    return [" ".join("%s=%s" % pair for pair in fields) for fields in rules]


def _live_active(lines, now):
    """The live lines in canonical form, without rules that have expired (Qubes skips them)."""
    out = []
    for line in lines:
        canonical = _canonical_or_raw(line)
        expire = _parse_fields(canonical).get("expire")
        if expire is not None and expire.isdigit() and int(expire) <= now:
            continue
        out.append(canonical)
    return out


def firewall_changes(model, live, now=None):
    """
    ``{qube: {"old": [...], "new": [...], "rules": [[(key, value)]]}}`` for
    each qube whose pillar ``firewall`` list differs from its live list
    (``live``: ``{qube: [lines]}``) after canonical normalisation; ``old`` and
    ``new`` are canonical lines, ``rules`` the new list as rule elements.
    Rules past their ``expire`` are left out on both sides, as Qubes does.
    """
    now = time.time() if now is None else now
    changes = {}
    for name in sorted(model.qubes):
        rules = wanted_rules(model.qubes[name], now)
        if rules is None or name not in live:
            continue
        new = [" ".join("%s=%s" % pair for pair in fields) for fields in rules]
        old = _live_active(live[name], now)
        if old != new:
            changes[name] = {"old": [_canonical_or_raw(line) for line in live[name]], "new": new,
                             "rules": [[list(pair) for pair in fields] for fields in rules]}
    return changes


def _parse_fields(line):
    head, _, _ = line.partition("comment=")
    return dict(token.partition("=")[::2] for token in head.split())


def _matches(fields, proto, port, ip, now):
    """Does a canonical rule match a packet (port/ip None = any/unknown)?"""
    if "expire" in fields and int(fields["expire"]) <= now:
        return False  # expired rules are skipped by Qubes
    if fields.get("specialtarget"):
        return False  # the netvm's DNS servers, not a qube
    if fields.get("proto") and fields["proto"] != proto:
        return False
    for key in ("dst4", "dst6", "dsthost"):
        if key in fields:
            if key == "dsthost" or ip is None:
                return False  # a host name resolves to the outside world
            if ipaddress.ip_address(ip) not in ipaddress.ip_network(fields[key], strict=False):
                return False
    if "dstports" in fields:
        low, high = (int(p) for p in fields["dstports"].split("-"))
        if port is None:
            if (low, high) not in ((0, 65535), (1, 65535), (0, 65536), (1, 65536)):
                return False  # only some of "every port"
        elif not low <= port <= high:
            return False
    if "icmptype" in fields:
        return False  # only some of "every icmp type"
    return True


def firewall_verdict(lines, proto, port, ip, now):
    """
    ``(action, index)`` the qvm-firewall list gives a packet from its qube:
    the first matching rule, else the implicit drop (index None).
    """
    for index, line in enumerate(lines):
        fields = _parse_fields(line)
        if _matches(fields, proto, port, ip, now):
            return fields.get("action"), index
    return "drop", None


# --------------------------------------------------------------------------
# netvm and provides_network
# --------------------------------------------------------------------------


def wanted_provides(model, name):
    """True/False to set, None to leave Qubes' value alone."""
    qube = model.qubes[name]
    if qube.provides_network_explicit is not None:
        return qube.provides_network_explicit
    return True if qube.provides_network else None


class _Sim:
    """The netvm graph as Qubes sees it, refusing what Qubes refuses."""

    def __init__(self, inventory):
        self.netvm = {n: q["netvm"] for n, q in inventory.items()}
        self.provides = {n: bool(q["provides_network"]) for n, q in inventory.items()}
        self.running = {n: bool(q["running"]) for n, q in inventory.items()}

    def clients(self, name):
        return sorted(n for n, v in self.netvm.items() if v == name)

    def upstream(self, name):
        seen = []
        current = self.netvm.get(name)
        while current is not None and current not in seen:
            seen.append(current)
            current = self.netvm.get(current)
        return seen

    def refusal(self, name, prop, value):
        if prop == "netvm" and value is not None:
            if not self.provides.get(value):
                return "The %s qube does not provide network" % value
            if value == name or name in self.upstream(value):
                return "Loops in network are unsupported"
            if self.running.get(name) and not self.running.get(value):
                return "Cannot dynamically attach to stopped NetVM: %r" % value
        if prop == "provides_network" and not value and self.clients(name):
            return "%s is still the netvm of %s" % (name, ", ".join(self.clients(name)))
        return None

    def apply(self, name, prop, value):
        problem = self.refusal(name, prop, value)
        if problem:
            raise PlanError("qvm-prefs %s %s %s would be refused: %s"
                            % (name, prop, "" if value is None else value, problem))
        if prop == "netvm":
            self.netvm[name] = value
        else:
            self.provides[name] = bool(value)


def prefs_steps(model, inventory):
    """
    The ordered property changes that make Qubes match the pillar:
    ``[{"qube", "prop", "old", "new"}, ...]`` (netvm values are names or
    None). Empty when everything already matches, through defaults or not.
    Raises PlanError if a step would be refused (run ``problems`` first).
    """
    sim = _Sim(inventory)
    steps = []

    def step(name, prop, value):
        old = sim.netvm[name] if prop == "netvm" else sim.provides[name]
        sim.apply(name, prop, value)
        steps.append({"qube": name, "prop": prop, "old": old, "new": value})

    present = [n for n in sorted(model.qubes) if n in inventory]
    # 1. providers first: a netvm must provide network before a client uses it
    for name in present:
        if wanted_provides(model, name) is True and not sim.provides[name]:
            step(name, "provides_network", True)
    # 2. netvms in the order of the wanted chains, uplinks first: when a qube
    #    moves, its new netvm's own chain is final, so it cannot lead back to
    #    the qube (no loop mid-way) and is never an unfinished chain
    for name in sorted(present, key=lambda n: (len(model.chain(n)), n)):
        if sim.netvm[name] != model.qubes[name].netvm:
            step(name, "netvm", model.qubes[name].netvm)
    # 3. provides_network off last, once the clients have moved away
    for name in present:
        if wanted_provides(model, name) is False and sim.provides[name]:
            step(name, "provides_network", False)
    return steps


# --------------------------------------------------------------------------
# validation against the live inventory
# --------------------------------------------------------------------------


def _path(*parts):
    return ":".join([qf_model.ROOT] + [str(p) for p in parts])


def _service_on(features, name, default):
    value = (features.get(name) or {}).get("service.qubes-firewall")
    if value is None:
        return default
    return value not in ("", "0", "False", "false")


def _no_nft_reason(name, inventory, features):
    """Why a qube cannot hold nft rules, or None."""
    entry = inventory[name]
    kernel = entry.get("kernel") or ""
    if "mirage" in kernel.lower() or "mirage" in (entry.get("template") or "").lower():
        return "%s runs the mirage unikernel firewall (kernel %r): it has no nftables and no shell" % (
            name, kernel)
    osname = (features.get(name) or {}).get("os")
    if osname and osname != "Linux":
        return "%s runs %s, not Linux with nftables" % (name, osname)
    return None


def _holders_of_forward(model, fwd):
    """The qubes holding a port forward's rules, uplink first, destination last."""
    return list(reversed(model.chain(fwd.qube)))


def connection_route(model, conn):
    """
    ``(hops, common)``: the providers a connection is forwarded through
    (source side upwards, then target side downwards) and their lowest common
    netvm, or ``(None, None)`` when the two qubes share no netvm chain.
    """
    up = model.chain(conn.source)
    down = model.chain(conn.target)
    common = next((q for q in up if q in down), None)
    if common is None:
        return None, None
    hops = up[1:up.index(common) + 1] + list(reversed(down[1:down.index(common)]))
    hops = [h for h in hops if h not in (conn.source, conn.target)]
    return hops, common


def rule_holders(model):
    """The qubes that hold nft rules of a port forward or a connection."""
    names = set()
    for fwd in model.port_forwards:
        names.update(_holders_of_forward(model, fwd))
    for conn in model.connections:
        hops, _ = connection_route(model, conn)
        names.update(hops or [])
        names.add(conn.target)
    return names


def boot_holders(model):
    """The qubes with something to bring back at boot: nft rules, or ConnectTCP socket units."""
    names = set(rule_holders(model))
    names.update(e.client for e in model.connect_tcp if e.persistent and e.client in model.qubes)
    return names


def needed_features(model, inventory):
    """The qubes whose features the validation reads (hops, service clients, custom-persist)."""
    names = boot_holders(model)
    names.update(n for n, q in model.qubes.items() if getattr(q, "custom_persist", False))
    for conn in model.connections:
        if model.qubes[conn.source].netvm:
            names.add(model.qubes[conn.source].netvm)
    for name, qube in model.qubes.items():
        if qube.service:
            names.update(model.clients(name))
            names.update(n for n, q in inventory.items() if q["netvm"] == name)
    return sorted(n for n in names if n in inventory)


def firewall_checkpoints(model, conn):
    """
    ``[(qube, netvm)]``: whose qvm-firewall list a connection passes, and
    where. Qubes enforces a client's list in its netvm on what that netvm
    forwards; on the way up every hop masquerades, so each hop up to the
    shared netvm checks the list of the qube below it (the source first).
    Traffic to the netvm itself is not forwarded there, and a connection
    from a netvm down to its client passes none.
    """
    _, common = connection_route(model, conn)
    if common is None:
        return []
    up = model.chain(conn.source)
    return [(q, model.qubes[q].netvm) for q in up[:up.index(common)]
            if model.qubes[q].netvm != conn.target]


def needed_firewalls(model):
    """Qubes whose live qvm-firewall list the validation reads (checkpoints without a pillar list)."""
    return sorted({q for c in model.connections for q, _ in firewall_checkpoints(model, c)
                   if model.qubes[q].firewall is None})


def _on(value):
    return value is not None and str(value) not in ("", "0", "False", "false")


def root_template(name, inventory):
    """
    The template whose root filesystem ``name`` boots from: its template, or
    for a disposable the template of its disposable template; None for a
    qube with its own root (a template, a standalone qube).
    """
    seen = []
    current = name
    while current in inventory and inventory[current].get("klass") != "TemplateVM":
        if current in seen:
            return None
        seen.append(current)
        current = inventory[current].get("template")
        if current is None:
            return None
    return None if current == name else current


def persist_problems(model, inventory, features):
    """
    custom-persist and ``template`` against Qubes: a qube with the feature
    ``service.custom-persist`` runs none of its /rw/config scripts at boot,
    so the pillar must say ``custom_persist: true`` (the formula then keeps
    its replay in the template), and ``template`` must be the template the
    qube really boots from.
    """
    out = []
    holders = boot_holders(model)
    for name in sorted(model.qubes):
        if name not in inventory:
            continue
        qube = model.qubes[name]
        wanted = bool(getattr(qube, "custom_persist", False))
        template = getattr(qube, "template", None)
        feats = features.get(name)
        live = _on((feats or {}).get("service.custom-persist")) if feats is not None else None
        root = root_template(name, inventory)
        if live and not wanted and name in holders:
            out.append(
                "%s: %s has the feature service.custom-persist in Qubes, so Qubes runs none of its "
                "/rw/config scripts at boot and its rules would not come back: add `custom_persist: "
                "true` and `template: %s` (or remove the feature: qvm-features -D %s "
                "service.custom-persist)" % (_path("qubes", name), name, root or "TEMPLATE", name))
        if wanted and live is False:
            out.append(
                "%s: true, but %s does not have the feature service.custom-persist in Qubes: remove "
                "custom_persist, or turn it on (qvm-features %s service.custom-persist 1)"
                % (_path("qubes", name, "custom_persist"), name, name))
        if template is not None and template != root:
            if root is None:
                why = "%s has its own root filesystem (class %s)" % (name, inventory[name].get("klass"))
            else:
                why = "%s boots from the root filesystem of %s" % (name, root)
            out.append("%s: %s, but %s: set `template: %s`"
                       % (_path("qubes", name, "template"), template, why, root or "(none: remove it)"))
    return out


def release_problems(given, detected):
    """``lookup:qubes_release`` given in the pillar against the release dom0 runs."""
    if given is None or detected is None or str(given) == detected:
        return []
    return ["%s: %s, but this dom0 runs Qubes %s: correct it, or leave it to dom0 (the addresses "
            "pillar hands the detected release to the qubes, see docs/addresses.md)"
            % (_path("lookup", "qubes_release"), given, detected)]


def planning_model(model, inventory):
    """
    The model with every address it lacks taken from the inventory, for the
    planner's whole-machine check in dom0. A qube Qubes gives no address yet
    (not networked until this run) gets a placeholder from 192.0.2.0/24: the
    check is about routes and hops, the qube-side runs get the real address.
    """
    merged = dict(model.addresses)
    spare = ("192.0.2.%d" % n for n in range(1, 255))
    for name in sorted(model.qubes):
        if name in merged:
            continue
        ip = (inventory.get(name) or {}).get("ip")
        merged[name] = ip if ip else next(spare, "192.0.2.254")
    return dataclasses.replace(model, addresses=merged)


def _probes(conn):
    protos = [conn.proto] if conn.proto else ["tcp", "udp", "icmp"]
    for proto in protos:
        if proto in ("tcp", "udp") and conn.ports:
            for port in conn.ports:
                yield proto, port
        else:
            yield proto, None


def _missing_problems(model, inventory):
    """Qubes the pillar names that Qubes does not have, and addresses Qubes gives otherwise."""
    out = []
    for name in sorted(model.qubes):
        if name not in inventory:
            out.append("%s: %s does not exist in this Qubes; create the qube, or correct the name"
                       % (_path("qubes", name), name))
    for entry in model.connect_tcp:
        for key in ("client", "server"):
            value = getattr(entry, key)
            if not value.startswith("@") and value not in inventory:
                out.append("%s: %s does not exist in this Qubes; create the qube, or correct the name"
                           % (_path("connect_tcp", entry.index, key), value))
    for name, addr in sorted(model.addresses.items()):
        live = inventory.get(name, {}).get("ip")
        if name in inventory and live and live != addr:
            out.append("%s: %s, but Qubes gives %s the address %s (leave addresses to dom0: "
                       "see docs/addresses.md)" % (_path("addresses", name), addr, name, live))
    return out + _ipv6_problems(model, inventory)


def _ipv6_problems(model, inventory):
    """IPv6 addresses typed in the pillar that Qubes gives otherwise, or not at all (a networked qube)."""
    out = []
    for name, addr in sorted(model.addresses6.items()):
        live = inventory.get(name, {})
        if name not in inventory or live.get("ip6") == addr:
            continue
        if live.get("ip6"):
            out.append("%s: %s, but Qubes gives %s the IPv6 address %s (leave addresses6 to dom0: "
                       "see docs/addresses.md)" % (_path("addresses6", name), addr, name, live["ip6"]))
        elif live.get("ip"):
            out.append("%s: %s, but %s has no IPv6 in Qubes (its ipv6 feature is not in effect: "
                       "see docs/addresses.md)" % (_path("addresses6", name), addr, name))
    return out


def _move_problems(model, inventory, final_provides):
    """The moves Qubes would refuse whatever the order."""
    out = []
    for name in sorted(model.qubes):
        qube, live = model.qubes[name], inventory[name]
        if qube.netvm is not None and qube.netvm != live["netvm"]:
            target = inventory[qube.netvm]
            if live["running"] and not target["running"]:
                out.append("%s: %s is running and %s is %s: Qubes refuses to attach a running qube "
                           "to a stopped netvm; start %s first"
                           % (_path("qubes", name, "netvm"), name, qube.netvm, target["state"], qube.netvm))
        if final_provides[name] is False and live["provides_network"]:
            others = sorted(n for n, q in inventory.items()
                            if q["netvm"] == name and n not in model.qubes)
            if others:
                out.append("%s: false, but %s still use %s as netvm (Qubes refuses); move them first"
                           % (_path("qubes", name, "provides_network"), ", ".join(others), name))
    return out


def _disposable_problems(model, inventory):
    """
    Named disposables: their /rw (and so the boot replay of their rules) comes
    from their disposable template.
    """
    out = []
    holders = rule_holders(model)
    for name in sorted(model.qubes):
        qube, live = model.qubes[name], inventory[name]
        disposable = live.get("klass") == "DispVM"
        if qube.dispvm_template is not None:
            if not disposable:
                out.append("%s: %s is not a disposable (its class is %s); remove dispvm_template"
                           % (_path("qubes", name, "dispvm_template"), name, live.get("klass")))
            elif live.get("template") != qube.dispvm_template:
                out.append("%s: %s is a disposable of %s, not of %s"
                           % (_path("qubes", name, "dispvm_template"), name, live.get("template"),
                              qube.dispvm_template))
        elif disposable and name in holders:
            out.append("%s: %s is a disposable whose /rw comes from %s at each start, so the boot "
                       "replay of its rules must be written there: add `dispvm_template: %s`"
                       % (_path("qubes", name), name, live.get("template"), live.get("template")))
    return out


def _service_problems(model, inventory, features, final_provides):
    """Network service qubes need a firewall qube between them and clients."""
    out = []
    for name in sorted(model.qubes):
        if not model.qubes[name].service:
            continue
        clients = [(c, _path("qubes", c, "netvm"), final_provides[c]) for c in model.clients(name)]
        clients += [(c, _path("qubes", name, "service"), q["provides_network"])
                    for c, q in sorted(inventory.items())
                    if q["netvm"] == name and c not in model.qubes]
        for client, where, provides in clients:
            if provides and _service_on(features, client, True):
                continue
            why = ("does not provide network" if not provides
                   else "has its qubes-firewall service off")
            out.append(
                "%s: %s is a network service qube (service: true) and %s %s: Qubes does not "
                "support network services in the qube that runs the firewall of its clients; put a "
                "firewall qube between them (%s -> sys-firewall-2 -> %s)"
                % (where, name, client, why, client, name))
    return out


def _holder_problems(where, holders, what, inventory, features, final_provides):
    """Every qube holding a port forward's or a connection's rules can hold them."""
    out = []
    for holder in holders:
        reason = _no_nft_reason(holder, inventory, features)
        if reason is None and final_provides.get(holder) and not _service_on(features, holder, True):
            reason = ("%s provides network but its qubes-firewall service is off, so "
                      "qubes-firewall-user-script (where the formula keeps a network qube's "
                      "rules) never runs" % holder)
        if reason:
            out.append("%s: %s goes through %s, which cannot hold the nft rules: %s"
                       % (where, what, holder, reason))
    return out


def _firewall_list_problems(model, conn, where, inventory, features, firewalls, now):
    """The qvm-firewall lists on the connection's way, in the netvm that enforces each."""
    out = []
    ip = model.addresses.get(conn.target) or inventory[conn.target]["ip"]
    for name, netvm in firewall_checkpoints(model, conn):
        if not _service_on(features, netvm, True):
            continue
        qube = model.qubes[name]
        if qube.firewall is not None:
            lines, origin = wanted_firewall(qube), "pillar list %s" % _path("qubes", name, "firewall")
        elif name in firewalls:
            lines = [_canonical_or_raw(line) for line in firewalls[name]]
            origin = "list in Qubes (qvm-firewall %s)" % name
        else:
            continue
        for proto, port in _probes(conn):
            action, index = firewall_verdict(lines, proto, port, ip, now)
            if action == "accept":
                continue
            what = proto + ("/%d" % port if port is not None else "")
            by = "rule %d (%s)" % (index, lines[index]) if index is not None else "the implicit final drop"
            out.append(
                "%s: the qvm-firewall %s of %s drops %s to %s (%s) in %s by %s, before the "
                "formula's forward rule can accept it; put an accept rule for it first"
                % (where, origin, name, what, conn.target, ip or "address unknown", netvm, by))
    return out


def _no_network(model, name, final_provides):
    """Why ``name`` has no network at all (netvm none and it does not provide network), or None."""
    if model.qubes[name].netvm is not None or final_provides.get(name):
        return None
    return ("%s has netvm none and does not provide network: it has no network at all; give it a netvm "
            "(%s: netvm: sys-firewall)" % (name, _path("qubes", name)))


def _forward_problems(model, inventory, features, final_provides):
    """Each port forward ends in a qube with a network, and every hop can hold its rules."""
    out = []
    for index, fwd in enumerate(model.port_forwards):
        isolated = _no_network(model, fwd.qube, final_provides)
        if isolated:
            out.append("%s: port forward %r can never reach %s: %s"
                       % (_path("port_forwards", index, "qube"), fwd.name, fwd.qube, isolated))
            continue
        out += _holder_problems(_path("port_forwards", index), _holders_of_forward(model, fwd),
                                "port forward %r" % fwd.name, inventory, features, final_provides)
    return out


def _connection_problems(model, inventory, features, firewalls, now, final_provides):
    """Each connection has a route, hops that can hold its rules, and qvm-firewall lists that let it pass."""
    out = []
    for conn in model.connections:
        where = _path("connections", conn.index)
        isolated = [(key, _no_network(model, name, final_provides))
                    for key, name in (("from", conn.source), ("to", conn.target))]
        isolated = [(key, why) for key, why in isolated if why]
        if isolated:
            out += ["%s:%s: the connection %s -> %s can never pass: %s"
                    % (where, key, conn.source, conn.target, why) for key, why in isolated]
            continue
        hops, common = connection_route(model, conn)
        if hops is None:
            out.append("%s: %s and %s share no netvm chain (uplinks %s and %s): no route between them"
                       % (where, conn.source, conn.target, model.uplink(conn.source),
                          model.uplink(conn.target)))
            continue
        out += _holder_problems(where, hops + [conn.target], "the connection %s -> %s" % (conn.source, conn.target),
                                inventory, features, final_provides)
        out += _firewall_list_problems(model, conn, where, inventory, features, firewalls, now)
    return out


def problems(model, inventory, features=None, firewalls=None, now=None):
    """
    Every reason the pillar's topology cannot be applied to this Qubes, each a
    ``"qubes_firewall:path: reason"`` string; empty when it fits.

    ``features``: ``{qube: {feature: value}}`` for ``needed_features``;
    ``firewalls``: ``{qube: [lines]}`` for ``needed_firewalls``.
    """
    features = features or {}
    firewalls = firewalls or {}
    now = time.time() if now is None else now
    out = _missing_problems(model, inventory)
    if any(name not in inventory for name in model.qubes):
        return out  # the other checks need every qube
    final_provides = {n: (wanted_provides(model, n) if wanted_provides(model, n) is not None
                          else inventory[n]["provides_network"]) for n in model.qubes}
    out += _move_problems(model, inventory, final_provides)
    out += _disposable_problems(model, inventory)
    out.extend(persist_problems(model, inventory, features))
    out += _service_problems(model, inventory, features, final_provides)
    out += _forward_problems(model, inventory, features, final_provides)
    out += _connection_problems(model, inventory, features, firewalls, now, final_provides)
    return out


# --------------------------------------------------------------------------
# addresses for the qube-side runs
# --------------------------------------------------------------------------


def addresses(inventory, names=None, family=4):
    """
    ``{qube: ip}`` from the inventory for ``names`` (default: every qube
    with an address, dom0 excluded). Qubes without an address are left out.
    ``family`` 6: ``{qube: ip6}``, the qubes where IPv6 is in effect.
    """
    if str(family) not in ("4", "6"):
        raise ValueError("family must be 4 or 6, got %r" % (family,))
    key = "ip6" if str(family) == "6" else "ip"
    wanted = sorted(inventory) if names is None else sorted(set(names))
    return {
        name: inventory[name][key]
        for name in wanted
        if name in inventory and inventory[name].get(key) and inventory[name]["klass"] != "AdminVM"
    }
