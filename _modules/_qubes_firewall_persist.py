"""
The files that replay a qube's rules at boot, planned from the model: the
managed blocks of ``<rw_config>/qubes-firewall-user-script`` and
``rc.local`` (a qube's own rules, a named disposable's from its template), and
the custom-persist scripts and units a template holds for its qubes.

Plain Python (no Salt loader): every function takes the model and ``plan_of``
(``qube name -> QubePlan``, the run's plans) and reads and writes files only
through ``_qubes_firewall_files``.  The planners only read; the writers
carry out what they planned.
"""

import os

import _qubes_firewall_files as qf_files
import _qubes_firewall_plan as qf_plan
from salt.exceptions import CommandExecutionError

# the formula's files in a template (custom-persist): the qube's name follows
PERSIST_PREFIX = "qubes-firewall-formula-"
# the mark names the template whose run wrote the file: a qube booted from that
# template sees the file in its (volatile) root and leaves it alone
PERSIST_MARK = "# qubes_firewall custom-persist replay, template %s (managed by Salt, do not edit)"
RC_HEADER = "#!/bin/sh\n"
BOOT_FILES = ("qubes-firewall-user-script", "rc.local")


def has_rules(plan):
    return plan is not None and plan.rule_count > 0


def _custom_persist(mdl, name):
    qube = mdl.qubes.get(name)
    return qube is not None and qube.custom_persist


def _stale_disposable_block(mdl, name):
    """
    A block ``rules:NAME`` found in a file: NAME's disposable template (or a
    copy of its /rw) wrote it.  It is stale when NAME is no longer a disposable
    with a template in the pillar; while it is one, only its template's run
    manages it (a disposable's own /rw is a copy that must keep it).
    """
    qube = mdl.qubes.get(name)
    return qube is None or qube.dispvm_template is None


def replace_blocks(path, old, blocks):
    """``old`` with each ``{name: body or None}`` block set; path-named errors."""
    new = old
    try:
        for name in sorted(blocks):
            new = qf_files.replace_block(new, name, blocks[name], header=RC_HEADER)
    except ValueError as exc:
        raise CommandExecutionError("%s: %s" % (path, exc)) from exc
    return new


def _wanted_boot_blocks(mdl, qube, plan_of):
    """``{block name: (file name, body)}``: the boot blocks the run on ``qube`` writes."""
    wanted = {}
    own = mdl.qubes.get(qube)
    if own is not None and own.dispvm_template is None and not _custom_persist(mdl, qube):
        plan = plan_of(qube)
        if has_rules(plan):
            wanted["rules"] = (plan.persist_file, qf_plan.persist_block(plan))
    for name in mdl.disposables_of(qube):
        plan = plan_of(name)
        if has_rules(plan):
            wanted["rules:" + name] = (plan.persist_file, qf_plan.persist_block(plan))
    return wanted


def boot_files(mdl, qube, plan_of):
    """
    ``{path: (old_text, new_text)}`` for the files that replay rules at boot
    (``Run.persisted_files`` of ``_qubes_firewall_run`` says which blocks go
    where).  Reads only.
    """
    wanted = _wanted_boot_blocks(mdl, qube, plan_of)
    out = {}
    for filename in BOOT_FILES:
        path = "%s/%s" % (mdl.lookup.rw_config, filename)
        old = qf_files.read(path)
        present = [n for n in qf_files.block_names(old)
                   if n == "rules" or (n.startswith("rules:") and _stale_disposable_block(mdl, n[6:]))]
        blocks = {}
        for block in set(present) | set(wanted):
            where, body = wanted.get(block, (None, None))
            blocks[block] = body if where == filename else None
        out[path] = (old, replace_blocks(path, old, blocks))
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


def owned_persist_files(etc_qubes, systemd_dir, template):
    """
    Every custom-persist file the run on ``template`` wrote here: ``{path:
    text}`` (``"->TARGET"`` for a symlink that enables one of its units).
    """
    mark = PERSIST_MARK % template
    found, links = {}, {}
    dirs = ("%s/qubes-firewall.d" % etc_qubes, "%s/qubes-firewall-formula" % etc_qubes,
            systemd_dir, "%s/multi-user.target.wants" % systemd_dir)
    for directory in dirs:
        for entry in qf_files.listdir(directory, file_ok=True):
            path = os.path.join(directory, entry)
            if qf_files.is_link(path):
                if entry.startswith(PERSIST_PREFIX) and entry.endswith(".service"):
                    links[path] = os.path.join(systemd_dir, entry)
                continue
            ours = entry.startswith(PERSIST_PREFIX) or directory.endswith("/qubes-firewall-formula")
            if ours and qf_files.is_file(path):
                text = qf_files.read(path)
                if text is not None and mark in text.splitlines():
                    found[path] = text
    for path, unit in links.items():
        if unit in found or not qf_files.exists(unit):  # its unit is ours, or gone
            found[path] = "->" + qf_files.readlink(path)
    return found


def _wanted_template_files(mdl, template, plan_of):
    etc_qubes, systemd_dir = mdl.lookup.etc_qubes, mdl.lookup.systemd_dir
    wanted = {}
    for name in mdl.template_children(template):
        plan = plan_of(name)
        if not has_rules(plan):
            continue
        paths = _persist_paths(etc_qubes, systemd_dir, name)
        script = RC_HEADER + PERSIST_MARK % template + "\n" + qf_plan.persist_block(plan)
        if plan.provides_network:
            wanted[paths["hook"]] = script
        else:
            wanted[paths["script"]] = script
            wanted[paths["unit"]] = _persist_unit(template, name, paths["script"])
            wanted[paths["wants"]] = "->../" + os.path.basename(paths["unit"])
    return wanted


def template_files(mdl, template, plan_of):
    """
    ``{path: (old, new)}`` for the custom-persist files in the root of
    ``template`` that differ (``Run.template_files`` of ``_qubes_firewall_run``
    describes them): ``new`` None for removal, ``"->TARGET"``
    for the symlink that enables a unit.  Reads only.
    """
    wanted = _wanted_template_files(mdl, template, plan_of)
    have = owned_persist_files(mdl.lookup.etc_qubes, mdl.lookup.systemd_dir, template)
    out = {}
    for path in sorted(set(wanted) | set(have)):
        old = have.get(path)
        if old is None and path in wanted and not wanted[path].startswith("->"):
            old = qf_files.read(path)
        new = wanted.get(path)
        if old != new:
            out[path] = (old, new)
    return out


def write_template_files(files):
    """
    Carry out ``template_files`` (or clean) changes: scripts 0755, units
    0644, a symlink for ``"->TARGET"``, ``None`` removes.  Removals first.
    """
    for path, (_old, new) in sorted(files.items(), key=lambda item: (item[1][1] is not None, item[0])):
        qf_files.unlink_link(path)
        if new is None:
            qf_files.write_atomic(path, None)
        elif new.startswith("->"):
            qf_files.symlink(new[2:], path)
        else:
            qf_files.write_atomic(path, new, mode=0o644 if path.endswith(".service") else 0o755)
    for path in {os.path.dirname(p) for p, (_o, n) in files.items() if n is None}:
        if os.path.basename(path) == "qubes-firewall-formula":  # the formula's own directory
            qf_files.remove_empty_dir(path)
    return True


def clean_boot_files(rw_config):
    """``{path: (old, new)}`` removing every managed block of the boot files (a bare ``#!/bin/sh`` goes too)."""
    files = {}
    for filename in ("rc.local", "qubes-firewall-user-script"):
        path = "%s/%s" % (rw_config, filename)
        old = qf_files.read(path)
        names = qf_files.block_names(old)
        if not names:
            continue
        new = replace_blocks(path, old, {n: None for n in names})
        if new is not None and new.strip() in ("", RC_HEADER.strip()):
            new = None
        files[path] = (old, new)
    return files
