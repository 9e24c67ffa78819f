"""The Lab: a Qubes 4.2 or 4.3 network of qubes and outside hosts in network namespaces.

Plumbing as Qubes' setup-ip and vif-route-qubes do it: for each client C of netvm N, one veth pair
``eth0`` (in C: group 1, IP_C/32, gateway IP_N as permanent neighbour fe:ff:ff:ff:ff:ff,
route IP_N scope link, default via IP_N onlink) <-> ``vif<K>.0`` (in N: MAC
fe:ff:ff:ff:ff:ff, group 2, IP_N/32, permanent neighbour for C, proxy_arp=1, route
IP_C/32 metric 32752-K), K a stand-in domid.  Outside hosts hang off an uplink qube's
``ens*`` interface (group 0).  Veth pairs are created directly inside their namespaces,
so the root namespace never holds a lab interface.

IPv6, where the ``ipv6`` feature gives it (tests.lab.ipv6; core-agent-linux network/setup-ip
and vif-route-qubes, release4.2 = release4.3): C's eth0 also gets IP6_C/128, and when N gives
a gateway6 (GW6 = N's ip6): GW6 as permanent neighbour fe:ff:ff:ff:ff:ff, route GW6/128 scope
link, default via GW6 onlink.  N's vif gets a permanent neighbour and a route (metric
32752-K) for IP6_C and, when N has a gateway6, GW6/128 and proxy_ndp=1.  Addresses are added
without duplicate address detection (``nodad``): on Qubes it succeeds (nobody else has the
address), here it would only delay use by a second.
"""

import atexit
import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from tests.lab import boot, ipv6, netns, probes, qubes_base, qubesdb
from tests.lab.spec import FirewallRule, OutsideHost, QubeSpec, validate

_PROBES_SCRIPT = str(Path(probes.__file__).resolve())


def default_release() -> str:
    """The release a Lab emulates when not told: $QF_LAB_RELEASE, else 4.3."""
    return os.environ.get("QF_LAB_RELEASE", "").strip() or qubes_base.DEFAULT_RELEASE


def default_fixed_qubes_iptables() -> bool:
    """Whether a Lab emulates a fixed qubes-iptables when not told: $QF_LAB_FIXED_QUBES_IPTABLES=1."""
    return os.environ.get("QF_LAB_FIXED_QUBES_IPTABLES", "").strip().lower() in ("1", "true", "yes")
_VIF_MAC = "fe:ff:ff:ff:ff:ff"


@dataclasses.dataclass
class Server:
    """A banner server running in a node; stop() ends it (teardown does it anyway)."""

    node: str
    proto: str
    port: int
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Lab:
    """Build with ``with Lab(qubes, outside, workdir=tmp_path, release="4.3") as lab:``.

    qubes: name -> QubeSpec.  outside: OutsideHost list.  workdir: where each qube's
    emulated /rw/config lives (workdir/qubes/<name>/rw/config) and each template's root
    (workdir/templates/<template>/root); a temporary directory (removed at close) when None.
    uplink_dns: resolvers of uplink qubes (no netvm), used for their dnat-dns chain and
    specialtarget=dns; None = none (dnat-dns drops DNS).  release: the Qubes release
    emulated, "4.2" or "4.3" (see qubes_base and boot for what differs); None: the
    environment's QF_LAB_RELEASE, else "4.3".  fixed_qubes_iptables: emulate a qubes-iptables
    whose IPv6 test works, loading qubes-ipv6-disabled.nft (``ip6 qbs-filter``) instead of
    the full ``ip6 qubes`` in qubes without IPv6; False (Qubes 4.2 and 4.3 as released: the
    full ``ip6 qubes`` everywhere); None: $QF_LAB_FIXED_QUBES_IPTABLES=1, else False.
    """

    def __init__(self, qubes: Mapping[str, QubeSpec], outside: Sequence[OutsideHost] = (),
                 workdir: Union[str, Path, None] = None, uplink_dns: Optional[Sequence[str]] = None,
                 release: Optional[str] = None, fixed_qubes_iptables: Optional[bool] = None):
        self.release: str = qubes_base.check_release(release or default_release())
        self.fixed_qubes_iptables: bool = (default_fixed_qubes_iptables() if fixed_qubes_iptables is None
                                           else bool(fixed_qubes_iptables))
        self._qubes: Dict[str, QubeSpec] = dict(qubes)
        self._initial_qubes: Dict[str, QubeSpec] = dict(qubes)
        outside = list(outside)
        self.order: List[str] = validate(self._qubes, outside)
        self._net6: Dict[str, ipv6.Net6] = ipv6.compute(self._qubes)
        self._outside: Dict[str, OutsideHost] = {h.name: h for h in outside}
        self.uplink_dns = list(uplink_dns or [])
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="qfl-lab-")) if workdir is None else Path(workdir)
        self.prefix = netns.new_prefix()
        self._namespaces: List[str] = []
        self._servers: List[Server] = []
        self._logs: Dict[str, List[str]] = {name: [] for name in self._qubes}
        self._domid: Dict[str, int] = {}
        self._client_mac: Dict[str, str] = {}
        self._next_domid = 2
        self._closed = False
        atexit.register(self.close)
        try:
            netns.cleanup_stale()
            self._build()
        except BaseException:
            self.close()
            raise

    # ----- context manager / teardown -----------------------------------------------

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_errors=exc_type is None)

    def close(self, raise_errors: bool = False) -> None:
        """Stop every server, delete every namespace of this lab.  Idempotent; tries all
        steps even when some fail."""
        if self._closed:
            return
        self._closed = True
        errors: List[str] = []
        for server in self._servers:
            try:
                server.stop()
            except Exception as exc:  # keep tearing down
                errors.append("server {}/{}:{}: {}".format(server.node, server.proto, server.port, exc))
        leftovers = [ns for ns in netns.list_lab_namespaces() if ns.startswith(self.prefix)]
        for ns in list(dict.fromkeys(self._namespaces + leftovers)):
            try:
                netns.delete(ns)
            except Exception as exc:
                errors.append("netns {}: {}".format(ns, exc))
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        try:
            atexit.unregister(self.close)
        except Exception:
            pass
        if errors:
            message = "lab teardown incomplete:\n" + "\n".join(errors)
            if raise_errors:
                raise RuntimeError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    # ----- names and facts ------------------------------------------------------------

    @property
    def qubes(self) -> Dict[str, QubeSpec]:
        return dict(self._qubes)

    @property
    def outside_hosts(self) -> Dict[str, OutsideHost]:
        return dict(self._outside)

    @property
    def namespaces(self) -> List[str]:
        return list(self._namespaces)

    def spec(self, qube: str) -> QubeSpec:
        try:
            return self._qubes[qube]
        except KeyError:
            raise KeyError("not a qube of this lab: {!r}".format(qube)) from None

    def netns(self, node: str) -> str:
        """Namespace name of a qube or outside host."""
        if node not in self._qubes and node not in self._outside:
            raise KeyError("not a node of this lab: {!r}".format(node))
        return self.prefix + node

    def ip(self, node: str) -> str:
        """Address of a qube (its Qubes IP) or an outside host (host_ip without /len)."""
        if node in self._qubes:
            return self._qubes[node].ip
        if node in self._outside:
            return self._outside[node].host_ip.split("/")[0]
        raise KeyError("not a node of this lab: {!r}".format(node))

    def ip6(self, node: str) -> Optional[str]:
        """IPv6 address of a qube (its ip6, None when IPv6 is not on for it) or of an outside
        host (host_ip6 without /len, or None)."""
        if node in self._qubes:
            return self._net6[node].ip6
        if node in self._outside:
            host_ip6 = self._outside[node].host_ip6
            return host_ip6.split("/")[0] if host_ip6 else None
        raise KeyError("not a node of this lab: {!r}".format(node))

    def ipv6_enabled(self, qube: str) -> bool:
        """The ``ipv6`` feature as Qubes reads it for the qube (check_with_netvm)."""
        self.spec(qube)
        return self._net6[qube].enabled

    def gateway6(self, qube: str) -> Optional[str]:
        """The qube's IPv6 gateway (its netvm's ip6 when IPv6 is on for both), else None."""
        self.spec(qube)
        return self._net6[qube].visible_gateway6

    def loads_ipv6_disabled(self, qube: str) -> bool:
        """Whether the qube's boot loads qubes-ipv6-disabled.nft instead of qubes-ipv6.nft:
        only with fixed_qubes_iptables, in a qube with neither /qubes-ip6 nor
        /qubes-netvm-gateway6 (network/qubes-iptables)."""
        data = self.qubesdb(qube)
        return self.fixed_qubes_iptables and "/qubes-ip6" not in data and "/qubes-netvm-gateway6" not in data

    def clients_of(self, qube: str) -> List[str]:
        """Qubes whose netvm is `qube`, in build order."""
        return [name for name in self.order if self._qubes[name].netvm == qube]

    def vif(self, client: str) -> str:
        """Name of client's vif in its netvm (e.g. 'vif3.0')."""
        return "vif{}.0".format(self._domid[client])

    def domid(self, client: str) -> int:
        return self._domid[client]

    def rw_config(self, qube: str) -> Path:
        """The qube's emulated /rw/config directory."""
        self.spec(qube)
        return self.workdir / "qubes" / qube / "rw" / "config"

    def template_dir(self, template: str) -> Path:
        """The emulated root filesystem of a template (its /etc holds etc/qubes and
        etc/systemd/system); created on first use."""
        path = self.workdir / "templates" / template / "root"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def root_dir(self, qube: str) -> Path:
        """The qube's emulated root filesystem: its template's (shared by every qube of that
        template), or one of its own when its QubeSpec names no template."""
        spec = self.spec(qube)
        if spec.template is not None:
            return self.template_dir(spec.template)
        path = self.workdir / "qubes" / qube / "root"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def etc_qubes(self, qube: str) -> Path:
        """<root>/etc/qubes of the qube: what the formula's ``lookup:etc_qubes`` should name
        (qubes-firewall runs its qubes-firewall.d/* at every start, custom-persist or not)."""
        return self.root_dir(qube) / "etc" / "qubes"

    def systemd_dir(self, qube: str) -> Path:
        """<root>/etc/systemd/system of the qube: what ``lookup:systemd_dir`` should name
        (units enabled in multi-user.target.wants/ run at boot, see boot.py)."""
        return self.root_dir(qube) / "etc" / "systemd" / "system"

    def custom_persist(self, qube: str) -> bool:
        """Whether the qube's boot honours custom-persist (set in its QubeSpec, release 4.3)."""
        return self.spec(qube).custom_persist and self.release != "4.2"

    def template(self, qube: str) -> Optional[str]:
        return self.spec(qube).template

    def bin_dir(self, qube: str) -> Path:
        """Directory put first on PATH in the qube (holds the qubesdb-read stub)."""
        return self.workdir / "qubes" / qube / "bin"

    def resolvers_of(self, qube: str) -> List[str]:
        """The provider's own DNS servers (its resolv.conf): 10.139.1.1/2 behind a netvm."""
        if self._qubes[qube].netvm is not None:
            return list(qubes_base.VIRTUAL_DNS)
        return list(self.uplink_dns)

    def qubesdb(self, qube: str) -> Dict[str, str]:
        """The QubesDB keys the qube's qubesdb-read stub answers."""
        spec = self.spec(qube)
        netvm_ip = self._qubes[spec.netvm].ip if spec.netvm else None
        connected = [self.ip(c) for c in self.clients_of(qube)]
        services = ["custom-persist"] if self.custom_persist(qube) else []
        net6 = self._net6[qube]
        connected6 = [self._net6[c].ip6 for c in self.clients_of(qube) if self._net6[c].ip6]
        return qubesdb.entries(qube, spec.ip, netvm_ip, spec.provides_network, connected, services,
                               ip6=net6.ip6, gateway6=net6.visible_gateway6,
                               netvm_gateway6=net6.gateway6 if spec.provides_network else None,
                               connected6=connected6)

    def boot_log(self, qube: str) -> str:
        """Output of every user script run in the qube so far (boots, restarts, hooks)."""
        self.spec(qube)
        return "".join(self._logs[qube])

    # ----- running things in a node ---------------------------------------------------

    def env(self, node: str, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """Environment for commands in a node: PATH starts with the stub dir (qubes),
        QF_LAB_QUBE=<name>, QF_LAB_RW_CONFIG=<its rw_config>, QF_LAB_ROOT=<its root_dir>."""
        env = dict(os.environ)
        if node in self._qubes:
            env["PATH"] = "{}:{}".format(self.bin_dir(node), env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
            env["QF_LAB_RW_CONFIG"] = str(self.rw_config(node))
            env["QF_LAB_ROOT"] = str(self.root_dir(node))
        env["QF_LAB_QUBE"] = node
        if extra:
            env.update(extra)
        return env

    def run(self, node: str, argv: Sequence[str], check: bool = True, input: Optional[str] = None,
            env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = 120) -> subprocess.CompletedProcess:
        """Run argv as root in the node's namespace; text output captured.  env adds to
        the node's environment (see env())."""
        return netns.exec_in(self.netns(node), argv, check=check, input=input,
                             env=self.env(node, env), timeout=timeout)

    def sh(self, node: str, command: str, check: bool = True, input: Optional[str] = None,
           env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = 120) -> subprocess.CompletedProcess:
        """Run a shell command line (sh -c) in the node's namespace."""
        return self.run(node, ["sh", "-c", command], check=check, input=input, env=env, timeout=timeout)

    def nft_load(self, node: str, text: str, check: bool = True) -> subprocess.CompletedProcess:
        """`nft -f -` with text in the node (one transaction)."""
        return self.run(node, ["nft", "-f", "-"], input=text, check=check)

    def nft_json(self, node: str) -> dict:
        """The node's ruleset as parsed `nft -j list ruleset`."""
        return json.loads(self.run(node, ["nft", "-j", "list", "ruleset"]).stdout)

    def chain_rules(self, node: str, chain: str, table: str = "qubes", family: str = "ip") -> List[str]:
        """Rules of one chain as `nft -s list chain` prints them (no counters), one per item;
        the base-chain 'type ...' line is left out.  Missing chain: CalledProcessError."""
        out = self.run(node, ["nft", "-s", "list", "chain", family, table, chain]).stdout
        rules = []
        for line in out.splitlines():
            line = line.strip()
            if not line or line == "}" or line.startswith(("table ", "chain ", "type ")):
                continue
            rules.append(line)
        return rules

    def _write_proc(self, node: str, values: Mapping[str, str]) -> None:
        script = "".join('echo {} > /proc/sys/{}\n'.format(v, k) for k, v in values.items())
        netns.exec_in(self.netns(node), ["sh", "-ec", script])

    def _log(self, qube: str, text: str) -> None:
        self._logs[qube].append(text)

    def _run_user_script(self, qube: str, script: Path, args: Sequence[str] = ()) -> None:
        """Run a /rw/config script as Qubes does: directly, as root, exit status ignored."""
        self._run_user_command(qube, [str(script)] + list(args))

    def _run_user_command(self, qube: str, argv: Sequence[str], label: str = "") -> None:
        """Run a boot command (script, unit ExecStart) as root, exit status ignored, logged."""
        try:
            proc = self.run(qube, list(argv), check=False, timeout=120)
            text = "$ {}{} (rc={})\n{}{}".format(label, " ".join(argv), proc.returncode, proc.stdout, proc.stderr)
        except (OSError, subprocess.SubprocessError) as exc:
            text = "$ {}{} failed to run: {}\n".format(label, " ".join(argv), exc)
        self._log(qube, text if text.endswith("\n") else text + "\n")

    # ----- servers and probes ---------------------------------------------------------

    def _serve(self, node: str, proto: str, port: int, report_peer: bool) -> Server:
        argv = ["ip", "netns", "exec", self.netns(node), sys.executable, _PROBES_SCRIPT,
                "serve", proto, node, str(int(port))]
        if report_peer:
            argv.append("--report-peer")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        server = Server(node, proto, int(port), proc)
        self._servers.append(server)
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != probes.READY:
            server.stop()
            err = proc.stderr.read() if proc.stderr and not proc.stderr.closed else ""
            raise RuntimeError("{} server on {}:{} did not start: {}".format(proto, node, port, err))
        return server

    def serve_tcp(self, node: str, port: int, report_peer: bool = False) -> Server:
        """Background TCP server on 0.0.0.0:port in the node answering "node:port" (or
        "node:port:peer_ip" with report_peer) to every connection."""
        return self._serve(node, "tcp", port, report_peer)

    def serve_udp(self, node: str, port: int, report_peer: bool = False) -> Server:
        """Same as serve_tcp, answering each UDP datagram."""
        return self._serve(node, "udp", port, report_peer)

    def _dest(self, dest: str) -> str:
        if dest in self._qubes or dest in self._outside:
            return self.ip(dest)
        return dest

    def _dest6(self, dest: str) -> str:
        if dest in self._qubes or dest in self._outside:
            ip6 = self.ip6(dest)
            if ip6 is None:
                raise ValueError("{} has no IPv6 address in this lab".format(dest))
            return ip6
        return dest

    def probe_tcp_result(self, node: str, dest: str, port: int, source: Optional[str] = None,
                         timeout: float = 2.0) -> probes.ProbeResult:
        """TCP probe from node to dest:port (dest: an address or a node name)."""
        ip = self._dest(dest)
        return netns.call_in(self.netns(node), lambda: probes.probe_tcp(ip, port, source, timeout))

    def probe_udp_result(self, node: str, dest: str, port: int, source: Optional[str] = None,
                         timeout: float = 2.0) -> probes.ProbeResult:
        ip = self._dest(dest)
        return netns.call_in(self.netns(node), lambda: probes.probe_udp(ip, port, source, timeout))

    def probe_tcp(self, node: str, dest: str, port: int, source: Optional[str] = None,
                  timeout: float = 2.0) -> Optional[str]:
        """Banner answered (e.g. "web:443"), or None when refused, rejected or timed out."""
        return self.probe_tcp_result(node, dest, port, source, timeout).banner

    def probe_udp(self, node: str, dest: str, port: int, source: Optional[str] = None,
                  timeout: float = 2.0) -> Optional[str]:
        return self.probe_udp_result(node, dest, port, source, timeout).banner

    def probe_tcp6_result(self, node: str, dest: str, port: int, source: Optional[str] = None,
                          timeout: float = 2.0) -> probes.ProbeResult:
        """TCP probe over IPv6 from node to dest:port (dest: an IPv6 address or a node name,
        meaning its ip6).  probe_tcp_result takes IPv6 literals too."""
        ip = self._dest6(dest)
        return netns.call_in(self.netns(node), lambda: probes.probe_tcp(ip, port, source, timeout))

    def probe_udp6_result(self, node: str, dest: str, port: int, source: Optional[str] = None,
                          timeout: float = 2.0) -> probes.ProbeResult:
        ip = self._dest6(dest)
        return netns.call_in(self.netns(node), lambda: probes.probe_udp(ip, port, source, timeout))

    def probe_tcp6(self, node: str, dest: str, port: int, source: Optional[str] = None,
                   timeout: float = 2.0) -> Optional[str]:
        """Banner answered over IPv6, or None."""
        return self.probe_tcp6_result(node, dest, port, source, timeout).banner

    def probe_udp6(self, node: str, dest: str, port: int, source: Optional[str] = None,
                   timeout: float = 2.0) -> Optional[str]:
        return self.probe_udp6_result(node, dest, port, source, timeout).banner

    def stop_servers(self) -> None:
        """Stop every server started so far."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.stop()

    # ----- Qubes life cycle -----------------------------------------------------------

    def reset(self) -> None:
        """Back to the state right after build: servers stopped, every rw_config and root
        (template) directory emptied, every qube's firewall_rules as given at build, every
        qube rebooted (uplinks first).  Lets tests share one lab.  Routes or addresses a test
        added are not undone."""
        self.stop_servers()
        self._qubes = dict(self._initial_qubes)
        shutil.rmtree(self.workdir / "templates", ignore_errors=True)
        for name in self.order:
            rw = self.rw_config(name)
            shutil.rmtree(rw)
            rw.mkdir(parents=True)
            shutil.rmtree(self.workdir / "qubes" / name / "root", ignore_errors=True)
            self._logs[name] = []
        for name in self.order:
            self.reboot(name)

    def reboot(self, qube: str) -> None:
        """Flush the qube's ruleset and replay its boot (base tables, qubes-firewall and its
        scripts, client chains, dnat-dns, ip_forward, rc.local), then its clients' vif set
        elements.  Links, addresses, routes, running servers and conntrack entries stay."""
        boot.boot(self, qube)
        for client in self.clients_of(qube):
            boot.vif_online(self, qube, client)

    def restart_qube(self, qube: str) -> None:
        """qvm-shutdown + qvm-start of a qube that serves no client: its servers stop, it gets
        a new domid, so a new veth pair (new ``eth0`` ifindex, new ``vif<K>.0`` name in its
        netvm, whose set elements are swapped as vif-route-qubes offline/online does), then
        it boots.  Rules that pinned the old interface (``iif``, a vif name) stop matching."""
        if self.clients_of(qube):
            raise ValueError("{} serves clients {}; restart them elsewhere first".format(
                qube, ", ".join(self.clients_of(qube))))
        node_ns = self.netns(qube)
        for server in [s for s in self._servers if s.node == qube]:
            server.stop()
            self._servers.remove(server)
        netvm = self.spec(qube).netvm
        if netvm is not None:
            old_vif = self.vif(qube)
            for addr in [self.ip(qube)] + ([self.ip6(qube)] if self.ip6(qube) else []):
                self.nft_load(netvm, qubes_base.vif_offline(old_vif, addr), check=False)
            netns.exec_in(self.netns(netvm), ["ip", "link", "del", old_vif])
            self._new_domid(qube)
            self._link_client(qube)
        netns.kill_pids(netns.pids(node_ns))
        boot.boot(self, qube)
        if netvm is not None:
            boot.vif_online(self, netvm, qube)

    def restart_qubes_firewall(self, qube: str) -> None:
        """`systemctl restart qubes-firewall`: delete and recreate ip/ip6 qubes-firewall,
        re-run <root>/etc/qubes/qubes-firewall.d, then (without custom-persist)
        /rw/config/qubes-firewall.d and the user script, re-add client chains.  ip qubes stays."""
        if not self.spec(qube).runs_qubes_firewall:
            raise ValueError("{} does not run the qubes-firewall service".format(qube))
        boot.restart_qubes_firewall(self, qube)

    def reload_qubes_firewall(self, qube: str) -> None:
        """4.3 only: `systemctl reload qubes-firewall` (SIGHUP): every client's qbs- chain
        and the dns-addr set refilled; no script runs, nothing else changes."""
        if not self.spec(qube).runs_qubes_firewall:
            raise ValueError("{} does not run the qubes-firewall service".format(qube))
        if self.release == "4.2":
            raise ValueError("Qubes 4.2's qubes-firewall cannot reload (no SIGHUP handler)")
        boot.reload_qubes_firewall(self, qube)

    def set_firewall_rules(self, client: str, rules: Optional[Sequence[FirewallRule]]) -> None:
        """Like qvm-firewall / admin.vm.firewall.Set: replace the client's whole list and
        refill its qbs- chain in its netvm (one transaction)."""
        spec = self.spec(client)
        self._qubes[client] = dataclasses.replace(spec, firewall_rules=None if rules is None else list(rules))
        netvm = spec.netvm
        if netvm is not None and self._qubes[netvm].runs_qubes_firewall:
            boot.fill_client_chain(self, netvm, client)

    def _client_chain_rules(self, client: str, family: int = 4) -> List[str]:
        netvm = self._qubes[client].netvm
        dns = self.resolvers_of(netvm) if netvm else []
        return qubes_base.client_rules(self._qubes[client].firewall_rules, dns, self.release, family)

    # ----- build ----------------------------------------------------------------------

    def _build(self) -> None:
        for name in self.order:
            rw = self.rw_config(name)
            if rw.exists():
                shutil.rmtree(rw)
            rw.mkdir(parents=True)
            self._logs[name] = []
        for name in self.order + list(self._outside):
            ns = self.netns(name)
            self._namespaces.append(ns)
            netns.create(ns)
        for name in self.order:
            qubesdb.write_stub(self.bin_dir(name), name, self.qubesdb(name))
        for name in self.order:
            if self._qubes[name].netvm is not None:
                self._new_domid(name)
                self._link_client(name)
        for host in self._outside.values():
            self._link_outside(host)
        for name in self.order:
            boot.boot(self, name)
        for name in self.order:
            netvm = self._qubes[name].netvm
            if netvm is not None:
                boot.vif_online(self, netvm, name)

    def _new_domid(self, client: str) -> None:
        self._domid[client] = self._next_domid
        self._client_mac[client] = "00:16:3e:5e:6c:{:02x}".format(self._next_domid % 256)
        self._next_domid += 1

    def _ip_batch(self, node: str, lines: Sequence[str]) -> None:
        netns.exec_in(self.netns(node), ["ip", "-batch", "-"], input="\n".join(lines) + "\n")

    def _link_client(self, client: str) -> None:
        spec = self._qubes[client]
        netvm = spec.netvm
        ip_c, ip_n = spec.ip, self._qubes[netvm].ip
        ip6_c, gw6 = self._net6[client].ip6, self._net6[client].visible_gateway6
        back6 = self._net6[netvm].gateway6  # the netvm's /qubes-netvm-gateway6
        vif, mac, domid = self.vif(client), self._client_mac[client], self._domid[client]
        netns.run_root(["ip", "link", "add", "eth0", "address", mac, "netns", self.netns(client),
                        "type", "veth", "peer", "name", vif, "address", _VIF_MAC,
                        "netns", self.netns(netvm)])
        lines = ["link set eth0 group 1 up", "addr add {}/32 dev eth0".format(ip_c),
                 "neigh replace {} lladdr {} dev eth0 nud permanent".format(ip_n, _VIF_MAC)]
        if ip6_c:  # setup-ip configure_network: address, gateway6 neighbour
            lines.append("addr add {}/128 dev eth0 nodad".format(ip6_c))
            if gw6:
                lines.append("neigh replace {} lladdr {} dev eth0 nud permanent".format(gw6, _VIF_MAC))
        lines.append("route add {} dev eth0 scope link".format(ip_n))
        if ip6_c and gw6 and not gw6.startswith("fe80:"):
            lines.append("route add {}/128 dev eth0 scope link".format(gw6))
        lines.append("route add default via {} dev eth0 onlink".format(ip_n))
        if ip6_c and gw6:
            lines.append("route add default via {} dev eth0 onlink".format(gw6))
        self._ip_batch(client, lines)
        lines = ["neigh replace {} lladdr {} dev {} nud permanent".format(ip_c, mac, vif)]
        if ip6_c:  # vif-route-qubes: a neighbour per client address
            lines.append("neigh replace {} lladdr {} dev {} nud permanent".format(ip6_c, mac, vif))
        lines.append("link set {} group 2 up".format(vif))
        self._ip_batch(netvm, lines)
        proc = {"net/ipv4/conf/{}/proxy_arp".format(vif): "1"}
        lines = ["route add {}/32 dev {} metric {}".format(ip_c, vif, 32752 - domid)]
        if ip6_c:
            lines.append("route add {}/128 dev {} metric {}".format(ip6_c, vif, 32752 - domid))
        lines.append("addr add {}/32 dev {}".format(ip_n, vif))
        if back6 and not back6.startswith("fe80:"):
            lines.append("addr add {}/128 dev {} nodad".format(back6, vif))
            proc["net/ipv6/conf/{}/proxy_ndp".format(vif)] = "1"
        self._write_proc(netvm, proc)
        self._ip_batch(netvm, lines)

    def _link_outside(self, host: OutsideHost) -> None:
        netns.run_root(["ip", "link", "add", host.ifname, "netns", self.netns(host.uplink),
                        "type", "veth", "peer", "name", host.host_ifname, "netns", self.netns(host.name)])
        uplink_addr = host.uplink_ip.split("/")[0]
        lines = ["addr add {} dev {}".format(host.uplink_ip, host.ifname)]
        if host.uplink_ip6:
            lines.append("addr add {} dev {} nodad".format(host.uplink_ip6, host.ifname))
        lines.append("link set {} up".format(host.ifname))
        if host.default_route:
            lines.append("route add default via {} dev {}".format(host.host_ip.split("/")[0], host.ifname))
            if host.host_ip6:
                lines.append("route add default via {} dev {}".format(host.host_ip6.split("/")[0], host.ifname))
        self._ip_batch(host.uplink, lines)
        lines = ["addr add {} dev {}".format(addr, host.host_ifname)
                 for addr in [host.host_ip] + list(host.extra_ips)]
        lines += ["addr add {} dev {} nodad".format(addr, host.host_ifname)
                  for addr in ([host.host_ip6] if host.host_ip6 else []) + list(host.extra_ips6)]
        lines += ["link set {} up".format(host.host_ifname),
                  "route add default via {} dev {}".format(uplink_addr, host.host_ifname)]
        if host.uplink_ip6:
            lines.append("route add default via {} dev {}".format(host.uplink_ip6.split("/")[0], host.host_ifname))
        self._ip_batch(host.name, lines)
