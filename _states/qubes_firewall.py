"""
States of qubes-firewall-formula: each function is one promise about dom0 or a
qube, kept in the saltext-vault style: ask the execution modules for the
current and the wanted value, return at once when they match, put a diff in
``changes``, stop there under ``test=True``, else write through an execution
module and say what was done.  Errors from the execution layer become
``result: False`` with a comment, never a traceback.

Names: ``*_managed`` makes something match, ``absent`` removes, ``*_valid`` /
``validated`` only check; ``run_locked`` and ``run_summary`` are the run's
plumbing (take the lock first, say what changed last).  The names before
this release (``runtime_rules``, ``persisted_rules``, ``custom_persist_replay``,
``cleaned``, ``connect_tcp_policy``, ``connect_tcp_bindings``, ``prefs``,
``firewall_rules``, ``policy_absent``, ``locked``, ``summary``) still work
for one release (``DEPRECATED``) and say the new name in their comment.

Data: the formula's SLS (``salt/qubes_firewall/init.sls``) reads the
``qubes_firewall`` pillar.  Every data-taking state also accepts the
pillar's keys as arguments (``qubes``, ``addresses``, ``connections``,
``connect_tcp``, ``port_forwards``, each as under ``qubes_firewall``): they
are added to the pillar's data for that state and every later state of the
same run, validated by the same model (errors name the argument, e.g.
``argument port_forwards:0:port``) and planned by the same planner.

Ownership: the formula owns its objects in a qube as a whole (the ``qf-*``
chains, sets and maps, the jumps, the boot blocks); each run makes them
equal to that run's data, the pillar plus every argument its states were
given, and removes the rest.  So a forward declared in an SLS stays as long
as every run on that qube declares it: apply that SLS instead of
``qubes_firewall`` (it includes it), never one and then the other::

    # /srv/salt/web_forward.sls: the formula's run plus one forward of its own
    # sudo qubesctl --skip-dom0 --targets=sys-net,sys-firewall state.apply web_forward
    include:
      - qubes_firewall

    extend:
      qubes_firewall-validated:
        qubes_firewall.validated:
          - port_forwards:
            - name: web-https
              qube: web
              port: 443
              external_port: 8443
              interfaces: [ens6]
              sources: [192.168.1.0/24]

Given to ``validated`` (the state every other one requires), the forward is
part of the whole run: the nft rules, the boot replay, the summary.  A run of
``qubes_firewall`` alone afterwards removes it again, as it removes any
forward gone from the pillar.
"""

import difflib
import os
import re
import sys

from salt.exceptions import CommandExecutionError

# The formula's core files live in the execution modules' directory: ``_modules``
# next to ``_states`` in a file root, ``modules`` next to ``states`` in Salt's
# extension cache and in salt-ssh's bundle.  While Salt's loader imports this
# file only its own directory is on sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
_CORE = os.path.join(os.path.dirname(_HERE), os.path.basename(_HERE).replace("states", "modules"))
_ADDED = _CORE not in sys.path
if _ADDED:
    sys.path.append(_CORE)
try:
    import _qubes_firewall_connect_tcp as qf_connect_tcp
    import _qubes_firewall_files as qf_files
    import _qubes_firewall_nft as qf_nft
    import _qubes_firewall_report as qf_report
    import _qubes_firewall_run as qf_run
finally:
    if _ADDED:
        sys.path.remove(_CORE)

__virtualname__ = "qubes_firewall"


def __virtual__():
    return __virtualname__


def _run():
    """
    This run (``_qubes_firewall_run.Run``): the same opts and context as the
    execution modules', and the run's data: the pillar, plus what the states
    of this run were given as arguments (``_given``).
    """
    given = _context().get(_CTX_GIVEN)
    if not given:
        return qf_run.Run(__opts__, __pillar__, __context__)
    return qf_run.Run(__opts__, _with_given(__pillar__, given), __context__)


def _context():
    try:
        return __context__
    except NameError:  # a state module loaded without Salt's dunders (a test double)
        return {}


def _test():
    """Test mode, read in one place: ``test=True`` on the command line or in the minion's options."""
    return bool(__opts__.get("test"))


# ---- data given as arguments: the run's data is the pillar plus what its states were given ----
#
# Every data-taking state accepts the pillar's keys as arguments (``qubes``,
# ``addresses``, ``connections``, ``connect_tcp``, ``port_forwards``, each as
# it would be under ``qubes_firewall``).  What a state is given is added to
# the run's data for it and for every later state of the same run (the boot
# replay and the summary see the forward a ``rules_managed`` state was given),
# validated by the same model, planned by the same planner.  Mappings are
# added key by key (a key the pillar has too must hold the same value), lists
# are appended (an item given twice counts once).  Errors name the argument,
# e.g. ``argument port_forwards:0:port``.

_CTX_GIVEN = "qubes_firewall.given"
DATA_KEYS = ("qubes", "addresses", "connections", "connect_tcp", "port_forwards")
_LIST_KEYS = ("connections", "connect_tcp", "port_forwards")


def _given(ret, **data):
    """
    Add the state's data arguments to the run's data; False (with ``ret`` failed)
    when one contradicts the pillar or what an earlier state of the run was given.
    """
    data = {k: v for k, v in data.items() if v is not None}
    if not data:
        return True
    context = _context()
    given = context.get(_CTX_GIVEN) or {}
    merged = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
              for k, v in given.items()}
    problems = []
    pillar = __pillar__.get("qubes_firewall") if isinstance(__pillar__.get("qubes_firewall"), dict) else {}
    for key, value in data.items():
        if not isinstance(value, list if key in _LIST_KEYS else dict):
            problems.append("argument %s: must be a %s, got %r"
                            % (key, "list" if key in _LIST_KEYS else "mapping", value))
        elif isinstance(value, dict):
            have = merged.setdefault(key, {})
            for item, item_value in value.items():
                for where, other in (("the qubes_firewall pillar", (pillar.get(key) or {})), ("an earlier state", have)):
                    if isinstance(other, dict) and item in other and other[item] != item_value:
                        problems.append("argument %s:%s: %s has %s:%s with another value (%r); declare it in one place"
                                        % (key, item, where, key, item, other[item]))
                have[item] = item_value
        else:
            have = merged.setdefault(key, [])
            have += [item for item in value if item not in have]
    if problems:
        ret["result"] = False
        ret["comment"] = "invalid arguments:\n" + "\n".join(problems)
        return False
    context[_CTX_GIVEN] = merged
    return True


def _with_given(pillar, given):
    """The minion's pillar with the given data added under ``qubes_firewall``."""
    raw = pillar.get("qubes_firewall")
    raw = dict(raw) if isinstance(raw, dict) else {}
    for key, value in given.items():
        have = raw.get(key)
        if have is None:
            raw[key] = value
        elif isinstance(value, list) and isinstance(have, list):
            raw[key] = list(have) + [v for v in value if v not in have]
        elif isinstance(value, dict) and isinstance(have, dict):
            raw[key] = {**have, **value}
        # else the pillar's own value is invalid: kept, so that validation names it
    out = dict(pillar)
    out["qubes_firewall"] = raw
    return out


def _argument_paths(text):
    """A message about the run's data with each path into the given data named as the argument."""
    given = _context().get(_CTX_GIVEN)
    if not given:
        return text
    raw = __pillar__.get("qubes_firewall")
    raw = raw if isinstance(raw, dict) else {}

    def name(match):
        key, item = match.group(1), match.group(2)
        have = raw.get(key)
        if key in _LIST_KEYS:
            offset = len(have) if isinstance(have, list) else 0
            if int(item) >= offset:
                return "argument %s:%d" % (key, int(item) - offset)
        elif item in (given.get(key) or {}) and not (isinstance(have, dict) and item in have):
            return "argument %s:%s" % (key, item)
        return match.group(0)

    return re.sub(r"qubes_firewall:(%s):([^:\s]+)" % "|".join(DATA_KEYS), name, text)


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _fail(ret, exc):
    ret["result"] = False
    ret["comment"] = _argument_paths(str(exc))
    return ret


# ---- the run's summary: each state notes what it changed, the last state says it in one line ----

_CTX_SUMMARY = "qubes_firewall.summary"


def _run_record(qube):
    """This run's record for ``qube`` (``{"nft", "changed", "failed"}``), kept in ``__context__``."""
    try:
        context = __context__
    except NameError:  # a state module loaded without Salt's dunders (a test double)
        return {}
    return context.setdefault(_CTX_SUMMARY, {}).setdefault(qube, {"changed": [], "failed": []})


def _forget_summary():
    """A new run: forget the last run's summary and the data its states were given."""
    _context().pop(_CTX_SUMMARY, None)
    _context().pop(_CTX_GIVEN, None)


def _note(qube, ret, what):
    """Note in the run's record that ``what`` (e.g. "boot replay") changed, or failed, in ``qube``."""
    record = _run_record(qube)
    if ret["result"] is False:
        record.setdefault("failed", []).append(what)
        record.setdefault("why", qf_report.first_cause(ret["comment"]))  # the summary line names the cause
    elif ret["changes"]:
        record.setdefault("changed", []).append(what)
    return ret


def run_locked(name):
    """
    This minion's lock (``<lookup:state_dir>/lock``, ``fcntl.flock``) is held
    by this run, so that two runs never interleave; it is released when the
    run's process exits (a killed run releases it too).  The formula's SLS
    files take it first.  With the lock held, the scratch files a killed run
    left are stale and are removed (reported under ``test=True``).

    .. code-block:: yaml

        # plumbing: the formula's SLS files take it first; an SLS of your own that
        # uses the formula's states without including them should too
        qubes_firewall-locked:
          qubes_firewall.run_locked: []
    """
    ret = _ret(name)
    try:
        _forget_summary()
        held = _run().lock()
        _run().forget_run()
        stale = _run().stale_scratch()
        if stale and not _test():
            stale = _run().remove_stale_scratch()
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    ret["comment"] = "Holding %s (waited %.1f s)." % (held["path"], held["waited"])
    if stale:
        ret["changes"] = {"stale scratch files removed": stale}
        if _test():
            ret["result"] = None
            ret["changes"] = {"stale scratch files to remove": stale}
    return ret


def validated(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    The ``qubes_firewall`` pillar is valid and, in a qube, plans: this qube's
    rules (and those of the qubes whose boot replay it writes) can be
    planned.  Every other state of the formula requires this one, so a bad
    pillar or a planner refusal stops the run before anything changes; the
    comment names each bad pillar path.  A pillar without ``qubes_firewall``
    is an error too.

    .. code-block:: yaml

        # /srv/salt/my_forwards.sls, applied with
        #   sudo qubesctl --skip-dom0 --targets=sys-net,sys-firewall state.apply my_forwards
        # the formula's run, plus two forwards of this SLS for every state of the run
        include:
          - qubes_firewall

        extend:
          qubes_firewall-validated:
            qubes_firewall.validated:
              - port_forwards:
                - {name: web-https, qube: web, port: 443, external_port: 8443,
                   interfaces: [ens6], sources: [192.168.1.0/24]}
                - {name: web-ssh, qube: web, port: 22, external_port: 2222,
                   interfaces: [ens6], sources: [192.168.1.10/32]}
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    try:
        problems = _run().preflight()
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if problems:
        ret["result"] = False
        ret["comment"] = _argument_paths("invalid pillar:\n" + "\n".join(problems))
        return _note(_run().minion_id(), ret, "pillar check (nothing was changed)")
    ret["comment"] = "The qubes_firewall pillar is valid."
    return ret


def _not_named(ret, qube):
    ret["comment"] = (
        "%s is not named in the qubes_firewall:qubes pillar; nothing to do here." % qube
    )
    return ret


def _removed_stale_temps(ret, paths):
    """Remove (or, under test=True, report) the temp files a killed run left next to ``paths``."""
    stale = qf_files.stale_temps(paths)
    if not stale:
        return
    if _test():
        ret["changes"]["stale temporary files to remove"] = stale
        return
    ret["changes"]["stale temporary files removed"] = qf_files.remove_stale_temps(paths)


def rules_managed(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    The live nftables ruleset of this qube holds exactly the rules the pillar
    implies, in the objects the formula owns (in ``table ip qubes``, reached
    by one jump each from ``custom-input`` / ``custom-forward``).  A qube the
    pillar does not name, or names with nothing to do, holds none of them:
    leftovers are removed.  One nft read; when something differs, one
    transaction, checked with ``nft -c`` first.  ``changes["nft"]`` says it
    once, by pillar entry: rules and elements ``added``, ``removed`` and
    ``kept``, the ``entries added`` / ``removed`` / ``changed``, and the
    chains, sets and jumps made or dropped (``objects``); the transaction
    itself is what ``qubes_firewall.drift`` prints as its fix.

    .. code-block:: yaml

        # /srv/salt/web_forward.sls: one forward without a topology pillar, applied with
        #   sudo qubesctl --skip-dom0 --targets=sys-net state.apply web_forward
        web-forward-rules:
          qubes_firewall.rules_managed:
            - qubes:
                sys-net: {netvm: none, provides_network: true}
                web: {netvm: sys-net}
            - addresses: {sys-net: 10.137.0.5, web: 10.137.0.11}
            - port_forwards:
              - {name: web-https, qube: web, port: 443, external_port: 443,
                 interfaces: [ens6], sources: [192.168.1.0/24]}

        # the same rules at boot (the data above is the run's data from here on)
        web-forward-boot-replay:
          qubes_firewall.boot_replay_managed:
            - require:
              - qubes_firewall: web-forward-rules
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    qube = _run().minion_id()
    try:
        plan = _run().qube_plan(qube)
        live = _run().live_state()
        script, summary = _run().owned_transaction(plan, live)
    except CommandExecutionError as exc:
        return _note(qube, _fail(ret, exc), "nft")
    wanted = plan is not None and plan.rule_count > 0
    record = _run_record(qube)
    record["nft"] = {"added": 0, "removed": 0, "kept": plan.rule_count if wanted else 0}
    if not script:
        if plan is None:
            return _not_named(ret, qube)
        if not wanted:
            ret["comment"] = "The pillar gives %s no rules; the formula holds none here." % qube
            return ret
        ret["comment"] = "The nft rules of %s are up to date (%d rules)." % (qube, plan.rule_count)
        return ret
    # each change once, by pillar entry; the transaction itself: qubes_firewall.drift shows it as "fix"
    record["nft"] = ret["changes"]["nft"] = qf_report.nft_change(
        summary, plan.rule_count if wanted else 0)
    what = "updated" if wanted else "removed (the pillar gives %s none)" % qube
    if _test():
        try:
            qf_nft.check(script)
        except CommandExecutionError as exc:
            return _note(qube, _fail(ret, exc), "nft")
        ret["result"] = None
        ret["comment"] = ("The nft rules of %s would be %s in one transaction (nft -c accepts it;"
                          " qubes_firewall.drift shows it)." % (qube, what))
        return ret
    try:
        saved = _run().backup(_run().nft_document())
        _run().load(script)
    except CommandExecutionError as exc:
        ret["changes"] = {}
        record["nft"] = None
        return _note(qube, _fail(ret, exc), "nft")
    ret["comment"] = ("The nft rules of %s were %s in one transaction (the ruleset before: %s)."
                      % (qube, what, saved["path"]))
    return ret


def boot_replay_managed(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    The rules come back at boot: a managed block in
    ``<rw_config>/qubes-firewall-user-script`` (qubes that provide network) or
    ``<rw_config>/rc.local`` (the others) replays them idempotently.  The
    user's own lines stay byte for byte; the file is written atomically and is
    executable.  A qube with no rules gets no block (a stale one is removed);
    a custom-persist qube's replay lives in its template (state
    ``custom_persist_replay``).

    .. code-block:: yaml

        # in the formula's SLS after the live rules; with data of its own:
        #   sudo qubesctl --skip-dom0 --targets=sys-net,sys-firewall state.apply my_boot_replay
        qubes_firewall-persisted:
          qubes_firewall.boot_replay_managed:
            - require:
              - qubes_firewall: qubes_firewall-runtime-rules
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    qube = _run().minion_id()
    try:
        files = _run().persisted_files(qube)
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if not files:
        return _not_named(ret, qube)
    todo = {}
    nft = _run_record(qube).get("nft") or {}
    replayed = bool(nft.get("added") or nft.get("removed"))
    for path, (old, new) in files.items():
        mode = qf_files.mode_of(path)
        needs_exec = new is not None and mode is not None and mode & 0o100 == 0
        if old != new:
            ret["changes"][path] = qf_files.diff(old, new, path)
            if replayed:
                # the nft change above, shown once: here only that the boot replay follows it
                ret["changes"][path] = _replay_note(ret["changes"][path], new)
        if needs_exec:
            ret["changes"].setdefault(path + " mode", "%04o -> %04o" % (mode, mode | 0o111))
        if old != new or needs_exec:
            todo[path] = (old, new, needs_exec, mode)
    try:
        _removed_stale_temps(ret, sorted(files))
        if not todo:
            _note(qube, ret, "boot replay")
            ret["comment"] = "The boot replay of %s's rules is up to date." % qube
            if ret["changes"] and _test():
                ret["result"] = None
            return ret
        if _test():
            ret["result"] = None
            ret["comment"] = "Would update %s." % ", ".join(sorted(todo))
            return _note(qube, ret, "boot replay")
        for path, (old, new, needs_exec, mode) in sorted(todo.items()):
            if old != new:
                qf_files.write_atomic(path, new, mode=0o755)
            if needs_exec:
                qf_files.ensure_mode(path, mode | 0o111)
    except CommandExecutionError as exc:
        return _note(qube, _fail(ret, exc), "boot replay")
    ret["comment"] = "Updated %s." % ", ".join(sorted(todo))
    return _note(qube, ret, "boot replay")


def _replay_note(diff, new):
    """One line for a boot-block diff that only replays the nft change shown above."""
    added = sum(1 for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
    if new is None:
        return "removed (it replayed the nft rules removed above)"
    return ("the managed block replays the nft rules above (+%d -%d lines; "
            "qubes_firewall.drift compares it afterwards)" % (added, removed))


def _template_changes(files):
    out = {}
    for path, (old, new) in sorted(files.items()):
        if (old or "").startswith("->") or (new or "").startswith("->"):
            out[path] = "symlink %s -> %s" % (old[2:] if old else "(none)", new[2:] if new else "(removed)")
        else:
            out[path] = qf_files.diff(old, new, path)
    return out


def custom_persist_replay_managed(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    custom-persist qubes (``custom_persist: true``, ``template: T`` in the
    pillar) run none of their /rw/config scripts, so the run on template T
    writes their replay into T's root filesystem: for a network qube a
    script in ``<lookup:etc_qubes>/qubes-firewall.d/`` (run by the
    qubes-firewall service at each start), for the others a script and an
    enabled systemd unit in ``<lookup:systemd_dir>`` (run at each boot after
    Qubes' base nft tables).  Each acts only in its qube.  Files of qubes
    that no longer need them are removed.

    .. code-block:: yaml

        # run in the template T of the custom-persist qubes:
        #   sudo qubesctl --skip-dom0 --targets=T state.apply qubes_firewall
        qubes_firewall-custom-persist:
          qubes_firewall.custom_persist_replay_managed:
            - require:
              - qubes_firewall: qubes_firewall-runtime-rules
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    qube = _run().minion_id()
    try:
        files = _run().template_files()
        ret["changes"] = _template_changes(files)
        _removed_stale_temps(ret, sorted(p for p, (_o, n) in files.items() if not (n or "").startswith("->")))
        if not files:
            ret["comment"] = "No custom-persist replay to change here."
            if ret["changes"] and _test():
                ret["result"] = None
            return ret
        if _test():
            ret["result"] = None
            ret["comment"] = "Would update the custom-persist replay: %s." % ", ".join(sorted(files))
            return _note(qube, ret, "custom-persist replay (%d files)" % len(files))
        _run().write_template_files(files)
    except CommandExecutionError as exc:
        return _note(qube, _fail(ret, exc), "custom-persist replay")
    ret["comment"] = "Updated the custom-persist replay: %s." % ", ".join(sorted(files))
    return _note(qube, ret, "custom-persist replay (%d files)" % len(files))


def absent(name):
    """
    Nothing the formula made is left in this qube: its nft objects and
    jumps, its managed blocks in ``rc.local`` and
    ``qubes-firewall-user-script`` (``rules``, ``rules:NAME``,
    ``connect-tcp``), the ConnectTCP unit files and running units, the
    custom-persist scripts and units of a template.  Found by the formula's
    own marks, so it works with a broken or missing pillar; the user's rules
    and bytes stay.  ``state.apply qubes_firewall.clean`` runs it.

    .. code-block:: yaml

        # what salt/qubes_firewall/clean.sls does in a qube:
        #   sudo qubesctl --skip-dom0 --targets=sys-net state.apply qubes_firewall.clean
        qubes_firewall-cleaned:
          qubes_firewall.absent: []
    """
    ret = _ret(name)
    try:
        plan = _run().clean_plan()
        script, summary = plan["nft"]
        if script:
            ret["changes"]["nft"] = qf_report.nft_change(summary, 0)
        ret["changes"].update(_template_changes(plan["files"]))
        actions = _run().runtime_actions(plan["runtime"])
        if actions:
            ret["changes"]["runtime"] = actions
        _removed_stale_temps(ret, sorted(plan["files"]))
        if not ret["changes"]:
            ret["comment"] = "Nothing of qubes_firewall is left here."
            return ret
        if _test():
            if script:
                qf_nft.check(script)
            ret["result"] = None
            ret["comment"] = "Would remove everything qubes_firewall made here."
            return _note(_run().minion_id(), ret, "clean")
        if script:
            _run().backup(_run().nft_document())
            _run().load(script)
        if actions:
            _run().runtime_apply(plan["runtime"], {})
        _run().write_template_files(plan["files"])
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    ret["comment"] = "Removed everything qubes_firewall made here."
    return _note(_run().minion_id(), ret, "clean")


# ---- connect_tcp states ----


def _file_changes(files):
    """``{path: unified diff}`` (or a mode note) for a ``{path: {"old", "new"}}`` plan."""
    out = {}
    for path, item in sorted(files.items()):
        text = qf_files.diff(item["old"], item["new"], path)
        out[path] = text or "mode %04o (rc.local must be executable)" % item["mode"]
    return out


def _sentences(first, notes):
    return " ".join([first] + [note for note in notes if note])


def connect_tcp_policy_managed(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    dom0: the qrexec policy for every ``qubes_firewall:connect_tcp`` entry, in
    a managed block of ``lookup:policy_file`` (default
    ``/etc/qubes/policy.d/30-user-networking.policy``); the user's lines in
    that file stay as they are.  The new file is checked with
    ``qubes-policy-lint`` (when installed) before it replaces the old one,
    then written atomically (a new file gets mode 0664, group qubes).

    .. code-block:: yaml

        # dom0: sudo qubesctl state.apply my_connect_tcp
        # one qubes.ConnectTCP binding declared in an SLS
        work-ssh-to-build-policy:
          qubes_firewall.connect_tcp_policy_managed:
            - connect_tcp:
              - {client: work, server: build, port: 22}
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    try:
        plan = _run().policy_plan()
        path = plan["path"]
        if plan["old"] == plan["new"]:
            ret["comment"] = "The qubes.ConnectTCP policy in %s is up to date." % path
            return ret
        lint = qf_connect_tcp.lint_policy(path, plan["new"])
        ret["changes"][path] = qf_files.diff(plan["old"], plan["new"], path)
        if _test():
            ret["result"] = None
            ret["comment"] = "The qubes.ConnectTCP policy in %s would be updated. %s" % (path, lint)
            return _note("dom0", ret, "qubes.ConnectTCP policy")
        qf_connect_tcp.write_policy(path, plan["new"])
    except CommandExecutionError as exc:
        ret["changes"] = {}
        return _fail(ret, exc)
    ret["comment"] = "Updated the qubes.ConnectTCP policy in %s. %s" % (path, lint)
    return _note("dom0", ret, "qubes.ConnectTCP policy")


def connect_tcp_bindings_managed(name, qube=None, qubes=None, addresses=None, connections=None,
        connect_tcp=None, port_forwards=None):
    """
    A client qube (default: the minion id): for each ``connect_tcp`` entry
    with ``persistent: true`` and this client, a socket unit on
    ``127.0.0.1:local_port`` and its service template in ``lookup:rw_config``,
    a managed block in ``rc.local`` that installs and starts them at boot, and
    the sockets started now when systemd runs.  Entries gone from the pillar
    lose their units and lines.  The comment lists the one-off
    ``qvm-connect-tcp`` commands of the client's non-persistent entries.

    .. code-block:: yaml

        # the client qube: sudo qubesctl --skip-dom0 --targets=work state.apply my_connect_tcp
        work-ssh-to-build-bindings:
          qubes_firewall.connect_tcp_bindings_managed:
            - connect_tcp:
              - {client: work, server: build, port: 22, persistent: true}
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    writing = False
    try:
        plan = _run().binding_plan(qube)
        notes = [_run().verify_units(plan["changed_units"])]
        runtime = _run().runtime_plan(plan["units"], plan["qube"])
        actions = _run().runtime_actions(runtime)
        ret["changes"] = _file_changes(plan["files"])
        if actions:
            ret["changes"]["runtime"] = actions
        if runtime["skip"] and plan["units"]:
            notes.append(runtime["skip"] + ".")
        if plan["commands"]:
            notes.append("Run by hand in %s (not persistent): %s."
                         % (plan["qube"], "; ".join(plan["commands"])))
        if not ret["changes"]:
            ret["comment"] = _sentences(
                "The qubes.ConnectTCP bindings of %s are up to date." % plan["qube"], notes)
            return ret
        if _test():
            ret["result"] = None
            ret["comment"] = _sentences(
                "The qubes.ConnectTCP bindings of %s would be updated." % plan["qube"], notes)
            return _note(plan["qube"], ret, "ConnectTCP bindings")
        writing = True
        qf_connect_tcp.write_bindings(plan["files"])
        if not runtime["skip"]:
            _run().runtime_apply(runtime, plan["units"])
    except CommandExecutionError as exc:
        if not writing:
            ret["changes"] = {}
        return _note(_run().minion_id(), _fail(ret, exc), "ConnectTCP bindings")
    ret["comment"] = _sentences(
        "Updated the qubes.ConnectTCP bindings of %s." % plan["qube"], notes)
    return _note(plan["qube"], ret, "ConnectTCP bindings")


# ---- dom0 states ----
# Thin promises about Qubes itself (minion id dom0). Under test=True they only
# read (unlike Qubes' own qvm.prefs state, which writes even then), and a
# value Qubes already has, through its default or not, is left alone.


def _shown(prop, value):
    if prop == "netvm" and value is None:
        return "none"
    return value


def topology_valid(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    The dom0 preflight: the pillar fits this Qubes and the qubes can carry
    it. Every qube exists (``connect_tcp`` clients and servers too),
    ``lookup:qubes_release`` is the release dom0 runs, custom-persist and
    ``template`` match Qubes, a network service qube (``service: true``) has
    a firewall qube between it and its clients, every qube a port forward or
    connection goes through can hold nft rules, no connection is dropped by a
    qvm-firewall list on its way, every rule reaches Qubes intact, Qubes will
    accept every move, and the qube-side planner plans every qube of the
    pillar (with the addresses Qubes gives them). Reads only; every other
    dom0 state requires it, the qubes.ConnectTCP policy included, so nothing
    changes when it fails.

    .. code-block:: yaml

        # dom0: sudo qubesctl state.apply qubes_firewall (reads only)
        qubes_firewall-dom0-topology:
          qubes_firewall.topology_valid:
            - require:
              - qubes_firewall: qubes_firewall-validated
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    try:
        problems = _run().dom0_problems()
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if problems:
        ret["result"] = False
        ret["comment"] = _argument_paths("The pillar does not fit this Qubes:\n" + "\n".join(problems))
        return ret
    ret["comment"] = "The pillar's topology fits this Qubes."
    return ret


def netvm_managed(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    ``netvm`` and ``provides_network`` of every pillar qube match the pillar,
    changed in an order Qubes never refuses (a netvm provides network before a
    client points at it; uplinks first, so no loop arises mid-way; provides
    network dropped last). ``changes`` lists each qube's old and new values,
    the comment the order.

    .. code-block:: yaml

        # dom0: sudo qubesctl state.apply my_netvms
        # web behind sys-firewall, from an SLS instead of the pillar
        web-netvm:
          qubes_firewall.netvm_managed:
            - qubes:
                sys-net: {netvm: none, provides_network: true}
                sys-firewall: {netvm: sys-net, provides_network: true}
                web: {netvm: sys-firewall}
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    try:
        steps = _run().dom0_prefs_plan()
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if not steps:
        ret["comment"] = "netvm and provides_network already match the pillar."
        return ret
    order = "\n".join(
        "%d. qvm-prefs %s %s %s" % (i, s["qube"], s["prop"], _shown(s["prop"], s["new"]))
        for i, s in enumerate(steps, 1)
    )
    changes = {}
    for step in steps:
        entry = changes.setdefault(step["qube"], {}).setdefault(step["prop"], {"old": step["old"]})
        entry["new"] = step["new"]
        for key in ("old", "new"):
            entry[key] = _shown(step["prop"], entry[key])
    ret["changes"] = changes
    if _test():
        ret["result"] = None
        ret["comment"] = "Would change, in this order:\n" + order
        return _note("dom0", ret, "qvm-prefs of %d qubes" % len(changes))
    try:
        _run().dom0_apply_prefs(steps)
    except CommandExecutionError as exc:
        done = (getattr(exc, "info", None) or {}).get("done", [])
        ret["changes"] = {s["qube"]: {s["prop"]: {"old": _shown(s["prop"], s["old"]),
                                                  "new": _shown(s["prop"], s["new"])}} for s in done}
        return _fail(ret, exc)
    ret["comment"] = "Changed, in this order:\n" + order
    return _note("dom0", ret, "qvm-prefs of %d qubes" % len(changes))


def firewall_managed(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """
    The qvm-firewall list of every pillar qube with a ``firewall`` key equals
    the pillar's list, compared in Qubes' canonical form (``dstports`` ranges,
    ``/32`` hosts, key order); a list that differs is replaced whole.
    ``changes`` carries a unified diff per qube.

    .. code-block:: yaml

        # dom0: sudo qubesctl state.apply my_firewall
        # work may reach one network only
        work-qvm-firewall:
          qubes_firewall.firewall_managed:
            - qubes:
                sys-firewall: {netvm: none, provides_network: true}
                work:
                  netvm: sys-firewall
                  firewall:
                    - {action: accept, specialtarget: dns}
                    - {action: accept, dst4: 192.168.1.0/24}
                    - {action: drop}
    """
    ret = _ret(name)
    if not _given(ret, qubes=qubes, addresses=addresses, connections=connections,
                  connect_tcp=connect_tcp, port_forwards=port_forwards):
        return ret
    try:
        plan = _run().dom0_firewall_plan()
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if not plan:
        ret["comment"] = "The qvm-firewall lists already match the pillar."
        return ret
    ret["changes"] = {
        qube: {"diff": "".join(difflib.unified_diff(
            [line + "\n" for line in plan[qube]["old"]], [line + "\n" for line in plan[qube]["new"]],
            "qvm-firewall %s (Qubes)" % qube, "qvm-firewall %s (pillar)" % qube))}
        for qube in sorted(plan)
    }
    qubes = ", ".join(sorted(plan))
    if _test():
        ret["result"] = None
        ret["comment"] = "Would replace the qvm-firewall list of " + qubes
        return _note("dom0", ret, "qvm-firewall lists of %d qubes" % len(plan))
    try:
        _run().dom0_apply_firewall(plan)
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    ret["comment"] = "Replaced the qvm-firewall list of " + qubes
    return _note("dom0", ret, "qvm-firewall lists of %d qubes" % len(plan))


def reconnected(name):
    """
    Re-attach the running clients of the netvm ``name`` (the Qubes firewall manual page's
    "Reconnecting qubes after a NetVM reboot"), network qubes first. An
    action, not a lasting promise: use it on demand, e.g. ``qubesctl
    state.apply`` of an SLS holding only this state, after sys-net restarted.

    .. code-block:: yaml

        # dom0, after sys-net restarted: sudo qubesctl state.apply reconnect_sys_net
        sys-net-clients-reconnected:
          qubes_firewall.reconnected:
            - name: sys-net
    """
    ret = _ret(name)
    test = _test()
    try:
        clients = _run().reconnect(name, test=test)
    except CommandExecutionError as exc:
        return _fail(ret, exc)
    if not clients:
        ret["comment"] = "No running qube uses %s as netvm." % name
        return ret
    ret["changes"] = {"reattached": clients}
    if test:
        ret["result"] = None
        ret["comment"] = "Would re-attach to %s: %s" % (name, ", ".join(clients))
        return ret
    ret["comment"] = "Re-attached to %s: %s" % (name, ", ".join(clients))
    return ret


def connect_tcp_policy_absent(name):
    """
    dom0 clean: the formula's qubes.ConnectTCP block is gone from
    ``lookup:policy_file``; the user's lines stay byte for byte, and the file
    is removed only when nothing but the formula's header is left (a file the
    formula created). qvm-prefs (``netvm``, ``provides_network``) and
    qvm-firewall lists are left as they are: they are Qubes' own settings,
    and the comment says so.

    .. code-block:: yaml

        # what salt/qubes_firewall/clean.sls does in dom0:
        #   sudo qubesctl state.apply qubes_firewall.clean
        qubes_firewall-policy-absent:
          qubes_firewall.connect_tcp_policy_absent: []
    """
    ret = _ret(name)
    kept = " qvm-prefs (netvm, provides_network) and qvm-firewall lists are left as they are."
    try:
        plan = _run().policy_absent_plan()
        path = plan["path"]
        if plan["old"] == plan["new"]:
            ret["comment"] = "No qubes.ConnectTCP policy of the formula in %s." % path + kept
            return ret
        ret["changes"][path] = qf_files.diff(plan["old"], plan["new"], path)
        what = ("%s (the formula created it; nothing else is left in it)" % path
                if plan["new"] is None else "the formula's qubes.ConnectTCP block from %s, your lines kept" % path)
        if _test():
            ret["result"] = None
            ret["comment"] = "Would remove " + what + "." + kept
            return ret
        qf_connect_tcp.write_policy(path, plan["new"])
    except CommandExecutionError as exc:
        ret["changes"] = {}
        return _fail(ret, exc)
    ret["comment"] = "Removed " + what + "." + kept
    return ret


# ---- the run's last state ----


def run_summary(name):
    """
    The run's last word: one line per minion the run touched (a qube, or
    dom0), from what the formula's states above noted in this run, e.g.
    ``web: 3 added, 1 removed, 12 kept (nft); boot replay updated``: rules
    and set/map elements added, removed and kept, then each other thing that
    changed (or would, under ``test=True``) or failed.  Changes nothing; its
    ``changes`` stay empty.  The formula's SLS ends with it.

    .. code-block:: yaml

        # plumbing: the formula's SLS ends with it
        qubes_firewall-summary:
          qubes_firewall.run_summary: []
    """
    ret = _ret(name)
    try:
        records = dict(__context__.get(_CTX_SUMMARY) or {})
    except NameError:
        records = {}
    test = _test()
    if not records:
        records = {_run().minion_id(): {}}
    line = qf_report.qube_summary_line
    ret["comment"] = "\n".join(line(qube, record, test=test) for qube, record in records.items())
    ret["comment"] += qf_run.record_applied(_run(), records.get(_run().minion_id()), test)  # for pillar-less functions
    return ret


# ---- the state names before 1.x+1 (deprecated: kept for one release) ----
# Each old name runs its new state and says, in the comment, which name to use.

DEPRECATED = {"locked": "run_locked", "runtime_rules": "rules_managed", "persisted_rules": "boot_replay_managed", "custom_persist_replay": "custom_persist_replay_managed", "cleaned": "absent", "connect_tcp_policy": "connect_tcp_policy_managed", "connect_tcp_bindings": "connect_tcp_bindings_managed", "prefs": "netvm_managed", "firewall_rules": "firewall_managed", "policy_absent": "connect_tcp_policy_absent", "summary": "run_summary"}


def _renamed(old, ret):
    ret["comment"] = ("%s\n(qubes_firewall.%s is deprecated and goes in the next release:"
                      " use qubes_firewall.%s)" % (ret["comment"], old, DEPRECATED[old]))
    return ret


def locked(name):
    """Deprecated name of ``run_locked`` (kept for one release)."""
    return _renamed("locked", run_locked(name))


def runtime_rules(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """Deprecated name of ``rules_managed`` (kept for one release)."""
    return _renamed("runtime_rules", rules_managed(name, qubes=qubes, addresses=addresses, connections=connections, connect_tcp=connect_tcp,
                   port_forwards=port_forwards))


def persisted_rules(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """Deprecated name of ``boot_replay_managed`` (kept for one release)."""
    return _renamed("persisted_rules", boot_replay_managed(name, qubes=qubes, addresses=addresses, connections=connections, connect_tcp=connect_tcp,
                   port_forwards=port_forwards))


def custom_persist_replay(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """Deprecated name of ``custom_persist_replay_managed`` (kept for one release)."""
    return _renamed("custom_persist_replay", custom_persist_replay_managed(name, qubes=qubes, addresses=addresses, connections=connections, connect_tcp=connect_tcp,
                   port_forwards=port_forwards))


def cleaned(name):
    """Deprecated name of ``absent`` (kept for one release)."""
    return _renamed("cleaned", absent(name))


def connect_tcp_policy(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """Deprecated name of ``connect_tcp_policy_managed`` (kept for one release)."""
    return _renamed("connect_tcp_policy", connect_tcp_policy_managed(name, qubes=qubes, addresses=addresses, connections=connections, connect_tcp=connect_tcp,
                   port_forwards=port_forwards))


def connect_tcp_bindings(name, qube=None, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """Deprecated name of ``connect_tcp_bindings_managed`` (kept for one release)."""
    return _renamed("connect_tcp_bindings", connect_tcp_bindings_managed(name, qube=qube, qubes=qubes, addresses=addresses, connections=connections,
                   connect_tcp=connect_tcp, port_forwards=port_forwards))


def prefs(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """Deprecated name of ``netvm_managed`` (kept for one release)."""
    return _renamed("prefs", netvm_managed(name, qubes=qubes, addresses=addresses, connections=connections, connect_tcp=connect_tcp,
                   port_forwards=port_forwards))


def firewall_rules(name, qubes=None, addresses=None, connections=None, connect_tcp=None,
        port_forwards=None):
    """Deprecated name of ``firewall_managed`` (kept for one release)."""
    return _renamed("firewall_rules", firewall_managed(name, qubes=qubes, addresses=addresses, connections=connections, connect_tcp=connect_tcp,
                   port_forwards=port_forwards))


def policy_absent(name):
    """Deprecated name of ``connect_tcp_policy_absent`` (kept for one release)."""
    return _renamed("policy_absent", connect_tcp_policy_absent(name))


def summary(name):
    """Deprecated name of ``run_summary`` (kept for one release)."""
    return _renamed("summary", run_summary(name))
