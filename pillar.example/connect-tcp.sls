# qubes.ConnectTCP: reach one TCP port of another qube without any networking
# between the two (manual page: "Opening a single TCP port to other
# network-isolated qube").  Neither qube needs a netvm; no nft rule is involved.
#
# dom0 (state.apply qubes_firewall with minion id dom0) writes one qrexec policy
# line per entry into a managed block of lookup:policy_file (default
# /etc/qubes/policy.d/30-user-networking.policy).  A client qube with
# persistent entries (qubesctl --skip-dom0 --targets=untrusted state.apply
# qubes_firewall) gets systemd socket units in /rw/config and the rc.local
# lines that start them at every boot.  See docs/connect_tcp.md.
qubes_firewall:
  connect_tcp:
    # Manual page variants 1 and 4: mytcp-service runs a service on port 444 and
    # untrusted reaches it as localhost:444.  call: default (the default) means
    # the client asks for @default and the policy picks the server:
    #   qubes.ConnectTCP +444 untrusted @default allow target=mytcp-service
    # persistent: true is variant 4, the permanent binding: a socket unit on
    # 127.0.0.1:444 in untrusted, started at boot.  Without it (variant 1) the
    # user runs, in untrusted:  qvm-connect-tcp ::444
    - client: untrusted
      server: mytcp-service
      port: 444
      persistent: true

    # Manual page variant 2: the client names the server and uses another local port:
    #   qubes.ConnectTCP +444 untrusted mytcp-service allow
    # In untrusted:  qvm-connect-tcp 10444:mytcp-service:444
    - client: untrusted
      server: mytcp-service
      port: 444
      local_port: 10444
      call: named

    # Manual page variant 3: port 445 goes to a different server qube:
    #   qubes.ConnectTCP +445 untrusted @default allow target=mytcp-service-bis
    # In untrusted:  qvm-connect-tcp ::445
    - client: untrusted
      server: mytcp-service-bis
      port: 445

    # A wildcard source only when you write it: every qube tagged
    # "dev" may reach port 8080 of build-cache (uncomment to use).
    # - client: '@tag:dev'
    #   server: build-cache
    #   port: 8080
