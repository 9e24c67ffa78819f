"""The Qubes 4.2 boot sequence of one qube, replayed in its namespace (QUBES_FACTS 1.5, 4).

    flush ruleset, ip_forward=0
    base tables: antispoof, ipv4, ipv6                        (every qube)
    qubes-firewall service (qubes with it):
        ip/ip6 qubes-firewall tables
        <rw>/qubes-firewall.d/* (sorted, executable regular files)
        <rw>/qubes-firewall-user-script (if executable)
        per-client qbs- chains, connected-ips rules
    dnat-dns, ip_forward=1                                    (providers: qubes-network)
    <rw>/rc.local.d/*.rc (glob order), <rw>/rc.local           (every qube, if executable)

then, in its netvm, each client vif comes online (vif-route-qubes): set elements, then
<rw>/network-hooks.d/* with "online VIF vif ADDR".  Exit status of user scripts is
ignored as on Qubes; their output goes to the qube's boot log.

The functions take the Lab (duck-typed) and a qube name.
"""

import os
from pathlib import Path
from typing import List, Sequence

from tests.lab import qubes_base


def _executables(paths: Sequence[Path]) -> List[Path]:
    return [p for p in paths if p.is_file() and os.access(str(p), os.X_OK)]


def firewall_scripts(rw_config: Path) -> List[Path]:
    """What qubes-firewall runs at (re)start, in order; only executable regular files."""
    drop_in = rw_config / "qubes-firewall.d"
    paths = sorted(drop_in.iterdir()) if drop_in.is_dir() else []
    return _executables(paths + [rw_config / "qubes-firewall-user-script"])


def rc_scripts(rw_config: Path) -> List[Path]:
    """What qubes-misc-post runs, in order; only executable regular files."""
    drop_in = rw_config / "rc.local.d"
    paths = sorted(drop_in.glob("*.rc")) if drop_in.is_dir() else []
    return _executables(paths + [rw_config / "rc.local"])


def run_scripts(lab, name: str, scripts: Sequence[Path], args: Sequence[str] = ()) -> None:
    for script in scripts:
        lab._run_user_script(name, script, args)


def load_client_chains(lab, name: str) -> None:
    """qubes-firewall's initial load: one qbs- chain per client, then /connected-ips."""
    clients = lab.clients_of(name)
    for client in clients:
        ip = lab.ip(client)
        lab.nft_load(name, qubes_base.client_chain_create(ip))
        lab.nft_load(name, qubes_base.client_chain_fill(ip, lab._client_chain_rules(client)))
    lab.nft_load(name, qubes_base.connected_ips([lab.ip(c) for c in clients]))


def start_qubes_firewall(lab, name: str) -> None:
    lab.nft_load(name, qubes_base.qubes_firewall_tables())
    run_scripts(lab, name, firewall_scripts(lab.rw_config(name)))
    load_client_chains(lab, name)


def restart_qubes_firewall(lab, name: str) -> None:
    """systemctl restart qubes-firewall: stop deletes both tables, start rebuilds them and
    re-runs the user scripts; ``ip qubes`` keeps whatever it had."""
    lab._log(name, "--- qubes-firewall restart\n")
    lab.nft_load(name, qubes_base.qubes_firewall_delete())
    start_qubes_firewall(lab, name)


def boot(lab, name: str) -> None:
    """Replay the boot of qube `name` on an empty ruleset (see module docstring)."""
    spec = lab.spec(name)
    lab._log(name, "--- boot\n")
    lab.sh(name, "nft flush ruleset")
    lab._write_proc(name, {"net/ipv4/ip_forward": "0"})
    for text in qubes_base.base_tables():
        lab.nft_load(name, text)
    if spec.runs_qubes_firewall:
        start_qubes_firewall(lab, name)
    if spec.provides_network:
        lab.nft_load(name, qubes_base.dnat_dns(lab.resolvers_of(name)))
        lab._write_proc(name, {"net/ipv4/ip_forward": "1"})
    run_scripts(lab, name, rc_scripts(lab.rw_config(name)))


def vif_online(lab, netvm: str, client: str) -> None:
    """vif-route-qubes 'online' for client's vif in netvm (set elements, network hooks)."""
    vif = lab.vif(client)
    ip = lab.ip(client)
    lab.nft_load(netvm, qubes_base.vif_online(vif, ip))
    hooks_dir = lab.rw_config(netvm) / "network-hooks.d"
    hooks = _executables(sorted(hooks_dir.iterdir())) if hooks_dir.is_dir() else []
    run_scripts(lab, netvm, hooks, ["online", vif, "vif", ip])
