"""
Stand-in for qrexec-client-vm in the ConnectTCP lab: qrexec-client-vm TARGET qubes.ConnectTCP+PORT

Plays both qrexec and dom0: it evaluates the policy file rendered by the formula
($LAB_POLICY; first matching line wins, as in qrexec) for the calling qube
($LAB_SOURCE), and on allow it relays stdin/stdout to 127.0.0.1:PORT inside
the target qube's network namespace ($LAB_NETNS_PREFIX + qube name), which is
what /etc/qubes-rpc/qubes.ConnectTCP does in the real target.  Denied calls
print "Request refused" on stderr and exit 126, like the real tool.
"""

import os
import sys

RELAY = r"""
import os, socket, sys, threading
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
sock.settimeout(None)
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        sock.sendall(data)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=up, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def refuse(why):
    sys.stderr.write("Request refused (%s)\n" % why)
    sys.exit(126)


def decide(policy_text, source, service, argument, target):
    """The qube that serves the call, or None (deny); target '' means @default."""
    requested = target or "@default"
    for line in policy_text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        rule_service, rule_arg, rule_source, rule_target, action = words[:5]
        params = dict(w.split("=", 1) for w in words[5:])
        if rule_service not in ("*", service) or rule_arg not in ("*", "+" + argument):
            continue
        if rule_source not in ("@anyvm", source):
            continue
        if rule_target != requested and not (rule_target == "@anyvm" and requested != "@default"):
            continue
        if action != "allow":
            return None
        return params.get("target", requested)
    return None


def main():
    target, call = sys.argv[1], sys.argv[2]
    service, _, argument = call.partition("+")
    if service != "qubes.ConnectTCP" or not argument.isdigit():
        refuse("unknown service %s" % call)
    with open(os.environ["LAB_POLICY"]) as handle:
        server = decide(handle.read(), os.environ["LAB_SOURCE"], service, argument, target)
    if server is None or server.startswith("@"):
        refuse("policy denies %s -> %s %s" % (os.environ["LAB_SOURCE"], target or "@default", call))
    os.execvp("ip", ["ip", "netns", "exec", os.environ["LAB_NETNS_PREFIX"] + server,
                     sys.executable, "-c", RELAY, argument])


if __name__ == "__main__":
    main()
