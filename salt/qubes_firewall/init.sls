{#- qubes-firewall-formula: one SLS for dom0 and for every qube; what it does
    depends on the minion id (under qubesctl: the qube's name, dom0 for dom0).
    The run first takes the minion's lock (two runs never interleave); every
    state requires qubes_firewall-validated, so a bad pillar changes nothing
    anywhere. #}
qubes_firewall-locked:
  qubes_firewall.run_locked: []

qubes_firewall-validated:
  qubes_firewall.validated:
    - require:
      - qubes_firewall: qubes_firewall-locked

{%- if grains['id'] == 'dom0' %}
{#- dom0 part: BEGIN dom0 states #}
{#- dom0 preflight first (reads only, once): the pillar checked against the
    live Qubes and every qube of the pillar planned with the qube-side
    planner. Every other dom0 state requires it, the qubes.ConnectTCP policy
    included, so a pillar the qubes cannot carry changes nothing. Then the
    policy, the qvm-firewall lists (so a qube never reaches a new netvm with
    its old rules), then netvm and provides_network, in an order Qubes
    accepts. #}
qubes_firewall-dom0-topology:
  qubes_firewall.topology_valid:
    - require:
      - qubes_firewall: qubes_firewall-validated

qubes_firewall-connect-tcp-policy:
  qubes_firewall.connect_tcp_policy_managed:
    - require:
      - qubes_firewall: qubes_firewall-validated
      - qubes_firewall: qubes_firewall-dom0-topology

qubes_firewall-dom0-firewall:
  qubes_firewall.firewall_managed:
    - require:
      - qubes_firewall: qubes_firewall-validated
      - qubes_firewall: qubes_firewall-dom0-topology

qubes_firewall-dom0-prefs:
  qubes_firewall.netvm_managed:
    - require:
      - qubes_firewall: qubes_firewall-validated
      - qubes_firewall: qubes_firewall-dom0-topology
      - qubes_firewall: qubes_firewall-dom0-firewall
{#- dom0 part: END dom0 states #}
{%- else %}
{#- qube part: BEGIN qube states #}
{#- validated also plans this qube: a planner refusal stops every state.
    Everything else waits for the live rules, so a failed nft load writes
    no file and starts no unit. A qube the pillar does not name (or names
    with nothing to do) gets the formula's leftovers removed. #}
qubes_firewall-runtime-rules:
  qubes_firewall.rules_managed:
    - require:
      - qubes_firewall: qubes_firewall-validated

{#- persisted only once the live ruleset took the same rules #}
qubes_firewall-persisted-rules:
  qubes_firewall.boot_replay_managed:
    - require:
      - qubes_firewall: qubes_firewall-validated
      - qubes_firewall: qubes_firewall-runtime-rules

{#- in a template: the replay of its custom-persist qubes #}
qubes_firewall-custom-persist-replay:
  qubes_firewall.custom_persist_replay_managed:
    - require:
      - qubes_firewall: qubes_firewall-validated
      - qubes_firewall: qubes_firewall-runtime-rules

qubes_firewall-connect-tcp-bindings:
  qubes_firewall.connect_tcp_bindings_managed:
    - require:
      - qubes_firewall: qubes_firewall-validated
      - qubes_firewall: qubes_firewall-runtime-rules
{#- qube part: END qube states #}
{%- endif %}

{#- last: one line per qube (or dom0) saying what this run changed, or would
    under test=True; it runs even when a state above failed, and changes nothing #}
qubes_firewall-summary:
  qubes_firewall.run_summary: []
