# Manual page: "Network service qubes".
#
#   sys-net <--> sys-firewall <--> sys-vpn <--> sys-firewall-2 <--> work
#
# The VPN qube is a network *service* qube: it never runs the Qubes firewall for
# client qubes itself; sys-firewall-2 does (dom0 refuses a client attached
# straight to a service qube).  Everything upstream of sys-firewall-2 sees its
# address only: Qubes masquerades at every hop.  The VPN software itself is
# yours to set up in sys-vpn (the manual's VPN guide).  On a default Qubes
# install the formula changes only this: sys-vpn and sys-firewall-2 provide
# network, sys-firewall-2 uses sys-vpn, and `work` uses sys-firewall-2.  Your
# other qubes stay on sys-firewall.
#
# 1. Create the two new qubes, in dom0 (the formula wires them):
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label orange sys-vpn
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label green sys-firewall-2
# 2. Save this file as /srv/user_pillar/qubes_firewall.sls, without addresses
#    (dom0 hands them to the qubes: docs/addresses.md), then apply it in dom0
#    and in every qube it lists:
#   [user@dom0 ~]$ sudo qubesctl state.apply qubes_firewall
#   [user@dom0 ~]$ sudo qubesctl --skip-dom0 --targets=sys-net,sys-firewall,sys-vpn,sys-firewall-2,work state.apply qubes_firewall
#
# To make sys-vpn fail closed (nothing of work's goes out in clear when the
# tunnel drops; its DNS to the VPN's resolvers; sys-vpn's own qvm-firewall
# list the VPN servers only), add to sys-vpn the names your VPN uses
# (docs/pillar.md, `vpn`):
#       vpn:
#         interfaces: [wg0]
#         endpoints: [{address: 198.51.100.7, port: 51820}]
#         dns: [10.8.0.1]
#
# To send more qubes through the VPN, list them like `work`.  To limit what
# `work` may reach, give it qvm-firewall rules, enforced in sys-firewall-2
# (the list replaces work's whole list in Qubes), e.g.:
#     work:
#       netvm: sys-firewall-2
#       firewall:
#         - {action: accept, proto: tcp, dsthost: example.com, dstports: 443}
#         - {action: accept, specialtarget: dns}
#         - {action: drop}
qubes_firewall:
  qubes:                       # the qubes the formula looks after, each with its netvm
    sys-net:
      netvm: none              # none: the top of the chain, the qube with the network card
    sys-firewall:
      netvm: sys-net           # a qube other qubes use as netvm provides network by itself
    sys-vpn:
      netvm: sys-firewall
      service: true            # a network service qube (VPN, DNS, IPS): it needs a
                               # firewall qube between it and the qubes that use it
    sys-firewall-2:
      netvm: sys-vpn
    work:
      netvm: sys-firewall-2
