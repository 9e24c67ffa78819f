"""
Status and drift of one qube's rules: pure functions over the planner's plan
(``qubes_firewall_plan.QubePlan``), the live state parsed from ``nft -j``
(``qubes_firewall_nft.live_state``) and the persisted files
(``qubes_firewall.persisted_files``: ``{path: (old, new)}``).

- ``status``: every rule of the chains the formula owns, with its pillar origin
  (read back from the rule's comment) and its packet/byte counters, the seed
  document's "look at the counters" as data.
- ``drift``: what differs between the pillar, the live ruleset and the boot
  block: rules missing (a restart, a hand ``flush``), rules nobody planned
  (hand edits in owned chains), a chain with another hook, missing or
  duplicated jumps, a lost or edited boot block.

Nothing here touches the system.  Loaded by Salt as ``qubes_firewall_report``.
"""

import re

__virtualname__ = "qubes_firewall_report"

_COMMENT = re.compile(r"\Aqf (?P<origin>.+) #(?P<digest>[0-9a-f]{10})\Z")


def __virtual__():
    return __virtualname__


def origin_of(comment):
    """The pillar origin written in a rule comment ("qf <origin> #<digest>"), or None."""
    found = _COMMENT.match(comment or "")
    return found.group("origin") if found else None


def _planned(plan):
    """{comment: (chain name, Rule)} of every planned rule."""
    return {r.comment: (c.name, r) for c in plan.chains for r in c.rules}


def status(plan, live, origin=None):
    """
    ``{"qube", "rules": [...], "by_origin": {...}, "missing": [...], "total"}``.

    ``rules``: one entry per live rule in an owned chain, in chain order, with
    ``chain``, ``origin`` (None for a rule the formula did not write),
    ``packets``, ``bytes`` and ``rule`` (the planned text, or "not in the
    pillar").  ``by_origin`` sums the counters per pillar entry, e.g.
    ``port_forwards:https``, so one forward reads the same in every hop.
    ``missing``: planned rules absent from the live ruleset.  ``origin``
    keeps only rules whose origin starts with it.
    """
    planned = _planned(plan)
    rules, by_origin, seen = [], {}, set()
    chains = [c.name for c in plan.chains] + sorted(set(live["chains"]) - {c.name for c in plan.chains})
    for chain in chains:
        for handle, comment, counters in live["chains"].get(chain, {}).get("rules", []):
            found = origin_of(comment)
            if origin and not (found or "").startswith(origin):
                continue
            counters = counters or {"packets": 0, "bytes": 0}
            entry = {
                "chain": chain,
                "origin": found,
                "packets": counters["packets"],
                "bytes": counters["bytes"],
                "handle": handle,
            }
            if comment in planned and planned[comment][0] == chain:
                seen.add(comment)
                entry["rule"] = planned[comment][1].body
            else:
                entry["rule"] = "not in the pillar (%s)" % (comment or "no comment")
            rules.append(entry)
            if found:
                key = _entry_key(found)
                total = by_origin.setdefault(key, {"packets": 0, "bytes": 0, "rules": 0})
                total["packets"] += entry["packets"]
                total["bytes"] += entry["bytes"]
                total["rules"] += 1
    missing = [
        "%s: %s" % (chain, rule.comment)
        for comment, (chain, rule) in planned.items()
        if comment not in seen and (not origin or rule.origin.startswith(origin))
    ]
    return {
        "qube": plan.qube,
        "rules": rules,
        "by_origin": by_origin,
        "missing": missing,
        "total": {
            "rules": len(rules),
            "packets": sum(r["packets"] for r in rules),
            "bytes": sum(r["bytes"] for r in rules),
        },
    }


def _entry_key(origin):
    """The pillar entry of an origin: "port_forwards:https dnat web" -> "port_forwards:https"."""
    return origin.split(" ", 1)[0]


def status_table(report):
    """The status as aligned text lines (for docs and a quick look)."""
    rows = [("chain", "packets", "bytes", "origin")]
    for r in report["rules"]:
        rows.append((r["chain"], str(r["packets"]), str(r["bytes"]), r["origin"] or "(not written by the formula)"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "%s  %s  %s  %s" % (row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3])
        for row in rows
    )


def live_drift(plan, live):
    """
    What differs between the plan and the live owned chains, as a list of
    ``{"kind", "chain", "detail"}`` (empty when they match).  Kinds:
    ``chain missing``, ``chain hook``, ``rule missing``, ``rule unexpected``,
    ``rule order``, ``chain unexpected``, ``jump missing``, ``jump duplicated``,
    ``custom chain missing``.
    """
    out = []

    def add(kind, chain, detail):
        out.append({"kind": kind, "chain": chain, "detail": detail})

    for custom, _ in plan.jumps:
        if custom not in live["custom_chains"]:
            add("custom chain missing", custom,
                "Qubes' %s chain is absent: is the base firewall of this qube loaded?" % custom)
    for chain in plan.chains:
        current = live["chains"].get(chain.name)
        if current is None:
            add("chain missing", chain.name,
                "the chain is absent, %d planned rules are not loaded" % len(chain.rules))
            continue
        if current["hook"] != chain.hook:
            add("chain hook", chain.name, "live %r, planned %r" % (current["hook"], chain.hook))
        wanted = [r.comment for r in chain.rules]
        have = [c for _, c, _ in current["rules"]]
        for rule in chain.rules:
            if rule.comment not in have:
                add("rule missing", chain.name, rule.comment)
        for handle, comment, _ in current["rules"]:
            if comment not in wanted:
                add("rule unexpected", chain.name,
                    "handle %d: %s" % (handle, comment or "a rule without comment (hand edit?)"))
        common = [c for c in have if c in wanted]
        if common != [c for c in wanted if c in have] or len(have) != len(set(have)):
            add("rule order", chain.name, "the rules are duplicated or out of order")
    for name in sorted(set(live["chains"]) - {c.name for c in plan.chains}):
        add("chain unexpected", name, "an owned chain the pillar no longer implies (%d rules)"
            % len(live["chains"][name]["rules"]))
    for custom, target in plan.jumps:
        if custom not in live["custom_chains"]:
            continue
        handles = live["jumps"].get((custom, target), [])
        if not handles:
            add("jump missing", custom, "no jump to %s: its rules are never reached" % target)
        elif len(handles) > 1:
            add("jump duplicated", custom, "%d jumps to %s (handles %s)"
                % (len(handles), target, ", ".join(str(h) for h in handles)))
    return out


def persisted_drift(files, block_of):
    """
    What differs in the boot replay: ``files`` is ``{path: (old, new)}``
    (``qubes_firewall.persisted_files``); ``block_of(text)`` returns the managed
    block's body or None.  A list of ``{"kind", "path", "detail"}``, kinds
    ``block missing``, ``block differs``, ``block stale``, ``file missing``.
    """
    out = []
    for path, (old, new) in sorted(files.items()):
        if old == new:
            continue
        have, want = block_of(old), block_of(new)
        if want is None:
            kind, detail = "block stale", "a block the pillar no longer puts in this file"
        elif old is None:
            kind, detail = "file missing", "the file is absent, the rules do not come back at boot"
        elif have is None:
            kind, detail = "block missing", "the managed block is gone, the rules do not come back at boot"
        else:
            kind, detail = "block differs", "the block differs from the pillar's (edited by hand, or an older pillar)"
        out.append({"kind": kind, "path": path, "detail": detail})
    return out


def drift(plan, live, files, block_of):
    """
    ``{"qube", "drifted", "live", "persisted"}``: ``live_drift`` and
    ``persisted_drift`` together; ``drifted`` is True when either is non-empty.
    """
    live_items = live_drift(plan, live)
    persisted = persisted_drift(files, block_of)
    return {
        "qube": plan.qube,
        "drifted": bool(live_items or persisted),
        "live": live_items,
        "persisted": persisted,
    }
