"""
qubes-firewall-formula's public execution module, ``qubes_firewall``.

Salt loads only the functions in ``PUBLIC`` (``__load__``), the ones a user
calls.  The rest of the formula is plain Python next to this file
(``_qubes_firewall_*.py``: Salt's loader never loads a file whose name starts
with ``_`` as a module, but syncs and ships it), imported here directly: the
run (``_qubes_firewall_run``: pillar, plans, lock, the one nft read) and the
core it calls (model, plan, flow, report, diagram).  Each function hands
``__opts__``, ``__pillar__`` and ``__context__`` to one ``Run``; the states
build theirs from the same dunders, so one run shares its parse, plans and nft
read between them.
"""

import _qubes_firewall_diagram as qf_diagram
import _qubes_firewall_files as qf_files
import _qubes_firewall_fleet as qf_fleet
import _qubes_firewall_flow as qf_flow
import _qubes_firewall_plan as qf_plan
import _qubes_firewall_report as qf_report
import _qubes_firewall_run as qf_run
from salt.exceptions import CommandExecutionError

__virtualname__ = "qubes_firewall"
# The functions a user calls (``salt-call sys.doc qubes_firewall``); every other
# function is internal.
PUBLIC = ("status", "drift", "check", "diagram", "show_plan", "backup", "backups", "revert", "reconnect",
          "addresses", "qubes_release", "connect_tcp_commands", "pillar_errors", "dom0_problems",
          "fleet_pillar", "targets", "fleet_status")
__load__ = list(PUBLIC)

# outputters that print data for a program, not for a person
_DATA_OUTPUTTERS = ("json", "yaml", "pprint", "raw")  # fleet_status: a row as data
_MACHINE_OUTPUTTERS = ("json", "yaml", "pprint", "raw", "txt", "newline_values_only", "profile")


def __virtual__():
    return __virtualname__


def _run():
    """This call's run: Salt's opts, pillar (or, without one under salt-ssh, the last apply's record) and context."""
    return qf_run.FunctionRun(__opts__, __pillar__, __context__)


def _wants_data(fmt):
    """
    True when the caller asked for machine output: ``fmt=data``, or no ``fmt``
    and a machine outputter (``--out=json``, ``--out=yaml``, ...).  Under
    salt-ssh (``qubesctl --skip-dom0 --targets``) the target's salt-call always
    runs with ``--out json``: there, text needs ``fmt=text``.
    """
    if fmt not in (None, "", "text", "data"):
        raise CommandExecutionError("fmt must be text or data, got %r" % (fmt,))
    if fmt:
        return fmt == "data"
    return (__opts__.get("output") or "") in _MACHINE_OUTPUTTERS


def _readable(run, data, fmt, render):
    """``data`` as it is when the caller wants data, else rendered to text by ``render``; with its source."""
    return run.annotated(data if _wants_data(fmt) else render(data))


def pillar_errors():
    """
    Every problem of the ``qubes_firewall`` pillar, each naming its pillar
    path; an empty list when the pillar is valid.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.pillar_errors
    """
    return _run().pillar_errors()


def show_plan(qube=None):
    """
    What the formula wants in ``qube`` (default: this minion): its owned nft
    chains with every rule and comment, and the file that persists them.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.show_plan
        qubesctl --skip-dom0 --targets=sys-net qubes_firewall.show_plan
    """
    run = _run()
    plan = run.qube_plan(qube)
    return run.annotated({} if plan is None else qf_plan.plan_dict(plan))


def status(origin=None, fmt=None):
    """
    Every rule the formula owns in this qube, with its pillar origin and its
    packet/byte counters (the Qubes firewall manual page's "look at the counters"), summed
    per pillar entry under ``by_origin``; ``missing`` lists planned rules that
    are not loaded. ``origin`` keeps only rules of one pillar entry, e.g.
    ``port_forwards:https``: the same name in every hop of a port forward.

    Text by default, data with ``fmt=data`` or ``--out=json`` (under
    salt-ssh always data: give ``fmt=text``); docs/operations.md.

    CLI Example:

    .. code-block:: bash

        qubesctl --skip-dom0 --targets=sys-net,sys-firewall,web qubes_firewall.status origin=port_forwards:https fmt=text
        salt-call --out=json qubes_firewall.status
    """
    run = _run()
    text = qf_report.status_text
    plan = run.qube_plan()
    if plan is None:
        qube = run.minion_id()
        return _readable(run, {"qube": qube, "comment": "%s is not named in the qubes_firewall:qubes pillar" % qube},
                         fmt, text)
    return _readable(run, qf_report.status(plan, run.live_fresh(), origin), fmt, text)


def drift(fmt=None):
    """
    What differs between the pillar, the live ruleset and the boot block:
    rules missing (a restart, a hand ``flush``), rules the pillar does not
    imply (hand edits in the formula's chains), missing or duplicated jumps,
    a lost or edited boot block. In a qube the pillar no longer names (or
    names with nothing to do), the formula's leftovers: owned nft objects,
    managed blocks, ConnectTCP units, custom-persist files of a template.
    Salt's exit code is 1 when anything drifted; ``fix`` holds the
    transaction ``state.apply qubes_firewall`` would load.

    Output as for ``status``.  Without a pillar (salt-ssh) it compares with
    the last apply's record.

    CLI Example:

    .. code-block:: bash

        qubesctl --skip-dom0 --targets=sys-firewall --show-output qubes_firewall.drift fmt=text
    """
    run = _run()
    return _readable(run, run.drift(), fmt, qf_report.drift_text)


def check(source, target, port, proto="tcp", interface=None, source_ip=None, fmt=None):
    """
    May a new connection from ``source`` to ``target`` on ``port`` pass, and
    through which rules? Answered from the pillar alone (nothing is read from
    or written to the system), by walking the packet through every hop.
    ``source``/``target``: qube names, or ``outside`` (also ``lan``, ``wan``,
    ``internet``) for the world beyond the uplink; from outside, ``port`` is
    the port opened on the uplink and ``interface``/``source_ip`` (IPv4 or
    IPv6) say where the packet comes from (else rules that depend on them are
    listed as ``conditions``). IPv4 and IPv6 are walked apart: ``ipv6`` and
    ``families`` hold the IPv6 answer.

    Output as for ``status`` (docs/operations.md).

    CLI Example:

    .. code-block:: bash

        qubesctl qubes_firewall.check work build 22
        qubesctl qubes_firewall.check outside web 443 interface=ens6 source_ip=192.168.1.50
    """
    _wants_data(fmt)
    run = _run()
    try:
        answer = qf_flow.check(run.model(), source, target, port, proto,
                               interface=interface, source_ip=source_ip)
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc
    return _readable(run, answer, fmt, qf_flow.check_text)


def diagram(fmt="mermaid", path=None):
    """
    The pillar's topology as Mermaid (``fmt=mermaid``) or Graphviz DOT
    (``fmt=dot``) text: the netvm chain with roles, each port forward's path,
    connections and qubes.ConnectTCP bindings. With ``path``, the text is
    written to that file and the path returned (docs/operations.md).

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.diagram fmt=dot path=/tmp/topology.dot
    """
    run = _run()
    try:
        text = run.annotated(qf_diagram.render(run.model(), fmt), comment="// " if fmt == "dot" else "%% ")
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc
    if path is None:
        return text
    qf_files.write_atomic(path, text, mode=0o644)
    return {"path": path}


def backup(document=None):
    """
    Save the live ruleset (``nft -j list ruleset``) as
    ``<dir>/<minion id>-<UTC timestamp>.json`` and keep the newest N
    (docs/operations.md: the directory, N).  The state saves one before each
    change of the live rules.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.backup
    """
    return _run().backup(document)


def backups():
    """
    The saved rulesets of this minion, newest first.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.backups
    """
    return _run().backups()


def revert(name=None):
    """
    Replace the whole live ruleset with a saved one (default: the newest) in
    one transaction checked with ``nft -c`` first: on any error nothing
    changes (docs/operations.md).

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.revert
        salt-call qubes_firewall.revert name=web-20240101T120000.000000Z.json
    """
    return _run().revert(name)


def addresses(names=None, family=4):
    """
    ``{qube: ip}`` resolved from Qubes, for the qubes in ``names`` (a list or
    a comma-separated string); ``family=6``: ``{qube: ip6}`` of those where
    IPv6 is in effect (``addresses6``); by default for the qubes of the
    ``qubes_firewall:qubes`` pillar, or without one for every qube that has
    an address: a pillar file passes the names (docs/addresses.md).

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.addresses
        sudo qubesctl qubes_firewall.addresses work,web
    """
    return _run().addresses(names, family)


def qubes_release():
    """
    The Qubes release of this dom0, ``"4.2"`` or ``"4.3"``, detected from
    Qubes (``/etc/qubes-release``). The addresses pillar hands it to the
    qubes as ``lookup:qubes_release`` (docs/addresses.md).

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.qubes_release
    """
    return _run().qubes_release()


def dom0_problems():
    """
    The dom0 preflight: every reason the pillar cannot be applied to this
    Qubes, empty when it fits (docs/dom0.md lists the checks).  Reads only.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.dom0_problems
    """
    return _run().dom0_problems()


def reconnect(netvm, test=False):
    """
    Re-attach the running clients of ``netvm`` after it restarted (the Qubes firewall manual page's "Reconnecting qubes after a NetVM reboot"): ``qvm-prefs CLIENT
    netvm NETVM`` for each, network qubes such as sys-firewall first. Returns
    the clients in the order used; ``test=True`` writes nothing.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.reconnect sys-net
    """
    return _run().reconnect(netvm, test=test)


def connect_tcp_commands(qube=None):
    """
    The one-off ``qvm-connect-tcp`` command of each non-persistent
    ``qubes_firewall:connect_tcp`` entry (only client ``qube``'s, when given),
    as ``[{"origin", "client", "command"}]``: what the user runs in the client
    qube, since only persistent entries get socket units.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.connect_tcp_commands
        salt-call qubes_firewall.connect_tcp_commands qube=untrusted
    """
    return _run().connect_tcp_commands(qube)


# ---- fleet: one pillar tree for many machines (docs/fleet.md) ----


def fleet_pillar(shared_file, machine_file=None, ask_qubes=True, minion=None):
    """
    This machine's pillar (docs/addresses.md, docs/fleet.md): the shared
    topology (a path, or a name in the pillar roots) with this machine's file
    merged on (if any), with (``ask_qubes``) the addresses and release from
    Qubes; only ``minion``'s part when given.  Never raises: a broken file
    gives ``{"qubes_firewall": {"error": MESSAGE}}``, failing this formula only.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.fleet_pillar /srv/user_pillar/qubes_firewall_shared.yaml /srv/user_pillar/qubes_firewall_machine.yaml
    """
    return _run().fleet_pillar(shared_file, machine_file or None, ask_qubes, minion)


def targets(shared_file=None, machine_file=None):
    """
    The qubes this pillar needs a run in, as qubesctl's ``--targets`` value:
    custom-persist templates, disposable templates, the pillar's qubes from
    the uplink down, the ConnectTCP clients.  Salt's options go after the
    function: ``sudo qubesctl --targets=$(sudo qubesctl qubes_firewall.targets
    --out=newline_values_only) state.apply qubes_firewall``.  With files (as
    ``fleet_pillar``; the pillar top's call): dom0 first, never an error.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.targets
        sudo qubesctl qubes_firewall.targets --out=newline_values_only
    """
    return _run().targets(shared_file, machine_file)


def fleet_status(fmt=None):
    """
    This machine's row of the fleet view (dom0, reads only): machine, a
    one-line verdict, dom0's drift, the targets.  ``fmt=row`` (default): one
    tab-separated line; ``fmt=json``: one line of JSON; ``fmt=data`` (or
    ``--out=json``): the row with ``details``.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.fleet_status --out=newline_values_only
        sudo qubesctl qubes_firewall.fleet_status fmt=json --out=newline_values_only
    """
    if fmt not in (None, "", "row", "json", "data"):
        raise CommandExecutionError("fmt must be row, json or data, got %r" % (fmt,))
    row = _run().fleet_row(__grains__.get("host"))
    if fmt == "data" or (not fmt and (__opts__.get("output") or "") in _DATA_OUTPUTTERS):
        return row
    return qf_fleet.row_json(row) if fmt == "json" else qf_fleet.row_text(row)
