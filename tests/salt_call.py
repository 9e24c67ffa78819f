"""
Run the formula with the real ``salt-call --local`` inside an emulated qube of
the lab: ``ip netns exec <the qube's namespace> salt-call ...``, with a private
config/cache directory and pillar per qube.

Everything else runs Salt through pytest-salt-factories
(tests/saltfactories_support.py: its loaders, and ``salt_call_cli`` for the
CLI).  This one stays home-made because the toolkit's CLI wrapper builds and
starts the command line itself (its generated ``cli_salt_call.py`` script under
the current interpreter): it has no way to start it inside a network
namespace, where ``ip netns exec`` must be the process that executes
salt-call, so that nft, the interfaces and the sockets are the qube's.
"""

import json
import os
import pathlib
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent


def salt_call_binary():
    return str(pathlib.Path(sys.executable).parent / "salt-call")


def write_minion_config(conf, workdir, **opts):
    """
    A ``minion`` file in ``conf`` for ``salt-call --local --config-dir=conf``
    that keeps every cache, log and backup under ``workdir`` (never /etc/salt,
    /var/cache/salt or /var/lib), plus ``opts``.
    """
    conf, workdir = pathlib.Path(conf), pathlib.Path(workdir)
    conf.mkdir(parents=True, exist_ok=True)
    config = {
        "root_dir": str(workdir / "salt-root"),
        "file_client": "local",
        "log_level_logfile": "warning",
        "log_file": str(workdir / "salt-root" / "minion.log"),
        "qubes_firewall_backup_dir": str(workdir / "backups"),
        "qubes_firewall_state_dir": str(workdir / "state"),
        # never the host's running systemd (a missing directory: "systemd is not running")
        "qubes_firewall_systemd_run_dir": str(workdir / "no-systemd"),
    }
    config.update(opts)
    (conf / "minion").write_text(yaml.safe_dump(config))
    return conf


class SaltCall:
    """One minion (id) with its own config dir, cache and pillar under ``workdir``."""

    def __init__(self, workdir, minion_id, pillar=None, netns=None, env=None):
        self.workdir = pathlib.Path(workdir) / ("salt-" + minion_id)
        self.minion_id = minion_id
        self.netns = netns
        self.env = env or {}
        self.conf = self.workdir / "conf"
        self.pillar_dir = self.workdir / "pillar"
        self.pillar_dir.mkdir(parents=True, exist_ok=True)
        write_minion_config(self.conf, self.workdir)
        (self.pillar_dir / "top.sls").write_text("base:\n  '*':\n    - qubes_firewall\n")
        if pillar is not None:
            self.set_pillar(pillar)

    def set_pillar(self, pillar):
        """``pillar``: the whole pillar dict (with the ``qubes_firewall`` key), or raw SLS text."""
        text = pillar if isinstance(pillar, str) else yaml.safe_dump(pillar, sort_keys=False)
        (self.pillar_dir / "qubes_firewall.sls").write_text(text)

    def argv(self, *args):
        argv = [
            salt_call_binary(), "--local", "--id=" + self.minion_id,
            "--config-dir=" + str(self.conf),
            "--module-dirs=" + str(REPO),
            "--file-root=" + str(REPO / "salt"),
            "--pillar-root=" + str(self.pillar_dir),
            "--out=json", "--retcode-passthrough", "--log-level=quiet",
        ] + list(args)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        return argv

    def run(self, *args, check=False):
        env = dict(os.environ, PYTHONWARNINGS="ignore", **self.env)
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=env, check=False)
        try:
            out = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
        except ValueError:
            out = None
        if check and proc.returncode != 0:
            raise AssertionError("salt-call %s failed (%d):\n%s\n%s" % (args, proc.returncode, proc.stdout, proc.stderr))
        return proc.returncode, out, proc

    def apply(self, test=False, sls="qubes_firewall"):
        """state.apply; returns (retcode, {state id: result dict})."""
        args = ["state.apply", sls] + (["test=True"] if test else [])
        rc, out, proc = self.run(*args)
        if not isinstance(out, dict):
            raise AssertionError("state.apply printed no state results (rc %d):\n%s\n%s" % (rc, proc.stdout, proc.stderr))
        return rc, {v["__id__"]: v for v in out.values()}
