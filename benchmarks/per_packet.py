"""
Benchmark (not a test): CPU per packet through sys-net with N port forwards,
the rule layout of this formula (one nat chain, hash maps and sets) side by
side with the previous one (one nat base chain per forward, one rule per
forward in qf-forward), and the same traffic over IPv6 (the layout's ``ip6
qubes`` objects, Qubes' ``ipv6`` feature on sys-net), in one run on the same lab.

    sudo .venv/salt-3008/bin/python -m benchmarks.per_packet [--forwards 0,10,1000,5000] [--families 4,6]

A quick check that it works: ``--forwards 0,10 --packets 20 --rounds 2``.

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
LAN_HOST6, SYS_NET_LAN6 = "2001:db8:1::50", "2001:db8:1::10"
# the addresses each family's traffic uses: the LAN host, sys-net on the LAN
ADDRS = {4: (LAN_HOST, SYS_NET_LAN), 6: (LAN_HOST6, SYS_NET_LAN6)}


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


def _packet(proto, src, dst, sport, dport, family=4):
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    saddr, daddr = socket.inet_pton(af, src), socket.inet_pton(af, dst)
    if proto == "tcp":
        head = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
        number = socket.IPPROTO_TCP
    else:
        head = struct.pack("!HHHH", sport, dport, 8, 0)
        number = socket.IPPROTO_UDP
    if family == 6:
        pseudo = saddr + daddr + struct.pack("!I3xB", len(head), number)
    else:
        pseudo = saddr + daddr + struct.pack("!BBH", 0, number, len(head))
    csum = _checksum(pseudo + head)
    if proto == "tcp":
        head = head[:16] + struct.pack("!H", csum) + head[18:]
    else:
        head = head[:6] + struct.pack("!H", csum or 0xFFFF)
    if family == 6:
        return struct.pack("!IHBB16s16s", 6 << 28, len(head), number, 64, saddr, daddr) + head
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(head), 0, 0, 64, number, 0, saddr, daddr)
    return ip + head


def _flow(index, fixed_source, family=4):
    """A source address and port nobody used before in this run (outside the LAN: routed)."""
    sport = 1024 + index % 60000
    if fixed_source:
        return fixed_source, sport
    host = index // 60000
    if family == 6:
        return "2001:db8:100::%x" % (host + 1), sport
    return "192.168.%d.%d" % (100 + host // 254, host % 254 + 1), sport


def send(proto, dst, dport, offset, packets, rounds, fixed_source=None, family=4):
    """Per-packet ns of each batch (the sender's loop time / packets)."""
    os.sched_setaffinity(0, {0})
    sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out = []
    index = offset
    for _ in range(rounds):
        batch = []
        for _ in range(packets):
            src, sport = _flow(index, fixed_source, family)
            batch.append(_packet(proto, src, dst, sport, dport, family))
            index += 1
        target = (dst, 0) if family == 4 else (dst, 0, 0, 0)
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
    """sys-net and web with IPv6 (Qubes' ipv6 feature on sys-net), the LAN host on both families."""
    return Lab({"sys-net": QubeSpec(ip=SYS_NET, provides_network=True, ipv6="1"),
                "web": QubeSpec(ip=WEB, netvm="sys-net")},
               [OutsideHost(name="lan", uplink="sys-net", ifname="ens6", host_ip=LAN_HOST + "/24",
                            uplink_ip=SYS_NET_LAN + "/24", default_route=True,
                            host_ip6=LAN_HOST6 + "/64", uplink_ip6=SYS_NET_LAN6 + "/64")])


def pillar(n, addresses6=None):
    """N forwards to web; with ``addresses6`` (as dom0 hands them) planned for IPv6 too."""
    out = {
        "addresses": {"sys-net": SYS_NET, "web": WEB},
        "qubes": {"sys-net": {"netvm": None}, "web": {"netvm": "sys-net"}},
        "port_forwards": [{"name": "pf-%d" % i, "qube": "web", "port": 20000 + i, "external_port": 10000 + i,
                           "interfaces": ["ens6"]} for i in range(n)],
    }
    if addresses6:
        out["addresses6"] = addresses6
    return out


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


def new_script(n, live, addresses6=None):
    return nft.transaction(plan.plan_qube(model.parse(pillar(n, addresses6)), "sys-net"), live)[0]


def clear(the_lab):
    script, _ = nft.transaction(None, nft.live_state(the_lab.nft_json("sys-net")))
    if script:
        the_lab.nft_load("sys-net", script)


def measure(the_lab, node, args):
    proc = the_lab.run(node, [sys.executable, "-m", "benchmarks.per_packet", "--send", json.dumps(args)],
                       env={"PYTHONPATH": str(REPO)}, timeout=600)
    return min(json.loads(proc.stdout)) / 1000.0


def _layout(the_lab, old, n, layout, family):
    """Load one layout (its load time in s), or the reason it cannot be loaded."""
    clear(the_lab)
    if layout == "old":
        script = old_script(old, n)
    else:
        addresses6 = {q: the_lab.ip6(q) for q in ("sys-net", "web")} if family == 6 else None
        script = new_script(n, nft.live_state(the_lab.nft_json("sys-net")), addresses6)
    start = time.monotonic()
    loaded = the_lab.nft_load("sys-net", script, check=False) if script else None
    load_s = time.monotonic() - start
    if loaded is not None and loaded.returncode != 0:
        error = next((line for line in loaded.stderr.splitlines() if "Error" in line), "error")
        return "cannot load (%s)" % error.split("Error: ", 1)[-1][:50]
    return load_s


def forwarded(the_lab, family, origin):
    """Did the DNAT map element of ``origin`` in that family's table count packets?"""
    live = nft.live_state(the_lab.nft_json("sys-net"))
    for ref, item in live["sets"].items():
        if ref.startswith("ip6 ") == (family == 6) and item["kind"] == "map":
            for elem in item["elements"].values():
                if elem["comment"] == "qf " + origin and (elem["counters"] or {}).get("packets"):
                    return True
    return False


def _figures(the_lab, n, family, common, offset, check=True):
    """(forwarded TCP SYN or None, unforwarded UDP, outbound UDP) in us per packet."""
    lan, uplink = ADDRS[family]
    web = the_lab.ip6("web") if family == 6 else WEB
    step = common["packets"] * common["rounds"]
    figures = []
    if n:
        figures.append(measure(the_lab, "lan", dict(common, proto="tcp", dst=uplink, dport=10000 + n - 1,
                                                       offset=offset, family=family)))
        if check and not forwarded(the_lab, family, "port_forwards:pf-%d" % (n - 1)):
            raise SystemExit("the forwarded TCP SYNs (IPv%d) were not DNATed: the figure would be a drop's" % family)
    else:
        figures.append(None)
    figures.append(measure(the_lab, "lan", dict(common, proto="udp", dst=uplink, dport=9, offset=offset + step,
                                               family=family)))
    figures.append(measure(the_lab, "web", dict(common, proto="udp", dst=lan, dport=9, offset=offset + 2 * step,
                                               fixed_source=web, family=family)))
    return figures, offset + 3 * step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forwards", default="0,10,1000,5000")
    parser.add_argument("--families", default="4,6", help="4, 6 or 4,6: the traffic measured")
    parser.add_argument("--packets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--send", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        print(json.dumps(send(**json.loads(args.send))))
        return
    counts = [int(n) for n in args.forwards.split(",")]
    families = [int(f) for f in args.families.split(",")]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qf-old-plan-"))
    (tmp / "old_plan.py").write_text(subprocess.run(
        ["git", "show", "%s:_modules/qubes_firewall_plan.py" % OLD_COMMIT], cwd=REPO,
        capture_output=True, text=True, check=True).stdout)
    old = _load_old(tmp / "old_plan.py")
    rows = []
    with lab() as the_lab:
        # warm-up (neighbour entries, caches): not reported
        offset = 0
        for family in families:
            lan, uplink = ADDRS[family]
            web = the_lab.ip6("web") if family == 6 else WEB
            warm = {"packets": args.packets, "rounds": 1, "proto": "udp", "dport": 9, "family": family}
            measure(the_lab, "web", dict(warm, dst=lan, offset=offset, fixed_source=web))
            measure(the_lab, "lan", dict(warm, dst=uplink, offset=offset))
            offset += args.packets
        common = {"packets": args.packets, "rounds": args.rounds}
        for n in counts:
            for family in families:
                # the previous layout is IPv4 only
                for layout in (("old", "new") if family == 4 else ("new",)):
                    loaded = _layout(the_lab, old, n, layout, family)
                    if isinstance(loaded, str):
                        rows.append((n, layout, family, loaded))
                        continue
                    figures, offset = _figures(the_lab, n, family, common, offset, check=layout == "new")
                    rows.append((n, layout, family, figures, loaded))
        clear(the_lab)
    print("us of CPU per packet through sys-net (min of %d x %d packets; nft %s)\n"
          % (args.rounds, args.packets, nft_version()))
    _print(rows)


def _print(rows):
    header = ("forwards", "layout", "family", "forwarded TCP SYN", "unforwarded UDP", "outbound UDP", "load s")
    table = [header]
    for row in rows:
        family = "IPv%d" % row[2]
        if isinstance(row[3], str):
            table.append((str(row[0]), row[1], family, row[3], "", "", ""))
            continue
        n, layout, _, figures, load_s = row
        table.append((str(n), layout, family) + tuple("-" if f is None else "%.1f" % f for f in figures)
                     + ("%.2f" % load_s,))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def nft_version():
    return subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.split()[1]


if __name__ == "__main__":
    main()
