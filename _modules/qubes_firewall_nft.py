"""
nftables I/O for qubes-firewall-formula, and the pure comparison of the live
ruleset with a plan.

- ``read()``: one ``nft -j list ruleset`` (the only nft read of a run; the
  same document is what a backup before a write saves).
- ``live_state(doc)``: pure; the owned chains (``qf-*``) with their hooks and
  the comments of their rules, and the handles of our jump rules in
  ``custom-input`` / ``custom-forward``.  Parsed from nft's JSON, never from
  rule text.
- ``transaction(plan, live)``: pure; the one nft script that makes the live
  owned chains equal the plan, or "" when they already are.  It never names a
  chain the formula does not own, except to add or delete its own jump rule
  (by handle) in custom-input / custom-forward.
- ``load(script)``: ``nft -c -f`` (checked against the live kernel state, commits
  nothing), then ``nft -f``: one atomic transaction; on any error nothing is
  applied and the ruleset stays as it was.

Loaded by Salt as ``qubes_firewall_nft``.  A rule is recognised by its
comment, which carries its pillar origin and a digest of the rule's text
(``qubes_firewall_plan.Rule.comment``).
"""

import json
import os
import subprocess
import tempfile

from salt.exceptions import CommandExecutionError

__virtualname__ = "qubes_firewall_nft"

FAMILY, TABLE = "ip", "qubes"
OWNED_PREFIX = "qf-"
JUMPS = (("custom-input", "qf-input"), ("custom-forward", "qf-forward"))
NFT = "nft"


# --------------------------------------------------------------------------
# pure
# --------------------------------------------------------------------------


def live_state(doc):
    """
    The formula's part of ``table ip qubes`` in nft's JSON (``nft -j list
    ruleset``, or only that table)::

        {"chains": {name: {"hook": (type, hook, prio, policy) | None,
                           "rules": [(handle, comment, counters)]}},
         "jumps": {(custom_chain, target): [handles]},
         "custom_chains": [names of custom-input/custom-forward present]}
    """
    chains, jumps, customs = {}, {}, []
    for item in (doc or {}).get("nftables", []):
        chain = item.get("chain")
        if chain and chain.get("family") == FAMILY and chain.get("table") == TABLE:
            if chain["name"].startswith(OWNED_PREFIX):
                hook = None
                if "hook" in chain:
                    hook = (chain.get("type"), chain.get("hook"), chain.get("prio"), chain.get("policy"))
                chains[chain["name"]] = {"hook": hook, "rules": []}
            elif chain["name"] in dict(JUMPS):
                customs.append(chain["name"])
            continue
        rule = item.get("rule")
        if not rule or rule.get("family") != FAMILY or rule.get("table") != TABLE:
            continue
        if rule["chain"] in chains:
            chains[rule["chain"]]["rules"].append(
                (rule["handle"], rule.get("comment", ""), _counters(rule.get("expr", [])))
            )
        elif rule["chain"] in dict(JUMPS):
            exprs = rule.get("expr", [])
            if len(exprs) == 1 and "jump" in exprs[0]:
                target = exprs[0]["jump"].get("target")
                if target == dict(JUMPS)[rule["chain"]]:
                    jumps.setdefault((rule["chain"], target), []).append(rule["handle"])
    return {"chains": chains, "jumps": jumps, "custom_chains": customs}


def _counters(exprs):
    for expr in exprs:
        counter = expr.get("counter") if isinstance(expr, dict) else None
        if isinstance(counter, dict):
            return {"packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0)}
    return None


def transaction(plan, live):
    """
    ``plan``: a ``qubes_firewall_plan.QubePlan`` (its owned chains render their
    own nft commands); ``live``: from ``live_state``.  Returns ``(script, summary)``; script is "" when nothing
    differs.  ``summary`` lists what changes, for the state's report.
    """
    cmds = []
    summary = {"chains_added": [], "chains_replaced": [], "chains_removed": [],
               "rules_added": [], "rules_removed": [], "jumps_added": [], "jumps_removed": []}
    missing_custom = [c for c, _ in plan.jumps if c not in live["custom_chains"]]
    if missing_custom:
        raise CommandExecutionError(
            "table ip qubes has no %s chain: is this a Qubes 4.2 qube with its base firewall loaded?"
            % " or ".join(missing_custom)
        )
    chains = plan.chains
    wanted = {c.name for c in chains}
    for chain in chains:
        current = live["chains"].get(chain.name)
        comments = [r.comment for r in chain.rules]
        if current is None:
            cmds += chain.commands(fresh=True)
            summary["chains_added"].append(chain.name)
            summary["rules_added"] += [r.text for r in chain.rules]
            continue
        live_comments = [c for _, c, _ in current["rules"]]
        if current["hook"] != chain.hook:
            cmds += ["flush chain %s %s %s" % (FAMILY, TABLE, chain.name),
                     "delete chain %s %s %s" % (FAMILY, TABLE, chain.name)]
            cmds += chain.commands(fresh=True)
            summary["chains_replaced"].append(chain.name)
        elif live_comments != comments:
            cmds += chain.commands(fresh=False)
            summary["chains_replaced"].append(chain.name)
        else:
            continue
        summary["rules_removed"] += ["%s: %s" % (chain.name, c or "(rule without comment)")
                                     for c in live_comments if c not in comments]
        summary["rules_added"] += [r.text for r in chain.rules if r.comment not in live_comments]
    for name in sorted(set(live["chains"]) - wanted):
        cmds += ["flush chain %s %s %s" % (FAMILY, TABLE, name), "delete chain %s %s %s" % (FAMILY, TABLE, name)]
        summary["chains_removed"].append(name)
        summary["rules_removed"] += ["%s: %s" % (name, c) for _, c, _ in live["chains"][name]["rules"]]
    for custom, target in plan.jumps:
        handles = live["jumps"].get((custom, target), [])
        if not handles:
            cmds.append(plan.jump_command(custom, target))
            summary["jumps_added"].append("%s -> %s" % (custom, target))
        for handle in handles[1:]:
            cmds.append("delete rule %s %s %s handle %d" % (FAMILY, TABLE, custom, handle))
            summary["jumps_removed"].append("%s -> %s (duplicate, handle %d)" % (custom, target, handle))
    if not cmds:
        return "", {}
    return "\n".join(cmds) + "\n", {k: v for k, v in summary.items() if v}


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

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall_nft.read
    """
    proc = _run([NFT, "-j", "list", "ruleset"])
    if proc.returncode != 0:
        raise CommandExecutionError("nft -j list ruleset failed: %s" % proc.stderr.strip())
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise CommandExecutionError("nft printed invalid JSON: %s" % exc) from exc


def _load(script, check_only, as_json=False):
    fd, path = tempfile.mkstemp(prefix="qubes_firewall.", suffix=".json" if as_json else ".nft")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(script)
        argv = [NFT] + (["-j"] if as_json else []) + (["-c"] if check_only else []) + ["-f", path]
        proc = _run(argv)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise CommandExecutionError(
            "%s rejected the transaction, nothing was changed:\n%s"
            % ("nft -c" if check_only else "nft", proc.stderr.strip())
        )
    return True


def load(script):
    """
    Apply ``script`` as one atomic transaction after checking it with
    ``nft -c``.  On any error nothing is applied.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall_nft.load "flush chain ip qubes qf-input"
    """
    _load(script, check_only=True)
    return _load(script, check_only=False)


def load_json(document):
    """
    Apply an nft JSON document (``{"nftables": [...commands...]}``) as one
    atomic transaction after checking it with ``nft -j -c``.
    """
    text = json.dumps(document)
    _load(text, check_only=True, as_json=True)
    return _load(text, check_only=False, as_json=True)
