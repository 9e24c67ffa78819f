# Manual page: "Network service qubes".
#
#   sys-net <--> sys-firewall <--> sys-vpn <--> sys-firewall-2 <--> work, build
#
# The VPN qube is a network *service* qube: it never runs the Qubes firewall for
# client qubes itself; sys-firewall-2 does (the formula's dom0 part refuses a
# client attached straight to a service qube).  Everything upstream of
# sys-firewall-2 sees its address only: Qubes masquerades at every hop.
qubes_firewall:
  # On Qubes, leave them out: dom0 resolves them for each qube's pillar
  # (docs/addresses.md); they are written out here so the example runs in the lab.
  addresses:
    sys-net: 10.137.0.5
    sys-firewall: 10.137.0.6
    sys-vpn: 10.137.0.7
    sys-firewall-2: 10.137.0.8
    work: 10.137.0.9
    build: 10.137.0.10
  qubes:
    sys-net:
      netvm: none              # the uplink: holds the physical NIC
    sys-firewall:
      netvm: sys-net           # provides_network defaults to true: others use it
    sys-vpn:
      netvm: sys-firewall
      service: true            # VPN / DNS / IPS: a network service qube
    sys-firewall-2:
      netvm: sys-vpn
    work:
      netvm: sys-firewall-2
      firewall:                # qvm-firewall rules, enforced in sys-firewall-2
        - {action: accept, proto: tcp, dsthost: example.com, dstports: 443}
        - {action: accept, specialtarget: dns}
        - {action: drop}
    build:
      netvm: sys-firewall-2
