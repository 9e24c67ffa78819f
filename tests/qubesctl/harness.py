"""
The path users run on Qubes, ``sudo qubesctl ...``, emulated over the lab.

qubes-mgmt-salt (``qubesctl``, ``qubessalt/__init__.py``, ``qubes.SaltLinuxVM``,
``ssh-wrapper``; release4.2 and release4.3 behave the same here) does, and so
does this harness, one function per step:

1. dom0 (unless ``--skip-dom0``): ``qubesctl --dom0-only CMD``, a
   ``salt-call --local`` with minion id ``dom0``         -> ``dom0_salt_call``
   If it fails: "DOM0 configuration failed, not continuing", exit 1.
2. per target, up to 4 at once, templates first:
   a. render the target's pillar in dom0:
      ``qubesctl --dom0-only --id=VM --output=yaml pillar.items``
                                                          -> ``render_pillar``
   b. copy ``/srv`` without its pillar roots, dom0's extension-module cache as
      ``_extmods``, a ``master`` holding dom0's ``file_roots``, and the pillar
      as ``pillar/combined.sls`` with ``top.sls`` = ``{base: {VM: [combined]}}``
                                                          -> ``srv_for_target``
   c. in the management disposable (qubes.SaltLinuxVM): ``/etc/salt/master``,
      a roster naming VM, the ssh-wrapper first in PATH, then
      ``salt-ssh -w VM CMD``                               -> ``salt_ssh``
      (ssh/scp: tests/qubesctl/ssh_wrapper.py, bash on stdin into the lab
      qube's namespace; the target runs Salt's thin with its /usr/bin/python3)
   d. the verdict: ``VM: OK``, ``VM: ERROR (exit code N, details in LOG)``, or
      with ``--show-output`` the output lines; exit 0 with no output for a
      ``state.*`` command is "ERROR (exit code 0, but no changes summary)";
      every line goes to ``LOG`` = <tmp>/var/log/qubes/mgmt-VM.log
                                                          -> ``verdict``

What stands in for Qubes, and why:
- dom0's Qubes: the fake Qubes of tests/dom0 (qvm-* tools on PATH, the
  ``qubesadmin`` double on PYTHONPATH), its world built from the lab's
  topology (``fake_world``): every lab qube running, with its address.
- ``/srv``: laid out from the package payload (the ``install`` lines of
  packaging/qubes-firewall-formula.spec), plus the user pillar of
  docs/addresses.md: the topology (``/srv/user_pillar/qubes_firewall.sls``,
  without addresses), the formula's ``qubes_firewall_pillar.sls`` and
  ``qubes_firewall.top`` exactly as the doc shows them (what ``top.enable
  qubes_firewall pillar=True`` enables).
- One more pillar file, ``qubes_firewall_lab.sls``, gives each qube the lab's
  stand-ins for its real paths (``lookup:rw_config``, ``etc_qubes``,
  ``systemd_dir``, ``state_dir``; dom0's ``policy_file``, ``rw_config``),
  because every lab qube shares this machine's filesystem.  For the same
  reason the roster gives each target its own ``thin_dir`` and minion
  options (backup and state directories, its /rw/config, no systemd).  The
  roster's state directory stands for the default one
  (/var/lib/qubes-firewall-formula) and the lab pillar's ``state_dir`` names
  another: every target runs with a ``lookup:state_dir`` of its own.
- Templates: the qubesctl targets a topology names that are no lab qube (the
  templates of custom-persist qubes, the disposable templates of named
  disposables; ``template_targets``) run no network, so each gets a network
  namespace of its own with Qubes' base tables only (``template_ns``), where
  salt-ssh's bash runs as root, and a root filesystem of its own: the lab's
  ``template_dir`` (its /etc/qubes and /etc/systemd/system, the root the lab
  qubes of that template boot from) and a /rw/config (a disposable
  template's: what its named disposables start with, ``start_disposable``).
- The Salt of dom0 and of the management qube: the venv of the release's
  Salt (4.3: 3007, 4.2: 3006), from $QF_SALT_PYTHON_3007 / $QF_SALT_PYTHON_3006
  or ``scripts/bootstrap.sh VERSION``.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import glob
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
DOM0_TESTS = REPO / "tests" / "dom0"
if str(DOM0_TESTS) not in sys.path:
    sys.path.insert(0, str(DOM0_TESTS))

import fake_qubesadmin  # noqa: E402
import fakequbes  # noqa: E402

from tests.lab import netns, qubes_base  # noqa: E402

SALT_OF_RELEASE = {"4.3": "3007", "4.2": "3006"}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_CONCURRENCY = 4
_bootstrap_lock = threading.Lock()


# ----------------------------------------------------------------- the Salt to run


def salt_python(release: str) -> str:
    """The python of the Salt venv the release's dom0 and management qube run."""
    version = SALT_OF_RELEASE[release]
    given = os.environ.get("QF_SALT_PYTHON_" + version, "").strip()
    if given:
        return given
    with _bootstrap_lock:
        proc = subprocess.run([str(REPO / "scripts" / "bootstrap.sh"), version], capture_output=True,
                              text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("scripts/bootstrap.sh %s failed:\n%s" % (version, proc.stderr))
    return proc.stdout.strip().splitlines()[-1]


def salt_script(python: str, name: str) -> str:
    return str(pathlib.Path(python).parent / name)


_thin_lock = threading.Lock()


def shared_thin(python: str, cache: pathlib.Path) -> pathlib.Path:
    """<cache>/thin: Salt's thin as ``salt.utils.thin.gen_thin`` builds it into a
    master's cachedir (thin.tgz, version, code-checksum), built once."""
    with _thin_lock:
        thin = cache / "thin"
        if not (thin / "thin.tgz").exists():
            subprocess.run([python, "-c", "import sys, salt.utils.thin; salt.utils.thin.gen_thin(sys.argv[1])",
                            str(cache)], check=True, capture_output=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        return thin


# ----------------------------------------------------------------- /srv and the pillar


def package_payload() -> List[tuple]:
    """(source glob, directory under /srv/salt) of each ``install -m MODE SRC
    %{buildroot}%{salt_root}/DIR/`` line of the spec's %install."""
    spec = (REPO / "packaging" / "qubes-firewall-formula.spec").read_text()
    found = re.findall(r"^install -m \d+ (\S+) %\{buildroot\}%\{salt_root\}/(\S+?)/?$", spec, re.M)
    if not found:
        raise AssertionError("packaging/qubes-firewall-formula.spec installs nothing under %{salt_root}")
    return found


def layout_srv(srv: pathlib.Path) -> pathlib.Path:
    """``/srv/salt`` as the package installs it (every file its globs match)."""
    for pattern, subdir in package_payload():
        target = srv / "salt" / subdir
        target.mkdir(parents=True, exist_ok=True)
        files = sorted(glob.glob(str(REPO / pattern)))
        if not files:
            raise AssertionError("the spec installs %s, which matches nothing" % pattern)
        for path in files:
            shutil.copy2(path, target / os.path.basename(path))
    return srv


def template_targets(topology: dict) -> List[str]:
    """The qubesctl targets of a topology that are templates, not qubes: the template of
    each custom-persist qube, the disposable template of each named disposable."""
    out = []
    for _name, spec in sorted((topology.get("qubes") or {}).items()):
        spec = spec or {}
        for name in ((spec.get("template"),) if spec.get("custom_persist") is True else ()) + (
                spec.get("dispvm_template"),):
            if name and name not in out:
                out.append(name)
    return out


INSTALL = REPO / "pillar.example" / "install"
INSTALL_FILES = ("qubes_firewall.top", "qubes_firewall_pillar.sls")


def install_files() -> Dict[str, str]:
    """The formula's pillar top and pillar file, exactly as docs/addresses.md shows them."""
    text = (REPO / "docs" / "addresses.md").read_text()
    blocks = re.findall(r"```jinja\n(.*?)```", text, re.S)
    files = {name: (INSTALL / name).read_text() for name in INSTALL_FILES}
    if blocks != [files[name] for name in INSTALL_FILES]:
        raise AssertionError("docs/addresses.md should show pillar.example/install's two files, unchanged")
    return files


LAB_SLS = """\
{#- the lab's stand-ins for each qube's real paths (tests/qubesctl/harness.py) -#}
{%- set paths = {{PATHS}} %}
{%- if opts.id in paths %}
qubes_firewall:
  lookup: {{ paths[opts.id] | yaml }}
{%- endif %}
"""


def write_user_pillar(srv: pathlib.Path, topology: dict, lab_paths: Dict[str, dict]) -> None:
    """/srv/user_pillar as docs/addresses.md has the user write it, plus the lab's paths."""
    user = srv / "user_pillar"
    user.mkdir(parents=True, exist_ok=True)
    (user / "qubes_firewall.sls").write_text(yaml.safe_dump({"qubes_firewall": topology}, sort_keys=False))
    files = install_files()
    (user / "qubes_firewall_pillar.sls").write_text(files["qubes_firewall_pillar.sls"])
    (user / "qubes_firewall_lab.sls").write_text(LAB_SLS.replace("{{PATHS}}", json.dumps(lab_paths, sort_keys=True)))
    # the formula's top (dom0 and the targets), and the lab's paths for the same ids
    top = files["qubes_firewall.top"]
    assert top.endswith("    - qubes_firewall_pillar\n"), top
    (user / "top.sls").write_text(top + "    - qubes_firewall_lab\n")
    (srv / "pillar").mkdir(exist_ok=True)


def fake_world(lab, topology: dict) -> dict:
    """dom0's Qubes before the formula: every lab qube exists and runs, not yet
    wired (no netvm, provides_network off: dom0's run wires them), with the qid
    that gives it its lab address once it has a netvm (Qubes' 10.137.0.<qid>);
    the templates the lab names, and the topology's other qubes, halted."""
    qubes = {}
    for name in lab.order:
        spec = lab.spec(name)
        template = spec.template or "debian-12-xfce"
        qubes.setdefault(template, fakequbes._qube("TemplateVM", None, state="Halted", template=None))
        prefix, _, last = lab.ip(name).rpartition(".")
        if prefix != "10.137.0":
            raise ValueError("the fake Qubes gives %s 10.137.0.<qid>, not %s" % (name, lab.ip(name)))
        own = (topology.get("qubes") or {}).get(name) or {}
        dvm = own.get("dispvm_template")
        if dvm:  # a named disposable: its class and template as Qubes has them (its lab address kept)
            qubes.setdefault(dvm, fakequbes._qube("AppVM", None, state="Halted", template=template))
        features = {"service.custom-persist": "1"} if own.get("custom_persist") is True else {}
        qubes[name] = fakequbes._qube("DispVM" if dvm else "AppVM", int(last), template=dvm or template,
                                      props=dict({"netvm": None}, **({"ip": lab.ip(name)} if dvm else {})),
                                      features=features, kernel="6.6.48-1.fc37")
    for name in topology.get("qubes") or {}:
        qubes.setdefault(name, fakequbes._qube("AppVM", None, state="Halted"))
    free = iter(n for n in range(2, 10000) if n not in {q["qid"] for q in qubes.values()})
    for name in sorted(qubes):
        if qubes[name]["qid"] is None:
            qubes[name]["qid"] = next(free)
    return {"global": {"default_netvm": None}, "events": [], "qubes": qubes}


# ----------------------------------------------------------------- results


@dataclasses.dataclass
class Run:
    """One ``sudo qubesctl ...``: its exit code and what it printed."""

    returncode: int
    stdout: str
    dom0: Optional[subprocess.CompletedProcess] = None
    targets: Dict[str, "TargetRun"] = dataclasses.field(default_factory=dict)

    def line(self, vm: str) -> str:
        """The line qubesctl printed for vm (without --show-output)."""
        for line in self.stdout.splitlines():
            if line.startswith(vm + ": "):
                return line
        raise AssertionError("qubesctl printed no line for %s:\n%s" % (vm, self.stdout))


@dataclasses.dataclass
class TargetRun:
    vm: str
    exit_code: int
    result: object  # "OK", "ERROR (...)", or the output lines (--show-output)
    output_lines: List[str]
    log: pathlib.Path
    seconds: float

    def json(self):
        """The output parsed as JSON (for commands given ``--out=json``): {vm: value}."""
        text = "\n".join(self.output_lines)
        start = text.find("{")
        if start < 0:
            raise AssertionError("%s printed no JSON:\n%s" % (self.vm, text))
        return json.JSONDecoder().raw_decode(text[start:])[0]


# ----------------------------------------------------------------- qubesctl's command line


class QubesctlUsage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise QubesctlUsage(message)


def qubesctl_parser() -> argparse.ArgumentParser:
    """qubesctl's own options (qubes-mgmt-salt ``qubesctl``), the ones the lab
    emulates; the command is everything from the first non-option on, and an
    option qubesctl does not know (``--out=...`` before the command) is refused
    as qubesctl refuses it."""
    parser = _Parser(prog="qubesctl")
    parser.add_argument("--show-output", action="store_true")
    parser.add_argument("--skip-dom0", action="store_true")
    parser.add_argument("--targets", action="store")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


# ----------------------------------------------------------------- the machine


class QubesctlLab:
    """A Qubes machine around a built ``Lab``: dom0 (fake Qubes, the release's
    Salt), the package's /srv, and a management qube per target.

        qc = QubesctlLab(lab, topology, tmp_path)
        run = qc.qubesctl("--skip-dom0", "--targets=work,sys-net", "state.apply", "qubes_firewall")
        assert run.line("work") == "work: OK"
    """

    def __init__(self, lab, topology: dict, workdir, python: Optional[str] = None, lab_paths=None,
                 thin_cache=None):
        self.lab = lab
        self.release = lab.release
        self.topology = dict(topology)
        self.topology.pop("addresses", None)  # on Qubes dom0 asks Qubes (docs/addresses.md)
        self.workdir = pathlib.Path(workdir)
        self.python = python or salt_python(self.release)
        # Salt's thin tarball, built once and put into each fresh management
        # disposable's cache (None: each builds its own, as on Qubes; ~10 s of CPU)
        self.thin_cache = pathlib.Path(thin_cache) if thin_cache else None
        self.root = self.workdir / "machine"
        self.srv = self.root / "srv"
        self.log_dir = self.root / "var" / "log" / "qubes"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.calls_log = self.root / "wrapper-calls.log"
        self.salt_ssh_calls: List[str] = []
        layout_srv(self.srv)
        self.templates = template_targets(self.topology)
        self.template_ns = {name: self.make_template_ns(name) for name in self.templates}
        self.lab_paths = lab_paths if lab_paths is not None else self.default_lab_paths()
        write_user_pillar(self.srv, self.topology, self.lab_paths)
        self.world = fakequbes.write_world(self.root / "qubes.json", fake_world(lab, self.topology))
        self.dom0_conf = self.write_dom0_config()
        self.sync_extmods()

    # ---- lab stand-ins

    def default_lab_paths(self) -> Dict[str, dict]:
        paths = {"dom0": {"rw_config": str(self.root / "dom0" / "rw"),
                          "policy_file": str(self.root / "dom0" / "policy.d" / "30-user-networking.policy")}}
        names = set(self.lab.order) | set(self.topology.get("qubes") or {}) | set(self.templates)
        for name in sorted(names):
            if name in self.lab.qubes:
                rw, root = self.lab.rw_config(name), self.lab.root_dir(name)
            else:  # a template or disposable template: a root of its own
                root = self.lab.template_dir(name)
                rw = self.workdir / "templates" / name / "rw" / "config"
                rw.mkdir(parents=True, exist_ok=True)
            paths[name] = {"rw_config": str(rw), "etc_qubes": str(root / "etc" / "qubes"),
                           "systemd_dir": str(root / "etc" / "systemd" / "system"),
                           "state_dir": str(self.qube_dir(name) / "state")}
        return paths

    def make_template_ns(self, name: str) -> str:
        """A template's namespace: no link but lo, Qubes' base tables (qubes-iptables runs in every
        qube); the lab deletes it with its own (same prefix)."""
        ns = self.lab.prefix + "tpl-" + name
        netns.create(ns)
        for text in qubes_base.base_tables():
            netns.exec_in(ns, ["nft", "-f", "-"], input=text)
        return ns

    def target_ns(self, vm: str) -> str:
        return self.template_ns[vm] if vm in self.template_ns else self.lab.netns(vm)

    def rw_config(self, vm: str) -> pathlib.Path:
        """The target's /rw/config stand-in (a lab qube's, or a template's own)."""
        return pathlib.Path(self.lab_paths[vm]["rw_config"])

    def record_file(self, vm: str, qube: Optional[str] = None) -> pathlib.Path:
        """The record of the last apply for ``qube`` (default vm) in vm's /rw (docs/operations.md)."""
        return self.rw_config(vm) / "qubes-firewall-formula" / ("applied-%s.json" % (qube or vm))

    def start_disposable(self, qube: str, dispvm_template: str) -> None:
        """A named disposable starts: its /rw/config a fresh copy of its disposable template's, its
        root filesystem's state (the formula's state_dir) gone; then its boot replays."""
        rw = self.rw_config(qube)
        shutil.rmtree(rw)
        shutil.copytree(self.rw_config(dispvm_template), rw, symlinks=True)
        self.restart_root(qube)
        self.lab.reboot(qube)

    def restart_root(self, qube: str) -> None:
        """What a restart does to a template-based qube's root filesystem: the formula's
        state directory (lock, scratch, 0.2.0's record) starts empty; /rw stays."""
        for state in (pathlib.Path(self.lab_paths[qube]["state_dir"]), self.qube_dir(qube) / "default-state"):
            if state.exists():
                shutil.rmtree(state)

    def qube_dir(self, vm: str) -> pathlib.Path:
        """Where the lab keeps what the target writes outside its paths (thin, caches)."""
        return self.root / "qubes" / vm

    # ---- step 1: dom0

    def write_dom0_config(self) -> pathlib.Path:
        """dom0's minion config (qubes-mgmt-salt's f_defaults.conf, the parts that
        matter here), rooted in the lab."""
        conf = self.root / "dom0" / "etc-salt"
        conf.mkdir(parents=True, exist_ok=True)
        release_file = self.root / "dom0" / "qubes-release"
        release_file.write_text("Qubes release %s.0 (R%s)\n" % (self.release, self.release))
        config = {
            "id": "dom0",
            "root_dir": str(self.root / "dom0" / "salt-root"),
            "file_client": "local",
            "file_roots": {"base": [str(self.srv / "salt")]},
            "pillar_roots": {"base": [str(self.srv / "pillar")], "user": [str(self.srv / "user_pillar")]},
            "pillar_opts": True,
            "top_file_merging_strategy": "merge",
            "retcode_passthrough": True,
            "state_output_diff": False,
            "log_file": str(self.root / "dom0" / "salt-root" / "minion.log"),
            "log_level_logfile": "warning",
            "qubes_firewall_release_file": str(release_file),
            "qubes_firewall_state_dir": str(self.root / "dom0" / "state"),
            "qubes_firewall_backup_dir": str(self.root / "dom0" / "backups"),
        }
        (conf / "minion").write_text(yaml.safe_dump(config))
        return conf

    def dom0_env(self) -> Dict[str, str]:
        bindir = fakequbes.install_tools(str(self.root / "dom0" / "bin"))
        env = {"PATH": "%s:%s" % (bindir, SYSTEM_PATH), "HOME": "/root", "LANG": "C.UTF-8",
               "PYTHONWARNINGS": "ignore",
               "PYTHONPATH": fake_qubesadmin.write_package(self.root / "dom0" / "pylib"),
               fakequbes.STATE_ENV: str(self.world), fakequbes.LOG_ENV: str(self.root / "dom0" / "qvm-calls.log")}
        return env

    def dom0_salt_call(self, *args: str) -> subprocess.CompletedProcess:
        """``qubesctl --dom0-only ARGS`` = ``salt-call --local ARGS`` in dom0."""
        argv = [salt_script(self.python, "salt-call"), "--local", "--config-dir=" + str(self.dom0_conf),
                "--log-level=quiet"] + list(args)
        return subprocess.run(argv, capture_output=True, text=True, env=self.dom0_env(), check=False, timeout=600)

    def sync_extmods(self) -> None:
        """``sudo qubesctl saltutil.sync_all`` (README, install): dom0's extmods cache."""
        proc = self.dom0_salt_call("saltutil.sync_all")
        if proc.returncode != 0:
            raise AssertionError("saltutil.sync_all in dom0 failed:\n%s\n%s" % (proc.stdout, proc.stderr))

    # ---- step 2a: the target's pillar, rendered in dom0

    def render_pillar(self, vm: str) -> dict:
        proc = self.dom0_salt_call("--id=" + vm, "--output=yaml", "pillar.items")
        if proc.returncode != 0:
            raise RuntimeError("pillar.items --id=%s failed in dom0: %s" % (vm, proc.stderr.strip()))
        return yaml.safe_load(proc.stdout)["local"]

    # ---- step 2b: the /srv the management qube receives

    def srv_for_target(self, vm: str, mgmt: pathlib.Path) -> pathlib.Path:
        pillar = self.render_pillar(vm)
        out = mgmt / "srv"
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(self.srv, out)
        for roots in pillar["master"]["pillar_roots"].values():
            for root in roots:
                moved = out / os.path.relpath(root, self.srv)
                if moved.exists():
                    shutil.rmtree(moved)
        extmods = pillar["master"].get("extension_modules")
        if extmods and os.path.exists(extmods):
            shutil.copytree(extmods, out / "_extmods")
        master = {opt: pillar["master"][opt] for opt in ("file_roots",) if opt in pillar["master"]}
        (out / "master").write_text(yaml.safe_dump(master))
        pillar.pop("master", None)
        (out / "pillar").mkdir()
        (out / "pillar" / "combined.sls").write_text(yaml.safe_dump(pillar))
        (out / "pillar" / "top.sls").write_text(yaml.safe_dump({"base": {vm: ["combined"]}}))
        return out

    # ---- step 2c: qubes.SaltLinuxVM in the management qube

    def mgmt_config(self, vm: str, mgmt: pathlib.Path) -> pathlib.Path:
        """/etc/salt of the management qube: dom0's ``master`` (its file_roots now
        pointing into this qube's /srv), ``verify_env: False``, the roster."""
        srv = mgmt / "srv"
        master = yaml.safe_load((srv / "master").read_text()) or {}
        (srv / "master").unlink()
        master["file_roots"] = {env: [str(srv / os.path.relpath(r, self.srv)) for r in roots]
                                for env, roots in master.get("file_roots", {}).items()}
        if (srv / "_extmods").is_dir():
            extmods = mgmt / "cache" / "master" / "extmods"
            extmods.parent.mkdir(parents=True, exist_ok=True)
            if extmods.exists():
                shutil.rmtree(extmods)
            (srv / "_extmods").rename(extmods)
        if self.thin_cache is not None:
            shared = shared_thin(self.python, self.thin_cache)
            shutil.copytree(shared, mgmt / "cache" / "master" / "thin")
        etc = mgmt / "etc-salt"
        etc.mkdir(parents=True, exist_ok=True)
        key = etc / "ssh-key"  # qrexec needs none; an existing file keeps salt-ssh from ssh-keygen
        key.write_text("")
        master.update({
            "verify_env": False,
            "root_dir": str(mgmt),  # the paths below are inside it, so Salt leaves them as they are
            "cachedir": str(mgmt / "cache" / "master"),
            "pki_dir": str(mgmt / "pki"),
            "sock_dir": str(mgmt / "sock"),
            "log_file": str(mgmt / "master.log"),
            "log_level_logfile": "warning",
            "pillar_roots": {"base": [str(srv / "pillar")]},
            "roster_file": str(etc / "roster"),
            "ssh_priv": str(key),
        })
        (etc / "master").write_text(yaml.safe_dump(master))
        qube = self.qube_dir(vm)
        roster = {vm: {"host": vm, "thin_dir": str(qube / "salt-thin"),
                       "minion_opts": {"qubes_firewall_backup_dir": str(qube / "backups"),
                                       # the default state_dir (/var/lib/...): the lab pillar names another
                                       "qubes_firewall_state_dir": str(qube / "default-state"),
                                       "qubes_firewall_rw_config": self.lab_paths[vm]["rw_config"],
                                       "qubes_firewall_systemd_run_dir": str(qube / "no-systemd")}}}
        (etc / "roster").write_text(yaml.safe_dump(roster))
        return etc

    def target_env(self, vm: str) -> Dict[str, str]:
        """The environment qubes.VMRootShell gives bash in the qube (root's)."""
        env = {"PATH": SYSTEM_PATH, "HOME": "/root", "USER": "root", "LANG": "C.UTF-8", "SHELL": "/bin/bash"}
        if vm in self.template_ns:  # a template: no qubesdb stub, no lab qube
            env["QF_LAB_QUBE"] = vm
            return env
        env["PATH"] = "%s:%s" % (self.lab.bin_dir(vm), SYSTEM_PATH)
        env.update({k: v for k, v in self.lab.env(vm).items() if k.startswith("QF_LAB_")})
        return env

    def wrapper_dir(self, mgmt: pathlib.Path, vm: str) -> pathlib.Path:
        """/usr/lib/qubes-vm-connector/ssh-wrapper: ``ssh`` and ``scp``, and the
        qrexec stand-in's map of target -> namespace."""
        bindir = mgmt / "ssh-wrapper"
        bindir.mkdir(parents=True, exist_ok=True)
        for name in ("ssh", "scp"):
            link = bindir / name
            if not link.exists():
                link.symlink_to(HERE / "ssh_wrapper.py")
        targets = {vm: {"netns": self.target_ns(vm), "env": self.target_env(vm)}}
        (mgmt / "qrexec-targets.json").write_text(json.dumps(targets))
        return bindir

    def salt_ssh(self, vm: str, command: Sequence[str]) -> subprocess.CompletedProcess:
        """qubes.SaltLinuxVM: ``salt-ssh -w VM COMMAND`` with the ssh-wrapper first in PATH."""
        mgmt = self.root / "mgmt" / ("disp-mgmt-" + vm)[:31]
        if mgmt.exists():
            shutil.rmtree(mgmt)  # a fresh disposable each time
        mgmt.mkdir(parents=True)
        self.srv_for_target(vm, mgmt)
        etc = self.mgmt_config(vm, mgmt)
        bindir = self.wrapper_dir(mgmt, vm)
        env = {"PATH": "%s:%s" % (bindir, SYSTEM_PATH), "HOME": "/root", "LANG": "C.UTF-8",
               "PYTHONWARNINGS": "ignore",
               "QF_QUBESCTL_TARGETS": str(mgmt / "qrexec-targets.json"),
               "QF_QUBESCTL_CALLS": str(self.calls_log)}
        argv = [salt_script(self.python, "salt-ssh"), "--config-dir=" + str(etc), "-w", vm] + list(command)
        self.salt_ssh_calls.append(vm)
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=900)

    # ---- step 2d: what qubesctl prints

    def logger(self, vm: str):
        path = self.log_dir / ("mgmt-%s.log" % vm)

        def log(message: str) -> None:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("%s %s\n" % (stamp, message))
        return path, log

    @staticmethod
    def verdict(vm: str, command: str, returncode: int, output: str, show_output: bool, log_path) -> tuple:
        """(exit code, result, output lines) as qubessalt.ManageVM.salt_call decides them."""
        lines = ["".join(c for c in line if 0x20 <= ord(c) <= 0x7e) for line in output.splitlines()]
        if lines and lines[0].count(vm + ":") == 1:
            lines = lines[1:]
        exit_code = returncode
        if exit_code == 0 and command.startswith("state.") and not lines:
            return 1, "ERROR (exit code 0, but no changes summary)", lines
        if show_output and lines:
            return exit_code, lines, lines
        return exit_code, ("OK" if returncode == 0 else
                           "ERROR (exit code {}, details in {})".format(returncode, log_path)), lines

    def run_target(self, vm: str, command: Sequence[str], show_output: bool) -> TargetRun:
        started = datetime.datetime.now()
        log_path, log = self.logger(vm)
        quoted = " ".join(shlex.quote(word) for word in command)
        log("calling '%s'..." % quoted)
        try:
            proc = self.salt_ssh(vm, command)
        except Exception as exc:  # qubessalt: "ERROR (exception ...)"
            return TargetRun(vm, 1, "ERROR (exception %s)" % exc, [], log_path, 0.0)
        output = proc.stdout + proc.stderr  # qubessalt reads both, stdout first
        for line in output.splitlines():
            log("output: %s" % "".join(c for c in line if 0x20 <= ord(c) <= 0x7e))
        log("exit code: %d" % proc.returncode)
        exit_code, result, lines = self.verdict(vm, quoted, proc.returncode, output, show_output, log_path)
        if result == "ERROR (exit code 0, but no changes summary)":
            log("missing changes summary, considering it a failure")
        seconds = (datetime.datetime.now() - started).total_seconds()
        return TargetRun(vm, exit_code, result, lines, log_path, seconds)

    # ---- the command

    def klass(self, vm: str) -> Optional[str]:
        return fakequbes.World(str(self.world)).qube(vm).get("klass") if fakequbes.World(str(self.world)).exists(vm) else None

    def qubesctl(self, *argv: str) -> Run:
        """``sudo qubesctl [--skip-dom0] [--targets=a,b] [--show-output] COMMAND...``"""
        try:
            args = qubesctl_parser().parse_args(list(argv))
        except QubesctlUsage as exc:
            return Run(2, "qubesctl: error: %s\n" % exc)
        skip_dom0, show_output, command = args.skip_dom0, args.show_output, args.command
        targets = args.targets.split(",") if args.targets else []
        out: List[str] = []
        dom0 = None
        if not skip_dom0:
            dom0 = self.dom0_salt_call(*command)
            out.append(dom0.stdout)
            if dom0.returncode != 0:
                return Run(1, "".join(out) + "DOM0 configuration failed, not continuing\n", dom0)
        known = [vm for vm in targets if self.klass(vm) is not None and vm != "dom0"]
        runs: Dict[str, TargetRun] = {}
        exit_code = 0
        for group in ([vm for vm in known if self.klass(vm) == "TemplateVM"],
                      [vm for vm in known if self.klass(vm) != "TemplateVM"]):
            with concurrent.futures.ThreadPoolExecutor(max_workers=MAX_CONCURRENCY) as pool:
                futures = {vm: pool.submit(self.run_target, vm, command, show_output) for vm in group}
                for vm in group:  # qubesctl prints as they finish; the lab prints in order
                    run = futures[vm].result()
                    runs[vm] = run
                    exit_code = max(exit_code, run.exit_code)
                    if isinstance(run.result, list):
                        out.append(vm + ":\n" + "\n".join("  " + line for line in run.result) + "\n")
                    else:
                        out.append("%s: %s\n" % (vm, run.result))
        return Run(exit_code, "".join(out), dom0, runs)

    def wrapper_calls(self) -> List[str]:
        return self.calls_log.read_text().splitlines() if self.calls_log.exists() else []
