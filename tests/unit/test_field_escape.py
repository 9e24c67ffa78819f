"""
No pillar value escapes its field in any output (issue: strict grammars).

Every string field of the pillar gets hostile values (whitespace, quotes, ``;``,
``$( )``, newlines, ``%``, ``#``, NUL, unicode) plugged into a valid pillar.
Either validation refuses the value with an error naming that field's path, or
the value, where it appears verbatim in an output, lies inside ONE token of
that output's own syntax:

- the nft script and the boot block (``plan_qube`` + ``ruleset_text`` /
  ``persist_block``): nft words and quoted strings, shell words, quotes,
  comments and the nft here-document;
- the ConnectTCP policy lines (qrexec splits on whitespace), the unit files
  (systemd: ``%`` specifiers, ``\\`` escapes, ``;`` separators) and their file
  names, the rc.local block (shell);
- the dom0 argument vectors of qvm-prefs / qvm-firewall (``_Cli`` of
  ``_qubes_firewall_qubes``, with ``run`` recorded instead of executed) and the
  Admin API rule lines (``comment=`` takes the rest of the line).

The lexers below are written from those consumers' syntax, not from the
validator's regular expressions, so a weakened grammar shows up here.
"""

import copy
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.modules import core, model, plan

ct = core("connect_tcp")
dom0 = core("dom0")
qubes_backend = core("qubes")

PILLAR = {
    "lookup": {"rw_config": "/rw/config", "policy_file": "/etc/qubes/policy.d/30-user-networking.policy",
               "qubes_release": "4.3", "etc_qubes": "/etc/qubes", "systemd_dir": "/etc/systemd/system",
               "state_dir": "/var/lib/qubes-firewall-formula"},
    "addresses": {"sys-net": "10.137.0.5", "sys-firewall": "10.137.0.6", "sys-vpn": "10.137.0.7",
                  "sys-firewall-2": "10.137.0.8", "work": "10.137.0.9", "build": "10.137.0.10",
                  "web": "10.137.0.11"},
    "qubes": {
        "sys-net": {"netvm": "none", "provides_network": True},
        "sys-firewall": {"netvm": "sys-net", "provides_network": True, "custom_persist": True,
                         "template": "debian-13"},
        "sys-vpn": {"netvm": "sys-firewall", "provides_network": True, "service": True},
        "sys-firewall-2": {"netvm": "sys-vpn", "provides_network": True},
        "work": {"netvm": "sys-firewall-2", "firewall": [
            {"action": "accept", "proto": "tcp", "dsthost": "example.com", "dstports": "440-443",
             "comment": "web"},
            {"action": "accept", "proto": "icmp", "dst4": "192.168.0.0/16", "icmptype": 8},
            {"action": "accept", "proto": "udp", "dst6": "fd00::/8", "dstports": 53},
            {"action": "accept", "specialtarget": "dns"},
            {"action": "drop"},
        ]},
        "build": {"netvm": "sys-firewall-2", "dispvm_template": "default-dvm"},
        "web": {"netvm": "sys-firewall"},
    },
    "connections": [{"from": "work", "to": "build", "proto": "tcp", "ports": [22]}],
    "connect_tcp": [
        {"client": "work", "server": "mytcp-service", "port": 444, "local_port": 10444, "persistent": True},
        {"client": "build", "server": "web", "port": 80, "local_port": 8080, "persistent": True,
         "call": "named"},
    ],
    "port_forwards": [{"name": "https", "qube": "web", "proto": "tcp", "port": 443, "external_port": 8443,
                       "interfaces": ["ens6"], "sources": ["192.168.1.0/24"]}],
}

RULE = ["qubes", "work", "firewall"]
FIELDS = [
    ["lookup", "rw_config"], ["lookup", "policy_file"], ["lookup", "qubes_release"],
    ["lookup", "etc_qubes"], ["lookup", "systemd_dir"], ["lookup", "state_dir"],
    ["addresses", "web"],
    ["qubes", "web", "netvm"], ["qubes", "sys-firewall", "template"], ["qubes", "build", "dispvm_template"],
    RULE + [0, "action"], RULE + [0, "proto"], RULE + [0, "dsthost"], RULE + [0, "dstports"],
    RULE + [0, "comment"], RULE + [1, "dst4"], RULE + [1, "icmptype"], RULE + [2, "dst6"],
    RULE + [3, "specialtarget"],
    ["connections", 0, "from"], ["connections", 0, "to"], ["connections", 0, "proto"],
    ["connections", 0, "ports", 0],
    ["connect_tcp", 0, "client"], ["connect_tcp", 0, "server"], ["connect_tcp", 0, "port"],
    ["connect_tcp", 0, "local_port"], ["connect_tcp", 1, "call"], ["connect_tcp", 1, "server"],
    ["port_forwards", 0, "name"], ["port_forwards", 0, "qube"], ["port_forwards", 0, "proto"],
    ["port_forwards", 0, "port"], ["port_forwards", 0, "external_port"],
    ["port_forwards", 0, "interfaces", 0], ["port_forwards", 0, "sources", 0],
    # a qube's name everywhere at once: its key under qubes and addresses, and every reference
    ["rename", "build"], ["rename", "sys-firewall-2"],
]


def _rename(node, old, new):
    if isinstance(node, dict):
        return {(new if k == old else k): _rename(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename(v, old, new) for v in node]
    return new if node == old else node


def pillar_with(field, value):
    if field[0] == "rename":
        return _rename(copy.deepcopy(PILLAR), field[1], value)
    pillar = copy.deepcopy(PILLAR)
    node = pillar
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    return pillar


def field_path(field):
    if field[0] == "rename":
        return None  # any path may name a renamed qube
    return "qubes_firewall:" + ":".join(str(p) for p in field)


# --------------------------------------------------------------------------
# the consumers' lexers: each returns the (start, end) spans of its tokens
# --------------------------------------------------------------------------

NFT_WORD = re.compile(r"[A-Za-z0-9_.:/*-]+")
SH_WORD = re.compile(r"[A-Za-z0-9_.:/,+@%=-]+")
UNIT_WORD = re.compile(r"[A-Za-z0-9_.:/+@=()'-]+")
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@-]+")
HEREDOC = re.compile(r"<<'([A-Za-z_]+)'")


def _words(pattern, text, base=0):
    return [(base + m.start(), base + m.end()) for m in pattern.finditer(text)]


def nft_spans(text, base=0):
    spans, i = [], 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = i + 1
            while end < len(text) and text[end] not in '"\n\\':
                end += 1
            spans.append((base + i + 1, base + end))
            i = end + 1
        elif char == "#":
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            spans.append((base + i, base + end))
            i = end
        else:
            m = NFT_WORD.match(text, i)
            if m:
                spans.append((base + i, base + m.end()))
                i = m.end()
            else:
                i += 1
    return spans


def shell_spans(text):
    spans, i, lines = [], 0, text.split("\n")
    offset = 0
    heredoc = None
    for line in lines:
        if heredoc is not None:
            if line == heredoc:
                heredoc = None
                spans.append((offset, offset + len(line)))
            else:
                spans += nft_spans(line, offset)
            offset += len(line) + 1
            continue
        i = 0
        while i < len(line):
            char = line[i]
            if char == "'":
                end = line.find("'", i + 1)
                end = len(line) if end < 0 else end
                spans.append((offset + i + 1, offset + end))
                i = end + 1
            elif char == '"':
                end = i + 1
                while end < len(line) and line[end] not in '"$`\\':
                    end += 1
                spans.append((offset + i + 1, offset + end))
                i = end + 1 if end < len(line) and line[end] == '"' else end + 1
            elif char == "#" and (i == 0 or line[i - 1] in " \t"):
                spans.append((offset + i, offset + len(line)))
                i = len(line)
            else:
                m = SH_WORD.match(line, i)
                if m:
                    spans.append((offset + i, offset + m.end()))
                    i = m.end()
                else:
                    i += 1
        m = HEREDOC.search(line)
        if m:
            heredoc = m.group(1)
        offset += len(line) + 1
    return spans


def policy_spans(text):
    spans, offset = [], 0
    for line in text.split("\n"):
        if line.strip().startswith("#"):
            spans.append((offset, offset + len(line)))
        else:
            spans += _words(re.compile(r"[^\s]+"), line, offset)
        offset += len(line) + 1
    return spans


def unit_spans(text):
    spans, offset = [], 0
    for line in text.split("\n"):
        if line.startswith("#"):
            spans.append((offset, offset + len(line)))
        else:
            spans += _words(UNIT_WORD, line, offset)
        offset += len(line) + 1
    return spans


FLAGS = ("-D", "--rule-no", "--raw")


def argv_spans(argv):
    """
    One text for a command line, elements joined by spaces (a value split over
    two elements shows up whole); ``=`` splits qvm-firewall's key=value, and
    ``comment=`` keeps the rest of its element.  An element that reads as an
    option (``-x``) and is not one of the builders' own flags is no token.
    """
    text = " ".join(argv)
    spans, offset = [], 0
    for element in argv:
        if element.startswith("comment="):
            if "\n" not in element and "\x00" not in element:
                spans += [(offset, offset + 7), (offset + 8, offset + len(element))]
        elif not element.startswith("-") or element in FLAGS:
            spans += _words(re.compile(r"[^=\x00\n ]+"), element, offset)
        offset += len(element) + 1
    return text, spans


def api_line_spans(line):
    head, sep, _ = line.partition("comment=")
    spans = _words(re.compile(r"[^ =\n]+"), head)
    if sep:
        start = len(head) + len(sep)
        end = line.find("\n", start)
        spans += [(len(head), len(head) + 7), (start, len(line) if end < 0 else end)]
    return spans


def escapes(text, spans, value):
    """The offsets where ``value`` occurs in ``text`` outside a single token."""
    bad = []
    start = text.find(value)
    while start >= 0:
        end = start + len(value)
        if not any(s <= start and end <= e for s, e in spans):
            bad.append(start)
        start = text.find(value, start + 1)
    return bad


# --------------------------------------------------------------------------
# every output of a model
# --------------------------------------------------------------------------


class _Recorder(qubes_backend._Cli):
    def __init__(self):
        self.argvs = []

    def run(self, argv, ok=(0,)):
        self.argvs.append(list(argv))

        class Done:
            stdout = ""
        return Done()


def outputs(mdl):
    """[(what, text, spans)] for every text the formula renders from ``mdl``."""
    out = []
    for name in sorted(mdl.qubes):
        try:
            qplan = plan.plan_qube(mdl, name)
        except plan.PlanError as exc:
            assert all(e.startswith("qubes_firewall:") for e in exc.errors), exc.errors
            continue
        text = plan.ruleset_text(qplan)
        out.append(("nft script of %s" % name, text, nft_spans(text)))
        block = plan.persist_block(qplan)
        out.append(("boot block of %s" % name, block, shell_spans(block)))
    body = ct.policy_body(mdl.connect_tcp) or ""
    out.append(("policy", body, policy_spans(body)))
    clients = sorted({e.client for e in mdl.connect_tcp})
    for client in clients:
        for unit, text in sorted(ct.units(mdl.connect_tcp, client).items()):
            out.append(("unit name %s" % unit, unit, _words(UNIT_NAME, unit)))
            out.append(("unit %s" % unit, text, unit_spans(text)))
        rc_local = ct.rc_local_body(mdl.connect_tcp, client, mdl.lookup.rw_config) or ""
        out.append(("rc.local block of %s" % client, rc_local, shell_spans(rc_local)))
    for _, _, line in ct.commands(mdl.connect_tcp):
        out.append(("qvm-connect-tcp command", line, policy_spans(line)))
    cli = _Recorder()
    for name, qube in sorted(mdl.qubes.items()):
        cli.set_pref(name, "netvm", qube.netvm)
        cli.set_pref(name, "provides_network", qube.provides_network)
        rules = dom0.wanted_rules(qube)
        if rules is not None:
            cli.set_firewall(name, rules, old=[])
            for line in dom0.wanted_firewall(qube):
                out.append(("Admin API rule of %s" % name, line, api_line_spans(line)))
    for argv in cli.argvs:
        text, spans = argv_spans(argv)
        out.append(("argv %s" % argv[:2], text, spans))
    return out


def check_field(field, value):
    """Refused with the field's path, or inside one token of every output it reaches."""
    pillar = pillar_with(field, value)
    try:
        mdl = model.parse(pillar)
    except model.PillarError as exc:
        path = field_path(field)
        assert exc.errors, value
        assert all(e.startswith("qubes_firewall") for e in exc.errors), exc.errors
        if path is not None:
            assert any(e.startswith(path + ":") or e.startswith(path + " ") for e in exc.errors), \
                (path, exc.errors)
        return None
    leaks = []
    if isinstance(value, str) and value.rstrip("/"):
        needle = value.rstrip("/") if field[0] == "lookup" else value
        for what, text, spans in outputs(mdl):
            for at in escapes(text, spans, needle):
                # the formula's own text (a ';' of the nft syntax) is no leak of the value
                window = text[max(0, at - 1):at + len(needle) + 1]
                if window in BASELINE.get(what, ""):
                    continue
                leaks.append("%s: %r at %d: %r" % (what, needle, at, text[max(0, at - 30):at + len(needle) + 30]))
    return leaks


BASELINE = {what: text for what, text, _ in outputs(model.parse(PILLAR))}


def test_the_base_pillar_renders_every_output():
    mdl = model.parse(PILLAR)
    whats = " ".join(what for what, _, _ in outputs(mdl))
    for kind in ("nft script", "boot block", "policy", "unit name", "rc.local block", "Admin API rule",
                 "argv ['qvm-prefs'", "argv ['qvm-firewall'"):
        assert kind in whats, kind
    for field in FIELDS:  # the base values themselves pass
        assert check_field(field, copy.deepcopy(_get(PILLAR, field))) == [], field


def _get(pillar, field):
    if field[0] == "rename":
        return field[1]
    node = pillar
    for key in field:
        node = node[key]
    return node


HOSTILE = [
    "a b", "a\tb", "a\nb", "a\x00b", 'a"b', "a'b", "a;b", "a$(reboot)b", "a`id`b", "a%nb", "a#b",
    "a\\b", "a{b}", "a,b", "a=b", "-rf", "fe80::%x y", "fe80::1%eth0", "10.0.0.1 ", " 10.0.0.1",
    "wéb", "web\u200b", "ens6\n", "x\nflush ruleset", '"; flush ruleset; "', "/rw/config/../x",
    "/rw//config", "/rw/config/.", "a..b", "a.", "my.vm", "@tag:a b", "@anyvm\n", "QUBES_FIREWALL_NFT",
    "comment=x", "x comment=y", "1-65535", "0", "True", "None", "443 ", "4.3\n",
]

hostile = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet="abcxyz019./-_ ;$`\"'\\\n\t\x00{}%#*:@=\u00e9\u200b", min_size=1, max_size=24),
    st.text(min_size=1, max_size=24),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=hostile)
@example(field=RULE + [2, "dst6"], value="fe80::%x y")
@example(field=["qubes", "web", "netvm"], value="a\nb")
def test_no_value_escapes_its_field(field, value):
    assert check_field(field, value) in (None, [])


def test_every_hostile_value_in_every_field():
    leaks = []
    for field in FIELDS:
        for value in HOSTILE:
            leaks += check_field(field, value) or []
    assert leaks == []


def test_the_check_catches_an_escape():
    # a qube name with a space or a newline, if it were accepted, leaves its token
    mdl = model.parse(PILLAR)
    text = plan.persist_block(plan.plan_qube(mdl, "web")).replace("web", "we b")
    assert escapes(text, shell_spans(text), "we b")
    line = 'qubes.ConnectTCP +444 work @default allow target=my tcp'
    assert escapes(line, policy_spans(line), "my tcp")
    unit = "[Service]\nExecStart=qrexec-client-vm a%nb qubes.ConnectTCP+1\n"
    assert escapes(unit, unit_spans(unit), "a%nb")
    text, spans = argv_spans(["qvm-firewall", "work", "add", "action=accept", "dst6=fe80::%x", "y/128"])
    assert escapes(text, spans, "fe80::%x y")
    text, spans = argv_spans(["qvm-prefs", "web", "netvm", "-rf"])
    assert escapes(text, spans, "-rf")
    text, spans = argv_spans(["qvm-firewall", "work", "add", "action=accept", "dst6=fe80::1", "comment=a b"])
    assert not escapes(text, spans, "a b")
    nft = 'add rule ip qubes qf-input iifname "en"s6" counter accept\n'
    assert escapes(nft, nft_spans(nft), 'en"s6')
