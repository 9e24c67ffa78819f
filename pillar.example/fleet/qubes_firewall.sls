{#- The topology every machine shares.  What differs per machine comes from
    qubes_firewall_machine.yaml, the one file that is not the same on every
    machine (on each machine a link to its file under machines/, see
    docs/fleet.md).  Rendered in dom0, for dom0 and for every target qube. -#}
{%- import_yaml 'qubes_firewall_machine.yaml' as machine %}
qubes_firewall:
  qubes:
    sys-net:
      netvm: none
      provides_network: true
    sys-firewall:
      netvm: sys-net
      provides_network: true
    work:
      netvm: sys-firewall
    build:
      netvm: sys-firewall
    web:
      netvm: sys-firewall
{%- for name, qube in (machine.get('qubes') or {}) | dictsort %}
    {{ name }}: {{ qube | json }}
{%- endfor %}
  connections:
    - {from: work, to: build, proto: tcp, ports: [22]}
{%- for connection in machine.get('connections') or [] %}
    - {{ connection | json }}
{%- endfor %}
  port_forwards:
    - name: https
      qube: web
      proto: tcp
      port: 443
      interfaces: {{ machine.uplink_interfaces | json }}
      sources: [192.168.1.0/24]
