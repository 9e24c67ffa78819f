{#- Every qube's IPv4 address, and this dom0's Qubes release, asked from Qubes
    in dom0 (docs/addresses.md).  The qube names come from the rendered
    topology, machine-only qubes included. -#}
{%- import_yaml 'qubes_firewall.sls' as topology %}
qubes_firewall:
  addresses: {{ salt['qubes_firewall.addresses'](topology.qubes_firewall.qubes.keys() | list) | yaml }}
  lookup:
    qubes_release: '{{ salt['qubes_firewall.qubes_release']() }}'
