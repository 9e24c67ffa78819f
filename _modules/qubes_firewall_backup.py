"""
Backup and atomic revert of a qube's whole nftables ruleset: the seed
document's "Nftables tips" as commands.

- ``backup(directory, keep, owner, document=None)``: the whole ruleset as
  nft's JSON (``nft -j list ruleset``, counters included; the state passes the
  document it has already read, so a run still reads nft once) saved as
  ``<directory>/<owner>-<UTC timestamp>.json``; only the newest ``keep`` files
  of that owner stay.
- ``revert(directory, owner, name=None)``: one transaction, ``flush ruleset``
  followed by the saved ruleset, checked with ``nft -j -c`` first (through
  ``qubes_firewall_nft.load_json``): on any error the running ruleset stays as
  it was.  JSON round-trips: the reverted ``nft list ruleset`` is byte-identical.

Files carry the owner (the minion id) in their names, so one directory shared
by several minions (a test machine, a lab) never mixes their rulesets.
Loaded by Salt as ``qubes_firewall_backup``.
"""

import datetime
import functools
import json
import os
import re
import types

from salt.exceptions import CommandExecutionError

__virtualname__ = "qubes_firewall_backup"
__load__ = ["lib"]  # everything else is internal: see lib()

DEFAULT_DIR = "/var/lib/qubes-firewall-formula/backups"
DEFAULT_KEEP = 10
SUFFIX = ".json"
_STAMP = r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z"
_OWNER = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")


def __virtual__():
    return __virtualname__


def _lib(name=""):
    """The internal API (``lib()``) of the formula's module ``qubes_firewall[_NAME]``."""
    return __salt__["qubes_firewall%s.lib" % ("_" + name if name else "")]()


# --------------------------------------------------------------------------
# pure
# --------------------------------------------------------------------------


def file_name(owner, now):
    """``<owner>-YYYYmmddTHHMMSS.ffffffZ.json`` for a UTC datetime: sorts by time."""
    return "%s-%s%s" % (owner, now.strftime("%Y%m%dT%H%M%S.%fZ"), SUFFIX)


def owned(names, owner):
    """The backup file names of ``owner`` among ``names``, oldest first."""
    pattern = re.compile(r"\A%s-%s%s\Z" % (re.escape(owner), _STAMP, re.escape(SUFFIX)))
    return sorted(n for n in names if pattern.match(n))


def to_prune(names, owner, keep):
    """The files of ``owner`` beyond the newest ``keep``."""
    mine = owned(names, owner)
    return mine[: max(0, len(mine) - keep)]


def revert_document(saved):
    """The one transaction (nft JSON) that replaces the whole ruleset with ``saved``."""
    items = [item for item in saved.get("nftables", []) if "metainfo" not in item]
    return {"nftables": [{"flush": {"ruleset": None}}] + items}


def _check_owner(owner):
    if not _OWNER.match(owner or ""):
        raise CommandExecutionError("bad backup owner %r" % owner)


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def ruleset_document():
    """``nft -j list ruleset``: the whole ruleset, counters included."""
    return _lib("nft").read()


def _listdir(directory):
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CommandExecutionError("cannot list %s: %s" % (directory, exc)) from exc


def backup(directory=None, keep=None, owner="local", document=None):
    """
    Save the live ruleset (``document``, an ``nft -j list ruleset`` already
    read, or a fresh read), keep the newest ``keep`` backups of ``owner``
    (None: ``DEFAULT_DIR``, ``DEFAULT_KEEP``).  Returns ``{"path", "removed"}``.
    """
    _check_owner(owner)
    directory = directory or DEFAULT_DIR
    try:
        keep = int(DEFAULT_KEEP if keep is None else keep)
    except (TypeError, ValueError):
        raise CommandExecutionError("qubes_firewall_backup_keep must be an integer, got %r" % keep) from None
    if keep < 1:
        raise CommandExecutionError("qubes_firewall_backup_keep must be at least 1, got %d" % keep)
    text = json.dumps(document if document is not None else ruleset_document(), indent=1) + "\n"
    names = _listdir(directory)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = file_name(owner, now)
    while name in names:  # two backups within one microsecond
        now += datetime.timedelta(microseconds=1)
        name = file_name(owner, now)
    path = os.path.join(directory, name)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CommandExecutionError("cannot create %s: %s" % (directory, exc)) from exc
    _lib("files").write_atomic(path, text, mode=0o600, makedirs=False)
    removed = []
    for old in to_prune(_listdir(directory), owner, keep):
        try:
            os.unlink(os.path.join(directory, old))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CommandExecutionError("cannot remove old backup %s: %s" % (old, exc)) from exc
        removed.append(os.path.join(directory, old))
    return {"path": path, "removed": removed}


def backups(directory=None, owner="local"):
    """The backups of ``owner``, newest first: ``[{"name", "path", "bytes"}]``."""
    _check_owner(owner)
    directory = directory or DEFAULT_DIR
    out = []
    for name in reversed(owned(_listdir(directory), owner)):
        path = os.path.join(directory, name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue
        out.append({"name": name, "path": path, "bytes": size})
    return out


def revert(directory=None, owner="local", name=None):
    """
    Replace the whole live ruleset with a backup (default: the newest) in one
    checked transaction.  Returns ``{"reverted_to", "path"}``.
    """
    _check_owner(owner)
    directory = directory or DEFAULT_DIR
    mine = owned(_listdir(directory), owner)
    if name is None:
        if not mine:
            raise CommandExecutionError("no backup of %s in %s" % (owner, directory))
        name = mine[-1]
    elif name not in mine:
        raise CommandExecutionError(
            "%r is not a backup of %s in %s (see qubes_firewall.backups)" % (name, owner, directory))
    path = os.path.join(directory, name)
    saved = _lib("files").read(path)
    if saved is None:
        raise CommandExecutionError("%s vanished" % path)
    try:
        document = json.loads(saved)
    except ValueError as exc:
        raise CommandExecutionError("%s is not an nft JSON ruleset: %s" % (path, exc)) from exc
    _lib("nft").load_json(revert_document(document))
    return {"reverted_to": name, "path": path}


# ---- internal API ----


def lib():
    """
    Internal API of the formula, not for users: the functions of
    ``qubes_firewall_backup``, for the formula's other modules and states, which call
    ``__salt__["qubes_firewall_backup.lib"]().FUNCTION(...)``.  Each function runs in
    the Salt loader that loaded this module, as a ``__salt__[...]`` call does,
    so ``__salt__``, ``__opts__``, ``__pillar__`` and ``__context__`` work
    inside it.
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
