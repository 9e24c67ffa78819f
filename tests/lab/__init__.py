"""Lab for qubes-firewall-formula: Qubes OS 4.2 / 4.3 networking reproduced with real nftables
in Linux network namespaces (one namespace per qube or outside host, a veth pair per Xen
vif).  Needs root, `ip` (iproute2) and `nft`; tests call preflight.require_lab() first.

    from tests.lab import Lab, QubeSpec, OutsideHost
    from tests.lab.seed import seed_qubes, seed_outside      # the manual page's topology

    with Lab(seed_qubes(), seed_outside(), workdir=tmp_path, release="4.3") as lab:
        lab.serve_tcp("web", 443)                       # banner "web:443" (report_peer=True adds ":peer")
        assert lab.probe_tcp("lan", "192.168.1.10", 443, timeout=1) is None

Lab (topology.py):
    run(node, argv, check=True, input=None, env=None) / sh(node, cmdline, ...)
    nft_json(node), nft_load(node, text), chain_rules(node, chain, table="qubes", family="ip")
    serve_tcp/serve_udp(node, port, report_peer=False) -> Server (IPv4 and IPv6); stop_servers()
    probe_tcp/probe_udp(node, dest, port, source=None, timeout=2.0) -> banner or None
    probe_tcp_result/probe_udp_result(...) -> ProbeResult(banner, error)
        (IPv6 when dest is an IPv6 address; probe_tcp6/probe_udp6(_result) take node names
        for their ip6)
    ip(node), ip6(node), gateway6(qube), ipv6_enabled(qube), netns(node), vif(client),
    rw_config(qube), boot_log(qube), qubesdb(qube), loads_ipv6_disabled(qube)
    release ("4.2" | "4.3"; Lab(release=None) takes $QF_LAB_RELEASE, else "4.3")
    fixed_qubes_iptables (Lab(fixed_qubes_iptables=None) takes $QF_LAB_FIXED_QUBES_IPTABLES=1,
        else False: Qubes' bug, the full ip6 qubes table in every qube)
    custom_persist(qube), template(qube), root_dir(qube), template_dir(template),
    etc_qubes(qube) (-> lookup:etc_qubes), systemd_dir(qube) (-> lookup:systemd_dir)
    reboot(qube), restart_qube(qube), restart_qubes_firewall(qube), reload_qubes_firewall(qube) (4.3),
    set_firewall_rules(client, rules), reset()
    order, qubes, outside_hosts, namespaces, prefix; close() (also via `with` and atexit)

QubeSpec(ip, netvm, provides_network, qubes_firewall, firewall_rules, custom_persist, template,
ipv6, qid, dispid): ipv6 is the qube's ``ipv6`` feature (None: unset; set on a netvm it gives
IPv6 to the qubes below, "" turns it off), see ipv6.py.  OutsideHost(..., host_ip6,
uplink_ip6, extra_ips6) puts IPv6 on an outside link (seed: 2001:db8:1::/64 on ens6).

custom_persist=True on 4.3 skips /rw/config/rc.local(.d), qubes-firewall.d and the user script
at boot; <root>/etc/qubes/qubes-firewall.d/* runs at every qubes-firewall start, and the
ExecStart= of *.service units enabled in <root>/etc/systemd/system/multi-user.target.wants/
run at the end of every boot (boot.py).  Qubes with the same template share one root.

Modules: spec (QubeSpec, OutsideHost, validate), netns (namespaces, exec, cleanup_stale),
qubes_base (the 4.2/4.3 nftables text), qubesdb (keys and the qubesdb-read stub), ipv6 (the
ipv6 feature and addresses as core-admin computes them), boot (the boot sequence), probes
(servers and probes), topology (Lab), seed (shared topology; seed_qubes(ipv6=True) turns
IPv6 on at sys-net), preflight (skip, or fail under CI=true).  test_fidelity.py and
test_fidelity_ipv6.py show what behaves like Qubes.
"""

from tests.lab.netns import LabCommandError, cleanup_stale
from tests.lab.probes import ProbeResult
from tests.lab.spec import OutsideHost, QubeSpec
from tests.lab.topology import Lab, Server

__all__ = ["Lab", "QubeSpec", "OutsideHost", "Server", "ProbeResult", "LabCommandError", "cleanup_stale"]
