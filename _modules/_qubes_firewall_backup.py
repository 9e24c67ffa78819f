"""
Backup and atomic revert of a qube's whole nftables ruleset: the "Nftables
tips" of the Qubes firewall manual page as commands.

- ``backup(directory, keep, owner, document=None)``: the whole ruleset as
  nft's JSON (``nft -j list ruleset``, counters included; the state passes the
  document it has already read, so a run still reads nft once) saved as
  ``<directory>/<owner>-<UTC timestamp>.json``; only the newest ``keep`` files
  of that owner stay.
- ``revert(directory, owner, name=None)``: one transaction, ``flush ruleset``
  followed by the saved ruleset, checked with ``nft -j -c`` first (through
  ``_qubes_firewall_nft.load_json``): on any error the running ruleset stays as
  it was.  JSON round-trips: the reverted ``nft list ruleset`` is byte-identical.
  Except for maps whose data is a concatenation (the port forwards' DNAT maps,
  ``ipv4_addr . inet_service``): nft 1.0.6 (Debian 12) lists them in JSON but
  refuses to load them back ("Invalid map type").  A backup holding such a map
  is turned into nft's own text first, in a scratch network namespace
  (``unshare --net``; the live ruleset is never touched there): those maps are
  rendered as text (``set_text``; other sets and maps too when it can), everything else loaded as JSON, in
  the document's order, and ``nft list ruleset`` printed there.  The live
  ruleset then gets ``flush ruleset`` + that text as one transaction, checked
  with ``nft -c`` first.  Counters travel in the text.

Files carry the owner (the minion id) in their names, so one directory shared
by several minions (a test machine, a lab) never mixes their rulesets.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import tempfile

import _qubes_firewall_files as qf_files
import _qubes_firewall_nft as qf_nft
from salt.exceptions import CommandExecutionError

DEFAULT_KEEP = 10
SUFFIX = ".json"
_STAMP = r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z"
_OWNER = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")


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


def concat_data(item):
    """True for a ``{"map": ...}`` item whose data type is a concatenation."""
    body = item.get("map") if isinstance(item, dict) else None
    if not isinstance(body, dict):
        return False
    data = body.get("map")
    return isinstance(data, list) or (isinstance(data, str) and "." in data) or isinstance(data, dict)


# what set_text renders; anything else is refused, never guessed
_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_./-]{0,63}\Z")
_TYPE = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z")
_VALUE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}\Z")
_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
_MAP_KEYS = {"family", "name", "table", "type", "handle", "map", "flags", "elem", "stmt", "comment"}
_ELEM_KEYS = {"val", "counter", "comment"}
# string-typed keys would need nft's quoting: refused
_STRING_TYPES = ("ifname", "string")


def _refuse(where, what):
    raise CommandExecutionError(
        "cannot revert this backup: %s holds %s, which the revert cannot render as nft text "
        "(only sets and maps of simple or concatenated values are rendered); restore it by hand with nft"
        % (where, what))


def _comment(where, value):
    if not isinstance(value, str) or not value or any(c in value for c in '"\\\n\r') or len(value) > 128:
        _refuse(where, "the comment %s" % json.dumps(value))
    return ' comment "%s"' % value


def _types(where, value):
    parts = value if isinstance(value, list) else [value]
    if not parts or not all(isinstance(p, str) for p in parts):
        _refuse(where, "the type %s" % json.dumps(value))
    parts = [q.strip() for p in parts for q in p.split(".")]
    if not all(_TYPE.match(p) and p not in _STRING_TYPES for p in parts):
        _refuse(where, "the type %s" % json.dumps(value))
    return " . ".join(parts)


def _value(where, value):
    """A key or data value: a simple value, or a concatenation of simple values."""
    parts = value["concat"] if isinstance(value, dict) and set(value) == {"concat"} else [value]
    out = []
    for part in parts if isinstance(parts, list) and parts else [None]:
        if isinstance(part, bool) or not isinstance(part, (int, str)):
            _refuse(where, "the element value %s" % json.dumps(value))
        text = str(part)
        if not _VALUE.match(text):
            _refuse(where, "the element value %s" % json.dumps(value))
        out.append(text)
    return " . ".join(out)


def _element(where, pair, is_map):
    if is_map and not (isinstance(pair, list) and len(pair) == 2):
        _refuse(where, "the element %s" % json.dumps(pair))
    key, data = pair if is_map else (pair, None)
    extra = ""
    if isinstance(key, dict) and set(key) == {"elem"}:
        body = key["elem"]
        if not isinstance(body, dict) or not set(body) <= _ELEM_KEYS or "val" not in body:
            _refuse(where, "the element %s" % json.dumps(pair))
        key = body["val"]
        counter = body.get("counter")
        if counter is not None:
            if not (isinstance(counter, dict) and set(counter) == {"packets", "bytes"}
                    and all(type(counter[k]) is int and counter[k] >= 0 for k in counter)):
                _refuse(where, "the element counter %s" % json.dumps(counter))
            extra += " counter packets %d bytes %d" % (counter["packets"], counter["bytes"])
        if "comment" in body:
            extra += _comment(where, body["comment"])
    if not is_map:
        return _value(where, key) + extra
    return "%s%s : %s" % (_value(where, key), extra, _value(where, data))


def set_text(item):
    """
    One ``{"map": ...}`` or ``{"set": ...}`` item of ``nft -j list ruleset``
    as an nft text script (``add table`` + ``add map``/``add set`` with its
    elements, element counters included), for the simple forms only: key and
    data of simple values or concatenations of them, flags, the counter
    statement, comments.  Refuses (CommandExecutionError) anything else.
    """
    kind = "map" if "map" in item else "set"
    body = item[kind]
    family, table, name = body.get("family"), body.get("table"), body.get("name")
    where = "the %s %s %s %s" % (kind, family, table, name)
    if family not in _FAMILIES or not all(isinstance(v, str) and _NAME.match(v) for v in (table, name)):
        _refuse("a " + kind, "the name %s" % json.dumps([family, table, name]))
    unknown = sorted(set(body) - _MAP_KEYS - ({"map"} if kind == "set" else set()))
    if unknown:
        _refuse(where, "the attribute(s) %s" % ", ".join(unknown))
    head = "type %s" % _types(where, body.get("type"))
    lines = [head + (" : %s" % _types(where, body.get("map")) if kind == "map" else "")]
    flags = body.get("flags", [])
    flags = [flags] if isinstance(flags, str) else flags
    if not isinstance(flags, list) or not all(isinstance(f, str) and _TYPE.match(f) for f in flags):
        _refuse(where, "the flags %s" % json.dumps(body.get("flags")))
    if "interval" in flags:
        _refuse(where, "the interval flag")
    if flags:
        lines.append("flags %s" % ",".join(flags))
    stmt = body.get("stmt", [])
    if stmt not in ([], [{"counter": None}]):
        _refuse(where, "the statement(s) %s" % json.dumps(stmt))
    if stmt:
        lines.append("counter")
    if "comment" in body:
        lines.append(_comment(where, body["comment"]).strip())
    elements = body.get("elem", [])
    if not isinstance(elements, list):
        _refuse(where, "the elements %s" % json.dumps(elements))
    if elements:
        lines.append("elements = { %s }" % ",\n\t".join(_element(where, e, kind == "map") for e in elements))
    return "add table %s %s\nadd %s %s %s %s {\n\t%s\n}\n" % (
        family, table, kind, family, table, name, "\n\t".join(lines))


def _text_or_none(item):
    """A set or map (not of concatenated data) as text, None when not renderable (then JSON: nft
    1.0.6 loads it, but zeroes its elements' counters, which the text keeps)."""
    try:
        return set_text(item)
    except CommandExecutionError:
        return None


def scratch_steps(saved):
    """
    ``saved`` (an ``nft -j list ruleset`` document) as the steps that rebuild
    it in an empty ruleset, in its order: ``[("json"|"text", script)]``,
    consecutive items JSON-loadable by nft grouped into one step, each map of
    concatenated data its own text step (refused when not renderable), and
    so every other renderable set and map (their elements' counters survive
    the text, not nft 1.0.6's JSON load).
    """
    steps = []
    for item in saved.get("nftables", []):
        if "metainfo" in item:
            continue
        text = set_text(item) if concat_data(item) else (
            _text_or_none(item) if isinstance(item, dict) and ("set" in item or "map" in item) else None)
        if text is not None:
            steps.append(("text", text))
        elif steps and steps[-1][0] == "json":
            steps[-1][1].append(item)
        else:
            steps.append(("json", [item]))
    return [(kind, json.dumps({"nftables": s}) if kind == "json" else s) for kind, s in steps]


def _check_owner(owner):
    if not _OWNER.match(owner or ""):
        raise CommandExecutionError("bad backup owner %r" % owner)


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def ruleset_document():
    """``nft -j list ruleset``: the whole ruleset, counters included."""
    return qf_nft.read()


# runs in a fresh, empty network namespace: each step file in order, then the text listing
_SCRATCH = ('set -e; for f in "$@"; do case "$f" in *.json) nft -j -f "$f";; *) nft -f "$f";; esac; done; '
            'nft list ruleset')


def scratch_text(saved):
    """
    The ruleset of ``saved`` as nft's own text, built in a scratch network
    namespace (``unshare --net``): never touches the live ruleset.
    """
    directory = tempfile.mkdtemp(prefix="qubes-firewall-revert-")
    try:
        paths = []
        for i, (kind, script) in enumerate(scratch_steps(saved)):
            path = os.path.join(directory, "%03d.%s" % (i, "json" if kind == "json" else "nft"))
            with open(path, "w") as handle:
                handle.write(script)
            paths.append(path)
        try:
            proc = subprocess.run(["unshare", "--net", "--", "sh", "-c", _SCRATCH, "sh"] + paths,
                                  capture_output=True, text=True, check=False)
        except OSError as exc:
            raise CommandExecutionError("cannot run unshare: %s; nothing was changed" % exc) from exc
        if proc.returncode != 0:
            raise CommandExecutionError(
                "the backup does not load in a scratch network namespace, nothing was changed:\n%s"
                % proc.stderr.strip())
        return proc.stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _listdir(directory):
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CommandExecutionError("cannot list %s: %s" % (directory, exc)) from exc


def backup(directory, keep=None, owner="local", document=None):
    """
    Save the live ruleset (``document``, an ``nft -j list ruleset`` already
    read, or a fresh read), keep the newest ``keep`` backups of ``owner``
    (None: ``DEFAULT_KEEP``) in ``directory``.  Returns ``{"path", "removed"}``.
    """
    _check_owner(owner)
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
    qf_files.write_atomic(path, text, mode=0o600, makedirs=False)
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


def backups(directory, owner="local"):
    """The backups of ``owner``, newest first: ``[{"name", "path", "bytes"}]``."""
    _check_owner(owner)
    out = []
    for name in reversed(owned(_listdir(directory), owner)):
        path = os.path.join(directory, name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue
        out.append({"name": name, "path": path, "bytes": size})
    return out


def revert(directory, owner="local", name=None):
    """
    Replace the whole live ruleset with a backup (default: the newest) in one
    checked transaction.  Returns ``{"reverted_to", "path"}``.
    """
    _check_owner(owner)
    mine = owned(_listdir(directory), owner)
    if name is None:
        if not mine:
            raise CommandExecutionError("no backup of %s in %s" % (owner, directory))
        name = mine[-1]
    elif name not in mine:
        raise CommandExecutionError(
            "%r is not a backup of %s in %s (see qubes_firewall.backups)" % (name, owner, directory))
    path = os.path.join(directory, name)
    saved = qf_files.read(path)
    if saved is None:
        raise CommandExecutionError("%s vanished" % path)
    try:
        document = json.loads(saved)
    except ValueError as exc:
        raise CommandExecutionError("%s is not an nft JSON ruleset: %s" % (path, exc)) from exc
    if not isinstance(document, dict) or not isinstance(document.get("nftables"), list):
        raise CommandExecutionError("%s is not an nft JSON ruleset (no nftables list)" % path)
    if any(concat_data(item) for item in document["nftables"]):
        # nft 1.0.6 cannot load these maps from JSON: load nft's text instead
        script = "flush ruleset\n" + scratch_text(document)
        qf_nft.check(script)
        qf_nft.load(script)
    else:
        qf_nft.load_json(revert_document(document))
    return {"reverted_to": name, "path": path}
