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
    return _plan(mdl, qube)


def _plan(mdl, qube):
    """The planner's plan of ``qube`` in the validated model ``mdl``."""
    try:
        return __salt__["qubes_firewall_plan.plan_qube"](mdl, qube)
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc


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


def _stale_disposable_block(mdl, name):
    """
    A block ``rules:NAME`` found in a file: NAME's disposable template (or a
    copy of its /rw) wrote it.  It is stale when NAME is no longer a disposable
    with a template in the pillar; while it is one, only its template's run
    manages it (a disposable's own /rw is a copy that must keep it).
    """
    qube = mdl.qubes.get(name)
    return qube is None or qube.dispvm_template is None


def persisted_files(qube=None):
    """
    ``{path: (old_text, new_text)}`` for the files that replay rules at boot.
    A qube's own rules go in a managed block ``rules`` of
    ``qubes-firewall-user-script`` when it provides network, of ``rc.local``
    otherwise.  A named disposable (``dispvm_template`` in the pillar) gets its
    /rw from its disposable template at each start: its block ``rules:NAME``
    is written by the run on the template, and its own run writes none.
    Blocks that are no longer wanted are removed; a ``rules:NAME`` block is
    left alone while NAME is a disposable of another template.  Reads only.
    """
    qube = qube or minion_id()
    mdl = model()
    plan_mod = "qubes_firewall_plan"
    wanted = {}  # block name -> (file name, body)
    if qube in mdl.qubes and mdl.qubes[qube].dispvm_template is None:
        plan = _plan(mdl, qube)
        wanted["rules"] = (plan.persist_file, __salt__[plan_mod + ".persist_block"](plan))
    for name in mdl.disposables_of(qube):
        plan = _plan(mdl, name)
        wanted["rules:" + name] = (plan.persist_file, __salt__[plan_mod + ".persist_block"](plan))
    files = __salt__["qubes_firewall_files.replace_block"]
    out = {}
    for filename in ("qubes-firewall-user-script", "rc.local"):
        path = "%s/%s" % (mdl.lookup.rw_config, filename)
        old = __salt__["qubes_firewall_files.read"](path)
        present = [n for n in __salt__["qubes_firewall_files.block_names"](old)
                   if n == "rules" or (n.startswith("rules:") and _stale_disposable_block(mdl, n[6:]))]
        new = old
        try:
            for block in sorted(set(present) | set(wanted)):
                where, body = wanted.get(block, (None, None))
                new = files(new, block, body if where == filename else None, header="#!/bin/sh\n")
        except ValueError as exc:
            raise CommandExecutionError("%s: %s" % (path, exc)) from exc
        out[path] = (old, new)
    if qube not in mdl.qubes and not wanted and all(o == n for o, n in out.values()):
        return {}  # not ours to manage (a former template's leftovers are removed above)
    return out


# ---- dom0 ----
# The dom0 part: the pure planner is qubes_firewall_dom0, Qubes itself is
# reached only through qubes_firewall_qubes (qubesadmin in-process, or the
# qvm-* tools).


def _dom0(func):
    return __salt__["qubes_firewall_dom0." + func]


def _qubes(func):
    return __salt__["qubes_firewall_qubes." + func]


def inventory():
    """
    Every qube Qubes knows, read in one call (see
    ``qubes_firewall_qubes.inventory``).

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.inventory
    """
    return _qubes("inventory")()


def addresses(names=None):
    """
    ``{qube: ip}`` resolved from Qubes, for the qubes in ``names`` (a list or
    a comma-separated string); by default for the qubes of the
    ``qubes_firewall:qubes`` pillar, or, when there is none (while a pillar
    is being rendered), for every qube that has an address. A pillar file
    should therefore always pass the names, as docs/dom0.md shows:

    .. code-block:: jinja

        {%- import_yaml 'qubes_firewall.sls' as topology %}
        qubes_firewall:
          addresses: {{ salt['qubes_firewall.addresses'](topology.qubes_firewall.qubes.keys() | list) | yaml }}

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.addresses
        sudo qubesctl qubes_firewall.addresses work,web
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names is None:
        raw = _raw_pillar()
        qubes = raw.get("qubes") if isinstance(raw, dict) else None
        if isinstance(qubes, dict) and qubes:
            names = [str(n) for n in qubes]
    return _dom0("addresses")(inventory(), names)


def qubes_release():
    """
    The Qubes release of this dom0, ``"4.2"`` or ``"4.3"``, detected from
    Qubes (``/etc/qubes-release``). The addresses pillar hands it to the
    qubes as ``lookup:qubes_release`` (docs/dom0.md).

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.qubes_release
    """
    return _qubes("qubes_release")()


def _given_release():
    raw = _raw_pillar()
    lookup = raw.get("lookup") if isinstance(raw, dict) else None
    return lookup.get("qubes_release") if isinstance(lookup, dict) else None


def _rule_problems(model_):
    out = []
    for name, qube in sorted(model_.qubes.items()):
        for index, rule in enumerate(qube.firewall or ()):
            problem = _qubes("rule_problem")(_dom0("rule_fields")(rule))
            if problem:
                out.append("qubes_firewall:qubes:%s:firewall:%d: %s; correct the rule"
                           % (name, index, problem))
    return out


def dom0_problems():
    """
    The dom0 preflight: every reason the pillar cannot be applied to this
    Qubes, empty when it fits. It checks the pillar against the live Qubes
    (qubes that do not exist, ``lookup:qubes_release``, custom-persist and
    ``template``, a network service qube without a firewall qube in front, a
    hop that cannot hold nft rules, a connection a qvm-firewall list drops, a
    move Qubes refuses, a rule that would not reach Qubes intact) and plans
    every qube of the pillar with the qube-side planner, with the addresses
    Qubes gives them. Reads only, and only once per run.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.dom0_problems
    """
    model_ = model()
    inv = inventory()
    detected = qubes_release() if _qubes("release_known")() else None
    out = list(_dom0("release_problems")(_given_release(), detected))
    feats = {}
    lists = {}
    if all(name in inv for name in model_.qubes):
        feats = {name: _qubes("features")(name) for name in _dom0("needed_features")(model_, inv)}
        lists = {name: _qubes("get_firewall")(name) for name in _dom0("needed_firewalls")(model_)}
    out += _dom0("problems")(model_, inv, feats, lists)
    if not all(name in inv for name in model_.qubes):
        return out
    out += _rule_problems(model_)
    planned = _dom0("planning_model")(model_, inv)
    for problem in __salt__["qubes_firewall_plan.check_model"](planned):
        if problem not in out:
            out.append(problem)
    return out


def dom0_prefs_plan():
    """
    The ordered ``netvm`` / ``provides_network`` changes that make Qubes match
    the pillar: ``[{qube, prop, old, new}, ...]``; empty when it matches
    (values reached through Qubes' defaults count). Reads only.
    """
    try:
        return _dom0("prefs_steps")(model(), inventory())
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc


def dom0_apply_prefs(steps):
    """
    Apply ``dom0_prefs_plan`` steps in order. Returns the steps done; on a
    refusal raises CommandExecutionError naming the steps done before it.
    """
    done = []
    for step in steps:
        try:
            _qubes("set_pref")(step["qube"], step["prop"], step["new"])
        except CommandExecutionError as exc:
            raise CommandExecutionError(
                "%s (done before: %s)" % (exc, ", ".join(_step_text(s) for s in done) or "nothing"),
                info={"done": done},
            ) from exc
        done.append(step)
    return done


def _step_text(step):
    value = step["new"]
    if step["prop"] == "netvm" and value is None:
        value = "none"
    return "%s %s=%s" % (step["qube"], step["prop"], value)


def dom0_firewall_plan():
    """
    ``{qube: {"old": [...], "new": [...]}}``: the qvm-firewall lists (canonical
    rule lines) to replace, for the qubes whose pillar list differs. Reads only.
    """
    model_ = model()
    inv = inventory()
    managed = [n for n, q in sorted(model_.qubes.items()) if q.firewall is not None and n in inv]
    live = {name: _qubes("get_firewall")(name) for name in managed}
    return _dom0("firewall_changes")(model_, live)


def dom0_apply_firewall(plan):
    """
    Replace each planned qube's whole qvm-firewall list (``plan[qube]["rules"]``:
    rule elements, checked before the first write). Returns the qubes done.
    """
    done = []
    for name in sorted(plan):
        _qubes("set_firewall")(name, plan[name]["rules"])
        done.append(name)
    return done


def reconnect(netvm, test=False):
    """
    Re-attach the running clients of ``netvm`` after it restarted (the seed
    document's "Reconnecting qubes after a NetVM reboot"): ``qvm-prefs CLIENT
    netvm NETVM`` for each, network qubes such as sys-firewall first. Returns
    the clients in the order used; ``test=True`` writes nothing.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.reconnect sys-net
    """
    return _qubes("reconnect")(netvm, test=test)


# ---- connect_tcp ----


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
    entries = model().connect_tcp
    return [
        {"origin": origin, "client": client, "command": command}
        for origin, client, command in __salt__["qubes_firewall_connect_tcp.commands"](entries, qube)
    ]


# ---- operations ----
# What a user does after applying: look at the counters, find drift, back up
# and revert, draw the topology, ask whether a flow may pass.  The work is in
# qubes_firewall_report, _backup, _diagram and _flow.


def _live():
    return __salt__["qubes_firewall_nft.live_state"](__salt__["qubes_firewall_nft.read"]())


def _not_named_here(qube):
    return {"qube": qube, "comment": "%s is not named in the qubes_firewall:qubes pillar" % qube}


def status(origin=None):
    """
    Every rule the formula owns in this qube, with its pillar origin and its
    packet/byte counters (the seed document's "look at the counters"), summed
    per pillar entry under ``by_origin``; ``missing`` lists planned rules that
    are not loaded. ``origin`` keeps only rules of one pillar entry, e.g.
    ``port_forwards:https``: the same name in every hop of a port forward.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.status
        qubesctl --skip-dom0 --targets=sys-net,sys-firewall,web qubes_firewall.status origin=port_forwards:https
    """
    plan = qube_plan()
    if plan is None:
        return _not_named_here(minion_id())
    return __salt__["qubes_firewall_report.status"](plan, _live(), origin)


def drift():
    """
    What differs between the pillar, the live ruleset and the boot block:
    rules missing (a restart, a hand ``flush``), rules the pillar does not
    imply (hand edits in the formula's chains), missing or duplicated jumps,
    a lost or edited boot block. Salt's exit code is 1 when anything drifted;
    ``fix`` holds the transaction ``state.apply qubes_firewall`` would load.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.drift
    """
    plan = qube_plan()
    if plan is None:
        return _not_named_here(minion_id())
    live = _live()
    files = persisted_files()

    def block_of(text):
        return __salt__["qubes_firewall_files.get_block"](text, "rules")

    out = __salt__["qubes_firewall_report.drift"](plan, live, files, block_of)
    if out["live"]:
        try:
            out["fix"] = __salt__["qubes_firewall_nft.transaction"](plan, live)[0]
        except CommandExecutionError as exc:
            out["fix"] = str(exc)
    if out["drifted"]:
        __context__["retcode"] = 1
    return out


def _backup_args():
    return {
        "directory": __opts__.get("qubes_firewall_backup_dir"),
        "owner": minion_id(),
    }


def backup(document=None):
    """
    Save the live ruleset (the seed document's backup, as nft's JSON:
    ``nft -j list ruleset``, counters included) as
    ``<dir>/<minion id>-<UTC timestamp>.json`` and keep the newest N. The
    directory is the minion option ``qubes_firewall_backup_dir`` (default
    ``/var/lib/qubes-firewall-formula/backups``), N the option
    ``qubes_firewall_backup_keep`` (default 10). The formula's state takes one
    before each change of the live rules, from the document it read already.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.backup
    """
    return __salt__["qubes_firewall_backup.backup"](keep=__opts__.get("qubes_firewall_backup_keep"),
                                                   document=document, **_backup_args())


def backups():
    """
    The saved rulesets of this minion, newest first.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.backups
    """
    return __salt__["qubes_firewall_backup.backups"](**_backup_args())


def revert(name=None):
    """
    Replace the whole live ruleset with a saved one (default: the newest) in
    one transaction, ``flush ruleset`` followed by the saved file, checked
    with ``nft -c`` first: on any error nothing changes.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.revert
        salt-call qubes_firewall.revert name=sys-net-20240101T120000.000000Z.json
    """
    return __salt__["qubes_firewall_backup.revert"](name=name, **_backup_args())


def diagram(fmt="mermaid", path=None):
    """
    The pillar's topology as Mermaid (``fmt=mermaid``) or Graphviz DOT
    (``fmt=dot``) text: the netvm chain with roles, each port forward's path,
    connections and qubes.ConnectTCP bindings. With ``path``, the text is
    written to that file (Salt's outputters cannot print bare text) and the
    path returned.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.diagram
        sudo qubesctl qubes_firewall.diagram fmt=dot path=/tmp/topology.dot
        dot -Tpng /tmp/topology.dot -o topology.png
    """
    try:
        text = __salt__["qubes_firewall_diagram.render"](model(), fmt)
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc
    if path is None:
        return text
    __salt__["qubes_firewall_files.write_atomic"](path, text, mode=0o644)
    return {"path": path}


def check(source, target, port, proto="tcp", interface=None, source_ip=None):
    """
    May a new connection from ``source`` to ``target`` on ``port`` pass, and
    through which rules? Answered from the pillar alone (nothing is read from
    or written to the system), by walking the packet through every hop.
    ``source``/``target``: qube names, or ``outside`` (also ``lan``, ``wan``,
    ``internet``) for the world beyond the uplink; from outside, ``port`` is
    the port opened on the uplink and ``interface``/``source_ip`` say where
    the packet comes from (else rules that depend on them are listed as
    ``conditions``).

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.check work build 22
        salt-call qubes_firewall.check outside web 443 interface=ens6 source_ip=192.168.1.50
    """
    try:
        return __salt__["qubes_firewall_flow.check"](model(), source, target, port, proto,
                                                     interface=interface, source_ip=source_ip)
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc
