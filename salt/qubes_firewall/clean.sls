{#- qubes-firewall-formula: remove everything the formula made on this minion
    (state.apply qubes_firewall.clean). Found by the formula's own marks, so
    it works with a broken or missing pillar.
    - a qube: the owned nft objects and jumps, the managed blocks in rc.local
      and qubes-firewall-user-script, the ConnectTCP units, and in a template
      the custom-persist scripts and units;
    - dom0: the formula's qubes.ConnectTCP policy lines. qvm-prefs (netvm,
      provides_network) and qvm-firewall lists stay as they are: they are
      Qubes' own settings, which the formula set but does not own. #}
qubes_firewall-locked:
  qubes_firewall.run_locked: []

{%- if grains['id'] == 'dom0' %}
qubes_firewall-policy-absent:
  qubes_firewall.connect_tcp_policy_absent:
    - require:
      - qubes_firewall: qubes_firewall-locked
{%- else %}
qubes_firewall-cleaned:
  qubes_firewall.absent:
    - require:
      - qubes_firewall: qubes_firewall-locked
{%- endif %}
