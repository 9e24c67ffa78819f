# A whole machine in one pillar: the VPN sandwich of the manual page, a port
# forward from the LAN to `web`, `work` talking to `build`.  `scripts/demo.sh`
# builds this topology in network namespaces and applies the formula in every
# emulated qube.  Each key is explained in the one-scenario examples next to
# this file (vpn-sandwich.sls, port-forward.sls, qube-to-qube.sls).
#
# On a default Qubes 4.3 install the formula changes only this: sys-vpn and
# sys-firewall-2 provide network, sys-firewall-2 uses sys-vpn, and `work` and
# `build` use sys-firewall-2.
#
# 1. Create the qubes this machine adds (the others come with Qubes), in dom0:
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label orange sys-vpn
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label green sys-firewall-2
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label purple build
#   [user@dom0 ~]$ qvm-create --template debian-13-xfce --label orange web
# 2. Save this file as /srv/user_pillar/qubes_firewall.sls, without addresses
#    (dom0 hands them to the qubes: docs/addresses.md), then apply it in dom0
#    and in every qube it lists plus default-dvm (which keeps the rules of the
#    disposable sys-firewall):
#   [user@dom0 ~]$ sudo qubesctl state.apply qubes_firewall
#   [user@dom0 ~]$ sudo qubesctl --skip-dom0 --targets=default-dvm,sys-net,sys-firewall,sys-vpn,sys-firewall-2,work,build,web state.apply qubes_firewall
qubes_firewall:
  qubes:
    sys-net:
      netvm: none
      provides_network: true
    sys-firewall:
      netvm: sys-net
      provides_network: true
      dispvm_template: default-dvm   # delete if sys-firewall is not a disposable
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
