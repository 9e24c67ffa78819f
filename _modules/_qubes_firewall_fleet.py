"""
One pillar tree for many machines (docs/fleet.md): the pure part.

Plain Python, no Salt: ``read_machine`` reads the shared file and the
machine file (in dom0, for ``qubes_firewall.fleet_pillar``);
``machine_pillar`` parses both and merges the machine file onto the shared
topology by ONE rule (``merge``):

- a mapping merges key by key, recursively;
- ``KEY: null`` deletes KEY (it must be there to delete: a typo is an error);
- the lists ``port_forwards``, ``connections`` and ``connect_tcp`` merge
  entry by entry by identity (``IDENTITY``): an entry whose identity the
  shared list has merges into it as a mapping, one with ``remove: true``
  deletes it, any other is appended;
- any other value (a scalar, any other list) replaces.

Removing a qube (``qubes: {NAME: null}``) also drops the shared list entries
that name it (a forward to it, a connection from or to it, a ConnectTCP
entry with it as client or server); a qube whose ``netvm`` still names it is
an error.  A port forward without ``interfaces`` gets the machine's
``uplink_interfaces``.

``targets`` derives the qubesctl ``--targets`` list a valid pillar needs;
``status_row`` and ``row_text`` make the fleet view's one row per machine.
Every error is a :class:`FleetError` whose message names the pillar path.
"""

import json
import os

import yaml

ROOT = "qubes_firewall"
# the identity of an entry of each list that merges by entry
IDENTITY = {
    "port_forwards": ("name",),
    "connections": ("from", "to", "proto"),
    "connect_tcp": ("client", "server", "port"),
}
# per list, the keys that name a qube (an entry naming a removed qube is dropped)
QUBE_KEYS = {
    "port_forwards": ("qube",),
    "connections": ("from", "to"),
    "connect_tcp": ("client", "server"),
}
MACHINE_KEYS = ("machine", "uplink_interfaces", ROOT)
REMOVE = "remove"


class FleetError(ValueError):
    """The fleet files cannot make a pillar; the message names the path and the value."""


def _show(value):
    """A value as YAML writes it, on one line and short: 'web', 443, true, null, ["a", "b"]."""
    if isinstance(value, str):
        text = "'%s'" % value.replace("'", "''")
    else:
        try:
            text = json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def _path(parts):
    return ":".join(str(p) for p in parts)


def load_yaml(text, what):
    """``text`` parsed as YAML (safe); a FleetError saying where it is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " at line %d column %d" % (mark.line + 1, mark.column + 1) if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FleetError("%s is not valid YAML%s: %s" % (what, where, problem)) from None


# ---- the merge rule ----


def identity(kind, entry):
    """The identity of an entry of list ``kind`` (a tuple of its identity keys' values)."""
    return tuple(entry.get(key) for key in IDENTITY[kind])


def _identity_text(kind, ident):
    return ", ".join("%s: %s" % (k, _show(v)) for k, v in zip(IDENTITY[kind], ident) if v is not None)


def merge(base, patch, path=(ROOT,)):
    """
    ``patch`` merged onto ``base`` by the fleet's merge rule (module
    docstring); neither is changed.  ``path``: where ``base`` is, for the
    messages.  The three lists merge by entry only directly under ``ROOT``.
    """
    path = list(path)
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return patch
    out = dict(base)
    for key, value in patch.items():
        here = path + [key]
        if value is None:
            if key not in out:
                raise FleetError("%s: null removes %s, but the shared file has no %s"
                                 % (_path(here), key, _path(here)))
            del out[key]
        elif path == [ROOT] and key in IDENTITY:
            out[key] = merge_list(key, out.get(key), value, here)
        elif key in out:
            out[key] = merge(out[key], value, here)
        else:
            out[key] = value
    return out


def _entries(kind, items, path, what):
    if items is None:
        return []
    if not isinstance(items, list):
        raise FleetError("%s: must be a list, got %s" % (_path(path), _show(items)))
    for index, entry in enumerate(items):
        if not isinstance(entry, dict):
            raise FleetError("%s: must be a mapping, got %s" % (_path(path + [index]), _show(entry)))
        for key in IDENTITY[kind]:
            if key != "proto" and entry.get(key) is None:
                raise FleetError("%s: %s entry without %s: the %s entries are told apart by %s"
                                 % (_path(path + [index]), what, key, kind, ", ".join(IDENTITY[kind])))
    return items


def merge_list(kind, base, patch, path):
    """The list ``kind`` of the shared file (``base``) with the machine's entries (``patch``) merged in."""
    base = list(_entries(kind, base, path, "a shared"))
    patch = _entries(kind, patch, path, "a machine file")
    seen = {}
    for index, entry in enumerate(patch):
        here = path + [index]
        ident = identity(kind, entry)
        if ident in seen:
            raise FleetError("%s: %s again (also %s)" % (_path(here), _identity_text(kind, ident),
                                                         _path(path + [seen[ident]])))
        seen[ident] = index
        matches = [i for i, item in enumerate(base) if item is not None and identity(kind, item) == ident]
        if len(matches) > 1:
            raise FleetError("%s: the shared %s has %d entries with %s: say which one in the shared file "
                             "(merge them, or tell them apart by %s)"
                             % (_path(here), kind, len(matches), _identity_text(kind, ident),
                                ", ".join(IDENTITY[kind])))
        if REMOVE in entry:
            if entry[REMOVE] is not True:
                raise FleetError("%s:%s: must be true, got %s" % (_path(here), REMOVE, _show(entry[REMOVE])))
            extra = sorted(set(entry) - set(IDENTITY[kind]) - {REMOVE})
            if extra:
                raise FleetError("%s: remove: true takes only the identity keys (%s), not %s"
                                 % (_path(here), ", ".join(IDENTITY[kind]), ", ".join(extra)))
            if not matches:
                raise FleetError("%s: removes the %s entry %s, but the shared file has none"
                                 % (_path(here), kind, _identity_text(kind, ident)))
            base[matches[0]] = None
        elif matches:
            base[matches[0]] = merge(base[matches[0]], entry, path + [matches[0]])
        else:
            base.append(dict(entry))
    return [item for item in base if item is not None]


def _drop_removed(shared, removed):
    """``shared`` without the list entries that name a qube in ``removed``; and what was dropped."""
    out = dict(shared)
    dropped = []
    for kind, keys in QUBE_KEYS.items():
        items = out.get(kind)
        if not isinstance(items, list):
            continue
        kept = []
        for index, entry in enumerate(items):
            names = [entry.get(k) for k in keys] if isinstance(entry, dict) else []
            gone = [n for n in names if isinstance(n, str) and n in removed]
            if gone:
                dropped.append({"kind": kind, "path": _path([ROOT, kind, index]), "qube": gone[0],
                                "identity": _identity_text(kind, identity(kind, entry))})
            else:
                kept.append(entry)
        out[kind] = kept
    return out, dropped


def machine_pillar(shared, machine):
    """
    The pillar of one machine: ``{"qubes_firewall": merged, "dropped": [...]}``.
    ``shared``: the shared file's data (``{"qubes_firewall": {...}}``);
    ``machine``: the machine file's data (``machine``, ``uplink_interfaces``,
    ``qubes_firewall``: the patch).  Raises FleetError.
    """
    if not isinstance(shared, dict) or not isinstance(shared.get(ROOT), dict):
        raise FleetError("the shared file must hold a %s: mapping, got %s" % (ROOT, _show(shared)))
    extra = sorted(str(k) for k in shared if k != ROOT)
    if extra:
        raise FleetError("the shared file holds only %s:, not %s" % (ROOT, ", ".join(extra)))
    if machine is None:
        machine = {}
    if not isinstance(machine, dict):
        raise FleetError("a machine file is a mapping (machine, uplink_interfaces, %s), got %s"
                         % (ROOT, _show(machine)))
    unknown = sorted(str(k) for k in machine if k not in MACHINE_KEYS)
    if unknown:
        raise FleetError("unknown key %s (a machine file has %s; what changes the topology goes under %s:)"
                         % (", ".join(unknown), ", ".join(MACHINE_KEYS), ROOT))
    uplinks = machine.get("uplink_interfaces")
    if uplinks is not None and (not isinstance(uplinks, list) or not uplinks
                                or not all(isinstance(i, str) for i in uplinks)):
        raise FleetError("uplink_interfaces: must be a list of interface names, got %s" % _show(uplinks))
    patch = machine.get(ROOT)
    if patch is None:
        patch = {}
    if not isinstance(patch, dict):
        raise FleetError("%s: must be a mapping, got %s" % (ROOT, _show(patch)))
    base = shared[ROOT]
    qubes_patch = patch.get("qubes")
    removed = []
    if isinstance(qubes_patch, dict):
        removed = [q for q, v in qubes_patch.items() if v is None]
    base, dropped = _drop_removed(base, set(removed))
    patch = dict(patch)
    for kind in IDENTITY:
        gone = {item["identity"]: item["qube"] for item in dropped if item["kind"] == kind}
        entries = patch.get(kind)
        if not gone or not isinstance(entries, list):
            continue
        kept = []
        for index, entry in enumerate(entries):
            ident = _identity_text(kind, identity(kind, entry)) if isinstance(entry, dict) else None
            if ident not in gone:
                kept.append(entry)
            elif entry.get(REMOVE) is not True:  # removing it again is fine: it is gone
                raise FleetError("%s:%s:%d: changes the %s entry %s, which goes with the removed qube %s"
                                 % (ROOT, kind, index, kind, ident, gone[ident]))
        patch[kind] = kept
    merged = merge(base, patch)
    qubes = merged.get("qubes") if isinstance(merged.get("qubes"), dict) else {}
    for qube in removed:
        for other, spec in sorted(qubes.items()):
            if isinstance(spec, dict) and spec.get("netvm") == qube:
                raise FleetError("%s:qubes:%s:netvm: names %s, which this machine removes: give %s another "
                                 "netvm here (%s: {qubes: {%s: {netvm: ...}}}) or remove it too"
                                 % (ROOT, other, qube, other, ROOT, other))
    for index, forward in enumerate(merged.get("port_forwards") or []):
        if isinstance(forward, dict) and "interfaces" not in forward:
            if uplinks is None:
                raise FleetError("%s:port_forwards:%d: the port forward %s names no interfaces and the machine "
                                 "file no uplink_interfaces: set uplink_interfaces (sys-net's interfaces to "
                                 "the LAN), or interfaces in the forward" % (ROOT, index, _show(forward.get("name"))))
            merged["port_forwards"] = list(merged["port_forwards"])
            merged["port_forwards"][index] = dict(forward, interfaces=list(uplinks))
    return {ROOT: merged, "dropped": dropped}


def machine_name(machine, link_target=None):
    """
    The machine's name: the ``machine`` key of its file, else the name of the
    file the link points to (``machines/laptop.yaml`` -> ``laptop``).
    """
    named = machine.get("machine") if isinstance(machine, dict) else None
    stem = None
    if link_target:
        stem = link_target.rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".yaml", ".yml", ".sls"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
    if named is not None and not isinstance(named, str):
        raise FleetError("machine: must be the machine's name, got %s" % _show(named))
    if named and stem and named != stem:
        raise FleetError("machine: says %s, but the file is %s: a copied file? name it after its machine"
                         % (named, link_target))
    return named or stem


# ---- targets: what qubesctl must run, in its order ----


def _netvm(spec):
    value = spec.get("netvm") if isinstance(spec, dict) else None
    return None if value in (None, "", "none") else value


def targets(pillar):
    """
    The qubes a ``qubes_firewall`` pillar (valid: checked by the model first)
    needs a qubesctl run in, in the order to run them: the templates of its
    custom-persist qubes (their boot replay lives there), the disposable
    templates of its named disposables (their /rw comes from there), then its
    qubes from the uplink down (a netvm before its clients, by name within a
    hop), then the ConnectTCP clients it does not list (their units).
    ConnectTCP servers need no run (dom0's policy is all they need), nor do
    ``@anyvm`` / ``@tag:`` clients (they are no one qube).
    """
    qubes = pillar.get("qubes") if isinstance(pillar, dict) else None
    qubes = qubes if isinstance(qubes, dict) else {}
    out = []

    def add(name):
        if isinstance(name, str) and name and name not in out and name != "dom0":
            out.append(name)

    for _name, spec in sorted(qubes.items()):
        if isinstance(spec, dict) and spec.get("custom_persist") is True:
            add(spec.get("template"))
    for _name, spec in sorted(qubes.items()):
        if isinstance(spec, dict):
            add(spec.get("dispvm_template"))

    def depth(name, seen=()):
        netvm = _netvm(qubes.get(name))
        if netvm is None or netvm not in qubes or netvm in seen:
            return 0
        return 1 + depth(netvm, seen + (name,))

    for name in sorted(qubes, key=lambda n: (depth(n), n)):
        add(name)
    for entry in (pillar.get("connect_tcp") if isinstance(pillar, dict) else None) or []:
        client = entry.get("client") if isinstance(entry, dict) else None
        if isinstance(client, str) and not client.startswith("@"):
            add(client)
    return out


# ---- the fleet view: one row per machine ----

COLUMNS = ("machine", "verdict", "dom0", "targets")


def status_row(machine, targets=(), errors=(), problems=(), prefs=(), firewall=(), policy=False):
    """
    One machine's row of the fleet view: ``{"machine", "verdict", "dom0",
    "targets", "details"}``.  ``errors``: the pillar's errors; ``problems``:
    dom0's preflight refusals; ``prefs``: ``dom0_prefs_plan`` steps;
    ``firewall``: the qubes whose qvm-firewall list differs; ``policy``: the
    ConnectTCP policy differs.  ``verdict`` is one line.
    """
    details = []
    if errors:
        verdict = "pillar error: %s%s" % (errors[0], _more(errors))
        dom0 = "not checked"
        details = list(errors)
    elif problems:
        verdict = "refused by dom0's preflight: %s%s" % (problems[0], _more(problems))
        dom0 = "not checked"
        details = list(problems)
    else:
        drift = ["%s %s %s -> %s" % (s["qube"], s["prop"], _pref(s["old"]), _pref(s["new"])) for s in prefs]
        drift += ["qvm-firewall of %s" % name for name in sorted(firewall)]
        if policy:
            drift.append("the qubes.ConnectTCP policy")
        details = drift
        if drift:
            dom0 = "; ".join(drift)
            verdict = ("dom0 drift (%d): apply dom0 first: sudo qubesctl state.apply qubes_firewall"
                       % len(drift))
        else:
            dom0 = "in sync"
            verdict = "ok: dom0 matches the pillar; %d qube%s to check (qubes_firewall.drift)" % (
                len(targets), "" if len(targets) == 1 else "s")
    return {"machine": machine, "verdict": verdict, "dom0": dom0, "targets": list(targets),
            "details": details}


def _pref(value):
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _more(items):
    return " (and %d more)" % (len(items) - 1) if len(items) > 1 else ""


def _cell(value):
    text = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
    return " ".join(text.split()) or "-"


def row_text(row):
    """The row as one tab-separated line: machine, verdict, dom0, targets (``column -t -s TAB`` aligns them)."""
    return "\t".join(_cell(row[c]) for c in COLUMNS)


def header_text():
    """The header line of the fleet table, as ``row_text`` lays it out."""
    return "\t".join(c.upper() for c in COLUMNS)


def row_json(row):
    """The row as one line of JSON (a JSON Lines record)."""
    return json.dumps(row, sort_keys=True)


# ---- reading the fleet's files (dom0, for qubes_firewall.fleet_pillar) ----


def _machines(directory):
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return "none"
    return ", ".join(n.rsplit(".", 1)[0] for n in names if n.endswith((".yaml", ".yml"))) or "none"


def _read(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError("cannot read %s %s: %s" % (what, path, getattr(exc, "strerror", None) or exc)) from None


def read_machine(shared_file, machine_file):
    """
    ``(pillar, info)``: the shared topology with this machine's file merged on
    (``machine_pillar``), and ``info`` (machine, files, dropped entries, and
    ``where``: the machine and its file, for messages).  Raises FleetError
    with the machine and the file in the message.
    """
    machines = os.path.join(os.path.dirname(machine_file), "machines")
    link = os.readlink(machine_file) if os.path.islink(machine_file) else None
    named = machine_name({}, link) if link else None
    info = {"machine": named, "machine_file": machine_file, "shared_file": shared_file}
    where = "machine %s (%s)" % (named, os.path.realpath(machine_file)) if named else "this machine"
    if not os.path.exists(machine_file):
        if link:
            raise FleetError("machine %s: %s links to %s, which does not exist (machines: %s)"
                             % (named, machine_file, link, _machines(machines)))
        raise FleetError(
            "%s is missing: link it to this machine's file, once: `sudo ln -s machines/NAME.yaml %s` "
            "(NAME one of: %s)" % (machine_file, machine_file, _machines(machines)))
    try:
        data = load_yaml(_read(machine_file, "the machine file"), "the machine file")
        name = machine_name(data, link)
        if not name:
            raise FleetError("name the machine: `machine: NAME` in %s, or link the file" % machine_file)
        info["machine"] = name
        where = "machine %s (%s)" % (name, os.path.realpath(machine_file))
        shared = load_yaml(_read(shared_file, "the shared file"), "the shared file %s" % shared_file)
        built = machine_pillar(shared, data)
    except FleetError as exc:
        raise FleetError("%s: %s" % (where, exc)) from None
    info["dropped"] = built["dropped"]
    info["where"] = where
    return built[ROOT], info
