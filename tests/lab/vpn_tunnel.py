"""A userspace VPN for the lab: the IP packets of a TUN interface, carried in UDP datagrams.

The lab's kernel may have no WireGuard, IPIP or FOU, but it has TUN: this is the smallest
tunnel that behaves like a VPN for the formula's purpose.  The client's TUN interface (e.g.
``tun0``) is the tunnel; its datagrams go to the server's UDP port (the VPN endpoint) through
the VPN qube's upstream, masqueraded at every hop like any UDP flow; the server answers the
address the datagrams came from (as WireGuard does behind NAT).  The interface exists while
the process runs: killing the process deletes it, as a VPN client's exit does.

    python3 vpn_tunnel.py server IFNAME PORT
    python3 vpn_tunnel.py client IFNAME PEER_IP PEER_PORT LOCAL_PORT

Run inside a network namespace; prints READY once the interface exists.  No encryption: it
carries test packets between lab namespaces only.
"""

import fcntl
import os
import select
import socket
import struct
import sys

READY = "READY"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def run(mode, ifname, args):
    tun = open_tun(ifname)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if mode == "server":
        sock.bind(("0.0.0.0", int(args[0])))
        peer = None
    else:
        peer = (args[0], int(args[1]))
        sock.bind(("0.0.0.0", int(args[2])))
    print(READY, flush=True)
    while True:
        ready, _, _ = select.select([tun, sock], [], [])
        if tun in ready:
            try:
                data = os.read(tun, 65535)
                if peer is not None:
                    sock.sendto(data, peer)
            except OSError:  # the interface is down, or the datagram was dropped on its way out
                pass
        if sock in ready:
            data, addr = sock.recvfrom(65535)
            if mode == "server":
                peer = addr
            try:
                os.write(tun, data)
            except OSError:
                pass


def main(argv):
    if len(argv) < 3 or argv[0] not in ("server", "client") or len(argv) != (3 if argv[0] == "server" else 5):
        raise SystemExit(__doc__)
    run(argv[0], argv[1], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
