"""
qubes-firewall-formula's public execution module, ``qubes_firewall``.

The shell around the pure core: it reads the ``qubes_firewall`` pillar (through
``__pillar__``: Salt 3008 masks values that ``pillar.get`` returns inside
modules), asks ``qubes_firewall_model`` to validate it and
``qubes_firewall_plan`` to plan this minion's part, and hands I/O to
``qubes_firewall_nft`` (nftables) and ``qubes_firewall_files`` (managed blocks).
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "qubes_firewall"


def __virtual__():
    return __virtualname__


def _raw_pillar():
    return __pillar__.get("qubes_firewall")


def pillar_errors():
    """
    Every problem of the ``qubes_firewall`` pillar, each naming its pillar
    path; an empty list when the pillar is valid.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.pillar_errors
    """
    return __salt__["qubes_firewall_model.errors"](_raw_pillar())


def model():
    """
    The validated pillar model (raises CommandExecutionError naming every bad
    pillar path).
    """
    try:
        return __salt__["qubes_firewall_model.parse"](_raw_pillar())
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc


def minion_id():
    """The minion id: under qubesctl the qube's name, ``dom0`` in dom0."""
    return __opts__["id"]


def _plan_error(exc):
    return CommandExecutionError(str(exc))


def qube_plan(qube=None):
    """
    The plan (``qubes_firewall_plan.QubePlan``) of ``qube`` (default: this
    minion), or None when the pillar does not name it.  For states; on the
    command line use ``show_plan``.
    """
    qube = qube or minion_id()
    mdl = model()
    if qube not in mdl.qubes:
        return None
    try:
        return __salt__["qubes_firewall_plan.plan_qube"](mdl, qube)
    except ValueError as exc:
        raise _plan_error(exc) from exc


def show_plan(qube=None):
    """
    What the formula wants in ``qube`` (default: this minion): its owned nft
    chains with every rule and comment, and the file that persists them.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.show_plan
        qubesctl --skip-dom0 --targets=sys-net qubes_firewall.show_plan
    """
    plan = qube_plan(qube)
    if plan is None:
        return {}
    return __salt__["qubes_firewall_plan.plan_dict"](plan)


def rules_transaction(qube=None):
    """
    ``(script, summary)``: the one nft transaction that makes this qube's live
    owned chains match the pillar ("" when they already do).  Reads the live
    ruleset once; writes nothing.
    """
    plan = qube_plan(qube)
    if plan is None:
        return "", {}
    live = __salt__["qubes_firewall_nft.live_state"](__salt__["qubes_firewall_nft.read"]())
    return __salt__["qubes_firewall_nft.transaction"](plan, live)


def persisted_files(qube=None):
    """
    ``{path: (old_text, new_text)}`` for the files that replay this qube's
    rules at boot: the managed block goes into ``qubes-firewall-user-script``
    for qubes that provide network, ``rc.local`` for the others (and leaves the
    other file).  Reads only.
    """
    plan = qube_plan(qube)
    if plan is None:
        return {}
    mdl = model()
    plan_mod = "qubes_firewall_plan"
    block = __salt__[plan_mod + ".persist_block"](plan)
    out = {}
    for filename in ("qubes-firewall-user-script", "rc.local"):
        path = "%s/%s" % (mdl.lookup.rw_config, filename)
        old = __salt__["qubes_firewall_files.read"](path)
        body = block if filename == plan.persist_file else None
        try:
            new = __salt__["qubes_firewall_files.replace_block"](old, "rules", body, header="#!/bin/sh\n")
        except ValueError as exc:
            raise CommandExecutionError("%s: %s" % (path, exc)) from exc
        out[path] = (old, new)
    return out
