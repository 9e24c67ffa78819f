{#- The topology every machine shares.  What differs per machine comes from
    qubes_firewall_machine.yaml, the one file that is not the same on every
    machine (on each machine a link to its file under machines/, see
    docs/fleet.md).  Rendered in dom0, for dom0 and for every target qube. -#}
{%- set machine_text %}{% include 'qubes_firewall_machine.yaml' ignore missing %}{% endset %}
{%- set machine = machine_text | load_yaml %}
{%- if not machine or not machine.get('uplink_interfaces') %}
{{- raise('qubes_firewall_machine.yaml is missing or names no uplink_interfaces: on each machine, '
          'link /srv/user_pillar/qubes_firewall_machine.yaml to its file under machines/ (docs/fleet.md)') }}
{%- endif %}
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
