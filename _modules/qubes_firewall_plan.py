"""
The planner of qubes-firewall-formula: pure functions from the validated model
(``qubes_firewall_model``) and the addresses map to one qube's plan: the
nftables chains the formula owns in that qube, every rule traced to its pillar
origin, and the shell block that replays them at boot.

Nothing here touches the system.  Loaded by Salt as ``qubes_firewall_plan``;
imported directly by the unit tests.

Where rules live (QUBES_FACTS 2.5): chains named ``qf-*`` in ``table ip
qubes``; ``qf-input`` and ``qf-forward`` are reached by one jump each from
Qubes' ``custom-input`` / ``custom-forward``; each port forward that DNATs in
this qube has its own nat base chain ``qf-dnat-<name>`` (``type nat hook
prerouting priority filter + 1``, after Qubes' dnat-dns).
"""

import dataclasses
import hashlib
from typing import Optional, Tuple

__virtualname__ = "qubes_firewall_plan"

TABLE = "ip qubes"
INPUT_CHAIN = "qf-input"
FORWARD_CHAIN = "qf-forward"
DNAT_PREFIX = "qf-dnat-"
OWNED_PREFIX = "qf-"
JUMP_COMMENT = "qf jump"
# (Qubes chain, our chain) pairs: one jump rule each
JUMPS = (("custom-input", INPUT_CHAIN), ("custom-forward", FORWARD_CHAIN))
# nat prerouting after Qubes' dnat-dns (dstnat, -100), as the seed document does
DNAT_HOOK = ("nat", "prerouting", 1, "accept")

USER_SCRIPT = "qubes-firewall-user-script"
RC_LOCAL = "rc.local"
BLOCK_NAME = "rules"
HEREDOC = "QUBES_FIREWALL_NFT"


class PlanError(ValueError):
    """The pillar is valid on its own but cannot be planned (path-named)."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("cannot plan:\n  " + "\n  ".join(self.errors))


@dataclasses.dataclass(frozen=True)
class Rule:
    chain: str
    match: str  # the match expression, without counter/verdict/comment
    verdict: str  # accept | dnat to ... | redirect to :N
    origin: str  # pillar origin, e.g. "port_forwards:https forward"

    @property
    def body(self):
        return "%s counter %s" % (self.match, self.verdict) if self.match else "counter %s" % self.verdict

    @property
    def comment(self):
        """The origin plus a digest of the rule: how a live rule is recognised."""
        digest = hashlib.sha256(("%s\n%s" % (self.chain, self.body)).encode()).hexdigest()[:10]
        return "qf %s #%s" % (self.origin, digest)

    @property
    def text(self):
        return '%s comment "%s"' % (self.body, self.comment)


@dataclasses.dataclass(frozen=True)
class Chain:
    name: str
    hook: Optional[Tuple[str, str, int, str]] = None  # (type, hook, priority, policy)
    rules: Tuple[Rule, ...] = ()

    @property
    def spec(self):
        if self.hook is None:
            return ""
        kind, hook, prio, policy = self.hook
        return "type %s hook %s priority %s; policy %s;" % (kind, hook, _priority(prio), policy)

    def commands(self, fresh):
        """nft commands that (re)fill the chain: create it when ``fresh``, else flush it."""
        spec = " { %s }" % self.spec if self.spec else ""
        head = ["add chain %s %s%s" % (TABLE, self.name, spec)] if fresh else []
        head.append("flush chain %s %s" % (TABLE, self.name))
        return head + ["add rule %s %s %s" % (TABLE, self.name, r.text) for r in self.rules]


@dataclasses.dataclass(frozen=True)
class QubePlan:
    qube: str
    provides_network: bool
    chains: Tuple[Chain, ...]
    notes: Tuple[str, ...] = ()

    jumps = JUMPS  # (Qubes chain, owned chain): one jump rule each

    @staticmethod
    def jump_command(custom, target):
        return 'add rule %s %s jump %s comment "%s"' % (TABLE, custom, target, JUMP_COMMENT)

    @property
    def persist_file(self):
        """Where the boot replay goes: the user script of network providers, else rc.local."""
        return USER_SCRIPT if self.provides_network else RC_LOCAL

    @property
    def rule_count(self):
        return sum(len(c.rules) for c in self.chains)


def _priority(prio):
    if prio == 0:
        return "filter"
    return "filter %s %d" % ("+" if prio > 0 else "-", abs(prio))


# --------------------------------------------------------------------------
# match expressions
# --------------------------------------------------------------------------


def _set(items, quote=False):
    items = ['"%s"' % i if quote else str(i) for i in items]
    return items[0] if len(items) == 1 else "{ %s }" % ", ".join(items)


def _l4(proto, ports):
    """Protocol and destination ports; None/() mean any."""
    if ports:
        if proto in ("tcp", "udp"):
            return "%s dport %s" % (proto, _set(ports))
        return "meta l4proto { tcp, udp } th dport %s" % _set(ports)
    if proto:
        return "meta l4proto %s" % proto
    return ""


def _join(*parts):
    return " ".join(p for p in parts if p)


class _Addresses:
    """Looks addresses up, collecting path-named errors for missing ones."""

    def __init__(self, model):
        self.model = model
        self.missing = []

    def __call__(self, qube):
        addr = self.model.addresses.get(qube)
        if addr is None:
            if qube not in self.missing:
                self.missing.append(qube)
            return "0.0.0.0"
        return addr


# --------------------------------------------------------------------------
# port forwards (CONTRACT 4; seed "Port forwarding to a qube from the outside world")
# --------------------------------------------------------------------------


def _forward_rules(model, fwd, qube, ip):
    """The rules port forward ``fwd`` needs in ``qube``: (dnat rules, forward rules, input rules)."""
    path = model.chain(fwd.qube)  # [destination, its netvm, ..., uplink]
    if qube not in path:
        return (), (), ()
    where = path.index(qube)
    uplink = where == len(path) - 1
    sources = "ip saddr %s" % _set(fwd.sources) if fwd.sources else ""
    if uplink:
        arriving = "iifname %s" % _set(fwd.interfaces, quote=True) if fwd.interfaces else 'iifname != "vif*"'
    else:
        # deeper hops: only what comes down from the netvm, addressed to this qube
        arriving = "iifgroup 1"
    dnat, forward, inputs = [], [], []
    chain = DNAT_PREFIX + fwd.name
    if where == 0:
        dest = ip(qube)
        if uplink:
            if fwd.external_port != fwd.port:
                dnat.append(Rule(chain, _join(arriving, "fib daddr type local", sources,
                                              _l4(fwd.proto, [fwd.external_port])),
                                 "redirect to :%d" % fwd.port, fwd.origin + " redirect"))
        inputs.append(Rule(INPUT_CHAIN,
                           _join(arriving, sources, "ip daddr %s" % dest, _l4(fwd.proto, [fwd.port]), "ct state new"),
                           "accept", fwd.origin + " input"))
        return tuple(dnat), (), tuple(inputs)
    nxt = path[where - 1]
    last_hop = where == 1
    # only what is addressed to this qube itself: its LAN address at the uplink
    # (unknown to the pillar, hence fib), its Qubes address below
    own = "fib daddr type local" if uplink else "ip daddr %s" % ip(qube)
    to_port = fwd.port if last_hop else fwd.external_port
    target = ip(nxt) if to_port == fwd.external_port else "%s:%d" % (ip(nxt), to_port)
    dnat.append(Rule(chain, _join(arriving, own, sources, _l4(fwd.proto, [fwd.external_port])),
                     "dnat to %s" % target, "%s dnat %s" % (fwd.origin, nxt)))
    forward.append(Rule(FORWARD_CHAIN,
                        _join(arriving, sources, "ip daddr %s" % ip(nxt), _l4(fwd.proto, [to_port]), "ct state new"),
                        "accept", "%s forward %s" % (fwd.origin, nxt)))
    return tuple(dnat), tuple(forward), ()


# --------------------------------------------------------------------------
# connections (seed "Enabling networking between two qubes")
# --------------------------------------------------------------------------


def connection_route(model, conn):
    """
    How a connection from A to B flows: (shared, source) where ``shared`` is
    the qube whose forward chain passes it (None when B itself is on A's
    way up, or A is B's netvm) and ``source`` the qube whose address B and
    ``shared`` see (A, or the last hop on A's way up: Qubes masquerades
    every hop).  Raises PlanError when B cannot be reached.
    """
    a, b = conn.source, conn.target
    chain_a, chain_b = model.chain(a), model.chain(b)
    common = next((q for q in chain_a if q in chain_b), None)
    path = "qubes_firewall:%s" % conn.origin
    if common is None:
        raise PlanError(["%s: %s and %s have no netvm in common (different uplinks)" % (path, a, b)])
    if common == b:
        return None, chain_a[chain_a.index(b) - 1]
    if model.qubes[b].netvm != common:
        raise PlanError([
            "%s: %s is not attached directly to %s, the netvm %s and %s share; "
            "Qubes routes only to a netvm's own clients (use a port forward for deeper qubes)"
            % (path, b, common, a, b)
        ])
    if common == a:
        return None, a
    return common, chain_a[chain_a.index(common) - 1]


def _connection_rules(model, conn, qube, ip):
    shared, source = connection_route(model, conn)
    l4 = _l4(conn.proto, conn.ports)
    origin = "%s %s->%s" % (conn.origin, conn.source, conn.target)
    forward, inputs = [], []
    if qube == shared:
        forward.append(Rule(FORWARD_CHAIN,
                            _join("iifgroup 2", "ip saddr %s" % ip(source), "ip daddr %s" % ip(conn.target),
                                  l4, "ct state new"),
                            "accept", origin + " forward"))
    if qube == conn.target:
        # from upstream (group 1), or from one of its own clients (group 2)
        group = "2" if model.qubes[source].netvm == qube else "1"
        inputs.append(Rule(INPUT_CHAIN,
                           _join("iifgroup %s" % group, "ip saddr %s" % ip(source), l4, "ct state new"),
                           "accept", origin + " input"))
    notes = ()
    if source != conn.source and qube == conn.target:
        notes = ("%s: %s reaches %s masqueraded as %s, so every qube behind %s may connect"
                 % (conn.origin, conn.source, conn.target, source, source),)
    return tuple(forward), tuple(inputs), notes


# --------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------


def plan_qube(model, qube):
    """
    The plan for ``qube``: its owned chains with every rule, in a stable
    order.  Raises PlanError (path-named) when an address is missing or a
    connection cannot be routed.
    """
    if qube not in model.qubes:
        raise KeyError(qube)
    ip = _Addresses(model)
    errors, notes = [], []
    dnat_chains, forward, inputs = [], [], []
    for fwd in model.port_forwards:
        d, f, i = _forward_rules(model, fwd, qube, ip)
        if d:
            dnat_chains.append(Chain(DNAT_PREFIX + fwd.name, DNAT_HOOK, d))
        forward += f
        inputs += i
    for conn in model.connections:
        try:
            f, i, n = _connection_rules(model, conn, qube, ip)
        except PlanError as exc:
            errors += exc.errors
            continue
        forward += f
        inputs += i
        notes += n
    for missing in ip.missing:
        errors.append("qubes_firewall:addresses:%s: the address of %s is needed by %s's rules "
                      "(on Qubes dom0 fills it in, see README)" % (missing, missing, qube))
    if errors:
        raise PlanError(errors)
    chains = (Chain(INPUT_CHAIN, None, tuple(inputs)), Chain(FORWARD_CHAIN, None, tuple(forward)))
    chains += tuple(sorted(dnat_chains, key=lambda c: c.name))
    return QubePlan(qube, model.qubes[qube].provides_network, chains, tuple(notes))


def check_model(model):
    """Every plan error of the whole model (for a dom0 or validation run)."""
    errors = []
    for name in sorted(model.qubes):
        try:
            plan_qube(model, name)
        except PlanError as exc:
            errors += [e for e in exc.errors if e not in errors]
    return errors


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------


def ruleset_text(plan):
    """The owned chains as one nft script (create-or-flush, then the rules)."""
    lines = []
    for chain in plan.chains:
        lines += chain.commands(fresh=True)
    return "\n".join(lines) + "\n"


def persist_block(plan):
    """
    The shell block that replays ``plan`` at boot, in the file named by
    ``plan.persist_file``.  Idempotent: the chains are created or flushed and
    refilled in one ``nft -f`` transaction, and the jumps from custom-input /
    custom-forward are added only together with the chains, so running it any
    number of times yields the ruleset of the runtime apply.  Guarded by the
    qube's name, so a disposable template's copy acts only in its qube.
    """
    name = plan.qube
    jumps = "\n".join(plan.jump_command(c, t) for c, t in plan.jumps)
    return (
        "# nftables rules of qube %(name)s from the qubes_firewall pillar; replayed at boot.\n"
        "# Changes here are overwritten: edit the pillar and re-run Salt instead.\n"
        'if [ "$(qubesdb-read /name 2>/dev/null)" = "%(name)s" ]; then\n'
        "    qf_jumps=1\n"
        "    nft list chain %(table)s %(input)s >/dev/null 2>&1 && qf_jumps=0\n"
        "    {\n"
        "        cat <<'%(eof)s'\n"
        "%(rules)s"
        "%(eof)s\n"
        '        if [ "$qf_jumps" = 1 ]; then\n'
        "            cat <<'%(eof)s'\n"
        "%(jumps)s\n"
        "%(eof)s\n"
        "        fi\n"
        '    } | nft -f - || echo "qubes_firewall: loading the rules of %(name)s failed" >&2\n'
        "fi\n"
    ) % {
        "name": name,
        "table": TABLE,
        "input": INPUT_CHAIN,
        "eof": HEREDOC,
        "rules": ruleset_text(plan),
        "jumps": jumps,
    }


def plan_dict(plan):
    """The plan as plain data (Salt output, golden files)."""
    return {
        "qube": plan.qube,
        "persist_file": plan.persist_file,
        "chains": {
            c.name: {"spec": c.spec, "rules": [r.text for r in c.rules]} for c in plan.chains
        },
        "notes": list(plan.notes),
    }
