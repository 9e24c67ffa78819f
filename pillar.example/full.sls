# A whole machine in one pillar: the VPN sandwich of the manual page, a port
# forward from the LAN to `web`, `work` talking to `build`.  `scripts/demo.sh`
# builds this topology in network namespaces and applies the formula in every
# emulated qube.
qubes_firewall:
  addresses:                   # on Qubes leave them out: dom0 fills them in (docs/addresses.md)
    sys-net: 10.137.0.5
    sys-firewall: 10.137.0.6
    sys-vpn: 10.137.0.7
    sys-firewall-2: 10.137.0.8
    work: 10.137.0.9
    build: 10.137.0.10
    web: 10.137.0.11
  qubes:
    sys-net:
      netvm: none
      provides_network: true
    sys-firewall:
      netvm: sys-net
      provides_network: true
    sys-vpn:
      netvm: sys-firewall
      provides_network: true
      service: true
    sys-firewall-2:
      netvm: sys-vpn
      provides_network: true
    work:
      netvm: sys-firewall-2
    build:
      netvm: sys-firewall-2
    web:
      netvm: sys-firewall
  connections:
    - {from: work, to: build, proto: tcp, ports: [22]}
  port_forwards:
    - name: https
      qube: web
      proto: tcp
      port: 443
      external_port: 443
      interfaces: [ens6]
      sources: [192.168.1.0/24]
