{#- Every qube's IPv4 address, asked from Qubes in dom0 (docs/addresses.md).
    The qube names come from the rendered topology, machine-only qubes included. -#}
{%- import_yaml 'qubes_firewall.sls' as topology %}
qubes_firewall:
  addresses: {{ salt['qubes_firewall.addresses'](topology.qubes_firewall.qubes.keys() | list) | yaml }}
