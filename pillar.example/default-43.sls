# A first pillar for a default Qubes 4.3 install: the manual page's network
# service qube ("Network service qubes") as a VPN,
#
#   sys-net <--> sys-firewall <--> sys-vpn <--> sys-firewall-2 <--> work
#
# What a default 4.3 install has: sys-net (the network card), sys-firewall (a
# disposable of default-dvm: it starts from default-dvm's /rw each time), and
# the app qubes work, personal, untrusted on sys-firewall; vault has no network.
# What this pillar changes: sys-vpn and sys-firewall-2 provide network,
# sys-firewall-2 uses sys-vpn, and `work` uses sys-firewall-2.  personal and
# untrusted stay on sys-firewall; the pillar does not list them, so the
# formula leaves them alone.  The VPN software is yours to set up in sys-vpn
# (the manual's VPN guide); sys-firewall-2 runs the Qubes firewall for `work`,
# so nothing done in sys-vpn can weaken it.
#
# 1. Create the two new qubes, in dom0 (the formula wires them):
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label orange sys-vpn
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label green sys-firewall-2
# 2. Save this file as /srv/user_pillar/qubes_firewall.sls, without addresses
#    and with the addresses file (dom0 hands them to the qubes and tells them
#    the release: docs/addresses.md).  Look first, then apply, in dom0:
#   [user@dom0 ~]$ sudo qubesctl state.apply qubes_firewall test=True
#   [user@dom0 ~]$ sudo qubesctl state.apply qubes_firewall
# 3. Then in default-dvm (it keeps sys-firewall's rules) and every qube listed:
#   [user@dom0 ~]$ sudo qubesctl --skip-dom0 --targets=default-dvm,sys-net,sys-firewall,sys-vpn,sys-firewall-2,work state.apply qubes_firewall
qubes_firewall:
  qubes:                       # the qubes the formula looks after; a qube not listed is left alone
    sys-net:
      netvm: none              # netvm: the qube that gives this one its network;
                               # none: the top of the chain, the qube with the network card
    sys-firewall:
      netvm: sys-net           # what Qubes already set: nothing changes
      # sys-firewall is a disposable of default-dvm on a default 4.3 install:
      # whatever the formula must bring back at each start (a port forward's
      # or a connection's rules) is written into default-dvm's /rw.  dom0
      # checks it against Qubes: delete the line if `qvm-prefs sys-firewall
      # klass` says AppVM; write the other name if its template is not default-dvm.
      dispvm_template: default-dvm
      # With Qubes 4.3's custom-persist service on for sys-firewall
      # (qvm-features sys-firewall service.custom-persist 1), Qubes runs none
      # of its /rw/config scripts; then also say so, with the template it boots
      # from, and add that template to the targets of step 3:
      # custom_persist: true
      # template: fedora-42-xfce
    sys-vpn:
      netvm: sys-firewall
      service: true            # a network service qube (VPN, DNS, IPS): dom0 checks that a
                               # firewall qube stands between it and the qubes that use it
    sys-firewall-2:
      netvm: sys-vpn           # used as a netvm, so it provides network (provides_network: true)
    work:
      netvm: sys-firewall-2    # all of work's traffic goes through the VPN
