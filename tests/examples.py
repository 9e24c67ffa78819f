"""
The pillar examples (``pillar.example/*.sls``) as the tests use them.

The examples carry no ``addresses:``: on Qubes dom0 hands them to the qube
runs (docs/addresses.md).  Tests that run the planner or the lab need them,
so they load an example through :func:`example`, which adds the address of
every qube the example lists from :data:`LAB_ADDRESSES`, the lab's topology
(one address per qube name, 10.137.0.N as Qubes gives a qube with qid N),
and gives a qube the table does not know the next free 10.137.0.N.
"""

import copy
import ipaddress
import re

import yaml

from tests.modules import REPO

EXAMPLES = REPO / "pillar.example"

# The lab's topology: the qubes of the examples, each with the address Qubes
# would give it (10.137.0.<qid>).
LAB_ADDRESSES = {
    "sys-net": "10.137.0.5",
    "sys-firewall": "10.137.0.6",
    "sys-vpn": "10.137.0.7",
    "sys-firewall-2": "10.137.0.8",
    "work": "10.137.0.9",
    "build": "10.137.0.10",
    "web": "10.137.0.11",
    "personal": "10.137.0.12",
    "untrusted": "10.137.0.13",
    "mytcp-service": "10.137.0.14",
    "mytcp-service-bis": "10.137.0.15",
}

# A dom0 command line in an example's comments: "#   [user@dom0 ~]$ qvm-create ..."
DOM0_PROMPT = re.compile(r"^#\s+\[user@dom0 ~\]\$ (?P<command>.+?)\s*$")


def names():
    """The user-facing examples (pillar.example/*.sls; the fleet directory is separate)."""
    return sorted(p.stem for p in EXAMPLES.glob("*.sls"))


def path(name):
    return EXAMPLES / ("%s.sls" % name)


def raw(name):
    """The ``qubes_firewall`` value of the example, exactly as the file has it."""
    return yaml.safe_load(path(name).read_text())["qubes_firewall"]


def with_addresses(pillar, table=None):
    """``pillar`` (a ``qubes_firewall`` value) with an address for every listed qube it lacks."""
    pillar = copy.deepcopy(pillar)
    table = LAB_ADDRESSES if table is None else table
    given = dict(pillar.get("addresses") or {})
    used = {ipaddress.IPv4Address(a) for a in list(given.values()) + list(table.values())}
    n = 2
    for qube in pillar.get("qubes") or {}:
        if qube in given:
            continue
        if qube in table:
            given[qube] = table[qube]
            continue
        while ipaddress.IPv4Address("10.137.0.%d" % n) in used:
            n += 1
        given[qube] = "10.137.0.%d" % n
        used.add(ipaddress.IPv4Address(given[qube]))
    if given:
        pillar["addresses"] = given
    return pillar


def example(name, table=None):
    """The ``qubes_firewall`` value of ``pillar.example/<name>.sls`` with the lab's addresses."""
    return with_addresses(raw(name), table)


def sls(name, table=None):
    """The whole pillar document (``{"qubes_firewall": ...}``) with the lab's addresses."""
    return {"qubes_firewall": example(name, table)}


def dom0_commands(name):
    """The dom0 commands the example's comments tell the user to run, in order."""
    out = []
    for line in path(name).read_text().splitlines():
        match = DOM0_PROMPT.match(line)
        if match:
            out.append(match.group("command"))
    return out
