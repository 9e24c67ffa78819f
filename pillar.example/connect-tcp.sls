# Manual page: "Opening a single TCP port to other network-isolated qube".
#
# qubes.ConnectTCP: reach one TCP port of another qube without any networking
# between the two.  Neither qube needs a netvm; no nft rule is involved, and
# no qube's netvm changes.  dom0 writes one qrexec policy line per entry into a
# managed block of /etc/qubes/policy.d/30-user-networking.policy (your own
# lines there stay); a client with `persistent: true` entries gets systemd
# socket units in its /rw/config and the rc.local lines that start them at
# every boot.  See docs/connect_tcp.md.
#
# 1. Create the two server qubes (untrusted comes with Qubes), in dom0:
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label red mytcp-service
#   [user@dom0 ~]$ qvm-create --template fedora-42-xfce --label red mytcp-service-bis
# 2. Save this file as /srv/user_pillar/qubes_firewall.sls, then apply it in
#    dom0 (the policy) and in the client with persistent entries:
#   [user@dom0 ~]$ sudo qubesctl state.apply qubes_firewall
#   [user@dom0 ~]$ sudo qubesctl --skip-dom0 --targets=untrusted state.apply qubes_firewall
qubes_firewall:
  connect_tcp:                 # one entry per port a client may reach
    # Manual page variants 1 and 4: mytcp-service runs a service on port 444 and
    # untrusted reaches it as localhost:444.  call: default (the default) means
    # the client asks for @default and the policy picks the server:
    #   qubes.ConnectTCP +444 untrusted @default allow target=mytcp-service
    # persistent: true is variant 4, the permanent binding: a socket unit on
    # 127.0.0.1:444 in untrusted, started at boot.  Without it (variant 1) the
    # user runs, in untrusted:  qvm-connect-tcp ::444
    - client: untrusted        # the qube that connects (or '@anyvm' / '@tag:NAME', written out)
      server: mytcp-service    # the qube running the service
      port: 444                # the service's port in the server
      persistent: true         # bind it at every boot of the client; default: false

    # Manual page variant 2: the client names the server and uses another local port:
    #   qubes.ConnectTCP +444 untrusted mytcp-service allow
    # In untrusted:  qvm-connect-tcp 10444:mytcp-service:444
    - client: untrusted
      server: mytcp-service
      port: 444
      local_port: 10444        # the port the client listens on; default: port
      call: named              # default: the client asks for @default; named: it names the server

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
