"""Network namespaces: names, creation, deletion, running commands and code inside.

Every lab namespace is named ``qfl<pid>x<counter>-<node>``: <pid> is the process that
created it, so cleanup_stale() can tell a crashed run's leftovers from a live lab.
"""

import ctypes
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

PREFIX = "qfl"
NETNS_DIR = "/run/netns"
_NAME_RE = re.compile(r"^{}(\d+)x(\d+)-".format(PREFIX))
_CLONE_NEWNET = 0x40000000
_counter = itertools.count(1)
_T = TypeVar("_T")


class LabCommandError(subprocess.CalledProcessError):
    """A command in a namespace failed; str() shows where, and its output."""

    def __init__(self, ns: str, returncode: int, cmd, output: str, stderr: str):
        super().__init__(returncode, cmd, output, stderr)
        self.ns = ns

    def __str__(self) -> str:
        return "in netns {}: {!r} exited {}\n--- stdout:\n{}--- stderr:\n{}".format(
            self.ns, self.cmd, self.returncode, self.output or "", self.stderr or "")


def new_prefix() -> str:
    """A namespace name prefix unique to this process and call: 'qfl<pid>x<n>-'."""
    return "{}{}x{}-".format(PREFIX, os.getpid(), next(_counter))


def run_root(argv: Sequence[str], check: bool = True, input: Optional[str] = None,
             timeout: Optional[float] = 60) -> subprocess.CompletedProcess:
    """Run a command in the root namespace (only `ip netns ...` housekeeping uses this)."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabCommandError("<root>", proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def exec_in(ns: str, argv: Sequence[str], check: bool = True, input: Optional[str] = None,
            env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = 60,
            cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run argv inside namespace ns (`ip netns exec`), text mode, output captured."""
    cmd = ["ip", "netns", "exec", ns] + list(argv)
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else None, cwd=cwd)
    if check and proc.returncode != 0:
        raise LabCommandError(ns, proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def create(ns: str) -> None:
    """Create a namespace with lo up and IPv4 forwarding off (new netns inherit the host's)."""
    run_root(["ip", "netns", "add", ns])
    exec_in(ns, ["ip", "link", "set", "lo", "up"])
    write_proc(ns, "net/ipv4/ip_forward", "0")


def write_proc(ns: str, key: str, value: str) -> None:
    """Write /proc/sys/<key> inside ns (works for dotted interface names, unlike sysctl)."""
    exec_in(ns, ["sh", "-c", 'echo "$1" > "/proc/sys/$2"', "sh", value, key])


def read_proc(ns: str, key: str) -> str:
    return exec_in(ns, ["cat", "/proc/sys/" + key]).stdout.strip()


def exists(ns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, ns))


def pids(ns: str) -> List[int]:
    """Processes living in namespace ns."""
    proc = run_root(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def kill_pids(pid_list: Sequence[int], grace: float = 1.0) -> None:
    """SIGTERM the given processes, then SIGKILL those still alive after `grace` seconds."""
    for pid in pid_list:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pid_list)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete(ns: str) -> None:
    """Kill whatever still runs in ns, then delete it.  Missing namespace is fine."""
    if not exists(ns):
        return
    kill_pids(pids(ns))
    proc = run_root(["ip", "netns", "del", ns], check=False)
    if proc.returncode != 0 and exists(ns):
        raise LabCommandError("<root>", proc.returncode, ["ip", "netns", "del", ns], proc.stdout, proc.stderr)


def list_lab_namespaces() -> List[str]:
    """All namespaces whose name carries the lab prefix, from any process."""
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(name for name in entries if _NAME_RE.match(name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open("/proc/{}/stat".format(pid)) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cleanup_stale() -> List[str]:
    """Delete lab namespaces (and what runs in them) whose creating process is dead.

    Returns the names deleted.  Namespaces of live processes (other labs) are left alone.
    """
    removed = []
    for name in list_lab_namespaces():
        match = _NAME_RE.match(name)
        if match and not _alive(int(match.group(1))):
            delete(name)
            removed.append(name)
    return removed


_libc = None


def _setns(ns: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns({}): {}".format(ns, os.strerror(err)))
    finally:
        os.close(fd)


def call_in(ns: str, func: Callable[[], _T]) -> _T:
    """Run func() in a fresh thread that has joined namespace ns; return its result.

    Sockets created by func belong to ns.  The calling thread's namespace is untouched.
    """
    box: Dict[str, object] = {}

    def runner() -> None:
        try:
            _setns(ns)
            box["value"] = func()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=runner, name="netns-" + ns, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
