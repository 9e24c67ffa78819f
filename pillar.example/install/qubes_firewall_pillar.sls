{#- The pillar file of qubes-firewall-formula (docs/addresses.md): copy it
    unchanged to /srv/user_pillar/qubes_firewall_pillar.sls.  Rendered in
    dom0 for dom0 and for each target qube: it reads your topology
    (/srv/user_pillar/qubes_firewall.sls, plain YAML, no addresses), asks
    Qubes for the addresses and the release, and gives each id only its
    part: dom0 all of it, a qube what its own rules need.  A broken topology,
    or the formula missing in dom0, makes the pillar `qubes_firewall:
    {error: ...}`: the qubes_firewall runs fail with that message, every
    other formula runs. -#}
{%- if 'qubes_firewall.fleet_pillar' in salt %}
{{ salt['qubes_firewall.fleet_pillar']('qubes_firewall.sls', minion=grains['id']) | json }}
{%- else %}
qubes_firewall:
  error: "this dom0's Salt has no qubes_firewall execution module: install the formula (README.md), then run: sudo qubesctl saltutil.sync_all"
{%- endif %}
