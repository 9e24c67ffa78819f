# Manual page: "Enabling networking between two qubes".
#
# `work` may open SSH connections to `build`; not the other way round.  Both
# use sys-firewall-2, which gets the forward rule; `build` gets the input rule.
# (qvm-firewall rules of `work`, if any, must allow the flow too: they are
# checked in sys-firewall-2 before the formula's forward rule.)
qubes_firewall:
  addresses:                   # on Qubes leave them out: dom0 fills them in (docs/addresses.md)
    sys-net: 10.137.0.5
    sys-firewall-2: 10.137.0.8
    work: 10.137.0.9
    build: 10.137.0.10
  qubes:
    sys-net:
      netvm: none
    sys-firewall-2:
      netvm: sys-net
    work:
      netvm: sys-firewall-2
    build:
      netvm: sys-firewall-2
  connections:
    - {from: work, to: build, proto: tcp, ports: [22]}   # proto/ports optional: all
