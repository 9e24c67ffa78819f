"""
Benchmark (not a test): CPU per packet through sys-net with N port forwards,
the rule layout of this formula (one nat chain, hash maps and sets) side by
side with the previous one (one nat base chain per forward, one rule per
forward in qf-forward), in one run on the same lab.

    sudo .venv/salt-3008/bin/python -m benchmarks.per_packet [--forwards 0,10,1000,5000]

The lab: sys-net (uplink, ``ens6`` to the LAN host ``lan``) and its client
``web``; the N forwards all go to web.  Three kinds of traffic, each packet a
new connection (its own source address/port), so that it walks the nat chains
(only a connection's first packet does):

- forwarded: TCP SYNs from the LAN to sys-net's LAN address on the port of
  the last forward (DNAT to web, forward accept, web answers RST);
- unforwarded: UDP from the LAN to sys-net on a port nobody forwards (walks
  every nat rule, then Qubes' input chain drops it);
- outbound: UDP from web to the LAN host (the ``qf-forward`` walk, then
  masquerade), what every client of sys-net pays.

How CPU per packet is measured: a sender pinned to one CPU writes prebuilt
packets (raw socket, checksums computed beforehand) in a loop.  A veth
transmit hands the packet to the receiving namespace and the kernel processes
it in a softirq run when the sending system call re-enables bottom halves:
on the same CPU, inside the ``sendto`` call.  So the time of the loop divided
by the packets is the CPU the whole path costs (both namespaces' netfilter,
routing, the reply), plus a constant Python loop overhead of about 1 us.  Each
figure is the minimum over ``--rounds`` batches of ``--packets`` packets: the
machine is shared, and interference only ever adds time.
"""

import argparse
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import time

from tests.lab.spec import OutsideHost, QubeSpec
from tests.lab.topology import Lab
from tests.modules import REPO, model, nft, plan

OLD_COMMIT = "c8df752"
SYS_NET, WEB = "10.137.0.5", "10.137.0.11"
LAN_HOST, SYS_NET_LAN = "192.168.1.50", "192.168.1.10"


# --------------------------------------------------------------------------
# the sender (runs inside a namespace)
# --------------------------------------------------------------------------


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packet(proto, src, dst, sport, dport):
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    if proto == "tcp":
        head = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
        number = socket.IPPROTO_TCP
    else:
        head = struct.pack("!HHHH", sport, dport, 8, 0)
        number = socket.IPPROTO_UDP
    pseudo = saddr + daddr + struct.pack("!BBH", 0, number, len(head))
    csum = _checksum(pseudo + head)
    if proto == "tcp":
        head = head[:16] + struct.pack("!H", csum) + head[18:]
    else:
        head = head[:6] + struct.pack("!H", csum or 0xFFFF)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(head), 0, 0, 64, number, 0, saddr, daddr)
    return ip + head


def _flow(index, fixed_source):
    """A source address and port nobody used before in this run."""
    sport = 1024 + index % 60000
    if fixed_source:
        return fixed_source, sport
    host = index // 60000
    return "192.168.%d.%d" % (100 + host // 254, host % 254 + 1), sport


def send(proto, dst, dport, offset, packets, rounds, fixed_source=None):
    """Per-packet ns of each batch (the sender's loop time / packets)."""
    os.sched_setaffinity(0, {0})
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out = []
    index = offset
    for _ in range(rounds):
        batch = []
        for _ in range(packets):
            src, sport = _flow(index, fixed_source)
            batch.append(_packet(proto, src, dst, sport, dport))
            index += 1
        target = (dst, 0)
        sendto = sock.sendto
        start = time.perf_counter_ns()
        for pkt in batch:
            sendto(pkt, target)
        out.append((time.perf_counter_ns() - start) / packets)
    return out


# --------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------


def lab():
    return Lab({"sys-net": QubeSpec(ip=SYS_NET, provides_network=True),
                "web": QubeSpec(ip=WEB, netvm="sys-net")},
               [OutsideHost(name="lan", uplink="sys-net", ifname="ens6", host_ip=LAN_HOST + "/24",
                            uplink_ip=SYS_NET_LAN + "/24", default_route=True)])


def pillar(n):
    return {
        "addresses": {"sys-net": SYS_NET, "web": WEB},
        "qubes": {"sys-net": {"netvm": None}, "web": {"netvm": "sys-net"}},
        "port_forwards": [{"name": "pf-%d" % i, "qube": "web", "port": 20000 + i, "external_port": 10000 + i,
                           "interfaces": ["ens6"]} for i in range(n)],
    }


def _load_old(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("qf_old_plan", str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules["qf_old_plan"] = module
    spec.loader.exec_module(module)
    return module


def old_script(old, n):
    p = old.plan_qube(model.parse(pillar(n)), "sys-net")
    return old.ruleset_text(p) + "".join(p.jump_command(c, t) + "\n" for c, t in p.jumps)


def new_script(n, live):
    return nft.transaction(plan.plan_qube(model.parse(pillar(n)), "sys-net"), live)[0]


def clear(the_lab):
    script, _ = nft.transaction(None, nft.live_state(the_lab.nft_json("sys-net")))
    if script:
        the_lab.nft_load("sys-net", script)


def measure(the_lab, node, args):
    proc = the_lab.run(node, [sys.executable, "-m", "benchmarks.per_packet", "--send", json.dumps(args)],
                       env={"PYTHONPATH": str(REPO)}, timeout=600)
    return min(json.loads(proc.stdout)) / 1000.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forwards", default="0,10,1000,5000")
    parser.add_argument("--packets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--send", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        print(json.dumps(send(**json.loads(args.send))))
        return
    counts = [int(n) for n in args.forwards.split(",")]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qf-old-plan-"))
    (tmp / "old_plan.py").write_text(subprocess.run(
        ["git", "show", "%s:_modules/qubes_firewall_plan.py" % OLD_COMMIT], cwd=REPO,
        capture_output=True, text=True, check=True).stdout)
    old = _load_old(tmp / "old_plan.py")
    rows = []
    offset = 0
    with lab() as the_lab:
        # warm-up (neighbour entries, caches): not reported
        measure(the_lab, "web", {"packets": args.packets, "rounds": 1, "proto": "udp", "dst": LAN_HOST,
                                 "dport": 9, "offset": 0, "fixed_source": WEB})
        measure(the_lab, "lan", {"packets": args.packets, "rounds": 1, "proto": "udp", "dst": SYS_NET_LAN,
                                 "dport": 9, "offset": 0})
        offset = args.packets
        for n in counts:
            for layout in ("old", "new"):
                clear(the_lab)
                script = old_script(old, n) if layout == "old" else new_script(
                    n, nft.live_state(the_lab.nft_json("sys-net")))
                start = time.monotonic()
                loaded = the_lab.nft_load("sys-net", script, check=False) if script else None
                load_s = time.monotonic() - start
                if loaded is not None and loaded.returncode != 0:
                    error = next((line for line in loaded.stderr.splitlines() if "Error" in line), "error")
                    rows.append((n, layout, "cannot load (%s)" % error.split("Error: ", 1)[-1][:50]))
                    continue
                common = {"packets": args.packets, "rounds": args.rounds}
                figures = []
                if n:
                    figures.append(measure(the_lab, "lan", dict(common, proto="tcp", dst=SYS_NET_LAN,
                                                                   dport=10000 + n - 1, offset=offset)))
                else:
                    figures.append(None)
                offset += args.packets * args.rounds
                figures.append(measure(the_lab, "lan", dict(common, proto="udp", dst=SYS_NET_LAN, dport=9,
                                                           offset=offset)))
                offset += args.packets * args.rounds
                figures.append(measure(the_lab, "web", dict(common, proto="udp", dst=LAN_HOST, dport=9,
                                                           offset=offset, fixed_source=WEB)))
                offset += args.packets * args.rounds
                rows.append((n, layout, figures, load_s))
        clear(the_lab)
    print("us of CPU per packet through sys-net (min of %d x %d packets; nft %s)\n"
          % (args.rounds, args.packets, nft_version()))
    header = ("forwards", "layout", "forwarded TCP SYN", "unforwarded UDP", "outbound UDP", "load s")
    table = [header]
    for row in rows:
        if isinstance(row[2], str):
            table.append((str(row[0]), row[1], row[2], "", "", ""))
            continue
        n, layout, figures, load_s = row
        table.append((str(n), layout) + tuple("-" if f is None else "%.1f" % f for f in figures)
                     + ("%.2f" % load_s,))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def nft_version():
    return subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.split()[1]


if __name__ == "__main__":
    main()
