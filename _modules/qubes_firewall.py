"""
qubes-firewall-formula's public execution module, ``qubes_firewall``.

Salt loads only the functions in ``PUBLIC`` (``__load__``), the ones a user
calls, and ``lib()``, the formula's internal API that its states use; every
other module of the formula exposes only its ``lib()``.

The shell around the pure core: it reads the ``qubes_firewall`` pillar (through
``__pillar__``: Salt 3008 masks values that ``pillar.get`` returns inside
modules), asks ``qubes_firewall_model`` to validate it and
``qubes_firewall_plan`` to plan this minion's part, and hands I/O to
``qubes_firewall_nft`` (nftables) and ``qubes_firewall_files`` (managed blocks).

One run parses the pillar and plans each qube once, and reads nft once: the
results are kept in ``__context__`` (shared by the execution modules and the
states of one run), the model and plans keyed by the pillar's content so
that a changed pillar in a long-lived process is parsed again.
"""

import fcntl
import functools
import json
import os
import re
import shutil
import time
import types

import _qubes_firewall_fleet as _fleet
from salt.exceptions import CommandExecutionError

__virtualname__ = "qubes_firewall"
# The functions a user calls (``salt-call sys.doc qubes_firewall``), and
# ``lib`` for the formula's states; every other function is internal.
PUBLIC = ("status", "drift", "check", "diagram", "show_plan", "backup", "backups", "revert", "reconnect",
          "addresses", "qubes_release", "connect_tcp_commands", "pillar_errors", "dom0_problems",
          "fleet_pillar", "targets", "fleet_status")
__load__ = list(PUBLIC) + ["lib"]

DEFAULT_STATE_DIR = "/var/lib/qubes-firewall-formula"
DEFAULT_ETC_QUBES = "/etc/qubes"
DEFAULT_SYSTEMD_DIR = "/etc/systemd/system"
DEFAULT_RW_CONFIG = "/rw/config"
LOCK_FILE = "lock"
SCRATCH_DIR = "scratch"
_SAFE_PATH = re.compile(r"\A(/[A-Za-z0-9_.-]+)+\Z")
# the formula's files in a template (custom-persist): the qube's name follows
PERSIST_PREFIX = "qubes-firewall-formula-"
# the mark names the template whose run wrote the file: a qube booted from that
# template sees the file in its (volatile) root and leaves it alone
PERSIST_MARK = "# qubes_firewall custom-persist replay, template %s (managed by Salt, do not edit)"
RC_HEADER = "#!/bin/sh\n"
_CTX_PARSED = "qubes_firewall.parsed"
_CTX_NFT = "qubes_firewall.nft"
_CTX_LOCK = "qubes_firewall.lock"
_LOCKS = {}  # lock path -> open file: held until the process exits
_OWN_CONTEXT = {}


def __virtual__():
    return __virtualname__


def _lib(name=""):
    """The internal API (``lib()``) of the formula's module ``qubes_firewall[_NAME]``."""
    return __salt__["qubes_firewall%s.lib" % ("_" + name if name else "")]()


def _context():
    try:
        return __context__
    except NameError:  # a module loaded without Salt's dunders (a test double)
        return _OWN_CONTEXT


def _raw_pillar():
    return __pillar__.get("qubes_firewall")


def _pillar_key(raw):
    try:
        return json.dumps(raw, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(raw)


def _parsed():
    """The run's parse of the pillar: ``{"key", "model", "errors", "plans"}``, made once."""
    raw = _raw_pillar()
    key = _pillar_key(raw)
    ctx = _context()
    entry = ctx.get(_CTX_PARSED)
    if entry is not None and entry["key"] == key:
        return entry
    entry = {"key": key, "model": None, "errors": [], "plans": {}}
    parse = _lib("model").parse
    try:
        entry["model"] = parse(raw, pillar_keys=[str(k) for k in __pillar__])
    except ValueError as exc:
        entry["errors"] = list(getattr(exc, "errors", None) or [str(exc)])
    ctx[_CTX_PARSED] = entry
    return entry


def pillar_errors():
    """
    Every problem of the ``qubes_firewall`` pillar, each naming its pillar
    path; an empty list when the pillar is valid.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.pillar_errors
    """
    return list(_parsed()["errors"])


def model():
    """
    The validated pillar model (raises CommandExecutionError naming every bad
    pillar path).  Parsed once per run.
    """
    entry = _parsed()
    if entry["errors"]:
        raise CommandExecutionError("invalid pillar:\n  " + "\n  ".join(entry["errors"]))
    return entry["model"]


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
    """The planner's plan of ``qube`` in the validated model ``mdl``, computed once per run."""
    plans = _parsed()["plans"]
    if qube not in plans:
        try:
            plans[qube] = (_lib("plan").plan_qube(mdl, qube), None)
        except ValueError as exc:
            plans[qube] = (None, str(exc))
    plan, error = plans[qube]
    if error is not None:
        raise CommandExecutionError(error)
    return plan


def _has_rules(plan):
    return plan is not None and plan.rule_count > 0


def _custom_persist(mdl, name):
    qube = mdl.qubes.get(name)
    return qube is not None and qube.custom_persist


def _template_children(mdl, template):
    return list(mdl.template_children(template))


def preflight(qube=None):
    """
    Every reason this minion's run must not write anything: the pillar's
    problems, then (in a qube) the planner's refusals for this qube and for
    the qubes whose boot replay it writes (the named disposables and the
    custom-persist qubes of this template).  Empty when the run may go on.
    """
    problems = pillar_errors()
    if problems:
        return problems
    qube = qube or minion_id()
    if qube == "dom0":
        return []
    mdl = model()
    names = [qube] if qube in mdl.qubes else []
    names += mdl.disposables_of(qube) + _template_children(mdl, qube)
    for name in names:
        try:
            _plan(mdl, name)
        except CommandExecutionError as exc:
            problems += [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
    return problems


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
    return _lib("plan").plan_dict(plan)


# ---- the run: lock, scratch space, one nft read ----


def _safe_dir(value, default):
    if isinstance(value, str) and _SAFE_PATH.match(value.rstrip("/") or "/") and "/../" not in value + "/":
        return value.rstrip("/")
    return default


def _raw_lookup(key, default):
    """``lookup:KEY`` from the model, or straight from the raw pillar when it is invalid."""
    entry = _parsed()
    raw = _raw_pillar()
    lookup = raw.get("lookup") if isinstance(raw, dict) else None
    if entry["model"] is not None and isinstance(lookup, dict) and key in lookup:
        return getattr(entry["model"].lookup, key, default)
    return _safe_dir(lookup.get(key) if isinstance(lookup, dict) else None, default)


def state_dir():
    """
    The formula's directory on this minion (``lookup:state_dir``, default
    the minion option ``qubes_firewall_state_dir``, else
    ``/var/lib/qubes-firewall-formula``): its lock and scratch files.  Taken
    from the raw pillar (when it is a plain absolute path) or the default
    while the pillar is invalid, so that even a broken pillar's run locks.
    """
    default = _safe_dir(__opts__.get("qubes_firewall_state_dir"), DEFAULT_STATE_DIR)
    return _raw_lookup("state_dir", default)


def lock(timeout=None):
    """
    Take this minion's lock, ``<state_dir>/lock`` (``fcntl.flock``), waiting
    up to ``timeout`` seconds (minion option ``qubes_firewall_lock_timeout``,
    default 600) for another run to finish.  Held until this process exits
    (a killed run releases it too).  Returns ``{"path", "waited"}``
    (seconds).
    """
    path = os.path.join(state_dir(), LOCK_FILE)
    if path in _LOCKS:
        return {"path": path, "waited": 0.0}
    if timeout is None:
        timeout = __opts__.get("qubes_firewall_lock_timeout", 600)
    timeout = float(timeout)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 (held until the process exits)
    except OSError as exc:
        raise CommandExecutionError("cannot open the lock %s: %s" % (path, exc)) from exc
    start = time.monotonic()
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() - start >= timeout:
                handle.close()
                raise CommandExecutionError(
                    "another qubes_firewall run holds %s (waited %d s); try again when it has finished"
                    % (path, timeout)) from None
            time.sleep(0.05)
        except OSError as exc:
            handle.close()
            raise CommandExecutionError("cannot lock %s: %s" % (path, exc)) from exc
    _LOCKS[path] = handle
    _context()[_CTX_LOCK] = path
    return {"path": path, "waited": round(time.monotonic() - start, 3)}


def scratch_dir():
    """``<state_dir>/scratch``: the run's temporary files (what a killed run left there is stale)."""
    return os.path.join(state_dir(), SCRATCH_DIR)


def stale_scratch():
    """Files and directories a killed run left in ``scratch_dir()``."""
    path = scratch_dir()
    try:
        return sorted(os.path.join(path, n) for n in os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CommandExecutionError("cannot list %s: %s" % (path, exc)) from exc


def remove_stale_scratch():
    """Remove ``stale_scratch()`` (call it only with the lock held)."""
    removed = []
    for item in stale_scratch():
        try:
            if os.path.isdir(item) and not os.path.islink(item):
                shutil.rmtree(item)
            else:
                os.unlink(item)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CommandExecutionError("cannot remove %s: %s" % (item, exc)) from exc
        removed.append(item)
    return removed


def forget_run():
    """Drop what this run read from the system (the nft document): the next read is fresh."""
    _context().pop(_CTX_NFT, None)


def nft_document():
    """The live ruleset (``nft -j list ruleset``), read once per run; a load forgets it."""
    ctx = _context()
    if _CTX_NFT not in ctx:
        ctx[_CTX_NFT] = _lib("nft").read()
    return ctx[_CTX_NFT]


def live_state():
    """``qubes_firewall_nft.live_state`` of the run's one nft read."""
    return _lib("nft").live_state(nft_document())


def load(script):
    """Load one nft transaction (atomic: all or nothing) and forget the run's read."""
    try:
        return _lib("nft").load(script)
    finally:
        forget_run()


def _remove_owned(live):
    """The transaction that removes everything the formula owns in this qube's ruleset."""
    return _lib("nft").transaction(None, live)


def owned_transaction(plan, live):
    """
    ``(script, summary)`` making the owned part of the live ruleset match
    ``plan``; a qube the pillar does not name (``plan`` None) or names with
    nothing to do (no rules) gets everything the formula owns removed.
    ``("", {})`` when nothing differs.
    """
    if not _has_rules(plan):
        return _remove_owned(live)
    return _lib("nft").transaction(plan, live)


# ---- files: boot replay in /rw, custom-persist replay in the template ----


def _stale_disposable_block(mdl, name):
    """
    A block ``rules:NAME`` found in a file: NAME's disposable template (or a
    copy of its /rw) wrote it.  It is stale when NAME is no longer a disposable
    with a template in the pillar; while it is one, only its template's run
    manages it (a disposable's own /rw is a copy that must keep it).
    """
    qube = mdl.qubes.get(name)
    return qube is None or qube.dispvm_template is None


def _replace_blocks(path, old, blocks):
    """``old`` with each ``{name: body or None}`` block set; path-named errors."""
    replace = _lib("files").replace_block
    new = old
    try:
        for name in sorted(blocks):
            new = replace(new, name, blocks[name], header=RC_HEADER)
    except ValueError as exc:
        raise CommandExecutionError("%s: %s" % (path, exc)) from exc
    return new


def persisted_files(qube=None):
    """
    ``{path: (old_text, new_text)}`` for the files that replay rules at boot.
    A qube's own rules go in a managed block ``rules`` of
    ``qubes-firewall-user-script`` when it provides network, of ``rc.local``
    otherwise.  A named disposable (``dispvm_template`` in the pillar) gets its
    /rw from its disposable template at each start: its block ``rules:NAME``
    is written by the run on the template, and its own run writes none.  A
    custom-persist qube's rules are replayed from its template (see
    ``template_files``), so its own run writes no block either, nor does a
    qube with no rules.  Blocks that are no longer wanted are removed; a
    ``rules:NAME`` block is left alone while NAME is a disposable of another
    template.  Reads only.
    """
    qube = qube or minion_id()
    mdl = model()
    wanted = {}  # block name -> (file name, body)
    own = mdl.qubes.get(qube)
    if own is not None and own.dispvm_template is None and not _custom_persist(mdl, qube):
        plan = _plan(mdl, qube)
        if _has_rules(plan):
            wanted["rules"] = (plan.persist_file, _lib("plan").persist_block(plan))
    for name in mdl.disposables_of(qube):
        plan = _plan(mdl, name)
        if _has_rules(plan):
            wanted["rules:" + name] = (plan.persist_file, _lib("plan").persist_block(plan))
    out = {}
    for filename in ("qubes-firewall-user-script", "rc.local"):
        path = "%s/%s" % (mdl.lookup.rw_config, filename)
        old = _lib("files").read(path)
        present = [n for n in _lib("files").block_names(old)
                   if n == "rules" or (n.startswith("rules:") and _stale_disposable_block(mdl, n[6:]))]
        blocks = {}
        for block in set(present) | set(wanted):
            where, body = wanted.get(block, (None, None))
            blocks[block] = body if where == filename else None
        out[path] = (old, _replace_blocks(path, old, blocks))
    if qube not in mdl.qubes and not wanted and all(o == n for o, n in out.values()):
        return {}  # not ours to manage (a former template's leftovers are removed above)
    return out


def _persist_paths(etc_qubes, systemd_dir, name):
    """The custom-persist files of qube ``name`` in its template: {kind: path}."""
    base = PERSIST_PREFIX + name
    return {
        "hook": "%s/qubes-firewall.d/%s" % (etc_qubes, base),
        "script": "%s/qubes-firewall-formula/%s.sh" % (etc_qubes, name),
        "unit": "%s/%s.service" % (systemd_dir, base),
        "wants": "%s/multi-user.target.wants/%s.service" % (systemd_dir, base),
    }


def _persist_unit(template, name, script):
    """
    The unit that replays a non-network custom-persist qube's rules at boot:
    after qubes-iptables.service, which loads Qubes' base nft tables
    (``table ip qubes`` with custom-input / custom-forward).
    """
    lines = [
        PERSIST_MARK % template,
        "[Unit]",
        "Description=Replay the qubes_firewall nft rules of %s (custom-persist)" % name,
        "After=qubes-iptables.service",
        "Wants=qubes-iptables.service",
        "ConditionPathExists=%s" % script,
        "",
        "[Service]",
        "Type=oneshot",
        "ExecStart=/bin/sh %s" % script,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _owned_persist_files(etc_qubes, systemd_dir, template):
    """
    Every custom-persist file the run on ``template`` wrote here: ``{path:
    text}`` (``"->TARGET"`` for a symlink that enables one of its units).
    """
    read = _lib("files").read
    mark = PERSIST_MARK % template
    found, links = {}, {}
    dirs = ("%s/qubes-firewall.d" % etc_qubes, "%s/qubes-firewall-formula" % etc_qubes,
            systemd_dir, "%s/multi-user.target.wants" % systemd_dir)
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise CommandExecutionError("cannot list %s: %s" % (directory, exc)) from exc
        for entry in sorted(names):
            path = os.path.join(directory, entry)
            if os.path.islink(path):
                if entry.startswith(PERSIST_PREFIX) and entry.endswith(".service"):
                    links[path] = os.path.join(systemd_dir, entry)
                continue
            ours = entry.startswith(PERSIST_PREFIX) or directory.endswith("/qubes-firewall-formula")
            if ours and os.path.isfile(path):
                text = read(path)
                if text is not None and mark in text.splitlines():
                    found[path] = text
    for path, unit in links.items():
        if unit in found or not os.path.exists(unit):  # its unit is ours, or gone
            found[path] = "->" + os.readlink(path)
    return found


def template_files(qube=None):
    """
    custom-persist: Qubes runs no /rw/config script in a qube with the
    ``custom-persist`` service, so the run on its template (``template:`` in
    the pillar; ``qube`` defaults to this minion) writes, in the template's
    root filesystem, per custom-persist qube NAME:

    - a network qube: ``<etc_qubes>/qubes-firewall.d/qubes-firewall-formula-NAME``,
      which the qubes-firewall service runs at each start, from the template;
    - another qube: ``<etc_qubes>/qubes-firewall-formula/NAME.sh`` run by the
      enabled unit ``<systemd_dir>/qubes-firewall-formula-NAME.service``
      after Qubes' base nft tables are loaded.

    Each script replays NAME's rules only in the qube named NAME.  Files of
    qubes that no longer need them are removed.  Returns ``{path: (old,
    new)}`` for the files that differ, ``new`` None for removal and
    ``"->TARGET"`` for the symlink that enables a unit.  Reads only.
    """
    qube = qube or minion_id()
    mdl = model()
    etc_qubes, systemd_dir = mdl.lookup.etc_qubes, mdl.lookup.systemd_dir
    wanted = {}
    for name in _template_children(mdl, qube):
        plan = _plan(mdl, name)
        if not _has_rules(plan):
            continue
        paths = _persist_paths(etc_qubes, systemd_dir, name)
        script = RC_HEADER + PERSIST_MARK % qube + "\n" + _lib("plan").persist_block(plan)
        if plan.provides_network:
            wanted[paths["hook"]] = script
        else:
            wanted[paths["script"]] = script
            wanted[paths["unit"]] = _persist_unit(qube, name, paths["script"])
            wanted[paths["wants"]] = "->../" + os.path.basename(paths["unit"])
    have = _owned_persist_files(etc_qubes, systemd_dir, qube)
    out = {}
    read = _lib("files").read
    for path in sorted(set(wanted) | set(have)):
        old = have.get(path)
        if old is None and path in wanted and not wanted[path].startswith("->"):
            old = read(path)
        new = wanted.get(path)
        if old != new:
            out[path] = (old, new)
    return out


def write_template_files(files):
    """
    Carry out ``template_files`` (or clean) changes: scripts 0755, units
    0644, a symlink for ``"->TARGET"``, ``None`` removes.  Removals first.
    """
    write = _lib("files").write_atomic
    for path, (_old, new) in sorted(files.items(), key=lambda item: (item[1][1] is not None, item[0])):
        try:
            if os.path.islink(path) or (new is not None and new.startswith("->") and os.path.exists(path)):
                os.unlink(path)
            if new is None:
                write(path, None)
            elif new.startswith("->"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.symlink(new[2:], path)
            else:
                write(path, new, mode=0o644 if path.endswith(".service") else 0o755)
        except OSError as exc:
            raise CommandExecutionError("cannot write %s: %s" % (path, exc)) from exc
    for path in {os.path.dirname(p) for p, (_o, n) in files.items() if n is None}:
        if os.path.basename(path) == "qubes-firewall-formula":  # the formula's own directory
            try:
                os.rmdir(path)
            except OSError:
                pass  # not empty
    return True


# ---- clean: everything the formula made on this minion ----


def _clean_paths():
    """rw_config, etc_qubes, systemd_dir: from the pillar when it says so, else the defaults."""
    return (_raw_lookup("rw_config", DEFAULT_RW_CONFIG), _raw_lookup("etc_qubes", DEFAULT_ETC_QUBES),
            _raw_lookup("systemd_dir", DEFAULT_SYSTEMD_DIR))


def clean_plan():
    """
    What ``state.apply qubes_firewall.clean`` removes in this qube, found by
    the formula's ownership marks, not from the pillar (which may be broken
    or gone): ``{"nft": (script, summary), "files": {path: (old, new)},
    "runtime": a qubes_firewall_connect_tcp runtime plan}``.  Reads only: every managed block
    (``qubes_firewall:*``) of ``rc.local`` and ``qubes-firewall-user-script``
    (a file left holding only ``#!/bin/sh`` is removed), the ConnectTCP unit
    files in ``rw_config`` and the running systemd, the custom-persist
    scripts and units of a template, and the owned nft chains and jumps.
    """
    rw_config, etc_qubes, systemd_dir = _clean_paths()
    files = {}
    for filename in ("rc.local", "qubes-firewall-user-script"):
        path = "%s/%s" % (rw_config, filename)
        old = _lib("files").read(path)
        names = _lib("files").block_names(old)
        if not names:
            continue
        new = _replace_blocks(path, old, {n: None for n in names})
        if new is not None and new.strip() in ("", RC_HEADER.strip()):
            new = None
        files[path] = (old, new)
    for name in _lib("connect_tcp").owned_unit_files(rw_config):
        path = os.path.join(rw_config, name)
        files[path] = (_lib("files").read(path), None)
    for path, text in _owned_persist_files(etc_qubes, systemd_dir, minion_id()).items():
        files[path] = (text, None)
    script, summary = _remove_owned(live_state())
    return {"nft": (script, summary), "files": files, "runtime": _lib("connect_tcp").clean_runtime_plan()}


# ---- dom0 ----
# The dom0 part: the pure planner is qubes_firewall_dom0, Qubes itself is
# reached only through qubes_firewall_qubes (qubesadmin in-process, or the
# qvm-* tools).


def _dom0(func):
    return getattr(_lib("dom0"), func)


def _qubes(func):
    return getattr(_lib("qubes"), func)


def inventory():
    """
    Every qube Qubes knows, read in one call (see
    ``qubes_firewall_qubes.inventory``).
    """
    return _qubes("inventory")()


def addresses(names=None):
    """
    ``{qube: ip}`` resolved from Qubes, for the qubes in ``names`` (a list or
    a comma-separated string); by default for the qubes of the
    ``qubes_firewall:qubes`` pillar, or, when there is none (while a pillar
    is being rendered), for every qube that has an address. A pillar file
    should therefore always pass the names, as docs/addresses.md shows:

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
    qubes as ``lookup:qubes_release`` (docs/addresses.md).

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
    given = _given_release()
    out = []
    if given is not None and _qubes("release_known")():
        try:
            out += _dom0("release_problems")(given, qubes_release())
        except CommandExecutionError as exc:
            out.append("qubes_firewall:lookup:qubes_release: %s, but %s" % (given, exc))
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
    for problem in _lib("plan").check_model(planned):
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
    Re-attach the running clients of ``netvm`` after it restarted (the Qubes firewall manual page's "Reconnecting qubes after a NetVM reboot"): ``qvm-prefs CLIENT
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
        for origin, client, command in _lib("connect_tcp").commands(entries, qube)
    ]


# ---- operations ----
# What a user does after applying: look at the counters, find drift, back up
# and revert, draw the topology, ask whether a flow may pass.  The work is in
# qubes_firewall_report, _backup, _diagram and _flow.


def _live():
    # a command of its own (not a state run): read afresh, a long-lived minion may keep __context__
    forget_run()
    return live_state()


def _not_named_here(qube):
    return {"qube": qube, "comment": "%s is not named in the qubes_firewall:qubes pillar" % qube}


# outputters that print data for a program, not for a person
_MACHINE_OUTPUTTERS = ("json", "yaml", "pprint", "raw", "txt", "newline_values_only", "profile")


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


def _readable(data, fmt, render):
    """``data`` as it is when the caller wants data, else rendered to text by ``render``."""
    if _wants_data(fmt):
        return data
    return render(data)


def status(origin=None, fmt=None):
    """
    Every rule the formula owns in this qube, with its pillar origin and its
    packet/byte counters (the Qubes firewall manual page's "look at the counters"), summed
    per pillar entry under ``by_origin``; ``missing`` lists planned rules that
    are not loaded. ``origin`` keeps only rules of one pillar entry, e.g.
    ``port_forwards:https``: the same name in every hop of a port forward.

    Output: text for a person by default; the data (a dict) with ``fmt=data``
    or a machine outputter (``--out=json``, ``--out=yaml``). Under
    ``qubesctl --skip-dom0 --targets=...`` (salt-ssh) the qube's salt-call
    always returns JSON data: give ``fmt=text`` there for the text.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.status
        qubesctl --skip-dom0 --targets=sys-net,sys-firewall,web qubes_firewall.status origin=port_forwards:https fmt=text
        salt-call --out=json qubes_firewall.status
    """
    text = _lib("report").status_text
    plan = qube_plan()
    if plan is None:
        return _readable(_not_named_here(minion_id()), fmt, text)
    report = _lib("report").status(plan, _live(), origin)
    return _readable(report, fmt, text)


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

    Output: text for a person by default; the data (a dict) with ``fmt=data``
    or a machine outputter (``--out=json``, ``--out=yaml``). Under
    ``qubesctl --skip-dom0 --targets=...`` (salt-ssh) the qube's salt-call
    always returns JSON data: give ``fmt=text`` there for the text.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.drift
        salt-call qubes_firewall.drift fmt=data
    """
    qube = minion_id()
    plan = qube_plan()
    live = _live()
    files = persisted_files()

    def block_of(text):
        return _lib("files").get_block(text, "rules")

    if _has_rules(plan):
        out = _lib("report").drift(plan, live, files, block_of)
        if out["live"]:
            try:
                out["fix"] = owned_transaction(plan, live)[0]
            except CommandExecutionError as exc:
                out["fix"] = str(exc)
    else:
        script, summary = owned_transaction(plan, live)
        out = {"qube": qube, "live": [], "persisted": _lib("report").persisted_drift(
            files, block_of)}
        if plan is None:
            out["comment"] = "%s is not named in the qubes_firewall:qubes pillar" % qube
        for kind, items in sorted(summary.items()):
            if kind == "counts":
                continue
            for item in items:
                out["live"].append({"kind": "leftover " + kind.replace("_", " "), "detail": item})
        if script:
            out["fix"] = script
    bindings = _lib("connect_tcp").binding_plan()
    out["connect_tcp"] = sorted(bindings["files"])
    out["template"] = sorted(template_files())
    out["drifted"] = bool(out["live"] or out["persisted"] or out["connect_tcp"] or out["template"])
    if out["drifted"]:
        __context__["retcode"] = 1
    return _readable(out, fmt, _lib("report").drift_text)


def _backup_args():
    return {
        "directory": __opts__.get("qubes_firewall_backup_dir") or os.path.join(state_dir(), "backups"),
        "owner": minion_id(),
    }


def backup(document=None):
    """
    Save the live ruleset (the Qubes firewall manual page's backup, as nft's JSON:
    ``nft -j list ruleset``, counters included) as
    ``<dir>/<minion id>-<UTC timestamp>.json`` and keep the newest N. The
    directory is the minion option ``qubes_firewall_backup_dir`` (default
    ``<lookup:state_dir>/backups``, i.e. ``/var/lib/qubes-firewall-formula/backups``), N the option
    ``qubes_firewall_backup_keep`` (default 10). The formula's state takes one
    before each change of the live rules, from the document it read already.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.backup
    """
    return _lib("backup").backup(keep=__opts__.get("qubes_firewall_backup_keep"),
                                 document=document, **_backup_args())


def backups():
    """
    The saved rulesets of this minion, newest first.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.backups
    """
    return _lib("backup").backups(**_backup_args())


def revert(name=None):
    """
    Replace the whole live ruleset with a saved one (default: the newest) in
    one transaction, ``flush ruleset`` followed by the saved file, checked
    with ``nft -c`` first: on any error nothing changes. A backup holding a
    map of concatenated data (a port forward's DNAT map), which nft 1.0.6
    cannot load from JSON, is first rebuilt as nft text in a scratch network
    namespace (``unshare --net``, from util-linux), never in the live one.

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.revert
        salt-call qubes_firewall.revert name=web-20240101T120000.000000Z.json
    """
    return _lib("backup").revert(name=name, **_backup_args())


def diagram(fmt="mermaid", path=None):
    """
    The pillar's topology as Mermaid (``fmt=mermaid``) or Graphviz DOT
    (``fmt=dot``) text: the netvm chain with roles, each port forward's path,
    connections and qubes.ConnectTCP bindings. With ``path``, the text is
    written to that file and the path returned. Salt's default outputter
    prints the text under a ``local:`` heading; ``--out=newline_values_only``
    prints it bare (``salt-call --out=newline_values_only
    qubes_firewall.diagram > topology.mmd``), and ``path=`` works under
    qubesctl too.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.diagram
        sudo qubesctl qubes_firewall.diagram fmt=dot path=/tmp/topology.dot
        sudo qubesctl --out=newline_values_only qubes_firewall.diagram
        dot -Tpng /tmp/topology.dot -o topology.png
    """
    try:
        text = _lib("diagram").render(model(), fmt)
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc
    if path is None:
        return text
    _lib("files").write_atomic(path, text, mode=0o644)
    return {"path": path}


def check(source, target, port, proto="tcp", interface=None, source_ip=None, fmt=None):
    """
    May a new connection from ``source`` to ``target`` on ``port`` pass, and
    through which rules? Answered from the pillar alone (nothing is read from
    or written to the system), by walking the packet through every hop.
    ``source``/``target``: qube names, or ``outside`` (also ``lan``, ``wan``,
    ``internet``) for the world beyond the uplink; from outside, ``port`` is
    the port opened on the uplink and ``interface``/``source_ip`` say where
    the packet comes from (else rules that depend on them are listed as
    ``conditions``).

    Output: the verdict and the walk hop by hop first, then the rules on the
    way; the data (``allowed``, ``reason``, ``steps``, ``rules``, ...) with
    ``fmt=data`` or a machine outputter (``--out=json``).

    CLI Example:

    .. code-block:: bash

        salt-call qubes_firewall.check work build 22
        salt-call qubes_firewall.check outside web 443 interface=ens6 source_ip=192.168.1.50
        salt-call --out=json qubes_firewall.check work build 22
    """
    _wants_data(fmt)
    try:
        answer = _lib("flow").check(model(), source, target, port, proto,
                                    interface=interface, source_ip=source_ip)
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc
    return _readable(answer, fmt, _lib("flow").check_text)


# ---- internal API ----


def lib():
    """
    Internal API of the formula, not for users: every function of
    ``qubes_firewall``, the public ones and those its states use, which call
    ``__salt__["qubes_firewall.lib"]().FUNCTION(...)``.  Each function runs
    in the Salt loader that loaded this module, as a ``__salt__[...]`` call
    does, so ``__salt__``, ``__opts__``, ``__pillar__`` and ``__context__``
    work inside it.
    """
    return _Lib(globals())


class _Lib:
    """A module's functions by name, each run in the Salt loader that loaded it."""

    def __init__(self, scope):
        self._scope = scope
        loader = getattr(scope.get("__salt__"), "loader", None)  # Salt's NamedLoaderContext
        self._loader = loader() if callable(loader) else None  # None: loaded without Salt (tests)

    def __getattr__(self, name):
        func = self._scope.get(name)
        if name.startswith("_") or not isinstance(func, types.FunctionType):
            raise AttributeError("%s has no function %s" % (self._scope.get("__virtualname__"), name))
        if self._loader is None:
            return func
        return functools.partial(self._loader.run, func)


# ---- fleet: one pillar tree for many machines (docs/fleet.md) ----
# The pure part (the merge rule, targets, the fleet view's row) is
# _qubes_firewall_fleet; these are its shell.

FLEET_KEY = "qubes_firewall_fleet"
_DATA_OUTPUTTERS = ("json", "yaml", "pprint", "raw")


def _fleet_machines(directory):
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return "none"
    return ", ".join(n.rsplit(".", 1)[0] for n in names if n.endswith((".yaml", ".yml"))) or "none"


def _fleet_read(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _fleet.FleetError("cannot read %s %s: %s" % (what, path, getattr(exc, "strerror", None) or exc)) from None


def _fleet_build(shared_file, machine_file, ask_qubes):
    """(pillar, info) of ``fleet_pillar``; raises FleetError with the machine and the file in the message."""
    machines = os.path.join(os.path.dirname(machine_file), "machines")
    link = os.readlink(machine_file) if os.path.islink(machine_file) else None
    named = _fleet.machine_name({}, link) if link else None
    info = {"machine": named, "machine_file": machine_file, "shared_file": shared_file}
    where = "machine %s (%s)" % (named, os.path.realpath(machine_file)) if named else "this machine"
    if not os.path.exists(machine_file):
        if link:
            raise _fleet.FleetError("machine %s: %s links to %s, which does not exist (machines: %s)"
                                    % (named, machine_file, link, _fleet_machines(machines)))
        raise _fleet.FleetError(
            "%s is missing: link it to this machine's file, once: `sudo ln -s machines/NAME.yaml %s` "
            "(NAME one of: %s)" % (machine_file, machine_file, _fleet_machines(machines)))
    try:
        data = _fleet.load_yaml(_fleet_read(machine_file, "the machine file"), "the machine file")
        name = _fleet.machine_name(data, link)
        if not name:
            raise _fleet.FleetError("name the machine: `machine: NAME` in %s, or link the file" % machine_file)
        info["machine"] = name
        where = "machine %s (%s)" % (name, os.path.realpath(machine_file))
        shared = _fleet.load_yaml(_fleet_read(shared_file, "the shared file"), "the shared file %s" % shared_file)
        built = _fleet.machine_pillar(shared, data)
    except _fleet.FleetError as exc:
        raise _fleet.FleetError("%s: %s" % (where, exc)) from None
    pillar = built[_fleet.ROOT]
    info["dropped"] = built["dropped"]
    qubes = pillar.get("qubes")
    if ask_qubes and isinstance(qubes, dict):
        try:
            if "addresses" not in pillar:
                pillar["addresses"] = addresses(sorted(str(q) for q in qubes))
            lookup = pillar.get("lookup")
            if lookup is None or isinstance(lookup, dict):
                lookup = dict(lookup or {})
                lookup.setdefault("qubes_release", qubes_release())
                pillar["lookup"] = lookup
        except CommandExecutionError as exc:
            raise _fleet.FleetError("%s: cannot ask Qubes for the addresses: %s" % (where, exc)) from None
    return pillar, info


def fleet_pillar(shared_file, machine_file, ask_qubes=True):
    """
    The pillar of this machine in a fleet (docs/fleet.md): the shared
    topology (``shared_file``) with this machine's file (``machine_file``,
    a link to ``machines/NAME.yaml``) merged onto it, plus, with
    ``ask_qubes``, every qube's address and the Qubes release asked from
    Qubes.  Returns ``{"qubes_firewall": ..., "qubes_firewall_fleet":
    {"machine", "machine_file", "shared_file", "dropped"}}``.  Never raises:
    a missing or broken file, an unknown machine or a merge that cannot be
    made gives ``{"qubes_firewall": {"error": MESSAGE}}`` naming the machine
    and the file, which fails this formula's runs only (the pillar still
    renders for every other formula).  Called by the fleet's pillar file in
    dom0; on the command line it shows what this machine's pillar is.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.fleet_pillar /srv/user_pillar/qubes_firewall_shared.yaml /srv/user_pillar/qubes_firewall_machine.yaml
    """
    info = {"machine": None, "machine_file": machine_file, "shared_file": shared_file}
    try:
        pillar, info = _fleet_build(str(shared_file), str(machine_file), ask_qubes)
    except _fleet.FleetError as exc:
        info["error"] = str(exc)
        return {_fleet.ROOT: {"error": str(exc)}, FLEET_KEY: info}
    except Exception as exc:  # noqa: BLE001 (a pillar must render, whatever happened here)
        info["error"] = "fleet_pillar failed: %s: %s" % (type(exc).__name__, exc)
        return {_fleet.ROOT: {"error": info["error"]}, FLEET_KEY: info}
    return {_fleet.ROOT: pillar, FLEET_KEY: info}


def targets():
    """
    The qubes this pillar needs ``state.apply qubes_firewall`` (or
    ``qubes_firewall.clean``) in, as qubesctl's ``--targets`` value: the
    templates of custom-persist qubes, the disposable templates of named
    disposables, the pillar's qubes from the uplink down, the ConnectTCP
    clients.  With ``--out=newline_values_only`` after it (qubesctl hands
    what follows the function to dom0's salt-call) it prints the bare list,
    so one line applies dom0, then every target: ``sudo qubesctl
    --targets=$(sudo qubesctl qubes_firewall.targets
    --out=newline_values_only) state.apply qubes_firewall`` (docs/fleet.md).

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.targets
        sudo qubesctl qubes_firewall.targets --out=newline_values_only
    """
    model()  # raises, naming every problem of the pillar
    return ",".join(_fleet.targets(_raw_pillar()))


def fleet_status(fmt=None):
    """
    This machine's row of the fleet view, in dom0: the machine (the fleet's
    machine name, else the host name), a one-line verdict, dom0's drift
    (netvm and provides_network, qvm-firewall lists, the ConnectTCP policy
    that ``state.apply qubes_firewall`` would change) and the targets.
    Reads only.  ``fmt=row`` (the default): one tab-separated line, for a
    table of every machine (docs/fleet.md); ``fmt=json``: one line of JSON;
    ``fmt=data`` (or ``--out=json``/``--out=yaml``): the row as data, with
    ``details``.

    CLI Example:

    .. code-block:: bash

        sudo qubesctl qubes_firewall.fleet_status
        sudo qubesctl qubes_firewall.fleet_status --out=newline_values_only
        sudo qubesctl qubes_firewall.fleet_status fmt=json --out=newline_values_only
    """
    if fmt not in (None, "", "row", "json", "data"):
        raise CommandExecutionError("fmt must be row, json or data, got %r" % (fmt,))
    info = __pillar__.get(FLEET_KEY)
    machine = info.get("machine") if isinstance(info, dict) else None
    machine = machine or __grains__.get("host") or minion_id()
    errors = pillar_errors()
    names, problems, prefs, firewall, policy = [], [], [], [], False
    if not errors:
        names = _fleet.targets(_raw_pillar())
        try:
            problems = dom0_problems()
            if not problems:
                prefs = dom0_prefs_plan()
                firewall = sorted(dom0_firewall_plan())
                plan = _lib("connect_tcp").policy_plan()
                policy = plan["old"] != plan["new"]
        except CommandExecutionError as exc:
            problems = [" ".join(str(exc).split())]
    row = _fleet.status_row(machine, names, errors, problems, prefs, firewall, policy)
    if fmt == "data" or (not fmt and (__opts__.get("output") or "") in _DATA_OUTPUTTERS):
        return row
    if fmt == "json":
        return _fleet.row_json(row)
    return _fleet.row_text(row)

