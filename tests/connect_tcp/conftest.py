"""
Shared helpers of the qubes.ConnectTCP tests: the formula's execution module
and states loaded with importlib with the dunders Salt's loader gives them, and fake
``qubes-policy-lint`` / ``systemctl`` commands on PATH.
"""

import copy
import os
import stat
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.modules import core, load, load_file  # noqa: F401  (used here and by the tests)

REPO = Path(__file__).resolve().parents[2]
PILLAR_EXAMPLE = REPO / "pillar.example" / "connect-tcp.sls"
GOLDEN = Path(__file__).resolve().parent / "golden"

# the qubes the ConnectTCP tests name (the model requires qubes:)
QUBES = {"untrusted": {"netvm": "none"}, "mytcp-service": {"netvm": "none"},
         "mytcp-service-bis": {"netvm": "none"}}


def example_pillar():
    data = yaml.safe_load(PILLAR_EXAMPLE.read_text())["qubes_firewall"]
    data.setdefault("qubes", copy.deepcopy(QUBES))
    return data


class Minion:
    """The formula's modules as Salt's loader would wire them, for one minion id."""

    scratch = None  # the running test's tmp_path (fixture _minion_scratch): each minion's state dir goes there

    def __init__(self, minion_id, pillar, **opts):
        self.opts = {"id": minion_id, "test": False}
        self.context = {}
        self.opts.update(opts)
        # the lock and scratch files: never the host's /var/lib, and inside the test's tmp_path
        if "qubes_firewall_state_dir" not in self.opts:
            if Minion.scratch is None:
                raise RuntimeError("a Minion outside a test (the autouse fixture gives it the test's tmp_path)")
            self.opts["qubes_firewall_state_dir"] = tempfile.mkdtemp(prefix="state-", dir=Minion.scratch)
        self.pillar = {"qubes_firewall": pillar}
        dunders = {"salt": {}, "opts": self.opts, "pillar": self.pillar, "context": self.context}
        self.qubes_firewall = load("qubes_firewall", **dunders)
        self.states = load("qubes_firewall", kind="_states", **dunders)

    def set_pillar(self, pillar):
        self.pillar["qubes_firewall"] = pillar

    def state(self, function, name="qubes_firewall-test", test=False, **kwargs):
        self.opts["test"] = test
        return getattr(self.states, function)(name, **kwargs)


def pillar_in(tmp_path, entries=None):
    """The manual page's example's pillar (or just ``entries``) with lookup paths inside tmp_path."""
    data = example_pillar() if entries is None else {"connect_tcp": entries, "qubes": copy.deepcopy(QUBES)}
    data["lookup"] = {"rw_config": str(tmp_path / "rw"),
                      "policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy")}
    return data


def snapshot(directory):
    """{path: (bytes, mode)} of every file under directory: to prove nothing was written."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[path] = (Path(path).read_bytes(), stat.S_IMODE(os.stat(path).st_mode))
    return out


def write_tool(directory, name, source):
    """An executable Python script ``name`` in ``directory``."""
    path = Path(directory) / name
    path.write_text("#!%s\n%s" % (sys.executable, textwrap.dedent(source)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# Behaves like core-qrexec's qubes-policy-lint for what we write: checks the
# line syntax, prints "path:line: error: ...", exits 1 on any error.
FAKE_POLICY_LINT = r'''
import re, sys
TOKEN = re.compile(r"\A(@anyvm|@adminvm|@default|@dispvm(:[A-Za-z0-9_.-]+)?|@tag:[A-Za-z0-9_.-]+|"
                   r"@type:[A-Za-z]+|[A-Za-z][A-Za-z0-9_.-]*)\Z")
rc = 0
for path in sys.argv[1:]:
    text = sys.stdin.read() if path == "-" else open(path).read()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("!"):
            continue
        words = stripped.split()
        error = None
        if len(words) < 5:
            error = "wrong number of fields"
        elif not (words[1] == "*" or words[1].startswith("+")):
            error = "invalid argument: %s" % words[1]
        elif not TOKEN.match(words[2]) or words[2] == "@default":
            error = "invalid source: %s" % words[2]
        elif not TOKEN.match(words[3]):
            error = "invalid target: %s" % words[3]
        elif words[4] not in ("allow", "deny", "ask"):
            error = "invalid action: %s" % words[4]
        elif words[3] == "@default" and words[4] == "allow" and not any(
                w.startswith("target=") for w in words[5:]):
            error = "allow to @default requires target="
        if error:
            print("%s:%d: error: %s" % (path, number, error))
            rc = 1
sys.exit(rc)
'''

# systemctl for tests: logs each call to $FAKE_SYSTEMCTL_DIR/calls and keeps
# the started sockets in $FAKE_SYSTEMCTL_DIR/active.
FAKE_SYSTEMCTL = r'''
import os, sys
state = os.environ["FAKE_SYSTEMCTL_DIR"]
args = sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as log:
    log.write(" ".join(args) + "\n")
active_file = os.path.join(state, "active")
active = set(open(active_file).read().split()) if os.path.exists(active_file) else set()
verb, units = args[0], [a for a in args[1:] if not a.startswith("-")]
if verb == "is-active":
    sys.exit(0 if all(u in active for u in units) else 3)
if verb in ("start", "restart"):
    active |= set(units)
elif verb == "stop":
    active -= set(units)
elif verb != "daemon-reload":
    sys.exit(1)
with open(active_file, "w") as handle:
    handle.write("\n".join(sorted(active)))
'''


@pytest.fixture(autouse=True)
def _minion_scratch(tmp_path, monkeypatch):
    """Each Minion of the test keeps its lock and scratch files in the test's tmp_path."""
    monkeypatch.setattr(Minion, "scratch", tmp_path)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A directory first on PATH, for fake tools."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", "%s%s%s" % (directory, os.pathsep, os.environ["PATH"]))
    return directory


@pytest.fixture
def fake_systemd(tmp_path, fake_bin, monkeypatch):
    """A fake systemctl and a stand-in for /run/systemd/system; returns the run dir."""
    state = tmp_path / "systemctl"
    state.mkdir()
    monkeypatch.setenv("FAKE_SYSTEMCTL_DIR", str(state))
    write_tool(fake_bin, "systemctl", FAKE_SYSTEMCTL)
    run_dir = tmp_path / "run-systemd-system"
    run_dir.mkdir()
    return run_dir


def systemctl_calls(tmp_path):
    path = tmp_path / "systemctl" / "calls"
    return path.read_text().splitlines() if path.exists() else []
