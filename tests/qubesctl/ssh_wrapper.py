#!/usr/bin/python3
"""
The lab's stand-in for Qubes' ssh-wrapper (qubes-mgmt-salt ``ssh-wrapper``,
installed as ``ssh`` and ``scp`` first in salt-ssh's PATH by qubes.SaltLinuxVM).

Same semantics, with qrexec replaced by the lab:

- ``ssh [-o OPT]... HOST CMD``: CMD must be ``/bin/sh`` (the script comes on
  stdin) or one ``/bin/sh  << 'EOF' ... EOF`` heredoc; anything else is refused
  as the real wrapper refuses it.  The script, after the wrapper's three-line
  scp sandbox prefix, is sent as ONE stdin to ``bash`` running as root in the
  target qube (qubes.VMRootShell), here ``ip netns exec NS bash`` in the lab
  qube's network namespace, with the qube's environment (its PATH with the
  qubesdb-read stub, and nothing of this process's environment);
- ``scp [-o OPT]... LOCAL HOST:PATH``: ``cat > "PATH"`` followed by the file's
  bytes on the same kind of stdin.

HOST picks the qube through the JSON file named by $QF_QUBESCTL_TARGETS:
``{HOST: {"netns": NS, "env": {...}}}``.  Host keys, users, identities, ports:
ignored, as qrexec ignores them.  Each connection appends one line
``ssh HOST`` / ``scp HOST`` to $QF_QUBESCTL_CALLS when set (round trips).
Runs with the system python3 (no Salt, no test code imported).
"""

import argparse
import json
import os
import subprocess
import sys

START = "/bin/sh  << 'EOF'\n"
END = "\nEOF"
SANDBOX = (b"mkdir -p /run/salt-shim-sandbox\n"
           b"ln -sf /bin/true /run/salt-shim-sandbox/scp\n"
           b"export PATH=\"$PATH:/run/salt-shim-sandbox\"\n")


def target(host):
    with open(os.environ["QF_QUBESCTL_TARGETS"]) as handle:
        targets = json.load(handle)
    if host not in targets:
        sys.stderr.write("qrexec: no such target %r\n" % host)
        sys.exit(126)
    return targets[host]


def log_call(kind, host):
    path = os.environ.get("QF_QUBESCTL_CALLS")
    if path:
        with open(path, "a") as handle:
            handle.write("%s %s\n" % (kind, host))


def vm_root_shell(host, stdin_data):
    """qrexec-client-vm HOST qubes.VMRootShell: bash as root in the qube, stdin piped."""
    qube = target(host)
    log_call(sys.argv[0].rsplit("/", 1)[-1], host)
    argv = ["ip", "netns", "exec", qube["netns"], "bash"]
    proc = subprocess.run(argv, input=stdin_data, env=qube["env"], check=False)
    return proc.returncode


def ssh(args):
    if len(args) < 2:
        raise ValueError("do not know how to handle our input")
    if args[1] == "/bin/sh":
        stdin_data = sys.stdin.buffer.read()
    elif args[1].startswith(START) and args[1].endswith(END):
        stdin_data = args[1].encode("ascii", "strict")
        if stdin_data.find((END + "\n").encode()) != -1:
            raise ValueError("input is not single heredoc")
        stdin_data = stdin_data[len(START):1 - len(END)]
    else:
        raise ValueError("do not know how to handle our input")
    return vm_root_shell(args[0], SANDBOX + stdin_data)


def scp(args):
    assert len(args) == 2 and args[1].count(":") == 1
    src_path = args[0]
    dst_host, dst_path = args[1].split(":")
    with open(src_path, "rb") as handle:
        content = handle.read()
    rc = vm_root_shell(dst_host, 'cat > "{}"\n'.format(dst_path).encode() + content)
    if rc != 0:
        raise RuntimeError("Failed to write target file {}".format(dst_path))
    return 0


def parse_opts(args):
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", action="append", nargs=1)
    parser.add_argument("--version", "-V", action="store_true")
    opts, args = parser.parse_known_args(args)
    if opts.version:
        print("OpenSSH_6.6.1p1 qubes.VMShell wrapper (lab)")
        sys.exit(0)
    return args


def main():
    args = parse_opts(sys.argv[1:])
    if sys.argv[0].endswith("ssh"):
        return ssh(args)
    if sys.argv[0].endswith("scp"):
        return scp(args)
    raise RuntimeError("Unsupported program {} called".format(sys.argv[0]))


if __name__ == "__main__":
    sys.exit(main())
