# Manual page: "Port forwarding to a qube from the outside world".
#
# A web server in qube `web` (netvm sys-firewall, whose netvm is sys-net)
# reachable on sys-net's LAN address, port 443, from the local network only.
# The formula writes, in every hop from the uplink down: a DNAT to the next hop
# down (an element of a map used by the one nat chain qf-nat) and a forward
# accept (an element of a qf-fwd-* set); in `web`: an input accept (a qf-in-*
# set).  Each element's comment names the forward ("qf port_forwards:https");
# the rules are restricted to the interface(s), the sources and the port given
# here.
qubes_firewall:
  addresses:                   # on Qubes leave them out: dom0 fills them in (docs/addresses.md)
    sys-net: 10.137.0.5
    sys-firewall: 10.137.0.6
    web: 10.137.0.11
  qubes:
    sys-net:
      netvm: none
    sys-firewall:
      netvm: sys-net
      # It holds a hop of the forward.  On Qubes 4.3 with the custom-persist
      # service on for it, add custom_persist: true and template: <the template
      # it boots from>, and apply the formula to that template too (README,
      # "custom-persist").
    web:
      netvm: sys-firewall
  port_forwards:
    - name: https              # names the forward in element comments (qf port_forwards:https)
      qube: web
      proto: tcp
      port: 443                # where the server listens in `web`
      external_port: 443       # what the LAN connects to on sys-net
      interfaces: [ens6]       # sys-net's uplink interface(s); omit for any
      sources: [192.168.1.0/24]  # omit for any source
