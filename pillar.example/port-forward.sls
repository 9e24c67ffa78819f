# Seed: "Port forwarding to a qube from the outside world".
#
# A web server in qube `web` (netvm sys-firewall, whose netvm is sys-net)
# reachable on sys-net's LAN address, port 443, from the local network only.
# The formula writes, in every hop from the uplink down: a DNAT chain
# (qf-dnat-https) and a forward accept; in `web`: an input accept.  All are
# restricted to the interface(s), the sources and the port given here.
qubes_firewall:
  addresses:                   # filled in by dom0 on Qubes (see README)
    sys-net: 10.137.0.5
    sys-firewall: 10.137.0.6
    web: 10.137.0.11
  qubes:
    sys-net:
      netvm: none
    sys-firewall:
      netvm: sys-net
    web:
      netvm: sys-firewall
  port_forwards:
    - name: https              # names the chains (qf-dnat-https) and rule comments
      qube: web
      proto: tcp
      port: 443                # where the server listens in `web`
      external_port: 443       # what the LAN connects to on sys-net
      interfaces: [ens6]       # sys-net's uplink interface(s); omit for any
      sources: [192.168.1.0/24]  # omit for any source
