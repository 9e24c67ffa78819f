"""
``check``: may this flow pass, and through which rules?  Answered from the
pillar alone, before anything is applied, by walking the first packet of a new
connection hop by hop through the Qubes netvm chain (the same in 4.2 and 4.3):

- in each qube, the formula's own chains as the planner
  (``_qubes_firewall_plan.plan_qube``) writes them: the ``qf-nat`` chain, then
  ``qf-input`` or ``qf-forward``; their statements (nft JSON) and the sets
  and maps they look up are evaluated as nft would, never re-derived;
- Qubes' base chains around them: new traffic into a qube is dropped (from
  its clients: rejected) unless ``qf-input`` accepts it; forwarding down into a
  client is dropped unless ``qf-forward`` accepts it; forwarding up or out is
  allowed, masqueraded as the hop;
- in a netvm, the qvm-firewall list of the client the packet comes from
  (``_qubes_firewall_dom0.firewall_verdict`` on the pillar's list; a qube
  without a ``firewall`` list in the pillar keeps Qubes' default, accept).

Nodes are qube names, or an outside name (``outside``, ``lan``, ``wan``,
``internet``): from outside, the packet arrives at the target's uplink
addressed to the uplink itself on ``port`` (what a port forward publishes);
to outside, it leaves through the source's uplink.  The outside interface and
source address are unknown to the pillar: give ``interface`` / ``source_ip``,
or rules that depend on them are listed as ``conditions``.

Both families: the walk above is IPv4 (the answer's top-level keys); the same
walk is made for IPv6 (the answer's ``ipv6``) over ``addresses6``, the
planner's ``ip6`` objects and Qubes' ``ip6 qubes`` chains (which behave as
the ``ip`` ones, NAT66 included), and stops at the first qube on the way
without IPv6 (Qubes' ``ipv6`` feature not in effect there).  ``families``
sums both up (``{"ipv4": "allowed", "ipv6": "not (sys-net has no IPv6 ...)"}``).

A flow that leaves upward through a VPN qube (``qubes:<qube>:vpn``) goes into
its tunnel; ``tunnel_down`` says, from the VPN qube's planned rules, whether it
would leak by the VPN qube's upstream when the tunnel is down.

Pure; imports the planner, the qvm-firewall evaluator and the VPN planner.
"""

import fnmatch
import ipaddress
import time

import _qubes_firewall_dom0 as qf_dom0
import _qubes_firewall_plan as qf_plan
import _qubes_firewall_vpn as qf_vpn

OUTSIDE_NAMES = ("outside", "lan", "wan", "internet")
# symbolic addresses the pillar cannot know
OUTSIDE_ADDR = "<outside>"  # an address in the outside world
_LOCAL_PREFIX = "<local:"  # an uplink's own address on the outside network
MAX_HOPS = 64
# address family -> the nft family of the planner's objects and the payload protocol of its matches
NFT_FAMILY = {4: "ip", 6: "ip6"}
FAMILY_NAMES = {4: "ipv4", 6: "ipv6"}
NO_IPV6 = "%s has no IPv6"
NO_IPV6_STEP = "%s has no IPv6 (Qubes' ipv6 feature is not in effect there): the IPv6 packet stops here"


class FlowError(ValueError):
    """The question itself is wrong (unknown node, same node twice, bad port)."""


# --------------------------------------------------------------------------
# the planner's statements (nft JSON), evaluated as nft would
# --------------------------------------------------------------------------


def _items(right):
    return right["set"] if isinstance(right, dict) and "set" in right else [right]


def _addr_in(addr, items):
    if addr is None or addr.startswith("<"):
        return False
    ip = ipaddress.ip_address(addr)
    for item in items:
        net = "%s/%d" % (item["prefix"]["addr"], item["prefix"]["len"]) if isinstance(item, dict) else item
        net = ipaddress.ip_network(net, strict=False)
        if net.version == ip.version and ip in net:
            return True
    return False


def _packet_family(packet):
    """The nft payload protocol of the packet's addresses: ip, or ip6."""
    return NFT_FAMILY[packet.get("family", 4)]


def _field(left, packet):
    """The packet's value for a key of a set lookup (meta l4proto, ip/ip6 daddr, th dport)."""
    if left == {"meta": {"key": "l4proto"}}:
        return packet["proto"]
    if left == {"payload": {"protocol": _packet_family(packet), "field": "daddr"}}:
        return packet["daddr"]
    if left == {"payload": {"protocol": "th", "field": "dport"}}:
        return packet["dport"]
    raise ValueError("unknown lookup key %r" % (left,))


def _lookup(concat, set_name, packet, sets):
    """The element of ``set_name`` the packet's key selects, or None."""
    key = tuple(_field(part, packet) for part in concat["concat"])
    item = sets.get(set_name.lstrip("@"))
    if item is None:
        raise ValueError("a rule looks up %s, which the plan does not hold" % set_name)
    return next((e for e in item.elements if e.key == key), None)


def match(stmts, packet, sets=None):
    """
    Do the planner's match statements (nft JSON, ``Rule.matches``) match
    ``packet``?  Returns ``(matched, conditions, element)``: ``conditions``
    lists the clauses assumed true because the packet's interface or source is
    unknown (outside traffic); ``element`` is the set element a lookup found.
    Raises ValueError on a statement the planner never writes.
    """
    conditions, element = [], None
    ok = True
    for stmt in stmts:
        stmt = stmt.json if hasattr(stmt, "json") else stmt
        m = stmt.get("match")
        if m is None:
            raise ValueError("unknown statement %r" % (stmt,))
        left, right, op = m["left"], m["right"], m["op"]
        meta = left.get("meta", {}).get("key")
        payload = left.get("payload")
        if meta == "iifgroup":
            ok = ok and packet["iifgroup"] == right
        elif meta == "iifname":
            negate = op == "!="
            items = _items(right)
            name = packet["iifname"]
            if name is None:
                if packet["iifgroup"] == 0 and negate and all(v.startswith("vif") for v in items):
                    continue  # an outside interface is never a client vif
                conditions.append("arrives on %s%s" % ("an interface other than " if negate else "", ", ".join(items)))
                continue
            found = any(fnmatch.fnmatchcase(name, v) for v in items)
            ok = ok and (found != negate)
        elif meta == "l4proto":
            ok = ok and packet["proto"] in _items(right)
        elif "fib" in left:
            if left["fib"] != {"result": "type", "flags": ["daddr"]} or right != "local":
                raise ValueError("unknown fib statement %r" % (stmt,))
            ok = ok and packet["daddr"] in packet["local_addrs"]
        elif payload and payload["protocol"] in ("ip", "ip6"):
            field = payload["field"]
            if field not in ("saddr", "daddr"):
                raise ValueError("unknown ip statement %r" % (stmt,))
            if payload["protocol"] != _packet_family(packet):
                ok = False  # an ip match never matches an IPv6 packet, nor ip6 an IPv4 one
                continue
            if field == "saddr" and packet["saddr"] is None:
                conditions.append("comes from %s" % ", ".join(
                    "%s/%d" % (i["prefix"]["addr"], i["prefix"]["len"]) if isinstance(i, dict) else i
                    for i in _items(right)))
                continue
            ok = ok and _addr_in(packet[field], _items(right))
        elif payload and payload["field"] == "dport":
            proto = payload["protocol"]
            ok = (ok and packet["proto"] == proto if proto != "th" else ok and packet["proto"] in ("tcp", "udp"))
            ok = ok and packet["dport"] in _items(right)
        elif left.get("ct", {}).get("key") == "state":
            ok = ok and "new" in _items(right)
        elif "concat" in left and isinstance(right, str) and right.startswith("@"):
            element = _lookup(left, right, packet, sets or {})
            ok = ok and element is not None
        else:
            raise ValueError("unknown statement %r" % (stmt,))
    return ok, conditions, element


# --------------------------------------------------------------------------
# the qubes a pillar entry's packets cross, and which of them have IPv6
# --------------------------------------------------------------------------


def forward_path(model, fwd):
    """A port forward's hops, from its uplink down to its qube."""
    return list(reversed(model.chain(fwd.qube)))


def connection_path(model, conn):
    """
    The qubes a connection's packets cross, in order: its source, up to the
    netvm source and target share, then down to the target; None when they
    share none (different uplinks).
    """
    up, down = model.chain(conn.source), model.chain(conn.target)
    common = next((q for q in up if q in down), None)
    if common is None:
        return None
    return up[:up.index(common) + 1] + list(reversed(down[:down.index(common)]))


def missing_ipv6(model, path):
    """The qubes of ``path`` without IPv6 (not in ``addresses6``): an empty list when it has IPv6 all the way."""
    return [q for q in path if q not in model.addresses6]


# --------------------------------------------------------------------------
# the walk
# --------------------------------------------------------------------------


def is_outside(name):
    return name in OUTSIDE_NAMES


def _local(qube):
    return "%s%s>" % (_LOCAL_PREFIX, qube)


def _show(addr, addresses):
    """``addr`` for people; ``addresses``: the walk's ``{qube: address}``."""
    if addr == OUTSIDE_ADDR:
        return "an outside address"
    if addr and addr.startswith(_LOCAL_PREFIX):
        return "%s's outside address" % addr[len(_LOCAL_PREFIX):-1]
    names = [n for n, a in addresses.items() if a == addr]
    return "%s (%s)" % (addr, names[0]) if names else str(addr)


def _family_of(obj):
    """The nft family of a planned chain or set: its ``family``, else its ``table``'s first word, else ip."""
    family = getattr(obj, "family", None)
    if family is None:
        table = getattr(obj, "table", None)
        family = str(table).split()[0] if table else qf_plan.FAMILY
    return family


class _Walk:
    def __init__(self, model, proto, now, family=4):
        self.model = model
        self.proto = proto
        self.now = now
        self.family = family
        self.addresses = model.addresses if family == 4 else model.addresses6
        self.plans = {}
        self.steps = []
        self.rules = []
        self.conditions = []
        self.notes = []

    def plan(self, qube):
        if qube not in self.plans:
            self.plans[qube] = qf_plan.plan_qube(self.model, qube)
        return self.plans[qube]

    def chains(self, qube):
        """The planned chains of ``qube`` in this walk's family."""
        return [c for c in self.plan(qube).chains if _family_of(c) == NFT_FAMILY[self.family]]

    def sets(self, qube):
        """The planned sets and maps of ``qube`` in this walk's family, by name."""
        return {s.name: s for s in self.plan(qube).sets if _family_of(s) == NFT_FAMILY[self.family]}

    def chain(self, qube, name):
        for chain in self.chains(qube):
            if chain.name == name:
                return chain
        return None

    def rules_of(self, qube, name):
        chain = self.chain(qube, name)
        return chain.rules if chain is not None else ()

    def first_match(self, qube, rules, packet):
        """The first rule that matches, its set element (or None) and its origin; or (None, None, None)."""
        sets = self.sets(qube)
        for rule in rules:
            ok, conds, element = match(rule.matches, packet, sets)
            if ok and _verdict_applies(rule, packet, sets):
                entry = {"qube": qube, "chain": rule.chain, "comment": rule.comment, "rule": rule.body}
                origin = rule.origin
                if element is not None:
                    entry.update(comment=element.comment, element=element.text)
                    origin = element.origin
                self.rules.append(entry)
                for cond in conds:
                    if cond not in self.conditions:
                        self.conditions.append(cond)
                return rule, element, origin
        return None, None, None

    def step(self, text):
        self.steps.append(text)

    def address(self, qube):
        addr = self.addresses.get(qube)
        if addr is None:
            key = "addresses" if self.family == 4 else "addresses6"
            raise FlowError("qubes_firewall:%s:%s: check needs the address of %s" % (key, qube, qube))
        return addr

    def lacks_family(self, qube, step=False):
        """Why the packet cannot be in ``qube`` in this family (a qube without IPv6), or None."""
        if self.family == 6 and qube in self.model.qubes and qube not in self.addresses:
            return (NO_IPV6_STEP if step else NO_IPV6) % qube
        return None


def _nat_map(rule):
    """("dnat" | "redirect", map name, key statement) of a NAT rule's verdict, or None."""
    verdict = rule.verdict.json
    if "dnat" in verdict:
        found = verdict["dnat"].get("addr", {}).get("map")
        kind = "dnat"
    elif "redirect" in verdict:
        found = verdict["redirect"].get("port", {}).get("map")
        kind = "redirect"
    else:
        return None
    if not found:
        raise ValueError("unknown nat verdict %r" % (verdict,))
    return kind, found["data"], found["key"]


def _verdict_applies(rule, packet, sets):
    """A NAT rule whose map has no element for the packet does not apply (nft breaks the rule)."""
    nat = _nat_map(rule)
    return nat is None or _lookup(nat[2], nat[1], packet, sets) is not None


def _dnat(walk, node, packet):
    """The formula's nat prerouting chain of ``node`` (first rule whose map has the packet's key)."""
    chains = [c for c in walk.chains(node) if c.hook and c.hook[1] == "prerouting"]
    sets = walk.sets(node)
    for chain in chains:
        rule, _, _ = walk.first_match(node, chain.rules, packet)
        if rule is None:
            continue
        kind, name, key = _nat_map(rule)
        element = _lookup(key, name, packet, sets)
        walk.rules[-1].update(comment=element.comment, element=element.text)
        if kind == "dnat":
            packet["daddr"], packet["dport"] = element.value[0], int(element.value[1])
        else:
            packet["daddr"] = walk.address(node)
            packet["dport"] = int(element.value[0])
        walk.step("%s: %s rewrites the destination to %s port %d"
                  % (node, chain.name, _show(packet["daddr"], walk.addresses), packet["dport"]))
        return


def _firewall_list(walk, client, netvm, packet):
    """The client's qvm-firewall list, applied in its netvm; True when it accepts."""
    qube = walk.model.qubes[client]
    lines = qf_dom0.wanted_firewall(qube)
    if lines is None:
        walk.step("%s: qubes-firewall: %s's qvm-firewall list is not in the pillar (Qubes' default: accept)"
                  % (netvm, client))
        return True
    dest = packet["daddr"]
    ip = None if dest.startswith("<") else dest
    action, index = qf_dom0.firewall_verdict(lines, walk.proto, packet["dport"], ip, walk.now)
    which = "rule %d (%s)" % (index, lines[index]) if index is not None else "the implicit drop at its end"
    if ip is None and any("dsthost=" in line for line in lines):
        walk.notes.append("%s's qvm-firewall rules for named hosts were not evaluated: the outside "
                          "destination is unknown" % client)
    key = "dst%d=" % walk.family
    if ip is None and any(key in line for line in lines):
        walk.notes.append("%s's qvm-firewall rules for %s networks (%s) were not evaluated: the outside "
                          "destination is unknown" % (client, "IPv4" if walk.family == 4 else "IPv6", key))
    walk.step("%s: qubes-firewall: %s's qvm-firewall list: %s by %s" % (netvm, client, action, which))
    return action == "accept"


def _route(walk, node, packet):
    """Where ``node`` sends the packet: ("local", None), ("down", client), ("up", netvm), ("out", None), ("none", why)."""
    model = walk.model
    daddr = packet["daddr"]
    if daddr == walk.addresses.get(node) or daddr == _local(node):
        return "local", None
    for client in model.clients(node):
        if walk.addresses.get(client) == daddr:
            return "down", client
    netvm = model.qubes[node].netvm
    if netvm is not None:
        return "up", netvm
    if daddr == OUTSIDE_ADDR:
        return "out", None
    return "none", "%s has no route to %s (not one of its clients)" % (node, _show(daddr, walk.addresses))


def _packet_at(walk, node, packet, came_from):
    """The packet as ``node`` sees it arriving: interface group and name."""
    packet = dict(packet)
    if came_from == "netvm":
        packet["iifgroup"], packet["iifname"] = 1, "eth0"
    elif came_from == "outside":
        packet["iifgroup"] = 0
    else:  # a client
        packet["iifgroup"], packet["iifname"] = 2, "vif0.0"
    packet["local_addrs"] = {walk.addresses.get(node), _local(node)}
    return packet


def _outside_ipv6(walk, uplink):
    """Over IPv6, the uplink's own IPv6 on the outside network is not the pillar's to know."""
    if walk.family == 6:
        walk.conditions.append("%s has IPv6 on its outside network" % uplink)


def _start(walk, source, target, port, interface, source_ip):
    """``(node, packet, came_from)`` where the walk begins, or ``(None, qube, None)`` (a qube without IPv6)."""
    model = walk.model
    packet = {"proto": walk.proto, "dport": port, "iifname": None, "family": walk.family}
    if is_outside(source):
        node = model.uplink(target)
        if walk.lacks_family(node):
            return None, node, None
        _outside_ipv6(walk, node)
        packet.update(saddr=source_ip, daddr=_local(node))
        packet = _packet_at(walk, node, packet, "outside")
        packet["iifname"] = interface
        walk.step("%s: sends to %s %s/%d" % (source, _show(packet["daddr"], walk.addresses), walk.proto, port))
        return node, packet, "outside"
    for qube in (source, target):
        if walk.lacks_family(qube):
            return None, qube, None
    daddr = OUTSIDE_ADDR if is_outside(target) else walk.address(target)
    packet.update(saddr=walk.address(source), daddr=daddr)
    walk.step("%s: sends to %s %s/%d" % (source, _show(daddr, walk.addresses), walk.proto, port))
    return source, packet, None


def _walk(walk, source, target, port, interface, source_ip):
    node, packet, came_from = _start(walk, source, target, port, interface, source_ip)
    if node is None:
        walk.step(walk.lacks_family(packet, step=True))
        return None, walk.lacks_family(packet)
    prev = source
    for _ in range(MAX_HOPS):
        if came_from is not None:
            _dnat(walk, node, packet)
        where, other = _route(walk, node, packet)
        if where == "none":
            walk.step(other)
            return None, other
        if came_from is None:  # generated in this qube: no input/forward chain
            if where == "local":
                return None, "%s cannot reach itself this way" % node
        elif where == "local":
            rule, _, origin = walk.first_match(node, walk.rules_of(node, "qf-input"), packet)
            if rule is None:
                why = ("%s rejects new connections from its clients (Qubes' input chain)" % node
                       if packet["iifgroup"] == 2 else
                       "%s drops new incoming connections (Qubes' input chain policy)" % node)
                walk.step(why)
                return None, why
            walk.step("%s: qf-input accepts it (%s)" % (node, origin))
            return (node, packet["dport"]), None
        else:
            rule, _, origin = walk.first_match(node, walk.rules_of(node, "qf-forward"), packet)
            if rule is not None:
                walk.step("%s: qf-forward accepts it (%s)" % (node, origin))
            elif where == "down":
                why = "%s drops forwarding to its client %s (Qubes' forward chain)" % (node, other)
                walk.step(why)
                return None, why
            else:
                walk.step("%s: Qubes' forward chain lets it %s" % (node, "up" if where == "up" else "out"))
            if came_from == "client" and not _firewall_list(walk, prev, node, packet):
                return None, "%s's qvm-firewall list drops it in %s" % (prev, node)
        if where == "up" and walk.model.qubes[node].vpn is not None:
            return _vpn_tunnel(walk, node, packet)
        if where == "out":
            _outside_ipv6(walk, node)
            walk.step("%s: leaves to the outside network, masqueraded as its outside address" % node)
            return (OUTSIDE_ADDR, packet["dport"]), None
        if where == "up" and came_from is not None:
            packet["saddr"] = walk.address(node)
            walk.step("%s: masquerades it as %s and sends it up to %s" % (node, packet["saddr"], other))
        elif where == "up":
            walk.step("%s: sends it up to its netvm %s" % (node, other))
        else:
            walk.step("%s: sends it down to its client %s" % (node, other))
        prev = node
        node = other
        if walk.lacks_family(node):
            walk.step(walk.lacks_family(node, step=True))
            return None, walk.lacks_family(node)
        packet = _packet_at(walk, node, packet, "netvm" if where == "down" else "client")
        came_from = "netvm" if where == "down" else "client"
    raise ValueError("the walk did not end after %d hops" % MAX_HOPS)


def _question(model, source, target, port, proto, source_ip):
    """The checked port (an int), and ``{4: ip, 6: ip}`` of ``source_ip`` (its family's; the other None)."""
    for name, what in ((source, "source"), (target, "target")):
        if not is_outside(name) and name not in model.qubes:
            raise FlowError("%s %r is neither a qube of qubes_firewall:qubes nor an outside name (%s)"
                            % (what, name, ", ".join(OUTSIDE_NAMES)))
    if source == target or (is_outside(source) and is_outside(target)):
        raise FlowError("source and target must differ, and one of them must be a qube")
    if proto not in ("tcp", "udp"):
        raise FlowError("proto must be tcp or udp, got %r" % proto)
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise FlowError("port must be an integer 1-65535, got %r" % port) from None
    if not 1 <= port <= 65535:
        raise FlowError("port must be an integer 1-65535, got %d" % port)
    sources = {4: None, 6: None}
    if source_ip is not None:
        try:
            sources[ipaddress.ip_address(str(source_ip)).version] = str(ipaddress.ip_address(str(source_ip)))
        except ValueError:
            raise FlowError("source_ip must be an IPv4 or IPv6 address, got %r" % (source_ip,)) from None
    return port, sources


def _family_answer(model, source, target, port, proto, interface, source_ip, now, family):
    """One family's walk: ``{allowed, reaches, reason, rules, steps, conditions, notes}``."""
    walk = _Walk(model, proto, now, family)
    reached, why = _walk(walk, source, target, port, interface, source_ip)
    reaches = None
    allowed = False
    if reached is not None:
        node, landed = reached
        node = target if node == OUTSIDE_ADDR else node
        reaches = {"node": node, "port": landed}
        allowed = node == target
        if allowed:
            why = "allowed: %s reaches %s %s/%d" % (source, target, proto, landed)
        else:
            why = "%s %s/%d lands in %s %s/%d, not in %s" % (
                _show(_local(model.uplink(target)), walk.addresses) if is_outside(source) else target,
                proto, port, node, proto, landed, target)
    return {
        "allowed": allowed,
        "reaches": reaches,
        "reason": why,
        "rules": walk.rules,
        "steps": walk.steps,
        "conditions": walk.conditions if allowed else [],
        "notes": walk.notes,
        "tunnel_down": tunnel_down(model, source, target, walk),
    }


def family_verdict(answer):
    """One family's answer in a few words: ``allowed``, or ``not (why)``."""
    return "allowed" if answer["allowed"] else "not (%s)" % answer["reason"]


def check(model, source, target, port, proto="tcp", interface=None, source_ip=None, now=None):
    """
    May a new ``proto`` connection from ``source`` to ``target`` port
    ``port`` pass?  Returns, for IPv4::

        {"allowed": bool, "source", "target", "proto", "port",
         "reaches": {"node", "port"} | None,   # where the packet ends up
         "reason": str,                         # why not, or what lets it
         "rules": [{"qube", "chain", "comment", "rule"}],  # the formula's rules on the way
         "steps": [str],                        # the walk, hop by hop
         "conditions": [str], "notes": [str],
         "ipv6": {"allowed", "reaches", "reason", "rules", "steps", "conditions", "notes", "tunnel_down"},
         "families": {"ipv4": "allowed" | "not (why)", "ipv6": ...},
         "tunnel_down": [{"vpn", "leaks", "reason", "dns"}]}  # per VPN qube it leaves by

    ``ipv6`` is the same walk over IPv6 (it stops at the first qube without
    IPv6).  ``reaches`` may be another node than ``target`` (a port
    forward's DNAT sends the uplink's port elsewhere): then ``allowed`` is
    False.  ``source_ip`` (IPv4 or IPv6) is the outside source of its family.
    """
    port, sources = _question(model, source, target, port, proto, source_ip)
    now = time.time() if now is None else now
    answers = {family: _family_answer(model, source, target, port, proto, interface, sources[family], now, family)
               for family in (4, 6)}
    out = {"allowed": answers[4]["allowed"], "source": source, "target": target, "proto": proto, "port": port}
    for key in ("reaches", "reason", "rules", "steps", "conditions", "notes", "tunnel_down"):
        out[key] = answers[4][key]
    out["ipv6"] = answers[6]
    out["families"] = {FAMILY_NAMES[f]: family_verdict(answers[f]) for f in (4, 6)}
    return out


def matrix(model, nodes, ports, proto="tcp", **kwargs):
    """``{(source, target, port): check(...)}`` for every ordered pair of ``nodes``."""
    out = {}
    for source in nodes:
        for target in nodes:
            if source == target or (is_outside(source) and is_outside(target)):
                continue
            for port in ports:
                out[(source, target, port)] = check(model, source, target, port, proto, **kwargs)
    return out


def _walk_text(answer, title):
    """The walk, conditions, rules and notes of one family's answer (``title``: "" or "IPv6 ")."""
    lines = []
    if answer["steps"]:
        lines += ["", "%spath, hop by hop:" % title]
        lines += ["  %d. %s" % (i, step) for i, step in enumerate(answer["steps"], 1)]
    if answer["conditions"]:
        lines += ["", "%sonly if:" % title] + ["  - " + c for c in answer["conditions"]]
    if answer["rules"]:
        lines += ["", "the formula's %srules on the way:" % title]
        for rule in answer["rules"]:
            lines.append("  %s %s: %s" % (rule["qube"], rule["chain"], rule["comment"]))
            lines.append("      %s" % rule["rule"])
            if rule.get("element"):
                lines.append("      element %s" % rule["element"])
    if answer["notes"]:
        lines += ["", "%snotes:" % title] + ["  - " + n for n in answer["notes"]]
    return lines


def _family_word(answer, lead):
    """A family's verdict on the line under the headline (its reason unless the headline gave it)."""
    if answer["allowed"]:
        return "allowed"
    return "blocked" if answer is lead else family_verdict(answer)


def check_text(answer):
    """
    ``check``'s answer as text, narrative first: the verdict (IPv4's; when
    only IPv6 lets it through, IPv6's), a line per family, the walk hop by
    hop, then the formula's rules on the way, the conditions and the notes;
    then the same for IPv6 when the path has IPv6.
    """
    ipv6 = answer.get("ipv6")
    lead = answer
    verdict = "ALLOWED" if answer["allowed"] else "BLOCKED"
    if ipv6 and ipv6["allowed"] and not answer["allowed"]:
        lead, verdict = ipv6, "ALLOWED over IPv6 only"
    reason = lead["reason"]
    if reason.startswith("allowed: "):
        reason = reason[len("allowed: "):]
    lines = ["%s: %s -> %s %s/%s: %s" % (verdict, answer["source"], answer["target"], answer["proto"],
                                       answer["port"], reason)]
    if answer.get("families"):
        lines.append("; ".join("%s: %s" % (name, _family_word(fam, lead)) for name, fam in
                               (("ipv4", answer), ("ipv6", ipv6)) if fam is not None))
    lines += _walk_text(answer, "")
    if ipv6 and len(ipv6["steps"]) > 1:  # walked beyond "X has no IPv6"
        lines += _walk_text(ipv6, "IPv6 ")
    lines += _tunnel_down_text(answer.get("tunnel_down") or [])
    return "\n".join(lines)


# --------------------------------------------------------------------------
# VPN qubes (``qubes:<qube>:vpn``): through the tunnel, and what if it is down
# --------------------------------------------------------------------------


def _vpn_tunnel(walk, node, packet):
    """A VPN qube routes what goes up into its tunnel: out to the world, or nowhere in Qubes."""
    vpn = walk.model.qubes[node].vpn
    tunnel = ", ".join(vpn.interfaces)
    if packet["daddr"] == OUTSIDE_ADDR:
        walk.step("%s: routes it into the tunnel (%s); it leaves at the VPN server, not by %s's upstream"
                  % (node, tunnel, node))
        return (OUTSIDE_ADDR, packet["dport"]), None
    why = ("%s routes it into the tunnel (%s), not to its upstream: a VPN qube lets its clients out only "
           "through the tunnel (qubes_firewall:qubes:%s:vpn)" % (node, tunnel, node))
    walk.step(why)
    return None, why


def _vpn_above(model, source, target):
    """The VPN qubes a flow from ``source`` leaves upward (``target`` not behind them)."""
    if is_outside(source):
        return []
    chain = model.chain(source)
    behind = set() if is_outside(target) else set(model.chain(target))
    return [q for q in chain[1:] if model.qubes[q].vpn is not None and q not in behind]


def tunnel_down(model, source, target, walk=None):
    """
    Does the flow leak when the tunnel of a VPN qube on its way is down?  For
    each VPN qube the flow leaves upward: ``{"vpn", "leaks", "reason", "dns"}``,
    from the VPN qube's planned forward rules evaluated on a client's packet
    that the fallen-back routes send out by ``eth0`` (Qubes' own chains let
    such a packet through, so only the formula's drop stops it).
    """
    walk = walk or _Walk(model, "tcp", 0)
    out = []
    for vpn in _vpn_above(model, source, target):
        chain = next((c for c in walk.chains(vpn) if c.name == qf_vpn.FORWARD), None)
        rules = [([m.json for m in r.matches], r.verdict.json, r.comment) for r in (chain.rules if chain else ())]
        sets = {name: [e.key[0] for e in s.elements] for name, s in walk.sets(vpn).items()}
        verdict, by = qf_vpn.forward_verdict(rules, qf_vpn.leak_packet("up"), sets)
        dns = qf_vpn.VIRTUAL_DNS
        resolvers = model.qubes[vpn].vpn.dns
        out.append({
            "vpn": vpn,
            "leaks": verdict != "drop",
            "reason": ("the routes fall back to %s's upstream (eth0), where %s drops it (%s: %s)"
                       % (vpn, vpn, qf_vpn.FORWARD, by) if verdict == "drop"
                       else "%s forwards it out by its upstream (eth0) in clear" % vpn),
            "dns": ("%s: sent to %s through the tunnel; dropped with it when it is down"
                    % (" and ".join(dns), ", ".join(resolvers)) if resolvers
                    else "%s: dropped (dns: none)" % " and ".join(dns)),
        })
    return out


def _tunnel_down_text(entries):
    lines = []
    for entry in entries:
        lines += ["", "if %s's tunnel is down: %s" % (entry["vpn"], "LEAKS" if entry["leaks"] else "no leak"),
                  "  " + entry["reason"], "  DNS " + entry["dns"]]
    return lines
