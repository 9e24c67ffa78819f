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
    ip = ipaddress.IPv4Address(addr)
    for item in items:
        net = "%s/%d" % (item["prefix"]["addr"], item["prefix"]["len"]) if isinstance(item, dict) else item
        if ip in ipaddress.IPv4Network(net, strict=False):
            return True
    return False


def _field(left, packet):
    """The packet's value for a key of a set lookup (meta l4proto, ip daddr, th dport)."""
    if left == {"meta": {"key": "l4proto"}}:
        return packet["proto"]
    if left == {"payload": {"protocol": "ip", "field": "daddr"}}:
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
        elif payload and payload["protocol"] == "ip":
            field = payload["field"]
            if field not in ("saddr", "daddr"):
                raise ValueError("unknown ip statement %r" % (stmt,))
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
# the walk
# --------------------------------------------------------------------------


def is_outside(name):
    return name in OUTSIDE_NAMES


def _local(qube):
    return "%s%s>" % (_LOCAL_PREFIX, qube)


def _show(addr, model):
    if addr == OUTSIDE_ADDR:
        return "an outside address"
    if addr and addr.startswith(_LOCAL_PREFIX):
        return "%s's outside address" % addr[len(_LOCAL_PREFIX):-1]
    names = [n for n, a in model.addresses.items() if a == addr]
    return "%s (%s)" % (addr, names[0]) if names else str(addr)


class _Walk:
    def __init__(self, model, proto, now):
        self.model = model
        self.proto = proto
        self.now = now
        self.plans = {}
        self.steps = []
        self.rules = []
        self.conditions = []
        self.notes = []

    def plan(self, qube):
        if qube not in self.plans:
            self.plans[qube] = qf_plan.plan_qube(self.model, qube)
        return self.plans[qube]

    def chain(self, qube, name):
        for chain in self.plan(qube).chains:
            if chain.name == name:
                return chain
        return None

    def rules_of(self, qube, name):
        chain = self.chain(qube, name)
        return chain.rules if chain is not None else ()

    def first_match(self, qube, rules, packet):
        """The first rule that matches, its set element (or None) and its origin; or (None, None, None)."""
        sets = {s.name: s for s in self.plan(qube).sets}
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
        addr = self.model.addresses.get(qube)
        if addr is None:
            raise FlowError("qubes_firewall:addresses:%s: check needs the address of %s" % (qube, qube))
        return addr


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
    chains = [c for c in walk.plan(node).chains if c.hook and c.hook[1] == "prerouting"]
    sets = {s.name: s for s in walk.plan(node).sets}
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
                  % (node, chain.name, _show(packet["daddr"], walk.model), packet["dport"]))
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
    walk.step("%s: qubes-firewall: %s's qvm-firewall list: %s by %s" % (netvm, client, action, which))
    return action == "accept"


def _route(walk, node, packet):
    """Where ``node`` sends the packet: ("local", None), ("down", client), ("up", netvm), ("out", None), ("none", why)."""
    model = walk.model
    daddr = packet["daddr"]
    if daddr == model.addresses.get(node) or daddr == _local(node):
        return "local", None
    for client in model.clients(node):
        if model.addresses.get(client) == daddr:
            return "down", client
    netvm = model.qubes[node].netvm
    if netvm is not None:
        return "up", netvm
    if daddr == OUTSIDE_ADDR:
        return "out", None
    return "none", "%s has no route to %s (not one of its clients)" % (node, _show(daddr, model))


def _packet_at(walk, node, packet, came_from):
    """The packet as ``node`` sees it arriving: interface group and name."""
    packet = dict(packet)
    if came_from == "netvm":
        packet["iifgroup"], packet["iifname"] = 1, "eth0"
    elif came_from == "outside":
        packet["iifgroup"] = 0
    else:  # a client
        packet["iifgroup"], packet["iifname"] = 2, "vif0.0"
    packet["local_addrs"] = {walk.model.addresses.get(node), _local(node)}
    return packet


def _walk(walk, source, target, port, interface, source_ip):
    model = walk.model
    packet = {"proto": walk.proto, "dport": port, "iifname": None}
    if is_outside(source):
        node = model.uplink(target)
        packet.update(saddr=source_ip, daddr=_local(node))
        packet = _packet_at(walk, node, packet, "outside")
        packet["iifname"] = interface
        walk.step("%s: sends to %s %s/%d" % (source, _show(packet["daddr"], model), walk.proto, port))
        came_from = "outside"
    else:
        daddr = OUTSIDE_ADDR if is_outside(target) else walk.address(target)
        packet.update(saddr=walk.address(source), daddr=daddr)
        node, came_from = source, None
        walk.step("%s: sends to %s %s/%d" % (source, _show(daddr, model), walk.proto, port))
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
        packet = _packet_at(walk, node, packet, "netvm" if where == "down" else "client")
        came_from = "netvm" if where == "down" else "client"
    raise ValueError("the walk did not end after %d hops" % MAX_HOPS)


def check(model, source, target, port, proto="tcp", interface=None, source_ip=None, now=None):
    """
    May a new ``proto`` connection from ``source`` to ``target`` port
    ``port`` pass?  Returns::

        {"allowed": bool, "source", "target", "proto", "port",
         "reaches": {"node", "port"} | None,   # where the packet ends up
         "reason": str,                         # why not, or what lets it
         "rules": [{"qube", "chain", "comment", "rule"}],  # the formula's rules on the way
         "steps": [str],                        # the walk, hop by hop
         "conditions": [str], "notes": [str],
         "tunnel_down": [{"vpn", "leaks", "reason", "dns"}]}  # per VPN qube it leaves by

    ``reaches`` may be another node than ``target`` (a port forward's DNAT
    sends the uplink's port elsewhere): then ``allowed`` is False.
    """
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
    if source_ip is not None:
        ipaddress.IPv4Address(source_ip)
    walk = _Walk(model, proto, time.time() if now is None else now)
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
                _show(_local(model.uplink(target)), model) if is_outside(source) else target,
                proto, port, node, proto, landed, target)
    return {
        "allowed": allowed,
        "source": source,
        "target": target,
        "proto": proto,
        "port": port,
        "reaches": reaches,
        "reason": why,
        "rules": walk.rules,
        "steps": walk.steps,
        "conditions": walk.conditions if allowed else [],
        "notes": walk.notes,
        "tunnel_down": tunnel_down(model, source, target, walk),
    }


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


def check_text(answer):
    """
    ``check``'s answer as text, narrative first: the verdict, the walk hop by
    hop, then the formula's rules on the way, the conditions and the notes.
    """
    verdict = "ALLOWED" if answer["allowed"] else "BLOCKED"
    reason = answer["reason"]
    if reason.startswith("allowed: "):
        reason = reason[len("allowed: "):]
    lines = ["%s: %s -> %s %s/%s: %s" % (verdict, answer["source"], answer["target"], answer["proto"],
                                       answer["port"], reason)]
    if answer["steps"]:
        lines += ["", "path, hop by hop:"]
        lines += ["  %d. %s" % (i, step) for i, step in enumerate(answer["steps"], 1)]
    if answer["conditions"]:
        lines += ["", "only if:"] + ["  - " + c for c in answer["conditions"]]
    if answer["rules"]:
        lines += ["", "the formula's rules on the way:"]
        for rule in answer["rules"]:
            lines.append("  %s %s: %s" % (rule["qube"], rule["chain"], rule["comment"]))
            lines.append("      %s" % rule["rule"])
            if rule.get("element"):
                lines.append("      element %s" % rule["element"])
    if answer["notes"]:
        lines += ["", "notes:"] + ["  - " + n for n in answer["notes"]]
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
        plan = walk.plan(vpn)
        chain = next((c for c in plan.chains if c.name == qf_vpn.FORWARD), None)
        rules = [([m.json for m in r.matches], r.verdict.json, r.comment) for r in (chain.rules if chain else ())]
        sets = {s.name: [e.key[0] for e in s.elements] for s in plan.sets}
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
