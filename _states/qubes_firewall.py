"""
States of qubes-firewall-formula: each function is one promise about dom0 or a
qube, kept in the saltext-vault style: ask the execution modules for the
current and the wanted value, return at once when they match, put a diff in
``changes``, stop there under ``test=True``, else write through an execution
module and say what was done.  Errors from the execution layer become
``result: False`` with a comment, never a traceback.

The formula's SLS (``salt/qubes_firewall/init.sls``) uses them; a user's own
SLS can too::

    qubes_firewall-validated:
      qubes_firewall.validated: []

    qubes_firewall-runtime:
      qubes_firewall.runtime_rules:
        - require:
          - qubes_firewall: qubes_firewall-validated
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "qubes_firewall"


def __virtual__():
    return __virtualname__


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _fail(ret, exc):
    ret["result"] = False
    ret["comment"] = str(exc)
    return ret


def validated(name):
    """
    The ``qubes_firewall`` pillar is valid. Every other state of the formula
    requires this one, so a bad pillar stops the run before anything changes;
    the comment names each bad pillar path.

    .. code-block:: yaml

        qubes_firewall-validated:
          qubes_firewall.validated: []
    """
    ret = _ret(name)
    problems = __salt__["qubes_firewall.pillar_errors"]()
    if problems:
        ret["result"] = False
        ret["comment"] = "invalid pillar:\n" + "\n".join(problems)
        return ret
    ret["comment"] = "The qubes_firewall pillar is valid."
    return ret


def _not_named(ret, qube):
    ret["comment"] = (
        "%s is not named in the qubes_firewall:qubes pillar; nothing to do here." % qube
    )
    return ret


def runtime_rules(name):
    """
    The live nftables ruleset of this qube holds exactly the rules the pillar
    implies, in the chains the formula owns (``qf-*`` in ``table ip qubes``,
    one jump each from ``custom-input`` / ``custom-forward``).  One nft read;
    when something differs, one transaction, checked with ``nft -c`` first.

    .. code-block:: yaml

        qubes_firewall-runtime:
          qubes_firewall.runtime_rules: []
    """
    ret = _ret(name)
    qube = __salt__["qubes_firewall.minion_id"]()
    try:
        plan = __salt__["qubes_firewall.qube_plan"](qube)
        if plan is None:
            return _not_named(ret, qube)
        live = __salt__["qubes_firewall_nft.live_state"](__salt__["qubes_firewall_nft.read"]())
        script, summary = __salt__["qubes_firewall_nft.transaction"](plan, live)
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if not script:
        ret["comment"] = "The nft rules of %s are up to date (%d rules)." % (qube, plan.rule_count)
        return ret
    ret["changes"] = {"nft": summary, "transaction": script}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = "The nft rules of %s would be updated in one transaction." % qube
        return ret
    try:
        __salt__["qubes_firewall_nft.load"](script)
    except CommandExecutionError as exc:
        ret["changes"] = {}
        return _fail(ret, exc)
    ret["comment"] = "The nft rules of %s were updated in one transaction." % qube
    return ret


def persisted_rules(name):
    """
    The rules come back at boot: a managed block in
    ``<rw_config>/qubes-firewall-user-script`` (qubes that provide network) or
    ``<rw_config>/rc.local`` (the others) replays them idempotently.  The
    user's own lines stay byte for byte; the file is written atomically and is
    executable.

    .. code-block:: yaml

        qubes_firewall-persisted:
          qubes_firewall.persisted_rules: []
    """
    ret = _ret(name)
    qube = __salt__["qubes_firewall.minion_id"]()
    try:
        files = __salt__["qubes_firewall.persisted_files"](qube)
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if not files:
        return _not_named(ret, qube)
    todo = {}
    for path, (old, new) in files.items():
        mode = __salt__["qubes_firewall_files.mode_of"](path)
        needs_exec = new is not None and mode is not None and mode & 0o100 == 0
        if old != new:
            ret["changes"][path] = __salt__["qubes_firewall_files.diff"](old, new, path)
        if needs_exec:
            ret["changes"].setdefault(path + " mode", "%04o -> %04o" % (mode, mode | 0o111))
        if old != new or needs_exec:
            todo[path] = (old, new, needs_exec, mode)
    if not todo:
        ret["comment"] = "The boot replay of %s's rules is up to date." % qube
        return ret
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = "Would update %s." % ", ".join(sorted(todo))
        return ret
    try:
        for path, (old, new, needs_exec, mode) in sorted(todo.items()):
            if old != new:
                __salt__["qubes_firewall_files.write_atomic"](path, new, mode=0o755)
            if needs_exec:
                __salt__["qubes_firewall_files.ensure_mode"](path, mode | 0o111)
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    ret["comment"] = "Updated %s." % ", ".join(sorted(todo))
    return ret
