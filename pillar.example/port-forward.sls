# Manual page: "Port forwarding to a qube from the outside world".
#
# A web server in qube `web` (netvm sys-firewall, whose netvm is sys-net, as
# Qubes sets them up) reachable on sys-net's LAN address, port 443, from the
# local network only.  The formula writes, in every hop from sys-net down: a
# DNAT to the next hop down (an element of a map used by the one nat chain
# qf-nat) and a forward accept (an element of a qf-fwd-* set); in `web`: an
# input accept (a qf-in-* set).  Each element's comment names the forward
# ("qf port_forwards:https").  Nothing else changes.
#
# 1. Create `web` (the other qubes come with Qubes), in dom0:
#   [user@dom0 ~]$ qvm-create --template debian-13-xfce --label orange web
# 2. Save this file as /srv/user_pillar/qubes_firewall.sls, without addresses
#    (dom0 hands them to the qubes: docs/addresses.md), then apply it in dom0
#    and in every qube it lists plus default-dvm (which keeps the rules of the
#    disposable sys-firewall):
#   [user@dom0 ~]$ sudo qubesctl state.apply qubes_firewall
#   [user@dom0 ~]$ sudo qubesctl --skip-dom0 --targets=default-dvm,sys-net,sys-firewall,web state.apply qubes_firewall
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
    web:
      netvm: sys-firewall
  port_forwards:               # open a port of a qube to the outside world
    - name: https              # your name for it (a-z, 0-9, -): it labels the rules
      qube: web                # the qube running the server
      proto: tcp               # tcp (the default) or udp
      port: 443                # the port the server listens on in `web`
      external_port: 443       # the port the LAN connects to on sys-net; default: port
      interfaces: [ens6]       # sys-net's LAN interface(s) (`ip -br link` in sys-net); leave out for any
      sources: [192.168.1.0/24]  # who may connect; leave out for anyone
