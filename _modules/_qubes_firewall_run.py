"""
One run of the formula on this minion: the shell between Salt and the core.

``Run(opts, pillar, context)`` takes what Salt's loader gives a module or a
state (``__opts__``, ``__pillar__``, ``__context__``) explicitly, so the
execution module ``qubes_firewall`` and the states share one implementation
and one context: the pillar is read here only (``__pillar__``: Salt 3008
masks values that ``pillar.get`` returns inside modules), validated by
``_qubes_firewall_model`` once, each qube planned by ``_qubes_firewall_plan``
once, and nft read once per run; the results are kept in the context, the
model and plans keyed by the pillar's content so that a changed pillar in a
long-lived process is parsed again.  I/O goes through ``_qubes_firewall_nft``,
``_qubes_firewall_files``, ``_qubes_firewall_qubes`` (dom0) and
``_qubes_firewall_connect_tcp``.
"""

import fcntl
import hashlib
import json
import marshal
import os
import time

import _qubes_firewall_backup as qf_backup
import _qubes_firewall_connect_tcp as qf_connect_tcp
import _qubes_firewall_dom0 as qf_dom0
import _qubes_firewall_files as qf_files
import _qubes_firewall_fleet as qf_fleet
import _qubes_firewall_model as qf_model
import _qubes_firewall_nft as qf_nft
import _qubes_firewall_persist as qf_persist
import _qubes_firewall_plan as qf_plan
import _qubes_firewall_qubes as qf_qubes
import _qubes_firewall_report as qf_report
import _qubes_firewall_view as qf_view
from salt.exceptions import CommandExecutionError

LOCK_FILE = "lock"
SCRATCH_DIR = "scratch"
CTX_PARSED = "qubes_firewall.parsed"
CTX_NFT = "qubes_firewall.nft"
CTX_LOCK = "qubes_firewall.lock"
_LOCKS = {}  # lock path -> open file: held until the process exits


FLEET_KEY = "qubes_firewall_fleet"  # the fleet's own pillar key: machine, files, dropped entries


def safe_dir(value, default):
    """``value`` when it is a plain absolute path (the pillar's grammar), else ``default``."""
    return qf_model.normal_path(value) or default


def pillar_key(raw):
    """
    The pillar's content as a short key: each state of a run asks for it, so it
    is ``marshal`` (C, about 10x faster than JSON on a 3,000-forward pillar),
    hashed; JSON for values marshal refuses (Salt's own dict types).  Two keys
    differ whenever the contents do; equal contents in another order only
    cost a second parse.
    """
    try:
        data = marshal.dumps(raw, 2)  # version 2: no back-references (they follow refcounts)
    except ValueError:
        try:
            data = json.dumps(raw, sort_keys=True, default=repr).encode()
        except (TypeError, ValueError):
            data = repr(raw).encode()
    return hashlib.sha256(data).hexdigest()


def _step_text(step):
    value = step["new"]
    if step["prop"] == "netvm" and value is None:
        value = "none"
    return "%s %s=%s" % (step["qube"], step["prop"], value)


class Run:
    """One run's opts, pillar and context (a dict shared by its modules and states)."""

    def __init__(self, opts, pillar, context):
        self.opts = opts
        self.pillar = pillar
        self.context = context
        self.qubes = qf_qubes.Qubes(opts, context)

    def raw_pillar(self):
        return self.pillar.get("qubes_firewall")

    def parsed(self):
        """The run's parse of the pillar: ``{"key", "model", "errors", "plans"}``, made once."""
        raw = self.raw_pillar()
        key = pillar_key(raw)
        ctx = self.context
        entry = ctx.get(CTX_PARSED)
        if entry is not None and entry["key"] == key:
            return entry
        entry = {"key": key, "model": None, "errors": [], "plans": {}}
        parse = qf_model.parse
        try:
            entry["model"] = parse(raw, pillar_keys=[str(k) for k in self.pillar])
        except ValueError as exc:
            entry["errors"] = list(getattr(exc, "errors", None) or [str(exc)])
        ctx[CTX_PARSED] = entry
        return entry

    def pillar_errors(self):
        """``qubes_firewall.pillar_errors``: every problem of the pillar, each naming its path."""
        return list(self.parsed()["errors"])

    def model(self):
        """
        The validated pillar model (raises CommandExecutionError naming every bad
        pillar path).  Parsed once per run.
        """
        entry = self.parsed()
        if entry["errors"]:
            raise CommandExecutionError("invalid pillar:\n  " + "\n  ".join(entry["errors"]))
        return entry["model"]

    def minion_id(self):
        """The minion id: under qubesctl the qube's name, ``dom0`` in dom0."""
        return self.opts["id"]

    def qube_plan(self, qube=None):
        """
        The plan (``_qubes_firewall_plan.QubePlan``) of ``qube`` (default: this
        minion), or None when the pillar does not name it.  For states; on the
        command line use ``show_plan``.
        """
        qube = qube or self.minion_id()
        mdl = self.model()
        if qube not in mdl.qubes:
            return None
        return self.plan(mdl, qube)

    def plan(self, mdl, qube):
        """The planner's plan of ``qube`` in the validated model ``mdl``, computed once per run."""
        plans = self.parsed()["plans"]
        if qube not in plans:
            try:
                plans[qube] = (qf_plan.plan_qube(mdl, qube), None)
            except ValueError as exc:
                plans[qube] = (None, str(exc))
        plan, error = plans[qube]
        if error is not None:
            raise CommandExecutionError(error)
        return plan

    def preflight(self, qube=None):
        """
        Every reason this minion's run must not write anything: the pillar's
        problems, then (in a qube) the planner's refusals for this qube and for
        the qubes whose boot replay it writes (the named disposables and the
        custom-persist qubes of this template).  Empty when the run may go on.
        """
        problems = self.pillar_errors()
        if problems:
            return problems
        qube = qube or self.minion_id()
        if qube == "dom0":
            return []
        mdl = self.model()
        names = [qube] if qube in mdl.qubes else []
        names += mdl.disposables_of(qube) + list(mdl.template_children(qube))
        for name in names:
            try:
                self.plan(mdl, name)
            except CommandExecutionError as exc:
                problems += [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
        return problems

    def raw_lookup(self, key, default):
        """``lookup:KEY`` from the model, or straight from the raw pillar when it is invalid."""
        entry = self.parsed()
        raw = self.raw_pillar()
        lookup = raw.get("lookup") if isinstance(raw, dict) else None
        if entry["model"] is not None and isinstance(lookup, dict) and key in lookup:
            return getattr(entry["model"].lookup, key, default)
        return safe_dir(lookup.get(key) if isinstance(lookup, dict) else None, default)

    def state_dir(self):
        """
        The formula's directory on this minion (``lookup:state_dir``, default
        the minion option ``qubes_firewall_state_dir``, else
        ``/var/lib/qubes-firewall-formula``): its lock and scratch files.  Taken
        from the raw pillar (when it is a plain absolute path) or the default
        while the pillar is invalid, so that even a broken pillar's run locks.
        """
        default = safe_dir(self.opts.get("qubes_firewall_state_dir"), qf_model.DEFAULT_STATE_DIR)
        return self.raw_lookup("state_dir", default)

    def lock(self, timeout=None):
        """
        Take this minion's lock, ``<state_dir>/lock`` (``fcntl.flock``), waiting
        up to ``timeout`` seconds (minion option ``qubes_firewall_lock_timeout``,
        default 600) for another run to finish.  Held until this process exits
        (a killed run releases it too).  Returns ``{"path", "waited"}``
        (seconds).
        """
        path = os.path.join(self.state_dir(), LOCK_FILE)
        if path in _LOCKS:
            return {"path": path, "waited": 0.0}
        if timeout is None:
            timeout = self.opts.get("qubes_firewall_lock_timeout", 600)
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
        self.context[CTX_LOCK] = path
        return {"path": path, "waited": round(time.monotonic() - start, 3)}

    def scratch_dir(self):
        """``<state_dir>/scratch``: the run's temporary files (what a killed run left there is stale)."""
        return os.path.join(self.state_dir(), SCRATCH_DIR)

    def stale_scratch(self):
        """Files and directories a killed run left in ``self.scratch_dir()``."""
        path = self.scratch_dir()
        return [os.path.join(path, name) for name in qf_files.listdir(path)]

    def remove_stale_scratch(self):
        """Remove ``self.stale_scratch()`` (call it only with the lock held)."""
        return [item for item in self.stale_scratch() if qf_files.remove(item)]

    def forget_run(self):
        """Drop what this run read from the system (the nft document): the next read is fresh."""
        self.context.pop(CTX_NFT, None)

    def nft_document(self):
        """The live ruleset (``nft -j list ruleset``), read once per run; a load forgets it."""
        ctx = self.context
        if CTX_NFT not in ctx:
            ctx[CTX_NFT] = qf_nft.read()
        return ctx[CTX_NFT]

    def live_state(self):
        """``_qubes_firewall_nft.live_state`` of the run's one nft read."""
        return qf_nft.live_state(self.nft_document())

    def load(self, script):
        """Load one nft transaction (atomic: all or nothing) and forget the run's read."""
        try:
            return qf_nft.load(script)
        finally:
            self.forget_run()

    def owned_transaction(self, plan, live):
        """
        ``(script, summary)`` making the owned part of the live ruleset match
        ``plan``; a qube the pillar does not name (``plan`` None) or names with
        nothing to do (no rules) gets everything the formula owns removed.
        ``("", {})`` when nothing differs.
        """
        if not qf_persist.has_rules(plan):
            return self.remove_owned(live)
        return qf_nft.transaction(plan, live)

    def persisted_files(self, qube=None):
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
        qube = qube or self.minion_id()
        mdl = self.model()
        return qf_persist.boot_files(mdl, qube, lambda name: self.plan(mdl, name))

    def template_files(self, qube=None):
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
        qube = qube or self.minion_id()
        mdl = self.model()
        return qf_persist.template_files(mdl, qube, lambda name: self.plan(mdl, name))

    def write_template_files(self, files):
        """
        Carry out ``template_files`` (or clean) changes: scripts 0755, units
        0644, a symlink for ``"->TARGET"``, ``None`` removes.  Removals first.
        """
        return qf_persist.write_template_files(files)

    def clean_paths(self):
        """rw_config, etc_qubes, systemd_dir: from the pillar when it says so, else the defaults."""
        return (self.raw_lookup("rw_config", qf_model.DEFAULT_RW_CONFIG), self.raw_lookup("etc_qubes", qf_model.DEFAULT_ETC_QUBES),
                self.raw_lookup("systemd_dir", qf_model.DEFAULT_SYSTEMD_DIR))

    def clean_plan(self):
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
        rw_config, etc_qubes, systemd_dir = self.clean_paths()
        files = qf_persist.clean_boot_files(rw_config)
        for name in qf_connect_tcp.owned_unit_files(rw_config):
            path = os.path.join(rw_config, name)
            files[path] = (qf_files.read(path), None)
        for path, text in qf_persist.owned_persist_files(etc_qubes, systemd_dir, self.minion_id()).items():
            files[path] = (text, None)
        files.update(record_clean_files(self))
        script, summary = self.remove_owned(self.live_state())
        return {"nft": (script, summary), "files": files, "runtime": qf_connect_tcp.clean_runtime_plan(self.systemd_run_dir())}

    def inventory(self):
        """
        Every qube Qubes knows, read in one call (see
        ``_qubes_firewall_qubes.inventory``).
        """
        return self.qubes.inventory()

    def addresses(self, names=None, family=4):
        """``qubes_firewall.addresses``: ``{qube: ip}`` (``family=6``: ip6) from Qubes for ``names``
        (default: the pillar's qubes)."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if names is None:
            raw = self.raw_pillar()
            qubes = raw.get("qubes") if isinstance(raw, dict) else None
            if isinstance(qubes, dict) and qubes:
                names = [str(n) for n in qubes]
        try:
            return qf_dom0.addresses(self.inventory(), names, family)
        except ValueError as exc:
            raise CommandExecutionError("qubes_firewall.addresses: %s" % exc) from None

    def qubes_release(self):
        """``qubes_firewall.qubes_release``: this dom0's release, from Qubes."""
        return self.qubes.qubes_release()

    def given_release(self):
        raw = self.raw_pillar()
        lookup = raw.get("lookup") if isinstance(raw, dict) else None
        return lookup.get("qubes_release") if isinstance(lookup, dict) else None

    def rule_problems(self, model_):
        out = []
        for name, qube in sorted(model_.qubes.items()):
            for index, rule in enumerate(qube.firewall or ()):
                problem = qf_qubes.rule_problem(qf_dom0.rule_fields(rule))
                if problem:
                    out.append("qubes_firewall:qubes:%s:firewall:%d: %s; correct the rule"
                               % (name, index, problem))
        return out

    def dom0_problems(self):
        """``qubes_firewall.dom0_problems``: every reason the pillar cannot be applied to this Qubes."""
        model_ = self.model()
        inv = self.inventory()
        given = self.given_release()
        out = []
        if given is not None and self.qubes.release_known():
            try:
                out += qf_dom0.release_problems(given, self.qubes_release())
            except CommandExecutionError as exc:
                out.append("qubes_firewall:lookup:qubes_release: %s, but %s" % (given, exc))
        feats = {}
        lists = {}
        if all(name in inv for name in model_.qubes):
            feats = {name: self.qubes.features(name) for name in qf_dom0.needed_features(model_, inv)}
            lists = {name: self.qubes.get_firewall(name) for name in qf_dom0.needed_firewalls(model_)}
        out += qf_dom0.problems(model_, inv, feats, lists)
        if not all(name in inv for name in model_.qubes):
            return out
        out += self.rule_problems(model_)
        planned = qf_dom0.planning_model(model_, inv)
        for problem in qf_plan.check_model(planned):
            if problem not in out:
                out.append(problem)
        return out

    def dom0_prefs_plan(self):
        """
        The ordered ``netvm`` / ``provides_network`` changes that make Qubes match
        the pillar: ``[{qube, prop, old, new}, ...]``; empty when it matches
        (values reached through Qubes' defaults count). Reads only.
        """
        try:
            return qf_dom0.prefs_steps(self.model(), self.inventory())
        except ValueError as exc:
            raise CommandExecutionError(str(exc)) from exc

    def dom0_apply_prefs(self, steps):
        """
        Apply ``dom0_prefs_plan`` steps in order. Returns the steps done; on a
        refusal raises CommandExecutionError naming the steps done before it.
        """
        done = []
        for step in steps:
            try:
                self.qubes.set_pref(step["qube"], step["prop"], step["new"])
            except CommandExecutionError as exc:
                raise CommandExecutionError(
                    "%s (done before: %s)" % (exc, ", ".join(_step_text(s) for s in done) or "nothing"),
                    info={"done": done},
                ) from exc
            done.append(step)
        return done

    def dom0_firewall_plan(self):
        """
        ``{qube: {"old": [...], "new": [...]}}``: the qvm-firewall lists (canonical
        rule lines) to replace, for the qubes whose pillar list differs. Reads only.
        """
        model_ = self.model()
        inv = self.inventory()
        managed = [n for n, q in sorted(model_.qubes.items()) if q.firewall is not None and n in inv]
        live = {name: self.qubes.get_firewall(name) for name in managed}
        return qf_dom0.firewall_changes(model_, live)

    def dom0_apply_firewall(self, plan):
        """
        Replace each planned qube's whole qvm-firewall list (``plan[qube]["rules"]``:
        rule elements, checked before the first write). Returns the qubes done.
        """
        done = []
        for name in sorted(plan):
            self.qubes.set_firewall(name, plan[name]["rules"])
            done.append(name)
        return done

    def reconnect(self, netvm, test=False):
        """``qubes_firewall.reconnect``: re-attach the running clients of ``netvm``."""
        return self.qubes.reconnect(netvm, test=test)

    def backup_args(self):
        return {
            "directory": self.opts.get("qubes_firewall_backup_dir") or os.path.join(self.state_dir(), "backups"),
            "owner": self.minion_id(),
        }

    def backup(self, document=None):
        """``qubes_firewall.backup``: save ``document`` (default: a fresh read) and keep the newest N."""
        return qf_backup.backup(keep=self.opts.get("qubes_firewall_backup_keep"),
                                     document=document, **self.backup_args())

    def backups(self):
        """``qubes_firewall.backups``: this minion's saved rulesets, newest first."""
        return qf_backup.backups(**self.backup_args())

    def revert(self, name=None):
        """``qubes_firewall.revert``: replace the live ruleset with a saved one in one checked transaction."""
        return qf_backup.revert(name=name, **self.backup_args())

    def remove_owned(self, live):
        """The transaction that removes everything the formula owns in this qube's ruleset."""
        return qf_nft.transaction(None, live)

    # ---- connect_tcp ----

    def systemd_run_dir(self):
        # The minion option exists for tests, so that they never touch the host's systemd.
        return self.opts.get("qubes_firewall_systemd_run_dir", qf_connect_tcp.SYSTEMD_RUN_DIR)

    def policy_plan(self):
        return qf_connect_tcp.policy_plan(self.model())

    def policy_absent_plan(self):
        raw = self.raw_pillar()
        errors = self.pillar_errors() if isinstance(raw, dict) else []
        mdl = self.model() if isinstance(raw, dict) and not errors else None
        return qf_connect_tcp.policy_absent_plan(raw, errors, mdl)

    def binding_plan(self, qube=None):
        return qf_connect_tcp.binding_plan(self.model(), qube or self.minion_id())

    def verify_units(self, unit_texts):
        return qf_connect_tcp.verify_units(unit_texts, self.scratch_dir())

    def runtime_plan(self, unit_texts, qube=None):
        return qf_connect_tcp.runtime_plan(unit_texts, qube or self.minion_id(), self.systemd_run_dir())

    def runtime_actions(self, plan):
        return qf_connect_tcp.runtime_actions(plan, self.systemd_run_dir())

    def runtime_apply(self, plan, unit_texts):
        return qf_connect_tcp.runtime_apply(plan, unit_texts, self.systemd_run_dir())

    def connect_tcp_commands(self, qube=None):
        return [
            {"origin": origin, "client": client, "command": command}
            for origin, client, command in qf_connect_tcp.commands(self.model().connect_tcp, qube)
        ]

    # ---- operations ----

    def live_fresh(self):
        # a command of its own (not a state run): read afresh, a long-lived minion may keep the context
        self.forget_run()
        return self.live_state()

    def drift(self):
        """The data of ``qubes_firewall.drift``; sets the run's retcode to 1 when anything drifted."""
        qube = self.minion_id()
        plan = self.qube_plan()
        live = self.live_fresh()
        files = self.persisted_files()

        def block_of(text):
            return qf_files.get_block(text, "rules")

        if qf_persist.has_rules(plan):
            out = qf_report.drift(plan, live, files, block_of)
            if out["live"]:
                try:
                    out["fix"] = self.owned_transaction(plan, live)[0]
                except CommandExecutionError as exc:
                    out["fix"] = str(exc)
        else:
            out = self._leftovers(qube, plan, live, files, block_of)
        bindings = self.binding_plan()
        out["connect_tcp"] = sorted(bindings["files"])
        out["template"] = sorted(self.template_files())
        out["drifted"] = bool(out["live"] or out["persisted"] or out["connect_tcp"] or out["template"])
        if out["drifted"]:
            self.context["retcode"] = 1
        return out

    def _leftovers(self, qube, plan, live, files, block_of):
        script, summary = self.owned_transaction(plan, live)
        out = {"qube": qube, "live": [], "persisted": qf_report.persisted_drift(files, block_of)}
        if plan is None:
            out["comment"] = "%s is not named in the qubes_firewall:qubes pillar" % qube
        for kind, items in sorted(summary.items()):
            if kind == "counts":
                continue
            for item in items:
                out["live"].append({"kind": "leftover " + kind.replace("_", " "), "detail": item})
        if script:
            out["fix"] = script
        return out

    # ---- fleet (docs/fleet.md) ----

    def fleet_pillar(self, shared_file, machine_file, ask_qubes=True, minion=None):
        """
        ``qubes_firewall.fleet_pillar``: never raises; an error becomes
        ``qubes_firewall:error``.  ``machine_file`` None: one machine, whose
        whole topology is ``shared_file``.  ``minion``: only what that minion
        needs (``_qubes_firewall_view``); a qube gets no fleet information.
        """
        info = {"machine": None, "machine_file": machine_file, "shared_file": shared_file}
        try:
            pillar, info = self.read_topology(shared_file, machine_file)
            where = info.pop("where")
            qubes = pillar.get("qubes")
            if ask_qubes and isinstance(qubes, dict):
                self._fleet_ask_qubes(pillar, qubes, where)
        except qf_fleet.FleetError as exc:
            info.pop("where", None)
            info["error"] = str(exc)
            pillar = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 (a pillar must render, whatever happened here)
            info["error"] = "fleet_pillar failed: %s: %s" % (type(exc).__name__, exc)
            pillar = {"error": info["error"]}
        if minion is None or minion == qf_view.DOM0:
            return {qf_fleet.ROOT: pillar, FLEET_KEY: info}
        return {qf_fleet.ROOT: qf_view.view(pillar, None, minion)}

    def _fleet_ask_qubes(self, pillar, qubes, where):
        try:
            if "addresses" not in pillar:
                pillar["addresses"] = self.addresses(sorted(str(q) for q in qubes))
            if "addresses6" not in pillar:  # only where Qubes' ipv6 feature is in effect; none: IPv4-only
                pillar.update(self.addresses6_key(sorted(str(q) for q in qubes)))
            lookup = pillar.get("lookup")
            if lookup is None or isinstance(lookup, dict):
                lookup = dict(lookup or {})
                lookup.setdefault("qubes_release", self.qubes_release())
                pillar["lookup"] = lookup
        except CommandExecutionError as exc:
            raise qf_fleet.FleetError("%s: cannot ask Qubes for the addresses: %s" % (where, exc)) from None

    def addresses6_key(self, names):
        """``{"addresses6": {qube: ip6}}`` from Qubes for ``names``, or ``{}`` when none has IPv6."""
        found = self.addresses(names, 6)
        return {"addresses6": found} if found else {}

    def targets(self, shared_file=None, machine_file=None):
        """
        ``qubes_firewall.targets``: the qubesctl --targets list of this pillar,
        comma-separated.  With files (a pillar top): the ids that need the
        pillar those files make, dom0 first; never raises: just dom0 when they
        make none (dom0's pillar then says why).
        """
        if shared_file:
            try:
                pillar, _info = self.read_topology(shared_file, machine_file)
                return ",".join(qf_view.needs_pillar(pillar))
            except Exception:  # noqa: BLE001 (a top file must render, whatever happened here)
                return qf_view.DOM0
        self.model()  # raises, naming every problem of the pillar
        return ",".join(qf_fleet.targets(self.raw_pillar()))

    # ---- the pillar view: each id's part of the pillar (docs/addresses.md) ----

    def pillar_file(self, name):
        """``name`` when absolute, else the file of that name in the pillar roots (the first that has it)."""
        name = str(name)
        if os.path.isabs(name):
            return name
        roots = [d for dirs in (self.opts.get("pillar_roots") or {}).values() for d in dirs or ()]
        for root in roots:
            if os.path.exists(os.path.join(root, name)):
                return os.path.join(root, name)
        raise qf_fleet.FleetError("%s: no such file in the pillar roots (%s)" % (name, ", ".join(roots)))

    def read_topology(self, shared_file, machine_file=None):
        """
        ``(qubes_firewall pillar, info)`` from the files: the fleet's shared
        and machine files merged, or one machine's topology file alone (plain
        YAML holding ``qubes_firewall:``).  Raises FleetError naming the file.
        """
        path = self.pillar_file(shared_file)
        if machine_file:
            machine = str(machine_file)
            machine = machine if os.path.isabs(machine) else os.path.join(os.path.dirname(path), machine)
            return qf_fleet.read_machine(path, machine)
        try:
            with open(path, encoding="utf-8") as handle:
                data = qf_fleet.load_yaml(handle.read(), "the topology %s" % path)
        except OSError as exc:
            raise qf_fleet.FleetError("cannot read the topology %s: %s" % (path, exc.strerror)) from None
        if not isinstance(data, dict) or not isinstance(data.get(qf_fleet.ROOT), dict):
            raise qf_fleet.FleetError("the topology %s must hold a %s: mapping" % (path, qf_fleet.ROOT))
        return data[qf_fleet.ROOT], {"machine": None, "machine_file": None, "shared_file": path, "where": path}

    def fleet_row(self, host):
        """``qubes_firewall.fleet_status``'s row for this machine (reads only)."""
        info = self.pillar.get(FLEET_KEY)
        machine = info.get("machine") if isinstance(info, dict) else None
        machine = machine or host or self.minion_id()
        errors = self.pillar_errors()
        names, problems, prefs, firewall, policy = [], [], [], [], False
        if not errors:
            names = qf_fleet.targets(self.raw_pillar())
            try:
                problems = self.dom0_problems()
                if not problems:
                    prefs = self.dom0_prefs_plan()
                    firewall = sorted(self.dom0_firewall_plan())
                    plan = self.policy_plan()
                    policy = plan["old"] != plan["new"]
            except CommandExecutionError as exc:
                problems = [" ".join(str(exc).split())]
        return qf_fleet.status_row(machine, names, errors, problems, prefs, firewall, policy)


# ---- pillar-less functions: the record of the last apply (salt-ssh) ----
#
# Under salt-ssh (qubesctl --skip-dom0 --targets=...), state.apply gets the
# compiled pillar but a plain execution function runs on the target with none.
# So each real apply in a qube, once the live ruleset took its rules, records
# the pillar its run used in <lookup:rw_config>/qubes-firewall-formula/
# applied-QUBE.json (JSON, 0600, atomic): under /rw, which a qube keeps across
# restarts.  The run on a disposable template records the same for each of its
# named disposables (their /rw is a copy of its /rw at each start).  A function
# run without a pillar (FunctionRun) answers from the record at the default
# location (/rw/config, or the minion option qubes_firewall_rw_config): found
# without the pillar, it names the lookup (state_dir...) of the run.  Records
# of 0.2.0 (<state_dir>/applied.json, lost at a restart) are still read, and
# removed by the next apply; clean removes every record.

RECORD_DIR = "qubes-firewall-formula"  # in lookup:rw_config, like the formula's files of a template's /etc/qubes
RECORD_PATTERN = "applied-%s.json"
RECORD_FILE = "applied.json"  # 0.2.0's record, in <state_dir>
RECORD_FORMAT = 1


def record_text(qube, raw, when=None):
    """The record's JSON text: ``{"format", "qube", "applied_at", "pillar"}`` (``pillar``: the raw ``qubes_firewall``)."""
    when = when or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"format": RECORD_FORMAT, "qube": qube, "applied_at": when, "pillar": raw},
                      sort_keys=True, indent=1, default=str) + "\n"


def parse_record(text, path):
    """The record in ``text`` (None when there is none); a damaged one raises, naming ``path``."""
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CommandExecutionError("%s is damaged (%s): run state.apply qubes_firewall again" % (path, exc)) from None
    if not (isinstance(data, dict) and data.get("format") == RECORD_FORMAT and isinstance(data.get("pillar"), dict)):
        raise CommandExecutionError("%s is not a record of this formula version: run state.apply qubes_firewall again"
                                    % path)
    return data


def default_rw_config(opts):
    """Where a qube's /rw/config is without a pillar: the minion option ``qubes_firewall_rw_config``, else /rw/config."""
    return safe_dir(opts.get("qubes_firewall_rw_config"), qf_model.DEFAULT_RW_CONFIG)


def record_path(rw_config, qube):
    """``<rw_config>/qubes-firewall-formula/applied-QUBE.json``; None for a name that is not a plain file name."""
    name = RECORD_PATTERN % qube
    if not isinstance(qube, str) or not qf_model.QUBE_NAME_ANY.match(qube) or os.path.basename(name) != name:
        return None
    return os.path.join(rw_config, RECORD_DIR, name)


def _record_names(directory):
    """``{qube: path}`` of the records in ``directory``."""
    prefix, suffix = RECORD_PATTERN.split("%s")
    out = {}
    for entry in qf_files.listdir(directory, file_ok=True):
        if entry.startswith(prefix) and entry.endswith(suffix) and len(entry) > len(prefix) + len(suffix):
            out[entry[len(prefix):-len(suffix)]] = os.path.join(directory, entry)
    return out


def _record_rw_config(run):
    return run.raw_lookup("rw_config", default_rw_config(run.opts))


def _recorded_for(run, summary):
    """
    The qubes this run records: itself when the pillar names it, and the
    named disposables of the template it runs on (when nothing failed).  A
    minion the pillar names in no way (no qube, no template of one) records
    nothing: its run does nothing.
    """
    try:
        model = run.model()
    except CommandExecutionError:
        return []
    qube = run.minion_id()
    disposables = list(model.disposables_of(qube))
    duties = qube in model.qubes or disposables or list(model.template_children(qube))
    names = [qube] if duties else []
    if not summary.get("failed"):
        names += disposables
    return names


def _stale_record(run, name, recorded):
    """A record of another qube in this /rw: kept while ``name`` is a disposable (its template's run wrote it)."""
    if name in recorded:
        return False
    try:
        qube = run.model().qubes.get(name)
    except CommandExecutionError:
        return False
    return qube is None or qube.dispvm_template is None


def _write_record(path, qube, raw):
    """Write the record unless it already holds this pillar (a run that changes nothing writes nothing)."""
    text = record_text(qube, raw)
    try:
        old = parse_record(qf_files.read(path), path)
    except CommandExecutionError:
        old = None  # damaged or unreadable: written anew
    if old is not None and old.get("qube") == qube and old["pillar"] == json.loads(text)["pillar"]:
        qf_files.remove_stale_temps([path])  # what a run killed while writing it left
        return
    qf_files.write_atomic(path, text, mode=0o600)


def record_applied(run, summary, test):
    """
    After a real (not test) run in a qube whose live ruleset took the planned
    rules (``summary``: the run's note for this qube, its ``nft`` set and not
    failed), record the pillar the run used, for this qube and (on a
    disposable template) for each of its named disposables; remove the
    records no longer needed.  Returns "" or one line saying why the record
    could not be written (the run itself succeeded).
    """
    qube = run.minion_id()
    summary = summary or {}
    if test or qube == "dom0" or summary.get("nft") is None or "nft" in (summary.get("failed") or ()):
        return ""
    rw_config = _record_rw_config(run)
    raw = run.raw_pillar()
    recorded = [name for name in _recorded_for(run, summary) if record_path(rw_config, name)]
    directory = os.path.join(rw_config, RECORD_DIR)
    try:
        for name in recorded:
            _write_record(record_path(rw_config, name), name, raw)
        for name, path in sorted(_record_names(directory).items()):
            if _stale_record(run, name, recorded):
                qf_files.write_atomic(path, None)
        legacy = os.path.join(run.state_dir(), RECORD_FILE)  # 0.2.0's, in the root fs
        if qf_files.exists(legacy):
            qf_files.write_atomic(legacy, None)
    except (CommandExecutionError, OSError) as exc:
        return "\n%s: cannot record this run in %s (%s): functions without a pillar will not see it" % (
            qube, directory, exc)
    return ""


def record_clean_files(run):
    """``{path: (what, None)}``: every record, for ``clean_plan`` to remove (``what``: one line for the diff)."""
    what = "the record of the last apply, read by functions run without a pillar\n"
    paths = list(_record_names(os.path.join(_record_rw_config(run), RECORD_DIR)).values())
    paths.append(os.path.join(run.state_dir(), RECORD_FILE))
    return {path: (what, None) for path in paths if qf_files.exists(path)}


class FunctionRun(Run):
    """
    The run of an execution function: the pillar when Salt gives one, else
    (salt-ssh) what the last apply in this qube recorded; without either, one
    line saying what to run.
    """

    def __init__(self, opts, pillar, context):
        super().__init__(opts, pillar, context)
        self.recorded = None
        self.no_pillar = qf_model.ROOT not in (pillar or {})
        # without a pillar the record is at its default place (it names the run's lookup: state_dir...)
        self.record_file = record_path(default_rw_config(opts), self.minion_id()) or ""
        if self.no_pillar:
            legacy = os.path.join(safe_dir(opts.get("qubes_firewall_state_dir"), qf_model.DEFAULT_STATE_DIR),
                                  RECORD_FILE)
            for path in (self.record_file, legacy):
                text = qf_files.read(path) if path else None
                if text is not None:
                    self.record_file, self.recorded = path, parse_record(text, path)
                    break
            if self.recorded is not None:
                self.pillar = dict(pillar or {}, **{qf_model.ROOT: self.recorded["pillar"]})

    def missing(self):
        """The one line a function without a pillar and without a record answers."""
        qube = self.minion_id()
        return ("no qubes_firewall pillar here (salt-ssh gives execution functions none) and no record of an applied"
                " run in %s: run `sudo qubesctl --skip-dom0 --targets=%s state.apply qubes_firewall` first"
                % (self.record_file, qube))

    def parsed(self):
        if self.no_pillar and self.recorded is None:
            return {"key": None, "model": None, "errors": [self.missing()], "plans": {}}
        return super().parsed()

    def model(self):
        if self.no_pillar and self.recorded is None:
            raise CommandExecutionError(self.missing())
        return super().model()

    def source(self):
        """Where this answer's pillar came from, when not from Salt: the note functions add."""
        if self.recorded is None:
            return None
        return "as applied at %s; pillar not available under salt-ssh (record: %s)" % (
            self.recorded.get("applied_at"), self.record_file)

    def annotated(self, out, comment=None):
        """``out`` with ``source()``: a ``pillar_source`` key first in a dict, a first line of text (``comment``: its prefix)."""
        note = self.source()
        if note is None:
            return out
        if isinstance(out, dict):
            return dict([("pillar_source", note)] + list(out.items()))
        if isinstance(out, str):
            return "%s%s\n%s" % (comment or "", note, out)
        return out

    def drift(self):
        out = super().drift()
        if self.recorded is not None:
            out["comment"] = (out.get("comment", "") + " " if out.get("comment") else "") + (
                "compared with the recorded run; what differs between today's pillar and that record, "
                "state.apply qubes_firewall test=True shows")
        return out
