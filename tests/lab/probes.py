"""Test traffic: banner servers (run as a process inside a namespace) and probes.

A server answers every TCP connection / UDP datagram with "<node>:<port>\\n", or with
"<node>:<port>:<peer ip>\\n" when started with --report-peer, so a probe learns who
answered and which source address the server saw (to check NAT).  It listens on IPv4
(0.0.0.0) and, when the namespace has IPv6, on IPv6 (::, IPv6 only, so an IPv4 peer is
still reported as a.b.c.d); an IPv6 peer is reported in its compressed form.  A probe uses
IPv6 when its destination is an IPv6 address.

Run as a script (stdlib only):  python probes.py serve tcp|udp NODE PORT [--report-peer]
It prints "READY" once listening and serves until SIGTERM.
"""

import errno
import ipaddress
import select
import socket
import sys
from dataclasses import dataclass
from typing import Optional

READY = "READY"


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe.

    banner: the server's answer without newline, or None.
    error: None when answered, else "refused" (TCP RST / ICMP port unreachable),
        "unreachable" (ICMP host/net unreachable, host- or admin-prohibited: a reject),
        "timeout" (no answer: dropped), "reset", "closed" (connected, nothing sent) or
        another errno name.
    """

    banner: Optional[str]
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.banner is not None


def _error_name(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timeout"
    code = exc.errno
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return "unreachable"
    if code == errno.ECONNRESET:
        return "reset"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return errno.errorcode.get(code, str(code)) if code else type(exc).__name__


def _family(dest: str) -> int:
    return socket.AF_INET6 if ":" in dest else socket.AF_INET


_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)  # <linux/in6.h>
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


def _connect6(sock: socket.socket, dest: str, port: int, timeout: float) -> None:
    """connect() over IPv6 that reports an ICMPv6 error at once, as it is on Qubes.

    In the lab a veth pair hands packets over synchronously, so the ICMPv6 error answering
    a SYN (a reject in a netvm) can come back while connect() still holds the socket: Linux
    then keeps it only as a soft error and the connect waits for the SYN retransmission (1 s
    on; TcpExtLockDroppedIcmps counts it).  Between Xen domains the error always arrives
    later and fails the connect at once.  With IPV6_RECVERR the kernel also queues the
    error on the socket's error queue, which poll() reports: it is raised from there.
    """
    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
    sock.setblocking(False)
    err = sock.connect_ex((dest, port))
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, errno.errorcode.get(err, str(err)))
    poller = select.poll()
    poller.register(sock, select.POLLOUT | select.POLLERR)
    if err == errno.EINPROGRESS and not poller.poll(max(0, int(timeout * 1000))):
        raise socket.timeout("timed out")
    try:
        _, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(512), _MSG_ERRQUEUE)
    except (BlockingIOError, InterruptedError):
        ancillary = []
    for level, _kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and len(data) >= 4:
            code = int.from_bytes(data[:4], sys.byteorder)
            raise OSError(code, errno.errorcode.get(code, str(code)))
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, errno.errorcode.get(code, str(code)))
    sock.settimeout(timeout)


def probe_tcp(dest: str, port: int, source: Optional[str] = None, timeout: float = 2.0) -> ProbeResult:
    """Connect to dest:port (from source address if given) and read one line; IPv6 when
    dest is an IPv6 address."""
    sock = socket.socket(_family(dest), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        if sock.family == socket.AF_INET6:
            _connect6(sock, dest, port, timeout)
        else:
            sock.connect((dest, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        if not data:
            return ProbeResult(None, "closed")
        return ProbeResult(data.decode("utf-8", "replace").strip())
    except OSError as exc:
        return ProbeResult(None, _error_name(exc))
    finally:
        sock.close()


def probe_udp(dest: str, port: int, source: Optional[str] = None, timeout: float = 2.0,
              payload: bytes = b"probe\n") -> ProbeResult:
    """Send one datagram to dest:port and wait for one answer (connected socket, so ICMP
    errors are reported); IPv6 when dest is an IPv6 address."""
    sock = socket.socket(_family(dest), socket.SOCK_DGRAM)
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect((dest, port))
        sock.send(payload)
        data = sock.recv(512)
        return ProbeResult(data.decode("utf-8", "replace").strip())
    except OSError as exc:
        return ProbeResult(None, _error_name(exc))
    finally:
        sock.close()


def _banner(node: str, port: int, peer: str, report_peer: bool) -> bytes:
    text = "{}:{}".format(node, port)
    if report_peer:
        text += ":" + str(ipaddress.ip_address(peer.split("%")[0]))
    return (text + "\n").encode()


def _listeners(proto: str, port: int):
    """The server's sockets: IPv4 on 0.0.0.0, and IPv6-only on :: when IPv6 is available."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    socks = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, kind)
        except OSError:
            if family == socket.AF_INET6:
                continue  # no IPv6 in this kernel
            raise
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if proto == "udp":  # answer from the address the datagram was sent to
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            try:
                sock.bind((addr, port))
            except OSError:
                sock.close()
                continue  # IPv6 disabled in this namespace
        else:
            sock.bind((addr, port))
        if proto == "tcp":
            sock.listen(64)
        socks.append(sock)
    return socks


def serve(proto: str, node: str, port: int, report_peer: bool) -> None:
    """Serve banners forever on 0.0.0.0:port and [::]:port."""
    if proto not in ("tcp", "udp"):
        raise SystemExit("unknown protocol {!r}".format(proto))
    socks = _listeners(proto, port)
    print(READY, flush=True)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for srv in ready:
            if proto == "tcp":
                conn, peer = srv.accept()
                try:
                    conn.settimeout(2.0)
                    conn.sendall(_banner(node, port, peer[0], report_peer))
                except OSError:
                    pass
                finally:
                    conn.close()
            elif srv.family == socket.AF_INET6:
                _, ancillary, _, peer = srv.recvmsg(2048, socket.CMSG_SPACE(20))
                pktinfo = [(level, kind, data) for level, kind, data in ancillary
                           if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO]
                try:
                    srv.sendmsg([_banner(node, port, peer[0], report_peer)], pktinfo, 0, peer)
                except OSError:
                    pass
            else:
                _, peer = srv.recvfrom(2048)
                try:
                    srv.sendto(_banner(node, port, peer[0], report_peer), peer)
                except OSError:
                    pass


def main(argv) -> int:
    if len(argv) < 4 or argv[0] != "serve":
        print(__doc__, file=sys.stderr)
        return 2
    serve(argv[1], argv[2], int(argv[3]), "--report-peer" in argv[4:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
