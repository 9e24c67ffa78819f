# Manual page: "Enabling networking between two qubes".
#
# `work` may open SSH connections (TCP port 22) to `build`; not the other way
# round.  On a default Qubes install both use sys-firewall as their netvm:
# sys-firewall gets the forward rule, `build` the input rule.  Nothing else
# changes: every qube below keeps the netvm Qubes already gives it.
#
# 1. Create `build` (the other qubes come with Qubes), in dom0:
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label orange build
# 2. Save this file as /srv/user_pillar/qubes_firewall.sls, without addresses
#    (dom0 hands them to the qubes: docs/addresses.md), then apply it in dom0
#    and in every qube it lists plus default-dvm (which keeps the rules of the
#    disposable sys-firewall):
#   [user@dom0 ~]$ sudo qubesctl state.apply qubes_firewall
#   [user@dom0 ~]$ sudo qubesctl --skip-dom0 --targets=default-dvm,sys-net,sys-firewall,work,build state.apply qubes_firewall
#
# `work`'s own qvm-firewall rules (Qubes allows everything by default) must let
# the connection through too: sys-firewall checks them before the formula's
# forward rule; dom0 refuses to apply when they would not.
qubes_firewall:
  qubes:                       # the qubes the formula looks after, each with its netvm
    sys-net:
      netvm: none              # none: the top of the chain, the qube with the network card
    sys-firewall:
      netvm: sys-net
      # Qubes 4.3 installs sys-firewall as a disposable of default-dvm: it starts
      # from default-dvm's /rw each time, so its rules are kept there.  If yours
      # is not a disposable (`qvm-prefs sys-firewall klass` says AppVM), delete
      # this line; if its disposable template has another name, write that one.
      dispvm_template: default-dvm
    work:
      netvm: sys-firewall
    build:
      netvm: sys-firewall
  connections:                 # networking between two qubes, one way
    - from: work               # the qube that opens the connection
      to: build                # the qube that accepts it
      proto: tcp               # tcp, udp or icmp; leave out for all three
      ports: [22]              # leave out for every port
