"""The boot sequence of one qube, replayed in its namespace, for Qubes 4.2 and 4.3
(core-agent-linux release4.2 / release4.3: vm-systemd/*.service and misc-post.sh,
qubesagent/firewall.py, network/qubes-setup-dnat-to-ns, network/vif-route-qubes).

    flush ruleset, ip_forward=0, IPv6 forwarding=0
    base tables: antispoof, ipv4, ipv6                        (every qube)
        (ipv6-disabled instead of ipv6 with Lab(fixed_qubes_iptables=True), in a qube with
        neither /qubes-ip6 nor /qubes-netvm-gateway6: see qubes_base)
    qubes-firewall service (qubes with it):
        ip/ip6 qubes-firewall tables (4.3: + dns-addr set, qubes-forward chain)
        <root>/etc/qubes/qubes-firewall.d/* (sorted, executable regular files)
        <rw>/qubes-firewall.d/* (sorted, executable)              [not with custom-persist, 4.3]
        <rw>/qubes-firewall-user-script (if executable)          [not with custom-persist, 4.3]
        per-client-address qbs- chains (ip, and ip6 for clients with an ip6),
        connected-ips (and connected-ips6) rules
    dnat-dns, ip_forward=1                                    (providers: qubes-network)
        IPv6 forwarding=1 when the provider has /qubes-netvm-gateway6 (network-proxy-setup.sh)
        4.3: dnat-dns changed, so qubes-setup-dnat-to-ns reloads qubes-firewall (SIGHUP:
        every client chain refilled)
    <rw>/rc.local.d/*.rc (glob order), <rw>/rc.local (if executable, every qube)
                                                              [not with custom-persist, 4.3]
    systemd units enabled in <root>/etc/systemd/system/multi-user.target.wants/*.service:
        their ExecStart= lines, in unit name order            (every qube whose root has them)

then, in its netvm, each client vif comes online (vif-route-qubes): set elements of each
client address (ip, then ip6), then <rw>/network-hooks.d/* with "online VIF vif ADDR", once
per address (the IPv4 one, then the IPv6 one).  Exit status of user scripts is
ignored as on Qubes; their output goes to the qube's boot log.

<root> is the qube's emulated root filesystem (Lab.root_dir: its template's, shared by the
qubes of that template).  The systemd emulation is minimal: a unit counts as enabled when
multi-user.target.wants/ holds a file or symlink of its name; the unit file is read from
<root>/etc/systemd/system/<name> (a symlink's absolute target would point at the host);
each ``ExecStart=`` of its [Service] section runs (``-@:+!`` prefixes dropped, argv split
like a shell would, no variable expansion), after the rest of the boot: that is one order
systemd may choose for a unit with default dependencies and no After=/Before=.

The functions take the Lab (duck-typed) and a qube name.
"""

import os
import shlex
from pathlib import Path
from typing import List, Sequence

from tests.lab import qubes_base


def _executables(paths: Sequence[Path]) -> List[Path]:
    return [p for p in paths if p.is_file() and os.access(str(p), os.X_OK)]


def _sorted_dir(path: Path) -> List[Path]:
    return sorted(path.iterdir()) if path.is_dir() else []


def firewall_scripts(rw_config: Path, etc_qubes: Path = None, custom_persist: bool = False) -> List[Path]:
    """What qubes-firewall runs at (re)start, in order; only executable regular files.
    custom_persist: the 4.3 service is on (only <etc_qubes>/qubes-firewall.d/* runs)."""
    paths = _sorted_dir(etc_qubes / "qubes-firewall.d") if etc_qubes is not None else []
    if not custom_persist:
        paths += _sorted_dir(rw_config / "qubes-firewall.d") + [rw_config / "qubes-firewall-user-script"]
    return _executables(paths)


def rc_scripts(rw_config: Path, custom_persist: bool = False) -> List[Path]:
    """What qubes-misc-post runs, in order; only executable regular files (nothing with
    the 4.3 custom-persist service)."""
    if custom_persist:
        return []
    drop_in = rw_config / "rc.local.d"
    paths = sorted(drop_in.glob("*.rc")) if drop_in.is_dir() else []
    return _executables(paths + [rw_config / "rc.local"])


def enabled_units(systemd_dir: Path) -> List[Path]:
    """Unit files of the *.service units enabled for multi-user.target, by name."""
    wants = systemd_dir / "multi-user.target.wants"
    if not wants.is_dir():
        return []
    units = []
    for entry in sorted(wants.iterdir()):
        if not entry.name.endswith(".service"):
            continue
        unit = systemd_dir / entry.name
        if unit.is_file():
            units.append(unit)
        elif entry.is_file() and not entry.is_symlink():
            units.append(entry)
    return units


def exec_start(unit: Path) -> List[List[str]]:
    """The ExecStart= command lines of a unit's [Service] section, as argv lists."""
    # systemd allows repeated keys (several ExecStart= of a oneshot): keep them all.
    commands: List[List[str]] = []
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if section != "Service" or not sep or key.strip() != "ExecStart":
            continue
        value = value.strip()
        if not value:
            commands = []  # an empty ExecStart= resets the list
            continue
        value = value.lstrip("-@:+!")
        commands.append(shlex.split(value))
    return commands


def run_scripts(lab, name: str, scripts: Sequence[Path], args: Sequence[str] = ()) -> None:
    for script in scripts:
        lab._run_user_script(name, script, args)


def run_units(lab, name: str) -> None:
    for unit in enabled_units(lab.systemd_dir(name)):
        for argv in exec_start(unit):
            lab._run_user_command(name, argv, "{}: ".format(unit.name))


def _custom_persist(lab, name: str) -> bool:
    return lab.spec(name).custom_persist and lab.release != "4.2"


def _client_addrs(lab, client: str) -> List[str]:
    """The client's addresses as its vif lists them: ip, then ip6 if it has one."""
    ip6 = lab.ip6(client)
    return [lab.ip(client)] + ([ip6] if ip6 else [])


def load_client_chains(lab, name: str) -> None:
    """qubes-firewall's initial load: one qbs- chain per client address (/qubes-firewall/ADDR,
    ip and ip6), then /connected-ips and /connected-ips6."""
    clients = lab.clients_of(name)
    for client in clients:
        for addr in _client_addrs(lab, client):
            lab.nft_load(name, qubes_base.client_chain_create(addr, lab.release))
        fill_client_chain(lab, name, client)
    lab.nft_load(name, qubes_base.connected_ips([lab.ip(c) for c in clients]))
    ips6 = [lab.ip6(c) for c in clients if lab.ip6(c)]
    if ips6:
        lab.nft_load(name, qubes_base.connected_ips(ips6, 6))


def fill_client_chain(lab, name: str, client: str) -> None:
    """(Re)fill the client's qbs- chain of each of its addresses."""
    for addr in _client_addrs(lab, client):
        family = qubes_base.family_of(addr)
        lab.nft_load(name, qubes_base.client_chain_fill(addr, lab._client_chain_rules(client, family),
                                                        lab.release, lab.resolvers_of(name)))


def start_qubes_firewall(lab, name: str) -> None:
    lab.nft_load(name, qubes_base.qubes_firewall_tables(lab.release))
    scripts = firewall_scripts(lab.rw_config(name), lab.etc_qubes(name), _custom_persist(lab, name))
    run_scripts(lab, name, scripts)
    load_client_chains(lab, name)


def restart_qubes_firewall(lab, name: str) -> None:
    """systemctl restart qubes-firewall: stop deletes both tables, start rebuilds them and
    re-runs the scripts; ``ip qubes`` keeps whatever it had."""
    lab._log(name, "--- qubes-firewall restart\n")
    lab.nft_load(name, qubes_base.qubes_firewall_delete())
    start_qubes_firewall(lab, name)


def reload_qubes_firewall(lab, name: str) -> None:
    """4.3: SIGHUP (systemctl reload qubes-firewall): every client chain refilled, no
    script run, tables kept."""
    lab._log(name, "--- qubes-firewall reload\n")
    for client in lab.clients_of(name):
        fill_client_chain(lab, name, client)


def boot(lab, name: str) -> None:
    """Replay the boot of qube `name` on an empty ruleset (see module docstring)."""
    spec = lab.spec(name)
    lab._log(name, "--- boot\n")
    lab.sh(name, "nft flush ruleset")
    off = {"net/ipv4/ip_forward": "0"}
    if os.path.isdir("/proc/sys/net/ipv6"):  # a kernel booted with ipv6.disable=1 has none
        off["net/ipv6/conf/all/forwarding"] = "0"
    lab._write_proc(name, off)
    for text in qubes_base.base_tables(lab.loads_ipv6_disabled(name)):
        lab.nft_load(name, text)
    if spec.runs_qubes_firewall:
        start_qubes_firewall(lab, name)
    if spec.provides_network:
        lab.nft_load(name, qubes_base.dnat_dns(lab.resolvers_of(name)))
        if spec.runs_qubes_firewall and lab.release != "4.2":
            reload_qubes_firewall(lab, name)
        forwarding = {"net/ipv4/ip_forward": "1"}
        if "/qubes-netvm-gateway6" in lab.qubesdb(name):
            forwarding["net/ipv6/conf/all/forwarding"] = "1"
        lab._write_proc(name, forwarding)
    run_scripts(lab, name, rc_scripts(lab.rw_config(name), _custom_persist(lab, name)))
    run_units(lab, name)


def vif_online(lab, netvm: str, client: str) -> None:
    """vif-route-qubes 'online' for client's vif in netvm (set elements, network hooks), for
    each client address."""
    vif = lab.vif(client)
    addrs = _client_addrs(lab, client)
    lab.nft_load(netvm, "".join(qubes_base.vif_online(vif, addr) for addr in addrs))
    hooks_dir = lab.rw_config(netvm) / "network-hooks.d"
    hooks = _executables(sorted(hooks_dir.iterdir())) if hooks_dir.is_dir() else []
    for addr in addrs:
        run_scripts(lab, netvm, hooks, ["online", vif, "vif", addr])
