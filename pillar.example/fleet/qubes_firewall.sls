{#- The fleet's pillar file: the same on every machine, copied unchanged
    (docs/fleet.md).  Rendered in dom0, for dom0 and for every target qube:
    it merges this machine's file (qubes_firewall_machine.yaml, a link to
    machines/NAME.yaml) onto the shared topology (qubes_firewall_shared.yaml)
    and asks Qubes for every qube's address; each id gets only its part
    (dom0 all of it, a qube what its own rules need).  A missing or broken file, or
    the formula missing in dom0, makes the pillar `qubes_firewall: {error: ...}`:
    the qubes_firewall runs fail with that message, every other formula runs. -#}
{%- set here = (tplpath | default('/srv/user_pillar/qubes_firewall.sls')).rsplit('/', 1)[0] %}
{%- if 'qubes_firewall.fleet_pillar' in salt %}
{{ salt['qubes_firewall.fleet_pillar'](here ~ '/qubes_firewall_shared.yaml', here ~ '/qubes_firewall_machine.yaml', minion=grains['id']) | json }}
{%- else %}
qubes_firewall:
  error: "this dom0's Salt has no qubes_firewall execution module: install the formula (README.md), then run: sudo qubesctl saltutil.sync_all"
{%- endif %}
