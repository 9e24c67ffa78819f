"""Test traffic: banner servers (run as a process inside a namespace) and probes.

A server answers every TCP connection / UDP datagram with "<node>:<port>\\n", or with
"<node>:<port>:<peer ip>\\n" when started with --report-peer, so a probe learns who
answered and which source address the server saw (to check NAT).

Run as a script (stdlib only):  python probes.py serve tcp|udp NODE PORT [--report-peer]
It prints "READY" once listening and serves until SIGTERM.
"""

import errno
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


def probe_tcp(dest: str, port: int, source: Optional[str] = None, timeout: float = 2.0) -> ProbeResult:
    """Connect to dest:port (from source address if given) and read one line."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
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
    errors are reported)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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
        text += ":" + peer
    return (text + "\n").encode()


def serve(proto: str, node: str, port: int, report_peer: bool) -> None:
    """Serve banners forever on 0.0.0.0:port."""
    if proto == "tcp":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(64)
        print(READY, flush=True)
        while True:
            conn, peer = srv.accept()
            try:
                conn.settimeout(2.0)
                conn.sendall(_banner(node, port, peer[0], report_peer))
            except OSError:
                pass
            finally:
                conn.close()
    elif proto == "udp":
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        print(READY, flush=True)
        while True:
            _, peer = srv.recvfrom(2048)
            try:
                srv.sendto(_banner(node, port, peer[0], report_peer), peer)
            except OSError:
                pass
    else:
        raise SystemExit("unknown protocol {!r}".format(proto))


def main(argv) -> int:
    if len(argv) < 4 or argv[0] != "serve":
        print(__doc__, file=sys.stderr)
        return 2
    serve(argv[1], argv[2], int(argv[3]), "--report-peer" in argv[4:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
