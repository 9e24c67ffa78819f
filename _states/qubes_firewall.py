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
