"""
nftables I/O for qubes-firewall-formula, and the pure comparison of the live
ruleset with a plan.

- ``read()``: one ``nft -j list ruleset`` (the only nft read of a run; the
  same document is what a backup before a write saves).
- ``live_state(doc)``: pure; the owned chains (``qf-*``) with their hooks and
  the full content of their rules, the owned sets and maps with their
  declarations and elements, and the handles of our jump rules in
  ``custom-input`` / ``custom-forward``, of both ``table ip qubes`` and
  ``table ip6 qubes``, keyed by ``_qubes_firewall_plan.ref`` ("qf-input",
  "ip6 qf-input").  Parsed from nft's JSON, never from rule text.
- ``transaction(plan, live)``: pure; the one nft script that makes the live
  owned objects equal the plan (or removes them all, ``plan=None``), or ""
  when they already are.  It never names an object the formula does not own,
  except to add or delete its own jump rules (by handle) in custom-input /
  custom-forward.
- ``load(script)``: one ``nft -f -``: one atomic transaction; on any error
  nothing is applied and the ruleset stays as it was.  ``check(script)``:
  ``nft -c -f -``, for test mode.

Owned objects are compared by
content: each rule's statements and comment as nft JSON (counter values and
handles aside) against the plan's JSON of the same rule
(``_qubes_firewall_plan.Rule.key``), each element's key, value and comment.
"""

import json
import re
import subprocess

import _qubes_firewall_plan as qf_plan
from salt.exceptions import CommandExecutionError

FAMILY, TABLE = "ip", "qubes"  # the IPv4 table; objects of both tables are named by ``qf_plan.ref``
NFT = "nft"
_SAFE_KEY = re.compile(r"\A[A-Za-z0-9.:_-]{1,64}\Z")


# --------------------------------------------------------------------------
# pure
# --------------------------------------------------------------------------


def _canonical(value):
    return json.dumps(value, sort_keys=True)


def _zero_counters(exprs):
    """The statements with counter values zeroed: what a rule is compared by."""
    out = []
    for expr in exprs:
        if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
            expr = {"counter": {"packets": 0, "bytes": 0}}
        out.append(expr)
    return out


def _plain(value):
    """A listed key or value as the plan writes it: a tuple of its parts (str/int), else canonical JSON."""
    if isinstance(value, dict):
        parts = value.get("concat")
        if isinstance(parts, list):
            parts = [_prefix_text(p) for p in parts]
        if isinstance(parts, list) and all(type(p) in _PARTS for p in parts):
            return tuple(parts)
        return _canonical(value)
    if type(value) in _PARTS:  # not bool: a bool is no part the plan writes
        return (value,)
    return _canonical(value)


_PARTS = (str, int)


def _prefix_text(part):
    """A network in an interval set's key (``{"prefix": {"addr", "len"}}``) as the plan writes it: a/len."""
    prefix = part.get("prefix") if isinstance(part, dict) else None
    if isinstance(prefix, dict) and type(prefix.get("addr")) is str and type(prefix.get("len")) is int:
        return "%s/%d" % (prefix["addr"], prefix["len"])
    return part


def _element(item, is_map):
    """(key, value or None, comment, counters, extra) of one listed element; key/value as ``_plain``."""
    value = None
    if is_map:
        item, value = item
        value = _plain(value)
    elem = item.get("elem") if isinstance(item, dict) else None
    if elem is None:  # an element without comment or counter is listed bare
        return _plain(item), value, "", None, {}
    counter = elem.get("counter")
    counters = None
    if isinstance(counter, dict):
        counters = {"packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0)}
    # the extra statements an element may carry beyond comment and counter
    extra = {} if _ELEMENT_PARTS.issuperset(elem) else {
        k: v for k, v in elem.items() if k not in _ELEMENT_PARTS}
    return _plain(elem.get("val")), value, elem.get("comment", ""), counters, extra


_ELEMENT_PARTS = frozenset(("val", "comment", "counter"))


def _signature_entry(key, value, comment, counters, extra):
    """An element as ``signature`` holds it: what the plan's element would be, or marked as differing."""
    if counters is None or extra:
        return (key, value, comment, "differs")  # no plan element has this form: it never matches
    return (key, value, comment)


def signature(planned_set):
    """
    The planned set's elements as a frozenset of ``(key, value, comment)``:
    equal to the live set's ``signature`` exactly when no element differs
    (``element_differs``) and none is missing or extra, so a set that is up to
    date costs one set comparison.
    """
    return frozenset((e.key, e.value, e.comment) for e in planned_set.elements)


def _where(ref):
    """``ip qubes NAME`` / ``ip6 qubes NAME``: how nft commands name the object of a ``ref``."""
    family, name = qf_plan.split_ref(ref)
    return "%s %s" % (qf_plan.table_of(family), name)


def live_state(doc):
    """
    The formula's part of ``table ip qubes`` and ``table ip6 qubes`` in nft's
    JSON (``nft -j list ruleset``, or only those tables), every name a
    ``_qubes_firewall_plan.ref`` ("qf-input" in ip, "ip6 qf-input" in ip6)::

        {"chains": {name: {"hook": (type, hook, prio, policy) | None,
                           "rules": [{"handle", "comment", "counters", "key"}]}},
         "sets": {name: {"kind": "set" | "map", "head": canonical JSON,
                         "elements": {key: {"value", "comment", "counters", "extra"}},
                         "signature": frozenset of the elements (``signature``)}},
         "jumps": {(custom_chain, target): [handles]},
         "custom_chains": [custom-input/custom-forward present],
         "tables": [families whose qubes table exists]}

    A rule's ``key`` is its comment and statements as canonical JSON with the
    counter values zeroed: exactly what the plan's ``Rule.key`` is.  An
    element's key and a map element's value are tuples of their parts (as the
    plan's ``Element.key`` / ``Element.value``), or canonical JSON for a form
    the formula never writes.
    """
    chains, sets, jumps, customs, tables = {}, {}, {}, [], []
    for item in (doc or {}).get("nftables", []):
        kind = next((k for k in ("table", "chain", "rule", "set", "map") if k in item), None)
        obj = item.get(kind) if kind else None
        family = obj.get("family") if obj else None
        if kind == "table":
            if family in qf_plan.FAMILIES and obj.get("name") == TABLE:
                tables.append(family)
            continue
        if not obj or family not in qf_plan.FAMILIES or obj.get("table") != TABLE:
            continue
        if kind in ("set", "map"):
            if obj["name"].startswith(qf_plan.OWNED_PREFIX):
                sets[qf_plan.ref(family, obj["name"])] = _live_set(kind, obj)
            continue
        if kind == "chain":
            if obj["name"].startswith(qf_plan.OWNED_PREFIX):
                hook = None
                if "hook" in obj:
                    hook = (obj.get("type"), obj.get("hook"), obj.get("prio"), obj.get("policy"))
                chains[qf_plan.ref(family, obj["name"])] = {"hook": hook, "rules": []}
            elif obj["name"] in dict(qf_plan.JUMPS):
                customs.append(qf_plan.ref(family, obj["name"]))
            continue
        _live_rule(obj, family, chains, jumps)
    return {"chains": chains, "sets": sets, "jumps": jumps, "custom_chains": customs, "tables": tables}


def _live_set(kind, obj):
    """An owned set or map as ``live_state`` holds it."""
    head = {k: v for k, v in obj.items() if k not in ("family", "name", "table", "handle", "elem")}
    if isinstance(head.get("map"), list):
        # nft 1.1 lists a concatenated map data type as a list, 1.0.6
        # (and the plan) as "a . b": one declaration, two spellings
        head["map"] = " . ".join(head["map"])
    if isinstance(head.get("flags"), str):  # one flag: nft 1.1 may list it bare
        head["flags"] = [head["flags"]]
    elements, sig = {}, set()
    for elem in obj.get("elem", []):
        key, value, comment, counters, extra = _element(elem, kind == "map")
        elements[key] = {"value": value, "comment": comment, "counters": counters, "extra": extra}
        sig.add(_signature_entry(key, value, comment, counters, extra))
    if len(sig) != len(elements):  # one key listed twice: never equal to a plan
        sig.add(("duplicate key", None, None, "differs"))
    return {"kind": kind, "head": _canonical(head), "elements": elements, "signature": frozenset(sig)}


def _live_rule(obj, family, chains, jumps):
    """A listed rule: into its owned chain, or a jump of ours in custom-input/custom-forward."""
    exprs = obj.get("expr", [])
    chain = qf_plan.ref(family, obj["chain"])
    if chain in chains:
        chains[chain]["rules"].append({
            "handle": obj["handle"],
            "comment": obj.get("comment", ""),
            "counters": _counters(exprs),
            "key": _canonical([obj.get("comment", ""), _zero_counters(exprs)]),
        })
    elif obj["chain"] in dict(qf_plan.JUMPS):
        if len(exprs) == 1 and "jump" in exprs[0]:
            target = exprs[0]["jump"].get("target")
            if target == dict(qf_plan.JUMPS)[obj["chain"]]:
                jumps.setdefault((chain, qf_plan.ref(family, target)), []).append(obj["handle"])


def _counters(exprs):
    for expr in exprs:
        counter = expr.get("counter") if isinstance(expr, dict) else None
        if isinstance(counter, dict):
            return {"packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0)}
    return None


def owned(live):
    """True when anything the formula owns is in the live ruleset."""
    return bool(live["chains"] or live.get("sets") or live["jumps"])


def element_differs(planned, current):
    """Does the live element ``current`` (from ``live_state``) differ from the planned ``Element``?"""
    return (current["value"] != planned.value or current["comment"] != planned.comment
            or current["counters"] is None or bool(current["extra"]))


LIST_CAP = 100


class _Summary:
    KEYS = ("chains_added", "chains_replaced", "chains_removed", "sets_added", "sets_replaced",
            "sets_removed", "elements_added", "elements_removed", "rules_added", "rules_removed",
            "jumps_added", "jumps_removed")

    def __init__(self):
        self.items = {k: [] for k in self.KEYS}

    def add(self, key, *values):
        self.items[key] += values

    def result(self):
        out = {}
        counts = {k: len(v) for k, v in self.items.items() if v}
        for key, values in self.items.items():
            if values:
                out[key] = values[:LIST_CAP] + (
                    ["... and %d more" % (len(values) - LIST_CAP)] if len(values) > LIST_CAP else [])
        if counts:
            out["counts"] = counts
        return out


def _describe_live_rule(chain, rule):
    return "%s: %s" % (chain, rule["comment"] or "a rule without comment (handle %d)" % rule["handle"])


def _remove_all(live):
    """The script that removes every owned object (plan=None)."""
    cmds, summary = [], _Summary()
    for (custom, target), handles in sorted(live["jumps"].items()):
        for handle in handles:
            cmds.append("delete rule %s handle %d" % (_where(custom), handle))
            summary.add("jumps_removed", "%s -> %s" % (custom, target))
    for name in sorted(live["chains"]):
        cmds.append("flush chain %s" % _where(name))
    for name in sorted(live["chains"]):
        cmds.append("delete chain %s" % _where(name))
        summary.add("chains_removed", name)
        summary.add("rules_removed", *[_describe_live_rule(name, r) for r in live["chains"][name]["rules"]])
    for name in sorted(live.get("sets", {})):
        cmds.append("delete %s %s" % (live["sets"][name]["kind"], _where(name)))
        summary.add("sets_removed", name)
    if not cmds:
        return "", {}
    return "\n".join(cmds) + "\n", summary.result()


def _set_changes(plan, live_sets):
    """Sets and maps: ``(new, replaced (another declaration), stale names)``."""
    new_sets, replaced_sets = [], []
    for item in plan.sets:
        current = live_sets.get(item.ref)
        if current is None:
            new_sets.append(item)
        elif (current["kind"] != item.kind or current["head"] != item.head
              or (current.get("signature") != signature(item) and not _all_deletable(current["elements"]))):
            # another declaration, or an element no delete command of ours can name: recreate it
            replaced_sets.append(item)
    stale_sets = sorted(set(live_sets) - {s.ref for s in plan.sets})
    return new_sets, replaced_sets, stale_sets


def _chain_changes(plan, live, gone_sets):
    """Chains: ``(new, recreated (another hook), refilled (other rules), stale names)``."""
    planned_chains = {c.ref for c in plan.chains}
    new_chains, recreated, refilled = [], [], []
    for chain in plan.chains:
        current = live["chains"].get(chain.ref)
        if current is None:
            new_chains.append(chain)
        elif current["hook"] != chain.hook:
            recreated.append(chain)
        elif ([r["key"] for r in current["rules"]] != [r.key for r in chain.rules]
              or any(_uses(r, gone_sets, chain.family) for r in current["rules"])):
            refilled.append(chain)
    stale_chains = sorted(set(live["chains"]) - planned_chains)
    return new_chains, recreated, refilled, stale_chains


def _removals(live, live_sets, replaced_sets, stale_sets, recreated, refilled, stale_chains, jump_targets_gone):
    """The commands that go first: jumps into a chain that is deleted (they come back later), flushes, deletes."""
    pre = []
    for (custom, target), handles in sorted(live["jumps"].items()):
        if target in jump_targets_gone:
            for handle in handles:
                pre.append("delete rule %s handle %d" % (_where(custom), handle))
    for chain in refilled:
        pre.append("flush chain %s" % _where(chain.ref))
    for name in [c.ref for c in recreated] + stale_chains:
        pre.append("flush chain %s" % _where(name))
    for name in [c.ref for c in recreated] + stale_chains:
        pre.append("delete chain %s" % _where(name))
    for name in [s.ref for s in replaced_sets] + stale_sets:
        pre.append("delete %s %s" % (live_sets[name]["kind"], _where(name)))
    return pre


def _set_commands(plan, live_sets, new_sets, replaced_sets, stale_sets, summary):
    """The sets and maps, declared afresh or with the elements that differ deleted and added."""
    cmds = []
    for item in new_sets + replaced_sets:
        cmds.append(item.add_command())
    summary.add("sets_added", *[s.ref for s in new_sets])
    summary.add("sets_replaced", *[s.ref for s in replaced_sets])
    summary.add("sets_removed", *stale_sets)
    for item in replaced_sets:
        summary.add("elements_removed", *["%s: %s" % (item.ref, e["comment"] or k)
                                          for k, e in live_sets[item.ref]["elements"].items()])
        summary.add("elements_added", *["%s: %s" % (item.ref, e.origin) for e in item.elements])
    for name in stale_sets:
        summary.add("elements_removed", *["%s: %s" % (name, e["comment"] or k)
                                          for k, e in live_sets[name]["elements"].items()])
    for item in new_sets:
        summary.add("elements_added", *["%s: %s" % (item.ref, e.origin) for e in item.elements])
    # elements of the sets and maps that stay
    for item in plan.sets:
        if item in new_sets or item in replaced_sets:
            continue
        if live_sets[item.ref].get("signature") == signature(item):
            continue  # up to date: one set comparison, not a walk of its elements
        current = live_sets[item.ref]["elements"]
        wanted = {e.key: e for e in item.elements}
        delete = [k for k, e in current.items() if k not in wanted or element_differs(wanted[k], e)]
        add = [e for k, e in wanted.items() if k not in current or element_differs(e, current[k])]
        if delete:
            cmds.append("delete element %s { %s }" % (
                _where(item.ref), ", ".join(_key_text(k) for k in delete)))
            summary.add("elements_removed", *["%s: %s" % (item.ref, current[k]["comment"] or _key_text(k))
                                              for k in delete])
        if add:
            cmds.append(item.element_command("add", add))
            summary.add("elements_added", *["%s: %s" % (item.ref, e.origin) for e in add])
    return cmds


def _chain_commands(live, new_chains, recreated, refilled, stale_chains, summary):
    cmds = []
    for chain in new_chains + recreated:
        cmds += chain.commands(fresh=True)[:1] + chain.rule_commands()
    for chain in refilled:
        cmds += chain.rule_commands()
    summary.add("chains_added", *[c.ref for c in new_chains])
    summary.add("chains_replaced", *[c.ref for c in recreated + refilled])
    summary.add("chains_removed", *stale_chains)
    for chain in new_chains:
        summary.add("rules_added", *["%s: %s" % (chain.ref, r.comment) for r in chain.rules])
    for chain in recreated + refilled:
        have = [r["key"] for r in live["chains"][chain.ref]["rules"]]
        want = [r.key for r in chain.rules]
        summary.add("rules_removed", *[_describe_live_rule(chain.ref, r)
                                       for r in live["chains"][chain.ref]["rules"] if r["key"] not in want])
        summary.add("rules_added", *["%s: %s" % (chain.ref, r.comment) for r in chain.rules if r.key not in have])
    for name in stale_chains:
        summary.add("rules_removed", *[_describe_live_rule(name, r) for r in live["chains"][name]["rules"]])
    return cmds


def _jump_commands(plan, live, jump_targets_gone, summary):
    """One jump rule per (Qubes chain, our chain): added when missing, duplicates deleted."""
    cmds = []
    for custom, target in plan.jumps:
        handles = live["jumps"].get((custom, target), [])
        if target in jump_targets_gone:
            handles = []
        if not handles:
            cmds.append(plan.jump_command(custom, target))
            summary.add("jumps_added", "%s -> %s" % (custom, target))
        for handle in handles[1:]:
            cmds.append("delete rule %s handle %d" % (_where(custom), handle))
            summary.add("jumps_removed", "%s -> %s (duplicate, handle %d)" % (custom, target, handle))
    return cmds


def transaction(plan, live):
    """
    ``plan``: a ``_qubes_firewall_plan.QubePlan`` (its objects render their own
    nft commands), or None: remove everything the formula owns here;
    ``live``: from ``live_state``.  Returns ``(script, summary)``: the one nft
    script that makes the live owned objects equal the plan, compared by
    content (every rule's statements and comment, every element's key, value
    and comment; counter values and handles aside), or ("", {}) when they
    already are.  A chain whose rules differ is emptied and refilled; a set or
    map whose elements differ gets those elements deleted and added.  Both
    tables in one script: what the plan holds in ``ip6 qubes`` follows that
    table's ``_qubes_firewall_plan.table_prelude`` (so a missing IPv6 table
    or custom chain never fails the load), and what the formula owns in a
    table the plan no longer has objects in is removed.
    ``summary``: counts and the items that change.
    """
    if plan is None:
        return _remove_all(live)
    summary = _Summary()
    # Qubes' IPv4 table is a precondition; IPv6's custom chains are created when missing
    missing_custom = [c for c, _ in plan.jumps
                      if c not in live["custom_chains"] and qf_plan.split_ref(c)[0] == qf_plan.FAMILY]
    if missing_custom:
        raise CommandExecutionError(
            "table ip qubes has no %s chain: is this a Qubes qube with its base firewall loaded?"
            % " or ".join(missing_custom)
        )
    live_sets = live.get("sets", {})
    new_sets, replaced_sets, stale_sets = _set_changes(plan, live_sets)
    gone_sets = {s.ref for s in replaced_sets} | set(stale_sets)
    new_chains, recreated, refilled, stale_chains = _chain_changes(plan, live, gone_sets)
    jump_targets_gone = {c.ref for c in recreated} | set(stale_chains)
    pre = _removals(live, live_sets, replaced_sets, stale_sets, recreated, refilled, stale_chains,
                    jump_targets_gone)
    for (custom, target), handles in sorted(live["jumps"].items()):
        if target in stale_chains:  # a table the plan no longer has objects in (IPv6 gone)
            summary.add("jumps_removed", *["%s -> %s" % (custom, target)] * len(handles))
    cmds = _set_commands(plan, live_sets, new_sets, replaced_sets, stale_sets, summary)
    cmds += _chain_commands(live, new_chains, recreated, refilled, stale_chains, summary)
    cmds += _jump_commands(plan, live, jump_targets_gone, summary)
    for family in plan.families:
        prelude = qf_plan.table_prelude(family)
        if prelude and any(" %s " % qf_plan.table_of(family) in cmd for cmd in cmds):
            cmds = prelude + cmds
    cmds = pre + cmds
    if not cmds:
        return "", {}
    return "\n".join(cmds) + "\n", summary.result()


def _uses(rule, refs, family):
    """Does a live rule of ``family``'s table look up one of the sets ``refs``?"""
    names = [name for fam, name in map(qf_plan.split_ref, refs) if fam == family]
    return any(('"@%s"' % name) in rule["key"] for name in names)


def _deletable(key):
    return isinstance(key, tuple) and all(_SAFE_KEY.match(str(part)) for part in key)


_SAFE_KEYS = re.compile(r"(?:[A-Za-z0-9.:_-]{1,64}\n)*\Z")


def _all_deletable(keys):
    """``all(_deletable(k) for k in keys)``, with one regex match over all their parts."""
    if not all(type(k) is tuple for k in keys):
        return False
    parts = [str(part) for key in keys for part in key]
    text = "".join(part + "\n" for part in parts)
    return text.count("\n") == len(parts) and _SAFE_KEYS.match(text) is not None


def _key_text(key):
    """A live element's key as nft text (only for keys ``_deletable`` accepts), or its JSON."""
    return " . ".join(str(part) for part in key) if isinstance(key, tuple) else key


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def _run(argv, stdin=None):
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CommandExecutionError("cannot run %s: %s" % (argv[0], exc)) from exc
    return proc


def read():
    """
    The live ruleset as nft's JSON document (one nft process): the state's
    only read, compared by ``live_state`` and saved by the backup before a
    write.
    """
    proc = _run([NFT, "-j", "list", "ruleset"])
    if proc.returncode != 0:
        raise CommandExecutionError("nft -j list ruleset failed: %s" % proc.stderr.strip())
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise CommandExecutionError("nft printed invalid JSON: %s" % exc) from exc


def _load(script, check_only, as_json=False):
    """One nft process reading ``script`` from stdin (no argument list limit)."""
    argv = [NFT] + (["-j"] if as_json else []) + (["-c"] if check_only else []) + ["-f", "-"]
    proc = _run(argv, stdin=script)
    if proc.returncode != 0:
        raise CommandExecutionError(
            "%s rejected the transaction, nothing was changed:\n%s"
            % ("nft -c" if check_only else "nft", proc.stderr.strip())
        )
    return True


def check(script):
    """
    Check ``script`` against the live kernel state with ``nft -c`` (commits
    nothing): what a state's test mode runs.
    """
    return _load(script, check_only=True)


def load(script):
    """
    Apply ``script`` as one atomic ``nft -f`` transaction (read from stdin):
    on any error nothing is applied and the ruleset stays as it was.
    """
    return _load(script, check_only=False)


def load_json(document):
    """
    Apply an nft JSON document (``{"nftables": [...commands...]}``) as one
    atomic transaction after checking it with ``nft -j -c``.
    """
    text = json.dumps(document)
    _load(text, check_only=True, as_json=True)
    return _load(text, check_only=False, as_json=True)
