"""
Status and drift of one qube's rules: pure functions over the planner's plan
(``_qubes_firewall_plan.QubePlan``), the live state parsed from ``nft -j``
(``_qubes_firewall_nft.live_state``) and the persisted files
(``qubes_firewall.persisted_files``: ``{path: (old, new)}``).

- ``status``: every rule of the chains the formula owns and every element of
  its sets and maps (one per port forward, hop and role), with its pillar
  origin (read back from the comment) and its packet/byte counters, the Qubes firewall manual page's "look at the counters" as data.
- ``drift``: what differs between the pillar, the live ruleset and the boot
  block, by content: rules and elements missing (a restart, a hand
  ``flush``), edited (same comment, other statements), or nobody planned
  (hand edits in owned chains and sets), a chain with another hook, missing
  or duplicated jumps, a lost or edited boot block.

Nothing here touches the system.
"""

import json

# what each kind of owned set holds, by name prefix
_SET_ROLES = (("qf-nat-", "dnat"), ("qf-redir-", "redirect"), ("qf-fwd-", "forward"), ("qf-in-", "input"))


def origin_of(comment):
    """The pillar origin written in a comment ("qf <origin>"), or None (also for the jumps)."""
    comment = comment or ""
    if not comment.startswith("qf ") or comment == "qf jump":
        return None
    origin = comment[3:]
    # comments written by older versions end with " #<digest>"
    head, _, tail = origin.rpartition(" #")
    if head and len(tail) == 10 and all(c in "0123456789abcdef" for c in tail):
        origin = head
    return origin or None


def _role(set_ref):
    """What an owned set holds, by its name ("qf-nat-...", or "ip6 qf-nat-..." in ip6)."""
    set_name = set_ref.rpartition(" ")[2]
    return next((role for prefix, role in _SET_ROLES if set_name.startswith(prefix)), "set")


def _key_text(key):
    """A live element's key (a tuple of parts, or JSON of a form the formula never writes) as text."""
    return " . ".join(str(p) for p in key) if isinstance(key, tuple) else key


def _value_text(value):
    if value is None:
        return ""
    return " : " + _key_text(value)


def status(plan, live, origin=None):
    """
    ``{"qube", "rules": [...], "by_origin": {...}, "missing": [...], "lookups": [...], "total"}``.

    ``rules``: one entry per live rule of an owned chain and per element of
    an owned set or map (each port forward is one element per hop and role),
    with ``chain`` (the chain, or the set/map), ``kind`` ("rule" or the
    element's role: dnat, redirect, forward, input), ``origin`` (None when
    the formula did not write it), ``packets``, ``bytes`` and ``rule`` (the
    planned text, or "not in the pillar").  A planned rule that looks up a
    group of forwards has no counter: it is not in ``rules`` but in
    ``lookups`` ("chain: origin"), so every counter shown is one forward's
    or one rule's, never a group's.  ``by_origin`` sums the counters
    per pillar entry, e.g. ``port_forwards:https`` or ``connections:0``, so one
    forward reads the same in every hop.  ``missing``: planned rules and
    elements absent from the live ruleset.  ``origin`` keeps only entries
    whose origin starts with it.
    """
    out = _Status(origin)
    out.chains(plan, live)
    out.sets(plan, live)
    return {
        "qube": plan.qube,
        "rules": out.rules,
        "by_origin": out.by_origin,
        "missing": out.missing,
        "lookups": out.lookups,
        "total": {
            "rules": len(out.rules),
            "packets": sum(r["packets"] for r in out.rules),
            "bytes": sum(r["bytes"] for r in out.rules),
        },
    }


class _Status:
    """What ``status`` collects, walking the live owned chains and sets next to the plan's."""

    def __init__(self, origin):
        self.origin = origin
        self.rules, self.by_origin, self.missing, self.lookups = [], {}, [], []

    def keep(self, found):
        return not self.origin or (found or "").startswith(self.origin)

    def account(self, entry):
        self.rules.append(entry)
        found = entry["origin"]
        if found and ":" in _entry_key(found):
            total = self.by_origin.setdefault(_entry_key(found), {"packets": 0, "bytes": 0, "rules": 0})
            total["packets"] += entry["packets"]
            total["bytes"] += entry["bytes"]
            total["rules"] += 1

    def chains(self, plan, live):
        planned_chains = {c.ref: c for c in plan.chains}
        for chain in [c.ref for c in plan.chains] + sorted(set(live["chains"]) - set(planned_chains)):
            wanted = {r.key: r for r in planned_chains[chain].rules} if chain in planned_chains else {}
            seen = set()
            for rule in live["chains"].get(chain, {}).get("rules", []):
                found = origin_of(rule["comment"])
                if not self.keep(found):
                    continue
                counters = rule["counters"] or {"packets": 0, "bytes": 0}
                planned = wanted.get(rule["key"])
                if planned is not None:
                    seen.add(rule["key"])
                    if not planned.counted:
                        # it looks a group of forwards up: no counter of its own, its elements count
                        self.lookups.append("%s: %s" % (chain, found))
                        continue
                self.account({"chain": chain, "kind": "rule", "origin": found, "packets": counters["packets"],
                              "bytes": counters["bytes"], "handle": rule["handle"],
                              "rule": planned.body if planned is not None
                              else "not in the pillar (%s)" % (rule["comment"] or "no comment")})
            if chain in planned_chains:
                self.missing += ["%s: %s" % (chain, r.comment) for r in planned_chains[chain].rules
                                 if r.key not in seen and self.keep(r.origin)]

    def sets(self, plan, live):
        planned_sets = {s.ref: s for s in plan.sets}
        for name in [s.ref for s in plan.sets] + sorted(set(live.get("sets", {})) - set(planned_sets)):
            wanted = {e.key: e for e in planned_sets[name].elements} if name in planned_sets else {}
            current = live.get("sets", {}).get(name, {}).get("elements", {})
            for key, elem in sorted(current.items(), key=lambda kv: str(kv[0])):
                found = origin_of(elem["comment"])
                if not self.keep(found):
                    continue
                counters = elem["counters"] or {"packets": 0, "bytes": 0}
                planned = wanted.get(key)
                text = _key_text(key) + _value_text(elem["value"])
                if planned is None or planned.value != elem["value"] or planned.comment != elem["comment"]:
                    text = "not in the pillar (%s)" % text
                self.account({"chain": name, "kind": _role(name), "origin": found, "packets": counters["packets"],
                              "bytes": counters["bytes"], "rule": text})
            self.missing += ["%s: %s %s" % (name, e.comment, e.key_text) for key, e in wanted.items()
                             if key not in current and self.keep(e.origin)]


def _entry_key(origin):
    """The pillar entry of an origin: "port_forwards:https dnat web" -> "port_forwards:https"."""
    return origin.split(" ", 1)[0]


def status_table(report):
    """The status as aligned text lines (for docs and a quick look)."""
    rows = [("chain", "packets", "bytes", "origin")]
    for r in report["rules"]:
        origin = r["origin"] or "(not written by the formula)"
        if r.get("kind", "rule") != "rule":
            origin = "%s %s" % (origin, r["kind"])
        rows.append((r["chain"], str(r["packets"]), str(r["bytes"]), origin))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "%s  %s  %s  %s" % (row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3])
        for row in rows
    )


def _first_difference(planned, live_key):
    """The first planned statement the live rule lacks, as JSON text (what was edited)."""
    have = json.loads(live_key)[1]
    for stmt in planned.expr:
        if stmt not in have:
            return "the pillar's %s is not in the live rule" % json.dumps(stmt, sort_keys=True)
    extra = [s for s in have if s not in planned.expr]
    if extra:
        return "the live rule has %s, not in the pillar's" % json.dumps(extra[0], sort_keys=True)
    return "its statements are in another order"


def _chain_drift(chain, current, add):
    planned = list(chain.rules)
    pending = {}
    for rule in planned:
        pending.setdefault(rule.key, []).append(rule)
    unmatched_live = []
    matched_order = []
    for rule in current["rules"]:
        if pending.get(rule["key"]):
            matched_order.append(pending[rule["key"]].pop(0))
        else:
            unmatched_live.append(rule)
    left = [r for r in planned if r in [x for v in pending.values() for x in v]]
    for rule in unmatched_live:
        twin = next((p for p in left if p.comment == rule["comment"]), None)
        if twin is not None:
            left.remove(twin)
            add("rule edited", chain.ref, "handle %d (%s, origin %s): %s"
                % (rule["handle"], rule["comment"], twin.origin, _first_difference(twin, rule["key"])))
        else:
            add("rule unexpected", chain.ref, "handle %d: %s" % (
                rule["handle"], rule["comment"] or "a rule without comment (hand edit?)"))
    for rule in left:
        add("rule missing", chain.ref, "%s (origin %s)" % (rule.body, rule.origin))
    if matched_order != [r for r in planned if r in matched_order]:
        add("rule order", chain.ref, "the rules are out of order")


def _set_drift(item, current, add):
    wanted = {e.key: e for e in item.elements}
    for key, elem in sorted(current["elements"].items(), key=lambda kv: str(kv[0])):
        planned = wanted.get(key)
        text = _key_text(key) + _value_text(elem["value"])
        if planned is None:
            add("element unexpected", item.ref, "%s (%s)" % (text, elem["comment"] or "no comment: a hand edit?"))
        elif (planned.value != elem["value"] or planned.comment != elem["comment"]
              or elem["counters"] is None or elem["extra"]):
            add("element edited", item.ref, "%s, origin %s: planned %s" % (text, planned.origin, planned.text))
    for key, planned in wanted.items():
        if key not in current["elements"]:
            add("element missing", item.ref, "%s (origin %s)" % (planned.text, planned.origin))


def live_drift(plan, live):
    """
    What differs between the plan and the live owned objects, compared by
    content, as a list of ``{"kind", "chain", "detail"}`` (empty when they
    match; ``chain`` names the chain, set or map).  Kinds: ``chain missing``,
    ``chain hook``, ``rule missing``, ``rule edited`` (same comment, other
    statements), ``rule unexpected``, ``rule order``, ``chain unexpected``,
    ``set missing``, ``set declaration``, ``set unexpected``, ``element
    missing``, ``element edited``, ``element unexpected``, ``jump missing``,
    ``jump duplicated``, ``custom chain missing``.  The detail names the
    item and its pillar origin.
    """
    out = []

    def add(kind, chain, detail):
        out.append({"kind": kind, "chain": chain, "detail": detail})

    for custom, _ in plan.jumps:
        if custom not in live["custom_chains"]:
            add("custom chain missing", custom,
                "Qubes' %s chain is absent: is the base firewall of this qube loaded?" % custom)
    live_sets = live.get("sets", {})
    for item in plan.sets:
        current = live_sets.get(item.ref)
        if current is None:
            add("set missing", item.ref, "the %s is absent, %d planned elements are not loaded (%s)"
                % (item.kind, len(item.elements), ", ".join(sorted({e.origin for e in item.elements}))[:200]))
            continue
        if current["kind"] != item.kind or current["head"] != item.head:
            add("set declaration", item.ref, "live %s %s, planned %s %s"
                % (current["kind"], current["head"], item.kind, item.head))
            continue
        _set_drift(item, current, add)
    for chain in plan.chains:
        current = live["chains"].get(chain.ref)
        if current is None:
            add("chain missing", chain.ref,
                "the chain is absent, %d planned rules are not loaded" % len(chain.rules))
            continue
        if current["hook"] != chain.hook:
            add("chain hook", chain.ref, "live %r, planned %r" % (current["hook"], chain.hook))
        _chain_drift(chain, current, add)
    for name in sorted(set(live["chains"]) - {c.ref for c in plan.chains}):
        add("chain unexpected", name, "an owned chain the pillar no longer implies (%d rules)"
            % len(live["chains"][name]["rules"]))
    for name in sorted(set(live_sets) - {s.ref for s in plan.sets}):
        add("set unexpected", name, "an owned %s the pillar no longer implies (%d elements)"
            % (live_sets[name]["kind"], len(live_sets[name]["elements"])))
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


# ---- human output: what status, drift and the states print by default ----
# Pure text renderers; the execution module returns their text unless the
# caller asked for data (``fmt=data`` or a machine outputter such as
# ``--out=json``).  One string, so Salt's outputter prints it as lines.

_COUNTED = ("rules_added", "rules_removed", "elements_added", "elements_removed")


def _table(rows, right=()):
    """Aligned columns (the last one left ragged); ``right``: indexes of right-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for row in rows:
        cells = [row[i].rjust(widths[i]) if i in right else row[i].ljust(widths[i]) for i in range(len(widths))]
        out.append("  ".join(cells + [row[-1]]).rstrip())
    return out


def status_text(report):
    """
    ``status`` as text: one headline (qube, rules, packets, bytes), the
    counters per pillar entry, every rule and element with its counters and
    origin, and the planned items that are not loaded.
    """
    if "rules" not in report:
        return "%s: %s." % (report.get("qube", "?"), report.get("comment", "nothing to show"))
    total = report["total"]
    lookups = len(report.get("lookups", ()))
    lines = ["%s: %d rules and elements owned by the formula with counters, %d packets, %d bytes%s%s"
             % (report["qube"], total["rules"], total["packets"], total["bytes"],
                " (and %d forward group lookups without)" % lookups if lookups else "",
                "; %d planned but not loaded" % len(report["missing"]) if report["missing"] else "")]
    if report["by_origin"]:
        lines += ["", "per pillar entry:"]
        rows = [("  entry", "rules", "packets", "bytes")]
        rows += [("  " + key, str(v["rules"]), str(v["packets"]), str(v["bytes"]))
                 for key, v in sorted(report["by_origin"].items())]
        lines += _table([(r[0], r[1], r[2], r[3]) for r in rows], right=(1, 2))
    if report["rules"]:
        lines += ["", "rules and elements:"]
        lines += ["  " + line for line in status_table(report).splitlines()]
    if report.get("lookups"):
        lines += ["", "rules that look up a group of forwards (no counter: each element above counts its forward):"]
        lines += ["  " + item for item in report["lookups"]]
    if report["missing"]:
        lines += ["", "planned but not loaded (run qubes_firewall.drift, then state.apply qubes_firewall):"]
        lines += ["  " + item for item in report["missing"]]
    return "\n".join(lines)


def drift_text(out):
    """
    ``drift`` as text: the verdict first (drifted or not, how many items
    where), then each item, then the transaction ``state.apply`` would load.
    """
    qube = out.get("qube", "?")
    parts = []
    for key, label in (("live", "in the live ruleset"), ("persisted", "in the boot replay"),
                       ("connect_tcp", "in the ConnectTCP bindings"), ("template", "in the custom-persist replay")):
        if out.get(key):
            parts.append("%d %s" % (len(out[key]), label))
    if not out.get("drifted"):
        head = "%s: no drift: the live ruleset and the boot replay match the pillar." % qube
    else:
        head = "%s: drifted: %s." % (qube, ", ".join(parts))
    lines = [head]
    if out.get("comment"):
        lines.append(out["comment"] + ".")
    if out.get("live"):
        lines += ["", "live ruleset:"]
        lines += _table([("  " + i["kind"], i.get("chain", ""), i["detail"]) for i in out["live"]])
    if out.get("persisted"):
        lines += ["", "boot replay:"]
        lines += _table([("  " + i["kind"], i["path"], i["detail"]) for i in out["persisted"]])
    for key, label in (("connect_tcp", "ConnectTCP files that differ from the pillar:"),
                       ("template", "custom-persist files that differ from the pillar:")):
        if out.get(key):
            lines += ["", label] + ["  " + path for path in out[key]]
    if out.get("fix"):
        lines += ["", "state.apply qubes_firewall would load:"]
        lines += ["  " + line for line in out["fix"].rstrip("\n").splitlines()]
    return "\n".join(lines)


def _item_origin(item, planned):
    """
    The pillar entry of a transaction summary item: "chain: qf origin ...",
    or "set: origin" for a planned element (``planned``).
    """
    text = item.split(": ", 1)[1] if ": " in item else item
    found = origin_of(text) if text.startswith("qf ") else (text if planned else None)
    if not found or found.startswith("a rule without comment"):
        return "(not from the pillar)"
    return _entry_key(found)


def nft_change(summary, rule_count):
    """
    The nft part of a state's ``changes``, compact and by pillar entry: which
    entries get rules or elements added, removed or changed (both), with the
    counts of rules and elements added, removed and kept (planned and already
    loaded).  ``summary``: ``_qubes_firewall_nft.transaction``'s; ``rule_count``:
    the plan's (0 when the formula removes everything).
    """
    counts = summary.get("counts", {})
    added = counts.get("rules_added", 0) + counts.get("elements_added", 0)
    removed = counts.get("rules_removed", 0) + counts.get("elements_removed", 0)
    plus = {_item_origin(i, True) for k in ("rules_added", "elements_added") for i in summary.get(k, [])
            if not i.startswith("... and ")}
    minus = {_item_origin(i, False) for k in ("rules_removed", "elements_removed") for i in summary.get(k, [])
             if not i.startswith("... and ")}
    out = {"added": added, "removed": removed, "kept": max(rule_count - added, 0)}
    for key, entries in (("entries added", plus - minus), ("entries removed", minus - plus),
                         ("entries changed", plus & minus)):
        if entries:
            out[key] = sorted(entries)
    objects = ["%s %s" % (counts[k], k.replace("_", " ")) for k in _Summary_KEYS if counts.get(k)]
    if objects:
        out["objects"] = ", ".join(objects)
    return out


_Summary_KEYS = ("chains_added", "chains_replaced", "chains_removed", "sets_added", "sets_replaced",
                 "sets_removed", "jumps_added", "jumps_removed")


def qube_summary_line(qube, record, test=False):
    """
    The one line a run ends with for ``qube``: ``record`` is what the states
    of the run noted (``{"nft": nft_change(...) or {"kept": n}, "boot": ...,
    "other": [...]}``).  E.g. ``web: 3 added, 1 removed, 12 kept (nft); boot
    replay updated``.
    """
    nft = record.get("nft")
    parts = []
    if nft is not None:
        if nft.get("added") or nft.get("removed"):
            verb = ("would add %d, remove %d, keep %d" if test else "%d added, %d removed, %d kept")
            parts.append(verb % (nft["added"], nft["removed"], nft["kept"]) + " (nft)")
        elif nft.get("kept"):
            parts.append("%d kept, nothing to change (nft)" % nft["kept"])
        else:
            parts.append("no rules of the formula (nft)")
    for what in record.get("changed", []):
        parts.append(("%s would be updated" if test else "%s updated") % what)
    for what in record.get("failed", []):
        parts.append("%s FAILED" % what)
    if not parts:
        parts.append("nothing to change")
    why = (": " + record["why"]) if record.get("why") else ""
    return "%s: %s%s" % (qube, "; ".join(parts), why)


def first_cause(comment):
    """
    The cause a failed state's comment names, on one line: its first line, and
    when that only introduces a list (``invalid pillar:``), the first item too.
    """
    lines = [line.strip() for line in str(comment or "").splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") and len(lines) > 1:
        return "%s %s" % (lines[0], lines[1])
    return lines[0]
