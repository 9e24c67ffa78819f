"""
The pillar's topology as a picture: Graphviz DOT and Mermaid text, from the
validated model (``_qubes_firewall_model.Model``).

- every qube with its role: ``uplink`` (netvm none), ``service`` (a network
  service qube: VPN, DNS, IPS), ``firewall`` (provides network), ``client``;
  a solid edge from each netvm to its clients;
- ``outside`` above every uplink;
- each port forward drawn as its path through the hops (dashed, labelled with
  the forward's name, protocol and ports);
- each connection as a bold edge A -> B (protocol, ports);
- each qubes.ConnectTCP binding as a dotted edge client -> server (qrexec,
  no IP networking).

Both families: in a pillar with IPv6 (``addresses6``, or a qvm-firewall rule
for an IPv6 network), each qube shows its IPv6 address, each netvm link,
port forward and connection says whether it carries ``IPv4, IPv6`` (every
qube on its way has IPv6) or ``IPv4 only``, and each qube with a qvm-firewall
list in the pillar shows how many rules it has and how many of them are for
IPv6 networks (``dst6``).  A pillar without IPv6 is drawn as before.

Pure.
"""

import ipaddress
import re

import _qubes_firewall_flow as qf_flow

OUTSIDE = "(outside)"  # not a valid qube name: never collides


def role(model, name):
    qube = model.qubes.get(name)
    if qube is None:
        return "other"
    if qube.netvm is None:
        return "uplink"
    if qube.service:
        return "service"
    if qube.provides_network:
        return "firewall"
    return "client"


def _ports(proto, ports):
    text = proto or "any"
    if ports:
        text += "/" + ",".join(str(p) for p in ports)
    return text


def _forward_label(fwd):
    ports = str(fwd.port) if fwd.external_port == fwd.port else "%d->%d" % (fwd.external_port, fwd.port)
    extra = []
    if fwd.interfaces:
        extra.append("on " + ",".join(fwd.interfaces))
    if fwd.sources:
        extra.append("from " + ",".join(fwd.sources))
    return " ".join(["%s %s/%s" % (fwd.name, fwd.proto, ports)] + extra)


def _tcp_label(entry):
    text = "ConnectTCP %d" % entry.port
    if entry.local_port != entry.port:
        text += " (local %d)" % entry.local_port
    return text


def _is_ipv6_rule(rule):
    try:
        return ipaddress.ip_network(rule.dsthost or "", strict=False).version == 6
    except ValueError:
        return False


def has_ipv6(model):
    """Does the pillar speak of IPv6 (a qube with IPv6, or a qvm-firewall rule for an IPv6 network)?"""
    return bool(model.addresses6) or any(_is_ipv6_rule(r) for q in model.qubes.values() for r in q.firewall or ())


def _families(model, path):
    """The address families along ``path`` (a list of qubes): IPv4, and IPv6 when every one has it."""
    if path is None:
        return ("ipv4",)
    return ("ipv4", "ipv6") if not qf_flow.missing_ipv6(model, path) else ("ipv4",)


def _family_label(families):
    return "IPv4, IPv6" if "ipv6" in families else "IPv4 only"


def _with_family(label, families):
    return "%s (%s)" % (label, _family_label(families)) if label else _family_label(families)


def _node_extra(model, name):
    """A qube's lines beside its IPv4 address in a pillar with IPv6: its IPv6, its qvm-firewall list."""
    out = [model.addresses6[name]] if name in model.addresses6 else []
    rules = model.qubes[name].firewall
    if rules is not None:
        ipv6 = sum(1 for r in rules if _is_ipv6_rule(r))
        out.append("qvm-firewall: %d rule%s%s" % (len(rules), "" if len(rules) == 1 else "s",
                                                 ", %d dst6" % ipv6 if ipv6 else ""))
    return out


def graph(model):
    """
    The diagram as plain data: ``{"nodes": [(name, role, address)], "edges":
    [(kind, from, to, label)], "ipv6": bool, "extra": {name: [line]},
    "families": [families of each edge]}``; kinds ``netvm``, ``uplink``,
    ``forward``, ``connection``, ``connect_tcp``; families ``("ipv4",)``,
    ``("ipv4", "ipv6")``, or ``()`` (qrexec).  In a pillar with IPv6 the
    labels name the families.  Both renderers draw this.
    """
    nodes = []
    names = sorted(model.qubes, key=lambda n: (len(model.chain(n)), n))
    if any(model.qubes[n].netvm is None for n in names):
        nodes.append((OUTSIDE, "outside", ""))
    for name in names:
        nodes.append((name, role(model, name), model.addresses.get(name, "")))
    extra = []
    for entry in model.connect_tcp:
        for name in (entry.client, entry.server):
            if name not in model.qubes and name not in extra:
                extra.append(name)
    nodes += [(name, "other", "") for name in extra]
    edges, families = [], []
    for name in names:
        netvm = model.qubes[name].netvm
        edges.append(("netvm", netvm, name, "") if netvm else ("uplink", OUTSIDE, name, ""))
        families.append(_families(model, [name, netvm] if netvm else [name]))
    for fwd in model.port_forwards:
        hops = [OUTSIDE] + qf_flow.forward_path(model, fwd)
        for i, (a, b) in enumerate(zip(hops, hops[1:])):
            # the whole story on the first hop, the name on the others
            edges.append(("forward", a, b, _forward_label(fwd) if i == 0 else fwd.name))
            families.append(_families(model, hops[1:]))
    for conn in model.connections:
        edges.append(("connection", conn.source, conn.target, _ports(conn.proto, conn.ports)))
        families.append(_families(model, qf_flow.connection_path(model, conn)))
    for entry in model.connect_tcp:
        edges.append(("connect_tcp", entry.client, entry.server, _tcp_label(entry)))
        families.append(())
    ipv6 = has_ipv6(model)
    if ipv6:
        edges = [(kind, a, b, _with_family(label, fam) if fam else label)
                 for (kind, a, b, label), fam in zip(edges, families)]
    extra = {name: _node_extra(model, name) for name in names} if ipv6 else {}
    return {"nodes": nodes, "edges": edges, "ipv6": ipv6, "extra": {k: v for k, v in extra.items() if v},
            "families": families}


# --------------------------------------------------------------------------
# Mermaid
# --------------------------------------------------------------------------

_MERMAID_CLASSES = (
    ("outside", "fill:#eeeeee,stroke:#555555"),
    ("uplink", "fill:#f8d7da,stroke:#a33"),
    ("firewall", "fill:#fff3cd,stroke:#a80"),
    ("service", "fill:#d1ecf1,stroke:#077"),
    ("client", "fill:#d4edda,stroke:#275"),
    ("other", "fill:#ffffff,stroke:#777,stroke-dasharray: 4 2"),
)
_MERMAID_ARROWS = {
    "netvm": "---",
    "uplink": "---",
    "forward": "-.->",
    "connection": "==>",
    "connect_tcp": "-.->",
}


def _node_id(name):
    return "n_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _mermaid_text(text):
    return text.replace('"', "'")


def mermaid(model):
    """The topology as a Mermaid ``flowchart`` (paste into a ```mermaid block)."""
    data = graph(model)
    lines = ["flowchart TB"]
    for name, kind, addr in data["nodes"]:
        if kind == "outside":
            lines.append('    %s(("outside"))' % _node_id(name))
            continue
        rows = [addr] if addr else []
        rows += data["extra"].get(name, [])
        label = name if kind == "other" else "%s<br/><i>%s</i>%s" % (name, kind, "".join("<br/>" + x for x in rows))
        if kind == "other":
            label += "<br/><i>not in qubes</i>"
        lines.append('    %s["%s"]:::%s' % (_node_id(name), _mermaid_text(label), kind))
    for kind, a, b, label in data["edges"]:
        arrow = _MERMAID_ARROWS[kind]
        if kind == "connect_tcp":
            label = label + " (qrexec)"
        if label:
            lines.append('    %s %s|"%s"| %s' % (_node_id(a), arrow, _mermaid_text(label), _node_id(b)))
        else:
            lines.append("    %s %s %s" % (_node_id(a), arrow, _node_id(b)))
    for kind, style in _MERMAID_CLASSES:
        lines.append("    classDef %s %s" % (kind, style))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Graphviz DOT
# --------------------------------------------------------------------------

_DOT_NODES = {
    "outside": 'shape=ellipse, style=filled, fillcolor="#eeeeee"',
    "uplink": 'shape=box, style="rounded,filled", fillcolor="#f8d7da"',
    "firewall": 'shape=box, style="rounded,filled", fillcolor="#fff3cd"',
    "service": 'shape=box, style="rounded,filled", fillcolor="#d1ecf1"',
    "client": 'shape=box, style="rounded,filled", fillcolor="#d4edda"',
    "other": 'shape=box, style="rounded,dashed"',
}
_DOT_EDGES = {
    "netvm": "dir=none, penwidth=2",
    "uplink": "dir=none, penwidth=2",
    "forward": 'style=dashed, color="#c0392b", fontcolor="#c0392b", constraint=false',
    "connection": 'style=bold, color="#1f618d", fontcolor="#1f618d", constraint=false',
    "connect_tcp": 'style=dotted, color="#7d3c98", fontcolor="#7d3c98", constraint=false',
}


def _dot_quote(text):
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def dot(model):
    """The topology as a Graphviz digraph (``dot -Tpng``)."""
    data = graph(model)
    lines = [
        "digraph qubes_firewall {",
        "    rankdir=TB;",
        '    node [fontname="Helvetica", fontsize=11];',
        '    edge [fontname="Helvetica", fontsize=9];',
    ]
    for name, kind, addr in data["nodes"]:
        if kind in ("outside", "other"):
            label = "outside" if kind == "outside" else "%s\n(not in qubes)" % name
        else:
            rows = ([addr] if addr else []) + data["extra"].get(name, [])
            label = "%s\n%s%s" % (name, kind, "".join("\n" + x for x in rows))
        lines.append("    %s [label=%s, %s];" % (_dot_quote(name), _dot_quote(label), _DOT_NODES[kind]))
    for kind, a, b, label in data["edges"]:
        attrs = _DOT_EDGES[kind]
        if kind == "connect_tcp":
            label += " (qrexec)"
        if label:
            attrs = "label=%s, %s" % (_dot_quote(label), attrs)
        lines.append("    %s -> %s [%s];" % (_dot_quote(a), _dot_quote(b), attrs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(model, fmt="mermaid"):
    """``mermaid`` or ``dot`` text."""
    if fmt == "mermaid":
        return mermaid(model)
    if fmt == "dot":
        return dot(model)
    raise ValueError("unknown diagram format %r (mermaid or dot)" % fmt)
