"""
qubes.ConnectTCP from the ``qubes_firewall:connect_tcp`` pillar.

Two halves, both derived from the same validated model entries
(``ConnectTcp(index, client, server, port, local_port, persistent, call)``):

- dom0: the qrexec policy lines, one per entry, in a managed block named
  ``connect-tcp`` of ``lookup:policy_file``.  ``call: default`` gives
  ``qubes.ConnectTCP +PORT CLIENT @default allow target=SERVER`` (the client
  runs ``qvm-connect-tcp ::PORT``); ``call: named`` gives
  ``qubes.ConnectTCP +PORT CLIENT SERVER allow`` (the client runs
  ``qvm-connect-tcp LOCAL:SERVER:PORT``).  The argument is always ``+PORT``.
- the client qube, for ``persistent: true``: a socket unit listening on
  ``127.0.0.1:LOCAL_PORT`` with ``Accept=true`` and its templated service
  running ``qrexec-client-vm``, kept in ``<rw_config>``, plus a managed block
  ``connect-tcp`` in ``<rw_config>/rc.local`` that installs them into
  ``/run/systemd/system`` and starts the sockets at every boot.

The pure part (``policy_body``, ``units``, ``rc_local_body``, ``commands``)
takes model objects and returns text; the I/O part (``lint_policy``,
``verify_units``, ``policy_plan``, ``write_policy``, ``binding_plan``,
``write_bindings``, ``runtime_plan``, ``runtime_apply``) is at the end and
takes what it needs (the model, the minion id, directories) as arguments.
"""

import grp
import os
import re
import shlex
import shutil
import subprocess
import tempfile

import _qubes_firewall_files as qf_files
import _qubes_firewall_model as qf_model
from salt.exceptions import CommandExecutionError

BLOCK = "connect-tcp"
SERVICE = "qubes.ConnectTCP"
UNIT_PREFIX = "qf-connect-tcp-"
# qf-connect-tcp-<local port>-<client qube>.socket / ...@.service; the port is
# digits only, so the rest is exactly the qube name.
_UNIT_FILE = re.compile(r"\Aqf-connect-tcp-([0-9]{1,5})-(.+)(\.socket|@\.service)\Z")
SYSTEMD_RUN_DIR = "/run/systemd/system"
POLICY_MODE = 0o664
POLICY_GROUP = "qubes"
UNIT_MODE = 0o644
RC_LOCAL_HEADER = "#!/bin/sh\n"
POLICY_HEADER = (
    "# qrexec policy: the first line that matches a call decides.\n"
    "# The block below is written by qubes-firewall-formula from the\n"
    "# qubes_firewall:connect_tcp pillar; lines outside it are yours.\n"
)
_UNIT_HEADER = "# Managed by Salt (qubes_firewall:connect_tcp); edits are overwritten.\n"


# --------------------------------------------------------------------------
# Pure rendering
# --------------------------------------------------------------------------


def _specificity(entry):
    """Sort key: qube names before @tag: before @anyvm (first match wins)."""
    if entry.client == "@anyvm":
        return 2
    if entry.client.startswith("@tag:"):
        return 1
    return 0


def policy_line(entry):
    """The qrexec policy line of one ``connect_tcp`` entry."""
    if entry.call == "named":
        return "%s +%d %s %s allow" % (SERVICE, entry.port, entry.client, entry.server)
    return "%s +%d %s @default allow target=%s" % (SERVICE, entry.port, entry.client, entry.server)


def command(entry):
    """The one-off ``qvm-connect-tcp`` command the client runs for ``entry``."""
    if entry.call == "named":
        return "qvm-connect-tcp %d:%s:%d" % (entry.local_port, entry.server, entry.port)
    if entry.local_port == entry.port:
        return "qvm-connect-tcp ::%d" % entry.port
    return "qvm-connect-tcp %d::%d" % (entry.local_port, entry.port)


def policy_body(entries):
    """
    The body of the ``connect-tcp`` block of the policy file, or None when
    there are no entries (the block is removed).  Lines naming a qube come
    before ``@tag:`` lines, which come before ``@anyvm`` lines (first match
    wins in qrexec); otherwise pillar order.  Entries that give the same line
    share it.
    """
    lines = {}  # line -> [comment, ...], insertion-ordered
    for entry in sorted(entries, key=_specificity):
        how = "persistent binding on 127.0.0.1:%d" % entry.local_port if entry.persistent else command(entry)
        lines.setdefault(policy_line(entry), []).append(
            "# %s: %s -> %s port %d (%s)" % (entry.origin, entry.client, entry.server, entry.port, how)
        )
    if not lines:
        return None
    out = []
    for line, comments in lines.items():
        out.extend(comments)
        out.append(line)
    return "\n".join(out) + "\n"


def unit_name(entry):
    """The base name of the binding's units: ``qf-connect-tcp-<local port>-<client>``."""
    return "%s%d-%s" % (UNIT_PREFIX, entry.local_port, entry.client)


def bindings(entries, qube):
    """The persistent entries whose client is ``qube``, in pillar order."""
    return [e for e in entries if e.persistent and e.client == qube]


def units(entries, qube):
    """
    ``{file name: text}`` of the systemd units of ``qube``'s persistent
    bindings: ``NAME.socket`` and the templated ``NAME@.service`` per binding.
    """
    out = {}
    for entry in bindings(entries, qube):
        name = unit_name(entry)
        target = "''" if entry.call == "default" else entry.server
        description = "qubes.ConnectTCP+%d to %s on 127.0.0.1:%d (qubes_firewall)" % (
            entry.port, entry.server, entry.local_port)
        out[name + ".socket"] = (
            _UNIT_HEADER
            + "[Unit]\nDescription=%s\n\n" % description
            + "[Socket]\nListenStream=127.0.0.1:%d\nAccept=true\n\n" % entry.local_port
            + "[Install]\nWantedBy=sockets.target\n"
        )
        out[name + "@.service"] = (
            _UNIT_HEADER
            + "[Unit]\nDescription=%s\n\n" % description
            + "[Service]\nExecStart=qrexec-client-vm %s %s+%d\n" % (target, SERVICE, entry.port)
            + "StandardInput=socket\nStandardOutput=inherit\n"
        )
    return out


def _q(word):
    return shlex.quote(word)


def rc_local_body(entries, qube, rw_config):
    """
    The ``connect-tcp`` block of ``qube``'s rc.local, or None when it has no
    persistent binding.  It runs only in the qube named ``qube`` (a disposable
    template's rc.local runs in every disposable), and any number of runs give
    the same result: copy, daemon-reload, start (a no-op when running).
    """
    names = [unit_name(e) for e in bindings(entries, qube)]
    if not names:
        return None
    files = []
    for name in names:
        files += [_q("%s/%s.socket" % (rw_config, name)), _q("%s/%s@.service" % (rw_config, name))]
    return "".join([
        "# qubes.ConnectTCP bindings of %s (qubes_firewall:connect_tcp): install the\n" % qube,
        "# units kept in %s and start their sockets; safe to run again.\n" % rw_config,
        'if [ "$(qubesdb-read /name 2>/dev/null)" = %s ]; then\n' % _q(qube),
        "    mkdir -p %s\n" % SYSTEMD_RUN_DIR,
        "    cp %s %s/\n" % (" ".join(files), SYSTEMD_RUN_DIR),
        "    systemctl daemon-reload\n",
        "    systemctl start %s\n" % " ".join(_q(n + ".socket") for n in names),
        "fi\n",
    ])


def commands(entries, qube=None):
    """
    ``[(origin, client, command line)]`` for the non-persistent entries (of
    ``qube`` only, when given): what the user runs in the client by hand.
    """
    return [
        (e.origin, e.client, command(e))
        for e in entries
        if not e.persistent and (qube is None or e.client == qube)
    ]


# --------------------------------------------------------------------------
# Checks (run a tool when it is installed)
# --------------------------------------------------------------------------


def _run(argv, timeout=60):
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CommandExecutionError("cannot run %s: %s" % (argv[0], exc)) from exc
    return proc.returncode, proc.stdout


def lint_policy(path, text):
    """
    Check the new policy file text with ``qubes-policy-lint`` before it
    replaces the file at ``path``.  Returns a note for the state comment;
    raises CommandExecutionError (naming ``path`` and the linter's messages)
    when the linter rejects it.  Writes only a temporary copy, outside
    policy.d.
    """
    lint = shutil.which("qubes-policy-lint")
    if lint is None:
        return "qubes-policy-lint is not installed: policy not linted."
    if text is None:
        return "policy file removed: nothing to lint."
    with tempfile.TemporaryDirectory(prefix="qf-policy-") as tmp:
        candidate = os.path.join(tmp, os.path.basename(path))
        with open(candidate, "w", encoding="utf-8") as handle:
            handle.write(text)
        rc, output = _run([lint, candidate])
    output = output.replace(candidate, path).strip()
    if rc != 0:
        raise CommandExecutionError(
            "qubes-policy-lint rejects the new %s; nothing changed:\n%s" % (path, output))
    return "qubes-policy-lint accepts the new policy."


def verify_units(unit_texts, scratch):
    """
    Check unit files (``{file name: text}``) with ``systemd-analyze verify``
    when it is installed.  Returns a note; raises CommandExecutionError with
    the tool's messages about these units.  Outside a qube (a lab, a
    container) ``qrexec-client-vm`` is missing, and that one complaint is
    ignored.
    """
    analyze = shutil.which("systemd-analyze")
    if not unit_texts:
        return ""
    if analyze is None:
        return "systemd-analyze is not installed: units not verified."
    missing_qrexec = shutil.which("qrexec-client-vm") is None
    try:
        os.makedirs(scratch, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CommandExecutionError("cannot create %s: %s" % (scratch, exc)) from exc
    # in the formula's scratch directory: what a killed run leaves there, the next run removes
    with tempfile.TemporaryDirectory(prefix="qf-units-", dir=scratch) as tmp:
        paths = []
        for name, text in sorted(unit_texts.items()):
            paths.append(os.path.join(tmp, name))
            with open(paths[-1], "w", encoding="utf-8") as handle:
                handle.write(text)
        rc, output = _run([analyze, "verify", "--man=no"] + paths, timeout=120)
        output = output.replace(tmp + "/", "")
    ignored = "Command qrexec-client-vm is not executable"
    lines = [line for line in output.splitlines() if line.strip()]
    if missing_qrexec:
        lines = [line for line in lines if ignored not in line]
    bases = {name.split("@")[0].rsplit(".", 1)[0] for name in unit_texts}
    ours = [line for line in lines if any(base in line for base in bases)]
    if ours or (rc != 0 and lines):
        raise CommandExecutionError("systemd-analyze verify rejects the units:\n" + "\n".join(lines))
    note = "systemd-analyze verify accepts the units"
    if missing_qrexec:
        note += " (qrexec-client-vm is not installed here)"
    return note + "."


# --------------------------------------------------------------------------
# dom0: the policy file
# --------------------------------------------------------------------------


def policy_plan(model):
    """
    ``{"path", "old", "new"}`` for the policy file: its text now and with the
    ``connect-tcp`` block the pillar wants (``None`` = file absent).  A file
    left holding nothing but the formula's header is removed.
    """
    path = model.lookup.policy_file
    old = qf_files.read(path)
    try:
        new = qf_files.replace_block(
            old, BLOCK, policy_body(model.connect_tcp), POLICY_HEADER)
    except ValueError as exc:
        raise CommandExecutionError("%s: %s" % (path, exc)) from exc
    return {"path": path, "old": old, "new": _policy_left(new)}


def _policy_left(text):
    """None when what is left of the policy file is nothing but the formula's header (or blank)."""
    if text is not None and text.strip() in ("", POLICY_HEADER.strip()):
        return None
    return text


def policy_absent_plan(raw, errors, model=None):
    """
    ``{"path", "old", "new"}`` for removing the formula's ``connect-tcp``
    block from the policy file: the user's lines stay byte for byte, and the
    file goes when nothing but the formula's header is left (a file the
    formula created). It works without a valid pillar: with no
    ``qubes_firewall`` pillar the default ``policy_file`` is cleaned, with an
    invalid one its ``lookup:policy_file`` when that value itself is valid
    (else the default).
    """
    path = qf_model.DEFAULT_POLICY_FILE
    if isinstance(raw, dict):
        if not errors:
            path = model.lookup.policy_file
        else:
            lookup = raw.get("lookup")
            given = lookup.get("policy_file") if isinstance(lookup, dict) else None
            if isinstance(given, str) and not any(
                    e.startswith("qubes_firewall:lookup") for e in errors):
                path = given
    old = qf_files.read(path)
    if old is None:
        return {"path": path, "old": None, "new": None}
    try:
        new = qf_files.replace_block(old, BLOCK, None, POLICY_HEADER)
    except ValueError as exc:
        raise CommandExecutionError("%s: %s; nothing changed" % (path, exc)) from exc
    if new != old:
        new = _policy_left(new)
    return {"path": path, "old": old, "new": new}


def write_policy(path, text):
    """Write (or, for ``None``, remove) the policy file: atomic, 0664, group qubes."""
    group = None
    try:
        grp.getgrnam(POLICY_GROUP)
        group = POLICY_GROUP
    except KeyError:
        pass
    return qf_files.write_atomic(path, text, mode=POLICY_MODE, group=group)


# --------------------------------------------------------------------------
# The client qube: unit files and rc.local
# --------------------------------------------------------------------------


def _owned_units(rw_config, qube):
    """File names in ``rw_config`` that are units of ``qube``'s bindings (any qube's for None)."""
    out = []
    for name in qf_files.listdir(rw_config):
        match = _UNIT_FILE.match(name)
        if match and (qube is None or match.group(2) == qube):
            out.append(name)
    return sorted(out)


def owned_unit_files(directory):
    """
    The binding unit files the formula wrote in ``directory`` (default: the
    running systemd's ``/run/systemd/system``), for any client: what
    ``qubes_firewall.clean`` removes.
    """
    return _owned_units(directory, None)


def clean_runtime_plan(run_dir):
    """
    A ``runtime_plan`` that stops and removes every binding unit of the
    running systemd (skipped when systemd does not run here).
    """
    plan = {"skip": None, "install": [], "remove": [], "restart": [], "start": [], "stop": []}
    if not os.path.isdir(run_dir) or shutil.which("systemctl") is None:
        plan["skip"] = "systemd is not running here (no %s)" % run_dir
        return plan
    plan["remove"] = owned_unit_files(run_dir)
    plan["stop"] = [n for n in plan["remove"] if n.endswith(".socket")]
    return plan


def binding_plan(model, qube):
    """
    What the client qube ``qube`` (default: this minion) should hold:
    ``{"qube", "rw_config", "units": {file name: text}, "files": {path:
    {"old", "new", "mode"}}, "changed_units": {...}}`` covering its unit
    files in ``<rw_config>`` (stale ones with ``new`` None) and
    ``<rw_config>/rc.local``; only files that differ are listed.  ``commands`` lists the one-off commands of its
    non-persistent entries.
    """
    rw_config = model.lookup.rw_config
    read = qf_files.read
    wanted = units(model.connect_tcp, qube)
    files = {}
    for name in sorted(set(wanted) | set(_owned_units(rw_config, qube))):
        path = os.path.join(rw_config, name)
        old, new = read(path), wanted.get(name)
        if old != new:
            files[path] = {"old": old, "new": new, "mode": UNIT_MODE}
    rc_local = os.path.join(rw_config, "rc.local")
    old = read(rc_local)
    try:
        new = qf_files.replace_block(
            old, BLOCK, rc_local_body(model.connect_tcp, qube, rw_config), RC_LOCAL_HEADER)
    except ValueError as exc:
        raise CommandExecutionError("%s: %s" % (rc_local, exc)) from exc
    mode = qf_files.mode_of(rc_local)
    if new is not None and (old != new or (mode is not None and not mode & 0o100)):
        # rc.local runs only when executable
        files[rc_local] = {"old": old, "new": new, "mode": 0o755 if mode is None else mode | 0o111}
    return {
        "qube": qube,
        "rw_config": rw_config,
        "units": wanted,
        # the units whose files change: what systemd-analyze has not seen yet
        "changed_units": {n: t for n, t in wanted.items() if os.path.join(rw_config, n) in files},
        "files": files,
        "commands": [c for _, _, c in commands(model.connect_tcp, qube)],
    }


def write_bindings(files):
    """Write the files of a ``binding_plan`` (``new`` None removes one) and set their modes."""
    for path, item in sorted(files.items()):
        if item["old"] != item["new"]:
            qf_files.write_atomic(path, item["new"], mode=item["mode"])
        if item["new"] is not None:
            qf_files.ensure_mode(path, item["mode"])
    return True


# --------------------------------------------------------------------------
# The client qube: systemd now
# --------------------------------------------------------------------------


def _systemctl(*args):
    rc, output = _run(["systemctl"] + list(args))
    return rc, output.strip()


def runtime_plan(unit_texts, qube, run_dir):
    """
    The actions that make the running systemd match ``unit_texts`` (the
    wanted ``{file name: text}`` of ``qube``): ``{"skip": reason or None,
    "install": [...], "remove": [...], "restart": [...], "start": [...],
    "stop": [...]}``.  Only reads.  systemd not running (a container, a
    chroot) is a reason to skip: the rc.local block starts the units at the
    next boot.
    """
    plan = {"skip": None, "install": [], "remove": [], "restart": [], "start": [], "stop": []}
    if not os.path.isdir(run_dir) or shutil.which("systemctl") is None:
        plan["skip"] = ("systemd is not running here (no %s): the units start at the next boot "
                        "from rc.local" % run_dir)
        return plan
    read = qf_files.read
    for name in _owned_units(run_dir, qube):
        if name not in unit_texts:
            plan["remove"].append(name)
            if name.endswith(".socket"):
                plan["stop"].append(name)
    for name, text in sorted(unit_texts.items()):
        current = read(os.path.join(run_dir, name))
        if current != text:
            plan["install"].append(name)
        if not name.endswith(".socket"):
            continue  # a changed service template takes effect with daemon-reload
        if current is not None and current != text:
            plan["restart"].append(name)
        elif current is None or _systemctl("is-active", "--quiet", name)[0] != 0:
            plan["start"].append(name)
    return plan


def runtime_actions(plan, run_dir):
    """The plan as command-like lines, for ``changes`` and test mode."""
    out = ["rm %s/%s" % (run_dir, n) for n in plan["remove"]]
    out = ["systemctl stop %s" % n for n in plan["stop"]] + out
    out += ["install %s/%s" % (run_dir, n) for n in plan["install"]]
    if plan["install"] or plan["remove"]:
        out.append("systemctl daemon-reload")
    out += ["systemctl restart %s" % n for n in plan["restart"]]
    out += ["systemctl start %s" % n for n in plan["start"]]
    return out


def runtime_apply(plan, unit_texts, run_dir):
    """Carry out a ``runtime_plan``; raises CommandExecutionError on the first failure."""
    write = qf_files.write_atomic

    def check(*args):
        rc, output = _systemctl(*args)
        if rc != 0:
            raise CommandExecutionError("systemctl %s failed (%d): %s" % (" ".join(args), rc, output))

    for name in plan["stop"]:
        check("stop", name)
    for name in plan["remove"]:
        write(os.path.join(run_dir, name), None)
    for name in plan["install"]:
        write(os.path.join(run_dir, name), unit_texts[name], mode=UNIT_MODE)
    if plan["install"] or plan["remove"]:
        check("daemon-reload")
    for name in plan["restart"]:
        check("restart", name)
    if plan["start"]:
        check("start", *plan["start"])
    return True
