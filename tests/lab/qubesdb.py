"""The QubesDB view of a lab qube, and a `qubesdb-read` stub that serves it.

Keys follow core-admin's create_qdb_entries (Qubes 4.2): every qube has /name; a qube
with a netvm has /qubes-ip, /qubes-netmask, /qubes-gateway (its netvm's IP) and the
/qubes-*-dns pair; a qube that provides network has /qubes-netvm-gateway (its own IP),
/qubes-netvm-network, /qubes-netvm-netmask, /qubes-netvm-*-dns and /connected-ips.
So sys-net (no netvm) has no /qubes-ip, and an app qube has no /qubes-netvm-gateway:
the stub exits 1 for them, as qubesdb-read does on Qubes.

IPv6 (tests.lab.ipv6): a qube with a netvm and an ip6 has /qubes-ip6, and /qubes-gateway6
when its netvm gives one; a provider with a gateway6 has /qubes-netvm-gateway6 (its own
ip6); /connected-ips6 lists the clients' ip6 (empty without IPv6).  No /qubes-netmask6:
Qubes writes none (setup-ip defaults to 128).
"""

import os
import shlex
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from tests.lab.qubes_base import VIRTUAL_DNS


def entries(name: str, ip: str, netvm_ip: Optional[str], provides_network: bool,
            connected: Sequence[str] = (), services: Sequence[str] = (), ip6: Optional[str] = None,
            gateway6: Optional[str] = None, netvm_gateway6: Optional[str] = None,
            connected6: Sequence[str] = ()) -> Dict[str, str]:
    """QubesDB keys and values of one qube; services: names enabled as /qubes-service/NAME = 1
    (only those the lab emulates, e.g. custom-persist).  ip6 / gateway6: the qube's
    visible_ip6 / visible_gateway6; netvm_gateway6: the gateway6 it gives its clients;
    connected6: its clients' ip6."""
    data = {"/name": name}
    for service in services:
        data["/qubes-service/" + service] = "1"
    if provides_network:
        data.update({
            "/qubes-netvm-network": ip,
            "/qubes-netvm-gateway": ip,
            "/qubes-netvm-netmask": "255.255.255.255",
            "/qubes-netvm-primary-dns": VIRTUAL_DNS[0],
            "/qubes-netvm-secondary-dns": VIRTUAL_DNS[1],
            "/connected-ips": " ".join(connected),
            "/connected-ips6": " ".join(connected6),
        })
        if netvm_gateway6:
            data["/qubes-netvm-gateway6"] = netvm_gateway6
    if netvm_ip is not None:
        data.update({
            "/qubes-ip": ip,
            "/qubes-netmask": "255.255.255.255",
            "/qubes-gateway": netvm_ip,
            "/qubes-primary-dns": VIRTUAL_DNS[0],
            "/qubes-secondary-dns": VIRTUAL_DNS[1],
        })
        if ip6:
            data["/qubes-ip6"] = ip6
        if gateway6:
            data["/qubes-gateway6"] = gateway6
    return data


_STUB = """\
#!/bin/sh
# qubesdb-read stub of the qubes-firewall-formula lab, for qube {name}.
# Usage like the real tool: qubesdb-read [-q] [-d DEFAULT] PATH...
default=""; has_default=0; quiet=0
while [ $# -gt 0 ]; do
  case "$1" in
    -d) has_default=1; default="$2"; shift 2 ;;
    -q) quiet=1; shift ;;
    -r|-w|--) shift ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || {{ echo "usage: qubesdb-read [-q] [-d DEFAULT] PATH..." >&2; exit 2; }}
rc=0
for key in "$@"; do
  case "$key" in
{cases}
    *)
      if [ "$has_default" = 1 ]; then printf '%s\\n' "$default"
      else [ "$quiet" = 1 ] || echo "Failed to read $key" >&2; rc=1; fi ;;
  esac
done
exit $rc
"""


def write_stub(bin_dir: Path, name: str, data: Mapping[str, str]) -> Path:
    """Write an executable bin_dir/qubesdb-read answering from data; return its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    cases = "\n".join("    {}) printf '%s\\n' {} ;;".format(shlex.quote(key), shlex.quote(value))
                      for key, value in sorted(data.items()))
    path = bin_dir / "qubesdb-read"
    tmp = bin_dir / ".qubesdb-read.tmp"
    tmp.write_text(_STUB.format(name=name, cases=cases))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path
