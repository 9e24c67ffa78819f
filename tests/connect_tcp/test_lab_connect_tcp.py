"""
Lab: the rendered policy and the installed socket units carry a connection from
the client qube to the server qube's port.  Each qube is a network namespace
with its own loopback; a stand-in for qrexec-client-vm (lab/qrexec_client_vm.py)
applies the rendered dom0 policy and relays to 127.0.0.1:PORT in the server's
namespace; systemd's Accept=true socket activation is emulated
(lab/socket_units.py) from the unit files the bindings state wrote.

Needs root (namespaces, ports below 1024 as in the manual page): skipped otherwise,
but failed when CI=true.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import QUBES, Minion, example_pillar, write_tool

pytestmark = pytest.mark.lab

LAB = Path(__file__).resolve().parent / "lab"
CLIENT = "untrusted"
SERVERS = {  # qube -> {port: banner}
    "mytcp-service": {444: "mytcp-service:444", 445: "mytcp-service:445"},
    "mytcp-service-bis": {445: "mytcp-service-bis:445"},
}

CLIENT_PROBE = r"""
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = sock.makefile("rwb")
banner = f.readline()
f.write(b"hello\n"); f.flush()
print(banner.decode().strip() + "|" + f.readline().decode().strip())
"""


def _need_root():
    why = None
    if os.geteuid() != 0:
        why = "the ConnectTCP lab needs root (network namespaces)"
    elif shutil.which("ip") is None:
        why = "the ConnectTCP lab needs iproute2 (ip netns)"
    if why and os.environ.get("CI") == "true":
        pytest.fail(why + " and CI=true")
    if why:
        pytest.skip(why)


def lab_pillar(tmp_path):
    """The manual page's example, every entry persistent: variants 1+4, 2 and 3 as socket units."""
    entries = [dict(e, persistent=True) for e in example_pillar()["connect_tcp"]]
    return {"connect_tcp": entries, "qubes": dict(QUBES),
            "lookup": {"rw_config": str(tmp_path / "rw"),
                       "policy_file": str(tmp_path / "policy.d" / "30-user-networking.policy")}}


class Lab:
    def __init__(self, tmp_path):
        self.prefix = "qfct%dx-" % os.getpid()
        self.namespaces = []
        self.procs = []
        self.tmp = tmp_path

    def netns(self, qube):
        name = self.prefix + qube
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.namespaces.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    def start(self, ns, argv, env=None):
        """Start argv in ns, wait for its "ready" line, return it."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        self.procs.append(proc)
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            pytest.fail("%s did not start: %s %s" % (argv, line, proc.stderr.read()))
        return line

    def probe(self, ns, port):
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT_PROBE, str(port)],
                              capture_output=True, text=True, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else "FAILED: " + proc.stderr.strip()[-300:]

    def close(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the relays it spawned too
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.fixture
def lab(tmp_path):
    _need_root()
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_seed_bindings_reach_the_server_ports_through_the_installed_units(tmp_path, lab):
    pillar = lab_pillar(tmp_path)
    dom0 = Minion("dom0", pillar)
    assert dom0.state("connect_tcp_policy_managed")["result"] is True
    client = Minion(CLIENT, pillar, qubes_firewall_systemd_run_dir=str(tmp_path / "no-systemd"))
    ret = client.state("connect_tcp_bindings_managed")
    assert ret["result"] is True, ret

    # the units as rc.local would install them: the files the state wrote
    units = tmp_path / "units"
    units.mkdir()
    for name in os.listdir(tmp_path / "rw"):
        if name.startswith("qf-connect-tcp-"):
            shutil.copy(tmp_path / "rw" / name, units / name)
    assert len(os.listdir(units)) == 6

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_tool(bin_dir, "qrexec-client-vm", (LAB / "qrexec_client_vm.py").read_text())
    env = dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"]), LAB_SOURCE=CLIENT,
               LAB_POLICY=pillar["lookup"]["policy_file"], LAB_NETNS_PREFIX=lab.prefix)

    for qube, ports in SERVERS.items():
        ns = lab.netns(qube)
        for port, banner in ports.items():
            lab.start(ns, [sys.executable, str(LAB / "banner_server.py"), str(port), banner])
    client_ns = lab.netns(CLIENT)
    ready = lab.start(client_ns, [sys.executable, str(LAB / "socket_units.py"), str(units)], env=env)
    assert ready.split()[1:] == ["10444", "444", "445"]

    # variant 1 (+4): @default, the policy sends 444 to mytcp-service
    assert lab.probe(client_ns, 444) == "mytcp-service:444|echo: hello"
    # variant 2: the client names mytcp-service, local port 10444
    assert lab.probe(client_ns, 10444) == "mytcp-service:444|echo: hello"
    # variant 3: 445 goes to mytcp-service-bis, not to mytcp-service's own 445
    assert lab.probe(client_ns, 445) == "mytcp-service-bis:445|echo: hello"


def test_stand_in_denies_what_the_policy_does_not_allow(tmp_path):
    sys.path.insert(0, str(LAB))
    try:
        import qrexec_client_vm as stand_in
    finally:
        sys.path.remove(str(LAB))
    pillar = lab_pillar(tmp_path)
    Minion("dom0", pillar).state("connect_tcp_policy_managed")
    policy = Path(pillar["lookup"]["policy_file"]).read_text()
    assert stand_in.decide(policy, "untrusted", "qubes.ConnectTCP", "444", "") == "mytcp-service"
    assert stand_in.decide(policy, "untrusted", "qubes.ConnectTCP", "444", "mytcp-service") == "mytcp-service"
    assert stand_in.decide(policy, "untrusted", "qubes.ConnectTCP", "445", "") == "mytcp-service-bis"
    # another qube, another port, or naming a server the policy only reaches by @default
    assert stand_in.decide(policy, "work", "qubes.ConnectTCP", "444", "") is None
    assert stand_in.decide(policy, "untrusted", "qubes.ConnectTCP", "22", "") is None
    assert stand_in.decide(policy, "untrusted", "qubes.ConnectTCP", "445", "mytcp-service-bis") is None
